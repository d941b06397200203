//! Where the decision is made: a pure, synchronous function of a prepared
//! request, a policy snapshot and a tenant snapshot. No I/O, no gRPC, no Redis.

mod context_check;

use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Effect, Entities, Entity, EntityId, EntityUid, Request,
    RequestValidationError, RestrictedExpression,
};

use crate::store::diagnostics::describe;
use cedar_policy_core::ast::{Literal, ValueKind};

use crate::store::policies::PreparedPolicy;
use crate::store::{PolicyMeta, PolicySnapshot, TenantSnapshot};

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
}

impl Decision {
    /// A deny for a built-in reason.
    pub fn deny(reason: BuiltinReason) -> Self {
        Self {
            allow: false,
            reasons: vec![Reason::Builtin(reason)],
            errors: Vec::new(),
            explanation: Vec::new(),
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
}

impl PreparedRequest {
    /// Asks for an explanation of every policy whose scope matches.
    pub fn with_explain(mut self, explain: bool) -> Self {
        self.explain = explain;
        self
    }
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
    if id.is_empty() {
        return Err(RequestError::new(
            format!("{field}.id"),
            "must not be empty",
        ));
    }
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
    if id.is_empty() {
        return Err(RequestError::new("action.id", "must not be empty"));
    }
    policies.action(type_name, id).cloned().ok_or_else(|| {
        RequestError::new(
            "action",
            format!("action `{type_name}::{id:?}` is not declared in the schema"),
        )
    })
}

/// Builds and validates a request against the policy snapshot's schema.
///
/// `context` holds `(attribute, value)` pairs; `entities` are request-scoped
/// entities added to the tenant snapshot for this request only.
pub fn prepare(
    policies: &PolicySnapshot,
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context: Vec<(String, RestrictedExpression)>,
    entities: Vec<Entity>,
) -> Result<PreparedRequest, RequestError> {
    let context = match Context::from_pairs(context.iter().cloned()) {
        Ok(context) => context,
        Err(error) => return Err(context_error(&context, &describe(&error))),
    };
    let request = Request::new(
        principal.clone(),
        action.clone(),
        resource,
        context,
        Some(&policies.schema),
    )
    .map_err(|error| request_validation_error(policies, error))?;
    Ok(PreparedRequest {
        request,
        principal,
        action,
        entities,
        explain: false,
    })
}

/// Names the context attribute that made `Context::from_pairs` fail. Only runs
/// on the error path, so it may re-evaluate each attribute on its own.
fn context_error(pairs: &[(String, RestrictedExpression)], message: &str) -> RequestError {
    let mut seen = std::collections::HashSet::new();
    for (key, value) in pairs {
        if !seen.insert(key.as_str()) {
            return RequestError::new(format!("context.{key}"), "duplicate attribute");
        }
        if let Err(error) = Context::from_pairs([(key.clone(), value.clone())]) {
            return RequestError::new(format!("context.{key}"), describe(&error));
        }
    }
    RequestError::new("context", message.to_string())
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
    // A principal must be in the snapshot itself: request-scoped entities may
    // add context for a decision, never make up who is asking.
    if options.strict_principals && tenant.entities.get(&request.principal).is_none() {
        return Ok(Decision::deny(BuiltinReason::UnknownPrincipal));
    }
    let merged;
    let entities: &Entities = if request.entities.is_empty() {
        &tenant.entities
    } else {
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
        // Only requests that bring their own entities pay for this copy; the
        // tenant snapshot's entities are reference counted inside.
        merged = tenant
            .entities
            .clone()
            .add_entities(request.entities.iter().cloned(), Some(&policies.schema))
            .map_err(|error| RequestError::new("entities", describe(&error)))?;
        &merged
    };
    let core_request: &cedar_policy_core::ast::Request = request.request.as_ref();
    let mut decision = evaluate(
        policies
            .prepared_for(&request.action)
            .candidates(core_request.resource().uid()),
        entities,
        &request.request,
        options,
    );
    if request.explain {
        let policy_set = policies.policy_set_for(&request.action);
        decision.explanation = explain(policies, policy_set, entities, &request.request);
    }
    Ok(decision)
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
/// but rebuilds every policy's condition on every request. The conformance
/// corpus (`tests/conformance.rs`) checks that the answers are identical.
pub fn evaluate<'a>(
    prepared: impl IntoIterator<Item = &'a PreparedPolicy>,
    entities: &Entities,
    request: &Request,
    options: Options,
) -> Decision {
    let core_request: &cedar_policy_core::ast::Request = request.as_ref();
    let evaluator = cedar_policy_core::evaluator::Evaluator::new(
        core_request.clone(),
        entities.as_ref(),
        cedar_policy_core::extensions::Extensions::all_available(),
    );
    let mut permits = Vec::new();
    let mut forbids = Vec::new();
    let mut failed_forbids = Vec::new();
    let mut errors = Vec::new();
    for policy in prepared {
        let satisfied = evaluator
            .interpret(&policy.condition, policy.policy.env())
            .map_err(|error| error.to_string())
            .and_then(|value| match value.value_kind() {
                ValueKind::Lit(Literal::Bool(satisfied)) => Ok(*satisfied),
                // Strict validation makes every condition boolean.
                _ => Err(format!(
                    "the condition evaluated to `{value}`, not a boolean"
                )),
            });
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
    }
}
