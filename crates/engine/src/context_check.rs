//! Explains a context that does not fit its action's context type, naming the
//! attribute and the problem (`context.country: expected String, got Long`).
//!
//! Cedar's request validation says only that the whole context is invalid.
//! This walks the schema's JSON form instead; it runs only on the error path.

use cedar_policy::{Context, EntityUid};
use serde_json::{Map, Value as Json};

/// The schema in Cedar's JSON form: namespaces by name.
struct SchemaJson<'a>(&'a Map<String, Json>);

impl SchemaJson<'_> {
    fn namespace(&self, name: &str) -> Option<&Map<String, Json>> {
        self.0.get(name)?.as_object()
    }

    fn common_type(&self, namespace: &str, name: &str) -> Option<(&str, &Json)> {
        let (namespace, name) = split_name(namespace, name);
        [namespace, ""].into_iter().find_map(|ns| {
            let found = self.namespace(ns)?.get("commonTypes")?.get(name)?;
            Some((self.0.get_key_value(ns)?.0.as_str(), found))
        })
    }

    fn is_entity_type(&self, namespace: &str, name: &str) -> bool {
        let (namespace, name) = split_name(namespace, name);
        [namespace, ""].into_iter().any(|ns| {
            self.namespace(ns)
                .and_then(|n| n.get("entityTypes"))
                .and_then(|t| t.get(name))
                .is_some()
        })
    }

    fn action_context(&self, action: &EntityUid) -> Option<(&str, &Json)> {
        let type_name = action.type_name().to_string();
        let namespace = type_name.strip_suffix("Action")?.trim_end_matches("::");
        let id = action.id().unescaped();
        let (ns_name, ns) = self.0.get_key_value(namespace)?;
        let context = ns
            .get("actions")?
            .get(id)?
            .get("appliesTo")?
            .get("context")?;
        Some((ns_name.as_str(), context))
    }
}

fn split_name<'a>(namespace: &'a str, name: &'a str) -> (&'a str, &'a str) {
    match name.rfind("::") {
        Some(i) => (&name[..i], &name[i + 2..]),
        None => (namespace, name),
    }
}

/// The first problem of `context` against `action`'s context type, as
/// `(field path, problem)`.
pub fn explain(
    schema_json: &Json,
    context: &Context,
    action: &EntityUid,
) -> Option<(String, String)> {
    let schema_json = &SchemaJson(schema_json.as_object()?);
    let value = context.to_json_value().ok()?;
    let (namespace, expected) = schema_json.action_context(action)?;
    check(schema_json, namespace, expected, &value, "context", 0).err()
}

fn kind_of(value: &Json) -> String {
    match value {
        Json::Null => "null".to_string(),
        Json::Bool(_) => "Bool".to_string(),
        Json::Number(_) => "Long".to_string(),
        Json::String(_) => "String".to_string(),
        Json::Array(_) => "Set".to_string(),
        Json::Object(map) => {
            if let Some(extension) = map.get("__extn") {
                let name = extension.get("fn").and_then(Json::as_str).unwrap_or("?");
                format!("extension `{name}`")
            } else if let Some(entity) = map.get("__entity") {
                let name = entity.get("type").and_then(Json::as_str).unwrap_or("?");
                format!("entity of type `{name}`")
            } else {
                "Record".to_string()
            }
        }
    }
}

fn check(
    schema: &SchemaJson<'_>,
    namespace: &str,
    expected: &Json,
    value: &Json,
    path: &str,
    depth: usize,
) -> Result<(), (String, String)> {
    if depth > 64 {
        return Ok(());
    }
    let mismatch = |what: &str| {
        Err((
            path.to_string(),
            format!("expected {what}, got {}", kind_of(value)),
        ))
    };
    let type_name = expected.get("type").and_then(Json::as_str).unwrap_or("");
    let name = expected.get("name").and_then(Json::as_str).unwrap_or("");
    match type_name {
        "Long" => value
            .is_i64()
            .then_some(())
            .map_or_else(|| mismatch("Long"), Ok),
        "String" => value
            .is_string()
            .then_some(())
            .map_or_else(|| mismatch("String"), Ok),
        "Boolean" | "Bool" => value
            .is_boolean()
            .then_some(())
            .map_or_else(|| mismatch("Bool"), Ok),
        "Set" => {
            let Some(items) = value.as_array() else {
                return mismatch("Set");
            };
            let element = expected.get("element").unwrap_or(&Json::Null);
            for (index, item) in items.iter().enumerate() {
                check(
                    schema,
                    namespace,
                    element,
                    item,
                    &format!("{path}[{index}]"),
                    depth + 1,
                )?;
            }
            Ok(())
        }
        "Record" => {
            let Some(fields) = value
                .as_object()
                .filter(|m| !m.contains_key("__extn") && !m.contains_key("__entity"))
            else {
                return mismatch("Record");
            };
            let attributes = expected
                .get("attributes")
                .and_then(Json::as_object)
                .cloned()
                .unwrap_or_default();
            for (key, attribute) in &attributes {
                let required = attribute
                    .get("required")
                    .and_then(Json::as_bool)
                    .unwrap_or(true);
                match fields.get(key) {
                    Some(field) => check(
                        schema,
                        namespace,
                        attribute,
                        field,
                        &format!("{path}.{key}"),
                        depth + 1,
                    )?,
                    None if required => {
                        return Err((
                            format!("{path}.{key}"),
                            "required attribute is missing".to_string(),
                        ))
                    }
                    None => {}
                }
            }
            let additional = expected
                .get("additionalAttributes")
                .and_then(Json::as_bool)
                .unwrap_or(false);
            if let Some(extra) = fields.keys().find(|key| !attributes.contains_key(*key)) {
                if !additional {
                    return Err((
                        format!("{path}.{extra}"),
                        "attribute is not declared in the schema".to_string(),
                    ));
                }
            }
            Ok(())
        }
        "Entity" => check_entity(schema, namespace, name, value, path, &mismatch),
        "Extension" => check_extension(name, value, &mismatch),
        "EntityOrCommon" => check_named(schema, namespace, name, value, path, depth, &mismatch),
        other => check_named(schema, namespace, other, value, path, depth, &mismatch),
    }
}

type Mismatch<'a> = &'a dyn Fn(&str) -> Result<(), (String, String)>;

fn check_named(
    schema: &SchemaJson<'_>,
    namespace: &str,
    name: &str,
    value: &Json,
    path: &str,
    depth: usize,
    mismatch: Mismatch<'_>,
) -> Result<(), (String, String)> {
    if let Some((ns, common)) = schema.common_type(namespace, name) {
        return check(schema, ns, common, value, path, depth + 1);
    }
    if schema.is_entity_type(namespace, name) {
        return check_entity(schema, namespace, name, value, path, mismatch);
    }
    let builtin = name.strip_prefix("__cedar::").unwrap_or(name);
    match builtin {
        "Long" | "String" | "Bool" | "Boolean" => check(
            schema,
            namespace,
            &serde_json::json!({"type": builtin}),
            value,
            path,
            depth + 1,
        ),
        "ipaddr" | "decimal" | "datetime" | "duration" => check_extension(builtin, value, mismatch),
        _ => Ok(()),
    }
}

fn check_entity(
    _schema: &SchemaJson<'_>,
    namespace: &str,
    name: &str,
    value: &Json,
    _path: &str,
    mismatch: Mismatch<'_>,
) -> Result<(), (String, String)> {
    let found = value
        .get("__entity")
        .and_then(|entity| entity.get("type"))
        .and_then(Json::as_str);
    let qualified = if name.contains("::") || namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}::{name}")
    };
    match found {
        Some(found) if found == name || found == qualified => Ok(()),
        _ => mismatch(&format!("entity of type `{qualified}`")),
    }
}

fn check_extension(
    name: &str,
    value: &Json,
    mismatch: Mismatch<'_>,
) -> Result<(), (String, String)> {
    let constructor = if name == "ipaddr" { "ip" } else { name };
    let found = value
        .get("__extn")
        .and_then(|extension| extension.get("fn"))
        .and_then(Json::as_str);
    if found == Some(constructor) {
        Ok(())
    } else {
        mismatch(&format!("extension `{constructor}`"))
    }
}
