//! A policy file rewritten in place by a slow writer (a copy over a slow link, a tool that
//! writes in several steps with pauses): the daemon must not install what it finds half
//! way. A prefix of a policy cut between two tables parses as a valid policy with fewer
//! rules; installed, it drops the missing rules' state and rule bans for good. Needs root
//! (fails, never skips).

use std::{io::Write as _, time::Duration};

use serde_json::Value;
use shield_tests::{fleetlab::wait_until, nslab::NsLab, require_root};
use shield_user::control::{self, Request, RunningPolicy};

/// How long a reload may take on a loaded machine (it is waited for, not timed).
const LIMIT: Duration = Duration::from_secs(60);

const HEAD: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "100/s", burst = 200 }
"#;

const TAIL: &str = r#"
[[rule]]
name = "admin"
protocol = "tcp"
ports = [9090]
connections = { rate = "5/s", burst = 10 }
"#;

fn generation(lab: &NsLab) -> u32 {
    control::call::<RunningPolicy>(&lab.socket(), &Request::Policy {})
        .expect("shield policy")
        .generation
}

fn admin_bans(lab: &NsLab) -> usize {
    lab.bans().iter().filter(|b| b["rule"] == "admin").count()
}

#[test]
fn a_policy_written_in_place_with_a_pause_is_installed_only_once_whole() {
    require_root();
    let full = format!("{HEAD}{TAIL}");
    let lab = NsLab::new(&full, &[8080, 9090]);
    let (ok, _, err) = lab.shield(&["ban", "203.0.113.9", "--for", "1h", "--rule", "admin"]);
    assert!(ok, "shield ban --rule admin: {err}");
    assert_eq!(admin_bans(&lab), 1, "the admin ban is in force");
    let before = generation(&lab);
    // The same policy, written again in place: the first table, a pause, the second.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&lab.policy)
        .expect("opening the policy for writing");
    f.write_all(HEAD.as_bytes()).expect("first part");
    f.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(1500));
    f.write_all(TAIL.as_bytes()).expect("second part");
    drop(f);
    // The reload of the whole file: waited for (its speed is not what is tested).
    wait_until("the reload of the whole file", LIMIT, || {
        generation(&lab) > before
    });
    let reloads: Vec<Value> = lab
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "reload")
        .collect();
    assert!(
        reloads.iter().all(|r| r["rules"] != 1),
        "the daemon installed the policy half written (one rule of two): {reloads:?}"
    );
    assert_eq!(
        admin_bans(&lab),
        1,
        "the admin rule's ban was dropped by a reload of the half-written file: {reloads:?}"
    );
    assert_eq!(
        generation(&lab),
        before + 1,
        "the whole file is installed once it is written: {reloads:?}"
    );
    // Still prompt for the usual ways: a new file renamed over it, a write that closes.
    let third = "\n[[rule]]\nname = \"ssh\"\nprotocol = \"tcp\"\nports = [22]\nconnections = { rate = \"1/s\", burst = 3 }\n";
    let tmp = lab.policy.with_extension("new");
    std::fs::write(&tmp, format!("{full}{third}")).expect("new file");
    std::fs::rename(&tmp, &lab.policy).expect("rename over the policy");
    wait_until("the reload of a renamed-in policy", LIMIT, || {
        generation(&lab) > before + 1
    });
    assert_eq!(generation(&lab), before + 2, "a renamed-in policy reloads");
    std::fs::write(&lab.policy, &full).expect("write in place");
    wait_until("the reload of a policy written in place", LIMIT, || {
        generation(&lab) > before + 2
    });
    assert_eq!(
        generation(&lab),
        before + 3,
        "a policy written in place reloads"
    );
    assert_eq!(admin_bans(&lab), 1, "the admin ban stays");
}
