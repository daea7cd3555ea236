//! A Redis that lost its data (restarted empty, or from an older backup) against one only
//! trimmed: each running host publishes its own bans again, and no unban is undone.

use std::time::Duration;

use shield_tests::fleetlab::{
    API, FleetLab, Host, POLICY, audit_count, ban_message, wait_links, wait_until,
};

/// `n` hosts started, each linked to Redis.
fn linked_lab(n: usize) -> FleetLab {
    FleetLab::linked(n, POLICY)
}

/// Waits until each host holds its source's ban (`held`), or no longer does.
fn wait_bans(pairs: &[(&Host, &str)], held: bool, secs: u64) {
    for (h, s) in pairs {
        let what = if held { "holds" } else { "no longer holds" };
        wait_until(
            &format!("{} {what} the ban of {s}", h.name),
            Duration::from_secs(secs),
            || h.banned(s) == held,
        );
    }
}

/// The fleet's hash has no field `field` (`SOURCE|SCOPE|RULE`).
fn assert_not_in_hash(lab: &FleetLab, field: &str, why: &str) {
    let there = lab
        .redis
        .cmd(&["HEXISTS", &lab.bans_key(), field])
        .expect("HEXISTS");
    assert_eq!(there, "0", "{why}: {field}");
}

/// Empties the stream, as a long outage's trims do, then adds h9's ban of `source`: the
/// stream's first entry is after every id a host read before.
fn trim_then_ban(lab: &FleetLab, source: &str) {
    lab.redis
        .cmd(&["XTRIM", &lab.events_key(), "MAXLEN", "0"])
        .expect("XTRIM");
    lab.redis
        .pipeline(&lab.publish_cmds(&ban_message(source, "h9", 600), None, true))
        .expect("XADD");
}

#[test]
fn a_redis_restarted_without_its_data_gets_each_hosts_bans_back() {
    // Redis without persistence crashes and comes back empty. Each host still holds the
    // bans it issued: it publishes them again, so the others get them back with their
    // expiry. A ban whose host is not there to publish it again (h9) is lifted, as before.
    let mut lab = linked_lab(2);
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.71", "--for", "10m"]);
    assert!(ok, "{err}");
    let (ok, _, err) = h2.shield(&["ban", "203.0.113.72", "--for", "20m"]);
    assert!(ok, "{err}");
    lab.redis
        .pipeline(&lab.publish_cmds(&ban_message("203.0.113.73/32", "h9", 600), None, false))
        .expect("XADD");
    wait_bans(
        &[
            (h2, "203.0.113.71/32"),
            (h1, "203.0.113.72/32"),
            (h1, "203.0.113.73/32"),
            (h2, "203.0.113.73/32"),
        ],
        true,
        5,
    );

    lab.redis.restart_empty().expect("restarting Redis empty");
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    // Both resynced from the empty hash: h9's ban is gone from both.
    wait_bans(
        &[(h1, "203.0.113.73/32"), (h2, "203.0.113.73/32")],
        false,
        20,
    );
    wait_bans(
        &[(h2, "203.0.113.71/32"), (h1, "203.0.113.72/32")],
        true,
        10,
    );
    wait_until(
        "Redis holds both bans again",
        Duration::from_secs(5),
        || lab.redis.cmd(&["HLEN", &lab.bans_key()]).ok().as_deref() == Some("2"),
    );
    // Same expiry as issued, and still said to be the other host's.
    let held = |h: &Host, s: &str| {
        h.bans()
            .into_iter()
            .find(|b| b["source"] == s)
            .unwrap_or_else(|| panic!("{}: no ban of {s}", h.name))
    };
    let b = held(h2, "203.0.113.71/32");
    let remaining = b["remaining_secs"].as_f64().unwrap_or(0.0);
    assert!(
        (500.0..=600.0).contains(&remaining),
        "h1's 10-minute ban keeps its expiry on h2: {b}"
    );
    assert_eq!(b["origin_host"], h1.name.as_str(), "{b}");
    let b = held(h1, "203.0.113.72/32");
    let remaining = b["remaining_secs"].as_f64().unwrap_or(0.0);
    assert!(
        (1100.0..=1200.0).contains(&remaining),
        "h2's 20-minute ban keeps its expiry on h1: {b}"
    );
    assert_eq!(b["origin_host"], h2.name.as_str(), "{b}");
    // Each host's own ban stayed in force all along.
    assert!(h1.banned("203.0.113.71/32") && h2.banned("203.0.113.72/32"));
}

#[test]
fn a_trimmed_stream_does_not_bring_back_a_ban_unbanned_meanwhile() {
    // h1's link is down while h2 unbans h1's ban, and the stream is trimmed past what h1
    // read (over ~100,000 changes meanwhile). Redis kept its data: h1 resyncs, and must
    // not publish its ban again (Redis 7.0 leaves max-deleted-entry-id at 0-0 on a trim).
    let lab = linked_lab(2);
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.81", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_until("h2 holds h1's ban", Duration::from_secs(5), || {
        h2.banned("203.0.113.81/32")
    });

    lab.set_link(0, false).expect("cutting h1's link");
    wait_links(&[h1], false, 15);
    let (ok, _, err) = h2.shield(&["unban", "203.0.113.81"]);
    assert!(ok, "{err}");
    assert!(!h2.banned("203.0.113.81/32"));
    assert_eq!(
        lab.redis.cmd(&["HLEN", &lab.bans_key()]).expect("HLEN"),
        "0"
    );
    // Trimmed past h1's last id (the unban with it), as a long outage does.
    trim_then_ban(&lab, "203.0.113.82/32");
    lab.set_link(0, true).expect("restoring h1's link");
    wait_until("h1 resyncs (h9's ban)", Duration::from_secs(20), || {
        h1.banned("203.0.113.82/32")
    });
    // A ban h1 issues now reaches h2: anything h1 published on reconnect came before it.
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.83", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_until("h2 gets h1's new ban", Duration::from_secs(10), || {
        h2.banned("203.0.113.83/32")
    });
    assert!(
        !h2.banned("203.0.113.81/32"),
        "the ban h2 unbanned came back on h2: {:?}",
        h2.bans()
    );
    let field = "203.0.113.81/32|host|";
    assert_not_in_hash(&lab, field, "the unbanned ban is back in the fleet's hash");
}

#[test]
fn an_unban_queued_while_redis_was_down_stays_after_it_comes_back_empty() {
    // Redis crashes; meanwhile h1 unbans h2's ban (queued). Redis comes back empty; h1
    // links first and publishes the unban, h2 after: h2 must not publish its ban again
    // (nor keep it): the unban reaches every host.
    let mut lab = linked_lab(2);
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let (ok, _, err) = h2.shield(&["ban", "203.0.113.91", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_until("h1 holds h2's ban", Duration::from_secs(5), || {
        h1.banned("203.0.113.91/32")
    });

    lab.redis.kill();
    wait_links(&[h1, h2], false, 15);
    let (ok, _, err) = h1.shield(&["unban", "203.0.113.91"]);
    assert!(ok, "{err}");
    assert!(!h1.banned("203.0.113.91/32"));
    lab.set_link(1, false).expect("cutting h2's link");
    lab.redis.restart_empty().expect("restarting Redis empty");
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    wait_until("h1 links again", Duration::from_secs(20), || {
        h1.fleet()["connected"] == true
    });
    assert_eq!(
        lab.redis.cmd(&["XLEN", &lab.events_key()]).expect("XLEN"),
        "1",
        "h1 published its queued unban"
    );
    lab.set_link(1, true).expect("restoring h2's link");
    wait_until("h2 links again", Duration::from_secs(20), || {
        h2.fleet()["connected"] == true
    });
    // A ban h2 issues now reaches h1: anything h2 published on reconnect came before it.
    let (ok, _, err) = h2.shield(&["ban", "203.0.113.92", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_until("h1 gets h2's new ban", Duration::from_secs(10), || {
        h1.banned("203.0.113.92/32")
    });
    assert!(
        !h1.banned("203.0.113.91/32"),
        "the ban h1 unbanned came back on h1: {:?}",
        h1.bans()
    );
    assert!(
        !h2.banned("203.0.113.91/32"),
        "h2 kept the ban h1 unbanned: {:?}",
        h2.bans()
    );
    assert_not_in_hash(
        &lab,
        "203.0.113.91/32|host|",
        "the unbanned ban is back in the fleet's hash",
    );
}

#[test]
fn a_redis_restored_from_an_older_backup_does_not_bring_back_an_unban() {
    // Redis is restored from a backup taken before h1 unbanned h2's ban and h1 issued a
    // ban of its own. The unbanned ban must stay lifted on the running hosts; h1's newer
    // ban comes back (published again by h1).
    let mut lab = linked_lab(2);
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let (ok, _, err) = h2.shield(&["ban", "203.0.113.101", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_until("h1 holds h2's ban", Duration::from_secs(5), || {
        h1.banned("203.0.113.101/32")
    });
    lab.redis.save_aside().expect("backing Redis up");
    // The unban is issued a little after the ban (the hosts' clocks may differ by 5 s).
    std::thread::sleep(Duration::from_secs(6));
    let (ok, _, err) = h1.shield(&["unban", "203.0.113.101"]);
    assert!(ok, "{err}");
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.102", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_until(
        "h2 gets the unban and h1's ban",
        Duration::from_secs(5),
        || !h2.banned("203.0.113.101/32") && h2.banned("203.0.113.102/32"),
    );

    lab.redis
        .restart_from_aside()
        .expect("restoring Redis from the backup");
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    wait_until(
        "h2 gets h1's newer ban back",
        Duration::from_secs(20),
        || {
            lab.redis
                .cmd(&["HEXISTS", &lab.bans_key(), "203.0.113.102/32|host|"])
                .ok()
                .as_deref()
                == Some("1")
        },
    );
    // Both linked again: a ban each issues now reaches the other, after their resync.
    for (from, to, s) in [(h1, h2, "203.0.113.103"), (h2, h1, "203.0.113.104")] {
        let (ok, _, err) = from.shield(&["ban", s, "--for", "10m"]);
        assert!(ok, "{err}");
        wait_until(
            &format!("{} gets {s} from {}", to.name, from.name),
            Duration::from_secs(20),
            || to.banned(&format!("{s}/32")),
        );
    }
    assert!(h2.banned("203.0.113.102/32"), "{:?}", h2.bans());
    for h in [h1, h2] {
        assert!(
            !h.banned("203.0.113.101/32"),
            "the ban h1 unbanned came back on {}: {:?}",
            h.name,
            h.bans()
        );
    }
}

#[test]
fn a_redis_user_refused_xinfo_still_links_and_replays() {
    // An ACL without XINFO: a reconnecting host cannot tell lost data from a trim, and
    // keeps the old behaviour (replay from its last id), without looping on the refusal.
    let mut lab = FleetLab::new(2, API, 600, POLICY).expect("fleet lab");
    lab.redis
        .cmd(&["ACL", "SETUSER", "default", "-xinfo"])
        .expect("ACL SETUSER");
    assert!(lab.redis.cmd(&["XINFO", "STREAM", "x"]).is_err());
    lab.start_all().expect("starting the daemons");
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    wait_links(&[h1, h2], true, 10);
    let (ok, _, err) = h2.shield(&["ban", "203.0.113.111", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_until("h1 holds h2's ban", Duration::from_secs(5), || {
        h1.banned("203.0.113.111/32")
    });
    lab.set_link(0, false).expect("cutting h1's link");
    wait_links(&[h1], false, 15);
    let (ok, _, err) = h2.shield(&["ban", "203.0.113.112", "--for", "10m"]);
    assert!(ok, "{err}");
    lab.set_link(0, true).expect("restoring h1's link");
    wait_until("h1 links again", Duration::from_secs(20), || {
        h1.fleet()["connected"] == true
    });
    wait_until("h1 replays h2's ban", Duration::from_secs(5), || {
        h1.banned("203.0.113.112/32")
    });
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.113", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_until("h2 gets h1's ban", Duration::from_secs(5), || {
        h2.banned("203.0.113.113/32")
    });
    assert!(h1.banned("203.0.113.111/32"), "{:?}", h1.bans());
    assert_eq!(h1.fleet()["connected"], true, "h1's link stays up");
}

#[test]
fn a_host_stopped_while_redis_restarted_empty_keeps_its_bans_to_itself() {
    // As docs/operations.md says: after Redis comes back empty, the running hosts get each
    // other's bans back; the bans of h3, stopped meanwhile, are lifted on the others and
    // stay on h3, which gets the running hosts' bans when it starts.
    let mut lab = linked_lab(3);
    let sources = ["203.0.113.121", "203.0.113.122", "203.0.113.123"];
    for (h, s) in lab.hosts.iter().zip(sources) {
        let (ok, _, err) = h.shield(&["ban", s, "--for", "10m"]);
        assert!(ok, "{err}");
    }
    for h in &lab.hosts {
        for s in sources {
            wait_until(
                &format!("{} holds {s}", h.name),
                Duration::from_secs(5),
                || h.banned(&format!("{s}/32")),
            );
        }
    }
    let h3 = &mut lab.hosts[2];
    let (status, _) = h3.daemon.as_mut().expect("daemon").stop().expect("stop");
    assert!(status.success());
    h3.daemon = None;
    lab.redis.restart_empty().expect("restarting Redis empty");
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    wait_bans(
        &[(h1, "203.0.113.123/32"), (h2, "203.0.113.123/32")],
        false,
        20,
    );
    wait_bans(
        &[(h1, "203.0.113.122/32"), (h2, "203.0.113.121/32")],
        true,
        10,
    );
    lab.hosts[2].start().expect("starting h3 again");
    let h3 = &lab.hosts[2];
    wait_until("h3 links", Duration::from_secs(10), || {
        h3.fleet()["connected"] == true
    });
    for s in sources {
        assert!(h3.banned(&format!("{s}/32")), "h3: {s}: {:?}", h3.bans());
    }
    // h3's own ban stays its own: not published again by its start.
    let (ok, _, err) = h3.shield(&["ban", "203.0.113.124", "--for", "10m"]);
    assert!(ok, "{err}");
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    for h in [h1, h2] {
        wait_until(
            &format!("{} gets h3's new ban", h.name),
            Duration::from_secs(10),
            || h.banned("203.0.113.124/32"),
        );
        assert!(!h.banned("203.0.113.123/32"), "{}: {:?}", h.name, h.bans());
    }
    assert_eq!(
        lab.redis.cmd(&["HLEN", &lab.bans_key()]).expect("HLEN"),
        "3",
        "the hash: h1's, h2's and h3's new ban"
    );
}

#[test]
fn bans_published_again_keep_their_scope_rule_family_and_can_be_unbanned() {
    // A rule-scope ban and an IPv6 ban, published again after Redis came back empty: the
    // other host gets them as they were, and an unban from it lifts them on their host.
    let mut lab = linked_lab(2);
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.131", "--for", "10m", "--rule", "api"]);
    assert!(ok, "{err}");
    let (ok, _, err) = h1.shield(&[
        "ban",
        "2001:db8:7::1",
        "--for",
        "20m",
        "--reason",
        "scraper",
    ]);
    assert!(ok, "{err}");
    let (v4, v6) = ("203.0.113.131/32", "2001:db8:7::1/128");
    wait_until("h2 holds both", Duration::from_secs(5), || {
        h2.banned(v4) && h2.banned(v6)
    });
    lab.redis.restart_empty().expect("restarting Redis empty");
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    wait_until("Redis holds both again", Duration::from_secs(20), || {
        lab.redis.cmd(&["HLEN", &lab.bans_key()]).ok().as_deref() == Some("2")
    });
    wait_until("h2 holds both again", Duration::from_secs(10), || {
        h2.banned(v4) && h2.banned(v6)
    });
    let bans = h2.bans();
    let rule = bans.iter().find(|b| b["source"] == v4).expect("v4");
    assert_eq!(rule["scope"], "rule", "{rule}");
    assert_eq!(rule["rule"], "api", "{rule}");
    assert_eq!(rule["origin_host"], "h1", "{rule}");
    let six = bans.iter().find(|b| b["source"] == v6).expect("v6");
    assert_eq!(six["scope"], "host", "{six}");
    assert_eq!(six["comment"], "scraper", "{six}");
    let left = six["remaining_secs"].as_f64().unwrap_or(0.0);
    assert!((1100.0..=1200.0).contains(&left), "{six}");
    for s in ["203.0.113.131", "2001:db8:7::1"] {
        let (ok, _, err) = h2.shield(&["unban", s]);
        assert!(ok, "{err}");
    }
    wait_until("h1 lifts both", Duration::from_secs(10), || {
        !h1.banned(v4) && !h1.banned(v6)
    });
    assert_eq!(
        lab.redis.cmd(&["HLEN", &lab.bans_key()]).expect("HLEN"),
        "0"
    );
}

#[test]
fn a_ban_issued_while_redis_was_down_is_published_once_when_it_comes_back_empty() {
    // Redis crashes; h1 bans a source meanwhile (queued). Redis comes back empty: h1
    // resyncs (lost data) and publishes its queue. The queued ban must go out once, not a
    // second time as one of "the bans this host issued that Redis had lost" (the ban it
    // issued before the crash is one of those: published again, once).
    let mut lab = linked_lab(2);
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.110", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_bans(&[(h2, "203.0.113.110/32")], true, 5);
    lab.redis.kill();
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    wait_links(&[h1, h2], false, 15);
    let published = |h: &Host| h.fleet()["published"].as_u64().unwrap_or(u64::MAX);
    let before = published(h1);
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.111", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_until("h1 queues its ban", Duration::from_secs(10), || {
        h1.fleet()["queued"] == 1
    });
    lab.redis.restart_empty().expect("restarting Redis empty");
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    wait_links(&[h1, h2], true, 20);
    // A ban h1 issues now reaches h2: anything h1 published on reconnect came before it.
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.112", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_bans(
        &[
            (h2, "203.0.113.110/32"),
            (h2, "203.0.113.111/32"),
            (h2, "203.0.113.112/32"),
        ],
        true,
        10,
    );
    assert_eq!(
        published(h1) - before,
        3,
        "h1 published its lost ban again, its queued ban and its new one, once each: {}",
        h1.fleet()
    );
    assert_eq!(
        audit_count(h2, "fleet_ban", "203.0.113.111/32"),
        1,
        "h2 received the queued ban once"
    );
}

#[test]
fn a_ban_received_again_in_a_resync_is_not_logged_or_counted_twice() {
    // h2 holds h1's ban when the stream is trimmed past what h2 read: h2 resyncs from the
    // hash, which holds that ban too. In force already as received, it is no new install:
    // one `fleet_ban` line on h2, `installed` unchanged (a resync that overlaps the stream,
    // as after a Redis restart, delivered the same ban twice the same way).
    let lab = linked_lab(2);
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let (ok, _, err) = h1.shield(&["ban", "203.0.113.121", "--for", "10m"]);
    assert!(ok, "{err}");
    wait_bans(&[(h2, "203.0.113.121/32")], true, 5);
    let installed = h2.fleet()["installed"].as_u64().expect("installed");
    lab.set_link(1, false).expect("cutting h2's link");
    wait_links(&[h2], false, 15);
    trim_then_ban(&lab, "203.0.113.122/32");
    lab.set_link(1, true).expect("restoring h2's link");
    wait_bans(&[(h2, "203.0.113.122/32")], true, 20);
    assert!(h2.banned("203.0.113.121/32"), "{:?}", h2.bans());
    assert_eq!(
        audit_count(h2, "fleet_ban", "203.0.113.121/32"),
        1,
        "h2 logged h1's ban once"
    );
    assert_eq!(
        h2.fleet()["installed"].as_u64(),
        Some(installed + 1),
        "only h9's ban is a new install: {}",
        h2.fleet()
    );
}
