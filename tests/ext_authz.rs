//! Envoy's external authorization end to end: a gRPC client of
//! `envoy.service.auth.v3.Authorization` (the service Envoy calls) asks
//! about HTTP requests, and gets ALLOW with upstream headers, 403 with the
//! reasons, 429 with `Retry-After` once a route's meter is spent, 503 while
//! Redis is down, route parameters as resource ids, and 401 without an
//! identity.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tollgate::ext_authz::routes::Routes;
use tollgate_testkit::fixtures::{document, entity};
use tollgate_testkit::prelude::*;
use tollgate_testkit::redis_server::{free_port, put, redis_config, settings, RedisServer};
use tonic::transport::Channel;

const ROUTES: &str = r#"
tenant: {header: x-tenant-id}
principal: {header: x-user-id, type: User}
context:
  country: {header: x-country}
  now: {now: true}
upstream_headers: [tenant, principal, reason, remaining]
routes:
  - name: feature
    method: GET
    path: /features/{feature}
    action: use
    resource: {type: Feature, id: "{feature}"}
  - name: api
    path: /api/**
    action: use
    resource: {type: Feature, id: api}
    consume: {meter: api-calls}
"#;

async fn ext_authz_server(
    mut config: tollgate::config::Config,
) -> (InProcess, AuthorizationClient<Channel>) {
    let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.ext_authz_listen = Some(address);
    if config.ext_authz_routes.is_none() {
        config.ext_authz_routes = Some(Routes::parse(ROUTES).unwrap());
    }
    let server = InProcess::start(config).await;
    let channel = connect_within(
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap(),
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap();
    (server, AuthorizationClient::new(channel))
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.to_string(),
                    path: path.to_string(),
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
    }
}

/// What Envoy would do with an answer.
#[derive(Debug)]
struct Answer {
    code: i32,
    /// 200 for an allowed request.
    status: u16,
    headers: HashMap<String, String>,
    body: serde_json::Value,
}

fn answer(response: CheckResponse) -> Answer {
    let code = response.status.map_or(-1, |status| status.code);
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => Answer {
            code,
            status: 200,
            headers: ok
                .headers
                .into_iter()
                .filter_map(|option| option.header)
                .map(|header| (header.key, header.value))
                .collect(),
            body: serde_json::Value::Null,
        },
        Some(HttpResponse::DeniedResponse(denied)) => Answer {
            code,
            status: u16::try_from(denied.status.map_or(0, |status| status.code)).unwrap(),
            headers: denied
                .headers
                .into_iter()
                .filter_map(|option| option.header)
                .map(|header| (header.key, header.value))
                .collect(),
            body: serde_json::from_str(&denied.body).unwrap(),
        },
        other => panic!("no HTTP response: {other:?}"),
    }
}

async fn ask(client: &mut AuthorizationClient<Channel>, request: CheckRequest) -> Answer {
    answer(client.check(request).await.unwrap().into_inner())
}

const BOB: &[(&str, &str)] = &[
    ("x-tenant-id", "acme"),
    ("x-user-id", "bob"),
    ("x-country", "BR"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_allowed_or_denied_by_route_with_reasons() {
    let dirs = DataDirs::copy_examples();
    let (_server, mut client) = ext_authz_server(dirs.config()).await;

    // Allowed: OK, with the decision id and the configured headers upstream.
    let allowed = ask(
        &mut client,
        request("GET", "/features/pdf-export?download=1", BOB),
    )
    .await;
    assert_eq!((allowed.code, allowed.status), (0, 200), "{allowed:?}");
    assert_eq!(allowed.headers["x-tollgate-decision-id"].len(), 32);
    assert_eq!(allowed.headers["x-tollgate-tenant"], "acme");
    assert_eq!(allowed.headers["x-tollgate-principal"], "User::\"bob\"");
    assert_eq!(allowed.headers["x-tollgate-reason"], "member_role");

    // The path parameter is the resource: another feature, another answer.
    let gavin = [
        ("x-tenant-id", "hooli"),
        ("x-user-id", "gavin"),
        ("x-country", "BR"),
    ];
    let denied = ask(&mut client, request("GET", "/features/pdf-export", &gavin)).await;
    assert_eq!((denied.code, denied.status), (7, 403), "{denied:?}");
    assert_eq!(denied.body["decision"], "DENY");
    assert_eq!(
        denied.body["reasons"][0]["code"], "tier_too_low",
        "{denied:?}"
    );
    assert!(denied.body["reasons"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("upgrade"));
    assert_eq!(denied.headers["content-type"], "application/json");
    assert_eq!(
        denied.headers["x-tollgate-decision-id"],
        denied.body["decision_id"].as_str().unwrap()
    );
    let geo = [
        ("x-tenant-id", "acme"),
        ("x-user-id", "bob"),
        ("x-country", "CN"),
    ];
    let denied = ask(&mut client, request("GET", "/features/payments", &geo)).await;
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.body["reasons"][0]["code"], "geo_restricted",
        "{denied:?}"
    );

    // No route: denied, fail closed. A method the route does not take: the same.
    let none = ask(&mut client, request("GET", "/elsewhere", BOB)).await;
    assert_eq!(none.status, 403);
    assert_eq!(none.body["reasons"][0]["code"], "no_route");
    let none = ask(&mut client, request("DELETE", "/features/sso", BOB)).await;
    assert_eq!(none.body["reasons"][0]["code"], "no_route");

    // No identity: 401, naming what is missing.
    let anonymous = ask(
        &mut client,
        request("GET", "/features/sso", &[("x-tenant-id", "acme")]),
    )
    .await;
    assert_eq!(
        (anonymous.code, anonymous.status),
        (16, 401),
        "{anonymous:?}"
    );
    assert_eq!(
        anonymous.body["message"],
        "the request names no principal (header x-user-id)"
    );
    // A request the decision service refuses: its status and message.
    let unknown = ask(
        &mut client,
        request(
            "GET",
            "/features/sso",
            &[("x-tenant-id", "a{b}"), ("x-user-id", "bob")],
        ),
    )
    .await;
    assert_eq!((unknown.code, unknown.status), (3, 400), "{unknown:?}");
    assert_eq!(unknown.body["code"], "INVALID_ARGUMENT");
    assert_eq!(unknown.body["field"], "tenant");
}

/// acme with `Meter::"api-calls"` limited to `limit` a month.
fn metered_acme(limit: i64) -> String {
    document("acme", 1, |value| {
        entity(value, "Meter", "api-calls")["attrs"]["limit"] = limit.into();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_consumes_its_meter_until_the_cap_then_redis_going_away_is_503() {
    let mut redis = RedisServer::start();
    let conn = tollgate::store::redis_client::RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put(&conn, &metered_acme(3)).await;
    let dirs = DataDirs::copy_examples();
    let (_server, mut client) =
        ext_authz_server(redis_config(&dirs, settings(vec![redis.url()]))).await;
    let call = |id: &str| {
        let mut headers = BOB.to_vec();
        headers.push(("x-request-id", id));
        request("POST", "/api/v1/reports", &headers)
    };
    for (index, id) in ["r1", "r2", "r3"].into_iter().enumerate() {
        let allowed = ask(&mut client, call(id)).await;
        assert_eq!(allowed.status, 200, "{allowed:?}");
        assert_eq!(
            allowed.headers["x-tollgate-remaining"],
            (2 - index).to_string(),
            "{allowed:?}"
        );
    }
    // A retry of a counted request (same x-request-id) is answered alike
    // and not counted again.
    let retried = ask(&mut client, call("r3")).await;
    assert_eq!(retried.status, 200, "{retried:?}");
    // The cap: 429, and when to come back.
    let capped = ask(&mut client, call("r4")).await;
    assert_eq!((capped.code, capped.status), (8, 429), "{capped:?}");
    assert_eq!(capped.body["reasons"][0]["code"], "cap_exceeded");
    let retry_after: u64 = capped.headers["retry-after"].parse().unwrap();
    assert!((1..=31 * 86_400).contains(&retry_after), "{retry_after}");
    assert_eq!(capped.body["usage"]["used"], "3");
    assert_eq!(capped.body["usage"]["limit"], "3");

    // Redis gone: nothing can be counted, so nothing is let through.
    redis.kill();
    let unavailable = ask(&mut client, call("r5")).await;
    assert_eq!(
        (unavailable.code, unavailable.status),
        (14, 503),
        "{unavailable:?}"
    );
    assert_eq!(
        unavailable.body["reasons"][0]["code"], "metering_unavailable",
        "{unavailable:?}"
    );
    assert_eq!(unavailable.headers["retry-after"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_route_table_is_in_force_without_a_restart() {
    let dirs = DataDirs::copy_examples();
    let file = dirs.root.path().join("routes.yaml");
    std::fs::write(&file, ROUTES).unwrap();
    let mut config = dirs.config();
    config.credentials_poll = std::time::Duration::from_millis(100);
    config.ext_authz_file = Some(file.clone());
    let (_server, mut client) = ext_authz_server(config).await;
    let docs = || request("GET", "/docs/pdf-export", BOB);
    let before = ask(&mut client, docs()).await;
    assert_eq!(before.body["reasons"][0]["code"], "no_route");
    // A route added to the file.
    let changed = format!(
        "{ROUTES}  - path: /docs/{{feature}}\n    action: use\n    resource: {{type: Feature, id: \"{{feature}}\"}}\n"
    );
    let staged = file.with_extension("new");
    std::fs::write(&staged, &changed).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    let mut probe = client.clone();
    wait_until("the new route in force", || {
        let mut client = probe.clone();
        async move {
            let answer = ask(&mut client, docs()).await;
            if answer.status == 200 {
                Ok(())
            } else {
                Err(format!("{answer:?}"))
            }
        }
    })
    .await;
    // A broken table: the one in force stays.
    std::fs::write(&staged, "tenant: {header: x}\nroutes: [").unwrap();
    std::fs::rename(&staged, &file).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let after = ask(&mut probe, docs()).await;
    assert_eq!(after.status, 200, "{after:?}");
}
