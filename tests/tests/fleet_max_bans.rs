//! `[fleet] max_bans` with the real thing (a real `redis-server` in its own namespace, real
//! `shield run`s on their own veths, tests/src/fleetlab.rs): a host holds at most `max_bans`
//! received bans, so a quarter of its ban table (by default) stays for its own bans; the
//! count survives restarts, and bans that end or are lifted make room. Needs root;
//! everything is a guard removed on every exit path.

use std::{net::IpAddr, time::Duration};

use shield_tests::{
    fleetlab::{API, FleetLab, Host, POLICY, audit_count, ban_message, unban_message, wait_until},
    netlab::{ATTACKER_V4, SERVER_IF},
};

#[test]
fn a_fleet_holding_more_bans_than_the_table_leaves_room_for_this_hosts_own() {
    // Several hosts under a large attack can hold more bans together than one host's table
    // (65,536): a host starting then installs what its `max_bans` allows (default 49,152,
    // three quarters of the table) and counts the rest, without a log line per ban; the
    // last quarter stays for its own bans, so `shield ban` still works.
    const N: u32 = 70_000;
    const HELD: u64 = 49_152;
    let mut lab = FleetLab::new(1, API, 600, POLICY).expect("fleet lab");
    let seed: Vec<Vec<String>> = (0..N)
        .flat_map(|i| {
            let m = ban_message(
                &format!("100.{}.{}.{}/32", 64 + i / 65536, (i / 256) % 256, i % 256),
                "h9",
                3600,
            );
            lab.publish_cmds(&m, None, true).into_iter().take(1) // the hash only
        })
        .collect();
    for chunk in seed.chunks(5000) {
        lab.redis.pipeline(chunk).expect("seeding Redis");
    }
    lab.start_all().expect("starting the daemon");
    let h = &lab.hosts[0];
    wait_until(
        "every seeded ban is handled",
        Duration::from_secs(120),
        || {
            let f = h.fleet();
            f["installed"].as_u64().unwrap_or(0) + f["refused_table_full"].as_u64().unwrap_or(0)
                >= u64::from(N)
        },
    );
    let f = h.fleet();
    assert!(
        f["refused_table_full"].as_u64() >= Some(u64::from(N) - HELD),
        "the bans past max_bans are counted: {f}"
    );
    let bans_under = |prefix: &str| {
        h.bans()
            .into_iter()
            .filter(|b| b["source"].as_str().is_some_and(|s| s.starts_with(prefix)))
            .count()
    };
    let held = bans_under("100.");
    assert_eq!(
        held as u64, HELD,
        "the host holds exactly max_bans received bans"
    );
    assert!(
        h.metrics()
            .contains("shield_fleet_refused_total{reason=\"table_full\"}"),
        "/metrics says why"
    );
    let log = h.daemon.as_ref().expect("daemon").log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("its [fleet] max_bans"))
        .count();
    assert!(
        (1..=2).contains(&lines),
        "the full share is logged once a minute, not once per ban: {lines} lines"
    );
    // This host's own bans still fit: manual ones here (automatic and app bans use the
    // same table).
    for i in 0..100 {
        let src = format!("203.0.113.{i}");
        let (ok, _, err) = h.shield(&["ban", &src, "--for", "1m"]);
        assert!(ok, "a local ban past the fleet's share is stored: {err}");
    }
    assert_eq!(
        bans_under("203.0.113."),
        100,
        "this host's own bans are in force"
    );
}

/// Appends `max_bans = N` to host `i`'s `[fleet]` (the last table of its policy).
fn set_max_bans(lab: &FleetLab, i: usize, n: u32) {
    let h = &lab.hosts[i];
    let mut text = std::fs::read_to_string(&h.policy).expect("policy");
    text.push_str(&format!("max_bans = {n}\n"));
    std::fs::write(&h.policy, text).expect("policy");
}

/// Seeds the fleet's hash (not the stream) with hour-long bans of `100.P.0.i/32` from h9.
fn seed_hash(lab: &FleetLab, p: u8, n: u32) {
    let cmds: Vec<Vec<String>> = (0..n)
        .flat_map(|i| {
            let m = ban_message(&format!("100.{p}.{}.{}/32", i / 256, i % 256), "h9", 3600);
            lab.publish_cmds(&m, None, true).into_iter().take(1)
        })
        .collect();
    lab.redis.pipeline(&cmds).expect("seeding Redis");
}

fn handled(h: &Host, n: u64) {
    wait_until(
        "every seeded ban is handled",
        Duration::from_secs(60),
        || {
            let f = h.fleet();
            f["installed"].as_u64().unwrap_or(0) + f["refused_table_full"].as_u64().unwrap_or(0)
                >= n
        },
    );
}

/// One host holding `n` hour-long fleet bans of `100.64.x.y/32` from h9 (seeded in the
/// hash before it starts), with `max_bans` set when given.
fn holding(n: u32, max_bans: Option<u32>) -> FleetLab {
    let mut lab = FleetLab::new(1, API, 600, POLICY).expect("fleet lab");
    if let Some(m) = max_bans {
        set_max_bans(&lab, 0, m);
    }
    seed_hash(&lab, 64, n);
    lab.start_all().expect("starting the daemon");
    handled(&lab.hosts[0], u64::from(n));
    lab
}

fn bans_under(h: &Host, prefix: &str) -> Vec<serde_json::Value> {
    h.bans()
        .into_iter()
        .filter(|b| b["source"].as_str().is_some_and(|s| s.starts_with(prefix)))
        .collect()
}

/// Waits until `--state-dir`'s bans.json holds `n` bans received from h9 (it is written
/// within a second of a change).
fn saved_from_h9(h: &Host, n: usize) {
    let file = h.state.join("bans.json");
    wait_until(
        "bans.json holds the fleet's bans",
        Duration::from_secs(30),
        || std::fs::read_to_string(&file).is_ok_and(|t| t.matches("\"h9\"").count() == n),
    );
}

/// Stops the host's daemon cleanly (its pins stay).
fn stop(h: &mut Host) {
    let (status, _) = h.daemon.as_mut().expect("daemon").stop().expect("stop");
    assert!(status.success());
    h.daemon = None;
}

#[test]
fn a_restart_keeping_the_pins_still_counts_the_received_bans_it_holds() {
    // `systemctl restart shield` keeps the pinned ban tables: the received bans in them
    // still take the fleet's share. A restart must not forget them and install max_bans
    // more on top (the fleet then holds more than its share of the table).
    let mut lab = holding(100, Some(100));
    assert_eq!(bans_under(&lab.hosts[0], "100.64.").len(), 100);
    saved_from_h9(&lab.hosts[0], 100);
    stop(&mut lab.hosts[0]);
    // Meanwhile the fleet banned 100 other sources (the first 100 stay in its hash).
    seed_hash(&lab, 65, 100);
    lab.hosts[0].start().expect("restart, pins kept");
    let h = &lab.hosts[0];
    handled(h, 100);
    let held = bans_under(h, "100.6");
    assert_eq!(
        (held.len(), bans_under(h, "100.64.").len()),
        (100, 100),
        "the fleet holds at most max_bans after a restart, the ones it held: {} of 100.64, {} of 100.65",
        bans_under(h, "100.64.").len(),
        bans_under(h, "100.65.").len()
    );
    assert!(
        held.iter().all(|b| b["origin_host"] == "h9"),
        "the bans held are still the fleet's: {:?}",
        held.first()
    );
    assert_eq!(h.fleet()["refused_table_full"].as_u64(), Some(100));
}

#[test]
fn received_bans_that_left_the_fleet_while_stopped_are_lifted_at_start() {
    // A fleet ban lifted (or ended) while this daemon was stopped is not in the fleet's
    // hash when it starts again: the start lifts it before ready, whether the pins kept it
    // or `--state-dir` restored it, and its room goes to the fleet's current bans. Before,
    // it stayed until the next resync (a Redis outage), holding room at max_bans. This
    // host's own ban of such a source stays.
    let mut lab = holding(10, Some(10));
    let (ok, _, err) = lab.hosts[0].shield(&["ban", "100.64.0.3", "--for", "10m"]);
    assert!(ok, "{err}");
    // And one from a rule's ports, of a source the fleet bans from the whole host.
    let (ok, _, err) = lab.hosts[0].shield(&["ban", "100.64.0.5", "--rule", "api", "--for", "10m"]);
    assert!(ok, "{err}");
    saved_from_h9(&lab.hosts[0], 9);
    stop(&mut lab.hosts[0]);
    // Meanwhile the fleet lifted its bans and banned 10 other sources.
    lab.redis.cmd(&["DEL", &lab.bans_key()]).expect("DEL");
    seed_hash(&lab, 65, 10);
    lab.hosts[0].start().expect("restart, pins kept");
    let h = &lab.hosts[0];
    let own: Vec<_> = bans_under(h, "100.64.")
        .iter()
        .map(|b| {
            (
                b["source"].clone(),
                b["scope"].clone(),
                b["origin_host"].clone(),
            )
        })
        .collect();
    let name = serde_json::Value::from(h.name.clone());
    assert_eq!(
        own,
        vec![
            ("100.64.0.3/32".into(), "host".into(), name.clone()),
            ("100.64.0.5/32".into(), "rule".into(), name)
        ],
        "at ready, only this host's own bans are left of the fleet's lifted bans"
    );
    assert_eq!(
        bans_under(h, "100.65.").len(),
        10,
        "the lifted bans' room went to the fleet's current ones"
    );
    assert_eq!(h.fleet()["refused_table_full"].as_u64(), Some(0));
    assert_eq!(audit_count(h, "fleet_unban", "100.64.0.0/32"), 1);
    assert_eq!(audit_count(h, "fleet_unban", "100.64.0.3/32"), 0);

    // A reboot (pins gone) while the fleet lifted everything: the bans `--state-dir`
    // restores from the fleet are lifted at start too; the own one is restored and stays.
    saved_from_h9(&lab.hosts[0], 10);
    stop(&mut lab.hosts[0]);
    shield_tests::fleetlab::remove_pins(&lab.hosts[0].bpffs.path, SERVER_IF).expect("pins");
    lab.redis.cmd(&["DEL", &lab.bans_key()]).expect("DEL");
    lab.hosts[0].start().expect("restart, pins gone");
    let h = &lab.hosts[0];
    let left: Vec<_> = bans_under(h, "100.6")
        .iter()
        .map(|b| b["source"].clone())
        .collect();
    assert_eq!(
        left,
        vec![
            serde_json::Value::from("100.64.0.3/32"),
            serde_json::Value::from("100.64.0.5/32")
        ]
    );
}

#[test]
fn a_start_lifts_thousands_of_gone_bans_in_one_pass() {
    // A fleet that lifted a large attack's bans while this host was down: the start lifts
    // every one of them before ready. One source at a time, each lift read the whole ban
    // table again (20,000 x 20,000 entries: the start stalled for many minutes); now each
    // interface's tables are read once.
    const N: u32 = 20_000;
    let mut lab = holding(N, None);
    saved_from_h9(&lab.hosts[0], N as usize);
    stop(&mut lab.hosts[0]);
    lab.redis.cmd(&["DEL", &lab.bans_key()]).expect("DEL");
    let started = std::time::Instant::now();
    lab.hosts[0].start().expect("restart, pins kept");
    eprintln!(
        "ready after lifting {N} gone bans in {:?}",
        started.elapsed()
    );
    let h = &lab.hosts[0];
    assert_eq!(
        bans_under(h, "100.64.").len(),
        0,
        "every gone ban lifted at ready"
    );
    let lines = h
        .audit_lines()
        .iter()
        .filter(|l| l["event"] == "fleet_unban" && l["origin_host"] == "resync")
        .count();
    assert_eq!(lines, N as usize, "one audit line per lifted source");
}

#[test]
fn a_start_whose_key_reads_none_of_the_hash_lifts_nothing() {
    // A host restarted with a key the fleet does not use (the key rotated on this host
    // first, or a typo) refuses every field of the hash as badly signed: it cannot tell
    // whether the bans it holds left the hash, and they did not. operations.md says its
    // messages are refused, not that it drops the fleet's bans: the start lifts none of
    // them (only fields missing from the hash are gone), and says why in the counters.
    let mut lab = holding(10, None);
    assert_eq!(bans_under(&lab.hosts[0], "100.64.").len(), 10);
    saved_from_h9(&lab.hosts[0], 10);
    stop(&mut lab.hosts[0]);
    let h = &mut lab.hosts[0];
    // This host alone gets another key.
    let other = std::env::temp_dir().join(format!("shield-other-key-{}", std::process::id()));
    std::fs::write(&other, "f".repeat(64)).expect("key file");
    let policy = std::fs::read_to_string(&h.policy).expect("policy");
    let lab_key = lab.key_file.display().to_string();
    assert!(policy.contains(&lab_key));
    std::fs::write(
        &h.policy,
        policy.replace(&lab_key, &other.display().to_string()),
    )
    .expect("policy");
    let started = lab.hosts[0].start();
    let _ = std::fs::remove_file(&other);
    started.expect("restart, pins kept, another key");
    let h = &lab.hosts[0];
    assert!(
        h.fleet()["refused_signature"].as_u64() >= Some(10),
        "the hash is refused as badly signed: {}",
        h.fleet()
    );
    assert_eq!(
        bans_under(h, "100.64.").len(),
        10,
        "the fleet bans held stay: they are still in the fleet's hash"
    );
    assert_eq!(
        h.audit_lines()
            .iter()
            .filter(|l| l["event"] == "fleet_unban")
            .count(),
        0,
        "nothing was lifted"
    );
}

#[test]
fn a_received_ban_of_a_source_this_host_banned_needs_no_room_at_max_bans() {
    // At max_bans, a received ban of a source this host banned itself takes no new
    // entry: it is applied as without the limit (the longer ban stays), not refused as if
    // the table were full.
    let lab = holding(100, Some(100));
    let h = &lab.hosts[0];
    let (ok, _, err) = h.shield(&["ban", "203.0.113.7", "--for", "1m"]);
    assert!(ok, "{err}");
    let m = ban_message("203.0.113.7/32", "h2", 3600);
    lab.redis
        .pipeline(&lab.publish_cmds(&m, None, true))
        .expect("publishing");
    wait_until(
        "the received ban is handled",
        Duration::from_secs(10),
        || {
            audit_count(h, "fleet_ban", "203.0.113.7/32") > 0
                || h.fleet()["refused_table_full"].as_u64() > Some(0)
        },
    );
    let f = h.fleet();
    assert_eq!(f["refused_table_full"].as_u64(), Some(0), "{f}");
    let b = bans_under(h, "203.0.113.7/");
    assert_eq!(b.len(), 1);
    assert!(
        b[0]["remaining_secs"].as_f64() > Some(3000.0),
        "the fleet's longer ban is in force: {:?}",
        b[0]
    );
    assert_eq!(bans_under(h, "100.64.").len(), 100);
}

#[test]
fn received_bans_that_end_or_are_lifted_make_room_at_max_bans() {
    const SHORT: u64 = 20;
    const WAIT: Duration = Duration::from_secs(30);
    // At max_bans, room comes back: at once for a ban the fleet lifts (and a renewal
    // needs none), within about a second for bans that expired. The waits are generous
    // (a loaded machine), the short bans long enough to outlast a slow start.
    let mut lab = FleetLab::new(1, API, 600, POLICY).expect("fleet lab");
    set_max_bans(&lab, 0, 10);
    let cmds: Vec<Vec<String>> = (0..10)
        .flat_map(|i| {
            // Five end in 20 s, five in an hour.
            let secs = if i < 5 { SHORT } else { 3600 };
            let m = ban_message(&format!("100.64.0.{i}/32"), "h9", secs);
            lab.publish_cmds(&m, None, true).into_iter().take(1)
        })
        .collect();
    lab.redis.pipeline(&cmds).expect("seeding Redis");
    let seeded = std::time::Instant::now();
    lab.start_all().expect("starting the daemon");
    let h = &lab.hosts[0];
    handled(h, 10);
    let publish = |m: &shield_user::fleet::Message| {
        lab.redis
            .pipeline(&lab.publish_cmds(m, None, false))
            .expect("XADD");
    };
    let refused = || h.fleet()["refused_table_full"].as_u64().unwrap_or(0);
    // Full: a new one is refused; a renewal of one held is not.
    publish(&ban_message("100.65.0.1/32", "h9", 3600));
    wait_until("refused at max_bans", WAIT, || refused() == 1);
    publish(&ban_message("100.64.0.9/32", "h9", 7200));
    wait_until("the renewal is applied", WAIT, || {
        bans_under(h, "100.64.0.9/")
            .first()
            .is_some_and(|b| b["remaining_secs"].as_f64() > Some(3700.0))
    });
    assert_eq!(refused(), 1, "a renewal takes no room");
    // The fleet lifts one: a new ban fits at once.
    publish(&unban_message(
        "100.64.0.8/32",
        "h9",
        shield_user::fleet::now_ms(),
    ));
    publish(&ban_message("100.65.0.2/32", "h9", 3600));
    wait_until("installed in the room an unban made", WAIT, || {
        h.banned("100.65.0.2/32")
    });
    assert_eq!(refused(), 1);
    // Five end: five new ones fit (room seen within about a second of the end).
    assert!(
        seeded.elapsed() < Duration::from_secs(SHORT),
        "the short bans ended before the steps that needed them held ({:?}): a very slow start",
        seeded.elapsed()
    );
    std::thread::sleep(Duration::from_secs(SHORT + 1).saturating_sub(seeded.elapsed()));
    for i in 10..15 {
        publish(&ban_message(&format!("100.65.0.{i}/32"), "h9", 3600));
    }
    wait_until("installed in the room ended bans left", WAIT, || {
        bans_under(h, "100.65.0.1").len() == 5
    });
    publish(&ban_message("100.65.0.99/32", "h9", 3600));
    wait_until("full again", WAIT, || refused() == 2);
    assert_eq!(bans_under(h, "100.6").len(), 10, "never more than max_bans");
}

#[test]
fn at_max_bans_a_ban_held_on_one_interface_only_is_not_installed_on_the_others() {
    // A host on two interfaces: an automatic ban of the attacker on one of them, then
    // the fleet bans the attacker. The other interface's table has no entry for it: at
    // max_bans, the received ban would make the fleet hold more than its share there.
    let mut lab = FleetLab::new(1, API, 600, POLICY).expect("fleet lab");
    set_max_bans(&lab, 0, 10);
    seed_hash(&lab, 64, 10);
    {
        let h = &mut lab.hosts[0];
        let ns = &h.topo.server;
        ns.ip(&[
            "link", "add", "atka", "type", "veth", "peer", "name", "atkb",
        ])
        .expect("veth");
        ns.ip(&["link", "set", "atka", "up"]).expect("up");
        ns.ip(&["link", "set", "atkb", "up"]).expect("up");
        h.args = vec!["--iface".into(), "atka".into()];
    }
    lab.start_all().expect("starting the daemon");
    let h = &lab.hosts[0];
    handled(h, 10);
    let on = |iface: &str| {
        h.bans()
            .into_iter()
            .filter(|b| b["iface"] == iface)
            .collect::<Vec<_>>()
    };
    assert_eq!(on("atka").len(), 10, "the fleet's bans on both interfaces");
    let attacker = format!("{ATTACKER_V4}/32");
    let attack = h.connect(IpAddr::V4(ATTACKER_V4), API, 300, Duration::from_millis(10));
    assert!(attack.failed > 200, "limited then banned: {attack:?}");
    wait_until("the automatic ban", Duration::from_secs(5), || {
        on(SERVER_IF).iter().any(|b| b["source"] == attacker)
    });
    assert!(!on("atka").iter().any(|b| b["source"] == attacker));
    let m = ban_message(&attacker, "h2", 3600);
    lab.redis
        .pipeline(&lab.publish_cmds(&m, None, true))
        .expect("publishing");
    wait_until(
        "the received ban is handled",
        Duration::from_secs(10),
        || {
            audit_count(h, "fleet_ban", &attacker) > 0
                || h.fleet()["refused_table_full"].as_u64() > Some(0)
        },
    );
    let held = on("atka");
    assert_eq!(
        held.len(),
        10,
        "the fleet holds max_bans on the other interface: {:?}",
        held.iter().map(|b| &b["source"]).collect::<Vec<_>>()
    );
}
