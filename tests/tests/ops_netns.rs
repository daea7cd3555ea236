//! Operations with the real daemon and real TCP in network namespaces: 50 reloads under
//! traffic, `kill -9` and adoption of the pinned program and state, `shield detach`, and
//! the Prometheus endpoint, parsed.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpStream},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use shield_tests::netlab::{ATTACKER_V4, LEGIT_V4, SERVER_IF};
use shield_tests::{
    nslab::{NsLab, counter},
    require_root,
};

const API: u16 = 8080;
const OTHER: u16 = 8081;

fn lab(policy: &str) -> NsLab {
    NsLab::new(policy, &[API, OTHER])
}

const A: &str = r#"
[lists]
deny = ["203.0.113.0/24"]
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "100/s", burst = 200 }
"#;

const B: &str = r#"
[lists]
deny = ["192.0.2.0/24", "2001:db8:dead::/48"]
[[rule]]
name = "web"
protocol = "tcp"
ports = [80, 443]
connections = { rate = "5/s", burst = 10 }
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "80/s", burst = 160 }
"#;

const INVALID: [(&str, &str); 3] = [
    (
        "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = { rate = \"5/x\" }\n",
        ":5:24: ",
    ),
    ("[lists]\ndeny = [\"300.1.2.3\"]\n", ":2:9: deny list"),
    (
        "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nport = [8080]\n",
        ":4:1: unknown field `port`",
    ),
];

#[test]
fn fifty_reloads_under_traffic_lose_no_legit_connection() {
    let lab = lab(A);
    let legit = std::thread::scope(|s| {
        let legit = s
            .spawn(|| lab.connect_legit(IpAddr::V4(LEGIT_V4), API, 160, Duration::from_millis(40)));
        for i in 0..50 {
            if i % 3 == 2 {
                let (text, location) = INVALID[(i / 3) % INVALID.len()];
                std::fs::write(&lab.policy, text).expect("write");
                let (ok, _, err) = lab.shield(&["reload"]);
                assert!(!ok, "reload {i}: an invalid policy must be rejected");
                assert!(
                    err.contains(location) && err.contains(lab.policy.to_str().unwrap_or("?")),
                    "reload {i}: the error must name file:line:column: {err}"
                );
            } else {
                std::fs::write(&lab.policy, if i % 2 == 0 { A } else { B }).expect("write");
                let (ok, out, err) = lab.shield(&["reload"]);
                assert!(ok, "reload {i} of a valid policy failed: {err}");
                assert!(out.starts_with("reloaded: generation"), "{out}");
            }
            std::thread::sleep(Duration::from_millis(60));
        }
        legit.join().expect("legit client")
    });
    assert_eq!(
        legit.failed, 0,
        "legit connections failed during reloads: {legit:?}"
    );
    assert_eq!(legit.ok, 160);

    let stats = lab.stats();
    assert!(
        counter(&stats, "api", "pass") >= 160,
        "every legit SYN passed under api: {stats}"
    );
    assert_eq!(counter(&stats, "api", "conn_limit"), 0);
    let lines = lab.audit_lines();
    let reloads: Vec<_> = lines.iter().filter(|l| l["event"] == "reload").collect();
    let ok = reloads.iter().filter(|l| l["result"] == "ok").count();
    let bad = reloads.iter().filter(|l| l["result"] == "error").count();
    // 34 valid and 16 invalid requests; the file watcher may add reloads of its own.
    assert!(
        ok >= 34 && bad >= 16,
        "{ok} ok, {bad} rejected reloads in the audit log"
    );
    let generation = stats["interfaces"][0]["policy_generation"]
        .as_u64()
        .expect("generation");
    assert_eq!(
        generation,
        1 + ok as u64,
        "one generation per successful reload"
    );
    // The last file written was valid (i = 49 → B): it is what runs.
    std::fs::write(&lab.policy, B).expect("write");
    let (ok, out, err) = lab.shield(&["check", "--diff", lab.policy.to_str().expect("utf-8")]);
    assert!(ok, "{err}");
    assert!(out.contains("no change"), "running policy must be B: {out}");
}

#[test]
fn kill9_keeps_protection_restart_adopts_state_detach_rolls_back() {
    let mut lab = lab(r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "5/s", burst = 10 }
escalation = { strikes = 3, window = "1m", ban = "30s", scope = "host" }
"#);
    let attacker = IpAddr::V4(ATTACKER_V4);
    lab.connect(attacker, API, 300, Duration::from_millis(10));
    let (_, out, _) = lab.shield(&["bans", "--json"]);
    let bans: Value = serde_json::from_str(&out).expect("bans json");
    assert_eq!(
        bans["bans"][0]["source"],
        format!("{ATTACKER_V4}/32"),
        "{bans}"
    );
    let before = lab.stats();

    // Crash: protection stays attached, the ban holds.
    lab.daemon().kill9().expect("kill -9");
    let during = lab.connect(attacker, OTHER, 3, Duration::from_millis(50));
    assert_eq!(
        during.ok, 0,
        "with the daemon dead the ban must still hold: {during:?}"
    );
    let link = Command::new("ip")
        .args(["-n", &lab.topo.server.name, "link", "show", SERVER_IF])
        .output()
        .expect("ip");
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "program must stay attached"
    );

    // Restart: adopts the link, maps, bans and counters.
    lab.start();
    let log = lab.daemon().log_text();
    assert!(
        log.contains("(adopted XDP)"),
        "restart must adopt the pinned link: {log}"
    );
    let (_, out, _) = lab.shield(&["bans", "--json"]);
    let bans: Value = serde_json::from_str(&out).expect("bans json");
    assert_eq!(
        bans["bans"][0]["source"],
        format!("{ATTACKER_V4}/32"),
        "same ban after restart: {bans}"
    );
    assert_eq!(bans["bans"][0]["origin"], "automatic");
    let after = lab.stats();
    for reason in ["pass", "conn_limit"] {
        assert!(
            counter(&after, "api", reason) >= counter(&before, "api", reason),
            "{reason} counter went backwards over the restart"
        );
    }
    let ban_before = counter(&after, "(none)", "ban");
    lab.connect(attacker, OTHER, 3, Duration::from_millis(50));
    assert!(
        counter(&lab.stats(), "(none)", "ban") >= ban_before + 3,
        "counters keep growing"
    );
    assert!(after["interfaces"][0]["policy_generation"].as_u64() >= Some(2));

    // Rollback in one command, even with the daemon running.
    let (ok, out, err) = lab.shield(&[
        "detach",
        SERVER_IF,
        "--bpffs",
        lab.bpffs.path.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("detached shield from shield0"), "{out}");
    let free = lab.connect_legit(attacker, OTHER, 3, Duration::from_millis(50));
    assert_eq!(
        free.failed, 0,
        "after detach traffic is plain again: {free:?}"
    );
    let link = Command::new("ip")
        .args(["-n", &lab.topo.server.name, "link", "show", SERVER_IF])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "no XDP after detach"
    );
    assert!(
        !lab.bpffs.path.join("shield").join(SERVER_IF).exists(),
        "pins removed"
    );
}

/// Fetches /metrics from inside the server namespace and parses the text format.
fn scrape(lab: &NsLab) -> HashMap<String, f64> {
    let body = lab
        .topo
        .server
        .run_in(|| {
            let mut s = TcpStream::connect("127.0.0.1:9477").expect("metrics port");
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .expect("request");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("response");
            out
        })
        .expect("server namespace");
    let (head, body) = body.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    let mut samples = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        // Normalise label order so lookups do not depend on it.
        let normal = match series.split_once('{') {
            Some((name, labels)) => {
                let mut l: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                l.sort_unstable();
                format!("{name}{{{}}}", l.join(","))
            }
            None => series.to_string(),
        };
        assert!(
            samples.insert(normal, value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

#[test]
fn metrics_report_the_scenario() {
    let lab = lab(r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "5/s", burst = 10 }
escalation = { strikes = 3, window = "1m", ban = "30s", scope = "rule" }
"#);
    lab.connect(IpAddr::V4(ATTACKER_V4), API, 250, Duration::from_millis(10));
    lab.connect(IpAddr::V4(LEGIT_V4), OTHER, 5, Duration::from_millis(20));
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "{err}");
    std::fs::write(&lab.policy, "[[rule]]\nname=1\n").expect("write");
    let (ok, _, _) = lab.shield(&["reload"]);
    assert!(!ok);

    let m = scrape(&lab);
    let stats = lab.stats();
    let get = |k: &str| {
        *m.get(k).unwrap_or_else(|| {
            panic!(
                "series {k} missing; have {:?}",
                m.keys().collect::<Vec<_>>()
            )
        })
    };
    let api = |reason: &str| {
        format!("shield_packets_total{{iface=\"shield0\",reason=\"{reason}\",rule=\"api\"}}")
    };
    for reason in ["pass", "conn_limit", "ban"] {
        assert_eq!(
            get(&api(reason)),
            counter(&stats, "api", reason) as f64,
            "metrics and stats disagree on api/{reason}"
        );
    }
    assert!(get(&api("ban")) > 0.0, "the attacker was banned");
    assert!(get("shield_bytes_total{iface=\"shield0\",reason=\"pass\",rule=\"api\"}") > 0.0);
    assert_eq!(get("shield_active_bans{iface=\"shield0\"}"), 1.0);
    assert_eq!(
        get("shield_tracked_sources{iface=\"shield0\"}"),
        stats["interfaces"][0]["tracked_sources"]
            .as_f64()
            .expect("n")
    );
    assert_eq!(get("shield_sources_capacity{iface=\"shield0\"}"), 262144.0);
    assert_eq!(
        get("shield_attach_mode{iface=\"shield0\",mode=\"native\"}"),
        1.0
    );
    assert_eq!(get("shield_policy_generation{iface=\"shield0\"}"), 2.0);
    assert!(get("shield_reloads_total{result=\"ok\"}") >= 1.0);
    assert!(get("shield_reloads_total{result=\"error\"}") >= 1.0);
    assert_eq!(get("shield_events_lost_total{iface=\"shield0\"}"), 0.0);
    assert_eq!(
        get("shield_map_insert_failures_total{iface=\"shield0\",map=\"sources\"}"),
        0.0
    );
    assert!(m.contains_key("shield_last_reload_seconds"));
}

/// A policy whose deny list holds `n` /30 prefixes inside `first_octet`.0.0.0/8, plus
/// `extra` entries.
fn big_policy(first_octet: u8, n: u32, extra: &[&str]) -> String {
    let mut s = String::with_capacity(n as usize * 20);
    s.push_str("[lists]\ndeny = [\n");
    for e in extra {
        s.push_str(&format!("\"{e}\",\n"));
    }
    for i in 0..n {
        let a = (u32::from(first_octet) << 24) + i * 4;
        s.push_str(&format!("\"{}/30\",\n", std::net::Ipv4Addr::from(a)));
    }
    s.push_str("]\n[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = { rate = \"100/s\", burst = 200 }\n");
    s
}

#[test]
fn a_million_prefixes_load_and_swap_without_dropping_legit_traffic() {
    const N: u32 = 1_000_000;
    require_root();
    let started = std::time::Instant::now();
    let mut lab = NsLab::new(&big_policy(11, N, &[]), &[API, OTHER]);
    let load = started.elapsed();
    assert_eq!(
        lab.connect_legit(IpAddr::V4(ATTACKER_V4), API, 1, Duration::ZERO)
            .ok,
        1
    );

    // Swap to another million (and the attacker) while a legit client keeps connecting.
    std::fs::write(
        &lab.policy,
        big_policy(12, N, &[&format!("{ATTACKER_V4}/32")]),
    )
    .expect("policy");
    // Meanwhile the daemon keeps answering: pings and /metrics while the reload job runs.
    let reloading = std::sync::atomic::AtomicBool::new(true);
    let (legit, reload, answered) = std::thread::scope(|s| {
        let legit = s
            .spawn(|| lab.connect_legit(IpAddr::V4(LEGIT_V4), API, 200, Duration::from_millis(50)));
        let pinger = s.spawn(|| {
            let mut answered = Vec::new();
            std::thread::sleep(Duration::from_millis(300));
            while reloading.load(std::sync::atomic::Ordering::SeqCst) {
                let t = std::time::Instant::now();
                let pong = shield_user::control::call::<shield_user::control::Pong>(
                    &lab.socket(),
                    &shield_user::control::Request::Ping {},
                );
                let metrics = scrape(&lab)
                    .keys()
                    .any(|k| k.starts_with("shield_reloads_total"));
                if pong.is_ok() && metrics && reloading.load(std::sync::atomic::Ordering::SeqCst) {
                    answered.push(t.elapsed());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            answered
        });
        let r = lab.shield(&["reload"]);
        reloading.store(false, std::sync::atomic::Ordering::SeqCst);
        (
            legit.join().expect("legit"),
            r,
            pinger.join().expect("pinger"),
        )
    });
    let (ok, out, err) = reload;
    assert!(ok, "{err}");
    assert!(
        !answered.is_empty(),
        "ping and /metrics must be answered while a 1,000,000-prefix reload runs"
    );
    eprintln!(
        "during the swap: {} ping + /metrics rounds answered, slowest {:.1} ms",
        answered.len(),
        answered
            .iter()
            .max()
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    assert_eq!(
        legit.failed, 0,
        "legit connections failed during the swap: {legit:?}"
    );
    assert_eq!(
        lab.connect(IpAddr::V4(ATTACKER_V4), API, 1, Duration::ZERO)
            .ok,
        0,
        "new list in force"
    );
    let took = lab
        .audit_lines()
        .iter()
        .rev()
        .find(|l| l["event"] == "reload" && l["result"] == "ok")
        .and_then(|l| l["took_ms"].as_f64())
        .expect("reload line");
    eprintln!(
        "1,000,000-prefix deny list: daemon ready {:.1} s after start (parse, load, attach; debug build); swap to another 1,000,000: {took:.0} ms in the daemon, {out}",
        load.as_secs_f64()
    );

    // A restart over the million (after a crash: the program stays attached): the load
    // lists the tries once (the lists' summary is rebuilt from them) and the first install
    // finds the lists unchanged, so they stay in their half, in force throughout.
    lab.daemon().kill9().expect("kill -9");
    let restarted = std::time::Instant::now();
    lab.start();
    let restart = restarted.elapsed();
    assert_eq!(
        lab.connect(IpAddr::V4(ATTACKER_V4), API, 1, Duration::ZERO)
            .ok,
        0,
        "the deny list after a restart over its pins"
    );
    assert_eq!(
        lab.connect_legit(IpAddr::V4(LEGIT_V4), API, 1, Duration::ZERO)
            .ok,
        1,
        "a legit client after a restart over the pins"
    );
    eprintln!(
        "restart over the 1,000,000-prefix pins: daemon ready {:.1} s after start (debug build)",
        restart.as_secs_f64()
    );
}
