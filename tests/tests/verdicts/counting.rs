//! Bytes per rule and reason, refills with time, state updated in place, `stats --watch` rates, and packets without a port across reloads.

use super::*;

#[test]
fn bytes_are_counted_per_rule_and_reason() {
    let h = Harness::new(BASE);
    let small = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    let big = Pkt::new("192.0.2.1", L4::syn(8080)).options(10).bytes();
    for f in [&small, &big, &small, &big] {
        h.run(f);
    }
    let pass = h.count("api", Pass);
    let drop = h.count("api", ConnLimit);
    assert_eq!(
        pass.bytes,
        (2 * small.len() + big.len()) as u64,
        "pass bytes"
    );
    assert_eq!(drop.bytes, big.len() as u64, "conn_limit bytes");
}

#[test]
fn bucket_refills_with_time() {
    let h = Harness::new(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "10/s", burst = 2 }
"#,
    );
    let f = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    assert_eq!(h.run(&f), XDP_PASS);
    assert_eq!(h.run(&f), XDP_PASS);
    assert_eq!(h.run(&f), XDP_DROP, "burst of 2 exhausted");
    // 10/s: one token every 100 ms.
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert_eq!(
        h.run(&f),
        XDP_PASS,
        "a token must be back after 150 ms at 10/s"
    );
}

#[test]
fn known_source_is_updated_in_place() {
    let h = Harness::new(BASE);
    let f = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..10 {
        h.run(&f);
    }
    let s = h.stats();
    assert_eq!(s.tracked_sources, 1, "one source, one entry");
    assert_eq!(s.top_sources.len(), 1);
    assert_eq!(s.top_sources[0].source, "192.0.2.1/32");
    assert_eq!(s.top_sources[0].rule, "api");
    assert_eq!(s.top_sources[0].limited, 7);
}

#[test]
fn stats_watch_prints_per_second_rates() {
    let h = Harness::new(BASE);
    let frame = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    for _ in 0..5 {
        h.run(&frame);
    }
    let mut child = std::process::Command::new(shield_tests::shield_bin())
        .args(["stats", "--watch", "1", "--bpffs"])
        .arg(&h.bpffs.path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("shield stats --watch");
    // Traffic between two refreshes shows up as a rate. Waits on the output itself, not on
    // the clock: a refresh is printed whole (one write), so once a refresh's header is read
    // its reading was taken; the traffic goes after the first one, and the output is read
    // until a refresh whose reading surely came after the traffic (two headers later).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let mut headers = 0;
    let read_until = |text: &mut String, want: usize, headers: &mut usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while *headers < want {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("--watch printed {headers} refreshes: {text}"));
            *headers += usize::from(line.starts_with("--- "));
            text.push_str(&line);
            text.push('\n');
        }
    };
    read_until(&mut text, 1, &mut headers);
    for _ in 0..20 {
        h.run(&frame);
    }
    let after = headers + 2;
    read_until(&mut text, after, &mut headers);
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    while let Ok(line) = rx.try_recv() {
        text.push_str(&line);
        text.push('\n');
    }
    let blocks = text.matches("--- ").count();
    assert!(blocks >= 2, "--watch must refresh every second: {text}");
    assert!(text.contains("PACKETS/S"), "{text}");
    // The first refresh has no earlier reading: its rows show no rate, not a made-up 0.0.
    let first = text.split("--- ").nth(1).unwrap_or("");
    assert!(
        first.contains("per-second rates from the next refresh")
            && first
                .lines()
                .any(|l| l.contains("conn_limit") && l.split_whitespace().last() == Some("-")),
        "the first refresh must show no rate: {first}"
    );
    assert!(
        !text
            .split("--- ")
            .nth(2)
            .unwrap_or("")
            .contains("next refresh"),
        "{text}"
    );
    // 20 SYNs refused in one refresh interval: a conn_limit rate of about 20/s.
    let rate = text
        .lines()
        .filter(|l| l.contains("api") && l.contains("conn_limit"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .fold(0.0f64, f64::max);
    assert!(
        (19.0..=21.0).contains(&rate),
        "expected a conn_limit rate of 20/s: {text}"
    );
}

/// Packets without a port (non-first fragments, ESP, GRE)
/// belong to no rule, whichever policy half is active: a catch-all TCP rule's slot for
/// port 0 in the other half must never judge them.
#[test]
fn packets_without_a_port_stay_unmatched_across_reloads() {
    const CATCH_ALL: &str = r#"
[[rule]]
name = "tcp-all"
protocol = "tcp"
packets = { rate = "1/s", burst = 1 }
escalation = { strikes = 1, window = "1m", ban = "1h", scope = "host" }
"#;
    let mut h = Harness::new(CATCH_ALL);
    let frames = [
        Pkt::new("192.0.2.1", L4::syn(8080)).fragment(185),
        Pkt::new("2001:db8:9::1", L4::syn(8080)).fragment(100),
        Pkt::new(
            "192.0.2.2",
            L4::Other {
                proto: 50,
                payload: vec![0; 16],
            },
        ),
        Pkt::new(
            "192.0.2.3",
            L4::Other {
                proto: 47,
                payload: vec![0; 8],
            },
        ),
    ];
    let mut sent = 0;
    for reloads in 0..=3u32 {
        if reloads > 0 {
            h.reload(CATCH_ALL, 1 + reloads);
        }
        for f in &frames {
            for i in 0..3 {
                assert_eq!(
                    h.run(&f.bytes()),
                    XDP_PASS,
                    "after {reloads} reloads, packet {i} without a port from {} was dropped: it was judged by the catch-all TCP rule",
                    f.src
                );
                sent += 1;
            }
        }
        let s = h.stats();
        let none = &s.rules[0].counters;
        assert_eq!(
            none["pass"].packets, sent,
            "after {reloads} reloads: packets without a port must count as (none)/pass"
        );
        let tcp = s
            .rules
            .iter()
            .find(|r| r.name == "tcp-all")
            .expect("rule tcp-all");
        assert!(
            tcp.counters.values().all(|c| c.packets == 0),
            "after {reloads} reloads the catch-all TCP rule counted packets without a port: {:?}",
            tcp.counters
        );
        assert_eq!(s.tracked_sources, 0, "no per-source state for them");
        assert!(h.bans().is_empty(), "nobody banned");
    }
}
