//! The filter in front of the per-source table (`SHIELD_SFILTER`, shield-user/src/loader/
//! sfilter.rs): a tracked source keeps its state through the daemon's rebuilds of either
//! half, one-off sources set no bits, a rebuild clears the bits of keys that left the table,
//! and keys adopted from pins without bits get theirs at load. BPF_PROG_TEST_RUN on the
//! real object, frozen clock; needs root (fails, never skips, without it).

use aya::maps::{Array, HashMap, Map, MapData};
use shield_common::{
    MAP_SFILTER, MAP_SOURCES, Reason, SFILTER_WORDS, SourceKey, SourceState, addr, sfilter_bit,
};
use shield_tests::{HARNESS_IFACE, Harness, L4, Pkt, XDP_DROP, XDP_PASS};
use shield_user::loader::{self, SfilterStep};

/// Three connections at once, then one per second: two of them untracked (the sketch's
/// slack), the third promotes the source.
const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [7070]
connections = { rate = "1/s", burst = 3 }
"#;

const T0: u64 = 5_000 * 1_000_000_000;

fn syn(src: &str) -> Vec<u8> {
    Pkt::new(src, L4::syn(7070)).bytes()
}

fn dir(h: &Harness) -> std::path::PathBuf {
    loader::pin_dir(&h.bpffs.path, HARNESS_IFACE)
}

fn key(src: &str) -> SourceKey {
    let a: std::net::Ipv4Addr = src.parse().expect("address");
    SourceKey {
        rule: 1,
        family: addr::FAMILY_V4,
        prefix_len: 32,
        addr: addr::v4_key(a.octets()),
    }
}

/// Whether `key`'s bit is set in each half.
fn bits(h: &Harness, key: &SourceKey) -> [bool; 2] {
    let f: Array<_, u64> = Array::try_from(Map::Array(
        MapData::from_pin(dir(h).join(MAP_SFILTER)).expect("pin"),
    ))
    .expect("filter");
    let (word, mask) = sfilter_bit(key);
    [word, SFILTER_WORDS + word].map(|i| f.get(&i, 0).expect("filter word") & mask != 0)
}

/// Clears every bit, as pins left by a version without the filter would hold.
fn clear_filter(h: &Harness) {
    let mut f: Array<_, u64> = Array::try_from(Map::Array(
        MapData::from_pin(dir(h).join(MAP_SFILTER)).expect("pin"),
    ))
    .expect("filter");
    for i in 0..2 * SFILTER_WORDS {
        f.set(i, 0, 0).expect("clearing a word");
    }
}

fn sources(h: &Harness) -> HashMap<MapData, SourceKey, SourceState> {
    HashMap::try_from(Map::LruHashMap(
        MapData::from_pin(dir(h).join(MAP_SOURCES)).expect("pin"),
    ))
    .expect("source table")
}

/// A source over its limit: three SYNs pass, the fourth is refused.
fn over_limit(h: &Harness, src: &str) {
    for i in 0..3 {
        assert_eq!(
            h.run(&syn(src)),
            XDP_PASS,
            "{src}: SYN {i} within the burst"
        );
    }
    assert_eq!(h.run(&syn(src)), XDP_DROP, "{src}: over its burst");
}

#[test]
fn a_tracked_source_keeps_its_state_through_rebuilds_of_both_halves() {
    let mut h = Harness::frozen(POLICY, T0);
    let d = dir(&h);
    over_limit(&h, "198.51.100.7");
    assert_eq!(
        bits(&h, &key("198.51.100.7")),
        [true, true],
        "promoted: both bits"
    );

    let mut rebuild = loader::SfilterRebuild::new();
    for (generation, half) in [(2, 0), (3, 1), (4, 0)] {
        let step = rebuild.rebuild_now(&d).expect("rebuilding a half");
        assert_eq!(step, SfilterStep::Filled { half, keys: 1 });
        // A reload, so that the refusal cache (per policy generation) does not answer for
        // the state: still over its limit, from its state. A source taken for new would
        // get connections untracked.
        h.reload(POLICY, generation);
        assert_eq!(
            h.run(&syn("198.51.100.7")),
            XDP_DROP,
            "after rebuilding half {half}"
        );
    }
    assert_eq!(bits(&h, &key("198.51.100.7")), [true, true]);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 4);

    // The filter decides the lookup: with the bits gone (the invariant broken on purpose),
    // the same source is judged as new and passes. This is what the invariant prevents.
    clear_filter(&h);
    h.reload(POLICY, 5);
    assert_eq!(h.run(&syn("198.51.100.7")), XDP_PASS, "no bit: no lookup");
}

#[test]
fn one_off_sources_set_no_bits_and_a_rebuild_clears_keys_that_left() {
    let h = Harness::frozen(POLICY, T0);
    let d = dir(&h);
    for i in 0..2_000u32 {
        let src = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        assert_eq!(h.run(&syn(&src)), XDP_PASS);
    }
    assert_eq!(
        loader::sfilter_bits(&d).expect("bits"),
        [0, 0],
        "untracked sources cost no bit, so they never cost a table lookup"
    );
    over_limit(&h, "198.51.100.8");
    over_limit(&h, "198.51.100.9");
    assert_eq!(loader::sfilter_bits(&d).expect("bits"), [2, 2]);

    // One leaves the table (as an LRU eviction would): a rebuild of each half clears its
    // bit, and keeps the other's.
    sources(&h)
        .remove(&key("198.51.100.8"))
        .expect("removing a key");
    let mut rebuild = loader::SfilterRebuild::new();
    assert_eq!(
        rebuild.rebuild_now(&d).expect("half 0"),
        SfilterStep::Filled { half: 0, keys: 1 }
    );
    assert_eq!(bits(&h, &key("198.51.100.8")), [false, true]);
    assert_eq!(
        rebuild.rebuild_now(&d).expect("half 1"),
        SfilterStep::Filled { half: 1, keys: 1 }
    );
    assert_eq!(bits(&h, &key("198.51.100.8")), [false, false]);
    assert_eq!(bits(&h, &key("198.51.100.9")), [true, true]);
    // Without stale bits the rebuild waits: nothing to clear.
    assert_eq!(
        rebuild.step(&d, false).expect("step"),
        SfilterStep::Idle,
        "a filter without stale bits is left alone"
    );
}

#[test]
fn keys_adopted_from_pins_without_bits_get_them_at_load() {
    let mut h = Harness::frozen(POLICY, T0);
    over_limit(&h, "198.51.100.10");
    // Pins left by a version without the filter: the table holds the key, no bit is set.
    clear_filter(&h);
    assert_eq!(loader::sfilter_adopt(&dir(&h)).expect("adopting"), 1);
    assert_eq!(bits(&h, &key("198.51.100.10")), [true, true]);
    // A reload first, so that the refusal cache does not answer for the state.
    h.reload(POLICY, 2);
    assert_eq!(
        h.run(&syn("198.51.100.10")),
        XDP_DROP,
        "its state is found again"
    );
}

/// The keys in the table whose bit is set in neither half (the invariant's breaches).
fn keys_without_a_bit(h: &Harness) -> Vec<SourceKey> {
    let f: Array<_, u64> = Array::try_from(Map::Array(
        MapData::from_pin(dir(h).join(MAP_SFILTER)).expect("pin"),
    ))
    .expect("filter");
    let table = sources(h);
    let mut missing = Vec::new();
    // A listing can end early (a key it stands on evicted); what it lists is checked.
    for key in table.keys().flatten() {
        let (word, mask) = sfilter_bit(&key);
        let set = [word, SFILTER_WORDS + word]
            .iter()
            .any(|i| f.get(i, 0).expect("filter word") & mask != 0);
        if !set {
            missing.push(key);
        }
    }
    missing
}

/// `POLICY` with a table large enough that nothing is evicted during the test: a key that
/// leaves it could not be told from one taken for new.
fn stress_policy() -> String {
    format!("[defaults]\nmax_sources = 131072\n{POLICY}")
}

/// Sources promoted before the rebuilds start and left quiet: only the filter's halves
/// keep their bits.
const RESIDENTS: u32 = 64;

fn resident(i: u32) -> String {
    format!("198.18.0.{i}")
}

/// Promotions on two threads (BPF_PROG_TEST_RUN runs on the calling CPU) while this thread
/// clears and fills halves as the daemon does, forced (no spacing), and every sixth round (half 1)
/// abandons a cleared half as a daemon killed mid-rebuild would, then starts again as a
/// restarted daemon does (`sfilter_adopt`, a fresh `SfilterRebuild`). A key read from the
/// table after its insert had its bit set before it (the data path's order) and only this
/// thread clears bits, so a key found without a bit in either half is a breach; and the
/// sources promoted before are still over their limit at the end, not taken for new.
#[test]
fn every_key_keeps_a_bit_through_concurrent_promotions_and_restarts() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let policy = stress_policy();
    let mut h = Harness::frozen(&policy, T0);
    let d = dir(&h);
    for i in 1..=RESIDENTS {
        over_limit(&h, &resident(i));
    }
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let mut breaches = Vec::new();
    let mut filled = 0;
    std::thread::scope(|s| {
        for t in 1..=2u32 {
            let (h, stop, sent) = (&h, &stop, &sent);
            s.spawn(move || {
                let mut i = 0u32;
                // At most 2 x 20,000 sources: the table never evicts.
                while !stop.load(Relaxed) && i < 20_000 {
                    let src = format!("10.{t}.{}.{}", i >> 8, i & 255);
                    for _ in 0..3 {
                        h.run(&syn(&src));
                    }
                    sent.fetch_add(1, Relaxed);
                    i += 1;
                    // Spread over the rounds below.
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            });
        }
        let mut rebuild = loader::SfilterRebuild::new();
        for round in 0..30 {
            let step = rebuild.step(&d, true).expect("clearing a half");
            breaches.extend(
                keys_without_a_bit(&h)
                    .into_iter()
                    .map(|k| (round, "cleared", k)),
            );
            if round % 6 == 5 {
                // Killed with the half cleared; the restarted daemon adopts the pins.
                loader::sfilter_adopt(&d).expect("adopting");
                rebuild = loader::SfilterRebuild::new();
                continue;
            }
            std::thread::sleep(loader::SFILTER_SETTLE);
            match rebuild.step(&d, false).expect("filling") {
                SfilterStep::Filled { .. } => filled += 1,
                other => panic!("round {round}: after {step:?}, {other:?}"),
            }
            breaches.extend(
                keys_without_a_bit(&h)
                    .into_iter()
                    .map(|k| (round, "filled", k)),
            );
        }
        stop.store(true, Relaxed);
    });
    let stats = h.stats();
    eprintln!(
        "{} sources promoted meanwhile, {filled} halves filled, {} evictions",
        sent.load(Relaxed),
        stats.source_evictions
    );
    assert!(
        sent.load(Relaxed) > 1_000,
        "the promoting threads ran ({} sources)",
        sent.load(Relaxed)
    );
    assert_eq!(stats.source_evictions, 0, "the table evicted nothing");
    assert_eq!(filled, 25, "every rebuild not abandoned completed");
    assert_eq!(breaches, [], "keys in the table without a filter bit");
    // A reload, so that the refusal cache does not answer for the state.
    h.reload(&policy, 2);
    for i in 1..=RESIDENTS {
        assert_eq!(
            h.run(&syn(&resident(i))),
            XDP_DROP,
            "{}: still over its limit",
            resident(i)
        );
    }
}
