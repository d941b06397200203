//! The real server as a process: `tollgate serve` of the binary cargo builds
//! for benchmarks (`env!("CARGO_BIN_EXE_tollgate")`: the `bench` profile under
//! `cargo bench`, the test profile under `cargo test --benches`), and what a
//! benchmark reads of a process from `/proc`: its CPU time and its memory.
//!
//! A [`ServerProcess`] listens on `127.0.0.1:0` (the address is read from its
//! `listening address=...` log line), is SERVING when `spawn` returns, is
//! stopped with SIGTERM by [`ServerProcess::stop`] (which checks that it exits
//! with status 0) and killed (SIGKILL to its pid) when dropped unstopped.
//!
//! Included with `#[path = "common/process.rs"]` by the benchmarks that run
//! servers as processes, next to `#[path = "common/grpc.rs"] mod grpc;` (it
//! connects through `crate::grpc`).

#![allow(dead_code, reason = "each benchmark uses a part of it")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for a started server to listen and then to report SERVING.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a server to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

/// One `tollgate serve` process.
pub struct ServerProcess {
    name: String,
    child: Child,
    address: SocketAddr,
    /// Every line it wrote to stderr: its log (without colours, as stderr is
    /// not a terminal).
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `tollgate serve --listen 127.0.0.1:0 --policies POLICIES
    /// --entitlements ENTITLEMENTS` with `env` and nothing else of this
    /// process's `TOLLGATE_*`, `OTEL_*`, `RUST_LOG` or `TOKIO_WORKER_THREADS`
    /// environment, and returns once it listens and reports SERVING.
    pub fn spawn(
        name: &str,
        policies: &Path,
        entitlements: &Path,
        env: &[(String, String)],
    ) -> Result<Self, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
            .arg(policies)
            .arg("--entitlements")
            .arg(entitlements)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
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
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot start {name}: {error}"))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut server = Self {
            name: name.to_string(),
            child,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(address) = server
                .log_field(": listening ", "address")
                .and_then(|address| address.parse().ok())
            {
                server.address = address;
                break;
            }
            server.check_running()?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} did not listen within {} s; log: {:?}",
                    READY_TIMEOUT.as_secs(),
                    server.log_tail(10)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server.wait_serving(deadline)?;
        Ok(server)
    }

    /// Polls grpc.health.v1 (service `""`) until SERVING, from a runtime of
    /// its own (`spawn` is called outside any runtime).
    fn wait_serving(&mut self, deadline: Instant) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot build a runtime: {error}"))?;
        let address = self.address;
        let timeout = deadline.saturating_duration_since(Instant::now());
        let serving = runtime.block_on(async move {
            let channel = crate::grpc::connect(address, timeout).await?;
            crate::grpc::wait_serving(&channel, timeout).await
        });
        serving.map_err(|error| {
            let _ = self.check_running();
            format!("{}: {error}; log: {:?}", self.name, self.log_tail(10))
        })
    }

    /// `Err` (with its last log lines) when the process has exited.
    fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited with {status}; log: {:?}",
                self.name,
                self.log_tail(10)
            )),
            Err(error) => Err(format!("{}: cannot wait: {error}", self.name)),
        }
    }

    /// Its name, as given to `spawn`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address its gRPC listener is bound to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of `key=` in the first log line that contains `message`.
    pub fn log_field(&self, message: &str, key: &str) -> Option<String> {
        let key = format!("{key}=");
        self.log.lock().unwrap().iter().find_map(|line| {
            if !line.contains(message) {
                return None;
            }
            let rest = &line[line.find(&key)? + key.len()..];
            rest.split_whitespace().next().map(str::to_string)
        })
    }

    /// How many log lines so far contain `message`.
    pub fn log_count(&self, message: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(message))
            .count()
    }

    /// Its last `lines` log lines.
    pub fn log_tail(&self, lines: usize) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(lines)..].to_vec()
    }

    /// Sends it `signal` (`HUP`, `TERM`, ...); see [`signal`].
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        self::signal(self.pid(), signal).map_err(|error| format!("{}: {error}", self.name))
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
        self.signal("TERM")?;
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
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
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

/// Sends `signal` (`HUP`, `TERM`, ...) to process `pid` with `kill -SIGNAL
/// PID` (the benchmarks forbid unsafe code, so no `libc::kill`).
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

/// CPU time (nanoseconds) of a process's threads at one moment, by thread id.
#[derive(Debug, Clone)]
pub struct CpuSample {
    tasks: HashMap<u64, u64>,
}

impl CpuSample {
    /// CPU seconds spent between `earlier` and this sample: for every thread
    /// alive now, its time now less its time then (0 for a thread started
    /// since). A thread that ended in between is not counted.
    pub fn seconds_since(&self, earlier: &CpuSample) -> f64 {
        let ns: u64 = self
            .tasks
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(earlier.tasks.get(tid).copied().unwrap_or(0)))
            .sum();
        ns as f64 / 1e9
    }
}

/// The CPU time of every thread of process `pid`: the first field of
/// `/proc/<pid>/task/<tid>/schedstat` (time on the CPU, in nanoseconds), or
/// where that is missing the thread's user + system clock ticks from its
/// `stat`; where the task list cannot be read, the whole process's ticks
/// from `/proc/<pid>/stat` (which also count ended threads). `None` when the
/// process is gone.
pub fn process_cpu(pid: u32) -> Option<CpuSample> {
    tasks_cpu(&format!("/proc/{pid}"), None).or_else(|| {
        let stat = format!("/proc/{pid}/stat");
        let ns = stat_ticks(Path::new(&stat))? * (1_000_000_000 / TICKS_PER_SECOND);
        Some(CpuSample {
            tasks: HashMap::from([(0, ns)]),
        })
    })
}

/// The CPU time of this process's threads whose name starts with `prefix`
/// (Linux truncates thread names to 15 bytes), as [`process_cpu`] reads it.
pub fn own_threads_cpu(prefix: &str) -> Option<CpuSample> {
    tasks_cpu("/proc/self", Some(prefix))
}

fn tasks_cpu(process: &str, prefix: Option<&str>) -> Option<CpuSample> {
    let mut tasks = HashMap::new();
    for task in std::fs::read_dir(format!("{process}/task")).ok()? {
        let Ok(task) = task else { continue };
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(prefix) = prefix {
            match std::fs::read_to_string(task.path().join("comm")) {
                Ok(name) if name.trim_end().starts_with(prefix) => {}
                _ => continue,
            }
        }
        let schedstat = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok());
        let ns = schedstat.or_else(|| {
            Some(stat_ticks(&task.path().join("stat"))? * (1_000_000_000 / TICKS_PER_SECOND))
        });
        if let Some(ns) = ns {
            tasks.insert(tid, ns);
        }
    }
    Some(CpuSample { tasks })
}

/// User + system clock ticks from a `stat` file.
fn stat_ticks(path: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at
    // `state`; utime and stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_bytes: u64,
    /// `VmHWM`: the most it has been resident.
    pub hwm_bytes: u64,
}

/// `VmRSS` and `VmHWM` of process `pid`; `None` when it is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let kib = line.strip_prefix(name)?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok().map(|kib| kib * 1024)
        })
    };
    Some(Memory {
        rss_bytes: field("VmRSS:")?,
        hwm_bytes: field("VmHWM:")?,
    })
}
