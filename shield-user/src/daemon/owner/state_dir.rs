//! The owner's side of `--state-dir`: the active bans saved there (within a second of a
//! change) and restored at a start that finds the pinned maps gone, with the origins of
//! the fleet's bans among them.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use serde_json::json;
use tracing::{info, warn};

use super::{
    Owner,
    fleet_hooks::{field, flags_of},
};
use crate::{
    bans::BanSpec,
    fleet::{
        now_ms,
        state::{self, SavedBan},
    },
    policy::parse_cidr,
};

impl Owner {
    /// At start, for interfaces whose pinned maps were gone: the bans saved in
    /// `--state-dir` that have not ended.
    /// With `[fleet]`, also the origins of the received bans still in the tables (kept in
    /// the pins across a restart): they stay the fleet's, counted against `max_bans`.
    pub(super) fn restore_state(&mut self, ifaces: &[String]) {
        if ifaces.is_empty() && self.policy.fleet.is_none() {
            return;
        }
        let saved = match state::read(&self.state_dir) {
            Ok(s) => s,
            Err(e) => {
                warn!("--state-dir: cannot restore bans: {e}");
                return;
            }
        };
        let now = now_ms();
        let mut restored = 0;
        for b in &saved {
            if !ifaces.contains(&b.iface) || b.expires_ms <= now {
                continue;
            }
            let Ok(cidr) = parse_cidr(&b.source) else {
                continue;
            };
            let Some(inst) = self.instances.iter_mut().find(|i| i.iface == b.iface) else {
                continue;
            };
            let spec = BanSpec {
                cidr,
                dur: Duration::from_millis(b.expires_ms - now),
                // The duration it was issued with, not the time left.
                issued: Some(Duration::try_from_secs_f64(b.duration_secs).unwrap_or_default()),
                scope: b.scope,
                rule: (!b.rule.is_empty()).then_some(b.rule.as_str()),
                flags: flags_of(&b.origin, &b.cuts),
                level: b.level,
                reason: b.reason.as_deref(),
            };
            match inst.bans.ban_spec(&spec) {
                Ok(_) => restored += 1,
                Err(e) => {
                    warn!(iface = %b.iface, "--state-dir: ban of {} not restored: {e}", b.source)
                }
            }
        }
        if saved.is_empty() {
            return;
        }
        if !ifaces.is_empty() {
            info!(
                "restored {restored} bans from {} (the pinned maps were gone)",
                self.state_dir.join(state::BANS_FILE).display()
            );
            self.audit.write(json!({
                "event": "restore",
                "bans": restored,
                "from": self.state_dir.join(state::BANS_FILE).display().to_string(),
            }));
            self.state_dirty = true;
        }
        // The origins of the fleet's bans in force (restored, or kept in the pins): for
        // `shield bans`, and counted against `max_bans`.
        let live: HashSet<String> = self
            .instances
            .iter()
            .flat_map(|i| i.bans.active())
            .map(|b| field(&b.source, b.scope, &b.rule))
            .collect();
        self.pending_origins = saved
            .into_iter()
            .filter_map(|b| {
                let f = field(&b.source, b.scope, &b.rule);
                b.origin_host.filter(|_| live.contains(&f)).map(|h| (f, h))
            })
            .collect();
    }

    pub(super) fn maybe_save_state(&mut self) {
        if self.state_dirty
            && self
                .state_written
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.save_state();
        }
    }

    /// Writes the active bans to `--state-dir` (atomically).
    pub(super) fn save_state(&mut self) {
        let now = now_ms();
        let mut out = Vec::new();
        for inst in &self.instances {
            for b in inst.bans.active() {
                if b.monitor {
                    continue;
                }
                let host = self.origin_host_of(&b);
                out.push(SavedBan {
                    iface: inst.iface.clone(),
                    source: b.source.clone(),
                    scope: b.scope,
                    rule: b.rule.clone(),
                    origin: b.origin.as_str().to_string(),
                    cuts: b.cuts.as_str().to_string(),
                    level: b.level,
                    duration_secs: b.duration_secs,
                    expires_ms: now + (b.remaining_secs * 1000.0) as u64,
                    reason: b.comment.clone(),
                    origin_host: (host != self.host).then_some(host),
                });
            }
        }
        if let Err(e) = state::write(&self.state_dir, &out) {
            warn!("--state-dir: {e}");
        }
        self.state_dirty = false;
        self.state_written = Some(Instant::now());
    }
}
