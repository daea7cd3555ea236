//! `shield run`: load, fill, attach on every interface; then, until SIGTERM/SIGINT, turn
//! data-path events into audit lines, expire bans, and serve the control socket.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, RingBuf},
};
use serde_json::json;
use shield_common::{
    EV_BAN, EV_LIMITED, EV_WOULD_BAN, Event, GlobalConfig, MAP_CONFIG, MAP_EVENTS, Reason,
    addr::FAMILY_V4,
};

use crate::{
    audit::{AuditLog, rfc3339},
    bans::{BanEntry, BanMaps},
    control::{ControlServer, Request},
    loader::{self, AttachMode, Attached},
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
}

/// One protected interface. Dropping `ebpf` detaches the program (aya drops the link); the
/// pinned maps stay, so `shield stats` still reads the last counters.
struct Instance {
    iface: String,
    ring: RingBuf<MapData>,
    bans: BanMaps,
    _ebpf: Ebpf,
}

/// What the control socket's threads share with the main loop.
struct Shared {
    ifaces: Vec<(String, PathBuf)>,
    audit: Mutex<AuditLog>,
    /// Operator comments of manual bans, by `iface|source|rule`.
    comments: Mutex<HashMap<String, String>>,
    /// Serialises ban-map writes (control socket, expiry sweep) so the CFG_BANS flag is
    /// never cleared while a ban is being added.
    ban_lock: Mutex<()>,
    /// The policy escalates: ban lookups stay on even with no ban active.
    escalates: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked holder cannot leave these structures inconsistent: keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn comment_key(iface: &str, b: &BanEntry) -> String {
    format!("{iface}|{}|{}", b.source, b.rule)
}

/// The generation stored in an adopted config map, so that it keeps counting up.
fn previous_generation(ebpf: &mut Ebpf) -> u32 {
    ebpf.map_mut(MAP_CONFIG)
        .and_then(|m| Array::<_, GlobalConfig>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .map_or(0, |c| c.generation)
}

pub fn run(opts: &RunOptions) -> Result<()> {
    loader::require_root()?;
    anyhow::ensure!(!opts.ifaces.is_empty(), "give at least one --iface");
    let policy = policy::load(&opts.policy)?;
    let compiled = policy::compile(&policy);
    // Check every interface before touching any, so a typo changes nothing.
    for iface in &opts.ifaces {
        loader::if_index(iface)?;
    }
    let audit = AuditLog::open(opts.audit_log.as_deref()).context("opening the audit log")?;
    loader::ensure_bpffs(&opts.bpffs)?;

    let mut instances = Vec::new();
    for iface in &opts.ifaces {
        let dir = loader::pin_dir(&opts.bpffs, iface);
        let mut ebpf = loader::load(&dir, compiled.max_sources)
            .with_context(|| format!("loading shield for {iface}"))?;
        let generation = previous_generation(&mut ebpf).wrapping_add(1);
        loader::sync(&mut ebpf, &compiled, generation)
            .with_context(|| format!("filling maps for {iface} from {}", opts.policy.display()))?;
        let ring = RingBuf::try_from(
            ebpf.take_map(MAP_EVENTS)
                .ok_or(loader::LoaderError::Missing(MAP_EVENTS))?,
        )
        .context("opening the event ring buffer")?;
        let bans = BanMaps::open(&dir).context("opening the ban maps")?;
        let (_, attached) = loader::attach(&mut ebpf, iface, opts.xdp_mode)
            .with_context(|| format!("attaching to {iface}"))?;
        if attached == Attached::Generic && opts.xdp_mode == AttachMode::Auto {
            eprintln!(
                "shield: warning: {iface} does not support native XDP; attached in generic mode (slower: packets reach XDP after the kernel allocated an skb)"
            );
        }
        eprintln!(
            "shield: protecting {iface} ({} XDP), policy {} generation {generation}: {} rules, {} allow and {} deny prefixes, mode {}; maps pinned in {}",
            attached.name(),
            opts.policy.display(),
            policy.rules.len(),
            policy.allow.len(),
            policy.deny.len(),
            policy.mode,
            dir.display()
        );
        instances.push((
            dir,
            Instance {
                iface: iface.clone(),
                ring,
                bans,
                _ebpf: ebpf,
            },
        ));
    }

    let shared = Arc::new(Shared {
        ifaces: instances
            .iter()
            .map(|(d, i)| (i.iface.clone(), d.clone()))
            .collect(),
        audit: Mutex::new(audit),
        comments: Mutex::new(HashMap::new()),
        ban_lock: Mutex::new(()),
        escalates: policy.rules.iter().any(|r| r.escalation.is_some()),
    });
    let mut instances: Vec<Instance> = instances.into_iter().map(|(_, i)| i).collect();
    let handler_shared = shared.clone();
    let _control = ControlServer::start(
        &opts.socket,
        Arc::new(move |req| handle(&handler_shared, req)),
    )
    .with_context(|| format!("control socket {}", opts.socket.display()))?;

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
    eprintln!(
        "shield: running; control socket {}; SIGTERM or Ctrl-C detaches",
        opts.socket.display()
    );

    let mut last_sweep = Instant::now();
    while !term.load(Ordering::Relaxed) {
        wait_readable(&instances, Duration::from_millis(200));
        for inst in &mut instances {
            drain_events(inst, &shared);
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            for inst in &mut instances {
                sweep(inst, &shared);
            }
        }
        if usr1.swap(false, Ordering::Relaxed)
            && let Err(e) = lock(&shared.audit).reopen()
        {
            eprintln!("shield: warning: SIGUSR1: cannot reopen the audit log: {e}");
        }
        if hup.swap(false, Ordering::Relaxed) {
            eprintln!(
                "shield: SIGHUP: live reload is not available in this version; restart shield to apply a new policy (the pinned counters, limiter state and bans are kept)"
            );
        }
    }
    drop(_control);
    for inst in &mut instances {
        drain_events(inst, &shared);
    }
    for inst in instances {
        let iface = inst.iface.clone();
        drop(inst);
        eprintln!("shield: detached from {iface}");
    }
    Ok(())
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

/// Wall-clock time of a data-path timestamp (past or future, e.g. a ban's expiry).
fn wall_of(ts_ns: u64, mono_now: u64) -> SystemTime {
    let now = SystemTime::now();
    if ts_ns >= mono_now {
        now + Duration::from_nanos(ts_ns - mono_now)
    } else {
        now.checked_sub(Duration::from_nanos(mono_now - ts_ns))
            .unwrap_or(now)
    }
}

fn drain_events(inst: &mut Instance, shared: &Shared) {
    let mono_now = inst.bans.now();
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
        .map(|ev| event_json(inst, ev, mono_now))
        .collect();
    if !lines.is_empty() {
        let mut audit = lock(&shared.audit);
        for l in lines {
            audit.write(l);
        }
    }
}

fn event_json(inst: &Instance, ev: &Event, mono_now: u64) -> serde_json::Value {
    let k = &ev.key;
    let ip: std::net::IpAddr = if k.family == FAMILY_V4 {
        std::net::Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]).into()
    } else {
        std::net::Ipv6Addr::from(k.addr).into()
    };
    let reason = Reason::from_code(ev.reason).map_or("unknown", Reason::name);
    let mut v = json!({
        "ts": rfc3339(wall_of(ev.ts_ns, mono_now)),
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
                rfc3339(wall_of(ev.ts_ns.saturating_add(ev.duration_ns), mono_now)).into(),
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
    let _g = lock(&shared.ban_lock);
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
    if let Err(e) = inst.bans.set_bans_flag(shared.escalates || any) {
        eprintln!("shield: warning: {}: {e}", inst.iface);
    }
}

fn handle(shared: &Shared, req: Request) -> Result<serde_json::Value, String> {
    match req {
        Request::Ping {} => Ok(json!({"pong": true})),
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
            let _g = lock(&shared.ban_lock);
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
            let _g = lock(&shared.ban_lock);
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
