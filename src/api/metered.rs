//! Checks that consume a meter, and usage reports: the decision point's
//! metering path.
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

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy_core::ast::Value as CoreValue;

use super::{convert, pb, ApiError, DecisionPoint};
use crate::engine::{BuiltinReason, CountRange, Decision, RequestError};
use crate::metering::{
    Consumed, Consumption, FirstAnswer, MeterKind, MeterSpec, Metering, Peek, Report, UsageView,
    MAX_KEY_BYTES,
};
use crate::store::redis_client::RedisConn;
use crate::store::{Catalog, Lookup};

/// Decisions a consuming check makes at most (see the module's doc).
const MAX_DECISIONS: usize = 4;

/// The context record the policies read the meter's state from.
const USAGE: &str = "usage";

fn invalid(field: &str, problem: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(RequestError::new(field.to_string(), problem.into()))
}

fn check_key(field: &str, key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(invalid(field, "required"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(field, format!("longer than {MAX_KEY_BYTES} bytes")));
    }
    Ok(())
}

fn usage_pb(view: &UsageView) -> pb::Usage {
    pb::Usage {
        meter: view.meter.clone(),
        used: view.used,
        limit: view.limit,
        remaining: view.remaining,
        period_end_unix_ms: view.period_end_unix_ms,
    }
}

/// `Type::"id"` of an entity reference, for the usage stream.
fn principal_text(principal: Option<&pb::EntityRef>) -> String {
    principal
        .map(|p| format!("{}::{:?}", p.r#type, p.id))
        .unwrap_or_default()
}

impl DecisionPoint {
    fn metering(&self) -> Result<(&Arc<Metering>, &RedisConn), ApiError> {
        let metering = self
            .metering
            .as_ref()
            .ok_or(ApiError::MeteringNotConfigured)?;
        let conn = self.remote.as_ref().and_then(|remote| remote.connection());
        match conn {
            Some(conn) => Ok((metering, conn)),
            None => Err(ApiError::MeteringNotConfigured),
        }
    }

    /// Decides a check that consumes `request.consume`.
    pub(super) async fn check_consume(
        &self,
        catalog: &Catalog,
        mut request: pb::CheckRequest,
    ) -> Result<pb::CheckResponse, ApiError> {
        let consume = request.consume.take().unwrap_or_default();
        if consume.meter.is_empty() {
            return Err(invalid("consume.meter", "required"));
        }
        if consume.amount < 1 {
            return Err(invalid(
                "consume.amount",
                format!("must be at least 1, got {}", consume.amount),
            ));
        }
        check_key("consume.idempotency_key", &consume.idempotency_key)?;
        let metering = self
            .metering
            .as_ref()
            .ok_or(ApiError::MeteringNotConfigured)?;
        let tenant = request.tenant.clone();
        // The request is converted and validated once, with the meter's
        // state in its context (below): a malformed one is refused before
        // anything is counted.
        crate::store::entitlements::check_tenant_id(&tenant)
            .map_err(|problem| invalid("tenant", problem))?;

        let lookup = self
            .lookup(catalog, &tenant, request.max_staleness_ms)
            .await;
        let Lookup::Found { snapshot, .. } = &lookup else {
            return self
                .decide(catalog, &lookup, &prepare(catalog, request)?)
                .map_err(ApiError::InvalidArgument);
        };
        let meter = match metering.meter(snapshot, &consume.meter) {
            Ok(Some(meter)) => meter,
            Ok(None) | Err(_) => {
                return Ok(self.builtin_deny(catalog, &lookup, BuiltinReason::UnknownMeter, None));
            }
        };
        let Ok((_, conn)) = self.metering() else {
            metering.note_unavailable();
            return Ok(self.builtin_deny(
                catalog,
                &lookup,
                BuiltinReason::MeteringUnavailable,
                None,
            ));
        };
        // Exact mode starts at the last count seen; lease mode knows the
        // count and the key's first answer once it holds a lease.
        let exact = meter.lease.is_none();
        let (mut used, mut known) = if exact {
            (metering.last_count(&tenant, &meter), false)
        } else {
            if let Some(first) = metering.lease_answer(&tenant, &consume.idempotency_key) {
                return self.replay(catalog, &lookup, &meter, &consume, first, metering);
            }
            match metering.lease_used(conn, &tenant, &meter).await {
                Ok(used) => (used, true),
                Err(error) => {
                    return Ok(self.unavailable(catalog, &lookup, &tenant, &meter, &error, None))
                }
            }
        };

        // The policies see the meter as it stands and what this asks (the
        // server's record replaces any the caller sent).
        let usage = CoreValue::record(
            [
                ("used", CoreValue::from(used)),
                ("requested", CoreValue::from(consume.amount)),
                ("limit", CoreValue::from(meter.limit)),
                ("remaining", CoreValue::from(meter.remaining(used))),
            ],
            None,
        );
        let principal = principal_text(request.principal.as_ref());
        let mut prepared =
            convert::prepare_check_with(&catalog.policies, request, Some((USAGE, usage)))
                .map_err(ApiError::InvalidArgument)?;
        if exact {
            // Lease mode decides at the count it holds: no range is needed.
            prepared = prepared.probing_count(USAGE);
        }
        let mut decisions = 0;
        loop {
            decisions += 1;
            let (mut response, range) = {
                let _evaluation = crate::stage_span!("evaluate").entered();
                self.decide_counted(catalog, &lookup, &prepared)
                    .map_err(ApiError::InvalidArgument)?
            };
            // A decision the probe could not follow holds for its count.
            let range = range.unwrap_or(CountRange {
                min: used,
                max: used,
            });
            if response.decision != pb::Decision::Allow as i32 {
                if !known {
                    // Decided at the last count seen: read the count (and a
                    // key answered before answers as it did then).
                    match metering
                        .peek(conn, &tenant, &meter, &consume.idempotency_key)
                        .await
                    {
                        Ok(Peek {
                            first: Some(first), ..
                        }) => {
                            return self.replay(catalog, &lookup, &meter, &consume, first, metering)
                        }
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
                        Err(error) => {
                            return Ok(
                                self.unavailable(catalog, &lookup, &tenant, &meter, &error, None)
                            )
                        }
                    }
                }
                response.usage = Some(usage_pb(&metering.view(&meter, used)));
                return Ok(response);
            }
            let first_reason = response
                .reasons
                .first()
                .map(|r| (r.code.clone(), r.policy_id.clone()))
                .unwrap_or_default();
            let consumed = metering
                .consume(
                    conn,
                    &Consumption {
                        tenant: &tenant,
                        meter: &meter,
                        amount: consume.amount,
                        key: &consume.idempotency_key,
                        principal: &principal,
                        decision_id: &response.decision_id,
                        allow_reason: (&first_reason.0, &first_reason.1),
                        // The last decision counts with the cap alone.
                        decided_for: if decisions < MAX_DECISIONS {
                            range
                        } else {
                            CountRange::ALL
                        },
                    },
                )
                .instrument_metering()
                .await;
            return match consumed {
                Ok(Consumed::Allowed { used }) => {
                    response.usage = Some(usage_pb(&metering.view(&meter, used)));
                    Ok(response)
                }
                Ok(Consumed::CapExceeded { used }) => {
                    let mut denied = self.builtin_deny(
                        catalog,
                        &lookup,
                        BuiltinReason::CapExceeded,
                        Some(&response.decision_id),
                    );
                    denied.usage = Some(usage_pb(&metering.view(&meter, used)));
                    Ok(denied)
                }
                Ok(Consumed::Replay(first)) => {
                    self.replay(catalog, &lookup, &meter, &consume, first, metering)
                }
                Ok(Consumed::Redecide { used: now }) => {
                    (used, known) = (now, true);
                    prepared = prepared.with_count(USAGE, used);
                    continue;
                }
                Err(error) => Ok(self.unavailable(
                    catalog,
                    &lookup,
                    &tenant,
                    &meter,
                    &error,
                    Some(&response.decision_id),
                )),
            };
        }
    }

    /// A consumption refused because Redis could not be reached.
    fn unavailable(
        &self,
        catalog: &Catalog,
        lookup: &Lookup,
        tenant: &str,
        meter: &MeterSpec,
        error: &crate::store::redis_client::RedisFailure,
        decision_id: Option<&str>,
    ) -> pb::CheckResponse {
        tracing::warn!(tenant, meter = meter.id, error = %error, "cannot reach the meter");
        if let Some(metering) = &self.metering {
            metering.note_unavailable();
        }
        self.builtin_deny(
            catalog,
            lookup,
            BuiltinReason::MeteringUnavailable,
            decision_id,
        )
    }

    /// The first answer to an idempotency key, given again.
    fn replay(
        &self,
        catalog: &Catalog,
        lookup: &Lookup,
        meter: &MeterSpec,
        consume: &pb::Consume,
        first: FirstAnswer,
        metering: &Metering,
    ) -> Result<pb::CheckResponse, ApiError> {
        if first.meter != consume.meter || first.amount != consume.amount {
            return Err(invalid(
                "consume.idempotency_key",
                format!(
                    "already used for {} unit(s) of meter `{}`; a retry must ask the same",
                    first.amount, first.meter
                ),
            ));
        }
        metering.note_replay();
        let mut response = self.builtin_deny(
            catalog,
            lookup,
            BuiltinReason::CapExceeded,
            Some(&first.decision_id),
        );
        let policy = catalog
            .policies
            .policies()
            .find(|p| p.id == first.policy_id);
        response.decision = if first.allow {
            pb::Decision::Allow as i32
        } else {
            pb::Decision::Deny as i32
        };
        response.reasons = vec![pb::Reason {
            policy_id: first.policy_id.clone(),
            effect: if policy.is_some() && first.allow {
                pb::Effect::Permit as i32
            } else {
                pb::Effect::Unspecified as i32
            },
            code: first.code.clone(),
            message: format!(
                "the first answer to this idempotency key (decision {}), given again; counted once",
                first.decision_id
            ),
            annotations: HashMap::new(),
        }];
        response.usage = Some(usage_pb(&metering.view(meter, first.used)));
        Ok(response)
    }

    /// A DENY for a built-in reason with the lookup's freshness; with
    /// `decision_id`, under that id.
    fn builtin_deny(
        &self,
        catalog: &Catalog,
        lookup: &Lookup,
        reason: BuiltinReason,
        decision_id: Option<&str>,
    ) -> pb::CheckResponse {
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
            Lookup::Unknown | Lookup::Unavailable => (0, 0, None),
        };
        convert::response(
            Decision::deny(reason),
            &convert::FreshnessInfo {
                policy_version: &catalog.policies.version,
                snapshot_version,
                snapshot_age_ms,
                source,
            },
            decision_id.map_or_else(|| self.ids.next(), str::to_string),
        )
    }

    /// Applies usage measured after the fact.
    pub async fn report_usage(
        &self,
        request: pb::ReportUsageRequest,
    ) -> Result<pb::ReportUsageResponse, ApiError> {
        let catalog = self.catalog()?;
        crate::store::entitlements::check_tenant_id(&request.tenant)
            .map_err(|problem| invalid("tenant", problem))?;
        if request.reports.is_empty() {
            return Err(invalid("reports", "at least one report is required"));
        }
        if request.reports.len() > self.limits.max_batch {
            return Err(ApiError::BatchTooLarge {
                size: request.reports.len(),
                limit: self.limits.max_batch,
            });
        }
        for (index, report) in request.reports.iter().enumerate() {
            check_key(&format!("reports[{index}].event_key"), &report.event_key)?;
            if report.meter.is_empty() {
                return Err(invalid(&format!("reports[{index}].meter"), "required"));
            }
        }
        let (metering, conn) = self.metering()?;
        let snapshot = match self.lookup(&catalog, &request.tenant, 0).await {
            Lookup::Found { snapshot, .. } => snapshot,
            Lookup::Unknown => return Err(ApiError::UnknownTenant(request.tenant)),
            Lookup::Unavailable => {
                return Err(ApiError::Unavailable(
                    "the tenant's entitlements are unavailable".to_string(),
                ))
            }
        };
        let mut reports = Vec::with_capacity(request.reports.len());
        for (index, report) in request.reports.into_iter().enumerate() {
            let meter = match metering.meter(&snapshot, &report.meter) {
                Ok(Some(meter)) => meter,
                Ok(None) => {
                    return Err(invalid(
                        &format!("reports[{index}].meter"),
                        format!(
                            "tenant `{}` has no meter `{}`",
                            request.tenant, report.meter
                        ),
                    ))
                }
                Err(problem) => return Err(invalid(&format!("reports[{index}].meter"), problem)),
            };
            if report.amount < 0 && meter.kind == MeterKind::Gauge {
                return Err(invalid(
                    &format!("reports[{index}].amount"),
                    "a gauge's value cannot be negative",
                ));
            }
            if report.amount < 1 && meter.kind == MeterKind::Counter {
                return Err(invalid(
                    &format!("reports[{index}].amount"),
                    format!("must be at least 1, got {}", report.amount),
                ));
            }
            reports.push(Report {
                meter,
                amount: report.amount,
                event_key: report.event_key,
                principal: principal_text(report.principal.as_ref()),
            });
        }
        let totals = metering
            .report(conn, &request.tenant, &reports)
            .await
            .map_err(|error| ApiError::Unavailable(format!("usage cannot be recorded: {error}")))?;
        Ok(pb::ReportUsageResponse {
            totals: reports
                .iter()
                .zip(totals)
                .map(|(report, used)| usage_pb(&metering.view(&report.meter, used)))
                .collect(),
        })
    }
}

fn prepare(
    catalog: &Catalog,
    request: pb::CheckRequest,
) -> Result<crate::engine::PreparedRequest, ApiError> {
    convert::prepare_check(&catalog.policies, request).map_err(ApiError::InvalidArgument)
}

/// Wraps the atomic step in a `metering` span.
trait InstrumentMetering: std::future::Future + Sized {
    fn instrument_metering(self) -> tracing::instrument::Instrumented<Self> {
        tracing::Instrument::instrument(self, crate::stage_span!("metering"))
    }
}

impl<F: std::future::Future> InstrumentMetering for F {}
