//! `CheckRequest`s and the protobuf values in them.

use std::collections::HashMap;

use tollgate::api::pb;

/// The `now` every test request carries: after globex's trial ended
/// (2026-06-30).
pub const NOW: &str = "2026-11-27T12:00:00Z";

/// The `now` every benchmark request carries.
pub const BENCH_NOW: &str = "2026-01-15T12:00:00Z";

/// `{type, id}`.
pub fn entity_ref(type_name: &str, id: &str) -> pb::EntityRef {
    pb::EntityRef {
        r#type: type_name.to_string(),
        id: id.to_string(),
    }
}

/// Parses `Type:id`.
pub fn parse_ref(reference: &str) -> pb::EntityRef {
    let (type_name, id) = reference
        .rsplit_once(':')
        .expect("reference of the form Type:id");
    entity_ref(type_name, id)
}

pub fn string(value: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::String(value.to_string())),
    }
}

pub fn long(value: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Long(value)),
    }
}

pub fn extension(function: &str, arg: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Extension(pb::Extension {
            r#fn: function.to_string(),
            arg: arg.to_string(),
            args: Vec::new(),
        })),
    }
}

pub fn datetime(arg: &str) -> pb::Value {
    extension("datetime", arg)
}

pub fn set(values: Vec<pb::Value>) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Set(pb::ValueSet { values })),
    }
}

pub fn entity_value(type_name: &str, id: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Entity(entity_ref(type_name, id))),
    }
}

/// A request at `now` with the context its action needs: `now` for every
/// action, and `country: "BR"` for `use`. No request-scoped entities, no
/// explanation, no staleness bound, no consume, and whatever fields the proto
/// gains later at their defaults.
pub fn request_at(
    now: &str,
    tenant: &str,
    principal: pb::EntityRef,
    action: &str,
    resource: pb::EntityRef,
) -> pb::CheckRequest {
    let mut context = HashMap::new();
    context.insert("now".to_string(), datetime(now));
    if action == "use" {
        context.insert("country".to_string(), string("BR"));
    }
    pb::CheckRequest {
        tenant: tenant.to_string(),
        principal: Some(principal),
        action: Some(entity_ref("Action", action)),
        resource: Some(resource),
        context,
        ..Default::default()
    }
}

/// A request at [`NOW`] (see [`request_at`]). `principal` and `resource` are
/// `Type:id`; `action` is an id of type `Action`.
pub fn check(tenant: &str, principal: &str, action: &str, resource: &str) -> pb::CheckRequest {
    request_at(
        NOW,
        tenant,
        parse_ref(principal),
        action,
        parse_ref(resource),
    )
}

/// A request from `"tenant principal action resource"` (space separated; see
/// [`check`]).
pub fn check_str(spec: &str) -> pb::CheckRequest {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let [tenant, principal, action, resource] = parts[..] else {
        panic!("check spec needs `tenant principal action resource`: {spec:?}");
    };
    check(tenant, principal, action, resource)
}

/// What the benchmarks send: `User::principal` uses `Feature::feature`, from
/// BR at [`BENCH_NOW`].
pub fn use_request(tenant: &str, principal: &str, feature: &str) -> pb::CheckRequest {
    request_at(
        BENCH_NOW,
        tenant,
        entity_ref("User", principal),
        "use",
        entity_ref("Feature", feature),
    )
}
