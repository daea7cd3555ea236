//! The veth flood harness every flood section uses (`flood_with`: one filter, one
//! generator shape, the program's own figures).

use super::*;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Filter {
    None,
    Nft,
    Hashlimit,
    ShieldNative,
    ShieldGeneric,
    /// Native shield with an `unverified` budget on the flooded rule.
    ShieldUnverified,
    /// A trivial XDP_DROP program, native: the ceiling.
    TrivialDrop,
    /// Native shield with the budget and `challenge = "syncookie"`: SYN-ACKs over it.
    ShieldSyncookie,
    /// A trivial XDP_TX program, native: the cookie path's ceiling.
    TrivialTx,
    /// A trivial XDP_PASS program, native: the pass path's ceiling for any XDP program.
    TrivialPass,
    /// Native shield with a host ban on the flooding source (section 2b).
    ShieldBanned,
    /// `ShieldUnverified` with escalation on the rule (section 2b).
    ShieldEscalating,
    /// Native shield with the flood's sources on the deny list (section 2b).
    ShieldDenied,
}

impl Filter {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Filter::ShieldUnverified => "shield + `unverified` budget, native XDP",
            Filter::TrivialDrop => "trivial XDP_DROP, native (ceiling)",
            Filter::ShieldSyncookie => "shield + budget + `syncookie` (SYN-ACKs), native XDP",
            Filter::TrivialTx => "trivial XDP_TX, native (cookie ceiling)",
            Filter::TrivialPass => "trivial XDP_PASS, native",
            Filter::None => "no filter",
            Filter::Nft => "nftables meter (netdev ingress)",
            Filter::Hashlimit => "iptables hashlimit (raw PREROUTING)",
            Filter::ShieldNative => "shield, native XDP",
            Filter::ShieldGeneric => "shield, generic XDP",
            Filter::ShieldBanned => "shield, source banned (host ban), native XDP",
            Filter::ShieldEscalating => "shield + budget + escalation, native XDP",
            Filter::ShieldDenied => "shield, sources deny-listed, native XDP",
        }
    }
}

/// Section 3's flood rate (below what every filter sustains in section 2).
pub(crate) const FLOOD_PPS: u32 = 1_500_000;

/// The per-source limit of every filter sections 2, 2b and 3 compare: shield's rule
/// (`FLOOD_POLICY*`), the nftables meter (`NFT_METER`) and iptables hashlimit
/// (`HASHLIMIT_ARGS`): 5 SYNs/s, burst 10. The prose of those sections says so; a unit test
/// holds the three to it.
pub(crate) const FLOOD_POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8000, 8080]
connections = { rate = "5/s", burst = 10 }
"#;

/// `FLOOD_POLICY` with an aggregate budget for connection attempts from unverified sources.
pub(crate) const FLOOD_POLICY_UNVERIFIED: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8000, 8080]
connections = { rate = "5/s", burst = 10 }
unverified = { rate = "2000/s", burst = 4000 }
"#;

/// `FLOOD_POLICY_UNVERIFIED` with escalation (bans per rule): every packet then also looks
/// its source up among the rule's bans (section 2b).
pub(crate) const FLOOD_POLICY_ESCALATING: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8000, 8080]
connections = { rate = "5/s", burst = 10 }
unverified = { rate = "2000/s", burst = 4000 }
escalation = { strikes = 3, window = "10m", ban = "15m" }
"#;

/// The nftables meter of section 2 (`FLOOD_POLICY`'s limit).
pub(crate) const NFT_METER: &str = "add table netdev shield_bench; add chain netdev shield_bench in { type filter hook ingress device shield0 priority 0; }; add rule netdev shield_bench in tcp flags & (syn|ack) == syn meter syn4 size 65535 { ip saddr limit rate over 5/second burst 10 packets } counter drop";

/// The iptables hashlimit of section 2 (`FLOOD_POLICY`'s limit).
pub(crate) const HASHLIMIT_ARGS: [&str; 24] = [
    "iptables",
    "-t",
    "raw",
    "-A",
    "PREROUTING",
    "-p",
    "tcp",
    "--syn",
    "-m",
    "hashlimit",
    "--hashlimit-above",
    "5/sec",
    "--hashlimit-burst",
    "10",
    "--hashlimit-mode",
    "srcip",
    "--hashlimit-name",
    "synflood",
    "--hashlimit-htable-size",
    "65536",
    "--hashlimit-htable-max",
    "262144",
    "-j",
    "DROP",
];

pub(crate) fn native(f: Filter) -> bool {
    matches!(
        f,
        Filter::ShieldNative
            | Filter::ShieldUnverified
            | Filter::ShieldEscalating
            | Filter::TrivialDrop
            | Filter::ShieldSyncookie
            | Filter::TrivialTx
            | Filter::TrivialPass
            | Filter::ShieldBanned
            | Filter::ShieldDenied
    )
}

pub(crate) fn is_shield(f: Filter) -> bool {
    matches!(
        f,
        Filter::ShieldNative
            | Filter::ShieldGeneric
            | Filter::ShieldUnverified
            | Filter::ShieldEscalating
            | Filter::ShieldSyncookie
            | Filter::ShieldBanned
            | Filter::ShieldDenied
    )
}

/// A trivial program of the test object, not shield.
pub(crate) fn is_trivial(f: Filter) -> bool {
    matches!(
        f,
        Filter::TrivialDrop | Filter::TrivialTx | Filter::TrivialPass
    )
}

pub(crate) struct FloodResult {
    pub(crate) shape: &'static str,
    pub(crate) filter: Filter,
    pub(crate) pps: f64,
    pub(crate) dropped_pct: f64,
    pub(crate) prog_ns: Option<f64>,
    /// Share of the generated frames that reached the XDP program.
    pub(crate) reached_pct: Option<f64>,
}

/// One flood of `frames` SYNs through `filter` (see `flood_with`).
pub(crate) fn flood(
    filter: Filter,
    mode: u32,
    sources: u32,
    frames: u32,
) -> Result<(f64, f64, ProgFigures), String> {
    flood_with(filter, mode, sources, frames, Legit::None).map(|f| (f.pps, f.dropped_pct, f.prog))
}

/// What one flood measured.
pub(crate) struct Flood {
    /// The generator's rate.
    pub(crate) pps: f64,
    /// Share dropped (of what reached the XDP program, for XDP filters).
    pub(crate) dropped_pct: f64,
    pub(crate) prog: ProgFigures,
    pub(crate) wrk: Option<Wrk>,
    /// Frames an XDP filter handled per second (reached its program); `None` without one.
    pub(crate) handled_per_s: Option<f64>,
    /// Packets the server's IP layer received per second (`Ip: InReceives`).
    pub(crate) delivered_per_s: f64,
}

/// An XDP filter's own figures: (ns per packet, % of the generated frames that reached it).
pub(crate) type ProgFigures = Option<(f64, f64)>;

/// The legit client's load during a flood.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Legit {
    None,
    /// `wrk` for this many seconds (closed loop, keep-alive), the flood at `FLOOD_PPS`.
    Wrk(u32),
    /// This many GETs on new connections, 25 ms apart, the flood at the generator's full
    /// rate (the generator at SCHED_IDLE: it yields to the host's tasks).
    Paced(u32),
}

/// wrk's figures: (requests, errors, p50 ms, p99 ms).
pub(crate) type Wrk = (u64, u64, f64, f64);

/// wrk's figures, or why its output holds none (never zeros for a run that did not happen).
pub(crate) fn parse_wrk_checked(out: &std::process::Output) -> Result<Wrk, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("requests in") {
        return Err(format!(
            "wrk did not run ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_wrk(&text))
}

pub(crate) fn parse_wrk(out: &str) -> Wrk {
    let ms = |line: Option<&str>| -> f64 {
        let v = line
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("0");
        let (n, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = n.parse().unwrap_or(0.0);
        match unit {
            "us" => n / 1000.0,
            "s" => n * 1000.0,
            _ => n,
        }
    };
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut errors = 0;
    if let Some(l) = out.lines().find(|l| l.contains("Socket errors:")) {
        errors += l
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum::<u64>();
    }
    if let Some(l) = out.lines().find(|l| l.contains("Non-2xx")) {
        errors += l
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
    }
    let p50 = ms(out.lines().find(|l| l.trim_start().starts_with("50%")));
    let p99 = ms(out.lines().find(|l| l.trim_start().starts_with("99%")));
    (requests, errors, p50, p99)
}

/// One flood: `frames` SYNs of a shape (generator `mode`, `sources`) through `filter`;
/// with `wrk_secs`, the flood goes on while wrk measures the demo API from the legit client.
pub(crate) fn flood_with(
    filter: Filter,
    mode: u32,
    sources: u32,
    frames: u32,
    legit: Legit,
) -> Result<Flood, String> {
    let wrk_secs = match legit {
        Legit::Wrk(secs) => Some(secs),
        _ => None,
    };
    let with_api = legit != Legit::None;
    use aya::programs::{Xdp, XdpMode};
    let cpus = cpus();
    // Section 3: one veth queue per CPU, the generator on the last CPU and the legit client
    // on CPU 0, so that the legit flow has its own receive ring (as on a multi-queue NIC).
    let queues = if with_api { cpus as u32 } else { 1 };
    let topo = Topology::with_queues(queues).map_err(|e| format!("{e:#}"))?;
    let server = topo.server.name.clone();
    let sh = |args: &[&str]| -> Result<(), String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &server])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    };
    // Receiving side.
    let bpffs = TempBpffs::new().map_err(|e| format!("{e:#}"))?;
    let dir = loader::pin_dir(&bpffs.path, "flood");
    let mut rx = loader::load(&dir, 262_144).map_err(|e| e.to_string())?;
    let cookie_policy = format!("{FLOOD_POLICY_UNVERIFIED}challenge = \"syncookie\"\n");
    let deny_policy = format!("{}{FLOOD_POLICY}", deny_list());
    let text = match filter {
        Filter::ShieldUnverified => FLOOD_POLICY_UNVERIFIED,
        Filter::ShieldEscalating => FLOOD_POLICY_ESCALATING,
        Filter::ShieldSyncookie => &cookie_policy,
        Filter::ShieldDenied => &deny_policy,
        _ => FLOOD_POLICY,
    };
    let p = policy::parse_str("flood.toml", text).map_err(|e| e.to_string())?;
    loader::PolicyMaps::open(&dir)
        .and_then(|mut m| m.install(&policy::compile(&p), 1, 0).map(|_| ()))
        .map_err(|e| e.to_string())?;
    if filter == Filter::ShieldBanned {
        // The one-source shape's address, banned from the whole host as `shield ban` does.
        let mut bans = shield_user::bans::BanMaps::open(&dir).map_err(|e| e.to_string())?;
        bans.ban(
            policy::parse_cidr(BANNED_SOURCE)?,
            Duration::from_secs(3600),
            None,
            Some("bench"),
        )
        .map_err(|e| e.to_string())?;
        bans.set_bans_flag(true).map_err(|e| e.to_string())?;
    }
    let prog_name = match filter {
        Filter::TrivialDrop => DROP_PROGRAM_NAME,
        Filter::TrivialTx => TX_PROGRAM_NAME,
        Filter::TrivialPass => BASELINE_PROGRAM_NAME,
        _ => PROGRAM_NAME,
    };
    let mode_x = if native(filter) {
        XdpMode::Driver
    } else {
        XdpMode::Skb
    };
    // veth takes XDP_TX'd frames only with its NAPI on: a native XDP program turns it on,
    // and so does GRO (every case but native XDP).
    if !native(filter) {
        sh(&[
            "ethtool",
            "-K",
            shield_tests::netlab::SERVER_IF,
            "gro",
            "on",
        ])?;
    }
    // The trivial drop lives in the test programs' object, not in the shipped one.
    let mut drop_obj = is_trivial(filter).then(shield_tests::load_bench_object);
    let obj = drop_obj.as_mut().unwrap_or(&mut rx);
    // What the XDP_TX cases send back reaches the client side only with an XDP program
    // (veth's NAPI ring) on its veth: the trivial pass, the same for both.
    let mut pass_obj = matches!(filter, Filter::ShieldSyncookie | Filter::TrivialTx)
        .then(shield_tests::load_bench_object);
    if let Some(o) = pass_obj.as_mut() {
        let prog: &mut Xdp = o
            .program_mut(BASELINE_PROGRAM_NAME)
            .ok_or("program")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        prog.load().map_err(|e| e.to_string())?;
        topo.client
            .run_in(|| {
                prog.attach(shield_tests::netlab::CLIENT_IF, XdpMode::Driver)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("{e:#}"))??;
    }
    if is_shield(filter) || is_trivial(filter) {
        let prog: &mut Xdp = obj
            .program_mut(prog_name)
            .ok_or("program")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        let _ = prog.load();
        topo.server
            .run_in(|| {
                prog.attach(shield_tests::netlab::SERVER_IF, mode_x)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("{e:#}"))??;
    }
    match filter {
        Filter::Nft => sh(&["nft", NFT_METER])?,
        Filter::Hashlimit => sh(&HASHLIMIT_ARGS)?,
        _ => {}
    }
    let _server_listener = TcpServer::start(&topo.server, 8080).map_err(|e| format!("{e:#}"))?;
    let _api = match with_api {
        true => Some(
            shield_tests::netlab::Gunicorn::start(&topo.server, 8000)
                .map_err(|e| format!("{e:#}"))?,
        ),
        false => None,
    };
    // Generator on the client side.
    let generator = Generator::new(mode, sources)?;
    // Section 3 floods the API's port; section 2 a plain listener.
    let dport = if with_api { 8000 } else { 8080 };
    let mac = mac_of(&topo.server.name, shield_tests::netlab::SERVER_IF)?;
    let frame = if mode == 3 {
        syn_frame6(
            mac,
            shield_tests::netlab::rotating_v6(0).octets(),
            shield_tests::netlab::SERVER_V6.octets(),
            dport,
        )
    } else {
        syn_frame(mac, [198, 51, 100, 3], [198, 51, 100, 1], dport)
    };
    // Section 3's program ns come from its own run. Sections 2 and 2b measure rates with
    // the stats off (they add clock reads to every run of a program, which the no-filter
    // baseline never pays) and take program ns from a shorter flood with them on, below.
    let stats = matches!(legit, Legit::Wrk(_)).then(BpfStats::on);
    let rx_fd = {
        let prog: &Xdp = drop_obj
            .as_ref()
            .unwrap_or(&rx)
            .program(prog_name)
            .ok_or("program")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        prog.fd().map_err(|e| e.to_string())?.as_fd().as_raw_fd()
    };
    // Clients that were talking before the flood (and so are verified where that matters).
    if let Legit::Paced(_) = legit {
        add_known_clients(&topo)?;
        topo.client
            .run_in(|| paced_gets(KNOWN_CLIENTS))
            .map_err(|e| format!("{e:#}"))?;
    }
    if with_api {
        let dst = std::net::SocketAddr::new(IpAddr::V4(SERVER_V4), 8000);
        topo.client
            .run_in(|| {
                for _ in 0..5 {
                    shield_tests::netlab::http_get(
                        IpAddr::V4(shield_tests::netlab::LEGIT_V4),
                        dst,
                        "/api/items",
                        Duration::from_secs(2),
                    );
                }
            })
            .map_err(|e| format!("{e:#}"))?;
    }
    let before = run_stats(rx_fd);
    let ip_before = ip_in_receives(&server)?;
    let seen_before = ring_frames(&server)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let wrk_out = std::sync::Mutex::new(None);
    let elapsed = topo
        .client
        .run_in(|| -> Result<(u64, f64), String> {
            std::thread::scope(|scope| -> Result<(u64, f64), String> {
                if let Some(secs) = wrk_secs {
                    let (stop, wrk_out) = (&stop, &wrk_out);
                    scope.spawn(move || {
                        std::thread::sleep(Duration::from_millis(500));
                        let out = Command::new("taskset")
                            .args([
                                "-c",
                                "0",
                                "wrk",
                                "-t1",
                                "-c8",
                                &format!("-d{secs}s"),
                                "--timeout",
                                "2s",
                                "--latency",
                                "http://198.51.100.1:8000/api/items",
                            ])
                            .output();
                        *wrk_out.lock().expect("lock") = Some(
                            out.map_err(|e| format!("wrk (Debian package wrk): {e}"))
                                .and_then(|o| parse_wrk_checked(&o)),
                        );
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    });
                }
                if let Legit::Paced(count) = legit {
                    let (stop, wrk_out) = (&stop, &wrk_out);
                    scope.spawn(move || {
                        pin_to(0);
                        std::thread::sleep(Duration::from_millis(500));
                        let lat = paced_gets(count);
                        *wrk_out.lock().expect("lock") = Some(Ok(parse_paced(&lat)));
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    });
                }
                match legit {
                    Legit::Paced(_) => {
                        pin_to(cpus - 1);
                        run_idle();
                    }
                    Legit::Wrk(_) => pin_to(cpus - 1),
                    Legit::None => {}
                }
                match legit {
                    Legit::None => Ok((u64::from(frames), generator.send_count(&frame, frames)?)),
                    // Section 3 floods at a fixed rate, the same for every filter, so the
                    // legit service is compared under equal pressure (not under whatever
                    // rate each filter lets the generator reach on a 2-core machine).
                    Legit::Wrk(_) => generator.flood_until(&frame, &stop, Some(FLOOD_PPS)),
                    Legit::Paced(_) => generator.flood_until(&frame, &stop, None),
                }
            })
        })
        .map_err(|e| format!("{e:#}"))??;
    let (sent, elapsed) = elapsed;
    let wrk = match wrk_out.into_inner().expect("lock") {
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => return Err(e),
        None => None,
    };
    std::thread::sleep(Duration::from_millis(300));
    let after = run_stats(rx_fd);
    let ip_after = ip_in_receives(&server)?;
    let seen = ring_frames(&server)?.saturating_sub(seen_before) as f64;
    drop(stats);
    // Share dropped, from each filter's own counters.
    let dropped = match filter {
        Filter::ShieldNative
        | Filter::ShieldGeneric
        | Filter::ShieldUnverified
        | Filter::ShieldEscalating
        | Filter::ShieldSyncookie
        | Filter::ShieldBanned
        | Filter::ShieldDenied => {
            let s =
                shield_user::stats::read_iface(&bpffs.path, "flood").map_err(|e| e.to_string())?;
            // Answered with a cookie: kept from the kernel like a drop.
            s.rules
                .iter()
                .map(|r| {
                    r.counters["conn_limit"].packets
                        + r.counters["unverified_limit"].packets
                        + r.counters["syncookie"].packets
                        + r.counters["ban"].packets
                        + r.counters["deny"].packets
                })
                .sum::<u64>() as f64
        }
        Filter::TrivialDrop | Filter::TrivialTx => seen,
        Filter::TrivialPass => 0.0,
        Filter::Nft => {
            let o = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &server,
                    "nft",
                    "-j",
                    "list",
                    "table",
                    "netdev",
                    "shield_bench",
                ])
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&o.stdout);
            text.split("\"packets\":")
                .nth(1)
                .and_then(|t| {
                    t.split(|c: char| !c.is_ascii_digit())
                        .find(|x| !x.is_empty())
                })
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0)
        }
        Filter::Hashlimit => {
            let o = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &server,
                    "iptables",
                    "-t",
                    "raw",
                    "-L",
                    "PREROUTING",
                    "-v",
                    "-x",
                    "-n",
                ])
                .output()
                .map_err(|e| e.to_string())?;
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains("DROP"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0)
        }
        Filter::None => 0.0,
    };
    let has_prog = is_shield(filter) || is_trivial(filter);
    let prog_ns = match legit {
        Legit::Wrk(_) => (has_prog && after.1 > before.1).then(|| per_run(before, after)),
        // A quarter as many frames again, with the stats on.
        Legit::None if has_prog => {
            let stats = BpfStats::on();
            let before = run_stats(rx_fd);
            topo.client
                .run_in(|| generator.send_count(&frame, (frames / 4).max(1)))
                .map_err(|e| format!("{e:#}"))??;
            std::thread::sleep(Duration::from_millis(300));
            let after = run_stats(rx_fd);
            drop(stats);
            (after.1 > before.1).then(|| per_run(before, after))
        }
        _ => None,
    };
    drop(pass_obj);
    let sent = sent.max(1) as f64;
    // XDP filters: the share of what reached the program (native veth drops frames its
    // ring cannot take before any program runs), and how much reached it.
    let prog = prog_ns.map(|ns| (ns, (100.0 * seen / sent).min(100.0)));
    let pct = if prog.is_some() && seen > 0.0 {
        100.0 * dropped / seen
    } else {
        100.0 * dropped / sent
    };
    Ok(Flood {
        pps: sent / elapsed,
        dropped_pct: pct,
        handled_per_s: prog.map(|_| seen / elapsed),
        prog,
        wrk,
        delivered_per_s: ip_after.saturating_sub(ip_before) as f64 / elapsed,
    })
}

/// The one-source shape's address (the generator's frame as built), banned in section 2b.
pub(crate) const BANNED_SOURCE: &str = "198.51.100.3/32";

/// Section 2b's deny list: the flood's 10/8 among 1,000 prefixes (a blocklist feed's size).
pub(crate) fn deny_list() -> String {
    let mut list = String::from("[lists]\ndeny = [\"10.0.0.0/8\"");
    for i in 0..999 {
        let _ = write!(list, ", \"172.{}.{}.0/24\"", 16 + i / 256, i % 256);
    }
    list.push_str("]\n");
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Section 2 compares filters at one limit and its prose says which: shield's flood
    /// policies (every rule a flood section installs) limit a source as the nftables meter
    /// and hashlimit do, 5 SYNs/s with a burst of 10. A drop row ("source over its limit")
    /// measures a drop path only while the flood is far over that limit.
    #[test]
    fn every_filter_of_the_flood_sections_limits_a_source_alike() {
        for text in [
            FLOOD_POLICY,
            FLOOD_POLICY_UNVERIFIED,
            FLOOD_POLICY_ESCALATING,
        ] {
            let p = policy::parse_str("flood.toml", text).expect("flood policy parses");
            let c = p.rules[0].connections.expect("a connections limit");
            assert_eq!(
                (c.rate.count, c.rate.period_secs, c.burst),
                (5, 1, 10),
                "{text}"
            );
        }
        assert!(NFT_METER.contains("limit rate over 5/second burst 10 packets"));
        let arg = |name: &str| {
            let i = HASHLIMIT_ARGS.iter().position(|a| *a == name).expect(name);
            HASHLIMIT_ARGS[i + 1]
        };
        assert_eq!(
            (arg("--hashlimit-above"), arg("--hashlimit-burst")),
            ("5/sec", "10")
        );
    }
}
