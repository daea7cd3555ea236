//! Starts that must change nothing: a second daemon, a failed check, a failed start over a crashed run, what is not shield's own.

use super::*;

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
    let legit = lab.connect_legit(IpAddr::V4(LEGIT_V4), API, 3, Duration::from_millis(50));
    assert_eq!(legit.failed, 0, "{legit:?}");
}

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
    let legit = lab.connect_legit(IpAddr::V4(LEGIT_V4), API, 3, Duration::from_millis(50));
    assert_eq!(legit.failed, 0, "{legit:?}");
}

/// `path` (absolute) written relative to this process's working directory.
fn relative_from_cwd(path: &std::path::Path) -> std::path::PathBuf {
    let cwd = std::env::current_dir().expect("cwd");
    let mut rel = std::path::PathBuf::new();
    for _ in cwd.components().skip(1) {
        rel.push("..");
    }
    rel.join(path.strip_prefix("/").expect("absolute"))
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
    // A link at the audit log's path, to a file the daemon must never append to.
    let link = dir.join("audit-link.jsonl");
    std::os::unix::fs::symlink(&precious, &link).expect("symlink");
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
            "is the policy file (--policy)",
        ),
        (
            vec!["--socket".into(), s(&sock), "--audit-log".into(), s(&sock)],
            "is the control socket (--socket)",
        ),
        (
            // The same path written relative to the working directory (the daemon's is
            // this test's): still the control socket, never created as a log first.
            vec![
                "--socket".into(),
                s(&sock),
                "--audit-log".into(),
                s(&relative_from_cwd(&sock)),
            ],
            "is the control socket (--socket)",
        ),
        (
            vec!["--socket".into(), s(&sock), "--audit-log".into(), s(&fifo)],
            "not a regular file",
        ),
        (
            vec!["--socket".into(), s(&sock), "--audit-log".into(), s(&link)],
            "a symbolic link",
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
    assert!(!sock.exists(), "nothing made at the control socket's path");
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
    // A `--bpffs` that does not exist yet is created and mounted for the start; a start that
    // fails after that (here the control socket) leaves neither the mount nor a directory.
    let fresh = dir.join("new-bpffs").join("sub");
    let new_log = dir.join("new-audit.jsonl");
    let (code, out, _) = second_run(
        &lab,
        &[
            "--iface",
            SERVER_IF,
            "--policy",
            &policy,
            "--bpffs",
            &s(&fresh),
            "--metrics",
            "off",
            "--socket",
            &s(&precious),
            "--audit-log",
            &s(&new_log),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is not a socket"), "{out}");
    assert!(
        !new_log.exists(),
        "the audit log it created is removed: {out}"
    );
    assert!(
        !dir.join("new-bpffs").exists(),
        "the directories made for the mount are removed: {out}"
    );
    assert!(!xdp_on_server(&lab), "nothing attached");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_audit_log_given_the_fleet_key_file_is_refused_and_the_key_kept() {
    // A slip of the operator: `--audit-log` names the fleet's key file. Appended to, the
    // key changes silently at the next start (the whole file is the key): this host's
    // bans are then refused by the fleet and the fleet's by it.
    let mut lab = NsLab::new(POLICY, &[API]);
    lab.daemon().stop().expect("stop");
    lab_stop_and_clear(&lab);
    let dir = RemoveOnDrop(std::env::temp_dir().join(unique("at3-fleet-")));
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let key = dir.0.join("fleet.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").expect("key");
    let policy = dir.0.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "{POLICY}\n[fleet]\nredis = \"redis://127.0.0.1:46391/0\"\nhost = \"at3\"\nkey_file = \"{}\"\n",
            key.display()
        ),
    )
    .expect("policy");
    let sock = dir.0.join("control.sock");
    let state = dir.0.join("state");
    let s = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let (bpffs, key_s) = (s(&lab.bpffs.path), s(&key));
    let (code, out, _) = second_run(
        &lab,
        &[
            "--iface",
            SERVER_IF,
            "--policy",
            &s(&policy),
            "--bpffs",
            &bpffs,
            "--socket",
            &s(&sock),
            "--state-dir",
            &s(&state),
            "--metrics",
            "off",
            "--audit-log",
            &key_s,
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&key).expect("key"),
        "0123456789abcdef0123456789abcdef\n",
        "the fleet key file was written to (exit {code:?}): {out}"
    );
    assert_eq!(code, Some(1), "the start must fail: {out}");
    assert!(out.contains("fleet key file"), "{out}");
    assert!(!xdp_on_server(&lab), "a refused start attaches nothing");
}

#[test]
fn relative_paths_are_logged_as_the_files_they_name() {
    // `--bpffs`, `--state-dir` and `--audit-log` given relative to the daemon's working
    // directory: its log names them absolute, so a reader in another directory (or a
    // later `shield stats --bpffs`) finds them.
    let mut lab = NsLab::new(POLICY, &[API]);
    lab.daemon().stop().expect("stop");
    lab_stop_and_clear(&lab);
    let dir = RemoveOnDrop(std::env::temp_dir().join(unique("shield-rel-")));
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let policy = lab.policy.to_str().expect("utf-8").to_string();
    let sock = dir.0.join("control.sock");
    let mut run = HandRun::start_with(
        &lab.topo.server,
        &[
            "--iface",
            SERVER_IF,
            "--policy",
            &policy,
            "--bpffs",
            "bpf",
            "--state-dir",
            "state",
            "--audit-log",
            "audit.jsonl",
            "--socket",
            sock.to_str().expect("utf-8"),
            "--metrics",
            "off",
        ],
        |c| {
            c.current_dir(&dir.0);
        },
    );
    let started = Instant::now();
    let up = || {
        Command::new(shield_bin())
            .args(["ping", "--socket"])
            .arg(&sock)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    while !up() && run.running() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up(), "the daemon never answered on its socket");
    run.signal(libc::SIGTERM);
    let out = output_text(&run.finish(Duration::from_secs(60)));
    // The bpffs it mounted goes with it; unmount it here too in case the stop failed.
    let bpf = dir.0.join("bpf");
    let _ = Command::new("umount").arg(&bpf).status();
    let pinned = format!("maps pinned in {}/shield/{SERVER_IF}", bpf.display());
    assert!(out.contains(&pinned), "expected {pinned:?} in {out}");
    assert!(!out.contains("pinned in bpf/"), "{out}");
    let audit = std::fs::read_to_string(dir.0.join("audit.jsonl")).expect("the audit log");
    assert!(
        !audit.is_empty(),
        "the audit log is written where it was named"
    );
}
