//! Cedar fidelity: Cedar's official conformance corpus, answered through
//! tollgate's real gRPC path.
//!
//! For each corpus test the runner writes the schema and policies into a policy
//! directory and the entities into a tenant snapshot, has a running
//! `tollgate serve` (strict principals off, Cedar's policy-error rule) reload on
//! SIGHUP, and sends every request with a tonic client, converting the corpus's
//! Cedar JSON contexts into typed `Value`s. Decisions, determining policy ids
//! and erroring policy ids must match exactly. Policy sets that fail strict
//! validation must be refused.
//!
//! By default a fixed, seeded sample of tests runs (`CONFORMANCE_TESTS`, default
//! 600; `CONFORMANCE_SEED`). `CONFORMANCE_TESTS=all` runs the whole corpus.
//! The corpus is read from `../shared/cedar-corpus/corpus-tests.tar.gz` beside
//! the repository, or from `CEDAR_CORPUS` (the tarball or an unpacked folder
//! holding `corpus-tests/`).
//!
//! The corpus uses the empty string as an entity id, which tollgate refuses as
//! bad input; the runner renames it consistently to `tollgate-empty-id` in
//! schemas (enum entity values), policies, entities and requests. No other
//! change is made.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cedar_policy::{Context, Entities, EntityId, EntityUid, Schema, SchemaFragment};
use serde::Deserialize;
use serde_json::Value as Json;
use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tollgate_testkit::server::ServerProcess;

const EMPTY_ID: &str = "tollgate-empty-id";
const DEFAULT_SAMPLE: usize = 600;
const DEFAULT_SEED: u64 = 20_261_127;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CorpusTest {
    policies: String,
    entities: String,
    schema: String,
    should_validate: bool,
    requests: Vec<CorpusRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CorpusRequest {
    description: String,
    principal: CorpusUid,
    action: CorpusUid,
    resource: CorpusUid,
    context: Json,
    decision: String,
    reason: Vec<String>,
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct CorpusUid {
    r#type: String,
    id: String,
}

fn rename(id: &str) -> String {
    if id.is_empty() {
        EMPTY_ID.to_string()
    } else {
        id.to_string()
    }
}

/// Renames empty ids in a Cedar schema: actions named `""`, action groups
/// referring to them, and `""` values of enumerated entity types. Works on the
/// schema's JSON form, so record attributes named `""` stay as they are.
/// Returns the text unchanged when it does not parse (the load must then fail).
fn rename_schema(text: &str) -> String {
    let Ok((fragment, _)) = SchemaFragment::from_cedarschema_str(text) else {
        return text.to_string();
    };
    let Ok(mut json) = fragment.to_json_value() else {
        return text.to_string();
    };
    let mut changed = false;
    for namespace in json
        .as_object_mut()
        .into_iter()
        .flat_map(|m| m.values_mut())
    {
        if let Some(Json::Object(actions)) = namespace.get_mut("actions") {
            if let Some(action) = actions.remove("") {
                actions.insert(EMPTY_ID.to_string(), action);
                changed = true;
            }
            for action in actions.values_mut() {
                if let Some(Json::Array(groups)) = action.get_mut("memberOf") {
                    for group in groups {
                        if group.get("id").and_then(Json::as_str) == Some("") {
                            group["id"] = Json::String(EMPTY_ID.to_string());
                            changed = true;
                        }
                    }
                }
            }
        }
        if let Some(Json::Object(types)) = namespace.get_mut("entityTypes") {
            for entity_type in types.values_mut() {
                if let Some(Json::Array(values)) = entity_type.get_mut("enum") {
                    for value in values {
                        if value.as_str() == Some("") {
                            *value = Json::String(EMPTY_ID.to_string());
                            changed = true;
                        }
                    }
                }
            }
        }
    }
    if !changed {
        return text.to_string();
    }
    SchemaFragment::from_json_value(json)
        .ok()
        .and_then(|fragment| fragment.to_cedarschema().ok())
        .unwrap_or_else(|| text.to_string())
}

/// Renames empty ids in Cedar's explicit JSON: entity `uid`s, `parents` and
/// every `__entity` escape.
fn rename_json(value: &mut Json) {
    match value {
        Json::Array(items) => items.iter_mut().for_each(rename_json),
        Json::Object(map) => {
            for key in ["uid", "__entity"] {
                if let Some(Json::Object(reference)) = map.get_mut(key) {
                    if reference.get("id").and_then(Json::as_str) == Some("") {
                        reference.insert("id".to_string(), Json::String(EMPTY_ID.to_string()));
                    }
                }
            }
            if let Some(Json::Array(parents)) = map.get_mut("parents") {
                for parent in parents {
                    if let Json::Object(reference) = parent {
                        if reference.get("id").and_then(Json::as_str) == Some("") {
                            reference.insert("id".to_string(), Json::String(EMPTY_ID.to_string()));
                        }
                    }
                }
            }
            for (key, child) in map.iter_mut() {
                if key != "uid" {
                    rename_json(child);
                }
            }
        }
        _ => {}
    }
}

/// The request's context as typed values: normalised to explicit escapes by
/// Cedar's schema-directed parser, empty ids renamed.
fn context_values(
    schema: Option<&Schema>,
    action: &CorpusUid,
    context: &Json,
) -> Result<std::collections::HashMap<String, pb::Value>, String> {
    let action_uid: Option<EntityUid> =
        action.r#type.parse().ok().map(|type_name| {
            EntityUid::from_type_name_and_id(type_name, EntityId::new(&action.id))
        });
    let mut json = match (schema, action_uid) {
        (Some(schema), Some(action_uid)) => {
            Context::from_json_value(context.clone(), Some((schema, &action_uid)))
                .ok()
                .and_then(|c| c.to_json_value().ok())
                .unwrap_or_else(|| context.clone())
        }
        _ => context.clone(),
    };
    rename_json(&mut json);
    let Json::Object(map) = json else {
        return Err("context is not an object".to_string());
    };
    map.into_iter()
        .map(|(key, value)| {
            tollgate::api::convert::json_to_value(&value)
                .map(|value| (key.clone(), value))
                .map_err(|problem| format!("context.{key}: {problem}"))
        })
        .collect()
}

/// The server, logging JSON, reloaded with SIGHUP.
struct Server(ServerProcess);

impl Server {
    fn start(policies: &Path, entitlements: &Path) -> Self {
        Self(ServerProcess::spawn(
            env!("CARGO_BIN_EXE_tollgate"),
            policies,
            entitlements,
            &[
                ("TOLLGATE_STRICT_PRINCIPALS", "false"),
                ("TOLLGATE_POLICY_ERRORS", "cedar"),
                ("TOLLGATE_WATCH", "false"),
                ("TOLLGATE_LOG_FORMAT", "json"),
                ("TOLLGATE_LOG_LEVEL", "info"),
            ],
        ))
    }

    /// Sends SIGHUP and waits for the reload's outcome.
    fn reload(&self) -> String {
        let from = self.0.log_len();
        self.0.signal("HUP");
        let timeout = Duration::from_secs(60);
        let finished = self
            .0
            .wait_for_line(from, timeout, |line| {
                serde_json::from_str::<Json>(line)
                    .is_ok_and(|line| line["message"] == "reload finished")
            })
            .unwrap_or_else(|| panic!("tollgate did not log `reload finished` within {timeout:?}"));
        let finished: Json = serde_json::from_str(&finished).unwrap();
        finished["outcome"].as_str().unwrap_or_default().to_string()
    }
}

fn corpus_dir(scratch: &Path) -> PathBuf {
    let source = std::env::var_os("CEDAR_CORPUS").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/cedar-corpus/corpus-tests.tar.gz")
        },
        PathBuf::from,
    );
    if source.is_dir() {
        return source;
    }
    assert!(
        source.is_file(),
        "Cedar's conformance corpus not found at {} (set CEDAR_CORPUS to corpus-tests.tar.gz \
         from cedar-policy/cedar-integration-tests, or to a folder holding corpus-tests/; \
         scripts/test.sh leaves this test out and names it as skipped when the corpus is absent)",
        source.display()
    );
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&source)
        .arg("-C")
        .arg(scratch)
        .status()
        .expect("run tar");
    assert!(status.success(), "cannot unpack {}", source.display());
    scratch.to_path_buf()
}

/// A small deterministic generator for the seeded sample.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = usize::try_from(state % (i as u64 + 1)).unwrap();
        items.swap(i, j);
    }
}

fn policy_id_to_corpus(id: &str) -> String {
    id.strip_prefix("policies.")
        .map_or_else(|| id.to_string(), |index| format!("policy{index}"))
}

#[derive(Default)]
struct Tally {
    tests: usize,
    requests: usize,
    identical: usize,
    refused_as_expected: usize,
    known_exceptions: Vec<String>,
    failures: Vec<String>,
}

/// The corpus tests to run: all of them with `CONFORMANCE_TESTS=all`, else
/// the seeded sample.
fn chosen_tests(root: &Path) -> Vec<PathBuf> {
    let mut tests: Vec<PathBuf> = std::fs::read_dir(root.join("corpus-tests"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.ends_with(".json") && !name.ends_with(".entities.json")
        })
        .collect();
    tests.sort();
    assert!(
        tests.len() > 1000,
        "corpus looks incomplete: {} tests",
        tests.len()
    );
    let sample = std::env::var("CONFORMANCE_TESTS").unwrap_or_default();
    let seed = std::env::var("CONFORMANCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    if sample != "all" {
        let count = sample.parse().unwrap_or(DEFAULT_SAMPLE).min(tests.len());
        shuffle(&mut tests, seed);
        tests.truncate(count);
        tests.sort();
    }
    tests
}

/// One corpus test's schema and policies (empty ids renamed), its schema as
/// Cedar parses it, and its entities normalised and renamed.
struct Loaded {
    test: CorpusTest,
    schema_text: String,
    policy_text: String,
    schema: Option<Schema>,
    entities: Json,
}

fn load(root: &Path, path: &Path) -> Loaded {
    let test: CorpusTest = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let schema_text = rename_schema(&std::fs::read_to_string(root.join(&test.schema)).unwrap());
    let policy_text = std::fs::read_to_string(root.join(&test.policies))
        .unwrap()
        .replace("::\"\"", &format!("::\"{EMPTY_ID}\""));
    let schema = Schema::from_cedarschema_str(&schema_text)
        .ok()
        .map(|(s, _)| s);
    let raw_entities: Json =
        serde_json::from_str(&std::fs::read_to_string(root.join(&test.entities)).unwrap()).unwrap();
    // Normalise implicit entity references to explicit escapes before renaming.
    let mut entities = schema
        .as_ref()
        .and_then(|schema| {
            Entities::from_json_value(raw_entities.clone(), Some(schema))
                .ok()
                .and_then(|e| e.to_json_value().ok())
        })
        .unwrap_or(raw_entities);
    rename_json(&mut entities);
    Loaded {
        test,
        schema_text,
        policy_text,
        schema,
        entities,
    }
}

#[test]
fn corpus_answers_match_cedar_through_grpc() {
    let scratch = tempfile::tempdir().unwrap();
    let root = corpus_dir(scratch.path());
    let tests = chosen_tests(&root);

    let work = tempfile::tempdir().unwrap();
    let policies = work.path().join("policies");
    let entitlements = work.path().join("entitlements");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::create_dir_all(&entitlements).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        "entity E; action a appliesTo { principal: E, resource: E };",
    )
    .unwrap();
    let server = Server::start(&policies, &entitlements);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = runtime
        .block_on(EntitlementServiceClient::connect(server.0.url()))
        .unwrap();

    let mut tally = Tally::default();
    let mut previous_tenant: Option<PathBuf> = None;
    for (index, path) in tests.iter().enumerate() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let Loaded {
            test,
            schema_text,
            policy_text,
            schema,
            entities,
        } = load(&root, path);
        tally.tests += 1;

        let tenant = format!("t{index}");
        if let Some(previous) = previous_tenant.take() {
            std::fs::remove_file(previous).unwrap();
        }
        std::fs::write(policies.join("schema.cedarschema"), &schema_text).unwrap();
        std::fs::write(policies.join("policies.cedar"), &policy_text).unwrap();
        let snapshot = entitlements.join(format!("{tenant}.json"));
        std::fs::write(
            &snapshot,
            serde_json::json!({"tenant": tenant, "version": 1, "entities": entities}).to_string(),
        )
        .unwrap();
        previous_tenant = Some(snapshot);

        let outcome = server.reload();
        match (outcome.as_str(), test.should_validate) {
            ("rejected", false) => {
                tally.refused_as_expected += 1;
                continue;
            }
            ("rejected", true) => {
                tally
                    .failures
                    .push(format!("{name}: policy set refused but Cedar validates it"));
                continue;
            }
            (_, false) => tally.known_exceptions.push(name.clone()),
            (_, true) => {}
        }

        for request in &test.requests {
            tally.requests += 1;
            let context = match context_values(schema.as_ref(), &request.action, &request.context) {
                Ok(context) => context,
                Err(problem) => {
                    tally
                        .failures
                        .push(format!("{name} / {}: {problem}", request.description));
                    continue;
                }
            };
            let reference = |uid: &CorpusUid| pb::EntityRef {
                r#type: uid.r#type.clone(),
                id: rename(&uid.id),
            };
            let check = pb::CheckRequest {
                tenant: tenant.clone(),
                principal: Some(reference(&request.principal)),
                action: Some(reference(&request.action)),
                resource: Some(reference(&request.resource)),
                context,
                entities: Vec::new(),
                explain: false,
                max_staleness_ms: 0,
                consume: None,
                what_if: Vec::new(),
            };
            let response = match runtime.block_on(client.check(check)) {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    tally.failures.push(format!(
                        "{name} / {}: {:?} {}",
                        request.description,
                        status.code(),
                        status.message()
                    ));
                    continue;
                }
            };
            let decision = match pb::Decision::try_from(response.decision) {
                Ok(pb::Decision::Allow) => "allow",
                Ok(pb::Decision::Deny) => "deny",
                _ => "unspecified",
            };
            let reasons: BTreeSet<String> = response
                .reasons
                .iter()
                .filter(|reason| !reason.policy_id.is_empty())
                .map(|reason| policy_id_to_corpus(&reason.policy_id))
                .collect();
            let errors: BTreeSet<String> = response
                .errors
                .iter()
                .map(|error| policy_id_to_corpus(&error.policy_id))
                .collect();
            let expected_reasons: BTreeSet<String> = request.reason.iter().cloned().collect();
            let expected_errors: BTreeSet<String> = request.errors.iter().cloned().collect();
            let unknown_tenant = response.reasons.iter().any(|r| r.code == "unknown_tenant");
            if decision == request.decision
                && reasons == expected_reasons
                && errors == expected_errors
                && !unknown_tenant
            {
                tally.identical += 1;
            } else {
                tally.failures.push(format!(
                    "{name} / {}: got {decision} {reasons:?} errors {errors:?} (codes {:?}), expected {} {expected_reasons:?} errors {expected_errors:?}",
                    request.description,
                    response.reasons.iter().map(|r| r.code.as_str()).collect::<Vec<_>>(),
                    request.decision
                ));
            }
        }
    }

    println!(
        "conformance: {} tests; {} of {} requests identical; {} invalid policy sets refused; \
         {} known exceptions (marked shouldValidate: false, validate under cedar-policy 4.14, answered and compared); \
         {} failures",
        tally.tests,
        tally.identical,
        tally.requests,
        tally.refused_as_expected,
        tally.known_exceptions.len(),
        tally.failures.len()
    );
    for exception in &tally.known_exceptions {
        println!("known exception: {exception}");
    }
    assert!(
        tally.failures.is_empty(),
        "{} differences from Cedar, first ones:\n{}",
        tally.failures.len(),
        tally
            .failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(tally.requests > 0, "no request was compared");
}

/// The compiled conditions (`tollgate_engine::Compiled`) against Cedar's
/// evaluator, policy by policy, in-process: for every request of the chosen
/// corpus tests and every policy that can apply to its action, a compiled
/// condition that answers must give the boolean Cedar's evaluator gives, and
/// must not answer where Cedar's evaluator reports an error. The corpus is
/// generated to reach errors (missing entities and attributes, type errors,
/// overflow), which is what a compiled condition must leave to Cedar.
#[test]
fn compiled_conditions_answer_as_cedar_does_on_the_corpus() {
    use tollgate_engine::Bindings;
    use tollgate_engine::{PolicySnapshot, SnapshotSource, TenantSnapshot};

    let scratch = tempfile::tempdir().unwrap();
    let root = corpus_dir(scratch.path());
    let (mut compiled_answers, mut left_to_cedar, mut cedar_errors) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for path in chosen_tests(&root) {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let loaded = load(&root, &path);
        let Ok(policies) = PolicySnapshot::from_sources(
            "schema.cedarschema",
            &loaded.schema_text,
            &[("policies.cedar".to_string(), loaded.policy_text.clone())],
        ) else {
            continue;
        };
        let document =
            serde_json::json!({"tenant": "t", "version": 1, "entities": loaded.entities});
        let Ok(tenant) = TenantSnapshot::parse(
            document.to_string().as_bytes(),
            Some("t"),
            &policies,
            SnapshotSource::File,
        ) else {
            continue;
        };
        let entities: &Entities = &tenant.entities;
        let entities: &cedar_policy_core::entities::Entities = entities.as_ref();
        for request in &loaded.test.requests {
            let uid = |uid: &CorpusUid| {
                EntityUid::from_type_name_and_id(
                    uid.r#type.parse().unwrap(),
                    EntityId::new(rename(&uid.id)),
                )
            };
            let action = uid(&request.action);
            let mut context = loaded
                .schema
                .as_ref()
                .and_then(|schema| {
                    Context::from_json_value(request.context.clone(), Some((schema, &action)))
                        .ok()
                        .and_then(|c| c.to_json_value().ok())
                })
                .unwrap_or_else(|| request.context.clone());
            rename_json(&mut context);
            let Ok(context) = Context::from_json_value(context, None) else {
                continue;
            };
            let Ok(cedar_request) = cedar_policy::Request::new(
                uid(&request.principal),
                action.clone(),
                uid(&request.resource),
                context,
                None,
            ) else {
                continue;
            };
            let core_request: &cedar_policy_core::ast::Request = cedar_request.as_ref();
            let bindings = Bindings::new(core_request, entities);
            let evaluator = cedar_policy_core::evaluator::Evaluator::new(
                core_request.clone(),
                entities,
                cedar_policy_core::extensions::Extensions::all_available(),
            );
            for policy in policies.prepared_for(&action).all() {
                let cedar = evaluator
                    .interpret(&policy.condition, policy.policy.env())
                    .map_err(|error| error.to_string());
                let cedar = match &cedar {
                    Ok(value) => match value.value_kind() {
                        cedar_policy_core::ast::ValueKind::Lit(
                            cedar_policy_core::ast::Literal::Bool(holds),
                        ) => Ok(*holds),
                        other => Err(format!("not a boolean: {other:?}")),
                    },
                    Err(error) => Err(error.clone()),
                };
                if cedar.is_err() {
                    cedar_errors += 1;
                }
                let ours = policy
                    .compiled
                    .as_ref()
                    .and_then(|compiled| compiled.satisfied(&bindings).ok());
                match (ours, &cedar) {
                    (None, _) => left_to_cedar += 1,
                    (Some(ours), Ok(theirs)) if ours == *theirs => compiled_answers += 1,
                    (Some(ours), theirs) => failures.push(format!(
                        "{name} / {} / {}: compiled {ours}, Cedar {theirs:?}",
                        request.description, policy.meta.id
                    )),
                }
            }
        }
    }
    println!(
        "compiled conditions: {compiled_answers} answered as Cedar, {left_to_cedar} left to Cedar \
         (Cedar reported an error for {cedar_errors}), {} differ",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "compiled conditions differ from Cedar:\n{}",
        failures.join("\n")
    );
    assert!(
        compiled_answers > 1_000,
        "only {compiled_answers} conditions were answered by the compiled evaluator"
    );
    assert!(
        cedar_errors > 10 && left_to_cedar >= cedar_errors,
        "{cedar_errors} Cedar errors, {left_to_cedar} left to Cedar"
    );
}
