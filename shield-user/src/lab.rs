//! `shield lab`: the daemon protecting a throwaway namespace lab, with a legit client, a
//! flooding attacker and a rotating-IPv6 attacker, printing `shield stats` as it goes.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    netlab::{
        self, ATTACKER_V4, Connects, Daemon, LEGIT_V4, LEGIT_V6, SERVER_IF, SERVER_V4, SERVER_V6,
        TcpServer, TempBpffs, Topology, connect_many, rotating_v6,
    },
    policy, stats,
};

/// One lab second: the legit clients open 2 connections each, the IPv4 attacker 100, the
/// IPv6 attacker 40 spread over 16 addresses of one /64.
fn play_second(topo: &Topology, port: u16, totals: &mut [Connects; 4]) -> Result<()> {
    let v4 = SocketAddr::new(IpAddr::V4(SERVER_V4), port);
    let v6 = SocketAddr::new(IpAddr::V6(SERVER_V6), port);
    let t = Duration::from_millis(400);
    let results = topo.client.run_in(move || {
        std::thread::scope(|s| {
            let legit4 = s.spawn(move || {
                connect_many(
                    &[IpAddr::V4(LEGIT_V4)],
                    v4,
                    2,
                    Duration::from_millis(500),
                    t,
                )
            });
            let legit6 = s.spawn(move || {
                connect_many(
                    &[IpAddr::V6(LEGIT_V6)],
                    v6,
                    2,
                    Duration::from_millis(500),
                    t,
                )
            });
            let attack4 = s.spawn(move || {
                connect_many(
                    &[IpAddr::V4(ATTACKER_V4)],
                    v4,
                    100,
                    Duration::from_millis(10),
                    t,
                )
            });
            let rotating: Vec<IpAddr> = (0..netlab::ROTATING_V6_COUNT)
                .map(|i| IpAddr::V6(rotating_v6(i)))
                .collect();
            let rot = connect_many(&rotating, v6, 40, Duration::from_millis(25), t);
            [
                legit4.join().unwrap_or_default(),
                legit6.join().unwrap_or_default(),
                attack4.join().unwrap_or_default(),
                rot,
            ]
        })
    })?;
    for (t, r) in totals.iter_mut().zip(results) {
        t.ok += r.ok;
        t.failed += r.failed;
    }
    Ok(())
}

pub fn run(policy_path: &Path, seconds: Option<u64>, port: u16) -> Result<()> {
    netlab::require_privileges()?;
    let p = policy::load(policy_path)?;
    let exe = std::env::current_exe().context("locating the shield binary")?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }

    eprintln!("lab: building namespaces (server with shield on {SERVER_IF}, clients)…");
    let bpffs = TempBpffs::new()?;
    let topo = Topology::new()?;
    let _server = TcpServer::start(&topo.server, port)?;
    let daemon = Daemon::start(&exe, &topo.server, policy_path, &bpffs.path, &[])?;
    eprint!("{}", daemon.log_text());
    eprintln!(
        "lab: policy {} ({} rules); server {SERVER_V4} / [{SERVER_V6}] port {port}",
        policy_path.display(),
        p.rules.len()
    );
    eprintln!(
        "lab: legit clients {LEGIT_V4} and {LEGIT_V6} (2 conn/s each); attacker {ATTACKER_V4} (100 conn/s); rotating attacker in {}/64 (40 conn/s)",
        rotating_v6(0)
    );
    match seconds {
        Some(s) => eprintln!("lab: running for {s} s"),
        None => eprintln!("lab: running until Ctrl-C"),
    }

    let started = Instant::now();
    let mut totals = [Connects::default(); 4];
    let mut tick = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed)
        && seconds.is_none_or(|s| started.elapsed() < Duration::from_secs(s))
    {
        play_second(&topo, port, &mut totals)?;
        tick += 1;
        if tick.is_multiple_of(3) {
            let s = stats::read_iface(&bpffs.path, SERVER_IF)?;
            println!(
                "--- t={}s\n{}",
                started.elapsed().as_secs(),
                stats::render_table(&stats::Stats {
                    interfaces: vec![s]
                })
            );
        }
    }
    let s = stats::read_iface(&bpffs.path, SERVER_IF)?;
    println!(
        "--- final counters\n{}",
        stats::render_table(&stats::Stats {
            interfaces: vec![s]
        })
    );
    let names = [
        "legit IPv4 client",
        "legit IPv6 client",
        "IPv4 attacker",
        "rotating IPv6 attacker",
    ];
    println!("{:<24} {:>10} {:>10}", "CLIENT", "CONNECTED", "FAILED");
    for (n, t) in names.iter().zip(totals) {
        println!("{n:<24} {:>10} {:>10}", t.ok, t.failed);
    }
    drop(daemon);
    eprintln!("lab: stopped; namespaces and bpffs removed");
    Ok(())
}
