//! `shield-bench [--quick] [--out FILE] [--only SECTIONS]`: the benchmarks behind `cargo xtask bench` (root).
//!
//! One module per part: `cost` (1, per-packet cost through BPF_PROG_TEST_RUN), `flood`
//! (the veth flood harness, and 2, flood capacity), `paths` (2b, every path against its
//! ceiling), `api` (3 and 3b, the API under wrk and known clients while flooded), `scale`
//! (4 memory and control-plane scale, 5 the differential fuzzer, 7 fleet propagation);
//! 6, the application layer, is `shield_tests::appbench`.
//!
//! Writes a Markdown report. Ratios measured side by side are the result; absolute figures
//! are context only (a shared, noisy 2-core VM).

use std::{
    fmt::Write as _,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use shield_common::{
    BASELINE_PROGRAM_NAME, DROP_PROGRAM_NAME, MAP_SOURCES, PROGRAM_NAME, TX_PROGRAM_NAME,
};
use shield_tests::{
    Harness, L4, Pkt, XDP_DROP, XDP_PASS, benchprose,
    netlab::{
        ATTACKER_V4, Daemon, Netns, SERVER_V4, TcpServer, TempBpffs, Topology, connect_many, unique,
    },
    require_root, shield_bin,
    synflood::{Generator, cpus, mac_of, pin_to, run_idle, syn_frame, syn_frame6},
};
use shield_user::{bans::BanMaps, loader, policy};

mod api;
mod capacity;
mod cost;
mod flood;
mod kstats;
mod paths;
mod scale;

use api::*;
use capacity::*;
use cost::*;
use flood::*;
use kstats::*;
use paths::*;
use scale::*;

/// The benchmarks behind `cargo xtask bench` (needs root). Writes a Markdown report.
#[derive(clap::Parser)]
#[command(name = "shield-bench", after_help = SECTIONS)]
struct Opts {
    /// Shorter runs (fewer rounds and packets): a quick check, not the record.
    #[arg(long)]
    quick: bool,
    /// The report file, replaced by a report of the sections run (with --only, name another
    /// file to keep BENCHMARKS.md whole); hand-written notes below the file's
    /// `<!-- shield-bench keeps ... -->` line are kept.
    #[arg(long, value_name = "FILE", default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Sections to run, comma-separated (default: all).
    #[arg(long, value_name = "SECTIONS", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(["1", "2", "2b", "3", "3b", "4", "5", "6", "7"]))]
    only: Vec<String>,
    /// Section 2b: only the paths whose name contains this text (for example "without a
    /// budget"); the others are left out of the report, which says so. Text in no path's
    /// name is refused, as is --path with an --only that leaves 2b out.
    #[arg(long, value_name = "TEXT")]
    path: Option<String>,
}

const SECTIONS: &str = "Sections: 1 per-packet cost, 2 veth flood capacity, 2b every path against its ceiling, 3 API under wrk while flooded, 3b known clients during a full-rate spoofed flood, 4 memory and control-plane scale, 5 reliability (the differential fuzzer), 6 application layer (shield_flask vs Flask-Limiter), 7 fleet propagation (a real Redis, three daemons). Environment: SHIELD_BIN, the shield binary for the sections that start a daemon (`shield run`: 4's daemon RSS, 6, 7; default target/debug/shield). Sections 1, 2, 2b, 3 and 3b load the XDP object built into shield-bench itself: to measure another build's data path, build shield-bench from it.";

impl Opts {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let o = <Opts as clap::Parser>::parse();
    if let Some(p) = &o.path {
        // Refused before anything runs: a --path that selects nothing would run the other
        // sections and write a report with an empty section 2b.
        let names: Vec<&str> = path_cases().iter().map(|c| c.path).collect();
        if !o.runs("2b") {
            eprintln!("shield-bench: --path selects paths of section 2b, which --only leaves out");
            std::process::exit(2);
        }
        if !names.iter().any(|n| n.contains(p.as_str())) {
            eprintln!(
                "shield-bench: --path \"{p}\" is in no section 2b path's name; the paths are: {}",
                names.join("; ")
            );
            std::process::exit(2);
        }
    }
    require_root();
    let started = Instant::now();
    let mut report = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(report, "# shield benchmarks\n");
    let _ = writeln!(
        report,
        "Written by `cargo xtask bench{}{}{}` on {}: kernel {kernel}, {} CPUs ({cpu}). Ratios measured side by side in the same run are the result; absolute figures depend on the machine (shared and noisy here). On veth the generator and the receive path share the CPU that sends, so section 2's packets/s is the whole path's cost, not a NIC's line rate.\n",
        if o.quick { " --quick" } else { "" },
        if o.only.is_empty() {
            String::new()
        } else {
            format!(" --only {}", o.only.join(","))
        },
        o.path
            .as_ref()
            .map(|p| format!(" --path \"{p}\""))
            .unwrap_or_default(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if o.runs("1") {
        section1(&o, &mut report);
    }
    let mut chart = Vec::new();
    if o.runs("2") {
        section2(&o, &mut report, &mut chart);
    }
    if !chart.is_empty() {
        let svg = o.out.with_file_name("benchmarks-flood.svg");
        std::fs::write(&svg, svg_chart(&chart)).expect("writing the chart");
        let _ = writeln!(
            report,
            "![flood chart]({})\n",
            svg.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
    }
    if o.runs("2b") {
        section2b(&o, &mut report);
    }
    if o.runs("3") {
        section3(&o, &mut report);
    }
    if o.runs("3b") {
        section3b(&o, &mut report);
    }
    if o.runs("4") {
        section4(&o, &mut report);
    }
    if o.runs("5") {
        section5(&o, &mut report);
    }
    if o.runs("6") {
        report.push_str(&shield_tests::appbench::section6(o.quick));
    }
    if o.runs("7") {
        section7(&o, &mut report);
    }
    let _ = writeln!(
        report,
        "_Run took {:.0} s._",
        started.elapsed().as_secs_f64()
    );
    // Hand-written notes below the marker survive the rewrite.
    let old = std::fs::read_to_string(&o.out).unwrap_or_default();
    let report = shield_tests::benchprose::keep_notes(&report, &old);
    std::fs::write(&o.out, &report).expect("writing the report");
    print!("{report}");
    eprintln!("bench: wrote {}", o.out.display());
}
