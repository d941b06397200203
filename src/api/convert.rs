//! Conversions between the protobuf messages and the decision service's
//! types (and, for typed values, Cedar's). Every conversion error names the
//! field it found wrong.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use cedar_policy::{Effect, Entity, EntityUid};
use cedar_policy_core::ast::{ExtensionFunction, PartialValue, Value};
use smol_str::SmolStr;

use super::pb;
use crate::decide::{
    Answer, Check, Consume, DecisionFilter, EntityRef, Hint, Item, Listed, Listing, Reason,
    UsageReport, Values,
};
use crate::metering::UsageView;
use tollgate_engine::diagnostics::describe;
use tollgate_engine::{self as engine, PolicySnapshot, RequestError, SnapshotSource};

/// Deepest nesting of sets and records accepted in a value.
pub const MAX_VALUE_DEPTH: usize = 32;

/// A check's context and request-scoped entities as the protobuf carries
/// them, converted to Cedar only once the schema is known.
#[derive(Debug, Clone, Default)]
pub struct PbValues {
    /// The context's attributes.
    pub context: HashMap<String, pb::Value>,
    /// The request-scoped entities.
    pub entities: Vec<pb::Entity>,
    /// The attribute overrides of a what-if question.
    pub what_if: Vec<pb::AttributeOverride>,
}

impl Values for PbValues {
    fn entity_count(&self) -> usize {
        self.entities.len()
    }

    fn remove_context(&mut self, key: &str) {
        self.context.remove(key);
    }

    fn into_cedar(
        self,
        policies: &PolicySnapshot,
    ) -> Result<(BTreeMap<SmolStr, Value>, Vec<Entity>), RequestError> {
        let context = self
            .context
            .into_iter()
            .map(|(key, value)| {
                let value = value_to_core(policies, &At::Context(&key), value, 0)?;
                Ok((SmolStr::from(key), value))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let entities = self
            .entities
            .into_iter()
            .enumerate()
            .map(|(index, entity)| entity_to_cedar(policies, &format!("entities[{index}]"), entity))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((context, entities))
    }

    fn what_if_count(&self) -> usize {
        self.what_if.len()
    }

    fn take_what_if(&mut self, policies: &PolicySnapshot) -> Result<engine::Changes, RequestError> {
        what_if(policies, std::mem::take(&mut self.what_if))
    }

    fn context_json(&self, masked: &dyn Fn(&str) -> bool) -> serde_json::Value {
        self.context
            .iter()
            .map(|(key, value)| {
                let shown = if masked(key) {
                    serde_json::Value::String("***".to_string())
                } else {
                    value_to_json(value)
                };
                (key.clone(), shown)
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Most attribute overrides one what-if question may carry.
pub const MAX_WHAT_IF: usize = 64;

/// Attribute overrides as the changes a what-if decision applies, each
/// checked for its form here (the schema and the snapshot check the rest).
pub fn what_if(
    policies: &PolicySnapshot,
    overrides: Vec<pb::AttributeOverride>,
) -> Result<engine::Changes, RequestError> {
    if overrides.len() > MAX_WHAT_IF {
        return Err(RequestError::new(
            "what_if",
            format!(
                "{} overrides exceed the limit of {MAX_WHAT_IF}",
                overrides.len()
            ),
        ));
    }
    let mut changes = engine::Changes::new();
    for (index, item) in overrides.into_iter().enumerate() {
        let path = format!("what_if[{index}]");
        let uid = pb_entity_uid(policies, &format!("{path}.entity"), item.entity.as_ref())?;
        if item.attribute.is_empty() {
            return Err(RequestError::new(format!("{path}.attribute"), "required"));
        }
        let Some(value) = item.value else {
            return Err(RequestError::new(format!("{path}.value"), "required"));
        };
        let value = value_to_core(policies, &At::Root(&format!("{path}.value")), value, 0)?;
        changes.set(&uid.into(), item.attribute.as_str(), value);
    }
    Ok(changes)
}

/// A protobuf entity reference as the decision service's.
pub fn entity_ref(reference: pb::EntityRef) -> EntityRef {
    EntityRef {
        type_name: reference.r#type,
        id: reference.id,
    }
}

/// A `CheckRequest` as the decision service's check.
pub fn check(request: pb::CheckRequest) -> Check<PbValues> {
    Check {
        tenant: request.tenant,
        principal: request.principal.map(entity_ref),
        action: request.action.map(entity_ref),
        resource: request.resource.map(entity_ref),
        values: PbValues {
            context: request.context,
            entities: request.entities,
            what_if: request.what_if,
        },
        explain: request.explain,
        max_staleness_ms: request.max_staleness_ms,
        consume: request.consume.map(|consume| Consume {
            meter: consume.meter,
            amount: consume.amount,
            idempotency_key: consume.idempotency_key,
        }),
    }
}

/// A `ListEntitlementsRequest` as the decision service's listing.
pub fn listing(request: pb::ListEntitlementsRequest) -> Listing<PbValues> {
    Listing {
        tenant: request.tenant,
        principal: request.principal.map(entity_ref),
        actions: request.actions.into_iter().map(entity_ref).collect(),
        resource_types: request.resource_types,
        values: PbValues {
            context: request.context,
            entities: Vec::new(),
            what_if: request.what_if,
        },
        decision: match pb::Decision::try_from(request.decision) {
            Ok(pb::Decision::Allow) => DecisionFilter::Allow,
            Ok(pb::Decision::Deny) => DecisionFilter::Deny,
            _ => DecisionFilter::All,
        },
        page_size: usize::try_from(request.page_size).unwrap_or(usize::MAX),
        page_token: request.page_token,
        hints: request.hints,
        requested: request.requested,
        max_staleness_ms: request.max_staleness_ms,
    }
}

/// The protobuf response for a listing's page.
pub fn listed(listed: Listed) -> pb::ListEntitlementsResponse {
    pb::ListEntitlementsResponse {
        items: listed.items.into_iter().map(item).collect(),
        freshness: Some(freshness(listed.freshness)),
        next_page_token: listed.next_page_token,
        hypothetical: listed.hypothetical,
    }
}

fn pb_ref(reference: EntityRef) -> pb::EntityRef {
    pb::EntityRef {
        r#type: reference.type_name,
        id: reference.id,
    }
}

fn item(item: Item) -> pb::EntitlementItem {
    pb::EntitlementItem {
        action: Some(pb_ref(item.action)),
        resource: Some(pb_ref(item.resource)),
        decision: if item.allow {
            pb::Decision::Allow
        } else {
            pb::Decision::Deny
        } as i32,
        reasons: item.reasons.iter().map(reason).collect(),
        usage: item.usage.as_ref().map(usage),
        hint: item.hint.map(|hint| match hint {
            Hint::UnlockedBy(offers) => pb::UpgradeHint {
                unlocked_by: offers
                    .into_iter()
                    .map(|offer| pb::Offer {
                        offer: offer.id,
                        kind: offer.kind.name().to_string(),
                        price: offer.price,
                        name: offer.name.unwrap_or_default(),
                    })
                    .collect(),
                no_offer: false,
            },
            Hint::NoOffer => pb::UpgradeHint {
                unlocked_by: Vec::new(),
                no_offer: true,
            },
        }),
        errors: item
            .errors
            .into_iter()
            .map(|error| pb::EvaluationError {
                policy_id: error.policy_id,
                message: error.message,
            })
            .collect(),
    }
}

/// A `ReportUsageRequest`'s reports as the decision service's.
pub fn usage_reports(reports: Vec<pb::UsageReport>) -> Vec<UsageReport> {
    reports
        .into_iter()
        .map(|report| UsageReport {
            meter: report.meter,
            amount: report.amount,
            event_key: report.event_key,
            principal: report.principal.map(entity_ref),
        })
        .collect()
}

fn pb_entity_uid(
    policies: &PolicySnapshot,
    field: &str,
    reference: Option<&pb::EntityRef>,
) -> Result<EntityUid, RequestError> {
    let reference = reference.ok_or_else(|| RequestError::new(field, "required"))?;
    engine::entity_uid(policies, field, &reference.r#type, &reference.id)
}

/// Where a context value sits, as the field path an error names
/// (`context.tags[2]`); written out only when there is an error.
enum At<'a> {
    /// A path given whole (`entities[0].attrs`).
    Root(&'a str),
    Context(&'a str),
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, &'static str, usize),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Root(path) => f.write_str(path),
            At::Context(key) => write!(f, "context.{key}"),
            At::Key(parent, key) => write!(f, "{parent}.{key}"),
            At::Index(parent, "", index) => write!(f, "{parent}[{index}]"),
            At::Index(parent, list, index) => write!(f, "{parent}.{list}[{index}]"),
        }
    }
}

/// Converts a typed value (of the context or of a request-scoped entity)
/// straight to the Cedar value it denotes: the value Cedar would evaluate the
/// same restricted expression to, without building the expression (extension
/// constructors are called directly). Paths are only formatted for errors.
fn value_to_core(
    policies: &PolicySnapshot,
    at: &At<'_>,
    value: pb::Value,
    depth: usize,
) -> Result<Value, RequestError> {
    use pb::value::Kind;
    if depth > MAX_VALUE_DEPTH {
        return Err(RequestError::new(
            at.to_string(),
            format!("nested deeper than {MAX_VALUE_DEPTH} levels"),
        ));
    }
    match value.kind {
        None => Err(RequestError::new(at.to_string(), "value has no kind set")),
        Some(Kind::Bool(b)) => Ok(Value::from(b)),
        Some(Kind::Long(n)) => Ok(Value::from(n)),
        Some(Kind::String(s)) => Ok(Value::from(SmolStr::from(s))),
        Some(Kind::Set(set)) => {
            let values = set
                .values
                .into_iter()
                .enumerate()
                .map(|(index, value)| {
                    value_to_core(policies, &At::Index(at, "", index), value, depth + 1)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::set(values, None))
        }
        Some(Kind::Record(record)) => {
            let fields = record
                .values
                .into_iter()
                .map(|(key, value)| {
                    let value = value_to_core(policies, &At::Key(at, &key), value, depth + 1)?;
                    Ok((SmolStr::from(key), value))
                })
                .collect::<Result<BTreeMap<_, _>, _>>()?;
            Ok(Value::record_arc(std::sync::Arc::new(fields), None))
        }
        Some(Kind::Entity(reference)) => {
            let uid =
                engine::entity_uid(policies, &at.to_string(), &reference.r#type, &reference.id)?;
            Ok(Value::from(cedar_policy_core::ast::EntityUID::from(uid)))
        }
        Some(Kind::Extension(extension)) => {
            let Some(function) = extension_function(&extension.r#fn) else {
                return Err(unknown_extension(&format!("{at}.fn"), &extension.r#fn));
            };
            let args = if extension.args.is_empty() {
                if let Some(value) = recent_extension_value(function, &extension.arg) {
                    return Ok(value);
                }
                let args = [Value::from(SmolStr::from(extension.arg.as_str()))];
                let value = call_extension(function, &args, at, &extension.r#fn)?;
                remember_extension_value(function, extension.arg, &value);
                return Ok(value);
            } else if extension.arg.is_empty() {
                extension
                    .args
                    .into_iter()
                    .enumerate()
                    .map(|(index, arg)| {
                        value_to_core(policies, &At::Index(at, "args", index), arg, depth + 1)
                    })
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                return Err(both_arg_and_args(&at.to_string()));
            };
            call_extension(function, &args, at, &extension.r#fn)
        }
    }
}

/// Applies an extension function (named `name` in the request) to `args`.
fn call_extension(
    function: &ExtensionFunction,
    args: &[Value],
    at: &At<'_>,
    name: &str,
) -> Result<Value, RequestError> {
    match function.call(args) {
        Ok(PartialValue::Value(value)) => Ok(value),
        Ok(PartialValue::Residual(_)) => Err(RequestError::new(
            at.to_string(),
            format!("`{name}` did not produce a value"),
        )),
        Err(error) => Err(RequestError::new(at.to_string(), describe(&error))),
    }
}

/// Values a thread built lately from one string with an extension function
/// (`datetime("2026-12-06T10:00:00Z")`, `ip("10.0.0.1")`), to give again for
/// the same function and string: requests arriving together carry the same
/// `now` (all of those within its second, or its millisecond), and callers
/// their own addresses, in request after request, while Cedar's own parse of
/// a `datetime` (regular expressions) costs more than the rest of a
/// request's conversion. The functions are pure, so a value given again is
/// the value the call would build. A string not held costs a comparison
/// with each of the few held.
struct RecentExtensionValues {
    held: [Option<(&'static ExtensionFunction, String, Value)>; RECENT_EXTENSION_VALUES],
    /// The slot the next new value takes.
    next: usize,
}

/// Values each thread holds.
const RECENT_EXTENSION_VALUES: usize = 4;

thread_local! {
    static RECENT_EXTENSION: std::cell::RefCell<RecentExtensionValues> =
        const { std::cell::RefCell::new(RecentExtensionValues { held: [const { None }; RECENT_EXTENSION_VALUES], next: 0 }) };
}

fn recent_extension_value(function: &'static ExtensionFunction, arg: &str) -> Option<Value> {
    RECENT_EXTENSION.with_borrow(|recent| {
        recent
            .held
            .iter()
            .flatten()
            .find_map(|(held, held_arg, value)| {
                (std::ptr::eq(*held, function) && held_arg == arg).then(|| value.clone())
            })
    })
}

fn remember_extension_value(function: &'static ExtensionFunction, arg: String, value: &Value) {
    RECENT_EXTENSION.with_borrow_mut(|recent| {
        let slot = recent.next;
        recent.held[slot] = Some((function, arg, value.clone()));
        recent.next = (slot + 1) % RECENT_EXTENSION_VALUES;
    });
}

fn unknown_extension(field: &str, function: &str) -> RequestError {
    RequestError::new(
        field,
        format!(
            "unknown extension function `{function}`; expected one of {}",
            EXTENSION_FUNCTIONS.join(", ")
        ),
    )
}

fn both_arg_and_args(field: &str) -> RequestError {
    RequestError::new(
        field,
        "an extension value takes either `arg` or `args`, not both",
    )
}

/// Extension functions a value may be written with.
const EXTENSION_FUNCTIONS: [&str; 5] = ["ip", "decimal", "datetime", "duration", "offset"];

/// An extension function, looked up once by its name. (Cedar's own
/// `RestrictedExpression::new_datetime` and friends parse the name on every
/// call, which cost more than the rest of a request's conversion.)
fn extension_function(function: &str) -> Option<&'static ExtensionFunction> {
    use cedar_policy_core::ast::Name;
    use cedar_policy_core::extensions::Extensions;
    use std::sync::LazyLock;
    static FUNCTIONS: LazyLock<Vec<(&'static str, &'static ExtensionFunction)>> =
        LazyLock::new(|| {
            EXTENSION_FUNCTIONS
                .into_iter()
                .filter_map(|name| {
                    let parsed = Name::parse_unqualified_name(name).ok()?;
                    Some((name, Extensions::all_available().func(&parsed).ok()?))
                })
                .collect()
        });
    FUNCTIONS
        .iter()
        .find(|(name, _)| *name == function)
        .map(|(_, known)| *known)
}

fn entity_to_cedar(
    policies: &PolicySnapshot,
    path: &str,
    entity: pb::Entity,
) -> Result<Entity, RequestError> {
    let uid = pb_entity_uid(policies, &format!("{path}.uid"), entity.uid.as_ref())?;
    let convert_map = |name: &str, map: HashMap<String, pb::Value>| {
        let root = format!("{path}.{name}");
        map.into_iter()
            .map(|(key, value)| {
                let value = value_to_core(policies, &At::Key(&At::Root(&root), &key), value, 0)?;
                Ok((SmolStr::from(key), PartialValue::Value(value)))
            })
            .collect::<Result<Vec<_>, RequestError>>()
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
            .map(cedar_policy_core::ast::EntityUID::from)
        })
        .collect::<Result<HashSet<_>, _>>()?;
    Ok(Entity::from(
        cedar_policy_core::ast::Entity::new_with_attr_partial_value(
            uid.into(),
            attrs,
            HashSet::new(),
            parents,
            tags,
        ),
    ))
}

/// Parses `Type:id`, Cedar's `Type::"id"`, or (with a default type) a bare id.
pub fn parse_ref(text: &str, default_type: Option<&str>) -> Result<pb::EntityRef, String> {
    if text.contains("::\"") {
        let uid: cedar_policy::EntityUid = text
            .parse()
            .map_err(|error| format!("`{text}` is not a Cedar entity reference: {error}"))?;
        return Ok(pb::EntityRef {
            r#type: uid.type_name().to_string(),
            id: uid.id().unescaped().to_string(),
        });
    }
    let bytes = text.as_bytes();
    let split = (0..bytes.len()).rev().find(|&i| {
        bytes[i] == b':'
            && (i == 0 || bytes[i - 1] != b':')
            && bytes.get(i + 1).is_none_or(|&next| next != b':')
    });
    match (split, default_type) {
        (Some(i), _) => Ok(pb::EntityRef {
            r#type: text[..i].to_string(),
            id: text[i + 1..].to_string(),
        }),
        (None, Some(default_type)) => Ok(pb::EntityRef {
            r#type: default_type.to_string(),
            id: text.to_string(),
        }),
        (None, None) => Err(format!("`{text}` is not of the form Type:id")),
    }
}

/// The protobuf form of the data behind an answer.
fn freshness(freshness: crate::decide::Freshness) -> pb::Freshness {
    pb::Freshness {
        policy_version: freshness.policy_version,
        snapshot_version: freshness.snapshot_version,
        snapshot_age_ms: freshness.snapshot_age_ms,
        source: match freshness.source {
            None => pb::SnapshotSource::Unspecified,
            Some(SnapshotSource::File) => pb::SnapshotSource::File,
            Some(SnapshotSource::Cache) => pb::SnapshotSource::Cache,
            Some(SnapshotSource::Redis) => pb::SnapshotSource::Redis,
            Some(SnapshotSource::Stale) => pb::SnapshotSource::Stale,
            Some(SnapshotSource::License) => pb::SnapshotSource::License,
        } as i32,
        license: freshness.license.map(|terms| pb::LicenseTerms {
            license_id: terms.license_id,
            expires_at: terms.expires_at,
            grace_ends_at: terms.grace_ends_at,
            in_grace: terms.in_grace,
        }),
    }
}

/// The protobuf response for an answer.
pub fn response(answer: Answer) -> pb::CheckResponse {
    pb::CheckResponse {
        decision: if answer.allow {
            pb::Decision::Allow
        } else {
            pb::Decision::Deny
        } as i32,
        reasons: answer.reasons.iter().map(reason).collect(),
        errors: answer
            .errors
            .into_iter()
            .map(|error| pb::EvaluationError {
                policy_id: error.policy_id,
                message: error.message,
            })
            .collect(),
        freshness: Some(freshness(answer.freshness)),
        decision_id: answer.decision_id,
        usage: answer.usage.as_ref().map(usage),
        hypothetical: answer.hypothetical,
        explanation: answer
            .explanation
            .into_iter()
            .map(|evaluation| pb::PolicyEvaluation {
                policy_id: evaluation.policy.id.clone(),
                effect: effect(Some(evaluation.policy.effect)) as i32,
                satisfied: evaluation.satisfied,
                error: evaluation.error.unwrap_or_default(),
                code: evaluation.policy.code.clone(),
                message: evaluation.policy.reason.clone(),
            })
            .collect(),
    }
}

/// A meter's state as the protobuf shows it.
pub fn usage(view: &UsageView) -> pb::Usage {
    pb::Usage {
        meter: view.meter.clone(),
        used: view.used,
        limit: view.limit,
        remaining: view.remaining,
        period_end_unix_ms: view.period_end_unix_ms,
    }
}

fn effect(effect: Option<Effect>) -> pb::Effect {
    match effect {
        Some(Effect::Permit) => pb::Effect::Permit,
        Some(Effect::Forbid) => pb::Effect::Forbid,
        None => pb::Effect::Unspecified,
    }
}

fn reason(reason: &Reason) -> pb::Reason {
    pb::Reason {
        policy_id: reason.policy_id().to_string(),
        effect: effect(reason.effect()) as i32,
        code: reason.code().to_string(),
        message: reason.message(),
        annotations: reason.annotations().iter().cloned().collect(),
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

    /// A context attribute's value as Cedar builds it.
    fn cedar_context_value(context: cedar_policy::Context) -> Value {
        let core: &cedar_policy_core::ast::Context = context.as_ref();
        match core {
            cedar_policy_core::ast::Context::Value(values) => values["x"].clone(),
            other => panic!("not a value: {other:?}"),
        }
    }

    /// The value Cedar evaluates the restricted expression `text` to.
    fn cedar_value(text: &str) -> Value {
        let expression: cedar_policy::RestrictedExpression = text.parse().unwrap();
        cedar_context_value(
            cedar_policy::Context::from_pairs([("x".to_string(), expression)]).unwrap(),
        )
    }

    #[test]
    fn every_extension_constructor_builds_the_cedar_value() {
        let policies = PolicySnapshot::from_sources("schema.cedarschema", "entity User;", &[])
            .expect("schema loads");
        let x = At::Context("x");
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
            let ours = value_to_core(&policies, &x, value, 0).unwrap();
            assert_eq!(ours, cedar_value(cedar), "{function}");
        }
        // A datetime no single string can write: 256 million years before 1970.
        let offset = json_to_value(&serde_json::json!({"__extn": {"fn": "offset", "args": [
            {"__extn": {"fn": "datetime", "arg": "1970-01-01"}},
            {"__extn": {"fn": "duration", "arg": "-8101986847143815834ms"}}
        ]}}))
        .unwrap();
        let ours = value_to_core(&policies, &x, offset, 0).unwrap();
        assert_eq!(
            ours,
            cedar_value(r#"datetime("1970-01-01").offset(duration("-8101986847143815834ms"))"#)
        );

        let unknown = pb::Value {
            kind: Some(pb::value::Kind::Extension(pb::Extension {
                r#fn: "regex".to_string(),
                arg: String::new(),
                args: Vec::new(),
            })),
        };
        let error = value_to_core(&policies, &x, unknown, 0).unwrap_err();
        assert_eq!(error.field, "context.x.fn");
    }

    #[test]
    fn extension_values_given_again_are_the_values_cedar_builds() {
        let policies = PolicySnapshot::from_sources("schema.cedarschema", "entity User;", &[])
            .expect("schema loads");
        let convert = |function: &str, arg: &str| {
            let value = pb::Value {
                kind: Some(pb::value::Kind::Extension(pb::Extension {
                    r#fn: function.to_string(),
                    arg: arg.to_string(),
                    args: Vec::new(),
                })),
            };
            value_to_core(&policies, &At::Context("x"), value, 0)
        };
        // More strings than a thread holds, each converted twice in a row
        // (the second time given again), in three rounds.
        let times: Vec<String> = (0..6).map(|n| format!("2026-11-27T12:00:0{n}Z")).collect();
        for _ in 0..3 {
            for time in &times {
                let cedar = cedar_value(&format!("datetime({time:?})"));
                for _ in 0..2 {
                    let ours = convert("datetime", time).unwrap();
                    assert_eq!(ours, cedar, "{time}");
                    assert_eq!(ours.to_string(), cedar.to_string(), "{time}");
                }
                let datetime = extension_function("datetime").unwrap();
                assert_eq!(recent_extension_value(datetime, time), Some(cedar));
            }
        }
        // The same string under another function is that function's value,
        // or its error.
        assert_eq!(
            convert("datetime", "2026-11-27").unwrap(),
            cedar_value(r#"datetime("2026-11-27")"#)
        );
        let error = convert("duration", "2026-11-27").unwrap_err();
        assert_eq!(error.field, "context.x");
        assert!(error.problem.contains("duration"), "{}", error.problem);
        // A string refused is refused every time.
        for _ in 0..2 {
            let error = convert("datetime", "garbage").unwrap_err();
            assert!(error.problem.contains("datetime"), "{}", error.problem);
        }
    }

    #[test]
    fn context_values_are_the_values_cedar_parses_from_the_same_json() {
        let policies =
            PolicySnapshot::from_sources("schema.cedarschema", "entity User; entity Team;", &[])
                .expect("schema loads");
        for json in [
            serde_json::json!(true),
            serde_json::json!(-9223372036854775808i64),
            serde_json::json!("ünïcode"),
            serde_json::json!([]),
            serde_json::json!([3, 1, 2, 1]),
            serde_json::json!({}),
            serde_json::json!({"b": [{"c": "d"}], "a": {"__entity": {"type": "Team", "id": "t"}}}),
            serde_json::json!({"__entity": {"type": "User", "id": "alice"}}),
            serde_json::json!({"__extn": {"fn": "ip", "arg": "10.0.0.1/8"}}),
            serde_json::json!({"__extn": {"fn": "decimal", "arg": "-1.2500"}}),
            serde_json::json!({"__extn": {"fn": "datetime", "arg": "2026-11-27T12:00:00.500+0100"}}),
            serde_json::json!({"__extn": {"fn": "duration", "arg": "-1d2h3m4s5ms"}}),
        ] {
            let value = json_to_value(&json).unwrap();
            let ours = value_to_core(&policies, &At::Context("x"), value, 0).unwrap();
            // Cedar's own JSON form of a context uses the same escapes.
            let theirs = cedar_context_value(
                cedar_policy::Context::from_json_value(serde_json::json!({ "x": json }), None)
                    .unwrap(),
            );
            assert_eq!(ours, theirs, "{json}");
            assert_eq!(ours.to_string(), theirs.to_string(), "{json}");
        }
    }

    #[test]
    fn context_value_errors_name_the_field() {
        let policies = PolicySnapshot::from_sources("schema.cedarschema", "entity User;", &[])
            .expect("schema loads");
        for (json, field, says) in [
            (
                serde_json::json!({"a": [1, {"__extn": {"fn": "datetime", "arg": "garbage"}}]}),
                "context.x.a[1]",
                "datetime",
            ),
            (
                serde_json::json!([{"__extn": {"fn": "offset", "args": [
                    {"__extn": {"fn": "datetime", "arg": "1970-01-01"}},
                    {"__entity": {"type": "Group", "id": "g"}}
                ]}}]),
                "context.x[0].args[1].type",
                "`Group` is not declared",
            ),
            (
                serde_json::json!({"__extn": {"fn": "offset", "args": [
                    {"__extn": {"fn": "duration", "arg": "1h"}},
                    {"__extn": {"fn": "duration", "arg": "1h"}}
                ]}}),
                "context.x",
                "expected datetime, got duration",
            ),
            (
                serde_json::json!({"k": {"__extn": {"fn": "moment", "arg": "x"}}}),
                "context.x.k.fn",
                "unknown extension function `moment`",
            ),
        ] {
            let value = json_to_value(&json).unwrap();
            let error = value_to_core(&policies, &At::Context("x"), value, 0).unwrap_err();
            assert_eq!(error.field, field, "{json}");
            assert!(error.problem.contains(says), "{json}: {}", error.problem);
        }
        let mut deep = pb::Value {
            kind: Some(pb::value::Kind::Long(1)),
        };
        for _ in 0..=MAX_VALUE_DEPTH + 1 {
            deep = pb::Value {
                kind: Some(pb::value::Kind::Set(pb::ValueSet { values: vec![deep] })),
            };
        }
        let error = value_to_core(&policies, &At::Context("x"), deep, 0).unwrap_err();
        assert!(error.problem.contains("nested deeper"), "{}", error.problem);
    }
}
