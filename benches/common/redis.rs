//! A real `redis-server` started by a benchmark on a free loopback port, in
//! its own temporary directory, without persistence, stopped (by its pid)
//! when dropped. The binary is `$REDIS_SERVER` or `redis-server` on the PATH.
//!
//! Included with `#[path = "common/redis.rs"]` by the benchmarks that need it
//! (not from `common/mod.rs`, which every benchmark compiles).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Longest wait for a started server to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `redis-server`.
pub struct RedisServer {
    /// Its loopback port.
    pub port: u16,
    dir: TempDir,
    child: Child,
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("no free loopback port: {error}"))
}

fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

impl RedisServer {
    /// Starts a server (no persistence, loopback only) and waits until it
    /// answers PING.
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|error| format!("tempdir for redis: {error}"))?;
        let port = free_port()?;
        let path = binary();
        let child = Command::new(&path)
            .arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(dir.path())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                format!(
                    "cannot run `{}` ({error}): these benchmarks need a real redis-server \
                     (apt-get install redis-server, or set REDIS_SERVER)",
                    path.display()
                )
            })?;
        let mut server = Self { port, dir, child };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if server.ping() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "redis-server exited ({status}); log: {}",
                    server.log()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on port {port} did not answer within {} s; log: {}",
                    START_TIMEOUT.as_secs(),
                    server.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_millis(200))
        else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut connection).is_ok()
    }

    /// Calls of each command the server has processed so far, from `INFO
    /// commandstats` (commands that scripts run count too; `INFO` itself,
    /// which this sends, does not), read over a connection of its own;
    /// `None` when it does not answer within 200 ms.
    #[allow(dead_code, reason = "not every benchmark that starts a server counts")]
    pub fn command_calls(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut connection = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut connection)
            .ok()?;
        // Lines such as `cmdstat_evalsha:calls=12,usec=345,...`.
        Some(
            info.lines()
                .filter_map(|line| {
                    let (command, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                    let calls = stats.strip_prefix("calls=")?.split(',').next()?;
                    Some((command.to_string(), calls.parse().ok()?))
                })
                .filter(|(command, _)| command != "info")
                .collect(),
        )
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The pid of the server process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Settings for tollgate to reach it: one node, no credentials, the
    /// default timeout (`redis_timeout_ms` 250).
    pub fn settings(&self) -> tollgate::store::redis_client::RedisSettings {
        tollgate::store::redis_client::RedisSettings {
            urls: vec![self.url()],
            cluster: false,
            username: None,
            password: None,
            tls_ca_file: None,
            timeout: Duration::from_millis(250),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
