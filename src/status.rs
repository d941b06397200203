//! The health detail: what is serving and what went wrong, served as JSON on
//! `GET /status` at the metrics address and printed by `tollgate status`.
//! Healthy means: a policy set serves, the last reloads applied cleanly, and
//! Redis, when configured, is connected.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::store::Store;
use tollgate_engine::FileProblem;

/// `healthy` or `degraded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Everything configured works.
    Healthy,
    /// Serving, or trying to, with something wrong (see `problems`).
    Degraded,
}

/// The whole report, as `GET /status` serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Overall health.
    pub status: Health,
    /// Why it is degraded, one sentence each.
    #[serde(default)]
    pub problems: Vec<String>,
    /// tollgate's version.
    pub version: String,
    /// Time since the process started serving, in milliseconds.
    pub uptime_ms: u64,
    /// The policy set.
    pub policies: PolicyStatus,
    /// The tenant snapshots.
    pub snapshots: SnapshotStatus,
    /// The Redis source, when configured.
    #[serde(default)]
    pub redis: Option<RedisStatus>,
    /// The decision log, when configured.
    #[serde(default)]
    pub decision_log: Option<DecisionLogStatus>,
    /// Span export.
    pub tracing: TracingStatus,
    /// The last reread of changed TLS or callers files, per kind.
    #[serde(default)]
    pub credentials: Vec<CredentialStatus>,
    /// Signed licenses, when configured.
    #[serde(default)]
    pub licenses: Option<LicensesStatus>,
}

/// The licenses directory: what serves and what was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicensesStatus {
    /// The serving license of each tenant, by tenant.
    pub serving: Vec<LicenseStatus>,
    /// Files the last scan refused (an expired license is listed here and
    /// in `serving`, where it answers `license_expired`).
    #[serde(default)]
    pub refused: Vec<RefusedLicense>,
    /// Problems of the trusted keys directory.
    #[serde(default)]
    pub key_problems: Vec<Problem>,
    /// The clock reads behind the newest issue time or the recorded time
    /// beyond the allowed skew: license checks answer `license_clock_invalid`.
    pub clock_invalid: bool,
}

/// One tenant's serving license.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseStatus {
    /// The tenant.
    pub tenant: String,
    /// License id.
    pub license_id: String,
    /// Its version.
    pub version: u64,
    /// The key id that signed it.
    pub kid: String,
    /// Its file.
    pub file: String,
    /// `valid`, `grace`, `expired` or `clock_invalid`.
    pub state: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// End of grace, Unix seconds.
    pub grace_ends_at: i64,
}

/// A license file not served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedLicense {
    /// The file.
    pub file: String,
    /// The reason's code (`bad_signature`, `unknown_key`, `revoked_key`, ...).
    pub reason: String,
    /// The reason for people.
    pub message: String,
}

/// The last reread of one kind of credential files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialStatus {
    /// `tls` or `callers`.
    pub files: String,
    /// `applied` or `rejected`.
    pub outcome: String,
    /// When, Unix milliseconds.
    pub unix_ms: u64,
    /// Why the change was rejected.
    #[serde(default)]
    pub error: Option<String>,
}

/// The serving policy set and the last reloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// A valid policy set serves.
    pub loaded: bool,
    /// Its version.
    #[serde(default)]
    pub policy_version: Option<String>,
    /// Policies in it.
    pub count: usize,
    /// When this version started serving, Unix milliseconds.
    #[serde(default)]
    pub serving_since_unix_ms: Option<u64>,
    /// The last reload: its outcome and when.
    #[serde(default)]
    pub last_reload: Option<ReloadStatus>,
    /// Why the last policy reload was rejected (empty when it was not).
    #[serde(default)]
    pub last_error: Vec<Problem>,
}

/// One reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// `applied`, `unchanged` or `rejected`.
    pub outcome: String,
    /// When, Unix milliseconds.
    pub unix_ms: u64,
}

/// A problem in a file, with its location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    #[serde(default)]
    pub line: Option<usize>,
    /// 1-based column, when known.
    #[serde(default)]
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl From<&FileProblem> for Problem {
    fn from(problem: &FileProblem) -> Self {
        Self {
            file: problem.file.clone(),
            line: problem.line,
            column: problem.column,
            message: problem.message.clone(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{}:{line}:{column}: ", self.file)?,
            (Some(line), None) => write!(f, "{}:{line}: ", self.file)?,
            (None, _) => write!(f, "{}: ", self.file)?,
        }
        f.write_str(&self.message)
    }
}

/// The tenant snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    /// `files` or `redis`.
    pub source: String,
    /// Snapshots serving from files (with Redis, see `redis.cache_entries`).
    #[serde(default)]
    pub tenants: usize,
    /// Time since the least recently confirmed snapshot was confirmed, in ms.
    #[serde(default)]
    pub oldest_age_ms: Option<u64>,
    /// Snapshot files refused by the last scan.
    #[serde(default)]
    pub problems: Vec<Problem>,
}

/// The Redis source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisStatus {
    /// The invalidation subscription is up.
    pub connected: bool,
    /// Cached tenant snapshots.
    pub cache_entries: u64,
    /// Weight of the cache in bytes.
    pub cache_weight_bytes: u64,
    /// Time since the least recently confirmed cached snapshot was confirmed, in ms.
    #[serde(default)]
    pub oldest_age_ms: Option<u64>,
}

/// What became of decision-log records since the start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionLogStatus {
    /// Records queued for writing.
    pub queued: u64,
    /// Records dropped because the queue was full.
    pub dropped: u64,
    /// Decisions not logged because of sampling.
    pub sampled_out: u64,
    /// The Redis Stream sink, when configured.
    #[serde(default)]
    pub redis_stream: Option<StreamStatus>,
}

/// The Redis Stream sink of the decision log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// The stream's key.
    pub key: String,
    /// Records added to the stream.
    pub written: u64,
    /// Records that could not be added (Redis failed or unreachable).
    pub failed: u64,
    /// Records dropped because the stream's queue was full.
    pub dropped: u64,
}

/// Span export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracingStatus {
    /// Spans are exported over OTLP.
    pub exporting: bool,
}

/// Builds reports from the serving state.
#[derive(Debug)]
pub struct StatusSource {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    started: Instant,
    decision_log: bool,
    redis_stream: Option<String>,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl StatusSource {
    /// Reports on `store`, with what `metrics` counted.
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            metrics,
            started: Instant::now(),
            decision_log: false,
            redis_stream: None,
        }
    }

    /// Reports on the decision log (and its Redis Stream, if `stream` names one).
    pub fn with_decision_log(mut self, stream: Option<String>) -> Self {
        self.decision_log = true;
        self.redis_stream = stream;
        self
    }

    /// The report now.
    pub fn report(&self) -> Report {
        let catalog = self.store.catalog();
        let reload_log = self.store.reload_log();
        let history = self.metrics.reload_history();
        let remote = self.metrics.remote();
        let mut problems = Vec::new();

        let policies = PolicyStatus {
            loaded: catalog.is_some(),
            policy_version: catalog.as_ref().map(|c| c.policies.version.clone()),
            count: catalog.as_ref().map_or(0, |c| c.policies.policy_count()),
            serving_since_unix_ms: history.serving.map(|(_, since)| unix_ms(since)),
            last_reload: history.last.map(|(outcome, at)| ReloadStatus {
                outcome: outcome.to_string(),
                unix_ms: unix_ms(at),
            }),
            last_error: reload_log
                .last_policy_error
                .iter()
                .flatten()
                .map(Problem::from)
                .collect(),
        };
        match (&policies.policy_version, policies.last_error.is_empty()) {
            (None, _) => problems
                .push("no valid policy set is loaded: checks are answered UNAVAILABLE".to_string()),
            (Some(version), false) => problems.push(format!(
                "the last policy reload was rejected: policy_version {version} keeps serving"
            )),
            (Some(_), true) => {}
        }

        let snapshot_problems: Vec<Problem> = reload_log
            .last_entitlement_problems
            .iter()
            .map(Problem::from)
            .collect();
        if !snapshot_problems.is_empty() {
            problems.push(format!(
                "{} snapshot file problem(s): those tenants keep their previous snapshot, or have none",
                snapshot_problems.len()
            ));
        }
        let redis = remote.map(|remote| {
            let status = remote.status();
            RedisStatus {
                connected: status.connected,
                cache_entries: status.entries,
                cache_weight_bytes: status.weighted_bytes,
                oldest_age_ms: status.oldest_age.map(millis),
            }
        });
        if redis.as_ref().is_some_and(|redis| !redis.connected) {
            problems.push(
                "Redis is not connected: cached snapshots serve as STALE until max_stale_ms, uncached tenants are denied"
                    .to_string(),
            );
        }
        let snapshots = match &redis {
            Some(redis) => SnapshotStatus {
                source: "redis".to_string(),
                tenants: usize::try_from(redis.cache_entries).unwrap_or(usize::MAX),
                oldest_age_ms: redis.oldest_age_ms,
                problems: snapshot_problems,
            },
            None if self.store.license_settings().is_some() => SnapshotStatus {
                source: "licenses".to_string(),
                tenants: catalog.as_ref().map_or(0, |c| c.licenses.len()),
                oldest_age_ms: None,
                problems: snapshot_problems,
            },
            None => SnapshotStatus {
                source: "files".to_string(),
                tenants: catalog.as_ref().map_or(0, |c| c.tenants.len()),
                oldest_age_ms: catalog.as_ref().and_then(|c| {
                    c.tenants
                        .values()
                        .map(|snapshot| millis(snapshot.confirmed_at.elapsed()))
                        .max()
                }),
                problems: snapshot_problems,
            },
        };
        let decision_log = self.decision_log.then(|| {
            let counts = self.metrics.decision_log_counts();
            DecisionLogStatus {
                queued: counts.queued,
                dropped: counts.dropped,
                sampled_out: counts.sampled_out,
                redis_stream: self.redis_stream.as_ref().map(|key| StreamStatus {
                    key: key.clone(),
                    written: counts.stream_written,
                    failed: counts.stream_failed,
                    dropped: counts.stream_dropped,
                }),
            }
        });
        let credentials: Vec<CredentialStatus> = self
            .metrics
            .credential_states()
            .into_iter()
            .map(|(files, state)| CredentialStatus {
                files: files.to_string(),
                outcome: state.outcome.to_string(),
                unix_ms: unix_ms(state.at),
                error: state.error,
            })
            .collect();
        for rejected in credentials.iter().filter(|c| c.error.is_some()) {
            problems.push(format!(
                "the last change to the {} files was rejected ({}): the previous ones stay in force",
                rejected.files,
                rejected.error.as_deref().unwrap_or_default()
            ));
        }
        let licenses = self.licenses(catalog.as_deref(), &reload_log, &mut problems);
        Report {
            status: if problems.is_empty() {
                Health::Healthy
            } else {
                Health::Degraded
            },
            problems,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: millis(self.started.elapsed()),
            policies,
            snapshots,
            redis,
            decision_log,
            tracing: TracingStatus {
                exporting: crate::telemetry::exporting(),
            },
            credentials,
            licenses,
        }
    }

    fn licenses(
        &self,
        catalog: Option<&crate::store::Catalog>,
        reload_log: &crate::store::ReloadLog,
        problems: &mut Vec<String>,
    ) -> Option<LicensesStatus> {
        use crate::store::LicenseState;
        let settings = self.store.license_settings()?;
        let mut serving = Vec::new();
        if let Some(catalog) = catalog {
            let mut tenants: Vec<&String> = catalog.licenses.keys().collect();
            tenants.sort();
            for tenant in tenants {
                let state = catalog
                    .license_lookup(tenant, &settings.guard)
                    .and_then(|lookup| lookup.license_state())
                    .map_or("clock_invalid", LicenseState::name);
                let license = &catalog.licenses[tenant];
                serving.push(LicenseStatus {
                    tenant: tenant.clone(),
                    license_id: license.claims.jti.clone(),
                    version: license.claims.ver,
                    kid: license.kid.clone(),
                    file: license.file.clone(),
                    state: state.to_string(),
                    expires_at: license.claims.exp,
                    grace_ends_at: license.claims.grace_ends(),
                });
            }
        }
        let clock_invalid = matches!(
            settings.guard.now(),
            crate::license::clock::Now::Backwards { .. }
        );
        let report = &reload_log.last_license_report;
        let status = LicensesStatus {
            refused: report
                .refused
                .iter()
                .map(|refused| RefusedLicense {
                    file: refused.file.clone(),
                    reason: refused.refusal.code().to_string(),
                    message: refused.refusal.to_string(),
                })
                .collect(),
            key_problems: report.key_problems.iter().map(Problem::from).collect(),
            clock_invalid,
            serving,
        };
        if clock_invalid {
            problems.push("the clock reads earlier than the licenses allow: license checks answer license_clock_invalid".to_string());
        }
        for state in ["grace", "expired"] {
            let tenants: Vec<&str> = status
                .serving
                .iter()
                .filter(|license| license.state == state)
                .map(|license| license.tenant.as_str())
                .collect();
            if !tenants.is_empty() {
                problems.push(match state {
                    "grace" => format!("licenses in grace (renew them): {}", tenants.join(", ")),
                    _ => format!(
                        "licenses expired past grace (checks answer license_expired): {}",
                        tenants.join(", ")
                    ),
                });
            }
        }
        // Expired licenses are named above.
        let refused = status
            .refused
            .iter()
            .filter(|refused| refused.reason != "expired")
            .count();
        if refused + status.key_problems.len() > 0 {
            problems.push(format!(
                "{} license file problem(s): those tenants keep their previous license, or have none",
                refused + status.key_problems.len()
            ));
        }
        Some(status)
    }
}

/// A duration in milliseconds for people: `850 ms`, `12.3 s`, `4 min`, `2.5 h`.
fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=7_199_999 => format!("{} min", ms / 60_000),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

fn since(now_ms: u64, then_ms: u64) -> String {
    ago(now_ms.saturating_sub(then_ms))
}

/// The report for people.
pub fn text(report: &Report, now: SystemTime) -> String {
    use std::fmt::Write;
    let now_ms = unix_ms(now);
    let mut out = String::new();
    let health = match report.status {
        Health::Healthy => "healthy",
        Health::Degraded => "DEGRADED",
    };
    let _ = writeln!(
        out,
        "tollgate {}: {health} (up {})",
        report.version,
        ago(report.uptime_ms)
    );
    for problem in &report.problems {
        let _ = writeln!(out, "  problem: {problem}");
    }
    let policies = &report.policies;
    match &policies.policy_version {
        Some(version) => {
            let _ = write!(
                out,
                "policies: {} (policy_version {version})",
                policies.count
            );
            if let Some(since_ms) = policies.serving_since_unix_ms {
                let _ = write!(out, ", serving for {}", since(now_ms, since_ms));
            }
            let _ = writeln!(out);
        }
        None => {
            let _ = writeln!(out, "policies: none loaded");
        }
    }
    if let Some(reload) = &policies.last_reload {
        let _ = writeln!(
            out,
            "  last reload: {}, {} ago",
            reload.outcome,
            since(now_ms, reload.unix_ms)
        );
    }
    if !policies.last_error.is_empty() {
        let _ = writeln!(out, "  last policy reload rejected:");
        for problem in &policies.last_error {
            let _ = writeln!(out, "    {problem}");
        }
    }
    let snapshots = &report.snapshots;
    let oldest = snapshots
        .oldest_age_ms
        .map(|age| format!(", oldest confirmed {} ago", ago(age)))
        .unwrap_or_default();
    match &report.redis {
        Some(redis) => {
            let _ = writeln!(
                out,
                "snapshots: from Redis ({}), {} cached ({} bytes){oldest}",
                if redis.connected {
                    "connected"
                } else {
                    "NOT CONNECTED"
                },
                redis.cache_entries,
                redis.cache_weight_bytes,
            );
        }
        None => {
            let _ = writeln!(
                out,
                "snapshots: {} tenants from {}{oldest}",
                snapshots.tenants, snapshots.source
            );
        }
    }
    for problem in &snapshots.problems {
        let _ = writeln!(out, "  refused: {problem}");
    }
    if let Some(licenses) = &report.licenses {
        let _ = writeln!(
            out,
            "licenses: {} serving, {} refused{}",
            licenses.serving.len(),
            licenses.refused.len(),
            if licenses.clock_invalid {
                ", CLOCK INVALID"
            } else {
                ""
            }
        );
        for license in &licenses.serving {
            let _ = writeln!(
                out,
                "  {}: {} version {} ({}), expires {}, grace until {} [{}]",
                license.tenant,
                license.license_id,
                license.version,
                license.state,
                crate::license::rfc3339(license.expires_at),
                crate::license::rfc3339(license.grace_ends_at),
                license.file
            );
        }
        for refused in &licenses.refused {
            let _ = writeln!(out, "  refused: {}: {}", refused.file, refused.message);
        }
        for problem in &licenses.key_problems {
            let _ = writeln!(out, "  keys: {problem}");
        }
    }
    match &report.decision_log {
        Some(log) => {
            let _ = writeln!(
                out,
                "decision log: {} queued, {} dropped, {} sampled out",
                log.queued, log.dropped, log.sampled_out
            );
            if let Some(stream) = &log.redis_stream {
                let _ = writeln!(
                    out,
                    "  redis stream {}: {} written, {} failed, {} dropped",
                    stream.key, stream.written, stream.failed, stream.dropped
                );
            }
        }
        None => {
            let _ = writeln!(out, "decision log: off");
        }
    }
    let _ = writeln!(
        out,
        "tracing: {}",
        if report.tracing.exporting {
            "exporting over OTLP"
        } else {
            "not exported"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(ago(850), "850 ms");
        assert_eq!(ago(12_345), "12.3 s");
        assert_eq!(ago(240_000), "4 min");
        assert_eq!(ago(9_000_000), "2.5 h");
    }
}
