//! Policy reloads in the data path (BPF_PROG_TEST_RUN on the real object): the new policy
//! takes over in one switch, limiter state and counters of surviving rules carry over,
//! lists swap halves and the old half is emptied.

use shield_common::Reason;
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS};

const A: &str = r#"
[lists]
deny = ["203.0.113.0/24"]
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/s", burst = 3 }
"#;

/// A plus a new rule before `api` (so file order changes) and another deny list.
const B: &str = r#"
[lists]
deny = ["198.51.100.0/24"]
[[rule]]
name = "web"
protocol = "tcp"
ports = [80]
connections = { rate = "1/s", burst = 1 }
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/s", burst = 3 }
"#;

#[test]
fn state_and_counters_of_a_surviving_rule_carry_over() {
    let mut h = Harness::new(A);
    let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..3 {
        assert_eq!(h.run(&syn), XDP_PASS);
    }
    assert_eq!(h.run(&syn), XDP_DROP);
    let done = h.reload(B, 2);
    assert_eq!(done.half, 1, "the second policy goes to the other half");
    // `api` kept its id: its bucket is still empty, its counters still there.
    assert_eq!(
        h.run(&syn),
        XDP_DROP,
        "limiter state must survive the reload"
    );
    assert_eq!(h.count("api", Reason::Pass).packets, 3);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 2);
    // The new rule is in force at once.
    let web = Pkt::new("192.0.2.1", L4::syn(80)).bytes();
    assert_eq!(h.run(&web), XDP_PASS);
    assert_eq!(h.run(&web), XDP_DROP);
    assert_eq!(h.stats().policy_generation, 2);
}

#[test]
fn lists_swap_halves_and_the_old_half_is_emptied() {
    let mut h = Harness::new(A);
    let old_deny = Pkt::new("203.0.113.5", L4::Echo).bytes();
    let new_deny = Pkt::new("198.51.100.5", L4::Echo).bytes();
    assert_eq!(h.run(&old_deny), XDP_DROP);
    assert_eq!(h.run(&new_deny), XDP_PASS);
    let done = h.reload(B, 2);
    assert!(done.lists_swapped);
    assert_eq!(
        h.run(&old_deny),
        XDP_PASS,
        "old deny list no longer in force"
    );
    assert_eq!(h.run(&new_deny), XDP_DROP, "new deny list in force");
    // Same lists again: nothing to swap; the half being written held A, so only the slot
    // that differs (tcp/80) is written.
    let again = h.reload(B, 3);
    assert!(!again.lists_swapped);
    assert_eq!(
        again.ports_written, 1,
        "only the port slots that differ are written"
    );
    assert_eq!(h.run(&new_deny), XDP_DROP);
    // Back to A: the lists move again, the port table only changes where it must.
    let back = h.reload(A, 4);
    assert!(back.lists_swapped);
    assert_eq!(back.ports_written, 1, "only port 80 differs: {back:?}");
    assert_eq!(h.run(&old_deny), XDP_DROP);
    assert_eq!(h.run(&new_deny), XDP_PASS);
}

#[test]
fn reassigned_port_is_judged_by_its_new_rule_only() {
    let mut h = Harness::new(A);
    let syn = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    h.run(&syn);
    h.reload(
        r#"
[[rule]]
name = "other"
protocol = "tcp"
ports = [8080]
mode = "monitor"
connections = { rate = "1/s", burst = 1 }
"#,
        2,
    );
    // `other` is a new rule with a new id: fresh state, monitor mode.
    for _ in 0..3 {
        assert_eq!(h.run(&syn), XDP_PASS);
    }
    assert_eq!(h.count("other", Reason::WouldDrop).packets, 2);
    assert!(
        h.stats().rules.iter().all(|r| r.name != "api"),
        "a removed rule leaves the stats"
    );
}

#[test]
fn rule_ids_follow_names_not_file_order() {
    use shield_user::policy::{assign_ids, parse_str};
    let a = parse_str("a", A).unwrap();
    let b = parse_str("b", B).unwrap();
    let first = assign_ids(&a, &Default::default());
    assert_eq!(first, vec![1]);
    let prev = [("api".to_string(), 1)].into_iter().collect();
    let second = assign_ids(&b, &prev);
    assert_eq!(
        second,
        vec![2, 1],
        "`web` is new (2), `api` keeps 1 though it moved"
    );
}

/// Pins a map of its own (BPF_MAP_CREATE, then BPF_OBJ_PIN) as `name` in `dir`: what a build
/// with other maps would have left there.
fn pin_map(
    dir: &std::path::Path,
    name: &str,
    map_type: u32,
    key: u32,
    value: u32,
    entries: u32,
    flags: u32,
) {
    std::fs::create_dir_all(dir).expect("pin dir");
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&map_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&key.to_ne_bytes());
    attr[8..12].copy_from_slice(&value.to_ne_bytes());
    attr[12..16].copy_from_slice(&entries.to_ne_bytes());
    attr[16..20].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: a zero-padded bpf_attr for BPF_MAP_CREATE.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), 128u32) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let path =
        std::ffi::CString::new(dir.join(name).to_str().expect("utf-8 path")).expect("no NUL");
    let mut pin = [0u8; 128];
    pin[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    pin[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: a bpf_attr for BPF_OBJ_PIN with a valid path and fd.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_mut_ptr(), 128u32) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: closing our own fd (the pin keeps the map).
    unsafe { libc::close(fd as i32) };
}

/// A map pinned by a build with another layout (here `SHIELD_RULES` with the 144-byte
/// rules of an earlier version) is refused with a message that says what to do, instead
/// of being adopted and failing on the first write.
#[test]
fn pins_with_another_layout_are_refused_clearly() {
    shield_tests::require_root();
    let bpffs = shield_tests::netlab::TempBpffs::new().expect("private bpffs");
    let dir = shield_user::loader::pin_dir(&bpffs.path, "old-layout");
    // An array (BPF_MAP_TYPE_ARRAY), key 4, value 144, 512 entries.
    pin_map(&dir, shield_common::MAP_RULES, 2, 4, 144, 512, 0);

    let err = match shield_user::loader::load(&dir, 1024) {
        Ok(_) => panic!("a pin with another layout must not be adopted"),
        Err(e) => e.to_string(),
    };
    let ours = format!("{} B", std::mem::size_of::<shield_common::RuleConfig>());
    for needle in ["SHIELD_RULES", "value 144 B", ours.as_str(), "--fresh"] {
        assert!(err.contains(needle), "error {err:?} lacks {needle:?}");
    }
}

/// A list trie pinned with the right key and value but room for fewer prefixes (another
/// build's) is refused at load like another layout: adopted, the start went through and
/// the first reload whose lists outgrew it failed part-way through the list writes, with
/// no word of why. The pin stays as it was.
#[test]
fn a_pinned_list_with_room_for_fewer_prefixes_is_refused_clearly() {
    shield_tests::require_root();
    let bpffs = shield_tests::netlab::TempBpffs::new().expect("private bpffs");
    let dir = shield_user::loader::pin_dir(&bpffs.path, "small-list");
    let key = 4 + shield_common::LIST_KEY_V4 as u32;
    // An LPM trie (BPF_MAP_TYPE_LPM_TRIE, BPF_F_NO_PREALLOC) of 16 prefixes.
    pin_map(&dir, shield_common::MAP_ALLOW_V4, 11, key, 1, 16, 1);

    let err = match shield_user::loader::load(&dir, 1024) {
        Ok(_) => panic!("a list of 16 prefixes must not be adopted"),
        Err(e) => e.to_string(),
    };
    let ours = format!("{} entries", 2 * shield_common::MAX_LIST_PREFIXES);
    for needle in [
        shield_common::MAP_ALLOW_V4,
        "16 entries",
        ours.as_str(),
        "--fresh",
    ] {
        assert!(err.contains(needle), "error {err:?} lacks {needle:?}");
    }
    let info = aya::maps::MapData::from_pin(dir.join(shield_common::MAP_ALLOW_V4))
        .and_then(|m| m.info())
        .expect("the pin is still there");
    assert_eq!(info.max_entries(), 16, "the refused load replaced the pin");
}

/// A map pinned with the right key, value and entries but of another type (here a hash
/// where this version has an LPM trie) is refused at load like another layout, the pin left
/// as it was.
#[test]
fn a_pinned_map_of_another_type_is_refused_clearly() {
    shield_tests::require_root();
    let bpffs = shield_tests::netlab::TempBpffs::new().expect("private bpffs");
    let dir = shield_user::loader::pin_dir(&bpffs.path, "other-type");
    let key = 4 + shield_common::LIST_KEY_V4 as u32;
    let entries = 2 * shield_common::MAX_LIST_PREFIXES;
    // A hash (BPF_MAP_TYPE_HASH, BPF_F_NO_PREALLOC).
    pin_map(&dir, shield_common::MAP_DENY_V4, 1, key, 1, entries, 1);

    let err = match shield_user::loader::load(&dir, 1024) {
        Ok(_) => panic!("a hash must not be adopted as a trie"),
        Err(e) => e.to_string(),
    };
    for needle in [shield_common::MAP_DENY_V4, "Hash", "LpmTrie", "--fresh"] {
        assert!(err.contains(needle), "error {err:?} lacks {needle:?}");
    }
    let info = aya::maps::MapData::from_pin(dir.join(shield_common::MAP_DENY_V4))
        .and_then(|m| m.info())
        .expect("the pin is still there");
    assert!(
        matches!(info.map_type(), Ok(aya::maps::MapType::Hash)),
        "the refused load replaced the pin"
    );
}

/// A map write the kernel refuses (a full or oversized table, memory) says why: a failed
/// reload's error is one line, and `the bpf_map_update_elem syscall failed` alone left the
/// operator guessing.
#[test]
fn a_failed_map_call_says_why() {
    let e = shield_user::loader::LoaderError::Map {
        map: shield_common::MAP_ALLOW_V4,
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(libc::ENOSPC),
        }),
    };
    let said = format!("eth0: {e}");
    for needle in [
        shield_common::MAP_ALLOW_V4,
        "bpf_map_update_elem",
        "No space left on device",
    ] {
        assert!(said.contains(needle), "{said:?} lacks {needle:?}");
    }
}

/// Every map the loader and the views open by name exists in the embedded object, with
/// the key and value sizes `shield-common` declares (a renamed or resized map fails here,
/// not at the first write on a user's host).
#[test]
fn every_map_shield_opens_is_in_the_object_with_its_declared_layout() {
    let h = shield_tests::Harness::new("");
    let dir = shield_user::loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE);
    for name in shield_common::ALL_MAPS {
        assert!(
            h.ebpf.map(name).is_some() || name == shield_common::MAP_EVENTS,
            "the object has no map {name}"
        );
        assert!(dir.join(name).exists(), "{name} is not pinned");
    }
    for (name, key, value) in shield_common::MAP_LAYOUTS {
        let info = aya::maps::MapData::from_pin(dir.join(name))
            .and_then(|m| m.info())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (info.key_size() as usize, info.value_size() as usize),
            (key, value),
            "{name}: the object's layout differs from shield-common's"
        );
    }
}

/// bpffs refuses `.` in names: a VLAN interface (`eth0.100`) still gets its pin directory,
/// its lock, `stats` lists it under its own name, and `detach` finds it.
#[test]
fn a_vlan_interface_name_pins_locks_and_detaches() {
    shield_tests::require_root();
    let bpffs = shield_tests::netlab::TempBpffs::new().expect("private bpffs");
    let (_lock, created) =
        shield_user::loader::lock_iface(&bpffs.path, "eth0.100").expect("lock and pin dir");
    assert!(created);
    let dir = shield_user::loader::pin_dir(&bpffs.path, "eth0.100");
    let _ebpf = shield_user::loader::load(&dir, 1024).expect("maps pinned for eth0.100");
    assert_eq!(
        shield_user::stats::pinned_ifaces(&bpffs.path),
        vec!["eth0.100".to_string()]
    );
    let done = shield_user::loader::detach_pinned(&bpffs.path, "eth0.100").expect("detach");
    assert!(done.found && done.left.is_empty(), "{done:?}");
    assert!(!dir.exists());
}

/// A rule of another port, for the reloads below that remove the rule in force on port 7000.
const OTHER: &str = r#"
[[rule]]
name = "other"
protocol = "tcp"
ports = [7001]
connections = { rate = "10/s", burst = 10 }
"#;

/// Removes the harness's rule of id 1 (a reload to `OTHER` alone), then adds a new rule
/// `api` on port 7002 (`connections` 10/s, burst 10, plus `api_extra`) with a second one,
/// and checks that `api` took id 1: the lowest free id, now that the policy in force no
/// longer reserves it.
fn remove_then_add_api_on_its_id(h: &mut Harness, api_extra: &str) {
    h.reload(OTHER, 2);
    let with_api = format!(
        "{OTHER}\n[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [7002]\nconnections = {{ rate = \"10/s\", burst = 10 }}\n{api_extra}\n"
    );
    h.reload(&with_api, 3);
    let api = h.stats().rules.into_iter().find(|r| r.name == "api");
    assert_eq!(
        api.map(|r| r.id),
        Some(1),
        "api takes the removed rule's id"
    );
}

/// A rule removed by one reload and a new rule added by a later one: the new rule may take
/// the removed rule's id (only the policy in force reserves its ids), but not its state. A
/// source `login` held far over its limit must get the new rule's own limit at once, not
/// the removed rule's debt (here an hour of it).
#[test]
fn a_new_rule_on_a_removed_rules_id_starts_without_its_state() {
    const LOGIN: &str = r#"
[[rule]]
name = "login"
protocol = "tcp"
ports = [7000]
connections = { rate = "1/h", burst = 1 }
"#;
    let mut h = Harness::frozen(LOGIN, 5_000 * 1_000_000_000);
    let login = Pkt::new("192.0.2.7", L4::syn(7000)).bytes();
    assert_eq!(h.run(&login), XDP_PASS);
    assert_eq!(h.run(&login), XDP_DROP, "login's one connection an hour");
    remove_then_add_api_on_its_id(&mut h, "");
    let api = Pkt::new("192.0.2.7", L4::syn(7002)).bytes();
    for i in 0..10 {
        assert_eq!(
            h.run(&api),
            XDP_PASS,
            "api's connection {i} of its burst of 10"
        );
    }
    assert_eq!(h.run(&api), XDP_DROP, "the eleventh");
    // Its counters are its own: login's pass and refusal are not api's.
    assert_eq!(h.count("api", Reason::Pass).packets, 10, "api's passes");
    assert_eq!(
        h.count("api", Reason::ConnLimit).packets,
        1,
        "api's refusals"
    );
}

/// The same for what is kept per rule rather than per source: a new rule on a removed
/// rule's id starts with its own `unverified` budget full (not spent by the removed rule's
/// unverified sources an hour ahead) and its figures at zero.
#[test]
fn a_new_rule_on_a_removed_rules_id_starts_with_its_own_budget_and_figures() {
    const GUARD: &str = r#"
[[rule]]
name = "guard"
protocol = "tcp"
ports = [7000]
connections = { rate = "10/s", burst = 10 }
unverified = { rate = "1/h", burst = 1 }
"#;
    let mut h = Harness::frozen(GUARD, 5_000 * 1_000_000_000);
    let syn = |src: &str, port| Pkt::new(src, L4::syn(port)).bytes();
    assert_eq!(
        h.run(&syn("192.0.2.1", 7000)),
        XDP_PASS,
        "guard's one token"
    );
    assert_eq!(
        h.run(&syn("192.0.2.2", 7000)),
        XDP_DROP,
        "over guard's budget"
    );
    remove_then_add_api_on_its_id(&mut h, r#"unverified = { rate = "10/s", burst = 10 }"#);
    for i in 0..10 {
        let src = format!("192.0.2.{}", 10 + i);
        assert_eq!(
            h.run(&syn(&src, 7002)),
            XDP_PASS,
            "api's budget token {i} of 10"
        );
    }
    assert_eq!(h.run(&syn("192.0.2.30", 7002)), XDP_DROP, "the eleventh");
    let stats = h.stats();
    let api = stats.rules.iter().find(|r| r.name == "api").expect("api");
    let u = api.unverified.as_ref().expect("api's budget in stats");
    assert_eq!((u.admitted, u.dropped), (10, 1), "api's budget figures");
    assert_eq!(api.counters[Reason::Pass.name()].packets, 10);
    assert!(!u.under_attack, "guard's attack is not api's");
}

/// A reload that gives a removed rule's id to a new rule forgets that rule's sources: the
/// table shrinks without the LRU, and `shield stats` must not count those entries as
/// evictions (`source_evictions`, the churn figure an operator watches during a flood).
#[test]
fn sources_a_reload_forgets_are_not_counted_as_evictions() {
    let rule = |name: &str| {
        format!(
            "[[rule]]\nname = \"{name}\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = {{ rate = \"1/s\", burst = 1 }}\n"
        )
    };
    let mut h = Harness::new(&rule("x"));
    for i in 1..=3 {
        let syn = Pkt::new(&format!("192.0.2.{i}"), L4::syn(8080)).bytes();
        assert_eq!(h.run(&syn), XDP_PASS);
        assert_eq!(h.run(&syn), XDP_DROP, "burst 1: the second SYN is refused");
    }
    let s = h.stats();
    assert_eq!((s.tracked_sources, s.source_inserts), (3, 3), "{s:?}");
    // `y` takes id 2 (`x`'s 1 is left alone for a reload); `z` then takes 1 back, and `x`'s
    // three sources are forgotten.
    h.reload(&rule("y"), 2);
    h.reload(&rule("z"), 3);
    let s = h.stats();
    assert_eq!(
        s.tracked_sources, 0,
        "the reused id's sources are forgotten"
    );
    assert_eq!(
        s.source_evictions, 0,
        "a 262,144-entry table holding 3 sources evicted none; the reload forgot them: {s:?}"
    );
}
