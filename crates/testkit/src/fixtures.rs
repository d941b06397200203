//! The repository's example data: the shipped policy catalog (`policies/`)
//! and tenant snapshots (`entitlements/`), copies of them in a temporary
//! directory, files replaced as an editor would, and example snapshot
//! documents to edit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tempfile::TempDir;
use tollgate::config::Config;

/// The repository's root directory (two levels above this crate).
pub fn repository() -> &'static Path {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.ancestors().nth(2).unwrap_or(kit)
}

/// The repository's example policy directory.
pub fn example_policies() -> PathBuf {
    repository().join("policies")
}

/// The repository's example entitlements directory.
pub fn example_entitlements() -> PathBuf {
    repository().join("entitlements")
}

/// Policies and tenant snapshots the shipped catalog holds, counted from the
/// files, so that tests follow the catalog as it grows.
pub fn example_counts() -> (usize, usize) {
    let policies = tollgate_engine::PolicySnapshot::load_dir(&example_policies())
        .expect("the shipped catalog loads")
        .policy_count();
    let tenants = std::fs::read_dir(example_entitlements())
        .expect("entitlements directory")
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    (policies, tenants)
}

/// The example policies, loaded.
pub fn policies() -> tollgate_engine::PolicySnapshot {
    tollgate_engine::PolicySnapshot::load_dir(&example_policies()).expect("example policies load")
}

/// A tempdir holding copies of the example `policies/` and `entitlements/`.
pub struct DataDirs {
    pub root: TempDir,
    pub policies: PathBuf,
    pub entitlements: PathBuf,
}

impl DataDirs {
    /// Copies the examples into a fresh tempdir.
    pub fn copy_examples() -> Self {
        let root = tempfile::tempdir().expect("create tempdir");
        let policies = root.path().join("policies");
        let entitlements = root.path().join("entitlements");
        copy_dir(&example_policies(), &policies);
        copy_dir(&example_entitlements(), &entitlements);
        Self {
            root,
            policies,
            entitlements,
        }
    }

    /// A config serving these directories, reloading quickly after changes.
    pub fn config(&self) -> Config {
        let mut config = Config::with_dirs(self.policies.clone(), self.entitlements.clone());
        config.reload_debounce = Duration::from_millis(50);
        config
    }
}

/// Copies the regular files (not the subdirectories) of `from` into the
/// directory `to`, created if missing.
pub fn try_copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to)
        .map_err(|error| format!("cannot create {}: {error}", to.display()))?;
    let entries = std::fs::read_dir(from)
        .map_err(|error| format!("cannot read {}: {error}", from.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|error| format!("cannot read {}: {error}", from.display()))?
            .path();
        if let (true, Some(name)) = (path.is_file(), path.file_name()) {
            std::fs::copy(&path, to.join(name))
                .map_err(|error| format!("cannot copy {}: {error}", path.display()))?;
        }
    }
    Ok(())
}

/// [`try_copy_dir`], panicking on an error.
pub fn copy_dir(from: &Path, to: &Path) {
    try_copy_dir(from, to).unwrap_or_else(|error| panic!("{error}"));
}

/// Replaces `path` atomically: writes a hidden temporary file next to it (hidden
/// files are never loaded) and renames it over `path`.
pub fn replace_file(path: &Path, contents: &str) {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = path.parent().expect("file has a parent directory");
    let name = path.file_name().expect("file name").to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temporary = dir.join(format!(".{name}.tmp{n}"));
    std::fs::write(&temporary, contents).expect("write temporary file");
    std::fs::rename(&temporary, path).expect("rename temporary file into place");
}

/// Reads a file to a string.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read file")
}

/// The example snapshot of `tenant` (`entitlements/<tenant>.json`) at
/// `version`, edited by `edit`.
pub fn document(tenant: &str, version: u64, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let text = read(&example_entitlements().join(format!("{tenant}.json")));
    let mut value: serde_json::Value =
        serde_json::from_str(&text).expect("example snapshot is JSON");
    value["version"] = version.into();
    edit(&mut value);
    value.to_string()
}

/// The entity `Type::"id"` of a snapshot document.
pub fn entity<'a>(
    value: &'a mut serde_json::Value,
    type_name: &str,
    id: &str,
) -> &'a mut serde_json::Value {
    value["entities"]
        .as_array_mut()
        .expect("entities")
        .iter_mut()
        .find(|e| e["uid"]["type"] == type_name && e["uid"]["id"] == id)
        .unwrap_or_else(|| panic!("no {type_name}::{id:?} in the snapshot"))
}

/// A decision service over `policies` and the tenant snapshots `tenants`
/// (the file source's catalog, no reloads), with the default options and
/// limits: what the in-process benchmarks decide with.
pub fn file_service(
    policies: &std::sync::Arc<tollgate_engine::PolicySnapshot>,
    tenants: impl IntoIterator<Item = std::sync::Arc<tollgate_engine::TenantSnapshot>>,
) -> tollgate::decide::DecisionService {
    let tenants: tollgate_engine::TenantMap = tenants
        .into_iter()
        .map(|tenant| (tenant.tenant.clone(), tenant))
        .collect();
    tollgate::decide::DecisionService::new(
        std::sync::Arc::new(tollgate::store::Store::from_catalog(
            tollgate::store::Catalog {
                policies: std::sync::Arc::clone(policies),
                tenants: std::sync::Arc::new(tenants),
                licenses: Default::default(),
            },
        )),
        tollgate_engine::Options::default(),
        tollgate::decide::Limits::default(),
    )
}
