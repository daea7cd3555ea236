//! The daemon's nftables table taken away under it while it runs (`nft flush ruleset`, as
//! `systemctl restart nftables` does, or a `delete table`): the daemon puts it back, with
//! the `nf_conntrack_tcp_loose` value from before it started, and clients over the budget
//! still complete their connections through the cookie path.

use super::*;

/// Whether the server namespace has `name`'s table.
fn has_table(lab: &NsLab) -> bool {
    run_in(
        &lab.topo.server.name,
        &["nft", "list", "table", "inet", "shield_syncookie_shield0"],
    )
    .status
    .success()
}

/// Waits (20 s at most) for the daemon to put its table back.
fn table_comes_back(lab: &NsLab, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !has_table(lab) {
        assert!(
            std::time::Instant::now() < deadline,
            "after {what}, the daemon's syncookie table never came back: cookie ACKs over the budget reach no SYNPROXY"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `nf_conntrack_tcp_loose` in namespace `ns`.
fn loose_in(ns: &str) -> String {
    let out = run_in(
        ns,
        &["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn over_budget_clients_connect(lab: &NsLab, first: u32) {
    for i in first..first + 5 {
        lab.topo.add_client_addr(client(i)).expect("client address");
    }
    let dst = SocketAddr::new(IpAddr::V4(SERVER_V4), 8000);
    let codes: Vec<Option<u16>> = lab
        .topo
        .client
        .run_in(move || {
            (first..first + 5)
                .map(|i| http_get(client(i), dst, "/api/items", Duration::from_secs(3)))
                .collect()
        })
        .expect("client namespace");
    assert!(codes.iter().all(|c| *c == Some(200)), "{codes:?}");
}

#[test]
fn a_flushed_ruleset_gets_the_syncookie_table_back() {
    let mut lab = NsLab::new(POLICY, &[]);
    let _api = Gunicorn::start(&lab.topo.server, 8000).expect("starting the demo API");
    let _pass = lab.pass_program_on_client();
    let server = lab.topo.server.name.clone();
    let loose = || loose_in(&server);
    assert!(has_table(&lab), "no table at start");
    assert_eq!(loose(), "0");
    // The budget's one token goes to the first client; the others are answered with cookies.
    over_budget_clients_connect(&lab, 0);
    // What `systemctl restart nftables` does first.
    let out = run_in(&server, &["nft", "flush", "ruleset"]);
    assert!(
        out.status.success(),
        "{}",
        shield_tests::nslab::output_text(&out)
    );
    table_comes_back(&lab, "nft flush ruleset");
    over_budget_clients_connect(&lab, 10);
    // An operator deleting the table by hand: the same.
    let out = run_in(
        &server,
        &["nft", "delete", "table", "inet", "shield_syncookie_shield0"],
    );
    assert!(
        out.status.success(),
        "{}",
        shield_tests::nslab::output_text(&out)
    );
    table_comes_back(&lab, "nft delete table");
    // A reload after a flush remembers the setting from before the daemon, not its own 0.
    let out = run_in(&server, &["nft", "flush", "ruleset"]);
    assert!(
        out.status.success(),
        "{}",
        shield_tests::nslab::output_text(&out)
    );
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "reload: {err}");
    table_comes_back(&lab, "a flush and a reload");
    over_budget_clients_connect(&lab, 20);
    // A stop removes it and puts conntrack's setting back as it was before the daemon.
    lab.daemon().stop().expect("stopping the daemon");
    assert!(!has_table(&lab), "the table outlived the daemon");
    assert_eq!(loose(), "1", "nf_conntrack_tcp_loose after the stop");
}

/// One daemon on two interfaces (the lab's and `dum0`) with the challenge, its `nft` the
/// real one.
fn two_interfaces() -> super::reloads::WrappedLab {
    super::reloads::WrappedLab::start(POLICY, true, |real, _| format!("exec {real} \"$@\"\n"))
}

/// One daemon on two interfaces with the challenge (two tables): its stop puts
/// `nf_conntrack_tcp_loose` back as it was before, whichever table goes last (the second
/// table used to remember the first's 0, and the stop left 0).
#[test]
fn two_tables_put_back_the_conntrack_setting_from_before() {
    let mut lab = two_interfaces();
    let server = lab.topo.server.name.clone();
    let loose = || loose_in(&server);
    assert_eq!(loose(), "0");
    lab.stop();
    assert_eq!(loose(), "1", "nf_conntrack_tcp_loose after the stop");
}

/// One daemon on two interfaces with the challenge; one interface goes (deleted here; `shield
/// detach` and a rename are the same loss): its table goes with it within a second or so,
/// not at the daemon's stop, and the other interface's table stays (a look for flushed
/// tables never puts a lost interface's back).
#[test]
fn a_lost_interface_takes_its_syncookie_table_with_it() {
    let mut lab = two_interfaces();
    let server = lab.topo.server.name.clone();
    let has = |name: &str| {
        run_in(&server, &["nft", "list", "table", "inet", name])
            .status
            .success()
    };
    assert!(has("shield_syncookie_dum0") && has("shield_syncookie_shield0"));
    let out = run_in(&server, &["ip", "link", "del", "dum0"]);
    assert!(
        out.status.success(),
        "{}",
        shield_tests::nslab::output_text(&out)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while has("shield_syncookie_dum0") {
        assert!(
            std::time::Instant::now() < deadline,
            "the lost interface's syncookie table is still in place"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A few of the daemon's looks for flushed tables later: still gone, the other kept.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!has("shield_syncookie_dum0"), "put back after the loss");
    assert!(
        has("shield_syncookie_shield0"),
        "the other interface's table"
    );
    lab.stop();
    assert!(!has("shield_syncookie_shield0"), "after the stop");
}

/// A daemon whose nft wrapper fails the put-back of a flushed table once the flag file
/// `no-put-back` exists (holding open the moment between a flush and the daemon's
/// once-a-second look), with its table flushed; and `nf_conntrack_tcp_loose`'s reader.
fn flushed_and_held() -> (super::reloads::WrappedLab, impl Fn() -> String) {
    let lab = super::reloads::WrappedLab::start(POLICY, false, |real, dir| {
        let flag = dir.join("no-put-back");
        format!(
            "if [ -e {} ] && [ \"$1\" = -f ]; then echo held >&2; exit 1; fi\nexec {real} \"$@\"\n",
            flag.display()
        )
    });
    let server = lab.topo.server.name.clone();
    let loose = move || loose_in(&server);
    assert_eq!(loose(), "0");
    std::fs::write(lab.file("no-put-back"), "").expect("flag");
    let out = run_in(&lab.topo.server.name, &["nft", "flush", "ruleset"]);
    assert!(
        out.status.success(),
        "{}",
        shield_tests::nslab::output_text(&out)
    );
    (lab, loose)
}

/// The daemon stops after its table was flushed and before its once-a-second look put it
/// back: conntrack's setting goes back to what it was before the daemon all the same (it
/// stayed at 0).
#[test]
fn a_stop_right_after_a_flush_puts_the_conntrack_setting_back() {
    let (mut lab, loose) = flushed_and_held();
    lab.stop();
    assert_eq!(loose(), "1", "nf_conntrack_tcp_loose after the stop");
}

/// The same for a reload that drops the challenge right after a flush.
#[test]
fn a_reload_without_the_challenge_right_after_a_flush_puts_the_conntrack_setting_back() {
    let (mut lab, loose) = flushed_and_held();
    lab.write_policy(&POLICY.replace("challenge = \"syncookie\"\n", ""));
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "reload: {err}");
    assert_eq!(loose(), "1", "nf_conntrack_tcp_loose after the reload");
    lab.stop();
    assert_eq!(loose(), "1", "nf_conntrack_tcp_loose after the stop");
}

/// An operator sets `nf_conntrack_tcp_loose` back to 1 by hand while the daemon runs (a
/// `sysctl -w`, or a `sysctl --system` that loads it): conntrack then takes every cookie
/// ACK for a connection under way, the ACK never reaches SYNPROXY and no client over the
/// budget connects (5 of 5 failed, with nothing logged). The daemon's once-a-second look
/// sets it back to 0 and says so; clients over the budget connect again, and the stop still
/// puts back the value from before the daemon.
#[test]
fn conntrack_loose_set_back_by_hand_is_undone_with_a_warning() {
    let mut lab = NsLab::new(POLICY, &[]);
    let _api = Gunicorn::start(&lab.topo.server, 8000).expect("starting the demo API");
    let _pass = lab.pass_program_on_client();
    let server = lab.topo.server.name.clone();
    assert_eq!(loose_in(&server), "0");
    over_budget_clients_connect(&lab, 0);
    let out = run_in(
        &server,
        &["sysctl", "-w", "net.netfilter.nf_conntrack_tcp_loose=1"],
    );
    assert!(
        out.status.success(),
        "{}",
        shield_tests::nslab::output_text(&out)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while loose_in(&server) != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "nf_conntrack_tcp_loose set to 1 by hand stayed 1 under the daemon: cookie ACKs over the budget reach no SYNPROXY\n{}",
            lab.daemon().log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    over_budget_clients_connect(&lab, 10);
    let log = lab.daemon().log_text();
    assert!(
        log.contains("nf_conntrack_tcp_loose was 1") && log.contains("set back to 0"),
        "no warning in the daemon's log:\n{log}"
    );
    lab.daemon().stop().expect("stopping the daemon");
    assert_eq!(
        loose_in(&server),
        "1",
        "nf_conntrack_tcp_loose after the stop"
    );
}

/// An operator's firewall with the common `ct state invalid drop` at `input` (priority
/// `filter`), loaded after the daemon's table (a `systemctl reload nftables`, a firewall
/// started later): a cookie ACK is `ct state invalid` until SYNPROXY takes it, and of two
/// chains at one priority the one registered last runs first, so that firewall dropped every
/// cookie ACK and no client over the budget connected (5 of 5 failed, nothing logged). The
/// daemon's chain runs at `filter - 10`, before any chain at `filter`.
#[test]
fn an_operators_invalid_drop_at_filter_priority_leaves_cookie_acks_to_synproxy() {
    let lab = NsLab::new(POLICY, &[]);
    let _api = Gunicorn::start(&lab.topo.server, 8000).expect("starting the demo API");
    let _pass = lab.pass_program_on_client();
    let server = lab.topo.server.name.clone();
    let firewall = "table inet operator_fw {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tct state invalid drop\n\t}\n}\n";
    let out = run_in(
        &server,
        &["sh", "-c", &format!("printf '{firewall}' | nft -f -")],
    );
    assert!(
        out.status.success(),
        "{}",
        shield_tests::nslab::output_text(&out)
    );
    over_budget_clients_connect(&lab, 0);
}
