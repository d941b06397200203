//! gRPC load generator for tollgate.
//!
//! Starts the real server in-process (`tollgate::app::serve_on` on
//! 127.0.0.1:0, serving the repository's `policies/` and `entitlements/`, on
//! its own tokio runtime) or connects to one already running (`--target`), then
//! drives it closed-loop with tonic clients: `--connections` HTTP/2
//! connections carrying `--in-flight` concurrent requests in total. Each
//! scenario is measured for `--duration` seconds in total, split evenly over
//! `--rounds` rounds; every round runs each scenario once (a slice), so slow
//! drift of the machine's throughput hits all scenarios alike:
//!
//! * `health`: `grpc.health.v1.Health/Check` on service `""`, the floor of an
//!   empty RPC through the same server stack;
//! * `check`: `EntitlementService/Check`, an ALLOW (acme's member `bob` uses
//!   `pdf-export` from BR);
//! * `batch`: `EntitlementService/CheckBatch` of `--batch-size` (10) such checks;
//! * `check_redis` (with `--redis`, or when listed in `--scenarios`): the same
//!   ALLOW `Check` against a second in-process server whose tenant snapshots
//!   come from Redis (a `redis-server` started on a free loopback port and
//!   loaded with `entitlements/*.json` through `tollgate::admin::put`); every
//!   measured answer must come from its in-process cache (`source: CACHE`).
//!
//! Prints, per scenario, throughput and latency percentiles pooled over all
//! rounds and the calls/s of each round; then the ratios (`Check` / health
//! throughput, `CheckBatch` / `Check` decisions per second, `check_redis` /
//! `Check` throughput) computed per round, as median, min and max over the
//! rounds, and pooled. `--json` prints the same as JSON.
//!
//! Run: `cargo bench --bench loadgen -- [OPTIONS]` (see `--help` and
//! `benches/README.md`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a broken setup should abort loudly"
)]

mod common;
#[path = "common/redis.rs"]
mod redis_server;

#[path = "common/grpc.rs"]
mod grpc;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use redis_server::RedisServer;
use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tollgate::store::redis_client::{RedisConn, RedisSettings};
use tollgate::store::Store;

/// Longest run accepted for `--duration`, `--warmup` and `--settle`, in seconds.
const MAX_SECONDS: f64 = 3600.0;
/// Most rounds accepted for `--rounds`.
const MAX_ROUNDS: usize = 1000;
/// Shortest measured slice (`--duration` / `--rounds`) accepted, in seconds.
const MIN_SLICE_SECONDS: f64 = 0.1;
/// Deadline of one RPC: bounds every call, so a stuck server cannot hang the run.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the server to report SERVING.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `cache_ttl_ms` of the Redis-sourced server: long enough that no measured
/// call is a TTL re-read (the default, 5 minutes, is shorter than a long run).
const REDIS_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Thread name prefixes (Linux truncates names to 15 bytes).
const SERVER_THREADS: &str = "tg-server";
const CLIENT_THREADS: &str = "tg-client";

/// gRPC load generator for tollgate: empty-RPC floor (health), Check and CheckBatch.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// Drive a server already running at ADDR (a loopback address such as
    /// 127.0.0.1:50051, serving this repository's example policies and
    /// entitlements) instead of starting one in-process.
    #[arg(long, value_name = "ADDR")]
    target: Option<SocketAddr>,
    /// HTTP/2 connections (each one a tonic Channel).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight in total, spread over the connections (closed loop).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Measured seconds per scenario in total, split evenly over the rounds
    /// [default: 10; 0.5 in test mode].
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Rounds: each runs every scenario once for --duration / --rounds
    /// seconds, in the order given in odd rounds and reversed in even ones
    /// [default: 5; 1 in test mode and with --quick].
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Warm-up seconds before each scenario's slice in the first round, not
    /// measured [default: 1; 0.2 in test mode].
    #[arg(long, value_name = "SECONDS")]
    warmup: Option<f64>,
    /// Settle seconds before each scenario's slice in the later rounds, not
    /// measured.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.2)]
    settle: f64,
    /// Short smoke run: 2 s per scenario after a 0.5 s warm-up, in 1 round
    /// unless --rounds says otherwise (overrides --duration and --warmup).
    #[arg(long)]
    quick: bool,
    /// Tokio worker threads of the in-process server [default: number of CPUs].
    #[arg(long, value_name = "N")]
    server_threads: Option<usize>,
    /// Tokio worker threads of the client [default: number of CPUs].
    #[arg(long, value_name = "N")]
    client_threads: Option<usize>,
    /// Checks in one CheckBatch.
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// Scenarios to run, in order. `check_redis` starts a redis-server and a
    /// second, Redis-sourced in-process server.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "health,check,batch"
    )]
    scenarios: Vec<Scenario>,
    /// Also run `check_redis` (inserted after `check`): the ALLOW Check
    /// against a server reading tenant snapshots from Redis, answered from
    /// its in-process cache. Needs redis-server (or $REDIS_SERVER).
    #[arg(long)]
    redis: bool,
    /// Print the results as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`. Without it (`cargo test --benches` or
    /// `--all-targets`, or the binary run by hand) the load generator runs in
    /// test mode, as criterion does: a short smoke run unless --duration,
    /// --warmup, --rounds or --quick say otherwise.
    #[arg(long, hide = true)]
    bench: bool,
    /// Benchmark name filters passed by `cargo bench -- FILTER`: when any is
    /// given and none is a part of "loadgen", the load generator does not run.
    #[arg(hide = true)]
    filters: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// grpc.health.v1.Health/Check on service "".
    Health,
    /// EntitlementService/Check (ALLOW).
    Check,
    /// EntitlementService/CheckBatch of --batch-size ALLOW checks.
    Batch,
    /// EntitlementService/Check (ALLOW) on the Redis-sourced server, from its cache.
    #[value(name = "check_redis")]
    CheckRedis,
    /// EntitlementService/Check consuming 1 unit of a meter (exact mode: each
    /// consumption counted in Redis), Redis-sourced server.
    Consume,
    /// The same with the meter in lease mode (blocks of 1,000 units).
    #[value(name = "consume_lease")]
    ConsumeLease,
    /// EntitlementService/Check (ALLOW) over the file-sourced server's Unix
    /// domain socket.
    #[value(name = "check_unix")]
    CheckUnix,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::Check => "check",
            Scenario::Batch => "batch",
            Scenario::CheckRedis => "check_redis",
            Scenario::Consume => "consume",
            Scenario::ConsumeLease => "consume_lease",
            Scenario::CheckUnix => "check_unix",
        }
    }

    fn rpc(self) -> &'static str {
        match self {
            Scenario::Health => "grpc.health.v1.Health/Check",
            Scenario::Check => "tollgate.v1.EntitlementService/Check",
            Scenario::Batch => "tollgate.v1.EntitlementService/CheckBatch",
            Scenario::CheckRedis => "tollgate.v1.EntitlementService/Check (Redis source)",
            Scenario::Consume => "tollgate.v1.EntitlementService/Check + consume (exact)",
            Scenario::ConsumeLease => "tollgate.v1.EntitlementService/Check + consume (lease)",
            Scenario::CheckUnix => "tollgate.v1.EntitlementService/Check (Unix socket)",
        }
    }

    /// Runs against the Redis-sourced server.
    fn on_redis(self) -> bool {
        matches!(
            self,
            Scenario::CheckRedis | Scenario::Consume | Scenario::ConsumeLease
        )
    }
}

/// Settings after defaults and validation.
#[derive(Debug, Clone)]
struct Settings {
    connections: usize,
    in_flight: usize,
    /// Measured time per scenario in total.
    duration: Duration,
    /// Measured time per scenario per round: `--duration` / `--rounds`.
    slice: Duration,
    rounds: usize,
    warmup: Duration,
    settle: Duration,
    server_threads: usize,
    client_threads: usize,
    batch_size: usize,
    scenarios: Vec<Scenario>,
    /// `check_redis` is among the scenarios: start redis-server and the
    /// Redis-sourced server.
    redis: bool,
}

fn settings(args: &Args) -> Result<Settings, String> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let (duration, warmup) = match (args.quick, args.bench) {
        (true, _) => (2.0, 0.5),
        (false, true) => (args.duration.unwrap_or(10.0), args.warmup.unwrap_or(1.0)),
        (false, false) => (args.duration.unwrap_or(0.5), args.warmup.unwrap_or(0.2)),
    };
    let full_run = args.bench && !args.quick;
    let rounds = args.rounds.unwrap_or(if full_run { 5 } else { 1 });
    if !(duration > 0.0 && duration <= MAX_SECONDS) {
        return Err(format!("--duration must be in (0, {MAX_SECONDS}] seconds"));
    }
    if !(0.0..=MAX_SECONDS).contains(&warmup) {
        return Err(format!("--warmup must be in [0, {MAX_SECONDS}] seconds"));
    }
    if !(0.0..=MAX_SECONDS).contains(&args.settle) {
        return Err(format!("--settle must be in [0, {MAX_SECONDS}] seconds"));
    }
    if !(1..=MAX_ROUNDS).contains(&rounds) {
        return Err(format!("--rounds must be in [1, {MAX_ROUNDS}]"));
    }
    let slice = duration / rounds as f64;
    if slice < MIN_SLICE_SECONDS {
        return Err(format!(
            "--duration / --rounds is {slice:.3} s: each round needs at least {MIN_SLICE_SECONDS} s per scenario"
        ));
    }
    if args.connections == 0 || args.in_flight == 0 {
        return Err("--connections and --in-flight must be at least 1".to_string());
    }
    if args.connections > args.in_flight {
        return Err(format!(
            "--connections ({}) exceeds --in-flight ({}): some connections would carry nothing",
            args.connections, args.in_flight
        ));
    }
    if args.batch_size == 0 {
        return Err("--batch-size must be at least 1".to_string());
    }
    if let Some(target) = args.target {
        if !target.ip().is_loopback() {
            return Err(format!(
                "--target {target}: only loopback addresses (127.0.0.1) may be targeted"
            ));
        }
        if args.server_threads.is_some() {
            return Err(
                "--server-threads applies to the in-process server, not to --target".to_string(),
            );
        }
    }
    let threads = |value: Option<usize>, flag: &str| match value {
        Some(0) => Err(format!("{flag} must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(cpus),
    };
    let mut scenarios = Vec::new();
    for scenario in &args.scenarios {
        if !scenarios.contains(scenario) {
            scenarios.push(*scenario);
        }
    }
    if args.redis && !scenarios.contains(&Scenario::CheckRedis) {
        let at = scenarios
            .iter()
            .position(|s| *s == Scenario::Check)
            .map_or(scenarios.len(), |index| index + 1);
        scenarios.insert(at, Scenario::CheckRedis);
    }
    let redis = scenarios.iter().any(|s| s.on_redis());
    if (redis || scenarios.contains(&Scenario::CheckUnix)) && args.target.is_some() {
        return Err(
            "check_redis, consume, consume_lease and check_unix need the in-process servers; they cannot run with --target"
                .to_string(),
        );
    }
    Ok(Settings {
        connections: args.connections,
        in_flight: args.in_flight,
        duration: Duration::from_secs_f64(duration),
        slice: Duration::from_secs_f64(slice),
        rounds,
        warmup: Duration::from_secs_f64(warmup),
        settle: Duration::from_secs_f64(args.settle),
        server_threads: threads(args.server_threads, "--server-threads")?,
        client_threads: threads(args.client_threads, "--client-threads")?,
        batch_size: args.batch_size,
        scenarios,
        redis,
    })
}

// ---------------------------------------------------------------------------
// Requests

/// The ALLOW request: acme's member `bob` uses `pdf-export` (acme is on pro,
/// `pdf-export` needs pro) from BR.
fn allow_request() -> pb::CheckRequest {
    common::use_request("acme", "bob", "pdf-export")
}

/// One client issuing one kind of call; checks every answer.
enum Driver {
    Health(HealthClient<Channel>),
    Check(EntitlementServiceClient<Channel>, Box<pb::CheckRequest>),
    Batch(EntitlementServiceClient<Channel>, pb::CheckBatchRequest),
    /// A Check whose answer must also come from the Redis source's cache.
    CheckRedis(EntitlementServiceClient<Channel>, Box<pb::CheckRequest>),
    /// A consuming Check; every call has an idempotency key of its own.
    Consume(
        EntitlementServiceClient<Channel>,
        Box<pb::CheckRequest>,
        u64,
    ),
}

/// Tenants written for the consume scenarios: acme with `api-calls` limited
/// to 10^15 a month, exact and in lease mode (blocks of 1,000).
const METER_EXACT_TENANT: &str = "meter-exact";
const METER_LEASE_TENANT: &str = "meter-lease";

/// Distinguishes the idempotency keys of drivers (and of runs: a fresh
/// redis-server per run).
static DRIVERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn consume_request(tenant: &str) -> pb::CheckRequest {
    let mut request = common::use_request(tenant, "bob", "api");
    request.consume = Some(pb::Consume {
        meter: "api-calls".to_string(),
        amount: 1,
        idempotency_key: String::new(),
    });
    request
}

/// The `freshness.source` of an answer, by name.
fn source_name(response: &pb::CheckResponse) -> &'static str {
    match response
        .freshness
        .as_ref()
        .and_then(|f| pb::SnapshotSource::try_from(f.source).ok())
    {
        Some(pb::SnapshotSource::File) => "FILE",
        Some(pb::SnapshotSource::Cache) => "CACHE",
        Some(pb::SnapshotSource::Redis) => "REDIS",
        Some(pb::SnapshotSource::Stale) => "STALE",
        Some(pb::SnapshotSource::Unspecified) => "UNSPECIFIED",
        None => "none",
    }
}

impl Driver {
    fn new(scenario: Scenario, channel: Channel, batch_size: usize) -> Self {
        match scenario {
            Scenario::Health => Driver::Health(HealthClient::new(channel)),
            Scenario::Check => Driver::Check(
                EntitlementServiceClient::new(channel),
                Box::new(allow_request()),
            ),
            Scenario::Batch => Driver::Batch(
                EntitlementServiceClient::new(channel),
                pb::CheckBatchRequest {
                    checks: vec![allow_request(); batch_size],
                },
            ),
            Scenario::CheckRedis => Driver::CheckRedis(
                EntitlementServiceClient::new(channel),
                Box::new(allow_request()),
            ),
            Scenario::CheckUnix => Driver::Check(
                EntitlementServiceClient::new(channel),
                Box::new(allow_request()),
            ),
            Scenario::Consume | Scenario::ConsumeLease => Driver::Consume(
                EntitlementServiceClient::new(channel),
                Box::new(consume_request(if scenario == Scenario::Consume {
                    METER_EXACT_TENANT
                } else {
                    METER_LEASE_TENANT
                })),
                DRIVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 32,
            ),
        }
    }

    /// Makes one call; `Err` describes a failed call or an unexpected answer.
    async fn call(&mut self) -> Result<(), String> {
        let status = |status: tonic::Status| format!("{:?}: {}", status.code(), status.message());
        let allowed = |response: &pb::CheckResponse| {
            if response.decision == pb::Decision::Allow as i32 {
                Ok(())
            } else {
                Err(format!("expected ALLOW, got {response:?}"))
            }
        };
        match self {
            Driver::Health(client) => {
                let response = client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                if response.status == ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    Err(format!("health status {}", response.status))
                }
            }
            Driver::Check(client, request) => {
                let response = client
                    .check(pb::CheckRequest::clone(request))
                    .await
                    .map_err(status)?;
                allowed(response.get_ref())
            }
            Driver::Batch(client, request) => {
                let response = client.check_batch(request.clone()).await.map_err(status)?;
                let responses = &response.get_ref().responses;
                if responses.len() != request.checks.len() {
                    return Err(format!(
                        "{} responses to {} checks",
                        responses.len(),
                        request.checks.len()
                    ));
                }
                responses.iter().try_for_each(allowed)
            }
            Driver::Consume(client, request, next) => {
                let mut call = pb::CheckRequest::clone(request);
                if let Some(consume) = call.consume.as_mut() {
                    consume.idempotency_key = format!("{next:x}");
                }
                *next += 1;
                let response = client.check(call).await.map_err(status)?;
                let response = response.get_ref();
                allowed(response)?;
                match &response.usage {
                    Some(usage) if usage.used > 0 => Ok(()),
                    _ => Err(format!("a consumption without usage: {response:?}")),
                }
            }
            Driver::CheckRedis(client, request) => {
                let response = client
                    .check(pb::CheckRequest::clone(request))
                    .await
                    .map_err(status)?;
                let response = response.get_ref();
                allowed(response)?;
                match source_name(response) {
                    "CACHE" => Ok(()),
                    other => Err(format!(
                        "expected an answer from the cache (source CACHE), got source {other}: {response:?}"
                    )),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The in-process server

type ServeTask = tokio::task::JoinHandle<Result<(), tollgate::app::ServeError>>;

/// The in-process server(s), all on one tokio runtime: the file-sourced one
/// and, for `check_redis`, a Redis-sourced one with its redis-server.
struct InProcessServer {
    runtime: Runtime,
    /// The file-sourced server.
    address: SocketAddr,
    /// The Redis-sourced server, with `check_redis`.
    redis: Option<RedisSide>,
    /// The file-sourced server's Unix socket, with `check_unix`, in its tempdir.
    unix: Option<(tempfile::TempDir, std::path::PathBuf)>,
    /// Stop signal and task of every server.
    servers: Vec<(oneshot::Sender<()>, ServeTask)>,
}

/// The Redis-sourced server and the redis-server it reads.
struct RedisSide {
    address: SocketAddr,
    redis: RedisServer,
    /// Snapshots written into Redis.
    tenants: Vec<String>,
}

/// Listens on 127.0.0.1:0 as `tokio::net::TcpListener::bind` does.
fn listen() -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    socket.listen(1024)
}

/// The configuration both in-process servers share: the repository's
/// `policies/` and `entitlements/`, everything else at its default.
fn base_config(address: SocketAddr) -> tollgate::config::Config {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config =
        tollgate::config::Config::with_dirs(root.join("policies"), root.join("entitlements"));
    config.listen = address;
    config.shutdown_grace = Duration::from_secs(1);
    config
}

/// Writes every `entitlements/*.json` into Redis with `tollgate::admin::put`
/// (validated against `policies/`, as `tollgate snapshot put` does).
async fn load_redis(settings: &RedisSettings) -> Result<Vec<String>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = Store::policies_only(root.join("policies"));
    let outcome = store.reload_all();
    let catalog = store
        .catalog()
        .ok_or_else(|| format!("cannot load policies/: {outcome:?}"))?;
    let conn = RedisConn::connect(settings)
        .await
        .map_err(|error| format!("cannot connect to redis: {error}"))?;
    let mut files: Vec<_> = std::fs::read_dir(root.join("entitlements"))
        .map_err(|error| format!("cannot read entitlements/: {error}"))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    let mut tenants = Vec::new();
    for file in files {
        let document = std::fs::read_to_string(&file)
            .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
        let written = tollgate::admin::put(&conn, &catalog.policies, &document)
            .await
            .map_err(|error| format!("cannot put {} into redis: {error}", file.display()))?;
        tenants.push(written.tenant);
    }
    if !tenants.iter().any(|tenant| tenant == "acme") {
        return Err("entitlements/ has no acme.json".to_string());
    }
    // The consume scenarios' tenants: acme with a limit no run reaches.
    let acme = std::fs::read_to_string(root.join("entitlements/acme.json"))
        .map_err(|error| format!("cannot read acme.json: {error}"))?;
    for (tenant, lease) in [
        (METER_EXACT_TENANT, None),
        (METER_LEASE_TENANT, Some(1_000)),
    ] {
        let mut document: serde_json::Value =
            serde_json::from_str(&acme).map_err(|error| format!("acme.json: {error}"))?;
        document["tenant"] = tenant.into();
        for entity in document["entities"].as_array_mut().into_iter().flatten() {
            if entity["uid"]["type"] == "Meter" && entity["uid"]["id"] == "api-calls" {
                entity["attrs"]["limit"] = 1_000_000_000_000_000_i64.into();
                if let Some(block) = lease {
                    entity["attrs"]["lease"] = block.into();
                }
            }
        }
        let written = tollgate::admin::put(&conn, &catalog.policies, &document.to_string())
            .await
            .map_err(|error| format!("cannot put {tenant} into redis: {error}"))?;
        tenants.push(written.tenant);
    }
    Ok(tenants)
}

impl InProcessServer {
    fn start(threads: usize, with_redis: bool, with_unix: bool) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(SERVER_THREADS)
            .enable_all()
            .build()
            .map_err(|error| format!("cannot build the server runtime: {error}"))?;
        let mut server = Self {
            runtime,
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            redis: None,
            unix: None,
            servers: Vec::new(),
        };
        if with_unix {
            let dir =
                tempfile::tempdir().map_err(|error| format!("cannot make a tempdir: {error}"))?;
            let socket = dir.path().join("tollgate.sock");
            server.unix = Some((dir, socket));
        }
        server.address = server.spawn(None)?;
        if with_redis {
            let redis = RedisServer::start()?;
            let settings = redis.settings();
            let tenants = server.runtime.block_on(load_redis(&settings))?;
            let address = server.spawn(Some(settings))?;
            server.redis = Some(RedisSide {
                address,
                redis,
                tenants,
            });
        }
        Ok(server)
    }

    /// Starts one server on the runtime: file-sourced, or with `redis`
    /// Redis-sourced (cache TTL raised to [`REDIS_CACHE_TTL`]).
    fn spawn(&mut self, redis: Option<RedisSettings>) -> Result<SocketAddr, String> {
        let listener = self
            .runtime
            .block_on(async { listen() })
            .map_err(|error| format!("cannot listen on 127.0.0.1:0: {error}"))?;
        let address = listener
            .local_addr()
            .map_err(|error| format!("no local address: {error}"))?;
        let mut config = base_config(address);
        if redis.is_some() {
            config.redis = redis;
            config.cache.ttl = REDIS_CACHE_TTL;
        } else {
            config.listen_unix = self.unix.as_ref().map(|(_, socket)| socket.clone());
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = self
            .runtime
            .spawn(tollgate::app::serve_on(config, listener, async move {
                let _ = stopped.await;
            }));
        self.servers.push((stop, task));
        Ok(address)
    }

    fn shut_down(self) {
        for (stop, task) in self.servers {
            let _ = stop.send(());
            let outcome = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
            match outcome {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => eprintln!("loadgen: server stopped with an error: {error}"),
                Ok(Err(error)) => eprintln!("loadgen: server task failed: {error}"),
                Err(_) => eprintln!("loadgen: server did not stop within 5 s"),
            }
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
        // The redis-server (if any) is stopped last, once nothing reads it.
        drop(self.redis);
    }
}

// ---------------------------------------------------------------------------
// Measurement

/// CPU time (ns) consumed so far by the live threads whose name starts with
/// each prefix, from `/proc/self/task/*/schedstat`. `None` where unavailable.
fn thread_cpu_ns(prefixes: &[&str]) -> Option<Vec<u64>> {
    let mut totals = vec![0u64; prefixes.len()];
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(task) = task else { continue };
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        let Some(index) = prefixes.iter().position(|p| name.trim_end().starts_with(p)) else {
            continue;
        };
        let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = schedstat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        {
            totals[index] += ns;
        }
    }
    Some(totals)
}

#[derive(Default)]
struct WorkerResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Calls back to back until `end`; records the calls that started at or after
/// `measure_from` and completed by `end`.
async fn worker(mut driver: Driver, measure_from: Instant, end: Instant) -> WorkerResult {
    let mut result = WorkerResult::default();
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let outcome = driver.call().await;
        let finished = Instant::now();
        if started < measure_from || finished > end {
            continue;
        }
        match outcome {
            Ok(()) => result
                .latencies_ns
                .push(u64::try_from((finished - started).as_nanos()).unwrap_or(u64::MAX)),
            Err(error) => {
                result.errors += 1;
                result.first_error.get_or_insert(error);
            }
        }
    }
    result
}

struct Latency {
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// Percentiles (nearest rank) in microseconds of sorted nanosecond latencies.
fn latency(sorted_ns: &[u64]) -> Option<Latency> {
    let last = *sorted_ns.last()?;
    let us = |ns: u64| ns as f64 / 1_000.0;
    let at = |q: f64| {
        let rank = (q * sorted_ns.len() as f64).ceil() as usize;
        us(sorted_ns[rank.clamp(1, sorted_ns.len()) - 1])
    };
    let total: u128 = sorted_ns.iter().map(|&ns| u128::from(ns)).sum();
    Some(Latency {
        mean: total as f64 / sorted_ns.len() as f64 / 1_000.0,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: us(last),
    })
}

/// One scenario's measured slice of one round.
struct Slice {
    /// Latencies of the successful calls, unsorted.
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    measured: Duration,
    /// CPU seconds of the server's and of the client's threads while measuring.
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
}

/// What one round measured of one scenario.
struct Round {
    calls: u64,
    errors: u64,
    seconds: f64,
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
}

impl Round {
    fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
}

/// One scenario over all rounds: calls, errors, latencies and CPU pooled, and
/// each round's figures in `rounds` (in round order).
struct Outcome {
    scenario: Scenario,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    /// Measured seconds in total (all rounds).
    seconds: f64,
    decisions_per_call: usize,
    latency: Option<Latency>,
    /// CPU seconds of the server's and of the client's threads while measuring.
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    rounds: Vec<Round>,
}

impl Outcome {
    fn pool(scenario: Scenario, slices: Vec<Slice>, settings: &Settings) -> Self {
        let rounds: Vec<Round> = slices
            .iter()
            .map(|slice| Round {
                calls: slice.latencies_ns.len() as u64,
                errors: slice.errors,
                seconds: slice.measured.as_secs_f64(),
                server_cpu: slice.server_cpu,
                client_cpu: slice.client_cpu,
            })
            .collect();
        let measured: Duration = slices.iter().map(|slice| slice.measured).sum();
        let mut latencies = Vec::with_capacity(rounds.iter().map(|r| r.calls as usize).sum());
        let mut first_error = None;
        for slice in slices {
            latencies.extend(slice.latencies_ns);
            if first_error.is_none() {
                first_error = slice.first_error;
            }
        }
        latencies.sort_unstable();
        Outcome {
            scenario,
            calls: latencies.len() as u64,
            errors: rounds.iter().map(|r| r.errors).sum(),
            first_error,
            seconds: measured.as_secs_f64(),
            decisions_per_call: match scenario {
                Scenario::Health => 0,
                Scenario::Check
                | Scenario::CheckRedis
                | Scenario::Consume
                | Scenario::ConsumeLease
                | Scenario::CheckUnix => 1,
                Scenario::Batch => settings.batch_size,
            },
            latency: latency(&latencies),
            // `None` unless every round could read the CPU times.
            server_cpu: rounds.iter().map(|r| r.server_cpu).sum(),
            client_cpu: rounds.iter().map(|r| r.client_cpu).sum(),
            rounds,
        }
    }

    fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.seconds
    }

    fn decisions_per_sec(&self) -> f64 {
        self.calls_per_sec() * self.decisions_per_call as f64
    }

    /// CPU microseconds per successful call.
    fn cpu_us_per_call(&self, cpu: Option<f64>) -> Option<f64> {
        cpu.filter(|_| self.calls > 0)
            .map(|seconds| seconds * 1e6 / self.calls as f64)
    }

    fn round_calls_per_sec(&self) -> Vec<f64> {
        self.rounds.iter().map(Round::calls_per_sec).collect()
    }

    /// Table name: `batch` carries its batch size.
    fn label(&self) -> String {
        match self.scenario {
            Scenario::Batch => format!("batch{}", self.decisions_per_call),
            other => other.name().to_string(),
        }
    }
}

/// Waits for the server on `channel` to report SERVING.
async fn wait_serving(channel: &Channel) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut health = Driver::new(Scenario::Health, channel.clone(), 1);
    loop {
        match health.call().await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(format!(
                    "server not SERVING after {} s: {error}",
                    READY_TIMEOUT.as_secs()
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits for the server(s) to report SERVING, then checks one call of each
/// scenario. For `check_redis`, the first Check (which reads acme from Redis)
/// must be an ALLOW, and the next ones ALLOWs from the cache.
async fn preflight(
    channel: &Channel,
    redis_channel: Option<&Channel>,
    unix_channel: Option<&Channel>,
    settings: &Settings,
) -> Result<(), String> {
    wait_serving(channel).await?;
    for scenario in &settings.scenarios {
        let channel = match (scenario, redis_channel) {
            (Scenario::Consume | Scenario::ConsumeLease, Some(redis)) => redis,
            (Scenario::CheckUnix, _) => unix_channel.ok_or("check_unix without a Unix socket")?,
            (Scenario::CheckRedis, Some(redis)) => {
                wait_serving(redis).await?;
                let first = EntitlementServiceClient::new(redis.clone())
                    .check(allow_request())
                    .await
                    .map_err(|status| {
                        format!(
                            "{}: first call: {:?}: {}",
                            scenario.rpc(),
                            status.code(),
                            status.message()
                        )
                    })?
                    .into_inner();
                if first.decision != pb::Decision::Allow as i32
                    || !matches!(source_name(&first), "REDIS" | "CACHE")
                {
                    return Err(format!(
                        "{}: first call: expected ALLOW read from Redis, got {first:?}",
                        scenario.rpc()
                    ));
                }
                redis
            }
            (Scenario::CheckRedis | Scenario::Consume | Scenario::ConsumeLease, None) => {
                return Err(format!(
                    "{} without a Redis-sourced server",
                    scenario.name()
                ))
            }
            _ => channel,
        };
        // Three calls: a check_redis answer not from the cache fails here.
        let mut driver = Driver::new(*scenario, channel.clone(), settings.batch_size);
        for _ in 0..3 {
            driver
                .call()
                .await
                .map_err(|error| format!("{}: {error}", scenario.rpc()))?;
        }
    }
    Ok(())
}

/// Runs `scenario` for `lead_in` (not measured) and then `measured`.
async fn run_slice(
    scenario: Scenario,
    channels: &Channels,
    settings: &Settings,
    in_process: bool,
    lead_in: Duration,
    measured: Duration,
) -> Slice {
    let start = Instant::now();
    let measure_from = start + lead_in;
    let end = measure_from + measured;
    let channels = match scenario {
        Scenario::CheckRedis | Scenario::Consume | Scenario::ConsumeLease => &channels.redis,
        Scenario::CheckUnix => &channels.unix,
        _ => &channels.main,
    };
    let workers: Vec<_> = (0..settings.in_flight)
        .map(|index| {
            let channel = channels[index % channels.len()].clone();
            let driver = Driver::new(scenario, channel, settings.batch_size);
            tokio::spawn(worker(driver, measure_from, end))
        })
        .collect();

    let prefixes: &[&str] = if in_process {
        &[SERVER_THREADS, CLIENT_THREADS]
    } else {
        &[CLIENT_THREADS]
    };
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = thread_cpu_ns(prefixes);
    tokio::time::sleep_until(end.into()).await;
    let cpu_after = thread_cpu_ns(prefixes);
    let cpu: Option<Vec<f64>> = cpu_before.zip(cpu_after).map(|(before, after)| {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.saturating_sub(*b) as f64 / 1e9)
            .collect()
    });

    let mut latencies_ns = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for handle in workers {
        // Calls carry a deadline, so workers end within RPC_TIMEOUT of `end`.
        match tokio::time::timeout(RPC_TIMEOUT * 2, handle).await {
            Ok(Ok(result)) => {
                latencies_ns.extend(result.latencies_ns);
                errors += result.errors;
                if first_error.is_none() {
                    first_error = result.first_error;
                }
            }
            Ok(Err(error)) => {
                errors += 1;
                first_error.get_or_insert(format!("worker failed: {error}"));
            }
            Err(_) => {
                errors += 1;
                first_error.get_or_insert("worker did not finish".to_string());
            }
        }
    }
    let (server_cpu, client_cpu) = match (&cpu, in_process) {
        (Some(cpu), true) => (Some(cpu[0]), Some(cpu[1])),
        (Some(cpu), false) => (None, Some(cpu[0])),
        (None, _) => (None, None),
    };
    Slice {
        latencies_ns,
        errors,
        first_error,
        measured,
        server_cpu,
        client_cpu,
    }
}

/// The scenarios' indices in the order round `round` (from 0) runs them:
/// as given in even rounds, reversed in odd ones, so that a drift within a
/// round does not always favour the same scenario.
fn round_order(round: usize, scenarios: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..scenarios).collect()
    } else {
        (0..scenarios).rev().collect()
    }
}

/// The client's connections: `--connections` to the (file-sourced or
/// external) server, and as many to the Redis-sourced one for `check_redis`.
struct Channels {
    main: Vec<Channel>,
    redis: Vec<Channel>,
    unix: Vec<Channel>,
}

async fn drive(
    address: SocketAddr,
    redis_address: Option<SocketAddr>,
    unix_socket: Option<&Path>,
    settings: &Settings,
    in_process: bool,
) -> Result<Vec<Outcome>, String> {
    let mut channels = Channels {
        main: Vec::with_capacity(settings.connections),
        redis: Vec::new(),
        unix: Vec::new(),
    };
    for _ in 0..settings.connections {
        channels
            .main
            .push(grpc::connect(address, RPC_TIMEOUT).await?);
        if let Some(redis_address) = redis_address {
            channels
                .redis
                .push(grpc::connect(redis_address, RPC_TIMEOUT).await?);
        }
        if let Some(socket) = unix_socket {
            let address = format!("unix:{}", socket.display());
            channels.unix.push(
                tollgate::api::client::connect(&address)
                    .await
                    .map_err(|error| format!("cannot connect to {address}: {error}"))?,
            );
        }
    }
    preflight(
        &channels.main[0],
        channels.redis.first(),
        channels.unix.first(),
        settings,
    )
    .await?;
    // slices[scenario index][round]
    let mut slices: Vec<Vec<Slice>> = settings
        .scenarios
        .iter()
        .map(|_| Vec::with_capacity(settings.rounds))
        .collect();
    for round in 0..settings.rounds {
        let (lead_in, lead_in_name) = if round == 0 {
            (settings.warmup, "warm-up")
        } else {
            (settings.settle, "settle")
        };
        for index in round_order(round, settings.scenarios.len()) {
            let scenario = settings.scenarios[index];
            eprintln!(
                "loadgen: round {}/{}: {} ({}) for {:.2} s (+{:.1} s {lead_in_name})...",
                round + 1,
                settings.rounds,
                scenario.name(),
                scenario.rpc(),
                settings.slice.as_secs_f64(),
                lead_in.as_secs_f64()
            );
            let slice = run_slice(
                scenario,
                &channels,
                settings,
                in_process,
                lead_in,
                settings.slice,
            )
            .await;
            slices[index].push(slice);
        }
    }
    Ok(settings
        .scenarios
        .iter()
        .zip(slices)
        .map(|(scenario, slices)| Outcome::pool(*scenario, slices, settings))
        .collect())
}

// ---------------------------------------------------------------------------
// Reporting

/// Median (of an even count: the mean of the two middle values), min and max.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    let (min, max) = (*sorted.first()?, *sorted.last()?);
    let middle = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    };
    Some(Spread { median, min, max })
}

/// The ratio of two scenarios' throughputs, per round (`None` for a round in
/// which the denominator made no call) and pooled over all rounds.
struct Ratio {
    per_round: Vec<Option<f64>>,
    pooled: Option<f64>,
}

impl Ratio {
    fn spread(&self) -> Option<Spread> {
        spread(self.per_round.iter().flatten().copied())
    }
}

/// `numerator` / `denominator` calls per second or, with `per_decision`,
/// decisions per second.
fn ratio(
    outcomes: &[Outcome],
    numerator: Scenario,
    denominator: Scenario,
    per_decision: bool,
) -> Option<Ratio> {
    let find = |scenario| outcomes.iter().find(|o| o.scenario == scenario);
    let (n, d) = (find(numerator)?, find(denominator)?);
    let weight = |o: &Outcome| {
        if per_decision {
            o.decisions_per_call as f64
        } else {
            1.0
        }
    };
    let divide = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    Some(Ratio {
        per_round: n
            .rounds
            .iter()
            .zip(&d.rounds)
            .map(|(rn, rd)| {
                divide(
                    rn.calls_per_sec() * weight(n),
                    rd.calls_per_sec() * weight(d),
                )
            })
            .collect(),
        pooled: divide(n.calls_per_sec() * weight(n), d.calls_per_sec() * weight(d)),
    })
}

/// Check / health calls per second.
fn check_over_health(outcomes: &[Outcome]) -> Option<Ratio> {
    ratio(outcomes, Scenario::Check, Scenario::Health, false)
}

/// CheckBatch / Check decisions per second.
fn batch_over_check(outcomes: &[Outcome]) -> Option<Ratio> {
    ratio(outcomes, Scenario::Batch, Scenario::Check, true)
}

/// check_redis / check calls per second: the Redis source's cache hit
/// against the file source.
fn redis_over_check(outcomes: &[Outcome]) -> Option<Ratio> {
    ratio(outcomes, Scenario::CheckRedis, Scenario::Check, false)
}

/// consume / check_redis and consume_lease / check_redis calls per second.
fn consume_over_check(outcomes: &[Outcome], scenario: Scenario) -> Option<Ratio> {
    ratio(outcomes, scenario, Scenario::CheckRedis, false)
}

/// check_unix / check calls per second: the Unix socket against loopback TCP.
fn unix_over_tcp(outcomes: &[Outcome]) -> Option<Ratio> {
    ratio(outcomes, Scenario::CheckUnix, Scenario::Check, false)
}

const CHECK_OVER_HEALTH: &str = "Check / health throughput";
const CONSUME_OVER_CHECK: &str = "consume / check_redis throughput";
const LEASE_OVER_CHECK: &str = "consume_lease / check_redis throughput";
const UNIX_OVER_TCP: &str = "check_unix / check throughput";
const BATCH_OVER_CHECK: &str = "CheckBatch / Check decisions per second";
const REDIS_OVER_CHECK: &str = "check_redis / check throughput";

/// The ratios reported, with their labels.
fn ratios(outcomes: &[Outcome]) -> [(&'static str, Option<Ratio>); 6] {
    [
        (CHECK_OVER_HEALTH, check_over_health(outcomes)),
        (BATCH_OVER_CHECK, batch_over_check(outcomes)),
        (REDIS_OVER_CHECK, redis_over_check(outcomes)),
        (
            CONSUME_OVER_CHECK,
            consume_over_check(outcomes, Scenario::Consume),
        ),
        (
            LEASE_OVER_CHECK,
            consume_over_check(outcomes, Scenario::ConsumeLease),
        ),
        (UNIX_OVER_TCP, unix_over_tcp(outcomes)),
    ]
}

/// check_redis / check pooled latency at p50 and p99, when both ran.
fn redis_over_check_latency(outcomes: &[Outcome]) -> Option<(f64, f64)> {
    let find = |scenario| {
        outcomes
            .iter()
            .find(|o| o.scenario == scenario)
            .and_then(|o| o.latency.as_ref())
    };
    let (redis, file) = (find(Scenario::CheckRedis)?, find(Scenario::Check)?);
    (file.p50 > 0.0 && file.p99 > 0.0).then(|| (redis.p50 / file.p50, redis.p99 / file.p99))
}

/// The per-round section of the table: each scenario's calls/s, then the
/// ratios of the same round; median, min, max and every round's value.
fn per_round(
    out: &mut String,
    outcomes: &[Outcome],
    settings: &Settings,
    ratios: &[(&str, Option<Ratio>)],
) {
    let order: Vec<&str> = settings.scenarios.iter().map(|s| s.name()).collect();
    let _ = writeln!(
        out,
        "per round (round 1 ran {}{}):",
        order.join(", "),
        if order.len() > 1 {
            "; round 2 the reverse, and so on"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{:<40} {:>9} {:>9} {:>9}  rounds 1..{}",
        "", "median", "min", "max", settings.rounds
    );
    let row = |out: &mut String, label: &str, values: &[Option<f64>], precision: usize| {
        let show = |value: Option<f64>| {
            value.map_or_else(|| "-".to_string(), |v| format!("{v:.precision$}"))
        };
        let spread = spread(values.iter().flatten().copied());
        let _ = writeln!(
            out,
            "{label:<40} {:>9} {:>9} {:>9}  {}",
            show(spread.as_ref().map(|s| s.median)),
            show(spread.as_ref().map(|s| s.min)),
            show(spread.as_ref().map(|s| s.max)),
            values
                .iter()
                .map(|v| show(*v))
                .collect::<Vec<_>>()
                .join(" ")
        );
    };
    for outcome in outcomes {
        let values: Vec<Option<f64>> = outcome
            .round_calls_per_sec()
            .into_iter()
            .map(Some)
            .collect();
        row(out, &format!("{} calls/s", outcome.label()), &values, 0);
    }
    for (label, ratio) in ratios {
        if let Some(ratio) = ratio {
            row(out, label, &ratio.per_round, 3);
        }
    }
    let pooled: Vec<String> = ratios
        .iter()
        .filter_map(|(label, ratio)| {
            let pooled = ratio.as_ref()?.pooled?;
            Some(format!("{label} {pooled:.3}"))
        })
        .collect();
    if !pooled.is_empty() {
        let _ = writeln!(
            out,
            "pooled (all rounds' calls over all measured time): {}",
            pooled.join("; ")
        );
    }
}

/// How the scenarios were run, for the `client:` line.
fn schedule(settings: &Settings) -> String {
    let slice = settings.slice.as_secs_f64();
    let warmup = settings.warmup.as_secs_f64();
    if settings.rounds == 1 {
        format!("{slice:.1} s measured after {warmup:.1} s warm-up per scenario")
    } else {
        format!(
            "{:.1} s measured per scenario in {} rounds of {slice:.2} s; {warmup:.1} s warm-up before each slice of round 1, {:.1} s settle before each slice of later rounds",
            settings.duration.as_secs_f64(),
            settings.rounds,
            settings.settle.as_secs_f64()
        )
    }
}

fn table(outcomes: &[Outcome], settings: &Settings, server: &str) -> String {
    let (cpus, model) = grpc::machine();
    let mut out = String::new();
    let _ = writeln!(out, "machine: {cpus} CPUs, {model}");
    let _ = writeln!(out, "server:  {server}");
    let _ = writeln!(
        out,
        "client:  {} worker threads, {} connections, {} in flight; {}",
        settings.client_threads,
        settings.connections,
        settings.in_flight,
        schedule(settings)
    );
    let _ = writeln!(out);
    if settings.rounds > 1 {
        let _ = writeln!(out, "all {} rounds pooled:", settings.rounds);
    }
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>7} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "scenario",
        "calls",
        "errors",
        "calls/s",
        "decisions/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "srv µs/call",
        "cli µs/call"
    );
    let cpu = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    for outcome in outcomes {
        let decisions = if outcome.decisions_per_call == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", outcome.decisions_per_sec())
        };
        let _ = write!(
            out,
            "{:<12} {:>9} {:>7} {:>10.0} {:>12}",
            outcome.label(),
            outcome.calls,
            outcome.errors,
            outcome.calls_per_sec(),
            decisions
        );
        match &outcome.latency {
            Some(l) => {
                let _ = write!(
                    out,
                    " {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                    l.p50, l.p90, l.p99, l.p999, l.max
                );
            }
            None => {
                let _ = write!(
                    out,
                    " {:>9} {:>9} {:>9} {:>9} {:>9}",
                    "-", "-", "-", "-", "-"
                );
            }
        }
        let _ = writeln!(
            out,
            " {:>11} {:>11}",
            cpu(outcome.cpu_us_per_call(outcome.server_cpu)),
            cpu(outcome.cpu_us_per_call(outcome.client_cpu))
        );
    }

    let ratios = ratios(outcomes);
    let _ = writeln!(out);
    if settings.rounds == 1 {
        for (label, ratio) in &ratios {
            if let Some(pooled) = ratio.as_ref().and_then(|r| r.pooled) {
                let _ = writeln!(out, "{:<41}{pooled:.3}", format!("{label}:"));
            }
        }
    } else {
        per_round(&mut out, outcomes, settings, &ratios);
    }
    if let Some((p50, p99)) = redis_over_check_latency(outcomes) {
        let _ = writeln!(
            out,
            "check_redis / check latency (all rounds pooled): p50 {p50:.3}, p99 {p99:.3}"
        );
    }
    let _ = writeln!(out);
    for outcome in outcomes {
        if let Some(error) = &outcome.first_error {
            let _ = writeln!(
                out,
                "{}: {} errors, first: {error}",
                outcome.scenario.name(),
                outcome.errors
            );
        }
    }
    let _ = writeln!(
        out,
        "srv/cli µs/call: CPU time of the server's / the load generator's tokio threads per call while measuring."
    );
    out
}

fn spread_json(spread: Option<Spread>) -> serde_json::Value {
    spread.map_or(
        serde_json::Value::Null,
        |s| json!({"median": s.median, "min": s.min, "max": s.max}),
    )
}

fn ratio_json(ratio: Option<Ratio>) -> serde_json::Value {
    ratio.map_or(serde_json::Value::Null, |r| {
        let spread = r.spread();
        json!({
            "per_round": r.per_round,
            "median": spread.as_ref().map(|s| s.median),
            "min": spread.as_ref().map(|s| s.min),
            "max": spread.as_ref().map(|s| s.max),
            "pooled": r.pooled,
        })
    })
}

fn to_json(outcomes: &[Outcome], settings: &Settings, server: &serde_json::Value) -> String {
    let (cpus, model) = grpc::machine();
    let scenarios: Vec<_> = outcomes
        .iter()
        .map(|o| {
            let rounds: Vec<_> = o
                .rounds
                .iter()
                .map(|r| {
                    json!({
                        "calls": r.calls,
                        "errors": r.errors,
                        "seconds": r.seconds,
                        "calls_per_sec": r.calls_per_sec(),
                        "decisions_per_sec": r.calls_per_sec() * o.decisions_per_call as f64,
                        "server_cpu_seconds": r.server_cpu,
                        "client_cpu_seconds": r.client_cpu,
                    })
                })
                .collect();
            let per_round = o.round_calls_per_sec();
            json!({
                "scenario": o.scenario.name(),
                "rpc": o.scenario.rpc(),
                "decisions_per_call": o.decisions_per_call,
                "calls": o.calls,
                "errors": o.errors,
                "first_error": o.first_error,
                "seconds": o.seconds,
                "calls_per_sec": o.calls_per_sec(),
                "decisions_per_sec": o.decisions_per_sec(),
                "latency_us": o.latency.as_ref().map(|l| json!({
                    "mean": l.mean,
                    "p50": l.p50,
                    "p90": l.p90,
                    "p99": l.p99,
                    "p99_9": l.p999,
                    "max": l.max,
                })),
                "server_cpu_seconds": o.server_cpu,
                "client_cpu_seconds": o.client_cpu,
                "server_cpu_us_per_call": o.cpu_us_per_call(o.server_cpu),
                "client_cpu_us_per_call": o.cpu_us_per_call(o.client_cpu),
                "calls_per_sec_per_round": per_round,
                "calls_per_sec_over_rounds": spread_json(spread(per_round.iter().copied())),
                "rounds": rounds,
            })
        })
        .collect();
    let report = json!({
        "machine": {"cpus": cpus, "model": model},
        "server": server,
        "client": {
            "threads": settings.client_threads,
            "connections": settings.connections,
            "in_flight": settings.in_flight,
            "duration_seconds": settings.duration.as_secs_f64(),
            "rounds": settings.rounds,
            "round_seconds": settings.slice.as_secs_f64(),
            "warmup_seconds": settings.warmup.as_secs_f64(),
            "settle_seconds": settings.settle.as_secs_f64(),
            "order": "scenarios as listed in odd rounds (1, 3, ...), reversed in even rounds",
            "batch_size": settings.batch_size,
        },
        "scenarios": scenarios,
        "ratios": {
            "check_over_health_throughput": ratio_json(check_over_health(outcomes)),
            "batch_over_check_decisions": ratio_json(batch_over_check(outcomes)),
            "check_redis_over_check_throughput": ratio_json(redis_over_check(outcomes)),
            "check_redis_over_check_latency": redis_over_check_latency(outcomes)
                .map(|(p50, p99)| json!({"p50": p50, "p99": p99})),
        },
    });
    serde_json::to_string_pretty(&report).unwrap_or_default()
}

// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.filters.is_empty() && !args.filters.iter().any(|f| "loadgen".contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    let settings = match settings(&args) {
        Ok(settings) => settings,
        Err(problem) => {
            eprintln!("loadgen: {problem}");
            return ExitCode::from(2);
        }
    };

    if !args.bench && !args.quick && args.duration.is_none() {
        eprintln!(
            "loadgen: test mode (run without `cargo bench`): {:.1} s per scenario in {} round(s); \
             use `cargo bench --bench loadgen` or --duration for a measurement",
            settings.duration.as_secs_f64(),
            settings.rounds
        );
    }
    let server = match args.target {
        Some(_) => None,
        None => match InProcessServer::start(
            settings.server_threads,
            settings.redis,
            settings.scenarios.contains(&Scenario::CheckUnix),
        ) {
            Ok(server) => Some(server),
            Err(problem) => {
                eprintln!("loadgen: {problem}");
                return ExitCode::FAILURE;
            }
        },
    };
    let address = match (&server, args.target) {
        (Some(server), _) => server.address,
        (None, Some(target)) => target,
        (None, None) => unreachable!("either a target or an in-process server"),
    };
    let redis_address = server
        .as_ref()
        .and_then(|server| server.redis.as_ref())
        .map(|redis| redis.address);
    let unix_socket = server
        .as_ref()
        .and_then(|server| server.unix.as_ref())
        .map(|(_, socket)| socket.clone());
    let (mut server_text, server_json) = match &server {
        Some(server) => (
            format!(
                "in-process at {address}, {} tokio worker threads, repository's policies/ and entitlements/",
                settings.server_threads,
            ),
            json!({
                "mode": "in-process",
                "address": address.to_string(),
                "threads": settings.server_threads,
                "redis": server.redis.as_ref().map(|redis| json!({
                    "address": redis.address.to_string(),
                    "redis_server": redis.redis.url(),
                    "redis_server_pid": redis.redis.pid(),
                    "tenants": redis.tenants,
                    "cache_ttl_seconds": REDIS_CACHE_TTL.as_secs(),
                })),
            }),
        ),
        None => (
            format!("external at {address}"),
            json!({"mode": "external", "address": address.to_string()}),
        ),
    };

    if let Some(redis) = server.as_ref().and_then(|server| server.redis.as_ref()) {
        let _ = write!(
            server_text,
            "\n         check_redis: in-process at {} on the same runtime, tenant snapshots from \
             redis-server {} (pid {}; {} snapshots put from entitlements/), cache TTL {} h",
            redis.address,
            redis.redis.url(),
            redis.redis.pid(),
            redis.tenants.len(),
            REDIS_CACHE_TTL.as_secs() / 3600
        );
    }
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.client_threads)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build();
    let result = match client {
        Ok(client) => {
            let result = client.block_on(drive(
                address,
                redis_address,
                unix_socket.as_deref(),
                &settings,
                server.is_some(),
            ));
            client.shutdown_timeout(Duration::from_secs(1));
            result
        }
        Err(error) => Err(format!("cannot build the client runtime: {error}")),
    };
    if let Some(server) = server {
        server.shut_down();
    }

    match result {
        Ok(outcomes) => {
            if args.json {
                println!("{}", to_json(&outcomes, &settings, &server_json));
            } else {
                print!("{}", table(&outcomes, &settings, &server_text));
            }
            // A round without a call has no throughput to compare: a failure too.
            if outcomes
                .iter()
                .any(|o| o.errors > 0 || o.rounds.iter().any(|r| r.calls == 0))
            {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(problem) => {
            eprintln!("loadgen: {problem}");
            ExitCode::FAILURE
        }
    }
}
