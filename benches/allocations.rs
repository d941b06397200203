//! Allocations per call of the decision paths, in process: `check` (file
//! source), `CheckBatch` per item, and with a real `redis-server` the checks
//! answered from the Redis source's cache, `check_metered`, `consume`
//! (exact) and `consume_lease`.
//!
//! The whole process counts its allocations (`stats_alloc` as the global
//! allocator). Every call runs on one current-thread runtime, so the
//! service's own work (Redis I/O included) is what is counted; the Redis
//! source's background tasks (the invalidation subscription's heartbeat) run
//! there too, a few allocations a second at most. For `check`, the count is
//! also split by where the allocations are made: converting and validating
//! the request, the engine's decision, building the protobuf response, and
//! the rest of the service (lookup, decision id, freshness, metrics).
//!
//! `cargo bench --bench allocations` (release) or `cargo test --benches`
//! (fewer calls). Numbers in `benches/README.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a broken fixture should abort loudly"
)]

use std::alloc::System;
use std::process::ExitCode;
use std::sync::Arc;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tollgate::api::{self, pb};
use tollgate::decide::{Caller, DecisionService, Limits};
use tollgate::metering::{Clock, Metering, MeteringSettings};
use tollgate::store::redis_client::RedisConn;
use tollgate::store::remote::{CacheSettings, RemoteSnapshots};
use tollgate::store::{Catalog, Store};
use tollgate_engine::{Options, PolicySnapshot, SnapshotSource, TenantMap, TenantSnapshot};
use tollgate_testkit::fixtures::{example_entitlements, example_policies};
use tollgate_testkit::redis_server::{settings, RedisServer};
use tollgate_testkit::request::use_request;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and bytes per call of `call`, over `calls` calls after as
/// many unmeasured ones.
fn per_call(calls: usize, mut call: impl FnMut(usize)) -> (f64, f64) {
    for index in 0..calls {
        call(index);
    }
    let region = Region::new(GLOBAL);
    for index in calls..2 * calls {
        call(index);
    }
    let change = region.change();
    (
        change.allocations as f64 / calls as f64,
        change.bytes_allocated as f64 / calls as f64,
    )
}

fn row(name: &str, (allocations, bytes): (f64, f64)) {
    println!("{name:<32} {allocations:>8.1} allocations {bytes:>10.0} bytes per call");
}

fn policies() -> Arc<PolicySnapshot> {
    Arc::new(PolicySnapshot::load_dir(&example_policies()).unwrap())
}

/// A document of acme under `tenant`, its `api-calls` meter limited to
/// 10^15 a month (in lease mode with blocks of `lease`).
fn meter_tenant(tenant: &str, lease: Option<i64>) -> String {
    let acme = std::fs::read_to_string(example_entitlements().join("acme.json")).unwrap();
    let mut document: serde_json::Value = serde_json::from_str(&acme).unwrap();
    document["tenant"] = tenant.into();
    for entity in document["entities"].as_array_mut().unwrap() {
        if entity["uid"]["type"] == "Meter" && entity["uid"]["id"] == "api-calls" {
            entity["attrs"]["limit"] = 1_000_000_000_000_000_i64.into();
            if let Some(block) = lease {
                entity["attrs"]["lease"] = block.into();
            }
        }
    }
    document.to_string()
}

fn consume(tenant: &str, key: String) -> pb::CheckRequest {
    let mut request = use_request(tenant, "bob", "api");
    request.consume = Some(pb::Consume {
        meter: "api-calls".to_string(),
        amount: 1,
        idempotency_key: key,
    });
    request
}

fn file_source(calls: usize) {
    let policies = policies();
    let acme = std::fs::read(example_entitlements().join("acme.json")).unwrap();
    let tenant =
        Arc::new(TenantSnapshot::parse(&acme, None, &policies, SnapshotSource::File).unwrap());
    let service = tollgate_testkit::fixtures::file_service(&policies, [Arc::clone(&tenant)]);
    let caller = Caller::trusted("bench");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let request = use_request("acme", "bob", "pdf-export");
    let answer = runtime
        .block_on(api::check(&service, &caller, request.clone()))
        .unwrap();
    assert_eq!(answer.decision, pb::Decision::Allow as i32);

    // The parts, each on its own.
    let mut requests: Vec<pb::CheckRequest> = (0..2 * calls).map(|_| request.clone()).collect();
    let prepare = per_call(calls, |index| {
        let request = std::mem::take(&mut requests[index]);
        std::hint::black_box(
            tollgate::decide::prepare(&policies, api::convert::check(request), None).unwrap(),
        );
    });
    let prepared =
        tollgate::decide::prepare(&policies, api::convert::check(request.clone()), None).unwrap();
    let decide = per_call(calls, |_| {
        std::hint::black_box(
            tollgate_engine::decide(&policies, &tenant, &prepared, Options::default()).unwrap(),
        );
    });
    let decided = runtime
        .block_on(service.check(&caller, api::convert::check(request.clone())))
        .unwrap();
    let answers: Vec<_> = (0..2 * calls).map(|_| decided.clone()).collect();
    let respond = per_call(calls, |index| {
        let answer = answers[index].clone();
        std::hint::black_box(api::convert::response(answer));
    });
    drop(answers);
    let mut requests: Vec<pb::CheckRequest> = (0..2 * calls).map(|_| request.clone()).collect();
    let whole = per_call(calls, |index| {
        let request = std::mem::take(&mut requests[index]);
        std::hint::black_box(
            runtime
                .block_on(api::check(&service, &caller, request))
                .unwrap(),
        );
    });
    // What driving a future on the runtime costs by itself.
    let idle = per_call(calls, |_| {
        runtime.block_on(async { std::hint::black_box(()) });
    });
    row("check (whole call)", whole);
    row("  request: convert and prepare", prepare);
    row("  engine: decide", decide);
    row("  response: protobuf", respond);
    row("  runtime: block_on itself", idle);
    row(
        "  service: the rest",
        (
            whole.0 - prepare.0 - decide.0 - respond.0 - idle.0,
            whole.1 - prepare.1 - decide.1 - respond.1 - idle.1,
        ),
    );

    let batch = pb::CheckBatchRequest {
        checks: (0..100)
            .map(|index| {
                let feature =
                    ["pdf-export", "dashboards", "audit-log", "sso", "payments"][index % 5];
                use_request("acme", "bob", feature)
            })
            .collect(),
    };
    let per_batch = per_call(calls / 10 + 1, |_| {
        std::hint::black_box(
            runtime
                .block_on(api::check_batch(&service, &caller, batch.clone()))
                .unwrap(),
        );
    });
    row(
        "check_batch, per item",
        (per_batch.0 / 100.0, per_batch.1 / 100.0),
    );
}

fn redis_source(calls: usize) -> Result<(), String> {
    let redis = RedisServer::try_start(Default::default())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policies = policies();
    let service = runtime.block_on(async {
        let redis_settings = settings(vec![redis.url()]);
        let conn = RedisConn::connect(&redis_settings)
            .await
            .map_err(|error| error.to_string())?;
        for (tenant, lease) in [("meter-exact", None), ("meter-lease", Some(1_000))] {
            tollgate::admin::put(&conn, &policies, &meter_tenant(tenant, lease))
                .await
                .map_err(|error| error.to_string())?;
        }
        let store = Arc::new(Store::from_catalog(Catalog {
            policies: Arc::clone(&policies),
            tenants: Arc::new(TenantMap::new()),
            licenses: Default::default(),
        }));
        let remote = RemoteSnapshots::new(redis_settings, CacheSettings::default(), store.clone());
        let _listener = remote.start().await;
        let metering = Arc::new(Metering::new(MeteringSettings::default(), Clock::system()));
        Ok::<_, String>(
            DecisionService::new(store, Options::default(), Limits::default())
                .with_remote(remote)
                .with_metering(metering),
        )
    })?;
    let caller = Caller::trusted("bench");
    let call = |request: pb::CheckRequest| {
        let response = runtime
            .block_on(api::check(&service, &caller, request))
            .unwrap();
        assert_eq!(
            response.decision,
            pb::Decision::Allow as i32,
            "{response:?}"
        );
        response
    };
    let cached = per_call(calls, |_| {
        std::hint::black_box(call(use_request("meter-exact", "bob", "pdf-export")));
    });
    row("check_redis (cache)", cached);
    let metered = per_call(calls, |_| {
        std::hint::black_box(call(use_request("meter-lease", "bob", "api")));
    });
    row("check_metered", metered);
    let exact = per_call(calls, |index| {
        std::hint::black_box(call(consume("meter-exact", format!("exact-{index}"))));
    });
    row("consume (exact)", exact);
    let lease = per_call(calls, |index| {
        std::hint::black_box(call(consume("meter-lease", format!("lease-{index}"))));
    });
    row("consume_lease", lease);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|arg| arg == "--bench");
    let filters: Vec<String> = args
        .iter()
        .filter(|arg| !arg.starts_with('-'))
        .cloned()
        .collect();
    if !tollgate_testkit::bench::selected(&filters, "allocations") {
        return ExitCode::SUCCESS;
    }
    let calls = if bench { 5_000 } else { 50 };
    println!("allocations per call ({calls} calls each, after {calls} unmeasured)");
    file_source(calls);
    if let Err(error) = redis_source(calls) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
