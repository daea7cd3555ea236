//! The IPv4 lists' summary by /16 block (`SHIELD_LSUM`, `shield_common::lsum_slot`) as a
//! user sees it, through BPF_PROG_TEST_RUN on the real object: addresses in blocks a short
//! prefix covers, in blocks that hold longer prefixes (the trie decides) and in blocks no
//! prefix touches are listed exactly as the lists say, the allow list first, across
//! reloads that swap the list halves; and pins of a version without the summary, or with a
//! stale one, are summarised again at load, before the program runs. Needs root.

use aya::maps::{Array, MapData};
use shield_common::{LSUM_WORDS, MAP_LIST_SUMMARY};
use shield_tests::{HARNESS_IFACE, Harness, L4, Pkt, XDP_DROP, XDP_PASS};
use shield_user::loader;

fn policy(deny: &str) -> String {
    format!(
        r#"
[lists]
allow = ["10.9.0.0/16", "10.8.1.0/24"]
deny = [{deny}]

[[rule]]
name = "ping"
protocol = "icmp"
packets = {{ rate = "1000/s", burst = 1000 }}
"#
    )
}

const DENY: &str = r#""10.0.0.0/8", "172.16.5.0/24", "192.168.0.0/16", "192.168.7.0/24""#;

fn ping(h: &Harness, src: &str) -> u32 {
    h.run(&Pkt::new(src, L4::Echo).bytes())
}

/// Each address and the verdict the lists give it.
const EXPECTED: [(&str, u32, &str); 8] = [
    ("10.1.2.3", XDP_DROP, "a /16 block the deny /8 covers"),
    (
        "10.9.1.1",
        XDP_PASS,
        "a block the allow /16 covers, inside the deny /8",
    ),
    ("10.8.1.5", XDP_PASS, "in the allow /24 of its block"),
    (
        "10.8.2.5",
        XDP_DROP,
        "outside the allow /24 of its block: the deny /8",
    ),
    ("172.16.5.9", XDP_DROP, "in the deny /24 of its block"),
    ("172.16.6.9", XDP_PASS, "outside the deny /24 of its block"),
    ("192.168.7.1", XDP_DROP, "a /24 under the deny /16"),
    ("11.0.0.1", XDP_PASS, "a block no prefix touches"),
];

fn assert_expected(h: &Harness, when: &str) {
    for (src, want, why) in EXPECTED {
        assert_eq!(ping(h, src), want, "{when}: {src}: {why}");
    }
}

#[test]
fn addresses_are_listed_as_the_lists_say_across_reloads() {
    let mut h = Harness::new(&policy(DENY));
    assert_expected(&h, "first load");
    // The deny list changes: the lists go to the other half, with their summary.
    let installed = h.reload(&policy(r#""172.16.5.0/24""#), 2);
    assert!(installed.lists_swapped);
    assert_eq!(ping(&h, "10.1.2.3"), XDP_PASS, "the deny /8 is gone");
    assert_eq!(ping(&h, "10.8.2.5"), XDP_PASS, "the deny /8 is gone");
    assert_eq!(ping(&h, "172.16.5.9"), XDP_DROP, "the /24 stays");
    // Back: the first half again, emptied and rewritten.
    assert!(h.reload(&policy(DENY), 3).lists_swapped);
    assert_expected(&h, "back to the first lists");
}

fn summary(h: &Harness) -> Array<MapData, u64> {
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    Array::try_from(loader::open_pinned(&dir, MAP_LIST_SUMMARY).expect("the summary pin"))
        .expect("an array")
}

#[test]
fn pins_without_the_summary_are_summarised_at_load() {
    let mut h = Harness::new(&policy(DENY));
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    // An older version's pins: lists, but no summary.
    std::fs::remove_file(dir.join(MAP_LIST_SUMMARY)).expect("removing the summary pin");
    h.ebpf = loader::load(&dir, 262_144).expect("loading over the older pins");
    assert_expected(&h, "loaded over pins without the summary");
}

#[test]
fn a_stale_summary_is_rebuilt_at_load() {
    let mut h = Harness::new(&policy(DENY));
    // A version without the summary changed the lists and left it stale: here, empty.
    let mut s = summary(&h);
    for i in 0..LSUM_WORDS {
        s.set(i, 0, 0).expect("clearing the summary");
    }
    assert_eq!(
        ping(&h, "10.1.2.3"),
        XDP_PASS,
        "an empty summary says no block is listed (this is what the load must repair)"
    );
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    h.ebpf = loader::load(&dir, 262_144).expect("loading again");
    assert_expected(&h, "after the load");
}
