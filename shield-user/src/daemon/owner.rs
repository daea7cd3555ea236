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
    InstallDone, Instance, app, control, events, http, ids_of, install_all, reloaded,
    upkeep::{ban_json, event_json, sweep, watch_attacks},
};
use crate::{
    audit::{AuditLog, rfc3339},
    bans::{BanFloor, check_manual_ban},
    control::{BanList, BanResult, Banned, Pong, Reply, Request, RunningPolicy, Unbanned},
    metrics::{DaemonCounters, Sources},
    policy::{self, format_duration, parse_cidr, parse_duration},
};

mod fleet_hooks;

/// `shield ban` against an app-only daemon (no `--iface`): refused, never a silent no-op.
const APP_ONLY_BAN: &str = "this daemon runs in app-only mode (no --iface): there is no interface to ban on; the application layer bans at L7 by itself (escalation); run shield with --iface for manual bans";

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
}

pub(super) type Answer = oneshot::Sender<Result<Reply, String>>;

/// What the other tasks send the owner.
pub(super) enum Msg {
    /// A control socket request and where its answer goes.
    Request(Request, Answer),
    /// Events drained from interface `.0`'s ring buffer.
    Events(usize, Vec<Event>),
    /// The policy file was written (debounced by the owner).
    FileChanged,
    /// From the fleet task.
    Fleet(super::fleet::Inbound),
    /// A ban or an audit line from the app task.
    App(crate::app::Effect),
}

/// What a reload job gives back: the maps it borrowed, and the policy it installed.
struct JobOut {
    maps: Vec<(String, super::IfaceMaps)>,
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
    /// Requests that need the maps, waiting for the reload job in progress.
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
    app_unban: Option<mpsc::UnboundedSender<policy::Cidr>>,
    app_counters: Arc<crate::app::AppCounters>,
    /// App bans that came while a reload held the maps.
    app_bans: Vec<crate::app::AppBan>,
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
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
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
        app_bans: Vec::new(),
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
                Some(Msg::App(e)) => owner.app_effect(e, job.is_some()),
                // Debounced: editors write in several steps.
                Some(Msg::FileChanged) => {
                    change_at = Some(tokio::time::Instant::now() + Duration::from_millis(300));
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
            msg = rx.recv() => match msg {
                Some(Msg::Events(idx, evs)) => owner.events(idx, &evs),
                Some(Msg::Request(_, answer)) => {
                    let _ = answer.send(Err("the daemon is shutting down".into()));
                }
                Some(Msg::FileChanged | Msg::Fleet(_)) => {}
                Some(Msg::App(e)) => owner.app_effect(e, pending.is_some()),
                None => {}
            },
        }
        if tasks_done && pending.is_none() {
            break;
        }
    }
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Events(idx, evs) => owner.events(idx, &evs),
            Msg::Request(_, answer) => {
                let _ = answer.send(Err("the daemon is shutting down".into()));
            }
            Msg::FileChanged | Msg::Fleet(_) => {}
            Msg::App(e) => owner.app_effect(e, false),
        }
    }
    for (_, answer) in owner.waiting.drain(..) {
        let _ = answer.send(Err("the daemon is shutting down".into()));
    }
    for inst in &mut owner.instances {
        inst.detach();
        if !owner.lost.contains_key(&inst.iface) {
            info!(iface = %inst.iface, "detached from {}", inst.iface);
        }
    }
    owner.save_state();
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
                let _ = answer.send(Ok(Reply::Pong(Pong { pong: true })));
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
            // These need the maps: after the reload in progress, in order.
            other if job.is_some() => self.waiting.push_back((other, answer)),
            other => {
                let result = self.maps_request(other);
                let _ = answer.send(result);
            }
        }
    }

    /// Serves what waited for a reload, until one of them starts another.
    fn resume(&mut self, job: &mut Option<JoinHandle<JobOut>>) {
        for b in std::mem::take(&mut self.app_bans) {
            self.app_ban(b);
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

    /// Starts a reload of the policy file in a blocking task that borrows the maps. One at
    /// a time: a reload asked for meanwhile runs after it.
    fn reload(
        &mut self,
        trigger: &'static str,
        answer: Option<Answer>,
        job: &mut Option<JoinHandle<JobOut>>,
    ) {
        if job.is_some() {
            match answer {
                Some(a) => self.waiting.push_back((Request::Reload {}, a)),
                None => self.reload_again = Some(trigger),
            }
            return;
        }
        if let Err(e) = self.intact() {
            self.reload_failed(trigger, &e);
            if let Some(a) = answer {
                let _ = a.send(Err(e));
            }
            return;
        }
        let maps: Vec<_> = self
            .instances
            .iter_mut()
            .filter_map(|i| i.maps.take().map(|m| (i.iface.clone(), m)))
            .collect();
        let path = self.path.clone();
        let ids = self.ids.clone();
        let generation = self.generation;
        let max_sources = self.policy.max_sources;
        let fleet = self.policy.fleet.clone();
        let app = self.policy.app.clone();
        // Every reload request already waiting gets this reload's answer: they would read
        // the same file (a ban queued behind them is served sooner).
        let mut answers: Vec<Answer> = answer.into_iter().collect();
        let mut rest = VecDeque::new();
        for (req, a) in self.waiting.drain(..) {
            match req {
                Request::Reload {} => answers.push(a),
                other => rest.push_back((other, a)),
            }
        }
        self.waiting = rest;
        self.reload_of = Some((trigger, answers));
        *job = Some(tokio::task::spawn_blocking(move || {
            let mut maps = maps;
            let result = reload_job(&path, &mut maps, &ids, generation, max_sources, fleet, app);
            JobOut { maps, result }
        }));
    }

    fn finish_reload(&mut self, out: Result<JobOut, tokio::task::JoinError>) {
        let out = out.unwrap_or_else(join_error);
        let mut back = out.maps.into_iter();
        for inst in &mut self.instances {
            if inst.maps.is_none() {
                inst.maps = back.next().map(|(_, m)| m);
            }
        }
        let (trigger, answers) = self
            .reload_of
            .take()
            .unwrap_or(("control socket", Vec::new()));
        let reply = match out.result {
            Ok((policy, done, took, generation)) => {
                self.monitor_bans_ended(&done);
                let summary = reloaded(&policy, generation, &done, took);
                self.ids = ids_of(&policy, &self.ids);
                self.generation = generation;
                self.matrix = policy::matrix_table(&policy);
                if let Some(tx) = &self.app_policy {
                    let mut p = crate::app::AppPolicy::new(&policy, generation);
                    p.has_xdp = !self.instances.is_empty();
                    let _ = tx.send(p);
                }
                self.policy = policy;
                for inst in &mut self.instances {
                    inst.refresh_names();
                }
                self.counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .last_reload_us
                    .store(took.as_micros() as u64, Ordering::Relaxed);
                let mut line = json!({"event": "reload", "trigger": trigger, "policy": self.path.display().to_string(), "result": "ok"});
                if let (Some(l), Ok(serde_json::Value::Object(s))) =
                    (line.as_object_mut(), serde_json::to_value(&summary))
                {
                    l.extend(s);
                }
                self.audit.write(line);
                info!(
                    "reloaded {} ({trigger}): generation {}, {:.1} ms",
                    self.path.display(),
                    summary.generation,
                    summary.took_ms
                );
                Ok(Reply::Reloaded(summary))
            }
            Err(e) => {
                self.reload_failed(trigger, &e);
                Err(e)
            }
        };
        for a in answers {
            let _ = a.send(reply.clone());
        }
    }

    /// `ban_end` lines for monitor bans an install dropped (their rule is enforced now).
    fn monitor_bans_ended(&mut self, done: &InstallDone) {
        for (iface, b) in &done.monitor_bans_dropped {
            let mut line = ban_json("ban_end", iface, b, None);
            line["level"] = b.level.into();
            line["monitor"] = true.into();
            line["ended"] = "rule enforced".into();
            self.audit.write(line);
        }
    }

    fn reload_failed(&mut self, trigger: &str, e: &str) {
        self.counters.reloads_error.fetch_add(1, Ordering::Relaxed);
        self.audit.write(json!({
            "event": "reload", "trigger": trigger, "policy": self.path.display().to_string(),
            "result": "error", "error": e,
        }));
        warn!("reload ({trigger}) rejected, previous policy stays in force: {e}");
    }

    /// Ban, unban and the ban list: the owner's maps, at once.
    fn maps_request(&mut self, req: Request) -> Result<Reply, String> {
        self.intact()?;
        match req {
            Request::Bans {} => {
                let mut bans = Vec::new();
                for inst in &self.instances {
                    let Some(m) = &inst.maps else { continue };
                    for mut b in m.bans.active() {
                        b.iface = inst.iface.clone();
                        b.origin_host = Some(self.origin_host_of(&b));
                        bans.push(b);
                    }
                }
                Ok(Reply::Bans(BanList { bans }))
            }
            Request::Ban {
                source,
                duration,
                rule,
                reason,
                force,
            } => self.ban(
                &source,
                &duration,
                rule.as_deref(),
                reason.as_deref(),
                force,
            ),
            Request::Unban { source } => {
                let cidr = parse_cidr(&source).map_err(|e| format!("source \"{source}\": {e}"))?;
                let mut removed = Vec::new();
                for inst in &mut self.instances {
                    let Some(m) = inst.maps.as_mut() else {
                        continue;
                    };
                    for mut b in m.bans.unban(cidr).map_err(|e| e.to_string())? {
                        b.iface = inst.iface.clone();
                        self.audit
                            .write(ban_json("unban", &inst.iface, &b, b.comment.as_ref()));
                        removed.push(b);
                    }
                }
                self.issued_unban(&cidr.to_string());
                if let Some(tx) = &self.app_unban {
                    let _ = tx.send(cidr);
                }
                Ok(Reply::Unbanned(Unbanned { removed }))
            }
            other => Err(format!("internal: {other:?} is not a maps request")),
        }
    }

    fn ban(
        &mut self,
        source: &str,
        duration: &str,
        rule: Option<&str>,
        reason: Option<&str>,
        force: bool,
    ) -> Result<Reply, String> {
        if self.instances.is_empty() {
            // App-only mode: no NIC; a ban that reported success would protect nothing.
            return Err(APP_ONLY_BAN.into());
        }
        let cidr = parse_cidr(source).map_err(|e| format!("source \"{source}\": {e}"))?;
        let dur = parse_duration(duration).map_err(|e| format!("duration \"{duration}\": {e}"))?;
        let max = Duration::from_nanos(shield_common::judge::MAX_BAN_NS);
        if dur < Duration::from_secs(1) || dur > max {
            // Named as typed: "0s" must not come back as "0ms".
            return Err(format!(
                "duration \"{duration}\": must be between 1s and {}",
                format_duration(max)
            ));
        }
        // No control characters and no bidirectional overrides (U+202A-U+202E,
        // U+2066-U+2069): a reason must not reorder or break what `shield bans` shows.
        if reason.is_some_and(|r| {
            r.chars().any(|c| {
                c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            })
        }) {
            return Err(
                "reason must be printable text (no control characters or line breaks)".into(),
            );
        }
        if reason.is_some_and(|r| r.len() > shield_common::BAN_NOTE_MAX) {
            return Err(format!(
                "reason is longer than {} bytes",
                shield_common::BAN_NOTE_MAX
            ));
        }
        let floor = BanFloor {
            ipv4: self.policy.min_ban_ipv4_prefix,
            ipv6: self.policy.min_ban_ipv6_prefix,
        };
        let warnings = check_manual_ban(&cidr, &self.policy.allow, floor, force)?;
        let mut bans = Vec::new();
        let mut issued = Vec::new();
        let mut inst_first = true;
        for inst in &mut self.instances {
            let Some(m) = inst.maps.as_mut() else {
                continue;
            };
            let outcome = m
                .bans
                .ban(cidr, dur, rule, reason)
                .map_err(|e| e.to_string())?;
            let mut b = outcome.entry;
            b.iface = inst.iface.clone();
            let mut line = ban_json("ban", &inst.iface, &b, b.comment.as_ref());
            line["reason"] = "manual".into();
            line["expires"] =
                rfc3339(SystemTime::now() + Duration::from_secs_f64(b.remaining_secs)).into();
            if outcome.kept_longer {
                line["event"] = "ban_kept".into();
                line["requested_secs"] = dur.as_secs_f64().into();
            }
            self.audit.write(line);
            if inst_first {
                issued.push(b.clone());
                inst_first = false;
            }
            bans.push(BanResult {
                ban: b,
                kept_longer: outcome.kept_longer,
            });
        }
        for b in &issued {
            self.issued_ban(b);
        }
        Ok(Reply::Banned(Banned { bans, warnings }))
    }

    /// What the app task reports: audit lines, and bans for the data path (queued while a
    /// reload holds the maps).
    fn app_effect(&mut self, e: crate::app::Effect, reloading: bool) {
        use crate::app::Effect;
        match e {
            Effect::Limited {
                kind,
                name,
                client,
                retry_after,
            } => self.audit.write(json!({
                "event": "app_limited", "origin": "app", kind.as_str(): name,
                "client": client.to_string(), "retry_after": retry_after,
            })),
            Effect::BanSkipped {
                kind,
                name,
                client,
                why,
            } => {
                warn!("{} `{name}`: no ban on {client}: {why}", kind.as_str());
                self.audit.write(json!({
                    "event": "app_ban_skipped", "origin": "app", kind.as_str(): name,
                    "client": client.to_string(), "why": why,
                }));
            }
            Effect::Ban(b) if b.xdp && reloading => self.app_bans.push(b),
            Effect::Ban(b) => self.app_ban(b),
        }
    }

    /// An app ban: the audit line, and for a direct client a host ban on every interface
    /// (never shorter than one in force).
    fn app_ban(&mut self, b: crate::app::AppBan) {
        let mut line = json!({
            "event": "app_ban", "origin": "app", b.kind.as_str(): b.name,
            "source": b.source.to_string(), "ban_secs": b.duration.as_secs_f64(),
            "level": b.level, "enforced": if b.xdp { "xdp" } else { "l7" },
            "scope": if b.endpoint.is_some() { "rule" } else { "host" },
            "expires": rfc3339(SystemTime::now() + b.duration),
        });
        if !b.xdp {
            self.audit.write(line);
            return;
        }
        let mut ifaces = Vec::new();
        let mut issued = None;
        for inst in &mut self.instances {
            let Some(m) = inst.maps.as_mut() else {
                continue;
            };
            match m.bans.ban_as(
                b.source,
                b.duration,
                None,
                Some(&b.reason),
                crate::bans::Origin::App,
            ) {
                Ok(o) => {
                    ifaces.push(json!({"iface": inst.iface, "kept_longer": o.kept_longer}));
                    if issued.is_none() {
                        let mut e = o.entry;
                        e.iface = inst.iface.clone();
                        issued = Some(e);
                    }
                }
                Err(e) => warn!(iface = %inst.iface, "app ban on {}: {e}", b.source),
            }
        }
        line["ifaces"] = ifaces.into();
        self.audit.write(line);
        // Published to the fleet (and saved in --state-dir) like any ban this host issues.
        if let Some(e) = issued {
            self.issued_ban(&e);
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
                self.lost.insert(inst.iface.clone(), why);
                continue;
            }
            if reloading || inst.maps.is_none() {
                continue;
            }
            inst.clock_offset_ns = inst
                .maps
                .as_ref()
                .and_then(|m| m.tables.control().ok())
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
    }
}

/// The reload itself, off the run loop: parse, check, compile, install on every interface.
fn reload_job(
    path: &std::path::Path,
    maps: &mut [(String, super::IfaceMaps)],
    ids: &HashMap<String, u32>,
    generation: u32,
    max_sources: u32,
    fleet: Option<policy::Fleet>,
    app: Option<policy::AppConfig>,
) -> Result<(policy::Policy, InstallDone, Duration, u32), String> {
    let started = Instant::now();
    let policy = policy::load(path).map_err(|e| e.to_string())?;
    for w in policy::warnings(&policy) {
        warn!("{}: {w}", path.display());
    }
    if generation > 0 && policy.max_sources != max_sources {
        return Err(format!(
            "max_sources changed ({max_sources} -> {}): it sizes the per-source table in the kernel; restart shield to apply it",
            policy.max_sources
        ));
    }
    if generation > 0 && policy.fleet != fleet {
        return Err(
            "[fleet] changed: the link to Redis is set up at start; restart shield to apply it"
                .into(),
        );
    }
    if let Some(why) = app::needs_restart(app.as_ref(), policy.app.as_ref()) {
        return Err(format!(
            "{why}: the app socket is bound at start; restart shield to apply it"
        ));
    }
    let compiled = policy::compile_with_ids(&policy, ids);
    let generation = generation.wrapping_add(1).max(1);
    let done = install_all(maps, &policy, &compiled, generation)?;
    Ok((policy, done, started.elapsed(), generation))
}

/// Watches the policy file's directory; sends `FileChanged` when the file is written,
/// created or renamed into place. `None` (with a warning) if inotify is unavailable.
fn watch_file(path: &std::path::Path, tx: mpsc::Sender<Msg>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let file = path.file_name()?.to_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
            && ev
                .paths
                .iter()
                .any(|p| p.file_name() == Some(file.as_os_str()))
        {
            // Full queue: a change is already pending, which is all this says.
            let _ = tx.try_send(Msg::FileChanged);
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
