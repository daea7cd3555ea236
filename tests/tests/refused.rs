//! The refusal cache (shield-ebpf/src/refused.rs) as a user sees it, through
//! BPF_PROG_TEST_RUN on the real object with a frozen clock: a source over its limit is
//! dropped exactly as its buckets say (exact drop counts over a burst, `limited` in
//! `shield stats` exact including the refusals the cache still holds), admitted again at
//! its next token time to the nanosecond, admitted at once by a reload that raises its
//! limit (also a reload back to the half it was refused under), and never makes another
//! source refused: not a source of the other class, not an IPv6 source whose address
//! bytes equal an IPv4 one's, not sources sharing its cache slot; refusals on two CPUs
//! are each counted once. Needs root and 2 CPUs (fails, never skips, without them).

use std::collections::HashMap;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use shield_common::{MAP_SOURCES, Reason, SourceKey, SourceState};
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS};

const S: u64 = 1_000_000_000;
const T0: u64 = 7_000 * S;

/// `api`: packets 10/s (one token every 100 ms), burst 5. `conns`: connections 1/min,
/// burst 1, and packets (judged for every segment) 1000/s, burst 1000.
const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
packets = { rate = "10/s", burst = 5 }
[[rule]]
name = "conns"
protocol = "tcp"
ports = [9090]
connections = { rate = "1/min", burst = 1 }
packets = { rate = "1000/s", burst = 1000 }
[[rule]]
name = "watched"
protocol = "tcp"
ports = [7070]
mode = "monitor"
packets = { rate = "10/s", burst = 5 }
[[rule]]
name = "one"
protocol = "tcp"
ports = [6060]
packets = { rate = "1/min", burst = 1 }
"#;

/// The same policy with the `api` limit raised (burst 5000).
const RAISED: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
packets = { rate = "10/s", burst = 5000 }
[[rule]]
name = "conns"
protocol = "tcp"
ports = [9090]
connections = { rate = "1/min", burst = 1 }
packets = { rate = "1000/s", burst = 1000 }
[[rule]]
name = "watched"
protocol = "tcp"
ports = [7070]
mode = "monitor"
packets = { rate = "10/s", burst = 5 }
[[rule]]
name = "one"
protocol = "tcp"
ports = [6060]
packets = { rate = "1/min", burst = 1 }
"#;

fn harness() -> Harness {
    // One CPU for the whole test: the cache is per CPU, and the cases below are about
    // entries meeting in one CPU's slots.
    shield_tests::synflood::pin_to(0);
    Harness::frozen(POLICY, T0)
}

fn ack(src: &str, port: u16) -> Vec<u8> {
    Pkt::new(src, L4::ack(port)).bytes()
}

fn syn(src: &str, port: u16) -> Vec<u8> {
    Pkt::new(src, L4::syn(port)).bytes()
}

/// `limited` of `source` ("a.b.c.d/32") under `rule` as `shield stats` shows it.
fn limited(h: &Harness, rule: &str, source: &str) -> u64 {
    h.stats()
        .top_sources
        .iter()
        .find(|t| t.rule == rule && t.source == source)
        .map_or(0, |t| t.limited)
}

/// (passed, dropped) of `n` runs of `frame`.
fn burst(h: &Harness, frame: &[u8], n: usize) -> (usize, usize) {
    let mut out = (0, 0);
    for _ in 0..n {
        match h.run(frame) {
            XDP_PASS => out.0 += 1,
            XDP_DROP => out.1 += 1,
            other => panic!("unexpected XDP action {other}"),
        }
    }
    out
}

#[test]
fn a_burst_is_refused_exactly_and_limited_counts_every_refusal() {
    let h = harness();
    let f = ack("192.0.2.1", 8080);
    assert_eq!(
        burst(&h, &f, 1000),
        (5, 995),
        "burst 5: five pass, the rest drop"
    );
    assert_eq!(h.count("api", Reason::PktLimit).packets, 995);
    assert_eq!(
        limited(&h, "api", "192.0.2.1/32"),
        995,
        "stats' limited counts every refusal, the cached ones included"
    );
    // Once more: nothing counted twice when the cache hands its refusals over.
    assert_eq!(burst(&h, &f, 500), (0, 500));
    assert_eq!(h.count("api", Reason::PktLimit).packets, 1495);
    assert_eq!(limited(&h, "api", "192.0.2.1/32"), 1495);
}

#[test]
fn a_refused_source_is_admitted_at_its_next_token_time() {
    let mut h = harness();
    let f = ack("192.0.2.2", 8080);
    assert_eq!(burst(&h, &f, 50), (5, 45));
    // 10/s: the next token 100 ms after the burst (the clock is frozen at T0).
    h.advance(Duration::from_nanos(100_000_000 - 1));
    assert_eq!(h.run(&f), XDP_DROP, "1 ns before the next token");
    h.advance(Duration::from_nanos(1));
    assert_eq!(h.run(&f), XDP_PASS, "at the next token");
    assert_eq!(h.run(&f), XDP_DROP, "one token, one packet");
    h.advance(Duration::from_millis(250));
    assert_eq!(burst(&h, &f, 10), (2, 8), "250 ms later: two tokens");
    assert_eq!(h.count("api", Reason::PktLimit).packets, 45 + 2 + 8);
    assert_eq!(limited(&h, "api", "192.0.2.2/32"), 55);
}

#[test]
fn a_reload_raising_the_limit_admits_at_once() {
    let mut h = harness();
    let f = ack("192.0.2.3", 8080);
    assert_eq!(burst(&h, &f, 20), (5, 15));
    h.reload(RAISED, 2);
    assert_eq!(
        burst(&h, &f, 20),
        (20, 0),
        "a raised limit admits at once, whatever the data path refused before"
    );
    // Back to the low limit (the half the refusals were noted under), refused again...
    h.reload(POLICY, 3);
    let (passed, dropped) = burst(&h, &f, 20);
    assert_eq!((passed, dropped), (0, 20), "over the low limit again");
    // ... and raised again on that same half: admitted at once.
    h.reload(RAISED, 4);
    assert_eq!(burst(&h, &f, 20), (20, 0));
    assert_eq!(h.count("api", Reason::PktLimit).packets, 35);
    assert_eq!(limited(&h, "api", "192.0.2.3/32"), 35);
}

#[test]
fn other_packets_of_a_source_refused_for_connections_pass() {
    let h = harness();
    let s = syn("192.0.2.4", 9090);
    let a = ack("192.0.2.4", 9090);
    assert_eq!(burst(&h, &s, 30), (1, 29), "1 connection, then refused");
    assert_eq!(
        burst(&h, &a, 30),
        (30, 0),
        "segments of the open connection pass"
    );
    assert_eq!(burst(&h, &s, 10), (0, 10), "connections still refused");
    assert_eq!(h.count("conns", Reason::ConnLimit).packets, 39);
    assert_eq!(h.count("conns", Reason::PktLimit).packets, 0);
    assert_eq!(limited(&h, "conns", "192.0.2.4/32"), 39);
}

#[test]
fn a_monitor_rule_passes_what_it_would_refuse_and_counts_it() {
    let h = harness();
    let f = ack("192.0.2.5", 7070);
    assert_eq!(burst(&h, &f, 100), (100, 0), "monitor mode never drops");
    assert_eq!(h.count("watched", Reason::WouldDrop).packets, 95);
    assert_eq!(h.count("watched", Reason::Pass).packets, 5);
    assert_eq!(limited(&h, "watched", "192.0.2.5/32"), 95);
}

#[test]
fn an_ipv6_source_with_the_same_address_bytes_is_not_refused_for_an_ipv4_one() {
    let h = harness();
    // 192.0.2.6 is c000:0206 in its first four bytes, as is c000:206::/64: the two keys
    // differ only in family and prefix length.
    let v4 = ack("192.0.2.6", 6060);
    let v6 = ack("c000:206::1", 6060);
    assert_eq!(burst(&h, &v4, 10), (1, 9));
    assert_eq!(h.run(&v6), XDP_PASS, "the IPv6 source has its own token");
    assert_eq!(h.run(&v6), XDP_DROP);
    assert_eq!(h.run(&v4), XDP_DROP);
    assert_eq!(h.count("one", Reason::PktLimit).packets, 11);
}

/// Every source's `limited` straight from the per-source table plus what the cache holds.
fn all_limited(h: &Harness) -> HashMap<SourceKey, u64> {
    let dir = shield_user::loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE);
    let map = MapData::from_pin(dir.join(MAP_SOURCES)).expect("pinned source table");
    let sources: BpfHashMap<_, SourceKey, SourceState> =
        BpfHashMap::try_from(Map::LruHashMap(map)).expect("source table");
    let pending = shield_user::stats::refused_pending(&dir).expect("refusal cache");
    sources
        .iter()
        .map(|e| {
            let (k, s) = e.expect("source entry");
            (k, s.limited + pending.get(&k).copied().unwrap_or(0))
        })
        .collect()
}

#[test]
fn sources_sharing_cache_slots_are_judged_by_their_own_limits_and_counted_once() {
    let h = harness();
    // More sources than the cache has slots on a CPU: some must share one.
    let n = shield_common::REFUSED_SLOTS as usize + 200;
    let src = |i: usize| format!("10.{}.{}.1", i / 256, i % 256);
    for i in 0..n {
        assert_eq!(
            burst(&h, &ack(&src(i), 6060), 3),
            (1, 2),
            "source {i}: its own one token, then refused"
        );
    }
    // Interleaved: each source's refusal takes a slot another source's refusals wait in.
    for round in 0..2 {
        for i in 0..n {
            assert_eq!(
                h.run(&ack(&src(i), 6060)),
                XDP_DROP,
                "round {round}, source {i}"
            );
        }
    }
    assert_eq!(h.count("one", Reason::PktLimit).packets, 4 * n as u64);
    let limited = all_limited(&h);
    assert_eq!(limited.len(), n, "every source tracked");
    for (k, l) in &limited {
        assert_eq!(*l, 4, "{k:?}: four refusals, counted once each");
    }
}

#[test]
fn refusals_on_two_cpus_are_counted_once_each() {
    // Before `harness` pins this thread (the count follows the thread's affinity).
    let cpus = shield_tests::synflood::cpus();
    assert!(
        cpus >= 2,
        "this test needs 2 CPUs (the cache is per CPU); found {cpus}"
    );
    let h = harness();
    let f = ack("192.0.2.7", 8080);
    let per_cpu = 2_000;
    let results: Vec<(usize, usize)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|cpu| {
                let (h, f) = (&h, &f);
                s.spawn(move || {
                    shield_tests::synflood::pin_to(cpu);
                    burst(h, f, per_cpu)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect()
    });
    let passed: usize = results.iter().map(|r| r.0).sum();
    let dropped: usize = results.iter().map(|r| r.1).sum();
    assert_eq!(passed, 5, "burst 5 between both CPUs: {results:?}");
    assert_eq!(dropped, 2 * per_cpu - 5);
    assert_eq!(h.count("api", Reason::PktLimit).packets, dropped as u64);
    assert_eq!(
        limited(&h, "api", "192.0.2.7/32"),
        dropped as u64,
        "limited holds both CPUs' refusals, each once"
    );
}
