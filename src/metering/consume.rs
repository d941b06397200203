//! The consume protocol: a check that consumes a meter, decided and counted.
//!
//! In exact mode a consuming check is decided first, at the last count this
//! sidecar saw of the meter, and the decision reports the range of counts
//! it holds for (with the shipped policies, every count that leaves room
//! for the amount). One atomic step then finds the count and, when it lies
//! in that range and leaves room, counts; a key answered before returns its
//! first answer. So an allowed consumption costs one Redis call. When
//! another sidecar has moved the count out of the range, nothing is counted
//! and the check is decided again at the count found; after
//! [`MAX_DECISIONS`] decisions, the last one counts with the cap alone, at
//! a count read one call before. A DENY reads the count for the response
//! and stands when the count is in its range.
//!
//! Lease mode decides at the count its lease holds and counts locally.

use std::sync::Arc;

use cedar_policy_core::ast::Value;
use tollgate_engine::{
    BuiltinReason, CountRange, Decision, PreparedRequest, RequestError, TenantSnapshot,
};

use super::{Consumed, Consumption, FirstAnswer, MeterSpec, Metering, Peek, UsageView};
use crate::store::redis_client::{RedisConn, RedisFailure};

/// Decisions a consuming check makes at most (see the module's doc).
pub const MAX_DECISIONS: usize = 4;

/// The context record the policies read the meter's state from.
const USAGE: &str = "usage";

/// A consumption asked for with a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consume {
    /// The meter's id (`Meter::"<id>"` in the tenant's snapshot).
    pub meter: String,
    /// Units to consume, at least 1.
    pub amount: i64,
    /// Idempotency key: a retry with the same key counts once.
    pub idempotency_key: String,
}

/// What is asked to be consumed.
#[derive(Debug, Clone, Copy)]
pub struct ConsumeRequest<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// Its snapshot, which defines the meter.
    pub snapshot: &'a Arc<TenantSnapshot>,
    /// The meter, the amount and the idempotency key.
    pub consume: &'a Consume,
    /// Who consumes (`Type::"id"`), for the usage stream.
    pub principal: &'a str,
    /// What makes it the same request ([`super::request_fingerprint`]).
    pub fingerprint: &'a str,
}

/// How a consuming check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metered {
    /// Decided at the meter's count: an ALLOW was counted, a DENY counted
    /// nothing.
    Decided {
        /// The decision.
        decision: Decision,
        /// Its id.
        decision_id: String,
        /// The meter after it.
        usage: UsageView,
    },
    /// Refused for a built-in reason: no such meter, the cap, or metering
    /// unavailable. Under `decision_id` when a decision was made first.
    Denied {
        /// Why.
        reason: BuiltinReason,
        /// The id of the decision the refusal replaces, if any.
        decision_id: Option<String>,
        /// The meter, when its count is known.
        usage: Option<UsageView>,
    },
    /// The key was answered before: its first answer, counted once.
    Replayed {
        /// The first answer.
        first: FirstAnswer,
        /// The meter as it was then.
        usage: UsageView,
    },
}

/// The `usage` context record the policies see for `meter` at count
/// `used` when `requested` units are asked: `{used, requested, limit,
/// remaining}`.
pub fn usage_record(meter: &MeterSpec, used: i64, requested: i64) -> Value {
    Value::record(
        [
            ("used", Value::from(used)),
            ("requested", Value::from(requested)),
            ("limit", Value::from(meter.limit)),
            ("remaining", Value::from(meter.remaining(used))),
        ],
        None,
    )
}

impl Metering {
    /// Runs the consume protocol for one check: `prepare` converts the
    /// request with the meter's state as its `usage` context record, and
    /// `decide` decides a prepared request and names the decision. `conn`
    /// is the Redis connection, when there is one.
    pub async fn decide_and_consume(
        &self,
        conn: Option<&RedisConn>,
        request: ConsumeRequest<'_>,
        prepare: impl FnOnce(Value) -> Result<PreparedRequest, RequestError>,
        mut decide: impl FnMut(&PreparedRequest) -> Result<(Decision, String), RequestError>,
    ) -> Result<Metered, RequestError> {
        let ConsumeRequest {
            tenant,
            snapshot,
            consume,
            principal,
            fingerprint,
        } = request;
        let meter = match self.meter(snapshot, &consume.meter) {
            Ok(Some(meter)) => meter,
            Ok(None) | Err(_) => {
                return Ok(Metered::Denied {
                    reason: BuiltinReason::UnknownMeter,
                    decision_id: None,
                    usage: None,
                });
            }
        };
        let Some(conn) = conn else {
            self.note_unavailable();
            return Ok(Metered::Denied {
                reason: BuiltinReason::MeteringUnavailable,
                decision_id: None,
                usage: None,
            });
        };
        // Exact mode starts at the last count seen; lease mode knows the
        // count and the key's first answer once it holds a lease.
        let exact = meter.lease.is_none();
        let (mut used, mut known) = if exact {
            (self.last_count(tenant, &meter), false)
        } else {
            if let Some(first) = self.lease_answer(tenant, &consume.idempotency_key) {
                return self.replay(&meter, consume, fingerprint, first);
            }
            match self.lease_used(conn, tenant, &meter).await {
                Ok(used) => (used, true),
                Err(error) => return Ok(self.unavailable(tenant, &meter, &error, None)),
            }
        };

        // The policies see the meter as it stands and what this asks (the
        // server's record replaces any the caller sent).
        let usage = usage_record(&meter, used, consume.amount);
        let mut prepared = prepare(usage)?;
        if exact {
            // Lease mode decides at the count it holds: no range is needed.
            prepared = prepared.probing_count(USAGE);
        }
        let mut decisions = 0;
        loop {
            decisions += 1;
            let (decision, decision_id) = decide(&prepared)?;
            // A decision the probe could not follow holds for its count.
            let range = decision.count_range.unwrap_or(CountRange {
                min: used,
                max: used,
            });
            if !decision.allow {
                if !known {
                    // Decided at the last count seen: read the count (and a
                    // key answered before answers as it did then).
                    match self
                        .peek(conn, tenant, &meter, &consume.idempotency_key)
                        .await
                    {
                        Ok(Peek {
                            first: Some(first), ..
                        }) => return self.replay(&meter, consume, fingerprint, first),
                        Ok(Peek {
                            used: now,
                            first: None,
                        }) => {
                            (used, known) = (now, true);
                            if !range.contains(used) {
                                prepared = prepared.with_count(USAGE, used);
                                continue;
                            }
                        }
                        Err(error) => return Ok(self.unavailable(tenant, &meter, &error, None)),
                    }
                }
                return Ok(Metered::Decided {
                    decision,
                    decision_id,
                    usage: self.view(&meter, used),
                });
            }
            let (code, policy_id) = decision
                .reasons
                .first()
                .map(|reason| {
                    let policy_id = match reason {
                        tollgate_engine::Reason::Policy(policy)
                        | tollgate_engine::Reason::PolicyError(policy) => policy.id.as_str(),
                        tollgate_engine::Reason::Builtin(_) => "",
                    };
                    (reason.code(), policy_id)
                })
                .unwrap_or_default();
            let consumed = tracing::Instrument::instrument(
                self.consume(
                    conn,
                    &Consumption {
                        tenant,
                        meter: &meter,
                        amount: consume.amount,
                        key: &consume.idempotency_key,
                        principal,
                        decision_id: &decision_id,
                        allow_reason: (code, policy_id),
                        fingerprint,
                        // The last decision counts with the cap alone.
                        decided_for: if decisions < MAX_DECISIONS {
                            range
                        } else {
                            CountRange::ALL
                        },
                    },
                ),
                crate::stage_span!("metering"),
            )
            .await;
            return match consumed {
                Ok(Consumed::Allowed { used }) => Ok(Metered::Decided {
                    decision,
                    decision_id,
                    usage: self.view(&meter, used),
                }),
                Ok(Consumed::CapExceeded { used }) => Ok(Metered::Denied {
                    reason: BuiltinReason::CapExceeded,
                    decision_id: Some(decision_id),
                    usage: Some(self.view(&meter, used)),
                }),
                Ok(Consumed::Replay(first)) => self.replay(&meter, consume, fingerprint, first),
                Ok(Consumed::Redecide { used: now }) => {
                    (used, known) = (now, true);
                    prepared = prepared.with_count(USAGE, used);
                    continue;
                }
                Err(error) => Ok(self.unavailable(tenant, &meter, &error, Some(decision_id))),
            };
        }
    }

    /// A consumption refused because Redis could not be reached.
    fn unavailable(
        &self,
        tenant: &str,
        meter: &MeterSpec,
        error: &RedisFailure,
        decision_id: Option<String>,
    ) -> Metered {
        tracing::warn!(tenant, meter = meter.id, error = %error, "cannot reach the meter");
        self.note_unavailable();
        Metered::Denied {
            reason: BuiltinReason::MeteringUnavailable,
            decision_id,
            usage: None,
        }
    }

    /// The first answer to an idempotency key, given again: only for a
    /// retry that asks the same (the same fingerprint; a record from before
    /// fingerprints, the same meter and amount).
    fn replay(
        &self,
        meter: &MeterSpec,
        consume: &Consume,
        fingerprint: &str,
        first: FirstAnswer,
    ) -> Result<Metered, RequestError> {
        if !first.fingerprint.is_empty() && first.fingerprint != fingerprint {
            return Err(RequestError::new(
                "consume.idempotency_key",
                format!(
                    "`{}` was first used for another request (its tenant, principal, action, resource, meter or amount differ); a retry must ask the same",
                    consume.idempotency_key
                ),
            ));
        }
        if first.meter != consume.meter || first.amount != consume.amount {
            return Err(RequestError::new(
                "consume.idempotency_key",
                format!(
                    "already used for {} unit(s) of meter `{}`; a retry must ask the same",
                    first.amount, first.meter
                ),
            ));
        }
        self.note_replay();
        let usage = self.view(meter, first.used);
        Ok(Metered::Replayed { first, usage })
    }
}
