//! `shield stats`.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use shield_user::{loader, stats};

use super::BpffsArgs;

#[derive(Args)]
pub struct StatsArgs {
    /// Only this interface (default: every interface with pinned maps).
    #[arg(long = "iface", short = 'i', value_name = "IFACE", value_parser = loader::iface_arg)]
    pub iface: Option<String>,
    /// Machine-readable output (schema in the README, stable).
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (default 2) with per-second rates, top sources, bans.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
    #[command(flatten)]
    pub bpffs: BpffsArgs,
    /// The daemon's control socket, for the fleet link's state (`[fleet]`).
    #[command(flatten)]
    pub socket: super::SocketArgs,
}

pub fn run(a: StatsArgs) -> Result<ExitCode> {
    let (iface, json, bpffs, socket) = (a.iface, a.json, a.bpffs.bpffs, a.socket.socket);
    if let Some(secs) = a.watch {
        anyhow::ensure!(!json, "--watch prints tables; use --json without --watch");
        return watch_stats(&bpffs, iface.as_deref(), secs.max(1));
    }
    let ifaces = interfaces(&bpffs, iface.as_deref())?;
    let mut all = stats::Stats {
        interfaces: Vec::new(),
        fleet: shield_user::control::call::<shield_user::control::FleetReply>(
            &socket,
            &shield_user::control::Request::Fleet {},
        )
        .ok()
        .map(|r| r.fleet)
        .filter(|f| f.enabled),
    };
    for i in ifaces {
        all.interfaces.push(read(&bpffs, &i)?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print!("{}", stats::render_table(&all));
        if let Some(f) = &all.fleet {
            println!("{}", stats::fleet_line(f));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `shield stats --watch`: per-second rates between refreshes.
fn watch_stats(bpffs: &std::path::Path, iface: Option<&str>, secs: u64) -> Result<ExitCode> {
    use std::collections::HashMap;
    let ifaces = interfaces(bpffs, iface)?;
    let mut before: HashMap<(String, String, &'static str), u64> = HashMap::new();
    let mut first = true;
    loop {
        let mut out = String::new();
        for i in &ifaces {
            let s = read(bpffs, i)?;
            out.push_str(&stats::header(&s));
            out.push_str(&format!(
                "  {:<20} {:>12} {:>14}\n",
                "RULE", "REASON", "PACKETS/S"
            ));
            for r in &s.rules {
                for (reason, c) in &r.counters {
                    let key = (i.clone(), r.name.clone(), *reason);
                    let prev = before.insert(key, c.packets).unwrap_or(c.packets);
                    let rate = c.packets.saturating_sub(prev) as f64 / secs as f64;
                    if c.packets > 0 && (rate > 0.0 || first) {
                        out.push_str(&format!("  {:<20} {:>12} {:>14.1}\n", r.name, reason, rate));
                    }
                }
            }
            for t in &s.top_sources {
                out.push_str(&format!(
                    "  top: {:<42} {:<16} {:>10} limited\n",
                    t.source, t.rule, t.limited
                ));
            }
        }
        println!(
            "--- {}\n{out}",
            shield_user::audit::rfc3339(std::time::SystemTime::now())
        );
        first = false;
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}

/// The interfaces to show: the one asked for (it must have pins), else every one pinned.
fn interfaces(bpffs: &std::path::Path, iface: Option<&str>) -> Result<Vec<String>> {
    let ifaces = match iface {
        Some(i) => {
            anyhow::ensure!(
                loader::pin_dir(bpffs, i)
                    .join(shield_common::MAP_COUNTERS)
                    .exists(),
                "no shield maps pinned for {i} under {} (is it protected, with this --bpffs?)",
                bpffs.join("shield").display()
            );
            vec![i.to_string()]
        }
        None => stats::pinned_ifaces(bpffs),
    };
    anyhow::ensure!(
        !ifaces.is_empty(),
        "no shield maps pinned under {} (is `shield run` running, or was it ever run with this --bpffs?)",
        bpffs.join("shield").display()
    );
    Ok(ifaces)
}

/// One interface's figures; reading pins needs root, and says so.
fn read(bpffs: &std::path::Path, iface: &str) -> Result<stats::IfaceStats> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    stats::read_iface(bpffs, iface).with_context(|| {
        if root {
            format!("reading pinned maps of {iface}")
        } else {
            format!("reading pinned maps of {iface} (this needs root: try sudo)")
        }
    })
}
