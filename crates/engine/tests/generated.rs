//! Generated inputs for the engine's parsers (proptest): tenant snapshot
//! documents (valid ones built from the example schema, and mutated ones),
//! and policy and schema texts (the example catalog, mutated).
//!
//! Properties:
//!
//! * nothing panics, and no input makes a parse hold much more memory
//!   than it is long ([`MAX_GROWTH_KIB`] at most);
//! * a snapshot document is refused with its location (a JSON error's line
//!   and column within the document) or what it found wrong (the tenant id,
//!   the entity whose parents are too deep, Cedar's account of the entity
//!   that does not fit the schema);
//! * a generated valid document parses, and every document that parses
//!   round-trips: Cedar's JSON of its entities (without the schema's
//!   actions), under the same tenant and version, parses again to the same
//!   tenant, version and entity count, to entities equal one by one (uid,
//!   attributes, tags, ancestors), with the same parents left undefined, and
//!   serializes to the same JSON;
//! * every problem of a policy set names a file it was given, within the
//!   file's lines; a file that does not parse on its own has a problem with
//!   a line, and so has a schema that does not parse; a set that loads
//!   loads again to the same version.
//!
//! Cases per property: `PROPTEST_CASES` when set, else each property's
//! default (what CI runs). `scripts/generated-long.sh` runs many more.
//! Failing inputs are printed, not persisted.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value as Json};
use tollgate_engine::{
    FileProblem, PolicySnapshot, SnapshotError, SnapshotSource, TenantSnapshot,
    MAX_HIERARCHY_DEPTH, SCHEMA_FILE,
};

// ---------------------------------------------------------------------------
// Running properties

/// What the cases of a property came to, by kind, with an example of each
/// (printed after the run: what the generators reach).
#[derive(Default)]
struct Tally(std::cell::RefCell<std::collections::BTreeMap<String, (usize, String)>>);

impl Tally {
    /// Counts a case of `kind`, keeping the first `example`.
    fn note(&self, kind: &str, example: impl FnOnce() -> String) {
        let mut kinds = self.0.borrow_mut();
        match kinds.get_mut(kind) {
            Some((count, _)) => *count += 1,
            None => {
                let mut example = example();
                if example.len() > 160 {
                    example.truncate(boundary(&example, 160));
                    example.push_str("...");
                }
                kinds.insert(kind.to_string(), (1, example));
            }
        }
    }
}

/// Runs `test` on `default_cases` generated inputs (or `PROPTEST_CASES`),
/// printing the cases run, the time taken and the tally; panics with the
/// smallest failing input found.
fn run<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value, &Tally) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default_cases);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let tally = Tally::default();
    LARGEST_GROWTH.set(None);
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    if let Err(failure) = runner.run(&strategy, |input| test(input, &tally)) {
        panic!("{name}: {failure}");
    }
    let memory = LARGEST_GROWTH
        .get()
        .map(|kib| format!(", peak memory rising by at most {kib} KiB in a case"))
        .unwrap_or_default();
    eprintln!(
        "property {name}: {cases} cases in {:.2?}{memory}",
        started.elapsed()
    );
    for (kind, (count, example)) in tally.0.borrow().iter() {
        eprintln!("  {kind}: {count} (e.g. {example})");
    }
}

/// Most the peak resident memory of the process may rise during one case.
const MAX_GROWTH_KIB: u64 = 256 * 1024;

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs `call`, returning its result and how far (KiB) the peak resident
/// memory of the process rose above the resident memory before it: the
/// peak is reset first (Linux's `clear_refs`). Memory already resident
/// (freed by an earlier case) is not seen again; 0 where `/proc` is not
/// there.
fn growth<T>(call: impl FnOnce() -> T) -> (T, u64) {
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kib("VmRSS:");
    let result = call();
    let peak = status_kib("VmHWM:");
    let grown = match (reset, before, peak) {
        (true, Some(before), Some(peak)) => peak.saturating_sub(before),
        _ => 0,
    };
    LARGEST_GROWTH.set(Some(LARGEST_GROWTH.get().unwrap_or(0).max(grown)));
    (result, grown)
}

thread_local! {
    /// The largest rise [`growth`] saw in the property running, if it
    /// measured any.
    static LARGEST_GROWTH: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

// ---------------------------------------------------------------------------
// The example catalog

fn repository() -> PathBuf {
    let engine = Path::new(env!("CARGO_MANIFEST_DIR"));
    engine.ancestors().nth(2).unwrap_or(engine).to_path_buf()
}

/// The example catalog's texts: the schema, then the policy files by name.
static CATALOG: LazyLock<(String, Vec<(String, String)>)> = LazyLock::new(|| {
    let dir = repository().join("policies");
    let schema = std::fs::read_to_string(dir.join(SCHEMA_FILE)).unwrap();
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cedar"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    files.sort();
    (schema, files)
});

static POLICIES: LazyLock<PolicySnapshot> = LazyLock::new(|| {
    let (schema, files) = &*CATALOG;
    PolicySnapshot::from_sources(SCHEMA_FILE, schema, files).expect("the example catalog loads")
});

/// The example snapshot documents.
static EXAMPLE_DOCUMENTS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let dir = repository().join("entitlements");
    let mut documents: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    documents.sort();
    documents
});

// ---------------------------------------------------------------------------
// Snapshot documents

/// Entity types of the example schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Account,
    Region,
    Role,
    Group,
    Seat,
    User,
    Meter,
    Feature,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Account,
        Kind::Region,
        Kind::Role,
        Kind::Group,
        Kind::Seat,
        Kind::User,
        Kind::Meter,
        Kind::Feature,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Account => "Account",
            Kind::Region => "Region",
            Kind::Role => "Role",
            Kind::Group => "Group",
            Kind::Seat => "Seat",
            Kind::User => "User",
            Kind::Meter => "Meter",
            Kind::Feature => "Feature",
        }
    }

    /// The types its parents may have.
    fn parents(self) -> &'static [Kind] {
        match self {
            Kind::Role | Kind::Group => &[Kind::Role],
            Kind::User => &[Kind::Role, Kind::Group, Kind::Seat],
            _ => &[],
        }
    }
}

/// Entity ids: plain, any printable text, any text at all, empty, long.
fn entity_id() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z][a-z0-9-]{0,10}",
        2 => "\\PC{0,12}",
        1 => any::<String>(),
        1 => Just(String::new()),
        1 => "[a-z]{1,3}".prop_map(|id| id.repeat(400)),
    ]
    .boxed()
}

/// A Cedar datetime string: a date, with a time, milliseconds and an offset
/// or `Z`.
fn datetime_text() -> impl Strategy<Value = String> {
    (
        0u32..10_000,
        1u32..=12,
        1u32..=28,
        prop::option::of((0u32..24, 0u32..60, 0u32..60, prop::option::of(0u32..1000))),
        prop::option::of((any::<bool>(), 0u32..24, 0u32..60)),
    )
        .prop_map(|(year, month, day, time, offset)| {
            let mut text = format!("{year:04}-{month:02}-{day:02}");
            if let Some((hour, minute, second, millis)) = time {
                text.push_str(&format!("T{hour:02}:{minute:02}:{second:02}"));
                if let Some(millis) = millis {
                    text.push_str(&format!(".{millis:03}"));
                }
                match offset {
                    Some((east, hours, minutes)) => text.push_str(&format!(
                        "{}{hours:02}{minutes:02}",
                        if east { '+' } else { '-' }
                    )),
                    None => text.push('Z'),
                }
            }
            text
        })
}

/// Values of every attribute the schema declares, for any type; an entity
/// takes those of its own type.
#[derive(Debug, Clone)]
struct Attrs {
    text: String,
    number: i64,
    texts: Vec<String>,
    first_date: Option<String>,
    second_date: Option<String>,
    reference: Option<String>,
    other_reference: Option<String>,
    third_reference: Option<String>,
    optional_text: Option<String>,
    optional_number: Option<i64>,
}

fn attrs() -> impl Strategy<Value = Attrs> {
    (
        "\\PC{0,8}",
        any::<i64>(),
        prop::collection::vec("\\PC{0,4}", 0..6),
        prop::option::of(datetime_text()),
        prop::option::of(datetime_text()),
        prop::option::of(entity_id()),
        prop::option::of(entity_id()),
        prop::option::of(entity_id()),
        prop::option::of("\\PC{0,8}"),
        prop::option::of(any::<i64>()),
    )
        .prop_map(
            |(
                text,
                number,
                texts,
                first_date,
                second_date,
                reference,
                other_reference,
                third_reference,
                optional_text,
                optional_number,
            )| Attrs {
                text,
                number,
                texts,
                first_date,
                second_date,
                reference,
                other_reference,
                third_reference,
                optional_text,
                optional_number,
            },
        )
}

/// One entity to generate: its type, id, attributes, and parents (picks
/// among the entities before it, or ids the document does not define).
#[derive(Debug, Clone)]
struct EntityPlan {
    kind: Kind,
    id: String,
    attrs: Attrs,
    parents: Vec<usize>,
    undefined_parents: Vec<(usize, String)>,
}

fn entity_plan() -> impl Strategy<Value = EntityPlan> {
    (
        prop::sample::select(Kind::ALL.to_vec()),
        entity_id(),
        attrs(),
        prop::collection::vec(any::<usize>(), 0..4),
        prop::collection::vec((any::<usize>(), "[a-z]{1,6}"), 0..2),
    )
        .prop_map(|(kind, id, attrs, parents, undefined_parents)| EntityPlan {
            kind,
            id,
            attrs,
            parents,
            undefined_parents,
        })
}

fn reference(kind: Kind, id: &str) -> Json {
    json!({"__entity": {"type": kind.name(), "id": id}})
}

fn datetime(text: &str) -> Json {
    json!({"__extn": {"fn": "datetime", "arg": text}})
}

/// The attributes an entity of `kind` takes from `attrs`.
fn attrs_json(kind: Kind, attrs: &Attrs) -> Json {
    let mut map = serde_json::Map::new();
    let mut put = |key: &str, value: Json| {
        map.insert(key.to_string(), value);
    };
    match kind {
        Kind::Account => {
            put("plan", json!(attrs.text));
            put("tier", json!(attrs.number));
            put("addons", json!(attrs.texts));
            if let Some(date) = &attrs.first_date {
                put("trial_ends", datetime(date));
            }
            if let Some(date) = &attrs.second_date {
                put("paid_until", datetime(date));
            }
            if let Some(region) = &attrs.reference {
                put("residency", reference(Kind::Region, region));
            }
        }
        Kind::Region => put("countries", json!(attrs.texts)),
        Kind::User => put(
            "account",
            reference(
                Kind::Account,
                attrs.reference.as_deref().unwrap_or("account"),
            ),
        ),
        Kind::Meter => {
            put("limit", json!(attrs.number));
            put("period", json!(attrs.text));
            if let Some(kind) = &attrs.optional_text {
                put("kind", json!(kind));
            }
            if let Some(lease) = attrs.optional_number {
                put("lease", json!(lease));
            }
        }
        Kind::Feature => {
            put("min_tier", json!(attrs.number));
            if let Some(addon) = &attrs.optional_text {
                put("addon", json!(addon));
            }
            if !attrs.texts.is_empty() {
                put("countries", json!(attrs.texts));
            }
            if let Some(region) = &attrs.reference {
                put("region", reference(Kind::Region, region));
            }
            if let Some(seat) = &attrs.other_reference {
                put("seat", reference(Kind::Seat, seat));
            }
            if let Some(meter) = &attrs.third_reference {
                put("meter", reference(Kind::Meter, meter));
            }
        }
        Kind::Role | Kind::Group | Kind::Seat => {}
    }
    Json::Object(map)
}

/// A document of the example schema: unique uids, attributes of each
/// entity's type, parents of the allowed types (entities before it, so
/// that the hierarchy has no cycle, or ids nobody defines).
#[derive(Debug, Clone)]
struct Document {
    tenant: String,
    version: u64,
    entities: Vec<Json>,
}

impl Document {
    fn text(&self) -> String {
        json!({"tenant": self.tenant, "version": self.version, "entities": self.entities})
            .to_string()
    }
}

fn build_document(tenant: String, version: u64, plans: Vec<EntityPlan>) -> Document {
    let mut seen = HashSet::new();
    let plans: Vec<EntityPlan> = plans
        .into_iter()
        .filter(|plan| seen.insert((plan.kind.name(), plan.id.clone())))
        .collect();
    let defined: HashSet<(&str, &str)> = plans
        .iter()
        .map(|plan| (plan.kind.name(), plan.id.as_str()))
        .collect();
    let mut entities = Vec::new();
    for (index, plan) in plans.iter().enumerate() {
        let allowed = plan.kind.parents();
        let mut parents = Vec::new();
        let mut named = HashSet::new();
        if index > 0 && !allowed.is_empty() {
            for pick in &plan.parents {
                let parent = &plans[pick % index];
                if allowed.contains(&parent.kind) && named.insert((parent.kind, parent.id.clone()))
                {
                    parents.push(json!({"type": parent.kind.name(), "id": parent.id}));
                }
            }
        }
        if !allowed.is_empty() {
            for (pick, id) in &plan.undefined_parents {
                let kind = allowed[pick % allowed.len()];
                if !defined.contains(&(kind.name(), id.as_str()))
                    && named.insert((kind, id.clone()))
                {
                    parents.push(json!({"type": kind.name(), "id": id}));
                }
            }
        }
        entities.push(json!({
            "uid": {"type": plan.kind.name(), "id": plan.id},
            "attrs": attrs_json(plan.kind, &plan.attrs),
            "parents": parents,
        }));
    }
    Document {
        tenant,
        version,
        entities,
    }
}

fn tenant_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,128}"
}

fn valid_document() -> impl Strategy<Value = Document> {
    (
        tenant_id(),
        any::<u64>(),
        prop::collection::vec(entity_plan(), 0..40),
    )
        .prop_map(|(tenant, version, plans)| build_document(tenant, version, plans))
}

/// A chain of roles, each the parent of the next.
fn role_chain(length: usize) -> Document {
    let entities = (0..length)
        .map(|index| {
            let parents = if index == 0 {
                json!([])
            } else {
                json!([{"type": "Role", "id": format!("r{}", index - 1)}])
            };
            json!({
                "uid": {"type": "Role", "id": format!("r{index}")},
                "attrs": {},
                "parents": parents,
            })
        })
        .collect();
    Document {
        tenant: "chain".to_string(),
        version: 1,
        entities,
    }
}

/// What may be done to a document's text.
#[derive(Debug, Clone)]
enum TextEdit {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Duplicate { at: usize, len: usize },
    Truncate { at: usize },
}

fn text_edit(alphabet: &'static str) -> impl Strategy<Value = TextEdit> {
    prop_oneof![
        (any::<usize>(), 0usize..16).prop_map(|(at, len)| TextEdit::Delete { at, len }),
        (
            any::<usize>(),
            prop_oneof![alphabet, "\\PC{1,4}", any::<String>()]
        )
            .prop_map(|(at, text)| TextEdit::Insert { at, text }),
        (any::<usize>(), 0usize..64).prop_map(|(at, len)| TextEdit::Duplicate { at, len }),
        any::<usize>().prop_map(|at| TextEdit::Truncate { at }),
    ]
}

/// The char boundary at or before `at % (len + 1)`.
fn boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &mut String, edit: &TextEdit) {
    match edit {
        TextEdit::Delete { at, len } => {
            let start = boundary(text, *at);
            let end = boundary(text, start + len);
            if end >= start {
                text.replace_range(start..end, "");
            }
        }
        TextEdit::Insert { at, text: inserted } => {
            let at = boundary(text, *at);
            text.insert_str(at, inserted);
        }
        TextEdit::Duplicate { at, len } => {
            let start = boundary(text, *at);
            let end = boundary(text, start + len);
            if end >= start {
                let copy = text[start..end].to_string();
                text.insert_str(end, &copy);
            }
        }
        TextEdit::Truncate { at } => {
            let at = boundary(text, *at);
            text.truncate(at);
        }
    }
}

/// What may be done to a document's JSON: the node at a position (in
/// depth-first order) is replaced, dropped from its object or array, or
/// given a new key.
#[derive(Debug, Clone)]
enum JsonEdit {
    Replace { at: usize, with: Json },
    Remove { at: usize },
    AddKey { at: usize, key: String, with: Json },
}

fn json_leaf() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(|n| json!(n)),
        "\\PC{0,8}".prop_map(Json::from),
        Just(json!({"__entity": {"type": "User", "id": "x"}})),
        Just(json!({"__extn": {"fn": "datetime", "arg": "2026-01-01"}})),
        Just(json!({"__extn": {"fn": "decimal", "arg": "x"}})),
        Just(json!({"type": "Role", "id": "r"})),
    ]
}

fn json_tree() -> impl Strategy<Value = Json> {
    json_leaf().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::from),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,8}",
                    Just("__entity".to_string()),
                    Just("uid".to_string())
                ],
                inner,
                0..4
            )
            .prop_map(|map| Json::Object(map.into_iter().collect())),
        ]
    })
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        (any::<usize>(), json_tree()).prop_map(|(at, with)| JsonEdit::Replace { at, with }),
        any::<usize>().prop_map(|at| JsonEdit::Remove { at }),
        (
            any::<usize>(),
            prop_oneof![
                "[a-z_]{1,8}",
                Just("tags".to_string()),
                Just("attrs".to_string())
            ],
            json_tree()
        )
            .prop_map(|(at, key, with)| JsonEdit::AddKey { at, key, with }),
    ]
}

fn count_nodes(value: &Json) -> usize {
    1 + match value {
        Json::Array(items) => items.iter().map(count_nodes).sum(),
        Json::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Applies `edit` to the node `target` of `value` (depth-first order);
/// `counter` counts the nodes passed.
fn apply_json(value: &mut Json, edit: &JsonEdit, target: usize, counter: &mut usize) -> bool {
    let here = *counter;
    *counter += 1;
    if here == target {
        match edit {
            JsonEdit::Replace { with, .. } => *value = with.clone(),
            JsonEdit::AddKey { key, with, .. } => match value {
                Json::Object(map) => {
                    map.insert(key.clone(), with.clone());
                }
                other => {
                    let mut map = serde_json::Map::new();
                    map.insert(key.clone(), with.clone());
                    *other = Json::Object(map);
                }
            },
            JsonEdit::Remove { .. } => *value = Json::Null,
        }
        return true;
    }
    match value {
        Json::Array(items) => {
            for index in 0..items.len() {
                let before = *counter;
                if apply_json(&mut items[index], edit, target, counter) {
                    if matches!(edit, JsonEdit::Remove { .. }) && before == target {
                        items.remove(index);
                    }
                    return true;
                }
            }
        }
        Json::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let before = *counter;
                let child = map.get_mut(&key).unwrap();
                if apply_json(child, edit, target, counter) {
                    if matches!(edit, JsonEdit::Remove { .. }) && before == target {
                        map.remove(&key);
                    }
                    return true;
                }
            }
        }
        _ => {}
    }
    false
}

/// A document to parse: valid, valid and then edited as JSON or as text, an
/// example document edited, a chain of roles, or any bytes.
#[derive(Debug, Clone)]
enum Input {
    Valid(Document),
    JsonEdited(Document, Vec<JsonEdit>),
    TextEdited(Document, Vec<TextEdit>),
    ExampleEdited(usize, Vec<TextEdit>),
    Chain(usize),
    Bytes(Vec<u8>),
}

/// The tenant a parse expects.
#[derive(Debug, Clone)]
enum Expect {
    Nothing,
    Own,
    Other(String),
}

fn expectation() -> impl Strategy<Value = Expect> {
    prop_oneof![
        3 => Just(Expect::Own),
        2 => Just(Expect::Nothing),
        1 => tenant_id().prop_map(Expect::Other),
    ]
}

impl Input {
    /// The tenant of the document before it was edited.
    fn tenant(&self) -> Option<String> {
        match self {
            Input::Valid(document)
            | Input::JsonEdited(document, _)
            | Input::TextEdited(document, _) => Some(document.tenant.clone()),
            Input::ExampleEdited(index, _) => {
                let text = &EXAMPLE_DOCUMENTS[index % EXAMPLE_DOCUMENTS.len()];
                let value: Json = serde_json::from_str(text).ok()?;
                value["tenant"].as_str().map(str::to_string)
            }
            Input::Chain(_) => Some("chain".to_string()),
            Input::Bytes(_) => None,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Input::Valid(_) => "valid",
            Input::JsonEdited(..) => "edited as JSON",
            Input::TextEdited(..) => "edited as text",
            Input::ExampleEdited(..) => "example edited",
            Input::Chain(_) => "chain",
            Input::Bytes(_) => "bytes",
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Input::Valid(document) => document.text().into_bytes(),
            Input::JsonEdited(document, edits) => {
                let mut value: Json = serde_json::from_str(&document.text()).unwrap();
                for edit in edits {
                    let at = match edit {
                        JsonEdit::Replace { at, .. }
                        | JsonEdit::Remove { at }
                        | JsonEdit::AddKey { at, .. } => *at,
                    };
                    let target = at % count_nodes(&value);
                    apply_json(&mut value, edit, target, &mut 0);
                }
                value.to_string().into_bytes()
            }
            Input::TextEdited(document, edits) => {
                let mut text = document.text();
                for edit in edits {
                    apply(&mut text, edit);
                }
                text.into_bytes()
            }
            Input::ExampleEdited(index, edits) => {
                let mut text = EXAMPLE_DOCUMENTS[index % EXAMPLE_DOCUMENTS.len()].clone();
                for edit in edits {
                    apply(&mut text, edit);
                }
                text.into_bytes()
            }
            Input::Chain(length) => role_chain(*length).text().into_bytes(),
            Input::Bytes(bytes) => bytes.clone(),
        }
    }
}

const JSON_ALPHABET: &str = "[\\[\\]{}\":,0-9a-z\\\\ \n-]{1,4}";

fn document_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => valid_document().prop_map(Input::Valid),
        3 => (valid_document(), prop::collection::vec(json_edit(), 1..4))
            .prop_map(|(document, edits)| Input::JsonEdited(document, edits)),
        2 => (valid_document(), prop::collection::vec(text_edit(JSON_ALPHABET), 1..4))
            .prop_map(|(document, edits)| Input::TextEdited(document, edits)),
        2 => (any::<usize>(), prop::collection::vec(text_edit(JSON_ALPHABET), 1..6))
            .prop_map(|(index, edits)| Input::ExampleEdited(index, edits)),
        1 => (0usize..=2 * MAX_HIERARCHY_DEPTH).prop_map(Input::Chain),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Input::Bytes),
    ]
}

/// 1-based lines of `bytes` (a last line without a newline counted).
fn lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count() + 1
}

/// The tenant's own entities in Cedar's JSON, without the schema's actions,
/// sorted by uid.
fn own_entities_json(snapshot: &TenantSnapshot) -> Vec<Json> {
    let Json::Array(entities) = snapshot.entities.to_json_value().unwrap() else {
        panic!("Cedar's JSON of entities is an array");
    };
    let mut own: Vec<Json> = entities
        .into_iter()
        .filter(|entity| {
            let type_name = entity["uid"]["__entity"]["type"]
                .as_str()
                .or_else(|| entity["uid"]["type"].as_str())
                .unwrap_or_default();
            !(type_name == "Action" || type_name.ends_with("::Action"))
        })
        .map(|mut entity| {
            // Parents are a set: their order is Cedar's hash order.
            if let Some(parents) = entity["parents"].as_array_mut() {
                parents.sort_by_key(Json::to_string);
            }
            entity
        })
        .collect();
    own.sort_by_key(|entity| entity["uid"].to_string());
    own
}

/// Checks that `snapshot`, parsed from `bytes`, round-trips.
fn round_trips(snapshot: &TenantSnapshot) -> Result<(), TestCaseError> {
    let entities = own_entities_json(snapshot);
    prop_assert_eq!(entities.len(), snapshot.entities.entity_count());
    let again_text = json!({
        "tenant": snapshot.tenant,
        "version": snapshot.version,
        "entities": entities,
    })
    .to_string();
    let again = TenantSnapshot::parse(
        again_text.as_bytes(),
        Some(&snapshot.tenant),
        &POLICIES,
        SnapshotSource::File,
    )
    .map_err(|error| TestCaseError::fail(format!("the serialized snapshot is refused: {error}")))?;
    prop_assert_eq!(&again.tenant, &snapshot.tenant);
    prop_assert_eq!(again.version, snapshot.version);
    prop_assert_eq!(
        again.entities.entity_count(),
        snapshot.entities.entity_count()
    );
    prop_assert_eq!(&again.undefined_ancestors, &snapshot.undefined_ancestors);
    for entity in snapshot.entities.iter() {
        let first: &cedar_policy_core::ast::Entity = entity.as_ref();
        let Some(second) = again.entities.get(&entity.uid()) else {
            return Err(TestCaseError::fail(format!(
                "{} is lost in the round trip",
                entity.uid()
            )));
        };
        let second: &cedar_policy_core::ast::Entity = second.as_ref();
        prop_assert!(first.deep_eq(second), "{} differs", entity.uid());
        // The compact form gives back the entity Cedar parsed.
        let compact = snapshot.entities.get(&entity.uid()).unwrap();
        let compact: &cedar_policy_core::ast::Entity = compact.as_ref();
        prop_assert!(first.deep_eq(compact), "{} is not kept", entity.uid());
    }
    prop_assert_eq!(own_entities_json(&again), entities);
    Ok(())
}

/// Checks what a refusal of `bytes` says.
fn names_what_is_wrong(
    bytes: &[u8],
    expected_tenant: Option<&str>,
    error: &SnapshotError,
) -> Result<(), TestCaseError> {
    match error {
        SnapshotError::Json {
            line,
            column,
            message,
        } => {
            prop_assert!(
                (1..=lines(bytes)).contains(line),
                "line {line} of {}",
                lines(bytes)
            );
            prop_assert!(
                message.contains(&format!("line {line} column {column}")),
                "{message}"
            );
        }
        SnapshotError::TenantId(tenant, problem) => {
            prop_assert!(!problem.is_empty());
            prop_assert!(tollgate_engine::check_tenant_id(tenant).is_err());
        }
        SnapshotError::WrongTenant { expected, found } => {
            prop_assert_eq!(Some(expected.as_str()), expected_tenant);
            prop_assert_ne!(expected, found);
        }
        SnapshotError::Entities(message) => {
            // The field is `entities`; Cedar's message says what in them.
            prop_assert!(!message.is_empty());
            prop_assert!(
                error
                    .to_string()
                    .starts_with("entities do not match the schema: "),
                "{error}"
            );
        }
        SnapshotError::TooDeep(entity) => {
            // `Type::"id"` of an entity of the document.
            prop_assert!(entity.contains("::\""), "{entity}");
        }
    }
    let text = error.to_string();
    prop_assert!(!text.is_empty());
    Ok(())
}

#[test]
fn snapshot_documents_parse_or_say_where_they_are_wrong() {
    run(
        "snapshot_documents",
        384,
        (document_input(), expectation()),
        |(input, expectation), tally| {
            let bytes = input.bytes();
            // The tenant expected: none (a Redis read), the document's own
            // (a file's name), or another.
            let expected = match expectation {
                Expect::Nothing => None,
                Expect::Own => input.tenant(),
                Expect::Other(tenant) => Some(tenant),
            };
            let (parsed, grown) = growth(|| {
                TenantSnapshot::parse(&bytes, expected.as_deref(), &POLICIES, SnapshotSource::File)
            });
            prop_assert!(
                grown <= MAX_GROWTH_KIB,
                "parsing {} bytes took {grown} KiB",
                bytes.len()
            );
            let outcome = match &parsed {
                Ok(_) => "parsed",
                Err(SnapshotError::Json { .. }) => "refused: JSON",
                Err(SnapshotError::TenantId(..)) => "refused: tenant id",
                Err(SnapshotError::WrongTenant { .. }) => "refused: wrong tenant",
                // Cedar names the entity of most schema mismatches, not of
                // a malformed entity (`missing field `uid``).
                Err(SnapshotError::Entities(message)) if message.contains("::\"") => {
                    "refused: entities, naming one"
                }
                Err(SnapshotError::Entities(_)) => "refused: entities, naming none",
                Err(SnapshotError::TooDeep(_)) => "refused: too deep",
            };
            tally.note(&format!("{} {outcome}", input.label()), || match &parsed {
                Ok(snapshot) => format!("{} entities", snapshot.entities.entity_count()),
                Err(error) => error.to_string(),
            });
            match (&input, parsed) {
                (_, Ok(snapshot)) => {
                    if let Some(expected) = &expected {
                        prop_assert_eq!(&snapshot.tenant, expected);
                    }
                    if let Input::Valid(document) = &input {
                        prop_assert_eq!(snapshot.entities.entity_count(), document.entities.len());
                        prop_assert_eq!(snapshot.version, document.version);
                    }
                    round_trips(&snapshot)?;
                }
                (
                    Input::Valid(_) | Input::Chain(_),
                    Err(error @ SnapshotError::WrongTenant { .. }),
                ) if expected != input.tenant() => {
                    names_what_is_wrong(&bytes, expected.as_deref(), &error)?;
                }
                (Input::Valid(_), Err(error)) => {
                    return Err(TestCaseError::fail(format!(
                        "a valid document is refused: {error}"
                    )));
                }
                (Input::Chain(length), Err(error)) => {
                    prop_assert!(matches!(error, SnapshotError::TooDeep(_)), "{error}");
                    prop_assert!(*length > MAX_HIERARCHY_DEPTH, "{length}: {error}");
                    names_what_is_wrong(&bytes, expected.as_deref(), &error)?;
                }
                (_, Err(error)) => names_what_is_wrong(&bytes, expected.as_deref(), &error)?,
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// Policy and schema texts

/// Words of the example catalog and of Cedar, to put where they do not
/// belong.
static WORDS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let (schema, files) = &*CATALOG;
    let mut words: Vec<String> = [
        "permit",
        "forbid",
        "when",
        "unless",
        "principal",
        "action",
        "resource",
        "context",
        "in",
        "has",
        "like",
        "is",
        "if",
        "then",
        "else",
        "true",
        "false",
        "&&",
        "||",
        "!",
        "==",
        "!=",
        "<",
        "<=",
        "+",
        "-",
        "*",
        ".",
        ",",
        ";",
        "(",
        ")",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "@",
        "::",
        "entity",
        "appliesTo",
        "type",
        "namespace",
        "Set",
        "Long",
        "String",
        "Bool",
        "?",
        "=",
        "Action",
        "datetime",
        "duration",
        "decimal",
        "ip",
        "//",
        "/*",
        "\n",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    for text in std::iter::once(schema).chain(files.iter().map(|(_, text)| text)) {
        for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-')) {
            if !word.is_empty() && !words.iter().any(|known| known == word) {
                words.push(word.to_string());
            }
        }
    }
    words
});

/// What may be done to a policy or schema text.
#[derive(Debug, Clone)]
enum SourceEdit {
    Text(TextEdit),
    Word { at: usize, word: usize },
    DeleteLine { line: usize },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
}

fn source_edit() -> impl Strategy<Value = SourceEdit> {
    prop_oneof![
        2 => text_edit("[(){};,\"=!<>&|.:@?a-z0-9 \n-]{1,3}").prop_map(SourceEdit::Text),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(at, word)| SourceEdit::Word { at, word }),
        1 => any::<usize>().prop_map(|line| SourceEdit::DeleteLine { line }),
        1 => any::<usize>().prop_map(|line| SourceEdit::DuplicateLine { line }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| SourceEdit::SwapLines { a, b }),
    ]
}

fn apply_source(text: &mut String, edit: &SourceEdit) {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let count = lines.len();
    match edit {
        SourceEdit::Text(edit) => return apply(text, edit),
        SourceEdit::Word { at, word } => {
            let at = boundary(text, *at);
            let word = &WORDS[word % WORDS.len()];
            text.insert_str(at, &format!(" {word} "));
            return;
        }
        SourceEdit::DeleteLine { line } => {
            lines.remove(line % count);
        }
        SourceEdit::DuplicateLine { line } => {
            let copy = lines[line % count].clone();
            lines.insert(line % count, copy);
        }
        SourceEdit::SwapLines { a, b } => lines.swap(a % count, b % count),
    }
    *text = lines.join("\n");
}

/// Edits to the catalog: `(file, edit)`, file 0 the schema, others the
/// policy files in name order.
type CatalogEdits = Vec<(usize, SourceEdit)>;

fn edited_catalog(edits: &CatalogEdits) -> (String, Vec<(String, String)>) {
    let (schema, files) = &*CATALOG;
    let mut schema = schema.clone();
    let mut files = files.clone();
    for (file, edit) in edits {
        match file % (files.len() + 1) {
            0 => apply_source(&mut schema, edit),
            index => apply_source(&mut files[index - 1].1, edit),
        }
    }
    (schema, files)
}

/// Checks the problems found in a catalog.
fn problems_name_their_files(
    schema: &str,
    files: &[(String, String)],
    problems: &[FileProblem],
    schema_name: &str,
) -> Result<(), TestCaseError> {
    prop_assert!(!problems.is_empty());
    for problem in problems {
        let text = if problem.file == schema_name {
            schema
        } else {
            match files.iter().find(|(name, _)| *name == problem.file) {
                Some((_, text)) => text,
                None => {
                    return Err(TestCaseError::fail(format!(
                        "a problem names no file it was given: {problem}"
                    )))
                }
            }
        };
        if let Some(line) = problem.line {
            prop_assert!(
                (1..=lines(text.as_bytes())).contains(&line),
                "{problem}: line {line} of {}",
                lines(text.as_bytes())
            );
        }
        if let Some(column) = problem.column {
            prop_assert!(column >= 1, "{problem}");
        }
        prop_assert!(!problem.message.is_empty(), "{problem}");
        let shown = problem.to_string();
        prop_assert!(shown.starts_with(&problem.file), "{shown}");
    }
    match cedar_policy::Schema::from_cedarschema_str(schema) {
        // A syntax error has a place; some errors of a schema that parses
        // have none (a common type that refers to itself).
        Err(cedar_policy::CedarSchemaError::Parse(_)) => prop_assert!(
            problems
                .iter()
                .any(|problem| problem.file == schema_name && problem.line.is_some()),
            "the schema does not parse, yet no problem of it has a line: {problems:?}"
        ),
        Err(_) => prop_assert!(
            problems.iter().any(|problem| problem.file == schema_name),
            "the schema is refused, yet no problem names it: {problems:?}"
        ),
        Ok(_) => {}
    }
    for (name, text) in files {
        if text.parse::<cedar_policy::PolicySet>().is_err() {
            prop_assert!(
                problems
                    .iter()
                    .any(|problem| problem.file == *name && problem.line.is_some()),
                "{name} does not parse, yet no problem of it has a line: {problems:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn edited_policy_sets_load_or_name_file_and_line() {
    run(
        "policy_texts",
        128,
        prop::collection::vec((any::<usize>(), source_edit()), 1..5),
        |edits, tally| {
            let (schema, files) = edited_catalog(&edits);
            let (loaded, grown) =
                growth(|| PolicySnapshot::from_sources(SCHEMA_FILE, &schema, &files));
            prop_assert!(grown <= MAX_GROWTH_KIB, "loading took {grown} KiB");
            match &loaded {
                Ok(snapshot) => {
                    tally.note("loaded", || format!("{} policies", snapshot.policy_count()))
                }
                Err(problems) => match problems.iter().find(|problem| problem.line.is_none()) {
                    None => tally.note("refused, every problem with a line", || {
                        problems[0].to_string()
                    }),
                    Some(problem) => {
                        tally.note("refused, a problem without a line", || problem.to_string())
                    }
                },
            }
            match loaded {
                Ok(snapshot) => {
                    let again = PolicySnapshot::from_sources(SCHEMA_FILE, &schema, &files)
                        .map_err(|problems| {
                            TestCaseError::fail(format!("loaded once, not twice: {problems:?}"))
                        })?;
                    prop_assert_eq!(&again.version, &snapshot.version);
                    prop_assert_eq!(again.policy_count(), snapshot.policy_count());
                }
                Err(problems) => {
                    problems_name_their_files(&schema, &files, &problems, SCHEMA_FILE)?
                }
            }
            Ok(())
        },
    );
}

#[test]
fn edited_policy_directories_load_or_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    run(
        "policy_directories",
        32,
        (
            prop::collection::vec((any::<usize>(), source_edit()), 0..4),
            prop::option::of((any::<usize>(), prop::collection::vec(any::<u8>(), 1..4))),
            any::<bool>(),
        ),
        |(edits, bytes, drop_schema), tally| {
            let (schema, files) = edited_catalog(&edits);
            let policies = dir.path().join("policies");
            let _ = std::fs::remove_dir_all(&policies);
            std::fs::create_dir(&policies).unwrap();
            let schema_path = policies.join(SCHEMA_FILE);
            if !drop_schema {
                std::fs::write(&schema_path, &schema).unwrap();
            }
            let mut written = Vec::new();
            for (index, (name, text)) in files.iter().enumerate() {
                let mut content = text.clone().into_bytes();
                // Bytes that may not be UTF-8, in one of the files.
                if let Some((file, bytes)) = &bytes {
                    if file % files.len() == index {
                        content.extend_from_slice(bytes);
                    }
                }
                let path = policies.join(name);
                std::fs::write(&path, &content).unwrap();
                written.push((path.display().to_string(), String::from_utf8(content).ok()));
            }
            let schema_name = schema_path.display().to_string();
            let loaded = PolicySnapshot::load_dir(&policies);
            tally.note(
                if loaded.is_ok() { "loaded" } else { "refused" },
                || match &loaded {
                    Ok(snapshot) => format!("{} policies", snapshot.policy_count()),
                    Err(problems) => problems[0].to_string(),
                },
            );
            match loaded {
                Ok(_) => {
                    prop_assert!(!drop_schema);
                    prop_assert!(written.iter().all(|(_, text)| text.is_some()));
                }
                Err(problems) => {
                    prop_assert!(!problems.is_empty());
                    if drop_schema {
                        prop_assert_eq!(problems.len(), 1);
                        prop_assert_eq!(&problems[0].file, &schema_name);
                        return Ok(());
                    }
                    let unreadable: Vec<&String> = written
                        .iter()
                        .filter(|(_, text)| text.is_none())
                        .map(|(path, _)| path)
                        .collect();
                    if !unreadable.is_empty() {
                        // Unreadable files are all there is to say.
                        for problem in &problems {
                            prop_assert!(unreadable.contains(&&problem.file), "{problem}");
                            prop_assert!(problem.line.is_none(), "{problem}");
                        }
                        return Ok(());
                    }
                    let texts: Vec<(String, String)> = written
                        .into_iter()
                        .map(|(path, text)| (path, text.unwrap_or_default()))
                        .collect();
                    problems_name_their_files(&schema, &texts, &problems, &schema_name)?;
                }
            }
            Ok(())
        },
    );
}
