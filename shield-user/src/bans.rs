//! Ban maps of one interface, opened from their pins: list, add, remove, expire. Used by
//! the daemon (expiry sweep, control socket) and by `shield bans` without a daemon.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use aya::maps::{HashMap, LpmTrie, MapData, MapError, lpm_trie::Key};
use serde::Serialize;
use shield_common::{
    BAN_MANUAL, BAN_MONITOR, BanValue, CFG_BANS, MAP_HOST_BANS_V4, MAP_HOST_BANS_V6, MAP_RULE_BANS,
    RuleConfig, SourceKey,
    addr::{FAMILY_V4, FAMILY_V6, mask_prefix},
};

use crate::{
    loader::{LoaderError, open_pinned},
    policy::Cidr,
};

/// The clock the data path uses: CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns`).
pub fn mono_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Debug, thiserror::Error)]
pub enum BanError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("ban map: {0}")]
    Map(#[from] MapError),
    #[error("no rule named `{0}` in the running policy")]
    NoSuchRule(String),
    #[error(
        "rule `{rule}` tracks {family} sources as /{prefix}; a rule ban must be a /{prefix} (or leave out --rule to ban the source from the whole host)"
    )]
    RulePrefix {
        rule: String,
        family: &'static str,
        prefix: u8,
    },
    #[error("the ban table is full ({0} entries)")]
    Full(u32),
}

/// One active ban, as `shield bans` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BanEntry {
    /// Interface whose maps hold it (filled in by the daemon).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub iface: String,
    /// Address/prefix banned.
    pub source: String,
    /// `host` (every port) or `rule` (the rule's ports).
    pub scope: &'static str,
    /// Rule that issued it or that it applies to; empty for a manual host ban.
    pub rule: String,
    /// `manual` or `automatic`.
    pub origin: &'static str,
    /// Issued in monitor mode: counted as `would_ban`, nothing dropped.
    pub monitor: bool,
    /// What the ban drops: `everything` (manual bans), or `new_connections` (automatic
    /// bans, issued on evidence a spoofer can forge: connection attempts and datagrams are
    /// dropped, segments of established TCP connections pass).
    pub cuts: &'static str,
    pub duration_secs: f64,
    pub remaining_secs: f64,
    /// How many bans this source had before on the backoff ladder (0 = first).
    pub level: u8,
    /// Operator's reason for a manual ban (known to the running daemon only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip)]
    pub key: BanKey,
    /// Id of the rule that issued it (0: a manual host ban).
    #[serde(skip)]
    pub rule_id: u16,
}

/// Where a ban lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BanKey {
    #[default]
    None,
    Host4([u8; 4], u8),
    Host6([u8; 16], u8),
    Rule(SourceKey),
}

fn ip_of(family: u8, addr: [u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr))
    }
}

pub struct BanMaps {
    host4: LpmTrie<MapData, [u8; 4], BanValue>,
    host6: LpmTrie<MapData, [u8; 16], BanValue>,
    rules_bans: HashMap<MapData, SourceKey, BanValue>,
    tables: crate::loader::PolicyMaps,
}

impl BanMaps {
    pub fn open(pin_dir: &Path) -> Result<BanMaps, BanError> {
        Ok(BanMaps {
            host4: LpmTrie::try_from(open_pinned(pin_dir, MAP_HOST_BANS_V4)?)?,
            host6: LpmTrie::try_from(open_pinned(pin_dir, MAP_HOST_BANS_V6)?)?,
            rules_bans: HashMap::try_from(open_pinned(pin_dir, MAP_RULE_BANS)?)?,
            tables: crate::loader::PolicyMaps::open(pin_dir)?,
        })
    }

    /// The data path's clock now (including the test offset).
    pub fn now(&self) -> u64 {
        let offset = self.tables.control().map_or(0, |c| c.clock_offset_ns);
        mono_coarse_ns().wrapping_add(offset)
    }

    /// The name of rule `id` in the running policy (empty for 0).
    pub fn rule_name(&self, id: u16) -> String {
        if id == 0 {
            return String::new();
        }
        self.tables
            .current_rules()
            .ok()
            .and_then(|rules| rules.into_iter().find(|(i, _)| *i == u32::from(id)))
            .map_or_else(|| format!("#{id}"), |(_, r)| crate::stats::rule_name(&r))
    }

    /// Finds a rule by name: (id, its config).
    fn rule(&self, name: &str) -> Result<(u16, RuleConfig), BanError> {
        self.tables
            .current_rules()?
            .into_iter()
            .find(|(_, r)| crate::stats::rule_name(r) == name)
            .map(|(id, r)| (id as u16, r))
            .ok_or_else(|| BanError::NoSuchRule(name.to_string()))
    }

    fn entry(&self, key: BanKey, v: &BanValue, now: u64) -> BanEntry {
        let (source, scope) = match key {
            BanKey::Host4(a, l) => (format!("{}/{l}", Ipv4Addr::from(a)), "host"),
            BanKey::Host6(a, l) => (format!("{}/{l}", Ipv6Addr::from(a)), "host"),
            BanKey::Rule(k) => (
                format!("{}/{}", ip_of(k.family, k.addr), k.prefix_len),
                "rule",
            ),
            BanKey::None => (String::new(), "host"),
        };
        BanEntry {
            iface: String::new(),
            source,
            scope,
            rule: self.rule_name(v.rule),
            origin: if v.flags & BAN_MANUAL != 0 {
                "manual"
            } else {
                "automatic"
            },
            monitor: v.flags & BAN_MONITOR != 0,
            cuts: if v.flags & shield_common::BAN_ATTEMPTS != 0 {
                "new_connections"
            } else {
                "everything"
            },
            duration_secs: Duration::from_nanos(v.duration_ns).as_secs_f64(),
            remaining_secs: Duration::from_nanos(v.expires_ns.saturating_sub(now)).as_secs_f64(),
            level: v.level,
            comment: None,
            key,
            rule_id: v.rule,
        }
    }

    /// Every ban in the maps, expired ones included (see `remaining_secs`).
    pub fn list(&self) -> Vec<BanEntry> {
        let now = self.now();
        let mut out = Vec::new();
        for (k, v) in self.host4.iter().flatten() {
            out.push(self.entry(BanKey::Host4(k.data(), k.prefix_len() as u8), &v, now));
        }
        for (k, v) in self.host6.iter().flatten() {
            out.push(self.entry(BanKey::Host6(k.data(), k.prefix_len() as u8), &v, now));
        }
        for (k, v) in self.rules_bans.iter().flatten() {
            out.push(self.entry(BanKey::Rule(k), &v, now));
        }
        out.sort_by(|a, b| b.remaining_secs.total_cmp(&a.remaining_secs));
        out
    }

    /// Active (unexpired) bans.
    pub fn active(&self) -> Vec<BanEntry> {
        self.list()
            .into_iter()
            .filter(|b| b.remaining_secs > 0.0)
            .collect()
    }

    /// Bans `cidr` for `dur`: from the whole host, or from `rule`'s ports.
    pub fn ban(
        &mut self,
        cidr: Cidr,
        dur: Duration,
        rule: Option<&str>,
    ) -> Result<BanEntry, BanError> {
        let now = self.now();
        let dur_ns = dur
            .as_nanos()
            .min(u128::from(shield_common::judge::MAX_BAN_NS)) as u64;
        let mut value = BanValue {
            expires_ns: now.saturating_add(dur_ns),
            duration_ns: dur_ns,
            rule: 0,
            flags: BAN_MANUAL,
            level: 0,
            prefix_len: cidr.len,
            _pad: [0; 3],
        };
        let key = match rule {
            None => match cidr.addr {
                IpAddr::V4(a) => {
                    self.host4
                        .insert(&Key::new(u32::from(cidr.len), a.octets()), value, 0)
                        .map_err(full)?;
                    BanKey::Host4(a.octets(), cidr.len)
                }
                IpAddr::V6(a) => {
                    self.host6
                        .insert(&Key::new(u32::from(cidr.len), a.octets()), value, 0)
                        .map_err(full)?;
                    BanKey::Host6(a.octets(), cidr.len)
                }
            },
            Some(name) => {
                let (id, r) = self.rule(name)?;
                let (family, prefix, fname, addr) = match cidr.addr {
                    IpAddr::V4(a) => (
                        FAMILY_V4,
                        r.v4_prefix,
                        "IPv4",
                        shield_common::addr::v4_key(a.octets()),
                    ),
                    IpAddr::V6(a) => (FAMILY_V6, r.v6_prefix, "IPv6", a.octets()),
                };
                if cidr.len != prefix {
                    return Err(BanError::RulePrefix {
                        rule: name.to_string(),
                        family: fname,
                        prefix,
                    });
                }
                value.rule = id;
                let key = SourceKey {
                    rule: id,
                    family,
                    prefix_len: prefix,
                    addr: mask_prefix(addr, prefix),
                };
                self.rules_bans.insert(key, value, 0).map_err(full)?;
                BanKey::Rule(key)
            }
        };
        self.set_bans_flag(true)?;
        Ok(self.entry(key, &value, now))
    }

    /// Removes every ban on exactly `cidr` (host scope, and rule scope for any rule).
    pub fn unban(&mut self, cidr: Cidr) -> Result<Vec<BanEntry>, BanError> {
        let mut removed = Vec::new();
        for b in self.list() {
            let matches = match (b.key, cidr.addr) {
                (BanKey::Host4(a, l), IpAddr::V4(c)) => a == c.octets() && l == cidr.len,
                (BanKey::Host6(a, l), IpAddr::V6(c)) => a == c.octets() && l == cidr.len,
                (BanKey::Rule(k), c) => ip_of(k.family, k.addr) == c && k.prefix_len == cidr.len,
                _ => false,
            };
            if matches {
                self.remove(b.key)?;
                removed.push(BanEntry {
                    remaining_secs: 0.0,
                    ..b
                });
            }
        }
        Ok(removed)
    }

    fn remove(&mut self, key: BanKey) -> Result<(), BanError> {
        let r = match key {
            BanKey::Host4(a, l) => self.host4.remove(&Key::new(u32::from(l), a)),
            BanKey::Host6(a, l) => self.host6.remove(&Key::new(u32::from(l), a)),
            BanKey::Rule(k) => self.rules_bans.remove(&k),
            BanKey::None => Ok(()),
        };
        match r {
            // Already gone (expired and swept concurrently): fine.
            Err(MapError::KeyNotFound) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Removes expired bans; returns them (for `ban_end` audit lines).
    pub fn sweep(&mut self) -> Result<Vec<BanEntry>, BanError> {
        let expired: Vec<BanEntry> = self
            .list()
            .into_iter()
            .filter(|b| b.remaining_secs <= 0.0)
            .collect();
        for b in &expired {
            self.remove(b.key)?;
        }
        Ok(expired)
    }

    /// Turns the data path's ban lookups on or off.
    pub fn set_bans_flag(&mut self, on: bool) -> Result<(), BanError> {
        Ok(self.tables.set_flag(CFG_BANS, on)?)
    }

    /// Removes monitor-mode bans (host or rule scope) whose rule is no longer monitored
    /// (after a reload switched it to enforce, or removed it); returns them. A monitor ban
    /// never blocked anything, and its source is judged by the enforced rule from the next
    /// packet on, so it is dropped rather than converted: an enforced ban only ever comes
    /// from offences judged under enforcement.
    pub fn drop_enforced_monitor_bans(&mut self) -> Result<Vec<BanEntry>, BanError> {
        let monitored: Vec<u16> = self
            .tables
            .current_rules()?
            .iter()
            .filter(|(_, r)| r.flags & shield_common::RULE_MONITOR != 0)
            .map(|(id, _)| *id as u16)
            .collect();
        let mut dropped = Vec::new();
        for b in self.list().into_iter().filter(|b| b.monitor) {
            let rule = match b.key {
                BanKey::Rule(k) => k.rule,
                _ => b.rule_id,
            };
            if !monitored.contains(&rule) {
                self.remove(b.key)?;
                dropped.push(b);
            }
        }
        Ok(dropped)
    }

    /// Removes rule-scope bans of rules no longer in the policy (after a reload).
    pub fn drop_orphans(&mut self) -> Result<usize, BanError> {
        let live: Vec<u32> = self
            .tables
            .current_rules()?
            .iter()
            .map(|(id, _)| *id)
            .collect();
        let orphans: Vec<BanEntry> = self
            .list()
            .into_iter()
            .filter(|b| matches!(b.key, BanKey::Rule(k) if !live.contains(&u32::from(k.rule))))
            .collect();
        for b in &orphans {
            self.remove(b.key)?;
        }
        Ok(orphans.len())
    }
}

/// E2BIG from an insert means the map is full.
fn full(e: MapError) -> BanError {
    match &e {
        MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            BanError::Full(shield_common::MAX_BANS)
        }
        _ => BanError::Map(e),
    }
}
