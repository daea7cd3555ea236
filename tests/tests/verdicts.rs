//! `BPF_PROG_TEST_RUN` verdict tests: the real XDP object, crafted frames, table-driven
//! fixtures `{name, policy, packets with expected verdicts, expected counters}`.
//! Needs root (fails, never skips, without it).

use shield_common::Reason::{self, *};
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS};

/// Rule `api`: tcp/8080 connections 1/s burst 3; rule `dns`: udp/53 packets 1/s burst 2;
/// `ping`: icmp packets 1/s burst 1; allow 198.51.100.0/28, deny 203.0.113.0/24 and
/// 2001:db8:dead::/48 (with 198.51.100.8/29 both allowed and denied).
const BASE: &str = r#"
[lists]
allow = ["198.51.100.0/28", "2001:db8:a11::/48"]
deny = ["203.0.113.0/24", "198.51.100.8/29", "2001:db8:dead::/48"]
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080, "9000-9009"]
connections = { rate = "1/s", burst = 3 }
[[rule]]
name = "dns"
protocol = "udp"
ports = [53]
packets = { rate = "1/s", burst = 2 }
[[rule]]
name = "ping"
protocol = "icmp"
packets = { rate = "1/s", burst = 1 }
"#;

struct Case {
    name: &'static str,
    policy: &'static str,
    /// (packet, times sent, expected action of each)
    packets: Vec<(Pkt, u32, &'static [u32])>,
    /// (rule, reason, packets) — every other (rule, reason) must stay 0.
    counters: &'static [(&'static str, Reason, u64)],
}

fn p(src: &str, l4: L4) -> Pkt {
    Pkt::new(src, l4)
}

const P: u32 = XDP_PASS;
const D: u32 = XDP_DROP;

fn cases() -> Vec<Case> {
    let syn = || L4::syn(8080);
    vec![
        Case {
            name: "non-IP frame passes untracked",
            policy: BASE,
            packets: vec![(p("192.0.2.1", syn()).ethertype(0x0806), 1, &[P])],
            counters: &[("(none)", Pass, 1)],
        },
        Case {
            name: "IPv4 SYN flood: burst passes, the rest is conn_limit",
            policy: BASE,
            packets: vec![(p("192.0.2.1", syn()), 5, &[P, P, P, D, D])],
            counters: &[("api", Pass, 3), ("api", ConnLimit, 2)],
        },
        Case {
            name: "established traffic (ACK) is not a connection attempt",
            policy: BASE,
            packets: vec![
                (p("192.0.2.1", syn()), 4, &[P, P, P, D]),
                (p("192.0.2.1", L4::ack(8080)), 3, &[P, P, P]),
                (
                    p(
                        "192.0.2.1",
                        L4::Tcp {
                            dport: 8080,
                            flags: 0x12,
                        },
                    ),
                    1,
                    &[P],
                ),
            ],
            counters: &[("api", Pass, 7), ("api", ConnLimit, 1)],
        },
        Case {
            name: "sources are limited independently",
            policy: BASE,
            packets: vec![
                (p("192.0.2.1", syn()), 4, &[P, P, P, D]),
                (p("192.0.2.2", syn()), 3, &[P, P, P]),
            ],
            counters: &[("api", Pass, 6), ("api", ConnLimit, 1)],
        },
        Case {
            name: "port ranges map to their rule",
            policy: BASE,
            packets: vec![
                (p("192.0.2.1", L4::syn(9000)), 2, &[P, P]),
                (p("192.0.2.1", L4::syn(9009)), 2, &[P, D]),
            ],
            counters: &[("api", Pass, 3), ("api", ConnLimit, 1)],
        },
        Case {
            name: "unmatched port passes untracked",
            policy: BASE,
            packets: vec![(p("192.0.2.1", L4::syn(22)), 10, &[P; 10])],
            counters: &[("(none)", Pass, 10)],
        },
        Case {
            name: "IPv6 sources rotating inside one /64 share a limit",
            policy: BASE,
            packets: vec![
                (p("2001:db8:1:2::1", syn()), 1, &[P]),
                (p("2001:db8:1:2::2", syn()), 1, &[P]),
                (p("2001:db8:1:2:ffff::3", syn()), 1, &[P]),
                (p("2001:db8:1:2::4", syn()), 1, &[D]),
                (p("2001:db8:1:3::1", syn()), 1, &[P]),
            ],
            counters: &[("api", Pass, 4), ("api", ConnLimit, 1)],
        },
        Case {
            name: "per-rule /24 scope groups IPv4 sources",
            policy: r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
ipv4_prefix = 24
connections = { rate = "1/s", burst = 2 }
"#,
            packets: vec![
                (p("192.0.2.1", syn()), 1, &[P]),
                (p("192.0.2.200", syn()), 2, &[P, D]),
                (p("192.0.3.1", syn()), 1, &[P]),
            ],
            counters: &[("api", Pass, 3), ("api", ConnLimit, 1)],
        },
        Case {
            name: "single and double VLAN tags are parsed",
            policy: BASE,
            packets: vec![
                (p("192.0.2.1", syn()).vlans(&[100]), 2, &[P, P]),
                (p("192.0.2.1", syn()).vlans(&[100, 200]), 2, &[P, D]),
                (p("2001:db8:9::1", syn()).vlans(&[7, 8]), 4, &[P, P, P, D]),
            ],
            counters: &[("api", Pass, 6), ("api", ConnLimit, 2)],
        },
        Case {
            name: "IPv4 options are skipped to find the port",
            policy: BASE,
            packets: vec![
                (p("192.0.2.1", syn()).options(1), 2, &[P, P]),
                (p("192.0.2.1", syn()).options(10), 2, &[P, D]),
            ],
            counters: &[("api", Pass, 3), ("api", ConnLimit, 1)],
        },
        Case {
            name: "IPv6 extension header chain is followed",
            policy: BASE,
            packets: vec![(
                p("2001:db8:9::1", syn()).ext(&[0, 60, 43, 51, 60]),
                4,
                &[P, P, P, D],
            )],
            counters: &[("api", Pass, 3), ("api", ConnLimit, 1)],
        },
        Case {
            // The kernel follows any chain: a SYN behind nine headers would reach TCP with
            // no rule judging it.
            name: "IPv6 extension chain beyond the bound is dropped as hidden_header",
            policy: BASE,
            packets: vec![
                (
                    p("2001:db8:9::1", syn()).ext(&[60, 60, 60, 60, 60, 60, 60, 60, 60]),
                    3,
                    &[D; 3],
                ),
                (p("2001:db8:9::1", syn()).ext(&[60; 8]), 1, &[P]),
            ],
            counters: &[("(none)", HiddenHeader, 3), ("api", Pass, 1)],
        },
        Case {
            // The kernel strips any number of priority tags: a third tag would smuggle the
            // packet past every list, ban and limit.
            name: "a third VLAN tag is dropped as hidden_header",
            policy: BASE,
            packets: vec![
                (p("203.0.113.5", syn()).vlans(&[0, 0, 0]), 2, &[D; 2]),
                (p("192.0.2.1", syn()).vlans(&[0, 0]), 1, &[P]),
            ],
            counters: &[("(none)", HiddenHeader, 2), ("api", Pass, 1)],
        },
        Case {
            name: "IPv4 non-first fragments skip port rules",
            policy: BASE,
            packets: vec![
                (p("192.0.2.1", syn()), 4, &[P, P, P, D]),
                (p("192.0.2.1", syn()).fragment(185), 3, &[P, P, P]),
            ],
            counters: &[("api", Pass, 3), ("api", ConnLimit, 1), ("(none)", Pass, 3)],
        },
        Case {
            name: "non-first fragments from denied sources are dropped",
            policy: BASE,
            packets: vec![
                (p("203.0.113.9", syn()).fragment(10), 1, &[D]),
                (p("2001:db8:dead::9", syn()).fragment(10), 1, &[D]),
            ],
            counters: &[("(none)", Deny, 2)],
        },
        Case {
            name: "IPv6 non-first fragment skips port rules",
            policy: BASE,
            packets: vec![(p("2001:db8:9::1", syn()).fragment(100), 5, &[P; 5])],
            counters: &[("(none)", Pass, 5)],
        },
        Case {
            name: "RFC 1858: a TCP first fragment without the whole TCP header is bad_fragment",
            policy: BASE,
            packets: vec![
                (p("192.0.2.1", syn()).first_fragment(8), 4, &[D; 4]),
                (p("192.0.2.1", syn()).first_fragment(19), 1, &[D]),
                (
                    p("192.0.2.1", L4::Udp { dport: 53 }).first_fragment(4),
                    1,
                    &[D],
                ),
            ],
            counters: &[("(none)", BadFragment, 6)],
        },
        Case {
            name: "RFC 1858: a TCP fragment at offset 1 is bad_fragment, offset 2 is not",
            policy: BASE,
            packets: vec![
                (p("192.0.2.1", syn()).fragment(1), 2, &[D, D]),
                (p("192.0.2.1", syn()).fragment(2), 1, &[P]),
                (p("192.0.2.1", L4::Udp { dport: 53 }).fragment(1), 1, &[P]),
            ],
            counters: &[("(none)", BadFragment, 2), ("(none)", Pass, 2)],
        },
        Case {
            name: "a first fragment with the whole TCP header is judged by its rule",
            policy: BASE,
            packets: vec![(p("192.0.2.1", syn()).first_fragment(20), 4, &[P, P, P, D])],
            counters: &[("api", Pass, 3), ("api", ConnLimit, 1)],
        },
        Case {
            name: "RFC 7112: IPv6 first fragments without the transport header are bad_fragment",
            policy: BASE,
            packets: vec![
                (p("2001:db8:9::1", syn()).first_fragment(8), 2, &[D, D]),
                (
                    p("2001:db8:9::1", syn()).first_fragment(0).ext(&[60]),
                    1,
                    &[D],
                ),
                (p("2001:db8:9::1", syn()).fragment(1), 1, &[D]),
                (
                    p("2001:db8:9::1", syn()).first_fragment(20),
                    4,
                    &[P, P, P, D],
                ),
            ],
            counters: &[
                ("(none)", BadFragment, 4),
                ("api", Pass, 3),
                ("api", ConnLimit, 1),
            ],
        },
        Case {
            name: "bad fragments: deny still counts first, global monitor only counts",
            policy: r#"
[defaults]
mode = "monitor"
[lists]
deny = ["203.0.113.0/24"]
"#,
            packets: vec![
                (p("203.0.113.1", syn()).first_fragment(8), 1, &[P]),
                (p("192.0.2.1", syn()).first_fragment(8), 2, &[P, P]),
            ],
            counters: &[("(none)", WouldDrop, 3)],
        },
        Case {
            name: "deny list drops, allow list is never limited",
            policy: BASE,
            packets: vec![
                (p("203.0.113.77", syn()), 2, &[D, D]),
                (p("2001:db8:dead:1::1", L4::ack(8080)), 1, &[D]),
                (p("198.51.100.1", syn()), 6, &[P; 6]),
                (p("2001:db8:a11::1", syn()), 6, &[P; 6]),
            ],
            counters: &[("api", Deny, 3), ("api", Allow, 12)],
        },
        Case {
            name: "allow beats deny",
            policy: BASE,
            packets: vec![(p("198.51.100.9", syn()), 5, &[P; 5])],
            counters: &[("api", Allow, 5)],
        },
        Case {
            name: "UDP packet limit",
            policy: BASE,
            packets: vec![(p("192.0.2.1", L4::Udp { dport: 53 }), 4, &[P, P, D, D])],
            counters: &[("dns", Pass, 2), ("dns", PktLimit, 2)],
        },
        Case {
            name: "ICMP and ICMPv6 packet limits",
            policy: BASE,
            packets: vec![
                (p("192.0.2.1", L4::Echo), 2, &[P, D]),
                (p("2001:db8:9::1", L4::Echo), 2, &[P, D]),
            ],
            counters: &[("ping", Pass, 2), ("ping", PktLimit, 2)],
        },
        Case {
            name: "IPv6 neighbour discovery is never limited by the icmp rule",
            policy: BASE,
            packets: vec![
                (p("2001:db8:9::1", L4::Icmp6 { ty: 135 }), 4, &[P; 4]),
                (p("2001:db8:9::1", L4::Icmp6 { ty: 136 }), 4, &[P; 4]),
                (p("2001:db8:9::1", L4::Echo), 2, &[P, D]),
            ],
            counters: &[
                ("(none)", Pass, 8),
                ("ping", Pass, 1),
                ("ping", PktLimit, 1),
            ],
        },
        Case {
            name: "monitor rule passes but counts would_drop",
            policy: r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
mode = "monitor"
connections = { rate = "1/s", burst = 2 }
"#,
            packets: vec![(p("192.0.2.1", syn()), 5, &[P; 5])],
            counters: &[("api", Pass, 2), ("api", WouldDrop, 3)],
        },
        Case {
            name: "global monitor: deny and limits only count would_drop",
            policy: r#"
[defaults]
mode = "monitor"
[lists]
deny = ["203.0.113.0/24"]
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/s", burst = 1 }
"#,
            packets: vec![
                (p("203.0.113.1", syn()), 2, &[P, P]),
                (p("192.0.2.1", syn()), 3, &[P; 3]),
            ],
            counters: &[("api", WouldDrop, 4), ("api", Pass, 1)],
        },
        Case {
            name: "a rule set to enforce is enforced under global monitor",
            policy: r#"
[defaults]
mode = "monitor"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
mode = "enforce"
connections = { rate = "1/s", burst = 1 }
"#,
            packets: vec![(p("192.0.2.1", syn()), 3, &[P, D, D])],
            counters: &[("api", Pass, 1), ("api", ConnLimit, 2)],
        },
        Case {
            name: "sustained bucket caps what the rate bucket allows",
            policy: r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1000/s", burst = 100, sustained = "3/min" }
"#,
            packets: vec![(p("192.0.2.1", syn()), 5, &[P, P, P, D, D])],
            counters: &[("api", Pass, 3), ("api", ConnLimit, 2)],
        },
        Case {
            name: "catch-all rule takes every other port, specific rule wins",
            policy: r#"
[[rule]]
name = "web"
protocol = "tcp"
ports = [80]
connections = { rate = "1/s", burst = 1 }
[[rule]]
name = "rest"
protocol = "tcp"
connections = { rate = "1/s", burst = 2 }
"#,
            packets: vec![
                (p("192.0.2.1", L4::syn(80)), 2, &[P, D]),
                (p("192.0.2.1", L4::syn(12345)), 3, &[P, P, D]),
            ],
            counters: &[
                ("web", Pass, 1),
                ("web", ConnLimit, 1),
                ("rest", Pass, 2),
                ("rest", ConnLimit, 1),
            ],
        },
        Case {
            name: "combined connection and packet limits",
            policy: r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/s", burst = 5 }
packets = { rate = "1/s", burst = 3 }
"#,
            packets: vec![
                (p("192.0.2.1", syn()), 2, &[P, P]),
                (p("192.0.2.1", L4::ack(8080)), 2, &[P, D]),
                (p("192.0.2.1", syn()), 1, &[D]),
            ],
            counters: &[("api", Pass, 3), ("api", PktLimit, 2)],
        },
    ]
}

fn check_case(case: &Case) -> Vec<String> {
    let h = Harness::new(case.policy);
    let mut errors = Vec::new();
    for (step, (pkt, times, expected)) in case.packets.iter().enumerate() {
        assert_eq!(
            *times as usize,
            expected.len(),
            "{}: fixture mismatch",
            case.name
        );
        let frame = pkt.bytes();
        for (i, want) in expected.iter().enumerate() {
            let got = h.run(&frame);
            if got != *want {
                errors.push(format!(
                    "{}: step {step} packet {i} from {} ({:?}): verdict {got}, expected {want} (1 = drop, 2 = pass)",
                    case.name, pkt.src, pkt.l4
                ));
            }
        }
    }
    let stats = h.stats();
    for rule in &stats.rules {
        for reason in Reason::ALL {
            let want: u64 = case
                .counters
                .iter()
                .filter(|(r, why, _)| *r == rule.name && *why == reason)
                .map(|(_, _, n)| *n)
                .max()
                .unwrap_or(0);
            let got = rule.counters[reason.name()].packets;
            if got != want {
                errors.push(format!(
                    "{}: counter {}/{} = {got}, expected {want}",
                    case.name,
                    rule.name,
                    reason.name()
                ));
            }
        }
    }
    errors
}

#[test]
fn verdicts_and_counters_match_the_policy() {
    let mut errors = Vec::new();
    let cases = cases();
    for case in &cases {
        errors.extend(check_case(case));
    }
    assert!(
        errors.is_empty(),
        "{} problems:\n{}",
        errors.len(),
        errors.join("\n")
    );
    eprintln!("{} verdict fixtures passed", cases.len());
}

#[test]
fn bytes_are_counted_per_rule_and_reason() {
    let h = Harness::new(BASE);
    let small = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    let big = Pkt::new("192.0.2.1", L4::syn(8080)).options(10).bytes();
    for f in [&small, &big, &small, &big] {
        h.run(f);
    }
    let pass = h.count("api", Pass);
    let drop = h.count("api", ConnLimit);
    assert_eq!(
        pass.bytes,
        (2 * small.len() + big.len()) as u64,
        "pass bytes"
    );
    assert_eq!(drop.bytes, big.len() as u64, "conn_limit bytes");
}

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

#[test]
fn bucket_refills_with_time() {
    let h = Harness::new(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "10/s", burst = 2 }
"#,
    );
    let f = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    assert_eq!(h.run(&f), XDP_PASS);
    assert_eq!(h.run(&f), XDP_PASS);
    assert_eq!(h.run(&f), XDP_DROP, "burst of 2 exhausted");
    // 10/s: one token every 100 ms.
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert_eq!(
        h.run(&f),
        XDP_PASS,
        "a token must be back after 150 ms at 10/s"
    );
}

#[test]
fn known_source_is_updated_in_place() {
    let h = Harness::new(BASE);
    let f = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..10 {
        h.run(&f);
    }
    let s = h.stats();
    assert_eq!(s.tracked_sources, 1, "one source, one entry");
    assert_eq!(s.top_sources.len(), 1);
    assert_eq!(s.top_sources[0].source, "192.0.2.1/32");
    assert_eq!(s.top_sources[0].rule, "api");
    assert_eq!(s.top_sources[0].limited, 7);
}

#[test]
fn stats_watch_prints_per_second_rates() {
    let h = Harness::new(BASE);
    let frame = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..5 {
        h.run(&frame);
    }
    let mut child = std::process::Command::new(shield_tests::shield_bin())
        .args(["stats", "--watch", "1", "--bpffs"])
        .arg(&h.bpffs.path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("shield stats --watch");
    // Traffic between the first and the second refresh shows up as a rate.
    std::thread::sleep(std::time::Duration::from_millis(500));
    for _ in 0..20 {
        h.run(&frame);
    }
    std::thread::sleep(std::time::Duration::from_millis(2000));
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    let blocks = text.matches("--- ").count();
    assert!(blocks >= 2, "--watch must refresh every second: {text}");
    assert!(text.contains("PACKETS/S"), "{text}");
    // The first refresh has no earlier reading: its rows show no rate, not a made-up 0.0.
    let first = text.split("--- ").nth(1).unwrap_or("");
    assert!(
        first.contains("per-second rates from the next refresh")
            && first
                .lines()
                .any(|l| l.contains("conn_limit") && l.split_whitespace().last() == Some("-")),
        "the first refresh must show no rate: {first}"
    );
    assert!(
        !text
            .split("--- ")
            .nth(2)
            .unwrap_or("")
            .contains("next refresh"),
        "{text}"
    );
    // 20 SYNs refused in one refresh interval: a conn_limit rate of about 20/s.
    let rate = text
        .lines()
        .filter(|l| l.contains("api") && l.contains("conn_limit"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .fold(0.0f64, f64::max);
    assert!(
        (19.0..=21.0).contains(&rate),
        "expected a conn_limit rate of 20/s: {text}"
    );
}

/// Packets without a port (non-first fragments, ESP, GRE)
/// belong to no rule, whichever policy half is active: a catch-all TCP rule's slot for
/// port 0 in the other half must never judge them.
#[test]
fn packets_without_a_port_stay_unmatched_across_reloads() {
    const CATCH_ALL: &str = r#"
[[rule]]
name = "tcp-all"
protocol = "tcp"
packets = { rate = "1/s", burst = 1 }
escalation = { strikes = 1, window = "1m", ban = "1h", scope = "host" }
"#;
    let mut h = Harness::new(CATCH_ALL);
    let frames = [
        Pkt::new("192.0.2.1", L4::syn(8080)).fragment(185),
        Pkt::new("2001:db8:9::1", L4::syn(8080)).fragment(100),
        Pkt::new(
            "192.0.2.2",
            L4::Other {
                proto: 50,
                payload: vec![0; 16],
            },
        ),
        Pkt::new(
            "192.0.2.3",
            L4::Other {
                proto: 47,
                payload: vec![0; 8],
            },
        ),
    ];
    let mut sent = 0;
    for reloads in 0..=3u32 {
        if reloads > 0 {
            h.reload(CATCH_ALL, 1 + reloads);
        }
        for f in &frames {
            for i in 0..3 {
                assert_eq!(
                    h.run(&f.bytes()),
                    XDP_PASS,
                    "after {reloads} reloads, packet {i} without a port from {} was dropped: it was judged by the catch-all TCP rule",
                    f.src
                );
                sent += 1;
            }
        }
        let s = h.stats();
        let none = &s.rules[0].counters;
        assert_eq!(
            none["pass"].packets, sent,
            "after {reloads} reloads: packets without a port must count as (none)/pass"
        );
        let tcp = s
            .rules
            .iter()
            .find(|r| r.name == "tcp-all")
            .expect("rule tcp-all");
        assert!(
            tcp.counters.values().all(|c| c.packets == 0),
            "after {reloads} reloads the catch-all TCP rule counted packets without a port: {:?}",
            tcp.counters
        );
        assert_eq!(s.tracked_sources, 0, "no per-source state for them");
        assert!(h.bans().is_empty(), "nobody banned");
    }
}
