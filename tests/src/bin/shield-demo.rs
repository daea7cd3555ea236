//! `shield-demo` (`cargo xtask demo`, and `cargo xtask run` without arguments): a real Flask
//! API under gunicorn in a network namespace, the shipped `shield run` in front of it, two
//! legit clients and a set of attackers, played in under a minute with a live view, then a
//! summary. Lives here, not in the `shield` binary: what ships is the product.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use shield_tests::applab::{self, App, Limiter};
use shield_tests::netlab::{
    self, ATTACKER_V4, Connects, DENIED_V4, Daemon, LEGIT_V4, LEGIT_V6, PARTNER_V4, SERVER_IF,
    SERVER_V4, SERVER_V6, TempBpffs, Topology, connect_many, http_many, rotating_v6,
};
use shield_user::{policy, stats};

/// The demo lab: a real Flask API under gunicorn in a network namespace, shield in front of
/// it, legit clients and attackers, played in under a minute with a live view (needs root).
///
/// Phases: a burst that is allowed; a connection flood from one source (limited, then
/// banned); an IPv6 attacker rotating addresses in one /64 (caught by the /64 scope); a
/// deny-listed network; a partner on the allow list (never limited); when the policy has
/// `[app]`, credential stuffing on `POST /login` (the app, with shield_flask, answers 429s,
/// then the stuffer is banned at the NIC). Ends with a summary.
/// Never touches the machine's own interfaces; everything is removed on exit (also on
/// Ctrl-C). This is `cargo xtask demo`, and `cargo xtask run` without arguments.
#[derive(Parser)]
#[command(name = "shield-demo")]
struct Args {
    /// Policy to protect the API with (its rules should cover TCP port 8000).
    #[arg(
        long,
        short = 'p',
        value_name = "FILE",
        default_value = "policy/demo.toml"
    )]
    policy: PathBuf,
    /// The `shield` binary to run as the daemon (`shield run`). Default: $SHIELD_BIN, else
    /// `shield` beside this program (target/debug/shield).
    #[arg(long, value_name = "PATH")]
    shield: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    match shield_bin(args.shield).and_then(|bin| run(&bin, &args.policy, &stop)) {
        Ok(Ended::Played) => ExitCode::SUCCESS,
        // 128 + SIGINT, as a shell reports a program a Ctrl-C ended.
        Ok(Ended::Interrupted) => ExitCode::from(130),
        // A Ctrl-C at the terminal also reaches the daemon, gunicorn and `ip`: while the lab
        // is being built, one of them dies of it and the step fails. That is the
        // interruption, not an error; everything built so far is removed by now.
        Err(_) if stop.load(Ordering::Relaxed) => {
            eprintln!(
                "demo: interrupted (Ctrl-C) while building the lab: no summary; namespaces, processes and bpffs removed"
            );
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("shield-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--shield`, else `$SHIELD_BIN`, else the `shield` that cargo built beside this binary.
fn shield_bin(given: Option<PathBuf>) -> Result<PathBuf> {
    let path = match given.or_else(|| std::env::var_os("SHIELD_BIN").map(PathBuf::from)) {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating shield-demo")?
            .with_file_name("shield"),
    };
    if !path.is_file() {
        bail!(
            "the shield binary is missing at {}: build it with `cargo build -p shield-user` (cargo xtask demo does), or pass --shield PATH or set SHIELD_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// How the demo ended: every phase played, or stopped by Ctrl-C (SIGINT) or SIGTERM.
enum Ended {
    Played,
    Interrupted,
}

/// What the demo leaves outside its namespaces, removed on every way out (an error
/// included): its audit log, and the `[app] socket`'s directory when the daemon created it
/// for this run, with the socket if it is still there (a stopping daemon removes it, one
/// that a Ctrl-C ended during its start cannot). A directory that was there before, or that
/// holds anything else, is left.
struct Leftovers {
    audit: PathBuf,
    /// The `[app] socket` and its directory, when that directory did not exist before.
    created_dir: Option<(PathBuf, PathBuf)>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        use std::os::unix::fs::FileTypeExt as _;
        let _ = std::fs::remove_file(&self.audit);
        if let Some((socket, dir)) = &self.created_dir {
            if std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(socket);
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Port the demo API listens on (policy/demo.toml protects it).
const API_PORT: u16 = 8000;

#[derive(Default, Clone, Copy)]
struct Tally {
    legit: Connects,
    attacker: Connects,
    rotating: Connects,
    denied: Connects,
    partner: Connects,
    stuffer: Stuffing,
    /// `GET /api/report` (cost 5 of a burst of 10): (admitted, 429s).
    report: (u32, u32),
}

/// What the credential stuffer got: answers by status, and attempts dropped (no answer).
#[derive(Default, Clone, Copy, Debug)]
struct Stuffing {
    unauthorized: u32,
    limited: u32,
    other: u32,
    dropped: u32,
}

/// The credential stuffer: a fresh address on the client side.
const STUFFER_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 64, 0, 66);

/// `[app] socket` of the policy file, if it has an `[app]` table.
fn app_socket(policy_path: &Path) -> Result<Option<PathBuf>> {
    let text = std::fs::read_to_string(policy_path)
        .with_context(|| format!("reading {}", policy_path.display()))?;
    let value: toml::Value =
        toml::from_str(&text).with_context(|| format!("parsing {}", policy_path.display()))?;
    Ok(value.get("app").map(|app| {
        app.get("socket")
            .and_then(toml::Value::as_str)
            .map_or_else(|| PathBuf::from("/run/shield/app.sock"), PathBuf::from)
    }))
}

/// Up to `count` wrong-password POSTs to /login from the stuffer, one every `every`; stops
/// after 6 attempts without an answer (banned: the point is made).
fn stuff(dst: SocketAddr, count: u32, every: Duration, timeout: Duration) -> Stuffing {
    let mut got = Stuffing::default();
    let start = Instant::now();
    for i in 0..count {
        let due = start + every * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let body = applab::login_form(&format!("guess{i}"));
        match applab::http(
            IpAddr::V4(STUFFER_V4),
            dst,
            "POST",
            "/login",
            &[],
            &body,
            timeout,
        ) {
            Some(r) if r.status == 401 => got.unauthorized += 1,
            Some(r) if r.status == 429 => got.limited += 1,
            Some(_) => got.other += 1,
            None => got.dropped += 1,
        }
        if got.dropped >= 6 {
            break;
        }
    }
    got
}

fn add(a: &mut Connects, b: Connects) {
    a.ok += b.ok;
    a.failed += b.failed;
}

/// One line per second: rates per reason and what each client got so far.
fn live_line(
    bpffs: &Path,
    control: &Path,
    started: Instant,
    phase: &str,
    t: &Tally,
    last: &mut Vec<(String, u64)>,
) -> String {
    let mut rates = String::new();
    if let Ok(s) = stats::read_iface(bpffs, SERVER_IF) {
        let mut now = Vec::new();
        for r in &s.rules {
            for (reason, c) in &r.counters {
                let key = format!("{}/{reason}", r.name);
                let prev = last.iter().find(|(k, _)| *k == key).map_or(0, |(_, v)| *v);
                if c.packets > prev && *reason != "pass" {
                    rates.push_str(&format!(" {key} {}/s", c.packets - prev));
                }
                now.push((key, c.packets));
            }
        }
        // The application layer's decisions (endpoints and signals), from the daemon.
        if let Ok(app) = shield_user::control::call::<shield_user::control::AppStats>(
            control,
            &shield_user::control::Request::AppStats {},
        ) {
            for row in &app.rows {
                for (what, n) in [
                    ("allowed", row.allowed),
                    ("limited", row.limited),
                    ("banned", row.banned),
                ] {
                    let key = format!("app {}/{what}", row.name);
                    let prev = last.iter().find(|(k, _)| *k == key).map_or(0, |(_, v)| *v);
                    if n > prev {
                        rates.push_str(&format!(" {key} {}/s", n - prev));
                    }
                    now.push((key, n));
                }
            }
        }
        *last = now;
        rates.push_str(&format!(" | bans {}", s.active_bans));
    }
    format!(
        "[{:>4.1}s] {phase:<34} legit {}/{} ok | per second:{rates}",
        started.elapsed().as_secs_f64(),
        t.legit.ok,
        t.legit.ok + t.legit.failed
    )
}

fn run(shield: &Path, policy_path: &Path, stop: &Arc<AtomicBool>) -> Result<Ended> {
    netlab::require_privileges()?;
    // Its message already holds its cause: `{e:#}` would print that twice.
    let p = policy::load(policy_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }

    eprintln!(
        "demo: building the lab: an API host (gunicorn + Flask on :{API_PORT}) behind shield, clients in their own namespace"
    );
    let bpffs = TempBpffs::new()?;
    let topo = Topology::new()?;
    let app_socket = app_socket(policy_path)?;
    let limiter = match &app_socket {
        Some(socket) => Limiter::Shield {
            socket: socket.clone(),
            on_error: "open".into(),
        },
        None => Limiter::None,
    };
    topo.add_client_addr(IpAddr::V4(STUFFER_V4))?;
    let audit =
        std::env::temp_dir().join(format!("{}.jsonl", netlab::unique("shield-demo-audit-")));
    let audit_arg = audit.to_string_lossy().into_owned();
    // Declared before the daemon, so dropped after it (the daemon removes its socket first).
    let leftovers = Leftovers {
        audit: audit.clone(),
        created_dir: app_socket.as_deref().and_then(|socket| {
            let dir = socket.parent().filter(|dir| !dir.exists())?;
            Some((socket.to_path_buf(), dir.to_path_buf()))
        }),
    };
    let daemon = Daemon::start(
        shield,
        &topo.server,
        policy_path,
        &bpffs.path,
        &["--audit-log", &audit_arg, "--metrics", "off"],
    )?;
    eprint!("{}", daemon.log_text());
    let api = App::start(&topo.server, API_PORT, 4, &limiter)?;
    match &app_socket {
        Some(s) => eprintln!(
            "demo: the API uses shield_flask (4 gunicorn workers) on the app socket {}",
            s.display()
        ),
        None => eprintln!("demo: the policy has no [app]: no application-layer phase"),
    }
    eprintln!(
        "demo: policy {} ({} rule{})",
        policy_path.display(),
        p.rules.len(),
        if p.rules.len() == 1 { "" } else { "s" }
    );

    let v4 = SocketAddr::new(IpAddr::V4(SERVER_V4), API_PORT);
    let v6 = SocketAddr::new(IpAddr::V6(SERVER_V6), API_PORT);
    let t = Duration::from_millis(500);
    // Legit requests get more time: a busy gunicorn worker on a loaded machine may take
    // over 500 ms, while a dropped SYN (retransmitted after 1 s) still counts as lost.
    let t_legit = Duration::from_millis(900);
    let tally = Mutex::new(Tally::default());
    let phase = Mutex::new("legit traffic");
    // Phases started so far (1-6): an interrupted demo prints no figure of a phase that
    // shield did not judge to the end.
    let reached = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let done = AtomicBool::new(false);

    let run_phases = || -> Result<()> {
        let client = &topo.client;
        let step = |name: &'static str, secs: u64, f: &(dyn Fn() -> Tally + Sync)| -> Result<()> {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            {
                // The header and the phase's name change together: a live line is printed
                // either before both or after both (it was seen labelled with the previous
                // phase right under the new phase's header).
                let mut current = phase.lock().unwrap_or_else(|e| e.into_inner());
                *current = name;
                reached.fetch_add(1, Ordering::Relaxed);
                println!("demo: ── {name}");
            }
            let end = Instant::now() + Duration::from_secs(secs);
            let got = client.run_in(f)?;
            let mut all = tally.lock().unwrap_or_else(|e| e.into_inner());
            add(&mut all.attacker, got.attacker);
            add(&mut all.rotating, got.rotating);
            add(&mut all.denied, got.denied);
            add(&mut all.partner, got.partner);
            add(&mut all.legit, got.legit);
            all.stuffer.unauthorized += got.stuffer.unauthorized;
            all.stuffer.limited += got.stuffer.limited;
            all.stuffer.other += got.stuffer.other;
            all.stuffer.dropped += got.stuffer.dropped;
            all.report.0 += got.report.0;
            all.report.1 += got.report.1;
            drop(all);
            if let Some(rest) = end.checked_duration_since(Instant::now()) {
                std::thread::sleep(rest);
            }
            Ok(())
        };
        step("1. a burst that is allowed", 4, &|| Tally {
            // 15 requests at once from a legit client: within its burst of 20.
            legit: http_many(&[IpAddr::V4(LEGIT_V4)], v4, 15, Duration::ZERO, t_legit),
            ..Tally::default()
        })?;
        step("2. connection flood from one source", 12, &|| Tally {
            attacker: connect_many(
                &[IpAddr::V4(ATTACKER_V4)],
                v4,
                1000,
                Duration::from_millis(10),
                t,
            ),
            ..Tally::default()
        })?;
        let rotating: Vec<IpAddr> = (0..netlab::ROTATING_V6_COUNT)
            .map(|i| IpAddr::V6(rotating_v6(i)))
            .collect();
        step("3. IPv6 attacker rotating in a /64", 9, &|| Tally {
            rotating: connect_many(&rotating, v6, 600, Duration::from_millis(12), t),
            ..Tally::default()
        })?;
        step("4. a deny-listed network", 4, &|| Tally {
            denied: http_many(
                &[IpAddr::V4(DENIED_V4)],
                v4,
                20,
                Duration::from_millis(100),
                t,
            ),
            ..Tally::default()
        })?;
        step("5. a partner on the allow list", 5, &|| Tally {
            partner: http_many(
                &[IpAddr::V4(PARTNER_V4)],
                v4,
                300,
                Duration::from_millis(10),
                t,
            ),
            ..Tally::default()
        })?;
        if app_socket.is_some() {
            // Wrong passwords, 10 per second on fresh connections: the login endpoint's
            // burst, then 429s; limited in 3 different seconds → banned at the NIC.
            // Before it, an expensive route: `cost = 5` under a burst of 10, 4 requests from
            // one legit client in a row: 2 admitted, 2 × 429.
            step("6. credential stuffing on POST /login", 6, &|| {
                let mut report = (0, 0);
                for _ in 0..4 {
                    match applab::http(IpAddr::V4(LEGIT_V4), v4, "GET", "/api/report", &[], "", t)
                        .map(|r| r.status)
                    {
                        Some(200) => report.0 += 1,
                        Some(429) => report.1 += 1,
                        _ => {}
                    }
                }
                Tally {
                    stuffer: stuff(v4, 60, Duration::from_millis(100), t),
                    report,
                    ..Tally::default()
                }
            })?;
        }
        Ok(())
    };

    std::thread::scope(|s| -> Result<()> {
        // Two legit clients, IPv4 and IPv6, 2 requests per second each, all along.
        let legit = s.spawn(|| {
            topo.client.run_in(|| {
                while !done.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    let (a, b) = std::thread::scope(|s| {
                        let a = s.spawn(|| {
                            http_many(&[IpAddr::V4(LEGIT_V4)], v4, 1, Duration::ZERO, t_legit)
                        });
                        let b = s.spawn(|| {
                            http_many(&[IpAddr::V6(LEGIT_V6)], v6, 1, Duration::ZERO, t_legit)
                        });
                        (a.join().unwrap_or_default(), b.join().unwrap_or_default())
                    });
                    let mut all = tally.lock().unwrap_or_else(|e| e.into_inner());
                    add(&mut all.legit, a);
                    add(&mut all.legit, b);
                    drop(all);
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        });
        let view = s.spawn(|| {
            let mut last = Vec::new();
            let mut next = Instant::now() + Duration::from_secs(1);
            // A Ctrl-C is acknowledged within 20 ms, also when it ends the phases before
            // the next live line would be due (it used to wait for that line, up to 1 s,
            // and a Ctrl-C between phases was never acknowledged).
            loop {
                if stop.load(Ordering::Relaxed) {
                    eprintln!(
                        "demo: stopping (Ctrl-C): the current phase's clients finish their last attempts (up to 10 s), then everything is removed"
                    );
                    break;
                }
                // The phases ended: one last line when it is due, as before.
                let ended = done.load(Ordering::Relaxed);
                if ended {
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                if ended || Instant::now() >= next {
                    next += Duration::from_secs(1);
                    let t = *tally.lock().unwrap_or_else(|e| e.into_inner());
                    let current = phase.lock().unwrap_or_else(|e| e.into_inner());
                    println!(
                        "{}",
                        live_line(&bpffs.path, &daemon.socket, started, *current, &t, &mut last)
                    );
                    drop(current);
                }
                if ended {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let result = run_phases();
        done.store(true, Ordering::Relaxed);
        legit
            .join()
            .map_err(|_| anyhow::anyhow!("legit client panicked"))??;
        let _ = view.join();
        result
    })?;

    if stop.load(Ordering::Relaxed) {
        drop(api);
        drop(daemon);
        drop(topo);
        drop(bpffs);
        drop(leftovers);
        let when = match reached.load(Ordering::Relaxed) {
            0 => "before the first phase".to_string(),
            n => format!(
                "in phase {n} of {}",
                if app_socket.is_some() { 6 } else { 5 }
            ),
        };
        eprintln!(
            "demo: interrupted {when} after {:.0} s: no summary (a Ctrl-C at the terminal stops the daemon at once, so what the clients got since is not shield's doing); namespaces, processes and bpffs removed",
            started.elapsed().as_secs_f64()
        );
        return Ok(Ended::Interrupted);
    }
    let t = *tally.lock().unwrap_or_else(|e| e.into_inner());
    let bans: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["event"] == "ban" || l["event"] == "app_ban")
        .collect();
    let s = stats::read_iface(&bpffs.path, SERVER_IF)?;
    println!(
        "\n{}",
        stats::render_table(&stats::Stats {
            interfaces: vec![s],
            fleet: None,
        })
    );
    println!("{:<34} {:>10} {:>10}", "CLIENT", "ADMITTED", "DROPPED");
    for (name, c) in [
        ("legit clients (HTTP requests)", t.legit),
        ("attacker 198.51.100.3 (conns)", t.attacker),
        ("rotating IPv6 /64 (conns)", t.rotating),
        ("deny-listed 203.0.113.7 (HTTP)", t.denied),
        ("partner 10.20.0.5 (HTTP)", t.partner),
    ] {
        println!("{name:<34} {:>10} {:>10}", c.ok, c.failed);
    }
    if app_socket.is_some() {
        let st = t.stuffer;
        println!(
            "{:<34} {:>10} {:>10}\n  the stuffer's answers: {} × 401 wrong password, {} × 429 limited{}",
            "stuffer 100.64.0.66 (POST /login)",
            st.unauthorized + st.limited + st.other,
            st.dropped,
            st.unauthorized,
            st.limited,
            if st.other > 0 {
                format!(", {} other", st.other)
            } else {
                String::new()
            }
        );
    }
    if app_socket.is_some() {
        println!(
            "cost-weighted GET /api/report (cost 5, burst 10), 4 in a row: {} admitted, {} × 429",
            t.report.0, t.report.1
        );
    }
    println!("bans issued: {}", bans.len());
    for b in &bans {
        let why = if b["event"] == "app_ban" {
            let what = match (b["endpoint"].as_str(), b["signal"].as_str()) {
                (Some(e), _) => format!("endpoint {e}"),
                (None, Some(s)) => format!("signal {s}"),
                (None, None) => "app".to_string(),
            };
            format!(
                "app layer: {what}, enforced {}",
                b["enforced"].as_str().unwrap_or("?")
            )
        } else {
            format!(
                "{} strikes, scope {}",
                b["strikes"],
                b["scope"].as_str().unwrap_or("")
            )
        };
        println!(
            "  {} {} for {}s ({why})",
            b["ts"].as_str().unwrap_or(""),
            b["source"].as_str().unwrap_or(""),
            b["ban_secs"],
        );
    }
    drop(api);
    drop(daemon);
    drop(topo);
    drop(bpffs);
    drop(leftovers);
    eprintln!(
        "demo: done in {:.0} s; namespaces, processes and bpffs removed",
        started.elapsed().as_secs_f64()
    );
    Ok(Ended::Played)
}
