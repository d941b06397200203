//! Tenant snapshots of any size for the benchmarks, in two shapes:
//!
//! * [`snapshot_json`]: generated like `entitlements/acme.json`: one pro
//!   `Account` (tier 1, add-on `sso`) whose id is the tenant's, the four roles
//!   (`admin` in `member` in `viewer`; `billing_admin`), N `User`s whose role
//!   cycles admin/member/viewer/billing_admin, and acme's five classic
//!   `Feature`s. A snapshot of N users has N + 10 entities.
//! * [`AcmeShape`]: exactly `entitlements/acme.json`: its Account (renamed to
//!   the tenant's id), its four Roles, its Features, Region, Seat and Meter as
//!   they are in the file, and N Users that take the attributes and parents
//!   of acme's users in turn (alice: admin and the analytics seat, bob:
//!   member, carol: viewer, dave: billing_admin). With 5 users that is 21
//!   entities, the *small tenant* of `benches/memory.md`.

use std::path::Path;

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

/// `entitlements/acme.json`, split into its users and everything else.
pub struct AcmeShape {
    users: Vec<Json>,
    others: Vec<Json>,
}

impl AcmeShape {
    /// Reads `entitlements/acme.json` of the repository at `root`.
    pub fn load(root: &Path) -> Result<Self, String> {
        let path = root.join("entitlements").join("acme.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let document: Json =
            serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        let entities = document["entities"]
            .as_array()
            .ok_or_else(|| format!("{}: no entities", path.display()))?;
        let (users, others): (Vec<Json>, Vec<Json>) = entities
            .iter()
            .cloned()
            .partition(|entity| entity["uid"]["type"] == "User");
        if users.is_empty() {
            return Err(format!("{}: no users", path.display()));
        }
        Ok(Self { users, others })
    }

    /// Entities of a tenant with `users` users.
    pub fn entity_count(&self, users: usize) -> usize {
        self.others.len() + users
    }

    /// The snapshot document `{"tenant", "version", "entities"}` of `tenant`
    /// with `users` users, as compact JSON. The Account's id is the tenant's;
    /// users are `user-00000`, `user-00001`, ... ([`user_id`])
    pub fn snapshot_json(&self, tenant: &str, version: u64, users: usize) -> Vec<u8> {
        let account = json!({"__entity": {"type": "Account", "id": tenant}});
        let mut entities: Vec<Json> = self
            .others
            .iter()
            .map(|entity| {
                let mut entity = entity.clone();
                if entity["uid"]["type"] == "Account" {
                    entity["uid"]["id"] = json!(tenant);
                }
                entity
            })
            .collect();
        for index in 0..users {
            let mut user = self.users[index % self.users.len()].clone();
            user["uid"]["id"] = json!(user_id(index));
            user["attrs"]["account"] = account.clone();
            entities.push(user);
        }
        serde_json::to_vec(&json!({"tenant": tenant, "version": version, "entities": entities}))
            .unwrap_or_default()
    }
}
