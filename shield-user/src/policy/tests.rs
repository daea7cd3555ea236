//! Policy parsing and validation: the shipped example, every class of bad input (with the
//! file:line:column the user sees), and what the compiled map images contain.

use super::*;
use shield_common::{
    B_CONN, B_CONN_SUSTAINED, B_PKT, CFG_ALLOW_V4, CFG_ALLOW_V6, CFG_DENY_V4, CFG_DENY_V6,
    CFG_LOADED, CFG_MONITOR, PORT_INDEX_ICMP, PROTO_SLOT_TCP, PROTO_SLOT_UDP, RULE_MONITOR,
    RULE_PRESENT, bucket::NS_PER_SEC, port_index,
};

fn ok(text: &str) -> Policy {
    parse_str("t.toml", text).unwrap_or_else(|e| panic!("policy should be valid, got: {e}"))
}

#[test]
fn example_policy_is_valid_and_complete() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policy/example.toml");
    let p = load(std::path::Path::new(path)).expect("policy/example.toml must stay valid");
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(
        (p.ipv4_prefix, p.ipv6_prefix, p.max_sources),
        (32, 64, 262_144)
    );
    assert_eq!(p.allow.len(), 1);
    assert_eq!(p.deny.len(), 2);
    let app = p.app.as_ref().expect("the example documents [app]");
    assert_eq!(app.group.as_deref(), Some("www-data"));
    assert_eq!(p.endpoints.len(), 3);
    assert_eq!(p.endpoints[1].cost, 50, "the example documents `cost`");
    assert_eq!(p.signals[0].name, "login_failed");
    let api = &p.rules[0];
    assert_eq!(api.name, "api");
    assert_eq!(
        api.ports,
        vec![
            PortRange {
                first: 8080,
                last: 8080
            },
            PortRange {
                first: 9000,
                last: 9099
            }
        ]
    );
    let c = api.connections.unwrap();
    assert_eq!(
        c.rate,
        Rate {
            count: 5,
            period_secs: 1
        }
    );
    assert_eq!(c.burst, 10);
    assert_eq!(
        c.sustained,
        Some(Rate {
            count: 100,
            period_secs: 60
        })
    );
    let e = api.escalation.expect("api escalates");
    assert_eq!(
        (
            e.strikes, e.window, e.ban, e.backoff, e.max_ban, e.scope, e.forget
        ),
        (
            3,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(30),
            2,
            std::time::Duration::from_secs(3600),
            BanScope::Rule,
            std::time::Duration::from_secs(86400)
        )
    );
    assert_eq!(p.rules[1].mode, Mode::Monitor);
    assert_eq!(p.rules[2].ipv4_prefix, 24);
    assert_eq!(
        p.rules[2].ipv6_prefix, 64,
        "rule inherits the default v6 scope"
    );
    assert_eq!(p.rules[3].protocol, Protocol::Icmp);
    let table = matrix_table(&p);
    for needle in [
        "api",
        "8080,9000-9099",
        "5/s burst 10, max 100/min",
        "monitor",
        "/24 /64",
    ] {
        assert!(
            table.contains(needle),
            "matrix table lacks {needle:?}:\n{table}"
        );
    }
}

#[test]
fn the_issue_schema_parses_verbatim() {
    let p = ok(r#"
[defaults]
mode = "enforce"          # or "monitor"
ipv4_prefix = 32
ipv6_prefix = 64
max_sources = 262144      # per-source LRU capacity

[lists]
allow = ["10.0.0.0/8"]
deny  = ["203.0.113.0/24", "2001:db8:dead::/48"]

[[rule]]
name = "api"
protocol = "tcp"                      # tcp | udp | icmp
ports = [8080, "9000-9099"]
mode = "monitor"                      # optional per-rule override
ipv4_prefix = 24                      # optional per-rule override (same for ipv6_prefix)
connections = { rate = "5/s", burst = 10, sustained = "100/min" }   # sustained optional
packets = { rate = "1000/s", burst = 2000 }                         # optional
"#);
    let r = &p.rules[0];
    assert_eq!(r.mode, Mode::Monitor);
    assert_eq!(r.ipv4_prefix, 24);
    assert_eq!(r.packets.unwrap().burst, 2000);
}

#[test]
fn empty_policy_is_valid_with_defaults() {
    let p = ok("");
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!((p.ipv4_prefix, p.ipv6_prefix), (32, 64));
    assert!(p.rules.is_empty());
}

#[test]
fn burst_defaults_to_one_second_of_rate() {
    let p = ok("[[rule]]\nname='a'\nprotocol='udp'\npackets={rate='600/min'}\n");
    assert_eq!(p.rules[0].packets.unwrap().burst, 10);
    let p = ok("[[rule]]\nname='a'\nprotocol='udp'\npackets={rate='5/h'}\n");
    assert_eq!(p.rules[0].packets.unwrap().burst, 1);
}

/// (case, policy text, line, column, part of the message)
const BAD: &[(&str, &str, usize, usize, &str)] = &[
    (
        "unverified on udp",
        "[[rule]]\nname='d'\nprotocol='udp'\nunverified={rate='10/s'}\n",
        4,
        12,
        "only valid on tcp rules",
    ),
    (
        "unverified with sustained",
        "[[rule]]\nname='a'\nprotocol='tcp'\nunverified={rate='10/s', sustained='5/s'}\n",
        4,
        36,
        "no `sustained`",
    ),
    (
        "unverified bad rate",
        "[[rule]]\nname='a'\nprotocol='tcp'\nunverified={rate='fast'}\n",
        4,
        18,
        "rate",
    ),
    (
        "syncookie challenge without a budget",
        "[[rule]]\nname='a'\nprotocol='tcp'\nchallenge='syncookie'\n",
        4,
        11,
        "give the rule an `unverified` budget",
    ),
    (
        "syncookie challenge on a udp rule",
        "[[rule]]\nname='a'\nprotocol='udp'\nchallenge='syncookie'\n",
        4,
        11,
        "only valid on tcp rules (with an `unverified` budget), not udp",
    ),
    (
        "unknown challenge",
        "[[rule]]\nname='a'\nprotocol='tcp'\nunverified={rate='10/s'}\nchallenge='captcha'\n",
        5,
        11,
        "unknown challenge \"captcha\"",
    ),
    (
        "mss without the challenge",
        "[[rule]]\nname='a'\nprotocol='tcp'\nunverified={rate='10/s'}\nmss=1460\n",
        5,
        5,
        "needs that challenge",
    ),
    (
        "mss out of range",
        "[[rule]]\nname='a'\nprotocol='tcp'\nunverified={rate='10/s'}\nchallenge='syncookie'\nmss=100\n",
        6,
        5,
        "between 536 and 9000",
    ),
    (
        "verified_ttl too short",
        "[defaults]\nverified_ttl='10ms'\n",
        2,
        14,
        "verified_ttl must be between",
    ),
    (
        "toml syntax",
        "[defaults\nmode='enforce'",
        1,
        10,
        "expected",
    ),
    (
        "unknown top-level key",
        "colour = 1\n",
        1,
        1,
        "unknown field `colour`, expected one of `defaults`, `lists`, `rule`",
    ),
    (
        "unknown defaults key",
        "[defaults]\nmod = 'enforce'\n",
        2,
        1,
        "unknown field `mod`",
    ),
    (
        "unknown rule key",
        "[[rule]]\nname='a'\nprotocol='tcp'\nport=[80]\n",
        4,
        1,
        "unknown field `port`",
    ),
    (
        "unknown limit key",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='1/s', brust=3}\n",
        4,
        26,
        "unknown field `brust`",
    ),
    (
        "bad mode",
        "[defaults]\nmode = 'block'\n",
        2,
        8,
        "mode must be \"enforce\" or \"monitor\"",
    ),
    (
        "zero prefix",
        "[defaults]\nipv4_prefix = 0\n",
        2,
        15,
        "between 1 and 32",
    ),
    (
        "v6 prefix too long",
        "[defaults]\nipv6_prefix = 129\n",
        2,
        15,
        "between 1 and 128",
    ),
    (
        "tiny max_sources",
        "[defaults]\nmax_sources = 1\n",
        2,
        15,
        "max_sources must be between",
    ),
    (
        "bad cidr",
        "[lists]\nallow = ['10.0.0.0/33']\n",
        2,
        10,
        "prefix length must be 0 to 32",
    ),
    (
        "leading zero in a prefix length",
        "[lists]\ndeny = ['10.0.0.0/08']\n",
        2,
        9,
        "prefix length must be 0 to 32 (digits, no leading zero)",
    ),
    (
        "signed prefix length",
        "[lists]\ndeny = ['10.0.0.0/+8']\n",
        2,
        9,
        "prefix length must be 0 to 32",
    ),
    (
        "not an address",
        "[lists]\ndeny = ['example.com']\n",
        2,
        9,
        "not an IP address",
    ),
    (
        "host bits",
        "[lists]\ndeny = ['10.1.2.3/8']\n",
        2,
        9,
        "did you mean 10.0.0.0/8",
    ),
    (
        "missing name",
        "[[rule]]\nprotocol='tcp'\n",
        1,
        1,
        "this `[[rule]]` has no `name`",
    ),
    (
        "bad name",
        "[[rule]]\nname='a b'\nprotocol='tcp'\n",
        2,
        6,
        "rule name must be",
    ),
    (
        "duplicate name",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[1]\n[[rule]]\nname='a'\nprotocol='udp'\n",
        6,
        6,
        "used twice",
    ),
    (
        "bad protocol",
        "[[rule]]\nname='a'\nprotocol='sctp'\n",
        3,
        10,
        "protocol must be",
    ),
    (
        "port zero",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[0]\n",
        4,
        8,
        "expected a port (1-65535)",
    ),
    (
        "port too big",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[70000]\n",
        4,
        8,
        "got 70000",
    ),
    (
        "backwards range",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=['90-80']\n",
        4,
        8,
        "backwards",
    ),
    (
        "garbage range",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=['http']\n",
        4,
        8,
        "got \"http\"",
    ),
    (
        "float port",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[80.5]\n",
        4,
        8,
        "got the decimal number 80.5",
    ),
    (
        "empty ports",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[]\n",
        4,
        7,
        "`ports` is empty",
    ),
    (
        "ports on icmp",
        "[[rule]]\nname='a'\nprotocol='icmp'\nports=[1]\n",
        4,
        7,
        "icmp rules take no `ports`",
    ),
    (
        "overlap in rule",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[80,'70-90']\n",
        4,
        11,
        "overlap 80",
    ),
    (
        "overlap across rules",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=['8000-8099']\n[[rule]]\nname='b'\nprotocol='tcp'\nports=[8080]\n",
        8,
        7,
        "already claimed by rule `a`",
    ),
    (
        "two catch-alls",
        "[[rule]]\nname='a'\nprotocol='udp'\n[[rule]]\nname='b'\nprotocol='udp'\n",
        5,
        6,
        "all udp traffic",
    ),
    (
        "connections on udp",
        "[[rule]]\nname='a'\nprotocol='udp'\nconnections={rate='1/s'}\n",
        4,
        13,
        "only valid on tcp rules",
    ),
    (
        "rate without unit",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='5'}\n",
        4,
        19,
        "missing `/`",
    ),
    (
        "rate bad unit",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='5/day'}\n",
        4,
        19,
        "unit must be s, min, h or d",
    ),
    (
        "zero rate",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='0/s'}\n",
        4,
        19,
        "rate of 0",
    ),
    (
        "negative rate",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='-3/s'}\n",
        4,
        19,
        "whole number",
    ),
    (
        "absurd rate",
        "[[rule]]\nname='a'\nprotocol='udp'\npackets={rate='999999999999/s'}\n",
        4,
        15,
        "not meaningful",
    ),
    (
        "zero burst",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='1/s', burst=0}\n",
        4,
        32,
        "burst must be between 1",
    ),
    (
        "absurd burst",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='1/s', burst=9999999999}\n",
        4,
        32,
        "burst must be between 1",
    ),
    (
        "sustained above rate",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='1/s', sustained='100/s'}\n",
        4,
        36,
        "above the rate",
    ),
    (
        "string for integer",
        "[defaults]\nipv4_prefix = '24'\n",
        2,
        15,
        "ipv4_prefix must be a whole number from 1 to 32, got the text \"24\"",
    ),
];

#[test]
fn every_class_of_bad_input_is_located_and_explained() {
    let mut failures = Vec::new();
    for (case, text, line, column, needle) in BAD {
        match parse_str("bad.toml", text) {
            Ok(_) => failures.push(format!("{case}: accepted, should be rejected")),
            Err(e) => {
                let shown = e.to_string();
                if !shown.starts_with("bad.toml:") || !shown.contains(needle) {
                    failures.push(format!("{case}: message {shown:?} lacks {needle:?}"));
                }
                if (e.line, e.column) != (*line, *column) {
                    failures.push(format!(
                        "{case}: located at {}:{}, expected {line}:{column} ({shown})",
                        e.line, e.column
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn unverified_budget_and_sketch_compile() {
    let p = ok(r#"
[defaults]
verified_ttl = "30m"

[[rule]]
name = "api"
protocol = "tcp"
ports = [443]
connections = { rate = "10/s", burst = 20 }
unverified = { rate = "2000/s", burst = 4000 }
"#);
    assert_eq!(p.verified_ttl, std::time::Duration::from_secs(1800));
    let c = compile(&p);
    assert_eq!(c.global.verified_ttl_ns, 1800 * 1_000_000_000);
    let r = &c.rules[1];
    assert_eq!(
        (r.unverified.interval_ns, r.unverified.burst()),
        (500_000, 4000)
    );
    // 10/s: 100 ms per token, the sketch leaks one per 2^27 ns (134 ms); 4 untracked.
    assert_eq!((r.sketch[0].shift, r.sketch[0].slack), (27, 4));
    let table = matrix_table(&p);
    assert!(
        table.contains("unverified sources share 2000/s burst 4000"),
        "{table}"
    );
    let default = ok("[[rule]]\nname='a'\nprotocol='tcp'\n");
    assert_eq!(default.verified_ttl, std::time::Duration::from_secs(900));
    assert!(!compile(&default).rules[1].unverified.is_enabled());
}

#[test]
fn missing_file_is_a_clear_error() {
    let e = load(std::path::Path::new("/nonexistent/shield.toml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read policy file /nonexistent/shield.toml")
    );
}

#[test]
fn compiled_image_matches_the_policy() {
    let p = ok(r#"
[defaults]
mode = "monitor"
[lists]
allow = ["10.0.0.0/8", "2001:db8::/32"]
deny = ["192.0.2.0/24"]
[[rule]]
name = "web"
protocol = "tcp"
ports = [80, "8000-8002"]
mode = "enforce"
connections = { rate = "5/s", burst = 10, sustained = "100/min" }
[[rule]]
name = "other-tcp"
protocol = "tcp"
packets = { rate = "1000/s", burst = 2000 }
[[rule]]
name = "ping"
protocol = "icmp"
packets = { rate = "1/s" }
"#);
    let c = compile(&p);
    assert_eq!(
        c.global.flags,
        CFG_LOADED | CFG_MONITOR | CFG_ALLOW_V4 | CFG_ALLOW_V6 | CFG_DENY_V4
    );
    assert_eq!(
        c.global.flags & CFG_DENY_V6,
        0,
        "empty list must be skipped"
    );
    // Most specific wins: listed ports go to `web`, every other TCP port to `other-tcp`.
    assert_eq!(c.ports[port_index(PROTO_SLOT_TCP, 80) as usize], 1);
    assert_eq!(c.ports[port_index(PROTO_SLOT_TCP, 8001) as usize], 1);
    assert_eq!(c.ports[port_index(PROTO_SLOT_TCP, 8003) as usize], 2);
    assert_eq!(c.ports[port_index(PROTO_SLOT_TCP, 0) as usize], 2);
    assert_eq!(
        c.ports[port_index(PROTO_SLOT_UDP, 80) as usize],
        0,
        "no UDP rule"
    );
    assert_eq!(c.ports[PORT_INDEX_ICMP as usize], 3);
    let web = &c.rules[1];
    assert_eq!(
        web.flags, RULE_PRESENT,
        "an explicit `enforce` overrides global monitor"
    );
    assert_eq!(web.buckets[B_CONN].interval_ns, NS_PER_SEC / 5);
    assert_eq!(web.buckets[B_CONN].burst(), 10);
    assert_eq!(web.buckets[B_CONN_SUSTAINED].interval_ns, 600_000_000);
    assert_eq!(web.buckets[B_CONN_SUSTAINED].burst(), 100);
    assert!(!web.has_pkt_limit());
    assert_eq!(&web.name[..4], b"web\0");
    assert_eq!(
        c.rules[2].flags,
        RULE_PRESENT | RULE_MONITOR,
        "rules inherit the global mode"
    );
    assert_eq!(c.rules[2].buckets[B_PKT].interval_ns, 1_000_000);
    assert_eq!(c.rules[0].flags, 0, "slot 0 is never a rule");
    assert_eq!(
        c.allow_v6,
        vec![(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            32
        )]
    );
    assert_eq!(c.deny_v4, vec![([192, 0, 2, 0], 24)]);
}

#[test]
fn escalation_defaults_and_compiled_form() {
    let p = ok(
        "[[rule]]\nname='a'\nprotocol='udp'\npackets={rate='1/s'}\nescalation={strikes=2, window='1s', ban='10s', scope='host'}\n",
    );
    let e = p.rules[0].escalation.unwrap();
    assert_eq!(e.backoff, 2);
    assert_eq!(
        e.max_ban,
        std::time::Duration::from_secs(3600),
        "max_ban defaults to 1h"
    );
    assert_eq!(
        e.forget,
        std::time::Duration::from_secs(86400),
        "forget defaults to 24h"
    );
    let c = compile(&p);
    assert_ne!(
        c.global.flags & shield_common::CFG_BANS,
        0,
        "escalation turns ban lookups on"
    );
    let r = &c.rules[1];
    assert_ne!(r.flags & shield_common::RULE_BAN_HOST, 0);
    assert_eq!(r.escalation.strikes, 2);
    assert_eq!(r.escalation.ban_ns, 10 * NS_PER_SEC);
    assert_eq!(r.escalation.window_ns, NS_PER_SEC);
    let plain = compile(&ok(
        "[[rule]]\nname='a'\nprotocol='udp'\npackets={rate='1/s'}\n",
    ));
    assert_eq!(
        plain.global.flags & shield_common::CFG_BANS,
        0,
        "no escalation: no ban lookups"
    );
}

#[test]
fn durations_parse_and_print() {
    for (text, secs) in [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("5min", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
    ] {
        assert_eq!(parse_duration(text).unwrap().as_secs_f64(), secs, "{text}");
    }
    for bad in ["", "10", "s", "1.5s", "-1s", "10 w"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
    }
    assert_eq!(format_duration(std::time::Duration::from_secs(3600)), "1h");
    assert_eq!(format_duration(std::time::Duration::from_secs(90)), "90s");
    assert_eq!(
        format_duration(std::time::Duration::from_millis(1500)),
        "1500ms"
    );
}

/// A rule head to put a key under test into.
const TCP: &str = "[[rule]]\nname='a'\nprotocol='tcp'\n";

/// (case, policy text, line of the error, words the message must hold)
fn wrong_types() -> Vec<(&'static str, String, usize, &'static str)> {
    let rule = |line: &str| format!("{TCP}{line}\n");
    let limit = |inner: &str| rule(&format!("connections = {{ rate = '5/s', {inner} }}"));
    let esc = |inner: &str| {
        rule(&format!(
            "connections = {{ rate = '5/s' }}\nescalation = {{ {inner} }}"
        ))
    };
    let esc_line = 5;
    vec![
        // [defaults]
        (
            "mode as a number",
            "[defaults]\nmode = 1\n".into(),
            2,
            "mode must be \"enforce\" or \"monitor\", got the number 1",
        ),
        (
            "ipv4_prefix as text",
            "[defaults]\nipv4_prefix = '24'\n".into(),
            2,
            "ipv4_prefix must be a whole number from 1 to 32, got the text \"24\"",
        ),
        (
            "ipv4_prefix as a decimal",
            "[defaults]\nipv4_prefix = 24.5\n".into(),
            2,
            "ipv4_prefix must be a whole number from 1 to 32, got the decimal number 24.5",
        ),
        (
            "ipv6_prefix as a bool",
            "[defaults]\nipv6_prefix = true\n".into(),
            2,
            "ipv6_prefix must be a whole number from 1 to 128, got `true`",
        ),
        (
            "ipv6_prefix huge",
            "[defaults]\nipv6_prefix = 99999999999999999999\n".into(),
            2,
            "ipv6_prefix must be at most 128",
        ),
        (
            "ipv4_prefix negative",
            "[defaults]\nipv4_prefix = -1\n".into(),
            2,
            "ipv4_prefix: prefix length must be between 1 and 32, got -1",
        ),
        (
            "max_sources as text",
            "[defaults]\nmax_sources = '1M'\n".into(),
            2,
            "max_sources must be a whole number, got the text \"1M\"",
        ),
        (
            "max_sources as a decimal",
            "[defaults]\nmax_sources = 1e6\n".into(),
            2,
            "max_sources must be a whole number, got the decimal number 1000000.0",
        ),
        (
            "max_sources huge",
            "[defaults]\nmax_sources = 18446744073709551616\n".into(),
            2,
            "max_sources must be at most 16777216",
        ),
        (
            "max_sources hugely negative",
            "[defaults]\nmax_sources = -18446744073709551616\n".into(),
            2,
            "max_sources must be at least 64",
        ),
        (
            "max_sources negative",
            "[defaults]\nmax_sources = -5\n".into(),
            2,
            "max_sources must be between 64 and 16777216, got -5",
        ),
        (
            "verified_ttl as a number",
            "[defaults]\nverified_ttl = 900\n".into(),
            2,
            "verified_ttl must be a duration in quotes, like \"30s\", got the number 900",
        ),
        (
            "defaults as an array of tables",
            "[[defaults]]\nmode = 'enforce'\n".into(),
            1,
            "`[[defaults]]` must be `[defaults]`",
        ),
        (
            "defaults as text",
            "defaults = 'strict'\n".into(),
            1,
            "defaults must be a table (`[defaults]`), got the text \"strict\"",
        ),
        (
            "defaults as a date",
            "defaults = 2024-01-01\n".into(),
            1,
            "`defaults` must be a table, got a date",
        ),
        // [lists]
        (
            "lists as an array of tables",
            "[[lists]]\nallow = []\n".into(),
            1,
            "`[[lists]]` must be `[lists]`",
        ),
        (
            "allow as text",
            "[lists]\nallow = '10.0.0.0/8'\n".into(),
            2,
            "allow must be a list like [\"192.0.2.0/24\", \"2001:db8::/32\"], got the text \"10.0.0.0/8\"",
        ),
        (
            "deny as a table",
            "[lists]\ndeny = { a = 1 }\n".into(),
            2,
            "deny must be a list like",
        ),
        (
            "allow entry as a number",
            "[lists]\nallow = [10]\n".into(),
            2,
            "each entry of the allow list must be an address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\", got the number 10",
        ),
        (
            "deny entry as a list",
            "[lists]\ndeny = [['10.0.0.0/8']]\n".into(),
            2,
            "each entry of the deny list must be an address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\", got a list",
        ),
        // [[rule]]
        (
            "[rule] for [[rule]]",
            "[rule]\nname = 'a'\nprotocol = 'tcp'\n".into(),
            1,
            "`[rule]` must be `[[rule]]`",
        ),
        (
            "rule as text",
            "rule = 'api'\n".into(),
            1,
            "`rule` must be written as `[[rule]]` tables, got the text \"api\"",
        ),
        (
            "rule as a list of numbers",
            "rule = [1]\n".into(),
            1,
            "each rule must be a table (`[[rule]]`), got the number 1",
        ),
        (
            "name as a number",
            "[[rule]]\nname = 7\nprotocol = 'tcp'\n".into(),
            2,
            "name must be text in quotes like \"api\", got the number 7",
        ),
        (
            "protocol as a list",
            "[[rule]]\nname = 'a'\nprotocol = ['tcp']\n".into(),
            3,
            "protocol must be \"tcp\", \"udp\" or \"icmp\", got a list",
        ),
        (
            "ports as text",
            rule("ports = '80'"),
            4,
            "ports must be a list like [80, \"9000-9099\"], got the text \"80\"",
        ),
        (
            "ports as a number",
            rule("ports = 80"),
            4,
            "ports must be a list like [80, \"9000-9099\"], got the number 80",
        ),
        (
            "port as a table",
            rule("ports = [{ port = 80 }]"),
            4,
            "expected a port (1-65535) or a range \"first-last\", got a table",
        ),
        (
            "port as a bool",
            rule("ports = [true]"),
            4,
            "expected a port (1-65535) or a range \"first-last\", got `true`",
        ),
        (
            "port negative",
            rule("ports = [-1]"),
            4,
            "expected a port (1-65535) or a range \"first-last\", got -1",
        ),
        (
            "port huge",
            rule("ports = [80, 99999999999999999999]"),
            4,
            "a port must be between 1 and 65535",
        ),
        (
            "mode as a bool",
            rule("mode = true"),
            4,
            "mode must be \"enforce\" or \"monitor\", got `true`",
        ),
        (
            "rule ipv4_prefix as a decimal",
            rule("ipv4_prefix = 24.0"),
            4,
            "ipv4_prefix must be a whole number from 1 to 32, got the decimal number 24.0",
        ),
        (
            "connections as text",
            rule("connections = '5/s'"),
            4,
            "connections must be a table like { rate = \"5/s\", burst = 10 }, got the text \"5/s\"",
        ),
        (
            "connections as a date",
            rule("connections = 2024-01-01T00:00:00Z"),
            4,
            "`connections` must be a table, got a date",
        ),
        (
            "packets as a number",
            rule("packets = 100"),
            4,
            "packets must be a table like { rate = \"5/s\", burst = 10 }, got the number 100",
        ),
        (
            "unverified as a list",
            rule("unverified = ['10/s']"),
            4,
            "unverified must be a table like { rate = \"5/s\", burst = 10 }, got a list",
        ),
        (
            "escalation as text",
            rule("connections = { rate = '5/s' }\nescalation = 'ban'"),
            5,
            "escalation must be a table like { strikes = 3, window = \"1m\", ban = \"30s\" }, got the text \"ban\"",
        ),
        (
            "challenge as a bool",
            rule("challenge = true"),
            4,
            "challenge must be text in quotes, got `true`",
        ),
        (
            "rule without protocol",
            "[[rule]]\nname = 'a'\n".into(),
            1,
            "this `[[rule]]` has no `protocol`",
        ),
        // limits
        (
            "rate as a number",
            limit("burst = 1").replace("rate = '5/s'", "rate = 5"),
            4,
            "rate must be a rate in quotes, like \"5/s\", got the number 5",
        ),
        (
            "limit without rate",
            rule("packets = { burst = 5 }"),
            4,
            "this limit has no `rate`",
        ),
        (
            "burst as a decimal",
            limit("burst = 2.5"),
            4,
            "burst must be a whole number, got the decimal number 2.5",
        ),
        (
            "burst as text",
            limit("burst = '10'"),
            4,
            "burst must be a whole number, got the text \"10\"",
        ),
        (
            "burst as a bool",
            limit("burst = false"),
            4,
            "burst must be a whole number, got `false`",
        ),
        (
            "burst infinite",
            limit("burst = inf"),
            4,
            "burst must be a whole number, got the decimal number inf",
        ),
        (
            "burst huge",
            limit("burst = 99999999999999999999"),
            4,
            "burst must be at most 100000000",
        ),
        (
            "burst hugely negative",
            limit("burst = -99999999999999999999"),
            4,
            "burst must be at least 1",
        ),
        (
            "burst negative",
            limit("burst = -3"),
            4,
            "burst must be between 1 and 100000000, got -3",
        ),
        (
            "sustained as a number",
            limit("sustained = 100"),
            4,
            "sustained must be a rate in quotes, like \"5/s\", got the number 100",
        ),
        // escalation
        (
            "strikes as text",
            esc("strikes = '3', window = '1m', ban = '30s'"),
            esc_line,
            "strikes must be a whole number, got the text \"3\"",
        ),
        (
            "strikes as a decimal",
            esc("strikes = 3.0, window = '1m', ban = '30s'"),
            esc_line,
            "strikes must be a whole number, got the decimal number 3.0",
        ),
        (
            "strikes huge",
            esc("strikes = 99999999999999999999, window = '1m', ban = '30s'"),
            esc_line,
            "strikes must be at most 1000",
        ),
        (
            "strikes negative",
            esc("strikes = -2, window = '1m', ban = '30s'"),
            esc_line,
            "strikes must be between 1 and 1000, got -2",
        ),
        (
            "window as a number",
            esc("strikes = 3, window = 60, ban = '30s'"),
            esc_line,
            "window must be a duration in quotes, like \"30s\", got the number 60",
        ),
        (
            "ban as a bool",
            esc("strikes = 3, window = '1m', ban = true"),
            esc_line,
            "ban must be a duration in quotes, like \"30s\", got `true`",
        ),
        (
            "backoff as a decimal",
            esc("strikes = 3, window = '1m', ban = '30s', backoff = 1.5"),
            esc_line,
            "backoff must be a whole number, got the decimal number 1.5",
        ),
        (
            "backoff huge",
            esc("strikes = 3, window = '1m', ban = '30s', backoff = 99999999999999999999"),
            esc_line,
            "backoff must be at most 16",
        ),
        (
            "max_ban as a number",
            esc("strikes = 3, window = '1m', ban = '30s', max_ban = 3600"),
            esc_line,
            "max_ban must be a duration in quotes, like \"30s\", got the number 3600",
        ),
        (
            "forget as a list",
            esc("strikes = 3, window = '1m', ban = '30s', forget = ['1d']"),
            esc_line,
            "forget must be a duration in quotes, like \"30s\", got a list",
        ),
        (
            "scope as a number",
            esc("strikes = 3, window = '1m', ban = '30s', scope = 1"),
            esc_line,
            "scope must be \"rule\" (the rule's ports) or \"host\" (everything from the source), got the number 1",
        ),
        (
            "escalation without window",
            esc("strikes = 3, ban = '30s'"),
            esc_line,
            "this `escalation` has no `window`",
        ),
        // numbers out of TOML's range where no key is known
        (
            "huge number under an unknown key",
            "colour = 99999999999999999999\n".into(),
            1,
            "`colour`: this number is out of range",
        ),
    ]
}

/// serde and TOML words a policy author should never have to decode.
const JARGON: &[&str] = &[
    "invalid type",
    "invalid value",
    "expected i64",
    "i64",
    "u64",
    "u32",
    "u16",
    "u8",
    "sequence",
    "map",
    "struct",
    "Raw",
    "target type",
    "string",
    "float",
];

#[test]
fn wrong_types_and_numbers_are_explained_in_user_words() {
    let mut failures = Vec::new();
    for (case, text, line, needle) in wrong_types() {
        let e = match parse_str("bad.toml", &text) {
            Ok(_) => {
                failures.push(format!("{case}: accepted, should be rejected"));
                continue;
            }
            Err(e) => e,
        };
        let shown = e.to_string();
        if !shown.contains(needle) {
            failures.push(format!("{case}: message {shown:?} lacks {needle:?}"));
        }
        if e.line != line {
            failures.push(format!(
                "{case}: located on line {}, expected line {line} ({shown})",
                e.line
            ));
        }
        for word in JARGON {
            if e.message.contains(word) {
                failures.push(format!("{case}: message {shown:?} says {word:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn long_input_is_quoted_short() {
    let long = "x".repeat(10 << 20);
    for (case, text) in [
        (
            "rule name",
            TCP.replace("name='a'", &format!("name='{long}'")),
        ),
        ("mode", format!("[defaults]\nmode = '{long}'\n")),
        ("unknown key", format!("[defaults]\n{long} = 1\n")),
        ("unknown quoted key", format!("[defaults]\n'{long}' = 1\n")),
        ("duplicate key", format!("{long} = 1\n{long} = 2\n")),
        ("cidr", format!("[lists]\ndeny = ['{long}']\n")),
        ("port range", format!("{TCP}ports = ['{long}']\n")),
        ("rate", format!("{TCP}packets = {{ rate = '{long}' }}\n")),
        ("duration", format!("[defaults]\nverified_ttl = '{long}'\n")),
        (
            "text for a number",
            format!("[defaults]\nmax_sources = '{long}'\n"),
        ),
        (
            "unterminated string",
            format!("[defaults]\nmode = '{long}\n"),
        ),
    ] {
        let e = parse_str("bad.toml", &text).expect_err(case);
        let shown = e.to_string();
        assert!(
            shown.contains(&format!("{}…", &long[..64])) && shown.contains(" bytes)")
                || case == "unterminated string",
            "{case}: the value is cut after 64 characters, with its length: {shown}"
        );
        assert!(
            shown.len() < 400,
            "{case}: a 10 MB value must not be echoed whole; the error is {} bytes: {}…",
            shown.len(),
            &shown[..200]
        );
    }
    let e = parse_str(
        "bad.toml",
        &TCP.replace("name='a'", &format!("name='{long}'")),
    )
    .expect_err("long name");
    assert!(
        e.message
            .contains(&format!("\"{}…\" ({} bytes)", "x".repeat(64), long.len())),
        "the name is cut after 64 characters with its length: {e}"
    );
}

#[test]
fn binary_input_is_refused_at_its_first_bad_byte() {
    let e = parse_bytes("bad.toml", b"[defaults]\nmode = 'en\xffforce'\n").expect_err("not UTF-8");
    assert_eq!((e.line, e.column), (2, 11), "{e}");
    assert!(
        e.message.contains("byte 0xff (offset 21) is not UTF-8"),
        "{e}"
    );
    let e = parse_bytes("bad.toml", b"# policy\n\0\0\0\x7fELF").expect_err("NUL");
    assert_eq!((e.line, e.column), (2, 1), "{e}");
    assert!(e.message.contains("control character 0x00"), "{e}");
    assert!(e.message.contains("binary file"), "{e}");
}

#[test]
fn warnings_name_likely_mistakes() {
    let p = ok(&format!(
        "[lists]\nallow = ['10.0.0.0/8', '2001:db8::/32']\ndeny = ['10.0.0.0/8', '0.0.0.0/0', '::/0', '2001:db8::/32']\n{TCP}ports = [80]\nconnections = {{ rate = '5/s' }}\n[[rule]]\nname = 'dns'\nprotocol = 'udp'\n"
    ));
    let w = warnings(&p);
    let expected = [
        "10.0.0.0/8 is on both the allow and the deny list; allow wins, so the deny entry has no effect",
        "2001:db8::/32 is on both the allow and the deny list",
        "the deny list holds 0.0.0.0/0: every IPv4 packet from a source not on the allow list is dropped",
        "the deny list holds ::/0: every IPv6 packet",
        "rule `dns` has no `connections`, `packets` or `unverified` limit: its traffic is counted, never limited",
    ];
    assert_eq!(w.len(), expected.len(), "{w:#?}");
    for (got, want) in w.iter().zip(expected) {
        assert!(
            got.starts_with(want),
            "warning {got:?} should start {want:?}"
        );
    }
    let example = load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policy/example.toml"
    )))
    .expect("example");
    assert_eq!(
        warnings(&example),
        Vec::<String>::new(),
        "the example policy should be clean"
    );

    let many: Vec<String> = (0..8).map(|i| format!("'10.{i}.0.0/16'")).collect();
    let list = many.join(", ");
    let p = ok(&format!("[lists]\nallow = [{list}]\ndeny = [{list}]\n"));
    let w = warnings(&p);
    assert_eq!(w.len(), 6, "five named, then a count: {w:#?}");
    assert_eq!(w[5], "… and 3 more prefixes on both lists");
}

#[test]
fn too_many_values_are_refused_before_parsing() {
    // Two bytes a value: the TOML parser would need about 200 bytes for each.
    let ones = format!("[lists]\nallow = [{}]\n", "1,".repeat(MAX_POLICY_VALUES));
    let e = parse_str("bad.toml", &ones).expect_err("too many values");
    assert!(e.message.starts_with("more than 3000000 values"), "{e}");
    assert_eq!(e.line, 2, "{e}");
    // Separators inside comments and strings are not values.
    let commas = ",".repeat(MAX_POLICY_VALUES + 1);
    let text = format!(
        "# {commas}\n[defaults] # [{{=\nmode = '{commas}'\nverified_ttl = \"\\\"{commas}\"\n"
    );
    let e = parse_str("bad.toml", &text).expect_err("bad mode");
    assert!(e.message.starts_with("mode must be"), "{e}");
    let text = format!("a = '''\n{commas}\n'''\nb = \"\"\"{commas}\\\"\"\"\"\n");
    let e = parse_str("bad.toml", &text).expect_err("unknown key");
    assert!(e.message.starts_with("unknown field `a`"), "{e}");
    let deep = format!("x = {}{}\n", "[".repeat(1000), "]".repeat(1000));
    let e = parse_str("bad.toml", &deep).expect_err("too deep");
    assert_eq!(e.message, "lists or tables are nested too deep", "{e}");
}

#[test]
fn the_ban_floor_defaults_to_8_and_32_and_is_configurable() {
    let p = parse_str("t.toml", "").expect("empty policy");
    assert_eq!((p.min_ban_ipv4_prefix, p.min_ban_ipv6_prefix), (8, 32));
    let p = parse_str(
        "t.toml",
        "[defaults]\nmin_ban_ipv4_prefix = 16\nmin_ban_ipv6_prefix = 0\n",
    )
    .expect("valid floor");
    assert_eq!((p.min_ban_ipv4_prefix, p.min_ban_ipv6_prefix), (16, 0));
    let e = parse_str("t.toml", "[defaults]\nmin_ban_ipv4_prefix = 33\n")
        .expect_err("over 32")
        .to_string();
    assert!(
        e.contains("t.toml:2:23: min_ban_ipv4_prefix must be between 0 and 32, got 33"),
        "{e}"
    );
}

#[test]
fn fleet_section_is_parsed_with_defaults() {
    let p = ok(
        "[fleet]\nredis = \"redis://:pw@10.0.0.5:6379/0\"\nhost = \"api-1\"\nkey_file = \"/etc/shield/fleet.key\"\n",
    );
    let f = p.fleet.expect("[fleet]");
    assert_eq!(f.redis, "redis://:pw@10.0.0.5:6379/0");
    assert_eq!(f.host, "api-1");
    assert_eq!(f.prefix, "shield");
    assert_eq!(
        f.key_file,
        Some(std::path::PathBuf::from("/etc/shield/fleet.key"))
    );
    assert_eq!(f.max_bans_per_minute, 600);
    // Three quarters of the ban table by default: a quarter stays for this host's own bans.
    assert_eq!(f.max_bans, 49_152);
    let p = ok("[fleet]\nredis = \"redis://h:1/0\"\nmax_bans = 1000\n");
    assert_eq!(p.fleet.expect("fleet").max_bans, 1000);
    assert!(ok("").fleet.is_none());
    // `shield check` shows it without the password.
    let shown = describe_fleet(&f);
    assert!(shown.contains("redis://:***@10.0.0.5:6379/0"), "{shown}");
    assert!(!shown.contains("pw"), "{shown}");
    // Default host: this machine's name.
    let p = ok("[fleet]\nredis = \"rediss://cache.internal:6380/1\"\n");
    assert_eq!(p.fleet.expect("fleet").host, hostname());
}

#[test]
fn bad_fleet_values_are_located() {
    let cases = [
        (
            "[fleet]\nredis = \"http://x:1\"\n",
            "t.toml:2:9: fleet.redis must be a redis:// or rediss:// (TLS) URL",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nhost = \"a b\"\n",
            "t.toml:3:8: fleet.host must be 1-64 letters",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nprefix = \"\"\n",
            "t.toml:3:10: fleet.prefix must be 1-64 letters",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nmax_bans_per_minute = 0\n",
            "t.toml:3:23: fleet.max_bans_per_minute must be between 1 and 1000000, got 0",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nmax_bans_per_minute = \"5\"\n",
            "t.toml:3:23: fleet.max_bans_per_minute must be a whole number",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nmax_bans = 65537\n",
            "t.toml:3:12: fleet.max_bans must be between 1 and 65536 (the ban table's size), got 65537",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nmax_bans = 0\n",
            "t.toml:3:12: fleet.max_bans must be between 1 and 65536",
        ),
        (
            "[fleet]\nredis = \"redis://:secret@h:notaport/0\"\n",
            "t.toml:2:9: fleet.redis",
        ),
    ];
    for (text, want) in cases {
        let e = parse_str("t.toml", text).expect_err(text).to_string();
        assert!(e.starts_with(want), "{text}: got {e}, want {want}");
        assert!(!e.contains("secret"), "the password must not show: {e}");
    }
    let e = parse_str("t.toml", "[fleet]\nhost = \"a\"\n").expect_err("redis is required");
    assert!(e.to_string().contains("redis"), "{e}");
    let e = parse_str("t.toml", "[fleet]\nredis = \"redis://h/0\"\nport = 1\n")
        .expect_err("unknown key");
    assert!(e.to_string().contains("port"), "{e}");
}

/// `[app]`, `[[endpoint]]` and `[[signal]]`: each mistake named where it is.
#[test]
fn app_tables_errors_name_their_place() {
    const APP: &str = "[app]\nsocket = '/tmp/a.sock'\n";
    let cases: &[(&str, String, usize, usize, &str)] = &[
        (
            "unknown key",
            format!(
                "{APP}[[endpoint]]\nname='a'\npath='/a'\nlimit={{rate='1/s'}}\nmethod=['GET']\n"
            ),
            7,
            1,
            "unknown field `method`",
        ),
        (
            "duplicate name",
            format!(
                "{APP}[[endpoint]]\nname='a'\npath='/a'\nlimit={{rate='1/s'}}\n[[endpoint]]\nname='a'\npath='/b'\nlimit={{rate='1/s'}}\n"
            ),
            8,
            6,
            "endpoint name `a` is used twice",
        ),
        (
            "bad key",
            format!("{APP}[[endpoint]]\nname='a'\npath='/a'\nkey='cookie'\nlimit={{rate='1/s'}}\n"),
            6,
            5,
            "key must be \"ip\", \"header:NAME\"",
        ),
        (
            "bad header",
            format!("{APP}[[signal]]\nname='s'\nkey='header:X Api'\nlimit={{rate='1/s'}}\n"),
            5,
            5,
            "the header name must be an HTTP field name",
        ),
        (
            "bad path",
            format!("{APP}[[endpoint]]\nname='a'\npath='login'\nlimit={{rate='1/s'}}\n"),
            5,
            6,
            "path must start with `/`",
        ),
        (
            "star inside",
            format!("{APP}[[endpoint]]\nname='a'\npath='/a/*/b'\nlimit={{rate='1/s'}}\n"),
            5,
            6,
            "at most one `*`, at the end",
        ),
        (
            "missing path",
            format!("{APP}[[endpoint]]\nname='a'\nlimit={{rate='1/s'}}\n"),
            3,
            1,
            "this `[[endpoint]]` has no `path`",
        ),
        (
            "missing name",
            format!("{APP}[[signal]]\nlimit={{rate='1/s'}}\n"),
            3,
            1,
            "this `[[signal]]` has no `name`",
        ),
        (
            "signal rule scope",
            format!(
                "{APP}[[signal]]\nname='s'\nlimit={{rate='1/s'}}\nescalation={{strikes=1, window='1m', ban='1m', scope='rule'}}\n"
            ),
            6,
            53,
            "its escalation scope must be \"host\"",
        ),
        (
            "on_error",
            "[app]\non_error='maybe'\n".to_string(),
            2,
            10,
            "on_error must be \"open\" (allow) or \"closed\" (503)",
        ),
        (
            "relative socket",
            "[app]\nsocket='app.sock'\n".to_string(),
            2,
            8,
            "socket must be an absolute path",
        ),
        (
            "bad proxy",
            "[app]\ntrusted_proxies=['127.0.0.1/8']\n".to_string(),
            2,
            18,
            "trusted_proxies list: host bits are set",
        ),
        (
            "endpoint without app",
            "[[endpoint]]\nname='a'\npath='/a'\nlimit={rate='1/s'}\n".to_string(),
            1,
            1,
            "[[endpoint]] tables need an `[app]` table",
        ),
        (
            "single table",
            format!("{APP}[endpoint]\nname='a'\n"),
            3,
            1,
            "`[endpoint]` must be `[[endpoint]]`",
        ),
    ];
    for (what, text, line, column, needle) in cases {
        let e = parse_str("t.toml", text).expect_err(what);
        assert!(
            e.message.contains(needle),
            "{what}: expected {needle:?} in {:?}",
            e.message
        );
        assert_eq!((e.line, e.column), (*line, *column), "{what}: {e}");
    }
}

#[test]
fn app_tables_defaults_and_matrix() {
    let p = ok(r#"
[app]
trusted_proxies = ["127.0.0.1"]
[[endpoint]]
name = "login"
methods = ["post", "POST"]
path = "/login"
limit = { rate = "5/min", burst = 5, sustained = "30/h" }
escalation = { strikes = 3, window = "10m", ban = "15m" }
[[endpoint]]
name = "api"
path = "/api/*"
key = "header:X-Api-Key"
limit = { rate = "10/s" }
escalation = { strikes = 3, window = "1m", ban = "5m", scope = "rule" }
[[signal]]
name = "login_failed"
key = "user"
limit = { rate = "10/h", burst = 5 }
"#);
    let app = p.app.as_ref().expect("[app]");
    assert_eq!(app.socket, std::path::PathBuf::from(DEFAULT_APP_SOCKET));
    assert_eq!((app.group.clone(), app.on_error), (None, OnError::Open));
    let login = &p.endpoints[0];
    assert_eq!(login.methods, vec!["POST".to_string()]);
    assert_eq!(
        login.key,
        KeyKind::Ip,
        "an endpoint without key counts per ip"
    );
    assert_eq!(
        login.escalation.map(|e| e.scope),
        Some(BanScope::Host),
        "app escalation defaults to host scope"
    );
    let api = &p.endpoints[1];
    assert!(api.prefix && api.path == "/api/");
    assert_eq!(
        api.limit.burst, 10,
        "burst defaults to one second of the rate"
    );
    assert_eq!(p.signals[0].key, KeyKind::User);
    let m = matrix_table(&p);
    for needle in [
        "login     POST",
        "/api/*",
        "header:X-Api-Key",
        "5/min burst 5, max 30/h",
        "endpoint scope (L7 only)",
        "login_failed",
        "trusted proxies: 127.0.0.1/32",
    ] {
        assert!(m.contains(needle), "matrix lacks {needle:?}:\n{m}");
    }
}

#[test]
fn cost_and_daily_rates() {
    let p = ok(r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [443]
connections = { rate = "20/s", burst = 40, sustained = "50000/d" }
[app]
[[endpoint]]
name = "export"
path = "/export"
cost = 5
limit = { rate = "600/h", burst = 10, sustained = "1000/d" }
[[endpoint]]
name = "cheap"
path = "/cheap"
concurrency = 3
quota = { limit = 10000, per = "1d" }
limit = { rate = "10/s" }
"#);
    assert_eq!(
        (p.endpoints[0].concurrency, p.endpoints[1].concurrency),
        (None, Some(3))
    );
    assert_eq!(p.endpoints[0].cost, 5);
    assert_eq!(p.endpoints[1].cost, 1, "cost defaults to 1");
    assert_eq!(
        p.endpoints[0].limit.sustained,
        Some(Rate {
            count: 1000,
            period_secs: 86_400
        })
    );
    // XDP buckets for a daily rate: 86,400 s / 50,000 in nanoseconds, no overflow.
    let c = compile(&p);
    let api = &c.rules[1];
    assert_eq!(
        api.buckets[B_CONN_SUSTAINED].interval_ns,
        86_400 * NS_PER_SEC / 50_000
    );
    let m = matrix_table(&p);
    for needle in [
        "max 50000/d",
        "600/h burst 10, max 1000/d",
        "COST",
        "IN FLIGHT",
        "3 per key",
        "10000 per day (resets at 00:00 UTC)",
        "export",
    ] {
        assert!(m.contains(needle), "matrix lacks {needle:?}:\n{m}");
    }
    for (text, needle) in [
        (
            "cost = 11",
            "cost must be between 1 and the limit's burst (10)",
        ),
        ("cost = 0", "cost must be between 1"),
        ("cost = '5'", "cost"),
        (
            "concurrency = 0",
            "concurrency must be between 1 and 1000000",
        ),
        (
            "quota = { limit = 5, per = '7h' }",
            "quota per must be a whole number of seconds from 1m to 31d that divides a day",
        ),
        (
            "quota = { limit = 0, per = '1d' }",
            "quota limit must be between 1",
        ),
        ("quota = { limit = 5 }", "per"),
    ] {
        let e = parse_str(
            "t.toml",
            &format!(
                "[app]\n[[endpoint]]\nname='a'\npath='/a'\nlimit={{rate='1/d', burst=10}}\n{text}\n"
            ),
        )
        .expect_err(text);
        assert!(e.message.contains(needle), "{text}: {e}");
        assert_eq!(e.line, 6, "{text}: {e}");
    }
    let e = parse_str(
        "t.toml",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[1]\nconnections={rate='5/w'}\n",
    )
    .expect_err("unit w");
    assert!(e.message.contains("the unit must be s, min, h or d"), "{e}");
}

#[test]
fn over_limit_reset_is_for_tcp_rules_with_a_limit() {
    let base = "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [443]\nconnections = { rate = \"5/s\" }\n";
    let p = ok(&format!("{base}over_limit = \"reset\"\n"));
    assert_eq!(p.rules[0].over_limit, OverLimit::Reset);
    assert_eq!(
        p.rules[0].resets,
        Some(DEFAULT_RESETS),
        "resets defaults to 100/s"
    );
    let c = compile(&p);
    let r = &c.rules[1];
    assert_ne!(r.flags & shield_common::RULE_RESET, 0);
    assert_eq!(r.resets.interval_ns, NS_PER_SEC / 100);
    assert_eq!(r.resets.burst(), 100, "burst: one second's worth");
    let p = ok(&format!(
        "{base}over_limit = \"reset\"\nresets = \"20/s\"\n"
    ));
    assert_eq!(compile(&p).rules[1].resets.interval_ns, NS_PER_SEC / 20);
    assert!(matrix_table(&p).contains("answered with a RST (at most 20/s for the rule"));
    // `drop` (the default) compiles to no flag and no cap.
    let p = ok(&format!("{base}over_limit = \"drop\"\n"));
    assert_eq!(compile(&p).rules[1].flags & shield_common::RULE_RESET, 0);
    assert!(!compile(&p).rules[1].resets.is_enabled());

    let err = |text: &str| parse_str("t.toml", text).unwrap_err().to_string();
    let e = err(
        "[[rule]]\nname = \"dns\"\nprotocol = \"udp\"\npackets = { rate = \"5/s\" }\nover_limit = \"reset\"\n",
    );
    assert!(
        e.starts_with("t.toml:5:14: over_limit = \"reset\" answers TCP connection attempts"),
        "{e}"
    );
    assert!(
        e.contains("udp traffic over its limits is always dropped"),
        "{e}"
    );
    let e = err(
        "[[rule]]\nname = \"p\"\nprotocol = \"icmp\"\npackets = { rate = \"5/s\" }\nover_limit = \"reset\"\n",
    );
    assert!(e.contains("only valid on tcp rules; icmp"), "{e}");
    let e = err(&format!("{base}over_limit = \"rst\"\n"));
    assert!(
        e.contains("over_limit must be \"drop\" or \"reset\", got \"rst\""),
        "{e}"
    );
    let e = err(&format!("{base}resets = \"5/s\"\n"));
    assert!(
        e.contains("`resets` caps the RSTs of over_limit = \"reset\""),
        "{e}"
    );
    let e = err(&format!("{base}over_limit = \"reset\"\nresets = \"0/s\"\n"));
    assert!(e.contains("a rate of 0"), "{e}");
    let e = err("[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nover_limit = \"reset\"\n");
    assert!(
        e.contains("needs a `connections` or `packets` limit"),
        "{e}"
    );
}

#[test]
fn syncookie_matrix_says_what_monitor_mode_still_changes() {
    let text = "[[rule]]\nname='api'\nprotocol='tcp'\nports=[8000]\n{MODE}unverified={rate='10/s'}\nchallenge='syncookie'\n";
    let enforced = matrix_table(&ok(&text.replace("{MODE}", "")));
    assert!(
        enforced.contains("api: over that budget, XDP answers with SYN cookies (MSS 1460"),
        "{enforced}"
    );
    assert!(!enforced.contains("monitor mode"), "{enforced}");
    // What this host's kernel takes away, said where it applies.
    assert_eq!(
        enforced.contains("get no window scaling or SACK"),
        !crate::synproxy::timestamps_work(),
        "{enforced}"
    );
    let monitored = matrix_table(&ok(&text.replace("{MODE}", "mode='monitor'\n")));
    assert!(
        monitored.contains("api: monitor mode: nothing is answered yet")
            && monitored.contains("the nftables table is installed"),
        "{monitored}"
    );
}

#[test]
fn an_allow_list_of_everything_is_warned_about() {
    // allow beats every limit, deny and ban: 0.0.0.0/0 there turns shield off for IPv4
    // (as the deny list's 0.0.0.0/0 drops everything, which is warned about).
    let p = ok(&format!(
        "[lists]\nallow = ['0.0.0.0/0', '::/0']\n{TCP}ports = [80]\nconnections = {{ rate = '5/s' }}\n"
    ));
    let w = warnings(&p);
    for want in [
        "the allow list holds 0.0.0.0/0: no IPv4 source is ever limited, denied or banned",
        "the allow list holds ::/0: no IPv6 source is ever limited, denied or banned",
    ] {
        assert!(w.iter().any(|g| g == want), "missing {want:?} in {w:#?}");
    }
    let narrow = ok(&format!(
        "[lists]\nallow = ['10.0.0.0/8']\n{TCP}ports = [80]\nconnections = {{ rate = '5/s' }}\n"
    ));
    assert!(warnings(&narrow).is_empty(), "{:?}", warnings(&narrow));
}
