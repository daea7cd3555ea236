//! `shield ban`, `shield unban`, `shield bans`.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use shield_user::{
    bans::{BanEntry, BanMaps, Cuts, Origin},
    control::{self, Request},
    loader, policy, stats,
};

use super::{BpffsArgs, SocketArgs};

#[derive(Args)]
pub struct BanArgs {
    /// Address or prefix, e.g. 192.0.2.7 or 2001:db8:1:2::/64.
    pub source: String,
    /// How long: 30s, 10m, 2h, 1d (at most 365d).
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: String,
    /// Only this rule's ports (the prefix must be the rule's scope, e.g. /32 or /64).
    #[arg(long, value_name = "NAME")]
    pub rule: Option<String>,
    /// Why: shown by `shield bans` (also after a restart) and written to the audit log
    /// (printable text, at most 512 bytes).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Allow a prefix wider than the policy's min_ban_ipv4_prefix / min_ban_ipv6_prefix
    /// (default /8 and /32); refused without it.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
}

#[derive(Args)]
pub struct UnbanArgs {
    /// Address or prefix exactly as banned, e.g. 192.0.2.7 or 2001:db8:1:2::/64.
    pub source: String,
    #[command(flatten)]
    pub socket: SocketArgs,
}

#[derive(Args)]
pub struct BansArgs {
    /// Machine-readable output: {"bans":[…]} with the fields of the README's BAN object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(flatten)]
    pub bpffs: BpffsArgs,
}

pub fn ban(a: BanArgs) -> Result<ExitCode> {
    let BanArgs {
        source,
        duration,
        rule,
        reason,
        force,
        socket,
    } = a;
    let socket = socket.socket;
    // Typos are caught here, daemon or not (the daemon checks again against its policy).
    policy::parse_cidr(&source).map_err(|e| anyhow::anyhow!("source \"{source}\": {e}"))?;
    policy::parse_duration(&duration)
        .map_err(|e| anyhow::anyhow!("duration \"{duration}\": {e}"))?;
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

/// `shield unban`'s exit status when nothing was banned: neither a ban on exactly that
/// prefix at the NIC nor an L7 ban of a client inside it (1 stays for errors).
pub const NOT_BANNED: u8 = 2;

pub fn unban(a: UnbanArgs) -> Result<ExitCode> {
    let flag = a.socket.flag();
    let (source, socket) = (a.source, a.socket.socket);
    let cidr =
        policy::parse_cidr(&source).map_err(|e| anyhow::anyhow!("source \"{source}\": {e}"))?;
    let reply: control::Unbanned = control::call(
        &socket,
        &Request::Unban {
            source: source.clone(),
        },
    )?;
    for b in &reply.removed {
        println!(
            "unbanned {} from {} on {}",
            b.source,
            scope_text(b),
            b.iface
        );
    }
    let freed = reply.l7_freed.unwrap_or(0);
    if freed > 0 {
        println!(
            "freed {freed} client(s) inside {cidr} from the application layer's L7 bans (403s)"
        );
    }
    if !reply.removed.is_empty() || freed > 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let app = if reply.l7_freed.is_some() {
        ", nor a client inside it by the application layer"
    } else {
        ""
    };
    eprintln!(
        "shield: {cidr} is not banned: nothing was lifted (no ban on exactly {cidr} at the NIC{app})"
    );
    // Only an exact prefix is lifted: name the bans in force that hold it, if any.
    if let Ok(list) = control::call::<control::BanList>(&socket, &Request::Bans {}) {
        for b in list.bans.iter().filter(|b| {
            policy::parse_cidr(&b.source).is_ok_and(|o| shield_user::bans::covers(&o, &cidr))
        }) {
            eprintln!(
                "shield: {cidr} is inside {}, banned from {} on {} ({:.0}s left): `shield unban {}{flag}` lifts that one",
                b.source,
                scope_text(b),
                b.iface,
                b.remaining_secs,
                b.source
            );
        }
    }
    Ok(ExitCode::from(NOT_BANNED))
}

pub fn list(a: BansArgs) -> Result<ExitCode> {
    let (json, socket, bpffs) = (a.json, a.socket.socket, a.bpffs.bpffs);
    // This host's fleet name, to name the other hosts' bans in the table (no fleet: none).
    let mut own_host = None;
    let bans: Vec<BanEntry> = match control::call::<control::BanList>(&socket, &Request::Bans {}) {
        Ok(list) => {
            if let Ok(f) = control::call::<control::FleetReply>(&socket, &Request::Fleet {})
                && f.fleet.enabled
            {
                own_host = Some(f.fleet.host);
            }
            // An app-only daemon bans at L7 alone: "no active bans" would hide its 403s.
            if let Ok(pong) = control::call::<control::Pong>(&socket, &Request::Ping {})
                && pong.interfaces.is_empty()
            {
                eprintln!(
                    "shield: this daemon runs in app-only mode (no --iface): it holds no ban at the NIC; its application layer's bans (403s) are in the audit log (`app_ban`) and counted by `shield stats` (BANNED)"
                );
            }
            list.bans
        }
        Err(e) if !e.daemon_absent() => return Err(e.into()),
        Err(_) => {
            // SAFETY: geteuid has no preconditions.
            anyhow::ensure!(
                unsafe { libc::geteuid() } == 0,
                "the daemon is not running (nothing listens on {}), and reading its pinned maps needs root (try sudo)",
                socket.display()
            );
            eprintln!(
                "shield: the daemon is not running (nothing listens on {}); reading the pinned maps under {}",
                socket.display(),
                bpffs.join("shield").display()
            );
            let mut all = Vec::new();
            let ifaces = stats::pinned_ifaces(&bpffs);
            if ifaces.is_empty() {
                eprintln!(
                    "shield: no shield maps pinned under {} either: nothing is protected with this --bpffs{}",
                    bpffs.join("shield").display(),
                    super::stats::not_bpffs_hint(&bpffs)
                );
            }
            for iface in ifaces {
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
        print!("{}", bans_table(&bans, own_host.as_deref()));
    }
    Ok(ExitCode::SUCCESS)
}

fn scope_text(b: &BanEntry) -> String {
    match b.scope {
        policy::BanScope::Rule => format!("rule {}", b.rule),
        policy::BanScope::Host => "the whole host".to_string(),
    }
}

/// `own_host`: this host's fleet name when the daemon has `[fleet]`; the bans another host
/// issued then say which.
fn bans_table(bans: &[BanEntry], own_host: Option<&str>) -> String {
    use std::fmt::Write as _;
    if bans.is_empty() {
        return "no active bans\n".to_string();
    }
    let mut out = format!(
        "{:<15} {:<42} {:<16} {:>10} {:>10} {:<40} {:>5}  {}\n",
        "IFACE", "SOURCE", "SCOPE", "REMAINING", "DURATION", "ORIGIN", "LEVEL", "REASON"
    );
    for b in bans {
        let scope = match b.scope {
            policy::BanScope::Rule => format!("rule {}", b.rule),
            policy::BanScope::Host => "host".to_string(),
        };
        let mut origin = b.origin.to_string();
        if b.monitor {
            origin.push_str(" (monitor)");
        }
        if b.cuts == Cuts::NewConnections {
            origin.push_str(", new connections only");
        }
        // From the daemon: the fleet host that issued it (this host's own name for its own).
        if let (Some(own), Some(host)) = (own_host, &b.origin_host)
            && host != own
        {
            origin.push_str(&format!(", by {host}"));
        }
        let _ = writeln!(
            out,
            "{:<15} {:<42} {:<16} {:>9.0}s {:>9.0}s {:<40} {:>5}  {}",
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
                .map(|c| if shield_user::bans::unprintable(c) {
                    '\u{fffd}'
                } else {
                    c
                })
                .collect::<String>()
        );
    }
    out
}
