//! `tollgate entitlements`: what a principal may do, as a table (or JSON),
//! from the files or from a running server.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;

use super::{
    context_arg, grpc_client, grpc_failure, local_service, post_http, runtime, source_name,
    with_token, FileArgs, ServerArgs,
};
use crate::api::{self, convert::parse_ref, pb};

#[derive(Debug, Args)]
pub(super) struct EntitlementsArgs {
    #[command(flatten)]
    files: FileArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// Tenant id.
    #[arg(long)]
    tenant: String,
    /// Principal, as `Type:id` or Cedar syntax `Type::"id"`.
    #[arg(long, value_name = "REF")]
    principal: String,
    /// An action to list (repeat for more) [default: every action the
    /// principal may take].
    #[arg(long = "action", value_name = "REF")]
    actions: Vec<String>,
    /// A resource type to list, e.g. Feature (repeat for more) [default:
    /// every type the actions apply to].
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Context as a JSON object (as for `check`); `now` is the current time
    /// unless given.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    context: String,
    /// Only items with this decision.
    #[arg(long, value_name = "DECISION", default_value = "all", value_parser = ["all", "allow", "deny"])]
    decision: String,
    /// Leave out the upgrade hints.
    #[arg(long)]
    no_hints: bool,
    /// A what-if override, `Type:id.attribute=JSON`, e.g.
    /// `Account:hooli.plan="pro"` (repeat for more; JSON as in --context).
    #[arg(long = "what-if", value_name = "OVERRIDE")]
    what_if: Vec<String>,
    /// Print the listing as JSON (the proto's JSON mapping).
    #[arg(long)]
    json: bool,
}

/// A `--what-if` override: `Type:id.attribute=JSON`.
pub(super) fn parse_what_if(text: &str) -> Result<pb::AttributeOverride, String> {
    let (target, value) = text
        .split_once('=')
        .ok_or_else(|| format!("--what-if `{text}`: expected Type:id.attribute=JSON"))?;
    let (entity, attribute) = target
        .rsplit_once('.')
        .ok_or_else(|| format!("--what-if `{text}`: expected Type:id.attribute=JSON"))?;
    let entity = parse_ref(entity, None).map_err(|problem| format!("--what-if: {problem}"))?;
    let value: serde_json::Value = serde_json::from_str(value)
        .map_err(|error| format!("--what-if `{text}`: the value is not JSON: {error}"))?;
    let value = api::convert::json_to_value(&value)
        .map_err(|problem| format!("--what-if `{text}`: {problem}"))?;
    Ok(pb::AttributeOverride {
        entity: Some(entity),
        attribute: attribute.to_string(),
        value: Some(value),
    })
}

fn build_request(args: &EntitlementsArgs) -> Result<pb::ListEntitlementsRequest, String> {
    let context = context_arg(&args.context, true)?;
    Ok(pb::ListEntitlementsRequest {
        tenant: args.tenant.clone(),
        principal: Some(parse_ref(&args.principal, None).map_err(|p| format!("--principal: {p}"))?),
        actions: args
            .actions
            .iter()
            .map(|action| parse_ref(action, Some("Action")).map_err(|p| format!("--action: {p}")))
            .collect::<Result<_, _>>()?,
        resource_types: args.types.clone(),
        context,
        decision: match args.decision.as_str() {
            "allow" => pb::Decision::Allow,
            "deny" => pb::Decision::Deny,
            _ => pb::Decision::Unspecified,
        } as i32,
        page_size: 1000,
        page_token: String::new(),
        hints: !args.no_hints,
        requested: 0,
        max_staleness_ms: 0,
        what_if: args
            .what_if
            .iter()
            .map(|text| parse_what_if(text))
            .collect::<Result<_, _>>()?,
    })
}

/// Most pages the command follows before it stops.
const MAX_PAGES: usize = 1000;

pub(super) fn entitlements(args: &EntitlementsArgs) -> ExitCode {
    let request = match build_request(args) {
        Ok(request) => request,
        Err(problem) => {
            eprintln!("error: {problem}");
            return ExitCode::from(2);
        }
    };
    match list_all(&args.files, &args.server, request) {
        Ok(listed) => {
            if args.json {
                match serde_json::to_string_pretty(&listed) {
                    Ok(text) => println!("{text}"),
                    Err(error) => {
                        eprintln!("error: {error}");
                        return ExitCode::from(3);
                    }
                }
            } else {
                print!("{}", table(&listed));
            }
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// Every page of the listing, as one response.
pub(super) fn list_all(
    files: &FileArgs,
    server: &ServerArgs,
    mut request: pb::ListEntitlementsRequest,
) -> Result<pb::ListEntitlementsResponse, (u8, String)> {
    let runtime = runtime().map_err(|error| (3, error.to_string()))?;
    let local = match (&server.remote, &server.http, &server.token) {
        (None, None, Some(_)) => {
            return Err((
                2,
                "--token needs a server to verify it: --remote or --http".to_string(),
            ))
        }
        (None, None, None) => Some(local_service(files, &request.tenant)?),
        _ => None,
    };
    let mut client = None;
    let mut all: Option<pb::ListEntitlementsResponse> = None;
    for _ in 0..MAX_PAGES {
        let page = runtime.block_on(async {
            if let Some(service) = &local {
                return api::list_entitlements_with_token(
                    service,
                    &crate::decide::Caller::trusted("cli"),
                    None,
                    request.clone(),
                )
                .await
                .map_err(|error| (2, error.to_string()));
            }
            let token = server.token.as_deref();
            if let Some(url) = &server.http {
                return post_http(
                    url,
                    "/v1/entitlements",
                    token,
                    &request,
                    "a ListEntitlementsResponse",
                )
                .await;
            }
            if client.is_none() {
                let address = server.remote.as_deref().unwrap_or_default();
                client = Some(grpc_client(address).await?);
            }
            let Some(client) = client.as_mut() else {
                return Err((3, "no server to ask".to_string()));
            };
            client
                .list_entitlements(with_token(request.clone(), token)?)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| grpc_failure(&status))
        })?;
        let next = page.next_page_token.clone();
        match &mut all {
            None => all = Some(page),
            Some(all) => all.items.extend(page.items),
        }
        if next.is_empty() {
            break;
        }
        request.page_token = next;
    }
    let mut all = all.unwrap_or_default();
    all.next_page_token = String::new();
    Ok(all)
}

fn entity_text(reference: Option<&pb::EntityRef>) -> String {
    reference.map_or_else(String::new, |reference| {
        if reference.r#type == "Action" {
            reference.id.clone()
        } else {
            format!("{}:{}", reference.r#type, reference.id)
        }
    })
}

/// What unlocks a denied item, for people.
pub(super) fn hint_text(hint: Option<&pb::UpgradeHint>) -> String {
    match hint {
        None => String::new(),
        Some(hint) if hint.no_offer => "(no offer)".to_string(),
        Some(hint) => hint
            .unlocked_by
            .iter()
            .map(|offer| format!("{} ({})", offer.offer, offer.kind))
            .collect::<Vec<_>>()
            .join(" + "),
    }
}

/// The listing as a table: resource, action, allowed, reason, usage,
/// unlocked by.
pub(super) fn table(listed: &pb::ListEntitlementsResponse) -> String {
    let header = [
        "RESOURCE",
        "ACTION",
        "ALLOWED",
        "REASON",
        "USAGE",
        "UNLOCKED BY",
    ];
    let rows: Vec<[String; 6]> = listed
        .items
        .iter()
        .map(|item| {
            [
                entity_text(item.resource.as_ref()),
                entity_text(item.action.as_ref()),
                if item.decision == pb::Decision::Allow as i32 {
                    "yes".to_string()
                } else {
                    "no".to_string()
                },
                item.reasons
                    .iter()
                    .map(|reason| reason.code.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                item.usage.as_ref().map_or_else(String::new, |usage| {
                    format!("{}/{} {}", usage.used, usage.limit, usage.meter)
                }),
                hint_text(item.hint.as_ref()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, &header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    if let Some(freshness) = &listed.freshness {
        let _ = writeln!(
            out,
            "{} items; policy_version {}, snapshot version {} ({}){}",
            listed.items.len(),
            freshness.policy_version,
            freshness.snapshot_version,
            source_name(freshness.source),
            if listed.hypothetical {
                "; HYPOTHETICAL (what-if)"
            } else {
                ""
            }
        );
    }
    out
}
