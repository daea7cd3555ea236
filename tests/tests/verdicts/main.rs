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

mod cases;
use cases::cases;

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

mod counting;
mod frames;
