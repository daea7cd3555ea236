//! Rule bans from the fleet while a reload is held up (here by an `nft` that waits).

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
#[test]
fn a_fleet_rule_ban_for_a_rule_a_held_reload_adds_is_installed_after_it() {
    require_root();
    let dir = shield_tests::TempDir::new("a8-fleet-reload-");
    let (hold, entered) = (dir.0.join("hold"), dir.0.join("entered"));
    let bin = dir.0.join("bin");
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
    let mut m = ban_message("203.0.113.9/32", "h9", 600);
    m.scope = shield_user::policy::BanScope::Rule;
    m.rule = "knocks".into();
    lab.redis
        .pipeline(&lab.publish_cmds(&m, None, true))
        .expect("publishing");
    // Received while the reload waits (the fleet's bound: within 1 s).
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        entered.exists() && hold.exists(),
        "the reload was still held"
    );

    std::fs::remove_file(&hold).expect("hold");
    wait_until("the reload is over", Duration::from_secs(60), || {
        h.audit_lines().iter().any(|l| l["event"] == "reload")
    });
    let reload: Vec<_> = h
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "reload")
        .collect();
    assert_eq!(reload[0]["result"], "ok", "{reload:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !h
        .bans()
        .iter()
        .any(|b| b["source"] == "203.0.113.9/32" && b["rule"] == "knocks")
    {
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
