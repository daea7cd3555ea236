//! The control socket's protocol, shared by the daemon (`daemon::control`) and the CLI: a
//! Unix stream socket (mode 0600, root only) speaking line-delimited JSON, one request line →
//! one reply line, several per connection.
//!
//! Requests: `{"cmd":"ban","source":"ADDR[/LEN]","duration":"10m","rule":"api","reason":"…","force":false}`
//! (`rule`, `reason`, `force` optional), `{"cmd":"unban","source":"ADDR[/LEN]"}`, `{"cmd":"bans"}`,
//! `{"cmd":"ping"}`, `{"cmd":"reload"}`, `{"cmd":"policy"}`, `{"cmd":"app_stats"}`. Replies: `{"ok":true,…}` (the
//! fields of the command's `Reply`) or `{"ok":false,"error":"…"}`. Lines over `MAX_LINE`
//! bytes, invalid JSON, unknown commands or fields get an error reply and change nothing; a
//! client silent for `CLIENT_TIMEOUT` is disconnected; at most `MAX_CLIENTS` are served at
//! once. None of this can block the daemon's data-path work.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::bans::BanEntry;

pub const DEFAULT_SOCKET: &str = "/run/shield/shield.sock";
/// Every command the socket serves (the `cmd` of a request), for the help and its test.
pub const COMMANDS: [&str; 8] = [
    "ban",
    "unban",
    "bans",
    "ping",
    "reload",
    "policy",
    "fleet",
    "app_stats",
];
pub const MAX_LINE: usize = 64 * 1024;
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CLIENTS: usize = 64;
/// How long the CLI waits for a reload's answer: a reload of two lists of 1,000,000
/// prefixes takes seconds, one queued behind another longer; past this the CLI says the
/// daemon did not answer (the reload itself goes on).
pub const RELOAD_PATIENCE: Duration = Duration::from_secs(15 * 60);
/// How long the CLI waits for any other answer (a ban waits for a reload in progress).
pub const PATIENCE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Ban {
        source: String,
        duration: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Allow a prefix wider than the policy's ban floor (default /8 and /32).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    Unban {
        source: String,
    },
    Bans {},
    Ping {},
    /// Reload the policy file now.
    Reload {},
    /// The running policy: path, generation, matrix table.
    Policy {},
    /// The fleet link's state and counters (`shield stats`).
    Fleet {},
    /// The app layer's counters (`shield stats`): they live in the daemon, not in maps.
    #[serde(rename = "app_stats")]
    AppStats {},
}

/// `ping`: the daemon is up (it answers once its program is attached and the control socket
/// listens), and which interfaces it protects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    pub pong: bool,
    /// Every interface the daemon runs on (none: app-only mode).
    #[serde(default)]
    pub interfaces: Vec<PingIface>,
}

/// One interface of `Pong`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingIface {
    pub iface: String,
    /// The daemon's program still runs there.
    pub protected: bool,
    /// Why not (`shield detach`, the interface gone or renamed), when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

/// `reload`: what the install did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    pub generation: u32,
    pub rules: usize,
    pub allow: usize,
    pub deny: usize,
    pub port_slots_written: usize,
    pub lists_swapped: bool,
    pub took_ms: f64,
}

/// `reload` as the daemon answers it: what the install did, and with `[app]` in the
/// policy, what the application layer now serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReply {
    #[serde(flatten)]
    pub reloaded: Reloaded,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppReloaded>,
}

/// The application layer's part of a `reload` reply (`[app]` in the reloaded policy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppReloaded {
    /// `[[endpoint]]` and `[[signal]]` tables in force.
    pub endpoints: usize,
    pub signals: usize,
    /// No interface (`shield run` without `--iface`): `rules`, `allow` and `deny` are 0.
    pub app_only: bool,
}

/// `policy`: the policy in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningPolicy {
    pub path: String,
    pub generation: u32,
    /// As `shield check` prints it.
    pub matrix: String,
}

/// `fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetReply {
    pub fleet: crate::fleet::Status,
}

/// `bans`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanList {
    pub bans: Vec<BanEntry>,
}

/// One interface's outcome of a `ban`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanResult {
    #[serde(flatten)]
    pub ban: BanEntry,
    /// A longer ban was in force on the same source: it was kept as it was.
    pub kept_longer: bool,
}

/// `ban`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Banned {
    pub bans: Vec<BanResult>,
    pub warnings: Vec<String>,
}

/// `unban`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unbanned {
    pub removed: Vec<BanEntry>,
    /// With an application layer (`[app]`): how many clients inside the prefix it freed
    /// from their L7 bans (403s). Absent without one (or if it did not answer in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7_freed: Option<usize>,
}

/// `app_stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStats {
    /// The app socket served (`[app]` in the policy at start), else `None`.
    pub socket: Option<String>,
    /// Bad requests, bad forwarded addresses, full tables.
    pub errors: u64,
    pub rows: Vec<crate::app::CountsRow>,
}

/// A successful reply, by command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Pong(Pong),
    Reloaded(Reloaded),
    ReloadedApp(ReloadReply),
    Policy(RunningPolicy),
    Fleet(FleetReply),
    Bans(BanList),
    Banned(Banned),
    Unbanned(Unbanned),
    AppStats(AppStats),
}

/// One reply line (with its newline): `{"ok":true,…}` or `{"ok":false,"error":"…"}`.
pub fn encode(result: &Result<Reply, String>) -> String {
    let v = match result {
        Ok(reply) => match serde_json::to_value(reply) {
            Ok(serde_json::Value::Object(mut o)) => {
                o.insert("ok".into(), true.into());
                serde_json::Value::Object(o)
            }
            Ok(other) => serde_json::json!({"ok": true, "result": other}),
            Err(e) => serde_json::json!({"ok": false, "error": format!("encoding the reply: {e}")}),
        },
        Err(e) => serde_json::json!({"ok": false, "error": e}),
    };
    format!("{v}\n")
}

/// Parses one request line (no newline). Public for the protocol tests.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    serde_json::from_str(text.trim()).map_err(|e| format!("bad request: {e}"))
}

/// Why a request to the daemon failed, in the user's words.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the shield daemon is not running: nothing listens on {0} (start `shield run`, or give the --socket it uses)"
    )]
    NotRunning(PathBuf),
    #[error("permission denied on the control socket {0}: it is root only (try sudo)")]
    PermissionDenied(PathBuf),
    #[error(
        "the shield daemon on {socket} accepted the request but did not answer within {secs} s (it goes on with it)"
    )]
    Timeout { socket: PathBuf, secs: u64 },
    #[error("talking to the shield daemon on {socket}: {source}")]
    Io { socket: PathBuf, source: io::Error },
    /// The daemon answered with an error.
    #[error("{0}")]
    Refused(String),
    #[error(
        "the daemon's reply is not what this shield command expects ({0}); are the daemon and the command the same version?"
    )]
    BadReply(String),
}

impl ClientError {
    /// Nothing listens on the socket: no daemon at all.
    pub fn daemon_absent(&self) -> bool {
        matches!(self, ClientError::NotRunning(_))
    }
}

/// Sends one request and waits for its reply, typed: `R` is the reply of `req`'s command.
pub fn call<R: DeserializeOwned>(socket: &Path, req: &Request) -> Result<R, ClientError> {
    let path = socket.to_path_buf();
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(path.clone())
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.clone()),
        _ => ClientError::Io {
            socket: path.clone(),
            source,
        },
    };
    let patience = match req {
        Request::Reload {} => RELOAD_PATIENCE,
        _ => PATIENCE,
    };
    let mut s = UnixStream::connect(socket).map_err(io_err)?;
    s.set_read_timeout(Some(patience)).map_err(io_err)?;
    let line = serde_json::to_string(req).map_err(|e| ClientError::BadReply(e.to_string()))?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(io_err)?;
    let mut reply = String::new();
    match BufReader::new(s).read_line(&mut reply) {
        Ok(0) => {
            return Err(ClientError::Io {
                socket: path.clone(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection without an answer",
                ),
            });
        }
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(ClientError::Timeout {
                socket: path.clone(),
                secs: patience.as_secs(),
            });
        }
        Err(e) => return Err(io_err(e)),
    }
    let v: serde_json::Value =
        serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))?;
    if v["ok"] != true {
        return Err(ClientError::Refused(
            v["error"]
                .as_str()
                .unwrap_or("the daemon refused the request")
                .to_string(),
        ));
    }
    serde_json::from_value(v).map_err(|e| ClientError::BadReply(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reload reply keeps the XDP daemon's fields flat, as scripts read them, and adds
    /// `app` only with `[app]`; the CLI reads a reply with or without it.
    #[test]
    fn a_reload_reply_keeps_its_fields_and_adds_the_app_part() {
        let reloaded = Reloaded {
            generation: 3,
            rules: 2,
            allow: 1,
            deny: 0,
            port_slots_written: 4,
            lists_swapped: false,
            took_ms: 1.5,
        };
        let plain = encode(&Ok(Reply::Reloaded(reloaded.clone())));
        let v: serde_json::Value = serde_json::from_str(&plain).expect("JSON");
        assert_eq!(
            (v["ok"].clone(), v["rules"].clone()),
            (true.into(), 2.into())
        );
        assert!(v.get("app").is_none(), "{v}");
        let r: ReloadReply = serde_json::from_str(&plain).expect("an XDP reply");
        assert_eq!((r.reloaded.clone(), r.app), (reloaded.clone(), None));
        let app = AppReloaded {
            endpoints: 2,
            signals: 1,
            app_only: true,
        };
        let with = encode(&Ok(Reply::ReloadedApp(ReloadReply {
            reloaded: reloaded.clone(),
            app: Some(app.clone()),
        })));
        let v: serde_json::Value = serde_json::from_str(&with).expect("JSON");
        assert_eq!(v["generation"], 3, "{v}");
        assert_eq!(v["app"]["endpoints"], 2, "{v}");
        let r: ReloadReply = serde_json::from_str(&with).expect("an app reply");
        assert_eq!((r.reloaded, r.app), (reloaded, Some(app)));
    }

    #[test]
    fn every_listed_command_is_served_and_no_other() {
        for cmd in COMMANDS {
            let err = parse_request(format!(r#"{{"cmd":"{cmd}"}}"#).as_bytes())
                .err()
                .unwrap_or_default();
            assert!(!err.contains("unknown variant"), "{cmd}: {err}");
        }
        let err = parse_request(br#"{"cmd":"nope"}"#).expect_err("unknown command");
        for cmd in COMMANDS {
            assert!(
                err.contains(cmd),
                "the enum and COMMANDS differ on {cmd}: {err}"
            );
        }
    }

    #[test]
    fn replies_round_trip_through_their_types() {
        let r = Reply::Pong(Pong {
            pong: true,
            interfaces: vec![PingIface {
                iface: "eth0".into(),
                protected: true,
                lost: None,
            }],
        });
        let line = encode(&Ok(r));
        assert_eq!(
            line,
            "{\"interfaces\":[{\"iface\":\"eth0\",\"protected\":true}],\"ok\":true,\"pong\":true}\n"
        );
        let p: Pong = serde_json::from_str(&line).expect("pong");
        assert!(p.pong && p.interfaces[0].protected);
        // An older daemon's reply (no interfaces) still reads.
        let p: Pong = serde_json::from_str("{\"ok\":true,\"pong\":true}").expect("old pong");
        assert!(p.pong && p.interfaces.is_empty());
        assert_eq!(
            encode(&Err("no".into())),
            "{\"error\":\"no\",\"ok\":false}\n"
        );
    }

    #[test]
    fn requests_round_trip_and_garbage_is_refused() {
        let r = parse_request(
            br#"{"cmd":"ban","source":"192.0.2.0/24","duration":"10m","rule":"api"}"#,
        );
        assert_eq!(
            r,
            Ok(Request::Ban {
                source: "192.0.2.0/24".into(),
                duration: "10m".into(),
                rule: Some("api".into()),
                reason: None,
                force: false,
            })
        );
        assert_eq!(parse_request(br#"{"cmd":"bans"}"#), Ok(Request::Bans {}));
        for bad in [
            &b"garbage"[..],
            br#"{"cmd":"reboot"}"#,
            br#"{"cmd":"ban","source":"1.2.3.4"}"#,
            br#"{"cmd":"bans","extra":1}"#,
            b"\xff\xfe",
            b"",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?} must be refused",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
