//! The control socket server: a tokio `UnixListener`; each client is a task that reads
//! request lines (bounded, with a timeout), asks the owner, and writes the answer.

use std::{
    io,
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    sync::{Semaphore, mpsc, oneshot, watch},
    time::timeout,
};
use tracing::warn;

use super::owner::Msg;
use crate::control::{CLIENT_TIMEOUT, MAX_CLIENTS, MAX_LINE, encode, parse_request};

/// A bound control socket that serves nothing yet: the daemon binds it before it attaches
/// anything (a socket in use fails the start with nothing changed) and serves it once the
/// maps are ready. Dropping it removes the socket file, if the path still holds the
/// socket this daemon made.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(super) path: PathBuf,
    pub(super) listener: Option<UnixListener>,
    /// (device, inode) of the socket file bound.
    pub(super) made: Option<(u64, u64)>,
}

/// (device, inode) of what is at `path` itself (a link is not followed).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for Bound {
    fn drop(&mut self) {
        // Never what someone put at the path since (another daemon's socket, a file).
        if self.made.is_some() && file_id(&self.path) == self.made {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `path` (its directory is created 0700; a stale socket is replaced; a live one
/// means another daemon: error).
pub(crate) fn bind(path: &Path) -> io::Result<Bound> {
    bind_socket(path, 0o600, None, "give --socket another path")
}

/// `bind` for any of the daemon's sockets: `mode` for the socket file, `gid` its group
/// (owner root when the daemon is root, else its own user), `elsewhere` says how to pick
/// another path (the app socket's is in the policy).
pub(crate) fn bind_socket(
    path: &Path,
    mode: u32,
    gid: Option<libc::gid_t>,
    elsewhere: &str,
) -> io::Result<Bound> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // Replace only a stale socket: a socket file nobody listens on. Anything else at the
    // path (a file, a live daemon, another program's datagram socket) is refused untouched.
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it ({elsewhere})",
                    path.display()
                ),
            ));
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another shield daemon is listening on {} (stop it, or {elsewhere})",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{} is a socket that is not a stale shield socket ({e}); refusing to replace it ({elsewhere})",
                        path.display()
                    ),
                ));
            }
        },
    }
    // Bound under a private name, given its mode and group, then moved into place: under
    // the path the socket never has the mode the umask would give it, nor root's group (a
    // local user could connect between a bind and a chmod; the app's group could not
    // between a move and a chown). The move never replaces what appeared there since.
    let tmp = private_name(path)?;
    remove_leftovers(path);
    if std::fs::symlink_metadata(&tmp)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        std::fs::remove_file(&tmp)?;
    }
    let listener = UnixListener::bind(&tmp).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "binding {} (to move it to {}): {e}",
                tmp.display(),
                path.display()
            ),
        )
    })?;
    let mut made = None;
    let placed = set_mode_nofollow(&tmp, mode)
        .and_then(|()| match gid {
            // Not root (app-only mode as a user): keep our own uid, set the group if we may.
            // SAFETY: geteuid has no preconditions.
            Some(g) => std::os::unix::fs::lchown(
                &tmp,
                (unsafe { libc::geteuid() } == 0).then_some(0),
                Some(g),
            )
            .map_err(|e| io::Error::new(e.kind(), format!("giving it group id {g}: {e}"))),
            None => Ok(()),
        })
        .and_then(|()| {
            // What is moved keeps its inode: what `Drop` removes is this, never a file put
            // at the path after the move.
            made = file_id(&tmp);
            rename_noreplace(&tmp, path)
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(if e.kind() == io::ErrorKind::AlreadyExists {
            io::Error::new(
                e.kind(),
                format!(
                    "{} appeared while shield was binding it; refusing to replace it ({elsewhere})",
                    path.display()
                ),
            )
        } else {
            e
        });
    }
    Ok(Bound {
        path: path.to_path_buf(),
        listener: Some(listener),
        made,
    })
}

/// The longest path a Unix socket address holds (`sun_path`, 108 bytes with its NUL).
const SUN_PATH_MAX: usize = 107;

/// The private name a socket is bound under beside `path`: `.NAME.PID.new`, or `.PID` when
/// that would not fit in a socket address (a path of up to 107 bytes is accepted).
fn private_name(path: &Path) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let name = path.file_name().unwrap_or_default();
    let pid = std::process::id();
    let mut long = std::ffi::OsString::from(".");
    long.push(name);
    long.push(format!(".{pid}.new"));
    let fits = |n: &std::ffi::OsStr| {
        path.as_os_str().len() - name.len() + n.len() <= SUN_PATH_MAX
            && !path.with_file_name(n).as_os_str().as_bytes().contains(&0)
    };
    if fits(&long) {
        return Ok(path.with_file_name(long));
    }
    let short = std::ffi::OsString::from(format!(".{pid}"));
    if fits(&short) {
        return Ok(path.with_file_name(short));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{}: too long to bind beside it under a private name (at most {SUN_PATH_MAX} bytes with `.{pid}` for its last part); give a shorter path or a longer name",
            path.display()
        ),
    ))
}

/// Removes the private names (`.NAME.PID.new`) that daemons killed between a bind and its
/// move left beside `path`: socket files only, of a process that is gone, that nobody
/// listens on. (A short `.PID` name, used only for paths near the socket address's limit,
/// cannot be told from another program's file: left alone.)
fn remove_leftovers(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|f| f.strip_suffix(".new"))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        let p = e.path();
        let socket = std::fs::symlink_metadata(&p)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
        if gone
            && socket
            && UnixStream::connect(&p).is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
        {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// chmod that fails on a symbolic link instead of changing what it points to (someone
/// able to write in the socket's directory could put one at the private name).
fn set_mode_nofollow(p: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let r = unsafe {
        libc::fchmodat(
            libc::AT_FDCWD,
            c.as_ptr(),
            mode as libc::mode_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated strings for the duration of the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The bound socket's listener on the tokio reactor (`None`: already taken, or it cannot
/// be registered, which is logged as `what`'s).
pub(super) fn tokio_listener(bound: &mut Bound, what: &str) -> Option<tokio::net::UnixListener> {
    let std_listener = bound.listener.take()?;
    std_listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(std_listener))
        .map_err(|e| warn!("{what} {}: {e}", bound.path.display()))
        .ok()
}

/// Accepts clients until `stop`; at most `MAX_CLIENTS` at once (one more is told so and
/// closed).
pub(super) async fn serve(mut bound: Bound, tx: mpsc::Sender<Msg>, stop: watch::Receiver<bool>) {
    let Some(listener) = tokio_listener(&mut bound, "control socket") else {
        return;
    };
    let busy = encode(&Err("too many clients".into()));
    serve_clients(
        &listener,
        "control socket",
        MAX_CLIENTS,
        busy,
        CLIENT_TIMEOUT,
        stop,
        |conn| client(conn, tx.clone()),
    )
    .await;
    drop(bound);
}

/// Serves the clients of `listener` (`what`) until `stop`, each in a task of its own: at
/// most `max` at once; one more is sent `busy` (given `deadline` to take it) and closed. An
/// accept error (out of fds and the like) is logged and backs off 200 ms instead of
/// spinning.
pub(super) async fn serve_clients<F, Fut>(
    listener: &tokio::net::UnixListener,
    what: &str,
    max: usize,
    busy: String,
    deadline: std::time::Duration,
    mut stop: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(tokio::net::UnixStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let conn = tokio::select! {
            _ = stop.changed() => break,
            conn = listener.accept() => conn,
        };
        let mut conn = match conn {
            Ok((c, _)) => c,
            Err(e) => {
                warn!("{what}: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let served = serve(conn);
                tokio::spawn(async move {
                    served.await;
                    drop(permit);
                });
            }
            Err(_) => {
                let busy = busy.clone();
                tokio::spawn(async move {
                    let _ = timeout(deadline, conn.write_all(busy.as_bytes())).await;
                });
            }
        }
    }
}

async fn client(conn: tokio::net::UnixStream, tx: mpsc::Sender<Msg>) {
    let (read, mut write) = conn.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        // At most MAX_LINE + 1 bytes looking for the newline; silence ends the client.
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let n = match timeout(CLIENT_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
            Ok(Ok(n)) => n,
            _ => return,
        };
        if n == 0 {
            return;
        }
        if line.last() != Some(&b'\n') {
            let why = if line.len() > MAX_LINE {
                format!("request longer than {MAX_LINE} bytes")
            } else {
                "incomplete request (no newline before end of stream)".to_string()
            };
            let _ = timeout(
                CLIENT_TIMEOUT,
                write.write_all(encode(&Err(why)).as_bytes()),
            )
            .await;
            return;
        }
        line.pop();
        let result = match parse_request(&line) {
            Err(e) => Err(e),
            Ok(req) => {
                let (answer, reply) = oneshot::channel();
                if tx.send(Msg::Request(req, answer)).await.is_err() {
                    Err("the daemon is shutting down".to_string())
                } else {
                    reply
                        .await
                        .unwrap_or_else(|_| Err("the daemon is shutting down".to_string()))
                }
            }
        };
        let sent = timeout(CLIENT_TIMEOUT, write.write_all(encode(&result).as_bytes())).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shield-bind-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn private_names_a_killed_daemon_left_are_removed_and_nothing_else() {
        let d = dir("leftovers");
        let path = d.join("shield.sock");
        // A process that is gone, and one that is not (our parent; our own private name
        // is bind_socket's to replace).
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        child.wait().expect("wait");
        let (dead, live) = (child.id(), std::os::unix::process::parent_id());
        let sock = |n: String| {
            let l = UnixListener::bind(d.join(&n)).expect("bind");
            drop(l);
            n
        };
        let left = sock(format!(".shield.sock.{dead}.new"));
        let live_one = sock(format!(".shield.sock.{live}.new"));
        let other = sock(format!(".other.sock.{dead}.new"));
        let not_socket = format!(".shield.sock.{}.new", dead + 1);
        std::fs::write(d.join(&not_socket), b"x").expect("file");
        let b = bind_socket(&path, 0o600, None, "--socket").expect("bind");
        let seen = names(&d);
        assert!(
            !seen.contains(&left),
            "the dead daemon's leftover is removed: {seen:?}"
        );
        for kept in [&live_one, &other, &not_socket] {
            assert!(seen.contains(kept), "{kept} stays: {seen:?}");
        }
        assert!(seen.contains(&"shield.sock".to_string()));
        drop(b);
        let _ = std::fs::remove_dir_all(&d);
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Binds with `bind` again and again (each socket held 100 µs) while a thread watches
    /// `path`: what `odd` says of what it saw there (at least 300 binds, and the socket
    /// seen at its path at least 50 times).
    fn watch_binds(
        path: &Path,
        odd: impl Fn(&std::fs::Metadata) -> Option<String> + Send + 'static,
        mut bind: impl FnMut() -> Bound,
    ) -> Vec<String> {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, AtomicU64, Ordering},
        };
        let done = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let watcher = {
            let (path, done, seen) = (path.to_path_buf(), done.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut other = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    if let Ok(m) = std::fs::symlink_metadata(&path) {
                        seen.fetch_add(1, Ordering::Relaxed);
                        if let Some(o) = odd(&m).filter(|o| !other.contains(o)) {
                            other.push(o);
                        }
                    }
                }
                other
            })
        };
        let mut binds = 0;
        while binds < 300 || seen.load(Ordering::Relaxed) < 50 {
            assert!(binds < 50_000, "the watcher never saw the socket");
            let b = bind();
            std::thread::sleep(std::time::Duration::from_micros(100));
            drop(b);
            binds += 1;
        }
        done.store(true, Ordering::Relaxed);
        watcher.join().expect("watcher")
    }

    #[test]
    fn a_socket_appears_at_its_path_with_its_mode_and_nothing_else_is_left() {
        let d = dir("mode");
        let path = d.join("control.sock");
        // A socket left under the private name by a daemon killed while binding.
        let stale = d.join(format!(".control.sock.{}.new", std::process::id()));
        drop(UnixListener::bind(&stale).expect("stale"));
        let bound = bind_socket(&path, 0o600, None, "elsewhere").expect("bind");
        let mode = std::fs::symlink_metadata(&path)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        assert_eq!(names(&d), ["control.sock"], "no private name left behind");
        UnixStream::connect(&path).expect("the socket listens at its path");
        // A second daemon is refused, the first one's socket untouched.
        let e = bind_socket(&path, 0o600, None, "elsewhere").expect_err("second daemon");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert_eq!(names(&d), ["control.sock"]);
        drop(bound);
        assert!(
            names(&d).is_empty(),
            "the socket is removed with its daemon"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_socket_never_shows_under_its_path_with_another_mode() {
        // Whoever watches the path (a local user waiting to connect) only ever sees the
        // final mode: the umask's (0755 under root's usual 022) never shows there.
        let d = dir("window");
        let path = d.join("app.sock");
        let other = watch_binds(
            &path,
            |m| {
                Some(m.permissions().mode() & 0o7777)
                    .filter(|&m| m != 0o660)
                    .map(|m| format!("{m:o}"))
            },
            || bind_socket(&path, 0o660, None, "elsewhere").expect("bind"),
        );
        assert!(other.is_empty(), "modes seen at the path: {other:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_socket_path_of_107_bytes_binds() {
        // The policy takes an app socket path of up to 107 bytes (a Unix socket address's
        // size): the private name it is bound under must fit too.
        let d = dir("long");
        let pad = 107 - d.as_os_str().len() - "/".len() - "app.sock".len();
        let sub = d.join("d".repeat(pad - 1));
        std::fs::create_dir_all(&sub).expect("mkdir");
        let path = sub.join("app.sock");
        assert_eq!(path.as_os_str().len(), 107);
        let bound = bind_socket(&path, 0o660, None, "elsewhere").expect("a 107-byte path binds");
        UnixStream::connect(&path).expect("the socket listens at its path");
        assert_eq!(names(&sub), ["app.sock"], "no private name left behind");
        drop(bound);
        // A name too short for a private one beside it, in a path of 107 bytes: said
        // plainly, nothing left behind.
        let sub2 = d.join("e".repeat(pad + "app.sock".len() - 2));
        std::fs::create_dir_all(&sub2).expect("mkdir");
        let path = sub2.join("a");
        assert_eq!(path.as_os_str().len(), 107);
        let e = bind_socket(&path, 0o600, None, "elsewhere").expect_err("no room");
        assert!(
            e.to_string().contains(&*path.to_string_lossy()) && e.to_string().contains("too long"),
            "{e}"
        );
        assert!(names(&sub2).is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_app_socket_never_shows_under_its_path_without_its_group() {
        // `[app] group`: the web server's group must find the socket connectable as soon
        // as it is at its path (not root's group until a chown after the move).
        let d = dir("group");
        let path = d.join("app.sock");
        let cfg = crate::policy::AppConfig {
            socket: path.clone(),
            group: Some("nogroup".into()),
            trusted_proxies: Vec::new(),
            on_error: crate::policy::OnError::Open,
        };
        let gid = super::super::app::group_id("nogroup").expect("nogroup");
        let other = watch_binds(
            &path,
            move |m| {
                use std::os::unix::fs::MetadataExt as _;
                (m.gid() != gid).then(|| m.gid().to_string())
            },
            || super::super::app::bind(&cfg).expect("bind"),
        );
        assert!(other.is_empty(), "groups seen at the path: {other:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_link_at_the_private_name_is_never_followed() {
        // Someone who can write in the socket's directory puts a link at the private name:
        // the bind fails, saying where, and what the link points to keeps its mode and
        // group (a chmod or chown through it would hand a file to the app's group).
        use std::os::unix::fs::MetadataExt as _;
        let d = dir("link");
        let target = d.join("target");
        std::fs::write(&target, "secret").expect("write");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let path = d.join("app.sock");
        let private = private_name(&path).expect("private name");
        std::os::unix::fs::symlink(&target, &private).expect("symlink");
        let e = bind_socket(&path, 0o666, Some(65534), "elsewhere").expect_err("a link there");
        assert!(e.to_string().contains(&*private.to_string_lossy()), "{e}");
        let m = std::fs::metadata(&target).expect("stat");
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert_eq!(m.gid(), 0);
        assert!(!path.exists());
        // And the chmod itself refuses a link.
        assert!(set_mode_nofollow(&private, 0o666).is_err());
        assert_eq!(
            std::fs::metadata(&target)
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777,
            0o600
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_move_into_place_never_replaces_what_is_there() {
        let d = dir("noreplace");
        let (from, to) = (d.join("a"), d.join("b"));
        std::fs::write(&from, "new").expect("write");
        std::fs::write(&to, "someone else's").expect("write");
        let e = rename_noreplace(&from, &to).expect_err("exists");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            std::fs::read_to_string(&to).expect("read"),
            "someone else's"
        );
        std::fs::remove_file(&to).expect("rm");
        rename_noreplace(&from, &to).expect("free path");
        assert_eq!(std::fs::read_to_string(&to).expect("read"), "new");
        let _ = std::fs::remove_dir_all(&d);
    }
}
