//! Policy files: parsing (TOML, every error with file:line:column), validation, and the
//! validated `Policy` that `compile` turns into map images. Pure: no kernel access.

pub mod app;
mod compile;
mod fleet;
mod parse;
mod table;
#[cfg(test)]
mod tests;
mod value;

use std::{
    fmt,
    io::Read as _,
    net::IpAddr,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
    time::Duration,
};

pub use app::{AppConfig, DEFAULT_APP_SOCKET, Endpoint, KeyKind, OnError, Signal};
pub use compile::{
    CompiledPolicy, assign_ids, buckets, compile, compile_with_ids, escalation_config,
};
pub use fleet::{Fleet, describe as describe_fleet, hostname};
pub use parse::{
    MAX_POLICY_VALUES, format_duration, parse_bytes, parse_cidr, parse_duration, parse_str,
};
pub use table::matrix_table;

/// What happens to traffic over a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Drop it.
    Enforce,
    /// Pass it and count `would_drop`.
    Monitor,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        })
    }
}

/// `count` tokens per `period_secs` seconds, as written in the file (`"5/s"`, `"600/min"`, `"1000/h"`, `"10000/d"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period_secs: u64,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period_secs {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A `connections` or `packets` limit: a token bucket (`rate`, `burst`) and an optional
/// second, longer bucket (`sustained`: N tokens per period, capacity N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub rate: Rate,
    pub burst: u64,
    pub sustained: Option<Rate>,
}

/// A destination port range, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// What a ban covers (a rule's escalation, a manual ban).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BanScope {
    /// The rule's ports only.
    Rule,
    /// Everything from that source.
    Host,
}

impl BanScope {
    pub const fn as_str(self) -> &'static str {
        match self {
            BanScope::Rule => "rule",
            BanScope::Host => "host",
        }
    }
}

impl PartialEq<&str> for BanScope {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for BanScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Escalating bans for repeat offenders: `strikes` strikes (at most one per second in which
/// the source was limited) within `window` ban it for `ban`; each further ban within
/// `forget` of the previous one multiplies the duration by `backoff`, up to `max_ban`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Escalation {
    pub strikes: u16,
    pub window: Duration,
    pub ban: Duration,
    pub backoff: u16,
    pub max_ban: Duration,
    pub forget: Duration,
    pub scope: BanScope,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub protocol: Protocol,
    /// Empty: every port of the protocol not claimed by another rule (and always for ICMP).
    pub ports: Vec<PortRange>,
    pub mode: Mode,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub connections: Option<Limit>,
    pub packets: Option<Limit>,
    pub escalation: Option<Escalation>,
    /// Shared budget for connection attempts from unverified sources (`sustained` unused).
    pub unverified: Option<Limit>,
    /// What a refused connection attempt gets.
    pub over_limit: OverLimit,
    /// With `OverLimit::Reset`: the most RSTs the rule sends (burst: one second's worth).
    pub resets: Option<Rate>,
    /// `challenge = "syncookie"`: the MSS its cookie SYN-ACKs advertise to IPv4 clients
    /// (`mss`, default 1460; IPv6 clients 20 less). `None`: no challenge.
    pub syncookie_mss: Option<u16>,
}

/// `over_limit`: what a TCP connection attempt over the rule's limits gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverLimit {
    /// Nothing (the SYN is dropped; the client retransmits until it gives up).
    Drop,
    /// A RST from XDP, if its source is verified (never a spoofable one), at most once a
    /// second per source and `resets` per rule; else it is dropped.
    Reset,
}

/// `resets` when a rule with `over_limit = "reset"` does not say.
pub const DEFAULT_RESETS: Rate = Rate {
    count: 100,
    period_secs: 1,
};

/// A CIDR prefix with host bits clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub max_sources: u32,
    /// How long a source that proved real (handshake + data) stays verified.
    pub verified_ttl: Duration,
    /// Manual bans on a prefix shorter than these need `--force` (`shield ban`).
    pub min_ban_ipv4_prefix: u8,
    pub min_ban_ipv6_prefix: u8,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub rules: Vec<Rule>,
    /// `[fleet]`: bans shared through Redis (absent: this host alone).
    pub fleet: Option<Fleet>,
    /// `[app]`: the app socket is served when present.
    pub app: Option<AppConfig>,
    /// `[[endpoint]]` in file order (the first match counts a request).
    pub endpoints: Vec<Endpoint>,
    pub signals: Vec<Signal>,
}

/// A policy error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The largest policy file read: two lists of 1,048,576 prefixes (the most the maps hold)
/// written one per line take about 60 MB; anything far larger is a mistake (`/dev/zero`, a
/// log file), not a policy.
pub const MAX_POLICY_BYTES: u64 = 256 * 1024 * 1024;

/// Errors from loading a policy file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read policy file {path}: it is {kind}, not a regular file")]
    NotAFile { path: String, kind: &'static str },
    #[error(
        "cannot read policy file {path}: it is larger than the limit of 256 MiB ({MAX_POLICY_BYTES} bytes)"
    )]
    TooLarge { path: String },
    #[error(transparent)]
    Invalid(#[from] PolicyError),
}

/// What a path that is not a regular file is, for error messages ("a directory", …).
pub fn file_kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads, parses and validates a policy file: a regular file of at most `MAX_POLICY_BYTES`.
pub fn load(path: &Path) -> Result<Policy, LoadError> {
    let shown = path.display().to_string();
    let read_err = |source| LoadError::Read {
        path: shown.clone(),
        source,
    };
    // Refuse what is not a regular file before opening it: opening a FIFO blocks until a
    // writer comes. O_NONBLOCK covers one swapped in after this check (it changes nothing
    // for a regular file), and the type is checked again on the open file.
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let not_a_file = |t: std::fs::FileType| LoadError::NotAFile {
        path: shown.clone(),
        kind: file_kind(t),
    };
    if !meta.is_file() {
        return Err(not_a_file(meta.file_type()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(not_a_file(meta.file_type()));
    }
    if meta.len() > MAX_POLICY_BYTES {
        return Err(LoadError::TooLarge { path: shown });
    }
    // The file may grow after the size check: read at most one byte past the limit.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(LoadError::TooLarge { path: shown });
    }
    Ok(parse_bytes(&shown, &bytes)?)
}

/// How many prefixes in both lists `warnings` names one by one.
const SHOWN_OVERLAPS: usize = 5;

/// Things in a valid policy that are probably mistakes, one sentence each: a prefix on both
/// the allow and the deny list (allow wins: the deny entry does nothing), a deny of every
/// address (`0.0.0.0/0`, `::/0`), a rule without any limit (its traffic is only counted).
pub fn warnings(policy: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let allow: std::collections::HashSet<&Cidr> = policy.allow.iter().collect();
    let both: Vec<&Cidr> = policy.deny.iter().filter(|c| allow.contains(c)).collect();
    for c in both.iter().take(SHOWN_OVERLAPS) {
        out.push(format!(
            "{c} is on both the allow and the deny list; allow wins, so the deny entry has no effect"
        ));
    }
    if both.len() > SHOWN_OVERLAPS {
        out.push(format!(
            "… and {} more prefixes on both lists",
            both.len() - SHOWN_OVERLAPS
        ));
    }
    for c in &policy.allow {
        if c.len == 0 {
            let family = if c.addr.is_ipv4() { "IPv4" } else { "IPv6" };
            out.push(format!(
                "the allow list holds {c}: no {family} source is ever limited, denied or banned"
            ));
        }
    }
    for c in &policy.deny {
        if c.len == 0 {
            let family = if c.addr.is_ipv4() { "IPv4" } else { "IPv6" };
            out.push(format!(
                "the deny list holds {c}: every {family} packet from a source not on the allow list is dropped"
            ));
        }
    }
    if policy.rules.is_empty() && policy.deny.is_empty() && policy.app.is_none() {
        out.push(
            "the policy has no rule, no deny list and no [app]: nothing is limited; only bans (`shield ban`, the fleet's) are enforced"
                .to_string(),
        );
    }
    for r in &policy.rules {
        if r.connections.is_none() && r.packets.is_none() && r.unverified.is_none() {
            out.push(format!(
                "rule `{}` has no `connections`, `packets` or `unverified` limit: its traffic is counted, never limited",
                r.name
            ));
        }
    }
    out
}
