//! Regression tests for defects found in review: request-scoped entities that
//! tried to stand in for the snapshot, inputs that could exhaust the stack,
//! files silently left out, and command-line paths that hid problems.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::process::{Command, Stdio};

use tollgate::api::pb;
use tollgate_testkit::prelude::{
    check, connect, decide_expect, entity_ref, entity_value, send, DataDirs, InProcess, NOW,
};

fn entity(
    type_name: &str,
    id: &str,
    attrs: &[(&str, pb::Value)],
    parents: &[(&str, &str)],
) -> pb::Entity {
    pb::Entity {
        uid: Some(entity_ref(type_name, id)),
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        parents: parents.iter().map(|(t, i)| entity_ref(t, i)).collect(),
        tags: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_scoped_entities_cannot_make_up_the_principal_or_its_groups() {
    let dirs = DataDirs::copy_examples();
    // A user whose role is named but not defined by the snapshot.
    let acme = dirs.entitlements.join("acme.json");
    let mut snapshot: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&acme).unwrap()).unwrap();
    snapshot["entities"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "uid": {"type": "User", "id": "temp"},
            "attrs": {"account": {"__entity": {"type": "Account", "id": "acme"}}},
            "parents": [{"type": "Role", "id": "team-x"}]
        }));
    std::fs::write(&acme, snapshot.to_string()).unwrap();
    let server = InProcess::start(dirs.config()).await;
    let mut client = connect(&server.url()).await;

    // Unknown principal, brought along as an admin: still unknown.
    let mut request = check("acme", "User:mallory", "use", "Feature:pdf-export");
    request.entities.push(entity(
        "User",
        "mallory",
        &[("account", entity_value("Account", "acme"))],
        &[("Role", "admin")],
    ));
    decide_expect(
        &mut client,
        request,
        pb::Decision::Deny,
        &["unknown_principal"],
    )
    .await;

    // The named-but-undefined role cannot be defined by the request.
    decide_expect(
        &mut client,
        check("acme", "User:temp", "use", "Feature:dashboards"),
        pb::Decision::Deny,
        &["no_permit"],
    )
    .await;
    let mut request = check("acme", "User:temp", "use", "Feature:dashboards");
    request
        .entities
        .push(entity("Role", "team-x", &[], &[("Role", "member")]));
    let status = send(&mut client, request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with(
            "entities[0].uid: `Role::\"team-x\"` is a parent named by the tenant snapshot"
        ),
        "{}",
        status.message()
    );

    // More request-scoped entities than the limit.
    let mut request = check("acme", "User:bob", "use", "Feature:dashboards");
    for i in 0..=tollgate::decide::MAX_REQUEST_ENTITIES {
        request
            .entities
            .push(entity("Role", &format!("r{i}"), &[], &[]));
    }
    let status = send(&mut client, request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        format!(
            "entities: {} request-scoped entities exceed the limit of {}",
            tollgate::decide::MAX_REQUEST_ENTITIES + 1,
            tollgate::decide::MAX_REQUEST_ENTITIES
        )
    );
    server.stop().await.unwrap();
}

fn tollgate(args: &[&str], dirs: &DataDirs) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--policies")
        .arg(&dirs.policies)
        .arg("--entitlements")
        .arg(&dirs.entitlements)
        .current_dir(dirs.root.path())
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("run tollgate")
}

#[test]
fn a_policy_symlink_without_target_is_a_problem_not_a_missing_rule() {
    let dirs = DataDirs::copy_examples();
    let geo = dirs.policies.join("geo.cedar");
    let moved = dirs.root.path().join("geo.cedar.moved");
    std::fs::rename(&geo, &moved).unwrap();
    std::os::unix::fs::symlink(dirs.root.path().join("gone.cedar"), &geo).unwrap();
    let output = tollgate(&["validate"], &dirs);
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("geo.cedar: cannot read policy file"), "{out}");
}

#[test]
fn validate_lists_snapshot_problems_even_when_policies_fail() {
    let dirs = DataDirs::copy_examples();
    std::fs::write(
        dirs.policies.join("broken.cedar"),
        "permit(principal action, resource);",
    )
    .unwrap();
    let acme = dirs.entitlements.join("acme.json");
    let text = std::fs::read_to_string(&acme)
        .unwrap()
        .replace("\"tier\": 1", "\"tier\": \"one\"");
    std::fs::write(&acme, text).unwrap();
    let output = tollgate(&["validate"], &dirs);
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("broken.cedar:1:18: unexpected token `action`"),
        "{out}"
    );
    assert!(
        out.contains("acme.json: entities do not match the schema"),
        "{out}"
    );
    assert!(out.contains("2 problems found"), "{out}");
}

#[test]
fn local_check_of_a_tenant_whose_snapshot_is_broken_exits_2() {
    let dirs = DataDirs::copy_examples();
    std::fs::write(dirs.entitlements.join("acme.json"), "{ not json").unwrap();
    let context = format!(
        r#"{{"country":"BR","now":{{"__extn":{{"fn":"datetime","arg":"{}"}}}}}}"#,
        NOW
    );
    let args = [
        "check",
        "--tenant",
        "acme",
        "--principal",
        "User:bob",
        "--action",
        "use",
        "--resource",
        "Feature:pdf-export",
        "--context",
        &context,
    ];
    let output = tollgate(&args, &dirs);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the tenant's snapshot does not load"),
        "{stderr}"
    );
    assert!(stderr.contains("acme.json:1"), "{stderr}");
}

#[test]
fn an_environment_variable_that_is_not_utf8_is_a_configuration_error() {
    use std::os::unix::ffi::OsStrExt;
    let dirs = DataDirs::copy_examples();
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("validate")
        .arg("--policies")
        .arg(&dirs.policies)
        .arg("--entitlements")
        .arg(&dirs.entitlements)
        .env_clear()
        .env(
            "TOLLGATE_LOG_LEVEL",
            std::ffi::OsStr::from_bytes(b"info\xff"),
        )
        .env("UNRELATED", std::ffi::OsStr::from_bytes(b"\xff"))
        .stdin(Stdio::null())
        .output()
        .expect("run tollgate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("environment variable TOLLGATE_LOG_LEVEL is not valid UTF-8"),
        "{stderr}"
    );
}

/// The most a hostile request may add to the server's peak resident memory.
const HOSTILE_HEADROOM_BYTES: u64 = 48 << 20;

/// Sends `body` (a request's protobuf bytes) to `method` and returns the
/// refusal, with how much the server's peak resident memory grew.
async fn send_hostile(
    server: &tollgate_testkit::server::ServerProcess,
    method: &'static str,
    body: Vec<u8>,
) -> (tonic::Status, u64) {
    let pid = server.pid();
    let before = tollgate_testkit::measure::memory(pid).unwrap().hwm_bytes;
    let channel = tollgate_testkit::client::channel(&server.url()).await;
    let refused = tollgate_testkit::client::call_raw(channel, method, body.into())
        .await
        .unwrap_err();
    let after = tollgate_testkit::measure::memory(pid).unwrap().hwm_bytes;
    let grew = after.saturating_sub(before);
    eprintln!("{method}: peak resident memory grew by {grew} bytes");
    (refused, grew)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_repeated_fields_are_refused_while_decoding() {
    let server = tollgate_testkit::server::ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &tollgate_testkit::fixtures::example_policies(),
        &tollgate_testkit::fixtures::example_entitlements(),
        &[],
    );
    // Nearly 4 MiB (the default max_request_bytes) of empty elements, two
    // bytes each on the wire: two million of them once decoded.
    let many = (4 << 20) / 2 - 8;
    let mixed = prost::Message::encode_to_vec(&pb::CheckBatchRequest {
        checks: vec![
            pb::CheckRequest::default(),
            pb::CheckRequest {
                entities: vec![pb::Entity::default(); 65],
                ..pb::CheckRequest::default()
            },
        ],
    });
    let tiny = pb::Value {
        kind: Some(pb::value::Kind::Bool(true)),
    };
    // A set of a million booleans, four bytes each on the wire.
    let huge_set = prost::Message::encode_to_vec(&pb::CheckRequest {
        context: [(
            "s".to_string(),
            pb::Value {
                kind: Some(pb::value::Kind::Set(pb::ValueSet {
                    values: vec![tiny.clone(); (4 << 20) / 4 - 64],
                })),
            },
        )]
        .into_iter()
        .collect(),
        ..pb::CheckRequest::default()
    });
    // Three hundred thousand context keys.
    let many_keys = prost::Message::encode_to_vec(&pb::CheckRequest {
        context: (0..300_000)
            .map(|key| (format!("{key:x}"), tiny.clone()))
            .collect(),
        ..pb::CheckRequest::default()
    });
    let cases: [(&str, &'static str, Vec<u8>, String); 6] = [
        (
            "empty checks",
            "/tollgate.v1.EntitlementService/CheckBatch",
            [0x0a, 0x00].repeat(many),
            format!("batch of {many} checks exceeds the limit of 100"),
        ),
        (
            "empty request-scoped entities",
            "/tollgate.v1.EntitlementService/Check",
            [0x32, 0x00].repeat(many),
            format!("entities: {many} request-scoped entities exceed the limit of 64"),
        ),
        (
            "a batch whose second check brings too many entities",
            "/tollgate.v1.EntitlementService/CheckBatch",
            mixed,
            "checks[1].entities: 65 request-scoped entities exceed the limit of 64".to_string(),
        ),
        (
            "a context set of a million values",
            "/tollgate.v1.EntitlementService/Check",
            huge_set,
            "request: 20001 values exceed the limit of 20000 per call".to_string(),
        ),
        (
            "three hundred thousand context keys",
            "/tollgate.v1.EntitlementService/Check",
            many_keys,
            "request: 20001 values exceed the limit of 20000 per call".to_string(),
        ),
        (
            "empty usage reports",
            "/tollgate.v1.EntitlementService/ReportUsage",
            [0x12, 0x00].repeat(many),
            format!("batch of {many} reports exceeds the limit of 100"),
        ),
    ];
    for (what, method, body, message) in cases {
        let (refused, grew) = send_hostile(&server, method, body).await;
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{what}: {refused:?}"
        );
        assert_eq!(refused.message(), message, "{what}");
        assert!(
            grew < HOSTILE_HEADROOM_BYTES,
            "{what}: peak memory grew by {grew} bytes"
        );
    }

    // Records nested deeper than the decoder follows: refused as malformed.
    let mut deep = tiny.clone();
    for _ in 0..200 {
        deep = pb::Value {
            kind: Some(pb::value::Kind::Record(pb::ValueRecord {
                values: [("r".to_string(), deep)].into_iter().collect(),
            })),
        };
    }
    let body = prost::Message::encode_to_vec(&pb::CheckRequest {
        context: [("deep".to_string(), deep)].into_iter().collect(),
        ..pb::CheckRequest::default()
    });
    let (refused, _) = send_hostile(&server, "/tollgate.v1.EntitlementService/Check", body).await;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("recursion limit"), "{refused:?}");

    // The server still answers.
    let mut client = connect(&server.url()).await;
    let answer = send(
        &mut client,
        check("acme", "User:bob", "use", "Feature:pdf-export"),
    )
    .await
    .unwrap();
    assert_eq!(
        tollgate_testkit::answer::codes(&answer),
        ["member_role"],
        "{answer:?}"
    );
}
