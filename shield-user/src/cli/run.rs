//! `shield run`: the daemon.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Args;
use shield_user::{
    control, daemon,
    loader::{self, AttachMode},
    logging,
};

#[derive(Args)]
pub struct RunArgs {
    /// Interface to protect; repeat for several (each once). Without any: app-only mode, the
    /// application layer alone (the policy needs `[app]`; no XDP, no bpffs, no root needed
    /// beyond access to the sockets' paths; bans enforced at L7 as 403s).
    #[arg(long = "iface", short = 'i', value_name = "IFACE", value_parser = loader::iface_arg)]
    pub ifaces: Vec<String>,
    /// Policy file (see `shield check`). A relative path is taken from the working
    /// directory once, at start: the daemon reports it absolute (`shield tune` and `shield
    /// check --diff`, run from anywhere, name the same file).
    #[arg(long, short = 'p', value_name = "FILE")]
    pub policy: PathBuf,
    /// auto: native (driver) XDP, else generic with a warning; native or generic: only that.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: AttachMode,
    /// bpffs mount point to pin maps under (mounted if it is not bpffs yet).
    #[arg(long, value_name = "DIR", default_value = loader::DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Audit log: JSON lines, one per event (limited, ban, would_ban, ban_failed, ban_kept,
    /// ban_end, unban, reload, attack_start, attack_end, lost, fleet_ban, fleet_unban,
    /// fleet_link, fleet_circuit, restore, start, stop, app_limited, app_ban,
    /// app_ban_skipped; see `shield --help`); `-` for stdout. A regular file of its own
    /// (never the policy or the fleet's key file).
    /// Reopened on SIGUSR1.
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<String>,
    /// Control socket for `shield ban`, `unban`, `bans`, `reload`, `ping`, `stats`, `tune` and
    /// `check --diff` (created 0600: only the user the daemon runs as, root unless app-only).
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Prometheus metrics at http://ADDR/metrics: an IP:PORT (loopback unless told
    /// otherwise; no host names), or `off`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9477", value_parser = metrics_arg)]
    pub metrics: MetricsArg,
    /// Start from empty counters, limiter state and bans instead of adopting the pinned
    /// maps of the previous run.
    #[arg(long)]
    pub fresh: bool,
    /// Log level: error, warn, info, debug or trace (RUST_LOG, when set, wins and takes
    /// the full tracing filter syntax).
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = logging::level_arg)]
    pub log_level: String,
    /// Log lines as text or as JSON objects (stderr; under systemd without timestamps,
    /// which the journal adds).
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
    pub log_format: logging::LogFormat,
    /// Directory for the active bans on disk (created 0700): written atomically on change
    /// (at most once a second), restored at start when the pinned maps are gone (a reboot).
    /// One daemon's: locked while it runs (a second daemon given the same one is refused).
    #[arg(long, value_name = "DIR", default_value = shield_user::fleet::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// `--metrics`: an address or `off`.
#[derive(Clone, Copy, Debug)]
pub struct MetricsArg(Option<std::net::SocketAddr>);

fn metrics_arg(s: &str) -> Result<MetricsArg, String> {
    shield_user::metrics::parse_addr(s).map(MetricsArg)
}

pub fn run(a: RunArgs) -> Result<ExitCode> {
    logging::init(&a.log_level, a.log_format).map_err(anyhow::Error::msg)?;
    // Paths resolved once, at the start: logs, the audit log and the control socket's
    // replies name the same file whatever directory their reader is in. The policy's is what
    // the daemon reports (the control socket's `policy`): `shield tune` reads the running
    // policy there and refuses to `--write` over it, from its own directory.
    let abs = |p: &std::path::Path, flag: &str| {
        std::path::absolute(p).with_context(|| format!("{flag} {}", p.display()))
    };
    let audit_log = match a.audit_log {
        Some(log) if log != "-" => Some(abs(log.as_ref(), "--audit-log")?.display().to_string()),
        other => other,
    };
    daemon::run(&daemon::RunOptions {
        ifaces: a.ifaces,
        policy: abs(&a.policy, "--policy")?,
        xdp_mode: a.xdp_mode,
        bpffs: abs(&a.bpffs, "--bpffs")?,
        audit_log,
        // As given: a socket's path is limited to 107 bytes, which a relative path inside a
        // deep directory may fit and its absolute form not.
        socket: a.socket,
        metrics: a.metrics.0,
        fresh: a.fresh,
        log_level: a.log_level,
        state_dir: abs(&a.state_dir, "--state-dir")?,
    })?;
    Ok(ExitCode::SUCCESS)
}
