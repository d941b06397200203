//! ListEntitlements: what a listing of 200 features × 3 actions for one
//! principal costs, hints included.
//!
//! The model is the shipped one (`policies/`, its `offers.yaml`) with a
//! third action on features, `share` (members may share what their tier
//! includes), and a tenant `bench` on the pro plan with 200 generated
//! features: a third at each tier, every 7th an add-on, every 5th fenced to
//! a few countries, every 11th to the EU region, every 13th per seat, every
//! 17th metered. The principal is a member, from Brazil: about a third of
//! the 600 items are denied, most with an offer that unlocks them.
//!
//! 1. **In process**: `DecisionService::list_entitlements` on the listing
//!    (one page of 600 items; the protobuf response is not built), timed
//!    call by call: p50, p90, p99, max, and items per second; with and
//!    without hints.
//! 2. **Over gRPC**: the release server as a process, one HTTP/2 connection
//!    with 16 listings in flight for `--seconds` (8): listings and items per
//!    second, latency p50/p99, the server's CPU per listing.
//!
//! Targets (issue: ListEntitlements): ≤ 1 ms p99 in process, hints
//! included; ≥ 150,000 listed items per second over gRPC.
//!
//! `cargo bench --bench listing` measures on the release build; `cargo test
//! --benches` runs both parts briefly in test mode on the test build.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a broken fixture should abort loudly"
)]

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate::api::pb;
use tollgate::decide::Caller;
use tollgate_engine::{PolicySnapshot, SnapshotSource, TenantSnapshot};
use tollgate_testkit::fixtures::example_policies;
use tollgate_testkit::measure::process_cpu;
use tollgate_testkit::request::{datetime, string, BENCH_NOW};
use tollgate_testkit::server::ServerProcess;

const TENANT: &str = "bench";
const FEATURES: usize = 200;

/// The third action, and who may take it.
const SHARE_SCHEMA: &str =
    "\naction share appliesTo { principal: User, resource: Feature, context: Now };\n";
const SHARE_POLICY: &str = r#"@id("members-share")
@code("member_role")
@reason("members may share the features their plan includes")
permit (principal in Role::"member", action == Action::"share", resource)
when { principal.account.tier >= resource.min_tier };
"#;

/// The bench's policy directory: the shipped one with `share`.
fn write_policies(dir: &Path) {
    let shipped = example_policies();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let schema = dir.join("schema.cedarschema");
    let mut text = std::fs::read_to_string(&schema).unwrap();
    text.push_str(SHARE_SCHEMA);
    std::fs::write(&schema, text).unwrap();
    std::fs::write(dir.join("share.cedar"), SHARE_POLICY).unwrap();
}

/// The bench tenant's snapshot.
fn snapshot() -> serde_json::Value {
    let uid = |kind: &str, id: &str| json!({"__entity": {"type": kind, "id": id}});
    let mut entities = vec![
        json!({"uid": {"type": "Account", "id": TENANT}, "attrs": {"plan": "pro", "tier": 1, "addons": ["sso"]}, "parents": []}),
        json!({"uid": {"type": "Role", "id": "viewer"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "Role", "id": "member"}, "attrs": {}, "parents": [{"type": "Role", "id": "viewer"}]}),
        json!({"uid": {"type": "User", "id": "member"}, "attrs": {"account": uid("Account", TENANT)}, "parents": [{"type": "Role", "id": "member"}]}),
        json!({"uid": {"type": "Region", "id": "eu"}, "attrs": {"countries": ["DE", "FR", "IT", "ES"]}, "parents": []}),
        json!({"uid": {"type": "Seat", "id": "analytics"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "Meter", "id": "api-calls"}, "attrs": {"limit": 100_000, "period": "month"}, "parents": []}),
    ];
    for index in 0..FEATURES {
        let mut attrs = serde_json::Map::new();
        attrs.insert("min_tier".into(), json!(index % 3));
        if index % 7 == 0 {
            attrs.insert(
                "addon".into(),
                json!(if index % 2 == 0 { "sso" } else { "audit-pack" }),
            );
        }
        if index % 5 == 0 {
            attrs.insert("countries".into(), json!(["US", "CA", "BR"]));
        }
        if index % 11 == 0 {
            attrs.insert("region".into(), uid("Region", "eu"));
        }
        if index % 13 == 0 {
            attrs.insert("seat".into(), uid("Seat", "analytics"));
        }
        if index % 17 == 0 {
            attrs.insert("meter".into(), uid("Meter", "api-calls"));
        }
        entities.push(json!({"uid": {"type": "Feature", "id": format!("feature-{index:03}")}, "attrs": attrs, "parents": []}));
    }
    json!({"tenant": TENANT, "version": 1, "entities": entities})
}

fn request(hints: bool) -> pb::ListEntitlementsRequest {
    pb::ListEntitlementsRequest {
        tenant: TENANT.to_string(),
        principal: Some(pb::EntityRef {
            r#type: "User".to_string(),
            id: "member".to_string(),
        }),
        context: HashMap::from([
            ("now".to_string(), datetime(BENCH_NOW)),
            ("country".to_string(), string("BR")),
        ]),
        resource_types: vec!["Feature".to_string()],
        page_size: 1000,
        hints,
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], share: f64) -> Duration {
    let index = ((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Part 1: the listing in process.
fn in_process(iterations: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    write_policies(dir.path());
    let policies =
        Arc::new(PolicySnapshot::load_dir(dir.path()).map_err(|problems| format!("{problems:?}"))?);
    let tenant = TenantSnapshot::parse(
        snapshot().to_string().as_bytes(),
        Some(TENANT),
        &policies,
        SnapshotSource::File,
    )
    .map_err(|error| error.to_string())?;
    let service = tollgate_testkit::fixtures::file_service(&policies, [Arc::new(tenant)]);
    let caller = Caller::trusted("bench");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for hints in [true, false] {
        // Timed: the decision service's listing. The protobuf response is
        // built once here for the checks, and on every call over gRPC.
        let listing =
            || {
                runtime
                    .block_on(service.list_entitlements(
                        &caller,
                        tollgate::api::convert::listing(request(hints)),
                    ))
                    .unwrap()
            };
        let list = || tollgate::api::convert::listed(listing());
        let first = list();
        let items = first.items.len();
        let denied = first
            .items
            .iter()
            .filter(|item| item.decision == pb::Decision::Deny as i32)
            .count();
        let unlocked = first
            .items
            .iter()
            .filter(|item| item.hint.as_ref().is_some_and(|hint| !hint.no_offer))
            .count();
        assert_eq!(items, FEATURES * 3, "one page of every item");
        assert!(first.next_page_token.is_empty());
        if hints {
            assert!(unlocked > 0, "some denial has an offer");
        }
        for _ in 0..iterations / 10 {
            std::hint::black_box(listing());
        }
        let mut times = Vec::with_capacity(iterations);
        let started = Instant::now();
        for _ in 0..iterations {
            let begun = Instant::now();
            std::hint::black_box(listing());
            times.push(begun.elapsed());
        }
        let total = started.elapsed();
        times.sort();
        println!(
            "in process, hints {}: {items} items ({denied} denied, {unlocked} with an offer) per listing; {iterations} listings: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs; {:.0} items/s",
            if hints { "on " } else { "off" },
            micros(percentile(&times, 0.50)),
            micros(percentile(&times, 0.90)),
            micros(percentile(&times, 0.99)),
            micros(*times.last().unwrap()),
            (items * iterations) as f64 / total.as_secs_f64(),
        );
    }
    Ok(())
}

/// Part 2: listings over gRPC, 16 in flight on one connection.
fn over_grpc(binary: &Path, seconds: f64) -> Result<(), String> {
    let policies = tempfile::tempdir().unwrap();
    write_policies(policies.path());
    let entitlements = tempfile::tempdir().unwrap();
    std::fs::write(
        entitlements.path().join(format!("{TENANT}.json")),
        snapshot().to_string(),
    )
    .unwrap();
    let server = ServerProcess::start(
        "tollgate",
        binary,
        policies.path(),
        entitlements.path(),
        &[] as &[(&str, &str)],
    )?;
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (calls, items, mut times, cpu_seconds, elapsed) = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .map_err(|error| error.to_string())?;
        let client = pb::entitlement_service_client::EntitlementServiceClient::new(channel);
        // Warm up.
        for _ in 0..20 {
            client
                .clone()
                .list_entitlements(request(true))
                .await
                .map_err(|s| s.to_string())?;
        }
        let before = process_cpu(server.pid()).ok_or("no CPU sample")?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(seconds);
        let mut workers = Vec::new();
        for _ in 0..16 {
            let mut client = client.clone();
            workers.push(tokio::spawn(async move {
                let mut times = Vec::new();
                let mut items = 0usize;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    let listed = client
                        .list_entitlements(request(true))
                        .await
                        .map_err(|status| status.to_string())?
                        .into_inner();
                    if listed.items.len() != FEATURES * 3 {
                        return Err(format!("{} items", listed.items.len()));
                    }
                    items += listed.items.len();
                    times.push(begun.elapsed());
                }
                Ok::<_, String>((times, items))
            }));
        }
        let mut times = Vec::new();
        let mut items = 0;
        for worker in workers {
            let (worker_times, worker_items) =
                worker.await.map_err(|error| error.to_string())??;
            times.extend(worker_times);
            items += worker_items;
        }
        let elapsed = started.elapsed();
        let after = process_cpu(server.pid()).ok_or("no CPU sample")?;
        Ok::<_, String>((
            times.len(),
            items,
            times,
            after.seconds_since(&before),
            elapsed,
        ))
    })?;
    server.stop()?;
    times.sort();
    println!(
        "over gRPC, 16 in flight, hints on: {calls} listings in {:.1} s: {:.0} listings/s, {:.0} items/s; p50 {:.0} µs, p99 {:.0} µs; server CPU {:.0} µs per listing",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        items as f64 / elapsed.as_secs_f64(),
        micros(percentile(&times, 0.50)),
        micros(percentile(&times, 0.99)),
        cpu_seconds * 1e6 / calls.max(1) as f64,
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|arg| arg == "--bench");
    // Names to select by; the values of options (`--seconds 8`) are not.
    let filters: Vec<String> = args
        .iter()
        .filter(|arg| !arg.starts_with('-') && arg.parse::<f64>().is_err())
        .cloned()
        .collect();
    if !tollgate_testkit::bench::selected(&filters, "listing") {
        return ExitCode::SUCCESS;
    }
    let seconds = match tollgate_testkit::bench::number_arg(&args, "--seconds") {
        Ok(seconds) => seconds.unwrap_or(if bench { 8.0 } else { 1.0 }),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let (cpus, model) = tollgate_testkit::bench::machine();
    println!("listing: {FEATURES} features × 3 actions, one principal; {cpus} CPUs, {model}");
    if let Err(error) = in_process(if bench { 2000 } else { 20 }) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = over_grpc(Path::new(env!("CARGO_BIN_EXE_tollgate")), seconds) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
