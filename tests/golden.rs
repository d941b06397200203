//! Golden decision cases: each `tests/golden/<case set>/cases.json` names a
//! policy directory and an entitlements directory and lists requests with the
//! decision, reason codes and policy ids they must get. The requests go through
//! the same conversion and decision path as the gRPC service.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tollgate::api::convert::parse_ref;
use tollgate::api::{self, pb};
use tollgate::decide::{DecisionService, Limits};
use tollgate::store::{ReloadOutcome, Store};
use tollgate_engine::{Options, PolicyErrorMode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSet {
    description: String,
    #[serde(default = "default_policies")]
    policies: String,
    #[serde(default = "default_entitlements")]
    entitlements: String,
    #[serde(default)]
    options: CaseOptions,
    cases: Vec<Case>,
}

fn default_policies() -> String {
    "policies".to_string()
}

fn default_entitlements() -> String {
    "entitlements".to_string()
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct CaseOptions {
    strict_principals: Option<bool>,
    policy_errors: Option<ErrorMode>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ErrorMode {
    Deny,
    Cedar,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    options: Option<CaseOptions>,
    tenant: String,
    principal: String,
    action: String,
    resource: String,
    #[serde(default)]
    context: serde_json::Map<String, serde_json::Value>,
    decision: String,
    reasons: Vec<String>,
    #[serde(default)]
    policy_ids: Option<Vec<String>>,
    #[serde(default)]
    errors: Option<Vec<String>>,
}

fn options(set: CaseOptions, case: Option<CaseOptions>) -> Options {
    let defaults = Options::default();
    let pick = |f: fn(&CaseOptions) -> Option<bool>| case.as_ref().and_then(f).or_else(|| f(&set));
    let mode = case
        .and_then(|c| c.policy_errors)
        .or(set.policy_errors)
        .map(|m| match m {
            ErrorMode::Deny => PolicyErrorMode::Deny,
            ErrorMode::Cedar => PolicyErrorMode::Cedar,
        });
    Options {
        strict_principals: pick(|o| o.strict_principals).unwrap_or(defaults.strict_principals),
        policy_errors: mode.unwrap_or(defaults.policy_errors),
    }
}

fn run_case_set(path: &Path) -> Vec<String> {
    let dir = path.parent().unwrap();
    let set: CaseSet = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!set.cases.is_empty(), "{}: no cases", path.display());
    let store = Arc::new(Store::new(
        dir.join(&set.policies),
        dir.join(&set.entitlements),
    ));
    let outcome = store.reload_all();
    assert!(
        !matches!(outcome, ReloadOutcome::Rejected(_)),
        "{}: {outcome:?}",
        set.description
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut failures = Vec::new();
    let mut points: BTreeMap<(bool, bool), DecisionService> = BTreeMap::new();
    for case in &set.cases {
        let options = options(set.options, case.options);
        let point = points
            .entry((
                options.strict_principals,
                options.policy_errors == PolicyErrorMode::Deny,
            ))
            .or_insert_with(|| {
                DecisionService::new(Arc::clone(&store), options, Limits::default())
            });
        let request = pb::CheckRequest {
            tenant: case.tenant.clone(),
            principal: Some(parse_ref(&case.principal, None).unwrap()),
            action: Some(parse_ref(&case.action, Some("Action")).unwrap()),
            resource: Some(parse_ref(&case.resource, None).unwrap()),
            context: case
                .context
                .iter()
                .map(|(k, v)| (k.clone(), tollgate::api::convert::json_to_value(v).unwrap()))
                .collect(),
            entities: Vec::new(),
            explain: false,
            max_staleness_ms: 0,
            consume: None,
        };
        let response = match runtime.block_on(api::check(point, request)) {
            Ok(response) => response,
            Err(error) => {
                failures.push(format!(
                    "{} / {}: error {error}",
                    set.description, case.name
                ));
                continue;
            }
        };
        let decision = match pb::Decision::try_from(response.decision) {
            Ok(pb::Decision::Allow) => "ALLOW",
            Ok(pb::Decision::Deny) => "DENY",
            _ => "UNSPECIFIED",
        };
        let mut reasons: Vec<String> = response.reasons.iter().map(|r| r.code.clone()).collect();
        reasons.sort();
        let mut expected_reasons = case.reasons.clone();
        expected_reasons.sort();
        let mut policy_ids: Vec<String> = response
            .reasons
            .iter()
            .filter(|r| !r.policy_id.is_empty())
            .map(|r| r.policy_id.clone())
            .collect();
        policy_ids.sort();
        let mut errors: Vec<String> = response
            .errors
            .iter()
            .map(|e| e.policy_id.clone())
            .collect();
        errors.sort();
        let mut problems = Vec::new();
        if decision != case.decision {
            problems.push(format!("decision {decision}, expected {}", case.decision));
        }
        if reasons != expected_reasons {
            problems.push(format!(
                "reasons {reasons:?}, expected {expected_reasons:?}"
            ));
        }
        if let Some(expected) = &case.policy_ids {
            let mut expected = expected.clone();
            expected.sort();
            if policy_ids != expected {
                problems.push(format!("policy ids {policy_ids:?}, expected {expected:?}"));
            }
        }
        if let Some(expected) = &case.errors {
            let mut expected = expected.clone();
            expected.sort();
            if errors != expected {
                problems.push(format!(
                    "erroring policies {errors:?}, expected {expected:?}"
                ));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} / {}: {}",
                set.description,
                case.name,
                problems.join("; ")
            ));
        }
    }
    failures
}

#[test]
fn golden_cases() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path().join("cases.json"))
        .filter(|p| p.exists())
        .collect();
    sets.sort();
    assert!(
        sets.len() >= 2,
        "expected golden case sets in {}",
        root.display()
    );
    let failures: Vec<String> = sets.iter().flat_map(|p| run_case_set(p)).collect();
    assert!(
        failures.is_empty(),
        "golden failures:\n{}",
        failures.join("\n")
    );
}
