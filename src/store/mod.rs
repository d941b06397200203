//! Where decisions' data comes from: the policy directory and the tenant
//! entitlement snapshots, loaded, validated and published as one immutable
//! [`Catalog`] that is swapped atomically on reload.

pub mod entitlements;
pub mod redis_client;
pub mod remote;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use tracing::{info, warn};

use tollgate_engine::{
    BuiltinReason, FileProblem, PolicySnapshot, SnapshotSource, TenantMap, TenantSnapshot,
};

use crate::license::clock::{ClockGuard, Now};
use crate::license::set::{Installation, License, LicenseMap, Refused};

/// A consistent pair of policy snapshot and tenant snapshots validated against
/// its schema. Requests read one `Catalog` for their whole life.
#[derive(Debug)]
pub struct Catalog {
    /// The serving policy set.
    pub policies: Arc<PolicySnapshot>,
    /// The serving tenant snapshots.
    pub tenants: Arc<TenantMap>,
    /// The serving licenses (with `licenses` configured).
    pub licenses: Arc<LicenseMap>,
}

/// Where a request's tenant snapshot was found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A snapshot to decide with.
    Found {
        /// The snapshot.
        snapshot: Arc<TenantSnapshot>,
        /// Where it came from for this request.
        source: SnapshotSource,
        /// Time since its source last confirmed it current.
        age: std::time::Duration,
    },
    /// The source, reachable, has no snapshot for the tenant.
    Unknown,
    /// No snapshot could be had, nor one recent enough to serve as stale.
    Unavailable,
    /// A license's snapshot, within the license's time.
    Licensed {
        /// The license.
        license: Arc<License>,
        /// Past its expiry, within its grace.
        in_grace: bool,
    },
    /// The tenant's license cannot serve now: `license_expired` or
    /// `license_clock_invalid`.
    LicenseRefused {
        /// The license.
        license: Arc<License>,
        /// The built-in reason.
        reason: BuiltinReason,
    },
}

impl Lookup {
    /// The snapshot to decide with, when there is one.
    pub fn snapshot(&self) -> Option<&Arc<TenantSnapshot>> {
        match self {
            Self::Found { snapshot, .. } => Some(snapshot),
            Self::Licensed { license, .. } => Some(&license.snapshot),
            Self::Unknown | Self::Unavailable | Self::LicenseRefused { .. } => None,
        }
    }
}

impl Catalog {
    /// The tenant's snapshot from the file source.
    pub fn file_lookup(&self, tenant: &str) -> Lookup {
        match self.tenants.get(tenant) {
            Some(snapshot) => Lookup::Found {
                snapshot: Arc::clone(snapshot),
                source: SnapshotSource::File,
                age: snapshot.confirmed_at.elapsed(),
            },
            None => Lookup::Unknown,
        }
    }

    /// The tenant's license judged at `guard`'s time, `None` when the
    /// tenant has no license.
    pub fn license_lookup(&self, tenant: &str, guard: &ClockGuard) -> Option<Lookup> {
        let license = self.licenses.get(tenant)?;
        let license = Arc::clone(license);
        Some(match guard.now() {
            Now::Backwards { .. } => Lookup::LicenseRefused {
                license,
                reason: BuiltinReason::LicenseClockInvalid,
            },
            Now::Trusted(now_ms) => {
                let now = now_ms.div_euclid(1000);
                if now > license.claims.grace_ends() {
                    Lookup::LicenseRefused {
                        license,
                        reason: BuiltinReason::LicenseExpired,
                    }
                } else {
                    let in_grace = now > license.claims.exp;
                    Lookup::Licensed { license, in_grace }
                }
            }
        })
    }
}

/// Where licenses are read from, and what they are judged by.
#[derive(Debug, Clone)]
pub struct LicenseSettings {
    /// The licenses directory (`*.license`).
    pub dir: PathBuf,
    /// The trusted public keys and `revoked.yaml`.
    pub keys: PathBuf,
    /// This installation, for bound licenses.
    pub installation: Installation,
    /// The clock and its floor.
    pub guard: Arc<ClockGuard>,
    /// Seconds a license's `nbf` may be ahead of the clock.
    pub skew_s: i64,
}

impl LicenseSettings {
    /// Scans the licenses directory against `policies` at the guard's clock,
    /// `previous` being the licenses serving now.
    pub fn scan(
        &self,
        policies: &PolicySnapshot,
        previous: &LicenseMap,
    ) -> crate::license::set::Scan {
        crate::license::set::scan(
            &self.dir,
            &self.keys,
            &self.installation,
            policies,
            previous,
            self.guard.now_ms().div_euclid(1000),
            self.skew_s,
        )
    }
}

/// A serving license's state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LicenseState {
    /// Within its terms.
    Valid,
    /// Past its expiry, within its grace.
    Grace,
    /// Past its grace: checks answer `license_expired`.
    Expired,
    /// The clock cannot be trusted: checks answer `license_clock_invalid`.
    ClockInvalid,
}

impl LicenseState {
    /// Every state, in the order metrics list them.
    pub const ALL: [Self; 4] = [Self::Valid, Self::Grace, Self::Expired, Self::ClockInvalid];

    /// `valid`, `grace`, `expired` or `clock_invalid`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Grace => "grace",
            Self::Expired => "expired",
            Self::ClockInvalid => "clock_invalid",
        }
    }
}

impl Lookup {
    /// The state of the license behind a license lookup, `None` for a
    /// lookup of another source.
    pub fn license_state(&self) -> Option<LicenseState> {
        match self {
            Self::Licensed {
                in_grace: false, ..
            } => Some(LicenseState::Valid),
            Self::Licensed { in_grace: true, .. } => Some(LicenseState::Grace),
            Self::LicenseRefused {
                reason: BuiltinReason::LicenseExpired,
                ..
            } => Some(LicenseState::Expired),
            Self::LicenseRefused { .. } => Some(LicenseState::ClockInvalid),
            Self::Found { .. } | Self::Unknown | Self::Unavailable => None,
        }
    }
}

/// The last scan of the licenses directory.
#[derive(Debug, Default, Clone)]
pub struct LicenseReport {
    /// Files not served, and why.
    pub refused: Vec<Refused>,
    /// Problems of the keys directory.
    pub key_problems: Vec<FileProblem>,
}

impl LicenseReport {
    /// Every problem, for logs, `validate` and `/status`.
    pub fn problems(&self) -> Vec<FileProblem> {
        self.key_problems
            .iter()
            .cloned()
            .chain(self.refused.iter().map(Refused::problem))
            .collect()
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new catalog is serving.
    Applied,
    /// Nothing changed.
    Unchanged,
    /// The reload was refused; the last good catalog keeps serving.
    Rejected(Vec<FileProblem>),
}

impl ReloadOutcome {
    /// `applied`, `unchanged` or `rejected`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Rejected(_) => "rejected",
        }
    }
}

/// File-backed store of policies and entitlements with atomic swaps.
#[derive(Debug)]
pub struct Store {
    policy_dir: PathBuf,
    /// `None` when tenant snapshots come from elsewhere (Redis).
    entitlement_dir: Option<PathBuf>,
    current: ArcSwapOption<Catalog>,
    /// Serialises reloads so that policy and entitlement reloads never race.
    reload_lock: Mutex<ReloadLog>,
    /// Signed licenses, when configured.
    licenses: Option<LicenseSettings>,
}

/// Outcome of the last reload attempts, for status reporting.
#[derive(Debug, Default, Clone)]
pub struct ReloadLog {
    /// The problems that made the last policy reload fail, if it failed.
    pub last_policy_error: Option<Vec<FileProblem>>,
    /// Problems of the last entitlement scan (files skipped or kept at an older snapshot).
    pub last_entitlement_problems: Vec<FileProblem>,
    /// The last scan of the licenses directory.
    pub last_license_report: LicenseReport,
}

impl Store {
    /// A store over two directories; nothing is loaded until [`Store::reload_all`].
    pub fn new(policy_dir: PathBuf, entitlement_dir: PathBuf) -> Self {
        Self {
            policy_dir,
            entitlement_dir: Some(entitlement_dir),
            current: ArcSwapOption::empty(),
            reload_lock: Mutex::new(ReloadLog::default()),
            licenses: None,
        }
    }

    /// Reads signed licenses too, from `settings`' directory.
    pub fn with_licenses(mut self, settings: LicenseSettings) -> Self {
        self.licenses = Some(settings);
        self
    }

    /// The license settings, when licenses are configured.
    pub fn license_settings(&self) -> Option<&LicenseSettings> {
        self.licenses.as_ref()
    }

    /// A store serving a prepared catalog (tests, benches, embedded use).
    pub fn from_catalog(catalog: Catalog) -> Self {
        let store = Self::new(PathBuf::new(), PathBuf::new());
        store.current.store(Some(Arc::new(catalog)));
        store
    }

    /// The serving catalog, or `None` before policies first loaded.
    pub fn catalog(&self) -> Option<Arc<Catalog>> {
        self.current.load_full()
    }

    /// The policy directory.
    pub fn policy_dir(&self) -> &std::path::Path {
        &self.policy_dir
    }

    /// A store of policies only: tenant snapshots come from another source.
    pub fn policies_only(policy_dir: PathBuf) -> Self {
        Self {
            entitlement_dir: None,
            ..Self::new(policy_dir, PathBuf::new())
        }
    }

    /// The entitlements directory, when snapshots come from files.
    pub fn entitlement_dir(&self) -> Option<&std::path::Path> {
        self.entitlement_dir.as_deref()
    }

    fn load_tenants(
        &self,
        policies: &PolicySnapshot,
        previous: &TenantMap,
    ) -> (TenantMap, Vec<FileProblem>) {
        match &self.entitlement_dir {
            Some(dir) => entitlements::load_tenant_dir(dir, policies, previous),
            None => (TenantMap::new(), Vec::new()),
        }
    }

    /// Scans the licenses directory (when configured) against `policies`.
    fn load_licenses(
        &self,
        policies: &PolicySnapshot,
        previous: &LicenseMap,
    ) -> (LicenseMap, LicenseReport) {
        let Some(settings) = &self.licenses else {
            return (LicenseMap::new(), LicenseReport::default());
        };
        let scan = settings.scan(policies, previous);
        if let Some(newest) = scan.licenses.values().map(|l| l.claims.iat).max() {
            settings.guard.raise(newest.saturating_mul(1000));
        }
        (
            scan.licenses,
            LicenseReport {
                refused: scan.refused,
                key_problems: scan.key_problems,
            },
        )
    }

    /// Outcome of the last reloads.
    pub fn reload_log(&self) -> ReloadLog {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadLog> {
        // A panic while holding the lock leaves no partial state behind (the
        // swap is the last step), so a poisoned lock is safe to reuse.
        self.reload_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reloads policies and entitlements and publishes them in one swap.
    pub fn reload_all(&self) -> ReloadOutcome {
        self.reload(true, true)
    }

    /// Reloads the policy directory. A set that fails to parse or validate, or
    /// whose new schema would reject a serving tenant snapshot, is refused and
    /// the last good catalog keeps serving.
    pub fn reload_policies(&self) -> ReloadOutcome {
        self.reload(true, false)
    }

    /// Rescans the entitlements directory against the serving policy set. Bad
    /// files keep their tenant's previous snapshot and are reported.
    pub fn reload_entitlements(&self) -> ReloadOutcome {
        self.reload(false, true)
    }

    /// Builds the next catalog from what is asked to be reloaded and swaps it
    /// in at once, so that no request sees new policies with old snapshots.
    fn reload(&self, policies: bool, entitlements: bool) -> ReloadOutcome {
        let mut log = self.lock();
        let current = self.current.load_full();
        let mut rejected = None;

        let mut candidate = None;
        if policies {
            match PolicySnapshot::load_dir(&self.policy_dir) {
                Ok(mut loaded) => {
                    if let Some(current) = &current {
                        loaded.share_schema_tables(&current.policies);
                    }
                    if current
                        .as_ref()
                        .is_some_and(|c| c.policies.version == loaded.version)
                    {
                        log.last_policy_error = None;
                    } else {
                        candidate = Some(Arc::new(loaded));
                    }
                }
                Err(problems) => {
                    for problem in &problems {
                        warn!(file = %problem.file, line = problem.line, column = problem.column, error = %problem.message, "policy problem");
                    }
                    warn!(
                        problems = problems.len(),
                        "policy reload rejected; keeping last valid policy set"
                    );
                    log.last_policy_error = Some(problems.clone());
                    rejected = Some(problems);
                }
            }
        }

        let previous_tenants = current
            .as_ref()
            .map(|c| Arc::clone(&c.tenants))
            .unwrap_or_default();
        let previous_licenses = current
            .as_ref()
            .map(|c| Arc::clone(&c.licenses))
            .unwrap_or_default();
        let mut next = None;
        if let Some(new_policies) = candidate {
            // Snapshots are parsed against a schema: a new schema re-parses every
            // file, and must not reject a tenant that is serving now.
            let (tenants, problems) = self.load_tenants(&new_policies, &previous_tenants);
            let (licenses, license_report) = self.load_licenses(&new_policies, &previous_licenses);
            let (mut broken, other): (Vec<FileProblem>, Vec<FileProblem>) =
                problems.into_iter().partition(|problem| {
                    Path::new(&problem.file)
                        .file_stem()
                        .and_then(|stem| stem.to_str())
                        .is_some_and(|tenant| {
                            previous_tenants.get(tenant).is_some_and(|old| {
                                old.schema_version != new_policies.schema_version
                            })
                        })
                });
            // Whatever the cause (a file that failed, a directory that could
            // not be listed), no snapshot parsed under another schema may serve
            // with the new policies.
            let mut stale: Vec<&String> = tenants
                .iter()
                .filter(|(_, snapshot)| snapshot.schema_version != new_policies.schema_version)
                .map(|(tenant, _)| tenant)
                .collect();
            // A license kept serving because the new schema refuses its
            // snapshot is as broken as a file.
            let mut stale_licenses: Vec<&License> = licenses
                .values()
                .filter(|license| license.snapshot.schema_version != new_policies.schema_version)
                .map(|license| license.as_ref())
                .collect();
            stale_licenses.sort_by(|a, b| a.file.cmp(&b.file));
            for license in stale_licenses {
                broken.push(FileProblem::new(
                    &license.file,
                    None,
                    format!(
                        "the license of `{}` could not be re-read against the new schema",
                        license.claims.sub
                    ),
                ));
            }
            stale.sort();
            if !stale.is_empty() && broken.is_empty() {
                broken.push(FileProblem::new(
                    &self
                        .entitlement_dir
                        .as_deref()
                        .map(|dir| dir.display().to_string())
                        .unwrap_or_default(),
                    None,
                    format!(
                        "snapshots of {} could not be re-read against the new schema",
                        stale
                            .iter()
                            .map(|tenant| format!("`{tenant}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if broken.is_empty() {
                info!(
                    policy_version = %new_policies.version,
                    policies = new_policies.policy_count(),
                    tenants = tenants.len(),
                    "policy set loaded"
                );
                log.last_policy_error = None;
                log_snapshot_problems(&other);
                log.last_entitlement_problems = other;
                log_license_problems(&license_report);
                log.last_license_report = license_report;
                next = Some((new_policies, tenants, licenses));
            } else {
                for problem in &broken {
                    warn!(file = %problem.file, error = %problem.message, "snapshot does not conform to the new schema");
                }
                warn!("policy reload rejected: the new schema rejects serving tenant snapshots; keeping last valid policy set");
                log.last_policy_error = Some(broken.clone());
                rejected = Some(broken);
            }
        }
        let next = match (next, &current) {
            (Some(next), _) => next,
            (None, None) => {
                return rejected.map_or(ReloadOutcome::Unchanged, ReloadOutcome::Rejected)
            }
            (None, Some(current)) if entitlements => {
                let (tenants, problems) = self.load_tenants(&current.policies, &previous_tenants);
                log_snapshot_problems(&problems);
                log.last_entitlement_problems = problems;
                let (licenses, license_report) =
                    self.load_licenses(&current.policies, &previous_licenses);
                log_license_problems(&license_report);
                log.last_license_report = license_report;
                (Arc::clone(&current.policies), tenants, licenses)
            }
            (None, Some(_)) => {
                return rejected.map_or(ReloadOutcome::Unchanged, ReloadOutcome::Rejected)
            }
        };

        let (next_policies, tenants, licenses) = next;
        let policies_changed = current
            .as_ref()
            .is_none_or(|c| !Arc::ptr_eq(&c.policies, &next_policies));
        let tenants_changed = tenants.len() != previous_tenants.len()
            || tenants.iter().any(|(tenant, snapshot)| {
                previous_tenants
                    .get(tenant)
                    .is_none_or(|old| !Arc::ptr_eq(old, snapshot))
            });
        let licenses_changed = licenses.len() != previous_licenses.len()
            || licenses.iter().any(|(tenant, license)| {
                previous_licenses
                    .get(tenant)
                    .is_none_or(|old| !Arc::ptr_eq(old, license))
            });
        if !policies_changed && !tenants_changed && !licenses_changed {
            return rejected.map_or(ReloadOutcome::Unchanged, ReloadOutcome::Rejected);
        }
        for (tenant, snapshot) in &tenants {
            let old_version = previous_tenants.get(tenant).map(|old| old.version);
            if old_version != Some(snapshot.version) {
                info!(tenant = %tenant, version = snapshot.version, previous = ?old_version, "snapshot loaded");
            }
        }
        for tenant in previous_tenants
            .keys()
            .filter(|t| !tenants.contains_key(*t))
        {
            info!(tenant = %tenant, "snapshot removed");
        }
        for (tenant, license) in &licenses {
            let old = previous_licenses.get(tenant);
            if old.is_none_or(|old| !Arc::ptr_eq(old, license)) {
                info!(
                    tenant = %tenant,
                    license_id = %license.claims.jti,
                    version = license.claims.ver,
                    expires = %crate::license::rfc3339(license.claims.exp),
                    file = %license.file,
                    "license loaded"
                );
            }
        }
        for tenant in previous_licenses
            .keys()
            .filter(|t| !licenses.contains_key(*t))
        {
            info!(tenant = %tenant, "license removed");
        }
        self.current.store(Some(Arc::new(Catalog {
            policies: next_policies,
            tenants: Arc::new(tenants),
            licenses: Arc::new(licenses),
        })));
        rejected.map_or(ReloadOutcome::Applied, ReloadOutcome::Rejected)
    }
}

fn log_license_problems(report: &LicenseReport) {
    for problem in &report.key_problems {
        warn!(file = %problem.file, line = problem.line, error = %problem.message, "license keys problem");
    }
    for refused in &report.refused {
        warn!(file = %refused.file, reason = refused.refusal.code(), error = %refused.refusal, "license refused; the tenant's previous license, if any, serves while it is valid");
    }
}

fn log_snapshot_problems(problems: &[FileProblem]) {
    for problem in problems {
        warn!(file = %problem.file, line = problem.line, error = %problem.message, "snapshot rejected; keeping previous snapshot of this tenant");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_schema_is_refused_when_snapshots_cannot_be_reread() {
        let root = tempfile::tempdir().unwrap();
        let policies = root.path().join("policies");
        let entitlements = root.path().join("entitlements");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::create_dir_all(&entitlements).unwrap();
        std::fs::write(
            policies.join("schema.cedarschema"),
            "entity User; action use appliesTo { principal: User, resource: User };",
        )
        .unwrap();
        std::fs::write(
            entitlements.join("t.json"),
            r#"{"tenant":"t","version":1,"entities":[{"uid":{"type":"User","id":"u"},"attrs":{},"parents":[]}]}"#,
        )
        .unwrap();
        let store = Store::new(policies.clone(), entitlements.clone());
        assert_eq!(store.reload_all(), ReloadOutcome::Applied);
        let serving = store.catalog().unwrap().policies.version.clone();

        // The entitlements directory is gone for a moment while the schema changes.
        std::fs::rename(&entitlements, root.path().join("away")).unwrap();
        std::fs::write(
            policies.join("schema.cedarschema"),
            "entity User; action gated; action use in [gated] appliesTo { principal: User, resource: User };",
        )
        .unwrap();
        let ReloadOutcome::Rejected(problems) = store.reload_policies() else {
            panic!("a new schema must not serve with snapshots parsed under the old one");
        };
        assert!(problems[0].message.contains("`t`"), "{problems:?}");
        assert_eq!(store.catalog().unwrap().policies.version, serving);

        // Once the snapshots can be re-read, the new schema applies.
        std::fs::rename(root.path().join("away"), &entitlements).unwrap();
        assert_eq!(store.reload_policies(), ReloadOutcome::Applied);
        assert_ne!(store.catalog().unwrap().policies.version, serving);
    }

    #[test]
    fn new_schema_is_refused_when_a_serving_license_does_not_fit_it() {
        use crate::license::{issue, IssueRequest, PrivateKey};
        let root = tempfile::tempdir().unwrap();
        let policies = root.path().join("policies");
        let keys = root.path().join("keys");
        let licenses = root.path().join("licenses");
        for dir in [&policies, &keys, &licenses] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let schema = |plan: &str| {
            format!("entity User {{ plan: {plan} }}; action use appliesTo {{ principal: User, resource: User }};")
        };
        std::fs::write(policies.join("schema.cedarschema"), schema("String")).unwrap();
        let key = PrivateKey::generate().unwrap();
        std::fs::write(keys.join("vendor.pem"), key.public_pem().unwrap()).unwrap();
        let snapshot = br#"{"tenant":"t","version":3,"entities":[{"uid":{"type":"User","id":"u"},"attrs":{"plan":"pro"},"parents":[]}]}"#;
        let (token, _) = issue(
            &IssueRequest {
                snapshot,
                id: None,
                issued_at: 1_000,
                not_before: 1_000,
                expires: 4_000_000_000,
                grace: 0,
                bind: std::collections::BTreeMap::new(),
            },
            &PolicySnapshot::load_dir(&policies).unwrap(),
            &key,
        )
        .unwrap();
        std::fs::write(licenses.join("t.license"), token).unwrap();
        let store = Store::policies_only(policies.clone()).with_licenses(LicenseSettings {
            dir: licenses,
            keys,
            installation: Installation::default(),
            guard: Arc::new(ClockGuard::new(|| 2_000_000, 0, None)),
            skew_s: 0,
        });
        assert_eq!(store.reload_all(), ReloadOutcome::Applied);
        let serving = store.catalog().unwrap();
        assert_eq!(serving.licenses["t"].claims.ver, 3);

        std::fs::write(policies.join("schema.cedarschema"), schema("Long")).unwrap();
        let ReloadOutcome::Rejected(problems) = store.reload_policies() else {
            panic!("a schema that refuses a serving license's snapshot must not apply");
        };
        assert!(
            problems.iter().any(|p| p
                .message
                .contains("the license of `t` could not be re-read")),
            "{problems:?}"
        );
        assert_eq!(
            store.catalog().unwrap().policies.version,
            serving.policies.version
        );
    }
}
