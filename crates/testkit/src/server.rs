//! The server under test: in this process ([`InProcess`], through
//! `tollgate::app::serve_on`), or as a process of the built binary
//! ([`ServerProcess`], `tollgate serve`).
//!
//! The binary is the caller's to name: a test or benchmark of the root
//! package passes `env!("CARGO_BIN_EXE_tollgate")` (the binary cargo built for
//! it, in the same profile), the `loadgen` binary the one beside itself
//! ([`binary_beside_current_exe`]).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate::app::ServeError;
use tollgate::config::Config;

use crate::client::{POLL, WAIT};
use crate::measure::{memory, process_cpu, CpuSample, Memory};

/// Longest wait for a started server to listen, and then to report SERVING.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a server to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

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

    /// Serves `config` with the HTTP front door on a free loopback port as
    /// well; returns the server and the front door's `host:port`, once it
    /// accepts connections.
    pub async fn start_with_http(mut config: Config) -> (Self, String) {
        let address = SocketAddr::from(([127, 0, 0, 1], crate::redis_server::free_port()));
        config.http_listen = Some(address);
        let server = Self::start(config).await;
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        while tokio::net::TcpStream::connect(address).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the HTTP front door did not listen on {address} within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (server, address.to_string())
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

/// The `tollgate` binary beside the running executable, for a program that
/// cargo builds into the same directory (`target/<profile>/loadgen` next to
/// `target/<profile>/tollgate`; a test or benchmark in
/// `target/<profile>/deps/` looks one level up). It may not exist:
/// [`ServerProcess`] then says what to build.
pub fn binary_beside_current_exe() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|error| format!("cannot find the running executable: {error}"))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", exe.display()))?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    Ok(dir.join(format!("tollgate{}", std::env::consts::EXE_SUFFIX)))
}

/// What to run to build the missing `binary`: for a cargo profile directory
/// (`target/release/tollgate`), the cargo command that builds it there.
fn build_hint(binary: &Path) -> String {
    let dir = binary.parent();
    let profile = dir.and_then(Path::file_name).and_then(OsStr::to_str);
    let in_target = dir
        .and_then(Path::parent)
        .is_some_and(|target| target.join("CACHEDIR.TAG").exists());
    match profile {
        Some("debug") => "build it with `cargo build --bin tollgate`".to_string(),
        Some("release") => "build it with `cargo build --release --bin tollgate`".to_string(),
        Some(other) if in_target => {
            format!("build it with `cargo build --profile {other} --bin tollgate`")
        }
        _ => "build it with `cargo build --release --bin tollgate` and put it there".to_string(),
    }
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

/// Sends `signal` (`HUP`, `TERM`, ...) to process `pid` with `kill -SIGNAL
/// PID` (the workspace forbids unsafe code, so no `libc::kill`).
pub fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|error| format!("cannot run kill: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{signal} {pid}: {status}"))
    }
}

/// The address of the gRPC listener in a log line: the human format's
/// `listening address=127.0.0.1:PORT`, or the JSON format's
/// `{"message":"listening","address":"127.0.0.1:PORT",...}`.
fn listening_address(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        return (value["message"] == "listening")
            .then(|| value["address"].as_str()?.parse().ok())?;
    }
    if !line.contains("listening") {
        return None;
    }
    let rest = &line[line.find("address=")? + "address=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A process's log as it is written, a line at a time.
#[derive(Default)]
struct Log {
    text: Mutex<String>,
    /// Notified after every line.
    grew: Condvar,
}

impl Log {
    fn text(&self) -> MutexGuard<'_, String> {
        self.text.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `tollgate serve` process listening on a loopback port, in a temporary
/// working directory, with none of this process's `TOLLGATE_*`, `OTEL_*`,
/// `RUST_LOG` or `TOKIO_WORKER_THREADS` variables (only those it is given).
/// Its stderr, its log, is collected (ANSI colours removed). Killed (SIGKILL
/// to its pid) when dropped while still running.
///
/// Tests use the panicking forms ([`spawn`](Self::spawn),
/// [`signal`](Self::signal), [`wait_exit`](Self::wait_exit), ...);
/// benchmarks [`start`](Self::start) (which waits for SERVING) and
/// [`stop`](Self::stop), which return errors.
pub struct ServerProcess {
    name: String,
    child: Child,
    /// The address its gRPC listener is bound to.
    pub addr: SocketAddr,
    log: Arc<Log>,
    /// Kept so the working directory outlives the process.
    _cwd: TempDir,
}

impl ServerProcess {
    /// Spawns `binary serve --listen 127.0.0.1:0` over the two directories
    /// with `env`, and waits (bounded) for its `listening ... address=` log
    /// line; panics if it exits or does not listen within 30 s.
    pub fn spawn(
        binary: impl AsRef<Path>,
        policies: &Path,
        entitlements: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_with_stdout(binary, policies, entitlements, env, Stdio::null())
    }

    /// Like [`ServerProcess::spawn`], with the process's standard output as
    /// given (e.g. piped, taken with [`ServerProcess::take_stdout`]).
    pub fn spawn_with_stdout(
        binary: impl AsRef<Path>,
        policies: &Path,
        entitlements: &Path,
        env: &[(&str, &str)],
        stdout: Stdio,
    ) -> Self {
        Self::try_spawn(
            "tollgate",
            binary.as_ref(),
            policies,
            entitlements,
            env,
            stdout,
        )
        .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Spawns the server as [`ServerProcess::spawn`] does, named `name` in
    /// errors, and returns once it listens and reports SERVING. Call it
    /// outside any async runtime (it waits in one of its own).
    pub fn start<K, V>(
        name: &str,
        binary: impl AsRef<Path>,
        policies: &Path,
        entitlements: &Path,
        env: &[(K, V)],
    ) -> Result<Self, String>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut server = Self::try_spawn(
            name,
            binary.as_ref(),
            policies,
            entitlements,
            env,
            Stdio::null(),
        )?;
        server.wait_serving(deadline)?;
        Ok(server)
    }

    fn try_spawn<K, V>(
        name: &str,
        binary: &Path,
        policies: &Path,
        entitlements: &Path,
        env: &[(K, V)],
        stdout: Stdio,
    ) -> Result<Self, String>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let cwd = tempfile::tempdir()
            .map_err(|error| format!("cannot create a working directory: {error}"))?;
        let mut command = Command::new(binary);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
            .arg(policies)
            .arg("--entitlements")
            .arg(entitlements)
            .current_dir(cwd.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        for (variable, _) in std::env::vars_os() {
            let Some(variable) = variable.to_str() else {
                continue;
            };
            if variable.starts_with("TOLLGATE_")
                || variable.starts_with("OTEL_")
                || variable == "RUST_LOG"
                || variable == "TOKIO_WORKER_THREADS"
            {
                command.env_remove(variable);
            }
        }
        for (variable, value) in env {
            command.env(variable, value);
        }
        let mut child = command.spawn().map_err(|error| {
            if binary.exists() {
                format!("cannot start {name} ({}): {error}", binary.display())
            } else {
                format!(
                    "cannot start {name}: there is no tollgate binary at {}; {}",
                    binary.display(),
                    build_hint(binary)
                )
            }
        })?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Log::default());
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    let mut text = log.text();
                    text.push_str(&line);
                    text.push('\n');
                    drop(text);
                    log.grew.notify_all();
                }
            });
        }
        let mut server = Self {
            name: name.to_string(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            _cwd: cwd,
        };
        server.addr = server.wait_for_address()?;
        Ok(server)
    }

    fn wait_for_address(&mut self) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = self.log();
            if let Some(addr) = log.lines().find_map(listening_address) {
                return Ok(addr);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited with {status} before listening; log:\n{log}",
                    self.name
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} logged no `listening ... address=` line within {} s; log:\n{log}",
                    self.name,
                    READY_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls grpc.health.v1 (service `""`) until SERVING, from a runtime of
    /// its own.
    fn wait_serving(&mut self, deadline: Instant) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot build a runtime: {error}"))?;
        let address = self.addr;
        let timeout = deadline.saturating_duration_since(Instant::now());
        let serving = runtime.block_on(async move {
            let channel = crate::client::bounded_channel(address, timeout).await?;
            crate::client::wait_serving(&channel, timeout).await
        });
        serving.map_err(|error| {
            let exited = match self.child.try_wait() {
                Ok(Some(status)) => format!(" (exited with {status})"),
                _ => String::new(),
            };
            format!(
                "{}{exited}: {error}; log: {:?}",
                self.name,
                self.log_tail(10)
            )
        })
    }

    /// Its name (`tollgate` unless [`ServerProcess::start`] named it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's piped standard output, once.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// `f` of the log so far, read under its lock (no copy).
    fn with_log<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        f(&self.log.text())
    }

    /// Everything logged so far, a line each.
    pub fn log(&self) -> String {
        self.with_log(str::to_string)
    }

    /// The lines logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.with_log(|log| log.lines().map(str::to_string).collect())
    }

    /// Length of the log so far, to wait for lines logged after this point.
    pub fn log_len(&self) -> usize {
        self.with_log(str::len)
    }

    /// Its last `lines` log lines.
    pub fn log_tail(&self, lines: usize) -> Vec<String> {
        let all = self.lines();
        all[all.len().saturating_sub(lines)..].to_vec()
    }

    /// How many log lines so far contain `message`.
    pub fn log_count(&self, message: &str) -> usize {
        self.with_log(|log| log.lines().filter(|line| line.contains(message)).count())
    }

    /// The value of `key=` in the first log line that contains `message`.
    pub fn log_field(&self, message: &str, key: &str) -> Option<String> {
        let key = format!("{key}=");
        self.with_log(|log| {
            log.lines().find_map(|line| {
                if !line.contains(message) {
                    return None;
                }
                let rest = &line[line.find(&key)? + key.len()..];
                rest.split_whitespace().next().map(str::to_string)
            })
        })
    }

    /// Waits (blocking, at most `timeout`) until a line logged after byte
    /// `from` (see [`ServerProcess::log_len`]) satisfies `found`; returns that
    /// line, or `None` when none came.
    pub fn wait_for_line(
        &self,
        from: usize,
        timeout: Duration,
        found: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut text = self.log.text();
        loop {
            let line = text
                .get(from..)
                .and_then(|tail| tail.lines().find(|line| found(line)));
            if let Some(line) = line {
                return Some(line.to_string());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            text = self
                .log
                .grew
                .wait_timeout(text, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
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

    /// Asserts the log reports a stop that did not need the grace period.
    pub fn assert_stopped_cleanly(&self) {
        let log = self.log();
        assert!(log.contains("stopped"), "{log}");
        assert!(!log.contains("grace period over"), "{log}");
    }

    /// Waits (30 s) for the process to exit; asserts exit code 0 and a clean stop.
    pub async fn expect_clean_exit(&mut self) {
        let status = self.wait_exit(STOP_TIMEOUT).await;
        assert_eq!(status.code(), Some(0), "exit status {status}");
        self.assert_stopped_cleanly();
    }

    /// Sends `signal` (e.g. "TERM", "HUP") to this process; panics if `kill`
    /// fails.
    pub fn signal(&self, signal: &str) {
        self::signal(self.pid(), signal).unwrap_or_else(|error| panic!("{}: {error}", self.name));
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
                    "{} (pid {}) did not exit within {limit:?}; log:\n{}",
                    self.name,
                    self.pid(),
                    self.log()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Its CPU time so far (see [`process_cpu`]).
    pub fn cpu(&self) -> Option<CpuSample> {
        process_cpu(self.pid())
    }

    /// Its resident memory now (see [`memory`]).
    pub fn memory(&self) -> Option<Memory> {
        memory(self.pid())
    }

    /// Stops it with SIGTERM and waits (at most 30 s) for it to exit; `Err`
    /// unless it exits with status 0.
    pub fn stop(mut self) -> Result<(), String> {
        self::signal(self.pid(), "TERM").map_err(|error| format!("{}: {error}", self.name))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "{} exited with {status}; last log lines: {:?}",
                        self.name,
                        self.log_tail(5)
                    ))
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => {
                    let _ = self.child.kill();
                    return Err(format!(
                        "{} did not stop within {} s",
                        self.name,
                        STOP_TIMEOUT.as_secs()
                    ));
                }
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_address_is_read_from_human_and_json_lines() {
        let addr: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        assert_eq!(
            listening_address(
                "2026-01-01T00:00:00Z  INFO tollgate: listening address=127.0.0.1:50051 tls=false"
            ),
            Some(addr)
        );
        assert_eq!(
            listening_address(r#"{"message":"listening","address":"127.0.0.1:50051"}"#),
            Some(addr)
        );
        assert_eq!(
            listening_address("INFO tollgate: metrics at /metrics address=127.0.0.1:9090"),
            None
        );
        assert_eq!(
            listening_address(r#"{"message":"metrics at /metrics","address":"127.0.0.1:9090"}"#),
            None
        );
    }

    #[test]
    fn colours_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listening"),
            "2026  INFO listening"
        );
    }

    #[test]
    fn a_missing_binary_names_the_build_command() {
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("CACHEDIR.TAG"), "").unwrap();
        let hint = |profile: &str| build_hint(&target.path().join(profile).join("tollgate"));
        assert_eq!(hint("debug"), "build it with `cargo build --bin tollgate`");
        assert_eq!(
            hint("release"),
            "build it with `cargo build --release --bin tollgate`"
        );
        assert_eq!(
            hint("profiling"),
            "build it with `cargo build --profile profiling --bin tollgate`"
        );
        assert_eq!(
            build_hint(Path::new("/opt/bench/tollgate")),
            "build it with `cargo build --release --bin tollgate` and put it there"
        );
    }

    #[test]
    fn the_binary_is_looked_for_beside_the_executable_or_above_deps() {
        let binary = binary_beside_current_exe().unwrap();
        assert_eq!(
            binary.file_name().and_then(OsStr::to_str),
            Some(format!("tollgate{}", std::env::consts::EXE_SUFFIX).as_str())
        );
        // This test runs from target/<profile>/deps/: the binary is in
        // target/<profile>/.
        let exe = std::env::current_exe().unwrap();
        assert_eq!(binary.parent(), exe.parent().and_then(Path::parent));
    }
}
