//! The `shield` command.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use shield_user::{
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
    },
    /// Validate a policy file and print the effective policy matrix (exit 0 valid, 1 invalid).
    Check {
        /// Policy file.
        file: PathBuf,
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
        /// bpffs mount point the daemon pins under.
        #[arg(long, value_name = "DIR", default_value = loader::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Run a throwaway lab: network namespaces joined by a veth pair, shield protecting the
    /// server side, a legit client and an attacker generating real TCP traffic.
    ///
    /// Never touches the machine's own interfaces; everything is removed on exit (also on
    /// Ctrl-C). This is what `cargo xtask run` starts with no arguments.
    Lab {
        /// Policy to protect the lab server with.
        #[arg(
            long,
            short = 'p',
            value_name = "FILE",
            default_value = "policy/example.toml"
        )]
        policy: PathBuf,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long, value_name = "SECS")]
        seconds: Option<u64>,
        /// TCP port the lab server listens on (should be covered by a policy rule).
        #[arg(long, default_value_t = 8080)]
        port: u16,
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
        } => {
            daemon::run(&daemon::RunOptions {
                ifaces,
                policy,
                xdp_mode,
                bpffs,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file } => match policy::load(&file) {
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
        Command::Stats { iface, json, bpffs } => {
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
        Command::Lab {
            policy,
            seconds,
            port,
        } => {
            lab::run(&policy, seconds, port)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
