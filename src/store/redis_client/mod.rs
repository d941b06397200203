//! Redis in one place: connections (single node or cluster, optional TLS
//! and AUTH), every key and channel ([`keys`]), the Lua scripts with their
//! named arguments ([`scripts`]) and the reading of their replies, which
//! fails loudly on anything unexpected ([`reply`]).
//!
//! Every snapshot write publishes `<tenant> <version>` on
//! [`keys::INVALIDATE_CHANNEL`] in the same script.

pub mod keys;
pub mod reply;
pub mod scripts;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, IntoConnectionInfo, RedisError, Script, TlsCertificates, Value};

use keys::INVALIDATE_CHANNEL;

/// Largest version a snapshot written through tollgate may carry: Redis
/// scripts compare versions as Lua numbers (doubles).
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// How to reach Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// One URL (`redis://` or `rediss://`), or with `cluster` the seed nodes.
    pub urls: Vec<String>,
    /// Use the Redis Cluster client.
    pub cluster: bool,
    /// ACL user name, overriding the URL's.
    pub username: Option<String>,
    /// Password, overriding the URL's.
    pub password: Option<String>,
    /// PEM file of the CA that signs the server certificate (`rediss://` with
    /// a private CA); the system's web PKI roots otherwise.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Upper bound on every Redis call, connecting included.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs and passwords may carry secrets: only hosts are shown.
        let hosts: Vec<String> = self.urls.iter().map(|url| redact_url(url)).collect();
        f.debug_struct("RedisSettings")
            .field("urls", &hosts)
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    /// No answer within the configured timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A connection, protocol or server error.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The server closed the connection.
    #[error("redis closed the connection")]
    Closed,
    /// A reply of an unexpected shape (a key holding something else).
    #[error("redis returned an unexpected reply: {0}")]
    Garbage(String),
    /// The settings cannot be used (bad URL, unreadable CA file).
    #[error("{0}")]
    Settings(String),
}

/// A connection to Redis that reconnects by itself.
#[derive(Clone)]
pub struct RedisConn {
    inner: Inner,
    settings: RedisSettings,
    client: Option<Client>,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn tls_certificates(settings: &RedisSettings) -> Result<Option<TlsCertificates>, RedisFailure> {
    let Some(path) = &settings.tls_ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|error| {
        RedisFailure::Settings(format!(
            "cannot read redis CA file {}: {error}",
            path.display()
        ))
    })?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A client for one node URL with the settings' credentials and CA applied.
pub fn node_client(settings: &RedisSettings, url: &str) -> Result<Client, RedisFailure> {
    let mut info = url.into_connection_info().map_err(|error| {
        RedisFailure::Settings(format!("redis URL `{}`: {error}", redact_url(url)))
    })?;
    let mut redis_settings = info.redis_settings().clone();
    if let Some(username) = &settings.username {
        redis_settings = redis_settings.set_username(username);
    }
    if let Some(password) = &settings.password {
        redis_settings = redis_settings.set_password(password);
    }
    info =
        info.set_redis_settings(redis_settings.set_lib_name("tollgate", env!("CARGO_PKG_VERSION")));
    let client = match tls_certificates(settings)? {
        Some(certificates) => Client::build_with_tls(info, certificates),
        None => Client::open(info),
    };
    client.map_err(|error| {
        RedisFailure::Settings(format!("redis URL `{}`: {error}", redact_url(url)))
    })
}

impl RedisConn {
    /// Connects; fails when Redis cannot be reached within the timeout.
    /// Afterwards the connection reconnects by itself, with backoff.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, RedisFailure> {
        let timeout = settings.timeout;
        if settings.urls.is_empty() {
            return Err(RedisFailure::Settings("no redis URL given".to_string()));
        }
        if settings.cluster {
            let mut builder = ClusterClientBuilder::new(settings.urls.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .min_retry_wait(20)
                .max_retry_wait(200);
            if let Some(username) = &settings.username {
                builder = builder.username(username);
            }
            if let Some(password) = &settings.password {
                builder = builder.password(password);
            }
            if let Some(certificates) = tls_certificates(settings)? {
                builder = builder.certs(certificates);
            }
            let client = builder.build()?;
            let connection = tokio::time::timeout(timeout * 4, client.get_async_connection())
                .await
                .map_err(|_| RedisFailure::Timeout(timeout * 4))??;
            Ok(Self {
                inner: Inner::Cluster(connection),
                settings: settings.clone(),
                client: None,
            })
        } else {
            let client = node_client(settings, &settings.urls[0])?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_min_delay(Duration::from_millis(20))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(2);
            let manager = tokio::time::timeout(
                timeout * 4,
                client.get_connection_manager_with_config(config),
            )
            .await
            .map_err(|_| RedisFailure::Timeout(timeout * 4))??;
            Ok(Self {
                inner: Inner::Single(manager),
                settings: settings.clone(),
                client: Some(client),
            })
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Runs `cmd` with the configured timeout.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisFailure> {
        self.with_retry(|| async {
            match &self.inner {
                Inner::Single(connection) => cmd.query_async(&mut connection.clone()).await,
                Inner::Cluster(connection) => cmd.query_async(&mut connection.clone()).await,
            }
        })
        .await
    }

    /// Runs `call` within the configured timeout. A call that fails because
    /// the connection broke (Redis restarted, an idle connection was cut) is
    /// tried once more on the reconnected connection, within the same bound.
    async fn with_retry<T, F, Fut>(&self, call: F) -> Result<T, RedisFailure>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let timeout = self.settings.timeout;
        let attempts = async {
            match call().await {
                Err(error) if error.is_connection_dropped() || error.is_io_error() => call().await,
                result => result,
            }
        };
        tokio::time::timeout(timeout, attempts)
            .await
            .map_err(|_| RedisFailure::Timeout(timeout))?
            .map_err(RedisFailure::from)
    }

    /// Runs a Lua script (EVALSHA, loading it when Redis does not know it)
    /// within the configured timeout.
    pub async fn invoke(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, RedisFailure> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let invocation = &invocation;
        self.with_retry(|| async move {
            match &self.inner {
                Inner::Single(connection) => {
                    invocation
                        .invoke_async::<Value>(&mut connection.clone())
                        .await
                }
                Inner::Cluster(connection) => {
                    invocation
                        .invoke_async::<Value>(&mut connection.clone())
                        .await
                }
            }
        })
        .await
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), RedisFailure> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    /// Reads a tenant's snapshot. With `known` (a version this caller holds),
    /// an unchanged snapshot is not sent again.
    pub async fn read_snapshot(
        &self,
        tenant: &str,
        known: Option<u64>,
    ) -> Result<Read, RedisFailure> {
        scripts::SnapshotRead { tenant, known }.run(self).await
    }

    /// Writes `document` (already validated) as version `version` of
    /// `tenant` unless the stored version is the same or newer, and
    /// publishes the invalidation in the same step.
    pub async fn put_snapshot(
        &self,
        tenant: &str,
        version: u64,
        document: &str,
    ) -> Result<PutOutcome, RedisFailure> {
        scripts::SnapshotPut {
            tenant,
            version,
            document,
        }
        .run(self)
        .await
    }

    /// Deletes a tenant's snapshot (keeping its version high-water mark) and
    /// publishes the invalidation. With `expected`, only if that version is
    /// the stored one.
    pub async fn delete_snapshot(
        &self,
        tenant: &str,
        expected: Option<u64>,
    ) -> Result<DeleteOutcome, RedisFailure> {
        scripts::SnapshotDelete { tenant, expected }.run(self).await
    }

    fn seed_host(&self) -> String {
        let info = self
            .settings
            .urls
            .first()
            .and_then(|url| url.as_str().into_connection_info().ok());
        match info.as_ref().map(redis::ConnectionInfo::addr) {
            Some(
                redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. },
            ) => host.clone(),
            _ => "127.0.0.1".to_string(),
        }
    }

    /// Tenants that have a snapshot, sorted, scanning every primary of a cluster.
    pub async fn list_tenants(&self) -> Result<Vec<String>, RedisFailure> {
        let mut keys = Vec::new();
        match &self.inner {
            Inner::Single(_) => {
                let client = self.client.clone().ok_or_else(|| {
                    RedisFailure::Settings("no client for a single node".to_string())
                })?;
                scan_node(&client, self.settings.timeout, &mut keys).await?;
            }
            Inner::Cluster(_) => {
                let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
                let scheme = if self
                    .settings
                    .urls
                    .iter()
                    .any(|u| u.starts_with("rediss://"))
                {
                    "rediss"
                } else {
                    "redis"
                };
                for line in nodes.lines() {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
                        continue;
                    };
                    if !flags.split(',').any(|flag| flag == "master") || flags.contains("fail") {
                        continue;
                    }
                    let host_port = address.split('@').next().unwrap_or(address);
                    // A node that has never met another one does not know its
                    // own address: it is the seed node's host.
                    let host_port = if host_port.starts_with(':') {
                        format!("{}{host_port}", self.seed_host())
                    } else {
                        host_port.to_string()
                    };
                    let client = node_client(&self.settings, &format!("{scheme}://{host_port}"))?;
                    scan_node(&client, self.settings.timeout, &mut keys).await?;
                }
            }
        }
        let mut tenants: Vec<String> = keys
            .iter()
            .filter_map(|key| keys::tenant_of_key(key).map(str::to_string))
            .collect();
        tenants.sort();
        tenants.dedup();
        Ok(tenants)
    }
}

async fn scan_node(
    client: &Client,
    timeout: Duration,
    keys: &mut Vec<String>,
) -> Result<(), RedisFailure> {
    let mut connection = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| RedisFailure::Timeout(timeout))??;
    let mut cursor: u64 = 0;
    // A scan visits every key once, a thousand a step: a server still
    // answering with a cursor after this many steps is not ending its scan.
    for _ in 0..MAX_SCAN_STEPS {
        let (next, batch): (u64, Vec<String>) = tokio::time::timeout(
            timeout,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("tollgate:{*}:snapshot")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection),
        )
        .await
        .map_err(|_| RedisFailure::Timeout(timeout))??;
        keys.extend(batch);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
    Err(RedisFailure::Garbage(format!(
        "SCAN did not end within {MAX_SCAN_STEPS} steps"
    )))
}

/// Most steps of one node's scan (of 1,000 keys each).
const MAX_SCAN_STEPS: usize = 100_000;

/// What a snapshot read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The stored snapshot is the version the caller already holds.
    Unchanged {
        /// The version high-water mark.
        version: u64,
    },
    /// The stored document.
    Document {
        /// The version high-water mark, when the tenant has one.
        version: Option<u64>,
        /// The document's bytes.
        bytes: Vec<u8>,
    },
    /// No snapshot is stored.
    Absent {
        /// The version high-water mark (the last version before a delete).
        version: Option<u64>,
    },
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written; `previous` is the version it replaced (0 when none).
    Written {
        /// The replaced version.
        previous: u64,
    },
    /// Refused: the stored version is the same or newer.
    NotNewer {
        /// The stored version.
        stored: u64,
    },
    /// This very document is stored at this version already: the write
    /// was done before (a retry after its reply was lost).
    AlreadyStored,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Deleted the snapshot at `version`.
    Deleted {
        /// The deleted version.
        version: u64,
    },
    /// There was no snapshot.
    Absent,
    /// Refused: the stored version is not the expected one.
    VersionMismatch {
        /// The stored version.
        stored: u64,
    },
}

/// Opens a pub/sub connection to one of the settings' nodes (any node of a
/// cluster receives every published message) and subscribes to
/// [`INVALIDATE_CHANNEL`].
pub async fn subscribe(settings: &RedisSettings) -> Result<redis::aio::PubSub, RedisFailure> {
    let mut last = RedisFailure::Settings("no redis URL given".to_string());
    for url in &settings.urls {
        let attempt = async {
            let client = node_client(settings, url)?;
            let mut pubsub = tokio::time::timeout(settings.timeout, client.get_async_pubsub())
                .await
                .map_err(|_| RedisFailure::Timeout(settings.timeout))??;
            tokio::time::timeout(settings.timeout, pubsub.subscribe(INVALIDATE_CHANNEL))
                .await
                .map_err(|_| RedisFailure::Timeout(settings.timeout))??;
            Ok::<_, RedisFailure>(pubsub)
        };
        match attempt.await {
            Ok(pubsub) => return Ok(pubsub),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// Parses an invalidation message `<tenant> <version>`.
pub fn parse_invalidation(payload: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (tenant, version) = text.trim().split_once(' ')?;
    Some((tenant, version.trim().parse().ok()?))
}

/// Whether `error` means the connection itself is gone (as opposed to a
/// failed command).
pub fn is_connection_failure(error: &RedisFailure) -> bool {
    match error {
        RedisFailure::Timeout(_) | RedisFailure::Closed => true,
        RedisFailure::Redis(error) => {
            error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.is_timeout()
        }
        RedisFailure::Garbage(_) | RedisFailure::Settings(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::keys::{snapshot_key, tenant_of_key, version_key};
    use super::*;

    #[test]
    fn keys_are_hash_tagged_by_tenant() {
        assert_eq!(snapshot_key("acme"), "tollgate:{acme}:snapshot");
        assert_eq!(version_key("acme"), "tollgate:{acme}:version");
        assert_eq!(tenant_of_key("tollgate:{acme}:snapshot"), Some("acme"));
        assert_eq!(tenant_of_key("tollgate:{acme}:version"), None);
    }

    #[test]
    fn a_tenants_keys_hash_on_the_tenant_alone() {
        // Redis Cluster hashes only what is inside the first `{...}`.
        let hash_tag = |key: &str| {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            key[open + 1..close].to_string()
        };
        for tenant in ["acme", "globex", "a.b-c_d"] {
            assert_eq!(hash_tag(&snapshot_key(tenant)), tenant);
            assert_eq!(hash_tag(&version_key(tenant)), tenant);
        }
    }

    #[test]
    fn invalidation_messages_parse() {
        assert_eq!(parse_invalidation(b"acme 42"), Some(("acme", 42)));
        assert_eq!(parse_invalidation(b"acme"), None);
        assert_eq!(parse_invalidation(b"acme x"), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }
}
