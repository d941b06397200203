//! The tallies a report keeps while it reads, and the tables made of them.
//!
//! Names (accounts, plans, principals, features, codes, meters) are
//! interned once; every tally is keyed by their numbers.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::input::{day, rfc3339, Counted, DecisionRecord, RecordRef, UsageEvent};
use super::output::{Cell, Table};
use super::DAY_MS;

/// The plan of a record without the plan attribute.
pub const UNKNOWN_PLAN: &str = "(unknown)";

/// Names, numbered in the order first seen.
#[derive(Debug, Default)]
struct Names {
    numbers: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Names {
    fn number(&mut self, name: &str) -> u32 {
        if let Some(number) = self.numbers.get(name) {
            return *number;
        }
        let number = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.into());
        self.numbers.insert(name.into(), number);
        number
    }

    fn name(&self, number: u32) -> &str {
        self.names.get(number as usize).map_or("", |name| name)
    }
}

/// One day's decisions and consumption.
#[derive(Debug, Default, Clone)]
struct Day {
    decisions: u64,
    allowed: u64,
    denied: u64,
    consumed: i64,
    denials_by_code: HashMap<u32, u64>,
}

/// The accounts that hit the paywall most: one account, plan, feature and
/// code.
#[derive(Debug, Clone)]
struct Hits {
    denials: u64,
    principal: u32,
    action: u32,
    last_ms: i64,
    /// The last denied request's context, when the log kept it.
    context: Option<Box<str>>,
}

/// A meter's window of one account.
#[derive(Debug, Clone)]
struct MeterWindow {
    limit: Option<i64>,
    /// The highest count seen: `used` of the events, or the units counted
    /// in the window when higher (lease events carry no count).
    peak: i64,
    /// Units counted in the report's window (counters: consumed and
    /// reported; a gauge: its last value).
    counted: i64,
    first_ms: i64,
    last_ms: i64,
    /// When the count first reached 50, 80 and 100% of the limit.
    passed: [Option<i64>; 3],
    gauge: bool,
}

/// (account, plan, feature, code).
type HitKey = (u32, u32, u32, u32);

/// The thresholds of cap pressure, in percent.
const THRESHOLDS: [i64; 3] = [50, 80, 100];

/// Everything a report counts while it reads.
#[derive(Debug)]
pub struct Tally {
    plan_attribute: String,
    since_ms: i64,
    until_ms: i64,
    accounts: Names,
    plans: Names,
    principals: Names,
    features: Names,
    actions: Names,
    codes: Names,
    meters: Names,
    /// Scratch for entity names.
    scratch: String,
    records: u64,
    without_plan: u64,
    usage_events: u64,
    /// (account, plan) pairs seen.
    account_plans: HashSet<(u32, u32)>,
    /// (account, plan, feature) with at least one ALLOW.
    used: HashSet<(u32, u32, u32)>,
    /// (feature, plan, principal) with at least one ALLOW.
    active: HashSet<(u32, u32, u32)>,
    /// DENYs by (feature, plan, code).
    denials: HashMap<(u32, u32, u32), u64>,
    /// (feature, plan, code, account) that were denied.
    denied_accounts: HashSet<(u32, u32, u32, u32)>,
    /// By (account, plan, feature, code).
    hits: HashMap<HitKey, Hits>,
    days: BTreeMap<i64, Day>,
    /// By (account, meter, window).
    windows: HashMap<(u32, u32, String), MeterWindow>,
}

/// A paywall row whose hint is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintQuery {
    /// The tenant.
    pub tenant: String,
    /// `Type:id` of the principal.
    pub principal: String,
    /// `Action:id`.
    pub action: String,
    /// `Type:id` of the feature.
    pub resource: String,
    /// The last denied request's context (JSON), when the log kept it.
    pub context: Option<String>,
}

/// The report's tables, in the order they are shown.
#[derive(Debug, Clone)]
pub struct Tables {
    /// Feature adoption by plan.
    pub adoption: Table,
    /// DENYs by feature, plan and code.
    pub paywall: Table,
    /// The accounts that hit the paywall most.
    pub paywall_accounts: Table,
    /// Accounts past 50/80/100% of a meter's limit.
    pub cap_pressure: Table,
    /// Features an account's plan includes that it never used.
    pub unused: Table,
    /// Decisions, denials and consumption per day.
    pub trends: Table,
    /// Denials per day and code.
    pub denials_by_day: Table,
    /// The hint queries of `paywall_accounts`' rows.
    hint_queries: Vec<HintQuery>,
}

impl Tables {
    /// Every table.
    pub fn all(&self) -> [&Table; 7] {
        [
            &self.adoption,
            &self.paywall,
            &self.paywall_accounts,
            &self.cap_pressure,
            &self.unused,
            &self.trends,
            &self.denials_by_day,
        ]
    }

    /// Fills `paywall_accounts`' `unlocked_by` column.
    pub fn fill_hints(&mut self, hints: &mut dyn FnMut(&HintQuery) -> String) {
        let column = self
            .paywall_accounts
            .columns
            .iter()
            .position(|column| *column == "unlocked_by");
        let Some(column) = column else {
            return;
        };
        for (row, query) in self
            .paywall_accounts
            .rows
            .iter_mut()
            .zip(&self.hint_queries)
        {
            if let Some(cell) = row.get_mut(column) {
                *cell = Cell::Text(hints(query));
            }
        }
    }
}

impl Tally {
    /// An empty tally for the window `[since_ms, until_ms)`.
    pub fn new(plan_attribute: String, since_ms: i64, until_ms: i64) -> Self {
        Self {
            plan_attribute,
            since_ms,
            until_ms,
            accounts: Names::default(),
            plans: Names::default(),
            principals: Names::default(),
            features: Names::default(),
            actions: Names::default(),
            codes: Names::default(),
            meters: Names::default(),
            scratch: String::new(),
            records: 0,
            without_plan: 0,
            usage_events: 0,
            account_plans: HashSet::new(),
            used: HashSet::new(),
            active: HashSet::new(),
            denials: HashMap::new(),
            denied_accounts: HashSet::new(),
            hits: HashMap::new(),
            days: BTreeMap::new(),
            windows: HashMap::new(),
        }
    }

    /// Decision records tallied.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Records tallied without the plan attribute.
    pub fn without_plan(&self) -> u64 {
        self.without_plan
    }

    /// Usage events tallied.
    pub fn usage_events(&self) -> u64 {
        self.usage_events
    }

    fn name_number(names: &mut Names, scratch: &mut String, reference: &RecordRef<'_>) -> u32 {
        scratch.clear();
        scratch.push_str(&reference.kind);
        scratch.push(':');
        scratch.push_str(&reference.id);
        names.number(scratch)
    }

    /// Tallies one decision record.
    pub fn record(&mut self, record: &DecisionRecord<'_>) -> Counted {
        if record.what_if {
            return Counted::WhatIf;
        }
        if record.time_unix_ms < self.since_ms || record.time_unix_ms >= self.until_ms {
            return Counted::Outside;
        }
        self.records += 1;
        let allow = record.decision == "ALLOW";
        let account = self.accounts.number(&record.tenant);
        let plan = match record.attributes.get(self.plan_attribute.as_str()) {
            Some(serde_json::Value::String(plan)) => self.plans.number(plan),
            Some(other) => self.plans.number(&other.to_string()),
            None => {
                self.without_plan += 1;
                self.plans.number(UNKNOWN_PLAN)
            }
        };
        self.account_plans.insert((account, plan));
        let day = self
            .days
            .entry(record.time_unix_ms.div_euclid(DAY_MS))
            .or_default();
        day.decisions += 1;
        let codes: Vec<u32> = if allow {
            day.allowed += 1;
            Vec::new()
        } else {
            day.denied += 1;
            let mut codes: Vec<u32> = record
                .reasons
                .iter()
                .map(|code| self.codes.number(code))
                .collect();
            if codes.is_empty() {
                codes.push(self.codes.number("(none)"));
            }
            codes.sort_unstable();
            codes.dedup();
            for code in &codes {
                *day.denials_by_code.entry(*code).or_default() += 1;
            }
            codes
        };
        let Some(resource) = &record.resource else {
            return Counted::Tallied;
        };
        let feature = Self::name_number(&mut self.features, &mut self.scratch, resource);
        let principal = record
            .principal
            .as_ref()
            .map(|principal| Self::name_number(&mut self.principals, &mut self.scratch, principal));
        if allow {
            self.used.insert((account, plan, feature));
            if let Some(principal) = principal {
                self.active.insert((feature, plan, principal));
            }
            return Counted::Tallied;
        }
        let action = record
            .action
            .as_ref()
            .map(|action| Self::name_number(&mut self.actions, &mut self.scratch, action));
        for code in codes {
            *self.denials.entry((feature, plan, code)).or_default() += 1;
            self.denied_accounts.insert((feature, plan, code, account));
            let hits = self
                .hits
                .entry((account, plan, feature, code))
                .or_insert(Hits {
                    denials: 0,
                    principal: u32::MAX,
                    action: u32::MAX,
                    last_ms: i64::MIN,
                    context: None,
                });
            hits.denials += 1;
            if record.time_unix_ms >= hits.last_ms {
                hits.last_ms = record.time_unix_ms;
                hits.principal = principal.unwrap_or(u32::MAX);
                hits.action = action.unwrap_or(u32::MAX);
                if let Some(context) = record.context {
                    if hits.context.as_deref() != Some(context.get()) {
                        hits.context = Some(context.get().into());
                    }
                }
            }
        }
        Counted::Tallied
    }

    /// Tallies one usage event of `tenant`; false when it is outside the
    /// window. Events of a stream come in the order they were counted.
    pub fn usage(&mut self, tenant: &str, event: &UsageEvent) -> bool {
        if event.time_ms < self.since_ms || event.time_ms >= self.until_ms {
            return false;
        }
        self.usage_events += 1;
        let gauge = event.kind == "report_gauge";
        if !gauge {
            self.days
                .entry(event.time_ms.div_euclid(DAY_MS))
                .or_default()
                .consumed += event.amount;
        }
        let account = self.accounts.number(tenant);
        let meter = self.meters.number(&event.meter);
        let window = self
            .windows
            .entry((account, meter, event.window.clone()))
            .or_insert(MeterWindow {
                limit: None,
                peak: 0,
                counted: 0,
                first_ms: event.time_ms,
                last_ms: event.time_ms,
                passed: [None; 3],
                gauge,
            });
        if event.limit.is_some() {
            window.limit = event.limit;
        }
        window.last_ms = window.last_ms.max(event.time_ms);
        window.first_ms = window.first_ms.min(event.time_ms);
        let now = if gauge {
            window.counted = event.amount;
            event.used.unwrap_or(event.amount)
        } else {
            window.counted += event.amount;
            event.used.unwrap_or(0).max(window.counted)
        };
        window.peak = window.peak.max(now);
        if let Some(limit) = window.limit.filter(|limit| *limit > 0) {
            for (passed, threshold) in window.passed.iter_mut().zip(THRESHOLDS) {
                if passed.is_none() && now.saturating_mul(100) >= threshold * limit {
                    *passed = Some(event.time_ms);
                }
            }
        }
        true
    }

    /// The tables; `top` rows of the accounts that hit the paywall most.
    pub fn finish(&self, top: usize) -> Tables {
        let (paywall_accounts, hint_queries) = self.paywall_accounts(top);
        Tables {
            adoption: self.adoption(),
            paywall: self.paywall(),
            paywall_accounts,
            cap_pressure: self.cap_pressure(),
            unused: self.unused(),
            trends: self.trends(),
            denials_by_day: self.denials_by_day(),
            hint_queries,
        }
    }

    /// Accounts seen on each plan.
    fn accounts_by_plan(&self) -> HashMap<u32, u64> {
        let mut accounts: HashMap<u32, u64> = HashMap::new();
        for (_, plan) in &self.account_plans {
            *accounts.entry(*plan).or_default() += 1;
        }
        accounts
    }

    fn adoption(&self) -> Table {
        let accounts = self.accounts_by_plan();
        let mut using: HashMap<(u32, u32), u64> = HashMap::new();
        for (_, plan, feature) in &self.used {
            *using.entry((*feature, *plan)).or_default() += 1;
        }
        let mut active: HashMap<(u32, u32), u64> = HashMap::new();
        for (feature, plan, _) in &self.active {
            *active.entry((*feature, *plan)).or_default() += 1;
        }
        let mut rows: Vec<(String, String, u64, u64, u64)> = using
            .iter()
            .map(|((feature, plan), used)| {
                (
                    self.features.name(*feature).to_string(),
                    self.plans.name(*plan).to_string(),
                    accounts.get(plan).copied().unwrap_or(0),
                    *used,
                    active.get(&(*feature, *plan)).copied().unwrap_or(0),
                )
            })
            .collect();
        rows.sort();
        Table::new(
            "adoption",
            "Feature adoption by plan",
            &[
                "feature",
                "plan",
                "accounts_on_plan",
                "accounts_using",
                "share",
                "active_principals",
            ],
            rows.into_iter()
                .map(|(feature, plan, on_plan, using, active)| {
                    vec![
                        Cell::Text(feature),
                        Cell::Text(plan),
                        Cell::Int(to_i64(on_plan)),
                        Cell::Int(to_i64(using)),
                        Cell::Share(share(using, on_plan)),
                        Cell::Int(to_i64(active)),
                    ]
                })
                .collect(),
        )
    }

    fn paywall(&self) -> Table {
        let mut accounts: HashMap<(u32, u32, u32), u64> = HashMap::new();
        for (feature, plan, code, _) in &self.denied_accounts {
            *accounts.entry((*feature, *plan, *code)).or_default() += 1;
        }
        let mut rows: Vec<(u64, String, String, String, u64)> = self
            .denials
            .iter()
            .map(|(key, denials)| {
                let (feature, plan, code) = *key;
                (
                    *denials,
                    self.features.name(feature).to_string(),
                    self.plans.name(plan).to_string(),
                    self.codes.name(code).to_string(),
                    accounts.get(key).copied().unwrap_or(0),
                )
            })
            .collect();
        rows.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| (&a.1, &a.2, &a.3).cmp(&(&b.1, &b.2, &b.3)))
        });
        Table::new(
            "paywall",
            "Paywall demand: denials by feature, plan and reason",
            &["feature", "plan", "code", "denials", "accounts"],
            rows.into_iter()
                .map(|(denials, feature, plan, code, accounts)| {
                    vec![
                        Cell::Text(feature),
                        Cell::Text(plan),
                        Cell::Text(code),
                        Cell::Int(to_i64(denials)),
                        Cell::Int(to_i64(accounts)),
                    ]
                })
                .collect(),
        )
    }

    fn paywall_accounts(&self, top: usize) -> (Table, Vec<HintQuery>) {
        let mut rows: Vec<(&HitKey, &Hits)> = self.hits.iter().collect();
        rows.sort_by(|(a_key, a), (b_key, b)| {
            b.denials.cmp(&a.denials).then_with(|| {
                let name = |key: &HitKey| {
                    (
                        self.accounts.name(key.0),
                        self.features.name(key.2),
                        self.codes.name(key.3),
                        self.plans.name(key.1),
                    )
                };
                name(a_key).cmp(&name(b_key))
            })
        });
        rows.truncate(top);
        let mut queries = Vec::with_capacity(rows.len());
        let rows = rows
            .into_iter()
            .map(|((account, plan, feature, code), hits)| {
                let query = HintQuery {
                    tenant: self.accounts.name(*account).to_string(),
                    principal: self.principals.name(hits.principal).to_string(),
                    action: self.actions.name(hits.action).to_string(),
                    resource: self.features.name(*feature).to_string(),
                    context: hits.context.as_deref().map(str::to_string),
                };
                let row = vec![
                    Cell::Text(query.tenant.clone()),
                    Cell::Text(self.plans.name(*plan).to_string()),
                    Cell::Text(query.resource.clone()),
                    Cell::Text(self.codes.name(*code).to_string()),
                    Cell::Int(to_i64(hits.denials)),
                    Cell::Text(query.principal.clone()),
                    Cell::Text(query.action.clone()),
                    Cell::Text(rfc3339(hits.last_ms)),
                    Cell::Empty,
                ];
                queries.push(query);
                row
            })
            .collect();
        (
            Table::new(
                "paywall_accounts",
                "The accounts that hit the paywall most",
                &[
                    "account",
                    "plan",
                    "feature",
                    "code",
                    "denials",
                    "last_principal",
                    "last_action",
                    "last_denied",
                    "unlocked_by",
                ],
                rows,
            ),
            queries,
        )
    }

    fn cap_pressure(&self) -> Table {
        let mut rows: Vec<(i64, String, String, String, &MeterWindow, i64)> = self
            .windows
            .iter()
            .filter_map(|((account, meter, window), state)| {
                let limit = state.limit.filter(|limit| *limit > 0)?;
                state.passed[0]?;
                Some((
                    state.peak.saturating_mul(1000) / limit,
                    self.accounts.name(*account).to_string(),
                    self.meters.name(*meter).to_string(),
                    window.clone(),
                    state,
                    limit,
                ))
            })
            .collect();
        rows.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| (&a.1, &a.2, &a.3).cmp(&(&b.1, &b.2, &b.3)))
        });
        let date = |ms: Option<i64>| ms.map_or(Cell::Empty, |ms| Cell::Text(day(ms)));
        Table::new(
            "cap_pressure",
            "Cap pressure: accounts past 50, 80 and 100% of a meter's limit",
            &[
                "account",
                "meter",
                "window",
                "limit",
                "peak_used",
                "percent",
                "passed",
                "passed_50_on",
                "passed_80_on",
                "passed_100_on",
                "full_by",
            ],
            rows.into_iter()
                .map(|(_, account, meter, window, state, limit)| {
                    let passed = THRESHOLDS
                        .iter()
                        .zip(state.passed)
                        .filter(|(_, at)| at.is_some())
                        .map(|(threshold, _)| *threshold)
                        .max()
                        .unwrap_or(0);
                    vec![
                        Cell::Text(account),
                        Cell::Text(meter),
                        Cell::Text(window.clone()),
                        Cell::Int(limit),
                        Cell::Int(state.peak),
                        Cell::Share(state.peak as f64 / limit as f64),
                        Cell::Int(passed),
                        date(state.passed[0]),
                        date(state.passed[1]),
                        date(state.passed[2]),
                        full_by(state, limit, &window),
                    ]
                })
                .collect(),
        )
    }

    fn unused(&self) -> Table {
        let mut included: HashMap<u32, Vec<u32>> = HashMap::new();
        for (_, plan, feature) in &self.used {
            included.entry(*plan).or_default().push(*feature);
        }
        for features in included.values_mut() {
            features.sort_unstable();
            features.dedup();
        }
        let mut rows: Vec<(String, String, String)> = Vec::new();
        for (account, plan) in &self.account_plans {
            for feature in included.get(plan).into_iter().flatten() {
                if !self.used.contains(&(*account, *plan, *feature)) {
                    rows.push((
                        self.accounts.name(*account).to_string(),
                        self.plans.name(*plan).to_string(),
                        self.features.name(*feature).to_string(),
                    ));
                }
            }
        }
        rows.sort();
        Table::new(
            "unused",
            "Unused entitlements: features an account's plan includes that it never used",
            &["account", "plan", "feature"],
            rows.into_iter()
                .map(|(account, plan, feature)| {
                    vec![Cell::Text(account), Cell::Text(plan), Cell::Text(feature)]
                })
                .collect(),
        )
    }

    fn trends(&self) -> Table {
        Table::new(
            "trends",
            "Daily trends",
            &["day", "decisions", "allowed", "denied", "consumed"],
            self.days
                .iter()
                .map(|(number, day_tally)| {
                    vec![
                        Cell::Text(day(number * DAY_MS)),
                        Cell::Int(to_i64(day_tally.decisions)),
                        Cell::Int(to_i64(day_tally.allowed)),
                        Cell::Int(to_i64(day_tally.denied)),
                        Cell::Int(day_tally.consumed),
                    ]
                })
                .collect(),
        )
    }

    fn denials_by_day(&self) -> Table {
        let mut rows = Vec::new();
        for (number, day_tally) in &self.days {
            let mut codes: Vec<(&str, u64)> = day_tally
                .denials_by_code
                .iter()
                .map(|(code, count)| (self.codes.name(*code), *count))
                .collect();
            codes.sort();
            for (code, count) in codes {
                rows.push(vec![
                    Cell::Text(day(number * DAY_MS)),
                    Cell::Text(code.to_string()),
                    Cell::Int(to_i64(count)),
                ]);
            }
        }
        Table::new(
            "denials_by_day",
            "Denials per day and reason",
            &["day", "code", "denials"],
            rows,
        )
    }
}

fn to_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// When a meter's window reaches its limit: the day it did, or at the
/// units per day counted from its first to its last event, the day it
/// will; empty when it will not before the window ends (or no rate shows).
fn full_by(state: &MeterWindow, limit: i64, window: &str) -> Cell {
    if let Some(reached) = state.passed[2] {
        return Cell::Text(day(reached));
    }
    if state.gauge || state.counted <= 0 {
        return Cell::Empty;
    }
    let span_days = ((state.last_ms - state.first_ms) as f64 / DAY_MS as f64).max(1.0);
    let per_day = state.counted as f64 / span_days;
    let left = (limit - state.peak) as f64;
    let at = state
        .last_ms
        .saturating_add((left / per_day * DAY_MS as f64) as i64);
    match window_end(window) {
        Some(end) if at >= end => Cell::Empty,
        _ => Cell::Text(day(at)),
    }
}

/// When a counter's window ends, Unix ms: `2026-11` at the next month,
/// `2026-11-27` at the next day, `all` never.
pub fn window_end(window: &str) -> Option<i64> {
    use jiff::civil::Date;
    let date = |text: &str| text.parse::<Date>().ok();
    let start_of = |date: Date| {
        jiff::tz::TimeZone::UTC
            .to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
            .ok()
            .map(|timestamp| timestamp.as_millisecond())
    };
    match window.len() {
        10 => date(window)
            .and_then(|d| d.tomorrow().ok())
            .and_then(start_of),
        7 => date(&format!("{window}-01"))
            .map(|d| d.last_of_month())
            .and_then(|d| d.tomorrow().ok())
            .and_then(start_of),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &str) -> DecisionRecord<'_> {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn windows_end_at_the_next_day_or_month() {
        assert_eq!(window_end("2026-11-27"), Some(1_795_824_000_000));
        assert_eq!(window_end("2026-12"), Some(1_798_761_600_000));
        assert_eq!(window_end("all"), None);
    }

    #[test]
    fn an_account_that_never_used_what_its_plan_includes_is_listed() {
        let mut tally = Tally::new("account.plan".to_string(), 0, i64::MAX);
        for line in [
            r#"{"decision_id":"1","time_unix_ms":1000,"tenant":"a","principal":{"type":"User","id":"x"},"action":{"type":"Action","id":"use"},"resource":{"type":"Feature","id":"f"},"decision":"ALLOW","reasons":[],"attributes":{"account.plan":"pro"}}"#,
            r#"{"decision_id":"2","time_unix_ms":1000,"tenant":"b","principal":{"type":"User","id":"y"},"action":{"type":"Action","id":"use"},"resource":{"type":"Feature","id":"g"},"decision":"ALLOW","reasons":[],"attributes":{"account.plan":"pro"}}"#,
            r#"{"decision_id":"3","time_unix_ms":1000,"tenant":"c","principal":{"type":"User","id":"z"},"action":{"type":"Action","id":"use"},"resource":{"type":"Feature","id":"f"},"decision":"DENY","reasons":["tier_too_low"],"attributes":{"account.plan":"free"}}"#,
        ] {
            assert_eq!(tally.record(&record(line)), Counted::Tallied);
        }
        let tables = tally.finish(10);
        let unused: Vec<Vec<String>> = tables
            .unused
            .rows
            .iter()
            .map(|row| row.iter().map(Cell::text).collect())
            .collect();
        assert_eq!(
            unused,
            vec![vec!["a", "pro", "Feature:g"], vec!["b", "pro", "Feature:f"]]
        );
        assert_eq!(tables.paywall.rows[0][2].text(), "tier_too_low");
        assert_eq!(tables.adoption.rows.len(), 2);
    }

    #[test]
    fn a_meter_passes_its_thresholds_in_order() {
        let mut tally = Tally::new("account.plan".to_string(), 0, i64::MAX);
        for (used, time) in [(40, DAY_MS), (55, 2 * DAY_MS), (85, 3 * DAY_MS)] {
            tally.usage(
                "a",
                &UsageEvent {
                    kind: "consume".to_string(),
                    meter: "m".to_string(),
                    amount: 1,
                    time_ms: time,
                    used: Some(used),
                    limit: Some(100),
                    window: "all".to_string(),
                },
            );
        }
        let tables = tally.finish(10);
        let row: Vec<String> = tables.cap_pressure.rows[0].iter().map(Cell::text).collect();
        assert_eq!(
            row[..10],
            [
                "a",
                "m",
                "all",
                "100",
                "85",
                "0.85",
                "80",
                "1970-01-03",
                "1970-01-04",
                ""
            ]
        );
        // 3 units over 2 days, 15 left: 10 days after the last event.
        assert_eq!(row[10], "1970-01-14");
    }
}
