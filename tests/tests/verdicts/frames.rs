//! Frames cut at every header boundary and malformed IP headers: passed as `malformed`, never judged.

use super::*;

#[test]
fn truncated_frames_at_every_header_boundary_pass_as_malformed() {
    let h = Harness::new(BASE);
    let samples = [
        // The plain frame the program parses inline (`parse_plain_v4_tcp`).
        Pkt::new("192.0.2.1", L4::syn(8080)),
        Pkt::new("192.0.2.1", L4::syn(8080))
            .vlans(&[1, 2])
            .options(3),
        Pkt::new("2001:db8:9::1", L4::syn(8080))
            .vlans(&[1])
            .ext(&[0, 44, 60]),
        Pkt::new("192.0.2.1", L4::Udp { dport: 53 }),
        Pkt::new("2001:db8:9::1", L4::Echo),
    ];
    let mut malformed_expected = 0;
    for pkt in &samples {
        let full = pkt.bytes();
        // The kernel refuses test frames shorter than an Ethernet header (EINVAL), so cuts
        // start at 14 bytes; every cut inside a VLAN tag, the IP header, its options or
        // extension headers, or the transport header must pass and count as malformed.
        let transport_min = match pkt.l4 {
            L4::Tcp { .. } => 20,
            L4::Udp { .. } => 8,
            _ => 4,
        };
        let l4_len = match pkt.l4 {
            L4::Tcp { .. } => 20,
            L4::Udp { .. } => 12,
            _ => 8,
        };
        let l4_start = full.len() - l4_len;
        for cut in 14..(l4_start + transport_min) {
            // Cutting exactly after the Ethernet header / a VLAN tag leaves a frame whose
            // ethertype promises IP that is not there: malformed as well.
            let got = h.run(&full[..cut]);
            assert_eq!(
                got, XDP_PASS,
                "{:?} cut at {cut} bytes must pass (fail open)",
                pkt.l4
            );
            malformed_expected += 1;
        }
    }
    let m = h.count("(none)", Malformed);
    assert_eq!(
        m.packets, malformed_expected,
        "every truncated frame counts as malformed"
    );
    assert_eq!(
        h.stats().tracked_sources,
        0,
        "truncated frames must not create state"
    );
}

#[test]
fn malformed_ip_headers_pass_as_malformed() {
    let h = Harness::new(BASE);
    let mut bad_ihl = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    bad_ihl[14] = 0x44; // IHL 4 < 5
    let mut bad_version = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    bad_version[14] = 0x65; // claims IPv6 in an IPv4 ethertype
    let mut bad_tcp_off = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    bad_tcp_off[14 + 20 + 12] = 0x20; // data offset 2 < 5
    let mut ihl_past_end = Pkt::new("192.0.2.1", L4::Udp { dport: 53 }).bytes();
    ihl_past_end[14] = 0x4f; // 60-byte header in a 46-byte frame
    for f in [&bad_ihl, &bad_version, &bad_tcp_off, &ihl_past_end] {
        assert_eq!(h.run(f), XDP_PASS);
    }
    assert_eq!(h.count("(none)", Malformed).packets, 4);
    assert_eq!(h.count("api", Pass).packets, 0);
}
