//! `/metrics` over HTTP/1 (hyper on the daemon's runtime). Rendering reads the pinned maps,
//! so it runs in `spawn_blocking`.

use std::{
    convert::Infallible,
    os::fd::AsFd,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch},
};
use tracing::warn;

use crate::{
    exposition,
    metrics::{Sources, render},
};

/// A connection gets this long for its requests (a stalled client cannot pile up).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once (a scraper needs one). A new connection beyond them waits for
/// a place, first come first served, and closes the oldest idle one meanwhile (connections
/// opened and left silent, or never read, cannot lock the scraper out); while any
/// connection waits, every answer closes its connection, so clients sending requests back
/// to back on each place cannot crowd the scraper out either.
const MAX_CONNECTIONS: usize = 8;
/// Connections that may wait for a place, of each kind: those that had sent a whole request
/// head when they asked for one, and the others (silent ones, or a request's first bytes
/// only); one more of a kind is closed at once. Silent connections cannot fill the queue for
/// a scraper.
const MAX_WAITING: usize = 64;
/// How long a connection waits for a place before it is closed.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// A connection that has answered counts as idle (to be closed for a new one) only this long
/// after its last answer: an answer still being written is never cut off. One that has not
/// had a whole request yet is idle at once (a scraper's connection asks at once; the newest
/// is closed last), and so is one whose request is still arriving: clients that open
/// connections and send nothing, or a request's first bytes only, cannot hold a place.
const IDLE_AFTER_ANSWER: Duration = Duration::from_millis(20);
/// A connection whose whole request head has arrived (read, or still waiting in its socket
/// for the connection's task to run) is not idle until it is answered, for at most this long
/// after the head was first seen. A scraper placed after waiting has sent its request
/// already; without this, another waiting connection could close it as idle before its task
/// got to read it (29 of 30 scrapes on a loaded machine). The limit only bounds a request
/// that is whole but never answered (none is known: a whole head is answered, or refused
/// with 400, as soon as it is read).
const ASKED_GRACE: Duration = Duration::from_secs(1);
/// How much of a connection's unread bytes is looked at for the end of a request head; a
/// head longer than this that is still unread counts as not whole.
const PEEK_BYTES: usize = 4096;
/// A new connection waits up to this long for its whole request head (or its client's close)
/// before it asks for a place, so that it has sent its request when it gets one (a client
/// may be preempted between its connect and its write, for many milliseconds on a loaded
/// machine; placed before its request came, it would be idle). Connections that send at
/// once go first: silent ones queue for a place this much later.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(250);
/// Connections that may wait for their request at once (each holds two descriptors, its own
/// and a duplicate to peek with; 4,096 covers a flood of 16,000 silent connections a
/// second); more ask for a place at once.
const MAX_UNHEARD: usize = 4096;
/// How often a waiting connection looks again for an idle one to close.
const IDLE_CHECK: Duration = Duration::from_millis(10);
/// `Activity::quiet_since` while a request is being answered.
const ANSWERING: u64 = u64::MAX;
/// `Activity::quiet_since` before the first request.
const NOT_ASKED: u64 = 0;
/// `Activity::asked_since` while no whole request head has been seen since the last answer.
const NOT_SEEN: u64 = 0;
/// `Activity::head`: nothing but blank lines since the last answer (HTTP/1 skips those).
const HEAD_START: u8 = 0;
/// `Activity::head`: within a request head's line.
const HEAD_LINE: u8 = 1;
/// `Activity::head`: a line of the head just ended (`\n`).
const HEAD_LF: u8 = 2;
/// `Activity::head`: a line ended, then `\r`.
const HEAD_LF_CR: u8 = 3;
/// `Activity::head`: the blank line that ends a request head came.
const HEAD_WHOLE: u8 = 4;
/// A rendering is served again for this long: a burst of scrapes reads the maps once.
const RENDER_REUSE: Duration = Duration::from_secs(1);

/// The last rendering and when it was made.
type Rendered = tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<String>)>>;

/// What a connection did, on the endpoint's clock (ms, from 1).
struct Activity {
    /// When it last answered; `ANSWERING` while it answers, `NOT_ASKED` before its first
    /// request.
    quiet_since: AtomicU64,
    /// How far the bytes read since its last answer are through a request head (`HEAD_*`).
    head: AtomicU8,
    /// When a whole request head was first seen since its last answer, `NOT_SEEN` if none.
    asked_since: AtomicU64,
}

impl Activity {
    /// Marks a whole request head seen `now` (the first time since the last answer counts).
    fn asked(&self, now: u64) {
        let _ =
            self.asked_since
                .compare_exchange(NOT_SEEN, now, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// `head` after `bytes`: finds the blank line that ends a request head (`\r\n\r\n`, or bare
/// `\n` line ends as HTTP/1 parsers also take), after at least one line that is not blank.
fn scan_head(mut head: u8, bytes: &[u8]) -> u8 {
    for &b in bytes {
        head = match (head, b) {
            (HEAD_WHOLE, _) => return HEAD_WHOLE,
            (HEAD_START, b'\r' | b'\n') => HEAD_START,
            (HEAD_LF | HEAD_LF_CR, b'\n') => HEAD_WHOLE,
            (HEAD_LF, b'\r') => HEAD_LF_CR,
            (_, b'\n') => HEAD_LF,
            _ => HEAD_LINE,
        };
    }
    head
}

/// A connection's stream that tells its `Activity` when a whole request head has been read.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    clock: tokio::time::Instant,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            let head = self.activity.head.load(Ordering::Acquire);
            if head != HEAD_WHOLE {
                let head = scan_head(head, new);
                self.activity.head.store(head, Ordering::Release);
                if head == HEAD_WHOLE {
                    self.activity.asked(ms(self.clock));
                }
            }
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Whether the bytes read so far (`head`) and those waiting in the socket `s` (a duplicate of
/// the connection's, sharing its non-blocking mode: nothing unread is an error) end a request
/// head.
fn whole_head_unread(s: &std::net::TcpStream, head: &AtomicU8) -> bool {
    // The socket first: bytes the task reads meanwhile are in `head` when it is loaded (seen
    // twice at worst, which finds no blank line that was not there).
    let mut unread = [0u8; PEEK_BYTES];
    let n = s.peek(&mut unread).unwrap_or(0);
    scan_head(head.load(Ordering::Acquire), &unread[..n]) == HEAD_WHOLE
}

/// Returns once a whole request head is waiting in `stream` (`s` is a duplicate of it), or
/// the client closed, or too much came to look at. Readiness alone is not enough: it may be
/// reported with nothing to read, and a request's first bytes are not a request.
async fn first_bytes(stream: &TcpStream, s: &std::net::TcpStream) {
    let enough = || {
        let mut unread = [0u8; PEEK_BYTES];
        match s.peek(&mut unread) {
            Ok(n)
                if n > 0 && n < PEEK_BYTES && scan_head(HEAD_START, &unread[..n]) != HEAD_WHOLE =>
            {
                // Not yet: wait for more (this clears the readiness).
                Err(std::io::ErrorKind::WouldBlock.into())
            }
            // Nothing (this clears the readiness too).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e),
            // Enough, closed, or broken.
            _ => Ok(()),
        }
    };
    loop {
        if stream.readable().await.is_err()
            || stream.try_io(tokio::io::Interest::READABLE, enough).is_ok()
        {
            return;
        }
    }
}

/// One open connection: its number (in accept order), what it did, a duplicate of its
/// socket to look at bytes its task has not read yet (`None` if there was no descriptor for
/// one), and how to close it.
struct Open {
    id: u64,
    activity: Arc<Activity>,
    peek: Option<std::net::TcpStream>,
    close: Option<oneshot::Sender<()>>,
}

impl Open {
    /// Whether a whole request head has arrived since the last answer: read already, or
    /// waiting in the socket for the connection's task (it may not have run since).
    fn asked(&self, now: u64) -> bool {
        if self
            .peek
            .as_ref()
            .is_some_and(|s| whole_head_unread(s, &self.activity.head))
        {
            self.activity.asked(now);
        }
        self.activity.asked_since.load(Ordering::Acquire) != NOT_SEEN
    }
}

/// Milliseconds on the endpoint's clock, from 1 (0 is `NOT_ASKED`).
fn ms(since: tokio::time::Instant) -> u64 {
    since.elapsed().as_millis() as u64 + 1
}

/// The open connections, oldest first.
type Opens = Arc<Mutex<Vec<Open>>>;

/// Tells the oldest idle connection to close (its place goes to the first connection waiting
/// for one).
fn close_oldest_idle(opens: &Opens, clock: tokio::time::Instant) {
    let mut opens = opens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = ms(clock);
    let idle = |o: &Open| {
        match o.activity.quiet_since.load(Ordering::Acquire) {
            ANSWERING => return false,
            NOT_ASKED => {}
            at if now.saturating_sub(at) < IDLE_AFTER_ANSWER.as_millis() as u64 => return false,
            _ => {}
        }
        !o.asked(now)
            || now.saturating_sub(o.activity.asked_since.load(Ordering::Acquire))
                >= ASKED_GRACE.as_millis() as u64
    };
    let Some(i) = opens.iter().position(idle) else {
        return;
    };
    let mut oldest = opens.remove(i);
    if let Some(close) = oldest.close.take() {
        let _ = close.send(());
    }
}

/// A place for a new connection: at once if one is free; else the oldest idle connection is
/// closed and this one waits for a place (first come, first served) up to `WAIT_LIMIT`,
/// closing the oldest idle one again every `IDLE_CHECK`. `waiting` counts every connection
/// waiting, `kind` those of its kind. `None`: no place in time, or too many of its kind
/// waiting already.
async fn take_place(
    places: &Arc<Semaphore>,
    waiting: &AtomicUsize,
    kind: &AtomicUsize,
    opens: &Opens,
    clock: tokio::time::Instant,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = places.clone().try_acquire_owned() {
        return Some(p);
    }
    if kind.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
        kind.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    waiting.fetch_add(1, Ordering::AcqRel);
    close_oldest_idle(opens, clock);
    let wait = async {
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + IDLE_CHECK, IDLE_CHECK);
        let acquire = places.clone().acquire_owned();
        tokio::pin!(acquire);
        loop {
            tokio::select! {
                place = &mut acquire => return place.ok(),
                _ = check.tick() => close_oldest_idle(opens, clock),
            }
        }
    };
    let place = tokio::time::timeout(WAIT_LIMIT, wait).await;
    waiting.fetch_sub(1, Ordering::AcqRel);
    kind.fetch_sub(1, Ordering::AcqRel);
    place.ok().flatten()
}

pub(super) async fn serve(
    listener: std::net::TcpListener,
    src: Arc<Sources>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            warn!("metrics endpoint: {e}");
            return;
        }
    };
    let opens: Opens = Arc::new(Mutex::new(Vec::new()));
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(AtomicUsize::new(0));
    let unheard = Arc::new(AtomicUsize::new(0));
    // Connections waiting for a place that had sent a whole request head, and the others.
    let queues = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let clock = tokio::time::Instant::now();
    let mut next_id = 0u64;
    let cache: Arc<Rendered> = Arc::new(tokio::sync::Mutex::new(None));
    loop {
        let conn = tokio::select! {
            _ = stop.changed() => return,
            conn = listener.accept() => conn,
        };
        let stream = match conn {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of fds (EMFILE) and the like: back off instead of spinning on accept.
                warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        let (src, cache, opens) = (src.clone(), cache.clone(), opens.clone());
        let (places, waiting) = (places.clone(), waiting.clone());
        let (unheard, queues) = (unheard.clone(), queues.clone());
        tokio::spawn(async move {
            let peek = stream
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(std::net::TcpStream::from);
            if let Some(s) = peek.as_ref() {
                if unheard.fetch_add(1, Ordering::AcqRel) < MAX_UNHEARD {
                    let _ = tokio::time::timeout(FIRST_BYTES_WAIT, first_bytes(&stream, s)).await;
                }
                unheard.fetch_sub(1, Ordering::AcqRel);
            }
            let start = AtomicU8::new(HEAD_START);
            let asked = peek.as_ref().is_some_and(|s| whole_head_unread(s, &start));
            let kind = &queues[usize::from(!asked)];
            let Some(_place) = take_place(&places, &waiting, kind, &opens, clock).await else {
                return;
            };
            let activity = Arc::new(Activity {
                quiet_since: AtomicU64::new(NOT_ASKED),
                head: AtomicU8::new(HEAD_START),
                asked_since: AtomicU64::new(NOT_SEEN),
            });
            let (close, closed) = oneshot::channel();
            opens
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Open {
                    id,
                    activity: activity.clone(),
                    peek,
                    close: Some(close),
                });
            let stream = Watched {
                stream,
                activity: activity.clone(),
                clock,
            };
            let service = service_fn(move |req| {
                let (src, cache, activity) = (src.clone(), cache.clone(), activity.clone());
                let waiting = waiting.clone();
                async move {
                    activity.quiet_since.store(ANSWERING, Ordering::Release);
                    let mut response = respond(req, src, cache).await;
                    // Someone waits for a place: this one is given up after its answer.
                    if waiting.load(Ordering::Acquire) > 0
                        && let Ok(r) = response.as_mut()
                    {
                        r.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                    }
                    // The next request starts afresh.
                    activity.head.store(HEAD_START, Ordering::Release);
                    activity.asked_since.store(NOT_SEEN, Ordering::Release);
                    activity.quiet_since.store(ms(clock), Ordering::Release);
                    response
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                _ = closed => {}
            }
            opens
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|o| o.id != id);
        });
    }
}

async fn respond<B>(
    req: Request<B>,
    src: Arc<Sources>,
    cache: Arc<Rendered>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if req.uri().path() == "/metrics"
        && req.method() != hyper::Method::GET
        && req.method() != hyper::Method::HEAD
    {
        Response::builder()
            .status(405)
            .header("Allow", "GET, HEAD")
            .body(Full::new(Bytes::from("shield: /metrics takes GET\n")))
    } else if req.uri().path() == "/metrics" {
        // Prometheus asks for OpenMetrics; curl and promtool get the classic text format.
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // One rendering at a time (the lock is held across it), reused for a second.
        let mut last = cache.lock().await;
        let text = match last.as_ref() {
            Some((at, text)) if at.elapsed() < RENDER_REUSE => text.clone(),
            _ => {
                let text = Arc::new(
                    tokio::task::spawn_blocking(move || render(&src))
                        .await
                        .unwrap_or_else(|e| format!("# rendering failed: {e}\n")),
                );
                *last = Some((tokio::time::Instant::now(), text.clone()));
                text
            }
        };
        drop(last);
        let (content_type, body) = exposition::negotiate(accept.as_deref(), &text);
        Response::builder()
            .header("Content-Type", content_type)
            .body(Full::new(Bytes::from(body)))
    } else {
        Response::builder()
            .status(404)
            .body(Full::new(Bytes::from("shield: metrics are at /metrics\n")))
    };
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scan_head` over `parts` read one after another.
    fn scanned(parts: &[&[u8]]) -> u8 {
        parts.iter().fold(HEAD_START, |h, p| scan_head(h, p))
    }

    #[test]
    fn a_request_head_is_whole_at_its_blank_line_only() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(scanned(&[get]), HEAD_WHOLE);
        // Split anywhere, even inside the blank line.
        for i in 0..get.len() {
            assert_eq!(scanned(&[&get[..i], &get[i..]]), HEAD_WHOLE, "split at {i}");
            assert_ne!(scanned(&[&get[..i]]), HEAD_WHOLE, "first {i} bytes");
        }
        assert_eq!(scanned(&[b"GET / HTTP/1.1\nHost: x\n\n"]), HEAD_WHOLE);
        assert_eq!(scanned(&[b"GET / HTTP/1.1\r\n\r\n"]), HEAD_WHOLE);
        // A request's first bytes, or blank lines alone, are no whole request.
        for partial in [
            &b"G"[..],
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
            b"\r\n\r\n\r\n",
            b"\n\n",
            b"GET / HTTP/1.1\r\n\r\r\n",
        ] {
            assert_ne!(scanned(&[partial]), HEAD_WHOLE, "{partial:?}");
        }
    }
}
