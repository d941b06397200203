//! A direct check that a request's context has the type the schema declares
//! for its action.
//!
//! Cedar's request validation turns the context into restricted expressions
//! twice (once to look for entity references, once to type it) before it
//! reads a single attribute; on a `Check` that is more work than most
//! decisions. [`fits`] reads the values as they are. It answers `true` only
//! when Cedar's validation would accept the context, and `false` when it
//! would not or when the context holds what it leaves to Cedar (entity
//! references, which Cedar also checks against the schema's entity types and
//! enumerations). A `false` sends the request through Cedar's validation,
//! which then accepts it or says what is wrong.

use std::collections::BTreeMap;

use cedar_policy_core::ast::{Literal, Value, ValueKind};
use cedar_policy_core::validator::types::{Attributes, BoolType, OpenTag, Type};
use smol_str::SmolStr;

/// Whether a context (a record's attributes) has `expected`, the context
/// type of an action, for certain.
pub(super) fn context_fits(expected: &Type, context: &BTreeMap<SmolStr, Value>) -> bool {
    match expected {
        Type::Record {
            attrs,
            open_attributes,
        } => record_fits(attrs, *open_attributes, context),
        _ => false,
    }
}

fn record_fits(attrs: &Attributes, open: OpenTag, record: &BTreeMap<SmolStr, Value>) -> bool {
    let given_fit = record
        .iter()
        .all(|(name, item)| match attrs.get_attr(name) {
            Some(declared) => fits(&declared.attr_type, item),
            None => open == OpenTag::OpenAttributes,
        });
    given_fit
        && attrs
            .iter()
            .all(|(name, declared)| !declared.is_required || record.contains_key(name))
}

/// Whether `value` has `expected` for certain, as Cedar's validation types
/// it (see the module documentation).
fn fits(expected: &Type, value: &Value) -> bool {
    match (expected, value.value_kind()) {
        (Type::Bool(kind), ValueKind::Lit(Literal::Bool(b))) => match kind {
            BoolType::AnyBool => true,
            BoolType::True => *b,
            BoolType::False => !*b,
        },
        (Type::Long, ValueKind::Lit(Literal::Long(_)))
        | (Type::String, ValueKind::Lit(Literal::String(_)))
        | (Type::Set { element_type: None }, ValueKind::Set(_)) => true,
        (
            Type::Set {
                element_type: Some(element),
            },
            ValueKind::Set(set),
        ) => set.iter().all(|item| fits(element, item)),
        (
            Type::Record {
                attrs,
                open_attributes,
            },
            ValueKind::Record(record),
        ) => record_fits(attrs, *open_attributes, record),
        (Type::ExtensionType { name }, ValueKind::ExtensionValue(extension)) => {
            extension.typename() == *name
        }
        // Entity references are Cedar's to check; nothing else fits.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicySnapshot;
    use cedar_policy_core::ast::{EntityUID, Request, RequestSchemaAllPass};
    use cedar_policy_core::extensions::Extensions;
    use cedar_policy_core::validator::ValidatorSchema;

    const SCHEMA: &str = r#"
        entity User;
        entity Team enum ["a", "b"];
        type Inner = { n: Long, s?: String };
        action go appliesTo {
            principal: User,
            resource: User,
            context: {
                flag: Bool,
                n: Long,
                s?: String,
                tags?: Set<String>,
                nums?: Set<Long>,
                inner?: Inner,
                at?: datetime,
                price?: decimal,
                addr?: ipaddr,
                span?: duration,
                who?: User,
                team?: Team,
            }
        };
    "#;

    /// Values of every kind, right and wrong for each attribute above.
    const CANDIDATES: &[&str] = &[
        "true",
        "false",
        "1",
        "-5",
        r#""x""#,
        "[]",
        r#"["a", "b"]"#,
        "[1, 2]",
        r#"[1, "a"]"#,
        "[[1]]",
        "{}",
        "{n: 1}",
        r#"{n: 1, s: "x"}"#,
        r#"{n: "1"}"#,
        "{n: 1, z: 2}",
        r#"{s: "x"}"#,
        r#"datetime("2026-01-01")"#,
        r#"decimal("1.5")"#,
        r#"ip("10.0.0.1")"#,
        r#"duration("1h")"#,
        r#"User::"a""#,
        r#"Team::"a""#,
        r#"Team::"c""#,
        r#"[User::"a"]"#,
        r#"{n: 1, s: User::"a"}"#,
    ];

    fn uid(text: &str) -> EntityUID {
        text.parse().unwrap()
    }

    /// The context Cedar builds from `{pairs}`.
    fn context(pairs: &[(&str, &str)]) -> BTreeMap<SmolStr, Value> {
        let pairs = pairs.iter().map(|(name, text)| {
            let expression: cedar_policy::RestrictedExpression = text.parse().unwrap();
            ((*name).to_string(), expression)
        });
        let context = cedar_policy::Context::from_pairs(pairs).unwrap();
        let core: &cedar_policy_core::ast::Context = context.as_ref();
        match core {
            cedar_policy_core::ast::Context::Value(values) => BTreeMap::clone(values),
            other => panic!("not a value: {other:?}"),
        }
    }

    fn cedar_accepts(schema: &ValidatorSchema, values: &BTreeMap<SmolStr, Value>) -> bool {
        Request::new(
            (uid(r#"User::"p""#), None),
            (uid(r#"Action::"go""#), None),
            (uid(r#"User::"r""#), None),
            cedar_policy_core::ast::Context::Value(std::sync::Arc::new(values.clone())),
            Some(schema),
            Extensions::all_available(),
        )
        .is_ok()
    }

    #[test]
    fn a_context_fits_only_when_cedar_accepts_it_and_every_one_without_entities_that_it_accepts() {
        let policies =
            PolicySnapshot::from_sources("schema.cedarschema", SCHEMA, &[]).expect("schema loads");
        let schema: &ValidatorSchema = policies.schema.as_ref();
        let expected = schema
            .get_action_id(&uid(r#"Action::"go""#))
            .and_then(|action| action.context_type())
            .unwrap();
        let names = [
            "flag", "n", "s", "tags", "nums", "inner", "at", "price", "addr", "span", "who",
            "team", "extra",
        ];
        let mut contexts: Vec<Vec<(&str, &str)>> = vec![
            vec![("flag", "true"), ("n", "1")],
            vec![("flag", "true")],
            vec![("n", "1")],
            vec![],
        ];
        for name in names {
            for candidate in CANDIDATES {
                let mut pairs = vec![("flag", "true"), ("n", "1")];
                pairs.retain(|(given, _)| *given != name);
                pairs.push((name, candidate));
                contexts.push(pairs);
            }
        }
        let (mut fast, mut accepted, mut refused) = (0, 0, 0);
        for pairs in &contexts {
            let values = context(pairs);
            let cedar = cedar_accepts(schema, &values);
            let ours = context_fits(expected, &values);
            let names_entities = pairs.iter().any(|(_, text)| text.contains("::"));
            assert!(!ours || cedar, "{pairs:?} fits, but Cedar refuses it");
            assert!(
                !cedar || names_entities || ours,
                "{pairs:?}: Cedar accepts it, but it does not fit"
            );
            fast += usize::from(ours);
            accepted += usize::from(cedar);
            refused += usize::from(!cedar);
        }
        // Every kind of outcome was exercised.
        // The base context, and the right values of each attribute but the
        // entity-typed ones: flag 2, n 2, s 1, tags 2, nums 2, inner 2 and
        // one of each extension type.
        assert_eq!(fast, 16);
        assert!(accepted > fast, "no accepted context with entities");
        assert!(refused >= 200, "only {refused} contexts refused");
        // The request built without the schema is the same request.
        let values = context(&[("flag", "true"), ("n", "1")]);
        let plain = Request::new(
            (uid(r#"User::"p""#), None),
            (uid(r#"Action::"go""#), None),
            (uid(r#"User::"r""#), None),
            cedar_policy_core::ast::Context::Value(std::sync::Arc::new(values)),
            None::<&RequestSchemaAllPass>,
            Extensions::all_available(),
        );
        assert!(plain.is_ok());
    }
}
