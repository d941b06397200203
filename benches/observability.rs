//! What observability costs a `Check`: the release binary twice, side by side,
//! driven over gRPC in interleaved rounds.
//!
//! * `off`: `tollgate serve` with no OTLP endpoint, no metrics endpoint and no
//!   decision log (and no `OTEL_*` variable at all);
//! * `on`: the same binary exporting every span over OTLP/gRPC to a collector
//!   in this process (which counts and drops them), serving `/metrics`, and
//!   writing a decision-log record of every decision, with its context, to a
//!   file (sample 1).
//!
//! Both are separate processes (the binary cargo builds for benches), so the
//! `off` server has no tracing layer, exporter or log writer at all. Each
//! round drives one server and then the other for a slice of the measured
//! time (the order alternates), so that the machine's drift hits both alike.
//! Reported: calls/s, latency percentiles and the servers' CPU time per call
//! (from `/proc/<pid>/task/*/schedstat`: `tollgate_testkit::measure`), and
//! the on/off ratios per round (median, min, max) and pooled. `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` and
//! `OTEL_BSP_*` in this process's environment are passed to the `on` server.
//!
//! Run: `cargo bench --bench observability -- [OPTIONS]` (see `--help` and
//! `benches/README.md`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a broken setup should abort loudly"
)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tollgate_testkit::bench::selected;
use tollgate_testkit::client::{bounded_channel, try_http_get};
use tollgate_testkit::fixtures::{example_entitlements, example_policies};
use tollgate_testkit::request::use_request;
use tollgate_testkit::server::ServerProcess;

/// Deadline of one RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest run accepted for `--duration`, in seconds.
const MAX_SECONDS: f64 = 3600.0;

/// Check throughput and latency with tracing export, metrics and full
/// decision logging on, against all of them off.
#[derive(Debug, Parser)]
#[command(name = "observability")]
struct Args {
    /// Measured seconds per configuration in total, split over the rounds
    /// [default: 20; 0.6 in test mode].
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Rounds; each drives both servers once [default: 10; 2 in test mode].
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Unmeasured seconds before each slice.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.3)]
    settle: f64,
    /// HTTP/2 connections per server.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// What the `on` server turns on (to attribute the cost): any of
    /// `tracing`, `metrics`, `decision-log`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tracing,metrics,decision-log",
        value_parser = ["tracing", "metrics", "decision-log"]
    )]
    on: Vec<String>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; without it this is a short smoke run.
    #[arg(long, hide = true)]
    bench: bool,
    /// Filters passed by `cargo bench -- FILTER`: when any is given and none
    /// is a part of "observability", nothing runs.
    #[arg(hide = true)]
    filters: Vec<String>,
}

/// The collector: counts the spans it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// `/metrics` of a server that serves them: decision-log records queued and
/// dropped.
fn decision_log_counts(server: &ServerProcess) -> Option<(u64, u64)> {
    let address = server.log_field("metrics at /metrics", "address")?;
    let (_, text) = try_http_get(&address, "/metrics").ok()?;
    let count = |result: &str| {
        let series = format!("tollgate_decision_log_records_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str())?.trim().parse().ok())
            .unwrap_or(0)
    };
    Some((count("queued"), count("dropped")))
}

/// One measured slice: every call's latency (µs), errors and the window.
#[derive(Debug, Default, Clone)]
struct Slice {
    latencies_us: Vec<u32>,
    errors: u64,
    seconds: f64,
    server_cpu_us: Option<f64>,
}

/// Drives `channels` closed-loop for `settle` (unmeasured) and then `slice`.
async fn drive(channels: &[Channel], in_flight: usize, settle: Duration, slice: Duration) -> Slice {
    let start = Instant::now() + settle;
    let end = start + slice;
    let mut workers = Vec::new();
    for worker in 0..in_flight {
        let mut client = EntitlementServiceClient::new(channels[worker % channels.len()].clone());
        workers.push(tokio::spawn(async move {
            // acme's member `bob` uses `pdf-export` from BR: an ALLOW.
            let request = use_request("acme", "bob", "pdf-export");
            let mut latencies = Vec::new();
            let mut errors = 0;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let answer = client.check(request.clone()).await;
                let finished = Instant::now();
                let ok = matches!(&answer, Ok(response) if response.get_ref().decision == pb::Decision::Allow as i32);
                if began >= start && finished <= end {
                    if ok {
                        latencies.push(u32::try_from(finished.duration_since(began).as_micros()).unwrap_or(u32::MAX));
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut result = Slice {
        seconds: slice.as_secs_f64(),
        ..Slice::default()
    };
    for worker in workers {
        let (latencies, errors) = worker.await.expect("worker");
        result.latencies_us.extend(latencies);
        result.errors += errors;
    }
    result
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

/// Pooled figures of one configuration.
struct Summary {
    calls: usize,
    errors: u64,
    calls_per_sec: f64,
    p50: u32,
    p90: u32,
    p99: u32,
    p999: u32,
    cpu_us_per_call: Option<f64>,
}

fn summarize(slices: &[Slice]) -> Summary {
    let mut all: Vec<u32> = slices
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let seconds: f64 = slices.iter().map(|s| s.seconds).sum();
    let cpu: Option<f64> = slices.iter().map(|s| s.server_cpu_us).sum();
    Summary {
        calls: all.len(),
        errors: slices.iter().map(|s| s.errors).sum(),
        calls_per_sec: all.len() as f64 / seconds,
        p50: percentile(&all, 50.0),
        p90: percentile(&all, 90.0),
        p99: percentile(&all, 99.0),
        p999: percentile(&all, 99.9),
        cpu_us_per_call: cpu.map(|cpu| cpu / all.len().max(1) as f64),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !selected(&args.filters, "observability") {
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("observability: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let duration = args.duration.unwrap_or(if args.bench { 20.0 } else { 0.6 });
    let rounds = args.rounds.unwrap_or(if args.bench { 10 } else { 2 });
    if !(duration > 0.0 && duration <= MAX_SECONDS) {
        return Err(format!("--duration must be in (0, {MAX_SECONDS}] seconds"));
    }
    if !(1..=1000).contains(&rounds) || duration / rounds as f64 <= 0.05 {
        return Err("--rounds must be 1 to 1000, with at least 0.05 s per slice".to_string());
    }
    if !(0.0..=60.0).contains(&args.settle) {
        return Err("--settle must be 0 to 60 seconds".to_string());
    }
    if args.connections == 0 || args.in_flight == 0 || args.client_threads == 0 {
        return Err(
            "--connections, --in-flight and --client-threads must be at least 1".to_string(),
        );
    }
    let slice = Duration::from_secs_f64(duration / rounds as f64);
    let settle = Duration::from_secs_f64(args.settle);
    let runtime: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("obs-client")
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;

    let collector = Collector::default();
    let collector_address = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Ok::<_, String>(address)
    })?;
    let log_dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let log_file = log_dir.path().join("decisions.jsonl");
    let wants = |feature: &str| args.on.iter().any(|on| on == feature);
    let mut on_env: Vec<(String, String)> = Vec::new();
    if wants("tracing") {
        on_env.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{collector_address}"),
        ));
    }
    if wants("metrics") {
        on_env.push(("TOLLGATE_METRICS_LISTEN".into(), "127.0.0.1:0".into()));
    }
    if wants("decision-log") {
        on_env.push((
            "TOLLGATE_DECISION_LOG".into(),
            log_file.display().to_string(),
        ));
        on_env.push(("TOLLGATE_DECISION_LOG_CONTEXT".into(), "true".into()));
    }
    let passed: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| {
            name.starts_with("OTEL_TRACES_SAMPLER") || name.starts_with("OTEL_BSP_")
        })
        .collect();
    on_env.extend(passed.iter().cloned());
    let spawn = |name: &str, env: &[(String, String)]| {
        ServerProcess::start(
            name,
            env!("CARGO_BIN_EXE_tollgate"),
            &example_policies(),
            &example_entitlements(),
            env,
        )
    };
    let off = spawn("off", &[])?;
    let on = spawn("on", &on_env)?;
    eprintln!(
        "off: pid {} at {}; on: pid {} at {} (OTLP to {collector_address}, decision log {}{})",
        off.pid(),
        off.addr,
        on.pid(),
        on.addr,
        log_file.display(),
        passed
            .iter()
            .map(|(k, v)| format!(", {k}={v}"))
            .collect::<String>()
    );
    let connect_all = |address: SocketAddr| {
        runtime.block_on(async {
            let mut channels = Vec::new();
            for _ in 0..args.connections {
                channels.push(bounded_channel(address, RPC_TIMEOUT).await?);
            }
            Ok::<_, String>(channels)
        })
    };
    let off_channels = connect_all(off.addr)?;
    let on_channels = connect_all(on.addr)?;

    let mut results: [Vec<Slice>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let (server, channels) = if which == 0 {
                (&off, &off_channels)
            } else {
                (&on, &on_channels)
            };
            let warm = if round == 0 { settle * 3 } else { settle };
            let (mut measured, cpu) = runtime.block_on(async {
                let driving = drive(channels, args.in_flight, warm, slice);
                // The server's CPU time at the start and at the end of the
                // measured window.
                let sampler = async {
                    tokio::time::sleep(warm).await;
                    let before = server.cpu();
                    tokio::time::sleep(slice).await;
                    before.zip(server.cpu())
                };
                tokio::join!(driving, sampler)
            });
            measured.server_cpu_us = cpu.map(|(before, after)| after.seconds_since(&before) * 1e6);
            eprintln!(
                "round {}/{rounds} {:>3}: {:>8.0} calls/s",
                round + 1,
                server.name(),
                measured.latencies_us.len() as f64 / measured.seconds
            );
            results[which].push(measured);
        }
    }
    let spans = collector.spans.load(Ordering::Relaxed);
    let logged = decision_log_counts(&on);
    off.stop()?;
    on.stop()?;
    // The file rotates (to .1) past decision_log_max_bytes: count both.
    let records: usize = [log_file.clone(), log_dir.path().join("decisions.jsonl.1")]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.lines().count())
        .sum();
    let (queued, dropped) = logged.unwrap_or((0, 0));
    let spans_after_flush = collector.spans.load(Ordering::Relaxed);

    let off_summary = summarize(&results[0]);
    let on_summary = summarize(&results[1]);
    let throughput_ratios: Vec<f64> = (0..rounds)
        .map(|r| {
            let rate = |s: &Slice| s.latencies_us.len() as f64 / s.seconds;
            rate(&results[1][r]) / rate(&results[0][r])
        })
        .collect();
    let mut p99_ratios: Vec<f64> = (0..rounds)
        .map(|r| {
            let p99 = |s: &Slice| {
                let mut sorted = s.latencies_us.clone();
                sorted.sort_unstable();
                f64::from(percentile(&sorted, 99.0))
            };
            p99(&results[1][r]) / p99(&results[0][r])
        })
        .collect();
    let (throughput_min, throughput_max) = min_max(&throughput_ratios);
    let (p99_min, p99_max) = min_max(&p99_ratios);
    let throughput_median = median(&mut throughput_ratios.clone());
    let p99_median = median(&mut p99_ratios);
    let pooled_throughput = on_summary.calls_per_sec / off_summary.calls_per_sec;
    let pooled_p99 = f64::from(on_summary.p99) / f64::from(off_summary.p99.max(1));
    let total_calls = off_summary.calls + on_summary.calls;
    let errors = off_summary.errors + on_summary.errors;

    if args.json {
        let summary = |s: &Summary| {
            serde_json::json!({
                "calls": s.calls, "errors": s.errors, "calls_per_sec": s.calls_per_sec,
                "p50_us": s.p50, "p90_us": s.p90, "p99_us": s.p99, "p999_us": s.p999,
                "server_cpu_us_per_call": s.cpu_us_per_call,
            })
        };
        let output = serde_json::json!({
            "rounds": rounds, "slice_seconds": slice.as_secs_f64(),
            "connections": args.connections, "in_flight": args.in_flight,
            "off": summary(&off_summary), "on": summary(&on_summary),
            "throughput_on_over_off": {"per_round": throughput_ratios, "median": throughput_median, "min": throughput_min, "max": throughput_max, "pooled": pooled_throughput},
            "p99_on_over_off": {"median": p99_median, "min": p99_min, "max": p99_max, "pooled": pooled_p99},
            "spans_exported": spans_after_flush, "spans_before_shutdown": spans, "decision_log_records_in_files": records,
            "decision_log_queued": queued, "decision_log_dropped": dropped,
        });
        println!("{output:#}");
    } else {
        println!(
            "observability: {rounds} rounds of {:.2} s per server, {} connections, {} in flight; on: {}",
            slice.as_secs_f64(),
            args.connections,
            args.in_flight,
            args.on.join(",")
        );
        println!("| server | calls | calls/s | p50 µs | p90 µs | p99 µs | p99.9 µs | server CPU µs/call |");
        println!("|---|---|---|---|---|---|---|---|");
        for (name, s) in [("off", &off_summary), ("on", &on_summary)] {
            println!(
                "| {name} | {} | {:.0} | {} | {} | {} | {} | {} |",
                s.calls,
                s.calls_per_sec,
                s.p50,
                s.p90,
                s.p99,
                s.p999,
                s.cpu_us_per_call
                    .map_or("n/a".to_string(), |cpu| format!("{cpu:.1}"))
            );
        }
        println!(
            "on/off throughput: median {throughput_median:.3} (min {throughput_min:.3}, max {throughput_max:.3}), pooled {pooled_throughput:.3}  [goal ≥ 0.95]"
        );
        println!(
            "on/off p99:        median {p99_median:.3} (min {p99_min:.3}, max {p99_max:.3}), pooled {pooled_p99:.3}  [goal ≤ 1.10]"
        );
        println!(
            "work done by `on`: {spans_after_flush} spans exported ({:.2} per measured call; {spans} before shutdown); decision-log records {queued} queued, {dropped} dropped ({records} in the last two files); errors: {errors}",
            spans_after_flush as f64 / on_summary.calls.max(1) as f64
        );
    }
    Ok(errors == 0 && total_calls > 0 && off_summary.calls > 0 && on_summary.calls > 0)
}
