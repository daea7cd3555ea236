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
