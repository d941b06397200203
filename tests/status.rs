//! `tollgate status` as an operator runs it against a real server: what
//! serves, what went wrong (with file and line), and an exit code a script
//! can act on (0 healthy, 1 degraded, 2 bad arguments, 3 unreachable).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::process::{Command, Output, Stdio};

use tollgate::api::pb;
use tollgate::status::{Health, Report};
use tollgate_testkit::fixtures::document;
use tollgate_testkit::prelude::*;
use tollgate_testkit::redis_server::{put, settings, RedisServer};

/// Runs `tollgate status --metrics ADDR [extra...]` (blocking).
async fn status(address: &str, extra: &[&str]) -> Output {
    let address = address.to_string();
    let extra: Vec<String> = extra.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["status", "--metrics", &address])
            .args(&extra)
            .stdin(Stdio::null())
            .output()
            .expect("run tollgate status")
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn fetch_report(address: &str) -> (Report, Output) {
    let output = status(address, &["--json"]).await;
    let report = serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|error| panic!("{error}: {}{}", stdout(&output), stderr(&output)));
    (report, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_server_reports_what_serves_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[
            ("TOLLGATE_METRICS_LISTEN", "127.0.0.1:0"),
            ("TOLLGATE_DECISION_LOG", log.to_str().unwrap()),
            ("TOLLGATE_DECISION_LOG_SAMPLE_DENY", "0"),
        ],
    );
    let address = server.metrics_address().await;
    let mut client = connect(&server.url()).await;
    let allowed = decide(
        &mut client,
        check("acme", "User:bob", "use", "Feature:pdf-export"),
    )
    .await;
    decide(
        &mut client,
        check("hooli", "User:gavin", "use", "Feature:pdf-export"),
    )
    .await;
    let version = policy_version(&allowed);
    let (policies, tenants) = example_counts();

    let output = status(&address, &[]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with(&format!(
            "tollgate {}: healthy (up ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "policies: {policies} (policy_version {version}), serving for "
        )),
        "{text}"
    );
    assert!(text.contains("  last reload: applied, "), "{text}");
    assert!(
        text.contains(&format!(
            "snapshots: {tenants} tenants from files, oldest confirmed "
        )),
        "{text}"
    );
    assert!(
        text.contains("decision log: 1 queued, 0 dropped, 1 sampled out"),
        "{text}"
    );
    assert!(text.contains("tracing: not exported"), "{text}");
    assert!(!text.contains("problem"), "{text}");

    let (report, output) = fetch_report(&address).await;
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(report.status, Health::Healthy);
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(report.policies.loaded);
    assert_eq!(
        report.policies.policy_version.as_deref(),
        Some(version.as_str())
    );
    assert_eq!(report.policies.count, policies);
    assert!(report.policies.last_error.is_empty());
    assert_eq!(report.snapshots.source, "files");
    assert_eq!(report.snapshots.tenants, tenants);
    assert!(report.redis.is_none());
    let decision_log = report.decision_log.unwrap();
    assert_eq!((decision_log.queued, decision_log.sampled_out), (1, 1));
    assert!(!report.tracing.exporting);

    server.signal("TERM");
    server.expect_clean_exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_policy_reload_shows_file_and_line_and_exits_1() {
    let dirs = DataDirs::copy_examples();
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &dirs.policies,
        &dirs.entitlements,
        &[
            ("TOLLGATE_METRICS_LISTEN", "127.0.0.1:0"),
            ("TOLLGATE_RELOAD_DEBOUNCE_MS", "50"),
        ],
    );
    let address = server.metrics_address().await;
    let (before, _) = fetch_report(&address).await;
    let version = before.policies.policy_version.clone().unwrap();

    let broken = dirs.policies.join("broken.cedar");
    replace_file(
        &broken,
        "permit (principal, action, resource)\nwhen { context.now >=== 1 };\n",
    );
    let degraded = wait_until("the rejected reload in the report", || async {
        let (report, output) = fetch_report(&address).await;
        let rejected = report
            .policies
            .last_reload
            .as_ref()
            .is_some_and(|reload| reload.outcome == "rejected");
        if report.status == Health::Degraded && rejected {
            Ok((report, output))
        } else {
            Err(format!("{report:?}"))
        }
    })
    .await;
    let (report, output) = degraded;
    assert_eq!(output.status.code(), Some(1));
    // The last good set keeps serving.
    assert_eq!(
        report.policies.policy_version.as_deref(),
        Some(version.as_str())
    );
    assert_eq!(
        report
            .policies
            .last_reload
            .as_ref()
            .map(|r| r.outcome.as_str()),
        Some("rejected"),
        "{report:?}\n{}",
        server.log()
    );
    let problem = report
        .policies
        .last_error
        .iter()
        .find(|problem| problem.file.ends_with("broken.cedar"))
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(problem.line, Some(2), "{problem:?}");

    let output = status(&address, &[]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.lines().next().unwrap().contains(": DEGRADED (up "),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  problem: the last policy reload was rejected: policy_version {version} keeps serving"
        )),
        "{text}"
    );
    assert!(text.contains("  last policy reload rejected:"), "{text}");
    let location = format!("{}:2:", broken.display());
    assert!(
        text.lines()
            .any(|line| line.trim_start().starts_with(&location)),
        "no line starting with {location}:\n{text}"
    );

    // Fixed: healthy again.
    std::fs::remove_file(&broken).unwrap();
    wait_until("a healthy report after the fix", || async {
        let (report, output) = fetch_report(&address).await;
        match (report.status, output.status.code()) {
            (Health::Healthy, Some(0)) => Ok(()),
            _ => Err(format!("{report:?}")),
        }
    })
    .await;
    server.signal("TERM");
    server.expect_clean_exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_disconnected_is_degraded() {
    let mut redis = RedisServer::start();
    let conn = tollgate::store::redis_client::RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put(&conn, &document("acme", 1, |_| {})).await;
    let url = redis.url();
    let mut server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[
            ("TOLLGATE_METRICS_LISTEN", "127.0.0.1:0"),
            ("TOLLGATE_REDIS_URL", url.as_str()),
        ],
    );
    let address = server.metrics_address().await;
    let mut client = connect(&server.url()).await;
    let response = decide(
        &mut client,
        check("acme", "User:bob", "use", "Feature:pdf-export"),
    )
    .await;
    assert_decision(&response, pb::Decision::Allow);
    let (report, output) = fetch_report(&address).await;
    assert_eq!(output.status.code(), Some(0), "{report:?}");
    let connected = report.redis.unwrap();
    assert!(connected.connected);
    assert_eq!(connected.cache_entries, 1);
    assert!(connected.cache_weight_bytes > 1024, "{connected:?}");
    assert_eq!(report.snapshots.source, "redis");

    redis.kill();
    let (report, output) = wait_until("Redis seen as disconnected", || async {
        let (report, output) = fetch_report(&address).await;
        if report.redis.as_ref().is_some_and(|redis| !redis.connected) {
            Ok((report, output))
        } else {
            Err(format!("{report:?}"))
        }
    })
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(report.status, Health::Degraded);
    let text = stdout(&status(&address, &[]).await);
    assert!(
        text.contains("snapshots: from Redis (NOT CONNECTED), 1 cached"),
        "{text}"
    );
    assert!(text.contains("  problem: Redis is not connected"), "{text}");
    server.signal("TERM");
    server.expect_clean_exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_exits_3() {
    // A port that was free a moment ago: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = status(&format!("127.0.0.1:{port}"), &[]).await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{}",
        stderr(&output)
    );
    assert!(stdout(&output).is_empty());

    // Something that is not tollgate's metrics address.
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[],
    );
    let output = status(&server.addr.to_string(), &[]).await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).starts_with("error: "),
        "{}",
        stderr(&output)
    );

    // Not an address at all: a bad argument.
    let output = status("not an address", &[]).await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--metrics: `not an address` is not host:port"),
        "{}",
        stderr(&output)
    );
}
