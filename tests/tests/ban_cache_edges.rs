//! The per-CPU cache of host-ban drops (shield-ebpf/src/bans.rs, `SHIELD_BANHIT`) under
//! the attacks a review tried on it, through BPF_PROG_TEST_RUN on the real object (see
//! `ban_cache` for the plain cases): more banned sources than the cache has slots (every
//! slot shared, entries evicting each other), the caches of every CPU after an unban, the
//! data path itself replacing a cached ban in place (a source whose nested bans are deeper
//! than the walk's bound escalates to a ban on the cached ban's own prefix), the test
//! clock moved back over a ban's end before and after the sweep, the ban lookups turned
//! off and on, and a program left attached while a new one is loaded over the same pins
//! (a restart: the old program's cache must follow the new daemon's unban). In each, what
//! the very next packet meets is what the bans stored say. Needs root and 2 CPUs.

use std::time::Duration;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use shield_common::{
    BAN_ATTEMPTS, BAN_HIT_SLOTS, BAN_MANUAL, BAN_MONITOR, HOST_BAN_WALK, PROGRAM_NAME,
};
use shield_tests::{
    HARNESS_IFACE, Harness, L4, Pkt, XDP_DROP, XDP_PASS,
    bancache::{ban_for, cached_on},
    synflood::{cpus, pin_to},
};
use shield_user::{
    bans::{BanMaps, Cuts, Origin},
    loader,
    policy::parse_cidr,
};

const SEC: Duration = Duration::from_secs(1);
const T0: u64 = 1_000 * 1_000_000_000;

/// A rule whose sources are /24s, banned for host scope after one strike (the data path's
/// own attempts-only ban, on the /24), and one with room to spare.
const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
ipv4_prefix = 24
connections = { rate = "1/s", burst = 1 }
escalation = { strikes = 1, window = "1m", ban = "1h", scope = "host" }
[[rule]]
name = "ping"
protocol = "icmp"
packets = { rate = "1000000/s", burst = 1000000 }
"#;

/// The harness, with its clock frozen at `T0` and a bystander's host ban for a day, so
/// that the data path goes on looking host bans up whatever a test lifts (with no host
/// ban stored it skips the lookups, and so the cache, altogether).
fn harness() -> (Harness, BanMaps) {
    let h = Harness::frozen(POLICY, T0);
    let mut maps = BanMaps::open(&loader::pin_dir(&h.bpffs.path, HARNESS_IFACE)).expect("ban maps");
    ban_for(&mut maps, "233.252.0.1/32", 86_400 * SEC, BAN_MANUAL);
    (h, maps)
}

fn unban(maps: &mut BanMaps, cidr: &str) {
    let gone = maps
        .unban(parse_cidr(cidr).expect("a CIDR"))
        .expect("unban");
    assert!(!gone.is_empty(), "{cidr} was banned");
}

/// Runs `ebpf`'s shield program once (another object than the harness' own).
fn run_on(ebpf: &Ebpf, frame: &[u8]) -> u32 {
    let prog: &Xdp = ebpf
        .program(PROGRAM_NAME)
        .expect("the shield program")
        .try_into()
        .expect("an XDP program");
    let mut out = vec![0u8; frame.len() + 256];
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: 1,
        ..Default::default()
    })
    .expect("BPF_PROG_TEST_RUN")
    .return_value
}

#[test]
fn more_banned_sources_than_slots_are_all_dropped_then_all_passed() {
    pin_to(0);
    let (h, mut maps) = harness();
    // Three times the slots: every slot is shared, each packet evicts another source.
    let srcs: Vec<String> = (0..3 * BAN_HIT_SLOTS)
        .map(|i| format!("10.77.{}.{}", i / 250, 1 + i % 250))
        .collect();
    let frames: Vec<Vec<u8>> = srcs.iter().map(|s| Pkt::new(s, L4::Echo).bytes()).collect();
    ban_for(&mut maps, "10.77.0.0/16", 3600 * SEC, BAN_MANUAL);
    for round in 0..3 {
        for (s, f) in srcs.iter().zip(&frames) {
            assert_eq!(
                h.run(f),
                XDP_DROP,
                "round {round}: {s} is in the banned /16"
            );
        }
    }
    let held = cached_on(&h.ebpf, &h, &srcs, 0);
    assert!(
        held > 0 && held <= BAN_HIT_SLOTS as usize,
        "the cache holds some of them, at most one a slot ({held})"
    );
    unban(&mut maps, "10.77.0.0/16");
    for (s, f) in srcs.iter().zip(&frames) {
        assert_eq!(h.run(f), XDP_PASS, "{s}: unbanned, passes at once");
    }
    // One source banned again among them: only it is dropped, whatever slot it shares.
    let one = &srcs[1000];
    ban_for(&mut maps, &format!("{one}/32"), 3600 * SEC, BAN_MANUAL);
    for _ in 0..2 {
        for (s, f) in srcs.iter().zip(&frames) {
            let want = if s == one { XDP_DROP } else { XDP_PASS };
            assert_eq!(h.run(f), want, "{s} (only {one} is banned)");
        }
    }
}

#[test]
fn the_cache_of_every_cpu_follows_an_unban() {
    let n = cpus();
    assert!(
        n >= 2,
        "this test needs 2 CPUs (the cache is per CPU), the machine offers {n}"
    );
    let (h, mut maps) = harness();
    let src = "192.0.2.66".to_string();
    let ping = Pkt::new(&src, L4::Echo).bytes();
    ban_for(&mut maps, "192.0.2.66/32", 3600 * SEC, BAN_MANUAL);
    for cpu in [0, 1] {
        pin_to(cpu);
        for _ in 0..3 {
            assert_eq!(h.run(&ping), XDP_DROP, "CPU {cpu}: banned");
        }
        assert_eq!(
            cached_on(&h.ebpf, &h, std::slice::from_ref(&src), cpu),
            1,
            "CPU {cpu} holds the drop"
        );
    }
    unban(&mut maps, "192.0.2.66/32");
    for cpu in [1, 0] {
        pin_to(cpu);
        assert_eq!(
            h.run(&ping),
            XDP_PASS,
            "CPU {cpu}: unbanned, passes at once"
        );
    }
}

#[test]
fn the_data_path_replacing_a_cached_ban_is_honoured_by_the_very_next_packet() {
    pin_to(0);
    let (h, mut maps) = harness();
    // The operator bans 10.9.9.0/24 outright for 30 minutes (the rule's ban, 1 h, ends
    // later: it replaces this one, where a shorter one would leave it in force); 10.9.9.7's
    // drop is cached.
    let x = "10.9.9.7".to_string();
    ban_for(&mut maps, "10.9.9.0/24", 1800 * SEC, BAN_MANUAL);
    let x_ack = Pkt::new(&x, L4::ack(8080)).bytes();
    for _ in 0..3 {
        assert_eq!(h.run(&x_ack), XDP_DROP, "{x}: banned outright");
    }
    assert_eq!(cached_on(&h.ebpf, &h, std::slice::from_ref(&x), 0), 1);
    // 10.9.9.200 sits under monitor bans on every prefix from /32 to /25: more than a
    // lookup walks through, so the /24 is not reached and it is judged by the rule.
    let y = "10.9.9.200";
    let y_bits = u32::from(y.parse::<std::net::Ipv4Addr>().expect("IPv4"));
    for len in (32 - HOST_BAN_WALK as u32 + 1..=32).rev() {
        let net = std::net::Ipv4Addr::from(y_bits & (u32::MAX << (32 - len)));
        ban_for(&mut maps, &format!("{net}/{len}"), 3600 * SEC, BAN_MONITOR);
    }
    let y_syn = Pkt::new(y, L4::syn(8080)).bytes();
    assert_eq!(h.run(&y_syn), XDP_PASS, "{y}: monitor bans only");
    // Those bans moved the epoch: 10.9.9.7's drop is cached again.
    for _ in 0..3 {
        assert_eq!(h.run(&x_ack), XDP_DROP, "{x}: still banned outright");
    }
    assert_eq!(cached_on(&h.ebpf, &h, std::slice::from_ref(&x), 0), 1);
    assert_eq!(h.run(&y_syn), XDP_DROP, "{y}: over the limit, struck");
    // Its ban is on its /24 (the rule's prefix): the operator's ban is replaced in place by
    // an automatic, attempts-only one.
    let b = h
        .bans()
        .into_iter()
        .find(|b| b.source == "10.9.9.0/24")
        .expect("the /24's ban");
    assert_eq!(
        (b.origin, b.cuts),
        (Origin::Automatic, Cuts::NewConnections)
    );
    assert_eq!(
        h.run(&x_ack),
        XDP_PASS,
        "{x}: the /24's ban stops new connections only now: a segment passes"
    );
    assert_eq!(
        h.run(&Pkt::new(&x, L4::syn(8080)).bytes()),
        XDP_DROP,
        "{x}: a new connection is still refused"
    );
}

#[test]
fn the_test_clock_moved_back_over_a_bans_end_meets_the_bans_stored() {
    pin_to(0);
    let (h, mut maps) = harness();
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let mut clock = loader::PolicyMaps::open(&dir).expect("policy maps");
    let src = "198.51.100.9";
    let ping = Pkt::new(src, L4::Echo).bytes();
    ban_for(&mut maps, "198.51.100.9/32", 60 * SEC, BAN_MANUAL);
    for _ in 0..3 {
        assert_eq!(h.run(&ping), XDP_DROP, "banned");
    }
    clock.freeze_clock(T0 + 60 * 1_000_000_000).expect("clock");
    assert_eq!(h.run(&ping), XDP_PASS, "at its end");
    // Back before the end: the ban is still stored and in force again.
    clock.freeze_clock(T0 + 30 * 1_000_000_000).expect("clock");
    assert_eq!(h.run(&ping), XDP_DROP, "back before its end, still stored");
    // Forward, the sweep removes it; back again, nothing is stored any more.
    clock.freeze_clock(T0 + 61 * 1_000_000_000).expect("clock");
    assert_eq!(maps.sweep().expect("sweep").len(), 1, "swept");
    clock.freeze_clock(T0 + 30 * 1_000_000_000).expect("clock");
    assert_eq!(h.run(&ping), XDP_PASS, "swept: back before its end, passes");
}

#[test]
fn ban_lookups_turned_off_and_on_meet_the_bans_stored() {
    pin_to(0);
    let (h, mut maps) = harness();
    let src = "203.0.113.77";
    let ping = Pkt::new(src, L4::Echo).bytes();
    ban_for(&mut maps, "203.0.113.77/32", 3600 * SEC, BAN_MANUAL);
    for _ in 0..3 {
        assert_eq!(h.run(&ping), XDP_DROP, "banned");
    }
    maps.set_bans_flag(false).expect("lookups off");
    assert_eq!(
        h.run(&ping),
        XDP_PASS,
        "ban lookups off: nothing is looked up"
    );
    maps.set_bans_flag(true).expect("lookups on");
    assert_eq!(
        h.run(&ping),
        XDP_DROP,
        "on again: the ban, still stored, drops"
    );
    // Replaced by an attempts-only ban while the lookups were off (a ban turns them on:
    // off again behind it).
    maps.set_bans_flag(false).expect("lookups off");
    ban_for(&mut maps, "203.0.113.77/32", 7200 * SEC, BAN_ATTEMPTS);
    maps.set_bans_flag(false).expect("lookups off");
    assert_eq!(h.run(&ping), XDP_PASS, "off: nothing is looked up");
    maps.set_bans_flag(true).expect("lookups on");
    assert_eq!(
        h.run(&ping),
        XDP_DROP,
        "attempts-only: a ping is an attempt"
    );
    assert_eq!(
        h.run(&Pkt::new(src, L4::ack(8080)).bytes()),
        XDP_PASS,
        "attempts-only: a segment passes"
    );
}

#[test]
fn a_program_left_attached_follows_the_unban_of_a_daemon_started_over_its_pins() {
    pin_to(0);
    let (mut h, mut maps) = harness();
    let src = "192.0.2.123".to_string();
    let ping = Pkt::new(&src, L4::Echo).bytes();
    ban_for(&mut maps, "192.0.2.123/32", 3600 * SEC, BAN_MANUAL);
    // The running program (the daemon stops, its link keeps it attached).
    for _ in 0..3 {
        assert_eq!(h.run(&ping), XDP_DROP, "banned");
    }
    // A new daemon loads its program over the pins; the old one still runs until the
    // link is handed over, its cache warm (noted again after the load's epoch move).
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let old = std::mem::replace(
        &mut h.ebpf,
        loader::load(&dir, 262_144).expect("loading over the pins"),
    );
    for _ in 0..3 {
        assert_eq!(run_on(&old, &ping), XDP_DROP, "old program: banned");
        assert_eq!(h.run(&ping), XDP_DROP, "new program: banned");
    }
    assert_eq!(cached_on(&old, &h, std::slice::from_ref(&src), 0), 1);
    // The new daemon's own ban maps (as it opens them) lift the ban.
    let mut fresh = BanMaps::open(&dir).expect("ban maps");
    unban(&mut fresh, "192.0.2.123/32");
    assert_eq!(
        run_on(&old, &ping),
        XDP_PASS,
        "old program: unbanned at once"
    );
    assert_eq!(h.run(&ping), XDP_PASS, "new program: unbanned at once");
}
