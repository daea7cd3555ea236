//! Bans while a reload is held up (here by an `nft` that waits): `shield ban` is answered at
//! once, enforced at once, and stays enforced under the policy the reload installs, under
//! the one in force again when the reload fails and is undone, and across a stop meanwhile;
//! a ban a rule the reload adds issues before the reload is over stays.

use super::reloads::{WrappedLab, reaches_server};
use super::*;

/// The body of an `nft` wrapper that, while the test's file `hold` exists, creates the
/// file `entered` and waits for `hold` to go.
fn holding(real: &str, dir: &std::path::Path) -> String {
    format!(
        "if [ -e '{hold}' ]; then : > '{entered}'; while [ -e '{hold}' ]; do sleep 0.1; done; fi\nexec {real} \"$@\"\n",
        hold = dir.join("hold").display(),
        entered = dir.join("entered").display()
    )
}

/// Writes `policy` with the test's file `hold` in place, and waits until the reload it
/// starts runs the `nft` the wrapper holds (`entered`).
fn hold_reload(lab: &WrappedLab, policy: &str) {
    std::fs::write(lab.file("hold"), "").expect("hold");
    lab.write_policy(policy);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !lab.file("entered").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never ran the held nft:\n{}",
            lab.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon serves a ban while a reload waits for `nft` (the ban tables are not the
/// reload's): the ban is answered, listed and enforced before the reload ends. The policy
/// had no bans, so the data path's ban lookups were off when the reload wrote its new
/// policy half: they are on in it all the same once it is in force, and the ban still
/// drops the source after the reload.
#[test]
fn a_ban_during_a_held_reload_is_served_at_once_and_stays_in_force() {
    let mut lab = WrappedLab::start(POLICY, false, holding);
    let (source, reason) = ("203.0.113.7/32", "held reload");
    let src = IpAddr::V4(netlab::DENIED_V4);
    assert!(reaches_server(&lab.topo, src), "before the ban");
    let before = lab.generation(netlab::SERVER_IF);

    // The reload is under way once its first `nft` waits.
    hold_reload(&lab, &POLICY.replace("[8000]", "[8000, 8001]"));
    let (ok, _, err) = lab.shield(&["ban", source, "--for", "1h", "--reason", reason]);
    assert!(ok, "shield ban: {err}");
    let audit = std::fs::read_to_string(lab.file("audit.jsonl")).expect("audit log");
    assert!(
        !audit.contains(r#""event":"reload""#),
        "the ban was answered only after the reload:\n{audit}"
    );
    assert_eq!(
        lab.banned_on(source, reason),
        [netlab::SERVER_IF],
        "listed during the reload"
    );
    assert!(!reaches_server(&lab.topo, src), "during the reload");
    assert!(
        lab.file("entered").exists() && lab.generation(netlab::SERVER_IF) == before,
        "the reload was still held"
    );

    std::fs::remove_file(lab.file("hold")).expect("hold");
    let e = lab.reload(1);
    assert_eq!(e["result"], "ok", "{e}");
    assert_eq!(lab.generation(netlab::SERVER_IF), before + 1);
    assert_eq!(
        lab.banned_on(source, reason),
        [netlab::SERVER_IF],
        "after the reload"
    );
    assert!(!reaches_server(&lab.topo, src), "after the reload");
    lab.stop();
}

/// Whether the data path's ban lookups are on in the policy half in force on `iface`.
fn ban_lookups_on(lab: &WrappedLab, iface: &str) -> bool {
    let dir = shield_user::loader::pin_dir(&lab.bpffs_path(), iface);
    let (_, cfg) = shield_user::loader::PolicyMaps::open(&dir)
        .and_then(|t| t.active())
        .expect("the policy tables");
    cfg.flags & shield_common::CFG_BANS != 0
}

/// A reload held on the second interface (`nft` waits, then refuses its table) after the
/// first one's new policy is in force; a ban meanwhile (no bans before: the lookups were off
/// in both halves of the first interface until it came, and it turned them on in the new
/// one). The reload fails and is undone: the first interface's previous half is in force
/// again, with the lookups on, so the ban drops the source at once (not only after the
/// next once-a-second expiry pass; checked right after the reload's audit line).
#[test]
fn a_ban_during_a_reload_that_is_undone_stays_in_force() {
    let mut lab = WrappedLab::start(POLICY, true, |real, dir| {
        format!(
            "if [ \"$1\" = -f ] && [ -e '{hold}' ]; then\n  script=$(cat)\n  case \"$script\" in *'\"dum0\"'*)\n    : > '{entered}'; while [ -e '{hold}' ]; do sleep 0.1; done\n    echo 'wrapper: refused' >&2; exit 1;;\n  esac\n  printf '%s\\n' \"$script\" | exec {real} \"$@\"\nfi\nexec {real} \"$@\"\n",
            hold = dir.join("hold").display(),
            entered = dir.join("entered").display()
        )
    });
    let (source, reason) = ("203.0.113.7/32", "undone reload");
    let src = IpAddr::V4(netlab::DENIED_V4);
    assert!(reaches_server(&lab.topo, src), "before the ban");
    assert!(!ban_lookups_on(&lab, netlab::SERVER_IF), "no bans yet");
    let before = lab.generation(netlab::SERVER_IF);

    // The first interface has the new policy once the second one's `nft` waits.
    hold_reload(&lab, &POLICY.replace("[8000]", "[8000, 8001]"));
    assert_eq!(lab.generation(netlab::SERVER_IF), before + 1, "flipped");
    let (ok, _, err) = lab.shield(&["ban", source, "--for", "1h", "--reason", reason]);
    assert!(ok, "shield ban: {err}");
    assert!(!reaches_server(&lab.topo, src), "during the reload");

    std::fs::remove_file(lab.file("hold")).expect("hold");
    let e = lab.reload(1);
    // At once: the expiry pass would turn the lookups back on within a second.
    let on = ban_lookups_on(&lab, netlab::SERVER_IF);
    let dropped = !reaches_server(&lab.topo, src);
    assert_eq!(e["result"], "error", "{e}");
    assert_eq!(lab.generation(netlab::SERVER_IF), before, "undone");
    assert!(on, "the ban lookups are off in the policy in force again");
    assert!(dropped, "after the undone reload");
    let both = {
        let mut b = vec![netlab::SERVER_IF.to_string(), "dum0".to_string()];
        b.sort();
        b
    };
    assert_eq!(
        lab.banned_on(source, reason),
        both,
        "listed after the reload"
    );
    lab.stop();
}

/// A rule the reload below adds: over its budget twice (port 9, where `reaches_server`
/// knocks), a source gets a rule-scope ban from the data path.
const KNOCKS: &str = r#"
[[rule]]
name = "knocks"
protocol = "tcp"
ports = [9]
connections = { rate = "1/h", burst = 1 }
escalation = { strikes = 2, window = "1m", ban = "1h", scope = "rule" }
"#;

/// The interfaces on which `shield bans --json` lists a ban of `source` under rule `rule`.
fn rule_banned_on(lab: &WrappedLab, source: &str, rule: &str) -> Vec<String> {
    let (ok, out, err) = lab.shield(&["bans", "--json"]);
    assert!(ok, "shield bans: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("bans --json is JSON");
    let mut on: Vec<String> = v["bans"]
        .as_array()
        .expect("bans")
        .iter()
        .filter(|b| b["source"] == source && b["rule"] == rule && b["scope"] == "rule")
        .map(|b| b["iface"].as_str().unwrap_or_default().to_string())
        .collect();
    on.sort();
    on
}

/// A reload that adds a rule, held on the second interface (`nft` waits) once the first
/// one's new policy is in force: the new rule bans a source on the first interface
/// meanwhile (the data path, under the new rule's id). Once the reload is over, the ban is
/// still listed and in the tables: it is the new rule's, not one the id had before the
/// reload (those go, "rule removed").
#[test]
fn a_ban_by_a_rule_a_held_reload_adds_stays_after_it() {
    let mut lab = WrappedLab::start(POLICY, true, |real, dir| {
        format!(
            "if [ \"$1\" = -f ] && [ -e '{hold}' ]; then\n  script=$(cat)\n  case \"$script\" in *'\"dum0\"'*)\n    : > '{entered}'; while [ -e '{hold}' ]; do sleep 0.1; done;;\n  esac\n  printf '%s\\n' \"$script\" | exec {real} \"$@\"\nfi\nexec {real} \"$@\"\n",
            hold = dir.join("hold").display(),
            entered = dir.join("entered").display()
        )
    });
    let src = IpAddr::V4(netlab::DENIED_V4);
    let source = format!("{src}/32");
    let before = lab.generation(netlab::SERVER_IF);

    // (Port 8001 too: a syncookie table that does not change is not given to nft.)
    let knocks = format!("{}{KNOCKS}", POLICY.replace("[8000]", "[8000, 8001]"));
    hold_reload(&lab, &knocks);
    assert_eq!(lab.generation(netlab::SERVER_IF), before + 1, "flipped");
    // Knocks until the data path bans (a few SYNs over a budget of one).
    let mut knocks = 0;
    while rule_banned_on(&lab, &source, "knocks").is_empty() {
        knocks += 1;
        assert!(
            knocks <= 8,
            "no ban of {source} by rule knocks:\n{}",
            lab.daemon.log_text()
        );
        reaches_server(&lab.topo, src);
    }
    assert!(lab.file("entered").exists(), "the reload was still held");

    std::fs::remove_file(lab.file("hold")).expect("hold");
    let e = lab.reload(1);
    assert_eq!(e["result"], "ok", "{e}");
    assert_eq!(
        rule_banned_on(&lab, &source, "knocks"),
        [netlab::SERVER_IF],
        "after the reload"
    );
    let audit = std::fs::read_to_string(lab.file("audit.jsonl")).expect("audit log");
    assert!(
        !audit.contains(r#""event":"ban_end""#),
        "the new rule's ban was ended:\n{audit}"
    );
    assert!(!reaches_server(&lab.topo, src), "banned after the reload");
    lab.stop();
}

/// SIGTERM while a reload is held (`nft` waits), after a ban served meanwhile: the daemon
/// lets the reload finish (the wait ends a second later), logs it, and stops cleanly; the
/// ban is in force all along and again under the next daemon, with the new policy.
#[test]
fn a_stop_during_a_held_reload_keeps_the_ban_served_meanwhile() {
    let mut lab = WrappedLab::start(POLICY, false, holding);
    let (source, reason) = ("203.0.113.7/32", "stopped meanwhile");
    let src = IpAddr::V4(netlab::DENIED_V4);
    let before = lab.generation(netlab::SERVER_IF);
    hold_reload(&lab, &POLICY.replace("[8000]", "[8000, 8001]"));
    let (ok, _, err) = lab.shield(&["ban", source, "--for", "1h", "--reason", reason]);
    assert!(ok, "shield ban: {err}");
    assert!(!reaches_server(&lab.topo, src), "during the reload");

    let hold = lab.file("hold");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        std::fs::remove_file(hold).expect("hold");
    });
    lab.stop();
    release.join().expect("the release thread");
    let audit = std::fs::read_to_string(lab.file("audit.jsonl")).expect("audit log");
    let events: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let reload = events.iter().position(|e| e["event"] == "reload");
    let stop = events.iter().position(|e| e["event"] == "stop");
    assert!(
        matches!((reload, stop), (Some(r), Some(s)) if r < s)
            && events[reload.unwrap_or_default()]["result"] == "ok",
        "the reload finished before the stop:\n{audit}"
    );

    lab.start_again();
    assert_eq!(
        lab.generation(netlab::SERVER_IF),
        before + 2,
        "the new policy"
    );
    assert_eq!(
        lab.banned_on(source, reason),
        [netlab::SERVER_IF],
        "after the stop"
    );
    assert!(!reaches_server(&lab.topo, src), "after the stop");
    lab.stop();
}
