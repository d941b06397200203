//! Where decisions' data comes from: the policy directory and the tenant
//! entitlement snapshots, loaded, validated and published as one immutable
//! [`Catalog`] that is swapped atomically on reload.

pub mod diagnostics;
pub mod entitlements;
pub mod policies;
pub mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use tracing::{info, warn};

pub use diagnostics::FileProblem;
pub use entitlements::{SnapshotSource, TenantMap, TenantSnapshot};
pub use policies::{PolicyMeta, PolicySnapshot};

/// A consistent pair of policy snapshot and tenant snapshots validated against
/// its schema. Requests read one `Catalog` for their whole life.
#[derive(Debug)]
pub struct Catalog {
    /// The serving policy set.
    pub policies: Arc<PolicySnapshot>,
    /// The serving tenant snapshots.
    pub tenants: Arc<TenantMap>,
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
    entitlement_dir: PathBuf,
    current: ArcSwapOption<Catalog>,
    /// Serialises reloads so that policy and entitlement reloads never race.
    reload_lock: Mutex<ReloadLog>,
}

/// Outcome of the last reload attempts, for status reporting.
#[derive(Debug, Default, Clone)]
pub struct ReloadLog {
    /// The problems that made the last policy reload fail, if it failed.
    pub last_policy_error: Option<Vec<FileProblem>>,
    /// Problems of the last entitlement scan (files skipped or kept at an older snapshot).
    pub last_entitlement_problems: Vec<FileProblem>,
}

impl Store {
    /// A store over two directories; nothing is loaded until [`Store::reload_all`].
    pub fn new(policy_dir: PathBuf, entitlement_dir: PathBuf) -> Self {
        Self {
            policy_dir,
            entitlement_dir,
            current: ArcSwapOption::empty(),
            reload_lock: Mutex::new(ReloadLog::default()),
        }
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

    /// The entitlements directory.
    pub fn entitlement_dir(&self) -> &std::path::Path {
        &self.entitlement_dir
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

    /// Reloads policies and then entitlements.
    pub fn reload_all(&self) -> ReloadOutcome {
        let policies = self.reload_policies();
        let entitlements = self.reload_entitlements();
        match (policies, entitlements) {
            (ReloadOutcome::Rejected(p), _) => ReloadOutcome::Rejected(p),
            (ReloadOutcome::Applied, _) | (_, ReloadOutcome::Applied) => ReloadOutcome::Applied,
            (_, other) => other,
        }
    }

    /// Reloads the policy directory. A set that fails to parse or validate, or
    /// whose new schema would reject a serving tenant snapshot, is refused and
    /// the last good catalog keeps serving.
    pub fn reload_policies(&self) -> ReloadOutcome {
        let mut log = self.lock();
        let loaded = match PolicySnapshot::load_dir(&self.policy_dir) {
            Ok(loaded) => loaded,
            Err(problems) => {
                for problem in &problems {
                    warn!(file = %problem.file, line = problem.line, column = problem.column, error = %problem.message, "policy problem");
                }
                warn!(
                    problems = problems.len(),
                    "policy reload rejected; keeping last valid policy set"
                );
                log.last_policy_error = Some(problems.clone());
                return ReloadOutcome::Rejected(problems);
            }
        };
        let current = self.current.load_full();
        if let Some(current) = &current {
            if current.policies.version == loaded.version {
                log.last_policy_error = None;
                return ReloadOutcome::Unchanged;
            }
        }
        let previous_tenants = current
            .as_ref()
            .map(|c| Arc::clone(&c.tenants))
            .unwrap_or_default();
        let tenants = if current
            .as_ref()
            .is_some_and(|c| c.policies.schema_version == loaded.schema_version)
        {
            previous_tenants
        } else {
            // The schema changed: every serving tenant must still conform.
            let (tenants, problems) =
                entitlements::load_tenant_dir(&self.entitlement_dir, &loaded, &TenantMap::new());
            let (broken, rejected): (Vec<FileProblem>, Vec<FileProblem>) =
                problems.into_iter().partition(|problem| {
                    std::path::Path::new(&problem.file)
                        .file_stem()
                        .and_then(|stem| stem.to_str())
                        .is_some_and(|tenant| previous_tenants.contains_key(tenant))
                });
            if !broken.is_empty() {
                for problem in &broken {
                    warn!(file = %problem.file, error = %problem.message, "snapshot does not conform to the new schema");
                }
                warn!("policy reload rejected: the new schema rejects serving tenant snapshots; keeping last valid policy set");
                log.last_policy_error = Some(broken.clone());
                return ReloadOutcome::Rejected(broken);
            }
            for problem in &rejected {
                warn!(file = %problem.file, line = problem.line, error = %problem.message, "snapshot rejected");
            }
            log.last_entitlement_problems = rejected;
            Arc::new(tenants)
        };
        info!(
            policy_version = %loaded.version,
            policies = loaded.policy_count(),
            tenants = tenants.len(),
            "policy set loaded"
        );
        log.last_policy_error = None;
        self.current.store(Some(Arc::new(Catalog {
            policies: Arc::new(loaded),
            tenants,
        })));
        ReloadOutcome::Applied
    }

    /// Rescans the entitlements directory against the serving policy set. Bad
    /// files keep their tenant's previous snapshot and are reported.
    pub fn reload_entitlements(&self) -> ReloadOutcome {
        let mut log = self.lock();
        let Some(current) = self.current.load_full() else {
            return ReloadOutcome::Unchanged;
        };
        let (tenants, problems) = entitlements::load_tenant_dir(
            &self.entitlement_dir,
            &current.policies,
            &current.tenants,
        );
        for problem in &problems {
            warn!(file = %problem.file, line = problem.line, error = %problem.message, "snapshot rejected; keeping previous snapshot of this tenant");
        }
        log.last_entitlement_problems = problems;
        let unchanged = tenants.len() == current.tenants.len()
            && tenants.iter().all(|(tenant, snapshot)| {
                current
                    .tenants
                    .get(tenant)
                    .is_some_and(|old| Arc::ptr_eq(old, snapshot))
            });
        if unchanged {
            return ReloadOutcome::Unchanged;
        }
        for (tenant, snapshot) in &tenants {
            let old_version = current.tenants.get(tenant).map(|old| old.version);
            if old_version != Some(snapshot.version) {
                info!(tenant = %tenant, version = snapshot.version, previous = ?old_version, "snapshot loaded");
            }
        }
        for tenant in current.tenants.keys().filter(|t| !tenants.contains_key(*t)) {
            info!(tenant = %tenant, "snapshot removed");
        }
        self.current.store(Some(Arc::new(Catalog {
            policies: Arc::clone(&current.policies),
            tenants: Arc::new(tenants),
        })));
        ReloadOutcome::Applied
    }
}
