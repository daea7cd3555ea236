//! The fleet: bans shared by every host of an API through Redis. This module is the pure
//! part (no I/O): the message format, its signature, the Redis layout, the circuit breaker
//! and the state file. The task that talks to Redis is `daemon::fleet`.
//!
//! Redis layout (`PREFIX` is the policy's `[fleet] prefix`):
//! - `PREFIX:bans`: a hash of the active bans, one field per ban (`SOURCE|SCOPE|RULE`), its
//!   value `EXPIRES_MS|SIG|MESSAGE` (unix milliseconds, hex HMAC or empty, the JSON
//!   message). Written only through scripts that never shorten a ban; expired fields are
//!   removed by the hosts' sweeps.
//! - `PREFIX:events`: a stream of every change (`XADD … MAXLEN ~ 100000`), fields `m` (the
//!   JSON message) and `sig`. A host reads it from the last id it saw; a host whose id was
//!   trimmed away resyncs from the hash.

pub mod state;

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{KeyInit, Mac as _};
use serde::{Deserialize, Serialize};

use crate::policy::BanScope;

/// The fleet's figures, shared by the owner, the fleet task and `/metrics`.
#[derive(Default, Debug)]
pub struct Counters {
    /// `[fleet]` is configured.
    pub enabled: AtomicBool,
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub installed: AtomicU64,
    /// Refused by reason: allow list, bad signature, circuit open, unknown rule (skipped).
    pub refused_allow: AtomicU64,
    pub refused_signature: AtomicU64,
    /// Refused: not a fleet message (an entry or hash value that does not parse).
    pub refused_malformed: AtomicU64,
    pub refused_circuit: AtomicU64,
    pub skipped_rule: AtomicU64,
    /// Refused: wider than this host's `min_ban_ipv4_prefix` / `min_ban_ipv6_prefix`.
    pub refused_wide: AtomicU64,
    /// Refused: the ban would cover one of this host's `[app] trusted_proxies`.
    pub refused_proxy: AtomicU64,
    /// Not installed: this host's ban table is full.
    pub refused_full: AtomicU64,
    pub circuit_open: AtomicBool,
    /// Lag of the last received change (publish to install), microseconds.
    pub lag_us: AtomicU64,
    /// Changes issued while the link was down, waiting to be published.
    pub queued: AtomicU64,
}

/// Why a received ban of `cidr` is wider than this host lets any ban be without
/// `--force` (its `min_ban_*_prefix`), or `None`. A message from the fleet is never
/// forced: a ban of `0.0.0.0/0` from a forged message, a compromised host or a host forced
/// by hand would drop the whole internet on every host.
pub fn too_wide(cidr: &crate::policy::Cidr, floor: crate::bans::BanFloor) -> Option<String> {
    let min = if cidr.addr.is_ipv4() {
        floor.ipv4
    } else {
        floor.ipv6
    };
    (cidr.len < min).then(|| {
        format!(
            "{cidr} is wider than /{min}, the shortest prefix this host bans without --force (min_ban_ipv{}_prefix)",
            if cidr.addr.is_ipv4() { 4 } else { 6 }
        )
    })
}

/// Why this host refuses a received ban, by its own policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screened {
    /// The ban is inside this host's `[lists] allow`.
    AllowList,
    /// Wider than this host's `min_ban_*_prefix` (`too_wide`).
    TooWide,
    /// It covers (or lies inside) one of this host's `[app] trusted_proxies`: dropping the
    /// proxy at XDP would cut off every client behind it (another host may have banned
    /// that address, or a prefix around it, as a direct client).
    TrustedProxy,
}

/// This host's own checks of a received ban of `cidr`: `Some((why, message))` refuses it.
pub fn screen(
    cidr: &crate::policy::Cidr,
    policy: &crate::policy::Policy,
) -> Option<(Screened, String)> {
    use crate::bans::covers;
    if let Some(a) = policy.allow.iter().find(|a| covers(a, cidr)) {
        return Some((
            Screened::AllowList,
            format!("it is on this host's allow list ({a})"),
        ));
    }
    let floor = crate::bans::BanFloor {
        ipv4: policy.min_ban_ipv4_prefix,
        ipv6: policy.min_ban_ipv6_prefix,
    };
    if let Some(why) = too_wide(cidr, floor) {
        return Some((Screened::TooWide, why));
    }
    let proxies = policy.app.iter().flat_map(|a| &a.trusted_proxies);
    for p in proxies {
        if covers(cidr, p) || covers(p, cidr) {
            return Some((
                Screened::TrustedProxy,
                format!("it covers this host's trusted proxy {p} ([app] trusted_proxies)"),
            ));
        }
    }
    None
}

/// `shield fleet` / `stats`: the link's state, as the control socket sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub enabled: bool,
    pub connected: bool,
    pub host: String,
    pub published: u64,
    pub received: u64,
    pub installed: u64,
    pub refused_allow_list: u64,
    pub refused_signature: u64,
    pub refused_circuit_open: u64,
    pub skipped_unknown_rule: u64,
    #[serde(default)]
    pub refused_too_wide: u64,
    #[serde(default)]
    pub refused_trusted_proxy: u64,
    #[serde(default)]
    pub refused_table_full: u64,
    #[serde(default)]
    pub refused_malformed: u64,
    pub circuit_open: bool,
    pub lag_seconds: f64,
    pub queued: u64,
}

impl Counters {
    pub fn status(&self, host: &str) -> Status {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Status {
            enabled: self.enabled.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            host: host.to_string(),
            published: r(&self.published),
            received: r(&self.received),
            installed: r(&self.installed),
            refused_allow_list: r(&self.refused_allow),
            refused_signature: r(&self.refused_signature),
            refused_circuit_open: r(&self.refused_circuit),
            skipped_unknown_rule: r(&self.skipped_rule),
            refused_too_wide: r(&self.refused_wide),
            refused_trusted_proxy: r(&self.refused_proxy),
            refused_table_full: r(&self.refused_full),
            refused_malformed: r(&self.refused_malformed),
            circuit_open: self.circuit_open.load(Ordering::Relaxed),
            lag_seconds: r(&self.lag_us) as f64 / 1e6,
            queued: r(&self.queued),
        }
    }

    /// Registers `shield_fleet_*` (only when `[fleet]` is configured).
    pub fn register(&self, reg: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let s = self.status("");
        let gauge = |v: i64| {
            let g = Gauge::<i64>::default();
            g.set(v);
            g
        };
        let counter = |v: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(v);
            c
        };
        reg.register(
            "shield_fleet_connected",
            "1 while the link to the fleet's Redis is up",
            gauge(i64::from(s.connected)),
        );
        reg.register(
            "shield_fleet_published",
            "Bans and unbans this host published to the fleet",
            counter(s.published),
        );
        reg.register(
            "shield_fleet_received",
            "Bans and unbans received from other hosts",
            counter(s.received),
        );
        reg.register(
            "shield_fleet_installed",
            "Received bans installed in this host's maps",
            counter(s.installed),
        );
        let refused = Family::<Vec<(String, String)>, Counter>::default();
        for (why, n) in [
            ("allow_list", s.refused_allow_list),
            ("bad_signature", s.refused_signature),
            ("circuit_open", s.refused_circuit_open),
            ("unknown_rule", s.skipped_unknown_rule),
            ("too_wide", s.refused_too_wide),
            ("trusted_proxy", s.refused_trusted_proxy),
            ("table_full", s.refused_table_full),
            ("malformed", s.refused_malformed),
        ] {
            refused
                .get_or_create(&vec![("reason".to_string(), why.to_string())])
                .inc_by(n);
        }
        reg.register(
            "shield_fleet_refused",
            "Received bans and unbans not installed, by reason",
            refused,
        );
        reg.register(
            "shield_fleet_circuit_open",
            "1 while more than max_bans_per_minute received bans keep the circuit open",
            gauge(i64::from(s.circuit_open)),
        );
        let lag = Gauge::<f64, AtomicU64>::default();
        lag.set(s.lag_seconds);
        reg.register(
            "shield_fleet_lag_seconds",
            "Time from publish on the issuing host to install here, of the last received change",
            lag,
        );
        reg.register(
            "shield_fleet_queued",
            "Changes issued while the link was down, waiting to be published",
            gauge(s.queued as i64),
        );
    }
}

/// Stream entries kept (approximately: `MAXLEN ~`).
pub const STREAM_MAXLEN: usize = 100_000;

/// What a message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Ban,
    Unban,
}

/// One change, as published. Every field a receiving host needs to install the same ban.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub op: Op,
    /// Address/prefix (`203.0.113.7/32`).
    pub source: String,
    pub scope: BanScope,
    /// Rule name (empty: a manual host ban).
    #[serde(default)]
    pub rule: String,
    /// Wall-clock expiry, unix milliseconds (bans).
    #[serde(default)]
    pub expires_ms: u64,
    /// The ban's length as issued.
    #[serde(default)]
    pub duration_secs: f64,
    /// Backoff ladder level.
    #[serde(default)]
    pub level: u8,
    /// Who issued it on its host: `manual`, `automatic`, `app`, … (kept as text: a newer
    /// host may know origins an older one does not).
    #[serde(default)]
    pub origin: String,
    /// `everything` or `new_connections`.
    #[serde(default)]
    pub cuts: String,
    /// The fleet host that issued it.
    pub origin_host: String,
    /// The operator's or rule's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was published, unix milliseconds (the receivers' lag).
    #[serde(default)]
    pub sent_ms: u64,
}

impl Message {
    /// The hash field of this ban: `SOURCE|SCOPE|RULE`.
    pub fn field(&self) -> String {
        format!("{}|{}|{}", self.source, self.scope.as_str(), self.rule)
    }

    /// The remaining time at `now`, or `None` once expired.
    pub fn remaining(&self, now_ms: u64) -> Option<Duration> {
        (self.expires_ms > now_ms).then(|| Duration::from_millis(self.expires_ms - now_ms))
    }
}

/// The `HSCAN MATCH` pattern of every field of `source` (glob characters escaped).
pub fn fields_of(source: &str) -> String {
    let mut out = String::new();
    for c in source.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str("|*");
    out
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Signs messages with the fleet key (HMAC-SHA256 over the prefix and the message text,
/// so a message of one fleet does not verify in another sharing the key).
#[derive(Clone)]
pub struct Signer {
    key: Option<Vec<u8>>,
    prefix: String,
}

/// Why a received message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no valid signature (the fleet key differs, or the message was forged)")]
    BadSignature,
    #[error("not a fleet message: {0}")]
    Malformed(String),
}

impl Signer {
    pub fn new(key: Option<Vec<u8>>, prefix: &str) -> Signer {
        Signer {
            key,
            prefix: prefix.to_string(),
        }
    }

    fn mac(&self, key: &[u8], text: &str) -> HmacSha256 {
        // HMAC takes keys of any length.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(self.prefix.as_bytes());
        mac.update(b"\n");
        mac.update(text.as_bytes());
        mac
    }

    /// The message's text and its signature (hex; empty without a key).
    pub fn seal(&self, m: &Message) -> (String, String) {
        let text = serde_json::to_string(m).unwrap_or_default();
        let sig = match &self.key {
            Some(k) => hex::encode(self.mac(k, &text).finalize().into_bytes()),
            None => String::new(),
        };
        (text, sig)
    }

    /// Checks the signature (when this host has a key) and parses the message.
    pub fn open(&self, text: &str, sig: &str) -> Result<Message, Refusal> {
        if let Some(k) = &self.key {
            let raw = hex::decode(sig).map_err(|_| Refusal::BadSignature)?;
            self.mac(k, text)
                .verify_slice(&raw)
                .map_err(|_| Refusal::BadSignature)?;
        }
        let m: Message =
            serde_json::from_str(text).map_err(|e| Refusal::Malformed(e.to_string()))?;
        if m.origin_host.is_empty() {
            return Err(Refusal::Malformed("no origin_host".into()));
        }
        crate::policy::parse_cidr(&m.source)
            .map_err(|e| Refusal::Malformed(format!("source {:?}: {e}", m.source)))?;
        Ok(m)
    }

    /// Parses a hash value `EXPIRES_MS|SIG|MESSAGE`.
    pub fn open_stored(&self, value: &str) -> Result<Message, Refusal> {
        let mut parts = value.splitn(3, '|');
        let (Some(_), Some(sig), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Refusal::Malformed(
                "hash value without EXPIRES|SIG|MESSAGE".into(),
            ));
        };
        self.open(text, sig)
    }
}

/// Reads a key file: its bytes without surrounding whitespace, at least 16 bytes.
pub fn read_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the fleet key file {}: {e}", path.display()))?;
    let key = bytes.trim_ascii().to_vec();
    if key.len() < 16 {
        return Err(format!(
            "the fleet key file {} holds {} bytes; use at least 16 random bytes (e.g. `openssl rand -hex 32 > {}`)",
            path.display(),
            key.len(),
            path.display()
        ));
    }
    Ok(key)
}

/// At most `max` received bans a minute; past that the circuit opens: received bans are
/// refused until the last minute's count is back under `max`.
#[derive(Debug)]
pub struct Breaker {
    max: u32,
    window: VecDeque<u64>,
    open: bool,
}

/// What the breaker says about one more received ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Pass,
    /// Refused; `true` the first time (the circuit just opened).
    Open(bool),
}

impl Breaker {
    pub fn new(max: u32) -> Breaker {
        Breaker {
            max,
            window: VecDeque::new(),
            open: false,
        }
    }

    fn trim(&mut self, now_ms: u64) {
        while self
            .window
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= 60_000)
        {
            self.window.pop_front();
        }
    }

    /// One received ban at `now_ms`.
    pub fn admit(&mut self, now_ms: u64) -> Gate {
        self.trim(now_ms);
        if self.window.len() as u64 >= u64::from(self.max) {
            let first = !self.open;
            self.open = true;
            return Gate::Open(first);
        }
        self.window.push_back(now_ms);
        Gate::Pass
    }

    /// Closes the circuit once the last minute is under the limit again; `true` when it
    /// just closed.
    pub fn poll_close(&mut self, now_ms: u64) -> bool {
        self.trim(now_ms);
        if self.open && (self.window.len() as u64) < u64::from(self.max) {
            self.open = false;
            return true;
        }
        false
    }

    pub fn is_open(&self) -> bool {
        self.open
    }
}

/// A password in a Redis URL replaced by `***` (for logs and `shield check`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    match auth {
        Some(a) => match a.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn received_bans_are_screened_by_this_hosts_policy() {
        let p = crate::policy::parse_str(
            "t.toml",
            r#"
[lists]
allow = ["192.0.2.0/24"]

[app]
socket = "/tmp/x.sock"
trusted_proxies = ["10.1.0.1/32", "2001:db8:1::/48"]
"#,
        )
        .expect("policy");
        let c = |t: &str| crate::policy::parse_cidr(t).expect("cidr");
        let why = |t: &str| screen(&c(t), &p).map(|(w, _)| w);
        assert_eq!(why("192.0.2.7"), Some(Screened::AllowList));
        assert_eq!(why("0.0.0.0/0"), Some(Screened::TooWide));
        assert_eq!(why("10.1.0.1"), Some(Screened::TrustedProxy));
        assert_eq!(why("10.1.0.0/24"), Some(Screened::TrustedProxy));
        assert_eq!(why("2001:db8:1:2::/64"), Some(Screened::TrustedProxy));
        assert_eq!(why("10.1.0.2"), None);
        assert_eq!(why("203.0.113.9"), None);
        let (_, msg) = screen(&c("10.1.0.0/24"), &p).expect("refused");
        assert!(msg.contains("10.1.0.1/32"), "{msg}");
    }

    #[test]
    fn a_received_ban_wider_than_the_floor_is_too_wide() {
        let floor = crate::bans::BanFloor { ipv4: 8, ipv6: 32 };
        let c = |t: &str| crate::policy::parse_cidr(t).expect("cidr");
        for wide in ["0.0.0.0/0", "10.0.0.0/7", "::/0", "2001:db8::/31"] {
            let why = too_wide(&c(wide), floor).expect(wide);
            assert!(why.contains("wider than /"), "{why}");
        }
        for ok in ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "2001:db8::1"] {
            assert_eq!(too_wide(&c(ok), floor), None, "{ok}");
        }
    }
    use super::*;

    fn msg() -> Message {
        Message {
            op: Op::Ban,
            source: "203.0.113.7/32".into(),
            scope: BanScope::Host,
            rule: "api".into(),
            expires_ms: 10_000,
            duration_secs: 10.0,
            level: 1,
            origin: "automatic".into(),
            cuts: "new_connections".into(),
            origin_host: "api-1".into(),
            reason: Some("conn_limit".into()),
            sent_ms: 0,
        }
    }

    #[test]
    fn a_signed_message_opens_with_the_same_key_only() {
        let a = Signer::new(Some(b"0123456789abcdef".to_vec()), "shield");
        let (text, sig) = a.seal(&msg());
        assert_eq!(a.open(&text, &sig), Ok(msg()));
        let other_key = Signer::new(Some(b"fedcba9876543210".to_vec()), "shield");
        assert_eq!(other_key.open(&text, &sig), Err(Refusal::BadSignature));
        let other_fleet = Signer::new(Some(b"0123456789abcdef".to_vec()), "other");
        assert_eq!(other_fleet.open(&text, &sig), Err(Refusal::BadSignature));
        // A changed message with the old signature.
        let forged = text.replace("203.0.113.7", "203.0.113.8");
        assert_eq!(a.open(&forged, &sig), Err(Refusal::BadSignature));
        assert_eq!(a.open(&text, ""), Err(Refusal::BadSignature));
        assert_eq!(a.open(&text, "zz"), Err(Refusal::BadSignature));
    }

    #[test]
    fn without_a_key_messages_are_unsigned_and_still_checked() {
        let s = Signer::new(None, "shield");
        let (text, sig) = s.seal(&msg());
        assert_eq!(sig, "");
        assert_eq!(s.open(&text, ""), Ok(msg()));
        assert!(matches!(s.open("{", ""), Err(Refusal::Malformed(_))));
        let bad = text.replace("203.0.113.7/32", "not-an-address");
        assert!(matches!(s.open(&bad, ""), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn stored_values_carry_expiry_signature_and_message() {
        let s = Signer::new(Some(b"0123456789abcdef".to_vec()), "shield");
        let (text, sig) = s.seal(&msg());
        // The message text holds `|` nowhere it matters: splitting stops at the second.
        let stored = format!("10000|{sig}|{text}");
        assert_eq!(s.open_stored(&stored), Ok(msg()));
        assert!(s.open_stored("10000").is_err());
        assert_eq!(msg().field(), "203.0.113.7/32|host|api");
        assert_eq!(fields_of("2001:db8::/64"), "2001:db8::/64|*");
        assert_eq!(fields_of("a*b"), "a\\*b|*");
    }

    #[test]
    fn remaining_time_counts_down_to_none() {
        let m = msg();
        assert_eq!(m.remaining(4_000), Some(Duration::from_secs(6)));
        assert_eq!(m.remaining(10_000), None);
    }

    #[test]
    fn the_breaker_opens_past_the_limit_and_closes_a_minute_later() {
        let mut b = Breaker::new(3);
        assert_eq!(b.admit(0), Gate::Pass);
        assert_eq!(b.admit(1), Gate::Pass);
        assert_eq!(b.admit(2), Gate::Pass);
        assert_eq!(b.admit(3), Gate::Open(true));
        assert_eq!(b.admit(4), Gate::Open(false));
        assert!(b.is_open());
        assert!(!b.poll_close(59_999));
        assert!(b.poll_close(60_000));
        assert!(!b.is_open());
        assert_eq!(b.admit(60_001), Gate::Pass);
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:p@ss@h:1/0"),
            "rediss://user:***@h:1/0"
        );
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
    }
}
