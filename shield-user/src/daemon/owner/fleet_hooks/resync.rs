//! The owner's resync from the fleet's hash (a start, a trimmed stream, a Redis that lost
//! its data): the received bans gone from the hash lifted, the hash's installed, and after
//! lost data this host's own bans published again.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::Ordering,
};

use serde_json::json;
use tracing::{info, warn};

use super::{UNBAN_SKEW_MS, ban_message, field, issued_ms};
use crate::{
    bans::BanEntry,
    daemon::{fleet::Snapshot, owner::Owner},
    fleet::{Message, now_ms},
};

impl Owner {
    /// Puts the fleet's hash (`snap.bans`: every active fleet ban) in force here. The
    /// fleet bans this host holds that are not in it (lifted or ended while the link was
    /// down, or while this daemon was stopped) are lifted first, so that their room goes
    /// to the bans that are. A field this host could not read (`snap.unreadable`: a key
    /// that differs, a forged value) is still in the hash: its ban stays. Returns (bans
    /// installed, bans lifted).
    pub(super) fn fleet_resync(&mut self, snap: Snapshot) -> (u64, usize) {
        let Snapshot {
            bans,
            unreadable,
            lost,
            unbans,
            read_ms,
            queued,
        } = snap;
        let mut present = unreadable;
        present.extend(bans.iter().map(Message::field));
        let lifted = self.lift_gone(&present);
        if lost {
            // Unbanned elsewhere since Redis began again: lifted here, not published again.
            for m in &unbans {
                self.fleet_unban(m);
            }
            // The bans queued while the link was down are published by the session.
            present.extend(queued);
            let n = self.publish_again(&present);
            info!("fleet: published again {n} bans this host issued that Redis had lost");
        }
        // Redis loaded an older snapshot: its hash holds bans unbanned since. One issued
        // before the last change this host read reached it then; not held here, it was
        // unbanned (or refused) here, and is not installed again.
        let held: HashSet<String> = if lost {
            self.instances
                .iter()
                .flat_map(|i| i.bans.active())
                .map(|b| field(&b.source, b.scope, &b.rule))
                .collect()
        } else {
            HashSet::new()
        };
        let stale = |b: &Message| {
            lost && issued_ms(b).saturating_add(UNBAN_SKEW_MS) <= read_ms
                && !held.contains(&b.field())
        };
        let before = self.counters.fleet.installed.load(Ordering::Relaxed);
        for b in bans.into_iter().filter(|b| !stale(b)) {
            self.fleet_apply(b, false);
        }
        let installed = self.counters.fleet.installed.load(Ordering::Relaxed) - before;
        (installed, lifted)
    }

    /// After Redis lost its data: publishes again the bans this host issued that are in
    /// force here and not in `present` (fields of the fleet's hash), with their expiry and
    /// when they were issued, so that the other hosts get them back. Monitor bans never
    /// were published. Returns how many.
    fn publish_again(&mut self, present: &HashSet<String>) -> usize {
        let Some(link) = self.fleet.as_ref() else {
            return 0;
        };
        let mut seen = HashSet::new();
        let now = now_ms();
        let mut n = 0;
        for b in self.instances.iter().flat_map(|i| i.bans.active()) {
            let f = field(&b.source, b.scope, &b.rule);
            if b.monitor
                || b.remaining_secs <= 0.0
                || present.contains(&f)
                || link.origins.contains_key(&f)
                || !seen.insert(f)
            {
                continue;
            }
            let issued =
                now.saturating_sub(((b.duration_secs - b.remaining_secs).max(0.0) * 1000.0) as u64);
            if link
                .tx
                .try_send(ban_message(&b, &self.host, issued))
                .is_err()
            {
                warn!(
                    "fleet: the fleet task is behind; some bans of this host are not published again"
                );
                break;
            }
            n += 1;
        }
        n
    }

    /// Lifts the received bans held here that are not in `present` (fields of the fleet's
    /// hash). Only those: this host's own bans of the same sources stay.
    fn lift_gone(&mut self, present: &HashSet<String>) -> usize {
        let Some(link) = self.fleet.as_mut() else {
            return 0;
        };
        let gone: HashSet<String> = link
            .origins
            .keys()
            .filter(|f| !present.contains(*f))
            .cloned()
            .collect();
        for f in &gone {
            link.origins.remove(f);
            link.issued.remove(f);
        }
        // One pass over each interface's tables, however many bans are gone.
        let mut removed: HashMap<String, usize> = HashMap::new();
        for inst in &mut self.instances {
            let gone_here = |b: &BanEntry| gone.contains(&field(&b.source, b.scope, &b.rule));
            match inst.bans.unban_all_where(gone_here) {
                Ok(r) => {
                    for b in r {
                        *removed.entry(b.source).or_default() += 1;
                    }
                }
                Err(e) => {
                    warn!(iface = %inst.iface, "fleet: lifting the bans gone from the fleet: {e}")
                }
            }
        }
        for (source, n) in &removed {
            self.audit.write(json!({
                "event": "fleet_unban",
                "source": source,
                "origin_host": "resync",
                "removed": n,
                "kept": 0,
            }));
        }
        if !gone.is_empty() {
            self.state_dirty = true;
        }
        removed.values().sum()
    }
}
