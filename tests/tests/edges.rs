//! An attacker's frames at the edges of the data path (BPF_PROG_TEST_RUN on the real
//! object): transport headers the IP length leaves out (in the Ethernet padding, or a TCP
//! data offset past the IP payload), which the kernel discards and shield must neither judge
//! against a source nor answer; and SYNs with other TCP flags set, answered (RST under
//! `over_limit = "reset"`, cookie SYN-ACK under `challenge = "syncookie"`) exactly when
//! the kernel's own listener would take them for a connection request. Needs root (fails,
//! never skips, without it).

use std::net::IpAddr;

use shield_common::Reason;
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS, XDP_TX};

/// One connection a minute on tcp/8080, one packet a minute on udp/53, and tcp/8443 with
/// a spent `unverified` budget answered with SYN cookies (one token an hour).
const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/min", burst = 1 }
over_limit = "reset"
resets = "50/s"
[[rule]]
name = "dns"
protocol = "udp"
ports = [53]
packets = { rate = "1/min", burst = 1 }
[[rule]]
name = "cookie"
protocol = "tcp"
ports = [8443]
unverified = { rate = "1/h", burst = 1 }
challenge = "syncookie"
"#;

const S: u64 = 1_000_000_000;
const T0: u64 = 7_000 * S;

/// IPv4: Ethernet (14), the IP header at 14, total length at 16, TCP at 34 (data offset at
/// 46, flags at 47). IPv6: payload length at 18, TCP at 54 (data offset 66, flags 67).
const V4_LEN: usize = 16;
const V6_LEN: usize = 18;

fn set16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// `f` padded with zeros to Ethernet's 60-byte minimum frame.
fn padded(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// A SYN to 8080 from `src` whose IPv4 total length is `len`: a TCP header in the frame,
/// but (for 20-39) not inside the IP packet.
fn v4_syn_len(src: &str, len: u16) -> Vec<u8> {
    let mut f = Pkt::new(src, L4::syn(8080)).bytes();
    set16(&mut f, V4_LEN, len);
    padded(f)
}

#[test]
fn a_tcp_or_udp_header_outside_the_ipv4_length_is_malformed_never_judged() {
    let h = Harness::frozen(POLICY, T0);
    let src = "192.0.2.10";
    assert_eq!(
        h.run(&Pkt::new(src, L4::syn(8080)).bytes()),
        XDP_PASS,
        "the one connection a minute"
    );
    // IP lengths 20-39: the "TCP header" lies in the padding; the kernel trims the frame
    // to the IP length and discards it (no room for a TCP header). Not a connection
    // attempt of this source: passed as malformed, never counted against its limit.
    for len in [20u16, 21, 39] {
        assert_eq!(h.run(&v4_syn_len(src, len)), XDP_PASS, "IP length {len}");
    }
    // A TCP data offset running past the IP payload (6 words, 40 - 20 = 20 bytes inside).
    let mut long_doff = Pkt::new(src, L4::syn(8080)).bytes();
    long_doff[46] = 6 << 4;
    let long_doff = padded(long_doff);
    assert_eq!(
        h.run(&long_doff),
        XDP_PASS,
        "TCP data offset past the IP payload"
    );
    assert_eq!(h.count("(none)", Reason::Malformed).packets, 4);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 0);
    // UDP: an IP length of 20-27 leaves no room for the 8-byte header.
    let dns = |len: Option<u16>| {
        let mut f = Pkt::new(src, L4::Udp { dport: 53 }).bytes();
        if let Some(len) = len {
            set16(&mut f, V4_LEN, len);
        }
        padded(f)
    };
    assert_eq!(h.run(&dns(None)), XDP_PASS, "the one packet a minute");
    for len in [20u16, 27] {
        assert_eq!(h.run(&dns(Some(len))), XDP_PASS, "UDP, IP length {len}");
    }
    assert_eq!(h.count("(none)", Reason::Malformed).packets, 6);
    assert_eq!(h.count("dns", Reason::PktLimit).packets, 0);
    assert_eq!(h.run(&dns(None)), XDP_DROP, "a whole datagram is judged");
    // A first fragment holding the whole fixed TCP header but not its options (data
    // offset 10: the options follow in the next fragment) is still a connection attempt
    // to judge: the kernel reassembles it.
    let mut first = Pkt::new(src, L4::syn(8080)).first_fragment(20).bytes();
    first[46] = 10 << 4;
    assert_eq!(
        h.run(&first),
        XDP_DROP,
        "a first fragment's SYN is judged by its rule"
    );
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 1);
    assert_eq!(
        h.run(&Pkt::new(src, L4::syn(8080)).bytes()),
        XDP_DROP,
        "a whole SYN is judged"
    );
    assert_eq!(h.count("(none)", Reason::Malformed).packets, 6);
}

#[test]
fn a_tcp_header_outside_the_ipv6_payload_length_is_malformed_never_judged() {
    let h = Harness::frozen(POLICY, T0);
    let src = "2001:db8:77::10";
    assert_eq!(
        h.run(&Pkt::new(src, L4::syn(8080)).bytes()),
        XDP_PASS,
        "the one connection a minute"
    );
    for len in [0u16, 19] {
        let mut f = Pkt::new(src, L4::syn(8080)).bytes();
        set16(&mut f, V6_LEN, len);
        assert_eq!(h.run(&f), XDP_PASS, "payload length {len}");
    }
    let mut long_doff = Pkt::new(src, L4::syn(8080)).bytes();
    long_doff[66] = 6 << 4;
    long_doff.extend_from_slice(&[1, 1, 1, 1]);
    assert_eq!(
        h.run(&long_doff),
        XDP_PASS,
        "TCP data offset past the payload"
    );
    // Behind a destination options header, the same.
    let mut ext = Pkt::new(src, L4::syn(8080)).ext(&[60]).bytes();
    set16(&mut ext, V6_LEN, 16 + 19);
    assert_eq!(h.run(&ext), XDP_PASS, "behind an extension header");
    assert_eq!(h.count("(none)", Reason::Malformed).packets, 4);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 0);
    assert_eq!(h.run(&Pkt::new(src, L4::syn(8080)).bytes()), XDP_DROP);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 1);
}

#[test]
fn a_syn_in_the_padding_is_never_answered() {
    let mut h = Harness::frozen(POLICY, T0);
    // `syncookie`: the budget's one token taken, a whole SYN over it is answered...
    let cookie = |src: &str, len: Option<u16>| {
        let mut f = Pkt::new(src, L4::syn(8443)).bytes();
        if let Some(len) = len {
            set16(&mut f, V4_LEN, len);
        }
        padded(f)
    };
    assert_eq!(h.run(&cookie("203.0.113.1", None)), XDP_PASS);
    assert_eq!(h.run(&cookie("203.0.113.2", None)), XDP_TX);
    // ...one whose TCP header lies past the IP length is not (no SYN-ACK to reflect).
    assert_eq!(h.run(&cookie("203.0.113.3", Some(20))), XDP_PASS);
    assert_eq!(h.count("cookie", Reason::SynCookie).packets, 1);
    // `over_limit = "reset"`: a verified source over its limit gets no RST for it either.
    let known: IpAddr = "192.0.2.20".parse().expect("ip");
    h.verify(known, T0);
    assert_eq!(
        h.run(&Pkt::new("192.0.2.20", L4::syn(8080)).bytes()),
        XDP_PASS
    );
    assert_eq!(h.run(&v4_syn_len("192.0.2.20", 20)), XDP_PASS);
    assert_eq!(h.count("api", Reason::Reset).packets, 0);
    h.advance(std::time::Duration::from_millis(1100));
    assert_eq!(
        h.run(&Pkt::new("192.0.2.20", L4::syn(8080)).bytes()),
        XDP_TX,
        "its whole SYN over the limit is answered"
    );
    assert_eq!(h.count("(none)", Reason::Malformed).packets, 2);
}

/// SYN with other flags, as the kernel's listener takes them (net/ipv4/tcp_input.c,
/// `tcp_rcv_state_process`, TCP_LISTEN: ACK set gets a RST, RST set or SYN with FIN is
/// discarded, any other SYN is a connection request; URG, PSH, ECE, CWR and the reserved
/// bits of the data offset byte are not looked at). (name, flags byte, reserved bits,
/// answered).
const FLAGGED: [(&str, u8, u8, bool); 6] = [
    ("SYN+FIN", 0x03, 0, false),
    ("SYN+RST", 0x06, 0, false),
    ("SYN+RST+FIN", 0x07, 0, false),
    ("SYN+ECE+CWR (ECN setup)", 0xc2, 0, true),
    ("SYN+URG+PSH", 0x2a, 0, true),
    ("SYN, reserved bits", 0x02, 0x0f, true),
];

fn flagged(src: &str, dport: u16, flags: u8, reserved: u8) -> Vec<u8> {
    let mut f = Pkt::new(src, L4::Tcp { dport, flags }).bytes();
    let th = if src.contains(':') { 54 } else { 34 };
    f[th + 12] |= reserved;
    f
}

fn reset_flags(src: &str) {
    let mut h = Harness::frozen(POLICY, T0);
    h.verify(src.parse().expect("ip"), T0);
    assert_eq!(h.run(&Pkt::new(src, L4::syn(8080)).bytes()), XDP_PASS);
    let mut resets = 0;
    for (what, flags, reserved, answered) in FLAGGED {
        // Past the one RST a second per source (1.0014 s in the stamp's units).
        h.advance(std::time::Duration::from_millis(1100));
        let (action, out) = h.run_out(&flagged(src, 8080, flags, reserved));
        if answered {
            assert_eq!(action, XDP_TX, "{what} over the limit: a RST");
            let th = if src.contains(':') { 54 } else { 34 };
            assert_eq!(out[th + 13], 0x14, "{what}: RST+ACK");
            resets += 1;
        } else {
            assert_eq!(
                action, XDP_DROP,
                "{what}: dropped, never answered with a RST"
            );
        }
        assert_eq!(h.count("api", Reason::Reset).packets, resets, "{what}");
    }
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 3);
}

#[test]
fn reset_answers_only_the_syns_a_listener_takes_v4() {
    reset_flags("192.0.2.30");
}

#[test]
fn reset_answers_only_the_syns_a_listener_takes_v6() {
    reset_flags("2001:db8:77::30");
}

fn cookie_flags(net: &str) {
    let h = Harness::frozen(POLICY, T0);
    let v6 = net.contains(':');
    let src = |i: usize| {
        if v6 {
            format!("{net}{:x}", i + 1)
        } else {
            format!("{net}{}", i + 1)
        }
    };
    assert_eq!(h.run(&Pkt::new(&src(99), L4::syn(8443)).bytes()), XDP_PASS);
    let mut answered_count = 0;
    for (i, (what, flags, reserved, answered)) in FLAGGED.into_iter().enumerate() {
        let (action, out) = h.run_out(&flagged(&src(i), 8443, flags, reserved));
        if answered {
            assert_eq!(action, XDP_TX, "{what} over the budget: a cookie SYN-ACK");
            let th = if v6 { 54 } else { 34 };
            assert_eq!(out[th + 13], 0x12, "{what}: SYN+ACK");
            answered_count += 1;
        } else {
            assert_eq!(action, XDP_DROP, "{what}: dropped, never answered");
        }
        assert_eq!(
            h.count("cookie", Reason::SynCookie).packets,
            answered_count,
            "{what}"
        );
    }
    assert_eq!(h.count("cookie", Reason::UnverifiedLimit).packets, 3);
}

#[test]
fn syncookie_answers_only_the_syns_a_listener_takes_v4() {
    cookie_flags("203.0.113.");
}

#[test]
fn syncookie_answers_only_the_syns_a_listener_takes_v6() {
    cookie_flags("2001:db8:99::");
}

/// IPv4's reserved flag (RFC 3514's "evil bit") makes no packet a fragment, and the
/// kernel's listener does not look at it: a SYN carrying it gets the same answer from
/// both paths as one without it.
#[test]
fn a_syn_with_the_ipv4_reserved_flag_is_answered_by_both_paths() {
    let evil = |src: &str, dport: u16| {
        let mut f = Pkt::new(src, L4::syn(dport)).bytes();
        f[20] = 0x80 | 0x40;
        f
    };
    let h = Harness::frozen(POLICY, T0);
    let known = "192.0.2.40";
    h.verify(known.parse().expect("ip"), T0);
    assert_eq!(h.run(&evil(known, 8080)), XDP_PASS);
    assert_eq!(h.run(&evil(known, 8080)), XDP_TX, "a RST over the limit");
    assert_eq!(h.count("api", Reason::Reset).packets, 1);
    assert_eq!(h.run(&evil("203.0.113.40", 8443)), XDP_PASS);
    assert_eq!(
        h.run(&evil("203.0.113.41", 8443)),
        XDP_TX,
        "a cookie SYN-ACK over the budget"
    );
    assert_eq!(h.count("cookie", Reason::SynCookie).packets, 1);
}

/// A frame shorter than its IP length (IPv4 total length, IPv6 payload length) is a
/// truncated packet the kernel drops before any transport sees it: malformed, never
/// judged against its source nor answered, whatever headers the frame holds.
#[test]
fn a_frame_shorter_than_its_ip_length_is_malformed_never_judged_nor_answered() {
    let h = Harness::frozen(POLICY, T0);
    let long = |src: &str, dport: u16, by: u16| {
        let mut f = Pkt::new(src, L4::syn(dport)).bytes();
        let at = if src.contains(':') { V6_LEN } else { V4_LEN };
        let len = u16::from_be_bytes([f[at], f[at + 1]]);
        set16(&mut f, at, len + by);
        f
    };
    for src in ["192.0.2.60", "2001:db8:60::1"] {
        assert_eq!(h.run(&Pkt::new(src, L4::syn(8080)).bytes()), XDP_PASS);
        for by in [1u16, 1000] {
            assert_eq!(
                h.run(&long(src, 8080, by)),
                XDP_PASS,
                "{src}: {by} bytes short"
            );
        }
        // Through the general parser too (a VLAN tag, an IPv4 option or an extension
        // header take a frame off the inline paths).
        let mut tagged = Pkt::new(src, L4::syn(8080)).vlans(&[7]).bytes();
        let at = if src.contains(':') {
            V6_LEN + 4
        } else {
            V4_LEN + 4
        };
        set16(&mut tagged, at, 2000);
        assert_eq!(h.run(&tagged), XDP_PASS, "{src}: tagged, short");
    }
    assert_eq!(h.count("(none)", Reason::Malformed).packets, 6);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 0);
    // Over the `syncookie` budget: no SYN-ACK for it.
    assert_eq!(
        h.run(&Pkt::new("203.0.113.60", L4::syn(8443)).bytes()),
        XDP_PASS
    );
    assert_eq!(h.run(&long("203.0.113.61", 8443, 1)), XDP_PASS);
    assert_eq!(h.count("cookie", Reason::SynCookie).packets, 0);
    assert_eq!(h.count("(none)", Reason::Malformed).packets, 7);
    // The whole frame is judged (and answered) as before.
    assert_eq!(
        h.run(&Pkt::new("203.0.113.61", L4::syn(8443)).bytes()),
        XDP_TX
    );
}

/// A segment with ACK from an unverified source, no socket, to a `syncookie` rule: `flags`,
/// sequence `seq`, acknowledging `ack`, with `payload`.
fn ack_segment(src: &str, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Pkt::new(src, L4::Tcp { dport: 8443, flags }).bytes();
    let (th, len_at) = if src.contains(':') {
        (54, V6_LEN)
    } else {
        (34, V4_LEN)
    };
    f[th + 4..th + 8].copy_from_slice(&seq.to_be_bytes());
    f[th + 8..th + 12].copy_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(payload);
    let len = u16::from_be_bytes([f[len_at], f[len_at + 1]]);
    set16(&mut f, len_at, len + payload.len() as u16);
    f
}

/// Netfilter's SYNPROXY (`synproxy` in shield's nftables table) takes every segment with
/// ACK (and no SYN) that no connection holds for a handshake's last ACK and checks its
/// cookie, data, FIN or RST or not: so does XDP. A spoofed flood cannot slip past the
/// cookie check with a byte of payload or a FIN, nor by leaving ACK out (a bare RST or
/// FIN), while a real client's ACK carrying data with a valid cookie verifies it as a bare
/// one does.
fn ack_cookie_round(src: &str, other: &str) {
    let h = Harness::frozen(POLICY, T0);
    assert_eq!(h.run(&Pkt::new(other, L4::syn(8443)).bytes()), XDP_PASS);
    // Each dropped as `bad_cookie`, counted one by one.
    let mut dropped = 0;
    let mut all_dropped = |shapes: &[(&str, u8, &[u8])], ack: u32, why: &str| {
        for (what, flags, payload) in shapes {
            assert_eq!(
                h.run(&ack_segment(src, *flags, 1, ack, payload)),
                XDP_DROP,
                "{src}: {what} {why}"
            );
            dropped += 1;
            assert_eq!(
                h.count("cookie", Reason::BadCookie).packets,
                dropped,
                "{what}"
            );
        }
    };
    all_dropped(
        &[
            ("bare ACK", 0x10u8, &b""[..]),
            ("ACK with data", 0x10, &b"GET / HTTP/1.0\r\n\r\n"[..]),
            ("PSH+ACK with data", 0x18, &b"x"[..]),
            ("FIN+ACK", 0x11, &b""[..]),
            ("RST+ACK", 0x14, &b""[..]),
        ],
        0x1234_5678,
        "with a bad cookie",
    );
    // Segments without ACK carry no cookie, and without a connection the host takes none
    // of them (a listener discards them): dropped alike, not passed to cost a conntrack
    // lookup each.
    let ackless = [
        ("bare RST", 0x04u8, &b""[..]),
        ("bare FIN", 0x01, &b""[..]),
        ("no flags", 0x00, &b""[..]),
        ("PSH with data", 0x08, &b"x"[..]),
    ];
    all_dropped(&ackless, 0, "from an unverified source");
    // A real client: its SYN over the budget gets a cookie; its ACK carries data.
    let (action, out) = h.run_out(&Pkt::new(src, L4::syn(8443)).bytes());
    assert_eq!(action, XDP_TX);
    let th = if src.contains(':') { 54 } else { 34 };
    let cookie = u32::from_be_bytes([out[th + 4], out[th + 5], out[th + 6], out[th + 7]]);
    let before = h.stats().verifications;
    assert_eq!(
        h.run(&ack_segment(src, 0x18, 1, cookie.wrapping_add(1), b"GET /")),
        XDP_PASS,
        "{src}: data with a valid cookie"
    );
    assert_eq!(
        h.stats().verifications,
        before + 1,
        "a valid cookie verifies"
    );
    // A verified source's segments without ACK are the host's to judge.
    for (what, flags, payload) in ackless {
        assert_eq!(
            h.run(&ack_segment(src, flags, 1, 0, payload)),
            XDP_PASS,
            "{src}: {what} from a verified source"
        );
    }
    assert_eq!(h.count("cookie", Reason::BadCookie).packets, dropped);
}

#[test]
fn every_segment_without_syn_of_an_unverified_source_needs_a_valid_cookie_v4() {
    ack_cookie_round("203.0.113.90", "203.0.113.91");
}

#[test]
fn every_segment_without_syn_of_an_unverified_source_needs_a_valid_cookie_v6() {
    ack_cookie_round("2001:db8:90::1", "2001:db8:91::1");
}

/// Segments without ACK are dropped only where the cookie check applies: a `syncookie`
/// rule in monitor mode passes them (counted `would_drop`), a rule without the challenge
/// (here one whose RSTs prove sources) passes them, a VLAN tag changes nothing, and frames
/// the cookie path does not handle (an IPv4 option, a fragment, an IPv6 extension header)
/// pass as before.
#[test]
fn segments_without_ack_are_dropped_only_by_an_enforcing_syncookie_rule() {
    let seg = |src: &str, dport: u16, flags: u8| Pkt::new(src, L4::Tcp { dport, flags });
    let monitor = Harness::frozen(&format!("[defaults]\nmode = \"monitor\"\n{POLICY}"), T0);
    for (i, flags) in [0x04u8, 0x01, 0x00].into_iter().enumerate() {
        let src = format!("203.0.113.{}", 100 + i);
        assert_eq!(monitor.run(&seg(&src, 8443, flags).bytes()), XDP_PASS);
    }
    assert_eq!(monitor.count("cookie", Reason::WouldDrop).packets, 3);
    assert_eq!(monitor.count("cookie", Reason::BadCookie).packets, 0);

    let h = Harness::frozen(POLICY, T0);
    for src in ["203.0.113.110", "2001:db8:110::1"] {
        for flags in [0x04u8, 0x01, 0x00] {
            assert_eq!(
                h.run(&seg(src, 8080, flags).bytes()),
                XDP_PASS,
                "{src}: flags {flags:#x} to a rule without the challenge"
            );
        }
    }
    assert_eq!(h.count("api", Reason::BadCookie).packets, 0);
    let tagged = [
        seg("203.0.113.111", 8443, 0x04).vlans(&[7]).bytes(),
        seg("2001:db8:111::1", 8443, 0x01).vlans(&[7, 8]).bytes(),
    ];
    for f in &tagged {
        assert_eq!(h.run(f), XDP_DROP, "behind VLAN tags");
    }
    assert_eq!(h.count("cookie", Reason::BadCookie).packets, 2);
    let unhandled = [
        (
            "an IPv4 option",
            seg("203.0.113.112", 8443, 0x04).options(1).bytes(),
        ),
        (
            "a fragment",
            seg("203.0.113.113", 8443, 0x04).first_fragment(20).bytes(),
        ),
        (
            "an extension header",
            seg("2001:db8:112::1", 8443, 0x04).ext(&[0]).bytes(),
        ),
    ];
    for (what, f) in &unhandled {
        assert_eq!(h.run(f), XDP_PASS, "{what}: as before the challenge");
    }
    assert_eq!(h.count("cookie", Reason::BadCookie).packets, 2);
}
