//! `--state-dir`: the active bans on disk (`bans.json`), written atomically (a temporary
//! file renamed over the old one), and read back at start when the pinned maps are gone
//! (a reboot).

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
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
    let path = dir.join(name);
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let err = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(())
}

/// Reads `DIR/bans.json`: no file is no bans; a damaged file is an error (kept for the
/// operator to look at).
pub fn read(dir: &Path) -> Result<Vec<SavedBan>, String> {
    let path = dir.join(BANS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Saved>(&bytes)
            .map(|s| s.bans)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
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
}
