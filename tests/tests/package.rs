//! The Debian package, installed on this machine as a user would (needs root): `dpkg -i`,
//! `shield --version`, `systemd-analyze verify` of the installed unit, `man shield-run`, the
//! default policy valid, completions; `dpkg -r` leaves nothing but the configuration; then
//! purged, on every exit path (a Drop guard).
//!
//! The package: `$SHIELD_DEB` (`cargo xtask test` builds it once, from the release build),
//! else `cargo xtask package` is run here.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use shield_tests::require_root;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn status() -> String {
    let o = run("dpkg-query", &["-W", "-f=${Status}", "shield"]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The package under test.
fn deb() -> PathBuf {
    if let Some(p) = std::env::var_os("SHIELD_DEB") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SHIELD_DEB={} is not a file", p.display());
        return p;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["xtask", "package"])
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("cargo xtask package");
    assert!(out.status.success(), "cargo xtask package failed");
    let dir = root().join("target/debian");
    std::fs::read_dir(&dir)
        .expect("target/debian")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("shield_"))
                && p.extension().is_some_and(|e| e == "deb")
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("a shield_*.deb in target/debian")
}

/// The files (not directories) of a `dpkg-deb -c` listing that already exist under `root`:
/// `dpkg -i` would silently take over a file no package owns (a hand-installed
/// /usr/bin/shield, a unit copied by hand) and the purge would then delete it.
fn preexisting(listing: &str, root: &Path) -> Vec<PathBuf> {
    listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| {
            // perms owner/group size date time ./path [-> target]
            let path = l.split_whitespace().nth(5)?;
            let path = path.strip_prefix("./").unwrap_or(path);
            (!path.is_empty()).then(|| root.join(path))
        })
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

#[test]
fn files_the_package_would_take_over_are_found() {
    let dir = std::env::temp_dir().join(format!("shield-pkg-root-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("usr/bin")).expect("dir");
    std::fs::write(dir.join("usr/bin/shield"), "hand-installed").expect("file");
    let listing = "\
drwxr-xr-x 0/0               0 2026-11-30 03:00 ./usr/bin/
-rwxr-xr-x 0/0         5045832 2026-11-30 03:00 ./usr/bin/shield
-rw-r--r-- 0/0             812 2026-11-30 03:00 ./usr/lib/systemd/system/shield.service
lrwxrwxrwx 0/0               0 2026-11-30 03:00 ./usr/share/man/x.1.gz -> y.1.gz
";
    let found = preexisting(listing, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found, vec![dir.join("usr/bin/shield")]);
}

/// Purges the package whatever happens to the test.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let o = run("dpkg", &["--purge", "shield"]);
        if !o.status.success() {
            eprintln!("dpkg --purge shield: {}", text(&o));
        }
    }
}

#[test]
fn the_package_installs_runs_and_removes_cleanly() {
    require_root();
    let deb = deb();
    // Never touch an installation the test did not make.
    assert!(
        !status().contains("ok installed") && !status().contains("config-files"),
        "a shield package is already on this machine ({}): this test installs and purges its own; `dpkg --purge shield` first",
        status()
    );
    assert!(
        !Path::new("/etc/shield").exists(),
        "/etc/shield exists (a manual install?): this test would take it over; move it away first"
    );

    let version = run("dpkg-deb", &["-f", deb.to_str().expect("utf-8"), "Version"]);
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let upstream = version.split('-').next().expect("version").to_string();
    assert!(!upstream.is_empty(), "no Version in {}", deb.display());
    let contents = text(&run("dpkg-deb", &["-c", deb.to_str().expect("utf-8")]));
    let taken = preexisting(&contents, Path::new("/"));
    assert!(
        taken.is_empty(),
        "files of the package already exist on this machine, owned by no shield package (a manual install?): {taken:#?}; installing would overwrite them and the purge would delete them: move them away first"
    );

    let _purge = Purge;
    let o = run("dpkg", &["-i", deb.to_str().expect("utf-8")]);
    assert!(o.status.success(), "dpkg -i: {}", text(&o));
    assert!(
        status().contains("install ok installed"),
        "after dpkg -i: {}",
        status()
    );

    // The binary, from PATH's /usr/bin.
    let o = run("/usr/bin/shield", &["--version"]);
    assert!(o.status.success(), "shield --version: {}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("shield {upstream}")
    );
    // The XDP program is embedded in the packaged binary (stripping kept it): an ELF
    // object for the BPF machine (e_machine 247) inside it.
    let bin = std::fs::read("/usr/bin/shield").expect("read /usr/bin/shield");
    let embedded = (1..bin.len().saturating_sub(20)).any(|i| {
        bin[i..].starts_with(b"\x7fELF") && u16::from_le_bytes([bin[i + 18], bin[i + 19]]) == 247
    });
    assert!(embedded, "no BPF ELF object embedded in /usr/bin/shield");

    // The default policy is a conffile, valid, and only counts.
    let conffiles = text(&run("dpkg-query", &["-W", "-f=${Conffiles}", "shield"]));
    assert!(
        conffiles.contains("/etc/shield/policy.toml"),
        "conffiles: {conffiles}"
    );
    // Root's alone: a `[fleet]` Redis URL in it may hold a password.
    let mode = std::fs::metadata("/etc/shield/policy.toml")
        .expect("stat /etc/shield/policy.toml")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o600, "/etc/shield/policy.toml mode {mode:o}");
    let o = run("/usr/bin/shield", &["check", "/etc/shield/policy.toml"]);
    assert!(o.status.success(), "shield check: {}", text(&o));
    assert!(text(&o).contains("monitor"), "{}", text(&o));

    // The unit, as installed.
    let files: Vec<String> = text(&run("dpkg", &["-L", "shield"]))
        .lines()
        .map(str::to_string)
        .collect();
    let unit = files
        .iter()
        .find(|f| f.ends_with("/systemd/system/shield.service"))
        .unwrap_or_else(|| panic!("no shield.service in {files:#?}"))
        .clone();
    let unit_text = std::fs::read_to_string(&unit).expect("read the unit");
    assert!(
        unit_text.contains("ExecStart=/usr/bin/shield run") && !unit_text.contains("/usr/local"),
        "the packaged unit runs /usr/bin/shield:\n{unit_text}"
    );
    let o = run("systemd-analyze", &["verify", &unit]);
    let problems: Vec<String> = text(&o)
        .lines()
        .filter(|l| l.contains("shield.service"))
        .map(str::to_string)
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify: {problems:#?}");

    // A man page per command; `man shield-run` renders.
    let o = Command::new("man")
        .arg("shield-run")
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man (Debian package man-db)");
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "man shield-run: {}", text(&o));
    for want in ["shield-run", "--iface", "--policy", "--metrics", "SYNOPSIS"] {
        assert!(page.contains(want), "man shield-run lacks {want}:\n{page}");
    }
    for cmd in [
        "shield",
        "shield-run",
        "shield-reload",
        "shield-detach",
        "shield-check",
        "shield-stats",
        "shield-ban",
        "shield-unban",
        "shield-bans",
    ] {
        let page = format!("/usr/share/man/man1/{cmd}.1.gz");
        assert!(files.contains(&page), "no {page}");
    }
    assert!(
        !files.iter().any(|f| f.contains("generate-assets")),
        "the hidden packaging command has no man page"
    );

    // Shell completions; bash loads its file and completes `shield`.
    for f in [
        "/usr/share/bash-completion/completions/shield",
        "/usr/share/zsh/vendor-completions/_shield",
        "/usr/share/fish/vendor_completions.d/shield.fish",
    ] {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{f} missing or empty");
    }
    let o = run(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/shield && complete -p shield",
        ],
    );
    assert!(o.status.success(), "bash completion: {}", text(&o));

    // The installed docs link to what is installed: every link that is not a web link or
    // an anchor resolves to a file on this system (the source tree's docs/, deploy/ and
    // shield-flask/ paths are rewritten, files not installed named as text).
    for doc in [
        "/usr/share/doc/shield/README.md",
        "/usr/share/doc/shield/operations.md",
    ] {
        let text = std::fs::read_to_string(doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
        let mut links = 0;
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or_default();
            if target.contains("://") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            let path = Path::new("/usr/share/doc/shield").join(file);
            assert!(
                path.is_file(),
                "{doc}: link to {target}: {} is not installed",
                path.display()
            );
            links += 1;
        }
        assert!(links > 0, "{doc} links to other installed files");
    }

    // The Python package for Flask, when this checkout has one.
    let flask = root().join("shield-flask/pyproject.toml").is_file();
    let packaged = contents.contains("usr/share/shield/shield-flask/pyproject.toml");
    assert_eq!(
        packaged, flask,
        "shield-flask/ in the checkout: {flask}, in the package: {packaged} (rebuild it: cargo xtask package)"
    );

    // Remove: only the configuration stays.
    let o = run("dpkg", &["-r", "shield"]);
    assert!(o.status.success(), "dpkg -r: {}", text(&o));
    assert!(
        status().contains("config-files"),
        "after dpkg -r: {}",
        status()
    );
    let left: Vec<&String> = files
        .iter()
        .filter(|f| !f.starts_with("/etc/"))
        .filter(|f| {
            let p = Path::new(f.as_str());
            p.symlink_metadata().is_ok_and(|m| !m.is_dir())
        })
        .collect();
    assert!(left.is_empty(), "left after dpkg -r: {left:#?}");
    assert!(
        Path::new("/etc/shield/policy.toml").is_file(),
        "dpkg -r keeps the configuration"
    );

    // Purge (also the guard's job): nothing at all.
    let o = run("dpkg", &["--purge", "shield"]);
    assert!(o.status.success(), "dpkg --purge: {}", text(&o));
    assert!(
        !Path::new("/etc/shield").exists(),
        "/etc/shield left after purge"
    );
    assert!(
        !status().contains("ok installed") && !status().contains("config-files"),
        "after purge: {}",
        status()
    );
}
