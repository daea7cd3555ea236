//! The application layer with the real `shield run`: a Rust client speaks the app socket's
//! protocol (the part `shield_flask` plays), real TCP in network namespaces shows that
//! an app ban drops a direct client at the NIC. Needs root; every resource is a guard.

use std::{
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use shield_tests::{
    app_client::AppClient,
    netlab::{ATTACKER_V4, LEGIT_V4, unique},
    nslab::NsLab,
};

const WEB: u16 = 8000;

fn policy(socket: &Path, extra: &str) -> String {
    format!(
        r#"
[app]
socket = "{}"
group = "daemon"
trusted_proxies = ["127.0.0.1/32"]

[[endpoint]]
name = "login"
methods = ["POST"]
path = "/login"
limit = {{ rate = "5/min", burst = 5 }}
escalation = {{ strikes = 2, window = "10m", ban = "15m", scope = "host" }}
{extra}
"#,
        socket.display()
    )
}

/// Removes the app socket file whatever happens (the daemon removes it on a clean stop).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn socket_path() -> SocketFile {
    SocketFile(std::env::temp_dir().join(format!("{}.sock", unique("shield-app-"))))
}

fn login(c: &mut AppClient, peer: IpAddr, xff: Option<&str>) -> Value {
    c.decide("POST", "/login", &peer.to_string(), xff)
        .expect("a decide reply")
}

#[test]
fn decide_limits_exactly_bans_at_the_nic_and_refuses_control_verbs() {
    let sock = socket_path();
    let lab = NsLab::new(&policy(&sock.0, ""), &[WEB]);
    let mode = std::fs::metadata(&sock.0)
        .expect("the app socket exists once shield run is ready")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o660,
        "the app socket must be 0660 root:group"
    );
    let mut c = AppClient::connect(&sock.0).expect("connect");
    let hello = c.hello().expect("hello");
    assert_eq!(hello["ok"], true, "{hello}");
    assert_eq!(hello["on_error"], "open");
    let generation = hello["generation"].as_u64().expect("generation");
    assert!(generation >= 1);

    // Exactly the burst, then 429 with the time to the next token (5/min: 12 s).
    let attacker = IpAddr::V4(ATTACKER_V4);
    let legit = IpAddr::V4(LEGIT_V4);
    let started = Instant::now();
    for i in 0..5 {
        let d = login(&mut c, attacker, None);
        assert_eq!(d["allow"], true, "request {i} of the burst: {d}");
        assert_eq!(d["remaining"], 4 - i, "{d}");
        assert_eq!(d["policy"], "\"login\";q=5;w=60");
    }
    let d = login(&mut c, attacker, None);
    let took = started.elapsed();
    assert_eq!(d["allow"], false, "the 6th request is over the burst: {d}");
    assert_eq!(d["status"], 429);
    let retry = d["retry_after"].as_u64().expect("retry_after");
    if took < Duration::from_secs(1) {
        assert_eq!(retry, 12, "{d}");
    } else {
        assert!((11..=12).contains(&retry), "{d}");
    }
    assert_eq!(d["endpoint"], "login");
    assert_eq!(d["client"], attacker.to_string());

    // A second client is unaffected.
    let d = login(&mut c, legit, None);
    assert_eq!(
        (d["allow"].clone(), d["remaining"].clone()),
        (json!(true), json!(4)),
        "{d}"
    );

    // X-Forwarded-For only from a trusted proxy.
    let d = login(
        &mut c,
        "127.0.0.1".parse().expect("ip"),
        Some("203.0.113.9"),
    );
    assert_eq!(
        d["client"], "203.0.113.9",
        "a trusted proxy's XFF names the client"
    );
    let d = login(&mut c, legit, Some("203.0.113.9"));
    assert_eq!(
        d["client"],
        legit.to_string(),
        "an untrusted peer's XFF is ignored"
    );
    assert_eq!(d["remaining"], 3, "and counted against the peer: {d}");

    // Control verbs and garbage: an error each, nothing changed, the connection goes on.
    for line in [
        r#"{"op":"ban","source":"198.51.100.2","duration":"1h"}"#,
        r#"{"op":"unban","source":"198.51.100.3"}"#,
        r#"{"op":"reload"}"#,
        r#"{"cmd":"reload"}"#,
        "this is not json",
        r#"{"op":"decide","method":"POST","rule":"/login","path":"/login","peer":17}"#,
        r#"{"op":"decide","method":"POST","rule":"/login","path":"/login","peer":"nonsense"}"#,
    ] {
        let r = c
            .raw(line)
            .expect("an error reply, not a closed connection");
        assert_eq!(r["ok"], false, "{line} must be refused: {r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    let r = c.raw(r#"{"op":"reload"}"#).expect("reply");
    assert_eq!(
        r["error"],
        "the app socket accepts only hello, decide, report and release"
    );
    let d = login(&mut c, legit, None);
    assert_eq!(d["remaining"], 2, "bad requests changed no state: {d}");
    let (ok, out, _) = lab.shield(&["bans", "--json"]);
    assert!(ok);
    assert!(
        !out.contains("198.51.100.2"),
        "no ban came from the app socket: {out}"
    );

    // Before any ban, the attacker connects to the web port.
    assert_eq!(
        lab.connect_legit(attacker, WEB, 3, Duration::from_millis(20))
            .ok,
        3
    );
    // Strikes: refused in 2 different seconds → banned. Keep asking until the 403.
    let deadline = Instant::now() + Duration::from_secs(20);
    let banned = loop {
        let d = login(&mut c, attacker, None);
        if d["status"] == 403 {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "no ban after 20 s of refused requests: {d}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(banned["allow"], false);
    assert!(
        banned["retry_after"]
            .as_u64()
            .is_some_and(|r| r > 890 && r <= 900),
        "{banned}"
    );
    // The ban reaches the data path through the owner: wait for it in `shield bans`.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ban = loop {
        let (ok, out, err) = lab.shield(&["bans", "--json"]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).expect("bans --json");
        let list = v
            .as_array()
            .cloned()
            .or_else(|| v["bans"].as_array().cloned())
            .unwrap_or_default();
        if let Some(b) = list
            .into_iter()
            .find(|b| b["source"] == format!("{attacker}/32"))
        {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "the app ban never showed in shield bans: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ban["origin"], "app", "{ban}");
    assert_eq!(ban["scope"], "host", "{ban}");
    let (_, text, _) = lab.shield(&["bans"]);
    assert!(
        text.contains("app"),
        "shield bans names the app origin:\n{text}"
    );
    // Dropped at the NIC: real connections from the attacker time out, others connect.
    let a = lab.connect(attacker, WEB, 3, Duration::from_millis(20));
    assert_eq!(a.ok, 0, "the banned direct client still connects: {a:?}");
    let l = lab.connect_legit(legit, WEB, 3, Duration::from_millis(20));
    assert_eq!(l.ok, 3, "another client is cut off too: {l:?}");

    let audit = lab.audit_lines();
    let app_ban = audit
        .iter()
        .find(|l| l["event"] == "app_ban")
        .unwrap_or_else(|| panic!("no app_ban audit line: {audit:?}"));
    assert_eq!(app_ban["origin"], "app");
    assert_eq!(app_ban["endpoint"], "login");
    assert_eq!(app_ban["enforced"], "xdp");
    let limited: Vec<&Value> = audit
        .iter()
        .filter(|l| l["event"] == "app_limited")
        .collect();
    assert!(!limited.is_empty(), "no app_limited line");
    // At most one per client per second: the attacker was refused many times a second.
    let attacker_lines = limited
        .iter()
        .filter(|l| l["client"] == attacker.to_string())
        .count();
    let secs = started.elapsed().as_secs() + 1;
    assert!(
        attacker_lines as u64 <= secs,
        "{attacker_lines} app_limited lines in {secs} s for one client"
    );

    // The counters, from the daemon.
    let (ok, out, err) = lab.shield(&[
        "stats",
        "--json",
        "--bpffs",
        lab.bpffs.path.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("stats --json");
    let row = v["app"]["endpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "login").cloned())
        .unwrap_or_else(|| panic!("no app endpoint row in stats: {v}"));
    assert!(row["allowed"].as_u64().is_some_and(|n| n >= 9), "{row}");
    assert!(row["limited"].as_u64().is_some_and(|n| n >= 2), "{row}");
    assert_eq!(row["banned"], 1, "{row}");
    assert!(v["app"]["errors"].as_u64().is_some_and(|n| n >= 4), "{v}");

    // `shield unban` lifts the XDP ban and the app layer's L7 ban alike.
    let (ok, _, err) = lab.shield(&["unban", &attacker.to_string()]);
    assert!(ok, "unban: {err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = login(&mut c, attacker, None);
        if d["status"] != 403 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still 403 after shield unban: {d}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        lab.connect_legit(attacker, WEB, 2, Duration::from_millis(20))
            .ok,
        2
    );
}

#[test]
fn a_reload_keeps_endpoint_state_by_name() {
    let sock = socket_path();
    let mut lab = NsLab::new(&policy(&sock.0, ""), &[WEB]);
    let mut c = AppClient::connect(&sock.0).expect("connect");
    let g0 = c.hello().expect("hello")["generation"]
        .as_u64()
        .expect("gen");
    let legit = IpAddr::V4(LEGIT_V4);
    for _ in 0..3 {
        assert_eq!(login(&mut c, legit, None)["allow"], true);
    }
    // A new endpoint before `login`: `login` keeps its state by name.
    let extra = r#"
[[endpoint]]
name = "search"
path = "/search"
limit = { rate = "1/s", burst = 1 }
"#;
    std::fs::write(&lab.policy, policy(&sock.0, extra)).expect("policy");
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "reload: {err}");
    let d = login(&mut c, legit, None);
    assert!(d["generation"].as_u64().is_some_and(|g| g > g0), "{d}");
    assert_eq!(
        d["remaining"], 1,
        "login kept its bucket across the reload: {d}"
    );
    let d = c
        .decide("GET", "/search", &legit.to_string(), None)
        .expect("decide");
    assert_eq!(d["endpoint"], "search", "the new endpoint is in force: {d}");
    // Changing the socket needs a restart: the reload is refused, the old policy stays.
    let moved = policy(&PathBuf::from("/tmp/elsewhere.sock"), extra);
    std::fs::write(&lab.policy, moved).expect("policy");
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(!ok && err.contains("restart"), "{err}");
    assert_eq!(login(&mut c, legit, None)["remaining"], 0);
    // A line over 64 KiB: an error, that connection closed, the daemon serves on.
    let mut big = AppClient::connect(&sock.0).expect("connect");
    let long = format!(r#"{{"op":"hello","pad":"{}"}}"#, "x".repeat(70 * 1024));
    let r = big.raw(&long).expect("an error reply before the close");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("longer than 65536")),
        "{r}"
    );
    assert!(
        big.hello().is_err(),
        "the connection is closed after an oversized line"
    );
    assert_eq!(c.hello().expect("other connections go on")["ok"], true);
    drop(lab.daemon.take());
    assert!(!sock.0.exists(), "a clean stop removes the app socket");
}

#[test]
fn signal_reports_ban_a_client_after_its_limit() {
    let sock = socket_path();
    let extra = r#"
[[signal]]
name = "login_failed"
limit = { rate = "10/h", burst = 3 }
escalation = { strikes = 1, window = "1h", ban = "1h" }
"#;
    let lab = NsLab::new(&policy(&sock.0, extra), &[WEB]);
    let mut c = AppClient::connect(&sock.0).expect("connect");
    let attacker = ATTACKER_V4.to_string();
    for i in 0..3 {
        let r = c.report("login_failed", &attacker).expect("report");
        assert_eq!(
            (
                r["counted"].clone(),
                r["limited"].clone(),
                r["banned"].clone()
            ),
            (json!(true), json!(false), json!(false)),
            "report {i} is within the burst: {r}"
        );
    }
    let r = c.report("login_failed", &attacker).expect("report");
    assert_eq!(
        (r["limited"].clone(), r["banned"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    let r = c.report("nope", &attacker).expect("reply");
    assert_eq!(r["error"], "no [[signal]] named \"nope\" in the policy");
    // Banned everywhere: 403 from decide, and at the NIC.
    let d = c.decide("POST", "/login", &attacker, None).expect("decide");
    assert_eq!(d["status"], 403, "{d}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab
        .connect(IpAddr::V4(ATTACKER_V4), WEB, 1, Duration::from_millis(10))
        .ok
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "the signal's ban never reached the NIC"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        lab.connect_legit(IpAddr::V4(LEGIT_V4), WEB, 2, Duration::from_millis(10))
            .ok,
        2
    );
    let audit = lab.audit_lines();
    assert!(
        audit.iter().any(|l| l["event"] == "app_ban"
            && l["signal"] == "login_failed"
            && l["origin"] == "app"),
        "{audit:?}"
    );
}

#[test]
fn an_unknown_group_fails_the_start_before_anything_is_attached() {
    use shield_tests::netlab::{Daemon, TempBpffs, Topology};
    shield_tests::require_root();
    let sock = socket_path();
    let text =
        policy(&sock.0, "").replace("group = \"daemon\"", "group = \"no-such-group-for-shield\"");
    let path = std::env::temp_dir().join(format!("{}.toml", unique("shield-app-policy-")));
    std::fs::write(&path, text).expect("policy");
    let bpffs = TempBpffs::new().expect("bpffs");
    let topo = Topology::new().expect("namespaces");
    let started = Daemon::start(
        &shield_tests::shield_bin(),
        &topo.server,
        &path,
        &bpffs.path,
        &[],
    );
    let _ = std::fs::remove_file(&path);
    let err = format!("{:#}", started.err().expect("the start must fail"));
    assert!(
        err.contains("no group named \"no-such-group-for-shield\""),
        "the error names the group: {err}"
    );
    assert!(!sock.0.exists(), "no app socket is left behind");
    assert!(
        shield_user::stats::read_iface(&bpffs.path, shield_tests::netlab::SERVER_IF).is_err(),
        "nothing was pinned"
    );
}

/// An app-only daemon (`shield run` without `--iface`) started by hand: stopped and its
/// files removed on drop.
struct AppOnly {
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for AppOnly {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `shield reload` and `shield unban` against an app-only daemon say what they did: the
/// reload names the endpoints and signals it took (it said "0 rules", the rules of an XDP
/// policy it has none of), an unban of a source that is not banned exits 2 saying so (it
/// exited 0), and one that frees an L7-banned client says how many it freed.
#[test]
fn an_app_only_daemon_says_what_reload_and_unban_did() {
    shield_tests::require_root();
    let dir = std::env::temp_dir().join(unique("pl-apponly-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let app_sock = dir.join("app.sock");
    let control = dir.join("control.sock");
    let policy_file = dir.join("policy.toml");
    let signal = "\n[[signal]]\nname = \"bad_password\"\nlimit = { rate = \"5/min\", burst = 5 }\n";
    std::fs::write(&policy_file, policy(&app_sock, signal)).expect("policy");
    let log = std::fs::File::create(dir.join("daemon.log")).expect("log");
    let child = std::process::Command::new(shield_tests::shield_bin())
        .arg("run")
        .arg("--policy")
        .arg(&policy_file)
        .arg("--socket")
        .arg(&control)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--metrics", "off"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting shield run (app-only)");
    let mut daemon = AppOnly {
        child,
        dir: dir.clone(),
    };
    let daemon_log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        if let Ok(mut c) = AppClient::connect(&app_sock)
            && c.hello().is_ok()
        {
            break c;
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
    };
    let shield = |args: &[&str]| {
        let out = std::process::Command::new(shield_tests::shield_bin())
            .args(args)
            .arg("--socket")
            .arg(&control)
            .output()
            .expect("running shield");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // The reload says what the app layer took, in the XDP reply's shape.
    let (code, out, err) = shield(&["reload"]);
    assert_eq!(code, Some(0), "reload: {out}{err}");
    assert!(
        out.starts_with("reloaded: generation ")
            && out.contains(", 1 endpoints and 1 signals (app-only: no interface), ")
            && out.trim_end().ends_with(" ms"),
        "an app-only reload names the endpoints and signals it reloaded, not 0 rules: {out}"
    );

    // Nothing banned: exit 2, said on stderr.
    let (code, out, err) = shield(&["unban", "192.0.2.77"]);
    assert_eq!(
        code,
        Some(2),
        "unban of a source that is not banned exits 2: {out}{err}"
    );
    assert!(
        err.contains("192.0.2.77/32 is not banned: nothing was lifted"),
        "unban says nothing was banned: {err}"
    );

    // An L7 ban (no XDP: every ban is a 403), lifted: exit 0, the freed client counted.
    let legit = IpAddr::V4(LEGIT_V4);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if login(&mut c, legit, None)["status"] == 403 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never L7-banned\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, out, err) = shield(&["unban", &legit.to_string()]);
    assert_eq!(code, Some(0), "unban of an L7-banned client: {out}{err}");
    assert!(
        out.contains(&format!(
            "freed 1 client(s) inside {legit}/32 from the application layer's L7 bans"
        )),
        "unban says it freed the client: {out}"
    );
    assert_ne!(
        login(&mut c, legit, None)["status"],
        403,
        "the client is no longer banned"
    );
}
