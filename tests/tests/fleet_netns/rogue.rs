//! A rogue writer on the fleet's Redis: it has the password but not the fleet key.

use std::time::Duration;

use shield_tests::fleetlab::{API, FleetLab, POLICY, ban_message, wait_until};

#[test]
fn a_forged_hash_value_does_not_keep_a_ban_from_the_other_hosts() {
    // Whoever has Redis's password but not the key writes, ahead of time, a value that
    // ends in the far future on the field of a source. Its forged value is refused by
    // every host, and it must not keep the real ban of that source from reaching them.
    let lab = FleetLab::linked(2, POLICY);
    let forged = r#"99999999999999|00|{"op":"ban","source":"203.0.113.121/32","scope":"host","origin_host":"rogue"}"#;
    lab.redis
        .cmd(&["HSET", &lab.bans_key(), "203.0.113.121/32|host|", forged])
        .expect("HSET");
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.121", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_until(
        "h2 gets h1's ban of the source the forged value names",
        Duration::from_secs(10),
        || h2.banned("203.0.113.121/32"),
    );
    let b = h2
        .bans()
        .into_iter()
        .find(|b| b["source"] == "203.0.113.121/32")
        .expect("held");
    assert_eq!(b["origin_host"], "h1", "{b}");
    let remaining = b["remaining_secs"].as_f64().unwrap_or(0.0);
    assert!(
        (500.0..=600.0).contains(&remaining),
        "h1's expiry, not the forged one: {b}"
    );
}

#[test]
fn a_flood_of_forged_stream_entries_is_counted_not_logged_line_by_line() {
    // Whoever has Redis's password but not the key appends 2,000 forged entries: each is
    // refused and counted; the log says so at most once a minute, not 2,000 times.
    let lab = FleetLab::linked(1, POLICY);
    let h1 = &lab.hosts[0];
    let n = 2_000;
    let cmds: Vec<Vec<String>> = (0..n)
        .map(|i| {
            let m = format!(
                r#"{{"op":"ban","source":"198.51.100.{}/32","scope":"host","origin_host":"rogue"}}"#,
                i % 250
            );
            ["XADD", &lab.events_key(), "*", "m", &m, "sig", "00"]
                .map(str::to_string)
                .to_vec()
        })
        .collect();
    lab.redis.pipeline(&cmds).expect("XADD");
    wait_until("h1 refuses every entry", Duration::from_secs(20), || {
        h1.fleet()["refused_signature"] == n
    });
    assert!(h1.bans().is_empty(), "{:?}", h1.bans());
    let log = h1.daemon.as_ref().expect("running").log_text();
    let lines = log.matches("fleet: refused stream entry").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for {n} refused entries"
    );

    // Signed entries that are no fleet ban (a source that is no address, no origin host:
    // a host with the key and a bug) are counted apart, in the metric too, and logged no
    // more than the forged ones.
    let junk: Vec<Vec<String>> = (0..50)
        .flat_map(|i| {
            let mut m = ban_message("203.0.113.300/32", "h9", 600);
            if i % 2 == 1 {
                m.source = format!("203.0.113.{i}/32");
                m.origin_host = String::new();
            }
            lab.publish_cmds(&m, None, false)
        })
        .collect();
    lab.redis.pipeline(&junk).expect("XADD junk");
    wait_until(
        "h1 counts every malformed entry",
        Duration::from_secs(20),
        || h1.fleet()["refused_malformed"] == 50,
    );
    assert_eq!(h1.fleet()["refused_signature"], n, "{}", h1.fleet());
    let m = h1.metrics();
    assert!(
        m.contains("shield_fleet_refused_total{reason=\"malformed\"} 50"),
        "{m}"
    );
    let log = h1.daemon.as_ref().expect("running").log_text();
    let lines = log.matches("fleet: refused stream entry").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for {} refused entries",
        n + 50
    );
}

/// An operator rotates the fleet key by rewriting `key_file` and reloading: the reload
/// succeeds (the rest of the policy applies), and the daemon says the new key is not in use
/// until a restart (it kept signing with the old one without a word).
#[test]
fn a_key_file_rewritten_before_a_reload_is_said_to_need_a_restart() {
    let mut lab = FleetLab::new(1, API, 600, POLICY).expect("fleet lab");
    lab.start_all().expect("starting the daemon");
    let h = &lab.hosts[0];
    let (ok, _, err) = h.shield(&["reload"]);
    assert!(ok, "reload: {err}");
    let log = || h.daemon.as_ref().map(|d| d.log_text()).unwrap_or_default();
    assert!(!log().contains("another key"), "{}", log());
    std::fs::write(&lab.key_file, "a-rotated-fleet-key-of-32-bytes!").expect("new key");
    let (ok, _, err) = h.shield(&["reload"]);
    assert!(ok, "reload: {err}");
    wait_until(
        "the daemon says the new key needs a restart",
        Duration::from_secs(10),
        || log().contains("holds another key than the one read at start"),
    );
}
