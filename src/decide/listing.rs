//! What can this user do? A listing decides every (action, resource) pair
//! of a tenant's snapshot for one principal and one context, against one
//! policy snapshot and one tenant snapshot, and says for each DENY which
//! offer would turn it into an ALLOW.
//!
//! A listed item is decided exactly as the `Check` of the same request
//! would be; a metered resource's request carries the usage pre-check
//! `context.usage {used, requested, limit, remaining}` at the meter's
//! current count (read for all meters in one round trip), as a consuming
//! check's first decision does. Nothing is counted, nothing is logged as a
//! decision, and no answer enters the usage stream.
//!
//! A hint decides the denied request again under each offer of
//! `offers.yaml` the account does not hold, then pairs of them, cheapest
//! first, with the offer's changes applied to the same snapshots; the first
//! that allows it is named. An offer is not tried where it cannot matter:
//! when a determining forbid reads nothing it changes (the forbid stays
//! satisfied), or, for a default deny, no permit does
//! ([`engine::PolicyReads::touched_by`]).

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy::{Effect, Entities, EntityUid};
use cedar_policy_core::ast::{EntityType, EntityUID, Literal, Value, ValueKind};
use sha2::{Digest, Sha256};

use tollgate_engine::{
    self as engine, BuiltinReason, Changes, Decision, EvaluationError, OfferKind, Offers,
    PolicySnapshot, PreparedRequest, RequestError, TenantSnapshot,
};

use super::source::TenantSource as _;
use super::{
    check_tenant, invalid, Caller, DecisionService, EntityRef, Error, Freshness, Operation, Reason,
    Values, USAGE,
};
use crate::metering::{usage_record, MeterSpec, UsageView, METER_TYPE};
use crate::store::Lookup;

/// Items per page when the request does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Most items per page.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Which items a listing returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DecisionFilter {
    /// Every item.
    #[default]
    All,
    /// Only ALLOWs.
    Allow,
    /// Only DENYs.
    Deny,
}

/// A listing request.
#[derive(Debug, Clone, Default)]
pub struct Listing<V> {
    /// The tenant whose snapshot decides.
    pub tenant: String,
    /// Who asks.
    pub principal: Option<EntityRef>,
    /// The actions to list; empty for every action the principal may take.
    pub actions: Vec<EntityRef>,
    /// The resource types to list; empty for every type the actions apply to.
    pub resource_types: Vec<String>,
    /// The context and the what-if overrides.
    pub values: V,
    /// Only items with this decision.
    pub decision: DecisionFilter,
    /// Items per page; 0 for [`DEFAULT_PAGE_SIZE`].
    pub page_size: usize,
    /// Where to go on from; empty for the first page.
    pub page_token: String,
    /// Compute upgrade hints for DENY items.
    pub hints: bool,
    /// Units a metered item asks; 0 for 1.
    pub requested: i64,
    /// As in a check.
    pub max_staleness_ms: u64,
}

/// An offer a hint names.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferRef {
    /// Its id.
    pub id: String,
    /// Plan, add-on or seat.
    pub kind: OfferKind,
    /// Its price.
    pub price: f64,
    /// Its display name, when declared.
    pub name: Option<String>,
}

/// What would turn a DENY into an ALLOW.
#[derive(Debug, Clone, PartialEq)]
pub enum Hint {
    /// The cheapest offer (or pair) under which the request is allowed.
    UnlockedBy(Vec<OfferRef>),
    /// No declared offer, alone or paired, allows it.
    NoOffer,
}

/// One listed (action, resource) pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The action.
    pub action: EntityRef,
    /// The resource.
    pub resource: EntityRef,
    /// `true` for ALLOW.
    pub allow: bool,
    /// Determining policies, or one built-in reason.
    pub reasons: Vec<Reason>,
    /// Policies that failed to evaluate.
    pub errors: Vec<EvaluationError>,
    /// A metered resource's meter state.
    pub usage: Option<UsageView>,
    /// With hints, for a DENY.
    pub hint: Option<Hint>,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The items, in order: by action, resource type, resource id.
    pub items: Vec<Item>,
    /// The snapshots every item was decided on.
    pub freshness: Freshness,
    /// Token of the next page; empty on the last.
    pub next_page_token: String,
    /// Decided with what-if overrides.
    pub hypothetical: bool,
}

/// One action to list, checked against the schema once.
struct ListedAction {
    uid: EntityUid,
    reference: EntityRef,
    /// The request with the listing's context (and a placeholder resource).
    prepared: PreparedRequest,
    /// Whether its context takes the usage pre-check.
    takes_usage: bool,
    /// Resource types, sorted.
    types: Vec<EntityType>,
}

/// A metered resource's meter, with its count.
#[derive(Clone)]
struct MeterState {
    uid: EntityUID,
    spec: MeterSpec,
    /// `None`: the count could not be read.
    used: Option<i64>,
}

/// A token naming where a listing goes on, bound to the versions it was
/// made under and to the listing's parameters.
struct PageToken {
    policy_version: String,
    snapshot_version: u64,
    offset: usize,
    fingerprint: String,
}

const TOKEN_PREFIX: &str = "tl1";

impl PageToken {
    fn encode(&self) -> String {
        use base64::Engine as _;
        let text = format!(
            "{TOKEN_PREFIX}.{}.{}.{}.{}",
            self.policy_version, self.snapshot_version, self.offset, self.fingerprint
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    fn decode(token: &str) -> Option<Self> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.split('.');
        if parts.next()? != TOKEN_PREFIX {
            return None;
        }
        let token = Self {
            policy_version: parts.next()?.to_string(),
            snapshot_version: parts.next()?.parse().ok()?,
            offset: parts.next()?.parse().ok()?,
            fingerprint: parts.next()?.to_string(),
        };
        parts.next().is_none().then_some(token)
    }
}

/// What a page token is bound to besides the versions: the listing's
/// tenant, principal, actions, types and filter.
fn fingerprint(
    tenant: &str,
    principal: &EntityUid,
    actions: &[ListedAction],
    filter: DecisionFilter,
) -> String {
    let mut digest = Sha256::new();
    digest.update(tenant.as_bytes());
    digest.update([0]);
    digest.update(principal.to_string().as_bytes());
    for action in actions {
        digest.update([0]);
        digest.update(action.uid.to_string().as_bytes());
        for ty in &action.types {
            digest.update([1]);
            digest.update(ty.to_string().as_bytes());
        }
    }
    digest.update([filter as u8]);
    digest.finalize()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The reference form of a uid, its type's name as `type_names` has it
/// (formatted once per listing) or formatted now.
fn reference(uid: &EntityUID, type_names: &[(&EntityType, String)]) -> EntityRef {
    let type_name = type_names
        .iter()
        .find(|(ty, _)| *ty == uid.entity_type())
        .map_or_else(|| uid.entity_type().to_string(), |(_, name)| name.clone());
    EntityRef {
        type_name,
        id: uid.eid().as_ref().to_string(),
    }
}

/// The limit `changes` give the meter `uid`, when they set one.
fn changed_limit(changes: &Changes, uid: &EntityUID) -> Option<i64> {
    changes
        .iter()
        .filter(|change| &change.uid == uid)
        .flat_map(|change| change.set.iter())
        .filter(|(attr, _)| attr == engine::offers::METER_LIMIT)
        .find_map(|(_, value)| match value.value_kind() {
            ValueKind::Lit(Literal::Long(limit)) => Some(*limit),
            _ => None,
        })
}

/// Whether `combination` could turn `decision` (a DENY of `prepared`) into
/// an ALLOW: every determining forbid must read something it changes (one
/// that does not stays satisfied), and for a default deny some permit must
/// (the others stay unsatisfied).
fn may_unlock(
    policies: &PolicySnapshot,
    action: &EntityUid,
    resource: &EntityUID,
    decision: &Decision,
    combination: &Tried,
) -> bool {
    use engine::Reason as Engine;
    let touched = |id: &str| {
        policies
            .policy_reads(id)
            .is_none_or(|reads| reads.touched_by(&combination.attributes, combination.parents))
    };
    decision.reasons.iter().all(|reason| match reason {
        Engine::Policy(policy) | Engine::PolicyError(policy) => touched(&policy.id),
        Engine::Builtin(BuiltinReason::NoPermit) => policies
            .prepared_for(action)
            .candidates(Some(resource))
            .any(|policy| policy.meta.effect == Effect::Permit && touched(&policy.meta.id)),
        Engine::Builtin(_) => false,
    })
}

/// A combination of offers a listing tries: the offers, their changes
/// (after the what-if overrides), and what they touch.
struct Tried {
    offers: Vec<usize>,
    changes: Changes,
    attributes: std::collections::HashSet<smol_str::SmolStr>,
    parents: bool,
}

/// The combinations of offers a listing may try, with their changes
/// (what-if overrides first): those the account does not already hold.
struct Combinations {
    tried: Vec<Tried>,
}

impl Combinations {
    fn new(
        offers: &Offers,
        policies: &PolicySnapshot,
        snapshot: &TenantSnapshot,
        principal: &EntityUID,
        base: &Changes,
    ) -> Self {
        let usable: Vec<Option<Changes>> = (0..offers.offers().len())
            .map(|index| {
                let changes = offers.changes(index, snapshot, principal)?;
                if changes.is_empty() || offers.held(index, snapshot, principal) {
                    return None;
                }
                match changes.check(policies, snapshot, engine::OFFERS_FILE) {
                    Ok(()) => Some(changes),
                    Err(error) => {
                        tracing::debug!(offer = %offers.offers()[index].id, %error, "offer does not apply to this tenant");
                        None
                    }
                }
            })
            .collect();
        let tried = offers
            .combinations()
            .iter()
            .filter_map(|combination| {
                let mut changes = base.clone();
                let mut attributes = std::collections::HashSet::new();
                let mut parents = false;
                for index in combination {
                    changes = changes.merged(usable.get(*index)?.as_ref()?);
                    let (touched, adds) = offers.touches(*index);
                    attributes.extend(touched);
                    parents |= adds;
                }
                Some(Tried {
                    offers: combination.clone(),
                    changes,
                    attributes,
                    parents,
                })
            })
            .collect();
        Self { tried }
    }
}

impl DecisionService {
    /// Lists what `listing.principal` may do (see the module's docs).
    pub async fn list_entitlements<V: Values>(
        &self,
        caller: &Caller,
        listing: Listing<V>,
    ) -> Result<Listed, Error> {
        self.authorize(caller, Operation::ListEntitlements, Some(&listing.tenant))?;
        if listing.values.what_if_count() > 0 {
            self.authorize(caller, Operation::WhatIf, Some(&listing.tenant))?;
        }
        let started = std::time::Instant::now();
        let result = self.list_unrecorded(listing).await;
        if let Some(metrics) = &self.metrics {
            match &result {
                Ok(listed) => metrics.record_listing(listed.items.len(), started.elapsed()),
                Err(_) => metrics.record_invalid(),
            }
        }
        result
    }

    async fn list_unrecorded<V: Values>(&self, listing: Listing<V>) -> Result<Listed, Error> {
        let catalog = self.catalog()?;
        let policies = &catalog.policies;
        check_tenant(&listing.tenant).map_err(Error::InvalidArgument)?;
        let page_size = match listing.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size > MAX_PAGE_SIZE => {
                return Err(invalid(
                    "page_size",
                    format!("{size} exceeds the limit of {MAX_PAGE_SIZE}"),
                ))
            }
            size => size,
        };
        let requested = match listing.requested {
            0 => 1,
            units if units < 0 => {
                return Err(invalid(
                    "requested",
                    format!("must be at least 1, got {units}"),
                ))
            }
            units => units,
        };
        let principal_ref = listing
            .principal
            .as_ref()
            .ok_or_else(|| invalid("principal", "required"))?;
        let principal = engine::entity_uid(
            policies,
            "principal",
            &principal_ref.type_name,
            &principal_ref.id,
        )
        .map_err(Error::InvalidArgument)?;
        let mut values = listing.values;
        let base = values
            .take_what_if(policies)
            .map_err(Error::InvalidArgument)?;
        let hypothetical = !base.is_empty();
        let (context, entities) = values
            .into_cedar(policies)
            .map_err(Error::InvalidArgument)?;
        if !entities.is_empty() {
            return Err(invalid(
                "entities",
                "a listing takes no request-scoped entities",
            ));
        }
        let types = self.resource_types(policies, &listing.resource_types)?;
        let lookup = self
            .lookup(&catalog, &listing.tenant, listing.max_staleness_ms)
            .await;
        let snapshot = match &lookup {
            Lookup::Found { snapshot, .. } => Arc::clone(snapshot),
            Lookup::Licensed { license, .. } => Arc::clone(&license.snapshot),
            Lookup::Unknown => return Err(Error::UnknownTenant(listing.tenant)),
            Lookup::Unavailable => {
                return Err(Error::Unavailable(format!(
                    "the entitlements of tenant `{}` cannot be read now: {}",
                    listing.tenant,
                    BuiltinReason::EntitlementsUnavailable.message()
                )))
            }
            Lookup::LicenseRefused { reason, .. } => {
                return Err(Error::Unavailable(format!(
                    "tenant `{}`: {}",
                    listing.tenant,
                    reason.message()
                )))
            }
        };
        base.check(policies, &snapshot, "what_if")
            .map_err(Error::InvalidArgument)?;
        let actions = self.listed_actions(
            policies,
            &principal,
            &listing.actions,
            types.as_deref(),
            &context,
        )?;
        let freshness = Freshness::of(&catalog, &lookup);
        let fingerprint = fingerprint(&listing.tenant, &principal, &actions, listing.decision);
        let offset = if listing.page_token.is_empty() {
            0
        } else {
            let token = PageToken::decode(&listing.page_token)
                .ok_or_else(|| invalid("page_token", "not a page token of this listing API"))?;
            if token.fingerprint != fingerprint {
                return Err(invalid(
                    "page_token",
                    "made for another listing (tenant, principal, actions, resource types or decision filter differ)",
                ));
            }
            if token.policy_version != freshness.policy_version
                || token.snapshot_version != freshness.snapshot_version
            {
                return Err(invalid(
                    "page_token",
                    format!(
                        "made under policy version {} and snapshot version {}; the entitlements are now at {} and {}: list again from the first page",
                        token.policy_version,
                        token.snapshot_version,
                        freshness.policy_version,
                        freshness.snapshot_version
                    ),
                ));
            }
            token.offset
        };

        // Every (action, resource) pair, in order.
        let resources_of: HashMap<&EntityType, Vec<EntityUID>> = actions
            .iter()
            .flat_map(|action| action.types.iter())
            .map(|ty| (ty, snapshot.entities.of_type(ty)))
            .collect();
        let type_names: Vec<(&EntityType, String)> = resources_of
            .keys()
            .map(|ty| (*ty, ty.to_string()))
            .collect();
        let mut pairs: Vec<(usize, &EntityUID)> = Vec::new();
        for (index, action) in actions.iter().enumerate() {
            for ty in &action.types {
                for resource in resources_of.get(ty).into_iter().flatten() {
                    pairs.push((index, resource));
                }
            }
        }
        let offers = policies.offers().map(Arc::clone);
        let meter_attribute = offers
            .as_ref()
            .map_or("meter", |offers| offers.meter_attribute.as_str());
        let meters = self
            .meter_states(
                &snapshot,
                &listing.tenant,
                meter_attribute,
                pairs.iter().skip(offset).map(|(_, resource)| *resource),
            )
            .await;
        let strict_unknown =
            self.options.strict_principals && !snapshot.entities.contains(&principal);
        let principal_core: EntityUID = principal.clone().into();
        let combinations = match (&offers, listing.hints) {
            (Some(offers), true) => Some(Combinations::new(
                offers,
                policies,
                &snapshot,
                &principal_core,
                &base,
            )),
            _ => None,
        };

        let mut items = Vec::new();
        let mut next = offset;
        let context_values: Vec<Value> = context.values().cloned().collect();
        while next < pairs.len() && items.len() < page_size {
            // Decided in chunks: each builds the entities its resources
            // reach once, for every item of the chunk.
            let chunk_end = (next + page_size - items.len()).min(pairs.len());
            let chunk = &pairs[next..chunk_end];
            let mut decide_chunk = ChunkDecider {
                policies,
                snapshot: &snapshot,
                principal: &principal,
                chunk,
                context: &context_values,
                requested,
                options: self.options,
                metering: self.metering.as_deref(),
                entities: HashMap::new(),
            };
            for (action_index, resource) in chunk {
                let action = &actions[*action_index];
                let meter = meters.get(*resource).filter(|_| action.takes_usage);
                let (decision, usage) = if strict_unknown {
                    (Decision::deny(BuiltinReason::UnknownPrincipal), None)
                } else if meter.is_some_and(|meter| meter.used.is_none()) {
                    (Decision::deny(BuiltinReason::MeteringUnavailable), None)
                } else {
                    let (decision, usage) =
                        decide_chunk.decide(action, resource, meter, None, &base)?;
                    (decision, usage)
                };
                let allow = decision.allow;
                let wanted = match listing.decision {
                    DecisionFilter::All => true,
                    DecisionFilter::Allow => allow,
                    DecisionFilter::Deny => !allow,
                };
                next += 1;
                if !wanted {
                    continue;
                }
                let hint = match (&combinations, &offers) {
                    (Some(combinations), Some(offers)) if !allow => Some(hint(
                        &mut decide_chunk,
                        offers,
                        combinations,
                        action,
                        resource,
                        meter,
                        &decision,
                    )?),
                    _ => None,
                };
                items.push(Item {
                    action: action.reference.clone(),
                    resource: reference(resource, &type_names),
                    allow,
                    reasons: decision.reasons.into_iter().map(Reason::Decided).collect(),
                    errors: decision.errors,
                    usage,
                    hint,
                });
                if items.len() == page_size {
                    break;
                }
            }
        }
        let next_page_token = if next < pairs.len() {
            PageToken {
                policy_version: freshness.policy_version.clone(),
                snapshot_version: freshness.snapshot_version,
                offset: next,
                fingerprint,
            }
            .encode()
        } else {
            String::new()
        };
        Ok(Listed {
            items,
            freshness,
            next_page_token,
            hypothetical,
        })
    }

    /// The requested resource types, checked; `None` for all.
    fn resource_types(
        &self,
        policies: &PolicySnapshot,
        names: &[String],
    ) -> Result<Option<Vec<EntityType>>, Error> {
        if names.is_empty() {
            return Ok(None);
        }
        names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                policies
                    .entity_type(name)
                    .map(|ty| AsRef::<EntityType>::as_ref(ty).clone())
                    .ok_or_else(|| {
                        invalid(
                            format!("resource_types[{index}]"),
                            format!("entity type `{name}` is not declared in the schema"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The actions to list, each checked against the schema with the
    /// listing's context.
    fn listed_actions(
        &self,
        policies: &PolicySnapshot,
        principal: &EntityUid,
        requested: &[EntityRef],
        types: Option<&[EntityType]>,
        context: &std::collections::BTreeMap<smol_str::SmolStr, Value>,
    ) -> Result<Vec<ListedAction>, Error> {
        let schema: &cedar_policy_core::validator::ValidatorSchema = policies.schema.as_ref();
        let principal_core: EntityUID = principal.clone().into();
        let principal_type = principal_core.entity_type();
        let explicit = !requested.is_empty();
        let mut uids: Vec<(String, EntityUid)> = if explicit {
            requested
                .iter()
                .enumerate()
                .map(|(index, action)| {
                    let type_name = if action.type_name.is_empty() {
                        "Action"
                    } else {
                        action.type_name.as_str()
                    };
                    engine::action_uid(policies, type_name, &action.id)
                        .map(|uid| (format!("actions[{index}]"), uid))
                        .map_err(|error| invalid(format!("actions[{index}]"), error.problem))
                })
                .collect::<Result<_, _>>()?
        } else {
            policies
                .actions_declared()
                .map(|uid| ("actions".to_string(), uid.clone()))
                .collect()
        };
        uids.sort_by_key(|(_, uid)| uid.to_string());
        uids.dedup_by(|a, b| a.1 == b.1);
        let mut actions = Vec::new();
        for (field, uid) in uids {
            let core: EntityUID = uid.clone().into();
            let Some(declared) = schema.get_action_id(&core) else {
                continue;
            };
            if !declared.is_applicable_principal_type(principal_type) {
                if explicit {
                    return Err(invalid(
                        field,
                        format!("action `{uid}` does not apply to principals of type `{principal_type}`"),
                    ));
                }
                continue;
            }
            let mut action_types: Vec<EntityType> = declared
                .applies_to_resources()
                .filter(|ty| types.is_none_or(|types| types.contains(ty)))
                .cloned()
                .collect();
            action_types.sort();
            let Some(first) = action_types.first() else {
                continue;
            };
            // Checked once, on a resource of its first type: the
            // request's other parts are the same for every item.
            let placeholder = EntityUID::from_components(
                first.clone(),
                cedar_policy_core::ast::Eid::new("listing"),
                None,
            );
            let prepare = |context| {
                engine::prepare(
                    policies,
                    principal.clone(),
                    uid.clone(),
                    placeholder.clone().into(),
                    context,
                    Vec::new(),
                )
            };
            let prepared = prepare(context.clone())
                .map_err(|error| invalid(format!("context (action `{uid}`)"), error.to_string()))?;
            let mut with_usage = context.clone();
            with_usage.insert(USAGE.into(), usage_record(&MeterSpec::placeholder(), 0, 1));
            let takes_usage = prepare(with_usage).is_ok();
            actions.push(ListedAction {
                reference: EntityRef {
                    type_name: core.entity_type().to_string(),
                    id: core.eid().as_ref().to_string(),
                },
                uid,
                prepared,
                takes_usage,
                types: action_types,
            });
        }
        Ok(actions)
    }

    /// The meters of `resources` (by their `meter_attribute`), with their
    /// counts read in one round trip (none without metering).
    async fn meter_states<'r>(
        &self,
        snapshot: &Arc<TenantSnapshot>,
        tenant: &str,
        meter_attribute: &str,
        resources: impl Iterator<Item = &'r EntityUID>,
    ) -> HashMap<EntityUID, MeterState> {
        let Some(metering) = &self.metering else {
            return HashMap::new();
        };
        let mut by_resource: HashMap<EntityUID, EntityUID> = HashMap::new();
        let mut specs: Vec<(EntityUID, MeterSpec)> = Vec::new();
        for resource in resources {
            let Some(value) = snapshot.entities.attr(resource, meter_attribute) else {
                continue;
            };
            let ValueKind::Lit(Literal::EntityUID(meter)) = value.value_kind() else {
                continue;
            };
            if meter.entity_type().to_string() != METER_TYPE {
                continue;
            }
            let meter = (**meter).clone();
            if !specs.iter().any(|(known, _)| *known == meter) {
                match metering.meter(snapshot, meter.eid().as_ref()) {
                    Ok(Some(spec)) => specs.push((meter.clone(), spec)),
                    _ => continue,
                }
            }
            by_resource.insert(resource.clone(), meter);
        }
        if specs.is_empty() {
            return HashMap::new();
        }
        let list: Vec<MeterSpec> = specs.iter().map(|(_, spec)| spec.clone()).collect();
        let counts = match self.tenants.connection() {
            Some(conn) => metering.counts(conn, tenant, &list).await.ok(),
            None => None,
        };
        if counts.is_none() {
            metering.note_unavailable();
        }
        let states: HashMap<EntityUID, MeterState> = specs
            .into_iter()
            .enumerate()
            .map(|(index, (uid, spec))| {
                let used = counts
                    .as_ref()
                    .and_then(|counts| counts.get(index).copied());
                (uid.clone(), MeterState { uid, spec, used })
            })
            .collect();
        by_resource
            .into_iter()
            .filter_map(|(resource, meter)| Some((resource, states.get(&meter)?.clone())))
            .collect()
    }
}

/// Decides the items of one chunk of a listing, building the entities they
/// reach once per set of changes.
struct ChunkDecider<'a> {
    policies: &'a PolicySnapshot,
    snapshot: &'a TenantSnapshot,
    principal: &'a EntityUid,
    chunk: &'a [(usize, &'a EntityUID)],
    context: &'a [Value],
    requested: i64,
    options: engine::Options,
    metering: Option<&'a crate::metering::Metering>,
    /// The chunk's entities under each set of changes: `None` for the
    /// listing's own (its what-if overrides), else a combination's index.
    entities: HashMap<Option<usize>, Option<Entities>>,
}

impl ChunkDecider<'_> {
    /// Decides `action` on `resource` with `changes` (those of combination
    /// `combination`, or the listing's own), with the usage pre-check of
    /// `meter` at the limit the changes give it.
    fn decide(
        &mut self,
        action: &ListedAction,
        resource: &EntityUID,
        meter: Option<&MeterState>,
        combination: Option<usize>,
        changes: &Changes,
    ) -> Result<(Decision, Option<UsageView>), Error> {
        // The meter as the changes leave it (an offer's or a what-if limit).
        let counted = meter.and_then(|meter| {
            let used = meter.used?;
            let spec = match changed_limit(changes, &meter.uid) {
                Some(limit) => std::borrow::Cow::Owned(MeterSpec {
                    limit,
                    ..meter.spec.clone()
                }),
                None => std::borrow::Cow::Borrowed(&meter.spec),
            };
            Some((spec, used))
        });
        let request = action.prepared.for_resource(
            resource.clone(),
            counted
                .as_ref()
                .map(|(spec, used)| (USAGE, usage_record(spec, *used, self.requested))),
        );
        if !self.entities.contains_key(&combination) {
            // A combination's entities are the listing's own with the
            // offers' changes put in; built anew only when that cannot be.
            let from_base = match (combination, self.entities.get(&None)) {
                (Some(_), Some(Some(base))) => {
                    engine::changed_entities(self.snapshot, base, changes)
                }
                _ => None,
            };
            let built = from_base.or_else(|| {
                engine::shared_entities(
                    self.policies,
                    self.snapshot,
                    self.principal,
                    self.chunk.iter().map(|(_, resource)| *resource),
                    self.context.iter(),
                    changes,
                )
            });
            self.entities.insert(combination, built);
        }
        let entities = self.entities.get(&combination).and_then(Option::as_ref);
        let Some(entities) = entities else {
            return Err(Error::InvalidArgument(RequestError::new(
                "what_if",
                "the changed entities do not fit together",
            )));
        };
        let decision = engine::decide_in(self.policies, entities, &request, self.options);
        // The usage shown is the listing's own, never an offer's.
        let view = match (combination, counted, self.metering) {
            (None, Some((spec, used)), Some(metering)) => Some(metering.view(&spec, used)),
            _ => None,
        };
        Ok((decision, view))
    }
}

/// The hint for `decision`, a DENY of `prepared` on `snapshot`: the
/// cheapest combination of `policies`' offers under which the same request
/// is allowed, decided as a what-if with the offers' changes (the request's
/// context as it is, a usage record included). `None` when the policies
/// declare no offers.
pub fn hint_for_check(
    policies: &PolicySnapshot,
    snapshot: &TenantSnapshot,
    prepared: &PreparedRequest,
    decision: &Decision,
    options: engine::Options,
) -> Result<Option<Hint>, RequestError> {
    let Some(offers) = policies.offers() else {
        return Ok(None);
    };
    let principal: EntityUID = prepared.principal().clone().into();
    let combinations = Combinations::new(offers, policies, snapshot, &principal, &Changes::new());
    let resource = {
        let core: &cedar_policy_core::ast::Request = prepared.request().as_ref();
        core.resource().uid().cloned()
    };
    for tried in &combinations.tried {
        let may = resource.as_ref().is_none_or(|resource| {
            may_unlock(policies, prepared.action(), resource, decision, tried)
        });
        if !may {
            continue;
        }
        if engine::decide_changed(policies, snapshot, prepared, options, &tried.changes)?.allow {
            return Ok(Some(Hint::UnlockedBy(offer_refs(offers, &tried.offers))));
        }
    }
    Ok(Some(Hint::NoOffer))
}

/// The offers of a combination, as a hint names them.
fn offer_refs(offers: &Offers, combination: &[usize]) -> Vec<OfferRef> {
    combination
        .iter()
        .map(|offer| {
            let offer = &offers.offers()[*offer];
            OfferRef {
                id: offer.id.clone(),
                kind: offer.kind,
                price: offer.price,
                name: offer.name.clone(),
            }
        })
        .collect()
}

/// The hint for a DENY: the first combination of offers, cheapest first,
/// under which the same request is allowed.
fn hint(
    decider: &mut ChunkDecider<'_>,
    offers: &Offers,
    combinations: &Combinations,
    action: &ListedAction,
    resource: &EntityUID,
    meter: Option<&MeterState>,
    decision: &Decision,
) -> Result<Hint, Error> {
    for (index, tried) in combinations.tried.iter().enumerate() {
        if !may_unlock(decider.policies, &action.uid, resource, decision, tried) {
            continue;
        }
        let (under_offer, _) =
            decider.decide(action, resource, meter, Some(index), &tried.changes)?;
        if under_offer.allow {
            return Ok(Hint::UnlockedBy(offer_refs(offers, &tried.offers)));
        }
    }
    Ok(Hint::NoOffer)
}
