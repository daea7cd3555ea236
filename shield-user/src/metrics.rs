//! Prometheus metrics at `/metrics` (OpenMetrics text by prometheus-client, served by
//! `daemon::http` as OpenMetrics or the classic format: `exposition`),
//! read from the pinned maps at each scrape, plus the daemon's own counters.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::stats;

type Labels = Vec<(String, String)>;

/// Daemon-side figures the maps do not hold.
#[derive(Default)]
pub struct DaemonCounters {
    pub reloads_ok: AtomicU64,
    pub reloads_error: AtomicU64,
    /// Duration of the last successful reload, in microseconds.
    pub last_reload_us: AtomicU64,
    /// `[fleet]` figures (`shield_fleet_*`).
    pub fleet: crate::fleet::Counters,
}

pub struct Sources {
    pub bpffs: PathBuf,
    /// (interface, attach mode)
    pub ifaces: Vec<(String, &'static str)>,
    pub counters: Arc<DaemonCounters>,
    /// The app layer's counters (empty without `[app]`).
    pub app: Arc<crate::app::AppCounters>,
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Renders every metric as OpenMetrics text (`exposition` turns it into the classic format).
pub fn render(src: &Sources) -> String {
    let mut reg = Registry::default();
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let bans = Family::<Labels, Gauge>::default();
    let tracked = Family::<Labels, Gauge>::default();
    let capacity = Family::<Labels, Gauge>::default();
    let insert_failures = Family::<Labels, Counter>::default();
    let events_lost = Family::<Labels, Counter>::default();
    let generation = Family::<Labels, Gauge>::default();
    let attach = Family::<Labels, Gauge>::default();
    let reloads = Family::<Labels, Counter>::default();
    let reload_secs = Gauge::<f64, AtomicU64>::default();
    let up = Family::<Labels, Gauge>::default();
    let under_attack = Family::<Labels, Gauge>::default();
    let unverified_admitted = Family::<Labels, Counter>::default();
    let unverified_tokens = Family::<Labels, Gauge>::default();
    let verified_conns = Family::<Labels, Counter>::default();
    let promotions = Family::<Labels, Counter>::default();
    let untracked = Family::<Labels, Counter>::default();
    let verified = Family::<Labels, Gauge>::default();
    let verifications = Family::<Labels, Counter>::default();
    let inserts = Family::<Labels, Counter>::default();
    let evictions = Family::<Labels, Counter>::default();
    let top_sources = Family::<Labels, Gauge>::default();

    for (iface, mode) in &src.ifaces {
        attach
            .get_or_create(&l(&[("iface", iface), ("mode", mode)]))
            .set(1);
        let Ok(s) = stats::read_iface(&src.bpffs, iface) else {
            up.get_or_create(&l(&[("iface", iface)])).set(0);
            continue;
        };
        up.get_or_create(&l(&[("iface", iface)])).set(1);
        for rule in &s.rules {
            for (reason, c) in &rule.counters {
                let labels = l(&[("iface", iface), ("rule", &rule.name), ("reason", reason)]);
                packets.get_or_create(&labels).inc_by(c.packets);
                bytes.get_or_create(&labels).inc_by(c.bytes);
            }
            let lr = l(&[("iface", iface), ("rule", &rule.name)]);
            promotions.get_or_create(&lr).inc_by(rule.promoted_sources);
            untracked.get_or_create(&lr).inc_by(rule.untracked_packets);
            if let Some(u) = &rule.unverified {
                under_attack
                    .get_or_create(&lr)
                    .set(i64::from(u.under_attack));
                unverified_admitted.get_or_create(&lr).inc_by(u.admitted);
                unverified_tokens
                    .get_or_create(&lr)
                    .set(u.tokens_left as i64);
                verified_conns.get_or_create(&lr).inc_by(u.verified_conns);
            }
        }
        // At most stats::TOP_SOURCES series per interface: bounded cardinality.
        for t in &s.top_sources {
            top_sources
                .get_or_create(&l(&[
                    ("iface", iface),
                    ("rule", &t.rule),
                    ("source", &t.source),
                ]))
                .set(t.limited as i64);
        }
        let li = l(&[("iface", iface)]);
        bans.get_or_create(&li).set(s.active_bans as i64);
        verified.get_or_create(&li).set(s.verified_sources as i64);
        verifications.get_or_create(&li).inc_by(s.verifications);
        inserts.get_or_create(&li).inc_by(s.source_inserts);
        evictions.get_or_create(&li).inc_by(s.source_evictions);
        tracked.get_or_create(&li).set(s.tracked_sources as i64);
        capacity.get_or_create(&li).set(i64::from(s.max_sources));
        events_lost.get_or_create(&li).inc_by(s.events_lost);
        insert_failures
            .get_or_create(&l(&[("iface", iface), ("map", "sources")]))
            .inc_by(s.source_insert_failures);
        insert_failures
            .get_or_create(&l(&[("iface", iface), ("map", "bans")]))
            .inc_by(s.ban_insert_failures);
        generation
            .get_or_create(&li)
            .set(i64::from(s.policy_generation));
    }
    reloads
        .get_or_create(&l(&[("result", "ok")]))
        .inc_by(src.counters.reloads_ok.load(Ordering::Relaxed));
    reloads
        .get_or_create(&l(&[("result", "error")]))
        .inc_by(src.counters.reloads_error.load(Ordering::Relaxed));
    reload_secs.set(src.counters.last_reload_us.load(Ordering::Relaxed) as f64 / 1e6);

    reg.register(
        "shield_packets",
        "Packets judged, by interface, rule and reason",
        packets,
    );
    reg.register(
        "shield_bytes",
        "Bytes of the packets judged (whole frames)",
        bytes,
    );
    reg.register("shield_active_bans", "Bans in force", bans);
    reg.register(
        "shield_tracked_sources",
        "Entries in the per-source state table",
        tracked,
    );
    reg.register(
        "shield_sources_capacity",
        "Capacity of the per-source state table (LRU)",
        capacity,
    );
    reg.register(
        "shield_map_insert_failures",
        "Inserts the data path's maps refused",
        insert_failures,
    );
    reg.register(
        "shield_events_lost",
        "Events the ring buffer could not hold",
        events_lost,
    );
    reg.register(
        "shield_policy_generation",
        "Policy loads into this interface's maps",
        generation,
    );
    reg.register(
        "shield_attach_mode",
        "1 for the XDP attach mode in use",
        attach,
    );
    reg.register("shield_reloads", "Policy reloads by result", reloads);
    reg.register(
        "shield_last_reload_seconds",
        "Time the last successful reload took",
        reload_secs,
    );
    reg.register(
        "shield_maps_readable",
        "1 if the interface's pinned maps could be read",
        up,
    );
    reg.register(
        "shield_under_attack",
        "1 while the rule's unverified budget is overrun: connection attempts dropped over it, or answered with SYN cookies (ends after 10 s without either)",
        under_attack,
    );
    reg.register(
        "shield_unverified_admitted",
        "Connection attempts from unverified sources admitted by the rule's budget",
        unverified_admitted,
    );
    reg.register(
        "shield_unverified_budget_tokens",
        "Tokens left in the rule's unverified budget",
        unverified_tokens,
    );
    reg.register(
        "shield_verified_connections",
        "Connection attempts from verified sources (never drawn from the budget)",
        verified_conns,
    );
    reg.register(
        "shield_sketch_promotions",
        "Sources the sketch promoted to exact per-source state (heavy hitters)",
        promotions,
    );
    reg.register(
        "shield_untracked_packets",
        "Packets of sources without state that the sketch passed untracked",
        untracked,
    );
    reg.register(
        "shield_verified_sources",
        "Sources whose proof (handshake and data) is still valid",
        verified,
    );
    reg.register(
        "shield_verifications",
        "Proofs recorded for new sources",
        verifications,
    );
    reg.register(
        "shield_source_inserts",
        "Per-source state entries created (LRU churn, with evictions)",
        inserts,
    );
    reg.register(
        "shield_source_evictions",
        "Per-source state entries the LRU evicted to make room",
        evictions,
    );
    reg.register(
        "shield_top_source_limited_packets",
        "Packets refused by the rule's limits since the source was first tracked, for the top sources of `shield stats` (at most 10 per interface)",
        top_sources,
    );
    src.counters.fleet.register(&mut reg);
    render_app(&mut reg, &src.app);
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out = "# encoding failed\n".into();
    }
    out
}

/// The `shield_app_*` series: per endpoint and signal, and the app socket's errors.
fn render_app(reg: &mut Registry, app: &crate::app::AppCounters) {
    let allowed = Family::<Labels, Counter>::default();
    let limited = Family::<Labels, Counter>::default();
    let banned = Family::<Labels, Counter>::default();
    let errors = Counter::<u64>::default();
    let in_flight = Family::<Labels, Gauge>::default();
    let quota_used = Family::<Labels, Gauge>::default();
    for r in app.snapshot() {
        let labels = l(&[("kind", &r.kind), ("name", &r.name)]);
        allowed.get_or_create(&labels).inc_by(r.allowed);
        limited.get_or_create(&labels).inc_by(r.limited);
        banned.get_or_create(&labels).inc_by(r.banned);
        if r.kind == "endpoint" {
            let e = l(&[("name", &r.name)]);
            in_flight.get_or_create(&e).set(r.in_flight as i64);
            quota_used.get_or_create(&e).set(r.quota_used as i64);
        }
    }
    reg.register(
        "shield_app_in_flight",
        "Requests of the endpoint in flight now (every key; counted for concurrency = N endpoints)",
        in_flight,
    );
    reg.register(
        "shield_app_quota_used",
        "Tokens used in the current quota window (every key; quota endpoints)",
        quota_used,
    );
    errors.inc_by(app.errors.load(Ordering::Relaxed));
    reg.register(
        "shield_app_allowed",
        "Requests (endpoint) or reports (signal) within the limit",
        allowed,
    );
    reg.register(
        "shield_app_limited",
        "Requests or reports over the limit (429), and requests of banned clients (403)",
        limited,
    );
    reg.register(
        "shield_app_banned",
        "Bans the endpoint's or signal's escalation issued",
        banned,
    );
    reg.register(
        "shield_app_errors",
        "Bad app socket requests, bad X-Forwarded-For entries, full tables",
        errors,
    );
}

/// `--metrics`: an `IP:PORT` (never a host name: no DNS lookup at start) or `off`. A refusal
/// says what is wrong: no port, a bad port, no address, or not an address at all.
pub fn parse_addr(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    const EXPECTED: &str = "expected IP:PORT (e.g. 127.0.0.1:9477 or [::1]:9477) or `off`";
    if s == "off" {
        return Ok(None);
    }
    if let Ok(addr) = s.parse() {
        return Ok(Some(addr));
    }
    let is_ip = |t: &str| {
        t.strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(t)
            .parse::<std::net::IpAddr>()
            .is_ok()
    };
    if is_ip(s) {
        return Err(format!(
            "{s} has no port (an IPv6 address takes brackets before its port: [::1]:9477); {EXPECTED}"
        ));
    }
    if s.parse::<u16>().is_ok() {
        return Err(format!(
            "{s} has no address (127.0.0.1:{s} serves on loopback only); {EXPECTED}"
        ));
    }
    if let Some((ip, port)) = s.rsplit_once(':')
        && is_ip(ip)
    {
        return Err(format!(
            "port \"{port}\" is not a number from 0 to 65535; {EXPECTED}"
        ));
    }
    Err(format!("{EXPECTED}; host names are not accepted"))
}

/// Binds the metrics address before anything is attached, so a port in use fails the
/// start with nothing changed.
pub fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
    std::net::TcpListener::bind(addr).map_err(|e| format!("metrics on {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{AppCounters, Kind};

    #[test]
    fn a_refused_metrics_address_says_what_is_wrong() {
        assert_eq!(parse_addr("off"), Ok(None));
        assert_eq!(
            parse_addr("[::1]:9477"),
            Ok(Some("[::1]:9477".parse().expect("addr")))
        );
        for (bad, says) in [
            ("127.0.0.1", "127.0.0.1 has no port"),
            ("::1", "::1 has no port (an IPv6 address takes brackets"),
            ("[::1]", "[::1] has no port"),
            ("9477", "9477 has no address (127.0.0.1:9477"),
            (
                "127.0.0.1:80000",
                "port \"80000\" is not a number from 0 to 65535",
            ),
            ("[::1]:http", "port \"http\" is not a number"),
            ("localhost:9477", "host names are not accepted"),
        ] {
            let err = parse_addr(bad).expect_err(bad);
            assert!(err.contains(says), "--metrics {bad}: {err}");
            assert!(err.contains("expected IP:PORT"), "--metrics {bad}: {err}");
        }
    }

    #[test]
    fn app_series_carry_kind_and_name() {
        let app = AppCounters::default();
        let login = app.of(Kind::Endpoint, "login");
        login.allowed.fetch_add(5, Ordering::Relaxed);
        login.limited.fetch_add(2, Ordering::Relaxed);
        login.in_flight.store(3, Ordering::Relaxed);
        login.quota_used.store(17, Ordering::Relaxed);
        app.of(Kind::Signal, "login_failed")
            .banned
            .fetch_add(1, Ordering::Relaxed);
        app.count_error();
        let mut reg = Registry::default();
        render_app(&mut reg, &app);
        let mut out = String::new();
        encode(&mut out, &reg).expect("encode");
        for line in [
            "shield_app_allowed_total{kind=\"endpoint\",name=\"login\"} 5",
            "shield_app_limited_total{kind=\"endpoint\",name=\"login\"} 2",
            "shield_app_banned_total{kind=\"signal\",name=\"login_failed\"} 1",
            "shield_app_errors_total 1",
            "shield_app_in_flight{name=\"login\"} 3",
            "shield_app_quota_used{name=\"login\"} 17",
        ] {
            assert!(out.contains(line), "/metrics lacks {line:?}:\n{out}");
        }
    }
}
