//! A real `redis-server` on a free loopback port, in its own temporary
//! directory, stopped (SIGKILL to its pid) when dropped; and what a test
//! needs to point tollgate at it. The binary is `$REDIS_SERVER`, or
//! `redis-server` on the PATH (`scripts/test.sh` installs it).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tollgate::store::redis_client::{RedisConn, RedisSettings};

use crate::fixtures::{policies, DataDirs};

/// Longest wait for a started server to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Append-only file on, fsync always: data survives a kill and restart.
    pub aof: bool,
    /// `requirepass`.
    pub password: Option<String>,
    /// A single-node Redis Cluster owning every slot.
    pub cluster: bool,
    /// TLS only, with a certificate for `localhost` signed by a CA made for
    /// the purpose (`openssl`); see [`RedisServer::ca_file`].
    pub tls: bool,
}

/// A running `redis-server`.
pub struct RedisServer {
    /// Its loopback port.
    pub port: u16,
    dir: TempDir,
    options: Options,
    child: Child,
}

/// A loopback port free now.
pub fn try_free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("no free loopback port: {error}"))
}

/// [`try_free_port`], panicking on an error.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|error| panic!("{error}"))
}

fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

impl RedisServer {
    /// Starts a plain server; panics if it cannot.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Starts a server with `options`; panics if it cannot.
    pub fn start_with(options: Options) -> Self {
        Self::try_start(options).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Starts a server with `options` (loopback only, no snapshots) and waits
    /// until it answers PING.
    pub fn try_start(options: Options) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|error| format!("tempdir for redis: {error}"))?;
        let port = try_free_port()?;
        if options.tls {
            make_certificates(&dir)?;
        }
        let child = launch(&dir, port, &options)?;
        let mut server = Self {
            port,
            dir,
            options,
            child,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ping() {
                break;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "redis-server exited ({status}); log: {}",
                    self.log()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on port {} did not answer within {} s; log: {}",
                    self.port,
                    START_TIMEOUT.as_secs(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.options.cluster {
            self.make_single_node_cluster();
        }
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn make_single_node_cluster(&self) {
        let info: String = self.command(&["CLUSTER", "INFO"]);
        if !info.contains("cluster_slots_assigned:16384") {
            let _: String = self.command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let info: String = self.command(&["CLUSTER", "INFO"]);
            if info.contains("cluster_state:ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ok within 10 s: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The CA that signed the server's certificate (with `tls`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        if self.options.tls {
            redis::Client::build_with_tls(
                self.url_with_password(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(self.ca_file()).expect("read the CA")),
                },
            )
        } else {
            redis::Client::open(self.url_with_password())
        }
    }

    /// A fresh connection, waiting at most `timeout` for it.
    fn connection(&self, timeout: Duration) -> redis::RedisResult<redis::Connection> {
        self.client()?.get_connection_with_timeout(timeout)
    }

    fn ping(&self) -> bool {
        let Ok(mut connection) = self.connection(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut connection).is_ok()
    }

    /// `redis://127.0.0.1:PORT` (no credentials), or with `tls`
    /// `rediss://localhost:PORT` (the name the certificate is for).
    pub fn url(&self) -> String {
        if self.options.tls {
            format!("rediss://localhost:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    fn url_with_password(&self) -> String {
        match &self.options.password {
            Some(password) => self.url().replacen("://", &format!("://:{password}@"), 1),
            None => self.url(),
        }
    }

    /// The pid of the server process (the last one started).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Settings for tollgate to reach it: [`settings`] of its
    /// [`url`](Self::url) (no credentials, no CA).
    pub fn settings(&self) -> RedisSettings {
        settings(vec![self.url()])
    }

    /// Runs one command on a fresh connection (blocking); panics on an error.
    pub fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut connection = self
            .connection(Duration::from_secs(2))
            .expect("connect to redis");
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command
            .query(&mut connection)
            .unwrap_or_else(|error| panic!("redis {args:?}: {error}"))
    }

    /// Calls of `command` since the last `CONFIG RESETSTAT`, from `INFO
    /// commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.command(&["INFO", "commandstats"]);
        command_stats(&info).get(command).copied().unwrap_or(0)
    }

    /// Calls of each command the server has processed so far, from `INFO
    /// commandstats` (commands that scripts run count too; `INFO` itself,
    /// which this sends, does not), read over a connection of its own;
    /// `None` when it does not answer within 200 ms.
    pub fn command_calls(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        let mut connection = self.connection(Duration::from_millis(200)).ok()?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut connection)
            .ok()?;
        let mut calls = command_stats(&info);
        calls.remove("info");
        Some(calls)
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and directory; panics if it cannot.
    pub fn restart(&mut self) {
        self.kill();
        self.child = launch(&self.dir, self.port, &self.options).unwrap_or_else(|e| panic!("{e}"));
        self.wait_ready().unwrap_or_else(|error| panic!("{error}"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Child::kill sends SIGKILL to this child's pid only.
            self.kill();
        }
    }
}

/// `cmdstat_evalsha:calls=12,usec=345,...` lines: calls by command.
fn command_stats(info: &str) -> std::collections::BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (command, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.strip_prefix("calls=")?.split(',').next()?;
            Some((command.to_string(), calls.parse().ok()?))
        })
        .collect()
}

/// Starts `redis-server` on `port` in `dir` (no snapshots; the append-only
/// file only with `aof`).
fn launch(dir: &TempDir, port: u16, options: &Options) -> Result<Child, String> {
    let path = binary();
    let dir = dir.path();
    let mut command = Command::new(&path);
    if options.tls {
        command
            .args(["--port", "0", "--tls-port"])
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(dir.join("server.crt"))
            .arg("--tls-key-file")
            .arg(dir.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.crt"))
            .args(["--tls-auth-clients", "no"]);
    } else {
        command.arg("--port").arg(port.to_string());
    }
    command
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--daemonize", "no"])
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if options.aof {
        command.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    if let Some(password) = &options.password {
        command.arg("--requirepass").arg(password);
    }
    if options.cluster {
        command
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(dir.join("nodes.conf"));
    }
    command.spawn().map_err(|error| {
        format!(
            "cannot run `{}` ({error}): a real redis-server is needed \
             (scripts/test.sh installs it with apt-get; or set REDIS_SERVER)",
            path.display()
        )
    })
}

/// A CA and a certificate for `localhost` and 127.0.0.1 signed by it, in
/// `dir` (`ca.crt`, `server.crt`, `server.key`), made with `openssl`.
fn make_certificates(dir: &TempDir) -> Result<(), String> {
    let dir = dir.path();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .map_err(|error| format!("cannot write ext.cnf: {error}"))?;
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=tollgate-test-ca",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    ];
    for args in steps {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|error| {
                format!("cannot run openssl (scripts/test.sh installs it): {error}")
            })?;
        if !output.status.success() {
            return Err(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    Ok(())
}

/// Settings reaching `urls` with a 250 ms timeout (the default
/// `redis_timeout_ms`), no credentials, no CA.
pub fn settings(urls: Vec<String>) -> RedisSettings {
    RedisSettings {
        urls,
        cluster: false,
        username: None,
        password: None,
        tls_ca_file: None,
        timeout: Duration::from_millis(250),
    }
}

/// A config serving `dirs`' policies with snapshots from Redis.
pub fn redis_config(dirs: &DataDirs, redis: RedisSettings) -> tollgate::config::Config {
    let mut config = dirs.config();
    config.redis = Some(redis);
    config
}

/// Puts every snapshot document of the repository's `entitlements/` into
/// Redis through the validated write path, against `policies`, in file-name
/// order; returns their tenants.
pub async fn put_shipped_tenants(
    conn: &RedisConn,
    policies: &tollgate_engine::PolicySnapshot,
) -> Result<Vec<String>, String> {
    let directory = crate::fixtures::example_entitlements();
    let mut files: Vec<_> = std::fs::read_dir(&directory)
        .map_err(|error| format!("cannot read {}: {error}", directory.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    let mut tenants = Vec::new();
    for file in files {
        let document = std::fs::read_to_string(&file)
            .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
        let written = tollgate::admin::put(conn, policies, &document)
            .await
            .map_err(|error| format!("cannot put {} into redis: {error}", file.display()))?;
        tenants.push(written.tenant);
    }
    Ok(tenants)
}

/// Writes a snapshot document through the validated write path, against the
/// example policies.
pub async fn put(conn: &RedisConn, document: &str) {
    tollgate::admin::put(conn, &policies(), document)
        .await
        .unwrap_or_else(|error| panic!("put: {error}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_stats_are_read_by_command() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=345,usec_per_call=28.75\r\n\
                    cmdstat_script|load:calls=2,usec=40\r\ncmdstat_info:calls=1,usec=9\r\n";
        let stats = command_stats(info);
        assert_eq!(stats.get("evalsha"), Some(&12));
        assert_eq!(stats.get("script|load"), Some(&2));
        assert_eq!(stats.get("info"), Some(&1));
        assert_eq!(stats.len(), 3);
    }
}
