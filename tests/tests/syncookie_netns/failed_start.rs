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
