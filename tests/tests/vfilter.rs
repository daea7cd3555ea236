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

/// Two rules: the cookie rule verifies sources through the data path (an ACK with a valid
/// cookie inserts the source into the set and sets its bit, as a proof does); the plain one
/// drops every unverified SYN once its budget is spent.
const RACE_POLICY: &str = r#"
[[rule]]
name = "cookie"
protocol = "tcp"
ports = [7080]
unverified = { rate = "1/h", burst = 1 }
challenge = "syncookie"

[[rule]]
name = "plain"
protocol = "tcp"
ports = [7081]
unverified = { rate = "1/h", burst = 1 }
"#;

/// An IPv4 TCP frame from `src`:`sport` to 198.51.100.1:`dport` (no checksums: neither the
/// program nor the cookie helpers read them).
fn tcp(src: [u8; 4], sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x51, 0x02, 0, 0, 0, 0, 0xc1, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&[198, 51, 100, 1]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(&[5 << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    f
}

/// Sources the data path verifies while the daemon rebuilds the filter keep their bits: a
/// source proven while the set is being listed (its key not in the listing) must not have
/// its bit cleared by the rebuild, or its next SYN is taken for an unverified one and
/// dropped (no data segment comes to set the bit again before the client's next connection).
/// The set holds 10,000 other keys so that each listing takes a while; the daemon's rebuild
/// runs back to back for 150 ms (twice at least) while the data path verifies a new source
/// every few microseconds, until the last rebuild is done (a later rebuild would set again
/// the bits an earlier one lost: the last one is what the daemon leaves for 5 minutes).
/// At most 50,000 of them: the set has room for all, so none is evicted.
#[test]
fn sources_verified_during_a_rebuild_keep_their_bits() {
    let h = Harness::new(RACE_POLICY);
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    {
        let map = aya::maps::MapData::from_pin(dir.join(MAP_VERIFIED)).expect("pinned set");
        let mut set: aya::maps::HashMap<_, SourceKey, u64> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("verified set");
        for i in 0..10_000u32 {
            let k = key(&format!("10.200.{}.{}", i >> 8 & 255, i & 255));
            set.insert(k, u64::MAX / 2, 0).expect("filling the set");
        }
    }
    // Both budgets' one token.
    assert_eq!(
        h.run(&tcp([192, 0, 2, 1], 1000, 7080, 0x02, 1, 0)),
        XDP_PASS
    );
    assert_eq!(
        h.run(&tcp([192, 0, 2, 1], 1000, 7081, 0x02, 1, 0)),
        XDP_PASS
    );

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rebuilds = {
        let (dir, done) = (dir.clone(), done.clone());
        std::thread::spawn(move || {
            // Rebuilds back to back for 150 ms (two at least).
            let start = std::time::Instant::now();
            let mut n = 0;
            while n < 2 || start.elapsed() < std::time::Duration::from_millis(150) {
                loader::vfilter_rebuild(&dir).expect("rebuilding the filter");
                n += 1;
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut verified = Vec::new();
    let mut i = 0u32;
    while !done.load(std::sync::atomic::Ordering::SeqCst) && i < 50_000 {
        let src = [172, 16, (i >> 8) as u8, i as u8];
        i += 1;
        let (action, out) = h.run_out(&tcp(src, 2000, 7080, 0x02, 7, 0));
        assert_eq!(action, shield_tests::XDP_TX, "over the budget: a cookie");
        let cookie = u32::from_be_bytes(out[38..42].try_into().expect("4"));
        let ack = tcp(src, 2000, 7080, 0x10, 8, cookie.wrapping_add(1));
        assert_eq!(h.run(&ack), XDP_PASS, "a valid cookie verifies its source");
        verified.push(src);
    }
    rebuilds.join().expect("rebuild thread");
    assert!(verified.len() > 100, "{} sources verified", verified.len());
    let map = aya::maps::MapData::from_pin(dir.join(MAP_VERIFIED)).expect("pinned set");
    let set: aya::maps::HashMap<_, SourceKey, u64> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("verified set");
    // (A source the set evicted meanwhile is rightly unverified: not counted.)
    let in_set = |s: &[u8; 4]| {
        set.get(&key(&format!("{}.{}.{}.{}", s[0], s[1], s[2], s[3])), 0)
            .is_ok()
    };
    let kept = verified.iter().filter(|s| in_set(s)).count();
    assert!(
        kept * 10 >= verified.len() * 9,
        "{kept} of {} still in the set",
        verified.len()
    );
    let refused: Vec<String> = verified
        .iter()
        .filter(|s| in_set(s) && h.run(&tcp(**s, 3000, 7081, 0x02, 9, 0)) != XDP_PASS)
        .map(|s| format!("{}.{}.{}.{}", s[0], s[1], s[2], s[3]))
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {} sources verified during the rebuilds are refused as unverified: {:?}",
        refused.len(),
        verified.len(),
        &refused[..refused.len().min(5)]
    );
}
