//! Where the decision is made: a pure, synchronous function of a prepared
//! request, a policy snapshot and a tenant snapshot. No I/O, no gRPC, no Redis.

use crate::compiled::{self, CountRange};
use crate::{context_check, context_fit};
use std::collections::BTreeMap;
use std::sync::Arc;

use smol_str::SmolStr;

use cedar_policy::{
    Authorizer, Context, Effect, Entities, Entity, EntityId, EntityUid, Request,
    RequestValidationError,
};

use crate::diagnostics::describe;
use cedar_policy_core::ast::{
    BinaryOp, Expr, ExprKind, Literal, PartialValue, RequestSchema, SlotEnv, ValueKind,
};

use crate::changes::Changes;
use crate::policies::{PolicyMeta, PolicySnapshot, PreparedPolicy};
use crate::tenant::TenantSnapshot;

/// How a policy that fails to evaluate is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyErrorMode {
    /// A failing `forbid` denies with `policy_error` (fail closed).
    #[default]
    Deny,
    /// Cedar's own rule: a failing policy is ignored.
    Cedar,
}

/// Decision settings that come from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Deny with `unknown_principal` when the principal is not in the snapshot.
    pub strict_principals: bool,
    /// Treatment of policies that fail to evaluate.
    pub policy_errors: PolicyErrorMode,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            strict_principals: true,
            policy_errors: PolicyErrorMode::Deny,
        }
    }
}

/// Reasons tollgate gives when no policy determined the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinReason {
    /// No permit policy matched (default deny).
    NoPermit,
    /// The tenant has no entitlement snapshot.
    UnknownTenant,
    /// The principal is not in the tenant snapshot (strict principals).
    UnknownPrincipal,
    /// No snapshot could be had, nor one stale enough to serve.
    EntitlementsUnavailable,
    /// Consuming would pass the meter's limit; nothing was counted.
    CapExceeded,
    /// The meter's count could not be read or updated (Redis unreachable).
    MeteringUnavailable,
    /// The tenant's snapshot defines no usable meter of that name.
    UnknownMeter,
    /// The tenant's license expired and its grace ended.
    LicenseExpired,
    /// The clock reads earlier than licenses were issued, or than this
    /// install has seen, by more than the allowed skew: expiry cannot be judged.
    LicenseClockInvalid,
}

impl BuiltinReason {
    /// The machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoPermit => "no_permit",
            Self::UnknownTenant => "unknown_tenant",
            Self::UnknownPrincipal => "unknown_principal",
            Self::EntitlementsUnavailable => "entitlements_unavailable",
            Self::CapExceeded => "cap_exceeded",
            Self::MeteringUnavailable => "metering_unavailable",
            Self::UnknownMeter => "unknown_meter",
            Self::LicenseExpired => "license_expired",
            Self::LicenseClockInvalid => "license_clock_invalid",
        }
    }

    /// A sentence for people.
    pub fn message(self) -> &'static str {
        match self {
            Self::NoPermit => "no policy grants this request",
            Self::UnknownTenant => "the tenant has no entitlements",
            Self::UnknownPrincipal => "the principal is not known to the tenant",
            Self::EntitlementsUnavailable => "the tenant's entitlements are unavailable",
            Self::CapExceeded => {
                "this would pass your plan's allowance for this period; nothing was counted"
            }
            Self::MeteringUnavailable => "usage cannot be counted right now, so it is not allowed",
            Self::UnknownMeter => "the tenant's plan has no such meter",
            Self::LicenseExpired => "the license expired and its grace period is over; renew it",
            Self::LicenseClockInvalid => {
                "this system's clock is earlier than the license allows; fix the clock"
            }
        }
    }
}

/// Code of the reason given when a forbid policy fails to evaluate.
pub const POLICY_ERROR_CODE: &str = "policy_error";

/// One reason for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A policy that determined the decision.
    Policy(Arc<PolicyMeta>),
    /// A forbid policy that failed to evaluate and so denied (fail closed).
    PolicyError(Arc<PolicyMeta>),
    /// A built-in reason.
    Builtin(BuiltinReason),
}

impl Reason {
    /// The machine-readable code of this reason.
    pub fn code(&self) -> &str {
        match self {
            Self::Policy(policy) => &policy.code,
            Self::PolicyError(_) => POLICY_ERROR_CODE,
            Self::Builtin(builtin) => builtin.code(),
        }
    }
}

/// A policy that failed to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationError {
    /// The policy's tollgate id.
    pub policy_id: String,
    /// Cedar's message.
    pub message: String,
}

/// How one policy whose scope matched the request evaluated (explain mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEvaluation {
    /// The policy.
    pub policy: Arc<PolicyMeta>,
    /// Its condition held: a permit that grants, a forbid that blocks.
    pub satisfied: bool,
    /// Cedar's message when the policy failed to evaluate.
    pub error: Option<String>,
}

/// The answer: allow or deny, why, and what failed along the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `true` for ALLOW.
    pub allow: bool,
    /// Determining policies, or one built-in reason.
    pub reasons: Vec<Reason>,
    /// Policies that failed to evaluate.
    pub errors: Vec<EvaluationError>,
    /// With explain: every policy whose scope matched, in id order.
    pub explanation: Vec<PolicyEvaluation>,
    /// For a request that probes a count (see
    /// [`PreparedRequest::probing_count`]): the counts for which the
    /// decision is the same, when the evaluation could follow the count.
    pub count_range: Option<CountRange>,
}

impl Decision {
    /// A deny for a built-in reason.
    pub fn deny(reason: BuiltinReason) -> Self {
        Self {
            allow: false,
            reasons: vec![Reason::Builtin(reason)],
            errors: Vec::new(),
            explanation: Vec::new(),
            count_range: None,
        }
    }
}

/// A request that does not fit the schema, naming the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RequestError {
    /// Path of the offending field, e.g. `principal.type` or `context.country`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl RequestError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A request converted to Cedar and validated against the schema, ready to decide.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    request: Request,
    principal: EntityUid,
    action: EntityUid,
    entities: Vec<Entity>,
    explain: bool,
    count_probe: Option<SmolStr>,
}

impl PreparedRequest {
    /// Asks for an explanation of every policy whose scope matches.
    pub fn with_explain(mut self, explain: bool) -> Self {
        self.explain = explain;
        self
    }

    /// The same request on `resource` instead, with the context attribute
    /// `attr` set to `value` when given. The caller knows the resource's
    /// type and the value fit the schema where the request's did (the
    /// request needs no new validation).
    pub fn for_resource(
        &self,
        resource: cedar_policy_core::ast::EntityUID,
        extra: Option<(&str, cedar_policy_core::ast::Value)>,
    ) -> Self {
        use cedar_policy_core::ast::Context as CoreContext;
        let core: &cedar_policy_core::ast::Request = self.request.as_ref();
        let context = match (core.context(), extra) {
            (Some(CoreContext::Value(values)), Some((attr, value))) => {
                let mut values = BTreeMap::clone(values);
                values.insert(attr.into(), value);
                Some(CoreContext::Value(Arc::new(values)))
            }
            (context, _) => context.cloned(),
        };
        let rebuilt = cedar_policy_core::ast::Request::new_unchecked(
            core.principal().clone(),
            core.action().clone(),
            cedar_policy_core::ast::EntityUIDEntry::known(resource, None),
            context,
        );
        Self {
            request: Request::from(rebuilt),
            principal: self.principal.clone(),
            action: self.action.clone(),
            entities: Vec::new(),
            explain: false,
            count_probe: None,
        }
    }

    /// The request, in Cedar's form.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The principal.
    pub fn principal(&self) -> &EntityUid {
        &self.principal
    }

    /// The action.
    pub fn action(&self) -> &EntityUid {
        &self.action
    }

    /// Asks for the range of counts over which the decision holds, for the
    /// count in the context record `attr` (`used`, with `remaining` as
    /// `max(limit - used, 0)`): see [`Decision::count_range`].
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use cedar_policy_core::ast::Value;
    /// use tollgate_engine::{
    ///     action_uid, decide, entity_uid, prepare, Options, PolicySnapshot, SnapshotSource,
    ///     TenantSnapshot,
    /// };
    ///
    /// let policies = PolicySnapshot::from_sources(
    ///     "schema.cedarschema",
    ///     "entity User; entity Feature;
    ///      action use appliesTo { principal: User, resource: Feature,
    ///        context: { usage: { used: Long, requested: Long, limit: Long, remaining: Long } } };",
    ///     &[(
    ///         "caps.cedar".to_string(),
    ///         "permit(principal, action, resource)
    ///            when { context.usage.used + context.usage.requested <= context.usage.limit };"
    ///             .to_string(),
    ///     )],
    /// )
    /// .unwrap();
    /// let tenant = TenantSnapshot::parse(
    ///     br#"{"tenant": "acme", "version": 1, "entities": [
    ///         {"uid": {"type": "User", "id": "bob"}, "attrs": {}, "parents": []}]}"#,
    ///     None,
    ///     &policies,
    ///     SnapshotSource::File,
    /// )
    /// .unwrap();
    /// // 3 units asked of a limit of 10, decided at a count of 2 seen earlier.
    /// let usage = Value::record(
    ///     [
    ///         ("used", Value::from(2)),
    ///         ("requested", Value::from(3)),
    ///         ("limit", Value::from(10)),
    ///         ("remaining", Value::from(8)),
    ///     ],
    ///     None,
    /// );
    /// let request = prepare(
    ///     &policies,
    ///     entity_uid(&policies, "principal", "User", "bob").unwrap(),
    ///     action_uid(&policies, "Action", "use").unwrap(),
    ///     entity_uid(&policies, "resource", "Feature", "api").unwrap(),
    ///     BTreeMap::from([("usage".into(), usage)]),
    ///     Vec::new(),
    /// )
    /// .unwrap()
    /// .probing_count("usage");
    /// let decision = decide(&policies, &tenant, &request, Options::default()).unwrap();
    /// assert!(decision.allow);
    /// // The ALLOW holds for every count that leaves room for 3 units.
    /// let range = decision.count_range.unwrap();
    /// assert!(range.contains(7) && !range.contains(8));
    /// // At a count found later, the same request is decided again.
    /// let later = request.with_count("usage", 8);
    /// assert!(!decide(&policies, &tenant, &later, Options::default()).unwrap().allow);
    /// ```
    pub fn probing_count(mut self, attr: &str) -> Self {
        self.count_probe = Some(attr.into());
        self
    }

    /// The same request with the context record `attr`'s count set to
    /// `used` (and its `remaining` to `max(limit - used, 0)`). The record's
    /// types are unchanged, so the request needs no new validation.
    pub fn with_count(&self, attr: &str, used: i64) -> Self {
        use cedar_policy_core::ast::{
            Context as CoreContext, Literal, Value as CoreValue, ValueKind,
        };
        let core: &cedar_policy_core::ast::Request = self.request.as_ref();
        let mut request = self.clone();
        let Some(CoreContext::Value(values)) = core.context() else {
            return request;
        };
        let mut values = BTreeMap::clone(values);
        if let Some(record) = values.get_mut(attr) {
            if let ValueKind::Record(fields) = record.value_kind() {
                let mut fields = BTreeMap::clone(fields);
                let limit = match fields.get("limit").map(CoreValue::value_kind) {
                    Some(ValueKind::Lit(Literal::Long(limit))) => Some(*limit),
                    _ => None,
                };
                fields.insert("used".into(), CoreValue::from(used));
                if let (Some(limit), true) = (limit, fields.contains_key("remaining")) {
                    fields.insert(
                        "remaining".into(),
                        CoreValue::from(limit.saturating_sub(used).max(0)),
                    );
                }
                *record = CoreValue::record_arc(Arc::new(fields), None);
            }
        }
        let rebuilt = cedar_policy_core::ast::Request::new_unchecked(
            core.principal().clone(),
            core.action().clone(),
            core.resource().clone(),
            Some(CoreContext::Value(Arc::new(values))),
        );
        request.request = Request::from(rebuilt);
        request
    }
}

/// Longest entity id a request may name, in bytes (a principal, a resource,
/// an entity in the context or among the request's entities).
pub const MAX_ID_BYTES: usize = 1024;

/// Checks an entity id: not empty, at most [`MAX_ID_BYTES`] bytes.
fn check_id(field: &str, id: &str) -> Result<(), RequestError> {
    if id.is_empty() {
        return Err(RequestError::new(
            format!("{field}.id"),
            "must not be empty",
        ));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(RequestError::new(
            format!("{field}.id"),
            format!("longer than {MAX_ID_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Looks up `type_name` among the schema's entity types and builds the uid.
/// `field` names the reference in errors (`principal`, `resource`, ...).
pub fn entity_uid(
    policies: &PolicySnapshot,
    field: &str,
    type_name: &str,
    id: &str,
) -> Result<EntityUid, RequestError> {
    if type_name.is_empty() {
        return Err(RequestError::new(
            format!("{field}.type"),
            "must not be empty",
        ));
    }
    check_id(field, id)?;
    let Some(entity_type) = policies.entity_type(type_name) else {
        return Err(RequestError::new(
            format!("{field}.type"),
            format!("entity type `{type_name}` is not declared in the schema"),
        ));
    };
    Ok(EntityUid::from_type_name_and_id(
        entity_type.clone(),
        EntityId::new(id),
    ))
}

/// Looks up a declared action.
pub fn action_uid(
    policies: &PolicySnapshot,
    type_name: &str,
    id: &str,
) -> Result<EntityUid, RequestError> {
    if type_name.is_empty() {
        return Err(RequestError::new("action.type", "must not be empty"));
    }
    check_id("action", id)?;
    policies.action(type_name, id).cloned().ok_or_else(|| {
        RequestError::new(
            "action",
            format!("action `{type_name}::{id:?}` is not declared in the schema"),
        )
    })
}

/// Builds and validates a request against the policy snapshot's schema.
///
/// `context` holds the context's attributes, already Cedar values;
/// `entities` are request-scoped entities added to the tenant snapshot for
/// this request only.
pub fn prepare(
    policies: &PolicySnapshot,
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context: BTreeMap<SmolStr, cedar_policy_core::ast::Value>,
    entities: Vec<Entity>,
) -> Result<PreparedRequest, RequestError> {
    let schema: &cedar_policy_core::validator::ValidatorSchema = policies.schema.as_ref();
    let principal_core: cedar_policy_core::ast::EntityUID = principal.clone().into();
    let action_core: cedar_policy_core::ast::EntityUID = action.clone().into();
    let resource_core: cedar_policy_core::ast::EntityUID = resource.into();
    let extensions = cedar_policy_core::extensions::Extensions::all_available();
    let context_fits = schema
        .get_action_id(&action_core)
        .and_then(|declared| declared.context_type())
        .is_some_and(|expected| context_fit::context_fits(expected, &context));
    let request = cedar_policy_core::ast::Request::new(
        (principal_core, None),
        (action_core, None),
        (resource_core, None),
        cedar_policy_core::ast::Context::Value(Arc::new(context)),
        None::<&cedar_policy_core::ast::RequestSchemaAllPass>,
        extensions,
    )
    .map_err(|never| match never {})?;
    // A context known to fit leaves only the scope's entities for the schema
    // to check; any other goes through Cedar's whole validation.
    let validated = if context_fits {
        RequestSchema::validate_scope_variables(
            schema,
            request.principal().uid(),
            request.action().uid(),
            request.resource().uid(),
        )
    } else {
        RequestSchema::validate_request(schema, &request, extensions)
    };
    validated.map_err(|error| request_validation_error(policies, error.into()))?;
    Ok(PreparedRequest {
        request: Request::from(request),
        principal,
        action,
        entities,
        explain: false,
        count_probe: None,
    })
}

/// Explains why `context` does not fit `action`'s context type, naming the
/// attribute. Runs only on the error path.
fn context_mismatch(
    policies: &PolicySnapshot,
    context: &Context,
    action: &EntityUid,
) -> Option<RequestError> {
    context_check::explain(&policies.schema_json, context, action)
        .map(|(field, problem)| RequestError::new(field, problem))
}

fn request_validation_error(
    policies: &PolicySnapshot,
    error: RequestValidationError,
) -> RequestError {
    let field = match &error {
        RequestValidationError::UndeclaredAction(_) | RequestValidationError::ExternalAction(_) => {
            "action"
        }
        RequestValidationError::UndeclaredPrincipalType(_)
        | RequestValidationError::InvalidPrincipalType(_) => "principal.type",
        RequestValidationError::UndeclaredResourceType(_)
        | RequestValidationError::InvalidResourceType(_) => "resource.type",
        RequestValidationError::InvalidContext(invalid) => {
            return context_mismatch(policies, invalid.context(), invalid.action())
                .unwrap_or_else(|| RequestError::new("context", describe(&error)));
        }
        RequestValidationError::TypeOfContext(_) => "context",
        RequestValidationError::InvalidEnumEntity(_) => "principal or resource id",
        _ => "request",
    };
    RequestError::new(field, describe(&error))
}

/// Decides `request` for `tenant` under `policies`.
///
/// Returns `Err` only when the request-scoped entities cannot be merged into
/// the tenant snapshot (they clash with it or do not fit the schema).
pub fn decide(
    policies: &PolicySnapshot,
    tenant: &TenantSnapshot,
    request: &PreparedRequest,
    options: Options,
) -> Result<Decision, RequestError> {
    decide_changed(policies, tenant, request, options, &Changes::new())
}

/// [`decide`] as if `changes` were applied to the tenant's snapshot (a
/// what-if decision). The changes must have been checked
/// ([`Changes::check`]).
pub fn decide_changed(
    policies: &PolicySnapshot,
    tenant: &TenantSnapshot,
    request: &PreparedRequest,
    options: Options,
    changes: &Changes,
) -> Result<Decision, RequestError> {
    let core_request: &cedar_policy_core::ast::Request = request.request.as_ref();
    // The decision reads only the entities it can reach: the request's, the
    // context's and the ones the policies name where their data is read,
    // with everything their attributes name in turn (see `EntitySlice`).
    let mut slice = tenant.entities.slice();
    // A principal must be in the snapshot itself: request-scoped entities may
    // add context for a decision, never make up who is asking.
    if !slice.add(request.principal.as_ref()) && options.strict_principals {
        return Ok(Decision::deny(BuiltinReason::UnknownPrincipal));
    }
    slice.add(request.action.as_ref());
    if let Some(resource) = core_request.resource().uid() {
        slice.add(resource);
    }
    match core_request.context() {
        Some(cedar_policy_core::ast::Context::Value(values)) => {
            for value in values.values() {
                slice.add_value(value);
            }
        }
        Some(cedar_policy_core::ast::Context::RestrictedResidual(values)) => {
            for value in values.values() {
                for uid in entity_literals(value) {
                    slice.add(uid);
                }
            }
        }
        None => {}
    }
    for uid in policies.roots() {
        slice.add(uid);
    }
    if !request.entities.is_empty() {
        // Request-scoped entities must not slot into the snapshot's hierarchy
        // as a parent it names but does not define: that would change what
        // the snapshot's own entities are members of.
        if let Some((index, entity)) = request
            .entities
            .iter()
            .enumerate()
            .find(|(_, entity)| tenant.undefined_ancestors.contains(&entity.uid()))
        {
            return Err(RequestError::new(
                format!("entities[{index}].uid"),
                format!(
                    "`{}` is a parent named by the tenant snapshot; request-scoped entities cannot define it",
                    entity.uid()
                ),
            ));
        }
        // Merging reads the snapshot's entity of the same uid (a clash) and
        // the parents' ancestors; the entities' data names more.
        for entity in &request.entities {
            let entity: &cedar_policy_core::ast::Entity = entity.as_ref();
            slice.add(entity.uid());
            for ancestor in entity.ancestors() {
                slice.add(ancestor);
            }
            for (_, value) in entity.attrs().chain(entity.tags()) {
                if let PartialValue::Value(value) = value {
                    slice.add_value(value);
                }
            }
        }
    }
    let changed;
    let reachable = if changes.is_empty() {
        slice.build()
    } else {
        add_changes(&mut slice, changes);
        changed = slice.build_changed(changes).ok_or_else(|| {
            RequestError::new("what_if", "the changed entities do not fit together")
        })?;
        crate::tenant::SliceEntities::Slice(std::rc::Rc::new(changed))
    };
    let merged;
    let entities: &Entities = if request.entities.is_empty() {
        &reachable
    } else {
        merged = Entities::clone(&reachable)
            .add_entities(request.entities.iter().cloned(), Some(&policies.schema))
            .map_err(|error| RequestError::new("entities", describe(&error)))?;
        &merged
    };
    let mut decision = evaluate_probing(
        policies
            .prepared_for(&request.action)
            .candidates(core_request.resource().uid()),
        entities,
        &request.request,
        options,
        // An explanation reads every policy with Cedar's evaluator.
        request.count_probe.as_deref().filter(|_| !request.explain),
    );
    if request.explain {
        let policy_set = policies.policy_set_for(&request.action);
        decision.explanation = explain(policies, policy_set, entities, &request.request);
    }
    Ok(decision)
}

/// Adds to `slice` the entities `changes` touch and the ones their new
/// values name.
fn add_changes(slice: &mut crate::tenant::EntitySlice<'_>, changes: &Changes) {
    for change in changes.iter() {
        slice.add(&change.uid);
        for (_, value) in &change.set {
            slice.add_value(value);
        }
        for (_, elements) in &change.add {
            for value in elements {
                slice.add_value(value);
            }
        }
    }
}

/// Cedar's entities that every decision of `principal` on any of
/// `resources` (under any action, with a context naming the entities in
/// `context`) can reach, with `changes` applied: built once for many
/// decisions ([`decide_in`]). `None` only when Cedar refuses the entities
/// (the changes do not fit together).
pub fn shared_entities<'v>(
    policies: &PolicySnapshot,
    tenant: &TenantSnapshot,
    principal: &EntityUid,
    resources: impl IntoIterator<Item = &'v cedar_policy_core::ast::EntityUID>,
    context: impl IntoIterator<Item = &'v cedar_policy_core::ast::Value>,
    changes: &Changes,
) -> Option<Entities> {
    let mut slice = tenant.entities.slice();
    slice.add(principal.as_ref());
    for action in policies.actions_declared() {
        slice.add(action.as_ref());
    }
    for resource in resources {
        slice.add(resource);
    }
    for value in context {
        slice.add_value(value);
    }
    for uid in policies.roots() {
        slice.add(uid);
    }
    if changes.is_empty() {
        slice.build_fresh()
    } else {
        add_changes(&mut slice, changes);
        slice.build_changed(changes)
    }
}

/// `base` (built by [`shared_entities`] without changes) with `changes`
/// applied: only the changed entities (and those below them, which gain
/// their new ancestors) are replaced, where building the set anew would
/// build every entity again. `None` when the changes name an entity `base`
/// lacks or Cedar refuses them: build anew with [`shared_entities`] then.
pub fn changed_entities(
    tenant: &TenantSnapshot,
    base: &Entities,
    changes: &Changes,
) -> Option<Entities> {
    let core: &cedar_policy_core::entities::Entities = base.as_ref();
    let mut named_elsewhere = false;
    for change in changes.iter() {
        let values = change
            .set
            .iter()
            .map(|(_, value)| value)
            .chain(change.add.iter().flat_map(|(_, values)| values.iter()));
        for value in values {
            crate::tenant::entity_uids(value, &mut |uid| {
                if !matches!(
                    core.entity(uid),
                    cedar_policy_core::entities::Dereference::Data(_)
                ) {
                    named_elsewhere = true;
                }
            });
        }
    }
    if named_elsewhere {
        return None;
    }
    let gained = changes.gained_ancestors(&tenant.entities);
    let mut replaced: Vec<Arc<cedar_policy_core::ast::Entity>> = Vec::new();
    for entity in core.iter() {
        let touched = changes.iter().any(|change| &change.uid == entity.uid())
            || gained
                .iter()
                .any(|(uid, _)| uid != entity.uid() && entity.is_descendant_of(uid));
        if touched {
            replaced.push(Arc::new(changes.apply(entity.clone(), &gained)));
        }
    }
    let updated = core
        .clone()
        .upsert_entities(
            replaced,
            None::<&cedar_policy_core::entities::NoEntitiesSchema>,
            cedar_policy_core::entities::TCComputation::AssumeAlreadyComputed,
            cedar_policy_core::extensions::Extensions::none(),
        )
        .ok()?;
    Some(Entities::from(updated))
}

/// Decides `request` over `entities`, which hold every entity it can reach
/// (see [`shared_entities`]), the principal known to be in the snapshot
/// (or strict principals off). The request must bring no request-scoped entities and ask for no
/// explanation.
pub fn decide_in(
    policies: &PolicySnapshot,
    entities: &Entities,
    request: &PreparedRequest,
    options: Options,
) -> Decision {
    let core_request: &cedar_policy_core::ast::Request = request.request.as_ref();
    evaluate_probing(
        policies
            .prepared_for(&request.action)
            .candidates(core_request.resource().uid()),
        entities,
        &request.request,
        options,
        None,
    )
}

/// The entity uids that `policy_set` names where Cedar may read the entity's
/// data (usually none), sorted: found once per policy snapshot.
pub(crate) fn policy_roots(
    policy_set: &cedar_policy::PolicySet,
) -> Vec<cedar_policy_core::ast::EntityUID> {
    let mut uids = Vec::new();
    let policy_set: &cedar_policy_core::ast::PolicySet = policy_set.as_ref();
    for policy in policy_set.policies() {
        read_entities(&policy.condition(), policy.env(), &mut uids);
    }
    uids.sort();
    uids.dedup();
    uids
}

/// Collects the entity literals and slots of `expr` whose entity's data Cedar
/// may read when evaluating it. Left out are those that can only be compared:
/// operands of `==`, `contains`, `containsAll`, `containsAny` and `is`, and
/// the right side of `in` (Cedar reads the ancestors of the left side only).
fn read_entities(expr: &Expr, env: &SlotEnv, found: &mut Vec<cedar_policy_core::ast::EntityUID>) {
    let compared = |operand: &Expr, found: &mut Vec<_>| compared_entities(operand, env, found);
    match expr.expr_kind() {
        ExprKind::Lit(Literal::EntityUID(uid)) => {
            found.push(cedar_policy_core::ast::EntityUID::clone(uid))
        }
        ExprKind::Lit(_) | ExprKind::Var(_) | ExprKind::Unknown(_) => {}
        ExprKind::Slot(slot) => found.extend(env.get(slot).cloned()),
        ExprKind::If {
            test_expr,
            then_expr,
            else_expr,
        } => {
            read_entities(test_expr, env, found);
            read_entities(then_expr, env, found);
            read_entities(else_expr, env, found);
        }
        ExprKind::And { left, right } | ExprKind::Or { left, right } => {
            read_entities(left, env, found);
            read_entities(right, env, found);
        }
        ExprKind::UnaryApp { arg, .. } => read_entities(arg, env, found),
        ExprKind::BinaryApp { op, arg1, arg2 } => match op {
            BinaryOp::In => {
                read_entities(arg1, env, found);
                compared(arg2, found);
            }
            BinaryOp::Eq | BinaryOp::Contains | BinaryOp::ContainsAll | BinaryOp::ContainsAny => {
                compared(arg1, found);
                compared(arg2, found);
            }
            _ => {
                read_entities(arg1, env, found);
                read_entities(arg2, env, found);
            }
        },
        ExprKind::ExtensionFunctionApp { args, .. } => {
            for arg in args.iter() {
                read_entities(arg, env, found);
            }
        }
        ExprKind::GetAttr { expr, .. }
        | ExprKind::HasAttr { expr, .. }
        | ExprKind::ExtHasAttr { expr, .. }
        | ExprKind::Like { expr, .. } => read_entities(expr, env, found),
        ExprKind::Is { expr, .. } => compared(expr, found),
        ExprKind::Set(elements) => {
            for element in elements.iter() {
                read_entities(element, env, found);
            }
        }
        ExprKind::Record(fields) => {
            for value in fields.values() {
                read_entities(value, env, found);
            }
        }
    }
}

/// [`read_entities`] of an operand that is only compared: an entity literal
/// or slot there, alone or in a set literal, is not read.
fn compared_entities(
    expr: &Expr,
    env: &SlotEnv,
    found: &mut Vec<cedar_policy_core::ast::EntityUID>,
) {
    match expr.expr_kind() {
        ExprKind::Lit(Literal::EntityUID(_)) | ExprKind::Slot(_) => {}
        ExprKind::Set(elements) => {
            for element in elements.iter() {
                compared_entities(element, env, found);
            }
        }
        _ => read_entities(expr, env, found),
    }
}

/// Every entity literal in `expr`.
fn entity_literals(expr: &Expr) -> impl Iterator<Item = &cedar_policy_core::ast::EntityUID> {
    expr.subexpressions()
        .filter_map(|expr| match expr.expr_kind() {
            ExprKind::Lit(Literal::EntityUID(uid)) => Some(uid.as_ref()),
            _ => None,
        })
}

/// Evaluates every policy of `policy_set` on its own: first its scope alone
/// (the policy with its conditions removed), then, where the scope matches,
/// the whole policy. Only for explain requests: it runs Cedar twice per policy.
pub fn explain(
    policies: &PolicySnapshot,
    policy_set: &cedar_policy::PolicySet,
    entities: &Entities,
    request: &Request,
) -> Vec<PolicyEvaluation> {
    let authorizer = Authorizer::new();
    let mut evaluations = Vec::new();
    for policy in policy_set.policies() {
        let Some(meta) = policies.policy(policy.id()) else {
            continue;
        };
        let holds = |policy: cedar_policy::Policy| {
            let mut single = cedar_policy::PolicySet::new();
            single.add(policy).ok()?;
            let response = authorizer.is_authorized(request, &single, entities);
            let error = response.diagnostics().errors().next().map(
                |cedar_policy::AuthorizationError::PolicyEvaluationError(e)| e.inner().to_string(),
            );
            let held = response.diagnostics().reason().next().is_some();
            Some((held, error))
        };
        let scope_only = policy.to_json().ok().and_then(|mut json| {
            json.as_object_mut()?.insert(
                "conditions".to_string(),
                serde_json::Value::Array(Vec::new()),
            );
            cedar_policy::Policy::from_json(Some(policy.id().clone()), json).ok()
        });
        let scope_matches = scope_only.and_then(holds).is_some_and(|(held, _)| held);
        if !scope_matches {
            continue;
        }
        if let Some((satisfied, error)) = holds(policy.clone()) {
            evaluations.push(PolicyEvaluation {
                policy: Arc::clone(meta),
                satisfied,
                error,
            });
        }
    }
    evaluations.sort_by(|a, b| a.policy.id.cmp(&b.policy.id));
    evaluations
}

/// Cedar's answer over `prepared` (the policies that can apply to the
/// request's action) turned into tollgate's decision, applying the
/// policy-error mode.
///
/// This is Cedar's authorization rule, applied by hand to conditions built
/// once per policy set: a request is allowed when some permit is satisfied and
/// no forbid is; the determining policies are the satisfied forbids if any,
/// else the satisfied permits; a policy that fails to evaluate is satisfied by
/// nothing and reported as an error. Cedar's own `Authorizer` does the same
/// but rebuilds every policy's condition on every request. A policy that a
/// guard rules out is not satisfied; a compiled condition (see
/// [`Compiled`](crate::Compiled)) answers when it is sure, and Cedar's evaluator decides the
/// rest. The conformance corpus (`tests/conformance.rs`) checks that the
/// answers are identical.
pub fn evaluate<'a>(
    prepared: impl IntoIterator<Item = &'a PreparedPolicy>,
    entities: &Entities,
    request: &Request,
    options: Options,
) -> Decision {
    evaluate_probing(prepared, entities, request, options, None)
}

/// [`evaluate`], following how the decision depends on the count in the
/// context record `count_probe` (see [`Decision::count_range`]).
pub fn evaluate_probing<'a>(
    prepared: impl IntoIterator<Item = &'a PreparedPolicy>,
    entities: &Entities,
    request: &Request,
    options: Options,
    count_probe: Option<&str>,
) -> Decision {
    let core_request: &cedar_policy_core::ast::Request = request.as_ref();
    let entities_core: &cedar_policy_core::entities::Entities = entities.as_ref();
    let mut bindings = compiled::Bindings::new(core_request, entities_core);
    if let Some(attr) = count_probe {
        bindings = bindings.probing_count(attr);
    }
    // Cedar's evaluator, for the policies a compiled condition cannot settle.
    let mut evaluator = None;
    let mut permits = Vec::new();
    let mut forbids = Vec::new();
    let mut failed_forbids = Vec::new();
    let mut errors = Vec::new();
    for policy in prepared {
        if policy.guard.rules_out_in(&bindings) {
            continue;
        }
        let compiled = policy
            .compiled
            .as_ref()
            .and_then(|compiled| compiled.satisfied(&bindings).ok());
        let satisfied = match compiled {
            Some(satisfied) => Ok(satisfied),
            None => {
                bindings.lose_track();
                evaluator
                    .get_or_insert_with(|| {
                        cedar_policy_core::evaluator::Evaluator::new(
                            core_request.clone(),
                            entities_core,
                            cedar_policy_core::extensions::Extensions::all_available(),
                        )
                    })
                    .interpret(&policy.condition, policy.policy.env())
                    .map_err(|error| error.to_string())
                    .and_then(|value| match value.value_kind() {
                        ValueKind::Lit(Literal::Bool(satisfied)) => Ok(*satisfied),
                        // Strict validation makes every condition boolean.
                        _ => Err(format!(
                            "the condition evaluated to `{value}`, not a boolean"
                        )),
                    })
            }
        };
        match (satisfied, policy.meta.effect) {
            (Ok(true), Effect::Permit) => permits.push(Reason::Policy(Arc::clone(&policy.meta))),
            (Ok(true), Effect::Forbid) => forbids.push(Reason::Policy(Arc::clone(&policy.meta))),
            (Ok(false), _) => {}
            (Err(error), effect) => {
                if effect == Effect::Forbid {
                    failed_forbids.push(Reason::PolicyError(Arc::clone(&policy.meta)));
                }
                errors.push(EvaluationError {
                    policy_id: policy.meta.id.clone(),
                    message: error,
                });
            }
        }
    }
    let cedar_allows = forbids.is_empty() && !permits.is_empty();
    if options.policy_errors == PolicyErrorMode::Deny && !failed_forbids.is_empty() {
        forbids.extend(failed_forbids);
        return Decision {
            allow: false,
            reasons: forbids,
            errors,
            explanation: Vec::new(),
            count_range: bindings.count_range(),
        };
    }
    let reasons = if !forbids.is_empty() {
        forbids
    } else if cedar_allows {
        permits
    } else {
        vec![Reason::Builtin(BuiltinReason::NoPermit)]
    };
    Decision {
        allow: cedar_allows,
        reasons,
        errors,
        explanation: Vec::new(),
        count_range: bindings.count_range(),
    }
}
