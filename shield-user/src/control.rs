//! The control socket: a Unix stream socket (mode 0600, root only) speaking line-delimited
//! JSON, one request line → one reply line, several per connection.
//!
//! Requests: `{"cmd":"ban","source":"ADDR[/LEN]","duration":"10m","rule":"api","reason":"…"}`
//! (`rule`, `reason` optional), `{"cmd":"unban","source":"ADDR[/LEN]"}`, `{"cmd":"bans"}`,
//! `{"cmd":"ping"}`, `{"cmd":"reload"}`, `{"cmd":"policy"}`. Replies: `{"ok":true,…}` or `{"ok":false,"error":"…"}`.
//! Lines over `MAX_LINE` bytes, invalid JSON, unknown commands or fields get an error reply
//! and change nothing; a client silent for `CLIENT_TIMEOUT` is disconnected; at most
//! `MAX_CLIENTS` are served at once. None of this can block the daemon's data-path work.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub const DEFAULT_SOCKET: &str = "/run/shield/shield.sock";
/// Every command the socket serves (the `cmd` of a request), for the help and its test.
pub const COMMANDS: [&str; 6] = ["ban", "unban", "bans", "ping", "reload", "policy"];
pub const MAX_LINE: usize = 64 * 1024;
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CLIENTS: usize = 64;

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
}

/// Handles one request; returns the reply object (without `ok`, added here) or an error.
pub type Handler = dyn Fn(Request) -> Result<serde_json::Value, String> + Send + Sync;

fn reply(result: Result<serde_json::Value, String>) -> String {
    let v = match result {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                o.insert("ok".into(), true.into());
                v
            } else {
                serde_json::json!({"ok": true, "result": v})
            }
        }
        Err(e) => serde_json::json!({"ok": false, "error": e}),
    };
    format!("{v}\n")
}

/// Parses one request line (no newline). Public for the protocol tests.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    serde_json::from_str(text.trim()).map_err(|e| format!("bad request: {e}"))
}

pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A bound control socket that serves nothing yet: the daemon binds it before it attaches
/// anything (a socket in use fails the start with nothing changed) and serves it once the
/// maps are ready. Dropping it removes the socket file.
pub struct BoundSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ControlServer {
    /// Binds `path` (its directory is created 0700; a stale socket is replaced; a live one
    /// means another daemon: error).
    pub fn bind(path: &Path) -> io::Result<BoundSocket> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another shield daemon is listening on {} (stop it, or give --socket another path)",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        let bound = BoundSocket {
            path: path.to_path_buf(),
            listener: Some(listener),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(bound)
    }

    /// Binds `path` and serves it at once.
    pub fn start(path: &Path, handler: Arc<Handler>) -> io::Result<ControlServer> {
        Ok(ControlServer::serve(ControlServer::bind(path)?, handler))
    }

    /// Serves a bound socket with `handler` until dropped.
    pub fn serve(mut bound: BoundSocket, handler: Arc<Handler>) -> ControlServer {
        let path = bound.path.clone();
        let listener = bound
            .listener
            .take()
            .expect("a bound socket has its listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let clients = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::SeqCst);
                    let _ = conn.write_all(reply(Err("too many clients".into())).as_bytes());
                    continue;
                }
                let (handler, clients) = (handler.clone(), clients.clone());
                std::thread::spawn(move || {
                    serve_client(conn, &*handler);
                    clients.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        ControlServer {
            path,
            stop,
            thread: Some(thread),
        }
    }
}

fn serve_client(conn: UnixStream, handler: &Handler) {
    let _ = conn.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = conn.set_write_timeout(Some(CLIENT_TIMEOUT));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = Vec::new();
        // Read at most MAX_LINE + 1 bytes looking for the newline.
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(_) => return, // timeout or reset: drop the client
        };
        if n == 0 {
            return;
        }
        if line.last() != Some(&b'\n') {
            let why = if line.len() > MAX_LINE {
                format!("request longer than {MAX_LINE} bytes")
            } else {
                "incomplete request (no newline before end of stream)".to_string()
            };
            let _ = writer.write_all(reply(Err(why)).as_bytes());
            return;
        }
        line.pop();
        let result = parse_request(&line).and_then(handler);
        if writer.write_all(reply(result).as_bytes()).is_err() {
            return;
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends one request, returns the reply object.
pub fn request(path: &Path, req: &Request) -> io::Result<serde_json::Value> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{}\n", serde_json::to_string(req)?).as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
