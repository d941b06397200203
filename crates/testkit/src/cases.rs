//! Requests every front door must refuse, with the start of the message the
//! decision service refuses them with: one table, sent through gRPC and
//! through the HTTP front door (`tests/front_doors.rs`), over the example
//! data.

use tollgate::api::pb;

use crate::request::{check_str, datetime, entity_ref, entity_value, extension, long, set, string};

/// A request that must be refused.
pub struct BadCheck {
    /// What is wrong, for failure messages.
    pub name: &'static str,
    /// The request.
    pub request: pb::CheckRequest,
    /// How the refusal's message starts.
    pub message: &'static str,
}

/// The valid request every bad one is made from.
pub fn valid_check() -> pb::CheckRequest {
    check_str("acme User:bob use Feature:pdf-export")
}

fn bad(
    name: &'static str,
    message: &'static str,
    change: impl FnOnce(&mut pb::CheckRequest),
) -> BadCheck {
    let mut request = valid_check();
    change(&mut request);
    BadCheck {
        name,
        request,
        message,
    }
}

/// Checks refused `INVALID_ARGUMENT` (each naming its field).
pub fn bad_checks() -> Vec<BadCheck> {
    let longest = "b".repeat(tollgate_engine::MAX_ID_BYTES);
    vec![
        bad("empty tenant", "tenant: must not be empty", |r| {
            r.tenant = String::new();
        }),
        bad("tenant with braces", "tenant: only letters, digits", |r| {
            r.tenant = "a{b}".to_string();
        }),
        bad("no principal", "principal: required", |r| {
            r.principal = None
        }),
        bad(
            "empty principal id",
            "principal.id: must not be empty",
            |r| {
                r.principal = Some(entity_ref("User", ""));
            },
        ),
        bad(
            "empty resource type",
            "resource.type: must not be empty",
            |r| {
                r.resource = Some(entity_ref("", "pdf-export"));
            },
        ),
        bad(
            "principal id too long",
            "principal.id: longer than 1024 bytes",
            |r| {
                r.principal = Some(entity_ref("User", &format!("{longest}b")));
            },
        ),
        bad(
            "meter too long",
            "consume.meter: longer than 1024 bytes",
            |r| {
                r.consume = Some(pb::Consume {
                    meter: format!("{longest}m"),
                    amount: 1,
                    idempotency_key: "k".to_string(),
                });
            },
        ),
        bad(
            "undeclared principal type",
            "principal.type: entity type `Usr` is not declared in the schema",
            |r| r.principal = Some(entity_ref("Usr", "bob")),
        ),
        bad(
            "undeclared action",
            "action: action `Action::\"fly\"` is not declared in the schema",
            |r| r.action = Some(entity_ref("Action", "fly")),
        ),
        bad("no action", "action: required", |r| r.action = None),
        bad(
            "resource type not valid for the action",
            "resource.type: resource type `Account` is not valid for `Action::\"use\"`",
            |r| r.resource = Some(entity_ref("Account", "acme")),
        ),
        bad(
            "context attribute of the wrong type",
            "context.country: expected String, got Long",
            |r| {
                r.context.insert("country".to_string(), long(76));
            },
        ),
        bad(
            "required context attribute missing",
            "context.country: required attribute is missing",
            |r| {
                r.context.remove("country");
            },
        ),
        bad(
            "undeclared context attribute",
            "context.shoe_size: attribute is not declared in the schema",
            |r| {
                r.context.insert("shoe_size".to_string(), long(44));
            },
        ),
        bad(
            "extension value that does not parse",
            "context.now: ",
            |r| {
                r.context.insert("now".to_string(), datetime("garbage"));
            },
        ),
        bad(
            "unknown extension function",
            "context.now.fn: unknown extension function `moment`",
            |r| {
                r.context
                    .insert("now".to_string(), extension("moment", "2026-01-01"));
            },
        ),
        bad(
            "nested value of the wrong type",
            "context.country: expected String",
            |r| {
                r.context
                    .insert("country".to_string(), set(vec![string("BR"), long(1)]));
            },
        ),
        bad(
            "request-scoped entity clashing with the snapshot",
            "entities: duplicate entity entry `User::\"bob\"`",
            |r| {
                r.entities.push(pb::Entity {
                    uid: Some(entity_ref("User", "bob")),
                    attrs: [("account".to_string(), entity_value("Account", "acme"))].into(),
                    parents: vec![entity_ref("Role", "admin")],
                    tags: Default::default(),
                });
            },
        ),
        bad(
            "request-scoped entity of an undeclared type",
            "entities[0].uid.type: entity type `Robot` is not declared in the schema",
            |r| {
                r.entities.push(pb::Entity {
                    uid: Some(entity_ref("Robot", "r2")),
                    ..pb::Entity::default()
                });
            },
        ),
    ]
}

/// Requests over a limit, refused `RESOURCE_EXHAUSTED` before they are
/// decoded.
pub fn oversized_checks() -> Vec<BadCheck> {
    vec![
        bad(
            "too many request-scoped entities",
            "entities: 65 request-scoped entities exceed the limit of 64",
            |r| {
                r.entities = (0..65)
                    .map(|i| pb::Entity {
                        uid: Some(entity_ref("User", &format!("guest-{i}"))),
                        ..pb::Entity::default()
                    })
                    .collect();
            },
        ),
        bad(
            "too many values",
            "request: 20001 values exceed the limit of 20000 per call",
            |r| {
                r.context.insert(
                    "bulk".to_string(),
                    set((0..20_005).map(|i| long(i % 7)).collect()),
                );
            },
        ),
    ]
}

/// Batches refused, with the start of their messages.
pub fn bad_batches() -> Vec<(&'static str, pb::CheckBatchRequest, &'static str)> {
    let good = valid_check;
    let with = |index: usize, count: usize, change: fn(&mut pb::CheckRequest)| {
        let mut checks = vec![good(); count];
        change(&mut checks[index]);
        pb::CheckBatchRequest { checks }
    };
    vec![
        (
            "a check of an undeclared principal type",
            with(1, 3, |r| r.principal = Some(entity_ref("Usr", "bob"))),
            "checks[1].principal.type: entity type `Usr` is not declared in the schema",
        ),
        (
            "a check missing a context attribute",
            with(3, 4, |r| {
                r.context.remove("now");
            }),
            "checks[3].context.now: required attribute is missing",
        ),
        (
            "a check with an empty tenant",
            with(0, 1, |r| r.tenant = String::new()),
            "checks[0].tenant: must not be empty",
        ),
        (
            "over the batch limit",
            pb::CheckBatchRequest {
                checks: vec![good(); 101],
            },
            "batch of 101 checks exceeds the limit of 100",
        ),
        (
            "too many explanations",
            pb::CheckBatchRequest {
                checks: vec![
                    pb::CheckRequest {
                        explain: true,
                        ..good()
                    };
                    11
                ],
            },
            "11 checks of the batch ask for an explanation; a batch may explain at most 10",
        ),
    ]
}
