//! Usage caps and metering: meters are entities of the tenant snapshot
//! (`Meter::"<id>"` with `limit`, `period` and optional `kind`), their counts
//! live in Redis, and a consumption is checked and counted in one atomic Lua
//! step on the tenant's hash slot, idempotent per key, appended to the
//! tenant's usage stream in the same step.
//!
//! By concern: [`period`] (calendar windows), [`meter`] (meters as the
//! snapshot defines them), `exact` (the atomic consume step, peeks and usage
//! reports), `lease` (blocks reserved from a meter and granted locally),
//! `answers` (lease-mode first answers, bounded in memory) and `consume`
//! (the protocol that decides and counts a consuming check). The Redis keys
//! and scripts are in [`crate::store::redis_client`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod answers;
mod consume;
mod exact;
mod lease;
pub mod meter;
pub mod period;

pub use consume::{usage_record, Consume, ConsumeRequest, Metered, MAX_DECISIONS};
pub use exact::{Consumed, Consumption, Peek, Report, Reported};
pub use meter::{MeterKind, MeterSpec, METER_TYPE};
pub use period::Period;

use crate::store::redis_client::{keys, RedisFailure};
use tollgate_engine::TenantSnapshot;

/// Longest idempotency or event key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

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
    /// How often leases' usage events and stock are written to Redis.
    pub lease_flush: Duration,
    /// Memory for the first answers of lease-mode keys this sidecar keeps.
    pub lease_answers_max_bytes: u64,
}

impl Default for MeteringSettings {
    /// The configuration's defaults (the `usage_*` keys).
    fn default() -> Self {
        use crate::config_keys::{millis, number};
        Self {
            idempotency_ttl: millis("usage_idempotency_ttl_ms"),
            stream_maxlen: number("usage_stream_maxlen"),
            lease_ttl: millis("usage_lease_ttl_ms"),
            lease_flush: millis("usage_lease_flush_ms"),
            lease_answers_max_bytes: number("usage_lease_answers_max_bytes"),
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
    /// The [`request_fingerprint`] of the request it answered (empty in
    /// records written before requests were fingerprinted).
    #[serde(default)]
    pub fingerprint: String,
    /// The count after it (allowed) or when it was refused. Serialized last:
    /// the consume script writes the record as a prefix, then the count it
    /// found, then `}` (see `record_prefix`).
    pub used: i64,
}

/// What makes two consumptions the same request: tenant, principal, action,
/// resource, meter and amount, hashed (SHA-256, the first 16 bytes in hex).
/// An idempotency key answers again only a request with its fingerprint.
pub fn request_fingerprint(parts: &[&str], amount: i64) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.update(amount.to_le_bytes());
    let digest = hasher.finalize();
    let mut text = String::with_capacity(32);
    for byte in &digest[..16] {
        use std::fmt::Write as _;
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Unique ids (decision ids, lease operation ids): 32 hex digits, a random
/// per-process prefix and a counter.
#[derive(Debug)]
pub struct UniqueIds {
    prefix: u64,
    counter: std::sync::atomic::AtomicU64,
}

impl UniqueIds {
    /// A generator with a fresh random prefix.
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        hasher.write_u32(std::process::id());
        Self {
            prefix: hasher.finish(),
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next(&self) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(32);
        for word in [self.prefix, n] {
            for shift in (0..16).rev() {
                id.push(char::from(DIGITS[((word >> (shift * 4)) & 0xf) as usize]));
            }
        }
        id
    }
}

impl Default for UniqueIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Usage metering over Redis.
#[derive(Debug)]
pub struct Metering {
    settings: MeteringSettings,
    clock: Clock,
    stats: Arc<MeteringStats>,
    /// Leases by tenant and meter.
    leases: std::sync::Mutex<lease::LeaseTable>,
    /// Whether this sidecar has taken a lease yet: until it has, the lease
    /// upkeep has nothing to do and sleeps (an idle sidecar wakes no more
    /// often than it must).
    leasing: tokio::sync::watch::Sender<bool>,
    /// First answers of lease-mode consumptions, by tenant and key.
    lease_answers: answers::Answers,
    /// Ids of lease operations (reservations, returns), each safe to run
    /// twice under its id.
    operations: UniqueIds,
    /// This sidecar's id in the meters' lease records.
    owner: String,
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

/// Key of `meter`'s count in `window` (a gauge has one key for all time).
fn counter_key(tenant: &str, meter: &MeterSpec, window: &str) -> String {
    match meter.kind {
        MeterKind::Counter => keys::counter_key(tenant, &meter.id, window),
        MeterKind::Gauge => keys::gauge_key(tenant, &meter.id),
    }
}

/// A stored first answer.
fn parse_answer(text: &str) -> Result<FirstAnswer, RedisFailure> {
    serde_json::from_str(text)
        .map_err(|error| RedisFailure::Garbage(format!("idempotency record: {error}")))
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
            leasing: tokio::sync::watch::Sender::new(false),
            lease_answers,
            meters: std::sync::Mutex::new(std::collections::HashMap::new()),
            last_counts: std::sync::Mutex::new(std::collections::HashMap::new()),
            operations: UniqueIds::new(),
            owner: UniqueIds::new().next(),
        }
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

    /// Counts a consumption answered with its key's first answer.
    pub fn note_replay(&self) {
        self.stats.replayed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a consumption refused because Redis could not be reached.
    pub fn note_unavailable(&self) {
        self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod unique_id_tests {
    use super::*;

    #[test]
    fn unique_ids_are_32_lowercase_hex_digits_of_prefix_and_counter() {
        let ids = UniqueIds {
            prefix: 0x0123_4567_89ab_cdef,
            counter: std::sync::atomic::AtomicU64::new(u64::MAX - 1),
        };
        assert_eq!(ids.next(), "0123456789abcdeffffffffffffffffe");
        assert_eq!(ids.next(), "0123456789abcdefffffffffffffffff");
        assert_eq!(ids.next(), "0123456789abcdef0000000000000000");
        let ids = UniqueIds::new();
        let first = ids.next();
        assert_eq!(first.len(), 32);
        assert!(first
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(ids.next()[..16], first[..16]);
    }
}
