//! Changes to a tenant snapshot's entities for one decision: the answer to
//! "what if this account were on the enterprise plan?". A what-if check
//! carries them from the caller; an upgrade hint applies an offer's
//! ([`crate::offers`]). The snapshot itself never changes: a decision with
//! changes builds the entities it reaches anew, with the changes applied.
//!
//! A change replaces an attribute's value, adds elements to a set
//! attribute, or adds parents. Every change is checked against the schema
//! and the snapshot before anything is decided ([`Changes::check`]): the
//! entity must be one of the snapshot's, the attribute declared for its type
//! and the new value of its declared type, and a parent of a type its type
//! may have.

use std::collections::HashSet;

use cedar_policy_core::ast::{Entity as CoreEntity, EntityUID, PartialValue, Value, ValueKind};
use cedar_policy_core::entities::conformance::typecheck_value_against_schematype;
use cedar_policy_core::entities::EntityTypeDescription as _;
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::{CoreSchema, ValidatorSchema};
use smol_str::SmolStr;

use crate::decide::RequestError;
use crate::policies::PolicySnapshot;
use crate::tenant::TenantSnapshot;

/// What changes for one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The entity, one of the snapshot's.
    pub uid: EntityUID,
    /// Attributes given a new value.
    pub set: Vec<(SmolStr, Value)>,
    /// Set attributes given more elements.
    pub add: Vec<(SmolStr, Vec<Value>)>,
    /// Parents added (with their own ancestors, as the entity's ancestors).
    pub parents: Vec<EntityUID>,
}

impl Change {
    fn new(uid: EntityUID) -> Self {
        Self {
            uid,
            set: Vec::new(),
            add: Vec::new(),
            parents: Vec::new(),
        }
    }

    /// Whether applying the change to `entity` would leave it as it is.
    fn is_held_by(&self, entity: &CoreEntity) -> bool {
        let value = |attr: &str| match entity.get(attr) {
            Some(PartialValue::Value(value)) => Some(value),
            _ => None,
        };
        self.set
            .iter()
            .all(|(attr, new)| value(attr).is_some_and(|current| current == new))
            && self.add.iter().all(|(attr, elements)| {
                value(attr).is_some_and(|current| match current.value_kind() {
                    ValueKind::Set(set) => elements.iter().all(|element| set.contains(element)),
                    _ => false,
                })
            })
            && self
                .parents
                .iter()
                .all(|parent| entity.is_descendant_of(parent))
    }

    /// `entity` with the change applied; `ancestors` are the ancestors it
    /// gains (the new parents and theirs).
    fn apply(&self, entity: CoreEntity, ancestors: &[EntityUID]) -> CoreEntity {
        let (uid, mut attrs, mut indirect, mut parents, tags) = entity.into_inner();
        for (attr, value) in &self.set {
            attrs.insert(attr.clone(), PartialValue::Value(value.clone()));
        }
        for (attr, elements) in &self.add {
            let current = match attrs.get(attr) {
                Some(PartialValue::Value(value)) => match value.value_kind() {
                    ValueKind::Set(set) => set.iter().cloned().collect::<Vec<_>>(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let mut merged = current;
            for element in elements {
                if !merged.contains(element) {
                    merged.push(element.clone());
                }
            }
            attrs.insert(attr.clone(), PartialValue::Value(Value::set(merged, None)));
        }
        for parent in &self.parents {
            parents.insert(parent.clone());
        }
        for ancestor in ancestors {
            if !parents.contains(ancestor) {
                indirect.insert(ancestor.clone());
            }
        }
        CoreEntity::new_with_attr_partial_value(uid, attrs, indirect, parents, tags)
    }
}

/// Changes to several entities, applied together to one decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    changes: Vec<Change>,
}

impl Changes {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes, one per entity.
    pub fn iter(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter()
    }

    fn entry(&mut self, uid: &EntityUID) -> &mut Change {
        let index = match self.changes.iter().position(|change| &change.uid == uid) {
            Some(index) => index,
            None => {
                self.changes.push(Change::new(uid.clone()));
                self.changes.len() - 1
            }
        };
        &mut self.changes[index]
    }

    /// Gives `uid`'s attribute `attr` the value `value` (the last value set
    /// for an attribute wins).
    pub fn set(&mut self, uid: &EntityUID, attr: impl Into<SmolStr>, value: Value) {
        let attr = attr.into();
        let change = self.entry(uid);
        change.set.retain(|(known, _)| *known != attr);
        change.set.push((attr, value));
    }

    /// Adds `elements` to `uid`'s set attribute `attr`.
    pub fn add_elements(
        &mut self,
        uid: &EntityUID,
        attr: impl Into<SmolStr>,
        elements: Vec<Value>,
    ) {
        let attr = attr.into();
        let change = self.entry(uid);
        match change.add.iter_mut().find(|(known, _)| *known == attr) {
            Some((_, known)) => known.extend(elements),
            None => change.add.push((attr, elements)),
        }
    }

    /// Makes `parent` a parent of `uid`.
    pub fn add_parent(&mut self, uid: &EntityUID, parent: EntityUID) {
        let change = self.entry(uid);
        if !change.parents.contains(&parent) {
            change.parents.push(parent);
        }
    }

    /// These changes followed by `other`'s.
    pub fn merged(&self, other: &Changes) -> Changes {
        let mut merged = self.clone();
        for change in &other.changes {
            for (attr, value) in &change.set {
                merged.set(&change.uid, attr.clone(), value.clone());
            }
            for (attr, elements) in &change.add {
                merged.add_elements(&change.uid, attr.clone(), elements.clone());
            }
            for parent in &change.parents {
                merged.add_parent(&change.uid, parent.clone());
            }
        }
        merged
    }

    /// Whether applying them to `tenant` would change nothing.
    pub fn held_by(&self, tenant: &TenantSnapshot) -> bool {
        self.changes.iter().all(|change| {
            tenant
                .entities
                .core_entity(&change.uid)
                .is_some_and(|entity| change.is_held_by(&entity))
        })
    }

    /// Checks every change against the schema and `tenant`; `field` names
    /// the changes in errors (`what_if`, `offers.yaml: offer pro`).
    pub fn check(
        &self,
        policies: &PolicySnapshot,
        tenant: &TenantSnapshot,
        field: &str,
    ) -> Result<(), RequestError> {
        let schema: &ValidatorSchema = policies.schema.as_ref();
        let core = CoreSchema::new(schema);
        for change in &self.changes {
            let Some(entity) = tenant.entities.core_entity(&change.uid) else {
                return Err(RequestError::new(
                    field,
                    format!(
                        "`{}` is not an entity of tenant `{}`'s snapshot",
                        change.uid, tenant.tenant
                    ),
                ));
            };
            let changed = change.apply(entity, &[]);
            check_entity(&core, &changed, change, field)?;
        }
        Ok(())
    }

    /// For each change that adds parents: the ancestors its entity gains.
    pub(crate) fn gained_ancestors(
        &self,
        tenant: &crate::tenant::TenantEntities,
    ) -> Vec<(EntityUID, Vec<EntityUID>)> {
        self.changes
            .iter()
            .filter(|change| !change.parents.is_empty())
            .map(|change| {
                let mut gained: Vec<EntityUID> = Vec::new();
                for parent in &change.parents {
                    gained.push(parent.clone());
                    if let Some(entity) = tenant.core_entity(parent) {
                        gained.extend(entity.ancestors().cloned());
                    }
                }
                gained.sort();
                gained.dedup();
                (change.uid.clone(), gained)
            })
            .collect()
    }

    /// `entity` with these changes applied: its own, and the ancestors it
    /// gains through a changed ancestor (`gained`, from
    /// [`Changes::gained_ancestors`]).
    pub(crate) fn apply(
        &self,
        entity: CoreEntity,
        gained: &[(EntityUID, Vec<EntityUID>)],
    ) -> CoreEntity {
        let own_gain: &[EntityUID] = gained
            .iter()
            .find(|(uid, _)| uid == entity.uid())
            .map_or(&[], |(_, gain)| gain.as_slice());
        let entity = match self
            .changes
            .iter()
            .find(|change| &change.uid == entity.uid())
        {
            Some(change) => change.apply(entity, own_gain),
            None => entity,
        };
        // An entity below a changed one gains what that one gained.
        let inherited: Vec<&EntityUID> = gained
            .iter()
            .filter(|(uid, _)| uid != entity.uid() && entity.is_descendant_of(uid))
            .flat_map(|(_, gain)| gain.iter())
            .collect();
        if inherited.is_empty() {
            return entity;
        }
        let mut entity = entity;
        for ancestor in inherited {
            if !entity.is_descendant_of(ancestor) {
                entity.add_indirect_ancestor(ancestor.clone());
            }
        }
        entity
    }
}

/// Checks a changed entity's changed attributes and new parents against
/// the schema.
fn check_entity(
    core: &CoreSchema<'_>,
    changed: &CoreEntity,
    change: &Change,
    field: &str,
) -> Result<(), RequestError> {
    use cedar_policy_core::entities::Schema as _;
    let entity_type = change.uid.entity_type();
    let Some(description) = core.entity_type(entity_type) else {
        return Err(RequestError::new(
            field,
            format!("entity type `{entity_type}` is not declared in the schema"),
        ));
    };
    let attrs: HashSet<&SmolStr> = change
        .set
        .iter()
        .map(|(attr, _)| attr)
        .chain(change.add.iter().map(|(attr, _)| attr))
        .collect();
    for attr in attrs {
        let Some(expected) = description.attr_type(attr) else {
            return Err(RequestError::new(
                field,
                format!("`{entity_type}` has no attribute `{attr}` in the schema"),
            ));
        };
        let Some(value) = changed.get(attr) else {
            continue;
        };
        typecheck_value_against_schematype(value, &expected, Extensions::all_available()).map_err(
            |error| {
                RequestError::new(
                    field,
                    format!(
                        "`{}`.{attr}: {}",
                        change.uid,
                        crate::diagnostics::describe(&error)
                    ),
                )
            },
        )?;
    }
    if !change.parents.is_empty() {
        let allowed = description.allowed_parent_types();
        for parent in &change.parents {
            if !allowed.contains(parent.entity_type()) {
                return Err(RequestError::new(
                    field,
                    format!(
                        "`{parent}` cannot be a parent of `{}`: the schema does not put `{entity_type}` in `{}`",
                        change.uid,
                        parent.entity_type()
                    ),
                ));
            }
        }
    }
    Ok(())
}
