//! The hostile-load measurement: `--attackers` concurrent callers (16), each
//! on its own connection, send maximum-size hostile requests of every shape
//! back to back for `--seconds` (30) while one well-formed caller keeps
//! checking. Reported: the server's peak resident memory (`VmHWM`), the
//! hostile calls made and how each was answered, and the well-formed
//! caller's latency (p50, p99, max).
//!
//! It fails when a call is not answered with a clean gRPC status (a dropped
//! connection, an internal error), when a well-formed check is not answered
//! ALLOW, or when the peak passes `--limit-mib` (160).
//!
//! `--only TEXT` sends only the shapes whose name contains `TEXT`;
//! `--env KEY=VALUE` (repeated) adds to the environment of the server under
//! attack, which starts as the image and the Helm chart run it:
//! `MIMALLOC_PURGE_DELAY=0`, so that the allocator hands freed request
//! buffers back to the system at once (`--env MIMALLOC_PURGE_DELAY=10`, the
//! allocator's own default, shows the difference).
//!
//! `cargo bench --bench hostile` runs the measurement on the release build;
//! `cargo test --benches` runs it in test mode (3 s) on the test build, with
//! the same callers, shapes and limit.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tollgate::api::pb;
use tollgate_testkit::client::call_raw;
use tollgate_testkit::fixtures::{example_entitlements, example_policies};
use tollgate_testkit::measure::memory;
use tollgate_testkit::request::check;
use tollgate_testkit::server::ServerProcess;
use tonic::Code;

/// The default `max_request_bytes`, less room for framing.
const MAX_BODY: usize = (4 << 20) - 64;

const CHECK: &str = "/tollgate.v1.EntitlementService/Check";
const BATCH: &str = "/tollgate.v1.EntitlementService/CheckBatch";
const REPORT: &str = "/tollgate.v1.EntitlementService/ReportUsage";

struct Options {
    seconds: f64,
    attackers: usize,
    limit_mib: f64,
    /// Only the shapes whose name contains this.
    only: Option<String>,
    /// `--env KEY=VALUE`: configuration of the server under attack.
    env: Vec<(String, String)>,
}

fn options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|arg| arg == "--bench");
    let value = |name: &str| tollgate_testkit::bench::number_arg(&args, name);
    Ok(Options {
        seconds: value("--seconds")?.unwrap_or(if bench { 30.0 } else { 3.0 }),
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a small count"
        )]
        attackers: value("--attackers")?.map_or(16, |n| n as usize),
        limit_mib: value("--limit-mib")?.unwrap_or(160.0),
        only: args
            .iter()
            .position(|arg| arg == "--only")
            .and_then(|at| args.get(at + 1).cloned()),
        env: [("MIMALLOC_PURGE_DELAY".to_string(), "0".to_string())]
            .into_iter()
            .chain(
                args.windows(2)
                    .filter(|pair| pair[0] == "--env")
                    .map(|pair| match pair[1].split_once('=') {
                        Some((key, value)) => Ok((key.to_string(), value.to_string())),
                        None => Err(format!("--env {}: expected KEY=VALUE", pair[1])),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
            .collect(),
    })
}

fn tiny() -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Bool(true)),
    }
}

fn text(bytes: usize) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::String("x".repeat(bytes))),
    }
}

/// Every hostile shape: its name, method and body, each about 4 MiB.
fn shapes() -> Vec<(&'static str, &'static str, tonic::codegen::Bytes)> {
    let empty_pairs = |tag: u8| [tag, 0x00].repeat(MAX_BODY / 2);
    let huge_set = pb::CheckRequest {
        context: [(
            "s".to_string(),
            pb::Value {
                kind: Some(pb::value::Kind::Set(pb::ValueSet {
                    values: vec![tiny(); MAX_BODY / 4 - 16],
                })),
            },
        )]
        .into_iter()
        .collect(),
        ..check("acme", "User:bob", "use", "Feature:pdf-export")
    };
    let mut deep = tiny();
    for _ in 0..200 {
        deep = pb::Value {
            kind: Some(pb::value::Kind::Record(pb::ValueRecord {
                values: [("r".to_string(), deep)].into_iter().collect(),
            })),
        };
    }
    let deep_records = pb::CheckRequest {
        context: [("deep".to_string(), deep)].into_iter().collect(),
        ..check("acme", "User:bob", "use", "Feature:pdf-export")
    };
    let many_keys = pb::CheckRequest {
        context: (0..MAX_BODY / 14)
            .map(|key| (format!("{key:x}"), tiny()))
            .collect(),
        ..check("acme", "User:bob", "use", "Feature:pdf-export")
    };
    // Within every count limit: 19,000 context keys with long strings, and
    // a batch of 100 checks bringing 64 entities each (6,400 in all), so
    // that these are decoded and converted before they are answered.
    let wide_context = pb::CheckRequest {
        context: (0..19_000)
            .map(|key| (format!("k{key}"), text(200)))
            .collect(),
        ..check("acme", "User:bob", "use", "Feature:pdf-export")
    };
    let entity = |index: usize| pb::Entity {
        uid: Some(pb::EntityRef {
            r#type: "Team".to_string(),
            id: format!("t{index}"),
        }),
        attrs: [("note".to_string(), text(500))].into_iter().collect(),
        parents: Vec::new(),
        tags: Default::default(),
    };
    let many_entities = pb::CheckBatchRequest {
        checks: (0..100)
            .map(|_| pb::CheckRequest {
                entities: (0..64).map(entity).collect(),
                ..check("acme", "User:bob", "use", "Feature:pdf-export")
            })
            .collect(),
    };
    let huge_tenant = pb::CheckRequest {
        tenant: "t".repeat(MAX_BODY - 32),
        ..pb::CheckRequest::default()
    };
    vec![
        ("empty-check batch", BATCH, empty_pairs(0x0a).into()),
        ("empty usage reports", REPORT, empty_pairs(0x12).into()),
        ("empty request entities", CHECK, empty_pairs(0x32).into()),
        ("huge set", CHECK, huge_set.encode_to_vec().into()),
        ("deep records", CHECK, deep_records.encode_to_vec().into()),
        (
            "thousands of context keys",
            CHECK,
            many_keys.encode_to_vec().into(),
        ),
        ("wide context", CHECK, wide_context.encode_to_vec().into()),
        (
            "thousands of request entities",
            BATCH,
            many_entities.encode_to_vec().into(),
        ),
        ("huge tenant id", CHECK, huge_tenant.encode_to_vec().into()),
    ]
}

/// A clean answer: a status tollgate gives on purpose, not a broken call.
fn clean(code: Code) -> bool {
    matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::NotFound
            | Code::FailedPrecondition
    )
}

/// One shape's calls: its name, how many, and the codes they got, counted.
type ShapeTally = (&'static str, u64, Vec<(Code, u64)>);

#[derive(Default)]
struct Tally {
    shapes: Vec<ShapeTally>,
    broken: Vec<String>,
}

fn percentile(sorted: &[Duration], share: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let at = ((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at]
}

fn run(options: &Options) -> Result<(), String> {
    let server = ServerProcess::start(
        "tollgate",
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &options.env,
    )?;
    let pid = server.pid();
    let url = server.url();
    let mut shapes = shapes();
    if let Some(only) = &options.only {
        shapes.retain(|(name, _, _)| name.contains(only.as_str()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async {
        let well_formed = tollgate_testkit::client::channel(&url).await;
        let mut client =
            pb::entitlement_service_client::EntitlementServiceClient::new(well_formed.clone());
        // Warm: the first answers, the allocator's arenas.
        for _ in 0..100 {
            client
                .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
                .await
                .map_err(|status| format!("warm-up check: {status}"))?;
        }
        let before = memory(pid).ok_or("cannot read the server's memory")?;
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally {
            shapes: shapes.iter().map(|(name, _, _)| (*name, 0, Vec::new())).collect(),
            broken: Vec::new(),
        }));
        let hostile_calls = Arc::new(AtomicU64::new(0));
        let mut attackers = Vec::new();
        for attacker in 0..options.attackers {
            let channel = tollgate_testkit::client::channel(&url).await;
            let shapes = shapes.clone();
            let stop = Arc::clone(&stop);
            let tally = Arc::clone(&tally);
            let calls = Arc::clone(&hostile_calls);
            attackers.push(tokio::spawn(async move {
                // Each attacker starts at another shape, so that every shape
                // is in flight at once.
                let mut next = attacker % shapes.len();
                while !stop.load(Ordering::Relaxed) {
                    let (name, method, body) = &shapes[next];
                    let code = match call_raw(channel.clone(), method, body.clone()).await {
                        Ok(_) => Code::Ok,
                        Err(status) => status.code(),
                    };
                    calls.fetch_add(1, Ordering::Relaxed);
                    let mut tally = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if !clean(code) {
                        tally.broken.push(format!("{name}: {code:?}"));
                    }
                    let entry = &mut tally.shapes[next];
                    entry.1 += 1;
                    match entry.2.iter_mut().find(|(seen, _)| *seen == code) {
                        Some((_, count)) => *count += 1,
                        None => entry.2.push((code, 1)),
                    }
                    drop(tally);
                    next = (next + 1) % shapes.len();
                }
            }));
        }
        // The well-formed caller, until the attack ends.
        let started = Instant::now();
        let mut latencies = Vec::new();
        let mut wrong = Vec::new();
        while started.elapsed().as_secs_f64() < options.seconds {
            let sent = Instant::now();
            match client
                .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
                .await
            {
                Ok(response) => {
                    latencies.push(sent.elapsed());
                    if response.into_inner().decision != pb::Decision::Allow as i32 {
                        wrong.push("a well-formed check was not answered ALLOW".to_string());
                    }
                }
                Err(status) => wrong.push(format!("a well-formed check failed: {status}")),
            }
        }
        stop.store(true, Ordering::Relaxed);
        for attacker in attackers {
            let _ = attacker.await;
        }
        let after = memory(pid).ok_or("cannot read the server's memory")?;
        latencies.sort_unstable();
        let tally = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mib = |bytes: u64| {
            #[allow(clippy::cast_precision_loss, reason = "a report")]
            let mib = bytes as f64 / f64::from(1 << 20);
            mib
        };
        println!(
            "hostile: {} attackers x {:.0} s, {} hostile calls; server peak resident memory {:.1} MiB (before the attack {:.1} MiB; limit {:.0} MiB)",
            options.attackers,
            options.seconds,
            hostile_calls.load(Ordering::Relaxed),
            mib(after.hwm_bytes),
            mib(before.hwm_bytes),
            options.limit_mib,
        );
        for (name, calls, codes) in &tally.shapes {
            let codes: Vec<String> = codes.iter().map(|(code, n)| format!("{code:?} x{n}")).collect();
            println!("  {name:<32} {calls:>6} calls: {}", codes.join(", "));
        }
        println!(
            "  well-formed checks meanwhile: {} answered, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latencies.len(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
        let mut problems: Vec<String> = tally.broken.iter().take(5).cloned().collect();
        problems.extend(wrong.into_iter().take(5));
        if tally.shapes.iter().any(|(_, calls, _)| *calls == 0) {
            problems.push("a shape was never sent: run longer".to_string());
        }
        if latencies.is_empty() {
            problems.push("no well-formed check was answered".to_string());
        }
        if mib(after.hwm_bytes) > options.limit_mib {
            problems.push(format!(
                "peak resident memory {:.1} MiB is over the limit of {:.0} MiB",
                mib(after.hwm_bytes),
                options.limit_mib
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    })?;
    server
        .stop()
        .map_err(|error| format!("stopping the server: {error}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("hostile: {error}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hostile: FAILED\n{error}");
            ExitCode::FAILURE
        }
    }
}
