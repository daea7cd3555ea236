//! `shield stats`: reads the pinned maps (with or without a running daemon) and reports
//! per-rule × reason counters, tracked sources and the top limited sources.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, MapData, PerCpuArray};
use serde::Serialize;
use shield_common::{
    CFG_LOADED, CFG_MONITOR, Counter, DIAG_BAN_INSERT_FAILED, DIAG_EVENTS_LOST,
    DIAG_SOURCE_INSERT_FAILED, DIAG_SOURCE_INSERTS, DIAG_SOURCES_FORGOTTEN, DIAG_VERIFICATIONS,
    DIAG_VERIFIED_INSERT_FAILED, MAP_ATTACK, MAP_BUDGET, MAP_COUNTERS, MAP_DIAG, MAP_REFUSED,
    MAP_RULE_STATS, MAP_SOURCES, MAP_VERIFIED, REFUSED_SLOTS, RS_PROMOTED, RS_UNTRACKED,
    RS_UNVERIFIED_ADMITTED, RS_VERIFIED_CONNS, RULE_MONITOR, Reason, RuleConfig, SourceKey,
    SourceState, addr::FAMILY_V4, counter_index, judge::still_verified, rule_stat_index,
};

use crate::loader::{LoaderError, open_pinned, rule_name};

/// Name shown for rule slot 0: traffic no rule matched (and malformed frames).
pub const UNMATCHED: &str = "(none)";
/// How many sources `top_sources` lists.
pub const TOP_SOURCES: usize = 10;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleStats {
    pub id: u32,
    pub name: String,
    /// `monitor` or `enforce` (effective mode of the rule).
    pub mode: &'static str,
    /// Every reason, in `Reason` order, zeros included (stable keys).
    pub counters: BTreeMap<&'static str, Count>,
    /// Sources the sketch promoted to exact per-source state (its heavy hitters).
    pub promoted_sources: u64,
    /// Packets of sources without state that the sketch passed untracked.
    pub untracked_packets: u64,
    /// The rule's `unverified` budget, when it has one.
    pub unverified: Option<UnverifiedStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnverifiedStats {
    /// Budget rate (connection attempts per second) and burst.
    pub rate_per_sec: f64,
    pub burst: u64,
    /// Tokens left in the budget now (0: exhausted).
    pub tokens_left: u64,
    /// Connection attempts from unverified sources the budget admitted.
    pub admitted: u64,
    /// Connection attempts from unverified sources dropped over the budget
    /// (the `unverified_limit` counter).
    pub dropped: u64,
    /// Connection attempts from unverified sources over the budget answered with a SYN
    /// cookie instead (`challenge = "syncookie"`; the `syncookie` counter).
    pub answered: u64,
    /// Connection attempts from verified sources (never drawn from the budget).
    pub verified_conns: u64,
    /// The daemon considers the rule under attack (drops, or cookie answers, within the last 10 s).
    pub under_attack: bool,
    /// When the running attack started (RFC 3339), if one is running.
    pub attack_since: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopSource {
    pub rule: String,
    /// Source key: address masked to the rule's scope, with the prefix length.
    pub source: String,
    /// Packets refused by the rule's limits since the source was first tracked.
    pub limited: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IfaceStats {
    pub iface: String,
    /// The program is attached (its link is pinned and the interface exists). False after a
    /// clean stop or `shield detach`: every other figure is then the last one recorded, and
    /// no ban or limit is enforced.
    pub attached: bool,
    /// 0 when no policy has been loaded yet.
    pub policy_generation: u32,
    /// Global mode: `enforce` or `monitor`.
    pub mode: &'static str,
    pub max_sources: u32,
    pub tracked_sources: u64,
    /// Bans in force (host and rule scope, manual and automatic).
    pub active_bans: u64,
    /// Events the data path could not queue because the daemon was not reading fast enough.
    pub events_lost: u64,
    /// New sources the per-source table refused (memory pressure).
    pub source_insert_failures: u64,
    /// Automatic bans the ban tables refused (full).
    pub ban_insert_failures: u64,
    /// Per-source state entries created since the maps were created (sketch promotions).
    pub source_inserts: u64,
    /// Entries the LRU evicted to make room (inserts beyond the entries present).
    pub source_evictions: u64,
    /// Sources in the verified set whose proof is still valid.
    pub verified_sources: u64,
    /// Proofs recorded (a data segment on an established connection from a new source).
    pub verifications: u64,
    /// Proofs the verified set could not store.
    pub verified_insert_failures: u64,
    pub rules: Vec<RuleStats>,
    pub top_sources: Vec<TopSource>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub interfaces: Vec<IfaceStats>,
    /// The fleet link, from the running daemon (with `[fleet]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::Status>,
}

fn source_text(key: &SourceKey) -> String {
    let ip = if key.family == FAMILY_V4 {
        let a = key.addr;
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(key.addr))
    };
    format!("{ip}/{}", key.prefix_len)
}

/// Interfaces with pins under `<bpffs>/shield/`.
pub fn pinned_ifaces(bpffs: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(bpffs.join("shield"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(MAP_COUNTERS).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|name| crate::loader::iface_of_pin_name(&name))
        .filter(|name| crate::loader::check_iface(name).is_ok())
        .collect();
    out.sort();
    out
}

/// Reads one interface's pinned maps.
pub fn read_iface(bpffs: &Path, iface: &str) -> Result<IfaceStats, LoaderError> {
    let dir: PathBuf = crate::loader::pin_dir(bpffs, iface);
    let err = |map: &'static str| move |source| LoaderError::Map { map, source };

    let tables = crate::loader::PolicyMaps::open(&dir)?;
    let (_, global) = tables.active()?;
    let current = tables.current_rules()?;
    let counters: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(open_pinned(&dir, MAP_COUNTERS)?).map_err(err(MAP_COUNTERS))?;
    let sources_map = open_pinned(&dir, MAP_SOURCES)?;
    let max_sources = match &sources_map {
        aya::maps::Map::LruHashMap(m) => m.info().map(|i| i.max_entries()).unwrap_or(0),
        _ => 0,
    };
    let sources: HashMap<MapData, SourceKey, SourceState> =
        HashMap::try_from(sources_map).map_err(err(MAP_SOURCES))?;

    let rstats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open_pinned(&dir, MAP_RULE_STATS)?).map_err(err(MAP_RULE_STATS))?;
    let rstat = |id: u32, slot: u32| -> Result<u64, LoaderError> {
        Ok(rstats
            .get(&rule_stat_index(id, slot), 0)
            .map_err(err(MAP_RULE_STATS))?
            .iter()
            .sum())
    };
    let budget: aya::maps::Array<MapData, u64> =
        aya::maps::Array::try_from(open_pinned(&dir, MAP_BUDGET)?).map_err(err(MAP_BUDGET))?;
    let attack: aya::maps::Array<MapData, u64> =
        aya::maps::Array::try_from(open_pinned(&dir, MAP_ATTACK)?).map_err(err(MAP_ATTACK))?;
    let now = tables.control()?.now(crate::loader::mono_coarse_ns());
    let wall_now = std::time::SystemTime::now();

    let mut rule_cfgs: Vec<(u32, RuleConfig)> = Vec::new();
    let mut rules = Vec::new();
    let slots = std::iter::once((0u32, RuleConfig::default())).chain(current);
    for (id, cfg) in slots {
        let mut counts = BTreeMap::new();
        for reason in Reason::ALL {
            let per_cpu = counters
                .get(&counter_index(id, reason), 0)
                .map_err(err(MAP_COUNTERS))?;
            let mut sum = Count::default();
            for c in per_cpu.iter() {
                sum.packets += c.packets;
                sum.bytes += c.bytes;
            }
            counts.insert(reason.name(), sum);
        }
        let (name, mode) = if id == 0 {
            (UNMATCHED.to_string(), "-")
        } else if cfg.flags & RULE_MONITOR != 0 {
            (rule_name(&cfg), "monitor")
        } else {
            (rule_name(&cfg), "enforce")
        };
        let unverified = if cfg.unverified.is_enabled() {
            let g = cfg.unverified;
            let tat = budget.get(&id, 0).map_err(err(MAP_BUDGET))?;
            // Tokens in hand: the burst minus the backlog the TAT runs ahead of now.
            let ahead = tat.saturating_sub(now);
            let used = ahead.div_ceil(g.interval_ns.max(1));
            let since = attack.get(&id, 0).map_err(err(MAP_ATTACK))?;
            let attack_since = (since != 0).then(|| {
                let ago = std::time::Duration::from_nanos(now.saturating_sub(since));
                crate::audit::rfc3339(wall_now - ago)
            });
            Some(UnverifiedStats {
                rate_per_sec: g.rate_milli_per_sec() as f64 / 1000.0,
                burst: g.burst(),
                tokens_left: g.burst().saturating_sub(used),
                admitted: rstat(id, RS_UNVERIFIED_ADMITTED)?,
                dropped: counts[Reason::UnverifiedLimit.name()].packets,
                answered: counts[Reason::SynCookie.name()].packets,
                verified_conns: rstat(id, RS_VERIFIED_CONNS)?,
                under_attack: since != 0,
                attack_since,
            })
        } else {
            None
        };
        rules.push(RuleStats {
            id,
            name,
            mode,
            promoted_sources: rstat(id, RS_PROMOTED)?,
            untracked_packets: rstat(id, RS_UNTRACKED)?,
            unverified,
            counters: counts,
        });
        rule_cfgs.push((id, cfg));
    }

    let mut tracked = 0u64;
    let mut limited: Vec<(SourceKey, u64)> = Vec::new();
    let pending = refused_pending(&dir)?;
    for entry in sources.iter() {
        // An entry evicted between listing and lookup is simply skipped.
        let Ok((key, state)) = entry else { continue };
        tracked += 1;
        let n = state.limited + pending.get(&key).copied().unwrap_or(0);
        if n > 0 {
            limited.push((key, n));
        }
    }
    limited.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let rule_name = |id: u16| {
        rule_cfgs
            .iter()
            .find(|(i, _)| *i == u32::from(id))
            .map_or_else(|| format!("#{id}"), |(_, c)| rule_name(c))
    };
    let top_sources = limited
        .into_iter()
        .take(TOP_SOURCES)
        .map(|(k, n)| TopSource {
            rule: rule_name(k.rule),
            source: source_text(&k),
            limited: n,
        })
        .collect();

    let active_bans = crate::bans::BanMaps::open(&dir)
        .map(|b| b.active().len() as u64)
        .unwrap_or(0);
    let diag: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open_pinned(&dir, MAP_DIAG)?).map_err(err(MAP_DIAG))?;
    let sum = |slot: u32| -> Result<u64, LoaderError> {
        Ok(diag.get(&slot, 0).map_err(err(MAP_DIAG))?.iter().sum())
    };
    let events_lost = sum(DIAG_EVENTS_LOST)?;
    let source_insert_failures = sum(DIAG_SOURCE_INSERT_FAILED)?;
    let ban_insert_failures = sum(DIAG_BAN_INSERT_FAILED)?;
    let source_inserts = sum(DIAG_SOURCE_INSERTS)?;
    // Entries a reload forgot left the table without the LRU.
    let forgotten = sum(DIAG_SOURCES_FORGOTTEN)?;
    let verifications = sum(DIAG_VERIFICATIONS)?;
    let verified_insert_failures = sum(DIAG_VERIFIED_INSERT_FAILED)?;
    let verified: HashMap<MapData, SourceKey, u64> =
        HashMap::try_from(open_pinned(&dir, MAP_VERIFIED)?).map_err(err(MAP_VERIFIED))?;
    let verified_sources = verified
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, proof)| still_verified(*proof, now, global.verified_ttl_ns))
        .count() as u64;

    Ok(IfaceStats {
        iface: iface.to_string(),
        attached: crate::loader::is_attached(bpffs, iface),
        active_bans,
        events_lost,
        source_insert_failures,
        ban_insert_failures,
        source_inserts,
        source_evictions: source_inserts
            .saturating_sub(forgotten)
            .saturating_sub(tracked),
        verified_sources,
        verifications,
        verified_insert_failures,
        policy_generation: if global.flags & CFG_LOADED != 0 {
            global.generation
        } else {
            0
        },
        mode: if global.flags & CFG_MONITOR != 0 {
            "monitor"
        } else {
            "enforce"
        },
        max_sources,
        tracked_sources: tracked,
        rules,
        top_sources,
    })
}

/// `(rule id, name, attempts over the budget)` of the rules in force that have an
/// `unverified` budget: what the daemon's attack tracking reads each second. Over the budget
/// means dropped (`unverified_limit`) or, with `challenge = "syncookie"`, answered with a
/// cookie (`syncookie`): either way the budget is overrun, so a rule with the challenge is
/// seen under attack too.
pub fn unverified_drops(
    dir: &Path,
    tables: &crate::loader::PolicyMaps,
) -> Result<Vec<(u32, String, u64)>, LoaderError> {
    let err = |map: &'static str| move |source| LoaderError::Map { map, source };
    let counters: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(open_pinned(dir, MAP_COUNTERS)?).map_err(err(MAP_COUNTERS))?;
    let mut out = Vec::new();
    for (id, cfg) in tables.current_rules()? {
        if !cfg.unverified.is_enabled() {
            continue;
        }
        let mut over = 0u64;
        for reason in [Reason::UnverifiedLimit, Reason::SynCookie] {
            let per_cpu = counters
                .get(&counter_index(id, reason), 0)
                .map_err(err(MAP_COUNTERS))?;
            over = over.wrapping_add(per_cpu.iter().map(|c| c.packets).sum());
        }
        out.push((id, rule_name(&cfg), over));
    }
    Ok(out)
}

/// Records an attack's start (data-path clock; 0 = none) for `shield stats`.
pub fn set_attack(dir: &Path, rule: u32, since_ns: u64) -> Result<(), LoaderError> {
    let err = |map: &'static str| move |source| LoaderError::Map { map, source };
    let mut attack: aya::maps::Array<MapData, u64> =
        aya::maps::Array::try_from(open_pinned(dir, MAP_ATTACK)?).map_err(err(MAP_ATTACK))?;
    attack.set(rule, since_ns, 0).map_err(err(MAP_ATTACK))
}

/// Human table: one row per rule, a column per reason that has traffic anywhere.
/// The lines that open an interface's figures (and say when nothing is enforced).
pub fn header(s: &IfaceStats) -> String {
    let mut out = String::new();
    if !s.attached {
        let _ = writeln!(
            out,
            "{}: NOT ATTACHED (the daemon stopped or shield was detached): the figures below are the last ones recorded; nothing is enforced",
            s.iface
        );
    }
    let _ = writeln!(
        out,
        "{}: policy generation {}, mode {}, tracked sources {} of {}, {} {}, events lost {}",
        s.iface,
        s.policy_generation,
        s.mode,
        s.tracked_sources,
        s.max_sources,
        if s.attached {
            "active bans"
        } else {
            "bans recorded (not enforced)"
        },
        s.active_bans,
        s.events_lost
    );
    out
}

pub fn render_table(stats: &Stats) -> String {
    let mut out = String::new();
    for s in &stats.interfaces {
        out.push_str(&header(s));
        let reasons: Vec<&'static str> = Reason::ALL
            .iter()
            .map(|r| r.name())
            .filter(|n| s.rules.iter().any(|r| r.counters[n].packets > 0))
            .collect();
        if reasons.is_empty() {
            let _ = writeln!(out, "  no packets counted yet");
        } else {
            let mut header = format!("  {:<20}", "RULE");
            for r in &reasons {
                let _ = write!(header, " {r:>12}");
            }
            let _ = writeln!(out, "{header}  (packets)");
            for rule in &s.rules {
                if reasons.iter().all(|r| rule.counters[r].packets == 0) {
                    continue;
                }
                let mut line = format!("  {:<20}", rule.name);
                for r in &reasons {
                    let _ = write!(line, " {:>12}", rule.counters[r].packets);
                }
                let _ = writeln!(out, "{line}");
            }
        }
        if s.verifications > 0 || s.rules.iter().any(|r| r.unverified.is_some()) {
            let _ = writeln!(
                out,
                "  verified sources {} ({} proofs), source inserts {}, evictions {}",
                s.verified_sources, s.verifications, s.source_inserts, s.source_evictions
            );
        }
        for rule in &s.rules {
            let Some(u) = &rule.unverified else { continue };
            let state = match &u.attack_since {
                Some(t) => format!("UNDER ATTACK since {t}"),
                None => "calm".to_string(),
            };
            // Shown once a rule has answered any: a cookie flood is not "dropped 0".
            let answered = if u.answered > 0 {
                format!(", answered with SYN cookies {}", u.answered)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {}: unverified budget {}/s burst {} ({} left): admitted {}, dropped {}{answered}, verified connections {}, promoted sources {}; {state}",
                rule.name,
                u.rate_per_sec,
                u.burst,
                u.tokens_left,
                u.admitted,
                u.dropped,
                u.verified_conns,
                rule.promoted_sources
            );
        }
        if !s.top_sources.is_empty() {
            let _ = writeln!(out, "  top limited sources:");
            for t in &s.top_sources {
                let _ = writeln!(
                    out,
                    "    {:<42} {:<20} {:>10} limited",
                    t.source, t.rule, t.limited
                );
            }
        }
    }
    out
}

/// `shield stats`: the fleet link in one line.
pub fn fleet_line(f: &crate::fleet::Status) -> String {
    format!(
        "fleet: host {}, link {}; published {}, received {}, installed {}, refused {} (allow list {}, bad signature {}, circuit {}, too wide {}, trusted proxy {}, table full {}, malformed {}), skipped {} (unknown rule), lag {:.3} s{}{}",
        f.host,
        if f.connected {
            "up"
        } else {
            "DOWN (local enforcement goes on)"
        },
        f.published,
        f.received,
        f.installed,
        f.refused_allow_list
            + f.refused_signature
            + f.refused_circuit_open
            + f.refused_too_wide
            + f.refused_trusted_proxy
            + f.refused_table_full
            + f.refused_malformed,
        f.refused_allow_list,
        f.refused_signature,
        f.refused_circuit_open,
        f.refused_too_wide,
        f.refused_trusted_proxy,
        f.refused_table_full,
        f.refused_malformed,
        f.skipped_unknown_rule,
        f.lag_seconds,
        if f.circuit_open { ", CIRCUIT OPEN" } else { "" },
        if f.queued > 0 {
            format!(", {} changes queued", f.queued)
        } else {
            String::new()
        },
    )
}

/// Refusals the data path's refusal cache holds per source (summed over CPUs), not yet
/// added to the source's `SourceState::limited` (see shield-ebpf/src/refused.rs). A pin
/// left by a version without the cache: none.
pub fn refused_pending(
    dir: &std::path::Path,
) -> Result<std::collections::HashMap<SourceKey, u64>, LoaderError> {
    let mut out = std::collections::HashMap::new();
    if !dir.join(MAP_REFUSED).exists() {
        return Ok(out);
    }
    let map: PerCpuArray<MapData, shield_common::Refused> =
        PerCpuArray::try_from(open_pinned(dir, MAP_REFUSED)?).map_err(|source| {
            LoaderError::Map {
                map: MAP_REFUSED,
                source,
            }
        })?;
    for i in 0..REFUSED_SLOTS {
        let Ok(values) = map.get(&i, 0) else { continue };
        for e in values.iter().filter(|e| e.pending != 0) {
            *out.entry(e.key).or_insert(0) += u64::from(e.pending);
        }
    }
    Ok(out)
}
