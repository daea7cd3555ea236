//! `shield run`: every check, then load, fill and attach on every interface; then one tokio
//! run loop until SIGTERM/SIGINT.
//!
//! Shape: one task (`owner::Owner`) owns the interfaces and their maps. Everything else sends
//! it messages with one-shot replies: the control socket's client tasks (`control`), one task
//! per ring buffer (`events`, through `AsyncFd`), the policy file watch; signals and the
//! 1-second tick are branches of its loop. A reload (policy parse and map writes, seconds for
//! 1,000,000 prefixes) runs in `spawn_blocking` with the maps moved into it, so the owner
//! keeps answering `ping`, draining events and serving metrics (`http`) meanwhile; requests
//! that need the maps wait for it in order.

mod app;
mod control;
mod events;
mod fleet;
mod guards;

pub use events::rare_conditions;
pub(crate) use install::{
    InstallDone, Tables, drop_stale_bans, ids_of, install_all, reloaded, stale_bans_ended,
};
mod http;
mod install;
mod owner;
mod upkeep;

use guards::{MountGuard, RemoveEmptyOnDrop, resolved, warn_if_private_mounts};

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::links::FdLink,
};
use shield_common::MAP_EVENTS;
use tracing::{info, warn};

use crate::{
    audit::AuditLog,
    bans::BanMaps,
    loader::{self, AttachMode, Attached, PolicyMaps},
    metrics::DaemonCounters,
    policy,
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
    /// `--log-level`: also the XDP program's aya-log level.
    pub log_level: String,
    /// `--state-dir`: the active bans on disk, restored when the pins are gone.
    pub state_dir: PathBuf,
}

/// One protected interface. The link is pinned: it outlives the daemon unless `detach`
/// removes the pin first (a clean SIGTERM).
struct Instance {
    iface: String,
    dir: PathBuf,
    /// The policy tables, opened once from the pins; `None` while a reload job holds them.
    tables: Option<PolicyMaps>,
    /// The ban tables (their own handles on the pins): served during a reload too.
    bans: BanMaps,
    /// The ring buffer, until the events task takes it.
    ring: Option<RingBuf<MapData>>,
    /// The program's aya-log records, until the events task takes them.
    log: Option<aya_log::EbpfLogger<events::IfaceLog>>,
    link: Option<FdLink>,
    /// The kernel's id of our link: what the pin must still name for a clean stop to
    /// remove it, and what `lost` follows.
    link_id: Option<u32>,
    attached: Attached,
    /// Rule id → name of the policy in force (events arrive while a reload holds the maps).
    names: HashMap<u16, String>,
    /// The data path's test clock offset (0 in production), as last read.
    clock_offset_ns: u64,
    /// What this start changed, so that a failed start undoes exactly that: the pin
    /// directory was created now (else adopted), and the half in force before (adopted
    /// maps with a policy).
    created_dir: bool,
    previous_half: Option<u32>,
    /// `--fresh` set the old map pins aside (`loader::set_aside_map_pins`).
    set_aside: bool,
    /// The program an adopted link ran before this start (kept alive to be put back).
    previous_program: Option<std::os::fd::OwnedFd>,
    /// The interface's syncookie nftables table before this start (`synproxy::snapshot`).
    previous_syncookie: Option<String>,
    /// The rebuild of the source table's filter (`loader::SfilterRebuild`).
    sfilter: crate::loader::SfilterRebuild,
    /// The interface's exclusive lock (see `loader::lock_iface`), held for the daemon's life.
    _lock: std::fs::File,
    _ebpf: Ebpf,
}

impl Instance {
    /// Clean stop: unpin the link (only if the pin is still ours: another run may have
    /// pinned its own since), then drop it: the program detaches.
    fn detach(&mut self) {
        let pin = self.dir.join(shield_common::LINK_PIN);
        if self.link_id.is_some() && loader::pinned_link_facts(&pin).map(|f| f.id) == self.link_id {
            let _ = std::fs::remove_file(pin);
        }
        self.link = None;
        if let Err(e) = crate::synproxy::remove(&self.iface) {
            warn!(iface = %self.iface, "cannot remove the syncookie nftables table: {e}");
        }
    }

    /// Why the program no longer protects the interface (`shield detach`, the interface
    /// gone or renamed), if that happened behind the daemon's back. Follows the daemon's
    /// own link, not the pin.
    fn lost(&self) -> Option<String> {
        let want = match loader::if_index_now(&self.iface) {
            Ok(Some(i)) => i,
            Ok(None) => return Some(format!("interface {} no longer exists", self.iface)),
            // The lookup itself failed (out of fds, …): nothing can be said this time.
            Err(_) => return None,
        };
        let facts = self.link_id.and_then(loader::link_facts_by_id)?;
        if facts.ifindex == 0 {
            return Some(format!(
                "shield was detached from {} (e.g. by `shield detach`)",
                self.iface
            ));
        }
        if facts.ifindex != want {
            return Some(format!(
                "interface {} was renamed or replaced: the program runs on interface index {}, {} is now index {want}",
                self.iface, facts.ifindex, self.iface
            ));
        }
        None
    }

    /// Lends the policy tables to an install (`None` if a reload holds them).
    fn lend(&mut self) -> Option<Tables> {
        self.tables.take().map(|maps| Tables {
            iface: self.iface.clone(),
            dir: self.dir.clone(),
            maps,
        })
    }

    /// The interface, its policy tables and its ban tables, for `drop_stale_bans`.
    fn with_bans(&mut self) -> Option<(&str, &mut PolicyMaps, &mut BanMaps)> {
        let tables = self.tables.as_mut()?;
        Some((self.iface.as_str(), tables, &mut self.bans))
    }

    /// Re-reads the rule names and the clock offset from the maps (after an install).
    fn refresh_names(&mut self) {
        let Some(m) = &self.tables else { return };
        if let Ok(rules) = m.current_rules() {
            self.names = rules
                .into_iter()
                .map(|(id, r)| (id as u16, crate::loader::rule_name(&r)))
                .collect();
        }
        self.clock_offset_ns = m.control().map_or(0, |c| c.clock_offset_ns);
    }

    fn rule_name(&self, id: u16) -> String {
        if id == 0 {
            return String::new();
        }
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }
}

/// Undoes what a failed start did, interface by interface: detaches a program this start
/// attached, gives adopted maps back the policy they had (whole: the start kept their old
/// lists, see `PolicyMaps::keep_old_lists`), removes pins this start created. Leaves alone
/// what an earlier (adopted) run set up.
fn undo_start(instances: Vec<Instance>, created: &[PathBuf]) {
    for mut inst in instances.into_iter().rev() {
        if inst.attached != Attached::Adopted && inst.link.is_some() {
            inst.detach();
        }
        // The syncookie table as it was before the install: none where there was none (the
        // program never attached, nothing answers cookies), and the one an earlier run's
        // program, still in force (adopted, or left attached by an undo before attaching:
        // a crash's link), needs.
        if let Err(e) = crate::synproxy::restore(&inst.iface, inst.previous_syncookie.as_deref()) {
            warn!(iface = %inst.iface, "cannot put the syncookie nftables table back: {e}");
        }
        if inst.attached == Attached::Adopted
            && let Some(prog) = &inst.previous_program
        {
            use std::os::fd::AsFd as _;
            let pin = inst.dir.join(shield_common::LINK_PIN);
            if let Err(e) = loader::restore_link_program(&pin, prog.as_fd()) {
                warn!(iface = %inst.iface, "cannot give the link its previous program back: {e}");
            }
        }
        if inst.set_aside {
            let dir = inst.dir.clone();
            drop(inst);
            loader::restore_aside_map_pins(&dir);
        } else if !inst.created_dir
            && let Some(half) = inst.previous_half
            && let Some(m) = inst.tables.as_mut()
            && let Err(e) = m.restore_half(half)
        {
            warn!(iface = %inst.iface, "cannot restore the previous policy: {e}");
        }
    }
    for dir in created {
        let _ = loader::remove_map_pins(dir);
        let _ = std::fs::remove_file(dir.join(shield_common::MAP_BAN_NOTES));
        let _ = std::fs::remove_file(dir.join(shield_common::LINK_PIN));
        let _ = std::fs::remove_dir(dir);
    }
}

pub fn run(opts: &RunOptions) -> Result<()> {
    // No --iface: app-only mode (the application layer alone, no XDP, no bpffs, no root).
    let app_only = opts.ifaces.is_empty();
    if !app_only {
        loader::require_root()?;
    }
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("shield")
        .build()
        .context("starting the tokio runtime")?;
    // Before anything changes: a Ctrl-C or SIGTERM during the start no longer kills the
    // process half-way (sockets bound, perhaps attached); it is looked at before attaching
    // (then the start is undone) and otherwise stops the daemon as soon as it serves.
    let mut stop = {
        let _context = runtime.enter();
        owner::StopSignals::register()?
    };
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
    anyhow::ensure!(
        !app_only || policy.app.is_some(),
        "give at least one --iface (without one, shield run serves the application layer only, and {} has no [app])",
        opts.policy.display()
    );
    if app_only {
        info!(
            "app-only mode: no --iface, the application layer alone (no XDP; bans are enforced at L7 as 403s)"
        );
    }
    for w in policy::warnings(&policy) {
        warn!("{}: {w}", opts.policy.display());
    }
    if let Some(log) = opts.audit_log.as_deref().filter(|l| *l != "-") {
        let log = std::path::Path::new(log);
        anyhow::ensure!(
            !crate::audit::same_file(log, &opts.policy),
            "--audit-log {} is the policy file (--policy); give the audit log a file of its own",
            log.display()
        );
        // Compared resolved too: `--audit-log s.sock --socket /run/x/s.sock` from /run/x
        // names one file (the socket is not bound yet, so it may not exist).
        anyhow::ensure!(
            log != opts.socket.as_path()
                && !crate::audit::same_file(log, &opts.socket)
                && resolved(log).is_none_or(|l| Some(l) != resolved(&opts.socket)),
            "--audit-log {} is the control socket (--socket); give the audit log a file of its own",
            log.display()
        );
        // The whole key file is the key: a line appended would change it at the next start,
        // and the fleet would refuse this host's bans (and it the fleet's).
        if let Some(k) = policy.fleet.as_ref().and_then(|f| f.key_file.as_ref()) {
            anyhow::ensure!(
                !crate::audit::same_file(log, k),
                "--audit-log {} is the fleet key file ([fleet] key_file); give the audit log a file of its own",
                log.display()
            );
        }
    }
    if let Some(k) = policy.fleet.as_ref().and_then(|f| f.key_file.as_ref()) {
        crate::fleet::read_key(k).map_err(anyhow::Error::msg)?;
    }
    anyhow::ensure!(
        !opts.state_dir.exists() || opts.state_dir.is_dir(),
        "--state-dir {} is not a directory",
        opts.state_dir.display()
    );
    // A running daemon holds it: refused here (the lock itself is taken once started).
    crate::fleet::state::probe_dir(&opts.state_dir).map_err(anyhow::Error::msg)?;
    // An audit log this start creates is removed again if the start fails (while empty).
    let mut new_audit = RemoveEmptyOnDrop(
        opts.audit_log
            .as_deref()
            .filter(|l| *l != "-")
            .map(PathBuf::from)
            .filter(|p| p.symlink_metadata().is_err()),
    );
    let audit = AuditLog::open(opts.audit_log.as_deref()).context("opening the audit log")?;
    let mut mount = MountGuard::default();
    if !app_only {
        // The directories this start creates for the mount go again if it fails.
        mount.created = loader::first_missing_dir(&opts.bpffs);
        mount.path = Some(opts.bpffs.clone());
        if loader::ensure_bpffs(&opts.bpffs)? {
            mount.mounted = true;
            warn_if_private_mounts(&opts.bpffs);
        }
    }
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
    let socket = match control::bind(&opts.socket) {
        Ok(s) => s,
        Err(e) => {
            undo_start(Vec::new(), &created);
            return Err(
                anyhow::Error::new(e).context(format!("control socket {}", opts.socket.display()))
            );
        }
    };
    if let Some(a) = &policy.app
        && a.socket == opts.socket
    {
        undo_start(Vec::new(), &created);
        anyhow::bail!(
            "[app] socket {} is the control socket (--socket): give the app socket a path of its own",
            a.socket.display()
        );
    }
    let app_socket = match policy.app.as_ref().map(app::bind).transpose() {
        Ok(s) => s,
        Err(e) => {
            undo_start(Vec::new(), &created);
            let path = policy.app.as_ref().map(|a| a.socket.display().to_string());
            return Err(
                anyhow::Error::new(e).context(format!("app socket {}", path.unwrap_or_default()))
            );
        }
    };
    let metrics_listener = match opts.metrics.map(crate::metrics::bind).transpose() {
        Ok(l) => l,
        Err(e) => {
            undo_start(Vec::new(), &created);
            return Err(anyhow::anyhow!(e));
        }
    };

    let mut instances = Vec::new();
    let mut ids = HashMap::new();
    let mut generation = 0;
    if let Err(e) = bring_up(
        opts,
        &policy,
        locks,
        &mut instances,
        &mut ids,
        &mut generation,
    ) {
        undo_start(instances, &created);
        return Err(e);
    }
    // Fill the maps before attaching: the program never runs on a half-filled table.
    let compiled = policy::compile_with_ids(&policy, &ids);
    generation = generation.wrapping_add(1).max(1);
    let started = std::time::Instant::now();
    let mut all: Vec<Tables> = instances.iter_mut().filter_map(Instance::lend).collect();
    let installed = install_all(&mut all, &policy, &compiled, generation);
    for (inst, t) in instances.iter_mut().zip(all) {
        inst.tables = Some(t.maps);
    }
    let done = match installed {
        Ok(d) => d,
        Err(e) => {
            undo_start(instances, &created);
            anyhow::bail!("filling maps from {}: {e}", opts.policy.display());
        }
    };
    let first = reloaded(&policy, generation, &done, started.elapsed());
    let mut audit = audit;
    let previous_ids = ids;
    let ids = ids_of(&policy, &previous_ids);
    if let Some(sig) = runtime.block_on(stop.pending()) {
        undo_start(instances, &created);
        info!("{sig} during the start: stopped before attaching, nothing changed");
        return Ok(());
    }
    for i in 0..instances.len() {
        let inst = &mut instances[i];
        match loader::attach(&mut inst._ebpf, &inst.iface, opts.xdp_mode, &inst.dir) {
            Ok((link, attached)) => {
                inst.link_id = link.info().ok().map(|i| i.id());
                inst.link = Some(link);
                inst.attached = attached;
            }
            Err(e) => {
                let iface = inst.iface.clone();
                undo_start(instances, &created);
                return Err(anyhow::Error::new(e).context(format!("attaching to {iface}")));
            }
        }
    }
    // Attached: the policy is in force for good, and the bans it leaves stale go.
    let dropped = drop_stale_bans(
        instances.iter_mut().filter_map(Instance::with_bans),
        &previous_ids,
    );
    stale_bans_ended(&mut audit, &dropped);
    for inst in &mut instances {
        if let Some(m) = inst.tables.as_mut()
            && let Err(e) = m.settle()
        {
            warn!(iface = %inst.iface, "emptying the previous allow/deny lists: {e}");
        }
        inst.refresh_names();
        if inst.attached == Attached::Generic && opts.xdp_mode == AttachMode::Auto {
            warn!(
                iface = %inst.iface,
                "{} does not support native XDP; attached in generic mode (slower: packets reach XDP after the kernel allocated an skb)",
                inst.iface
            );
        }
        info!(
            iface = %inst.iface,
            "protecting {} ({} XDP), policy {} generation {}: {} rules, {} allow and {} deny prefixes, mode {}; maps pinned in {}",
            inst.iface,
            inst.attached.name(),
            opts.policy.display(),
            generation,
            policy.rules.len(),
            policy.allow.len(),
            policy.deny.len(),
            policy.mode,
            inst.dir.display()
        );
    }
    // Started: the bpffs this start mounted stays (it holds the pins); the maps `--fresh`
    // set aside go for good.
    mount.path = None;
    new_audit.0 = None;
    for inst in &mut instances {
        if inst.set_aside {
            loader::drop_aside_map_pins(&inst.dir);
        }
        inst.previous_program = None;
    }
    let counters = Arc::new(DaemonCounters::default());
    counters.last_reload_us.store(
        first.took_ms as u64 * 1000,
        std::sync::atomic::Ordering::Relaxed,
    );

    let app_counters = Arc::new(crate::app::AppCounters::default());
    // Created once the start succeeded (a failed start leaves nothing behind); without it
    // the bans do not survive a reboot, which is said, not fatal.
    // Then locked for the daemon's life. Another daemon that took it meanwhile (started at
    // the same moment) keeps it: this one, attached already, runs without it.
    let mut state_lock = None;
    if let Err(e) = crate::fleet::state::ensure_dir(&opts.state_dir) {
        warn!("{e}: the active bans are not kept on disk");
    } else {
        match crate::fleet::state::lock_dir(&opts.state_dir) {
            Ok(l) => state_lock = l,
            Err(e) => {
                crate::fleet::state::in_use_elsewhere();
                warn!("{e}: this daemon's active bans are not kept on disk");
            }
        }
    }
    // Pins gone (a reboot, or removed): the bans saved in --state-dir come back.
    let restore = instances
        .iter()
        .filter(|i| i.created_dir && !opts.fresh)
        .map(|i| i.iface.clone())
        .collect();
    let state = owner::Start {
        instances,
        policy,
        path: opts.policy.clone(),
        generation,
        ids,
        audit,
        counters,
        socket_path: opts.socket.clone(),
        bpffs: opts.bpffs.clone(),
        state_dir: opts.state_dir.clone(),
        restore,
        app: app_socket,
        app_counters,
        stop,
    };
    let served = runtime.block_on(owner::serve(state, socket, metrics_listener));
    drop(state_lock);
    served
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
        // An earlier run's link (a crash, `kill -9`): its program, to put back if this
        // start fails after taking the link over.
        let previous_program = loader::pinned_link_facts(&dir.join(shield_common::LINK_PIN))
            .and_then(|f| loader::prog_fd_by_id(f.prog_id));
        let previous_syncookie = crate::synproxy::snapshot(&iface)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{iface}: syncookie"))?;
        let set_aside = opts.fresh
            && loader::set_aside_map_pins(&dir)
                .with_context(|| format!("--fresh: setting aside the maps in {}", dir.display()))?;
        let opened = open_iface(
            &iface,
            &dir,
            &opts.log_level,
            policy,
            previous_ids,
            generation,
        );
        let (ebpf, tables, bans, ring, log, previous_half) = match opened {
            Ok(o) => o,
            Err(e) => {
                if set_aside {
                    loader::restore_aside_map_pins(&dir);
                }
                return Err(e);
            }
        };
        instances.push(Instance {
            iface,
            dir,
            tables: Some(tables),
            bans,
            ring: Some(ring),
            log,
            link: None,
            link_id: None,
            attached: Attached::Native,
            names: HashMap::new(),
            clock_offset_ns: 0,
            created_dir,
            previous_half,
            set_aside,
            previous_program,
            previous_syncookie,
            sfilter: crate::loader::SfilterRebuild::new(),
            _lock: lock_file,
            _ebpf: ebpf,
        });
    }
    Ok(())
}

/// What `bring_up` opens for one interface: the loaded object, its maps, its ring buffer,
/// and the half in force before (adopted maps with a policy).
type Opened = (
    Ebpf,
    PolicyMaps,
    BanMaps,
    RingBuf<MapData>,
    Option<aya_log::EbpfLogger<events::IfaceLog>>,
    Option<u32>,
);

fn open_iface(
    iface: &str,
    dir: &std::path::Path,
    log_level: &str,
    policy: &policy::Policy,
    previous_ids: &mut HashMap<String, u32>,
    generation: &mut u32,
) -> Result<Opened> {
    // The tables come from the load, which listed the tries: they know what each list half
    // holds.
    let (mut ebpf, mut tables) = loader::load_with_tables(
        dir,
        policy.max_sources,
        loader::program_log_level(log_level),
    )
    .with_context(|| format!("loading shield for {iface}"))?;
    BanMaps::ensure_notes(dir).context("creating the ban notes map")?;
    // Until the start succeeds, a list swap keeps the old lists (see `undo_start`).
    tables.keep_old_lists = true;
    let mut previous_half = None;
    // Adopted maps: keep rule ids (state, bans, counters) and keep counting generations.
    for (id, r) in tables.current_rules()? {
        previous_ids.insert(crate::loader::rule_name(&r), id);
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
    let bans = BanMaps::open(dir).context("opening the ban maps")?;
    let log = aya_log::EbpfLogger::init_with_logger(
        &mut ebpf,
        events::IfaceLog {
            iface: iface.to_string(),
        },
    )
    .map_err(|e| warn!(%iface, "the XDP program's log is not available: {e}"))
    .ok();
    Ok((ebpf, tables, bans, ring, log, previous_half))
}

/// Raises the soft limit on open files to the hard one: the control socket (64 clients),
/// /metrics and the maps of every interface need more than a default 1,024 leaves room
/// for when a scraper or a client misbehaves.
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer; then a limit within the hard one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
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
