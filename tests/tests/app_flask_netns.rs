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

#[test]
fn login_burst_then_429s_then_dropped_at_the_nic_and_failed_logins_ban() {
    let lab = Lab::new("open");

    // Exactly the burst is admitted across the 4 workers, with the draft's fields.
    for i in 0..5u64 {
        let r = lab
            .login(ATTACKER_V4, &[])
            .unwrap_or_else(|| panic!("login {i} got no answer\n{}", lab.app_log()));
        assert_eq!(r.status, 200, "login {i}: {r:?}\n{}", lab.app_log());
        assert_eq!(r.header("RateLimit-Policy"), Some(LOGIN_POLICY), "{r:?}");
        let (remaining, reset) = ratelimit(&r);
        assert_eq!(remaining, 4 - i, "{r:?}");
        assert!((1..=60).contains(&reset), "{r:?}");
    }
    let r = lab.login(ATTACKER_V4, &[]).expect("the 6th login answered");
    let body = assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    assert_eq!(body["endpoint"], "login");
    let retry: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    // 5/min: one request every 12 s; the bucket was emptied just now.
    assert!((1..=12).contains(&retry), "Retry-After {retry}");
    assert_eq!(body["retry_after"], retry);
    assert_eq!(r.header("RateLimit-Policy"), Some(LOGIN_POLICY));
    let (remaining, reset) = ratelimit(&r);
    assert_eq!(remaining, 0);
    assert!(reset >= 1, "{r:?}");

    // A second client is unaffected.
    let r = lab.login(LEGIT_V4, &[]).expect("second client answered");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(ratelimit(&r).0, 4);

    // The first client keeps going: limited in 3 different seconds → banned at the NIC.
    let started = Instant::now();
    let mut limited = 1;
    loop {
        match lab.login(ATTACKER_V4, &[]) {
            Some(r) if r.status == 429 => limited += 1,
            Some(r) if banned_at_l7(&r) => break,
            Some(r) => panic!("expected 429, a 403 for the ban or a drop, got {r:?}"),
            None => break,
        }
        assert!(
            started.elapsed() < BAN_WITHIN,
            "still answered after {limited} 429s in {BAN_WITHIN:?}: no ban at the NIC\n{}",
            lab.lab
                .daemon
                .as_ref()
                .map(|d| d.log_text())
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "banned after {limited} 429s in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(limited >= 3, "banned after only {limited} 429s");
    wait_for_nic_ban(&lab.lab, ATTACKER_V4);
    // Every TCP connection of the banned client is dropped (any path, host scope), by the
    // XDP program: its `ban` drops grow.
    let dropped_before = counter(&lab.lab.stats(), "api", "ban");
    assert_eq!(lab.get(ATTACKER_V4, "/api/items"), None);
    assert_eq!(lab.get(ATTACKER_V4, "/health"), None);
    let dropped_after = counter(&lab.lab.stats(), "api", "ban");
    assert!(
        dropped_after >= dropped_before + 2,
        "XDP ban drops {dropped_before} -> {dropped_after}: the connections were not dropped at the NIC"
    );
    // …while others are served.
    assert_eq!(lab.get(LEGIT_V4, "/api/items"), Some(200));
    assert_eq!(lab.login(LEGIT_V4, &[]).map(|r| r.status), Some(200));
    assert!(
        !app_bans(&lab.lab, ATTACKER_V4).is_empty(),
        "no app ban in the audit log: {:?}",
        lab.lab.audit_lines()
    );

    // login_failed: burst 3, so the 4th failed login is limited (one strike) → banned.
    let mut failed = 0;
    loop {
        match lab.req(GUESSER, "POST", "/login", &[], &login_form("hunter2")) {
            Some(r) if r.status == 401 => failed += 1,
            Some(r) if banned_at_l7(&r) => break,
            Some(r) => panic!("expected 401, a 403 for the ban or a drop, got {r:?}"),
            None => break,
        }
        assert!(
            failed <= 4,
            "still answered after {failed} failed logins (signal burst 3, 1 strike)"
        );
    }
    assert_eq!(failed, 4, "failed logins answered before the ban");
    wait_for_nic_ban(&lab.lab, GUESSER);
    assert_eq!(lab.get(GUESSER, "/api/items"), None);
    assert_eq!(lab.get(LEGIT_V4, "/api/items"), Some(200));
    assert!(
        !app_bans(&lab.lab, GUESSER).is_empty(),
        "no app ban for the guesser in the audit log: {:?}",
        lab.lab.audit_lines()
    );
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_is_limited_and_banned_at_l7() {
    let lab = Lab::new("open");
    let client = [("X-Forwarded-For", "192.0.2.50")];
    for i in 0..5 {
        let r = lab.login(PROXY, &client).expect("answered");
        assert_eq!(r.status, 200, "login {i}: {r:?}\n{}", lab.app_log());
    }
    let r = lab.login(PROXY, &client).expect("answered");
    assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    // Another client behind the same proxy has its own limit.
    let r = lab
        .login(PROXY, &[("X-Forwarded-For", "192.0.2.51")])
        .expect("answered");
    assert_eq!((r.status, ratelimit(&r).0), (200, 4), "{r:?}");

    // An untrusted peer's X-Forwarded-For is ignored: a new value each time does not help.
    for i in 0..5 {
        let xff = format!("192.0.2.{}", 100 + i);
        let r = lab
            .login(UNTRUSTED, &[("X-Forwarded-For", &xff)])
            .expect("answered");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = lab
        .login(UNTRUSTED, &[("X-Forwarded-For", "192.0.2.200")])
        .expect("answered");
    assert_problem(&r, 429, "rate-limited", "Too Many Requests");

    // The forwarded client keeps going: after the strikes it is banned at L7 (403: XDP
    // only sees the proxy), and the proxy itself is still served.
    let started = Instant::now();
    let banned = loop {
        let r = lab
            .login(PROXY, &client)
            .expect("the proxy is never dropped");
        match r.status {
            429 => {}
            403 => break r,
            _ => panic!("expected 429 then 403, got {r:?}"),
        }
        assert!(
            started.elapsed() < BAN_WITHIN,
            "no L7 ban within {BAN_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let body = assert_problem(&banned, 403, "banned", "Forbidden");
    assert!(body["retry_after"].as_u64().is_some_and(|s| s >= 1));
    assert_eq!(lab.get(PROXY, "/api/items"), Some(200));
    let r = lab
        .login(PROXY, &[("X-Forwarded-For", "192.0.2.52")])
        .expect("answered");
    assert_eq!(r.status, 200, "another client behind the proxy: {r:?}");
}

#[test]
fn an_api_key_endpoint_limits_per_key_whatever_the_address() {
    let lab = Lab::new("open");
    let get = |src: Ipv4Addr, key: &str| {
        lab.req(src, "GET", "/api/checked", &[("X-Api-Key", key)], "")
            .expect("answered")
    };
    // One key from two addresses shares one limit…
    for (i, src) in [LEGIT_V4, ATTACKER_V4, LEGIT_V4].into_iter().enumerate() {
        let r = get(src, "key-1");
        assert_eq!(r.status, 200, "request {i}: {r:?}\n{}", lab.app_log());
        assert_eq!(r.header("RateLimit-Policy"), Some("\"keyed\";q=3;w=180"));
    }
    let r = get(ATTACKER_V4, "key-1");
    assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    // …and another key from the same address has its own.
    let r = get(LEGIT_V4, "key-2");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("RateLimit"),
        Some("\"keyed\";r=2;t=60"),
        "one of 3 used, the next in 60 s"
    );
}

#[test]
fn a_cost_weighted_endpoint_and_a_per_request_charge_draw_their_tokens() {
    let lab = Lab::new("open");
    // cost = 5 under a burst of 10: exactly 2 of 6 from one client, across 4 workers.
    let statuses: Vec<(u16, Option<String>)> = (0..6)
        .map(|_| {
            let r = lab
                .req(LEGIT_V4, "GET", "/api/report", &[], "")
                .expect("answered");
            (r.status, r.header("RateLimit").map(str::to_string))
        })
        .collect();
    assert_eq!(
        statuses.iter().map(|s| s.0).collect::<Vec<_>>(),
        [200, 200, 429, 429, 429, 429],
        "{statuses:?}\n{}",
        lab.app_log()
    );
    assert_eq!(statuses[0].1.as_deref(), Some("\"report\";r=5;t=300"));
    let r = lab
        .req(LEGIT_V4, "GET", "/api/report", &[], "")
        .expect("answered");
    let body = assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    let retry: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(
        (1..=300).contains(&retry),
        "5 tokens at 1/min: at most 300 s, got {retry}"
    );
    assert_eq!(body["retry_after"], retry);
    // Another client has its own 10 tokens.
    let r = lab
        .req(ATTACKER_V4, "GET", "/api/report", &[], "")
        .expect("answered");
    assert_eq!(r.status, 200, "{r:?}");
    // shield.charge(6) in the view: 1 on arrival + 6 = 7 of 10 (a daily rate: 1/d).
    let r = lab
        .req(LEGIT_V4, "POST", "/api/export?rows=6", &[], "")
        .expect("answered");
    assert_eq!(r.status, 200, "{r:?}\n{}", lab.app_log());
    assert_eq!(r.json()["exported"], 6);
    let (rem, t) = r
        .header("RateLimit")
        .and_then(|v| v.strip_prefix("\"export\";r="))
        .and_then(|v| v.split_once(";t="))
        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
        .unwrap_or_else(|| panic!("RateLimit of export: {r:?}"));
    assert_eq!(rem, 3, "{r:?}");
    assert_eq!(t, 7 * 86_400, "7 tokens at 1/d come back in 7 days");
    // The next one: 1 on arrival leaves 2, the charge of 6 is refused by a 429 from the view.
    let r = lab
        .req(LEGIT_V4, "POST", "/api/export?rows=6", &[], "")
        .expect("answered");
    let body = assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    assert_eq!(body["endpoint"], "export");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("per day"),
        "{body}"
    );
    // 2 tokens remain: a request without a charge still passes twice, then not.
    let s: Vec<u16> = (0..3)
        .map(|_| {
            lab.req(LEGIT_V4, "POST", "/api/export", &[], "")
                .expect("answered")
                .status
        })
        .collect();
    assert_eq!(s, [200, 200, 429]);
    // `shield check` shows the cost.
    let out = std::process::Command::new(shield_tests::shield_bin())
        .arg("check")
        .arg(&lab.lab.policy)
        .output()
        .expect("shield check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("report") && l.contains("1/min burst 10") && l.contains(" 5 ")),
        "the matrix shows report's cost 5:\n{text}"
    );
}

/// The endpoint's row of `shield stats --json` (the daemon's app counters).
fn app_row(lab: &Lab, name: &str) -> Value {
    let (ok, out, err) = lab.lab.shield(&[
        "stats",
        "--json",
        "--bpffs",
        lab.lab.bpffs.path.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("stats --json");
    v["app"]["endpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no app endpoint {name} in stats: {v}"))
}

/// Seconds to the next 00:00 UTC.
fn to_utc_midnight() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    86_400 - now % 86_400
}

#[test]
fn a_daily_quota_admits_exactly_its_limit_and_survives_a_daemon_restart() {
    let mut lab = Lab::new("open");
    let state = std::env::temp_dir().join(unique("shield-state-"));
    let restart = |lab: &mut Lab| {
        lab.lab.daemon = None; // SIGTERM: the app task writes the quota file on its way out
        let audit = lab.lab.audit.to_str().expect("utf-8").to_string();
        lab.lab.daemon = Some(
            Daemon::start(
                &shield_tests::shield_bin(),
                &lab.lab.topo.server,
                &lab.lab.policy,
                &lab.lab.bpffs.path,
                &[
                    "--audit-log",
                    &audit,
                    "--state-dir",
                    state.to_str().expect("utf-8"),
                ],
            )
            .expect("restarting shield run"),
        );
    };
    restart(&mut lab);
    let get = |lab: &Lab| {
        lab.req(LEGIT_V4, "GET", "/api/daily", &[("X-Api-Key", "k1")], "")
            .expect("answered")
    };
    for i in 0..15u64 {
        let r = get(&lab);
        assert_eq!(r.status, 200, "request {i}: {r:?}\n{}", lab.app_log());
        let rl = r.header("RateLimit").unwrap_or_default().to_string();
        let want = format!("\"daily\";r={};t=", 19 - i);
        assert!(rl.starts_with(&want), "request {i}: {rl:?}, want {want}…");
        let t: u64 = rl[want.len()..].parse().expect("t");
        assert!(
            t.abs_diff(to_utc_midnight()) <= 2,
            "t = seconds to 00:00 UTC: {t}"
        );
        assert_eq!(
            r.header("RateLimit-Policy"),
            Some("\"daily\";q=100;w=1, \"daily-quota\";q=20;w=86400")
        );
    }
    restart(&mut lab);
    let saved = std::fs::read_to_string(state.join("app-quotas.json")).expect("quota file");
    assert!(saved.contains("\"used\":15"), "{saved}");
    // shield_flask reconnects to the new daemon; 5 more, then the quota is used up.
    for i in 15..20 {
        let r = get(&lab);
        assert_eq!(
            r.status,
            200,
            "request {i} after the restart: {r:?}\n{}",
            lab.app_log()
        );
    }
    let r = get(&lab);
    let body = assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    let retry: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(
        retry.abs_diff(to_utc_midnight()) <= 2,
        "retry at 00:00 UTC: {retry}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("quota of 20 per day"),
        "{body}"
    );
    let daily = app_row(&lab, "daily");
    assert_eq!(
        daily["quota_used"], 20,
        "shield stats --json: quota used {daily}"
    );
    // Another key has its own 20.
    let r = lab
        .req(LEGIT_V4, "GET", "/api/daily", &[("X-Api-Key", "k2")], "")
        .expect("answered");
    assert_eq!(r.status, 200, "{r:?}");
    lab.lab.daemon = None;
    let _ = std::fs::remove_dir_all(&state);
}

/// A gate directory for `/api/slow`: requests wait in the app until `open()`.
struct Gate(PathBuf);

impl Gate {
    fn new() -> Gate {
        let d = std::env::temp_dir().join(unique("shield-gate-"));
        std::fs::create_dir_all(&d).expect("gate dir");
        Gate(d)
    }
    /// Workers' pids of the requests inside the view now.
    fn inside(&self) -> Vec<i32> {
        std::fs::read_dir(&self.0)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("in-"))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
    fn open(&self) {
        std::fs::write(self.0.join("open"), "").expect("opening the gate");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Pending = std::thread::JoinHandle<anyhow::Result<Option<Response>>>;

/// `GET /api/slow` held at `gate`, with API key `key`, on a thread of its own.
fn slow(lab: &Lab, key: &str, gate: &Gate) -> Pending {
    let path = format!("/api/slow?gate={}", gate.0.display());
    let key = key.to_string();
    lab.lab
        .topo
        .client
        .spawn_in(move || {
            applab::http(
                IpAddr::V4(LEGIT_V4),
                SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
                "GET",
                &path,
                &[("X-Api-Key", key.as_str())],
                "",
                Duration::from_secs(90),
            )
        })
        .expect("client namespace")
}

/// Waits until `inside + answered == n` (requests either in the view or answered).
fn settle(gate: &Gate, pending: &[Pending], n: usize) -> (usize, usize) {
    let deadline = Instant::now() + BAN_WITHIN;
    loop {
        let inside = gate.inside().len();
        let answered = pending.iter().filter(|p| p.is_finished()).count();
        if inside + answered >= n || Instant::now() > deadline {
            return (inside, answered);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrency_caps_in_flight_requests_per_key_and_a_killed_worker_gives_its_slots_back() {
    let lab = Lab::new("open");
    // 8 at once from one key: 2 in the view, 6 refused at once (429, Retry-After 1).
    let gate = Gate::new();
    let pending: Vec<Pending> = (0..8).map(|_| slow(&lab, "one", &gate)).collect();
    let (inside, answered) = settle(&gate, &pending, 8);
    assert_eq!(
        (inside, answered),
        (2, 6),
        "2 in flight, 6 refused\n{}",
        lab.app_log()
    );
    assert_eq!(
        app_row(&lab, "slow")["in_flight"],
        2,
        "shield stats --json: 2 in flight"
    );
    let refused: Vec<Response> = pending
        .into_iter()
        .filter(|p| p.is_finished())
        .map(|p| p.join().expect("thread").expect("netns").expect("answered"))
        .collect();
    for r in &refused {
        let body = assert_problem(r, 429, "rate-limited", "Too Many Requests");
        assert_eq!(r.header("Retry-After"), Some("1"), "{r:?}");
        assert_eq!(body["retry_after"], 1);
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("slow allows 2 requests in flight at once"),
            "{body}"
        );
    }
    gate.open();
    // 8 at once from 8 keys: all 8 in the view together, then all 200.
    let gate = Gate::new();
    let pending: Vec<Pending> = (0..8)
        .map(|i| slow(&lab, &format!("key-{i}"), &gate))
        .collect();
    let (inside, answered) = settle(&gate, &pending, 8);
    assert_eq!((inside, answered), (8, 0), "8 keys: all in flight at once");
    gate.open();
    for p in pending {
        let r = p.join().expect("thread").expect("netns").expect("answered");
        assert_eq!(r.status, 200, "{r:?}");
    }
    // A worker killed mid-request: its connection to the daemon closes, its slots return.
    let gate = Gate::new();
    let pending: Vec<Pending> = (0..2).map(|_| slow(&lab, "victim", &gate)).collect();
    assert_eq!(settle(&gate, &pending, 2), (2, 0));
    let third = slow(&lab, "victim", &gate);
    let r = third
        .join()
        .expect("thread")
        .expect("netns")
        .expect("answered");
    assert_eq!(r.status, 429, "the victim key is full: {r:?}");
    let mut pids = gate.inside();
    pids.sort_unstable();
    pids.dedup();
    for pid in &pids {
        // SAFETY: a gunicorn worker of this test's app (its pid written by the view).
        assert_eq!(unsafe { libc::kill(*pid, libc::SIGKILL) }, 0, "kill {pid}");
    }
    for p in pending {
        let r = p.join().expect("thread").expect("netns");
        assert!(
            r.is_none(),
            "a killed worker's request gets no answer: {r:?}"
        );
    }
    // The slots come back (the daemon saw the connections close): 2 in flight again. The
    // daemon reads the closed connections as the kernel closes them; a try that raced it
    // is let through and repeated (a leaked slot would fail every try until the bound).
    let deadline = Instant::now() + BAN_WITHIN;
    loop {
        let gate = Gate::new();
        let pending: Vec<Pending> = (0..2).map(|_| slow(&lab, "victim", &gate)).collect();
        let got = settle(&gate, &pending, 2);
        gate.open();
        let statuses: Vec<u16> = pending
            .into_iter()
            .map(|p| {
                p.join()
                    .expect("thread")
                    .expect("netns")
                    .expect("answered")
                    .status
            })
            .collect();
        if got == (2, 0) {
            assert_eq!(statuses, [200, 200]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the kill ({pids:?}) the victim key never had its 2 slots again: {got:?} {statuses:?}\n{}",
            lab.app_log()
        );
    }
}

#[test]
fn a_user_endpoint_limits_per_user_and_falls_back_to_the_address() {
    let lab = Lab::new("open");
    let me = |src: Ipv4Addr, user: Option<&str>| {
        let h: Vec<(&str, &str)> = user.map(|u| ("X-Demo-User", u)).into_iter().collect();
        lab.req(src, "GET", "/api/me", &h, "")
            .expect("answered")
            .status
    };
    // alice from two addresses: one limit of 2.
    assert_eq!(me(LEGIT_V4, Some("alice")), 200, "{}", lab.app_log());
    assert_eq!(me(ATTACKER_V4, Some("alice")), 200);
    assert_eq!(me(LEGIT_V4, Some("alice")), 429);
    // bob from the same address is another user.
    assert_eq!(me(LEGIT_V4, Some("bob")), 200);
    // No user: keyed by the address (a fresh one: its own limit of 2).
    assert_eq!(me(GUESSER, None), 200);
    assert_eq!(me(GUESSER, None), 200);
    assert_eq!(me(GUESSER, None), 429);
    assert_eq!(me(GUESSER, Some("carol")), 200);
}

#[test]
fn daemon_stopped_on_error_open_allows_and_closed_refuses() {
    let mut lab = Lab::new("open");
    let r = lab.login(LEGIT_V4, &[]).expect("answered");
    assert_eq!(
        (r.status, r.header("RateLimit-Policy")),
        (200, Some(LOGIN_POLICY))
    );
    lab.lab.daemon = None; // SIGTERM: the app socket goes away
    // on_error = "open": served, unlimited (more than the burst), never a 500.
    for i in 0..8 {
        let r = lab.login(LEGIT_V4, &[]).expect("answered");
        assert_eq!(r.status, 200, "request {i} with the daemon stopped: {r:?}");
        assert_eq!(r.header("RateLimit"), None);
    }
    let log = lab.app_log();
    assert!(
        log.contains("cannot be asked"),
        "the outage is logged: {log}"
    );

    // on_error = "closed" (policy and app): 503 problem while the daemon is away.
    std::fs::write(
        &lab.lab.policy,
        policy(lab.socket.to_str().expect("utf-8"), "closed"),
    )
    .expect("writing the policy");
    lab.lab.start();
    lab.start_app("closed");
    let r = lab.login(ATTACKER_V4, &[]).expect("answered");
    assert_eq!(r.status, 200, "{r:?}");
    lab.lab.daemon = None;
    for _ in 0..3 {
        let r = lab.login(ATTACKER_V4, &[]).expect("answered");
        assert_problem(&r, 503, "unavailable", "Service Unavailable");
    }
    // Exempt views do not need the daemon.
    assert_eq!(lab.get(ATTACKER_V4, "/health"), Some(200));
}

/// The app-only daemon (`shield run --policy` without `--iface`) as user `nobody`: stopped
/// and its directory removed on drop.
struct Unprivileged {
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_app_only_daemon_runs_as_an_unprivileged_user_and_limits_and_bans_at_l7() {
    use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};
    shield_tests::require_root();
    const NOBODY: u32 = 65534;
    let topo = shield_tests::netlab::Topology::new().expect("namespaces");
    let dir = std::env::temp_dir().join(unique("shield-apponly-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let socket = dir.join("app.sock");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
[defaults]
ipv4_prefix = 32

[app]
socket = "{}"

[[endpoint]]
name = "login"
methods = ["POST"]
path = "/login"
limit = {{ rate = "5/min", burst = 5 }}
escalation = {{ strikes = 3, window = "10m", ban = "15m", scope = "host" }}
"#,
            socket.display()
        ),
    )
    .expect("policy");
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let log = std::fs::File::create(dir.join("daemon.log")).expect("log");
    let child = std::process::Command::new(shield_tests::shield_bin())
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .arg("--socket")
        .arg(dir.join("control.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .args(["--metrics", "off"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting shield run as nobody");
    let mut daemon = Unprivileged {
        child,
        dir: dir.clone(),
    };
    let daemon_log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    // Ready when the app socket answers hello.
    let deadline = Instant::now() + BAN_WITHIN;
    loop {
        if let Ok(mut c) = shield_tests::app_client::AppClient::connect(&socket)
            && c.hello().is_ok()
        {
            break;
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("shield run (app-only) exited: {status}\n{}", daemon_log());
        }
        assert!(
            Instant::now() < deadline,
            "the app socket never answered\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Unprivileged: user nobody, no capability at all.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert!(field("Uid:").starts_with("65534"), "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    let meta = std::fs::metadata(&socket).expect("app socket");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o660));
    assert!(daemon_log().contains("app-only mode"), "{}", daemon_log());

    let limiter = Limiter::Shield {
        socket: socket.clone(),
        on_error: "closed".into(),
    };
    let _app = App::start(&topo.server, PORT, WORKERS, &limiter).expect("starting the app");
    let login = |src: Ipv4Addr| {
        let dst = SocketAddr::new(IpAddr::V4(SERVER_V4), PORT);
        topo.client
            .run_in(move || {
                applab::http(
                    IpAddr::V4(src),
                    dst,
                    "POST",
                    "/login",
                    &[],
                    &login_form(PASSWORD),
                    Duration::from_secs(2),
                )
            })
            .expect("client namespace")
            .expect("answered (no XDP: nothing is dropped)")
    };
    for i in 0..5 {
        let r = login(LEGIT_V4);
        assert_eq!(r.status, 200, "login {i}: {r:?}\n{}", daemon_log());
    }
    let r = login(LEGIT_V4);
    assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    // Limited in 3 different seconds: banned, at L7 (a 403), since there is no XDP.
    let deadline = Instant::now() + BAN_WITHIN;
    let banned = loop {
        let r = login(LEGIT_V4);
        if r.status == 403 {
            break r;
        }
        assert_eq!(r.status, 429, "{r:?}");
        assert!(Instant::now() < deadline, "never banned\n{}", daemon_log());
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_problem(&banned, 403, "banned", "Forbidden");
    let r = login(ATTACKER_V4);
    assert_eq!(r.status, 200, "another client: {r:?}");
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"app_ban\"") && l.contains("\"enforced\":\"l7\"")),
        "audit app_ban enforced l7:\n{audit}"
    );
    // `shield stats --json` works without pinned maps: the app counters from the daemon.
    let v = shield_tests::applab::app_only_stats(&dir);
    let login = &v["app"]["endpoints"][0];
    assert_eq!(login["name"], "login", "{v}");
    assert!(login["limited"].as_u64().unwrap_or(0) >= 2, "{v}");
    assert_eq!(login["banned"], 1, "{v}");
    // `shield ban` has no interface to ban on: refused in plain words, never a silent
    // success that protects nothing.
    let out = std::process::Command::new(shield_tests::shield_bin())
        .args(["ban", "192.0.2.77", "--for", "1m", "--socket"])
        .arg(dir.join("control.sock"))
        .output()
        .expect("shield ban");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("app-only mode"),
        "shield ban against an app-only daemon: {:?}\nstdout: {}\nstderr: {err}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}
