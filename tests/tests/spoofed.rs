//! Spoofed-source floods in the data path (BPF_PROG_TEST_RUN on the real object): the
//! sketch keeps one-off sources out of the per-source table, tracked sources survive a
//! flood, the `unverified` budget drops connection attempts from unproven sources, and a
//! data segment on a real established connection verifies its source (IPv4 and IPv6).
//! The verification tests open real TCP connections on loopback: the program's socket
//! lookup runs in the test's own network namespace.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use shield_common::Reason;
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS};

const PSH_ACK: u8 = 0x18;

/// An Ethernet frame with a TCP segment from `src` to `dst` (any addresses, ports and
/// payload; checksums are not checked by the program).
fn tcp_frame(src: SocketAddr, dst: SocketAddr, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(payload);
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            f.extend_from_slice(&ip);
        }
        _ => panic!("mixed address families"),
    }
    f.extend_from_slice(&tcp);
    f
}

fn syn_from(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    tcp_frame(src, dst, shield_tests::SYN, &[])
}

fn v4(i: u32) -> String {
    Ipv4Addr::from(0x0a00_0000 | i).to_string()
}

/// Spoofed source number `i` in the family of `like`.
fn spoof(i: u32, like: IpAddr) -> SocketAddr {
    let ip = match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(
            0x2001_0db8_00ff_0000_0000_0000_0000_0000u128 | u128::from(i) << 64,
        )),
    };
    SocketAddr::new(ip, 40000)
}

#[test]
fn one_off_sources_never_enter_the_table_and_tracked_sources_survive() {
    // A small table: without the sketch, 50,000 one-off sources would evict everything.
    let mut h = Harness::new(
        r#"
[defaults]
max_sources = 1024

[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/min", burst = 20 }
"#,
    );
    // (A slow refill: the flood below takes real time, and the heavy sources must still be
    // over their limit afterwards.)
    // 100 heavy sources: each gets exactly its burst of 20, then is refused.
    for i in 0..100 {
        let syn = Pkt::new(&v4(0x10_0000 + i), L4::syn(8080)).bytes();
        let admitted = (0..25).filter(|_| h.run(&syn) == XDP_PASS).count();
        assert_eq!(
            admitted, 20,
            "heavy source {i}: burst 20 through sketch and state"
        );
    }
    let before = h.stats();
    assert_eq!(
        before.tracked_sources, 100,
        "only the heavy sources are tracked"
    );
    assert_eq!(before.rules[1].promoted_sources, 100);

    // 50,000 spoofed sources, one SYN each: all pass (they are within any limit), none
    // costs a table entry.
    for i in 0..50_000 {
        let syn = Pkt::new(&v4(i), L4::syn(8080)).bytes();
        assert_eq!(h.run(&syn), XDP_PASS);
    }
    let after = h.stats();
    let api = &after.rules[1];
    assert!(
        api.promoted_sources - 100 < 100,
        "{} one-off sources promoted (sketch collisions should be rare)",
        api.promoted_sources - 100
    );
    assert!(
        api.untracked_packets >= 50_000 - 100,
        "untracked packets {}",
        api.untracked_packets
    );
    assert_eq!(
        after.source_evictions, 0,
        "the flood evicted tracked sources: {after:?}"
    );
    // The heavy sources' state survived: they are still refused (a fresh entry would
    // admit them again).
    for i in 0..100 {
        let syn = Pkt::new(&v4(0x10_0000 + i), L4::syn(8080)).bytes();
        assert_eq!(h.run(&syn), XDP_DROP, "heavy source {i} lost its state");
    }
    // And they refill normally: a minute later, one more each.
    h.advance(Duration::from_secs(60));
    let syn = Pkt::new(&v4(0x10_0000), L4::syn(8080)).bytes();
    let admitted = (0..20).filter(|_| h.run(&syn) == XDP_PASS).count();
    assert_eq!(admitted, 1, "refill after one minute at 1/min");
}

#[test]
fn packet_limits_use_the_sketch_too_and_stay_exact() {
    let h = Harness::new(
        r#"
[[rule]]
name = "dns"
protocol = "udp"
ports = [53]
packets = { rate = "5/s", burst = 12 }
"#,
    );
    for i in 0..5_000 {
        assert_eq!(
            h.run(&Pkt::new(&v4(i), L4::Udp { dport: 53 }).bytes()),
            XDP_PASS
        );
    }
    assert!(h.stats().tracked_sources < 50);
    let heavy = Pkt::new("192.0.2.9", L4::Udp { dport: 53 }).bytes();
    let admitted = (0..40).filter(|_| h.run(&heavy) == XDP_PASS).count();
    assert_eq!(admitted, 12, "burst of 12 packets, exactly");
    assert_eq!(h.count("dns", Reason::PktLimit).packets, 28);
}

fn budget_policy() -> &'static str {
    r#"
[defaults]
verified_ttl = "1m"

[[rule]]
name = "api"
protocol = "tcp"
connections = { rate = "100/s", burst = 100 }
unverified = { rate = "10/s", burst = 50 }
"#
}

#[test]
fn unverified_budget_admits_its_burst_then_drops_spoofed_syns() {
    let mut h = Harness::new(budget_policy());
    let server: SocketAddr = "198.51.100.1:443".parse().unwrap();
    let mut admitted = 0;
    for i in 0..1000 {
        let src = SocketAddr::new(v4(i).parse().unwrap(), 40000);
        if h.run(&syn_from(src, server)) == XDP_PASS {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 50,
        "the budget's burst, shared by all unverified sources"
    );
    assert_eq!(h.count("api", Reason::UnverifiedLimit).packets, 950);
    let s = h.stats();
    let u = s.rules[1].unverified.as_ref().expect("budget in stats");
    assert_eq!((u.admitted, u.dropped, u.tokens_left), (50, 950, 0));
    assert_eq!(s.tracked_sources, 0, "dropped SYNs cost no state");
    // Non-SYN segments are not connection attempts: never drawn from the budget.
    let ack = tcp_frame(
        SocketAddr::new("10.1.1.1".parse().unwrap(), 40000),
        server,
        shield_tests::ACK,
        &[],
    );
    assert_eq!(h.run(&ack), XDP_PASS);
    // Refill at 10/s.
    h.advance(Duration::from_secs(1));
    let admitted = (0..50)
        .filter(|i| {
            let src = SocketAddr::new(v4(5000 + i).parse().unwrap(), 40000);
            h.run(&syn_from(src, server)) == XDP_PASS
        })
        .count();
    assert_eq!(admitted, 10, "one second of the budget's rate");
}

/// A real connection on loopback: (client address, server address, the streams).
fn connection(bind: IpAddr) -> (SocketAddr, SocketAddr, TcpStream, TcpStream) {
    let listener = TcpListener::bind(SocketAddr::new(bind, 0)).expect("loopback listener");
    let server = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(server).expect("loopback connect");
    let (accepted, _) = listener.accept().expect("accept");
    client.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    (client.local_addr().unwrap(), server, client, accepted)
}

fn verification_round_trip(bind: IpAddr, stranger: IpAddr) {
    // The data path's clock frozen: the per-source count below is exact however slowly a
    // loaded machine runs the 120 frames (at 100/s, 10 ms would refill a token).
    let mut h = Harness::frozen(budget_policy(), 7_000_000_000_000);
    let (client, server, _c, _s) = connection(bind);
    // Exhaust the budget with spoofed sources.
    for i in 0..50 {
        assert_eq!(h.run(&syn_from(spoof(i, bind), server)), XDP_PASS);
    }
    let new_conn = SocketAddr::new(client.ip(), client.port().wrapping_add(1));
    assert_eq!(
        h.run(&syn_from(new_conn, server)),
        XDP_DROP,
        "unverified client over the budget"
    );

    // Data on a 4-tuple the kernel has no connection for proves nothing.
    let fake = SocketAddr::new(client.ip(), client.port().wrapping_add(7));
    assert_eq!(h.run(&tcp_frame(fake, server, PSH_ACK, b"hello")), XDP_PASS);
    assert_eq!(h.stats().verifications, 0, "no socket, no proof");
    // A pure ACK (no data) on the real connection proves nothing either.
    assert_eq!(
        h.run(&tcp_frame(client, server, shield_tests::ACK, &[])),
        XDP_PASS
    );
    assert_eq!(h.stats().verifications, 0, "no data, no proof");

    // A data segment on the established connection verifies the client.
    assert_eq!(
        h.run(&tcp_frame(client, server, PSH_ACK, b"GET /")),
        XDP_PASS
    );
    let s = h.stats();
    assert_eq!((s.verifications, s.verified_sources), (1, 1));
    // Its new connections now bypass the exhausted budget; a stranger's do not.
    for _ in 0..20 {
        assert_eq!(
            h.run(&syn_from(new_conn, server)),
            XDP_PASS,
            "verified client"
        );
    }
    let stranger = SocketAddr::new(stranger, 40000);
    assert_eq!(h.run(&syn_from(stranger, server)), XDP_DROP);
    let u = h.stats().rules[1].unverified.clone().unwrap();
    assert_eq!(u.verified_conns, 20);
    // Its own per-source limit still applies (burst 100).
    let refused = (0..100)
        .filter(|_| h.run(&syn_from(new_conn, server)) == XDP_DROP)
        .count();
    assert_eq!(refused, 20, "100 connections per source, verified or not");
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 20);

    // The proof expires after verified_ttl (1 min): back to the budget (which has
    // refilled to its burst of 50 by then).
    h.advance(Duration::from_secs(61));
    let admitted = (0..60)
        .filter(|_| h.run(&syn_from(new_conn, server)) == XDP_PASS)
        .count();
    assert!(
        admitted <= 50,
        "expired proof: the budget applies again, admitted {admitted}"
    );
    assert_eq!(h.stats().verified_sources, 0);
}

#[test]
fn a_data_segment_on_an_established_connection_verifies_its_source_v4() {
    verification_round_trip(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "203.0.113.50".parse().unwrap(),
    );
}

#[test]
fn a_data_segment_on_an_established_connection_verifies_its_source_v6() {
    verification_round_trip(
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        "2001:db8:9::1".parse().unwrap(),
    );
}

#[test]
fn monitor_mode_counts_budget_drops_as_would_drop() {
    let h = Harness::new(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
mode = "monitor"
unverified = { rate = "1/s", burst = 2 }
"#,
    );
    let server: SocketAddr = "198.51.100.1:80".parse().unwrap();
    for i in 0..10 {
        let src = SocketAddr::new(v4(i).parse().unwrap(), 40000);
        assert_eq!(h.run(&syn_from(src, server)), XDP_PASS);
    }
    assert_eq!(h.count("api", Reason::WouldDrop).packets, 8);
    assert_eq!(h.count("api", Reason::UnverifiedLimit).packets, 0);
}

/// One real source hammering SYNs must not drain the rule's `unverified` budget: only the
/// attempts its own limit admits are charged, so new clients still get in.
#[test]
fn one_source_over_its_own_limit_does_not_drain_the_budget() {
    let h = Harness::new(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
connections = { rate = "1/s", burst = 2 }
unverified = { rate = "1/s", burst = 5 }
"#,
    );
    let server: SocketAddr = "198.51.100.1:443".parse().unwrap();
    let hammer = syn_from(SocketAddr::new(v4(1).parse().unwrap(), 40000), server);
    let admitted = (0..1000).filter(|_| h.run(&hammer) == XDP_PASS).count();
    assert_eq!(admitted, 2, "the source's own burst");
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 998);
    assert_eq!(h.count("api", Reason::UnverifiedLimit).packets, 0);
    // 3 tokens of the budget's 5 are left for everyone else.
    let newcomers = (0..5)
        .filter(|i| {
            let src = SocketAddr::new(v4(100 + i).parse().unwrap(), 40000);
            h.run(&syn_from(src, server)) == XDP_PASS
        })
        .count();
    assert_eq!(
        newcomers, 3,
        "one source over its own limit drained the unverified budget: new clients are refused"
    );
    let s = h.stats();
    let u = s.rules[1].unverified.as_ref().expect("budget in stats");
    assert_eq!((u.admitted, u.tokens_left), (5, 0));
}
