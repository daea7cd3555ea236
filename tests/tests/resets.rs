//! `over_limit = "reset"` in the data path (BPF_PROG_TEST_RUN on the real object, frozen
//! clock): a verified source's refused SYN comes back as a RST whose every byte is checked
//! here (checksums computed independently of the program), at most one a second per source
//! and within the rule's `resets` cap; never for unverified sources, monitor rules or SYNs
//! the program cannot answer plainly. Needs root (fails, never skips, without it).

use std::net::IpAddr;

use shield_common::Reason;
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS, XDP_TX};

const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/min", burst = 1 }
over_limit = "reset"
resets = "2/s"
[[rule]]
name = "watched"
protocol = "tcp"
ports = [9090]
mode = "monitor"
connections = { rate = "1/min", burst = 1 }
over_limit = "reset"
"#;

const S: u64 = 1_000_000_000;
const T0: u64 = 5_000 * S;
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
const SEQ: u32 = 0xfffffff0;

/// A SYN from `src:40000` to `dst:dport` with an MSS option (so the RST is shorter than the
/// SYN) and `payload` bytes of data; `ip_options` words of IPv4 options.
fn syn(src: IpAddr, dst: IpAddr, dport: u16, payload: &[u8], ip_options: usize) -> Vec<u8> {
    let mut tcp = vec![0u8; 24];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&SEQ.to_be_bytes());
    tcp[12] = 6 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    tcp.extend_from_slice(payload);
    let mut f = SERVER_MAC.to_vec();
    f.extend_from_slice(&CLIENT_MAC);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let hlen = 20 + 4 * ip_options;
            let mut ip = vec![1u8; hlen];
            ip[0] = 0x40 | (hlen / 4) as u8;
            ip[1] = 0x10;
            ip[2..4].copy_from_slice(&((hlen + tcp.len()) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
            ip[8] = 55;
            ip[9] = 6;
            ip[10..12].fill(0);
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0..4].copy_from_slice(&[0x6a, 0xbc, 0xde, 0xf1]);
            ip[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = 55;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            f.extend_from_slice(&ip);
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(&tcp);
    f
}

/// RFC 1071: the ones' complement of the ones' complement sum of 16-bit words.
fn checksum(chunks: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = chunks.concat();
    let mut sum: u64 = 0;
    for pair in bytes.chunks(2) {
        let hi = u64::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |b| u64::from(*b));
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Checks every byte of the RST answering a SYN from `src:40000` to `dst:dport` with
/// sequence `SEQ` and `data` bytes of data.
fn assert_rst(out: &[u8], src: IpAddr, dst: IpAddr, dport: u16, data: u32) {
    assert_eq!(&out[0..6], &CLIENT_MAC, "destination MAC: the client's");
    assert_eq!(&out[6..12], &SERVER_MAC, "source MAC: ours");
    let (tcp, pseudo) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            assert_eq!(
                out.len(),
                14 + 20 + 20,
                "Ethernet + IPv4 + TCP, options and data trimmed"
            );
            assert_eq!(&out[12..14], &[0x08, 0x00]);
            let ip = &out[14..34];
            assert_eq!(ip[0], 0x45, "IPv4 without options");
            assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40, "total length");
            assert_eq!(&ip[6..8], &[0x40, 0], "DF, not a fragment");
            assert_eq!(ip[8], 64, "TTL");
            assert_eq!(ip[9], 6, "TCP");
            assert_eq!(&ip[12..16], &d.octets(), "from the server");
            assert_eq!(&ip[16..20], &s.octets(), "to the client");
            assert_eq!(checksum(&[ip]), 0, "the IPv4 header checksum verifies");
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&ip[12..20]);
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
            (&out[34..54], pseudo)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            assert_eq!(out.len(), 14 + 40 + 20, "Ethernet + IPv6 + TCP");
            assert_eq!(&out[12..14], &[0x86, 0xdd]);
            let ip = &out[14..54];
            assert_eq!(ip[0] >> 4, 6);
            assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 20, "payload length");
            assert_eq!(ip[6], 6, "next header TCP");
            assert_eq!(ip[7], 64, "hop limit");
            assert_eq!(&ip[8..24], &d.octets(), "from the server");
            assert_eq!(&ip[24..40], &s.octets(), "to the client");
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&ip[8..40]);
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
            (&out[54..74], pseudo)
        }
        _ => panic!("mixed families"),
    };
    assert_eq!(
        u16::from_be_bytes([tcp[0], tcp[1]]),
        dport,
        "source port: the SYN's destination"
    );
    assert_eq!(
        u16::from_be_bytes([tcp[2], tcp[3]]),
        40000,
        "destination port: the client's"
    );
    assert_eq!(
        &tcp[4..8],
        &[0, 0, 0, 0],
        "RFC 9293: a SYN has no ACK, so the RST's sequence is 0"
    );
    assert_eq!(
        u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        SEQ.wrapping_add(1 + data),
        "ACK = the SYN's sequence + its length (SYN + data), wrapping"
    );
    assert_eq!(tcp[12], 5 << 4, "no options");
    assert_eq!(tcp[13], 0x14, "RST + ACK");
    assert_eq!(&tcp[14..16], &[0, 0], "window");
    assert_eq!(&tcp[18..20], &[0, 0], "urgent pointer");
    assert_eq!(checksum(&[&pseudo, tcp]), 0, "the TCP checksum verifies");
}

fn harness() -> Harness {
    Harness::frozen(POLICY, T0)
}

fn rst_round(src: &str, dst: &str) {
    let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut h = harness();
    h.verify(src, T0);
    let f = syn(src, dst, 8080, &[], 0);
    assert_eq!(
        h.run(&f),
        XDP_PASS,
        "the first connection is within the limit"
    );
    let (action, out) = h.run_out(&f);
    assert_eq!(
        action, XDP_TX,
        "a verified source over its limit gets a RST"
    );
    assert_rst(&out, src, dst, 8080, 0);
    // Within the same second: dropped, no second RST to that source.
    assert_eq!(h.run(&f), XDP_DROP, "at most one RST a second per source");
    assert_eq!(h.count("api", Reason::Reset).packets, 1);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 1);
    // A second later it gets one again; a SYN carrying data is acknowledged with its data.
    // (The spacing is RESET_EVERY_UNITS, 1.0014 s, plus up to a unit of a stamp's rounding:
    // 1.1 s is past it wherever the frozen clock falls.)
    h.advance(std::time::Duration::from_millis(1100));
    let with_data = syn(src, dst, 8080, b"hello", 0);
    let (action, out) = h.run_out(&with_data);
    assert_eq!(action, XDP_TX);
    assert_rst(&out, src, dst, 8080, 5);
    assert_eq!(h.count("api", Reason::Reset).packets, 2);
}

#[test]
fn a_verified_source_over_its_limit_gets_a_valid_rst_v4() {
    rst_round("192.0.2.10", "198.51.100.1");
}

#[test]
fn a_verified_source_over_its_limit_gets_a_valid_rst_v6() {
    rst_round("2001:db8:77::10", "2001:db8:1:1::1");
}

#[test]
fn never_for_unverified_sources_monitor_rules_or_syns_with_ip_options() {
    let mut h = harness();
    let dst: IpAddr = "198.51.100.1".parse().unwrap();
    // Unverified (could be a spoofed victim's address): dropped, as without `reset`.
    let stranger: IpAddr = "203.0.113.9".parse().unwrap();
    let f = syn(stranger, dst, 8080, &[], 0);
    assert_eq!(h.run(&f), XDP_PASS);
    for _ in 0..5 {
        assert_eq!(h.run(&f), XDP_DROP, "no RST for an unverified source");
    }
    // A monitor rule passes what it would drop, and never sends a RST.
    let known: IpAddr = "192.0.2.20".parse().unwrap();
    h.verify(known, T0);
    let w = syn(known, dst, 9090, &[], 0);
    for _ in 0..5 {
        assert_eq!(h.run(&w), XDP_PASS, "monitor mode: passed, never reset");
    }
    assert_eq!(h.count("watched", Reason::WouldDrop).packets, 4);
    // IPv4 options: not answered (the reply would have to carry or strip them).
    let o = syn(known, dst, 8080, &[], 2);
    assert_eq!(h.run(&o), XDP_PASS);
    assert_eq!(
        h.run(&o),
        XDP_DROP,
        "a SYN with IP options is dropped, not answered"
    );
    assert_eq!(h.count("api", Reason::Reset).packets, 0);
    assert_eq!(h.count("watched", Reason::Reset).packets, 0);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 6);
    // Once the same source sends a plain SYN it is answered.
    h.advance(std::time::Duration::from_secs(1));
    let plain = syn(known, dst, 8080, &[], 0);
    assert_eq!(h.run(&plain), XDP_TX);
}

#[test]
fn never_for_ipv6_syns_behind_extension_headers() {
    let h = harness();
    let known: IpAddr = "2001:db8:77::20".parse().unwrap();
    h.verify(known, T0);
    let src = "2001:db8:77::20";
    // Judged by the rule like any SYN (the first within the limit), but never answered: the
    // reply would have to carry or strip the headers.
    let hop = Pkt::new(src, L4::syn(8080)).ext(&[0]).bytes();
    assert_eq!(
        h.run(&hop),
        XDP_PASS,
        "the first connection is within the limit"
    );
    assert_eq!(
        h.run(&hop),
        XDP_DROP,
        "a SYN behind a hop-by-hop header is dropped, not answered"
    );
    let fragment = Pkt::new(src, L4::syn(8080)).first_fragment(20).bytes();
    assert_eq!(
        h.run(&fragment),
        XDP_DROP,
        "a SYN behind a fragment header is dropped, not answered"
    );
    assert_eq!(h.count("api", Reason::Reset).packets, 0);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 2);
    // The same source's plain SYN is answered.
    let dst: IpAddr = "2001:db8:1:1::1".parse().unwrap();
    assert_eq!(h.run(&syn(known, dst, 8080, &[], 0)), XDP_TX);
    assert_eq!(h.count("api", Reason::Reset).packets, 1);
}

#[test]
fn the_rule_cap_bounds_resets_across_sources() {
    let mut h = harness();
    let dst: IpAddr = "198.51.100.1".parse().unwrap();
    let mut sent = 0;
    for i in 1..=6u8 {
        let src = IpAddr::from([192, 0, 2, 100 + i]);
        h.verify(src, T0);
        let f = syn(src, dst, 8080, &[], 0);
        assert_eq!(h.run(&f), XDP_PASS);
        if h.run(&f) == XDP_TX {
            sent += 1;
        }
    }
    assert_eq!(
        sent, 2,
        "resets = \"2/s\": two RSTs in this second for the whole rule"
    );
    assert_eq!(h.count("api", Reason::Reset).packets, 2);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 4);
    // The cap refills at its rate: one more a half second later.
    h.advance(std::time::Duration::from_millis(500));
    let src = IpAddr::from([192, 0, 2, 120]);
    h.verify(src, T0);
    let f = syn(src, dst, 8080, &[], 0);
    assert_eq!(h.run(&f), XDP_PASS);
    assert_eq!(h.run(&f), XDP_TX);
}
