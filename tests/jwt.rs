//! End users identified by verified JWTs on every front door: the token's
//! tenant and principal become the check's over gRPC, HTTP, AuthZEN and
//! Envoy's ext_authz; a refused token is `UNAUTHENTICATED`/401 naming the
//! check that failed (never a DENY decided on unverified claims); a JWKS
//! file rotated on disk is in force without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::{json, Value};
use tollgate::api::pb;
use tollgate_testkit::jwt::{hs256, jwks, now_s, unsigned, Signer};
use tollgate_testkit::prelude::*;
use tollgate_testkit::redis_server::free_port;

const ISSUER: &str = "https://login.tollgate.test/";

fn issuers_yaml(required: bool) -> String {
    format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [tollgate]\n    algorithms: [RS256, ES256]\n    jwks_file: keys.json\n    tenant_claim: org\n    principal_claim: sub\n    principal_type: User\n    context_claims: [email]\nrequired: {required}\n"
    )
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": "tollgate", "sub": "bob", "org": "acme",
        "email": "bob@acme.test", "exp": now_s() + 600, "iat": now_s(),
    });
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    claims
}

/// The example data with `context.token.email` declared for `use`, and a
/// server verifying tokens from `dir`'s issuers file, with the HTTP front
/// door and ext_authz.
struct Setup {
    dirs: DataDirs,
    server: InProcess,
    http: String,
    ext_authz: SocketAddr,
}

async fn setup(keys: &[&Signer], required: bool) -> Setup {
    let dirs = DataDirs::copy_examples();
    let schema = dirs.policies.join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap();
    let patched = text.replacen(
        "    usage?: Usage,\n  },\n};",
        "    usage?: Usage,\n    // Claims of the end user's verified token.\n    token?: {email?: String},\n  },\n};",
        1,
    );
    assert_ne!(text, patched, "the example schema's `use` context changed");
    std::fs::write(&schema, patched).unwrap();
    let root = dirs.root.path();
    std::fs::write(root.join("keys.json"), jwks(keys)).unwrap();
    std::fs::write(root.join("issuers.yaml"), issuers_yaml(required)).unwrap();
    std::fs::write(
        root.join("routes.yaml"),
        "tenant: {claim: org}\nprincipal: {claim: sub}\ncontext:\n  country: {header: x-country}\n  now: {now: true}\nupstream_headers: [tenant, principal]\nroutes:\n  - path: /features/{feature}\n    action: use\n    resource: {type: Feature, id: \"{feature}\"}\n",
    )
    .unwrap();
    let mut config = dirs.config();
    config.jwt_file = Some(root.join("issuers.yaml"));
    config.credentials_poll = Duration::from_millis(100);
    config.authzen.tenant = vec![tollgate::http::authzen::TenantFrom::Token];
    let ext_authz = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.ext_authz_listen = Some(ext_authz);
    config.ext_authz_routes =
        Some(tollgate::ext_authz::routes::Routes::from_file(&root.join("routes.yaml")).unwrap());
    let (server, http) = InProcess::start_with_http(config).await;
    Setup {
        dirs,
        server,
        http,
        ext_authz,
    }
}

/// A check for pdf-export from Brazil that names neither tenant nor
/// principal: the token does.
fn anonymous_check() -> pb::CheckRequest {
    let mut check = check_str("acme User:bob use Feature:pdf-export");
    check.tenant = String::new();
    check.principal = None;
    check
}

fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn ext_authz_ask(
    address: SocketAddr,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let channel = connect_within(
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".to_string(),
                    path: "/features/pdf-export".to_string(),
                    headers: headers
                        .iter()
                        .map(|(name, value)| (name.to_string(), value.to_string()))
                        .collect(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    };
    let response = AuthorizationClient::new(channel)
        .check(request)
        .await
        .unwrap()
        .into_inner();
    let pairs = |headers: Vec<envoy_types::pb::envoy::config::core::v3::HeaderValueOption>| {
        headers
            .into_iter()
            .filter_map(|option| option.header)
            .map(|header| (header.key, header.value))
            .collect::<Vec<_>>()
    };
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => (200, pairs(ok.headers), String::new()),
        Some(HttpResponse::DeniedResponse(denied)) => (
            u16::try_from(denied.status.unwrap().code).unwrap(),
            pairs(denied.headers),
            denied.body,
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_token_names_the_tenant_and_principal_on_every_front_door() {
    let key = Signer::rsa("rsa-1");
    let setup = setup(&[&key], false).await;
    let token = key.sign(&claims(json!({})));
    let authorization = format!("Bearer {token}");

    // gRPC: the token fills in the tenant and the principal.
    let mut grpc = connect(&setup.server.url()).await;
    let answer = grpc
        .check(bearer(&token, anonymous_check()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(codes(&answer), ["member_role"], "{answer:?}");
    // A request naming another tenant or principal than its token's.
    let mut other = check_str("acme User:bob use Feature:pdf-export");
    other.tenant = "globex".to_string();
    let status = grpc.check(bearer(&token, other)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "tenant: `globex` is not the tenant of the request's token (`acme`)"
    );
    let mut other = check_str("acme User:alice use Feature:pdf-export");
    other.tenant = String::new();
    let status = grpc.check(bearer(&token, other)).await.unwrap_err();
    assert!(
        status
            .message()
            .starts_with("principal: `User::\"alice\"` is not the principal"),
        "{status:?}"
    );
    // A batch: every check gets the token.
    let batch = pb::CheckBatchRequest {
        checks: vec![anonymous_check(), anonymous_check()],
    };
    let answered = grpc
        .check_batch(bearer(&token, batch))
        .await
        .unwrap()
        .into_inner();
    assert!(answered
        .responses
        .iter()
        .all(|r| codes(r) == ["member_role"]));

    // HTTP.
    let mut client = HttpClient::connect(&setup.http).await.unwrap();
    let answer = client
        .post(
            "/v1/check",
            serde_json::to_string(&anonymous_check()).unwrap(),
            &[("authorization", &authorization)],
        )
        .await
        .unwrap();
    assert_eq!(
        answer.json()["decision"],
        "DECISION_ALLOW",
        "{}",
        answer.json()
    );

    // AuthZEN: the tenant from the token (authzen_tenant: token).
    let evaluation = json!({
        "subject": {"type": "User", "id": "bob"}, "action": {"name": "use"},
        "resource": {"type": "Feature", "id": "pdf-export"},
        "context": {"country": "BR", "now": {"__extn": {"fn": "datetime", "arg": "2026-06-01T00:00:00Z"}}},
    });
    let answer = client
        .post(
            "/access/v1/evaluation",
            evaluation.to_string(),
            &[("authorization", &authorization)],
        )
        .await
        .unwrap();
    assert_eq!(answer.json()["decision"], true, "{}", answer.json());
    let mut impostor = evaluation.clone();
    impostor["subject"]["id"] = "alice".into();
    let answer = client
        .post(
            "/access/v1/evaluation",
            impostor.to_string(),
            &[("authorization", &authorization)],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.json());
    assert_eq!(answer.json()["field"], "subject");

    // Envoy: the principal and the tenant come from the token's claims.
    let (status, headers, body) = ext_authz_ask(
        setup.ext_authz,
        &[("authorization", &authorization), ("x-country", "BR")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers.contains(&(
            "x-tollgate-principal".to_string(),
            "User::\"bob\"".to_string()
        )),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("x-tollgate-tenant".to_string(), "acme".to_string())),
        "{headers:?}"
    );
    // Without a token there is no tenant, nor principal.
    let (status, _, body) = ext_authz_ask(setup.ext_authz, &[("x-country", "BR")]).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("the request names no tenant (claim org)"),
        "{body}"
    );
    drop(setup.dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_unauthenticated_naming_the_check() {
    let key = Signer::rsa("rsa-1");
    let stranger = Signer::ec("ec-9");
    let setup = setup(&[&key], true).await;
    let mut grpc = connect(&setup.server.url()).await;
    let mut client = HttpClient::connect(&setup.http).await.unwrap();
    let good = key.sign(&claims(json!({})));
    // One character in the middle of the signature changed (the last one
    // may carry padding bits, whose change is a decoding error instead).
    let mut tampered = good.clone().into_bytes();
    let at = tampered.len() - 20;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let cases = [
        (
            "expired",
            key.sign(&claims(json!({"exp": now_s() - 3600}))),
            "token: expired",
        ),
        (
            "audience",
            key.sign(&claims(json!({"aud": "someone-else"}))),
            "token: audience is not accepted",
        ),
        ("signature", tampered, "token: signature does not verify"),
        (
            "unknown key",
            stranger.sign(&claims(json!({}))),
            "token: no key `ec-9`",
        ),
        (
            "issuer",
            key.sign(&claims(json!({"iss": "https://evil.test/"}))),
            "token: issuer `https://evil.test/` is not trusted",
        ),
        (
            "HS256 with the public key as the secret",
            hs256(&key.public_pem, "rsa-1", &claims(json!({}))),
            "token: algorithm HS256 is not accepted",
        ),
        (
            "alg none",
            unsigned("rsa-1", &claims(json!({}))),
            "token: algorithm",
        ),
    ];
    for (name, token, message) in cases {
        let status = grpc
            .check(bearer(&token, anonymous_check()))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{name}: {status:?}"
        );
        assert!(
            status
                .message()
                .starts_with(&format!("unauthenticated: {message}")),
            "{name}: {:?}",
            status.message()
        );
        let answer = client
            .post(
                "/v1/check",
                serde_json::to_string(&anonymous_check()).unwrap(),
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 401, "{name}");
        assert_eq!(answer.json()["code"], "UNAUTHENTICATED");
        assert_eq!(answer.json()["message"], status.message(), "{name}");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    }
    // Required and missing: refused, not decided.
    let status = grpc
        .check(check_str("acme User:bob use Feature:pdf-export"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "unauthenticated: token: required but none was sent"
    );
    // The good token still passes.
    let answer = grpc
        .check(bearer(&good, anonymous_check()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(codes(&answer), ["member_role"]);
}

fn replace(path: &Path, text: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_set_is_in_force_without_a_restart() {
    let old = Signer::rsa("rsa-1");
    let new = Signer::ec("ec-2");
    let setup = setup(&[&old], false).await;
    let mut grpc = connect(&setup.server.url()).await;
    let old_token = old.sign(&claims(json!({})));
    let new_token = new.sign(&claims(json!({})));
    let status = grpc
        .check(bearer(&new_token, anonymous_check()))
        .await
        .unwrap_err();
    assert!(status.message().contains("no key `ec-2`"), "{status:?}");
    // The issuer rotates: the new key published, the old one withdrawn.
    replace(&setup.dirs.root.path().join("keys.json"), &jwks(&[&new]));
    let server_url = setup.server.url();
    wait_until("the new key in force", || {
        let token = new_token.clone();
        let url = server_url.clone();
        async move {
            let mut grpc = connect(&url).await;
            match grpc.check(bearer(&token, anonymous_check())).await {
                Ok(answer) => Ok(codes(&answer.into_inner())),
                Err(status) => Err(status.message().to_string()),
            }
        }
    })
    .await;
    let status = grpc
        .check(bearer(&old_token, anonymous_check()))
        .await
        .unwrap_err();
    assert!(status.message().contains("no key `rsa-1`"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_reach_the_policies_as_context_token() {
    let key = Signer::ed25519("ed-1");
    let dirs_key = Signer::rsa("rsa-1");
    let setup = setup(&[&dirs_key], false).await;
    // EdDSA is not in the issuer's list.
    let mut grpc = connect(&setup.server.url()).await;
    let status = grpc
        .check(bearer(&key.sign(&claims(json!({}))), anonymous_check()))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("algorithm EdDSA is not accepted"),
        "{status:?}"
    );
    // The request may not set the token's record itself.
    let mut forged = anonymous_check();
    forged.context.insert(
        "token".to_string(),
        pb::Value {
            kind: Some(pb::value::Kind::Record(pb::ValueRecord::default())),
        },
    );
    let status = grpc
        .check(bearer(&dirs_key.sign(&claims(json!({}))), forged))
        .await
        .unwrap_err();
    assert_eq!(
        status.message(),
        "context.token: is where the verified token's claims go; the request may not set it"
    );
    // A claim of the wrong type for the schema is refused by the schema.
    let status = grpc
        .check(bearer(
            &dirs_key.sign(&claims(json!({"email": 7}))),
            anonymous_check(),
        ))
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .starts_with("context.token.email: expected String"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_command_sends_the_token() {
    let key = Signer::rsa("rsa-1");
    let setup = setup(&[&key], true).await;
    let token = key.sign(&claims(json!({})));
    let run = |door: &'static str, address: String, token: Option<String>| {
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
            command
                .args(["check", door, &address, "--tenant", "acme", "--principal", "User:bob"])
                .args(["--action", "use", "--resource", "Feature:pdf-export", "--context"])
                .arg(r#"{"country": "BR", "now": {"__extn": {"fn": "datetime", "arg": "2026-06-01T00:00:00Z"}}}"#);
            if let Some(token) = token {
                command.args(["--token", &token]);
            }
            command.output().unwrap()
        })
    };
    let grpc = setup.server.addr.to_string();
    let http = format!("http://{}", setup.http);
    for (door, address) in [("--remote", grpc), ("--http", http)] {
        let allowed = run(door, address.clone(), Some(token.clone()))
            .await
            .unwrap();
        assert_eq!(allowed.status.code(), Some(0), "{door}: {allowed:?}");
        let refused = run(door, address, None).await.unwrap();
        assert_eq!(refused.status.code(), Some(3), "{door}: {refused:?}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("token: required but none was sent"),
            "{door}: {refused:?}"
        );
    }
}
