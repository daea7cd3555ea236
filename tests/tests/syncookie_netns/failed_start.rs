//! A start that fails after the install leaves no syncookie table and conntrack as it was.

use super::*;

/// A start that fails after the policy was installed (here: the program cannot attach in
/// native mode to the second interface, a bridge) leaves no syncookie nftables table behind
/// on any interface, and conntrack's setting as it was.
#[test]
fn a_failed_start_leaves_no_syncookie_table() {
    shield_tests::require_root();
    let topo = netlab::Topology::new().expect("building namespaces");
    let bpffs = netlab::TempBpffs::new().expect("private bpffs");
    let dir = std::env::temp_dir().join(netlab::unique("shield-failstart-"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("policy.toml");
    std::fs::write(&path, POLICY).expect("policy");
    let server = topo.server.name.clone();
    let in_server = |args: &[&str]| run_in(&server, args);
    // A bridge has no native XDP: attaching there fails after the install.
    let made = in_server(&["ip", "link", "add", "dum0", "type", "bridge"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(
        in_server(&["ip", "link", "set", "dum0", "up"])
            .status
            .success()
    );
    let before = in_server(&["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"]);
    let out = HandRun::start(
        &topo.server,
        &[
            "--iface",
            netlab::SERVER_IF,
            "--iface",
            "dum0",
            "--xdp-mode",
            "native",
            "--policy",
            path.to_str().expect("utf-8"),
            "--bpffs",
            bpffs.path.to_str().expect("utf-8"),
            "--socket",
            dir.join("ctl.sock").to_str().expect("utf-8"),
            "--metrics",
            "off",
        ],
    )
    .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the start should fail: {stderr}");
    assert!(stderr.contains("dum0"), "{stderr}");
    let tables = in_server(&["nft", "list", "tables"]);
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(
        !tables.contains("shield_syncookie"),
        "a failed start left: {tables} (daemon said: {stderr})"
    );
    let after = in_server(&["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"]);
    assert_eq!(after.stdout, before.stdout, "nf_conntrack_tcp_loose");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload that fails on the second of two interfaces (here `nft` refuses the second one's
/// syncookie table) changes nothing on the first: its maps keep the policy in force (same
/// generation) and its table stays as it was. Once `nft` takes it, the same reload goes
/// through on both.
#[test]
fn a_reload_that_fails_on_one_interface_changes_none() {
    shield_tests::require_root();
    let topo = netlab::Topology::new().expect("building namespaces");
    let bpffs = netlab::TempBpffs::new().expect("private bpffs");
    let scratch = shield_tests::TempDir::new("shield-failreload-");
    let dir = &scratch.0;
    let server = topo.server.name.clone();
    let in_server = |args: &[&str]| run_in(&server, args);
    for args in [
        &[
            "ip", "link", "add", "dum0", "type", "veth", "peer", "name", "dum1",
        ][..],
        &["ip", "link", "set", "dum0", "up"],
        &["ip", "link", "set", "dum1", "up"],
    ] {
        let out = in_server(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // An nft that refuses any script naming dum0 while `refuse` exists.
    let refuse = dir.join("refuse");
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).expect("wrapper dir");
    let path_env = shield_tests::nft_wrapper(&bin, |real| {
        format!(
            "if [ \"$1\" = -f ] && [ -e '{}' ]; then\n  script=$(cat)\n  case \"$script\" in *'\"dum0\"'*) echo 'wrapper: refused' >&2; exit 1;; esac\n  printf '%s\\n' \"$script\" | exec {real} \"$@\"\nfi\nexec {real} \"$@\"\n",
            refuse.display()
        )
    });

    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let audit = dir.join("audit.jsonl");
    let mut daemon = netlab::Daemon::start_env(
        &shield_tests::shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &[
            "--iface",
            "dum0",
            "--metrics",
            "off",
            "--audit-log",
            audit.to_str().expect("utf-8"),
        ],
        &[("PATH", &path_env)],
    )
    .expect("starting shield run on two interfaces");
    let generation = |iface: &str| {
        shield_user::stats::read_iface(&bpffs.path, iface)
            .expect("stats")
            .policy_generation
    };
    let table = |iface: &str| {
        let out = in_server(&[
            "nft",
            "-s",
            "list",
            "table",
            "inet",
            &shield_user::synproxy::table_name(iface),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let reload = || {
        let out = std::process::Command::new(shield_tests::shield_bin())
            .arg("reload")
            .arg("--socket")
            .arg(&daemon.socket)
            .output()
            .expect("shield reload");
        (out.status.success(), shield_tests::nslab::output_text(&out))
    };
    let before = (generation(netlab::SERVER_IF), generation("dum0"));
    let (first, second) = (table(netlab::SERVER_IF), table("dum0"));
    assert!(
        first.contains("8000") && second.contains("8000"),
        "{first}{second}"
    );

    // The operator edits the file: the daemon reloads it (its file watch), and the reload
    // fails on dum0. Its audit line comes once the reload is over, undone or not.
    std::fs::write(&refuse, "").expect("refuse");
    std::fs::write(&policy, POLICY.replace("[8000]", "[8000, 8001]")).expect("policy");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let lines = std::fs::read_to_string(&audit).unwrap_or_default();
        let failed = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "reload" && e["result"] == "error");
        if let Some(e) = failed {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed reload in the audit log after 60 s:\n{lines}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = failed["error"].as_str().unwrap_or_default();
    assert!(
        said.contains("dum0") && said.contains("wrapper: refused"),
        "{failed}"
    );
    assert_eq!(
        (generation(netlab::SERVER_IF), generation("dum0")),
        before,
        "a failed reload changed the policy in force: {failed}"
    );
    assert_eq!(
        table(netlab::SERVER_IF),
        first,
        "the first interface's table"
    );
    assert_eq!(table("dum0"), second, "the second interface's table");

    std::fs::remove_file(&refuse).expect("refuse");
    let (ok, said) = reload();
    assert!(ok, "{said}");
    assert_eq!(
        (generation(netlab::SERVER_IF), generation("dum0")),
        (before.0 + 1, before.1 + 1)
    );
    assert!(table(netlab::SERVER_IF).contains("8001") && table("dum0").contains("8001"));
    let (status, log) = daemon.stop().expect("stop");
    assert!(status.success(), "{log}");
}

/// Whether a TCP connection attempt from `src` to the server's closed port 9 reaches the
/// server (refused) rather than being dropped (no answer within 2 s). From the client side.
fn reaches_server(topo: &netlab::Topology, src: IpAddr) -> bool {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    topo.client
        .run_in(move || {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
            s.bind(&SockAddr::from(SocketAddr::new(src, 0)))
                .expect("bind");
            let to = SocketAddr::new(IpAddr::V4(netlab::SERVER_V4), 9);
            match s.connect_timeout(&SockAddr::from(to), Duration::from_secs(2)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => true,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => false,
                other => panic!("connecting from {src} to {to}: {other:?}"),
            }
        })
        .expect("client namespace")
}

/// A reload that changed the deny list on the first interface and was undone there (it
/// failed on the second) leaves the first interface's lists whole, and so does the next
/// reload that succeeds with the lists in force (the old list half is the one in force
/// again: nothing may empty it).
#[test]
fn an_undone_list_change_keeps_the_lists_in_force() {
    shield_tests::require_root();
    let topo = netlab::Topology::new().expect("building namespaces");
    let bpffs = netlab::TempBpffs::new().expect("private bpffs");
    let scratch = shield_tests::TempDir::new("at7-undolists-");
    let dir = &scratch.0;
    let server = topo.server.name.clone();
    let in_server = |args: &[&str]| run_in(&server, args);
    for args in [
        &[
            "ip", "link", "add", "dum0", "type", "veth", "peer", "name", "dum1",
        ][..],
        &["ip", "link", "set", "dum0", "up"],
        &["ip", "link", "set", "dum1", "up"],
    ] {
        let out = in_server(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let refuse = dir.join("refuse");
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).expect("wrapper dir");
    let path_env = shield_tests::nft_wrapper(&bin, |real| {
        format!(
            "if [ \"$1\" = -f ] && [ -e '{}' ]; then\n  script=$(cat)\n  case \"$script\" in *'\"dum0\"'*) echo 'wrapper: refused' >&2; exit 1;; esac\n  printf '%s\\n' \"$script\" | exec {real} \"$@\"\nfi\nexec {real} \"$@\"\n",
            refuse.display()
        )
    });
    let lists = |deny: &str| format!("[lists]\ndeny = [{deny}]\n{POLICY}");
    let policy = dir.join("policy.toml");
    let audit = dir.join("audit.jsonl");
    std::fs::write(&policy, lists("\"192.0.2.0/24\"")).expect("policy");
    let mut daemon = netlab::Daemon::start_env(
        &shield_tests::shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &[
            "--iface",
            "dum0",
            "--metrics",
            "off",
            "--audit-log",
            audit.to_str().expect("utf-8"),
        ],
        &[("PATH", &path_env)],
    )
    .expect("starting shield run on two interfaces");
    // The reloads come from the daemon's file watch alone (a `shield reload` beside it would
    // make two of some): the n-th reload's audit event.
    let reloaded = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let lines = std::fs::read_to_string(&audit).unwrap_or_default();
            let events: Vec<serde_json::Value> = lines
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| e["event"] == "reload")
                .collect();
            if let Some(e) = events.get(n - 1) {
                assert_eq!(events.len(), n, "one reload per write: {lines}");
                break e.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no reload {n} in the audit log after 60 s:\n{lines}\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let denied = IpAddr::V4(netlab::DENIED_V4);
    assert!(reaches_server(&topo, denied), "not in the deny list");

    // The deny list in force: swapped in by a reload (each half's lists then known).
    std::fs::write(&policy, lists("\"203.0.113.0/24\"")).expect("policy");
    let e = reloaded(1);
    assert_eq!(e["result"], "ok", "{e}");
    assert!(!reaches_server(&topo, denied), "the deny list in force");

    // A new deny list: swapped on the first interface, refused on dum0, undone.
    std::fs::write(&refuse, "").expect("refuse");
    // (Another port too: a table that does not change is not given to nft.)
    std::fs::write(
        &policy,
        lists("\"203.0.113.0/24\", \"192.0.2.0/24\"").replace("[8000]", "[8000, 8002]"),
    )
    .expect("policy");
    let e = reloaded(2);
    assert!(
        e["result"] == "error" && e["error"].as_str().unwrap_or_default().contains("refused"),
        "{e}"
    );
    assert!(!reaches_server(&topo, denied), "after the undone reload");

    // The lists in force again, another port: the lists do not swap this time.
    std::fs::remove_file(&refuse).expect("refuse");
    std::fs::write(
        &policy,
        lists("\"203.0.113.0/24\"").replace("[8000]", "[8000, 8001]"),
    )
    .expect("policy");
    let e = reloaded(3);
    assert_eq!(e["result"], "ok", "{e}");
    assert!(
        !reaches_server(&topo, denied),
        "the next reload emptied the deny list in force:\n{}",
        daemon.log_text()
    );
    // And back out of the deny list.
    std::fs::write(&policy, lists("\"192.0.2.0/24\"")).expect("policy");
    let e = reloaded(4);
    assert_eq!(e["result"], "ok", "{e}");
    assert!(reaches_server(&topo, denied), "the deny list changed");
    let (status, log) = daemon.stop().expect("stop");
    assert!(status.success(), "{log}");
}

/// Interfaces whose names differ only in characters other than letters and digits share a
/// table name (`sc.x` and `sc_x`: `shield_syncookie_sc_x`). A start on one refuses to take
/// the other's table, and `shield detach` leaves it alone.
#[test]
fn another_interfaces_table_under_the_same_name_is_left_alone() {
    shield_tests::require_root();
    let topo = netlab::Topology::new().expect("building namespaces");
    let bpffs = netlab::TempBpffs::new().expect("private bpffs");
    let scratch = shield_tests::TempDir::new("shield-tablename-");
    let server = topo.server.name.clone();
    let in_server = |args: &[&str]| run_in(&server, args);
    for args in [
        &[
            "ip", "link", "add", "sc.x", "type", "veth", "peer", "name", "sc-p",
        ][..],
        &["ip", "link", "set", "sc.x", "up"],
        &["ip", "link", "set", "sc-p", "up"],
    ] {
        let out = in_server(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let theirs = scratch.0.join("theirs.nft");
    std::fs::write(
        &theirs,
        "table inet shield_syncookie_sc_x {\n\tcomment \"shield: nf_conntrack_tcp_loose was 1\"\n\tchain syncookie_in {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname \"sc_x\" tcp dport 9999 ct state invalid drop\n\t}\n}\n",
    )
    .expect("table");
    let made = in_server(&["nft", "-f", theirs.to_str().expect("utf-8")]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let table = || {
        let out = in_server(&[
            "nft",
            "-s",
            "list",
            "table",
            "inet",
            "shield_syncookie_sc_x",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = table();
    assert!(before.contains("iifname \"sc_x\""), "{before}");

    let policy = scratch.0.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let out = HandRun::start(
        &topo.server,
        &[
            "--iface",
            "sc.x",
            "--policy",
            policy.to_str().expect("utf-8"),
            "--bpffs",
            bpffs.path.to_str().expect("utf-8"),
            "--socket",
            scratch.0.join("ctl.sock").to_str().expect("utf-8"),
            "--metrics",
            "off",
        ],
    )
    .finish(Duration::from_secs(120));
    let said = shield_tests::nslab::output_text(&out);
    assert!(!out.status.success(), "the start should be refused: {said}");
    assert!(
        said.contains("nftables table inet shield_syncookie_sc_x is interface sc_x's"),
        "{said}"
    );
    assert_eq!(table(), before, "the start changed sc_x's table: {said}");
    let detach = std::process::Command::new("ip")
        .args(["netns", "exec", &server])
        .arg(shield_tests::shield_bin())
        .args(["detach", "sc.x", "--bpffs"])
        .arg(&bpffs.path)
        .output()
        .expect("shield detach");
    assert_eq!(
        table(),
        before,
        "shield detach sc.x removed sc_x's table: {}",
        shield_tests::nslab::output_text(&detach)
    );
}

/// An `nft` that hangs listing the table during a reload (killed after NFT_PATIENCE) is
/// no word that there is no table: the reload fails and the table stays as it was, still
/// remembering conntrack's own `nf_conntrack_tcp_loose`, which the stop puts back (taken
/// for no table, the replacement remembered shield's own 0, and the stop left 0).
#[test]
fn an_nft_that_hangs_listing_fails_the_reload() {
    shield_tests::require_root();
    let topo = netlab::Topology::new().expect("building namespaces");
    let bpffs = netlab::TempBpffs::new().expect("private bpffs");
    let scratch = shield_tests::TempDir::new("at7-hanglist-");
    let dir = &scratch.0;
    let server = topo.server.name.clone();
    let in_server = |args: &[&str]| run_in(&server, args);
    let hang = dir.join("hang");
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).expect("wrapper dir");
    let path_env = shield_tests::nft_wrapper(&bin, |real| {
        format!(
            "if [ -e '{}' ]; then case \"$*\" in *list*) exec sleep 600;; esac; fi\nexec {real} \"$@\"\n",
            hang.display()
        )
    });
    let loose = || {
        let out = in_server(&["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = loose();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let audit = dir.join("audit.jsonl");
    let mut daemon = netlab::Daemon::start_env(
        &shield_tests::shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &[
            "--metrics",
            "off",
            "--audit-log",
            audit.to_str().expect("utf-8"),
        ],
        &[("PATH", &path_env)],
    )
    .expect("starting shield run");
    let table = || {
        let out = in_server(&[
            "nft",
            "list",
            "table",
            "inet",
            &shield_user::synproxy::table_name(netlab::SERVER_IF),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let remembers = format!("nf_conntrack_tcp_loose was {before}\"");
    let first = table();
    assert!(first.contains(&remembers), "{first}");
    assert_eq!(loose(), "0");

    std::fs::write(&hang, "").expect("hang");
    std::fs::write(&policy, POLICY.replace("[8000]", "[8000, 8001]")).expect("policy");
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let event = loop {
        let lines = std::fs::read_to_string(&audit).unwrap_or_default();
        let found = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "reload");
        if let Some(e) = found {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload in the audit log after 150 s:\n{lines}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::fs::remove_file(&hang).expect("hang");
    assert_eq!(event["result"], "error", "{event}");
    assert!(
        event["error"]
            .as_str()
            .unwrap_or_default()
            .contains("killed"),
        "{event}"
    );
    assert_eq!(table(), first, "the table after the failed reload");
    let (status, log) = daemon.stop().expect("stop");
    assert!(status.success(), "{log}");
    assert_eq!(loose(), before, "nf_conntrack_tcp_loose after the stop");
    assert!(!table().contains("table"), "the stop left the table");
}

/// An `nft` that leaves a process of its own session holding its output open (out of reach
/// of the kill of nft's process group) does not hold the reload for ever: it fails once
/// nft was killed, and the daemon goes on (the next reload, with a plain nft, goes through).
#[test]
fn an_nft_whose_output_stays_open_does_not_hold_the_reload() {
    shield_tests::require_root();
    let topo = netlab::Topology::new().expect("building namespaces");
    let bpffs = netlab::TempBpffs::new().expect("private bpffs");
    let scratch = shield_tests::TempDir::new("at7-heldpipe-");
    let dir = &scratch.0;
    let hang = dir.join("hang");
    let pid = dir.join("pid");
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).expect("wrapper dir");
    let path_env = shield_tests::nft_wrapper(&bin, |real| {
        format!(
            "if [ -e '{}' ]; then setsid sh -c 'echo $$ > {}; exec sleep 600' & exec sleep 600; fi\nexec {real} \"$@\"\n",
            hang.display(),
            pid.display()
        )
    });
    // The session's sleep ends with the test, whatever happens.
    struct Reap(std::path::PathBuf);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(p) = std::fs::read_to_string(&self.0)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) of the process the wrapper wrote down.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
    let _reap = Reap(pid.clone());
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let audit = dir.join("audit.jsonl");
    let mut daemon = netlab::Daemon::start_env(
        &shield_tests::shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &[
            "--metrics",
            "off",
            "--audit-log",
            audit.to_str().expect("utf-8"),
        ],
        &[("PATH", &path_env)],
    )
    .expect("starting shield run");
    let reloads = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let lines = std::fs::read_to_string(&audit).unwrap_or_default();
            let events: Vec<serde_json::Value> = lines
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| e["event"] == "reload")
                .collect();
            if let Some(e) = events.get(n - 1) {
                break e.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no reload {n} in the audit log after 90 s:\n{lines}\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    std::fs::write(&hang, "").expect("hang");
    std::fs::write(&policy, POLICY.replace("[8000]", "[8000, 8001]")).expect("policy");
    let e = reloads(1);
    std::fs::remove_file(&hang).expect("hang");
    assert_eq!(e["result"], "error", "{e}");
    assert!(
        e["error"].as_str().unwrap_or_default().contains("killed"),
        "{e}"
    );
    std::fs::write(&policy, POLICY.replace("[8000]", "[8000, 8002]")).expect("policy");
    let e = reloads(2);
    assert_eq!(e["result"], "ok", "{e}");
    let (status, log) = daemon.stop().expect("stop");
    assert!(status.success(), "{log}");
}
