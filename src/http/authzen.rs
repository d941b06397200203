//! The OpenID AuthZEN Authorization API 1.0 on the HTTP front door:
//! `POST /access/v1/evaluation`, `POST /access/v1/evaluations`, the
//! resource and action searches (`POST /access/v1/search/resource`,
//! `POST /access/v1/search/action`, answered by a listing of what the
//! subject may do) and `GET /.well-known/authzen-configuration`.
//!
//! An AuthZEN request is converted to a check and decided by the decision
//! service like any other:
//! - `subject` and `resource` `{type, id}` become the principal and the
//!   resource: the type through `authzen_types` (`user=Acme::User`), or
//!   prefixed with `authzen_namespace`, or as written;
//! - `action.name` becomes `<authzen_namespace>::Action::"<name>"`;
//! - `context` becomes the Cedar context (values in Cedar's JSON form);
//! - the `properties` of the subject, the action and the resource (and any
//!   member of theirs other than `type`, `id`, `name` and `properties`)
//!   become the context records `subject`, `action` and `resource`. They
//!   never become entity attributes, so a request cannot override what the
//!   tenant's snapshot says of an entity; policies read them as
//!   `context.resource.ownerID`.
//! - the tenant comes from the first of the `authzen_tenant` sources that
//!   has one: a header, a subject property, the caller's one tenant, or a
//!   fixed tenant.
//!
//! The answer is `{decision, context}`, the context carrying the decision
//! id, the reasons (`code`, `reason`, `policy_id`) and the freshness.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

use super::{json_response, read_json, HttpError, HttpFrontDoor};
use crate::api::{self, json, pb};
use crate::decide::{self, Caller, MAX_REQUEST_VALUES};

/// Where an AuthZEN request's tenant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantFrom {
    /// A request header (`header:<name>`).
    Header(String),
    /// A property of the subject (`subject:<property>`).
    SubjectProperty(String),
    /// The one tenant the authenticated caller may use (`caller`).
    Caller,
    /// The tenant claim of the request's verified JWT (`token`).
    Token,
    /// Always this tenant (`tenant:<id>`).
    Fixed(String),
}

/// How AuthZEN requests map to Cedar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Tried in order; the first that names a tenant wins.
    pub tenant: Vec<TenantFrom>,
    /// Namespace of the action type, and of entity types not in `types`.
    pub namespace: Option<String>,
    /// AuthZEN type → Cedar entity type.
    pub types: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tenant: parse_tenant(crate::config_keys::default_text("authzen_tenant"))
                .unwrap_or_default(),
            namespace: None,
            types: Vec::new(),
        }
    }
}

/// Parses `authzen_tenant`: comma-separated `header:<name>`,
/// `subject:<property>`, `caller`, `token` or `tenant:<id>`.
pub fn parse_tenant(text: &str) -> Result<Vec<TenantFrom>, String> {
    let mut sources = Vec::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let source = match part.split_once(':') {
            Some(("header", name)) if !name.trim().is_empty() => {
                let name = name.trim().to_ascii_lowercase();
                axum::http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a header name"))?;
                TenantFrom::Header(name)
            }
            Some(("subject", property)) if !property.trim().is_empty() => {
                TenantFrom::SubjectProperty(property.trim().to_string())
            }
            Some(("tenant", id)) if !id.trim().is_empty() => {
                TenantFrom::Fixed(id.trim().to_string())
            }
            None if part == "caller" => TenantFrom::Caller,
            None if part == "token" => TenantFrom::Token,
            _ => {
                return Err(format!(
                    "`{part}` is not one of header:<name>, subject:<property>, caller, token, tenant:<id>"
                ))
            }
        };
        sources.push(source);
    }
    if sources.is_empty() {
        return Err("names no tenant source".to_string());
    }
    Ok(sources)
}

/// Parses `authzen_types`: comma-separated `<authzen type>=<Cedar type>`.
pub fn parse_types(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('=') {
            Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => {
                Ok((from.trim().to_string(), to.trim().to_string()))
            }
            _ => Err(format!("`{part}` is not <authzen type>=<Cedar type>")),
        })
        .collect()
}

impl Settings {
    /// The Cedar entity type of an AuthZEN type.
    fn entity_type(&self, authzen_type: &str) -> String {
        if let Some((_, cedar)) = self.types.iter().find(|(from, _)| from == authzen_type) {
            return cedar.clone();
        }
        match &self.namespace {
            Some(namespace) => format!("{namespace}::{authzen_type}"),
            None => authzen_type.to_string(),
        }
    }

    /// The Cedar type of actions.
    fn action_type(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{namespace}::Action"),
            None => "Action".to_string(),
        }
    }
}

/// A subject or a resource.
#[derive(Debug, Clone, Default, Deserialize)]
struct Entity {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    properties: Option<serde_json::Map<String, serde_json::Value>>,
    /// Members beside `type`, `id` and `properties`: read as properties.
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// An action.
#[derive(Debug, Clone, Default, Deserialize)]
struct Action {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    properties: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// One evaluation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Evaluation {
    #[serde(default)]
    subject: Option<Entity>,
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    resource: Option<Entity>,
    #[serde(default)]
    context: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /access/v1/evaluations`: the request-level defaults (the members
/// of an evaluation), the evaluations and the options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Evaluations {
    #[serde(default)]
    subject: Option<Entity>,
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    resource: Option<Entity>,
    #[serde(default)]
    context: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    evaluations: Option<Vec<Evaluation>>,
    #[serde(default)]
    options: Option<Options>,
}

/// What an evaluation leaves out and takes from its batch: the members, the
/// context already converted (once for every item that inherits it).
#[derive(Debug, Default)]
struct Defaults {
    subject: Option<Entity>,
    action: Option<Action>,
    resource: Option<Entity>,
    context: Option<HashMap<String, pb::Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct Options {
    #[serde(default)]
    evaluations_semantic: Option<Semantic>,
    /// Other options are accepted and ignored, as the API allows.
    #[serde(flatten)]
    _other: serde_json::Map<String, serde_json::Value>,
}

/// How a batch of evaluations runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Semantic {
    /// Every evaluation, in one decision on one snapshot.
    #[default]
    ExecuteAll,
    /// In order, up to and including the first denial.
    DenyOnFirstDeny,
    /// In order, up to and including the first permission.
    PermitOnFirstPermit,
}

/// What the tenant sources may read of a request.
struct TenantInputs<'a> {
    headers: &'a HeaderMap,
    caller: &'a Caller,
    token: Option<&'a crate::jwt::VerifiedToken>,
}

fn invalid(field: &str, problem: impl Into<String>) -> decide::Error {
    decide::Error::InvalidArgument(tollgate_engine::RequestError::new(field, problem))
}

/// The properties of an entity or an action: `properties` and any other
/// member, as Cedar values.
fn properties(
    properties: Option<&serde_json::Map<String, serde_json::Value>>,
    rest: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<HashMap<String, pb::Value>, decide::Error> {
    let mut values = HashMap::new();
    for (key, value) in properties.into_iter().flatten().chain(rest) {
        let value = serde_json::from_value::<pb::Value>(value.clone())
            .map_err(|error| invalid(&format!("{field}.{key}"), error.to_string()))?;
        if values.insert(key.clone(), value).is_some() {
            return Err(invalid(
                &format!("{field}.{key}"),
                "is given twice (as a member and in properties)",
            ));
        }
    }
    Ok(values)
}

/// An AuthZEN context as Cedar values (Cedar's JSON form or the proto's).
fn context_values(
    context: serde_json::Map<String, serde_json::Value>,
    prefix: &str,
) -> Result<HashMap<String, pb::Value>, decide::Error> {
    let mut values = HashMap::with_capacity(context.len());
    for (key, value) in context {
        let value = serde_json::from_value::<pb::Value>(value)
            .map_err(|error| invalid(&format!("{prefix}context.{key}"), error.to_string()))?;
        values.insert(key, value);
    }
    Ok(values)
}

fn record(values: HashMap<String, pb::Value>) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Record(pb::ValueRecord { values })),
    }
}

impl Settings {
    /// The check an evaluation asks for, its missing members taken from
    /// `defaults`.
    fn check(
        &self,
        evaluation: Evaluation,
        defaults: &Defaults,
        inputs: &TenantInputs<'_>,
        prefix: &str,
    ) -> Result<pb::CheckRequest, decide::Error> {
        let field = |name: &str| format!("{prefix}{name}");
        let subject = evaluation
            .subject
            .or_else(|| defaults.subject.clone())
            .ok_or_else(|| invalid(&field("subject"), "is required"))?;
        let action = evaluation
            .action
            .or_else(|| defaults.action.clone())
            .ok_or_else(|| invalid(&field("action"), "is required"))?;
        let resource = evaluation
            .resource
            .or_else(|| defaults.resource.clone())
            .ok_or_else(|| invalid(&field("resource"), "is required"))?;
        let entity = |entity: &Entity, name: &str| -> Result<pb::EntityRef, decide::Error> {
            let kind = entity
                .kind
                .as_deref()
                .filter(|kind| !kind.is_empty())
                .ok_or_else(|| invalid(&field(&format!("{name}.type")), "is required"))?;
            let id = entity
                .id
                .clone()
                .ok_or_else(|| invalid(&field(&format!("{name}.id")), "is required"))?;
            Ok(pb::EntityRef {
                r#type: self.entity_type(kind),
                id,
            })
        };
        let principal = entity(&subject, "subject")?;
        let resource_ref = entity(&resource, "resource")?;
        let name = action
            .name
            .clone()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| invalid(&field("action.name"), "is required"))?;
        let mut values = match evaluation.context {
            Some(context) => context_values(context, prefix)?,
            None => defaults.context.clone().unwrap_or_default(),
        };
        let mut subject_properties = properties(
            subject.properties.as_ref(),
            &subject.rest,
            &field("subject"),
        )?;
        let (tenant, from_property) =
            self.tenant(inputs, &subject_properties, &field("subject"))?;
        // The property that named the tenant routed the request; it is not
        // the subject's.
        if let Some(property) = from_property {
            subject_properties.remove(property);
        }
        for (key, properties) in [
            ("subject", subject_properties),
            (
                "action",
                properties(action.properties.as_ref(), &action.rest, &field("action"))?,
            ),
            (
                "resource",
                properties(
                    resource.properties.as_ref(),
                    &resource.rest,
                    &field("resource"),
                )?,
            ),
        ] {
            if properties.is_empty() {
                continue;
            }
            if values.contains_key(key) {
                return Err(invalid(
                    &field(&format!("context.{key}")),
                    format!("is where the {key}'s properties go; the context may not set it"),
                ));
            }
            values.insert(key.to_string(), record(properties));
        }
        let mut check = pb::CheckRequest {
            tenant,
            principal: Some(principal),
            action: Some(pb::EntityRef {
                r#type: self.action_type(),
                id: name,
            }),
            resource: Some(resource_ref),
            context: values,
            ..pb::CheckRequest::default()
        };
        if let Some(token) = inputs.token {
            api::token::apply(token, &mut check, prefix)
                .map_err(|error| rename_principal(error, prefix))?;
        }
        Ok(check)
    }

    /// The tenant of a request: the first source that names one, and the
    /// subject's property it came from, if it did.
    fn tenant<'s>(
        &'s self,
        inputs: &TenantInputs<'_>,
        subject: &HashMap<String, pb::Value>,
        subject_field: &str,
    ) -> Result<(String, Option<&'s str>), decide::Error> {
        for source in &self.tenant {
            let found = match source {
                TenantFrom::Header(name) => inputs
                    .headers
                    .get(name.as_str())
                    .and_then(|value| value.to_str().ok())
                    .map(str::trim)
                    .filter(|value| !value.is_empty())
                    .map(str::to_string),
                TenantFrom::SubjectProperty(property) => match subject.get(property) {
                    Some(pb::Value {
                        kind: Some(pb::value::Kind::String(tenant)),
                    }) => Some(tenant.clone()),
                    Some(_) => {
                        return Err(invalid(
                            &format!("{subject_field}.properties.{property}"),
                            "names the tenant and must be a string",
                        ))
                    }
                    None => None,
                },
                TenantFrom::Caller => inputs.caller.only_tenant().map(str::to_string),
                TenantFrom::Token => inputs.token.and_then(|token| token.tenant.clone()),
                TenantFrom::Fixed(tenant) => Some(tenant.clone()),
            };
            if let Some(tenant) = found {
                let property = match source {
                    TenantFrom::SubjectProperty(property) => Some(property.as_str()),
                    _ => None,
                };
                return Ok((tenant, property));
            }
        }
        Err(invalid(
            "tenant",
            format!(
                "the request names no tenant (authzen_tenant: {})",
                describe(&self.tenant)
            ),
        ))
    }
}

/// A token error names the AuthZEN subject, not the Cedar principal.
fn rename_principal(error: decide::Error, prefix: &str) -> decide::Error {
    match error {
        decide::Error::InvalidArgument(mut invalid) => {
            if let Some(rest) = invalid.field.strip_prefix(&format!("{prefix}principal")) {
                invalid.field = format!("{prefix}subject{rest}");
            }
            decide::Error::InvalidArgument(invalid)
        }
        other => other,
    }
}

fn describe(sources: &[TenantFrom]) -> String {
    sources
        .iter()
        .map(|source| match source {
            TenantFrom::Header(name) => format!("header:{name}"),
            TenantFrom::SubjectProperty(property) => format!("subject:{property}"),
            TenantFrom::Caller => "caller".to_string(),
            TenantFrom::Token => "token".to_string(),
            TenantFrom::Fixed(tenant) => format!("tenant:{tenant}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An AuthZEN decision: `{decision, context}`.
fn decision(response: &pb::CheckResponse) -> serde_json::Value {
    let reasons: Vec<serde_json::Value> = response
        .reasons
        .iter()
        .map(|reason| {
            let mut entry = serde_json::Map::new();
            entry.insert("code".into(), reason.code.clone().into());
            entry.insert("reason".into(), reason.message.clone().into());
            if !reason.policy_id.is_empty() {
                entry.insert("policy_id".into(), reason.policy_id.clone().into());
            }
            serde_json::Value::Object(entry)
        })
        .collect();
    let mut context = serde_json::Map::new();
    context.insert("decision_id".into(), response.decision_id.clone().into());
    context.insert("reasons".into(), reasons.into());
    if let Some(freshness) = &response.freshness {
        context.insert(
            "freshness".into(),
            serde_json::to_value(freshness).unwrap_or_default(),
        );
    }
    serde_json::json!({
        "decision": response.decision == pb::Decision::Allow as i32,
        "context": context,
    })
}

/// Refuses a body whose properties and contexts hold more values than a
/// call may carry, before it is decoded.
fn scan(bytes: &[u8], limits: decide::Limits) -> Result<(), decide::Error> {
    let (values, evaluations) = json::count_authzen(bytes);
    if evaluations > limits.max_batch {
        return Err(decide::Error::BatchTooLarge {
            items: "evaluations",
            size: evaluations,
            limit: limits.max_batch,
        });
    }
    if values > MAX_REQUEST_VALUES {
        return Err(decide::Error::TooManyValues {
            field: "request".to_string(),
            size: values,
            limit: MAX_REQUEST_VALUES,
        });
    }
    Ok(())
}

/// `POST /access/v1/evaluation`.
pub async fn evaluation(
    State(front): State<Arc<HttpFrontDoor>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    match evaluate_one(&front, &caller, &parts.headers, body).await {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(error) => error.into_response(),
    }
}

/// A request's body, scanned against the limits and decoded as `what`,
/// and its end user's verified token.
async fn read<T: serde::de::DeserializeOwned>(
    front: &HttpFrontDoor,
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<(T, Option<crate::jwt::VerifiedToken>), HttpError> {
    let bytes = read_json(front, headers, body).await?;
    scan(&bytes, front.service().limits())?;
    let request: T = json::decode(&bytes, what)?;
    let token = front
        .service()
        .verified_token(super::authorization(headers))
        .await?;
    Ok((request, token))
}

/// One evaluation, decided.
async fn decide_one(
    front: &HttpFrontDoor,
    caller: &Caller,
    inputs: &TenantInputs<'_>,
    evaluation: Evaluation,
) -> Result<serde_json::Value, HttpError> {
    let check = front
        .authzen()
        .check(evaluation, &Defaults::default(), inputs, "")?;
    let response = front
        .within(api::check(front.service(), caller, check))
        .await
        .map_err(|error| authzen_names(error, None))?;
    Ok(decision(&response))
}

async fn evaluate_one(
    front: &HttpFrontDoor,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Value, HttpError> {
    let (evaluation, token) =
        read::<Evaluation>(front, headers, body, "AuthZEN evaluation request").await?;
    let inputs = TenantInputs {
        headers,
        caller,
        token: token.as_ref(),
    };
    decide_one(front, caller, &inputs, evaluation).await
}

/// `POST /access/v1/evaluations`.
pub async fn evaluations(
    State(front): State<Arc<HttpFrontDoor>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    match evaluate_many(&front, &caller, &parts.headers, body).await {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(error) => error.into_response(),
    }
}

async fn evaluate_many(
    front: &HttpFrontDoor,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Value, HttpError> {
    let (request, token) =
        read::<Evaluations>(front, headers, body, "AuthZEN evaluations request").await?;
    let inputs = TenantInputs {
        headers,
        caller,
        token: token.as_ref(),
    };
    let settings = front.authzen();
    let items = request.evaluations.unwrap_or_default();
    // Without evaluations, the request is one evaluation of its own.
    if items.is_empty() {
        let single = Evaluation {
            subject: request.subject,
            action: request.action,
            resource: request.resource,
            context: request.context,
        };
        return decide_one(front, caller, &inputs, single).await;
    }
    let defaults = Defaults {
        subject: request.subject,
        action: request.action,
        resource: request.resource,
        context: request
            .context
            .map(|context| context_values(context, ""))
            .transpose()?,
    };
    let checks = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            settings.check(item, &defaults, &inputs, &format!("evaluations[{index}]."))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let semantic = request
        .options
        .and_then(|options| options.evaluations_semantic)
        .unwrap_or_default();
    let decisions: Vec<serde_json::Value> = match semantic {
        Semantic::ExecuteAll => {
            let batch = front
                .within(api::check_batch(
                    front.service(),
                    caller,
                    pb::CheckBatchRequest { checks },
                ))
                .await
                .map_err(|error| authzen_names(error, None))?;
            batch.responses.iter().map(decision).collect()
        }
        Semantic::DenyOnFirstDeny | Semantic::PermitOnFirstPermit => {
            let stop_on = semantic == Semantic::PermitOnFirstPermit;
            let mut decisions = Vec::new();
            for (index, check) in checks.into_iter().enumerate() {
                let response = front
                    .within(api::check(front.service(), caller, check))
                    .await
                    .map_err(|error| authzen_names(error, Some(index)))?;
                let allowed = response.decision == pb::Decision::Allow as i32;
                decisions.push(decision(&response));
                if allowed == stop_on {
                    break;
                }
            }
            decisions
        }
    };
    Ok(serde_json::json!({ "evaluations": decisions }))
}

/// `POST /access/v1/search/resource` and `POST /access/v1/search/action`:
/// a subject, and an action and a resource type, or a resource.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    #[serde(default)]
    subject: Option<Entity>,
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    resource: Option<Entity>,
    #[serde(default)]
    context: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    page: Option<Page>,
}

/// A search's page request.
#[derive(Debug, Default, Deserialize)]
struct Page {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    /// Other members are accepted and ignored, as the API allows.
    #[serde(flatten)]
    _other: serde_json::Map<String, serde_json::Value>,
}

/// What a search asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Searched {
    /// The resources of a type the subject may take the action on.
    Resources,
    /// The actions the subject may take on a resource.
    Actions,
}

/// `POST /access/v1/search/resource`: the resources of `resource.type` the
/// subject may take `action` on, as a listing of that action and type
/// filtered to ALLOW.
pub async fn search_resource(
    State(front): State<Arc<HttpFrontDoor>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    search(front, caller, request, Searched::Resources).await
}

/// `POST /access/v1/search/action`: the actions the subject may take on
/// the resource, as a listing of the resource's type filtered to ALLOW and
/// to that resource.
pub async fn search_action(
    State(front): State<Arc<HttpFrontDoor>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    search(front, caller, request, Searched::Actions).await
}

async fn search(
    front: Arc<HttpFrontDoor>,
    caller: Caller,
    request: Request,
    searched: Searched,
) -> Response {
    let (parts, body) = request.into_parts();
    match search_listing(&front, &caller, &parts.headers, body, searched).await {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(error) => error.into_response(),
    }
}

async fn search_listing(
    front: &HttpFrontDoor,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
    searched: Searched,
) -> Result<serde_json::Value, HttpError> {
    let (search, token) = read::<Search>(front, headers, body, "AuthZEN search request").await?;
    let inputs = TenantInputs {
        headers,
        caller,
        token: token.as_ref(),
    };
    let resource = search
        .resource
        .ok_or_else(|| invalid("resource", "is required"))?;
    let resource_type = resource
        .kind
        .clone()
        .filter(|kind| !kind.is_empty())
        .ok_or_else(|| invalid("resource.type", "is required"))?;
    let resource_id = match searched {
        Searched::Resources => None,
        Searched::Actions => Some(
            resource
                .id
                .clone()
                .ok_or_else(|| invalid("resource.id", "is required"))?,
        ),
    };
    let action = match searched {
        Searched::Resources => Some(
            search
                .action
                .ok_or_else(|| invalid("action", "is required"))?,
        ),
        // The listing covers every action; the placeholder only carries
        // the request through the mapping.
        Searched::Actions => Some(Action {
            name: Some("*".to_string()),
            ..Action::default()
        }),
    };
    // The mapping of an evaluation (types, tenant, context and properties),
    // with a placeholder id where the search has none.
    let check = front.authzen().check(
        Evaluation {
            subject: search.subject,
            action,
            resource: Some(Entity {
                id: Some(resource_id.clone().unwrap_or_else(|| "*".to_string())),
                ..resource
            }),
            context: search.context,
        },
        &Defaults::default(),
        &inputs,
        "",
    )?;
    let page = search.page.unwrap_or_default();
    let listing = pb::ListEntitlementsRequest {
        tenant: check.tenant,
        principal: check.principal,
        actions: match searched {
            Searched::Resources => check.action.into_iter().collect(),
            Searched::Actions => Vec::new(),
        },
        resource_types: check
            .resource
            .map(|resource| resource.r#type)
            .into_iter()
            .collect(),
        context: check.context,
        decision: pb::Decision::Allow as i32,
        page_size: page.limit.unwrap_or(0),
        page_token: page.token.unwrap_or_default(),
        ..Default::default()
    };
    let listed = decide::within(
        front.service().limits().request_timeout,
        front
            .service()
            .list_entitlements(caller, api::convert::listing(listing)),
    )
    .await
    .map_err(|error| authzen_names(error, None))?;
    let results: Vec<serde_json::Value> = listed
        .items
        .iter()
        .filter(|item| {
            resource_id
                .as_ref()
                .is_none_or(|id| item.resource.id == *id)
        })
        .map(|item| match searched {
            Searched::Resources => {
                serde_json::json!({"type": resource_type, "id": item.resource.id})
            }
            Searched::Actions => serde_json::json!({"name": item.action.id}),
        })
        .collect();
    let freshness = &listed.freshness;
    Ok(serde_json::json!({
        "results": results,
        "page": {"next_token": listed.next_page_token},
        "context": {
            "policy_version": freshness.policy_version,
            "snapshot_version": freshness.snapshot_version,
        },
    }))
}

/// An error as AuthZEN names things: `evaluations[i]` for the check it
/// became, `subject` for the principal.
fn authzen_names(error: decide::Error, index: Option<usize>) -> HttpError {
    let mut answer = HttpError::of(&error);
    let Some(field) = answer.field.take() else {
        return answer;
    };
    let rename = |text: &str| -> String {
        let (prefix, rest) = match text.strip_prefix("checks[") {
            Some(rest) => match rest.split_once("].") {
                Some((number, rest)) => (format!("evaluations[{number}]."), rest.to_string()),
                None => (String::new(), text.to_string()),
            },
            None => match index {
                Some(index) => (format!("evaluations[{index}]."), text.to_string()),
                None => (String::new(), text.to_string()),
            },
        };
        let rest = match rest.strip_prefix("principal") {
            Some(after) => format!("subject{after}"),
            None => rest,
        };
        format!("{prefix}{rest}")
    };
    if let Some(after) = answer.message.strip_prefix(&field) {
        answer.message = format!("{}{after}", rename(&field));
    }
    answer.field = Some(rename(&field));
    answer
}

/// `GET /.well-known/authzen-configuration`: where the endpoints are, on the
/// host and scheme the request came in on.
pub async fn configuration(
    State(front): State<Arc<HttpFrontDoor>>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| {
            request
                .uri()
                .authority()
                .map(|authority| authority.as_str())
        })
        .unwrap_or("localhost");
    let scheme = if front.tls() { "https" } else { "http" };
    let base = format!("{scheme}://{host}");
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
            "search_resource_endpoint": format!("{base}/access/v1/search/resource"),
            "search_action_endpoint": format!("{base}/access/v1/search/action"),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_sources_parse_in_order() {
        assert_eq!(
            parse_tenant("header:X-Tenant, subject:tenant, caller, tenant:acme").unwrap(),
            vec![
                TenantFrom::Header("x-tenant".to_string()),
                TenantFrom::SubjectProperty("tenant".to_string()),
                TenantFrom::Caller,
                TenantFrom::Fixed("acme".to_string()),
            ]
        );
        for bad in ["", "header:", "claim", "tenant:", "header:bad name"] {
            assert!(parse_tenant(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_types("user=Acme::User, todo=Acme::Todo").unwrap(),
            vec![
                ("user".to_string(), "Acme::User".to_string()),
                ("todo".to_string(), "Acme::Todo".to_string())
            ]
        );
        assert!(parse_types("user").is_err());
    }

    #[test]
    fn types_map_through_the_table_then_the_namespace() {
        let settings = Settings {
            tenant: vec![TenantFrom::Fixed("acme".to_string())],
            namespace: Some("Acme".to_string()),
            types: vec![("user".to_string(), "Identity::User".to_string())],
        };
        assert_eq!(settings.entity_type("user"), "Identity::User");
        assert_eq!(settings.entity_type("Document"), "Acme::Document");
        assert_eq!(settings.action_type(), "Acme::Action");
        let bare = Settings {
            namespace: None,
            ..settings
        };
        assert_eq!(bare.entity_type("Document"), "Document");
        assert_eq!(bare.action_type(), "Action");
    }
}
