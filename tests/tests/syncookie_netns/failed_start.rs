//! A start that fails after the install leaves no syncookie table and conntrack as it was;
//! two daemons on interfaces whose table names collide keep out of each other's table.

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
    veth_pair(&server, "sc.x", "sc-p");
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

/// Two daemons on interfaces whose table names collide (`at8.x`, `at8_x`: both
/// `shield_syncookie_at8_x`), in either order: the one that starts second with the
/// challenge is refused, naming the first's table, and leaves that table and the first's
/// program in place; one that starts second without the challenge runs, and its stop leaves
/// them in place too. Once the first stops (its table goes), the second starts with it.
#[test]
fn two_daemons_on_interfaces_whose_tables_collide() {
    shield_tests::require_root();
    let no_challenge = POLICY.replace("challenge = \"syncookie\"\n", "");
    assert_ne!(no_challenge, POLICY);
    for (first, second) in [("at8.x", "at8_x"), ("at8_x", "at8.x")] {
        let topo = netlab::Topology::new().expect("building namespaces");
        let bpffs = netlab::TempBpffs::new().expect("private bpffs");
        let scratch = shield_tests::TempDir::new("shield-at8-collide-");
        let server = topo.server.name.clone();
        veth_pair(&server, "at8.x", "at8p1");
        veth_pair(&server, "at8_x", "at8p2");
        let (policy, plain) = (scratch.0.join("policy.toml"), scratch.0.join("plain.toml"));
        std::fs::write(&policy, POLICY).expect("policy");
        std::fs::write(&plain, &no_challenge).expect("policy");
        let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
        let run = |iface: &str, policy: &std::path::Path, n: &str| {
            let socket = path(&scratch.0.join(format!("{n}.sock")));
            let args = [
                "--iface".to_string(),
                iface.to_string(),
                "--policy".into(),
                path(policy),
                "--bpffs".into(),
                path(&bpffs.path),
                "--socket".into(),
                socket.clone(),
                "--state-dir".into(),
                path(&scratch.0.join(format!("{n}.state"))),
                "--metrics".into(),
                "off".into(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            (HandRun::start(&topo.server, &args), socket)
        };
        let ready = |socket: &str| {
            let out = std::process::Command::new(shield_tests::shield_bin())
                .args(["ping", "--wait", "30", "--socket", socket])
                .output()
                .expect("shield ping");
            assert!(
                out.status.success(),
                "{}",
                shield_tests::nslab::output_text(&out)
            );
        };
        let table = || {
            let out = run_in(
                &server,
                &[
                    "nft",
                    "-s",
                    "list",
                    "table",
                    "inet",
                    "shield_syncookie_at8_x",
                ],
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let attached = |iface: &str| shield_user::loader::is_attached(&bpffs.path, iface);
        let stop = |mut d: HandRun, what: &str| {
            d.signal(libc::SIGTERM);
            let out = d.finish(Duration::from_secs(30));
            assert!(
                out.status.success(),
                "{what}: {}",
                shield_tests::nslab::output_text(&out)
            );
        };

        let (a, a_socket) = run(first, &policy, "a");
        ready(&a_socket);
        let theirs = table();
        assert!(theirs.contains(&format!("iifname \"{first}\"")), "{theirs}");
        assert!(attached(first));

        // Second with the challenge: refused, the first's table and program untouched.
        let (b, _) = run(second, &policy, "b");
        let out = b.finish(Duration::from_secs(120));
        let said = shield_tests::nslab::output_text(&out);
        assert!(!out.status.success(), "{second} should be refused: {said}");
        assert!(
            said.contains(&format!(
                "nftables table inet shield_syncookie_at8_x is interface {first}'s"
            )),
            "{said}"
        );
        assert_eq!(
            table(),
            theirs,
            "{second}'s refused start changed the table"
        );
        assert!(attached(first), "{second}'s refused start detached {first}");

        // Second without the challenge: runs; its stop leaves the first's table and program.
        let (c, c_socket) = run(second, &plain, "c");
        ready(&c_socket);
        assert!(attached(second));
        stop(c, second);
        assert_eq!(table(), theirs, "{second}'s stop changed the table");
        assert!(attached(first), "{second}'s stop detached {first}");

        // The first stops: its table goes, and the second starts with the challenge.
        stop(a, first);
        assert!(table().is_empty(), "{first}'s stop left {}", table());
        let (d, d_socket) = run(second, &policy, "d");
        ready(&d_socket);
        assert!(
            table().contains(&format!("iifname \"{second}\"")),
            "{}",
            table()
        );
        stop(d, second);
        assert!(table().is_empty(), "{second}'s stop left {}", table());
    }
}

/// A veth pair `a`, `b` in the namespace `ns`, both up (removed with the namespace).
pub(super) fn veth_pair(ns: &str, a: &str, b: &str) {
    for args in [
        &["ip", "link", "add", a, "type", "veth", "peer", "name", b][..],
        &["ip", "link", "set", a, "up"],
        &["ip", "link", "set", b, "up"],
    ] {
        let out = run_in(ns, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
