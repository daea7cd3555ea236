//! The app socket (`[app]`): a Unix socket, mode 0660 root:group, that the web app's
//! middleware (`shield_flask`) asks for a decision on each request. The app layer owns its
//! limiter state (`crate::app::Limiter`), apart from the owner: each client task decides
//! inline under a short lock (a few microseconds, no `.await` inside; no hop to another
//! task, whose wake-up costs milliseconds on a loaded host), and the app task applies new
//! policies and the once-a-second sweep. Decisions never wait on the owner (a reload in
//! progress does not slow them): the owner only sends a new policy after a reload, and
//! gets bans and audit lines back.

use std::{
    ffi::CString,
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    sync::{mpsc, oneshot, watch},
    time::timeout,
};
use tracing::{info, warn};

use super::{
    control::{Bound, bind_socket},
    owner::Msg,
};
use crate::{
    app::{
        AppCounters, AppPolicy, Effect, Limiter, SavedQuota,
        protocol::{self, AppRequest, Decision, Hello, MAX_APP_LINE, Reported, error_line},
    },
    policy::{AppConfig, Cidr},
};

/// Connections served at once (every worker thread of every app process holds one).
pub const MAX_APP_CLIENTS: usize = 1024;
/// A connection silent this long between requests is closed (the client reconnects).
const IDLE: Duration = Duration::from_secs(300);
/// Once a request line has started, the rest of it must come within this.
const LINE_DEADLINE: Duration = Duration::from_secs(5);
/// An unban for the app layer's L7 bans.
#[derive(Debug)]
pub(crate) struct AppUnban {
    pub cidr: Cidr,
    /// A fleet unban: only the L7 bans issued up to then (unix ms; see
    /// `owner::fleet_hooks::UNBAN_SKEW_MS`). `None` (`shield unban` here): every one.
    pub before_ms: Option<u64>,
    /// `shield unban`: told how many clients were freed (for its reply).
    pub freed: Option<oneshot::Sender<usize>>,
}

/// The limiter, shared by the client tasks and the app task (never by the owner).
type Shared = Arc<Mutex<Limiter>>;

/// The gid of group `name` (getgrnam_r: files, LDAP, whatever NSS is configured with).
pub(super) fn group_id(name: &str) -> io::Result<libc::gid_t> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name holds NUL"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `grp` and `buf` outlive the call; getgrnam_r writes only into them, and
    // `result` points at `grp` or is null.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no group named {name:?} on this host ([app] group)"),
            ));
        }
        Ok(grp.gr_gid)
    }
}

/// Binds the app socket before anything is attached: mode 0660, owner root, group
/// `[app] group` (root's when absent); the directory gets search permission for others
/// (`--x`: they reach the socket by name, list nothing) so the group can connect.
pub(crate) fn bind(app: &AppConfig) -> io::Result<Bound> {
    let gid = match &app.group {
        Some(g) => Some(group_id(g)?),
        None => None,
    };
    // Anyone who may write in the directory, without the sticky bit, may also unlink the
    // live socket and bind their own: the middleware would follow it (every decision, and
    // the headers it sends, named by that process's hello: Authorization, Cookie).
    if let Some(dir) = app.socket.parent()
        && let Ok(meta) = std::fs::metadata(dir)
        && meta.permissions().mode() & 0o1002 == 0o002
    {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: the app socket's directory is writable by every user and not sticky: anyone could replace the socket (set another [app] socket in the policy, e.g. the default {})",
                dir.display(),
                crate::policy::DEFAULT_APP_SOCKET
            ),
        ));
    }
    let bound = bind_socket(
        &app.socket,
        0o660,
        gid,
        "set another [app] socket in the policy",
    )?;
    if let Some(dir) = app.socket.parent()
        && let Ok(meta) = std::fs::metadata(dir)
    {
        let mode = meta.permissions().mode();
        if mode & 0o011 != 0o011 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011))?;
            info!(
                "{}: search permission added (mode {:o}) so that the app socket's group reaches it",
                dir.display(),
                (mode | 0o011) & 0o7777
            );
        }
    }
    Ok(bound)
}

/// The app task: accepts clients, applies new policies, ticks, saves quota use.
#[expect(
    clippy::too_many_arguments,
    reason = "the app task's channels and settings"
)]
pub(super) async fn serve(
    mut bound: Bound,
    policy: AppPolicy,
    mut policies: watch::Receiver<AppPolicy>,
    mut unbans: mpsc::UnboundedReceiver<AppUnban>,
    counters: Arc<AppCounters>,
    owner: mpsc::Sender<Msg>,
    mut stop: watch::Receiver<bool>,
    state_dir: PathBuf,
) {
    let Some(listener) = super::control::tokio_listener(&mut bound, "app socket") else {
        return;
    };
    let mut l = Limiter::new(policy, counters.clone());
    match read_quotas(&state_dir) {
        Ok(saved) if !saved.is_empty() => {
            info!(
                "{}: quota use of {} key(s) read back",
                state_dir.join(QUOTAS_FILE).display(),
                saved.len()
            );
            l.load_quotas(saved);
            l.tick(); // drops windows that ended while the daemon was stopped
        }
        Ok(_) => {}
        Err(e) => warn!("{e}: quotas start from zero"),
    }
    let limiter: Shared = Arc::new(Mutex::new(l));
    let accept = tokio::spawn(accept(
        listener,
        limiter.clone(),
        owner,
        counters.clone(),
        stop.clone(),
    ));
    let mut save_error = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            changed = policies.changed() => {
                if changed.is_err() {
                    break;
                }
                let p = policies.borrow_and_update().clone();
                lock(&limiter).set_policy(p);
            }
            _ = tick.tick() => {
                let saved = {
                    let mut l = lock(&limiter);
                    l.tick();
                    l.take_quotas_dirty().then(|| l.quotas_snapshot())
                };
                if let Some(saved) = saved {
                    save_and_log(&state_dir, saved, &mut save_error).await;
                }
            }
            Some(AppUnban { cidr, before_ms, freed }) = unbans.recv() => {
                let n = {
                    let mut l = lock(&limiter);
                    match before_ms {
                        None => l.unban(&cidr),
                        Some(ms) => {
                            // Wall-clock ms to the limiter's monotonic clock.
                            let ago = crate::fleet::now_ms().saturating_sub(ms);
                            let before = l.clock.now().saturating_sub(ago.saturating_mul(1_000_000));
                            l.unban_before(&cidr, before)
                        }
                    }
                };
                if n > 0 {
                    info!("unban {cidr}: {n} client(s) freed from the app layer's L7 bans");
                }
                if let Some(tx) = freed {
                    let _ = tx.send(n);
                }
            }
        }
    }
    accept.abort();
    let _ = accept.await;
    let saved = lock(&limiter).quotas_snapshot();
    save_and_log(&state_dir, saved, &mut save_error).await;
    drop(bound);
}

/// The quota state file in `--state-dir`.
pub(crate) const QUOTAS_FILE: &str = "app-quotas.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedQuotas {
    version: u32,
    quotas: Vec<SavedQuota>,
}

/// Reads `DIR/app-quotas.json` (none: nothing used). The directory must be ours alone, as
/// for `bans.json` (anyone who can write in it could plant the use of their choosing: a
/// victim's key used up for the day), and the file a regular one, never followed through
/// a link (`/dev/zero`, a FIFO: a daemon that never starts).
fn read_quotas(dir: &Path) -> Result<Vec<SavedQuota>, String> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let path = dir.join(QUOTAS_FILE);
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    if !dir.exists() {
        return Ok(Vec::new());
    }
    crate::fleet::state::check_dir(dir)?;
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(&e)),
    };
    let meta = f.metadata().map_err(|e| err(&e))?;
    if !meta.is_file() {
        return Err(err(&"not a regular file"));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| err(&e))?;
    serde_json::from_slice::<SavedQuotas>(&bytes)
        .map(|s| s.quotas)
        .map_err(|e| err(&e))
}

/// Writes the quota use atomically (fleet's state writer), off the runtime's threads.
async fn save_quotas(dir: &Path, quotas: Vec<SavedQuota>) -> Result<(), String> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let text =
            serde_json::to_vec(&SavedQuotas { version: 1, quotas }).map_err(|e| e.to_string())?;
        crate::fleet::state::write_file(&dir, QUOTAS_FILE, &text)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// What to log of a save: a failure once (not every second quota use changes, which would
/// flood the log while the state directory stays unusable), and the recovery.
fn save_news(last: &mut Option<String>, done: Result<(), String>) -> Option<(bool, String)> {
    match (done, last.take()) {
        (Ok(()), None) => None,
        (Ok(()), Some(_)) => Some((false, "quota use saved again".to_string())),
        (Err(e), Some(prev)) if prev == e => {
            *last = Some(prev);
            None
        }
        (Err(e), _) => {
            *last = Some(e.clone());
            Some((
                true,
                format!("saving quota use: {e} (said once until it changes)"),
            ))
        }
    }
}

async fn save_and_log(dir: &Path, quotas: Vec<SavedQuota>, last: &mut Option<String>) {
    match save_news(last, save_quotas(dir, quotas).await) {
        Some((true, line)) => warn!("{line}"),
        Some((false, line)) => info!("{line}"),
        None => {}
    }
}

/// The limiter; a client task that panicked while holding it left consistent state
/// (every update is a plain store), so a poisoned lock is taken as it is.
fn lock(l: &Shared) -> std::sync::MutexGuard<'_, Limiter> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands the owner an effect without ever blocking a decision: a full queue is waited on
/// in a task of its own.
fn send_owner(owner: &mpsc::Sender<Msg>, msg: Msg) {
    if let Err(mpsc::error::TrySendError::Full(msg)) = owner.try_send(msg) {
        let owner = owner.clone();
        tokio::spawn(async move {
            let _ = owner.send(msg).await;
        });
    }
}

/// One request's reply line (with its newline).
fn answer_line(
    limiter: &mut Limiter,
    req: &AppRequest,
    held: &mut Vec<u64>,
    effects: &mut Vec<Effect>,
) -> String {
    fn line<T: serde::Serialize>(v: &T) -> String {
        match serde_json::to_string(v) {
            Ok(s) => s + "\n",
            Err(e) => error_line(&format!("encoding the reply: {e}")),
        }
    }
    match req.op.as_str() {
        "hello" => line::<Hello>(&limiter.hello()),
        "decide" => {
            let Some(method) = req.method.as_deref() else {
                return error_line("decide needs `method`");
            };
            let Some(path) = req.path.as_deref() else {
                return error_line("decide needs `path`");
            };
            match limiter.decide_full(
                method,
                req.rule.as_deref(),
                path,
                req.peer.as_deref(),
                req.xff.as_deref(),
                req.headers.as_ref(),
                req.user.as_deref(),
                req.cost,
                req.charge == Some(true),
                effects,
            ) {
                Ok(d) => {
                    // The slot belongs to this connection: released with it.
                    held.extend(d.slot);
                    line::<Decision>(&d)
                }
                Err(e) => error_line(&e),
            }
        }
        "report" => {
            let Some(signal) = req.signal.as_deref() else {
                return error_line("report needs `signal` (the name of a [[signal]])");
            };
            match limiter.report(
                signal,
                req.peer.as_deref(),
                req.xff.as_deref(),
                req.headers.as_ref(),
                req.user.as_deref(),
                req.key.as_deref(),
                effects,
            ) {
                Ok(r) => line::<Reported>(&r),
                Err(e) => error_line(&e),
            }
        }
        "release" => {
            let Some(slot) = req.slot else {
                return error_line("release needs `slot` (from a decide reply)");
            };
            // Only a slot this connection holds: another worker's slots are not ours.
            let released = match held.iter().position(|s| *s == slot) {
                Some(i) => {
                    held.swap_remove(i);
                    limiter.release(slot)
                }
                None => false,
            };
            format!(
                "{}\n",
                serde_json::json!({"ok": true, "generation": limiter.generation(), "released": released})
            )
        }
        _ => error_line(protocol::ONLY_APP_OPS),
    }
}

async fn accept(
    listener: tokio::net::UnixListener,
    limiter: Shared,
    owner: mpsc::Sender<Msg>,
    counters: Arc<AppCounters>,
    stop: watch::Receiver<bool>,
) {
    let busy = error_line(&format!(
        "too many connections to the app socket (at most {MAX_APP_CLIENTS})"
    ));
    let serve = |conn| {
        let (limiter, owner, counters) = (limiter.clone(), owner.clone(), counters.clone());
        async move { client(conn, &limiter, &owner, &counters).await }
    };
    let (max, deadline) = (MAX_APP_CLIENTS, LINE_DEADLINE);
    super::control::serve_clients(&listener, "app socket", max, busy, deadline, stop, serve).await;
}

/// One connection; the in-flight slots it took and did not release are released when it
/// ends, however it ends (a worker killed mid-request closes its connections).
async fn client(
    conn: tokio::net::UnixStream,
    limiter: &Shared,
    owner: &mpsc::Sender<Msg>,
    counters: &AppCounters,
) {
    let mut held = Vec::new();
    serve_client(conn, limiter, owner, counters, &mut held).await;
    if !held.is_empty() {
        let mut l = lock(limiter);
        for slot in held {
            l.release(slot);
        }
    }
}

async fn serve_client(
    conn: tokio::net::UnixStream,
    limiter: &Shared,
    owner: &mpsc::Sender<Msg>,
    counters: &AppCounters,
    held: &mut Vec<u64>,
) {
    let mut effects = Vec::new();
    let (read, mut write) = conn.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        // Idle between requests, then a deadline for the line once it has begun.
        match timeout(IDLE, reader.fill_buf()).await {
            Ok(Ok([])) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
        let mut limited = (&mut reader).take(MAX_APP_LINE as u64 + 1);
        match timeout(LINE_DEADLINE, limited.read_until(b'\n', &mut line)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                // A line begun and not finished (a byte at a time): said, then closed.
                counters.count_error();
                let why = format!(
                    "request line not finished within {} s",
                    LINE_DEADLINE.as_secs()
                );
                let _ = timeout(LINE_DEADLINE, write.write_all(error_line(&why).as_bytes())).await;
                return;
            }
        }
        if line.last() != Some(&b'\n') {
            counters.count_error();
            let why = if line.len() > MAX_APP_LINE {
                format!("request longer than {MAX_APP_LINE} bytes")
            } else {
                "incomplete request (no newline before end of stream)".to_string()
            };
            let _ = timeout(LINE_DEADLINE, write.write_all(error_line(&why).as_bytes())).await;
            return;
        }
        line.pop();
        let reply = match protocol::parse(&line) {
            Err(e) => {
                counters.count_error();
                error_line(&e)
            }
            Ok(req) => {
                let line = answer_line(&mut lock(limiter), &req, held, &mut effects);
                for e in effects.drain(..) {
                    send_owner(owner, Msg::App(e));
                }
                line
            }
        };
        match timeout(LINE_DEADLINE, write.write_all(reply.as_bytes())).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Whether `[app]` changed in a way only a restart applies (socket, group, presence).
pub(crate) fn needs_restart(old: Option<&AppConfig>, new: Option<&AppConfig>) -> Option<String> {
    match (old, new) {
        (None, None) => None,
        (None, Some(_)) => Some("[app] was added".into()),
        (Some(_), None) => Some("[app] was removed".into()),
        (Some(o), Some(n)) if o.socket != n.socket => Some(format!(
            "[app] socket changed ({} -> {})",
            o.socket.display(),
            n.socket.display()
        )),
        (Some(o), Some(n)) if o.group != n.group => Some(format!(
            "[app] group changed ({} -> {})",
            o.group.as_deref().unwrap_or("root"),
            n.group.as_deref().unwrap_or("root")
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shield-appq-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        crate::fleet::state::ensure_dir(&d).expect("dir");
        d
    }

    const ONE: &str = r#"{"version":1,"quotas":[{"endpoint":"e","key":"header:victim","window_start":0,"used":99}]}"#;

    #[test]
    fn a_failing_save_is_logged_once_until_it_changes_or_recovers() {
        let mut last = None;
        let e = || Err::<(), _>("--state-dir x is writable by others".to_string());
        assert!(save_news(&mut last, e()).is_some_and(|(warn, _)| warn));
        for _ in 0..5 {
            assert_eq!(save_news(&mut last, e()), None, "said once");
        }
        let other = Err("disk full".to_string());
        assert!(
            save_news(&mut last, other).is_some_and(|(warn, l)| warn && l.contains("disk full"))
        );
        assert_eq!(
            save_news(&mut last, Ok(())),
            Some((false, "quota use saved again".to_string()))
        );
        assert_eq!(save_news(&mut last, Ok(())), None);
    }

    #[test]
    fn a_line_not_finished_in_time_gets_an_error_before_the_close() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let p = crate::policy::parse_str("t.toml", "[app]\nsocket = \"/tmp/x.sock\"\n")
                .expect("policy");
            let counters = Arc::new(AppCounters::default());
            let limiter: Shared = Arc::new(Mutex::new(Limiter::new(
                AppPolicy::new(&p, 1),
                counters.clone(),
            )));
            let (owner, _rx) = mpsc::channel(8);
            let (ours, theirs) = tokio::net::UnixStream::pair().expect("pair");
            let served =
                tokio::spawn(async move { client(ours, &limiter, &owner, &counters).await });
            let (mut read, mut write) = theirs.into_split();
            write.write_all(b"{\"op\":\"hel").await.expect("write");
            let mut got = String::new();
            timeout(LINE_DEADLINE * 2, read.read_to_string(&mut got))
                .await
                .expect("closed within the deadline")
                .expect("read");
            assert_eq!(
                got,
                error_line("request line not finished within 5 s"),
                "an error, then the close"
            );
            served.await.expect("client task");
        });
    }

    #[test]
    fn an_app_socket_in_a_directory_anyone_may_replace_it_in_is_refused() {
        // A directory every user may write in, without the sticky bit: anyone could unlink
        // the live socket and bind their own, then answer every decision (allow all, or
        // refuse all) and name the headers shield_flask sends (Authorization, Cookie).
        let d = std::env::temp_dir().join(format!("shield-appsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).expect("dir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let app = AppConfig {
            socket: d.join("app.sock"),
            group: None,
            trusted_proxies: Vec::new(),
            on_error: crate::policy::OnError::Open,
        };
        let Err(e) = bind(&app) else {
            panic!("bound in a directory anyone may write in");
        };
        assert!(e.to_string().contains("writable by every user"), "{e}");
        assert!(!app.socket.exists(), "nothing bound");
        // Sticky (as /tmp): others cannot remove our socket; bound.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let bound = bind(&app).expect("a sticky directory");
        drop(bound);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn quota_use_is_read_only_from_a_directory_of_ours_and_a_regular_file() {
        let d = dir("ok");
        assert_eq!(read_quotas(&d).expect("no file"), Vec::new());
        std::fs::write(d.join(QUOTAS_FILE), ONE).expect("write");
        assert_eq!(read_quotas(&d).expect("read").len(), 1);
        // A directory others may write in: their file is not believed.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = read_quotas(&d).expect_err("planted use");
        assert!(e.contains("writable by others"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        // A link (to /dev/zero: a read that never ends) is not followed.
        std::fs::remove_file(d.join(QUOTAS_FILE)).expect("rm");
        std::os::unix::fs::symlink("/dev/zero", d.join(QUOTAS_FILE)).expect("link");
        assert!(read_quotas(&d).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
