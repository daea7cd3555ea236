//! The report of `shield tune` as text for people (`--json` serializes `Report` instead).

use std::fmt::Write as _;

use super::*;

/// A span for people: "42.3 s" under a minute, else "4m05s" or "1h02m05s".
pub fn span(secs: f64) -> String {
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    let s = secs as u64;
    if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    }
}

fn dist_row(out: &mut String, what: &str, d: &Dist) {
    let _ = writeln!(
        out,
        "    {what:<18} {:>8} {:>8} {:>8} {:>8} {:>8}",
        d.p50, d.p90, d.p99, d.p99_9, d.max
    );
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    if let Some(e) = &r.stopped_early {
        let _ = writeln!(
            out,
            "observation cut short by {} after {} of the {} asked (--for): the figures below cover those {} only",
            e.signal,
            span(e.observed_seconds),
            span(e.requested_seconds),
            span(e.observed_seconds)
        );
    }
    let allowed = if r.allowed > 0 {
        format!(
            " ({} from allow-listed sources: never limited, left out of the figures)",
            r.allowed
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "observed {} for {:.0} s: {} frames, {} matched a rule{allowed}; capture lost {}, used {:.2} s CPU",
        r.iface, r.seconds, r.frames, r.matched, r.lost, r.cpu_seconds
    );
    let _ = writeln!(
        out,
        "suggestions leave p{} of sources untouched, with headroom x{} over their rates",
        r.percentile, r.headroom
    );
    for rule in &r.rules {
        let _ = writeln!(
            out,
            "\nrule {} ({}): {} sources, {} packets observed",
            rule.name, rule.protocol, rule.sources, rule.packets_observed
        );
        if rule.sources == 0 {
            let _ = writeln!(out, "  no traffic observed: no suggestion");
            continue;
        }
        let header = format!(
            "    {:<18} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "per source", "p50", "p90", "p99", "p99.9", "max"
        );
        if let Some(c) = &rule.connections {
            let _ = writeln!(out, "  connection attempts\n{header}");
            dist_row(&mut out, "peak per second", &c.peak_per_second);
            dist_row(&mut out, "per minute", &c.per_minute);
        }
        let _ = writeln!(out, "  packets\n{header}");
        dist_row(&mut out, "peak per second", &rule.packets.peak_per_second);
        dist_row(&mut out, "per minute", &rule.packets.per_minute);
        let c = &rule.current;
        let _ = writeln!(
            out,
            "  current limits (connections {}, packets {}) touch {} of {} sources and {:.1} % of packets ({} refused, {} of them dropped by the data path)",
            c.connections.as_deref().unwrap_or("-"),
            c.packets.as_deref().unwrap_or("-"),
            c.sources_touched,
            rule.sources,
            c.share_touched * 100.0,
            c.packets_touched,
            c.dropped_by_data_path
        );
        if let Some(s) = &rule.suggested.connections {
            let _ = writeln!(out, "  suggested: connections = {}", s.toml());
        }
        if let Some(s) = &rule.suggested.packets {
            let _ = writeln!(out, "  suggested: packets = {}", s.toml());
        }
    }
    out
}
