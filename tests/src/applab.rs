//! The application layer lab (issue 13): a Flask app with `shield_flask` (or Flask-Limiter,
//! or nothing) under gunicorn with 4 workers in a namespace, and a small HTTP/1.1 client
//! that reads status, headers and body. Used by the `app_flask_netns` tests, the demo's
//! credential-stuffing phase and the bench's application-layer section. Stopped on drop.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netlab::{Netns, unique};

/// `shield stats --json` of a daemon without pinned maps (app-only): what its control socket
/// in `dir` (`dir/control.sock`) answers, the app counters included. Panics on failure.
pub fn app_only_stats(dir: &Path) -> serde_json::Value {
    let out = std::process::Command::new(crate::shield_bin())
        .args([
            "stats",
            "--json",
            "--bpffs",
            "/nonexistent-bpffs",
            "--socket",
        ])
        .arg(dir.join("control.sock"))
        .output()
        .expect("shield stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats --json")
}

/// The password `POST /login` accepts; anything else is a failed login, reported to
/// shield as the `login_failed` signal.
pub const PASSWORD: &str = "correct horse";

/// The app: `POST /login` (form field `password`), `GET /api/items` (never limited by the
/// policies here), `GET /api/limited` (the bench's limited route), `GET /api/checked` (the
/// bench's route under a limit never reached: every request pays for a decision),
/// `GET /api/me` (the user comes from the `X-Demo-User` header through shield's user loader),
/// `GET /api/report` (the cost-weighted route: its endpoint's `cost` in the policies),
/// `GET /api/daily` (the quota route), `GET /api/slow?gate=DIR` (writes `DIR/in-<pid>-<thread>` holding its worker's pid, then
/// waits until `DIR/open` exists, at most 60 s: a request held in flight for as long as a
/// test wants), `POST /api/export?rows=N` (charges N more tokens with `shield.charge(N)` before the
/// work, when N > 0), `GET /health` (exempt),
/// `GET /shield/errors` (exempt: this worker's `shield.errors`). `APP_LIMITER` picks the
/// limiter: `shield` (SHIELD_SOCKET, SHIELD_ON_ERROR), `limiter-memory`, `limiter-redis`
/// (REDIS_URL; both Flask-Limiter with `APP_LIMIT_N` per hour on /api/limited, keyed by the
/// TCP peer), or `none`.
pub const APP_PY: &str = r#"import os
import threading
import time

from flask import Flask, jsonify, request

app = Flask(__name__)
mode = os.environ.get("APP_LIMITER", "shield")
limit_n = int(os.environ.get("APP_LIMIT_N", "100"))
shield = None


def nothing(f):
    return f


exempt = nothing
limited = nothing
checked = nothing

if mode == "shield":
    from shield_flask import Shield

    app.config["SHIELD_SOCKET"] = os.environ["SHIELD_SOCKET"]
    app.config["SHIELD_ON_ERROR"] = os.environ.get("SHIELD_ON_ERROR", "open")
    shield = Shield(app)
    exempt = shield.exempt

    @shield.user_loader
    def current_user():
        # A stand-in for a session: the user named by the X-Demo-User header.
        return request.headers.get("X-Demo-User")
elif mode in ("limiter-memory", "limiter-redis"):
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    storage = "memory://" if mode == "limiter-memory" else os.environ["REDIS_URL"]
    limiter = Limiter(get_remote_address, app=app, storage_uri=storage)
    exempt = limiter.exempt
    limited = limiter.limit(f"{limit_n} per hour")
    checked = limiter.limit("1000000000 per hour")
elif mode != "none":
    raise SystemExit(f"APP_LIMITER={mode!r}: shield, limiter-memory, limiter-redis or none")


@app.post("/login")
def login():
    if request.form.get("password") == "correct horse":
        return jsonify(ok=True)
    if shield is not None:
        shield.report("login_failed")
    return jsonify(error="wrong user or password"), 401


@app.get("/api/items")
def items():
    return jsonify(items=[{"id": i, "name": f"item {i}"} for i in range(10)])


@app.get("/api/limited")
@limited
def limited_route():
    return jsonify(ok=True)


@app.get("/api/me")
def me():
    return jsonify(user=request.headers.get("X-Demo-User"))


@app.get("/api/report")
def report_route():
    return jsonify(report="expensive")


@app.get("/api/daily")
def daily_route():
    return jsonify(ok=True)


@app.get("/api/slow")
def slow_route():
    gate = request.args.get("gate")
    if gate:
        with open(os.path.join(gate, f"in-{os.getpid()}-{threading.get_ident()}"), "w") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(gate, "open")) and time.monotonic() < deadline:
            time.sleep(0.01)
    return jsonify(pid=os.getpid())


@app.post("/api/export")
def export_route():
    rows = int(request.args.get("rows", "0"))
    if shield is not None and rows > 0:
        shield.charge(rows)
    return jsonify(exported=rows)


@app.get("/api/checked")
@checked
def checked_route():
    return jsonify(items=[{"id": i, "name": f"item {i}"} for i in range(10)])


@app.get("/health")
@exempt
def health():
    return "ok\n"


@app.get("/shield/errors")
@exempt
def shield_errors():
    return jsonify(errors=shield.errors if shield is not None else None, pid=os.getpid())
"#;

/// Where `shield_flask` lives (imported through PYTHONPATH, as `cargo xtask` does).
pub fn shield_flask_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shield-flask")
}

/// How the app limits.
#[derive(Clone, Debug)]
pub enum Limiter {
    /// shield_flask against this app socket, with this SHIELD_ON_ERROR.
    Shield { socket: PathBuf, on_error: String },
    /// Flask-Limiter, memory storage (one counter per worker process).
    FlaskLimiterMemory { limit: u32 },
    /// Flask-Limiter with redis storage at this URL.
    FlaskLimiterRedis { limit: u32, url: String },
    /// No limiter at all.
    None,
}

/// The app under gunicorn: `workers` processes × 4 threads (gthread, keep-alive; or
/// `start_threads`).
pub struct App {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
}

impl App {
    pub fn start(ns: &Netns, port: u16, workers: u32, limiter: &Limiter) -> Result<App> {
        App::start_threads(ns, port, workers, 4, limiter)
    }

    /// Like `start`, with `threads` gthreads per worker (a gthread worker may accept every
    /// connection of a burst: enough threads let a test hold that many in the view).
    pub fn start_threads(
        ns: &Netns,
        port: u16,
        workers: u32,
        threads: u32,
        limiter: &Limiter,
    ) -> Result<App> {
        let dir = std::env::temp_dir().join(unique("shield-app-"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("app.py"), APP_PY)?;
        let mut cmd = ns.command(Path::new("gunicorn"));
        cmd.args([
            "--bind",
            &format!("[::]:{port}"),
            "--workers",
            &workers.to_string(),
            "--worker-class",
            "gthread",
            "--threads",
            &threads.to_string(),
            "--log-level",
            "warning",
        ])
        .arg("--chdir")
        .arg(&dir)
        .arg("app:app")
        .env("PYTHONPATH", shield_flask_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("gunicorn.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        );
        match limiter {
            Limiter::Shield { socket, on_error } => {
                cmd.env("APP_LIMITER", "shield")
                    .env("SHIELD_SOCKET", socket)
                    .env("SHIELD_ON_ERROR", on_error);
            }
            Limiter::FlaskLimiterMemory { limit } => {
                cmd.env("APP_LIMITER", "limiter-memory")
                    .env("APP_LIMIT_N", limit.to_string());
            }
            Limiter::FlaskLimiterRedis { limit, url } => {
                cmd.env("APP_LIMITER", "limiter-redis")
                    .env("APP_LIMIT_N", limit.to_string())
                    .env("REDIS_URL", url);
            }
            Limiter::None => {
                cmd.env("APP_LIMITER", "none");
            }
        }
        let child = cmd
            .spawn()
            .context("starting gunicorn (Debian packages gunicorn and python3-flask)")?;
        let mut app = App {
            child: Some(child),
            dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Ready when /health (exempt: no daemon needed) answers.
            let up = ns
                .run_in(move || {
                    http(
                        IpAddr::V4(Ipv4Addr::LOCALHOST),
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                        "GET",
                        "/health",
                        &[],
                        "",
                        Duration::from_millis(500),
                    )
                })
                .ok()
                .flatten()
                .is_some_and(|r| r.status == 200);
            if up {
                return Ok(app);
            }
            if let Some(status) = app.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("gunicorn exited ({status}):\n{}", app.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "the app did not answer on port {port} within 30 s:\n{}",
                    app.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// gunicorn's stderr so far (worker tracebacks, shield_flask's warnings).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gunicorn.log")).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        crate::netlab::stop_gunicorn(self.child.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// (name, value) in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", self.body))
    }
}

/// One HTTP/1.1 request on a new TCP connection from `src` (`Connection: close`): the
/// response, or `None` if the connection or the response did not come within `timeout`.
/// A body is sent as a form (`application/x-www-form-urlencoded`). Call from a thread
/// inside the client namespace.
pub fn http(
    src: IpAddr,
    dst: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Option<Response> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).ok()?;
    s.bind(&SockAddr::from(SocketAddr::new(src, 0))).ok()?;
    s.connect_timeout(&SockAddr::from(dst), timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let mut stream: std::net::TcpStream = s.into();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).ok()?;
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// A form body for `POST /login`.
pub fn login_form(password: &str) -> String {
    format!("user=alice&password={}", password.replace(' ', "+"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let r = parse_response(
            b"HTTP/1.1 429 TOO MANY REQUESTS\r\nRetry-After: 12\r\nRateLimit: \"login\";r=0;t=12\r\n\r\n{\"a\":1}",
        )
        .expect("a response");
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("12"));
        assert_eq!(r.header("RateLimit"), Some("\"login\";r=0;t=12"));
        assert_eq!(r.json()["a"], 1);
        assert!(parse_response(b"garbage").is_none());
    }
}
