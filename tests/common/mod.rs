//! Helpers shared by the integration tests: example data in tempdirs, an
//! in-process server on a loopback port, the real `tollgate` binary with its
//! address read from its log, and request builders.

#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the helpers"
)]

pub mod redis_server;

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tollgate::app::ServeError;
use tollgate::config::Config;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Policies and tenant snapshots the shipped catalog holds, counted from the
/// files, so that tests follow the catalog as it grows.
pub fn example_counts() -> (usize, usize) {
    let policies = tollgate_engine::PolicySnapshot::load_dir(&example_policies())
        .expect("the shipped catalog loads")
        .policy_count();
    let tenants = std::fs::read_dir(example_entitlements())
        .expect("entitlements directory")
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    (policies, tenants)
}

/// `GET path` over plain HTTP/1.1 (blocking); returns the status line and
/// the body.
pub fn http_get(address: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect over HTTP");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// How often bounded waits poll.
pub const POLL: Duration = Duration::from_millis(20);
/// Upper bound of every wait for something that should happen soon.
pub const WAIT: Duration = Duration::from_secs(10);
/// The `now` every request uses: after globex's trial ended (2026-06-30).
pub const NOW: &str = "2026-11-27T12:00:00Z";

/// The repository's example policy directory.
pub fn example_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// The repository's example entitlements directory.
pub fn example_entitlements() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("entitlements")
}

/// A tempdir holding copies of the example `policies/` and `entitlements/`.
pub struct DataDirs {
    pub root: TempDir,
    pub policies: PathBuf,
    pub entitlements: PathBuf,
}

impl DataDirs {
    /// Copies the examples into a fresh tempdir.
    pub fn copy_examples() -> Self {
        let root = tempfile::tempdir().expect("create tempdir");
        let policies = root.path().join("policies");
        let entitlements = root.path().join("entitlements");
        copy_dir(&example_policies(), &policies);
        copy_dir(&example_entitlements(), &entitlements);
        Self {
            root,
            policies,
            entitlements,
        }
    }

    /// A config serving these directories, reloading quickly after changes.
    pub fn config(&self) -> Config {
        let mut config = Config::with_dirs(self.policies.clone(), self.entitlements.clone());
        config.reload_debounce = Duration::from_millis(50);
        config
    }
}

/// Copies the regular files of `from` into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read example directory") {
        let path = entry.expect("directory entry").path();
        if path.is_file() {
            let name = path.file_name().expect("file name");
            std::fs::copy(&path, to.join(name)).expect("copy example file");
        }
    }
}

/// Replaces `path` atomically: writes a hidden temporary file next to it (hidden
/// files are never loaded) and renames it over `path`.
pub fn replace_file(path: &Path, contents: &str) {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = path.parent().expect("file has a parent directory");
    let name = path.file_name().expect("file name").to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temporary = dir.join(format!(".{name}.tmp{n}"));
    std::fs::write(&temporary, contents).expect("write temporary file");
    std::fs::rename(&temporary, path).expect("rename temporary file into place");
}

/// Reads a file to a string.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read file")
}

/// A server started in this process with `tollgate::app::serve_on`.
pub struct InProcess {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

impl InProcess {
    /// Binds 127.0.0.1:0 and serves `config` on it.
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let handle = tokio::spawn(tollgate::app::serve_on(config, listener, async move {
            let _ = stop.await;
        }));
        Self {
            addr,
            shutdown: Some(shutdown),
            handle: Some(handle),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Begins the shutdown (what SIGTERM does to the binary).
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Begins the shutdown and waits (bounded) for `serve_on` to return.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.begin_shutdown();
        let handle = self.handle.take().expect("server task");
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("serve_on did not return within 30 s of the shutdown signal")
            .expect("server task panicked")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A connected `EntitlementService` client, retrying until the server accepts
/// (bounded).
pub async fn connect(url: &str) -> EntitlementServiceClient<Channel> {
    EntitlementServiceClient::new(channel(url).await)
}

/// A connected channel to `url` (bounded retries).
pub async fn channel(url: &str) -> Channel {
    let deadline = Instant::now() + WAIT;
    loop {
        match Channel::from_shared(url.to_string())
            .expect("valid url")
            .connect()
            .await
        {
            Ok(channel) => return channel,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(POLL).await;
            }
            Err(error) => panic!("cannot connect to {url} within {WAIT:?}: {error}"),
        }
    }
}

/// The health status of `service` ("" is the whole server).
pub async fn health(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown))
}

/// Opens a health watch on `service` and asserts its first update is SERVING.
pub async fn watch_serving(
    channel: &Channel,
    service: &str,
) -> tonic::Streaming<HealthCheckResponse> {
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("update").expect("open stream");
    assert_eq!(first.status, ServingStatus::Serving as i32, "{service:?}");
    watch
}

/// Polls every 20 ms until `probe` returns `Some`, failing after `WAIT` with
/// `what` and the last value seen.
pub async fn wait_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {WAIT:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Sends `request` until `done` accepts the answer (bounded by `wait_until`),
/// and returns that answer.
pub async fn answer_until(
    client: &EntitlementServiceClient<Channel>,
    request: pb::CheckRequest,
    what: &str,
    done: impl Fn(&pb::CheckResponse) -> bool,
) -> pb::CheckResponse {
    let done = &done;
    wait_until(what, || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            let response = client.check(request).await.expect("check").into_inner();
            if done(&response) {
                Ok(response)
            } else {
                let codes: Vec<&str> = response.reasons.iter().map(|r| r.code.as_str()).collect();
                Err(format!("{codes:?} {:?}", response.freshness))
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Requests and responses.

/// `{type, id}`.
pub fn entity_ref(type_name: &str, id: &str) -> pb::EntityRef {
    pb::EntityRef {
        r#type: type_name.to_string(),
        id: id.to_string(),
    }
}

/// Parses `Type:id`.
pub fn parse_ref(reference: &str) -> pb::EntityRef {
    let (type_name, id) = reference
        .rsplit_once(':')
        .expect("reference of the form Type:id");
    entity_ref(type_name, id)
}

pub fn string(value: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::String(value.to_string())),
    }
}

pub fn long(value: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Long(value)),
    }
}

pub fn extension(function: &str, arg: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Extension(pb::Extension {
            r#fn: function.to_string(),
            arg: arg.to_string(),
            args: Vec::new(),
        })),
    }
}

pub fn datetime(arg: &str) -> pb::Value {
    extension("datetime", arg)
}

pub fn set(values: Vec<pb::Value>) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Set(pb::ValueSet { values })),
    }
}

pub fn entity_value(type_name: &str, id: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Entity(entity_ref(type_name, id))),
    }
}

/// A request with the context its action needs: `now` (2026-11-27) for every
/// action, and `country: "BR"` for `use`. `principal` and `resource` are
/// `Type:id`; `action` is an id of type `Action`.
pub fn check(tenant: &str, principal: &str, action: &str, resource: &str) -> pb::CheckRequest {
    let mut context = HashMap::new();
    context.insert("now".to_string(), datetime(NOW));
    if action == "use" {
        context.insert("country".to_string(), string("BR"));
    }
    pb::CheckRequest {
        tenant: tenant.to_string(),
        principal: Some(parse_ref(principal)),
        action: Some(entity_ref("Action", action)),
        resource: Some(parse_ref(resource)),
        context,
        entities: Vec::new(),
        explain: false,
        max_staleness_ms: 0,
        consume: None,
    }
}

/// A request from `"tenant principal action resource"` (space separated; see
/// `check`).
pub fn check_str(spec: &str) -> pb::CheckRequest {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let [tenant, principal, action, resource] = parts[..] else {
        panic!("check spec needs `tenant principal action resource`: {spec:?}");
    };
    check(tenant, principal, action, resource)
}

/// Asserts the decision, with the response summary in the failure message.
#[track_caller]
pub fn assert_decision(response: &pb::CheckResponse, want: pb::Decision) {
    assert_eq!(decision(response), want, "{}", summary(response));
}

/// Asserts the decision and the reason codes, in order.
#[track_caller]
pub fn expect_decision(response: &pb::CheckResponse, want: pb::Decision, want_codes: &[&str]) {
    assert_decision(response, want);
    assert_eq!(codes(response), want_codes, "{}", summary(response));
}

/// Asserts the decision, the reason codes and the reasons' policy ids, in order.
#[track_caller]
pub fn expect_reasons(
    response: &pb::CheckResponse,
    want: pb::Decision,
    want_codes: &[&str],
    want_policy_ids: &[&str],
) {
    expect_decision(response, want, want_codes);
    assert_eq!(
        policy_ids(response),
        want_policy_ids,
        "{}",
        summary(response)
    );
}

/// One row of a table of checks: the request as for `check_str`, the expected
/// decision, reason codes and policy ids. An empty list is not checked.
pub type Case<'a> = (&'a str, pb::Decision, &'a [&'a str], &'a [&'a str]);

/// Sends every check of `cases` and asserts what each row expects; failure
/// messages name the row's request and the response summary.
pub async fn expect_cases(client: &mut EntitlementServiceClient<Channel>, cases: &[Case<'_>]) {
    for &(spec, want, want_codes, want_policy_ids) in cases {
        let response = decide(client, check_str(spec)).await;
        let context = format!("{spec}: {}", summary(&response));
        assert_eq!(decision(&response), want, "{context}");
        if !want_codes.is_empty() {
            assert_eq!(codes(&response), want_codes, "{context}");
        }
        if !want_policy_ids.is_empty() {
            assert_eq!(policy_ids(&response), want_policy_ids, "{context}");
        }
    }
}

/// Sends one check that must succeed and asserts its decision and reason codes.
pub async fn decide_expect(
    client: &mut EntitlementServiceClient<Channel>,
    request: pb::CheckRequest,
    want: pb::Decision,
    want_codes: &[&str],
) -> pb::CheckResponse {
    let response = decide(client, request).await;
    expect_decision(&response, want, want_codes);
    response
}

/// The decision of a response.
pub fn decision(response: &pb::CheckResponse) -> pb::Decision {
    pb::Decision::try_from(response.decision).unwrap_or(pb::Decision::Unspecified)
}

/// The reason codes of a response, in order.
pub fn codes(response: &pb::CheckResponse) -> Vec<String> {
    response.reasons.iter().map(|r| r.code.clone()).collect()
}

/// The reasons' policy ids, in order.
pub fn policy_ids(response: &pb::CheckResponse) -> Vec<String> {
    response
        .reasons
        .iter()
        .map(|r| r.policy_id.clone())
        .collect()
}

/// The serving policy version a response reports.
pub fn policy_version(response: &pb::CheckResponse) -> String {
    response
        .freshness
        .as_ref()
        .map(|f| f.policy_version.clone())
        .unwrap_or_default()
}

/// The tenant snapshot version a response reports.
pub fn snapshot_version(response: &pb::CheckResponse) -> u64 {
    response
        .freshness
        .as_ref()
        .map(|f| f.snapshot_version)
        .unwrap_or_default()
}

/// `DECISION_ALLOW [member_role] @ 9b8d...`, for assertion messages.
pub fn summary(response: &pb::CheckResponse) -> String {
    format!(
        "{} {:?} policies {:?} errors {:?} policy_version {} snapshot_version {}",
        decision(response).as_str_name(),
        codes(response),
        policy_ids(response),
        response.errors,
        policy_version(response),
        snapshot_version(response)
    )
}

/// Sends one check and returns the answer or the status.
pub async fn send(
    client: &mut EntitlementServiceClient<Channel>,
    request: pb::CheckRequest,
) -> Result<pb::CheckResponse, tonic::Status> {
    client.check(request).await.map(tonic::Response::into_inner)
}

/// Sends one check that must succeed.
pub async fn decide(
    client: &mut EntitlementServiceClient<Channel>,
    request: pb::CheckRequest,
) -> pb::CheckResponse {
    let description = format!("{request:?}");
    send(client, request)
        .await
        .unwrap_or_else(|status| panic!("Check failed: {status:?}\nrequest: {description}"))
}

// ---------------------------------------------------------------------------
// The real binary.

/// Environment variables `tollgate` reads; cleared for spawned servers so the
/// caller's environment cannot change what a test sees.
/// The variables of the environment running the tests that would configure
/// the binary: tollgate's own and OpenTelemetry's (which could switch trace
/// export on).
fn tollgate_env_vars() -> Vec<String> {
    std::env::vars()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("TOLLGATE_") || name.starts_with("OTEL_"))
        .collect()
}

/// Removes ANSI colour escapes (`ESC [ ... m`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `tollgate serve` process listening on a loopback port; its stderr is
/// collected (ANSI colours removed). Killed by pid when dropped if still running.
pub struct Binary {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// Kept so the working directory outlives the process.
    _cwd: TempDir,
}

impl Binary {
    /// Spawns `tollgate serve --listen 127.0.0.1:0` over the two directories,
    /// with extra `TOLLGATE_*` variables, and waits (bounded) for its
    /// `listening ... address=` log line.
    pub fn spawn(policies: &Path, entitlements: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_with_stdout(policies, entitlements, env, Stdio::null())
    }

    /// Like [`Binary::spawn`], with the process's standard output as given
    /// (e.g. piped, taken with [`Binary::take_stdout`]).
    pub fn spawn_with_stdout(
        policies: &Path,
        entitlements: &Path,
        env: &[(&str, &str)],
        stdout: Stdio,
    ) -> Self {
        let cwd = tempfile::tempdir().expect("create working directory");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--policies")
            .arg(policies)
            .arg("--entitlements")
            .arg(entitlements)
            .current_dir(cwd.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        for name in tollgate_env_vars() {
            command.env_remove(name);
        }
        command.env_remove("RUST_LOG");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn tollgate binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    log.push_str(&strip_ansi(&line));
                    log.push('\n');
                }
            });
        }
        let mut binary = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            _cwd: cwd,
        };
        binary.addr = binary.wait_for_address();
        binary
    }

    fn wait_for_address(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            let found = log
                .lines()
                .filter(|line| line.contains("listening"))
                .find_map(|line| {
                    let rest = &line[line.find("address=")? + "address=".len()..];
                    let text = rest.split_whitespace().next()?;
                    text.parse::<SocketAddr>().ok()
                });
            if let Some(addr) = found {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tollgate exited with {status} before listening; log:\n{log}");
            }
            if Instant::now() >= deadline {
                panic!("tollgate logged no `listening ... address=` line within 30 s; log:\n{log}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// The process id.
    /// The address of the metrics endpoint, from its log line (the binary
    /// must have been started with `TOLLGATE_METRICS_LISTEN`).
    pub async fn metrics_address(&self) -> String {
        let log = self.wait_for_log(0, &["metrics at /metrics"]).await;
        log.lines()
            .find(|line| line.contains("metrics at /metrics"))
            .and_then(|line| {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix("address="))
            })
            .expect("metrics address in the log")
            .to_string()
    }

    /// The process's piped standard output, once.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Length of the log so far, to wait for lines logged after this point.
    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits (bounded) until the log after byte `from` holds a line containing
    /// every one of `needles`; returns that line.
    pub async fn wait_for_log(&self, from: usize, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            let found = log.get(from..).and_then(|tail| {
                tail.lines()
                    .find(|line| needles.iter().all(|needle| line.contains(needle)))
                    .map(str::to_string)
            });
            if let Some(line) = found {
                return line;
            }
            if Instant::now() >= deadline {
                panic!("no log line containing {needles:?} within {WAIT:?}; log:\n{log}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asserts the log reports a stop that did not need the grace period.
    pub fn assert_stopped_cleanly(&self) {
        let log = self.log();
        assert!(log.contains("stopped"), "{log}");
        assert!(!log.contains("grace period over"), "{log}");
    }

    /// Waits (30 s) for the process to exit; asserts exit code 0 and a clean stop.
    pub async fn expect_clean_exit(&mut self) {
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(0), "exit status {status}");
        self.assert_stopped_cleanly();
    }

    /// Sends `signal` (e.g. "TERM", "HUP") to this process with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} {} failed: {status}",
            self.pid()
        );
    }

    /// Waits (bounded by `limit`) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for tollgate") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "tollgate (pid {}) did not exit within {limit:?}; log:\n{}",
                    self.pid(),
                    self.log()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGKILL to this child's pid only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of the sample `name` (no labels) in Prometheus text.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}
