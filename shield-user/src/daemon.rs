//! `shield run`: load, fill, attach on every interface; then, until SIGTERM/SIGINT, turn
//! data-path events into audit lines, expire bans, and serve the control socket.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::links::FdLink,
};
use serde_json::json;
use shield_common::{
    CFG_BANS, EV_BAN, EV_BAN_FAILED, EV_LIMITED, EV_WOULD_BAN, Event, MAP_EVENTS, Reason,
    addr::FAMILY_V4,
};

use crate::{
    audit::{AuditLog, rfc3339},
    bans::{BanEntry, BanMaps},
    control::{ControlServer, Request},
    loader::{self, AttachMode, Attached, PolicyMaps},
    metrics::{self, DaemonCounters, MetricsServer},
    policy::{self, format_duration, parse_cidr, parse_duration},
};

pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub policy: PathBuf,
    pub xdp_mode: AttachMode,
    pub bpffs: PathBuf,
    /// `None`: no audit log; `-`: stdout; else a file.
    pub audit_log: Option<String>,
    pub socket: PathBuf,
    /// `None`: no metrics endpoint.
    pub metrics: Option<String>,
    /// Start from empty maps (counters, limiter state, bans) instead of adopting the pins.
    pub fresh: bool,
}

/// One protected interface. The link is pinned: it outlives the daemon unless `stop`
/// removes the pin first (a clean SIGTERM).
struct Instance {
    iface: String,
    dir: PathBuf,
    ring: RingBuf<MapData>,
    bans: BanMaps,
    tables: PolicyMaps,
    link: Option<FdLink>,
    attached: Attached,
    _ebpf: Ebpf,
}

impl Instance {
    /// Clean stop: unpin the link, then drop it: the program detaches.
    fn detach(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(shield_common::LINK_PIN));
        self.link = None;
    }
}

/// What the control socket's threads share with the main loop.
struct Shared {
    ifaces: Vec<(String, PathBuf)>,
    audit: Mutex<AuditLog>,
    /// Operator comments of manual bans, by `iface|source|rule`.
    comments: Mutex<HashMap<String, String>>,
    /// Serialises map writes (control socket, expiry sweep, reload) so the CFG_BANS flag is
    /// never cleared while a ban is being added and reloads see a settled ban table.
    maps_lock: Mutex<()>,
    /// The policy escalates: ban lookups stay on even with no ban active.
    escalates: AtomicBool,
    /// Requests only the main loop can serve (it owns the policy).
    to_main: Mutex<mpsc::Sender<MainRequest>>,
    /// The running policy's path, generation and matrix (for `shield check --diff`).
    running: Mutex<(PathBuf, u32, String)>,
    counters: Arc<DaemonCounters>,
}

enum MainRequest {
    Reload(mpsc::Sender<Result<serde_json::Value, String>>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked holder cannot leave these structures inconsistent: keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn comment_key(iface: &str, b: &BanEntry) -> String {
    format!("{iface}|{}|{}", b.source, b.rule)
}

/// The main loop's own state.
struct Running {
    instances: Vec<Instance>,
    policy: policy::Policy,
    path: PathBuf,
    generation: u32,
    /// Rule name → id of the policy in force.
    ids: HashMap<String, u32>,
}

fn ids_of(policy: &policy::Policy, previous: &HashMap<String, u32>) -> HashMap<String, u32> {
    let ids = policy::assign_ids(policy, previous);
    policy
        .rules
        .iter()
        .zip(ids)
        .map(|(r, id)| (r.name.clone(), id))
        .collect()
}

impl Running {
    /// Compiles and installs `policy` on every interface: all inactive halves are written
    /// first, then flipped; an error before the flips leaves the old policy in force.
    fn install(
        &mut self,
        policy: policy::Policy,
        shared: &Shared,
    ) -> Result<serde_json::Value, String> {
        let started = Instant::now();
        if self.generation > 0 && policy.max_sources != self.policy.max_sources {
            return Err(format!(
                "max_sources changed ({} -> {}): it sizes the per-source table in the kernel; restart shield to apply it",
                self.policy.max_sources, policy.max_sources
            ));
        }
        let compiled = policy::compile_with_ids(&policy, &self.ids);
        let generation = self.generation.wrapping_add(1).max(1);
        let _g = lock(&shared.maps_lock);
        let mut written = 0;
        let mut swapped = false;
        for inst in &mut self.instances {
            let extra = if inst.bans.list().is_empty() {
                0
            } else {
                CFG_BANS
            };
            let done = inst
                .tables
                .install(&compiled, generation, extra)
                .map_err(|e| format!("{}: {e}", inst.iface))?;
            written += done.ports_written;
            swapped |= done.lists_swapped;
            let _ = inst.bans.drop_orphans();
            // Monitor bans of rules now enforced: their sources are judged by the enforced
            // rule from now on (see `drop_enforced_monitor_bans`).
            if let Ok(dropped) = inst.bans.drop_enforced_monitor_bans() {
                let mut audit = lock(&shared.audit);
                for b in &dropped {
                    let mut line = ban_json("ban_end", &inst.iface, b, None);
                    line["level"] = b.level.into();
                    line["monitor"] = true.into();
                    line["ended"] = "rule enforced".into();
                    audit.write(line);
                }
            }
        }
        self.ids = ids_of(&policy, &self.ids);
        self.generation = generation;
        shared.escalates.store(
            policy.rules.iter().any(|r| r.escalation.is_some()),
            Ordering::Relaxed,
        );
        *lock(&shared.running) = (self.path.clone(), generation, policy::matrix_table(&policy));
        let took = started.elapsed();
        let summary = json!({
            "generation": generation,
            "rules": policy.rules.len(),
            "allow": policy.allow.len(),
            "deny": policy.deny.len(),
            "port_slots_written": written,
            "lists_swapped": swapped,
            "took_ms": took.as_secs_f64() * 1000.0,
        });
        self.policy = policy;
        shared
            .counters
            .last_reload_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        Ok(summary)
    }

    /// Reloads the policy file. Bad policies are rejected with their error, counted and
    /// logged; the old policy stays in force.
    fn reload(&mut self, shared: &Shared, trigger: &str) -> Result<serde_json::Value, String> {
        let result = policy::load(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|p| self.install(p, shared));
        let mut line = json!({"event": "reload", "trigger": trigger, "policy": self.path.display().to_string()});
        match &result {
            Ok(summary) => {
                shared.counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                line["result"] = "ok".into();
                if let (Some(l), Some(s)) = (line.as_object_mut(), summary.as_object()) {
                    l.extend(s.clone());
                }
                eprintln!(
                    "shield: reloaded {} ({trigger}): generation {}, {} ms",
                    self.path.display(),
                    summary["generation"],
                    summary["took_ms"]
                );
            }
            Err(e) => {
                shared
                    .counters
                    .reloads_error
                    .fetch_add(1, Ordering::Relaxed);
                line["result"] = "error".into();
                line["error"] = e.clone().into();
                eprintln!(
                    "shield: reload ({trigger}) rejected, previous policy stays in force: {e}"
                );
            }
        }
        lock(&shared.audit).write(line);
        result
    }
}

pub fn run(opts: &RunOptions) -> Result<()> {
    loader::require_root()?;
    anyhow::ensure!(!opts.ifaces.is_empty(), "give at least one --iface");
    let policy = policy::load(&opts.policy)?;
    // Check every interface before touching any, so a typo changes nothing.
    for iface in &opts.ifaces {
        loader::if_index(iface)?;
    }
    let audit = AuditLog::open(opts.audit_log.as_deref()).context("opening the audit log")?;
    loader::ensure_bpffs(&opts.bpffs)?;

    let mut instances = Vec::new();
    let mut previous_ids = HashMap::new();
    let mut generation = 0;
    for iface in &opts.ifaces {
        let dir = loader::pin_dir(&opts.bpffs, iface);
        if opts.fresh {
            loader::remove_map_pins(&dir)
                .with_context(|| format!("--fresh: clearing {}", dir.display()))?;
        }
        let mut ebpf = loader::load(&dir, policy.max_sources)
            .with_context(|| format!("loading shield for {iface}"))?;
        let tables = PolicyMaps::open(&dir).context("opening the policy tables")?;
        // Adopted maps: keep rule ids (state, bans, counters) and keep counting generations.
        for (id, r) in tables.current_rules()? {
            previous_ids.insert(crate::stats::rule_name(&r), id);
        }
        if let Ok((_, cfg)) = tables.active()
            && cfg.flags & shield_common::CFG_LOADED != 0
        {
            generation = generation.max(cfg.generation);
        }
        let ring = RingBuf::try_from(
            ebpf.take_map(MAP_EVENTS)
                .ok_or(loader::LoaderError::Missing(MAP_EVENTS))?,
        )
        .context("opening the event ring buffer")?;
        let bans = BanMaps::open(&dir).context("opening the ban maps")?;
        instances.push(Instance {
            iface: iface.clone(),
            dir,
            ring,
            bans,
            tables,
            link: None,
            attached: Attached::Native,
            _ebpf: ebpf,
        });
    }

    let (to_main, from_others) = mpsc::channel();
    let counters = Arc::new(DaemonCounters::default());
    let shared = Arc::new(Shared {
        ifaces: instances
            .iter()
            .map(|i| (i.iface.clone(), i.dir.clone()))
            .collect(),
        audit: Mutex::new(audit),
        comments: Mutex::new(HashMap::new()),
        maps_lock: Mutex::new(()),
        escalates: AtomicBool::new(false),
        to_main: Mutex::new(to_main),
        running: Mutex::new((opts.policy.clone(), 0, String::new())),
        counters: counters.clone(),
    });
    let mut running = Running {
        instances,
        policy: policy.clone(),
        path: opts.policy.clone(),
        generation,
        ids: previous_ids,
    };
    // Fill the maps before attaching: the program never runs on a half-filled table.
    running
        .install(policy.clone(), &shared)
        .map_err(|e| anyhow::anyhow!("filling maps from {}: {e}", opts.policy.display()))?;
    for inst in &mut running.instances {
        let (link, attached) =
            loader::attach(&mut inst._ebpf, &inst.iface, opts.xdp_mode, &inst.dir)
                .with_context(|| format!("attaching to {}", inst.iface))?;
        inst.link = Some(link);
        inst.attached = attached;
        if attached == Attached::Generic && opts.xdp_mode == AttachMode::Auto {
            eprintln!(
                "shield: warning: {} does not support native XDP; attached in generic mode (slower: packets reach XDP after the kernel allocated an skb)",
                inst.iface
            );
        }
        eprintln!(
            "shield: protecting {} ({} XDP), policy {} generation {}: {} rules, {} allow and {} deny prefixes, mode {}; maps pinned in {}",
            inst.iface,
            attached.name(),
            opts.policy.display(),
            running.generation,
            policy.rules.len(),
            policy.allow.len(),
            policy.deny.len(),
            policy.mode,
            inst.dir.display()
        );
    }
    lock(&shared.audit).write(json!({
        "event": "start",
        "policy": opts.policy.display().to_string(),
        "generation": running.generation,
        "ifaces": running.instances.iter().map(|i| json!({"iface": i.iface, "attach": i.attached.name()})).collect::<Vec<_>>(),
    }));

    let handler_shared = shared.clone();
    let control = ControlServer::start(
        &opts.socket,
        Arc::new(move |req| handle(&handler_shared, req)),
    )
    .with_context(|| format!("control socket {}", opts.socket.display()));
    let control = match control {
        Ok(c) => c,
        Err(e) => {
            for inst in &mut running.instances {
                inst.detach();
            }
            return Err(e);
        }
    };
    let _metrics = match &opts.metrics {
        Some(addr) => Some(
            MetricsServer::start(
                addr,
                metrics::Sources {
                    bpffs: opts.bpffs.clone(),
                    ifaces: running
                        .instances
                        .iter()
                        .map(|i| (i.iface.clone(), i.attached.name()))
                        .collect(),
                    counters,
                },
            )
            .map_err(|e| anyhow::anyhow!(e))?,
        ),
        None => None,
    };

    let term = Arc::new(AtomicBool::new(false));
    let usr1 = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (signal_hook::consts::SIGTERM, &term),
        (signal_hook::consts::SIGINT, &term),
        (signal_hook::consts::SIGUSR1, &usr1),
        (signal_hook::consts::SIGHUP, &hup),
    ] {
        signal_hook::flag::register(sig, flag.clone()).context("installing signal handlers")?;
    }
    // Reload when the policy file changes (editors replace it: watch its directory).
    let changed = Arc::new(AtomicBool::new(false));
    let _watcher = watch(&opts.policy, changed.clone());
    eprintln!(
        "shield: running; control socket {}{}; SIGHUP or a change of {} reloads; SIGTERM or Ctrl-C detaches",
        opts.socket.display(),
        opts.metrics
            .as_ref()
            .map(|m| format!(", metrics http://{m}/metrics"))
            .unwrap_or_default(),
        opts.policy.display()
    );

    let mut last_sweep = Instant::now();
    let mut attacks = crate::attack::Tracker::default();
    let mut change_seen: Option<Instant> = None;
    while !term.load(Ordering::Relaxed) {
        wait_readable(&running.instances, Duration::from_millis(100));
        for inst in &mut running.instances {
            drain_events(inst, &shared);
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            for inst in &mut running.instances {
                sweep(inst, &shared);
                watch_attacks(inst, &shared, &mut attacks);
            }
        }
        while let Ok(MainRequest::Reload(reply)) = from_others.try_recv() {
            let _ = reply.send(running.reload(&shared, "control socket"));
        }
        if hup.swap(false, Ordering::Relaxed) {
            let _ = running.reload(&shared, "SIGHUP");
        }
        // Debounced: editors write in several steps.
        if changed.swap(false, Ordering::Relaxed) {
            change_seen = Some(Instant::now());
        }
        if change_seen.is_some_and(|t| t.elapsed() >= Duration::from_millis(300)) {
            change_seen = None;
            let _ = running.reload(&shared, "file change");
        }
        if usr1.swap(false, Ordering::Relaxed)
            && let Err(e) = lock(&shared.audit).reopen()
        {
            eprintln!("shield: warning: SIGUSR1: cannot reopen the audit log: {e}");
        }
    }
    drop(control);
    for inst in &mut running.instances {
        drain_events(inst, &shared);
    }
    for mut inst in running.instances {
        inst.detach();
        eprintln!("shield: detached from {}", inst.iface);
    }
    lock(&shared.audit).write(json!({"event": "stop"}));
    Ok(())
}

/// Watches the policy file's directory; sets `changed` when the file is written, created
/// or renamed into place. `None` (with a warning) if inotify is unavailable.
fn watch(path: &std::path::Path, changed: Arc<AtomicBool>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let file = path.file_name()?.to_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
            && ev.paths.iter().any(|p| p.file_name() == Some(file.as_os_str()))
        {
            changed.store(true, Ordering::Relaxed);
        }
    })
    .map_err(|e| eprintln!("shield: warning: cannot watch the policy file: {e} (SIGHUP and `shield reload` still work)"))
    .ok()?;
    if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
        eprintln!(
            "shield: warning: cannot watch {}: {e} (SIGHUP and `shield reload` still work)",
            dir.display()
        );
        return None;
    }
    Some(w)
}

/// Sleeps until a ring buffer has data or `timeout` passes.
fn wait_readable(instances: &[Instance], timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = instances
        .iter()
        .map(|i| libc::pollfd {
            fd: i.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of pollfd for its length.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as i32,
        )
    };
}

/// Wall-clock time of a data-path timestamp (past or future, e.g. a ban's expiry), given
/// one reading of both clocks (`mono_now`, `wall_now`): every time of one event derives
/// from the same pair, so `expires - ts` is exactly the ban's duration.
fn wall_of(ts_ns: u64, mono_now: u64, wall_now: SystemTime) -> SystemTime {
    if ts_ns >= mono_now {
        wall_now + Duration::from_nanos(ts_ns - mono_now)
    } else {
        wall_now
            .checked_sub(Duration::from_nanos(mono_now - ts_ns))
            .unwrap_or(wall_now)
    }
}

fn drain_events(inst: &mut Instance, shared: &Shared) {
    let mono_now = inst.bans.now();
    let wall_now = SystemTime::now();
    let mut events = Vec::new();
    while let Some(item) = inst.ring.next() {
        if item.len() < std::mem::size_of::<Event>() {
            continue;
        }
        // SAFETY: the buffer holds at least one Event, written by the program as #[repr(C)].
        events.push(unsafe { std::ptr::read_unaligned::<Event>(item.as_ptr().cast()) });
    }
    let lines: Vec<_> = events
        .iter()
        .map(|ev| event_json(inst, ev, mono_now, wall_now))
        .collect();
    if !lines.is_empty() {
        let mut audit = lock(&shared.audit);
        for l in lines {
            audit.write(l);
        }
    }
}

fn event_json(
    inst: &Instance,
    ev: &Event,
    mono_now: u64,
    wall_now: SystemTime,
) -> serde_json::Value {
    let k = &ev.key;
    let ip: std::net::IpAddr = if k.family == FAMILY_V4 {
        std::net::Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]).into()
    } else {
        std::net::Ipv6Addr::from(k.addr).into()
    };
    let reason = Reason::from_code(ev.reason).map_or("unknown", Reason::name);
    let mut v = json!({
        "ts": rfc3339(wall_of(ev.ts_ns, mono_now, wall_now)),
        "iface": inst.iface,
        "source": format!("{ip}/{}", k.prefix_len),
        "rule": inst.bans.rule_name(k.rule),
        "reason": reason,
        "limited": ev.limited,
    });
    let o = v.as_object_mut().expect("object literal");
    match ev.kind {
        EV_LIMITED => {
            o.insert("event".into(), "limited".into());
        }
        EV_BAN | EV_WOULD_BAN | EV_BAN_FAILED => {
            let kind = match ev.kind {
                EV_BAN => "ban",
                EV_WOULD_BAN => "would_ban",
                _ => "ban_failed",
            };
            if ev.kind == EV_BAN_FAILED {
                o.insert(
                    "error".into(),
                    format!(
                        "the ban table is full ({} entries): the source is not banned",
                        shield_common::MAX_BANS
                    )
                    .into(),
                );
            }
            o.insert("event".into(), kind.into());
            o.insert("origin".into(), "automatic".into());
            // Automatic bans rest on evidence a spoofer can forge: they stop new
            // connection attempts (and datagrams), never established connections.
            o.insert("cuts".into(), "new_connections".into());
            o.insert(
                "scope".into(),
                if ev.host_scope != 0 { "host" } else { "rule" }.into(),
            );
            o.insert("strikes".into(), ev.strikes.into());
            o.insert("level".into(), ev.level.into());
            o.insert(
                "ban_secs".into(),
                Duration::from_nanos(ev.duration_ns).as_secs_f64().into(),
            );
            if ev.kind != EV_BAN_FAILED {
                o.insert(
                    "expires".into(),
                    rfc3339(wall_of(
                        ev.ts_ns.saturating_add(ev.duration_ns),
                        mono_now,
                        wall_now,
                    ))
                    .into(),
                );
            }
        }
        other => {
            o.insert("event".into(), format!("unknown_{other}").into());
        }
    }
    v
}

fn ban_json(event: &str, iface: &str, b: &BanEntry, comment: Option<&String>) -> serde_json::Value {
    let mut v = json!({
        "event": event,
        "origin": b.origin,
        "iface": iface,
        "source": b.source,
        "scope": b.scope,
        "rule": b.rule,
        "ban_secs": b.duration_secs,
    });
    if let Some(c) = comment {
        v["comment"] = c.clone().into();
    }
    v
}

/// Removes expired bans (logging `ban_end`) and keeps the data path's ban lookups on only
/// while they can matter.
fn sweep(inst: &mut Instance, shared: &Shared) {
    let _g = lock(&shared.maps_lock);
    let expired = match inst.bans.sweep() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("shield: warning: ban expiry on {}: {e}", inst.iface);
            return;
        }
    };
    if !expired.is_empty() {
        let mut comments = lock(&shared.comments);
        let mut audit = lock(&shared.audit);
        for b in &expired {
            let c = comments.remove(&comment_key(&inst.iface, b));
            let mut line = ban_json("ban_end", &inst.iface, b, c.as_ref());
            line["level"] = b.level.into();
            audit.write(line);
        }
    }
    let any = !inst.bans.list().is_empty();
    if let Err(e) = inst
        .bans
        .set_bans_flag(shared.escalates.load(Ordering::Relaxed) || any)
    {
        eprintln!("shield: warning: {}: {e}", inst.iface);
    }
}

/// Logs the start and end of attacks on rules' `unverified` budgets and records them in the
/// maps for `shield stats`.
fn watch_attacks(inst: &Instance, shared: &Shared, tracker: &mut crate::attack::Tracker) {
    let totals = match crate::stats::unverified_drops(&inst.dir, &inst.tables) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("shield: warning: attack tracking on {}: {e}", inst.iface);
            return;
        }
    };
    let offset = inst.tables.control().map_or(0, |c| c.clock_offset_ns);
    let now = crate::bans::mono_coarse_ns().wrapping_add(offset);
    let prefix = format!("{}|", inst.iface);
    tracker.retain(|k| {
        !k.starts_with(&prefix) || totals.iter().any(|(_, n, _)| k == format!("{prefix}{n}"))
    });
    for (id, name, total) in totals {
        let key = format!("{prefix}{name}");
        let first = !tracker.knows(&key);
        let change = tracker.observe(&key, total, now);
        let line = match change {
            // A new daemon starts calm: clear what a previous one may have left.
            None if first => {
                if let Err(e) = crate::stats::set_attack(&inst.dir, id, 0) {
                    eprintln!("shield: warning: {}: {e}", inst.iface);
                }
                continue;
            }
            None => continue,
            Some(crate::attack::Change::Start) => json!({
                "event": "attack_start",
                "iface": inst.iface,
                "rule": name,
            }),
            Some(crate::attack::Change::End { secs, dropped }) => json!({
                "event": "attack_end",
                "iface": inst.iface,
                "rule": name,
                "duration_secs": (secs * 10.0).round() / 10.0,
                "dropped": dropped,
            }),
        };
        if let Err(e) = crate::stats::set_attack(&inst.dir, id, tracker.since(&key).unwrap_or(0)) {
            eprintln!("shield: warning: {}: {e}", inst.iface);
        }
        lock(&shared.audit).write(line);
    }
}

fn handle(shared: &Shared, req: Request) -> Result<serde_json::Value, String> {
    match req {
        Request::Ping {} => Ok(json!({"pong": true})),
        Request::Reload {} => {
            let (tx, rx) = mpsc::channel();
            lock(&shared.to_main)
                .send(MainRequest::Reload(tx))
                .map_err(|_| "the daemon is shutting down".to_string())?;
            rx.recv_timeout(Duration::from_secs(120))
                .map_err(|_| "the reload did not finish within 120 s".to_string())?
        }
        Request::Policy {} => {
            let (path, generation, matrix) = lock(&shared.running).clone();
            Ok(
                json!({"path": path.display().to_string(), "generation": generation, "matrix": matrix}),
            )
        }
        Request::Bans {} => {
            let mut all = Vec::new();
            let comments = lock(&shared.comments);
            for (iface, dir) in &shared.ifaces {
                let maps = BanMaps::open(dir).map_err(|e| e.to_string())?;
                for mut b in maps.active() {
                    b.iface = iface.clone();
                    b.comment = comments.get(&comment_key(iface, &b)).cloned();
                    all.push(b);
                }
            }
            Ok(json!({"bans": all}))
        }
        Request::Ban {
            source,
            duration,
            rule,
            reason,
        } => {
            let cidr = parse_cidr(&source).map_err(|e| format!("source \"{source}\": {e}"))?;
            let dur =
                parse_duration(&duration).map_err(|e| format!("duration \"{duration}\": {e}"))?;
            let max = Duration::from_nanos(shield_common::judge::MAX_BAN_NS);
            if dur < Duration::from_secs(1) || dur > max {
                return Err(format!(
                    "duration must be between 1s and {}, got {}",
                    format_duration(max),
                    format_duration(dur)
                ));
            }
            if reason.as_ref().is_some_and(|r| r.len() > 512) {
                return Err("reason is longer than 512 bytes".into());
            }
            let _g = lock(&shared.maps_lock);
            let mut done = Vec::new();
            for (iface, dir) in &shared.ifaces {
                let mut maps = BanMaps::open(dir).map_err(|e| e.to_string())?;
                let mut b = maps
                    .ban(cidr, dur, rule.as_deref())
                    .map_err(|e| e.to_string())?;
                b.iface = iface.clone();
                if let Some(r) = &reason {
                    lock(&shared.comments).insert(comment_key(iface, &b), r.clone());
                    b.comment = Some(r.clone());
                }
                let mut line = ban_json("ban", iface, &b, reason.as_ref());
                line["reason"] = "manual".into();
                line["expires"] =
                    rfc3339(SystemTime::now() + Duration::from_secs_f64(b.remaining_secs)).into();
                lock(&shared.audit).write(line);
                done.push(b);
            }
            Ok(json!({"bans": done}))
        }
        Request::Unban { source } => {
            let cidr = parse_cidr(&source).map_err(|e| format!("source \"{source}\": {e}"))?;
            let _g = lock(&shared.maps_lock);
            let mut removed = Vec::new();
            for (iface, dir) in &shared.ifaces {
                let mut maps = BanMaps::open(dir).map_err(|e| e.to_string())?;
                for mut b in maps.unban(cidr).map_err(|e| e.to_string())? {
                    b.iface = iface.clone();
                    let c = lock(&shared.comments).remove(&comment_key(iface, &b));
                    lock(&shared.audit).write(ban_json("unban", iface, &b, c.as_ref()));
                    removed.push(b);
                }
            }
            Ok(json!({"removed": removed}))
        }
    }
}
