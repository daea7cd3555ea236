//! The labs' TCP and HTTP traffic: TCP servers in a namespace (closing each connection at
//! once, or holding it until its client closes), series of TCP connections and HTTP GETs
//! from chosen source addresses. Re-exported by `netlab`.

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netlab::Netns;

/// A TCP server accepting connections on every address of its namespace (IPv4 and IPv6),
/// stopped on drop. `start` closes each connection at once; `holding` keeps each one open,
/// reading and discarding what the client sends, until the client closes it.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Result<()>>>>,
    pub accepted: Arc<AtomicU32>,
}

impl TcpServer {
    /// A server that closes every connection as soon as it accepts it.
    pub fn start(ns: &Netns, port: u16) -> Result<TcpServer> {
        TcpServer::serve(ns, port, false)
    }

    /// A server that keeps every connection open until its client closes it: a client's
    /// later segments reach an established socket, as with a real service (a connection
    /// closed at once answers them with a RST).
    pub fn holding(ns: &Netns, port: u16) -> Result<TcpServer> {
        TcpServer::serve(ns, port, true)
    }

    fn serve(ns: &Netns, port: u16, hold: bool) -> Result<TcpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let handle = ns.spawn_in(move || -> Result<()> {
            let listener = (|| -> io::Result<Socket> {
                let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
                s.set_only_v6(false)?;
                s.set_reuse_address(true)?;
                s.bind(&SockAddr::from(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    port,
                )))?;
                s.listen(4096)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e.into());
                }
            };
            let mut held: Vec<Socket> = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        if hold {
                            conn.set_nonblocking(true)?;
                            held.push(conn);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                // Read what held clients sent; keep a connection until its client closes.
                held.retain(|c| {
                    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
                    loop {
                        match c.recv(&mut buf) {
                            Ok(0) => return false,
                            Ok(_) => continue,
                            Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
                        }
                    }
                });
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("lab server cannot listen on port {port}: {e}"),
            Err(_) => bail!("lab server did not start"),
        }
        Ok(TcpServer {
            stop,
            handle: Some(handle),
            accepted,
        })
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Outcome of a series of connection attempts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Connects {
    pub ok: u32,
    pub failed: u32,
}

/// Opens `count` real TCP connections to `dst`, cycling through `sources`, one every `interval`, each
/// given `timeout` to complete (shorter than the kernel's 1 s SYN retransmit, so a dropped
/// SYN is one failed attempt, not a retry). Runs on the calling thread, which must be in
/// the client namespace (see `Netns::run_in`).
pub fn connect_many(
    sources: &[IpAddr],
    dst: SocketAddr,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> Connects {
    connect_series(sources, dst, count, interval, timeout, false)
}

/// How long `connect_legit` waits for an answer: far past the kernel's 1 s SYN retransmission,
/// it only bounds a test whose server never answers.
pub const LEGIT_PATIENCE: Duration = Duration::from_secs(10);

/// As `connect_many`, for a client that must lose nothing: each attempt waits for the
/// server's answer (up to `LEGIT_PATIENCE`) instead of a short timeout, and counts as failed
/// if it got none, was refused, or needed the kernel to send its SYN again (`TCP_INFO`'s
/// total retransmissions): a SYN dropped on the way shows up as that retransmission, a
/// machine too busy to answer within a few hundred ms does not.
pub fn connect_legit(
    sources: &[IpAddr],
    dst: SocketAddr,
    count: u32,
    interval: Duration,
) -> Connects {
    connect_series(sources, dst, count, interval, LEGIT_PATIENCE, true)
}

fn connect_series(
    sources: &[IpAddr],
    dst: SocketAddr,
    count: u32,
    interval: Duration,
    timeout: Duration,
    first_syn_answered: bool,
) -> Connects {
    let mut result = Connects::default();
    if sources.is_empty() {
        return result;
    }
    let mut pending: Vec<(Socket, Instant)> = Vec::new();
    let start = Instant::now();
    let mut sent = 0u32;
    while sent < count || !pending.is_empty() {
        let now = Instant::now();
        while sent < count && now >= start + interval * sent {
            let src = sources[sent as usize % sources.len().max(1)];
            match open_nonblocking(src, dst) {
                Ok(s) => pending.push((s, now + timeout)),
                Err(_) => result.failed += 1,
            }
            sent += 1;
        }
        pending.retain(|(s, deadline)| match poll_connected(s) {
            Some(true) => {
                if first_syn_answered && retransmitted(s) {
                    result.failed += 1;
                } else {
                    result.ok += 1;
                }
                let _ = s.set_linger(Some(Duration::ZERO));
                false
            }
            Some(false) => {
                result.failed += 1;
                false
            }
            None if Instant::now() >= *deadline => {
                result.failed += 1;
                false
            }
            None => true,
        });
        std::thread::sleep(Duration::from_micros(500));
    }
    result
}

fn open_nonblocking(src: IpAddr, dst: SocketAddr) -> io::Result<Socket> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    match s.connect(&SockAddr::from(dst)) {
        Ok(()) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
        Err(e) => Err(e),
    }
}

/// Whether the kernel had to send anything on `s` again (for a fresh connection: its SYN).
/// An unreadable `TCP_INFO` counts as a retransmission.
fn retransmitted(s: &Socket) -> bool {
    tcp_info(s).is_none_or(|info| info.tcpi_total_retrans > 0)
}

/// The kernel's `TCP_INFO` of a TCP socket; `None` when it cannot be read.
pub fn tcp_info(s: &Socket) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, a buffer of `len` bytes and its length.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

/// `Some(true)` connected, `Some(false)` refused/failed, `None` still in progress.
fn poll_connected(s: &Socket) -> Option<bool> {
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n <= 0 {
        return None;
    }
    match s.take_error() {
        Ok(None) => Some(true),
        _ => Some(false),
    }
}

/// One HTTP/1.0 GET from `src`, a new TCP connection: the status code, or `None` if the
/// connection or the response did not come within `timeout`. Call from a thread inside the
/// client namespace.
pub fn http_get(src: IpAddr, dst: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    http_get_timed(src, dst, path, timeout).1
}

/// `http_get`, also saying how long the connection took to establish (None: it did not).
pub fn http_get_timed(
    src: IpAddr,
    dst: SocketAddr,
    path: &str,
    timeout: Duration,
) -> (Option<Duration>, Option<u16>) {
    use std::io::{Read as _, Write as _};
    let start = Instant::now();
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let Ok(s) = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)) else {
        return (None, None);
    };
    if s.bind(&SockAddr::from(SocketAddr::new(src, 0))).is_err()
        || s.connect_timeout(&SockAddr::from(dst), timeout).is_err()
    {
        return (None, None);
    }
    let connected = Some(start.elapsed());
    let code = (|| {
        s.set_read_timeout(Some(timeout)).ok()?;
        s.set_write_timeout(Some(timeout)).ok()?;
        let mut stream: std::net::TcpStream = s.into();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: api\r\n\r\n").as_bytes())
            .ok()?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace().nth(1)?.parse().ok()
    })();
    (connected, code)
}

/// `count` GETs from `sources` (round robin), one started every `interval`, up to 64 in
/// flight: (succeeded with 200, failed).
pub fn http_many(
    sources: &[IpAddr],
    dst: SocketAddr,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> Connects {
    let ok = AtomicU32::new(0);
    let failed = AtomicU32::new(0);
    let in_flight = AtomicU32::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for i in 0..count {
            let due = start + interval * i;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            while in_flight.load(Ordering::Relaxed) >= 64 {
                std::thread::sleep(Duration::from_millis(1));
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let src = sources[i as usize % sources.len().max(1)];
            let (ok, failed, in_flight) = (&ok, &failed, &in_flight);
            scope.spawn(move || {
                if http_get(src, dst, "/api/items", timeout) == Some(200) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Connects {
        ok: ok.into_inner(),
        failed: failed.into_inner(),
    }
}
