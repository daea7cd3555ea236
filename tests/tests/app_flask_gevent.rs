//! shield_flask's connection pool against the real daemon: the app-only `shield run` (no
//! `--iface`: no XDP, no namespace, no root) and a Flask app under gunicorn with
//! `--worker-class gevent --preload` (2 workers, up to 1,000 greenlets each), 1,500
//! concurrent clients on gunicorn's Unix socket. Every greenlet of a worker shares the
//! worker's pool (`SHIELD_POOL_SIZE`, default 32): at most 64 app connections (and the
//! master's, from before the fork), every request decided (200 or 429, never on_error),
//! and every in-flight slot released on the connection that took it (the daemon's
//! in-flight count back to 0, later requests admitted). With the client from before the
//! pool (a thread-local connection) this test fails: 500s. Every process and file is
//! removed on every exit path (guards).

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use shield_tests::{TempDir, app_client::AppClient, appbench::gunicorn_python, applab, netlab};

const WORKERS: usize = 2;
/// shield_flask's default SHIELD_POOL_SIZE.
const POOL: usize = 32;
const CLIENTS: usize = 1500;
/// The endpoint's in-flight cap: far below the clients, so slots are taken and refused.
const CONCURRENCY: u32 = 10;

const APP: &str = r#"
import os

import gevent
from flask import Flask

from shield_flask import Shield

app = Flask(__name__)
app.config.update(SHIELD_SOCKET=os.environ["SHIELD_SOCKET"], SHIELD_TIMEOUT=30, SHIELD_ON_ERROR="closed")
shield = Shield(app)

# --preload: the master asks before it forks; the workers must not use its connection.
with app.test_request_context("/", environ_base={"REMOTE_ADDR": "127.0.0.1"}):
    assert shield.report("login_failed") is not None, "the master's report was not answered"


@app.get("/items/<int:n>")
def item(n):
    gevent.sleep(0.02)  # in flight a while: its slot is held
    return str(shield.errors)


@app.get("/health")
@shield.exempt
def health():
    return "ok"
"#;

/// A child process: SIGTERM, then SIGKILL after 5 s, on drop.
struct Proc(Option<Child>);

impl Proc {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        netlab::stop_gunicorn(self.0.take());
    }
}

/// `GET target` (HTTP/1.0) on gunicorn's Unix socket: the status and the body.
fn get(socket: &Path, target: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(format!("GET {target} HTTP/1.0\r\nHost: app\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// Sockets the process holds open (its app connections, plus a constant few).
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

fn endpoint_stats(dir: &Path) -> Value {
    shield_tests::applab::app_only_stats(dir)["app"]["endpoints"][0].clone()
}

#[test]
fn gevent_workers_share_their_pools_and_release_every_slot() {
    let have_gevent = Command::new(gunicorn_python())
        .args(["-c", "import gevent"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_gevent,
        "{} cannot import gevent: run `cargo xtask bootstrap` (it installs python3-gevent)",
        gunicorn_python().display()
    );
    let dir = TempDir::new("shield-gevent-");
    let app_socket = dir.0.join("app.sock");
    let http = dir.0.join("http.sock");
    std::fs::write(
        dir.0.join("policy.toml"),
        format!(
            r#"
[app]
socket = "{}"
on_error = "closed"

[[endpoint]]
name = "items"
path = "/items/*"
key = "ip"
limit = {{ rate = "100000/s", burst = 100000 }}
concurrency = {CONCURRENCY}

[[signal]]
name = "login_failed"
key = "ip"
limit = {{ rate = "1000/s", burst = 1000 }}
"#,
            app_socket.display()
        ),
    )
    .expect("policy");
    let daemon_log = || std::fs::read_to_string(dir.0.join("daemon.log")).unwrap_or_default();
    let daemon = Proc(Some(
        Command::new(shield_tests::shield_bin())
            .arg("run")
            .arg("--policy")
            .arg(dir.0.join("policy.toml"))
            .arg("--socket")
            .arg(dir.0.join("control.sock"))
            .arg("--state-dir")
            .arg(dir.0.join("state"))
            .arg("--audit-log")
            .arg(dir.0.join("audit.jsonl"))
            .args(["--metrics", "off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("daemon.log")).expect("log"))
            .spawn()
            .expect("starting shield run (app-only)"),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !AppClient::connect(&app_socket).is_ok_and(|mut c| c.hello().is_ok()) {
        assert!(
            Instant::now() < deadline,
            "the app socket never answered\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let idle = sockets(daemon.id());

    std::fs::write(dir.0.join("app.py"), APP).expect("app.py");
    let gunicorn_log = dir.0.join("gunicorn.log");
    let gunicorn = Proc(Some(
        Command::new("gunicorn")
            .args(["--worker-class", "gevent", "--preload", "--workers"])
            .arg(WORKERS.to_string())
            .args([
                "--worker-connections",
                "1000",
                "--backlog",
                "2048",
                "--bind",
            ])
            .arg(format!("unix:{}", http.display()))
            .arg("--chdir")
            .arg(&dir.0)
            .arg("app:app")
            .env("PYTHONPATH", applab::shield_flask_dir())
            .env("SHIELD_SOCKET", &app_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&gunicorn_log).expect("log"))
            .spawn()
            .expect("starting gunicorn (Debian packages gunicorn, python3-gevent)"),
    ));
    let gunicorn_log = || std::fs::read_to_string(&gunicorn_log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(&http, "/health").is_ok_and(|(s, _)| s == 200) {
        assert!(
            Instant::now() < deadline,
            "gunicorn never answered\n{}",
            gunicorn_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The daemon's open sockets, sampled while the clients run.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, peak, pid) = (done.clone(), peak.clone(), daemon.id());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(sockets(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (start, http) = (start.clone(), http.clone());
            std::thread::spawn(move || {
                start.wait();
                get(&http, &format!("/items/{n}"))
            })
        })
        .collect();
    let results: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");

    let mut admitted = 0;
    for r in &results {
        match r {
            Ok((200, body)) => {
                assert_eq!(body, "0", "a worker applied on_error\n{}", gunicorn_log());
                admitted += 1;
            }
            Ok((429, _)) => {}
            other => panic!(
                "a request neither admitted nor limited: {other:?}\n{}",
                gunicorn_log()
            ),
        }
    }
    assert!(admitted >= CONCURRENCY as usize, "only {admitted} admitted");
    let connections = peak.load(Ordering::Relaxed).saturating_sub(idle);
    assert!(
        connections <= WORKERS * POOL + 1,
        "{connections} app connections at once: more than {WORKERS} workers x {POOL}, plus the master's"
    );
    // Every slot came back: nothing in flight, and the cap admits requests again.
    let stats = endpoint_stats(&dir.0);
    assert_eq!(stats["in_flight"], 0, "{stats}");
    assert_eq!(
        stats["allowed"].as_u64().unwrap_or(0) + stats["limited"].as_u64().unwrap_or(0),
        CLIENTS as u64,
        "{stats}"
    );
    for n in 0..20 {
        assert_eq!(
            get(&http, &format!("/items/{n}")).ok(),
            Some((200, "0".to_string())),
            "after the burst"
        );
    }
    eprintln!(
        "gevent: {CLIENTS} clients, {admitted} admitted, at most {connections} app connections"
    );
    drop(gunicorn);
    drop(daemon);
}
