//! The prose under `shield-bench`'s tables, derived from the numbers in them: a sentence
//! says only what the figures it is given support, and a case that was not measured is
//! named as such (never printed as zeros). Pure functions, unit-tested below.

use std::fmt::Write as _;

/// `Ok` when `cmd` is an executable on `PATH`; otherwise why the case cannot run.
pub fn require_tool(cmd: &str, package: &str) -> Result<(), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(d.join(cmd))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    if found {
        Ok(())
    } else {
        Err(format!(
            "`{cmd}` is not installed (Debian package {package}; `cargo xtask bench` installs it)"
        ))
    }
}

/// A table cell for a case that did not run.
pub fn not_measured(reason: &str) -> String {
    // A table cell: no pipes or line breaks from a tool's error text.
    let reason: String = reason
        .chars()
        .map(|c| if c == '|' || c.is_control() { ' ' } else { c })
        .collect();
    format!("not measured: {}", reason.trim())
}

/// One row of section 2b: a path's median ratio to its baseline and its target.
pub struct PathRow {
    pub path: String,
    pub ratio: Option<f64>,
    pub target: f64,
    /// Why the path was not measured.
    pub not_measured: Option<String>,
    /// A reference row (a trivial program, not a shield path): reported, never held
    /// against its target.
    pub reference: bool,
}

/// A ratio as the reading shows it: two decimals, or three where two would round a miss up
/// to its target (0.848 against 0.85 reads "0.848", not "0.85" and missed).
pub fn ratio_text(ratio: f64, target: f64) -> String {
    let two = format!("{ratio:.2}");
    if ratio < target && two == format!("{target:.2}") {
        format!("{ratio:.3}")
    } else {
        two
    }
}

/// A measured row and its ratio.
type Measured<'a> = (&'a PathRow, f64);

/// Section 2b's reading: which paths meet their targets and which miss them, by how much.
pub fn paths_reading(rows: &[PathRow]) -> String {
    let (references, measured): (Vec<Measured>, Vec<Measured>) = rows
        .iter()
        .filter_map(|r| r.ratio.filter(|_| r.not_measured.is_none()).map(|x| (r, x)))
        .partition(|(r, _)| r.reference);
    let mut s = String::from("\n");
    if measured.is_empty() {
        s.push_str("No path was measured in this run.");
    } else {
        let (meet, miss): (Vec<_>, Vec<_>) = measured.iter().partition(|(r, x)| *x >= r.target);
        let _ = write!(
            s,
            "{} of {} measured paths meet their target in this run.",
            meet.len(),
            measured.len()
        );
        if !miss.is_empty() {
            let list: Vec<String> = miss
                .iter()
                .map(|(r, x)| {
                    format!(
                        "{} ({}× against {:.2}×)",
                        r.path,
                        ratio_text(*x, r.target),
                        r.target
                    )
                })
                .collect();
            let _ = write!(s, " Missed: {}.", list.join(", "));
        }
    }
    for (r, x) in references {
        let _ = write!(
            s,
            " For reference, not a shield path: {} at {x:.2}×.",
            r.path
        );
    }
    let unmeasured: Vec<(String, String)> = rows
        .iter()
        .filter_map(|r| r.not_measured.clone().map(|why| (r.path.clone(), why)))
        .collect();
    s.push_str(&unmeasured_sentence(&unmeasured));
    s.push_str("\n\n");
    s
}

/// The unmeasured cases as a closing sentence ("" when every case ran).
fn unmeasured_sentence(unmeasured: &[(String, String)]) -> String {
    if unmeasured.is_empty() {
        return String::new();
    }
    // One entry per reason, the cases that share it after it.
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (case, why) in unmeasured {
        match groups.iter_mut().find(|(w, _)| *w == why.as_str()) {
            Some((_, cases)) => cases.push(case),
            None => groups.push((why, vec![case])),
        }
    }
    let list: Vec<String> = groups
        .iter()
        .map(|(why, cases)| format!("{} ({})", cases.join(", "), not_measured(why)))
        .collect();
    format!(
        " Not measured in this run, so nothing above speaks for them: {}.",
        list.join("; ")
    )
}

/// Success in percent; a case that answered nothing at all is 0 %.
pub fn success_pct(ok: u64, failed: u64) -> f64 {
    if ok + failed == 0 {
        0.0
    } else {
        100.0 * ok as f64 / (ok + failed) as f64
    }
}

/// One measured case of a service-under-flood table (sections 3 and 3b).
#[derive(Clone, Debug)]
pub struct ServiceCase {
    pub name: String,
    /// The flood rate achieved during the case (packets/s); `None`: no flood.
    pub flood_pps: Option<f64>,
    pub ok: u64,
    pub failed: u64,
    pub p99_ms: f64,
}

/// The reading of a service-under-flood table: success range, the cases under `target`
/// percent, the flood rates reached, the highest-rate filter, the p99 ratio against the
/// no-flood case when there is one (`p99_target`: the ratio the issue asks for).
pub fn service_reading(
    cases: &[ServiceCase],
    unmeasured: &[(String, String)],
    target: f64,
    p99_target: Option<f64>,
) -> String {
    let mut s = String::from("\nReading it: ");
    let flooded: Vec<&ServiceCase> = cases.iter().filter(|c| c.flood_pps.is_some()).collect();
    if flooded.is_empty() {
        s.push_str("no case under flood was measured in this run.");
        s.push_str(&unmeasured_sentence(unmeasured));
        s.push_str("\n\n");
        return s;
    }
    let pct: Vec<f64> = flooded
        .iter()
        .map(|c| success_pct(c.ok, c.failed))
        .collect();
    let lo = pct.iter().copied().fold(f64::MAX, f64::min);
    let hi = pct.iter().copied().fold(0.0, f64::max);
    if lo >= 100.0 {
        let _ = write!(
            s,
            "every measured case under flood answered every request (100 % success)."
        );
    } else {
        let below: Vec<String> = flooded
            .iter()
            .zip(&pct)
            .filter(|(_, p)| **p < target)
            .map(|(c, p)| format!("{} {p:.1} %", c.name))
            .collect();
        let _ = write!(s, "success under flood ranged from {lo:.1} % to {hi:.1} %");
        if below.is_empty() {
            let _ = write!(s, ", every case at or above {target} %.");
        } else {
            let _ = write!(s, "; under {target} %: {}.", below.join(", "));
        }
    }
    let rates: Vec<(f64, &str)> = flooded
        .iter()
        .filter_map(|c| c.flood_pps.map(|p| (p, c.name.as_str())))
        .collect();
    let (rlo, rhi) = rates.iter().fold((f64::MAX, 0.0f64), |(lo, hi), (p, _)| {
        (lo.min(*p), hi.max(*p))
    });
    let top = rates
        .iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or("", |r| r.1);
    let _ = write!(
        s,
        " The flood reached {:.2}-{:.2} M packets/s while the clients were served (the generator only gets the CPU time the receive path and the service leave it), highest with {top}.",
        rlo / 1e6,
        rhi / 1e6
    );
    if let (Some(t), Some(base)) = (p99_target, cases.iter().find(|c| c.flood_pps.is_none())) {
        let over: Vec<String> = flooded
            .iter()
            .filter(|c| c.p99_ms > t * base.p99_ms)
            .map(|c| format!("{} ({:.1}×)", c.name, c.p99_ms / base.p99_ms.max(0.001)))
            .collect();
        if over.is_empty() {
            let _ = write!(s, " Every p99 is within {t}× of the unloaded one.");
        } else {
            let _ = write!(s, " p99 over {t}× the unloaded one: {}.", over.join(", "));
        }
    }
    s.push_str(&unmeasured_sentence(unmeasured));
    s.push_str("\n\n");
    s
}

/// The figures of section 2 that its reading speaks of.
#[derive(Clone, Debug, Default)]
pub struct FloodFigures {
    /// Native shield's packets/s over the better of nftables and hashlimit, per shape
    /// other than random sources.
    pub shield_vs_peers: Vec<f64>,
    /// nftables' and hashlimit's dropped % on the IPv6 /64 rotation.
    pub ipv6_peers_dropped: Option<(f64, f64)>,
    /// Random sources: shield without a budget (packets/s, program ns).
    pub random_shield: Option<(f64, Option<f64>)>,
    /// Random sources: shield with the budget (packets/s, dropped %, program ns).
    pub random_budget: Option<(f64, f64, Option<f64>)>,
    /// Random sources: no filter (packets/s).
    pub random_none: Option<f64>,
    /// Random sources: the trivial XDP_DROP ceiling (packets/s).
    pub ceiling: Option<f64>,
    /// Random sources: nftables and hashlimit (packets/s, dropped %).
    pub random_nft: Option<(f64, f64)>,
    pub random_hashlimit: Option<(f64, f64)>,
    /// Random sources: shield with the budget and `syncookie` (packets/s, program ns).
    pub random_cookie: Option<(f64, Option<f64>)>,
    /// Random sources: the trivial XDP_TX ceiling (packets/s).
    pub tx_ceiling: Option<f64>,
}

/// The reading of section 2.
pub fn flood_reading(f: &FloodFigures, budget_target: f64) -> String {
    let mut s = String::from("\n");
    if f.shield_vs_peers.is_empty() {
        s.push_str("Shield native against nftables and iptables: not measured in this run (a row is missing above).");
    } else {
        let (lo, hi) = f
            .shield_vs_peers
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let _ = write!(
            s,
            "With one source, 10,000 sources or an IPv6 /64 rotation, native shield sustains {lo:.2}-{hi:.2}× the packet rate of the better of nftables and iptables hashlimit."
        );
        if let Some((n, h)) = f.ipv6_peers_dropped {
            if n < 0.1 && h < 0.1 {
                s.push_str(" On the IPv6 rotation nftables and hashlimit dropped nothing (their usual `saddr` rules are IPv4 only).");
            } else {
                let _ = write!(
                    s,
                    " On the IPv6 rotation nftables dropped {n:.1} % and hashlimit {h:.1} %."
                );
            }
        }
    }
    s.push_str("\n\nRandom spoofed sources (every SYN from a new address): ");
    match f.random_shield {
        Some((pps, ns)) => {
            let _ = write!(
                s,
                "shield without a budget passes them at {:.2} M packets/s{}",
                pps / 1e6,
                ns.map_or(String::new(), |n| format!(
                    " ({n:.0} ns per packet in the program)"
                ))
            );
            if let Some(none) = f.random_none {
                let r = pps / none.max(1.0);
                let _ = write!(
                    s,
                    ", {r:.2}× the rate with no filter ({:.2} M){}.",
                    none / 1e6,
                    if r >= 1.0 {
                        ": no slower than no filter"
                    } else {
                        ": slower than no filter"
                    }
                );
            } else {
                s.push_str(" (no-filter row not measured).");
            }
        }
        None => s.push_str("shield without a budget: not measured."),
    }
    match (f.random_budget, f.ceiling) {
        (Some((pps, dropped, ns)), Some(ceiling)) => {
            let r = pps / ceiling.max(1.0);
            let _ = write!(
                s,
                " With `unverified = {{ rate = \"2000/s\", burst = 4000 }}` the budget drops {dropped:.1} % of the flood, its program handling {:.2} M packets/s, {r:.2}× the trivial XDP_DROP ceiling ({:.2} M) in the same run ({} the target of {budget_target}× in this one flood; section 2b, in alternating rounds, is the measure against the target){}.",
                pps / 1e6,
                ceiling / 1e6,
                if r >= budget_target { "meets" } else { "misses" },
                ns.map_or(String::new(), |n| format!(", {n:.0} ns per packet in the program"))
            );
        }
        _ => s.push_str(
            " The `unverified` budget against the XDP_DROP ceiling: not measured (a row is missing above).",
        ),
    }
    match (f.random_cookie, f.tx_ceiling) {
        (Some((pps, ns)), Some(ceiling)) => {
            let r = pps / ceiling.max(1.0);
            let per_syn = match (ns, f.random_budget.and_then(|b| b.2)) {
                (Some(c), Some(d)) => format!(
                    ", {c:.0} ns per SYN in the program against {d:.0} ns for the budget's drop"
                ),
                (Some(c), None) => format!(", {c:.0} ns per SYN in the program"),
                _ => String::new(),
            };
            let _ = write!(
                s,
                " With `challenge = \"syncookie\"` the flood over the budget is answered with SYN-ACKs, its program handling {:.2} M packets/s, {r:.2}× the trivial XDP_TX ceiling ({:.2} M) in the same run ({} the target of 0.7×){per_syn}.",
                pps / 1e6,
                ceiling / 1e6,
                if r >= 0.7 { "meets" } else { "misses" },
            );
        }
        _ => s.push_str(
            " The `syncookie` path against the XDP_TX ceiling: not measured (a row is missing above).",
        ),
    }
    let peer = |name: &str, v: Option<(f64, f64)>| match v {
        Some((pps, d)) if d < 0.1 => {
            format!("{name} {:.2} M packets/s dropping nothing", pps / 1e6)
        }
        Some((pps, d)) => format!("{name} {:.2} M packets/s dropping {d:.1} %", pps / 1e6),
        None => format!("{name} not measured"),
    };
    let _ = writeln!(
        s,
        " For comparison: {}; {}.",
        peer("nftables", f.random_nft),
        peer("hashlimit", f.random_hashlimit)
    );
    s.push_str("\n\n");
    s
}

/// Section 1's reading: the spread of shield / trivial over the IP paths (the caller leaves
/// out the non-IP frame, which the program passes before any parsing) and the dearest path.
pub fn cost_reading(rows: &[(String, f64)]) -> String {
    let mut s = String::from(
        "\nReading it: the program is several BPF functions (the general parser, the per-rule judgement, the sketch, the proof of verification, the refusal path), because the spoofed-flood defences do not fit the 512-byte BPF stack as one function; an untagged IPv4 TCP frame without options or fragmentation (every IPv4 row here) and an untagged IPv6 frame whose next header is TCP (not the IPv6 row here, whose extension headers take the general parser) are parsed inline, without the general parser's call. The cookie SYN-ACK has no row: BPF_PROG_TEST_RUN repeats a run on the frame the previous run rewrote, so from the second run on it would time a SYN-ACK, not a SYN; its cost per SYN is in section 2b.",
    );
    if let (Some(lo), Some(hi)) = (
        rows.iter().min_by(|a, b| a.1.total_cmp(&b.1)),
        rows.iter().max_by(|a, b| a.1.total_cmp(&b.1)),
    ) {
        let _ = write!(
            s,
            " In this run shield costs {:.2}× ({}) to {:.2}× ({}) the trivial program on IP frames (the non-IP frame, passed before any parsing, aside).",
            lo.1, lo.0, hi.1, hi.0
        );
    } else {
        s.push_str(" No path was measured in this run.");
    }
    s.push_str(" The allowed path includes the per-source state update; xdp-filter's pass path does no per-source work.\n\n");
    s
}

/// The line in a report after which hand-written notes (before/after comparisons, runs of
/// older builds) are kept when the report is written again.
pub const NOTES_MARKER: &str =
    "<!-- shield-bench keeps everything below this line when it rewrites this file -->";

/// `report` followed by the notes kept from `old` (the file it replaces): from
/// `NOTES_MARKER` to the end, when `old` has it.
pub fn keep_notes(report: &str, old: &str) -> String {
    match old.find(NOTES_MARKER) {
        Some(at) => format!("{}\n\n{}", report.trim_end(), &old[at..]),
        None => report.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewriting_a_report_keeps_the_notes_below_the_marker() {
        let old =
            format!("# old\n\nold figures\n\n{NOTES_MARKER}\n\n## Before and after\n\nkept\n");
        let new = keep_notes("# new\n\nnew figures\n", &old);
        assert!(new.starts_with("# new\n\nnew figures\n"));
        assert!(!new.contains("old figures"));
        assert!(new.ends_with(&format!("{NOTES_MARKER}\n\n## Before and after\n\nkept\n")));
        // A file without the marker (or none at all) is replaced whole.
        assert_eq!(keep_notes("# new\n", "# old\n"), "# new\n");
    }

    #[test]
    fn paths_reading_names_each_miss_and_what_did_not_run() {
        let row = |path: &str, ratio: Option<f64>, target: f64, why: Option<&str>| PathRow {
            path: path.into(),
            ratio,
            target,
            not_measured: why.map(String::from),
            reference: false,
        };
        let r = paths_reading(&[
            row("over limit", Some(0.91), 0.85, None),
            row("budget", Some(0.80), 0.85, None),
            row("cookie", None, 0.7, Some("veth refused XDP_TX")),
        ]);
        assert!(r.contains("1 of 2 measured paths meet"), "{r}");
        assert!(r.contains("budget (0.80× against 0.85×)"), "{r}");
        assert!(!r.contains("over limit ("), "{r}");
        assert!(
            r.contains("cookie (not measured: veth refused XDP_TX)"),
            "{r}"
        );
        // A reference row is reported, never counted as a path that meets or misses.
        let trivial = PathRow {
            reference: true,
            ..row("trivial pass", Some(0.97), 1.0, None)
        };
        let r = paths_reading(&[row("over limit", Some(0.91), 0.85, None), trivial]);
        assert!(r.contains("1 of 1 measured paths meet"), "{r}");
        assert!(
            r.contains("not a shield path: trivial pass at 0.97×"),
            "{r}"
        );
        assert!(!r.contains("Missed"), "{r}");
        // A miss that two decimals would round up to its target shows three.
        let r = paths_reading(&[row("budget", Some(0.848), 0.85, None)]);
        assert!(r.contains("budget (0.848× against 0.85×)"), "{r}");
        assert_eq!(ratio_text(0.851, 0.85), "0.85");
        let none = paths_reading(&[row("x", None, 1.0, Some("no root"))]);
        assert!(none.contains("No path was measured"), "{none}");
    }

    fn case(name: &str, pps: Option<f64>, ok: u64, failed: u64, p99: f64) -> ServiceCase {
        ServiceCase {
            name: name.into(),
            flood_pps: pps,
            ok,
            failed,
            p99_ms: p99,
        }
    }

    #[test]
    fn full_success_is_said_only_when_every_case_had_it() {
        let all = [
            case("no flood", None, 100, 0, 2.0),
            case("nft", Some(3e5), 500, 0, 3.0),
            case("shield", Some(9e5), 600, 0, 2.5),
        ];
        let r = service_reading(&all, &[], 99.0, Some(2.0));
        assert!(r.contains("100 % success"), "{r}");
        assert!(r.contains("0.30-0.90 M packets/s"), "{r}");
        assert!(r.contains("highest with shield"), "{r}");
        assert!(r.contains("within 2× of the unloaded"), "{r}");

        let some_failed = [
            case("no flood", None, 100, 0, 2.0),
            case("nft", Some(3e5), 90, 10, 9.0),
            case("shield", Some(9e5), 600, 0, 2.5),
        ];
        let r = service_reading(&some_failed, &[], 99.0, Some(2.0));
        assert!(!r.contains("100 % success"), "{r}");
        assert!(r.contains("from 90.0 % to 100.0 %"), "{r}");
        assert!(r.contains("under 99 %: nft 90.0 %"), "{r}");
        assert!(
            r.contains("p99 over 2× the unloaded one: nft (4.5×)"),
            "{r}"
        );
    }

    #[test]
    fn a_case_with_no_answers_is_zero_success_not_success() {
        assert_eq!(success_pct(0, 0), 0.0);
        let r = service_reading(&[case("shield", Some(1e5), 0, 0, 0.0)], &[], 99.0, None);
        assert!(r.contains("under 99 %: shield 0.0 %"), "{r}");
    }

    #[test]
    fn unmeasured_cases_are_named_and_nothing_is_claimed_without_numbers() {
        let un = vec![(
            "no flood".to_string(),
            "`wrk` is not installed (Debian package wrk)".to_string(),
        )];
        let r = service_reading(&[], &un, 99.0, Some(2.0));
        assert!(r.contains("no case under flood was measured"), "{r}");
        assert!(r.contains("not measured: `wrk` is not installed"), "{r}");
        let two = vec![
            ("a".to_string(), "why".to_string()),
            ("b".to_string(), "why".to_string()),
            ("c".to_string(), "other".to_string()),
        ];
        let r = service_reading(&[], &two, 99.0, None);
        assert!(
            r.contains("a, b (not measured: why); c (not measured: other)"),
            "{r}"
        );
        assert!(!r.contains("100 %"), "{r}");
    }

    #[test]
    fn not_measured_cells_stay_in_their_table_cell() {
        assert_eq!(not_measured("a|b\nc "), "not measured: a b c");
    }

    #[test]
    fn missing_tools_are_reported_with_their_package() {
        assert!(require_tool("sh", "dash").is_ok());
        let e = require_tool("no-such-tool-shield-bench", "pkg").unwrap_err();
        assert!(e.contains("Debian package pkg"), "{e}");
    }

    #[test]
    fn flood_reading_follows_the_numbers() {
        let mut f = FloodFigures {
            shield_vs_peers: vec![2.0, 3.5],
            ipv6_peers_dropped: Some((0.0, 0.0)),
            random_shield: Some((1.2e6, Some(150.0))),
            random_budget: Some((3e6, 99.9, Some(60.0))),
            random_none: Some(1.0e6),
            ceiling: Some(5e6),
            random_nft: Some((0.7e6, 0.0)),
            random_hashlimit: Some((0.6e6, 0.0)),
            random_cookie: Some((2.1e6, Some(180.0))),
            tx_ceiling: Some(3e6),
        };
        let r = flood_reading(&f, 0.5);
        assert!(r.contains("2.00-3.50×"), "{r}");
        assert!(r.contains("dropped nothing"), "{r}");
        assert!(r.contains("no slower than no filter"), "{r}");
        assert!(r.contains("0.60× the trivial XDP_DROP ceiling"), "{r}");
        assert!(r.contains("meets the target"), "{r}");
        assert!(
            r.contains("nftables 0.70 M packets/s dropping nothing"),
            "{r}"
        );

        f.random_shield = Some((0.5e6, None));
        f.random_budget = Some((2e6, 99.9, None));
        f.random_nft = Some((0.7e6, 12.0));
        f.ipv6_peers_dropped = Some((5.0, 0.0));
        f.ceiling = None;
        let r = flood_reading(&f, 0.5);
        assert!(r.contains(": slower than no filter"), "{r}");
        assert!(r.contains("XDP_DROP ceiling: not measured"), "{r}");
        assert!(
            r.contains("nftables 0.70 M packets/s dropping 12.0 %"),
            "{r}"
        );
        assert!(r.contains("nftables dropped 5.0 %"), "{r}");

        f.ceiling = Some(5e6);
        let r = flood_reading(&f, 0.5);
        assert!(r.contains("misses the target"), "{r}");

        let r = flood_reading(&FloodFigures::default(), 0.5);
        assert!(r.contains("not measured"), "{r}");
        assert!(r.contains("XDP_TX ceiling: not measured"), "{r}");
        assert!(!r.contains("0.00"), "{r}");
    }

    #[test]
    fn cost_reading_names_the_spread() {
        let r = cost_reading(&[("a".into(), 1.5), ("b".into(), 12.0)]);
        assert!(
            r.contains("1.50× (a) to 12.00× (b) the trivial program on IP frames"),
            "{r}"
        );
        assert!(cost_reading(&[]).contains("No path was measured"));
    }
}
