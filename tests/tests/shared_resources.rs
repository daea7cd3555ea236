//! What a daemon shares with others on the host, held against misuse, with the real
//! `shield run` in network namespaces: its `--state-dir`, its metrics port, its socket
//! path, and the file `shield tune --write` writes.
//! Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use shield_tests::netlab::{Daemon, TempBpffs, Topology, unique};
use shield_tests::{require_root, shield_bin};

const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "50/s", burst = 100 }
"#;

/// Files and directories a test made, removed on every exit path.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn policy_file(scratch: &mut Scratch) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("scl-policy-")));
    std::fs::write(&path, POLICY).expect("writing the policy");
    scratch.0.push(path.clone());
    path
}

/// The sources saved in `DIR/bans.json`.
fn saved_sources(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(dir.join("bans.json")) else {
        return Vec::new();
    };
    let saved: serde_json::Value = serde_json::from_str(&text).expect("bans.json is JSON");
    saved["bans"]
        .as_array()
        .expect("bans.json has bans")
        .iter()
        .map(|b| b["source"].as_str().expect("source").to_string())
        .collect()
}

/// Waits (up to 30 s, polling) until `DIR/bans.json` lists `source`.
fn wait_saved(dir: &Path, source: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !saved_sources(dir).iter().any(|s| s == source) {
        assert!(
            Instant::now() < deadline,
            "{source} never reached {}/bans.json: {:?}",
            dir.display(),
            saved_sources(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `shield ARGS` as a user runs it: (success, stdout + stderr).
fn shield(args: &[&str]) -> (bool, String) {
    let out = Command::new(shield_bin())
        .args(args)
        .output()
        .expect("running shield");
    (out.status.success(), text(&out))
}

/// A finished command's stdout and stderr, one after the other.
fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Two daemons (on two interfaces) with one `--state-dir` wrote the same `bans.json`, each
/// over the other's: the second one's start replaced the first one's saved bans with its
/// own (none), so a reboot would have lost them. The second start is now refused, before
/// it attaches anything; `kill -9` frees the directory for the next start.
#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_and_the_saved_bans_stay() {
    require_root();
    let mut scratch = Scratch(Vec::new());
    let policy = policy_file(&mut scratch);
    let state = std::env::temp_dir().join(unique("scl-state-"));
    scratch.0.push(state.clone());
    let state_arg = state.to_str().expect("utf-8").to_string();
    let topo = Topology::new().expect("namespaces");
    let bpffs = TempBpffs::new().expect("bpffs");
    let mut first = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &["--metrics", "off", "--state-dir", &state_arg],
    )
    .expect("first daemon");
    let socket = first.socket.to_str().expect("utf-8").to_string();
    let (ok, out) = shield(&["ban", "192.0.2.77", "--for", "1h", "--socket", &socket]);
    assert!(ok, "ban: {out}");
    wait_saved(&state, "192.0.2.77/32");

    // A second daemon on another interface (the server namespace's own loopback), with
    // its own socket, and the same --state-dir.
    let socket2 = std::env::temp_dir().join(format!("{}.sock", unique("scl-sock-")));
    scratch.0.push(socket2.clone());
    let started = Instant::now();
    let mut second = topo
        .server
        .command(&shield_bin())
        .args([
            "run",
            "--iface",
            "lo",
            "--xdp-mode",
            "generic",
            "--metrics",
            "off",
        ])
        .arg("--policy")
        .arg(&policy)
        .arg("--bpffs")
        .arg(&bpffs.path)
        .arg("--socket")
        .arg(&socket2)
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second daemon");
    // Refused at once; one that runs is stopped once it answers (the bug), or after 30 s.
    let mut answered = false;
    while second.try_wait().expect("wait").is_none() {
        answered = shield_user::control::call::<shield_user::control::Pong>(
            &socket2,
            &shield_user::control::Request::Ping {},
        )
        .is_ok();
        if answered || started.elapsed() > Duration::from_secs(30) {
            // Long enough for it to have saved its (empty) bans, as the bug did.
            std::thread::sleep(Duration::from_secs(2));
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = second.wait_with_output().expect("second daemon output");
    let text = text(&out);
    assert!(
        !answered,
        "a second daemon on the same --state-dir must not run: {text}"
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("another shield daemon uses --state-dir"),
        "the error must say why: {text}"
    );
    let lo_xdp = topo
        .server
        .command(Path::new("ip"))
        .args(["-d", "link", "show", "lo"])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&lo_xdp.stdout).contains("xdp"),
        "the refused start attached nothing to lo"
    );
    assert!(
        saved_sources(&state).iter().any(|s| s == "192.0.2.77/32"),
        "the first daemon's saved ban must still be on disk: {:?}",
        saved_sources(&state)
    );
    // The first daemon still saves its bans there.
    let (ok, out) = shield(&["ban", "192.0.2.78", "--for", "1h", "--socket", &socket]);
    assert!(ok, "ban: {out}");
    wait_saved(&state, "192.0.2.78/32");

    // kill -9: the kernel releases the lock, and the next start on that directory runs.
    first.kill9().expect("kill -9");
    drop(first);
    let again = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &["--metrics", "off", "--state-dir", &state_arg],
    )
    .expect("a start after kill -9 takes the state dir");
    let (ok, out) = shield(&[
        "bans",
        "--json",
        "--socket",
        again.socket.to_str().expect("utf-8"),
    ]);
    assert!(ok, "bans: {out}");
    assert!(
        out.contains("192.0.2.77/32") && out.contains("192.0.2.78/32"),
        "the restarted daemon keeps both bans: {out}"
    );
}

/// One HTTP/1.1 request to `addr`, the whole answer (status line, headers, body).
fn http(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Eight TCP connections to the metrics port, opened and left silent, took every place
/// the endpoint had for 30 s, and opened again they kept a scraper out for good: during an
/// attack the operator lost the graphs. A new connection now closes the oldest idle one.
/// Methods other than GET and HEAD get 405.
#[test]
fn silent_connections_cannot_lock_the_scraper_out_of_metrics() {
    require_root();
    let mut scratch = Scratch(Vec::new());
    let policy = policy_file(&mut scratch);
    let topo = Topology::new().expect("namespaces");
    let bpffs = TempBpffs::new().expect("bpffs");
    let port = 47110;
    let listen = format!("127.0.0.1:{port}");
    let _daemon = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &["--metrics", &listen],
    )
    .expect("daemon");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let get = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (scrapes, post) = topo
        .server
        .run_in(move || {
            let mut silent = Vec::new();
            let mut scrapes = Vec::new();
            for _ in 0..3 {
                // More silent connections than the endpoint serves at once, then a scrape.
                for _ in 0..20 {
                    silent.push(TcpStream::connect(addr).expect("connect"));
                }
                scrapes.push(http(addr, get));
            }
            let post = http(
                addr,
                "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            );
            drop(silent);
            (scrapes, post)
        })
        .expect("server namespace");
    for (i, s) in scrapes.into_iter().enumerate() {
        let s = s.unwrap_or_else(|e| panic!("scrape {i} behind silent connections: {e}"));
        assert!(s.starts_with("HTTP/1.1 200"), "scrape {i}: {s}");
        assert!(
            s.contains("shield_"),
            "scrape {i} carries shield's metrics: {s}"
        );
    }
    let post = post.expect("POST");
    assert!(post.starts_with("HTTP/1.1 405"), "POST /metrics: {post}");
    assert!(post.to_lowercase().contains("allow: get, head"), "{post}");
}

/// One answer on a keep-alive connection: its status line, and whether the server closes the
/// connection after it. `None` once the server closed it (or it broke).
fn answer(s: &mut std::io::BufReader<TcpStream>) -> Option<(String, bool)> {
    use std::io::BufRead as _;
    let mut status = String::new();
    if s.read_line(&mut status).ok()? == 0 {
        return None;
    }
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        close |= line == "connection: close";
    }
    let mut body = vec![0; length];
    s.read_exact(&mut body).ok()?;
    Some((status, close))
}

/// Sixteen clients that each keep a connection answering requests back to back held all 8
/// places, and a scrape that found none was closed: 4-7 of 30 were served in the attack
/// that found it, 27-29 of 30 in this test. A connection now waits for a
/// place (first come, first served), and while one waits every answer closes its
/// connection, so the places go round.
#[test]
fn clients_asking_back_to_back_cannot_crowd_the_scraper_out_of_metrics() {
    require_root();
    let mut scratch = Scratch(Vec::new());
    let policy = policy_file(&mut scratch);
    let topo = Topology::new().expect("namespaces");
    let bpffs = TempBpffs::new().expect("bpffs");
    let port = 47111;
    let listen = format!("127.0.0.1:{port}");
    let _daemon = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &["--metrics", &listen],
    )
    .expect("daemon");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (scrapes, hammered) = topo
        .server
        .run_in(move || {
            let stop = std::sync::atomic::AtomicBool::new(false);
            let hammered = std::sync::atomic::AtomicUsize::new(0);
            let scrapes = std::thread::scope(|sc| {
                for _ in 0..16 {
                    sc.spawn(|| {
                        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let Ok(c) = TcpStream::connect(addr) else {
                                continue;
                            };
                            let mut c = std::io::BufReader::new(c);
                            // Back to back on this connection until the server closes it.
                            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                                && c.get_mut().write_all(get).is_ok()
                            {
                                match answer(&mut c) {
                                    Some((_, close)) => {
                                        hammered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                        if close {
                                            break;
                                        }
                                    }
                                    None => break,
                                }
                            }
                        }
                    });
                }
                // Let them take every place first.
                let started = Instant::now();
                while hammered.load(std::sync::atomic::Ordering::Relaxed) < 160
                    && started.elapsed() < Duration::from_secs(60)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let get = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
                let scrapes: Vec<_> = (0..30)
                    .map(|_| {
                        std::thread::sleep(Duration::from_millis(10));
                        http(addr, get)
                    })
                    .collect();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                scrapes
            });
            (scrapes, hammered.into_inner())
        })
        .expect("server namespace");
    assert!(
        hammered >= 160,
        "the clients asked back to back: {hammered} answers"
    );
    let served = scrapes
        .iter()
        .filter(|s| {
            s.as_ref()
                .is_ok_and(|s| s.starts_with("HTTP/1.1 200") && s.contains("shield_"))
        })
        .count();
    assert_eq!(
        served, 30,
        "scrapes served while 16 clients asked back to back ({hammered} answers to them): {served} of 30"
    );
}

/// A stopping daemon removed whatever was at its `--socket` path by then: a file someone
/// put there, or the socket of a daemon started since on that path. It now removes only
/// the socket it made.
#[test]
fn a_stopping_daemon_removes_only_the_socket_it_made() {
    require_root();
    let mut scratch = Scratch(Vec::new());
    let policy = policy_file(&mut scratch);
    let topo = Topology::new().expect("namespaces");
    let bpffs = TempBpffs::new().expect("bpffs");
    let start = |scratch: &mut Scratch| {
        let d = Daemon::start(
            &shield_bin(),
            &topo.server,
            &policy,
            &bpffs.path,
            &["--metrics", "off"],
        )
        .expect("daemon");
        scratch.0.push(d.socket.clone());
        d
    };
    let mut daemon = start(&mut scratch);
    let socket = daemon.socket.clone();
    std::fs::remove_file(&socket).expect("removing the socket");
    std::fs::write(&socket, "not shield's\n").expect("a file in its place");
    let (status, log) = daemon.stop().expect("stop");
    assert!(status.success(), "{log}");
    assert_eq!(
        std::fs::read_to_string(&socket).ok().as_deref(),
        Some("not shield's\n"),
        "the file at the socket path must be left alone: {log}"
    );

    // Its own socket it does remove.
    std::fs::remove_file(&socket).expect("removing the file");
    let mut daemon = start(&mut scratch);
    let socket = daemon.socket.clone();
    assert!(socket.exists(), "the daemon made its socket");
    let (status, log) = daemon.stop().expect("stop");
    assert!(status.success(), "{log}");
    assert!(!socket.exists(), "a clean stop removes its socket: {log}");
}

/// `shield tune --write` at a directory failed only after the whole observation (10
/// minutes by default), at a FIFO it blocked for good, at /dev/null it "wrote" the policy.
/// Refused before observing now.
#[test]
fn tune_write_refuses_what_is_not_a_file_before_observing() {
    require_root();
    let mut scratch = Scratch(Vec::new());
    let policy = policy_file(&mut scratch);
    let topo = Topology::new().expect("namespaces");
    let bpffs = TempBpffs::new().expect("bpffs");
    let daemon = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &["--metrics", "off"],
    )
    .expect("daemon");
    let dir = std::env::temp_dir().join(unique("scl-dir-"));
    std::fs::create_dir(&dir).expect("a directory");
    scratch.0.push(dir.clone());
    let fifo = std::env::temp_dir().join(unique("scl-fifo-"));
    scratch.0.push(fifo.clone());
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    for (out, kind) in [
        (dir.as_path(), "a directory"),
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/null"), "a character device"),
    ] {
        let mut child = topo
            .server
            .command(&shield_bin())
            .args(["tune", "--iface", shield_tests::netlab::SERVER_IF])
            .args(["--for", "2s", "--bpffs"])
            .arg(&bpffs.path)
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--write")
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("shield tune");
        let started = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = child.wait_with_output().expect("output");
        let text = text(&o);
        assert_eq!(
            o.status.code(),
            Some(1),
            "--write {}: {text}",
            out.display()
        );
        assert!(
            text.contains(&format!("it is {kind}")) && text.contains("not a regular file"),
            "--write {}: {text}",
            out.display()
        );
        assert!(
            !text.contains("wrote") && !text.contains("rule api"),
            "refused before observing: {text}"
        );
    }
    assert!(
        std::fs::read_dir(&dir).expect("dir").next().is_none(),
        "nothing written in the directory"
    );
}

/// A whole `/metrics` answer: status 200, shield's metrics, a body as long as its
/// Content-Length (not cut off).
fn whole_metrics(answer: &str) -> bool {
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    head.starts_with("HTTP/1.1 200") && length == Some(body.len()) && body.contains("shield_")
}

/// `n` scrapes 100 ms apart on one keep-alive connection, as Prometheus makes them: a new
/// connection when the server closed the last one, and a request that got nothing on a
/// reused connection sent again once (the server may close an idle connection as the
/// request arrives). (answers with status 200, answers that closed the connection)
fn keep_alive_scrapes(addr: SocketAddr, n: usize) -> (usize, usize) {
    let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let (mut served, mut closes) = (0, 0);
    let mut conn: Option<std::io::BufReader<TcpStream>> = None;
    for _ in 0..n {
        std::thread::sleep(Duration::from_millis(100));
        for attempt in 0..2 {
            let reused = conn.is_some();
            let mut c = match conn.take() {
                Some(c) => c,
                None => match TcpStream::connect(addr) {
                    Ok(c) => {
                        c.set_read_timeout(Some(Duration::from_secs(30))).ok();
                        std::io::BufReader::new(c)
                    }
                    Err(_) => break,
                },
            };
            let got = c
                .get_mut()
                .write_all(get)
                .ok()
                .and_then(|()| answer(&mut c));
            match got {
                Some((status, close)) => {
                    served += usize::from(status.starts_with("HTTP/1.1 200"));
                    if close {
                        closes += 1;
                    } else {
                        conn = Some(c);
                    }
                    break;
                }
                None if reused && attempt == 0 => {}
                None => break,
            }
        }
    }
    (served, closes)
}

/// The daemon's open file descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A scraper that keeps its connection (Prometheus does) was never sent `Connection:
/// close` while nobody else asked: the places are given up only when someone waits.
#[test]
fn a_keep_alive_scraper_keeps_its_metrics_connection_when_nobody_attacks() {
    require_root();
    let mut scratch = Scratch(Vec::new());
    let policy = policy_file(&mut scratch);
    let topo = Topology::new().expect("namespaces");
    let bpffs = TempBpffs::new().expect("bpffs");
    let port = 49112;
    let listen = format!("127.0.0.1:{port}");
    let _daemon = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &["--metrics", &listen],
    )
    .expect("daemon");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (served, closes) = topo
        .server
        .run_in(move || keep_alive_scrapes(addr, 30))
        .expect("server namespace");
    assert_eq!(
        (served, closes),
        (30, 0),
        "(scrapes served of 30, connections closed)"
    );
}

/// Sixteen clients opening connections as fast as they can (thousands a second) and
/// leaving them silent (each keeps its last 100 open): every scrape, with `Connection:
/// close` or keep-alive, got its whole answer (30 of 30 each in the attack that checked it),
/// and the daemon's descriptors went back to what they were once the flood stopped.
#[test]
fn a_flood_of_silent_connections_cannot_lock_the_scraper_out_of_metrics() {
    require_root();
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let mut scratch = Scratch(Vec::new());
    let policy = policy_file(&mut scratch);
    let topo = Topology::new().expect("namespaces");
    let bpffs = TempBpffs::new().expect("bpffs");
    let port = 49111;
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &["--metrics", &listen],
    )
    .expect("daemon");
    let pid = daemon.pid();
    let fds_before = open_fds(pid);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (closing, keeping, flood, seconds) = topo
        .server
        .run_in(move || {
            let stop = AtomicBool::new(false);
            let flood = AtomicUsize::new(0);
            let started = Instant::now();
            std::thread::scope(|sc| {
                for _ in 0..16 {
                    sc.spawn(|| {
                        let mut held = std::collections::VecDeque::new();
                        while !stop.load(Relaxed) {
                            if let Ok(c) = TcpStream::connect(addr) {
                                flood.fetch_add(1, Relaxed);
                                held.push_back(c);
                                if held.len() > 100 {
                                    held.pop_front();
                                }
                            }
                        }
                    });
                }
                std::thread::sleep(Duration::from_secs(1));
                let get = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
                let closing = (0..30)
                    .filter(|_| {
                        std::thread::sleep(Duration::from_millis(100));
                        http(addr, get).is_ok_and(|a| whole_metrics(&a))
                    })
                    .count();
                let (keeping, _) = keep_alive_scrapes(addr, 30);
                stop.store(true, Relaxed);
                (
                    closing,
                    keeping,
                    flood.load(Relaxed),
                    started.elapsed().as_secs_f64(),
                )
            })
        })
        .expect("server namespace");
    let rate = flood as f64 / seconds;
    // That the flood happened (its speed depends on the machine; it was about 8,000/s).
    assert!(
        flood >= 1000,
        "the flood opened {flood} connections in {seconds:.1} s"
    );
    // One scrape of 30 may be lost: one keep-alive scrape was, in one run of about seven (4
    // tests at once on 2 cores), cause not known yet (a full queue, or a place closed before
    // its request was read while the daemon's thread was preempted). A queue that silent
    // connections cannot get through loses most of them.
    assert!(
        closing >= 29,
        "Connection: close scrapes served of 30 while {rate:.0} silent connections/s: {closing}"
    );
    assert!(
        keeping >= 29,
        "keep-alive scrapes served of 30 while {rate:.0} silent connections/s: {keeping}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) > fds_before + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        open_fds(pid) <= fds_before + 2,
        "the daemon's descriptors after the flood: {} (before: {fds_before})",
        open_fds(pid)
    );
}
