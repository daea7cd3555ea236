//! Ban maps of one interface, opened from their pins: list, add, remove, expire. Used by
//! the daemon (expiry sweep, control socket) and by `shield bans` without a daemon.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, lpm_trie::Key};
use shield_common::{
    BAN_COUNT_HOST, BAN_COUNT_USER, BAN_MANUAL, BAN_MONITOR, BAN_NOTE_MAX, BanNote, BanNoteKey,
    BanValue, CFG_BANS, MAP_BAN_COUNT, MAP_BAN_NOTES, MAP_HOST_BANS_V4, MAP_HOST_BANS_V6,
    MAP_RULE_BANS, MAX_BANS, NOTE_HOST, NOTE_RULE, RuleConfig, SourceKey,
    addr::{FAMILY_V4, FAMILY_V6, mask_prefix},
};

/// The data path's clock (kept here too: ban expiry is read against it).
pub use crate::loader::mono_coarse_ns;
use crate::{
    loader::{LoaderError, open_pinned},
    policy::{BanScope, Cidr},
};

mod check;
mod entry;

pub use check::{BanFloor, check_manual_ban, covers, unprintable};
use entry::ip_of;
pub use entry::{BanEntry, BanKey, BanOutcome, BanSpec, Cuts, Origin};

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
    #[error(
        "the ban count map ({MAP_BAN_COUNT}) is not pinned: the program was loaded by an older shield; restart the daemon with this version"
    )]
    NoCounts,
    #[error("cannot create the ban notes map {path}: {source}")]
    Notes {
        path: std::path::PathBuf,
        source: MapError,
    },
}

pub struct BanMaps {
    host4: LpmTrie<MapData, [u8; 4], BanValue>,
    host6: LpmTrie<MapData, [u8; 16], BanValue>,
    rules_bans: HashMap<MapData, SourceKey, BanValue>,
    /// Reasons of manual bans (absent until a daemon created it).
    notes: Option<HashMap<MapData, BanNoteKey, BanNote>>,
    /// How many bans may exist (`shield_common::BAN_COUNT_USER`); absent under pins of an
    /// older version, where bans can be listed but not changed.
    counts: Option<Array<MapData, u64>>,
    tables: crate::loader::PolicyMaps,
}

/// Whether any ban is stored in the ban tables pinned in `pin_dir` (a reload's install
/// reads it through handles of its own while the daemon serves bans on its).
pub fn bans_exist(pin_dir: &Path) -> Result<bool, BanError> {
    let host4: LpmTrie<MapData, [u8; 4], BanValue> =
        LpmTrie::try_from(open_pinned(pin_dir, MAP_HOST_BANS_V4)?)?;
    let host6: LpmTrie<MapData, [u8; 16], BanValue> =
        LpmTrie::try_from(open_pinned(pin_dir, MAP_HOST_BANS_V6)?)?;
    let rules: HashMap<MapData, SourceKey, BanValue> =
        HashMap::try_from(open_pinned(pin_dir, MAP_RULE_BANS)?)?;
    Ok(host4.keys().next().is_some()
        || host6.keys().next().is_some()
        || rules.keys().next().is_some())
}

impl BanMaps {
    pub fn open(pin_dir: &Path) -> Result<BanMaps, BanError> {
        let notes_pin = pin_dir.join(MAP_BAN_NOTES);
        let notes = match MapData::from_pin(&notes_pin) {
            Ok(m) => Some(HashMap::try_from(aya::maps::Map::HashMap(m))?),
            Err(_) => None,
        };
        Ok(BanMaps {
            host4: LpmTrie::try_from(open_pinned(pin_dir, MAP_HOST_BANS_V4)?)?,
            host6: LpmTrie::try_from(open_pinned(pin_dir, MAP_HOST_BANS_V6)?)?,
            rules_bans: HashMap::try_from(open_pinned(pin_dir, MAP_RULE_BANS)?)?,
            notes,
            counts: open_pinned(pin_dir, MAP_BAN_COUNT)
                .ok()
                .and_then(|m| Array::try_from(m).ok()),
            tables: crate::loader::PolicyMaps::open(pin_dir)?,
        })
    }

    /// Creates and pins the ban notes map unless it exists (the daemon, at start). Not
    /// preallocated: it costs memory only for the reasons stored.
    pub fn ensure_notes(pin_dir: &Path) -> Result<(), BanError> {
        let path = pin_dir.join(MAP_BAN_NOTES);
        if MapData::from_pin(&path).is_ok() {
            return Ok(());
        }
        const BPF_F_NO_PREALLOC: u32 = 1;
        let err = |source| BanError::Notes {
            path: path.clone(),
            source,
        };
        let map = HashMap::<MapData, BanNoteKey, BanNote>::create(MAX_BANS * 3, BPF_F_NO_PREALLOC)
            .map_err(err)?;
        map.pin(&path).map_err(|e| {
            err(MapError::PinError {
                name: None,
                error: e,
            })
        })?;
        Ok(())
    }

    fn note_key(key: BanKey) -> Option<BanNoteKey> {
        let mut k = BanNoteKey::default();
        match key {
            BanKey::Host4(a, l) => {
                (k.kind, k.family, k.prefix_len) = (NOTE_HOST, FAMILY_V4, l);
                k.addr[..4].copy_from_slice(&a);
            }
            BanKey::Host6(a, l) => {
                (k.kind, k.family, k.prefix_len) = (NOTE_HOST, FAMILY_V6, l);
                k.addr = a;
            }
            BanKey::Rule(s) => {
                (k.kind, k.family, k.prefix_len, k.rule) =
                    (NOTE_RULE, s.family, s.prefix_len, s.rule);
                k.addr = s.addr;
            }
            BanKey::None => return None,
        }
        Some(k)
    }

    /// The operator's reason stored for a ban.
    fn note(&self, key: BanKey) -> Option<String> {
        let n = self.notes.as_ref()?.get(&Self::note_key(key)?, 0).ok()?;
        let len = usize::from(n.len).min(BAN_NOTE_MAX);
        Some(String::from_utf8_lossy(&n.text[..len]).into_owned())
    }

    fn set_note(&mut self, key: BanKey, text: &str) -> Result<(), BanError> {
        let (Some(notes), Some(k)) = (self.notes.as_mut(), Self::note_key(key)) else {
            return Ok(());
        };
        let mut n = BanNote {
            len: 0,
            _pad: [0; 6],
            text: [0; BAN_NOTE_MAX],
        };
        // Cut at a character boundary.
        let mut end = text.len().min(BAN_NOTE_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        n.text[..end].copy_from_slice(&text.as_bytes()[..end]);
        n.len = end as u16;
        Ok(notes.insert(k, n, 0)?)
    }

    fn remove_note(&mut self, key: BanKey) {
        if let (Some(notes), Some(k)) = (self.notes.as_mut(), Self::note_key(key)) {
            let _ = notes.remove(&k);
        }
    }

    /// The data path's clock now (including the test offset, or the frozen test clock).
    pub fn now(&self) -> u64 {
        let mono = crate::loader::mono_coarse_ns();
        self.tables.control().map_or(mono, |c| c.now(mono))
    }

    /// The name of rule `id` in the running policy (empty for 0).
    pub fn rule_name(&self, id: u16) -> String {
        if id == 0 {
            return String::new();
        }
        self.tables
            .current_rule(u32::from(id))
            .ok()
            .flatten()
            .map_or_else(|| format!("#{id}"), |r| crate::loader::rule_name(&r))
    }

    /// Finds a rule by name: (id, its config).
    fn rule(&self, name: &str) -> Result<(u16, RuleConfig), BanError> {
        self.tables
            .current_rules()?
            .into_iter()
            .find(|(_, r)| crate::loader::rule_name(r) == name)
            .map(|(id, r)| (id as u16, r))
            .ok_or_else(|| BanError::NoSuchRule(name.to_string()))
    }

    /// Rule id → name of the policy in force, read once (a ban listing names thousands of
    /// bans; reading the rule table for each would cost 256 map reads a ban).
    fn rule_names(&self) -> std::collections::HashMap<u16, String> {
        self.tables
            .current_rules()
            .map(|rules| {
                rules
                    .into_iter()
                    .map(|(id, r)| (id as u16, crate::loader::rule_name(&r)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn entry(&self, key: BanKey, v: &BanValue, now: u64) -> BanEntry {
        // Only this ban's rule (reading every rule slot for each ban made installing a
        // fleet's 65,536 bans take 19 s of the owner's time).
        let mut names = std::collections::HashMap::new();
        if v.rule != 0 {
            names.insert(v.rule, self.rule_name(v.rule));
        }
        self.entry_named(key, v, now, &names)
    }

    fn entry_named(
        &self,
        key: BanKey,
        v: &BanValue,
        now: u64,
        names: &std::collections::HashMap<u16, String>,
    ) -> BanEntry {
        let (source, scope) = match key {
            BanKey::Host4(a, l) => (format!("{}/{l}", Ipv4Addr::from(a)), BanScope::Host),
            BanKey::Host6(a, l) => (format!("{}/{l}", Ipv6Addr::from(a)), BanScope::Host),
            BanKey::Rule(k) => (
                format!("{}/{}", ip_of(k.family, k.addr), k.prefix_len),
                BanScope::Rule,
            ),
            BanKey::None => (String::new(), BanScope::Host),
        };
        BanEntry {
            iface: String::new(),
            source,
            scope,
            rule: match v.rule {
                0 => String::new(),
                id => names.get(&id).cloned().unwrap_or_else(|| format!("#{id}")),
            },
            origin: if v.flags & shield_common::BAN_APP != 0 {
                Origin::App
            } else if v.flags & BAN_MANUAL != 0 {
                Origin::Manual
            } else {
                Origin::Automatic
            },
            monitor: v.flags & BAN_MONITOR != 0,
            cuts: if v.flags & shield_common::BAN_ATTEMPTS != 0 {
                Cuts::NewConnections
            } else {
                Cuts::Everything
            },
            duration_secs: Duration::from_nanos(v.duration_ns).as_secs_f64(),
            remaining_secs: Duration::from_nanos(v.expires_ns.saturating_sub(now)).as_secs_f64(),
            level: v.level,
            comment: self.note(key),
            origin_host: None,
            key,
            rule_id: v.rule,
        }
    }

    /// Every ban in the maps, expired ones included (see `remaining_secs`).
    pub fn list(&self) -> Vec<BanEntry> {
        let now = self.now();
        let names = self.rule_names();
        let mut out = Vec::new();
        for (k, v) in self.host4.iter().flatten() {
            let key = BanKey::Host4(k.data(), k.prefix_len() as u8);
            out.push(self.entry_named(key, &v, now, &names));
        }
        for (k, v) in self.host6.iter().flatten() {
            let key = BanKey::Host6(k.data(), k.prefix_len() as u8);
            out.push(self.entry_named(key, &v, now, &names));
        }
        for (k, v) in self.rules_bans.iter().flatten() {
            out.push(self.entry_named(BanKey::Rule(k), &v, now, &names));
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

    /// The ban stored under `key`, if any. A trie's lookup answers with the longest
    /// stored prefix covering the key (a /24 for a /32 inside it), so only a ban of the
    /// key's own prefix length is taken (one that names another says none: counted again,
    /// never below the bans stored).
    fn stored(&self, key: BanKey) -> Option<BanValue> {
        match key {
            BanKey::Host4(a, l) => self
                .host4
                .get(&Key::new(u32::from(l), a), 0)
                .ok()
                .filter(|v| v.prefix_len == l),
            BanKey::Host6(a, l) => self
                .host6
                .get(&Key::new(u32::from(l), a), 0)
                .ok()
                .filter(|v| v.prefix_len == l),
            BanKey::Rule(k) => self.rules_bans.get(&k, 0).ok(),
            BanKey::None => None,
        }
    }

    /// Bans `cidr` for `dur`: from the whole host, or from `rule`'s ports, with the
    /// operator's `reason`. A ban in force on the same key that ends later is kept as it is
    /// (never shortened; the reason is attached to it).
    pub fn ban(
        &mut self,
        cidr: Cidr,
        dur: Duration,
        rule: Option<&str>,
        reason: Option<&str>,
    ) -> Result<BanOutcome, BanError> {
        self.ban_as(cidr, dur, rule, reason, Origin::Manual)
    }

    /// `ban` by `origin`: `Manual` or `App` (both drop everything from the source).
    pub fn ban_as(
        &mut self,
        cidr: Cidr,
        dur: Duration,
        rule: Option<&str>,
        reason: Option<&str>,
        origin: Origin,
    ) -> Result<BanOutcome, BanError> {
        self.ban_spec(&BanSpec {
            cidr,
            dur,
            scope: if rule.is_some() {
                BanScope::Rule
            } else {
                BanScope::Host
            },
            rule,
            flags: match origin {
                Origin::App => BAN_MANUAL | shield_common::BAN_APP,
                _ => BAN_MANUAL,
            },
            level: 0,
            reason,
            issued: None,
        })
    }

    /// Whether the policy in force has a rule named `name`.
    pub fn has_rule(&self, name: &str) -> bool {
        self.rule(name).is_ok()
    }

    /// Bans as `spec` says (a fleet ban: its scope, flags and ladder level as issued). A
    /// host-scope ban naming a rule this host does not have is a plain host ban.
    pub fn ban_spec(&mut self, spec: &BanSpec) -> Result<BanOutcome, BanError> {
        let (cidr, dur, reason) = (spec.cidr, spec.dur, spec.reason);
        let now = self.now();
        let max = u128::from(shield_common::judge::MAX_BAN_NS);
        let dur_ns = dur.as_nanos().min(max) as u64;
        let issued_ns = spec
            .issued
            .map_or(dur_ns, |d| (d.as_nanos().min(max) as u64).max(dur_ns));
        let mut value = BanValue {
            expires_ns: now.saturating_add(dur_ns),
            duration_ns: issued_ns,
            rule: 0,
            flags: spec.flags,
            level: spec.level,
            prefix_len: cidr.len,
            _pad: [0; 3],
        };
        let (key, rule_id) = self.spec_key(spec)?;
        value.rule = rule_id;
        let stored = self.stored(key);
        if stored.is_some_and(|v| v.expires_ns <= now) {
            // An expired ban not swept yet: its reason is not this ban's.
            self.remove_note(key);
        }
        let existing =
            stored.filter(|v| v.flags & BAN_MONITOR == 0 && v.expires_ns >= value.expires_ns);
        let kept_longer = existing.is_some();
        if let Some(v) = existing {
            value = v;
        } else {
            if stored.is_none() {
                // Counted before it is stored: the count is never below the bans stored.
                self.count(key, 1)?;
            }
            match key {
                BanKey::Host4(a, l) => self.host4.insert(&Key::new(u32::from(l), a), value, 0),
                BanKey::Host6(a, l) => self.host6.insert(&Key::new(u32::from(l), a), value, 0),
                BanKey::Rule(k) => self.rules_bans.insert(k, value, 0),
                BanKey::None => Ok(()),
            }
            .map_err(full)?;
            self.moved(key)?;
        }
        // The first reason given stays with a ban: a kept ban keeps its reason, and an
        // extension without a reason keeps the one it had.
        if let Some(r) = reason
            && (!kept_longer || self.note(key).is_none())
        {
            self.set_note(key, r)?;
        }
        self.set_bans_flag(true)?;
        Ok(BanOutcome {
            entry: self.entry(key, &value, now),
            kept_longer,
        })
    }

    /// The key `spec` is stored under, and its rule's id (0: none; a host-scope ban
    /// naming a rule this host does not have is a plain host ban).
    fn spec_key(&self, spec: &BanSpec) -> Result<(BanKey, u16), BanError> {
        let cidr = spec.cidr;
        Ok(match (spec.scope, spec.rule) {
            (BanScope::Host, rule) | (BanScope::Rule, rule @ None) => {
                let id = rule
                    .and_then(|name| self.rule(name).ok())
                    .map_or(0, |(id, _)| id);
                (host_key(cidr), id)
            }
            (BanScope::Rule, Some(name)) => {
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
                let key = BanKey::Rule(SourceKey {
                    rule: id,
                    family,
                    prefix_len: prefix,
                    addr: mask_prefix(addr, prefix),
                });
                (key, id)
            }
        })
    }

    /// Whether a ban in force is stored under `spec`'s key (a ban of it takes no new
    /// entry).
    pub fn holds(&self, spec: &BanSpec) -> bool {
        let key = match (spec.scope, spec.rule) {
            // Without the rule's id (reading the rules table for it, per ban received at
            // the limit, would cost more than the lookup).
            (BanScope::Host, _) | (BanScope::Rule, None) => host_key(spec.cidr),
            _ => match self.spec_key(spec) {
                Ok((k, _)) => k,
                Err(_) => return false,
            },
        };
        let now = self.now();
        self.stored(key).is_some_and(|v| v.expires_ns > now)
    }

    /// Removes every ban on exactly `cidr` (host scope, and rule scope for any rule).
    pub fn unban(&mut self, cidr: Cidr) -> Result<Vec<BanEntry>, BanError> {
        self.unban_where(cidr, |_| true)
    }

    /// Removes the bans on exactly `cidr` that `lift` accepts (a fleet unban lifts only
    /// the bans issued before it).
    pub fn unban_where(
        &mut self,
        cidr: Cidr,
        mut lift: impl FnMut(&BanEntry) -> bool,
    ) -> Result<Vec<BanEntry>, BanError> {
        self.unban_all_where(|b| {
            let on_cidr = match (b.key, cidr.addr) {
                (BanKey::Host4(a, l), IpAddr::V4(c)) => a == c.octets() && l == cidr.len,
                (BanKey::Host6(a, l), IpAddr::V6(c)) => a == c.octets() && l == cidr.len,
                (BanKey::Rule(k), c) => ip_of(k.family, k.addr) == c && k.prefix_len == cidr.len,
                _ => false,
            };
            on_cidr && lift(b)
        })
    }

    /// Removes every ban `lift` accepts, in one pass over the tables (lifting many bans
    /// one source at a time would read the tables once per source).
    pub fn unban_all_where(
        &mut self,
        mut lift: impl FnMut(&BanEntry) -> bool,
    ) -> Result<Vec<BanEntry>, BanError> {
        let mut removed = Vec::new();
        for b in self.list() {
            if lift(&b) {
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
        self.remove_note(key);
        let r = match key {
            BanKey::Host4(a, l) => self.host4.remove(&Key::new(u32::from(l), a)),
            BanKey::Host6(a, l) => self.host6.remove(&Key::new(u32::from(l), a)),
            BanKey::Rule(k) => self.rules_bans.remove(&k),
            BanKey::None => Ok(()),
        };
        match r {
            // Already gone (expired and swept concurrently): fine.
            Err(MapError::KeyNotFound) => Ok(()),
            // Uncounted once it is gone.
            Ok(()) => {
                self.count(key, -1)?;
                self.moved(key)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// After a host ban was inserted or removed: moves the host bans' epoch, so that the
    /// data path's cache of host-ban drops lets go of what it held
    /// (`shield_common::BAN_EPOCH`).
    fn moved(&mut self, key: BanKey) -> Result<(), BanError> {
        if matches!(key, BanKey::Host4(..) | BanKey::Host6(..)) {
            let counts = self.counts.as_mut().ok_or(BanError::NoCounts)?;
            crate::loader::bump_ban_epoch(counts)?;
        }
        Ok(())
    }

    /// Adds `delta` to user space's count of `key`'s slot (`BAN_COUNT_USER`; wrapping).
    fn count(&mut self, key: BanKey, delta: i64) -> Result<(), BanError> {
        let slot = match key {
            BanKey::Host4(..) | BanKey::Host6(..) => BAN_COUNT_HOST,
            BanKey::Rule(k) => u32::from(k.rule),
            BanKey::None => return Ok(()),
        };
        let counts = self.counts.as_mut().ok_or(BanError::NoCounts)?;
        let i = BAN_COUNT_USER + slot;
        let v = counts.get(&i, 0)?;
        counts.set(i, v.wrapping_add(delta as u64), 0)?;
        Ok(())
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

    /// Whether any ban is stored (stops at the first: no listing).
    pub fn any(&self) -> bool {
        self.host4.keys().next().is_some()
            || self.host6.keys().next().is_some()
            || self.rules_bans.keys().next().is_some()
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

    /// Whether the ban stored under `key` may have been issued (stored or last lengthened)
    /// before `at` (the data path's coarse clock: within the same tick counts as before);
    /// a ban no longer stored: yes.
    fn issued_before(&self, key: BanKey, at: u64) -> bool {
        self.stored(key)
            .is_none_or(|v| v.expires_ns.saturating_sub(v.duration_ns) <= at)
    }

    /// Removes rule-scope bans of rules no longer in the policy (after a reload), and those
    /// under `fresh` ids issued before `flipped_ns` (the data path's clock; when the new
    /// policy was put in force): ids a new rule took from a removed one (all 255 taken),
    /// whose bans are then the removed rule's. A ban issued under a fresh id since is the
    /// new rule's (the data path's, or the fleet's while a reload ran): kept. Returns them.
    pub fn drop_orphans(
        &mut self,
        fresh: &[u16],
        flipped_ns: u64,
    ) -> Result<Vec<BanEntry>, BanError> {
        let live: Vec<u32> = self
            .tables
            .current_rules()?
            .iter()
            .map(|(id, _)| *id)
            .collect();
        let orphans: Vec<BanEntry> = self
            .list()
            .into_iter()
            .filter(|b| {
                matches!(b.key, BanKey::Rule(k)
                    if !live.contains(&u32::from(k.rule))
                        || (fresh.contains(&k.rule) && self.issued_before(b.key, flipped_ns)))
            })
            .collect();
        for b in &orphans {
            self.remove(b.key)?;
        }
        Ok(orphans)
    }
}

/// The key of a host-scope ban of `cidr`.
fn host_key(cidr: Cidr) -> BanKey {
    match cidr.addr {
        IpAddr::V4(a) => BanKey::Host4(a.octets(), cidr.len),
        IpAddr::V6(a) => BanKey::Host6(a.octets(), cidr.len),
    }
}

/// E2BIG from an insert means the map is full.
fn full(e: MapError) -> BanError {
    match &e {
        // E2BIG from a hash map, ENOSPC from an LPM trie (the host bans).
        MapError::SyscallError(s)
            if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)) =>
        {
            BanError::Full(shield_common::MAX_BANS)
        }
        _ => BanError::Map(e),
    }
}
