//! The application layer's part of a policy: `[app]`, `[[endpoint]]` and `[[signal]]`
//! (served on the app socket by `shield run`, see `crate::app`).

use std::{fmt, path::PathBuf};

use super::{Cidr, Escalation, Limit};

/// The app socket path when `[app]` names none.
pub const DEFAULT_APP_SOCKET: &str = "/run/shield/app.sock";

/// What the Python client does when the daemon is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Allow the request (counted by the client).
    Open,
    /// Answer 503.
    Closed,
}

impl OnError {
    pub const fn as_str(self) -> &'static str {
        match self {
            OnError::Open => "open",
            OnError::Closed => "closed",
        }
    }
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[app]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    pub socket: PathBuf,
    /// Group of the socket (mode 0660 root:group); `None`: root's group.
    pub group: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    pub on_error: OnError,
}

/// What a limit is counted per.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// The client address, masked to the policy's `ipv4_prefix` / `ipv6_prefix`.
    Ip,
    /// A request header's value (as written in the policy); missing: the ip key.
    Header(String),
    /// The identity the app set; none: the ip key.
    User,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Ip => f.write_str("ip"),
            KeyKind::Header(h) => write!(f, "header:{h}"),
            KeyKind::User => f.write_str("user"),
        }
    }
}

/// `quota = { limit, per }`: at most `limit` tokens per key in each window of `per_secs`;
/// windows start at multiples of `per_secs` since the Unix epoch (UTC): a `"1d"` quota resets
/// at 00:00 UTC, a `"1h"` one on the hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub per_secs: u64,
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = match self.per_secs {
            86_400 => "day".to_string(),
            3600 => "hour".to_string(),
            s if s % 86_400 == 0 => format!("{} days", s / 86_400),
            s if s % 3600 == 0 => format!("{} h", s / 3600),
            s => format!("{} min", s / 60),
        };
        write!(f, "{} per {per} (resets at 00:00 UTC", self.limit)?;
        if self.per_secs < 86_400 {
            write!(f, " and every {} s after", self.per_secs)?;
        }
        f.write_str(")")
    }
}

/// `[[endpoint]]`: a limit on the requests of one route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    /// Upper-case HTTP methods; empty: every method.
    pub methods: Vec<String>,
    /// A Flask rule matched exactly, or (`prefix`) the text before a final `*`.
    pub path: String,
    pub prefix: bool,
    pub key: KeyKind,
    pub limit: Limit,
    /// Tokens one request draws from the key's buckets (`cost = N`, default 1; a request
    /// may name its own with `cost` in `decide`).
    pub cost: u64,
    /// At most this many requests of one key in flight at once (`concurrency = N`).
    pub concurrency: Option<u64>,
    /// A fixed-window quota per key (`quota = { limit = N, per = "1d" }`).
    pub quota: Option<Quota>,
    pub escalation: Option<Escalation>,
}

impl Endpoint {
    /// Whether a request (`method`, Flask rule `rule` or null, `path`) belongs here.
    pub fn matches(&self, method: &str, rule: Option<&str>, path: &str) -> bool {
        // HEAD is GET without the body: Flask (Werkzeug) runs the GET view for it, so an
        // endpoint that lists GET covers HEAD too (else a HEAD flood runs the view unlimited).
        let listed = |want: &str| self.methods.iter().any(|m| m.eq_ignore_ascii_case(want));
        let method_ok = self.methods.is_empty()
            || listed(method)
            || (method.eq_ignore_ascii_case("HEAD") && listed("GET"));
        let path_ok = if self.prefix {
            path.starts_with(&self.path)
        } else {
            rule == Some(self.path.as_str())
        };
        method_ok && path_ok
    }

    /// The path as written in the policy.
    pub fn path_text(&self) -> String {
        if self.prefix {
            format!("{}*", self.path)
        } else {
            self.path.clone()
        }
    }
}

/// `[[signal]]`: a limit on reports from the app (`shield.report("login_failed")`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    pub name: String,
    pub key: KeyKind,
    pub limit: Limit,
    pub escalation: Option<Escalation>,
}
