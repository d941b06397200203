//! Scaling curves: how the cost of a decision and the memory it needs grow
//! with the number of policies, the users of a tenant and the tenants held.
//!
//! Three sweeps; each point is measured by two child processes of its own
//! (this binary re-run with `--child memory|timing`), so that no point
//! inherits another's heap:
//!
//! * `policies`: the shipped catalog (`policies/`) plus N generated policies
//!   (10, 100, 1,000, 10,000) in the catalog's style, spread over the four
//!   actions and over per-feature, per-type and general resource scopes (see
//!   [`generated_policies`]); one tenant of 10,000 users;
//! * `users`: one tenant of N users (10 to 100,000) shaped like
//!   `entitlements/acme.json`, under the shipped catalog plus 1,000 generated
//!   policies;
//! * `tenants`: N tenants (100 to 100,000) each exactly acme's entities with
//!   a fifth user, under the same policies.
//!
//! A child writes the policy directories (schema and `.cedar` files) into
//! temporary directories, loads them with `PolicySnapshot::load_dir`, parses
//! the tenant snapshots with `TenantSnapshot::parse`, checks that an ALLOW (a
//! member uses `pdf-export` from BR) and a DENY (`audit-log`, denied by
//! `tier-too-low`) come out as expected on both paths, for every tenant.
//!
//! The memory child runs with `MIMALLOC_PURGE_DELAY=0` (freed memory goes
//! back to the system at once) and reads the resident set (`Rss` of
//! `/proc/self/smaps_rollup`, beside `VmRSS`) before and after building what
//! the sweep varies, and after every tenant has served its first decisions.
//!
//! The timing child times every decision on its own with `Instant`:
//! `tollgate_engine::decide` on a prepared request (`decide`, with the
//! tenant's map lookup), and `api::check` (the decision service) on a protobuf request
//! (`check`: conversion, schema validation, tenant lookup, decision,
//! response). The four series (two paths, ALLOW and DENY) are interleaved
//! decision by decision, so a change in the machine's speed hits them alike.
//!
//! Run: `cargo bench --bench scaling` (full run, writes `benches/scaling/`),
//! `-- --quick` (subset, writes `target/scaling-quick/`), `-- --sweeps users`,
//! `-- --out DIR`. Without `cargo bench` (`cargo test --benches`) it is a
//! smoke run of a few seconds that writes into a temporary directory. Plot
//! with `scripts/plot-scaling`. See `benches/scaling/README.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a broken setup should abort loudly"
)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{json, Value as Json};

use tollgate::api::{self, pb};
use tollgate::decide::{DecisionService, Limits};
use tollgate::store::{Catalog, Store};
use tollgate_engine::{Options, Reason};
use tollgate_engine::{PolicySnapshot, SnapshotSource, TenantMap, TenantSnapshot};
use tollgate_testkit::bench::{self, selected};
use tollgate_testkit::fixtures::{example_entitlements, example_policies, repository};
use tollgate_testkit::measure::kb_field;
use tollgate_testkit::request::use_request;

/// The binary's allocator: measured memory and allocation costs match
/// production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Generated policies of the `policies` sweep (the shipped ones come on top).
const POLICY_POINTS: [usize; 4] = [10, 100, 1_000, 10_000];
/// Users of the `users` sweep.
const USER_POINTS: [usize; 5] = [10, 100, 1_000, 10_000, 100_000];
/// Tenants of the `tenants` sweep.
const TENANT_POINTS: [usize; 4] = [100, 1_000, 10_000, 100_000];
/// Generated policies wherever the policy count is not the swept variable.
const BASE_POLICIES: usize = 1_000;
/// Users of the one tenant wherever the user count is not the swept variable.
const BASE_USERS: usize = 10_000;
/// Users the memory child of a `users` point parses in all, in identical
/// tenants of the point's size (see [`Point::copies`]).
const COPIED_USERS: usize = 200_000;
/// Most copies of a `users` point's tenant (each has the catalog's features).
const MAX_COPIES: usize = 2_000;
/// Users of a small tenant: acme's four and one more.
const SMALL_TENANT_USERS: usize = 5;
/// Timed decisions per series and point in a full run, after the warm-up.
const DECISIONS: usize = 20_000;
/// The target: decide p99 at 10,000 users and 1,000 policies, in µs.
const TARGET_P99_US: f64 = 20.0;
/// Longest a point may take (build and timing) before it is given up.
const POINT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Pause before each reading of the resident set, so that memory the
/// allocator freed (parsing's temporaries) has been returned to the system.
const SETTLE: Duration = Duration::from_millis(300);

/// Countries of the generated geo rules. BR, the country of every measured
/// request, is not among them, nor are the shipped embargo's countries.
const COUNTRIES: [&str; 16] = [
    "US", "CA", "GB", "DE", "FR", "JP", "IN", "AU", "MX", "AR", "ZA", "NG", "KR", "ID", "TR", "VN",
];
/// Roles of the generated per-feature grants, in turn.
const GRANT_ROLES: [&str; 4] = ["member", "admin", "member", "viewer"];
/// Roles of generated users, in turn (as `tollgate_testkit::tenants::role_of`).
const USER_ROLES: [&str; 4] = ["admin", "member", "viewer", "billing_admin"];

/// Scaling curves of decision time and memory (see benches/scaling/README.md).
#[derive(Debug, Parser)]
#[command(name = "scaling")]
struct Args {
    /// A subset of the points with fewer decisions (CI); writes to
    /// target/scaling-quick/ unless --out says otherwise.
    #[arg(long)]
    quick: bool,
    /// Directory of the CSV files [default: benches/scaling/; with --quick
    /// target/scaling-quick/; in test mode a temporary directory].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Sweeps to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "policies,users,tenants"
    )]
    sweeps: Vec<Sweep>,
    /// Timed decisions per series and point [default: 20,000; 5,000 with
    /// --quick; 200 in test mode].
    #[arg(long, value_name = "N")]
    decisions: Option<usize>,
    /// Timing runs per point, each in a fresh child process, in rounds over
    /// the sweep's points; each statistic is the median over the runs
    /// [default: 3; 1 with --quick and in test mode].
    #[arg(long, value_name = "N")]
    repeat: Option<usize>,
    /// Passed by `cargo bench`. Without it (`cargo test --benches`) this is a
    /// smoke run of a few seconds that writes into a temporary directory.
    #[arg(long, hide = true)]
    bench: bool,
    /// Benchmark name filters passed by `cargo bench -- FILTER`: when any is
    /// given and none is a part of "scaling", nothing runs.
    #[arg(hide = true)]
    filters: Vec<String>,
    /// Internal: measure one part of a point and print it as JSON.
    #[arg(long, hide = true, value_enum, requires = "point")]
    child: Option<Part>,
    /// Internal: the point a child measures, as JSON.
    #[arg(long, hide = true, value_name = "JSON")]
    point: Option<String>,
}

/// What a child process measures of its point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// The resident set before and after loading the policies and parsing the
    /// tenants, with mimalloc returning freed memory at once
    /// (`MIMALLOC_PURGE_DELAY=0`), so that what parsing freed is not counted.
    Memory,
    /// The decisions, with the allocator's default settings.
    Timing,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Memory => "memory",
            Part::Timing => "timing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Sweep {
    /// Generated policies: 10, 100, 1,000, 10,000.
    Policies,
    /// Users of one tenant: 10 to 100,000.
    Users,
    /// Small tenants held: 100 to 100,000.
    Tenants,
}

impl Sweep {
    fn name(self) -> &'static str {
        match self {
            Sweep::Policies => "policies",
            Sweep::Users => "users",
            Sweep::Tenants => "tenants",
        }
    }

    /// What "per" means in the memory column.
    fn unit(self) -> &'static str {
        match self {
            Sweep::Policies => "policy",
            Sweep::Users => "user",
            Sweep::Tenants => "tenant",
        }
    }
}

/// One point: what the child builds and how long it times.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Point {
    sweep: Sweep,
    /// Generated policies (the shipped catalog comes on top).
    generated: usize,
    /// Users of the one tenant (`policies`, `users`).
    users: usize,
    /// Small tenants (`tenants`).
    tenants: usize,
    /// `users`, memory child: identical tenants of `users` users parsed side
    /// by side, so that the growth is large enough to measure (RSS moves by
    /// a few MiB for reasons of its own); the growth is divided by them all.
    copies: usize,
    decisions: usize,
    warmup: usize,
}

impl Point {
    /// The swept value.
    fn value(&self) -> usize {
        match self.sweep {
            Sweep::Policies => self.generated,
            Sweep::Users => self.users,
            Sweep::Tenants => self.tenants,
        }
    }

    /// How many of the swept unit the memory child built: the swept value,
    /// times the copies for `users`.
    fn units(&self) -> usize {
        match self.sweep {
            Sweep::Users => self.users * self.copies.max(1),
            _ => self.value(),
        }
    }
}

/// What a run does.
struct Plan {
    points: Vec<Point>,
    /// Timing runs per point.
    repeat: usize,
    out: PathBuf,
    /// Kept alive until the run ends (test mode's output directory).
    _temp: Option<tempfile::TempDir>,
}

fn plan(args: &Args) -> Result<Plan, String> {
    let test_mode = !args.bench && !args.quick;
    let root = repository();
    let (policy_points, user_points, tenant_points, base_policies, base_users, decisions): (
        &[usize],
        &[usize],
        &[usize],
        usize,
        usize,
        usize,
    ) = if test_mode {
        // A debug build parses and decides some 20 times slower.
        (&[10, 100], &[10, 100], &[10, 100], 100, 100, 100)
    } else if args.quick {
        (
            &[10, 100, 1_000],
            &[10, 1_000, 10_000],
            &[100, 1_000, 10_000],
            BASE_POLICIES,
            BASE_USERS,
            5_000,
        )
    } else {
        (
            &POLICY_POINTS,
            &USER_POINTS,
            &TENANT_POINTS,
            BASE_POLICIES,
            BASE_USERS,
            DECISIONS,
        )
    };
    // Users the memory child of the `users` sweep parses in all (copies of
    // the point's tenant).
    let copied_users = if test_mode { 1_000 } else { COPIED_USERS };
    let decisions = args.decisions.unwrap_or(decisions);
    if decisions == 0 {
        return Err("--decisions must be at least 1".to_string());
    }
    // Untimed decisions per series before timing: a tenth as many.
    let warmup = (decisions / 10).max(10);
    let mut points = Vec::new();
    for sweep in &args.sweeps {
        let values = match sweep {
            Sweep::Policies => policy_points,
            Sweep::Users => user_points,
            Sweep::Tenants => tenant_points,
        };
        for &value in values {
            let mut point = Point {
                sweep: *sweep,
                generated: base_policies,
                users: base_users,
                tenants: 1,
                copies: 1,
                decisions,
                warmup,
            };
            match sweep {
                Sweep::Policies => point.generated = value,
                Sweep::Users => {
                    point.users = value;
                    point.copies = (copied_users / value).clamp(1, MAX_COPIES);
                }
                Sweep::Tenants => {
                    point.tenants = value;
                    point.users = SMALL_TENANT_USERS;
                }
            }
            points.push(point);
        }
    }
    let (out, temp) = match (&args.out, test_mode, args.quick) {
        (Some(out), _, _) => (out.clone(), None),
        (None, true, _) => {
            let temp = tempfile::tempdir().map_err(|error| format!("tempdir: {error}"))?;
            (temp.path().to_path_buf(), Some(temp))
        }
        (None, false, true) => (root.join("target").join("scaling-quick"), None),
        (None, false, false) => (root.join("benches").join("scaling"), None),
    };
    let repeat = args
        .repeat
        .unwrap_or(if test_mode || args.quick { 1 } else { 3 });
    if repeat == 0 {
        return Err("--repeat must be at least 1".to_string());
    }
    Ok(Plan {
        points,
        repeat,
        out,
        _temp: temp,
    })
}

// ---------------------------------------------------------------------------
// Generated data

/// The shipped catalog's directory.
fn catalog_dir() -> PathBuf {
    example_policies()
}

/// `entitlements/acme.json`, the shape of every generated tenant.
fn acme() -> Json {
    let path = example_entitlements().join("acme.json");
    let text = std::fs::read_to_string(&path).expect("read entitlements/acme.json");
    serde_json::from_str(&text).expect("acme.json is JSON")
}

fn entities_of(document: &Json) -> &Vec<Json> {
    document["entities"].as_array().expect("entities array")
}

fn kind_of(entity: &Json) -> &str {
    entity["uid"]["type"].as_str().unwrap_or_default()
}

/// acme's `Feature` ids, in file order.
fn acme_features(acme: &Json) -> Vec<String> {
    entities_of(acme)
        .iter()
        .filter(|entity| kind_of(entity) == "Feature")
        .map(|entity| entity["uid"]["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Generated features besides acme's, for `generated` generated policies: one
/// per ten policies, so that the per-feature policies of one feature stay
/// about as many (five or six that can apply to `use`) however large the set.
fn generated_feature_count(generated: usize) -> usize {
    (generated / 10).max(1)
}

fn generated_feature_id(index: usize) -> String {
    format!("f-{index:05}")
}

/// Generated policy texts, as `(file name, text)`, in the shipped catalog's
/// style, every one with `@id`, `@code` and `@reason`. In every 20 policies:
///
/// | share | file | policy | scope |
/// |---|---|---|---|
/// | 7 | `gen-features.cedar` | permit `use` of one feature to a role, when the account's tier is high enough | `principal in Role`, `resource == Feature` |
/// | 3 | `gen-features.cedar` | forbid `use` of one feature from two countries | `resource == Feature` |
/// | 3 | `gen-features.cedar` | permit `view` of one feature to viewers, by tier | `principal in Role`, `resource == Feature` |
/// | 2 | `gen-features.cedar` | forbid `view` and `use` of one feature on a retired plan | `resource == Feature` |
/// | 1 | `gen-rules.cedar` | forbid `use` of anything from a country on a plan (even), of a feature of an add-on not bought (odd) | `resource` / `resource is Feature` |
/// | 2 | `gen-accounts.cedar` | permit `administer` to admins from a tier; forbid `manage_billing` on a retired plan | `resource` (an Account) |
/// | 2 | `gen-rules.cedar` | forbid `view` from a country; permit `view` to a group up to a tier | `resource` / `resource is Feature` |
///
/// The per-feature policies go round the features (acme's, then
/// [`generated_feature_count`] generated ones), each kind on its own. A `use`
/// of one feature can therefore match (and is evaluated against) the shipped
/// policies that apply to `use`, one in twenty generated policies (the
/// general `use` rules) and the few per-feature policies of that feature;
/// the rest are ruled out by tollgate's index by action and resource. None of
/// the generated forbids holds for the measured requests (BR, plan `pro`,
/// no add-on), several generated permits do.
fn generated_policies(generated: usize, features: &[String]) -> Vec<(String, String)> {
    let mut per_feature = String::new();
    let mut rules = String::new();
    let mut accounts = String::new();
    let mut counters = [0usize; 20];
    let feature = |counter: usize| &features[counter % features.len()];
    for index in 0..generated {
        let slot = index % 20;
        let n = counters[slot];
        counters[slot] += 1;
        let id = format!("gen-{index:05}");
        // Each kind has its own counter over its slots.
        let kind_counter = |slots: std::ops::Range<usize>| -> usize {
            let per_cycle = slots.len();
            n * per_cycle + (slot - slots.start)
        };
        match slot {
            0..=6 => {
                let k = kind_counter(0..7);
                let role = GRANT_ROLES[k % GRANT_ROLES.len()];
                let tier = k % 3;
                let _ = write!(
                    per_feature,
                    "@id(\"{id}\")\n@code(\"feature_grant\")\n@reason(\"your role may use this feature from tier {tier}\")\n\
                     permit (principal in Role::\"{role}\", action == Action::\"use\", resource == Feature::\"{f}\")\n\
                     when {{ principal.account.tier >= {tier} }};\n\n",
                    f = feature(k),
                );
            }
            7..=9 => {
                let k = kind_counter(7..10);
                let a = COUNTRIES[k % COUNTRIES.len()];
                let b = COUNTRIES[(k + 5) % COUNTRIES.len()];
                let _ = write!(
                    per_feature,
                    "@id(\"{id}\")\n@code(\"feature_geo_blocked\")\n@reason(\"this feature is not offered in your country\")\n\
                     forbid (principal, action == Action::\"use\", resource == Feature::\"{f}\")\n\
                     when {{ [\"{a}\", \"{b}\"].contains(context.country) }};\n\n",
                    f = feature(k),
                );
            }
            10..=12 => {
                let k = kind_counter(10..13);
                let _ = write!(
                    per_feature,
                    "@id(\"{id}\")\n@code(\"feature_view\")\n@reason(\"viewers may see this feature\")\n\
                     permit (principal in Role::\"viewer\", action == Action::\"view\", resource == Feature::\"{f}\")\n\
                     when {{ principal.account.tier + 1 >= resource.min_tier }};\n\n",
                    f = feature(k),
                );
            }
            13 | 14 => {
                let k = kind_counter(13..15);
                let _ = write!(
                    per_feature,
                    "@id(\"{id}\")\n@code(\"plan_retired\")\n@reason(\"this feature was retired from your plan\")\n\
                     forbid (principal, action in [Action::\"view\", Action::\"use\"], resource == Feature::\"{f}\")\n\
                     when {{ principal.account.plan == \"legacy-{p}\" }};\n\n",
                    f = feature(k),
                    p = k % 7,
                );
            }
            15 if n % 2 == 0 => {
                let country = COUNTRIES[n / 2 % COUNTRIES.len()];
                let _ = write!(
                    rules,
                    "@id(\"{id}\")\n@code(\"plan_geo_restricted\")\n@reason(\"your plan does not include use from your country\")\n\
                     forbid (principal, action == Action::\"use\", resource)\n\
                     when {{ context.country == \"{country}\" && principal.account.tier < {tier} }};\n\n",
                    tier = 1 + n / 2 % 2,
                );
            }
            15 => {
                let _ = write!(
                    rules,
                    "@id(\"{id}\")\n@code(\"addon_required\")\n@reason(\"this feature is part of an add-on your account has not bought\")\n\
                     forbid (principal, action == Action::\"use\", resource is Feature)\n\
                     when {{ resource has addon && resource.addon == \"addon-{n}\" && !principal.account.addons.contains(\"addon-{n}\") }};\n\n",
                );
            }
            16 => {
                let _ = write!(
                    accounts,
                    "@id(\"{id}\")\n@code(\"admin_role\")\n@reason(\"admins of accounts from tier {tier} may administer them\")\n\
                     permit (principal in Role::\"admin\", action == Action::\"administer\", resource)\n\
                     when {{ resource == principal.account && resource.tier >= {tier} }};\n\n",
                    tier = n % 3,
                );
            }
            17 => {
                let _ = write!(
                    accounts,
                    "@id(\"{id}\")\n@code(\"billing_closed\")\n@reason(\"billing of a retired plan is managed by support\")\n\
                     forbid (principal, action == Action::\"manage_billing\", resource)\n\
                     when {{ resource.plan == \"legacy-{p}\" }};\n\n",
                    p = n % 7,
                );
            }
            18 => {
                let country = COUNTRIES[n % COUNTRIES.len()];
                let _ = write!(
                    rules,
                    "@id(\"{id}\")\n@code(\"view_geo_restricted\")\n@reason(\"the catalog cannot be browsed from your country\")\n\
                     forbid (principal, action == Action::\"view\", resource)\n\
                     when {{ context has country && context.country == \"{country}\" }};\n\n",
                );
            }
            _ => {
                let _ = write!(
                    rules,
                    "@id(\"{id}\")\n@code(\"team_view\")\n@reason(\"your team may see features up to tier {tier}\")\n\
                     permit (principal in Group::\"team-{n}\", action == Action::\"view\", resource is Feature)\n\
                     when {{ resource.min_tier <= {tier} }};\n\n",
                    tier = n % 3,
                );
            }
        }
    }
    [
        ("gen-features.cedar", per_feature),
        ("gen-rules.cedar", rules),
        ("gen-accounts.cedar", accounts),
    ]
    .into_iter()
    .filter(|(_, text)| !text.is_empty())
    .map(|(name, text)| (name.to_string(), text))
    .collect()
}

/// Writes the schema, the shipped policies and `generated` generated policies
/// into `dir`.
fn write_policy_dir(dir: &Path, generated: usize, features: &[String]) {
    for path in tollgate_engine::policies::list_files(&catalog_dir(), "cedar")
        .expect("list policies/")
        .into_iter()
        .chain([catalog_dir().join(tollgate_engine::policies::SCHEMA_FILE)])
    {
        let name = path.file_name().expect("file name");
        std::fs::copy(&path, dir.join(name)).expect("copy a catalog file");
    }
    for (name, text) in generated_policies(generated, features) {
        std::fs::write(dir.join(name), text).expect("write generated policies");
    }
}

fn user_entity(tenant: &str, id: &str, role: &str, seat: bool) -> Json {
    let mut parents = vec![json!({"type": "Role", "id": role})];
    if seat {
        parents.push(json!({"type": "Seat", "id": "analytics"}));
    }
    json!({
        "uid": {"type": "User", "id": id},
        "attrs": {"account": {"__entity": {"type": "Account", "id": tenant}}},
        "parents": parents,
    })
}

fn user_id(index: usize) -> String {
    format!("user-{index:06}")
}

/// The measured principal of a generated tenant of `users` users: a member in
/// the middle of the list.
fn principal_index(users: usize) -> usize {
    let index = ((users / 2) & !3) | 1;
    assert!(index < users && USER_ROLES[index % 4] == "member");
    index
}

/// A tenant shaped like acme: acme's account (as `tenant`), roles, features,
/// region, seat and meter; `users` generated users (roles in turn, every tenth
/// with acme's `analytics` seat) instead of acme's four; and `features`
/// generated features (tiers 0-2 in turn, every fifth fenced to countries,
/// every seventh an add-on).
fn large_tenant_json(acme: &Json, tenant: &str, users: usize, features: usize) -> Vec<u8> {
    let mut entities: Vec<Json> = Vec::with_capacity(users + features + 20);
    for entity in entities_of(acme) {
        match kind_of(entity) {
            "User" => {}
            "Account" => {
                let mut account = entity.clone();
                account["uid"]["id"] = json!(tenant);
                entities.push(account);
            }
            _ => entities.push(entity.clone()),
        }
    }
    for index in 0..users {
        entities.push(user_entity(
            tenant,
            &user_id(index),
            USER_ROLES[index % 4],
            index % 10 == 0,
        ));
    }
    for index in 0..features {
        let mut attrs = json!({"min_tier": index % 3});
        if index % 5 == 0 {
            attrs["countries"] = json!(["US", "CA", "GB", "DE", "FR", "BR"]);
        }
        if index % 7 == 0 {
            attrs["addon"] = json!(format!("addon-{}", index % 11));
        }
        entities.push(json!({
            "uid": {"type": "Feature", "id": generated_feature_id(index)},
            "attrs": attrs,
            "parents": [],
        }));
    }
    serde_json::to_vec(&json!({"tenant": tenant, "version": 1, "entities": entities}))
        .expect("serialise snapshot")
}

/// Placeholder for the tenant id in [`small_tenant_template`].
const TENANT_PLACEHOLDER: &str = "tenant-placeholder";

/// acme.json with a fifth user (`eve`, a member) and the tenant id (the
/// document's and its Account's) replaced by [`TENANT_PLACEHOLDER`], as compact
/// JSON: 22 entities (one Account, four Roles, five Users, acme's eight
/// Features, its Region, Seat and Meter).
fn small_tenant_template(acme: &Json) -> String {
    let mut entities: Vec<Json> = Vec::new();
    for entity in entities_of(acme) {
        let mut entity = entity.clone();
        match kind_of(&entity) {
            "Account" => entity["uid"]["id"] = json!(TENANT_PLACEHOLDER),
            "User" => {
                entity["attrs"]["account"]["__entity"]["id"] = json!(TENANT_PLACEHOLDER);
            }
            _ => {}
        }
        entities.push(entity);
    }
    let users = entities.iter().filter(|e| kind_of(e) == "User").count();
    assert_eq!(users, 4, "acme.json has four users");
    let last_user = entities
        .iter()
        .rposition(|e| kind_of(e) == "User")
        .expect("a user");
    entities.insert(
        last_user + 1,
        user_entity(TENANT_PLACEHOLDER, "eve", "member", false),
    );
    serde_json::to_string(
        &json!({"tenant": TENANT_PLACEHOLDER, "version": 1, "entities": entities}),
    )
    .expect("serialise snapshot")
}

fn tenant_id(index: usize) -> String {
    format!("t-{index:06}")
}

// ---------------------------------------------------------------------------
// Child: one point

/// Resident memory in bytes: `Rss` and `Anonymous` from
/// `/proc/self/smaps_rollup`, which the kernel counts by walking the page
/// tables, and `VmRSS` from `/proc/self/status`, the kernel's running counter.
/// The counter is kept per CPU and folded in lazily: right after a large
/// parse it was seen hundreds of MiB short of the page-table count, so the
/// page-table count is the one reported.
fn rss() -> Memory {
    fn field(text: &str, name: &str) -> u64 {
        kb_field(text, name).unwrap_or(0)
    }
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Memory {
        rss: field(&rollup, "Rss:"),
        anon: field(&rollup, "Anonymous:"),
        vm_rss: field(&status, "VmRSS:"),
    }
}

/// One reading of [`rss`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Memory {
    rss: u64,
    anon: u64,
    vm_rss: u64,
}

fn settled_rss() -> Memory {
    std::thread::sleep(SETTLE);
    rss()
}

/// 1-minute load average from /proc/loadavg.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The two measured requests.
#[derive(Clone, Copy)]
enum Case {
    /// A member uses `pdf-export` (tier 1, the account is pro).
    Allow,
    /// A member uses `audit-log` (tier 2): `tier-too-low` forbids.
    Deny,
}

impl Case {
    fn feature(self) -> &'static str {
        match self {
            Case::Allow => "pdf-export",
            Case::Deny => "audit-log",
        }
    }
}

/// Checks a decision's outcome: the ALLOW by `members-use` (and possibly
/// generated per-feature grants, `feature_grant`), the DENY by `tier-too-low`
/// alone; no policy errors.
fn expected(case: Case, allow: bool, codes: &[&str], errors: usize) -> Result<(), String> {
    let ok = errors == 0
        && match case {
            Case::Allow => {
                allow
                    && codes.contains(&"member_role")
                    && codes
                        .iter()
                        .all(|code| matches!(*code, "member_role" | "feature_grant"))
            }
            Case::Deny => !allow && codes == ["tier_too_low"],
        };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}: allow {allow}, reasons {codes:?}, {errors} errors",
            case.feature()
        ))
    }
}

fn check_decision(case: Case, decision: &tollgate_engine::Decision) -> Result<(), String> {
    let codes: Vec<&str> = decision.reasons.iter().map(Reason::code).collect();
    expected(case, decision.allow, &codes, decision.errors.len())
}

fn check_response(case: Case, response: &pb::CheckResponse) -> Result<(), String> {
    let codes: Vec<&str> = response.reasons.iter().map(|r| r.code.as_str()).collect();
    expected(
        case,
        response.decision == pb::Decision::Allow as i32,
        &codes,
        response.errors.len(),
    )
}

/// Latency summary in µs (nearest-rank percentiles) of nanosecond samples.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Summary {
    count: usize,
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn summarize(mut samples: Vec<u64>) -> Summary {
    samples.sort_unstable();
    let n = samples.len();
    if n == 0 {
        return Summary::default();
    }
    let rank = |p: f64| {
        let index = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1;
        samples[index] as f64 / 1_000.0
    };
    Summary {
        count: n,
        mean: samples.iter().sum::<u64>() as f64 / n as f64 / 1_000.0,
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        p999: rank(99.9),
        max: samples[n - 1] as f64 / 1_000.0,
    }
}

/// What a child reports for its point.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Measured {
    point: Point,
    policies_total: usize,
    /// Policies tollgate evaluates for the measured ALLOW (`use` of
    /// `pdf-export`): those its action and resource index cannot rule out.
    candidates_allow: usize,
    /// The same for the DENY (`use` of `audit-log`).
    candidates_deny: usize,
    /// Entities of one tenant snapshot.
    entities_per_tenant: usize,
    /// Resident memory before building what the sweep varies (see
    /// [`measure`] for the order of the work).
    at_start: Memory,
    /// After parsing the tenants.
    at_tenants: Memory,
    /// After loading the policies that decide.
    at_policies: Memory,
    /// After every tenant has served an ALLOW and a DENY on both paths.
    at_served: Memory,
    policy_load_s: f64,
    tenant_parse_s: f64,
    timing_s: f64,
    /// Timing child processes whose statistics were combined.
    #[serde(default)]
    timing_runs: usize,
    load_average: f64,
    decide_allow: Summary,
    decide_deny: Summary,
    check_allow: Summary,
    check_deny: Summary,
}

impl Measured {
    /// Growth of one field between two readings, signed.
    fn delta(before: Memory, after: Memory, field: fn(&Memory) -> u64) -> i64 {
        i64::try_from(field(&after)).unwrap_or(i64::MAX)
            - i64::try_from(field(&before)).unwrap_or(i64::MAX)
    }

    /// Growth of `field` attributed to the swept quantity: loading the
    /// policies (`policies`); parsing the tenants, plus whatever serving
    /// their first decisions added (`users`, `tenants`).
    fn swept(&self, field: fn(&Memory) -> u64) -> i64 {
        match self.point.sweep {
            Sweep::Policies => Self::delta(self.at_start, self.at_policies, field),
            Sweep::Users | Sweep::Tenants => {
                Self::delta(self.at_start, self.at_tenants, field)
                    + self.served_growth(field).max(0)
            }
        }
    }

    /// What serving the first decisions added after everything was built.
    fn served_growth(&self, field: fn(&Memory) -> u64) -> i64 {
        let before = match self.point.sweep {
            Sweep::Policies => self.at_tenants,
            Sweep::Users | Sweep::Tenants => self.at_policies,
        };
        Self::delta(before, self.at_served, field)
    }

    /// Resident set growth attributed to the swept quantity, in bytes
    /// (`Rss` of `smaps_rollup`).
    fn growth(&self) -> u64 {
        u64::try_from(self.swept(|m| m.rss)).unwrap_or(0)
    }

    fn anon_growth(&self) -> i64 {
        self.swept(|m| m.anon)
    }

    /// The growth as `VmRSS` counts it (see [`rss`]).
    fn vm_rss_growth(&self) -> i64 {
        self.swept(|m| m.vm_rss)
    }

    fn bytes_per_unit(&self) -> f64 {
        self.growth() as f64 / self.point.units().max(1) as f64
    }
}

/// The tenants of a point, parsed with `TenantSnapshot::parse` as a file
/// snapshot is.
struct Tenants {
    map: TenantMap,
    ids: Vec<String>,
    /// The measured principal, a member.
    principal: String,
    /// Entities of one snapshot document.
    entities: usize,
}

fn build_tenants(
    acme: &Json,
    point: Point,
    copies: usize,
    generated_features: usize,
    policies: &PolicySnapshot,
) -> Result<Tenants, String> {
    let mut map: TenantMap = HashMap::new();
    match point.sweep {
        Sweep::Tenants => {
            let template = small_tenant_template(acme);
            let mut ids = Vec::with_capacity(point.tenants);
            for index in 0..point.tenants {
                let id = tenant_id(index);
                let document = template.replace(TENANT_PLACEHOLDER, &id);
                let snapshot = TenantSnapshot::parse(
                    document.as_bytes(),
                    Some(&id),
                    policies,
                    SnapshotSource::File,
                )
                .map_err(|error| format!("small tenant {id}: {error}"))?;
                map.insert(id.clone(), Arc::new(snapshot));
                ids.push(id);
            }
            Ok(Tenants {
                map,
                ids,
                principal: "eve".to_string(),
                entities: document_entities(template.as_bytes()),
            })
        }
        Sweep::Policies | Sweep::Users => {
            let mut ids = Vec::with_capacity(copies);
            let mut entities = 0;
            for copy in 0..copies.max(1) {
                let id = match copy {
                    0 => "scale".to_string(),
                    _ => format!("scale-{copy:06}"),
                };
                let document = large_tenant_json(acme, &id, point.users, generated_features);
                let snapshot =
                    TenantSnapshot::parse(&document, Some(&id), policies, SnapshotSource::File)
                        .map_err(|error| format!("tenant of {} users: {error}", point.users))?;
                entities = document_entities(&document);
                drop(document);
                map.insert(id.clone(), Arc::new(snapshot));
                ids.push(id);
            }
            Ok(Tenants {
                map,
                ids,
                principal: user_id(principal_index(point.users)),
                entities,
            })
        }
    }
}

fn measure(point: Point, part: Part) -> Result<Measured, String> {
    let reading = || match part {
        Part::Memory => settled_rss(),
        Part::Timing => Memory::default(),
    };
    // Built before the first reading, so that no sweep counts it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|error| format!("runtime: {error}"))?;
    let acme = acme();
    let mut features = acme_features(&acme);
    let generated_features = generated_feature_count(point.generated);
    features.extend((0..generated_features).map(generated_feature_id));

    let dir = tempfile::tempdir().map_err(|error| format!("tempdir: {error}"))?;
    write_policy_dir(dir.path(), point.generated, &features);
    drop(features);
    let load = |dir: &Path| -> Result<(Arc<PolicySnapshot>, f64), String> {
        let started = Instant::now();
        let policies = PolicySnapshot::load_dir(dir)
            .map_err(|problems| format!("generated policies do not load: {problems:?}"))?;
        Ok((Arc::new(policies), started.elapsed().as_secs_f64()))
    };

    // The order of the work depends on what the sweep measures: what is
    // built first is measured on a heap that no earlier work has left free
    // space in (freed memory that the allocator keeps would otherwise take
    // part of the growth unseen).
    // Copies of the tenant, when measuring the memory of a `users` point.
    let copies = match (part, point.sweep) {
        (Part::Memory, Sweep::Users) => point.copies.max(1),
        _ => 1,
    };
    // The shipped catalog is loaded first: that initialises what the first
    // policy load of a process initialises once, and the tenants of the
    // `users` and `tenants` sweeps are parsed against it (the same schema,
    // so the same snapshots). What a sweep varies is then built first after
    // the starting reading, on a heap that no other work of this point has
    // left free space in (memory freed and kept by the allocator would take
    // part of the growth unseen).
    let shipped = tempfile::tempdir().map_err(|error| format!("tempdir: {error}"))?;
    write_policy_dir(shipped.path(), 0, &[]);
    let (catalog, _) = load(shipped.path())?;
    let (at_start, policies, policy_load_s, tenants, tenant_parse_s, at_tenants, at_policies) =
        match point.sweep {
            Sweep::Policies => {
                drop(catalog);
                let at_start = reading();
                let (policies, load_s) = load(dir.path())?;
                let at_policies = reading();
                let started = Instant::now();
                let tenants = build_tenants(&acme, point, copies, generated_features, &policies)?;
                let parse_s = started.elapsed().as_secs_f64();
                let at_tenants = reading();
                (
                    at_start,
                    policies,
                    load_s,
                    tenants,
                    parse_s,
                    at_tenants,
                    at_policies,
                )
            }
            Sweep::Users | Sweep::Tenants => {
                let at_start = reading();
                let started = Instant::now();
                let tenants = build_tenants(&acme, point, copies, generated_features, &catalog)?;
                let parse_s = started.elapsed().as_secs_f64();
                let at_tenants = reading();
                drop(catalog);
                let (policies, load_s) = load(dir.path())?;
                let at_policies = reading();
                (
                    at_start,
                    policies,
                    load_s,
                    tenants,
                    parse_s,
                    at_tenants,
                    at_policies,
                )
            }
        };
    let Tenants {
        map: tenants,
        ids: tenant_ids,
        principal,
        entities: entities_per_tenant,
    } = tenants;

    let tenants = Arc::new(tenants);
    let decision_point = DecisionService::new(
        Arc::new(Store::from_catalog(Catalog {
            policies: Arc::clone(&policies),
            tenants: Arc::clone(&tenants),
            licenses: Default::default(),
        })),
        Options::default(),
        Limits::default(),
    );
    let caller = tollgate::decide::Caller::trusted("bench");
    let cases = [Case::Allow, Case::Deny];
    let pb_requests: Vec<pb::CheckRequest> = cases
        .iter()
        .map(|case| use_request(&tenant_ids[0], &principal, case.feature()))
        .collect();
    let prepared: Vec<_> = pb_requests
        .iter()
        .map(|request| {
            tollgate::decide::prepare(
                &policies,
                tollgate::api::convert::check(request.clone()),
                None,
            )
            .map_err(|error| format!("request does not fit the schema: {error}"))
        })
        .collect::<Result<_, _>>()?;
    let use_action = policies
        .action("Action", "use")
        .expect("action use")
        .clone();
    let candidates = |case: Case| {
        let resource: cedar_policy::EntityUid = format!("Feature::{:?}", case.feature())
            .parse()
            .expect("feature uid");
        let core: &cedar_policy_core::ast::EntityUID = resource.as_ref();
        policies
            .prepared_for(&use_action)
            .candidates(Some(core))
            .count()
    };

    // Both paths must decide as expected before anything is timed: for every
    // tenant when measuring memory (so that the last reading is of tenants
    // that have served a decision, whatever a snapshot builds on first use),
    // for up to 1,000 tenants spread over the list before timing.
    let stride = match part {
        Part::Memory => 1,
        Part::Timing => tenant_ids.len().div_ceil(1_000).max(1),
    };
    for id in tenant_ids.iter().step_by(stride).chain(tenant_ids.last()) {
        let tenant = tenants.get(id).expect("tenant");
        for (index, case) in cases.iter().enumerate() {
            let decision =
                tollgate_engine::decide(&policies, tenant, &prepared[index], Options::default())
                    .map_err(|error| format!("decide: {error}"))?;
            check_decision(*case, &decision)
                .map_err(|problem| format!("decide {id}: {problem}"))?;
            let mut request = pb_requests[index].clone();
            request.tenant.clone_from(id);
            let response = runtime
                .block_on(api::check(&decision_point, &caller, request))
                .map_err(|error| format!("check {id}: {error:?}"))?;
            check_response(*case, &response).map_err(|problem| format!("check {id}: {problem}"))?;
        }
    }
    let at_served = reading();

    let mut measured = Measured {
        point,
        policies_total: policies.policy_count(),
        candidates_allow: candidates(Case::Allow),
        candidates_deny: candidates(Case::Deny),
        entities_per_tenant,
        at_start,
        at_tenants,
        at_policies,
        at_served,
        policy_load_s,
        tenant_parse_s,
        timing_s: 0.0,
        timing_runs: 1,
        load_average: load_average(),
        decide_allow: Summary::default(),
        decide_deny: Summary::default(),
        check_allow: Summary::default(),
        check_deny: Summary::default(),
    };
    if part == Part::Memory {
        return Ok(measured);
    }

    // Timing: the four series interleaved, one decision each per iteration;
    // the tenant of iteration i is a pseudo-random one (a stride through the
    // list that is coprime with its length), so that a sweep over many
    // tenants does not find the same one in the CPU caches every time.
    measured.load_average = load_average();
    let started = Instant::now();
    let iterations = point.warmup + point.decisions;
    let mut samples: [Vec<u64>; 4] = std::array::from_fn(|_| Vec::with_capacity(point.decisions));
    let mut wrong = 0usize;
    let step = coprime_step(tenant_ids.len());
    let mut requests: Vec<pb::CheckRequest> = pb_requests.clone();
    for iteration in 0..iterations {
        let id = &tenant_ids[(iteration * step) % tenant_ids.len()];
        let record = iteration >= point.warmup;
        for (index, case) in cases.iter().enumerate() {
            // decide: the tenant lookup and the engine's decision.
            let t0 = Instant::now();
            let tenant = tenants.get(black_box(id.as_str())).expect("tenant");
            let decision = tollgate_engine::decide(
                black_box(&policies),
                tenant,
                black_box(&prepared[index]),
                Options::default(),
            );
            let ok = matches!(&decision, Ok(d) if d.allow == matches!(case, Case::Allow));
            drop(decision);
            let t1 = Instant::now();
            wrong += usize::from(!ok);
            if record {
                samples[index].push(nanos(t1 - t0));
            }

            // check: the whole in-process Check; the request's clone is not timed.
            requests[index].tenant.clone_from(id);
            let request = requests[index].clone();
            let t0 = Instant::now();
            let response =
                runtime.block_on(api::check(&decision_point, &caller, black_box(request)));
            let ok = matches!(&response, Ok(r) if (r.decision == pb::Decision::Allow as i32) == matches!(case, Case::Allow));
            drop(response);
            let t1 = Instant::now();
            wrong += usize::from(!ok);
            if record {
                samples[2 + index].push(nanos(t1 - t0));
            }
        }
    }
    measured.timing_s = started.elapsed().as_secs_f64();
    if wrong > 0 {
        return Err(format!("{wrong} timed decisions came out wrong"));
    }
    let [decide_allow, decide_deny, check_allow, check_deny] = samples.map(summarize);
    measured.decide_allow = decide_allow;
    measured.decide_deny = decide_deny;
    measured.check_allow = check_allow;
    measured.check_deny = check_deny;
    Ok(measured)
}

/// Entities in a snapshot document (the schema's action entities, which
/// Cedar adds to every snapshot, not counted).
fn document_entities(document: &[u8]) -> usize {
    serde_json::from_slice::<Json>(document)
        .ok()
        .and_then(|document| Some(document.get("entities")?.as_array()?.len()))
        .unwrap_or(0)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A step through `0..len` that visits every index (coprime with `len`).
fn coprime_step(len: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if len <= 1 {
        return 1;
    }
    (len * 3 / 7..)
        .find(|step| *step > 0 && gcd(*step, len) == 1)
        .unwrap_or(1)
}

// ---------------------------------------------------------------------------
// Parent: run the points, write CSV, print tables

/// A point's measurement: the memory child's readings and build times, and
/// the timing runs' statistics, each the median over the runs (the load
/// average: the highest seen).
fn combine(memory: &Measured, timings: &[Measured]) -> Option<Measured> {
    let mut measured = timings.first()?.clone();
    measured.at_start = memory.at_start;
    measured.at_tenants = memory.at_tenants;
    measured.at_policies = memory.at_policies;
    measured.at_served = memory.at_served;
    measured.policy_load_s = memory.policy_load_s;
    measured.tenant_parse_s = memory.tenant_parse_s;
    measured.timing_runs = timings.len();
    measured.timing_s = timings.iter().map(|m| m.timing_s).sum();
    measured.load_average = timings
        .iter()
        .map(|m| m.load_average)
        .fold(f64::NAN, f64::max);
    let median = |values: Vec<f64>| -> f64 {
        let mut values = values;
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    };
    let series = |pick: fn(&Measured) -> &Summary| -> Summary {
        let runs: Vec<&Summary> = timings.iter().map(pick).collect();
        let stat = |field: fn(&Summary) -> f64| median(runs.iter().map(|s| field(s)).collect());
        Summary {
            count: runs.iter().map(|s| s.count).sum(),
            mean: stat(|s| s.mean),
            p50: stat(|s| s.p50),
            p90: stat(|s| s.p90),
            p99: stat(|s| s.p99),
            p999: stat(|s| s.p999),
            max: stat(|s| s.max),
        }
    };
    measured.decide_allow = series(|m| &m.decide_allow);
    measured.decide_deny = series(|m| &m.decide_deny);
    measured.check_allow = series(|m| &m.check_allow);
    measured.check_deny = series(|m| &m.check_deny);
    Some(measured)
}

/// Runs one part of a point in a child process and returns its measurement.
fn run_child(point: Point, part: Part) -> Result<Measured, String> {
    let spec = serde_json::to_string(&point).expect("serialise point");
    let args = [
        "--child".to_string(),
        part.name().to_string(),
        "--point".to_string(),
        spec,
    ];
    // The memory child returns freed memory to the system at once.
    let envs: &[(&str, &str)] = if part == Part::Memory {
        &[("MIMALLOC_PURGE_DELAY", "0")]
    } else {
        &[]
    };
    let output = bench::run_child(&args, envs, POINT_TIMEOUT)
        .map_err(|problem| format!("{}: {problem}", part.name()))?;
    serde_json::from_value(output).map_err(|error| format!("{} child: {error}", part.name()))
}

/// The CSV columns after the sweep's own (see benches/scaling/README.md).
const COMMON_COLUMNS: &str = "policies_total,candidates_allow,candidates_deny,entities_per_tenant,memory_copies,\
decisions,decide_allow_p50_us,decide_allow_p99_us,decide_allow_mean_us,\
decide_deny_p50_us,decide_deny_p99_us,decide_deny_mean_us,\
check_allow_p50_us,check_allow_p99_us,check_allow_mean_us,\
check_deny_p50_us,check_deny_p99_us,check_deny_mean_us,\
rss_start_bytes,rss_tenants_bytes,rss_policies_bytes,rss_served_bytes,\
rss_growth_bytes,rss_anon_growth_bytes,vmrss_growth_bytes,served_growth_bytes,bytes_per_unit,marginal_bytes_per_unit,\
policy_load_s,tenant_parse_s,timing_runs,timing_s,load_average_1m";

fn csv_header(sweep: Sweep) -> String {
    let own = match sweep {
        Sweep::Policies => "policies_generated,users,tenants",
        Sweep::Users => "users,policies_generated,tenants",
        Sweep::Tenants => "tenants,users,policies_generated",
    };
    format!("{own},{COMMON_COLUMNS}\n")
}

/// Bytes per unit between the previous point of the sweep and this one: the
/// slope, free of what every point pays once (for `users`, per user of one
/// tenant: the growth per copy against the users of a copy).
fn marginal(m: &Measured, previous: Option<&Measured>) -> Option<f64> {
    let previous = previous?;
    let per_copy = |m: &Measured| m.growth() as f64 / m.point.copies.max(1) as f64;
    let units = m.point.value().checked_sub(previous.point.value())?;
    (units > 0).then(|| (per_copy(m) - per_copy(previous)) / units as f64)
}

fn csv_row(m: &Measured, previous: Option<&Measured>) -> String {
    let p = &m.point;
    let own = match p.sweep {
        Sweep::Policies => [p.generated, p.users, p.tenants],
        Sweep::Users => [p.users, p.generated, p.tenants],
        Sweep::Tenants => [p.tenants, p.users, p.generated],
    };
    let s =
        |summary: &Summary| format!("{:.3},{:.3},{:.3}", summary.p50, summary.p99, summary.mean);
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.1},{},{:.3},{:.3},{},{:.3},{:.2}\n",
        own[0],
        own[1],
        own[2],
        m.policies_total,
        m.candidates_allow,
        m.candidates_deny,
        m.entities_per_tenant,
        p.copies,
        p.decisions,
        s(&m.decide_allow),
        s(&m.decide_deny),
        s(&m.check_allow),
        s(&m.check_deny),
        m.at_start.rss,
        m.at_tenants.rss,
        m.at_policies.rss,
        m.at_served.rss,
        m.growth(),
        m.anon_growth(),
        m.vm_rss_growth(),
        m.served_growth(|m| m.rss),
        m.bytes_per_unit(),
        marginal(m, previous).map_or(String::new(), |bytes| format!("{bytes:.1}")),
        m.policy_load_s,
        m.tenant_parse_s,
        m.timing_runs,
        m.timing_s,
        m.load_average,
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn table(sweep: Sweep, rows: &[Measured]) -> String {
    let mut out = String::new();
    let Some(first) = rows.first() else {
        return format!("\n## {}: no point measured\n", sweep.name());
    };
    let (what, build) = match sweep {
        Sweep::Policies => (
            format!(
                "generated policies (+ the shipped catalog); 1 tenant of {} users",
                first.point.users
            ),
            "load s",
        ),
        Sweep::Users => (
            format!(
                "users of 1 tenant; {} generated policies",
                first.point.generated
            ),
            "parse s",
        ),
        Sweep::Tenants => (
            format!(
                "tenants of {} users; {} generated policies",
                first.point.users, first.point.generated
            ),
            "parse s",
        ),
    };
    let _ = writeln!(out, "\n## {} ({what})\n", sweep.name());
    let _ = writeln!(
        out,
        "| {} | evaluated | decide allow p50 / p99 / mean µs | decide deny p50 / p99 µs | check allow p50 / p99 µs | RSS growth | per {unit} | marginal per {unit} | {build} | load |",
        sweep.name(),
        unit = sweep.unit()
    );
    let _ = writeln!(out, "|---:|---:|---|---|---|---:|---:|---:|---:|---:|");
    for (index, m) in rows.iter().enumerate() {
        let marginal = marginal(m, index.checked_sub(1).and_then(|i| rows.get(i)))
            .map_or("–".to_string(), |bytes| format!("{bytes:.0} B"));
        let value = match sweep {
            Sweep::Policies => format!(
                "{} (+{})",
                m.point.generated,
                m.policies_total - m.point.generated
            ),
            _ => m.point.value().to_string(),
        };
        let build_s = match sweep {
            Sweep::Policies => m.policy_load_s,
            _ => m.tenant_parse_s,
        };
        let _ = writeln!(
            out,
            "| {value} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} MiB | {:.0} B | {marginal} | {build_s:.2} | {:.2} |",
            m.candidates_allow,
            m.decide_allow.p50,
            m.decide_allow.p99,
            m.decide_allow.mean,
            m.decide_deny.p50,
            m.decide_deny.p99,
            m.check_allow.p50,
            m.check_allow.p99,
            mib(m.growth()),
            m.bytes_per_unit(),
            m.load_average,
        );
    }
    out
}

fn run(plan: &Plan, sweeps: &[Sweep]) -> Result<bool, String> {
    std::fs::create_dir_all(&plan.out)
        .map_err(|error| format!("cannot create {}: {error}", plan.out.display()))?;
    let mut all_ok = true;
    // The target point as each sweep that contains it measured it.
    let mut target: Vec<(Sweep, f64, f64)> = Vec::new();
    for sweep in sweeps {
        let points: Vec<Point> = plan
            .points
            .iter()
            .filter(|p| p.sweep == *sweep)
            .copied()
            .collect();
        // Memory first, one child per point; then the timing runs, in rounds
        // over the points, so that a disturbance of the machine for a while
        // falls on one run of several points rather than on every run of one.
        let mut memory: Vec<Option<Measured>> = Vec::new();
        for point in &points {
            eprintln!(
                "scaling: {} = {} ({} generated policies, {} users, {} tenants{}): memory...",
                sweep.name(),
                point.value(),
                point.generated,
                point.users,
                point.tenants,
                if point.copies > 1 {
                    format!(", {} copies", point.copies)
                } else {
                    String::new()
                },
            );
            let started = Instant::now();
            match run_child(*point, Part::Memory) {
                Ok(measured) => {
                    eprintln!(
                        "scaling:   RSS growth {:.1} MiB ({:.0} B per {}), {:.0} s",
                        mib(measured.growth()),
                        measured.bytes_per_unit(),
                        sweep.unit(),
                        started.elapsed().as_secs_f64()
                    );
                    memory.push(Some(measured));
                }
                Err(problem) => {
                    all_ok = false;
                    eprintln!(
                        "scaling: {} = {}: {problem} (after {:.0} s); the point is left out",
                        sweep.name(),
                        point.value(),
                        started.elapsed().as_secs_f64()
                    );
                    memory.push(None);
                }
            }
        }
        let mut timings: Vec<Vec<Measured>> = vec![Vec::new(); points.len()];
        for round in 1..=plan.repeat {
            for (index, point) in points.iter().enumerate() {
                if memory[index].is_none() {
                    continue;
                }
                eprintln!(
                    "scaling: {} = {}: timing run {round} of {}, {} decisions per series...",
                    sweep.name(),
                    point.value(),
                    plan.repeat,
                    point.decisions
                );
                let started = Instant::now();
                match run_child(*point, Part::Timing) {
                    Ok(measured) => {
                        eprintln!(
                            "scaling:   decide allow p50 {:.1} µs p99 {:.1} µs (load average {:.2}), {:.0} s",
                            measured.decide_allow.p50,
                            measured.decide_allow.p99,
                            measured.load_average,
                            started.elapsed().as_secs_f64()
                        );
                        timings[index].push(measured);
                    }
                    Err(problem) => {
                        all_ok = false;
                        eprintln!(
                            "scaling: {} = {}: timing run {round}: {problem} (after {:.0} s)",
                            sweep.name(),
                            point.value(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            }
        }
        let mut rows: Vec<Measured> = Vec::new();
        for (index, point) in points.iter().enumerate() {
            let Some(memory) = &memory[index] else {
                continue;
            };
            let Some(measured) = combine(memory, &timings[index]) else {
                continue;
            };
            if point.generated == BASE_POLICIES && point.users == BASE_USERS && point.tenants == 1 {
                target.push((*sweep, measured.decide_allow.p99, measured.decide_deny.p99));
            }
            rows.push(measured);
        }
        let path = plan.out.join(format!("{}.csv", sweep.name()));
        let mut csv = csv_header(*sweep);
        for (index, row) in rows.iter().enumerate() {
            csv.push_str(&csv_row(
                row,
                index.checked_sub(1).and_then(|i| rows.get(i)),
            ));
        }
        std::fs::write(&path, csv)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        print!("{}", table(*sweep, &rows));
        println!("\n(written: {})", path.display());
    }
    if target.is_empty() {
        println!(
            "\ntarget point ({BASE_USERS} users x {BASE_POLICIES} generated policies) not measured in this run"
        );
    }
    for (sweep, allow, deny) in target {
        println!(
            "\ntarget: decide p99 <= {TARGET_P99_US} µs at {BASE_USERS} users x {BASE_POLICIES} generated policies ({} sweep): {} (p99 ALLOW {allow:.1} µs, DENY {deny:.1} µs)",
            sweep.name(),
            if allow.max(deny) <= TARGET_P99_US { "met" } else { "NOT met" }
        );
    }
    Ok(all_ok)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let (Some(part), Some(spec)) = (args.child, &args.point) {
        let point: Point = match serde_json::from_str(spec) {
            Ok(point) => point,
            Err(error) => {
                eprintln!("scaling: bad --child point: {error}");
                return ExitCode::from(2);
            }
        };
        return match measure(point, part) {
            Ok(measured) => {
                println!("{}", serde_json::to_string(&measured).expect("serialise"));
                ExitCode::SUCCESS
            }
            Err(problem) => {
                eprintln!("scaling: child: {problem}");
                ExitCode::FAILURE
            }
        };
    }
    if !selected(&args.filters, "scaling") {
        return ExitCode::SUCCESS;
    }
    let plan = match plan(&args) {
        Ok(plan) => plan,
        Err(problem) => {
            eprintln!("scaling: {problem}");
            return ExitCode::from(2);
        }
    };
    if !args.bench && !args.quick {
        eprintln!(
            "scaling: test mode (run without `cargo bench`): a smoke run into {}; \
             use `cargo bench --bench scaling` for a measurement",
            plan.out.display()
        );
    }
    let mut sweeps = args.sweeps.clone();
    sweeps.dedup();
    match run(&plan, &sweeps) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(problem) => {
            eprintln!("scaling: {problem}");
            ExitCode::FAILURE
        }
    }
}
