//! Installing a compiled policy on every interface (the start and every reload), and the
//! reply that says what it did.

use std::{collections::HashMap, time::Duration};

use shield_common::CFG_BANS;

use super::IfaceMaps;
use crate::{
    control::Reloaded,
    policy::{self, CompiledPolicy},
};

/// What `install_all` did on every interface.
pub(crate) struct InstallDone {
    pub ports_written: usize,
    pub lists_swapped: bool,
    /// Monitor-mode bans dropped because their rule is now enforced (or gone), by
    /// interface: their sources are judged by the enforced rule from now on.
    pub monitor_bans_dropped: Vec<(String, crate::bans::BanEntry)>,
}

/// Installs `compiled` as `generation` on every interface: each inactive half is written,
/// then flipped. Keeps the data path's ban lookups on where bans exist and drops rule bans
/// of rules that are gone.
pub(crate) fn install_all(
    maps: &mut [(String, IfaceMaps)],
    policy: &policy::Policy,
    compiled: &CompiledPolicy,
    generation: u32,
) -> Result<InstallDone, String> {
    let mut done = InstallDone {
        ports_written: 0,
        lists_swapped: false,
        monitor_bans_dropped: Vec::new(),
    };
    for (iface, m) in maps.iter_mut() {
        // Before the program may answer with cookies: SYNPROXY must be there for the ACKs.
        // The statement offers timestamps exactly where the XDP SYN-ACK does.
        crate::synproxy::apply(iface, policy, m.tables.syncookie_timestamps)
            .map_err(|e| format!("{iface}: syncookie: {e}"))?;
        let extra = if m.bans.any() { CFG_BANS } else { 0 };
        let d = m
            .tables
            .install(compiled, generation, extra)
            .map_err(|e| format!("{iface}: {e}"))?;
        done.ports_written += d.ports_written;
        done.lists_swapped |= d.lists_swapped;
        let _ = m.bans.drop_orphans();
        if let Ok(dropped) = m.bans.drop_enforced_monitor_bans() {
            done.monitor_bans_dropped
                .extend(dropped.into_iter().map(|b| (iface.clone(), b)));
        }
    }
    Ok(done)
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
