//! `tollgate report`: usage analytics from what tollgate already writes.
//!
//! It reads decision records (decision-log files, rotated ones included, or
//! the decision Redis Stream) and the tenants' usage streams over a time
//! window, one record at a time, and tallies them into tables: feature
//! adoption by plan, paywall demand, the accounts that hit the paywall most
//! (with the offer that would unlock each), cap pressure, unused
//! entitlements, and daily trends. The tables are written as one
//! self-contained HTML page with inline SVG charts, and as JSON and CSV.
//!
//! Memory grows with the distinct accounts, principals, features and meters
//! seen, never with the number of records.

mod charts;
mod input;
mod output;
mod tally;

use std::path::PathBuf;
use std::time::Instant;

pub use input::{DecisionRecord, UsageEvent};
pub use output::{Cell, Table};
pub use tally::{HintQuery, Tables, Tally};

use crate::store::redis_client::RedisSettings;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// What to read, over which window, and what to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// Decision-log files; each one's rotated `<file>.1` is read first when
    /// it exists.
    pub decision_logs: Vec<PathBuf>,
    /// Redis, for the decision stream and the usage streams.
    pub redis: Option<RedisSettings>,
    /// The decision Redis Stream's key (`decision_log_redis_stream`).
    pub decision_stream: Option<String>,
    /// Tenants whose usage streams are read; empty: every tenant that has
    /// one (found with SCAN).
    pub tenants: Vec<String>,
    /// Read no usage streams.
    pub no_usage: bool,
    /// Start of the window, Unix ms (inclusive).
    pub since_ms: i64,
    /// End of the window, Unix ms (exclusive).
    pub until_ms: i64,
    /// The record attribute naming an account's plan
    /// (`decision_log_attributes`), e.g. `account.plan`.
    pub plan_attribute: String,
    /// Rows of the accounts that hit the paywall most.
    pub top: usize,
    /// What to write.
    pub formats: Vec<Format>,
    /// Where to write it.
    pub out: PathBuf,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
}

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `report.html`: one self-contained page.
    Html,
    /// `<table>.json` per table, and `summary.json`.
    Json,
    /// `<table>.csv` per table.
    Csv,
}

impl Format {
    /// Parses `html`, `json` or `csv`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "html" => Some(Self::Html),
            "json" => Some(Self::Json),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }
}

/// What a report read and wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Start of the window, RFC 3339.
    pub since: String,
    /// End of the window, RFC 3339.
    pub until: String,
    /// Where the decision records came from.
    pub decision_sources: Vec<String>,
    /// Decision records tallied.
    pub decision_records: u64,
    /// Records outside the window.
    pub outside_window: u64,
    /// What-if answers, left out (about snapshots that do not exist).
    pub what_if: u64,
    /// Records read twice from the stream (a batch sent again), left out.
    pub duplicates: u64,
    /// Lines that are not decision records.
    pub unreadable: u64,
    /// The first unreadable lines, `file:line: problem`.
    pub unreadable_examples: Vec<String>,
    /// Records without the plan attribute (their plan is `(unknown)`).
    pub without_plan: u64,
    /// Tenants whose usage streams were read.
    pub usage_tenants: Vec<String>,
    /// Usage events tallied.
    pub usage_events: u64,
    /// Usage events outside the window.
    pub usage_outside_window: u64,
    /// Usage entries that are not usage events.
    pub usage_unreadable: u64,
    /// Seconds spent.
    pub seconds: f64,
    /// The process's peak resident memory, MiB (Linux; 0 elsewhere).
    pub peak_memory_mib: f64,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A bad option.
    #[error("{0}")]
    Options(String),
    /// An input could not be read.
    #[error("{0}")]
    Input(String),
    /// Redis could not be reached or answered wrongly.
    #[error("{0}")]
    Redis(String),
    /// An output could not be written.
    #[error("{0}")]
    Output(String),
}

/// Makes the report: reads every input, tallies, asks `hints` for the
/// offers that would unlock the top paywall rows (when given), and writes
/// the formats asked for.
pub fn run(
    options: &Options,
    hints: Option<&mut dyn FnMut(&HintQuery) -> String>,
) -> Result<Summary, ReportError> {
    let started = Instant::now();
    if options.since_ms >= options.until_ms {
        return Err(ReportError::Options(
            "--since must be before --until".to_string(),
        ));
    }
    if options.decision_logs.is_empty() && options.decision_stream.is_none() {
        return Err(ReportError::Options(
            "no decision records to read: give --decision-log FILE or --decision-stream KEY"
                .to_string(),
        ));
    }
    if options.decision_stream.is_some() && options.redis.is_none() {
        return Err(ReportError::Options(
            "--decision-stream needs --redis-url".to_string(),
        ));
    }
    let mut summary = Summary {
        since: input::rfc3339(options.since_ms),
        until: input::rfc3339(options.until_ms),
        ..Summary::default()
    };
    let mut tally = Tally::new(
        options.plan_attribute.clone(),
        options.since_ms,
        options.until_ms,
    );
    let progress = input::Progress::new(options.progress);
    input::read_files(&options.decision_logs, &mut tally, &mut summary, &progress)?;
    if let Some(redis) = &options.redis {
        input::read_redis(options, redis, &mut tally, &mut summary, &progress)?;
    }
    progress.finish();
    let mut tables = tally.finish(options.top);
    if let Some(hints) = hints {
        tables.fill_hints(hints);
    }
    summary.decision_records = tally.records();
    summary.without_plan = tally.without_plan();
    summary.usage_events = tally.usage_events();
    std::fs::create_dir_all(&options.out).map_err(|error| {
        ReportError::Output(format!("--out {}: {error}", options.out.display()))
    })?;
    output::write(options, &tables, &mut summary)?;
    // Measured once every table and page is written; summary.json, last,
    // carries them.
    summary.seconds = started.elapsed().as_secs_f64();
    summary.peak_memory_mib = input::peak_memory_mib();
    output::write_summary(options, &mut summary)?;
    Ok(summary)
}
