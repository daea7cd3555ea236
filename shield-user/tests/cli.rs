//! The `shield` command as a user runs it, for what needs no privileges.

use std::process::Command;

fn shield(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shield"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("running shield");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_matrix_of_a_valid_policy() {
    let (code, out, err) = shield(&["check", "policy/example.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("RULE"), "{out}");
    assert!(
        out.contains(
            "api    tcp    8080,9000-9099  enforce  /32 /64      5/s burst 10, max 100/min"
        ),
        "{out}"
    );
    assert!(out.contains("deny (always dropped): 2 prefixes"), "{out}");
    assert!(out.ends_with("policy/example.toml: valid\n"), "{out}");
}

#[test]
fn check_rejects_a_bad_policy_with_its_location() {
    let dir = std::env::temp_dir().join(format!("shield-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [80]\nconnections = { rate = \"5/sec\" }\n").expect("write");
    let (code, out, err) = shield(&["check", file.to_str().expect("utf-8")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.is_empty(),
        "nothing on stdout for an invalid policy: {out}"
    );
    assert!(
        err.contains("bad.toml:5:24: the unit must be s, min or h"),
        "error must name file:line:column and what was expected: {err}"
    );
}

#[test]
fn check_on_a_missing_file_says_so() {
    let (code, _, err) = shield(&["check", "/nonexistent/policy.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read policy file /nonexistent/policy.toml"),
        "{err}"
    );
}

#[test]
fn help_explains_every_command() {
    let (code, out, _) = shield(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["run", "check", "stats", "ban", "unban", "bans", "lab"] {
        assert!(out.contains(cmd), "--help lacks {cmd}: {out}");
    }
    for topic in [
        "Escalation",
        "Audit log",
        "Control socket",
        "{\"cmd\":\"ban\"",
    ] {
        assert!(out.contains(topic), "--help lacks {topic}: {out}");
    }
    let (code, out, _) = shield(&["run", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--iface",
        "--policy",
        "--xdp-mode",
        "--bpffs",
        "native",
        "generic",
    ] {
        assert!(out.contains(flag), "run --help lacks {flag}: {out}");
    }
}

#[test]
fn bad_arguments_are_refused_before_anything_happens() {
    let (code, _, err) = shield(&[
        "run",
        "--iface",
        "lo",
        "--policy",
        "x.toml",
        "--xdp-mode",
        "fast",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'fast'"), "{err}");
    let (code, _, err) = shield(&["run", "--policy", "x.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("--iface"), "{err}");
}

#[test]
fn stats_without_pinned_maps_says_what_is_missing() {
    let (code, _, err) = shield(&["stats", "--bpffs", "/nonexistent-bpffs"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no shield maps pinned under /nonexistent-bpffs/shield"),
        "{err}"
    );
}
