//! The proto's JSON mapping, as the HTTP front door reads and writes it.
//!
//! Messages follow protobuf's canonical JSON mapping (serde impls generated
//! by pbjson-build): field names in lowerCamelCase or as written in the
//! proto, 64-bit integers as strings or numbers, enums by name. A body that
//! `grpcurl -d` accepts is accepted here.
//!
//! A [`pb::Value`] is read in either of two forms:
//! - the proto form, an object with exactly one of the keys `bool`, `long`,
//!   `string`, `set` (`{"values": [...]}`), `record` (`{"values": {...}}`),
//!   `entity` (`{"type", "id"}`) or `extension` (`{"fn", "arg"}` or
//!   `{"fn", "args"}`);
//! - Cedar's own JSON form: `true`, `42`, `"text"`, `[...]` for a set,
//!   `{...}` for a record, `{"__entity": {"type", "id"}}` and
//!   `{"__extn": {"fn", "arg"}}`.
//!
//! An object whose only key names a proto form is read as that form (a
//! Cedar record with the single attribute `string`, say, is written in the
//! proto form: `{"record": {"values": {"string": ...}}}`). Values are
//! written in the proto form.
//!
//! Before a body is decoded it is scanned without allocating, and refused
//! when it holds more checks, reports, request-scoped entities or values
//! than a call may carry: the same limits, counted the same way and named
//! by the same errors as the gRPC front door's ([`super::bounds`]).

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::pb;
use crate::decide::{self, Limits, MAX_REQUEST_ENTITIES, MAX_REQUEST_VALUES};

impl Serialize for pb::Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use pb::value::Kind;
        let mut map = serializer.serialize_map(Some(usize::from(self.kind.is_some())))?;
        match &self.kind {
            None => {}
            Some(Kind::Bool(value)) => map.serialize_entry("bool", value)?,
            // 64-bit integers are strings in the mapping (JSON numbers lose
            // precision past 2^53 in many readers).
            Some(Kind::Long(value)) => map.serialize_entry("long", &value.to_string())?,
            Some(Kind::String(value)) => map.serialize_entry("string", value)?,
            Some(Kind::Set(value)) => map.serialize_entry("set", value)?,
            Some(Kind::Record(value)) => map.serialize_entry("record", value)?,
            Some(Kind::Entity(value)) => map.serialize_entry("entity", value)?,
            Some(Kind::Extension(value)) => map.serialize_entry("extension", value)?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for pb::Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

fn value(kind: pb::value::Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

/// The keys that name a form when an object holds only one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Bool,
    Long,
    String,
    Set,
    Record,
    Entity,
    Extension,
    /// Cedar's `__entity` escape.
    CedarEntity,
    /// Cedar's `__extn` escape.
    CedarExtension,
}

impl Form {
    fn of(key: &str) -> Option<Self> {
        Some(match key {
            "bool" => Self::Bool,
            "long" => Self::Long,
            "string" => Self::String,
            "set" => Self::Set,
            "record" => Self::Record,
            "entity" => Self::Entity,
            "extension" => Self::Extension,
            "__entity" => Self::CedarEntity,
            "__extn" => Self::CedarExtension,
            _ => return None,
        })
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = pb::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a Cedar value (a boolean, an integer, a string, an array, an object) or a proto-form value such as {\"string\": \"...\"}")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<pb::Value, E> {
        Ok(value_of_bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<pb::Value, E> {
        Ok(value_of_long(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<pb::Value, E> {
        i64::try_from(value)
            .map(value_of_long)
            .map_err(|_| E::custom(format!("{value} is past the largest Cedar long")))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<pb::Value, E> {
        Err(E::custom(format!(
            "{value} is not an integer: Cedar has no floating-point numbers (use a decimal extension value)"
        )))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<pb::Value, E> {
        Ok(value_of_string(value.to_string()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<pb::Value, E> {
        Ok(value_of_string(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<pb::Value, E> {
        Err(E::custom("null is not a Cedar value"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<pb::Value, A::Error> {
        let mut values = Vec::new();
        while let Some(element) = seq.next_element::<pb::Value>()? {
            values.push(element);
        }
        Ok(value(pb::value::Kind::Set(pb::ValueSet { values })))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<pb::Value, A::Error> {
        let mut entries: Vec<(String, pb::Value)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let element = map.next_value::<pb::Value>()?;
            entries.push((key, element));
        }
        if let [(key, inner)] = entries.as_slice() {
            if let Some(form) = Form::of(key) {
                return of_form(form, inner.clone()).map_err(de::Error::custom);
            }
        }
        if let Some((key, _)) = entries
            .iter()
            .find(|(key, _)| key == "__entity" || key == "__extn")
        {
            return Err(de::Error::custom(format!(
                "`{key}` must be the only key of its object"
            )));
        }
        let mut values = HashMap::with_capacity(entries.len());
        for (key, element) in entries {
            if values.insert(key.clone(), element).is_some() {
                return Err(de::Error::custom(format!("duplicate attribute `{key}`")));
            }
        }
        Ok(value(pb::value::Kind::Record(pb::ValueRecord { values })))
    }
}

fn value_of_bool(value: bool) -> pb::Value {
    self::value(pb::value::Kind::Bool(value))
}

fn value_of_long(value: i64) -> pb::Value {
    self::value(pb::value::Kind::Long(value))
}

fn value_of_string(value: String) -> pb::Value {
    self::value(pb::value::Kind::String(value))
}

/// The attributes of a record value, or an error naming what was expected.
fn record(value: pb::Value, expected: &str) -> Result<HashMap<String, pb::Value>, String> {
    match value.kind {
        Some(pb::value::Kind::Record(record)) => Ok(record.values),
        _ => Err(format!("expected {expected}")),
    }
}

fn string_field(
    fields: &mut HashMap<String, pb::Value>,
    name: &str,
    form: &str,
) -> Result<Option<String>, String> {
    match fields.remove(name).map(|value| value.kind) {
        None => Ok(None),
        Some(Some(pb::value::Kind::String(text))) => Ok(Some(text)),
        Some(_) => Err(format!("`{form}.{name}` must be a string")),
    }
}

fn no_other_fields(fields: &HashMap<String, pb::Value>, form: &str) -> Result<(), String> {
    match fields.keys().next() {
        Some(key) => Err(format!("`{form}` has no field `{key}`")),
        None => Ok(()),
    }
}

/// Reads `inner` as the value of a one-key object in the form `form`.
fn of_form(form: Form, inner: pb::Value) -> Result<pb::Value, String> {
    use pb::value::Kind;
    Ok(match (form, inner.kind) {
        (Form::Bool, Some(Kind::Bool(value))) => value_of_bool(value),
        (Form::Bool, _) => return Err("`bool` must be true or false".to_string()),
        (Form::Long, Some(Kind::Long(value))) => value_of_long(value),
        (Form::Long, Some(Kind::String(text))) => value_of_long(
            text.parse()
                .map_err(|_| format!("`long`: `{text}` is not a 64-bit integer"))?,
        ),
        (Form::Long, _) => return Err("`long` must be an integer".to_string()),
        (Form::String, Some(Kind::String(text))) => value_of_string(text),
        (Form::String, _) => return Err("`string` must be a string".to_string()),
        (Form::Set, Some(Kind::Set(set))) => value(Kind::Set(set)),
        (Form::Set, kind) => {
            let mut fields = record(pb::Value { kind }, "`set` to be {\"values\": [...]}")?;
            let values = match fields.remove("values").map(|value| value.kind) {
                None => Vec::new(),
                Some(Some(Kind::Set(set))) => set.values,
                Some(_) => return Err("`set.values` must be an array".to_string()),
            };
            no_other_fields(&fields, "set")?;
            value(Kind::Set(pb::ValueSet { values }))
        }
        (Form::Record, kind) => {
            let mut fields = record(pb::Value { kind }, "`record` to be {\"values\": {...}}")?;
            let values = match fields.remove("values").map(|value| value.kind) {
                None => HashMap::new(),
                Some(Some(Kind::Record(record))) => record.values,
                Some(_) => return Err("`record.values` must be an object".to_string()),
            };
            no_other_fields(&fields, "record")?;
            value(Kind::Record(pb::ValueRecord { values }))
        }
        (Form::Entity | Form::CedarEntity, kind) => {
            let name = if form == Form::Entity {
                "entity"
            } else {
                "__entity"
            };
            let mut fields = record(
                pb::Value { kind },
                &format!("`{name}` to be {{\"type\": ..., \"id\": ...}}"),
            )?;
            let r#type = string_field(&mut fields, "type", name)?
                .ok_or_else(|| format!("`{name}` needs a `type`"))?;
            let id = string_field(&mut fields, "id", name)?
                .ok_or_else(|| format!("`{name}` needs an `id`"))?;
            no_other_fields(&fields, name)?;
            value(Kind::Entity(pb::EntityRef { r#type, id }))
        }
        (Form::Extension | Form::CedarExtension, kind) => {
            let name = if form == Form::Extension {
                "extension"
            } else {
                "__extn"
            };
            let mut fields = record(
                pb::Value { kind },
                &format!("`{name}` to be {{\"fn\": ..., \"arg\": ...}}"),
            )?;
            let function = string_field(&mut fields, "fn", name)?
                .ok_or_else(|| format!("`{name}` needs a `fn`"))?;
            let arg = string_field(&mut fields, "arg", name)?.unwrap_or_default();
            let args = match fields.remove("args").map(|value| value.kind) {
                None => Vec::new(),
                Some(Some(Kind::Set(set))) => set.values,
                Some(_) => return Err(format!("`{name}.args` must be an array")),
            };
            no_other_fields(&fields, name)?;
            value(Kind::Extension(pb::Extension {
                r#fn: function,
                arg,
                args,
            }))
        }
    })
}

/// A `CheckRequest` read from JSON, refused before decoding when it carries
/// more than a call may.
pub fn check_request(bytes: &[u8]) -> Result<pb::CheckRequest, decide::Error> {
    let mut scan = Scan::new();
    let _ =
        serde_json::Deserializer::from_slice(bytes).deserialize_any(CheckSeed { scan: &mut scan });
    if let Some(refused) = scan.refusal() {
        return Err(refused);
    }
    decode(bytes, "CheckRequest")
}

/// A `ListEntitlementsRequest` read from JSON, refused before decoding
/// when its context and what-if overrides carry more values than a call may.
pub fn list_entitlements_request(
    bytes: &[u8],
) -> Result<pb::ListEntitlementsRequest, decide::Error> {
    let mut scan = Scan::new();
    let _ =
        serde_json::Deserializer::from_slice(bytes).deserialize_any(CheckSeed { scan: &mut scan });
    if let Some(refused) = scan.refusal() {
        return Err(refused);
    }
    decode(bytes, "ListEntitlementsRequest")
}

/// A `CheckBatchRequest` read from JSON, refused before decoding when it
/// holds more checks than `limits` allow, or its checks more than a call may
/// carry.
pub fn check_batch_request(
    bytes: &[u8],
    limits: Limits,
) -> Result<pb::CheckBatchRequest, decide::Error> {
    let mut scan = Scan::new();
    let mut checks = 0;
    let _ = serde_json::Deserializer::from_slice(bytes).deserialize_any(TopLevel {
        field: "checks",
        seed: ChecksList {
            scan: &mut scan,
            count: &mut checks,
        },
    });
    if checks > limits.max_batch {
        return Err(decide::Error::BatchTooLarge {
            items: "checks",
            size: checks,
            limit: limits.max_batch,
        });
    }
    if let Some(refused) = scan.refusal() {
        return Err(refused);
    }
    decode(bytes, "CheckBatchRequest")
}

/// A `ReportUsageRequest` read from JSON, refused before decoding when it
/// holds more reports than `limits` allow.
pub fn report_usage_request(
    bytes: &[u8],
    limits: Limits,
) -> Result<pb::ReportUsageRequest, decide::Error> {
    let mut reports = 0;
    let _ = serde_json::Deserializer::from_slice(bytes).deserialize_any(TopLevel {
        field: "reports",
        seed: Counted(&mut reports),
    });
    if reports > limits.max_batch {
        return Err(decide::Error::BatchTooLarge {
            items: "reports",
            size: reports,
            limit: limits.max_batch,
        });
    }
    decode(bytes, "ReportUsageRequest")
}

/// The values an AuthZEN request carries (in its contexts and its
/// subjects', actions' and resources' properties and other members but
/// `type`, `id` and `name`), and its number of evaluations, counted before it
/// is decoded.
pub fn count_authzen(bytes: &[u8]) -> (usize, usize) {
    let mut scan = Scan::new();
    let mut evaluations = 0;
    let _ = serde_json::Deserializer::from_slice(bytes).deserialize_any(AuthzenSeed {
        scan: &mut scan,
        evaluations: Some(&mut evaluations),
    });
    (scan.values, evaluations)
}

/// An AuthZEN evaluation (or the evaluations request, whose `evaluations`
/// are evaluations in turn).
struct AuthzenSeed<'a> {
    scan: &'a mut Scan,
    evaluations: Option<&'a mut usize>,
}

impl<'de> DeserializeSeed<'de> for AuthzenSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AuthzenSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an AuthZEN request")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<AuthzenKey>()? {
            match key {
                AuthzenKey::Context => map.next_value_seed(MapValues(&mut *self.scan))?,
                AuthzenKey::Member => map.next_value_seed(Member(&mut *self.scan))?,
                AuthzenKey::Evaluations => match self.evaluations.take() {
                    Some(count) => map.next_value_seed(EvaluationList {
                        scan: &mut *self.scan,
                        count,
                    })?,
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                },
                AuthzenKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The keys of an AuthZEN request the scan looks into.
enum AuthzenKey {
    Context,
    /// `subject`, `action`, `resource`.
    Member,
    Evaluations,
    Other,
}

impl<'de> Deserialize<'de> for AuthzenKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = AuthzenKey;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<AuthzenKey, E> {
                Ok(match key {
                    "context" => AuthzenKey::Context,
                    "subject" | "action" | "resource" => AuthzenKey::Member,
                    "evaluations" => AuthzenKey::Evaluations,
                    _ => AuthzenKey::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A subject, action or resource: every member but `type`, `id` and `name`
/// is a value, and `properties` an object of values.
struct Member<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for Member<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Member<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a subject, action or resource")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<MemberKey>()? {
            match key {
                MemberKey::Name => {
                    map.next_value::<IgnoredAny>()?;
                }
                MemberKey::Properties => map.next_value_seed(MapValues(&mut *self.0))?,
                MemberKey::Other => map.next_value_seed(ValueSeed(&mut *self.0))?,
            }
        }
        Ok(())
    }
}

enum MemberKey {
    /// `type`, `id`, `name`.
    Name,
    Properties,
    Other,
}

impl<'de> Deserialize<'de> for MemberKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = MemberKey;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<MemberKey, E> {
                Ok(match key {
                    "type" | "id" | "name" => MemberKey::Name,
                    "properties" => MemberKey::Properties,
                    _ => MemberKey::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A batch's evaluations: counted, and each scanned.
struct EvaluationList<'a> {
    scan: &'a mut Scan,
    count: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for EvaluationList<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EvaluationList<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array of evaluations")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(AuthzenSeed {
                scan: &mut *self.scan,
                evaluations: None,
            })?
            .is_some()
        {
            *self.count += 1;
        }
        Ok(())
    }
}

/// Decodes a whole message; a body that is not one is the caller's fault.
pub fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, decide::Error> {
    serde_json::from_slice(bytes).map_err(|error| {
        decide::Error::InvalidArgument(tollgate_engine::RequestError::new(
            "body",
            format!("not a valid {what}: {error}"),
        ))
    })
}

fn too_many_values(field: &str, size: usize) -> decide::Error {
    decide::Error::TooManyValues {
        field: field.to_string(),
        size,
        limit: MAX_REQUEST_VALUES,
    }
}

/// What the scan of a request has counted so far. A scan never stops early:
/// a batch's size is still counted past a check over its limits.
#[derive(Debug)]
struct Scan {
    /// Values, over every check of a batch.
    values: usize,
    /// The check of a batch being scanned (`None`: the request is one
    /// check), which a refusal names.
    check: Option<usize>,
    /// The first check with too many request-scoped entities.
    entities: Option<decide::Error>,
    /// Where the values ran out.
    values_over: Option<decide::Error>,
}

impl Scan {
    fn new() -> Self {
        Self {
            values: 0,
            check: None,
            entities: None,
            values_over: None,
        }
    }

    fn take(&mut self) {
        self.values += 1;
        if self.values == MAX_REQUEST_VALUES + 1 && self.values_over.is_none() {
            let field = match self.check {
                Some(index) => format!("checks[{index}]"),
                None => "request".to_string(),
            };
            self.values_over = Some(too_many_values(&field, self.values));
        }
    }

    /// What a refusal for too many entities names.
    fn entities_field(&self) -> String {
        match self.check {
            Some(index) => format!("checks[{index}].entities"),
            None => "entities".to_string(),
        }
    }

    /// The refusal, as the protobuf scan orders them: entities, then values.
    fn refusal(self) -> Option<decide::Error> {
        self.entities.or(self.values_over)
    }
}

/// The top-level object, whose field `field` is read with `seed` and the
/// rest skipped.
struct TopLevel<S> {
    field: &'static str,
    seed: S,
}

impl<'de, S: DeserializeSeed<'de, Value = ()>> Visitor<'de> for TopLevel<S> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seed = Some(self.seed);
        while let Some(key) = map.next_key::<Key>()? {
            match (&*key.0 == self.field, seed.take()) {
                (true, Some(seed)) => map.next_value_seed(seed)?,
                (_, unused) => {
                    seed = unused;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// An array, only counted.
struct Counted<'a>(&'a mut usize);

impl<'de> DeserializeSeed<'de> for Counted<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counted<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {
            *self.0 += 1;
        }
        Ok(())
    }
}

/// A batch's checks: counted, and each scanned.
struct ChecksList<'a> {
    scan: &'a mut Scan,
    count: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for ChecksList<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ChecksList<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array of checks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let index = *self.count;
            self.scan.check = Some(index);
            let seed = CheckSeed {
                scan: &mut *self.scan,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            *self.count += 1;
        }
    }
}

/// An object key, matched without allocating when it has no escapes.
struct Key(std::borrow::Cow<'static, str>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                // Only the keys the scan looks for are kept.
                const KNOWN: &[&str] = &[
                    "checks",
                    "reports",
                    "context",
                    "entities",
                    "attrs",
                    "tags",
                    "parents",
                    "values",
                    "args",
                    "bool",
                    "long",
                    "string",
                    "set",
                    "record",
                    "entity",
                    "extension",
                    "__entity",
                    "__extn",
                    "what_if",
                    "whatIf",
                    "value",
                ];
                Ok(Key(std::borrow::Cow::Borrowed(
                    KNOWN
                        .iter()
                        .find(|known| **known == key)
                        .copied()
                        .unwrap_or(""),
                )))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// One check: its context's values and its request-scoped entities.
struct CheckSeed<'a> {
    scan: &'a mut Scan,
}

impl<'de> DeserializeSeed<'de> for CheckSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CheckSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a check")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            match &*key.0 {
                "context" => map.next_value_seed(MapValues(&mut *self.scan))?,
                "what_if" | "whatIf" => map.next_value_seed(Overrides(&mut *self.scan))?,
                "entities" => {
                    let count = map.next_value_seed(EntityList(&mut *self.scan))?;
                    if count > MAX_REQUEST_ENTITIES && self.scan.entities.is_none() {
                        self.scan.entities = Some(decide::Error::TooManyEntities {
                            field: self.scan.entities_field(),
                            size: count,
                            limit: MAX_REQUEST_ENTITIES,
                        });
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A what-if question's attribute overrides: each one's `value`.
struct Overrides<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for Overrides<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Overrides<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array of attribute overrides")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Override(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// One attribute override: its `value`.
struct Override<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for Override<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Override<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an attribute override")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            match &*key.0 {
                "value" => map.next_value_seed(ValueSeed(&mut *self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// An object whose every field is a value (a context, attributes, tags, a
/// record's `values`).
struct MapValues<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for MapValues<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MapValues<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object of values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(ValueSeed(&mut *self.0))?;
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An array whose every element is a value (a set, extension arguments).
struct SeqValues<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for SeqValues<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SeqValues<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array of values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(ValueSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// The fields of a proto-form wrapper's inner object that hold values:
/// `values` (as an array or an object) and `args`.
struct InnerValues<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for InnerValues<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for InnerValues<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a value's fields")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        SeqValues(self.0).visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            match &*key.0 {
                "values" | "args" => map.next_value_seed(AnyValues(&mut *self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A set's `values` (an array) or a record's (an object).
struct AnyValues<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for AnyValues<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyValues<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        SeqValues(self.0).visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        MapValues(self.0).visit_map(map)
    }
}

/// One value, counted with everything nested in it as the proto's would be.
struct ValueSeed<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.take();
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.0.take();
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.0.take();
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.0.take();
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.0.take();
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.take();
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.0.take();
        SeqValues(self.0).visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.take();
        let Some(first) = map.next_key::<Key>()? else {
            return Ok(());
        };
        // A wrapper's inner value is part of the one value it wraps; a
        // record's attributes are values of their own.
        match Form::of(&first.0) {
            Some(Form::Set | Form::Record | Form::Extension | Form::CedarExtension) => {
                map.next_value_seed(InnerValues(&mut *self.0))?;
            }
            Some(_) => {
                map.next_value::<IgnoredAny>()?;
            }
            None => map.next_value_seed(ValueSeed(&mut *self.0))?,
        }
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(ValueSeed(&mut *self.0))?;
        }
        Ok(())
    }
}

/// A check's request-scoped entities: counted, with their attributes', tags'
/// and parents' values.
struct EntityList<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for EntityList<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntityList<'_> {
    type Value = usize;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array of entities")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while seq.next_element_seed(EntitySeed(&mut *self.0))?.is_some() {
            count += 1;
        }
        Ok(count)
    }

    fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
        Ok(0)
    }
}

struct EntitySeed<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for EntitySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntitySeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an entity")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            match &*key.0 {
                "attrs" | "tags" => map.next_value_seed(MapValues(&mut *self.0))?,
                "parents" => map.next_value_seed(Parents(&mut *self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// An entity's parents: one value each.
struct Parents<'a>(&'a mut Scan);

impl<'de> DeserializeSeed<'de> for Parents<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Parents<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array of entity references")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {
            self.0.take();
        }
        Ok(())
    }
}
