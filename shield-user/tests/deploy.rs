//! The shipped systemd unit is valid and only uses flags `shield` has.

use std::process::Command;

#[test]
fn systemd_unit_verifies_and_matches_the_cli() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let unit = std::fs::read_to_string(format!("{root}/deploy/shield.service"))
        .expect("deploy/shield.service");
    let bin = env!("CARGO_BIN_EXE_shield");
    let dir = std::env::temp_dir().join(format!("shield-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("shield.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/shield", bin)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().expect("utf-8")])
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed to check the unit");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("shield.service"))
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify: {problems:#?}");
    // Every long flag the unit passes to `shield run` exists.
    let help = Command::new(bin)
        .args(["run", "--help"])
        .output()
        .expect("shield run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let start = unit.find("\nExecStart=").expect("ExecStart line");
    let mut exec = String::new();
    for line in unit[start + 1..].lines() {
        exec.push_str(line);
        if !line.ends_with('\\') {
            break;
        }
    }
    assert!(
        unit.contains("\nType=notify\n"),
        "the unit waits for shield's readiness (sd_notify)"
    );
    assert!(
        exec.contains(" run "),
        "ExecStart runs `shield run`: {exec}"
    );
    for flag in exec.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(flag),
            "unit uses {flag}, which `shield run` does not have"
        );
    }
}

/// docs/operations.md's account of the unit's hardening ("is hardened: only …") names every
/// capability the unit grants and every path it can write: an operator reviewing what the
/// daemon may do reads that paragraph, not the unit.
#[test]
fn operations_guide_lists_the_units_capabilities_and_writable_paths() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let unit = std::fs::read_to_string(format!("{root}/deploy/shield.service"))
        .expect("deploy/shield.service");
    let guide =
        std::fs::read_to_string(format!("{root}/docs/operations.md")).expect("docs/operations.md");
    let start = guide
        .find("is hardened: only")
        .expect("docs/operations.md describes the unit's hardening (\"is hardened: only …\")");
    let end = start
        + guide[start..]
            .find("system-call filter")
            .expect("the hardening paragraph ends with the system-call filter");
    let paragraph = guide[start..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let setting = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect()
    };
    let mut missing = Vec::new();
    for cap in setting("CapabilityBoundingSet") {
        if !paragraph.contains(&format!("`{cap}`")) {
            missing.push(cap);
        }
    }
    let mut writable = setting("ReadWritePaths");
    writable.extend(
        setting("StateDirectory")
            .into_iter()
            .map(|d| format!("/var/lib/{d}")),
    );
    for path in writable {
        if !paragraph.contains(&format!("`{path}`")) {
            missing.push(path);
        }
    }
    assert!(
        missing.is_empty(),
        "the unit grants or can write {missing:?}, which docs/operations.md's hardening paragraph does not name: {paragraph}"
    );
}
