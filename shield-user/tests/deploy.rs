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

/// The system calls `systemd-analyze syscall-filter NAME` says a filter item allows (a
/// `@group` expanded, nested groups too; a plain name is itself).
fn syscall_group(name: &str, into: &mut std::collections::BTreeSet<String>) {
    if !name.starts_with('@') {
        into.insert(name.to_string());
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", name])
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed to check the unit");
    for item in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let item = item.trim();
        if !item.is_empty() && !item.starts_with('#') && into.insert(item.to_string()) {
            syscall_group(item, into);
        }
    }
}

/// Every system call shield's own code makes through `libc` (`libc::umount2(…)`,
/// `libc::syscall(libc::SYS_bpf, …)`) is allowed by the unit's `SystemCallFilter=`: under
/// systemd a call outside it kills the daemon with SIGSYS (the default action), before it
/// can say what went wrong. The calls std, tokio and aya make are @system-service's own.
#[test]
fn unit_system_call_filter_allows_every_call_shield_makes_itself() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let unit = std::fs::read_to_string(format!("{root}/deploy/shield.service"))
        .expect("deploy/shield.service");
    let mut allowed = std::collections::BTreeSet::new();
    for line in unit.lines() {
        if let Some(items) = line.strip_prefix("SystemCallFilter=") {
            assert!(
                !items.starts_with('~'),
                "the filter is an allow list: {line}"
            );
            for item in items.split_whitespace() {
                syscall_group(item, &mut allowed);
            }
        }
    }
    assert!(
        allowed.len() > 100,
        "the unit has a SystemCallFilter= allow list"
    );
    let mut known = std::collections::BTreeSet::new();
    syscall_group("@known", &mut known);
    let mut missing = std::collections::BTreeSet::new();
    let mut dirs = vec![std::path::PathBuf::from(format!("{root}/shield-user/src"))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("shield-user/src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source file");
            for (prefix, end) in [("libc::", '('), ("libc::SYS_", ',')] {
                for piece in text.split(prefix).skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let called = piece[name.len()..].trim_start().starts_with(end);
                    // `libc::syscall(…)` itself is the way in: its `SYS_` name is checked.
                    let direct = name != "syscall" && known.contains(&name);
                    if called && direct && !allowed.contains(&name) {
                        missing.insert(format!("{name} ({})", path.display()));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/shield.service's SystemCallFilter= does not allow {missing:?}: under systemd the daemon is killed (SIGSYS) when it makes that call"
    );
}

/// `shield --help` (and `man shield`, made from it) points at the example policy and the
/// operations guide: on a host installed from the Debian package, where no checkout is,
/// it also names where the package puts them.
#[test]
fn help_names_where_the_package_installs_the_docs_it_points_to() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO_BIN_EXE_shield"))
        .arg("--help")
        .output()
        .expect("shield --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let manifest = std::fs::read_to_string(format!("{root}/shield-user/Cargo.toml"))
        .expect("shield-user/Cargo.toml");
    for (in_checkout, installed) in [
        ("policy/example.toml", "/usr/share/doc/shield/example.toml"),
        ("docs/operations.md", "/usr/share/doc/shield/operations.md"),
    ] {
        assert!(
            help.contains(in_checkout) && help.contains(installed),
            "shield --help names {in_checkout} without where the package installs it ({installed}):\n{help}"
        );
        assert!(
            manifest.contains(&format!("\"{}\"", &installed[1..])),
            "the package does not install {installed}, which shield --help names"
        );
    }
}
