//! Generated inputs (proptest) for what tollgate reads from outside: request
//! bytes through the server's own decoding path, any structurally valid
//! request through the decision service, configuration files, variables
//! and flags, and the replies of the Lua scripts tollgate runs in Redis.
//! Snapshot documents and policy and schema texts are the engine's
//! (`crates/engine/tests/generated.rs`).
//!
//! Properties:
//!
//! * nothing panics, and no input makes a call hold much more memory than
//!   it is long ([`MAX_GROWTH_KIB`] at most);
//! * every refusal of a request names its field (`tenant`,
//!   `context.now`, `entities[2].attrs.plan`, `checks[1].principal.type`,
//!   a decoding error's `CheckRequest.context`), or is one of the few that
//!   are about the whole call (a batch too large, metering not configured);
//!   a structurally valid check is answered the same in process and
//!   through the server's bytes path; a check that fits the schema always
//!   gets a decision;
//! * every configuration problem names its key or its file, and a value
//!   means the same from a file, a variable or a flag;
//! * a script reply (snapshot reads, writes and deletes, exact-mode
//!   consumes, usage reports, decision-stream adds) is read as what it
//!   says, or refused as garbage; the readers the scripts share refuse
//!   anything but what they expect, saying what that was. The replies are
//!   sent by a Redis server in this process that answers every script
//!   with the reply generated.
//!
//! Cases per property: `PROPTEST_CASES` when set, else each property's
//! default (what CI runs). `scripts/generated-long.sh` runs many more.
//! Failing inputs are printed, not persisted.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::bytes::Bytes;
use prost::Message as _;
use tonic::codegen::http;
use tower_service::Service as _;

use tollgate::api::bounds::Bounded;
use tollgate::api::{self, pb, EntitlementServiceServer, GrpcService};
use tollgate::config::{self, ConfigProblem, FlagValues, KEYS};
use tollgate::decide::{self, Caller, DecisionService, Limits};
use tollgate::store::redis_client::{self, reply, scripts, RedisConn, RedisFailure, RedisSettings};
use tollgate::store::{Catalog, Store};
use tollgate_engine::{Options, PolicySnapshot, TenantMap};
use tollgate_testkit::fixtures::{example_entitlements, example_policies};

// ---------------------------------------------------------------------------
// Running properties

/// What the cases of a property came to, by kind, with an example of each
/// (printed after the run: what the generators reach).
#[derive(Default)]
struct Tally(std::cell::RefCell<BTreeMap<String, (usize, String)>>);

impl Tally {
    /// Counts a case of `kind`, keeping the first `example`.
    fn note(&self, kind: &str, example: impl FnOnce() -> String) {
        let mut kinds = self.0.borrow_mut();
        match kinds.get_mut(kind) {
            Some((count, _)) => *count += 1,
            None => {
                let mut example = example();
                if example.len() > 160 {
                    let mut cut = 160;
                    while !example.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    example.truncate(cut);
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

thread_local! {
    /// Each test thread's runtime: the decision service with snapshots from
    /// files waits for nothing; Redis calls go to a server in this process.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| runtime.block_on(future))
}

// ---------------------------------------------------------------------------
// The example catalog, and the decision service over it

static POLICIES: LazyLock<Arc<PolicySnapshot>> =
    LazyLock::new(|| Arc::new(PolicySnapshot::load_dir(&example_policies()).unwrap()));

static TENANTS: LazyLock<Arc<TenantMap>> = LazyLock::new(|| {
    let (tenants, problems) = tollgate::store::entitlements::load_tenant_dir(
        &example_entitlements(),
        &POLICIES,
        &TenantMap::new(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    Arc::new(tenants)
});

/// Entities of the example snapshots: `(tenant, type, id)`.
static KNOWN: LazyLock<Vec<(String, String, String)>> = LazyLock::new(|| {
    let mut known = Vec::new();
    for entry in std::fs::read_dir(example_entitlements()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "json") {
            continue;
        }
        let document: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let tenant = document["tenant"].as_str().unwrap().to_string();
        for entity in document["entities"].as_array().unwrap() {
            known.push((
                tenant.clone(),
                entity["uid"]["type"].as_str().unwrap().to_string(),
                entity["uid"]["id"].as_str().unwrap().to_string(),
            ));
        }
    }
    known.sort();
    known
});

/// The example tenants' ids.
fn tenant_ids() -> Vec<String> {
    let mut tenants: Vec<String> = TENANTS.keys().cloned().collect();
    tenants.sort();
    tenants
}

/// The ids of `tenant`'s entities of `type_name`.
fn known_ids(tenant: &str, type_name: &str) -> Vec<String> {
    KNOWN
        .iter()
        .filter(|(t, ty, _)| t == tenant && ty == type_name)
        .map(|(_, _, id)| id.clone())
        .collect()
}

/// The most checks of a batch (and reports of a usage report) the
/// generated calls' service takes: small, so that some batches pass it.
const MAX_BATCH: usize = 8;

fn service() -> Arc<DecisionService> {
    let store = Store::from_catalog(Catalog {
        policies: Arc::clone(&POLICIES),
        tenants: Arc::clone(&TENANTS),
        licenses: Default::default(),
    });
    Arc::new(DecisionService::new(
        Arc::new(store),
        Options::default(),
        Limits {
            max_batch: MAX_BATCH,
            ..Limits::default()
        },
    ))
}

/// The server's service as `tollgate serve` builds it: callers identified
/// and requests admitted before their bodies are read, request bytes
/// checked against the limits before they are decoded, the protobuf codec,
/// the gRPC handlers.
type Server = Bounded<EntitlementServiceServer<GrpcService>>;

fn server(service: &Arc<DecisionService>) -> Server {
    Bounded::new(
        EntitlementServiceServer::new(GrpcService::new(Arc::clone(service)))
            .max_decoding_message_size(4 << 20),
        Arc::clone(service),
        tollgate::api::bounds::Admission::new(
            64,
            64 << 20,
            tollgate::metrics::InFlightCounters::default(),
        ),
    )
}

/// The gRPC methods of `EntitlementService`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Check,
    CheckBatch,
    ReportUsage,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Check => "Check",
            Method::CheckBatch => "CheckBatch",
            Method::ReportUsage => "ReportUsage",
        }
    }
}

/// A message in a gRPC frame (uncompressed).
fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// A server's answer: its status, and the message of an OK one.
#[derive(Debug)]
struct Answered {
    code: tonic::Code,
    message: String,
    body: Vec<u8>,
}

/// Sends `body` (a whole request body) to `method` of `server`.
async fn call(server: &mut Server, method: Method, body: Vec<u8>) -> Answered {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("/tollgate.v1.EntitlementService/{}", method.name()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    std::future::poll_fn(|context| {
        tower_service::Service::<http::Request<Full<Bytes>>>::poll_ready(server, context)
    })
    .await
    .unwrap();
    let response = server.call(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            (collected.to_bytes().to_vec(), trailers)
        }
        Err(status) => {
            return Answered {
                code: status.code(),
                message: status.message().to_string(),
                body: Vec::new(),
            }
        }
    };
    let status = tonic::Status::from_header_map(&parts.headers)
        .or_else(|| trailers.as_ref().and_then(tonic::Status::from_header_map))
        .expect("every answer has a grpc-status");
    Answered {
        code: status.code(),
        message: status.message().to_string(),
        body,
    }
}

/// The message of an answer's first frame.
fn unframe(body: &[u8]) -> Result<&[u8], TestCaseError> {
    prop_assert!(body.len() >= 5, "{} bytes", body.len());
    prop_assert_eq!(body[0], 0);
    let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    prop_assert_eq!(body.len(), 5 + length);
    Ok(&body[5..])
}

// ---------------------------------------------------------------------------
// Refusals name their fields

/// The fields a refusal's path may start with.
const FIELD_HEADS: [&str; 11] = [
    "tenant",
    "what_if",
    "principal",
    "action",
    "resource",
    "context",
    "entities",
    "consume",
    "reports",
    "checks",
    "request",
];

/// Whether `message` starts with a field path (`context.now: ...`,
/// `checks[2].principal.type: ...`).
fn names_a_field(message: &str) -> bool {
    if message.starts_with("principal or resource id: ") {
        return true;
    }
    let end = message.find(['.', '[', ':']).unwrap_or(message.len());
    FIELD_HEADS.contains(&&message[..end]) && message.contains(": ")
}

/// Whether `field`, from a refusal of `request`, is a path into it, or into
/// the context its action's schema asks for.
fn is_field_of(field: &str, request: &pb::CheckRequest) -> bool {
    const WHOLE: [&str; 18] = [
        "tenant",
        "principal",
        "principal.type",
        "principal.id",
        "action",
        "action.type",
        "action.id",
        "resource",
        "resource.type",
        "resource.id",
        "context",
        "entities",
        "request",
        "principal or resource id",
        "consume.meter",
        "consume.amount",
        "consume.idempotency_key",
        "consume",
    ];
    if WHOLE.contains(&field) {
        return true;
    }
    // A what-if override: its entity, attribute or value, or the overrides
    // as a whole (the schema and the snapshot check them together).
    if field == "what_if" || field.starts_with("what_if[") {
        return !request.what_if.is_empty();
    }
    /// Whether `rest` is `key` followed by nothing, `.` or `[`.
    fn starts_with_key(rest: &str, key: &str) -> bool {
        rest.strip_prefix(key)
            .is_some_and(|after| after.is_empty() || after.starts_with(['.', '[']))
    }
    if let Some(rest) = field.strip_prefix("context.") {
        return request
            .context
            .keys()
            .map(String::as_str)
            .chain(["now", "country", "usage"])
            .any(|key| starts_with_key(rest, key));
    }
    if let Some(rest) = field.strip_prefix("entities[") {
        let Some((index, rest)) = rest.split_once(']') else {
            return false;
        };
        let Ok(index) = index.parse::<usize>() else {
            return false;
        };
        let Some(entity) = request.entities.get(index) else {
            return false;
        };
        return rest == ".uid"
            || rest == ".uid.type"
            || rest == ".uid.id"
            || rest.strip_prefix(".parents[").is_some_and(|rest| {
                rest.split_once(']').is_some_and(|(parent, _)| {
                    parent
                        .parse::<usize>()
                        .is_ok_and(|parent| parent < entity.parents.len())
                })
            })
            || rest
                .strip_prefix(".attrs.")
                .is_some_and(|rest| entity.attrs.keys().any(|key| starts_with_key(rest, key)))
            || rest
                .strip_prefix(".tags.")
                .is_some_and(|rest| entity.tags.keys().any(|key| starts_with_key(rest, key)));
    }
    false
}

/// Checks that an error of the decision service on `request` names a field
/// of it, or is one of those about the whole call.
fn names_its_field(error: &decide::Error, request: &pb::CheckRequest) -> Result<(), TestCaseError> {
    match error {
        decide::Error::InvalidArgument(refusal) => {
            prop_assert!(
                is_field_of(&refusal.field, request),
                "`{}` is no field of the request: {error}",
                refusal.field
            );
            prop_assert!(!refusal.problem.is_empty(), "{error}");
            prop_assert_eq!(
                error.to_string(),
                format!("{}: {}", refusal.field, refusal.problem)
            );
        }
        decide::Error::TooManyEntities { field, size, .. } => {
            prop_assert_eq!(field, "entities");
            prop_assert_eq!(*size, request.entities.len());
        }
        decide::Error::MeteringNotConfigured => prop_assert!(request.consume.is_some()),
        other => return Err(TestCaseError::fail(format!("unexpected refusal: {other}"))),
    }
    Ok(())
}

/// The kind of an in-process answer, for the tally.
fn outcome_kind(answer: &Result<pb::CheckResponse, decide::Error>) -> String {
    match answer {
        Ok(response) => format!(
            "decided {}",
            response
                .reasons
                .first()
                .map_or("", |reason| reason.code.as_str())
        ),
        Err(decide::Error::InvalidArgument(refusal)) => {
            let end = refusal
                .field
                .find(['.', '['])
                .unwrap_or(refusal.field.len());
            format!("refused: {}", &refusal.field[..end])
        }
        Err(other) => format!("refused: {:?}", api::status(other).code()),
    }
}

// ---------------------------------------------------------------------------
// Generated requests

/// Texts: plain, printable, anything (controls, NUL), empty, long (past
/// the tenant and id limits).
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z][a-z0-9_-]{0,8}",
        2 => "\\PC{0,12}",
        1 => any::<String>(),
        1 => Just(String::new()),
        1 => (100usize..1100).prop_map(|n| "x".repeat(n)),
    ]
    .boxed()
}

/// Types of the example schema, and `Action`.
const TYPES: [&str; 9] = [
    "User", "Feature", "Account", "Role", "Group", "Seat", "Region", "Meter", "Action",
];

const ACTIONS: [&str; 4] = ["view", "use", "administer", "manage_billing"];

fn entity_ref() -> BoxedStrategy<pb::EntityRef> {
    let known = KNOWN.clone();
    prop_oneof![
        4 => prop::sample::select(known).prop_map(|(_, ty, id)| pb::EntityRef { r#type: ty, id }),
        2 => (prop::sample::select(TYPES.to_vec()), text())
            .prop_map(|(ty, id)| pb::EntityRef { r#type: ty.to_string(), id }),
        1 => (text(), text()).prop_map(|(ty, id)| pb::EntityRef { r#type: ty, id }),
    ]
    .boxed()
}

fn action_ref() -> BoxedStrategy<pb::EntityRef> {
    prop_oneof![
        4 => prop::sample::select(ACTIONS.to_vec()).prop_map(|id| pb::EntityRef {
            r#type: "Action".to_string(),
            id: id.to_string(),
        }),
        1 => entity_ref(),
    ]
    .boxed()
}

/// A Cedar datetime string (a date, with a time, milliseconds and an
/// offset or `Z`).
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

const EXTENSION_FUNCTIONS: [&str; 5] = ["ip", "decimal", "datetime", "duration", "offset"];

/// Arguments extension functions take, and do not.
fn extension_arg() -> BoxedStrategy<String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "10.0.0.1", "::1", "10.0.0.0/8", "ffff::/129", "1.25", "-0.0001",
            "922337203685477.5807", "922337203685477.5808", "1d2h3m4s5ms",
            "-9223372036854775808ms", "9223372036854775807d", "1970-01-01", "",
        ])
        .prop_map(str::to_string),
        2 => datetime_text(),
        1 => text(),
    ]
    .boxed()
}

fn value_of(kind: pb::value::Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

fn extension_name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(EXTENSION_FUNCTIONS.to_vec()).prop_map(str::to_string),
        1 => text(),
    ]
    .boxed()
}

fn leaf_value() -> BoxedStrategy<pb::Value> {
    use pb::value::Kind;
    prop_oneof![
        any::<bool>().prop_map(|b| value_of(Kind::Bool(b))),
        any::<i64>().prop_map(|n| value_of(Kind::Long(n))),
        text().prop_map(|s| value_of(Kind::String(s))),
        entity_ref().prop_map(|r| value_of(Kind::Entity(r))),
        (extension_name(), extension_arg()).prop_map(|(function, arg)| value_of(Kind::Extension(
            pb::Extension {
                r#fn: function,
                arg,
                args: Vec::new(),
            }
        ))),
        Just(pb::Value { kind: None }),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "now", "country", "usage", "used", "requested", "limit", "plan", "account",
        ])
            .prop_map(str::to_string),
        1 => text(),
    ]
    .boxed()
}

/// Values: trees of sets, records and extension calls, and chains nested
/// past the depth limit.
fn value() -> BoxedStrategy<pb::Value> {
    use pb::value::Kind;
    let tree = leaf_value().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6)
                .prop_map(|values| value_of(Kind::Set(pb::ValueSet { values }))),
            prop::collection::hash_map(key(), inner.clone(), 0..5)
                .prop_map(|values| value_of(Kind::Record(pb::ValueRecord { values }))),
            (
                extension_name(),
                prop_oneof![3 => Just(String::new()), 1 => extension_arg()],
                prop::collection::vec(inner, 0..3)
            )
                .prop_map(|(function, arg, args)| value_of(Kind::Extension(
                    pb::Extension {
                        r#fn: function,
                        arg,
                        args
                    }
                ))),
        ]
    });
    let deep = (0usize..48, leaf_value(), any::<bool>()).prop_map(|(depth, leaf, record)| {
        let mut value = leaf;
        for _ in 0..depth {
            value = if record {
                value_of(Kind::Record(pb::ValueRecord {
                    values: HashMap::from([("k".to_string(), value)]),
                }))
            } else {
                value_of(Kind::Set(pb::ValueSet {
                    values: vec![value],
                }))
            };
        }
        value
    });
    prop_oneof![8 => tree, 1 => deep].boxed()
}

/// Context values: any, or of the shapes the schema asks for.
fn context_value() -> BoxedStrategy<pb::Value> {
    use pb::value::Kind;
    prop_oneof![
        3 => value(),
        2 => datetime_text().prop_map(|now| value_of(Kind::Extension(pb::Extension {
            r#fn: "datetime".to_string(),
            arg: now,
            args: Vec::new(),
        }))),
        1 => "[A-Z]{2}".prop_map(|country| value_of(Kind::String(country))),
        1 => usage_value(),
    ]
    .boxed()
}

fn usage_value() -> impl Strategy<Value = pb::Value> {
    use pb::value::Kind;
    (
        any::<i64>(),
        any::<i64>(),
        prop::option::of(any::<i64>()),
        prop::option::of(any::<i64>()),
    )
        .prop_map(|(used, requested, limit, remaining)| {
            let mut values = HashMap::from([
                ("used".to_string(), value_of(Kind::Long(used))),
                ("requested".to_string(), value_of(Kind::Long(requested))),
            ]);
            if let Some(limit) = limit {
                values.insert("limit".to_string(), value_of(Kind::Long(limit)));
            }
            if let Some(remaining) = remaining {
                values.insert("remaining".to_string(), value_of(Kind::Long(remaining)));
            }
            value_of(Kind::Record(pb::ValueRecord { values }))
        })
}

fn context() -> BoxedStrategy<HashMap<String, pb::Value>> {
    prop::collection::hash_map(key(), context_value(), 0..5).boxed()
}

fn entity() -> BoxedStrategy<pb::Entity> {
    (
        prop::option::weighted(0.9, entity_ref()),
        prop::collection::hash_map(key(), value(), 0..3),
        prop::collection::vec(entity_ref(), 0..3),
        prop::collection::hash_map(key(), value(), 0..2),
    )
        .prop_map(|(uid, attrs, parents, tags)| pb::Entity {
            uid,
            attrs,
            parents,
            tags,
        })
        .boxed()
}

fn entities() -> BoxedStrategy<Vec<pb::Entity>> {
    prop_oneof![
        12 => prop::collection::vec(entity(), 0..3),
        1 => (65usize..70).prop_map(|n| vec![pb::Entity::default(); n]),
    ]
    .boxed()
}

fn tenant() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(tenant_ids()),
        1 => "[A-Za-z0-9._-]{1,128}",
        1 => text(),
    ]
    .boxed()
}

/// Attribute overrides of a what-if question: mostly none; else a known
/// account attribute or any text, with any value.
fn what_if() -> BoxedStrategy<Vec<pb::AttributeOverride>> {
    let one = (
        prop::option::weighted(0.95, entity_ref()),
        prop_oneof![
            3 => prop::sample::select(vec!["plan", "tier", "addons", "limit"]).prop_map(String::from),
            1 => text(),
        ],
        prop::option::weighted(0.95, value()),
    )
        .prop_map(|(entity, attribute, value)| pb::AttributeOverride {
            entity,
            attribute,
            value,
        });
    prop_oneof![
        9 => Just(Vec::new()),
        1 => prop::collection::vec(one, 1..3),
    ]
    .boxed()
}

fn consume() -> impl Strategy<Value = pb::Consume> {
    (text(), any::<i64>(), text()).prop_map(|(meter, amount, idempotency_key)| pb::Consume {
        meter,
        amount,
        idempotency_key,
    })
}

/// Any structurally valid `CheckRequest`.
fn check_request() -> BoxedStrategy<pb::CheckRequest> {
    (
        tenant(),
        prop::option::weighted(0.95, entity_ref()),
        prop::option::weighted(0.95, action_ref()),
        prop::option::weighted(0.95, entity_ref()),
        context(),
        entities(),
        any::<bool>(),
        any::<u64>(),
        prop::option::weighted(0.1, consume()),
        what_if(),
    )
        .prop_map(
            |(
                tenant,
                principal,
                action,
                resource,
                context,
                entities,
                explain,
                staleness,
                consume,
                what_if,
            )| {
                pb::CheckRequest {
                    tenant,
                    principal,
                    action,
                    resource,
                    context,
                    entities,
                    explain,
                    max_staleness_ms: staleness,
                    consume,
                    what_if,
                }
            },
        )
        .boxed()
}

fn report_usage_request() -> BoxedStrategy<pb::ReportUsageRequest> {
    (
        tenant(),
        prop::collection::vec(
            (text(), any::<i64>(), text(), prop::option::of(entity_ref())).prop_map(
                |(meter, amount, event_key, principal)| pb::UsageReport {
                    meter,
                    amount,
                    event_key,
                    principal,
                },
            ),
            0..MAX_BATCH + 3,
        ),
    )
        .prop_map(|(tenant, reports)| pb::ReportUsageRequest { tenant, reports })
        .boxed()
}

/// A check that fits the schema: an example tenant, one of its users (or
/// another tenant's), a declared action, a resource of the action's type,
/// and the context the action asks for.
fn valid_check() -> BoxedStrategy<pb::CheckRequest> {
    use pb::value::Kind;
    (
        prop::sample::select(tenant_ids()),
        any::<prop::sample::Index>(),
        prop::sample::select(ACTIONS.to_vec()),
        any::<prop::sample::Index>(),
        prop_oneof![3 => Just(None), 1 => "\\PC{1,8}".prop_map(Some)],
        datetime_text(),
        prop_oneof![
            Just(None),
            "[A-Z]{2}".prop_map(Some),
            "\\PC{0,6}".prop_map(Some)
        ],
        prop::option::of(usage_value()),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                tenant,
                principal,
                action,
                resource,
                made_up_id,
                now,
                country,
                usage,
                explain,
                staleness,
            )| {
                let users: Vec<(String, String)> = KNOWN
                    .iter()
                    .filter(|(_, ty, _)| ty == "User")
                    .map(|(t, _, id)| (t.clone(), id.clone()))
                    .collect();
                // Mostly the tenant's own users.
                let own = known_ids(&tenant, "User");
                let principal_id = if own.is_empty() || principal.index(4) == 0 {
                    principal.get(&users).1.clone()
                } else {
                    principal.get(&own).clone()
                };
                let resource_type = match action {
                    "view" | "use" => "Feature",
                    _ => "Account",
                };
                let resource_id = made_up_id.unwrap_or_else(|| {
                    let ids = known_ids(&tenant, resource_type);
                    if ids.is_empty() {
                        tenant.clone()
                    } else {
                        resource.get(&ids).clone()
                    }
                });
                let mut context = HashMap::from([(
                    "now".to_string(),
                    value_of(Kind::Extension(pb::Extension {
                        r#fn: "datetime".to_string(),
                        arg: now,
                        args: Vec::new(),
                    })),
                )]);
                let country = match (action, country) {
                    ("use", None) => Some("US".to_string()),
                    (_, country) => country,
                };
                if let Some(country) = country {
                    context.insert("country".to_string(), value_of(Kind::String(country)));
                }
                if let (Some(usage), "use") = (usage, action) {
                    context.insert("usage".to_string(), usage);
                }
                pb::CheckRequest {
                    tenant,
                    principal: Some(pb::EntityRef {
                        r#type: "User".to_string(),
                        id: principal_id,
                    }),
                    action: Some(pb::EntityRef {
                        r#type: "Action".to_string(),
                        id: action.to_string(),
                    }),
                    resource: Some(pb::EntityRef {
                        r#type: resource_type.to_string(),
                        id: resource_id,
                    }),
                    context,
                    explain,
                    max_staleness_ms: staleness,
                    ..pb::CheckRequest::default()
                }
            },
        )
        .boxed()
}

// ---------------------------------------------------------------------------
// Generated bytes

/// What may be done to a message's bytes.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip { at: usize, with: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Duplicate { at: usize, len: usize },
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, with)| ByteEdit::Flip { at, with }),
        any::<usize>().prop_map(|at| ByteEdit::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| ByteEdit::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| ByteEdit::Duplicate { at, len }),
    ]
}

fn edit_bytes(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for edit in edits {
        let at = |at: usize, bytes: &Vec<u8>| at % (bytes.len() + 1);
        match edit {
            ByteEdit::Flip { at: place, with } => {
                if !bytes.is_empty() {
                    let place = place % bytes.len();
                    bytes[place] ^= with;
                }
            }
            ByteEdit::Truncate { at: place } => {
                let place = at(*place, &bytes);
                bytes.truncate(place);
            }
            ByteEdit::Insert {
                at: place,
                bytes: inserted,
            } => {
                let place = at(*place, &bytes);
                bytes.splice(place..place, inserted.iter().copied());
            }
            ByteEdit::Duplicate { at: place, len } => {
                let start = at(*place, &bytes);
                let end = (start + len).min(bytes.len());
                let copy = bytes[start..end].to_vec();
                bytes.splice(end..end, copy);
            }
        }
    }
    bytes
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field.
fn field(number: u32, payload: &[u8], out: &mut Vec<u8>) {
    varint((u64::from(number) << 3) | 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// A `CheckRequest` of tenant `acme` whose context value `x` is `depth`
/// sets (or records) deep, written out from the inside (neither building
/// nor encoding it recurses).
fn nested_check(depth: usize, record: bool) -> Vec<u8> {
    let mut value = vec![0x10, 0x01];
    for _ in 0..depth {
        let mut inner = Vec::with_capacity(value.len() + 12);
        if record {
            let mut entry = Vec::with_capacity(value.len() + 8);
            field(1, b"k", &mut entry);
            field(2, &value, &mut entry);
            field(1, &entry, &mut inner);
            value.clear();
            field(5, &inner, &mut value);
        } else {
            field(1, &value, &mut inner);
            value.clear();
            field(4, &inner, &mut value);
        }
    }
    let mut entry = Vec::new();
    field(1, b"x", &mut entry);
    field(2, &value, &mut entry);
    let mut request = Vec::new();
    field(1, b"acme", &mut request);
    field(5, &entry, &mut request);
    request
}

/// Protobuf fields of any number and wire type, with any payload.
fn field_soup() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (0u32..20, 0u8..8, prop::collection::vec(any::<u8>(), 0..24)),
        0..40,
    )
    .prop_map(|fields| {
        let mut out = Vec::new();
        for (number, wire_type, payload) in fields {
            varint((u64::from(number) << 3) | u64::from(wire_type), &mut out);
            match wire_type {
                0 => varint(payload.iter().map(|&b| u64::from(b)).sum(), &mut out),
                2 => {
                    varint(payload.len() as u64, &mut out);
                    out.extend_from_slice(&payload);
                }
                _ => out.extend_from_slice(&payload),
            }
        }
        out
    })
}

/// A request body: framed bytes of any kind, or bytes unframed.
#[derive(Debug, Clone)]
enum Body {
    /// Any bytes, framed.
    Bytes(Vec<u8>),
    /// A structurally valid message, encoded, edited and framed.
    Check(Box<pb::CheckRequest>, Vec<ByteEdit>),
    Batch(Vec<pb::CheckRequest>, Vec<ByteEdit>),
    Report(pb::ReportUsageRequest, Vec<ByteEdit>),
    /// Fields of any number and wire type, framed.
    Soup(Vec<u8>),
    /// A check with a context value nested `depth` deep, framed.
    Nested {
        depth: usize,
        record: bool,
    },
    /// Any bytes, not framed.
    Unframed(Vec<u8>),
}

impl Body {
    fn label(&self) -> &'static str {
        match self {
            Body::Bytes(_) => "bytes",
            Body::Check(..) => "check",
            Body::Batch(..) => "batch",
            Body::Report(..) => "report",
            Body::Soup(_) => "fields",
            Body::Nested { .. } => "nested",
            Body::Unframed(_) => "unframed",
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Bytes(bytes) | Body::Soup(bytes) => frame(bytes),
            Body::Check(check, edits) => frame(&edit_bytes(check.encode_to_vec(), edits)),
            Body::Batch(checks, edits) => {
                let batch = pb::CheckBatchRequest {
                    checks: checks.clone(),
                };
                frame(&edit_bytes(batch.encode_to_vec(), edits))
            }
            Body::Report(report, edits) => frame(&edit_bytes(report.encode_to_vec(), edits)),
            Body::Nested { depth, record } => frame(&nested_check(*depth, *record)),
            Body::Unframed(bytes) => bytes.clone(),
        }
    }
}

/// Deepest nesting generated (past the decoder's limit of 100; deeper
/// values cost time, not coverage: the byte checks stop following nested
/// values at that limit, see
/// `deeply_nested_values_are_refused_without_exhausting_the_stack`).
const MAX_GENERATED_DEPTH: usize = 400;

fn body() -> impl Strategy<Value = Body> {
    let edits = || prop::collection::vec(byte_edit(), 0..4);
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Body::Bytes),
        1 => prop::collection::vec(any::<u8>(), 0..65_536).prop_map(Body::Bytes),
        4 => (check_request(), edits())
            .prop_map(|(check, edits)| Body::Check(Box::new(check), edits)),
        2 => (prop::collection::vec(check_request(), 0..MAX_BATCH + 3), edits())
            .prop_map(|(checks, edits)| Body::Batch(checks, edits)),
        1 => (report_usage_request(), edits())
            .prop_map(|(report, edits)| Body::Report(report, edits)),
        2 => field_soup().prop_map(Body::Soup),
        1 => (prop_oneof![0usize..200, 0..=MAX_GENERATED_DEPTH], any::<bool>())
            .prop_map(|(depth, record)| Body::Nested { depth, record }),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Body::Unframed),
    ]
}

/// The method a body is sent to: its own mostly, any other sometimes.
fn method_for(body: &Body, pick: u8) -> Method {
    let own = match body {
        Body::Batch(..) => Method::CheckBatch,
        Body::Report(..) => Method::ReportUsage,
        _ => Method::Check,
    };
    match pick % 8 {
        0 => Method::Check,
        1 => Method::CheckBatch,
        2 => Method::ReportUsage,
        _ => own,
    }
}

// ---------------------------------------------------------------------------
// Request bytes and requests

#[test]
fn any_request_bytes_are_answered_and_refusals_name_their_field() {
    let service = service();
    let server = std::cell::RefCell::new(server(&service));
    run(
        "request_bytes",
        1024,
        (body(), any::<u8>()),
        |(body, pick), tally| {
            let method = method_for(&body, pick);
            let bytes = body.bytes();
            let length = bytes.len();
            let (answered, grown) =
                growth(|| block_on(call(&mut server.borrow_mut(), method, bytes)));
            prop_assert!(
                grown <= MAX_GROWTH_KIB,
                "a body of {length} bytes took {grown} KiB"
            );
            let framed = !matches!(body, Body::Unframed(_));
            let message = &answered.message;
            let kind = match answered.code {
                tonic::Code::Ok => {
                    let response = unframe(&answered.body)?;
                    let decoded = match method {
                        Method::Check => pb::CheckResponse::decode(response).is_ok(),
                        Method::CheckBatch => pb::CheckBatchResponse::decode(response).is_ok(),
                        Method::ReportUsage => pb::ReportUsageResponse::decode(response).is_ok(),
                    };
                    prop_assert!(decoded, "an answer that does not decode");
                    "answered"
                }
                _ if !framed => "unframed, refused",
                tonic::Code::InvalidArgument if message.starts_with("malformed request body: ") => {
                    // prost names the field it was decoding, when it was in one.
                    if message.contains("Request.")
                        || message.contains("Value.")
                        || message.contains("Entity")
                        || message.contains("Extension.")
                        || message.contains("Consume.")
                        || message.contains("UsageReport.")
                    {
                        "malformed, naming a field"
                    } else {
                        "malformed, naming none"
                    }
                }
                tonic::Code::InvalidArgument => {
                    prop_assert!(names_a_field(message), "{message}");
                    "refused, naming a field"
                }
                tonic::Code::ResourceExhausted => {
                    if message.starts_with("batch of ") {
                        "refused: batch too large"
                    } else {
                        prop_assert!(names_a_field(message), "{message}");
                        prop_assert!(
                            message.contains("request-scoped entities exceed")
                                || message.contains("values exceed"),
                            "{message}"
                        );
                        "refused: too many, naming a field"
                    }
                }
                tonic::Code::FailedPrecondition => {
                    prop_assert_eq!(message, &decide::Error::MeteringNotConfigured.to_string());
                    "refused: metering not configured"
                }
                other => {
                    return Err(TestCaseError::fail(format!(
                        "{other:?} for a framed body: {message}"
                    )))
                }
            };
            tally.note(
                &format!("{} to {}: {kind}", body.label(), method.name()),
                || message.clone(),
            );
            Ok(())
        },
    );
}

/// How deep the values of `request` are nested (a value that is neither a
/// set, a record nor an extension call: 0).
fn deepest(request: &pb::CheckRequest) -> usize {
    fn depth(value: &pb::Value) -> usize {
        use pb::value::Kind;
        match &value.kind {
            Some(Kind::Set(set)) => 1 + set.values.iter().map(depth).max().unwrap_or(0),
            Some(Kind::Record(record)) => 1 + record.values.values().map(depth).max().unwrap_or(0),
            Some(Kind::Extension(extension)) => {
                1 + extension.args.iter().map(depth).max().unwrap_or(0)
            }
            _ => 0,
        }
    }
    request
        .context
        .values()
        .chain(
            request
                .entities
                .iter()
                .flat_map(|entity| entity.attrs.values().chain(entity.tags.values())),
        )
        .chain(
            request
                .what_if
                .iter()
                .filter_map(|item| item.value.as_ref()),
        )
        .map(depth)
        .max()
        .unwrap_or(0)
}

/// Whether every map of `request` holds at most one entry, so that a
/// refusal cannot depend on which of two wrong entries is met first.
fn one_way_to_refuse(request: &pb::CheckRequest) -> bool {
    fn one_way(value: &pb::Value) -> bool {
        use pb::value::Kind;
        match &value.kind {
            Some(Kind::Set(set)) => set.values.iter().all(one_way),
            Some(Kind::Record(record)) => {
                record.values.len() <= 1 && record.values.values().all(one_way)
            }
            Some(Kind::Extension(extension)) => extension.args.iter().all(one_way),
            _ => true,
        }
    }
    request.context.len() <= 1
        && request.context.values().all(one_way)
        && request.entities.iter().all(|entity| {
            entity.attrs.len() + entity.tags.len() <= 1
                && entity
                    .attrs
                    .values()
                    .chain(entity.tags.values())
                    .all(one_way)
        })
        && request
            .what_if
            .iter()
            .all(|item| item.value.as_ref().is_none_or(one_way))
}

#[test]
fn any_check_decides_or_names_its_field_the_same_in_process_and_on_the_wire() {
    let service = service();
    let server = std::cell::RefCell::new(server(&service));
    let caller = Caller::trusted("gen");
    run("check_requests", 512, check_request(), |request, tally| {
        let (answer, grown) = growth(|| block_on(api::check(&service, &caller, request.clone())));
        prop_assert!(grown <= MAX_GROWTH_KIB, "took {grown} KiB");
        tally.note(&outcome_kind(&answer), || match &answer {
            Ok(response) => format!("{response:?}"),
            Err(error) => error.to_string(),
        });
        if let Err(error) = &answer {
            names_its_field(error, &request)?;
        }
        // The same request as bytes, through the server.
        let answered = block_on(call(
            &mut server.borrow_mut(),
            Method::Check,
            frame(&request.encode_to_vec()),
        ));
        match &answer {
            Ok(response) => {
                prop_assert_eq!(answered.code, tonic::Code::Ok, "{}", answered.message);
                let wire = pb::CheckResponse::decode(unframe(&answered.body)?).unwrap();
                prop_assert_eq!(wire.decision, response.decision);
                prop_assert_eq!(&wire.reasons, &response.reasons);
                prop_assert_eq!(&wire.errors, &response.errors);
                prop_assert_eq!(&wire.explanation, &response.explanation);
                prop_assert_eq!(
                    wire.freshness
                        .map(|f| (f.policy_version, f.snapshot_version)),
                    response
                        .freshness
                        .clone()
                        .map(|f| (f.policy_version, f.snapshot_version))
                );
            }
            // Values nested past `MAX_VALUE_DEPTH` may be past the
            // decoder's limit of 100 messages too: the wire refuses them
            // before anything else.
            Err(_)
                if answered.message.starts_with("malformed request body: ")
                    && answered.message.ends_with("recursion limit reached") =>
            {
                prop_assert_eq!(answered.code, tonic::Code::InvalidArgument);
                prop_assert!(deepest(&request) > api::convert::MAX_VALUE_DEPTH);
            }
            Err(error) => {
                let status = api::status(error);
                prop_assert_eq!(answered.code, status.code(), "{}", answered.message);
                if one_way_to_refuse(&request) {
                    prop_assert_eq!(&answered.message, status.message());
                } else {
                    let head = |message: &str| {
                        let end = message.find(['.', '[', ':']).unwrap_or(message.len());
                        message[..end].to_string()
                    };
                    prop_assert_eq!(head(&answered.message), head(status.message()));
                }
            }
        }
        Ok(())
    });
}

#[test]
fn any_batch_decides_or_names_its_check_and_field() {
    let service = service();
    let caller = Caller::trusted("gen");
    run(
        "check_batches",
        256,
        prop::collection::vec(check_request(), 0..MAX_BATCH + 3),
        |checks, tally| {
            let (answer, grown) = growth(|| {
                block_on(api::check_batch(
                    &service,
                    &caller,
                    pb::CheckBatchRequest {
                        checks: checks.clone(),
                    },
                ))
            });
            prop_assert!(grown <= MAX_GROWTH_KIB, "took {grown} KiB");
            match &answer {
                Ok(batch) => {
                    prop_assert_eq!(batch.responses.len(), checks.len());
                    tally.note("decided", || format!("{} checks", checks.len()));
                }
                Err(decide::Error::BatchTooLarge { size, limit, .. }) => {
                    prop_assert_eq!(*size, checks.len());
                    prop_assert!(*size > *limit);
                    tally.note("refused: batch too large", || {
                        answer.as_ref().unwrap_err().to_string()
                    });
                }
                Err(decide::Error::TooManyEntities { field, .. }) => {
                    let index: usize = field
                        .strip_prefix("checks[")
                        .and_then(|rest| rest.strip_suffix("].entities"))
                        .and_then(|index| index.parse().ok())
                        .ok_or_else(|| TestCaseError::fail(format!("no check's field: {field}")))?;
                    prop_assert!(checks[index].entities.len() > decide::MAX_REQUEST_ENTITIES);
                    tally.note("refused: too many entities", || field.clone());
                }
                Err(decide::Error::InvalidArgument(refusal)) => {
                    let (index, field) = refusal
                        .field
                        .strip_prefix("checks[")
                        .and_then(|rest| rest.split_once("]."))
                        .and_then(|(index, field)| Some((index.parse::<usize>().ok()?, field)))
                        .ok_or_else(|| {
                            TestCaseError::fail(format!("no check's field: {}", refusal.field))
                        })?;
                    let check = checks
                        .get(index)
                        .ok_or_else(|| TestCaseError::fail(format!("no check {index}")))?;
                    prop_assert!(
                        is_field_of(field, check)
                            || (field == "consume" && check.consume.is_some()),
                        "`{field}` is no field of check {index}: {refusal}"
                    );
                    let end = field.find(['.', '[']).unwrap_or(field.len());
                    tally.note(&format!("refused: checks[i].{}", &field[..end]), || {
                        refusal.to_string()
                    });
                }
                Err(other) => {
                    return Err(TestCaseError::fail(format!("unexpected refusal: {other}")))
                }
            }
            Ok(())
        },
    );
}

#[test]
fn checks_that_fit_the_schema_always_decide() {
    let service = service();
    let server = std::cell::RefCell::new(server(&service));
    let caller = Caller::trusted("gen");
    run("valid_checks", 256, valid_check(), |request, tally| {
        let answer = block_on(api::check(&service, &caller, request.clone()));
        let response = answer.map_err(|error| {
            TestCaseError::fail(format!("a check that fits the schema is refused: {error}"))
        })?;
        prop_assert!(
            response.decision == pb::Decision::Allow as i32
                || response.decision == pb::Decision::Deny as i32
        );
        prop_assert!(!response.reasons.is_empty());
        tally.note(&outcome_kind(&Ok(response.clone())), || {
            format!("{request:?}")
        });
        let answered = block_on(call(
            &mut server.borrow_mut(),
            Method::Check,
            frame(&request.encode_to_vec()),
        ));
        prop_assert_eq!(answered.code, tonic::Code::Ok, "{}", answered.message);
        let wire = pb::CheckResponse::decode(unframe(&answered.body)?).unwrap();
        prop_assert_eq!(wire.decision, response.decision);
        prop_assert_eq!(&wire.reasons, &response.reasons);
        Ok(())
    });
}

/// A context value nested far deeper than the decoder's limit (100
/// levels) is refused as malformed, however deep: a request of
/// `max_request_bytes` (4 MiB by default) holds 500,000 levels.
#[test]
fn deeply_nested_values_are_refused_without_exhausting_the_stack() {
    let service = service();
    let mut server = server(&service);
    for (depth, record) in [(16_000, false), (16_000, true)] {
        let body = frame(&nested_check(depth, record));
        let answered = block_on(call(&mut server, Method::Check, body));
        assert_eq!(answered.code, tonic::Code::InvalidArgument, "{answered:?}");
    }
}

// ---------------------------------------------------------------------------
// Small readers

#[test]
fn values_round_trip_through_cedar_json_and_refs_parse() {
    run(
        "json_values_and_refs",
        1024,
        (
            value(),
            "\\PC{0,24}",
            any::<String>(),
            (
                "[a-z]{0,8}",
                "[A-Za-z0-9]{12,16}",
                "[a-z.]{1,12}(:[0-9]{1,5})?",
            ),
        ),
        |(value, text, anything, (user, password, host)), tally| {
            // `value_to_json` is `json_to_value`'s inverse on values that
            // have a kind, whose extension calls take `arg` or `args`, and
            // whose records are not of one escape key.
            fn invertible(value: &pb::Value) -> bool {
                use pb::value::Kind;
                match &value.kind {
                    None => false,
                    Some(Kind::Set(set)) => set.values.iter().all(invertible),
                    Some(Kind::Record(record)) => {
                        !(record.values.len() == 1
                            && record
                                .values
                                .keys()
                                .any(|key| key == "__entity" || key == "__extn"))
                            && record.values.values().all(invertible)
                    }
                    Some(Kind::Extension(extension)) => {
                        (extension.arg.is_empty() || extension.args.is_empty())
                            && extension.args.iter().all(invertible)
                    }
                    _ => true,
                }
            }
            let json = api::convert::value_to_json(&value);
            let back = api::convert::json_to_value(&json);
            if invertible(&value) {
                prop_assert_eq!(back.as_ref(), Ok(&value), "{}", json);
                tally.note("value round-trips", || json.to_string());
            } else {
                tally.note("value without an inverse", || json.to_string());
            }
            for reference in [&text, &anything] {
                let parsed = api::convert::parse_ref(reference, None);
                if let Ok(parsed) = &parsed {
                    prop_assert!(!reference.is_empty());
                    if !reference.contains("::\"") {
                        prop_assert_eq!(
                            format!("{}:{}", parsed.r#type, parsed.id),
                            reference.clone()
                        );
                    }
                }
                let _ = api::convert::parse_ref(reference, Some("User"));
            }
            if let Some((tenant, version)) = redis_client::parse_invalidation(anything.as_bytes()) {
                prop_assert!(anything.trim().starts_with(tenant));
                prop_assert!(!tenant.contains(' '));
                let _ = version;
            }
            let _ = redis_client::redact_url(&anything);
            for scheme in ["redis", "rediss"] {
                let url = format!("{scheme}://{user}:{password}@{host}/0");
                let redacted = redis_client::redact_url(&url);
                prop_assert!(!redacted.contains(&password), "{redacted}");
                prop_assert!(redacted.ends_with(&format!("@{host}/0")), "{redacted}");
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// Configuration

/// The configuration's keys.
fn key_names() -> Vec<&'static str> {
    KEYS.iter().map(|(key, _, _)| *key).collect()
}

/// Values a key may be given: its default, numbers, booleans, addresses,
/// paths, URLs, filters, anything.
fn config_value() -> BoxedStrategy<String> {
    prop_oneof![
        4 => printable_config_value(),
        1 => any::<String>().prop_map(|text| text.replace('\0', "")),
    ]
    .boxed()
}

/// Values a file can hold as they are: a file writes a value as a JSON
/// string, which leaves most control and format characters unescaped, and
/// YAML refuses those.
fn printable_config_value() -> BoxedStrategy<String> {
    prop_oneof![
        2 => prop::sample::select(
            KEYS.iter()
                .map(|(_, default, _)| default.to_string())
                .collect::<Vec<_>>()
        ),
        2 => prop::sample::select(vec![
            "0", "1", "2", "1023", "1024", "1048576", " 7 ", "-1", "0.5", "1e3",
            "18446744073709551615", "18446744073709551616", "4294967296",
            "true", "false", "yes", "off", "TRUE", "maybe",
            "127.0.0.1:0", "0.0.0.0:50051", "[::1]:1", "localhost:1", ":1",
            "/", "/nonexistent/x", ".", "./policies", "./entitlements", "Cargo.toml",
            "redis://127.0.0.1:6379", "rediss://user:secret@host:1/2", "http://x",
            "redis://a:1,redis://b:2", " , ", "stdout", "deny", "cedar", "json", "human",
            "required", "optional", "info", "tollgate=debug", "[{a=b}]", "a[b", "=",
            "sixteen-characters", "",
        ])
        .prop_map(str::to_string),
        1 => "\\PC{0,16}",
    ]
    .boxed()
}

/// Where a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    File,
    Nested,
    Env,
    Flag,
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::File),
        Just(Source::Nested),
        Just(Source::Env),
        Just(Source::Flag)
    ]
}

/// A YAML double-quoted scalar of `text`.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// Files, variables and flags setting `values`.
fn sources(values: &[(Source, String, String)]) -> (String, Vec<(String, String)>, FlagValues) {
    let mut file = String::new();
    let mut env = Vec::new();
    let mut flags = FlagValues::default();
    for (source, key, value) in values {
        match source {
            Source::File => file.push_str(&format!("{}: {}\n", quoted(key), quoted(value))),
            Source::Nested => match key.split_once('_') {
                Some((outer, inner)) => file.push_str(&format!(
                    "{}:\n  {}: {}\n",
                    quoted(outer),
                    quoted(inner),
                    quoted(value)
                )),
                None => file.push_str(&format!("{}: {}\n", quoted(key), quoted(value))),
            },
            Source::Env => env.push((
                format!("{}{}", config::ENV_PREFIX, key.to_ascii_uppercase()),
                value.clone(),
            )),
            Source::Flag => match KEYS.iter().find(|(known, _, _)| known == key) {
                Some((known, _, _)) => flags.values.push((known, value.clone())),
                None => env.push((
                    format!("{}{}", config::ENV_PREFIX, key.to_ascii_uppercase()),
                    value.clone(),
                )),
            },
        }
    }
    (file, env, flags)
}

/// Checks that every problem names its key or the file (or the variable).
fn problems_name_key_or_file(
    problems: &[ConfigProblem],
    file: &std::path::Path,
    env: &[(String, String)],
) -> Result<(), TestCaseError> {
    prop_assert!(!problems.is_empty());
    for problem in problems {
        let shown = problem.to_string();
        match problem {
            ConfigProblem::Value { key, .. } | ConfigProblem::Combination { key, .. } => {
                prop_assert!(key_names().contains(key), "{shown}");
                prop_assert!(shown.starts_with(*key), "{shown}");
            }
            ConfigProblem::UnknownKey { file: named, .. }
            | ConfigProblem::File { file: named, .. }
            | ConfigProblem::Unreadable { file: named, .. } => {
                prop_assert_eq!(named.as_path(), file);
                prop_assert!(shown.contains(&file.display().to_string()), "{shown}");
            }
            ConfigProblem::UnknownVariable { name } | ConfigProblem::NotUtf8 { name } => {
                prop_assert!(env.iter().any(|(variable, _)| variable == name), "{shown}");
                prop_assert!(shown.contains(name.as_str()), "{shown}");
            }
        }
    }
    Ok(())
}

/// A line of a YAML-ish configuration file.
fn yaml_line() -> BoxedStrategy<String> {
    let name = || {
        prop_oneof![
            3 => prop::sample::select(key_names()).prop_map(str::to_string),
            1 => prop::sample::select(vec!["redis", "decision", "tls", "usage", "cache", "max"])
                .prop_map(str::to_string),
            1 => "\\PC{0,8}",
        ]
    };
    let scalar = || {
        prop_oneof![
            3 => config_value().prop_map(|value| quoted(&value)),
            2 => config_value().prop_map(|value| value.replace(['\n', '\r'], " ")),
            1 => prop::sample::select(vec![
                "~", "null", "[]", "{}", "[a, 1]", "{a: 1}", "!!binary aGk=", "!!int 3",
                "&a 1", "*a", "|", ">", "'single'", "\"unclosed", "- x", "? x", "@", "`",
                "%YAML 1.2",
            ])
            .prop_map(str::to_string),
        ]
    };
    prop_oneof![
        6 => (name(), scalar()).prop_map(|(name, value)| format!("{name}: {value}")),
        2 => (name(), scalar()).prop_map(|(name, value)| format!("  {name}: {value}")),
        1 => scalar().prop_map(|value| format!("- {value}")),
        1 => prop::sample::select(vec!["---", "...", "", "#", "\t", "  ", ":"])
            .prop_map(str::to_string),
        1 => "\\PC{0,20}",
    ]
    .boxed()
}

/// Aliases of aliases: `levels` levels of ten, expanding to 10^levels
/// nodes if aliases were copied out.
fn alias_bomb(levels: usize) -> String {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..=levels {
        let previous = level - 1;
        let items = vec![format!("*a{previous}"); 10].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    text
}

#[test]
fn configuration_files_load_or_name_the_key_or_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    run(
        "configuration_files",
        256,
        prop_oneof![
            8 => prop::collection::vec(yaml_line(), 0..12)
                .prop_map(|lines| ("lines", lines.join("\n"))),
            1 => (1usize..12).prop_map(|levels| ("aliases", alias_bomb(levels))),
            1 => prop::collection::vec(any::<u8>(), 0..64)
                .prop_map(|bytes| ("bytes", String::from_utf8_lossy(&bytes).to_string())),
        ],
        |(input, text), tally| {
            std::fs::write(&path, &text).unwrap();
            let flags = FlagValues {
                config_file: Some(path.clone()),
                values: Vec::new(),
            };
            let (loaded, grown) = growth(|| config::load_from(&flags, &[]));
            prop_assert!(grown <= MAX_GROWTH_KIB, "took {grown} KiB");
            match loaded {
                Ok(_) => tally.note(&format!("{input}: loaded"), || text.clone()),
                Err(errors) => {
                    problems_name_key_or_file(&errors.0, &path, &[])?;
                    for problem in &errors.0 {
                        let kind = match problem {
                            ConfigProblem::Value { .. } => "value",
                            ConfigProblem::Combination { .. } => "combination",
                            ConfigProblem::UnknownKey { .. } => "unknown key",
                            ConfigProblem::File { .. } => "file",
                            ConfigProblem::Unreadable { .. } => "unreadable",
                            ConfigProblem::UnknownVariable { .. } => "unknown variable",
                            ConfigProblem::NotUtf8 { .. } => "not UTF-8",
                        };
                        tally.note(&format!("{input}: refused: {kind}"), || problem.to_string());
                    }
                }
            }
            Ok(())
        },
    );
}

/// A problem without where its value came from.
fn without_origin(problem: &ConfigProblem) -> String {
    match problem {
        ConfigProblem::Value { key, message, .. } => format!("{key}: {message}"),
        other => other.to_string(),
    }
}

#[test]
fn configuration_values_load_or_name_their_key_and_mean_the_same_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    let load = |values: &[(Source, String, String)]| {
        let (file, env, mut flags) = sources(values);
        std::fs::write(&path, file).unwrap();
        flags.config_file = Some(path.clone());
        (config::load_from(&flags, &env), env)
    };
    run(
        "configuration_values",
        512,
        (
            prop::collection::vec(
                (
                    source(),
                    prop_oneof![
                        8 => prop::sample::select(key_names()).prop_map(str::to_string),
                        1 => "[a-z_]{1,12}",
                    ],
                    config_value(),
                ),
                0..8,
            ),
            prop::sample::select(key_names()),
            printable_config_value(),
        ),
        |(values, key, value), tally| {
            let ((loaded, env), grown) = growth(|| load(&values));
            prop_assert!(grown <= MAX_GROWTH_KIB, "took {grown} KiB");
            match &loaded {
                Ok(_) => tally.note("several values: loaded", || format!("{values:?}")),
                Err(errors) => {
                    problems_name_key_or_file(&errors.0, &path, &env)?;
                    tally.note("several values: refused", || errors.0[0].to_string());
                }
            }
            // One value, from each source in turn: the same outcome.
            let mut outcomes: Vec<Result<(), Vec<String>>> = Vec::new();
            for source in [Source::File, Source::Nested, Source::Env, Source::Flag] {
                let (loaded, env) = load(&[(source, key.to_string(), value.clone())]);
                outcomes.push(match loaded {
                    Ok(_) => Ok(()),
                    Err(errors) => {
                        problems_name_key_or_file(&errors.0, &path, &env)?;
                        let mut problems: Vec<String> =
                            errors.0.iter().map(without_origin).collect();
                        problems.sort();
                        Err(problems)
                    }
                });
            }
            for outcome in &outcomes[1..] {
                prop_assert_eq!(outcome, &outcomes[0], "{} = {:?}", key, value);
            }
            tally.note(
                if outcomes[0].is_ok() {
                    "one value: loaded"
                } else {
                    "one value: refused"
                },
                || format!("{key} = {value:?}"),
            );
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// Replies of the Lua scripts

/// Any reply value of RESP3, as the `redis` crate reads it (server errors
/// aside: they become errors of the call, not values).
fn redis_value() -> BoxedStrategy<redis::Value> {
    use redis::Value;
    let leaf = prop_oneof![
        Just(Value::Nil),
        Just(Value::Okay),
        any::<i64>().prop_map(Value::Int),
        prop_oneof![
            "-?[0-9]{1,20}".prop_map(|digits| digits.into_bytes()),
            prop::collection::vec(any::<u8>(), 0..12),
            prop::sample::select(vec![
                "allow",
                "deny",
                "redecide",
                "replay",
                "document",
                "absent",
                "unchanged",
                ""
            ])
            .prop_map(|text| text.as_bytes().to_vec()),
        ]
        .prop_map(Value::BulkString),
        prop_oneof!["-?[0-9]{1,20}", "\\PC{0,12}"].prop_map(Value::SimpleString),
        any::<f64>().prop_map(Value::Double),
        any::<bool>().prop_map(Value::Boolean),
        "\\PC{0,8}".prop_map(|text| Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text,
        }),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Set),
            prop::collection::vec((inner.clone(), inner.clone()), 0..3).prop_map(Value::Map),
            (
                inner.clone(),
                prop::collection::vec((inner.clone(), inner), 0..2)
            )
                .prop_map(|(data, attributes)| Value::Attribute {
                    data: Box::new(data),
                    attributes,
                }),
        ]
    })
    .boxed()
}

/// What `reply::integer` must read: an integer, or the decimal text of one.
fn integer_of(value: &redis::Value) -> Option<i64> {
    match value {
        redis::Value::Int(n) => Some(*n),
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        redis::Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

fn text_of(value: &redis::Value) -> Option<&str> {
    match value {
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        redis::Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// Checks a refusal: garbage, saying what was expected.
fn is_garbage(failure: &RedisFailure) -> Result<(), TestCaseError> {
    is_garbage_showing(failure)?;
    prop_assert!(
        failure
            .to_string()
            .starts_with("redis returned an unexpected reply: expected "),
        "{failure}"
    );
    Ok(())
}

/// Checks a refusal: garbage, showing what came.
fn is_garbage_showing(failure: &RedisFailure) -> Result<(), TestCaseError> {
    match failure {
        RedisFailure::Garbage(message) => {
            prop_assert!(!message.is_empty());
            Ok(())
        }
        other => Err(TestCaseError::fail(format!("not garbage: {other}"))),
    }
}

#[test]
fn reply_readers_take_what_they_expect_and_refuse_the_rest() {
    run(
        "reply_readers",
        2048,
        (redis_value(), 0usize..6),
        |value, tally| {
            let (value, index) = value;
            match reply::integer(&value) {
                Ok(n) => prop_assert_eq!(Some(n), integer_of(&value)),
                Err(failure) => {
                    prop_assert_eq!(integer_of(&value), None);
                    is_garbage(&failure)?;
                }
            }
            match reply::unsigned(&value) {
                Ok(n) => prop_assert_eq!(integer_of(&value), i64::try_from(n).ok()),
                Err(failure) => {
                    prop_assert!(integer_of(&value).is_none_or(|n| n < 0));
                    is_garbage(&failure)?;
                }
            }
            match reply::text(&value) {
                Ok(text) => prop_assert_eq!(Some(text), text_of(&value)),
                Err(failure) => {
                    prop_assert_eq!(text_of(&value), None);
                    is_garbage(&failure)?;
                }
            }
            match reply::array(&value) {
                Ok(items) => {
                    let redis::Value::Array(expected) = &value else {
                        return Err(TestCaseError::fail("an array read from another value"));
                    };
                    // The items themselves (a `Double` may be NaN).
                    prop_assert!(std::ptr::eq(items, expected.as_slice()));
                    match reply::item(items, index, &value) {
                        Ok(item) => {
                            prop_assert!(items.get(index).is_some_and(|at| std::ptr::eq(at, item)))
                        }
                        Err(failure) => {
                            prop_assert!(index >= items.len());
                            is_garbage(&failure)?;
                        }
                    }
                    tally.note("array", || format!("{value:?}"));
                }
                Err(failure) => {
                    prop_assert!(!matches!(value, redis::Value::Array(_)));
                    is_garbage(&failure)?;
                    tally.note("not an array", || format!("{value:?}"));
                }
            }
            Ok(())
        },
    );
}

/// A RESP2 reply a Redis server may send.
#[derive(Debug, Clone)]
enum Resp {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
    Error(String),
    Array(Vec<Resp>),
}

impl Resp {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Resp::Nil => out.extend_from_slice(b"$-1\r\n"),
            Resp::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Resp::Bulk(bytes) => {
                out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Resp::Simple(text) => out.extend_from_slice(format!("+{text}\r\n").as_bytes()),
            Resp::Error(text) => out.extend_from_slice(format!("-ERR {text}\r\n").as_bytes()),
            Resp::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.encode(out);
                }
            }
        }
    }

    /// The value the `redis` crate reads, `None` when an error is in it.
    fn value(&self) -> Option<redis::Value> {
        Some(match self {
            Resp::Nil => redis::Value::Nil,
            Resp::Int(n) => redis::Value::Int(*n),
            Resp::Bulk(bytes) => redis::Value::BulkString(bytes.clone()),
            Resp::Simple(text) if text == "OK" => redis::Value::Okay,
            Resp::Simple(text) => redis::Value::SimpleString(text.clone()),
            Resp::Error(_) => return None,
            Resp::Array(items) => {
                redis::Value::Array(items.iter().map(Resp::value).collect::<Option<_>>()?)
            }
        })
    }
}

fn bulk(text: &str) -> Resp {
    Resp::Bulk(text.as_bytes().to_vec())
}

/// Replies: any, and of the shapes the scripts send with any contents.
fn resp() -> BoxedStrategy<Resp> {
    // Edge values.
    let number = || {
        prop_oneof![
            any::<i64>().prop_map(Resp::Int),
            prop::sample::select(vec![i64::MAX, i64::MIN, i64::MIN + 1, -1, 0, 1])
                .prop_map(Resp::Int),
            (-3i64..4).prop_map(Resp::Int),
            (0u64..4).prop_map(|n| bulk(&n.to_string())),
            any::<u64>().prop_map(|n| bulk(&n.to_string())),
            "-?[0-9]{1,20}".prop_map(Resp::Simple),
            Just(bulk("")),
            Just(bulk("x1")),
        ]
    };
    let status = prop::sample::select(vec![
        "allow",
        "deny",
        "redecide",
        "replay",
        "document",
        "absent",
        "unchanged",
        "totals",
        "collision",
        "other",
        "",
    ])
    .prop_map(bulk);
    let leaf = prop_oneof![
        Just(Resp::Nil),
        number(),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Resp::Bulk),
        prop_oneof![Just("OK".to_string()), "[ -~]{0,12}"].prop_map(Resp::Simple),
        "[ -~]{0,12}".prop_map(Resp::Error),
    ];
    let anything = leaf.clone().prop_recursive(3, 16, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(Resp::Array)
    });
    // What the scripts send: a status, small counts and versions, a text.
    let small = || {
        prop_oneof![
            (0i64..4).prop_map(Resp::Int),
            (0u64..4).prop_map(|n| bulk(&n.to_string())),
        ]
    };
    let shaped = prop_oneof![
        (
            status.clone(),
            small(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..8).prop_map(Resp::Bulk))
        )
            .prop_map(|(status, second, third)| {
                let mut items = vec![status, second];
                items.extend(third);
                Resp::Array(items)
            }),
        (prop::sample::select(vec!["document", "absent"]).prop_map(bulk))
            .prop_map(|status| Resp::Array(vec![status, bulk(""), bulk("{}")])),
        (small(), small()).prop_map(|(first, second)| Resp::Array(vec![first, second])),
        prop::collection::vec(small(), 0..4).prop_map(|totals| {
            Resp::Array(std::iter::once(bulk("totals")).chain(totals).collect())
        }),
        small().prop_map(|index| Resp::Array(vec![bulk("collision"), index])),
        small(),
    ];
    prop_oneof![
        2 => anything,
        3 => shaped,
        2 => (
            status,
            number(),
            prop::option::of(leaf.clone()),
            prop::collection::vec(leaf.clone(), 0..2)
        )
            .prop_map(|(status, second, third, rest)| {
                let mut items = vec![status, second];
                items.extend(third);
                items.extend(rest);
                Resp::Array(items)
            }),
        2 => prop::collection::vec(number(), 0..4).prop_map(Resp::Array),
        1 => number(),
    ]
    .boxed()
}

/// The script a reply answers.
#[derive(Debug, Clone)]
enum Script {
    Read,
    Put,
    Delete,
    Consume,
    Report(usize),
    StreamAdd(usize),
}

fn script() -> impl Strategy<Value = Script> {
    prop_oneof![
        Just(Script::Read),
        Just(Script::Put),
        Just(Script::Delete),
        Just(Script::Consume),
        (0usize..4).prop_map(Script::Report),
        (0usize..4).prop_map(Script::StreamAdd),
    ]
}

/// What a script's reader must make of a reply: `Some(what it reads)`, or
/// `None` for garbage. Mirrors the scripts' replies (`scripts/*.lua`).
fn expected_reading(script: &Script, reply: &redis::Value) -> Option<String> {
    use redis::Value;
    let items = || match reply {
        Value::Array(items) => Some(items.as_slice()),
        _ => None,
    };
    let unsigned = |value: &Value| integer_of(value).and_then(|n| u64::try_from(n).ok());
    let pair = || match items()? {
        [first, second] => Some((unsigned(first)?, unsigned(second)?)),
        _ => None,
    };
    Some(match script {
        Script::Read => {
            let items = items()?;
            let status = text_of(items.first()?)?;
            let version = match items.get(1)? {
                Value::BulkString(bytes) if bytes.is_empty() => None,
                value => Some(unsigned(value)?),
            };
            match status {
                "unchanged" => format!("{:?}", redis_client::Read::Unchanged { version: version? }),
                "absent" => format!("{:?}", redis_client::Read::Absent { version }),
                "document" => match items.get(2)? {
                    Value::BulkString(bytes) => format!(
                        "{:?}",
                        redis_client::Read::Document {
                            version,
                            bytes: bytes.clone()
                        }
                    ),
                    _ => return None,
                },
                _ => return None,
            }
        }
        // A write's status is read as written (1), stored before (2) or
        // not newer (0); any other is garbage.
        Script::Put => {
            let (written, previous) = pair()?;
            format!(
                "{:?}",
                match written {
                    1 => redis_client::PutOutcome::Written { previous },
                    2 => redis_client::PutOutcome::AlreadyStored,
                    0 => redis_client::PutOutcome::NotNewer { stored: previous },
                    _ => return None,
                }
            )
        }
        Script::Delete => {
            let (status, version) = pair()?;
            format!(
                "{:?}",
                match status {
                    1 => redis_client::DeleteOutcome::Deleted { version },
                    0 => redis_client::DeleteOutcome::Absent,
                    2 => redis_client::DeleteOutcome::VersionMismatch { stored: version },
                    _ => return None,
                }
            )
        }
        Script::Consume => {
            let items = items()?;
            let used = || integer_of(items.get(1)?);
            format!(
                "{:?}",
                match text_of(items.first()?)? {
                    "allow" => scripts::ConsumeReply::Allowed { used: used()? },
                    "deny" => scripts::ConsumeReply::Refused { used: used()? },
                    "redecide" => scripts::ConsumeReply::Redecide { used: used()? },
                    "replay" => scripts::ConsumeReply::Replay(text_of(items.get(2)?)?.to_string()),
                    _ => return None,
                }
            )
        }
        // `["totals", n...]`, a total for each report; `["collision", i]`,
        // the report (from 1) whose event key names another event.
        Script::Report(count) => {
            let (outcome, rest) = items()?.split_first()?;
            format!(
                "{:?}",
                match text_of(outcome)? {
                    "totals" => {
                        let totals = rest.iter().map(integer_of).collect::<Option<Vec<i64>>>()?;
                        if totals.len() != *count {
                            return None;
                        }
                        scripts::Reported::Totals(totals)
                    }
                    "collision" => match rest {
                        [index] => {
                            let index = usize::try_from(integer_of(index)?).ok()?;
                            if !(1..=*count).contains(&index) {
                                return None;
                            }
                            scripts::Reported::Collision { index: index - 1 }
                        }
                        _ => return None,
                    },
                    _ => return None,
                }
            )
        }
        Script::StreamAdd(count) => {
            if unsigned(reply)? != *count as u64 {
                return None;
            }
            "()".to_string()
        }
    })
}

/// Runs `script` on `conn`, showing what it read.
async fn run_script(script: &Script, conn: &RedisConn) -> Result<String, RedisFailure> {
    Ok(match script {
        Script::Read => format!("{:?}", conn.read_snapshot("acme", Some(1)).await?),
        Script::Put => format!("{:?}", conn.put_snapshot("acme", 2, "{}").await?),
        Script::Delete => format!("{:?}", conn.delete_snapshot("acme", None).await?),
        Script::Consume => format!(
            "{:?}",
            scripts::UsageConsume {
                counter_key: "c",
                tenant: "acme",
                amount: 1,
                limit: 10,
                idempotency_ttl_ms: 1000,
                meter: "m",
                key: "k",
                principal: "User::\"u\"",
                decision_id: "d",
                time_ms: 1,
                stream_maxlen: 10,
                expire_at: 0,
                allowed_record: "a",
                refused_record: "r",
                lowest: None,
                highest: Some(5),
                window: "all",
            }
            .run(conn)
            .await?
        ),
        Script::Report(count) => {
            let items: Vec<scripts::ReportItem<'_>> = (0..*count)
                .map(|_| scripts::ReportItem {
                    counter_key: "c".to_string(),
                    gauge: false,
                    amount: 1,
                    meter: "m",
                    event_key: "e",
                    principal: "",
                    expire_at: 0,
                    fingerprint: "f",
                    limit: 10,
                    window: "all".to_string(),
                })
                .collect();
            format!(
                "{:?}",
                scripts::UsageReport {
                    tenant: "acme",
                    items: &items,
                    stream_maxlen: 10,
                    idempotency_ttl_ms: 1000,
                    time_ms: 1,
                }
                .run(conn)
                .await?
            )
        }
        Script::StreamAdd(count) => {
            let records = vec!["{}".to_string(); *count];
            format!(
                "{:?}",
                scripts::DecisionStreamAdd {
                    key: "s",
                    max_len: 10,
                    records: &records,
                }
                .run(conn)
                .await?
            )
        }
    })
}

/// The replies a [`fake_redis`] sends, in turn.
type Replies = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// A command of RESP (an array of bulk strings) at the start of `buffer`,
/// and the bytes it takes.
fn command(buffer: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(buffer: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buffer.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&buffer[at..at + end], at + end + 2))
    }
    let (head, mut at) = line(buffer, 0)?;
    let count: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let (head, next) = line(buffer, at)?;
        let len: usize = std::str::from_utf8(head.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let arg = buffer.get(next..next + len)?;
        args.push(arg.to_vec());
        at = next + len + 2;
        if buffer.len() < at {
            return None;
        }
    }
    Some((args, at))
}

/// A Redis server in this process that answers the client's handshake and
/// every other command with the next of `replies`.
async fn fake_redis(replies: Replies) -> RedisConn {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let replies = Arc::clone(&replies);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some((args, used)) = command(&buffer) {
                        buffer.drain(..used);
                        let name = args.first().map(|name| name.to_ascii_uppercase());
                        let reply = match name.as_deref() {
                            Some(b"CLIENT") => b"+OK\r\n".to_vec(),
                            Some(b"PING") => b"+PONG\r\n".to_vec(),
                            _ => replies
                                .lock()
                                .unwrap()
                                .pop_front()
                                .unwrap_or_else(|| b"-ERR no reply queued\r\n".to_vec()),
                        };
                        if socket.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                    }
                }
            });
        }
    });
    RedisConn::connect(&RedisSettings {
        urls: vec![format!("redis://127.0.0.1:{port}")],
        cluster: false,
        username: None,
        password: None,
        tls_ca_file: None,
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap()
}

#[test]
fn script_replies_are_read_as_they_say_or_refused_as_garbage() {
    let replies = Replies::default();
    let conn = block_on(fake_redis(Arc::clone(&replies)));
    run(
        "script_replies",
        1024,
        (script(), resp()),
        |(script, reply), tally| {
            let mut bytes = Vec::new();
            reply.encode(&mut bytes);
            replies.lock().unwrap().push_back(bytes);
            let read = block_on(run_script(&script, &conn));
            prop_assert!(replies.lock().unwrap().is_empty(), "the reply was not read");
            let kind = match (reply.value(), &read) {
                (None, Err(RedisFailure::Redis(_))) if matches!(reply, Resp::Error(_)) => {
                    "a server error"
                }
                // An error inside an array: refused one way or another.
                (None, Err(RedisFailure::Redis(_) | RedisFailure::Garbage(_))) => "an error inside",
                (None, Ok(read)) => {
                    return Err(TestCaseError::fail(format!(
                        "a reply holding an error is read as {read}"
                    )))
                }
                (Some(value), read) => match (expected_reading(&script, &value), read) {
                    (Some(expected), Ok(read)) => {
                        prop_assert_eq!(read, &expected);
                        "read"
                    }
                    (None, Err(failure)) => {
                        is_garbage_showing(failure)?;
                        if failure.to_string().contains(": expected ") {
                            "garbage, saying what was expected"
                        } else {
                            "garbage, not saying what was expected"
                        }
                    }
                    (expected, read) => {
                        return Err(TestCaseError::fail(format!(
                            "{script:?} of {value:?}: expected {expected:?}, read {read:?}"
                        )))
                    }
                },
                (None, Err(other)) => return Err(TestCaseError::fail(format!("{other}"))),
            };
            tally.note(&format!("{script:?}: {kind}"), || {
                format!("{reply:?} -> {read:?}")
            });
            Ok(())
        },
    );
}
