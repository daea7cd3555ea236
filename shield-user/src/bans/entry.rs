//! What a ban is, as the maps hold it and `shield bans` shows it: who issued it, what it
//! drops, where it lives.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use shield_common::{SourceKey, addr::FAMILY_V4};

use crate::policy::{BanScope, Cidr};

/// What `BanMaps::ban` did.
#[derive(Debug, Clone, PartialEq)]
pub struct BanOutcome {
    pub entry: BanEntry,
    /// The source was already banned at least as long: that ban was kept as it was (a new
    /// ban never shortens one in force).
    pub kept_longer: bool,
}

/// A ban to install (`BanMaps::ban_spec`).
#[derive(Debug, Clone)]
pub struct BanSpec<'a> {
    pub cidr: Cidr,
    /// The time left: the ban ends `dur` from now.
    pub dur: Duration,
    /// The ban's whole duration when it was issued earlier (a ban restored from
    /// `--state-dir`): its duration in `shield bans` and in the audit log's `ban_secs`
    /// (`unban`, `ban_end`). `None`: `dur` (a ban issued now). Never taken below `dur`.
    pub issued: Option<Duration>,
    pub scope: BanScope,
    pub rule: Option<&'a str>,
    /// `BAN_MANUAL`, `BAN_ATTEMPTS` (cuts new connections only).
    pub flags: u8,
    pub level: u8,
    pub reason: Option<&'a str>,
}

/// Who issued a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `shield ban` (the control socket).
    Manual,
    /// A rule's escalation, in the data path.
    Automatic,
    /// An `[[endpoint]]` or `[[signal]]` escalation (the app socket).
    App,
}

impl Origin {
    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Manual => "manual",
            Origin::Automatic => "automatic",
            Origin::App => "app",
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Origin {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What a ban drops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cuts {
    /// Every packet of the source (manual bans: the operator's evidence).
    #[default]
    Everything,
    /// Connection attempts and datagrams; segments of established TCP connections pass
    /// (automatic bans: evidence a spoofer can forge).
    NewConnections,
}

impl Cuts {
    pub const fn as_str(self) -> &'static str {
        match self {
            Cuts::Everything => "everything",
            Cuts::NewConnections => "new_connections",
        }
    }
}

impl PartialEq<&str> for Cuts {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One active ban, as `shield bans` shows it (and the control socket sends it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanEntry {
    /// Interface whose maps hold it (filled in by the daemon).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iface: String,
    /// Address/prefix banned.
    pub source: String,
    /// `host` (every port) or `rule` (the rule's ports).
    pub scope: BanScope,
    /// Rule that issued it or that it applies to; empty for a manual host ban.
    pub rule: String,
    pub origin: Origin,
    /// Issued in monitor mode: counted as `would_ban`, nothing dropped.
    pub monitor: bool,
    /// What the ban drops: `everything` (manual bans), or `new_connections` (automatic
    /// bans, issued on evidence a spoofer can forge: connection attempts and datagrams are
    /// dropped, segments of established TCP connections pass).
    #[serde(default)]
    pub cuts: Cuts,
    pub duration_secs: f64,
    pub remaining_secs: f64,
    /// How many bans this source had before on the backoff ladder (0 = first).
    pub level: u8,
    /// Operator's reason for a manual ban (kept in the pinned notes map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The fleet host that issued it (`[fleet]`; this host's name for its own bans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_host: Option<String>,
    #[serde(skip)]
    pub key: BanKey,
    /// Id of the rule that issued it (0: a manual host ban).
    #[serde(skip)]
    pub rule_id: u16,
}

/// Where a ban lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BanKey {
    #[default]
    None,
    Host4([u8; 4], u8),
    Host6([u8; 16], u8),
    Rule(SourceKey),
}

pub(super) fn ip_of(family: u8, addr: [u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr))
    }
}
