//! `[defaults]` and `[[rule]]`: defaults, limits, escalation, durations, the ban floor and
//! `over_limit`.

use super::*;

#[test]
fn burst_defaults_to_one_second_of_rate() {
    let p = ok("[[rule]]\nname='a'\nprotocol='udp'\npackets={rate='600/min'}\n");
    assert_eq!(p.rules[0].packets.unwrap().burst, 10);
    let p = ok("[[rule]]\nname='a'\nprotocol='udp'\npackets={rate='5/h'}\n");
    assert_eq!(p.rules[0].packets.unwrap().burst, 1);
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
