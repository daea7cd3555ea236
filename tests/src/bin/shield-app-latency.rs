//! `shield-app-latency [--requests N] [--clients C]`: the decision latency of the app
//! socket, measured against the real `shield run` (in a namespace lab, `$SHIELD_BIN` or
//! target/debug/shield): C clients (threads, one persistent connection each, like gunicorn
//! workers) send N `decide` requests each, one at a time; every round trip (write the
//! request line, read the reply line) is timed. Prints p50/p99/p99.9/max and decisions per
//! second. Needs root (the lab attaches XDP to a veth it creates).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use shield_tests::{app_client::AppClient, netlab::unique, nslab::NsLab};

#[derive(Parser)]
struct Args {
    /// Requests per client.
    #[arg(long, default_value_t = 50_000)]
    requests: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    clients: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let socket = std::env::temp_dir().join(format!("{}.sock", unique("shield-app-lat-")));
    let policy = format!(
        r#"
[app]
socket = "{}"
trusted_proxies = ["127.0.0.1/32"]

[[endpoint]]
name = "login"
methods = ["POST"]
path = "/login"
limit = {{ rate = "100/s", burst = 100 }}
escalation = {{ strikes = 1000, window = "1h", ban = "1s" }}

[[endpoint]]
name = "api"
path = "/api/*"
key = "header:X-Api-Key"
limit = {{ rate = "1000/s", burst = 1000 }}
"#,
        socket.display()
    );
    let _lab = NsLab::new(&policy, &[]);
    let started = Instant::now();
    let threads: Vec<_> = (0..args.clients)
        .map(|c| {
            let socket: PathBuf = socket.clone();
            let n = args.requests;
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut client = AppClient::connect(&socket)?;
                client.hello()?;
                let mut times = Vec::with_capacity(n as usize);
                for i in 0..n {
                    // 256 clients per thread behind a trusted proxy, some limited.
                    let xff = format!("198.51.{}.{}", 100 + c % 100, i % 256);
                    let t = Instant::now();
                    let d = client.decide("POST", "/login", "127.0.0.1", Some(&xff))?;
                    times.push(t.elapsed());
                    anyhow::ensure!(d["ok"] == true, "decide failed: {d}");
                }
                Ok(times)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    let wall = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "app socket decide round trip, {} clients x {} requests ({} in {:.2} s, {:.0} decisions/s):",
        args.clients,
        args.requests,
        all.len(),
        wall.as_secs_f64(),
        all.len() as f64 / wall.as_secs_f64()
    );
    println!(
        "  p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
        us(pct(0.50)),
        us(pct(0.99)),
        us(pct(0.999)),
        us(*all.last().context("no samples")?)
    );
    let _ = std::fs::remove_file(&socket);
    in_process(&policy, args.requests)
}

/// The daemon's own work per decision, without the socket and the scheduler: parse the
/// request line, decide, encode the reply (what a client task does under the lock).
fn in_process(policy: &str, n: u32) -> Result<()> {
    use shield_user::app::{AppPolicy, Limiter, protocol};
    let p = shield_user::policy::parse_str("latency.toml", policy)?;
    let mut limiter = Limiter::new(AppPolicy::new(&p, 1), Default::default());
    let mut effects = Vec::new();
    let mut times = Vec::with_capacity(n as usize);
    for i in 0..n {
        let line = format!(
            r#"{{"op":"decide","method":"POST","rule":"/login","path":"/login","peer":"127.0.0.1","xff":"198.51.100.{}","port":8000,"headers":{{}},"user":null}}"#,
            i % 256
        );
        let t = Instant::now();
        let req = protocol::parse(line.as_bytes()).map_err(anyhow::Error::msg)?;
        let d = limiter
            .decide(
                req.method.as_deref().unwrap_or(""),
                req.rule.as_deref(),
                req.path.as_deref().unwrap_or(""),
                req.peer.as_deref(),
                req.xff.as_deref(),
                req.headers.as_ref(),
                req.user.as_deref(),
                req.cost,
                &mut effects,
            )
            .map_err(anyhow::Error::msg)?;
        let reply = serde_json::to_string(&d)?;
        times.push(t.elapsed());
        std::hint::black_box(reply);
        effects.clear();
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "in-process decision (parse, decide, encode; no socket), {n} requests: p50 {:.2} us, p99 {:.2} us",
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6
    );
    Ok(())
}
