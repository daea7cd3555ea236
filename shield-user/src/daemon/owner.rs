//! The one task that owns the interfaces, their maps and the running policy. Everything
//! reaches it as a `Msg` (with a one-shot reply where there is an answer) or as a branch of
//! its `select!` loop: signals, the 1-second tick, the debounced file watch, the reload job.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use serde_json::json;
use shield_common::Event;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{debug, error, info, warn};

use super::{
    InstallDone, Instance, app, control, events, http,
    upkeep::{end_attacks, event_json, sweep, watch_attacks},
};
use crate::{
    audit::AuditLog,
    control::{PingIface, Pong, Reply, Request, RunningPolicy},
    metrics::{DaemonCounters, Sources},
    policy,
};

mod bans;
mod fleet_hooks;
mod reload;
mod state_dir;

/// What the start hands to the run loop.
pub(super) struct Start {
    pub instances: Vec<Instance>,
    pub policy: policy::Policy,
    pub path: PathBuf,
    pub generation: u32,
    pub ids: HashMap<String, u32>,
    pub audit: AuditLog,
    pub counters: Arc<DaemonCounters>,
    pub socket_path: PathBuf,
    pub bpffs: PathBuf,
    /// `--state-dir` (the active bans on disk).
    pub state_dir: PathBuf,
    /// Interfaces whose pinned maps were gone at start (a reboot): their saved bans are
    /// restored.
    pub restore: Vec<String>,
    /// The bound app socket when the policy has `[app]`.
    pub app: Option<control::Bound>,
    pub app_counters: Arc<crate::app::AppCounters>,
    /// SIGTERM and SIGINT, taken over at the top of `run`: one that came during the start
    /// stops the daemon as soon as it serves.
    pub stop: StopSignals,
}

/// SIGTERM and SIGINT as streams. Registered before anything changes (their default action,
/// which kills the process, is replaced for its whole life), so that a stop during the start
/// is kept for the run loop instead of killing a daemon that may have attached already.
pub(super) struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Registers both; needs the runtime's context (`Runtime::enter`).
    pub(super) fn register() -> Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    /// The name of a stop signal that came and was not taken yet, taking it.
    pub(super) async fn pending(&mut self) -> Option<&'static str> {
        tokio::select! {
            biased;
            Some(()) = self.term.recv() => Some("SIGTERM"),
            Some(()) = self.int.recv() => Some("SIGINT"),
            () = std::future::ready(()) => None,
        }
    }
}

pub(super) type Answer = oneshot::Sender<Result<Reply, String>>;

/// What the other tasks send the owner.
pub(super) enum Msg {
    /// A control socket request and where its answer goes.
    Request(Request, Answer),
    /// Events drained from interface `.0`'s ring buffer.
    Events(usize, Vec<Event>),
    /// The policy file changed (debounced by the owner).
    FileChanged(FileChange),
    /// From the fleet task.
    Fleet(super::fleet::Inbound),
    /// A ban or an audit line from the app task.
    App(crate::app::Effect),
}

/// What the policy file's watch saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileChange {
    /// Bytes written into it: a writer may still be at it (it closes the file when done).
    Writing,
    /// A writer closed it.
    Closed,
    /// Created, renamed into place, removed, its mode or owner changed.
    Other,
}

/// A reload waits this long after the last change of the policy file that ends a write
/// (editors write in several steps).
const SETTLE: Duration = Duration::from_millis(300);
/// And at most this long after the last write into it while a writer still has it open: a
/// file read before its writer closes it may be a prefix that parses (fewer rules), and
/// installing that drops the missing rules' state and bans.
const WRITE_PATIENCE: Duration = Duration::from_secs(10);

/// What a reload job gives back: the policy tables it borrowed, and the policy it installed.
struct JobOut {
    maps: Vec<super::Tables>,
    result: Result<(policy::Policy, InstallDone, Duration, u32), String>,
}

struct Owner {
    instances: Vec<Instance>,
    policy: policy::Policy,
    path: PathBuf,
    generation: u32,
    ids: HashMap<String, u32>,
    matrix: String,
    audit: AuditLog,
    counters: Arc<DaemonCounters>,
    /// Interfaces lost behind the daemon's back (detached, gone), with why.
    lost: HashMap<String, String>,
    attacks: crate::attack::Tracker,
    /// Requests waiting for the reload job in progress (reloads, rule bans).
    waiting: VecDeque<(Request, Answer)>,
    /// The trigger and (control socket) answer of the reload in progress.
    reload_of: Option<(&'static str, Vec<Answer>)>,
    /// A SIGHUP or file change that came during a reload: one more reload after it.
    reload_again: Option<&'static str>,
    /// This host's name (`[fleet] host`, else the hostname): `origin_host` of its bans.
    host: String,
    /// The link to the fleet task (`[fleet]`).
    fleet: Option<fleet_hooks::Link>,
    /// `--state-dir`, whether the bans changed since the last write, and when that was.
    state_dir: PathBuf,
    state_dirty: bool,
    state_written: Option<Instant>,
    /// Origins of fleet bans restored from `--state-dir`, until the fleet link takes them.
    pending_origins: HashMap<String, String>,
    /// The app task's policy (`[app]` at start), and its counters.
    app_policy: Option<watch::Sender<crate::app::AppPolicy>>,
    /// `shield unban` also lifts the app layer's L7 bans.
    app_unban: Option<mpsc::UnboundedSender<app::AppUnban>>,
    app_counters: Arc<crate::app::AppCounters>,
    /// Rule bans received from the fleet (and whether live) while a reload ran: installed
    /// once it is over (`fleet_apply`).
    fleet_waiting: Vec<(crate::fleet::Message, bool)>,
    /// When the verified set's filters were last rebuilt (`VFILTER_REBUILD`).
    vfilter_at: Instant,
}

/// How often the filters in front of the verified sets are rebuilt from the sets.
const VFILTER_REBUILD: Duration = Duration::from_secs(300);

/// Runs the daemon until SIGTERM/SIGINT, then detaches cleanly.
pub(super) async fn serve(
    start: Start,
    socket: control::Bound,
    metrics: Option<std::net::TcpListener>,
) -> Result<()> {
    let Start {
        mut instances,
        policy,
        path,
        generation,
        ids,
        mut audit,
        counters,
        socket_path,
        bpffs,
        state_dir,
        restore,
        app: app_socket,
        app_counters,
        stop: StopSignals { mut term, mut int },
    } = start;
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut event_tasks = Vec::new();
    for (idx, inst) in instances.iter_mut().enumerate() {
        if let Some(log) = inst.log.take() {
            event_tasks.push(tokio::spawn(events::forward_log(
                inst.iface.clone(),
                log,
                stop_rx.clone(),
            )));
        }
        if let Some(ring) = inst.ring.take() {
            event_tasks.push(tokio::spawn(events::read(
                idx,
                inst.iface.clone(),
                ring,
                tx.clone(),
                stop_rx.clone(),
            )));
        }
    }
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(listener) = metrics {
        let sources = Arc::new(Sources {
            bpffs: bpffs.clone(),
            ifaces: instances
                .iter()
                .map(|i| (i.iface.clone(), i.attached.name()))
                .collect(),
            counters: counters.clone(),
            app: app_counters.clone(),
        });
        tokio::spawn(http::serve(listener, sources, stop_rx.clone()));
    }
    let control_task = tokio::spawn(control::serve(socket, tx.clone(), stop_rx.clone()));
    let (mut app_policy, mut app_unban) = (None, None);
    if let Some(bound) = app_socket {
        let mut first = crate::app::AppPolicy::new(&policy, generation);
        first.has_xdp = !instances.is_empty();
        let (ptx, prx) = watch::channel(first.clone());
        let (utx, urx) = mpsc::unbounded_channel();
        app_policy = Some(ptx);
        app_unban = Some(utx);
        event_tasks.push(tokio::spawn(app::serve(
            bound,
            first,
            prx,
            urx,
            app_counters.clone(),
            tx.clone(),
            stop_rx.clone(),
            state_dir.clone(),
        )));
    }
    let _watcher = watch_file(&path, tx.clone());
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;

    audit.write(json!({
        "event": "start",
        "policy": path.display().to_string(),
        "generation": generation,
        "ifaces": instances.iter().map(|i| json!({"iface": i.iface, "attach": i.attached.name()})).collect::<Vec<_>>(),
    }));
    let policy_host = policy.fleet.as_ref().map(|f| f.host.clone());
    let mut owner = Owner {
        instances,
        matrix: policy::matrix_table(&policy),
        policy,
        path,
        generation,
        ids,
        audit,
        counters,
        lost: HashMap::new(),
        attacks: crate::attack::Tracker::default(),
        waiting: VecDeque::new(),
        reload_of: None,
        reload_again: None,
        host: match &policy_host {
            Some(h) => h.clone(),
            None => policy::hostname(),
        },
        fleet: None,
        pending_origins: HashMap::new(),
        state_dir,
        state_dirty: false,
        state_written: None,
        app_policy,
        app_unban,
        app_counters,
        fleet_waiting: Vec::new(),
        vfilter_at: Instant::now(),
    };
    owner.restore_state(&restore);
    // The fleet's bans are in force before this host says it is ready.
    let fleet_task = owner.start_fleet(&tx, &stop_rx).await;
    info!(
        "running; control socket {}{}{}; SIGHUP or a change of {} reloads; SIGTERM or Ctrl-C {}",
        socket_path.display(),
        metrics_addr
            .map(|m| format!(", metrics http://{m}/metrics"))
            .unwrap_or_default(),
        owner
            .policy
            .app
            .as_ref()
            .map(|a| format!(", app socket {}", a.socket.display()))
            .unwrap_or_default(),
        owner.path.display(),
        // App-only mode has no program to detach.
        if owner.instances.is_empty() {
            "stops"
        } else {
            "detaches"
        }
    );
    // systemd Type=notify: ready once attached and listening (a no-op elsewhere).
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut job: Option<JoinHandle<JobOut>> = None;
    let mut change_at: Option<tokio::time::Instant> = None;
    // Written into and not closed since: only its close (or WRITE_PATIENCE) ends the wait.
    let mut writing = false;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => owner.reload("SIGHUP", None, &mut job),
            _ = usr1.recv() => {
                if let Err(e) = owner.audit.reopen() {
                    warn!("SIGUSR1: cannot reopen the audit log: {e}");
                }
            }
            msg = rx.recv() => match msg {
                Some(Msg::Request(req, answer)) => owner.request(req, answer, &mut job),
                Some(Msg::Events(idx, evs)) => owner.events(idx, &evs),
                Some(Msg::App(e)) => owner.app_effect(e),
                // Debounced: editors write in several steps; a write in place is read
                // once its writer closed the file.
                Some(Msg::FileChanged(change)) => {
                    let now = tokio::time::Instant::now();
                    match change {
                        FileChange::Writing => {
                            writing = true;
                            change_at = Some(now + WRITE_PATIENCE);
                        }
                        FileChange::Closed => {
                            writing = false;
                            change_at = Some(now + SETTLE);
                        }
                        FileChange::Other if !writing => change_at = Some(now + SETTLE),
                        FileChange::Other => {}
                    }
                }
                Some(Msg::Fleet(m)) => owner.fleet_inbound(m),
                None => break,
            },
            _ = tick.tick() => owner.tick(job.is_some()),
            _ = async {
                if let Some(at) = change_at {
                    tokio::time::sleep_until(at).await;
                }
            }, if change_at.is_some() => {
                change_at = None;
                writing = false;
                owner.reload("file change", None, &mut job);
            }
            out = async {
                match job.as_mut() {
                    Some(j) => j.await,
                    None => std::future::pending().await,
                }
            }, if job.is_some() => {
                job = None;
                owner.finish_reload(out);
                owner.resume(&mut job);
            }
        }
    }

    // Shutdown: let a reload in progress finish (its maps come back), stop the tasks, log
    // the last events, detach.
    // The channel is drained all along: a task blocked on a full channel must not keep
    // the others (or the reload) from ending.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let mut pending = job.take();
    let _ = stop_tx.send(true);
    let mut tasks: Vec<JoinHandle<()>> = event_tasks;
    tasks.push(control_task);
    tasks.extend(fleet_task);
    let mut all = Box::pin(async move {
        for t in tasks {
            let _ = t.await;
        }
    });
    let mut tasks_done = false;
    loop {
        tokio::select! {
            out = async {
                match pending.as_mut() {
                    Some(j) => j.await,
                    None => std::future::pending().await,
                }
            }, if pending.is_some() => {
                pending = None;
                owner.finish_reload(out);
            }
            () = &mut all, if !tasks_done => tasks_done = true,
            msg = rx.recv() => {
                if let Some(msg) = msg {
                    owner.while_stopping(msg);
                }
            }
        }
        if tasks_done && pending.is_none() {
            break;
        }
    }
    while let Ok(msg) = rx.try_recv() {
        owner.while_stopping(msg);
    }
    for (_, answer) in owner.waiting.drain(..) {
        let _ = answer.send(Err("the daemon is shutting down".into()));
    }
    // Fleet rule bans that waited for the reload are this host's to keep: installed now
    // (the reload is over), they are saved below and in force under the next daemon.
    for (m, live) in std::mem::take(&mut owner.fleet_waiting) {
        owner.fleet_apply_as(m, live, false);
    }
    for inst in &mut owner.instances {
        // Attacks still running end with the daemon (the next one starts calm).
        if !owner.lost.contains_key(&inst.iface) {
            end_attacks(inst, &mut owner.audit, &mut owner.attacks, "daemon stopped");
        }
        inst.detach();
        if !owner.lost.contains_key(&inst.iface) {
            info!(iface = %inst.iface, "detached from {}", inst.iface);
        }
    }
    owner.save_state();
    if owner.instances.is_empty() {
        // App-only: no "detached" line says the daemon is done. Said as a stop, not as a
        // failure ("no longer answers" read like the reason it stopped).
        info!(
            "stopped (app-only mode): the app socket is closed; until shield runs again the web app applies [app] on_error"
        );
    }
    owner.audit.write(json!({"event": "stop"}));
    Ok(())
}

fn join_error(e: tokio::task::JoinError) -> JobOut {
    JobOut {
        maps: Vec::new(),
        result: Err(format!("the reload task failed: {e}")),
    }
}

impl Owner {
    /// Fails with the reason when the daemon lost an interface: its maps no longer act on
    /// traffic, so a ban or a reload there would report success for nothing.
    fn intact(&self) -> Result<(), String> {
        match self.lost.values().next() {
            Some(why) => Err(format!(
                "{why}; this daemon no longer protects it: restart `shield run` to protect it again"
            )),
            None => Ok(()),
        }
    }

    fn request(&mut self, req: Request, answer: Answer, job: &mut Option<JoinHandle<JobOut>>) {
        match req {
            Request::Ping {} => {
                let interfaces = self
                    .instances
                    .iter()
                    .map(|i| {
                        let lost = self.lost.get(&i.iface).cloned();
                        PingIface {
                            iface: i.iface.clone(),
                            protected: lost.is_none(),
                            lost,
                        }
                    })
                    .collect();
                let _ = answer.send(Ok(Reply::Pong(Pong {
                    pong: true,
                    interfaces,
                })));
            }
            Request::Policy {} => {
                let _ = answer.send(Ok(Reply::Policy(RunningPolicy {
                    path: self.path.display().to_string(),
                    generation: self.generation,
                    matrix: self.matrix.clone(),
                })));
            }
            Request::Reload {} => self.reload("control socket", Some(answer), job),
            Request::Fleet {} => {
                let _ = answer.send(Ok(Reply::Fleet(crate::control::FleetReply {
                    fleet: self.counters.fleet.status(&self.host),
                })));
            }
            Request::AppStats {} => {
                let _ = answer.send(Ok(Reply::AppStats(crate::control::AppStats {
                    socket: self
                        .app_policy
                        .as_ref()
                        .and(self.policy.app.as_ref())
                        .map(|a| a.socket.display().to_string()),
                    errors: self.app_counters.errors.load(Ordering::Relaxed),
                    rows: self.app_counters.snapshot(),
                })));
            }
            // Bans are served during a reload (the ban tables are not the reload's), but a
            // rule ban waits for it: the rule may be one it adds, and a ban stored under
            // an id the reload gives a new rule would go with the rule that had the id.
            other @ Request::Ban { rule: Some(_), .. } if job.is_some() => {
                self.waiting.push_back((other, answer))
            }
            Request::Unban { source } => self.unban(&source, answer),
            other => {
                let result = self.maps_request(other);
                let _ = answer.send(result);
            }
        }
    }

    /// A message that comes while the daemon stops: the last events are logged and the
    /// app's effects applied; requests are refused; reloads and fleet news are left.
    fn while_stopping(&mut self, msg: Msg) {
        match msg {
            Msg::Events(idx, evs) => self.events(idx, &evs),
            Msg::Request(_, answer) => {
                let _ = answer.send(Err("the daemon is shutting down".into()));
            }
            Msg::FileChanged(_) | Msg::Fleet(_) => {}
            Msg::App(e) => self.app_effect(e),
        }
    }

    /// Serves what waited for a reload, until one of them starts another.
    fn resume(&mut self, job: &mut Option<JoinHandle<JobOut>>) {
        for (m, live) in std::mem::take(&mut self.fleet_waiting) {
            self.fleet_apply_as(m, live, false);
        }
        while job.is_none() {
            let Some((req, answer)) = self.waiting.pop_front() else {
                break;
            };
            self.request(req, answer, job);
        }
        if job.is_none()
            && let Some(trigger) = self.reload_again.take()
        {
            self.reload(trigger, None, job);
        }
    }

    /// Audit lines for events from interface `idx`'s ring buffer.
    fn events(&mut self, idx: usize, evs: &[Event]) {
        let Some(inst) = self.instances.get(idx) else {
            return;
        };
        let mono_now = crate::loader::mono_coarse_ns().wrapping_add(inst.clock_offset_ns);
        let wall_now = SystemTime::now();
        let mut issued = Vec::new();
        for ev in evs {
            let line = event_json(inst, ev, mono_now, wall_now);
            self.audit.write(line);
            if ev.kind == shield_common::EV_BAN {
                issued.push(fleet_hooks::entry_of_event(inst, ev, mono_now));
            }
        }
        for b in &issued {
            self.issued_ban(b);
        }
    }

    /// Once a second: notice a lost interface, expire bans, watch the `unverified` budgets.
    /// Skipped for maps a reload job holds (they are back within the reload).
    fn tick(&mut self, reloading: bool) {
        self.fleet_tick();
        if !reloading {
            self.maybe_save_state();
        }
        let escalates = self.policy.rules.iter().any(|r| r.escalation.is_some());
        let rebuild = !reloading && self.vfilter_at.elapsed() >= VFILTER_REBUILD;
        if rebuild {
            self.vfilter_at = Instant::now();
        }
        for inst in &mut self.instances {
            if self.lost.contains_key(&inst.iface) {
                continue;
            }
            if let Some(why) = inst.lost() {
                error!(
                    iface = %inst.iface,
                    "{why}; this daemon no longer protects it (reload, ban, unban and bans now fail); restart `shield run` to protect it again"
                );
                self.audit
                    .write(json!({"event": "lost", "iface": inst.iface, "reason": why}));
                // No longer watched: its attacks end here, not never.
                end_attacks(inst, &mut self.audit, &mut self.attacks, "interface lost");
                self.lost.insert(inst.iface.clone(), why);
                // Its syncookie table goes with the program (`shield detach` removes it too;
                // this one also takes one a look for flushed tables put back just then).
                crate::synproxy::remove_in_background(inst.iface.clone());
                continue;
            }
            if reloading || inst.tables.is_none() {
                continue;
            }
            inst.clock_offset_ns = inst
                .tables
                .as_ref()
                .and_then(|m| m.control().ok())
                .map_or(0, |c| c.clock_offset_ns);
            sweep(inst, &mut self.audit, escalates);
            watch_attacks(inst, &mut self.audit, &mut self.attacks);
            match inst.sfilter.step(&inst.dir, false) {
                Ok(crate::loader::SfilterStep::Idle) => {}
                Ok(step) => debug!(iface = %inst.iface, "source-table filter: {step:?}"),
                Err(e) => warn!(iface = %inst.iface, "source-table filter: {e}"),
            }
            if rebuild {
                match crate::loader::vfilter_rebuild(&inst.dir) {
                    Ok(n) => {
                        debug!(iface = %inst.iface, "verified-set filter rebuilt: {n} stale bits cleared")
                    }
                    Err(e) => warn!(iface = %inst.iface, "verified-set filter: {e}"),
                }
            }
        }
        // A syncookie table taken away under the daemon (`nft flush ruleset`) is put back
        // (not during a reload, which puts its own in place).
        if reloading {
            return;
        }
        let kept = self.instances.iter().map(|i| &i.iface);
        crate::synproxy::reinstate_all(
            kept.filter(|i| !self.lost.contains_key(*i))
                .cloned()
                .collect(),
        );
    }
}

/// Watches the policy file's directory; sends `FileChanged` when the file is written into,
/// closed after a write, created, renamed into place, removed or its metadata change.
/// `None` (with a warning) if inotify is unavailable.
fn watch_file(path: &std::path::Path, tx: mpsc::Sender<Msg>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let file = path.file_name()?.to_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        let Ok(ev) = res else { return };
        let change = match ev.kind {
            EventKind::Modify(ModifyKind::Data(_)) => FileChange::Writing,
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => FileChange::Closed,
            EventKind::Access(_) => return,
            _ => FileChange::Other,
        };
        if ev
            .paths
            .iter()
            .any(|p| p.file_name() == Some(file.as_os_str()))
        {
            // Full queue: a change is already pending (the reload still comes, at the
            // latest WRITE_PATIENCE after the last write).
            let _ = tx.try_send(Msg::FileChanged(change));
        }
    })
    .map_err(|e| warn!("cannot watch the policy file: {e} (SIGHUP and `shield reload` still work)"))
    .ok()?;
    if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
        warn!(
            "cannot watch {}: {e} (SIGHUP and `shield reload` still work)",
            dir.display()
        );
        return None;
    }
    Some(w)
}
