//! The metrics endpoint held against clients that would keep the scraper out: silent
//! connections, clients asking back to back, floods of connections; and a keep-alive
//! scraper left alone when nobody attacks.

use super::*;

/// A daemon serving `/metrics` on 127.0.0.1:`port` in its own namespaces.
struct MetricsLab {
    // Dropped first: the daemon stops before its namespaces and bpffs go.
    daemon: Daemon,
    topo: Topology,
    _bpffs: TempBpffs,
    _scratch: Scratch,
    addr: SocketAddr,
}

impl MetricsLab {
    fn new(port: u16) -> MetricsLab {
        require_root();
        let mut scratch = Scratch(Vec::new());
        let policy = policy_file(&mut scratch);
        let topo = Topology::new().expect("namespaces");
        let bpffs = TempBpffs::new().expect("bpffs");
        let listen = format!("127.0.0.1:{port}");
        let daemon = Daemon::start(
            &shield_bin(),
            &topo.server,
            &policy,
            &bpffs.path,
            &["--metrics", &listen],
        )
        .expect("daemon");
        MetricsLab {
            daemon,
            topo,
            _bpffs: bpffs,
            _scratch: scratch,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        }
    }
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
    let lab = MetricsLab::new(47110);
    let addr = lab.addr;
    let get = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (scrapes, post) = lab
        .topo
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
    let lab = MetricsLab::new(47111);
    let addr = lab.addr;
    let (scrapes, hammered) = lab
        .topo
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
    // Every scrape: a connection placed after waiting has sent its request already, and is
    // not closed as idle before its task reads it (CI once lost one of 30 that way; the old
    // endpoint lost 1-3 here).
    assert_eq!(
        served, 30,
        "scrapes served of 30 while 16 clients asked back to back ({hammered} answers to them)"
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
    let lab = MetricsLab::new(49112);
    let addr = lab.addr;
    let (served, closes) = lab
        .topo
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
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let lab = MetricsLab::new(49111);
    let pid = lab.daemon.pid();
    let fds_before = open_fds(pid);
    let addr = lab.addr;
    let (closing, keeping, flood, seconds) = lab
        .topo
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
    // Every scrape (a queue that silent connections cannot get through loses most of them).
    // One of 30 was lost in about one run of seven (4 tests at once on 2 cores) while a
    // scrape placed before its task read its request, or before its client (preempted
    // between connect and write) sent it, counted as idle, and while silent connections could
    // fill the queue for a place.
    assert_eq!(
        closing, 30,
        "Connection: close scrapes served of 30 while {rate:.0} silent connections/s"
    );
    assert_eq!(
        keeping, 30,
        "keep-alive scrapes served of 30 while {rate:.0} silent connections/s"
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
