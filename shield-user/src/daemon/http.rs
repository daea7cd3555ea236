//! `/metrics` over HTTP/1 (hyper on the daemon's runtime). Rendering reads the pinned maps,
//! so it runs in `spawn_blocking`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::warn;

use crate::metrics::{Sources, render};

/// A connection gets this long for its requests (a stalled client cannot pile up).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

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
    loop {
        let conn = tokio::select! {
            _ = stop.changed() => return,
            conn = listener.accept() => conn,
        };
        let Ok((stream, _)) = conn else { continue };
        let src = src.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, src.clone()));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

async fn respond<B>(
    req: Request<B>,
    src: Arc<Sources>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if req.uri().path() == "/metrics" {
        let text = tokio::task::spawn_blocking(move || render(&src))
            .await
            .unwrap_or_else(|e| format!("# rendering failed: {e}\n"));
        Response::builder()
            .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(text)))
    } else {
        Response::builder()
            .status(404)
            .body(Full::new(Bytes::from("shield: metrics are at /metrics\n")))
    };
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
