//! Unit tests of the syncookie table text.

use super::*;

#[test]
fn a_table_names_the_interface_its_rules_match() {
    let p = crate::policy::parse_str(
        "p.toml",
        "[[rule]]\nname='api'\nprotocol='tcp'\nports=[8000]\nunverified={rate='10/s'}\nchallenge='syncookie'\n",
    )
    .expect("policy");
    let t = ruleset("eth0.100", &p, "1", true).expect("a table");
    assert_eq!(table_iface(&t).as_deref(), Some("eth0.100"));
    // eth0_100 shares the table name, not the table.
    assert_eq!(table_name("eth0_100"), table_name("eth0.100"));
    assert!(not_ours("eth0_100", "eth0.100").contains("is interface eth0.100's"));
    assert_eq!(table_iface("table inet x {\n}\n"), None);
}

#[test]
fn the_table_covers_the_syncookie_rules_ports_only() {
    let p = crate::policy::parse_str(
        "p.toml",
        "[[rule]]\nname='api'\nprotocol='tcp'\nports=[8000, '9000-9010']\nunverified={rate='10/s'}\nchallenge='syncookie'\nmss=1400\n[[rule]]\nname='ssh'\nprotocol='tcp'\nports=[22]\nconnections={rate='1/s'}\n",
    )
    .expect("policy");
    let t = ruleset("eth0.100", &p, "1", true).expect("a table");
    assert!(
        t.starts_with("table inet shield_syncookie_eth0_100 {"),
        "{t}"
    );
    assert!(
        t.contains("comment \"shield: nf_conntrack_tcp_loose was 1\""),
        "{t}"
    );
    assert!(
        t.contains("iifname \"eth0.100\" tcp dport { 8000, 9000-9010 } tcp flags & (fin | syn | rst | ack) == syn notrack"),
        "{t}"
    );
    assert!(t.contains("meta nfproto ipv4 ct state invalid,untracked synproxy mss 1400 wscale 7 timestamp sack-perm"), "{t}");
    assert!(
        t.contains("meta nfproto ipv6 ct state invalid,untracked synproxy mss 1380"),
        "{t}"
    );
    assert!(!t.contains("22"), "{t}");
    // Where SYNPROXY cannot use timestamps: the MSS alone.
    let t = ruleset("eth0.100", &p, "1", false).expect("a table");
    assert!(
        t.contains("meta nfproto ipv4 ct state invalid,untracked synproxy mss 1400\n"),
        "{t}"
    );
    assert!(!t.contains("timestamp"), "{t}");
}

#[test]
fn a_rule_without_ports_leaves_the_other_rules_ports_alone() {
    let p = crate::policy::parse_str(
        "p.toml",
        "[[rule]]\nname='any'\nprotocol='tcp'\nunverified={rate='10/s'}\nchallenge='syncookie'\n[[rule]]\nname='ssh'\nprotocol='tcp'\nports=[22]\nconnections={rate='1/s'}\n",
    )
    .expect("policy");
    let t = ruleset("eth0", &p, "1", true).expect("a table");
    assert!(t.contains("tcp dport != { 22 }"), "{t}");
    assert!(t.contains("synproxy mss 1460"), "{t}");
}

/// A syncookie rule's `connections` limit meters the handshakes SYNPROXY completes, per
/// source key, before its `synproxy` statements; a monitored rule's does not.
#[test]
fn an_enforced_connection_limit_meters_completed_handshakes() {
    let p = crate::policy::parse_str(
        "p.toml",
        "[[rule]]\nname='api'\nprotocol='tcp'\nports=[8000]\nipv4_prefix=24\nipv6_prefix=48\nconnections={rate='5/s', burst=20, sustained='600/h'}\nunverified={rate='10/s'}\nchallenge='syncookie'\n[[rule]]\nname='web'\nprotocol='tcp'\nports=[80]\nmode='monitor'\nconnections={rate='1/s'}\nunverified={rate='10/s'}\nchallenge='syncookie'\n",
    )
    .expect("policy");
    let t = ruleset("eth0", &p, "1", false).expect("a table");
    let meter = "iifname \"eth0\" tcp dport { 8000 } meta nfproto ipv4 ct state invalid,untracked tcp flags & (syn | ack) == ack ip saddr . tcp sport . tcp dport . tcp ackseq != @seen_0_ipv4 update @conn_0_0_ipv4 { ip saddr and 255.255.255.0 limit rate over 5/second burst 20 packets } counter drop";
    assert!(t.contains(meter), "{t}");
    assert!(
        t.contains("update @conn_0_0_ipv6 { ip6 saddr and ffff:ffff:ffff:: limit rate over 5/second burst 20 packets }"),
        "{t}"
    );
    // The sustained window, a bucket of its own: 600 an hour, 600 at most at once.
    assert!(
        t.contains("update @conn_0_1_ipv4 { ip saddr and 255.255.255.0 limit rate over 600/hour burst 600 packets }"),
        "{t}"
    );
    // Entries last until a full bucket refills (20 at 5/s: 4 s; 600 at 600/h: 1 h).
    assert!(t.contains("set conn_0_0_ipv4 {\n\t\ttype ipv4_addr\n\t\tsize 65536\n\t\tflags dynamic,timeout\n\t\ttimeout 5s\n"), "{t}");
    assert!(t.contains("set conn_0_1_ipv6 {\n\t\ttype ipv6_addr\n\t\tsize 65536\n\t\tflags dynamic,timeout\n\t\ttimeout 3601s\n"), "{t}");
    // Before the rule's synproxy statements, so that a refused handshake never completes.
    let at = |needle: &str| t.find(needle).expect(needle);
    assert!(
        at(meter) < at("tcp dport { 8000 } meta nfproto ipv4 ct state invalid,untracked synproxy")
    );
    // A handshake is charged once: its flow is remembered 2 s (after the meters, before
    // synproxy), and a segment of a remembered flow skips the meters.
    let seen = "tcp flags & (syn | ack) == ack add @seen_0_ipv4 { ip saddr . tcp sport . tcp dport . tcp ackseq }";
    assert!(t.contains("set seen_0_ipv6 {\n\t\ttypeof ip6 saddr . tcp sport . tcp dport . tcp ackseq\n\t\tsize 65536\n\t\tflags dynamic,timeout\n\t\ttimeout 2s\n"), "{t}");
    assert!(at("update @conn_0_1_ipv6") < at(seen), "{t}");
    assert!(
        at(seen) < at("meta nfproto ipv4 ct state invalid,untracked synproxy"),
        "{t}"
    );
    // A monitored rule only counts `would_drop` in XDP: nothing metered here.
    assert!(!t.contains("conn_1_"), "{t}");
}

/// A limit the parser accepts that takes years to refill: the entry timeout is written
/// in days, as nft parses it (seconds of 9 digits are "value too large").
#[test]
fn a_meter_timeout_of_years_is_written_in_days() {
    let p = crate::policy::parse_str(
        "p.toml",
        "[[rule]]\nname='api'\nprotocol='tcp'\nports=[8000]\nconnections={rate='1/d', burst=2000}\nunverified={rate='10/s'}\nchallenge='syncookie'\n",
    )
    .expect("policy");
    let t = ruleset("eth0", &p, "1", false).expect("a table");
    assert!(t.contains("\t\ttimeout 2000d1s\n"), "{t}");
    assert_eq!(nft_duration(86_400), "1d");
    assert_eq!(nft_duration(99_999), "1d13599s");
    assert_eq!(nft_duration(86_399), "86399s");
}

#[test]
fn no_challenge_no_table() {
    let p = crate::policy::parse_str(
        "p.toml",
        "[[rule]]\nname='api'\nprotocol='tcp'\nports=[8000]\nunverified={rate='10/s'}\n",
    )
    .expect("policy");
    assert!(ruleset("eth0", &p, "1", true).is_none());
}
