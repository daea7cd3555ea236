//! Quotas (calendar windows, saved in `--state-dir`) and `concurrency` slots: the state
//! that outlives one decision and its gauges.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{Limiter, MAX_KEYS, stored_key};

/// One key's quota use, as kept in `--state-dir`/`app-quotas.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQuota {
    pub endpoint: String,
    pub key: String,
    /// The window's start, unix seconds (UTC).
    pub window_start: u64,
    pub used: u64,
}

impl Limiter {
    /// Every key's quota use in its current window (for the state file).
    pub fn quotas_snapshot(&self) -> Vec<SavedQuota> {
        let wall = self.clock.wall_secs();
        let mut v: Vec<SavedQuota> = self
            .quotas
            .iter()
            .filter(|((name, _), (start, _))| {
                self.policy
                    .endpoints
                    .iter()
                    .find(|e| &e.name == name)
                    .and_then(|e| e.quota)
                    .is_some_and(|q| start.saturating_add(q.per_secs) > wall)
            })
            .map(|((endpoint, key), (window_start, used))| SavedQuota {
                endpoint: endpoint.clone(),
                key: key.clone(),
                window_start: *window_start,
                used: *used,
            })
            .collect();
        v.sort_by(|a, b| (&a.endpoint, &a.key).cmp(&(&b.endpoint, &b.key)));
        v
    }

    /// Quota use read back at start (entries of another window are dropped when read).
    pub fn load_quotas(&mut self, saved: Vec<SavedQuota>) {
        let room = MAX_KEYS.saturating_mul(
            self.policy
                .endpoints
                .iter()
                .filter(|e| e.quota.is_some())
                .count(),
        );
        for q in saved.into_iter().take(room) {
            // A file of an older version may hold keys as long as the request sent them.
            let key = stored_key(&q.key).into_owned();
            self.quotas
                .insert((q.endpoint, key), (q.window_start, q.used));
        }
        self.refresh_gauges();
    }

    /// Sets the in-flight and quota gauges from the tables (after a load, a tick, a reload).
    pub(super) fn refresh_gauges(&self) {
        for t in &self.endpoints {
            t.counts
                .in_flight
                .store(self.in_flight_of(&t.name), Ordering::Relaxed);
            t.counts
                .quota_used
                .store(self.quota_used_of(&t.name), Ordering::Relaxed);
        }
    }

    /// Whether quota use changed since the last call.
    pub fn take_quotas_dirty(&mut self) -> bool {
        std::mem::take(&mut self.quotas_dirty)
    }

    /// Tokens used in the current window by endpoint `name` (every key).
    pub fn quota_used_of(&self, name: &str) -> u64 {
        let wall = self.clock.wall_secs();
        let Some(q) = self
            .policy
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.quota)
        else {
            return 0;
        };
        let window = wall / q.per_secs * q.per_secs;
        self.quotas
            .iter()
            .filter(|((n, _), (w, _))| n == name && *w == window)
            .map(|(_, (_, u))| *u)
            .sum()
    }

    /// Requests of endpoint `name` in flight now (every key).
    pub fn in_flight_of(&self, name: &str) -> u64 {
        self.in_flight
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, c)| *c)
            .sum()
    }

    /// Ends the request holding `slot` (its response ended, or its connection closed).
    /// False when no such slot is held (released already).
    pub fn release(&mut self, slot: u64) -> bool {
        let Some(k) = self.slots.remove(&slot) else {
            return false;
        };
        if let Some(c) = self.in_flight.get_mut(&k) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.in_flight.remove(&k);
            }
        }
        let n = self.in_flight_of(&k.0);
        if let Some(t) = self.endpoints.iter().find(|t| t.name == k.0) {
            t.counts.in_flight.store(n, Ordering::Relaxed);
        }
        true
    }
}
