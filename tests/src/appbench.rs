//! Section 6 of `shield-bench` (`cargo xtask bench --only 6`): the application layer. The
//! same Flask app under gunicorn (4 workers × 4 threads) with no limiter, Flask-Limiter with
//! memory storage, Flask-Limiter with a real local redis-server, and shield_flask against
//! the real `shield run`: requests/s and latency under `wrk` from the client namespace, and
//! how many requests each admitted against a limit of N. Plus shield's decision round trip
//! as Python sees it. A tool that is missing makes the report say what was not measured.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::applab::{self, App, Limiter};
use crate::netlab::{ATTACKER_V4, Netns, SERVER_V4, unique};
use crate::nslab::NsLab;

const PORT: u16 = 8000;
const WORKERS: u32 = 4;
/// redis-server's port inside the server namespace (its own loopback: no clash possible).
const REDIS_PORT: u16 = 16379;

fn policy(socket: &Path, n: u32) -> String {
    format!(
        r#"
[defaults]
ipv4_prefix = 32

[[rule]]
name = "api"
protocol = "tcp"
ports = [{PORT}]
connections = {{ rate = "100000/s", burst = 100000 }}

[app]
socket = "{}"
group = "root"
on_error = "open"

# Every request of the throughput run is decided, none is refused.
[[endpoint]]
name = "checked"
methods = ["GET"]
path = "/api/checked"
key = "ip"
limit = {{ rate = "100000/s", burst = 100000 }}

# The admission run: N per hour.
[[endpoint]]
name = "limited"
methods = ["GET"]
path = "/api/limited"
key = "ip"
limit = {{ rate = "{n}/h", burst = {n} }}

# The cost-weighted route (shield only): the same N tokens, 5 per request.
[[endpoint]]
name = "report"
methods = ["GET"]
path = "/api/report"
key = "ip"
cost = {COST}
limit = {{ rate = "{n}/h", burst = {n} }}
"#,
        socket.display()
    )
}

/// The interpreter gunicorn runs (its shebang), else /usr/bin/python3.
pub fn gunicorn_python() -> PathBuf {
    Command::new("which")
        .arg("gunicorn")
        .output()
        .ok()
        .and_then(|o| std::fs::read_to_string(String::from_utf8_lossy(&o.stdout).trim()).ok())
        .and_then(|t| {
            let line = t.lines().next()?.strip_prefix("#!")?.trim().to_string();
            Some(PathBuf::from(line.split_whitespace().next()?))
        })
        .filter(|p| p.is_absolute() && p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
}

/// Whether gunicorn's interpreter imports `module`.
fn python_has(module: &str) -> bool {
    Command::new(gunicorn_python())
        .args(["-c", &format!("import {module}")])
        .env("PYTHONPATH", applab::shield_flask_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have(program: &str) -> bool {
    Command::new("which")
        .arg(program)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// wrk's figures.
#[derive(Clone, Copy, Debug)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn parse_wrk(out: &str) -> Option<Load> {
    let ms = |prefix: &str| -> Option<f64> {
        let v = out
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))?
            .split_whitespace()
            .nth(1)?;
        let at = v.find(|c: char| c.is_ascii_alphabetic())?;
        let (n, unit) = v.split_at(at);
        let n: f64 = n.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => n,
        })
    };
    let rps = out
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    // A run that made no request at all has no figures.
    out.lines().find(|l| l.contains("requests in"))?;
    let non_2xx = out
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0);
    Some(Load {
        rps,
        p50_ms: ms("50%")?,
        p99_ms: ms("99%")?,
        non_2xx,
    })
}

/// wrk from the client namespace against `path` for `secs`.
fn wrk(client: &Netns, path: &str, secs: u32) -> Result<Load> {
    let url = format!("http://{SERVER_V4}:{PORT}{path}");
    let out = client
        .run_in(move || {
            Command::new("wrk")
                .args([
                    "-t2",
                    "-c16",
                    &format!("-d{secs}s"),
                    "--timeout",
                    "2s",
                    "--latency",
                    &url,
                ])
                .output()
        })?
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).with_context(|| format!("wrk printed no figures:\n{text}"))
}

/// Admission: `total` GETs of /api/limited from one client, each on a new connection (so
/// the kernel spreads them over the workers), 8 at a time: (200s, 429s, others).
/// The cost of the cost-weighted route's endpoint.
const COST: u32 = 5;

fn admitted(client: &Netns, path: &'static str, total: u32) -> Result<(u32, u32, u32)> {
    client.run_in(move || {
        let (ok, limited, other, next) = (
            AtomicU32::new(0),
            AtomicU32::new(0),
            AtomicU32::new(0),
            AtomicU32::new(0),
        );
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < total {
                        let r = applab::http(
                            IpAddr::V4(ATTACKER_V4),
                            SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
                            "GET",
                            path,
                            &[],
                            "",
                            Duration::from_secs(5),
                        );
                        match r.map(|r| r.status) {
                            Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                            Some(429) => limited.fetch_add(1, Ordering::Relaxed),
                            _ => other.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
        });
        (ok.into_inner(), limited.into_inner(), other.into_inner())
    })
}

/// redis-server in the server namespace, no persistence; killed on drop.
struct Redis(Child);

impl Redis {
    fn start(ns: &Netns) -> Result<Redis> {
        let child = ns
            .command(Path::new("redis-server"))
            .args([
                "--port",
                &REDIS_PORT.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian package redis-server)")?;
        let r = Redis(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = ns.run_in(|| {
                std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, REDIS_PORT)).is_ok()
            })?;
            if up {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("redis-server did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The decision round trip from Python: `count` decides on one connection (shield_flask's
/// own client), timed with perf_counter_ns: (p50 µs, p99 µs).
const LATENCY_PY: &str = r#"import json, sys, time
from shield_flask.client import Connection

conn = Connection(sys.argv[1], 2.0)
conn.hello()
msg = {"op": "decide", "method": "GET", "rule": "/api/checked", "path": "/api/checked",
       "peer": "198.51.100.9", "xff": None, "port": 8000, "headers": {}, "user": None, "cost": 1}
for _ in range(200):
    conn.call(msg)
ns = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter_ns()
    reply = conn.call(msg)
    ns.append(time.perf_counter_ns() - t)
    if not reply.get("ok") or not reply.get("allow"):
        sys.exit(f"unexpected reply {reply}")
ns.sort()
print(json.dumps({"p50_us": ns[len(ns) // 2] / 1000, "p99_us": ns[len(ns) * 99 // 100] / 1000, "n": len(ns)}))
"#;

fn decide_latency(socket: &Path, count: u32) -> Result<(f64, f64)> {
    let out = Command::new(gunicorn_python())
        .args(["-c", LATENCY_PY])
        .arg(socket)
        .arg(count.to_string())
        .env("PYTHONPATH", applab::shield_flask_dir())
        .output()
        .context("running the latency probe")?;
    if !out.status.success() {
        bail!(
            "latency probe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["p50_us"].as_f64().unwrap_or(f64::NAN),
        v["p99_us"].as_f64().unwrap_or(f64::NAN),
    ))
}

struct Case {
    name: &'static str,
    /// One wrk run per round (the cases take turns, round after round).
    loads: Vec<Load>,
    /// Why it was not measured.
    missing: Option<String>,
    admit: Result<(u32, u32, u32), String>,
}

impl Case {
    /// Median, min and max of `f` over the rounds.
    fn spread(&self, f: impl Fn(&Load) -> f64) -> Option<(f64, f64, f64)> {
        if self.loads.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.loads.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        Some((v[v.len() / 2], v[0], v[v.len() - 1]))
    }
}

const ROUNDS: usize = 3;

/// Runs the section and returns its Markdown.
pub fn section6(quick: bool) -> String {
    let secs = if quick { 4 } else { 8 };
    let n: u32 = if quick { 100 } else { 200 };
    // More than N × workers: memory storage shows where it stops.
    let total = (WORKERS + 1) * n;
    let probes = if quick { 5_000 } else { 20_000 };
    eprintln!(
        "bench: 6. application layer ({ROUNDS} rounds of {secs} s of wrk per case, limit N = {n})"
    );
    let load_avg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## 6. Application layer: shield_flask vs Flask-Limiter\n\nThe same Flask app under gunicorn ({WORKERS} workers × 4 threads, gthread, keep-alive) in the protected namespace, the real `shield run` on the veth in every case. Throughput: `wrk -t2 -c16 -d{secs}s --latency` from the client namespace on `GET /api/checked`, a route under a limit it never reaches (every request pays for one decision: Flask-Limiter `1000000000 per hour`, shield an `[[endpoint]]` of 100000/s, burst 100000); {ROUNDS} rounds, the cases taking turns (the app restarted each time), median (min–max). Admission: {total} GETs of `/api/limited` (limit N = {n} per hour for one client) from one client, each on a new connection (the kernel spreads them over the workers), 8 at a time, in the first round. Flask-Limiter keys by the TCP peer (`get_remote_address`), shield by `ip`. Load average when the section started: {load_avg} (the machine is shared).\n"
    );
    let has_wrk = have("wrk");
    let has_limiter = python_has("flask_limiter");
    let has_redis = have("redis-server") && python_has("redis");
    let socket = std::env::temp_dir().join(format!("{}.sock", unique("shield-bench-app-")));
    let lab = match std::panic::catch_unwind(|| NsLab::new(&policy(&socket, n), &[])) {
        Ok(l) => l,
        Err(_) => {
            let _ = writeln!(
                md,
                "Not measured: the lab or `shield run` with an `[app]` policy did not start (see the messages above).\n"
            );
            return md;
        }
    };
    let client = &lab.topo.client;
    let no_limiter = (!has_limiter).then(|| {
        "Flask-Limiter is not importable by gunicorn's Python (Debian package python3-flask-limiter)"
            .to_string()
    });
    let redis = if has_limiter && has_redis {
        Redis::start(&lab.topo.server).map_err(|e| format!("{e:#}"))
    } else {
        Err(no_limiter.clone().unwrap_or_else(|| {
            "redis-server or the redis Python client is missing (Debian packages redis-server, python3-redis)".into()
        }))
    };
    let plan: Vec<(&'static str, Limiter, Option<String>)> = vec![
        ("no limiter", Limiter::None, None),
        (
            "Flask-Limiter, memory storage",
            Limiter::FlaskLimiterMemory { limit: n },
            no_limiter.clone(),
        ),
        (
            "Flask-Limiter, redis storage",
            Limiter::FlaskLimiterRedis {
                limit: n,
                url: format!("redis://127.0.0.1:{REDIS_PORT}"),
            },
            redis.as_ref().err().cloned(),
        ),
        (
            "shield",
            Limiter::Shield {
                socket: socket.clone(),
                on_error: "open".into(),
            },
            None,
        ),
    ];
    let mut cases: Vec<Case> = plan
        .iter()
        .map(|(name, _, missing)| Case {
            name,
            loads: Vec::new(),
            missing: missing
                .clone()
                .or_else(|| (!has_wrk).then(|| "wrk is not installed (Debian package wrk)".into())),
            admit: Err(missing.clone().unwrap_or_default()),
        })
        .collect();
    let mut weighted: Option<Result<(u32, u32, u32), String>> = None;
    for round in 0..ROUNDS {
        for ((name, limiter, missing), case) in plan.iter().zip(cases.iter_mut()) {
            if missing.is_some() {
                continue;
            }
            eprintln!("bench: 6. round {} {name}", round + 1);
            let app = match App::start(&lab.topo.server, PORT, WORKERS, limiter) {
                Ok(a) => a,
                Err(e) => {
                    case.missing = Some(format!("the app did not start: {e:#}"));
                    continue;
                }
            };
            if has_wrk {
                match wrk(client, "/api/checked", secs) {
                    Ok(l) => case.loads.push(l),
                    Err(e) => case.missing = Some(format!("{e:#}")),
                }
            }
            if round == 0 {
                case.admit = if matches!(limiter, Limiter::None) {
                    Err("no limiter".into())
                } else {
                    admitted(client, "/api/limited", total).map_err(|e| format!("{e:#}"))
                };
                if matches!(limiter, Limiter::Shield { .. }) {
                    weighted =
                        Some(admitted(client, "/api/report", total).map_err(|e| format!("{e:#}")));
                }
            }
            drop(app);
        }
    }
    drop(redis);
    let latency = decide_latency(&socket, probes).map_err(|e| format!("{e:#}"));

    let _ = writeln!(
        md,
        "| limiter | requests/s | p50 ms | p99 ms | non-2xx | admitted of {total} (limit {n}) |\n|---|---:|---:|---:|---:|---:|"
    );
    let range = |v: Option<(f64, f64, f64)>, digits: usize| {
        v.map_or_else(String::new, |(m, lo, hi)| {
            format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
        })
    };
    for c in &cases {
        let load = if c.loads.len() == ROUNDS {
            format!(
                "{} | {} | {} | {}",
                range(c.spread(|l| l.rps), 0),
                range(c.spread(|l| l.p50_ms), 2),
                range(c.spread(|l| l.p99_ms), 1),
                c.loads.iter().map(|l| l.non_2xx).sum::<u64>()
            )
        } else {
            format!(
                "not measured: {} | | | ",
                c.missing.as_deref().unwrap_or("a round failed")
            )
        };
        let admit = match &c.admit {
            Ok((ok, _, other)) if *other > 0 => format!("{ok} ({other} failed)"),
            Ok((ok, _, _)) => format!("{ok}"),
            Err(e) if e == "no limiter" => format!("{total} (no limit)"),
            Err(e) if e.is_empty() => "not measured".to_string(),
            Err(e) => format!("not measured: {e}"),
        };
        let _ = writeln!(md, "| {} | {load} | {admit} |", c.name);
    }
    let _ = writeln!(
        md,
        "\nCost-weighted route (shield only, first round, after the admission run): {total} GETs of `/api/report`, whose endpoint has `cost = {COST}` under the same N = {n}, same client pattern: {}.",
        match &weighted {
            Some(Ok((ok, _, other))) => format!(
                "admitted {ok} (N / cost = {}){}",
                n / COST,
                if *other > 0 {
                    format!(", {other} failed")
                } else {
                    String::new()
                }
            ),
            Some(Err(e)) => format!("not measured: {e}"),
            None => "not measured (the shield case did not run)".to_string(),
        }
    );
    match &latency {
        Ok((p50, p99)) => {
            let _ = writeln!(
                md,
                "\nshield's decision as Python sees it (shield_flask's client, one connection, {probes} decides of a matched endpoint after 200 warm-up, in the server namespace while nothing else of the section runs): p50 {p50:.0} µs, p99 {p99:.0} µs round trip (the issue's bound: p99 ≤ 100 µs{}).",
                if *p99 <= 100.0 {
                    ", met".to_string()
                } else {
                    format!(
                        ", NOT met on this run; load average {} then",
                        std::fs::read_to_string("/proc/loadavg")
                            .ok()
                            .and_then(|l| l.split_whitespace().next().map(str::to_string))
                            .unwrap_or_else(|| "?".into())
                    )
                }
            );
        }
        Err(e) => {
            let _ = writeln!(md, "\nshield's decision latency: not measured: {e}.");
        }
    }
    md.push_str(&reading(&cases, n, total));
    md.push('\n');
    let _ = std::fs::remove_file(&socket);
    md
}

/// Prose from the numbers.
fn reading(cases: &[Case], n: u32, total: u32) -> String {
    let mut s = String::from("\nReading it: ");
    let base = cases
        .iter()
        .find(|c| c.name == "no limiter")
        .and_then(|c| c.spread(|l| l.rps));
    for c in cases.iter().filter(|c| c.name != "no limiter") {
        if let (Some((m, lo, hi)), Some((bm, blo, bhi))) = (c.spread(|l| l.rps), base) {
            let overlap = lo <= bhi && blo <= hi;
            let _ = write!(
                s,
                "{} serves {:.0} % of the unlimited app's requests/s{}. ",
                c.name,
                100.0 * m / bm,
                if overlap {
                    " (the rounds' ranges overlap: no difference this run can tell)"
                } else if m < bm {
                    " (slower in every round)"
                } else {
                    " (faster in every round: noise of a shared machine, a limiter adds work)"
                }
            );
        }
    }
    for c in cases.iter().filter(|c| c.name != "no limiter") {
        if let Ok((ok, _, _)) = c.admit {
            let verdict = if ok == n {
                "exactly the limit".to_string()
            } else {
                format!("{:.1}× the limit", f64::from(ok) / f64::from(n))
            };
            let _ = write!(
                s,
                "{} admitted {ok} of {total} against N = {n}: {verdict}",
                c.name
            );
            if c.name.contains("memory") && ok > n {
                let _ = write!(
                    s,
                    " (each of the {WORKERS} workers counts alone, so up to {} get through)",
                    n * WORKERS
                );
            }
            s.push_str(". ");
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 4s test @ http://198.51.100.1:8000/api/checked\n  2 threads and 16 connections\n  Latency Distribution\n     50%    6.10ms\n     75%    7.00ms\n     90%    8.00ms\n     99%   15.20ms\n  4000 requests in 4.00s, 1.00MB read\n  Non-2xx or 3xx responses: 12\nRequests/sec:   1000.50\nTransfer/sec:    250.00KB\n";
        let l = parse_wrk(out).expect("figures");
        assert_eq!(l.non_2xx, 12);
        assert!((l.rps - 1000.5).abs() < 1e-9);
        assert!((l.p50_ms - 6.1).abs() < 1e-9 && (l.p99_ms - 15.2).abs() < 1e-9);
        assert!(parse_wrk("nothing").is_none());
        let us = parse_wrk(&out.replace("6.10ms", "610.00us")).expect("figures");
        assert!((us.p50_ms - 0.61).abs() < 1e-9);
    }
}
