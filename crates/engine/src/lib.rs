//! tollgate's decision model, with no I/O beyond reading a policy directory:
//! a strictly validated, compiled Cedar policy set ([`PolicySnapshot`]), a
//! tenant's entitlement snapshot kept compact ([`TenantSnapshot`]), request
//! preparation against the schema ([`prepare`]), the decision ([`decide`])
//! with its reasons, an explanation of every policy whose scope matched
//! ([`explain`]), and the range of counts a metered decision holds for
//! ([`CountRange`]).
//!
//! Everything here is synchronous and pure: a decision is a function of a
//! prepared request, a policy snapshot and a tenant snapshot. Where
//! snapshots come from (files, Redis, licenses), how requests arrive (gRPC,
//! HTTP) and how usage is counted are the `tollgate` crate's business.
//!
//! ```
//! use std::collections::BTreeMap;
//! use tollgate_engine::{
//!     action_uid, changed_entities, decide, decide_changed, decide_in, entity_uid, prepare, Options, PolicySnapshot, SnapshotSource,
//!     TenantSnapshot,
//! };
//!
//! let policies = PolicySnapshot::from_sources(
//!     "schema.cedarschema",
//!     "entity User { plan: String }; entity Feature;
//!      action use appliesTo { principal: User, resource: Feature };",
//!     &[(
//!         "plans.cedar".to_string(),
//!         r#"@id("pro-only") @code("plan_includes")
//!            permit(principal, action, resource) when { principal.plan == "pro" };"#
//!             .to_string(),
//!     )],
//! )
//! .expect("a valid policy set");
//! let tenant = TenantSnapshot::parse(
//!     br#"{"tenant": "acme", "version": 1, "entities": [
//!         {"uid": {"type": "User", "id": "bob"}, "attrs": {"plan": "pro"}, "parents": []}]}"#,
//!     Some("acme"),
//!     &policies,
//!     SnapshotSource::File,
//! )
//! .expect("a valid snapshot");
//! let request = prepare(
//!     &policies,
//!     entity_uid(&policies, "principal", "User", "bob").unwrap(),
//!     action_uid(&policies, "Action", "use").unwrap(),
//!     entity_uid(&policies, "resource", "Feature", "pdf-export").unwrap(),
//!     BTreeMap::new(),
//!     Vec::new(),
//! )
//! .expect("the request fits the schema");
//! let decision = decide(&policies, &tenant, &request, Options::default()).unwrap();
//! assert!(decision.allow);
//! assert_eq!(decision.reasons[0].code(), "plan_includes");
//! ```

#![deny(missing_docs)]

mod changes;
mod compiled;
mod context_check;
mod context_fit;
mod decide;
pub mod diagnostics;
mod guard;
pub mod offers;
pub mod policies;
pub mod tenant;

pub use changes::{Change, Changes};
pub use compiled::{Bindings, Compiled, CountRange};
pub use decide::{
    action_uid, changed_entities, decide, decide_changed, decide_in, entity_uid, evaluate,
    evaluate_probing, explain, prepare, shared_entities, BuiltinReason, Decision, EvaluationError,
    Options, PolicyErrorMode, PolicyEvaluation, PreparedRequest, Reason, RequestError,
    MAX_ID_BYTES, POLICY_ERROR_CODE,
};
pub use diagnostics::{describe, FileProblem};
pub use guard::Guard;
pub use offers::{Offer, OfferKind, Offers, OFFERS_FILE};
pub use policies::{
    PolicyMeta, PolicyReads, PolicySlice, PolicySnapshot, PreparedPolicy, SCHEMA_FILE,
};
pub use tenant::{
    check_tenant_id, EntitySlice, SliceEntities, SnapshotError, SnapshotSource, TenantEntities,
    TenantMap, TenantSnapshot, MAX_HIERARCHY_DEPTH, MAX_TENANT_LEN,
};
