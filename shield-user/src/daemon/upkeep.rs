//! The daemon's recurring upkeep and audit lines: data-path events and bans as audit JSON,
//! the once-a-second ban expiry and attack tracking. Called by the owner, which holds the
//! maps.

use std::time::{Duration, SystemTime};

use serde_json::json;
use shield_common::{
    EV_BAN, EV_BAN_FAILED, EV_LIMITED, EV_WOULD_BAN, Event, Reason, addr::FAMILY_V4,
};
use tracing::warn;

use super::{Instance, wall_of};
use crate::{
    audit::{AuditLog, rfc3339},
    bans::BanEntry,
};

pub(super) fn event_json(
    inst: &Instance,
    ev: &Event,
    mono_now: u64,
    wall_now: SystemTime,
) -> serde_json::Value {
    let k = &ev.key;
    let ip: std::net::IpAddr = if k.family == FAMILY_V4 {
        std::net::Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]).into()
    } else {
        std::net::Ipv6Addr::from(k.addr).into()
    };
    let reason = Reason::from_code(ev.reason).map_or("unknown", Reason::name);
    let mut v = json!({
        "ts": rfc3339(wall_of(ev.ts_ns, mono_now, wall_now)),
        "iface": inst.iface,
        "source": format!("{ip}/{}", k.prefix_len),
        "rule": inst.rule_name(k.rule),
        "reason": reason,
        "limited": ev.limited,
    });
    let Some(o) = v.as_object_mut() else {
        return v;
    };
    // The limit that refused: in monitor mode the one `would_drop` stands for.
    if let Some(limit) = Reason::from_code(u32::from(ev.limit)).filter(|r| *r != Reason::Pass) {
        o.insert("limit".into(), limit.name().into());
    }
    match ev.kind {
        EV_LIMITED => {
            o.insert("event".into(), "limited".into());
        }
        EV_BAN | EV_WOULD_BAN | EV_BAN_FAILED => {
            let kind = match ev.kind {
                EV_BAN => "ban",
                EV_WOULD_BAN => "would_ban",
                _ => "ban_failed",
            };
            if ev.kind == EV_BAN_FAILED {
                o.insert(
                    "error".into(),
                    format!(
                        "the ban table is full ({} entries): the source is not banned",
                        shield_common::MAX_BANS
                    )
                    .into(),
                );
            }
            o.insert("event".into(), kind.into());
            o.insert("origin".into(), "automatic".into());
            // Automatic bans rest on evidence a spoofer can forge: they stop new
            // connection attempts (and datagrams), never established connections.
            o.insert("cuts".into(), "new_connections".into());
            o.insert(
                "scope".into(),
                if ev.host_scope != 0 { "host" } else { "rule" }.into(),
            );
            o.insert("strikes".into(), ev.strikes.into());
            o.insert("level".into(), ev.level.into());
            o.insert(
                "ban_secs".into(),
                Duration::from_nanos(ev.duration_ns).as_secs_f64().into(),
            );
            if ev.kind != EV_BAN_FAILED {
                o.insert(
                    "expires".into(),
                    rfc3339(wall_of(
                        ev.ts_ns.saturating_add(ev.duration_ns),
                        mono_now,
                        wall_now,
                    ))
                    .into(),
                );
            }
        }
        other => {
            o.insert("event".into(), format!("unknown_{other}").into());
        }
    }
    v
}

pub(super) fn ban_json(
    event: &str,
    iface: &str,
    b: &BanEntry,
    comment: Option<&String>,
) -> serde_json::Value {
    let mut v = json!({
        "event": event,
        "origin": b.origin,
        "iface": iface,
        "source": b.source,
        "scope": b.scope,
        "rule": b.rule,
        "ban_secs": b.duration_secs,
    });
    if let Some(c) = comment {
        v["comment"] = c.clone().into();
    }
    v
}

/// Removes expired bans (logging `ban_end`) and keeps the data path's ban lookups on only
/// while they can matter.
pub(super) fn sweep(inst: &mut Instance, audit: &mut AuditLog, escalates: bool) {
    let m = &mut inst.bans;
    let expired = match m.sweep() {
        Ok(e) => e,
        Err(e) => {
            warn!(iface = %inst.iface, "ban expiry: {e}");
            return;
        }
    };
    for b in &expired {
        let mut line = ban_json("ban_end", &inst.iface, b, b.comment.as_ref());
        line["level"] = b.level.into();
        audit.write(line);
    }
    let any = m.any();
    if let Err(e) = m.set_bans_flag(escalates || any) {
        warn!(iface = %inst.iface, "{e}");
    }
}

/// The attack tracker's key prefix of `iface`'s rules: `/` ends the name, since interface
/// names cannot hold one (they can hold `|`: with that as the end, `eth0`'s prefix was also
/// `eth0|x`'s, whose attacks `eth0`'s checks then ended or forgot).
fn attack_prefix(iface: &str) -> String {
    format!("{iface}/")
}

/// Ends every attack still running on `inst` (the daemon stops, or lost the interface), so
/// that no `attack_start` stays without its `attack_end`. `why` goes into `ended`. The maps
/// say so too: `shield stats` reads them after the stop (from the pins), and a new daemon
/// only clears them at its first check.
pub(super) fn end_attacks(
    inst: &Instance,
    audit: &mut AuditLog,
    tracker: &mut crate::attack::Tracker,
    why: &str,
) {
    let now = crate::loader::mono_coarse_ns().wrapping_add(inst.clock_offset_ns);
    let prefix = attack_prefix(&inst.iface);
    let ended = tracker.retain(|k| !k.starts_with(&prefix), now);
    for (key, _) in &ended {
        let name = key.strip_prefix(&prefix).unwrap_or(key);
        // A lost interface's pins may be gone: nothing to clear then.
        if let Some((&id, _)) = inst.names.iter().find(|(_, n)| *n == name) {
            let _ = crate::stats::set_attack(&inst.dir, u32::from(id), 0);
        }
    }
    write_ended(audit, &inst.iface, ended, why);
}

/// Writes an `attack_end` with `ended: why` for each attack `Tracker::retain` ended.
fn write_ended(
    audit: &mut AuditLog,
    iface: &str,
    ended: Vec<(String, crate::attack::Change)>,
    why: &str,
) {
    let prefix = attack_prefix(iface);
    for (key, change) in ended {
        if let crate::attack::Change::End { secs, dropped } = change {
            audit.write(json!({
                "event": "attack_end",
                "iface": iface,
                "rule": key.strip_prefix(&prefix).unwrap_or(&key),
                "duration_secs": (secs * 10.0).round() / 10.0,
                "dropped": dropped,
                "ended": why,
            }));
        }
    }
}

/// Logs the start and end of attacks on rules' `unverified` budgets and records them in the
/// maps for `shield stats`.
pub(super) fn watch_attacks(
    inst: &Instance,
    audit: &mut AuditLog,
    tracker: &mut crate::attack::Tracker,
) {
    let Some(m) = &inst.tables else { return };
    let totals = match crate::stats::unverified_drops(&inst.dir, m) {
        Ok(t) => t,
        Err(e) => {
            warn!(iface = %inst.iface, "attack tracking: {e}");
            return;
        }
    };
    let now = crate::loader::mono_coarse_ns().wrapping_add(inst.clock_offset_ns);
    let prefix = attack_prefix(&inst.iface);
    let removed = tracker.retain(
        |k| !k.starts_with(&prefix) || totals.iter().any(|(_, n, _)| k == format!("{prefix}{n}")),
        now,
    );
    // A rule removed by a reload ends its attack: no attack_start stays without its end.
    write_ended(audit, &inst.iface, removed, "rule removed");
    for (id, name, total) in totals {
        let key = format!("{prefix}{name}");
        let first = !tracker.knows(&key);
        let change = tracker.observe(&key, total, now);
        let line = match change {
            // A new daemon starts calm: clear what a previous one may have left.
            None if first => {
                if let Err(e) = crate::stats::set_attack(&inst.dir, id, 0) {
                    warn!(iface = %inst.iface, "{e}");
                }
                continue;
            }
            None => continue,
            Some(crate::attack::Change::Start) => json!({
                "event": "attack_start",
                "iface": inst.iface,
                "rule": name,
            }),
            Some(crate::attack::Change::End { secs, dropped }) => json!({
                "event": "attack_end",
                "iface": inst.iface,
                "rule": name,
                "duration_secs": (secs * 10.0).round() / 10.0,
                "dropped": dropped,
            }),
        };
        if let Err(e) = crate::stats::set_attack(&inst.dir, id, tracker.since(&key).unwrap_or(0)) {
            warn!(iface = %inst.iface, "{e}");
        }
        audit.write(line);
    }
}

#[cfg(test)]
mod tests {
    use super::attack_prefix;

    #[test]
    fn an_interfaces_attack_prefix_is_not_another_interfaces() {
        // `|` may be in an interface name; `/` may not.
        let other = format!("{}api", attack_prefix("eth0|x"));
        assert!(!other.starts_with(&attack_prefix("eth0")), "{other}");
        assert!(other.starts_with(&attack_prefix("eth0|x")), "{other}");
    }
}
