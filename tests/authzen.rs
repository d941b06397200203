//! AuthZEN 1.0 through the real HTTP listener: the interop "Todo" scenario's
//! decisions (`examples/authzen-todo/`), the evaluations semantics, the
//! discovery document, where the tenant comes from, and how properties reach
//! policies without overriding the tenant's snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use serde_json::{json, Value};
use tollgate::http::authzen::{Settings, TenantFrom};
use tollgate_testkit::fixtures::repository;
use tollgate_testkit::prelude::*;

fn todo_settings(tenant: Vec<TenantFrom>) -> Settings {
    Settings {
        tenant,
        namespace: Some("TodoApp".to_string()),
        types: vec![
            ("user".to_string(), "TodoApp::User".to_string()),
            ("todo".to_string(), "TodoApp::Todo".to_string()),
        ],
    }
}

async fn todo_server(tenant: Vec<TenantFrom>) -> (InProcess, String) {
    let example = repository().join("examples/authzen-todo");
    let mut config =
        tollgate::config::Config::with_dirs(example.join("policies"), example.join("entitlements"));
    config.authzen = todo_settings(tenant);
    InProcess::start_with_http(config).await
}

fn read(name: &str) -> Value {
    let path = repository().join("examples/authzen-todo").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_todo_interop_decisions_pass() {
    let (_server, http) = todo_server(vec![TenantFrom::Fixed("todo".to_string())]).await;
    let mut client = HttpClient::connect(&http).await.unwrap();
    let mut failures = Vec::new();
    let mut requests = 0;
    let mut passed = 0;
    let mut decisions = 0;

    let single = read("decisions.json");
    for (index, case) in single["evaluation"].as_array().unwrap().iter().enumerate() {
        let answer = client
            .post_json("/access/v1/evaluation", &case["request"])
            .await;
        requests += 1;
        decisions += 1;
        let body = answer.json();
        if answer.status == 200 && body["decision"] == case["expected"] {
            passed += 1;
        } else {
            failures.push(format!(
                "evaluation {index}: {} {body}, expected {}",
                answer.status, case["expected"]
            ));
        }
    }
    let batched = read("decisions-batched.json");
    for (index, case) in batched["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let answer = client
            .post_json("/access/v1/evaluations", &case["request"])
            .await;
        requests += 1;
        let body = answer.json();
        let got: Vec<&Value> = body["evaluations"]
            .as_array()
            .map(|items| items.iter().map(|item| &item["decision"]).collect())
            .unwrap_or_default();
        let expected: Vec<&Value> = case["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| &item["decision"])
            .collect();
        decisions += expected.len();
        if answer.status == 200 && got == expected {
            passed += 1;
        } else {
            failures.push(format!(
                "batch {index}: {} {body}, expected {expected:?}",
                answer.status
            ));
        }
    }
    println!(
        "AuthZEN Todo interop: {passed} of {requests} requests passed ({decisions} decisions)"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(requests, 43);

    // The metadata names both endpoints, on the host asked.
    let answer = client
        .get("/.well-known/authzen-configuration")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let metadata = answer.json();
    assert_eq!(metadata["policy_decision_point"], format!("http://{http}"));
    assert_eq!(
        metadata["access_evaluation_endpoint"],
        format!("http://{http}/access/v1/evaluation")
    );
    assert_eq!(
        metadata["access_evaluations_endpoint"],
        format!("http://{http}/access/v1/evaluations")
    );
}

const RICK: &str = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
const MORTY: &str = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";

fn todo(owner: &str) -> Value {
    json!({"type": "todo", "id": "t-1", "properties": {"ownerID": owner}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_reasons_and_batches_follow_their_semantics() {
    let (_server, http) = todo_server(vec![TenantFrom::Fixed("todo".to_string())]).await;
    let mut client = HttpClient::connect(&http).await.unwrap();

    // An answer says why, which decision it was and on what data.
    let answer = client
        .post_json(
            "/access/v1/evaluation",
            &json!({
                "subject": {"type": "user", "id": MORTY},
                "action": {"name": "can_update_todo"},
                "resource": todo("morty@the-citadel.com"),
            }),
        )
        .await;
    let body = answer.json();
    assert_eq!(body["decision"], true, "{body}");
    let context = &body["context"];
    assert_eq!(context["reasons"][0]["code"], "owner", "{body}");
    assert_eq!(
        context["reasons"][0]["policy_id"],
        "editors-manage-own-todos"
    );
    assert!(context["reasons"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("own"));
    assert_eq!(context["decision_id"].as_str().unwrap().len(), 32);
    assert_eq!(context["freshness"]["source"], "SNAPSHOT_SOURCE_FILE");
    assert_eq!(context["freshness"]["snapshotVersion"], "1");

    // A denial names the built-in reason.
    let answer = client
        .post_json(
            "/access/v1/evaluation",
            &json!({
                "subject": {"type": "user", "id": MORTY},
                "action": {"name": "can_update_todo"},
                "resource": todo("rick@the-citadel.com"),
            }),
        )
        .await;
    assert_eq!(answer.json()["decision"], false);
    assert_eq!(answer.json()["context"]["reasons"][0]["code"], "no_permit");

    // Items inherit the request's defaults; an item's member replaces the
    // default's whole.
    let items = json!([
        {"resource": todo("morty@the-citadel.com")},
        {"resource": todo("rick@the-citadel.com")},
        {"resource": todo("morty@the-citadel.com"), "action": {"name": "can_read_todos"}},
        {"resource": todo("rick@the-citadel.com")},
    ]);
    let batch = |semantic: Option<&str>| {
        let mut request = json!({
            "subject": {"type": "user", "id": MORTY},
            "action": {"name": "can_update_todo"},
            "evaluations": items,
        });
        if let Some(semantic) = semantic {
            request["options"] = json!({"evaluations_semantic": semantic});
        }
        request
    };
    let decisions = |answer: &HttpAnswer| -> Vec<bool> {
        answer.json()["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["decision"].as_bool().unwrap())
            .collect()
    };
    for semantic in [None, Some("execute_all")] {
        let answer = client
            .post_json("/access/v1/evaluations", &batch(semantic))
            .await;
        assert_eq!(
            decisions(&answer),
            [true, false, true, false],
            "{semantic:?}"
        );
    }
    let answer = client
        .post_json("/access/v1/evaluations", &batch(Some("deny_on_first_deny")))
        .await;
    assert_eq!(decisions(&answer), [true, false]);
    let answer = client
        .post_json(
            "/access/v1/evaluations",
            &batch(Some("permit_on_first_permit")),
        )
        .await;
    assert_eq!(decisions(&answer), [true]);
    let answer = client
        .post_json("/access/v1/evaluations", &batch(Some("first_come")))
        .await;
    assert_eq!(answer.status, 400, "{}", answer.json());
    assert!(answer.json()["message"]
        .as_str()
        .unwrap()
        .contains("unknown variant `first_come`"));

    // Without evaluations, the request is one evaluation.
    let answer = client
        .post_json(
            "/access/v1/evaluations",
            &json!({
                "subject": {"type": "user", "id": RICK},
                "action": {"name": "can_delete_todo"},
                "resource": todo("morty@the-citadel.com"),
            }),
        )
        .await;
    assert_eq!(answer.json()["decision"], true, "{}", answer.json());

    // An evaluation that cannot be decided fails the batch, naming it.
    let mut broken = batch(None);
    broken["evaluations"][2]["action"] = json!({"name": "can_fly"});
    let answer = client.post_json("/access/v1/evaluations", &broken).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["field"], "evaluations[2].action");
    let answer = client
        .post_json(
            "/access/v1/evaluations",
            &json!({"action": {"name": "can_read_todos"}, "evaluations": [{"resource": todo("x")}]}),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["field"], "evaluations[0].subject");
    assert_eq!(
        answer.json()["message"],
        "evaluations[0].subject: is required"
    );

    // Over the batch limit (max_batch), refused before it is decoded.
    let many: Vec<Value> = (0..101).map(|_| json!({"resource": todo("x")})).collect();
    let answer = client
        .post_json(
            "/access/v1/evaluations",
            &json!({"subject": {"type": "user", "id": MORTY}, "action": {"name": "can_read_todos"}, "evaluations": many}),
        )
        .await;
    assert_eq!(answer.status, 429);
    assert_eq!(
        answer.json()["message"],
        "batch of 101 evaluations exceeds the limit of 100"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_never_override_the_snapshot() {
    let (_server, http) = todo_server(vec![TenantFrom::Fixed("todo".to_string())]).await;
    let mut client = HttpClient::connect(&http).await.unwrap();
    // Morty claims Rick's e-mail address as a property: it lands in the
    // context (where the schema does not expect it), never on his entity.
    let answer = client
        .post_json(
            "/access/v1/evaluation",
            &json!({
                "subject": {"type": "user", "id": MORTY, "properties": {"email": "rick@the-citadel.com"}},
                "action": {"name": "can_update_todo"},
                "resource": todo("rick@the-citadel.com"),
            }),
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.json());
    assert_eq!(answer.json()["field"], "context.subject.email");
    // The context may not stand in for the properties either.
    let answer = client
        .post_json(
            "/access/v1/evaluation",
            &json!({
                "subject": {"type": "user", "id": MORTY},
                "action": {"name": "can_update_todo"},
                "resource": todo("rick@the-citadel.com"),
                "context": {"resource": {"ownerID": "morty@the-citadel.com"}},
            }),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.json()["message"],
        "context.resource: is where the resource's properties go; the context may not set it"
    );
    // Members beside type and id are properties too (as earlier drafts of
    // the interop scenario send them).
    let answer = client
        .post_json(
            "/access/v1/evaluation",
            &json!({
                "subject": {"type": "user", "id": MORTY, "identity": MORTY},
                "action": {"name": "can_update_todo"},
                "resource": {"type": "todo", "id": "t-1", "ownerID": "morty@the-citadel.com"},
            }),
        )
        .await;
    assert_eq!(answer.json()["decision"], true, "{}", answer.json());
    // Errors name the AuthZEN member, not the Cedar one.
    let answer = client
        .post_json(
            "/access/v1/evaluation",
            &json!({
                "subject": {"type": "robot", "id": "r2"},
                "action": {"name": "can_read_todos"},
                "resource": todo("x"),
            }),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["field"], "subject.type");
    assert_eq!(
        answer.json()["message"],
        "subject.type: entity type `TodoApp::robot` is not declared in the schema"
    );
    // A subject the snapshot does not know is denied as such.
    let answer = client
        .post_json(
            "/access/v1/evaluation",
            &json!({
                "subject": {"type": "user", "id": "mallory@example.com"},
                "action": {"name": "can_read_todos"},
                "resource": todo("x"),
            }),
        )
        .await;
    assert_eq!(answer.json()["decision"], false);
    assert_eq!(
        answer.json()["context"]["reasons"][0]["code"],
        "unknown_principal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_comes_from_the_configured_sources() {
    let (_server, http) = todo_server(vec![
        TenantFrom::Header("x-tollgate-tenant".to_string()),
        TenantFrom::SubjectProperty("tenant".to_string()),
    ])
    .await;
    let mut client = HttpClient::connect(&http).await.unwrap();
    let request = |subject: Value| {
        json!({
            "subject": subject,
            "action": {"name": "can_read_todos"},
            "resource": {"type": "todo", "id": "t-1"},
        })
        .to_string()
    };
    let rick = json!({"type": "user", "id": RICK});
    // From the header.
    let answer = client
        .post(
            "/access/v1/evaluation",
            request(rick.clone()),
            &[("x-tollgate-tenant", "todo")],
        )
        .await
        .unwrap();
    assert_eq!(answer.json()["decision"], true, "{}", answer.json());
    // A tenant without a snapshot: denied as such.
    let answer = client
        .post(
            "/access/v1/evaluation",
            request(rick.clone()),
            &[("x-tollgate-tenant", "elsewhere")],
        )
        .await
        .unwrap();
    assert_eq!(answer.json()["decision"], false);
    assert_eq!(
        answer.json()["context"]["reasons"][0]["code"],
        "unknown_tenant"
    );
    // From the subject's property when no header names one (the property
    // routes the request: it does not reach the context).
    let answer = client
        .post(
            "/access/v1/evaluation",
            request(json!({"type": "user", "id": RICK, "properties": {"tenant": "todo"}})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.json()["decision"], true, "{}", answer.json());
    // Nowhere: refused, naming the sources.
    let answer = client
        .post("/access/v1/evaluation", request(rick), &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.json()["message"],
        "tenant: the request names no tenant (authzen_tenant: header:x-tollgate-tenant,subject:tenant)"
    );
}
