//! The decision service: one path from a request to an answer for every
//! front door. A front door (gRPC, the CLI, and any other) decodes its
//! request into a [`Check`], calls [`DecisionService`], and encodes the
//! [`Answer`] or the [`Error`] it gets back; nothing else.
//!
//! The service validates what the engine cannot (tenant ids, limits, the
//! consume fields), finds the tenant's snapshot through the
//! [`TenantSource`], has the engine decide (and metering count, for a
//! consuming check), stamps the answer with its freshness and a decision
//! id, and records it in the metrics and the decision log.

mod listing;
mod log;
mod source;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cedar_policy::{Effect, Entity, EntityUid};
use cedar_policy_core::ast::Value;
use smol_str::SmolStr;
use tracing::Instrument as _;

use tollgate_engine::{
    self as engine, BuiltinReason, Decision, EvaluationError, Options, PolicyEvaluation,
    PolicyMeta, PolicySnapshot, PreparedRequest, RequestError, SnapshotSource,
};

use crate::callers::Callers;
pub use crate::callers::{Caller, Credentials, FrontDoor, Operation, Refusal};
use crate::decision_log::DecisionLog;
pub use crate::metering::Consume;
use crate::metering::{
    ConsumeRequest, FirstAnswer, MeterKind, Metered, Metering, Report, UniqueIds, UsageView,
    MAX_KEY_BYTES,
};
use crate::store::remote::RemoteSnapshots;
use crate::store::{Catalog, Lookup, Store};
pub use listing::{
    hint_for_check, DecisionFilter, Hint, Item, Listed, Listing, OfferRef, DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
};
pub use source::{FileSource, LicenseSource, TenantSource, Tenants};

/// Why a call could not be answered with a decision. Each front door maps
/// these to its own status codes in one table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller is unknown, or may not do what it asked.
    #[error("{0}")]
    Refused(Refusal),
    /// The end user's token was refused (or is required and missing).
    #[error("unauthenticated: {0}")]
    Token(crate::jwt::TokenRefusal),
    /// The request is malformed or does not fit the schema.
    #[error("{0}")]
    InvalidArgument(RequestError),
    /// A batch holds more checks than allowed.
    #[error("batch of {size} {items} exceeds the limit of {limit}")]
    BatchTooLarge {
        /// `checks` or `reports`.
        items: &'static str,
        /// Checks in the batch.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// A request brings more request-scoped entities than allowed.
    #[error("{field}: {size} request-scoped entities exceed the limit of {limit}")]
    TooManyEntities {
        /// `entities` or `checks[i].entities`.
        field: String,
        /// Entities in the request.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// As many requests as allowed are in flight already.
    #[error("the server is at its limit of {limit} requests in flight (max_in_flight); retry with backoff")]
    Overloaded {
        /// `max_in_flight`.
        limit: usize,
    },
    /// The bodies of the requests in flight already take all the memory
    /// allowed for them.
    #[error("the bodies of the requests in flight would pass {limit} bytes (max_request_bytes_in_flight); retry with backoff")]
    RequestBytesOverBudget {
        /// `max_request_bytes_in_flight`.
        limit: usize,
    },
    /// A request carries more values than allowed.
    #[error("{field}: {size} values exceed the limit of {limit} per call")]
    TooManyValues {
        /// `context`, or `checks[i]` of a batch (where the limit was passed).
        field: String,
        /// Values counted up to that point.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// More checks of a batch ask for an explanation than allowed.
    #[error(
        "{size} checks of the batch ask for an explanation; a batch may explain at most {limit}"
    )]
    TooManyExplained {
        /// Checks asking for an explanation.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// No valid policy set has been loaded yet.
    #[error("no valid policy set is loaded")]
    PoliciesNotLoaded,
    /// Metering needs the Redis source.
    #[error("usage metering needs the Redis source (redis_url)")]
    MeteringNotConfigured,
    /// A usage report names a tenant without a snapshot.
    #[error("tenant `{0}` has no entitlement snapshot")]
    UnknownTenant(String),
    /// A dependency cannot answer now.
    #[error("{0}")]
    Unavailable(String),
    /// The call did not finish within its deadline (the caller's, or the
    /// server's `request_timeout_ms`).
    #[error("the call did not finish within its deadline of {after_ms} ms")]
    DeadlineExceeded {
        /// The deadline, in milliseconds from the call's start.
        after_ms: u64,
    },
}

impl Error {
    /// The request field the error is about, when it names one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidArgument(error) => Some(&error.field),
            Self::BatchTooLarge { items, .. } => Some(items),
            Self::TooManyEntities { field, .. } | Self::TooManyValues { field, .. } => Some(field),
            _ => None,
        }
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::InvalidArgument(RequestError::new(field, problem))
}

/// Limits on what one call may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most checks in one `CheckBatch`, and most reports in one usage report.
    pub max_batch: usize,
    /// Longest a call may take (a caller's shorter deadline wins).
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// The configuration's defaults (`max_batch`, `request_timeout_ms`).
    fn default() -> Self {
        Self {
            max_batch: usize::try_from(crate::config_keys::number("max_batch"))
                .unwrap_or(usize::MAX),
            request_timeout: crate::config_keys::millis("request_timeout_ms"),
        }
    }
}

/// Runs `call` within `limit`: past it, the call is dropped and answered
/// [`Error::DeadlineExceeded`]. A consumption dropped after Redis counted
/// it is counted once: its retry, with the same idempotency key, replays.
///
/// A timer is set only for a call still waiting after its first poll (a
/// decision on a cached snapshot waits for nothing).
pub fn within<T, F>(limit: Duration, call: F) -> Within<F>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    Within {
        call,
        timer: None,
        limit,
        started: std::time::Instant::now(),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`within`]: the call, and its timer once the call has
    /// been polled without finishing. Written out rather than an `async fn`,
    /// whose state would hold the call twice (the argument and the pinned
    /// local): a `Check`'s future is several kilobytes, moved on every call.
    #[derive(Debug)]
    pub struct Within<F> {
        #[pin]
        call: F,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        limit: Duration,
        started: std::time::Instant,
    }
}

impl<T, F> std::future::Future for Within<F>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    type Output = Result<T, Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut this = self.project();
        if let std::task::Poll::Ready(result) = this.call.poll(context) {
            return std::task::Poll::Ready(result);
        }
        if this.timer.is_none() {
            let left = this.limit.saturating_sub(this.started.elapsed());
            this.timer.set(Some(tokio::time::sleep(left)));
        }
        let expired = this
            .timer
            .as_pin_mut()
            .is_some_and(|timer| timer.poll(context).is_ready());
        if expired {
            return std::task::Poll::Ready(Err(Error::DeadlineExceeded {
                after_ms: u64::try_from(this.limit.as_millis()).unwrap_or(u64::MAX),
            }));
        }
        std::task::Poll::Pending
    }
}

/// Most checks of one batch that may ask for an explanation.
pub const MAX_EXPLAINED_IN_BATCH: usize = 10;

/// Most request-scoped entities one check may bring. Merging them costs a copy
/// of the tenant's entities and a transitive closure, so it is bounded.
pub const MAX_REQUEST_ENTITIES: usize = 64;

/// Most values one call may carry, counted over every check of a batch:
/// context values, request-scoped entities' attributes, tags and parents,
/// and every element of their sets, records and extension arguments. A value
/// costs two bytes on the wire and about a hundred decoded, so a 4 MiB
/// request of tiny values would otherwise take hundreds of megabytes.
pub const MAX_REQUEST_VALUES: usize = 20_000;

/// An entity named by type and id, as a request names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityRef {
    /// The entity type, e.g. `User` or `Acme::User`.
    pub type_name: String,
    /// The entity id.
    pub id: String,
}

impl EntityRef {
    /// `Type::"id"`, as the usage stream names who consumed.
    pub fn cedar_text(&self) -> String {
        format!("{}::{:?}", self.type_name, self.id)
    }
}

/// The typed values a check carries (its context and its request-scoped
/// entities), in a front door's own form: each front door converts them to
/// Cedar against the schema, naming the field of any error.
pub trait Values {
    /// How many request-scoped entities the check brings.
    fn entity_count(&self) -> usize;

    /// Leaves out the context attribute `key` (which the service sets).
    fn remove_context(&mut self, key: &str);

    /// The context's attributes and the request-scoped entities as Cedar
    /// values, checked against `policies`' schema. Context errors come
    /// before entity errors.
    fn into_cedar(
        self,
        policies: &PolicySnapshot,
    ) -> Result<(BTreeMap<SmolStr, Value>, Vec<Entity>), RequestError>;

    /// The context in Cedar's JSON form, for the decision log, with the
    /// attributes `masked` names shown as `"***"`.
    fn context_json(&self, masked: &dyn Fn(&str) -> bool) -> serde_json::Value;

    /// How many attribute overrides (a what-if question) it carries.
    fn what_if_count(&self) -> usize {
        0
    }

    /// Takes out the attribute overrides, converted against `policies`'
    /// schema (each named `what_if[i]` in errors).
    fn take_what_if(&mut self, policies: &PolicySnapshot) -> Result<engine::Changes, RequestError> {
        let _ = policies;
        Ok(engine::Changes::new())
    }
}

/// One question: may `principal` do `action` on `resource` for `tenant`?
#[derive(Debug, Clone, Default)]
pub struct Check<V> {
    /// The tenant whose snapshot decides.
    pub tenant: String,
    /// Who asks.
    pub principal: Option<EntityRef>,
    /// What they would do.
    pub action: Option<EntityRef>,
    /// On what.
    pub resource: Option<EntityRef>,
    /// The context and request-scoped entities.
    pub values: V,
    /// Explain every policy whose scope matched.
    pub explain: bool,
    /// Oldest snapshot acceptable, in milliseconds; 0 for the configured bound.
    pub max_staleness_ms: u64,
    /// Consume units of a meter when allowed.
    pub consume: Option<Consume>,
}

/// One usage measured after the fact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// The meter.
    pub meter: String,
    /// A counter's increment, or a gauge's new value.
    pub amount: i64,
    /// Idempotency key of the event.
    pub event_key: String,
    /// Who used it, if known.
    pub principal: Option<EntityRef>,
}

/// Freshness of the data behind an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// The serving policy version.
    pub policy_version: String,
    /// The tenant snapshot's version, 0 when there was none.
    pub snapshot_version: u64,
    /// Milliseconds since the snapshot's source last confirmed it.
    pub snapshot_age_ms: u64,
    /// Where the snapshot came from, `None` when there was none.
    pub source: Option<SnapshotSource>,
    /// The license that served, with `source` `License`.
    pub license: Option<LicenseTerms>,
}

/// The terms of the license behind an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseTerms {
    /// License id.
    pub license_id: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// End of grace, Unix seconds.
    pub grace_ends_at: i64,
    /// Past its expiry, within its grace: decided as usual, to be renewed.
    pub in_grace: bool,
}

impl LicenseTerms {
    fn of(license: &crate::license::set::License, in_grace: bool) -> Self {
        Self {
            license_id: license.claims.jti.clone(),
            expires_at: license.claims.exp,
            grace_ends_at: license.claims.grace_ends(),
            in_grace,
        }
    }
}

impl Freshness {
    fn of(catalog: &Catalog, lookup: &Lookup) -> Self {
        let mut license = None;
        let (snapshot_version, snapshot_age_ms, source) = match lookup {
            Lookup::Found {
                snapshot,
                source,
                age,
            } => (
                snapshot.version,
                u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                Some(*source),
            ),
            Lookup::Licensed {
                license: served,
                in_grace,
            } => {
                license = Some(LicenseTerms::of(served, *in_grace));
                (
                    served.snapshot.version,
                    u64::try_from(served.snapshot.confirmed_at.elapsed().as_millis())
                        .unwrap_or(u64::MAX),
                    Some(SnapshotSource::License),
                )
            }
            Lookup::LicenseRefused {
                license: refused,
                reason,
            } => {
                let past_grace = *reason == BuiltinReason::LicenseExpired;
                license = Some(LicenseTerms::of(refused, past_grace));
                (refused.claims.ver, 0, Some(SnapshotSource::License))
            }
            Lookup::Unknown | Lookup::Unavailable => (0, 0, None),
        };
        Self {
            policy_version: catalog.policies.version.clone(),
            snapshot_version,
            snapshot_age_ms,
            source,
            license,
        }
    }
}

/// One reason for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A reason the engine gave.
    Decided(engine::Reason),
    /// A consumption's first answer, given again for a retry of its key
    /// (boxed: a reason stays as small as the engine's, so that an answer
    /// takes over the engine's list of reasons without a new allocation).
    Replayed(Box<Replayed>),
}

/// The reason of a consumption's first answer, given again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The first answer's determining policy, if any.
    pub policy_id: String,
    /// Its effect, when it allowed and the policy still exists.
    pub effect: Option<Effect>,
    /// The first answer's reason code.
    pub code: String,
    /// The first answer's decision id.
    pub decision_id: String,
}

impl Reason {
    /// The machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            Self::Decided(reason) => reason.code(),
            Self::Replayed(replayed) => &replayed.code,
        }
    }

    /// The determining policy's id, empty for a built-in reason.
    pub fn policy_id(&self) -> &str {
        match self {
            Self::Decided(engine::Reason::Policy(policy) | engine::Reason::PolicyError(policy)) => {
                &policy.id
            }
            Self::Decided(engine::Reason::Builtin(_)) => "",
            Self::Replayed(replayed) => &replayed.policy_id,
        }
    }

    /// The determining policy's effect, `None` for a built-in reason.
    pub fn effect(&self) -> Option<Effect> {
        match self {
            Self::Decided(engine::Reason::Policy(policy) | engine::Reason::PolicyError(policy)) => {
                Some(policy.effect)
            }
            Self::Decided(engine::Reason::Builtin(_)) => None,
            Self::Replayed(replayed) => replayed.effect,
        }
    }

    /// A sentence for people: the policy's `@reason`, or tollgate's own.
    pub fn message(&self) -> String {
        match self {
            Self::Decided(engine::Reason::Policy(policy)) => policy.reason.clone(),
            Self::Decided(engine::Reason::PolicyError(policy)) => format!(
                "policy `{}` failed to evaluate, so the request is denied",
                policy.id
            ),
            Self::Decided(engine::Reason::Builtin(builtin)) => builtin.message().to_string(),
            Self::Replayed(replayed) => format!(
                "the first answer to this idempotency key (decision {}), given again; counted once",
                replayed.decision_id
            ),
        }
    }

    /// The policy's other annotations.
    pub fn annotations(&self) -> &[(String, String)] {
        match self {
            Self::Decided(engine::Reason::Policy(policy) | engine::Reason::PolicyError(policy)) => {
                &policy.annotations
            }
            _ => &[],
        }
    }
}

/// The answer to a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `true` for ALLOW.
    pub allow: bool,
    /// Determining policies, or one built-in reason.
    pub reasons: Vec<Reason>,
    /// Policies that failed to evaluate.
    pub errors: Vec<EvaluationError>,
    /// With explain: every policy whose scope matched, in id order.
    pub explanation: Vec<PolicyEvaluation>,
    /// The data the answer was decided on.
    pub freshness: Freshness,
    /// Unique id of this answer (a replayed one keeps its first id).
    pub decision_id: String,
    /// For a consuming check: the meter's state after it.
    pub usage: Option<UsageView>,
    /// Decided with attribute overrides (a what-if question).
    pub hypothetical: bool,
    /// The principal's attributes the decision log records
    /// (`decision_log_attributes`), as they were in the snapshot that
    /// decided; empty without them.
    pub logged_attributes: Vec<(String, serde_json::Value)>,
}

impl Answer {
    fn new(decision: Decision, freshness: Freshness, decision_id: String) -> Self {
        Self {
            allow: decision.allow,
            reasons: decision.reasons.into_iter().map(Reason::Decided).collect(),
            errors: decision.errors,
            explanation: decision.explanation,
            freshness,
            decision_id,
            usage: None,
            hypothetical: false,
            logged_attributes: Vec::new(),
        }
    }

    /// The first reason's code, empty when there is none.
    pub fn first_code(&self) -> &str {
        self.reasons.first().map_or("", Reason::code)
    }
}

/// The decision service: every front door's one way to a decision.
#[derive(Debug)]
pub struct DecisionService {
    store: Arc<Store>,
    tenants: Tenants,
    options: Options,
    limits: Limits,
    ids: UniqueIds,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    decision_log: Option<Arc<DecisionLog>>,
    metering: Option<Arc<Metering>>,
    callers: Arc<Callers>,
    jwt: Option<Arc<crate::jwt::Verifier>>,
}

/// The value at `path` (`account.plan`: attributes, through the entities
/// and records they name) from `principal` in `snapshot`.
fn attribute_path<'a>(
    snapshot: &'a engine::TenantSnapshot,
    principal: &cedar_policy_core::ast::EntityUID,
    path: &str,
) -> Option<&'a Value> {
    use cedar_policy_core::ast::{Literal, ValueKind};
    let mut segments = path.split('.');
    let mut value = snapshot.entities.attr(principal, segments.next()?)?;
    for segment in segments {
        value = match value.value_kind() {
            ValueKind::Lit(Literal::EntityUID(uid)) => snapshot.entities.attr(uid, segment)?,
            ValueKind::Record(fields) => fields.get(segment)?,
            _ => return None,
        };
    }
    Some(value)
}

/// The context record the policies read a meter's state from.
const USAGE: &str = "usage";

fn check_key(field: &str, key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(invalid(field, "required"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(field, format!("longer than {MAX_KEY_BYTES} bytes")));
    }
    Ok(())
}

/// Checks a meter's id: it names an entity of the tenant's snapshot.
fn check_meter(field: &str, meter: &str) -> Result<(), Error> {
    if meter.is_empty() {
        return Err(invalid(field, "required"));
    }
    if meter.len() > engine::MAX_ID_BYTES {
        return Err(invalid(
            field,
            format!("longer than {} bytes", engine::MAX_ID_BYTES),
        ));
    }
    Ok(())
}

fn check_entity_count<V: Values>(field: &str, check: &Check<V>) -> Result<(), Error> {
    let size = check.values.entity_count();
    if size > MAX_REQUEST_ENTITIES {
        return Err(Error::TooManyEntities {
            field: field.to_string(),
            size,
            limit: MAX_REQUEST_ENTITIES,
        });
    }
    Ok(())
}

/// Checks the tenant field.
pub fn check_tenant(tenant: &str) -> Result<(), RequestError> {
    engine::check_tenant_id(tenant).map_err(|problem| RequestError::new("tenant", problem))
}

fn entity_uid(
    policies: &PolicySnapshot,
    field: &str,
    reference: Option<&EntityRef>,
) -> Result<EntityUid, RequestError> {
    let reference = reference.ok_or_else(|| RequestError::new(field, "required"))?;
    engine::entity_uid(policies, field, &reference.type_name, &reference.id)
}

/// Converts and validates a check against the schema; with `usage`, that
/// context attribute is the given Cedar value (replacing one the caller
/// sent, which is then neither converted nor checked).
pub fn prepare<V: Values>(
    policies: &PolicySnapshot,
    check: Check<V>,
    usage: Option<(&str, Value)>,
) -> Result<PreparedRequest, RequestError> {
    let Check {
        tenant,
        principal,
        action,
        resource,
        mut values,
        explain,
        ..
    } = check;
    check_tenant(&tenant)?;
    if let Some((key, _)) = &usage {
        values.remove_context(key);
    }
    let principal = entity_uid(policies, "principal", principal.as_ref())?;
    let action = match &action {
        Some(action) => engine::action_uid(policies, &action.type_name, &action.id)?,
        None => return Err(RequestError::new("action", "required")),
    };
    let resource = entity_uid(policies, "resource", resource.as_ref())?;
    let (mut context, entities) = values.into_cedar(policies)?;
    if let Some((key, value)) = usage {
        context.insert(SmolStr::from(key), value);
    }
    engine::prepare(policies, principal, action, resource, context, entities)
        .map(|prepared| prepared.with_explain(explain))
}

impl DecisionService {
    /// A decision service over `store`, with tenant snapshots from its files.
    pub fn new(store: Arc<Store>, options: Options, limits: Limits) -> Self {
        Self {
            store,
            tenants: Tenants::Files(FileSource),
            options,
            limits,
            ids: UniqueIds::new(),
            metrics: None,
            decision_log: None,
            metering: None,
            callers: Arc::new(Callers::open(None)),
            jwt: None,
        }
    }

    /// Identifies callers with `callers` (without, every caller is
    /// `anonymous` and may use every decision operation).
    pub fn with_callers(mut self, callers: Arc<Callers>) -> Self {
        self.callers = callers;
        self
    }

    /// The caller `credentials` identify, about to ask for `operation`.
    /// A refusal is counted.
    pub fn identify(
        &self,
        credentials: &Credentials<'_>,
        operation: Operation,
    ) -> Result<Caller, Error> {
        self.callers
            .identify(credentials)
            .map_err(|refusal| self.refused(refusal, operation))
    }

    /// Whether `caller` may use `operation` (on `tenant`, when it names
    /// one). A refusal is counted.
    pub fn authorize(
        &self,
        caller: &Caller,
        operation: Operation,
        tenant: Option<&str>,
    ) -> Result<(), Error> {
        caller
            .authorize(operation, tenant)
            .map_err(|refusal| self.refused(refusal, operation))
    }

    fn refused(&self, refusal: Refusal, operation: Operation) -> Error {
        if let Some(metrics) = &self.metrics {
            let code = match refusal {
                Refusal::Unauthenticated(_) | Refusal::CredentialsRequired { .. } => {
                    "unauthenticated"
                }
                Refusal::PermissionDenied { .. } => "permission_denied",
            };
            metrics.record_refusal(refusal.caller(), operation.name(), code);
        }
        tracing::debug!(caller = refusal.caller(), operation = operation.name(), refusal = %refusal, "call refused");
        Error::Refused(refusal)
    }

    /// Verifies end users' tokens with `verifier`.
    pub fn with_jwt(mut self, verifier: Arc<crate::jwt::Verifier>) -> Self {
        self.jwt = Some(verifier);
        self
    }

    /// The verifier of end users' tokens, when configured.
    pub fn jwt(&self) -> Option<&Arc<crate::jwt::Verifier>> {
        self.jwt.as_ref()
    }

    /// The token in an `authorization` header value (a bearer value shaped
    /// as a JWT), verified: `None` without a verifier, or without a token
    /// where none is required. A refusal is counted.
    pub async fn verified_token(
        &self,
        authorization: Option<&str>,
    ) -> Result<Option<crate::jwt::VerifiedToken>, Error> {
        let Some(verifier) = &self.jwt else {
            return Ok(None);
        };
        let token = authorization
            .and_then(crate::callers::bearer_token)
            .filter(|token| crate::jwt::looks_like_jwt(token));
        // Boxed: verifying may fetch a JWKS, a future of kilobytes that every
        // check's future would otherwise carry, verifier or not.
        Box::pin(verifier.verify_optional(token))
            .await
            .map_err(|refusal| {
                if let Some(metrics) = &self.metrics {
                    metrics.record_token_refusal(refusal.check());
                }
                Error::Token(refusal)
            })
    }

    /// Counts consumptions and usage reports with `metering` (over the Redis
    /// source's connection).
    pub fn with_metering(mut self, metering: Arc<Metering>) -> Self {
        self.metering = Some(metering);
        self
    }

    /// The metering path, when configured.
    pub fn metering_stats(&self) -> Option<&Arc<crate::metering::MeteringStats>> {
        self.metering.as_ref().map(|m| m.stats())
    }

    /// Reads tenant snapshots from Redis (through its cache) instead of the
    /// entitlements directory.
    pub fn with_remote(mut self, remote: Arc<RemoteSnapshots>) -> Self {
        self.tenants = Tenants::Redis(remote, None);
        self
    }

    /// Serves tenants from signed licenses: alone, or with the Redis source
    /// as its floor (call after [`DecisionService::with_remote`]).
    pub fn with_licenses(mut self, licenses: LicenseSource) -> Self {
        self.tenants = match self.tenants {
            Tenants::Redis(remote, _) => Tenants::Redis(remote, Some(licenses)),
            Tenants::Files(_) | Tenants::Licenses(_) => Tenants::Licenses(licenses),
        };
        self
    }

    /// The Redis source, when snapshots come from Redis.
    pub fn remote(&self) -> Option<&Arc<RemoteSnapshots>> {
        match &self.tenants {
            Tenants::Redis(remote, _) => Some(remote),
            Tenants::Files(_) | Tenants::Licenses(_) => None,
        }
    }

    /// Writes a record of every (sampled) decision to `log`.
    pub fn with_decision_log(mut self, log: Arc<DecisionLog>) -> Self {
        self.decision_log = Some(log);
        self
    }

    /// Counts decisions and their durations in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The limits its calls are held to.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a call may wait for anything (Redis): only such calls need a
    /// deadline. With snapshots from files a call decides without waiting,
    /// in microseconds, and the deadline's bookkeeping would cost a tenth
    /// of it (measured: 2 µs of a 24 µs `Check` in server CPU).
    pub fn may_wait(&self) -> bool {
        self.remote().is_some()
    }

    /// The store it reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn catalog(&self) -> Result<Arc<Catalog>, Error> {
        self.store.catalog().ok_or(Error::PoliciesNotLoaded)
    }

    async fn lookup(&self, catalog: &Catalog, tenant: &str, max_staleness_ms: u64) -> Lookup {
        let max_staleness =
            (max_staleness_ms > 0).then(|| std::time::Duration::from_millis(max_staleness_ms));
        self.tenants.lookup(catalog, tenant, max_staleness).await
    }

    fn record(&self, started: std::time::Instant, door: FrontDoor, result: &Result<Answer, Error>) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        match result {
            // A what-if answer is about a snapshot that does not exist: it
            // is not one of the decisions the metrics count.
            Ok(answer) if answer.hypothetical => {}
            Ok(answer) => metrics.record_decision(
                answer.allow,
                answer.first_code(),
                door.name(),
                started.elapsed(),
            ),
            Err(_) => metrics.record_invalid(),
        }
    }

    /// Decides one check for `caller` (and, when it consumes, counts it).
    pub async fn check<V: Values>(
        &self,
        caller: &Caller,
        check: Check<V>,
    ) -> Result<Answer, Error> {
        let operation = if check.consume.is_some() {
            Operation::Consume
        } else {
            Operation::Check
        };
        self.authorize(caller, operation, Some(&check.tenant))?;
        if check.values.what_if_count() > 0 {
            self.authorize(caller, Operation::WhatIf, Some(&check.tenant))?;
        }
        let started = std::time::Instant::now();
        let logged = self
            .decision_log
            .as_deref()
            .map(|log| log::LoggedRequest::capture(log, &check, caller));
        let result = self.check_unrecorded(check).await;
        self.record(started, caller.front_door(), &result);
        if let (Some(log), Some(logged), Ok(answer)) = (&self.decision_log, logged, &result) {
            logged.submit(log, answer, started.elapsed());
        }
        result
    }

    async fn check_unrecorded<V: Values>(&self, check: Check<V>) -> Result<Answer, Error> {
        check_entity_count("entities", &check)?;
        let catalog = self.catalog()?;
        if check.values.what_if_count() > 0 {
            if check.consume.is_some() {
                return Err(invalid(
                    "consume",
                    "a what-if check cannot consume; send what_if without consume",
                ));
            }
            return self.check_what_if(&catalog, check).await;
        }
        if check.consume.is_some() {
            // Boxed: a future is as large as its largest state, and the
            // metering path's (Redis calls, the request, the decisions)
            // would otherwise double the size of every `Check` future,
            // which is moved and allocated on every call.
            return Box::pin(self.check_consume(&catalog, check)).await;
        }
        let tenant = check.tenant.clone();
        let max_staleness_ms = check.max_staleness_ms;
        // Validate before any Redis read: a malformed request costs nothing.
        let prepared = prepare(&catalog.policies, check, None).map_err(Error::InvalidArgument)?;
        let lookup = self
            .lookup(&catalog, &tenant, max_staleness_ms)
            .instrument(crate::stage_span!("snapshot_lookup", tenant = %tenant))
            .await;
        let _evaluation = crate::stage_span!("evaluate").entered();
        self.decide(&catalog, &lookup, &prepared)
            .map(|(answer, _)| answer)
            .map_err(Error::InvalidArgument)
    }

    /// Decides a what-if check: as if its overrides were applied to the
    /// tenant's snapshot.
    async fn check_what_if<V: Values>(
        &self,
        catalog: &Catalog,
        mut check: Check<V>,
    ) -> Result<Answer, Error> {
        let changes = check
            .values
            .take_what_if(&catalog.policies)
            .map_err(Error::InvalidArgument)?;
        let tenant = check.tenant.clone();
        let max_staleness_ms = check.max_staleness_ms;
        let prepared = prepare(&catalog.policies, check, None).map_err(Error::InvalidArgument)?;
        let lookup = self.lookup(catalog, &tenant, max_staleness_ms).await;
        let mut answer = match lookup.snapshot() {
            Some(snapshot) => {
                changes
                    .check(&catalog.policies, snapshot, "what_if")
                    .map_err(Error::InvalidArgument)?;
                let decision = engine::decide_changed(
                    &catalog.policies,
                    snapshot,
                    &prepared,
                    self.options,
                    &changes,
                )
                .map_err(Error::InvalidArgument)?;
                let mut answer =
                    Answer::new(decision, Freshness::of(catalog, &lookup), self.ids.next());
                answer.logged_attributes = self.logged_attributes(snapshot, prepared.principal());
                answer
            }
            None => self
                .decide(catalog, &lookup, &prepared)
                .map(|(answer, _)| answer)
                .map_err(Error::InvalidArgument)?,
        };
        answer.hypothetical = true;
        Ok(answer)
    }

    /// Decides a batch against one catalog; a malformed check fails the call,
    /// naming it (`checks[3].principal.type`).
    pub async fn check_batch<V: Values>(
        &self,
        caller: &Caller,
        checks: Vec<Check<V>>,
    ) -> Result<Vec<Answer>, Error> {
        self.authorize(caller, Operation::CheckBatch, None)?;
        // The whole batch is refused when one of its tenants is not the
        // caller's: nothing is decided.
        for check in &checks {
            self.authorize(caller, Operation::Check, Some(&check.tenant))?;
        }
        let started = std::time::Instant::now();
        let logged: Option<Vec<log::LoggedRequest>> = self.decision_log.as_deref().map(|log| {
            checks
                .iter()
                .map(|check| log::LoggedRequest::capture(log, check, caller))
                .collect()
        });
        let result = self.check_batch_unrecorded(checks).await;
        if let (Some(log), Some(logged), Ok(answers)) = (&self.decision_log, logged, &result) {
            let latency = started.elapsed();
            for (logged, answer) in logged.into_iter().zip(answers) {
                logged.submit(log, answer, latency);
            }
        }
        if let Some(metrics) = &self.metrics {
            match &result {
                Ok(answers) => {
                    // Each decision is counted with its share of the batch's time.
                    let count = u32::try_from(answers.len().max(1)).unwrap_or(u32::MAX);
                    let share = started.elapsed() / count;
                    for answer in answers {
                        metrics.record_decision(
                            answer.allow,
                            answer.first_code(),
                            caller.front_door().name(),
                            share,
                        );
                    }
                }
                Err(_) => metrics.record_invalid(),
            }
        }
        result
    }

    async fn check_batch_unrecorded<V: Values>(
        &self,
        checks: Vec<Check<V>>,
    ) -> Result<Vec<Answer>, Error> {
        let size = checks.len();
        if size > self.limits.max_batch {
            return Err(Error::BatchTooLarge {
                items: "checks",
                size,
                limit: self.limits.max_batch,
            });
        }
        for (index, check) in checks.iter().enumerate() {
            check_entity_count(&format!("checks[{index}].entities"), check)?;
            if check.consume.is_some() {
                return Err(invalid(
                    format!("checks[{index}].consume"),
                    "a batch cannot consume; send consuming checks with Check",
                ));
            }
            if check.values.what_if_count() > 0 {
                return Err(invalid(
                    format!("checks[{index}].what_if"),
                    "a batch cannot ask what-if questions; send them with Check or ListEntitlements",
                ));
            }
        }
        // An explanation evaluates every policy whose scope matches with
        // Cedar's evaluator, twice: a batch may ask for a few.
        let explained = checks.iter().filter(|check| check.explain).count();
        if explained > MAX_EXPLAINED_IN_BATCH {
            return Err(Error::TooManyExplained {
                size: explained,
                limit: MAX_EXPLAINED_IN_BATCH,
            });
        }
        let catalog = self.catalog()?;
        let in_check = |index: usize| {
            move |error: RequestError| {
                invalid(format!("checks[{index}].{}", error.field), error.problem)
            }
        };
        let prepared = checks
            .into_iter()
            .enumerate()
            .map(|(index, check)| {
                let key = (check.tenant.clone(), check.max_staleness_ms);
                prepare(&catalog.policies, check, None)
                    .map(|prepared| (key, prepared))
                    .map_err(in_check(index))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Each tenant (with its staleness bound) is looked up once per batch.
        let mut lookups: Vec<(&(String, u64), Lookup)> = Vec::new();
        for (key, _) in &prepared {
            if !lookups.iter().any(|(seen, _)| *seen == key) {
                let lookup = self
                    .lookup(&catalog, &key.0, key.1)
                    .instrument(crate::stage_span!("snapshot_lookup", tenant = %key.0))
                    .await;
                lookups.push((key, lookup));
            }
        }
        let _evaluation = crate::stage_span!("evaluate", checks = prepared.len()).entered();
        prepared
            .iter()
            .enumerate()
            .map(|(index, (key, prepared))| {
                let lookup = lookups
                    .iter()
                    .find(|(seen, _)| *seen == key)
                    .map_or(&Lookup::Unavailable, |(_, lookup)| lookup);
                self.decide(&catalog, lookup, prepared)
                    .map(|(answer, _)| answer)
                    .map_err(in_check(index))
            })
            .collect()
    }

    /// The engine's decision on `prepared` with the lookup's snapshot, with
    /// the range of counts it holds for when `prepared` probes a count.
    fn decide(
        &self,
        catalog: &Catalog,
        lookup: &Lookup,
        prepared: &PreparedRequest,
    ) -> Result<(Answer, Option<engine::CountRange>), RequestError> {
        let decision = match lookup {
            Lookup::Found { snapshot, .. } => {
                engine::decide(&catalog.policies, snapshot, prepared, self.options)?
            }
            Lookup::Licensed { license, .. } => {
                engine::decide(&catalog.policies, &license.snapshot, prepared, self.options)?
            }
            Lookup::Unknown => Decision::deny(BuiltinReason::UnknownTenant),
            Lookup::Unavailable => Decision::deny(BuiltinReason::EntitlementsUnavailable),
            Lookup::LicenseRefused { reason, .. } => Decision::deny(*reason),
        };
        let count_range = decision.count_range;
        let mut answer = Answer::new(decision, Freshness::of(catalog, lookup), self.ids.next());
        if let Some(snapshot) = lookup.snapshot() {
            answer.logged_attributes = self.logged_attributes(snapshot, prepared.principal());
        }
        Ok((answer, count_range))
    }

    /// The principal's attributes the decision log records
    /// (`decision_log_attributes`), read from `snapshot`; a path the
    /// snapshot does not have is left out, one in `decision_log_mask` is
    /// `"***"`.
    fn logged_attributes(
        &self,
        snapshot: &engine::TenantSnapshot,
        principal: &EntityUid,
    ) -> Vec<(String, serde_json::Value)> {
        let Some(log) = self.decision_log.as_deref() else {
            return Vec::new();
        };
        if log.attributes().is_empty() {
            return Vec::new();
        }
        log.attributes()
            .iter()
            .filter_map(|path| {
                let value = attribute_path(snapshot, principal.as_ref(), path)?;
                let json = if log.masks(path) {
                    serde_json::Value::String("***".to_string())
                } else {
                    let cedar = cedar_policy_core::entities::json::CedarValueJson::from_value(
                        value.clone(),
                    )
                    .ok()?;
                    serde_json::to_value(cedar).ok()?
                };
                Some((path.clone(), json))
            })
            .collect()
    }

    /// A DENY for a built-in reason with the lookup's freshness; with
    /// `decision_id`, under that id.
    fn builtin_deny(
        &self,
        catalog: &Catalog,
        lookup: &Lookup,
        reason: BuiltinReason,
        decision_id: Option<String>,
    ) -> Answer {
        Answer::new(
            Decision::deny(reason),
            Freshness::of(catalog, lookup),
            decision_id.unwrap_or_else(|| self.ids.next()),
        )
    }

    /// Decides a check that consumes `check.consume`: metering runs the
    /// protocol ([`Metering::decide_and_consume`]) with this service's
    /// decisions.
    async fn check_consume<V: Values>(
        &self,
        catalog: &Catalog,
        mut check: Check<V>,
    ) -> Result<Answer, Error> {
        let consume = check.consume.take().unwrap_or_default();
        check_meter("consume.meter", &consume.meter)?;
        if consume.amount < 1 {
            return Err(invalid(
                "consume.amount",
                format!("must be at least 1, got {}", consume.amount),
            ));
        }
        check_key("consume.idempotency_key", &consume.idempotency_key)?;
        let metering = self.metering.as_ref().ok_or(Error::MeteringNotConfigured)?;
        let tenant = check.tenant.clone();
        // The request is converted and validated once, with the meter's
        // state in its context: a malformed one is refused before anything
        // is counted.
        check_tenant(&tenant).map_err(Error::InvalidArgument)?;
        let lookup = self.lookup(catalog, &tenant, check.max_staleness_ms).await;
        let Some(snapshot) = lookup.snapshot() else {
            let prepared =
                prepare(&catalog.policies, check, None).map_err(Error::InvalidArgument)?;
            return self
                .decide(catalog, &lookup, &prepared)
                .map(|(answer, _)| answer)
                .map_err(Error::InvalidArgument);
        };
        let principal = check
            .principal
            .as_ref()
            .map(EntityRef::cedar_text)
            .unwrap_or_default();
        let fingerprint = crate::metering::request_fingerprint(
            &[
                &tenant,
                &principal,
                &check
                    .action
                    .as_ref()
                    .map(EntityRef::cedar_text)
                    .unwrap_or_default(),
                &check
                    .resource
                    .as_ref()
                    .map(EntityRef::cedar_text)
                    .unwrap_or_default(),
                &consume.meter,
            ],
            consume.amount,
        );
        let wants_attributes = self
            .decision_log
            .as_deref()
            .is_some_and(|log| !log.attributes().is_empty());
        // The principal is looked up only when records carry attributes.
        let logged_attributes = match &check.principal {
            Some(principal) if wants_attributes => engine::entity_uid(
                &catalog.policies,
                "principal",
                &principal.type_name,
                &principal.id,
            )
            .map(|uid| self.logged_attributes(snapshot, &uid))
            .unwrap_or_default(),
            _ => Vec::new(),
        };
        let conn = self.tenants.connection();
        let metered = metering
            .decide_and_consume(
                conn,
                ConsumeRequest {
                    tenant: &tenant,
                    snapshot,
                    consume: &consume,
                    principal: &principal,
                    fingerprint: &fingerprint,
                },
                |usage| prepare(&catalog.policies, check, Some((USAGE, usage))),
                |prepared| {
                    let _evaluation = crate::stage_span!("evaluate").entered();
                    let decision =
                        engine::decide(&catalog.policies, snapshot, prepared, self.options)?;
                    Ok((decision, self.ids.next()))
                },
            )
            .await
            .map_err(Error::InvalidArgument)?;
        let mut answer = match metered {
            Metered::Decided {
                decision,
                decision_id,
                usage,
            } => {
                let mut answer =
                    Answer::new(decision, Freshness::of(catalog, &lookup), decision_id);
                answer.usage = Some(usage);
                answer
            }
            Metered::Denied {
                reason,
                decision_id,
                usage,
            } => {
                let mut answer = self.builtin_deny(catalog, &lookup, reason, decision_id);
                answer.usage = usage;
                answer
            }
            Metered::Replayed { first, usage } => self.replay(catalog, &lookup, first, usage),
        };
        answer.logged_attributes = logged_attributes;
        Ok(answer)
    }

    /// The first answer to an idempotency key, given again.
    fn replay(
        &self,
        catalog: &Catalog,
        lookup: &Lookup,
        first: FirstAnswer,
        usage: UsageView,
    ) -> Answer {
        let policy_exists = catalog
            .policies
            .policies()
            .any(|policy: &Arc<PolicyMeta>| policy.id == first.policy_id);
        Answer {
            allow: first.allow,
            reasons: vec![Reason::Replayed(Box::new(Replayed {
                effect: (policy_exists && first.allow).then_some(Effect::Permit),
                policy_id: first.policy_id,
                code: first.code,
                decision_id: first.decision_id.clone(),
            }))],
            errors: Vec::new(),
            explanation: Vec::new(),
            freshness: Freshness::of(catalog, lookup),
            decision_id: first.decision_id,
            usage: Some(usage),
            hypothetical: false,
            logged_attributes: Vec::new(),
        }
    }

    /// Applies usage measured after the fact; returns each report's meter
    /// state afterwards.
    pub async fn report_usage(
        &self,
        caller: &Caller,
        tenant: String,
        reports: Vec<UsageReport>,
    ) -> Result<Vec<UsageView>, Error> {
        self.authorize(caller, Operation::ReportUsage, Some(&tenant))?;
        let catalog = self.catalog()?;
        check_tenant(&tenant).map_err(Error::InvalidArgument)?;
        if reports.is_empty() {
            return Err(invalid("reports", "at least one report is required"));
        }
        if reports.len() > self.limits.max_batch {
            return Err(Error::BatchTooLarge {
                items: "reports",
                size: reports.len(),
                limit: self.limits.max_batch,
            });
        }
        for (index, report) in reports.iter().enumerate() {
            check_key(&format!("reports[{index}].event_key"), &report.event_key)?;
            check_meter(&format!("reports[{index}].meter"), &report.meter)?;
            if let Some(first) = reports[..index]
                .iter()
                .position(|earlier| earlier.event_key == report.event_key)
            {
                return Err(invalid(
                    format!("reports[{index}].event_key"),
                    format!("repeats reports[{first}].event_key: an event key names one event"),
                ));
            }
        }
        let metering = self.metering.as_ref().ok_or(Error::MeteringNotConfigured)?;
        // Metering is configured: without a connection yet, Redis is
        // unreachable for now, and the report is to be retried, not dropped.
        let conn = self.tenants.connection().ok_or_else(|| {
            Error::Unavailable("not connected to Redis yet; retry the report".to_string())
        })?;
        let snapshot = match self.lookup(&catalog, &tenant, 0).await {
            Lookup::Found { snapshot, .. } => snapshot,
            Lookup::Licensed { license, .. } => Arc::clone(&license.snapshot),
            Lookup::Unknown => return Err(Error::UnknownTenant(tenant)),
            Lookup::LicenseRefused { reason, .. } => {
                return Err(Error::Unavailable(reason.message().to_string()))
            }
            Lookup::Unavailable => {
                return Err(Error::Unavailable(
                    "the tenant's entitlements are unavailable".to_string(),
                ))
            }
        };
        let mut measured = Vec::with_capacity(reports.len());
        for (index, report) in reports.into_iter().enumerate() {
            let meter = match metering.meter(&snapshot, &report.meter) {
                Ok(Some(meter)) => meter,
                Ok(None) => {
                    return Err(invalid(
                        format!("reports[{index}].meter"),
                        format!("tenant `{tenant}` has no meter `{}`", report.meter),
                    ))
                }
                Err(problem) => return Err(invalid(format!("reports[{index}].meter"), problem)),
            };
            if report.amount < 0 && meter.kind == MeterKind::Gauge {
                return Err(invalid(
                    format!("reports[{index}].amount"),
                    "a gauge's value cannot be negative",
                ));
            }
            if report.amount < 1 && meter.kind == MeterKind::Counter {
                return Err(invalid(
                    format!("reports[{index}].amount"),
                    format!("must be at least 1, got {}", report.amount),
                ));
            }
            measured.push(Report {
                meter,
                amount: report.amount,
                event_key: report.event_key,
                principal: report
                    .principal
                    .as_ref()
                    .map(EntityRef::cedar_text)
                    .unwrap_or_default(),
            });
        }
        let reported = metering
            .report(conn, &tenant, &measured)
            .await
            .map_err(|error| {
                Error::Unavailable(crate::telemetry::internal_error(
                    "usage cannot be recorded right now",
                    &error,
                ))
            })?;
        let totals = match reported {
            crate::metering::Reported::Totals(totals) => totals,
            crate::metering::Reported::Collision { index } => {
                return Err(invalid(
                    format!("reports[{index}].event_key"),
                    format!(
                        "`{}` was first reported for another event (its meter, amount or principal differ); nothing was applied",
                        measured[index].event_key
                    ),
                ))
            }
        };
        Ok(measured
            .iter()
            .zip(totals)
            .map(|(report, used)| metering.view(&report.meter, used))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_reason_names_its_first_decision() {
        let reason = Reason::Replayed(Box::new(Replayed {
            policy_id: "members-use".to_string(),
            effect: Some(Effect::Permit),
            code: "member_role".to_string(),
            decision_id: "00ff".to_string(),
        }));
        assert_eq!(reason.code(), "member_role");
        assert_eq!(reason.policy_id(), "members-use");
        assert_eq!(
            reason.message(),
            "the first answer to this idempotency key (decision 00ff), given again; counted once"
        );
        assert!(reason.annotations().is_empty());
    }

    #[test]
    fn a_call_is_bounded_by_its_deadline_whether_it_waits_or_not() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let limit = Duration::from_millis(50);
        // Done at once: answered, no timer.
        let done = runtime.block_on(within(limit, async { Ok::<_, Error>(7) }));
        assert_eq!(done.unwrap(), 7);
        // Waits, then finishes in time.
        let waited = runtime.block_on(within(limit, async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, Error>(8)
        }));
        assert_eq!(waited.unwrap(), 8);
        // Waits past the deadline.
        let late = runtime.block_on(within(limit, async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Error>(9)
        }));
        assert_eq!(
            late.unwrap_err().to_string(),
            "the call did not finish within its deadline of 50 ms"
        );
    }

    #[test]
    fn a_reason_is_as_small_as_the_engines() {
        // Same size and alignment: an answer's reasons reuse the engine's
        // allocation.
        assert_eq!(
            std::mem::size_of::<Reason>(),
            std::mem::size_of::<engine::Reason>()
        );
        assert_eq!(
            std::mem::align_of::<Reason>(),
            std::mem::align_of::<engine::Reason>()
        );
    }
}
