//! The file source of tenant snapshots: a directory of `<tenant>.json`
//! documents, each parsed by the engine ([`TenantSnapshot::parse`]).

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tollgate_engine::policies::{display_path, list_files};
use tollgate_engine::{
    FileProblem, PolicySnapshot, SnapshotError, SnapshotSource, TenantMap, TenantSnapshot,
};

/// Loads every `<tenant>.json` in `dir` against `policies`.
///
/// Unchanged files reuse their snapshot from `previous`; a file that fails to
/// parse or validate, or whose version would go backwards, keeps the previous
/// snapshot of that tenant (if any) and is reported. A tenant whose file is gone
/// is dropped.
pub fn load_tenant_dir(
    dir: &Path,
    policies: &PolicySnapshot,
    previous: &TenantMap,
) -> (TenantMap, Vec<FileProblem>) {
    let mut tenants = TenantMap::new();
    let mut problems = Vec::new();
    let files = match list_files(dir, "json") {
        Ok(files) => files,
        Err(error) => {
            problems.push(FileProblem::new(
                &display_path(dir),
                None,
                format!("cannot list entitlements directory: {error}"),
            ));
            // Keep serving what we had: a directory that vanished for a moment
            // must not drop every tenant.
            return (previous.clone(), problems);
        }
    };
    for path in files {
        let file = display_path(&path);
        let Some(tenant) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let old = previous.get(tenant);
        let keep_old = |tenants: &mut TenantMap| {
            if let Some(old) = old {
                tenants.insert(tenant.to_string(), Arc::clone(old));
            }
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                problems.push(FileProblem::new(
                    &file,
                    None,
                    format!("cannot read: {error}"),
                ));
                keep_old(&mut tenants);
                continue;
            }
        };
        if let Some(old) = old {
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            if old.content_hash == hash && old.schema_version == policies.schema_version {
                tenants.insert(tenant.to_string(), Arc::clone(old));
                continue;
            }
        }
        let snapshot =
            match TenantSnapshot::parse(&bytes, Some(tenant), policies, SnapshotSource::File) {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    let line = match &error {
                        SnapshotError::Json { line, .. } => Some(*line),
                        _ => None,
                    };
                    problems.push(FileProblem::new(&file, line, error.to_string()));
                    keep_old(&mut tenants);
                    continue;
                }
            };
        if let Some(old) = old {
            let content_changed = old.content_hash != snapshot.content_hash;
            if snapshot.version < old.version
                || (snapshot.version == old.version && content_changed)
            {
                let problem = if snapshot.version < old.version {
                    format!(
                        "version {} is older than the serving version {}; versions never go backwards",
                        snapshot.version, old.version
                    )
                } else {
                    format!(
                        "content changed but version {} was not increased",
                        snapshot.version
                    )
                };
                problems.push(FileProblem::new(&file, None, problem));
                keep_old(&mut tenants);
                continue;
            }
        }
        tenants.insert(tenant.to_string(), Arc::new(snapshot));
    }
    (tenants, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> PolicySnapshot {
        PolicySnapshot::from_sources(
            "schema.cedarschema",
            "entity User { age: Long }; entity Feature; action use appliesTo { principal: User, resource: Feature };",
            &[],
        )
        .unwrap()
    }

    #[test]
    fn tenant_dir_keeps_old_snapshot_on_bad_file_and_refuses_older_versions() {
        let dir = tempfile::tempdir().unwrap();
        let policies = policies();
        let write = |version: u64, age: &str| {
            std::fs::write(
                dir.path().join("acme.json"),
                format!(r#"{{"tenant":"acme","version":{version},"entities":[{{"uid":{{"type":"User","id":"a"}},"attrs":{{"age":{age}}},"parents":[]}}]}}"#),
            )
            .unwrap();
        };
        write(2, "1");
        let (tenants, problems) = load_tenant_dir(dir.path(), &policies, &TenantMap::new());
        assert!(problems.is_empty());
        assert_eq!(tenants["acme"].version, 2);

        write(3, "\"bad\"");
        let (tenants, problems) = load_tenant_dir(dir.path(), &policies, &tenants);
        assert_eq!(problems.len(), 1);
        assert_eq!(tenants["acme"].version, 2);

        write(1, "5");
        let (tenants, problems) = load_tenant_dir(dir.path(), &policies, &tenants);
        assert!(problems[0]
            .message
            .contains("older than the serving version 2"));
        assert_eq!(tenants["acme"].version, 2);

        write(2, "6");
        let (tenants, problems) = load_tenant_dir(dir.path(), &policies, &tenants);
        assert!(problems[0].message.contains("not increased"));

        write(4, "7");
        let (tenants, problems) = load_tenant_dir(dir.path(), &policies, &tenants);
        assert!(problems.is_empty());
        assert_eq!(tenants["acme"].version, 4);

        std::fs::remove_file(dir.path().join("acme.json")).unwrap();
        let (tenants, problems) = load_tenant_dir(dir.path(), &policies, &tenants);
        assert!(problems.is_empty());
        assert!(tenants.is_empty());
    }
}
