//! The per-CPU cache of host-ban drops (shield-ebpf/src/bans.rs, `SHIELD_BANHIT`) as a user
//! sees it, through BPF_PROG_TEST_RUN on the real object, the test thread kept on one CPU
//! so that every run sees the same CPU's cache. Each test first shows the banned source's
//! drop held in the cache, then changes the bans the way an operator or the data path
//! does, and checks that the very next packet is judged by the bans now stored: an unban
//! (of the address or of a prefix covering it), a ban replaced in place by a monitor-only
//! or attempts-only one, a ban nested under a monitor ban lifted, a ban's end (no sweep
//! needed), an attempts-only ban (never cached: the connection's segments still pass), and
//! an IPv6 address whose first bytes are a banned IPv4 address's. Needs root.

use std::time::Duration;

use shield_common::{BAN_ATTEMPTS, BAN_MANUAL, BAN_MONITOR, Reason};
use shield_tests::{
    HARNESS_IFACE, Harness, L4, Pkt, XDP_DROP, XDP_PASS,
    bancache::{ban_for, cached_on, epoch},
    synflood::pin_to,
};
use shield_user::{bans::BanMaps, loader, policy::parse_cidr};

const SEC: Duration = Duration::from_secs(1);

/// A rule with room to spare (a pass is a pass, not a limit), and escalation so that the
/// data path bans a source for host scope after one strike (an attempts-only ban).
const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/s", burst = 1 }
escalation = { strikes = 1, window = "1m", ban = "1h", scope = "host" }
[[rule]]
name = "ping"
protocol = "icmp"
packets = { rate = "1000/s", burst = 1000 }
"#;

/// A harness whose runs all happen on CPU 0 (the cache is per CPU).
fn harness() -> (Harness, BanMaps) {
    pin_to(0);
    let h = Harness::new(POLICY);
    let maps = BanMaps::open(&loader::pin_dir(&h.bpffs.path, HARNESS_IFACE)).expect("ban maps");
    (h, maps)
}

/// Whether CPU 0's cache holds a drop of `src` that the data path would trust now.
fn cached(h: &Harness, src: &str) -> bool {
    cached_on(&h.ebpf, h, &[src.to_string()], 0) > 0
}

/// Drops `frame` a few times, the last ones from the cache.
fn dropped_and_cached(h: &Harness, frame: &[u8], src: &str, what: &str) {
    for _ in 0..3 {
        assert_eq!(h.run(frame), XDP_DROP, "{what}: banned");
    }
    assert!(cached(h, src), "{what}: the drop is held in the cache");
}

#[test]
fn an_unban_is_honoured_by_the_very_next_packet() {
    for (ban, src) in [
        ("192.0.2.7/32", "192.0.2.7"),
        ("198.51.100.0/24", "198.51.100.77"),
        ("2001:db8::7/128", "2001:db8::7"),
        ("2001:db8:1::/48", "2001:db8:1::99"),
    ] {
        let (h, mut maps) = harness();
        let ping = Pkt::new(src, L4::Echo).bytes();
        // Another ban stays: the data path still looks host bans up after the unban.
        ban_for(&mut maps, "233.252.0.1/32", 3600 * SEC, BAN_MANUAL);
        ban_for(&mut maps, ban, 3600 * SEC, BAN_MANUAL);
        dropped_and_cached(&h, &ping, src, ban);
        maps.unban(parse_cidr(ban).unwrap()).expect("unban");
        assert!(!cached(&h, src), "{ban}: the unban moved the epoch");
        assert_eq!(h.run(&ping), XDP_PASS, "{ban}: unbanned, passes at once");
    }
}

#[test]
fn a_ban_replaced_in_place_is_honoured_by_the_very_next_packet() {
    // A monitor-only ban replaces the full one (it ends later, so it is not kept): the
    // source passes, counted `would_ban`.
    let (h, mut maps) = harness();
    let src = "192.0.2.8";
    let ping = Pkt::new(src, L4::Echo).bytes();
    ban_for(&mut maps, "192.0.2.8/32", 3600 * SEC, BAN_MANUAL);
    dropped_and_cached(&h, &ping, src, "full ban");
    ban_for(&mut maps, "192.0.2.8/32", 7200 * SEC, BAN_MONITOR);
    let watched = h.count("ping", Reason::WouldBan).packets;
    assert_eq!(h.run(&ping), XDP_PASS, "monitor-only now: passes");
    assert_eq!(h.count("ping", Reason::WouldBan).packets, watched + 1);

    // An attempts-only ban replaces the full one: a segment of an established connection
    // passes, a new connection attempt is still dropped.
    let (h, mut maps) = harness();
    let src = "2001:db8::8";
    let ack = Pkt::new(src, L4::ack(8080)).bytes();
    ban_for(&mut maps, "2001:db8::8/128", 3600 * SEC, BAN_MANUAL);
    dropped_and_cached(&h, &ack, src, "full ban");
    ban_for(&mut maps, "2001:db8::8/128", 7200 * SEC, BAN_ATTEMPTS);
    assert_eq!(
        h.run(&ack),
        XDP_PASS,
        "attempts-only now: the segment passes"
    );
    let syn = Pkt::new(src, L4::syn(8080)).bytes();
    assert_eq!(h.run(&syn), XDP_DROP, "and a new attempt is dropped");
}

#[test]
fn lifting_a_ban_under_a_monitor_ban_is_honoured_by_the_very_next_packet() {
    let (mut h, mut maps) = harness();
    let src = "203.0.113.5";
    let ping = Pkt::new(src, L4::Echo).bytes();
    ban_for(&mut maps, "203.0.113.5/32", 3600 * SEC, BAN_MONITOR);
    ban_for(&mut maps, "203.0.113.0/24", 3600 * SEC, BAN_MANUAL);
    dropped_and_cached(&h, &ping, src, "the /24 under a monitor /32");
    maps.unban(parse_cidr("203.0.113.0/24").unwrap())
        .expect("unban");
    let watched = h.count("ping", Reason::WouldBan).packets;
    assert_eq!(h.run(&ping), XDP_PASS, "only the monitor ban is left");
    assert_eq!(h.count("ping", Reason::WouldBan).packets, watched + 1);
    // And the cache never outlives a ban: a later full ban is cached anew and ends on time.
    ban_for(&mut maps, "203.0.113.0/24", 60 * SEC, BAN_MANUAL);
    dropped_and_cached(&h, &ping, src, "banned again");
    h.advance(59 * SEC);
    assert_eq!(h.run(&ping), XDP_DROP, "a second before its end");
    h.advance(SEC);
    assert_eq!(
        h.run(&ping),
        XDP_PASS,
        "ended: passes without waiting for the daemon's sweep"
    );
}

#[test]
fn an_attempts_only_ban_is_never_cached() {
    // The data path's own ban (escalation: attempts-only, host scope) drops new attempts
    // but the source's established connections go on.
    let (h, _maps) = harness();
    let src = "192.0.2.44";
    let syn = Pkt::new(src, L4::syn(8080)).bytes();
    let before = epoch(&h);
    assert_eq!(h.run(&syn), XDP_PASS);
    assert_eq!(h.run(&syn), XDP_DROP, "over the limit: struck and banned");
    assert_eq!(h.bans().len(), 1, "banned by the data path");
    assert_eq!(epoch(&h), before + 1, "the data path's ban moved the epoch");
    for _ in 0..3 {
        assert_eq!(h.run(&syn), XDP_DROP, "attempts dropped");
    }
    assert!(!cached(&h, src), "an attempts-only ban is not cached");
    let ack = Pkt::new(src, L4::ack(8080)).bytes();
    assert_eq!(h.run(&ack), XDP_PASS, "a segment of a connection passes");
}

#[test]
fn an_ipv6_address_with_a_banned_ipv4_addresss_bytes_is_not_dropped() {
    let (h, mut maps) = harness();
    ban_for(&mut maps, "192.0.2.1/32", 3600 * SEC, BAN_MANUAL);
    dropped_and_cached(
        &h,
        &Pkt::new("192.0.2.1", L4::Echo).bytes(),
        "192.0.2.1",
        "IPv4",
    );
    // c000:201:: holds 192.0.2.1's four bytes, then zeros: the same words in the cache.
    assert_eq!(
        h.run(&Pkt::new("c000:201::", L4::Echo).bytes()),
        XDP_PASS,
        "another family"
    );
}

#[test]
fn a_load_moves_the_epoch_on_and_never_back() {
    let (mut h, mut maps) = harness();
    ban_for(&mut maps, "192.0.2.9/32", 3600 * SEC, BAN_MANUAL);
    let before = epoch(&h);
    assert!(before >= 1, "the ban moved it");
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    h.ebpf = loader::load(&dir, 262_144).expect("loading over the pins");
    assert_eq!(
        epoch(&h),
        before + 1,
        "the load's recount of the bans moves it on, never rewrites it"
    );
    dropped_and_cached(
        &h,
        &Pkt::new("192.0.2.9", L4::Echo).bytes(),
        "192.0.2.9",
        "after the load",
    );
}
