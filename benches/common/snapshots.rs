//! Generated tenant snapshots shaped like `entitlements/acme.json`: one pro
//! `Account` (tier 1, add-on `sso`) whose id is the tenant's, the four roles
//! (`admin` in `member` in `viewer`; `billing_admin`), N `User`s whose role
//! cycles admin/member/viewer/billing_admin, and acme's five classic
//! `Feature`s. A snapshot of N users has N + 10 entities.
//!
//! Included with `#[path = "common/snapshots.rs"]` by the benchmarks that
//! need it (not from `common/mod.rs`, which every benchmark compiles).

use serde_json::{json, Value as Json};

fn entity(kind: &str, id: &str, attrs: Json, parents: &[(&str, &str)]) -> Json {
    json!({
        "uid": {"type": kind, "id": id},
        "attrs": attrs,
        "parents": parents
            .iter()
            .map(|(kind, id)| json!({"type": kind, "id": id}))
            .collect::<Vec<_>>(),
    })
}

/// Role of user `index`: admin, member, viewer, billing_admin in turn.
pub fn role_of(index: usize) -> &'static str {
    ["admin", "member", "viewer", "billing_admin"][index % 4]
}

/// Id of user `index`.
pub fn user_id(index: usize) -> String {
    format!("user-{index:05}")
}

/// The snapshot document `{"tenant", "version", "entities"}` of `tenant`
/// with `users` users, as compact JSON.
pub fn snapshot_json(tenant: &str, version: u64, users: usize) -> Vec<u8> {
    let mut entities = vec![
        entity(
            "Account",
            tenant,
            json!({"plan": "pro", "tier": 1, "addons": ["sso"]}),
            &[],
        ),
        entity("Role", "viewer", json!({}), &[]),
        entity("Role", "member", json!({}), &[("Role", "viewer")]),
        entity("Role", "admin", json!({}), &[("Role", "member")]),
        entity("Role", "billing_admin", json!({}), &[]),
    ];
    for index in 0..users {
        entities.push(entity(
            "User",
            &user_id(index),
            json!({"account": {"__entity": {"type": "Account", "id": tenant}}}),
            &[("Role", role_of(index))],
        ));
    }
    entities.extend([
        entity("Feature", "dashboards", json!({"min_tier": 0}), &[]),
        entity("Feature", "pdf-export", json!({"min_tier": 1}), &[]),
        entity("Feature", "audit-log", json!({"min_tier": 2}), &[]),
        entity(
            "Feature",
            "sso",
            json!({"min_tier": 0, "addon": "sso"}),
            &[],
        ),
        entity(
            "Feature",
            "payments",
            json!({"min_tier": 1, "countries": ["US", "CA", "GB", "DE", "FR", "BR"]}),
            &[],
        ),
    ]);
    debug_assert_eq!(entities.len(), users + 10);
    serde_json::to_vec(&json!({"tenant": tenant, "version": version, "entities": entities}))
        .expect("serialise snapshot")
}
