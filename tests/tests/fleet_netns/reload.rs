//! Rule bans from the fleet while a reload is held up (here by an `nft` that waits).

use std::path::PathBuf;

use shield_tests::fleetlab::Host;

use super::*;

/// The fleet tests' policy, with a syncookie rule: a reload that changes its ports gives
/// the interface's table to `nft` (the test's wrapper holds it there).
fn policy_with_cookies() -> String {
    format!(
        "{POLICY}\n[[rule]]\nname = \"cookies\"\nprotocol = \"tcp\"\nports = [8000]\nunverified = {{ rate = \"1/h\", burst = 1 }}\nchallenge = \"syncookie\"\n"
    )
}

/// A rule the reload below adds.
const KNOCKS: &str = "\n[[rule]]\nname = \"knocks\"\nprotocol = \"tcp\"\nports = [9]\nconnections = { rate = \"5/s\", burst = 10 }\n";

/// Another host bans a source under rule `knocks` while this host's reload, which adds the
/// rule, waits for `nft` (the rule is not in force here yet). The ban waits for the reload,
/// as `shield ban --rule` does, and is installed once it is over: not skipped as a ban of a
/// rule this host does not have.
/// A one-host fleet lab whose daemon has an `nft` wrapper that waits while `hold` exists
/// (`entered` written then), its reload adding rule `knocks` under way and held there.
fn held_reload(dir: &std::path::Path) -> (FleetLab, PathBuf, PathBuf) {
    let (hold, entered) = (dir.join("hold"), dir.join("entered"));
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).expect("wrapper dir");
    let path_env = shield_tests::nft_wrapper(&bin, |real| {
        format!(
            "if [ -e '{hold}' ]; then : > '{entered}'; while [ -e '{hold}' ]; do sleep 0.1; done; fi\nexec {real} \"$@\"\n",
            hold = hold.display(),
            entered = entered.display()
        )
    });
    let mut lab = FleetLab::new(1, API, 150, &policy_with_cookies()).expect("fleet lab");
    lab.hosts[0].env.push(("PATH".into(), path_env));
    lab.start_all().expect("starting the daemon");
    let h = &lab.hosts[0];
    std::fs::write(&hold, "").expect("hold");
    let text = std::fs::read_to_string(&h.policy).expect("policy");
    std::fs::write(
        &h.policy,
        format!("{}{KNOCKS}", text.replace("[8000]", "[8000, 8001]")),
    )
    .expect("policy");
    wait_until("the reload runs nft", Duration::from_secs(60), || {
        entered.exists()
    });
    (lab, hold, entered)
}

/// Releases the held reload and waits for its end: it succeeded.
fn release(h: &Host, hold: &std::path::Path) {
    std::fs::remove_file(hold).expect("hold");
    wait_until("the reload is over", Duration::from_secs(60), || {
        h.audit_lines().iter().any(|l| l["event"] == "reload")
    });
    let reload: Vec<_> = h
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "reload")
        .collect();
    assert_eq!(reload[0]["result"], "ok", "{reload:?}");
}

/// A fleet rule ban of `source` under `knocks`, from host h9.
fn knocks_ban(source: &str) -> shield_user::fleet::Message {
    let mut m = ban_message(source, "h9", 600);
    m.scope = shield_user::policy::BanScope::Rule;
    m.rule = "knocks".into();
    m
}

/// Whether `h` lists a ban of `source` under rule `knocks`.
fn knocks_banned(h: &Host, source: &str) -> bool {
    h.bans()
        .iter()
        .any(|b| b["source"] == source && b["rule"] == "knocks")
}

#[test]
fn a_fleet_rule_ban_for_a_rule_a_held_reload_adds_is_installed_after_it() {
    require_root();
    let dir = shield_tests::TempDir::new("a8-fleet-reload-");
    let (lab, hold, entered) = held_reload(&dir.0);
    let h = &lab.hosts[0];
    lab.redis
        .pipeline(&lab.publish_cmds(&knocks_ban("203.0.113.9/32"), None, true))
        .expect("publishing");
    // Received while the reload waits (the fleet's bound: within 1 s).
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        entered.exists() && hold.exists(),
        "the reload was still held"
    );

    release(h, &hold);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !knocks_banned(h, "203.0.113.9/32") {
        assert!(
            std::time::Instant::now() < deadline,
            "the fleet's rule ban is not in force after the reload:\n{}",
            h.daemon.as_ref().map(|d| d.log_text()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = h.daemon.as_ref().map(|d| d.log_text()).unwrap_or_default();
    assert!(!log.contains("skipped the rule ban"), "{log}");
}

/// A fleet rule ban that waits for a held reload, then the fleet's unban of the source
/// (sent after it), also during the reload: the unban lifts the waiting ban, which is not
/// installed once the reload is over.
#[test]
fn a_fleet_unban_during_a_held_reload_lifts_a_rule_ban_waiting_for_it() {
    require_root();
    let dir = shield_tests::TempDir::new("a8-fleet-reload-");
    let (lab, hold, entered) = held_reload(&dir.0);
    let h = &lab.hosts[0];
    let source = "203.0.113.10/32";
    lab.redis
        .pipeline(&lab.publish_cmds(&knocks_ban(source), None, true))
        .expect("publishing the ban");
    std::thread::sleep(Duration::from_millis(500));
    let unban = unban_message(source, "h9", shield_user::fleet::now_ms());
    lab.redis
        .pipeline(&lab.publish_cmds(&unban, None, false))
        .expect("publishing the unban");
    wait_until("the unban is received", Duration::from_secs(10), || {
        h.audit_lines()
            .iter()
            .any(|l| l["event"] == "fleet_unban" && l["source"] == source)
    });
    assert!(
        entered.exists() && hold.exists(),
        "the reload was still held"
    );

    release(h, &hold);
    // The next tick at the latest has served what waited.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !knocks_banned(h, source),
        "the ban came back after its unban:\n{:#?}",
        h.bans()
    );
}

/// SIGTERM while a fleet rule ban waits for a held reload: the daemon lets the reload
/// finish and installs the ban before it stops, so `--state-dir` keeps it for the next
/// daemon (it was dropped with the daemon).
#[test]
fn a_fleet_rule_ban_waiting_when_the_daemon_stops_is_kept() {
    require_root();
    let dir = shield_tests::TempDir::new("a8-fleet-reload-");
    let (mut lab, hold, entered) = held_reload(&dir.0);
    let source = "203.0.113.11/32";
    lab.redis
        .pipeline(&lab.publish_cmds(&knocks_ban(source), None, true))
        .expect("publishing");
    // Received while the reload waits (the fleet's bound: within 1 s).
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        entered.exists() && hold.exists(),
        "the reload was still held"
    );

    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        std::fs::remove_file(hold).expect("hold");
    });
    let h = &mut lab.hosts[0];
    let (status, log) = h
        .daemon
        .as_mut()
        .expect("the daemon")
        .stop()
        .expect("stopping the daemon");
    release.join().expect("the release thread");
    assert!(status.success(), "the daemon's stop: {status}\n{log}");
    let saved = std::fs::read_to_string(h.state.join("bans.json")).expect("bans.json");
    let saved_json: serde_json::Value = serde_json::from_str(&saved).expect("bans.json is JSON");
    let bans = saved_json["bans"].as_array().cloned().unwrap_or_default();
    assert!(
        bans.iter()
            .any(|b| b["source"] == source && b["rule"] == "knocks"),
        "the waiting fleet ban was not kept at the stop:\n{saved}\n{log}"
    );
}
