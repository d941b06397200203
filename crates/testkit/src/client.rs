//! The client side: gRPC channels to a server, `Check` calls, grpc.health.v1,
//! bounded waits, and plain HTTP for the metrics endpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost::bytes::{Buf, BufMut, Bytes};
use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::answer::{codes, decision, expect_decision, policy_ids, summary, Case};
use crate::request::check_str;

/// How often bounded waits poll.
pub const POLL: Duration = Duration::from_millis(20);
/// Upper bound of every wait for something that should happen soon.
pub const WAIT: Duration = Duration::from_secs(10);

/// Connects `endpoint`, retrying every [`POLL`] while the server refuses,
/// for at most `within`.
pub async fn connect_within(endpoint: Endpoint, within: Duration) -> Result<Channel, String> {
    let deadline = Instant::now() + within;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            Err(error) => {
                return Err(format!(
                    "cannot connect to {} within {within:?}: {}",
                    endpoint.uri(),
                    tollgate::api::client::connect_error(&error)
                ))
            }
        }
    }
}

/// A channel to `url` (`http://127.0.0.1:PORT`), retrying until the server
/// accepts (bounded by [`WAIT`]); calls on it are not bounded.
pub async fn channel(url: &str) -> Channel {
    let endpoint = Endpoint::from_shared(url.to_string()).expect("valid url");
    connect_within(endpoint, WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// A connected `EntitlementService` client (see [`channel`]).
pub async fn connect(url: &str) -> EntitlementServiceClient<Channel> {
    EntitlementServiceClient::new(channel(url).await)
}

/// A channel to `address` (TCP_NODELAY) for a benchmark: the connect and
/// every call on it bounded by `timeout`.
pub async fn bounded_channel(address: SocketAddr, timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| error.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(timeout)
        .timeout(timeout);
    connect_within(endpoint, timeout).await
}

/// The health status of `service` ("" is the whole server).
pub async fn health(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown))
}

/// Polls the health of the whole server (service `""`) on `channel` until it
/// answers SERVING, for at most `timeout`.
pub async fn wait_serving(channel: &Channel, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match health(channel, "").await {
            Ok(ServingStatus::Serving) => return Ok(()),
            Ok(status) => format!("status {}", status.as_str_name()),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "not SERVING after {:.1} s: {last}",
                timeout.as_secs_f64()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Opens a health watch on `service` and asserts its first update is SERVING.
pub async fn watch_serving(
    channel: &Channel,
    service: &str,
) -> tonic::Streaming<HealthCheckResponse> {
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("update").expect("open stream");
    assert_eq!(first.status, ServingStatus::Serving as i32, "{service:?}");
    watch
}

/// Polls every [`POLL`] until `probe` returns `Ok`, failing after [`WAIT`]
/// with `what` and the last value seen.
pub async fn wait_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {WAIT:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Sends one check and returns the answer or the status.
pub async fn send(
    client: &mut EntitlementServiceClient<Channel>,
    request: pb::CheckRequest,
) -> Result<pb::CheckResponse, tonic::Status> {
    client.check(request).await.map(tonic::Response::into_inner)
}

/// Sends one check that must succeed.
pub async fn decide(
    client: &mut EntitlementServiceClient<Channel>,
    request: pb::CheckRequest,
) -> pb::CheckResponse {
    let description = format!("{request:?}");
    send(client, request)
        .await
        .unwrap_or_else(|status| panic!("Check failed: {status:?}\nrequest: {description}"))
}

/// Sends one check that must succeed and asserts its decision and reason codes.
pub async fn decide_expect(
    client: &mut EntitlementServiceClient<Channel>,
    request: pb::CheckRequest,
    want: pb::Decision,
    want_codes: &[&str],
) -> pb::CheckResponse {
    let response = decide(client, request).await;
    expect_decision(&response, want, want_codes);
    response
}

/// Sends every check of `cases` and asserts what each row expects; failure
/// messages name the row's request and the response summary.
pub async fn expect_cases(client: &mut EntitlementServiceClient<Channel>, cases: &[Case<'_>]) {
    for &(spec, want, want_codes, want_policy_ids) in cases {
        let response = decide(client, check_str(spec)).await;
        let context = format!("{spec}: {}", summary(&response));
        assert_eq!(decision(&response), want, "{context}");
        if !want_codes.is_empty() {
            assert_eq!(codes(&response), want_codes, "{context}");
        }
        if !want_policy_ids.is_empty() {
            assert_eq!(policy_ids(&response), want_policy_ids, "{context}");
        }
    }
}

/// Encodes [`Bytes`] as they are: a body encoded beforehand (or, to test the
/// server, not a message at all).
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Sends bytes as they are and returns the answer's bytes undecoded.
#[derive(Debug, Clone, Copy, Default)]
struct BytesCodec;

/// Returns a body's bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

/// Calls the unary `method` (`/package.Service/Method`) on `channel` with
/// `body` as the request's bytes; returns the answer's bytes, undecoded.
pub async fn call_raw(
    channel: Channel,
    method: &'static str,
    body: Bytes,
) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unknown(format!("connection not ready: {error}")))?;
    grpc.unary(
        tonic::Request::new(body),
        PathAndQuery::from_static(method),
        BytesCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A request carrying `authorization: Bearer <token>` when a token is given.
pub fn authed<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .expect("a bearer token is a valid header value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Sends `request` until `done` accepts the answer (bounded by
/// [`wait_until`]), and returns that answer.
pub async fn answer_until(
    client: &EntitlementServiceClient<Channel>,
    request: pb::CheckRequest,
    what: &str,
    done: impl Fn(&pb::CheckResponse) -> bool,
) -> pb::CheckResponse {
    let done = &done;
    wait_until(what, || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            let response = client.check(request).await.expect("check").into_inner();
            if done(&response) {
                Ok(response)
            } else {
                let codes: Vec<&str> = response.reasons.iter().map(|r| r.code.as_str()).collect();
                Err(format!("{codes:?} {:?}", response.freshness))
            }
        }
    })
    .await
}

/// `GET path` over plain HTTP/1.1 (blocking, reads bounded by 10 s);
/// returns the status line and the body.
pub fn try_http_get(address: &str, path: &str) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    let failed =
        |what: &str, error: std::io::Error| format!("GET {path} from {address}: {what}: {error}");
    let mut stream =
        std::net::TcpStream::connect(address).map_err(|error| failed("connect", error))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|error| failed("set a read timeout", error))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| failed("send the request", error))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|error| failed("read the response", error))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path} from {address}: not an HTTP response: {response:?}"))?;
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

/// [`try_http_get`], panicking on an error.
pub fn http_get(address: &str, path: &str) -> (String, String) {
    try_http_get(address, path).unwrap_or_else(|error| panic!("{error}"))
}

/// The value of the sample `name` (no labels) in Prometheus text.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}
