//! The Redis source of tenant snapshots against a real `redis-server`:
//! read-through and cache, invalidation by pub/sub, versions that never go
//! backwards, validation at write and at read, one read for many waiting
//! checks, outages served stale, the admin write path, AUTH and a single-node
//! Redis Cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::Arc;
use std::time::Duration;

use tollgate::api::pb;
use tollgate::api::pb::admin_service_client::AdminServiceClient;
use tollgate::config::Secret;
use tollgate::store::redis_client::RedisConn;
use tollgate_testkit::fixtures::{document, policies};
use tollgate_testkit::prelude::*;
use tollgate_testkit::redis_server::{put, redis_config, settings, Options, RedisServer};
use tonic::Code;

const TOKEN: &str = "test-admin-token-0123456789";

/// Sets an attribute of the tenant's `Account` entity.
fn set_account(value: &mut serde_json::Value, attribute: &str, to: serde_json::Value) {
    let entities = value["entities"].as_array_mut().unwrap();
    let account = entities
        .iter_mut()
        .find(|e| e["uid"]["type"] == "Account")
        .unwrap();
    account["attrs"][attribute] = to;
}

async fn put_examples(conn: &RedisConn, tenants: &[&str]) {
    for tenant in tenants {
        put(conn, &document(tenant, 1, |_| {})).await;
    }
}

fn source(response: &pb::CheckResponse) -> pb::SnapshotSource {
    pb::SnapshotSource::try_from(response.freshness.as_ref().unwrap().source).unwrap()
}

fn version(response: &pb::CheckResponse) -> u64 {
    response.freshness.as_ref().unwrap().snapshot_version
}

fn codes(response: &pb::CheckResponse) -> Vec<&str> {
    response.reasons.iter().map(|r| r.code.as_str()).collect()
}

fn bob_pdf(tenant: &str) -> pb::CheckRequest {
    check(tenant, "User:bob", "use", "Feature:pdf-export")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_caches_and_follows_invalidations() {
    let redis = RedisServer::start();
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put_examples(&conn, &["acme"]).await;
    let dirs = DataDirs::copy_examples();
    let server = InProcess::start(redis_config(&dirs, settings(vec![redis.url()]))).await;
    let mut client = connect(&server.url()).await;

    // Miss: read from Redis. Hit: from the cache.
    let first = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    expect_decision(&first, pb::Decision::Allow, &["member_role"]);
    assert_eq!(source(&first), pb::SnapshotSource::Redis);
    assert_eq!(version(&first), 1);
    let second = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    assert_eq!(source(&second), pb::SnapshotSource::Cache);
    assert_eq!(version(&second), 1);
    assert!(second.freshness.as_ref().unwrap().snapshot_age_ms < 2_000);

    // A tenant Redis does not hold.
    let unknown = client.check(bob_pdf("nobody")).await.unwrap().into_inner();
    expect_decision(&unknown, pb::Decision::Deny, &["unknown_tenant"]);

    // A downgrade written through the write path reaches the next decisions.
    put(
        &conn,
        &document("acme", 2, |v| set_account(v, "tier", 0.into())),
    )
    .await;
    let downgraded = answer_until(
        &client,
        bob_pdf("acme"),
        "the downgrade to be decided",
        |response| version(response) == 2,
    )
    .await;
    expect_decision(&downgraded, pb::Decision::Deny, &["tier_too_low"]);

    // A late, older announcement changes nothing.
    let _: i64 = redis.command(&["PUBLISH", "tollgate:invalidate", "acme 1"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    assert_eq!(version(&after), 2);
    expect_decision(&after, pb::Decision::Deny, &["tier_too_low"]);

    // A tenant deleted in Redis becomes unknown.
    tollgate::admin::delete(&conn, "acme", None).await.unwrap();
    let deleted = answer_until(
        &client,
        bob_pdf("acme"),
        "the delete to be decided",
        |response| codes(response) == ["unknown_tenant"],
    )
    .await;
    assert_eq!(deleted.decision, pb::Decision::Deny as i32);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_never_go_backwards_and_writes_are_validated() {
    let redis = RedisServer::start();
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    let policies = policies();

    put(&conn, &document("acme", 5, |_| {})).await;
    let refused = tollgate::admin::put(&conn, &policies, &document("acme", 4, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "version 4 of `acme` is not newer than the stored version 5"
    );
    // The same document again is a write done already; another at the
    // same version is not newer.
    let same = tollgate::admin::put(&conn, &policies, &document("acme", 5, |_| {}))
        .await
        .unwrap();
    assert_eq!((same.version, same.previous), (5, 5));
    let other = tollgate::admin::put(
        &conn,
        &policies,
        &document("acme", 5, |v| {
            v["entities"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "uid": {"type": "User", "id": "zed"},
                    "attrs": {"account": {"__entity": {"type": "Account", "id": "acme"}}},
                    "parents": []
                }));
        }),
    )
    .await
    .unwrap_err();
    assert!(other.to_string().contains("not newer"), "{other}");
    let (stored, _) = tollgate::admin::get(&conn, "acme").await.unwrap();
    assert_eq!(stored, 5);

    // A snapshot that does not fit the schema is refused and nothing changes.
    let invalid = tollgate::admin::put(
        &conn,
        &policies,
        &document("acme", 6, |v| set_account(v, "tier", "gold".into())),
    )
    .await
    .unwrap_err();
    let message = invalid.to_string();
    assert!(message.starts_with("invalid snapshot:"), "{message}");
    assert!(message.contains("tier"), "{message}");
    assert_eq!(tollgate::admin::get(&conn, "acme").await.unwrap().0, 5);

    // A delete keeps the version as the high-water mark.
    assert_eq!(
        tollgate::admin::delete(&conn, "acme", Some(4))
            .await
            .unwrap_err()
            .to_string(),
        "`acme` is at version 5, not the expected 4"
    );
    assert_eq!(
        tollgate::admin::delete(&conn, "acme", Some(5))
            .await
            .unwrap(),
        5
    );
    assert!(tollgate::admin::get(&conn, "acme").await.is_err());
    let again = tollgate::admin::put(&conn, &policies, &document("acme", 5, |_| {}))
        .await
        .unwrap_err();
    assert!(
        again
            .to_string()
            .contains("not newer than the stored version 5"),
        "{again}"
    );
    put(&conn, &document("acme", 6, |_| {})).await;
    put(&conn, &document("globex", 1, |_| {})).await;
    assert_eq!(conn.list_tenants().await.unwrap(), ["acme", "globex"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_snapshot_in_redis_is_refused_at_read() {
    let redis = RedisServer::start();
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put_examples(&conn, &["acme"]).await;
    let dirs = DataDirs::copy_examples();
    let server = InProcess::start(redis_config(&dirs, settings(vec![redis.url()]))).await;
    let mut client = connect(&server.url()).await;
    let warm = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    assert_eq!(version(&warm), 1);

    // A writer bypasses validation: a snapshot that breaks the schema, and one
    // that is not JSON.
    let broken = document("acme", 2, |v| set_account(v, "tier", "gold".into()));
    let _: () = redis.command(&["SET", "tollgate:{acme}:snapshot", &broken]);
    let _: () = redis.command(&["SET", "tollgate:{acme}:version", "2"]);
    let _: () = redis.command(&["SET", "tollgate:{hooli}:snapshot", "{not json"]);
    let _: i64 = redis.command(&["PUBLISH", "tollgate:invalidate", "acme 2"]);

    // The warm tenant keeps its last good snapshot, marked stale.
    let stale = answer_until(
        &client,
        bob_pdf("acme"),
        "the broken snapshot to be noticed",
        |response| source(response) == pb::SnapshotSource::Stale,
    )
    .await;
    expect_decision(&stale, pb::Decision::Allow, &["member_role"]);
    assert_eq!(version(&stale), 1);
    // A tenant whose only snapshot is broken has none to decide with.
    let cold = client
        .check(check("hooli", "User:gavin", "use", "Feature:pdf-export"))
        .await
        .unwrap()
        .into_inner();
    expect_decision(&cold, pb::Decision::Deny, &["entitlements_unavailable"]);
    server.stop().await.unwrap();
}

fn age(response: &pb::CheckResponse) -> u64 {
    response.freshness.as_ref().unwrap().snapshot_age_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_snapshot_does_not_make_the_last_good_one_young() {
    let redis = RedisServer::start();
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put_examples(&conn, &["acme"]).await;
    let dirs = DataDirs::copy_examples();
    let mut config = redis_config(&dirs, settings(vec![redis.url()]));
    config.cache.max_stale = std::time::Duration::from_millis(1_500);
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    assert_eq!(
        version(&client.check(bob_pdf("acme")).await.unwrap().into_inner()),
        1
    );

    let broken = document("acme", 2, |v| set_account(v, "tier", "gold".into()));
    let _: () = redis.command(&["SET", "tollgate:{acme}:snapshot", &broken]);
    let _: () = redis.command(&["SET", "tollgate:{acme}:version", "2"]);
    let _: i64 = redis.command(&["PUBLISH", "tollgate:invalidate", "acme 2"]);
    let first = answer_until(
        &client,
        bob_pdf("acme"),
        "the broken snapshot to be noticed",
        |response| source(response) == pb::SnapshotSource::Stale,
    )
    .await;
    // Every answer rereads Redis (the broken version confirms nothing):
    // the last good snapshot keeps ageing.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let later = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    assert_eq!(source(&later), pb::SnapshotSource::Stale);
    assert_eq!(version(&later), 1);
    assert!(
        age(&later) >= age(&first) + 300,
        "{} ms, then {} ms",
        age(&first),
        age(&later)
    );
    // A caller that accepts less than that age is refused at once.
    let mut strict = bob_pdf("acme");
    strict.max_staleness_ms = 100;
    let refused = client.check(strict).await.unwrap().into_inner();
    expect_decision(&refused, pb::Decision::Deny, &["entitlements_unavailable"]);
    // Past max_stale_ms, nobody gets it.
    let gone = answer_until(
        &client,
        bob_pdf("acme"),
        "the last good snapshot to pass max_stale_ms",
        |response| response.decision == pb::Decision::Deny as i32,
    )
    .await;
    expect_decision(&gone, pb::Decision::Deny, &["entitlements_unavailable"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_checks_on_a_cold_tenant_cause_one_redis_read() {
    let redis = RedisServer::start();
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put_examples(&conn, &["acme", "globex"]).await;
    let dirs = DataDirs::copy_examples();
    let server = InProcess::start(redis_config(&dirs, settings(vec![redis.url()]))).await;
    let mut client = connect(&server.url()).await;
    // Warm up the script cache with another tenant, then count from zero.
    client.check(bob_pdf("globex")).await.unwrap();
    let _: () = redis.command(&["CONFIG", "RESETSTAT"]);

    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect(&server.url()).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(500));
    let mut tasks = Vec::new();
    for index in 0..500 {
        let mut client = clients[index % clients.len()].clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            client.check(bob_pdf("acme")).await.map(|r| r.into_inner())
        }));
    }
    let mut allowed = 0;
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        if response.decision == pb::Decision::Allow as i32 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 500);
    let reads = redis.calls("evalsha") + redis.calls("eval");
    assert_eq!(
        reads, 1,
        "500 concurrent checks on a cold tenant must read Redis once"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_serves_warm_tenants_stale_and_recovers_by_itself() {
    let mut redis = RedisServer::start_with(Options {
        aof: true,
        ..Options::default()
    });
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put_examples(&conn, &["acme", "hooli"]).await;
    let dirs = DataDirs::copy_examples();
    let server = InProcess::start(redis_config(&dirs, settings(vec![redis.url()]))).await;
    let mut client = connect(&server.url()).await;
    let warm = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    assert_eq!(source(&warm), pb::SnapshotSource::Redis);

    // A client keeps checking the warm tenant while Redis dies.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let checker = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let (mut answered, mut stale, mut failed) = (0u32, 0u32, Vec::new());
            for _ in 0..20_000 {
                if *stop_rx.borrow() {
                    break;
                }
                match client.check(bob_pdf("acme")).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        answered += 1;
                        if response.decision != pb::Decision::Allow as i32 {
                            failed.push(format!("{:?}", response.reasons));
                        }
                        if source(&response) == pb::SnapshotSource::Stale {
                            stale += 1;
                        }
                    }
                    Err(status) => failed.push(status.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (answered, stale, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    let stale = answer_until(
        &client,
        bob_pdf("acme"),
        "checks to be answered STALE",
        |response| source(response) == pb::SnapshotSource::Stale,
    )
    .await;
    expect_decision(&stale, pb::Decision::Allow, &["member_role"]);
    // A tenant never cached cannot be decided.
    let cold = client
        .check(check("hooli", "User:gavin", "use", "Feature:pdf-export"))
        .await
        .unwrap()
        .into_inner();
    expect_decision(&cold, pb::Decision::Deny, &["entitlements_unavailable"]);
    // A caller that accepts nothing older than 1 ms is not decided on stale data.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut strict = bob_pdf("acme");
    strict.max_staleness_ms = 1;
    let strict = client.check(strict).await.unwrap().into_inner();
    expect_decision(&strict, pb::Decision::Deny, &["entitlements_unavailable"]);

    // Redis comes back (its data from the append-only file): tollgate recovers
    // with no restart, and invalidations flow again.
    redis.restart();
    let recovered = answer_until(
        &client,
        bob_pdf("acme"),
        "checks to be answered current again",
        |response| source(response) != pb::SnapshotSource::Stale,
    )
    .await;
    expect_decision(&recovered, pb::Decision::Allow, &["member_role"]);
    let _ = stop_tx.send(true);
    let (answered, stale_count, failed) = checker.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed checks: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        answered > 0 && stale_count > 0,
        "answered {answered}, stale {stale_count}"
    );

    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    let hooli = client
        .check(check("hooli", "User:gavin", "use", "Feature:pdf-export"))
        .await
        .unwrap()
        .into_inner();
    expect_decision(&hooli, pb::Decision::Deny, &["tier_too_low"]);
    put(
        &conn,
        &document("acme", 2, |v| set_account(v, "tier", 0.into())),
    )
    .await;
    answer_until(
        &client,
        bob_pdf("acme"),
        "the invalidation after the outage",
        |response| version(response) == 2 && codes(response) == ["tier_too_low"],
    )
    .await;
    server.stop().await.unwrap();
}

fn free_address() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_needs_its_token_and_validates_writes() {
    let redis = RedisServer::start();
    let dirs = DataDirs::copy_examples();
    let mut config = redis_config(&dirs, settings(vec![redis.url()]));
    let admin_address = free_address();
    config.admin_listen = Some(admin_address);
    config.admin_token = Some(Secret(TOKEN.to_string()));
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    let mut admin = AdminServiceClient::new(channel(&format!("http://{admin_address}")).await);
    let acme = pb::PutSnapshotRequest {
        snapshot_json: document("acme", 3, |_| {}),
    };

    for token in [None, Some("wrong-token-wrong-token")] {
        let status = admin
            .put_snapshot(authed(acme.clone(), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let status = admin
            .list_snapshots(authed(pb::ListSnapshotsRequest {}, token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let nothing: Vec<String> = redis.command(&["KEYS", "tollgate:*"]);
    assert!(nothing.is_empty(), "{nothing:?}");

    let written = admin
        .put_snapshot(authed(acme.clone(), Some(TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            written.tenant.as_str(),
            written.version,
            written.previous_version
        ),
        ("acme", 3, 0)
    );
    let decided = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    assert_eq!(version(&decided), 3);
    // The same write again (a retry after a lost reply) is answered as
    // done; another document at that version is not newer.
    let again = admin
        .put_snapshot(authed(acme.clone(), Some(TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.version, again.previous_version), (3, 3));
    let same_version =
        admin
            .put_snapshot(authed(
                pb::PutSnapshotRequest {
                    snapshot_json: document("acme", 3, |v| {
                        v["entities"].as_array_mut().unwrap().push(serde_json::json!({
                        "uid": {"type": "User", "id": "zed"},
                        "attrs": {"account": {"__entity": {"type": "Account", "id": "acme"}}},
                        "parents": []
                    }));
                    }),
                },
                Some(TOKEN),
            ))
            .await
            .unwrap_err();
    assert_eq!(same_version.code(), Code::FailedPrecondition);

    let invalid = admin
        .put_snapshot(authed(
            pb::PutSnapshotRequest {
                snapshot_json: document("acme", 4, |v| set_account(v, "plan", 7.into())),
            },
            Some(TOKEN),
        ))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(invalid.message().contains("plan"), "{}", invalid.message());
    let regression = admin
        .put_snapshot(authed(
            pb::PutSnapshotRequest {
                snapshot_json: document("acme", 2, |_| {}),
            },
            Some(TOKEN),
        ))
        .await
        .unwrap_err();
    assert_eq!(regression.code(), Code::FailedPrecondition);
    assert_eq!(
        regression.message(),
        "version 2 of `acme` is not newer than the stored version 3"
    );
    let got = admin
        .get_snapshot(authed(
            pb::GetSnapshotRequest {
                tenant: "acme".into(),
            },
            Some(TOKEN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, 3);
    let missing = admin
        .get_snapshot(authed(
            pb::GetSnapshotRequest {
                tenant: "nobody".into(),
            },
            Some(TOKEN),
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let listed = admin
        .list_snapshots(authed(pb::ListSnapshotsRequest {}, Some(TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tenants, ["acme"]);
    let deleted = admin
        .delete_snapshot(authed(
            pb::DeleteSnapshotRequest {
                tenant: "acme".into(),
                expected_version: 3,
            },
            Some(TOKEN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted_version, 3);
    // The same delete again (a retry after a lost reply) is answered as
    // done; without an expected version, a tenant without a snapshot is
    // not found.
    let delete = |expected_version| {
        authed(
            pb::DeleteSnapshotRequest {
                tenant: "acme".into(),
                expected_version,
            },
            Some(TOKEN),
        )
    };
    let again = admin.delete_snapshot(delete(3)).await.unwrap().into_inner();
    assert_eq!(again.deleted_version, 3);
    let gone = admin.delete_snapshot(delete(0)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_auth_is_used_and_a_wrong_password_serves_nothing() {
    let redis = RedisServer::start_with(Options {
        password: Some("s3cret-pass".to_string()),
        ..Options::default()
    });
    let mut good = settings(vec![redis.url()]);
    good.password = Some("s3cret-pass".to_string());
    let conn = RedisConn::connect(&good).await.unwrap();
    put_examples(&conn, &["acme"]).await;

    let dirs = DataDirs::copy_examples();
    let server = InProcess::start(redis_config(&dirs, good)).await;
    let mut client = connect(&server.url()).await;
    let response = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    expect_decision(&response, pb::Decision::Allow, &["member_role"]);
    server.stop().await.unwrap();

    let mut wrong = settings(vec![redis.url()]);
    wrong.password = Some("not-it".to_string());
    let error = RedisConn::connect(&wrong).await.unwrap_err();
    assert!(error.to_string().to_lowercase().contains("pass"), "{error}");
    let server = InProcess::start(redis_config(&dirs, wrong)).await;
    let mut client = connect(&server.url()).await;
    let response = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    expect_decision(&response, pb::Decision::Deny, &["entitlements_unavailable"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_redis_cluster_serves_and_invalidates() {
    let redis = RedisServer::start_with(Options {
        cluster: true,
        ..Options::default()
    });
    // The keys of one tenant share a slot: the one its name hashes to.
    let slot = |key: &str| -> i64 { redis.command(&["CLUSTER", "KEYSLOT", key]) };
    for tenant in ["acme", "globex"] {
        assert_eq!(
            slot(&format!("tollgate:{{{tenant}}}:snapshot")),
            slot(tenant)
        );
        assert_eq!(
            slot(&format!("tollgate:{{{tenant}}}:version")),
            slot(tenant)
        );
    }
    let mut cluster = settings(vec![redis.url()]);
    cluster.cluster = true;
    let conn = RedisConn::connect(&cluster).await.unwrap();
    put_examples(&conn, &["acme", "globex"]).await;
    assert_eq!(conn.list_tenants().await.unwrap(), ["acme", "globex"]);

    let dirs = DataDirs::copy_examples();
    let server = InProcess::start(redis_config(&dirs, cluster)).await;
    let mut client = connect(&server.url()).await;
    let first = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    expect_decision(&first, pb::Decision::Allow, &["member_role"]);
    assert_eq!(source(&first), pb::SnapshotSource::Redis);
    put(
        &conn,
        &document("acme", 2, |v| set_account(v, "tier", 0.into())),
    )
    .await;
    answer_until(
        &client,
        bob_pdf("acme"),
        "the invalidation through the cluster",
        |response| version(response) == 2 && codes(response) == ["tier_too_low"],
    )
    .await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_connect_over_tls_with_a_private_ca() {
    let redis = RedisServer::start_with(Options {
        tls: true,
        ..Options::default()
    });
    let mut tls = settings(vec![redis.url()]);
    // Without the CA the server's certificate is refused.
    let error = RedisConn::connect(&tls).await.unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    tls.tls_ca_file = Some(redis.ca_file());
    let conn = RedisConn::connect(&tls).await.unwrap();
    put_examples(&conn, &["acme"]).await;

    let dirs = DataDirs::copy_examples();
    let server = InProcess::start(redis_config(&dirs, tls)).await;
    let mut client = connect(&server.url()).await;
    let first = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    expect_decision(&first, pb::Decision::Allow, &["member_role"]);
    assert_eq!(source(&first), pb::SnapshotSource::Redis);
    put(&conn, &document("acme", 2, |_| {})).await;
    answer_until(
        &client,
        bob_pdf("acme"),
        "the invalidation over TLS",
        |response| version(response) == 2,
    )
    .await;
    server.stop().await.unwrap();
}

/// Runs the `tollgate` binary with `args`; returns (exit code, stdout, stderr).
fn tollgate(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_REDIS_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_snapshot_command_writes_reads_and_refuses() {
    let redis = RedisServer::start();
    let url = redis.url();
    let policies = example_policies().display().to_string();
    let base = [
        "snapshot",
        "--policies",
        policies.as_str(),
        "--redis-url",
        url.as_str(),
    ];
    let run = |extra: &[&str], stdin: Option<&str>| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        tollgate(&args, stdin)
    };

    let acme = example_entitlements()
        .join("acme.json")
        .display()
        .to_string();
    let (code, stdout, _) = run(&["put", &acme], None);
    assert_eq!(
        (code, stdout.trim()),
        (0, "wrote acme version 1 (replacing nothing)")
    );
    let (code, stdout, _) = run(&["put", &acme], None);
    assert_eq!(
        (code, stdout.trim()),
        (0, "acme version 1 is stored already (nothing changed)")
    );
    let (code, _, stderr) = run(
        &["put", "-"],
        Some(&document("acme", 1, |v| {
            v["entities"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "uid": {"type": "User", "id": "zed"},
                    "attrs": {"account": {"__entity": {"type": "Account", "id": "acme"}}},
                    "parents": []
                }));
        })),
    );
    assert_eq!(code, 1);
    assert_eq!(
        stderr.trim(),
        "version 1 of `acme` is not newer than the stored version 1"
    );
    let (code, _, stderr) = run(
        &["put", "-"],
        Some(&document("acme", 2, |v| set_account(v, "tier", "x".into()))),
    );
    assert_eq!(code, 1);
    assert!(stderr.starts_with("invalid snapshot:"), "{stderr}");
    let (code, stdout, _) = run(&["put", "-"], Some(&document("acme", 2, |_| {})));
    assert_eq!(
        (code, stdout.trim()),
        (0, "wrote acme version 2 (replacing version 1)")
    );
    let (code, stdout, _) = run(&["list"], None);
    assert_eq!((code, stdout.trim()), (0, "acme"));
    let (code, stdout, _) = run(&["get", "acme"], None);
    assert_eq!(code, 0);
    let stored: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(stored["version"], 2);
    let (code, _, stderr) = run(&["get", "nobody"], None);
    assert_eq!(
        (code, stderr.trim()),
        (1, "no snapshot stored for `nobody`")
    );
    let (code, stdout, _) = run(&["delete", "acme", "--expected-version", "2"], None);
    assert_eq!((code, stdout.trim()), (0, "deleted acme version 2"));

    // Redis unreachable: exit 3, within the timeout.
    drop(redis);
    let (code, _, stderr) = run(&["list"], None);
    assert_eq!(code, 3, "{stderr}");
    // No Redis configured at all: exit 2.
    let (code, _, stderr) = tollgate(&["snapshot", "--policies", &policies, "list"], None);
    assert_eq!(code, 2);
    assert!(stderr.contains("no Redis configured"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_source_reports_its_cache_and_connection_in_metrics() {
    let redis = RedisServer::start();
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put_examples(&conn, &["acme"]).await;
    let dirs = DataDirs::copy_examples();
    let mut config = redis_config(&dirs, settings(vec![redis.url()]));
    let metrics_address = free_address();
    config.metrics_listen = Some(metrics_address);
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    for _ in 0..3 {
        client.check(bob_pdf("acme")).await.unwrap();
    }
    client.check(bob_pdf("nobody")).await.unwrap();
    let address = metrics_address.to_string();
    let (status, text) = tokio::task::spawn_blocking(move || http_get(&address, "/metrics"))
        .await
        .unwrap();
    assert!(status.contains("200"), "{status}");
    // acme: one miss, then two hits; nobody: one miss (cached as absent).
    assert_eq!(sample(&text, "tollgate_cache_misses_total"), 2.0);
    assert_eq!(sample(&text, "tollgate_cache_hits_total"), 2.0);
    assert_eq!(sample(&text, "tollgate_redis_snapshot_reads_total"), 2.0);
    assert_eq!(sample(&text, "tollgate_cache_entries"), 2.0);
    assert_eq!(sample(&text, "tollgate_redis_connected"), 1.0);
    assert!(sample(&text, "tollgate_cache_weight_bytes") > 1024.0);
    assert_eq!(sample(&text, "tollgate_snapshots_stale_served_total"), 0.0);
    server.stop().await.unwrap();
}

#[test]
fn validate_checks_every_snapshot_in_redis_against_the_schema() {
    let redis = RedisServer::start();
    let url = redis.url();
    let policies = example_policies().display().to_string();
    let acme = example_entitlements()
        .join("acme.json")
        .display()
        .to_string();
    let put = tollgate(
        &[
            "snapshot",
            "--policies",
            &policies,
            "--redis-url",
            &url,
            "put",
            &acme,
        ],
        None,
    );
    assert_eq!(put.0, 0, "{put:?}");
    let _: () = redis.command(&[
        "SET",
        "tollgate:{bad}:snapshot",
        r#"{"tenant":"bad","version":1,"entities":[{"uid":{"type":"User","id":"x"},"attrs":{},"parents":[]}]}"#,
    ]);
    let validate = |url: &str| {
        let args = ["validate", "--policies", policies.as_str()];
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command.args(args).env("TOLLGATE_REDIS_URL", url);
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, stdout) = validate(&url);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.starts_with("redis tollgate:{bad}:snapshot: entities do not match the schema:"),
        "{stdout}"
    );
    assert!(stdout.contains("`account`"), "{stdout}");
    assert!(!stdout.contains("acme"), "{stdout}");
    drop(redis);
    let (code, stdout) = validate(&url);
    assert_eq!(code, Some(3), "{stdout}");
    assert!(stdout.starts_with("redis: "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_is_answered_deadline_exceeded() {
    let redis = RedisServer::start();
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put_examples(&conn, &["acme", "hooli"]).await;
    let dirs = DataDirs::copy_examples();
    // Redis calls may wait 10 s: the deadlines below come first.
    let mut redis_settings = settings(vec![redis.url()]);
    redis_settings.timeout = Duration::from_secs(10);
    let mut config = redis_config(&dirs, redis_settings);
    config.limits.request_timeout = Duration::from_millis(700);
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    assert!(client.check(bob_pdf("acme")).await.is_ok());

    // Redis stops answering: a snapshot not cached waits for it.
    tollgate_testkit::server::signal(redis.pid(), "STOP").unwrap();
    let mut request = tonic::Request::new(bob_pdf("hooli"));
    request.set_timeout(Duration::from_millis(300));
    let status = client.check(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.message(),
        "the call did not finish within its deadline of 270 ms"
    );
    // Without a deadline of its own, the caller gets the server's.
    let status = client.check(bob_pdf("hooli")).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.message(),
        "the call did not finish within its deadline of 700 ms"
    );
    // A cached tenant is still answered at once.
    let warm = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    assert_eq!(warm.decision, pb::Decision::Allow as i32);
    tollgate_testkit::server::signal(redis.pid(), "CONT").unwrap();
    let answered = answer_until(&client, bob_pdf("hooli"), "Redis to answer again", |_| true).await;
    // Decided on hooli's snapshot (bob is not one of its users).
    assert_eq!(codes(&answered), ["unknown_principal"], "{answered:?}");
    assert_eq!(answered.freshness.unwrap().snapshot_version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sidecar_slows_its_heartbeat_and_its_next_answer_is_still_fresh() {
    let redis = RedisServer::start();
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put_examples(&conn, &["acme"]).await;
    let dirs = DataDirs::copy_examples();
    let mut config = redis_config(&dirs, settings(vec![redis.url()]));
    config.cache.idle_heartbeat = Duration::from_secs(10);
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    let first = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    assert_eq!(source(&first), pb::SnapshotSource::Redis);

    // No lookups for 3 s: after one busy interval the heartbeat waits the
    // idle 10 s (at the busy 250 ms it would have sent about 12 PINGs).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pings_before = redis.calls("ping");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_pings = redis.calls("ping") - pings_before;
    assert!(idle_pings <= 1, "{idle_pings} PINGs in 3 idle seconds");

    // The subscription was last confirmed more than 3 s ago: the next
    // answer does not trust it, but revalidates, so its age is that of a
    // busy sidecar's (two heartbeats and the Redis timeout: 750 ms)...
    let after = client.check(bob_pdf("acme")).await.unwrap().into_inner();
    expect_decision(&after, pb::Decision::Allow, &["member_role"]);
    assert_eq!(version(&after), 1);
    assert!(
        age(&after) <= 750,
        "snapshot_age_ms {} after an idle spell",
        age(&after)
    );
    // ... and the heartbeat is brought forward: answers from the cache again.
    let cached = answer_until(
        &client,
        bob_pdf("acme"),
        "answers from the cache after the idle spell",
        |response| source(response) == pb::SnapshotSource::Cache,
    )
    .await;
    assert!(age(&cached) <= 750, "snapshot_age_ms {}", age(&cached));
    assert!(
        redis.calls("ping") > pings_before + idle_pings,
        "no PING after the first lookup of the idle spell"
    );
    server.stop().await.unwrap();
}
