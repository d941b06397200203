//! The route table of Envoy's external authorization (`ext_authz_file`): how
//! a request Envoy asks about (method, path, headers) becomes a check
//! (tenant, principal, action, resource, context, and the meter a route
//! consumes).
//!
//! ```yaml
//! tenant: {header: x-tenant-id}          # or {claim: org_id}, {value: acme}
//! principal: {header: x-user-id, type: User}
//! context:                               # every route's context
//!   country: {header: x-country}
//!   now: {now: true}                     # the current time, a datetime
//! routes:
//!   - method: POST                       # any method when left out
//!     path: /documents/{doc}/export      # {name}: one segment, captured; *: any one; **: the rest
//!     headers: {x-api-version: "2"}      # exact values that must be present
//!     action: export                     # Action::"export" (or `Ns::Action::"export"`)
//!     resource: {type: Document, id: "{doc}"}
//!     consume: {meter: exports, amount: 1, idempotency_header: x-request-id}
//! ```
//!
//! The first route that matches decides; a request no route matches is
//! denied (`unmatched: deny`, the default) or let through (`allow`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a route file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct RoutesError {
    /// The route file.
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// Where a value of the check comes from: written as a one-key map,
/// `{header: x-user-id}`, `{claim: sub}`, `{value: acme}`, `{now: true}`,
/// `{client_address: true}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "SourceDocument")]
pub enum Source {
    /// A request header (lower case).
    Header(String),
    /// A claim of the request's verified JWT.
    Claim(String),
    /// A fixed value (any Cedar JSON value in the context; a string for
    /// tenants and ids).
    Value(serde_json::Value),
    /// The current time, as a `datetime` (context only).
    Now(bool),
    /// The downstream client's address, as an `ip` (context only).
    ClientAddress(bool),
}

/// A source as written: exactly one of its keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceDocument {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    claim: Option<String>,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    now: Option<bool>,
    #[serde(default)]
    client_address: Option<bool>,
}

impl TryFrom<SourceDocument> for Source {
    type Error = String;

    fn try_from(document: SourceDocument) -> Result<Self, String> {
        let mut sources = Vec::new();
        if let Some(name) = document.header {
            sources.push(Self::Header(name));
        }
        if let Some(name) = document.claim {
            sources.push(Self::Claim(name));
        }
        if let Some(value) = document.value {
            sources.push(Self::Value(value));
        }
        if let Some(now) = document.now {
            sources.push(Self::Now(now));
        }
        if let Some(address) = document.client_address {
            sources.push(Self::ClientAddress(address));
        }
        match sources.len() {
            1 => Ok(sources.remove(0)),
            0 => Err("a source needs one of header, claim, value, now, client_address".to_string()),
            _ => Err(
                "a source has exactly one of header, claim, value, now, client_address".to_string(),
            ),
        }
    }
}

/// The principal: its id's source and its entity type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "PrincipalDocument")]
pub struct PrincipalSource {
    /// The id's header (or claim, or fixed value).
    pub id: Source,
    /// The Cedar entity type (default `User`).
    pub kind: String,
}

/// The principal as written: a source and `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalDocument {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    claim: Option<String>,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(rename = "type", default = "default_principal_type")]
    kind: String,
}

impl TryFrom<PrincipalDocument> for PrincipalSource {
    type Error = String;

    fn try_from(document: PrincipalDocument) -> Result<Self, String> {
        Ok(Self {
            id: Source::try_from(SourceDocument {
                header: document.header,
                claim: document.claim,
                value: document.value,
                ..SourceDocument::default()
            })?,
            kind: document.kind,
        })
    }
}

fn default_principal_type() -> String {
    "User".to_string()
}

/// A route's resource: its type and id, `{param}` taking a path parameter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceTemplate {
    /// The Cedar entity type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The id; `{name}` is replaced by the path parameter `name`.
    pub id: String,
}

/// What a route consumes when allowed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeTemplate {
    /// The meter.
    pub meter: String,
    /// Units per request (default 1).
    #[serde(default = "one")]
    pub amount: i64,
    /// The header whose value is the idempotency key (default
    /// `x-request-id`, which Envoy sets on every request).
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: String,
}

fn one() -> i64 {
    1
}

fn default_idempotency_header() -> String {
    "x-request-id".to_string()
}

/// One route as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDocument {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    method: Option<String>,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    action: String,
    resource: ResourceTemplate,
    #[serde(default)]
    consume: Option<ConsumeTemplate>,
    #[serde(default)]
    context: BTreeMap<String, Source>,
}

/// What happens to a request no route matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Denied (403, code `no_route`).
    #[default]
    Deny,
    /// Let through without a decision.
    Allow,
}

/// The HTTP statuses of the answers other than ALLOW.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statuses {
    /// A DENY (default 403).
    #[serde(default = "status_403")]
    pub deny: u16,
    /// A DENY with `cap_exceeded` (default 429, with `Retry-After`).
    #[serde(default = "status_429")]
    pub cap_exceeded: u16,
    /// A DENY with `entitlements_unavailable` or `metering_unavailable`
    /// (default 503).
    #[serde(default = "status_503")]
    pub unavailable: u16,
}

impl Default for Statuses {
    fn default() -> Self {
        Self {
            deny: 403,
            cap_exceeded: 429,
            unavailable: 503,
        }
    }
}

fn status_403() -> u16 {
    403
}
fn status_429() -> u16 {
    429
}
fn status_503() -> u16 {
    503
}

/// What an ALLOW adds to the request sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamHeader {
    /// `x-tollgate-decision-id` (always sent).
    DecisionId,
    /// `x-tollgate-tenant`.
    Tenant,
    /// `x-tollgate-principal` (`Type::"id"`).
    Principal,
    /// `x-tollgate-reason`: the first reason's code.
    Reason,
    /// `x-tollgate-remaining`: units left of the route's meter.
    Remaining,
}

/// The route file as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesDocument {
    tenant: Source,
    principal: PrincipalSource,
    #[serde(default)]
    context: BTreeMap<String, Source>,
    #[serde(default)]
    action_type: Option<String>,
    #[serde(default)]
    upstream_headers: Vec<UpstreamHeader>,
    #[serde(default)]
    unmatched: Unmatched,
    #[serde(default)]
    statuses: Statuses,
    routes: Vec<RouteDocument>,
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`.
    Param(String),
    /// `*`.
    Any,
    /// `**`, last only.
    Rest,
}

/// One route, ready to match.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Its name in logs (the pattern when unnamed).
    pub name: String,
    method: Option<String>,
    segments: Vec<Segment>,
    headers: Vec<(String, String)>,
    /// The action's type and id.
    pub action: (String, String),
    /// The resource.
    pub resource: ResourceTemplate,
    /// The meter consumed when allowed.
    pub consume: Option<ConsumeTemplate>,
    /// The route's own context attributes (beside the table's).
    pub context: BTreeMap<String, Source>,
}

/// The route table.
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    /// The tenant's source.
    pub tenant: Source,
    /// The principal's source and type.
    pub principal: PrincipalSource,
    /// Every route's context attributes.
    pub context: BTreeMap<String, Source>,
    /// What ALLOW adds upstream, beside the decision id.
    pub upstream_headers: Vec<UpstreamHeader>,
    /// What happens to a request no route matches.
    pub unmatched: Unmatched,
    /// The answers' HTTP statuses.
    pub statuses: Statuses,
    /// In order: the first that matches decides.
    pub routes: Vec<Route>,
}

/// A matched route and its path parameters.
#[derive(Debug)]
pub struct Matched<'a> {
    /// The route.
    pub route: &'a Route,
    /// `{name}` → the segment it matched, percent-decoded.
    pub params: Vec<(String, String)>,
}

fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(format!("path `{pattern}` must start with /"));
    };
    let parts: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    let mut segments = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        let segment = match *part {
            "**" if index + 1 == parts.len() => Segment::Rest,
            "**" => return Err(format!("path `{pattern}`: ** may only come last")),
            "*" => Segment::Any,
            _ if part.starts_with('{') && part.ends_with('}') && part.len() > 2 => {
                let name = &part[1..part.len() - 1];
                if !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(format!(
                        "path `{pattern}`: `{name}` is not a parameter name"
                    ));
                }
                Segment::Param(name.to_string())
            }
            _ if part.contains(['{', '}', '*']) => {
                return Err(format!(
                    "path `{pattern}`: `{part}` mixes text with a parameter or wildcard"
                ))
            }
            _ => Segment::Literal((*part).to_string()),
        };
        segments.push(segment);
    }
    Ok(segments)
}

/// The parameters `{name}` that `text` uses.
fn placeholders(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        names.push(&rest[start + 1..start + end]);
        rest = &rest[start + end + 1..];
    }
    names
}

impl Routes {
    /// Reads and checks the route file.
    pub fn from_file(file: &Path) -> Result<Self, RoutesError> {
        let failed = |message: String| RoutesError {
            file: file.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(file)
            .map_err(|error| failed(format!("cannot read: {error}")))?;
        Self::parse(&text).map_err(failed)
    }

    /// Parses a route file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let document: RoutesDocument =
            serde_norway::from_str(text).map_err(|error| error.to_string())?;
        let action_type = document.action_type.unwrap_or_else(|| "Action".to_string());
        check_source("tenant", &document.tenant, false)?;
        check_source("principal", &document.principal.id, false)?;
        for (name, source) in &document.context {
            check_source(&format!("context.{name}"), source, true)?;
        }
        let mut routes = Vec::with_capacity(document.routes.len());
        for (index, route) in document.routes.into_iter().enumerate() {
            let label = route.name.clone().unwrap_or_else(|| route.path.clone());
            let at = |message: String| format!("routes[{index}] ({label}): {message}");
            let segments = parse_pattern(&route.path).map_err(at)?;
            let params: Vec<&str> = segments
                .iter()
                .filter_map(|segment| match segment {
                    Segment::Param(name) => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            for name in placeholders(&route.resource.id) {
                if !params.contains(&name) {
                    return Err(at(format!(
                        "resource id `{}` uses {{{name}}}, which the path does not capture",
                        route.resource.id
                    )));
                }
            }
            if route.resource.kind.is_empty() || route.resource.id.is_empty() {
                return Err(at("resource needs a type and an id".to_string()));
            }
            for (name, source) in &route.context {
                check_source(&format!("context.{name}"), source, true).map_err(at)?;
            }
            if let Some(consume) = &route.consume {
                if consume.meter.is_empty() || consume.amount <= 0 {
                    return Err(at(
                        "consume needs a meter and an amount of at least 1".to_string()
                    ));
                }
            }
            let action = match route.action.rsplit_once("::") {
                Some((kind, id)) => (kind.to_string(), id.trim_matches('"').to_string()),
                None => (action_type.clone(), route.action.clone()),
            };
            routes.push(Route {
                name: label,
                method: route.method.map(|method| method.to_ascii_uppercase()),
                segments,
                headers: route
                    .headers
                    .into_iter()
                    .map(|(name, value)| (name.to_ascii_lowercase(), value))
                    .collect(),
                action,
                resource: route.resource,
                consume: route.consume,
                context: route.context,
            });
        }
        for status in [
            document.statuses.deny,
            document.statuses.cap_exceeded,
            document.statuses.unavailable,
        ] {
            if !(400..=599).contains(&status) {
                return Err(format!("statuses: {status} is not a 4xx or 5xx status"));
            }
        }
        Ok(Self {
            tenant: document.tenant,
            principal: document.principal,
            context: document.context,
            upstream_headers: document.upstream_headers,
            unmatched: document.unmatched,
            statuses: document.statuses,
            routes,
        })
    }

    /// The first route that matches `method`, `path` (its query left out)
    /// and `headers` (lower-case names).
    pub fn find<'a>(
        &'a self,
        method: &str,
        path: &str,
        header: &dyn Fn(&str) -> Option<&'a str>,
    ) -> Option<Matched<'a>> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let parts: Vec<&str> = path
            .strip_prefix('/')
            .unwrap_or(path)
            .split('/')
            .filter(|part| !part.is_empty())
            .collect();
        'routes: for route in &self.routes {
            if route
                .method
                .as_deref()
                .is_some_and(|wanted| !wanted.eq_ignore_ascii_case(method))
            {
                continue;
            }
            if route
                .headers
                .iter()
                .any(|(name, value)| header(name) != Some(value.as_str()))
            {
                continue;
            }
            let mut params = Vec::new();
            let mut index = 0;
            for segment in &route.segments {
                match segment {
                    Segment::Rest => {
                        return Some(Matched { route, params });
                    }
                    _ if index >= parts.len() => continue 'routes,
                    Segment::Literal(text) if text != parts[index] => continue 'routes,
                    Segment::Literal(_) | Segment::Any => {}
                    Segment::Param(name) => {
                        let decoded = percent_encoding::percent_decode_str(parts[index])
                            .decode_utf8()
                            .map_or_else(|_| parts[index].to_string(), |text| text.into_owned());
                        params.push((name.clone(), decoded));
                    }
                }
                index += 1;
            }
            if index == parts.len() {
                return Some(Matched { route, params });
            }
        }
        None
    }
}

impl Matched<'_> {
    /// The resource id, its `{name}`s replaced by the path parameters.
    pub fn resource_id(&self) -> String {
        let mut id = self.route.resource.id.clone();
        for (name, value) in &self.params {
            id = id.replace(&format!("{{{name}}}"), value);
        }
        id
    }
}

fn check_source(field: &str, source: &Source, context: bool) -> Result<(), String> {
    match source {
        Source::Header(name) if name.is_empty() => Err(format!("{field}: empty header name")),
        Source::Header(name) if name.chars().any(|c| c.is_ascii_uppercase()) => Err(format!(
            "{field}: header `{name}` must be lower case (Envoy sends them so)"
        )),
        Source::Claim(name) if name.is_empty() => Err(format!("{field}: empty claim name")),
        Source::Value(value) if !context && !value.is_string() => {
            Err(format!("{field}: a fixed value must be a string"))
        }
        Source::Now(_) | Source::ClientAddress(_) if !context => Err(format!(
            "{field}: `now` and `client_address` are context values"
        )),
        Source::Now(false) | Source::ClientAddress(false) => Err(format!(
            "{field}: write `now: true` / `client_address: true`"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"
tenant: {header: x-tenant-id}
principal: {header: x-user-id, type: User}
context:
  country: {header: x-country}
  now: {now: true}
routes:
  - name: export
    method: post
    path: /documents/{doc}/export
    action: use
    resource: {type: Feature, id: "{doc}"}
  - path: /v2/**
    headers: {x-api-version: "2"}
    action: Acme::Action::"call"
    resource: {type: Api, id: v2}
    consume: {meter: api-calls}
  - path: /files/*/{name}
    action: read
    resource: {type: File, id: "file-{name}"}
"#;

    #[test]
    fn routes_match_in_order_and_capture_parameters() {
        let routes = Routes::parse(TABLE).unwrap();
        let none = |_: &str| None;
        let found = routes
            .find("POST", "/documents/q3%20report/export?x=1", &none)
            .unwrap();
        assert_eq!(found.route.name, "export");
        assert_eq!(found.resource_id(), "q3 report");
        assert_eq!(
            found.route.action,
            ("Action".to_string(), "use".to_string())
        );
        assert!(routes.find("GET", "/documents/a/export", &none).is_none());
        assert!(routes
            .find("POST", "/documents/a/export/more", &none)
            .is_none());
        // Header conditions.
        assert!(routes.find("GET", "/v2/users/7", &none).is_none());
        let v2 = |name: &str| (name == "x-api-version").then_some("2");
        let found = routes.find("GET", "/v2/users/7", &v2).unwrap();
        assert_eq!(
            found.route.action,
            ("Acme::Action".to_string(), "call".to_string())
        );
        assert_eq!(found.route.consume.as_ref().unwrap().amount, 1);
        assert_eq!(
            found.route.consume.as_ref().unwrap().idempotency_header,
            "x-request-id"
        );
        let found = routes.find("GET", "/files/x/report.pdf", &none).unwrap();
        assert_eq!(found.resource_id(), "file-report.pdf");
    }

    #[test]
    fn bad_tables_are_refused_naming_the_problem() {
        for (table, needle) in [
            ("tenant: {header: x}\nroutes: []", "missing field `principal`"),
            (
                "tenant: {header: x}\nprincipal: {header: u}\nroutes:\n  - {path: docs, action: a, resource: {type: T, id: i}}",
                "must start with /",
            ),
            (
                "tenant: {header: x}\nprincipal: {header: u}\nroutes:\n  - {path: \"/d/{a}\", action: a, resource: {type: T, id: \"{b}\"}}",
                "uses {b}, which the path does not capture",
            ),
            (
                "tenant: {header: x}\nprincipal: {header: u}\nroutes:\n  - {path: /**/x, action: a, resource: {type: T, id: i}}",
                "** may only come last",
            ),
            (
                "tenant: {header: X-Tenant}\nprincipal: {header: u}\nroutes: []",
                "must be lower case",
            ),
            (
                "tenant: {now: true}\nprincipal: {header: u}\nroutes: []",
                "context values",
            ),
            (
                "tenant: {header: x}\nprincipal: {header: u}\nstatuses: {deny: 200}\nroutes: []",
                "200 is not a 4xx or 5xx status",
            ),
            (
                "tenant: {header: x}\nprincipal: {header: u}\nroutes: []\nextra: 1",
                "unknown field `extra`",
            ),
        ] {
            let error = Routes::parse(table).unwrap_err();
            assert!(error.contains(needle), "{table}: {error}");
        }
    }
}
