//! `challenge = "syncookie"` through `BPF_PROG_TEST_RUN` on the real XDP object: the
//! SYN-ACK XDP sends back (addresses, ports, seq/ack, options, checksums computed here
//! independently), the returning ACK with a good cookie (the source becomes verified) and
//! with a bad one (dropped). Needs root (fails, never skips, without it).

use std::net::IpAddr;

use shield_common::Reason;
use shield_tests::{Harness, XDP_DROP, XDP_PASS, XDP_TX};

/// One token in the budget, never refilled within a test: the second attempt is over it.
const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
unverified = { rate = "1/h", burst = 1 }
challenge = "syncookie"
mss = 1400
"#;

/// The harness with the cookie SYN-ACK offering timestamps (`RULE_SYNCOOKIE_TS`) or not,
/// whatever this kernel's SYNPROXY can use: both paths are tested here on any kernel.
fn harness(timestamps: bool) -> Harness {
    let mut h = Harness::new(POLICY);
    h.tables.syncookie_timestamps = timestamps;
    h.reload(POLICY, 2);
    h
}

/// A bare SYN from `src` takes the budget's one token (passed): later new sources are over it.
fn take_the_token(h: &Harness, src: &str) {
    let src: IpAddr = src.parse().expect("ip");
    assert_eq!(
        h.run(&tcp_frame(src, 0x02, 1, 0, &[])),
        XDP_PASS,
        "the budget's token"
    );
}

const SERVER_V4: [u8; 4] = [198, 51, 100, 1];
const SERVER_V6: &str = "2001:db8:5::1";
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x51];
const SPORT: u16 = 40001;

/// A Linux-like SYN's options: MSS 1460, SACK permitted, timestamps (`tsval`), NOP, window
/// scale 7.
fn linux_options(tsval: u32) -> Vec<u8> {
    let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, 7]);
    o
}

/// An Ethernet frame from `src` to the server's port 8080.
fn tcp_frame(src: IpAddr, flags: u8, seq: u32, ack: u32, options: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&SERVER_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&SPORT.to_be_bytes());
    tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = (((20 + options.len()) / 4) as u8) << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(options);
    match src {
        IpAddr::V4(s) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&SERVER_V4);
            let c = !fold(sum(&ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let c = tcp_checksum(&ip, &tcp);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        IpAddr::V6(s) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            let d: std::net::Ipv6Addr = SERVER_V6.parse().expect("v6");
            ip[24..40].copy_from_slice(&d.octets());
            let c = tcp_checksum(&ip, &tcp);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
    }
    f.extend_from_slice(&tcp);
    f
}

/// RFC 1071 sum of big-endian 16-bit words (odd length padded).
fn sum(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The TCP checksum of `tcp` (its checksum field zero) under IP header `ip`.
fn tcp_checksum(ip: &[u8], tcp: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    if ip[0] >> 4 == 4 {
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&ip[8..40]);
        pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
    }
    let mut t = tcp.to_vec();
    t[16] = 0;
    t[17] = 0;
    !fold(sum(&pseudo) + sum(&t))
}

/// The parts of a SYN-ACK this test checks.
struct SynAck {
    seq: u32,
    ack: u32,
    options: Vec<u8>,
}

/// Checks the XDP_TX'd frame `out` as the SYN-ACK to `syn` (from `client`), returns it.
fn check_syn_ack(out: &[u8], client: IpAddr, syn_seq: u32) -> SynAck {
    assert_eq!(&out[0..6], &CLIENT_MAC, "destination MAC: the client's");
    assert_eq!(&out[6..12], &SERVER_MAC, "source MAC: ours");
    let (ip, tcp) = match client {
        IpAddr::V4(c) => {
            assert_eq!(&out[12..14], &[0x08, 0x00]);
            let ip = &out[14..34];
            assert_eq!(ip[0], 0x45, "IPv4, no options");
            assert_eq!(ip[9], 6, "TCP");
            assert_eq!(&ip[12..16], &SERVER_V4, "from the server's address");
            assert_eq!(&ip[16..20], &c.octets(), "to the client");
            assert_eq!(fold(sum(ip)), 0xffff, "IPv4 header checksum valid");
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            assert_eq!(total, out.len() - 14, "IP total length is the frame's");
            (ip, &out[34..])
        }
        IpAddr::V6(c) => {
            assert_eq!(&out[12..14], &[0x86, 0xdd]);
            let ip = &out[14..54];
            assert_eq!(ip[0] >> 4, 6);
            assert_eq!(ip[6], 6, "TCP");
            let d: std::net::Ipv6Addr = SERVER_V6.parse().expect("v6");
            assert_eq!(&ip[8..24], &d.octets(), "from the server's address");
            assert_eq!(&ip[24..40], &c.octets(), "to the client");
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            assert_eq!(plen, out.len() - 54, "payload length is the frame's");
            (ip, &out[54..])
        }
    };
    assert_eq!(
        u16::from_be_bytes([tcp[0], tcp[1]]),
        8080,
        "source port: ours"
    );
    assert_eq!(
        u16::from_be_bytes([tcp[2], tcp[3]]),
        SPORT,
        "to the client's"
    );
    assert_eq!(tcp[13], 0x12, "SYN|ACK only");
    let doff = usize::from(tcp[12] >> 4) * 4;
    assert_eq!(doff, tcp.len(), "no payload after the header");
    assert_eq!(
        u16::from_be_bytes([tcp[16], tcp[17]]),
        tcp_checksum(ip, tcp),
        "TCP checksum valid"
    );
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    assert_eq!(ack, syn_seq.wrapping_add(1), "acknowledges the SYN");
    SynAck {
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack,
        options: tcp[20..doff].to_vec(),
    }
}

fn verified_conns(h: &Harness) -> u64 {
    h.stats()
        .rules
        .iter()
        .find(|r| r.name == "api")
        .and_then(|r| r.unverified.as_ref())
        .expect("rule api has a budget")
        .verified_conns
}

fn count(h: &Harness, r: Reason) -> u64 {
    h.count("api", r).packets
}

#[test]
fn over_the_budget_a_syn_gets_a_cookie_syn_ack_and_its_ack_verifies_the_source() {
    let h = harness(true);
    let first: IpAddr = "192.0.2.50".parse().expect("ip");
    let client: IpAddr = "192.0.2.51".parse().expect("ip");
    // The budget's one token.
    assert_eq!(
        h.run(&tcp_frame(first, 0x02, 7, 0, &linux_options(1))),
        XDP_PASS
    );
    let syn_seq = 0x1234_5678;
    let tsval = 0x0102_0304;
    let (action, out) = h.run_out(&tcp_frame(client, 0x02, syn_seq, 0, &linux_options(tsval)));
    assert_eq!(action, XDP_TX, "over the budget: answered from XDP");
    let sa = check_syn_ack(&out, client, syn_seq);
    // MSS 1400 (the policy's), SACK permitted + timestamps, NOP + window scale 7.
    assert_eq!(&sa.options[0..4], &[2, 4, 0x05, 0x78], "{:?}", sa.options);
    assert_eq!(&sa.options[4..8], &[4, 2, 8, 10], "{:?}", sa.options);
    let our_ts = u32::from_be_bytes(sa.options[8..12].try_into().expect("4"));
    assert_eq!(
        our_ts & 0x3f,
        7 | 1 << 4,
        "the timestamp carries the client's window scale and SACK"
    );
    assert_eq!(
        u32::from_be_bytes(sa.options[12..16].try_into().expect("4")),
        tsval,
        "echoes the client's timestamp"
    );
    assert_eq!(&sa.options[16..20], &[1, 3, 3, 7], "{:?}", sa.options);
    assert_eq!(count(&h, Reason::SynCookie), 1);

    // A bad cookie, from another never-seen source: dropped.
    let other: IpAddr = "192.0.2.52".parse().expect("ip");
    let bad = tcp_frame(
        other,
        0x10,
        syn_seq.wrapping_add(1),
        sa.seq.wrapping_add(1),
        &[],
    );
    assert_eq!(h.run(&bad), XDP_DROP, "a cookie made for another source");
    let wrong = tcp_frame(
        client,
        0x10,
        syn_seq.wrapping_add(1),
        sa.seq.wrapping_add(2),
        &[],
    );
    assert_eq!(h.run(&wrong), XDP_DROP, "a wrong cookie");
    assert_eq!(count(&h, Reason::BadCookie), 2);

    // The client's ACK: cookie + 1. Passes (on to SYNPROXY) and verifies the source.
    let good = tcp_frame(client, 0x10, sa.ack, sa.seq.wrapping_add(1), &[]);
    assert_eq!(h.run(&good), XDP_PASS, "a valid cookie");
    assert_eq!(verified_conns(&h), 0);
    // Verified: its next connection attempt bypasses the (still empty) budget.
    assert_eq!(
        h.run(&tcp_frame(client, 0x02, 99, 0, &linux_options(5))),
        XDP_PASS
    );
    assert_eq!(verified_conns(&h), 1);
    assert_eq!(count(&h, Reason::SynCookie), 1);
    // An unverified source still gets a cookie, not the connection.
    assert_eq!(
        h.run(&tcp_frame(other, 0x02, 5, 0, &linux_options(5))),
        XDP_TX
    );
}

/// Where the kernel's SYNPROXY cannot use timestamps (`synproxy::timestamps_work`, Linux
/// 6.15 and later): whatever the SYN offers, the SYN-ACK carries the MSS alone, the frame
/// is trimmed to it, and the ACK to its cookie verifies the source.
#[test]
fn without_timestamps_every_syn_ack_carries_the_mss_alone() {
    let h = harness(false);
    take_the_token(&h, "192.0.2.60");
    let c: IpAddr = "192.0.2.61".parse().expect("ip");
    let (sa, len) = answer(&h, &tcp_frame(c, 0x02, 31, 0, &linux_options(3)), c, 31);
    assert_eq!(
        sa.options,
        vec![2, 4, 0x05, 0x78],
        "the Linux layout: MSS only"
    );
    assert_eq!(len, 14 + 20 + 24, "trimmed to the reply");
    let c: IpAddr = "192.0.2.62".parse().expect("ip");
    let mut mac = vec![2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10];
    mac.extend_from_slice(&7u32.to_be_bytes());
    mac.extend_from_slice(&[0, 0, 0, 0, 4, 2, 0, 0]);
    let (sa, _) = answer(&h, &tcp_frame(c, 0x02, 32, 0, &mac), c, 32);
    assert_eq!(
        sa.options,
        vec![2, 4, 0x05, 0x78],
        "the macOS layout: MSS only"
    );
    let c: IpAddr = "2001:db8:84::1".parse().expect("ip");
    let (sa, _) = answer(&h, &tcp_frame(c, 0x02, 33, 0, &linux_options(4)), c, 33);
    assert_eq!(sa.options, vec![2, 4, 0x05, 0x64], "IPv6: MSS only");
    assert_eq!(count(&h, Reason::SynCookie), 3);
}

#[test]
fn ipv6_with_mss_only_gets_mss_only_and_a_bare_syn_no_options() {
    let h = Harness::new(POLICY);
    let first: IpAddr = "2001:db8:77::1".parse().expect("ip");
    let client: IpAddr = "2001:db8:78::1".parse().expect("ip");
    assert_eq!(h.run(&tcp_frame(first, 0x02, 1, 0, &[])), XDP_PASS);
    let mss_only = [2, 4, 0x05, 0xa0];
    let (action, out) = h.run_out(&tcp_frame(client, 0x02, 0xffff_ffff, 0, &mss_only));
    assert_eq!(action, XDP_TX);
    let sa = check_syn_ack(&out, client, 0xffff_ffff);
    assert_eq!(sa.ack, 0, "seq + 1 wraps");
    // IPv6: the policy's MSS less the 20 bytes of larger header; no timestamps, so no
    // window scaling or SACK either.
    assert_eq!(sa.options, vec![2, 4, 0x05, 0x64]);
    // A SYN without options: no room in its frame for any, so none.
    let bare: IpAddr = "2001:db8:7a::1".parse().expect("ip");
    let (action, out) = h.run_out(&tcp_frame(bare, 0x02, 1, 0, &[]));
    assert_eq!(action, XDP_TX);
    let bare_sa = check_syn_ack(&out, bare, 1);
    assert!(bare_sa.options.is_empty(), "{:?}", bare_sa.options);
    assert_eq!(out.len(), 14 + 40 + 20, "the SYN's own length");
    let good = tcp_frame(client, 0x10, 0, sa.seq.wrapping_add(1), &[]);
    assert_eq!(h.run(&good), XDP_PASS);
    let bad = tcp_frame(client, 0x10, 0, sa.seq ^ 0x00ff_0000, &[]);
    // The source is verified now: its later ACKs are not checked.
    assert_eq!(h.run(&bad), XDP_PASS);
    let stranger: IpAddr = "2001:db8:79::1".parse().expect("ip");
    let bad = tcp_frame(stranger, 0x10, 0, sa.seq.wrapping_add(1), &[]);
    assert_eq!(h.run(&bad), XDP_DROP);
    assert_eq!(count(&h, Reason::BadCookie), 1);
}

#[test]
fn what_the_cookie_path_does_not_answer_is_dropped_as_before() {
    let h = Harness::new(POLICY);
    let first: IpAddr = "192.0.2.60".parse().expect("ip");
    assert_eq!(h.run(&tcp_frame(first, 0x02, 1, 0, &[])), XDP_PASS);
    // SYN with FIN: not a handshake the cookie path answers.
    let syn_fin = tcp_frame("192.0.2.61".parse().expect("ip"), 0x03, 1, 0, &[]);
    assert_eq!(h.run(&syn_fin), XDP_DROP);
    assert_eq!(count(&h, Reason::UnverifiedLimit), 1);
    assert_eq!(count(&h, Reason::SynCookie), 0);
    // Monitor mode answers nothing: it passes (would_drop).
    let h = Harness::new(&format!("[defaults]\nmode = \"monitor\"\n{POLICY}"));
    assert_eq!(h.run(&tcp_frame(first, 0x02, 1, 0, &[])), XDP_PASS);
    let syn = tcp_frame("192.0.2.62".parse().expect("ip"), 0x02, 1, 0, &[]);
    assert_eq!(h.run(&syn), XDP_PASS);
    assert_eq!(count(&h, Reason::WouldDrop), 1);
    assert_eq!(count(&h, Reason::SynCookie), 0);
}

/// The reply options an IPv4 SYN with timestamps gets: MSS 1400, SACK-permitted or two
/// NOPs, the timestamps (ours carrying `low_bits`, the client's echoed), window scale 7
/// if `wscale`.
fn check_ts_options(got: &[u8], sack: bool, low_bits: u32, tsval: u32, wscale: bool) {
    check_ts_options_mss(got, 1400, sack, low_bits, tsval, wscale);
}

/// `check_ts_options` with the MSS given (IPv6: the policy's less 20).
fn check_ts_options_mss(got: &[u8], mss: u16, sack: bool, low_bits: u32, tsval: u32, wscale: bool) {
    let [m0, m1] = mss.to_be_bytes();
    assert_eq!(&got[0..4], &[2, 4, m0, m1], "MSS: {got:?}");
    let lead: [u8; 2] = if sack { [4, 2] } else { [1, 1] };
    assert_eq!(&got[4..6], &lead, "SACK-permitted or NOPs: {got:?}");
    assert_eq!(&got[6..8], &[8, 10], "timestamps: {got:?}");
    let ours = u32::from_be_bytes(got[8..12].try_into().expect("4"));
    assert_eq!(
        ours & 0x3f,
        low_bits,
        "the timestamp's low bits: window scale and SACK"
    );
    assert_eq!(
        u32::from_be_bytes(got[12..16].try_into().expect("4")),
        tsval,
        "echoes the client's timestamp"
    );
    if wscale {
        assert_eq!(&got[16..], &[1, 3, 3, 7], "window scale: {got:?}");
    } else {
        assert_eq!(got.len(), 16, "no window scale: {got:?}");
    }
}

/// Answers `frame` (over the budget) and checks the SYN-ACK; its ACK (the cookie + 1)
/// must pass: the cookie is the kernel's for this SYN.
fn answer(h: &Harness, frame: &[u8], client: IpAddr, seq: u32) -> (SynAck, usize) {
    let (action, out) = h.run_out(frame);
    assert_eq!(action, XDP_TX, "over the budget: answered from XDP");
    let sa = check_syn_ack(&out, client, seq);
    let good = tcp_frame(client, 0x10, sa.ack, sa.seq.wrapping_add(1), &[]);
    assert_eq!(h.run(&good), XDP_PASS, "the ACK to this SYN-ACK's cookie");
    (sa, out.len())
}

#[test]
fn option_layouts_other_than_linux_get_the_options_they_asked_for() {
    let h = harness(true);
    take_the_token(&h, "192.0.2.70");
    let ts: u32 = 0x0a0b_0c0d;
    let t = ts.to_be_bytes();
    // Windows: MSS, NOP, window scale 8, NOP, NOP, SACK-permitted; no timestamps, so only
    // the MSS, and the frame trimmed to it (12 option bytes in, 4 out).
    let c: IpAddr = "192.0.2.71".parse().expect("ip");
    let windows = [2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2];
    let (sa, len) = answer(&h, &tcp_frame(c, 0x02, 11, 0, &windows), c, 11);
    assert_eq!(sa.options, vec![2, 4, 0x05, 0x78]);
    assert_eq!(len, 14 + 20 + 24, "trimmed to the reply");
    // Linux with SACK off: the Linux option length, another layout (NOPs where SACK was).
    let c: IpAddr = "192.0.2.72".parse().expect("ip");
    let mut no_sack = vec![2, 4, 5, 0xb4, 1, 1, 8, 10];
    no_sack.extend_from_slice(&t);
    no_sack.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, 7]);
    let (sa, len) = answer(&h, &tcp_frame(c, 0x02, 12, 0, &no_sack), c, 12);
    check_ts_options(&sa.options, false, 7, ts, true);
    assert_eq!(len, 14 + 20 + 40);
    // macOS: MSS, NOP, window scale 6, NOP, NOP, timestamps, SACK-permitted, EOL (24
    // bytes); the reply keeps Linux's order in 20.
    let c: IpAddr = "192.0.2.73".parse().expect("ip");
    let mut mac = vec![2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10];
    mac.extend_from_slice(&t);
    mac.extend_from_slice(&[0, 0, 0, 0, 4, 2, 0, 0]);
    let (sa, len) = answer(&h, &tcp_frame(c, 0x02, 13, 0, &mac), c, 13);
    check_ts_options(&sa.options, true, 6 | 1 << 4, ts, true);
    assert_eq!(len, 14 + 20 + 40, "trimmed from 44 option bytes to 40");
    // Timestamps and SACK without window scaling: 0xf in the low bits, no window scale
    // option, the SYN's own length (16 option bytes in, 16 out).
    let c: IpAddr = "192.0.2.74".parse().expect("ip");
    let mut no_ws = vec![2, 4, 5, 0xb4, 4, 2, 8, 10];
    no_ws.extend_from_slice(&t);
    no_ws.extend_from_slice(&[0, 0, 0, 0]);
    let (sa, len) = answer(&h, &tcp_frame(c, 0x02, 14, 0, &no_ws), c, 14);
    check_ts_options(&sa.options, true, 0xf | 1 << 4, ts, false);
    assert_eq!(len, 14 + 20 + 36);
    // The Linux layout itself (recognised without the options loop) with a window scale
    // above RFC 7323's 14: clamped to 14, as the loop does.
    let c: IpAddr = "192.0.2.75".parse().expect("ip");
    let mut big_ws = linux_options(ts);
    big_ws[19] = 15;
    let (sa, _) = answer(&h, &tcp_frame(c, 0x02, 15, 0, &big_ws), c, 15);
    check_ts_options(&sa.options, true, 14 | 1 << 4, ts, true);
    assert_eq!(count(&h, Reason::SynCookie), 5);
}

#[test]
fn frames_longer_than_the_syn_are_trimmed_to_the_reply_and_vlan_tags_kept() {
    let h = harness(true);
    take_the_token(&h, "192.0.2.80");
    // A SYN without options padded to Ethernet's 60 bytes: the padding leaves room for
    // the MSS option, and the frame ends with the reply (58 bytes).
    let c: IpAddr = "192.0.2.81".parse().expect("ip");
    let mut padded = tcp_frame(c, 0x02, 21, 0, &[]);
    padded.resize(60, 0);
    let (sa, len) = answer(&h, &padded, c, 21);
    assert_eq!(sa.options, vec![2, 4, 0x05, 0x78]);
    assert_eq!(len, 58);
    // The Linux layout with 8 bytes of trailing padding: the same 40 option bytes, the
    // padding cut off.
    let c: IpAddr = "192.0.2.82".parse().expect("ip");
    let mut linux_padded = tcp_frame(c, 0x02, 22, 0, &linux_options(9));
    linux_padded.extend_from_slice(&[0; 8]);
    let (sa, len) = answer(&h, &linux_padded, c, 22);
    check_ts_options(&sa.options, true, 7 | 1 << 4, 9, true);
    assert_eq!(len, 14 + 20 + 40);
    // IPv6 behind an 802.1Q tag (the IP header at 18): answered, the tag kept as it was.
    let c: IpAddr = "2001:db8:83::1".parse().expect("ip");
    let mut tagged = tcp_frame(c, 0x02, 23, 0, &linux_options(10));
    let tag = [0x81, 0x00, 0x00, 0x64];
    tagged.splice(12..12, tag);
    let (action, out) = h.run_out(&tagged);
    assert_eq!(action, XDP_TX, "a tagged SYN over the budget: answered");
    assert_eq!(&out[12..16], &tag, "the VLAN tag kept");
    let mut untagged = out.clone();
    untagged.drain(12..16);
    let sa = check_syn_ack(&untagged, c, 23);
    check_ts_options_mss(&sa.options, 1380, true, 7 | 1 << 4, 10, true);
    assert_eq!(out.len(), 18 + 40 + 40, "the SYN's own length");
    assert_eq!(count(&h, Reason::SynCookie), 3);
}

/// Without `RULE_SYNCOOKIE_TS`, every layout the options loop reads (Windows, Linux without
/// SACK, macOS, timestamps without window scaling, a window scale above 14, trailing
/// padding, a VLAN tag) gets the MSS alone in a frame trimmed to it, and its ACK verifies
/// the source: nothing of the timestamp block leaks into the reply.
#[test]
fn without_timestamps_odd_layouts_get_the_mss_alone() {
    let h = harness(false);
    let first: IpAddr = "192.0.2.90".parse().expect("ip");
    assert_eq!(h.run(&tcp_frame(first, 0x02, 1, 0, &[])), XDP_PASS);
    let t = 0x0a0b_0c0du32.to_be_bytes();
    let ts_block = |lead: [u8; 2], tail: &[u8]| {
        let mut o = vec![2, 4, 5, 0xb4];
        o.extend_from_slice(&lead);
        o.extend_from_slice(&[8, 10]);
        o.extend_from_slice(&t);
        o.extend_from_slice(&[0, 0, 0, 0]);
        o.extend_from_slice(tail);
        o
    };
    let mut mac = vec![2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10];
    mac.extend_from_slice(&t);
    mac.extend_from_slice(&[0, 0, 0, 0, 4, 2, 0, 0]);
    let mut big_ws = linux_options(5);
    big_ws[19] = 15;
    let layouts: [(&str, Vec<u8>, usize); 6] = [
        ("windows", vec![2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2], 0),
        ("linux without SACK", ts_block([1, 1], &[1, 3, 3, 7]), 0),
        ("macOS", mac, 0),
        (
            "timestamps without window scaling",
            ts_block([4, 2], &[]),
            0,
        ),
        ("window scale 15", big_ws, 0),
        ("linux with trailing padding", linux_options(6), 8),
    ];
    for (i, (what, options, pad)) in layouts.into_iter().enumerate() {
        let c = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 91 + i as u8));
        let seq = 40 + i as u32;
        let mut frame = tcp_frame(c, 0x02, seq, 0, &options);
        frame.resize(frame.len() + pad, 0);
        let (sa, len) = answer(&h, &frame, c, seq);
        assert_eq!(sa.options, vec![2, 4, 0x05, 0x78], "{what}: the MSS alone");
        assert_eq!(len, 14 + 20 + 24, "{what}: trimmed to the reply");
    }
    // IPv6 behind an 802.1Q tag: the tag kept, the MSS alone.
    let c: IpAddr = "2001:db8:85::1".parse().expect("ip");
    let mut tagged = tcp_frame(c, 0x02, 50, 0, &linux_options(11));
    let tag = [0x81, 0x00, 0x00, 0x64];
    tagged.splice(12..12, tag);
    let (action, out) = h.run_out(&tagged);
    assert_eq!(action, XDP_TX, "a tagged SYN over the budget: answered");
    assert_eq!(&out[12..16], &tag, "the VLAN tag kept");
    let mut untagged = out.clone();
    untagged.drain(12..16);
    let sa = check_syn_ack(&untagged, c, 50);
    assert_eq!(
        sa.options,
        vec![2, 4, 0x05, 0x64],
        "IPv6, tagged: the MSS alone"
    );
    assert_eq!(out.len(), 18 + 40 + 24, "trimmed to the reply");
    assert_eq!(count(&h, Reason::SynCookie), 7);
}
