//! Bans while a reload is held up (here by an `nft` that waits): `shield ban` is answered at
//! once, enforced at once, and stays enforced under the policy the reload installs.

use super::reloads::{WrappedLab, reaches_server};
use super::*;

/// The daemon serves a ban while a reload waits for `nft` (the ban tables are not the
/// reload's): the ban is answered, listed and enforced before the reload ends. The policy
/// had no bans, so the data path's ban lookups were off when the reload wrote its new
/// policy half: they are on in it all the same once it is in force, and the ban still
/// drops the source after the reload.
#[test]
fn a_ban_during_a_held_reload_is_served_at_once_and_stays_in_force() {
    let mut lab = WrappedLab::start(POLICY, false, |real, dir| {
        format!(
            "if [ -e '{hold}' ]; then : > '{entered}'; while [ -e '{hold}' ]; do sleep 0.1; done; fi\nexec {real} \"$@\"\n",
            hold = dir.join("hold").display(),
            entered = dir.join("entered").display()
        )
    });
    let (source, reason) = ("203.0.113.7/32", "held reload");
    let src = IpAddr::V4(netlab::DENIED_V4);
    assert!(reaches_server(&lab.topo, src), "before the ban");
    let before = lab.generation(netlab::SERVER_IF);

    std::fs::write(lab.file("hold"), "").expect("hold");
    lab.write_policy(&POLICY.replace("[8000]", "[8000, 8001]"));
    // The reload is under way once its first `nft` waits.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !lab.file("entered").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never ran nft:\n{}",
            lab.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
