//! ListEntitlements through the real server: every listed item is what a
//! `Check` of the same request answers, hints name the cheapest offer of
//! `policies/offers.yaml`, pages follow one another and are bound to the
//! snapshots they were made under, what-if answers are hypothetical and a
//! permission of their own, and a listing reads meter counts without
//! counting anything.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::HashMap;

use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tollgate_testkit::fixtures::document;
use tollgate_testkit::prelude::*;
use tollgate_testkit::redis_server::{put, redis_config, settings, RedisServer};
use tonic::transport::Channel;
use tonic::Code;

/// The context of a listing from the US at [`NOW`].
fn us_context() -> HashMap<String, pb::Value> {
    HashMap::from([
        ("now".to_string(), datetime(NOW)),
        ("country".to_string(), string("US")),
    ])
}

fn listing(tenant: &str, principal: &str) -> pb::ListEntitlementsRequest {
    pb::ListEntitlementsRequest {
        tenant: tenant.to_string(),
        principal: Some(parse_ref(principal)),
        context: us_context(),
        hints: true,
        ..Default::default()
    }
}

async fn list(
    client: &mut EntitlementServiceClient<Channel>,
    request: pb::ListEntitlementsRequest,
) -> pb::ListEntitlementsResponse {
    client
        .list_entitlements(request)
        .await
        .unwrap()
        .into_inner()
}

/// Every page of a listing, followed by its tokens.
async fn list_all(
    client: &mut EntitlementServiceClient<Channel>,
    mut request: pb::ListEntitlementsRequest,
) -> (Vec<pb::EntitlementItem>, usize) {
    let mut items = Vec::new();
    for pages in 1..=100 {
        let page = list(client, request.clone()).await;
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return (items, pages);
        }
        request.page_token = page.next_page_token;
    }
    panic!("more than 100 pages");
}

fn text(reference: Option<&pb::EntityRef>) -> String {
    let reference = reference.unwrap();
    format!("{}:{}", reference.r#type, reference.id)
}

fn allowed(decision: i32) -> bool {
    decision == pb::Decision::Allow as i32
}

/// What a listed item and a `Check` must agree on.
fn outcome(decision: i32, reasons: &[pb::Reason]) -> (bool, Vec<(String, String)>) {
    (
        allowed(decision),
        reasons
            .iter()
            .map(|reason| (reason.code.clone(), reason.policy_id.clone()))
            .collect(),
    )
}

/// The hint as `offer+offer`, `-` for none, `none` for no offer.
fn hint(item: &pb::EntitlementItem) -> String {
    match &item.hint {
        None => "-".to_string(),
        Some(hint) if hint.no_offer => "none".to_string(),
        Some(hint) => hint
            .unlocked_by
            .iter()
            .map(|offer| offer.offer.as_str())
            .collect::<Vec<_>>()
            .join("+"),
    }
}

/// The `Check` a listed item answers: its request with the listing's
/// context, and for a metered item the usage pre-check it was decided with.
fn check_of(
    tenant: &str,
    principal: &str,
    item: &pb::EntitlementItem,
    requested: i64,
) -> pb::CheckRequest {
    let mut context = us_context();
    if let Some(usage) = &item.usage {
        context.insert(
            "usage".to_string(),
            pb::Value {
                kind: Some(pb::value::Kind::Record(pb::ValueRecord {
                    values: HashMap::from([
                        ("used".to_string(), long(usage.used)),
                        ("requested".to_string(), long(requested)),
                        ("limit".to_string(), long(usage.limit)),
                        ("remaining".to_string(), long(usage.remaining)),
                    ]),
                })),
            },
        );
    }
    pb::CheckRequest {
        tenant: tenant.to_string(),
        principal: Some(parse_ref(principal)),
        action: item.action.clone(),
        resource: item.resource.clone(),
        context,
        ..Default::default()
    }
}

/// Asserts that every item is what `Check` answers for the same request.
async fn assert_items_are_checks(
    client: &mut EntitlementServiceClient<Channel>,
    tenant: &str,
    principal: &str,
    items: &[pb::EntitlementItem],
    requested: i64,
) {
    for item in items {
        let answer = client
            .check(check_of(tenant, principal, item, requested))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            outcome(item.decision, &item.reasons),
            outcome(answer.decision, &answer.reasons),
            "{} {}",
            text(item.action.as_ref()),
            text(item.resource.as_ref())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_user_sees_every_item_as_check_answers_it_and_what_would_unlock_it() {
    let dirs = DataDirs::copy_examples();
    let mut config = dirs.config();
    let metrics =
        std::net::SocketAddr::from(([127, 0, 0, 1], tollgate_testkit::redis_server::free_port()));
    config.metrics_listen = Some(metrics);
    let (server, http) = InProcess::start_with_http(config).await;
    let mut client = connect(&server.url()).await;

    let listed = list(&mut client, listing("hooli", "User:gavin")).await;
    // Counted as a listing and its items, not as decisions.
    let (_, exported) =
        tokio::task::spawn_blocking(move || http_get(&metrics.to_string(), "/metrics"))
            .await
            .unwrap();
    assert_eq!(sample(&exported, "tollgate_listings_total"), 1.0);
    assert_eq!(sample(&exported, "tollgate_listed_items_total"), 18.0);
    assert!(
        !exported.contains("tollgate_decisions_total{"),
        "{exported}"
    );
    assert!(listed.next_page_token.is_empty());
    assert!(!listed.hypothetical);
    let freshness = listed.freshness.as_ref().unwrap();
    assert_eq!(freshness.snapshot_version, 1);
    assert_eq!(freshness.source, pb::SnapshotSource::File as i32);
    // 8 features × (use, view) and the account × (administer, manage_billing).
    assert_eq!(listed.items.len(), 18);
    let table: Vec<(String, String, bool, String)> = listed
        .items
        .iter()
        .map(|item| {
            (
                text(item.action.as_ref()),
                text(item.resource.as_ref()),
                allowed(item.decision),
                hint(item),
            )
        })
        .collect();
    let row = |action: &str, resource: &str| {
        table
            .iter()
            .find(|(a, r, _, _)| a == &format!("Action:{action}") && r == resource)
            .map(|(_, _, allow, hint)| (*allow, hint.as_str()))
            .unwrap()
    };
    // Tier walls: the cheapest plan that includes the feature.
    assert_eq!(row("use", "Feature:pdf-export"), (false, "pro"));
    assert_eq!(row("use", "Feature:payments"), (false, "pro"));
    assert_eq!(row("use", "Feature:audit-log"), (false, "enterprise"));
    // An add-on, alone.
    assert_eq!(row("use", "Feature:sso"), (false, "sso"));
    // A tier wall and a seat: the cheapest pair.
    assert_eq!(
        row("use", "Feature:analytics"),
        (false, "pro+analytics-seat")
    );
    // A geo-fence no offer lifts.
    assert_eq!(row("use", "Feature:e-invoicing"), (false, "none"));
    // A role the user lacks.
    assert_eq!(row("manage_billing", "Account:hooli"), (false, "none"));
    // Allowed items carry no hint.
    assert_eq!(row("use", "Feature:dashboards"), (true, "-"));
    assert_eq!(row("view", "Feature:audit-log"), (true, "-"));
    // The offers' details.
    let pdf = listed
        .items
        .iter()
        .find(|item| {
            text(item.resource.as_ref()) == "Feature:pdf-export"
                && item.action.as_ref().unwrap().id == "use"
        })
        .unwrap();
    let offer = &pdf.hint.as_ref().unwrap().unlocked_by[0];
    assert_eq!(
        (
            offer.offer.as_str(),
            offer.kind.as_str(),
            offer.price,
            offer.name.as_str()
        ),
        ("pro", "plan", 49.0, "Pro")
    );
    assert_eq!(pdf.reasons[0].code, "tier_too_low");
    assert_eq!(pdf.reasons[0].policy_id, "tier-too-low");

    assert_items_are_checks(&mut client, "hooli", "User:gavin", &listed.items, 1).await;

    // The HTTP front door lists the same items (its JSON, the proto's mapping).
    let mut http = HttpClient::connect(&http).await.unwrap();
    let body = serde_json::to_value(listing("hooli", "User:gavin")).unwrap();
    let answer = http.post_json("/v1/entitlements", &body).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let over_http: pb::ListEntitlementsResponse = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(over_http.items, listed.items);

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_pages_cover_the_listing_once_and_a_token_outlives_no_change() {
    let dirs = DataDirs::copy_examples();
    let server = InProcess::start(dirs.config()).await;
    let mut client = connect(&server.url()).await;

    let whole = list(&mut client, listing("acme", "User:alice")).await;
    assert_eq!(whole.items.len(), 18);

    // Pages of 5 follow one another: the same items, in the same order.
    let mut paged = listing("acme", "User:alice");
    paged.page_size = 5;
    let (items, pages) = list_all(&mut client, paged.clone()).await;
    assert_eq!(pages, 4);
    assert_eq!(items, whole.items);

    // Filters: only DENYs of `use` on features.
    let mut denials = listing("acme", "User:alice");
    denials.decision = pb::Decision::Deny as i32;
    denials.actions = vec![entity_ref("Action", "use")];
    denials.resource_types = vec!["Feature".to_string()];
    let denied = list(&mut client, denials).await;
    let expected: Vec<&pb::EntitlementItem> = whole
        .items
        .iter()
        .filter(|item| !allowed(item.decision))
        .filter(|item| item.action.as_ref().unwrap().id == "use")
        .filter(|item| item.resource.as_ref().unwrap().r#type == "Feature")
        .collect();
    assert_eq!(denied.items.iter().collect::<Vec<_>>(), expected);
    assert!(!denied.items.is_empty());

    // A token is refused for another listing ...
    let first = list(&mut client, paged.clone()).await;
    let mut other = paged.clone();
    other.principal = Some(parse_ref("User:bob"));
    other.page_token = first.next_page_token.clone();
    let status = client.list_entitlements(other).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("page_token: made for another listing"),
        "{}",
        status.message()
    );
    // ... and once the snapshot it was made under has changed.
    let path = dirs.entitlements.join("acme.json");
    let newer = document("acme", 2, |_| {});
    replace_file(&path, &newer);
    wait_until("acme at version 2", || {
        let mut client = client.clone();
        async move {
            let page = list(&mut client, listing("acme", "User:alice")).await;
            let version = page.freshness.unwrap().snapshot_version;
            if version == 2 {
                Ok(())
            } else {
                Err(format!("version {version}"))
            }
        }
    })
    .await;
    let mut stale = paged.clone();
    stale.page_token = first.next_page_token;
    let status = client.list_entitlements(stale).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("snapshot version 1")
            && status.message().ends_with("list again from the first page"),
        "{}",
        status.message()
    );

    // Bad requests name their field.
    for (edit, code, message) in [
        (
            (|r: &mut pb::ListEntitlementsRequest| r.page_size = 5000)
                as fn(&mut pb::ListEntitlementsRequest),
            Code::InvalidArgument,
            "page_size: 5000 exceeds the limit of 1000",
        ),
        (
            |r| r.actions = vec![entity_ref("Action", "fly")],
            Code::InvalidArgument,
            "actions[0]: action `Action::\"fly\"` is not declared in the schema",
        ),
        (
            |r| r.resource_types = vec!["Spaceship".to_string()],
            Code::InvalidArgument,
            "resource_types[0]: entity type `Spaceship` is not declared in the schema",
        ),
        (
            |r| r.page_token = "bm90IGEgdG9rZW4".to_string(),
            Code::InvalidArgument,
            "page_token: not a page token of this listing API",
        ),
        (
            |r| r.tenant = "nobody".to_string(),
            Code::NotFound,
            "tenant `nobody` has no entitlement snapshot",
        ),
        (
            |r| r.principal = None,
            Code::InvalidArgument,
            "principal: required",
        ),
    ] {
        let mut request = listing("acme", "User:alice");
        edit(&mut request);
        let status = client.list_entitlements(request).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (code, message));
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_answers_are_hypothetical_and_need_their_own_permission() {
    let dirs = DataDirs::copy_examples();
    let tokens = tempfile::tempdir().unwrap();
    std::fs::write(
        tokens.path().join("pricing.token"),
        "pricing-page-token-0123456789",
    )
    .unwrap();
    std::fs::write(
        tokens.path().join("shop.token"),
        "storefront-token-0123456789",
    )
    .unwrap();
    let callers = tokens.path().join("callers.yaml");
    std::fs::write(
        &callers,
        "callers:\n  - name: pricing\n    token_file: pricing.token\n    operations: [check, consume, list_entitlements, what_if]\n    tenants: ['*']\n  - name: shop\n    token_file: shop.token\n    operations: [check, list_entitlements]\n    tenants: ['*']\n",
    )
    .unwrap();
    let log = tokens.path().join("decisions.jsonl");
    let mut config = dirs.config();
    config.callers_file = Some(callers);
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
    let server = InProcess::start(config).await;
    let channel = channel(&server.url()).await;
    let with_token = |token: &'static str| {
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            Ok(request)
        }
    };
    let mut pricing = EntitlementServiceClient::with_interceptor(
        channel.clone(),
        with_token("pricing-page-token-0123456789"),
    );
    let mut shop = EntitlementServiceClient::with_interceptor(
        channel,
        with_token("storefront-token-0123456789"),
    );

    let on_pro = || {
        vec![
            pb::AttributeOverride {
                entity: Some(entity_ref("Account", "hooli")),
                attribute: "plan".to_string(),
                value: Some(string("pro")),
            },
            pb::AttributeOverride {
                entity: Some(entity_ref("Account", "hooli")),
                attribute: "tier".to_string(),
                value: Some(long(1)),
            },
        ]
    };
    let mut request = check("hooli", "User:gavin", "use", "Feature:pdf-export");
    let real = pricing.check(request.clone()).await.unwrap().into_inner();
    assert_eq!(decision(&real), pb::Decision::Deny);
    assert!(!real.hypothetical);
    request.what_if = on_pro();
    let what_if = pricing.check(request.clone()).await.unwrap().into_inner();
    assert_eq!(decision(&what_if), pb::Decision::Allow);
    assert!(what_if.hypothetical);
    // The snapshot itself did not change.
    let again = pricing
        .check(check("hooli", "User:gavin", "use", "Feature:pdf-export"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decision(&again), pb::Decision::Deny);

    // A listing under the same overrides: pdf-export allowed, hypothetical.
    let mut hypothetical = listing("hooli", "User:gavin");
    hypothetical.what_if = on_pro();
    let listed = pricing
        .list_entitlements(hypothetical.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.hypothetical);
    let pdf = listed
        .items
        .iter()
        .find(|item| {
            item.action.as_ref().unwrap().id == "use"
                && item.resource.as_ref().unwrap().id == "pdf-export"
        })
        .unwrap();
    assert!(allowed(pdf.decision));

    // A caller without `what_if` is refused both, and may still ask the
    // real questions.
    let status = shop.check(request.clone()).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "caller `shop` may not use what_if here"
        )
    );
    let status = shop.list_entitlements(hypothetical).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(shop
        .list_entitlements(listing("hooli", "User:gavin"))
        .await
        .is_ok());

    // Overrides are checked against the schema and the snapshot.
    for (entity, attribute, value, message) in [
        (
            "Account:hooli",
            "plan",
            long(3),
            "what_if: `Account::\"hooli\"`.plan: ",
        ),
        (
            "Account:hooli",
            "color",
            string("red"),
            "what_if: `Account` has no attribute `color` in the schema",
        ),
        (
            "Account:nobody",
            "plan",
            string("pro"),
            "what_if: `Account::\"nobody\"` is not an entity of tenant `hooli`'s snapshot",
        ),
    ] {
        let mut bad = check("hooli", "User:gavin", "use", "Feature:pdf-export");
        bad.what_if = vec![pb::AttributeOverride {
            entity: Some(parse_ref(entity)),
            attribute: attribute.to_string(),
            value: Some(value),
        }];
        let status = pricing.check(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with(message),
            "{}",
            status.message()
        );
    }
    // A what-if check cannot consume.
    let mut consuming = request.clone();
    consuming.consume = Some(pb::Consume {
        meter: "api-calls".to_string(),
        amount: 1,
        idempotency_key: "k".to_string(),
    });
    let status = pricing.check(consuming).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "consume: a what-if check cannot consume; send what_if without consume"
        )
    );
    server.stop().await.unwrap();

    // The decision log marks the what-if answer, and only it.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let marked: Vec<&serde_json::Value> = records.iter().filter(|r| r["what_if"] == true).collect();
    assert_eq!(marked.len(), 1, "{records:#?}");
    assert_eq!(marked[0]["decision"], "ALLOW");
    assert_eq!(marked[0]["decision_id"], what_if.decision_id);
    assert_eq!(records.len(), 3, "{records:#?}");
}

/// hooli's snapshot in Redis with `Meter::"api-calls"` limited to `limit`.
fn hooli(version: u64, limit: i64) -> String {
    document("hooli", version, |value| {
        tollgate_testkit::fixtures::entity(value, "Meter", "api-calls")["attrs"]["limit"] =
            limit.into();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_reads_meters_in_one_round_trip_and_counts_nothing() {
    let redis = RedisServer::start();
    let conn = tollgate::store::redis_client::RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put(&conn, &hooli(1, 10)).await;
    let dirs = DataDirs::copy_examples();
    // Patient Redis calls: a busy machine must not turn a count into
    // `metering_unavailable`.
    let mut patient = settings(vec![redis.url()]);
    patient.timeout = std::time::Duration::from_secs(2);
    let server = InProcess::start(redis_config(&dirs, patient)).await;
    let mut client = connect(&server.url()).await;
    // 8 of the 10 units used.
    let mut consume = check("hooli", "User:gavin", "use", "Feature:api");
    consume.consume = Some(pb::Consume {
        meter: "api-calls".to_string(),
        amount: 8,
        idempotency_key: "first".to_string(),
    });
    assert_eq!(
        decision(&client.check(consume).await.unwrap().into_inner()),
        pb::Decision::Allow
    );
    let keys_before: Vec<String> = redis.command(&["KEYS", "*"]);
    let stream_before: i64 = redis.command(&["XLEN", "tollgate:{hooli}:usage"]);

    let api = |listed: &pb::ListEntitlementsResponse| {
        listed
            .items
            .iter()
            .find(|item| {
                item.action.as_ref().unwrap().id == "use"
                    && item.resource.as_ref().unwrap().id == "api"
            })
            .cloned()
            .unwrap()
    };
    // 1 unit asked: allowed, with the meter's state.
    let listed = list(&mut client, listing("hooli", "User:gavin")).await;
    let item = api(&listed);
    assert!(allowed(item.decision));
    let usage = item.usage.clone().unwrap();
    assert_eq!(
        (
            usage.meter.as_str(),
            usage.used,
            usage.limit,
            usage.remaining
        ),
        ("api-calls", 8, 10, 2)
    );
    assert!(usage.period_end_unix_ms > 0);
    assert_items_are_checks(&mut client, "hooli", "User:gavin", &listed.items, 1).await;
    // 5 units asked: over the cap, and the plan whose allowance admits them.
    let mut five = listing("hooli", "User:gavin");
    five.requested = 5;
    let listed = list(&mut client, five).await;
    let item = api(&listed);
    assert!(!allowed(item.decision));
    assert_eq!(item.reasons[0].code, "cap_exceeded");
    assert_eq!(hint(&item), "pro");
    assert_items_are_checks(&mut client, "hooli", "User:gavin", &listed.items, 5).await;

    // Nothing was counted or written: the same keys, the same stream.
    let keys_after: Vec<String> = redis.command(&["KEYS", "*"]);
    let mut sorted = (keys_before.clone(), keys_after.clone());
    sorted.0.sort();
    sorted.1.sort();
    assert_eq!(sorted.0, sorted.1);
    let stream_after: i64 = redis.command(&["XLEN", "tollgate:{hooli}:usage"]);
    assert_eq!(stream_before, stream_after);
    let count: Vec<Option<i64>> = redis.command(&["MGET", &counter_key(&keys_after)]);
    assert_eq!(count, vec![Some(8)]);
    server.stop().await.unwrap();
}

/// The one counter key among `keys`.
fn counter_key(keys: &[String]) -> String {
    let counters: Vec<&String> = keys
        .iter()
        .filter(|key| {
            key.starts_with("tollgate:{hooli}:usage:api-calls:") && !key.ends_with(":leases")
        })
        .collect();
    assert_eq!(counters.len(), 1, "{keys:?}");
    counters[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authzen_searches_answer_from_the_listing() {
    let dirs = DataDirs::copy_examples();
    let mut config = dirs.config();
    config.authzen.tenant = vec![tollgate::http::authzen::TenantFrom::Fixed(
        "hooli".to_string(),
    )];
    let (server, http) = InProcess::start_with_http(config).await;
    let mut http = HttpClient::connect(&http).await.unwrap();
    let context = serde_json::json!({
        "now": {"__extn": {"fn": "datetime", "arg": NOW}},
        "country": "US",
    });
    let answer = http
        .post_json(
            "/access/v1/search/resource",
            &serde_json::json!({
                "subject": {"type": "User", "id": "gavin"},
                "action": {"name": "use"},
                "resource": {"type": "Feature"},
                "context": context,
            }),
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let body = answer.json();
    assert_eq!(
        body["results"],
        serde_json::json!([
            {"type": "Feature", "id": "api"},
            {"type": "Feature", "id": "dashboards"},
        ])
    );
    assert_eq!(body["page"]["next_token"], "");

    let answer = http
        .post_json(
            "/access/v1/search/action",
            &serde_json::json!({
                "subject": {"type": "User", "id": "gavin"},
                "resource": {"type": "Feature", "id": "pdf-export"},
                "context": context,
            }),
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.json()["results"],
        serde_json::json!([{"name": "view"}])
    );

    // The configuration names the searches.
    let configuration = http
        .get("/.well-known/authzen-configuration")
        .await
        .unwrap();
    assert!(configuration.json()["search_resource_endpoint"]
        .as_str()
        .unwrap()
        .ends_with("/access/v1/search/resource"));

    // A search without its action is refused, naming it.
    let answer = http
        .post_json(
            "/access/v1/search/resource",
            &serde_json::json!({
                "subject": {"type": "User", "id": "gavin"},
                "resource": {"type": "Feature"},
            }),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["message"], "action: is required");
    server.stop().await.unwrap();
}

#[test]
fn a_wrong_offers_file_is_refused_with_its_problems() {
    let dirs = DataDirs::copy_examples();
    std::fs::write(
        dirs.policies.join("offers.yaml"),
        "offers:\n  - id: pro\n    kind: plan\n    price: 49\n    changes:\n      account: {set: {plan: 3}}\n      'Widget::\"x\"': {set: {a: 1}}\n  - id: pro\n    kind: addon\n    price: -1\n    changes: {}\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["validate", "--policies"])
        .arg(&dirs.policies)
        .arg("--entitlements")
        .arg(&dirs.entitlements)
        .env_clear()
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{out}");
    for expected in [
        "offers.yaml: offer `pro`, `account`: `plan`: type mismatch: value was expected to have type string, but it actually has type long: `3`",
        "offers.yaml: offer `pro`, `Widget::\"x\"`: entity type `Widget` is not declared in the schema",
        "offers.yaml: offer `pro` is declared twice",
    ] {
        assert!(out.contains(expected), "{expected}\n{out}");
    }
}
