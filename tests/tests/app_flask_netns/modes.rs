//! The daemon stopped (on_error open and closed) and the app-only daemon as an unprivileged user.

use super::*;

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
    // The daemon's own directory (one every user may write in is refused: anyone could
    // replace the app socket there).
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
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
    // `shield bans` lists NIC bans: it says where this daemon's bans are instead of a bare
    // "no active bans" while a client gets 403s.
    let out = std::process::Command::new(shield_tests::shield_bin())
        .args(["bans", "--socket"])
        .arg(dir.join("control.sock"))
        .output()
        .expect("shield bans");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && err.contains("app-only mode (no --iface): it holds no ban at the NIC")
            && err.contains("`app_ban`"),
        "shield bans against an app-only daemon: {:?}\nstdout: {}\nstderr: {err}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
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
