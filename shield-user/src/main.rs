//! The `shield` command.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use shield_user::{
    bans::{BanEntry, BanMaps},
    control::{self, Request},
    daemon, lab,
    loader::{self, AttachMode},
    policy, stats,
};

/// shield: an XDP abuse shield for API hosts.
///
/// Drops packets from sources over per-source connection and packet rate limits at the NIC
/// driver, before the kernel spends anything on them. The policy (a TOML file) sets limits
/// per endpoint (protocol + destination ports) and per source scope (IPv4 /32, IPv6 /64 by
/// default), plus allow and deny lists.
///
/// Escalation: a rule's `escalation = { strikes, window, ban, backoff, max_ban, scope,
/// forget }` bans a source that was limited in `strikes` different seconds within `window`,
/// for `ban`, then `backoff` times longer on each new offence within `forget`, up to
/// `max_ban`; `scope` "rule" (its ports) or "host" (everything). See policy/example.toml.
///
/// Audit log (`run --audit-log`): JSON lines with ts, event (limited, ban, would_ban,
/// ban_end, unban), iface, source, rule, and per event scope, reason, origin, strikes,
/// level, ban_secs, expires, comment.
///
/// Control socket (`--socket`, root only): line-delimited JSON requests
/// {"cmd":"ban","source":"192.0.2.7","duration":"10m","rule":"api","reason":"…"},
/// {"cmd":"unban","source":"…"}, {"cmd":"bans"}, {"cmd":"ping"}; replies {"ok":true,…}
/// or {"ok":false,"error":"…"}. The README documents every field.
#[derive(Parser)]
#[command(name = "shield", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, fill its maps from the policy and attach it (needs root).
    ///
    /// Runs in the foreground until SIGTERM or Ctrl-C, then detaches. Maps are pinned under
    /// <bpffs>/shield/<iface>/ so `shield stats` works while it runs and after it stops, and
    /// a restart adopts the previous counters and limiter state.
    Run {
        /// Interface to protect; repeat for several.
        #[arg(long = "iface", short = 'i', required = true, value_name = "IFACE")]
        ifaces: Vec<String>,
        /// Policy file (see `shield check`).
        #[arg(long, short = 'p', value_name = "FILE")]
        policy: PathBuf,
        /// auto: native (driver) XDP, else generic with a warning; native or generic: only that.
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: AttachMode,
        /// bpffs mount point to pin maps under (mounted if it is not bpffs yet).
        #[arg(long, value_name = "DIR", default_value = loader::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Audit log: JSON lines of bans, ban ends, manual bans/unbans and the first limited
        /// packet of each source per second; `-` for stdout. Reopened on SIGUSR1.
        #[arg(long, value_name = "PATH")]
        audit_log: Option<String>,
        /// Control socket for `shield ban`, `unban`, `bans`, `reload` (created 0600, root only).
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Prometheus metrics at http://ADDR/metrics (loopback unless told otherwise); `off`
        /// disables them.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9477")]
        metrics: String,
        /// Start from empty counters, limiter state and bans instead of adopting the pinned
        /// maps of the previous run.
        #[arg(long)]
        fresh: bool,
    },
    /// Reload the running daemon's policy file now and print the result or the error (the
    /// old policy stays in force on error). SIGHUP and editing the file do the same.
    Reload {
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Roll back: remove shield from an interface for good (program, link and pinned maps),
    /// whether or not a daemon is running. Stop the daemon too, or it keeps its socket.
    Detach {
        iface: String,
        #[arg(long, value_name = "DIR", default_value = loader::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Ban a source (address or prefix) for a while, from the whole host or one rule's ports.
    ///
    /// Talks to the running daemon; takes effect at once on every protected interface.
    Ban {
        /// Address or prefix, e.g. 192.0.2.7 or 2001:db8:1:2::/64.
        source: String,
        /// How long: 30s, 10m, 2h, 1d (at most 365d).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Only this rule's ports (the prefix must be the rule's scope, e.g. /32 or /64).
        #[arg(long, value_name = "NAME")]
        rule: Option<String>,
        /// Why: shown by `shield bans` and written to the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Lift every ban on exactly this address or prefix (manual or automatic).
    Unban {
        source: String,
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// List active bans: source, scope, remaining time, origin, ladder level.
    ///
    /// Asks the daemon; if none answers, reads the pinned maps and says so.
    Bans {
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long, value_name = "DIR", default_value = loader::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Validate a policy file and print the effective policy matrix (exit 0 valid, 1 invalid).
    Check {
        /// Policy file.
        file: PathBuf,
        /// Show what would change against the running daemon's policy (- running, + FILE).
        #[arg(long)]
        diff: bool,
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Show per-rule × reason counters, tracked sources and top limited sources.
    ///
    /// Reads the pinned maps, so it works with or without a running daemon.
    Stats {
        /// Only this interface (default: every interface with pinned maps).
        #[arg(long = "iface", short = 'i', value_name = "IFACE")]
        iface: Option<String>,
        /// Machine-readable output (schema in the README, stable).
        #[arg(long)]
        json: bool,
        /// Refresh every SECS seconds (default 2) with per-second rates, top sources, bans.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
        /// bpffs mount point the daemon pins under.
        #[arg(long, value_name = "DIR", default_value = loader::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// The demo lab: a real Flask API under gunicorn in a network namespace, shield in front
    /// of it, legit clients and attackers, played in under a minute with a live view.
    ///
    /// Phases: a burst that is allowed; a connection flood from one source (limited, then
    /// banned); an IPv6 attacker rotating addresses in one /64 (caught by the /64 scope); a
    /// deny-listed network; a partner on the allow list (never limited). Ends with a summary.
    /// Never touches the machine's own interfaces; everything is removed on exit (also on
    /// Ctrl-C). This is `cargo xtask demo`, and `cargo xtask run` without arguments.
    Lab {
        /// Policy to protect the API with (its rules should cover TCP port 8000).
        #[arg(
            long,
            short = 'p',
            value_name = "FILE",
            default_value = "policy/demo.toml"
        )]
        policy: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shield: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            ifaces,
            policy,
            xdp_mode,
            bpffs,
            audit_log,
            socket,
            metrics,
            fresh,
        } => {
            daemon::run(&daemon::RunOptions {
                ifaces,
                policy,
                xdp_mode,
                bpffs,
                audit_log,
                socket,
                metrics: (metrics != "off").then_some(metrics),
                fresh,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { socket } => {
            let reply = ask(&socket, &Request::Reload {})?;
            println!(
                "reloaded: generation {}, {} rules, {} allow and {} deny prefixes, {:.1} ms",
                reply["generation"],
                reply["rules"],
                reply["allow"],
                reply["deny"],
                reply["took_ms"].as_f64().unwrap_or(0.0)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach { iface, bpffs } => {
            loader::require_root()?;
            let dir = loader::pin_dir(&bpffs, &iface);
            if loader::detach_pinned(&dir)? {
                println!("detached shield from {iface} and removed {}", dir.display());
                Ok(ExitCode::SUCCESS)
            } else {
                anyhow::bail!("no shield pinned for {iface} under {}", dir.display())
            }
        }
        Command::Ban {
            source,
            duration,
            rule,
            reason,
            socket,
        } => {
            let reply = ask(
                &socket,
                &Request::Ban {
                    source,
                    duration,
                    rule,
                    reason,
                },
            )?;
            let bans: Vec<serde_json::Value> =
                reply["bans"].as_array().cloned().unwrap_or_default();
            for b in bans {
                println!(
                    "banned {} from {} on {} for {}s",
                    b["source"].as_str().unwrap_or("?"),
                    scope_text(&b),
                    b["iface"].as_str().unwrap_or("?"),
                    b["duration_secs"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Unban { source, socket } => {
            let reply = ask(
                &socket,
                &Request::Unban {
                    source: source.clone(),
                },
            )?;
            let removed = reply["removed"].as_array().cloned().unwrap_or_default();
            if removed.is_empty() {
                println!("no ban on {source}");
            }
            for b in removed {
                println!(
                    "unbanned {} from {} on {}",
                    b["source"].as_str().unwrap_or("?"),
                    scope_text(&b),
                    b["iface"].as_str().unwrap_or("?")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bans {
            json,
            socket,
            bpffs,
        } => {
            let bans: Vec<BanEntry> = match control::request(&socket, &Request::Bans {}) {
                Ok(reply) => {
                    let reply = ok_or_error(reply)?;
                    serde_json::from_value::<Vec<BanJson>>(reply["bans"].clone())
                        .context("reading the daemon's reply")?
                        .into_iter()
                        .map(BanJson::into_entry)
                        .collect()
                }
                Err(_) => {
                    eprintln!(
                        "shield: the daemon is not running (no answer on {}); reading the pinned maps under {}",
                        socket.display(),
                        bpffs.join("shield").display()
                    );
                    let mut all = Vec::new();
                    for iface in stats::pinned_ifaces(&bpffs) {
                        let maps = BanMaps::open(&loader::pin_dir(&bpffs, &iface))
                            .with_context(|| format!("reading the ban maps of {iface}"))?;
                        for mut b in maps.active() {
                            b.iface = iface.clone();
                            all.push(b);
                        }
                    }
                    all
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "bans": bans }))?
                );
            } else {
                print!("{}", bans_table(&bans));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file, diff, socket } => match policy::load(&file) {
            Ok(p) if diff => {
                let running = ask(&socket, &Request::Policy {})?;
                let old = running["matrix"].as_str().unwrap_or_default();
                let new = policy::matrix_table(&p);
                println!(
                    "--- running: {} (generation {})\n+++ {}",
                    running["path"].as_str().unwrap_or("?"),
                    running["generation"],
                    file.display()
                );
                let changes = line_diff(old, &new);
                if changes.is_empty() {
                    println!("no change");
                } else {
                    print!("{changes}");
                }
                Ok(ExitCode::SUCCESS)
            }
            Ok(p) => {
                print!("{}", policy::matrix_table(&p));
                println!("{}: valid", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("shield: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Stats {
            iface,
            json,
            watch: Some(secs),
            bpffs,
        } => {
            anyhow::ensure!(!json, "--watch prints tables; use --json without --watch");
            watch_stats(&bpffs, iface.as_deref(), secs.max(1))
        }
        Command::Stats {
            iface,
            json,
            watch: None,
            bpffs,
        } => {
            let ifaces = match iface {
                Some(i) => vec![i],
                None => stats::pinned_ifaces(&bpffs),
            };
            anyhow::ensure!(
                !ifaces.is_empty(),
                "no shield maps pinned under {} (is `shield run` running, or was it ever run with this --bpffs?)",
                bpffs.join("shield").display()
            );
            let mut all = stats::Stats {
                interfaces: Vec::new(),
            };
            for i in ifaces {
                all.interfaces.push(
                    stats::read_iface(&bpffs, &i)
                        .with_context(|| format!("reading pinned maps of {i}"))?,
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", stats::render_table(&all));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab { policy } => {
            lab::run(&policy)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Sends a request to the daemon; an `ok: false` reply becomes an error.
fn ask(socket: &std::path::Path, req: &Request) -> Result<serde_json::Value> {
    let reply = control::request(socket, req).with_context(|| {
        format!(
            "cannot reach the shield daemon on {} (is `shield run` running? is this root?)",
            socket.display()
        )
    })?;
    ok_or_error(reply)
}

fn ok_or_error(reply: serde_json::Value) -> Result<serde_json::Value> {
    if reply["ok"] == true {
        Ok(reply)
    } else {
        anyhow::bail!(
            "{}",
            reply["error"]
                .as_str()
                .unwrap_or("the daemon refused the request")
        )
    }
}

fn scope_text(b: &serde_json::Value) -> String {
    match b["scope"].as_str() {
        Some("rule") => format!("rule {}", b["rule"].as_str().unwrap_or("?")),
        _ => "the whole host".to_string(),
    }
}

/// A ban as the daemon sends it (BanEntry minus its map key).
#[derive(serde::Deserialize)]
struct BanJson {
    #[serde(default)]
    iface: String,
    source: String,
    scope: String,
    rule: String,
    origin: String,
    monitor: bool,
    /// Absent from daemons before this field: their bans cut everything.
    #[serde(default)]
    cuts: String,
    duration_secs: f64,
    remaining_secs: f64,
    level: u8,
    comment: Option<String>,
}

impl BanJson {
    fn into_entry(self) -> BanEntry {
        let st = |s: &str, a: &'static str, b: &'static str| if s == a { a } else { b };
        BanEntry {
            iface: self.iface,
            source: self.source,
            scope: st(&self.scope, "rule", "host"),
            rule: self.rule,
            origin: st(&self.origin, "manual", "automatic"),
            monitor: self.monitor,
            cuts: if self.cuts == "new_connections" {
                "new_connections"
            } else {
                "everything"
            },
            duration_secs: self.duration_secs,
            remaining_secs: self.remaining_secs,
            level: self.level,
            comment: self.comment,
            key: Default::default(),
            rule_id: 0,
        }
    }
}

fn bans_table(bans: &[BanEntry]) -> String {
    use std::fmt::Write as _;
    if bans.is_empty() {
        return "no active bans\n".to_string();
    }
    let mut out = format!(
        "{:<10} {:<42} {:<16} {:>10} {:>10} {:<40} {:>5}  {}\n",
        "IFACE", "SOURCE", "SCOPE", "REMAINING", "DURATION", "ORIGIN", "LEVEL", "REASON"
    );
    for b in bans {
        let scope = if b.scope == "rule" {
            format!("rule {}", b.rule)
        } else {
            "host".to_string()
        };
        let mut origin = b.origin.to_string();
        if b.monitor {
            origin.push_str(" (monitor)");
        }
        if b.cuts == "new_connections" {
            origin.push_str(", new connections only");
        }
        let _ = writeln!(
            out,
            "{:<10} {:<42} {:<16} {:>9.0}s {:>9.0}s {:<40} {:>5}  {}",
            b.iface,
            b.source,
            scope,
            b.remaining_secs,
            b.duration_secs,
            origin,
            b.level,
            b.comment
                .as_deref()
                .unwrap_or(if b.origin == "automatic" && !b.rule.is_empty() {
                    "over limit"
                } else {
                    ""
                })
        );
    }
    out
}

/// Lines only in `old` (-) and only in `new` (+), in order (LCS on lines; tables are small).
fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

/// `shield stats --watch`: per-second rates between refreshes.
fn watch_stats(bpffs: &std::path::Path, iface: Option<&str>, secs: u64) -> Result<ExitCode> {
    use std::collections::HashMap;
    let ifaces = match iface {
        Some(i) => vec![i.to_string()],
        None => stats::pinned_ifaces(bpffs),
    };
    anyhow::ensure!(
        !ifaces.is_empty(),
        "no shield maps pinned under {}",
        bpffs.join("shield").display()
    );
    let mut before: HashMap<(String, String, &'static str), u64> = HashMap::new();
    let mut first = true;
    loop {
        let mut out = String::new();
        for i in &ifaces {
            let s = stats::read_iface(bpffs, i)
                .with_context(|| format!("reading pinned maps of {i}"))?;
            out.push_str(&format!(
                "{}: generation {}, mode {}, tracked sources {} of {}, active bans {}, events lost {}\n",
                s.iface, s.policy_generation, s.mode, s.tracked_sources, s.max_sources, s.active_bans, s.events_lost
            ));
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
