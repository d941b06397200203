//! Exactness under faults: two sidecars on one `redis-server`, reached
//! through the test kit's fault-injecting proxy, which loses 5% of script
//! replies after Redis ran them (the connection closes under them) and holds
//! another 5% past `redis_timeout_ms`. Clients consume one unit per
//! idempotency key, retrying a key (on the sidecar that answered it) while
//! the answer is `metering_unavailable` or the call fails, as a client
//! should. Checked, for an exact meter and for a lease meter:
//!
//! - the counter in Redis never passes the cap, sampled every 20 ms;
//! - at the end (leases given back) the counter equals the number of keys
//!   answered ALLOW, exactly, and the usage stream holds one event per
//!   allowed key and no other.
//!
//! A third run kills one lease-mode sidecar (SIGKILL) midway and reports the
//! usage events it lost and how long its stock took to come back.
//!
//! `cargo bench --bench faults` runs 10,000 attempts a meter against a cap
//! of 5,000 on the release build; `cargo test --benches` runs 400 against
//! 200 on the test build.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tollgate::store::redis_client::RedisConn;
use tollgate_testkit::fixtures::{document, entity, DataDirs};
use tollgate_testkit::redis_proxy::{Fault, Match, RedisProxy, Rule};
use tollgate_testkit::redis_server::{put, settings, RedisServer};
use tollgate_testkit::request::check;
use tollgate_testkit::server::ServerProcess;
use tonic::transport::Channel;

/// `redis_timeout_ms` of the sidecars; delayed replies come 50 ms after it.
const REDIS_TIMEOUT_MS: u64 = 100;
/// `usage_lease_ttl_ms` and `usage_lease_flush_ms` of the sidecars.
const LEASE_TTL_MS: u64 = 2_000;
const LEASE_FLUSH_MS: u64 = 200;

struct Run {
    attempts: usize,
    cap: i64,
    lease: Option<i64>,
    kill_midway: bool,
}

struct Outcome {
    allowed: BTreeSet<String>,
    attempts_sent: u64,
    retries: u64,
    max_counter: i64,
    counter: i64,
    stream_keys: Vec<String>,
    stock_back_ms: Option<u128>,
}

fn counter(redis: &RedisServer) -> i64 {
    let keys: Vec<String> = redis.command(&["KEYS", "tollgate:{acme}:usage:api-calls:*"]);
    keys.iter()
        .filter(|key| !key.ends_with(":leases"))
        .map(|key| redis.command::<Option<i64>>(&["GET", key]).unwrap_or(0))
        .sum()
}

fn stream_keys(redis: &RedisServer) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> =
        redis.command(&["XRANGE", "tollgate:{acme}:usage", "-", "+"]);
    entries
        .into_iter()
        .filter_map(|(_, fields)| {
            fields
                .chunks(2)
                .find(|pair| pair[0] == "idempotency_key")
                .map(|pair| pair[1].clone())
        })
        .collect()
}

/// Runs `work` on a thread of its own, outside any async runtime.
fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::spawn(work).join() {
        Ok(done) => done,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Sidecars holding a lease of the meter, by its lease records.
fn lease_owners(redis: &RedisServer) -> usize {
    let keys: Vec<String> = redis.command(&["KEYS", "tollgate:{acme}:usage:api-calls:*:leases"]);
    keys.iter()
        .map(|key| redis.command::<i64>(&["HLEN", key]))
        .map(|owners| usize::try_from(owners).unwrap_or_default())
        .sum()
}

fn consume(key: &str) -> pb::CheckRequest {
    let mut request = check("acme", "User:bob", "use", "Feature:api");
    request.consume = Some(pb::Consume {
        meter: "api-calls".to_string(),
        amount: 1,
        idempotency_key: key.to_string(),
    });
    request
}

/// Sends `key` until it gets a definitive answer: whether it was allowed,
/// and how many sends it took.
async fn settle_key(client: &mut EntitlementServiceClient<Channel>, key: &str) -> (bool, u64) {
    for sends in 1..=50 {
        // A failed call is sent again, as an answer of metering_unavailable.
        if let Ok(response) = client.check(consume(key)).await {
            let response = response.into_inner();
            if response.decision == pb::Decision::Allow as i32 {
                return (true, sends);
            }
            let code = response.reasons.first().map(|r| r.code.as_str());
            if code != Some("metering_unavailable") {
                return (false, sends);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (false, 50)
}

async fn run(run: &Run) -> Result<Outcome, String> {
    let redis = RedisServer::try_start(tollgate_testkit::redis_server::Options::default())?;
    let conn = RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .map_err(|error| error.to_string())?;
    let cap = run.cap;
    let lease = run.lease;
    put(
        &conn,
        &document("acme", 2, |value| {
            let meter = entity(value, "Meter", "api-calls");
            meter["attrs"]["limit"] = cap.into();
            if let Some(block) = lease {
                meter["attrs"]["lease"] = block.into();
            }
        }),
    )
    .await;
    let proxy = RedisProxy::try_start(redis.port)?;
    let dirs = DataDirs::copy_examples();
    let env = [
        ("TOLLGATE_REDIS_URL", proxy.url()),
        ("TOLLGATE_REDIS_TIMEOUT_MS", REDIS_TIMEOUT_MS.to_string()),
        ("TOLLGATE_USAGE_LEASE_TTL_MS", LEASE_TTL_MS.to_string()),
        ("TOLLGATE_USAGE_LEASE_FLUSH_MS", LEASE_FLUSH_MS.to_string()),
        (
            "TOLLGATE_LOG_LEVEL",
            "info,tollgate::metering=error".to_string(),
        ),
    ];
    let mut sidecars = Vec::new();
    for name in ["sidecar-a", "sidecar-b"] {
        let (policies, entitlements, env) = (
            dirs.policies.clone(),
            dirs.entitlements.clone(),
            env.clone(),
        );
        // Started off this runtime: the test kit waits in a runtime of its own.
        let started = off_runtime(move || {
            ServerProcess::start(
                name,
                env!("CARGO_BIN_EXE_tollgate"),
                &policies,
                &entitlements,
                &env,
            )
        })?;
        sidecars.push(started);
    }
    let mut clients = Vec::new();
    for sidecar in &sidecars {
        clients.push(EntitlementServiceClient::new(
            tollgate_testkit::client::channel(&sidecar.url()).await,
        ));
    }
    // Warm: the snapshot is cached by both before faults begin.
    for client in &mut clients {
        let _ = client
            .check(check("acme", "User:bob", "use", "Feature:api"))
            .await;
    }
    proxy.set_rules(vec![
        Rule::new(Match::Command("EVALSHA".to_string()), Fault::DropReply).at_rate(0.05),
        Rule::new(
            Match::Command("EVALSHA".to_string()),
            Fault::Delay(Duration::from_millis(REDIS_TIMEOUT_MS + 50)),
        )
        .at_rate(0.05),
    ]);

    // The counter, sampled straight from Redis.
    let stop = Arc::new(AtomicBool::new(false));
    let max_counter = Arc::new(AtomicI64::new(0));
    let sampler = {
        let stop = Arc::clone(&stop);
        let max_counter = Arc::clone(&max_counter);
        let url = redis.url();
        std::thread::spawn(move || {
            let client = redis::Client::open(url).ok();
            let mut connection = client.and_then(|client| {
                client
                    .get_connection_with_timeout(Duration::from_secs(2))
                    .ok()
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(connection) = connection.as_mut() {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg("tollgate:{acme}:usage:api-calls:*")
                        .query(connection)
                        .unwrap_or_default();
                    let mut total = 0;
                    for key in keys.iter().filter(|key| !key.ends_with(":leases")) {
                        let value: Option<i64> = redis::cmd("GET")
                            .arg(key)
                            .query(connection)
                            .unwrap_or_default();
                        total += value.unwrap_or(0);
                    }
                    max_counter.fetch_max(total, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let allowed = Arc::new(Mutex::new(BTreeSet::new()));
    let sends = Arc::new(AtomicI64::new(0));
    let workers = 8;
    let per_worker = run.attempts / workers;
    let kill_after = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..workers {
        // Half the workers on each sidecar.
        let mut client = clients[worker % 2].clone();
        let allowed = Arc::clone(&allowed);
        let sends = Arc::clone(&sends);
        let kill_after = Arc::clone(&kill_after);
        let on_killed = run.kill_midway && worker % 2 == 1;
        tasks.push(tokio::spawn(async move {
            for n in 0..per_worker {
                if on_killed && kill_after.load(Ordering::Relaxed) {
                    return;
                }
                let key = format!("w{worker}-{n}");
                let (allow, sent) = settle_key(&mut client, &key).await;
                sends.fetch_add(i64::try_from(sent).unwrap_or(i64::MAX), Ordering::Relaxed);
                if allow {
                    allowed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(key);
                }
            }
        }));
    }
    let mut killed_at = None;
    if run.kill_midway {
        // Midway through: the second sidecar is killed, its workers stop.
        loop {
            let done = allowed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len();
            if done * 2 >= usize::try_from(cap).unwrap_or(usize::MAX) / 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        kill_after.store(true, Ordering::Relaxed);
        sidecars[1].signal("KILL");
        sidecars[1].wait_exit(Duration::from_secs(10)).await;
        killed_at = Some(Instant::now());
    }
    for task in tasks {
        task.await.map_err(|error| error.to_string())?;
    }
    // Faults end; what a crash leaves comes back once its lease expires.
    proxy.clear_rules();
    let mut stock_back_ms = None;
    if let Some(killed_at) = killed_at {
        // The dead sidecar's lease record goes when the next lease step
        // after its expiry reclaims its stock: the survivor keeps consuming
        // (a key every 100 ms) until then.
        let deadline = Instant::now() + Duration::from_millis(LEASE_TTL_MS * 5);
        let mut survivor = clients[0].clone();
        let mut tick = 0;
        while Instant::now() < deadline {
            if lease_owners(&redis) <= 1 {
                stock_back_ms = Some(killed_at.elapsed().as_millis());
                break;
            }
            let key = format!("after-{tick}");
            if settle_key(&mut survivor, &key).await.0 {
                allowed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key);
            }
            tick += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for sidecar in sidecars {
        if sidecar.name() == "sidecar-b" && run.kill_midway {
            continue;
        }
        off_runtime(move || sidecar.stop())?;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let allowed = Arc::try_unwrap(allowed)
        .map_err(|_| "the workers still hold the results".to_string())?
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let sent = u64::try_from(sends.load(Ordering::Relaxed)).unwrap_or_default();
    Ok(Outcome {
        attempts_sent: sent,
        retries: sent.saturating_sub(run.attempts as u64),
        max_counter: max_counter.load(Ordering::Relaxed),
        counter: counter(&redis),
        stream_keys: stream_keys(&redis),
        allowed,
        stock_back_ms,
    })
}

fn main() -> ExitCode {
    let bench = std::env::args().any(|arg| arg == "--bench");
    let (attempts, cap) = if bench { (10_000, 5_000) } else { (400, 200) };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("faults: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut problems = Vec::new();
    for (name, run) in [
        (
            "exact",
            Run {
                attempts,
                cap,
                lease: None,
                kill_midway: false,
            },
        ),
        (
            "lease",
            Run {
                attempts,
                cap,
                lease: Some(50),
                kill_midway: false,
            },
        ),
        (
            "lease, one sidecar killed",
            Run {
                attempts,
                cap,
                lease: Some(50),
                kill_midway: true,
            },
        ),
    ] {
        let outcome = match runtime.block_on(run_one(&run)) {
            Ok(outcome) => outcome,
            Err(error) => {
                problems.push(format!("{name}: {error}"));
                continue;
            }
        };
        let allowed = outcome.allowed.len() as i64;
        let stream: BTreeSet<&String> = outcome.stream_keys.iter().collect();
        let duplicates = outcome.stream_keys.len() - stream.len();
        let unknown = stream
            .iter()
            .filter(|key| !outcome.allowed.contains(**key))
            .count();
        let lost = outcome
            .allowed
            .iter()
            .filter(|key| !stream.contains(key))
            .count();
        println!(
            "faults: {name}: {} keys, {} sends ({} retries); {allowed} allowed; counter {} (max sampled {}, cap {cap}); stream {} events ({duplicates} duplicated, {unknown} not allowed, {lost} allowed but missing){}",
            run.attempts,
            outcome.attempts_sent,
            outcome.retries,
            outcome.counter,
            outcome.max_counter,
            outcome.stream_keys.len(),
            outcome
                .stock_back_ms
                .map(|ms| format!("; the dead sidecar's stock back {ms} ms after the kill"))
                .unwrap_or_default(),
        );
        if outcome.max_counter > cap {
            problems.push(format!(
                "{name}: the counter reached {} past the cap {cap}",
                outcome.max_counter
            ));
        }
        if duplicates > 0 || unknown > 0 {
            problems.push(format!(
                "{name}: {duplicates} duplicated and {unknown} unallowed events in the stream"
            ));
        }
        if run.kill_midway {
            if outcome.counter != outcome.stream_keys.len() as i64 {
                problems.push(format!(
                    "{name}: counter {} against {} recorded events: stock not back",
                    outcome.counter,
                    outcome.stream_keys.len()
                ));
            }
        } else {
            if outcome.counter != allowed {
                problems.push(format!(
                    "{name}: counter {} against {allowed} allowed",
                    outcome.counter
                ));
            }
            if lost > 0 {
                problems.push(format!("{name}: {lost} allowed keys have no event"));
            }
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("faults: FAILED\n{}", problems.join("\n"));
        ExitCode::FAILURE
    }
}

async fn run_one(run: &Run) -> Result<Outcome, String> {
    self::run(run).await
}
