//! Benchmarks of the Redis source of tenant snapshots, against a real
//! `redis-server` started on a free loopback port (see `benches/README.md`):
//!
//! * `miss`: latency of `RemoteSnapshots::lookup` for a tenant that is not
//!   cached (Redis read + parse + cache insert), for generated snapshots of
//!   100, 1,000 and 10,000 entities shaped like `entitlements/acme.json`;
//!   every measured lookup is a distinct tenant, so every one is a real miss.
//!   Also times the two parts alone: the Redis read (`RedisConn::read_snapshot`)
//!   and the parse (`TenantSnapshot::parse`).
//! * `propagation`: two in-process sidecars (`tollgate::app::serve_on` on
//!   Redis, each on its own tokio runtime) are polled over gRPC in tight
//!   loops while a writer puts new versions of a tenant with
//!   `tollgate::admin::put`; for each put and sidecar, the time from just
//!   before the put to the first `Check` answer carrying the new
//!   `snapshot_version`.
//! * `memory`: in a child process of its own, RSS before and after caching
//!   10,000 acme-sized tenants (20 entities, `tollgate_testkit::tenants`) through
//!   one `RemoteSnapshots`, per tenant, beside the cache's own weight
//!   (`status().weighted_bytes`). With `--memory-users N` the tenants are
//!   `entitlements/acme.json` itself with N users (`tenants::AcmeShape`;
//!   `--memory-users 5` is the small tenant of `benches/memory.md`). The
//!   cache is made large enough to keep every tenant.
//!
//! The allocator is mimalloc, as in the `tollgate` binary.
//!
//! Run: `cargo bench --bench redis_source` (~1 minute), `-- --quick` for a
//! smoke run of seconds, `-- --json` for JSON on stdout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a broken setup should abort loudly"
)]

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tollgate::store::redis_client::keys::{snapshot_key, version_key, INVALIDATE_CHANNEL};
use tollgate::store::redis_client::{Read, RedisConn, RedisSettings};
use tollgate::store::remote::{CacheSettings, RemoteSnapshots};
use tollgate::store::{Lookup, Store};
use tollgate_engine::{PolicySnapshot, SnapshotSource, TenantSnapshot};
use tollgate_testkit::bench::{run_child, selected};
use tollgate_testkit::client::bounded_channel;
use tollgate_testkit::fixtures::repository;
use tollgate_testkit::measure::kb_field;
use tollgate_testkit::redis_server::{Options, RedisServer};
use tollgate_testkit::request::use_request;
use tollgate_testkit::tenants::{self, AcmeShape};

/// The binary's allocator: measured memory and allocation costs match
/// production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Entities of a generated snapshot besides its users (`tenants::snapshot_json`).
const FIXED_ENTITIES: usize = 10;
/// Snapshot sizes of the miss path, in entities.
const MISS_SIZES: [usize; 3] = [100, 1_000, 10_000];
/// Users of an acme-sized tenant: 20 entities, as `entitlements/acme.json`.
const SMALL_USERS: usize = 10;
/// Documents up to this size are parsed on the async worker
/// (`store::remote::PARSE_INLINE_MAX_BYTES`), larger ones on the blocking pool.
const PARSE_INLINE_MAX_BYTES: usize = 64 * 1024;
/// `redis_timeout_ms` by default. A lookup waits at most twice as long for a
/// read (parse included) before answering `entitlements_unavailable`.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// `redis_timeout_ms` of the miss part: long enough that no lookup gives up,
/// so that the table shows how long a miss takes; the lookups slower than
/// twice the default are counted apart.
const MISS_REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Unmeasured lookups before each size's measured ones.
const MISS_WARMUP: usize = 3;
/// The principal of the propagation checks: user 1 is a `member`.
const PRINCIPAL: usize = 1;
/// Tenant of the propagation part.
const PROPAGATION_TENANT: &str = "propagate";
/// Longest wait for one put to reach both sidecars.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one gRPC call.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a sidecar to serve.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest run of a child process (one miss size, or the memory part).
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Lookups in flight while the memory child fills its cache.
const MEMORY_CONCURRENCY: usize = 8;
/// Tenants looked up (and cached) by the memory child before its first RSS
/// reading, so that connection buffers and code pages are already counted.
const MEMORY_WARMUP_TENANTS: usize = 32;
/// `cache_max_bytes` of the memory child: every tenant stays cached.
const MEMORY_CACHE_MAX_BYTES: u64 = 1 << 40;
/// `cache_max_bytes` by default, for the report.
const DEFAULT_CACHE_MAX_BYTES: u64 = 256 << 20;
/// Most tenants accepted for `--tenants`.
const MAX_TENANTS: usize = 200_000;
/// Most iterations accepted for `--iterations`.
const MAX_ITERATIONS: usize = 100_000;

/// Benchmarks of the Redis snapshot source: miss latency, invalidation
/// propagation with two sidecars, memory per cached tenant.
#[derive(Debug, Parser)]
#[command(name = "redis_source")]
struct Args {
    /// Parts to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "miss,propagation,memory"
    )]
    parts: Vec<Part>,
    /// Smoke run of a few seconds: fewer samples, iterations and tenants.
    #[arg(long)]
    quick: bool,
    /// Puts in the propagation part [default: 200; 20 with --quick].
    #[arg(long, value_name = "N")]
    iterations: Option<usize>,
    /// Tenants cached by the memory part [default: 10000; 1000 with --quick].
    #[arg(long, value_name = "N")]
    tenants: Option<usize>,
    /// Tenants of the memory part shaped exactly like entitlements/acme.json
    /// with N users (5: the small tenant, 21 entities) instead of the
    /// 20-entity tenants of `tollgate_testkit::tenants`.
    #[arg(long, value_name = "N")]
    memory_users: Option<usize>,
    /// Entities of the tenant written in the propagation part (at least 12;
    /// 20 is the size of entitlements/acme.json).
    #[arg(long, value_name = "N", default_value_t = 20)]
    propagation_entities: usize,
    /// Tokio worker threads of each sidecar in the propagation part.
    #[arg(long, value_name = "N", default_value_t = 1)]
    sidecar_threads: usize,
    /// Print the results as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; without it (`cargo test --benches`), a
    /// smoke run as with --quick.
    #[arg(long, hide = true)]
    bench: bool,
    /// Internal: run as a child process of the miss or the memory part.
    #[arg(long, value_enum, hide = true)]
    child: Option<Child>,
    /// Internal: the redis-server a child reads.
    #[arg(long, hide = true)]
    redis_url: Option<String>,
    /// Internal: snapshot size (entities) of a miss child.
    #[arg(long, hide = true)]
    entities: Option<usize>,
    /// Internal: measured lookups of a miss child.
    #[arg(long, hide = true)]
    samples: Option<usize>,
    /// Benchmark name filters passed by `cargo bench -- FILTER`: when any is
    /// given and none is a part of "redis_source", nothing runs.
    #[arg(hide = true)]
    filters: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// Miss-path latency for 100, 1,000 and 10,000 entities.
    Miss,
    /// Invalidation propagation to two sidecars.
    Propagation,
    /// Memory per cached tenant.
    Memory,
}

/// What a child process measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Child {
    Miss,
    Memory,
}

/// Settings after defaults.
#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    parts: Vec<Part>,
    /// Measured lookups per miss size.
    /// Snapshot sizes (entities) of the miss part and their measured lookups.
    miss: Vec<(usize, usize)>,
    iterations: usize,
    propagation_entities: usize,
    tenants: usize,
    memory_users: Option<usize>,
    sidecar_threads: usize,
}

fn settings(args: &Args) -> Result<Settings, String> {
    let quick = args.quick || !args.bench;
    let iterations = args.iterations.unwrap_or(if quick { 20 } else { 200 });
    let tenants = args.tenants.unwrap_or(if quick { 1_000 } else { 10_000 });
    if !(1..=MAX_ITERATIONS).contains(&iterations) {
        return Err(format!("--iterations must be in [1, {MAX_ITERATIONS}]"));
    }
    if !(1..=MAX_TENANTS).contains(&tenants) {
        return Err(format!("--tenants must be in [1, {MAX_TENANTS}]"));
    }
    if !(FIXED_ENTITIES + 2..=1_000_000).contains(&args.propagation_entities) {
        return Err(format!(
            "--propagation-entities must be in [{}, 1000000]",
            FIXED_ENTITIES + 2
        ));
    }
    if args
        .memory_users
        .is_some_and(|users| !(1..=100_000).contains(&users))
    {
        return Err("--memory-users must be in [1, 100000]".to_string());
    }
    if !(1..=64).contains(&args.sidecar_threads) {
        return Err("--sidecar-threads must be in [1, 64]".to_string());
    }
    let mut parts = Vec::new();
    for part in &args.parts {
        if !parts.contains(part) {
            parts.push(*part);
        }
    }
    Ok(Settings {
        quick,
        parts,
        miss: if !quick {
            MISS_SIZES.into_iter().zip([500, 200, 50]).collect()
        } else if !args.bench && cfg!(debug_assertions) {
            // `cargo test --benches`: an unoptimised build parses 10,000
            // entities too slowly for a smoke test.
            MISS_SIZES[..2].iter().copied().zip([10, 3]).collect()
        } else {
            MISS_SIZES.into_iter().zip([20, 10, 3]).collect()
        },
        iterations,
        propagation_entities: args.propagation_entities,
        tenants,
        memory_users: args.memory_users,
        sidecar_threads: args.sidecar_threads,
    })
}

// ---------------------------------------------------------------------------
// Shared helpers

/// The repository's policies, loaded as the server loads them.
fn load_policies() -> Result<(Arc<Store>, Arc<PolicySnapshot>), String> {
    let store = Arc::new(Store::policies_only(repository().join("policies")));
    let outcome = store.reload_all();
    let catalog = store
        .catalog()
        .ok_or_else(|| format!("cannot load policies/: {outcome:?}"))?;
    Ok((store, Arc::clone(&catalog.policies)))
}

/// How tollgate reaches the benchmark's redis-server: one node, no
/// credentials, `timeout` as `redis_timeout_ms`.
fn redis_settings(url: String, timeout: Duration) -> RedisSettings {
    RedisSettings {
        urls: vec![url],
        cluster: false,
        username: None,
        password: None,
        tls_ca_file: None,
        timeout,
    }
}

fn runtime(name: &str, threads: usize) -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|error| format!("cannot build the {name} runtime: {error}"))
}

/// Latency summary in microseconds (nearest-rank percentiles).
#[derive(Debug, Clone, Copy)]
struct Summary {
    count: usize,
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn summary(samples: &[Duration]) -> Option<Summary> {
    let mut sorted: Vec<Duration> = samples.to_vec();
    sorted.sort_unstable();
    let last = *sorted.last()?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| {
        let rank = (q * sorted.len() as f64).ceil() as usize;
        us(sorted[rank.clamp(1, sorted.len()) - 1])
    };
    Some(Summary {
        count: sorted.len(),
        mean: sorted.iter().map(|d| us(*d)).sum::<f64>() / sorted.len() as f64,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: us(last),
    })
}

fn summary_json(summary: Option<Summary>) -> Json {
    summary.map_or(Json::Null, |s| {
        json!({
            "count": s.count,
            "mean_us": s.mean,
            "p50_us": s.p50,
            "p90_us": s.p90,
            "p99_us": s.p99,
            "max_us": s.max,
        })
    })
}

/// `value` µs as text: µs below 10 ms, ms above.
fn time(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// A raw connection for writing fixtures straight into Redis.
async fn raw_connection(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|error| format!("redis client: {error}"))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "redis: no connection within 5 s".to_string())?
    .map_err(|error| format!("redis: {error}"))
}

/// Stores `documents` (tenant, version, JSON) as a writer that bypasses
/// tollgate would: `SET` of both keys, no announcement.
async fn set_snapshots(
    connection: &mut redis::aio::MultiplexedConnection,
    documents: &[(String, u64, Vec<u8>)],
) -> Result<(), String> {
    let mut pipe = redis::pipe();
    for (tenant, version, document) in documents {
        pipe.set(snapshot_key(tenant), document.as_slice())
            .ignore()
            .set(version_key(tenant), *version)
            .ignore();
    }
    tokio::time::timeout(Duration::from_secs(30), pipe.query_async::<()>(connection))
        .await
        .map_err(|_| "redis: pipeline not answered within 30 s".to_string())?
        .map_err(|error| format!("redis: {error}"))
}

async fn flush(connection: &mut redis::aio::MultiplexedConnection) -> Result<(), String> {
    redis::cmd("FLUSHALL")
        .query_async::<()>(connection)
        .await
        .map_err(|error| format!("redis FLUSHALL: {error}"))
}

// ---------------------------------------------------------------------------
// Child processes

/// Minor page faults of this process so far (field 10 of /proc/self/stat).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(7)?.parse().ok()
}

/// Resident set size and its anonymous part, in bytes, from /proc/self/status.
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some((kb_field(&status, "VmRSS:")?, kb_field(&status, "RssAnon:")?))
}

fn summary_from_json(value: &Json) -> Option<Summary> {
    Some(Summary {
        count: usize::try_from(value.get("count")?.as_u64()?).ok()?,
        mean: value.get("mean_us")?.as_f64()?,
        p50: value.get("p50_us")?.as_f64()?,
        p90: value.get("p90_us")?.as_f64()?,
        p99: value.get("p99_us")?.as_f64()?,
        max: value.get("max_us")?.as_f64()?,
    })
}

// ---------------------------------------------------------------------------
// Miss path

struct MissResult {
    entities: usize,
    document_bytes: usize,
    lookup: Option<Summary>,
    read: Option<Summary>,
    parse: Option<Summary>,
    /// Minor page faults per measured lookup, and per parse alone.
    lookup_faults: f64,
    parse_faults: f64,
    /// RSS growth per snapshot cached by the measured lookups.
    rss_per_snapshot: f64,
    /// Measured lookups slower than twice the default `redis_timeout_ms`.
    over_default_bound: u64,
}

impl MissResult {
    fn parsed_on(&self) -> &'static str {
        if self.document_bytes > PARSE_INLINE_MAX_BYTES {
            "blocking pool"
        } else {
            "async worker"
        }
    }
}

fn miss_tenant(entities: usize, index: usize) -> String {
    format!("miss{entities}-{index:05}")
}

/// Each size in a child process of its own, so that every size's cache grows
/// into fresh memory as a starting sidecar's does; the documents are
/// written into Redis by this process before.
fn run_miss(redis: &RedisServer, settings: &Settings) -> Result<Vec<MissResult>, String> {
    let runtime = runtime("tg-miss", 1)?;
    let mut results = Vec::new();
    for &(entities, samples) in &settings.miss {
        eprintln!("redis_source: miss path, {entities} entities, {samples} lookups...");
        let started = Instant::now();
        let document_bytes = runtime.block_on(async {
            let mut raw = raw_connection(&redis.url()).await?;
            flush(&mut raw).await?;
            let mut document_bytes = 0;
            for index in 0..MISS_WARMUP + samples {
                let tenant = miss_tenant(entities, index);
                let document = tenants::snapshot_json(&tenant, 1, entities - FIXED_ENTITIES);
                document_bytes = document.len().max(document_bytes);
                set_snapshots(&mut raw, &[(tenant, 1, document)]).await?;
            }
            Ok::<_, String>(document_bytes)
        })?;
        let report = run_child(
            &[
                "--child".to_string(),
                "miss".to_string(),
                "--redis-url".to_string(),
                redis.url(),
                "--entities".to_string(),
                entities.to_string(),
                "--samples".to_string(),
                samples.to_string(),
            ],
            &[],
            CHILD_TIMEOUT,
        )?;
        let field = |key: &str| {
            report[key]
                .as_f64()
                .ok_or_else(|| format!("miss child report lacks {key}: {report}"))
        };
        results.push(MissResult {
            entities,
            document_bytes,
            lookup: summary_from_json(&report["lookup"]),
            read: summary_from_json(&report["read"]),
            parse: summary_from_json(&report["parse"]),
            lookup_faults: field("lookup_faults")?,
            parse_faults: field("parse_faults")?,
            rss_per_snapshot: field("rss_per_snapshot")?,
            over_default_bound: report["over_default_bound"].as_u64().unwrap_or(0),
        });
        runtime.block_on(async { flush(&mut raw_connection(&redis.url()).await?).await })?;
        eprintln!(
            "redis_source:   done in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(results)
}

/// The miss child: `MISS_WARMUP` unmeasured and `samples` measured lookups,
/// one at a time, each of a tenant not cached; then the Redis read and the
/// parse of the same documents alone.
fn miss_child(url: String, entities: usize, samples: usize) -> Result<Json, String> {
    let runtime = runtime("tg-miss", 2)?;
    // On a worker, as a request handler calls it.
    let task = runtime.spawn(miss_measure(url, entities, samples));
    let report = runtime
        .block_on(task)
        .map_err(|error| format!("miss task failed: {error}"))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    report
}

async fn miss_measure(url: String, entities: usize, samples: usize) -> Result<Json, String> {
    let (store, policies) = load_policies()?;
    let settings = redis_settings(url, MISS_REDIS_TIMEOUT);
    let remote = RemoteSnapshots::new(settings.clone(), CacheSettings::default(), store);
    let link = remote.start().await;
    if !remote.connected() {
        link.abort();
        return Err("the Redis source did not connect".to_string());
    }
    let tenants: Vec<String> = (0..MISS_WARMUP + samples)
        .map(|index| miss_tenant(entities, index))
        .collect();
    let mut lookups = Vec::with_capacity(samples);
    let mut before = None;
    for (index, tenant) in tenants.iter().enumerate() {
        if index == MISS_WARMUP {
            before = rss().zip(minor_faults());
        }
        let started = Instant::now();
        let lookup = remote.lookup(tenant, &policies, None).await;
        let elapsed = started.elapsed();
        match &lookup {
            Lookup::Found {
                snapshot,
                source: SnapshotSource::Redis,
                ..
            } if snapshot.tenant == *tenant && snapshot.version == 1 => {}
            other => {
                link.abort();
                return Err(format!(
                    "lookup of {tenant} ({entities} entities): expected a snapshot read from Redis, got {other:?}"
                ));
            }
        }
        if index >= MISS_WARMUP {
            lookups.push(elapsed);
        }
    }
    let after = rss().zip(minor_faults());
    let reads_sent = remote
        .stats()
        .reads
        .load(std::sync::atomic::Ordering::Relaxed);
    if reads_sent != tenants.len() as u64 {
        return Err(format!(
            "{} lookups sent {reads_sent} reads to Redis",
            tenants.len()
        ));
    }
    let ((rss_before, faults_before), (rss_after, faults_after)) =
        before.zip(after).ok_or("no /proc/self/status or stat")?;

    // The two parts alone, on the same documents: the read script's round
    // trip, and the parse (its result dropped at once, so that its memory
    // is reused by the next one).
    let conn = RedisConn::connect(&settings)
        .await
        .map_err(|error| format!("cannot connect to redis: {error}"))?;
    let mut reads = Vec::with_capacity(samples);
    let mut parses = Vec::with_capacity(samples);
    let mut parse_faults = 0;
    for tenant in &tenants[MISS_WARMUP..] {
        let started = Instant::now();
        let read = conn
            .read_snapshot(tenant, None)
            .await
            .map_err(|error| format!("read of {tenant}: {error}"))?;
        reads.push(started.elapsed());
        let Read::Document { bytes, .. } = read else {
            return Err(format!("read of {tenant}: no document"));
        };
        let tenant = tenant.clone();
        let policies = Arc::clone(&policies);
        let (elapsed, faults) = tokio::task::spawn_blocking(move || {
            let faults = minor_faults().unwrap_or(0);
            let started = Instant::now();
            let parsed =
                TenantSnapshot::parse(&bytes, Some(&tenant), &policies, SnapshotSource::Redis);
            let elapsed = started.elapsed();
            let faults = minor_faults().unwrap_or(0).saturating_sub(faults);
            drop(parsed.map_err(|error| format!("parse of {tenant}: {error}"))?);
            Ok::<_, String>((elapsed, faults))
        })
        .await
        .map_err(|error| format!("parse task: {error}"))??;
        parses.push(elapsed);
        parse_faults += faults;
    }
    link.abort();
    Ok(json!({
        "lookup": summary_json(summary(&lookups)),
        "read": summary_json(summary(&reads)),
        "parse": summary_json(summary(&parses)),
        "over_default_bound": lookups.iter().filter(|d| **d > DEFAULT_REDIS_TIMEOUT * 2).count(),
        "lookup_faults": faults_after.saturating_sub(faults_before) as f64 / samples as f64,
        "parse_faults": parse_faults as f64 / samples as f64,
        "rss_per_snapshot": (rss_after.0 as f64 - rss_before.0 as f64) / samples as f64,
    }))
}

// ---------------------------------------------------------------------------
// Invalidation propagation

/// An in-process sidecar on Redis, on a runtime of its own.
struct Sidecar {
    name: &'static str,
    runtime: Runtime,
    address: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tollgate::app::ServeError>>,
}

impl Sidecar {
    fn start(name: &'static str, threads: usize, redis: RedisSettings) -> Result<Self, String> {
        let runtime = runtime(name, threads)?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .map_err(|error| format!("cannot listen on 127.0.0.1:0: {error}"))?;
        let address = listener
            .local_addr()
            .map_err(|error| format!("no local address: {error}"))?;
        let mut config = tollgate::config::Config::with_dirs(
            repository().join("policies"),
            repository().join("entitlements"),
        );
        config.listen = address;
        config.shutdown_grace = Duration::from_secs(1);
        config.redis = Some(redis);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(tollgate::app::serve_on(config, listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            name,
            runtime,
            address,
            stop,
            task,
        })
    }

    fn shut_down(self) {
        let _ = self.stop.send(());
        let task = self.task;
        match self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await })
        {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => eprintln!("redis_source: {} stopped: {error}", self.name),
            Ok(Err(error)) => eprintln!("redis_source: {} failed: {error}", self.name),
            Err(_) => eprintln!("redis_source: {} did not stop within 5 s", self.name),
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

fn propagation_request() -> pb::CheckRequest {
    use_request(
        PROPAGATION_TENANT,
        &tenants::user_id(PRINCIPAL),
        "pdf-export",
    )
}

/// What one poller saw of one put.
struct Seen {
    /// When the first answer with the new version arrived.
    at: Instant,
    /// Its `freshness.source`.
    source: i32,
    /// Answers before it that were DENY `entitlements_unavailable` (a read
    /// slower than twice `redis_timeout_ms`).
    unavailable: u64,
}

/// Calls Check back to back until an answer carries `version` or a newer
/// one, or `deadline`; every call's round trip goes to `round_trips`.
async fn poll_until(
    client: &mut EntitlementServiceClient<Channel>,
    version: u64,
    deadline: Instant,
    round_trips: &mut Vec<Duration>,
) -> Result<Seen, String> {
    let request = propagation_request();
    let mut unavailable = 0;
    loop {
        let started = Instant::now();
        if started >= deadline {
            return Err(format!(
                "version {version} not seen within {} s",
                PROPAGATION_TIMEOUT.as_secs_f64()
            ));
        }
        let response = client
            .check(request.clone())
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
            .into_inner();
        let at = Instant::now();
        round_trips.push(at - started);
        if response.decision != pb::Decision::Allow as i32 {
            if response
                .reasons
                .first()
                .is_some_and(|reason| reason.code == "entitlements_unavailable")
            {
                unavailable += 1;
                continue;
            }
            return Err(format!("expected ALLOW, got {response:?}"));
        }
        let freshness = response.freshness.unwrap_or_default();
        if freshness.snapshot_version >= version {
            return Ok(Seen {
                at,
                source: freshness.source,
                unavailable,
            });
        }
    }
}

struct PropagationResult {
    iterations: usize,
    /// Entities of the tenant written.
    entities: usize,
    /// Per sidecar: DENY `entitlements_unavailable` answers while polling.
    unavailable: Vec<u64>,
    sidecar_threads: usize,
    /// Per sidecar: put → first answer with the new version.
    sidecars: Vec<(&'static str, Vec<Duration>)>,
    /// Per sidecar: how many of those first answers were `source: REDIS`
    /// (the Check itself waited for the read) rather than `CACHE`.
    from_redis: Vec<u64>,
    /// Put → the invalidation message at a plain subscriber in this process.
    published: Vec<Duration>,
    /// Duration of `admin::put` (validation, script, PUBLISH).
    puts: Vec<Duration>,
    /// Round trips of every poll (the polling resolution).
    round_trips: Vec<Duration>,
}

fn run_propagation(redis: &RedisServer, settings: &Settings) -> Result<PropagationResult, String> {
    let threads = settings.sidecar_threads;
    let sidecars = [
        Sidecar::start("tg-sidecar-a", threads, redis.settings())?,
        Sidecar::start("tg-sidecar-b", threads, redis.settings())?,
    ];
    let client = runtime("tg-client", 2)?;
    let result = client.block_on(propagate(
        redis,
        [sidecars[0].address, sidecars[1].address],
        settings.iterations,
        settings.propagation_entities - FIXED_ENTITIES,
    ));
    client.shutdown_timeout(Duration::from_secs(1));
    for sidecar in sidecars {
        sidecar.shut_down();
    }
    let (sidecar_latencies, from_redis, unavailable, published, puts, round_trips) = result?;
    Ok(PropagationResult {
        iterations: settings.iterations,
        entities: settings.propagation_entities,
        unavailable,
        sidecar_threads: threads,
        sidecars: vec![
            ("sidecar A", sidecar_latencies[0].clone()),
            ("sidecar B", sidecar_latencies[1].clone()),
        ],
        from_redis,
        published,
        puts,
        round_trips,
    })
}

type PropagationSamples = (
    [Vec<Duration>; 2],
    Vec<u64>,
    Vec<u64>,
    Vec<Duration>,
    Vec<Duration>,
    Vec<Duration>,
);

async fn propagate(
    redis: &RedisServer,
    addresses: [std::net::SocketAddr; 2],
    iterations: usize,
    users: usize,
) -> Result<PropagationSamples, String> {
    use tokio_stream::StreamExt as _;

    let (_store, policies) = load_policies()?;
    let mut raw = raw_connection(&redis.url()).await?;
    flush(&mut raw).await?;
    let conn = RedisConn::connect(&redis.settings())
        .await
        .map_err(|error| format!("cannot connect to redis: {error}"))?;
    let document = |version: u64| {
        String::from_utf8(tenants::snapshot_json(PROPAGATION_TENANT, version, users))
            .expect("JSON is UTF-8")
    };
    tollgate::admin::put(&conn, &policies, &document(1))
        .await
        .map_err(|error| format!("put version 1: {error}"))?;

    // A plain subscriber: when the announcement reaches a client of Redis.
    let client = redis::Client::open(redis.url()).map_err(|error| error.to_string())?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(|error| format!("redis pubsub: {error}"))?;
    pubsub
        .subscribe(INVALIDATE_CHANNEL)
        .await
        .map_err(|error| format!("redis subscribe: {error}"))?;
    let (announced_tx, mut announced_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let subscriber = tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let at = Instant::now();
            let payload = message.get_payload_bytes().to_vec();
            let version = std::str::from_utf8(&payload)
                .ok()
                .and_then(|text| text.split_once(' '))
                .filter(|(tenant, _)| *tenant == PROPAGATION_TENANT)
                .and_then(|(_, version)| version.trim().parse::<u64>().ok());
            if let Some(version) = version {
                if announced_tx.send((version, at)).is_err() {
                    break;
                }
            }
        }
    });

    let mut clients = Vec::new();
    for address in addresses {
        let mut client =
            EntitlementServiceClient::new(bounded_channel(address, RPC_TIMEOUT).await?);
        // Serving, with version 1 cached: then each put is an invalidation
        // of a cached snapshot.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ignored = Vec::new();
        loop {
            match poll_until(&mut client, 1, deadline, &mut ignored).await {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(format!("sidecar at {address}: {error}")),
            }
        }
        // Then answers from the cache: an announcement of version 1 that
        // reaches the sidecar after its first read re-reads it once.
        let mut from_cache = 0;
        while from_cache < 3 {
            let response = client
                .check(propagation_request())
                .await
                .map_err(|status| status.message().to_string())?
                .into_inner();
            let source = response.freshness.map(|f| f.source);
            if source == Some(pb::SnapshotSource::Cache as i32) {
                from_cache += 1;
            } else if Instant::now() >= deadline {
                return Err(format!(
                    "sidecar at {address}: no answer from the cache: {source:?}"
                ));
            } else {
                from_cache = 0;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        clients.push(client);
    }

    let mut latencies: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut from_redis = vec![0u64; 2];
    let mut unavailable = vec![0u64; 2];
    let mut published = Vec::with_capacity(iterations);
    let mut puts = Vec::with_capacity(iterations);
    let mut round_trips = Vec::new();
    for iteration in 0..iterations {
        let version = iteration as u64 + 2;
        let text = document(version);
        let deadline = Instant::now() + PROPAGATION_TIMEOUT;
        let pollers: Vec<_> = clients
            .iter()
            .map(|client| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    let mut round_trips = Vec::new();
                    let seen = poll_until(&mut client, version, deadline, &mut round_trips).await;
                    (seen, round_trips)
                })
            })
            .collect();
        let before_put = Instant::now();
        tollgate::admin::put(&conn, &policies, &text)
            .await
            .map_err(|error| format!("put version {version}: {error}"))?;
        puts.push(before_put.elapsed());
        for (index, poller) in pollers.into_iter().enumerate() {
            let (seen, trips) = poller
                .await
                .map_err(|error| format!("poller failed: {error}"))?;
            let seen = seen.map_err(|error| format!("sidecar {index}: {error}"))?;
            latencies[index].push(seen.at - before_put);
            if seen.source == pb::SnapshotSource::Redis as i32 {
                from_redis[index] += 1;
            }
            unavailable[index] += seen.unavailable;
            round_trips.extend(trips);
        }
        let announced = tokio::time::timeout(PROPAGATION_TIMEOUT, async {
            loop {
                match announced_rx.recv().await {
                    Some((seen, at)) if seen == version => return Some(at),
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| format!("the announcement of version {version} did not arrive"))?;
        published.push(announced - before_put);
        // A pause of 5-15 ms, varied so that puts do not keep one phase of
        // the sidecars' 250 ms heartbeat.
        tokio::time::sleep(Duration::from_millis(5 + (iteration as u64 * 7) % 11)).await;
    }
    subscriber.abort();
    Ok((
        latencies,
        from_redis,
        unavailable,
        published,
        puts,
        round_trips,
    ))
}

// ---------------------------------------------------------------------------
// Memory per cached tenant

fn memory_tenant(index: usize) -> String {
    format!("mem-{index:06}")
}

fn memory_warm_tenant(index: usize) -> String {
    format!("memwarm-{index:03}")
}

struct MemoryResult {
    tenants: usize,
    /// What the tenants look like, e.g. "20 entities (tollgate_testkit::tenants)".
    shape: String,
    document_bytes: f64,
    rss_before: u64,
    rss_after: u64,
    anon_before: u64,
    anon_after: u64,
    entries: u64,
    weighted_bytes: u64,
    fill_seconds: f64,
}

impl MemoryResult {
    fn per_tenant(&self, before: u64, after: u64) -> f64 {
        (after as f64 - before as f64) / self.tenants as f64
    }
}

/// The memory part, in the parent: writes the tenants into Redis, runs the
/// child that caches them, reads its report.
fn run_memory(redis: &RedisServer, settings: &Settings) -> Result<MemoryResult, String> {
    let acme = match settings.memory_users {
        Some(_) => Some(AcmeShape::load(repository())?),
        None => None,
    };
    let shape = match (&acme, settings.memory_users) {
        (Some(acme), Some(users)) => format!(
            "{} entities (entitlements/acme.json with {users} users)",
            acme.entity_count(users)
        ),
        _ => format!(
            "{} entities (tollgate_testkit::tenants)",
            SMALL_USERS + FIXED_ENTITIES
        ),
    };
    let document = |tenant: &str| match (&acme, settings.memory_users) {
        (Some(acme), Some(users)) => acme.snapshot_json(tenant, 1, users),
        _ => tenants::snapshot_json(tenant, 1, SMALL_USERS),
    };
    let runtime = runtime("tg-memory", 2)?;
    let document_bytes = runtime.block_on(async {
        let mut raw = raw_connection(&redis.url()).await?;
        flush(&mut raw).await?;
        let mut total = 0usize;
        let names: Vec<String> = (0..MEMORY_WARMUP_TENANTS)
            .map(memory_warm_tenant)
            .chain((0..settings.tenants).map(memory_tenant))
            .collect();
        for chunk in names.chunks(500) {
            let documents: Vec<(String, u64, Vec<u8>)> = chunk
                .iter()
                .map(|tenant| (tenant.clone(), 1, document(tenant)))
                .collect();
            total += documents
                .iter()
                .skip_while(|(tenant, ..)| tenant.starts_with("memwarm-"))
                .map(|(_, _, document)| document.len())
                .sum::<usize>();
            set_snapshots(&mut raw, &documents).await?;
        }
        Ok::<_, String>(total as f64 / settings.tenants as f64)
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));

    let report = run_child(
        &[
            "--child".to_string(),
            "memory".to_string(),
            "--redis-url".to_string(),
            redis.url(),
            "--tenants".to_string(),
            settings.tenants.to_string(),
        ],
        &[],
        CHILD_TIMEOUT,
    )?;
    let number = |key: &str| {
        report[key]
            .as_u64()
            .ok_or_else(|| format!("memory child report lacks {key}: {report}"))
    };
    Ok(MemoryResult {
        tenants: settings.tenants,
        shape,
        document_bytes,
        rss_before: number("rss_before")?,
        rss_after: number("rss_after")?,
        anon_before: number("anon_before")?,
        anon_after: number("anon_after")?,
        entries: number("entries")?,
        weighted_bytes: number("weighted_bytes")?,
        fill_seconds: report["fill_seconds"].as_f64().unwrap_or(0.0),
    })
}

/// The memory child: caches `tenants` tenants through one `RemoteSnapshots`
/// and prints RSS before and after as one JSON line.
fn memory_child(url: String, tenants: usize) -> Result<Json, String> {
    let runtime = runtime("tg-memory", 2)?;
    let report = runtime.block_on(async move {
        let (store, policies) = load_policies()?;
        // Large enough to keep every tenant: the part measures what they
        // take, and reports the weight the cache gives them.
        let remote = RemoteSnapshots::new(
            redis_settings(url, DEFAULT_REDIS_TIMEOUT),
            CacheSettings {
                max_bytes: MEMORY_CACHE_MAX_BYTES,
                ..CacheSettings::default()
            },
            store,
        );
        let link = remote.start().await;
        if !remote.connected() {
            return Err("the Redis source did not connect".to_string());
        }
        let fill = |names: Vec<String>| {
            let remote = Arc::clone(&remote);
            let policies = Arc::clone(&policies);
            async move {
                let mut queue = names.into_iter();
                let mut running = tokio::task::JoinSet::new();
                loop {
                    while running.len() < MEMORY_CONCURRENCY {
                        let Some(tenant) = queue.next() else { break };
                        let remote = Arc::clone(&remote);
                        let policies = Arc::clone(&policies);
                        running.spawn(async move {
                            let lookup = remote.lookup(&tenant, &policies, None).await;
                            match lookup {
                                Lookup::Found { .. } => Ok(()),
                                other => Err(format!("lookup of {tenant}: {other:?}")),
                            }
                        });
                    }
                    match running.join_next().await {
                        Some(done) => done.map_err(|error| error.to_string())??,
                        None => return Ok::<_, String>(()),
                    }
                }
            }
        };
        fill((0..MEMORY_WARMUP_TENANTS).map(memory_warm_tenant).collect()).await?;
        let _ = remote.status();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (rss_before, anon_before) = rss().ok_or("no /proc/self/status")?;
        let started = Instant::now();
        fill((0..tenants).map(memory_tenant).collect()).await?;
        let fill_seconds = started.elapsed().as_secs_f64();
        let status = remote.status();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (rss_after, anon_after) = rss().ok_or("no /proc/self/status")?;
        let reads = remote
            .stats()
            .reads
            .load(std::sync::atomic::Ordering::Relaxed);
        link.abort();
        let expected = (tenants + MEMORY_WARMUP_TENANTS) as u64;
        if status.entries != expected || reads != expected {
            return Err(format!(
                "expected {expected} cached tenants and reads, found {} entries and {reads} reads",
                status.entries
            ));
        }
        Ok(json!({
            "tenants": tenants,
            "rss_before": rss_before,
            "rss_after": rss_after,
            "anon_before": anon_before,
            "anon_after": anon_after,
            "entries": status.entries,
            "weighted_bytes": status.weighted_bytes,
            "redis_reads": reads,
            "fill_seconds": fill_seconds,
        }))
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    report
}

// ---------------------------------------------------------------------------
// Reporting

struct Report {
    miss: Option<Vec<MissResult>>,
    propagation: Option<PropagationResult>,
    memory: Option<MemoryResult>,
    seconds: Vec<(Part, f64)>,
}

fn mib(bytes: f64) -> String {
    if bytes.abs() < 1024.0 * 1024.0 {
        format!("{:.0} KiB", bytes / 1024.0)
    } else {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    }
}

fn table(report: &Report, settings: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine: {}; allocator mimalloc; redis-server on loopback{}",
        machine(),
        if settings.quick { "; QUICK run" } else { "" }
    );
    if let Some(miss) = &report.miss {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "miss path: RemoteSnapshots::lookup of an uncached tenant (read script + parse + cache insert), one at a time"
        );
        let _ = writeln!(
            out,
            "{:>9} {:>10} {:>14} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "entities",
            "doc bytes",
            "parsed on",
            "lookups",
            ">500ms",
            "mean",
            "p50",
            "p99",
            "max",
            "read p50",
            "parse p50",
            "faults/lk",
            "RSS/snap"
        );
        for result in miss {
            let show = |s: Option<Summary>, f: fn(&Summary) -> f64| {
                s.as_ref().map_or_else(|| "-".to_string(), |s| time(f(s)))
            };
            let _ = writeln!(
                out,
                "{:>9} {:>10} {:>14} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10.0} {:>10}",
                result.entities,
                result.document_bytes,
                result.parsed_on(),
                result.lookup.map_or(0, |s| s.count),
                result.over_default_bound,
                show(result.lookup, |s| s.mean),
                show(result.lookup, |s| s.p50),
                show(result.lookup, |s| s.p99),
                show(result.lookup, |s| s.max),
                show(result.read, |s| s.p50),
                show(result.parse, |s| s.p50),
                result.lookup_faults,
                mib(result.rss_per_snapshot),
            );
        }
        let _ = writeln!(
            out,
            "each size in a fresh child process (the cache grows into fresh memory, as a starting sidecar's does);"
        );
        let _ = writeln!(
            out,
            "redis_timeout_ms {} so that no lookup gives up; >500ms: lookups that the default 250 ms would have answered",
            MISS_REDIS_TIMEOUT.as_millis()
        );
        let _ = writeln!(
            out,
            "entitlements_unavailable (a miss waits at most 2 × redis_timeout_ms, parsing included)."
        );
        let _ = writeln!(
            out,
            "read: RedisConn::read_snapshot alone (EVALSHA round trip with the document); parse: TenantSnapshot::parse alone,"
        );
        let _ = writeln!(
            out,
            "its result dropped at once (memory reused; {} minor faults per parse); faults/lk: minor page faults per lookup;",
            miss.iter()
                .map(|r| format!("{:.0}", r.parse_faults))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        let _ = writeln!(
            out,
            "RSS/snap: growth of the resident set per snapshot cached by the measured lookups."
        );
    }
    if let Some(p) = &report.propagation {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "invalidation propagation: {} puts (admin::put) of a {}-entity tenant; 2 sidecars on Redis ({} tokio worker each), each polled by one gRPC Check loop",
            p.iterations, p.entities, p.sidecar_threads
        );
        let _ = writeln!(
            out,
            "{:<34} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "put → ...", "count", "mean", "p50", "p90", "p99", "max"
        );
        let row = |out: &mut String, label: &str, samples: &[Duration]| {
            if let Some(s) = summary(samples) {
                let _ = writeln!(
                    out,
                    "{label:<34} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    s.count,
                    time(s.mean),
                    time(s.p50),
                    time(s.p90),
                    time(s.p99),
                    time(s.max)
                );
            }
        };
        row(&mut out, "put returned (validate+script)", &p.puts);
        row(&mut out, "announcement at a subscriber", &p.published);
        let mut all = Vec::new();
        for (index, (name, samples)) in p.sidecars.iter().enumerate() {
            row(
                &mut out,
                &format!(
                    "first new answer, {name} ({} REDIS)",
                    p.from_redis.get(index).copied().unwrap_or(0)
                ),
                samples,
            );
            all.extend_from_slice(samples);
        }
        row(&mut out, "first new answer, both sidecars", &all);
        row(&mut out, "poll round trip (resolution)", &p.round_trips);
        let _ = writeln!(
            out,
            "(N REDIS): first answers on the new version that waited for the read themselves; the others came from the cache, refreshed by the invalidation."
        );
        if p.unavailable.iter().any(|n| *n > 0) {
            let _ = writeln!(
                out,
                "DENY entitlements_unavailable answers while polling: sidecar A {}, sidecar B {} (reads slower than 2 × redis_timeout_ms)",
                p.unavailable[0], p.unavailable[1]
            );
        }
    }
    if let Some(m) = &report.memory {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "memory: {} tenants of {} cached through one RemoteSnapshots, in a child process (filled in {:.1} s, {} in flight)",
            m.tenants, m.shape, m.fill_seconds, MEMORY_CONCURRENCY
        );
        let _ = writeln!(
            out,
            "  RSS     {} → {}: {:.0} bytes per tenant",
            mib(m.rss_before as f64),
            mib(m.rss_after as f64),
            m.per_tenant(m.rss_before, m.rss_after)
        );
        let _ = writeln!(
            out,
            "  RssAnon {} → {}: {:.0} bytes per tenant",
            mib(m.anon_before as f64),
            mib(m.anon_after as f64),
            m.per_tenant(m.anon_before, m.anon_after)
        );
        let per_entry = m.weighted_bytes as f64 / m.entries.max(1) as f64;
        let _ = writeln!(
            out,
            "  cache: {} entries, weighted {} = {:.0} bytes per entry ({:.2} × the RSS per tenant); document {:.0} bytes",
            m.entries,
            mib(m.weighted_bytes as f64),
            per_entry,
            per_entry / m.per_tenant(m.rss_before, m.rss_after),
            m.document_bytes
        );
        let _ = writeln!(
            out,
            "  the default cache_max_bytes ({}) holds {:.0} such tenants",
            mib(DEFAULT_CACHE_MAX_BYTES as f64),
            DEFAULT_CACHE_MAX_BYTES as f64 / per_entry
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "run time: {}",
        report
            .seconds
            .iter()
            .map(|(part, seconds)| format!("{part:?} {seconds:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}

fn to_json(report: &Report, settings: &Settings) -> String {
    let miss = report.miss.as_ref().map(|results| {
        results
            .iter()
            .map(|r| {
                json!({
                    "entities": r.entities,
                    "document_bytes": r.document_bytes,
                    "parsed_on": r.parsed_on(),
                    "lookup": summary_json(r.lookup),
                    "read": summary_json(r.read),
                    "parse": summary_json(r.parse),
                    "lookups_over_default_bound_500ms": r.over_default_bound,
                    "lookup_minor_faults": r.lookup_faults,
                    "parse_minor_faults": r.parse_faults,
                    "rss_per_snapshot": r.rss_per_snapshot,
                })
            })
            .collect::<Vec<_>>()
    });
    let propagation = report.propagation.as_ref().map(|p| {
        let all: Vec<Duration> = p.sidecars.iter().flat_map(|(_, s)| s.clone()).collect();
        json!({
            "iterations": p.iterations,
            "entities": p.entities,
            "sidecar_threads": p.sidecar_threads,
            "unavailable_answers": p.unavailable,
            "put": summary_json(summary(&p.puts)),
            "announcement": summary_json(summary(&p.published)),
            "sidecars": p.sidecars.iter().zip(&p.from_redis).map(|((name, samples), redis)| json!({
                "name": name,
                "first_new_answer": summary_json(summary(samples)),
                "first_new_answers_from_redis": redis,
            })).collect::<Vec<_>>(),
            "first_new_answer_both": summary_json(summary(&all)),
            "poll_round_trip": summary_json(summary(&p.round_trips)),
        })
    });
    let memory = report.memory.as_ref().map(|m| {
        json!({
            "tenants": m.tenants,
            "shape": m.shape,
            "document_bytes_mean": m.document_bytes,
            "rss_before": m.rss_before,
            "rss_after": m.rss_after,
            "rss_per_tenant": m.per_tenant(m.rss_before, m.rss_after),
            "rss_anon_before": m.anon_before,
            "rss_anon_after": m.anon_after,
            "rss_anon_per_tenant": m.per_tenant(m.anon_before, m.anon_after),
            "cache_entries": m.entries,
            "cache_weighted_bytes": m.weighted_bytes,
            "fill_seconds": m.fill_seconds,
        })
    });
    serde_json::to_string_pretty(&json!({
        "machine": machine(),
        "allocator": "mimalloc",
        "quick": settings.quick,
        "miss": miss,
        "propagation": propagation,
        "memory": memory,
        "seconds": report.seconds.iter().map(|(part, s)| json!({"part": format!("{part:?}").to_lowercase(), "seconds": s})).collect::<Vec<_>>(),
    }))
    .unwrap_or_default()
}

// ---------------------------------------------------------------------------

fn run(settings: &Settings) -> Result<Report, String> {
    let redis = RedisServer::try_start(Options::default())?;
    eprintln!(
        "redis_source: redis-server {} (pid {})",
        redis.url(),
        redis.pid()
    );
    let mut report = Report {
        miss: None,
        propagation: None,
        memory: None,
        seconds: Vec::new(),
    };
    for part in &settings.parts {
        let started = Instant::now();
        match part {
            Part::Miss => report.miss = Some(run_miss(&redis, settings)?),
            Part::Propagation => {
                eprintln!(
                    "redis_source: propagation, {} puts to 2 sidecars...",
                    settings.iterations
                );
                report.propagation = Some(run_propagation(&redis, settings)?);
            }
            Part::Memory => {
                eprintln!(
                    "redis_source: memory, {} tenants in a child process...",
                    settings.tenants
                );
                report.memory = Some(run_memory(&redis, settings)?);
            }
        }
        report
            .seconds
            .push((*part, started.elapsed().as_secs_f64()));
    }
    Ok(report)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(child) = args.child {
        let report = match (child, args.redis_url.clone()) {
            (Child::Miss, Some(url)) => match (args.entities, args.samples) {
                (Some(entities), Some(samples)) if entities > FIXED_ENTITIES && samples > 0 => {
                    miss_child(url, entities, samples)
                }
                _ => Err("--child miss needs --entities (> 10) and --samples".to_string()),
            },
            (Child::Memory, Some(url)) => match args.tenants {
                Some(tenants) if tenants > 0 => memory_child(url, tenants),
                _ => Err("--child memory needs --tenants".to_string()),
            },
            (_, None) => Err("--child needs --redis-url".to_string()),
        };
        return match report {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(problem) => {
                eprintln!("redis_source: {child:?} child: {problem}");
                ExitCode::FAILURE
            }
        };
    }
    if !selected(&args.filters, "redis_source") {
        return ExitCode::SUCCESS;
    }
    let settings = match settings(&args) {
        Ok(settings) => settings,
        Err(problem) => {
            eprintln!("redis_source: {problem}");
            return ExitCode::from(2);
        }
    };
    if !args.bench && !args.quick {
        eprintln!(
            "redis_source: test mode (run without `cargo bench`): a quick smoke run; \
             use `cargo bench --bench redis_source` for a measurement"
        );
    }
    match run(&settings) {
        Ok(report) => {
            if args.json {
                println!("{}", to_json(&report, &settings));
            } else {
                print!("{}", table(&report, &settings));
            }
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("redis_source: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// `N CPUs, model`.
fn machine() -> String {
    let (cpus, model) = tollgate_testkit::bench::machine();
    format!("{cpus} CPUs, {model}")
}
