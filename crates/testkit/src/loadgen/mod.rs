//! gRPC load generator for tollgate: the whole performance suite in one
//! command.
//!
//! Starts the real server as processes of the `tollgate` binary
//! ([`ServerProcess`]), each only when a chosen scenario needs it, or drives
//! a server already running (`--target`):
//!
//! * `file`: tenant snapshots from the repository's `entitlements/`, policies
//!   from a temporary copy of `policies/` (which `check_reload` rewrites), and
//!   a Unix socket for `check_unix`;
//! * `redis`: tenant snapshots from a `redis-server` started on a free
//!   loopback port and loaded with `entitlements/*.json` (and the meter
//!   tenants of the consume scenarios) through `tollgate::admin::put`;
//! * `cold`: the same Redis, a cache of 1 MiB and a few thousand extra small
//!   tenants, so that cycling through them makes every `Check` a miss.
//!
//! It drives them closed-loop with tonic clients: `--connections` HTTP/2
//! connections carrying `--in-flight` concurrent requests in total. Each
//! scenario is measured for `--duration` seconds in total, split evenly over
//! `--rounds` rounds; every round runs each scenario once (a slice), so slow
//! drift of the machine's throughput hits all scenarios alike. Scenarios
//! (`--scenarios`, or `--all`): the empty RPC (`health`), `Check` on a warm
//! cache, `CheckBatch` of 10 and 100, `Check` on a cold tenant, with
//! `consume` (exact and lease), while policies reload every 100 ms, at 1 and
//! 64 requests in flight, and over the Unix socket.
//!
//! Prints, per scenario, throughput and latency percentiles pooled over all
//! rounds, the CPU time per call of the server process, of redis-server and
//! of the load generator, the server's resident memory, and the calls/s of
//! each round; then ratios between scenarios computed per round (median,
//! min and max over the rounds) and pooled. `--json` prints the same as JSON,
//! `--json-out FILE` writes it to a file beside the table.
//!
//! Run: `cargo bench --bench loadgen --features bench-floor -- [OPTIONS]` (see `--help` and
//! `benches/README.md`), which builds the server and drives that binary
//! (`benches/loadgen.rs` calls [`main`]). The same is this crate's `loadgen`
//! binary, which drives the `tollgate` binary beside it: `cargo build
//! --release --workspace --bin tollgate --bin loadgen`, then
//! `target/release/loadgen --bench [OPTIONS]`.

mod lean;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use prost::bytes::Bytes;
use serde_json::json;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

use crate::bench::{machine, selected};
use crate::client::{bounded_channel, wait_serving};
use crate::fixtures::{repository, try_copy_dir};
use crate::measure::{memory, own_threads_cpu, process_cpu, CpuSample, Memory};
use crate::redis_server::{put_shipped_tenants, Options, RedisServer};
use crate::request::use_request;
use crate::server::{signal, ServerProcess};
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
/// Longest wait for an external server (`--target`) to report SERVING.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `cache_ttl_ms` of the Redis-sourced servers: long enough that no measured
/// call is a TTL re-read (the default, 5 minutes, is shorter than a long run).
const REDIS_CACHE_TTL_MS: u64 = 24 * 3600 * 1000;
/// `cache_max_bytes` of the `cold` server, the least the server accepts:
/// room for about 290 tenants of acme's size (a compact snapshot of about
/// 2.6 KB plus 1 KiB each).
const COLD_CACHE_MAX_BYTES: u64 = 1024 * 1024;
/// Fewest cold tenants accepted: the set must be much larger than what the
/// cold cache holds (over three times) and than the requests in flight.
const MIN_COLD_TENANTS: usize = 1000;
/// How often `check_reload` rewrites a policy file and sends SIGHUP.
const RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// The file `check_reload` rewrites in the file server's policy directory:
/// a comment only, which changes the catalog's version and nothing else.
const RELOAD_FILE: &str = "reload.cedar";
/// Longest wait for the first policy set `check_reload` wrote to be loaded.
const FIRST_RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The server's log message for a policy set it loaded.
const POLICY_SET_LOADED: &str = "policy set loaded";
/// Unloaded pause after a `check_reload` slice: the file watcher's reload of
/// the last write (200 ms debounce) lands in it, not in the next slice.
const AFTER_RELOAD: Duration = Duration::from_millis(500);
/// Checks in one `batch100` CheckBatch (the server's default `max_batch`).
const BATCH100: usize = 100;
/// `shutdown_grace_ms` of the server processes.
const SHUTDOWN_GRACE_MS: u64 = 1000;
/// Calls of each redis-server command.
type Commands = BTreeMap<String, u64>;
/// The redis-server commands tollgate sends itself on a `Check`'s path (as
/// `INFO commandstats` names them): each call is one round trip.
const ROUND_TRIP_COMMANDS: [&str; 4] = ["evalsha", "eval", "mget", "script|load"];
/// Thread name prefix of the client runtime (Linux truncates names to 15 bytes).
const CLIENT_THREADS: &str = "tg-client";

/// gRPC load generator for tollgate: the empty-RPC floor (health), Check,
/// CheckBatch, the Redis source (cache hit, miss, consume), reloads, in-flight
/// depth and the Unix socket, against the real server as processes.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// Drive a server already running at ADDR (a loopback address such as
    /// 127.0.0.1:50051, serving this repository's example policies and
    /// entitlements) instead of starting one. Only the scenarios of the
    /// file-sourced server over TCP can run against it.
    #[arg(long, value_name = "ADDR")]
    target: Option<SocketAddr>,
    /// The process id of the --target server, to report its CPU time and
    /// resident memory.
    #[arg(long, value_name = "PID", requires = "target")]
    target_pid: Option<u32>,
    /// HTTP/2 connections to each server (each one a tonic Channel).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight in total, spread over the connections (closed
    /// loop); `check_if1` and `check_if64` use 1 and 64 instead [default: 16;
    /// 4 in test mode].
    #[arg(long, value_name = "N")]
    in_flight: Option<usize>,
    /// Measured seconds per scenario in total, split evenly over the rounds
    /// [default: 10; 0.8 in test mode].
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Rounds: each runs every scenario once for --duration / --rounds
    /// seconds, in the order given in odd rounds and reversed in even ones
    /// [default: 5; 1 in test mode and with --quick].
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Warm-up seconds before each scenario's slice in the first round, not
    /// measured [default: 1; 0.1 in test mode].
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
    /// Tokio worker threads of each server process (TOKIO_WORKER_THREADS in
    /// its environment) [default: tokio's, the number of CPUs].
    #[arg(long, value_name = "N")]
    server_threads: Option<usize>,
    /// Tokio worker threads of the client [default: number of CPUs].
    #[arg(long, value_name = "N")]
    client_threads: Option<usize>,
    /// Checks in one `batch` CheckBatch (`batch100` always sends 100).
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// Scenarios to run, in order [default: health,check,batch; every
    /// scenario in test mode].
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "all")]
    scenarios: Option<Vec<Scenario>>,
    /// Run every scenario: health, check, batch, batch100, check_if1,
    /// check_if64, check_unix, check_reload, check_redis, cold, check_metered, consume,
    /// consume_lease.
    #[arg(long)]
    all: bool,
    /// Also run `check_redis` (inserted after `check`): the ALLOW Check
    /// against a server reading tenant snapshots from Redis, answered from
    /// its in-process cache. Needs redis-server (or $REDIS_SERVER).
    #[arg(long)]
    redis: bool,
    /// Tenants of the `cold` set [default: 4000; 1000 in test mode].
    #[arg(long, value_name = "N")]
    cold_tenants: Option<usize>,
    /// Print the results as JSON on stdout instead of the table (progress
    /// goes to stderr).
    #[arg(long)]
    json: bool,
    /// Also write the results as JSON to FILE (the table is printed as well).
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
    /// Passed by `cargo bench`. Without it (`cargo test --benches` or
    /// `--all-targets`, or the binary run by hand) the load generator runs in
    /// test mode, as criterion does: a short smoke run of every scenario
    /// unless --duration, --warmup, --rounds, --scenarios or --quick say
    /// otherwise.
    #[arg(long, hide = true)]
    bench: bool,
    /// Benchmark name filters passed by `cargo bench -- FILTER`: when any is
    /// given and none is a part of "loadgen", the load generator does not run.
    #[arg(hide = true)]
    filters: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// grpc.health.v1.Health/Check on service "": tonic-health's RPC, a
    /// second reference.
    Health,
    /// tollgate.bench.v1.Floor/Echo: a Check's bytes each way through the
    /// same server stack, no decision: the floor every ratio is against
    /// (servers built with the `bench-floor` feature).
    Floor,
    /// EntitlementService/Check (ALLOW), file source.
    Check,
    /// EntitlementService/CheckBatch of --batch-size ALLOW checks.
    Batch,
    /// EntitlementService/CheckBatch of 100 ALLOW checks.
    Batch100,
    /// The `check` ALLOW with 1 request in flight.
    #[value(name = "check_if1")]
    CheckIf1,
    /// The `check` ALLOW with 64 requests in flight.
    #[value(name = "check_if64")]
    CheckIf64,
    /// The `check` ALLOW over the file server's Unix domain socket.
    #[value(name = "check_unix")]
    CheckUnix,
    /// The `check` ALLOW while a policy file is rewritten and SIGHUP sent
    /// every 100 ms.
    #[value(name = "check_reload")]
    CheckReload,
    /// The ALLOW Check on the Redis-sourced server, from its cache.
    #[value(name = "check_redis")]
    CheckRedis,
    /// The ALLOW Check on the next tenant of the cold set: a cache miss, read
    /// from Redis and parsed.
    Cold,
    /// The consume scenarios' Check (bob uses `api` of the lease-mode tenant)
    /// without `consume`: the plain Check that metering adds to.
    #[value(name = "check_metered")]
    CheckMetered,
    /// EntitlementService/Check consuming 1 unit of a meter (exact mode: each
    /// consumption counted in Redis), Redis-sourced server.
    Consume,
    /// The same with the meter in lease mode (blocks of 1,000 units).
    #[value(name = "consume_lease")]
    ConsumeLease,
}

/// Every scenario, in the order `--all` runs them.
const ALL: [Scenario; 14] = [
    Scenario::Health,
    Scenario::Floor,
    Scenario::Check,
    Scenario::Batch,
    Scenario::Batch100,
    Scenario::CheckIf1,
    Scenario::CheckIf64,
    Scenario::CheckUnix,
    Scenario::CheckReload,
    Scenario::CheckRedis,
    Scenario::Cold,
    Scenario::CheckMetered,
    Scenario::Consume,
    Scenario::ConsumeLease,
];

/// Which server (process) a scenario drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The file-sourced server (or `--target`) over TCP.
    File,
    /// The file-sourced server over its Unix socket.
    Unix,
    /// The Redis-sourced server.
    Redis,
    /// The Redis-sourced server with the tiny cache.
    Cold,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::Floor => "floor",
            Scenario::Check => "check",
            Scenario::Batch => "batch",
            Scenario::Batch100 => "batch100",
            Scenario::CheckIf1 => "check_if1",
            Scenario::CheckIf64 => "check_if64",
            Scenario::CheckUnix => "check_unix",
            Scenario::CheckReload => "check_reload",
            Scenario::CheckRedis => "check_redis",
            Scenario::Cold => "cold",
            Scenario::CheckMetered => "check_metered",
            Scenario::Consume => "consume",
            Scenario::ConsumeLease => "consume_lease",
        }
    }

    fn rpc(self) -> &'static str {
        match self {
            Scenario::Health => "grpc.health.v1.Health/Check",
            Scenario::Floor => {
                "tollgate.bench.v1.Floor/Echo (a Check's bytes each way, no decision)"
            }
            Scenario::Check => "tollgate.v1.EntitlementService/Check",
            Scenario::Batch | Scenario::Batch100 => "tollgate.v1.EntitlementService/CheckBatch",
            Scenario::CheckIf1 => "tollgate.v1.EntitlementService/Check, 1 in flight",
            Scenario::CheckIf64 => "tollgate.v1.EntitlementService/Check, 64 in flight",
            Scenario::CheckUnix => "tollgate.v1.EntitlementService/Check (Unix socket)",
            Scenario::CheckReload => {
                "tollgate.v1.EntitlementService/Check (policies reloading every 100 ms)"
            }
            Scenario::CheckRedis => "tollgate.v1.EntitlementService/Check (Redis source, cached)",
            Scenario::Cold => "tollgate.v1.EntitlementService/Check (Redis source, cache miss)",
            Scenario::CheckMetered => {
                "tollgate.v1.EntitlementService/Check of the consume request, no consume"
            }
            Scenario::Consume => "tollgate.v1.EntitlementService/Check + consume (exact)",
            Scenario::ConsumeLease => "tollgate.v1.EntitlementService/Check + consume (lease)",
        }
    }

    fn role(self) -> Role {
        match self {
            Scenario::CheckUnix => Role::Unix,
            Scenario::CheckRedis
            | Scenario::CheckMetered
            | Scenario::Consume
            | Scenario::ConsumeLease => Role::Redis,
            Scenario::Cold => Role::Cold,
            _ => Role::File,
        }
    }

    /// Requests in flight.
    fn in_flight(self, settings: &Settings) -> usize {
        match self {
            Scenario::CheckIf1 => 1,
            Scenario::CheckIf64 => 64,
            _ => settings.in_flight,
        }
    }

    /// Decisions per call (0 for health).
    fn decisions_per_call(self, settings: &Settings) -> usize {
        match self {
            Scenario::Health | Scenario::Floor => 0,
            Scenario::Batch => settings.batch_size,
            Scenario::Batch100 => BATCH100,
            _ => 1,
        }
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
    /// `TOKIO_WORKER_THREADS` of the server processes, when given.
    server_threads: Option<usize>,
    client_threads: usize,
    batch_size: usize,
    scenarios: Vec<Scenario>,
    cold_tenants: usize,
    target: Option<SocketAddr>,
    target_pid: Option<u32>,
}

impl Settings {
    fn needs(&self, role: Role) -> bool {
        self.scenarios.iter().any(|s| s.role() == role)
    }
}

fn settings(args: &Args) -> Result<Settings, String> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let (duration, warmup) = match (args.quick, args.bench) {
        (true, _) => (2.0, 0.5),
        (false, true) => (args.duration.unwrap_or(10.0), args.warmup.unwrap_or(1.0)),
        (false, false) => (args.duration.unwrap_or(0.8), args.warmup.unwrap_or(0.1)),
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
    // The unoptimised server of test mode takes ~0.2 s of CPU for a
    // CheckBatch of 100: fewer in flight, so that calls complete in a slice.
    let in_flight = args
        .in_flight
        .unwrap_or(if args.bench || args.quick { 16 } else { 4 });
    if args.connections == 0 || in_flight == 0 {
        return Err("--connections and --in-flight must be at least 1".to_string());
    }
    if args.connections > in_flight {
        return Err(format!(
            "--connections ({}) exceeds --in-flight ({in_flight}): some connections would carry nothing",
            args.connections
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
                "--server-threads applies to the servers loadgen starts, not to --target"
                    .to_string(),
            );
        }
    }
    let client_threads = match args.client_threads {
        Some(0) => return Err("--client-threads must be at least 1".to_string()),
        Some(n) => n,
        None => cpus,
    };
    if args.server_threads == Some(0) {
        return Err("--server-threads must be at least 1".to_string());
    }
    let cold_tenants =
        args.cold_tenants
            .unwrap_or(if args.bench { 4000 } else { MIN_COLD_TENANTS });
    if !(MIN_COLD_TENANTS..=1_000_000).contains(&cold_tenants) {
        return Err(format!(
            "--cold-tenants must be in [{MIN_COLD_TENANTS}, 1000000]"
        ));
    }
    // Test mode runs every scenario (that can run against --target).
    let chosen: Vec<Scenario> = match (&args.scenarios, args.all || !(args.bench || args.quick)) {
        (Some(scenarios), _) => scenarios.clone(),
        (None, true) if args.target.is_some() && !args.all => ALL
            .into_iter()
            .filter(|s| s.role() == Role::File && *s != Scenario::CheckReload)
            .collect(),
        (None, true) => ALL.to_vec(),
        (None, false) => vec![
            Scenario::Floor,
            Scenario::Health,
            Scenario::Check,
            Scenario::Batch,
        ],
    };
    let mut scenarios = Vec::new();
    for scenario in chosen {
        if !scenarios.contains(&scenario) {
            scenarios.push(scenario);
        }
    }
    if args.redis && !scenarios.contains(&Scenario::CheckRedis) {
        let at = scenarios
            .iter()
            .position(|s| *s == Scenario::Check)
            .map_or(scenarios.len(), |index| index + 1);
        scenarios.insert(at, Scenario::CheckRedis);
    }
    if args.target.is_some() {
        if let Some(scenario) = scenarios
            .iter()
            .find(|s| s.role() != Role::File || **s == Scenario::CheckReload)
        {
            return Err(format!(
                "{} needs the servers loadgen starts; it cannot run with --target \
                 (only health, check, batch, batch100, check_if1 and check_if64 can)",
                scenario.name()
            ));
        }
    }
    Ok(Settings {
        connections: args.connections,
        in_flight,
        duration: Duration::from_secs_f64(duration),
        slice: Duration::from_secs_f64(slice),
        rounds,
        warmup: Duration::from_secs_f64(warmup),
        settle: Duration::from_secs_f64(args.settle),
        server_threads: args.server_threads,
        client_threads,
        batch_size: args.batch_size,
        scenarios,
        cold_tenants,
        target: args.target,
        target_pid: args.target_pid,
    })
}

// ---------------------------------------------------------------------------
// Requests

/// The ALLOW request: acme's member `bob` uses `pdf-export` (acme is on pro,
/// `pdf-export` needs pro) from BR.
fn allow_request() -> pb::CheckRequest {
    use_request("acme", "bob", "pdf-export")
}

/// Tenants written for the consume scenarios: acme with `api-calls` limited
/// to 10^15 a month, exact and in lease mode (blocks of 1,000).
const METER_EXACT_TENANT: &str = "meter-exact";
const METER_LEASE_TENANT: &str = "meter-lease";

/// Distinguishes the idempotency keys of drivers (and of runs: a fresh
/// redis-server per run).
static DRIVERS: AtomicU64 = AtomicU64::new(0);

/// The encoded size of the `check` scenario's answer, measured by the
/// preflight: what the floor answers.
static CHECK_RESPONSE_BYTES: AtomicUsize = AtomicUsize::new(0);

fn consume_request(tenant: &str) -> pb::CheckRequest {
    let mut request = use_request(tenant, "bob", "api");
    request.consume = Some(pb::Consume {
        meter: "api-calls".to_string(),
        amount: 1,
        idempotency_key: String::new(),
    });
    request
}

/// The consume scenarios' request without `consume` (`check_metered`).
fn metered_request() -> pb::CheckRequest {
    let mut request = consume_request(METER_LEASE_TENANT);
    request.consume = None;
    request
}

/// The cold tenants, taken round robin by every worker of every slice
/// through one counter.
struct ColdSet {
    tenants: Vec<String>,
    next: AtomicUsize,
}

impl ColdSet {
    fn next(&self) -> &str {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.tenants.len();
        &self.tenants[index]
    }
}

/// The `freshness.source` of an answer, by name.
fn source_name(response: &pb::CheckResponse) -> &'static str {
    source_of(response.freshness.as_ref().map(|f| f.source))
}

/// A `freshness.source` by name (`none` without freshness).
fn source_of(source: Option<i32>) -> &'static str {
    match source.map(pb::SnapshotSource::try_from) {
        Some(Ok(pb::SnapshotSource::File)) => "FILE",
        Some(Ok(pb::SnapshotSource::Cache)) => "CACHE",
        Some(Ok(pb::SnapshotSource::Redis)) => "REDIS",
        Some(Ok(pb::SnapshotSource::Stale)) => "STALE",
        Some(Ok(pb::SnapshotSource::License)) => "LICENSE",
        Some(Ok(pb::SnapshotSource::Unspecified)) => "UNSPECIFIED",
        Some(Err(_)) => "unknown",
        None => "none",
    }
}

/// One client issuing one kind of call; checks every answer. Requests are
/// encoded once and answers decoded only as far as the checks read
/// ([`lean`]).
enum Driver {
    Health(lean::Method<lean::HealthAnswer>, Bytes),
    /// The floor: a request of a Check's size, an answer of this many bytes.
    Floor(lean::Method<lean::FloorAnswer>, Bytes, usize),
    Check(lean::Method<lean::Decided>, Bytes),
    /// A CheckBatch of this many checks.
    Batch(lean::Method<lean::Decisions>, Bytes, usize),
    /// A Check whose answer must come from the Redis source's cache.
    CheckRedis(lean::Method<lean::Sourced>, Bytes),
    /// A Check of the next cold tenant, whose answer must have been read from
    /// Redis for it.
    Cold(lean::Method<lean::Sourced>, lean::Encoded, Arc<ColdSet>),
    /// A Check whose policy version is kept (`check_reload`).
    CheckVersion(lean::Method<lean::Sourced>, Bytes),
    /// A consuming Check; every call has an idempotency key of its own, the
    /// next one's number is the `u64`.
    Consume(
        lean::Method<lean::Counted>,
        lean::Encoded,
        Box<pb::Consume>,
        u64,
    ),
}

impl Driver {
    fn new(scenario: Scenario, channel: Channel, settings: &Settings, cold: &Arc<ColdSet>) -> Self {
        let check = || lean::Encoded::new(&allow_request()).bytes();
        let batch = |size: usize| {
            let request = pb::CheckBatchRequest {
                checks: vec![allow_request(); size],
            };
            (lean::Encoded::new(&request).bytes(), size)
        };
        match scenario {
            Scenario::Health => Driver::Health(
                lean::Method::new(channel, lean::HEALTH_CHECK),
                lean::Encoded::new(&HealthCheckRequest {
                    service: String::new(),
                })
                .bytes(),
            ),
            Scenario::Floor => {
                let response_bytes = CHECK_RESPONSE_BYTES.load(Ordering::Relaxed);
                Driver::Floor(
                    lean::Method::new(channel, lean::FLOOR),
                    lean::Encoded::new(&lean::FloorRequest {
                        payload: vec![0; check().len()].into(),
                        response_bytes: u32::try_from(response_bytes).unwrap_or(u32::MAX),
                    })
                    .bytes(),
                    response_bytes,
                )
            }
            Scenario::Check | Scenario::CheckIf1 | Scenario::CheckIf64 | Scenario::CheckUnix => {
                Driver::Check(lean::Method::new(channel, lean::CHECK), check())
            }
            Scenario::Batch | Scenario::Batch100 => {
                let size = if scenario == Scenario::Batch {
                    settings.batch_size
                } else {
                    BATCH100
                };
                let (body, size) = batch(size);
                Driver::Batch(lean::Method::new(channel, lean::CHECK_BATCH), body, size)
            }
            Scenario::CheckReload => {
                Driver::CheckVersion(lean::Method::new(channel, lean::CHECK), check())
            }
            Scenario::CheckRedis => {
                Driver::CheckRedis(lean::Method::new(channel, lean::CHECK), check())
            }
            Scenario::CheckMetered => Driver::CheckRedis(
                lean::Method::new(channel, lean::CHECK),
                lean::Encoded::new(&metered_request()).bytes(),
            ),
            Scenario::Cold => Driver::Cold(
                lean::Method::new(channel, lean::CHECK),
                // Each call appends its tenant.
                lean::Encoded::new(&pb::CheckRequest {
                    tenant: String::new(),
                    ..allow_request()
                }),
                Arc::clone(cold),
            ),
            Scenario::Consume | Scenario::ConsumeLease => {
                let mut request = consume_request(if scenario == Scenario::Consume {
                    METER_EXACT_TENANT
                } else {
                    METER_LEASE_TENANT
                });
                let consume = request.consume.take().expect("a consume request");
                Driver::Consume(
                    lean::Method::new(channel, lean::CHECK),
                    lean::Encoded::new(&request),
                    Box::new(consume),
                    DRIVERS.fetch_add(1, Ordering::Relaxed) << 32,
                )
            }
        }
    }

    /// Makes one call; `Err` describes a failed call or an unexpected answer.
    /// `Ok(Some(version))`: the policy version of a `check_reload` answer.
    async fn call(&mut self) -> Result<Option<String>, String> {
        let status = |status: tonic::Status| format!("{:?}: {}", status.code(), status.message());
        let allowed = |decision: i32, answer: &dyn std::fmt::Debug| {
            if decision == pb::Decision::Allow as i32 {
                Ok(())
            } else {
                Err(format!("expected ALLOW, got {answer:?}"))
            }
        };
        // An ALLOW whose `freshness.source` is `source`.
        let allowed_from = |answer: &lean::Sourced, source: &str, what: &str| {
            allowed(answer.decision, answer)?;
            match source_of(answer.freshness.as_ref().map(|f| f.source)) {
                found if found == source => Ok(None),
                other => Err(format!(
                    "expected {what} (source {source}), got source {other}: {answer:?}"
                )),
            }
        };
        match self {
            Driver::Health(method, body) => {
                let answer = method.call(body.clone()).await.map_err(status)?;
                if answer.status == ServingStatus::Serving as i32 {
                    Ok(None)
                } else {
                    Err(format!("health status {}", answer.status))
                }
            }
            Driver::Floor(method, body, size) => {
                let answer = method.call(body.clone()).await.map_err(|error| {
                    let unimplemented = error.code() == tonic::Code::Unimplemented;
                    let problem = status(error);
                    if unimplemented {
                        format!("{problem} (the floor needs a server built with --features bench-floor)")
                    } else {
                        problem
                    }
                })?;
                if answer.payload.len() == *size {
                    Ok(None)
                } else {
                    Err(format!(
                        "expected {size} bytes, got {}",
                        answer.payload.len()
                    ))
                }
            }
            Driver::Check(method, body) => {
                let answer = method.call(body.clone()).await.map_err(status)?;
                match allowed(answer.decision, &answer) {
                    Ok(()) => Ok(None),
                    Err(error) => Err(in_full::<pb::CheckResponse, _>(method, body, error).await),
                }
            }
            Driver::CheckVersion(method, body) => {
                let answer = method.call(body.clone()).await.map_err(status)?;
                match allowed(answer.decision, &answer) {
                    Ok(()) => Ok(answer.freshness.map(|f| f.policy_version)),
                    Err(error) => Err(in_full::<pb::CheckResponse, _>(method, body, error).await),
                }
            }
            Driver::Batch(method, body, size) => {
                let answer = method.call(body.clone()).await.map_err(status)?;
                let checked = if answer.responses.len() == *size {
                    answer
                        .responses
                        .iter()
                        .try_for_each(|response| allowed(response.decision, response))
                        .map(|()| None)
                } else {
                    Err(format!(
                        "{} responses to {size} checks",
                        answer.responses.len()
                    ))
                };
                match checked {
                    Err(error) => {
                        Err(in_full::<pb::CheckBatchResponse, _>(method, body, error).await)
                    }
                    checked => checked,
                }
            }
            Driver::Consume(method, shared, consume, next) => {
                consume.idempotency_key.clear();
                write!(consume.idempotency_key, "{next:x}").expect("writing to a String");
                *next += 1;
                let body = shared.with_message(lean::CONSUME_FIELD, consume.as_ref());
                let answer = method.call(body.clone()).await.map_err(status)?;
                let checked =
                    allowed(answer.decision, &answer).and_then(|()| match &answer.usage {
                        Some(usage) if usage.used > 0 => Ok(None),
                        _ => Err(format!("a consumption without usage: {answer:?}")),
                    });
                match checked {
                    // Sent again with its key: the first answer, not a second consumption.
                    Err(error) => Err(in_full::<pb::CheckResponse, _>(method, &body, error).await),
                    checked => checked,
                }
            }
            Driver::CheckRedis(method, body) => {
                let answer = method.call(body.clone()).await.map_err(status)?;
                match allowed_from(&answer, "CACHE", "an answer from the cache") {
                    Err(error) => Err(in_full::<pb::CheckResponse, _>(method, body, error).await),
                    checked => checked,
                }
            }
            Driver::Cold(method, shared, cold) => {
                let body = shared.with_string(lean::TENANT_FIELD, cold.next());
                let answer = method.call(body.clone()).await.map_err(status)?;
                match allowed_from(&answer, "REDIS", "a cache miss read from Redis") {
                    Err(error) => Err(in_full::<pb::CheckResponse, _>(method, &body, error).await),
                    checked => checked,
                }
            }
        }
    }
}

/// `error`, with the whole answer to `body` asked again (an unexpected answer
/// is reported with everything in it, not only the fields the load
/// generator reads).
async fn in_full<F, A>(method: &lean::Method<A>, body: &Bytes, error: String) -> String
where
    F: prost::Message + Default + Send + std::fmt::Debug + 'static,
    A: prost::Message + Default + Send + 'static,
{
    match method.call_in_full::<F>(body.clone()).await {
        Ok(full) => format!("{error}; the whole answer, asked again: {full:?}"),
        Err(status) => format!(
            "{error}; asked again: {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}

// ---------------------------------------------------------------------------
// The servers

/// The server processes and the redis-server, each started only when a
/// chosen scenario needs it.
struct Servers {
    /// The file-sourced server (`health`, `check`, `batch*`, `check_if*`,
    /// `check_unix`, `check_reload`).
    file: Option<ServerProcess>,
    /// Its policy directory, a copy of `policies/` that `check_reload` writes.
    file_policies: PathBuf,
    /// Its Unix socket, with `check_unix`.
    unix_socket: Option<PathBuf>,
    /// The Redis-sourced server (`check_redis`, `consume`, `consume_lease`).
    redis: Option<ServerProcess>,
    /// The Redis-sourced server with a cache of [`COLD_CACHE_MAX_BYTES`] (`cold`).
    cold: Option<ServerProcess>,
    /// The redis-server both Redis-sourced servers read; stopped after them.
    redis_server: Option<RedisServer>,
    /// Tenants put into Redis from `entitlements/` and for the meters.
    tenants: Vec<String>,
    /// The cold set.
    cold_tenants: Vec<String>,
    /// Copies of `policies/`, the Unix socket. Removed last.
    dir: tempfile::TempDir,
    /// The `tollgate` binary the server processes run.
    binary: PathBuf,
}

/// Writes every `entitlements/*.json`, the two meter tenants and `cold`
/// copies of acme (tenant ids `cold-00000`, ...) into Redis with
/// `tollgate::admin::put` (validated against `policies`, as `tollgate
/// snapshot put` does). Returns the tenants and the cold tenants.
async fn load_redis(
    settings: &RedisSettings,
    policies: &Path,
    cold: usize,
) -> Result<(Vec<String>, Vec<String>), String> {
    let root = repository();
    let store = Store::policies_only(policies.to_path_buf());
    let outcome = store.reload_all();
    let catalog = store
        .catalog()
        .ok_or_else(|| format!("cannot load {}: {outcome:?}", policies.display()))?;
    let conn = RedisConn::connect(settings)
        .await
        .map_err(|error| format!("cannot connect to redis: {error}"))?;
    let mut tenants = put_shipped_tenants(&conn, &catalog.policies).await?;
    if !tenants.iter().any(|tenant| tenant == "acme") {
        return Err("entitlements/ has no acme.json".to_string());
    }
    let acme = std::fs::read_to_string(root.join("entitlements/acme.json"))
        .map_err(|error| format!("cannot read acme.json: {error}"))?;
    let acme: serde_json::Value =
        serde_json::from_str(&acme).map_err(|error| format!("acme.json: {error}"))?;
    // The consume scenarios' tenants: acme with a limit no run reaches.
    for (tenant, lease) in [
        (METER_EXACT_TENANT, None),
        (METER_LEASE_TENANT, Some(1_000)),
    ] {
        let mut document = acme.clone();
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
    // The cold set: acme's shape under another tenant id, written by a few
    // tasks at a time (each put parses and validates its document first).
    const WRITERS: usize = 8;
    let cold_tenants: Vec<String> = (0..cold).map(|index| format!("cold-{index:05}")).collect();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let conn = conn.clone();
        let policies = Arc::clone(&catalog.policies);
        let mut document = acme.clone();
        let mine: Vec<String> = cold_tenants
            .iter()
            .skip(writer)
            .step_by(WRITERS)
            .cloned()
            .collect();
        writers.spawn(async move {
            for tenant in mine {
                document["tenant"] = tenant.as_str().into();
                tollgate::admin::put(&conn, &policies, &document.to_string())
                    .await
                    .map_err(|error| format!("cannot put {tenant} into redis: {error}"))?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.map_err(|error| format!("cold writer failed: {error}"))??;
    }
    Ok((tenants, cold_tenants))
}

impl Servers {
    /// Starts what `settings` needs (nothing with `--target`): the
    /// redis-server and its data first, then the server processes, each
    /// SERVING when this returns.
    fn start(settings: &Settings, binary: &Path) -> Result<Self, String> {
        let root = repository();
        let dir = tempfile::tempdir().map_err(|error| format!("cannot make a tempdir: {error}"))?;
        // Two copies: the file server's, which check_reload rewrites, and
        // the Redis-sourced servers', which nothing changes during the run.
        let file_policies = dir.path().join("policies-file");
        let redis_policies = dir.path().join("policies");
        try_copy_dir(&root.join("policies"), &file_policies)?;
        try_copy_dir(&root.join("policies"), &redis_policies)?;
        let mut servers = Self {
            file: None,
            file_policies,
            unix_socket: None,
            redis: None,
            cold: None,
            redis_server: None,
            tenants: Vec::new(),
            cold_tenants: Vec::new(),
            dir,
            binary: binary.to_path_buf(),
        };
        if settings.target.is_some() {
            return Ok(servers);
        }
        let mut base: Vec<(String, String)> = vec![(
            "TOLLGATE_SHUTDOWN_GRACE_MS".into(),
            SHUTDOWN_GRACE_MS.to_string(),
        )];
        if let Some(threads) = settings.server_threads {
            base.push(("TOKIO_WORKER_THREADS".into(), threads.to_string()));
        }
        let entitlements = root.join("entitlements");

        let (with_redis, with_cold) = (settings.needs(Role::Redis), settings.needs(Role::Cold));
        let mut redis_env = base.clone();
        if with_redis || with_cold {
            let redis = RedisServer::try_start(Options::default())?;
            let setup = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("tg-setup")
                .enable_all()
                .build()
                .map_err(|error| format!("cannot build a runtime: {error}"))?;
            let started = Instant::now();
            let cold = if with_cold { settings.cold_tenants } else { 0 };
            let (tenants, cold_tenants) =
                setup.block_on(load_redis(&redis.settings(), &redis_policies, cold))?;
            setup.shutdown_timeout(Duration::from_secs(1));
            eprintln!(
                "loadgen: redis-server {} (pid {}): {} tenants and {} cold tenants put in {:.1} s",
                redis.url(),
                redis.pid(),
                tenants.len(),
                cold_tenants.len(),
                started.elapsed().as_secs_f64()
            );
            servers.tenants = tenants;
            servers.cold_tenants = cold_tenants;
            redis_env.push(("TOLLGATE_REDIS_URL".into(), redis.url()));
            redis_env.push((
                "TOLLGATE_CACHE_TTL_MS".into(),
                REDIS_CACHE_TTL_MS.to_string(),
            ));
            servers.redis_server = Some(redis);
        }
        if settings.needs(Role::File) || settings.needs(Role::Unix) {
            let mut env = base.clone();
            if settings.needs(Role::Unix) {
                let socket = servers.dir.path().join("tollgate.sock");
                env.push(("TOLLGATE_LISTEN_UNIX".into(), socket.display().to_string()));
                servers.unix_socket = Some(socket);
            }
            servers.file = Some(ServerProcess::start(
                "file",
                &servers.binary,
                &servers.file_policies,
                &entitlements,
                &env,
            )?);
        }
        if with_redis {
            servers.redis = Some(ServerProcess::start(
                "redis",
                &servers.binary,
                &redis_policies,
                &entitlements,
                &redis_env,
            )?);
        }
        if with_cold {
            let mut env = redis_env.clone();
            env.push((
                "TOLLGATE_CACHE_MAX_BYTES".into(),
                COLD_CACHE_MAX_BYTES.to_string(),
            ));
            servers.cold = Some(ServerProcess::start(
                "cold",
                &servers.binary,
                &redis_policies,
                &entitlements,
                &env,
            )?);
        }
        Ok(servers)
    }

    fn process(&self, role: Role) -> Option<&ServerProcess> {
        match role {
            Role::File | Role::Unix => self.file.as_ref(),
            Role::Redis => self.redis.as_ref(),
            Role::Cold => self.cold.as_ref(),
        }
    }

    /// The pid of the server `role` drives: a process started here, or
    /// `--target-pid`.
    fn pid(&self, role: Role, settings: &Settings) -> Option<u32> {
        match (self.process(role), role) {
            (Some(process), _) => Some(process.pid()),
            (None, Role::File) => settings.target_pid,
            (None, _) => None,
        }
    }

    /// The redis-server, for the scenarios that read Redis.
    fn redis_of(&self, role: Role) -> Option<&RedisServer> {
        matches!(role, Role::Redis | Role::Cold)
            .then_some(self.redis_server.as_ref())
            .flatten()
    }

    /// Stops the server processes with SIGTERM (each must exit with status
    /// 0), then the redis-server.
    fn stop(self) -> Vec<String> {
        let mut problems = Vec::new();
        for process in [self.file, self.redis, self.cold].into_iter().flatten() {
            if let Err(problem) = process.stop() {
                problems.push(problem);
            }
        }
        drop(self.redis_server);
        problems
    }
}

// ---------------------------------------------------------------------------
// check_reload's writer

/// Distinguishes every write of [`RELOAD_FILE`] in a run.
static RELOADS: AtomicU64 = AtomicU64::new(0);

/// A thread that rewrites [`RELOAD_FILE`] in `dir` and sends SIGHUP to `pid`
/// every [`RELOAD_INTERVAL`] until stopped (or, at the latest, `until`).
struct ReloadWriter {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64, String>>,
}

impl ReloadWriter {
    fn start(pid: u32, dir: PathBuf, until: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (file, temporary) = (dir.join(RELOAD_FILE), dir.join(".reload.tmp"));
                let mut sent = 0;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let count = RELOADS.fetch_add(1, Ordering::Relaxed);
                    // Written whole, then renamed: a reload never reads half a file.
                    std::fs::write(&temporary, format!("// reload {count}\n"))
                        .and_then(|()| std::fs::rename(&temporary, &file))
                        .map_err(|error| format!("cannot write {}: {error}", file.display()))?;
                    signal(pid, "HUP")?;
                    sent += 1;
                    next += RELOAD_INTERVAL;
                    std::thread::sleep(next.min(until).saturating_duration_since(Instant::now()));
                }
                Ok(sent)
            })
        };
        Self { stop, thread }
    }

    /// Stops it; the number of reloads it asked for.
    fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the reload writer panicked".to_string())?
    }
}

// ---------------------------------------------------------------------------
// Measurement

#[derive(Default)]
struct WorkerResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    /// Policy versions of the measured `check_reload` answers.
    versions: HashSet<String>,
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
            Ok(version) => {
                result
                    .latencies_ns
                    .push(u64::try_from((finished - started).as_nanos()).unwrap_or(u64::MAX));
                if let Some(version) = version {
                    if !result.versions.contains(&version) {
                        result.versions.insert(version);
                    }
                }
            }
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
    /// CPU seconds while measuring: the server process's, the client
    /// runtime's threads', the redis-server's (Redis scenarios).
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    redis_cpu: Option<f64>,
    /// Calls of each command redis-server processed while measuring (Redis
    /// scenarios; the commands scripts run and the servers' heartbeats
    /// included).
    redis_commands: Option<Commands>,
    /// The server process's memory right after the slice.
    server_memory: Option<Memory>,
    /// `check_reload`: the policy versions of the measured answers, the
    /// reloads requested (SIGHUPs sent during the slice and its lead-in) and
    /// the policy sets the server logged as loaded while measuring.
    versions: HashSet<String>,
    reloads_sent: Option<u64>,
    reloads_loaded: Option<usize>,
}

/// What one round measured of one scenario.
struct Round {
    calls: u64,
    errors: u64,
    seconds: f64,
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    redis_cpu: Option<f64>,
    redis_commands: Option<Commands>,
    server_memory: Option<Memory>,
    versions: usize,
    reloads_sent: Option<u64>,
    reloads_loaded: Option<usize>,
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
    label: String,
    in_flight: usize,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    /// Measured seconds in total (all rounds).
    seconds: f64,
    decisions_per_call: usize,
    latency: Option<Latency>,
    /// CPU seconds of the server process, the client's threads and the
    /// redis-server while measuring (`None` unless every round read them).
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    redis_cpu: Option<f64>,
    /// Calls of each command redis-server processed while measuring.
    redis_commands: Option<Commands>,
    /// The largest `VmRSS` of the server process read after a slice.
    server_rss_bytes: Option<u64>,
    /// `check_reload`: distinct policy versions over all measured answers.
    versions: Option<usize>,
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
                redis_cpu: slice.redis_cpu,
                redis_commands: slice.redis_commands.clone(),
                server_memory: slice.server_memory,
                versions: slice.versions.len(),
                reloads_sent: slice.reloads_sent,
                reloads_loaded: slice.reloads_loaded,
            })
            .collect();
        let measured: Duration = slices.iter().map(|slice| slice.measured).sum();
        let mut latencies = Vec::with_capacity(rounds.iter().map(|r| r.calls as usize).sum());
        let mut first_error = None;
        let mut versions = HashSet::new();
        for slice in slices {
            latencies.extend(slice.latencies_ns);
            versions.extend(slice.versions);
            if first_error.is_none() {
                first_error = slice.first_error;
            }
        }
        latencies.sort_unstable();
        let decisions_per_call = scenario.decisions_per_call(settings);
        Outcome {
            scenario,
            label: match scenario {
                Scenario::Batch => format!("batch{decisions_per_call}"),
                other => other.name().to_string(),
            },
            in_flight: scenario.in_flight(settings),
            calls: latencies.len() as u64,
            errors: rounds.iter().map(|r| r.errors).sum(),
            first_error,
            seconds: measured.as_secs_f64(),
            decisions_per_call,
            latency: latency(&latencies),
            server_cpu: rounds.iter().map(|r| r.server_cpu).sum(),
            client_cpu: rounds.iter().map(|r| r.client_cpu).sum(),
            redis_cpu: rounds.iter().map(|r| r.redis_cpu).sum(),
            // `None` unless every round could read them.
            redis_commands: rounds.iter().try_fold(Commands::new(), |mut total, r| {
                for (command, calls) in r.redis_commands.as_ref()? {
                    *total.entry(command.clone()).or_insert(0) += calls;
                }
                Some(total)
            }),
            server_rss_bytes: rounds
                .iter()
                .filter_map(|r| r.server_memory.map(|m| m.rss_bytes))
                .max(),
            versions: (scenario == Scenario::CheckReload).then_some(versions.len()),
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

    /// redis-server commands (all, and each) per successful call.
    fn redis_commands_per_call(&self) -> Option<(f64, BTreeMap<String, f64>)> {
        let commands = self.redis_commands.as_ref().filter(|_| self.calls > 0)?;
        let per_call = |calls: u64| calls as f64 / self.calls as f64;
        Some((
            per_call(commands.values().sum()),
            commands
                .iter()
                .map(|(command, calls)| (command.clone(), per_call(*calls)))
                .collect(),
        ))
    }

    /// Redis round trips per successful call: the commands tollgate sends
    /// itself (its scripts, `MGET`, `SCRIPT LOAD`), not those its scripts
    /// run inside Redis, nor the heartbeat `PING`s.
    fn redis_round_trips_per_call(&self) -> Option<f64> {
        let (_, each) = self.redis_commands_per_call()?;
        Some(
            each.iter()
                .filter(|(command, _)| ROUND_TRIP_COMMANDS.contains(&command.as_str()))
                .fold(0.0, |sum, (_, per_call)| sum + per_call),
        )
    }

    fn round_calls_per_sec(&self) -> Vec<f64> {
        self.rounds.iter().map(Round::calls_per_sec).collect()
    }

    /// Why this outcome fails the run, beyond its errors: a round without a
    /// call, or a `check_reload` that saw fewer than two policy versions.
    fn failure(&self) -> Option<String> {
        if self.rounds.iter().any(|r| r.calls == 0) {
            return Some(format!("{}: a round without a completed call", self.label));
        }
        match self.versions {
            Some(versions) if versions < 2 => Some(format!(
                "{}: the measured answers saw {versions} policy version(s); reloads did not take effect",
                self.label
            )),
            _ => None,
        }
    }
}

/// Checks three calls of each scenario (after waiting for an external server
/// to report SERVING). For `check_redis`, the first Check (which reads acme
/// from Redis) must be an ALLOW, and the next ones ALLOWs from the cache.
async fn preflight(
    channels: &Channels,
    settings: &Settings,
    cold: &Arc<ColdSet>,
) -> Result<(), String> {
    lean::check_appending(&consume_request(METER_EXACT_TENANT))?;
    if settings.target.is_some() {
        wait_serving(&channels.file[0], READY_TIMEOUT)
            .await
            .map_err(|error| format!("--target: {error}"))?;
    }
    for scenario in &settings.scenarios {
        let channel = channels
            .of(scenario.role())
            .first()
            .ok_or_else(|| format!("{}: no connection to its server", scenario.name()))?;
        // The floor answers as many bytes as the check scenario's answer has.
        if *scenario == Scenario::Floor {
            let answer = EntitlementServiceClient::new(channel.clone())
                .check(allow_request())
                .await
                .map_err(|status| {
                    format!(
                        "floor: the Check it stands for: {:?}: {}",
                        status.code(),
                        status.message()
                    )
                })?
                .into_inner();
            CHECK_RESPONSE_BYTES.store(prost::Message::encoded_len(&answer), Ordering::Relaxed);
        }
        // The first call of a cached scenario reads the tenant from Redis.
        let first = match scenario {
            Scenario::CheckRedis => Some(allow_request()),
            Scenario::CheckMetered => Some(metered_request()),
            _ => None,
        };
        if let Some(first) = first {
            let first = EntitlementServiceClient::new(channel.clone())
                .check(first)
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
        }
        // Three calls: a check_redis answer not from the cache fails here.
        let mut driver = Driver::new(*scenario, channel.clone(), settings, cold);
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
    run: &Run<'_>,
    lead_in: Duration,
    measured: Duration,
) -> Slice {
    let settings = run.settings;
    let role = scenario.role();
    let channels = run.channels.of(role);
    let server = run.servers.process(role);
    let server_pid = run.servers.pid(role, settings);
    let redis = run.servers.redis_of(role);
    let redis_pid = redis.map(RedisServer::pid);
    // check_reload: the writer starts first, and the slice once the server
    // has loaded the first policy set it wrote, so that reloads go on from
    // the first measured call to the last.
    let reload_writer = match (scenario, server) {
        (Scenario::CheckReload, Some(server)) => {
            let loaded = server.log_count(POLICY_SET_LOADED);
            let deadline = Instant::now() + FIRST_RELOAD_TIMEOUT;
            let writer = ReloadWriter::start(
                server.pid(),
                run.servers.file_policies.clone(),
                deadline + lead_in + measured,
            );
            while server.log_count(POLICY_SET_LOADED) == loaded && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Some(writer)
        }
        _ => None,
    };
    let start = Instant::now();
    let measure_from = start + lead_in;
    let end = measure_from + measured;
    let workers: Vec<_> = (0..scenario.in_flight(settings))
        .map(|index| {
            let channel = channels[index % channels.len()].clone();
            let driver = Driver::new(scenario, channel, settings, &run.cold);
            tokio::spawn(worker(driver, measure_from, end))
        })
        .collect();

    let sample = || {
        (
            server_pid.and_then(process_cpu),
            own_threads_cpu(CLIENT_THREADS),
            redis_pid.and_then(process_cpu),
            server.map(|s| s.log_count(POLICY_SET_LOADED)),
            redis.and_then(RedisServer::command_calls),
        )
    };
    tokio::time::sleep_until(measure_from.into()).await;
    let before = sample();
    tokio::time::sleep_until(end.into()).await;
    let after = sample();
    let server_memory = server_pid.and_then(memory);
    let seconds = |before: &Option<CpuSample>, after: &Option<CpuSample>| {
        before
            .as_ref()
            .zip(after.as_ref())
            .map(|(before, after)| after.seconds_since(before))
    };

    let mut slice = Slice {
        latencies_ns: Vec::new(),
        errors: 0,
        first_error: None,
        measured,
        server_cpu: seconds(&before.0, &after.0),
        client_cpu: seconds(&before.1, &after.1),
        redis_cpu: seconds(&before.2, &after.2),
        redis_commands: before.4.zip(after.4).map(|(before, after)| {
            after
                .into_iter()
                .map(|(command, calls)| {
                    let earlier = before.get(&command).copied().unwrap_or(0);
                    (command, calls.saturating_sub(earlier))
                })
                .filter(|(_, calls)| *calls > 0)
                .collect()
        }),
        server_memory,
        versions: HashSet::new(),
        reloads_sent: None,
        reloads_loaded: None,
    };
    for handle in workers {
        // Calls carry a deadline, so workers end within RPC_TIMEOUT of `end`.
        match tokio::time::timeout(RPC_TIMEOUT * 2, handle).await {
            Ok(Ok(result)) => {
                slice.latencies_ns.extend(result.latencies_ns);
                slice.errors += result.errors;
                slice.versions.extend(result.versions);
                if slice.first_error.is_none() {
                    slice.first_error = result.first_error;
                }
            }
            Ok(Err(error)) => {
                slice.errors += 1;
                slice
                    .first_error
                    .get_or_insert(format!("worker failed: {error}"));
            }
            Err(_) => {
                slice.errors += 1;
                slice
                    .first_error
                    .get_or_insert("worker did not finish".to_string());
            }
        }
    }
    if let Some(writer) = reload_writer {
        match writer.finish() {
            Ok(sent) => slice.reloads_sent = Some(sent),
            Err(error) => {
                slice.errors += 1;
                slice.first_error.get_or_insert(error);
            }
        }
        slice.reloads_loaded = before.3.zip(after.3).map(|(b, a)| a.saturating_sub(b));
        tokio::time::sleep(AFTER_RELOAD).await;
    }
    slice
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

/// The client's connections: `--connections` to each server a scenario needs.
#[derive(Default)]
struct Channels {
    file: Vec<Channel>,
    unix: Vec<Channel>,
    redis: Vec<Channel>,
    cold: Vec<Channel>,
}

impl Channels {
    fn of(&self, role: Role) -> &[Channel] {
        match role {
            Role::File => &self.file,
            Role::Unix => &self.unix,
            Role::Redis => &self.redis,
            Role::Cold => &self.cold,
        }
    }
}

/// What a slice needs to know of the run.
struct Run<'a> {
    settings: &'a Settings,
    servers: &'a Servers,
    channels: Channels,
    cold: Arc<ColdSet>,
}

async fn drive(settings: &Settings, servers: &Servers) -> Result<Vec<Outcome>, String> {
    let mut channels = Channels::default();
    for _ in 0..settings.connections {
        let file = servers.file.as_ref().map(|file| file.addr);
        if let Some(address) = file.or(settings.target) {
            channels
                .file
                .push(bounded_channel(address, RPC_TIMEOUT).await?);
        }
        if let Some(socket) = &servers.unix_socket {
            let address = format!("unix:{}", socket.display());
            channels.unix.push(
                tollgate::api::client::connect(&address)
                    .await
                    .map_err(|error| format!("cannot connect to {address}: {error}"))?,
            );
        }
        for (server, list) in [
            (&servers.redis, &mut channels.redis),
            (&servers.cold, &mut channels.cold),
        ] {
            if let Some(server) = server {
                list.push(bounded_channel(server.addr, RPC_TIMEOUT).await?);
            }
        }
    }
    let run = Run {
        settings,
        servers,
        channels,
        cold: Arc::new(ColdSet {
            tenants: if servers.cold_tenants.is_empty() {
                vec!["acme".to_string()]
            } else {
                servers.cold_tenants.clone()
            },
            next: AtomicUsize::new(0),
        }),
    };
    preflight(&run.channels, settings, &run.cold).await?;
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
            let slice = run_slice(scenario, &run, lead_in, settings.slice).await;
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

fn find(outcomes: &[Outcome], scenario: Scenario) -> Option<&Outcome> {
    outcomes.iter().find(|o| o.scenario == scenario)
}

/// `numerator` / `denominator` calls per second or, with `per_decision`,
/// decisions per second.
fn ratio(
    outcomes: &[Outcome],
    numerator: Scenario,
    denominator: Scenario,
    per_decision: bool,
) -> Option<Ratio> {
    let (n, d) = (find(outcomes, numerator)?, find(outcomes, denominator)?);
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

/// A throughput ratio the report shows: JSON key, label, numerator,
/// denominator, and whether it compares decisions (not calls) per second.
type RatioDef = (&'static str, &'static str, Scenario, Scenario, bool);

const RATIOS: [RatioDef; 17] = [
    (
        "check_over_floor_throughput",
        "Check / floor throughput",
        Scenario::Check,
        Scenario::Floor,
        false,
    ),
    (
        "health_over_floor_throughput",
        "health / floor throughput",
        Scenario::Health,
        Scenario::Floor,
        false,
    ),
    (
        "check_redis_over_floor_throughput",
        "check_redis / floor throughput",
        Scenario::CheckRedis,
        Scenario::Floor,
        false,
    ),
    (
        "check_metered_over_floor_throughput",
        "check_metered / floor throughput",
        Scenario::CheckMetered,
        Scenario::Floor,
        false,
    ),
    (
        "consume_over_floor_throughput",
        "consume / floor throughput",
        Scenario::Consume,
        Scenario::Floor,
        false,
    ),
    (
        "consume_lease_over_floor_throughput",
        "consume_lease / floor throughput",
        Scenario::ConsumeLease,
        Scenario::Floor,
        false,
    ),
    (
        "check_over_health_throughput",
        "Check / health throughput",
        Scenario::Check,
        Scenario::Health,
        false,
    ),
    (
        "batch_over_check_decisions",
        "CheckBatch / Check decisions per second",
        Scenario::Batch,
        Scenario::Check,
        true,
    ),
    (
        "batch100_over_check_decisions",
        "batch100 / check decisions per second",
        Scenario::Batch100,
        Scenario::Check,
        true,
    ),
    (
        "check_redis_over_check_throughput",
        "check_redis / check throughput",
        Scenario::CheckRedis,
        Scenario::Check,
        false,
    ),
    (
        "cold_over_check_redis_throughput",
        "cold / check_redis throughput",
        Scenario::Cold,
        Scenario::CheckRedis,
        false,
    ),
    (
        "consume_over_check_redis_throughput",
        "consume / check_redis throughput",
        Scenario::Consume,
        Scenario::CheckRedis,
        false,
    ),
    (
        "consume_lease_over_check_redis_throughput",
        "consume_lease / check_redis throughput",
        Scenario::ConsumeLease,
        Scenario::CheckRedis,
        false,
    ),
    (
        "consume_over_check_metered_throughput",
        "consume / check_metered throughput",
        Scenario::Consume,
        Scenario::CheckMetered,
        false,
    ),
    (
        "consume_lease_over_check_metered_throughput",
        "consume_lease / check_metered throughput",
        Scenario::ConsumeLease,
        Scenario::CheckMetered,
        false,
    ),
    (
        "check_unix_over_check_throughput",
        "check_unix / check throughput",
        Scenario::CheckUnix,
        Scenario::Check,
        false,
    ),
    (
        "check_reload_over_check_throughput",
        "check_reload / check throughput",
        Scenario::CheckReload,
        Scenario::Check,
        false,
    ),
];

/// The throughput ratios of the scenarios that ran: (key, label, ratio).
fn ratios(outcomes: &[Outcome]) -> Vec<(&'static str, &'static str, Ratio)> {
    RATIOS
        .iter()
        .filter_map(|&(key, label, n, d, per_decision)| {
            Some((key, label, ratio(outcomes, n, d, per_decision)?))
        })
        .collect()
}

/// Latency ratios (pooled p50 and p99): JSON key, label, scenario, the
/// scenario it is over.
const LATENCY_RATIOS: [(&str, &str, Scenario, Scenario); 4] = [
    (
        "check_over_floor_latency",
        "check / floor",
        Scenario::Check,
        Scenario::Floor,
    ),
    (
        "check_redis_over_check_latency",
        "check_redis / check",
        Scenario::CheckRedis,
        Scenario::Check,
    ),
    (
        "check_if1_over_check_latency",
        "check_if1 / check",
        Scenario::CheckIf1,
        Scenario::Check,
    ),
    (
        "check_if64_over_check_latency",
        "check_if64 / check",
        Scenario::CheckIf64,
        Scenario::Check,
    ),
];

/// `scenario` / `base` pooled latency at p50 and p99, when both ran.
fn latency_over(outcomes: &[Outcome], scenario: Scenario, base: Scenario) -> Option<(f64, f64)> {
    let latency = |scenario| find(outcomes, scenario)?.latency.as_ref();
    let (n, base) = (latency(scenario)?, latency(base)?);
    (base.p50 > 0.0 && base.p99 > 0.0).then(|| (n.p50 / base.p50, n.p99 / base.p99))
}

/// The per-round section of the table: each scenario's calls/s, then the
/// ratios of the same round; median, min, max and every round's value.
fn per_round(
    out: &mut String,
    outcomes: &[Outcome],
    settings: &Settings,
    ratios: &[(&str, &str, Ratio)],
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
        row(out, &format!("{} calls/s", outcome.label), &values, 0);
    }
    for (_, label, ratio) in ratios {
        row(out, label, &ratio.per_round, 3);
    }
    let pooled: Vec<String> = ratios
        .iter()
        .filter_map(|(_, label, ratio)| Some(format!("{label} {:.3}", ratio.pooled?)))
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

/// The servers, for the table's header.
fn servers_text(servers: &Servers, settings: &Settings) -> String {
    let mut out = String::new();
    let threads = settings.server_threads.map_or_else(
        || "tokio's default worker threads (one per CPU)".to_string(),
        |n| format!("TOKIO_WORKER_THREADS={n}"),
    );
    if let Some(target) = settings.target {
        let _ = write!(
            out,
            "external at {target}{}",
            settings
                .target_pid
                .map_or_else(String::new, |pid| format!(" (pid {pid})"))
        );
        return out;
    }
    let _ = write!(out, "processes of {} ({threads})", servers.binary.display());
    if let Some(file) = &servers.file {
        let _ = write!(
            out,
            "\n         file:  pid {} at {}{}; a copy of policies/, the repository's entitlements/",
            file.pid(),
            file.addr,
            servers
                .unix_socket
                .as_ref()
                .map_or_else(String::new, |s| format!(" and {}", s.display()))
        );
    }
    if let Some(redis) = &servers.redis_server {
        let _ = write!(
            out,
            "\n         redis-server {} (pid {}): {} tenants{}",
            redis.url(),
            redis.pid(),
            servers.tenants.len(),
            if servers.cold_tenants.is_empty() {
                String::new()
            } else {
                format!(" and {} cold tenants", servers.cold_tenants.len())
            }
        );
    }
    if let Some(redis) = &servers.redis {
        let _ = write!(
            out,
            "\n         redis: pid {} at {}; snapshots from Redis, cache TTL 24 h",
            redis.pid(),
            redis.addr
        );
    }
    if let Some(cold) = &servers.cold {
        let _ = write!(
            out,
            "\n         cold:  pid {} at {}; snapshots from Redis, cache_max_bytes {} KiB",
            cold.pid(),
            cold.addr,
            COLD_CACHE_MAX_BYTES / 1024
        );
    }
    out
}

fn table(outcomes: &[Outcome], settings: &Settings, servers: &str) -> String {
    let (cpus, model) = machine();
    let mut out = String::new();
    let _ = writeln!(out, "machine: {cpus} CPUs, {model}");
    let _ = writeln!(out, "server:  {servers}");
    let _ = writeln!(
        out,
        "client:  {} worker threads, {} connections per server, {} in flight (unless the scenario says otherwise); {}",
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
        "{:<14} {:>9} {:>6} {:>9} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>5} {:>7}",
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
        "srv µs",
        "cli µs",
        "redis µs",
        "redis cmd",
        "trips",
        "RSS MiB"
    );
    let show = |value: Option<f64>, precision: usize| {
        value.map_or_else(|| "-".to_string(), |v| format!("{v:.precision$}"))
    };
    for outcome in outcomes {
        let decisions = (outcome.decisions_per_call > 0).then(|| outcome.decisions_per_sec());
        let _ = write!(
            out,
            "{:<14} {:>9} {:>6} {:>9.0} {:>11}",
            outcome.label,
            outcome.calls,
            outcome.errors,
            outcome.calls_per_sec(),
            show(decisions, 0)
        );
        match &outcome.latency {
            Some(l) => {
                let _ = write!(
                    out,
                    " {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
                    l.p50, l.p90, l.p99, l.p999, l.max
                );
            }
            None => {
                let _ = write!(
                    out,
                    " {:>8} {:>8} {:>8} {:>8} {:>8}",
                    "-", "-", "-", "-", "-"
                );
            }
        }
        let _ = writeln!(
            out,
            " {:>8} {:>8} {:>8} {:>9} {:>5} {:>7}",
            show(outcome.cpu_us_per_call(outcome.server_cpu), 1),
            show(outcome.cpu_us_per_call(outcome.client_cpu), 1),
            show(outcome.cpu_us_per_call(outcome.redis_cpu), 1),
            show(outcome.redis_commands_per_call().map(|(all, _)| all), 2),
            show(outcome.redis_round_trips_per_call(), 3),
            show(
                outcome.server_rss_bytes.map(|b| b as f64 / 1024.0 / 1024.0),
                1
            ),
        );
    }

    let ratios = ratios(outcomes);
    let _ = writeln!(out);
    if settings.rounds == 1 {
        for (_, label, ratio) in &ratios {
            if let Some(pooled) = ratio.pooled {
                let _ = writeln!(out, "{:<41}{pooled:.3}", format!("{label}:"));
            }
        }
    } else {
        per_round(&mut out, outcomes, settings, &ratios);
    }
    for (_, label, scenario, base) in LATENCY_RATIOS {
        if let Some((p50, p99)) = latency_over(outcomes, scenario, base) {
            let _ = writeln!(
                out,
                "{label} latency (all rounds pooled): p50 {p50:.3}, p99 {p99:.3}"
            );
        }
    }
    let _ = writeln!(out);
    for outcome in outcomes {
        if let Some(versions) = outcome.versions {
            let sent: u64 = outcome.rounds.iter().filter_map(|r| r.reloads_sent).sum();
            let loaded: usize = outcome.rounds.iter().filter_map(|r| r.reloads_loaded).sum();
            let _ = writeln!(
                out,
                "{}: {versions} distinct policy versions in the measured answers; {sent} SIGHUPs sent, {loaded} policy sets loaded while measuring",
                outcome.label
            );
        }
        if outcome.scenario == Scenario::Cold {
            let _ = writeln!(
                out,
                "{}: every measured answer was read from Redis (a cache hit is an error)",
                outcome.label
            );
        }
    }
    for outcome in outcomes {
        if let Some(error) = &outcome.first_error {
            let _ = writeln!(
                out,
                "{}: {} errors, first: {error}",
                outcome.label, outcome.errors
            );
        }
    }
    let _ = writeln!(
        out,
        "srv / cli / redis µs: CPU time per call of the server process, of the load generator's \
         client threads and of redis-server while measuring; redis cmd: commands redis-server \
         processed per call (those scripts run included; JSON: per command); trips: Redis round trips \
         per call (the scripts and MGETs tollgate sends); RSS: the server's VmRSS after a slice (largest)."
    );
    out
}

fn spread_json(spread: Option<Spread>) -> serde_json::Value {
    spread.map_or(
        serde_json::Value::Null,
        |s| json!({"median": s.median, "min": s.min, "max": s.max}),
    )
}

fn ratio_json(ratio: &Ratio) -> serde_json::Value {
    let spread = ratio.spread();
    json!({
        "per_round": ratio.per_round,
        "median": spread.as_ref().map(|s| s.median),
        "min": spread.as_ref().map(|s| s.min),
        "max": spread.as_ref().map(|s| s.max),
        "pooled": ratio.pooled,
    })
}

fn servers_json(
    servers: &Servers,
    settings: &Settings,
    memory_at_end: &[(Role, Memory)],
) -> serde_json::Value {
    if let Some(target) = settings.target {
        return json!({
            "mode": "external",
            "address": target.to_string(),
            "pid": settings.target_pid,
        });
    }
    let process = |role: Role| {
        let process = servers.process(role)?;
        let memory = memory_at_end
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, m)| m);
        Some(json!({
            "pid": process.pid(),
            "address": process.addr.to_string(),
            "vm_rss_bytes_at_end": memory.map(|m| m.rss_bytes),
            "vm_hwm_bytes_at_end": memory.map(|m| m.hwm_bytes),
        }))
    };
    let mut file = process(Role::File);
    if let (Some(file), Some(socket)) = (file.as_mut(), &servers.unix_socket) {
        file["unix_socket"] = socket.display().to_string().into();
    }
    json!({
        "mode": "processes",
        "binary": servers.binary.display().to_string(),
        "tokio_worker_threads": settings.server_threads,
        "file": file,
        "redis": process(Role::Redis),
        "cold": process(Role::Cold).map(|mut cold| {
            cold["cache_max_bytes"] = COLD_CACHE_MAX_BYTES.into();
            cold["cold_tenants"] = servers.cold_tenants.len().into();
            cold
        }),
        "redis_server": servers.redis_server.as_ref().map(|redis| json!({
            "url": redis.url(),
            "pid": redis.pid(),
            "tenants": servers.tenants,
        })),
        "cache_ttl_ms": REDIS_CACHE_TTL_MS,
    })
}

fn to_json(outcomes: &[Outcome], settings: &Settings, servers: serde_json::Value) -> String {
    let (cpus, model) = machine();
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
                        "redis_cpu_seconds": r.redis_cpu,
                        "redis_commands": r.redis_commands,
                        "server_vm_rss_bytes": r.server_memory.map(|m| m.rss_bytes),
                        "server_vm_hwm_bytes": r.server_memory.map(|m| m.hwm_bytes),
                        "policy_versions": (o.scenario == Scenario::CheckReload).then_some(r.versions),
                        "reloads_sent": r.reloads_sent,
                        "policy_sets_loaded": r.reloads_loaded,
                    })
                })
                .collect();
            let per_round = o.round_calls_per_sec();
            json!({
                "scenario": o.scenario.name(),
                "label": o.label,
                "rpc": o.scenario.rpc(),
                "server": match o.scenario.role() {
                    _ if settings.target.is_some() => "external",
                    Role::File | Role::Unix => "file",
                    Role::Redis => "redis",
                    Role::Cold => "cold",
                },
                "in_flight": o.in_flight,
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
                "redis_cpu_seconds": o.redis_cpu,
                "server_cpu_us_per_call": o.cpu_us_per_call(o.server_cpu),
                "client_cpu_us_per_call": o.cpu_us_per_call(o.client_cpu),
                "redis_cpu_us_per_call": o.cpu_us_per_call(o.redis_cpu),
                "redis_commands": o.redis_commands,
                "redis_commands_per_call": o.redis_commands_per_call().map(|(all, each)| json!({
                    "all": all,
                    "each": each,
                })),
                "redis_round_trips_per_call": o.redis_round_trips_per_call(),
                "server_vm_rss_mib": o.server_rss_bytes.map(|b| b as f64 / 1024.0 / 1024.0),
                "policy_versions": o.versions,
                "calls_per_sec_per_round": per_round,
                "calls_per_sec_over_rounds": spread_json(spread(per_round.iter().copied())),
                "rounds": rounds,
            })
        })
        .collect();
    let mut ratios_json = serde_json::Map::new();
    for (key, _, ratio) in ratios(outcomes) {
        ratios_json.insert(key.to_string(), ratio_json(&ratio));
    }
    for (key, _, scenario, base) in LATENCY_RATIOS {
        if let Some((p50, p99)) = latency_over(outcomes, scenario, base) {
            ratios_json.insert(key.to_string(), json!({"p50": p50, "p99": p99}));
        }
    }
    let report = json!({
        "machine": {"cpus": cpus, "model": model},
        "servers": servers,
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
        "ratios": ratios_json,
    });
    serde_json::to_string_pretty(&report).unwrap_or_default()
}

// ---------------------------------------------------------------------------

/// Runs the load generator with this process's arguments, starting the
/// servers it needs from `binary` (the `tollgate` binary).
pub fn main(binary: &Path) -> ExitCode {
    let args = Args::parse();
    if !selected(&args.filters, "loadgen") {
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
            "loadgen: test mode (run without `cargo bench`): {} scenario(s), {:.1} s each in {} round(s); \
             use `cargo bench --bench loadgen --features bench-floor` or --duration for a measurement",
            settings.scenarios.len(),
            settings.duration.as_secs_f64(),
            settings.rounds
        );
    }
    let servers = match Servers::start(&settings, binary) {
        Ok(servers) => servers,
        Err(problem) => {
            eprintln!("loadgen: {problem}");
            return ExitCode::FAILURE;
        }
    };
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.client_threads)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build();
    let result = match client {
        Ok(client) => {
            let result = client.block_on(drive(&settings, &servers));
            // Drops the connections before the servers stop.
            client.shutdown_timeout(Duration::from_secs(1));
            result
        }
        Err(error) => Err(format!("cannot build the client runtime: {error}")),
    };
    let memory_at_end: Vec<(Role, Memory)> = [Role::File, Role::Redis, Role::Cold]
        .into_iter()
        .filter_map(|role| Some((role, servers.process(role)?.memory()?)))
        .collect();
    let servers_text = servers_text(&servers, &settings);
    let servers_json = servers_json(&servers, &settings, &memory_at_end);
    let stop_problems = servers.stop();
    for problem in &stop_problems {
        eprintln!("loadgen: {problem}");
    }

    let outcomes = match result {
        Ok(outcomes) => outcomes,
        Err(problem) => {
            eprintln!("loadgen: {problem}");
            return ExitCode::FAILURE;
        }
    };
    let json =
        (args.json || args.json_out.is_some()).then(|| to_json(&outcomes, &settings, servers_json));
    if let (Some(path), Some(json)) = (&args.json_out, &json) {
        if let Err(error) = std::fs::write(path, format!("{json}\n")) {
            eprintln!("loadgen: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("loadgen: JSON written to {}", path.display());
    }
    match (&json, args.json) {
        (Some(json), true) => println!("{json}"),
        _ => print!("{}", table(&outcomes, &settings, &servers_text)),
    }
    let failures: Vec<String> = outcomes.iter().filter_map(Outcome::failure).collect();
    for failure in &failures {
        eprintln!("loadgen: {failure}");
    }
    if outcomes.iter().any(|o| o.errors > 0) || !failures.is_empty() || !stop_problems.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
