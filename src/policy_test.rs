//! `tollgate test`: runs the policy test files that live next to the policies
//! (`*.test.yaml`) and reports like `cargo test`, with a diff for every failing
//! case, JUnit XML for CI systems and the policies no case determined.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::api::{self, convert, pb};
use crate::decide::{DecisionService, Limits};
use crate::store::{Catalog, Store};
use tollgate_engine::Options;
use tollgate_engine::{PolicySnapshot, SnapshotSource, TenantMap, TenantSnapshot};

/// A test file: fixtures and the cases decided against them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Default `now` (a datetime string) passed as `context.now`.
    #[serde(default)]
    now: Option<String>,
    #[serde(default, deserialize_with = "unique_keys")]
    fixtures: BTreeMap<String, Fixture>,
    #[serde(default)]
    cases: Vec<Case>,
    /// Listings: what a principal may do, and what would unlock the rest.
    #[serde(default)]
    listings: Vec<ListingCase>,
}

/// A listing asserted: the items allowed and the hints of those denied.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListingCase {
    name: String,
    #[serde(default)]
    fixture: Option<String>,
    principal: String,
    /// Action ids to list (default: every action).
    #[serde(default)]
    actions: Vec<String>,
    /// Resource types to list (default: every type the actions apply to).
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    context: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    now: Option<String>,
    expect: ListingExpect,
}

/// Items are named `Type:id`, or `action Type:id` when the listing has
/// more than one action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListingExpect {
    /// Exactly the items allowed.
    #[serde(default)]
    allowed: Option<Vec<String>>,
    /// The hints of denied items: an offer, offers, or `none`.
    #[serde(default)]
    unlocked_by: BTreeMap<String, UnlockedBy>,
}

/// The offers an expected hint names: one (`pro`), several
/// (`[pro, analytics-seat]`), or `none` (no offer unlocks it).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UnlockedBy {
    One(String),
    Several(Vec<String>),
}

impl UnlockedBy {
    fn offers(&self) -> Vec<String> {
        match self {
            Self::One(offer) if offer == "none" => Vec::new(),
            Self::One(offer) => vec![offer.clone()],
            Self::Several(offers) => offers.clone(),
        }
    }
}

/// A hint as `pro + analytics-seat`, `none` when no offer unlocks.
fn hint_text(offers: &[String]) -> String {
    if offers.is_empty() {
        "none".to_string()
    } else {
        offers.join(" + ")
    }
}

/// A map whose keys must be unique: YAML would otherwise let the last of two
/// fixtures with the same name win silently.
fn unique_keys<'de, D>(deserializer: D) -> Result<BTreeMap<String, Fixture>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, Fixture>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a mapping of fixture names to fixtures")
        }

        fn visit_map<A>(self, mut map: A) -> Result<Self::Value, A::Error>
        where
            A: serde::de::MapAccess<'de>,
        {
            let mut fixtures = BTreeMap::new();
            while let Some((name, fixture)) = map.next_entry::<String, Fixture>()? {
                if fixtures.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate fixture `{name}`"
                    )));
                }
                fixtures.insert(name, fixture);
            }
            Ok(fixtures)
        }
    }
    deserializer.deserialize_map(Unique)
}

/// Where a case's tenant snapshot comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    /// A snapshot file, relative to the test file.
    #[serde(default)]
    snapshot: Option<PathBuf>,
    /// With inline entities: the tenant id.
    #[serde(default)]
    tenant: Option<String>,
    /// Inline Cedar entity JSON.
    #[serde(default)]
    entities: Option<serde_json::Value>,
    #[serde(default)]
    now: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    fixture: Option<String>,
    principal: String,
    action: String,
    resource: String,
    #[serde(default)]
    context: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    now: Option<String>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    decision: ExpectedDecision,
    #[serde(default)]
    reasons: Option<Vec<String>>,
    #[serde(default)]
    policies: Option<Vec<String>>,
    /// For a DENY: the offers that would allow the same request
    /// (`offers.yaml`), or `none`.
    #[serde(default)]
    unlocked_by: Option<UnlockedBy>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
enum ExpectedDecision {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

impl ExpectedDecision {
    fn name(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Lines like `cargo test`.
    Human,
    /// JUnit XML on stdout.
    Junit,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Run only cases whose `file :: name` contains this.
    pub filter: Option<String>,
    /// Output format.
    pub format: Format,
    /// Decision settings.
    pub options: Options,
}

/// One case's outcome.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The test file, as given.
    pub file: String,
    /// The case name.
    pub name: String,
    /// `None` when the case passed, else what differed.
    pub failure: Option<String>,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Every case run, in order.
    pub cases: Vec<CaseResult>,
    /// Problems that stopped whole files (unreadable, unknown keys, duplicate
    /// case names), as `(file, message)`.
    pub file_errors: Vec<(String, String)>,
    /// Policies that determined no case's decision.
    pub undetermined_policies: Vec<String>,
    /// Policies never tested the other way: no case matched their scope
    /// without them determining the decision.
    pub never_passed_over: Vec<String>,
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.failure.is_none()).count()
    }

    /// Cases that failed, plus files that could not run.
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed() + self.file_errors.len()
    }
}

/// Finds the test files: the given files, and `*.test.yaml` / `*.test.yml`
/// in the given directories and their `tests/` subdirectory. A path that does
/// not exist is an error, not an empty set.
pub fn find_test_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_file() {
            files.push(path.clone());
            continue;
        }
        if !path.is_dir() {
            return Err(format!(
                "{}: no such test file or directory",
                path.display()
            ));
        }
        for dir in [path.clone(), path.join("tests")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let file = entry.path();
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if !name.starts_with('.')
                    && (name.ends_with(".test.yaml") || name.ends_with(".test.yml"))
                    && file.is_file()
                {
                    files.push(file);
                }
            }
        }
    }
    // The same file named two ways runs once.
    let mut seen = BTreeSet::new();
    files.retain(|file| seen.insert(std::fs::canonicalize(file).unwrap_or_else(|_| file.clone())));
    files.sort();
    Ok(files)
}

/// `path` as shown in output, without a leading `./`.
fn shown(path: &Path) -> String {
    let text = path.display().to_string();
    text.strip_prefix("./").map(str::to_string).unwrap_or(text)
}

/// Runs every case of every test file against `policies`.
pub fn run(policies: &Arc<PolicySnapshot>, files: &[PathBuf], settings: &Settings) -> Report {
    let mut report = Report::default();
    // File-source decisions never wait; the runtime only drives the future.
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            report
                .file_errors
                .push((String::new(), format!("cannot start a runtime: {error}")));
            return report;
        }
    };
    let mut coverage = Coverage::default();
    for path in files {
        let file = shown(path);
        let test_file = match load(path) {
            Ok(test_file) => test_file,
            Err(error) => {
                report.file_errors.push((file, error));
                continue;
            }
        };
        let mut names = BTreeSet::new();
        let duplicate = test_file
            .cases
            .iter()
            .map(|case| case.name.as_str())
            .chain(
                test_file
                    .listings
                    .iter()
                    .map(|listing| listing.name.as_str()),
            )
            .find(|name| !names.insert(*name));
        if let Some(name) = duplicate {
            let message = format!("{file}: duplicate case name `{name}`");
            report.file_errors.push((file, message));
            continue;
        }
        let mut points: BTreeMap<&str, Result<(DecisionService, String), String>> = BTreeMap::new();
        let named = test_file
            .cases
            .iter()
            .map(|case| {
                (
                    case.name.as_str(),
                    case.fixture.as_deref(),
                    Some(case),
                    None,
                )
            })
            .chain(test_file.listings.iter().map(|listing| {
                (
                    listing.name.as_str(),
                    listing.fixture.as_deref(),
                    None,
                    Some(listing),
                )
            }));
        for (name, fixture, case, listing) in named {
            let label = format!("{file} :: {name}");
            if settings
                .filter
                .as_ref()
                .is_some_and(|filter| !label.contains(filter.as_str()))
            {
                continue;
            }
            let fixture_name = match (fixture, test_file.fixtures.len()) {
                (Some(name), _) => name,
                (None, 1) => test_file.fixtures.keys().next().map_or("", String::as_str),
                (None, _) => "",
            };
            let failure = match test_file.fixtures.get(fixture_name) {
                None => Some(format!(
                    "no fixture `{fixture_name}`; the file defines: {}",
                    test_file
                        .fixtures
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Some(fixture) => {
                    let point = points.entry(fixture_name).or_insert_with(|| {
                        fixture_point(policies, path, fixture, settings.options)
                    });
                    match point {
                        Err(error) => Some(format!("fixture `{fixture_name}`: {error}")),
                        Ok((point, tenant)) => {
                            let own_now = case
                                .and_then(|case| case.now.as_ref())
                                .or(listing.and_then(|listing| listing.now.as_ref()));
                            let now = own_now.or(fixture.now.as_ref()).or(test_file.now.as_ref());
                            match (case, listing) {
                                (Some(case), _) => {
                                    run_case(&runtime, point, tenant, case, now, &mut coverage)
                                }
                                (None, Some(listing)) => {
                                    run_listing(&runtime, point, tenant, listing, now)
                                }
                                (None, None) => None,
                            }
                        }
                    }
                }
            };
            report.cases.push(CaseResult {
                file: file.clone(),
                name: name.to_string(),
                failure,
            });
        }
    }
    if settings.filter.is_some() || report.cases.is_empty() {
        // Coverage of a subset says nothing about the catalog.
        return report;
    }
    let mut all: Vec<&str> = policies.policies().map(|p| p.id.as_str()).collect();
    all.sort_unstable();
    report.undetermined_policies = all
        .iter()
        .filter(|id| !coverage.determined.contains(**id))
        .map(|id| id.to_string())
        .collect();
    report.never_passed_over = all
        .iter()
        .filter(|id| !coverage.passed_over.contains(**id))
        .map(|id| id.to_string())
        .collect();
    report
}

/// Which policies the cases exercised, each way.
#[derive(Debug, Default)]
struct Coverage {
    /// Policies that determined a decision.
    determined: BTreeSet<String>,
    /// Policies whose scope matched a case without determining its decision.
    passed_over: BTreeSet<String>,
}

fn load(path: &Path) -> Result<TestFile, String> {
    let file = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{file}: cannot read: {error}"))?;
    serde_norway::from_str(&text).map_err(|error| match error.location() {
        Some(location) => format!("{file}:{}:{}: {error}", location.line(), location.column()),
        None => format!("{file}: {error}"),
    })
}

fn fixture_point(
    policies: &Arc<PolicySnapshot>,
    test_file: &Path,
    fixture: &Fixture,
    options: Options,
) -> Result<(DecisionService, String), String> {
    let bytes = match (&fixture.snapshot, &fixture.entities, &fixture.tenant) {
        (Some(snapshot), None, None) => {
            let path = test_file.parent().unwrap_or(Path::new(".")).join(snapshot);
            std::fs::read(&path)
                .map_err(|error| format!("cannot read {}: {error}", path.display()))?
        }
        (None, Some(entities), Some(tenant)) => serde_json::to_vec(&serde_json::json!({
            "tenant": tenant, "version": 1, "entities": entities,
        }))
        .map_err(|error| error.to_string())?,
        _ => return Err("give either `snapshot` or both `tenant` and `entities`".to_string()),
    };
    let snapshot = TenantSnapshot::parse(&bytes, None, policies, SnapshotSource::File)
        .map_err(|error| error.to_string())?;
    let tenant = snapshot.tenant.clone();
    let tenants: TenantMap = [(tenant.clone(), Arc::new(snapshot))].into_iter().collect();
    let store = Store::from_catalog(Catalog {
        policies: Arc::clone(policies),
        tenants: Arc::new(tenants),
        licenses: Default::default(),
    });
    Ok((
        DecisionService::new(Arc::new(store), options, Limits::default()),
        tenant,
    ))
}

fn run_case(
    runtime: &tokio::runtime::Runtime,
    point: &DecisionService,
    tenant: &str,
    case: &Case,
    now: Option<&String>,
    coverage: &mut Coverage,
) -> Option<String> {
    let request = match request(tenant, case, now) {
        Ok(request) => request,
        Err(problem) => return Some(format!("bad case: {problem}")),
    };
    let response = match runtime.block_on(api::check(
        point,
        &crate::decide::Caller::trusted("policy-test"),
        request,
    )) {
        Ok(response) => response,
        Err(error) => return Some(format!("request refused: {error}")),
    };
    let decision = match pb::Decision::try_from(response.decision) {
        Ok(pb::Decision::Allow) => ExpectedDecision::Allow,
        Ok(pb::Decision::Deny | pb::Decision::Unspecified) | Err(_) => ExpectedDecision::Deny,
    };
    let reasons: BTreeSet<String> = response.reasons.iter().map(|r| r.code.clone()).collect();
    let policies: BTreeSet<String> = response
        .reasons
        .iter()
        .filter(|r| !r.policy_id.is_empty())
        .map(|r| r.policy_id.clone())
        .collect();
    coverage.determined.extend(policies.iter().cloned());
    coverage.passed_over.extend(
        response
            .explanation
            .iter()
            .filter(|evaluation| !policies.contains(&evaluation.policy_id))
            .map(|evaluation| evaluation.policy_id.clone()),
    );

    let mut diff = String::new();
    if decision != case.expect.decision {
        let _ = writeln!(
            diff,
            "  decision: expected {}, got {}",
            case.expect.decision.name(),
            decision.name()
        );
    }
    let mut compare = |label: &str, expected: &Option<Vec<String>>, actual: &BTreeSet<String>| {
        let Some(expected) = expected else {
            return;
        };
        let expected: BTreeSet<String> = expected.iter().cloned().collect();
        if &expected != actual {
            let listed =
                |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                diff,
                "  {label} expected [{}], got [{}]",
                listed(&expected),
                listed(actual)
            );
        }
    };
    compare("reasons: ", &case.expect.reasons, &reasons);
    compare("policies:", &case.expect.policies, &policies);
    if let Some(expected) = &case.expect.unlocked_by {
        match case_hint(point, tenant, case, now) {
            Ok(actual) => {
                let expected = expected.offers();
                if actual != expected {
                    let _ = writeln!(
                        diff,
                        "  unlocked_by: expected {}, got {}",
                        hint_text(&expected),
                        hint_text(&actual)
                    );
                }
            }
            Err(problem) => {
                let _ = writeln!(diff, "  unlocked_by: {problem}");
            }
        }
    }
    if diff.is_empty() {
        return None;
    }
    for reason in &response.reasons {
        let policy = if reason.policy_id.is_empty() {
            "built-in".to_string()
        } else {
            reason.policy_id.clone()
        };
        let _ = writeln!(
            diff,
            "  why: {} ({policy}): {}",
            reason.code, reason.message
        );
    }
    for error in &response.errors {
        let _ = writeln!(diff, "  error: {}: {}", error.policy_id, error.message);
    }
    Some(diff)
}

/// The offers that would allow a case's request (none: no offer does).
fn case_hint(
    point: &DecisionService,
    tenant: &str,
    case: &Case,
    now: Option<&String>,
) -> Result<Vec<String>, String> {
    let catalog = point
        .store()
        .catalog()
        .ok_or_else(|| "no policies loaded".to_string())?;
    let snapshot = catalog
        .tenants
        .get(tenant)
        .ok_or_else(|| format!("no snapshot of `{tenant}`"))?;
    let check = convert::check(request(tenant, case, now)?);
    let prepared = crate::decide::prepare(&catalog.policies, check, None)
        .map_err(|error| error.to_string())?;
    let decision =
        tollgate_engine::decide(&catalog.policies, snapshot, &prepared, Options::default())
            .map_err(|error| error.to_string())?;
    if decision.allow {
        return Err("the request is allowed: no hint".to_string());
    }
    match crate::decide::hint_for_check(
        &catalog.policies,
        snapshot,
        &prepared,
        &decision,
        Options::default(),
    )
    .map_err(|error| error.to_string())?
    {
        None => Err("the policy directory declares no offers (offers.yaml)".to_string()),
        Some(crate::decide::Hint::NoOffer) => Ok(Vec::new()),
        Some(crate::decide::Hint::UnlockedBy(offers)) => {
            Ok(offers.into_iter().map(|offer| offer.id).collect())
        }
    }
}

/// Runs a listing case: the items allowed, and the hints of those denied.
fn run_listing(
    runtime: &tokio::runtime::Runtime,
    point: &DecisionService,
    tenant: &str,
    listing: &ListingCase,
    now: Option<&String>,
) -> Option<String> {
    let context = match context_values(&listing.context, now) {
        Ok(context) => context,
        Err(problem) => return Some(format!("bad case: {problem}")),
    };
    let principal = match convert::parse_ref(&listing.principal, None) {
        Ok(principal) => principal,
        Err(problem) => return Some(format!("bad case: principal: {problem}")),
    };
    let mut actions = Vec::new();
    for action in &listing.actions {
        match convert::parse_ref(action, Some("Action")) {
            Ok(action) => actions.push(action),
            Err(problem) => return Some(format!("bad case: action: {problem}")),
        }
    }
    let request = pb::ListEntitlementsRequest {
        tenant: tenant.to_string(),
        principal: Some(principal),
        actions,
        resource_types: listing.types.clone(),
        context,
        page_size: u32::try_from(crate::decide::MAX_PAGE_SIZE).unwrap_or(u32::MAX),
        hints: true,
        ..Default::default()
    };
    let caller = crate::decide::Caller::trusted("policy-test");
    let mut items = Vec::new();
    let mut request = request;
    loop {
        let page = match runtime.block_on(api::list_entitlements_with_token(
            point,
            &caller,
            None,
            request.clone(),
        )) {
            Ok(page) => page,
            Err(error) => return Some(format!("listing refused: {error}")),
        };
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let one_action = listing.actions.len() == 1;
    let name_of = |item: &pb::EntitlementItem| -> String {
        let resource = item
            .resource
            .as_ref()
            .map(|r| format!("{}:{}", r.r#type, r.id))
            .unwrap_or_default();
        match (&item.action, one_action) {
            (Some(action), false) => format!("{} {resource}", action.id),
            _ => resource,
        }
    };
    let mut diff = String::new();
    if let Some(expected) = &listing.expect.allowed {
        let expected: BTreeSet<String> = expected.iter().cloned().collect();
        let actual: BTreeSet<String> = items
            .iter()
            .filter(|item| item.decision == pb::Decision::Allow as i32)
            .map(name_of)
            .collect();
        if expected != actual {
            let listed =
                |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                diff,
                "  allowed: expected [{}], got [{}]",
                listed(&expected),
                listed(&actual)
            );
        }
    }
    for (name, expected) in &listing.expect.unlocked_by {
        let expected = expected.offers();
        let Some(item) = items.iter().find(|item| &name_of(item) == name) else {
            let _ = writeln!(diff, "  unlocked_by: `{name}` is not listed");
            continue;
        };
        let actual = match &item.hint {
            None => {
                let _ = writeln!(
                    diff,
                    "  unlocked_by: `{name}` is allowed; expected {}",
                    hint_text(&expected)
                );
                continue;
            }
            Some(hint) => hint
                .unlocked_by
                .iter()
                .map(|offer| offer.offer.clone())
                .collect::<Vec<_>>(),
        };
        if actual != expected {
            let _ = writeln!(
                diff,
                "  unlocked_by: `{name}`: expected {}, got {}",
                hint_text(&expected),
                hint_text(&actual)
            );
        }
    }
    (!diff.is_empty()).then_some(diff)
}

/// A case's context as protobuf values, with `now` when it has none.
fn context_values(
    context: &serde_json::Map<String, serde_json::Value>,
    now: Option<&String>,
) -> Result<std::collections::HashMap<String, pb::Value>, String> {
    let mut context = context
        .iter()
        .map(|(key, value)| {
            convert::json_to_value(value)
                .map(|value| (key.clone(), value))
                .map_err(|problem| format!("context.{key}: {problem}"))
        })
        .collect::<Result<std::collections::HashMap<_, _>, _>>()?;
    if let Some(now) = now {
        context.entry("now".to_string()).or_insert(pb::Value {
            kind: Some(pb::value::Kind::Extension(pb::Extension {
                r#fn: "datetime".to_string(),
                arg: now.clone(),
                args: Vec::new(),
            })),
        });
    }
    Ok(context)
}

fn request(tenant: &str, case: &Case, now: Option<&String>) -> Result<pb::CheckRequest, String> {
    let context = context_values(&case.context, now)?;
    Ok(pb::CheckRequest {
        what_if: Vec::new(),
        consume: None,
        max_staleness_ms: 0,
        tenant: tenant.to_string(),
        principal: Some(
            crate::api::convert::parse_ref(&case.principal, None)
                .map_err(|p| format!("principal: {p}"))?,
        ),
        action: Some(
            crate::api::convert::parse_ref(&case.action, Some("Action"))
                .map_err(|p| format!("action: {p}"))?,
        ),
        resource: Some(
            crate::api::convert::parse_ref(&case.resource, None)
                .map_err(|p| format!("resource: {p}"))?,
        ),
        context,
        entities: Vec::new(),
        // The explanation tells which policies a case passed over (coverage).
        explain: true,
    })
}

/// The report like `cargo test`.
pub fn human(report: &Report) -> String {
    let mut out = String::new();
    let files: BTreeSet<&str> = report.cases.iter().map(|c| c.file.as_str()).collect();
    let _ = writeln!(
        out,
        "\nrunning {} cases from {} files",
        report.cases.len(),
        files.len()
    );
    for case in &report.cases {
        let status = if case.failure.is_some() {
            "FAILED"
        } else {
            "ok"
        };
        let _ = writeln!(out, "test {} :: {} ... {status}", case.file, case.name);
    }
    let failures: Vec<&CaseResult> = report
        .cases
        .iter()
        .filter(|c| c.failure.is_some())
        .collect();
    if !failures.is_empty() || !report.file_errors.is_empty() {
        let _ = writeln!(out, "\nfailures:\n");
        for (_, error) in &report.file_errors {
            let _ = writeln!(out, "---- {error}\n");
        }
        for case in &failures {
            let _ = writeln!(
                out,
                "---- {} :: {} ----\n{}",
                case.file,
                case.name,
                case.failure.as_deref().unwrap_or_default()
            );
        }
        let _ = writeln!(out, "failures:");
        for case in &failures {
            let _ = writeln!(out, "    {} :: {}", case.file, case.name);
        }
    }
    if !report.undetermined_policies.is_empty() {
        let _ = writeln!(
            out,
            "\npolicies that determined no case ({}): {}",
            report.undetermined_policies.len(),
            report.undetermined_policies.join(", ")
        );
    }
    if !report.never_passed_over.is_empty() {
        let _ = writeln!(
            out,
            "policies no case tested the other way (scope matched, did not decide) ({}): {}",
            report.never_passed_over.len(),
            report.never_passed_over.join(", ")
        );
    }
    let result = if report.failed() == 0 { "ok" } else { "FAILED" };
    let _ = writeln!(out, "\ntest result: {result}.");
    let _ = writeln!(
        out,
        "{} passed, {} failed",
        report.passed(),
        report.failed()
    );
    out
}

/// Text escaped for XML 1.0; characters XML cannot carry at all (most control
/// characters) become U+FFFD.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || matches!(c, '\u{FFFE}' | '\u{FFFF}') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The report as JUnit XML.
pub fn junit(report: &Report) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"tollgate\" tests=\"{}\" failures=\"{}\">",
        report.cases.len() + report.file_errors.len(),
        report.failed()
    );
    let mut by_file: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for case in &report.cases {
        by_file.entry(case.file.as_str()).or_default().push(case);
    }
    for (file, cases) in by_file {
        let failures = cases.iter().filter(|c| c.failure.is_some()).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
            xml_escape(file),
            cases.len()
        );
        for case in cases {
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\"",
                xml_escape(file),
                xml_escape(&case.name)
            );
            match &case.failure {
                None => out.push_str("/>\n"),
                Some(failure) => {
                    let first = failure.lines().next().unwrap_or_default().trim();
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        xml_escape(first),
                        xml_escape(failure)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    for (file, error) in &report.file_errors {
        let _ = writeln!(
            out,
            "  <testsuite name=\"{0}\" tests=\"1\" failures=\"1\">\n    <testcase classname=\"{0}\" name=\"load\">\n      <failure message=\"{1}\">{1}</failure>\n    </testcase>\n  </testsuite>",
            xml_escape(file),
            xml_escape(error)
        );
    }
    out.push_str("</testsuites>\n");
    out
}
