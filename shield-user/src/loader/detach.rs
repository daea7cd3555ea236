//! `shield detach`: removing shield's pins, and only those, from a pin directory on bpffs.
//! Every step works on directory fds opened without following links.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use shield_common::LINK_PIN;

use super::{
    LINK_TYPE_XDP, LoaderError, check_iface, force_detach, is_bpffs, link_facts_fd, obj_get,
    pin_dir, pin_name, shield_pin_names,
};

/// What `detach_pinned` found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Detached {
    /// Anything of shield's was pinned for the interface.
    pub found: bool,
    /// The pin directory.
    pub dir: PathBuf,
    /// Entries of the pin directory that are not shield's pins, left in place (the
    /// directory then stays too).
    pub left: Vec<String>,
}

/// Ends protection on an interface for good: force-detaches the pinned link (even while a
/// daemon holds it) and removes shield's own pins, by name. Never removes anything else:
/// `iface` must be a valid interface name, `bpffs` a bpffs mount, and the pin directory a
/// real directory (not a link) on that same mount; unknown entries are left in place.
pub fn detach_pinned(bpffs: &Path, iface: &str) -> Result<Detached, LoaderError> {
    use std::os::fd::AsFd as _;
    check_iface(iface)?;
    if !is_bpffs(bpffs) {
        return Err(LoaderError::NotBpffs {
            path: bpffs.to_path_buf(),
        });
    }
    let dir = pin_dir(bpffs, iface);
    let mut done = Detached {
        dir: dir.clone(),
        ..Detached::default()
    };
    let pin_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoaderError::PinDir { path, source }
    };
    let refuse = |path: &Path, why: &str| LoaderError::NotShields {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    // Every step below works on directory fds opened without following links, so a
    // directory swapped for a link between two steps is never followed.
    let root = std::fs::File::open(bpffs).map_err(pin_err(bpffs))?;
    let root_st = fd_stat(root.as_fd()).map_err(pin_err(bpffs))?;
    let mut parent: Option<std::os::fd::OwnedFd> = None;
    let dir_name = pin_name(iface);
    for (name, path) in [
        ("shield", bpffs.join("shield")),
        (dir_name.as_str(), dir.clone()),
    ] {
        let at = parent.as_ref().map_or(root.as_fd(), |p| p.as_fd());
        let fd = match open_dir_nofollow(at, name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(done),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return Err(refuse(&path, "not a directory (a link?)"));
            }
            Err(e) => return Err(pin_err(&path)(e)),
        };
        let st = fd_stat(fd.as_fd()).map_err(pin_err(&path))?;
        if st.st_dev != root_st.st_dev {
            return Err(refuse(&path, "not a directory of this bpffs mount"));
        }
        if st.st_uid != 0 {
            return Err(refuse(
                &path,
                &format!("owned by uid {}, not root, so not shield's", st.st_uid),
            ));
        }
        if name == dir_name {
            // The shield directory stays open for the final rmdir.
            let shield_dir = parent.take();
            return detach_in(fd, shield_dir, iface, &dir, &mut done).map(|()| done);
        }
        parent = Some(fd);
    }
    Ok(done)
}

/// `detach_pinned` once the pin directory (`dir_fd`) is verified.
fn detach_in(
    dir_fd: std::os::fd::OwnedFd,
    shield_dir: Option<std::os::fd::OwnedFd>,
    iface: &str,
    dir: &Path,
    done: &mut Detached,
) -> Result<(), LoaderError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let pin_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoaderError::PinDir { path, source }
    };
    let via_fd = PathBuf::from(format!("/proc/self/fd/{}", dir_fd.as_raw_fd()));
    let link_pin = dir.join(LINK_PIN);
    match stat_at_nofollow(dir_fd.as_fd(), LINK_PIN) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
            return Err(LoaderError::PinDir {
                path: link_pin,
                source: io::Error::other(
                    "a symbolic link, not shield's link pin; nothing was removed",
                ),
            });
        }
        Ok(_) => {
            let link = obj_get(&via_fd.join(LINK_PIN)).map_err(pin_err(&link_pin))?;
            match link_facts_fd(link.as_fd()) {
                Some(f) if f.kind == LINK_TYPE_XDP => {}
                _ => {
                    return Err(LoaderError::PinDir {
                        path: link_pin,
                        source: io::Error::other(
                            "not an XDP link, so not shield's; nothing was removed",
                        ),
                    });
                }
            }
            done.found = true;
            force_detach(link.as_fd()).map_err(pin_err(&link_pin))?;
        }
        Err(_) => {}
    }
    for name in shield_pin_names() {
        match stat_at_nofollow(dir_fd.as_fd(), &name) {
            Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
                done.found = true;
                unlink_at(dir_fd.as_fd(), &name, 0).map_err(pin_err(&dir.join(&name)))?;
            }
            _ => {}
        }
    }
    done.left = std::fs::read_dir(&via_fd)
        .map_err(pin_err(dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    done.left.sort();
    if done.left.is_empty()
        && let Some(shield_dir) = shield_dir
    {
        unlink_at(shield_dir.as_fd(), &pin_name(iface), libc::AT_REMOVEDIR)
            .map_err(pin_err(dir))?;
        done.found = true;
    }
    Ok(())
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// openat(O_DIRECTORY | O_NOFOLLOW): a directory entry that is a link fails (ELOOP).
fn open_dir_nofollow(
    at: std::os::fd::BorrowedFd<'_>,
    name: &str,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let c = c_name(name)?;
    // SAFETY: a valid dir fd and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            at.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd from openat.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn fd_stat(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<libc::stat> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn stat_at_nofollow(dir: std::os::fd::BorrowedFd<'_>, name: &str) -> io::Result<libc::stat> {
    use std::os::fd::AsRawFd as _;
    let c = c_name(name)?;
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid dir fd, NUL-terminated name and out-pointer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn unlink_at(dir: std::os::fd::BorrowedFd<'_>, name: &str, flags: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let c = c_name(name)?;
    // SAFETY: a valid dir fd and NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
