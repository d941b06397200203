//! Reading the inputs: decision records from files and from the decision
//! stream, and usage events from the tenants' usage streams, one at a time.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use redis::Value;

use super::{Options, ReportError, Summary, Tally};
use crate::store::redis_client::{redact_url, RedisConn, RedisSettings};

/// A stream entry: its id and fields.
type Entry = (String, HashMap<String, String>);

/// Entries read from a stream per XRANGE.
const STREAM_PAGE: usize = 2000;

/// Decision ids remembered to drop a record the stream holds twice (a batch
/// sent again after a lost reply): more than one batch's worth.
const RECENT_IDS: usize = 4096;

/// Unreadable lines quoted in the summary.
const EXAMPLES: usize = 5;

/// `{"type": ..., "id": ...}` of a record.
#[derive(Debug, serde::Deserialize)]
pub struct RecordRef<'a> {
    /// The entity type.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// The entity id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
}

/// What a report reads of a decision-log record.
#[derive(Debug, serde::Deserialize)]
pub struct DecisionRecord<'a> {
    /// The decision's id.
    #[serde(borrow)]
    pub decision_id: Cow<'a, str>,
    /// When, Unix ms.
    pub time_unix_ms: i64,
    /// The tenant (the account).
    #[serde(borrow)]
    pub tenant: Cow<'a, str>,
    /// Who asked.
    #[serde(borrow, default)]
    pub principal: Option<RecordRef<'a>>,
    /// What for.
    #[serde(borrow, default)]
    pub action: Option<RecordRef<'a>>,
    /// On what.
    #[serde(borrow, default)]
    pub resource: Option<RecordRef<'a>>,
    /// `ALLOW` or `DENY`.
    #[serde(borrow)]
    pub decision: Cow<'a, str>,
    /// The reasons' codes.
    #[serde(borrow, default)]
    pub reasons: Vec<Cow<'a, str>>,
    /// A what-if answer.
    #[serde(default)]
    pub what_if: bool,
    /// The principal's configured attributes at decision time.
    #[serde(borrow, default)]
    pub attributes: HashMap<Cow<'a, str>, serde_json::Value>,
    /// The request's context, when the log keeps it (as written).
    #[serde(borrow, default)]
    pub context: Option<&'a serde_json::value::RawValue>,
}

/// What a report reads of a usage stream entry.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    /// `consume`, `report_counter` or `report_gauge`.
    pub kind: String,
    /// The meter.
    pub meter: String,
    /// Units (a gauge's value).
    pub amount: i64,
    /// When, Unix ms.
    pub time_ms: i64,
    /// The count after it (`None` for a consumption granted from a lease).
    pub used: Option<i64>,
    /// The meter's limit then (`None` from before events carried it).
    pub limit: Option<i64>,
    /// The counter's window (`2026-11`, `2026-11-27`, `all`).
    pub window: String,
}

impl UsageEvent {
    /// Reads an entry's fields.
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Self, String> {
        let text = |name: &str| {
            fields
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no `{name}`"))
        };
        let number = |name: &str| -> Result<Option<i64>, String> {
            match fields.get(name).map(String::as_str) {
                None | Some("") => Ok(None),
                Some(value) => value
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("`{name}` is not a number: {value:?}")),
            }
        };
        Ok(Self {
            kind: text("kind")?,
            meter: text("meter")?,
            amount: number("amount")?.ok_or("no `amount`")?,
            time_ms: number("time_ms")?.ok_or("no `time_ms`")?,
            used: number("used")?,
            limit: number("limit")?,
            window: fields
                .get("window")
                .cloned()
                .unwrap_or_else(|| "all".to_string()),
        })
    }
}

/// A time as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// The UTC day of a time, `YYYY-MM-DD`.
pub fn day(ms: i64) -> String {
    let mut text = rfc3339(ms.div_euclid(super::DAY_MS) * super::DAY_MS);
    text.truncate(10);
    text
}

/// A progress bar on standard error, drawn only on a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar (hidden when `show` is false or stderr is no terminal).
    pub fn new(show: bool) -> Self {
        use std::io::IsTerminal as _;
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {human_pos} records, {per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        Self { bar }
    }

    fn message(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }

    fn advance(&self, records: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(records);
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Reads every decision-log file (its rotated `.1` first, when there).
pub fn read_files(
    files: &[PathBuf],
    tally: &mut Tally,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), ReportError> {
    for file in files {
        let mut rotated = file.as_os_str().to_owned();
        rotated.push(".1");
        let rotated = PathBuf::from(rotated);
        if rotated.is_file() {
            read_file(&rotated, tally, summary, progress)?;
        }
        read_file(file, tally, summary, progress)?;
    }
    Ok(())
}

fn read_file(
    path: &Path,
    tally: &mut Tally,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), ReportError> {
    let name = path.display().to_string();
    let file = File::open(path)
        .map_err(|error| ReportError::Input(format!("decision log {name}: {error}")))?;
    summary.decision_sources.push(name.clone());
    progress.message(name.clone());
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|error| ReportError::Input(format!("decision log {name}: {error}")))?;
        if read == 0 {
            break;
        }
        number += 1;
        let text = line.trim_end();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<DecisionRecord<'_>>(text) {
            Ok(record) => count(tally.record(&record), summary),
            Err(error) => unreadable(summary, format!("{name}:{number}: {error}")),
        }
        if number.is_multiple_of(4096) {
            progress.advance(4096);
        }
    }
    progress.advance(number % 4096);
    Ok(())
}

fn unreadable(summary: &mut Summary, example: String) {
    summary.unreadable += 1;
    if summary.unreadable_examples.len() < EXAMPLES {
        summary.unreadable_examples.push(example);
    }
}

/// What the tally did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Tallied.
    Tallied,
    /// Outside the window.
    Outside,
    /// A what-if answer, left out.
    WhatIf,
}

fn count(counted: Counted, summary: &mut Summary) {
    match counted {
        Counted::Tallied => {}
        Counted::Outside => summary.outside_window += 1,
        Counted::WhatIf => summary.what_if += 1,
    }
}

/// Reads the decision stream and the usage streams.
pub fn read_redis(
    options: &Options,
    settings: &RedisSettings,
    tally: &mut Tally,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), ReportError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ReportError::Redis(error.to_string()))?;
    runtime.block_on(async {
        let conn = RedisConn::connect(settings).await.map_err(|error| {
            ReportError::Redis(format!(
                "--redis-url {}: {error}",
                redact_url(&settings.urls.join(","))
            ))
        })?;
        if let Some(key) = &options.decision_stream {
            read_decision_stream(&conn, key, tally, summary, progress).await?;
        }
        if options.no_usage {
            return Ok(());
        }
        let tenants = if options.tenants.is_empty() {
            usage_tenants(&conn).await?
        } else {
            options.tenants.clone()
        };
        for tenant in tenants {
            read_usage_stream(&conn, &tenant, tally, summary, progress).await?;
            summary.usage_tenants.push(tenant);
        }
        Ok(())
    })
}

/// One page of a stream: each entry's id and fields.
async fn stream_page(
    conn: &RedisConn,
    key: &str,
    after: Option<&str>,
) -> Result<Vec<Entry>, ReportError> {
    let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
    let reply: Value = conn
        .query(
            redis::cmd("XRANGE")
                .arg(key)
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(STREAM_PAGE),
        )
        .await
        .map_err(|error| ReportError::Redis(format!("XRANGE {key}: {error}")))?;
    parse_entries(&reply).map_err(|problem| ReportError::Redis(format!("XRANGE {key}: {problem}")))
}

fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(|e| e.to_string()),
        Value::SimpleString(text) => Ok(text.clone()),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

/// XRANGE's reply: `[[id, [field, value, ...]], ...]`.
fn parse_entries(reply: &Value) -> Result<Vec<Entry>, String> {
    let Value::Array(entries) = reply else {
        return Err(format!("expected entries, got {reply:?}"));
    };
    entries
        .iter()
        .map(|entry| {
            let Value::Array(parts) = entry else {
                return Err(format!("expected an entry, got {entry:?}"));
            };
            let [id, Value::Array(fields)] = parts.as_slice() else {
                return Err(format!("expected an id and fields, got {entry:?}"));
            };
            let mut map = HashMap::with_capacity(fields.len() / 2);
            for pair in fields.chunks(2) {
                if let [field, value] = pair {
                    map.insert(text(field)?, text(value)?);
                }
            }
            Ok((text(id)?, map))
        })
        .collect()
}

async fn read_decision_stream(
    conn: &RedisConn,
    key: &str,
    tally: &mut Tally,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), ReportError> {
    summary.decision_sources.push(format!("redis stream {key}"));
    progress.message(format!("stream {key}"));
    let mut recent: VecDeque<String> = VecDeque::with_capacity(RECENT_IDS);
    let mut seen: HashSet<String> = HashSet::with_capacity(RECENT_IDS);
    let mut after: Option<String> = None;
    loop {
        let page = stream_page(conn, key, after.as_deref()).await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (id, fields) in &page {
            let Some(line) = fields.get("record") else {
                unreadable(summary, format!("{key} {id}: no `record` field"));
                continue;
            };
            match serde_json::from_str::<DecisionRecord<'_>>(line) {
                Ok(record) => {
                    if seen.contains(record.decision_id.as_ref()) {
                        summary.duplicates += 1;
                        continue;
                    }
                    if recent.len() == RECENT_IDS {
                        if let Some(old) = recent.pop_front() {
                            seen.remove(&old);
                        }
                    }
                    recent.push_back(record.decision_id.to_string());
                    seen.insert(record.decision_id.to_string());
                    count(tally.record(&record), summary);
                }
                Err(error) => unreadable(summary, format!("{key} {id}: {error}")),
            }
        }
        progress.advance(page.len() as u64);
        if page.len() < STREAM_PAGE {
            break;
        }
    }
    Ok(())
}

/// Tenants with a usage stream (`tollgate:{<tenant>}:usage`), sorted.
async fn usage_tenants(conn: &RedisConn) -> Result<Vec<String>, ReportError> {
    let mut tenants = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let (next, keys): (String, Vec<String>) = conn
            .query(
                redis::cmd("SCAN")
                    .arg(&cursor)
                    .arg("MATCH")
                    .arg("tollgate:{*}:usage")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("TYPE")
                    .arg("stream"),
            )
            .await
            .map_err(|error| ReportError::Redis(format!("SCAN: {error}")))?;
        for key in keys {
            if let Some(tenant) = key
                .strip_prefix("tollgate:{")
                .and_then(|rest| rest.strip_suffix("}:usage"))
            {
                tenants.push(tenant.to_string());
            }
        }
        if next == "0" {
            break;
        }
        cursor = next;
    }
    tenants.sort();
    tenants.dedup();
    Ok(tenants)
}

async fn read_usage_stream(
    conn: &RedisConn,
    tenant: &str,
    tally: &mut Tally,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<(), ReportError> {
    let key = crate::store::redis_client::keys::stream_key(tenant);
    progress.message(format!("usage of {tenant}"));
    let mut after: Option<String> = None;
    loop {
        let page = stream_page(conn, &key, after.as_deref()).await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (_, fields) in &page {
            match UsageEvent::from_fields(fields) {
                Ok(event) => {
                    if !tally.usage(tenant, &event) {
                        summary.usage_outside_window += 1;
                    }
                }
                Err(_) => summary.usage_unreadable += 1,
            }
        }
        progress.advance(page.len() as u64);
        if page.len() < STREAM_PAGE {
            break;
        }
    }
    Ok(())
}

/// The process's peak resident memory in MiB (`VmHWM`; 0 where unknown).
pub fn peak_memory_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmHWM:")
                    .and_then(|rest| rest.trim().strip_suffix("kB"))
                    .and_then(|kb| kb.trim().parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_read_as_the_log_writes_it() {
        let line = r#"{"decision_id":"d1","time_unix_ms":1764547200000,"caller":"local","front_door":"grpc","tenant":"acme","principal":{"type":"User","id":"al\"ice"},"action":{"type":"Action","id":"use"},"resource":{"type":"Feature","id":"pdf-export"},"decision":"DENY","reasons":["tier_too_low"],"policies":["p1"],"policy_version":"v","snapshot_version":3,"latency_us":12,"context":{"country":"BR"},"attributes":{"account.plan":"free"}}"#;
        let record: DecisionRecord<'_> = serde_json::from_str(line).unwrap();
        assert_eq!(record.tenant, "acme");
        assert_eq!(record.principal.unwrap().id, "al\"ice");
        assert_eq!(record.reasons, vec!["tier_too_low"]);
        assert_eq!(record.attributes["account.plan"], "free");
        assert!(!record.what_if);
    }

    #[test]
    fn usage_fields_are_read_and_checked() {
        let fields: HashMap<String, String> = [
            ("kind", "consume"),
            ("meter", "api-calls"),
            ("amount", "3"),
            ("time_ms", "1764547200000"),
            ("used", ""),
            ("limit", "100"),
            ("window", "2025-12"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let event = UsageEvent::from_fields(&fields).unwrap();
        assert_eq!(
            (event.amount, event.used, event.limit),
            (3, None, Some(100))
        );
        let mut bad = fields.clone();
        bad.insert("amount".to_string(), "x".to_string());
        assert_eq!(
            UsageEvent::from_fields(&bad).unwrap_err(),
            "`amount` is not a number: \"x\""
        );
    }

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day(1_764_547_200_000 + 3_600_000), "2025-12-01");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
