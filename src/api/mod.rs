//! The gRPC front door: protobuf ⇄ decision-service conversion, the
//! `EntitlementService` implementation and the one error → status table.
//! Nothing here decides: every call goes to the [`DecisionService`].

pub mod bounds;
pub mod client;
pub mod codec;
pub mod convert;
#[cfg(feature = "bench-floor")]
pub mod floor;
pub mod json;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::decide::{self, DecisionService};

/// Generated protobuf types and gRPC stubs of `tollgate.v1`.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::allow_attributes_without_reason,
    reason = "generated code is not held to the project's lints"
)]
pub mod pb {
    tonic::include_proto!("tollgate.v1");
    include!(concat!(env!("OUT_DIR"), "/tollgate.v1.serde.rs"));

    /// Encoded file descriptor set of `tollgate.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tollgate_descriptor");
}

pub use pb::entitlement_service_server::{EntitlementService, EntitlementServiceServer};

/// The one table from the decision service's errors to gRPC status codes.
pub fn status(error: &decide::Error) -> Status {
    use decide::Error;
    let message = error.to_string();
    match error {
        Error::Refused(
            decide::Refusal::Unauthenticated(_) | decide::Refusal::CredentialsRequired { .. },
        )
        | Error::Token(_) => Status::unauthenticated(message),
        Error::Refused(decide::Refusal::PermissionDenied { .. }) => {
            Status::permission_denied(message)
        }
        Error::InvalidArgument(_) => Status::invalid_argument(message),
        Error::BatchTooLarge { .. }
        | Error::TooManyEntities { .. }
        | Error::TooManyValues { .. }
        | Error::Overloaded { .. }
        | Error::RequestBytesOverBudget { .. }
        | Error::TooManyExplained { .. } => Status::resource_exhausted(message),
        Error::PoliciesNotLoaded | Error::Unavailable(_) => Status::unavailable(message),
        Error::MeteringNotConfigured => Status::failed_precondition(message),
        Error::UnknownTenant(_) => Status::not_found(message),
        Error::DeadlineExceeded { .. } => Status::deadline_exceeded(message),
    }
}

/// What a gRPC request's connection and `authorization` header say of
/// its caller.
pub fn credentials<'a>(
    extensions: &'a tonic::Extensions,
    metadata: &'a tonic::metadata::MetadataMap,
) -> decide::Credentials<'a> {
    credentials_of(
        extensions.get::<crate::listen::Peer>(),
        metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok()),
    )
}

/// A gRPC request's `authorization` header.
fn authorization(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
}

/// The credentials of a connection's `peer` and an `authorization` header.
pub fn credentials_of<'a>(
    peer: Option<&'a crate::listen::Peer>,
    authorization: Option<&'a str>,
) -> decide::Credentials<'a> {
    decide::Credentials {
        local: peer.is_some_and(|peer| peer.local),
        certificate: peer.and_then(|peer| peer.certificate.as_deref()),
        // A bearer value shaped as a JWT is an end user's token, never a
        // caller's (the decision service verifies it).
        bearer: authorization
            .and_then(crate::callers::bearer_token)
            .filter(|token| !crate::jwt::looks_like_jwt(token)),
    }
}

/// The caller of a request: the one its server identified before reading
/// the body ([`bounds::Bounded`]), or identified now.
fn caller_of(
    service: &DecisionService,
    extensions: &tonic::Extensions,
    metadata: &tonic::metadata::MetadataMap,
    operation: decide::Operation,
) -> Result<decide::Caller, decide::Error> {
    match extensions.get::<decide::Caller>() {
        Some(caller) => Ok(caller.clone()),
        None => service.identify(&credentials(extensions, metadata), operation),
    }
}

/// How long a call may take: the server's `request_timeout_ms`, or the
/// caller's `grpc-timeout` when shorter. The caller's is shortened by a
/// tenth (at least 1 ms, at most 50 ms), so that the `DEADLINE_EXCEEDED`
/// answer reaches the caller before its own timer cancels the call.
pub fn deadline(metadata: &tonic::metadata::MetadataMap, server: Duration) -> Duration {
    metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(grpc_timeout)
        .map_or(server, |caller| {
            let margin = (caller / 10).clamp(Duration::from_millis(1), Duration::from_millis(50));
            server.min(caller.saturating_sub(margin))
        })
}

/// A `grpc-timeout` header's duration: at most 8 digits and a unit (`H`,
/// `M`, `S`, `m`, `u`, `n`).
fn grpc_timeout(text: &str) -> Option<Duration> {
    let split = text.len().checked_sub(1)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Decides a `CheckRequest` with `service`: conversion in, decision,
/// conversion out (the gRPC handler and the in-process `check` command).
pub async fn check(
    service: &DecisionService,
    caller: &decide::Caller,
    request: pb::CheckRequest,
) -> Result<pb::CheckResponse, decide::Error> {
    service
        .check(caller, convert::check(request))
        .await
        .map(convert::response)
}

/// Decides a `CheckRequest` with the end user's token of `authorization`
/// (when `service` verifies tokens) applied first ([`token::apply`]).
pub async fn check_with_token(
    service: &DecisionService,
    caller: &decide::Caller,
    authorization: Option<&str>,
    mut request: pb::CheckRequest,
) -> Result<pb::CheckResponse, decide::Error> {
    if let Some(verified) = service.verified_token(authorization).await? {
        token::apply(&verified, &mut request, "")?;
    }
    check(service, caller, request).await
}

/// Decides a `CheckBatchRequest` with the end user's token applied to each
/// of its checks.
pub async fn check_batch_with_token(
    service: &DecisionService,
    caller: &decide::Caller,
    authorization: Option<&str>,
    mut request: pb::CheckBatchRequest,
) -> Result<pb::CheckBatchResponse, decide::Error> {
    if let Some(verified) = service.verified_token(authorization).await? {
        for (index, check) in request.checks.iter_mut().enumerate() {
            token::apply(&verified, check, &format!("checks[{index}]."))?;
        }
    }
    check_batch(service, caller, request).await
}

/// Decides a `CheckBatchRequest` with `service`.
pub async fn check_batch(
    service: &DecisionService,
    caller: &decide::Caller,
    request: pb::CheckBatchRequest,
) -> Result<pb::CheckBatchResponse, decide::Error> {
    let checks = request.checks.into_iter().map(convert::check).collect();
    let answers = service.check_batch(caller, checks).await?;
    Ok(pb::CheckBatchResponse {
        responses: answers.into_iter().map(convert::response).collect(),
    })
}

/// Applies a `ReportUsageRequest` with `service`.
pub async fn report_usage(
    service: &DecisionService,
    caller: &decide::Caller,
    request: pb::ReportUsageRequest,
) -> Result<pb::ReportUsageResponse, decide::Error> {
    let totals = service
        .report_usage(
            caller,
            request.tenant,
            convert::usage_reports(request.reports),
        )
        .await?;
    Ok(pb::ReportUsageResponse {
        totals: totals.iter().map(convert::usage).collect(),
    })
}

/// Lists what a principal may do with `service`, the end user's token of
/// `authorization` (when `service` verifies tokens) applied first as to a
/// check: its tenant and principal are the listing's, its claims in the
/// context record `token`.
pub async fn list_entitlements_with_token(
    service: &DecisionService,
    caller: &decide::Caller,
    authorization: Option<&str>,
    mut request: pb::ListEntitlementsRequest,
) -> Result<pb::ListEntitlementsResponse, decide::Error> {
    if let Some(verified) = service.verified_token(authorization).await? {
        let mut as_check = pb::CheckRequest {
            tenant: std::mem::take(&mut request.tenant),
            principal: request.principal.take(),
            context: std::mem::take(&mut request.context),
            ..Default::default()
        };
        token::apply(&verified, &mut as_check, "")?;
        request.tenant = as_check.tenant;
        request.principal = as_check.principal;
        request.context = as_check.context;
    }
    service
        .list_entitlements(caller, convert::listing(request))
        .await
        .map(convert::listed)
}

/// The gRPC face of a [`DecisionService`].
#[derive(Debug, Clone)]
pub struct GrpcService {
    service: Arc<DecisionService>,
}

impl GrpcService {
    /// Serves `service` over gRPC.
    pub fn new(service: Arc<DecisionService>) -> Self {
        Self { service }
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
        let (metadata, extensions, request) = request.into_parts();
        let service = &self.service;
        let limit = deadline(&metadata, service.limits().request_timeout);
        let operation = if request.consume.is_some() {
            decide::Operation::Consume
        } else {
            decide::Operation::Check
        };
        let caller = caller_of(service, &extensions, &metadata, operation);
        let answered = span.clone();
        let authorization = authorization(&metadata);
        crate::telemetry::in_rpc(span, &metadata, async move {
            let decided = |caller| check_with_token(service, caller, authorization, request);
            let result = match caller {
                Err(refused) => Err(refused),
                Ok(caller) if service.may_wait() || service.jwt().is_some() => {
                    decide::within(limit, decided(&caller)).await
                }
                Ok(caller) => decided(&caller).await,
            }
            .map_err(|error| status(&error));
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
        let (metadata, extensions, request) = request.into_parts();
        let service = &self.service;
        let limit = deadline(&metadata, service.limits().request_timeout);
        let caller = caller_of(
            service,
            &extensions,
            &metadata,
            decide::Operation::CheckBatch,
        );
        let answered = span.clone();
        let authorization = authorization(&metadata);
        crate::telemetry::in_rpc(span, &metadata, async move {
            let decided = |caller| check_batch_with_token(service, caller, authorization, request);
            let result = match caller {
                Err(refused) => Err(refused),
                Ok(caller) if service.may_wait() || service.jwt().is_some() => {
                    decide::within(limit, decided(&caller)).await
                }
                Ok(caller) => decided(&caller).await,
            }
            .map_err(|error| status(&error));
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
    async fn list_entitlements(
        &self,
        request: Request<pb::ListEntitlementsRequest>,
    ) -> Result<Response<pb::ListEntitlementsResponse>, Status> {
        let sampled = crate::telemetry::sampled(request.metadata());
        let span = crate::rpc_span!("ListEntitlements", sampled);
        let (metadata, extensions, request) = request.into_parts();
        let service = &self.service;
        let limit = deadline(&metadata, service.limits().request_timeout);
        let caller = caller_of(
            service,
            &extensions,
            &metadata,
            decide::Operation::ListEntitlements,
        );
        let answered = span.clone();
        let authorization = authorization(&metadata);
        crate::telemetry::in_rpc(span, &metadata, async move {
            let result = match caller {
                Err(refused) => Err(refused),
                Ok(caller) => {
                    decide::within(
                        limit,
                        list_entitlements_with_token(service, &caller, authorization, request),
                    )
                    .await
                }
            }
            .map_err(|error| status(&error));
            match &result {
                Ok(listed) => tracing::debug!(items = listed.items.len(), "listing answered"),
                Err(status) => {
                    crate::telemetry::record_error(&answered, status);
                    tracing::debug!(code = ?status.code(), message = status.message(), "listing refused");
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
        let (metadata, extensions, request) = request.into_parts();
        let service = &self.service;
        let limit = deadline(&metadata, service.limits().request_timeout);
        let caller = caller_of(
            service,
            &extensions,
            &metadata,
            decide::Operation::ReportUsage,
        );
        let answered = span.clone();
        crate::telemetry::in_rpc(span, &metadata, async move {
            let result = match caller {
                Err(refused) => Err(refused),
                Ok(caller) => decide::within(limit, report_usage(service, &caller, request)).await,
            }
            .map_err(|error| status(&error));
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
    fn the_callers_deadline_wins_when_shorter() {
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout("15u"), Some(Duration::from_micros(15)));
        for bad in ["", "m", "123456789m", "12x", "-1m", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
        let server = Duration::from_secs(30);
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(deadline(&metadata, server), server);
        metadata.insert("grpc-timeout", "200m".parse().unwrap());
        assert_eq!(deadline(&metadata, server), Duration::from_millis(180));
        metadata.insert("grpc-timeout", "5S".parse().unwrap());
        assert_eq!(deadline(&metadata, server), Duration::from_millis(4950));
        metadata.insert("grpc-timeout", "5m".parse().unwrap());
        assert_eq!(deadline(&metadata, server), Duration::from_millis(4));
        metadata.insert("grpc-timeout", "1H".parse().unwrap());
        assert_eq!(deadline(&metadata, server), server);
        metadata.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(deadline(&metadata, server), server);
    }
}
