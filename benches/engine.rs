//! In-process decision benchmarks on the example policies (`policies/`).
//!
//! For tenants of 10, 1,000 and 10,000 users, one criterion group per size
//! (`users_10`, `users_1000`, `users_10000`) compares, for an ALLOW and a
//! DENY-by-forbid request:
//!
//! * `cedar_bare`: Cedar's `Authorizer::is_authorized` on a prepared request,
//!   the floor tollgate cannot go below;
//! * `engine_decide`: `tollgate_engine::decide` on a prepared request (Cedar
//!   plus the principal check and turning Cedar's answer into reasons);
//! * `full_check`: `api::check` (the decision service) on a protobuf request, i.e. the whole
//!   in-process path: protobuf → Cedar conversion, schema validation, decision
//!   and the protobuf response. The request is cloned in the (untimed) setup of
//!   `iter_batched`, so its clone is not part of the measurement. Its `now`
//!   is the same every time, so after the first call its `datetime` value is
//!   given again rather than parsed;
//! * `full_check_new_now`: the same with a `now` the thread has not
//!   converted lately (64 values in turn), so that its `datetime` is parsed;
//! * `full_check_license`: `full_check` with the tenant served from a signed
//!   license (issued, written to a licenses directory and loaded the way a
//!   sidecar loads it): the signature is verified at load, so a check costs
//!   what a file-sourced one does, plus the license's time check.
//!
//! Run: `cargo bench --bench engine` (a few minutes), or
//! `cargo bench --bench engine -- --quick` for a CI smoke run.
//! See `benches/README.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a broken fixture should abort loudly"
)]

use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cedar_policy::{Authorizer, Context, EntityUid, RestrictedExpression};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

use tollgate::api;
use tollgate::api::pb;
use tollgate::decide::{DecisionService, Limits};
use tollgate::store::Store;
use tollgate_engine::Options;
use tollgate_engine::{PolicySnapshot, SnapshotSource, TenantSnapshot};
use tollgate_testkit::fixtures::example_policies;
use tollgate_testkit::request::{use_request, BENCH_NOW as NOW};
use tollgate_testkit::tenants::{self, role_of, user_id};

/// Tenant id of the generated snapshots.
const TENANT: &str = "bench";
/// Tenant sizes (number of users).
const SIZES: [usize; 3] = [10, 1_000, 10_000];
/// Country of every request.
const COUNTRY: &str = "BR";

/// The two requests benchmarked: the resource decides the outcome.
#[derive(Clone, Copy)]
enum Case {
    /// A member uses `pdf-export` (tier 1, the account is pro): `members-use` permits.
    Allow,
    /// A member uses `audit-log` (tier 2): the `tier-too-low` forbid denies.
    DenyForbid,
}

impl Case {
    const ALL: [Case; 2] = [Case::Allow, Case::DenyForbid];

    fn name(self) -> &'static str {
        match self {
            Case::Allow => "allow",
            Case::DenyForbid => "deny_forbid",
        }
    }

    fn feature(self) -> &'static str {
        match self {
            Case::Allow => "pdf-export",
            Case::DenyForbid => "audit-log",
        }
    }

    /// `(allow, reason code)` the decision must come out as.
    fn expected(self) -> (bool, &'static str) {
        match self {
            Case::Allow => (true, "member_role"),
            Case::DenyForbid => (false, "tier_too_low"),
        }
    }
}

fn policies() -> PolicySnapshot {
    let dir = example_policies();
    PolicySnapshot::load_dir(&dir)
        .unwrap_or_else(|problems| panic!("cannot load {}: {problems:?}", dir.display()))
}

/// The principal of the benchmarked requests: a member in the middle of the user list.
fn principal_index(users: usize) -> usize {
    let index = ((users / 2) & !3) | 1;
    assert!(index < users && role_of(index) == "member");
    index
}

/// A snapshot document shaped like `entitlements/acme.json` with `users` users
/// (see `tollgate_testkit::tenants`).
fn snapshot_json(users: usize) -> Vec<u8> {
    tenants::snapshot_json(TENANT, 1, users)
}

fn pb_request(principal: &str, case: Case) -> pb::CheckRequest {
    use_request(TENANT, principal, case.feature())
}

/// `request` with the context's `now` set to `now`.
fn with_now(request: &pb::CheckRequest, now: &str) -> pb::CheckRequest {
    let mut request = request.clone();
    request.context.insert(
        "now".to_string(),
        pb::Value {
            kind: Some(pb::value::Kind::Extension(pb::Extension {
                r#fn: "datetime".to_string(),
                arg: now.to_string(),
                args: Vec::new(),
            })),
        },
    );
    request
}

/// The same request built directly with Cedar's API, validated against the schema.
fn cedar_request(policies: &PolicySnapshot, principal: &str, case: Case) -> cedar_policy::Request {
    let uid = |text: String| EntityUid::from_str(&text).expect("entity uid");
    let context = Context::from_pairs([
        ("now".to_string(), RestrictedExpression::new_datetime(NOW)),
        (
            "country".to_string(),
            RestrictedExpression::new_string(COUNTRY.to_string()),
        ),
    ])
    .expect("context");
    cedar_policy::Request::new(
        uid(format!("User::{principal:?}")),
        uid(r#"Action::"use""#.to_string()),
        uid(format!("Feature::{:?}", case.feature())),
        context,
        Some(&policies.schema),
    )
    .expect("request fits the schema")
}

fn bench_size(c: &mut Criterion, users: usize) {
    let policies = Arc::new(policies());
    let tenant = TenantSnapshot::parse(
        &snapshot_json(users),
        Some(TENANT),
        &policies,
        SnapshotSource::File,
    )
    .expect("generated snapshot fits the schema");
    let tenant = Arc::new(tenant);
    let principal = user_id(principal_index(users));

    let decision_point = tollgate_testkit::fixtures::file_service(&policies, [Arc::clone(&tenant)]);
    let caller = tollgate::decide::Caller::trusted("bench");
    let authorizer = Authorizer::new();
    let (licensed, _license_dir) = license_sourced(&policies, users);

    let mut group = c.benchmark_group(format!("users_{users}"));
    group.throughput(Throughput::Elements(1));
    for case in Case::ALL {
        let (allow, code) = case.expected();
        let request = pb_request(&principal, case);

        // Each path must decide as expected before it is timed.
        let cedar = cedar_request(&policies, &principal, case);
        let answer = authorizer.is_authorized(&cedar, &policies.policy_set, &tenant.entities);
        assert_eq!(
            answer.decision() == cedar_policy::Decision::Allow,
            allow,
            "cedar_bare/{}: {answer:?}",
            case.name()
        );
        let prepared = tollgate::decide::prepare(
            &policies,
            tollgate::api::convert::check(request.clone()),
            None,
        )
        .expect("request fits the schema");
        let decision = tollgate_engine::decide(&policies, &tenant, &prepared, Options::default())
            .expect("decide");
        assert_eq!(decision.allow, allow, "engine_decide/{}", case.name());
        assert_eq!(decision.reasons.len(), 1, "{decision:?}");
        assert_eq!(decision.reasons[0].code(), code, "{decision:?}");
        // The file source never waits: a current-thread runtime only drives
        // the future.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let response = runtime
            .block_on(api::check(&decision_point, &caller, request.clone()))
            .expect("check");
        let expected = if allow {
            pb::Decision::Allow
        } else {
            pb::Decision::Deny
        };
        assert_eq!(
            response.decision,
            expected as i32,
            "full_check/{}",
            case.name()
        );
        assert_eq!(response.reasons[0].code, code, "{response:?}");

        group.bench_function(BenchmarkId::new("cedar_bare", case.name()), |b| {
            b.iter(|| {
                authorizer.is_authorized(
                    black_box(&cedar),
                    black_box(&policies.policy_set),
                    black_box(&tenant.entities),
                )
            });
        });
        group.bench_function(BenchmarkId::new("engine_decide", case.name()), |b| {
            b.iter(|| {
                tollgate_engine::decide(
                    black_box(&policies),
                    black_box(&tenant),
                    black_box(&prepared),
                    Options::default(),
                )
            });
        });
        group.bench_function(BenchmarkId::new("full_check", case.name()), |b| {
            b.iter_batched(
                || request.clone(),
                |request| {
                    runtime.block_on(api::check(&decision_point, &caller, black_box(request)))
                },
                BatchSize::SmallInput,
            );
        });
        let from_license = runtime
            .block_on(api::check(&licensed, &caller, request.clone()))
            .expect("check");
        assert_eq!(
            (from_license.decision, &from_license.reasons),
            (response.decision, &response.reasons),
            "full_check_license/{}",
            case.name()
        );
        assert_eq!(
            from_license.freshness.as_ref().map(|f| f.source),
            Some(pb::SnapshotSource::License as i32)
        );
        group.bench_function(BenchmarkId::new("full_check_license", case.name()), |b| {
            b.iter_batched(
                || request.clone(),
                |request| runtime.block_on(api::check(&licensed, &caller, black_box(request))),
                BatchSize::SmallInput,
            );
        });
        // The same with a `now` the thread has not converted lately (64
        // values in turn, where a thread keeps the last 4): the `datetime`
        // parse that `full_check` skips for a `now` it holds.
        let new_nows: Vec<pb::CheckRequest> = (0..64)
            .map(|ms| with_now(&request, &format!("{}.{ms:03}Z", NOW.trim_end_matches('Z'))))
            .collect();
        let decided = runtime
            .block_on(api::check(&decision_point, &caller, new_nows[1].clone()))
            .expect("check");
        assert_eq!(
            decided.decision,
            expected as i32,
            "full_check_new_now/{}",
            case.name()
        );
        let mut turn = 0;
        group.bench_function(BenchmarkId::new("full_check_new_now", case.name()), |b| {
            b.iter_batched(
                || {
                    turn = (turn + 1) % new_nows.len();
                    new_nows[turn].clone()
                },
                |request| {
                    runtime.block_on(api::check(&decision_point, &caller, black_box(request)))
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// A decision service whose tenant comes from a signed license of the
/// generated snapshot, loaded from a licenses directory (kept alive by the
/// returned directory).
fn license_sourced(
    policies: &PolicySnapshot,
    users: usize,
) -> (DecisionService, tempfile::TempDir) {
    use tollgate::license::{issue, IssueRequest, PrivateKey};
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let licenses = dir.path().join("licenses");
    std::fs::create_dir_all(&keys).expect("keys dir");
    std::fs::create_dir_all(&licenses).expect("licenses dir");
    let key = PrivateKey::generate().expect("key");
    std::fs::write(keys.join("vendor.pem"), key.public_pem().expect("pem")).expect("write key");
    let now = jiff::Timestamp::now().as_second();
    let snapshot = snapshot_json(users);
    let request = IssueRequest {
        snapshot: &snapshot,
        id: None,
        issued_at: now,
        not_before: now,
        expires: now + 365 * 86_400,
        grace: 0,
        bind: Default::default(),
    };
    let (token, _) = issue(&request, policies, &key).expect("issue");
    std::fs::write(licenses.join(format!("{TENANT}.license")), token).expect("write license");
    let guard = Arc::new(tollgate::license::clock::ClockGuard::new(
        || jiff::Timestamp::now().as_millisecond(),
        300_000,
        None,
    ));
    let store =
        Store::policies_only(example_policies()).with_licenses(tollgate::store::LicenseSettings {
            dir: licenses,
            keys,
            installation: Default::default(),
            guard: Arc::clone(&guard),
            skew_s: 300,
        });
    store.reload_all();
    let serving = store
        .catalog()
        .is_some_and(|c| c.licenses.contains_key(TENANT));
    assert!(serving, "{:?}", store.reload_log().last_license_report);
    let service = DecisionService::new(Arc::new(store), Options::default(), Limits::default())
        .with_licenses(tollgate::decide::LicenseSource { guard });
    (service, dir)
}

fn engine(c: &mut Criterion) {
    for users in SIZES {
        bench_size(c, users);
    }
}

fn config() -> Criterion {
    // ~4 s per benchmark (1 s warm-up + 3 s measurement) × 30 benchmarks.
    // Command-line flags (--quick, --measurement-time, ...) still override.
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = engine
}
criterion_main!(benches);
