//! The app layer's counters per endpoint and signal, shared with `/metrics` and
//! `shield stats`.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use super::Kind;

/// What an endpoint or signal counted, shared with `/metrics` and `shield stats`.
#[derive(Debug, Default)]
pub struct Counts {
    pub allowed: AtomicU64,
    pub limited: AtomicU64,
    pub banned: AtomicU64,
    /// Gauge: requests in flight now (`concurrency = N` endpoints), every key.
    pub in_flight: AtomicU64,
    /// Gauge: tokens used in the current quota window (`quota` endpoints), every key.
    pub quota_used: AtomicU64,
}

/// The app layer's counters: per endpoint and signal, plus errors (bad requests, bad
/// forwarded addresses, full tables). Written by the app task, read by scrapes.
#[derive(Debug, Default)]
pub struct AppCounters {
    pub errors: AtomicU64,
    by_name: Mutex<BTreeMap<(Kind, String), Arc<Counts>>>,
}

/// One row of `AppCounters::snapshot`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CountsRow {
    pub kind: String,
    pub name: String,
    pub allowed: u64,
    pub limited: u64,
    pub banned: u64,
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub quota_used: u64,
}

impl AppCounters {
    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of `name` (created at zero).
    pub fn of(&self, kind: Kind, name: &str) -> Arc<Counts> {
        let mut m = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((kind, name.to_string())).or_default().clone()
    }

    /// Keeps only the names of the policy in force.
    pub(super) fn retain(&self, live: &[(Kind, String)]) {
        let mut m = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|k, _| live.contains(k));
    }

    pub fn snapshot(&self) -> Vec<CountsRow> {
        let m = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|((kind, name), c)| CountsRow {
                kind: kind.as_str().to_string(),
                name: name.clone(),
                allowed: c.allowed.load(Ordering::Relaxed),
                limited: c.limited.load(Ordering::Relaxed),
                banned: c.banned.load(Ordering::Relaxed),
                in_flight: c.in_flight.load(Ordering::Relaxed),
                quota_used: c.quota_used.load(Ordering::Relaxed),
            })
            .collect()
    }
}
