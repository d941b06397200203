//! The command line: `serve`, `validate` and `check`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

mod listing;
mod report;

use crate::api::convert::parse_ref;
use crate::api::{self, pb};
use crate::config::{self, Config, FlagValues};
use crate::decide::DecisionService;
use crate::store::{entitlements, ReloadOutcome, Store};
use tollgate_engine::{PolicySnapshot, TenantMap};

const EXIT_CODES: &str = "\
Exit codes:
  serve:    0 stopped cleanly (SIGTERM/SIGINT), 1 failed while running, 2 bad configuration
  validate: 0 everything valid, 1 problems found (license files refused included), 2 bad configuration, 3 Redis unreachable (with redis_url)
  check:    0 ALLOW, 1 DENY, 2 bad configuration, request or files, 3 server unreachable or unavailable
  test:     0 every case passed, 1 a case failed or a test file is invalid, 2 bad configuration, policies, missing test files or no case to run
  snapshot: 0 done, 1 refused (invalid snapshot, version not newer, not found), 2 bad configuration or policies, 3 Redis unreachable
  status:   0 healthy, 1 degraded (no policy set loaded, last reload rejected, snapshot or license files refused, licenses in grace or expired, Redis disconnected), 2 bad arguments, 3 server unreachable or not answering /status
  license:  0 done (inspect: verifies), 1 refused (issue: invalid snapshot or terms; inspect: does not verify or not valid now), 2 bad arguments, configuration, policies or key
  report:   0 written, 1 an input could not be read or an output written, 2 bad arguments, 3 Redis unreachable";

/// tollgate: an entitlement decision point over Cedar policies, served over gRPC.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API (EntitlementService, health, reflection).
    ///
    /// Configuration comes from the YAML file (--config, TOLLGATE_CONFIG, or
    /// ./tollgate.yaml when present), overridden by TOLLGATE_<KEY> environment
    /// variables, overridden by flags. Keys: listen, listen_unix, health_listen,
    /// health_tls, http_listen, authzen_tenant, authzen_namespace,
    /// authzen_types, ext_authz_listen, ext_authz_file, jwt_file, insecure_listen, tls_cert_file, tls_key_file,
    /// tls_client_ca_file, tls_client_auth, callers_file, max_connections,
    /// max_in_flight, max_request_bytes_in_flight, max_concurrent_streams,
    /// credentials_poll_ms, metrics_listen, policies,
    /// entitlements, strict_principals, policy_errors, max_batch,
    /// max_request_bytes, request_timeout_ms, watch, reload_debounce_ms, shutdown_delay_ms,
    /// shutdown_grace_ms, decision_log, decision_log_queue,
    /// decision_log_sample_allow, decision_log_sample_deny, decision_log_context,
    /// decision_log_mask, decision_log_attributes, decision_log_max_bytes,
    /// decision_log_redis_stream,
    /// decision_log_redis_maxlen, redis_url, redis_cluster,
    /// redis_username, redis_password, redis_tls_ca_file, redis_timeout_ms,
    /// cache_max_bytes, cache_ttl_ms, max_stale_ms, usage_idempotency_ttl_ms,
    /// usage_lease_ttl_ms, usage_lease_flush_ms, usage_lease_answers_max_bytes,
    /// usage_stream_maxlen, licenses, license_keys, license_poll_ms,
    /// license_clock_file, license_clock_skew_ms, install_id, cluster_id,
    /// admin_listen, admin_token,
    /// log_format, log_level, transparent_huge_pages (docs/configuration.md describes each; a nested YAML mapping
    /// such as `redis: {url: ...}` sets `redis_url`).
    /// Policies and file snapshots reload on file change and on SIGHUP; with
    /// redis_url, snapshots come from Redis and its invalidations; with
    /// licenses, from signed licenses (with redis_url too: a tenant's license
    /// serves when Redis cannot).
    /// Traces are exported over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT (or
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; OTEL_SERVICE_NAME,
    /// OTEL_TRACES_SAMPLER(_ARG) and OTEL_BSP_* are honoured.
    Serve {
        #[command(flatten)]
        files: FileArgs,
        /// gRPC listen address [default: 127.0.0.1:50051].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Log format: human or json [default: human].
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<String>,
    },
    /// Check the policies, the schema and the entitlement snapshots (the files,
    /// or with redis_url every snapshot stored in Redis, and with licenses
    /// every license file); print every problem with its place.
    Validate {
        #[command(flatten)]
        files: FileArgs,
    },
    /// Decide one request, locally from the files or against a running server (--remote).
    Check(CheckArgs),
    /// List what a principal may do: every (action, resource) pair of the
    /// tenant's snapshot, decided, with the offer that would unlock each
    /// denial (offers.yaml), locally or against a running server.
    ///
    /// Prints a table: resource, action, allowed, reason, usage, unlocked by.
    Entitlements(listing::EntitlementsArgs),
    /// Write, read, delete and list tenant snapshots in Redis (provisioning).
    ///
    /// A write is validated against the schema in the policy directory,
    /// refused unless its version is newer than the stored one, and published
    /// to every sidecar in the same atomic step. Redis settings come from the
    /// same configuration as serve (redis_url, redis_password, ...).
    Snapshot(SnapshotArgs),
    /// Print the health detail of a running server: versions, snapshot counts
    /// and ages, Redis state, the last reload error (GET /status on its
    /// metrics address).
    ///
    /// Exit code 0 when healthy, 1 when degraded (no policy set loaded, the
    /// last reload rejected, snapshot files refused, Redis disconnected), 3
    /// when the server cannot be reached or does not answer /status.
    Status(StatusArgs),
    /// Signed licenses for offline installs: make a key pair, issue a
    /// license from a tenant snapshot, inspect one (docs/licenses.md).
    ///
    /// A license is a compact JWS signed with Ed25519 (alg EdDSA) carrying
    /// the tenant's snapshot and its terms; sidecars serve it from their
    /// licenses directory after verifying it against license_keys.
    #[command(subcommand)]
    License(LicenseCommand),
    /// Usage analytics from the decision log and the usage streams: feature
    /// adoption by plan, paywall demand (with the offers that would unlock
    /// it), cap pressure, unused entitlements and daily trends, as one
    /// self-contained HTML page, JSON and CSV (docs/analytics.md).
    ///
    /// Reads decision-log files (rotated ones included) or the decision
    /// Redis Stream, and with --redis-url the tenants' usage streams, one
    /// record at a time: memory grows with the accounts, principals and
    /// features seen, not with the records.
    Report(Box<report::ReportArgs>),
    /// Run the policy test files (*.test.yaml in the policy directory and its tests/ folder).
    ///
    /// Prints a line per case, a diff of expected against actual for every failure,
    /// the policies that determined no case, and `N passed, M failed`.
    Test(TestArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The server's metrics address (its metrics_listen): host:port or http://host:port.
    #[arg(long, value_name = "ADDR")]
    metrics: String,
    /// Print the report as JSON, as the server sends it.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TestArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Test files or directories [default: the policy directory].
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Run only the cases whose `file :: name` contains this text.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Output: human (like cargo test) or junit (JUnit XML on stdout).
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "junit"])]
    format: String,
}

#[derive(Debug, Args)]
struct FileArgs {
    /// Configuration file (YAML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Policy directory [default: ./policies].
    #[arg(long, value_name = "DIR")]
    policies: Option<String>,
    /// Entitlement snapshot directory [default: ./entitlements].
    #[arg(long, value_name = "DIR")]
    entitlements: Option<String>,
}

/// Where `check` and `entitlements` ask, when not the files.
#[derive(Debug, Args)]
struct ServerArgs {
    /// Ask a running server at ADDR (host:port, http://host:port, or
    /// unix:/path/to/socket) instead of loading files.
    #[arg(long, value_name = "ADDR", conflicts_with = "http")]
    remote: Option<String>,
    /// Ask a running server's HTTP front door at URL (http://host:port, its
    /// http_listen) instead of loading files: POST /v1/check, or
    /// /v1/entitlements.
    #[arg(long, value_name = "URL")]
    http: Option<String>,
    /// With --remote or --http: the end user's JWT, sent as
    /// `authorization: Bearer TOKEN` (the server's jwt_file verifies it; its
    /// tenant and principal then need not be given).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    files: FileArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// Tenant id.
    #[arg(long)]
    tenant: String,
    /// Principal, as `Type:id` or Cedar syntax `Type::"id"`.
    #[arg(long, value_name = "REF")]
    principal: String,
    /// Action: an id of type `Action`, or `Type:id`, or Cedar syntax.
    #[arg(long, value_name = "REF")]
    action: String,
    /// Resource, as `Type:id` or Cedar syntax.
    #[arg(long, value_name = "REF")]
    resource: String,
    /// Context as a JSON object; entity references and extension values use
    /// Cedar's escapes, e.g. {"now": {"__extn": {"fn": "datetime", "arg": "2026-01-01"}}}.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    context: String,
    /// Print the response as JSON.
    #[arg(long)]
    json: bool,
    /// Also show how every policy whose scope matches the request evaluated.
    #[arg(long)]
    explain: bool,
    /// With --remote: the oldest snapshot accepted, in milliseconds since its
    /// source confirmed it (0: no bound).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    max_staleness_ms: u64,
    /// A what-if override, `Type:id.attribute=JSON`, e.g.
    /// `Account:hooli.plan="pro"` (repeat for more): the answer is
    /// hypothetical.
    #[arg(long = "what-if", value_name = "OVERRIDE")]
    what_if: Vec<String>,
}

#[derive(Debug, Args)]
struct SnapshotArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Redis URL [default: the configuration's redis_url].
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Validate a snapshot file (`-` for stdin) against the schema and write it.
    Put {
        /// The snapshot document: {"tenant", "version", "entities"}.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a tenant's stored snapshot.
    Get {
        /// Tenant id.
        tenant: String,
    },
    /// Delete a tenant's snapshot (its version stays as the high-water mark).
    Delete {
        /// Tenant id.
        tenant: String,
        /// Delete only if this version is the stored one.
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<u64>,
    },
    /// List the tenants that have a snapshot.
    List,
}

#[derive(Debug, Subcommand)]
enum LicenseCommand {
    /// Write a new Ed25519 key pair: DIR/<key id>.key.pem (PKCS#8, private,
    /// mode 0600: keep it with the vendor) and DIR/<key id>.pub.pem (SPKI,
    /// for the sidecars' license_keys). The key id is the key's RFC 7638
    /// JWK thumbprint.
    Keygen {
        /// Directory to write the two files into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Validate a snapshot against the policy directory's schema and sign a
    /// license carrying it; the token goes to --out or standard output.
    Issue(Box<LicenseIssueArgs>),
    /// Print a license's header and claims and, with --keys, whether it
    /// verifies and is valid now. Exit code 0 when it verifies (or, without
    /// --keys, reads), 1 when it is refused.
    Inspect {
        /// The license file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Directory of trusted public keys (*.pem) and revoked.yaml, as
        /// license_keys.
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        /// Print the claims as JSON, the snapshot included.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct LicenseIssueArgs {
    #[command(flatten)]
    files: FileArgs,
    /// The tenant snapshot document ({"tenant", "version", "entities"});
    /// its tenant and version are the license's.
    #[arg(long, value_name = "FILE")]
    snapshot: PathBuf,
    /// The private key (PKCS#8 PEM, from `tollgate license keygen`).
    #[arg(long, value_name = "PRIVATE.pem")]
    key: PathBuf,
    /// Expiry: a date (2027-06-30, midnight UTC) or an RFC 3339 time.
    #[arg(long, value_name = "DATE")]
    expires: String,
    /// Not valid before [default: now].
    #[arg(long, value_name = "DATE")]
    not_before: Option<String>,
    /// How long after expiry checks are still decided (marked in grace),
    /// e.g. 14d or 72h.
    #[arg(long, value_name = "DURATION", default_value = "0")]
    grace: String,
    /// Bind to an installation: install=<install_id>, cluster=<cluster_id>
    /// or hostname=<host name>; repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    bind: Vec<String>,
    /// License id [default: a random `lic_...`].
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Write the license here (the token and a newline) instead of
    /// standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

impl FileArgs {
    fn flags(&self) -> FlagValues {
        let mut values = Vec::new();
        if let Some(dir) = &self.policies {
            values.push(("policies", dir.clone()));
        }
        if let Some(dir) = &self.entitlements {
            values.push(("entitlements", dir.clone()));
        }
        FlagValues {
            config_file: self.config.clone(),
            values,
        }
    }
}

/// Runs the command line and returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            files,
            listen,
            log_format,
        } => {
            let mut flags = files.flags();
            if let Some(listen) = listen {
                flags.values.push(("listen", listen));
            }
            if let Some(format) = log_format {
                flags.values.push(("log_format", format));
            }
            let Some(config) = load_config(&flags) else {
                return ExitCode::from(2);
            };
            init_logging(&config);
            serve(config)
        }
        Command::Validate { files } => {
            let Some(config) = load_config(&files.flags()) else {
                return ExitCode::from(2);
            };
            validate(&config)
        }
        Command::Check(args) => check(&args),
        Command::Entitlements(args) => listing::entitlements(&args),
        Command::Test(args) => test(&args),
        Command::Snapshot(args) => snapshot(&args),
        Command::Status(args) => status(&args),
        Command::License(command) => license(command),
        Command::Report(args) => report::report(&args),
    }
}

fn license(command: LicenseCommand) -> ExitCode {
    use crate::license::command;
    match command {
        LicenseCommand::Keygen { out } => command::keygen(&out),
        LicenseCommand::Issue(args) => {
            let Some(config) = load_config(&args.files.flags()) else {
                return ExitCode::from(2);
            };
            command::issue(
                &config.policies,
                &command::IssueArgs {
                    snapshot: args.snapshot,
                    key: args.key,
                    expires: args.expires,
                    not_before: args.not_before,
                    grace: args.grace,
                    bind: args.bind,
                    id: args.id,
                    out: args.out,
                },
            )
        }
        LicenseCommand::Inspect { file, keys, json } => {
            command::inspect(&file, keys.as_deref(), json)
        }
    }
}

/// Longest wait for the server to accept and to answer `GET /status`.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn status(args: &StatusArgs) -> ExitCode {
    let address = args
        .metrics
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let port = address
        .rsplit_once(':')
        .and_then(|(host, port)| (!host.is_empty()).then(|| port.parse::<u16>().ok())?);
    if port.is_none() {
        eprintln!("error: --metrics: `{address}` is not host:port, such as 127.0.0.1:9090");
        return ExitCode::from(2);
    }
    let body = match http_get_status(address) {
        Ok(body) => body,
        Err(problem) => {
            eprintln!("error: {problem}");
            return ExitCode::from(3);
        }
    };
    let report: crate::status::Report = match serde_json::from_str(&body) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {address}/status did not answer a tollgate status report: {error}");
            return ExitCode::from(3);
        }
    };
    if args.json {
        println!("{}", body.trim_end());
    } else {
        print!(
            "{}",
            crate::status::text(&report, std::time::SystemTime::now())
        );
    }
    match report.status {
        crate::status::Health::Healthy => ExitCode::SUCCESS,
        crate::status::Health::Degraded => ExitCode::from(1),
    }
}

/// `GET /status` over HTTP/1.1; the body of a 200 answer.
fn http_get_status(address: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let targets: Vec<std::net::SocketAddr> = address
        .to_socket_addrs()
        .map_err(|error| format!("`{address}` is not a reachable host:port: {error}"))?
        .collect();
    let mut last_error = format!("`{address}` resolves to no address");
    let mut stream = None;
    for target in targets {
        match std::net::TcpStream::connect_timeout(&target, STATUS_TIMEOUT) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => last_error = format!("cannot connect to {target}: {error}"),
        }
    }
    let mut stream = stream.ok_or(last_error)?;
    let failed = |error: std::io::Error| format!("{address}: {error}");
    stream
        .set_read_timeout(Some(STATUS_TIMEOUT))
        .map_err(failed)?;
    stream
        .set_write_timeout(Some(STATUS_TIMEOUT))
        .map_err(failed)?;
    write!(
        stream,
        "GET /status HTTP/1.1\r\nHost: {address}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(failed)?;
    let mut response = Vec::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut response)
        .map_err(failed)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{address} did not answer over HTTP"))?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "{address}/status answered `{status_line}` (is it tollgate's metrics address?)"
        ));
    }
    Ok(body.to_string())
}

fn snapshot(args: &SnapshotArgs) -> ExitCode {
    use crate::admin::{self, AdminError};
    let mut flags = args.files.flags();
    if let Some(url) = &args.redis_url {
        flags.values.push(("redis_url", url.clone()));
    }
    let Some(config) = load_config(&flags) else {
        return ExitCode::from(2);
    };
    let Some(settings) = config.redis.clone() else {
        eprintln!("no Redis configured: set redis_url (or --redis-url, TOLLGATE_REDIS_URL)");
        return ExitCode::from(2);
    };
    let document = match &args.command {
        SnapshotCommand::Put { file } => {
            let read = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(file)
            };
            match read {
                Ok(text) => Some(text),
                Err(error) => {
                    eprintln!("cannot read {}: {error}", file.display());
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let policies = match &args.command {
        SnapshotCommand::Put { .. } => match PolicySnapshot::load_dir(&config.policies) {
            Ok(policies) => Some(policies),
            Err(problems) => {
                for problem in &problems {
                    eprintln!("{problem}");
                }
                eprintln!(
                    "the policies do not load: {}",
                    tollgate_engine::diagnostics::problems(problems.len())
                );
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start runtime: {error}");
            return ExitCode::from(3);
        }
    };
    let result: Result<String, AdminError> = runtime.block_on(async {
        let conn = crate::store::redis_client::RedisConn::connect(&settings).await?;
        match (&args.command, document, policies) {
            (SnapshotCommand::Put { .. }, Some(document), Some(policies)) => {
                let written = admin::put(&conn, &policies, &document).await?;
                Ok(if written.previous == written.version {
                    format!(
                        "{} version {} is stored already (nothing changed)",
                        written.tenant, written.version
                    )
                } else {
                    format!(
                        "wrote {} version {} (replacing {})",
                        written.tenant,
                        written.version,
                        if written.previous == 0 {
                            "nothing".to_string()
                        } else {
                            format!("version {}", written.previous)
                        }
                    )
                })
            }
            (SnapshotCommand::Get { tenant }, _, _) => admin::get(&conn, tenant)
                .await
                .map(|(_, document)| document),
            (
                SnapshotCommand::Delete {
                    tenant,
                    expected_version,
                },
                _,
                _,
            ) => {
                let version = admin::delete(&conn, tenant, *expected_version).await?;
                Ok(format!("deleted {tenant} version {version}"))
            }
            (SnapshotCommand::List, _, _) => Ok(conn.list_tenants().await?.join("\n")),
            _ => Err(AdminError::NoPolicies),
        }
    });
    match result {
        Ok(output) => {
            if !output.is_empty() {
                println!("{}", output.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(error @ (AdminError::Redis(_) | AdminError::NoPolicies)) => {
            eprintln!("{error}");
            ExitCode::from(3)
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(1)
        }
    }
}

fn test(args: &TestArgs) -> ExitCode {
    let Some(config) = load_config(&args.files.flags()) else {
        return ExitCode::from(2);
    };
    let policies = match PolicySnapshot::load_dir(&config.policies) {
        Ok(policies) => Arc::new(policies),
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!(
                "the policies do not load: {}",
                tollgate_engine::diagnostics::problems(problems.len())
            );
            return ExitCode::from(2);
        }
    };
    let paths = if args.paths.is_empty() {
        vec![config.policies.clone()]
    } else {
        args.paths.clone()
    };
    let files = match crate::policy_test::find_test_files(&paths) {
        Ok(files) if files.is_empty() => {
            eprintln!("no test files (*.test.yaml) found");
            return ExitCode::from(2);
        }
        Ok(files) => files,
        Err(problem) => {
            eprintln!("{problem}");
            return ExitCode::from(2);
        }
    };
    let settings = crate::policy_test::Settings {
        filter: args.filter.clone(),
        format: if args.format == "junit" {
            crate::policy_test::Format::Junit
        } else {
            crate::policy_test::Format::Human
        },
        options: config.options,
    };
    let report = crate::policy_test::run(&policies, &files, &settings);
    if report.cases.is_empty() && report.file_errors.is_empty() {
        eprintln!(
            "no case to run{}",
            args.filter
                .as_ref()
                .map(|filter| format!(": none matches the filter `{filter}`"))
                .unwrap_or_default()
        );
        return ExitCode::from(2);
    }
    match settings.format {
        crate::policy_test::Format::Human => print!("{}", crate::policy_test::human(&report)),
        crate::policy_test::Format::Junit => print!("{}", crate::policy_test::junit(&report)),
    }
    if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn load_config(flags: &FlagValues) -> Option<Config> {
    match config::load(flags) {
        Ok(config) => Some(config),
        Err(errors) => {
            eprint!("{errors}");
            None
        }
    }
}

/// Installs logging (and, with an OTLP endpoint, trace export); a bad
/// `OTEL_*` setting is bad configuration: exit code 2 before listening.
fn init_logging(config: &Config) {
    if let Err(error) = crate::telemetry::init(&config.log_level, config.log_format) {
        eprintln!("invalid configuration (1 problem):\n  - {error}");
        std::process::exit(2);
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Whether the process's memory may be backed by transparent huge pages
/// (Linux; elsewhere nothing). mimalloc asks for them on its arenas
/// (`madvise(MADV_HUGEPAGE)`), so that the first touch of an arena's 2 MiB
/// range makes the whole range resident: about 20 MiB of an idle sidecar's
/// resident memory. The setting covers the memory touched after it; a
/// failure (a kernel without the call) leaves the kernel's policy.
pub fn huge_pages(allowed: bool) {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(!allowed) {
        tracing::debug!(error = %error, "transparent huge pages: cannot change the setting");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = allowed;
}

fn serve(config: Config) -> ExitCode {
    if config.transparent_huge_pages {
        huge_pages(true);
    }
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "cannot start runtime");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(crate::app::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "serve failed");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Reads every snapshot stored in Redis and validates it against `policies`
/// (before a schema change is rolled out, say): the number of valid
/// snapshots and the problems of the others.
fn validate_redis(
    settings: &crate::store::redis_client::RedisSettings,
    policies: &PolicySnapshot,
) -> Result<(usize, Vec<tollgate_engine::FileProblem>), String> {
    use crate::store::redis_client::keys::snapshot_key;
    use crate::store::redis_client::{Read, RedisConn};
    let runtime = runtime().map_err(|error| error.to_string())?;
    runtime.block_on(async {
        let conn = RedisConn::connect(settings)
            .await
            .map_err(|error| error.to_string())?;
        let mut valid = 0;
        let mut problems = Vec::new();
        for tenant in conn
            .list_tenants()
            .await
            .map_err(|error| error.to_string())?
        {
            let place = format!("redis {}", snapshot_key(&tenant));
            match conn.read_snapshot(&tenant, None).await {
                Ok(Read::Document { bytes, .. }) => {
                    match tollgate_engine::TenantSnapshot::parse(
                        &bytes,
                        Some(&tenant),
                        policies,
                        tollgate_engine::SnapshotSource::Redis,
                    ) {
                        Ok(_) => valid += 1,
                        Err(error) => {
                            problems.push(tollgate_engine::FileProblem::new(
                                &place,
                                None,
                                error.to_string(),
                            ));
                        }
                    }
                }
                // Deleted between the listing and the read.
                Ok(Read::Absent { .. } | Read::Unchanged { .. }) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok((valid, problems))
    })
}

fn validate(config: &Config) -> ExitCode {
    let (policies, mut problems) = match PolicySnapshot::load_dir(&config.policies) {
        Ok(policies) => (Some(policies), Vec::new()),
        Err(problems) => (None, problems),
    };
    // Snapshots are checked against the schema even when the policies fail,
    // so that one run lists every problem.
    let schema_only = policies.is_none().then(|| schema_only(config)).flatten();
    let mut tenants = 0;
    let mut licenses = None;
    let mut redis_unreachable = false;
    if let Some(against) = policies.as_ref().or(schema_only.as_ref()) {
        if let Some(settings) = &config.licenses {
            let scan = settings
                .settings(|| jiff::Timestamp::now().as_millisecond())
                .scan(against, &crate::license::set::LicenseMap::new());
            problems.extend(scan.key_problems.iter().cloned());
            problems.extend(
                scan.refused
                    .iter()
                    .map(crate::license::set::Refused::problem),
            );
            licenses = Some(scan.licenses.len());
        }
        match &config.redis {
            None if config.licenses.is_some() => {}
            None => {
                let (loaded, snapshot_problems) =
                    entitlements::load_tenant_dir(&config.entitlements, against, &TenantMap::new());
                tenants = loaded.len();
                problems.extend(snapshot_problems);
            }
            Some(settings) => match validate_redis(settings, against) {
                Ok((count, redis_problems)) => {
                    tenants = count;
                    problems.extend(redis_problems);
                }
                Err(error) => {
                    redis_unreachable = true;
                    problems.push(tollgate_engine::FileProblem::new("redis", None, error));
                }
            },
        }
    }
    for problem in &problems {
        println!("{problem}");
    }
    match (&policies, problems.is_empty()) {
        (Some(policies), true) => {
            let licenses = licenses
                .map(|count| format!(", {count} licenses"))
                .unwrap_or_default();
            println!(
                "ok: {} policies (policy_version {}), {tenants} tenant snapshots{licenses}",
                policies.policy_count(),
                policies.version,
            );
            ExitCode::SUCCESS
        }
        _ if redis_unreachable => {
            println!(
                "{} found",
                tollgate_engine::diagnostics::problems(problems.len())
            );
            ExitCode::from(3)
        }
        _ => {
            println!(
                "{} found",
                tollgate_engine::diagnostics::problems(problems.len())
            );
            ExitCode::from(1)
        }
    }
}

/// The policy directory's schema with no policies, when the schema itself loads.
fn schema_only(config: &Config) -> Option<PolicySnapshot> {
    let path = config.policies.join(tollgate_engine::SCHEMA_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    PolicySnapshot::from_sources(&path.display().to_string(), &text, &[]).ok()
}

fn check(args: &CheckArgs) -> ExitCode {
    let request = match build_request(args) {
        Ok(request) => request,
        Err(problem) => {
            eprintln!("error: {problem}");
            return ExitCode::from(2);
        }
    };
    let result = match (&args.server.remote, &args.server.http, &args.server.token) {
        (Some(address), _, token) => check_remote(address, token.as_deref(), request),
        (None, Some(url), token) => check_http(url, token.as_deref(), request),
        (None, None, Some(_)) => Err((
            2,
            "--token needs a server to verify it: --remote or --http".to_string(),
        )),
        (None, None, None) => check_local(&args.files, request),
    };
    match result {
        Ok(response) => {
            if args.json {
                println!("{}", response_json(&response));
            } else {
                print!("{}", response_text(&response));
            }
            if response.decision == pb::Decision::Allow as i32 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// `--context`: a JSON object of Cedar JSON values, as protobuf values;
/// with `now`, a `now` of the current time when it has none.
fn context_arg(
    text: &str,
    now: bool,
) -> Result<std::collections::HashMap<String, pb::Value>, String> {
    let context: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("--context: not JSON: {error}"))?;
    let serde_json::Value::Object(mut context) = context else {
        return Err("--context: must be a JSON object".to_string());
    };
    if now && !context.contains_key("now") {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        context.insert(
            "now".to_string(),
            serde_json::json!({"__extn": {"fn": "datetime", "arg": now}}),
        );
    }
    context
        .into_iter()
        .map(|(key, value)| {
            api::convert::json_to_value(&value)
                .map(|value| (key.clone(), value))
                .map_err(|problem| format!("--context: {key}: {problem}"))
        })
        .collect()
}

fn build_request(args: &CheckArgs) -> Result<pb::CheckRequest, String> {
    let context = context_arg(&args.context, false)?;
    Ok(pb::CheckRequest {
        what_if: args
            .what_if
            .iter()
            .map(|text| listing::parse_what_if(text))
            .collect::<Result<_, _>>()?,
        consume: None,
        max_staleness_ms: args.max_staleness_ms,
        tenant: args.tenant.clone(),
        principal: Some(parse_ref(&args.principal, None).map_err(|p| format!("--principal: {p}"))?),
        action: Some(
            parse_ref(&args.action, Some("Action")).map_err(|p| format!("--action: {p}"))?,
        ),
        resource: Some(parse_ref(&args.resource, None).map_err(|p| format!("--resource: {p}"))?),
        context,
        entities: Vec::new(),
        explain: args.explain,
    })
}

fn check_local(
    files: &FileArgs,
    request: pb::CheckRequest,
) -> Result<pb::CheckResponse, (u8, String)> {
    let service = local_service(files, &request.tenant)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|error| (3, error.to_string()))?;
    runtime
        .block_on(api::check(
            &service,
            &crate::decide::Caller::trusted("cli"),
            request,
        ))
        .map_err(|error| (2, error.to_string()))
}

/// A decision service over the configured files (or licenses), for one
/// command: problems with `tenant`'s snapshot are errors, others warnings.
fn local_service(files: &FileArgs, tenant: &str) -> Result<DecisionService, (u8, String)> {
    let config = config::load(&files.flags()).map_err(|errors| (2, errors.to_string()))?;
    // With licenses configured, the tenant comes from its license, judged by
    // this host's clock (as `serve` would without Redis).
    let licenses = config.licenses.as_ref().map(|licenses| {
        let settings = licenses.settings(|| jiff::Timestamp::now().as_millisecond());
        let source = crate::decide::LicenseSource {
            guard: Arc::clone(&settings.guard),
        };
        (settings, source)
    });
    let store = Arc::new(match &licenses {
        Some((settings, _)) => {
            Store::policies_only(config.policies.clone()).with_licenses(settings.clone())
        }
        None => Store::new(config.policies.clone(), config.entitlements.clone()),
    });
    if let ReloadOutcome::Rejected(problems) = store.reload_all() {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err((2, format!("policies do not load:\n{}", lines.join("\n"))));
    }
    let problems = store.reload_log().last_entitlement_problems;
    let tenant_file = format!("{tenant}.json");
    let (own, other): (Vec<_>, Vec<_>) = problems.iter().partition(|problem| {
        std::path::Path::new(&problem.file)
            .file_name()
            .is_some_and(|name| name == tenant_file.as_str())
    });
    for problem in other {
        eprintln!("warning: {problem}");
    }
    if !own.is_empty() {
        let lines: Vec<String> = own.iter().map(ToString::to_string).collect();
        return Err((
            2,
            format!("the tenant's snapshot does not load:\n{}", lines.join("\n")),
        ));
    }
    for problem in store.reload_log().last_license_report.problems() {
        eprintln!("warning: {problem}");
    }
    let mut service = DecisionService::new(store, config.options, config.limits);
    if let Some((_, source)) = licenses {
        service = service.with_licenses(source);
    }
    Ok(service)
}

/// Asks the HTTP front door at `url` (`POST /v1/check`).
fn check_http(
    url: &str,
    token: Option<&str>,
    request: pb::CheckRequest,
) -> Result<pb::CheckResponse, (u8, String)> {
    let runtime = runtime().map_err(|error| (3, error.to_string()))?;
    runtime.block_on(post_http(
        url,
        "/v1/check",
        token,
        &request,
        "a CheckResponse",
    ))
}

/// Posts `request` as JSON to the HTTP front door at `url` (`path`), with
/// the end user's `token`, and reads the answer as `what`; an error answer
/// as its exit code (2 for a bad request, else 3) and message.
async fn post_http<T: serde::de::DeserializeOwned>(
    url: &str,
    path: &str,
    token: Option<&str>,
    request: &impl serde::Serialize,
    what: &str,
) -> Result<T, (u8, String)> {
    let body = serde_json::to_vec(request).map_err(|error| (3, error.to_string()))?;
    let authorization = token.map(|token| format!("Bearer {token}"));
    let (status, answer) = crate::api::client::post_json(url, path, body, authorization.as_deref())
        .await
        .map_err(|error| (3, error))?;
    if status == 200 {
        return serde_json::from_slice(&answer).map_err(|error| {
            (
                3,
                format!("{url} answered something else than {what}: {error}"),
            )
        });
    }
    let error: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    let code = error["code"].as_str().unwrap_or("UNKNOWN");
    let exit = match code {
        "INVALID_ARGUMENT" | "RESOURCE_EXHAUSTED" | "OUT_OF_RANGE" => 2,
        _ => 3,
    };
    Err((
        exit,
        format!(
            "{code} (HTTP {status}): {}",
            error["message"].as_str().unwrap_or("(no message)")
        ),
    ))
}

/// A client of the server at `address`.
async fn grpc_client(
    address: &str,
) -> Result<
    pb::entitlement_service_client::EntitlementServiceClient<tonic::transport::Channel>,
    (u8, String),
> {
    let channel = crate::api::client::connect(address)
        .await
        .map_err(|error| {
            (
                3,
                format!(
                    "cannot connect to {address}: {}",
                    crate::api::client::connect_error(&error)
                ),
            )
        })?;
    Ok(pb::entitlement_service_client::EntitlementServiceClient::new(channel))
}

/// `message` as a gRPC request, with the end user's `token` as its bearer.
fn with_token<T>(message: T, token: Option<&str>) -> Result<tonic::Request<T>, (u8, String)> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| (2, "--token: not a valid header value".to_string()))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A refused gRPC call as an exit code (2 for a bad request, else 3) and
/// message.
fn grpc_failure(status: &tonic::Status) -> (u8, String) {
    let code = match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => {
            2
        }
        _ => 3,
    };
    (code, format!("{:?}: {}", status.code(), status.message()))
}

fn check_remote(
    address: &str,
    token: Option<&str>,
    request: pb::CheckRequest,
) -> Result<pb::CheckResponse, (u8, String)> {
    let runtime = runtime().map_err(|error| (3, error.to_string()))?;
    runtime.block_on(async {
        grpc_client(address)
            .await?
            .check(with_token(request, token)?)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| grpc_failure(&status))
    })
}

fn decision_name(decision: i32) -> &'static str {
    match pb::Decision::try_from(decision) {
        Ok(pb::Decision::Allow) => "ALLOW",
        Ok(pb::Decision::Deny) => "DENY",
        Ok(pb::Decision::Unspecified) | Err(_) => "UNSPECIFIED",
    }
}

fn effect_name(effect: i32) -> &'static str {
    match pb::Effect::try_from(effect) {
        Ok(pb::Effect::Permit) => "permit",
        Ok(pb::Effect::Forbid) => "forbid",
        Ok(pb::Effect::Unspecified) | Err(_) => "built-in",
    }
}

fn source_name(source: i32) -> &'static str {
    match pb::SnapshotSource::try_from(source) {
        Ok(pb::SnapshotSource::File) => "FILE",
        Ok(pb::SnapshotSource::Cache) => "CACHE",
        Ok(pb::SnapshotSource::Redis) => "REDIS",
        Ok(pb::SnapshotSource::Stale) => "STALE",
        Ok(pb::SnapshotSource::License) => "LICENSE",
        Ok(pb::SnapshotSource::Unspecified) | Err(_) => "NONE",
    }
}

/// The response for people.
pub fn response_text(response: &pb::CheckResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}", decision_name(response.decision));
    for reason in &response.reasons {
        let policy = if reason.policy_id.is_empty() {
            String::new()
        } else {
            format!(" [{} {}]", effect_name(reason.effect), reason.policy_id)
        };
        let _ = writeln!(out, "  reason: {}{policy}: {}", reason.code, reason.message);
    }
    for error in &response.errors {
        let _ = writeln!(out, "  error: {}: {}", error.policy_id, error.message);
    }
    if !response.explanation.is_empty() {
        let _ = writeln!(out, "  policies whose scope matched:");
    }
    for evaluation in &response.explanation {
        let outcome = match (evaluation.satisfied, evaluation.error.is_empty()) {
            (_, false) => format!("error: {}", evaluation.error),
            (true, true) if evaluation.effect == pb::Effect::Forbid as i32 => {
                format!(
                    "satisfied: blocks ({}: {})",
                    evaluation.code, evaluation.message
                )
            }
            (true, true) => format!("satisfied: grants ({})", evaluation.code),
            (false, true) => "not satisfied".to_string(),
        };
        let _ = writeln!(
            out,
            "    {} {}: {outcome}",
            effect_name(evaluation.effect),
            evaluation.policy_id
        );
    }
    if let Some(freshness) = &response.freshness {
        let _ = writeln!(
            out,
            "  policy_version {}, snapshot version {} ({}, {} ms old)",
            freshness.policy_version,
            freshness.snapshot_version,
            source_name(freshness.source),
            freshness.snapshot_age_ms
        );
        if let Some(license) = &freshness.license {
            let _ = writeln!(
                out,
                "  license {}: expires {}, grace until {}{}",
                license.license_id,
                crate::license::rfc3339(license.expires_at),
                crate::license::rfc3339(license.grace_ends_at),
                if license.in_grace {
                    " (IN GRACE: renew it)"
                } else {
                    ""
                }
            );
        }
    }
    if response.hypothetical {
        let _ = writeln!(
            out,
            "  HYPOTHETICAL: decided with --what-if; nothing was counted"
        );
    }
    let _ = writeln!(out, "  decision_id {}", response.decision_id);
    out
}

/// The response as JSON, with enum names spelled out.
pub fn response_json(response: &pb::CheckResponse) -> serde_json::Value {
    serde_json::json!({
        "decision": decision_name(response.decision),
        "reasons": response.reasons.iter().map(|reason| serde_json::json!({
            "policy_id": reason.policy_id,
            "effect": effect_name(reason.effect),
            "code": reason.code,
            "message": reason.message,
            "annotations": reason.annotations,
        })).collect::<Vec<_>>(),
        "errors": response.errors.iter().map(|error| serde_json::json!({
            "policy_id": error.policy_id,
            "message": error.message,
        })).collect::<Vec<_>>(),
        "freshness": response.freshness.as_ref().map(|f| serde_json::json!({
            "policy_version": f.policy_version,
            "snapshot_version": f.snapshot_version,
            "snapshot_age_ms": f.snapshot_age_ms,
            "source": source_name(f.source),
            "license": f.license.as_ref().map(|license| serde_json::json!({
                "license_id": license.license_id,
                "expires_at": license.expires_at,
                "grace_ends_at": license.grace_ends_at,
                "in_grace": license.in_grace,
            })),
        })),
        "decision_id": response.decision_id,
        "hypothetical": response.hypothetical,
        "explanation": response.explanation.iter().map(|evaluation| serde_json::json!({
            "policy_id": evaluation.policy_id,
            "effect": effect_name(evaluation.effect),
            "satisfied": evaluation.satisfied,
            "error": evaluation.error,
            "code": evaluation.code,
            "message": evaluation.message,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_help_and_readme_name_every_configuration_key() {
        use clap::CommandFactory;
        let mut command = Cli::command();
        let serve = command
            .find_subcommand_mut("serve")
            .expect("serve subcommand");
        let help = serve.render_long_help().to_string();
        let readme = include_str!("../../docs/configuration.md");
        for (key, _, _) in crate::config::KEYS {
            assert!(
                help.contains(key),
                "`tollgate serve --help` does not name `{key}`"
            );
            assert!(
                readme.contains(&format!("| `{key}` |")),
                "the configuration table of docs/configuration.md does not list `{key}`"
            );
        }
    }

    #[test]
    fn parses_entity_references() {
        let r = parse_ref("User:alice", None).unwrap();
        assert_eq!((r.r#type.as_str(), r.id.as_str()), ("User", "alice"));
        let r = parse_ref("Acme::User:alice", None).unwrap();
        assert_eq!((r.r#type.as_str(), r.id.as_str()), ("Acme::User", "alice"));
        let r = parse_ref(r#"Acme::User::"a:b""#, None).unwrap();
        assert_eq!((r.r#type.as_str(), r.id.as_str()), ("Acme::User", "a:b"));
        let r = parse_ref("use", Some("Action")).unwrap();
        assert_eq!((r.r#type.as_str(), r.id.as_str()), ("Action", "use"));
        assert!(parse_ref("alice", None).is_err());
    }
}
