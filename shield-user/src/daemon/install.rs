//! Installing a compiled policy on every interface (the start and every reload), and the
//! reply that says what it did.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use shield_common::{CFG_BANS, CFG_LOADED};
use tracing::warn;

use crate::{
    bans::BanMaps,
    control::Reloaded,
    loader::PolicyMaps,
    policy::{self, CompiledPolicy},
};

/// One interface's policy tables, borrowed by an install (a reload's job holds them; the
/// daemon keeps serving bans on the ban tables meanwhile).
pub(crate) struct Tables {
    pub iface: String,
    /// The pin directory: where the install reads whether bans exist.
    pub dir: PathBuf,
    pub maps: PolicyMaps,
}

/// What `install_all` did on every interface.
pub(crate) struct InstallDone {
    pub ports_written: usize,
    pub lists_swapped: bool,
    /// Bans the install left stale, by interface: monitor bans of rules now enforced (their
    /// sources are judged by the enforced rule from now on), and bans of removed rules.
    /// Filled by `drop_stale_bans`, after the install.
    pub bans_dropped: Vec<StaleBan>,
}

/// Installs `compiled` as `generation` on every interface: each inactive half is written,
/// then flipped. Keeps the data path's ban lookups on where bans exist (the bans the new
/// policy leaves stale go in `drop_stale_bans`). All or nothing: where one interface's
/// install fails, the interfaces installed before it get their policy back (and their
/// syncookie table), so a failed reload leaves the policy in force everywhere.
pub(crate) fn install_all(
    maps: &mut [Tables],
    policy: &policy::Policy,
    compiled: &CompiledPolicy,
    generation: u32,
) -> Result<InstallDone, String> {
    let mut done = InstallDone {
        ports_written: 0,
        lists_swapped: false,
        bans_dropped: Vec::new(),
    };
    let mut undo = Vec::with_capacity(maps.len());
    for Tables {
        iface,
        dir,
        maps: m,
    } in maps.iter_mut()
    {
        // What `undo_installs` needs: the table and the half in force (none on maps this
        // start created), and the old lists kept until every interface is done.
        let previous_half = m
            .active()
            .ok()
            .and_then(|(half, cfg)| (cfg.flags & CFG_LOADED != 0).then_some(half));
        let table = match crate::synproxy::snapshot(iface) {
            Ok(t) => t,
            Err(e) => {
                let e = format!("{iface}: syncookie: {e}");
                undo_installs(maps, &undo);
                return Err(e);
            }
        };
        undo.push(Undo {
            table,
            previous_half,
            kept_lists: m.keep_old_lists,
        });
        m.keep_old_lists = true;
        match install_one(iface, dir, m, policy, compiled, generation) {
            Ok((ports, swapped)) => {
                done.ports_written += ports;
                done.lists_swapped |= swapped;
            }
            Err(e) => {
                undo_installs(maps, &undo);
                return Err(e);
            }
        }
    }
    // Every interface has the new policy: the old lists go where nobody asked to keep them.
    for (Tables { iface, maps: m, .. }, u) in maps.iter_mut().zip(&undo) {
        if !u.kept_lists
            && let Err(e) = m.settle()
        {
            warn!(%iface, "cannot empty the old policy's lists (the next reload rewrites them): {e}");
        }
    }
    Ok(done)
}

fn install_one(
    iface: &str,
    dir: &std::path::Path,
    m: &mut PolicyMaps,
    policy: &policy::Policy,
    compiled: &CompiledPolicy,
    generation: u32,
) -> Result<(usize, bool), String> {
    // Before the program may answer with cookies: SYNPROXY must be there for the ACKs.
    // The statement offers timestamps exactly where the XDP SYN-ACK does.
    crate::synproxy::apply(iface, policy, m.syncookie_timestamps)
        .map_err(|e| format!("{iface}: syncookie: {e}"))?;
    let bans_exist = || crate::bans::bans_exist(dir).map_err(|e| format!("{iface}: {e}"));
    let extra = if bans_exist()? { CFG_BANS } else { 0 };
    let d = m
        .install(compiled, generation, extra)
        .map_err(|e| format!("{iface}: {e}"))?;
    // A ban stored meanwhile (the daemon serves bans during a reload) turned the lookups on
    // in the half that was in force: on in the new one too. A ban stored after the flip
    // turns them on in the new half itself.
    if extra == 0 && bans_exist()? {
        m.set_flag(CFG_BANS, true)
            .map_err(|e| format!("{iface}: {e}"))?;
    }
    Ok((d.ports_written, d.lists_swapped))
}

/// What an interface had before `install_all` touched it.
struct Undo {
    table: Option<String>,
    previous_half: Option<u32>,
    kept_lists: bool,
}

/// Gives the first `undo.len()` interfaces back what they had: the half in force (whole:
/// its lists were kept; the ban lookups on if bans are stored), the syncookie table. The
/// per-source state of rules new to an id, which the install forgot, stays forgotten (a new
/// rule had none; a rule removed under all 255 ids taken loses its counts).
fn undo_installs(maps: &mut [Tables], undo: &[Undo]) {
    for (
        Tables {
            iface,
            dir,
            maps: m,
        },
        u,
    ) in maps.iter_mut().zip(undo).rev()
    {
        if let Some(half) = u.previous_half {
            if let Err(e) = m.restore_half(half) {
                warn!(%iface, "cannot restore the previous policy: {e}");
            }
            // A ban stored after this interface's flip (bans are served during a reload)
            // turned the lookups on in the half then in force, the undone one: on in the
            // half in force again too (a ban stored from now on turns them on itself).
            if crate::bans::bans_exist(dir).unwrap_or(true)
                && let Err(e) = m.set_flag(CFG_BANS, true)
            {
                warn!(%iface, "cannot turn the ban lookups on: {e}");
            }
        }
        let _ = m.take_fresh_ids();
        if let Err(e) = crate::synproxy::restore(iface, u.table.as_deref()) {
            warn!(%iface, "cannot put the syncookie nftables table back: {e}");
        }
        m.keep_old_lists = u.kept_lists;
    }
}

/// A ban `drop_stale_bans` removed, for its `ban_end`.
pub(crate) struct StaleBan {
    pub iface: String,
    pub ban: crate::bans::BanEntry,
    /// `ended`: "rule enforced" (a monitor ban of a rule now enforced) or "rule removed".
    pub ended: &'static str,
}

/// Removes the bans the policy just installed leaves stale: rule bans of rules it no longer
/// has (or whose id it gave to a new rule: those issued before its flip), and monitor bans of rules it enforces or removed
/// (returned, by interface, for their `ban_end`; a removed rule named as in `previous`, the
/// ids of the policy before). Run once the install is committed: a reload's at once, a
/// start's once attached, since an undone start gives adopted maps back their policy, which
/// still needs those bans.
pub(crate) fn drop_stale_bans<'a>(
    maps: impl IntoIterator<Item = (&'a str, &'a mut PolicyMaps, &'a mut BanMaps)>,
    previous: &HashMap<String, u32>,
) -> Vec<StaleBan> {
    let mut stale = Vec::new();
    // Listed under the policy now in force, which has no name for a removed id (or, for an
    // id a new rule took, the new rule's name).
    let named = |mut b: crate::bans::BanEntry, iface: &str, fresh: &[u16]| {
        let mut ended = "rule enforced";
        if b.rule == format!("#{}", b.rule_id) || fresh.contains(&b.rule_id) {
            ended = "rule removed";
            if let Some((name, _)) = previous.iter().find(|(_, id)| **id == u32::from(b.rule_id)) {
                b.rule = name.clone();
            }
        }
        StaleBan {
            iface: iface.to_string(),
            ban: b,
            ended,
        }
    };
    for (iface, tables, bans) in maps {
        let fresh = tables.take_fresh_ids();
        let flipped_ns = tables.flipped_ns();
        // Monitor bans first: a removed rule's rule-scope ones are monitor bans too.
        if let Ok(dropped) = bans.drop_enforced_monitor_bans() {
            stale.extend(dropped.into_iter().map(|b| named(b, iface, &fresh)));
        }
        // A removed rule's every one (its id is not live, or a new rule took it).
        if let Ok(dropped) = bans.drop_orphans(&fresh, flipped_ns) {
            stale.extend(dropped.into_iter().map(|b| named(b, iface, &fresh)));
        }
    }
    stale
}

/// The `ban_end` lines of the bans `drop_stale_bans` removed.
pub(crate) fn stale_bans_ended(audit: &mut crate::audit::AuditLog, dropped: &[StaleBan]) {
    for s in dropped {
        let mut line = super::upkeep::ban_json("ban_end", &s.iface, &s.ban, None);
        line["level"] = s.ban.level.into();
        if s.ban.monitor {
            line["monitor"] = true.into();
        }
        line["ended"] = s.ended.into();
        audit.write(line);
    }
}

/// Rule name → id of `policy`, keeping the ids of `previous` for names that stay.
pub(crate) fn ids_of(
    policy: &policy::Policy,
    previous: &HashMap<String, u32>,
) -> HashMap<String, u32> {
    let ids = policy::assign_ids(policy, previous);
    policy
        .rules
        .iter()
        .zip(ids)
        .map(|(r, id)| (r.name.clone(), id))
        .collect()
}

/// The reply to a successful install.
pub(crate) fn reloaded(
    policy: &policy::Policy,
    generation: u32,
    done: &InstallDone,
    took: Duration,
) -> Reloaded {
    Reloaded {
        generation,
        rules: policy.rules.len(),
        allow: policy.allow.len(),
        deny: policy.deny.len(),
        port_slots_written: done.ports_written,
        lists_swapped: done.lists_swapped,
        took_ms: millis(took),
    }
}

/// A duration in milliseconds to the microsecond, so that the audit line and the reply say
/// `34.275`, not the float noise of `as_secs_f64() * 1000.0` (`34.275327000000004`).
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_times_are_whole_microseconds_without_float_noise() {
        let json = |d| serde_json::json!({ "took_ms": millis(d) }).to_string();
        assert_eq!(
            json(Duration::from_nanos(34_275_327)),
            r#"{"took_ms":34.275}"#
        );
        assert_eq!(
            json(Duration::from_nanos(346_572_213)),
            r#"{"took_ms":346.572}"#
        );
        assert_eq!(json(Duration::from_secs(5)), r#"{"took_ms":5000.0}"#);
    }
}
