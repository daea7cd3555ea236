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
    CFG_BANS, EV_BAN, EV_LIMITED, EV_WOULD_BAN, Event, MAP_EVENTS, Reason, addr::FAMILY_V4,
};

use crate::{
    audit::{AuditLog, rfc3339},
    bans::{BanEntry, BanFloor, BanMaps},
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
    pub metrics: Option<std::net::SocketAddr>,
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
    /// What this start changed, so that a failed start undoes exactly that: the pin
    /// directory was created now (else adopted), and the half in force before (adopted
    /// maps with a policy).
    created_dir: bool,
    previous_half: Option<u32>,
    /// The interface's exclusive lock (see `loader::lock_iface`), held for the daemon's life.
    _lock: std::fs::File,
    _ebpf: Ebpf,
}

impl Instance {
    /// Clean stop: unpin the link, then drop it: the program detaches.
    fn detach(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(shield_common::LINK_PIN));
        self.link = None;
    }

    /// Why the program no longer protects the interface (`shield detach`, the interface
    /// gone), if that happened behind the daemon's back.
    fn lost(&self) -> Option<String> {
        if loader::if_index(&self.iface).is_err() {
            return Some(format!("interface {} no longer exists", self.iface));
        }
        if self.link.is_some() && !loader::link_attached(&self.dir.join(shield_common::LINK_PIN)) {
            return Some(format!(
                "shield was detached from {} (its pins under {} were removed, e.g. by `shield detach`)",
                self.iface,
                self.dir.display()
            ));
        }
        None
    }
}

/// Undoes what a failed start did, interface by interface: detaches a program this start
/// attached, gives adopted maps back the policy they had (whole: the start kept their old
/// lists, see `PolicyMaps::keep_old_lists`), removes pins this start created.
/// Leaves alone what an earlier (adopted) run set up.
fn undo_start(instances: Vec<Instance>, created: &[PathBuf]) {
    for mut inst in instances.into_iter().rev() {
        match inst.attached {
            Attached::Adopted => {}
            _ if inst.link.is_some() => inst.detach(),
            _ => {}
        }
        if !inst.created_dir
            && let Some(half) = inst.previous_half
            && let Err(e) = inst.tables.restore_half(half)
        {
            eprintln!(
                "shield: warning: {}: cannot restore the previous policy: {e}",
                inst.iface
            );
        }
    }
    for dir in created {
        let _ = loader::remove_map_pins(dir);
        let _ = std::fs::remove_file(dir.join(shield_common::MAP_BAN_NOTES));
        let _ = std::fs::remove_file(dir.join(shield_common::LINK_PIN));
        let _ = std::fs::remove_dir(dir);
    }
}

/// What the control socket's threads share with the main loop.
struct Shared {
    ifaces: Vec<(String, PathBuf)>,
    audit: Mutex<AuditLog>,
    /// Interfaces the daemon lost (detached behind its back, or gone), with why.
    lost: Mutex<HashMap<String, String>>,
    /// The running policy's allow list and ban floor (manual bans are checked against them).
    allow: Mutex<Vec<policy::Cidr>>,
    ban_floor: Mutex<BanFloor>,
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

/// Fails with the reason when the daemon lost an interface: its maps no longer act on
/// traffic, so a ban or a reload there would report success for nothing.
fn ensure_intact(shared: &Shared) -> Result<(), String> {
    let lost = lock(&shared.lost);
    match lost.values().next() {
        Some(why) => Err(format!(
            "{why}; this daemon no longer protects it: restart `shield run` to protect it again"
        )),
        None => Ok(()),
    }
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
        ensure_intact(shared)?;
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
        }
        self.ids = ids_of(&policy, &self.ids);
        self.generation = generation;
        shared.escalates.store(
            policy.rules.iter().any(|r| r.escalation.is_some()),
            Ordering::Relaxed,
        );
        *lock(&shared.running) = (self.path.clone(), generation, policy::matrix_table(&policy));
        *lock(&shared.allow) = policy.allow.clone();
        *lock(&shared.ban_floor) = BanFloor {
            ipv4: policy.min_ban_ipv4_prefix,
            ipv6: policy.min_ban_ipv6_prefix,
        };
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
            .and_then(|p| {
                for w in policy::warnings(&p) {
                    eprintln!("shield: warning: {}: {w}", self.path.display());
                }
                self.install(p, shared)
            });
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
    // Every check before anything changes: names, duplicates, existence, the policy, the
    // audit log, the interface locks and both listeners. Attaching comes last.
    let mut seen = std::collections::HashSet::new();
    for iface in &opts.ifaces {
        loader::check_iface(iface)?;
        anyhow::ensure!(
            seen.insert(iface),
            "--iface {iface} is given twice; name each interface once"
        );
        loader::if_index(iface)?;
    }
    let policy = policy::load(&opts.policy)?;
    for w in policy::warnings(&policy) {
        eprintln!("shield: warning: {}: {w}", opts.policy.display());
    }
    let audit = AuditLog::open(opts.audit_log.as_deref()).context("opening the audit log")?;
    loader::ensure_bpffs(&opts.bpffs)?;
    let mut locks = Vec::new();
    let mut created = Vec::new();
    for iface in &opts.ifaces {
        match loader::lock_iface(&opts.bpffs, iface) {
            Ok((file, was_created)) => {
                let dir = loader::pin_dir(&opts.bpffs, iface);
                if was_created {
                    created.push(dir.clone());
                }
                locks.push((iface.clone(), dir, file, was_created));
            }
            Err(e) => {
                undo_start(Vec::new(), &created);
                return Err(e.into());
            }
        }
    }
    let bound = match ControlServer::bind(&opts.socket) {
        Ok(b) => b,
        Err(e) => {
            undo_start(Vec::new(), &created);
            return Err(
                anyhow::Error::new(e).context(format!("control socket {}", opts.socket.display()))
            );
        }
    };
    let metrics_listener = match opts.metrics.map(metrics::bind).transpose() {
        Ok(l) => l,
        Err(e) => {
            undo_start(Vec::new(), &created);
            return Err(anyhow::anyhow!(e));
        }
    };

    let mut instances = Vec::new();
    let mut previous_ids = HashMap::new();
    let mut generation = 0;
    let brought_up = bring_up(
        opts,
        &policy,
        locks,
        &mut instances,
        &mut previous_ids,
        &mut generation,
    );
    if let Err(e) = brought_up {
        undo_start(instances, &created);
        return Err(e);
    }

    let (to_main, from_others) = mpsc::channel();
    let counters = Arc::new(DaemonCounters::default());
    let shared = Arc::new(Shared {
        ifaces: instances
            .iter()
            .map(|i| (i.iface.clone(), i.dir.clone()))
            .collect(),
        audit: Mutex::new(audit),
        lost: Mutex::new(HashMap::new()),
        allow: Mutex::new(Vec::new()),
        ban_floor: Mutex::new(BanFloor::default()),
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
    if let Err(e) = running.install(policy.clone(), &shared) {
        undo_start(running.instances, &created);
        anyhow::bail!("filling maps from {}: {e}", opts.policy.display());
    }
    for i in 0..running.instances.len() {
        let inst = &mut running.instances[i];
        match loader::attach(&mut inst._ebpf, &inst.iface, opts.xdp_mode, &inst.dir) {
            Ok((link, attached)) => {
                inst.link = Some(link);
                inst.attached = attached;
            }
            Err(e) => {
                let iface = inst.iface.clone();
                undo_start(running.instances, &created);
                return Err(anyhow::Error::new(e).context(format!("attaching to {iface}")));
            }
        }
    }
    for inst in &mut running.instances {
        if let Err(e) = inst.tables.settle() {
            eprintln!(
                "shield: warning: {}: emptying the previous allow/deny lists: {e}",
                inst.iface
            );
        }
        if inst.attached == Attached::Generic && opts.xdp_mode == AttachMode::Auto {
            eprintln!(
                "shield: warning: {} does not support native XDP; attached in generic mode (slower: packets reach XDP after the kernel allocated an skb)",
                inst.iface
            );
        }
        eprintln!(
            "shield: protecting {} ({} XDP), policy {} generation {}: {} rules, {} allow and {} deny prefixes, mode {}; maps pinned in {}",
            inst.iface,
            inst.attached.name(),
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
    let control = ControlServer::serve(bound, Arc::new(move |req| handle(&handler_shared, req)));
    let _metrics = match metrics_listener {
        Some(listener) => Some(
            MetricsServer::start(
                listener,
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
                if lock(&shared.lost).contains_key(&inst.iface) {
                    continue;
                }
                if let Some(why) = inst.lost() {
                    eprintln!(
                        "shield: error: {why}; this daemon no longer protects it (reload, ban and unban now fail); restart `shield run` to protect it again"
                    );
                    lock(&shared.audit).write(json!({
                        "event": "lost",
                        "iface": inst.iface,
                        "reason": why,
                    }));
                    lock(&shared.lost).insert(inst.iface.clone(), why);
                    continue;
                }
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
        if !lock(&shared.lost).contains_key(&inst.iface) {
            eprintln!("shield: detached from {}", inst.iface);
        }
    }
    lock(&shared.audit).write(json!({"event": "stop"}));
    Ok(())
}

/// Loads the program on every locked interface (adopting pinned maps unless `--fresh`),
/// pushing each into `instances` as it goes so a failure can be undone.
fn bring_up(
    opts: &RunOptions,
    policy: &policy::Policy,
    locks: Vec<(String, PathBuf, std::fs::File, bool)>,
    instances: &mut Vec<Instance>,
    previous_ids: &mut HashMap<String, u32>,
    generation: &mut u32,
) -> Result<()> {
    for (iface, dir, lock_file, created_dir) in locks {
        if opts.fresh {
            loader::remove_map_pins(&dir)
                .with_context(|| format!("--fresh: clearing {}", dir.display()))?;
            let _ = std::fs::remove_file(dir.join(shield_common::MAP_BAN_NOTES));
        }
        let mut ebpf = loader::load(&dir, policy.max_sources)
            .with_context(|| format!("loading shield for {iface}"))?;
        BanMaps::ensure_notes(&dir).context("creating the ban notes map")?;
        let mut tables = PolicyMaps::open(&dir).context("opening the policy tables")?;
        // Until the start succeeds, a list swap keeps the old lists (see `undo_start`).
        tables.keep_old_lists = true;
        let mut previous_half = None;
        // Adopted maps: keep rule ids (state, bans, counters) and keep counting generations.
        for (id, r) in tables.current_rules()? {
            previous_ids.insert(crate::stats::rule_name(&r), id);
        }
        if let Ok((half, cfg)) = tables.active()
            && cfg.flags & shield_common::CFG_LOADED != 0
        {
            *generation = (*generation).max(cfg.generation);
            previous_half = Some(half);
        }
        let ring = RingBuf::try_from(
            ebpf.take_map(MAP_EVENTS)
                .ok_or(loader::LoaderError::Missing(MAP_EVENTS))?,
        )
        .context("opening the event ring buffer")?;
        let bans = BanMaps::open(&dir).context("opening the ban maps")?;
        instances.push(Instance {
            iface,
            dir,
            ring,
            bans,
            tables,
            link: None,
            attached: Attached::Native,
            created_dir,
            previous_half,
            _lock: lock_file,
            _ebpf: ebpf,
        });
    }
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
        EV_BAN | EV_WOULD_BAN => {
            let kind = if ev.kind == EV_BAN {
                "ban"
            } else {
                "would_ban"
            };
            o.insert("event".into(), kind.into());
            o.insert("origin".into(), "automatic".into());
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
        let mut audit = lock(&shared.audit);
        for b in &expired {
            let mut line = ban_json("ban_end", &inst.iface, b, b.comment.as_ref());
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
            ensure_intact(shared)?;
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
            ensure_intact(shared)?;
            let mut all = Vec::new();
            for (iface, dir) in &shared.ifaces {
                let maps = BanMaps::open(dir).map_err(|e| e.to_string())?;
                for mut b in maps.active() {
                    b.iface = iface.clone();
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
            force,
        } => {
            ensure_intact(shared)?;
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
            if reason
                .as_ref()
                .is_some_and(|r| r.len() > shield_common::BAN_NOTE_MAX)
            {
                return Err(format!(
                    "reason is longer than {} bytes",
                    shield_common::BAN_NOTE_MAX
                ));
            }
            let floor = *lock(&shared.ban_floor);
            let warnings = {
                let allow = lock(&shared.allow);
                crate::bans::check_manual_ban(&cidr, &allow, floor, force)?
            };
            let _g = lock(&shared.maps_lock);
            let mut done = Vec::new();
            for (iface, dir) in &shared.ifaces {
                let mut maps = BanMaps::open(dir).map_err(|e| e.to_string())?;
                let outcome = maps
                    .ban(cidr, dur, rule.as_deref(), reason.as_deref())
                    .map_err(|e| e.to_string())?;
                let mut b = outcome.entry;
                b.iface = iface.clone();
                let mut line = ban_json("ban", iface, &b, b.comment.as_ref());
                line["reason"] = "manual".into();
                line["expires"] =
                    rfc3339(SystemTime::now() + Duration::from_secs_f64(b.remaining_secs)).into();
                if outcome.kept_longer {
                    line["event"] = "ban_kept".into();
                    line["origin"] = b.origin.into();
                    line["requested_secs"] = dur.as_secs_f64().into();
                }
                lock(&shared.audit).write(line);
                let mut v = serde_json::to_value(&b).map_err(|e| e.to_string())?;
                v["kept_longer"] = outcome.kept_longer.into();
                done.push(v);
            }
            Ok(json!({"bans": done, "warnings": warnings}))
        }
        Request::Unban { source } => {
            ensure_intact(shared)?;
            let cidr = parse_cidr(&source).map_err(|e| format!("source \"{source}\": {e}"))?;
            let _g = lock(&shared.maps_lock);
            let mut removed = Vec::new();
            for (iface, dir) in &shared.ifaces {
                let mut maps = BanMaps::open(dir).map_err(|e| e.to_string())?;
                for mut b in maps.unban(cidr).map_err(|e| e.to_string())? {
                    b.iface = iface.clone();
                    lock(&shared.audit).write(ban_json("unban", iface, &b, b.comment.as_ref()));
                    removed.push(b);
                }
            }
            Ok(json!({"removed": removed}))
        }
    }
}
