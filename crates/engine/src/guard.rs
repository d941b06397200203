//! Guards: the first tests of a policy's condition that a decision can settle
//! without Cedar's evaluator.
//!
//! A policy's condition is its scope and its body joined with `&&`, and Cedar
//! evaluates the conjuncts left to right, stopping at the first false one.
//! The scope's tests (`principal == E`, `action in [...]`, `resource is T`)
//! never fail. So when the first conjuncts after them are simple tests of the
//! request (`context.country == "DE"`, `["DE", "FR"].contains(context.country)`,
//! `context has usage`, `resource has addon`) and one of them is false, the
//! whole condition is false, without an error: the policy is not satisfied,
//! and evaluating it would only confirm that. A test that cannot be settled
//! (the context attribute is missing, which Cedar reports as an error) ends
//! the guard: the policy is then evaluated as usual.
//!
//! With a large catalog most policies that can apply to an action are ruled
//! out by such a test (a country fence, an add-on), at the cost of a map
//! lookup and a comparison each.

use cedar_policy_core::ast::{BinaryOp, Expr, ExprKind, Literal, Value, ValueKind, Var};
use cedar_policy_core::entities::Dereference;
use smol_str::SmolStr;

use crate::compiled::Bindings;

/// One test of the request.
#[derive(Debug, Clone)]
enum Test {
    /// `context has A`.
    ContextHas(SmolStr),
    /// `context.A == v` or `v == context.A`, `v` a literal.
    ContextEquals(SmolStr, Value),
    /// `[v, ...].contains(context.A)`, every `v` a literal.
    ContextOneOf(SmolStr, Vec<Value>),
    /// `principal has A` or `resource has A`.
    EntityHas(Var, SmolStr),
}

/// The tests a policy's condition makes first, in order (often none).
#[derive(Debug, Clone, Default)]
pub struct Guard(Box<[Test]>);

impl Guard {
    /// The guard of `condition` (a policy's scope and body joined).
    pub fn of(condition: &Expr) -> Self {
        let mut conjuncts = Vec::new();
        flatten(condition, &mut conjuncts);
        let tests: Vec<Test> = conjuncts
            .into_iter()
            .skip_while(|conjunct| is_scope_test(conjunct))
            .map_while(test)
            .collect();
        Self(tests.into_boxed_slice())
    }

    /// Whether the guard has any test.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the guard shows the condition false for `request` over
    /// `entities`, without error. `false` when it cannot tell. (Decisions
    /// call [`Guard::rules_out_in`] with bindings they keep.)
    #[cfg(test)]
    pub fn rules_out(
        &self,
        request: &cedar_policy_core::ast::Request,
        entities: &cedar_policy_core::entities::Entities,
    ) -> bool {
        self.rules_out_in(&Bindings::new(request, entities))
    }

    /// `Guard::rules_out` with a decision's bindings (which remember the
    /// entities looked up).
    pub fn rules_out_in(&self, bindings: &Bindings<'_>) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let context = bindings.context();
        for test in self.0.iter() {
            let holds = match test {
                Test::ContextHas(attr) => match context {
                    Some(values) => values.contains_key(attr),
                    None => return false,
                },
                Test::ContextEquals(attr, literal) => match bindings.context_attr(attr) {
                    Some(value) => value == literal,
                    None => return false,
                },
                Test::ContextOneOf(attr, literals) => match bindings.context_attr(attr) {
                    Some(value) => literals.contains(value),
                    None => return false,
                },
                Test::EntityHas(var, attr) => {
                    let Some(uid) = bindings.uid(*var) else {
                        return false;
                    };
                    match bindings.entity(uid) {
                        Dereference::NoSuchEntity => false,
                        Dereference::Data(entity) => entity.get(attr).is_some(),
                        Dereference::Residual(_) => return false,
                    }
                }
            };
            if !holds {
                return true;
            }
        }
        false
    }
}

/// The conjuncts of `expr` in the order Cedar evaluates them.
fn flatten<'a>(expr: &'a Expr, into: &mut Vec<&'a Expr>) {
    match expr.expr_kind() {
        ExprKind::And { left, right } => {
            flatten(left, into);
            flatten(right, into);
        }
        _ => into.push(expr),
    }
}

/// A scope test, which evaluates to a boolean and never fails: `true`,
/// `principal == E`, `principal in E`, `action in [E, ...]`, `resource is T`
/// (a slot of a template in place of `E` too).
fn is_scope_test(expr: &Expr) -> bool {
    let scope_var = |expr: &Expr| {
        matches!(
            expr.expr_kind(),
            ExprKind::Var(Var::Principal | Var::Action | Var::Resource)
        )
    };
    let entity = |expr: &Expr| {
        matches!(
            expr.expr_kind(),
            ExprKind::Lit(Literal::EntityUID(_)) | ExprKind::Slot(_)
        )
    };
    match expr.expr_kind() {
        ExprKind::Lit(Literal::Bool(true)) => true,
        ExprKind::BinaryApp {
            op: BinaryOp::Eq | BinaryOp::In,
            arg1,
            arg2,
        } if scope_var(arg1) => match arg2.expr_kind() {
            ExprKind::Set(items) => items.iter().all(entity),
            _ => entity(arg2),
        },
        ExprKind::Is { expr, .. } => scope_var(expr),
        _ => false,
    }
}

/// `context.A`'s `A`.
fn context_attr(expr: &Expr) -> Option<&SmolStr> {
    match expr.expr_kind() {
        ExprKind::GetAttr { expr, attr }
            if matches!(expr.expr_kind(), ExprKind::Var(Var::Context)) =>
        {
            Some(attr)
        }
        _ => None,
    }
}

/// A literal's value (entity uids, strings, longs, booleans).
fn literal(expr: &Expr) -> Option<Value> {
    match expr.expr_kind() {
        ExprKind::Lit(literal) => Some(Value::new(ValueKind::Lit(literal.clone()), None)),
        _ => None,
    }
}

/// The test `expr` makes, if it is one a guard can settle.
fn test(expr: &Expr) -> Option<Test> {
    match expr.expr_kind() {
        ExprKind::HasAttr { expr, attr } => match expr.expr_kind() {
            ExprKind::Var(Var::Context) => Some(Test::ContextHas(attr.clone())),
            ExprKind::Var(var @ (Var::Principal | Var::Resource)) => {
                Some(Test::EntityHas(*var, attr.clone()))
            }
            _ => None,
        },
        ExprKind::BinaryApp {
            op: BinaryOp::Eq,
            arg1,
            arg2,
        } => match (context_attr(arg1), context_attr(arg2)) {
            (Some(attr), None) => Some(Test::ContextEquals(attr.clone(), literal(arg2)?)),
            (None, Some(attr)) => Some(Test::ContextEquals(attr.clone(), literal(arg1)?)),
            _ => None,
        },
        ExprKind::BinaryApp {
            op: BinaryOp::Contains,
            arg1,
            arg2,
        } => {
            let attr = context_attr(arg2)?;
            let ExprKind::Set(items) = arg1.expr_kind() else {
                return None;
            };
            let literals = items.iter().map(literal).collect::<Option<Vec<_>>>()?;
            Some(Test::ContextOneOf(attr.clone(), literals))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy_core::ast::{EntityUID, EntityUIDEntry, PolicyID, Request};
    use cedar_policy_core::entities::{Entities, NoEntitiesSchema, TCComputation};
    use cedar_policy_core::extensions::Extensions;

    fn guard(policy: &str) -> Guard {
        let policy =
            cedar_policy_core::parser::parse_policy(Some(PolicyID::from_string("p")), policy)
                .expect("policy parses");
        Guard::of(&policy.condition())
    }

    fn request(context: &[(&str, Value)]) -> Request {
        let uid = |text: &str| text.parse::<EntityUID>().expect("uid");
        Request::new_unchecked(
            EntityUIDEntry::known(uid(r#"User::"alice""#), None),
            EntityUIDEntry::known(uid(r#"Action::"use""#), None),
            EntityUIDEntry::known(uid(r#"Feature::"pdf""#), None),
            Some(cedar_policy_core::ast::Context::Value(std::sync::Arc::new(
                context
                    .iter()
                    .map(|(key, value)| (SmolStr::from(*key), value.clone()))
                    .collect(),
            ))),
        )
    }

    fn entities(json: serde_json::Value) -> Entities {
        cedar_policy_core::entities::EntityJsonParser::new(
            None::<&NoEntitiesSchema>,
            Extensions::all_available(),
            TCComputation::ComputeNow,
        )
        .from_json_value(json)
        .expect("entities parse")
    }

    fn string(text: &str) -> Value {
        Value::from(text)
    }

    #[test]
    fn the_tests_after_the_scope_are_the_guard() {
        for (policy, tests) in [
            ("permit(principal, action, resource);", 0),
            (
                r#"forbid(principal in Role::"a", action == Action::"use", resource is Feature)
                   when { context.country == "DE" && principal.tier < 2 };"#,
                1,
            ),
            (
                r#"forbid(principal, action in [Action::"use", Action::"view"], resource)
                   when { context has country && ["DE", "FR"].contains(context.country) }
                   unless { "x" == context.country };"#,
                2,
            ),
            (
                r#"forbid(principal, action, resource == Feature::"pdf")
                   when { resource has addon && resource.addon == "sso" };"#,
                1,
            ),
            // The first test is not one a guard settles: nothing after it counts.
            (
                r#"forbid(principal, action, resource)
                   when { principal.tier < 2 && context.country == "DE" };"#,
                0,
            ),
            // Not a literal.
            (
                r#"forbid(principal, action, resource)
                   when { context.country == principal.country };"#,
                0,
            ),
            (
                r#"forbid(principal, action, resource)
                   when { context.country == "DE" || context.country == "FR" };"#,
                0,
            ),
        ] {
            assert_eq!(guard(policy).0.len(), tests, "{policy}");
        }
    }

    #[test]
    fn a_false_test_rules_the_policy_out_and_a_missing_attribute_does_not() {
        let no_entities = Entities::new();
        let fence = guard(
            r#"forbid(principal, action, resource)
               when { context has country && ["DE", "FR"].contains(context.country) && principal.tier < 2 };"#,
        );
        let from = |country: &str| request(&[("country", string(country))]);
        assert!(fence.rules_out(&from("BR"), &no_entities));
        assert!(!fence.rules_out(&from("DE"), &no_entities));
        assert!(!fence.rules_out(&from("FR"), &no_entities));
        // `context has country` is false: the condition is false.
        assert!(fence.rules_out(&request(&[]), &no_entities));

        let equals = guard(
            r#"forbid(principal, action, resource) when { 7 == context.tier && context.country == "DE" };"#,
        );
        assert!(equals.rules_out(&request(&[("tier", Value::from(6))]), &no_entities));
        // A String is not equal to a Long, and no error either.
        assert!(equals.rules_out(&request(&[("tier", string("7"))]), &no_entities));
        // The first test holds, the second is settled by the next attribute.
        assert!(equals.rules_out(
            &request(&[("tier", Value::from(7)), ("country", string("BR"))]),
            &no_entities
        ));
        assert!(!equals.rules_out(
            &request(&[("tier", Value::from(7)), ("country", string("DE"))]),
            &no_entities
        ));
        // Missing: Cedar reports an error, which only an evaluation gives.
        assert!(!equals.rules_out(&request(&[]), &no_entities));
        assert!(!equals.rules_out(&request(&[("tier", Value::from(7))]), &no_entities));
    }

    #[test]
    fn entity_has_reads_the_entity() {
        let addon = guard(
            r#"forbid(principal, action, resource) when { resource has addon && resource.addon == "sso" };"#,
        );
        let with = entities(serde_json::json!([
            {"uid": {"type": "Feature", "id": "pdf"}, "attrs": {"addon": "sso"}, "parents": []}
        ]));
        let without = entities(serde_json::json!([
            {"uid": {"type": "Feature", "id": "pdf"}, "attrs": {}, "parents": []}
        ]));
        assert!(!addon.rules_out(&request(&[]), &with));
        assert!(addon.rules_out(&request(&[]), &without));
        // No such entity: `has` is false.
        assert!(addon.rules_out(&request(&[]), &Entities::new()));
    }
}

/// Decisions with guards against Cedar's own authorizer, over policies whose
/// conditions start with every kind of test a guard settles, and requests
/// that make those tests true or false. (Validated policies read an optional
/// attribute only after `has`, so a guard's attribute is never missing here;
/// the unit tests above cover that case.)
#[cfg(test)]
mod against_cedar {
    use std::collections::BTreeSet;

    use cedar_policy::{Authorizer, Context, Entities, EntityUid, Request};

    use crate::PolicySnapshot;
    use crate::{Options, PolicyErrorMode, Reason};

    const SCHEMA: &str = r#"
        entity Role;
        entity Account { tier: Long };
        entity User in [Role] { account: Account };
        entity Feature { addon?: String };
        action use appliesTo {
            principal: User,
            resource: Feature,
            context: { country: String, tier: Long, usage?: { used: Long } }
        };
    "#;

    const POLICIES: &str = r#"
        @id("members") permit(principal, action == Action::"use", resource)
            when { principal.account.tier >= 0 };
        @id("fence-de") forbid(principal, action, resource is Feature)
            when { context.country == "DE" && principal.account.tier < 2 };
        @id("fence-viewers") forbid(principal in Role::"viewer", action, resource)
            when { context has country && ["FR", "IT"].contains(context.country) };
        @id("addon") forbid(principal, action, resource)
            when { resource has addon && resource.addon == "sso" && principal.account.tier < 3 };
        @id("usage") forbid(principal, action, resource)
            when { context has usage && context.usage.used > 10 };
        @id("tier-three") permit(principal, action, resource == Feature::"pdf")
            when { 3 == context.tier };
        @id("tier-one") forbid(principal, action, resource)
            when { context.tier == 1 }
            unless { context has country && context.country == "BR" };
    "#;

    #[test]
    fn every_decision_is_cedars() {
        let policies = PolicySnapshot::from_sources(
            "schema.cedarschema",
            SCHEMA,
            &[("guards.cedar".to_string(), POLICIES.to_string())],
        )
        .expect("policies load");
        let guarded = policies
            .prepared_for(&r#"Action::"use""#.parse().unwrap())
            .all()
            .iter()
            .filter(|policy| !policy.guard.is_empty())
            .count();
        assert_eq!(guarded, 6);
        let entities = Entities::from_json_value(
            serde_json::json!([
                {"uid": {"type": "Role", "id": "viewer"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Account", "id": "a1"}, "attrs": {"tier": 1}, "parents": []},
                {"uid": {"type": "Account", "id": "a3"}, "attrs": {"tier": 3}, "parents": []},
                {"uid": {"type": "User", "id": "alice"}, "attrs": {"account": {"__entity": {"type": "Account", "id": "a1"}}}, "parents": [{"type": "Role", "id": "viewer"}]},
                {"uid": {"type": "User", "id": "bob"}, "attrs": {"account": {"__entity": {"type": "Account", "id": "a3"}}}, "parents": []},
                {"uid": {"type": "Feature", "id": "pdf"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Feature", "id": "sso"}, "attrs": {"addon": "sso"}, "parents": []}
            ]),
            Some(&policies.schema),
        )
        .expect("entities load");
        let options = Options {
            strict_principals: false,
            policy_errors: PolicyErrorMode::Cedar,
        };
        let authorizer = Authorizer::new();
        let mut ruled_out_somewhere = 0;
        let mut decided = 0;
        for principal in ["alice", "bob"] {
            for resource in ["pdf", "sso", "gone"] {
                for country in ["DE", "FR", "BR", "IT"] {
                    for tier in [1, 3, 7] {
                        for used in [None, Some(5), Some(20)] {
                            let mut context = serde_json::Map::new();
                            context.insert("country".into(), country.into());
                            context.insert("tier".into(), tier.into());
                            if let Some(used) = used {
                                context.insert("usage".into(), serde_json::json!({"used": used}));
                            }
                            let action: EntityUid = r#"Action::"use""#.parse().unwrap();
                            let request = Request::new(
                                format!(r#"User::"{principal}""#).parse().unwrap(),
                                action.clone(),
                                format!(r#"Feature::"{resource}""#).parse().unwrap(),
                                Context::from_json_value(serde_json::Value::Object(context), None)
                                    .unwrap(),
                                Some(&policies.schema),
                            )
                            .expect("request fits the schema");
                            let prepared = policies.prepared_for(&action).all();
                            ruled_out_somewhere += prepared
                                .iter()
                                .filter(|policy| {
                                    policy.guard.rules_out(request.as_ref(), entities.as_ref())
                                })
                                .count();
                            let ours = crate::evaluate(prepared, &entities, &request, options);
                            let theirs =
                                authorizer.is_authorized(&request, &policies.policy_set, &entities);
                            let case = format!("{principal} {resource} {country} {tier} {used:?}");
                            assert_eq!(
                                ours.allow,
                                theirs.decision() == cedar_policy::Decision::Allow,
                                "{case}"
                            );
                            let reasons: BTreeSet<String> = ours
                                .reasons
                                .iter()
                                .filter_map(|reason| match reason {
                                    Reason::Policy(meta) => Some(meta.id.clone()),
                                    _ => None,
                                })
                                .collect();
                            let expected: BTreeSet<String> = theirs
                                .diagnostics()
                                .reason()
                                .map(ToString::to_string)
                                .collect();
                            assert_eq!(reasons, expected, "{case}");
                            let errors: BTreeSet<String> =
                                ours.errors.iter().map(|e| e.policy_id.clone()).collect();
                            let expected_errors: BTreeSet<String> = theirs
                                .diagnostics()
                                .errors()
                                .map(
                                    |cedar_policy::AuthorizationError::PolicyEvaluationError(e)| {
                                        e.policy_id().to_string()
                                    },
                                )
                                .collect();
                            assert_eq!(errors, expected_errors, "{case}");
                            decided += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(decided, 216);
        // The guards did settle many of them (else this compared nothing).
        assert!(ruled_out_somewhere > 300, "{ruled_out_somewhere}");
    }
}
