//! Sections 4, 5 and 7: memory and control-plane scale, reliability (the differential
//! fuzzer), fleet propagation (three daemons and a real Redis).

use super::*;

pub(crate) fn memlock_of(pin: &std::path::Path) -> Option<u64> {
    let map = aya::maps::MapData::from_pin(pin).ok()?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Section 5, reliability: the differential fuzzer (`cargo xtask fuzz`) over ten million
/// frames (one million with --quick), its result written as measured.
pub(crate) fn section5(o: &Opts, report: &mut String) {
    let frames: u64 = if o.quick { 1_000_000 } else { 10_000_000 };
    let seed = 11;
    eprintln!("bench: 5. reliability ({frames} fuzz frames)");
    let started = std::time::Instant::now();
    let s = shield_tests::fuzz::run(seed, frames);
    let secs = started.elapsed().as_secs_f64();
    let _ = writeln!(
        report,
        "## 5. Reliability
"
    );
    let coverage: Vec<String> = s
        .by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let _ = writeln!(
        report,
        "Differential fuzzing (`cargo xtask fuzz --frames {frames} --seed {seed}`, in this run): {} random and malformed frames under {} random policies reloaded into the running program, with clock steps, through the real XDP program and the reference model (`shield_common::model`): **{} frames, {} mismatches** ({secs:.1} s). Coverage: {}; {} bans issued, {} sources tracked.\n",
        s.frames,
        s.policies,
        s.frames,
        s.mismatches,
        coverage.join(", "),
        s.bans,
        s.tracked,
    );
}

/// Section 7, fleet propagation: three real daemons sharing bans through a real Redis
/// (`shield_tests::fleetlab`); bans issued on host 1 through its control socket, the time
/// from issue to install on hosts 2 and 3 as each reports it (`fleet_ban` audit lines).
pub(crate) fn section7(o: &Opts, report: &mut String) {
    use shield_tests::fleetlab::{FleetLab, percentile, wait_until};
    let bans: u32 = if o.quick { 100 } else { 500 };
    eprintln!("bench: 7. fleet propagation ({bans} bans)");
    let policy = "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = { rate = \"5/s\", burst = 10 }\n";
    let mut lab = FleetLab::new(3, 8080, 1_000_000, policy).expect("fleet lab");
    lab.start_all().expect("starting the daemons");
    for h in &lab.hosts {
        wait_until("the fleet link", Duration::from_secs(15), || {
            h.fleet()["connected"] == true
        });
    }
    let socket = lab.hosts[0].socket();
    let started = Instant::now();
    for i in 0..bans {
        let req = shield_user::control::Request::Ban {
            source: format!("10.{}.{}.{}/32", 100 + i / 65536, (i / 256) % 256, i % 256),
            duration: "10m".into(),
            rule: None,
            reason: None,
            force: false,
        };
        shield_user::control::call::<shield_user::control::Banned>(&socket, &req)
            .expect("ban on host 1");
    }
    let issue_secs = started.elapsed().as_secs_f64();
    let mut lags = Vec::new();
    for h in &lab.hosts[1..] {
        let lag_of = || -> Vec<f64> {
            h.audit_lines()
                .iter()
                .filter(|l| l["event"] == "fleet_ban" && l["replay"] == false)
                .filter_map(|l| l["lag_ms"].as_f64())
                .collect()
        };
        wait_until("every ban installed", Duration::from_secs(60), || {
            lag_of().len() >= bans as usize
        });
        lags.extend(lag_of());
    }
    let n = lags.len();
    let p50 = percentile(&mut lags, 50.0);
    let p99 = percentile(&mut lags, 99.0);
    let max = percentile(&mut lags, 100.0);
    let _ = writeln!(report, "## 7. Fleet propagation\n");
    let _ = writeln!(
        report,
        "Three real daemons, each on its own veth and namespaces, sharing bans through one real `redis-server` (password, append-only file, its own namespace; `shield_tests::fleetlab`, signed messages). {bans} bans issued on host 1 through its control socket, back to back ({:.0} bans/s); each of hosts 2 and 3 reports, per ban, the time from issue on host 1 to install in its maps (`lag_ms` of its `fleet_ban` audit lines; same clock, one machine). Target (issue 14): p99 at most 1 s.\n\n| installs | p50 | p99 | max |\n| ---: | ---: | ---: | ---: |\n| {n} | {p50:.0} ms | {p99:.0} ms | {max:.0} ms |\n",
        f64::from(bans) / issue_secs,
    );
}

pub(crate) fn section4(o: &Opts, report: &mut String) {
    eprintln!("bench: 4. memory and control-plane scale");
    let _ = writeln!(report, "## 4. Memory and control-plane scale\n");
    let _ = writeln!(
        report,
        "| per-source table | tracked sources | kernel memory (memlock) | per source |"
    );
    let _ = writeln!(report, "| ---: | ---: | ---: | ---: |");
    let sizes: &[u32] = if o.quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    for &n in sizes {
        let h = Harness::new(&format!(
            "[defaults]\nmax_sources = {n}\n[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = {{ rate = \"1/s\", burst = 5 }}\n"
        ));
        // Fill it: one SYN from each of n sources (100.64.0.0/10).
        let mut frame = Pkt::new("100.64.0.1", L4::syn(8080)).bytes();
        for i in 0..n {
            let a = (100u32 << 24 | 64 << 16) + i;
            frame[26..30].copy_from_slice(&a.to_be_bytes());
            h.run(&frame);
        }
        let tracked = h.stats().tracked_sources;
        let pin = loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE).join(MAP_SOURCES);
        let mem = memlock_of(&pin).unwrap_or(0);
        let _ = writeln!(
            report,
            "| {n} | {tracked} | {:.1} MiB | {} B |",
            mem as f64 / 1048576.0,
            mem / u64::from(n)
        );
    }
    report.push('\n');

    // 1,000,000-prefix deny list: compile + load into an empty half, then swap to another.
    let n = 1_000_000;
    let parse_start = Instant::now();
    let a = policy::parse_str("a.toml", &big_deny(n, "192.0.2.66/32")).expect("policy");
    let parse = parse_start.elapsed();
    let b = policy::parse_str(
        "b.toml",
        &big_deny(n, "192.0.2.67/32").replace("\"11.", "\"12."),
    )
    .expect("policy");
    let bpffs = TempBpffs::new().expect("bpffs");
    let dir = loader::pin_dir(&bpffs.path, "bench");
    let _ebpf = loader::load(&dir, 65536).expect("load");
    let mut maps = loader::PolicyMaps::open(&dir).expect("maps");
    let t = Instant::now();
    maps.install(&policy::compile(&a), 1, 0).expect("install");
    let load = t.elapsed();
    let t = Instant::now();
    maps.install(&policy::compile(&b), 2, 0).expect("swap");
    let swap = t.elapsed();
    let _ = writeln!(
        report,
        "| 1,000,000-prefix deny list | time |\n| --- | ---: |"
    );
    let _ = writeln!(
        report,
        "| parse and validate the TOML (19 MB) | {:.2} s |",
        parse.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "| load into the maps (empty) | {:.2} s |",
        load.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "| swap for another 1,000,000 (atomic, old half emptied) | {:.2} s |\n",
        swap.as_secs_f64()
    );
    drop(maps);

    // Daemon RSS idle and under a connection flood.
    let topo = Topology::new().expect("namespaces");
    let _server = TcpServer::start(&topo.server, 9090).expect("server");
    let policy_path = std::env::temp_dir().join(format!("{}.toml", unique("shield-bench-")));
    std::fs::write(&policy_path, FAST).expect("policy");
    let fresh = TempBpffs::new().expect("bpffs");
    let daemon = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy_path,
        &fresh.path,
        &["--metrics", "off"],
    )
    .expect("daemon");
    let pid = daemon.pid();
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(pid).unwrap_or(0);
    let dst = std::net::SocketAddr::new(IpAddr::V4(SERVER_V4), 9090);
    let flood = topo
        .client
        .run_in(move || {
            connect_many(
                &[IpAddr::V4(ATTACKER_V4)],
                dst,
                3000,
                Duration::from_millis(1),
                Duration::from_millis(200),
            )
        })
        .expect("client namespace");
    let peak = rss_kib(pid).unwrap_or(0);
    let _ = std::fs::remove_file(&policy_path);
    let _ = writeln!(
        report,
        "| daemon (`shield run`, release build) | RSS |\n| --- | ---: |"
    );
    let _ = writeln!(report, "| idle | {} KiB |", idle);
    let _ = writeln!(
        report,
        "| after a 3 s flood of 1,000 connection attempts/s on a 1/h rule ({} admitted, {} dropped) | {} KiB |\n",
        flood.ok, flood.failed, peak
    );
    drop(daemon);
}

// ---------------------------------------------------------------- section 2: veth flood
