//! What the decision log keeps of a request and its answer.

use crate::decision_log::DecisionLog;

use super::{Answer, Caller, Check, EntityRef, Reason, Values};

/// What the decision log keeps of a request, taken before the request is
/// converted (only when the log is on).
pub(super) struct LoggedRequest {
    caller: Caller,
    tenant: String,
    principal: Option<EntityRef>,
    action: Option<EntityRef>,
    resource: Option<EntityRef>,
    context: Option<serde_json::Value>,
    /// The trace the request belongs to (its RPC span's, or the caller's).
    trace_id: Option<String>,
}

impl LoggedRequest {
    pub(super) fn capture<V: Values>(log: &DecisionLog, check: &Check<V>, caller: &Caller) -> Self {
        let context = log
            .logs_context()
            .then(|| check.values.context_json(&|key| log.masks(key)));
        Self {
            caller: caller.clone(),
            tenant: check.tenant.clone(),
            principal: check.principal.clone(),
            action: check.action.clone(),
            resource: check.resource.clone(),
            context,
            trace_id: crate::telemetry::current_trace_id(),
        }
    }

    pub(super) fn submit(self, log: &DecisionLog, answer: &Answer, latency: std::time::Duration) {
        if !log.wants(answer.allow) {
            return;
        }
        fn reference(r: &Option<EntityRef>) -> Option<LoggedRef<'_>> {
            r.as_ref().map(|r| LoggedRef {
                kind: r.type_name.as_str(),
                id: r.id.as_str(),
            })
        }
        let freshness = &answer.freshness;
        // Serialized straight from borrowed fields: no JSON tree is built
        // on the request path, only the line.
        log.submit(&LogRecord {
            decision_id: &answer.decision_id,
            time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or_default(),
            caller: self.caller.name(),
            front_door: self.caller.front_door().name(),
            tenant: &self.tenant,
            principal: reference(&self.principal),
            action: reference(&self.action),
            resource: reference(&self.resource),
            decision: if answer.allow { "ALLOW" } else { "DENY" },
            reasons: Codes(&answer.reasons),
            policies: PolicyIds(&answer.reasons),
            policy_version: &freshness.policy_version,
            snapshot_version: freshness.snapshot_version,
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            context: self.context.as_ref(),
            trace_id: self.trace_id.as_deref(),
            what_if: answer.hypothetical,
            attributes: Attributes(&answer.logged_attributes),
        });
    }
}

/// One decision-log record, as written.
#[derive(serde::Serialize)]
struct LogRecord<'a> {
    decision_id: &'a str,
    time_unix_ms: u64,
    caller: &'a str,
    front_door: &'static str,
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
    /// A what-if answer: about a snapshot that does not exist.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    what_if: bool,
    /// The principal's attributes configured in `decision_log_attributes`.
    #[serde(skip_serializing_if = "Attributes::is_empty")]
    attributes: Attributes<'a>,
}

/// Attribute paths and their values, as a JSON object.
struct Attributes<'a>(&'a [(String, serde_json::Value)]);

impl Attributes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl serde::Serialize for Attributes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(path, value)| (path, value)))
    }
}

/// `{"type": ..., "id": ...}`.
#[derive(serde::Serialize)]
struct LoggedRef<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: &'a str,
}

/// The reasons' codes, as a JSON list.
struct Codes<'a>(&'a [Reason]);

impl serde::Serialize for Codes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Reason::code))
    }
}

/// The determining policies' ids (built-in reasons have none), as a JSON list.
struct PolicyIds<'a>(&'a [Reason]);

impl serde::Serialize for PolicyIds<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .map(Reason::policy_id)
                .filter(|id| !id.is_empty()),
        )
    }
}
