//! The gRPC edge: protobuf ⇄ domain conversion, request validation, the
//! `EntitlementService` implementation and the one error → status table.

pub mod client;
pub mod codec;
pub mod convert;
mod metered;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::decision_log::DecisionLog;
use crate::engine::{self, BuiltinReason, Decision, Options, RequestError};
use crate::store::remote::RemoteSnapshots;
use crate::store::{Catalog, Lookup, Store};
use convert::FreshnessInfo;

/// Generated protobuf types and gRPC stubs of `tollgate.v1`.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::allow_attributes_without_reason,
    reason = "generated code is not held to the project's lints"
)]
pub mod pb {
    tonic::include_proto!("tollgate.v1");

    /// Encoded file descriptor set of `tollgate.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tollgate_descriptor");
}

pub use pb::entitlement_service_server::{EntitlementService, EntitlementServiceServer};

/// Why a call could not be answered with a decision.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or does not fit the schema.
    #[error("{0}")]
    InvalidArgument(RequestError),
    /// A batch holds more checks than allowed.
    #[error("batch of {size} checks exceeds the limit of {limit}")]
    BatchTooLarge {
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
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match &error {
            ApiError::InvalidArgument(_) => Status::invalid_argument(error.to_string()),
            ApiError::BatchTooLarge { .. } | ApiError::TooManyEntities { .. } => {
                Status::resource_exhausted(error.to_string())
            }
            ApiError::PoliciesNotLoaded | ApiError::Unavailable(_) => {
                Status::unavailable(error.to_string())
            }
            ApiError::MeteringNotConfigured => Status::failed_precondition(error.to_string()),
            ApiError::UnknownTenant(_) => Status::not_found(error.to_string()),
        }
    }
}

/// Limits on what one call may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most checks in one `CheckBatch`.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_batch: 100 }
    }
}

/// Most request-scoped entities one check may bring. Merging them costs a copy
/// of the tenant's entities and a transitive closure, so it is bounded.
pub const MAX_REQUEST_ENTITIES: usize = 64;

fn check_entity_count(field: &str, request: &pb::CheckRequest) -> Result<(), ApiError> {
    let size = request.entities.len();
    if size > MAX_REQUEST_ENTITIES {
        return Err(ApiError::TooManyEntities {
            field: field.to_string(),
            size,
            limit: MAX_REQUEST_ENTITIES,
        });
    }
    Ok(())
}

/// Unique decision ids: a random per-process prefix and a counter.
#[derive(Debug)]
struct DecisionIds {
    prefix: u64,
    counter: AtomicU64,
}

impl DecisionIds {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        hasher.write_u32(std::process::id());
        Self {
            prefix: hasher.finish(),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(32);
        for word in [self.prefix, n] {
            for shift in (0..16).rev() {
                id.push(char::from(DIGITS[((word >> (shift * 4)) & 0xf) as usize]));
            }
        }
        id
    }
}

/// The decision point behind `EntitlementService`, usable without gRPC (the
/// `check` command calls it in-process).
#[derive(Debug)]
pub struct DecisionPoint {
    store: Arc<Store>,
    options: Options,
    limits: Limits,
    ids: DecisionIds,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    decision_log: Option<Arc<DecisionLog>>,
    remote: Option<Arc<RemoteSnapshots>>,
    metering: Option<Arc<crate::metering::Metering>>,
}

/// What the decision log keeps of a request, taken before the request is
/// converted (only when the log is on).
struct LoggedRequest {
    tenant: String,
    principal: Option<pb::EntityRef>,
    action: Option<pb::EntityRef>,
    resource: Option<pb::EntityRef>,
    context: Option<serde_json::Value>,
    /// The trace the request belongs to (its RPC span's, or the caller's).
    trace_id: Option<String>,
}

impl LoggedRequest {
    fn capture(log: &DecisionLog, request: &pb::CheckRequest) -> Self {
        let context = log.logs_context().then(|| {
            request
                .context
                .iter()
                .map(|(key, value)| {
                    let shown = if log.masks(key) {
                        serde_json::Value::String("***".to_string())
                    } else {
                        convert::value_to_json(value)
                    };
                    (key.clone(), shown)
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        });
        Self {
            tenant: request.tenant.clone(),
            principal: request.principal.clone(),
            action: request.action.clone(),
            resource: request.resource.clone(),
            context,
            trace_id: crate::telemetry::current_trace_id(),
        }
    }

    fn submit(self, log: &DecisionLog, response: &pb::CheckResponse, latency: std::time::Duration) {
        let allow = response.decision == pb::Decision::Allow as i32;
        if !log.wants(allow) {
            return;
        }
        fn reference(r: &Option<pb::EntityRef>) -> Option<LoggedRef<'_>> {
            r.as_ref().map(|r| LoggedRef {
                kind: r.r#type.as_str(),
                id: r.id.as_str(),
            })
        }
        let freshness = response.freshness.as_ref();
        // Serialized straight from borrowed fields: no JSON tree is built
        // on the request path, only the line.
        log.submit(&LogRecord {
            decision_id: &response.decision_id,
            time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or_default(),
            tenant: &self.tenant,
            principal: reference(&self.principal),
            action: reference(&self.action),
            resource: reference(&self.resource),
            decision: if allow { "ALLOW" } else { "DENY" },
            reasons: Codes(&response.reasons),
            policies: PolicyIds(&response.reasons),
            policy_version: freshness.map_or("", |f| f.policy_version.as_str()),
            snapshot_version: freshness.map_or(0, |f| f.snapshot_version),
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            context: self.context.as_ref(),
            trace_id: self.trace_id.as_deref(),
        });
    }
}

/// One decision-log record, as written.
#[derive(serde::Serialize)]
struct LogRecord<'a> {
    decision_id: &'a str,
    time_unix_ms: u64,
    tenant: &'a str,
    principal: Option<LoggedRef<'a>>,
    action: Option<LoggedRef<'a>>,
    resource: Option<LoggedRef<'a>>,
    decision: &'static str,
    reasons: Codes<'a>,
    policies: PolicyIds<'a>,
    policy_version: &'a str,
    snapshot_version: u64,
    latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

/// `{"type": ..., "id": ...}`.
#[derive(serde::Serialize)]
struct LoggedRef<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: &'a str,
}

/// The reasons' codes, as a JSON list.
struct Codes<'a>(&'a [pb::Reason]);

impl serde::Serialize for Codes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|reason| reason.code.as_str()))
    }
}

/// The determining policies' ids (built-in reasons have none), as a JSON list.
struct PolicyIds<'a>(&'a [pb::Reason]);

impl serde::Serialize for PolicyIds<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .filter(|reason| !reason.policy_id.is_empty())
                .map(|reason| reason.policy_id.as_str()),
        )
    }
}

impl DecisionPoint {
    /// A decision point over `store`.
    pub fn new(store: Arc<Store>, options: Options, limits: Limits) -> Self {
        Self {
            store,
            options,
            limits,
            ids: DecisionIds::new(),
            metrics: None,
            decision_log: None,
            remote: None,
            metering: None,
        }
    }

    /// Counts consumptions and usage reports with `metering` (over the Redis
    /// source's connection).
    pub fn with_metering(mut self, metering: Arc<crate::metering::Metering>) -> Self {
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
        self.remote = Some(remote);
        self
    }

    /// The Redis source, when snapshots come from Redis.
    pub fn remote(&self) -> Option<&Arc<RemoteSnapshots>> {
        self.remote.as_ref()
    }

    async fn lookup(&self, catalog: &Catalog, tenant: &str, max_staleness_ms: u64) -> Lookup {
        match &self.remote {
            None => catalog.file_lookup(tenant),
            Some(remote) => {
                let max_staleness = (max_staleness_ms > 0)
                    .then(|| std::time::Duration::from_millis(max_staleness_ms));
                remote
                    .lookup(tenant, &catalog.policies, max_staleness)
                    .await
            }
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

    fn record(&self, started: std::time::Instant, result: &Result<pb::CheckResponse, ApiError>) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        match result {
            Ok(response) => metrics.record_decision(
                response.decision == pb::Decision::Allow as i32,
                response.reasons.first().map_or("", |r| r.code.as_str()),
                started.elapsed(),
            ),
            Err(_) => metrics.record_invalid(),
        }
    }

    /// The store it reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn catalog(&self) -> Result<Arc<Catalog>, ApiError> {
        self.store.catalog().ok_or(ApiError::PoliciesNotLoaded)
    }

    /// Decides one request.
    pub async fn check(&self, request: pb::CheckRequest) -> Result<pb::CheckResponse, ApiError> {
        let started = std::time::Instant::now();
        let logged = self
            .decision_log
            .as_deref()
            .map(|log| LoggedRequest::capture(log, &request));
        let result = self.check_unrecorded(request).await;
        self.record(started, &result);
        if let (Some(log), Some(logged), Ok(response)) = (&self.decision_log, logged, &result) {
            logged.submit(log, response, started.elapsed());
        }
        result
    }

    async fn check_unrecorded(
        &self,
        request: pb::CheckRequest,
    ) -> Result<pb::CheckResponse, ApiError> {
        check_entity_count("entities", &request)?;
        let catalog = self.catalog()?;
        if request.consume.is_some() {
            // Boxed: a future is as large as its largest state, and the
            // metering path's (Redis calls, the request, the decisions)
            // would otherwise double the size of every `Check` future,
            // which is moved and allocated on every call.
            return Box::pin(self.check_consume(&catalog, request)).await;
        }
        let tenant = request.tenant.clone();
        let max_staleness_ms = request.max_staleness_ms;
        // Validate before any Redis read: a malformed request costs nothing.
        let prepared = convert::prepare_check(&catalog.policies, request)
            .map_err(ApiError::InvalidArgument)?;
        let lookup = self
            .lookup(&catalog, &tenant, max_staleness_ms)
            .instrument(crate::stage_span!("snapshot_lookup", tenant = %tenant))
            .await;
        let _evaluation = crate::stage_span!("evaluate").entered();
        self.decide(&catalog, &lookup, &prepared)
            .map_err(ApiError::InvalidArgument)
    }

    /// Decides a batch against one catalog; a malformed check fails the call,
    /// naming it (`checks[3].principal.type`).
    pub async fn check_batch(
        &self,
        request: pb::CheckBatchRequest,
    ) -> Result<pb::CheckBatchResponse, ApiError> {
        let started = std::time::Instant::now();
        let logged: Option<Vec<LoggedRequest>> = self.decision_log.as_deref().map(|log| {
            request
                .checks
                .iter()
                .map(|check| LoggedRequest::capture(log, check))
                .collect()
        });
        let result = self.check_batch_unrecorded(request).await;
        if let (Some(log), Some(logged), Ok(batch)) = (&self.decision_log, logged, &result) {
            let latency = started.elapsed();
            for (logged, response) in logged.into_iter().zip(&batch.responses) {
                logged.submit(log, response, latency);
            }
        }
        if let Some(metrics) = &self.metrics {
            match &result {
                Ok(batch) => {
                    // Each decision is counted with its share of the batch's time.
                    let count = u32::try_from(batch.responses.len().max(1)).unwrap_or(u32::MAX);
                    let share = started.elapsed() / count;
                    for response in &batch.responses {
                        metrics.record_decision(
                            response.decision == pb::Decision::Allow as i32,
                            response.reasons.first().map_or("", |r| r.code.as_str()),
                            share,
                        );
                    }
                }
                Err(_) => metrics.record_invalid(),
            }
        }
        result
    }

    async fn check_batch_unrecorded(
        &self,
        request: pb::CheckBatchRequest,
    ) -> Result<pb::CheckBatchResponse, ApiError> {
        let size = request.checks.len();
        if size > self.limits.max_batch {
            return Err(ApiError::BatchTooLarge {
                size,
                limit: self.limits.max_batch,
            });
        }
        for (index, check) in request.checks.iter().enumerate() {
            check_entity_count(&format!("checks[{index}].entities"), check)?;
            if check.consume.is_some() {
                return Err(ApiError::InvalidArgument(RequestError::new(
                    format!("checks[{index}].consume"),
                    "a batch cannot consume; send consuming checks with Check".to_string(),
                )));
            }
        }
        let catalog = self.catalog()?;
        let in_check = |index: usize| {
            move |error: RequestError| {
                ApiError::InvalidArgument(RequestError::new(
                    format!("checks[{index}].{}", error.field),
                    error.problem,
                ))
            }
        };
        let prepared = request
            .checks
            .into_iter()
            .enumerate()
            .map(|(index, check)| {
                let key = (check.tenant.clone(), check.max_staleness_ms);
                convert::prepare_check(&catalog.policies, check)
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
        let responses = prepared
            .iter()
            .enumerate()
            .map(|(index, (key, prepared))| {
                let lookup = lookups
                    .iter()
                    .find(|(seen, _)| *seen == key)
                    .map_or(&Lookup::Unavailable, |(_, lookup)| lookup);
                self.decide(&catalog, lookup, prepared)
                    .map_err(in_check(index))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(pb::CheckBatchResponse { responses })
    }

    fn decide(
        &self,
        catalog: &Catalog,
        lookup: &Lookup,
        prepared: &engine::PreparedRequest,
    ) -> Result<pb::CheckResponse, RequestError> {
        self.decide_counted(catalog, lookup, prepared)
            .map(|(response, _)| response)
    }

    /// [`Self::decide`], with the range of counts the decision holds for
    /// when `prepared` probes a count ([`engine::Decision::count_range`]).
    fn decide_counted(
        &self,
        catalog: &Catalog,
        lookup: &Lookup,
        prepared: &engine::PreparedRequest,
    ) -> Result<(pb::CheckResponse, Option<engine::CountRange>), RequestError> {
        let policy_version = catalog.policies.version.as_str();
        let (snapshot, source, age) = match lookup {
            Lookup::Found {
                snapshot,
                source,
                age,
            } => (snapshot, *source, *age),
            Lookup::Unknown | Lookup::Unavailable => {
                let reason = if matches!(lookup, Lookup::Unknown) {
                    BuiltinReason::UnknownTenant
                } else {
                    BuiltinReason::EntitlementsUnavailable
                };
                let freshness = FreshnessInfo {
                    policy_version,
                    snapshot_version: 0,
                    snapshot_age_ms: 0,
                    source: None,
                };
                return Ok((
                    convert::response(Decision::deny(reason), &freshness, self.ids.next()),
                    None,
                ));
            }
        };
        let decision = engine::decide(&catalog.policies, snapshot, prepared, self.options)?;
        let count_range = decision.count_range;
        let freshness = FreshnessInfo {
            policy_version,
            snapshot_version: snapshot.version,
            snapshot_age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            source: Some(source),
        };
        Ok((
            convert::response(decision, &freshness, self.ids.next()),
            count_range,
        ))
    }
}

/// The gRPC face of a [`DecisionPoint`].
#[derive(Debug, Clone)]
pub struct GrpcService {
    decision_point: Arc<DecisionPoint>,
}

impl GrpcService {
    /// Serves `decision_point` over gRPC.
    pub fn new(decision_point: Arc<DecisionPoint>) -> Self {
        Self { decision_point }
    }
}

#[tonic::async_trait]
impl EntitlementService for GrpcService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let sampled = crate::telemetry::sampled(request.metadata());
        let span = crate::rpc_span!("Check", sampled);
        let (metadata, _, request) = request.into_parts();
        let decision_point = &self.decision_point;
        let answered = span.clone();
        crate::telemetry::in_rpc(span, &metadata, async move {
            let result = decision_point.check(request).await.map_err(Status::from);
            match &result {
                Ok(response) => {
                    let allow = response.decision == pb::Decision::Allow as i32;
                    tracing::debug!(
                        decision = if allow { "ALLOW" } else { "DENY" },
                        decision_id = %response.decision_id,
                        "check answered"
                    );
                }
                Err(status) => {
                    crate::telemetry::record_error(&answered, status);
                    tracing::debug!(code = ?status.code(), message = status.message(), "check refused");
                }
            }
            result.map(Response::new)
        })
        .await
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        let sampled = crate::telemetry::sampled(request.metadata());
        let span = crate::rpc_span!("CheckBatch", sampled);
        let (metadata, _, request) = request.into_parts();
        let decision_point = &self.decision_point;
        let answered = span.clone();
        crate::telemetry::in_rpc(span, &metadata, async move {
            let result = decision_point
                .check_batch(request)
                .await
                .map_err(Status::from);
            match &result {
                Ok(batch) => tracing::debug!(checks = batch.responses.len(), "batch answered"),
                Err(status) => {
                    crate::telemetry::record_error(&answered, status);
                    tracing::debug!(code = ?status.code(), message = status.message(), "batch refused");
                }
            }
            result.map(Response::new)
        })
        .await
    }
    async fn report_usage(
        &self,
        request: Request<pb::ReportUsageRequest>,
    ) -> Result<Response<pb::ReportUsageResponse>, Status> {
        let sampled = crate::telemetry::sampled(request.metadata());
        let span = crate::rpc_span!("ReportUsage", sampled);
        let (metadata, _, request) = request.into_parts();
        let decision_point = &self.decision_point;
        let answered = span.clone();
        crate::telemetry::in_rpc(span, &metadata, async move {
            let result = decision_point
                .report_usage(request)
                .await
                .map_err(Status::from);
            if let Err(status) = &result {
                crate::telemetry::record_error(&answered, status);
            }
            result.map(Response::new)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_are_32_lowercase_hex_digits_of_prefix_and_counter() {
        let ids = DecisionIds {
            prefix: 0x0123_4567_89ab_cdef,
            counter: AtomicU64::new(u64::MAX - 1),
        };
        assert_eq!(ids.next(), "0123456789abcdeffffffffffffffffe");
        assert_eq!(ids.next(), "0123456789abcdefffffffffffffffff");
        assert_eq!(ids.next(), "0123456789abcdef0000000000000000");
        let ids = DecisionIds::new();
        let first = ids.next();
        assert_eq!(first.len(), 32);
        assert!(first
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(ids.next()[..16], first[..16]);
    }
}
