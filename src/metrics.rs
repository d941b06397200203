//! Prometheus metrics: what tollgate decided and how fast, and what its
//! reloads did, kept in one registry and encoded as OpenMetrics text
//! ([`Metrics::encode`]; the operations endpoint serves it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::license::clock::ClockGuard;

/// Labels of a decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The first reason's code (`member_role`, `tier_too_low`, `no_permit`, ...).
    pub reason: String,
    /// The front door: `grpc`, `http`, `authzen` or `in_process`.
    pub front_door: &'static str,
}

/// Labels of a reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied`, `unchanged` or `rejected`.
    pub outcome: &'static str,
}

/// Labels of decision-log records.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogLabels {
    /// `queued`, `dropped` (queue full) or `sampled_out`.
    pub result: &'static str,
}

/// Labels of the decision log's Redis Stream records.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `written`, `failed` (Redis refused or unreachable) or `dropped` (queue full).
    pub result: &'static str,
}

/// Labels of the policy version info metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The serving policy version.
    pub policy_version: String,
}

/// Labels of a refused call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The caller's name, or `unauthenticated`.
    pub caller: String,
    /// The operation refused (`check`, `report_usage`, `admin.put_snapshot`, ...).
    pub operation: &'static str,
    /// `unauthenticated` or `permission_denied`.
    pub code: &'static str,
}

/// Labels of a refused end-user token.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The check that failed (`expired`, `signature`, `audience`, ...).
    pub check: &'static str,
}

/// Labels of a credential file reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    /// `tls` (certificate, key, client CA), `callers` (callers and token
    /// files), `jwt` (JWT issuers and JWKS files) or `ext_authz_routes`.
    pub files: &'static str,
    /// `applied` or `rejected` (the previous ones stay in force).
    pub outcome: &'static str,
}

/// Labels of a listener's connection events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `api`, `admin` or `health`.
    pub listener: &'static str,
    /// `over_limit` (closed: too many connections) or `handshake_failed`.
    pub event: &'static str,
}

/// The last reload of a kind of credential files, for the status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialState {
    /// `applied` or `rejected`.
    pub outcome: &'static str,
    /// When.
    pub at: SystemTime,
    /// Why it was rejected.
    pub error: Option<String>,
}

/// What the gRPC front door counts of the requests it admits: those shed
/// for being over `max_in_flight`, and those in flight.
#[derive(Debug, Clone, Default)]
pub struct InFlightCounters {
    /// Requests refused for being over the limit.
    pub shed: Counter,
    /// Requests being served.
    pub in_flight: Gauge,
    /// Requests refused because their bodies would pass the byte budget.
    pub shed_bytes: Counter,
}

/// Every metric tollgate exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    check_seconds: Histogram,
    invalid_requests: Counter,
    listings: Counter,
    listed_items: Counter,
    listing_seconds: Histogram,
    reloads: Family<ReloadLabels, Counter>,
    policy_info: Family<PolicyLabels, Gauge>,
    tenants: Gauge,
    policies: Gauge,
    decision_log: Family<LogLabels, Counter>,
    decision_log_stream: Family<StreamLabels, Counter>,
    remote: Arc<std::sync::OnceLock<Arc<crate::store::remote::RemoteSnapshots>>>,
    metering: Arc<std::sync::OnceLock<Arc<crate::metering::MeteringStats>>>,
    licenses: Arc<std::sync::OnceLock<(Arc<crate::store::Store>, Arc<ClockGuard>)>>,
    reloads_seen: Mutex<ReloadHistory>,
    refusals: Family<RefusalLabels, Counter>,
    token_refusals: Family<TokenLabels, Counter>,
    credential_reloads: Family<CredentialLabels, Counter>,
    credentials_seen: Mutex<std::collections::BTreeMap<&'static str, CredentialState>>,
    connections: Family<ConnectionLabels, Counter>,
    in_flight: InFlightCounters,
}

/// When reloads happened, for the status report.
#[derive(Debug, Clone, Default)]
pub struct ReloadHistory {
    /// The last reload's outcome and time.
    pub last: Option<(&'static str, SystemTime)>,
    /// The serving policy version and since when it serves.
    pub serving: Option<(String, SystemTime)>,
}

/// Decision-log record counts since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecisionLogCounts {
    /// Queued for writing.
    pub queued: u64,
    /// Dropped: the queue was full.
    pub dropped: u64,
    /// Not logged because of sampling.
    pub sampled_out: u64,
    /// Added to the Redis Stream.
    pub stream_written: u64,
    /// Not added to the Redis Stream: Redis failed or was unreachable.
    pub stream_failed: u64,
    /// Dropped before the Redis Stream: its queue was full.
    pub stream_dropped: u64,
}

/// Reads the Redis source's counters and cache state at scrape time.
#[derive(Debug)]
struct RemoteCollector(Arc<std::sync::OnceLock<Arc<crate::store::remote::RemoteSnapshots>>>);

/// Writes constant counters read at scrape time: `(name, help, value)`.
fn encode_counters(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    counters: &[(&str, &str, u64)],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    for (name, help, value) in counters {
        let metric = encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        prometheus_client::metrics::counter::ConstCounter::new(*value).encode(metric)?;
    }
    Ok(())
}

/// Writes constant gauges read at scrape time: `(name, help, value)`.
fn encode_gauges(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    gauges: &[(&str, &str, f64)],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    for (name, help, value) in gauges {
        let metric = encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(*value).encode(metric)?;
    }
    Ok(())
}

/// The labels of the license gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LicenseLabels {
    state: &'static str,
}

/// The labels of refused license files.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LicenseRefusalLabels {
    reason: &'static str,
}

/// What licenses serve, and which files are refused, read at scrape time.
struct LicenseCollector(Arc<std::sync::OnceLock<(Arc<crate::store::Store>, Arc<ClockGuard>)>>);

impl std::fmt::Debug for LicenseCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LicenseCollector")
    }
}

impl prometheus_client::collector::Collector for LicenseCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some((store, guard)) = self.0.get() else {
            return Ok(());
        };
        let mut states = [0i64; crate::store::LicenseState::ALL.len()];
        let mut next_expiry: Option<i64> = None;
        if let Some(catalog) = store.catalog() {
            for tenant in catalog.licenses.keys() {
                let Some(lookup) = catalog.license_lookup(tenant, guard) else {
                    continue;
                };
                let Some(state) = lookup.license_state() else {
                    continue;
                };
                states[state as usize] += 1;
                if let crate::store::Lookup::Licensed { license, in_grace } = &lookup {
                    let ends = if *in_grace {
                        license.claims.grace_ends()
                    } else {
                        license.claims.exp
                    };
                    next_expiry = Some(next_expiry.map_or(ends, |soonest| soonest.min(ends)));
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "licenses",
            "Tenants' serving licenses by state: valid, grace (past expiry, within grace), expired (checks denied license_expired), clock_invalid (checks denied license_clock_invalid)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, count) in crate::store::LicenseState::ALL.iter().zip(states) {
            let labels = LicenseLabels {
                state: state.name(),
            };
            ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
        }
        let report = store.reload_log().last_license_report;
        let mut family = encoder.encode_descriptor(
            "license_files_refused",
            "License files the last scan did not serve, by reason",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for reason in crate::license::Refusal::CODES {
            let count = report
                .refused
                .iter()
                .filter(|r| r.refusal.code() == reason)
                .count();
            ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX))
                .encode(family.encode_family(&LicenseRefusalLabels { reason })?)?;
        }
        if let Some(next) = next_expiry {
            let now = guard.now_ms().div_euclid(1000);
            encode_gauges(
                &mut encoder,
                &[(
                    "license_next_expiry_seconds",
                    "Seconds until the soonest expiry (or end of grace, for a license in grace) among the serving licenses",
                    (next - now) as f64,
                )],
            )?;
        }
        Ok(())
    }
}

/// Reads the metering counters at scrape time.
#[derive(Debug)]
struct MeteringCollector(Arc<std::sync::OnceLock<Arc<crate::metering::MeteringStats>>>);

impl prometheus_client::collector::Collector for MeteringCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(stats) = self.0.get() else {
            return Ok(());
        };
        let counters: [(&str, &str, u64); 8] = [
            (
                "metering_consumes",
                "Consumptions counted",
                stats.consumed.load(Relaxed),
            ),
            (
                "metering_cap_exceeded",
                "Consumptions the atomic count refused (a race lost at the cap); policy denials count among decisions with reason cap_exceeded",
                stats.cap_exceeded.load(Relaxed),
            ),
            (
                "metering_replays",
                "Consumptions answered with an idempotency key's first answer",
                stats.replayed.load(Relaxed),
            ),
            (
                "metering_redecisions",
                "Consumptions decided again because the count had moved out of the range the decision held for",
                stats.redecided.load(Relaxed),
            ),
            (
                "metering_unavailable",
                "Consumptions denied because Redis could not count them",
                stats.unavailable.load(Relaxed),
            ),
            (
                "metering_reports",
                "Usage report events applied",
                stats.reported.load(Relaxed),
            ),
            (
                "metering_leased_units",
                "Units reserved from Redis by leases",
                stats.leased.load(Relaxed),
            ),
            (
                "metering_returned_units",
                "Unspent lease units returned to Redis",
                stats.returned.load(Relaxed),
            ),
        ];
        encode_counters(&mut encoder, &counters)?;
        encode_gauges(
            &mut encoder,
            &[(
                "metering_lease_stock_units",
                "Units this sidecar's leases hold and have not granted",
                stats.lease_stock.load(Relaxed) as f64,
            )],
        )
    }
}

impl prometheus_client::collector::Collector for RemoteCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(remote) = self.0.get() else {
            return Ok(());
        };
        let stats = remote.stats();
        let counters: [(&str, &str, u64); 10] = [
            (
                "cache_hits",
                "Snapshot lookups answered from the cache",
                stats.hits.load(Relaxed),
            ),
            (
                "cache_misses",
                "Snapshot lookups that found nothing cached",
                stats.misses.load(Relaxed),
            ),
            (
                "cache_revalidations",
                "Snapshot lookups whose cached snapshot had to be confirmed with Redis",
                stats.revalidations.load(Relaxed),
            ),
            (
                "cache_evictions",
                "Cached snapshots evicted for size or age",
                stats.evictions.load(Relaxed),
            ),
            (
                "redis_snapshot_reads",
                "Snapshot reads sent to Redis",
                stats.reads.load(Relaxed),
            ),
            (
                "redis_errors",
                "Failed Redis calls and lost connections",
                stats.errors.load(Relaxed),
            ),
            (
                "redis_reconnects",
                "Times the Redis invalidation subscription was re-established",
                stats.reconnects.load(Relaxed),
            ),
            (
                "redis_invalidations",
                "Invalidation messages received",
                stats.invalidations.load(Relaxed),
            ),
            (
                "snapshots_stale_served",
                "Lookups answered with a stale snapshot while Redis could not confirm it",
                stats.stale.load(Relaxed),
            ),
            (
                "snapshots_rejected",
                "Snapshots read from Redis that failed validation",
                stats.rejected.load(Relaxed),
            ),
        ];
        encode_counters(&mut encoder, &counters)?;
        let status = remote.status();
        let age = status.oldest_age.map_or(0.0, |age| age.as_secs_f64());
        let gauges: [(&str, &str, f64); 4] = [
            (
                "cache_entries",
                "Tenants in the snapshot cache",
                status.entries as f64,
            ),
            (
                "cache_weight_bytes",
                "Estimated memory of the cached snapshots (24 bytes per document byte plus 1 KiB per entry)",
                status.weighted_bytes as f64,
            ),
            (
                "redis_connected",
                "1 while the Redis invalidation subscription is up",
                if status.connected { 1.0 } else { 0.0 },
            ),
            (
                "snapshot_oldest_age_seconds",
                "Time since the least recently confirmed cached snapshot was confirmed",
                age,
            ),
        ];
        encode_gauges(&mut encoder, &gauges)?;
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions made, by decision and first reason code",
            decisions.clone(),
        );
        // 10 µs to about 2.6 s.
        let check_seconds = Histogram::new(exponential_buckets(0.000_01, 2.0, 19));
        registry.register(
            "check_duration_seconds",
            "Time to decide one check, from the decoded request to the encoded-ready response",
            check_seconds.clone(),
        );
        let invalid_requests = Counter::default();
        registry.register(
            "invalid_requests",
            "Checks refused as malformed or not matching the schema",
            invalid_requests.clone(),
        );
        let listings = Counter::default();
        registry.register(
            "listings",
            "ListEntitlements pages answered",
            listings.clone(),
        );
        let listed_items = Counter::default();
        registry.register(
            "listed_items",
            "Items of the ListEntitlements pages answered (not counted as decisions)",
            listed_items.clone(),
        );
        let listing_seconds = Histogram::new(exponential_buckets(0.000_01, 2.0, 19));
        registry.register(
            "listing_duration_seconds",
            "Time to answer one ListEntitlements page, hints included",
            listing_seconds.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Policy and snapshot reloads, by outcome",
            reloads.clone(),
        );
        let policy_info = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "policy_info",
            "The serving policy version (value 1)",
            policy_info.clone(),
        );
        let tenants = Gauge::default();
        registry.register(
            "tenant_snapshots",
            "Tenant snapshots serving from files and from licenses (with Redis, see tollgate_cache_entries)",
            tenants.clone(),
        );
        let policies = Gauge::default();
        registry.register("policies", "Policies serving", policies.clone());
        let decision_log = Family::<LogLabels, Counter>::default();
        registry.register(
            "decision_log_records",
            "Decision-log records, by what became of them",
            decision_log.clone(),
        );
        let decision_log_stream = Family::<StreamLabels, Counter>::default();
        registry.register(
            "decision_log_redis_records",
            "Decision-log records for the Redis Stream, by what became of them",
            decision_log_stream.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "caller_refusals",
            "Calls refused before they were looked at, by caller, operation and code",
            refusals.clone(),
        );
        let token_refusals = Family::<TokenLabels, Counter>::default();
        registry.register(
            "token_refusals",
            "End-user JWTs refused, by the check that failed",
            token_refusals.clone(),
        );
        let credential_reloads = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "credential_reloads",
            "Rereads of changed TLS or callers files, by outcome",
            credential_reloads.clone(),
        );
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed before serving, by listener and why",
            connections.clone(),
        );
        let in_flight = InFlightCounters::default();
        registry.register(
            "requests_shed",
            "Requests refused RESOURCE_EXHAUSTED because max_in_flight requests were in flight",
            in_flight.shed.clone(),
        );
        registry.register(
            "requests_shed_for_bytes",
            "Requests refused RESOURCE_EXHAUSTED because their bodies would pass max_request_bytes_in_flight",
            in_flight.shed_bytes.clone(),
        );
        registry.register(
            "requests_in_flight",
            "EntitlementService requests being served",
            in_flight.in_flight.clone(),
        );
        let remote = Arc::new(std::sync::OnceLock::new());
        registry.register_collector(Box::new(RemoteCollector(Arc::clone(&remote))));
        let metering = Arc::new(std::sync::OnceLock::new());
        registry.register_collector(Box::new(MeteringCollector(Arc::clone(&metering))));
        let licenses = Arc::new(std::sync::OnceLock::new());
        registry.register_collector(Box::new(LicenseCollector(Arc::clone(&licenses))));
        Self {
            remote,
            metering,
            licenses,
            registry,
            decisions,
            check_seconds,
            invalid_requests,
            listings,
            listed_items,
            listing_seconds,
            reloads,
            policy_info,
            tenants,
            policies,
            decision_log,
            decision_log_stream,
            reloads_seen: Mutex::new(ReloadHistory::default()),
            refusals,
            token_refusals,
            credential_reloads,
            credentials_seen: Mutex::new(std::collections::BTreeMap::new()),
            connections,
            in_flight,
        }
    }

    /// The counters of requests in flight and of those shed for being over
    /// `max_in_flight`.
    pub fn in_flight(&self) -> InFlightCounters {
        self.in_flight.clone()
    }

    /// Counts a call refused to `caller` (`unauthenticated` when unknown).
    pub fn record_refusal(&self, caller: &str, operation: &'static str, code: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                caller: caller.to_string(),
                operation,
                code,
            })
            .inc();
    }

    /// Counts a refused end-user token.
    pub fn record_token_refusal(&self, check: &'static str) {
        self.token_refusals
            .get_or_create(&TokenLabels { check })
            .inc();
    }

    /// Calls refused so far to `caller` for `operation`, all codes.
    pub fn refusals(&self, caller: &str, operation: &'static str) -> u64 {
        ["unauthenticated", "permission_denied"]
            .into_iter()
            .map(|code| {
                self.refusals
                    .get_or_create(&RefusalLabels {
                        caller: caller.to_string(),
                        operation,
                        code,
                    })
                    .get()
            })
            .sum()
    }

    /// Counts and remembers a reread of changed credential files.
    pub fn record_credential_reload(&self, files: &'static str, error: Option<String>) {
        let outcome = if error.is_some() {
            "rejected"
        } else {
            "applied"
        };
        self.credential_reloads
            .get_or_create(&CredentialLabels { files, outcome })
            .inc();
        self.credentials_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                files,
                CredentialState {
                    outcome,
                    at: SystemTime::now(),
                    error,
                },
            );
    }

    /// The last reread of each kind of credential files.
    pub fn credential_states(&self) -> Vec<(&'static str, CredentialState)> {
        self.credentials_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(files, state)| (*files, state.clone()))
            .collect()
    }

    /// Counts a connection closed before serving.
    pub fn record_connection_refused(&self, listener: &'static str, event: &'static str) {
        self.connections
            .get_or_create(&ConnectionLabels { listener, event })
            .inc();
    }

    /// The Redis source, when snapshots come from Redis.
    pub fn remote(&self) -> Option<&Arc<crate::store::remote::RemoteSnapshots>> {
        self.remote.get()
    }

    /// Counts `records` decision-log records for the Redis Stream: `written`,
    /// `failed` or `dropped`.
    pub fn record_decision_log_stream(&self, result: &'static str, records: u64) {
        self.decision_log_stream
            .get_or_create(&StreamLabels { result })
            .inc_by(records);
    }

    /// What became of decision-log records so far.
    pub fn decision_log_counts(&self) -> DecisionLogCounts {
        let log = |result| self.decision_log.get_or_create(&LogLabels { result }).get();
        let stream = |result| {
            self.decision_log_stream
                .get_or_create(&StreamLabels { result })
                .get()
        };
        DecisionLogCounts {
            queued: log("queued"),
            dropped: log("dropped"),
            sampled_out: log("sampled_out"),
            stream_written: stream("written"),
            stream_failed: stream("failed"),
            stream_dropped: stream("dropped"),
        }
    }

    /// When the reloads happened.
    pub fn reload_history(&self) -> ReloadHistory {
        self.reloads_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Exports the metering counters.
    pub fn observe_metering(&self, stats: Arc<crate::metering::MeteringStats>) {
        let _ = self.metering.set(stats);
    }

    /// Exports the licenses' states and the refused license files.
    pub fn observe_licenses(&self, store: Arc<crate::store::Store>, guard: Arc<ClockGuard>) {
        let _ = self.licenses.set((store, guard));
    }

    /// Exports the Redis source's counters and cache state.
    pub fn observe_remote(&self, remote: Arc<crate::store::remote::RemoteSnapshots>) {
        let _ = self.remote.set(remote);
    }

    /// Counts a decision-log record: `queued`, `dropped` or `sampled_out`.
    pub fn record_decision_log(&self, result: &'static str) {
        self.decision_log.get_or_create(&LogLabels { result }).inc();
    }

    /// Counts one decision and its duration.
    pub fn record_decision(
        &self,
        allow: bool,
        reason: &str,
        front_door: &'static str,
        elapsed: Duration,
    ) {
        self.decisions
            .get_or_create(&DecisionLabels {
                decision: if allow { "allow" } else { "deny" },
                reason: reason.to_string(),
                front_door,
            })
            .inc();
        self.check_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts a refused request.
    pub fn record_listing(&self, items: usize, elapsed: std::time::Duration) {
        self.listings.inc();
        self.listed_items
            .inc_by(u64::try_from(items).unwrap_or(u64::MAX));
        self.listing_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts a request refused as malformed.
    pub fn record_invalid(&self) {
        self.invalid_requests.inc();
    }

    /// Counts a reload and publishes what now serves.
    pub fn record_reload(
        &self,
        outcome: &'static str,
        policy_version: Option<&str>,
        policies: usize,
        tenants: usize,
    ) {
        self.reloads.get_or_create(&ReloadLabels { outcome }).inc();
        {
            let now = SystemTime::now();
            let mut seen = self
                .reloads_seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            seen.last = Some((outcome, now));
            if let Some(version) = policy_version {
                if seen
                    .serving
                    .as_ref()
                    .is_none_or(|(serving, _)| serving != version)
                {
                    seen.serving = Some((version.to_string(), now));
                }
            }
        }
        if let Some(version) = policy_version {
            self.policy_info.clear();
            self.policy_info
                .get_or_create(&PolicyLabels {
                    policy_version: version.to_string(),
                })
                .set(1);
        }
        self.policies
            .set(i64::try_from(policies).unwrap_or(i64::MAX));
        self.tenants.set(i64::try_from(tenants).unwrap_or(i64::MAX));
    }

    /// The metrics in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            warn!("cannot encode metrics");
        }
        text
    }
}
