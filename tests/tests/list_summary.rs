//! The IPv4 lists' summary by /16 block (`SHIELD_LSUM`, `shield_common::lsum_slot`) as a
//! user sees it, through BPF_PROG_TEST_RUN on the real object: addresses in blocks a short
//! prefix covers, in blocks that hold longer prefixes (the trie decides) and in blocks no
//! prefix touches are listed exactly as the lists say, the allow list first, across
//! reloads that swap the list halves; prefixes around the /16 boundary the summary works
//! by, at their edges; and pins of a version without the summary, or with a
//! stale one, are summarised again at load, before the program runs; the tables the load
//! hands back know what each list half holds. Needs root.

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

/// Lists of prefixes at and around the /16 boundary the summary works by, allow and deny
/// overlapping both ways, and for each the addresses at their edges.
/// An address, the verdict the lists give it, and why.
type Case = (&'static str, u32, &'static str);

const EDGES: [(&str, &str, &[Case]); 6] = [
    (
        r#""0.0.0.0/0""#,
        r#""10.20.0.0/16""#,
        &[
            ("10.20.0.1", XDP_PASS, "allow /0 beats a deny /16"),
            ("255.255.255.255", XDP_PASS, "allow /0: the last block"),
            ("0.0.0.1", XDP_PASS, "allow /0: the first block"),
        ],
    ),
    (
        "",
        r#""128.0.0.0/1", "10.1.0.0/17""#,
        &[
            ("127.255.255.255", XDP_PASS, "just below the deny /1"),
            ("128.0.0.0", XDP_DROP, "the deny /1's first address"),
            ("203.0.113.9", XDP_DROP, "inside the deny /1"),
            ("10.1.127.255", XDP_DROP, "the deny /17's last address"),
            ("10.1.128.0", XDP_PASS, "the other half of the /17's block"),
            ("10.0.255.255", XDP_PASS, "the block before the /17's"),
            (
                "::ffff:203.0.113.9",
                XDP_PASS,
                "IPv4-mapped IPv6: an IPv6 source, not on the IPv4 lists",
            ),
        ],
    ),
    (
        r#""10.3.7.0/24""#,
        r#""10.2.0.0/15", "10.5.0.0/16", "10.9.9.9/32""#,
        &[
            ("10.2.0.0", XDP_DROP, "the deny /15's first block"),
            (
                "10.3.255.255",
                XDP_DROP,
                "the deny /15's second (odd) block",
            ),
            ("10.3.7.200", XDP_PASS, "an allow /24 inside the deny /15"),
            ("10.1.255.255", XDP_PASS, "the block before the /15"),
            ("10.4.0.0", XDP_PASS, "the block after the /15"),
            ("10.5.255.255", XDP_DROP, "the deny /16's last address"),
            ("10.6.0.0", XDP_PASS, "the block after the /16"),
            ("10.9.9.9", XDP_DROP, "the deny /32"),
            ("10.9.9.8", XDP_PASS, "next to the deny /32"),
            ("10.9.9.10", XDP_PASS, "next to the deny /32"),
        ],
    ),
    (
        r#""10.0.0.0/9""#,
        r#""10.0.0.0/8""#,
        &[
            ("10.127.255.255", XDP_PASS, "the allow /9's last block"),
            (
                "10.128.0.0",
                XDP_DROP,
                "past the allow /9, inside the deny /8",
            ),
            ("11.0.0.0", XDP_PASS, "past both"),
            ("9.255.255.255", XDP_PASS, "before both"),
        ],
    ),
    (
        r#""192.168.1.128/25", "192.168.1.7/32""#,
        r#""192.168.0.0/16", "192.168.1.0/24""#,
        &[
            ("192.168.1.128", XDP_PASS, "the allow /25's first address"),
            (
                "192.168.1.127",
                XDP_DROP,
                "below the allow /25, in the deny /24",
            ),
            (
                "192.168.1.7",
                XDP_PASS,
                "an allow /32 in the deny /24 and /16",
            ),
            ("192.168.2.1", XDP_DROP, "the deny /16 around the /24"),
        ],
    ),
    (
        r#""172.16.0.0/12""#,
        r#""172.16.0.0/12""#,
        &[
            ("172.31.255.255", XDP_PASS, "on both lists: allow first"),
            ("172.32.0.0", XDP_PASS, "past the /12 on both lists"),
            ("172.15.255.255", XDP_PASS, "before the /12 on both lists"),
        ],
    ),
];

fn edge_policy(allow: &str, deny: &str) -> String {
    format!(
        "[lists]\nallow = [{allow}]\ndeny = [{deny}]\n[[rule]]\nname = \"ping\"\nprotocol = \"icmp\"\npackets = {{ rate = \"1000/s\", burst = 1000 }}\n"
    )
}

#[test]
fn prefixes_around_the_block_boundary_are_listed_as_the_lists_say() {
    let (allow, deny, _) = EDGES[0];
    let mut h = Harness::new(&edge_policy(allow, deny));
    for (n, (allow, deny, cases)) in EDGES.iter().enumerate() {
        // Each list set in turn, swapping the list halves: every case reads the other
        // half from the one before.
        if n > 0 {
            assert!(
                h.reload(&edge_policy(allow, deny), n as u32 + 1)
                    .lists_swapped
            );
        }
        for (src, want, why) in *cases {
            assert_eq!(
                ping(&h, src),
                *want,
                "allow [{allow}], deny [{deny}]: {src}: {why}"
            );
        }
    }
}

#[test]
fn the_tables_a_load_hands_back_know_what_each_list_half_holds() {
    let mut h = Harness::new(&policy(DENY));
    let other = policy(r#""172.16.5.0/24", "10.1.0.0/16""#);
    // A start that has not settled keeps the old lists: both halves hold lists.
    h.tables.keep_old_lists = true;
    assert!(h.reload(&other, 2).lists_swapped);
    assert_eq!(ping(&h, "10.1.2.3"), XDP_DROP, "the other deny /16");
    assert_eq!(ping(&h, "10.2.0.1"), XDP_PASS, "the deny /8 is gone");
    // The daemon's start: the tables come from the load (which listed the tries).
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let (ebpf, tables) = loader::load_with_tables(&dir, 262_144, loader::program_log_level("warn"))
        .expect("loading over the pins");
    h.ebpf = ebpf;
    h.tables = tables;
    assert!(
        !h.reload(&other, 3).lists_swapped,
        "the lists in force are unchanged: they stay in their half"
    );
    assert_eq!(ping(&h, "10.1.2.3"), XDP_DROP, "the other deny /16");
    assert_eq!(ping(&h, "10.2.0.1"), XDP_PASS, "the deny /8 is gone");
    // Back to the first lists: written over the half that still holds them.
    assert!(h.reload(&policy(DENY), 4).lists_swapped);
    assert_expected(&h, "back to the first lists after the load");
    // And again to the other lists, into the half the first lists left (emptied).
    assert!(h.reload(&other, 5).lists_swapped);
    assert_eq!(ping(&h, "10.2.0.1"), XDP_PASS, "the deny /8 is gone again");
    assert_eq!(ping(&h, "172.16.5.9"), XDP_DROP, "the /24 stays");
    assert_eq!(ping(&h, "10.9.1.1"), XDP_PASS, "the allow /16");
}

#[test]
fn a_summary_pinned_with_another_size_is_replaced_at_load() {
    let mut h = Harness::new(&policy(DENY));
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let id = || {
        MapData::from_pin(dir.join(MAP_LIST_SUMMARY))
            .and_then(|m| m.info())
            .map(|i| i.id())
            .expect("the summary pin's id")
    };
    let before = id();
    h.ebpf = loader::load(&dir, 262_144).expect("loading again");
    assert_eq!(id(), before, "a summary of this version's size is adopted");
    // A version whose summary has another size (here: a 256-word array of the same key and
    // value sizes, the budget map pinned under the summary's name).
    std::fs::remove_file(dir.join(MAP_LIST_SUMMARY)).expect("removing the summary pin");
    MapData::from_pin(dir.join(shield_common::MAP_BUDGET))
        .expect("the budget pin")
        .pin(dir.join(MAP_LIST_SUMMARY))
        .expect("pinning a 256-word array as the summary");
    h.ebpf = loader::load(&dir, 262_144)
        .unwrap_or_else(|e| panic!("loading over a summary of another size: {e}"));
    assert_eq!(
        summary(&h).len(),
        LSUM_WORDS,
        "the summary has this version's size"
    );
    assert_ne!(id(), before, "a new summary map");
    assert_expected(&h, "after the load");
}
