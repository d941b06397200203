//! Tenant entitlement snapshots: parsing and validating `{tenant, version,
//! entities}` documents, and the file source (a directory of `<tenant>.json`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cedar_policy::{Entities, EntityUid};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::diagnostics::{describe, FileProblem};
use super::policies::{display_path, list_files, PolicySnapshot};

/// Most levels of parents an entity may have in a snapshot. Cedar computes the
/// transitive closure recursively; far deeper chains would exhaust the stack.
pub const MAX_HIERARCHY_DEPTH: usize = 64;

/// Longest tenant id accepted.
pub const MAX_TENANT_LEN: usize = 128;

/// Where a tenant snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSource {
    /// Read from a `<tenant>.json` file.
    File,
    /// Served from the in-process cache of the Redis source.
    Cache,
    /// Read from Redis for this request.
    Redis,
    /// Served from the cache while Redis could not confirm it current.
    Stale,
}

/// One tenant's entitlements: immutable, validated against the schema of the
/// policy snapshot it was parsed with, shared behind an `Arc`.
pub struct TenantSnapshot {
    /// The tenant id.
    pub tenant: String,
    /// Monotonic version; a lower one never replaces a higher one.
    pub version: u64,
    /// Parsed Cedar entities, including the schema's action entities.
    pub entities: Entities,
    /// `PolicySnapshot::schema_version` these entities were validated against.
    pub schema_version: String,
    /// Parents that the snapshot's entities name but the snapshot does not
    /// define; request-scoped entities may not define them.
    pub undefined_ancestors: HashSet<EntityUid>,
    /// SHA-256 of the document, to skip re-parsing unchanged files.
    pub content_hash: [u8; 32],
    /// When the source last confirmed this snapshot current.
    pub confirmed_at: Instant,
    /// Where it came from.
    pub source: SnapshotSource,
}

impl std::fmt::Debug for TenantSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSnapshot")
            .field("tenant", &self.tenant)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Serving tenant snapshots by tenant id.
pub type TenantMap = HashMap<String, Arc<TenantSnapshot>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotDocument {
    tenant: String,
    version: u64,
    entities: serde_json::Value,
}

/// Why a snapshot document was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a `{tenant, version, entities}` JSON document.
    #[error("line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// The tenant id is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid tenant id `{0}`: {1}")]
    TenantId(String, &'static str),
    /// The document names another tenant than expected.
    #[error("snapshot is for tenant `{found}`, expected `{expected}`")]
    WrongTenant { expected: String, found: String },
    /// The entities do not conform to the schema.
    #[error("entities do not match the schema: {0}")]
    Entities(String),
    /// A chain of parents is deeper than [`MAX_HIERARCHY_DEPTH`].
    #[error("entity `{0}` has parents more than {MAX_HIERARCHY_DEPTH} levels deep")]
    TooDeep(String),
}

/// Checks a tenant id: 1 to 128 characters from `[A-Za-z0-9._-]`.
pub fn check_tenant_id(tenant: &str) -> Result<(), &'static str> {
    if tenant.is_empty() {
        return Err("must not be empty");
    }
    if tenant.len() > MAX_TENANT_LEN {
        return Err("longer than 128 characters");
    }
    if !tenant
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

impl TenantSnapshot {
    /// Parses and validates a snapshot document against `policies.schema`.
    /// `expected_tenant`, when given, must match the document's `tenant`.
    pub fn parse(
        bytes: &[u8],
        expected_tenant: Option<&str>,
        policies: &PolicySnapshot,
        source: SnapshotSource,
    ) -> Result<Self, SnapshotError> {
        let document: SnapshotDocument =
            serde_json::from_slice(bytes).map_err(|error| SnapshotError::Json {
                line: error.line(),
                column: error.column(),
                message: error.to_string(),
            })?;
        check_tenant_id(&document.tenant)
            .map_err(|problem| SnapshotError::TenantId(document.tenant.clone(), problem))?;
        if let Some(expected) = expected_tenant {
            if expected != document.tenant {
                return Err(SnapshotError::WrongTenant {
                    expected: expected.to_string(),
                    found: document.tenant,
                });
            }
        }
        if let Some(entity) = too_deep(&document.entities) {
            return Err(SnapshotError::TooDeep(entity));
        }
        let entities = Entities::from_json_value(document.entities, Some(&policies.schema))
            .map_err(|error| SnapshotError::Entities(describe(&error)))?;
        let mut undefined_ancestors = HashSet::new();
        for entity in entities.iter() {
            for ancestor in entities.ancestors(&entity.uid()).into_iter().flatten() {
                if entities.get(ancestor).is_none() {
                    undefined_ancestors.insert(ancestor.clone());
                }
            }
        }
        Ok(Self {
            tenant: document.tenant,
            version: document.version,
            entities,
            undefined_ancestors,
            schema_version: policies.schema_version.clone(),
            content_hash: Sha256::digest(bytes).into(),
            confirmed_at: Instant::now(),
            source,
        })
    }
}

/// The first entity (as `Type::"id"`) whose chain of parents in the entity
/// JSON is deeper than [`MAX_HIERARCHY_DEPTH`]. Iterative, so that it cannot
/// itself run out of stack; cycles are not followed twice.
fn too_deep(entities: &serde_json::Value) -> Option<String> {
    type Key = (String, String);
    let key = |value: &serde_json::Value| -> Option<Key> {
        let value = value.get("__entity").unwrap_or(value);
        Some((
            value.get("type")?.as_str()?.to_string(),
            value.get("id")?.as_str()?.to_string(),
        ))
    };
    let mut parents: HashMap<Key, Vec<Key>> = HashMap::new();
    for entity in entities.as_array()? {
        let Some(uid) = entity.get("uid").and_then(key) else {
            continue;
        };
        let list = entity
            .get("parents")
            .and_then(serde_json::Value::as_array)
            .map(|list| list.iter().filter_map(key).collect())
            .unwrap_or_default();
        parents.insert(uid, list);
    }
    let keys: Vec<&Key> = parents.keys().collect();
    let mut depth: HashMap<&Key, usize> = HashMap::new();
    let mut on_path: HashSet<&Key> = HashSet::new();
    for root in keys {
        if depth.contains_key(root) {
            continue;
        }
        let mut stack: Vec<(&Key, usize)> = vec![(root, 0)];
        on_path.insert(root);
        while let Some(top) = stack.len().checked_sub(1) {
            let (node, next) = stack[top];
            let children = parents.get(node).map_or(&[][..], Vec::as_slice);
            if let Some(child) = children.get(next) {
                stack[top].1 += 1;
                if let Some((child, _)) = parents.get_key_value(child) {
                    if !depth.contains_key(child) && on_path.insert(child) {
                        stack.push((child, 0));
                    }
                }
                continue;
            }
            let levels = children
                .iter()
                .map(|child| {
                    parents
                        .get_key_value(child)
                        .and_then(|(child, _)| depth.get(child))
                        .map_or(1, |d| d + 1)
                })
                .max()
                .unwrap_or(0);
            if levels > MAX_HIERARCHY_DEPTH {
                return Some(format!("{}::{:?}", node.0, node.1));
            }
            depth.insert(node, levels);
            on_path.remove(node);
            stack.pop();
        }
    }
    None
}

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
    fn parses_entities_with_schema_action_entities() {
        let policies = policies();
        let doc = br#"{"tenant":"acme","version":3,"entities":[{"uid":{"type":"User","id":"alice"},"attrs":{"age":3},"parents":[]}]}"#;
        let snapshot =
            TenantSnapshot::parse(doc, Some("acme"), &policies, SnapshotSource::File).unwrap();
        assert_eq!(snapshot.version, 3);
        assert_eq!(
            snapshot.entities.iter().count(),
            2,
            "alice and Action::\"use\""
        );
    }

    #[test]
    fn rejects_wrong_types_unknown_fields_and_wrong_tenant() {
        let policies = policies();
        let parse = |doc: &str, tenant| {
            TenantSnapshot::parse(doc.as_bytes(), tenant, &policies, SnapshotSource::File)
                .map(|_| ())
                .unwrap_err()
        };
        let error = parse(
            r#"{"tenant":"acme","version":1,"entities":[{"uid":{"type":"User","id":"a"},"attrs":{"age":"old"},"parents":[]}]}"#,
            None,
        );
        assert!(
            matches!(error, SnapshotError::Entities(ref m) if m.contains("age")),
            "{error}"
        );
        let error = parse(
            r#"{"tenant":"acme","version":1,"entities":[],"extra":1}"#,
            None,
        );
        assert!(
            matches!(error, SnapshotError::Json { ref message, .. } if message.contains("extra"))
        );
        let error = parse(
            r#"{"tenant":"acme","version":1,"entities":[]}"#,
            Some("globex"),
        );
        assert_eq!(
            error.to_string(),
            "snapshot is for tenant `acme`, expected `globex`"
        );
        let error = parse(r#"{"tenant":"a{b}","version":1,"entities":[]}"#, None);
        assert!(matches!(error, SnapshotError::TenantId(..)));
    }

    #[test]
    fn refuses_parent_chains_deeper_than_the_limit_without_recursion() {
        let policies =
            PolicySnapshot::from_sources("schema.cedarschema", "entity Group in [Group];", &[])
                .unwrap();
        let chain = |length: usize| {
            let entities: Vec<serde_json::Value> = (0..length)
                .map(|i| {
                    let parents = if i + 1 < length {
                        serde_json::json!([{"type": "Group", "id": format!("g{}", i + 1)}])
                    } else {
                        serde_json::json!([])
                    };
                    serde_json::json!({"uid": {"type": "Group", "id": format!("g{i}")}, "attrs": {}, "parents": parents})
                })
                .collect();
            serde_json::json!({"tenant": "t", "version": 1, "entities": entities}).to_string()
        };
        let ok = TenantSnapshot::parse(
            chain(MAX_HIERARCHY_DEPTH + 1).as_bytes(),
            None,
            &policies,
            SnapshotSource::File,
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
        let error = TenantSnapshot::parse(
            chain(100_000).as_bytes(),
            None,
            &policies,
            SnapshotSource::File,
        )
        .map(|_| ())
        .unwrap_err();
        assert!(matches!(error, SnapshotError::TooDeep(_)), "{error}");
        // A cycle is not followed forever.
        let cycle = r#"{"tenant":"t","version":1,"entities":[
            {"uid":{"type":"Group","id":"a"},"attrs":{},"parents":[{"type":"Group","id":"b"}]},
            {"uid":{"type":"Group","id":"b"},"attrs":{},"parents":[{"type":"Group","id":"a"}]}]}"#;
        let _ = TenantSnapshot::parse(cycle.as_bytes(), None, &policies, SnapshotSource::File);
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
