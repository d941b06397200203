//! The operations endpoint: a small HTTP/1 server on its own listen address
//! (`metrics_listen`) serving the metrics as OpenMetrics text on
//! `GET /metrics` and the health detail as JSON on `GET /status` (whole to
//! callers on this host, the health alone to others). Connections are
//! bounded in number, in how long a request head may take, and in
//! lifetime; a failing accept backs off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

use crate::callers::{Callers, Credentials, Operation};
use crate::metrics::Metrics;
use crate::status::StatusSource;

/// Content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Most connections served at once; a connection past them is closed at
/// once, without a response.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection that has not sent a whole request head within this time
/// (its first request, or the next one on a kept-alive connection) is
/// closed: a slow or idle client cannot hold a connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a connection stays open in all (a client reading its response
/// slowly included).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Wait after a failed accept (out of file descriptors, say), doubled at
/// each further failure up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `GET /metrics` and `GET /status` on `listener` until `stop` turns
/// true, with at most [`MAX_CONNECTIONS`] connections, each bounded by
/// [`HEADER_TIMEOUT`] and [`CONNECTION_LIFETIME`].
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    status: Arc<StatusSource>,
    callers: Arc<Callers>,
    mut stop: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopping| *stopping) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(error) => {
                warn!(error = %error, retry_in_ms = backoff.as_millis(), "metrics listener accept failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|stopping| *stopping) => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            debug!(peer = %peer, limit = MAX_CONNECTIONS, "metrics connection refused: too many open");
            drop(stream);
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let status = Arc::clone(&status);
        let callers = Arc::clone(&callers);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let metrics = Arc::clone(&metrics);
                let status = Arc::clone(&status);
                let authorization = request
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|value| value.to_str().ok());
                let detail = may_see_detail(&callers, peer, authorization);
                async move {
                    Ok::<_, std::convert::Infallible>(respond(&metrics, &status, &request, detail))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => debug!(peer = %peer, error = %error, "metrics connection ended"),
                Err(_) => debug!(peer = %peer, "metrics connection closed: open too long"),
            }
        });
    }
}

/// Whether the caller of `request` may see the health detail: a caller on
/// this host whose rights include `status` (by default, any), or a named
/// caller whose bearer token grants `status`.
fn may_see_detail(callers: &Callers, peer: SocketAddr, authorization: Option<&str>) -> bool {
    let local = peer.ip().to_canonical().is_loopback();
    let bearer = authorization.and_then(crate::callers::bearer_token);
    let credentials = Credentials {
        local,
        certificate: None,
        bearer,
    };
    callers.identify(&credentials).is_ok_and(|caller| {
        (local || caller.is_named()) && caller.authorize(Operation::Status, None).is_ok()
    })
}

/// The health detail names policy files, reload errors and tenants: it is
/// served whole to callers on this host and to named callers allowed
/// `status`. Others get the health alone.
fn status_json(report: &crate::status::Report, detail: bool) -> serde_json::Result<String> {
    if detail {
        serde_json::to_string_pretty(report)
    } else {
        serde_json::to_string_pretty(&serde_json::json!({
            "status": report.status,
            "version": report.version,
            "detail": "served to callers on this host, or with a bearer token allowed `status`",
        }))
    }
}

fn respond(
    metrics: &Metrics,
    report: &StatusSource,
    request: &Request<Incoming>,
    detail: bool,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.encode()),
        (&Method::GET, "/status") => match status_json(&report.report(), detail) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_detail_is_for_callers_on_this_host_or_allowed_status() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let store = Arc::new(crate::store::Store::new(
            root.join("policies"),
            root.join("entitlements"),
        ));
        store.reload_all();
        let source = StatusSource::new(store, Arc::new(Metrics::default()));
        let report = source.report();
        let detail: serde_json::Value =
            serde_json::from_str(&status_json(&report, true).unwrap()).unwrap();
        assert!(detail.get("policies").is_some(), "{detail}");
        assert!(detail.get("snapshots").is_some(), "{detail}");
        let health: serde_json::Value =
            serde_json::from_str(&status_json(&report, false).unwrap()).unwrap();
        assert_eq!(health["status"], detail["status"]);
        assert_eq!(health["version"], detail["version"]);
        assert!(health.get("policies").is_none(), "{health}");
        assert!(!health.to_string().contains(".cedar"), "{health}");

        let local = SocketAddr::from(([127, 0, 0, 1], 40000));
        let v6 = "[::1]:40000".parse().unwrap();
        let remote = SocketAddr::from(([10, 1, 2, 3], 40000));
        // An open sidecar: this host sees the detail, others do not, whatever
        // token they send (the admin token does not grant `status`).
        let open = Callers::open(Some("admin-token-0123456789"));
        assert!(may_see_detail(&open, local, None));
        assert!(may_see_detail(&open, v6, None));
        assert!(!may_see_detail(&open, remote, None));
        assert!(!may_see_detail(
            &open,
            remote,
            Some("Bearer admin-token-0123456789")
        ));
        assert!(!may_see_detail(
            &open,
            remote,
            Some("Bearer anything-at-all-000000")
        ));
        // Named callers: a token that grants `status` opens it from anywhere.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ops.token"), "ops-token-00000000001").unwrap();
        std::fs::write(dir.path().join("app.token"), "app-token-00000000001").unwrap();
        let file = dir.path().join("callers.yaml");
        std::fs::write(
            &file,
            "callers:\n  - {name: ops, token_file: ops.token, operations: [status], tenants: ['*']}\n  - {name: app, token_file: app.token, operations: [check], tenants: ['*']}\nlocal: {operations: [check]}\n",
        )
        .unwrap();
        let named = Callers::from_file(&file, None).unwrap();
        assert!(may_see_detail(
            &named,
            remote,
            Some("Bearer ops-token-00000000001")
        ));
        assert!(!may_see_detail(
            &named,
            remote,
            Some("Bearer app-token-00000000001")
        ));
        assert!(!may_see_detail(&named, remote, None));
        // The callers file narrowed what this host may do: no detail.
        assert!(!may_see_detail(&named, local, None));
    }
}
