//! The application layer end to end (issue 13): the real `shield run` on the lab veth with
//! a policy holding `[app]`, `[[endpoint]]` and `[[signal]]`, a real Flask app with
//! `shield_flask` under gunicorn with 4 workers in the server namespace, real HTTP clients
//! in the client namespace. Needs root; every resource is a guard removed on every exit.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;
use shield_tests::applab::{self, App, Limiter, PASSWORD, Response, login_form};
use shield_tests::netlab::Daemon;
use shield_tests::netlab::{ATTACKER_V4, LEGIT_V4, SERVER_V4, unique};
use shield_tests::nslab::{NsLab, counter};

const PORT: u16 = 8000;
const WORKERS: u32 = 4;
/// A proxy the policy trusts, and a peer it does not (both added to the client side).
const PROXY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 9);
const UNTRUSTED: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
/// A client that fails its logins (the `login_failed` signal).
const GUESSER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 20);
const LOGIN_POLICY: &str = "\"login\";q=5;w=60";
/// Generous bounds for things that take a few seconds by design (3 strikes in 3 different
/// seconds); the tests wait on replies, these only stop a broken run.
const BAN_WITHIN: Duration = Duration::from_secs(40);

fn policy(socket: &str, on_error: &str) -> String {
    format!(
        r#"
[defaults]
ipv4_prefix = 32

# Lenient at L4: only the application layer limits in these tests.
[[rule]]
name = "api"
protocol = "tcp"
ports = [{PORT}]
connections = {{ rate = "500/s", burst = 1000 }}

[app]
socket = "{socket}"
group = "root"
trusted_proxies = ["{PROXY}/32"]
on_error = "{on_error}"

[[endpoint]]
name = "login"
methods = ["POST"]
path = "/login"
key = "ip"
limit = {{ rate = "5/min", burst = 5 }}
escalation = {{ strikes = 3, window = "10m", ban = "15m", scope = "host" }}

# Per API key: the header named here is sent by shield_flask because hello lists it.
[[endpoint]]
name = "keyed"
methods = ["GET"]
path = "/api/checked"
key = "header:X-Api-Key"
limit = {{ rate = "1/min", burst = 3 }}

# Per user (shield_flask's user loader; no user: per ip).
[[endpoint]]
name = "me"
path = "/api/me"
key = "user"
limit = {{ rate = "1/min", burst = 2 }}

# Cost-weighted (issue 18): one request draws 5 tokens of 10.
[[endpoint]]
name = "report"
methods = ["GET"]
path = "/api/report"
cost = 5
limit = {{ rate = "1/min", burst = 10 }}

# Cost per request: the view calls shield.charge(rows).
[[endpoint]]
name = "export"
methods = ["POST"]
path = "/api/export"
limit = {{ rate = "1/d", burst = 10 }}

# A daily quota per API key (issue 18): 20 a UTC day.
[[endpoint]]
name = "daily"
methods = ["GET"]
path = "/api/daily"
key = "header:X-Api-Key"
quota = {{ limit = 20, per = "1d" }}
limit = {{ rate = "100/s", burst = 100 }}

# In-flight cap (issue 18): 2 requests at once per API key, across every worker.
[[endpoint]]
name = "slow"
methods = ["GET"]
path = "/api/slow"
key = "header:X-Api-Key"
concurrency = 2
limit = {{ rate = "100/s", burst = 100 }}

[[signal]]
name = "login_failed"
key = "ip"
limit = {{ rate = "10/h", burst = 3 }}
escalation = {{ strikes = 1, window = "1h", ban = "1h", scope = "host" }}
"#
    )
}

struct Lab {
    // Drop order: the app, then the daemon and namespaces.
    app: Option<App>,
    lab: NsLab,
    socket: PathBuf,
}

impl Lab {
    fn new(on_error: &str) -> Lab {
        let socket = std::env::temp_dir().join(format!("{}.sock", unique("shield-app-")));
        let lab = NsLab::new(&policy(socket.to_str().expect("utf-8"), on_error), &[]);
        for a in [PROXY, UNTRUSTED, GUESSER] {
            lab.topo
                .add_client_addr(IpAddr::V4(a))
                .expect("adding a client address");
        }
        let mut l = Lab {
            app: None,
            lab,
            socket,
        };
        l.start_app(on_error);
        l
    }

    fn start_app(&mut self, on_error: &str) {
        self.app = None;
        let limiter = Limiter::Shield {
            socket: self.socket.clone(),
            on_error: on_error.into(),
        };
        self.app = Some(
            // 8 threads per worker: the in-flight test holds 8 requests in the view at once,
            // which gthread may all hand to one worker.
            App::start_threads(&self.lab.topo.server, PORT, WORKERS, 8, &limiter)
                .expect("starting the app"),
        );
    }

    fn app_log(&self) -> String {
        self.app.as_ref().map(App::log).unwrap_or_default()
    }

    /// One request from `src` in the client namespace (1 s to connect and answer).
    fn req(
        &self,
        src: Ipv4Addr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<Response> {
        let dst = SocketAddr::new(IpAddr::V4(SERVER_V4), PORT);
        let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.lab
            .topo
            .client
            .run_in(move || {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                applab::http(
                    IpAddr::V4(src),
                    dst,
                    &method,
                    &path,
                    &h,
                    &body,
                    Duration::from_secs(1),
                )
            })
            .expect("client namespace")
    }

    fn login(&self, src: Ipv4Addr, headers: &[(&str, &str)]) -> Option<Response> {
        self.req(src, "POST", "/login", headers, &login_form(PASSWORD))
    }

    fn get(&self, src: Ipv4Addr, path: &str) -> Option<u16> {
        self.req(src, "GET", path, &[], "").map(|r| r.status)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.app = None;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `"login";r=<r>;t=<t>` → (r, t).
fn ratelimit(r: &Response) -> (u64, u64) {
    let v = r
        .header("RateLimit")
        .unwrap_or_else(|| panic!("no RateLimit field: {r:?}"));
    let rest = v
        .strip_prefix("\"login\";r=")
        .unwrap_or_else(|| panic!("RateLimit {v:?}"));
    let (rem, t) = rest
        .split_once(";t=")
        .unwrap_or_else(|| panic!("RateLimit {v:?}"));
    (
        rem.parse().expect("r is a number"),
        t.parse().expect("t is a number"),
    )
}

fn assert_problem(r: &Response, status: u16, kind: &str, title: &str) -> Value {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(
        r.header("Content-Type"),
        Some("application/problem+json"),
        "{r:?}"
    );
    let body = r.json();
    assert_eq!(body["type"], format!("https://shield.dev/problems/{kind}"));
    assert_eq!(body["title"], title);
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

/// Audit lines of the application layer's bans that name `addr`.
fn app_bans(lab: &NsLab, addr: Ipv4Addr) -> Vec<Value> {
    let needle = addr.to_string();
    lab.audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "app_ban" || l["origin"] == "app")
        .filter(|l| l.to_string().contains(&needle))
        .collect()
}

/// Waits until the daemon has put `addr`'s app ban into the data path: its owner writes the
/// `app_ban` audit line once the host ban is in the maps. Until then the ban is the app
/// layer's alone, and `decide` answers the client 403 (docs/operations.md: "`decide`
/// answers 403 meanwhile"). A generous bound, for a loaded machine.
fn wait_for_nic_ban(lab: &NsLab, addr: Ipv4Addr) {
    let started = Instant::now();
    while app_bans(lab, addr).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no app_ban audit line for {addr} after 30 s: {:?}",
            lab.audit_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `r` is the app layer's 403 for a banned client (the moment between the ban's
/// decision and its host ban in the data path).
fn banned_at_l7(r: &Response) -> bool {
    r.status == 403 && r.body.contains("/problems/banned")
}

mod limits;
mod modes;
mod quota;
