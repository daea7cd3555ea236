//! The `shield` command.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use shield_user::{
    bans::{BanEntry, BanMaps, Origin},
    control::{self, Request},
    daemon,
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
/// Audit log (`run --audit-log`): JSON lines with ts, event, iface, source, rule and the
/// event's own fields. Events: limited (first refused packet of a source in a second), ban,
/// would_ban (monitor mode), ban_kept (a manual ban asked for less time than a ban in
/// force: the longer one stays), ban_end, unban, reload, attack_start, attack_end, lost
/// (the daemon's program was detached or its interface vanished), start, stop.
///
/// Control socket (`--socket`, default /run/shield/shield.sock, root only): line-delimited
/// JSON, one request per line. Commands: ban {"cmd":"ban","source":"192.0.2.7",
/// "duration":"10m","rule":"api","reason":"…","force":false}, unban {"cmd":"unban",
/// "source":"…"}, bans, ping, reload, policy (the running policy's matrix). Replies
/// {"ok":true,…} or {"ok":false,"error":"…"}. The README documents every field.
#[derive(Parser)]
#[command(
    name = "shield",
    version,
    propagate_version = true,
    disable_help_subcommand = true
)]
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
        /// Interface to protect; repeat for several (each once).
        #[arg(long = "iface", short = 'i', required = true, value_name = "IFACE", value_parser = loader::iface_arg)]
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
        /// Prometheus metrics at http://ADDR/metrics: an IP:PORT (loopback unless told
        /// otherwise; no host names), or `off`.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9477", value_parser = metrics_arg)]
        metrics: MetricsArg,
        /// Start from empty counters, limiter state and bans instead of adopting the pinned
        /// maps of the previous run.
        #[arg(long)]
        fresh: bool,
        /// Log level: error, warn, info, debug or trace (RUST_LOG, when set, wins and takes
        /// the full tracing filter syntax).
        #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = shield_user::logging::level_arg)]
        log_level: String,
        /// Log lines as text or as JSON objects (stderr; under systemd without timestamps,
        /// which the journal adds).
        #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
        log_format: shield_user::logging::LogFormat,
    },
    /// Reload the running daemon's policy file now and print the result or the error (the
    /// old policy stays in force on error). SIGHUP and editing the file do the same.
    Reload {
        /// The daemon's control socket (as given to `shield run --socket`).
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Roll back: remove shield from an interface for good (program, link and pinned maps),
    /// whether or not a daemon is running (needs root).
    ///
    /// Removes only shield's own pins, by name, from <bpffs>/shield/<IFACE>/ on a bpffs
    /// mount, then the directory if nothing else is in it; anything else is left in place
    /// and named. A running daemon notices, says so, and refuses reloads and bans until it
    /// is restarted; stop it too (`systemctl stop shield`).
    Detach {
        /// Interface to remove shield from (a Linux interface name: 1-15 bytes, no `/`).
        #[arg(value_parser = loader::iface_arg)]
        iface: String,
        /// bpffs mount point the daemon pinned under.
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
        /// Why: shown by `shield bans` (also after a restart) and written to the audit log
        /// (at most 512 bytes).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Allow a prefix wider than the policy's min_ban_ipv4_prefix / min_ban_ipv6_prefix
        /// (default /8 and /32); refused without it.
        #[arg(long)]
        force: bool,
        /// The daemon's control socket (as given to `shield run --socket`).
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Lift every ban on exactly this address or prefix (manual or automatic).
    ///
    /// Host and rule bans alike, on every protected interface; a ban on a wider or
    /// narrower prefix is not touched (`shield bans` lists them as stored).
    Unban {
        /// Address or prefix exactly as banned, e.g. 192.0.2.7 or 2001:db8:1:2::/64.
        source: String,
        /// The daemon's control socket (as given to `shield run --socket`).
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// List active bans: source, scope, remaining time, origin, ladder level, reason.
    ///
    /// Asks the daemon; if none answers, reads the pinned maps and says so (and whether the
    /// program is still attached, i.e. whether the bans are enforced).
    Bans {
        /// Machine-readable output: {"bans":[…]} with the fields of the README's BAN object.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket (as given to `shield run --socket`).
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// bpffs mount point the daemon pins under (read when no daemon answers).
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
        /// The daemon's control socket, for --diff.
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Show per-rule × reason counters, tracked sources and top limited sources.
    ///
    /// Reads the pinned maps, so it works with or without a running daemon.
    Stats {
        /// Only this interface (default: every interface with pinned maps).
        #[arg(long = "iface", short = 'i', value_name = "IFACE", value_parser = loader::iface_arg)]
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
    /// Print this help, or the help of the given command (`shield help ban`).
    Help {
        /// The command to explain (none: every command).
        #[arg(value_name = "COMMAND")]
        command: Option<String>,
    },
}

/// `--metrics`: an address or `off`.
#[derive(Clone, Copy, Debug)]
struct MetricsArg(Option<std::net::SocketAddr>);

fn metrics_arg(s: &str) -> Result<MetricsArg, String> {
    shield_user::metrics::parse_addr(s).map(MetricsArg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // A closed pipe (`shield stats --watch | head`) ends a printing command quietly, as
        // it does any Unix tool, instead of a panic in println!. The daemon keeps ignoring
        // SIGPIPE: it writes to sockets and must not die with a client.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // The chain, without a cause its parent's message already quotes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("shield: error: {msg}");
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
            log_level,
            log_format,
        } => {
            shield_user::logging::init(&log_level, log_format).map_err(anyhow::Error::msg)?;
            daemon::run(&daemon::RunOptions {
                ifaces,
                policy,
                xdp_mode,
                bpffs,
                audit_log,
                socket,
                metrics: metrics.0,
                fresh,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { socket } => {
            let r: control::Reloaded = control::call(&socket, &Request::Reload {})?;
            println!(
                "reloaded: generation {}, {} rules, {} allow and {} deny prefixes, {:.1} ms",
                r.generation, r.rules, r.allow, r.deny, r.took_ms
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach { iface, bpffs } => {
            loader::require_root()?;
            let done = loader::detach_pinned(&bpffs, &iface)?;
            let dir = done.dir.display();
            anyhow::ensure!(done.found, "no shield pinned for {iface} under {dir}");
            if done.left.is_empty() {
                println!("detached shield from {iface} and removed {dir}");
            } else {
                println!(
                    "detached shield from {iface} and removed its pins; left {dir} in place: it also holds {} (not shield's)",
                    done.left.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ban {
            source,
            duration,
            rule,
            reason,
            force,
            socket,
        } => {
            let reply: control::Banned = control::call(
                &socket,
                &Request::Ban {
                    source,
                    duration,
                    rule,
                    reason,
                    force,
                },
            )?;
            for w in &reply.warnings {
                eprintln!("shield: warning: {w}");
            }
            for r in &reply.bans {
                let b = &r.ban;
                if r.kept_longer {
                    println!(
                        "{} is already banned from {} on {} for longer ({:.0}s left of {}s, {}): kept that ban",
                        b.source,
                        scope_text(b),
                        b.iface,
                        b.remaining_secs,
                        b.duration_secs,
                        b.origin,
                    );
                } else {
                    println!(
                        "banned {} from {} on {} for {}s",
                        b.source,
                        scope_text(b),
                        b.iface,
                        b.duration_secs
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Unban { source, socket } => {
            let reply: control::Unbanned = control::call(
                &socket,
                &Request::Unban {
                    source: source.clone(),
                },
            )?;
            if reply.removed.is_empty() {
                println!("no ban on {source}");
            }
            for b in &reply.removed {
                println!(
                    "unbanned {} from {} on {}",
                    b.source,
                    scope_text(b),
                    b.iface
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bans {
            json,
            socket,
            bpffs,
        } => {
            let bans: Vec<BanEntry> = match control::call::<control::BanList>(
                &socket,
                &Request::Bans {},
            ) {
                Ok(list) => list.bans,
                Err(e) if !e.daemon_absent() => return Err(e.into()),
                Err(_) => {
                    eprintln!(
                        "shield: the daemon is not running (nothing listens on {}); reading the pinned maps under {}",
                        socket.display(),
                        bpffs.join("shield").display()
                    );
                    let mut all = Vec::new();
                    for iface in stats::pinned_ifaces(&bpffs) {
                        if !loader::is_attached(&bpffs, &iface) {
                            eprintln!(
                                "shield: {iface}: the program is detached: these bans are the last ones recorded and are not enforced"
                            );
                        }
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
                print_warnings(&file, &p);
                let running: control::RunningPolicy = control::call(&socket, &Request::Policy {})?;
                let new = policy::matrix_table(&p);
                println!(
                    "--- running: {} (generation {})\n+++ {}",
                    running.path,
                    running.generation,
                    file.display()
                );
                let changes = line_diff(&running.matrix, &new);
                if changes.is_empty() {
                    println!("no change");
                } else {
                    print!("{changes}");
                }
                Ok(ExitCode::SUCCESS)
            }
            Ok(p) => {
                print_warnings(&file, &p);
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
        Command::Help { command } => {
            use clap::CommandFactory as _;
            let mut cli = Cli::command();
            match command {
                None => cli.print_long_help()?,
                Some(name) => match cli.find_subcommand_mut(&name) {
                    Some(sub) => sub
                        .clone()
                        .bin_name(format!("shield {name}"))
                        .print_long_help()?,
                    None => anyhow::bail!("no command `{name}`; `shield help` lists them"),
                },
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `shield check`: likely mistakes in a valid policy, on stderr (the exit status stays 0).
fn print_warnings(file: &std::path::Path, p: &policy::Policy) {
    for w in policy::warnings(p) {
        eprintln!("shield: warning: {}: {w}", file.display());
    }
}

fn scope_text(b: &BanEntry) -> String {
    match b.scope {
        policy::BanScope::Rule => format!("rule {}", b.rule),
        policy::BanScope::Host => "the whole host".to_string(),
    }
}

fn bans_table(bans: &[BanEntry]) -> String {
    use std::fmt::Write as _;
    if bans.is_empty() {
        return "no active bans\n".to_string();
    }
    let mut out = format!(
        "{:<10} {:<42} {:<16} {:>10} {:>10} {:<9} {:>5}  {}\n",
        "IFACE", "SOURCE", "SCOPE", "REMAINING", "DURATION", "ORIGIN", "LEVEL", "REASON"
    );
    for b in bans {
        let scope = match b.scope {
            policy::BanScope::Rule => format!("rule {}", b.rule),
            policy::BanScope::Host => "host".to_string(),
        };
        let origin = if b.monitor {
            format!("{} (monitor)", b.origin)
        } else {
            b.origin.to_string()
        };
        let _ = writeln!(
            out,
            "{:<10} {:<42} {:<16} {:>9.0}s {:>9.0}s {:<9} {:>5}  {}",
            b.iface,
            b.source,
            scope,
            b.remaining_secs,
            b.duration_secs,
            origin,
            b.level,
            // A reason stored by an older version may hold control characters: never
            // let one break the table or drive the terminal.
            b.comment
                .as_deref()
                .unwrap_or(if b.origin == Origin::Automatic && !b.rule.is_empty() {
                    "over limit"
                } else {
                    ""
                })
                .chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect::<String>()
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
            if !s.attached {
                out.push_str(&format!(
                    "{}: NOT ATTACHED: the figures are the last ones recorded; nothing is enforced\n",
                    s.iface
                ));
            }
            out.push_str(&format!(
                "{}: generation {}, mode {}, tracked sources {} of {}, {} {}, events lost {}\n",
                s.iface,
                s.policy_generation,
                s.mode,
                s.tracked_sources,
                s.max_sources,
                if s.attached {
                    "active bans"
                } else {
                    "bans recorded (not enforced)"
                },
                s.active_bans,
                s.events_lost
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
