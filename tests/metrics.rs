//! The Prometheus endpoint as a scraper sees it: OpenMetrics text whose
//! counters move with known traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use tollgate_testkit::prelude::*;

/// The value of the sample `name_and_labels` (exactly as printed), if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name_and_labels).then(|| value.parse().ok())?
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_known_traffic() {
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[("TOLLGATE_METRICS_LISTEN", "127.0.0.1:0")],
    );
    let address = server.metrics_address().await;

    let mut client = connect(&server.url()).await;
    for _ in 0..3 {
        decide(
            &mut client,
            check("acme", "User:bob", "use", "Feature:pdf-export"),
        )
        .await;
    }
    for _ in 0..2 {
        decide(
            &mut client,
            check("hooli", "User:gavin", "use", "Feature:pdf-export"),
        )
        .await;
    }
    let mut bad = check("acme", "User:bob", "use", "Feature:pdf-export");
    bad.tenant = String::new();
    assert!(send(&mut client, bad).await.is_err());

    let (status, text) = tokio::task::spawn_blocking({
        let address = address.clone();
        move || http_get(&address, "/metrics")
    })
    .await
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        assert!(series.starts_with("tollgate_"), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    assert_eq!(
        sample(
            &text,
            r#"tollgate_decisions_total{decision="allow",reason="member_role",front_door="grpc"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tollgate_decisions_total{decision="deny",reason="tier_too_low",front_door="grpc"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tollgate_invalid_requests_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tollgate_check_duration_seconds_count"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"tollgate_reloads_total{outcome="applied"}"#),
        Some(1.0),
        "{text}"
    );
    let (policies, tenants) = example_counts();
    assert_eq!(
        sample(&text, "tollgate_policies"),
        Some(policies as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tollgate_tenant_snapshots"),
        Some(tenants as f64),
        "{text}"
    );
    let version = policy_version(
        &decide(
            &mut client,
            check("acme", "User:bob", "use", "Feature:pdf-export"),
        )
        .await,
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"tollgate_policy_info{{policy_version="{version}"}}"#)
        ),
        Some(1.0),
        "{text}"
    );

    let (status, _) = tokio::task::spawn_blocking(move || http_get(&address, "/other"))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    server.signal("TERM");
    server.expect_clean_exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_detail_is_served_beside_the_metrics() {
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[("TOLLGATE_METRICS_LISTEN", "127.0.0.1:0")],
    );
    let address = server.metrics_address().await;
    let (status, body) = tokio::task::spawn_blocking({
        let address = address.clone();
        move || http_get(&address, "/status")
    })
    .await
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("a JSON report");
    assert_eq!(report["status"], "healthy", "{body}");
    let (policies, tenants) = example_counts();
    assert_eq!(report["policies"]["count"], policies, "{body}");
    assert_eq!(report["snapshots"]["tenants"], tenants, "{body}");
    assert!(report["decision_log"].is_null(), "{body}");

    let (status, body) = tokio::task::spawn_blocking(move || http_get(&address, "/nothing"))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(
        body.contains("/metrics") && body.contains("/status"),
        "{body}"
    );
    server.signal("TERM");
    server.expect_clean_exit().await;
}

/// Reads from `stream` until the server closes it (or `limit` passes, which
/// fails the test); returns what was read.
fn read_until_closed(stream: &mut std::net::TcpStream, limit: std::time::Duration) -> Vec<u8> {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(error) => panic!(
                "the server kept the connection open ({error}); read {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_surplus_metrics_connections_are_closed() {
    use std::io::Write;
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[("TOLLGATE_METRICS_LISTEN", "127.0.0.1:0")],
    );
    let address = server.metrics_address().await;
    let limit = tollgate::ops_http::HEADER_TIMEOUT * 3;

    // A request head that never ends does not hold its connection.
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: tollgate\r\nX-Slow: ")
        .unwrap();
    let answered = read_until_closed(&mut slow, limit);
    assert!(
        !String::from_utf8_lossy(&answered).contains("# EOF"),
        "{}",
        String::from_utf8_lossy(&answered)
    );

    // Past the connection cap, a connection is closed at once, unanswered.
    let idle: Vec<std::net::TcpStream> = (0..tollgate::ops_http::MAX_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    let mut surplus = std::net::TcpStream::connect(&address).unwrap();
    // Written after the server may have closed it: a reset is an answer too.
    let _ = surplus.write_all(b"GET /metrics HTTP/1.1\r\nHost: tollgate\r\n\r\n");
    let answered = read_until_closed(&mut surplus, limit);
    assert!(
        answered.is_empty(),
        "{}",
        String::from_utf8_lossy(&answered)
    );

    // The idle ones are closed in turn, and the endpoint serves again.
    let (status_line, body) = wait_until("the metrics endpoint to serve again", || {
        let address = address.clone();
        async move { try_http_get(&address, "/metrics") }
    })
    .await;
    assert!(status_line.contains("200"), "{status_line}");
    assert!(body.contains("# EOF"), "{body}");
    drop(idle);
    server.stop().unwrap();
}
