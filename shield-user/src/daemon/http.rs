//! `/metrics` over HTTP/1 (hyper on the daemon's runtime). Rendering reads the pinned maps,
//! so it runs in `spawn_blocking`.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::sync::{oneshot, watch};
use tracing::warn;

use crate::{
    exposition,
    metrics::{Sources, render},
};

/// A connection gets this long for its requests (a stalled client cannot pile up).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once (a scraper needs one). A new connection beyond them closes the
/// oldest one that has no request being answered: connections opened and left silent (or
/// never read) cannot lock the scraper out.
const MAX_CONNECTIONS: usize = 8;
/// A rendering is served again for this long: a burst of scrapes reads the maps once.
const RENDER_REUSE: Duration = Duration::from_secs(1);

/// The last rendering and when it was made.
type Rendered = tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<String>)>>;

/// One open connection: its number (in accept order), whether a request of it is being
/// answered, and how to close it.
struct Open {
    id: u64,
    busy: Arc<AtomicBool>,
    close: Option<oneshot::Sender<()>>,
}

/// The open connections, oldest first.
type Opens = Arc<Mutex<Vec<Open>>>;

/// Makes room for one more connection: `true` if there is a free place or the oldest idle
/// connection was told to close; `false` if every connection is answering a request.
fn make_room(opens: &Opens) -> bool {
    let mut opens = opens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if opens.len() < MAX_CONNECTIONS {
        return true;
    }
    let Some(i) = opens.iter().position(|o| !o.busy.load(Ordering::Acquire)) else {
        return false;
    };
    let mut oldest = opens.remove(i);
    if let Some(close) = oldest.close.take() {
        let _ = close.send(());
    }
    true
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
        if !make_room(&opens) {
            drop(stream);
            continue;
        }
        let id = next_id;
        next_id += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let (close, closed) = oneshot::channel();
        opens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Open {
                id,
                busy: busy.clone(),
                close: Some(close),
            });
        let (src, cache, opens) = (src.clone(), cache.clone(), opens.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (src, cache, busy) = (src.clone(), cache.clone(), busy.clone());
                async move {
                    busy.store(true, Ordering::Release);
                    let response = respond(req, src, cache).await;
                    busy.store(false, Ordering::Release);
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
