//! What `shield bans` and `shield unban` say: a ban restored from `--state-dir` with its own
//! duration, an unban of what is not banned.

use super::*;

/// A start that finds the pins gone restores the bans of `--state-dir` with their own
/// duration and the time they have left: a 10-minute ban issued 3 minutes before the
/// restart lists a duration of 600 s and about 420 s left. It listed 420 s for both (the
/// time left taken for its duration), and its `unban` line said `ban_secs` 420.
#[test]
fn a_ban_restored_from_the_state_dir_keeps_its_duration_and_its_time_left() {
    use shield_tests::netlab::Daemon;
    let mut lab = NsLab::new(POLICY, &[API]);
    let state = RemoveOnDrop(std::env::temp_dir().join(unique("pl-state-")));
    let extra = [
        "--audit-log".to_string(),
        lab.audit.to_str().expect("utf-8").to_string(),
        "--state-dir".to_string(),
        state.0.to_str().expect("utf-8").to_string(),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let start = |lab: &mut NsLab| {
        lab.daemon = None;
        lab.daemon = Some(
            Daemon::start(
                &shield_bin(),
                &lab.topo.server,
                &lab.policy,
                &lab.bpffs.path,
                &extra,
            )
            .expect("starting shield run with the test's --state-dir"),
        );
    };
    start(&mut lab);
    let (ok, _, err) = lab.shield(&["ban", "192.0.2.9", "--for", "10m", "--reason", "abuse"]);
    assert!(ok, "{err}");
    let saved = state.0.join("bans.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&saved).is_ok_and(|t| t.contains("192.0.2.9/32")) {
        assert!(
            Instant::now() < deadline,
            "the ban never saved in {saved:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A reboot 3 minutes later: the daemon stopped, the pins gone, the wall clock 3
    // minutes on (the saved expiry 3 minutes nearer, as the clock would have it).
    lab.daemon = None;
    let mut file: Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).expect("bans.json")).expect("JSON");
    for b in file["bans"].as_array_mut().expect("bans") {
        let at = b["expires_ms"].as_u64().expect("expires_ms");
        b["expires_ms"] = (at - 180_000).into();
    }
    std::fs::write(&saved, file.to_string()).expect("writing bans.json");
    let pins = shield_user::loader::pin_dir(&lab.bpffs.path, SERVER_IF);
    std::fs::remove_dir_all(&pins).expect("removing the pins");
    start(&mut lab);

    let restore = lab.audit_events("restore");
    assert!(
        restore.len() == 1 && restore[0]["bans"] == 1,
        "the audit log says one ban was restored: {restore:?}"
    );
    let bans = lab.bans();
    let b = bans
        .iter()
        .find(|b| b["source"] == "192.0.2.9/32")
        .unwrap_or_else(|| panic!("the ban was not restored: {bans:#?}"));
    let (dur, left) = (
        b["duration_secs"].as_f64().expect("duration_secs"),
        b["remaining_secs"].as_f64().expect("remaining_secs"),
    );
    assert!(
        (599.0..=600.5).contains(&dur),
        "a 10-minute ban lists a duration of 600 s after the restore, not {dur} s: {b}"
    );
    assert!(
        (400.0..=420.5).contains(&left),
        "3 minutes after it was issued, about 420 s are left, not {left} s: {b}"
    );
    assert_eq!(b["comment"], "abuse", "{b}");
    let (ok, table, err) = lab.shield(&["bans"]);
    assert!(ok, "{err}");
    let row = table
        .lines()
        .find(|l| l.contains("192.0.2.9/32"))
        .unwrap_or_else(|| panic!("no row for the ban:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells.get(4),
        Some(&"600s"),
        "the DURATION column says 600s:\n{table}"
    );
    let (ok, _, err) = lab.shield(&["unban", "192.0.2.9"]);
    assert!(ok, "{err}");
    let unban = lab.audit_events("unban");
    assert!(
        unban.len() == 1
            && unban[0]["ban_secs"]
                .as_f64()
                .is_some_and(|s| (599.0..=600.5).contains(&s)),
        "the unban line names the ban's 600 s: {unban:?}"
    );
}

/// `shield unban` of a source that is not banned says so and exits 2 (it printed a line and
/// exited 0: a script could not tell), naming the wider ban in force that holds it and the
/// command that lifts it, with the `--socket` it was given; one that lifts a ban exits 0.
#[test]
fn an_unban_of_what_is_not_banned_exits_2_and_names_the_wider_ban() {
    let lab = NsLab::new(POLICY, &[API]);
    let unban = |source: &str| {
        let out = Command::new(shield_bin())
            .args(["unban", source, "--socket"])
            .arg(lab.socket())
            .output()
            .expect("running shield unban");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = unban("192.0.2.9");
    assert_eq!(code, Some(2), "nothing banned: exit 2\n{out}{err}");
    assert!(
        err.contains("192.0.2.9/32 is not banned: nothing was lifted"),
        "it says nothing was banned: {err}"
    );
    let (ok, _, err) = lab.shield(&["ban", "198.51.100.0/24", "--for", "10m"]);
    assert!(ok, "{err}");
    let (code, out, err) = unban("198.51.100.7");
    assert_eq!(code, Some(2), "only an exact prefix is lifted\n{out}{err}");
    assert!(
        err.contains("198.51.100.7/32 is not banned")
            && err.contains("inside 198.51.100.0/24")
            && err.contains(&format!(
                "`shield unban 198.51.100.0/24 --socket {}`",
                lab.socket().display()
            )),
        "it names the /24 that holds the address, with a command that works as printed (the \
         daemon's --socket, not the default): {err}"
    );
    assert_eq!(lab.bans().len(), 1, "the /24 stays");
    let (code, out, err) = unban("198.51.100.0/24");
    assert_eq!(code, Some(0), "a ban lifted: exit 0\n{out}{err}");
    assert!(
        out.contains("unbanned 198.51.100.0/24 from the whole host"),
        "{out}"
    );
    assert_eq!(lab.bans().len(), 0, "lifted");
}
