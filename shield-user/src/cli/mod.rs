//! The `shield` command line: one argument struct per command (`#[derive(Args)]`), shared
//! flags (`SocketArgs`, `BpffsArgs`) flattened where they apply, a module per command.

mod assets;
mod bans;
mod check;
mod detach;
mod help;
mod ping;
mod reload;
mod run;
mod stats;
mod tune;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use shield_user::{control, loader};

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
/// `max_ban`; `scope` "rule" (its ports) or "host" (everything). See policy/example.toml
/// (/usr/share/doc/shield/example.toml when installed from the Debian package).
///
/// Audit log (`run --audit-log`): JSON lines with ts, event, iface, source, rule and the
/// event's own fields. Events: limited (first refused packet of a source in a second), ban,
/// would_ban (monitor mode), ban_failed (the ban table was full: not banned), ban_kept (a manual ban asked for less time than a ban in
/// force: the longer one stays), ban_end, unban, reload, attack_start, attack_end, lost
/// (the daemon's program was detached or its interface vanished), fleet_ban, fleet_unban
/// (received from the fleet), fleet_link (up/down), fleet_circuit (open/closed), restore
/// (bans restored from --state-dir), start, stop; from the application layer: app_limited
/// (a 429, one per client per second), app_ban, app_ban_skipped (allow-listed client,
/// trusted proxy, prefix too wide).
///
/// Fleet (policy `[fleet]`): bans shared with the other hosts through Redis; every ban this
/// host issues is installed everywhere with the same expiry, `unban` lifts it everywhere.
///
/// Application layer (`[app]`, `[[endpoint]]`, `[[signal]]` in the policy): `shield run`
/// serves the app socket (0660 root:`[app] group`) that the web app's middleware asks for a
/// decision per request (hello, decide, report, release only); repeat offenders are banned at the
/// NIC (origin app) or, behind a trusted proxy, with 403s. docs/operations.md
/// (/usr/share/doc/shield/operations.md when installed) has it all.
///
/// Control socket (`--socket`, default /run/shield/shield.sock, 0600: the daemon's user,
/// root unless app-only): line-delimited JSON, one request per line. Commands: ban {"cmd":"ban","source":"192.0.2.7",
/// "duration":"10m","rule":"api","reason":"…","force":false}, unban {"cmd":"unban",
/// "source":"…"}, bans, ping, reload, policy (the running policy's matrix), fleet (the
/// fleet link's state), app_stats (the app layer's counters). Replies
/// {"ok":true,…} or {"ok":false,"error":"…"}. The README documents every field.
#[derive(Parser)]
#[command(
    name = "shield",
    version,
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load the XDP program, fill its maps from the policy and attach it (needs root);
    /// without --iface, serve the application layer alone (app-only mode, no root).
    ///
    /// Runs in the foreground until SIGTERM or Ctrl-C, then detaches. Maps are pinned under
    /// <bpffs>/shield/<iface>/ so `shield stats` works while it runs and after it stops, and
    /// a restart adopts the previous counters and limiter state.
    Run(run::RunArgs),
    /// Reload the running daemon's policy file now and print the result or the error (the
    /// old policy stays in force on error). SIGHUP and editing the file do the same.
    ///
    /// Prints `reloaded: generation N, R rules, A allow and D deny prefixes, T ms`; an
    /// app-only daemon (no --iface) prints `reloaded: generation N, E endpoints and S
    /// signals (app-only: no interface), T ms`.
    Reload(reload::ReloadArgs),
    /// Roll back: remove shield from an interface for good (program, link and pinned maps),
    /// whether or not a daemon is running (needs root).
    ///
    /// Removes only shield's own pins, by name, from <bpffs>/shield/<IFACE>/ on a bpffs
    /// mount, then the directory if nothing else is in it; anything else is left in place
    /// and named. Also removes the interface's nftables table `inet shield_syncookie_IFACE`
    /// (kept for `challenge = "syncookie"`), if there is one (and restores
    /// `net.netfilter.nf_conntrack_tcp_loose` when it was the last); the table is in the
    /// interface's network namespace, so run `detach` there (`ip netns exec NS shield detach
    /// IFACE`). A running daemon notices, says
    /// so, and refuses reloads and bans until it is restarted; stop it too (`systemctl stop
    /// shield`).
    Detach(detach::DetachArgs),
    /// Ban a source (address or prefix) for a while, from the whole host or one rule's ports.
    ///
    /// Talks to the running daemon; takes effect at once on every protected interface.
    Ban(bans::BanArgs),
    /// Lift every ban on exactly this address or prefix (manual, automatic or app).
    ///
    /// Host and rule bans alike, on every protected interface, and the application layer's
    /// L7 bans (403s) of every client inside the prefix; a ban on a wider or narrower prefix
    /// is not touched (`shield bans` lists them as stored). With `[fleet]`, lifted on every
    /// host.
    ///
    /// Exit status: 0 when something was lifted; 2 when nothing was banned (said on stderr,
    /// with any wider ban in force that holds the prefix; with `[fleet]` the unban is sent
    /// to the other hosts all the same); 1 on an error.
    Unban(bans::UnbanArgs),
    /// List active bans: source, scope, remaining time, origin, ladder level, reason.
    ///
    /// Asks the daemon; if none answers, reads the pinned maps and says so (and whether the
    /// program is still attached, i.e. whether the bans are enforced).
    Bans(bans::BansArgs),
    /// Validate a policy file and print the effective policy matrix (exit 0 valid, 1 invalid).
    Check(check::CheckArgs),
    /// Show per-rule × reason counters, tracked sources and top limited sources.
    ///
    /// Reads the pinned maps, so it works with or without a running daemon.
    Stats(stats::StatsArgs),
    /// Suggest limits from observed traffic: per rule, the distribution of per-source
    /// connection and packet rates, what the current limits touch, and suggested values.
    ///
    /// Observes IFACE for --for (default 10m; a progress line with the time left on a
    /// terminal) through a packet socket: the frames the XDP program passes, after it, so
    /// nothing changes in the data path; what the limits drop is taken from the rule's
    /// counters. Run it in monitor mode, or with loose limits, to see sources' full rates.
    /// For each rule: per source, the busiest second and the busiest minute (a run under a
    /// minute: its count scaled to a minute) at p50, p90, p99, p99.9 and max; how many
    /// sources and what share of packets the current limits touch; and `connections` (tcp
    /// rules) and `packets` (other rules, and tcp rules that have one) values that leave
    /// the --percentile P of sources untouched, with headroom x1.5: rate = the P-th
    /// percentile's busiest second x1.5, burst = twice the rate, sustained = its busiest
    /// minute x1.5. --write FILE writes the running policy with them applied (comments
    /// kept) for `shield check --diff FILE` and a reload (not written when the running
    /// policy changed while tune observed). Needs root and the running daemon (for its
    /// policy); run it in the interface's network namespace.
    ///
    /// Ctrl-C (SIGINT) or SIGTERM during the observation ends it early, as with tcpdump:
    /// the report covers what was observed, its first line says it was cut short and after
    /// how long (--json: "stopped_early"), and --write writes FILE only if at least a
    /// minute was observed (the suggestions then come from a shorter observation than
    /// asked: review them); exit 0, or 1 when --write was asked and not written. A second
    /// SIGINT or SIGTERM aborts at once (the process ends by that signal; FILE untouched
    /// or replaced whole, never half-written).
    Tune(tune::TuneArgs),
    /// Whether the daemon is up and protects every interface it runs on (for scripts).
    ///
    /// Exit 0: it answers and its program runs on each of its interfaces (or it serves the
    /// application layer alone); 2: it answers, but an interface lost its program (`shield
    /// detach`, the interface gone or renamed: each is named with why); 1: no daemon answers
    /// on the socket (after --wait), or the socket refuses the caller. A daemon answers once
    /// its program is attached and its control socket listens, so `shield ping --wait 30`
    /// after starting it waits for it to be ready.
    Ping(ping::PingArgs),
    /// Print this help, or the help of the given command (`shield help ban`).
    Help(help::HelpArgs),
    /// Write the man pages and shell completions (for packaging; `cargo xtask package`).
    #[command(hide = true)]
    GenerateAssets(assets::AssetsArgs),
}

/// The running daemon's control socket, for commands that talk to it.
#[derive(Args)]
pub struct SocketArgs {
    /// The daemon's control socket (as given to `shield run --socket`).
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

impl SocketArgs {
    /// ` --socket PATH` for a command a message suggests, so that it works as printed
    /// with the socket this command was given; empty for the default socket.
    pub fn flag(&self) -> String {
        if self.socket == Path::new(control::DEFAULT_SOCKET) {
            return String::new();
        }
        let text = self.socket.to_string_lossy();
        // A path holds no NUL byte, so quoting cannot fail.
        let quoted = shlex::try_quote(&text).unwrap_or_else(|_| text.clone());
        format!(" --socket {quoted}")
    }
}

/// Where the pins are, for commands that read or remove them.
#[derive(Args)]
pub struct BpffsArgs {
    /// bpffs mount point the daemon pins under.
    #[arg(long, value_name = "DIR", default_value = loader::DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

impl Command {
    /// Whether this command is the daemon (which must keep ignoring SIGPIPE).
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Run(_))
    }

    pub fn dispatch(self) -> Result<ExitCode> {
        match self {
            Command::Run(a) => run::run(a),
            Command::Reload(a) => reload::run(a),
            Command::Detach(a) => detach::run(a),
            Command::Ban(a) => bans::ban(a),
            Command::Unban(a) => bans::unban(a),
            Command::Bans(a) => bans::list(a),
            Command::Check(a) => check::run(a),
            Command::Stats(a) => stats::run(a),
            Command::Tune(a) => tune::run(a),
            Command::Ping(a) => ping::run(a),
            Command::Help(a) => help::run(a),
            Command::GenerateAssets(a) => assets::run(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `--socket` a suggested command carries reads back as the same path in a shell.
    #[test]
    fn a_suggested_socket_flag_is_quoted_for_the_shell() {
        let flag = |p: &str| {
            SocketArgs {
                socket: PathBuf::from(p),
            }
            .flag()
        };
        assert_eq!(flag(control::DEFAULT_SOCKET), "");
        assert_eq!(flag("/tmp/s.sock"), " --socket /tmp/s.sock");
        let odd = "/tmp/it's here/s.sock";
        let words = shlex::split(&format!("shield unban x{}", flag(odd))).expect("splits");
        assert_eq!(words[3..], ["--socket", odd]);
    }
}
