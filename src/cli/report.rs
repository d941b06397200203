//! `tollgate report`: usage analytics from the decision log and the usage
//! streams, as an HTML page, JSON and CSV (docs/analytics.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::listing::{hint_text, list_all};
use super::{context_arg, FileArgs, ServerArgs};
use crate::api::{convert::parse_ref, pb};
use crate::report::{self, Format, HintQuery, Options};
use crate::store::redis_client::RedisSettings;

#[derive(Debug, Args)]
pub(super) struct ReportArgs {
    /// A decision-log file (`decision_log`); its rotated FILE.1 is read
    /// first when there. Repeat for more.
    #[arg(long = "decision-log", value_name = "FILE")]
    decision_logs: Vec<PathBuf>,
    /// Read decision records from this Redis Stream
    /// (`decision_log_redis_stream`, e.g. tollgate:decisions); needs
    /// --redis-url.
    #[arg(long, value_name = "KEY")]
    decision_stream: Option<String>,
    /// Redis, for --decision-stream and the tenants' usage streams
    /// (tollgate:{<tenant>}:usage). Without it no usage is read.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// A tenant whose usage stream is read (repeat for more) [default:
    /// every tenant with a usage stream, found with SCAN].
    #[arg(long = "tenant", value_name = "TENANT")]
    tenants: Vec<String>,
    /// Start of the window: a date (2026-11-01, UTC), an RFC 3339 time, or a
    /// duration before --until (7d, 24h).
    #[arg(long, value_name = "WHEN", default_value = "30d")]
    since: String,
    /// End of the window (exclusive): a date, an RFC 3339 time, or a
    /// duration before now [default: now].
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// The decision records' attribute naming an account's plan (a path of
    /// decision_log_attributes).
    #[arg(long, value_name = "PATH", default_value = "account.plan")]
    plan_attribute: String,
    /// Rows of the accounts that hit the paywall most.
    #[arg(long, value_name = "N", default_value_t = 20)]
    top: usize,
    /// What to write: html (report.html), json (<table>.json and
    /// summary.json), csv (<table>.csv); repeat or separate with commas.
    #[arg(long = "format", value_name = "FORMAT", value_delimiter = ',', default_value = "html", value_parser = ["html", "json", "csv"])]
    formats: Vec<String>,
    /// Directory the files are written to (created if missing).
    #[arg(long, value_name = "DIR", default_value = "report")]
    out: PathBuf,
    /// Name the offer that would unlock each of the top paywall rows: asks
    /// a listing of the policies and snapshots (--policies, --entitlements,
    /// --config), or of a running server (--remote, --http).
    #[arg(long)]
    hints: bool,
    /// With --hints: the context of the listings, as a JSON object (as for
    /// `check`), for records logged without theirs (decision_log_context
    /// off); `now` is the current time unless given.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    hint_context: String,
    /// No progress bar (one is drawn only on a terminal).
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    files: FileArgs,
    #[command(flatten)]
    server: ServerArgs,
}

/// A time argument: a date, an RFC 3339 time, or a duration before `from`.
fn when(text: &str, from_ms: i64, flag: &str) -> Result<i64, String> {
    if let Ok(seconds) = crate::license::parse_time(text) {
        return Ok(seconds.saturating_mul(1000));
    }
    crate::license::parse_duration(text)
        .map(|seconds| from_ms.saturating_sub(i64::try_from(seconds).unwrap_or(i64::MAX) * 1000))
        .map_err(|_| {
            format!("{flag} `{text}`: expected a date (2026-11-01), an RFC 3339 time or a duration (7d)")
        })
}

fn options(args: &ReportArgs) -> Result<Options, String> {
    let now = jiff::Timestamp::now().as_millisecond();
    let until_ms = match &args.until {
        Some(text) => when(text, now, "--until")?,
        None => now,
    };
    let since_ms = when(&args.since, until_ms, "--since")?;
    let formats = args
        .formats
        .iter()
        .map(|text| Format::parse(text).ok_or_else(|| format!("--format `{text}`")))
        .collect::<Result<Vec<_>, _>>()?;
    if args.top == 0 {
        return Err("--top must be at least 1".to_string());
    }
    Ok(Options {
        decision_logs: args.decision_logs.clone(),
        redis: args.redis_url.as_ref().map(|url| RedisSettings {
            urls: vec![url.clone()],
            cluster: false,
            username: None,
            password: None,
            tls_ca_file: None,
            timeout: Duration::from_secs(10),
        }),
        decision_stream: args.decision_stream.clone(),
        tenants: args.tenants.clone(),
        no_usage: args.redis_url.is_none(),
        since_ms,
        until_ms,
        plan_attribute: args.plan_attribute.clone(),
        top: args.top,
        formats,
        out: args.out.clone(),
        progress: !args.no_progress,
    })
}

/// The offer that would unlock a paywall row, from a listing of its
/// principal, action and feature type.
fn hint(args: &ReportArgs, query: &HintQuery) -> String {
    let request = || -> Result<pb::ListEntitlementsRequest, String> {
        let resource = parse_ref(&query.resource, None)?;
        let context = context_arg(query.context.as_deref().unwrap_or(&args.hint_context), true)?;
        Ok(pb::ListEntitlementsRequest {
            tenant: query.tenant.clone(),
            principal: Some(parse_ref(&query.principal, None)?),
            actions: vec![parse_ref(&query.action, Some("Action"))?],
            resource_types: vec![resource.r#type.clone()],
            context,
            decision: pb::Decision::Deny as i32,
            page_size: 1000,
            hints: true,
            ..pb::ListEntitlementsRequest::default()
        })
    };
    let request = match request() {
        Ok(request) => request,
        Err(problem) => return format!("(unavailable: {problem})"),
    };
    let resource = request.resource_types.first().cloned().unwrap_or_default();
    let id = parse_ref(&query.resource, None)
        .map(|r| r.id)
        .unwrap_or_default();
    match list_all(&args.files, &args.server, request) {
        Ok(listed) => listed
            .items
            .iter()
            .find(|item| {
                item.resource
                    .as_ref()
                    .is_some_and(|r| r.r#type == resource && r.id == id)
            })
            .map_or_else(
                || "(allowed now)".to_string(),
                |item| hint_text(item.hint.as_ref()),
            ),
        Err((_, message)) => format!("(unavailable: {message})"),
    }
}

pub(super) fn report(args: &ReportArgs) -> ExitCode {
    let options = match options(args) {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("error: {problem}");
            return ExitCode::from(2);
        }
    };
    let mut hints = |query: &HintQuery| hint(args, query);
    let result = report::run(
        &options,
        args.hints
            .then_some(&mut hints as &mut dyn FnMut(&HintQuery) -> String),
    );
    match result {
        Ok(summary) => {
            for example in &summary.unreadable_examples {
                eprintln!("warning: not a decision record: {example}");
            }
            eprintln!(
                "{} decision records and {} usage events ({} to {}) in {:.1} s, peak memory {:.0} MiB",
                summary.decision_records,
                summary.usage_events,
                summary.since,
                summary.until,
                summary.seconds,
                summary.peak_memory_mib
            );
            for file in &summary.files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(match error {
                report::ReportError::Options(_) => 2,
                report::ReportError::Redis(_) => 3,
                report::ReportError::Input(_) | report::ReportError::Output(_) => 1,
            })
        }
    }
}
