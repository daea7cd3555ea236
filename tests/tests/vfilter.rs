//! The filter in front of the verified set (`SHIELD_VFILTER`, shield-ebpf/src/unverified.rs):
//! it never makes a verified source unverified, a source whose proof is gone is judged as
//! unverified even while its stale bit is set, and the daemon's rebuild clears stale bits and
//! keeps live ones. BPF_PROG_TEST_RUN on the real object, frozen clock; needs root (fails,
//! never skips, without it).

use std::net::IpAddr;

use shield_common::{MAP_VERIFIED, MAP_VFILTER, Reason, SourceKey, judge::verified_key};
use shield_tests::{HARNESS_IFACE, Harness, L4, Pkt, XDP_DROP, XDP_PASS};
use shield_user::loader;

const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [7070]
connections = { rate = "1000/s", burst = 1000 }
unverified = { rate = "1/h", burst = 1 }
"#;

const T0: u64 = 5_000 * 1_000_000_000;

fn harness() -> Harness {
    Harness::frozen(POLICY, T0)
}

fn key(src: &str) -> SourceKey {
    match src.parse::<IpAddr>().expect("address") {
        IpAddr::V4(a) => verified_key(
            shield_common::addr::FAMILY_V4,
            shield_common::addr::v4_key(a.octets()),
        ),
        IpAddr::V6(a) => verified_key(shield_common::addr::FAMILY_V6, a.octets()),
    }
}

/// Whether `key`'s bit is set in the pinned filter.
fn bit(h: &Harness, key: &SourceKey) -> bool {
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let map = aya::maps::MapData::from_pin(dir.join(MAP_VFILTER)).expect("pinned filter");
    let f: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).expect("filter");
    let (word, mask) = shield_common::vfilter_bit(key);
    f.get(&word, 0).expect("filter word") & mask != 0
}

/// Removes `key` from the verified set, as an expiry or an LRU eviction would.
fn forget(h: &Harness, key: &SourceKey) {
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let map = aya::maps::MapData::from_pin(dir.join(MAP_VERIFIED)).expect("pinned set");
    let mut set: aya::maps::HashMap<_, SourceKey, u64> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("verified set");
    set.remove(key).expect("removing the key");
}

#[test]
fn verified_sources_pass_and_stale_bits_change_no_verdict() {
    let h = harness();
    let syn = |src: &str| Pkt::new(src, L4::syn(7070)).bytes();
    // The budget (1) goes to the first unverified SYN; the next is over it.
    assert_eq!(h.run(&syn("192.0.2.50")), XDP_PASS);
    assert_eq!(h.run(&syn("192.0.2.51")), XDP_DROP);
    // Verified sources, IPv4 and IPv6 (/64): their bits are set, they skip the budget.
    for src in ["192.0.2.60", "2001:db8:5:6::1"] {
        h.verify(src.parse().expect("address"), T0);
        assert!(
            bit(&h, &key(src)),
            "{src}: no filter bit after verification"
        );
        for _ in 0..3 {
            assert_eq!(h.run(&syn(src)), XDP_PASS, "{src}: verified, yet refused");
        }
    }
    // Another address of the same IPv6 /64 is verified too (the set's key is the /64).
    assert_eq!(h.run(&syn("2001:db8:5:6::99")), XDP_PASS);
    assert_eq!(h.count("api", Reason::UnverifiedLimit).packets, 1);

    // The proof is gone but the bit stays: the set decides, the source is unverified.
    forget(&h, &key("192.0.2.60"));
    assert!(bit(&h, &key("192.0.2.60")));
    assert_eq!(h.run(&syn("192.0.2.60")), XDP_DROP);
    assert_eq!(h.count("api", Reason::UnverifiedLimit).packets, 2);

    // The rebuild clears exactly the stale bit and keeps the live one.
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let cleared = loader::vfilter_rebuild(&dir).expect("rebuilding the filter");
    assert_eq!(cleared, 1, "stale bits cleared");
    assert!(!bit(&h, &key("192.0.2.60")));
    assert!(bit(&h, &key("2001:db8:5:6::1")));
    assert_eq!(h.run(&syn("2001:db8:5:6::1")), XDP_PASS);
    // A second rebuild has nothing to clear.
    assert_eq!(loader::vfilter_rebuild(&dir).expect("rebuilding again"), 0);
}

/// Many spoofed sources over the budget set no bits (only proofs do), so a flood cannot
/// fill the filter and make every SYN pay the set's lookup.
#[test]
fn a_spoofed_flood_sets_no_filter_bits() {
    let h = harness();
    for i in 0..2_000u32 {
        let src = format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
        h.run(&Pkt::new(&src, L4::syn(7070)).bytes());
    }
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let map = aya::maps::MapData::from_pin(dir.join(MAP_VFILTER)).expect("pinned filter");
    let f: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).expect("filter");
    let set: u32 = (0..shield_common::VFILTER_WORDS)
        .map(|w| f.get(&w, 0).expect("word").count_ones())
        .sum();
    assert_eq!(set, 0, "bits set by unverified SYNs");
    assert_eq!(h.count("api", Reason::UnverifiedLimit).packets, 1_999);
}
