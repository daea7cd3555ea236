//! Stops during the start: a SIGTERM or Ctrl-C while `shield run` is still starting undoes
//! the start and leaves what was in force (nothing, or a crashed run's program, table and
//! bans) as it was.

use super::*;

/// A tcp rule answering with SYN cookies over its budget.
const COOKIE: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "50/s", burst = 100 }
unverified = { rate = "1/h", burst = 1 }
challenge = "syncookie"
"#;

/// `shield run` on `policy` started by hand (`HandRun::start_with`, `setup` applied) in the
/// lab's server namespace on the lab's bpffs, with a control socket of its own: the run, that
/// socket's path, and its guard.
fn start_by_hand(
    lab: &NsLab,
    policy: &std::path::Path,
    setup: impl FnOnce(&mut Command),
) -> (HandRun, std::path::PathBuf, RemoveOnDrop) {
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("at4-stop-")));
    let run = HandRun::start_with(
        &lab.topo.server,
        &[
            "--iface",
            SERVER_IF,
            "--bpffs",
            &bpffs,
            "--metrics",
            "off",
            "--policy",
            policy.to_str().expect("utf-8"),
            "--socket",
            sock.to_str().expect("utf-8"),
        ],
        setup,
    );
    (run, sock.clone(), RemoveOnDrop(sock))
}

/// `policy` (300,000 deny prefixes added before it, so that the start takes seconds) with
/// `shield run` started by hand in the lab's server namespace on the lab's bpffs, and `sig`
/// sent once its control socket is bound: the exit status, stdout + stderr, and whether the
/// control socket was left.
fn stopped_during_the_start(lab: &NsLab, policy: &str, sig: i32) -> (Option<i32>, String, bool) {
    let deny: Vec<String> = (0u32..300_000)
        .map(|i| format!("\"{}.{}.{}.0/24\"", 11 + (i >> 16), (i >> 8) & 255, i & 255))
        .collect();
    let big = policy_file(&format!("[lists]\ndeny = [{}]\n{policy}", deny.join(",")));
    let (mut run, sock, _remove) = start_by_hand(lab, &big.0, |_| {});
    // The socket is bound before the program is loaded and the maps filled.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() && run.running() {
        assert!(Instant::now() < deadline, "no socket after 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    run.signal(sig);
    let out = run.finish(Duration::from_secs(60));
    (out.status.code(), output_text(&out), sock.exists())
}

/// A Ctrl-C or SIGTERM while `shield run` is still starting (here loading 300,000 deny
/// prefixes, after its sockets are bound) used to kill it by the signal's default action:
/// no log line, no undo, its control socket left behind (and, in the moment between
/// attaching and the run loop, a program attached with nobody to detach it). The signals
/// are taken over before anything changes: the start is undone before attaching, and the
/// daemon exits 0 on its own, leaving nothing.
#[test]
fn a_stop_during_the_start_undoes_it_and_leaves_nothing() {
    let mut lab = NsLab::new(POLICY, &[API]);
    lab.daemon().stop().expect("stop");
    lab_stop_and_clear(&lab);
    let policy = POLICY.replace("[lists]\nallow = [\"10.77.0.0/16\"]\n", "");
    for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let (code, text, sock_left) = stopped_during_the_start(&lab, &policy, sig);
        assert_eq!(
            code,
            Some(0),
            "{name} during the start: a clean exit, not death by the signal: {text}"
        );
        assert!(
            text.contains(&format!("{name} during the start")),
            "{name}: says what happened: {text}"
        );
        assert!(!sock_left, "{name}: the control socket is removed");
        assert!(!xdp_on_server(&lab), "{name}: nothing attached");
        assert!(
            !lab.bpffs.path.join("shield").join(SERVER_IF).exists(),
            "{name}: no pins left"
        );
    }
}

/// A stop during a start over the pins of a crashed run (`kill -9`: its program still
/// protects the interface through the pinned link, with its syncookie nftables table)
/// undoes the start without taking that protection apart: the undo removed the table the
/// start had just put in place (the one the crashed run's program needs: without SYNPROXY
/// the ACKs of its cookies meet no listener's handshake), leaving the program answering
/// cookies that no connection could complete.
#[test]
fn a_stop_during_a_start_over_a_crashed_run_keeps_its_syncookie_table() {
    let mut lab = NsLab::new(COOKIE, &[API]);
    let ns = lab.topo.server.name.clone();
    let table = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(["nft", "-s", "-t", "list", "table", "inet"])
            .arg(format!(
                "shield_syncookie_{}",
                SERVER_IF.replace(['-', '.'], "_")
            ))
            .output()
            .expect("nft list table");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let crashed = table();
    assert!(
        crashed.contains("dport 8080"),
        "the lab's daemon set its table up: {crashed}"
    );
    lab.daemon().kill9().expect("kill -9");
    // The start that is stopped protects one more port: its table differs.
    let other = COOKIE.replace("ports = [8080]", "ports = [8080, 9090]");
    let (code, text, sock_left) = stopped_during_the_start(&lab, &other, libc::SIGTERM);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("SIGTERM during the start"), "{text}");
    assert!(!sock_left, "the control socket is removed");
    assert!(
        xdp_on_server(&lab),
        "the crashed run's program still attached"
    );
    assert_eq!(
        table(),
        crashed,
        "the crashed run's syncookie table is kept as it was (daemon said: {text})"
    );
}

/// The bans of a crashed run whose restart is undone stay with the policy that is back in
/// force. The start over its pins installs a policy that enforces the monitored rule
/// `watched` and drops the rule `gone`: the install used to remove `watched`'s monitor bans
/// and `gone`'s rule bans at once, so the undo gave the maps back their policy without
/// them (and the audit log already said the monitor ban ended). They go once a start
/// attaches, each with its `ban_end` (`"ended": "rule enforced"`, `"rule removed"`).
#[test]
fn a_start_undone_over_a_crashed_run_keeps_its_bans() {
    const WATCHED: &str = r#"
[[rule]]
name = "watched"
protocol = "tcp"
ports = [8080]
mode = "monitor"
connections = { rate = "1/h", burst = 1 }
escalation = { strikes = 1, window = "1h", ban = "1h" }

[[rule]]
name = "gone"
protocol = "tcp"
ports = [9090]
connections = { rate = "50/s", burst = 100 }
"#;
    let mut lab = NsLab::new(WATCHED, &[API]);
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    // Bans read from the pins, daemon or not: (rule, monitor) of each.
    let bans = || {
        let out = Command::new(shield_bin())
            .args(["bans", "--json", "--bpffs", &bpffs])
            .output()
            .expect("shield bans");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
        });
        let mut b: Vec<(String, bool)> = v["bans"]
            .as_array()
            .expect("bans")
            .iter()
            .map(|b| {
                let rule = b["rule"].as_str().unwrap_or_default().to_string();
                (rule, b["monitor"].as_bool().unwrap_or(false))
            })
            .collect();
        b.sort();
        b
    };
    let attacker: IpAddr = ATTACKER_V4.into();
    let _ = lab.connect(attacker, API, 3, Duration::from_millis(50));
    let (ok, _, err) = lab.shield(&["ban", "192.0.2.50", "--for", "1h", "--rule", "gone"]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let crashed = loop {
        let b = bans();
        if b.len() == 2 {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "a monitor ban and a rule ban: {b:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        crashed,
        [("gone".to_string(), false), ("watched".to_string(), true)]
    );
    lab.daemon().kill9().expect("kill -9");

    let next = r#"
[[rule]]
name = "watched"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/h", burst = 1 }
escalation = { strikes = 1, window = "1h", ban = "1h" }
"#;
    let (code, text, _) = stopped_during_the_start(&lab, next, libc::SIGTERM);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("SIGTERM during the start"), "{text}");
    assert_eq!(bans(), crashed, "the undone start kept the bans ({text})");
    assert!(
        !lab.audit_lines().iter().any(|l| l["event"] == "ban_end"),
        "no ban ended: {:?}",
        lab.audit_lines()
    );

    // A start that attaches: the policy is in force, the stale bans go.
    std::fs::write(&lab.policy, next).expect("policy");
    lab.start();
    assert_eq!(bans(), [], "the bans the policy left stale are gone");
    // Each with its `ban_end`: the monitor ban's rule is enforced, the rule ban's removed.
    let mut ended: Vec<(String, bool, String)> = lab
        .audit_events("ban_end")
        .into_iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (s("rule"), l["monitor"] == true, s("ended"))
        })
        .collect();
    ended.sort();
    assert_eq!(
        ended,
        [
            ("gone".into(), false, "rule removed".into()),
            ("watched".into(), true, "rule enforced".into())
        ]
    );
    lab.daemon().stop().expect("stop");
}

/// A terminal's Ctrl-C reaches every process of the foreground group: with `nft` run as
/// shield's child in that group, it killed `nft` half-way through the start (here while
/// it puts the syncookie table in place), and the start failed with an `nft` error instead
/// of stopping cleanly. `nft` now runs in a group of its own: the start finishes what it
/// changes, then stops as for any stop during the start. The `nft` here is a wrapper that
/// marks the moment and waits 2 s before running the real one.
#[test]
fn a_ctrl_c_to_the_terminals_group_during_the_start_stops_it_cleanly() {
    let (lab, dir, path) = cleared_lab_with_nft(|real, dir| {
        format!(
            "if [ \"$1\" = -f ]; then touch '{}'; sleep 2; fi\nexec {real} \"$@\"\n",
            dir.join("applying").display()
        )
    });
    let marker = dir.0.join("applying");
    let policy = policy_file(COOKIE);
    let (mut run, sock, _remove) = start_by_hand(&lab, &policy.0, |c| {
        std::os::unix::process::CommandExt::process_group(c.env("PATH", path), 0);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() && run.running() {
        assert!(Instant::now() < deadline, "nft -f never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    run.signal_group(libc::SIGINT);
    let out = run.finish(Duration::from_secs(60));
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "a clean stop: {text}");
    assert!(text.contains("SIGINT during the start"), "{text}");
    assert!(!sock.exists(), "the control socket is removed");
    assert!(!xdp_on_server(&lab), "nothing attached");
    let tables = nft_tables(&lab);
    assert!(
        !tables.contains("shield_syncookie"),
        "no table left: {tables}"
    );
}

/// An `nft` that never ends (one waiting on a netlink lock another program holds, say) held
/// the start for ever, out of reach of a terminal's Ctrl-C. shield now kills it after
/// `NFT_PATIENCE` (30 s): the start fails with a message that says so and undoes itself.
#[test]
fn an_nft_that_never_ends_is_killed_and_the_start_undone() {
    let (lab, dir, path) = cleared_lab_with_nft(|real, dir| {
        format!(
            "if [ \"$1\" = -f ]; then echo $$ > '{}'; exec sleep 3600; fi\nexec {real} \"$@\"\n",
            dir.join("pid").display()
        )
    });
    let pid_file = dir.0.join("pid");
    let policy = policy_file(COOKIE);
    let (run, sock, _remove) = start_by_hand(&lab, &policy.0, |c| {
        c.env("PATH", path);
    });
    let out = run.finish(shield_user::synproxy::NFT_PATIENCE + Duration::from_secs(60));
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "the start fails: {text}");
    assert!(
        text.contains("did not finish within 30 s: killed"),
        "{text}"
    );
    let pid = std::fs::read_to_string(&pid_file).expect("the wrapper ran");
    assert!(
        !std::path::Path::new("/proc").join(pid.trim()).exists(),
        "the hung nft (pid {}) is still there",
        pid.trim()
    );
    assert!(!sock.exists(), "the control socket is removed");
    assert!(!xdp_on_server(&lab), "nothing attached");
    let tables = nft_tables(&lab);
    assert!(
        !tables.contains("shield_syncookie"),
        "no table left: {tables}"
    );
}

/// The lab with its daemon stopped and its pins cleared, and an `nft` wrapper whose body is
/// `script(real nft, dir)` in a directory of the test's own: the lab, the directory, and the
/// PATH that puts the wrapper first.
fn cleared_lab_with_nft(
    script: impl FnOnce(&str, &std::path::Path) -> String,
) -> (NsLab, shield_tests::TempDir, String) {
    let mut lab = NsLab::new(POLICY, &[API]);
    lab.daemon().stop().expect("stop");
    lab_stop_and_clear(&lab);
    let dir = shield_tests::TempDir::new("nft-wrapper-");
    let path = shield_tests::nft_wrapper(&dir.0, |real| script(real, &dir.0));
    (lab, dir, path)
}

/// `nft list tables` in the lab's server namespace (the real nft).
fn nft_tables(lab: &NsLab) -> String {
    let out = lab
        .topo
        .server
        .command(std::path::Path::new("nft"))
        .args(["list", "tables"])
        .output()
        .expect("nft list tables");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
