//! Conversions between the protobuf messages and Cedar/engine types. Every
//! conversion error names the field it found wrong.

use std::collections::{HashMap, HashSet};

use cedar_policy::{Effect, Entity, EntityUid, RestrictedExpression};

use super::pb;
use crate::engine::{self, Decision, PreparedRequest, Reason, RequestError};
use crate::store::{entitlements::check_tenant_id, PolicySnapshot, SnapshotSource};

/// Deepest nesting of sets and records accepted in a value.
pub const MAX_VALUE_DEPTH: usize = 32;

/// Checks the tenant field.
pub fn tenant(tenant: &str) -> Result<(), RequestError> {
    check_tenant_id(tenant).map_err(|problem| RequestError::new("tenant", problem))
}

/// Converts and validates a `CheckRequest` against the schema.
pub fn prepare_check(
    policies: &PolicySnapshot,
    request: pb::CheckRequest,
) -> Result<PreparedRequest, RequestError> {
    tenant(&request.tenant)?;
    let principal = entity_ref(policies, "principal", request.principal.as_ref())?;
    let action = match &request.action {
        Some(action) => engine::action_uid(policies, &action.r#type, &action.id)?,
        None => return Err(RequestError::new("action", "required")),
    };
    let resource = entity_ref(policies, "resource", request.resource.as_ref())?;
    let context = request
        .context
        .into_iter()
        .map(|(key, value)| {
            let path = format!("context.{key}");
            value_to_cedar(policies, &path, value, 0).map(|value| (key, value))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let entities = request
        .entities
        .into_iter()
        .enumerate()
        .map(|(index, entity)| entity_to_cedar(policies, &format!("entities[{index}]"), entity))
        .collect::<Result<Vec<_>, _>>()?;
    engine::prepare(policies, principal, action, resource, context, entities)
        .map(|prepared| prepared.with_explain(request.explain))
}

fn entity_ref(
    policies: &PolicySnapshot,
    field: &str,
    reference: Option<&pb::EntityRef>,
) -> Result<EntityUid, RequestError> {
    let reference = reference.ok_or_else(|| RequestError::new(field, "required"))?;
    engine::entity_uid(policies, field, &reference.r#type, &reference.id)
}

/// Converts a typed value to a Cedar restricted expression.
pub fn value_to_cedar(
    policies: &PolicySnapshot,
    path: &str,
    value: pb::Value,
    depth: usize,
) -> Result<RestrictedExpression, RequestError> {
    use pb::value::Kind;
    if depth > MAX_VALUE_DEPTH {
        return Err(RequestError::new(
            path,
            format!("nested deeper than {MAX_VALUE_DEPTH} levels"),
        ));
    }
    match value.kind {
        None => Err(RequestError::new(path, "value has no kind set")),
        Some(Kind::Bool(b)) => Ok(RestrictedExpression::new_bool(b)),
        Some(Kind::Long(n)) => Ok(RestrictedExpression::new_long(n)),
        Some(Kind::String(s)) => Ok(RestrictedExpression::new_string(s)),
        Some(Kind::Set(set)) => {
            let values = set
                .values
                .into_iter()
                .enumerate()
                .map(|(index, value)| {
                    value_to_cedar(policies, &format!("{path}[{index}]"), value, depth + 1)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RestrictedExpression::new_set(values))
        }
        Some(Kind::Record(record)) => {
            let fields = record
                .values
                .into_iter()
                .map(|(key, value)| {
                    value_to_cedar(policies, &format!("{path}.{key}"), value, depth + 1)
                        .map(|value| (key, value))
                })
                .collect::<Result<Vec<_>, _>>()?;
            RestrictedExpression::new_record(fields)
                .map_err(|error| RequestError::new(path, error.to_string()))
        }
        Some(Kind::Entity(reference)) => Ok(RestrictedExpression::new_entity_uid(
            engine::entity_uid(policies, path, &reference.r#type, &reference.id)?,
        )),
        Some(Kind::Extension(extension)) => {
            let Some(function) = extension_function(&extension.r#fn) else {
                return Err(RequestError::new(
                    format!("{path}.fn"),
                    format!(
                        "unknown extension function `{}`; expected one of {}",
                        extension.r#fn,
                        EXTENSION_FUNCTIONS.join(", ")
                    ),
                ));
            };
            let args = if extension.args.is_empty() {
                vec![cedar_policy_core::ast::RestrictedExpr::val(
                    extension.arg.as_str(),
                )]
            } else if extension.arg.is_empty() {
                extension
                    .args
                    .into_iter()
                    .enumerate()
                    .map(|(index, arg)| {
                        value_to_cedar(policies, &format!("{path}.args[{index}]"), arg, depth + 1)
                            .map(|arg| arg.as_ref().clone())
                    })
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                return Err(RequestError::new(
                    path,
                    "an extension value takes either `arg` or `args`, not both",
                ));
            };
            Ok(RestrictedExpression::from(
                cedar_policy_core::ast::RestrictedExpr::call_extension_fn(function.clone(), args),
            ))
        }
    }
}

/// Extension functions a value may be written with.
const EXTENSION_FUNCTIONS: [&str; 5] = ["ip", "decimal", "datetime", "duration", "offset"];

/// The Cedar name of an extension function, parsed once. Cedar's own
/// `RestrictedExpression::new_datetime` and friends parse the name on every
/// call, which cost more than the rest of a request's conversion.
fn extension_function(function: &str) -> Option<&'static cedar_policy_core::ast::Name> {
    use cedar_policy_core::ast::Name;
    use std::sync::LazyLock;
    static FUNCTIONS: LazyLock<Vec<(&'static str, Name)>> = LazyLock::new(|| {
        EXTENSION_FUNCTIONS
            .into_iter()
            .filter_map(|name| Some((name, Name::parse_unqualified_name(name).ok()?)))
            .collect()
    });
    FUNCTIONS
        .iter()
        .find(|(name, _)| *name == function)
        .map(|(_, constructor)| constructor)
}

fn entity_to_cedar(
    policies: &PolicySnapshot,
    path: &str,
    entity: pb::Entity,
) -> Result<Entity, RequestError> {
    let uid = entity_ref(policies, &format!("{path}.uid"), entity.uid.as_ref())?;
    let convert_map = |name: &str, map: HashMap<String, pb::Value>| {
        map.into_iter()
            .map(|(key, value)| {
                value_to_cedar(policies, &format!("{path}.{name}.{key}"), value, 0)
                    .map(|value| (key, value))
            })
            .collect::<Result<HashMap<_, _>, _>>()
    };
    let attrs = convert_map("attrs", entity.attrs)?;
    let tags = convert_map("tags", entity.tags)?;
    let parents = entity
        .parents
        .iter()
        .enumerate()
        .map(|(index, parent)| {
            engine::entity_uid(
                policies,
                &format!("{path}.parents[{index}]"),
                &parent.r#type,
                &parent.id,
            )
        })
        .collect::<Result<HashSet<_>, _>>()?;
    Entity::new_with_tags(uid, attrs, parents, tags)
        .map_err(|error| RequestError::new(path, error.to_string()))
}

/// Freshness of the data behind a decision.
#[derive(Debug, Clone)]
pub struct FreshnessInfo<'a> {
    /// The serving policy version.
    pub policy_version: &'a str,
    /// The tenant snapshot's version, 0 when there was none.
    pub snapshot_version: u64,
    /// Milliseconds since the snapshot's source last confirmed it.
    pub snapshot_age_ms: u64,
    /// Where the snapshot came from, `None` when there was none.
    pub source: Option<SnapshotSource>,
}

/// Builds the response for a decision.
pub fn response(
    decision: Decision,
    freshness: &FreshnessInfo<'_>,
    decision_id: String,
) -> pb::CheckResponse {
    pb::CheckResponse {
        decision: if decision.allow {
            pb::Decision::Allow
        } else {
            pb::Decision::Deny
        } as i32,
        reasons: decision.reasons.iter().map(reason).collect(),
        errors: decision
            .errors
            .into_iter()
            .map(|error| pb::EvaluationError {
                policy_id: error.policy_id,
                message: error.message,
            })
            .collect(),
        freshness: Some(pb::Freshness {
            policy_version: freshness.policy_version.to_string(),
            snapshot_version: freshness.snapshot_version,
            snapshot_age_ms: freshness.snapshot_age_ms,
            source: match freshness.source {
                None => pb::SnapshotSource::Unspecified,
                Some(SnapshotSource::File) => pb::SnapshotSource::File,
                Some(SnapshotSource::Cache) => pb::SnapshotSource::Cache,
                Some(SnapshotSource::Redis) => pb::SnapshotSource::Redis,
                Some(SnapshotSource::Stale) => pb::SnapshotSource::Stale,
            } as i32,
        }),
        decision_id,
        usage: None,
        explanation: decision
            .explanation
            .into_iter()
            .map(|evaluation| pb::PolicyEvaluation {
                policy_id: evaluation.policy.id.clone(),
                effect: effect(evaluation.policy.effect) as i32,
                satisfied: evaluation.satisfied,
                error: evaluation.error.unwrap_or_default(),
                code: evaluation.policy.code.clone(),
                message: evaluation.policy.reason.clone(),
            })
            .collect(),
    }
}

fn effect(effect: Effect) -> pb::Effect {
    match effect {
        Effect::Permit => pb::Effect::Permit,
        Effect::Forbid => pb::Effect::Forbid,
    }
}

fn reason(reason: &Reason) -> pb::Reason {
    match reason {
        Reason::Policy(policy) => pb::Reason {
            policy_id: policy.id.clone(),
            effect: effect(policy.effect) as i32,
            code: policy.code.clone(),
            message: policy.reason.clone(),
            annotations: policy.annotations.iter().cloned().collect(),
        },
        Reason::PolicyError(policy) => pb::Reason {
            policy_id: policy.id.clone(),
            effect: effect(policy.effect) as i32,
            code: engine::POLICY_ERROR_CODE.to_string(),
            message: format!(
                "policy `{}` failed to evaluate, so the request is denied",
                policy.id
            ),
            annotations: policy.annotations.iter().cloned().collect(),
        },
        Reason::Builtin(builtin) => pb::Reason {
            policy_id: String::new(),
            effect: pb::Effect::Unspecified as i32,
            code: builtin.code().to_string(),
            message: builtin.message().to_string(),
            annotations: HashMap::new(),
        },
    }
}

/// A typed value in Cedar's JSON form (the inverse of [`json_to_value`]).
pub fn value_to_json(value: &pb::Value) -> serde_json::Value {
    use pb::value::Kind;
    match &value.kind {
        None => serde_json::Value::Null,
        Some(Kind::Bool(b)) => serde_json::Value::Bool(*b),
        Some(Kind::Long(n)) => serde_json::Value::from(*n),
        Some(Kind::String(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::Set(set)) => set.values.iter().map(value_to_json).collect(),
        Some(Kind::Record(record)) => record
            .values
            .iter()
            .map(|(key, value)| (key.clone(), value_to_json(value)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Some(Kind::Entity(reference)) => serde_json::json!({
            "__entity": {"type": reference.r#type, "id": reference.id}
        }),
        Some(Kind::Extension(extension)) if extension.args.is_empty() => serde_json::json!({
            "__extn": {"fn": extension.r#fn, "arg": extension.arg}
        }),
        Some(Kind::Extension(extension)) => serde_json::json!({
            "__extn": {
                "fn": extension.r#fn,
                "args": extension.args.iter().map(value_to_json).collect::<Vec<_>>()
            }
        }),
    }
}

/// Converts Cedar's JSON value form (with `__entity` and `__extn` escapes) to
/// a typed value. Numbers must be whole and fit in 64 bits, as Cedar's `Long`.
pub fn json_to_value(json: &serde_json::Value) -> Result<pb::Value, String> {
    use pb::value::Kind;
    let kind = match json {
        serde_json::Value::Null => return Err("null is not a Cedar value".to_string()),
        serde_json::Value::Bool(b) => Kind::Bool(*b),
        serde_json::Value::Number(n) => Kind::Long(
            n.as_i64()
                .ok_or_else(|| format!("`{n}` is not a 64-bit whole number"))?,
        ),
        serde_json::Value::String(s) => Kind::String(s.clone()),
        serde_json::Value::Array(items) => Kind::Set(pb::ValueSet {
            values: items.iter().map(json_to_value).collect::<Result<_, _>>()?,
        }),
        serde_json::Value::Object(map) => {
            let escape = |name: &str| map.get(name).filter(|_| map.len() == 1);
            if let Some(entity) = escape("__entity") {
                let field = |name: &str| {
                    entity
                        .get(name)
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| format!("`__entity` needs a string `{name}`"))
                };
                Kind::Entity(pb::EntityRef {
                    r#type: field("type")?,
                    id: field("id")?,
                })
            } else if let Some(extension) = escape("__extn") {
                let function = extension
                    .get("fn")
                    .and_then(serde_json::Value::as_str)
                    .ok_or("`__extn` needs a string `fn`")?;
                let (arg, args) = match (extension.get("arg"), extension.get("args")) {
                    (Some(serde_json::Value::String(arg)), None) => (arg.clone(), Vec::new()),
                    (None, Some(serde_json::Value::Array(args))) => (
                        String::new(),
                        args.iter().map(json_to_value).collect::<Result<_, _>>()?,
                    ),
                    _ => return Err("`__extn` needs a string `arg` or an array `args`".to_string()),
                };
                Kind::Extension(pb::Extension {
                    r#fn: function.to_string(),
                    arg,
                    args,
                })
            } else {
                Kind::Record(pb::ValueRecord {
                    values: map
                        .iter()
                        .map(|(key, value)| json_to_value(value).map(|value| (key.clone(), value)))
                        .collect::<Result<_, _>>()?,
                })
            }
        }
    };
    Ok(pb::Value { kind: Some(kind) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_extension_constructor_builds_the_cedar_value() {
        let policies = PolicySnapshot::from_sources("schema.cedarschema", "entity User;", &[])
            .expect("schema loads");
        for (function, arg, cedar) in [
            ("ip", "10.0.0.1/8", r#"ip("10.0.0.1/8")"#),
            ("decimal", "1.25", r#"decimal("1.25")"#),
            (
                "datetime",
                "2026-11-27T12:00:00Z",
                r#"datetime("2026-11-27T12:00:00Z")"#,
            ),
            ("duration", "1d2h", r#"duration("1d2h")"#),
        ] {
            let value = pb::Value {
                kind: Some(pb::value::Kind::Extension(pb::Extension {
                    r#fn: function.to_string(),
                    arg: arg.to_string(),
                    args: Vec::new(),
                })),
            };
            let ours = value_to_cedar(&policies, "context.x", value, 0).unwrap();
            let theirs: RestrictedExpression = cedar.parse().unwrap();
            let ours = cedar_policy::Context::from_pairs([("x".to_string(), ours)]).unwrap();
            let theirs = cedar_policy::Context::from_pairs([("x".to_string(), theirs)]).unwrap();
            assert_eq!(ours, theirs, "{function}");
        }
        // A datetime no single string can write: 256 million years before 1970.
        let offset = json_to_value(&serde_json::json!({"__extn": {"fn": "offset", "args": [
            {"__extn": {"fn": "datetime", "arg": "1970-01-01"}},
            {"__extn": {"fn": "duration", "arg": "-8101986847143815834ms"}}
        ]}}))
        .unwrap();
        let ours = value_to_cedar(&policies, "context.x", offset, 0).unwrap();
        let theirs: RestrictedExpression =
            r#"datetime("1970-01-01").offset(duration("-8101986847143815834ms"))"#
                .parse()
                .unwrap();
        assert_eq!(
            cedar_policy::Context::from_pairs([("x".to_string(), ours)]).unwrap(),
            cedar_policy::Context::from_pairs([("x".to_string(), theirs)]).unwrap()
        );

        let unknown = pb::Value {
            kind: Some(pb::value::Kind::Extension(pb::Extension {
                r#fn: "regex".to_string(),
                arg: String::new(),
                args: Vec::new(),
            })),
        };
        let error = value_to_cedar(&policies, "context.x", unknown, 0).unwrap_err();
        assert_eq!(error.field, "context.x.fn");
    }
}
