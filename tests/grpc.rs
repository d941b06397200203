//! The gRPC API end to end: an in-process server (`serve_on`) on a loopback
//! port, driven by real tonic clients.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::HashSet;

use prost::Message;
use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tollgate::api::pb::Decision::{Allow, Deny};
use tollgate_engine::PolicyErrorMode;
use tollgate_testkit::prelude::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A server over the repository's example data (read only).
async fn example_server() -> InProcess {
    InProcess::start(tollgate::config::Config::with_dirs(
        example_policies(),
        example_entitlements(),
    ))
    .await
}

fn assert_invalid(status: &tonic::Status, message_start: &str, contains: &[&str]) {
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "expected INVALID_ARGUMENT, got {status:?}"
    );
    assert!(
        status.message().starts_with(message_start),
        "message should start with {message_start:?}: {:?}",
        status.message()
    );
    for needle in contains {
        assert!(
            status.message().contains(needle),
            "message should contain {needle:?}: {:?}",
            status.message()
        );
    }
}

// ---------------------------------------------------------------------------
// Decisions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_names_the_granting_policy() {
    let server = example_server().await;
    let mut client = connect(&server.url()).await;

    let response = decide(
        &mut client,
        check_str("acme User:bob use Feature:pdf-export"),
    )
    .await;
    expect_reasons(&response, Allow, &["member_role"], &["members-use"]);
    assert_eq!(response.reasons[0].effect, pb::Effect::Permit as i32);
    assert_eq!(
        response.reasons[0].message,
        "members may use features their plan includes"
    );
    assert!(response.errors.is_empty(), "{:?}", response.errors);

    let cases: &[Case] = &[
        // Roles inherit: an admin may do what a member may.
        (
            "acme User:alice use Feature:sso",
            Allow,
            &["member_role"],
            &[],
        ),
        (
            "acme User:carol view Feature:audit-log",
            Allow,
            &["viewer_role"],
            &[],
        ),
        (
            "acme User:alice administer Account:acme",
            Allow,
            &["admin_role"],
            &["admins-administer"],
        ),
        // Billing stays open after a trial ended, so that the account can subscribe.
        (
            "globex User:frank manage_billing Account:globex",
            Allow,
            &["billing_admin_role"],
            &[],
        ),
        // An enterprise account gets the top tier.
        ("initech User:peter use Feature:audit-log", Allow, &[], &[]),
    ];
    expect_cases(&mut client, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_deny_carries_its_reason_code() {
    let server = example_server().await;
    let mut client = connect(&server.url()).await;

    // Plan too small: pro account, enterprise feature. Other annotations pass through.
    let response = decide(
        &mut client,
        check_str("acme User:bob use Feature:audit-log"),
    )
    .await;
    expect_reasons(&response, Deny, &["tier_too_low"], &["tier-too-low"]);
    let reason = &response.reasons[0];
    assert_eq!(reason.effect, pb::Effect::Forbid as i32);
    assert_eq!(
        reason.message,
        "this feature is not included in your plan; upgrade to use it"
    );
    assert_eq!(
        reason.annotations.get("upgrade_to").map(String::as_str),
        Some("pro"),
        "{:?}",
        reason.annotations
    );
    assert!(
        !reason.annotations.contains_key("code"),
        "{:?}",
        reason.annotations
    );

    let cases: &[Case] = &[
        // Add-on not bought: hooli (free, no add-ons) and the sso feature.
        (
            "hooli User:gavin use Feature:sso",
            Deny,
            &["addon_required"],
            &["addon-missing"],
        ),
        // ... while the same free account may use a tier-0 feature.
        ("hooli User:gavin use Feature:dashboards", Allow, &[], &[]),
        // Trial over.
        (
            "globex User:erin use Feature:dashboards",
            Deny,
            &["trial_expired"],
            &["trial-expired"],
        ),
        // An admin may only administer their own account.
        (
            "acme User:alice administer Account:globex",
            Deny,
            &["no_permit"],
            &[],
        ),
    ];
    expect_cases(&mut client, cases).await;

    // Geo-fence.
    let mut request = check_str("acme User:bob use Feature:payments");
    request.context.insert("country".to_string(), string("CN"));
    let response = decide(&mut client, request).await;
    expect_reasons(
        &response,
        Deny,
        &["geo_restricted"],
        &["outside-allowed-countries"],
    );
    let response = decide(&mut client, check_str("acme User:bob use Feature:payments")).await;
    assert_eq!(
        decision(&response),
        Allow,
        "BR is allowed: {}",
        summary(&response)
    );

    // A trial is not over before it ended.
    let mut request = check_str("globex User:erin use Feature:dashboards");
    request
        .context
        .insert("now".to_string(), datetime("2026-06-01T00:00:00Z"));
    let response = decide(&mut client, request).await;
    assert_decision(&response, Allow);

    // Nothing grants it: a viewer may view but not use.
    let response = decide(
        &mut client,
        check_str("acme User:carol use Feature:dashboards"),
    )
    .await;
    expect_reasons(&response, Deny, &["no_permit"], &[""]);
    assert_eq!(response.reasons[0].effect, pb::Effect::Unspecified as i32);
    assert!(!response.reasons[0].message.is_empty());

    // No snapshot for the tenant.
    let response = decide(
        &mut client,
        check_str("umbrella User:bob use Feature:pdf-export"),
    )
    .await;
    expect_reasons(&response, Deny, &["unknown_tenant"], &[""]);
    let freshness = response.freshness.as_ref().expect("freshness");
    assert_eq!(freshness.snapshot_version, 0);
    assert_eq!(freshness.source, pb::SnapshotSource::Unspecified as i32);
    assert!(!freshness.policy_version.is_empty());

    // A principal the tenant does not know (strict principals, the default),
    // including one that exists in another tenant.
    for principal in ["User:mallory", "User:erin"] {
        let request = check("acme", principal, "use", "Feature:dashboards");
        let response = decide(&mut client, request).await;
        assert_decision(&response, Deny);
        assert_eq!(codes(&response), ["unknown_principal"], "{principal}");
        assert_eq!(snapshot_version(&response), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_principal_gets_cedars_answer_when_not_strict() {
    // Fail-closed policy errors (the default): the forbids that read
    // `principal.account` cannot evaluate for a principal with no entity.
    let mut config =
        tollgate::config::Config::with_dirs(example_policies(), example_entitlements());
    config.options.strict_principals = false;
    let server = InProcess::start(config.clone()).await;
    let mut client = connect(&server.url()).await;
    let mallory_views = || check_str("acme User:mallory view Feature:dashboards");
    let response = decide(&mut client, mallory_views()).await;
    expect_reasons(&response, Deny, &["policy_error"], &["trial-expired"]);
    assert!(
        !codes(&response).contains(&"unknown_principal".to_string()),
        "{}",
        summary(&response)
    );
    assert!(
        response
            .errors
            .iter()
            .any(|e| e.policy_id == "trial-expired"),
        "{:?}",
        response.errors
    );

    // Cedar's own rule: the failing forbid is ignored and nothing grants.
    config.options.policy_errors = PolicyErrorMode::Cedar;
    let server = InProcess::start(config.clone()).await;
    let mut client = connect(&server.url()).await;
    let response = decide_expect(&mut client, mallory_views(), Deny, &["no_permit"]).await;
    assert!(!response.errors.is_empty(), "errors are still reported");

    // A principal brought as a request-scoped entity is decided normally.
    let mut request = check_str("acme User:mallory use Feature:pdf-export");
    request.entities.push(pb::Entity {
        uid: Some(entity_ref("User", "mallory")),
        attrs: [("account".to_string(), entity_value("Account", "acme"))].into(),
        parents: vec![entity_ref("Role", "member")],
        tags: Default::default(),
    });
    decide_expect(&mut client, request, Allow, &["member_role"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_and_decision_ids() {
    let server = example_server().await;
    let mut client = connect(&server.url()).await;
    let mut versions = HashSet::new();
    let mut ids = HashSet::new();
    for _ in 0..20 {
        for request in [
            check_str("acme User:bob use Feature:pdf-export"),
            check_str("hooli User:gavin use Feature:sso"),
        ] {
            let response = decide(&mut client, request).await;
            let freshness = response.freshness.clone().expect("freshness is always set");
            assert!(!freshness.policy_version.is_empty());
            assert_eq!(freshness.snapshot_version, 1);
            assert_eq!(freshness.source, pb::SnapshotSource::File as i32);
            versions.insert(freshness.policy_version);
            assert!(!response.decision_id.is_empty());
            assert!(
                ids.insert(response.decision_id.clone()),
                "duplicate decision_id {}",
                response.decision_id
            );
        }
    }
    let batch = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![check_str("acme User:bob use Feature:pdf-export"); 5],
        })
        .await
        .expect("batch")
        .into_inner();
    for response in &batch.responses {
        versions.insert(policy_version(response));
        assert!(
            ids.insert(response.decision_id.clone()),
            "duplicate decision_id"
        );
    }
    assert_eq!(versions.len(), 1, "one policy set serves: {versions:?}");

    // A second client sees the same policy version.
    let mut other = connect(&server.url()).await;
    let response = decide(
        &mut other,
        check_str("initech User:milton view Feature:sso"),
    )
    .await;
    assert!(versions.contains(&policy_version(&response)));
    assert!(ids.insert(response.decision_id));
}

// ---------------------------------------------------------------------------
// Bad input.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let server = example_server().await;
    let mut client = connect(&server.url()).await;
    let valid = || check_str("acme User:bob use Feature:pdf-export");

    let mut request = valid();
    request.tenant = String::new();
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "tenant: must not be empty", &[]);

    let mut request = valid();
    request.tenant = "a{b}".to_string();
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "tenant: only letters, digits", &[]);

    let mut request = valid();
    request.principal = None;
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "principal: required", &[]);

    let mut request = valid();
    request.principal = Some(entity_ref("User", ""));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "principal.id: must not be empty", &[]);

    let mut request = valid();
    request.resource = Some(entity_ref("", "pdf-export"));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "resource.type: must not be empty", &[]);

    // Ids are bounded: at the bound a request is decided, past it refused.
    let longest = "b".repeat(tollgate_engine::MAX_ID_BYTES);
    let mut request = valid();
    request.principal = Some(entity_ref("User", &longest));
    let answered = send(&mut client, request).await.unwrap();
    assert_eq!(codes(&answered), ["unknown_principal"], "{answered:?}");
    let mut request = valid();
    request.principal = Some(entity_ref("User", &format!("{longest}b")));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "principal.id: longer than 1024 bytes", &[]);
    let mut request = valid();
    request.action = Some(entity_ref("Action", &format!("{longest}u")));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "action.id: longer than 1024 bytes", &[]);
    let mut request = valid();
    request.consume = Some(pb::Consume {
        meter: format!("{longest}m"),
        amount: 1,
        idempotency_key: "k".to_string(),
    });
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "consume.meter: longer than 1024 bytes", &[]);

    let mut request = valid();
    request.principal = Some(entity_ref("Usr", "bob"));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(
        &status,
        "principal.type: entity type `Usr` is not declared in the schema",
        &[],
    );

    let mut request = valid();
    request.action = Some(entity_ref("Action", "fly"));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(
        &status,
        "action: action `Action::\"fly\"` is not declared in the schema",
        &[],
    );

    let mut request = valid();
    request.action = None;
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "action: required", &[]);

    // `use` applies to features, not accounts.
    let mut request = valid();
    request.resource = Some(entity_ref("Account", "acme"));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(
        &status,
        "resource.type: resource type `Account` is not valid for `Action::\"use\"`",
        &[],
    );

    // A principal type that exists but is not valid for the action.
    let mut request = valid();
    request.principal = Some(entity_ref("Feature", "sso"));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(
        &status,
        "principal.type: principal type `Feature` is not valid for `Action::\"use\"`",
        &[],
    );

    // Context attribute of the wrong type.
    let mut request = valid();
    request.context.insert("country".to_string(), long(76));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "context.country: expected String, got Long", &[]);

    // Required context attribute missing.
    let mut request = valid();
    request.context.remove("country");
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(
        &status,
        "context.country: required attribute is missing",
        &[],
    );

    // Undeclared context attribute.
    let mut request = valid();
    request.context.insert("shoe_size".to_string(), long(44));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(
        &status,
        "context.shoe_size: attribute is not declared in the schema",
        &[],
    );

    // Extension value that does not parse.
    let mut request = valid();
    request
        .context
        .insert("now".to_string(), datetime("garbage"));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "context.now: ", &["datetime"]);

    // Extension function that does not exist.
    let mut request = valid();
    request
        .context
        .insert("now".to_string(), extension("moment", "2026-01-01"));
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(
        &status,
        "context.now.fn: unknown extension function `moment`",
        &[],
    );

    // A value with no kind set.
    let mut request = valid();
    request
        .context
        .insert("country".to_string(), pb::Value { kind: None });
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "context.country: value has no kind set", &[]);

    // A nested value with no kind names its path.
    let mut request = valid();
    request.context.insert(
        "country".to_string(),
        set(vec![string("BR"), pb::Value { kind: None }]),
    );
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "context.country[1]: value has no kind set", &[]);

    // A request-scoped entity that clashes with the tenant snapshot.
    let mut request = valid();
    request.entities.push(pb::Entity {
        uid: Some(entity_ref("User", "bob")),
        attrs: [("account".to_string(), entity_value("Account", "acme"))].into(),
        parents: vec![entity_ref("Role", "admin")],
        tags: Default::default(),
    });
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(
        &status,
        "entities: duplicate entity entry `User::\"bob\"`",
        &[],
    );

    // A request-scoped entity that does not fit the schema.
    let mut request = valid();
    request.entities.push(pb::Entity {
        uid: Some(entity_ref("User", "zed")),
        attrs: [("account".to_string(), long(3))].into(),
        parents: vec![],
        tags: Default::default(),
    });
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(&status, "entities: ", &["`account`", "User::\"zed\""]);

    // A request-scoped entity of an undeclared type.
    let mut request = valid();
    request.entities.push(pb::Entity {
        uid: Some(entity_ref("Robot", "r2")),
        attrs: Default::default(),
        parents: vec![],
        tags: Default::default(),
    });
    let status = send(&mut client, request).await.unwrap_err();
    assert_invalid(
        &status,
        "entities[0].uid.type: entity type `Robot` is not declared in the schema",
        &[],
    );

    // The server still answers after all that.
    let response = decide(&mut client, valid()).await;
    assert_decision(&response, Allow);
}

async fn send_raw(
    url: &str,
    method: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    call_raw(channel(url).await, method, body.into())
        .await
        .map(|answer| answer.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_body_is_invalid_argument() {
    let server = example_server().await;
    const CHECK: &str = "/tollgate.v1.EntitlementService/Check";
    const BATCH: &str = "/tollgate.v1.EntitlementService/CheckBatch";

    // Control: a well-formed body through the same raw client is answered.
    let body = check_str("acme User:bob use Feature:pdf-export").encode_to_vec();
    let answer = send_raw(&server.url(), CHECK, body)
        .await
        .expect("valid body");
    let response = pb::CheckResponse::decode(answer.as_slice()).expect("decode response");
    assert_decision(&response, Allow);

    for (what, body) in [
        ("invalid wire type", vec![0x0f, 0xff, 0xff, 0xff]),
        ("truncated length-delimited field", b"\x0a\x10abc".to_vec()),
        (
            "invalid utf-8 in a string field",
            b"\x0a\x02\xff\xfe".to_vec(),
        ),
        ("unterminated varint", vec![0x10, 0xff, 0xff, 0xff]),
    ] {
        for method in [CHECK, BATCH] {
            let status = send_raw(&server.url(), method, body.clone())
                .await
                .expect_err(what);
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{what} to {method}: {status:?}"
            );
            assert!(
                status.message().starts_with("malformed request body"),
                "{what} to {method}: {status:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_over_size_limit_is_refused() {
    let mut config =
        tollgate::config::Config::with_dirs(example_policies(), example_entitlements());
    config.max_request_bytes = 1024;
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    let mut request = check_str("acme User:bob use Feature:pdf-export");
    request
        .context
        .insert("padding".to_string(), string(&"x".repeat(4096)));
    let status = send(&mut client, request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    // A small request is still answered.
    let response = decide(
        &mut client,
        check_str("acme User:bob use Feature:pdf-export"),
    )
    .await;
    assert_decision(&response, Allow);
}

// ---------------------------------------------------------------------------
// Batches.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_in_order() {
    let server = example_server().await;
    let mut client = connect(&server.url()).await;
    let expected = [
        ("acme User:bob use Feature:pdf-export", Allow, "member_role"),
        ("acme User:bob use Feature:audit-log", Deny, "tier_too_low"),
        (
            "umbrella User:bob use Feature:pdf-export",
            Deny,
            "unknown_tenant",
        ),
        ("hooli User:gavin use Feature:sso", Deny, "addon_required"),
        (
            "globex User:erin view Feature:dashboards",
            Deny,
            "trial_expired",
        ),
        (
            "acme User:carol view Feature:dashboards",
            Allow,
            "viewer_role",
        ),
        (
            "acme User:nobody view Feature:dashboards",
            Deny,
            "unknown_principal",
        ),
    ];
    let checks: Vec<pb::CheckRequest> = expected.iter().map(|row| check_str(row.0)).collect();
    let batch = client
        .check_batch(pb::CheckBatchRequest {
            checks: checks.clone(),
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.responses.len(), checks.len());
    let mut versions = HashSet::new();
    for (index, (response, (_, want_decision, want_code))) in
        batch.responses.iter().zip(expected).enumerate()
    {
        assert_eq!(
            decision(response),
            want_decision,
            "responses[{index}]: {}",
            summary(response)
        );
        assert_eq!(codes(response), [want_code], "responses[{index}]");
        versions.insert(policy_version(response));
    }
    assert_eq!(versions.len(), 1, "one policy snapshot serves the batch");

    // Each answer equals what a single Check says.
    for (index, request) in checks.into_iter().enumerate() {
        let single = decide(&mut client, request).await;
        assert_eq!(
            single.decision, batch.responses[index].decision,
            "checks[{index}]"
        );
        assert_eq!(
            codes(&single),
            codes(&batch.responses[index]),
            "checks[{index}]"
        );
    }

    // An empty batch gets an empty answer.
    let empty = client
        .check_batch(pb::CheckBatchRequest { checks: vec![] })
        .await
        .expect("empty batch")
        .into_inner();
    assert!(empty.responses.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_check_fails_the_batch_naming_it() {
    let server = example_server().await;
    let mut client = connect(&server.url()).await;
    let good = || check_str("acme User:bob use Feature:pdf-export");

    let mut bad = good();
    bad.principal = Some(entity_ref("Usr", "bob"));
    let status = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![good(), bad, good()],
        })
        .await
        .unwrap_err();
    assert_invalid(
        &status,
        "checks[1].principal.type: entity type `Usr` is not declared in the schema",
        &[],
    );

    let mut bad = good();
    bad.context.remove("now");
    let status = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![good(), good(), good(), bad],
        })
        .await
        .unwrap_err();
    assert_invalid(
        &status,
        "checks[3].context.now: required attribute is missing",
        &[],
    );

    let mut bad = good();
    bad.tenant = String::new();
    let status = client
        .check_batch(pb::CheckBatchRequest { checks: vec![bad] })
        .await
        .unwrap_err();
    assert_invalid(&status, "checks[0].tenant: must not be empty", &[]);

    // A request-scoped entity clash is found at decision time; still named.
    let mut bad = good();
    bad.entities.push(pb::Entity {
        uid: Some(entity_ref("User", "bob")),
        attrs: [("account".to_string(), entity_value("Account", "acme"))].into(),
        parents: vec![],
        tags: Default::default(),
    });
    let status = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![good(), good(), bad],
        })
        .await
        .unwrap_err();
    assert_invalid(
        &status,
        "checks[2].entities: duplicate entity entry `User::\"bob\"`",
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_over_limit_is_resource_exhausted() {
    let server = example_server().await;
    let mut client = connect(&server.url()).await;
    let good = || check_str("acme User:bob use Feature:pdf-export");

    let at_limit = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![good(); 100],
        })
        .await
        .expect("a batch of the default limit (100) is answered")
        .into_inner();
    assert_eq!(at_limit.responses.len(), 100);

    let status = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![good(); 101],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("101"), "{status:?}");
    assert!(status.message().contains("100"), "{status:?}");

    // A batch may ask for a few explanations, not one per check.
    let explained = || {
        let mut check = good();
        check.explain = true;
        check
    };
    let answered = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![explained(); tollgate::decide::MAX_EXPLAINED_IN_BATCH],
        })
        .await
        .expect("explanations at the limit")
        .into_inner();
    assert!(answered
        .responses
        .iter()
        .all(|response| !response.explanation.is_empty()));
    let mut checks = vec![explained(); tollgate::decide::MAX_EXPLAINED_IN_BATCH + 1];
    checks.push(good());
    let status = client
        .check_batch(pb::CheckBatchRequest { checks })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "11 checks of the batch ask for an explanation; a batch may explain at most 10"
    );

    // A configured limit.
    let mut config =
        tollgate::config::Config::with_dirs(example_policies(), example_entitlements());
    config.limits.max_batch = 3;
    let small = InProcess::start(config).await;
    let mut client = connect(&small.url()).await;
    let answered = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![good(); 3],
        })
        .await
        .expect("3 of 3");
    assert_eq!(answered.into_inner().responses.len(), 3);
    let status = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![good(); 4],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit of 3"), "{status:?}");
}

// ---------------------------------------------------------------------------
// Health and reflection.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_policy_loading() {
    let dirs = DataDirs::copy_examples();
    let roles = dirs.policies.join("roles.cedar");
    let good_roles = read(&roles);
    replace_file(
        &roles,
        "permit (principal, action, resource) when { oops };\n@@@",
    );
    let server = InProcess::start(dirs.config()).await;
    let channel = channel(&server.url()).await;
    let mut client = EntitlementServiceClient::new(channel.clone());

    for service in ["", tollgate::app::SERVICE_NAME] {
        assert_eq!(
            health(&channel, service).await.expect("health check"),
            ServingStatus::NotServing,
            "service {service:?} with a broken policy directory"
        );
    }
    let status = send(
        &mut client,
        check_str("acme User:bob use Feature:pdf-export"),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![check_str("acme User:bob use Feature:pdf-export")],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Unknown services are NOT_FOUND, as the health protocol says.
    let status = health(&channel, "no.such.Service").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Fixing the file brings the server up, tenants included.
    replace_file(&roles, &good_roles);
    wait_until("health SERVING after fixing roles.cedar", || {
        let channel = channel.clone();
        async move {
            match health(&channel, tollgate::app::SERVICE_NAME).await {
                Ok(ServingStatus::Serving) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(health(&channel, "").await.unwrap(), ServingStatus::Serving);
    let response = decide(
        &mut client,
        check_str("acme User:bob use Feature:pdf-export"),
    )
    .await;
    assert_decision(&response, Allow);
    assert_eq!(
        snapshot_version(&response),
        1,
        "tenant snapshots load with the first policy set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_once_shutdown_begins() {
    let mut server = example_server().await;
    let channel = channel(&server.url()).await;
    assert_eq!(health(&channel, "").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        health(&channel, tollgate::app::SERVICE_NAME).await.unwrap(),
        ServingStatus::Serving
    );

    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: tollgate::app::SERVICE_NAME.to_string(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("watch update")
        .expect("stream open");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    server.begin_shutdown();
    let next = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("a health update within the bound after shutdown began")
        .expect("watch update")
        .expect("stream still open");
    assert_eq!(
        ServingStatus::try_from(next.status).unwrap(),
        ServingStatus::NotServing
    );
    drop(watch);
    drop(channel);
    server.stop().await.expect("serve_on returns Ok");
}

/// Sends one v1 reflection request and returns the one answer.
async fn reflect_v1(
    channel: &tonic::transport::Channel,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> tonic_reflection::pb::v1::server_reflection_response::MessageResponse {
    use tonic_reflection::pb::v1;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("v1 answer")
        .expect("v1 message");
    let Some(answer) = response.message_response else {
        panic!("unexpected v1 reflection answer: {response:?}");
    };
    answer
}

/// Asserts a reflection service list names the entitlement service (and, with
/// `health_too`, the health service).
fn assert_lists_services(names: &[String], health_too: bool) {
    assert!(
        names.iter().any(|n| n == "tollgate.v1.EntitlementService"),
        "{names:?}"
    );
    if health_too {
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = example_server().await;
    let channel = channel(&server.url()).await;

    // v1
    let answer = reflect_v1(
        &channel,
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
    )
    .await;
    let v1::server_reflection_response::MessageResponse::ListServicesResponse(list) = answer else {
        panic!("unexpected v1 reflection answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_lists_services(&names, true);

    // The service's file descriptor is served.
    let answer = reflect_v1(
        &channel,
        v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "tollgate.v1.EntitlementService".to_string(),
        ),
    )
    .await;
    let v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files) = answer
    else {
        panic!("unexpected v1 reflection answer: {answer:?}");
    };
    assert!(
        files.file_descriptor_proto.iter().any(|file| file
            .windows(b"CheckRequest".len())
            .any(|w| w == b"CheckRequest")),
        "descriptor of tollgate.v1 holds CheckRequest"
    );

    // v1alpha
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
    let response = stream
        .message()
        .await
        .expect("v1alpha answer")
        .expect("v1alpha message");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected v1alpha reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_lists_services(&names, false);
}
