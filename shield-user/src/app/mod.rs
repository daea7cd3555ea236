//! The application layer's decisions, without sockets: endpoint matching, the client
//! address behind trusted proxies, keys, limits (the GCRA of `shield_common::bucket`),
//! strikes and bans (the ladder of `shield_common::judge`), and the L7 ban table. The
//! daemon's app task (`daemon::app`) owns one `Limiter` and feeds it parsed requests.

pub mod protocol;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use shield_common::{
    Gcra, SourceState,
    bucket::NS_PER_SEC,
    judge::{Outcome, escalate},
};

use crate::{
    bans::{BanFloor, check_manual_ban},
    policy::{BanScope, Cidr, Endpoint, KeyKind, Limit, OnError, Policy, Signal, buckets},
};
use protocol::{Decision, Hello, Reported};
use serde::{Deserialize, Serialize};

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
    fn retain(&self, live: &[(Kind, String)]) {
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

/// Whether `cidr` holds `ip`.
pub fn contains(cidr: &Cidr, ip: IpAddr) -> bool {
    masked(ip, cidr.len) == cidr.addr && ip.is_ipv4() == cidr.addr.is_ipv4()
}

/// `ip` with only its first `len` bits.
pub fn masked(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// An address from a request (`peer`): IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a
/// dual-stack listener reports) as IPv4, the form XDP sees.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip: IpAddr = text.trim().parse().ok()?;
    Some(unmapped(ip))
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An `X-Forwarded-For` entry: an address as `parse_ip` reads it, or in the forms some
/// load balancers append: `a.b.c.d:PORT`, `[v6]` and `[v6]:PORT` (refusing them made the
/// proxy the client of every request behind it: one shared bucket).
fn parse_forwarded(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Some(ip) = parse_ip(text) {
        return Some(ip);
    }
    let ip = match text.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip(),
        Err(_) => text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?,
    };
    Some(unmapped(ip))
}

/// Who sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub addr: IpAddr,
    /// It came through a trusted proxy (XDP cannot see it: banned at L7 only).
    pub via_proxy: bool,
    /// `X-Forwarded-For` from a trusted proxy held an entry that is not an address.
    pub bad_xff: bool,
}

/// The client of a request from TCP peer `peer` with `X-Forwarded-For` `xff`: a peer
/// inside `trusted` is a proxy, whose list is walked from the right past further trusted
/// proxies; the first untrusted address is the client. A malformed entry: the peer (and
/// `bad_xff`). An untrusted peer's `xff` is ignored.
pub fn resolve_client(peer: IpAddr, xff: Option<&str>, trusted: &[Cidr]) -> Client {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| contains(c, ip));
    let direct = Client {
        addr: peer,
        via_proxy: false,
        bad_xff: false,
    };
    if !is_trusted(peer) {
        return direct;
    }
    let Some(xff) = xff.filter(|x| !x.trim().is_empty()) else {
        return direct;
    };
    let mut last = None;
    for entry in xff.rsplit(',') {
        let Some(ip) = parse_forwarded(entry) else {
            return Client {
                bad_xff: true,
                ..direct
            };
        };
        last = Some(ip);
        if !is_trusted(ip) {
            return Client {
                addr: ip,
                via_proxy: true,
                bad_xff: false,
            };
        }
    }
    // Every entry is a trusted proxy: the leftmost is the furthest hop we know.
    Client {
        addr: last.unwrap_or(peer),
        via_proxy: last.is_some(),
        bad_xff: false,
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

/// The largest `cost` a `decide` may name.
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

/// One key's quota use, as kept in `--state-dir`/`app-quotas.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQuota {
    pub endpoint: String,
    pub key: String,
    /// The window's start, unix seconds (UTC).
    pub window_start: u64,
    pub used: u64,
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

    /// The L7 ban on `client` for `endpoint` (None: any), with seconds left.
    fn banned(&self, client: IpAddr, endpoint: Option<&str>, now: u64) -> Option<(u64, &str)> {
        let p = self.prefix_of(client);
        self.bans.get(&p.addr)?.iter().find_map(|b| {
            let applies = match (&b.endpoint, endpoint) {
                (None, _) => true,
                (Some(e), Some(x)) => e == x,
                (Some(_), None) => false,
            };
            (applies && b.until > now).then(|| (secs_up(b.until - now).max(1), b.what.as_str()))
        })
    }

    /// `decide` of a request arriving (`charge` false).
    #[expect(clippy::too_many_arguments, reason = "the fields of one request")]
    pub fn decide(
        &mut self,
        method: &str,
        rule: Option<&str>,
        path: &str,
        peer: Option<&str>,
        xff: Option<&str>,
        headers: Option<&HashMap<String, String>>,
        user: Option<&str>,
        cost: Option<u64>,
        effects: &mut Vec<Effect>,
    ) -> Result<Decision, String> {
        self.decide_full(
            method, rule, path, peer, xff, headers, user, cost, false, effects,
        )
    }

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
    fn refresh_gauges(&self) {
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

    /// `decide`; `charge`: more tokens for a request already admitted (`shield.charge(n)`):
    /// no in-flight check, no slot.
    #[expect(clippy::too_many_arguments, reason = "the fields of one request")]
    pub fn decide_full(
        &mut self,
        method: &str,
        rule: Option<&str>,
        path: &str,
        peer: Option<&str>,
        xff: Option<&str>,
        headers: Option<&HashMap<String, String>>,
        user: Option<&str>,
        cost: Option<u64>,
        charge: bool,
        effects: &mut Vec<Effect>,
    ) -> Result<Decision, String> {
        if cost == Some(0) || cost.is_some_and(|c| c > MAX_COST) {
            return Err(self.error(format!(
                "cost must be between 1 and {MAX_COST} tokens, got {}",
                cost.unwrap_or(0)
            )));
        }
        let generation = self.policy.generation;
        let Some(idx) = self
            .policy
            .endpoints
            .iter()
            .position(|e| e.matches(method, rule, path))
        else {
            return Ok(Decision {
                ok: true,
                allow: true,
                generation,
                ..Decision::default()
            });
        };
        let client = self.client(peer, xff)?;
        let now = self.clock.now();
        let name = self.endpoints[idx].name.clone();
        if let Some((left, what)) = self.banned(client.addr, Some(&name), now) {
            self.endpoints[idx]
                .counts
                .limited
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Decision {
                ok: true,
                allow: false,
                status: Some(403),
                generation,
                endpoint: Some(name),
                client: Some(client.addr.to_string()),
                retry_after: Some(left),
                detail: Some(format!(
                    "{} is banned for {left} s more ({what})",
                    client.addr
                )),
                ..Decision::default()
            });
        }
        let cost = cost.unwrap_or(self.policy.endpoints[idx].cost);
        let t = &self.endpoints[idx];
        let most = if t.sustained.is_enabled() {
            t.rate.burst().min(t.sustained.burst())
        } else {
            t.rate.burst()
        };
        if cost > most {
            // Never passes, whatever the wait: no strike, no retry hint that lies.
            t.counts.limited.fetch_add(1, Ordering::Relaxed);
            return Ok(Decision {
                ok: true,
                allow: false,
                status: Some(429),
                generation,
                endpoint: Some(name.clone()),
                client: Some(client.addr.to_string()),
                retry_after: Some(1),
                limit: Some(t.limit.burst),
                remaining: Some(0),
                reset: Some(1),
                policy: Some(t.policy_field()),
                detail: Some(format!(
                    "this request costs {cost} tokens, more than {name} ever holds ({most}): it cannot pass"
                )),
                slot: None,
            });
        }
        let key = self.key_of(&self.endpoints[idx].key, client.addr, headers, user);
        let cap = self.policy.endpoints[idx].concurrency.filter(|_| !charge);
        // As the tables store it: a key from the request is at most `MAX_KEY_LEN` bytes
        // here too (the quota table lives a whole window and goes to disk every second).
        let slot_key = (name.clone(), stored_key(&key).into_owned());
        if let Some(cap) = cap {
            let now_in = self.in_flight.get(&slot_key).copied().unwrap_or(0);
            if now_in >= cap {
                let t = &self.endpoints[idx];
                t.counts.limited.fetch_add(1, Ordering::Relaxed);
                return Ok(Decision {
                    ok: true,
                    allow: false,
                    status: Some(429),
                    generation,
                    endpoint: Some(name.clone()),
                    client: Some(client.addr.to_string()),
                    retry_after: Some(1),
                    detail: Some(format!(
                        "{name} allows {cap} request{} in flight at once per {}, and {now_in} are; retry in 1 s",
                        if cap == 1 { "" } else { "s" },
                        t.key
                    )),
                    ..Decision::default()
                });
            }
        }
        let quota = self.policy.endpoints[idx].quota;
        let mut quota_left = None;
        if let Some(q) = quota {
            let wall = self.clock.wall_secs();
            let window = wall / q.per_secs * q.per_secs;
            let used = match self.quotas.get(&slot_key) {
                Some((w, u)) if *w == window => *u,
                _ => 0,
            };
            // Keys come from requests: the table is bounded like the buckets' (a new key
            // that finds no room is refused, not let through uncounted: a quota is a cap).
            let quota_endpoints = self
                .policy
                .endpoints
                .iter()
                .filter(|e| e.quota.is_some())
                .count();
            if !self.quotas.contains_key(&slot_key)
                && self.quotas.len() >= MAX_KEYS.saturating_mul(quota_endpoints)
            {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let t = &self.endpoints[idx];
                t.counts.limited.fetch_add(1, Ordering::Relaxed);
                let reset = (window + q.per_secs).saturating_sub(wall).max(1);
                return Ok(Decision {
                    ok: true,
                    allow: false,
                    status: Some(429),
                    generation,
                    endpoint: Some(name.clone()),
                    client: Some(client.addr.to_string()),
                    retry_after: Some(reset),
                    detail: Some(format!(
                        "{name}'s quota table is full ({MAX_KEYS} keys per quota endpoint this window); a new key is refused until it resets in {reset} s"
                    )),
                    ..Decision::default()
                });
            }
            let reset = (window + q.per_secs).saturating_sub(wall).max(1);
            if used.saturating_add(cost) > q.limit {
                let t = &self.endpoints[idx];
                t.counts.limited.fetch_add(1, Ordering::Relaxed);
                return Ok(Decision {
                    ok: true,
                    allow: false,
                    status: Some(429),
                    generation,
                    endpoint: Some(name.clone()),
                    client: Some(client.addr.to_string()),
                    retry_after: Some(reset),
                    limit: Some(q.limit),
                    remaining: Some(0),
                    reset: Some(reset),
                    policy: Some(format!(
                        "{}, \"{name}-quota\";q={};w={}",
                        t.policy_field(),
                        q.limit,
                        q.per_secs
                    )),
                    detail: Some(format!(
                        "{name}'s quota of {q} per {} is used up ({used} used); it resets in {reset} s",
                        t.key
                    )),
                    slot: None,
                });
            }
            quota_left = Some((window, used, reset, q));
        }
        let judged = self.judge(Kind::Endpoint, idx, &key, cost, client, now, effects);
        if let (Judged::Allowed { .. }, Some((window, used, _, _))) = (&judged, quota_left) {
            self.quotas
                .insert(slot_key.clone(), (window, used.saturating_add(cost)));
            self.quotas_dirty = true;
            // Not summed again over every key (one decision would cost O(keys)): the
            // once-a-second tick sets the gauge from the table.
            self.endpoints[idx]
                .counts
                .quota_used
                .fetch_add(cost, Ordering::Relaxed);
        }
        let slot = match (&judged, cap) {
            (Judged::Allowed { .. }, Some(_)) => {
                let id = self.next_slot;
                self.next_slot += 1;
                *self.in_flight.entry(slot_key.clone()).or_insert(0) += 1;
                self.slots.insert(id, slot_key);
                self.endpoints[idx]
                    .counts
                    .in_flight
                    .fetch_add(1, Ordering::Relaxed);
                Some(id)
            }
            _ => None,
        };
        let t = &self.endpoints[idx];
        let mut d = Decision {
            ok: true,
            allow: true,
            generation,
            endpoint: Some(name),
            client: Some(client.addr.to_string()),
            limit: Some(t.limit.burst),
            policy: Some(match quota {
                Some(q) => format!(
                    "{}, \"{}-quota\";q={};w={}",
                    t.policy_field(),
                    t.name,
                    q.limit,
                    q.per_secs
                ),
                None => t.policy_field(),
            }),
            ..Decision::default()
        };
        match judged {
            Judged::Allowed { remaining, reset } => {
                d.remaining = Some(remaining);
                d.reset = Some(reset);
                d.slot = slot;
                if let Some((_, used, qreset, q)) = quota_left {
                    let left = q.limit.saturating_sub(used.saturating_add(cost));
                    if left < remaining {
                        d.remaining = Some(left);
                        d.reset = Some(qreset);
                        d.limit = Some(q.limit);
                    }
                }
            }
            Judged::Limited { retry_after } => {
                d.allow = false;
                d.status = Some(429);
                d.retry_after = Some(retry_after);
                d.remaining = Some(0);
                d.reset = Some(retry_after);
                d.detail = Some(t.detail(retry_after));
            }
        }
        Ok(d)
    }

    /// `report`.
    #[expect(clippy::too_many_arguments, reason = "the fields of one request")]
    pub fn report(
        &mut self,
        signal: &str,
        peer: Option<&str>,
        xff: Option<&str>,
        headers: Option<&HashMap<String, String>>,
        user: Option<&str>,
        key: Option<&str>,
        effects: &mut Vec<Effect>,
    ) -> Result<Reported, String> {
        let Some(idx) = self.signals.iter().position(|s| s.name == signal) else {
            return Err(self.error(format!("no [[signal]] named {signal:?} in the policy")));
        };
        let client = self.client(peer, xff)?;
        let now = self.clock.now();
        let key = match key.filter(|k| !k.is_empty()) {
            Some(k) => format!("key:{k}"),
            None => self.key_of(&self.signals[idx].key, client.addr, headers, user),
        };
        let judged = self.judge(Kind::Signal, idx, &key, 1, client, now, effects);
        Ok(Reported {
            ok: true,
            generation: self.policy.generation,
            signal: signal.to_string(),
            client: client.addr.to_string(),
            counted: true,
            limited: matches!(judged, Judged::Limited { .. }),
            banned: self.banned(client.addr, None, now).is_some(),
        })
    }

    /// `cost` tokens from `key` of table `idx`; over the limit: a strike, maybe a ban.
    #[expect(clippy::too_many_arguments, reason = "one judgement's inputs")]
    fn judge(
        &mut self,
        kind: Kind,
        idx: usize,
        key: &str,
        cost: u64,
        client: Client,
        now: u64,
        effects: &mut Vec<Effect>,
    ) -> Judged {
        let tables = match kind {
            Kind::Endpoint => &mut self.endpoints,
            Kind::Signal => &mut self.signals,
        };
        let t = &mut tables[idx];
        let key = stored_key(key);
        let key = key.as_ref();
        if !t.states.contains_key(key) && t.states.len() >= MAX_KEYS {
            if t.full_sweep_at
                .is_none_or(|at| now.saturating_sub(at) >= NS_PER_SEC)
            {
                t.full_sweep_at = Some(now);
                t.sweep(now);
            }
            if t.states.len() >= MAX_KEYS {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                t.counts.allowed.fetch_add(1, Ordering::Relaxed);
                return Judged::Allowed {
                    remaining: t.limit.burst,
                    reset: 0,
                };
            }
        }
        let st = t.states.entry(key.to_string()).or_insert(SourceState::NEW);
        let a = t.rate.check_n(st.tat[0], now, cost);
        let b = t.sustained.check_n(st.tat[1], now, cost);
        if let (Some(a), Some(b)) = (a, b) {
            st.tat[0] = a;
            st.tat[1] = b;
            t.counts.allowed.fetch_add(1, Ordering::Relaxed);
            let (ra, ta) = standing(&t.rate, a, now);
            let (rb, tb) = standing(&t.sustained, b, now);
            let (remaining, reset) = if rb < ra { (rb, tb) } else { (ra, ta) };
            return Judged::Allowed { remaining, reset };
        }
        // Refused: when the refusing bucket(s) admit the next token.
        let wait = |g: &Gcra, tat: u64, ok: bool| if ok { 0 } else { g.wait_n(tat, now, cost) };
        let retry_after = secs_up(wait(&t.rate, st.tat[0], a.is_some()).max(wait(
            &t.sustained,
            st.tat[1],
            b.is_some(),
        )))
        .max(1);
        st.limited = st.limited.saturating_add(1);
        t.counts.limited.fetch_add(1, Ordering::Relaxed);
        let out = match &t.escalation {
            Some(e) => escalate(e, st, now),
            None => Outcome::NONE,
        };
        let (name, scope, counts) = (t.name.clone(), t.scope, t.counts.clone());
        let second = now / NS_PER_SEC;
        if self.last_limited.get(&client.addr) != Some(&second) {
            self.last_limited.insert(client.addr, second);
            effects.push(Effect::Limited {
                kind,
                name: name.clone(),
                client: client.addr,
                retry_after,
            });
        }
        if out.ban_ns > 0 {
            self.ban(kind, &name, scope, client, out, now, &counts, effects);
        }
        Judged::Limited { retry_after }
    }

    #[expect(clippy::too_many_arguments, reason = "one ban's facts")]
    fn ban(
        &mut self,
        kind: Kind,
        name: &str,
        scope: BanScope,
        client: Client,
        out: Outcome,
        now: u64,
        counts: &Counts,
        effects: &mut Vec<Effect>,
    ) {
        let source = self.prefix_of(client.addr);
        let skip = |why: String| Effect::BanSkipped {
            kind,
            name: name.to_string(),
            client: client.addr,
            why,
        };
        if self
            .policy
            .trusted_proxies
            .iter()
            .any(|c| contains(c, client.addr))
        {
            effects.push(skip(format!(
                "{} is a trusted proxy: it is never banned (its clients are judged by X-Forwarded-For)",
                client.addr
            )));
            return;
        }
        if let Err(why) = check_manual_ban(&source, &self.policy.allow, self.policy.floor, false) {
            effects.push(skip(why));
            return;
        }
        if !self.bans.contains_key(&source.addr) && self.bans.len() >= MAX_L7_BANS {
            self.bans.retain(|_, v| {
                v.retain(|b| b.until > now);
                !v.is_empty()
            });
            if self.bans.len() >= MAX_L7_BANS {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                effects.push(skip(format!(
                    "the L7 ban table is full ({MAX_L7_BANS} clients)"
                )));
                return;
            }
        }
        let endpoint =
            (kind == Kind::Endpoint && scope == BanScope::Rule).then(|| name.to_string());
        let what = format!("{name}: repeated limit violations");
        let list = self.bans.entry(source.addr).or_default();
        let until = now.saturating_add(out.ban_ns);
        match list.iter_mut().find(|b| b.endpoint == endpoint) {
            // Never shorter than a ban in force.
            Some(b) => {
                if until > b.until {
                    b.until = until;
                    b.since = now;
                    b.what = what.clone();
                }
            }
            None => list.push(L7Ban {
                until,
                since: now,
                endpoint: endpoint.clone(),
                what: what.clone(),
            }),
        }
        counts.banned.fetch_add(1, Ordering::Relaxed);
        effects.push(Effect::Ban(AppBan {
            kind,
            name: name.to_string(),
            source,
            duration: Duration::from_nanos(out.ban_ns),
            level: out.level,
            // A prefix that holds a trusted proxy is banned at L7 only: at XDP it would
            // cut the proxy, and every client behind it, off the host. An app-only daemon
            // has no XDP: every ban is an L7 one.
            xdp: scope == BanScope::Host
                && !client.via_proxy
                && self.policy.has_xdp
                && !self.holds_a_proxy(&source),
            endpoint,
            reason: what,
        }));
    }

    /// An unban from the fleet: lifts the L7 bans inside `cidr` issued (or last extended)
    /// at or before `before` (`Clock::now` time); returns how many clients were freed.
    pub fn unban_before(&mut self, cidr: &Cidr, before: u64) -> usize {
        let mut freed = 0;
        self.bans.retain(|ip, v| {
            if !contains(cidr, *ip) {
                return true;
            }
            v.retain(|b| b.since > before);
            freed += usize::from(v.is_empty());
            !v.is_empty()
        });
        freed
    }

    /// Whether prefix `source` overlaps a trusted proxy's range.
    fn holds_a_proxy(&self, source: &Cidr) -> bool {
        self.policy
            .trusted_proxies
            .iter()
            .any(|p| crate::bans::covers(source, p) || crate::bans::covers(p, source))
    }

    /// `shield unban`: lifts the L7 bans of every client prefix inside `cidr`; returns how
    /// many clients were freed.
    pub fn unban(&mut self, cidr: &Cidr) -> usize {
        let before = self.bans.len();
        self.bans.retain(|ip, _| !contains(cidr, *ip));
        before - self.bans.len()
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

enum Judged {
    Allowed { remaining: u64, reset: u64 },
    Limited { retry_after: u64 },
}

#[cfg(test)]
mod tests;
