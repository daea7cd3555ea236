//! The application layer's decisions, without sockets: endpoint matching, the client
//! address behind trusted proxies, keys, limits (the GCRA of `shield_common::bucket`),
//! strikes and bans (the ladder of `shield_common::judge`), and the L7 ban table. The
//! daemon's app task (`daemon::app`) owns one `Limiter` and feeds it parsed requests.

mod client;
mod counters;
mod decide;
mod l7bans;
pub mod protocol;
mod quota;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use shield_common::{Gcra, SourceState, bucket::NS_PER_SEC};

use crate::{
    bans::BanFloor,
    policy::{BanScope, Cidr, Endpoint, KeyKind, Limit, OnError, Policy, Signal, buckets},
};
use client::parse_ip;
pub use client::{Client, contains, masked, resolve_client};
pub use counters::{AppCounters, Counts, CountsRow};
use protocol::Hello;
pub use quota::SavedQuota;

/// Most keys one endpoint or signal tracks at once: keys come from requests (a header's
/// value), so the table is bounded; past it, idle keys are dropped first, and a new key
/// that still finds no room is allowed without being counted (an app error).
pub const MAX_KEYS: usize = 200_000;
/// Most clients the L7 ban table holds.
pub const MAX_L7_BANS: usize = 100_000;
/// Longest key kept as written. A header's value or a user name comes from the request
/// (up to a whole 64 KiB line): a longer key is kept as its SHA-256, so that a full table
/// holds 200,000 short keys, not 200,000 × 64 KiB of attacker's bytes.
pub const MAX_KEY_LEN: usize = 64;

/// `key` as a table stores it: itself up to `MAX_KEY_LEN` bytes, else `sha256:HEX`.
fn stored_key(key: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest as _;
    if key.len() <= MAX_KEY_LEN {
        return std::borrow::Cow::Borrowed(key);
    }
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    std::borrow::Cow::Owned(s)
}

/// `endpoint` or `signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Endpoint,
    Signal,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Endpoint => "endpoint",
            Kind::Signal => "signal",
        }
    }
}

/// What the app layer needs of a policy.
#[derive(Clone, Debug)]
pub struct AppPolicy {
    pub generation: u32,
    pub on_error: OnError,
    pub trusted_proxies: Vec<Cidr>,
    pub endpoints: Vec<Endpoint>,
    pub signals: Vec<Signal>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub allow: Vec<Cidr>,
    pub floor: BanFloor,
    /// Every header named by a `key = "header:NAME"`, as written, once.
    pub key_headers: Vec<String>,
    /// An XDP program enforces host bans (false in app-only mode: every ban is an L7 ban).
    pub has_xdp: bool,
}

impl AppPolicy {
    pub fn new(p: &Policy, generation: u32) -> AppPolicy {
        let mut key_headers: Vec<String> = Vec::new();
        let kinds = p
            .endpoints
            .iter()
            .map(|e| &e.key)
            .chain(p.signals.iter().map(|s| &s.key));
        for k in kinds {
            if let KeyKind::Header(h) = k
                && !key_headers.iter().any(|o| o.eq_ignore_ascii_case(h))
            {
                key_headers.push(h.clone());
            }
        }
        AppPolicy {
            generation,
            on_error: p.app.as_ref().map_or(OnError::Open, |a| a.on_error),
            trusted_proxies: p
                .app
                .as_ref()
                .map(|a| a.trusted_proxies.clone())
                .unwrap_or_default(),
            endpoints: p.endpoints.clone(),
            signals: p.signals.clone(),
            ipv4_prefix: p.ipv4_prefix,
            ipv6_prefix: p.ipv6_prefix,
            allow: p.allow.clone(),
            floor: BanFloor {
                ipv4: p.min_ban_ipv4_prefix,
                ipv6: p.min_ban_ipv6_prefix,
            },
            key_headers,
            has_xdp: true,
        }
    }
}

/// A monotonic clock in ns, never 0 (0 means "never" in the ladder's state); tests freeze
/// it and move it by hand.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: std::time::Instant,
    pub frozen: Option<u64>,
    /// Wall-clock seconds since the Unix epoch, for tests (quota windows).
    pub wall_frozen: Option<u64>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            start: std::time::Instant::now(),
            frozen: None,
            wall_frozen: None,
        }
    }
}

impl Clock {
    /// Wall-clock seconds since the Unix epoch (UTC): quota windows are calendar windows.
    pub fn wall_secs(&self) -> u64 {
        self.wall_frozen.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
    }

    pub fn now(&self) -> u64 {
        self.frozen.unwrap_or_else(|| {
            NS_PER_SEC.saturating_add(
                self.start
                    .elapsed()
                    .as_nanos()
                    .min(u128::from(u64::MAX / 2)) as u64,
            )
        })
    }
}

/// Something the daemon must do beyond the reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A client was limited (at most one per client per second): an `app_limited` line.
    Limited {
        kind: Kind,
        name: String,
        client: IpAddr,
        retry_after: u64,
    },
    /// A ban was issued: an `app_ban` line, and (`xdp`) a host ban in the data path on
    /// every interface.
    Ban(AppBan),
    /// A ban was due but not issued (allow-listed client, a trusted proxy, too wide).
    BanSkipped {
        kind: Kind,
        name: String,
        client: IpAddr,
        why: String,
    },
}

/// A ban from the app layer.
#[derive(Clone, Debug, PartialEq)]
pub struct AppBan {
    pub kind: Kind,
    pub name: String,
    /// The client's prefix (the policy's ipv4_prefix / ipv6_prefix).
    pub source: Cidr,
    pub duration: Duration,
    pub level: u16,
    /// Enforced in the data path (a direct client, host scope), else at L7 only.
    pub xdp: bool,
    /// `Some(endpoint)`: only that endpoint (scope = "rule").
    pub endpoint: Option<String>,
    pub reason: String,
}

/// One endpoint's or signal's buckets and per-key state.
struct Table {
    kind: Kind,
    name: String,
    key: KeyKind,
    limit: Limit,
    rate: Gcra,
    sustained: Gcra,
    escalation: Option<shield_common::Escalation>,
    scope: BanScope,
    states: HashMap<String, SourceState>,
    counts: Arc<Counts>,
    /// When a full table was last swept for room (a sweep walks every key: at most once a
    /// second, else a flood of new keys makes every decision walk 200,000 entries).
    full_sweep_at: Option<u64>,
    /// Sweeps made, for tests.
    sweeps: u64,
}

impl Table {
    fn new(
        kind: Kind,
        name: &str,
        key: &KeyKind,
        limit: &Limit,
        esc: Option<&crate::policy::Escalation>,
        counters: &AppCounters,
    ) -> Table {
        // The policy refused limits whose buckets overflow: DISABLED cannot happen.
        let (rate, sustained) = buckets(limit).unwrap_or((Gcra::DISABLED, Gcra::DISABLED));
        Table {
            kind,
            name: name.to_string(),
            key: key.clone(),
            limit: *limit,
            rate,
            sustained,
            escalation: esc.map(crate::policy::escalation_config),
            scope: esc.map_or(BanScope::Host, |e| e.scope),
            states: HashMap::new(),
            counts: counters.of(kind, name),
            full_sweep_at: None,
            sweeps: 0,
        }
    }

    fn same_shape(&self, other: &Table) -> bool {
        self.key == other.key
    }

    /// The RateLimit-Policy field value.
    fn policy_field(&self) -> String {
        let w = |count: u64, period: u64, q: u64| (q * period).div_ceil(count).max(1);
        let mut s = format!(
            "\"{}\";q={};w={}",
            self.name,
            self.limit.burst,
            w(
                self.limit.rate.count,
                self.limit.rate.period_secs,
                self.limit.burst
            )
        );
        if let Some(sr) = self.limit.sustained {
            s.push_str(&format!(
                ", \"{}-sustained\";q={};w={}",
                self.name, sr.count, sr.period_secs
            ));
        }
        s
    }

    fn detail(&self, retry: u64) -> String {
        let r = self.limit.rate;
        let per = match r.period_secs {
            1 => "second",
            60 => "minute",
            3600 => "hour",
            _ => "day",
        };
        let what = match self.kind {
            Kind::Endpoint => "requests",
            Kind::Signal => "reports",
        };
        let mut s = format!(
            "{} allows {} {what} per {per} (burst {})",
            self.name, r.count, self.limit.burst
        );
        if let Some(sr) = self.limit.sustained {
            s.push_str(&format!(", at most {sr}"));
        }
        s.push_str(&format!(" per {}; retry in {retry} s", self.key));
        s
    }

    /// Drops keys whose buckets are full again and whose ladder is forgotten.
    fn sweep(&mut self, now: u64) {
        self.sweeps += 1;
        let forget = self.escalation.map_or(0, |e| e.forget_ns);
        let window = self.escalation.map_or(0, |e| e.window_ns);
        self.states.retain(|_, s| {
            s.tat[0] > now
                || s.tat[1] > now
                || (s.strikes > 0 && now.saturating_sub(s.window_start_ns) <= window)
                || (s.last_ban_ns != 0 && now.saturating_sub(s.last_ban_ns) <= forget)
        });
    }
}

/// The largest `cost` that may pass (the largest burst, `policy::MAX_BURST`): a `decide`
/// naming more gets a 429 that says it never passes.
pub const MAX_COST: u64 = 100_000_000;

/// Whole seconds in `ns`, rounded up.
fn secs_up(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_SEC)
}

/// How a bucket stands at `now` with state `tat`: (tokens left, seconds until full).
fn standing(g: &Gcra, tat: u64, now: u64) -> (u64, u64) {
    if !g.is_enabled() {
        return (u64::MAX, 0);
    }
    let left = (now + g.tolerance_ns + g.interval_ns).saturating_sub(tat) / g.interval_ns;
    (left.min(g.burst()), secs_up(tat.saturating_sub(now)))
}

/// An L7 ban.
#[derive(Clone, Debug)]
struct L7Ban {
    until: u64,
    /// When it was issued or last extended (`Clock::now`).
    since: u64,
    /// `None`: every endpoint; `Some`: that endpoint only.
    endpoint: Option<String>,
    what: String,
}

/// The app layer's whole state.
pub struct Limiter {
    policy: AppPolicy,
    endpoints: Vec<Table>,
    signals: Vec<Table>,
    /// Keyed by the client's prefix (masked address).
    bans: HashMap<IpAddr, Vec<L7Ban>>,
    /// Last `app_limited` second per client.
    last_limited: HashMap<IpAddr, u64>,
    /// Requests in flight per (endpoint name, key), for `concurrency = N` endpoints.
    in_flight: HashMap<(String, String), u64>,
    /// Every slot taken and not yet released: its (endpoint name, key).
    slots: HashMap<u64, (String, String)>,
    next_slot: u64,
    /// Quota use per (endpoint name, key): (window start, unix seconds; tokens used).
    quotas: HashMap<(String, String), (u64, u64)>,
    /// Quota use changed since the last `take_quotas_dirty`.
    quotas_dirty: bool,
    pub counters: Arc<AppCounters>,
    pub clock: Clock,
}

impl Limiter {
    pub fn new(policy: AppPolicy, counters: Arc<AppCounters>) -> Limiter {
        let mut l = Limiter {
            policy: policy.clone(),
            endpoints: Vec::new(),
            signals: Vec::new(),
            bans: HashMap::new(),
            last_limited: HashMap::new(),
            in_flight: HashMap::new(),
            slots: HashMap::new(),
            next_slot: 1,
            quotas: HashMap::new(),
            quotas_dirty: false,
            counters,
            clock: Clock::default(),
        };
        l.set_policy(policy);
        l
    }

    pub fn generation(&self) -> u32 {
        self.policy.generation
    }

    /// A new policy: endpoints and signals keep their state by name (while their key kind
    /// stays the same); L7 bans stay.
    pub fn set_policy(&mut self, policy: AppPolicy) {
        let mut old_e: HashMap<String, Table> = self
            .endpoints
            .drain(..)
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut old_s: HashMap<String, Table> = self
            .signals
            .drain(..)
            .map(|t| (t.name.clone(), t))
            .collect();
        let c = &self.counters;
        let carry = |mut t: Table, old: &mut HashMap<String, Table>| {
            if let Some(o) = old.remove(&t.name)
                && o.same_shape(&t)
            {
                t.states = o.states;
            }
            t
        };
        self.endpoints = policy
            .endpoints
            .iter()
            .map(|e| {
                let t = Table::new(
                    Kind::Endpoint,
                    &e.name,
                    &e.key,
                    &e.limit,
                    e.escalation.as_ref(),
                    c,
                );
                carry(t, &mut old_e)
            })
            .collect();
        self.signals = policy
            .signals
            .iter()
            .map(|s| {
                let t = Table::new(
                    Kind::Signal,
                    &s.name,
                    &s.key,
                    &s.limit,
                    s.escalation.as_ref(),
                    c,
                );
                carry(t, &mut old_s)
            })
            .collect();
        let live: Vec<(Kind, String)> = self
            .endpoints
            .iter()
            .chain(&self.signals)
            .map(|t| (t.kind, t.name.clone()))
            .collect();
        self.counters.retain(&live);
        self.policy = policy;
        self.refresh_gauges();
    }

    pub fn hello(&self) -> Hello {
        Hello {
            ok: true,
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: self.policy.generation,
            on_error: self.policy.on_error.as_str().to_string(),
            key_headers: self.policy.key_headers.clone(),
        }
    }

    fn error(&self, why: impl Into<String>) -> String {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        why.into()
    }

    fn client(&self, peer: Option<&str>, xff: Option<&str>) -> Result<Client, String> {
        let peer = peer.ok_or_else(|| self.error("`peer` (the TCP peer's address) is missing"))?;
        // A Unix-socket peer has no address: gunicorn behind nginx on a Unix socket reports
        // REMOTE_ADDR "". That peer is a process on this host, so it is 127.0.0.1 (a
        // trusted proxy when the policy trusts 127.0.0.1); refusing it made every request
        // of such a deployment an error, waved through by on_error "open".
        let ip = if peer.trim().is_empty() {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            parse_ip(peer)
                .ok_or_else(|| self.error(format!("`peer` must be an IP address, got {peer:?}")))?
        };
        let c = resolve_client(ip, xff, &self.policy.trusted_proxies);
        if c.bad_xff {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        Ok(c)
    }

    /// The client's prefix: what bans and the ip key cover.
    fn prefix_of(&self, ip: IpAddr) -> Cidr {
        let len = if ip.is_ipv4() {
            self.policy.ipv4_prefix
        } else {
            self.policy.ipv6_prefix
        };
        Cidr {
            addr: masked(ip, len),
            len,
        }
    }

    fn key_of(
        &self,
        kind: &KeyKind,
        client: IpAddr,
        headers: Option<&HashMap<String, String>>,
        user: Option<&str>,
    ) -> String {
        let ip = || format!("ip:{}", self.prefix_of(client));
        match kind {
            KeyKind::Ip => ip(),
            KeyKind::Header(h) => headers
                .and_then(|hs| {
                    hs.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(h))
                        .map(|(_, v)| v)
                })
                .filter(|v| !v.is_empty())
                .map_or_else(ip, |v| format!("header:{v}")),
            KeyKind::User => user
                .filter(|u| !u.is_empty())
                .map_or_else(ip, |u| format!("user:{u}")),
        }
    }

    /// Once a second: drop idle keys, expired L7 bans and old `app_limited` marks.
    pub fn tick(&mut self) {
        let now = self.clock.now();
        for t in self.endpoints.iter_mut().chain(self.signals.iter_mut()) {
            t.sweep(now);
        }
        self.bans.retain(|_, v| {
            v.retain(|b| b.until > now);
            !v.is_empty()
        });
        let second = now / NS_PER_SEC;
        self.last_limited.retain(|_, s| *s + 1 >= second);
        // Quota use of a window that ended (or of an endpoint that has no quota now).
        let wall = self.clock.wall_secs();
        let per: HashMap<&str, u64> = self
            .policy
            .endpoints
            .iter()
            .filter_map(|e| Some((e.name.as_str(), e.quota?.per_secs)))
            .collect();
        let before = self.quotas.len();
        self.quotas.retain(|(n, _), (w, _)| {
            per.get(n.as_str())
                .is_some_and(|p| *w <= wall && w.saturating_add(*p) > wall)
        });
        if self.quotas.len() != before {
            self.quotas_dirty = true;
        }
        self.refresh_gauges();
    }

    /// Keys tracked now (all tables).
    pub fn tracked(&self) -> usize {
        self.endpoints
            .iter()
            .chain(&self.signals)
            .map(|t| t.states.len())
            .sum()
    }
}

#[cfg(test)]
mod tests;
