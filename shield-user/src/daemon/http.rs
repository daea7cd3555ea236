//! `/metrics` over HTTP/1 (hyper on the daemon's runtime). Rendering reads the pinned maps,
//! so it runs in `spawn_blocking`.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
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
/// Connections that may wait for a place; one more is closed at once.
const MAX_WAITING: usize = 64;
/// How long a connection waits for a place before it is closed.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// A connection that has answered counts as idle (to be closed for a new one) only this long
/// after its last answer: an answer still being written is never cut off. One that has not
/// had a request yet is idle at once (a scraper's connection asks at once; the newest is
/// closed last).
const IDLE_AFTER_ANSWER: Duration = Duration::from_millis(20);
/// How often a waiting connection looks again for an idle one to close.
const IDLE_CHECK: Duration = Duration::from_millis(10);
/// `Open::quiet_since` while a request is being answered.
const ANSWERING: u64 = u64::MAX;
/// `Open::quiet_since` before the first request.
const NOT_ASKED: u64 = 0;
/// A rendering is served again for this long: a burst of scrapes reads the maps once.
const RENDER_REUSE: Duration = Duration::from_secs(1);

/// The last rendering and when it was made.
type Rendered = tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<String>)>>;

/// One open connection: its number (in accept order), when it last answered (ms on the
/// endpoint's clock, from 1; `ANSWERING` while it answers, `NOT_ASKED` before its first
/// request), and how to close it.
struct Open {
    id: u64,
    quiet_since: Arc<AtomicU64>,
    close: Option<oneshot::Sender<()>>,
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
    let idle = |o: &Open| match o.quiet_since.load(Ordering::Acquire) {
        NOT_ASKED => true,
        ANSWERING => false,
        at => now.saturating_sub(at) >= IDLE_AFTER_ANSWER.as_millis() as u64,
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
/// closing the oldest idle one again every `IDLE_CHECK`. `None`: no place in time, or too
/// many waiting already.
async fn take_place(
    places: &Arc<Semaphore>,
    waiting: &AtomicUsize,
    opens: &Opens,
    clock: tokio::time::Instant,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = places.clone().try_acquire_owned() {
        return Some(p);
    }
    if waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
        waiting.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
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
        tokio::spawn(async move {
            let Some(_place) = take_place(&places, &waiting, &opens, clock).await else {
                return;
            };
            let quiet_since = Arc::new(AtomicU64::new(NOT_ASKED));
            let (close, closed) = oneshot::channel();
            opens
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Open {
                    id,
                    quiet_since: quiet_since.clone(),
                    close: Some(close),
                });
            let service = service_fn(move |req| {
                let (src, cache, quiet_since) = (src.clone(), cache.clone(), quiet_since.clone());
                let waiting = waiting.clone();
                async move {
                    quiet_since.store(ANSWERING, Ordering::Release);
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
                    quiet_since.store(ms(clock), Ordering::Release);
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
