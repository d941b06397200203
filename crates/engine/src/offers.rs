//! What the vendor sells, declared once beside the policies
//! (`offers.yaml`): the plans, add-ons and seats an account may buy, each
//! with its price and the changes to the account's entities it brings. An
//! upgrade hint decides a denied request again under each offer, cheapest
//! first, and names the first under which it is allowed.
//!
//! ```yaml
//! account: account        # the principal's attribute naming its account
//! meter: meter            # a resource's attribute naming its meter
//! offers:
//!   - id: pro
//!     kind: plan
//!     price: 49
//!     changes:
//!       account: {set: {plan: pro, tier: 1}}
//!       'Meter::"api-calls"': {set: {limit: 100000}}
//!   - id: sso
//!     kind: addon
//!     price: 10
//!     changes:
//!       account: {add: {addons: [sso]}}
//!   - id: analytics-seat
//!     kind: seat
//!     price: 15
//!     changes:
//!       principal: {parents: ['Seat::"analytics"']}
//! ```
//!
//! A change's target is `account` (the entity the principal's account
//! attribute names), `principal` (parents only), or an entity by its Cedar
//! uid (`Meter::"api-calls"`; left alone for a tenant whose snapshot has no
//! such entity). Values are written as in Cedar's entity JSON, read against
//! the attribute's type in the schema.
//!
//! Plans replace one another; add-ons and seats add to what the account
//! has. Hints try each offer the account does not already hold, then pairs
//! of them (at most one plan), by total price.

use std::collections::{BTreeMap, HashSet};

use cedar_policy_core::ast::{EntityType, EntityUID, Value, ValueKind};
use cedar_policy_core::entities::json::err::JsonDeserializationErrorContext;
use cedar_policy_core::entities::json::ValueParser;
use cedar_policy_core::entities::{EntityTypeDescription as _, Schema as _, SchemaType};
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::{CoreSchema, ValidatorSchema};
use serde::Deserialize;
use smol_str::SmolStr;

use crate::changes::Changes;
use crate::diagnostics::{describe, FileProblem};
use crate::tenant::TenantSnapshot;

/// The offers file in a policy directory.
pub const OFFERS_FILE: &str = "offers.yaml";

/// Most offers one file may declare (pairs are tried, so hints cost up to
/// n + n²/2 decisions for a request no offer unlocks).
pub const MAX_OFFERS: usize = 32;

/// The attribute of a meter that holds its limit per period.
pub const METER_LIMIT: &str = "limit";

/// What kind of thing an offer sells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfferKind {
    /// A plan: replaces the account's plan.
    Plan,
    /// An add-on bought beside the plan.
    Addon,
    /// A seat of a per-seat license, for the user.
    Seat,
}

impl OfferKind {
    /// `plan`, `addon` or `seat`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::Addon => "addon",
            Self::Seat => "seat",
        }
    }
}

/// Where a change applies.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// The entity the principal's account attribute names.
    Account,
    /// The principal.
    Principal,
    /// A named entity of the snapshot.
    Entity(EntityUID),
}

/// The changes an offer makes to one target.
#[derive(Debug, Clone)]
struct TargetChanges {
    target: Target,
    set: Vec<(SmolStr, Value)>,
    add: Vec<(SmolStr, Vec<Value>)>,
    parents: Vec<EntityUID>,
}

/// One thing the vendor sells.
#[derive(Debug, Clone)]
pub struct Offer {
    /// Its id, e.g. `pro`.
    pub id: String,
    /// Plan, add-on or seat.
    pub kind: OfferKind,
    /// Price, in whatever unit the vendor chose: hints prefer cheaper offers.
    pub price: f64,
    /// A display name, when declared.
    pub name: Option<String>,
    changes: Vec<TargetChanges>,
}

/// The offers of a policy directory.
#[derive(Debug, Clone)]
pub struct Offers {
    /// The principal's attribute that names its account.
    pub account_attribute: SmolStr,
    /// A resource's attribute that names its meter.
    pub meter_attribute: SmolStr,
    offers: Vec<Offer>,
    /// Combinations to try, cheapest first: indexes into `offers`.
    combinations: Vec<Vec<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OffersDocument {
    #[serde(default = "default_account")]
    account: String,
    #[serde(default = "default_meter")]
    meter: String,
    #[serde(default)]
    offers: Vec<OfferDocument>,
}

fn default_account() -> String {
    "account".to_string()
}

fn default_meter() -> String {
    "meter".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfferDocument {
    id: String,
    kind: OfferKind,
    price: f64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    changes: BTreeMap<String, ChangesDocument>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChangesDocument {
    #[serde(default)]
    set: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    add: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    parents: Vec<String>,
}

impl Offers {
    /// Parses and checks `text` (the file `file`) against `schema`: every
    /// problem found, each naming the offer.
    pub fn parse(
        file: &str,
        text: &str,
        schema: &ValidatorSchema,
    ) -> Result<Self, Vec<FileProblem>> {
        let problem = |message: String| FileProblem::new(file, None, message);
        let document: OffersDocument = serde_norway::from_str(text).map_err(|error| {
            let line = error.location().map(|location| location.line());
            vec![FileProblem::new(file, line, error.to_string())]
        })?;
        let core = CoreSchema::new(schema);
        let account_type =
            account_type(schema, &document.account).map_err(|message| vec![problem(message)])?;
        if document.offers.len() > MAX_OFFERS {
            return Err(vec![problem(format!(
                "{} offers; at most {MAX_OFFERS} may be declared",
                document.offers.len()
            ))]);
        }
        let mut problems = Vec::new();
        let mut offers = Vec::new();
        let mut ids = HashSet::new();
        for offer in document.offers {
            let at = format!("offer `{}`", offer.id);
            if offer.id.is_empty() {
                problems.push(problem("an offer has an empty id".to_string()));
                continue;
            }
            if !ids.insert(offer.id.clone()) {
                problems.push(problem(format!("{at} is declared twice")));
                continue;
            }
            if !offer.price.is_finite() || offer.price < 0.0 {
                problems.push(problem(format!(
                    "{at}: price must be a number ≥ 0, got {}",
                    offer.price
                )));
                continue;
            }
            if offer.changes.is_empty() {
                problems.push(problem(format!("{at} changes nothing")));
                continue;
            }
            let mut changes = Vec::new();
            for (target, document) in offer.changes {
                match target_changes(&core, account_type.as_ref(), &target, document) {
                    Ok(parsed) => changes.push(parsed),
                    Err(message) => problems.push(problem(format!("{at}, `{target}`: {message}"))),
                }
            }
            offers.push(Offer {
                id: offer.id,
                kind: offer.kind,
                price: offer.price,
                name: offer.name,
                changes,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut combinations: Vec<Vec<usize>> =
            (0..offers.len()).map(|index| vec![index]).collect();
        for first in 0..offers.len() {
            for second in first + 1..offers.len() {
                if offers[first].kind == OfferKind::Plan && offers[second].kind == OfferKind::Plan {
                    continue;
                }
                combinations.push(vec![first, second]);
            }
        }
        let price = |combination: &Vec<usize>| -> f64 {
            combination.iter().map(|index| offers[*index].price).sum()
        };
        combinations.sort_by(|a, b| {
            price(a)
                .total_cmp(&price(b))
                .then_with(|| a.len().cmp(&b.len()))
                .then_with(|| a.cmp(b))
        });
        Ok(Self {
            account_attribute: SmolStr::from(document.account),
            meter_attribute: SmolStr::from(document.meter),
            offers,
            combinations,
        })
    }

    /// The offers, as declared.
    pub fn offers(&self) -> &[Offer] {
        &self.offers
    }

    /// The combinations hints try, cheapest first (indexes into
    /// [`Offers::offers`]).
    pub fn combinations(&self) -> &[Vec<usize>] {
        &self.combinations
    }

    /// The attribute names offer `index` changes (with `remaining` where it
    /// changes a meter's limit, which the usage record shows), and whether
    /// it adds parents.
    pub fn touches(&self, index: usize) -> (HashSet<SmolStr>, bool) {
        let Some(offer) = self.offers.get(index) else {
            return (HashSet::new(), false);
        };
        let mut attributes: HashSet<SmolStr> = offer
            .changes
            .iter()
            .flat_map(|change| {
                change
                    .set
                    .iter()
                    .map(|(attr, _)| attr.clone())
                    .chain(change.add.iter().map(|(attr, _)| attr.clone()))
            })
            .collect();
        if attributes.contains(METER_LIMIT) {
            attributes.insert(SmolStr::new_static("remaining"));
        }
        let parents = offer
            .changes
            .iter()
            .any(|change| !change.parents.is_empty());
        (attributes, parents)
    }

    /// The account `principal` belongs to in `tenant`'s snapshot.
    pub fn account_of(&self, tenant: &TenantSnapshot, principal: &EntityUID) -> Option<EntityUID> {
        match tenant
            .entities
            .attr(principal, &self.account_attribute)?
            .value_kind()
        {
            ValueKind::Lit(cedar_policy_core::ast::Literal::EntityUID(uid)) => {
                Some((**uid).clone())
            }
            _ => None,
        }
    }

    /// Whether the account already holds offer `index`: every change it
    /// makes to the account and the principal is already so (its changes
    /// to named entities, such as a meter's limit, are not what is bought
    /// by name). An offer that changes neither is never held.
    pub fn held(&self, index: usize, tenant: &TenantSnapshot, principal: &EntityUID) -> bool {
        self.resolve(index, tenant, principal, false)
            .is_some_and(|own| !own.is_empty() && own.held_by(tenant))
    }

    /// The changes offer `index` makes for `principal` of `tenant`, leaving
    /// out named entities the snapshot does not have; `None` when the offer
    /// needs an account the principal does not have.
    pub fn changes(
        &self,
        index: usize,
        tenant: &TenantSnapshot,
        principal: &EntityUID,
    ) -> Option<Changes> {
        self.resolve(index, tenant, principal, true)
    }

    /// Offer `index`'s changes for `principal` of `tenant`, with those to
    /// named entities when `named`.
    fn resolve(
        &self,
        index: usize,
        tenant: &TenantSnapshot,
        principal: &EntityUID,
        named: bool,
    ) -> Option<Changes> {
        let offer = self.offers.get(index)?;
        let mut changes = Changes::new();
        for change in &offer.changes {
            let uid = match &change.target {
                Target::Account => self.account_of(tenant, principal)?,
                Target::Principal => principal.clone(),
                Target::Entity(uid) if named && tenant.entities.has(uid) => uid.clone(),
                Target::Entity(_) => continue,
            };
            for (attr, value) in &change.set {
                changes.set(&uid, attr.clone(), value.clone());
            }
            for (attr, elements) in &change.add {
                changes.add_elements(&uid, attr.clone(), elements.clone());
            }
            for parent in &change.parents {
                changes.add_parent(&uid, parent.clone());
            }
        }
        Some(changes)
    }
}

/// The entity type the account attribute names, when some principal type
/// declares it.
fn account_type(schema: &ValidatorSchema, attribute: &str) -> Result<Option<EntityType>, String> {
    let mut found: Option<EntityType> = None;
    for entity_type in schema.entity_types() {
        let Some(description) = CoreSchema::new(schema).entity_type(entity_type.name()) else {
            continue;
        };
        if let Some(SchemaType::Entity { ty }) = description.attr_type(attribute) {
            match &found {
                Some(known) if *known != ty => {
                    return Err(format!(
                        "`account: {attribute}` names entities of more than one type (`{known}`, `{ty}`)"
                    ))
                }
                _ => found = Some(ty),
            }
        }
    }
    Ok(found)
}

/// One target's changes, read against the schema.
fn target_changes(
    core: &CoreSchema<'_>,
    account_type: Option<&EntityType>,
    target: &str,
    document: ChangesDocument,
) -> Result<TargetChanges, String> {
    let (parsed_target, entity_type) = match target {
        "account" => {
            let Some(account_type) = account_type else {
                return Err("no entity type has the account attribute naming an entity".to_string());
            };
            (Target::Account, Some(account_type.clone()))
        }
        "principal" => {
            if !document.set.is_empty() || !document.add.is_empty() {
                return Err("only `parents` may be added to the principal".to_string());
            }
            (Target::Principal, None)
        }
        uid => {
            let uid: EntityUID = uid
                .parse()
                .map_err(|_| "expected `account`, `principal` or an entity uid such as `Meter::\"api-calls\"`".to_string())?;
            let entity_type = uid.entity_type().clone();
            (Target::Entity(uid), Some(entity_type))
        }
    };
    let description =
        match &entity_type {
            Some(entity_type) => Some(core.entity_type(entity_type).ok_or_else(|| {
                format!("entity type `{entity_type}` is not declared in the schema")
            })?),
            None => None,
        };
    let read = |attr: &str, value: serde_json::Value| -> Result<Value, String> {
        let Some(description) = &description else {
            return Err("attributes cannot be changed here".to_string());
        };
        let expected = description.attr_type(attr).ok_or_else(|| {
            format!(
                "`{}` has no attribute `{attr}` in the schema",
                description.entity_type()
            )
        })?;
        let extensions = Extensions::all_available();
        let expr = ValueParser::new(extensions)
            .val_into_restricted_expr(value, Some(&expected), &|| {
                JsonDeserializationErrorContext::Unknown
            })
            .map_err(|error| format!("`{attr}`: {}", describe(&error)))?;
        let value = RestrictedEvaluator::new(extensions)
            .interpret(expr.as_borrowed())
            .map_err(|error| format!("`{attr}`: {}", describe(&error)))?;
        cedar_policy_core::entities::conformance::typecheck_value_against_schematype(
            &value.clone().into(),
            &expected,
            extensions,
        )
        .map_err(|error| format!("`{attr}`: {}", describe(&error)))?;
        Ok(value)
    };
    let mut set = Vec::new();
    for (attr, value) in document.set {
        set.push((SmolStr::from(attr.as_str()), read(&attr, value)?));
    }
    let mut add = Vec::new();
    for (attr, value) in document.add {
        let value = read(&attr, value)?;
        let ValueKind::Set(elements) = value.value_kind() else {
            return Err(format!("`{attr}`: `add` needs a set attribute"));
        };
        add.push((
            SmolStr::from(attr.as_str()),
            elements.iter().cloned().collect(),
        ));
    }
    let mut parents = Vec::new();
    for parent in document.parents {
        let uid: EntityUID = parent.parse().map_err(|_| {
            format!("parent `{parent}` is not an entity uid such as `Seat::\"analytics\"`")
        })?;
        parents.push(uid);
    }
    if set.is_empty() && add.is_empty() && parents.is_empty() {
        return Err("changes nothing".to_string());
    }
    Ok(TargetChanges {
        target: parsed_target,
        set,
        add,
        parents,
    })
}
