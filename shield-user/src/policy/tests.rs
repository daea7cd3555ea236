//! Policy parsing and validation: the shipped example, every class of bad input (with the
//! file:line:column the user sees), and what the compiled map images contain.

mod app;
mod bad_input;
mod compile;
mod fleet;
mod rules;
mod wrong_types;

use super::*;
use shield_common::{
    B_CONN, B_CONN_SUSTAINED, B_PKT, CFG_ALLOW_V4, CFG_ALLOW_V6, CFG_DENY_V4, CFG_DENY_V6,
    CFG_LOADED, CFG_MONITOR, PORT_INDEX_ICMP, PROTO_SLOT_TCP, PROTO_SLOT_UDP, RULE_MONITOR,
    RULE_PRESENT, bucket::NS_PER_SEC, port_index,
};

fn ok(text: &str) -> Policy {
    parse_str("t.toml", text).unwrap_or_else(|e| panic!("policy should be valid, got: {e}"))
}

/// A rule head to put a key under test into.
const TCP: &str = "[[rule]]\nname='a'\nprotocol='tcp'\n";

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
fn missing_file_is_a_clear_error() {
    let e = load(std::path::Path::new("/nonexistent/shield.toml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read policy file /nonexistent/shield.toml")
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

#[test]
fn a_policy_that_limits_nothing_is_warned_about() {
    let want = "the policy has no rule, no deny list and no [app]: nothing is limited; only bans (`shield ban`, the fleet's) are enforced";
    for text in ["", "# nothing yet\n", "[lists]\nallow = ['10.0.0.0/8']\n"] {
        let w = warnings(&ok(text));
        assert!(w.iter().any(|g| g == want), "{text:?}: {w:#?}");
    }
    for text in [
        format!("{TCP}ports = [80]\nconnections = {{ rate = '5/s' }}\n"),
        "[lists]\ndeny = ['10.0.0.0/8']\n".to_string(),
    ] {
        let w = warnings(&ok(&text));
        assert!(!w.iter().any(|g| g == want), "{text:?}: {w:#?}");
    }
}
