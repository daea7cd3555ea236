//! `BPF_PROG_TEST_RUN` of the inline parses (`parse_plain_v4_tcp`, `parse_plain_v6_tcp`):
//! the program parses an untagged IPv4 TCP frame without options or fragmentation, and an
//! untagged IPv6 frame whose next header is TCP, itself and leaves every other frame to the
//! general parser; frames on either side of each of those paths' conditions get the general
//! parser's verdicts. Needs root (fails, never skips, without it).

use shield_common::Reason::*;
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS};

/// Rule `api`: tcp/8080 connections 1/s burst 3.
const BASE: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/s", burst = 3 }
"#;

/// The program parses an untagged IPv4 TCP frame without options or fragmentation inline
/// and leaves every other frame to the general parser: frames on either side of each of
/// that path's conditions get the general parser's verdict.
#[test]
fn frames_at_the_edges_of_the_plain_ipv4_tcp_path_are_judged_as_any_other() {
    let h = Harness::new(BASE);
    let syn = || Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut f = syn();
        edit(&mut f);
        f
    };
    // Judged by rule `api` (3 within its burst, then a 4th over it).
    let judged = [
        ("plain", syn()),
        // Don't-fragment and the reserved flag: not a fragment.
        ("DF", with(&|f| f[20] = 0x40)),
        ("reserved flag", with(&|f| f[20] = 0x80)),
        // A first fragment holding the whole TCP header: judged like a whole packet.
        ("first fragment", with(&|f| f[20] = 0x20)),
    ];
    for (i, (what, f)) in judged.iter().enumerate() {
        let want = if i < 3 { XDP_PASS } else { XDP_DROP };
        assert_eq!(h.run(f), want, "{what}");
    }
    assert_eq!(h.count("api", Pass).packets, 3);
    assert_eq!(h.count("api", ConnLimit).packets, 1);
    // IP lengths 20-39 leave the TCP header out of the IP packet (the frame holds it; the
    // kernel would discard the packet): malformed like 19, never judged by the rule.
    let malformed = [
        (
            "IP length 20",
            with(&|f| f[16..18].copy_from_slice(&20u16.to_be_bytes())),
        ),
        (
            "IP length 39",
            with(&|f| f[16..18].copy_from_slice(&39u16.to_be_bytes())),
        ),
        (
            "IP length 19",
            with(&|f| f[16..18].copy_from_slice(&19u16.to_be_bytes())),
        ),
        ("TCP data offset 4", with(&|f| f[46] = 0x40)),
        ("one byte short of the TCP header", syn()[..53].to_vec()),
    ];
    for (what, f) in &malformed {
        assert_eq!(h.run(f), XDP_PASS, "{what}");
    }
    assert_eq!(h.count("(none)", Malformed).packets, 5);
    assert_eq!(h.count("api", ConnLimit).packets, 1);
    // Fragments at offset 1 (RFC 1858), and IPv4 options: the general parser's verdicts.
    assert_eq!(
        h.run(&with(&|f| f[21] = 1)),
        XDP_DROP,
        "TCP fragment at offset 1"
    );
    // A first fragment whose IP length leaves the TCP header short (RFC 1858's tiny
    // fragment), though the frame holds it.
    let tiny = with(&|f| {
        f[20] = 0x20;
        f[16..18].copy_from_slice(&39u16.to_be_bytes());
    });
    assert_eq!(h.run(&tiny), XDP_DROP, "tiny first fragment");
    assert_eq!(h.count("(none)", BadFragment).packets, 2);
    let opts = Pkt::new("192.0.2.9", L4::syn(8080)).options(1).bytes();
    assert_eq!(h.run(&opts), XDP_PASS, "IPv4 options");
    assert_eq!(h.count("api", Pass).packets, 4);
}

/// The same for IPv6: an untagged frame whose next header is TCP is parsed inline, every
/// other one (extension headers, fragments, another version, a short or bad TCP header) by
/// the general parser, with the general parser's verdicts.
#[test]
fn frames_at_the_edges_of_the_plain_ipv6_tcp_path_are_judged_as_any_other() {
    let h = Harness::new(BASE);
    // One /64 (IPv6 sources are limited per /64 by default).
    let syn = |host: u8| Pkt::new(&format!("2001:db8:1::{host}"), L4::syn(8080));
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut f = syn(1).bytes();
        edit(&mut f);
        f
    };
    // Judged by rule `api`: inline, behind a hop-by-hop header, as a first fragment that
    // holds the whole TCP header, then over the burst of 3.
    let judged = [
        ("plain", syn(1).bytes()),
        ("hop-by-hop header", syn(2).ext(&[0]).bytes()),
        ("first fragment", syn(3).first_fragment(20).bytes()),
        ("plain, over the burst", syn(4).bytes()),
    ];
    for (i, (what, f)) in judged.iter().enumerate() {
        let want = if i < 3 { XDP_PASS } else { XDP_DROP };
        assert_eq!(h.run(f), want, "{what}");
    }
    assert_eq!(h.count("api", Pass).packets, 3);
    assert_eq!(h.count("api", ConnLimit).packets, 1);
    // A payload length that leaves out the TCP header (the frame holds it; the kernel
    // would discard the packet) is malformed, as a short or bad header is.
    let malformed = [
        (
            "payload length 0",
            with(&|f| f[18..20].copy_from_slice(&0u16.to_be_bytes())),
        ),
        (
            "payload length 19",
            with(&|f| f[18..20].copy_from_slice(&19u16.to_be_bytes())),
        ),
        ("version 4 in an IPv6 frame", with(&|f| f[14] = 0x40)),
        ("TCP data offset 4", with(&|f| f[66] = 0x40)),
        (
            "one byte short of the TCP header",
            syn(1).bytes()[..73].to_vec(),
        ),
    ];
    for (what, f) in &malformed {
        assert_eq!(h.run(f), XDP_PASS, "{what}");
    }
    assert_eq!(h.count("(none)", Malformed).packets, 5);
    assert_eq!(h.count("api", ConnLimit).packets, 1);
    // Not TCP: UDP on the rule's port passes untracked by a tcp rule.
    let udp = Pkt::new("2001:db8:1::1", L4::Udp { dport: 8080 }).bytes();
    assert_eq!(h.run(&udp), XDP_PASS, "UDP");
    assert_eq!(h.count("api", Pass).packets, 3);
    // A fragment at offset 1 (RFC 1858) and a tiny first fragment (RFC 7112).
    assert_eq!(
        h.run(&syn(1).fragment(1).bytes()),
        XDP_DROP,
        "fragment at offset 1"
    );
    assert_eq!(
        h.run(&syn(1).first_fragment(12).bytes()),
        XDP_DROP,
        "tiny first fragment"
    );
    assert_eq!(h.count("(none)", BadFragment).packets, 2);
}
