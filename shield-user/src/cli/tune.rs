//! `shield tune`.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use shield_common::Reason;
use shield_user::{
    control::{self, Request},
    loader, policy, stats,
    tune::{
        self, Observer,
        capture::Tap,
        stop::{self, EarlyStop},
    },
};

use super::{BpffsArgs, SocketArgs};

#[derive(Args)]
pub struct TuneArgs {
    /// The interface to observe (default: the only one shield protects).
    #[arg(long = "iface", short = 'i', value_name = "IFACE", value_parser = loader::iface_arg)]
    pub iface: Option<String>,
    /// How long to observe: 30s, 10m, 1h (traffic of a normal busy period). Ctrl-C
    /// (SIGINT) or SIGTERM ends it early: the report covers what was observed and says it
    /// was cut short; a second one aborts.
    #[arg(long = "for", value_name = "DURATION", default_value = "10m")]
    pub duration: String,
    /// The percentile of sources the suggested limits leave untouched (0 < P <= 100).
    #[arg(long, value_name = "P", default_value_t = 99.0)]
    pub percentile: f64,
    /// Machine-readable output (the report as JSON).
    #[arg(long)]
    pub json: bool,
    /// Also write the running policy with the suggestions applied to FILE (comments kept);
    /// `shield check --diff FILE` then shows the change against the running policy. A
    /// regular file (or a new one), never the running policy file: checked before observing.
    /// Not written when the running policy changed while tune observed, nor after an
    /// observation cut short under a minute.
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(flatten)]
    pub bpffs: BpffsArgs,
}

/// What each rule's limits dropped so far (its `conn_limit` and `pkt_limit` counters).
fn drops(bpffs: &std::path::Path, iface: &str) -> Result<HashMap<String, u64>> {
    let s = stats::read_iface(bpffs, iface).with_context(|| {
        format!("reading shield's counters for {iface} (is shield running on it?)")
    })?;
    Ok(s.rules
        .iter()
        .map(|r| {
            let n = [Reason::ConnLimit, Reason::PktLimit, Reason::Reset]
                .iter()
                .map(|x| r.counters[x.name()].packets)
                .sum();
            (r.name.clone(), n)
        })
        .collect())
}

pub fn run(a: TuneArgs) -> Result<ExitCode> {
    let length = policy::parse_duration(&a.duration)
        .map_err(|e| anyhow::anyhow!("--for {}: {e}", a.duration))?;
    if length < Duration::from_secs(1) {
        bail!("--for {}: observe for at least 1s", a.duration);
    }
    if !(a.percentile > 0.0 && a.percentile <= 100.0) {
        bail!(
            "--percentile {}: give a percentile above 0 and at most 100, like 99 or 99.9",
            a.percentile
        );
    }
    let bpffs = a.bpffs.bpffs;
    let iface = match a.iface {
        Some(i) => i,
        None => {
            // The interfaces the daemon runs on: pins left by a daemon stopped on another
            // interface (kept for its restart) are not candidates.
            let pong: control::Pong = control::call(&a.socket.socket, &Request::Ping {})
                .context("asking the running daemon for its interfaces (shield tune observes a running shield)")?;
            let all: Vec<String> = pong.interfaces.into_iter().map(|i| i.iface).collect();
            match all.as_slice() {
                [one] => one.clone(),
                [] => bail!(
                    "the daemon protects no interface (app-only mode): there is no XDP traffic to observe"
                ),
                _ => bail!(
                    "shield protects several interfaces ({}): choose one with --iface",
                    all.join(", ")
                ),
            }
        }
    };
    let running: control::RunningPolicy = control::call(&a.socket.socket, &Request::Policy {})
        .context(
            "asking the running daemon for its policy (shield tune observes a running shield)",
        )?;
    let path = PathBuf::from(&running.path);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the running policy {}", path.display()))?;
    let pol = policy::parse_str(&running.path, &text).with_context(|| {
        format!(
            "the running policy file {} no longer parses",
            path.display()
        )
    })?;

    // Before observing for minutes: never over the running policy (the daemon watches
    // it: writing there would apply the suggestions at once and lose the original), and
    // a FILE that can be written at the end.
    if let Some(out) = &a.write {
        if shield_user::audit::same_file(out, &path) {
            bail!(
                "--write {}: that is the running policy file{}; write the suggestions to another file, compare them with `shield check --diff FILE`, then install them",
                out.display(),
                if out.is_symlink() {
                    " (through a link)"
                } else {
                    ""
                }
            );
        }
        // A directory would fail only after the observation, a FIFO would block for good,
        // a device would swallow the policy.
        if let Ok(m) = std::fs::metadata(out)
            && !m.is_file()
        {
            bail!(
                "--write {}: it is {}, not a regular file; give the path of a file for the suggested policy",
                out.display(),
                policy::file_kind(m.file_type())
            );
        }
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            bail!(
                "--write {}: {} is not a directory",
                out.display(),
                dir.display()
            );
        }
    }
    let tap = Tap::open(&iface).with_context(|| {
        format!(
            "opening a packet socket on {iface} (needs root, in the interface's network namespace)"
        )
    })?;
    // The daemon answered: IFACE's pins missing here mean another --bpffs (or a bpffs this
    // shell's mount namespace does not see), not a daemon that is not running.
    anyhow::ensure!(
        loader::pin_dir(&bpffs, &iface)
            .join(shield_common::MAP_COUNTERS)
            .exists(),
        "no shield maps pinned for {iface} under {}: give tune the --bpffs the daemon protecting {iface} was started with{}",
        bpffs.join("shield").display(),
        super::stats::not_bpffs_hint(&bpffs)
    );
    let before = drops(&bpffs, &iface)?;
    let cpu0 = tune::capture::cpu_time();
    let mut obs = Observer::new(pol);
    let tty = std::io::stderr().is_terminal();
    // From here to the end of the observation, a first SIGINT or SIGTERM ends it early
    // (the packet read returns at once, EINTR; at worst after its 200 ms timeout), a second
    // one aborts.
    let stop = EarlyStop::install().context("catching SIGINT and SIGTERM")?;
    let start = Instant::now();
    let mut shown = Instant::now();
    let mut buf = [0u8; tune::SNAPLEN];
    let stopped = loop {
        if let Some(sig) = stop.requested() {
            break Some(sig);
        }
        let elapsed = start.elapsed();
        if elapsed >= length {
            break None;
        }
        if let Some(n) = tap.next(&mut buf).context("reading the packet socket")? {
            obs.feed(&buf[..n], elapsed.as_nanos() as u64);
        }
        if tty && shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            let left = length.saturating_sub(elapsed).as_secs();
            eprint!(
                "\rshield tune: observing {iface}: {}m{:02}s left, {} packets, {} sources  ",
                left / 60,
                left % 60,
                obs.frames,
                obs.sources()
            );
            let _ = std::io::stderr().flush();
        }
    };
    let elapsed = start.elapsed();
    // A signal from now on has its former action again (by default: it ends tune at once).
    stop.end(stopped.is_some());
    if tty {
        eprintln!();
    }
    if let Some(sig) = stopped {
        eprintln!(
            "shield tune: {}: observation cut short after {} of {}; reporting what was observed (SIGINT or SIGTERM again aborts)",
            stop::signal_name(sig),
            tune::span(elapsed.as_secs_f64()),
            tune::span(length.as_secs_f64())
        );
    }
    let after = drops(&bpffs, &iface)?;
    let dropped = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .collect();
    let mut report = obs.report(&iface, elapsed.as_nanos() as u64, a.percentile, &dropped);
    report.lost = tap.lost();
    report.cpu_seconds = (tune::capture::cpu_time() - cpu0).as_secs_f64();
    report.stopped_early = stopped.map(|sig| tune::StoppedEarly {
        signal: stop::signal_name(sig),
        observed_seconds: elapsed.as_secs_f64(),
        requested_seconds: length.as_secs_f64(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", tune::render(&report));
    }
    if let Some(out) = a.write {
        // Cut short under a minute: the busiest minute is a few seconds scaled up, and the
        // busy period --for was to cover may not have come; nothing to install from.
        if let Some(e) = &report.stopped_early
            && elapsed < tune::WRITE_MIN_AFTER_STOP
        {
            bail!(
                "--write {}: not written: the observation was cut short by {} after {}, and suggestions are written after an early stop only from at least {} of observation (the report above is from those {}): run shield tune again",
                out.display(),
                e.signal,
                tune::span(e.observed_seconds),
                tune::span(tune::WRITE_MIN_AFTER_STOP.as_secs_f64()),
                tune::span(e.observed_seconds)
            );
        }
        // The suggestions go into the policy read at the start: if it changed since (an
        // edit, a reload), that file would silently undo the change once installed.
        let now: Result<control::RunningPolicy> =
            control::call(&a.socket.socket, &Request::Policy {}).map_err(anyhow::Error::from);
        let now_text = std::fs::read_to_string(&path);
        let same = match &now {
            Ok(p) => {
                p.path == running.path
                    && p.generation == running.generation
                    && now_text.as_ref().is_ok_and(|t| *t == text)
            }
            Err(_) => false,
        };
        if !same {
            bail!(
                "--write {}: not written: the running policy changed while tune observed ({}); the suggestions above were made against the old one: run shield tune again",
                out.display(),
                match now {
                    Ok(p) if p.generation != running.generation =>
                        format!("generation {} became {}", running.generation, p.generation),
                    Ok(p) if p.path != running.path => {
                        format!("the daemon now runs {}", p.path)
                    }
                    Ok(_) => match now_text {
                        Ok(_) => format!("{} was edited", path.display()),
                        Err(e) => format!("{}: {e}", path.display()),
                    },
                    Err(e) => format!("the daemon no longer answers: {e:#}"),
                }
            );
        }
        let written = tune::apply(&running.path, &text, &report).map_err(anyhow::Error::msg)?;
        // A SIGINT or SIGTERM now waits for the file to be replaced and said so.
        stop::holding_signals(|| -> Result<()> {
            tune::replace_file(&out, written.as_bytes())
                .with_context(|| format!("writing {} (left as it was)", out.display()))?;
            if a.json {
                return Ok(());
            }
            match &report.stopped_early {
                None => println!(
                    "\nwrote {} (the running policy with the suggestions); compare: shield check --diff {}{}",
                    out.display(),
                    out.display(),
                    a.socket.flag()
                ),
                Some(e) => println!(
                    "\nwrote {} (the running policy with the suggestions from an observation cut short after {} of {}: it may have missed the busy period --for was to cover; review them); compare: shield check --diff {}{}",
                    out.display(),
                    tune::span(e.observed_seconds),
                    tune::span(e.requested_seconds),
                    out.display(),
                    a.socket.flag()
                ),
            }
            let _ = std::io::stdout().flush();
            Ok(())
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
