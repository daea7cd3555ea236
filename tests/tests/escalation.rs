//! Escalation in the data path (BPF_PROG_TEST_RUN on the real object): strikes per second,
//! ban after `strikes`, expiry, the backoff ladder up to `max_ban`, host vs rule scope,
//! monitor mode, events, manual bans. Time is advanced through the config map's test
//! clock offset, so a minute of offences takes milliseconds.

use std::time::Duration;

use shield_common::{EV_BAN, EV_LIMITED, EV_WOULD_BAN, Reason};
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS};
use shield_user::policy::parse_cidr;

const SEC: Duration = Duration::from_secs(1);

fn policy(scope: &str, mode: &str) -> String {
    format!(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
mode = "{mode}"
connections = {{ rate = "1/s", burst = 1 }}
escalation = {{ strikes = 3, window = "1m", ban = "30s", backoff = 2, max_ban = "100s", scope = "{scope}", forget = "10m" }}
"#
    )
}

/// One second of offence: two SYNs (the first takes the second's token, the second is
/// refused and strikes), then the clock moves one second. Returns both verdicts.
fn offend(h: &mut Harness, frame: &[u8]) -> [u32; 2] {
    let v = [h.run(frame), h.run(frame)];
    h.advance(SEC);
    v
}

#[test]
fn strikes_count_once_per_second_and_ban_after_three() {
    let mut h = Harness::new(&policy("rule", "enforce"));
    let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    // Many refusals within one second: one event, one strike.
    assert_eq!(h.run(&syn), XDP_PASS);
    for _ in 0..50 {
        assert_eq!(h.run(&syn), XDP_DROP);
    }
    let ev = h.events();
    assert_eq!(ev.len(), 1, "one event per source per second, got {ev:?}");
    assert_eq!((ev[0].kind, ev[0].strikes), (EV_LIMITED, 1));
    assert_eq!(ev[0].reason, Reason::ConnLimit as u32);
    assert!(h.bans().is_empty(), "one strike does not ban");

    h.advance(SEC);
    assert_eq!(offend(&mut h, &syn), [XDP_PASS, XDP_DROP]); // strike 2
    assert!(h.bans().is_empty(), "two strikes do not ban");
    // Strike 3: the refused packet bans the source.
    assert_eq!(h.run(&syn), XDP_PASS);
    assert_eq!(h.run(&syn), XDP_DROP);
    let bans = h.bans();
    assert_eq!(bans.len(), 1, "banned after 3 strikes: {bans:?}");
    assert_eq!(
        (
            bans[0].source.as_str(),
            bans[0].scope.to_string().as_str(),
            bans[0].rule.as_str(),
            bans[0].origin.to_string().as_str()
        ),
        ("192.0.2.1/32", "rule", "api", "automatic")
    );
    assert_eq!(bans[0].duration_secs, 30.0);
    let ev = h.events();
    let ban_ev: Vec<_> = ev.iter().filter(|e| e.kind == EV_BAN).collect();
    assert_eq!(ban_ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ban_ev[0].strikes, ban_ev[0].level, ban_ev[0].duration_ns),
        (3, 0, 30_000_000_000)
    );

    // Banned: every connection attempt to the rule's ports is dropped with no further
    // bucket or LRU work; an automatic ban (spoofable evidence) lets established
    // connections' segments through.
    let ack = Pkt::new("192.0.2.1", L4::ack(8080)).bytes();
    h.advance(5 * SEC);
    assert_eq!(h.run(&syn), XDP_DROP);
    assert_eq!(h.run(&syn), XDP_DROP);
    assert_eq!(h.run(&ack), XDP_PASS);
    assert_eq!(h.count("api", Reason::Ban).packets, 2);
    // Rule scope: the source's other traffic is untouched.
    assert_eq!(h.run(&Pkt::new("192.0.2.1", L4::syn(22)).bytes()), XDP_PASS);
    // Another source is not affected.
    assert_eq!(
        h.run(&Pkt::new("192.0.2.2", L4::syn(8080)).bytes()),
        XDP_PASS
    );

    // Expiry: 30 s after the ban started, traffic flows again.
    h.advance(25 * SEC);
    assert_eq!(h.run(&ack), XDP_PASS, "ban must expire after 30 s");
}

#[test]
fn backoff_ladder_doubles_up_to_max_ban_and_forget_resets_it() {
    let mut h = Harness::new(&policy("rule", "enforce"));
    let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    let mut durations = Vec::new();
    for _ in 0..4 {
        for _ in 0..3 {
            offend(&mut h, &syn);
        }
        let ev: Vec<_> = h
            .events()
            .into_iter()
            .filter(|e| e.kind == EV_BAN)
            .collect();
        assert_eq!(ev.len(), 1);
        durations.push(ev[0].duration_ns / 1_000_000_000);
        // Sit the ban out.
        h.advance(Duration::from_secs(ev[0].duration_ns / 1_000_000_000));
    }
    assert_eq!(
        durations,
        vec![30, 60, 100, 100],
        "30 s × 2 each time, capped at max_ban"
    );
    // After `forget` (10 min) without a ban, the ladder starts over.
    h.advance(Duration::from_secs(601));
    for _ in 0..3 {
        offend(&mut h, &syn);
    }
    let ev: Vec<_> = h
        .events()
        .into_iter()
        .filter(|e| e.kind == EV_BAN)
        .collect();
    assert_eq!(ev[0].duration_ns, 30_000_000_000);
}

#[test]
fn strikes_outside_the_window_do_not_ban() {
    let mut h = Harness::new(&policy("rule", "enforce"));
    let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..10 {
        offend(&mut h, &syn);
        // Two strikes per minute never reach three within the 1 min window.
        h.advance(Duration::from_secs(35));
    }
    assert!(h.bans().is_empty());
}

#[test]
fn host_scope_ban_covers_every_port_and_the_whole_slash64() {
    let mut h = Harness::new(&policy("host", "enforce"));
    let syn = Pkt::new("2001:db8:1:2::a", L4::syn(8080)).bytes();
    for _ in 0..3 {
        offend(&mut h, &syn);
    }
    let bans = h.bans();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(
        (bans[0].source.as_str(), bans[0].scope.to_string().as_str()),
        ("2001:db8:1:2::/64", "host")
    );
    // Any port, any protocol, any address of the /64.
    for pkt in [
        Pkt::new("2001:db8:1:2::b", L4::syn(8080)),
        Pkt::new("2001:db8:1:2::c", L4::syn(22)),
        Pkt::new("2001:db8:1:2:ffff::1", L4::Udp { dport: 53 }),
        Pkt::new("2001:db8:1:2::d", L4::Echo),
    ] {
        assert_eq!(h.run(&pkt.bytes()), XDP_DROP, "{pkt:?} must be banned");
    }
    assert_eq!(
        h.count("(none)", Reason::Ban).packets,
        3,
        "unmatched ports count under (none)"
    );
    assert_eq!(
        h.run(&Pkt::new("2001:db8:1:3::1", L4::syn(22)).bytes()),
        XDP_PASS
    );
}

#[test]
fn monitor_mode_counts_would_ban_and_drops_nothing() {
    let mut h = Harness::new(&policy("host", "monitor"));
    let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..3 {
        assert_eq!(offend(&mut h, &syn), [XDP_PASS, XDP_PASS]);
    }
    let ev = h.events();
    assert!(ev.iter().any(|e| e.kind == EV_WOULD_BAN), "{ev:?}");
    assert!(!ev.iter().any(|e| e.kind == EV_BAN));
    let bans = h.bans();
    assert!(bans.len() == 1 && bans[0].monitor, "{bans:?}");
    for _ in 0..5 {
        assert_eq!(h.run(&Pkt::new("192.0.2.1", L4::syn(22)).bytes()), XDP_PASS);
    }
    assert_eq!(h.count("(none)", Reason::WouldBan).packets, 5);
    assert_eq!(h.count("api", Reason::WouldDrop).packets, 3);
    assert_eq!(h.count("api", Reason::Ban).packets, 0);
}

#[test]
fn manual_bans_host_and_rule_then_unban() {
    // No escalation in this policy: ban lookups are off until a manual ban turns them on.
    let mut h = Harness::new(
        "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = { rate = \"1/s\", burst = 1 }\n",
    );
    let dir = shield_user::loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE);
    let mut maps = shield_user::bans::BanMaps::open(&dir).expect("ban maps");
    maps.ban(
        parse_cidr("198.51.100.0/24").unwrap(),
        Duration::from_secs(60),
        None,
        None,
    )
    .expect("manual host ban");
    maps.ban(
        parse_cidr("192.0.2.9").unwrap(),
        Duration::from_secs(60),
        Some("api"),
        None,
    )
    .expect("manual rule ban");
    let err = maps
        .ban(
            parse_cidr("192.0.2.0/24").unwrap(),
            Duration::from_secs(60),
            Some("api"),
            None,
        )
        .expect_err("rule ban with a prefix other than the rule's scope");
    assert!(
        err.to_string().contains("tracks IPv4 sources as /32"),
        "{err}"
    );
    let err = maps
        .ban(
            parse_cidr("192.0.2.9").unwrap(),
            Duration::from_secs(60),
            Some("nope"),
            None,
        )
        .expect_err("unknown rule");
    assert!(err.to_string().contains("no rule named `nope`"), "{err}");

    assert_eq!(
        h.run(&Pkt::new("198.51.100.77", L4::Echo).bytes()),
        XDP_DROP
    );
    assert_eq!(
        h.run(&Pkt::new("192.0.2.9", L4::syn(8080)).bytes()),
        XDP_DROP
    );
    assert_eq!(h.run(&Pkt::new("192.0.2.9", L4::syn(22)).bytes()), XDP_PASS);
    let listed = h.bans();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|b| b.origin == "manual"));

    let removed = maps
        .unban(parse_cidr("198.51.100.0/24").unwrap())
        .expect("unban");
    assert_eq!(removed.len(), 1);
    assert_eq!(
        h.run(&Pkt::new("198.51.100.77", L4::Echo).bytes()),
        XDP_PASS
    );
    // Expired bans stop applying before the sweep removes them.
    h.advance(Duration::from_secs(61));
    assert_eq!(
        h.run(&Pkt::new("192.0.2.9", L4::syn(8080)).bytes()),
        XDP_PASS
    );
    let swept = maps.sweep().expect("sweep");
    assert_eq!(swept.len(), 1);
    assert!(h.bans().is_empty());
}

/// A monitored rule (`watch`, host scope) and an enforced one (`api`) on other ports.
const MIXED: &str = r#"
[[rule]]
name = "watch"
protocol = "tcp"
ports = [8080]
mode = "monitor"
connections = { rate = "1/s", burst = 1 }
escalation = { strikes = 3, window = "1m", ban = "1h", scope = "host" }
[[rule]]
name = "api"
protocol = "tcp"
ports = [9000]
connections = { rate = "1/s", burst = 2 }
"#;

#[test]
fn a_monitor_ban_does_not_exempt_its_source_from_enforced_rules() {
    let mut h = Harness::new(MIXED);
    let watched = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..3 {
        assert_eq!(offend(&mut h, &watched), [XDP_PASS, XDP_PASS]);
    }
    let bans = h.bans();
    assert!(bans.len() == 1 && bans[0].monitor, "a would_ban: {bans:?}");
    // The enforced rule still judges the source: its burst passes (counted would_ban, as
    // the monitor ban would have dropped them), the rest is refused.
    let api = Pkt::new("192.0.2.1", L4::syn(9000)).bytes();
    let got: Vec<u32> = (0..4).map(|_| h.run(&api)).collect();
    assert_eq!(
        got,
        [XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP],
        "a source with a monitor-mode ban went unjudged by the enforced rule"
    );
    assert_eq!(h.count("api", Reason::WouldBan).packets, 2);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 2);
    assert_eq!(h.count("api", Reason::Pass).packets, 0);
    // The monitored rule keeps judging too (would_drop), never `ban`.
    assert_eq!(h.run(&watched), XDP_PASS);
    assert_eq!(h.count("watch", Reason::Ban).packets, 0);
}

#[test]
fn switching_a_rule_to_enforce_drops_its_monitor_bans() {
    let mut h = Harness::new(MIXED);
    let watched = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..3 {
        assert_eq!(offend(&mut h, &watched), [XDP_PASS, XDP_PASS]);
    }
    assert_eq!(h.bans().len(), 1);
    h.reload(&MIXED.replace("mode = \"monitor\"\n", ""), 2);
    let dir = shield_user::loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE);
    let mut maps = shield_user::bans::BanMaps::open(&dir).expect("ban maps");
    let dropped = maps.drop_enforced_monitor_bans().expect("dropping");
    assert_eq!(
        dropped.len(),
        1,
        "the monitor ban of the enforced rule: {dropped:?}"
    );
    assert!(h.bans().is_empty(), "no monitor ban left: {:?}", h.bans());
    // From now on the source is judged by the enforced rule alone.
    h.advance(SEC);
    assert_eq!(h.run(&watched), XDP_PASS);
    assert_eq!(h.run(&watched), XDP_DROP);
    assert_eq!(h.count("watch", Reason::WouldBan).packets, 0);
}

/// Overlapping host bans are each honoured: an expired or monitor-mode ban on a longer
/// prefix (the LPM's longest match) must not hide an active ban on a shorter one.
#[test]
fn a_lapsed_or_monitor_ban_never_hides_a_covering_ban() {
    let mut h = Harness::new(&policy("host", "monitor"));
    let dir = shield_user::loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE);
    let mut maps = shield_user::bans::BanMaps::open(&dir).expect("ban maps");
    let ban = |maps: &mut shield_user::bans::BanMaps, cidr: &str, secs: u64| {
        maps.ban(
            parse_cidr(cidr).unwrap(),
            Duration::from_secs(secs),
            None,
            None,
        )
        .expect("manual host ban");
    };
    // 1. A monitor /32 ban (3 offences against the monitored rule) inside an active /24.
    let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..3 {
        assert_eq!(offend(&mut h, &syn), [XDP_PASS, XDP_PASS]);
    }
    assert!(
        h.bans()
            .iter()
            .any(|b| b.monitor && b.source == "192.0.2.1/32")
    );
    ban(&mut maps, "192.0.2.0/24", 3600);
    // 2. Expired /32 and /128 bans inside active /16 and /48 bans.
    ban(&mut maps, "198.51.100.7/32", 1);
    ban(&mut maps, "198.51.0.0/16", 3600);
    ban(&mut maps, "2001:db8:5::7/128", 1);
    ban(&mut maps, "2001:db8:5::/48", 3600);
    // 3. Three nested levels: expired /32, expired /28, active /20.
    ban(&mut maps, "10.1.2.3/32", 1);
    ban(&mut maps, "10.1.2.0/28", 1);
    ban(&mut maps, "10.1.0.0/20", 3600);
    h.advance(2 * SEC);
    for src in [
        "192.0.2.1",
        "198.51.100.7",
        "2001:db8:5::7",
        "10.1.2.3",
        "10.1.2.4",
        "10.1.5.5",
    ] {
        assert_eq!(
            h.run(&Pkt::new(src, L4::syn(22)).bytes()),
            XDP_DROP,
            "{src} is inside an active host ban but passed: a longer lapsed or monitor ban hid it"
        );
    }
    assert_eq!(h.count("(none)", Reason::Ban).packets, 6);
    // Outside every active ban: passes.
    assert_eq!(h.run(&Pkt::new("10.1.16.1", L4::syn(22)).bytes()), XDP_PASS);
}

/// A ban the full ban map refuses is reported as a failed ban (`EV_BAN_FAILED`, the
/// `ban_insert_failures` counter), never as a ban that does not exist.
#[test]
fn a_ban_the_full_table_refuses_is_reported_as_failed() {
    let mut h = Harness::new(&policy("rule", "enforce"));
    {
        let map = h
            .ebpf
            .map_mut(shield_common::MAP_RULE_BANS)
            .expect("rule bans map");
        let mut bans: aya::maps::HashMap<_, shield_common::SourceKey, shield_common::BanValue> =
            aya::maps::HashMap::try_from(map).expect("hash map");
        // Fill it with lapsed bans of a rule id no policy uses.
        for i in 0..shield_common::MAX_BANS {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&(0x0a00_0000u32 + i).to_be_bytes());
            let key = shield_common::SourceKey {
                rule: 200,
                family: shield_common::addr::FAMILY_V4,
                prefix_len: 32,
                addr,
            };
            bans.insert(key, shield_common::BanValue::default(), 0)
                .expect("filling the ban map");
        }
    }
    let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..3 {
        assert_eq!(offend(&mut h, &syn), [XDP_PASS, XDP_DROP]);
    }
    let ev = h.events();
    assert!(
        !ev.iter().any(|e| e.kind == EV_BAN),
        "a ban the full table refused was reported as a ban: {ev:?}"
    );
    assert_eq!(
        ev.iter()
            .filter(|e| e.kind == shield_common::EV_BAN_FAILED)
            .count(),
        1,
        "one failed ban reported: {ev:?}"
    );
    assert_eq!(h.stats().ban_insert_failures, 1);
    assert!(
        !h.bans().iter().any(|b| b.source == "192.0.2.1/32"),
        "no ban exists"
    );
    // Not banned: the next second's token passes.
    assert_eq!(h.run(&syn), XDP_PASS);
}

/// Evidence decides the strength of a ban: an automatic ban (a SYN rate: a spoofer can
/// send SYNs with a victim's address) stops new attempts only and never cuts the victim's
/// established connections; a manual ban (the operator's evidence) cuts everything.
#[test]
fn spoofable_evidence_never_cuts_established_connections() {
    let mut h = Harness::new(&policy("host", "enforce"));
    // A spoofer floods SYNs "from" a partner: 3 strikes, a host-wide ban.
    let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..3 {
        offend(&mut h, &syn);
    }
    let bans = h.bans();
    assert!(bans.len() == 1 && bans[0].scope == "host", "{bans:?}");
    let from = |l4| Pkt::new("192.0.2.1", l4).bytes();
    // New connection attempts and datagrams are refused, on every port.
    assert_eq!(h.run(&from(L4::syn(8080))), XDP_DROP);
    assert_eq!(h.run(&from(L4::syn(22))), XDP_DROP);
    assert_eq!(h.run(&from(L4::Udp { dport: 53 })), XDP_DROP);
    // The partner's established connections keep flowing, on every port.
    for port in [8080, 22, 443] {
        assert_eq!(
            h.run(&from(L4::ack(port))),
            XDP_PASS,
            "an automatic ban cut an established connection on port {port}: a spoofer can do this to any victim"
        );
    }
    // A manual ban cuts everything.
    let dir = shield_user::loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE);
    let mut maps = shield_user::bans::BanMaps::open(&dir).expect("ban maps");
    maps.ban(parse_cidr("192.0.2.0/24").unwrap(), 60 * SEC, None, None)
        .expect("manual host ban");
    // The /32 automatic ban passes the segment; the walk finds the /24 manual ban.
    assert_eq!(h.run(&from(L4::ack(8080))), XDP_DROP);
    assert_eq!(h.run(&Pkt::new("192.0.2.9", L4::ack(22)).bytes()), XDP_DROP);
    let b = h.bans();
    assert!(
        b.iter()
            .any(|b| b.source == "192.0.2.1/32" && b.cuts == "new_connections"),
        "{b:?}"
    );
    assert!(
        b.iter()
            .any(|b| b.source == "192.0.2.0/24" && b.cuts == "everything"),
        "{b:?}"
    );
}

/// Two host-scope rules: `login` bans for an hour, `chat` (a `packets` limit, which the
/// segments an attempts-only ban lets through still meet) for ten seconds, or only in
/// monitor mode. `{chat_mode}` is `chat`'s mode.
fn two_ladders(chat_mode: &str) -> String {
    format!(
        r#"
[[rule]]
name = "login"
protocol = "tcp"
ports = [8080]
connections = {{ rate = "1/s", burst = 1 }}
escalation = {{ strikes = 1, window = "1m", ban = "1h", scope = "host" }}
[[rule]]
name = "chat"
protocol = "tcp"
ports = [9000]
mode = "{chat_mode}"
packets = {{ rate = "1/s", burst = 1 }}
escalation = {{ strikes = 1, window = "1m", ban = "10s", scope = "host" }}
"#
    )
}

/// A ban in force is never shortened or weakened by a later automatic ban on the same
/// key: the segments an attempts-only ban lets through can strike under another rule (or
/// the same one after `forget`), whose ban would otherwise replace the longer one (the
/// ban tables hold one ban per key).
#[test]
fn a_shorter_or_monitor_ban_never_replaces_a_longer_one_in_force() {
    for chat_mode in ["enforce", "monitor"] {
        let mut h = Harness::new(&two_ladders(chat_mode));
        let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
        let ack = Pkt::new("192.0.2.1", L4::ack(9000)).bytes();
        // `login` bans the source host-wide for an hour.
        assert_eq!([h.run(&syn), h.run(&syn)], [XDP_PASS, XDP_DROP]);
        let bans = h.bans();
        assert!(
            bans.len() == 1 && bans[0].duration_secs == 3600.0,
            "{bans:?}"
        );
        assert_eq!(h.run(&syn), XDP_DROP);
        // Its segments pass the attempts-only ban and go over `chat`'s packet limit: a
        // strike, and `chat` would ban the same /32 for 10 s (or only watch it).
        h.advance(SEC);
        assert_eq!(h.run(&ack), XDP_PASS);
        assert_eq!(
            h.run(&ack),
            if chat_mode == "enforce" {
                XDP_DROP
            } else {
                XDP_PASS
            }
        );
        let bans = h.bans();
        assert!(
            bans.len() == 1 && bans[0].duration_secs == 3600.0 && !bans[0].monitor,
            "{chat_mode}: `login`'s hour-long ban was replaced: {bans:?}"
        );
        assert_eq!(
            h.run(&syn),
            XDP_DROP,
            "{chat_mode}: the source's SYNs passed under an hour-long ban"
        );
        h.advance(20 * SEC);
        assert_eq!(
            h.run(&syn),
            XDP_DROP,
            "{chat_mode}: the hour-long ban ended after 10 s"
        );
    }
}

/// The same within one rule: a strike after `forget` starts the ladder again at `ban`,
/// which must not cut short the longer ban of the previous rung still in force.
#[test]
fn a_ladder_started_again_after_forget_never_cuts_a_longer_ban_short() {
    let mut h = Harness::new(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/s", burst = 1 }
packets = { rate = "1/s", burst = 2 }
escalation = { strikes = 1, window = "1m", ban = "1m", backoff = 16, max_ban = "1h", forget = "5s" }
"#,
    );
    let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    let ack = Pkt::new("192.0.2.1", L4::ack(8080)).bytes();
    // A minute's ban, then (within `forget`) 16 minutes: segments pass the attempts-only
    // ban and go over the packet limit.
    assert_eq!([h.run(&syn), h.run(&syn)], [XDP_PASS, XDP_DROP]);
    h.advance(2 * SEC);
    while h.run(&ack) == XDP_PASS {}
    let bans = h.bans();
    assert!(
        bans.len() == 1 && bans[0].duration_secs == 960.0,
        "{bans:?}"
    );
    // Past `forget`: the next strike's ban is a minute again, inside the 16.
    h.advance(10 * SEC);
    while h.run(&ack) == XDP_PASS {}
    let bans = h.bans();
    assert!(
        bans.len() == 1 && bans[0].duration_secs == 960.0,
        "the 16-minute ban was replaced by a shorter one: {bans:?}"
    );
    h.advance(120 * SEC);
    assert_eq!(
        h.run(&syn),
        XDP_DROP,
        "the 16-minute ban ended after a minute"
    );
}
