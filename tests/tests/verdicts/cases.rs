//! The verdict fixtures: a policy, packets with the verdicts they must get, the counters they must leave.

use super::*;

pub(super) fn cases() -> Vec<Case> {
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
