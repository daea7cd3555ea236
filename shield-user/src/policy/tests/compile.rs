//! What the compiled map images and the matrix table hold.

use super::*;

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
