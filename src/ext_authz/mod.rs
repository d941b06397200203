//! Envoy's external authorization (`envoy.service.auth.v3.Authorization`)
//! on its own listener (`ext_authz_listen`): a gateway or a service mesh
//! asks about each HTTP request it proxies, and gets the decision service's
//! answer in Envoy's terms.
//!
//! The request's method, path and headers pick a route of the table
//! ([`routes`]); the route names the action, the resource (path parameters
//! as ids) and the meter to consume; the tenant and the principal come
//! from headers. The check is decided by the [`DecisionService`] like any
//! other, for the caller the listener identified (Envoy itself, by its
//! certificate or its token), and answered:
//!
//! | decision | Envoy's answer |
//! | --- | --- |
//! | ALLOW | `OK`, upstream headers `x-tollgate-decision-id` and those `upstream_headers` names |
//! | DENY | `statuses.deny` (403) with a JSON body of the reasons |
//! | DENY `cap_exceeded` | `statuses.cap_exceeded` (429) with `Retry-After`: seconds to the meter's period end |
//! | DENY `entitlements_unavailable`, `metering_unavailable` | `statuses.unavailable` (503) with `Retry-After: 1` |
//! | no tenant or principal | 401, JSON `{code, message}` |
//! | a request the service refuses | the HTTP status of its gRPC code, JSON `{code, message, field}` |

pub mod routes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::{
    authorization_server::Authorization, check_response::HttpResponse, CheckRequest, CheckResponse,
    DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::api::{self, pb};
use crate::decide::{self, Caller, DecisionService, FrontDoor, Operation};
use crate::reread::{Fingerprint, Fingerprinter, Reread};
use routes::{Matched, Routes, Source, UpstreamHeader};

pub use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

/// The descriptors of `envoy.service.auth.v3` and what it imports, for
/// reflection (`scripts/envoy-descriptor` writes them from the envoy-types
/// crate).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("../../proto/envoy/ext_authz_descriptor.bin");

/// The `Authorization` service over a [`DecisionService`].
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    service: Arc<DecisionService>,
    routes: Arc<RouteTable>,
}

/// The route table in force, and the file it is reread from.
#[derive(Debug)]
pub struct RouteTable {
    file: Option<std::path::PathBuf>,
    table: Reread<Routes>,
}

fn fingerprint(text: &[u8]) -> Fingerprint {
    let mut fingerprinter = Fingerprinter::default();
    fingerprinter.add(text);
    fingerprinter.finish()
}

impl RouteTable {
    /// `routes`, reread from `file` when it changes (none: fixed).
    pub fn new(routes: Routes, file: Option<std::path::PathBuf>) -> Self {
        let read = file
            .as_deref()
            .and_then(|file| std::fs::read(file).ok())
            .unwrap_or_default();
        Self {
            file,
            table: Reread::new(routes, fingerprint(&read)),
        }
    }

    /// Rereads the file: `Ok(true)` when it changed and the new table is in
    /// force, `Ok(false)` when unchanged; an invalid table leaves the one in
    /// force serving.
    pub fn reload(&self) -> Result<bool, routes::RoutesError> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let text = std::fs::read(file).map_err(|error| routes::RoutesError {
            file: file.clone(),
            message: format!("cannot read: {error}"),
        })?;
        let printed = fingerprint(&text);
        let routes = Routes::parse(&String::from_utf8_lossy(&text)).map_err(|message| {
            routes::RoutesError {
                file: file.clone(),
                message,
            }
        })?;
        Ok(self.table.offer(routes, printed))
    }
}

impl ExtAuthz {
    /// Answers Envoy with `service`'s decisions, through `routes`.
    pub fn new(service: Arc<DecisionService>, routes: Arc<RouteTable>) -> Self {
        Self { service, routes }
    }
}

/// What a request brought, as the route table reads it.
struct Inbound<'a> {
    headers: &'a HashMap<String, String>,
    client_address: Option<&'a str>,
    /// The end user's verified token (`authorization: Bearer <JWT>`).
    token: Option<crate::jwt::VerifiedToken>,
}

impl Inbound<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            raw_value: Vec::new(),
        }),
        ..HeaderValueOption::default()
    }
}

fn allowed(headers: Vec<HeaderValueOption>) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            ..rpc::Status::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            ..OkHttpResponse::default()
        })),
        ..CheckResponse::default()
    }
}

fn denied(
    code: tonic::Code,
    http_status: u16,
    body: &serde_json::Value,
    mut headers: Vec<HeaderValueOption>,
) -> CheckResponse {
    headers.push(header("content-type", "application/json"));
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            message: body["message"].as_str().unwrap_or("denied").to_string(),
            ..rpc::Status::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(http_status),
            }),
            headers,
            body: body.to_string(),
        })),
        ..CheckResponse::default()
    }
}

/// A refusal that is no decision: `{code, message, field}`.
fn refused(error: &decide::Error) -> CheckResponse {
    let status = api::status(error);
    let mut body = serde_json::json!({
        "code": crate::http::code_name(status.code()),
        "message": status.message(),
    });
    if let Some(field) = error.field() {
        body["field"] = field.into();
    }
    denied(
        status.code(),
        crate::http::http_status(status.code()).as_u16(),
        &body,
        Vec::new(),
    )
}

fn unauthenticated(message: String) -> CheckResponse {
    let body = serde_json::json!({"code": "UNAUTHENTICATED", "message": message});
    denied(
        tonic::Code::Unauthenticated,
        401,
        &body,
        vec![header("www-authenticate", "Bearer")],
    )
}

/// Now, as a Cedar `datetime`: the epoch offset by the milliseconds since.
fn now() -> pb::Value {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or_default();
    let extension = |function: &str, arg: String, args: Vec<pb::Value>| pb::Value {
        kind: Some(pb::value::Kind::Extension(pb::Extension {
            r#fn: function.to_string(),
            arg,
            args,
        })),
    };
    extension(
        "offset",
        String::new(),
        vec![
            extension("datetime", "1970-01-01".to_string(), Vec::new()),
            extension("duration", format!("{millis}ms"), Vec::new()),
        ],
    )
}

impl ExtAuthz {
    /// A source's text (tenant, principal id): `None` when the request
    /// does not carry it.
    fn text(source: &Source, inbound: &Inbound<'_>) -> Option<String> {
        match source {
            Source::Header(name) => inbound.header(name).map(str::to_string),
            Source::Value(value) => value.as_str().map(str::to_string),
            // The claim the token's issuer names as the tenant's.
            Source::Claim(_) => inbound
                .token
                .as_ref()
                .and_then(|token| token.tenant.clone()),
            Source::Now(_) | Source::ClientAddress(_) => None,
        }
    }

    /// A context attribute's value, `None` when the request lacks it.
    fn context_value(source: &Source, inbound: &Inbound<'_>) -> Result<Option<pb::Value>, String> {
        Ok(match source {
            Source::Header(name) => inbound.header(name).map(|text| pb::Value {
                kind: Some(pb::value::Kind::String(text.to_string())),
            }),
            Source::Value(value) => Some(
                serde_json::from_value::<pb::Value>(value.clone())
                    .map_err(|error| error.to_string())?,
            ),
            Source::Now(_) => Some(now()),
            Source::ClientAddress(_) => inbound.client_address.map(|address| pb::Value {
                kind: Some(pb::value::Kind::Extension(pb::Extension {
                    r#fn: "ip".to_string(),
                    arg: address.to_string(),
                    args: Vec::new(),
                })),
            }),
            Source::Claim(claim) => inbound
                .token
                .as_ref()
                .and_then(|token| token.context.get(claim))
                .map(|value| serde_json::from_value::<pb::Value>(value.clone()))
                .transpose()
                .map_err(|error| error.to_string())?,
        })
    }

    /// The check a matched request asks for, or the answer that refuses it.
    fn check_of(
        routes: &Routes,
        matched: &Matched<'_>,
        inbound: &Inbound<'_>,
    ) -> Result<pb::CheckRequest, Box<CheckResponse>> {
        let tenant = Self::text(&routes.tenant, inbound).ok_or_else(|| {
            unauthenticated(format!(
                "the request names no tenant ({})",
                describe(&routes.tenant)
            ))
        })?;
        let principal = match &routes.principal.id {
            // The token's principal: its issuer's principal claim and type.
            Source::Claim(_) => inbound
                .token
                .as_ref()
                .and_then(|token| token.principal.clone()),
            source => Self::text(source, inbound).map(|id| (routes.principal.kind.clone(), id)),
        }
        .ok_or_else(|| {
            Box::new(unauthenticated(format!(
                "the request names no principal ({})",
                describe(&routes.principal.id)
            )))
        })?;
        let mut context = HashMap::new();
        for (name, source) in routes.context.iter().chain(&matched.route.context) {
            let value = Self::context_value(source, inbound).map_err(|message| {
                Box::new(refused(&decide::Error::InvalidArgument(
                    tollgate_engine::RequestError::new(format!("context.{name}"), message),
                )))
            })?;
            if let Some(value) = value {
                context.insert(name.clone(), value);
            }
        }
        let consume = matched.route.consume.as_ref().map(|consume| pb::Consume {
            meter: consume.meter.clone(),
            amount: consume.amount,
            idempotency_key: inbound
                .header(&consume.idempotency_header)
                .unwrap_or_default()
                .to_string(),
        });
        let mut check = pb::CheckRequest {
            tenant,
            principal: Some(pb::EntityRef {
                r#type: principal.0,
                id: principal.1,
            }),
            action: Some(pb::EntityRef {
                r#type: matched.route.action.0.clone(),
                id: matched.route.action.1.clone(),
            }),
            resource: Some(pb::EntityRef {
                r#type: matched.route.resource.kind.clone(),
                id: matched.resource_id(),
            }),
            context,
            consume,
            ..pb::CheckRequest::default()
        };
        // What the headers say must agree with the verified token, whose
        // claims the policies also see (`context.token`).
        if let Some(token) = &inbound.token {
            crate::api::token::apply(token, &mut check, "")
                .map_err(|error| Box::new(refused(&error)))?;
        }
        Ok(check)
    }

    /// Envoy's answer to a decision.
    fn answer(
        routes: &Routes,
        check: &pb::CheckRequest,
        response: &pb::CheckResponse,
    ) -> CheckResponse {
        let mut headers = vec![header("x-tollgate-decision-id", &response.decision_id)];
        if response.decision == pb::Decision::Allow as i32 {
            for wanted in &routes.upstream_headers {
                match wanted {
                    UpstreamHeader::DecisionId => {}
                    UpstreamHeader::Tenant => {
                        headers.push(header("x-tollgate-tenant", &check.tenant))
                    }
                    UpstreamHeader::Principal => {
                        if let Some(principal) = &check.principal {
                            headers.push(header(
                                "x-tollgate-principal",
                                &format!("{}::{:?}", principal.r#type, principal.id),
                            ));
                        }
                    }
                    UpstreamHeader::Reason => {
                        if let Some(reason) = response.reasons.first() {
                            headers.push(header("x-tollgate-reason", &reason.code));
                        }
                    }
                    UpstreamHeader::Remaining => {
                        if let Some(usage) = &response.usage {
                            headers
                                .push(header("x-tollgate-remaining", &usage.remaining.to_string()));
                        }
                    }
                }
            }
            return allowed(headers);
        }
        let code = response
            .reasons
            .first()
            .map_or("no_permit", |reason| reason.code.as_str());
        let statuses = routes.statuses;
        let (grpc, status) = match code {
            "cap_exceeded" => {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
                    .unwrap_or_default();
                if let Some(usage) = &response.usage {
                    let left = u64::try_from(usage.period_end_unix_ms.saturating_sub(now_ms))
                        .unwrap_or_default();
                    let seconds = left.div_ceil(1000).max(1);
                    headers.push(header("retry-after", &seconds.to_string()));
                }
                (tonic::Code::ResourceExhausted, statuses.cap_exceeded)
            }
            "entitlements_unavailable" | "metering_unavailable" => {
                headers.push(header("retry-after", "1"));
                (tonic::Code::Unavailable, statuses.unavailable)
            }
            _ => (tonic::Code::PermissionDenied, statuses.deny),
        };
        let reasons: Vec<serde_json::Value> = response
            .reasons
            .iter()
            .map(|reason| {
                let mut entry = serde_json::json!({"code": reason.code, "reason": reason.message});
                if !reason.policy_id.is_empty() {
                    entry["policy_id"] = reason.policy_id.clone().into();
                }
                entry
            })
            .collect();
        let mut body = serde_json::json!({
            "decision": "DENY",
            "decision_id": response.decision_id,
            "message": reasons
                .first()
                .and_then(|reason| reason["reason"].as_str())
                .filter(|text| !text.is_empty())
                .unwrap_or(code),
            "reasons": reasons,
        });
        if let Some(usage) = &response.usage {
            body["usage"] = serde_json::to_value(usage).unwrap_or_default();
        }
        denied(grpc, status, &body, headers)
    }
}

fn describe(source: &Source) -> String {
    match source {
        Source::Header(name) => format!("header {name}"),
        Source::Claim(name) => format!("claim {name}"),
        Source::Value(_) => "a fixed value".to_string(),
        Source::Now(_) => "now".to_string(),
        Source::ClientAddress(_) => "the client address".to_string(),
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let exporting = crate::telemetry::exporting();
        if !exporting && !request.metadata().contains_key("traceparent") {
            return self.decide(request).await;
        }
        let metadata = request.metadata().clone();
        let span = if crate::telemetry::sampled(&metadata) {
            tracing::info_span!(
                "Check",
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = "envoy.service.auth.v3.Authorization",
                rpc.method = "Check",
            )
        } else if exporting {
            tracing::Span::none()
        } else {
            tracing::info_span!("Check")
        };
        crate::telemetry::in_rpc(span, &metadata, self.decide(request)).await
    }
}

impl ExtAuthz {
    /// Answers one of Envoy's questions.
    async fn decide(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let service = &self.service;
        let caller = match request.extensions().get::<Caller>() {
            Some(caller) => caller.clone(),
            None => service
                .identify(
                    &api::credentials(request.extensions(), request.metadata()),
                    Operation::Check,
                )
                .map_err(|error| api::status(&error))?,
        }
        .through(FrontDoor::ExtAuthz);
        let metadata = request.metadata().clone();
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let empty = HashMap::new();
        let http = attributes
            .request
            .as_ref()
            .and_then(|request| request.http.as_ref());
        let headers = http.map_or(&empty, |http| &http.headers);
        // The end user's token, verified before anything is read from it.
        let token = match service
            .verified_token(headers.get("authorization").map(String::as_str))
            .await
        {
            Ok(token) => token,
            Err(error) => {
                let message = error.to_string();
                return Ok(Response::new(unauthenticated(message)));
            }
        };
        let inbound = Inbound {
            token,
            headers,
            client_address: attributes
                .source
                .as_ref()
                .and_then(|peer| peer.address.as_ref())
                .and_then(|address| address.address.as_ref())
                .and_then(|address| match address {
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                        socket,
                    ) => Some(socket.address.as_str()),
                    _ => None,
                }),
        };
        let method = http.map_or("", |http| http.method.as_str());
        let path = http.map_or("", |http| http.path.as_str());
        let routes = self.routes.table.load_full();
        let found = routes.find(method, path, &|name| inbound.header(name));
        let Some(matched) = found else {
            return Ok(Response::new(match routes.unmatched {
                routes::Unmatched::Allow => allowed(Vec::new()),
                routes::Unmatched::Deny => denied(
                    tonic::Code::PermissionDenied,
                    routes.statuses.deny,
                    &serde_json::json!({
                        "decision": "DENY",
                        "message": format!("no route matches {method} {path}"),
                        "reasons": [{"code": "no_route"}],
                    }),
                    Vec::new(),
                ),
            }));
        };
        let check = match Self::check_of(&routes, &matched, &inbound) {
            Ok(check) => check,
            Err(answer) => return Ok(Response::new(*answer)),
        };
        let limit = api::deadline(&metadata, service.limits().request_timeout);
        let decided = decide::within(limit, api::check(service, &caller, check.clone())).await;
        Ok(Response::new(match decided {
            Ok(response) => Self::answer(&routes, &check, &response),
            Err(error) => refused(&error),
        }))
    }
}
