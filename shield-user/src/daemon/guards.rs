//! What a failed `shield run` start takes back on its way out: the bpffs it mounted and the
//! directories it created for it, the audit log file it created; and how two spellings of
//! a path that may not exist yet are compared; the warning for a bpffs mounted in a private
//! mount namespace.

use std::path::PathBuf;

use tracing::warn;

use crate::loader;

/// Unmounts a bpffs this start mounted, and removes the directories it created for it
/// (`--bpffs` a new directory), unless the start succeeded (`path` taken).
#[derive(Default)]
pub(super) struct MountGuard {
    /// `--bpffs`, until the start succeeded.
    pub path: Option<PathBuf>,
    /// Whether this start mounted bpffs there.
    pub mounted: bool,
    /// The topmost directory of `path` that did not exist before this start.
    pub created: Option<PathBuf>,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else { return };
        if self.mounted
            && let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if let Some(top) = &self.created {
            loader::remove_created_dirs(&path, top);
        }
    }
}

/// `path` with its directory resolved (`..`, symbolic links, relative to the working
/// directory) and its file name kept: how two spellings of a path that may not exist yet
/// are compared. `None` when the directory cannot be resolved.
pub(super) fn resolved(path: &std::path::Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(name))
}

/// Removes a file this start created (the audit log) unless the start succeeded (taken),
/// and only while it is empty: a failed start leaves no file of its own.
pub(super) struct RemoveEmptyOnDrop(pub Option<PathBuf>);

impl Drop for RemoveEmptyOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && path
                .symlink_metadata()
                .is_ok_and(|m| m.is_file() && m.len() == 0)
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Pins live in the bpffs of the daemon's mount namespace. When that namespace is private
/// (compared with PID 1's: systemd `PrivateMounts=`/`ProtectSystem=`, `ip netns exec`, a container) and the daemon
/// had to mount bpffs itself, the mount (and with it the pins and the program) dies with the
/// daemon: `kill -9` then detaches, and `shield stats` from another shell finds nothing.
pub(super) fn warn_if_private_mounts(bpffs: &std::path::Path) {
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
    let init = std::fs::read_link("/proc/1/ns/mnt").ok();
    // PID 1's namespace can be unreadable (a container, `ip netns exec` there): the mount
    // is then just as likely private, so say so rather than nothing.
    let private = match (&ours, &init) {
        (Some(o), Some(i)) => (o != i).then_some("runs in a private mount namespace"),
        (Some(_), None) => {
            Some("cannot read PID 1's mount namespace, so it may run in a private one")
        }
        _ => None,
    };
    if let Some(why) = private {
        warn!(
            "shield {why}: the bpffs at {} is only visible here, so after a crash or `kill -9` its pins (and the attached program) may go away with it, and `shield stats`/`shield bans` from another shell will not find them; mount bpffs on the host (e.g. `mount -t bpf bpf {}` outside the namespace, or `BindPaths=` it in the unit) and pass `--bpffs`",
            bpffs.display(),
            bpffs.display()
        );
    }
}
