//! Meters as a tenant's snapshot defines them.

use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, EvalResult};
use tollgate_engine::TenantSnapshot;

use super::Period;

/// Entity type of meters in tenant snapshots.
pub const METER_TYPE: &str = "Meter";

/// How a meter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterKind {
    /// Consumed by use, per period.
    Counter,
    /// Set to a current value (seats in use), no period.
    Gauge,
}

/// A meter as the tenant's snapshot defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterSpec {
    /// The meter's entity id.
    pub id: String,
    /// Units allowed per period (or in all for a gauge).
    pub limit: i64,
    /// When the count starts again.
    pub period: Period,
    /// Counter or gauge.
    pub kind: MeterKind,
    /// Lease mode: units each sidecar reserves from Redis at a time and
    /// then grants locally (`lease` attribute); `None`: every consumption is
    /// counted in Redis.
    pub lease: Option<i64>,
}

impl MeterSpec {
    /// A meter of no units that never starts again: its usage record has
    /// the types every meter's has.
    pub fn placeholder() -> Self {
        Self {
            id: String::new(),
            limit: 0,
            period: Period::Never,
            kind: MeterKind::Counter,
            lease: None,
        }
    }

    /// Units left at count `used`: `max(limit - used, 0)`, as
    /// `context.usage.remaining` and `CheckResponse.usage` give it.
    pub fn remaining(&self, used: i64) -> i64 {
        self.limit.saturating_sub(used).max(0)
    }

    /// Reads `Meter::"<meter>"` from the snapshot: `None` when the tenant has
    /// no such meter, an error when its attributes are unusable.
    pub fn from_snapshot(snapshot: &TenantSnapshot, meter: &str) -> Result<Option<Self>, String> {
        // Parsed once: Cedar's name parser is slow next to a decision.
        static METER_TYPE_NAME: std::sync::OnceLock<Option<EntityTypeName>> =
            std::sync::OnceLock::new();
        let type_name = METER_TYPE_NAME
            .get_or_init(|| EntityTypeName::from_str(METER_TYPE).ok())
            .clone()
            .ok_or_else(|| format!("`{METER_TYPE}` is not an entity type name"))?;
        let uid = EntityUid::from_type_name_and_id(type_name, EntityId::new(meter));
        let Some(entity) = snapshot.entities.get(&uid) else {
            return Ok(None);
        };
        let attr = |name: &str| entity.attr(name).and_then(Result::ok);
        let limit = match attr("limit") {
            Some(EvalResult::Long(limit)) if limit >= 0 => limit,
            _ => return Err(format!("meter `{meter}` has no non-negative Long `limit`")),
        };
        let kind = match attr("kind") {
            None => MeterKind::Counter,
            Some(EvalResult::String(kind)) if kind == "counter" => MeterKind::Counter,
            Some(EvalResult::String(kind)) if kind == "gauge" => MeterKind::Gauge,
            Some(other) => {
                return Err(format!(
                    "meter `{meter}` has kind {other}; expected \"counter\" or \"gauge\""
                ))
            }
        };
        let period = match (attr("period"), kind) {
            (_, MeterKind::Gauge) => Period::Never,
            (Some(EvalResult::String(period)), MeterKind::Counter) => Period::parse(&period)
                .ok_or_else(|| format!("meter `{meter}` has period \"{period}\"; expected \"day\", \"month\" or \"never\""))?,
            (None, MeterKind::Counter) => Period::Never,
            (Some(other), MeterKind::Counter) => return Err(format!("meter `{meter}` has period {other}; expected a String")),
        };
        let lease = match (attr("lease"), kind) {
            (None, _) => None,
            (Some(EvalResult::Long(block)), MeterKind::Counter) if block >= 1 => Some(block),
            (Some(_), MeterKind::Gauge) => {
                return Err(format!("meter `{meter}` is a gauge; only counters lease"))
            }
            (Some(other), MeterKind::Counter) => {
                return Err(format!(
                    "meter `{meter}` has lease {other}; expected a Long of at least 1"
                ))
            }
        };
        Ok(Some(Self {
            id: meter.to_string(),
            limit,
            period,
            kind,
            lease,
        }))
    }
}
