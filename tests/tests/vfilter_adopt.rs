//! The bit filter in front of the verified set (shield-ebpf/src/unverified.rs) across a
//! restart, through BPF_PROG_TEST_RUN on the real object with a frozen clock: a source in
//! the verified set is served as verified after a load that adopts the pinned set, also
//! when the filter does not hold its bit (a set left by a version without the filter, or a
//! bit lost to the documented rebuild race). vfilter.rs covers the filter within one run.
//! Needs root (fails, never skips, without it).

use std::net::IpAddr;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use shield_common::{MAP_VERIFIED, Reason, SourceKey, addr::FAMILY_V4, judge::verified_key};
use shield_tests::{HARNESS_IFACE, Harness, L4, Pkt, XDP_DROP, XDP_PASS};
use shield_user::{loader, policy};

const S: u64 = 1_000_000_000;
const T0: u64 = 9_000 * S;

/// One connection attempt an hour from sources that never proved real.
const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "100/s", burst = 100 }
unverified = { rate = "1/h", burst = 1 }
"#;

fn harness() -> Harness {
    Harness::frozen(POLICY, T0)
}

/// Writes `src` into the pinned verified set only, as a version of shield without the
/// filter did (`Harness::verify` also sets the filter's bit).
fn verified_without_filter(h: &Harness, src: [u8; 4]) {
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let map = MapData::from_pin(dir.join(MAP_VERIFIED)).expect("pinned verified set");
    let mut set: BpfHashMap<_, SourceKey, u64> =
        BpfHashMap::try_from(Map::LruHashMap(map)).expect("verified set");
    let key = verified_key(FAMILY_V4, shield_common::addr::v4_key(src));
    set.insert(key, T0, 0).expect("verifying a source");
}

/// A daemon restart: the object loaded again, adopting every pinned map.
fn restart(h: &mut Harness) {
    let p = policy::parse_str("test.toml", POLICY).expect("policy");
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    h.ebpf = loader::load(&dir, policy::compile(&p).max_sources).expect("loading again");
}

#[test]
fn a_verified_source_adopted_from_the_pins_is_served_as_verified() {
    let mut h = harness();
    verified_without_filter(&h, [192, 0, 2, 10]);
    restart(&mut h);
    // The budget spent by a spoofed source.
    let spoofed = Pkt::new("10.9.9.9", L4::syn(8080)).bytes();
    assert_eq!(h.run(&spoofed), XDP_PASS, "the budget's one attempt");
    assert_eq!(h.run(&spoofed), XDP_DROP, "the budget is spent");
    let known = Pkt::new("192.0.2.10", L4::syn(8080)).bytes();
    for i in 0..3 {
        assert_eq!(
            h.run(&known),
            XDP_PASS,
            "attempt {i}: a source in the verified set is not held to the unverified budget"
        );
    }
    assert_eq!(h.count("api", Reason::UnverifiedLimit).packets, 1);
    // And a source the test verified the ordinary way, after the restart, too.
    h.verify(IpAddr::from([192, 0, 2, 11]), T0);
    let other = Pkt::new("192.0.2.11", L4::syn(8080)).bytes();
    assert_eq!(h.run(&other), XDP_PASS);
}
