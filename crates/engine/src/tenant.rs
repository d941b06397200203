//! Tenant entitlement snapshots: parsing and validating `{tenant, version,
//! entities}` documents, and the file source (a directory of `<tenant>.json`).
//!
//! A parsed snapshot keeps its entities compact ([`TenantEntities`], about
//! 80 bytes per entity where Cedar's `Entities` take 2.5 KB); a decision
//! builds the few Cedar entities it can reach ([`EntitySlice`]).
//! `benches/memory.md` has the measurements.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use cedar_policy::{Entities, EntityUid};
use cedar_policy_core::ast::{
    Eid, Entity as CoreEntity, EntityType, EntityUID, Literal, PartialValue, Value, ValueKind,
};
use cedar_policy_core::entities::{
    Entities as CoreEntities, NoEntitiesSchema, Schema as _, TCComputation,
};
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::pst::SmolStr;
use cedar_policy_core::validator::{CoreSchema, ValidatorSchema};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::diagnostics::describe;
use crate::policies::PolicySnapshot;

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
    /// Carried by a signed license, verified when it was read.
    License,
}

/// One tenant's entitlements: immutable, validated against the schema of the
/// policy snapshot it was parsed with, shared behind an `Arc`.
pub struct TenantSnapshot {
    /// The tenant id.
    pub tenant: String,
    /// Monotonic version; a lower one never replaces a higher one.
    pub version: u64,
    /// The snapshot's entities, kept compact; with the schema's action
    /// entities they are what Cedar parsed (see [`TenantEntities`]).
    pub entities: TenantEntities,
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
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// The JSON parser's message.
        message: String,
    },
    /// The tenant id is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid tenant id `{0}`: {1}")]
    TenantId(String, &'static str),
    /// The document names another tenant than expected.
    #[error("snapshot is for tenant `{found}`, expected `{expected}`")]
    WrongTenant {
        /// The tenant the caller expected (the file's name, the request's).
        expected: String,
        /// The tenant the document names.
        found: String,
    },
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
        // Cedar validates the entities and computes their ancestors; what it
        // built is then copied into the compact form and dropped.
        let parsed = Entities::from_json_value(document.entities, Some(&policies.schema))
            .map_err(|error| SnapshotError::Entities(describe(&error)))?;
        let mut undefined_ancestors = HashSet::new();
        for entity in parsed.iter() {
            for ancestor in parsed.ancestors(&entity.uid()).into_iter().flatten() {
                if parsed.get(ancestor).is_none() {
                    undefined_ancestors.insert(ancestor.clone());
                }
            }
        }
        let entities = TenantEntities::from_parsed(&parsed, Arc::clone(policies.schema_tables()))?;
        drop(parsed);
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

    /// Estimated bytes of memory the snapshot holds on its own: the struct,
    /// its strings and its compact entities, without what it shares with
    /// other snapshots (attribute records first created by another snapshot,
    /// the schema's action entities). The Redis source's cache weighs
    /// snapshots with it.
    pub fn memory_bytes(&self) -> usize {
        ARC_HEADER_BYTES
            + std::mem::size_of::<Self>()
            + heap_string_bytes(self.tenant.len())
            + heap_string_bytes(self.schema_version.len())
            + self.undefined_ancestors.len() * (std::mem::size_of::<EntityUid>() + 16)
            + self.entities.own_bytes
    }
}

// ---------------------------------------------------------------------------
// Compact entities

/// Bytes of an `Arc`'s counters in front of its value.
const ARC_HEADER_BYTES: usize = 16;

/// Memory of one entity in Cedar's own `Entities`, for a snapshot whose
/// decisions read its whole view: measured at 2.6 to 2.8 KB per entity for
/// acme-shaped tenants (`benches/memory.md`).
const CEDAR_BYTES_PER_ENTITY: usize = 2_700;

/// Entities that one entity's data may reach (transitively) before its
/// snapshot counts as wide.
const WIDE_REACH: usize = 64;

/// Heap bytes of a `String` or `Box<str>` of `len` bytes (allocator rounding
/// included, roughly).
fn heap_string_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.next_multiple_of(16)
    }
}

/// What every snapshot parsed against one schema shares: the schema's action
/// entities, which Cedar puts into every snapshot parsed with the schema, the
/// schema's entity types, which a snapshot's entities name by position, and
/// the attribute records that entities with equal data share. A policy
/// snapshot holds them ([`PolicySnapshot::share_schema_tables`] hands them
/// on to the next one of the same schema).
pub(crate) struct SchemaTables {
    /// Entity types of the schema and types of its actions, sorted.
    types: Box<[EntityType]>,
    /// The schema's action entities, as Cedar built them.
    actions: HashMap<EntityUID, Arc<CoreEntity>>,
    /// Attribute records shared between entities, by content.
    records: Mutex<RecordTable>,
}

impl std::fmt::Debug for SchemaTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaTables")
            .field("types", &self.types.len())
            .field("actions", &self.actions.len())
            .finish_non_exhaustive()
    }
}

impl SchemaTables {
    /// The tables of `schema`.
    pub(crate) fn of(schema: &cedar_policy::Schema) -> Self {
        let schema: &ValidatorSchema = schema.as_ref();
        let actions: HashMap<EntityUID, Arc<CoreEntity>> = CoreSchema::new(schema)
            .action_entities()
            .map(|entity| (entity.uid().clone(), entity))
            .collect();
        let mut types: Vec<EntityType> = schema
            .entity_types()
            .map(|entity_type| entity_type.name().clone())
            .chain(actions.keys().map(|uid| uid.entity_type().clone()))
            .collect();
        types.sort();
        types.dedup();
        Self {
            types: types.into_boxed_slice(),
            actions,
            records: Mutex::new(RecordTable {
                records: HashMap::new(),
                live: 0,
            }),
        }
    }

    fn type_index(&self, entity_type: &EntityType) -> Option<u32> {
        let index = self.types.binary_search(entity_type).ok()?;
        u32::try_from(index).ok()
    }

    /// The shared record equal to `record`, or `record` itself when there
    /// is none; `true` when the record is new (its memory is the caller's).
    fn intern(&self, record: Record) -> (Arc<Record>, bool) {
        if !record.shareable() {
            return (Arc::new(record), true);
        }
        let code = record.hash_code();
        let mut table = self
            .records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = table.records.get(&code).and_then(Weak::upgrade) {
            if *existing == record {
                return (existing, false);
            }
            // Another record with the same hash: keep this one apart.
            return (Arc::new(record), true);
        }
        let record = Arc::new(record);
        table.records.insert(code, Arc::downgrade(&record));
        if table.records.len() >= 2 * table.live + 1024 {
            table.records.retain(|_, record| record.strong_count() > 0);
            table.live = table.records.len();
        }
        (record, true)
    }
}

/// The attributes and tags of an entity, each in name order. Entities with
/// equal attributes and tags share one record: the product catalog that every
/// tenant's snapshot repeats is kept once, and so are the attributes that all
/// users of one account have in common.
#[derive(PartialEq)]
struct Record {
    attrs: Box<[Field]>,
    tags: Box<[Field]>,
}

/// An attribute or tag: its name and value.
type Field = (SmolStr, Value);

impl Record {
    /// Bytes of the record and what its values hold (estimate).
    fn memory_bytes(&self) -> usize {
        let entry = std::mem::size_of::<Field>();
        ARC_HEADER_BYTES
            + std::mem::size_of::<Self>()
            + self
                .attrs
                .iter()
                .chain(self.tags.iter())
                .map(|(name, value)| entry + smol_heap_bytes(name) + value_heap_bytes(value))
                .sum::<usize>()
    }

    /// Whether records equal to this one may be shared. Extension values
    /// are not shared: two equal ones (`decimal("1.0")`, `decimal("1.00")`)
    /// may still print differently.
    fn shareable(&self) -> bool {
        fn plain(value: &Value) -> bool {
            match value.value_kind() {
                ValueKind::Lit(_) => true,
                ValueKind::Set(set) => set.iter().all(plain),
                ValueKind::Record(record) => record.values().all(plain),
                ValueKind::ExtensionValue(_) => false,
            }
        }
        self.attrs
            .iter()
            .chain(self.tags.iter())
            .all(|(_, value)| plain(value))
    }

    fn hash_code(&self) -> u64 {
        fn hash_value(value: &Value, hasher: &mut impl Hasher) {
            match value.value_kind() {
                ValueKind::Lit(literal) => {
                    0u8.hash(hasher);
                    literal.hash(hasher);
                }
                ValueKind::Set(set) => {
                    1u8.hash(hasher);
                    set.len().hash(hasher);
                    for element in set.iter() {
                        hash_value(element, hasher);
                    }
                }
                ValueKind::Record(record) => {
                    2u8.hash(hasher);
                    record.len().hash(hasher);
                    for (name, value) in record.iter() {
                        name.hash(hasher);
                        hash_value(value, hasher);
                    }
                }
                ValueKind::ExtensionValue(_) => 3u8.hash(hasher),
            }
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for list in [&self.attrs, &self.tags] {
            list.len().hash(&mut hasher);
            for (name, value) in list.iter() {
                name.hash(&mut hasher);
                hash_value(value, &mut hasher);
            }
        }
        hasher.finish()
    }
}

/// Heap bytes of a `SmolStr` (short ones are inline).
fn smol_heap_bytes(text: &SmolStr) -> usize {
    if text.is_heap_allocated() {
        ARC_HEADER_BYTES + heap_string_bytes(text.len())
    } else {
        0
    }
}

/// Heap bytes a Cedar value holds (estimate: B-tree nodes, hash tables and
/// `Arc`s as `std` lays them out).
fn value_heap_bytes(value: &Value) -> usize {
    let value_size = std::mem::size_of::<Value>();
    match value.value_kind() {
        ValueKind::Lit(Literal::String(text)) => smol_heap_bytes(text),
        ValueKind::Lit(Literal::EntityUID(uid)) => {
            ARC_HEADER_BYTES
                + std::mem::size_of::<EntityUID>()
                + smol_heap_bytes(&SmolStr::new(uid.eid().as_ref()))
        }
        ValueKind::Lit(_) => 0,
        ValueKind::Set(set) => {
            let elements = set.len();
            // B-tree leaves of up to 11 elements, plus the internal nodes.
            let leaves = elements.div_ceil(11).max(1);
            let tree = leaves * (16 + 11 * value_size) + (leaves / 6) * (16 + 11 * value_size + 96);
            // The hash set of literals beside it: buckets for 8/7 of the
            // elements, rounded to a power of two, and one control byte each.
            let buckets = (elements * 8 / 7 + 1).next_power_of_two().max(4);
            let fast = if set.fast.is_some() {
                ARC_HEADER_BYTES + 48 + buckets * (std::mem::size_of::<Literal>() + 1) + 16
            } else {
                0
            };
            ARC_HEADER_BYTES + 24 + tree + fast + set.iter().map(value_heap_bytes).sum::<usize>()
        }
        ValueKind::Record(record) => {
            let entry = std::mem::size_of::<SmolStr>() + value_size;
            ARC_HEADER_BYTES
                + 24
                + record.len().div_ceil(11).max(1) * (16 + 11 * entry)
                + record
                    .iter()
                    .map(|(name, value)| smol_heap_bytes(name) + value_heap_bytes(value))
                    .sum::<usize>()
        }
        ValueKind::ExtensionValue(_) => 96,
    }
}

/// Records shared between entities, by content. Holds them weakly: a record
/// lives as long as an entity uses it.
struct RecordTable {
    records: HashMap<u64, Weak<Record>>,
    /// Entries alive after the last sweep of dead ones.
    live: usize,
}

/// One entity of a snapshot.
struct Node {
    /// Its id.
    id: SmolStr,
    /// Its attributes and tags, `None` when it has neither.
    record: Option<Arc<Record>>,
    /// Its type: a position in [`SchemaTables::types`].
    ty: u32,
    /// Where its links start in [`TenantEntities::links`]: its parents, then
    /// its other ancestors, then the entities its attributes and tags name.
    links: u32,
    /// How many of the links are parents.
    parents: u32,
    /// How many of the links are ancestors (parents included).
    ancestors: u32,
}

/// A tenant snapshot's entities, kept compact: each entity as its type, id,
/// a shared record of attributes and tags, and positions of its ancestors
/// (transitively closed by Cedar at parse time) and of the entities its
/// attributes name. Cedar's own `Entities` take some 2.5 KB per entity
/// (a B-tree node of 1.7 KB for the attributes of any entity that has one,
/// hash sets for the ancestors), which 10,000 cached tenants cannot afford;
/// see `benches/memory.md`.
///
/// A decision builds the few Cedar entities it can reach ([`EntitySlice`]).
/// Through `Deref` the snapshot is also a whole `cedar_policy::Entities`
/// (the tenant's entities and the schema's action entities, exactly what
/// `Entities::from_json_value` gave), built on first use and then kept; the
/// server does not use that view.
pub struct TenantEntities {
    /// Unique in the process: names the snapshot in per-thread caches.
    id: u64,
    tables: Arc<SchemaTables>,
    /// Sorted by type, then id.
    nodes: Box<[Node]>,
    /// Each node's links, in node order. A link below `nodes.len()` is a
    /// node, one above it a position in `foreign`.
    links: Box<[u32]>,
    /// Entities that links name but the snapshot does not define: parents
    /// it only names, and the schema's actions.
    foreign: Box<[EntityUID]>,
    /// Estimated bytes held by these entities alone.
    own_bytes: usize,
    /// Some entity's data reaches more than [`WIDE_REACH`] entities:
    /// decisions that reach that many read the whole view.
    wide: bool,
    full: OnceLock<Box<Entities>>,
}

impl std::fmt::Debug for TenantEntities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantEntities")
            .field("entities", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

/// Where an entity uid leads.
enum Resolved<'a> {
    /// A snapshot entity.
    Node(u32),
    /// One of the schema's actions.
    Action(&'a Arc<CoreEntity>),
}

/// The values of an entity's attributes (or tags), noting in `named` the
/// entities they name; an error names a value that is not known.
fn known_values<'v>(
    kind: &str,
    owner: &EntityUID,
    pairs: impl Iterator<Item = (&'v SmolStr, &'v PartialValue)>,
    named: &mut Vec<&'v EntityUID>,
) -> Result<Vec<(SmolStr, Value)>, SnapshotError> {
    pairs
        .map(|(name, value)| match value {
            PartialValue::Value(value) => {
                entity_uids(value, &mut |uid| named.push(uid));
                Ok((name.clone(), value.clone()))
            }
            PartialValue::Residual(_) => Err(SnapshotError::Entities(format!(
                "{kind} `{name}` of `{owner}` has no value"
            ))),
        })
        .collect()
}

/// Calls `found` with every entity uid inside `value`.
/// Calls `found` with every entity uid named in `value`.
pub(crate) fn entity_uids<'v>(value: &'v Value, found: &mut impl FnMut(&'v EntityUID)) {
    match value.value_kind() {
        ValueKind::Lit(Literal::EntityUID(uid)) => found(uid),
        ValueKind::Lit(_) | ValueKind::ExtensionValue(_) => {}
        ValueKind::Set(set) => {
            for element in set.iter() {
                entity_uids(element, found);
            }
        }
        ValueKind::Record(record) => {
            for value in record.values() {
                entity_uids(value, found);
            }
        }
    }
}

fn to_u32(n: usize) -> Result<u32, SnapshotError> {
    u32::try_from(n).map_err(|_| SnapshotError::Entities("too many entities".to_string()))
}

impl TenantEntities {
    /// The compact form of `parsed`, Cedar's entities of a snapshot parsed
    /// against the schema of `tables`.
    fn from_parsed(parsed: &Entities, tables: Arc<SchemaTables>) -> Result<Self, SnapshotError> {
        let core: &CoreEntities = parsed.as_ref();
        // The schema's actions are in every snapshot; they stay in the tables.
        let mut own: Vec<(u32, &CoreEntity)> = Vec::with_capacity(core.len());
        for entity in core.iter() {
            if tables.actions.contains_key(entity.uid()) {
                continue;
            }
            let entity_type = entity.uid().entity_type();
            let ty = tables.type_index(entity_type).ok_or_else(|| {
                SnapshotError::Entities(format!(
                    "entity type `{entity_type}` is not declared in the schema"
                ))
            })?;
            own.push((ty, entity));
        }
        fn eid(entity: &CoreEntity) -> &str {
            entity.uid().eid().as_ref()
        }
        own.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| eid(a.1).cmp(eid(b.1))));
        let count = to_u32(own.len())?;
        let position = |uid: &EntityUID| -> Option<u32> {
            let ty = tables.type_index(uid.entity_type())?;
            let id: &str = uid.eid().as_ref();
            let index = own
                .binary_search_by(|(other_ty, other)| {
                    other_ty.cmp(&ty).then_with(|| eid(other).cmp(id))
                })
                .ok()?;
            u32::try_from(index).ok()
        };
        let mut foreign: Vec<EntityUID> = Vec::new();
        let mut foreign_positions: HashMap<EntityUID, u32> = HashMap::new();
        let mut links: Vec<u32> = Vec::new();
        let mut nodes: Vec<Node> = Vec::with_capacity(own.len());
        let mut records_bytes = 0usize;
        for (ty, entity) in &own {
            let mut link = |uid: &EntityUID| -> Result<u32, SnapshotError> {
                if let Some(node) = position(uid) {
                    return Ok(node);
                }
                if let Some(known) = foreign_positions.get(uid) {
                    return Ok(*known);
                }
                let next = count
                    .checked_add(to_u32(foreign.len())?)
                    .ok_or_else(|| SnapshotError::Entities("too many entities".to_string()))?;
                foreign.push(uid.clone());
                foreign_positions.insert(uid.clone(), next);
                Ok(next)
            };
            let start = to_u32(links.len())?;
            let mut parents = entity
                .parents()
                .map(&mut link)
                .collect::<Result<Vec<_>, _>>()?;
            parents.sort_unstable();
            let mut indirect = entity
                .indirect_ancestors()
                .map(&mut link)
                .collect::<Result<Vec<_>, _>>()?;
            indirect.sort_unstable();
            let mut named: Vec<&EntityUID> = Vec::new();
            let attrs = known_values("attribute", entity.uid(), entity.attrs(), &mut named)?;
            let tags = known_values("tag", entity.uid(), entity.tags(), &mut named)?;
            // Only entities a decision could reach are linked: the snapshot's
            // own and the schema's actions.
            let mut references = Vec::with_capacity(named.len());
            for uid in named {
                if position(uid).is_some() || tables.actions.contains_key(uid) {
                    references.push(link(uid)?);
                }
            }
            references.sort_unstable();
            references.dedup();
            let record = if attrs.is_empty() && tags.is_empty() {
                None
            } else {
                let (record, new) = tables.intern(Record {
                    attrs: attrs.into_boxed_slice(),
                    tags: tags.into_boxed_slice(),
                });
                // A record first made here is this snapshot's memory; one
                // found shared was counted by the snapshot that made it.
                if new {
                    records_bytes += record.memory_bytes();
                }
                Some(record)
            };
            nodes.push(Node {
                id: SmolStr::new(eid(entity)),
                record,
                ty: *ty,
                links: start,
                parents: to_u32(parents.len())?,
                ancestors: to_u32(parents.len() + indirect.len())?,
            });
            links.extend(parents);
            links.extend(indirect);
            links.extend(references);
        }
        let own_bytes = nodes.len() * std::mem::size_of::<Node>()
            + nodes
                .iter()
                .map(|node| smol_heap_bytes(&node.id))
                .sum::<usize>()
            + links.len() * std::mem::size_of::<u32>()
            + foreign.len() * std::mem::size_of::<EntityUID>()
            + records_bytes;
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let mut entities = Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tables,
            nodes: nodes.into_boxed_slice(),
            links: links.into_boxed_slice(),
            foreign: foreign.into_boxed_slice(),
            own_bytes,
            wide: false,
            full: OnceLock::new(),
        };
        entities.wide = entities.reaches_more_than(WIDE_REACH);
        if entities.wide {
            // Decisions will read the whole view, as Cedar builds it.
            entities.own_bytes += entities.nodes.len() * CEDAR_BYTES_PER_ENTITY;
        }
        Ok(entities)
    }

    /// Whether some entity's data reaches more than `limit` entities.
    fn reaches_more_than(&self, limit: usize) -> bool {
        let count = self.nodes.len() as u32;
        let mut seen: HashSet<u32> = HashSet::new();
        let mut stack: Vec<u32> = Vec::new();
        for start in 0..count {
            if self.references(start).is_empty() {
                continue;
            }
            seen.clear();
            seen.insert(start);
            stack.clear();
            stack.push(start);
            while let Some(node) = stack.pop() {
                for &link in self.references(node) {
                    if link < count && seen.insert(link) {
                        if seen.len() > limit {
                            return true;
                        }
                        stack.push(link);
                    }
                }
            }
        }
        false
    }

    /// The links of node `index` to the entities its data names.
    fn references(&self, index: u32) -> &[u32] {
        &self.links_of(index)[self.node(index).ancestors as usize..]
    }

    /// Number of the snapshot's own entities (the schema's actions, which
    /// Cedar's view adds, not counted).
    pub fn entity_count(&self) -> usize {
        self.nodes.len()
    }

    /// Whether `uid` is among the entities (the schema's actions included).
    pub fn contains(&self, uid: &EntityUid) -> bool {
        self.resolve(uid.as_ref()).is_some()
    }

    /// [`TenantEntities::contains`] for Cedar's core uid.
    pub(crate) fn has(&self, uid: &EntityUID) -> bool {
        self.resolve(uid).is_some()
    }

    /// The entity `uid`, built anew on every call.
    pub fn get(&self, uid: &EntityUid) -> Option<cedar_policy::Entity> {
        let entity = match self.resolve(uid.as_ref())? {
            Resolved::Node(index) => self.build(index),
            Resolved::Action(entity) => CoreEntity::clone(entity),
        };
        Some(entity.into())
    }

    /// The entity `uid` in Cedar's core form, built anew (the schema's
    /// actions included).
    pub fn core_entity(&self, uid: &EntityUID) -> Option<CoreEntity> {
        Some(match self.resolve(uid)? {
            Resolved::Node(index) => self.build(index),
            Resolved::Action(entity) => CoreEntity::clone(entity),
        })
    }

    /// The value of `uid`'s attribute `attr`, when both exist.
    pub fn attr(&self, uid: &EntityUID, attr: &str) -> Option<&Value> {
        let Some(Resolved::Node(index)) = self.resolve(uid) else {
            return None;
        };
        let record = self.node(index).record.as_ref()?;
        record
            .attrs
            .iter()
            .find(|(name, _)| name == attr)
            .map(|(_, value)| value)
    }

    /// The uids of the snapshot's entities of type `entity_type`, in id order.
    pub fn of_type(&self, entity_type: &EntityType) -> Vec<EntityUID> {
        let Some(ty) = self.tables.type_index(entity_type) else {
            return Vec::new();
        };
        let start = self.nodes.partition_point(|node| node.ty < ty);
        let end = self.nodes.partition_point(|node| node.ty <= ty);
        (start..end)
            .filter_map(|index| u32::try_from(index).ok())
            .map(|index| self.uid(index))
            .collect()
    }

    /// A builder of the entities one decision can reach.
    pub fn slice(&self) -> EntitySlice<'_> {
        EntitySlice {
            entities: self,
            nodes: Vec::new(),
            seen: None,
            actions: Vec::new(),
        }
    }

    fn resolve(&self, uid: &EntityUID) -> Option<Resolved<'_>> {
        // As in Cedar's view, the schema's actions take precedence (and
        // only an action's type is `Action` or ends in `::Action`).
        if uid.entity_type().is_action() {
            if let Some(action) = self.tables.actions.get(uid) {
                return Some(Resolved::Action(action));
            }
        }
        let ty = self.tables.type_index(uid.entity_type())?;
        let id: &str = uid.eid().as_ref();
        let index = self
            .nodes
            .binary_search_by(|node| node.ty.cmp(&ty).then_with(|| node.id.as_str().cmp(id)))
            .ok()?;
        u32::try_from(index).ok().map(Resolved::Node)
    }

    fn node(&self, index: u32) -> &Node {
        &self.nodes[index as usize]
    }

    fn links_of(&self, index: u32) -> &[u32] {
        let start = self.node(index).links as usize;
        let end = self
            .nodes
            .get(index as usize + 1)
            .map_or(self.links.len(), |next| next.links as usize);
        &self.links[start..end]
    }

    fn uid(&self, index: u32) -> EntityUID {
        let node = self.node(index);
        EntityUID::from_components(
            self.tables.types[node.ty as usize].clone(),
            Eid::new(node.id.clone()),
            None,
        )
    }

    fn link_uid(&self, link: u32) -> EntityUID {
        match link.checked_sub(self.nodes.len() as u32) {
            Some(foreign) => self.foreign[foreign as usize].clone(),
            None => self.uid(link),
        }
    }

    /// Cedar's entity for node `index`: equal to what Cedar parsed.
    fn build(&self, index: u32) -> CoreEntity {
        let node = self.node(index);
        let links = self.links_of(index);
        let parents = node.parents as usize;
        let ancestors = node.ancestors as usize;
        let parents: HashSet<EntityUID> = links[..parents]
            .iter()
            .map(|link| self.link_uid(*link))
            .collect();
        let indirect: HashSet<EntityUID> = links[node.parents as usize..ancestors]
            .iter()
            .map(|link| self.link_uid(*link))
            .collect();
        let (attrs, tags): (&[Field], &[Field]) = match &node.record {
            Some(record) => (&record.attrs, &record.tags),
            None => (&[], &[]),
        };
        fn pairs(list: &[Field]) -> impl Iterator<Item = (SmolStr, PartialValue)> + '_ {
            list.iter()
                .map(|(name, value)| (name.clone(), PartialValue::Value(value.clone())))
        }
        CoreEntity::new_with_attr_partial_value(
            self.uid(index),
            pairs(attrs),
            indirect,
            parents,
            pairs(tags),
        )
    }

    /// Every entity, as Cedar's parse gave them.
    fn build_all(&self) -> Entities {
        let count = self.nodes.len() as u32;
        let entities = (0..count).map(|index| self.build(index)).chain(
            self.tables
                .actions
                .values()
                .map(|action| CoreEntity::clone(action)),
        );
        match CoreEntities::from_entities(
            entities,
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        ) {
            Ok(entities) => entities.into(),
            // Unreachable: every uid is built once.
            Err(_) => Entities::empty(),
        }
    }
}

impl std::ops::Deref for TenantEntities {
    type Target = Entities;

    /// Cedar's whole view of the snapshot, built on first use and kept.
    fn deref(&self) -> &Entities {
        self.full.get_or_init(|| Box::new(self.build_all()))
    }
}

/// The entities one decision can reach, built from a [`TenantEntities`]:
/// the entities added and, transitively, every snapshot entity their
/// attributes and tags name. Cedar reads an entity's data only when an
/// expression reaches it (attribute and tag access, and the left side of
/// `in`), and only the request, the policies and the data of reached
/// entities can name an entity, so a decision over the slice is the decision
/// over the whole snapshot once the request's entities, the context's and the
/// ones the policies name are added.
pub struct EntitySlice<'a> {
    entities: &'a TenantEntities,
    /// Nodes included, in the order added.
    nodes: Vec<u32>,
    /// The same as a set, once there are many.
    seen: Option<HashSet<u32>>,
    /// Schema actions included.
    actions: Vec<&'a Arc<CoreEntity>>,
}

/// Included nodes past which membership is kept in a hash set.
const SLICE_SCAN_MAX: usize = 32;

impl<'a> EntitySlice<'a> {
    /// Adds `uid` and what it reaches, when it is one of the snapshot's
    /// entities or the schema's actions. Whether it is.
    pub fn add(&mut self, uid: &EntityUID) -> bool {
        match self.entities.resolve(uid) {
            Some(Resolved::Node(index)) => {
                self.add_node(index);
                true
            }
            Some(Resolved::Action(action)) => {
                self.add_action(action);
                true
            }
            None => false,
        }
    }

    /// Adds every entity named in `value`, and what they reach.
    pub fn add_value(&mut self, value: &Value) {
        entity_uids(value, &mut |uid| {
            self.add(uid);
        });
    }

    fn insert(&mut self, index: u32) -> bool {
        if let Some(seen) = &mut self.seen {
            if !seen.insert(index) {
                return false;
            }
        } else if self.nodes.contains(&index) {
            return false;
        } else if self.nodes.len() >= SLICE_SCAN_MAX {
            let mut seen: HashSet<u32> = self.nodes.iter().copied().collect();
            seen.insert(index);
            self.seen = Some(seen);
        }
        self.nodes.push(index);
        true
    }

    fn add_node(&mut self, index: u32) {
        if !self.insert(index) {
            return;
        }
        let entities = self.entities;
        let count = entities.nodes.len() as u32;
        let mut next = self.nodes.len() - 1;
        while let Some(&node) = self.nodes.get(next) {
            next += 1;
            let links = entities.links_of(node);
            for &link in &links[entities.node(node).ancestors as usize..] {
                match link.checked_sub(count) {
                    None => {
                        self.insert(link);
                    }
                    Some(foreign) => {
                        if let Some(action) = entities
                            .tables
                            .actions
                            .get(&entities.foreign[foreign as usize])
                        {
                            self.add_action(action);
                        }
                    }
                }
            }
        }
    }

    fn add_action(&mut self, action: &'a Arc<CoreEntity>) {
        if self.actions.iter().any(|known| Arc::ptr_eq(known, action)) {
            return;
        }
        self.actions.push(action);
        for (_, value) in action.attrs().chain(action.tags()) {
            if let PartialValue::Value(value) = value {
                self.add_value(value);
            }
        }
    }

    /// Cedar's entities of the slice, built anew and not kept (as for a
    /// slice that many decisions share); `None` only if Cedar refused them
    /// (unreachable: every uid is built once), when the whole view decides
    /// the same.
    pub fn build_fresh(&self) -> Option<Entities> {
        self.assemble(|index| self.entities.build(index))
    }

    /// Cedar's entities of the slice with `changes` applied, built anew
    /// (never kept). The entities the changes touch and the values they
    /// set must have been added.
    pub fn build_changed(&self, changes: &crate::changes::Changes) -> Option<Entities> {
        let gained = changes.gained_ancestors(self.entities);
        self.assemble(|index| changes.apply(self.entities.build(index), &gained))
    }

    /// Cedar's entities of the slice's nodes as `build` makes them, with
    /// its actions.
    fn assemble(&self, build: impl Fn(u32) -> CoreEntity) -> Option<Entities> {
        let built = self
            .nodes
            .iter()
            .map(|index| build(*index))
            .chain(self.actions.iter().map(|action| CoreEntity::clone(action)));
        CoreEntities::from_entities(
            built,
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::none(),
        )
        .ok()
        .map(Entities::from)
    }

    /// Cedar's entities of the slice. A small slice this thread built
    /// recently for the same snapshot and entities is reused. A slice of more
    /// than `WIDE_REACH` entities of a wide snapshot is its whole view
    /// (built once, kept, and counted in its memory).
    pub fn build(self) -> SliceEntities<'a> {
        let size = self.nodes.len() + self.actions.len();
        if size > WIDE_REACH && self.entities.wide {
            return SliceEntities::Whole(self.entities);
        }
        if size > SLICE_CACHE_MAX_ENTITIES {
            return match self.build_fresh() {
                Some(built) => SliceEntities::Slice(Rc::new(built)),
                None => SliceEntities::Whole(self.entities),
            };
        }
        let owner = self.entities.id;
        let actions: Vec<usize> = self
            .actions
            .iter()
            .map(|action| Arc::as_ptr(action) as usize)
            .collect();
        let mut code = owner.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for part in self
            .nodes
            .iter()
            .map(|node| *node as u64)
            .chain(actions.iter().map(|action| *action as u64))
        {
            code = (code ^ part).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        let slot = (code >> 32) as usize % SLICE_CACHE_SLOTS;
        SLICES.with(|slices| {
            let mut slices = slices.borrow_mut();
            if slices.is_empty() {
                slices.resize_with(SLICE_CACHE_SLOTS, || None);
            }
            if let Some(cached) = &slices[slot] {
                if cached.owner == owner
                    && *cached.nodes == *self.nodes
                    && *cached.actions == *actions
                {
                    return SliceEntities::Slice(Rc::clone(&cached.entities));
                }
            }
            let Some(built) = self.build_fresh() else {
                return SliceEntities::Whole(self.entities);
            };
            let built = Rc::new(built);
            slices[slot] = Some(CachedSlice {
                owner,
                nodes: self.nodes.into_boxed_slice(),
                actions: actions.into_boxed_slice(),
                entities: Rc::clone(&built),
            });
            SliceEntities::Slice(built)
        })
    }
}

/// Largest slice kept in a thread's cache, in entities.
const SLICE_CACHE_MAX_ENTITIES: usize = 16;

/// Slices kept per thread.
const SLICE_CACHE_SLOTS: usize = 32;

/// A slice built by this thread, by what it holds.
struct CachedSlice {
    /// [`TenantEntities::id`] of the snapshot.
    owner: u64,
    nodes: Box<[u32]>,
    /// Addresses of the schema action entities (alive as long as the
    /// snapshot, whose id no other snapshot takes).
    actions: Box<[usize]>,
    entities: Rc<Entities>,
}

thread_local! {
    /// The slices this thread built last, one per slot of a hash of what
    /// they hold: repeated decisions (the same principal and resource of
    /// one snapshot) do not build their entities again. Snapshots never
    /// change, so a slice stays right for as long as it is kept.
    static SLICES: RefCell<Vec<Option<CachedSlice>>> = const { RefCell::new(Vec::new()) };
}

/// Cedar's entities for one decision.
pub enum SliceEntities<'a> {
    /// The entities the decision can reach.
    Slice(Rc<Entities>),
    /// The snapshot's whole view.
    Whole(&'a TenantEntities),
}

impl std::ops::Deref for SliceEntities<'_> {
    type Target = Entities;

    fn deref(&self) -> &Entities {
        match self {
            Self::Slice(entities) => entities,
            Self::Whole(entities) => entities,
        }
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

    /// Each entity of `bytes`' snapshot, rebuilt from the compact form (one
    /// at a time and in the whole view), equals what Cedar parsed, its
    /// parents and other ancestors apart included.
    fn assert_rebuilds_cedar(bytes: &[u8], policies: &PolicySnapshot) -> TenantSnapshot {
        let snapshot = TenantSnapshot::parse(bytes, None, policies, SnapshotSource::File)
            .unwrap_or_else(|error| panic!("{error}"));
        let document: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let parsed =
            Entities::from_json_value(document["entities"].clone(), Some(&policies.schema))
                .unwrap();
        let whole: &Entities = &snapshot.entities;
        assert_eq!(whole.iter().count(), parsed.iter().count());
        let same = |a: &CoreEntity, b: &CoreEntity| {
            assert!(a.deep_eq(b), "{a:?} != {b:?}");
            let set = |entity: &CoreEntity, parents: bool| -> HashSet<EntityUID> {
                if parents {
                    entity.parents().cloned().collect()
                } else {
                    entity.indirect_ancestors().cloned().collect()
                }
            };
            assert_eq!(set(a, true), set(b, true));
            assert_eq!(set(a, false), set(b, false));
            assert_eq!(a.attrs().collect::<Vec<_>>(), b.attrs().collect::<Vec<_>>());
            assert_eq!(a.tags().collect::<Vec<_>>(), b.tags().collect::<Vec<_>>());
        };
        for entity in parsed.iter() {
            let uid = entity.uid();
            assert!(snapshot.entities.contains(&uid));
            same(
                snapshot.entities.get(&uid).unwrap().as_ref(),
                entity.as_ref(),
            );
            same(whole.get(&uid).unwrap().as_ref(), entity.as_ref());
        }
        snapshot
    }

    #[test]
    fn compact_entities_rebuild_what_cedar_parsed() {
        // The shipped catalog, at the top of the workspace.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let policies = PolicySnapshot::load_dir(&root.join("policies")).unwrap();
        let mut files = 0;
        for entry in std::fs::read_dir(root.join("entitlements")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "json") {
                assert_rebuilds_cedar(&std::fs::read(&path).unwrap(), &policies);
                files += 1;
            }
        }
        assert!(files >= 5);

        // Namespaces, action groups, tags, entities inside sets and records,
        // a parent the snapshot only names, deep hierarchies.
        let policies = PolicySnapshot::from_sources(
            "schema.cedarschema",
            r#"namespace App {
                entity Group in [Group] = { owner?: User, meta?: { lead: User, tags: Set<String> } };
                entity User in [Group] = { friends: Set<User>, label: String, score?: Long } tags String;
                entity Doc = { readers: Set<Group>, note?: String };
                action read, write;
                action edit in [write] appliesTo { principal: User, resource: Doc };
                action view in [read] appliesTo { principal: User, resource: Doc };
            }"#,
            &[],
        )
        .unwrap();
        let long = "an attribute string long enough not to be stored inline in a SmolStr";
        let doc = serde_json::json!({"tenant": "t", "version": 1, "entities": [
            {"uid": {"type": "App::Group", "id": "top"}, "attrs": {}, "parents": []},
            {"uid": {"type": "App::Group", "id": "mid"}, "attrs": {"owner": {"__entity": {"type": "App::User", "id": "ann"}}}, "parents": [{"type": "App::Group", "id": "top"}]},
            {"uid": {"type": "App::Group", "id": "low"}, "attrs": {"meta": {"lead": {"__entity": {"type": "App::User", "id": "bob"}}, "tags": ["x", "y"]}}, "parents": [{"type": "App::Group", "id": "mid"}, {"type": "App::Group", "id": "nowhere"}]},
            {"uid": {"type": "App::User", "id": "ann"}, "attrs": {"friends": [{"__entity": {"type": "App::User", "id": "bob"}}], "label": long}, "parents": [{"type": "App::Group", "id": "low"}], "tags": {"team": "red"}},
            {"uid": {"type": "App::User", "id": "bob"}, "attrs": {"friends": [], "label": "b", "score": 3}, "parents": []},
            {"uid": {"type": "App::User", "id": "cy"}, "attrs": {"friends": [], "label": "b", "score": 3}, "parents": []},
            {"uid": {"type": "App::Doc", "id": "d"}, "attrs": {"readers": [{"__entity": {"type": "App::Group", "id": "mid"}}], "note": long}, "parents": []},
        ]});
        let snapshot = assert_rebuilds_cedar(doc.to_string().as_bytes(), &policies);
        assert_eq!(snapshot.entities.entity_count(), 7);
        assert_eq!(snapshot.undefined_ancestors.len(), 1);

        // A slice holds what the added entity reaches through its data, and
        // no more: ann reaches bob (a friend), and low and mid are only
        // ancestors of ann.
        let uid = |text: &str| -> EntityUID { text.parse().unwrap() };
        let mut slice = snapshot.entities.slice();
        assert!(slice.add(&uid(r#"App::User::"ann""#)));
        assert!(slice.add(&uid(r#"App::Action::"edit""#)));
        assert!(!slice.add(&uid(r#"App::User::"nobody""#)));
        let built = slice.build();
        let mut names: Vec<String> = built.iter().map(|e| e.uid().to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                r#"App::Action::"edit""#,
                r#"App::User::"ann""#,
                r#"App::User::"bob""#
            ]
        );
        let mut slice = snapshot.entities.slice();
        slice.add(&uid(r#"App::Group::"low""#));
        let built = slice.build();
        assert_eq!(built.iter().count(), 2, "low and its meta's lead, bob");
        // bob and cy have equal attributes: one record.
        let record = |id: &str| {
            let index = match snapshot
                .entities
                .resolve(&uid(&format!("App::User::{id:?}")))
            {
                Some(Resolved::Node(index)) => index,
                _ => panic!("{id}"),
            };
            snapshot.entities.node(index).record.clone().unwrap()
        };
        assert!(Arc::ptr_eq(&record("bob"), &record("cy")));
    }

    #[test]
    fn a_snapshot_whose_data_reaches_far_is_wide_and_decides_over_its_whole_view() {
        let policies = PolicySnapshot::from_sources(
            "schema.cedarschema",
            "entity User; entity Team = { members: Set<User> };",
            &[],
        )
        .unwrap();
        let document = |members: usize| {
            let mut entities: Vec<serde_json::Value> = (0..members)
                .map(|i| serde_json::json!({"uid": {"type": "User", "id": format!("u{i}")}, "attrs": {}, "parents": []}))
                .collect();
            let list: Vec<serde_json::Value> = (0..members)
                .map(|i| serde_json::json!({"__entity": {"type": "User", "id": format!("u{i}")}}))
                .collect();
            entities.push(serde_json::json!({"uid": {"type": "Team", "id": "all"}, "attrs": {"members": list}, "parents": []}));
            serde_json::json!({"tenant": "t", "version": 1, "entities": entities}).to_string()
        };
        let team: EntityUID = r#"Team::"all""#.parse().unwrap();

        let narrow = assert_rebuilds_cedar(document(WIDE_REACH - 1).as_bytes(), &policies);
        assert!(!narrow.entities.wide);
        let mut slice = narrow.entities.slice();
        slice.add(&team);
        let SliceEntities::Slice(built) = slice.build() else {
            panic!("a narrow snapshot decides over slices");
        };
        assert_eq!(built.iter().count(), WIDE_REACH);

        let wide = assert_rebuilds_cedar(document(WIDE_REACH + 1).as_bytes(), &policies);
        assert!(wide.entities.wide);
        assert!(wide.memory_bytes() > (WIDE_REACH + 2) * CEDAR_BYTES_PER_ENTITY);
        let mut slice = wide.entities.slice();
        slice.add(&team);
        assert!(matches!(slice.build(), SliceEntities::Whole(_)));
        // A small slice of a wide snapshot is still a slice.
        let mut slice = wide.entities.slice();
        slice.add(&r#"User::"u1""#.parse().unwrap());
        assert!(matches!(slice.build(), SliceEntities::Slice(_)));
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
}
