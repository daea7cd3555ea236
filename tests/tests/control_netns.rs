//! The control plane against mistakes and abuse, with the real `shield run` in network
//! namespaces: one daemon per interface, every check before any attach, bans that cannot
//! mislead, and honest states after a stop or a detach. Needs root.

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use shield_tests::netlab::{ATTACKER_V4, LEGIT_V4, SERVER_IF, unique};
use shield_tests::{nslab::NsLab, shield_bin};

const API: u16 = 8080;

const POLICY: &str = r#"
[lists]
allow = ["10.77.0.0/16"]

[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "50/s", burst = 100 }
"#;

const OTHER_POLICY: &str = r#"
[[rule]]
name = "other"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/s", burst = 1 }
"#;

/// `shield run` started by hand in the lab's server namespace (not through the lab's
/// guard): the exit status, stdout + stderr, and how long it took. Killed after 30 s.
fn second_run(lab: &NsLab, args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = lab
        .topo
        .server
        .command(&shield_bin())
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a second shield run");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        started.elapsed(),
    )
}

/// Removes a file the test made, on every exit path.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn xdp_on_server(lab: &NsLab) -> bool {
    let link = Command::new("ip")
        .args(["-n", &lab.topo.server.name, "link", "show", SERVER_IF])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&link.stdout).contains("xdp")
}

/// A policy file, removed on drop.
fn policy_file(text: &str) -> RemoveOnDrop {
    let p = std::env::temp_dir().join(format!("{}.toml", unique("shield-other-")));
    std::fs::write(&p, text).expect("writing a policy");
    RemoveOnDrop(p)
}

#[test]
fn a_second_daemon_on_a_protected_interface_is_refused_and_changes_nothing() {
    let lab = NsLab::new(POLICY, &[API]);
    let gen_before = lab.stats()["interfaces"][0]["policy_generation"].clone();
    let other = policy_file(OTHER_POLICY);
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    let socket = lab.socket();
    let other_socket = std::env::temp_dir().join(format!("{}.sock", unique("shield-2nd-")));
    let _remove = RemoveOnDrop(other_socket.clone());
    for sock in [socket.clone(), other_socket.clone()] {
        let (code, out, took) = second_run(
            &lab,
            &[
                "--iface",
                SERVER_IF,
                "--policy",
                other.0.to_str().expect("utf-8"),
                "--bpffs",
                &bpffs,
                "--socket",
                sock.to_str().expect("utf-8"),
                "--metrics",
                "off",
            ],
        );
        assert_eq!(code, Some(1), "the second daemon must fail: {out}");
        assert!(
            out.contains("another shield daemon"),
            "the error must say another daemon runs: {out}"
        );
        assert!(
            took < Duration::from_secs(10),
            "refused at once, took {took:?}"
        );
    }
    let _ = std::fs::remove_file(&other_socket);

    // The first daemon's policy is still the one in force, and it still answers.
    let stats = lab.stats();
    assert_eq!(
        stats["interfaces"][0]["policy_generation"], gen_before,
        "the second daemon must not load its policy"
    );
    let rules: Vec<&str> = stats["interfaces"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        rules.contains(&"api") && !rules.contains(&"other"),
        "{rules:?}"
    );
    assert_eq!(stats["interfaces"][0]["attached"], true);
    assert!(
        lab.bpffs
            .path
            .join("shield")
            .join(SERVER_IF)
            .join("link")
            .exists(),
        "the link pin must survive the refused start"
    );
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "the first daemon still serves its socket: {err}");
    // And the link pin is real: detach really detaches.
    let (ok, _, err) = lab.shield(&["detach", SERVER_IF, "--bpffs", &bpffs]);
    assert!(ok, "{err}");
    assert!(!xdp_on_server(&lab), "detach must leave no XDP program");
}

#[test]
fn a_start_that_fails_a_check_attaches_nothing_and_leaves_no_pins() {
    let mut lab = NsLab::new(POLICY, &[API]);
    // Stop the lab's daemon cleanly and drop its pins: a blank interface.
    lab.daemon().stop().expect("stop");
    lab_stop_and_clear(&lab);
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    let policy = lab.policy.to_str().expect("utf-8").to_string();
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("shield-chk-")));
    let sock = sock.to_str().expect("utf-8").to_string();

    // A metrics port already taken inside the namespace.
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = lab
        .topo
        .server
        .spawn_in(move || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            port_tx
                .send(l.local_addr().expect("addr").port())
                .expect("send port");
            let _ = done_rx.recv_timeout(Duration::from_secs(60));
            drop(l);
        })
        .expect("server namespace");
    let port = port_rx.recv_timeout(Duration::from_secs(10)).expect("port");
    let taken = format!("127.0.0.1:{port}");

    // A live control socket of someone else.
    let live_path = std::env::temp_dir().join(format!("{}.sock", unique("shield-live-")));
    let _listener = std::os::unix::net::UnixListener::bind(&live_path).expect("bind unix");
    let _remove = RemoveOnDrop(live_path.clone());
    let live = live_path.to_str().expect("utf-8").to_string();

    for (args, needle) in [
        (
            vec!["--metrics", taken.as_str(), "--socket", sock.as_str()],
            "metrics on",
        ),
        (
            vec!["--metrics", "off", "--socket", live.as_str()],
            "another shield daemon is listening",
        ),
        (
            vec![
                "--metrics",
                "off",
                "--socket",
                sock.as_str(),
                "--audit-log",
                "/nonexistent-dir/audit.jsonl",
            ],
            "audit log",
        ),
        (
            vec![
                "--metrics",
                "off",
                "--socket",
                sock.as_str(),
                "--xdp-mode",
                "native",
                "--iface",
                "lo",
            ],
            "attaching to lo",
        ),
    ] {
        let mut full = vec!["--iface", SERVER_IF, "--policy", &policy, "--bpffs", &bpffs];
        full.extend(args.iter().copied());
        let (code, out, _) = second_run(&lab, &full);
        assert_eq!(code, Some(1), "{args:?} must fail: {out}");
        assert!(
            out.contains(needle),
            "{args:?}: expected {needle:?} in {out}"
        );
        assert!(
            !xdp_on_server(&lab),
            "{args:?}: a failed start must leave no XDP program attached"
        );
        assert!(
            !lab.bpffs.path.join("shield").join(SERVER_IF).exists(),
            "{args:?}: a failed start must leave no pins"
        );
        assert!(
            !std::path::Path::new(&sock).exists(),
            "{args:?}: a failed start must remove its socket"
        );
    }
    drop(done_tx);
    let _ = holder.join();
    let (code, out, _) = second_run(
        &lab,
        &[
            "--iface",
            SERVER_IF,
            "--policy",
            &policy,
            "--metrics",
            "localhost:9477",
        ],
    );
    assert_eq!(code, Some(2), "a host name is refused by the parser: {out}");
    assert!(out.contains("IP:PORT"), "{out}");
}

#[test]
fn a_failed_start_over_a_crashed_run_leaves_that_run_in_force() {
    let mut lab = NsLab::new(POLICY, &[API]);
    lab.daemon().kill9().expect("kill -9");
    let before = lab.stats();
    assert_eq!(
        before["interfaces"][0]["attached"], true,
        "a crash keeps the program"
    );
    let other = policy_file(OTHER_POLICY);
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("shield-adopt-")));
    // Adopts SERVER_IF (and writes the other policy into it), then fails on lo.
    let (code, out, _) = second_run(
        &lab,
        &[
            "--iface",
            SERVER_IF,
            "--iface",
            "lo",
            "--xdp-mode",
            "native",
            "--policy",
            other.0.to_str().expect("utf-8"),
            "--bpffs",
            &bpffs,
            "--socket",
            sock.to_str().expect("utf-8"),
            "--metrics",
            "off",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("attaching to lo"), "{out}");
    let after = lab.stats();
    assert_eq!(
        after["interfaces"][0]["attached"], true,
        "the adopted link stays"
    );
    assert!(
        xdp_on_server(&lab),
        "the crashed run's program stays attached"
    );
    let names = |v: &Value| -> Vec<String> {
        v["interfaces"][0]["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(
        names(&after),
        names(&before),
        "the crashed run's policy is back in force"
    );
    // It still enforces: the legit client passes.
    let legit = lab.connect(IpAddr::V4(LEGIT_V4), API, 3, Duration::from_millis(50));
    assert_eq!(legit.failed, 0, "{legit:?}");
}

fn lab_stop_and_clear(lab: &NsLab) {
    let mut out = Command::new(shield_bin());
    out.args(["detach", SERVER_IF, "--bpffs"])
        .arg(&lab.bpffs.path);
    let r = out.output().expect("detach");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

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
    let legit = lab.connect(IpAddr::V4(LEGIT_V4), API, 2, Duration::from_millis(50));
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
    let lost = lab
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "lost")
        .count();
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
fn pinned_prog(lab: &NsLab) -> Option<u32> {
    shield_user::loader::pinned_link_facts(
        &lab.bpffs.path.join("shield").join(SERVER_IF).join("link"),
    )
    .map(|f| f.prog_id)
}

#[test]
fn a_failed_fresh_start_over_a_crashed_run_gives_everything_back() {
    let mut lab = NsLab::new(POLICY, &[API]);
    let (ok, _, err) = lab.shield(&["ban", "192.0.2.9", "--for", "10m", "--reason", "keep me"]);
    assert!(ok, "{err}");
    lab.daemon().kill9().expect("kill -9");
    let prog_before = pinned_prog(&lab).expect("a crash keeps the link");
    let other = policy_file(OTHER_POLICY);
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    let (code, out, _) = second_run(
        &lab,
        &[
            "--fresh",
            "--iface",
            SERVER_IF,
            "--iface",
            "lo",
            "--xdp-mode",
            "native",
            "--policy",
            other.0.to_str().expect("utf-8"),
            "--bpffs",
            &bpffs,
            "--metrics",
            "off",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        pinned_prog(&lab),
        Some(prog_before),
        "the crashed run's program is back in its link"
    );
    let stats = lab.stats();
    let rules: Vec<&str> = stats["interfaces"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        rules.contains(&"api") && !rules.contains(&"other"),
        "{rules:?}"
    );
    let out = Command::new(shield_bin())
        .args([
            "bans",
            "--json",
            "--socket",
            "/nonexistent/s.sock",
            "--bpffs",
            &bpffs,
        ])
        .output()
        .expect("bans");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["bans"][0]["comment"], "keep me",
        "the crashed run's bans: {v}"
    );
    let names: Vec<String> = std::fs::read_dir(lab.bpffs.path.join("shield").join(SERVER_IF))
        .expect("pin dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with(":previous")),
        "nothing left set aside: {names:?}"
    );
    let legit = lab.connect(IpAddr::V4(LEGIT_V4), API, 3, Duration::from_millis(50));
    assert_eq!(legit.failed, 0, "{legit:?}");
}

#[test]
fn run_never_replaces_or_hides_what_is_not_its_own() {
    let mut lab = NsLab::new(POLICY, &[API]);
    lab.daemon().stop().expect("stop");
    lab_stop_and_clear(&lab);
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    let policy = lab.policy.to_str().expect("utf-8").to_string();
    let dir = std::env::temp_dir().join(unique("shield-own-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let _remove = RemoveOnDrop(dir.clone());
    let precious = dir.join("precious.txt");
    std::fs::write(&precious, "data").expect("file");
    let dgram = dir.join("dgram.sock");
    let _dgram = std::os::unix::net::UnixDatagram::bind(&dgram).expect("datagram socket");
    let fifo = dir.join("audit.fifo");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let nonempty = dir.join("etc-like");
    std::fs::create_dir_all(&nonempty).expect("dir");
    std::fs::write(nonempty.join("important.conf"), "x").expect("file");
    let sock = dir.join("ok.sock");
    let s = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--socket".into(), s(&precious)], "is not a socket"),
        (
            vec!["--socket".into(), s(&dgram)],
            "not a stale shield socket",
        ),
        (vec!["--socket".into(), policy.clone()], "is not a socket"),
        (
            vec![
                "--socket".into(),
                s(&sock),
                "--audit-log".into(),
                policy.clone(),
            ],
            "the policy file",
        ),
        (
            vec!["--socket".into(), s(&sock), "--audit-log".into(), s(&fifo)],
            "not a regular file",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec![
            "--iface",
            SERVER_IF,
            "--policy",
            &policy,
            "--bpffs",
            &bpffs,
            "--metrics",
            "off",
        ];
        full.extend(args.iter().map(String::as_str));
        let (code, out, took) = second_run(&lab, &full);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(
            out.contains(needle),
            "{args:?}: expected {needle:?} in {out}"
        );
        assert!(took < Duration::from_secs(20), "{args:?} took {took:?}");
        assert!(!xdp_on_server(&lab), "{args:?}: nothing attached");
    }
    assert_eq!(
        std::fs::read_to_string(&precious).ok().as_deref(),
        Some("data")
    );
    assert!(dgram.exists(), "another program's socket survives");
    assert!(
        std::fs::read_to_string(&lab.policy)
            .is_ok_and(|p| p.contains("[[rule]]") && !p.contains("\"event\"")),
        "the policy file is untouched"
    );
    // A non-empty directory is never mounted over.
    let (code, out, _) = second_run(
        &lab,
        &[
            "--iface",
            SERVER_IF,
            "--policy",
            &policy,
            "--bpffs",
            &s(&nonempty),
            "--metrics",
            "off",
            "--socket",
            &s(&sock),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("will not mount bpffs over it"), "{out}");
    assert!(nonempty.join("important.conf").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

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
    assert_eq!(
        lab.audit_lines()
            .iter()
            .filter(|l| l["event"] == "lost")
            .count(),
        0
    );
}
