//! The HTTP front door under load: `--in-flight` HTTP/1.1 connections (16),
//! each with one request in flight, send back to back for `--seconds` (8)
//! per scenario, to one server process of the built binary:
//!
//! - `floor`: `POST /bench/floor` with `/v1/check`'s body, the empty handler
//!   on the same listener (compiled only for this benchmark, feature
//!   `bench-floor`): admitted, read and parsed as JSON like a check, and
//!   answered with a fixed body of a CheckResponse's size, no decision;
//! - `healthz`: `GET /healthz`, a second reference (no body, no admission);
//! - `check`: `POST /v1/check`, the example's ALLOW for bob;
//! - `authzen-100`: `POST /access/v1/evaluations` with 100 evaluations, each
//!   a decision.
//!
//! Reported per scenario: calls per second, decisions per second, p50 and
//! p99 latency, the server's CPU time per call; and `check`'s throughput
//! and p99 as shares of the floor's. Every
//! answer is checked (status 200, and an ALLOW or `true` where one is due):
//! a wrong answer fails the run.
//!
//! `cargo bench --bench http` measures the release build; `cargo test
//! --benches` runs it in test mode (1 s per scenario) on the test build.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_testkit::fixtures::{example_entitlements, example_policies};
use tollgate_testkit::http::HttpClient;
use tollgate_testkit::redis_server::free_port;
use tollgate_testkit::request::check_str;
use tollgate_testkit::server::ServerProcess;

struct Options {
    seconds: f64,
    in_flight: usize,
}

fn options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|arg| arg == "--bench");
    let value = |name: &str| tollgate_testkit::bench::number_arg(&args, name);
    Ok(Options {
        seconds: value("--seconds")?.unwrap_or(if bench { 8.0 } else { 1.0 }),
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a small count"
        )]
        in_flight: value("--in-flight")?.map_or(16, |n| n as usize),
    })
}

/// One scenario: what each call sends and how its answer is checked.
struct Scenario {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: String,
    /// Decisions per call.
    decisions: usize,
    /// What a correct answer's body contains.
    expect: &'static str,
}

/// What one scenario measured.
struct Measured {
    calls: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
}

fn scenarios() -> Vec<Scenario> {
    let check = serde_json::to_string(&check_str("acme User:bob use Feature:pdf-export"))
        .unwrap_or_default();
    let features = ["pdf-export", "sso", "payments", "audit-log"];
    let evaluations: Vec<serde_json::Value> = (0..100)
        .map(|i| json!({"resource": {"type": "Feature", "id": features[i % features.len()]}}))
        .collect();
    let authzen = json!({
        "subject": {"type": "User", "id": "bob"},
        "action": {"name": "use"},
        "context": {"country": "BR", "now": {"__extn": {"fn": "datetime", "arg": "2026-06-01T00:00:00Z"}}},
        "evaluations": evaluations,
    });
    vec![
        Scenario {
            name: "floor",
            method: "POST",
            path: "/bench/floor",
            body: check.clone(),
            decisions: 0,
            expect: "DECISION_ALLOW",
        },
        Scenario {
            name: "healthz",
            method: "GET",
            path: "/healthz",
            body: String::new(),
            decisions: 0,
            expect: "SERVING",
        },
        Scenario {
            name: "check",
            method: "POST",
            path: "/v1/check",
            body: check,
            decisions: 1,
            expect: "DECISION_ALLOW",
        },
        Scenario {
            name: "authzen-100",
            method: "POST",
            path: "/access/v1/evaluations",
            body: authzen.to_string(),
            decisions: 100,
            expect: "\"decision\":true",
        },
    ]
}

async fn run(address: &str, scenario: &Scenario, options: &Options) -> Result<Measured, String> {
    let body = hyper::body::Bytes::from(scenario.body.clone());
    let deadline = Instant::now() + Duration::from_secs_f64(options.seconds);
    let started = Instant::now();
    let failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut workers = Vec::new();
    for _ in 0..options.in_flight {
        let mut client = HttpClient::connect(address).await?;
        let body = body.clone();
        let method = scenario.method;
        let path = scenario.path;
        let expect = scenario.expect;
        let failure = Arc::clone(&failure);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                match client.send(method, path, body.clone(), &[]).await {
                    Ok(answer)
                        if answer.status == 200 && memchr(expect.as_bytes(), &answer.body) =>
                    {
                        latencies.push(sent.elapsed());
                    }
                    Ok(answer) => {
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                            "{method} {path}: {} {}",
                            answer.status,
                            String::from_utf8_lossy(&answer.body)
                        ));
                        break;
                    }
                    Err(error) => {
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                        break;
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.map_err(|error| error.to_string())?);
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(failure) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(format!("{}: {failure}", scenario.name));
    }
    if latencies.is_empty() {
        return Err(format!("{}: no call was answered", scenario.name));
    }
    latencies.sort_unstable();
    let at = |share: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a sorted sample"
        )]
        let index = ((latencies.len() as f64 * share) as usize).min(latencies.len() - 1);
        latencies[index]
    };
    Ok(Measured {
        calls: latencies.len(),
        seconds,
        p50: at(0.50),
        p99: at(0.99),
    })
}

fn memchr(needle: &[u8], haystack: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("http: {error}");
            return ExitCode::FAILURE;
        }
    };
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let server = match ServerProcess::start(
        "http",
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[
            ("TOLLGATE_HTTP_LISTEN", address.as_str()),
            ("TOLLGATE_AUTHZEN_TENANT", "tenant:acme"),
        ],
    ) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("http: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("http: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (cores, cpu) = tollgate_testkit::bench::machine();
    println!(
        "http front door: {} connections x 1 in flight, {} s per scenario ({cores} cores, {cpu})",
        options.in_flight, options.seconds
    );
    let mut floor: Option<(f64, Duration)> = None;
    for scenario in scenarios() {
        let before = server.cpu();
        let measured = match runtime.block_on(run(&address, &scenario, &options)) {
            Ok(measured) => measured,
            Err(error) => {
                eprintln!("http: {error}");
                return ExitCode::FAILURE;
            }
        };
        #[allow(clippy::cast_precision_loss, reason = "a count of calls")]
        let rate = measured.calls as f64 / measured.seconds;
        #[allow(clippy::cast_precision_loss, reason = "a count of decisions")]
        let decisions = rate * scenario.decisions as f64;
        #[allow(clippy::cast_precision_loss, reason = "a count of calls")]
        let cpu_per_call = match (before, server.cpu()) {
            (Some(before), Some(after)) => {
                after.seconds_since(&before) / measured.calls as f64 * 1e6
            }
            _ => f64::NAN,
        };
        let share = match (scenario.name, floor) {
            ("floor", _) => {
                floor = Some((rate, measured.p99));
                String::new()
            }
            (_, Some((floor_rate, floor_p99))) if scenario.decisions == 1 => format!(
                "  {:.2} of the floor's throughput, p99 {:.2}x the floor's",
                rate / floor_rate,
                measured.p99.as_secs_f64() / floor_p99.as_secs_f64()
            ),
            _ => String::new(),
        };
        println!(
            "{:<12} {:>9.0} calls/s {:>10.0} decisions/s  p50 {:>6.0} us  p99 {:>6.0} us  server {:>5.1} us CPU/call{share}",
            scenario.name,
            rate,
            decisions,
            measured.p50.as_secs_f64() * 1e6,
            measured.p99.as_secs_f64() * 1e6,
            cpu_per_call,
        );
    }
    if let Err(error) = server.stop() {
        eprintln!("http: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
