//! Graceful shutdown of the real binary: SIGTERM under load lets calls in
//! flight finish, refuses new ones, reports NOT_SERVING and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate::api::pb;
use tollgate_testkit::prelude::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// A batch that takes the server a while: every check brings request-scoped
/// features, so each one merges and validates entities.
fn heavy_batch() -> pb::CheckBatchRequest {
    let mut checks = Vec::new();
    for index in 0..100 {
        let mut request = check(
            "acme",
            "User:bob",
            "use",
            &format!("Feature:extra-0-{index}"),
        );
        for extra in 0..40 {
            request.entities.push(pb::Entity {
                uid: Some(entity_ref("Feature", &format!("extra-{extra}-{index}"))),
                attrs: [("min_tier".to_string(), long(1))].into(),
                parents: vec![],
                tags: Default::default(),
            });
        }
        checks.push(request);
    }
    pb::CheckBatchRequest { checks }
}

/// One call as the client saw it.
#[derive(Debug)]
struct Call {
    started: Instant,
    finished: Instant,
    outcome: Result<(), (Code, String)>,
}

/// Whether a failed call failed the way a call does that races the server's
/// graceful shutdown on a connection it is closing. `detail` is the status
/// message and its source chain.
///
/// - UNAVAILABLE: connection refused, or a stream refused (`REFUSED_STREAM`).
/// - CANCELLED "connection closed": hyper dropped a request it had not sent yet
///   because the connection closed.
/// - INTERNAL with `GoAway(.., NO_ERROR, Remote)`: the stream was above the last
///   stream id of the server's final GOAWAY, so the server never saw it.
///   tonic's client maps that to INTERNAL; the gRPC spec says UNAVAILABLE.
/// - UNKNOWN "broken pipe" / "connection reset": the client was still writing a
///   stream above the final GOAWAY when the server closed the socket (seen with
///   h2 frame logs: HEADERS of stream 9 arrive after `GoAway(last_stream_id=7)`,
///   then the server closes). From the client alone this cannot be told apart
///   from a response lost to the reset, so these are counted and printed.
fn raced_shutdown(code: Code, detail: &str) -> bool {
    match code {
        Code::Unavailable => true,
        Code::Cancelled => detail.contains("connection closed"),
        Code::Internal => {
            detail.contains("GoAway") && detail.contains("NO_ERROR") && detail.contains("Remote")
        }
        Code::Unknown => detail.contains("broken pipe") || detail.contains("ConnectionReset"),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_exits_zero() {
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[],
    );
    let url = server.url();

    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let successes = Arc::new(AtomicUsize::new(0));
    let exited = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..6 {
        let url = url.clone();
        let calls = Arc::clone(&calls);
        let successes = Arc::clone(&successes);
        let exited = Arc::clone(&exited);
        workers.push(tokio::spawn(async move {
            // Each worker has its own connection.
            let mut client = connect(&url).await;
            let batch = heavy_batch();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut failures_after_exit = 0;
            while failures_after_exit < 2 && Instant::now() < deadline {
                let started = Instant::now();
                let outcome = if worker % 2 == 0 {
                    client
                        .check_batch(batch.clone())
                        .await
                        .map(|r| assert_eq!(r.into_inner().responses.len(), 100))
                } else {
                    client
                        .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
                        .await
                        .map(|r| assert_eq!(decision(r.get_ref()), pb::Decision::Allow))
                };
                let finished = Instant::now();
                match &outcome {
                    Ok(()) => {
                        successes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        if exited.load(Ordering::Relaxed) {
                            failures_after_exit += 1;
                        } else {
                            tokio::time::sleep(POLL).await;
                        }
                    }
                }
                calls.lock().unwrap().push(Call {
                    started,
                    finished,
                    outcome: outcome.map_err(|s| {
                        (
                            s.code(),
                            format!("{}; {:?}", s.message(), std::error::Error::source(&s)),
                        )
                    }),
                });
            }
        }));
    }

    // Load is flowing before the signal.
    let counter = Arc::clone(&successes);
    wait_until("30 answered calls before SIGTERM", || {
        let n = counter.load(Ordering::Relaxed);
        async move {
            if n >= 30 {
                Ok(())
            } else {
                Err(format!("{n} answered"))
            }
        }
    })
    .await;

    let sigterm_at = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(30)).await;
    let exited_at = Instant::now();
    exited.store(true, Ordering::Relaxed);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log:\n{}",
        server.log()
    );

    for worker in workers {
        tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("worker finishes once the server is gone")
            .expect("worker task");
    }

    let calls = calls.lock().unwrap();
    let mut spanning_ok = 0;
    let mut spanning_failed = 0;
    for call in calls.iter() {
        match &call.outcome {
            Ok(()) => {
                if call.started < sigterm_at && call.finished > sigterm_at {
                    spanning_ok += 1;
                }
            }
            Err((code, message)) => {
                assert!(
                    call.finished >= sigterm_at,
                    "a call failed before shutdown began: {code:?} {message}"
                );
                assert!(
                    raced_shutdown(*code, message),
                    "call started {} SIGTERM, failed {} ms after it: \
                     after shutdown began, a call may only fail as a call racing the shutdown \
                     does (UNAVAILABLE, connection refused or closed, a stream above the GOAWAY); got {code:?}: {message}\nserver log:\n{}",
                    if call.started < sigterm_at { "before" } else { "after" },
                    call.finished.saturating_duration_since(sigterm_at).as_millis(),
                    server.log()
                );
                if call.started < sigterm_at {
                    spanning_failed += 1;
                }
                if *code != Code::Unavailable {
                    eprintln!(
                        "note: a call started {} SIGTERM failed as {code:?}, not UNAVAILABLE: {message}",
                        if call.started < sigterm_at { "before" } else { "after" }
                    );
                }
            }
        }
    }
    eprintln!(
        "{} calls ({} answered before SIGTERM); {spanning_ok} in flight at SIGTERM completed, {spanning_failed} in flight at SIGTERM refused",
        calls.len(),
        calls.iter().filter(|c| c.finished < sigterm_at && c.outcome.is_ok()).count()
    );
    assert!(
        spanning_ok >= 1,
        "no call in flight at SIGTERM completed ({spanning_failed} refused); calls: {calls:#?}"
    );
    // Calls made once the process is gone are refused: UNAVAILABLE, connection refused.
    let after_exit: Vec<&Call> = calls.iter().filter(|c| c.started > exited_at).collect();
    assert!(
        !after_exit.is_empty(),
        "every worker calls again after the exit"
    );
    for call in after_exit {
        let Err((code, message)) = &call.outcome else {
            panic!("a call after the exit was answered");
        };
        assert_eq!(*code, Code::Unavailable, "{message}");
        assert!(message.contains("Connection refused"), "{message}");
    }

    let log = server.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    server.assert_stopped_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_not_serving_to_health_watchers() {
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[],
    );
    let channel = channel(&server.url()).await;
    assert_eq!(health(&channel, "").await.unwrap(), ServingStatus::Serving);

    let mut watches = Vec::new();
    for service in ["", tollgate::app::SERVICE_NAME] {
        watches.push((service, watch_serving(&channel, service).await));
    }

    server.signal("TERM");
    for (service, watch) in &mut watches {
        let update = tokio::time::timeout(WAIT, watch.message())
            .await
            .unwrap_or_else(|_| panic!("no health update for {service:?} after SIGTERM"))
            .expect("update")
            .expect("stream open");
        assert_eq!(
            ServingStatus::try_from(update.status).unwrap(),
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    // Once the watchers hang up, nothing is left in flight: a clean stop.
    drop(watches);
    drop(channel);
    server.expect_clean_exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_while_a_health_watcher_stays_connected() {
    // A connected health watcher must not hold up the drain: its stream gets
    // NOT_SERVING and ends, and the process stops long before the grace period.
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[("TOLLGATE_SHUTDOWN_GRACE_MS", "120000")],
    );
    let channel = channel(&server.url()).await;
    let mut watch = watch_serving(&channel, "").await;

    server.signal("TERM");
    let mut updates = Vec::new();
    loop {
        let next = tokio::time::timeout(WAIT, watch.message())
            .await
            .expect("the watch stream moves on after SIGTERM")
            .expect("a clean end of the stream");
        match next {
            Some(update) => updates.push(ServingStatus::try_from(update.status).unwrap()),
            None => break,
        }
    }
    assert!(
        !updates.is_empty(),
        "no NOT_SERVING update before the stream ended"
    );
    assert!(
        updates.iter().all(|s| *s == ServingStatus::NotServing),
        "{updates:?}"
    );
    server.expect_clean_exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_exits_zero() {
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[],
    );
    let mut client = connect(&server.url()).await;
    let response = decide(
        &mut client,
        check_str("acme User:bob use Feature:pdf-export"),
    )
    .await;
    assert_decision(&response, pb::Decision::Allow);
    drop(client);
    server.signal("INT");
    let status = server.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(server.log().contains("SIGINT"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_delay_keeps_answering_after_health_turns_not_serving() {
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[("TOLLGATE_SHUTDOWN_DELAY_MS", "5000")],
    );
    let channel = channel(&server.url()).await;
    let mut client = tollgate::api::pb::entitlement_service_client::EntitlementServiceClient::new(
        channel.clone(),
    );
    server.signal("TERM");
    wait_until("health NOT_SERVING after SIGTERM", || {
        let channel = channel.clone();
        async move {
            match health(&channel, "").await {
                Ok(ServingStatus::NotServing) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    // Health says NOT_SERVING, and a new call on the open connection is
    // still answered during the delay.
    let response = client
        .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
        .await
        .expect("answered during the shutdown delay")
        .into_inner();
    assert_eq!(response.decision, pb::Decision::Allow as i32);
    assert!(server
        .log()
        .contains("still answering until the shutdown delay is over"));
    server.expect_clean_exit().await;
}
