//! Traces as a collector sees them: the real binary exports its spans over
//! OTLP/gRPC to a receiver in the test, continuing the caller's trace, and
//! flushes what is still queued when it is told to stop.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use tollgate::api::pb;
use tollgate_testkit::prelude::*;

/// The caller's trace and span, as its `traceparent` names them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// A span as received, with the resource it came from.
#[derive(Debug, Clone)]
struct Received {
    span: Span,
    service_name: Option<String>,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn attribute(&self, key: &str) -> Option<String> {
        string_attribute(&self.span.attributes, key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(
            |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                Value::StringValue(text) => Some(text.clone()),
                Value::IntValue(number) => Some(number.to_string()),
                other => Some(format!("{other:?}")),
            },
        )
}

/// The collector's trace service: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| string_attribute(&resource.attributes, "service.name"));
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push(Received {
                        span,
                        service_name: service_name.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves the receiver on a loopback port; returns it and its endpoint URL.
    async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let receiver = Self::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        (receiver, endpoint)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) for a span named `name` in trace `trace_id`.
    async fn wait_for(&self, name: &str, trace_id: &str) -> Received {
        wait_until(&format!("a `{name}` span in trace {trace_id}"), || async {
            let spans = self.spans();
            spans
                .iter()
                .find(|received| received.span.name == name && received.trace_id() == trace_id)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{:?}",
                        spans
                            .iter()
                            .map(|r| (r.span.name.clone(), r.trace_id()))
                            .collect::<Vec<_>>()
                    )
                })
        })
        .await
    }
}

/// A check carrying the caller's `traceparent`.
fn traced(request: pb::CheckRequest) -> tonic::Request<pb::CheckRequest> {
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    request
}

fn exporting_env<'a>(endpoint: &'a str, delay: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", delay),
        // Whatever the environment running the tests says.
        ("OTEL_SERVICE_NAME", ""),
        ("OTEL_RESOURCE_ATTRIBUTES", ""),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_logs_and_records_carry_its_id() {
    let (receiver, endpoint) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let decisions = dir.path().join("decisions.log");
    let mut env = exporting_env(&endpoint, "100");
    env.extend([
        ("TOLLGATE_LOG_LEVEL", "info,tollgate::api=debug"),
        ("TOLLGATE_DECISION_LOG", decisions.to_str().unwrap()),
    ]);
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &env,
    );
    let mut client = connect(&server.url()).await;
    let response = client
        .check(traced(check(
            "acme",
            "User:bob",
            "use",
            "Feature:pdf-export",
        )))
        .await
        .unwrap()
        .into_inner();
    assert_decision(&response, pb::Decision::Allow);

    let rpc = receiver.wait_for("Check", TRACE_ID).await;
    assert_eq!(rpc.parent_span_id(), CALLER_SPAN_ID, "{rpc:?}");
    assert_eq!(rpc.span.kind, SpanKind::Server as i32, "{rpc:?}");
    assert_eq!(rpc.attribute("rpc.method").as_deref(), Some("Check"));
    assert_eq!(rpc.attribute("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(rpc.service_name.as_deref(), Some("tollgate"));
    for stage in ["snapshot_lookup", "evaluate"] {
        let child = receiver.wait_for(stage, TRACE_ID).await;
        assert_eq!(child.parent_span_id(), rpc.span_id(), "{child:?}");
        assert_eq!(child.service_name.as_deref(), Some("tollgate"));
    }
    let lookup = receiver.wait_for("snapshot_lookup", TRACE_ID).await;
    assert_eq!(lookup.attribute("tenant").as_deref(), Some("acme"));

    // A call without a caller's context starts a trace of its own.
    let untraced = decide(
        &mut client,
        check("hooli", "User:gavin", "use", "Feature:pdf-export"),
    )
    .await;
    assert_decision(&untraced, pb::Decision::Deny);
    let root = wait_until("a root `Check` span", || async {
        receiver
            .spans()
            .into_iter()
            .find(|r| r.span.name == "Check" && r.trace_id() != TRACE_ID)
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    assert!(root.span.parent_span_id.is_empty(), "{root:?}");

    // A refused call is marked as failed, with its gRPC status code.
    let mut bad = check("acme", "User:bob", "use", "Feature:pdf-export");
    bad.tenant = String::new();
    let mut bad = tonic::Request::new(bad);
    let refused_trace = "0af7651916cd43dd8448eb211c80319c";
    bad.metadata_mut().insert(
        "traceparent",
        format!("00-{refused_trace}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    let status = client.check(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let refused = receiver.wait_for("Check", refused_trace).await;
    assert_eq!(
        refused.attribute("rpc.grpc.status_code").as_deref(),
        Some("3"),
        "{refused:?}"
    );
    assert_eq!(
        refused.span.status.as_ref().map(|status| status.code),
        Some(2), // STATUS_CODE_ERROR
        "{refused:?}"
    );

    // The log line of the answered call names the trace and the RPC span.
    let line = server
        .wait_for_log(0, &["check answered", &response.decision_id])
        .await;
    assert!(
        line.ends_with(&format!(" trace_id={TRACE_ID} span_id={}", rpc.span_id())),
        "{line}"
    );
    assert!(line.contains("decision=\"ALLOW\""), "{line}");

    server.signal("TERM");
    server.expect_clean_exit().await;
    let records: Vec<serde_json::Value> = read(&decisions)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let record = records
        .iter()
        .find(|record| record["decision_id"] == response.decision_id.as_str())
        .expect("the traced decision's record");
    assert_eq!(record["trace_id"], TRACE_ID, "{record}");
    let untraced_record = records
        .iter()
        .find(|record| record["decision_id"] == untraced.decision_id.as_str())
        .expect("the untraced decision's record");
    assert_eq!(
        untraced_record["trace_id"],
        root.trace_id().as_str(),
        "{untraced_record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_trace_and_span_ids() {
    let (receiver, endpoint) = Receiver::start().await;
    let mut env = exporting_env(&endpoint, "100");
    env.push(("TOLLGATE_LOG_LEVEL", "info,tollgate::api=debug"));
    env.push(("TOLLGATE_LOG_FORMAT", "json"));
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &env,
    );
    let url = server.url();
    let mut client = connect(&url).await;
    let response = client
        .check(traced(check(
            "acme",
            "User:bob",
            "use",
            "Feature:pdf-export",
        )))
        .await
        .unwrap()
        .into_inner();
    let rpc = receiver.wait_for("Check", TRACE_ID).await;
    let logged = wait_until("the JSON line of the answered check", || async {
        server
            .lines()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|value| value["message"] == "check answered")
            .ok_or_else(|| format!("{:?}", server.lines()))
    })
    .await;
    assert_eq!(logged["trace_id"], TRACE_ID, "{logged}");
    assert_eq!(logged["span_id"], rpc.span_id(), "{logged}");
    assert_eq!(
        logged["decision_id"],
        response.decision_id.as_str(),
        "{logged}"
    );
    assert_eq!(logged["level"], "DEBUG", "{logged}");
    // Lines outside a request have no trace.
    let listening = server
        .lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|value| value["message"] == "listening")
        .unwrap();
    assert!(listening.get("trace_id").is_none(), "{listening}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_spans_still_queued() {
    let (receiver, endpoint) = Receiver::start().await;
    // A batch would leave after a minute: only the shutdown can send it.
    let env = exporting_env(&endpoint, "60000");
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &env,
    );
    let mut client = connect(&server.url()).await;
    client
        .check(traced(check(
            "acme",
            "User:bob",
            "use",
            "Feature:pdf-export",
        )))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        receiver.spans().is_empty(),
        "spans left before the batch delay: {:?}",
        receiver.spans()
    );
    server.signal("TERM");
    server.expect_clean_exit().await;
    let names: Vec<String> = receiver
        .spans()
        .iter()
        .filter(|received| received.trace_id() == TRACE_ID)
        .map(|received| received.span.name.clone())
        .collect();
    for name in ["Check", "snapshot_lookup", "evaluate"] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_records_keep_the_callers_trace() {
    let dir = tempfile::tempdir().unwrap();
    let decisions = dir.path().join("decisions.log");
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
            ("TOLLGATE_DECISION_LOG", decisions.to_str().unwrap()),
        ],
    );
    assert!(
        !server.log().contains("exporting traces"),
        "{}",
        server.log()
    );
    let mut client = connect(&server.url()).await;
    let traced_response = client
        .check(traced(check(
            "acme",
            "User:bob",
            "use",
            "Feature:pdf-export",
        )))
        .await
        .unwrap()
        .into_inner();
    let plain = decide(
        &mut client,
        check("acme", "User:bob", "use", "Feature:pdf-export"),
    )
    .await;
    server.signal("TERM");
    server.expect_clean_exit().await;
    let text = read(&decisions);
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let find = |id: &str| {
        records
            .iter()
            .find(|record| record["decision_id"] == id)
            .unwrap_or_else(|| panic!("no record {id}:\n{text}"))
    };
    assert_eq!(find(&traced_response.decision_id)["trace_id"], TRACE_ID);
    assert!(find(&plain.decision_id).get("trace_id").is_none(), "{text}");
}

#[test]
fn unusable_otel_settings_stop_serve_with_exit_code_2() {
    for (variable, value, expected) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "127.0.0.1:4317",
            "OTEL_EXPORTER_OTLP_ENDPOINT: `127.0.0.1:4317` is not an http:// or https:// URL",
        ),
        (
            "OTEL_TRACES_SAMPLER",
            "sometimes",
            "OTEL_TRACES_SAMPLER: `sometimes` is not one of always_on",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
            .arg(example_policies())
            .arg("--entitlements")
            .arg(example_entitlements())
            .env(variable, value)
            .stdin(Stdio::null())
            .output()
            .expect("run tollgate");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("listening"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_build_no_spans() {
    let (receiver, endpoint) = Receiver::start().await;
    let mut env = exporting_env(&endpoint, "100");
    // Follow the caller's flag; start no trace of our own.
    env.retain(|(name, _)| *name != "OTEL_TRACES_SAMPLER");
    env.extend([
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ]);
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &env,
    );
    let mut client = connect(&server.url()).await;
    let with_flags = |flags: &str, trace: &str| {
        let mut request =
            tonic::Request::new(check("acme", "User:bob", "use", "Feature:pdf-export"));
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{trace}-{CALLER_SPAN_ID}-{flags}")
                .parse()
                .unwrap(),
        );
        request
    };
    let unsampled_trace = "11111111111111111111111111111111";
    // The caller says "not sampled", and a call without a caller's trace.
    client
        .check(with_flags("00", unsampled_trace))
        .await
        .unwrap();
    client
        .check(tonic::Request::new(check(
            "acme",
            "User:bob",
            "use",
            "Feature:pdf-export",
        )))
        .await
        .unwrap();
    // The caller says "sampled".
    client.check(with_flags("01", TRACE_ID)).await.unwrap();
    for name in ["Check", "snapshot_lookup", "evaluate"] {
        receiver.wait_for(name, TRACE_ID).await;
    }
    server.signal("TERM");
    server.expect_clean_exit().await;
    let spans = receiver.spans();
    let traces: std::collections::BTreeSet<String> = spans.iter().map(Received::trace_id).collect();
    assert_eq!(
        traces.into_iter().collect::<Vec<_>>(),
        [TRACE_ID],
        "{spans:?}"
    );
    assert_eq!(spans.len(), 3, "{spans:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_continue_the_callers_trace() {
    let (receiver, endpoint) = Receiver::start().await;
    let http = format!("127.0.0.1:{}", tollgate_testkit::redis_server::free_port());
    let mut env = exporting_env(&endpoint, "100");
    env.push(("TOLLGATE_HTTP_LISTEN", http.as_str()));
    let _server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &env,
    );
    let mut client = HttpClient::connect(&http).await.unwrap();
    let body =
        serde_json::to_string(&check("acme", "User:bob", "use", "Feature:pdf-export")).unwrap();
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01");
    let answer = client
        .post("/v1/check", body, &[("traceparent", &traceparent)])
        .await
        .unwrap();
    assert_eq!(answer.json()["decision"], "DECISION_ALLOW");
    let request = receiver.wait_for("POST /v1/check", TRACE_ID).await;
    assert_eq!(request.parent_span_id(), CALLER_SPAN_ID, "{request:?}");
    assert_eq!(request.span.kind, SpanKind::Server as i32, "{request:?}");
    assert_eq!(
        request.attribute("http.route").as_deref(),
        Some("/v1/check")
    );
    let evaluate = receiver.wait_for("evaluate", TRACE_ID).await;
    assert_eq!(evaluate.parent_span_id(), request.span_id(), "{evaluate:?}");
}
