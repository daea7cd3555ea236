//! `shield-bench [--quick] [--out FILE]`: the benchmarks behind `cargo xtask bench` (root).
//!
//! 1. Per-packet cost (BPF_PROG_TEST_RUN): every path of the shield program and a trivial
//!    XDP_PASS program in the same run, medians, ratios; xdp-filter (xdp-tools) as a peer
//!    where it has an equivalent.
//! 4. Memory and control-plane scale: kernel memory per tracked source, 1,000,000-prefix
//!    load and swap, daemon RSS idle and under a connection flood.
//!
//! Writes a Markdown report. Ratios measured side by side are the result; absolute figures
//! are context only (a shared, noisy 2-core VM).

use std::{
    fmt::Write as _,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use shield_common::{BASELINE_PROGRAM_NAME, MAP_SOURCES, PROGRAM_NAME};
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS, require_root, shield_bin};
use shield_user::{
    bans::BanMaps,
    loader,
    netlab::{
        ATTACKER_V4, Daemon, Netns, SERVER_V4, TcpServer, TempBpffs, Topology, connect_many, unique,
    },
    policy,
};

struct Opts {
    quick: bool,
    out: PathBuf,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// BPF_PROG_TEST_RUN on a raw program fd (for programs aya did not load): (retval, ns).
fn raw_test_run(fd: i32, data: &[u8], repeat: u32) -> std::io::Result<(u32, u32)> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = vec![0u8; data.len() + 512];
    let mut attr = [0u8; 80];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&(data.len() as u32).to_ne_bytes());
    attr[12..16].copy_from_slice(&(out.len() as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(data.as_ptr() as u64).to_ne_bytes());
    attr[24..32].copy_from_slice(&(out.as_mut_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&repeat.to_ne_bytes());
    // SAFETY: a bpf_attr for BPF_PROG_TEST_RUN with live input/output buffers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let retval = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes"));
    let duration = u32::from_ne_bytes(attr[36..40].try_into().expect("4 bytes"));
    Ok((retval, duration))
}

struct Row {
    path: String,
    verdict: &'static str,
    shield_ns: f64,
    base_ns: f64,
    peer: Option<f64>,
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_PASS => "pass",
        XDP_DROP => "drop",
        _ => "other",
    }
}

/// Median ns/packet of `program` and of the baseline, runs interleaved.
fn measure(h: &mut Harness, frame: &[u8], repeat: u32, runs: usize) -> (u32, f64, f64) {
    let (mut s, mut b, mut verdict) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        let (v, ns) = h.run_repeat(PROGRAM_NAME, frame, repeat);
        verdict = v;
        s.push(ns);
        b.push(h.run_repeat(BASELINE_PROGRAM_NAME, frame, repeat).1);
    }
    (verdict, median(s), median(b))
}

fn big_deny(n: u32, extra: &str) -> String {
    let mut s = String::with_capacity(n as usize * 20);
    let _ = writeln!(s, "[lists]\ndeny = [\"{extra}\",");
    for i in 0..n {
        let a = (11u32 << 24) + i * 4;
        let _ = writeln!(s, "\"{}/30\",", std::net::Ipv4Addr::from(a));
    }
    s.push_str("]\n[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = { rate = \"100000000/s\", burst = 100000000 }\n");
    s
}

const FAST: &str = r#"
[lists]
allow = ["10.20.0.0/16"]
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "100000000/s", burst = 100000000 }
[[rule]]
name = "slow"
protocol = "tcp"
ports = [9090]
connections = { rate = "1/h", burst = 1 }
"#;

/// xdp-filter (libxdp) on a veth in a scratch namespace, denying 192.0.2.66 by source:
/// its dispatcher's id, and the guards keeping it alive.
fn xdp_filter_peer() -> Result<(i32, Netns, aya::programs::ProgramFd), String> {
    let ns = Netns::new("shb").map_err(|e| format!("{e:#}"))?;
    ns.ip(&["link", "add", "xf0", "type", "veth", "peer", "name", "xf1"])
        .map_err(|e| format!("{e:#}"))?;
    ns.ip(&["link", "set", "xf0", "up"])
        .map_err(|e| format!("{e:#}"))?;
    ns.ip(&["link", "set", "xf1", "up"])
        .map_err(|e| format!("{e:#}"))?;
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "xdp-filter"])
            .args(args)
            .output()
            .map_err(|e| format!("xdp-filter (Debian package xdp-tools): {e}"))
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).into_owned())
                }
            })
    };
    run(&["load", "--mode", "skb", "xf0"])?;
    run(&["ip", "--mode", "src", "192.0.2.66"])?;
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-j", "link", "show", "xf0"])
        .output()
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let id = v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .or_else(|| v[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
        .ok_or_else(|| format!("no XDP program id in {v}"))? as u32;
    let fd = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .ok_or("xdp-filter's program not found")?
        .fd()
        .map_err(|e| e.to_string())?;
    let raw = fd.as_fd().as_raw_fd();
    Ok((raw, ns, fd))
}

fn section1(o: &Opts, report: &mut String) {
    let repeat = if o.quick { 200_000 } else { 1_000_000 };
    let runs = if o.quick { 3 } else { 5 };
    eprintln!("bench: 1. per-packet cost ({repeat} repeats, median of {runs})");
    let mut rows = Vec::new();
    let peer = xdp_filter_peer();
    let peer_ns = |frame: &[u8]| -> Option<f64> {
        let (fd, _, _) = peer.as_ref().ok()?;
        let v: Vec<f64> = (0..runs)
            .filter_map(|_| {
                raw_test_run(*fd, frame, repeat)
                    .ok()
                    .map(|(_, d)| f64::from(d))
            })
            .collect();
        (!v.is_empty()).then(|| median(v))
    };

    let mut h = Harness::new(FAST);
    let mut add = |h: &mut Harness, path: &str, pkt: Pkt, peer: bool| {
        let frame = pkt.bytes();
        h.run(&frame);
        let (v, s, b) = measure(h, &frame, repeat, runs);
        rows.push(Row {
            path: path.to_string(),
            verdict: verdict_name(v),
            shield_ns: s,
            base_ns: b,
            peer: if peer { peer_ns(&frame) } else { None },
        });
    };
    add(
        &mut h,
        "non-IP frame (ARP)",
        Pkt::new("192.0.2.1", L4::syn(8080)).ethertype(0x0806),
        false,
    );
    add(
        &mut h,
        "allowed source under its limit (known, updated in place)",
        Pkt::new("192.0.2.1", L4::syn(8080)),
        true,
    );
    add(
        &mut h,
        "source over its limit (dropped)",
        Pkt::new("192.0.2.2", L4::syn(9090)),
        false,
    );
    add(
        &mut h,
        "allow-list hit",
        Pkt::new("198.51.100.7", L4::syn(8080)),
        false,
    );
    add(
        &mut h,
        "IPv6 with 3 extension headers (allowed)",
        Pkt::new("2001:db8:9::1", L4::syn(8080)).ext(&[0, 60, 43]),
        false,
    );
    add(
        &mut h,
        "unmatched port (no rule)",
        Pkt::new("192.0.2.1", L4::syn(22)),
        false,
    );
    // Banned: a manual host ban on the source.
    let dir = loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE);
    BanMaps::open(&dir)
        .and_then(|mut m| {
            m.ban(
                policy::parse_cidr("192.0.2.9").expect("cidr"),
                Duration::from_secs(3600),
                None,
            )
        })
        .expect("manual ban");
    add(
        &mut h,
        "banned source (host ban)",
        Pkt::new("192.0.2.9", L4::syn(8080)),
        false,
    );
    drop(h);

    // Deny-list hit with 1,000,000 prefixes loaded.
    let mut h = Harness::new(&big_deny(1_000_000, "192.0.2.66/32"));
    let frame = Pkt::new("192.0.2.66", L4::syn(8080)).bytes();
    let (v, s, b) = measure(&mut h, &frame, repeat, runs);
    rows.push(Row {
        path: "deny-list hit, 1,000,000 prefixes loaded".into(),
        verdict: verdict_name(v),
        shield_ns: s,
        base_ns: b,
        peer: peer_ns(&frame),
    });
    drop(h);

    let _ = writeln!(report, "## 1. Per-packet cost (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        report,
        "ns per packet as the kernel reports it for `{repeat}` repeats, median of {runs} runs; the trivial `XDP_PASS` program is run alternately with shield on the same frame. xdp-filter (Debian xdp-tools, libxdp dispatcher, generic mode) is measured on the paths where it has an equivalent (deny by source address; a source not on its list passes).{}\n",
        match &peer {
            Ok(_) => String::new(),
            Err(e) => format!(" xdp-filter could not be measured here: {e}."),
        }
    );
    let _ = writeln!(
        report,
        "| path | verdict | shield ns | trivial ns | shield / trivial | xdp-filter ns | xdp-filter / shield |"
    );
    let _ = writeln!(report, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let (pn, pr) = match r.peer {
            Some(p) => (
                format!("{p:.1}"),
                format!("{:.2}", p / r.shield_ns.max(0.1)),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            report,
            "| {} | {} | {:.1} | {:.1} | {:.2} | {pn} | {pr} |",
            r.path,
            r.verdict,
            r.shield_ns,
            r.base_ns,
            r.shield_ns / r.base_ns.max(0.1)
        );
    }
    report.push('\n');
}

fn memlock_of(pin: &std::path::Path) -> Option<u64> {
    let map = aya::maps::MapData::from_pin(pin).ok()?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn section4(o: &Opts, report: &mut String) {
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

fn main() {
    let mut o = Opts {
        quick: false,
        out: PathBuf::from("BENCHMARKS.md"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = PathBuf::from(args.next().expect("--out FILE")),
            "-h" | "--help" => {
                eprintln!(
                    "usage: shield-bench [--quick] [--out FILE]   (root; SHIELD_BIN: the shield binary)"
                );
                return;
            }
            other => {
                eprintln!("shield-bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    require_root();
    let started = Instant::now();
    let mut report = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(report, "# shield benchmarks\n");
    let _ = writeln!(
        report,
        "Written by `cargo xtask bench{}` on {}: kernel {kernel}, {} CPUs ({cpu}). Ratios measured side by side in the same run are the result; absolute figures depend on the machine (shared and noisy here). Sections 2 (drop capacity on a veth flood against nftables, iptables hashlimit and xdp-filter) and 3 (legit service under flood) are not written yet (issue 5 stays open for them).\n",
        if o.quick { " --quick" } else { "" },
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    section1(&o, &mut report);
    section4(&o, &mut report);
    let _ = writeln!(
        report,
        "_Run took {:.0} s._",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(&o.out, &report).expect("writing the report");
    print!("{report}");
    eprintln!("bench: wrote {}", o.out.display());
}
