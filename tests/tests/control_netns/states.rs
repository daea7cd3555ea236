//! Bans that cannot mislead, honest states after a stop or a detach, quiet pipes, a metrics flood.

use super::*;

#[test]
fn bans_refuse_what_would_mislead_and_never_shorten() {
    let mut lab = NsLab::new(POLICY, &[API]);
    for (args, needle) in [
        (vec!["ban", "0.0.0.0/0", "--for", "1m"], "wider than /8"),
        (vec!["ban", "::/0", "--for", "1m"], "wider than /32"),
        (vec!["ban", "128.0.0.0/1", "--for", "1m"], "--force"),
        (
            vec!["ban", "10.77.1.2", "--for", "1m"],
            "allow list (10.77.0.0/16)",
        ),
    ] {
        let (ok, out, err) = lab.shield(&args);
        assert!(!ok && err.contains(needle), "{args:?}: {out}{err}");
    }
    let (_, out, _) = lab.shield(&["bans", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["bans"].as_array().map(Vec::len),
        Some(0),
        "nothing stored: {v}"
    );

    // --force allows a wide prefix; a prefix holding allow-listed space warns.
    let (ok, _, err) = lab.shield(&["ban", "128.0.0.0/1", "--for", "1m", "--force"]);
    assert!(ok, "{err}");
    let (ok, _, _) = lab.shield(&["unban", "128.0.0.0/1"]);
    assert!(ok);
    let (ok, _, err) = lab.shield(&["ban", "10.0.0.0/8", "--for", "1m"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("10.77.0.0/16") && err.contains("stays reachable"),
        "{err}"
    );
    let (ok, _, _) = lab.shield(&["unban", "10.0.0.0/8"]);
    assert!(ok);

    // The floor is the policy's: raised to /24, a /23 needs --force.
    std::fs::write(
        &lab.policy,
        format!("[defaults]\nmin_ban_ipv4_prefix = 24\n{POLICY}"),
    )
    .expect("policy");
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "{err}");
    let (ok, _, err) = lab.shield(&["ban", "198.51.100.0/23", "--for", "1m"]);
    assert!(!ok && err.contains("wider than /24"), "{err}");
    let (ok, _, err) = lab.shield(&["ban", "198.51.100.0/24", "--for", "1m"]);
    assert!(ok, "{err}");
    let (ok, _, _) = lab.shield(&["unban", "198.51.100.0/24"]);
    assert!(ok);

    // A shorter ban never shortens a longer one.
    let attacker = ATTACKER_V4.to_string();
    let (ok, _, err) = lab.shield(&["ban", &attacker, "--for", "10m", "--reason", "ticket 7"]);
    assert!(ok, "{err}");
    let (ok, out, err) = lab.shield(&["ban", &attacker, "--for", "30s"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("already banned") && out.contains("kept that ban"),
        "{out}"
    );
    let remaining = |lab: &NsLab| -> f64 {
        let (_, out, _) = lab.shield(&["bans", "--json"]);
        let v: Value = serde_json::from_str(&out).expect("json");
        v["bans"][0]["remaining_secs"].as_f64().expect("a ban")
    };
    assert!(remaining(&lab) > 500.0, "the 10m ban stays");
    let kept = lab
        .audit_lines()
        .into_iter()
        .any(|l| l["event"] == "ban_kept" && l["requested_secs"] == 30.0);
    assert!(kept, "the audit log says the ban was kept");
    // A connection from the banned source is refused; from the legit client it is not.
    let banned = lab.connect(IpAddr::V4(ATTACKER_V4), API, 2, Duration::from_millis(50));
    assert_eq!(banned.ok, 0, "{banned:?}");
    let legit = lab.connect_legit(IpAddr::V4(LEGIT_V4), API, 2, Duration::from_millis(50));
    assert_eq!(legit.failed, 0, "{legit:?}");

    // The reason survives a restart, and shows without the daemon too.
    lab.daemon().stop().expect("stop");
    let out = Command::new(shield_bin())
        .args([
            "bans",
            "--json",
            "--socket",
            "/nonexistent/shield.sock",
            "--bpffs",
        ])
        .arg(&lab.bpffs.path)
        .output()
        .expect("bans");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["bans"][0]["comment"], "ticket 7", "{v}");
    lab.start();
    let (_, out, _) = lab.shield(&["bans", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["bans"][0]["comment"], "ticket 7", "after restart: {v}");
    let (_, out, _) = lab.shield(&["bans"]);
    assert!(out.contains("ticket 7"), "{out}");
}

#[test]
fn states_are_honest_after_a_stop_a_detach_and_without_permission() {
    let mut lab = NsLab::new(POLICY, &[API]);
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    let (ok, _, err) = lab.shield(&["ban", "192.0.2.9", "--for", "10m"]);
    assert!(ok, "{err}");

    // A non-root user gets "permission denied", not "not running".
    let socket = lab.socket();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(shield_bin())
        .args(["bans", "--socket"])
        .arg(&socket)
        .args(["--bpffs", &bpffs])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(!err.contains("not running"), "{err}");

    // Ready and protecting: `shield ping` exits 0 and names the interface.
    let (code, out, err) = ping(&socket, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("{SERVER_IF}: protected")), "{out}");

    // `shield detach` behind the daemon's back: it notices once, and refuses to pretend.
    let (ok, _, err) = lab.shield(&["detach", SERVER_IF, "--bpffs", &bpffs]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.daemon().log_text().contains("was detached") {
        assert!(
            Instant::now() < deadline,
            "the daemon must notice the detach: {}",
            lab.daemon().log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `ping` says the interface is no longer protected (exit 2), and `stats`, whose pins
    // are gone, says why instead of printing what little is left.
    let (code, out, err) = ping(&socket, &[]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        out.contains(&format!("{SERVER_IF}: NOT PROTECTED")) && out.contains("was detached"),
        "{out}"
    );
    let stats = Command::new(shield_bin())
        .args(["stats", "--bpffs", &bpffs, "--socket"])
        .arg(&socket)
        .output()
        .expect("stats");
    let err = String::from_utf8_lossy(&stats.stderr);
    assert!(!stats.status.success(), "{err}");
    assert!(
        err.contains("no longer protects its interfaces") && err.contains("was detached"),
        "{err}"
    );
    for args in [
        vec!["reload"],
        vec!["ban", "192.0.2.10", "--for", "1m"],
        vec!["unban", "192.0.2.9"],
    ] {
        let (ok, _, err) = lab.shield(&args);
        assert!(!ok && err.contains("was detached"), "{args:?}: {err}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let log = lab.daemon().log_text();
    assert_eq!(
        log.matches("no longer protects it (reload, ban, unban and bans now fail)")
            .count(),
        1,
        "said once, not every second: {log}"
    );
    assert!(!log.contains("BPF_OBJ_GET"), "{log}");
    let lost = lab.audit_events("lost").len();
    assert_eq!(lost, 1);
    lab.daemon().stop().expect("stop");

    // A clean stop: the figures are the last ones, and say so.
    let mut lab = NsLab::new(POLICY, &[API]);
    let (ok, _, err) = lab.shield(&["ban", "192.0.2.9", "--for", "10m"]);
    assert!(ok, "{err}");
    let socket = lab.socket();
    lab.daemon().stop().expect("stop");
    let stats = lab.stats();
    assert_eq!(stats["interfaces"][0]["attached"], false, "{stats}");
    let table = Command::new(shield_bin())
        .args(["stats", "--bpffs"])
        .arg(&lab.bpffs.path)
        .output()
        .expect("stats");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("NOT ATTACHED") && text.contains("bans recorded (not enforced) 1"),
        "{text}"
    );
    assert!(!text.contains("active bans"), "{text}");
    let out = Command::new(shield_bin())
        .args(["bans", "--socket"])
        .arg(&socket)
        .arg("--bpffs")
        .arg(&lab.bpffs.path)
        .output()
        .expect("bans");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("detached") && err.contains("not enforced"),
        "{err}"
    );
    // No daemon: `ping` exits 1, at once or after --wait.
    for wait in [&[][..], &["--wait", "1"][..]] {
        let (code, out, err) = ping(&socket, wait);
        assert_eq!(code, Some(1), "{wait:?}: {out}{err}");
        assert!(err.contains("not running"), "{wait:?}: {err}");
    }
}

/// `shield ping --socket SOCKET EXTRA…`: exit code, stdout, stderr.
fn ping(socket: &std::path::Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(shield_bin())
        .args(["ping", "--socket"])
        .arg(socket)
        .args(extra)
        .output()
        .expect("shield ping");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn stats_watch_into_a_closed_pipe_ends_quietly() {
    let lab = NsLab::new(POLICY, &[API]);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' stats --watch 1 --bpffs '{}' | head -2",
            shield_bin().display(),
            lab.bpffs.path.display()
        ))
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .expect("sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

/// The program id the pinned link of the lab's interface runs.
#[test]
fn detach_under_a_running_daemon_keeps_its_lock_and_its_pins_honest() {
    let mut lab = NsLab::new(POLICY, &[API]);
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    let policy = lab.policy.to_str().expect("utf-8").to_string();
    let (ok, _, err) = lab.shield(&["detach", SERVER_IF, "--bpffs", &bpffs]);
    assert!(ok, "{err}");
    // The first daemon still runs (lost): a second one is refused, not started beside it.
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("shield-d2-")));
    let (code, out, _) = second_run(
        &lab,
        &[
            "--iface",
            SERVER_IF,
            "--policy",
            &policy,
            "--bpffs",
            &bpffs,
            "--metrics",
            "off",
            "--socket",
            sock.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("another shield daemon holds"), "{out}");
    lab.daemon().stop().expect("stop");
    // Then a new daemon starts, and the old one's stop did not take its pin.
    lab.start();
    assert!(xdp_on_server(&lab));
    assert_eq!(lab.stats()["interfaces"][0]["attached"], true);

    // A link pin that is a symbolic link to another interface's link is refused.
    let other = lab.bpffs.path.join("shield").join("decoy0");
    std::fs::create_dir_all(&other).expect("decoy dir");
    std::os::unix::fs::symlink(
        lab.bpffs.path.join("shield").join(SERVER_IF).join("link"),
        other.join("link"),
    )
    .expect("symlink on bpffs");
    let (ok, _, err) = lab.shield(&["detach", "decoy0", "--bpffs", &bpffs]);
    assert!(!ok && err.contains("symbolic link"), "{err}");
    assert!(xdp_on_server(&lab), "the real interface keeps its program");
}

#[test]
fn ban_reasons_stay_with_their_ban_and_mapped_addresses_are_refused() {
    let lab = NsLab::new(POLICY, &[API]);
    for (args, needle) in [
        (
            vec!["ban", "::ffff:10.77.1.1", "--for", "1m"],
            "write it as IPv4, 10.77.1.1/32",
        ),
        (
            vec!["ban", "::ffff:0:0/96", "--for", "1m", "--force"],
            "IPv4-mapped",
        ),
        (
            vec!["ban", "192.0.2.1", "--for", "1m", "--reason", "a\nb"],
            "printable",
        ),
    ] {
        let (ok, _, err) = lab.shield(&args);
        assert!(!ok && err.contains(needle), "{args:?}: {err}");
    }
    let (ok, _, err) = lab.shield(&["ban", "192.0.2.1", "--for", "10m", "--reason", "first"]);
    assert!(ok, "{err}");
    let (ok, out, _) = lab.shield(&["ban", "192.0.2.1", "--for", "1m", "--reason", "second"]);
    assert!(ok && out.contains("kept that ban"), "{out}");
    let (ok, _, _) = lab.shield(&["ban", "192.0.2.1", "--for", "20m"]);
    assert!(ok);
    let (_, out, _) = lab.shield(&["bans", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["bans"][0]["comment"], "first", "{v}");
    assert!(
        v["bans"][0]["remaining_secs"].as_f64() > Some(1000.0),
        "extended: {v}"
    );
}

#[test]
fn a_metrics_flood_neither_stalls_the_daemon_nor_makes_it_lose_its_interface() {
    let mut lab = NsLab::new(POLICY, &[API]);
    // 300 half-sent requests held open on /metrics (the lab's daemon serves 127.0.0.1:9477
    // in the server namespace), and 60 complete scrapes at once.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let holder = lab
        .topo
        .server
        .spawn_in(move || {
            use std::io::Write as _;
            let mut held = Vec::new();
            for _ in 0..300 {
                if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:9477") {
                    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                    held.push(s);
                }
            }
            let scrapers: Vec<_> = (0..60)
                .map(|_| {
                    std::thread::spawn(|| {
                        use std::io::Read as _;
                        let mut s = std::net::TcpStream::connect("127.0.0.1:9477").ok()?;
                        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                            .ok()?;
                        let mut out = String::new();
                        let _ = s.read_to_string(&mut out);
                        Some(out.len())
                    })
                })
                .collect();
            for s in scrapers {
                let _ = s.join();
            }
            let _ = hold_rx.recv_timeout(Duration::from_secs(30));
            held.len()
        })
        .expect("server namespace");
    // Meanwhile the daemon answers, and judges nothing lost.
    for _ in 0..10 {
        let pong = shield_user::control::call::<shield_user::control::Pong>(
            &lab.socket(),
            &shield_user::control::Request::Ping {},
        );
        assert!(pong.is_ok_and(|p| p.pong), "ping during a metrics flood");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, _, err) = lab.shield(&["ban", "192.0.2.77", "--for", "1m"]);
    assert!(ok, "a ban during a metrics flood: {err}");
    drop(hold_tx);
    let _ = holder.join();
    let log = lab.daemon().log_text();
    assert!(!log.contains("no longer"), "a false `lost`: {log}");
    assert_eq!(lab.audit_events("lost").len(), 0);
}

const GUARDED: &str = r#"
[[rule]]
name = "guarded"
protocol = "tcp"
ports = [8081]
connections = { rate = "50/s", burst = 100 }
unverified = { rate = "1/h", burst = 1 }
"#;

/// A lab whose rule `guarded` is under attack: the audit log has its `attack_start`.
fn guarded_under_attack() -> NsLab {
    let lab = NsLab::new(GUARDED, &[API]);
    let attacker: IpAddr = ATTACKER_V4.into();
    // One token an hour, and nothing listens on 8081 (no handshake verifies the attacker):
    // its SYNs after its first are dropped.
    let _ = lab.connect(attacker, 8081, 5, Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab
        .audit_lines()
        .iter()
        .any(|l| l["event"] == "attack_start" && l["rule"] == "guarded")
    {
        assert!(
            Instant::now() < deadline,
            "no attack_start: {:?}",
            lab.audit_lines()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab
}

/// The `attack_end` of `guarded`, waited for up to 4 s: well within the 10 s an attack
/// takes to end by itself.
fn guarded_attack_end(lab: &NsLab) -> Value {
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        if let Some(l) = lab
            .audit_lines()
            .into_iter()
            .find(|l| l["event"] == "attack_end" && l["rule"] == "guarded")
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no attack_end for guarded: {:?}",
            lab.audit_lines()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A rule under attack (its `unverified` budget dropping) that a reload removes: the audit
/// log's `attack_start` gets its `attack_end` (`"ended": "rule removed"`). The daemon
/// forgot the attack with the rule, leaving an attack that never ended in the audit log.
#[test]
fn a_rule_removed_under_attack_ends_its_attack_in_the_audit_log() {
    let mut lab = guarded_under_attack();
    std::fs::write(&lab.policy, OTHER_POLICY).expect("policy");
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "{err}");
    let end = guarded_attack_end(&lab);
    assert_eq!(end["ended"], "rule removed", "{end}");
    assert!(end["dropped"].as_u64().is_some_and(|d| d >= 1), "{end}");
    let _ = lab.daemon().stop();
}

/// A daemon stopped, or detached behind its back, while a rule is under attack: the attack
/// ends in the audit log (`"ended": "daemon stopped"`, before the `stop` line; `"interface
/// lost"`). It used to stay open: an `attack_start` without its end.
#[test]
fn an_attack_running_when_the_daemon_stops_or_loses_its_interface_ends_in_the_audit_log() {
    let mut lab = guarded_under_attack();
    let (status, log) = lab.daemon().stop().expect("stop");
    assert!(status.success(), "{log}");
    let lines = lab.audit_lines();
    let end = lines
        .iter()
        .position(|l| l["event"] == "attack_end" && l["rule"] == "guarded")
        .unwrap_or_else(|| panic!("no attack_end at the stop: {lines:?}"));
    assert_eq!(lines[end]["ended"], "daemon stopped", "{}", lines[end]);
    assert!(
        lines[end]["dropped"].as_u64().is_some_and(|d| d >= 1),
        "{}",
        lines[end]
    );
    let stop = lines.iter().rposition(|l| l["event"] == "stop");
    assert!(
        stop.is_some_and(|s| s > end),
        "the end before `stop`: {lines:?}"
    );
    // `shield stats` (from the pins, NOT ATTACHED) agrees with the audit log: calm.
    let stats = lab.stats();
    let guarded = stats["interfaces"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["name"] == "guarded")
        .cloned()
        .unwrap_or_else(|| panic!("no rule guarded: {stats}"));
    assert_eq!(
        guarded["unverified"]["under_attack"], false,
        "the attack ended with the daemon: {guarded}"
    );

    let mut lab = guarded_under_attack();
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    let (ok, _, err) = lab.shield(&["detach", SERVER_IF, "--bpffs", &bpffs]);
    assert!(ok, "{err}");
    let end = guarded_attack_end(&lab);
    assert_eq!(end["ended"], "interface lost", "{end}");
    let (_, log) = lab.daemon().stop().expect("stop");
    let ends = lab.audit_events("attack_end").len();
    assert_eq!(ends, 1, "one end, not a second at the stop: {log}");
}

/// The rule bans `shield bans --json` lists, as (source, rule).
fn rule_bans(lab: &NsLab) -> Vec<(String, String)> {
    lab.bans()
        .iter()
        .filter(|b| b["scope"] == "rule")
        .map(|b| {
            let s = |f: &str| b[f].as_str().unwrap_or_default().to_string();
            (s("source"), s("rule"))
        })
        .collect()
}

/// With all 255 rule ids taken, a reload that replaces a rule by a new one gives the new
/// rule the removed rule's id. The removed rule's bans go with it: they were kept under the
/// id (it is in use again), and the new rule started with the old one's banned sources.
#[test]
fn a_new_rule_on_a_removed_rules_id_starts_without_its_bans() {
    let policy = |last: &str| {
        let mut p: String = (1..255)
            .map(|i| {
                format!(
                    "[[rule]]\nname = \"r{i}\"\nprotocol = \"tcp\"\nports = [{}]\nconnections = {{ rate = \"50/s\", burst = 100 }}\n",
                    10_000 + i
                )
            })
            .collect();
        p += &format!(
            "[[rule]]\nname = \"{last}\"\nprotocol = \"tcp\"\nports = [9000]\nconnections = {{ rate = \"50/s\", burst = 100 }}\n"
        );
        p
    };
    let lab = NsLab::new(&policy("gone"), &[API]);
    let (ok, _, err) = lab.shield(&["ban", "192.0.2.9", "--for", "1h", "--rule", "gone"]);
    assert!(ok, "{err}");
    assert_eq!(
        rule_bans(&lab),
        vec![("192.0.2.9/32".to_string(), "gone".to_string())]
    );
    std::fs::write(&lab.policy, policy("new")).expect("policy");
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "{err}");
    assert_eq!(
        rule_bans(&lab),
        vec![],
        "the removed rule's ban went with it, not to the rule on its id"
    );
    // Its end names the removed rule, not the new one on its id.
    let ended: Vec<Value> = lab.audit_events("ban_end");
    assert!(
        ended.len() == 1
            && ended[0]["rule"] == "gone"
            && ended[0]["source"] == "192.0.2.9/32"
            && ended[0]["ended"] == "rule removed",
        "{ended:?}"
    );
}

/// A reload that drops a removed rule's bans saves `--state-dir` as any other ban change
/// does (within a second). It did not: the file kept them until the next change, and a
/// crash or a reboot meanwhile restored them (with the rule back, a ban the reload ended).
#[test]
fn a_reload_that_drops_bans_saves_them_dropped_in_the_state_dir() {
    let two = format!(
        "{POLICY}\n[[rule]]\nname = \"gone\"\nprotocol = \"tcp\"\nports = [9000]\nconnections = {{ rate = \"50/s\", burst = 100 }}\n"
    );
    let lab = NsLab::new(&two, &[API]);
    let saved = lab.socket().with_extension("state").join("bans.json");
    let (ok, _, err) = lab.shield(&["ban", "192.0.2.9", "--for", "1h", "--rule", "gone"]);
    assert!(ok, "{err}");
    let holds = || {
        std::fs::read_to_string(&saved)
            .unwrap_or_default()
            .contains("192.0.2.9")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !holds() {
        assert!(
            Instant::now() < deadline,
            "the ban never saved in {saved:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&lab.policy, POLICY).expect("policy");
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "{err}");
    assert_eq!(rule_bans(&lab), vec![], "dropped with its rule");
    let deadline = Instant::now() + Duration::from_secs(5);
    while holds() {
        assert!(
            Instant::now() < deadline,
            "the state dir still holds the dropped ban 5 s after the reload: {:?}",
            std::fs::read_to_string(&saved)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A reload that removes a monitor rule ends its monitor bans in the audit log, the
/// rule-scope ones too (`ban_end`, `"monitor": true`): those went silently with the rule's
/// other rule bans, and their `would_ban` had no end.
#[test]
fn a_removed_monitor_rules_rule_bans_end_in_the_audit_log() {
    let watched = format!(
        "{POLICY}\n[[rule]]\nname = \"watched\"\nprotocol = \"tcp\"\nports = [8081]\nmode = \"monitor\"\nconnections = {{ rate = \"1/h\", burst = 1 }}\nescalation = {{ strikes = 1, window = \"1h\", ban = \"1h\", scope = \"rule\" }}\n"
    );
    let lab = NsLab::new(&watched, &[API]);
    let attacker: IpAddr = ATTACKER_V4.into();
    let _ = lab.connect(attacker, 8081, 3, Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(10);
    while rule_bans(&lab).is_empty() {
        assert!(Instant::now() < deadline, "no monitor ban on watched");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The audit lines say which limit monitor mode stands in for.
    wait_until("the would_ban line", Duration::from_secs(10), || {
        !lab.audit_events("would_ban").is_empty()
    });
    for event in ["limited", "would_ban"] {
        let lines = lab.audit_events(event);
        assert!(
            lines
                .first()
                .is_some_and(|l| l["reason"] == "would_drop" && l["limit"] == "conn_limit"),
            "{event}: reason would_drop, limit conn_limit: {lines:?}"
        );
    }
    std::fs::write(&lab.policy, POLICY).expect("policy");
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "{err}");
    assert_eq!(rule_bans(&lab), vec![], "dropped with its rule");
    let ended: Vec<Value> = lab.audit_events("ban_end");
    assert!(
        ended.len() == 1
            && ended[0]["rule"] == "watched"
            && ended[0]["monitor"] == true
            && ended[0]["ended"] == "rule removed",
        "one ban_end for the monitor ban: {ended:?}"
    );
}
