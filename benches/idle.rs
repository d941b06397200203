//! What an idle sidecar costs its pod: the resident memory and the CPU of a
//! `tollgate serve` process (the binary cargo built for the bench) with the
//! shipped catalog (`policies/`) and a Redis source holding the shipped
//! tenants (`entitlements/*.json`, put through the validated write path into
//! a `redis-server` started for the bench), on the default configuration
//! otherwise.
//!
//! After SERVING, every tenant is asked one `Check` over gRPC, so that each
//! snapshot is read from Redis and cached as in a pod that has served
//! traffic; each answer must carry its snapshot's version (read from Redis,
//! not the files). Then, after a 2 s settle, nothing is asked for
//! `--seconds` (60): the window. Measured over it: the process's CPU time (every
//! thread's, from `/proc/<pid>/task/*/schedstat`) as a share of one core, its
//! resident memory (`VmRSS`) sampled every second (the largest and the last)
//! and `VmHWM`, and the commands Redis served in the window (`INFO
//! commandstats`: the invalidation subscription's heartbeat `PING`s, one
//! every 4 s while idle, and anything else the sidecar does while idle, with
//! `INFO` itself left out).
//!
//! Targets (issue: CPU per decision): resident memory ≤ 32 MiB and CPU ≤ 0.2%
//! of a core, heartbeats included; a missed target exits with status 1 under
//! `cargo bench`. Under `cargo test --benches` (no `--bench`) it runs an 8 s
//! window on the test build, checks that the tenants were served from Redis
//! and that the heartbeats ran, and judges no target.
//!
//! Run: `cargo bench --bench idle` (~70 s after the build), `-- --seconds
//! 300` for a longer window, `-- --huge-pages` to serve with
//! `transparent_huge_pages: true`, `-- --json` for JSON on stdout. Numbers in
//! `benches/README.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a broken setup should abort loudly"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tollgate::api::pb;
use tollgate::store::redis_client::RedisConn;
use tollgate::store::remote::IDLE_HEARTBEAT;
use tollgate_testkit::answer::{snapshot_version, summary};
use tollgate_testkit::bench::{machine, selected};
use tollgate_testkit::client::bounded_channel;
use tollgate_testkit::fixtures::{example_entitlements, example_policies, policies};
use tollgate_testkit::redis_server::{put_shipped_tenants, Options, RedisServer};
use tollgate_testkit::request::use_request;
use tollgate_testkit::server::ServerProcess;

/// Resident memory an idle sidecar may hold (issue: CPU per decision).
const TARGET_MIB: f64 = 32.0;
/// Share of one core an idle sidecar may use, in percent.
const TARGET_CPU_PERCENT: f64 = 0.2;
/// Between the warm-up and the window: the last answers' work is done.
const SETTLE: Duration = Duration::from_secs(2);
/// Between memory samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(about = "Resident memory and CPU of an idle tollgate sidecar on Redis")]
struct Args {
    /// The idle window, in seconds [default: 60; 8 in test mode].
    #[arg(long)]
    seconds: Option<u64>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Serve with `transparent_huge_pages: true` (the heap may be backed by
    /// transparent huge pages), to compare.
    #[arg(long)]
    huge_pages: bool,
    /// Passed by `cargo bench`; without it (`cargo test --benches`), a
    /// short window and no target judged.
    #[arg(long, hide = true)]
    bench: bool,
    /// Name filters passed by `cargo bench -- FILTER`.
    #[arg(hide = true)]
    filters: Vec<String>,
}

/// What the window showed.
struct Idle {
    tenants: usize,
    window: Duration,
    cpu_seconds: f64,
    rss_start: u64,
    rss_max: u64,
    rss_end: u64,
    hwm: u64,
    after_start: u64,
    /// Commands Redis served in the window, by command (INFO left out).
    redis_commands: BTreeMap<String, u64>,
}

impl Idle {
    fn cpu_percent(&self) -> f64 {
        self.cpu_seconds / self.window.as_secs_f64() * 100.0
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Redis's per-command call counts now, `INFO` (this bench's own) left out.
fn redis_counts(redis: &RedisServer) -> Result<BTreeMap<String, u64>, String> {
    redis
        .command_calls()
        .ok_or_else(|| "redis-server: INFO commandstats is unreadable".to_string())
}

/// Puts the shipped tenants into Redis; returns them.
fn load(redis: &RedisServer) -> Result<Vec<String>, String> {
    let policies = policies();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot build a runtime: {error}"))?;
    runtime.block_on(async {
        let conn = RedisConn::connect(&redis.settings())
            .await
            .map_err(|error| format!("cannot connect to redis: {error}"))?;
        put_shipped_tenants(&conn, &policies).await
    })
}

/// One `Check` per tenant; every answer must come from the tenant's Redis
/// snapshot.
fn warm(server: &ServerProcess, tenants: &[String]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot build a runtime: {error}"))?;
    runtime.block_on(async {
        let channel = bounded_channel(server.addr, Duration::from_secs(5)).await?;
        let mut client = pb::entitlement_service_client::EntitlementServiceClient::new(channel);
        for tenant in tenants {
            let answer = client
                .check(use_request(tenant, "alice", "pdf-export"))
                .await
                .map_err(|status| format!("check of {tenant}: {status}"))?
                .into_inner();
            let source = answer
                .freshness
                .as_ref()
                .map(|freshness| freshness.source());
            if snapshot_version(&answer) == 0 || source != Some(pb::SnapshotSource::Redis) {
                return Err(format!(
                    "check of {tenant} was not answered from its Redis snapshot: {}",
                    summary(&answer)
                ));
            }
        }
        Ok(())
    })
}

fn measure(binary: &Path, window: Duration, huge_pages: bool) -> Result<Idle, String> {
    let redis = RedisServer::try_start(Options::default())?;
    let tenants = load(&redis)?;
    let server = ServerProcess::start(
        "idle",
        binary,
        &example_policies(),
        &example_entitlements(),
        &[
            ("TOLLGATE_REDIS_URL", redis.url()),
            ("TOLLGATE_TRANSPARENT_HUGE_PAGES", huge_pages.to_string()),
        ],
    )?;
    let after_start = server.memory().ok_or("the server is gone")?.rss_bytes;
    warm(&server, &tenants)?;
    std::thread::sleep(SETTLE);

    let commands_before = redis_counts(&redis)?;
    let cpu_before = server.cpu().ok_or("the server is gone")?;
    let started = Instant::now();
    let rss_start = server.memory().ok_or("the server is gone")?.rss_bytes;
    let mut rss_max = rss_start;
    while started.elapsed() < window {
        std::thread::sleep(SAMPLE_EVERY.min(window.saturating_sub(started.elapsed())));
        rss_max = rss_max.max(server.memory().ok_or("the server is gone")?.rss_bytes);
    }
    let cpu_after = server.cpu().ok_or("the server is gone")?;
    let window = started.elapsed();
    let memory = server.memory().ok_or("the server is gone")?;
    let commands_after = redis_counts(&redis)?;
    server.stop()?;

    let redis_commands = commands_after
        .into_iter()
        .filter_map(|(command, after)| {
            let served = after - commands_before.get(&command).copied().unwrap_or(0);
            (served > 0).then_some((command, served))
        })
        .collect();
    Ok(Idle {
        tenants: tenants.len(),
        window,
        cpu_seconds: cpu_after.seconds_since(&cpu_before),
        rss_start,
        rss_max: rss_max.max(memory.rss_bytes),
        rss_end: memory.rss_bytes,
        hwm: memory.hwm_bytes,
        after_start,
        redis_commands,
    })
}

/// What a line says of its target: nothing when met, `MISSED`, or that the
/// test build's numbers are not judged.
fn verdict(judged: bool, met: bool) -> &'static str {
    match (judged, met) {
        (false, _) => " (the test build: not judged)",
        (true, true) => "",
        (true, false) => ": MISSED",
    }
}

fn bench(args: &Args) -> Result<bool, String> {
    let window = Duration::from_secs(args.seconds.unwrap_or(if args.bench { 60 } else { 8 }));
    if window.is_zero() {
        return Err("--seconds must be at least 1".to_string());
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_tollgate"));
    let idle = measure(binary, window, args.huge_pages)?;

    // The heartbeat runs while idle, at its idle pace: about one PING per
    // IDLE_HEARTBEAT reached Redis in the window (a stalled subscription
    // would show none, a heartbeat at its busy pace eight times as many).
    let pings = idle.redis_commands.get("ping").copied().unwrap_or(0);
    let expected = window.as_secs_f64() / IDLE_HEARTBEAT.as_secs_f64();
    if (pings as f64) < (expected / 2.0).floor() || (pings as f64) > expected.ceil() + 1.0 {
        return Err(format!(
            "{pings} PINGs reached Redis in {:.1} s; the idle heartbeat sends one every {} ms",
            window.as_secs_f64(),
            IDLE_HEARTBEAT.as_millis()
        ));
    }

    let memory_ok = mib(idle.rss_max) <= TARGET_MIB;
    let cpu_ok = idle.cpu_percent() <= TARGET_CPU_PERCENT;
    let (cores, cpu) = machine();
    if args.json {
        println!(
            "{}",
            json!({
                "bench": "idle",
                "machine": {"cores": cores, "cpu": cpu},
                "tenants": idle.tenants,
                "window_seconds": idle.window.as_secs_f64(),
                "cpu_seconds": idle.cpu_seconds,
                "cpu_percent_of_core": idle.cpu_percent(),
                "rss_after_start_bytes": idle.after_start,
                "rss_window_start_bytes": idle.rss_start,
                "rss_max_bytes": idle.rss_max,
                "rss_end_bytes": idle.rss_end,
                "hwm_bytes": idle.hwm,
                "redis_commands": idle.redis_commands,
                "targets": {"rss_mib": TARGET_MIB, "cpu_percent": TARGET_CPU_PERCENT},
                "met": {"memory": memory_ok, "cpu": cpu_ok},
            })
        );
    } else {
        let commands: Vec<String> = idle
            .redis_commands
            .iter()
            .map(|(command, count)| format!("{command} {count}"))
            .collect();
        println!(
            "idle: {} tenants cached from Redis, {:.1} s window on {cores} cores ({cpu})",
            idle.tenants,
            idle.window.as_secs_f64()
        );
        println!(
            "  resident: {:.1} MiB after start, {:.1} MiB at the window's start, \
             {:.1} MiB max, {:.1} MiB at its end (VmHWM {:.1} MiB); target {TARGET_MIB} MiB{}",
            mib(idle.after_start),
            mib(idle.rss_start),
            mib(idle.rss_max),
            mib(idle.rss_end),
            mib(idle.hwm),
            verdict(args.bench, memory_ok)
        );
        println!(
            "  CPU: {:.4} s in {:.1} s = {:.3}% of a core; target {TARGET_CPU_PERCENT}%{}",
            idle.cpu_seconds,
            idle.window.as_secs_f64(),
            idle.cpu_percent(),
            verdict(args.bench, cpu_ok)
        );
        println!(
            "  Redis commands in the window: {}",
            if commands.is_empty() {
                "none".to_string()
            } else {
                commands.join(", ")
            }
        );
    }
    Ok(!args.bench || (memory_ok && cpu_ok))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !selected(&args.filters, "idle") {
        return ExitCode::SUCCESS;
    }
    match bench(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(problem) => {
            eprintln!("idle: {problem}");
            ExitCode::FAILURE
        }
    }
}
