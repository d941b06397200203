//! The decision log as an operator reads it: one JSON record per decision,
//! masked where configured, and a full queue that drops and counts records
//! without ever holding up a decision.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use tollgate::api::pb;
use tollgate_testkit::fixtures::document;
use tollgate_testkit::prelude::*;
use tollgate_testkit::redis_server::{self, RedisServer};

fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_match_the_decisions_and_masked_fields_never_appear() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("decisions.log");
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[
            ("TOLLGATE_DECISION_LOG", file.to_str().unwrap()),
            ("TOLLGATE_DECISION_LOG_CONTEXT", "true"),
            ("TOLLGATE_DECISION_LOG_MASK", "country"),
        ],
    );
    let mut client = connect(&server.url()).await;
    let mut decided: HashMap<String, pb::CheckResponse> = HashMap::new();
    for (tenant, principal, feature) in [
        ("acme", "User:bob", "Feature:pdf-export"),
        ("hooli", "User:gavin", "Feature:pdf-export"),
        ("umbrella", "User:nobody", "Feature:pdf-export"),
    ] {
        let response = decide(&mut client, check(tenant, principal, "use", feature)).await;
        decided.insert(response.decision_id.clone(), response);
    }
    let batch = client
        .check_batch(pb::CheckBatchRequest {
            checks: vec![
                check("acme", "User:carol", "view", "Feature:dashboards"),
                check("acme", "User:carol", "use", "Feature:dashboards"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    for response in batch.responses {
        decided.insert(response.decision_id.clone(), response);
    }
    server.signal("TERM");
    server.expect_clean_exit().await;

    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("\"BR\""),
        "a masked value was written:\n{text}"
    );
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(records.len(), decided.len(), "{text}");
    for record in &records {
        let id = record["decision_id"].as_str().unwrap();
        let response = decided
            .get(id)
            .unwrap_or_else(|| panic!("no decision {id}"));
        let decision = if response.decision == pb::Decision::Allow as i32 {
            "ALLOW"
        } else {
            "DENY"
        };
        assert_eq!(record["decision"], decision, "{record}");
        let reasons: Vec<&str> = response.reasons.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(record["reasons"], serde_json::json!(reasons), "{record}");
        assert_eq!(
            record["policy_version"],
            response.freshness.as_ref().unwrap().policy_version.as_str()
        );
        assert!(record["latency_us"].is_u64(), "{record}");
        assert_eq!(record["action"]["type"], "Action", "{record}");
        assert_eq!(
            record["context"]["now"]["__extn"]["fn"], "datetime",
            "{record}"
        );
        if record["action"]["id"] == "use" {
            assert_eq!(record["context"]["country"], "***", "{record}");
        }
    }
    let unknown = records.iter().find(|r| r["tenant"] == "umbrella").unwrap();
    assert_eq!(unknown["reasons"], serde_json::json!(["unknown_tenant"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_records_and_never_holds_up_a_decision() {
    // Standard output is a pipe nobody reads during the load: once its buffer
    // is full the writer blocks, the one-record queue fills, and records drop.
    let mut server = ServerProcess::spawn_with_stdout(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[
            ("TOLLGATE_DECISION_LOG", "stdout"),
            ("TOLLGATE_DECISION_LOG_QUEUE", "1"),
            ("TOLLGATE_METRICS_LISTEN", "127.0.0.1:0"),
        ],
        Stdio::piped(),
    );
    let stdout = server.take_stdout().unwrap();
    const TASKS: usize = 4;
    const CHECKS: usize = 500;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let url = server.url();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            for _ in 0..CHECKS {
                let response = decide(
                    &mut client,
                    check("acme", "User:bob", "use", "Feature:pdf-export"),
                )
                .await;
                assert_eq!(response.decision, pb::Decision::Allow as i32);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let address = server.metrics_address().await;
    let (_, text) = tokio::task::spawn_blocking(move || http_get(&address, "/metrics"))
        .await
        .unwrap();
    let queued = counter(
        &text,
        r#"tollgate_decision_log_records_total{result="queued"}"#,
    );
    let dropped = counter(
        &text,
        r#"tollgate_decision_log_records_total{result="dropped"}"#,
    );
    assert_eq!(queued + dropped, (TASKS * CHECKS) as u64, "{text}");
    assert!(
        dropped > 0,
        "a blocked writer must make the queue drop:\n{text}"
    );

    // Reading the pipe lets the writer finish; every queued record arrives.
    let reader =
        std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).count());
    server.signal("TERM");
    server.expect_clean_exit().await;
    assert_eq!(reader.join().unwrap() as u64, queued);
}

/// The records in the stream `key`, oldest first (`XRANGE key - +`).
fn stream_records(redis: &RedisServer, key: &str) -> Vec<serde_json::Value> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis.command(&["XRANGE", key, "-", "+"]);
    entries
        .into_iter()
        .map(|(_, fields)| {
            assert_eq!(fields.len(), 1, "{fields:?}");
            let (name, record) = &fields[0];
            assert_eq!(name, "record");
            serde_json::from_str(record).expect("a JSON record")
        })
        .collect()
}

/// Puts the example snapshots of `tenants` into Redis.
async fn put_tenants(redis: &RedisServer, tenants: &[&str]) {
    let conn = tollgate::store::redis_client::RedisConn::connect(&redis_server::settings(vec![
        redis.url(),
    ]))
    .await
    .unwrap();
    for tenant in tenants {
        redis_server::put(&conn, &document(tenant, 1, |_| {})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_added_to_the_redis_stream_as_decided_and_masked() {
    let redis = RedisServer::start();
    put_tenants(&redis, &["acme", "hooli"]).await;
    let url = redis.url();
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[
            ("TOLLGATE_REDIS_URL", url.as_str()),
            ("TOLLGATE_DECISION_LOG_REDIS_STREAM", "tollgate:decisions"),
            ("TOLLGATE_DECISION_LOG_REDIS_MAXLEN", "1000"),
            ("TOLLGATE_DECISION_LOG_CONTEXT", "true"),
            ("TOLLGATE_DECISION_LOG_MASK", "country"),
            ("TOLLGATE_METRICS_LISTEN", "127.0.0.1:0"),
        ],
    );
    let mut client = connect(&server.url()).await;
    let mut decided: HashMap<String, pb::CheckResponse> = HashMap::new();
    for (tenant, principal) in [
        ("acme", "User:bob"),
        ("hooli", "User:gavin"),
        ("umbrella", "User:nobody"),
    ] {
        let response = decide(
            &mut client,
            check(tenant, principal, "use", "Feature:pdf-export"),
        )
        .await;
        decided.insert(response.decision_id.clone(), response);
    }
    let records = wait_until("every decision in the stream", || async {
        let records = stream_records(&redis, "tollgate:decisions");
        if records.len() == decided.len() {
            Ok(records)
        } else {
            Err(format!("{} records", records.len()))
        }
    })
    .await;
    for record in &records {
        let text = record.to_string();
        assert!(
            !text.contains("\"BR\""),
            "a masked value was written: {text}"
        );
        let response = decided
            .get(record["decision_id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("no decision for {record}"));
        let decision = if response.decision == pb::Decision::Allow as i32 {
            "ALLOW"
        } else {
            "DENY"
        };
        assert_eq!(record["decision"], decision, "{record}");
        let reasons: Vec<&str> = response.reasons.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(record["reasons"], serde_json::json!(reasons), "{record}");
        assert_eq!(record["context"]["country"], "***", "{record}");
    }
    let unknown = records.iter().find(|r| r["tenant"] == "umbrella").unwrap();
    assert_eq!(unknown["reasons"], serde_json::json!(["unknown_tenant"]));

    let address = server.metrics_address().await;
    let (_, text) = tokio::task::spawn_blocking(move || http_get(&address, "/metrics"))
        .await
        .unwrap();
    assert_eq!(
        counter(
            &text,
            r#"tollgate_decision_log_redis_records_total{result="written"}"#
        ),
        3,
        "{text}"
    );
    server.signal("TERM");
    server.expect_clean_exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_decisions_are_answered_and_stream_failures_counted() {
    let mut redis = RedisServer::start();
    put_tenants(&redis, &["acme"]).await;
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("decisions.log");
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[
            ("TOLLGATE_REDIS_URL", url.as_str()),
            ("TOLLGATE_DECISION_LOG", file.to_str().unwrap()),
            ("TOLLGATE_DECISION_LOG_REDIS_STREAM", "tollgate:decisions"),
            ("TOLLGATE_METRICS_LISTEN", "127.0.0.1:0"),
        ],
    );
    let mut client = connect(&server.url()).await;
    // Cached while Redis is up, so that it serves (stale) afterwards.
    let first = decide(
        &mut client,
        check("acme", "User:bob", "use", "Feature:pdf-export"),
    )
    .await;
    assert_decision(&first, pb::Decision::Allow);
    wait_until("the first record in the stream", || async {
        match stream_records(&redis, "tollgate:decisions").len() {
            1 => Ok(()),
            n => Err(format!("{n} records")),
        }
    })
    .await;
    redis.kill();

    const CHECKS: u64 = 50;
    for _ in 0..CHECKS {
        let response = decide(
            &mut client,
            check("acme", "User:bob", "use", "Feature:pdf-export"),
        )
        .await;
        assert_decision(&response, pb::Decision::Allow);
    }
    let address = server.metrics_address().await;
    let text = wait_until("every record counted as failed or dropped", || {
        let address = address.clone();
        async move {
            let (_, text) = tokio::task::spawn_blocking(move || http_get(&address, "/metrics"))
                .await
                .unwrap();
            let lost = counter(
                &text,
                r#"tollgate_decision_log_redis_records_total{result="failed"}"#,
            ) + counter(
                &text,
                r#"tollgate_decision_log_redis_records_total{result="dropped"}"#,
            );
            if lost == CHECKS {
                Ok(text)
            } else {
                Err(format!("{lost} of {CHECKS} lost so far:\n{text}"))
            }
        }
    })
    .await;
    assert!(
        counter(
            &text,
            r#"tollgate_decision_log_redis_records_total{result="failed"}"#
        ) > 0,
        "{text}"
    );
    assert_eq!(
        counter(
            &text,
            r#"tollgate_decision_log_redis_records_total{result="written"}"#
        ),
        1,
        "{text}"
    );
    server
        .wait_for_log(0, &["decision log records not added to the redis stream"])
        .await;
    server.signal("TERM");
    server.expect_clean_exit().await;
    // The file sink lost nothing.
    assert_eq!(read(&file).lines().count() as u64, CHECKS + 1);
}

#[test]
fn a_redis_stream_without_redis_is_a_configuration_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
        .arg(example_policies())
        .arg("--entitlements")
        .arg(example_entitlements())
        .env("TOLLGATE_DECISION_LOG_REDIS_STREAM", "tollgate:decisions")
        .env_remove("TOLLGATE_REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("decision_log_redis_stream: the stream is written to Redis; set redis_url"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_carry_the_principals_attributes_as_the_snapshot_had_them() {
    let dirs = DataDirs::copy_examples();
    let file = dirs.root.path().join("decisions.log");
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &dirs.policies,
        &dirs.entitlements,
        &[
            ("TOLLGATE_DECISION_LOG", file.to_str().unwrap()),
            (
                "TOLLGATE_DECISION_LOG_ATTRIBUTES",
                "account.plan, account.tier, account.addons, account.residency.countries, account.missing",
            ),
            ("TOLLGATE_DECISION_LOG_MASK", "account.addons"),
        ],
    );
    let mut client = connect(&server.url()).await;
    let first = decide(
        &mut client,
        check("hooli", "User:gavin", "use", "Feature:pdf-export"),
    )
    .await;
    // hooli moves to pro: the next record has the plan it has then.
    let upgraded = document("hooli", 2, |value| {
        let account = tollgate_testkit::fixtures::entity(value, "Account", "hooli");
        account["attrs"]["plan"] = "pro".into();
        account["attrs"]["tier"] = 1.into();
    });
    replace_file(&dirs.entitlements.join("hooli.json"), &upgraded);
    wait_until("hooli at version 2", || {
        let mut client = client.clone();
        async move {
            let answer = decide(
                &mut client,
                check("hooli", "User:gavin", "view", "Feature:sso"),
            )
            .await;
            let version = answer.freshness.unwrap().snapshot_version;
            if version == 2 {
                Ok(())
            } else {
                Err(format!("version {version}"))
            }
        }
    })
    .await;
    let second = decide(
        &mut client,
        check("hooli", "User:gavin", "use", "Feature:pdf-export"),
    )
    .await;
    let eu = decide(
        &mut client,
        check("soylent", "User:olaf", "use", "Feature:dashboards"),
    )
    .await;
    server.signal("TERM");
    server.expect_clean_exit().await;

    let records: HashMap<String, serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|record| (record["decision_id"].as_str().unwrap().to_string(), record))
        .collect();
    let attributes =
        |response: &pb::CheckResponse| records[&response.decision_id]["attributes"].clone();
    assert_eq!(
        attributes(&first),
        serde_json::json!({"account.plan": "free", "account.tier": 0, "account.addons": "***"})
    );
    assert_eq!(
        attributes(&second),
        serde_json::json!({"account.plan": "pro", "account.tier": 1, "account.addons": "***"})
    );
    let eu = attributes(&eu);
    assert_eq!(eu["account.plan"], "enterprise");
    assert!(
        eu["account.residency.countries"]
            .as_array()
            .unwrap()
            .contains(&"DE".into()),
        "{eu}"
    );
}
