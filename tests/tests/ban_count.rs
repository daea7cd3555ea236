//! The ban counts (`MAP_BAN_COUNT`): with escalation on, the data path looks bans up only
//! where some may exist. Each test shows a ban that the counts must let through to the
//! lookup (the data path's own, a manual one, one adopted from older pins), and that the
//! counts go back to zero when the bans go (BPF_PROG_TEST_RUN on the real object).

use std::time::Duration;

use aya::maps::{Array, MapData};
use shield_common::{BAN_COUNT_HOST, BAN_COUNT_USER, MAP_BAN_COUNT, Reason};
use shield_tests::{HARNESS_IFACE, Harness, L4, Pkt, XDP_DROP, XDP_PASS};
use shield_user::{bans::BanMaps, loader, policy::parse_cidr};

const SEC: Duration = Duration::from_secs(1);

/// Escalation bans the rule's sources after one strike.
fn policy(scope: &str) -> String {
    format!(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = {{ rate = "1/s", burst = 1 }}
escalation = {{ strikes = 1, window = "1m", ban = "1h", scope = "{scope}" }}
"#
    )
}

fn counts(h: &Harness) -> Array<MapData, u64> {
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    Array::try_from(loader::open_pinned(&dir, MAP_BAN_COUNT).expect("the ban count map"))
        .expect("an array")
}

/// The data path's and user space's counts of `slot`, and their (wrapping) sum.
fn count(h: &Harness, slot: u32) -> (u64, u64, u64) {
    let c = counts(h);
    let ours = c.get(&slot, 0).expect("data path slot");
    let users = c.get(&(BAN_COUNT_USER + slot), 0).expect("user slot");
    (ours, users, ours.wrapping_add(users))
}

fn rule_id(h: &Harness) -> u32 {
    h.tables
        .current_rules()
        .expect("rules")
        .into_iter()
        .find(|(_, r)| loader::rule_name(r) == "api")
        .map(|(id, _)| id)
        .expect("rule api")
}

/// Refusals until the source is banned (one strike).
fn offend(h: &mut Harness, frame: &[u8]) {
    assert_eq!(h.run(frame), XDP_PASS);
    assert_eq!(
        h.run(frame),
        XDP_DROP,
        "over the limit: refused, struck, banned"
    );
}

#[test]
fn the_data_paths_own_ban_is_counted_before_it_is_looked_up() {
    for scope in ["rule", "host"] {
        let mut h = Harness::new(&policy(scope));
        let id = rule_id(&h);
        let slot = if scope == "host" { BAN_COUNT_HOST } else { id };
        assert_eq!(count(&h, slot).2, 0, "{scope}: no ban yet, none counted");
        let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
        offend(&mut h, &syn);
        assert_eq!(h.bans().len(), 1, "{scope}: banned");
        assert_eq!(
            count(&h, slot),
            (1, 0, 1),
            "{scope}: the data path counted it"
        );
        // A minute on, the limit has a token again: only the ban refuses the source.
        h.advance(60 * SEC);
        let before = h.count("api", Reason::Ban).packets + h.count("(none)", Reason::Ban).packets;
        assert_eq!(h.run(&syn), XDP_DROP, "{scope}: the ban is enforced");
        let after = h.count("api", Reason::Ban).packets + h.count("(none)", Reason::Ban).packets;
        assert_eq!(after, before + 1, "{scope}: dropped as `ban`");
        // Swept once expired: removed from the map and from the count.
        h.advance(3600 * SEC);
        let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
        let mut maps = BanMaps::open(&dir).expect("ban maps");
        assert_eq!(maps.sweep().expect("sweep").len(), 1);
        assert_eq!(count(&h, slot).2, 0, "{scope}: nothing left to look up");
    }
}

#[test]
fn manual_bans_are_counted_and_unbans_uncount_them() {
    let h = Harness::new(&policy("rule"));
    let id = rule_id(&h);
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let mut maps = BanMaps::open(&dir).expect("ban maps");
    let host = parse_cidr("198.51.100.0/24").unwrap();
    let one = parse_cidr("192.0.2.9").unwrap();
    maps.ban(host, 60 * SEC, None, None).expect("host ban");
    maps.ban(one, 60 * SEC, Some("api"), None)
        .expect("rule ban");
    // The same ban again (extended): still one ban, counted once.
    maps.ban(one, 120 * SEC, Some("api"), None)
        .expect("rule ban again");
    assert_eq!(count(&h, BAN_COUNT_HOST), (0, 1, 1));
    assert_eq!(count(&h, id), (0, 1, 1));
    assert_eq!(h.run(&Pkt::new("198.51.100.7", L4::Echo).bytes()), XDP_DROP);
    assert_eq!(
        h.run(&Pkt::new("192.0.2.9", L4::syn(8080)).bytes()),
        XDP_DROP
    );
    maps.unban(host).expect("unban host");
    maps.unban(one).expect("unban rule");
    assert_eq!(count(&h, BAN_COUNT_HOST).2, 0);
    assert_eq!(count(&h, id).2, 0);
    assert_eq!(h.run(&Pkt::new("198.51.100.7", L4::Echo).bytes()), XDP_PASS);
    assert_eq!(
        h.run(&Pkt::new("192.0.2.9", L4::syn(8080)).bytes()),
        XDP_PASS
    );
}

/// Bans pinned by a version without the counts (the count map's pin missing): the next
/// load counts them before its program runs, so they stay enforced; and a count left high
/// is set right.
#[test]
fn bans_adopted_from_older_pins_are_counted_at_load() {
    let mut h = Harness::new(&policy("rule"));
    let id = rule_id(&h);
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let mut maps = BanMaps::open(&dir).expect("ban maps");
    maps.ban(
        parse_cidr("192.0.2.9").unwrap(),
        60 * SEC,
        Some("api"),
        None,
    )
    .expect("rule ban");
    maps.ban(parse_cidr("2001:db8::/48").unwrap(), 60 * SEC, None, None)
        .expect("host ban");
    let syn = Pkt::new("192.0.2.9", L4::syn(8080)).bytes();
    assert_eq!(h.run(&syn), XDP_DROP);
    // An older version's pins: no count map.
    std::fs::remove_file(dir.join(MAP_BAN_COUNT)).expect("removing the count pin");
    h.ebpf = loader::load(&dir, 262_144).expect("loading over the older pins");
    assert_eq!(count(&h, id), (0, 1, 1), "the rule ban counted at load");
    assert_eq!(
        count(&h, BAN_COUNT_HOST),
        (0, 1, 1),
        "the host ban counted at load"
    );
    assert_eq!(h.run(&syn), XDP_DROP, "still enforced by the new program");
    // A count left high (say, by inserts that replaced a ban) comes back to the bans
    // stored at the next load.
    let mut c = counts(&h);
    c.set(BAN_COUNT_USER + id, 7, 0).expect("set");
    h.ebpf = loader::load(&dir, 262_144).expect("loading again");
    assert_eq!(count(&h, id).2, 1);
}

/// A ban on a prefix inside a broader stored one (a /32 banned while its /24 is): the
/// trie's lookup answers with the /24, which is not the /32's key. The /32 is a ban of its
/// own, counted and kept when the /24 goes (unbanned, or ending first).
#[test]
fn a_ban_nested_in_a_stored_broader_one_is_counted_and_stays_enforced() {
    for (outer, inner, src) in [
        ("198.51.100.0/24", "198.51.100.7/32", "198.51.100.7"),
        ("2001:db8::/48", "2001:db8::7/128", "2001:db8::7"),
    ] {
        let h = Harness::new(&policy("rule"));
        let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
        let mut maps = BanMaps::open(&dir).expect("ban maps");
        let ping = Pkt::new(src, L4::Echo).bytes();
        // The /24 ends first, the /32 later; then the /24 is lifted.
        maps.ban(parse_cidr(outer).unwrap(), 60 * SEC, None, None)
            .expect("outer ban");
        let out = maps
            .ban(parse_cidr(inner).unwrap(), 600 * SEC, None, None)
            .expect("inner ban");
        assert!(!out.kept_longer, "{inner}: a ban of its own");
        assert_eq!(
            count(&h, BAN_COUNT_HOST).2,
            2,
            "{inner}: two bans, two counted"
        );
        maps.unban(parse_cidr(outer).unwrap()).expect("unban outer");
        assert_eq!(
            maps.active().len(),
            1,
            "{inner}: the nested ban is still stored"
        );
        assert_eq!(count(&h, BAN_COUNT_HOST).2, 1, "{inner}: and counted");
        assert_eq!(h.run(&ping), XDP_DROP, "{inner}: and enforced");

        // The /24 ends later than the /32 asked for: the /32 is still stored on its own
        // key (an unban of the /24 must not lift it).
        maps.ban(parse_cidr(outer).unwrap(), 3600 * SEC, None, None)
            .expect("outer ban again");
        maps.unban(parse_cidr(inner).unwrap()).expect("unban inner");
        maps.ban(parse_cidr(inner).unwrap(), 60 * SEC, None, None)
            .expect("inner ban again");
        maps.unban(parse_cidr(outer).unwrap())
            .expect("unban outer again");
        assert_eq!(
            h.run(&ping),
            XDP_DROP,
            "{inner}: the ban asked for is enforced once the broader one is lifted"
        );
        assert_eq!(count(&h, BAN_COUNT_HOST).2, 1, "{inner}: counted");
    }
}

/// An upgrade over an older version's pins: its program (no count map) stays attached and
/// keeps banning between the new program's load (which counts the bans) and its attach.
/// Those bans are stored uncounted; the attach counts them again before it returns, so the
/// new program looks them up. The older program is played by the first load with its count
/// pin removed (it counts into a map no other program reads).
#[test]
fn bans_inserted_by_the_older_program_before_the_attach_are_counted() {
    let mut h = Harness::new(&policy("rule"));
    let id = rule_id(&h);
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    std::fs::remove_file(dir.join(MAP_BAN_COUNT)).expect("removing the count pin");
    let mut new = loader::load(&dir, 262_144).expect("loading over the older pins");
    // The older program, still attached, bans a source after the load counted.
    let syn = Pkt::new("192.0.2.44", L4::syn(8080)).bytes();
    offend(&mut h, &syn);
    assert_eq!(h.bans().len(), 1, "banned by the older program");
    let ns = shield_tests::netlab::Netns::new("sbc").expect("a namespace");
    ns.ip(&[
        "link", "add", "sbc0", "type", "veth", "peer", "name", "sbc1",
    ])
    .expect("a veth pair in the namespace");
    ns.ip(&["link", "set", "sbc0", "up"]).expect("up");
    let attached = ns
        .run_in(|| {
            loader::attach(&mut new, "sbc0", loader::AttachMode::Generic, &dir)
                .map(|(link, _)| link)
        })
        .expect("in the namespace")
        .expect("attaching the new program");
    assert_eq!(count(&h, id).2, 1, "the older program's ban counted");
    h.ebpf = new;
    assert_eq!(h.run(&syn), XDP_DROP, "enforced by the new program");
    drop(attached);
}
