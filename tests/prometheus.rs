//! The Grafana dashboard and the Prometheus alert rules the repository ships
//! (`helm/tollgate/files/grafana/tollgate-dashboard.json`,
//! `helm/tollgate/files/prometheus/tollgate-alerts.yaml`) against a real
//! Prometheus (Debian's `prometheus`, or `$PROMETHEUS`) scraping a running
//! tollgate under traffic, with Redis snapshots, metering and a decision log
//! (to stdout and to a Redis Stream):
//!
//! * `promtool check rules` passes on the shipped file;
//! * every alert is inactive (neither pending nor firing) while tollgate is
//!   healthy, and fires when its condition is provoked for real, with no
//!   other alert besides those already provoked: consumptions far over their
//!   cap (TollgateCapExceededSpike), a policy edit with a syntax error
//!   (TollgatePolicyReloadRejected), a second tollgate started on a broken
//!   policy directory (TollgateNoValidPolicySet, and its rejected first
//!   load), the redis-server killed (TollgateRedisDisconnected,
//!   TollgateDecisionLogStreamFailing, and TollgateSnapshotsStale once the
//!   cached snapshots are older than `max_stale_ms`), and a decision log
//!   whose stdout reader stalls (TollgateDecisionLogDropping);
//! * every dashboard panel's query, its template variables replaced, returns
//!   data through Prometheus's HTTP API, and so does each template variable.
//!
//! Prometheus loads a copy of the rules in which every `for:` is 1 s and
//! TollgateSnapshotsStale's threshold is this tollgate's `max_stale_ms`
//! (2 s) instead of the default 300 s; the expressions are otherwise the
//! shipped ones.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate::api::pb;
use tollgate::store::redis_client::RedisConn;
use tollgate_testkit::fixtures::{document, repository};
use tollgate_testkit::prelude::*;
use tollgate_testkit::redis_server::{free_port, put, settings, RedisServer};

const DASHBOARD: &str = "helm/tollgate/files/grafana/tollgate-dashboard.json";
const RULES: &str = "helm/tollgate/files/prometheus/tollgate-alerts.yaml";
/// The stale-snapshot condition as shipped: tollgate's default max_stale_ms.
const SHIPPED_STALE: &str = "tollgate_snapshot_oldest_age_seconds > 300";
/// `max_stale_ms` of the tollgate under test, and the rule's threshold for it.
const MAX_STALE_MS: &str = "2000";
const TEST_STALE: &str = "tollgate_snapshot_oldest_age_seconds > 2";
/// The longest any one wait of this test may take.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// The scrape job's name, which the dashboard's `$job` stands for.
const JOB: &str = "tollgate";
/// The Grafana variables of the panels' queries, as the test evaluates them:
/// every sample of the test lies within the windows.
const SUBSTITUTIONS: [(&str, &str); 7] = [
    ("$__rate_interval", "5m"),
    ("$__interval", "15s"),
    ("$__range", "10m"),
    ("${job}", JOB),
    ("$job", JOB),
    ("${instance}", ".*"),
    ("$instance", ".*"),
];

/// `$variable` if set, else `name` on the PATH; fails (never skips) when
/// neither is there.
fn tool(variable: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} is not on the PATH and ${variable} is not set: install Debian's \
                 prometheus package (scripts/test.sh does), which has prometheus and promtool"
            )
        })
}

/// Asserts `promtool check rules file` succeeds.
fn promtool_check(promtool: &Path, file: &Path) {
    let output = Command::new(promtool)
        .args(["check", "rules"])
        .arg(file)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", promtool.display()));
    assert!(
        output.status.success(),
        "promtool check rules {}: {}\n{}{}",
        file.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Checks the shipped rules' shape, writes the copy Prometheus loads (every
/// `for:` 1 s, the stale threshold at [`TEST_STALE`]) and returns the alert
/// names.
fn write_test_rules(shipped: &Path, copy: &Path) -> BTreeSet<String> {
    let mut rules: Value = serde_norway::from_str(&read(shipped)).expect("the rules are YAML");
    let mut names = BTreeSet::new();
    let mut stale_replaced = false;
    for group in rules["groups"].as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert rule").to_string();
            assert!(names.insert(name.clone()), "{name} twice");
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("critical" | "warning")),
                "{name}: severity {severity:?}"
            );
            for annotation in ["summary", "description", "runbook"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|text| !text.trim().is_empty()),
                    "{name}: no {annotation} annotation"
                );
            }
            assert!(rule["for"].is_string(), "{name}: no `for`");
            rule["for"] = "1s".into();
            let expr = rule["expr"].as_str().expect("expr").to_string();
            if name == "TollgateSnapshotsStale" {
                assert!(expr.contains(SHIPPED_STALE), "{name}: {expr}");
                rule["expr"] = expr.replace(SHIPPED_STALE, TEST_STALE).into();
                stale_replaced = true;
            }
        }
    }
    assert!(stale_replaced, "no TollgateSnapshotsStale rule");
    std::fs::write(copy, serde_norway::to_string(&rules).unwrap()).unwrap();
    names
}

/// A plain HTTP/1.0 GET (the answer is never chunked), bounded by 10 s;
/// returns the status code and the body.
fn http_get_blocking(address: &str, target: &str) -> Result<(u16, String), String> {
    let failed = |what: &str, error: std::io::Error| format!("GET {target}: {what}: {error}");
    let mut stream =
        std::net::TcpStream::connect(address).map_err(|error| failed("connect", error))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|error| failed("timeout", error))?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {address}\r\n\r\n")
        .map_err(|error| failed("send", error))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|error| failed("read", error))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {target}: not an HTTP answer: {response:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET {target}: no status in {head:?}"))?;
    Ok((code, body.to_string()))
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A `prometheus` process on a free loopback port, with its data and log in
/// a temporary directory; killed (by its own handle) when dropped.
struct Prometheus {
    child: Child,
    address: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `binary` with `config` (YAML) and waits until it is ready.
    async fn start(binary: &Path, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let mut prometheus = Self {
            child,
            address,
            dir,
        };
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited with {status}; log:\n{}",
                    prometheus.log()
                );
            }
            if matches!(prometheus.get_raw("/-/ready").await, Ok((200, _))) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {WAIT_LIMIT:?}; log:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn get_raw(&self, target: &str) -> Result<(u16, String), String> {
        let (address, target) = (self.address.clone(), target.to_string());
        tokio::task::spawn_blocking(move || http_get_blocking(&address, &target))
            .await
            .unwrap()
    }

    /// The `data` of an API call that must succeed.
    async fn api(&self, target: &str) -> Value {
        let (code, body) = self
            .get_raw(target)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("GET {target}: {code} {error}: {body}"));
        assert!(
            code == 200 && answer["status"] == "success",
            "GET {target}: {code} {body}"
        );
        answer["data"].clone()
    }

    /// The result of an instant query.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await;
        match &data["result"] {
            Value::Array(result) => result.clone(),
            // A scalar or string result: one value.
            other => vec![serde_json::json!({ "value": other })],
        }
    }

    /// The active alerts (pending or firing): `(alertname, instance, state)`.
    async fn alerts(&self) -> BTreeSet<(String, String, String)> {
        let data = self.api("/api/v1/alerts").await;
        data["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .map(|alert| {
                let label = |name: &str| alert["labels"][name].as_str().unwrap_or("").to_string();
                (
                    label("alertname"),
                    label("instance"),
                    alert["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Every rule evaluated without an error; returns the group's last
    /// evaluation time.
    async fn rules_healthy(&self) -> String {
        let data = self.api("/api/v1/rules").await;
        let groups = data["groups"].as_array().expect("groups");
        assert_eq!(groups.len(), 1, "{data}");
        for rule in groups[0]["rules"].as_array().expect("rules") {
            assert!(
                rule["health"] == "ok",
                "rule {} is {}: {}",
                rule["name"],
                rule["health"],
                rule["lastError"]
            );
        }
        groups[0]["lastEvaluation"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits until the rules have been evaluated `rounds` more times, each
    /// time without an error.
    async fn wait_evaluations(&self, rounds: usize) {
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut last = self.rules_healthy().await;
        let mut seen = 0;
        while seen < rounds {
            assert!(
                Instant::now() < deadline,
                "the rules were not evaluated {rounds} times within {WAIT_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.rules_healthy().await;
            if now != last {
                seen += 1;
                last = now;
            }
        }
    }

    /// Waits until `expr` has a sample.
    async fn wait_for_data(&self, expr: &str) {
        let deadline = Instant::now() + WAIT_LIMIT;
        while self.query(expr).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "no data for {expr} within {WAIT_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every alert of `expected` (alertname, instance) fires,
    /// then asserts that no other alert is active.
    async fn expect_alerts(&self, expected: &BTreeSet<(&str, String)>, step: &str) {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let active = self.alerts().await;
            let firing: BTreeSet<(&str, String)> = expected
                .iter()
                .filter(|(name, instance)| {
                    active
                        .iter()
                        .any(|(n, i, state)| n == name && i == instance && state == "firing")
                })
                .cloned()
                .collect();
            if &firing == expected {
                let unexpected: Vec<_> = active
                    .iter()
                    .filter(|(name, instance, _)| {
                        !expected.contains(&(name.as_str(), instance.clone()))
                    })
                    .collect();
                assert!(
                    unexpected.is_empty(),
                    "{step}: alerts active besides the expected ones: {unexpected:?}"
                );
                self.rules_healthy().await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{step}: within {WAIT_LIMIT:?} only {firing:?} of {expected:?} fired; active: {active:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a process's stdout (its decision log) so that the pipe never
/// fills, until paused: then the pipe fills and the writer blocks.
struct StdoutReader {
    paused: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl StdoutReader {
    fn start(mut stdout: ChildStdout) -> Self {
        let paused = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (pause, end) = (Arc::clone(&paused), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            while !end.load(Ordering::Acquire) {
                if pause.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                match stdout.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        Self { paused, done }
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }
}

impl Drop for StdoutReader {
    fn drop(&mut self) {
        self.paused.store(false, Ordering::Release);
        self.done.store(true, Ordering::Release);
    }
}

fn codes(response: &pb::CheckResponse) -> Vec<&str> {
    response.reasons.iter().map(|r| r.code.as_str()).collect()
}

/// acme's bob consumes `amount` of `Meter::"api-calls"` (limit 100000 a
/// month in the example snapshot).
fn consume(key: &str, amount: i64) -> pb::CheckRequest {
    let mut request = check("acme", "User:bob", "use", "Feature:api");
    request.consume = Some(pb::Consume {
        meter: "api-calls".to_string(),
        amount,
        idempotency_key: key.to_string(),
    });
    request
}

/// Checks that allow, checks that deny and consumptions that count, about
/// 150 a second, until stopped; stopped when dropped.
struct Traffic {
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<u64>>,
}

impl Traffic {
    fn start(url: String) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut client = connect(&url).await;
            let mut answered = 0;
            let mut round = 0u64;
            while !*stopped.borrow() {
                round += 1;
                for request in [
                    check("acme", "User:bob", "use", "Feature:pdf-export"),
                    check("hooli", "User:gavin", "use", "Feature:pdf-export"),
                    consume(&format!("traffic-{round}"), 1),
                ] {
                    if client.check(request).await.is_ok() {
                        answered += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answered
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    async fn stop(mut self) -> u64 {
        let _ = self.stop.send(true);
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Sends `count` checks on `tasks` connections at once; returns the answers.
async fn burst(
    url: &str,
    tasks: usize,
    count: usize,
    request: impl Fn(usize, usize) -> pb::CheckRequest + Clone + Send + 'static,
) -> Vec<pb::CheckResponse> {
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (url, request) = (url.to_string(), request.clone());
        handles.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            let mut answers = Vec::new();
            for index in 0..count / tasks {
                answers.push(decide(&mut client, request(task, index)).await);
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for handle in handles {
        answers.extend(handle.await.unwrap());
    }
    answers
}

/// A panel query as the test evaluates it: Grafana's variables replaced.
fn substitute(expr: &str) -> String {
    let mut expr = expr.to_string();
    for (variable, value) in SUBSTITUTIONS {
        expr = expr.replace(variable, value);
    }
    assert!(
        !expr.contains('$'),
        "a variable the test does not know: {expr}"
    );
    expr
}

/// Whether a result has a sample with a finite value.
fn has_finite_sample(result: &[Value]) -> bool {
    result.iter().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|value| value.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

/// The dashboard's panels (rows' nested panels included) after checking
/// its shape: schema version, a Prometheus datasource variable that every
/// panel and query uses, unique panel ids, queries with unique refIds.
fn dashboard_panels(dashboard: &Value) -> Vec<Value> {
    assert_eq!(dashboard["schemaVersion"], 39);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus datasource variable"
    );
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel.clone());
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested.iter().cloned());
        }
    }
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = &panel["title"];
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "panel id twice: {title}"
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title}: {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            assert!(ref_ids.insert(target["refId"].as_str().unwrap()), "{title}");
            assert!(
                target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}"
            );
        }
    }
    panels.retain(|panel| panel["type"] != "row");
    panels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alert_rules_work_on_a_real_prometheus() {
    let started = Instant::now();
    let prometheus_binary = tool("PROMETHEUS", "prometheus");
    let promtool = tool("PROMTOOL", "promtool");
    let shipped_rules = repository().join(RULES);
    promtool_check(&promtool, &shipped_rules);
    let work = tempfile::tempdir().unwrap();
    let test_rules = work.path().join("tollgate-alerts.yaml");
    let alert_names = write_test_rules(&shipped_rules, &test_rules);
    promtool_check(&promtool, &test_rules);
    let dashboard: Value =
        serde_json::from_str(&read(&repository().join(DASHBOARD))).expect("the dashboard is JSON");
    let panels = dashboard_panels(&dashboard);

    // Redis with two tenants; tollgate with snapshots from it, metering, a
    // decision log to stdout and to a Redis Stream, metrics on loopback.
    let mut redis = RedisServer::start();
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    for tenant in ["acme", "hooli"] {
        put(&conn, &document(tenant, 1, |_| {})).await;
    }
    let dirs = DataDirs::copy_examples();
    let metrics = format!("127.0.0.1:{}", free_port());
    let broken_metrics = format!("127.0.0.1:{}", free_port());
    let redis_url = redis.url();
    let mut server = ServerProcess::spawn_with_stdout(
        env!("CARGO_BIN_EXE_tollgate"),
        &dirs.policies,
        &dirs.entitlements,
        &[
            ("TOLLGATE_METRICS_LISTEN", metrics.as_str()),
            ("TOLLGATE_REDIS_URL", redis_url.as_str()),
            ("TOLLGATE_MAX_STALE_MS", MAX_STALE_MS),
            ("TOLLGATE_DECISION_LOG", "stdout"),
            ("TOLLGATE_DECISION_LOG_QUEUE", "1024"),
            ("TOLLGATE_DECISION_LOG_REDIS_STREAM", "tollgate:decisions"),
            ("TOLLGATE_RELOAD_DEBOUNCE_MS", "50"),
        ],
        Stdio::piped(),
    );
    let stdout = StdoutReader::start(server.take_stdout().expect("piped stdout"));
    assert_eq!(server.metrics_address().await, metrics);
    let mut client = connect(&server.url()).await;
    decide_expect(
        &mut client,
        check("acme", "User:bob", "use", "Feature:pdf-export"),
        pb::Decision::Allow,
        &["member_role"],
    )
    .await;
    decide_expect(
        &mut client,
        check("hooli", "User:gavin", "use", "Feature:pdf-export"),
        pb::Decision::Deny,
        &["tier_too_low"],
    )
    .await;
    let counted = decide(&mut client, consume("first", 1)).await;
    assert_eq!(counted.decision, pb::Decision::Allow as i32, "{counted:?}");

    // Prometheus scrapes it, and the target of a second tollgate started
    // later, every second, and evaluates the rules every second.
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{metrics}\", \"{broken_metrics}\"]\n",
        test_rules.display()
    );
    let prometheus = Prometheus::start(&prometheus_binary, &config).await;
    let traffic = Traffic::start(server.url());

    // Healthy: the series the rules read are scraped, the rules evaluated
    // three times more, without error, and no alert is pending or firing.
    for expr in [
        format!("tollgate_metering_consumes_total{{instance=\"{metrics}\"}} > 1"),
        format!("tollgate_decision_log_redis_records_total{{instance=\"{metrics}\", result=\"written\"}} > 0"),
        format!("tollgate_redis_connected{{instance=\"{metrics}\"}} == 1"),
        format!("rate(tollgate_decisions_total{{instance=\"{metrics}\"}}[1m]) > 0"),
    ] {
        prometheus.wait_for_data(&expr).await;
    }
    prometheus.wait_evaluations(3).await;
    let active = prometheus.alerts().await;
    assert!(active.is_empty(), "alerts while healthy: {active:?}");
    let mut expected: BTreeSet<(&str, String)> = BTreeSet::new();
    let mut provoked = BTreeSet::new();

    // Consumptions far over their cap, 1,600 in a few seconds: more than
    // 1 a second over 5 minutes, and no history to compare with.
    let over = burst(&server.url(), 4, 1600, |task, index| {
        consume(&format!("over-{task}-{index}"), 1_000_000)
    })
    .await;
    assert!(
        over.iter().all(|answer| codes(answer) == ["cap_exceeded"]),
        "{:?}",
        over.iter().find(|answer| codes(answer) != ["cap_exceeded"])
    );
    expected.insert(("TollgateCapExceededSpike", metrics.clone()));
    provoked.insert("TollgateCapExceededSpike");
    prometheus.expect_alerts(&expected, "cap exceeded").await;

    // A policy edit with a syntax error: the reload is rejected, the last
    // valid set keeps serving.
    let from = server.log_len();
    replace_file(&dirs.policies.join("broken.cedar"), "permit (principal,");
    server.wait_for_log(from, &["policy reload rejected"]).await;
    expected.insert(("TollgatePolicyReloadRejected", metrics.clone()));
    provoked.insert("TollgatePolicyReloadRejected");
    prometheus.expect_alerts(&expected, "rejected reload").await;
    decide_expect(
        &mut client,
        check("acme", "User:bob", "use", "Feature:pdf-export"),
        pb::Decision::Allow,
        &["member_role"],
    )
    .await;

    // A second tollgate, on the second target, whose policy directory has
    // never been valid: no policy set, and its first load rejected.
    let broken_dirs = DataDirs::copy_examples();
    replace_file(
        &broken_dirs.policies.join("broken.cedar"),
        "permit (principal,",
    );
    let broken = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &broken_dirs.policies,
        &broken_dirs.entitlements,
        &[("TOLLGATE_METRICS_LISTEN", broken_metrics.as_str())],
    );
    assert_eq!(broken.metrics_address().await, broken_metrics);
    expected.insert(("TollgateNoValidPolicySet", broken_metrics.clone()));
    expected.insert(("TollgatePolicyReloadRejected", broken_metrics.clone()));
    provoked.insert("TollgateNoValidPolicySet");
    prometheus
        .expect_alerts(&expected, "no valid policy set")
        .await;

    // Redis dies (the server this test started, killed by its handle): the
    // subscription is lost, the decision log's stream records fail, and
    // once the cached snapshots are older than max_stale_ms they are stale.
    redis.kill();
    expected.insert(("TollgateRedisDisconnected", metrics.clone()));
    expected.insert(("TollgateDecisionLogStreamFailing", metrics.clone()));
    expected.insert(("TollgateSnapshotsStale", metrics.clone()));
    provoked.extend([
        "TollgateRedisDisconnected",
        "TollgateDecisionLogStreamFailing",
        "TollgateSnapshotsStale",
    ]);
    prometheus.expect_alerts(&expected, "redis down").await;
    // The decision log's stdout reader stalls: the pipe fills, the writer
    // blocks, the queue (1,024 records) fills and records are dropped. (Last:
    // when the writer catches up, the records it hands on at once can
    // overflow the Redis Stream's queue, which the stream alert, already
    // firing, counts too.)
    stdout.pause(true);
    burst(&server.url(), 4, 4000, |_, _| {
        check("acme", "User:bob", "use", "Feature:pdf-export")
    })
    .await;
    expected.insert(("TollgateDecisionLogDropping", metrics.clone()));
    provoked.insert("TollgateDecisionLogDropping");
    prometheus
        .expect_alerts(&expected, "decision log drops")
        .await;
    stdout.pause(false);

    let provoked: BTreeSet<String> = provoked.into_iter().map(str::to_string).collect();
    assert_eq!(provoked, alert_names, "every shipped alert is provoked");

    // Every panel's query returns data (its `or vector(0)` fallback left
    // out, so that the metrics themselves must answer).
    let mut queries = 0;
    for panel in &panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = substitute(target["expr"].as_str().unwrap());
            let mut forms = vec![expr.clone()];
            if let Some(bare) = expr.strip_suffix(" or vector(0)") {
                forms.push(bare.to_string());
            }
            for form in forms {
                let result = prometheus.query(&form).await;
                assert!(
                    has_finite_sample(&result),
                    "panel {:?}, query {}: no data: {result:?}",
                    panel["title"],
                    form
                );
                queries += 1;
            }
        }
    }
    // The template variables' label_values(selector, label) queries.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let definition = variable["definition"].as_str().expect("definition");
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not label_values(...): {definition}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let selector = substitute(selector.trim());
        let values = prometheus
            .api(&format!(
                "/api/v1/label/{}/values?match[]={}",
                label.trim(),
                encode(&selector)
            ))
            .await;
        let want = if label.trim() == "job" { JOB } else { &metrics };
        assert!(
            values.as_array().unwrap().iter().any(|v| v == want),
            "variable {}: {values} lacks {want}",
            variable["name"]
        );
    }

    let answered = traffic.stop().await;
    assert!(answered > 0);
    broken.stop().unwrap();
    server.stop().unwrap();
    drop(stdout);
    eprintln!(
        "{} panels, {queries} queries with data, {} alerts provoked, in {:.1} s",
        panels.len(),
        alert_names.len(),
        started.elapsed().as_secs_f64()
    );
}
