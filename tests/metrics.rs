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
            r#"tollgate_decisions_total{decision="allow",reason="member_role"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tollgate_decisions_total{decision="deny",reason="tier_too_low"}"#
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
