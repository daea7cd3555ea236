//! The cookie path end to end, IPv4 and IPv6: new clients over the budget complete their
//! connections to the API through the XDP cookie and SYNPROXY, with the same TCP options as
//! under the budget; the daemon's nftables table and conntrack setting, put back at a stop.

use super::*;

/// Without a flood, a budget of one: every new client after the first is answered by the
/// XDP cookie path, and SYNPROXY completes its connection to the API.
#[test]
fn the_cookie_path_completes_connections_to_the_api() {
    let mut lab = NsLab::new(POLICY, &[]);
    let _api = Gunicorn::start(&lab.topo.server, 8000).expect("starting the demo API");
    // The host side the daemon set up: its nftables table and conntrack's strict mode.
    let server = lab.topo.server.name.clone();
    let in_server = |args: &[&str]| run_in(&server, args);
    let table = in_server(&["nft", "list", "table", "inet", "shield_syncookie_shield0"]);
    let text = String::from_utf8_lossy(&table.stdout);
    // Timestamps (and with them window scaling and SACK) only where SYNPROXY can use them.
    let statement_ok = if shield_user::synproxy::timestamps_work() {
        text.contains("synproxy mss 1460 wscale 7 timestamp sack-perm")
    } else {
        text.contains("synproxy mss 1460") && !text.contains("timestamp")
    };
    assert!(
        table.status.success() && statement_ok,
        "the daemon's nftables table: {text} {}",
        String::from_utf8_lossy(&table.stderr)
    );
    let loose = in_server(&["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"]);
    assert_eq!(String::from_utf8_lossy(&loose.stdout).trim(), "0");
    for i in 0..20 {
        lab.topo.add_client_addr(client(i)).expect("client address");
    }
    let _pass = lab.pass_program_on_client();
    let dst = SocketAddr::new(IpAddr::V4(SERVER_V4), 8000);
    let codes: Vec<Option<u16>> = lab
        .topo
        .client
        .run_in(move || {
            (0..20)
                .map(|i| http_get(client(i), dst, "/api/items", Duration::from_secs(3)))
                .collect()
        })
        .expect("client namespace");
    let api = api_rule(&lab);
    eprintln!("{codes:?}");
    assert!(codes.iter().all(|c| *c == Some(200)), "{codes:?}");
    // Answering over the budget with cookies is an attack on it as much as dropping: the
    // daemon's once-a-second tracking reports it (stats, audit), waited for, not slept on.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rule = api_rule(&lab);
        if rule["unverified"]["under_attack"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "19 cookie answers over the budget never put the rule under attack: {rule}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        lab.audit_lines()
            .iter()
            .any(|l| l["event"] == "attack_start" && l["rule"] == "api"),
        "no attack_start in the audit log"
    );
    // A clean stop removes the table and puts conntrack's setting back.
    lab.daemon().stop().expect("stopping the daemon");
    let table = in_server(&["nft", "list", "table", "inet", "shield_syncookie_shield0"]);
    assert!(!table.status.success(), "the table outlived the daemon");
    let loose = in_server(&["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"]);
    assert_eq!(String::from_utf8_lossy(&loose.stdout).trim(), "1");
    assert!(
        api["counters"]["syncookie"]["packets"].as_u64() >= Some(19),
        "{api}"
    );
    // `shield stats` says so on the budget's line, not only in the counters.
    assert_eq!(
        api["unverified"]["answered"], api["counters"]["syncookie"]["packets"],
        "{api}"
    );
}

/// IPv6 end to end: new clients over the budget get the XDP cookie SYN-ACK (the policy's
/// MSS less 20), SYNPROXY's IPv6 statement completes their connections to the API.
#[test]
fn ipv6_clients_complete_their_connections_through_the_cookie_path() {
    let lab = NsLab::new(POLICY, &[]);
    let _api = Gunicorn::start(&lab.topo.server, 8000).expect("starting the demo API");
    for i in 0..10 {
        lab.topo
            .add_client_addr(client6(i))
            .expect("client address");
    }
    let _pass = lab.pass_program_on_client();
    let dst = SocketAddr::new(IpAddr::V6(netlab::SERVER_V6), 8000);
    let codes: Vec<Option<u16>> = lab
        .topo
        .client
        .run_in(move || {
            (0..10)
                .map(|i| http_get(client6(i), dst, "/api/items", Duration::from_secs(3)))
                .collect()
        })
        .expect("client namespace");
    assert!(codes.iter().all(|c| *c == Some(200)), "{codes:?}");
    let api = api_rule(&lab);
    // One client took the budget's token; the nine others came through a cookie.
    assert!(
        api["counters"]["syncookie"]["packets"].as_u64() >= Some(9),
        "{api}"
    );
}

/// The TCP options a connection from `src` to `dst` negotiated, from the client's side
/// (`TCP_INFO`'s `tcpi_options`: 1 timestamps, 2 SACK, 4 window scaling), with the
/// client's window scale (`tcpi_snd_wscale`). Runs in the calling thread's namespace.
fn negotiated(src: IpAddr, dst: SocketAddr) -> (u8, u8) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    s.bind(&SockAddr::from(SocketAddr::new(src, 0)))
        .expect("bind");
    s.connect_timeout(&SockAddr::from(dst), Duration::from_secs(3))
        .expect("the connection completes");
    let info = shield_tests::traffic::tcp_info(&s)
        .unwrap_or_else(|| panic!("TCP_INFO: {}", std::io::Error::last_os_error()));
    (info.tcpi_options, info.tcpi_snd_rcv_wscale & 0xf)
}

/// Every connection to a syncookie rule's ports goes through SYNPROXY (SYNs are `notrack`),
/// the ones under the budget too: where the kernel's SYNPROXY cannot use timestamps
/// (`synproxy::timestamps_work`), a connection has no timestamps, SACK or window scaling,
/// whether its SYN was under the budget (SYNPROXY's cookie) or over it (the XDP cookie);
/// elsewhere it has all three either way. The XDP SYN-ACK and the `synproxy` statement
/// agree: a client never gets window scaling from one and not the other.
#[test]
fn connections_get_the_same_options_under_and_over_the_budget() {
    let lab = NsLab::new(POLICY, &[8000]);
    lab.topo.add_client_addr(client(0)).expect("client address");
    lab.topo.add_client_addr(client(1)).expect("client address");
    let _pass = lab.pass_program_on_client();
    let dst = SocketAddr::new(IpAddr::V4(SERVER_V4), 8000);
    let under = lab
        .topo
        .client
        .run_in(move || negotiated(client(0), dst))
        .expect("client namespace");
    let cookies = |lab: &NsLab| shield_tests::nslab::counter(&lab.stats(), "api", "syncookie");
    assert_eq!(cookies(&lab), 0, "the budget's one token: no XDP cookie");
    let over = lab
        .topo
        .client
        .run_in(move || negotiated(client(1), dst))
        .expect("client namespace");
    assert_eq!(cookies(&lab), 1, "over the budget: the XDP cookie");
    eprintln!("under the budget {under:x?}, over it {over:x?}");
    for (what, (options, wscale)) in [("under the budget", under), ("over it", over)] {
        if shield_user::synproxy::timestamps_work() {
            assert_eq!(
                options & 7,
                7,
                "{what}: timestamps, SACK, window scaling: {options:#x}"
            );
            assert_eq!(wscale, shield_common::SYNCOOKIE_WSCALE, "{what}");
        } else {
            assert_eq!(options & 7, 0, "{what}: none of them: {options:#x}");
        }
    }
}
