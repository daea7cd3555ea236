//! `/metrics` over HTTP/1 (hyper on the daemon's runtime). Rendering reads the pinned maps,
//! so it runs in `spawn_blocking`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::warn;

use crate::{
    exposition,
    metrics::{Sources, render},
};

/// A connection gets this long for its requests (a stalled client cannot pile up).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed at once (a scraper needs one).
const MAX_CONNECTIONS: usize = 8;
/// A rendering is served again for this long: a burst of scrapes reads the maps once.
const RENDER_REUSE: Duration = Duration::from_secs(1);

/// The last rendering and when it was made.
type Rendered = tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<String>)>>;

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
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (src, cache) = (src.clone(), cache.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, src.clone(), cache.clone()));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

async fn respond<B>(
    req: Request<B>,
    src: Arc<Sources>,
    cache: Arc<Rendered>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if req.uri().path() == "/metrics" {
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
