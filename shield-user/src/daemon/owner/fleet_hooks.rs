//! The owner's side of the fleet: every ban and unban this host issues goes through
//! `issued_ban` / `issued_unban` (published, and saved in `--state-dir`: state_dir.rs);
//! bans received from the fleet are installed by `fleet_apply` (same expiry, never
//! shorter, allow list, unknown rules, circuit breaker), never published again.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use serde_json::json;
use shield_common::{BAN_ATTEMPTS, BAN_MANUAL, Event, Reason};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::{Msg, Owner};

mod resync;
use crate::{
    audit::rfc3339,
    bans::{BanEntry, BanKey, BanSpec, Cuts, Origin},
    daemon::{
        Instance,
        fleet::{Inbound, Task},
    },
    fleet::{Breaker, Gate, Message, Op, Screened, Signer, now_ms},
    policy::{BanScope, parse_cidr},
};

/// The owner's end of the fleet.
pub(in crate::daemon) struct Link {
    tx: mpsc::Sender<Message>,
    breaker: Breaker,
    max_per_minute: u32,
    /// Bans installed from the fleet (`SOURCE|SCOPE|RULE` → the host that issued them).
    origins: HashMap<String, String>,
    /// When each of them was issued on its host (unix ms): what a received unban is
    /// compared with (installed here later, in a catch-up, it was still issued then).
    issued: HashMap<String, u64>,
    ticks: u64,
    /// When "the ban table is full" was last logged (at most once a minute: a storm of
    /// received bans past the table logged one line per ban, 34,000 lines in 2 s).
    full_logged: Option<Instant>,
    /// `[fleet] max_bans`: received bans held at once (`origins` counts them).
    max_bans: usize,
    /// When `origins` was last pruned because it reached `max_bans` (at most once a
    /// second: a prune reads every ban table).
    pruned: Option<Instant>,
    /// The key read from `[fleet] key_file` at start: the one in use until a restart.
    key: Option<Vec<u8>>,
}

impl Link {
    /// After a reload: says when `[fleet] key_file` no longer holds the key in use (a
    /// rotation written to it takes a restart: the link signs and checks with the key it
    /// started with, and the reload did not change that).
    pub(in crate::daemon) fn check_key(&self, fleet: Option<&crate::policy::Fleet>) {
        let Some(path) = fleet.and_then(|f| f.key_file.as_ref()) else {
            return;
        };
        match crate::fleet::read_key(path) {
            Ok(k) if Some(&k) == self.key.as_ref() => {}
            Ok(_) => warn!(
                "fleet: {} holds another key than the one read at start: the fleet's messages are still signed and checked with the old one; restart shield to use the new key",
                path.display()
            ),
            Err(e) => warn!("fleet: {e}; the key read at start stays in use"),
        }
    }

    /// Counts a received ban refused for want of room (`why`), said at most once a minute:
    /// a storm of received bans past the table logged one line per ban, 34,000 in 2 s.
    fn refused_full(&mut self, counter: &AtomicU64, why: &str, m: &Message) {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .full_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.full_logged = Some(Instant::now());
            warn!(
                "fleet: {why}: received bans are not installed (the ban of {} from {}; {n} so far, shield_fleet_refused_total{{reason=\"table_full\"}}; said once a minute)",
                m.source, m.origin_host,
            );
        }
    }
}

/// Forgets the origins of received bans no longer in force.
fn prune_origins(link: &mut Link, instances: &[Instance]) {
    if link.origins.is_empty() {
        return;
    }
    let live: HashSet<String> = instances
        .iter()
        .flat_map(|i| i.bans.active())
        .map(|b| field(&b.source, b.scope, &b.rule))
        .collect();
    link.origins.retain(|f, _| live.contains(f));
    link.issued.retain(|f, _| live.contains(f));
}

pub(super) fn field(source: &str, scope: BanScope, rule: &str) -> String {
    format!("{source}|{}|{rule}", scope.as_str())
}

/// A received unban lifts the bans issued up to this long after it was sent (the hosts'
/// clocks differ a little): an unban replayed from Redis, or read late after a partition,
/// never lifts a ban issued after it.
pub(in crate::daemon) const UNBAN_SKEW_MS: u64 = 5_000;

/// When a received ban was issued on its host (unix ms).
fn issued_ms(m: &Message) -> u64 {
    if m.sent_ms > 0 {
        m.sent_ms
    } else {
        m.expires_ms
            .saturating_sub((m.duration_secs.max(0.0) * 1000.0) as u64)
    }
}

/// The ban an EV_BAN event reports, as `shield bans` would list it.
pub(in crate::daemon) fn entry_of_event(inst: &Instance, ev: &Event, mono_now: u64) -> BanEntry {
    let k = &ev.key;
    let ip: std::net::IpAddr = if k.family == shield_common::addr::FAMILY_V4 {
        std::net::Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]).into()
    } else {
        std::net::Ipv6Addr::from(k.addr).into()
    };
    let ends = ev.ts_ns.saturating_add(ev.duration_ns);
    BanEntry {
        iface: inst.iface.clone(),
        source: format!("{ip}/{}", k.prefix_len),
        scope: if ev.host_scope != 0 {
            BanScope::Host
        } else {
            BanScope::Rule
        },
        rule: inst.rule_name(k.rule),
        origin: Origin::Automatic,
        monitor: false,
        cuts: Cuts::NewConnections,
        duration_secs: Duration::from_nanos(ev.duration_ns).as_secs_f64(),
        remaining_secs: Duration::from_nanos(ends.saturating_sub(mono_now)).as_secs_f64(),
        level: ev.level.min(u16::from(u8::MAX)) as u8,
        comment: Reason::from_code(ev.reason).map(|r| r.name().to_string()),
        origin_host: None,
        key: BanKey::None,
        rule_id: k.rule,
    }
}

/// The fleet message of `b`, a ban this host issued at `sent_ms` (unix ms).
fn ban_message(b: &BanEntry, host: &str, sent_ms: u64) -> Message {
    Message {
        op: Op::Ban,
        source: b.source.clone(),
        scope: b.scope,
        rule: b.rule.clone(),
        expires_ms: now_ms() + (b.remaining_secs * 1000.0) as u64,
        duration_secs: b.duration_secs,
        level: b.level,
        origin: b.origin.as_str().to_string(),
        cuts: b.cuts.as_str().to_string(),
        origin_host: host.to_string(),
        reason: b.comment.clone(),
        sent_ms,
    }
}

pub(super) fn flags_of(origin: &str, cuts: &str) -> u8 {
    let mut f = 0;
    if origin == Origin::Manual.as_str() {
        f |= BAN_MANUAL;
    }
    if cuts == Cuts::NewConnections.as_str() {
        f |= BAN_ATTEMPTS;
    }
    f
}

impl Owner {
    /// Starts the fleet task (with `[fleet]`) and installs the fleet's active bans before
    /// returning, unless Redis cannot be reached (then they come when the link is up).
    pub(super) async fn start_fleet(
        &mut self,
        owner_tx: &mpsc::Sender<Msg>,
        stop: &watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        let cfg = self.policy.fleet.clone()?;
        let key = match &cfg.key_file {
            Some(p) => match crate::fleet::read_key(p) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::error!("fleet: {e}; this host stays out of the fleet");
                    return None;
                }
            },
            None => None,
        };
        let counters = Arc::clone(&self.counters);
        counters.fleet.enabled.store(true, Ordering::Relaxed);
        let (tx, out) = mpsc::channel(65_536);
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = Task {
            signer: Signer::new(key.clone(), &cfg.prefix),
            cfg: cfg.clone(),
            counters,
            owner: owner_tx.clone(),
            out,
            ready: Some(ready_tx),
            stop: stop.clone(),
        };
        let handle = tokio::spawn(task.run());
        self.fleet = Some(Link {
            key: key.clone(),
            tx,
            breaker: Breaker::new(cfg.max_bans_per_minute),
            max_per_minute: cfg.max_bans_per_minute,
            origins: std::mem::take(&mut self.pending_origins),
            issued: HashMap::new(),
            ticks: 0,
            full_logged: None,
            max_bans: cfg.max_bans as usize,
            pruned: None,
        });
        // Connect and read: bounded by the client's timeouts (2 s + 3 s).
        match tokio::time::timeout(Duration::from_secs(8), ready_rx).await {
            Ok(Ok(snap)) => {
                let n = snap.bans.len();
                let (installed, lifted) = self.fleet_resync(snap);
                info!(
                    "fleet: {installed} of the fleet's {n} active bans in force before ready; {lifted} held here lifted (gone from the fleet while this daemon was stopped)"
                );
            }
            _ => warn!(
                "fleet: starting without the fleet's bans (Redis not reachable); they are installed when the link comes up"
            ),
        }
        Some(handle)
    }

    /// Who issued `b`: the fleet host for a ban received from the fleet, else this host.
    pub(super) fn origin_host_of(&self, b: &BanEntry) -> String {
        self.fleet
            .as_ref()
            .and_then(|l| l.origins.get(&field(&b.source, b.scope, &b.rule)))
            .cloned()
            .unwrap_or_else(|| self.host.clone())
    }

    /// Every ban this host issues (manual, automatic, application layer) comes here once:
    /// it is published to the fleet and saved in `--state-dir`.
    pub(super) fn issued_ban(&mut self, b: &BanEntry) {
        self.state_dirty = true;
        let Some(link) = self.fleet.as_mut() else {
            return;
        };
        // A monitor-mode ban drops nothing: the other hosts judge for themselves.
        if b.monitor || b.remaining_secs <= 0.0 {
            return;
        }
        link.origins.remove(&field(&b.source, b.scope, &b.rule));
        link.issued.remove(&field(&b.source, b.scope, &b.rule));
        let m = ban_message(b, &self.host, now_ms());
        if link.tx.try_send(m).is_err() {
            warn!(
                "fleet: more than 65,536 changes waiting for the fleet task; the ban of {} is not published",
                b.source
            );
        }
    }

    /// `shield unban` here: lifted on every host of the fleet.
    pub(super) fn issued_unban(&mut self, source: &str) {
        self.state_dirty = true;
        let Some(link) = self.fleet.as_mut() else {
            return;
        };
        let pat = format!("{source}|");
        link.origins.retain(|f, _| !f.starts_with(&pat));
        link.issued.retain(|f, _| !f.starts_with(&pat));
        let m = Message {
            op: Op::Unban,
            source: source.to_string(),
            scope: BanScope::Host,
            rule: String::new(),
            expires_ms: 0,
            duration_secs: 0.0,
            level: 0,
            origin: Origin::Manual.as_str().to_string(),
            cuts: String::new(),
            origin_host: self.host.clone(),
            reason: None,
            sent_ms: now_ms(),
        };
        if link.tx.try_send(m).is_err() {
            warn!("fleet: the fleet task is behind; the unban of {source} is not published");
        }
    }

    pub(super) fn fleet_inbound(&mut self, m: Inbound) {
        match m {
            Inbound::Change(m) => match m.op {
                Op::Ban => self.fleet_apply(m, true),
                Op::Unban => self.fleet_unban(&m),
            },
            Inbound::Resync(snap) => {
                let n = snap.bans.len();
                let (_, lifted) = self.fleet_resync(snap);
                info!("fleet: resynced from the fleet's hash: {n} active bans, {lifted} lifted");
            }
            Inbound::Link(up) => {
                self.audit.write(json!({
                    "event": "fleet_link",
                    "state": if up { "up" } else { "down" },
                }));
            }
        }
    }

    /// Installs a ban received from the fleet (`live`: from the stream, through the
    /// circuit breaker; else from a resync).
    pub(super) fn fleet_apply(&mut self, m: Message, live: bool) {
        self.fleet_apply_as(m, live, live);
    }

    /// `fleet_apply`; `admit`: through the circuit breaker (a live ban's first time; not
    /// once more when it waited for a reload).
    pub(super) fn fleet_apply_as(&mut self, m: Message, live: bool, admit: bool) {
        let now = now_ms();
        let Some(remaining) = m.remaining(now) else {
            return;
        };
        let Ok(cidr) = parse_cidr(&m.source) else {
            return;
        };
        let counters = Arc::clone(&self.counters);
        let fc = &counters.fleet;
        let Some(link) = self.fleet.as_mut() else {
            return;
        };
        let f = m.field();
        let rule = (!m.rule.is_empty()).then_some(m.rule.as_str());
        let spec = BanSpec {
            cidr,
            dur: remaining,
            scope: m.scope,
            rule,
            flags: flags_of(&m.origin, &m.cuts),
            level: m.level,
            reason: m.reason.as_deref(),
            // Shown with the duration it was issued with, not the time it has left.
            issued: Duration::try_from_secs_f64(m.duration_secs).ok(),
        };
        // The same ban a second time: a resync read the hash after its host published it,
        // then the stream delivered its entry (or a resync finds the bans held already).
        // In force here as received: nothing to admit, count or log again.
        if link.origins.get(&f) == Some(&m.origin_host)
            && link.issued.get(&f) == Some(&issued_ms(&m))
            && self.instances.iter().all(|i| i.bans.holds(&spec))
        {
            return;
        }
        let lag_ms = now.saturating_sub(m.sent_ms);
        if admit {
            fc.lag_us.store(lag_ms * 1000, Ordering::Relaxed);
            if let Gate::Open(first) = link.breaker.admit(now) {
                fc.refused_circuit.fetch_add(1, Ordering::Relaxed);
                if first {
                    fc.circuit_open.store(true, Ordering::Relaxed);
                    warn!(
                        "fleet: more than {} bans received in a minute: circuit open, received bans are refused until the rate falls",
                        link.max_per_minute
                    );
                    self.audit.write(json!({
                        "event": "fleet_circuit",
                        "state": "open",
                        "max_bans_per_minute": link.max_per_minute,
                    }));
                }
                return;
            }
        }
        if let Some((why, msg)) = crate::fleet::screen(&cidr, &self.policy) {
            let counter = match why {
                Screened::AllowList => &fc.refused_allow,
                Screened::TooWide => &fc.refused_wide,
                Screened::TrustedProxy => &fc.refused_proxy,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            warn!(
                "fleet: refused the ban of {} from {}: {msg}",
                m.source, m.origin_host
            );
            return;
        }
        // A rule ban waits for the reload in progress, as `shield ban --rule` does: the rule
        // may be one it adds (unknown until it is in force), or in force on some interfaces
        // only, under an id whose bans the reload's end drops. Host bans are served at once.
        if m.scope == BanScope::Rule && self.reload_of.is_some() {
            self.fleet_waiting.push((m, live));
            return;
        }
        let known = rule.is_none_or(|r| self.instances.iter().any(|i| i.bans.has_rule(r)));
        if m.scope == BanScope::Rule && !known {
            fc.skipped_rule.fetch_add(1, Ordering::Relaxed);
            warn!(
                "fleet: skipped the rule ban of {} from {}: this host has no rule `{}`",
                m.source, m.origin_host, m.rule
            );
            return;
        }
        // A quarter of the table (by default) stays for this host's own bans: a fleet
        // holding more bans than that must not stop this host from banning. A ban stored
        // already on every interface (this host's own of the same source) takes no new
        // entry; one stored on some only (an automatic ban of one interface) would.
        if m.origin_host != self.host
            && !link.origins.contains_key(&f)
            && link.origins.len() >= link.max_bans
            && !self.instances.iter().all(|i| i.bans.holds(&spec))
        {
            if link
                .pruned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                link.pruned = Some(Instant::now());
                prune_origins(link, &self.instances);
            }
            if link.origins.len() >= link.max_bans {
                let why = format!(
                    "this host holds {} received bans, its [fleet] max_bans (the rest of the ban table stays for its own bans)",
                    link.origins.len()
                );
                link.refused_full(&fc.refused_full, &why, &m);
                return;
            }
        }
        let mut installed = false;
        let mut full = None;
        for inst in &mut self.instances {
            match inst.bans.ban_spec(&spec) {
                Ok(_) => installed = true,
                Err(e @ crate::bans::BanError::Full(_)) => full = Some(e),
                Err(e) => {
                    warn!(iface = %inst.iface, "fleet: the ban of {} from {}: {e}", m.source, m.origin_host);
                }
            }
        }
        if let Some(e) = full {
            link.refused_full(&fc.refused_full, &e.to_string(), &m);
        }
        if !installed {
            if m.scope == BanScope::Rule {
                fc.skipped_rule.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        fc.installed.fetch_add(1, Ordering::Relaxed);
        // This host's own bans (back from Redis after a reboot) stay local bans.
        if m.origin_host == self.host {
            link.origins.remove(&m.field());
            link.issued.remove(&m.field());
        } else {
            link.origins.insert(m.field(), m.origin_host.clone());
            link.issued.insert(m.field(), issued_ms(&m));
        }
        self.state_dirty = true;
        let mut line = json!({
            "event": "fleet_ban",
            "source": m.source,
            "scope": m.scope,
            "rule": m.rule,
            "origin": m.origin,
            "origin_host": m.origin_host,
            "level": m.level,
            "ban_secs": m.duration_secs,
            "remaining_secs": remaining.as_secs_f64(),
            "expires": rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(m.expires_ms)),
            "replay": !live,
        });
        if live {
            line["lag_ms"] = lag_ms.into();
        }
        if let Some(r) = &m.reason {
            line["comment"] = r.clone().into();
        }
        self.audit.write(line);
    }

    /// An unban received from the fleet: lifted here, not published again. It lifts only
    /// the bans issued before it was sent (give or take `UNBAN_SKEW_MS`): a ban issued
    /// after it (here, or on another host) stays. A resync's unbans (no `sent_ms`) lift
    /// every ban of the source.
    fn fleet_unban(&mut self, m: &Message) {
        let Ok(cidr) = parse_cidr(&m.source) else {
            return;
        };
        let now = now_ms();
        let cutoff = (m.sent_ms > 0).then(|| m.sent_ms.saturating_add(UNBAN_SKEW_MS));
        // A rule ban waiting for the reload in progress is lifted as one installed would be
        // (else it would be installed after the unban).
        let waiting = self.fleet_waiting.len();
        self.fleet_waiting.retain(|(b, _)| {
            !parse_cidr(&b.source).is_ok_and(|c| c == cidr)
                || cutoff.is_some_and(|cut| issued_ms(b) > cut)
        });
        let waiting_lifted = waiting - self.fleet_waiting.len();
        let issued = self.fleet.as_ref().map(|l| &l.issued);
        let mut lifted = Vec::new();
        let mut kept = 0;
        for inst in &mut self.instances {
            let lift = |b: &BanEntry| {
                let Some(cutoff) = cutoff else {
                    return true;
                };
                let f = field(&b.source, b.scope, &b.rule);
                // A ban installed from the fleet: when its host issued it; else when it
                // was issued here (its duration minus what is left of it).
                let at = issued.and_then(|i| i.get(&f)).copied().unwrap_or_else(|| {
                    let ran = (b.duration_secs - b.remaining_secs).max(0.0);
                    now.saturating_sub((ran * 1000.0) as u64)
                });
                let lift = at <= cutoff;
                if !lift {
                    kept += 1;
                }
                lift
            };
            match inst.bans.unban_where(cidr, lift) {
                Ok(r) => lifted.extend(r.into_iter().map(|b| field(&b.source, b.scope, &b.rule))),
                Err(e) => warn!(iface = %inst.iface, "fleet: unban of {}: {e}", m.source),
            }
        }
        let removed = lifted.len() + waiting_lifted;
        // The app layer's L7 bans of this host too, as `shield unban` here lifts them (not
        // for a resync's unbans: those are fleet bans gone from the hash).
        if let Some(tx) = self.app_unban.as_ref().filter(|_| cutoff.is_some()) {
            let _ = tx.send(crate::daemon::app::AppUnban {
                cidr,
                before_ms: cutoff,
                freed: None,
            });
        }
        if let Some(link) = self.fleet.as_mut() {
            for f in &lifted {
                link.origins.remove(f);
                link.issued.remove(f);
            }
        }
        if kept > 0 {
            info!(
                "fleet: the unban of {} from {} was sent before {kept} ban(s) of it were issued: they stay",
                m.source, m.origin_host
            );
        }
        self.state_dirty = true;
        if m.sent_ms > 0 {
            self.counters
                .fleet
                .lag_us
                .store(now_ms().saturating_sub(m.sent_ms) * 1000, Ordering::Relaxed);
        }
        self.audit.write(json!({
            "event": "fleet_unban",
            "source": m.source,
            "origin_host": m.origin_host,
            "removed": removed,
            "kept": kept,
        }));
    }

    /// Once a second: close the circuit when the rate fell; once a minute, forget the
    /// origins of fleet bans that ended.
    pub(super) fn fleet_tick(&mut self) {
        let Some(link) = self.fleet.as_mut() else {
            return;
        };
        link.ticks = link.ticks.wrapping_add(1);
        if link.ticks % 60 == 0 {
            prune_origins(link, &self.instances);
        }
        if link.breaker.poll_close(now_ms()) {
            self.counters
                .fleet
                .circuit_open
                .store(false, Ordering::Relaxed);
            info!("fleet: circuit closed: received bans are installed again");
            self.audit
                .write(json!({"event": "fleet_circuit", "state": "closed"}));
        }
    }
}
