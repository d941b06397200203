//! What both benchmarks send: a `Check` that uses a feature with the context
//! the example catalog's `use` action needs.

use std::collections::HashMap;

use tollgate::api::pb;

/// The `now` every benchmark request carries.
pub const NOW: &str = "2026-01-15T12:00:00Z";

/// A `use` request from BR at [`NOW`].
pub fn use_request(tenant: &str, principal: &str, feature: &str) -> pb::CheckRequest {
    use pb::value::Kind;
    let reference = |kind: &str, id: &str| {
        Some(pb::EntityRef {
            r#type: kind.to_string(),
            id: id.to_string(),
        })
    };
    let value = |kind: Kind| pb::Value { kind: Some(kind) };
    pb::CheckRequest {
        tenant: tenant.to_string(),
        principal: reference("User", principal),
        action: reference("Action", "use"),
        resource: reference("Feature", feature),
        context: HashMap::from([
            (
                "now".to_string(),
                value(Kind::Extension(pb::Extension {
                    r#fn: "datetime".to_string(),
                    arg: NOW.to_string(),
                    args: Vec::new(),
                })),
            ),
            ("country".to_string(), value(Kind::String("BR".to_string()))),
        ]),
        // No request-scoped entities, no explanation, no staleness bound, and
        // whatever fields the proto gains later at their defaults.
        ..Default::default()
    }
}
