//! Exact mode: each consumption is checked and counted in Redis in one
//! atomic step; peeks read the count; usage reports apply usage measured
//! after the fact.

use std::sync::atomic::Ordering;

use tollgate_engine::CountRange;

use super::period::expire_at;
use super::{
    answers, counter_key, parse_answer, FirstAnswer, MeterKind, MeterSpec, Metering,
    MAX_METER_TENANTS,
};
pub use crate::store::redis_client::scripts::Reported;
use crate::store::redis_client::scripts::{ConsumeReply, ReportItem, UsageConsume, UsageReport};
use crate::store::redis_client::{keys, RedisConn, RedisFailure};

/// The stored JSON of `answer` up to its `used` value: the consume script
/// appends the count and the closing brace, so that Redis stores a complete
/// record without decoding and re-encoding JSON.
fn record_prefix(answer: &answers::Answer<'_>) -> String {
    let mut json =
        serde_json::to_string(&answers::Answer { used: 0, ..*answer }).unwrap_or_default();
    // `used` is the last field, so the document ends with `"used":0}`.
    json.truncate(json.len().saturating_sub("0}".len()));
    json
}

/// What a consume step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// Counted; the count is now `used`.
    Allowed {
        /// The count after this consumption.
        used: i64,
    },
    /// Refused: `used + amount` would pass the limit; nothing was counted.
    CapExceeded {
        /// The count.
        used: i64,
    },
    /// The key was answered before: its first answer.
    Replay(FirstAnswer),
    /// Nothing was counted: the count, `used`, lies outside the range the
    /// decision was made for ([`Consumption::decided_for`]), so the decision
    /// must be made again at `used`.
    Redecide {
        /// The count.
        used: i64,
    },
}

/// What a peek found: the count in the current window, and the first answer
/// of the idempotency key if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    /// The current count.
    pub used: i64,
    /// The key's first answer.
    pub first: Option<FirstAnswer>,
}

/// One usage report (no gating).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The meter.
    pub meter: MeterSpec,
    /// A counter's increment, or a gauge's new value.
    pub amount: i64,
    /// Idempotency key of the event.
    pub event_key: String,
    /// Who used it (`Type::"id"`), may be empty.
    pub principal: String,
}

/// One consumption to count: what is consumed, by whom, under which key, and
/// the first answer to remember when it is allowed.
#[derive(Debug, Clone, Copy)]
pub struct Consumption<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The meter.
    pub meter: &'a MeterSpec,
    /// Units.
    pub amount: i64,
    /// Idempotency key.
    pub key: &'a str,
    /// Who consumes (`Type::"id"`), for the usage stream.
    pub principal: &'a str,
    /// The decision's id.
    pub decision_id: &'a str,
    /// Reason code and policy id of the allowing decision.
    pub allow_reason: (&'a str, &'a str),
    /// The request's fingerprint ([`super::request_fingerprint`]).
    pub fingerprint: &'a str,
    /// The counts the allowing decision holds for: in exact mode, a count
    /// outside them counts nothing and asks for a new decision
    /// ([`Consumed::Redecide`]). Lease mode decides at the count it holds.
    pub decided_for: CountRange,
}

impl<'a> Consumption<'a> {
    /// The first answer to remember for this consumption.
    pub(super) fn answer(&self, allow: bool, used: i64) -> answers::Answer<'a> {
        answers::Answer {
            meter: &self.meter.id,
            amount: self.amount,
            allow,
            used,
            decision_id: self.decision_id,
            code: if allow {
                self.allow_reason.0
            } else {
                tollgate_engine::BuiltinReason::CapExceeded.code()
            },
            policy_id: if allow { self.allow_reason.1 } else { "" },
            fingerprint: self.fingerprint,
        }
    }
}

impl Metering {
    /// The last count seen of `meter` in its current period, 0 when none
    /// was: where a consuming check's first decision is made.
    pub fn last_count(&self, tenant: &str, meter: &MeterSpec) -> i64 {
        let (start, _) = meter.period.bounds(self.clock.now_ms());
        let counts = self
            .last_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match counts.get(tenant).and_then(|meters| meters.get(&meter.id)) {
            Some((seen_start, used)) if *seen_start == start => *used,
            _ => 0,
        }
    }

    /// Remembers `used` as the last count of `meter`, seen at `now_ms`.
    fn note_count(&self, tenant: &str, meter: &MeterSpec, now_ms: i64, used: i64) {
        let (start, _) = meter.period.bounds(now_ms);
        let mut counts = self
            .last_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(meters) = counts.get_mut(tenant) {
            match meters.get_mut(&meter.id) {
                Some(seen) => *seen = (start, used),
                None => {
                    meters.insert(meter.id.clone(), (start, used));
                }
            }
            return;
        }
        if counts.len() >= MAX_METER_TENANTS {
            counts.clear();
        }
        counts.insert(
            tenant.to_string(),
            std::collections::HashMap::from([(meter.id.clone(), (start, used))]),
        );
    }

    /// Reads the current count of `meter` and the first answer to `key`
    /// (one `MGET`: both keys are on the tenant's hash slot).
    pub async fn peek(
        &self,
        conn: &RedisConn,
        tenant: &str,
        meter: &MeterSpec,
        key: &str,
    ) -> Result<Peek, RedisFailure> {
        let now = self.clock.now_ms();
        let (window, _) = meter.period.window(now);
        let mut mget = redis::cmd("MGET");
        mget.arg(counter_key(tenant, meter, &window))
            .arg(keys::idempotency_key(tenant, key));
        let (used, first): (Option<i64>, Option<String>) = conn.query(&mget).await?;
        let used = used.unwrap_or(0);
        self.note_count(tenant, meter, now, used);
        Ok(Peek {
            used,
            first: first.map(|t| parse_answer(&t)).transpose()?,
        })
    }

    /// The current counts of `meters` (one `MGET` for all of them; a
    /// lease-mode meter this sidecar holds a lease of is counted as the
    /// lease knows it, without reading Redis).
    pub async fn counts(
        &self,
        conn: &RedisConn,
        tenant: &str,
        meters: &[MeterSpec],
    ) -> Result<Vec<i64>, RedisFailure> {
        let now = self.clock.now_ms();
        let mut counts: Vec<Option<i64>> = meters
            .iter()
            .map(|meter| {
                meter
                    .lease
                    .and_then(|_| self.held_lease_count(tenant, meter, now))
            })
            .collect();
        let unknown: Vec<usize> = (0..meters.len()).filter(|i| counts[*i].is_none()).collect();
        if !unknown.is_empty() {
            let mut mget = redis::cmd("MGET");
            for index in &unknown {
                let meter = &meters[*index];
                let (window, _) = meter.period.window(now);
                mget.arg(counter_key(tenant, meter, &window));
            }
            let read: Vec<Option<i64>> = conn.query(&mget).await?;
            for (index, used) in unknown.into_iter().zip(read) {
                let used = used.unwrap_or(0);
                self.note_count(tenant, &meters[index], now, used);
                counts[index] = Some(used);
            }
        }
        Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Atomically: unless `key` was answered before, counts `amount` units of
    /// `meter` if that keeps it within its limit, remembers the answer under
    /// `key`, and appends the consumption to the tenant's usage stream.
    pub async fn consume(
        &self,
        conn: &RedisConn,
        consumption: &Consumption<'_>,
    ) -> Result<Consumed, RedisFailure> {
        if consumption.meter.lease.is_some() {
            return self.lease_consume(conn, consumption).await;
        }
        let Consumption {
            tenant,
            meter,
            amount,
            key,
            principal,
            decision_id,
            ..
        } = *consumption;
        let now = self.clock.now_ms();
        let (window, end) = meter.period.window(now);
        // The script completes the records with the count it finds.
        let allowed = record_prefix(&consumption.answer(true, 0));
        let refused = record_prefix(&consumption.answer(false, 0));
        let counter = counter_key(tenant, meter, &window);
        let reply = UsageConsume {
            counter_key: &counter,
            tenant,
            amount,
            limit: meter.limit,
            idempotency_ttl_ms: self.settings.idempotency_ttl.as_millis(),
            meter: &meter.id,
            key,
            principal,
            decision_id,
            time_ms: now,
            stream_maxlen: self.settings.stream_maxlen,
            expire_at: expire_at(end),
            allowed_record: &allowed,
            refused_record: &refused,
            lowest: (consumption.decided_for.min != i64::MIN)
                .then_some(consumption.decided_for.min),
            highest: (consumption.decided_for.max != i64::MAX)
                .then_some(consumption.decided_for.max),
            window: &window,
        }
        .run(conn)
        .await?;
        let outcome = match reply {
            ConsumeReply::Allowed { used } => Consumed::Allowed { used },
            ConsumeReply::Refused { used } => Consumed::CapExceeded { used },
            ConsumeReply::Replay(record) => Consumed::Replay(parse_answer(&record)?),
            ConsumeReply::Redecide { used } => Consumed::Redecide { used },
        };
        match &outcome {
            Consumed::Allowed { used }
            | Consumed::CapExceeded { used }
            | Consumed::Redecide { used } => self.note_count(tenant, meter, now, *used),
            Consumed::Replay(_) => {}
        }
        match &outcome {
            Consumed::Allowed { .. } => self.stats.consumed.fetch_add(1, Ordering::Relaxed),
            Consumed::CapExceeded { .. } => self.stats.cap_exceeded.fetch_add(1, Ordering::Relaxed),
            Consumed::Redecide { .. } => self.stats.redecided.fetch_add(1, Ordering::Relaxed),
            // Counted where the first answer is given again.
            Consumed::Replay(_) => 0,
        };
        Ok(outcome)
    }

    /// Applies usage measured after the fact, in one atomic step: counter
    /// increments and gauge values, each once per event key, each appended
    /// to the usage stream. Returns each report's meter total afterwards.
    pub async fn report(
        &self,
        conn: &RedisConn,
        tenant: &str,
        reports: &[Report],
    ) -> Result<Reported, RedisFailure> {
        let now = self.clock.now_ms();
        let fingerprints: Vec<String> = reports
            .iter()
            .map(|report| {
                super::request_fingerprint(
                    &[tenant, &report.principal, &report.meter.id],
                    report.amount,
                )
            })
            .collect();
        let items: Vec<ReportItem<'_>> = reports
            .iter()
            .zip(&fingerprints)
            .map(|(report, fingerprint)| {
                let (window, end) = report.meter.period.window(now);
                ReportItem {
                    counter_key: counter_key(tenant, &report.meter, &window),
                    gauge: report.meter.kind == MeterKind::Gauge,
                    amount: report.amount,
                    meter: &report.meter.id,
                    event_key: &report.event_key,
                    principal: &report.principal,
                    expire_at: expire_at(end),
                    fingerprint,
                    limit: report.meter.limit,
                    window,
                }
            })
            .collect();
        let reported = UsageReport {
            tenant,
            items: &items,
            stream_maxlen: self.settings.stream_maxlen,
            idempotency_ttl_ms: self.settings.idempotency_ttl.as_millis(),
            time_ms: now,
        }
        .run(conn)
        .await?;
        if matches!(reported, Reported::Totals(_)) {
            self.stats
                .reported
                .fetch_add(reports.len() as u64, Ordering::Relaxed);
        }
        Ok(reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_prefix_completed_with_a_count_is_the_answer() {
        let answer = answers::Answer {
            meter: "api \"calls\"}",
            amount: 3,
            allow: true,
            decision_id: "d-1",
            code: "members-use",
            policy_id: "p\\1",
            fingerprint: "00ff00ff00ff00ff00ff00ff00ff00ff",
            used: 5,
        };
        for used in [0, 7, 1_000_000_000_000_000] {
            let record = format!("{}{used}}}", record_prefix(&answer));
            let parsed = parse_answer(&record).expect("the completed record parses");
            assert_eq!(parsed, answers::Answer { used, ..answer }.owned());
        }
    }
}
