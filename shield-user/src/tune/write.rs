//! `shield tune --write FILE`: the file is replaced whole or not at all.

use std::{
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Writes `text` to `path` atomically: a temporary file beside the file (beside the file a
/// symbolic link names, so the link stays a link), synced, given the old file's mode and
/// owner, then renamed over it. A failure (a full disk) leaves the old file as it was and
/// no temporary file behind. A new file gets mode 0666 less the umask, as any write does.
pub fn replace_file(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let target = real_target(path)?;
    let old = std::fs::metadata(&target).ok();
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.shield-tune.{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        if let Some(m) = &old {
            f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
        }
        f.write_all(text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `path` with its symbolic links followed (the last one's target may not exist yet).
fn real_target(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    // As the kernel does: 40 links at most.
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(next) => {
                p = match p.parent() {
                    Some(dir) => dir.join(next),
                    None => next,
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ELOOP))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("shield-tune-write-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("shield-tune"))
            .collect()
    }

    /// A new inode renamed over the old file (a reader never sees it half-written), with
    /// the old file's mode and owner.
    #[test]
    fn an_existing_file_is_replaced_whole_with_its_mode_and_owner() {
        let d = scratch("existing");
        let f = d.join("policy.toml");
        std::fs::write(&f, "old").expect("old");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::os::unix::fs::chown(&f, Some(65534), Some(65534)).ok();
        let before = std::fs::metadata(&f).expect("meta");
        replace_file(&f, b"new text").expect("write");
        let after = std::fs::metadata(&f).expect("meta");
        assert_eq!(std::fs::read_to_string(&f).expect("read"), "new text");
        assert_ne!(
            before.ino(),
            after.ino(),
            "renamed over, not written in place"
        );
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A symbolic link stays a link: its target is replaced.
    #[test]
    fn a_link_stays_a_link_and_its_target_is_replaced() {
        let d = scratch("link");
        std::fs::create_dir(d.join("real")).expect("dir");
        let real = d.join("real").join("p.toml");
        std::fs::write(&real, "old").expect("old");
        let link = d.join("p.toml");
        std::os::unix::fs::symlink("real/p.toml", &link).expect("link");
        replace_file(&link, b"new").expect("write");
        assert!(std::fs::symlink_metadata(&link).expect("meta").is_symlink());
        assert_eq!(std::fs::read_to_string(&real).expect("read"), "new");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A write that fails leaves the old file as it was and nothing else: here the
    /// temporary file cannot be made (its directory is gone).
    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let d = scratch("failed");
        let f = d.join("p.toml");
        std::fs::write(&f, "old").expect("old");
        let err = replace_file(&d.join("missing").join("p.toml"), b"new");
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(&f).expect("read"), "old");
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
        let _ = std::fs::remove_dir_all(&d);
    }
}
