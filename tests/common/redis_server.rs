//! A real `redis-server` started by a test on a free loopback port, in its own
//! tempdir, stopped (by its pid) when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

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
    /// the test (`openssl`); see [`RedisServer::ca_file`].
    pub tls: bool,
}

/// A running `redis-server`.
pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    options: Options,
    child: Option<Child>,
}

/// A loopback port free now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("find a free loopback port")
}

fn binary() -> PathBuf {
    let path = std::env::var_os("REDIS_SERVER")
        .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from);
    if Command::new(&path)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        panic!(
            "`{}` cannot run: these tests need a real redis-server (scripts/test.sh installs it with apt-get)",
            path.display()
        );
    }
    path
}

impl RedisServer {
    /// Starts a plain server.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Starts a server with `options` and waits until it answers PING.
    pub fn start_with(options: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for redis");
        let mut server = Self {
            port: free_port(),
            dir,
            options,
            child: None,
        };
        if server.options.tls {
            server.make_certificates();
        }
        server.spawn();
        server
    }

    fn make_certificates(&self) {
        let dir = self.dir.path();
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
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
                .expect("run openssl (scripts/test.sh installs it)");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// The CA that signed the server's certificate (with `tls`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn spawn(&mut self) {
        let mut command = Command::new(binary());
        if self.options.tls {
            let dir = self.dir.path();
            command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(dir.join("server.crt"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.arg("--port").arg(self.port.to_string());
        }
        command
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.options.aof {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        if let Some(password) = &self.options.password {
            command.arg("--requirepass").arg(password);
        }
        if self.options.cluster {
            command
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.path().join("nodes.conf"));
        }
        self.child = Some(command.spawn().expect("start redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 10 s; log: {}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.options.cluster {
            self.make_single_node_cluster();
        }
    }

    fn make_single_node_cluster(&self) {
        let info: String = self.command(&["CLUSTER", "INFO"]);
        if !info.contains("cluster_slots_assigned:16384") {
            let _: String = self.command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
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

    fn client(&self) -> redis::RedisResult<redis::Client> {
        if self.options.tls {
            redis::Client::build_with_tls(
                self.url_with_password(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(self.ca_file()).expect("read test CA")),
                },
            )
        } else {
            redis::Client::open(self.url_with_password())
        }
    }

    fn ping(&self) -> bool {
        let Ok(client) = self.client() else {
            return false;
        };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_millis(200))
        else {
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

    /// Runs one command on a fresh connection (blocking).
    pub fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = self.client().expect("redis client");
        let mut connection = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to redis");
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command
            .query(&mut connection)
            .unwrap_or_else(|error| panic!("redis {args:?}: {error}"))
    }

    /// Calls of `command` since the last `CONFIG RESETSTAT`, from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.command(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings reaching `urls` with a 250 ms timeout.
pub fn settings(urls: Vec<String>) -> tollgate::store::redis_client::RedisSettings {
    tollgate::store::redis_client::RedisSettings {
        urls,
        cluster: false,
        username: None,
        password: None,
        tls_ca_file: None,
        timeout: Duration::from_millis(250),
    }
}

/// A config serving `dirs`' policies with snapshots from Redis.
pub fn redis_config(
    dirs: &super::DataDirs,
    redis: tollgate::store::redis_client::RedisSettings,
) -> tollgate::config::Config {
    let mut config = dirs.config();
    config.redis = Some(redis);
    config
}

/// The example policies.
pub fn policies() -> tollgate_engine::PolicySnapshot {
    tollgate_engine::PolicySnapshot::load_dir(&super::example_policies())
        .expect("example policies load")
}

/// The example snapshot of `tenant` at `version`, edited by `edit`.
pub fn document(tenant: &str, version: u64, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let text = super::read(&super::example_entitlements().join(format!("{tenant}.json")));
    let mut value: serde_json::Value =
        serde_json::from_str(&text).expect("example snapshot is JSON");
    value["version"] = version.into();
    edit(&mut value);
    value.to_string()
}

/// The entity `Type::"id"` of a snapshot document.
pub fn entity<'a>(
    value: &'a mut serde_json::Value,
    type_name: &str,
    id: &str,
) -> &'a mut serde_json::Value {
    value["entities"]
        .as_array_mut()
        .expect("entities")
        .iter_mut()
        .find(|e| e["uid"]["type"] == type_name && e["uid"]["id"] == id)
        .unwrap_or_else(|| panic!("no {type_name}::{id:?} in the snapshot"))
}

/// Writes a snapshot document through the validated write path.
pub async fn put(conn: &tollgate::store::redis_client::RedisConn, document: &str) {
    tollgate::admin::put(conn, &policies(), document)
        .await
        .unwrap_or_else(|error| panic!("put: {error}"));
}
