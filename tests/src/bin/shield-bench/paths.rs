//! Section 2b: every drop, answer and pass path against its ceiling, in alternating
//! rounds, each held against the target.

use super::*;

/// A path of the program, the flood that takes it, and what it is held against.
pub(crate) struct PathCase {
    pub(crate) path: &'static str,
    pub(crate) shape: &'static str,
    pub(crate) mode: u32,
    pub(crate) sources: u32,
    pub(crate) filter: Filter,
    pub(crate) baseline: Filter,
    pub(crate) target: f64,
}

/// Every path section 2b measures, in its table's order.
pub(crate) fn path_cases() -> [PathCase; 9] {
    [
        PathCase {
            path: "source over its limit",
            shape: "one source",
            mode: 0,
            sources: 1,
            filter: Filter::ShieldNative,
            baseline: Filter::TrivialDrop,
            target: 0.85,
        },
        PathCase {
            path: "IPv6 source over its limit (one /64)",
            shape: "IPv6 /64 rotation",
            mode: 3,
            sources: 0,
            filter: Filter::ShieldNative,
            baseline: Filter::TrivialDrop,
            target: 0.85,
        },
        PathCase {
            path: "banned source (host ban)",
            shape: "one source",
            mode: 0,
            sources: 1,
            filter: Filter::ShieldBanned,
            baseline: Filter::TrivialDrop,
            target: 0.85,
        },
        PathCase {
            path: "deny-listed source (1,000 prefixes)",
            shape: "random sources (10/8)",
            mode: 2,
            sources: 0,
            filter: Filter::ShieldDenied,
            baseline: Filter::TrivialDrop,
            target: 0.85,
        },
        PathCase {
            path: "over the `unverified` budget",
            shape: "random sources (10/8)",
            mode: 2,
            sources: 0,
            filter: Filter::ShieldUnverified,
            baseline: Filter::TrivialDrop,
            target: 0.85,
        },
        PathCase {
            path: "over the budget, on a rule with escalation",
            shape: "random sources (10/8)",
            mode: 2,
            sources: 0,
            filter: Filter::ShieldEscalating,
            baseline: Filter::TrivialDrop,
            target: 0.85,
        },
        PathCase {
            path: "cookie SYN-ACK (`challenge = \"syncookie\"`)",
            shape: "random sources (10/8)",
            mode: 2,
            sources: 0,
            filter: Filter::ShieldSyncookie,
            baseline: Filter::TrivialTx,
            target: 0.7,
        },
        PathCase {
            path: "passed: a trivial XDP_PASS program (the least any XDP program costs)",
            shape: "random sources (10/8)",
            mode: 2,
            sources: 0,
            filter: Filter::TrivialPass,
            baseline: Filter::None,
            target: 1.0,
        },
        PathCase {
            path: "passed: rule without a budget",
            shape: "random sources (10/8)",
            mode: 2,
            sources: 0,
            filter: Filter::ShieldNative,
            baseline: Filter::None,
            target: 1.0,
        },
    ]
}

pub(crate) fn section2b(o: &Opts, report: &mut String) {
    let frames = if o.quick { 1_000_000 } else { 4_000_000 };
    let rounds = if o.quick { 3 } else { 5 };
    eprintln!("bench: 2b. every path against its ceiling ({rounds} rounds of {frames} SYNs)");
    let cases = path_cases();
    let _ = writeln!(report, "## 2b. Every path against its ceiling\n");
    let _ = writeln!(
        report,
        "Each path's flood ({frames} SYNs, section 2's generator and limits) alternates with its baseline in the same run, {rounds} rounds; the ratio is the median of the rounds' ratios. A drop or answer path is held against the trivial program that does the same at no cost (`XDP_DROP`, or `XDP_TX` for cookies), in frames its program handled per second (the veth's own count, `ethtool -S` `xdp_packets`: frames the veth ring dropped before any program ran are not counted for either); the pass path is held against no filter at all, in packets the server's IP layer received per second (`Ip: InReceives`). Rates are measured with `kernel.bpf_stats_enabled` off: its clock reads add a fixed cost to every run of a program, which would tax both sides of a drop row alike (pulling its ratio towards 1) and only the filter's side of the pass row. Program ns: its run time per packet, from a further flood of a quarter as many frames with it on.\n"
    );
    if let Some(p) = &o.path {
        let _ = writeln!(
            report,
            "This run measured only the paths whose name contains \"{p}\" (`--path`).\n"
        );
    }
    let _ = writeln!(
        report,
        "| path | flood | baseline | shield M/s | baseline M/s | ratio | target | program ns (shield / baseline) |"
    );
    let _ = writeln!(
        report,
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut rows = Vec::new();
    for c in cases
        .iter()
        .filter(|c| o.path.as_ref().is_none_or(|p| c.path.contains(p.as_str())))
    {
        // The rate a case is compared by: handled by the XDP program, or delivered to IP.
        let rate = |f: &Flood| {
            if c.baseline == Filter::None {
                f.delivered_per_s
            } else {
                f.handled_per_s.unwrap_or(0.0)
            }
        };
        let mut ratios = Vec::new();
        let (mut shield, mut base, mut ns, mut base_ns) = (vec![], vec![], vec![], vec![]);
        let mut failed = None;
        for _ in 0..rounds {
            let pair =
                flood_with(c.baseline, c.mode, c.sources, frames, Legit::None).and_then(|b| {
                    flood_with(c.filter, c.mode, c.sources, frames, Legit::None).map(|s| (s, b))
                });
            match pair {
                Ok((s, b)) if rate(&b) > 0.0 => {
                    ratios.push(rate(&s) / rate(&b));
                    shield.push(rate(&s));
                    base.push(rate(&b));
                    ns.extend(s.prog.map(|p| p.0));
                    base_ns.extend(b.prog.map(|p| p.0));
                }
                Ok(_) => failed = Some("the baseline measured no packets".to_string()),
                Err(e) => failed = Some(e),
            }
        }
        let row = benchprose::PathRow {
            path: c.path.to_string(),
            ratio: (!ratios.is_empty()).then(|| median(ratios)),
            target: c.target,
            not_measured: failed.filter(|_| shield.is_empty()),
            reference: c.filter == Filter::TrivialPass,
        };
        let target_cell = if row.reference {
            "-".to_string()
        } else {
            format!("{:.2}", c.target)
        };
        match (&row.not_measured, row.ratio) {
            (None, Some(r)) => {
                let ns_cell = |v: Vec<f64>| {
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{:.0}", median(v))
                    }
                };
                let _ = writeln!(
                    report,
                    "| {} | {} | {} | {:.2} M | {:.2} M | {} | {target_cell} | {} / {} |",
                    c.path,
                    c.shape,
                    c.baseline.name(),
                    median(shield) / 1e6,
                    median(base) / 1e6,
                    benchprose::ratio_text(r, c.target),
                    ns_cell(ns),
                    ns_cell(base_ns),
                );
            }
            (reason, _) => {
                let _ = writeln!(
                    report,
                    "| {} | {} | {} | {} | | | {target_cell} | |",
                    c.path,
                    c.shape,
                    c.baseline.name(),
                    benchprose::not_measured(reason.as_deref().unwrap_or("no round ran")),
                );
            }
        }
        rows.push(row);
    }
    report.push_str(&benchprose::paths_reading(&rows));
}
