//! `shield stats`.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use shield_user::{control, loader, stats};

use super::{BpffsArgs, SocketArgs};

#[derive(Args)]
pub struct StatsArgs {
    /// Only this interface (default: every interface with pinned maps).
    #[arg(long = "iface", short = 'i', value_name = "IFACE", value_parser = loader::iface_arg)]
    pub iface: Option<String>,
    /// Machine-readable output (schema in the README, stable).
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (default 2; a whole number >= 1) with per-second rates,
    /// top sources, bans.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = watch_secs
    )]
    pub watch: Option<u64>,
    #[command(flatten)]
    pub bpffs: BpffsArgs,
    /// The daemon's control socket: the fleet link's state and the app layer's counters
    /// live in the daemon.
    #[command(flatten)]
    pub socket: SocketArgs,
}

pub fn run(a: StatsArgs) -> Result<ExitCode> {
    let (iface, json, bpffs, socket) = (a.iface, a.json, a.bpffs.bpffs, a.socket.socket);
    if let Some(secs) = a.watch {
        anyhow::ensure!(!json, "--watch prints tables; use --json without --watch");
        return watch_stats(&bpffs, iface.as_deref(), secs, &socket);
    }
    let ifaces = match interfaces(&bpffs, iface.as_deref()) {
        Ok(v) => v,
        Err(e) => match daemon_interfaces(&socket) {
            // An app-only daemon (`shield run` without --iface): no pinned maps, its counters.
            Some(d) if d.is_empty() && iface.is_none() && app_counters(&socket).is_ok() => {
                Vec::new()
            }
            // A daemon that lost its interfaces (`shield detach` removed the pins): say so.
            Some(d) if d.iter().any(|i| i.lost.is_some()) => {
                let why: Vec<String> = d
                    .iter()
                    .filter_map(|i| i.lost.as_ref().map(|w| format!("{}: {w}", i.iface)))
                    .collect();
                return Err(e.context(format!(
                    "the running daemon no longer protects its interfaces ({}); restart `shield run`",
                    why.join("; ")
                )));
            }
            _ => return Err(e),
        },
    };
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
    let app = app_counters(&socket);
    if json {
        let mut v = serde_json::to_value(&all)?;
        v["app"] = match &app {
            Ok(a) => app_json(a),
            Err(why) => {
                eprintln!("shield: {why}");
                serde_json::Value::Null
            }
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", stats::render_table(&all));
        if let Some(f) = &all.fleet {
            println!("{}", stats::fleet_line(f));
        }
        print!("{}", app_table(&app));
    }
    Ok(ExitCode::SUCCESS)
}

/// The interfaces the daemon answering on `socket` runs on (`ping`), if one answers.
fn daemon_interfaces(socket: &std::path::Path) -> Option<Vec<control::PingIface>> {
    control::call::<control::Pong>(socket, &control::Request::Ping {})
        .ok()
        .map(|p| p.interfaces)
}

/// The app layer's counters from the daemon (they are not in pinned maps), or why not.
fn app_counters(socket: &std::path::Path) -> Result<control::AppStats, String> {
    control::call::<control::AppStats>(socket, &control::Request::AppStats {}).map_err(|e| {
        if e.daemon_absent() {
            "daemon not reachable: app counters unavailable".to_string()
        } else {
            format!("daemon not reachable: app counters unavailable ({e})")
        }
    })
}

/// `"app"` of `--json`: `{socket, errors, endpoints: [...], signals: [...]}`.
fn app_json(a: &control::AppStats) -> serde_json::Value {
    let rows = |kind: &str| {
        a.rows
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| {
                if r.kind == "endpoint" {
                    serde_json::json!({"name": r.name, "allowed": r.allowed, "limited": r.limited, "banned": r.banned, "in_flight": r.in_flight, "quota_used": r.quota_used})
                } else {
                    serde_json::json!({"name": r.name, "allowed": r.allowed, "limited": r.limited, "banned": r.banned})
                }
            })
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "socket": a.socket,
        "errors": a.errors,
        "endpoints": rows("endpoint"),
        "signals": rows("signal"),
    })
}

/// The app layer's part of the text output.
fn app_table(app: &Result<control::AppStats, String>) -> String {
    let a = match app {
        Err(why) => return format!("app layer: {why}\n"),
        Ok(a) => a,
    };
    let Some(socket) = &a.socket else {
        return "app layer: not served (no [app] in the running policy)\n".to_string();
    };
    let mut out = format!("app layer on {socket}: {} errors\n", a.errors);
    out.push_str(&format!(
        "  {:<9} {:<24} {:>12} {:>12} {:>8} {:>9} {:>10}\n",
        "KIND", "NAME", "ALLOWED", "LIMITED", "BANNED", "IN FLIGHT", "QUOTA USED"
    ));
    for r in &a.rows {
        out.push_str(&format!(
            "  {:<9} {:<24} {:>12} {:>12} {:>8} {:>9} {:>10}\n",
            r.kind, r.name, r.allowed, r.limited, r.banned, r.in_flight, r.quota_used
        ));
    }
    out
}

/// `--watch SECS`: a whole number of seconds, at least 1.
fn watch_secs(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("refreshes come at most once a second: give SECS of 1 or more".into()),
        Ok(secs) => Ok(secs),
        Err(_) => Err(format!(
            "SECS is a whole number of seconds, 1 or more (like 2), got {text:?}"
        )),
    }
}

/// `shield stats --watch`: per-second rates between refreshes.
fn watch_stats(
    bpffs: &std::path::Path,
    iface: Option<&str>,
    secs: u64,
    socket: &std::path::Path,
) -> Result<ExitCode> {
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
            if first {
                // No earlier reading yet: a rate here would be a made-up 0.0.
                out.push_str(&format!(
                    "  (reasons counted so far; per-second rates from the next refresh, in {secs} s)\n"
                ));
            }
            for r in &s.rules {
                for (reason, c) in &r.counters {
                    let key = (i.clone(), r.name.clone(), *reason);
                    let prev = before.insert(key, c.packets).unwrap_or(c.packets);
                    let rate = c.packets.saturating_sub(prev) as f64 / secs as f64;
                    if c.packets > 0 && (rate > 0.0 || first) {
                        let rate = if first {
                            "-".to_string()
                        } else {
                            format!("{rate:.1}")
                        };
                        out.push_str(&format!("  {:<20} {:>12} {:>14}\n", r.name, reason, rate));
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
        out.push_str(&app_table(&app_counters(socket)));
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
                "no shield maps pinned for {i} under {} (is it protected, with this --bpffs?){}",
                bpffs.join("shield").display(),
                not_bpffs_hint(bpffs)
            );
            vec![i.to_string()]
        }
        None => stats::pinned_ifaces(bpffs),
    };
    anyhow::ensure!(
        !ifaces.is_empty(),
        "no shield maps pinned under {} (is `shield run` running, or was it ever run with this --bpffs?){}",
        bpffs.join("shield").display(),
        not_bpffs_hint(bpffs)
    );
    Ok(ifaces)
}

/// When `bpffs` is not a bpffs mount in this shell's mount namespace: the usual cause is a
/// daemon that mounted it itself inside another one (`ip netns exec`, a container).
pub(super) fn not_bpffs_hint(bpffs: &std::path::Path) -> String {
    if loader::is_bpffs(bpffs) {
        return String::new();
    }
    format!(
        "; {0} is not a bpffs mount here: a daemon that mounted it itself inside another mount namespace (`ip netns exec`, a container) pins where this shell cannot see (and every `ip netns exec` gets a mount namespace of its own, so a later one does not see them either): mount bpffs from this shell first (`mount -t bpf bpf {0}`), then start the daemon with `--bpffs {0}`",
        bpffs.display()
    )
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        stats: super::StatsArgs,
    }

    #[test]
    fn watch_takes_whole_seconds_from_one_and_defaults_to_two() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.stats.watch);
        assert_eq!(parse(&["stats"]).ok(), Some(None));
        assert_eq!(parse(&["stats", "--watch"]).ok(), Some(Some(2)));
        assert_eq!(parse(&["stats", "--watch", "5"]).ok(), Some(Some(5)));
        let zero = parse(&["stats", "--watch", "0"]).expect_err("0 is refused");
        assert!(zero.to_string().contains("--watch"), "{zero}");
        // In the operator's terms, not the parser's range (`0 is not in 1..18446744073709551615`).
        assert!(
            zero.to_string().contains("give SECS of 1 or more")
                && !zero.to_string().contains("18446744073709551615"),
            "{zero}"
        );
        let word = parse(&["stats", "--watch", "1s"]).expect_err("1s is refused");
        assert!(
            word.to_string().contains("whole number of seconds"),
            "{word}"
        );
    }
}
