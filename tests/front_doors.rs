//! The gRPC API and the HTTP front door answer alike: the golden cases, and
//! the shared table of bad inputs (`tollgate_testkit::cases`), are sent
//! through both to one in-process server, and must get the same decisions,
//! reasons, policy ids, error codes and messages. Then what only the HTTP
//! front door has: its status codes, content types, body limits and health.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::PathBuf;

use serde::Deserialize;
use tollgate::api::convert::{json_to_value, parse_ref};
use tollgate::api::pb;
use tollgate::http::{code_name, http_status};
use tollgate_testkit::cases;
use tollgate_testkit::fixtures::repository;
use tollgate_testkit::prelude::*;

#[derive(Deserialize)]
struct CaseSet {
    description: String,
    #[serde(default)]
    policies: Option<String>,
    #[serde(default)]
    entitlements: Option<String>,
    #[serde(default)]
    options: Option<serde_json::Value>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    options: Option<serde_json::Value>,
    tenant: String,
    principal: String,
    action: String,
    resource: String,
    #[serde(default)]
    context: serde_json::Map<String, serde_json::Value>,
    decision: String,
    reasons: Vec<String>,
}

/// What both front doors must agree on.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Decided {
        allow: bool,
        reasons: Vec<String>,
        policy_ids: Vec<String>,
        errors: Vec<String>,
    },
    Refused {
        code: String,
        message: String,
    },
}

impl Outcome {
    fn of(response: &pb::CheckResponse) -> Self {
        let mut reasons: Vec<String> = response.reasons.iter().map(|r| r.code.clone()).collect();
        let mut policy_ids: Vec<String> = response
            .reasons
            .iter()
            .map(|r| r.policy_id.clone())
            .collect();
        let mut errors: Vec<String> = response
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.policy_id, e.message))
            .collect();
        reasons.sort();
        policy_ids.sort();
        errors.sort();
        Self::Decided {
            allow: response.decision == pb::Decision::Allow as i32,
            reasons,
            policy_ids,
            errors,
        }
    }

    fn of_status(status: &tonic::Status) -> Self {
        Self::Refused {
            code: code_name(status.code()).to_string(),
            message: status.message().to_string(),
        }
    }

    /// An HTTP answer: a decision, or the error it carries (whose HTTP
    /// status must be its code's).
    fn of_http(answer: &HttpAnswer) -> Self {
        if answer.status == 200 {
            let response: pb::CheckResponse = serde_json::from_slice(&answer.body).unwrap();
            return Self::of(&response);
        }
        let body = answer.json();
        let code = body["code"].as_str().unwrap().to_string();
        let expected_status = code_status(&code);
        assert_eq!(answer.status, expected_status, "{body}");
        Self::Refused {
            code,
            message: body["message"].as_str().unwrap().to_string(),
        }
    }
}

/// The HTTP status of a code name.
fn code_status(name: &str) -> u16 {
    use tonic::Code;
    let code = [
        Code::InvalidArgument,
        Code::FailedPrecondition,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::NotFound,
        Code::ResourceExhausted,
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Internal,
    ]
    .into_iter()
    .find(|code| code_name(*code) == name)
    .unwrap_or_else(|| panic!("unexpected code {name}"));
    http_status(code).as_u16()
}

/// A case's options: `strict_principals` and `policy_errors`.
type OptionsKey = (Option<bool>, Option<String>);

fn options_key(set: &CaseSet, case: &Case) -> OptionsKey {
    let pick = |key: &str| {
        case.options
            .as_ref()
            .and_then(|o| o.get(key).cloned())
            .or_else(|| set.options.as_ref().and_then(|o| o.get(key).cloned()))
    };
    (
        pick("strict_principals").and_then(|v| v.as_bool()),
        pick("policy_errors").and_then(|v| v.as_str().map(str::to_string)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_decide_alike_over_grpc_and_http() {
    let golden = repository().join("tests/golden");
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&golden)
        .unwrap()
        .map(|entry| entry.unwrap().path().join("cases.json"))
        .filter(|path| path.is_file())
        .collect();
    sets.sort();
    assert!(sets.len() >= 3, "{sets:?}");
    let mut compared = 0;
    let mut failures = Vec::new();
    for path in &sets {
        let dir = path.parent().unwrap();
        let set: CaseSet = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut groups: Vec<(OptionsKey, Vec<&Case>)> = Vec::new();
        for case in &set.cases {
            let key = options_key(&set, case);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, cases)) => cases.push(case),
                None => groups.push((key, vec![case])),
            }
        }
        for ((strict, errors), group) in groups {
            let mut config = tollgate::config::Config::with_dirs(
                dir.join(set.policies.as_deref().unwrap_or("policies")),
                dir.join(set.entitlements.as_deref().unwrap_or("entitlements")),
            );
            if let Some(strict) = strict {
                config.options.strict_principals = strict;
            }
            if let Some(mode) = errors {
                config.options.policy_errors = match mode.as_str() {
                    "cedar" => tollgate_engine::PolicyErrorMode::Cedar,
                    _ => tollgate_engine::PolicyErrorMode::Deny,
                };
            }
            let (server, http) = InProcess::start_with_http(config).await;
            let mut grpc = connect(&server.url()).await;
            let mut client = HttpClient::connect(&http).await.unwrap();
            for case in group {
                let request = pb::CheckRequest {
                    tenant: case.tenant.clone(),
                    principal: Some(parse_ref(&case.principal, None).unwrap()),
                    action: Some(parse_ref(&case.action, Some("Action")).unwrap()),
                    resource: Some(parse_ref(&case.resource, None).unwrap()),
                    context: case
                        .context
                        .iter()
                        .map(|(k, v)| (k.clone(), json_to_value(v).unwrap()))
                        .collect(),
                    ..pb::CheckRequest::default()
                };
                let over_grpc = match grpc.check(request.clone()).await {
                    Ok(response) => Outcome::of(&response.into_inner()),
                    Err(status) => Outcome::of_status(&status),
                };
                // The proto's JSON mapping, as grpcurl -d would send it.
                let proto_json = serde_json::to_string(&request).unwrap();
                let over_http = Outcome::of_http(
                    &client
                        .post("/v1/check", proto_json.clone(), &[])
                        .await
                        .unwrap(),
                );
                // The context in Cedar's own JSON form.
                let mut cedar_json: serde_json::Value = serde_json::from_str(&proto_json).unwrap();
                cedar_json["context"] = serde_json::Value::Object(case.context.clone());
                let over_http_cedar = Outcome::of_http(
                    &client
                        .post("/v1/check", cedar_json.to_string(), &[])
                        .await
                        .unwrap(),
                );
                let label = format!("{} / {}", set.description, case.name);
                if over_grpc != over_http {
                    failures.push(format!(
                        "{label}: gRPC {over_grpc:?} but HTTP {over_http:?}"
                    ));
                }
                if over_grpc != over_http_cedar {
                    failures.push(format!(
                        "{label}: gRPC {over_grpc:?} but HTTP with Cedar JSON {over_http_cedar:?}"
                    ));
                }
                if let Outcome::Decided { allow, reasons, .. } = &over_grpc {
                    let mut expected = case.reasons.clone();
                    expected.sort();
                    if (*allow, reasons) != (case.decision == "ALLOW", &expected) {
                        failures.push(format!(
                            "{label}: {over_grpc:?}, expected {} {expected:?}",
                            case.decision
                        ));
                    }
                }
                compared += 1;
            }
            drop(grpc);
            server.stop().await.unwrap();
        }
    }
    println!("{compared} golden cases sent through gRPC and HTTP (proto and Cedar JSON)");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(compared >= 20, "{compared}");
}

async fn example_front_doors() -> (InProcess, String) {
    InProcess::start_with_http(tollgate::config::Config::with_dirs(
        example_policies(),
        example_entitlements(),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_alike_over_grpc_and_http() {
    let (server, http) = example_front_doors().await;
    let mut grpc = connect(&server.url()).await;
    let mut client = HttpClient::connect(&http).await.unwrap();

    // The control: the valid request is decided alike.
    let valid = cases::valid_check();
    let over_grpc = Outcome::of(&grpc.check(valid.clone()).await.unwrap().into_inner());
    let answer = client
        .post("/v1/check", serde_json::to_string(&valid).unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(Outcome::of_http(&answer), over_grpc);
    assert!(matches!(over_grpc, Outcome::Decided { allow: true, .. }));

    let mut compared = 0;
    let table = cases::bad_checks()
        .into_iter()
        .map(|case| (case, "INVALID_ARGUMENT"))
        .chain(
            cases::oversized_checks()
                .into_iter()
                .map(|case| (case, "RESOURCE_EXHAUSTED")),
        );
    for (case, code) in table {
        let status = grpc.check(case.request.clone()).await.unwrap_err();
        let over_grpc = Outcome::of_status(&status);
        let answer = client
            .post(
                "/v1/check",
                serde_json::to_string(&case.request).unwrap(),
                &[],
            )
            .await
            .unwrap();
        let over_http = Outcome::of_http(&answer);
        assert_eq!(over_http, over_grpc, "{}", case.name);
        let Outcome::Refused { code: got, message } = &over_http else {
            unreachable!()
        };
        assert_eq!(got, code, "{}: {message}", case.name);
        assert!(
            message.starts_with(case.message),
            "{}: {message:?} should start with {:?}",
            case.name,
            case.message
        );
        // The field the message names is given apart.
        let field = answer.json()["field"].as_str().map(str::to_string);
        let field = field.unwrap_or_else(|| panic!("{}: no field in {}", case.name, answer.json()));
        assert!(
            message.starts_with(&field),
            "{}: {field} / {message}",
            case.name
        );
        compared += 1;
    }
    for (name, batch, message) in cases::bad_batches() {
        let status = grpc.check_batch(batch.clone()).await.unwrap_err();
        let over_grpc = Outcome::of_status(&status);
        let answer = client
            .post(
                "/v1/check-batch",
                serde_json::to_string(&batch).unwrap(),
                &[],
            )
            .await
            .unwrap();
        let over_http = Outcome::of_http(&answer);
        assert_eq!(over_http, over_grpc, "{name}");
        assert!(status.message().starts_with(message), "{name}: {status:?}");
        compared += 1;
    }
    println!("{compared} bad requests refused alike over gRPC and HTTP");
    assert!(compared >= 25, "{compared}");

    // A batch that passes is answered in order, alike.
    let batch = pb::CheckBatchRequest {
        checks: vec![
            check_str("acme User:bob use Feature:pdf-export"),
            check_str("acme User:carol use Feature:sso"),
        ],
    };
    let over_grpc = grpc.check_batch(batch.clone()).await.unwrap().into_inner();
    let answer = client
        .post(
            "/v1/check-batch",
            serde_json::to_string(&batch).unwrap(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let over_http: pb::CheckBatchResponse = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(over_http.responses.len(), 2);
    for (grpc, http) in over_grpc.responses.iter().zip(&over_http.responses) {
        assert_eq!(Outcome::of(grpc), Outcome::of(http));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_front_door_speaks_http() {
    let mut config =
        tollgate::config::Config::with_dirs(example_policies(), example_entitlements());
    config.max_request_bytes = 64 << 10;
    let (_server, http) = InProcess::start_with_http(config).await;
    let mut client = HttpClient::connect(&http).await.unwrap();
    let valid = serde_json::to_string(&cases::valid_check()).unwrap();

    // What grpcurl -d sends: snake_case names, numbers as strings, enums
    // by name, and Cedar's JSON values.
    let grpcurl_style = r#"{"tenant": "acme",
        "principal": {"type": "User", "id": "bob"},
        "action": {"type": "Action", "id": "use"},
        "resource": {"type": "Feature", "id": "pdf-export"},
        "context": {"country": {"string": "BR"}, "now": {"extension": {"fn": "datetime", "arg": "2026-06-01T00:00:00Z"}}},
        "max_staleness_ms": "0"}"#;
    let answer = client.post("/v1/check", grpcurl_style, &[]).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.json());
    assert_eq!(answer.json()["decision"], "DECISION_ALLOW");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let cedar_style = r#"{"tenant": "acme",
        "principal": {"type": "User", "id": "bob"},
        "action": {"type": "Action", "id": "use"},
        "resource": {"type": "Feature", "id": "pdf-export"},
        "context": {"country": "BR", "now": {"__extn": {"fn": "datetime", "arg": "2026-06-01T00:00:00Z"}}},
        "maxStalenessMs": 0}"#;
    let answer = client.post("/v1/check", cedar_style, &[]).await.unwrap();
    assert_eq!(answer.json()["decision"], "DECISION_ALLOW");

    // Only JSON bodies.
    let answer = client
        .post(
            "/v1/check",
            valid.clone(),
            &[("content-type", "text/plain")],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 415);
    assert_eq!(answer.json()["code"], "INVALID_ARGUMENT");
    assert!(answer.json()["message"]
        .as_str()
        .unwrap()
        .contains("application/json"));

    // Not JSON, not a CheckRequest, not a Cedar value.
    for (body, needle) in [
        ("{", "EOF while parsing"),
        (r#"{"tenant": "acme", "shoe": 1}"#, "unknown field `shoe`"),
        (r#"{"tenant": 7}"#, "invalid type"),
        (
            r#"{"tenant": "acme", "context": {"x": 1.5}}"#,
            "Cedar has no floating-point numbers",
        ),
        (
            r#"{"tenant": "acme", "context": {"x": null}}"#,
            "null is not a Cedar value",
        ),
        (
            r#"{"tenant": "acme", "context": {"x": {"long": "seven"}}}"#,
            "`seven` is not a 64-bit integer",
        ),
        (
            r#"{"tenant": "acme", "context": {"x": {"__entity": {"type": "User"}}}}"#,
            "`__entity` needs an `id`",
        ),
    ] {
        let answer = client.post("/v1/check", body, &[]).await.unwrap();
        assert_eq!(answer.status, 400, "{body}: {}", answer.json());
        let json = answer.json();
        assert_eq!(json["code"], "INVALID_ARGUMENT");
        assert_eq!(json["field"], "body");
        let message = json["message"].as_str().unwrap();
        assert!(
            message.starts_with("body: not a valid CheckRequest: "),
            "{message}"
        );
        assert!(message.contains(needle), "{body}: {message}");
    }

    // Larger than max_request_bytes.
    let mut large = cases::valid_check();
    large
        .context
        .insert("padding".to_string(), string(&"x".repeat(100 << 10)));
    let answer = client
        .post("/v1/check", serde_json::to_string(&large).unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        answer.json()["message"],
        "the request body is larger than 65536 bytes (max_request_bytes)"
    );

    // Metering needs Redis: the same precondition as over gRPC.
    let answer = client
        .post(
            "/v1/report-usage",
            r#"{"tenant": "acme", "reports": [{"meter": "api_calls", "amount": "1", "event_key": "e1"}]}"#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["code"], "FAILED_PRECONDITION");
    assert_eq!(
        answer.json()["message"],
        "usage metering needs the Redis source (redis_url)"
    );

    // Unknown routes and methods.
    let answer = client.get("/v1/nothing").await.unwrap();
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["code"], "NOT_FOUND");
    let answer = client.get("/v1/check").await.unwrap();
    assert_eq!(answer.status, 405);

    // Health.
    let answer = client.get("/healthz").await.unwrap();
    assert_eq!(
        (answer.status, answer.json()["status"].as_str()),
        (200, Some("SERVING"))
    );
    let answer = client.get("/readyz").await.unwrap();
    assert_eq!(
        (answer.status, answer.json()["status"].as_str()),
        (200, Some("SERVING"))
    );

    // The connection is still good for a decision.
    let answer = client.post("/v1/check", valid, &[]).await.unwrap();
    assert_eq!(answer.json()["decision"], "DECISION_ALLOW");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_policy_set() {
    let dirs = DataDirs::copy_examples();
    std::fs::write(dirs.policies.join("broken.cedar"), "permit (").unwrap();
    let (_server, http) = InProcess::start_with_http(dirs.config()).await;
    let mut client = HttpClient::connect(&http).await.unwrap();
    let answer = client.get("/readyz").await.unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["status"], "NOT_SERVING");
    let answer = client.get("/healthz").await.unwrap();
    assert_eq!(answer.status, 200);
    let answer = client
        .post(
            "/v1/check",
            serde_json::to_string(&cases::valid_check()).unwrap(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["code"], "UNAVAILABLE");
    assert_eq!(answer.header("retry-after"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_labelled_with_their_front_door() {
    let dirs = DataDirs::copy_examples();
    let log = dirs.root.path().join("decisions.log");
    let mut config = dirs.config();
    config.decision_log = Some(tollgate::decision_log::Settings {
        sink: Some(tollgate::decision_log::Sink::File(log.clone())),
        redis_stream: None,
        queue: 100,
        sample_allow: 1.0,
        sample_deny: 1.0,
        context: false,
        mask: Vec::new(),
        attributes: Vec::new(),
        max_bytes: 1 << 20,
    });
    let metrics =
        std::net::SocketAddr::from(([127, 0, 0, 1], tollgate_testkit::redis_server::free_port()));
    config.metrics_listen = Some(metrics);
    config.authzen.tenant = vec![tollgate::http::authzen::TenantFrom::Fixed(
        "acme".to_string(),
    )];
    let (server, http) = InProcess::start_with_http(config).await;
    let mut grpc = connect(&server.url()).await;
    let mut client = HttpClient::connect(&http).await.unwrap();
    grpc.check(cases::valid_check()).await.unwrap();
    let answer = client
        .post(
            "/v1/check",
            serde_json::to_string(&cases::valid_check()).unwrap(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let evaluation = serde_json::json!({
        "subject": {"type": "User", "id": "bob"}, "action": {"name": "use"},
        "resource": {"type": "Feature", "id": "pdf-export"},
        "context": {"country": "BR", "now": {"__extn": {"fn": "datetime", "arg": "2026-06-01T00:00:00Z"}}},
    });
    let answer = client.post_json("/access/v1/evaluation", &evaluation).await;
    assert_eq!(answer.json()["decision"], true, "{}", answer.json());

    let doors = wait_until("three decision records", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move {
            let doors: Vec<String> = text
                .lines()
                .map(|line| {
                    let record: serde_json::Value = serde_json::from_str(line).unwrap();
                    record["front_door"].as_str().unwrap().to_string()
                })
                .collect();
            if doors.len() == 3 {
                Ok(doors)
            } else {
                Err(format!("{doors:?}"))
            }
        }
    })
    .await;
    assert_eq!(doors, ["grpc", "http", "authzen"]);
    let (_, text) = tokio::task::spawn_blocking(move || http_get(&metrics.to_string(), "/metrics"))
        .await
        .unwrap();
    for door in ["grpc", "http", "authzen"] {
        let series = format!(
            r#"tollgate_decisions_total{{decision="allow",reason="member_role",front_door="{door}"}}"#
        );
        assert_eq!(sample(&text, &series), 1.0, "{series}\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_command_asks_the_http_front_door() {
    let (_server, http) = example_front_doors().await;
    let run = |resource: &'static str, country: &'static str| {
        let url = format!("http://{http}");
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
                .args(["check", "--http", &url, "--tenant", "acme", "--principal", "User:bob"])
                .args(["--action", "use", "--resource", resource, "--context"])
                .arg(format!(
                    r#"{{"country": "{country}", "now": {{"__extn": {{"fn": "datetime", "arg": "2026-06-01T00:00:00Z"}}}}}}"#
                ))
                .output()
                .unwrap()
        })
    };
    let allowed = run("Feature:pdf-export", "BR").await.unwrap();
    assert_eq!(allowed.status.code(), Some(0), "{allowed:?}");
    assert!(
        String::from_utf8_lossy(&allowed.stdout).starts_with("ALLOW"),
        "{allowed:?}"
    );
    let denied = run("Feature:payments", "CN").await.unwrap();
    assert_eq!(denied.status.code(), Some(1), "{denied:?}");
    assert!(
        String::from_utf8_lossy(&denied.stdout).contains("geo_restricted"),
        "{denied:?}"
    );
    let refused = run("Account:acme", "BR").await.unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(
            "INVALID_ARGUMENT (HTTP 400): resource.type: resource type `Account` is not valid"
        ),
        "{refused:?}"
    );
}
