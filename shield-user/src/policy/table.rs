//! The effective policy matrix as a text table (`shield check`).

use std::fmt::Write as _;

use super::{Limit, Policy, Protocol};

fn limit_text(l: &Option<Limit>) -> String {
    match l {
        None => "-".to_string(),
        Some(l) => {
            let mut s = format!("{} burst {}", l.rate, l.burst);
            if let Some(sus) = l.sustained {
                let _ = write!(s, ", max {sus}");
            }
            s
        }
    }
}

fn escalation_text(e: Option<&super::Escalation>) -> String {
    use super::format_duration as d;
    match e {
        None => "-".to_string(),
        Some(e) => format!(
            "{} strike{}/{} -> ban {} x{} max {}, {} scope, forget {}",
            e.strikes,
            if e.strikes == 1 { "" } else { "s" },
            d(e.window),
            d(e.ban),
            e.backoff,
            d(e.max_ban),
            e.scope,
            d(e.forget)
        ),
    }
}

/// Renders the policy as the table `shield check` prints: one row per rule, with every
/// default resolved, then the lists and what unmatched traffic does.
pub fn matrix_table(policy: &Policy) -> String {
    let header = [
        "RULE",
        "PROTO",
        "PORTS",
        "MODE",
        "SCOPE v4/v6",
        "CONNECTIONS (per source)",
        "PACKETS (per source)",
        "ESCALATION",
    ];
    let mut rows: Vec<[String; 8]> = Vec::new();
    for r in &policy.rules {
        let ports = if r.protocol == Protocol::Icmp {
            "-".to_string()
        } else if r.ports.is_empty() {
            "all other".to_string()
        } else {
            r.ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push([
            r.name.clone(),
            r.protocol.to_string(),
            ports,
            r.mode.to_string(),
            format!("/{} /{}", r.ipv4_prefix, r.ipv6_prefix),
            limit_text(&r.connections),
            limit_text(&r.packets),
            escalation_text(r.escalation.as_ref()),
        ]);
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "defaults: mode {}, scope /{} (IPv4) /{} (IPv6), max_sources {}, manual bans /{} (IPv4) /{} (IPv6) or narrower without --force",
        policy.mode,
        policy.ipv4_prefix,
        policy.ipv6_prefix,
        policy.max_sources,
        policy.min_ban_ipv4_prefix,
        policy.min_ban_ipv6_prefix
    );
    let line = |out: &mut String, cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&mut out, &header);
    for row in &rows {
        line(
            &mut out,
            &row.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no rules: traffic is only checked against the lists)");
    }
    for r in &policy.rules {
        if let Some(u) = &r.unverified {
            let _ = writeln!(
                out,
                "{}: connection attempts from unverified sources share {} burst {} (verified sources bypass it; a proof lasts {})",
                r.name,
                u.rate,
                u.burst,
                super::format_duration(policy.verified_ttl)
            );
        }
        if let Some(mss) = r.syncookie_mss {
            let _ = writeln!(
                out,
                "{}: over that budget, XDP answers with SYN cookies (MSS {mss} for IPv4, {} for IPv6; nftables table `{}` completes connections through SYNPROXY)",
                r.name,
                mss.saturating_sub(20),
                crate::synproxy::TABLE
            );
            if !crate::synproxy::timestamps_work() {
                let _ = writeln!(
                    out,
                    "{}: on this host's kernel SYNPROXY cannot use TCP timestamps (Linux 6.15+, or /proc/net/netstat unreadable), so connections to the rule's ports (all of them, attack or not) get no window scaling or SACK (a 64 KiB window at most; docs/operations.md, \"SYN cookies\")",
                    r.name
                );
            }
            if r.mode == super::Mode::Monitor {
                let _ = writeln!(
                    out,
                    "{}: monitor mode: nothing is answered yet (over-budget SYNs pass, counted as would_drop), but the nftables table is installed: every connection to the rule's ports goes through SYNPROXY",
                    r.name
                );
            }
        }
    }
    for r in &policy.rules {
        if let (super::OverLimit::Reset, Some(cap)) = (r.over_limit, r.resets) {
            let _ = writeln!(
                out,
                "{}: over-limit connection attempts of verified sources are answered with a RST (at most {cap} for the rule, one a second per source; others are dropped)",
                r.name
            );
        }
    }
    let list = |name: &str, l: &[super::Cidr]| {
        let v4 = l.iter().filter(|c| c.addr.is_ipv4()).count();
        let shown: Vec<String> = l.iter().take(5).map(ToString::to_string).collect();
        let more = if l.len() > 5 {
            format!(" … and {} more", l.len() - 5)
        } else {
            String::new()
        };
        format!(
            "{name}: {} {} ({v4} IPv4, {} IPv6){}{}{more}\n",
            l.len(),
            if l.len() == 1 { "prefix" } else { "prefixes" },
            l.len() - v4,
            if l.is_empty() { "" } else { ": " },
            shown.join(", ")
        )
    };
    out.push_str(&list("allow (never limited)", &policy.allow));
    out.push_str(&list("deny (always dropped)", &policy.deny));
    out.push_str("unmatched traffic: passes untracked (counted under `(none)`)\n");
    app_tables(policy, &mut out);
    out
}

/// Rows under a header, columns padded to their widest cell.
fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `[app]`, then one row per `[[endpoint]]` and per `[[signal]]`.
fn app_tables(policy: &Policy, out: &mut String) {
    let Some(app) = &policy.app else {
        return;
    };
    let proxies: Vec<String> = app
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(
        out,
        "app socket: {} (0660 root:{}), trusted proxies: {}, on_error {}",
        app.socket.display(),
        app.group.as_deref().unwrap_or("root"),
        if proxies.is_empty() {
            "none (X-Forwarded-For is never believed)".to_string()
        } else {
            proxies.join(", ")
        },
        app.on_error
    );
    let esc = |e: Option<&super::Escalation>, endpoint: bool| match e {
        Some(e) if e.scope == super::BanScope::Rule && endpoint => {
            escalation_text(Some(e)).replace("rule scope", "endpoint scope (L7 only)")
        }
        other => escalation_text(other),
    };
    if policy.endpoints.is_empty() {
        let _ = writeln!(out, "(no endpoints: requests are not counted)");
    } else {
        let rows: Vec<Vec<String>> = policy
            .endpoints
            .iter()
            .map(|e| {
                vec![
                    e.name.clone(),
                    if e.methods.is_empty() {
                        "any".to_string()
                    } else {
                        e.methods.join(",")
                    },
                    e.path_text(),
                    e.key.to_string(),
                    limit_text(&Some(e.limit)),
                    e.cost.to_string(),
                    e.concurrency
                        .map_or_else(|| "-".to_string(), |c| format!("{c} per key")),
                    e.quota.map_or_else(|| "-".to_string(), |q| q.to_string()),
                    esc(e.escalation.as_ref(), true),
                ]
            })
            .collect();
        out.push_str(&aligned(
            &[
                "ENDPOINT",
                "METHODS",
                "PATH",
                "KEY",
                "LIMIT (per key)",
                "COST",
                "IN FLIGHT",
                "QUOTA (per key)",
                "ESCALATION",
            ],
            &rows,
        ));
    }
    if !policy.signals.is_empty() {
        let rows: Vec<Vec<String>> = policy
            .signals
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.key.to_string(),
                    limit_text(&Some(s.limit)),
                    esc(s.escalation.as_ref(), false),
                ]
            })
            .collect();
        out.push_str(&aligned(
            &["SIGNAL", "KEY", "LIMIT (reports per key)", "ESCALATION"],
            &rows,
        ));
    }
    let _ = writeln!(
        out,
        "unmatched requests: not counted; app bans: host scope bans a direct client at XDP on every interface, a client behind a trusted proxy at L7 (403)"
    );
}
