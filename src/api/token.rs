//! End users' verified JWTs applied to a check, for every front door: the
//! token's tenant and principal become the check's (a request that names
//! others is refused), and its configured claims the context record
//! `token`. A check decided with a token is never decided on claims that
//! were not verified: a refused token refuses the call (`UNAUTHENTICATED`).

use std::collections::HashMap;

use super::pb;
use crate::decide;
use crate::jwt::VerifiedToken;

/// The context record a verified token's claims go to.
pub const TOKEN_RECORD: &str = "token";

fn invalid(field: String, problem: String) -> decide::Error {
    decide::Error::InvalidArgument(tollgate_engine::RequestError::new(field, problem))
}

/// Applies `token` to `check` (`prefix` names the check in errors, e.g.
/// `checks[2].`).
pub fn apply(
    token: &VerifiedToken,
    check: &mut pb::CheckRequest,
    prefix: &str,
) -> Result<(), decide::Error> {
    if let Some(tenant) = &token.tenant {
        if check.tenant.is_empty() {
            check.tenant.clone_from(tenant);
        } else if &check.tenant != tenant {
            return Err(invalid(
                format!("{prefix}tenant"),
                format!(
                    "`{}` is not the tenant of the request's token (`{tenant}`)",
                    check.tenant
                ),
            ));
        }
    }
    if let Some((kind, id)) = &token.principal {
        match &check.principal {
            None => {
                check.principal = Some(pb::EntityRef {
                    r#type: kind.clone(),
                    id: id.clone(),
                });
            }
            Some(principal) if principal.id.is_empty() && principal.r#type.is_empty() => {
                check.principal = Some(pb::EntityRef {
                    r#type: kind.clone(),
                    id: id.clone(),
                });
            }
            Some(principal) if &principal.r#type != kind || &principal.id != id => {
                return Err(invalid(
                    format!("{prefix}principal"),
                    format!(
                        "`{}::{:?}` is not the principal of the request's token (`{kind}::{id:?}`)",
                        principal.r#type, principal.id
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if !token.context.is_empty() {
        if check.context.contains_key(TOKEN_RECORD) {
            return Err(invalid(
                format!("{prefix}context.{TOKEN_RECORD}"),
                "is where the verified token's claims go; the request may not set it".to_string(),
            ));
        }
        let mut values = HashMap::with_capacity(token.context.len());
        for (claim, value) in &token.context {
            let value = serde_json::from_value::<pb::Value>(value.clone()).map_err(|error| {
                invalid(
                    format!("{prefix}context.{TOKEN_RECORD}.{claim}"),
                    format!("the claim is not a Cedar value: {error}"),
                )
            })?;
            values.insert(claim.clone(), value);
        }
        check.context.insert(
            TOKEN_RECORD.to_string(),
            pb::Value {
                kind: Some(pb::value::Kind::Record(pb::ValueRecord { values })),
            },
        );
    }
    Ok(())
}
