//! A random-source SYN flood against the demo API (Flask under gunicorn) in a namespace
//! lab, with the real daemon: clients that talked to the API before the flood keep being
//! served, spoofed SYNs are dropped once the `unverified` budget is spent, the per-source
//! table keeps its entries, and the audit log records the attack's start and end.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::Value;
use shield_tests::netlab::{Gunicorn, LEGIT_V4, SERVER_V4, http_get};
use shield_tests::{
    nslab::NsLab,
    synflood::{cpus, pin_to},
};

const POLICY: &str = r#"
[defaults]
verified_ttl = "10m"

[[rule]]
name = "api"
protocol = "tcp"
ports = [8000]
connections = { rate = "100/s", burst = 200 }
unverified = { rate = "200/s", burst = 200 }
"#;

/// `n` GETs from the legit client, one every `every`: per-request latency (None: failed).
fn timed_gets(lab: &NsLab, n: u32, every: Duration) -> Vec<Option<Duration>> {
    let dst = SocketAddr::new(IpAddr::V4(SERVER_V4), 8000);
    lab.topo
        .client
        .run_in(move || {
            pin_to(0);
            let start = Instant::now();
            (0..n)
                .map(|i| {
                    if let Some(wait) = (start + every * i).checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let t = Instant::now();
                    let code = http_get(
                        IpAddr::V4(LEGIT_V4),
                        dst,
                        "/api/items",
                        Duration::from_secs(3),
                    );
                    (code == Some(200)).then(|| t.elapsed())
                })
                .collect()
        })
        .expect("client namespace")
}

/// (successes, p99) of a series.
fn summary(v: &[Option<Duration>]) -> (usize, Duration) {
    let mut ok: Vec<Duration> = v.iter().flatten().copied().collect();
    ok.sort();
    let p99 = ok
        .get((ok.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or(Duration::MAX);
    (ok.len(), p99)
}

fn iface(stats: &Value) -> &Value {
    &stats["interfaces"][0]
}

fn api(stats: &Value) -> &Value {
    iface(stats)["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["name"] == "api")
        .expect("rule api in stats")
}

fn n(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

#[test]
fn known_clients_keep_working_through_a_random_source_syn_flood() {
    // One veth queue per CPU: the flood (sent from the last CPU) and the legit client (CPU
    // 0) land in different receive rings, as flows do on a multi-queue NIC.
    let lab = NsLab::with_queues(POLICY, &[], cpus() as u32);
    let _api = Gunicorn::start(&lab.topo.server, 8000).expect("starting the demo API");

    // Before the flood: the legit client uses the API (and so proves itself real); a
    // burst of its connections makes it heavy enough for exact per-source state.
    let burst = lab.connect_legit(IpAddr::V4(LEGIT_V4), 8000, 20, Duration::ZERO);
    assert_eq!(burst.ok, 20, "{burst:?}");
    let warm = timed_gets(&lab, 40, Duration::from_millis(25));
    assert_eq!(summary(&warm).0, 40, "the API must answer before the flood");
    let unloaded = timed_gets(&lab, 200, Duration::from_millis(25));
    let (ok, p99_unloaded) = summary(&unloaded);
    assert_eq!(ok, 200, "the API must answer without a flood");
    let before = lab.stats();
    assert!(
        n(&iface(&before)["verified_sources"]) >= 1,
        "the legit client should be verified after talking to the API: {}",
        iface(&before)
    );
    let tracked_before = n(&iface(&before)["tracked_sources"]);
    assert!(
        tracked_before >= 1,
        "the legit client's burst should be tracked"
    );

    // The flood: random 10/8 sources, at the generator's full rate.
    let ((sent, secs), during) = lab.flood_while(8000, || {
        // Let the budget run dry first.
        std::thread::sleep(Duration::from_millis(500));
        timed_gets(&lab, 200, Duration::from_millis(25))
    });
    let after = lab.stats();
    let (ok, p99_flood) = summary(&during);
    let u0 = &api(&before)["unverified"];
    let u1 = &api(&after)["unverified"];
    let dropped = n(&u1["dropped"]) - n(&u0["dropped"]);
    let admitted = n(&u1["admitted"]) - n(&u0["admitted"]);
    let tracked_after = n(&iface(&after)["tracked_sources"]);
    eprintln!(
        "flood: {sent} SYNs in {secs:.1} s ({:.2} Mpps); shield dropped {dropped}, admitted {admitted} unverified; legit {ok}/200, p99 {p99_flood:?} (unloaded {p99_unloaded:?}); tracked {tracked_before} -> {tracked_after}",
        sent as f64 / secs / 1e6
    );

    assert!(
        ok >= 198,
        "known client: {ok}/200 requests answered during the flood (need >= 99 %)"
    );
    // At most 1 % of the known client's requests (2 of 200, above the p99) waited on a
    // retransmission: a dropped SYN costs 1 s, a dropped segment at least the 200 ms
    // minimum RTO. (The p99 against the unloaded
    // one, target 2x, is a speed figure: `cargo xtask bench` section 3b reports it. As an
    // assertion here it failed on a noisy shared machine with nothing dropped.)
    assert!(
        p99_flood < Duration::from_millis(200),
        "known client's p99 {p99_flood:?} during the flood ({p99_unloaded:?} without): some of its packets were dropped and retransmitted"
    );
    assert!(
        dropped as f64 >= 0.95 * (dropped + admitted) as f64,
        "spoofed SYNs: {dropped} dropped, {admitted} admitted by the budget (need >= 95 % dropped)"
    );
    assert!(
        dropped + admitted >= sent / 2,
        "the shield saw {} of {sent} generated SYNs",
        dropped + admitted
    );
    assert!(
        tracked_after >= tracked_before && tracked_after <= tracked_before + 20,
        "tracked sources went from {tracked_before} to {tracked_after}: the flood churned the table"
    );
    assert_eq!(
        n(&iface(&after)["source_evictions"]),
        0,
        "no tracked source may be evicted"
    );
    assert!(n(&u1["verified_conns"]) >= 200, "{u1}");

    // The audit log: the attack started, and ends after 10 s without drops.
    let started = lab
        .audit_lines()
        .iter()
        .any(|l| l["event"] == "attack_start" && l["rule"] == "api");
    assert!(started, "no attack_start in the audit log");
    assert_eq!(api(&after)["unverified"]["under_attack"], true);
    let deadline = Instant::now() + Duration::from_secs(20);
    let end = loop {
        if let Some(l) = lab
            .audit_lines()
            .into_iter()
            .find(|l| l["event"] == "attack_end" && l["rule"] == "api")
        {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no attack_end 20 s after the flood"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // Every drop of the attack, its first tick's included (the counters' figure is from
    // before the flood to just after it; the attack ends later).
    assert!(
        n(&end["dropped"]) >= dropped,
        "attack_end reports {} dropped, the counters {dropped}",
        end["dropped"]
    );
    assert!(end["duration_secs"].as_f64().is_some_and(|d| d >= 10.0));
    assert_eq!(api(&lab.stats())["unverified"]["under_attack"], false);
}
