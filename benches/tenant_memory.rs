//! What one parsed tenant snapshot costs in memory, and where the bytes go.
//!
//! Parses `--tenants` small tenants (`entitlements/acme.json`'s shape with
//! `--users` users, see `common/acme_tenant.rs`) and keeps them all, then
//! reports the growth of the resident set per tenant. `--keep` chooses what
//! is kept of each tenant, to split the cost into its parts:
//!
//! * `document`: the `serde_json::Value` of the document;
//! * `entities`: `cedar_policy::Entities::from_json_value` with the schema
//!   (what tollgate parsed before it kept compact snapshots);
//! * `entities-no-schema`: the same without the schema;
//! * `snapshot`: `TenantSnapshot::parse`, what the server caches.
//!
//! This program uses the system allocator (the server uses mimalloc), so that
//! valgrind's heap tools see every allocation, e.g.
//!
//! ```sh
//! cargo bench --bench tenant_memory --no-run
//! valgrind --tool=dhat target/release/deps/tenant_memory-* --tenants 200 --keep entities
//! ```
//!
//! `benches/memory.md` has the findings. Run:
//! `cargo bench --bench tenant_memory -- --keep snapshot --tenants 10000`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a broken fixture should abort loudly"
)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};

use tollgate_engine::{PolicySnapshot, SnapshotSource, TenantSnapshot};
use tollgate_testkit::bench::selected;
use tollgate_testkit::fixtures::repository;
use tollgate_testkit::measure::kb_field;
use tollgate_testkit::request::{use_request, BENCH_NOW};
use tollgate_testkit::tenants::AcmeShape;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Keep {
    Document,
    Entities,
    EntitiesNoSchema,
    Snapshot,
}

/// Memory per parsed tenant snapshot.
#[derive(Debug, Parser)]
#[command(name = "tenant_memory")]
struct Args {
    /// Tenants parsed and kept.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// Users per tenant (5: the small tenant).
    #[arg(long, default_value_t = 5)]
    users: usize,
    /// What is kept of each tenant.
    #[arg(long, value_enum, default_value = "snapshot")]
    keep: Keep,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Instead of memory: time a decision on one tenant of `--users` users,
    /// over the compact snapshot (`engine::decide`) and over Cedar's whole
    /// `Entities` of the same snapshot (what a decision read before), in
    /// this many interleaved rounds.
    #[arg(long, value_name = "ROUNDS")]
    time: Option<usize>,
    /// With --time: run only the decisions over Cedar's whole entities
    /// (`whole`) or only those over the compact snapshot (`compact`), e.g.
    /// to count instructions with `valgrind --tool=callgrind`.
    #[arg(long, value_name = "whole|compact")]
    only: Option<String>,
    /// With --time: only the series whose name starts with this, e.g.
    /// `spread` or `repeated pdf`.
    #[arg(long, value_name = "PREFIX")]
    series: Option<String>,
    /// Passed by `cargo bench`; without it (`cargo test --benches`), a smoke
    /// run of 100 tenants.
    #[arg(long, hide = true)]
    bench: bool,
    /// Name filters passed by `cargo bench -- FILTER`.
    #[arg(hide = true)]
    filters: Vec<String>,
}

/// `(VmRSS, RssAnon)` of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| kb_field(&status, name).unwrap_or(0);
    (field("VmRSS:"), field("RssAnon:"))
}

enum Kept {
    Document(serde_json::Value),
    Entities(cedar_policy::Entities),
    Snapshot(Arc<TenantSnapshot>),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !selected(&args.filters, "tenant_memory") {
        return ExitCode::SUCCESS;
    }
    let tenants = if args.bench || args.tenants != 10_000 {
        args.tenants
    } else {
        100
    };
    let root = repository();
    let policies = match PolicySnapshot::load_dir(&root.join("policies")) {
        Ok(policies) => policies,
        Err(problems) => {
            eprintln!("tenant_memory: cannot load policies/: {problems:?}");
            return ExitCode::FAILURE;
        }
    };
    let shape = match AcmeShape::load(root) {
        Ok(shape) => shape,
        Err(problem) => {
            eprintln!("tenant_memory: {problem}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(rounds) = args.time {
        time_decisions(
            &policies,
            &shape,
            args.users,
            rounds.max(1),
            args.only.as_deref(),
            args.series.as_deref(),
            args.json,
        );
        return ExitCode::SUCCESS;
    }
    let documents: Vec<(String, Vec<u8>)> = (0..tenants)
        .map(|index| {
            let tenant = format!("t-{index:06}");
            let document = shape.snapshot_json(&tenant, 1, args.users);
            (tenant, document)
        })
        .collect();
    let document_bytes =
        documents.iter().map(|(_, d)| d.len()).sum::<usize>() as f64 / tenants as f64;
    let document_entities = shape.entity_count(args.users);
    let mut kept: Vec<Kept> = Vec::with_capacity(tenants);
    let (rss_before, anon_before) = rss();
    let started = Instant::now();
    for (tenant, document) in &documents {
        let parsed = match args.keep {
            Keep::Document => Kept::Document(serde_json::from_slice(document).unwrap()),
            Keep::Entities | Keep::EntitiesNoSchema => {
                let value: serde_json::Value = serde_json::from_slice(document).unwrap();
                let schema = (args.keep == Keep::Entities).then_some(&policies.schema);
                Kept::Entities(
                    cedar_policy::Entities::from_json_value(value["entities"].clone(), schema)
                        .unwrap(),
                )
            }
            Keep::Snapshot => Kept::Snapshot(Arc::new(
                TenantSnapshot::parse(document, Some(tenant), &policies, SnapshotSource::Redis)
                    .unwrap(),
            )),
        };
        kept.push(parsed);
    }
    let seconds = started.elapsed().as_secs_f64();
    let (rss_after, anon_after) = rss();
    let entities = match &kept[0] {
        Kept::Document(value) => value["entities"].as_array().map_or(0, Vec::len),
        Kept::Entities(entities) => entities.iter().count(),
        Kept::Snapshot(snapshot) => snapshot.entities.entity_count(),
    };
    let per = |before: u64, after: u64| (after as f64 - before as f64) / tenants as f64;
    // What the Redis source's cache weighs a snapshot at, without its entry.
    let estimate = kept
        .iter()
        .map(|kept| match kept {
            Kept::Snapshot(snapshot) => snapshot.memory_bytes() as f64,
            _ => f64::NAN,
        })
        .sum::<f64>()
        / tenants as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "keep": format!("{:?}", args.keep),
                "tenants": tenants,
                "users": args.users,
                "entities": entities,
                "document_entities": document_entities,
                "document_bytes": document_bytes,
                "rss_per_tenant": per(rss_before, rss_after),
                "anon_per_tenant": per(anon_before, anon_after),
                "parse_us": seconds * 1e6 / tenants as f64,
                "memory_bytes_estimate": estimate,
            })
        );
    } else {
        println!(
            "{:?}: {tenants} tenants of {} users ({entities} entities kept each, document of {document_entities} entities, {document_bytes:.0} bytes): \
             RSS {:.0} bytes/tenant, RssAnon {:.0} bytes/tenant, {:.1} µs/parse",
            args.keep,
            args.users,
            per(rss_before, rss_after),
            per(anon_before, anon_after),
            seconds * 1e6 / tenants as f64
        );
        if args.keep == Keep::Snapshot {
            println!("  TenantSnapshot::memory_bytes: {estimate:.0} bytes/tenant");
        }
    }
    drop(kept);
    ExitCode::SUCCESS
}

/// Median of `samples`.
fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// One request, prepared for both paths.
struct Timed {
    snapshot: Arc<TenantSnapshot>,
    prepared: tollgate_engine::PreparedRequest,
    request: cedar_policy::Request,
    principal: cedar_policy::EntityUid,
    action: cedar_policy::EntityUid,
    resource: cedar_policy::EntityUid,
}

/// Tenants of the `spread` series: more slices than a thread keeps.
const SPREAD_TENANTS: usize = 200;

/// Times decisions over the compact snapshots (`engine::decide`) and over
/// Cedar's whole entities of the same snapshots (what a decision read
/// before: the principal looked up in, and the policies evaluated over,
/// them), interleaved so that a change in the machine's speed hits both.
/// `repeated`: one request again and again, as `benches/engine.rs` does (its
/// slice is built once per thread and then reused); `spread`: every decision
/// another principal, feature or tenant, so that every slice is built anew.
fn time_decisions(
    policies: &PolicySnapshot,
    shape: &AcmeShape,
    users: usize,
    rounds: usize,
    only: Option<&str>,
    only_series: Option<&str>,
    json: bool,
) {
    use std::hint::black_box;
    use tollgate_engine::Options;

    const PER_ROUND: usize = 2_000;
    let users = users.max(2);
    let features = ["pdf-export", "audit-log", "e-invoicing"];
    let uid = |text: String| -> cedar_policy::EntityUid { text.parse().unwrap() };
    let prepare = |snapshot: &Arc<TenantSnapshot>, user: usize, feature: &str| -> Timed {
        let principal = format!("user-{user:05}");
        let pb_request = use_request(&snapshot.tenant, &principal, feature);
        let prepared =
            tollgate::decide::prepare(policies, tollgate::api::convert::check(pb_request), None)
                .unwrap();
        let principal = uid(format!("User::{principal:?}"));
        let action = uid(r#"Action::"use""#.to_string());
        let resource = uid(format!("Feature::{feature:?}"));
        let context = cedar_policy::Context::from_pairs([
            (
                "now".to_string(),
                cedar_policy::RestrictedExpression::new_datetime(BENCH_NOW),
            ),
            (
                "country".to_string(),
                cedar_policy::RestrictedExpression::new_string("BR".to_string()),
            ),
        ])
        .unwrap();
        let request = cedar_policy::Request::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            context,
            Some(&policies.schema),
        )
        .unwrap();
        Timed {
            snapshot: Arc::clone(snapshot),
            prepared,
            request,
            principal,
            action,
            resource,
        }
    };
    let whole_decision = |timed: &Timed| {
        let whole: &cedar_policy::Entities = &timed.snapshot.entities;
        assert!(whole.get(&timed.principal).is_some());
        tollgate_engine::evaluate(
            policies
                .prepared_for(&timed.action)
                .candidates(Some(timed.resource.as_ref())),
            whole,
            &timed.request,
            Options::default(),
        )
    };
    let compact_decision = |timed: &Timed| {
        tollgate_engine::decide(
            policies,
            &timed.snapshot,
            &timed.prepared,
            Options::default(),
        )
        .unwrap()
    };
    let parse = |tenant: &str| {
        let document = shape.snapshot_json(tenant, 1, users);
        Arc::new(
            TenantSnapshot::parse(&document, Some(tenant), policies, SnapshotSource::File).unwrap(),
        )
    };
    let one = parse("timing");
    let spread_tenants: Vec<Arc<TenantSnapshot>> = if users <= 1_000 {
        (0..SPREAD_TENANTS)
            .map(|index| parse(&format!("timing-{index:04}")))
            .collect()
    } else {
        vec![Arc::clone(&one)]
    };
    let mut series: Vec<(String, Vec<Timed>)> = Vec::new();
    for feature in features {
        // User 1 holds acme's member role (bob's place).
        series.push((
            format!("repeated {feature}"),
            vec![prepare(&one, 1, feature)],
        ));
    }
    let mut spread = Vec::new();
    for (index, snapshot) in spread_tenants.iter().enumerate() {
        for user in 0..users.min(1_000) {
            let feature = features[(index + user) % features.len()];
            spread.push(prepare(snapshot, user, feature));
        }
    }
    series.push(("spread".to_string(), spread));
    series.retain(|(name, _)| only_series.is_none_or(|prefix| name.starts_with(prefix)));
    let mut rows = Vec::new();
    for (name, requests) in &series {
        for timed in requests {
            let (compact, whole) = (compact_decision(timed), whole_decision(timed));
            assert_eq!(compact.allow, whole.allow, "{name}");
            assert_eq!(compact.reasons, whole.reasons, "{name}");
            assert_eq!(compact.errors, whole.errors, "{name}");
        }
        let (mut old, mut new) = (Vec::new(), Vec::new());
        let mut next = 0usize;
        for round in 0..rounds {
            // Each goes first in every other round.
            for which in [round % 2, 1 - round % 2] {
                if only.is_some_and(|only| only != ["whole", "compact"][which]) {
                    continue;
                }
                let started = Instant::now();
                for step in 0..PER_ROUND {
                    let timed = &requests[(next + step * 7919) % requests.len()];
                    if which == 0 {
                        black_box(whole_decision(black_box(timed)));
                    } else {
                        black_box(compact_decision(black_box(timed)));
                    }
                }
                let ns = started.elapsed().as_secs_f64() * 1e9 / PER_ROUND as f64;
                if which == 0 {
                    old.push(ns);
                } else {
                    new.push(ns);
                }
            }
            next += 1;
        }
        let middle = |samples: &mut Vec<f64>| {
            if samples.is_empty() {
                f64::NAN
            } else {
                median(samples)
            }
        };
        rows.push((
            name.clone(),
            requests.len(),
            middle(&mut old),
            middle(&mut new),
        ));
    }
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(name, requests, old, new)| {
                serde_json::json!({"series": name, "requests": requests, "whole_ns": old, "compact_ns": new})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"users": users, "rounds": rounds, "series": rows})
        );
        return;
    }
    println!(
        "decisions of members and others of tenants of {users} users ({} entities each), median of {rounds} rounds of {PER_ROUND}:",
        one.entities.entity_count()
    );
    println!(
        "{:<24} {:>9} {:>15} {:>12} {:>8}",
        "series", "requests", "whole Entities", "compact", "change"
    );
    for (name, requests, old, new) in rows {
        println!(
            "{name:<24} {requests:>9} {old:>12.0} ns {new:>9.0} ns {:>+7.1}%",
            (new / old - 1.0) * 100.0
        );
    }
}
