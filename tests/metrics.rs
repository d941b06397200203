//! The Prometheus endpoint as a scraper sees it: OpenMetrics text whose
//! counters move with known traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::io::{Read, Write};

use common::*;

/// `GET path` over plain HTTP/1.1; returns the status line and the body.
fn http_get(address: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to metrics");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

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
    let mut server = Binary::spawn(
        &example_policies(),
        &example_entitlements(),
        &[("TOLLGATE_METRICS_LISTEN", "127.0.0.1:0")],
    );
    let log = server.wait_for_log(0, &["metrics at /metrics"]).await;
    let line = log
        .lines()
        .find(|line| line.contains("metrics at /metrics"))
        .unwrap();
    let address = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("address="))
        .expect("metrics address in the log")
        .to_string();

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
