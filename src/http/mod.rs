//! The HTTP front door (`http_listen`): the decision service's operations as
//! JSON (`POST /v1/check`, `/v1/check-batch`, `/v1/report-usage`, shaped
//! like the proto's JSON mapping), the OpenID AuthZEN 1.0 Authorization API
//! ([`authzen`]), and health (`GET /healthz`, `/readyz`).
//!
//! Nothing here decides. A request's caller is identified from its
//! connection and `authorization` header, and the request admitted among
//! those in flight, before its body is read (`admit`); bodies are read
//! against the same byte budget as the gRPC front door's, scanned against
//! the same limits before they are decoded ([`crate::api::json`]), and
//! answered by the [`DecisionService`]. Its errors map to an HTTP status
//! through the gRPC status table ([`crate::api::status`]), as JSON
//! `{code, message, field}`.

pub mod authzen;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

use crate::api::bounds::Admission;
use crate::api::{self, json, pb};
use crate::decide::{self, Caller, DecisionService, FrontDoor, Operation};
use crate::listen::{Conn, Peer};

/// A connection that has not sent a whole HTTP/1 request head within this
/// time is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most HTTP/2 streams one connection may open at once.
const MAX_CONCURRENT_STREAMS: u32 = 100;

/// The HTTP front door's state: the decision service and what bounds its
/// requests.
#[derive(Debug)]
pub struct HttpFrontDoor {
    service: Arc<DecisionService>,
    admission: Admission,
    max_body: usize,
    authzen: Arc<authzen::Settings>,
    health: Arc<tonic_health::server::HealthService>,
    tls: bool,
}

impl HttpFrontDoor {
    /// Serves `service` within `admission`, with bodies of at most
    /// `max_body` bytes; readiness is what `health` reports.
    pub fn new(
        service: Arc<DecisionService>,
        admission: Admission,
        max_body: usize,
        authzen: authzen::Settings,
        health: tonic_health::server::HealthReporter,
    ) -> Self {
        Self {
            service,
            admission,
            max_body,
            authzen: Arc::new(authzen),
            health: Arc::new(tonic_health::server::HealthService::from_health_reporter(
                health,
            )),
            tls: false,
        }
    }

    /// Served over TLS (the AuthZEN metadata then names `https` URLs).
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Whether it is served over TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The routes.
    pub fn router(self) -> Router {
        // One shared state: a request clones a pointer, not the state.
        let front = Arc::new(self);
        let decisions = Router::new()
            .route("/v1/check", post(check))
            .route("/v1/check-batch", post(check_batch))
            .route("/v1/report-usage", post(report_usage))
            .route("/v1/entitlements", post(list_entitlements))
            .route("/access/v1/evaluation", post(authzen::evaluation))
            .route("/access/v1/evaluations", post(authzen::evaluations))
            .route("/access/v1/search/resource", post(authzen::search_resource))
            .route("/access/v1/search/action", post(authzen::search_action));
        #[cfg(feature = "bench-floor")]
        let decisions = decisions.route("/bench/floor", post(floor));
        let decisions = decisions.route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&front),
            admit,
        ));
        Router::new()
            .merge(decisions)
            .route(
                "/.well-known/authzen-configuration",
                get(authzen::configuration),
            )
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(front)
    }

    /// The service that decides.
    pub fn service(&self) -> &DecisionService {
        &self.service
    }

    /// How AuthZEN requests map to Cedar.
    pub fn authzen(&self) -> &authzen::Settings {
        &self.authzen
    }

    /// Runs `call` within the server's request timeout when it may wait
    /// (for Redis, or for an issuer's keys).
    pub async fn within<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, decide::Error>>,
    ) -> Result<T, decide::Error> {
        if self.service.may_wait() || self.service.jwt().is_some() {
            decide::within(self.service.limits().request_timeout, call).await
        } else {
            call.await
        }
    }
}

/// Serves the front door on `incoming`'s connections (HTTP/1.1 and HTTP/2,
/// TLS when the listener has it) until `stop` turns true, then lets the
/// requests in flight finish.
pub async fn serve(
    front: HttpFrontDoor,
    mut incoming: tokio_stream::wrappers::ReceiverStream<io::Result<Conn>>,
    mut stop: watch::Receiver<bool>,
) {
    let router = front.router();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    loop {
        let conn = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => break,
            },
            _ = stop.wait_for(|stopping| *stopping) => break,
        };
        let peer = conn.peer().clone();
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(peer.clone());
            tower_service::Service::call(&mut router.clone(), request)
        });
        let connection = builder
            .serve_connection(TokioIo::new(conn), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// An answer that is not a decision: JSON `{code, message, field}` with the
/// HTTP status of its gRPC code.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: tonic::Code,
    message: String,
    field: Option<String>,
}

impl HttpError {
    /// `error` as the decision service's status table maps it.
    pub fn of(error: &decide::Error) -> Self {
        let status = api::status(error);
        Self {
            status: http_status(status.code()),
            code: status.code(),
            message: status.message().to_string(),
            field: error.field().map(str::to_string),
        }
    }

    /// An error of `code` that names no decision-service error.
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            status: http_status(code),
            code,
            message: message.into(),
            field: None,
        }
    }

    /// With the HTTP status `status` instead of the code's.
    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl From<decide::Error> for HttpError {
    fn from(error: decide::Error) -> Self {
        Self::of(&error)
    }
}

/// The name of a gRPC code as the proto's `google.rpc.Code` spells it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The HTTP status of a gRPC code (the mapping Google's HTTP APIs use).
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("code".into(), code_name(self.code).into());
        body.insert("message".into(), self.message.into());
        if let Some(field) = self.field {
            body.insert("field".into(), field.into());
        }
        let mut response = json_response(self.status, &serde_json::Value::Object(body));
        let headers = response.headers_mut();
        match self.code {
            tonic::Code::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // Shed for load: the caller may come back shortly.
            tonic::Code::ResourceExhausted | tonic::Code::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// `value` as a JSON response with `status`.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(error = %error, "cannot write a JSON response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The operation a decision route names (`/v1/check` may turn out to
/// consume: the decision service authorizes that when it sees the request).
fn operation(path: &str) -> Operation {
    match path {
        "/v1/check-batch" | "/access/v1/evaluations" => Operation::CheckBatch,
        "/v1/report-usage" => Operation::ReportUsage,
        "/v1/entitlements" | "/access/v1/search/resource" | "/access/v1/search/action" => {
            Operation::ListEntitlements
        }
        _ => Operation::Check,
    }
}

/// Identifies a decision request's caller and admits it among the requests
/// in flight before its body is read; the body is then read against the
/// byte budget. The caller travels to the handler in the extensions.
///
/// While spans are exported, or when the caller sends a `traceparent`, the
/// request runs in a server span (`POST /v1/check`) that continues the
/// caller's trace, as a gRPC call's does.
async fn admit(State(front): State<Arc<HttpFrontDoor>>, request: Request, next: Next) -> Response {
    let exporting = crate::telemetry::exporting();
    if !exporting && !request.headers().contains_key("traceparent") {
        return admitted(front, request, next).await;
    }
    let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
    let method = request.method().clone();
    let route = request.uri().path().to_string();
    let span = if crate::telemetry::sampled(&metadata) {
        tracing::info_span!(
            "HTTP",
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            http.request.method = %method,
            http.route = %route,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    } else if exporting {
        tracing::Span::none()
    } else {
        tracing::info_span!("HTTP")
    };
    let recorded = span.clone();
    let response = crate::telemetry::in_rpc(span, &metadata, admitted(front, request, next)).await;
    if exporting {
        let status = response.status().as_u16();
        recorded.record("http.response.status_code", i64::from(status));
        if status >= 400 {
            recorded.record("otel.status_code", "ERROR");
        }
    }
    response
}

async fn admitted(front: Arc<HttpFrontDoor>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let credentials = api::credentials_of(request.extensions().get::<Peer>(), authorization);
    let caller = match front
        .service
        .identify(&credentials, operation(request.uri().path()))
    {
        Ok(caller) => caller,
        Err(error) => return refuse_unread(request, &error).await,
    };
    let door = if request.uri().path().starts_with("/access/") {
        FrontDoor::Authzen
    } else {
        FrontDoor::Http
    };
    let caller = caller.through(door);
    let place = match front.admission.admit() {
        Ok(place) => place,
        Err(error) => return refuse_unread(request, &error).await,
    };
    let mut request = request.map(|body| Body::new(front.admission.body(body, &place)));
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    drop(place);
    response
}

/// Refuses a request before its body is read. A small body (the first
/// [`crate::api::bounds::FREE_REQUEST_BYTES`], for at most a second) is read
/// and dropped first, so that a client still sending it gets the answer
/// rather than a reset stream; a larger or slower one is not waited for.
async fn refuse_unread(request: Request, error: &decide::Error) -> Response {
    let body =
        http_body_util::Limited::new(request.into_body(), crate::api::bounds::FREE_REQUEST_BYTES);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        http_body_util::BodyExt::collect(body),
    )
    .await;
    HttpError::of(error).into_response()
}

/// A request's `authorization` header.
pub fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
}

/// The body of a JSON request: at most the front door's `max_body` bytes,
/// read against the byte budget.
pub async fn read_json(
    front: &HttpFrontDoor,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, HttpError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // JSON only: a browser cannot send it across origins without asking
    // first (no form post rides on a user's credentials).
    if media != "application/json" && !media.ends_with("+json") {
        return Err(HttpError::new(
            tonic::Code::InvalidArgument,
            format!("the body must be JSON (content-type: application/json), not `{content_type}`"),
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    let limited = http_body_util::Limited::new(body, front.max_body);
    match http_body_util::BodyExt::collect(limited).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => Err(body_error(error.as_ref(), front.max_body)),
    }
}

/// Why a body could not be read: over `max_request_bytes`, over the byte
/// budget (the status the budget gave), or a broken connection.
fn body_error(error: &(dyn std::error::Error + 'static), max_body: usize) -> HttpError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if current.is::<http_body_util::LengthLimitError>() {
            return HttpError::new(
                tonic::Code::ResourceExhausted,
                format!("the request body is larger than {max_body} bytes (max_request_bytes)"),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE);
        }
        if let Some(status) = current.downcast_ref::<tonic::Status>() {
            return HttpError::new(status.code(), status.message());
        }
        cause = current.source();
    }
    HttpError::new(
        tonic::Code::InvalidArgument,
        format!("cannot read the request body: {error}"),
    )
}

/// The answer to a decision request: the response, or the error.
fn answer<T: serde::Serialize>(result: Result<T, HttpError>) -> Response {
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => error.into_response(),
    }
}

async fn check(
    State(front): State<Arc<HttpFrontDoor>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    answer(
        async {
            let bytes = read_json(&front, &parts.headers, body).await?;
            let request = json::check_request(&bytes)?;
            let authorization = authorization(&parts.headers);
            Ok(front
                .within(api::check_with_token(
                    &front.service,
                    &caller,
                    authorization,
                    request,
                ))
                .await?)
        }
        .await,
    )
}

async fn check_batch(
    State(front): State<Arc<HttpFrontDoor>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    answer(
        async {
            let bytes = read_json(&front, &parts.headers, body).await?;
            let request = json::check_batch_request(&bytes, front.service.limits())?;
            let authorization = authorization(&parts.headers);
            Ok(front
                .within(api::check_batch_with_token(
                    &front.service,
                    &caller,
                    authorization,
                    request,
                ))
                .await?)
        }
        .await,
    )
}

async fn report_usage(
    State(front): State<Arc<HttpFrontDoor>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    answer(
        async {
            let bytes = read_json(&front, &parts.headers, body).await?;
            let request = json::report_usage_request(&bytes, front.service.limits())?;
            // Usage reports always wait for Redis.
            Ok(decide::within(
                front.service.limits().request_timeout,
                api::report_usage(&front.service, &caller, request),
            )
            .await?)
        }
        .await,
    )
}

async fn list_entitlements(
    State(front): State<Arc<HttpFrontDoor>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    answer(
        async {
            let bytes = read_json(&front, &parts.headers, body).await?;
            let request = json::list_entitlements_request(&bytes)?;
            let authorization = authorization(&parts.headers);
            // A listing may read meter counts from Redis.
            Ok(decide::within(
                front.service.limits().request_timeout,
                api::list_entitlements_with_token(&front.service, &caller, authorization, request),
            )
            .await?)
        }
        .await,
    )
}

/// The benchmark's floor: a request admitted, its body read and parsed as
/// JSON as `/v1/check`'s is, answered with a fixed body of a
/// CheckResponse's size; no decision.
#[cfg(feature = "bench-floor")]
async fn floor(State(front): State<Arc<HttpFrontDoor>>, request: Request) -> Response {
    const ANSWER: &str = r#"{"decision":"DECISION_ALLOW","reasons":[{"policyId":"members-use","effect":"EFFECT_PERMIT","code":"member_role","message":"members may use features their plan includes"}],"freshness":{"policyVersion":"0000000000000000","snapshotVersion":"1","snapshotAgeMs":"1000","source":"SNAPSHOT_SOURCE_FILE"},"decisionId":"00000000000000000000000000000000"}"#;
    let (parts, body) = request.into_parts();
    match read_json(&front, &parts.headers, body).await {
        Ok(bytes) => match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            Ok(_) => (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                ANSWER,
            )
                .into_response(),
            Err(error) => {
                HttpError::new(tonic::Code::InvalidArgument, error.to_string()).into_response()
            }
        },
        Err(error) => error.into_response(),
    }
}

/// Liveness: the process answers.
async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "SERVING"}))
}

/// Readiness: what the gRPC health service says of the whole server (a
/// valid policy set loaded, not shutting down).
async fn readyz(State(front): State<Arc<HttpFrontDoor>>) -> Response {
    use tonic_health::pb::health_server::Health as _;
    let asked = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    let serving = front.health.check(asked).await.is_ok_and(|answer| {
        answer.into_inner().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    });
    if serving {
        json_response(StatusCode::OK, &serde_json::json!({"status": "SERVING"}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "NOT_SERVING"}),
        )
    }
}

async fn not_found(request: Request) -> Response {
    HttpError::new(
        tonic::Code::NotFound,
        format!(
            "no such endpoint: {} {}",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    HttpError::new(
        tonic::Code::Unimplemented,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
    .into_response()
}

/// A response's protobuf JSON, for callers that want to check it (tests,
/// the CLI).
pub fn check_response(bytes: &[u8]) -> Result<pb::CheckResponse, serde_json::Error> {
    serde_json::from_slice(bytes)
}
