//! `--state-dir`: the active bans on disk (`bans.json`), written atomically (a temporary
//! file renamed over the old one), and read back at start when the pinned maps are gone
//! (a reboot).

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use serde::{Deserialize, Serialize};

use crate::policy::BanScope;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/shield";
pub const BANS_FILE: &str = "bans.json";

/// One saved ban.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedBan {
    pub iface: String,
    pub source: String,
    pub scope: BanScope,
    #[serde(default)]
    pub rule: String,
    pub origin: String,
    #[serde(default)]
    pub cuts: String,
    pub level: u8,
    pub duration_secs: f64,
    /// Wall-clock expiry, unix milliseconds.
    pub expires_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_host: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    pub version: u32,
    pub bans: Vec<SavedBan>,
}

/// Set when another daemon holds `--state-dir` (two started at the same moment): this one
/// then neither writes nor reads its files.
static IN_USE_ELSEWHERE: AtomicBool = AtomicBool::new(false);

/// Locks `--state-dir` for this daemon's life: an exclusive `flock` on the directory itself
/// (no file of ours in it; the kernel releases it on exit, even on `kill -9`). Two daemons
/// sharing one directory would write the same `bans.json` (and `app-quotas.json`), each
/// over the other's, and a reboot would bring back only the last writer's bans. `Ok(None)`:
/// the directory cannot be opened (it does not exist yet, or it is not ours: `ensure_dir`
/// says so, and nothing is kept). Taken once the start succeeded; before that, `probe_dir`.
pub fn lock_dir(dir: &Path) -> Result<Option<std::fs::File>, String> {
    let Ok(file) = std::fs::File::open(dir) else {
        return Ok(None);
    };
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(format!(
                "another shield daemon uses --state-dir {} (each daemon writes its own bans.json there, over the other's); give each daemon a --state-dir of its own",
                dir.display()
            ));
        }
        return Err(format!("--state-dir {}: locking it: {err}", dir.display()));
    }
    Ok(Some(file))
}

/// Checks, before the start changes anything, that no running daemon holds `--state-dir`:
/// the lock is taken and let go at once, so starts that fail never hold it (a start holds
/// it only once it succeeded).
pub fn probe_dir(dir: &Path) -> Result<(), String> {
    lock_dir(dir).map(drop)
}

/// Another daemon holds `--state-dir`: from now on this process neither writes nor reads
/// its files (each attempt fails with this reason).
pub fn in_use_elsewhere() {
    IN_USE_ELSEWHERE.store(true, Ordering::Relaxed);
}

fn refuse_if_in_use_elsewhere(dir: &Path) -> Result<(), String> {
    if IN_USE_ELSEWHERE.load(Ordering::Relaxed) {
        return Err(format!(
            "--state-dir {} belongs to another shield daemon: not used",
            dir.display()
        ));
    }
    Ok(())
}

/// Creates the directory (0700) if it is missing.
pub fn ensure_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("--state-dir {}: {e}", dir.display()))?;
    if !dir.is_dir() {
        return Err(format!("--state-dir {} is not a directory", dir.display()));
    }
    check_dir(dir)
}

/// The directory must be ours alone: anyone else who can write in it can plant the file
/// read at start (bans of their choosing) or a link where we write.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    refuse_if_in_use_elsewhere(dir)?;
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(dir).map_err(|e| format!("--state-dir {}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.mode() & 0o022 != 0 || m.uid() != me {
        return Err(format!(
            "--state-dir {} is writable by others than this user (mode {:o}, owner uid {}); refusing to use it (chmod 0700 it, owned by the user shield runs as)",
            dir.display(),
            m.mode() & 0o7777,
            m.uid()
        ));
    }
    Ok(())
}

/// Writes `bans` to `DIR/bans.json` atomically (0600).
pub fn write(dir: &Path, bans: &[SavedBan]) -> Result<(), String> {
    let text = serde_json::to_vec(&Saved {
        version: 1,
        bans: bans.to_vec(),
    })
    .map_err(|e| e.to_string())?;
    write_file(dir, BANS_FILE, &text)
}

/// Writes `DIR/NAME` atomically (0600): a temporary file, synced, renamed over the old one.
pub fn write_file(dir: &Path, name: &str, text: &[u8]) -> Result<(), String> {
    check_dir(dir)?;
    let path = dir.join(name);
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let err = |e: std::io::Error| format!("writing {}: {e}", path.display());
    // A new file, never one found there (a symbolic link would send the write elsewhere).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(())
}

/// The name a damaged `bans.json` is kept under.
pub const DAMAGED_FILE: &str = "bans.json.damaged";

/// Reads `DIR/bans.json`: no file is no bans; a damaged file is an error, and the file is
/// moved to `DIR/bans.json.damaged` for the operator to look at (the next write would
/// otherwise replace it, and the bans it held with it).
pub fn read(dir: &Path) -> Result<Vec<SavedBan>, String> {
    check_dir(dir)?;
    let path = dir.join(BANS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Saved>(&bytes)
            .map(|s| s.bans)
            .map_err(|e| {
                let kept = dir.join(DAMAGED_FILE);
                match std::fs::rename(&path, &kept) {
                    Ok(()) => format!(
                        "{}: {e} (kept as {} for you to look at)",
                        path.display(),
                        kept.display()
                    ),
                    Err(re) => format!(
                        "{}: {e} (and it could not be kept as {}: {re})",
                        path.display(),
                        kept.display()
                    ),
                }
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn bans_round_trip_through_an_atomic_write() {
        let dir = std::env::temp_dir().join(format!("shield-state-test-{}", std::process::id()));
        ensure_dir(&dir).expect("dir");
        assert_eq!(read(&dir).expect("no file yet"), Vec::new());
        let b = SavedBan {
            iface: "eth0".into(),
            source: "203.0.113.7/32".into(),
            scope: BanScope::Rule,
            rule: "api".into(),
            origin: "automatic".into(),
            cuts: "new_connections".into(),
            level: 2,
            duration_secs: 40.0,
            expires_ms: 123,
            reason: None,
            origin_host: Some("api-2".into()),
        };
        write(&dir, std::slice::from_ref(&b)).expect("write");
        assert_eq!(read(&dir).expect("read"), vec![b]);
        assert!(!dir.join(format!(".{BANS_FILE}.tmp")).exists());
        std::fs::write(dir.join(BANS_FILE), "{").expect("damage");
        assert!(read(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn ban() -> SavedBan {
        SavedBan {
            iface: "eth0".into(),
            source: "203.0.113.9/32".into(),
            scope: BanScope::Host,
            rule: String::new(),
            origin: "manual".into(),
            cuts: "everything".into(),
            level: 1,
            duration_secs: 60.0,
            expires_ms: 456,
            reason: None,
            origin_host: None,
        }
    }

    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shield-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ensure_dir(&dir).expect("dir");
        dir
    }

    #[test]
    fn a_link_planted_at_the_temporary_file_is_not_followed() {
        let dir = test_dir("link");
        let victim = std::env::temp_dir().join(format!("shield-victim-{}", std::process::id()));
        std::fs::write(&victim, "precious").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join(format!(".{BANS_FILE}.tmp"))).expect("link");
        write(&dir, &[ban()]).expect("write");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious"
        );
        assert_eq!(read(&dir).expect("read"), vec![ban()]);
        let _ = std::fs::remove_file(&victim);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_state_dir_others_can_write_to_is_refused() {
        let dir = test_dir("open");
        write(&dir, &[ban()]).expect("write");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        for e in [
            ensure_dir(&dir).unwrap_err(),
            read(&dir).unwrap_err(),
            write(&dir, &[]).unwrap_err(),
        ] {
            assert!(e.contains("writable by others"), "{e}");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(
            read(&dir).expect("read"),
            vec![ban()],
            "nothing was changed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_file_is_kept_aside_not_overwritten() {
        let dir = test_dir("damaged");
        std::fs::write(dir.join(BANS_FILE), "{\"version\":1,\"bans\":[{trunc").expect("damage");
        let e = read(&dir).unwrap_err();
        assert!(e.contains(DAMAGED_FILE), "{e}");
        // The next save does not destroy what the damaged file held.
        write(&dir, &[ban()]).expect("write");
        assert_eq!(
            std::fs::read_to_string(dir.join(DAMAGED_FILE)).expect("kept"),
            "{\"version\":1,\"bans\":[{trunc"
        );
        assert_eq!(read(&dir).expect("read"), vec![ban()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_state_dir_is_one_daemons() {
        let dir = test_dir("lock");
        probe_dir(&dir).expect("free: the probe passes");
        probe_dir(&dir).expect("the probe let go of it");
        let held = lock_dir(&dir)
            .expect("lock")
            .expect("an existing directory");
        let e = probe_dir(&dir).expect_err("held: the probe fails");
        assert!(e.contains("another shield daemon uses --state-dir"), "{e}");
        assert!(lock_dir(&dir).is_err(), "held: a second lock fails");
        drop(held);
        probe_dir(&dir).expect("let go: free again");
        assert!(
            lock_dir(&dir.join("missing")).expect("no error").is_none(),
            "a missing directory is locked once created"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
