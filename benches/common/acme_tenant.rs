//! Small tenants shaped exactly like `entitlements/acme.json`: its Account
//! (renamed to the tenant's id), its four Roles, its Features, Region, Seat and
//! Meter as they are in the file, and N Users that take the attributes and
//! parents of acme's users in turn (alice: admin and the analytics seat, bob:
//! member, carol: viewer, dave: billing_admin). With 5 users that is 21
//! entities, the *small tenant* of `benches/memory.md`.
//!
//! Included with `#[path = "common/acme_tenant.rs"]` by the benchmarks that
//! need it (not from `common/mod.rs`, which every benchmark compiles).

use std::path::Path;

use serde_json::{json, Value as Json};

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
    /// users are `user-00000`, `user-00001`, ...
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
            user["uid"]["id"] = json!(format!("user-{index:05}"));
            user["attrs"]["account"] = account.clone();
            entities.push(user);
        }
        serde_json::to_vec(&json!({"tenant": tenant, "version": version, "entities": entities}))
            .unwrap_or_default()
    }
}
