//! Usage caps and metering: meters are entities of the tenant snapshot
//! (`Meter::"<id>"` with `limit`, `period` and optional `kind`), their counts
//! live in Redis, and a consumption is checked and counted in one atomic Lua
//! step on the tenant's hash slot, idempotent per key, appended to the
//! tenant's usage stream in the same step.
//!
//! Keys per tenant (hash tag `{<tenant>}`: one slot, so one script):
//!
//! - `tollgate:{t}:usage:<meter>:<window>`: a counter meter's count in one
//!   period window (`2026-11`, `2026-11-27`, or `all`), expiring 35 days
//!   after the window ends;
//! - `tollgate:{t}:gauge:<meter>`: a gauge meter's current value;
//! - `tollgate:{t}:idem:<key>`: the first answer to an idempotency key;
//! - `tollgate:{t}:usage` (stream): one entry per accepted consumption or
//!   report.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, EvalResult};
use redis::{Script, Value};

mod answers;
mod consume;

pub use consume::{Consume, ConsumeRequest, Metered, MAX_DECISIONS};

use crate::store::redis_client::{RedisConn, RedisFailure};
use tollgate_engine::CountRange;
use tollgate_engine::TenantSnapshot;

/// Entity type of meters in tenant snapshots.
pub const METER_TYPE: &str = "Meter";

/// Longest idempotency or event key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// How long a counter window's key outlives the window (for billing reads).
const WINDOW_RETENTION_SECONDS: i64 = 35 * 24 * 3600;

/// When a counter starts again from zero (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Each calendar day.
    Day,
    /// Each calendar month.
    Month,
    /// Never (`"never"` or `"none"`).
    Never,
}

impl Period {
    /// Parses `day`, `month`, `never` or `none`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            "never" | "none" => Some(Self::Never),
            _ => None,
        }
    }

    /// The window holding `now_ms` (Unix milliseconds): its id, used in the
    /// counter's key, and when it ends (`None` for a period that never ends).
    pub fn window(self, now_ms: i64) -> (String, Option<i64>) {
        let (start, end) = self.bounds(now_ms);
        let (year, month, day) = civil_from_days(start.div_euclid(86_400_000));
        let id = match self {
            Self::Day => format!("{year:04}-{month:02}-{day:02}"),
            Self::Month => format!("{year:04}-{month:02}"),
            Self::Never => "all".to_string(),
        };
        (id, end)
    }

    /// Start and end (Unix milliseconds) of the window holding `now_ms`:
    /// what [`Period::window`] says without building its id (a period that
    /// never ends starts at 0).
    pub fn bounds(self, now_ms: i64) -> (i64, Option<i64>) {
        let days = now_ms.div_euclid(86_400_000);
        match self {
            Self::Day => (days * 86_400_000, Some((days + 1) * 86_400_000)),
            Self::Month => {
                let (year, month, _) = civil_from_days(days);
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (
                    days_from_civil(year, month, 1) * 86_400_000,
                    Some(days_from_civil(next_year, next_month, 1) * 86_400_000),
                )
            }
            Self::Never => (0, None),
        }
    }
}

/// Year, month (1-12), day (1-31) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Days since 1970-01-01 of a civil date (`days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

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

/// The time source of period windows (injectable, so that tests can cross a
/// period boundary).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or_default()
        }))
    }

    /// A clock reading `now` (Unix milliseconds).
    pub fn from_fn(now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Metering settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteringSettings {
    /// How long an idempotency key's first answer is remembered.
    pub idempotency_ttl: Duration,
    /// Approximate upper bound on each tenant's usage stream length.
    pub stream_maxlen: u64,
    /// How long a lease's unspent units stay with a sidecar before they are
    /// returned.
    pub lease_ttl: Duration,
    /// Memory for the first answers of lease-mode keys this sidecar keeps.
    pub lease_answers_max_bytes: u64,
}

impl Default for MeteringSettings {
    fn default() -> Self {
        Self {
            idempotency_ttl: Duration::from_secs(24 * 3600),
            stream_maxlen: 1_000_000,
            lease_ttl: Duration::from_secs(10),
            lease_answers_max_bytes: 32 << 20,
        }
    }
}

/// Counters of the metering path, for metrics.
#[derive(Debug, Default)]
pub struct MeteringStats {
    /// Consumptions counted.
    pub consumed: AtomicU64,
    /// Consumptions denied because the cap would be passed.
    pub cap_exceeded: AtomicU64,
    /// Consumptions answered from an idempotency key's first answer.
    pub replayed: AtomicU64,
    /// Consumptions decided again: the count had moved out of the range
    /// their decision held for.
    pub redecided: AtomicU64,
    /// Consumptions denied because Redis could not be reached.
    pub unavailable: AtomicU64,
    /// Usage reports applied (events, not calls).
    pub reported: AtomicU64,
    /// Units reserved from Redis by leases.
    pub leased: AtomicU64,
    /// Units of leases returned unspent.
    pub returned: AtomicU64,
    /// Units held by this sidecar's leases now.
    pub lease_stock: AtomicU64,
}

/// The first answer to an idempotency key, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FirstAnswer {
    /// Meter consumed.
    pub meter: String,
    /// Units asked.
    pub amount: i64,
    /// Whether it was allowed.
    pub allow: bool,
    /// Decision id of the first answer.
    pub decision_id: String,
    /// Reason code of the first answer.
    pub code: String,
    /// Determining policy of the first answer, if any.
    #[serde(default)]
    pub policy_id: String,
    /// The count after it (allowed) or when it was refused. Serialized last:
    /// the consume script writes the record as a prefix, then the count it
    /// found, then `}` (see `record_prefix`).
    pub used: i64,
}

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
    /// The counts the allowing decision holds for: in exact mode, a count
    /// outside them counts nothing and asks for a new decision
    /// ([`Consumed::Redecide`]). Lease mode decides at the count it holds.
    pub decided_for: CountRange,
}

impl<'a> Consumption<'a> {
    /// The first answer to remember for this consumption.
    fn answer(&self, allow: bool, used: i64) -> answers::Answer<'a> {
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
        }
    }
}

/// Usage metering over Redis.
#[derive(Debug)]
pub struct Metering {
    settings: MeteringSettings,
    clock: Clock,
    stats: Arc<MeteringStats>,
    /// Leases by tenant and meter.
    leases: std::sync::Mutex<LeaseTable>,
    /// First answers of lease-mode consumptions, by tenant and key.
    lease_answers: answers::Answers,
    /// Meters read from tenants' snapshots.
    meters: std::sync::Mutex<std::collections::HashMap<String, SnapshotMeters>>,
    /// The last count seen of each exact-mode meter, by tenant and meter:
    /// the count a consuming check is first decided at.
    last_counts: std::sync::Mutex<LastCounts>,
}

/// Counts by tenant, then meter: the period's start and the count.
type LastCounts = std::collections::HashMap<String, std::collections::HashMap<String, (i64, i64)>>;

/// The meters read from one tenant snapshot (reading one from the snapshot
/// builds its entity).
#[derive(Debug)]
struct SnapshotMeters {
    /// The snapshot (a `Weak` keeps its allocation, so no later snapshot can
    /// share its address while it is held here).
    snapshot: std::sync::Weak<TenantSnapshot>,
    specs: std::collections::HashMap<String, MeterSpec>,
}

/// Most tenants whose meters are remembered; past it they are all forgotten
/// and read again.
const MAX_METER_TENANTS: usize = 10_000;

/// Leases by tenant, then meter. Nested so that a lookup borrows the
/// request's strings instead of allocating a key.
type LeaseTable =
    std::collections::HashMap<String, std::collections::HashMap<String, Arc<LeaseSlot>>>;

/// One meter's lease: its state, and the lock of its Redis calls.
#[derive(Debug, Default)]
struct LeaseSlot {
    /// Stock, counter and pending events. Held only for bookkeeping, never
    /// across a Redis call, so grants from stock go on while a reservation is
    /// under way.
    state: std::sync::Mutex<Lease>,
    /// Held across a reservation or a return: one Redis call at a time per
    /// lease.
    calls: tokio::sync::Mutex<()>,
}

impl LeaseSlot {
    fn state(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Units a sidecar reserved from a meter's counter and grants locally.
#[derive(Debug, Default)]
struct Lease {
    /// Start (Unix ms) of the counter window the units were reserved in;
    /// `None` before the first reservation and while what was held in an
    /// earlier window or under an earlier limit goes back.
    window_start: Option<i64>,
    /// That window's id (in the counter's key).
    window: String,
    /// Tenant of the lease.
    tenant: String,
    /// The meter.
    meter: Option<MeterSpec>,
    /// Units reserved and not yet granted.
    stock: i64,
    /// The counter (all sidecars' reservations) after the last reservation.
    counter: i64,
    /// The last reservation found no room: the stock is not topped up early
    /// (a request the stock cannot cover still asks Redis).
    exhausted: bool,
    /// When unspent units go back.
    expires: Option<std::time::Instant>,
    /// Granted consumptions not yet in the usage stream.
    events: Vec<LeaseEvent>,
}

impl Lease {
    /// Whether the lease holds units of `meter`'s window starting at `start`
    /// under its current limit.
    fn current(&self, meter: &MeterSpec, start: i64) -> bool {
        self.window_start == Some(start)
            && self
                .meter
                .as_ref()
                .is_some_and(|held| held.limit == meter.limit && held.lease == meter.lease)
    }
}

/// What is taken out of a lease to go back to Redis (restored if the call
/// fails).
#[derive(Debug)]
struct Returning {
    window_start: Option<i64>,
    window: String,
    tenant: String,
    meter: MeterSpec,
    stock: i64,
    counter: i64,
    expires: Option<std::time::Instant>,
    events: Vec<LeaseEvent>,
}

#[derive(Debug, Clone)]
struct LeaseEvent {
    amount: i64,
    key: String,
    principal: String,
    decision_id: String,
    time_ms: i64,
}

/// Most usage events one script writes: a script runs alone in Redis, so a
/// long one would hold up every other client. A lease with more pending
/// writes them in several calls.
const MAX_EVENTS_PER_CALL: usize = 1_000;

/// The stock below which a lease of `block` units reserves the next block
/// while it still grants (a quarter of a block).
fn low_water(block: i64) -> i64 {
    block / 4
}

fn counter_key(tenant: &str, meter: &MeterSpec, window: &str) -> String {
    match meter.kind {
        MeterKind::Counter => format!("tollgate:{{{tenant}}}:usage:{}:{window}", meter.id),
        MeterKind::Gauge => format!("tollgate:{{{tenant}}}:gauge:{}", meter.id),
    }
}

fn idempotency_key(tenant: &str, key: &str) -> String {
    format!("tollgate:{{{tenant}}}:idem:{key}")
}

/// Key of a tenant's usage event stream.
pub fn stream_key(tenant: &str) -> String {
    format!("tollgate:{{{tenant}}}:usage")
}

/// The usage shown in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageView {
    /// The meter.
    pub meter: String,
    /// Units used in the current period.
    pub used: i64,
    /// The limit.
    pub limit: i64,
    /// `limit - used`, at least 0.
    pub remaining: i64,
    /// End of the current period, Unix milliseconds; 0 when it never ends.
    pub period_end_unix_ms: i64,
}

impl Metering {
    /// Metering with `settings`, reading time from `clock`.
    pub fn new(settings: MeteringSettings, clock: Clock) -> Self {
        let lease_answers =
            answers::Answers::new(settings.lease_answers_max_bytes, settings.idempotency_ttl);
        Self {
            settings,
            clock,
            stats: Arc::new(MeteringStats::default()),
            leases: std::sync::Mutex::new(std::collections::HashMap::new()),
            lease_answers,
            meters: std::sync::Mutex::new(std::collections::HashMap::new()),
            last_counts: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

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

    /// `Meter::"<meter>"` of the tenant's snapshot, as
    /// [`MeterSpec::from_snapshot`] reads it, remembered per snapshot.
    pub fn meter(
        &self,
        snapshot: &Arc<TenantSnapshot>,
        meter: &str,
    ) -> Result<Option<MeterSpec>, String> {
        {
            let meters = self
                .meters
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(known) = meters.get(&snapshot.tenant) {
                if std::ptr::eq(known.snapshot.as_ptr(), Arc::as_ptr(snapshot)) {
                    if let Some(spec) = known.specs.get(meter) {
                        return Ok(Some(spec.clone()));
                    }
                }
            }
        }
        let spec = MeterSpec::from_snapshot(snapshot, meter)?;
        if let Some(spec) = &spec {
            let mut meters = self
                .meters
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if meters.len() >= MAX_METER_TENANTS && !meters.contains_key(&snapshot.tenant) {
                meters.clear();
            }
            let known = meters
                .entry(snapshot.tenant.clone())
                .or_insert_with(|| SnapshotMeters {
                    snapshot: Arc::downgrade(snapshot),
                    specs: std::collections::HashMap::new(),
                });
            if !std::ptr::eq(known.snapshot.as_ptr(), Arc::as_ptr(snapshot)) {
                *known = SnapshotMeters {
                    snapshot: Arc::downgrade(snapshot),
                    specs: std::collections::HashMap::new(),
                };
            }
            known.specs.insert(meter.to_string(), spec.clone());
        }
        Ok(spec)
    }

    fn lease(&self, tenant: &str, meter: &str) -> Arc<LeaseSlot> {
        let mut leases = self
            .leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(lease) = leases.get(tenant).and_then(|meters| meters.get(meter)) {
            return Arc::clone(lease);
        }
        Arc::clone(
            leases
                .entry(tenant.to_string())
                .or_default()
                .entry(meter.to_string())
                .or_default(),
        )
    }

    /// The first answer this sidecar gave to a lease-mode key, if any.
    pub fn lease_answer(&self, tenant: &str, key: &str) -> Option<FirstAnswer> {
        self.lease_answers.get(tenant, key)
    }

    /// Units used of a lease-mode meter as this sidecar knows them (no Redis
    /// call once it holds a lease; one read before the first).
    pub async fn lease_used(
        &self,
        conn: &RedisConn,
        tenant: &str,
        meter: &MeterSpec,
    ) -> Result<i64, RedisFailure> {
        let (start, _) = meter.period.bounds(self.clock.now_ms());
        let slot = self.lease(tenant, &meter.id);
        let held = |slot: &LeaseSlot| {
            let lease = slot.state();
            lease
                .current(meter, start)
                .then(|| lease.counter - lease.stock)
        };
        if let Some(used) = held(&slot) {
            return Ok(used);
        }
        // A reservation under way has counted its block in Redis before the
        // lease holds it: the counter read now would take the block as
        // used. Wait for it, then read what the lease holds.
        let _calls = slot.calls.lock().await;
        if let Some(used) = held(&slot) {
            return Ok(used);
        }
        Ok(self.peek(conn, tenant, meter, "").await?.used)
    }

    /// Grants `amount` units of a lease-mode meter from this sidecar's stock,
    /// reserving another block from Redis (atomically, never past the limit)
    /// when the stock does not cover it. A sidecar never grants more than it
    /// holds, so all sidecars together never pass the limit. A grant that
    /// leaves the stock under a quarter of a block reserves the next block
    /// itself, while other requests go on granting from what is left.
    async fn lease_consume(
        &self,
        conn: &RedisConn,
        consumption: &Consumption<'_>,
    ) -> Result<Consumed, RedisFailure> {
        let meter = consumption.meter;
        let block = meter.lease.unwrap_or(1).max(consumption.amount);
        let now = self.clock.now_ms();
        let (start, _) = meter.period.bounds(now);
        let slot = self.lease(consumption.tenant, &meter.id);
        let granted = {
            let mut lease = slot.state();
            if lease.current(meter, start) {
                self.grant(&mut lease, consumption, now).map(|consumed| {
                    let low = !lease.exhausted && lease.stock < low_water(block);
                    (consumed, low, lease.events.len() >= MAX_EVENTS_PER_CALL)
                })
            } else {
                None
            }
        };
        if let Some((consumed, low, many_events)) = granted {
            if low || many_events {
                if let Ok(_calls) = slot.calls.try_lock() {
                    // Best effort: on failure the next request that the
                    // stock cannot cover, or the next write, tries again.
                    let written = if low {
                        self.top_up(conn, &slot, meter, consumption.tenant, now, 1)
                            .await
                            .map(drop)
                    } else {
                        self.write_events(conn, &slot).await
                    };
                    if let Err(error) = written {
                        tracing::debug!(error = %error, "cannot top up a lease or write its events yet");
                    }
                }
            }
            return Ok(consumed);
        }
        let _calls = slot.calls.lock().await;
        // What this request waited for may have refilled the stock.
        {
            let mut lease = slot.state();
            if lease.current(meter, start) {
                if let Some(consumed) = self.grant(&mut lease, consumption, now) {
                    return Ok(consumed);
                }
            }
        }
        let mut lease = self
            .top_up(
                conn,
                &slot,
                meter,
                consumption.tenant,
                now,
                consumption.amount,
            )
            .await?;
        Ok(self.grant_or_refuse(&mut lease, consumption, now))
    }

    /// Under the lease's lock: the key's first answer, or a grant from stock
    /// (`None` when the stock does not cover the amount).
    fn grant(
        &self,
        lease: &mut Lease,
        consumption: &Consumption<'_>,
        now: i64,
    ) -> Option<Consumed> {
        let Consumption {
            tenant,
            amount,
            key,
            principal,
            decision_id,
            ..
        } = *consumption;
        if let Some(first) = self.lease_answer(tenant, key) {
            return Some(Consumed::Replay(first));
        }
        if lease.stock < amount {
            return None;
        }
        lease.stock -= amount;
        self.stats
            .lease_stock
            .fetch_sub(amount.unsigned_abs(), Ordering::Relaxed);
        self.stats.consumed.fetch_add(1, Ordering::Relaxed);
        let used = lease.counter - lease.stock;
        lease.events.push(LeaseEvent {
            amount,
            key: key.to_string(),
            principal: principal.to_string(),
            decision_id: decision_id.to_string(),
            time_ms: now,
        });
        self.lease_answers
            .insert(tenant, key, &consumption.answer(true, used));
        Some(Consumed::Allowed { used })
    }

    /// With the lease's call lock held: returns what the lease holds from an
    /// earlier window or limit, then reserves a block of the current window
    /// (the meter's `lease`, at least `needed` units, or none when the meter
    /// has no room for `needed`) with up to [`MAX_EVENTS_PER_CALL`] pending
    /// usage events. Returns the lease's state lock, taken as the reply is
    /// applied, so that the caller decides with the units it reserved.
    async fn top_up<'s>(
        &self,
        conn: &RedisConn,
        slot: &'s LeaseSlot,
        meter: &MeterSpec,
        tenant: &str,
        now: i64,
        needed: i64,
    ) -> Result<std::sync::MutexGuard<'s, Lease>, RedisFailure> {
        let (start, end) = meter.period.bounds(now);
        let stale = {
            let mut lease = slot.state();
            if lease.current(meter, start) {
                None
            } else {
                Self::take(&mut lease, true)
            }
        };
        if let Some(mut stale) = stale {
            if let Err(error) = self.give_back(conn, &mut stale).await {
                Self::restore(&mut slot.state(), stale);
                return Err(error);
            }
        }
        let (window, events) = {
            let mut lease = slot.state();
            if lease.window_start != Some(start) {
                // Not current (a first reservation, or a new window or
                // limit): start over, counting from the reply.
                lease.window_start = None;
                lease.window = meter.period.window(now).0;
                lease.stock = 0;
                lease.counter = 0;
                lease.exhausted = false;
            }
            if lease.tenant != tenant {
                tenant.clone_into(&mut lease.tenant);
            }
            if lease.meter.as_ref() != Some(meter) {
                lease.meter = Some(meter.clone());
            }
            let count = lease.events.len().min(MAX_EVENTS_PER_CALL);
            (
                lease.window.clone(),
                lease.events.drain(..count).collect::<Vec<_>>(),
            )
        };
        let block = meter.lease.unwrap_or(1).max(needed);
        let reply = self
            .reserve(conn, tenant, meter, &window, end, block, needed, &events)
            .await;
        let mut lease = slot.state();
        let (granted, counter) = match reply {
            Ok(reply) => reply,
            Err(error) => {
                lease.events.splice(..0, events);
                return Err(error);
            }
        };
        lease.window_start = Some(start);
        lease.counter = counter;
        lease.stock += granted;
        lease.exhausted = granted == 0;
        if granted > 0 {
            self.stats
                .lease_stock
                .fetch_add(granted.unsigned_abs(), Ordering::Relaxed);
            self.stats
                .leased
                .fetch_add(granted.unsigned_abs(), Ordering::Relaxed);
            lease.expires = Some(std::time::Instant::now() + self.settings.lease_ttl);
        }
        Ok(lease)
    }

    /// Under the lease's lock, after a reservation: `consumption`'s key's
    /// first answer, a grant from stock, or `cap_exceeded` when the meter had
    /// no room left for it.
    fn grant_or_refuse(
        &self,
        lease: &mut Lease,
        consumption: &Consumption<'_>,
        now: i64,
    ) -> Consumed {
        if let Some(consumed) = self.grant(lease, consumption, now) {
            return consumed;
        }
        let used = lease.counter - lease.stock;
        self.stats.cap_exceeded.fetch_add(1, Ordering::Relaxed);
        self.lease_answers.insert(
            consumption.tenant,
            consumption.key,
            &consumption.answer(false, used),
        );
        Consumed::CapExceeded { used }
    }

    /// Takes a lease's unspent units and pending events out to go back
    /// (`None` when there is nothing to return). With `retire`, the lease is
    /// no longer current, so that nothing is granted until it is renewed.
    fn take(lease: &mut Lease, retire: bool) -> Option<Returning> {
        let window_start = if retire {
            lease.window_start.take()
        } else {
            lease.window_start
        };
        let meter = lease.meter.clone()?;
        if lease.stock == 0 && lease.events.is_empty() {
            return None;
        }
        let returning = Returning {
            window_start,
            window: lease.window.clone(),
            tenant: lease.tenant.clone(),
            meter,
            stock: lease.stock,
            counter: lease.counter,
            expires: lease.expires,
            events: std::mem::take(&mut lease.events),
        };
        lease.counter -= lease.stock;
        lease.stock = 0;
        lease.expires = None;
        Some(returning)
    }

    /// Puts back what [`Metering::take`] took when it could not go back.
    fn restore(lease: &mut Lease, returning: Returning) {
        lease.window_start = returning.window_start;
        lease.window = returning.window;
        lease.tenant = returning.tenant;
        lease.meter = Some(returning.meter);
        lease.stock += returning.stock;
        lease.counter = returning.counter;
        lease.expires = returning.expires;
        lease.events.splice(..0, returning.events);
    }

    /// With the lease's call lock held: writes up to [`MAX_EVENTS_PER_CALL`]
    /// of its pending usage events.
    async fn write_events(&self, conn: &RedisConn, slot: &LeaseSlot) -> Result<(), RedisFailure> {
        let (tenant, meter, window, events) = {
            let mut lease = slot.state();
            let Some(meter) = lease.meter.clone() else {
                return Ok(());
            };
            let count = lease.events.len().min(MAX_EVENTS_PER_CALL);
            let events: Vec<LeaseEvent> = lease.events.drain(..count).collect();
            (lease.tenant.clone(), meter, lease.window.clone(), events)
        };
        let written = self
            .give_back_call(conn, &tenant, &meter, &window, 0, &events)
            .await;
        if written.is_err() {
            slot.state().events.splice(..0, events);
        }
        written
    }

    /// Reserves up to `block` units (at least `needed`, or none) and writes
    /// the pending usage events, in one atomic step.
    #[allow(
        clippy::too_many_arguments,
        reason = "one atomic step takes all of its inputs"
    )]
    async fn reserve(
        &self,
        conn: &RedisConn,
        tenant: &str,
        meter: &MeterSpec,
        window: &str,
        end: Option<i64>,
        block: i64,
        needed: i64,
        events: &[LeaseEvent],
    ) -> Result<(i64, i64), RedisFailure> {
        let mut args = vec![
            block.to_string(),
            needed.to_string(),
            meter.limit.to_string(),
            expire_at(end).to_string(),
            self.settings.stream_maxlen.to_string(),
            meter.id.clone(),
        ];
        push_events(&mut args, events);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = conn
            .invoke(
                &scripts().reserve,
                &[&counter_key(tenant, meter, window), &stream_key(tenant)],
                &args,
            )
            .await?;
        let items = array(&reply)?;
        match (
            items.first().and_then(integer),
            items.get(1).and_then(integer),
        ) {
            (Some(granted), Some(counter)) => Ok((granted, counter)),
            _ => Err(RedisFailure::Garbage(format!("{reply:?}"))),
        }
    }

    /// Returns unspent units and writes the pending events: the units with
    /// the first events in one atomic step, the other events in further
    /// steps of at most [`MAX_EVENTS_PER_CALL`]. What is written leaves
    /// `returning`, so that on an error it holds what is left.
    async fn give_back(
        &self,
        conn: &RedisConn,
        returning: &mut Returning,
    ) -> Result<(), RedisFailure> {
        loop {
            let count = returning.events.len().min(MAX_EVENTS_PER_CALL);
            self.give_back_call(
                conn,
                &returning.tenant,
                &returning.meter,
                &returning.window,
                returning.stock,
                &returning.events[..count],
            )
            .await?;
            returning.events.drain(..count);
            if returning.stock != 0 {
                self.stats
                    .returned
                    .fetch_add(returning.stock.unsigned_abs(), Ordering::Relaxed);
                self.stats
                    .lease_stock
                    .fetch_sub(returning.stock.unsigned_abs(), Ordering::Relaxed);
                returning.counter -= returning.stock;
                returning.stock = 0;
            }
            if returning.events.is_empty() {
                return Ok(());
            }
        }
    }

    /// One give-back step: returns `stock` units and writes `events`.
    async fn give_back_call(
        &self,
        conn: &RedisConn,
        tenant: &str,
        meter: &MeterSpec,
        window: &str,
        stock: i64,
        events: &[LeaseEvent],
    ) -> Result<(), RedisFailure> {
        let mut args = vec![
            stock.to_string(),
            self.settings.stream_maxlen.to_string(),
            meter.id.clone(),
        ];
        push_events(&mut args, events);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        conn.invoke(
            &scripts().give_back,
            &[&counter_key(tenant, meter, window), &stream_key(tenant)],
            &args,
        )
        .await?;
        Ok(())
    }

    /// Returns the unspent units of expired leases (all of them with
    /// `all`, at shutdown) and writes their pending events.
    pub async fn return_leases(&self, conn: &RedisConn, all: bool) -> Result<(), RedisFailure> {
        let leases: Vec<Arc<LeaseSlot>> = self
            .leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .flat_map(|meters| meters.values().cloned())
            .collect();
        let now = std::time::Instant::now();
        for slot in leases {
            let _calls = slot.calls.lock().await;
            let returning = {
                let mut lease = slot.state();
                if all || lease.expires.is_some_and(|expires| expires <= now) {
                    Self::take(&mut lease, false)
                } else {
                    None
                }
            };
            let Some(mut returning) = returning else {
                continue;
            };
            if let Err(error) = self.give_back(conn, &mut returning).await {
                Self::restore(&mut slot.state(), returning);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Arc<MeteringStats> {
        &self.stats
    }

    /// The usage view of `meter` at count `used`.
    pub fn view(&self, meter: &MeterSpec, used: i64) -> UsageView {
        let (_, end) = meter.period.bounds(self.clock.now_ms());
        UsageView {
            meter: meter.id.clone(),
            used,
            limit: meter.limit,
            remaining: meter.remaining(used),
            period_end_unix_ms: end.unwrap_or(0),
        }
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
            .arg(idempotency_key(tenant, key));
        let (used, first): (Option<i64>, Option<String>) = conn.query(&mget).await?;
        let used = used.unwrap_or(0);
        self.note_count(tenant, meter, now, used);
        Ok(Peek {
            used,
            first: first.map(|t| parse_answer(&t)).transpose()?,
        })
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
        let reply = conn
            .invoke(
                &scripts().consume,
                &[
                    &counter_key(tenant, meter, &window),
                    &idempotency_key(tenant, key),
                    &stream_key(tenant),
                ],
                &[
                    &amount.to_string(),
                    &meter.limit.to_string(),
                    &self.settings.idempotency_ttl.as_millis().to_string(),
                    &meter.id,
                    key,
                    principal,
                    decision_id,
                    &now.to_string(),
                    &self.settings.stream_maxlen.to_string(),
                    &expire_at(end).to_string(),
                    &allowed,
                    &refused,
                    &bound(consumption.decided_for.min, i64::MIN),
                    &bound(consumption.decided_for.max, i64::MAX),
                ],
            )
            .await?;
        let items = array(&reply)?;
        let status = items.first().and_then(text).unwrap_or_default();
        let used = items.get(1).and_then(integer).unwrap_or(0);
        let outcome = match status.as_str() {
            "allow" => Consumed::Allowed { used },
            "deny" => Consumed::CapExceeded { used },
            "replay" => Consumed::Replay(parse_answer(
                &items.get(2).and_then(text).unwrap_or_default(),
            )?),
            "redecide" => Consumed::Redecide { used },
            _ => return Err(RedisFailure::Garbage(format!("{reply:?}"))),
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

    /// Counts a consumption answered with its key's first answer.
    pub fn note_replay(&self) {
        self.stats.replayed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a consumption refused because Redis could not be reached.
    pub fn note_unavailable(&self) {
        self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies usage measured after the fact, in one atomic step: counter
    /// increments and gauge values, each once per event key, each appended
    /// to the usage stream. Returns each report's meter total afterwards.
    pub async fn report(
        &self,
        conn: &RedisConn,
        tenant: &str,
        reports: &[Report],
    ) -> Result<Vec<i64>, RedisFailure> {
        let now = self.clock.now_ms();
        let mut keys = vec![stream_key(tenant)];
        let mut args = vec![
            reports.len().to_string(),
            self.settings.stream_maxlen.to_string(),
            self.settings.idempotency_ttl.as_millis().to_string(),
            now.to_string(),
        ];
        for report in reports {
            let (window, end) = report.meter.period.window(now);
            keys.push(counter_key(tenant, &report.meter, &window));
            keys.push(idempotency_key(tenant, &report.event_key));
            args.push(match report.meter.kind {
                MeterKind::Counter => "counter".to_string(),
                MeterKind::Gauge => "gauge".to_string(),
            });
            args.push(report.amount.to_string());
            args.push(report.meter.id.clone());
            args.push(report.event_key.clone());
            args.push(report.principal.clone());
            args.push(expire_at(end).to_string());
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = conn.invoke(&scripts().report, &keys, &args).await?;
        let totals: Vec<i64> = array(&reply)?
            .iter()
            .map(|v| integer(v).unwrap_or(0))
            .collect();
        if totals.len() != reports.len() {
            return Err(RedisFailure::Garbage(format!("{reply:?}")));
        }
        self.stats
            .reported
            .fetch_add(reports.len() as u64, Ordering::Relaxed);
        Ok(totals)
    }
}

/// Appends lease events to script arguments: a count, then five fields each.
fn push_events(args: &mut Vec<String>, events: &[LeaseEvent]) {
    args.push(events.len().to_string());
    for event in events {
        args.push(event.amount.to_string());
        args.push(event.key.clone());
        args.push(event.principal.clone());
        args.push(event.decision_id.clone());
        args.push(event.time_ms.to_string());
    }
}

/// When a window's counter expires (Unix seconds), 0 for never.
/// A bound of a decision's count range as the consume script reads it:
/// empty when `unbounded`.
fn bound(value: i64, unbounded: i64) -> String {
    if value == unbounded {
        String::new()
    } else {
        value.to_string()
    }
}

fn expire_at(end: Option<i64>) -> i64 {
    end.map_or(0, |end| end.div_euclid(1000) + WINDOW_RETENTION_SECONDS)
}

fn array(reply: &Value) -> Result<&[Value], RedisFailure> {
    match reply {
        Value::Array(items) => Ok(items),
        other => Err(RedisFailure::Garbage(format!("{other:?}"))),
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_answer(text: &str) -> Result<FirstAnswer, RedisFailure> {
    serde_json::from_str(text)
        .map_err(|error| RedisFailure::Garbage(format!("idempotency record: {error}")))
}

struct Scripts {
    consume: Script,
    report: Script,
    reserve: Script,
    give_back: Script,
}

/// Lua that appends the lease events in ARGV (from index `first`: a count,
/// then amount, key, principal, decision id, time for each) to KEYS[2].
const LEASE_EVENTS_LUA: &str = r"
local function write_events(first, maxlen, meter)
  local count = tonumber(ARGV[first])
  for i = 0, count - 1 do
    local base = first + 1 + i * 5
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
      'kind', 'consume', 'meter', meter, 'amount', ARGV[base], 'idempotency_key', ARGV[base + 1],
      'principal', ARGV[base + 2], 'decision_id', ARGV[base + 3], 'time_ms', ARGV[base + 4], 'used', '', 'lease', '1')
  end
end
";

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        // KEYS: counter, stream. ARGV: block, needed, limit, expire-at,
        // stream maxlen, meter, then the pending events. Reserves
        // min(block, limit - counter) units if that covers `needed`.
        reserve: Script::new(&format!(
            r"{LEASE_EVENTS_LUA}
write_events(7, ARGV[5], ARGV[6])
local counter = tonumber(redis.call('GET', KEYS[1]) or '0')
local room = tonumber(ARGV[3]) - counter
local grant = math.min(tonumber(ARGV[1]), room)
if grant < tonumber(ARGV[2]) then
  return {{0, counter}}
end
counter = redis.call('INCRBY', KEYS[1], grant)
if ARGV[4] ~= '0' then
  redis.call('EXPIREAT', KEYS[1], ARGV[4])
end
return {{grant, counter}}
"
        )),
        // KEYS: counter, stream. ARGV: unspent units, stream maxlen, meter,
        // then the pending events.
        give_back: Script::new(&format!(
            r"{LEASE_EVENTS_LUA}
write_events(4, ARGV[2], ARGV[3])
if tonumber(ARGV[1]) > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DECRBY', KEYS[1], ARGV[1])
end
return 1
"
        )),
        // KEYS: counter, idempotency record, stream. ARGV: amount, limit,
        // idempotency ttl ms, meter, key, principal, decision id, time ms,
        // stream maxlen, counter expire-at (s, 0 = never; set when the
        // window's counter starts), the allowed and the refused answer's
        // record up to its count (`record_prefix`), the lowest and highest
        // count the decision holds for (empty: unbounded).
        consume: Script::new(
            r"
local first = redis.call('GET', KEYS[2])
if first then
  return {'replay', 0, first}
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if (ARGV[13] ~= '' and used < tonumber(ARGV[13])) or (ARGV[14] ~= '' and used > tonumber(ARGV[14])) then
  return {'redecide', used}
end
local amount = tonumber(ARGV[1])
if used + amount > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[12] .. used .. '}', 'PX', ARGV[3])
  return {'deny', used}
end
local after = redis.call('INCRBY', KEYS[1], amount)
if used == 0 and ARGV[10] ~= '0' then
  redis.call('EXPIREAT', KEYS[1], ARGV[10])
end
redis.call('SET', KEYS[2], ARGV[11] .. after .. '}', 'PX', ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*',
  'kind', 'consume', 'meter', ARGV[4], 'amount', ARGV[1], 'idempotency_key', ARGV[5],
  'principal', ARGV[6], 'decision_id', ARGV[7], 'time_ms', ARGV[8], 'used', after)
return {'allow', after}
",
        ),
        // KEYS: stream, then per report its counter and idempotency record.
        // ARGV: count, stream maxlen, idempotency ttl ms, time ms, then per
        // report: kind, amount, meter, event key, principal, expire-at.
        report: Script::new(
            r"
local totals = {}
for i = 1, tonumber(ARGV[1]) do
  local counter, record = KEYS[2 * i], KEYS[2 * i + 1]
  local base = 4 + (i - 1) * 6
  local kind, amount, meter, key, principal, expire = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4], ARGV[base + 5], ARGV[base + 6]
  if redis.call('EXISTS', record) == 0 then
    local total
    if kind == 'gauge' then
      redis.call('SET', counter, amount)
      total = tonumber(amount)
    else
      total = redis.call('INCRBY', counter, amount)
      if expire ~= '0' then
        redis.call('EXPIREAT', counter, expire)
      end
    end
    redis.call('SET', record, cjson.encode({meter = meter, amount = tonumber(amount), allow = true, used = total, decision_id = '', code = 'reported', policy_id = ''}), 'PX', ARGV[3])
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
      'kind', 'report_' .. kind, 'meter', meter, 'amount', amount, 'idempotency_key', key,
      'principal', principal, 'decision_id', '', 'time_ms', ARGV[4], 'used', total)
  end
end
for i = 1, tonumber(ARGV[1]) do
  totals[i] = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
end
return totals
",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(date: &str) -> i64 {
        // `YYYY-MM-DDTHH:MM:SSZ`
        let year: i64 = date[0..4].parse().unwrap();
        let month: u32 = date[5..7].parse().unwrap();
        let day: u32 = date[8..10].parse().unwrap();
        let seconds: i64 = date[11..13].parse::<i64>().unwrap() * 3600
            + date[14..16].parse::<i64>().unwrap() * 60
            + date[17..19].parse::<i64>().unwrap();
        days_from_civil(year, month, day) * 86_400_000 + seconds * 1000
    }

    #[test]
    fn windows_follow_the_utc_calendar() {
        let last_second = ms("2026-11-30T23:59:59Z");
        assert_eq!(
            Period::Month.window(last_second),
            ("2026-11".to_string(), Some(ms("2026-12-01T00:00:00Z")))
        );
        assert_eq!(Period::Month.window(last_second + 1000).0, "2026-12");
        assert_eq!(
            Period::Month.window(ms("2026-12-31T12:00:00Z")).1,
            Some(ms("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Day.window(ms("2028-02-28T23:00:00Z")),
            ("2028-02-28".to_string(), Some(ms("2028-02-29T00:00:00Z")))
        );
        assert_eq!(
            Period::Day.window(ms("2028-02-29T00:00:00Z")).0,
            "2028-02-29"
        );
        assert_eq!(Period::Never.window(0), ("all".to_string(), None));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        for days in [-800_000, -1, 0, 59, 365 * 400, 20_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn periods_parse() {
        assert_eq!(Period::parse("none"), Some(Period::Never));
        assert_eq!(Period::parse("week"), None);
    }

    #[test]
    fn a_record_prefix_completed_with_a_count_is_the_answer() {
        let answer = answers::Answer {
            meter: "api \"calls\"}",
            amount: 3,
            allow: true,
            decision_id: "d-1",
            code: "members-use",
            policy_id: "p\\1",
            used: 5,
        };
        for used in [0, 7, 1_000_000_000_000_000] {
            let record = format!("{}{used}}}", record_prefix(&answer));
            let parsed = parse_answer(&record).expect("the completed record parses");
            assert_eq!(parsed, answers::Answer { used, ..answer }.owned());
        }
    }
}
