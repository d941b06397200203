//! The operations endpoint: a small HTTP/1 server on its own listen address
//! (`metrics_listen`) serving the metrics as OpenMetrics text on
//! `GET /metrics` and the health detail as JSON on `GET /status`.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::status::StatusSource;

/// Content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` and `GET /status` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    status: Arc<StatusSource>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopping| *stopping) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(error = %error, "metrics listener accept failed");
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let status = Arc::clone(&status);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let metrics = Arc::clone(&metrics);
                let status = Arc::clone(&status);
                async move { Ok::<_, std::convert::Infallible>(respond(&metrics, &status, &request)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(peer = %peer, error = %error, "metrics connection ended");
            }
        });
    }
}

fn respond(
    metrics: &Metrics,
    report: &StatusSource,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.encode()),
        (&Method::GET, "/status") => match serde_json::to_string_pretty(&report.report()) {
            Ok(json) => (StatusCode::OK, "application/json", json + "\n"),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("cannot encode the status: {error}\n"),
            ),
        },
        (_, "/metrics" | "/status") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; metrics are at /metrics, the health detail at /status\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Binds the metrics address.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}
