//! Configuration: a YAML file, overridden by `TOLLGATE_*` environment variables,
//! overridden by command-line flags. Every key is optional; unknown keys are
//! errors; every violation is reported at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::decide::Limits;
use tollgate_engine::{Options, PolicyErrorMode};

/// Default configuration file, read when present and no other is named.
pub const DEFAULT_CONFIG_FILE: &str = "tollgate.yaml";

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "TOLLGATE_";

pub use crate::config_keys::KEYS;

pub use crate::telemetry::LogFormat;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Unix domain socket to serve gRPC on as well, if any.
    pub listen_unix: Option<PathBuf>,
    /// Address of the health-only listener, if enabled.
    pub health_listen: Option<SocketAddr>,
    /// The health-only listener speaks TLS too.
    pub health_tls: bool,
    /// Non-loopback listeners without TLS and callers are acknowledged.
    pub insecure_listen: bool,
    /// TLS of the gRPC listeners, when configured.
    pub tls: Option<crate::listen::TlsFiles>,
    /// The callers file, when configured.
    pub callers_file: Option<PathBuf>,
    /// How often TLS and callers files are checked for changes.
    pub credentials_poll: Duration,
    /// Most connections each gRPC listener holds open at once.
    pub max_connections: usize,
    /// Most `EntitlementService` requests served at once.
    pub max_in_flight: usize,
    /// Memory for the bodies of the requests in flight.
    pub max_request_bytes_in_flight: usize,
    /// Most HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Address of the metrics endpoint, if enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// Policy directory.
    pub policies: PathBuf,
    /// Entitlement snapshot directory.
    pub entitlements: PathBuf,
    /// Decision settings.
    pub options: Options,
    /// Request limits.
    pub limits: Limits,
    /// Largest request message in bytes.
    pub max_request_bytes: usize,
    /// Reload when watched files change.
    pub watch: bool,
    /// Quiet time after a file change before reloading.
    pub reload_debounce: Duration,
    /// How long to keep answering after SIGTERM/SIGINT before closing the listener.
    pub shutdown_delay: Duration,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// The decision log, if enabled.
    pub decision_log: Option<crate::decision_log::Settings>,
    /// Redis source of tenant snapshots, when configured.
    pub redis: Option<crate::store::redis_client::RedisSettings>,
    /// Cache of the Redis source.
    pub cache: crate::store::remote::CacheSettings,
    /// Metering settings (with the Redis source).
    pub metering: crate::metering::MeteringSettings,
    /// Time source of metering periods (the system clock; tests inject
    /// another). Not a configuration key.
    pub clock: crate::metering::Clock,
    /// Address of the HTTP front door, when enabled.
    pub http_listen: Option<SocketAddr>,
    /// How AuthZEN requests map to Cedar.
    pub authzen: crate::http::authzen::Settings,
    /// The issuers of end users' JWTs, when configured.
    pub jwt_file: Option<PathBuf>,
    /// Address of Envoy's external authorization service, when enabled.
    pub ext_authz_listen: Option<SocketAddr>,
    /// Its route table.
    pub ext_authz_routes: Option<crate::ext_authz::routes::Routes>,
    /// The file the route table is reread from when it changes.
    pub ext_authz_file: Option<PathBuf>,
    /// Signed licenses, when configured.
    pub licenses: Option<LicenseConfig>,
    /// Address of the AdminService, when enabled.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token of the AdminService.
    pub admin_token: Option<Secret>,
    /// Log output format.
    pub log_format: LogFormat,
    /// Tracing filter directive.
    pub log_level: String,
    /// Whether the heap may be backed by transparent huge pages.
    pub transparent_huge_pages: bool,
}

/// Where signed licenses come from and what they are judged by.
#[derive(Debug, Clone)]
pub struct LicenseConfig {
    /// The licenses directory.
    pub dir: PathBuf,
    /// The trusted keys directory.
    pub keys: PathBuf,
    /// How often the licenses are rescanned and the clock recorded.
    pub poll: Duration,
    /// Where the latest trusted time is kept.
    pub clock_file: Option<PathBuf>,
    /// Tolerated clock skew.
    pub skew: Duration,
    /// This installation, for bound licenses.
    pub installation: crate::license::set::Installation,
}

impl LicenseConfig {
    /// The store's license settings, with a clock guard over `now` (Unix
    /// milliseconds) and the recorded time of `clock_file`.
    pub fn settings(
        &self,
        now: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> crate::store::LicenseSettings {
        crate::store::LicenseSettings {
            dir: self.dir.clone(),
            keys: self.keys.clone(),
            installation: self.installation.clone(),
            guard: std::sync::Arc::new(crate::license::clock::ClockGuard::new(
                now,
                i64::try_from(self.skew.as_millis()).unwrap_or(i64::MAX),
                self.clock_file.clone(),
            )),
            skew_s: i64::try_from(self.skew.as_secs()).unwrap_or(i64::MAX),
        }
    }
}

/// A value that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Config {
    /// The defaults of every key, serving `policies` and `entitlements`.
    ///
    /// # Panics
    ///
    /// Never: the defaults are a valid configuration
    /// (`the_defaults_are_a_valid_configuration` checks it).
    pub fn with_dirs(policies: PathBuf, entitlements: PathBuf) -> Self {
        let mut problems = Vec::new();
        match build(&defaults(), &mut problems, false) {
            Some(config) if problems.is_empty() => Self {
                policies,
                entitlements,
                ..config
            },
            _ => panic!(
                "the defaults are not a valid configuration: {}",
                ConfigErrors(problems)
            ),
        }
    }
}

/// Every key at its default.
fn defaults() -> BTreeMap<&'static str, (String, Origin)> {
    KEYS.iter()
        .map(|(key, default, _)| (*key, (default.to_string(), Origin::Default)))
        .collect()
}

/// One configuration problem: which key (when there is one), where the
/// value came from, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigProblem {
    /// A key's value does not parse or is out of range.
    Value {
        /// The key.
        key: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong with it.
        message: String,
    },
    /// Keys that do not go together (`redis_url` with several URLs but no
    /// `redis_cluster`, `admin_listen` without `admin_token`, ...).
    Combination {
        /// The key the problem is reported under.
        key: &'static str,
        /// What is missing or wrong.
        message: String,
    },
    /// A configuration file names a key tollgate does not have.
    UnknownKey {
        /// The file.
        file: PathBuf,
        /// The key as written.
        name: String,
    },
    /// A configuration file is not a mapping of keys to plain values.
    File {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A configuration file cannot be read.
    Unreadable {
        /// The file.
        file: PathBuf,
        /// The error.
        error: String,
    },
    /// A `TOLLGATE_*` variable names no key.
    UnknownVariable {
        /// The variable.
        name: String,
    },
    /// A `TOLLGATE_*` variable's value is not UTF-8.
    NotUtf8 {
        /// The variable.
        name: String,
    },
}

impl ConfigProblem {
    /// The key the problem is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Value { key, .. } | Self::Combination { key, .. } => Some(key),
            Self::UnknownKey { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Where the offending value came from, when it is known.
    pub fn origin(&self) -> Option<Origin> {
        match self {
            Self::Value { origin, .. } => Some(origin.clone()),
            Self::UnknownKey { file, .. }
            | Self::File { file, .. }
            | Self::Unreadable { file, .. } => Some(Origin::File(file.clone())),
            Self::UnknownVariable { name } | Self::NotUtf8 { name } => {
                Some(Origin::Env(name.clone()))
            }
            Self::Combination { .. } => None,
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value {
                key,
                origin,
                message,
            } => write!(f, "{key} (from {origin}): {message}"),
            Self::Combination { key, message } => write!(f, "{key}: {message}"),
            Self::UnknownKey { file, name } => {
                write!(f, "{}: unknown key `{name}`", file.display())
            }
            Self::File { file, message } => write!(f, "{}: {message}", file.display()),
            Self::Unreadable { file, error } => {
                write!(f, "cannot read {}: {error}", file.display())
            }
            Self::UnknownVariable { name } => write!(f, "unknown environment variable {name}"),
            Self::NotUtf8 { name } => {
                write!(f, "environment variable {name} is not valid UTF-8")
            }
        }
    }
}

/// Every violation found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({}):",
            tollgate_engine::diagnostics::problems(self.0.len())
        )?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The key's default.
    Default,
    /// A configuration file.
    File(PathBuf),
    /// A `TOLLGATE_*` environment variable.
    Env(String),
    /// A command-line flag (`--name`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// Values from command-line flags, by configuration key.
#[derive(Debug, Clone, Default)]
pub struct FlagValues {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `(key, value)` pairs set by flags.
    pub values: Vec<(&'static str, String)>,
}

/// Loads the configuration from `flags`, the process environment and the
/// configuration file.
pub fn load(flags: &FlagValues) -> Result<Config, ConfigErrors> {
    let mut env = Vec::new();
    let mut unreadable = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with(ENV_PREFIX)) else {
            continue;
        };
        match value.into_string() {
            Ok(value) => env.push((name.to_string(), value)),
            Err(_) => unreadable.push(ConfigProblem::NotUtf8 {
                name: name.to_string(),
            }),
        }
    }
    match load_from(flags, &env) {
        Ok(config) if unreadable.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(unreadable)),
        Err(ConfigErrors(mut problems)) => {
            problems.extend(unreadable);
            Err(ConfigErrors(problems))
        }
    }
}

/// Loads the configuration from explicit sources (testable without touching
/// the process environment).
pub fn load_from(flags: &FlagValues, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let mut values = defaults();

    let env_config = env
        .iter()
        .find(|(name, _)| name == "TOLLGATE_CONFIG")
        .map(|(_, value)| PathBuf::from(value));
    let (config_file, required) = match (&flags.config_file, env_config) {
        (Some(path), _) => (path.clone(), true),
        (None, Some(path)) => (path, true),
        (None, None) => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    if required || config_file.exists() {
        read_file(&config_file, &mut values, &mut problems);
    }

    for (name, value) in env {
        if name == "TOLLGATE_CONFIG" {
            continue;
        }
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            problems.push(ConfigProblem::UnknownVariable { name: name.clone() });
            continue;
        };
        let key = key.to_ascii_lowercase();
        match KEYS.iter().find(|(k, _, _)| *k == key) {
            Some((key, _, _)) => {
                values.insert(key, (value.clone(), Origin::Env(name.clone())));
            }
            None if is_service_link(&key, value) => {}
            None => problems.push(ConfigProblem::UnknownVariable { name: name.clone() }),
        }
    }
    for (key, value) in &flags.values {
        values.insert(key, (value.clone(), Origin::Flag(key.replace('_', "-"))));
    }

    let config = build(&values, &mut problems, true);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigErrors(problems)),
    }
}

/// Whether `key` (a `TOLLGATE_` variable without the prefix, lower case) is
/// one of the variables Kubernetes injects for a Service whose name starts
/// with `tollgate`: `TOLLGATE[_X]_SERVICE_HOST`, `..._SERVICE_PORT[_NAME]`,
/// `TOLLGATE[_X]_PORT` (whose value is a URL such as `tcp://10.0.0.1:50051`)
/// and `..._PORT_<n>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`. They are not
/// configuration and are ignored.
fn is_service_link(key: &str, value: &str) -> bool {
    let parts: Vec<&str> = key.split('_').collect();
    let service = parts
        .iter()
        .position(|part| *part == "service")
        .is_some_and(|at| {
            matches!(parts.get(at + 1), Some(&"host") if parts.len() == at + 2)
                || parts.get(at + 1) == Some(&"port")
        });
    let port = parts
        .iter()
        .position(|part| *part == "port")
        .is_some_and(|at| {
            let rest = &parts[at + 1..];
            match rest {
                [] => value.contains("://"),
                [number, protocol, tail @ ..] => {
                    number.bytes().all(|b| b.is_ascii_digit())
                        && matches!(*protocol, "tcp" | "udp" | "sctp")
                        && matches!(tail, [] | ["proto" | "port" | "addr"])
                }
                _ => false,
            }
        });
    service || port
}

fn read_file(
    path: &Path,
    values: &mut BTreeMap<&'static str, (String, Origin)>,
    problems: &mut Vec<ConfigProblem>,
) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            problems.push(ConfigProblem::Unreadable {
                file: path.to_path_buf(),
                error: error.to_string(),
            });
            return;
        }
    };
    let document: serde_norway::Value = match serde_norway::from_str(&text) {
        Ok(document) => document,
        Err(error) => {
            problems.push(ConfigProblem::File {
                file: path.to_path_buf(),
                message: error.to_string(),
            });
            return;
        }
    };
    let mapping = match document {
        serde_norway::Value::Mapping(mapping) => mapping,
        serde_norway::Value::Null => return,
        _ => {
            problems.push(ConfigProblem::File {
                file: path.to_path_buf(),
                message: "expected a mapping of keys to values".to_string(),
            });
            return;
        }
    };
    // A nested mapping names keys by prefix: `redis: {url: ...}` is `redis_url`.
    let mut entries: Vec<(String, serde_norway::Value)> = Vec::new();
    for (key, value) in mapping {
        let Some(name) = key.as_str() else {
            problems.push(ConfigProblem::File {
                file: path.to_path_buf(),
                message: "keys must be strings".to_string(),
            });
            continue;
        };
        match value {
            serde_norway::Value::Mapping(inner) => {
                for (inner_key, inner_value) in inner {
                    match inner_key.as_str() {
                        Some(inner_name) => {
                            entries.push((format!("{name}_{inner_name}"), inner_value));
                        }
                        None => problems.push(ConfigProblem::File {
                            file: path.to_path_buf(),
                            message: "keys must be strings".to_string(),
                        }),
                    }
                }
            }
            value => entries.push((name.to_string(), value)),
        }
    }
    for (name, value) in entries {
        let name = name.as_str();
        let Some((key, _, _)) = KEYS.iter().find(|(k, _, _)| *k == name) else {
            problems.push(ConfigProblem::UnknownKey {
                file: path.to_path_buf(),
                name: name.to_string(),
            });
            continue;
        };
        let text = match value {
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Bool(b) => b.to_string(),
            serde_norway::Value::Number(n) => n.to_string(),
            _ => {
                problems.push(ConfigProblem::File {
                    file: path.to_path_buf(),
                    message: format!("key `{name}` must be a string, number or boolean"),
                });
                continue;
            }
        };
        values.insert(key, (text, Origin::File(path.to_path_buf())));
    }
}

/// The configuration `values` describe; every problem is added to
/// `problems`. With `check_dirs`, the policy and entitlements directories
/// must exist.
fn build(
    values: &BTreeMap<&'static str, (String, Origin)>,
    problems: &mut Vec<ConfigProblem>,
    check_dirs: bool,
) -> Option<Config> {
    fn get<T>(
        values: &BTreeMap<&'static str, (String, Origin)>,
        problems: &mut Vec<ConfigProblem>,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (text, origin) = values.get(key)?;
        match parse(text) {
            Ok(value) => Some(value),
            Err(problem) => {
                problems.push(ConfigProblem::Value {
                    key,
                    origin: origin.clone(),
                    message: problem,
                });
                None
            }
        }
    }
    let number = |text: &str| -> Result<u64, String> {
        text.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{text}` is not a non-negative whole number"))
    };
    // A duration in milliseconds, at least 1.
    let millis = |text: &str| match number(text)? {
        0 => Err("must be at least 1".to_string()),
        n => Ok(Duration::from_millis(n)),
    };
    let boolean = |text: &str| match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{text}` is not a boolean (true or false)")),
    };
    let directory = |text: &str| {
        let path = PathBuf::from(text);
        if path.is_dir() || !check_dirs {
            Ok(path)
        } else {
            Err(format!("`{text}` is not a directory"))
        }
    };

    let listen = get(values, problems, "listen", |text| {
        text.parse::<SocketAddr>()
            .map_err(|_| format!("`{text}` is not a socket address such as 127.0.0.1:50051"))
    });
    let listen_unix = get(values, problems, "listen_unix", |text| {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(text);
        match path.parent() {
            Some(parent) if parent.as_os_str().is_empty() || parent.is_dir() => Ok(Some(path)),
            _ => Err(format!("`{text}`: the directory does not exist")),
        }
    });
    let metrics_listen = get(values, problems, "metrics_listen", |text| {
        if text.trim().is_empty() {
            return Ok(None);
        }
        text.trim()
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| format!("`{text}` is not a socket address such as 127.0.0.1:9090"))
    });
    let optional_address = |example: &'static str| {
        move |text: &str| {
            if text.trim().is_empty() {
                return Ok(None);
            }
            text.trim()
                .parse::<SocketAddr>()
                .map(Some)
                .map_err(|_| format!("`{text}` is not a socket address such as {example}"))
        }
    };
    let health_listen = get(
        values,
        problems,
        "health_listen",
        optional_address("0.0.0.0:50053"),
    );
    let health_tls = get(values, problems, "health_tls", boolean);
    let http_listen = get(
        values,
        problems,
        "http_listen",
        optional_address("127.0.0.1:8080"),
    );
    let jwt_file = get(values, problems, "jwt_file", |text| {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(text);
        if !check_dirs {
            return Ok(Some(path));
        }
        crate::jwt::JwtSettings::from_file(&path)
            .map(|_| Some(path))
            .map_err(|error| error.to_string())
    });
    let ext_authz_listen = get(
        values,
        problems,
        "ext_authz_listen",
        optional_address("127.0.0.1:50054"),
    );
    let ext_authz_file = get(values, problems, "ext_authz_file", |text| {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        crate::ext_authz::routes::Routes::from_file(std::path::Path::new(text))
            .map(|routes| Some((routes, PathBuf::from(text))))
            .map_err(|error| error.message)
    });
    let ext_authz_routes = ext_authz_file
        .clone()
        .map(|loaded| loaded.as_ref().map(|(routes, _)| routes.clone()));
    if let (Some(Some(_)), Some(None)) = (&ext_authz_listen, &ext_authz_routes) {
        problems.push(ConfigProblem::Combination {
            key: "ext_authz_listen",
            message: "the external authorization service needs its route table; set ext_authz_file"
                .to_string(),
        });
    }
    let authzen_tenant = get(
        values,
        problems,
        "authzen_tenant",
        crate::http::authzen::parse_tenant,
    );
    let authzen_namespace = get(values, problems, "authzen_namespace", |text| {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let valid = text.split("::").all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if valid {
            Ok(Some(text.to_string()))
        } else {
            Err(format!(
                "`{text}` is not a Cedar namespace such as Acme or Acme::Billing"
            ))
        }
    });
    let authzen_types = get(
        values,
        problems,
        "authzen_types",
        crate::http::authzen::parse_types,
    );
    let insecure_listen = get(values, problems, "insecure_listen", boolean);
    let optional_file = |text: &str| {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(text);
        if path.is_file() || !check_dirs {
            Ok(Some(path))
        } else {
            Err(format!("`{text}` is not a readable file"))
        }
    };
    let tls_cert_file = get(values, problems, "tls_cert_file", optional_file);
    let tls_key_file = get(values, problems, "tls_key_file", optional_file);
    let tls_client_ca_file = get(values, problems, "tls_client_ca_file", optional_file);
    let tls_client_auth = get(values, problems, "tls_client_auth", |text| {
        match text.trim().to_ascii_lowercase().as_str() {
            "required" => Ok(true),
            "optional" => Ok(false),
            _ => Err(format!("`{text}` is not one of `required`, `optional`")),
        }
    });
    let callers_file = get(values, problems, "callers_file", optional_file);
    let credentials_poll = get(values, problems, "credentials_poll_ms", millis);
    let max_connections = get(values, problems, "max_connections", |text| {
        match number(text)? {
            0 => Err("must be at least 1".to_string()),
            n => usize::try_from(n).map_err(|_| "too large".to_string()),
        }
    });
    let max_in_flight = get(values, problems, "max_in_flight", |text| {
        match number(text)? {
            0 => Err("must be at least 1".to_string()),
            n => usize::try_from(n).map_err(|_| "too large".to_string()),
        }
    });
    let max_request_bytes_in_flight = get(
        values,
        problems,
        "max_request_bytes_in_flight",
        |text| match number(text)? {
            n if n < 1 << 20 => Err("must be at least 1048576 (1 MiB)".to_string()),
            n => usize::try_from(n).map_err(|_| "too large".to_string()),
        },
    );
    let max_concurrent_streams =
        get(
            values,
            problems,
            "max_concurrent_streams",
            |text| match number(text)? {
                0 => Err("must be at least 1".to_string()),
                n => u32::try_from(n).map_err(|_| "too large".to_string()),
            },
        );
    let tls = match (&tls_cert_file, &tls_key_file) {
        (Some(Some(cert)), Some(Some(key))) => Some(crate::listen::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: tls_client_ca_file.clone().flatten(),
            client_auth_required: tls_client_auth.unwrap_or(true),
        }),
        (Some(Some(_)), Some(None)) => {
            problems.push(ConfigProblem::Combination {
                key: "tls_key_file",
                message: "tls_cert_file needs its private key".to_string(),
            });
            None
        }
        (Some(None), Some(Some(_))) => {
            problems.push(ConfigProblem::Combination {
                key: "tls_cert_file",
                message: "tls_key_file needs its certificate".to_string(),
            });
            None
        }
        _ => None,
    };
    if tls.is_none() {
        if let Some(Some(_)) = tls_client_ca_file {
            problems.push(ConfigProblem::Combination {
                key: "tls_client_ca_file",
                message: "client certificates need TLS: set tls_cert_file and tls_key_file"
                    .to_string(),
            });
        }
        if health_tls == Some(true) {
            problems.push(ConfigProblem::Combination {
                key: "health_tls",
                message: "needs tls_cert_file and tls_key_file".to_string(),
            });
        }
    }
    let policies = get(values, problems, "policies", directory);
    // With the Redis source or licenses the entitlements directory is not read.
    let set = |key: &str| {
        values
            .get(key)
            .is_some_and(|(text, _)| !text.trim().is_empty())
    };
    let tenants_elsewhere = set("redis_url") || set("licenses");
    let entitlements = get(values, problems, "entitlements", |text| {
        if tenants_elsewhere {
            Ok(PathBuf::from(text))
        } else {
            directory(text)
        }
    });
    let strict_principals = get(values, problems, "strict_principals", boolean);
    let policy_errors = get(values, problems, "policy_errors", |text| {
        match text.trim().to_ascii_lowercase().as_str() {
            "deny" => Ok(PolicyErrorMode::Deny),
            "cedar" => Ok(PolicyErrorMode::Cedar),
            _ => Err(format!("`{text}` is not one of `deny`, `cedar`")),
        }
    });
    let request_timeout = get(values, problems, "request_timeout_ms", millis);
    let max_batch = get(values, problems, "max_batch", |text| match number(text)? {
        0 => Err("must be at least 1".to_string()),
        n => usize::try_from(n).map_err(|_| "too large".to_string()),
    });
    let max_request_bytes = get(
        values,
        problems,
        "max_request_bytes",
        |text| match number(text)? {
            n if n < 1024 => Err("must be at least 1024".to_string()),
            n => usize::try_from(n).map_err(|_| "too large".to_string()),
        },
    );
    let watch = get(values, problems, "watch", boolean);
    let reload_debounce = get(values, problems, "reload_debounce_ms", |text| {
        number(text).map(Duration::from_millis)
    });
    let shutdown_delay = get(values, problems, "shutdown_delay_ms", |text| {
        number(text).map(Duration::from_millis)
    });
    let shutdown_grace = get(values, problems, "shutdown_grace_ms", |text| {
        number(text).map(Duration::from_millis)
    });
    let share = |text: &str| match text.trim().parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("`{text}` is not a number from 0 to 1")),
    };
    let decision_log_sink = get(values, problems, "decision_log", |text| {
        Ok(match text.trim() {
            "" => None,
            "stdout" => Some(crate::decision_log::Sink::Stdout),
            path => Some(crate::decision_log::Sink::File(PathBuf::from(path))),
        })
    });
    let decision_log_queue = get(
        values,
        problems,
        "decision_log_queue",
        |text| match number(text)? {
            0 => Err("must be at least 1".to_string()),
            n => usize::try_from(n).map_err(|_| "too large".to_string()),
        },
    );
    let sample_allow = get(values, problems, "decision_log_sample_allow", share);
    let sample_deny = get(values, problems, "decision_log_sample_deny", share);
    let log_context = get(values, problems, "decision_log_context", boolean);
    let mask = get(values, problems, "decision_log_mask", |text| {
        Ok::<_, String>(
            text.split(',')
                .map(str::trim)
                .filter(|field| !field.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>(),
        )
    });
    let attributes = get(values, problems, "decision_log_attributes", |text| {
        text.split(',')
            .map(str::trim)
            .filter(|path| !path.is_empty())
            .map(|path| {
                if path.split('.').any(str::is_empty) {
                    Err(format!(
                        "`{path}` is not an attribute path such as account.plan"
                    ))
                } else {
                    Ok(path.to_string())
                }
            })
            .collect::<Result<Vec<_>, _>>()
    });
    let redis_stream = get(values, problems, "decision_log_redis_stream", |text| {
        Ok::<_, String>(Some(text.trim().to_string()).filter(|key| !key.is_empty()))
    });
    let redis_stream_maxlen =
        get(
            values,
            problems,
            "decision_log_redis_maxlen",
            |text| match number(text)? {
                0 => Err("must be at least 1".to_string()),
                n => Ok(n),
            },
        );
    let max_bytes = get(
        values,
        problems,
        "decision_log_max_bytes",
        |text| match number(text)? {
            n if n < 1024 => Err("must be at least 1024".to_string()),
            n => Ok(n),
        },
    );
    let text =
        |text: &str| Ok::<_, String>(Some(text.trim().to_string()).filter(|t| !t.is_empty()));
    let redis_url = get(values, problems, "redis_url", text);
    let redis_cluster = get(values, problems, "redis_cluster", boolean);
    let redis_username = get(values, problems, "redis_username", text);
    let redis_password = get(values, problems, "redis_password", |t| {
        Ok::<_, String>(Some(t.to_string()).filter(|t| !t.is_empty()))
    });
    let redis_tls_ca_file = get(values, problems, "redis_tls_ca_file", |t| match t.trim() {
        "" => Ok(None),
        path if Path::new(path).is_file() => Ok(Some(PathBuf::from(path))),
        path => Err(format!("`{path}` is not a readable file")),
    });
    let redis_timeout = get(values, problems, "redis_timeout_ms", millis);
    let cache_max_bytes = get(values, problems, "cache_max_bytes", |text| {
        match number(text)? {
            n if n < 1024 * 1024 => Err("must be at least 1048576 (1 MiB)".to_string()),
            n => Ok(n),
        }
    });
    let cache_ttl = get(values, problems, "cache_ttl_ms", millis);
    let max_stale = get(values, problems, "max_stale_ms", |text| {
        number(text).map(Duration::from_millis)
    });
    let idempotency_ttl = get(values, problems, "usage_idempotency_ttl_ms", millis);
    let lease_ttl = get(values, problems, "usage_lease_ttl_ms", millis);
    let lease_flush = get(values, problems, "usage_lease_flush_ms", millis);
    let lease_answers_max_bytes =
        get(
            values,
            problems,
            "usage_lease_answers_max_bytes",
            |text| match number(text)? {
                0 => Err("must be at least 1".to_string()),
                n => Ok(n),
            },
        );
    let stream_maxlen = get(
        values,
        problems,
        "usage_stream_maxlen",
        |text| match number(text)? {
            0 => Err("must be at least 1".to_string()),
            n => Ok(n),
        },
    );
    let admin_listen = get(values, problems, "admin_listen", |text| {
        if text.trim().is_empty() {
            return Ok(None);
        }
        text.trim()
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| format!("`{text}` is not a socket address such as 127.0.0.1:50052"))
    });
    let admin_token = get(values, problems, "admin_token", |t| {
        Ok::<_, String>(Some(Secret(t.trim().to_string())).filter(|t| !t.0.is_empty()))
    });
    let optional_dir = |text: &str| {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        directory(text).map(Some)
    };
    let licenses_dir = get(values, problems, "licenses", optional_dir);
    let license_keys = get(values, problems, "license_keys", optional_dir);
    let license_poll = get(values, problems, "license_poll_ms", millis);
    let license_clock_file = get(values, problems, "license_clock_file", |text| {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(text);
        match path.parent() {
            Some(parent) if parent.as_os_str().is_empty() || parent.is_dir() || !check_dirs => {
                Ok(Some(path))
            }
            _ => Err(format!("`{text}`: the directory does not exist")),
        }
    });
    let license_skew = get(values, problems, "license_clock_skew_ms", |text| {
        number(text).map(Duration::from_millis)
    });
    let install_id = get(values, problems, "install_id", text);
    let cluster_id = get(values, problems, "cluster_id", text);
    let licenses = match (licenses_dir, license_keys) {
        (Some(Some(dir)), Some(Some(keys))) => Some(Some(LicenseConfig {
            dir,
            keys,
            poll: license_poll.unwrap_or_else(|| crate::config_keys::millis("license_poll_ms")),
            clock_file: license_clock_file.clone().flatten(),
            skew: license_skew.unwrap_or_default(),
            installation: crate::license::set::Installation {
                install: install_id.clone().flatten(),
                hostname: crate::license::set::Installation::hostname_of_host(),
                cluster: cluster_id.clone().flatten(),
            },
        })),
        (Some(Some(_)), Some(None)) => {
            problems.push(ConfigProblem::Combination {
                key: "licenses",
                message: "licenses are verified against trusted keys; set license_keys".to_string(),
            });
            None
        }
        (Some(None), Some(Some(_))) => {
            problems.push(ConfigProblem::Combination {
                key: "license_keys",
                message: "trusted keys without licenses to verify; set licenses".to_string(),
            });
            None
        }
        (Some(None), Some(None)) => Some(None),
        _ => None,
    };
    let redis = match (&redis_url, &redis_cluster) {
        (Some(Some(urls)), Some(cluster)) => {
            let urls: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_string)
                .collect();
            for url in &urls {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    problems.push(ConfigProblem::Combination {
                        key: "redis_url",
                        message: format!(
                            "`{}` must start with redis:// or rediss://",
                            crate::store::redis_client::redact_url(url)
                        ),
                    });
                }
            }
            if urls.len() > 1 && !cluster {
                problems.push(ConfigProblem::Combination {
                    key: "redis_url",
                    message: "several URLs need redis_cluster: true".to_string(),
                });
            }
            Some(crate::store::redis_client::RedisSettings {
                urls,
                cluster: *cluster,
                username: redis_username.clone().flatten(),
                password: redis_password.clone().flatten(),
                tls_ca_file: redis_tls_ca_file.clone().flatten(),
                // A timeout that does not parse is reported; the
                // configuration is then not used.
                timeout: redis_timeout
                    .unwrap_or_else(|| crate::config_keys::millis("redis_timeout_ms")),
            })
        }
        _ => None,
    };
    let redis_stream = match (redis_stream, &redis) {
        (Some(Some(key)), Some(redis)) => Some(Some(crate::decision_log::StreamSettings {
            key,
            max_len: redis_stream_maxlen
                .unwrap_or_else(|| crate::config_keys::number("decision_log_redis_maxlen")),
            redis: redis.clone(),
        })),
        (Some(Some(_)), None) => {
            problems.push(ConfigProblem::Combination {
                key: "decision_log_redis_stream",
                message: "the stream is written to Redis; set redis_url".to_string(),
            });
            None
        }
        (Some(None), _) => Some(None),
        (None, _) => None,
    };
    // A listener other hosts can reach needs TLS and named callers, or the
    // operator's explicit acknowledgement.
    let secured = tls.is_some() && matches!(callers_file, Some(Some(_)));
    if insecure_listen == Some(false) && !secured {
        for (key, address) in [
            ("listen", listen.as_ref().copied()),
            ("http_listen", http_listen.flatten()),
            ("ext_authz_listen", ext_authz_listen.flatten()),
            ("admin_listen", admin_listen.flatten()),
        ] {
            match address {
                Some(address) if !address.ip().to_canonical().is_loopback() => {
                    problems.push(ConfigProblem::Combination {
                        key,
                        message: format!(
                            "{address} is not a loopback address: without TLS (tls_cert_file, tls_key_file) and callers (callers_file) any peer that reaches it may use every operation; configure both, or acknowledge with insecure_listen: true"
                        ),
                    });
                }
                _ => {}
            }
        }
    }
    if let Some(Some(_)) = admin_listen {
        if redis.is_none() && !matches!(licenses, Some(Some(_))) {
            problems.push(ConfigProblem::Combination {
                key: "admin_listen",
                message: "the AdminService writes snapshots to Redis or delivers licenses; set redis_url or licenses".to_string(),
            });
        }
        match &admin_token {
            Some(None) if !matches!(callers_file, Some(Some(_))) => problems.push(ConfigProblem::Combination {
                key: "admin_listen",
                message: "the AdminService needs admin_token (or TOLLGATE_ADMIN_TOKEN), or a callers_file naming callers with admin operations".to_string(),
            }),
            Some(Some(token)) if token.0.len() < 16 => {
                problems.push(ConfigProblem::Combination {
                    key: "admin_token",
                    message: "must be at least 16 characters".to_string(),
                });
            }
            _ => {}
        }
    }
    let transparent_huge_pages = get(values, problems, "transparent_huge_pages", boolean);
    let log_format = get(values, problems, "log_format", |text| {
        match text.trim().to_ascii_lowercase().as_str() {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{text}` is not one of `human`, `json`")),
        }
    });
    let log_level = get(values, problems, "log_level", |text| {
        // Each directive trimmed: the filter's parser mis-slices a directive
        // after leading whitespace (and panics when a character there takes
        // more than one byte).
        let filter = text
            .split(',')
            .map(str::trim)
            .filter(|directive| !directive.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        tracing_subscriber::EnvFilter::try_new(&filter)
            .map(|_| filter.clone())
            .map_err(|error| format!("`{text}` is not a valid log filter: {error}"))
    });

    Some(Config {
        listen: listen?,
        listen_unix: listen_unix?,
        health_listen: health_listen?,
        health_tls: health_tls?,
        insecure_listen: insecure_listen?,
        tls,
        callers_file: callers_file?,
        credentials_poll: credentials_poll?,
        max_connections: max_connections?,
        max_in_flight: max_in_flight?,
        max_request_bytes_in_flight: max_request_bytes_in_flight?,
        max_concurrent_streams: max_concurrent_streams?,
        metrics_listen: metrics_listen?,
        policies: policies?,
        entitlements: entitlements?,
        options: Options {
            strict_principals: strict_principals?,
            policy_errors: policy_errors?,
        },
        limits: Limits {
            max_batch: max_batch?,
            request_timeout: request_timeout?,
        },
        max_request_bytes: max_request_bytes?,
        watch: watch?,
        reload_debounce: reload_debounce?,
        shutdown_delay: shutdown_delay?,
        shutdown_grace: shutdown_grace?,
        decision_log: match (decision_log_sink?, redis_stream?) {
            (None, None) => None,
            (sink, redis_stream) => Some(crate::decision_log::Settings {
                sink,
                redis_stream,
                queue: decision_log_queue?,
                sample_allow: sample_allow?,
                sample_deny: sample_deny?,
                context: log_context?,
                mask: mask.clone()?,
                attributes: attributes?,
                max_bytes: max_bytes?,
            }),
        },
        redis,
        cache: crate::store::remote::CacheSettings {
            max_bytes: cache_max_bytes?,
            ttl: cache_ttl?,
            max_stale: max_stale?,
            heartbeat: crate::store::remote::HEARTBEAT,
            idle_heartbeat: crate::store::remote::IDLE_HEARTBEAT,
        },
        metering: crate::metering::MeteringSettings {
            idempotency_ttl: idempotency_ttl?,
            stream_maxlen: stream_maxlen?,
            lease_ttl: lease_ttl?,
            lease_flush: lease_flush?,
            lease_answers_max_bytes: lease_answers_max_bytes?,
        },
        clock: crate::metering::Clock::system(),
        http_listen: http_listen?,
        jwt_file: jwt_file?,
        ext_authz_listen: ext_authz_listen?,
        ext_authz_routes: ext_authz_routes?,
        ext_authz_file: ext_authz_file?.map(|(_, file)| file),
        authzen: crate::http::authzen::Settings {
            tenant: authzen_tenant?,
            namespace: authzen_namespace?,
            types: authzen_types?,
        },
        licenses: licenses?,
        admin_listen: admin_listen?,
        admin_token: admin_token?,
        log_format: log_format?,
        log_level: log_level?,
        transparent_huge_pages: transparent_huge_pages?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_a_valid_configuration() {
        // Each module's own defaults are the table's.
        let config = Config::with_dirs(PathBuf::from("p"), PathBuf::from("e"));
        assert_eq!(config.policies, PathBuf::from("p"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.options, Options::default());
        assert_eq!(
            config.metering,
            crate::metering::MeteringSettings::default()
        );
        let cache = crate::store::remote::CacheSettings::default();
        assert_eq!(
            (
                config.cache.max_bytes,
                config.cache.ttl,
                config.cache.max_stale
            ),
            (cache.max_bytes, cache.ttl, cache.max_stale)
        );
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert!(config.decision_log.is_none() && config.redis.is_none());
    }

    fn texts(errors: &ConfigErrors) -> Vec<String> {
        errors.0.iter().map(ToString::to_string).collect()
    }

    fn flags_with(dir: &Path) -> FlagValues {
        FlagValues {
            config_file: None,
            values: vec![
                ("policies", dir.display().to_string()),
                ("entitlements", dir.display().to_string()),
            ],
        }
    }

    #[test]
    fn flags_override_env_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.yaml");
        std::fs::write(
            &file,
            "listen: 127.0.0.1:1\nmax_batch: 7\nstrict_principals: false\n",
        )
        .unwrap();
        let mut flags = flags_with(dir.path());
        flags.config_file = Some(file);
        flags.values.push(("listen", "127.0.0.1:3".to_string()));
        let env = vec![
            ("TOLLGATE_LISTEN".to_string(), "127.0.0.1:2".to_string()),
            ("TOLLGATE_MAX_BATCH".to_string(), "9".to_string()),
        ];
        let config = load_from(&flags, &env).unwrap();
        assert_eq!(config.listen.port(), 3);
        assert_eq!(config.limits.max_batch, 9);
        assert!(!config.options.strict_principals);
    }

    #[test]
    fn every_violation_is_listed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.yaml");
        std::fs::write(&file, "lisen: x\nmax_batch: 0\npolicy_errors: maybe\n").unwrap();
        let mut flags = flags_with(dir.path());
        flags.config_file = Some(file);
        let env = vec![
            ("TOLLGATE_STRICT_PRINCIPAL".to_string(), "false".to_string()),
            ("TOLLGATE_LISTEN".to_string(), "nowhere".to_string()),
        ];
        let errors = load_from(&flags, &env).unwrap_err();
        let text = errors.to_string();
        assert_eq!(errors.0.len(), 5, "{text}");
        assert!(text.contains("unknown key `lisen`"), "{text}");
        assert!(text.contains("unknown environment variable TOLLGATE_STRICT_PRINCIPAL"));
        assert!(text.contains("listen (from environment variable TOLLGATE_LISTEN)"));
        assert!(text.contains("max_batch"));
        assert!(text.contains("policy_errors"));
    }

    #[test]
    fn a_listener_other_hosts_reach_needs_tls_and_callers_or_the_acknowledgement() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, "x").unwrap();
            path.display().to_string()
        };
        let (cert, key, callers) = (file("c.pem"), file("k.pem"), file("callers.yaml"));
        let load = |pairs: &[(&str, &str)]| {
            let env: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            load_from(&flags_with(dir.path()), &env)
        };
        let errors = load(&[("TOLLGATE_LISTEN", "0.0.0.0:50051")]).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].key(), Some("listen"));
        let text = errors.to_string();
        assert!(
            text.contains("0.0.0.0:50051 is not a loopback address")
                && text.contains("insecure_listen: true"),
            "{text}"
        );
        // TLS alone is not enough: callers must be named too.
        let errors = load(&[
            ("TOLLGATE_LISTEN", "[::]:50051"),
            ("TOLLGATE_TLS_CERT_FILE", &cert),
            ("TOLLGATE_TLS_KEY_FILE", &key),
        ])
        .unwrap_err();
        assert_eq!(errors.0[0].key(), Some("listen"), "{errors}");
        for allowed in [
            vec![
                ("TOLLGATE_LISTEN", "0.0.0.0:50051"),
                ("TOLLGATE_INSECURE_LISTEN", "true"),
            ],
            vec![
                ("TOLLGATE_LISTEN", "10.1.2.3:50051"),
                ("TOLLGATE_TLS_CERT_FILE", &cert),
                ("TOLLGATE_TLS_KEY_FILE", &key),
                ("TOLLGATE_CALLERS_FILE", &callers),
            ],
            vec![("TOLLGATE_LISTEN", "[::1]:50051")],
        ] {
            let config = load(&allowed).unwrap_or_else(|e| panic!("{allowed:?}: {e}"));
            assert!(config.listen.port() == 50051);
        }
        let config = load(&[
            ("TOLLGATE_LISTEN", "10.1.2.3:50051"),
            ("TOLLGATE_TLS_CERT_FILE", &cert),
            ("TOLLGATE_TLS_KEY_FILE", &key),
            ("TOLLGATE_TLS_CLIENT_CA_FILE", &cert),
            ("TOLLGATE_TLS_CLIENT_AUTH", "optional"),
            ("TOLLGATE_CALLERS_FILE", &callers),
        ])
        .unwrap();
        let tls = config.tls.unwrap();
        assert!(!tls.client_auth_required);
        assert_eq!(tls.client_ca.unwrap().display().to_string(), cert);
        let errors = load(&[
            ("TOLLGATE_TLS_CERT_FILE", &cert),
            ("TOLLGATE_TLS_CLIENT_AUTH", "sometimes"),
            ("TOLLGATE_HEALTH_TLS", "true"),
            ("TOLLGATE_CALLERS_FILE", "/nonexistent/callers.yaml"),
        ])
        .unwrap_err();
        assert_eq!(
            texts(&errors),
            [
                "tls_client_auth (from environment variable TOLLGATE_TLS_CLIENT_AUTH): `sometimes` is not one of `required`, `optional`",
                "callers_file (from environment variable TOLLGATE_CALLERS_FILE): `/nonexistent/callers.yaml` is not a readable file",
                "tls_key_file: tls_cert_file needs its private key",
                "health_tls: needs tls_cert_file and tls_key_file",
            ]
        );
    }

    #[test]
    fn defaults_match_the_documented_keys() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load_from(&flags_with(dir.path()), &[]).unwrap();
        let built = Config::with_dirs(dir.path().to_path_buf(), dir.path().to_path_buf());
        assert_eq!(format!("{loaded:?}"), format!("{built:?}"));
    }

    #[test]
    fn the_admin_service_needs_redis_and_a_long_token() {
        let dir = tempfile::tempdir().unwrap();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let errors = load_from(
            &flags_with(dir.path()),
            &env(&[("TOLLGATE_ADMIN_LISTEN", "127.0.0.1:50052")]),
        )
        .unwrap_err();
        assert_eq!(
            texts(&errors),
            [
                "admin_listen: the AdminService writes snapshots to Redis or delivers licenses; set redis_url or licenses",
                "admin_listen: the AdminService needs admin_token (or TOLLGATE_ADMIN_TOKEN), or a callers_file naming callers with admin operations",
            ]
        );
        let errors = load_from(
            &flags_with(dir.path()),
            &env(&[
                ("TOLLGATE_ADMIN_LISTEN", "127.0.0.1:50052"),
                ("TOLLGATE_REDIS_URL", "redis://127.0.0.1:6379"),
                ("TOLLGATE_ADMIN_TOKEN", "short"),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            texts(&errors),
            ["admin_token: must be at least 16 characters"]
        );
        assert_eq!(errors.0[0].key(), Some("admin_token"));
        let config = load_from(
            &flags_with(dir.path()),
            &env(&[
                ("TOLLGATE_ADMIN_LISTEN", "127.0.0.1:50052"),
                ("TOLLGATE_REDIS_URL", "redis://u:pw@127.0.0.1:6379"),
                ("TOLLGATE_ADMIN_TOKEN", "0123456789abcdef"),
            ]),
        )
        .unwrap();
        // Secrets never reach a Debug print.
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("0123456789abcdef") && !shown.contains(":pw@"),
            "{shown}"
        );
    }

    #[test]
    fn kubernetes_service_links_are_not_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let links = [
            "TOLLGATE_SERVICE_HOST",
            "TOLLGATE_SERVICE_PORT",
            "TOLLGATE_SERVICE_PORT_GRPC",
            "TOLLGATE_PORT",
            "TOLLGATE_PORT_50051_TCP",
            "TOLLGATE_PORT_50051_TCP_PROTO",
            "TOLLGATE_PORT_50051_TCP_ADDR",
            "TOLLGATE_METRICS_SERVICE_HOST",
            "TOLLGATE_METRICS_PORT_9090_TCP_PORT",
        ];
        let env: Vec<(String, String)> = links
            .iter()
            .map(|name| (name.to_string(), "tcp://10.0.0.1:50051".to_string()))
            .collect();
        assert!(load_from(&flags_with(dir.path()), &env).is_ok());
        let typo = vec![("TOLLGATE_LISTEN_PORT".to_string(), "1".to_string())];
        assert!(load_from(&flags_with(dir.path()), &typo).is_err());
    }

    #[test]
    fn missing_named_config_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut flags = flags_with(dir.path());
        flags.config_file = Some(dir.path().join("absent.yaml"));
        let errors = load_from(&flags, &[]).unwrap_err();
        assert!(errors.0[0].to_string().contains("cannot read"));
        assert!(matches!(errors.0[0].origin(), Some(Origin::File(_))));
    }
}
