//! Loads a policy directory (`schema.cedarschema` + `*.cedar`) into an immutable,
//! strictly validated [`PolicySnapshot`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Effect, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Schema,
    SchemaFragment, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

use crate::diagnostics::FileProblem;
use crate::offers::{Offers, OFFERS_FILE};
use crate::tenant::SchemaTables;

/// File name of the Cedar schema inside a policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// What tollgate knows about one policy beyond its Cedar text: where it came
/// from and the annotations that explain its decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMeta {
    /// The policy id: `@id` where present, else `<file stem>.<index>`.
    pub id: String,
    /// Permit or forbid.
    pub effect: Effect,
    /// The `@code` annotation (machine-readable reason), empty when absent.
    pub code: String,
    /// The `@reason` annotation (human-readable sentence), empty when absent.
    pub reason: String,
    /// Every other annotation, passed through to clients.
    pub annotations: Vec<(String, String)>,
    /// File the policy was read from, relative to the policy directory.
    pub file: String,
    /// 1-based line of the policy's first character in `file`.
    pub line: usize,
}

/// A policy with its condition built once. Cedar rebuilds a policy's whole
/// condition (scope and body joined) every time it evaluates the policy; a
/// decision evaluates these prebuilt conditions instead.
#[derive(Debug, Clone)]
pub struct PreparedPolicy {
    /// Id, effect and annotations.
    pub meta: Arc<PolicyMeta>,
    /// The policy in Cedar's internal form (for its slot environment).
    pub policy: cedar_policy_core::ast::Policy,
    /// Its scope and conditions as one expression.
    pub condition: cedar_policy_core::ast::Expr,
    /// The first tests of `condition` a decision settles without evaluating
    /// it.
    pub guard: crate::guard::Guard,
    /// `condition` compiled without its action scope test, in the slices of
    /// one action, when every part of it compiles.
    pub compiled: Option<crate::compiled::Compiled>,
}

/// The policies of one action, in policy id order, indexed by resource scope:
/// a policy scoped to `resource == E` can only match requests on `E`, and one
/// scoped to `resource is T` (or `is T in ...`) only requests on a `T`. Such a
/// policy is neither satisfied nor evaluated (its scope is checked first and
/// is false, which raises no error) for any other resource, so leaving it out
/// changes no answer; with many per-resource policies the index keeps a
/// decision from scanning them all.
#[derive(Debug, Default)]
pub struct PolicySlice {
    policies: Vec<PreparedPolicy>,
    /// Positions of policies whose resource scope is `any` or `in E`.
    general: Vec<u32>,
    /// Positions of policies scoped to `resource == E`, by `E`.
    by_uid: HashMap<cedar_policy_core::ast::EntityUID, Vec<u32>>,
    /// Positions of policies scoped to `resource is T [in E]`, by `T`.
    by_type: HashMap<cedar_policy_core::ast::EntityType, Vec<u32>>,
}

impl PolicySlice {
    fn new(mut policies: Vec<PreparedPolicy>) -> Self {
        use cedar_policy_core::ast::{EntityReference, PrincipalOrResourceConstraint};
        policies.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
        let mut slice = Self::default();
        for (position, policy) in policies.iter().enumerate() {
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            match policy.policy.resource_constraint().as_inner() {
                PrincipalOrResourceConstraint::Eq(EntityReference::EUID(uid)) => {
                    slice
                        .by_uid
                        .entry(cedar_policy_core::ast::EntityUID::clone(uid))
                        .or_default()
                        .push(position);
                }
                PrincipalOrResourceConstraint::Is(entity_type)
                | PrincipalOrResourceConstraint::IsIn(entity_type, _) => {
                    slice
                        .by_type
                        .entry(cedar_policy_core::ast::EntityType::clone(entity_type))
                        .or_default()
                        .push(position);
                }
                _ => slice.general.push(position),
            }
        }
        slice.policies = policies;
        slice
    }

    /// Every policy of the slice, in policy id order.
    pub fn all(&self) -> &[PreparedPolicy] {
        &self.policies
    }

    /// The policies whose resource scope can match `resource`, in policy id
    /// order (all of them when the resource is unknown).
    pub fn candidates<'a>(
        &'a self,
        resource: Option<&cedar_policy_core::ast::EntityUID>,
    ) -> impl Iterator<Item = &'a PreparedPolicy> + 'a {
        let empty: &[u32] = &[];
        let (by_uid, by_type, general) = match resource {
            Some(resource) => (
                self.by_uid.get(resource).map_or(empty, Vec::as_slice),
                self.by_type
                    .get(resource.entity_type())
                    .map_or(empty, Vec::as_slice),
                self.general.as_slice(),
            ),
            None => (empty, empty, empty),
        };
        let everything = resource.is_none();
        let mut lists = [general, by_uid, by_type];
        let mut next_all = 0usize;
        std::iter::from_fn(move || {
            if everything {
                let policy = self.policies.get(next_all)?;
                next_all += 1;
                return Some(policy);
            }
            // Merge the three sorted position lists.
            let (list, _) = lists
                .iter()
                .enumerate()
                .filter_map(|(index, list)| list.first().map(|first| (index, *first)))
                .min_by_key(|(_, first)| *first)?;
            let position = lists[list][0];
            lists[list] = &lists[list][1..];
            self.policies
                .get(usize::try_from(position).unwrap_or(usize::MAX))
        })
    }
}

/// An immutable, validated policy set with its schema: what every decision
/// reads. Built once per (re)load and shared behind an `Arc`.
pub struct PolicySnapshot {
    /// Hash of the schema and policy texts (first 16 hex digits of SHA-256).
    pub version: String,
    /// Hash of the schema text alone: tenant snapshots are parsed against it.
    pub schema_version: String,
    /// The Cedar schema, used to validate requests and snapshots.
    pub schema: Schema,
    /// The schema in Cedar's JSON form, used to explain invalid contexts.
    pub schema_json: serde_json::Value,
    /// The Cedar policy set, with tollgate's policy ids.
    pub policy_set: PolicySet,
    policies: HashMap<PolicyId, Arc<PolicyMeta>>,
    /// The policies whose action scope can match each declared action.
    policy_sets_by_action: HashMap<EntityUid, PolicySet>,
    /// The same slices, ready for evaluation (see [`PreparedPolicy`]).
    prepared_by_action: HashMap<EntityUid, PolicySlice>,
    /// Every policy, ready for evaluation, for actions outside the slices.
    prepared_all: PolicySlice,
    entity_types: HashMap<String, EntityTypeName>,
    actions: HashMap<String, HashMap<String, EntityUid>>,
    /// Entity uids the policies name where Cedar may read the entity's data:
    /// every decision's slice holds them.
    roots: Vec<cedar_policy_core::ast::EntityUID>,
    /// What the tenant snapshots parsed against this schema share.
    tables: Arc<SchemaTables>,
    /// What the vendor sells (`offers.yaml`), for upgrade hints.
    offers: Option<Arc<Offers>>,
    /// With offers: what each policy's condition reads that an offer could
    /// change, by policy id.
    reads: HashMap<String, PolicyReads>,
}

/// What a policy's condition reads that changes to entities could change:
/// the attribute names it reads (or tests with `has`), and whether it tests
/// membership (`in`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyReads {
    /// Attribute names read or tested, of any entity or record.
    pub attributes: HashSet<smol_str::SmolStr>,
    /// Whether it tests membership.
    pub membership: bool,
}

impl PolicyReads {
    fn of(condition: &cedar_policy_core::ast::Expr) -> Self {
        use cedar_policy_core::ast::{BinaryOp, ExprKind};
        let mut reads = Self::default();
        for expr in condition.subexpressions() {
            match expr.expr_kind() {
                ExprKind::GetAttr { attr, .. } | ExprKind::HasAttr { attr, .. } => {
                    reads.attributes.insert(attr.clone());
                }
                ExprKind::BinaryApp {
                    op: BinaryOp::In, ..
                } => reads.membership = true,
                _ => {}
            }
        }
        reads
    }

    /// Whether changes to the attributes `changed` (and to parents, with
    /// `parents`) can change what the policy's condition evaluates to. When
    /// not, it is satisfied with the changes exactly when it is without.
    pub fn touched_by(&self, changed: &HashSet<smol_str::SmolStr>, parents: bool) -> bool {
        (parents && self.membership) || self.attributes.iter().any(|attr| changed.contains(attr))
    }
}

impl fmt::Debug for PolicySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySnapshot")
            .field("version", &self.version)
            .field("policies", &self.policies.len())
            .finish_non_exhaustive()
    }
}

impl PolicySnapshot {
    /// Metadata of the policy with Cedar id `id`.
    pub fn policy(&self, id: &PolicyId) -> Option<&Arc<PolicyMeta>> {
        self.policies.get(id)
    }

    /// The actions the schema declares.
    pub fn actions_declared(&self) -> impl Iterator<Item = &EntityUid> {
        self.actions.values().flat_map(|ids| ids.values())
    }

    /// The policies that can apply to `action`: those whose action scope can
    /// match it. Deciding against this slice gives Cedar's answer for the whole
    /// set, since a policy whose scope does not match is neither satisfied nor
    /// evaluated. Unknown actions get the whole set.
    pub fn policy_set_for(&self, action: &EntityUid) -> &PolicySet {
        self.policy_sets_by_action
            .get(action)
            .unwrap_or(&self.policy_set)
    }

    /// The policies that can apply to `action`, ready for evaluation and
    /// indexed by their resource scope. Unknown actions get every policy.
    pub fn prepared_for(&self, action: &EntityUid) -> &PolicySlice {
        self.prepared_by_action
            .get(action)
            .unwrap_or(&self.prepared_all)
    }

    /// The entity uids the policies name where Cedar may read the entity's
    /// data (usually none): a decision's slice of the tenant's entities
    /// holds them.
    pub fn roots(&self) -> &[cedar_policy_core::ast::EntityUID] {
        &self.roots
    }

    /// What every tenant snapshot parsed against this snapshot's schema
    /// shares (the schema's action entities, its entity types, and entities'
    /// attribute records).
    pub(crate) fn schema_tables(&self) -> &Arc<SchemaTables> {
        &self.tables
    }

    /// Shares `previous`'s schema tables when both snapshots have the same
    /// schema, so that tenant snapshots parsed against either share their
    /// attribute records. Call before the snapshot serves.
    pub fn share_schema_tables(&mut self, previous: &PolicySnapshot) {
        if self.schema_version == previous.schema_version {
            self.tables = Arc::clone(&previous.tables);
        }
    }

    /// Number of policies in the set.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Every policy's metadata, in no particular order.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<PolicyMeta>> {
        self.policies.values()
    }

    /// The schema's entity type named `name`, without re-parsing the name.
    pub fn entity_type(&self, name: &str) -> Option<&EntityTypeName> {
        self.entity_types.get(name)
    }

    /// The schema's action `type_name::"id"`, if declared.
    pub fn action(&self, type_name: &str, id: &str) -> Option<&EntityUid> {
        self.actions.get(type_name)?.get(id)
    }

    /// Builds a snapshot from in-memory texts: the schema and `(file name, text)`
    /// pairs. Every problem found is returned, each with file and line.
    pub fn from_sources(
        schema_file: &str,
        schema_text: &str,
        policy_files: &[(String, String)],
    ) -> Result<Self, Vec<FileProblem>> {
        let mut problems = Vec::new();
        let schema = match Schema::from_cedarschema_str(schema_text) {
            Ok((schema, _warnings)) => Some(schema),
            Err(error) => {
                problems.push(FileProblem::from_diagnostic(
                    schema_file,
                    schema_text,
                    &error,
                ));
                None
            }
        };

        let mut policy_set = PolicySet::new();
        let mut policies: HashMap<PolicyId, Arc<PolicyMeta>> = HashMap::new();
        let mut file_of_id: HashMap<String, (String, usize)> = HashMap::new();
        // The file each policy came from, as an index into `policy_files`: a
        // file's text is not copied per policy (a file of n policies would
        // take n copies of itself, quadratic in its size).
        let mut file_of_policy: HashMap<PolicyId, usize> = HashMap::new();
        for (file_index, (file, text)) in policy_files.iter().enumerate() {
            let stem = Path::new(file)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or(file)
                .to_string();
            let parsed = match text.parse::<PolicySet>() {
                Ok(parsed) => parsed,
                Err(error) => {
                    problems.push(FileProblem::from_diagnostic(file, text, &error));
                    continue;
                }
            };
            if let Some(template) = parsed.templates().next() {
                problems.push(FileProblem::new(
                    file,
                    None,
                    format!(
                        "policy templates are not supported (template `{}`)",
                        template.id()
                    ),
                ));
                continue;
            }
            let mut ordered: Vec<&Policy> = parsed.policies().collect();
            ordered.sort_by_key(|p| statement_index(p.id()));
            let mut cursor = Cursor::default();
            for policy in ordered {
                let index = statement_index(policy.id());
                let line = policy_line(policy, text, &mut cursor);
                let id = match policy.annotation("id") {
                    Some(id) if !id.is_empty() => id.to_string(),
                    Some(_) => {
                        problems.push(FileProblem::new(
                            file,
                            Some(line),
                            "`@id` annotation must not be empty".to_string(),
                        ));
                        continue;
                    }
                    None => format!("{stem}.{index}"),
                };
                if let Some((other_file, other_line)) = file_of_id.get(&id) {
                    problems.push(FileProblem::new(
                        file,
                        Some(line),
                        format!(
                            "duplicate policy id `{id}`: already used at {other_file}:{other_line}"
                        ),
                    ));
                    continue;
                }
                file_of_id.insert(id.clone(), (file.clone(), line));
                let policy_id = PolicyId::new(&id);
                let meta = PolicyMeta {
                    id: id.clone(),
                    effect: policy.effect(),
                    code: policy.annotation("code").unwrap_or_default().to_string(),
                    reason: policy.annotation("reason").unwrap_or_default().to_string(),
                    annotations: policy
                        .annotations()
                        .filter(|(key, _)| !matches!(*key, "id" | "code" | "reason"))
                        .map(|(key, value)| (key.to_string(), value.to_string()))
                        .collect(),
                    file: file.clone(),
                    line,
                };
                if let Err(error) = policy_set.add(policy.new_id(policy_id.clone())) {
                    problems.push(FileProblem::new(file, Some(line), error.to_string()));
                    continue;
                }
                file_of_policy.insert(policy_id.clone(), file_index);
                policies.insert(policy_id, Arc::new(meta));
            }
        }

        let Some(schema) = schema else {
            return Err(problems);
        };
        {
            // Validate what parsed even when other files did not, so that one
            // run reports every problem.
            let result =
                Validator::new(schema.clone()).validate(&policy_set, ValidationMode::Strict);
            for error in result.validation_errors() {
                let policy_id = error.policy_id();
                let (file, text) = file_of_policy
                    .get(policy_id)
                    .and_then(|index| policy_files.get(*index))
                    .map(|(f, t)| (f.as_str(), t.as_str()))
                    .unwrap_or(("", ""));
                problems.push(FileProblem::from_diagnostic(file, text, error));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        let entity_types = schema
            .entity_types()
            .map(|name| (name.to_string(), name.clone()))
            .collect();
        let mut actions: HashMap<String, HashMap<String, EntityUid>> = HashMap::new();
        for action in schema.actions() {
            actions
                .entry(action.type_name().to_string())
                .or_default()
                .insert(action.id().unescaped().to_string(), action.clone());
        }

        let policy_sets_by_action = slice_by_action(&schema, &policy_set);
        // `action_known`: the slice is of one action, which the action scope
        // of every policy in it matches. A policy is prepared once for the
        // slices of one action and once for the whole set; the slices hold
        // copies that share its condition and compiled form.
        let mut prepared_once: HashMap<(PolicyId, bool), PreparedPolicy> = HashMap::new();
        let mut prepare = |set: &PolicySet, action_known: bool| -> PolicySlice {
            let prepared: Vec<PreparedPolicy> = set
                .policies()
                .filter_map(|policy| {
                    let meta = policies.get(policy.id())?;
                    let prepared = prepared_once
                        .entry((policy.id().clone(), action_known))
                        .or_insert_with(|| {
                            let core: &cedar_policy_core::ast::Policy = policy.as_ref();
                            let condition = core.condition();
                            PreparedPolicy {
                                meta: Arc::clone(meta),
                                guard: crate::guard::Guard::of(&condition),
                                // Only the slices of one action are decided
                                // on (the schema refuses other actions).
                                compiled: if action_known {
                                    crate::compiled::Compiled::for_one_action(&condition)
                                } else {
                                    None
                                },
                                condition,
                                policy: core.clone(),
                            }
                        });
                    Some(prepared.clone())
                })
                .collect();
            PolicySlice::new(prepared)
        };
        let prepared_by_action = policy_sets_by_action
            .iter()
            .map(|(action, set)| (action.clone(), prepare(set, true)))
            .collect();
        let prepared_all = prepare(&policy_set, false);

        let mut digest = Sha256::new();
        digest.update(schema_text.as_bytes());
        digest.update([0]);
        for (file, text) in policy_files {
            // The file name, not its path: the same policies mounted at another
            // path are the same version.
            let name = Path::new(file)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(file);
            digest.update(name.as_bytes());
            digest.update([0]);
            digest.update(text.as_bytes());
            digest.update([0]);
        }
        let version = hex_prefix(&digest.finalize());
        let schema_version = hex_prefix(&Sha256::digest(schema_text.as_bytes()));

        let schema_json = SchemaFragment::from_cedarschema_str(schema_text)
            .ok()
            .and_then(|(fragment, _warnings)| fragment.to_json_value().ok())
            .unwrap_or_default();
        let roots = crate::decide::policy_roots(&policy_set);
        let tables = Arc::new(SchemaTables::of(&schema));
        Ok(PolicySnapshot {
            roots,
            tables,
            version,
            schema_version,
            schema,
            schema_json,
            policy_set,
            policies,
            policy_sets_by_action,
            prepared_by_action,
            prepared_all,
            entity_types,
            actions,
            offers: None,
            reads: HashMap::new(),
        })
    }

    /// This snapshot with the offers of `text` (the file `file`), checked
    /// against its schema; the version then covers them too.
    pub fn with_offers(mut self, file: &str, text: &str) -> Result<Self, Vec<FileProblem>> {
        let offers = Offers::parse(file, text, self.schema.as_ref())?;
        self.reads = self
            .prepared_all
            .all()
            .iter()
            .map(|policy| (policy.meta.id.clone(), PolicyReads::of(&policy.condition)))
            .collect();
        let mut digest = Sha256::new();
        digest.update(self.version.as_bytes());
        digest.update([0]);
        digest.update(OFFERS_FILE.as_bytes());
        digest.update([0]);
        digest.update(text.as_bytes());
        self.version = hex_prefix(&digest.finalize());
        self.offers = Some(Arc::new(offers));
        Ok(self)
    }

    /// The offers declared beside the policies, if any.
    pub fn offers(&self) -> Option<&Arc<Offers>> {
        self.offers.as_ref()
    }

    /// With offers: what the policy `id` reads that an offer could change
    /// (see [`PolicyReads::touched_by`]).
    pub fn policy_reads(&self, id: &str) -> Option<&PolicyReads> {
        self.reads.get(id)
    }

    /// Loads and validates a policy directory. Hidden entries (such as the
    /// `..data` links of a Kubernetes ConfigMap volume) are skipped; symlinks are
    /// followed.
    pub fn load_dir(dir: &Path) -> Result<Self, Vec<FileProblem>> {
        let schema_path = dir.join(SCHEMA_FILE);
        let schema_name = display_path(&schema_path);
        let schema_text = std::fs::read_to_string(&schema_path).map_err(|error| {
            vec![FileProblem::new(
                &schema_name,
                None,
                format!("cannot read schema: {error}"),
            )]
        })?;
        let mut policy_files = Vec::new();
        let mut problems = Vec::new();
        for path in list_files(dir, "cedar").map_err(|error| {
            vec![FileProblem::new(
                &display_path(dir),
                None,
                format!("cannot list policy directory: {error}"),
            )]
        })? {
            match std::fs::read_to_string(&path) {
                Ok(text) => policy_files.push((display_path(&path), text)),
                Err(error) => problems.push(FileProblem::new(
                    &display_path(&path),
                    None,
                    format!("cannot read policy file: {error}"),
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let snapshot = Self::from_sources(&schema_name, &schema_text, &policy_files)?;
        let offers_path = dir.join(OFFERS_FILE);
        match std::fs::read_to_string(&offers_path) {
            Ok(text) => snapshot.with_offers(&display_path(&offers_path), &text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(snapshot),
            Err(error) => Err(vec![FileProblem::new(
                &display_path(&offers_path),
                None,
                format!("cannot read offers: {error}"),
            )]),
        }
    }
}

/// For every action the schema declares, the policies whose action scope can
/// match it (`action`, `action == a`, `action in [g, ...]` with `a` in `g`
/// through the schema's action groups).
fn slice_by_action(schema: &Schema, policy_set: &PolicySet) -> HashMap<EntityUid, PolicySet> {
    let Ok(action_entities) = schema.action_entities() else {
        return HashMap::new();
    };
    let mut slices = HashMap::new();
    for action in schema.actions() {
        let mut slice = PolicySet::new();
        for policy in policy_set.policies() {
            let applies = match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(only) => &only == action,
                ActionConstraint::In(groups) => groups
                    .iter()
                    .any(|group| group == action || action_entities.is_ancestor_of(group, action)),
            };
            // Adding a policy with a fresh id to a new set cannot clash.
            if applies && slice.add(policy.clone()).is_err() {
                return HashMap::new();
            }
        }
        slices.insert(action.clone(), slice);
    }
    slices
}

/// Lists the entries of `dir` with extension `ext` that are not directories
/// (files, symlinks to them, dangling symlinks), sorted by name, skipping
/// hidden entries.
pub fn list_files(dir: &Path, ext: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden || path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        // Anything but a directory is listed, including a symlink whose target
        // is missing: reading it then fails loudly instead of the file being
        // silently left out of the set.
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A path as shown in messages.
pub fn display_path(path: &Path) -> String {
    path.display().to_string()
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Cedar names the statements of a parsed text `policy0`, `policy1`, ...
fn statement_index(id: &PolicyId) -> usize {
    id.to_string()
        .strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Where the search for the next statement of a file starts: the end of the
/// previous one, and the 1-based line of that point.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    offset: usize,
    line: usize,
}

impl Default for Cursor {
    fn default() -> Self {
        Self { offset: 0, line: 1 }
    }
}

/// 1-based line where `policy` starts in `text`, searching from `cursor` (the
/// end of the previous statement) so that identical statements map in order.
/// Lines are counted from the cursor on, so that a file's statements cost one
/// pass over it in all (counting from the start of the file for each
/// statement made loading a file of n policies quadratic in n).
fn policy_line(policy: &Policy, text: &str, cursor: &mut Cursor) -> usize {
    // A parsed policy displays as its verbatim source text.
    let own = policy.to_string();
    let own = own.trim();
    let Some(rest) = text.get(cursor.offset..) else {
        return 1;
    };
    match rest.find(own) {
        Some(found) => {
            let line = cursor.line + newlines(&rest[..found]);
            *cursor = Cursor {
                offset: cursor.offset + found + own.len(),
                line: line + newlines(own),
            };
            line
        }
        None => 1,
    }
}

fn newlines(text: &str) -> usize {
    text.bytes().filter(|byte| *byte == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
        entity User;
        entity Feature;
        action use appliesTo { principal: User, resource: Feature };
    "#;

    fn load(files: &[(&str, &str)]) -> Result<PolicySnapshot, Vec<FileProblem>> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        PolicySnapshot::from_sources("schema.cedarschema", SCHEMA, &files)
    }

    #[test]
    fn ids_come_from_annotation_or_file_stem_and_index() {
        let snapshot = load(&[(
            "plans.cedar",
            "permit(principal, action, resource);\n@id(\"named\")\nforbid(principal, action, resource);\npermit(principal, action, resource);",
        )])
        .unwrap();
        let mut ids: Vec<&str> = snapshot.policies().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["named", "plans.0", "plans.2"]);
        let named = snapshot.policy(&PolicyId::new("named")).unwrap();
        assert_eq!(named.line, 2);
        assert_eq!(named.effect, Effect::Forbid);
    }

    #[test]
    fn lines_of_identical_and_multi_line_statements() {
        let text = "// header\npermit(principal, action, resource);\n\n@id(\"two\")\npermit (\n  principal,\n  action,\n  resource\n);\npermit(principal, action, resource);\n\n\npermit(principal, action, resource); permit(principal, action, resource);\n";
        let snapshot = load(&[("p.cedar", text)]).unwrap();
        let line = |id: &str| snapshot.policy(&PolicyId::new(id)).unwrap().line;
        assert_eq!(line("p.0"), 2);
        assert_eq!(line("two"), 4);
        assert_eq!(line("p.2"), 10);
        assert_eq!(line("p.3"), 13);
        assert_eq!(line("p.4"), 13);
    }

    #[test]
    fn duplicate_id_is_a_load_error_naming_both_places() {
        let problems = load(&[
            (
                "a.cedar",
                "@id(\"x\")\npermit(principal, action, resource);",
            ),
            (
                "b.cedar",
                "\n\n@id(\"x\")\nforbid(principal, action, resource);",
            ),
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].file, "b.cedar");
        assert_eq!(problems[0].line, Some(3));
        assert!(problems[0].message.contains("duplicate policy id `x`"));
        assert!(problems[0].message.contains("a.cedar:1"));
    }

    #[test]
    fn syntax_and_validation_errors_carry_file_and_line() {
        let problems = load(&[
            (
                "bad.cedar",
                "permit(principal, action, resource)\nwhen { principal.nope == 1 };\n",
            ),
            ("syntax.cedar", "\npermit(principal action, resource);"),
        ])
        .unwrap_err();
        // Both files' problems are reported in one run.
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].file, "syntax.cedar");
        assert_eq!(problems[0].line, Some(2));
        assert_eq!(problems[1].file, "bad.cedar");
        assert_eq!(problems[1].line, Some(2));

        let problems = load(&[(
            "bad.cedar",
            "permit(principal, action, resource)\nwhen { principal.nope == 1 };\n",
        )])
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, "bad.cedar");
        assert_eq!(problems[0].line, Some(2));
        assert!(
            problems[0].message.contains("nope"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn slices_by_action_follow_scopes_and_action_groups() {
        let files = vec![(
            "p.cedar".to_string(),
            r#"
            @id("any") permit(principal, action, resource);
            @id("view-only") permit(principal, action == Action::"view", resource);
            @id("reads") permit(principal, action in Action::"read", resource);
            @id("list") permit(principal, action in [Action::"edit", Action::"view"], resource);
            "#
            .to_string(),
        )];
        let schema = r#"
            entity User;
            action read;
            action view in [read] appliesTo { principal: User, resource: User };
            action edit appliesTo { principal: User, resource: User };
        "#;
        let snapshot = PolicySnapshot::from_sources("schema.cedarschema", schema, &files).unwrap();
        let ids = |action: &str| {
            let uid: EntityUid = format!("Action::\"{action}\"").parse().unwrap();
            let mut ids: Vec<String> = snapshot
                .policy_set_for(&uid)
                .policies()
                .map(|p| p.id().to_string())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(ids("view"), ["any", "list", "reads", "view-only"]);
        assert_eq!(ids("edit"), ["any", "list"]);
        assert_eq!(ids("read"), ["any", "reads"]);
    }

    #[test]
    fn a_decision_considers_only_policies_whose_resource_scope_can_match() {
        let files = vec![(
            "p.cedar".to_string(),
            r#"
            @id("a-any") permit(principal, action, resource);
            @id("b-doc1") permit(principal, action, resource == Doc::"1");
            @id("c-doc2") forbid(principal, action, resource == Doc::"2");
            @id("d-docs") permit(principal, action, resource is Doc);
            @id("e-folders") permit(principal, action, resource is Folder);
            @id("f-in") permit(principal, action, resource in Folder::"f");
            @id("g-doc-in") permit(principal, action, resource is Doc in Folder::"f");
            "#
            .to_string(),
        )];
        let schema = r#"
            entity User;
            entity Folder;
            entity Doc in [Folder];
            action read appliesTo { principal: User, resource: [Doc, Folder] };
        "#;
        let snapshot = PolicySnapshot::from_sources("schema.cedarschema", schema, &files).unwrap();
        let read: EntityUid = r#"Action::"read""#.parse().unwrap();
        let slice = snapshot.prepared_for(&read);
        let ids = |resource: Option<&str>| {
            let uid: Option<EntityUid> = resource.map(|r| r.parse().unwrap());
            let core = uid
                .as_ref()
                .map(|u| -> &cedar_policy_core::ast::EntityUID { u.as_ref() });
            slice
                .candidates(core)
                .map(|p| p.meta.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(Some(r#"Doc::"1""#)),
            ["a-any", "b-doc1", "d-docs", "f-in", "g-doc-in"]
        );
        assert_eq!(
            ids(Some(r#"Doc::"2""#)),
            ["a-any", "c-doc2", "d-docs", "f-in", "g-doc-in"]
        );
        assert_eq!(ids(Some(r#"Folder::"f""#)), ["a-any", "e-folders", "f-in"]);
        assert_eq!(ids(None).len(), 7);
        assert_eq!(slice.all().len(), 7);
    }

    #[test]
    fn version_changes_with_any_text() {
        let a = load(&[("a.cedar", "permit(principal, action, resource);")]).unwrap();
        let b = load(&[("a.cedar", "forbid(principal, action, resource);")]).unwrap();
        let a2 = load(&[("a.cedar", "permit(principal, action, resource);")]).unwrap();
        assert_ne!(a.version, b.version);
        assert_eq!(a.version, a2.version);
        assert_eq!(a.schema_version, b.schema_version);
        assert_eq!(a.version.len(), 16);
    }
}
