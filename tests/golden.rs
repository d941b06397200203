//! Golden decision cases: each `tests/golden/<case set>/cases.json` names a
//! policy directory and an entitlements directory and lists requests with the
//! decision, reason codes and policy ids they must get. The engine
//! (`tollgate_engine::decide`) decides them, on requests prepared by the same
//! conversion as the gRPC service's; the wire itself is the gRPC suites'.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tollgate::api::convert::parse_ref;
use tollgate::api::{self, pb};
use tollgate::decide::{DecisionService, Limits};
use tollgate::store::entitlements::load_tenant_dir;
use tollgate::store::{ReloadOutcome, Store};
use tollgate_engine::{Options, PolicyErrorMode, PolicySnapshot, Reason, TenantMap};
use tollgate_testkit::fixtures::repository;

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
    // The policy set and the tenants' snapshots, as the file source loads them.
    let policies = Arc::new(
        PolicySnapshot::load_dir(&dir.join(&set.policies))
            .unwrap_or_else(|problems| panic!("{}: {problems:?}", set.description)),
    );
    let (tenants, problems) =
        load_tenant_dir(&dir.join(&set.entitlements), &policies, &TenantMap::new());
    assert!(problems.is_empty(), "{}: {problems:?}", set.description);
    // A tenant without a snapshot is no question for the engine: the
    // decision service answers it (and tests/grpc.rs checks it on the wire).
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
    for case in &set.cases {
        let options = options(set.options, case.options);
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
            what_if: Vec::new(),
        };
        let decided = match tenants.get(&case.tenant) {
            Some(tenant) => {
                // The engine decides, on the request as the gRPC conversion
                // prepares it.
                tollgate::decide::prepare(&policies, tollgate::api::convert::check(request), None)
                    .and_then(|prepared| {
                        tollgate_engine::decide(&policies, tenant, &prepared, options)
                    })
                    .map(|decision| Outcome::of_engine(&decision))
                    .map_err(|error| error.to_string())
            }
            None => {
                let service = DecisionService::new(Arc::clone(&store), options, Limits::default());
                runtime
                    .block_on(api::check(
                        &service,
                        &tollgate::decide::Caller::trusted("golden"),
                        request,
                    ))
                    .map(|response| Outcome::of_response(&response))
                    .map_err(|error| error.to_string())
            }
        };
        let Outcome {
            decision,
            reasons,
            policy_ids,
            errors,
        } = match decided {
            Ok(outcome) => outcome,
            Err(error) => {
                failures.push(format!(
                    "{} / {}: error {error}",
                    set.description, case.name
                ));
                continue;
            }
        };
        let mut expected_reasons = case.reasons.clone();
        expected_reasons.sort();
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

/// What a case checks of an answer: each list sorted.
struct Outcome {
    decision: &'static str,
    reasons: Vec<String>,
    policy_ids: Vec<String>,
    errors: Vec<String>,
}

impl Outcome {
    fn of_engine(decision: &tollgate_engine::Decision) -> Self {
        let mut reasons: Vec<String> = decision
            .reasons
            .iter()
            .map(|reason| reason.code().to_string())
            .collect();
        let mut policy_ids: Vec<String> = decision
            .reasons
            .iter()
            .filter_map(|reason| match reason {
                Reason::Policy(policy) | Reason::PolicyError(policy) => Some(policy.id.clone()),
                Reason::Builtin(_) => None,
            })
            .collect();
        let mut errors: Vec<String> = decision
            .errors
            .iter()
            .map(|error| error.policy_id.clone())
            .collect();
        reasons.sort();
        policy_ids.sort();
        errors.sort();
        Self {
            decision: if decision.allow { "ALLOW" } else { "DENY" },
            reasons,
            policy_ids,
            errors,
        }
    }

    fn of_response(response: &pb::CheckResponse) -> Self {
        let mut reasons: Vec<String> = response.reasons.iter().map(|r| r.code.clone()).collect();
        let mut policy_ids: Vec<String> = response
            .reasons
            .iter()
            .filter(|r| !r.policy_id.is_empty())
            .map(|r| r.policy_id.clone())
            .collect();
        let mut errors: Vec<String> = response
            .errors
            .iter()
            .map(|e| e.policy_id.clone())
            .collect();
        reasons.sort();
        policy_ids.sort();
        errors.sort();
        Self {
            decision: match pb::Decision::try_from(response.decision) {
                Ok(pb::Decision::Allow) => "ALLOW",
                Ok(pb::Decision::Deny) => "DENY",
                _ => "UNSPECIFIED",
            },
            reasons,
            policy_ids,
            errors,
        }
    }
}

#[test]
fn golden_cases() {
    let root = repository().join("tests/golden");
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
