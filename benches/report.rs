//! `tollgate report` over a month of a busy deployment: 1,000,000 decision
//! records in two decision-log files (the rotated `decisions.log.1` with the
//! first 40%, then `decisions.log`) and 200,000 usage events in the usage
//! streams of a real `redis-server`, reported as HTML, JSON and CSV.
//!
//! The data is generated, deterministically (a seeded SplitMix64): 2,000
//! tenants on free, pro and enterprise (60/30/10%), 20 principals each, 12
//! features (four per tier, two of the pro ones add-ons), about 70% ALLOW,
//! the denials' reason codes by plan (`tier_too_low`, `addon_missing`,
//! `cap_exceeded`, `seats_full`, `geo_blocked`), times in order over the 30
//! days of November 2026, busier tenants more often. Usage: 2 or 3 meters per
//! tenant (`api-calls` consumed, `exports` reported, half the tenants also a
//! `storage-gb` gauge), with limits that some windows pass at 50, 80 and
//! 100%. Writing the data is not measured.
//!
//! Measured, `--runs` times (3): the wall time of the whole `tollgate report`
//! process (the binary cargo built for the bench: release, fat LTO, under
//! `cargo bench`) and its peak memory, the larger of its own `peak memory Y
//! MiB` and its `VmHWM` sampled from `/proc/<pid>/status` every 20 ms. Each
//! run's `summary.json`, `trends.json`, `paywall.json` and
//! `cap_pressure.json` are checked against what was generated; a mismatch
//! stops the bench with an error. Targets (issue: `tollgate report` at
//! scale): 1,000,000 records and 200,000 events in ≤ 15 s, peak memory ≤ 256
//! MiB, judged on the slowest run and the highest peak; a missed target
//! exits with status 1. `--phases` then runs the decision logs alone and the
//! usage streams alone once each.
//!
//! `cargo bench --bench report` measures the full size; `cargo test
//! --benches` runs 20,000 records and 4,000 events of 200 tenants once, on
//! the test build, and checks the counts. Numbers in `benches/README.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a broken fixture should abort loudly"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use tollgate::store::redis_client::keys::stream_key;
use tollgate_testkit::bench::{machine, selected};
use tollgate_testkit::measure::memory;
use tollgate_testkit::redis_server::RedisServer;

/// 2026-11-01T00:00:00Z, Unix ms: the first generated time.
const START_MS: i64 = 1_793_491_200_000;
/// The 30 days the times are spread over.
const SPAN_MS: i64 = 30 * 86_400_000;
/// The report's window: exactly the generated month.
const SINCE: &str = "2026-11-01";
const UNTIL: &str = "2026-12-01";
/// The counters' monthly window.
const MONTH: &str = "2026-11";

/// The size and targets.
const TARGET_RECORDS: usize = 1_000_000;
const TARGET_EVENTS: usize = 200_000;
const TARGET_SECONDS: f64 = 15.0;
const TARGET_MIB: f64 = 256.0;

/// Principals per tenant.
const PRINCIPALS: usize = 20;
/// The share of the records in the rotated file.
const ROTATED_SHARE: f64 = 0.4;
/// How often the child's `VmHWM` is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// A report that takes longer is killed and the bench fails.
const REPORT_TIMEOUT: Duration = Duration::from_secs(600);

/// `tollgate report` over a month of decision records and usage events.
#[derive(Debug, Parser)]
#[command(name = "report")]
struct Args {
    /// Decision records [default: 1,000,000; 20,000 in test mode].
    #[arg(long)]
    records: Option<usize>,
    /// Usage events [default: 200,000; 4,000 in test mode].
    #[arg(long)]
    events: Option<usize>,
    /// Tenants [default: 2,000; 200 in test mode].
    #[arg(long)]
    tenants: Option<usize>,
    /// Measured runs of the report [default: 3; 1 in test mode].
    #[arg(long)]
    runs: Option<usize>,
    /// Also run the decision logs alone and the usage streams alone, once
    /// each, to split the time.
    #[arg(long)]
    phases: bool,
    /// Passed by `cargo bench`; without it (`cargo test --benches`), a
    /// small run that checks the counts.
    #[arg(long, hide = true)]
    bench: bool,
    /// Name filters passed by `cargo bench -- FILTER`.
    #[arg(hide = true)]
    filters: Vec<String>,
}

/// SplitMix64: small, fast, and the same numbers on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`.
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    /// An index of `weights`, with probability proportional to its weight.
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut pick = self.below(total as usize) as u32;
        for (index, weight) in weights.iter().enumerate() {
            if pick < *weight {
                return index;
            }
            pick -= weight;
        }
        weights.len() - 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Free,
    Pro,
    Enterprise,
}

impl Plan {
    /// A fixed share: 60% free, 30% pro, 10% enterprise.
    fn of(tenant: usize) -> Self {
        match tenant % 20 {
            0..12 => Self::Free,
            12..18 => Self::Pro,
            _ => Self::Enterprise,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Pro => "pro",
            Self::Enterprise => "enterprise",
        }
    }

    fn tier(self) -> u8 {
        self as u8
    }
}

/// A feature: its id, the tier that includes it, and the add-on it also
/// needs below enterprise.
struct Feature {
    id: &'static str,
    tier: u8,
    addon: Option<&'static str>,
}

const FEATURES: [Feature; 12] = [
    Feature {
        id: "dashboards",
        tier: 0,
        addon: None,
    },
    Feature {
        id: "csv-export",
        tier: 0,
        addon: None,
    },
    Feature {
        id: "comments",
        tier: 0,
        addon: None,
    },
    Feature {
        id: "api-access",
        tier: 0,
        addon: None,
    },
    Feature {
        id: "pdf-export",
        tier: 1,
        addon: None,
    },
    Feature {
        id: "webhooks",
        tier: 1,
        addon: None,
    },
    Feature {
        id: "sso",
        tier: 1,
        addon: Some("sso"),
    },
    Feature {
        id: "advanced-analytics",
        tier: 1,
        addon: Some("analytics"),
    },
    Feature {
        id: "audit-log",
        tier: 2,
        addon: None,
    },
    Feature {
        id: "data-residency",
        tier: 2,
        addon: None,
    },
    Feature {
        id: "custom-roles",
        tier: 2,
        addon: None,
    },
    Feature {
        id: "scim",
        tier: 2,
        addon: None,
    },
];

/// The reason codes, in the order of the weights below.
const CODES: [&str; 5] = [
    "tier_too_low",
    "addon_missing",
    "cap_exceeded",
    "seats_full",
    "geo_blocked",
];
const TIER_TOO_LOW: usize = 0;
const ADDON_MISSING: usize = 1;
const CAP_EXCEEDED: usize = 2;
const GEO_BLOCKED: usize = 4;

/// How often each code is the reason of a denial, by plan.
fn code_weights(plan: Plan) -> [u32; 5] {
    match plan {
        Plan::Free => [55, 15, 20, 0, 10],
        Plan::Pro => [35, 25, 20, 15, 5],
        Plan::Enterprise => [0, 0, 45, 40, 15],
    }
}

const COUNTRIES: [&str; 8] = ["US", "BR", "DE", "IN", "JP", "FR", "GB", "CA"];
const BLOCKED_COUNTRIES: [&str; 2] = ["CU", "IR"];

/// The add-ons a pro tenant bought (enterprise has all, free none).
fn has_addon(tenant: usize, addon: &str) -> bool {
    match addon {
        "sso" => tenant.is_multiple_of(4),
        _ => tenant.is_multiple_of(5),
    }
}

fn allowed(tenant: usize, plan: Plan, feature: &Feature) -> bool {
    plan == Plan::Enterprise
        || (feature.tier <= plan.tier() && feature.addon.is_none_or(|a| has_addon(tenant, a)))
}

fn tenant_id(tenant: usize) -> String {
    format!("t{tenant:04}")
}

/// Busier tenants more often: a tenant's share of the traffic, by index
/// (plans are by index modulo 20, so every plan has busy tenants).
fn tenant_weights(tenants: usize, rng: &mut Rng) -> Vec<f64> {
    (0..tenants)
        .map(|_| 0.2 + 5.0 * rng.unit().powi(3))
        .collect()
}

/// Picks by weight from cumulative weights.
fn pick(cumulative: &[f64], rng: &mut Rng) -> usize {
    let target = rng.unit() * cumulative.last().copied().unwrap_or(0.0);
    cumulative
        .partition_point(|sum| *sum <= target)
        .min(cumulative.len() - 1)
}

/// What was generated, to check the report's tables against.
#[derive(Debug, Default)]
struct Expected {
    records: u64,
    allowed: u64,
    denied: u64,
    /// Records denied with each code.
    by_code: BTreeMap<&'static str, u64>,
    events: u64,
    /// Units of the counters (consumed and reported; not the gauges).
    consumed: i64,
    /// Meter windows whose peak passed 50, 80 and 100% of the limit.
    passed: [u64; 3],
}

/// Writes `records` decision records, in time order, the first 40% into
/// `decisions.log.1` and the rest into `decisions.log`.
fn write_decisions(dir: &Path, records: usize, tenants: usize, expected: &mut Expected) {
    let mut rng = Rng(0x7011_6a7e);
    let mut cumulative = tenant_weights(tenants, &mut rng);
    let mut sum = 0.0;
    for weight in &mut cumulative {
        sum += *weight;
        *weight = sum;
    }
    let rotated = (records as f64 * ROTATED_SHARE) as usize;
    let open = |name: &str| {
        BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.join(name)).unwrap())
    };
    let mut file = open("decisions.log.1");
    let step = SPAN_MS / records.max(1) as i64;
    let mut line = String::with_capacity(1024);
    for index in 0..records {
        if index == rotated {
            file.flush().unwrap();
            file = open("decisions.log");
        }
        let tenant = pick(&cumulative, &mut rng);
        let plan = Plan::of(tenant);
        let principal = (PRINCIPALS as f64 * rng.unit().powi(2)) as usize;
        let time = START_MS + index as i64 * step + rng.below(step.max(1) as usize) as i64;
        let mut country = COUNTRIES[rng.below(COUNTRIES.len())];
        let allow = rng.unit() < 0.70;
        let included: Vec<usize> = (0..FEATURES.len())
            .filter(|f| allowed(tenant, plan, &FEATURES[*f]))
            .collect();
        let (feature, codes): (usize, Vec<usize>) = if allow {
            // The first features of a plan are the popular ones.
            (
                included[(included.len() as f64 * rng.unit().powf(1.5)) as usize],
                Vec::new(),
            )
        } else {
            let weights = code_weights(plan);
            let mut code = rng.weighted(&weights);
            let lacking_addon: Vec<usize> = (0..FEATURES.len())
                .filter(|f| {
                    FEATURES[*f].tier <= plan.tier().max(1)
                        && !allowed(tenant, plan, &FEATURES[*f])
                        && FEATURES[*f].addon.is_some()
                })
                .collect();
            if code == ADDON_MISSING && lacking_addon.is_empty() {
                code = CAP_EXCEEDED;
            }
            match code {
                TIER_TOO_LOW => {
                    let above: Vec<usize> = (0..FEATURES.len())
                        .filter(|f| FEATURES[*f].tier > plan.tier())
                        .collect();
                    let feature = above[rng.below(above.len())];
                    // A free account asking for an add-on lacks both.
                    let codes = if FEATURES[feature].addon.is_some() {
                        vec![TIER_TOO_LOW, ADDON_MISSING]
                    } else {
                        vec![TIER_TOO_LOW]
                    };
                    (feature, codes)
                }
                ADDON_MISSING => {
                    let feature = lacking_addon[rng.below(lacking_addon.len())];
                    let codes = if FEATURES[feature].tier > plan.tier() {
                        vec![TIER_TOO_LOW, ADDON_MISSING]
                    } else {
                        vec![ADDON_MISSING]
                    };
                    (feature, codes)
                }
                code => {
                    if code == GEO_BLOCKED {
                        country = BLOCKED_COUNTRIES[rng.below(BLOCKED_COUNTRIES.len())];
                    }
                    (included[rng.below(included.len())], vec![code])
                }
            }
        };
        expected.records += 1;
        if allow {
            expected.allowed += 1;
        } else {
            expected.denied += 1;
            for code in &codes {
                *expected.by_code.entry(CODES[*code]).or_default() += 1;
            }
        }
        let action = if rng.below(10) == 0 {
            "configure"
        } else {
            "use"
        };
        let front_door = if rng.below(5) == 0 { "http" } else { "grpc" };
        line.clear();
        let _ = write!(
            line,
            "{{\"decision_id\":\"5f3a9c0e7b1d2468{index:016x}\",\"time_unix_ms\":{time},\"caller\":\"local\",\"front_door\":\"{front_door}\",\"tenant\":\"{}\",\"principal\":{{\"type\":\"User\",\"id\":\"user-{tenant:04}-{principal:02}\"}},\"action\":{{\"type\":\"Action\",\"id\":\"{action}\"}},\"resource\":{{\"type\":\"Feature\",\"id\":\"{}\"}},\"decision\":\"{}\",\"reasons\":[",
            tenant_id(tenant),
            FEATURES[feature].id,
            if allow { "ALLOW" } else { "DENY" },
        );
        for (at, code) in codes.iter().enumerate() {
            let _ = write!(
                line,
                "{}\"{}\"",
                if at == 0 { "" } else { "," },
                CODES[*code]
            );
        }
        let policy = if allow {
            "plans.cedar:3".to_string()
        } else {
            format!("plans.cedar:{}", 20 + codes[0] * 7)
        };
        let _ = writeln!(
            line,
            "],\"policies\":[\"{policy}\"],\"policy_version\":\"2f1c8e4b9a7d3c60e5f2a1b4c7d8e9f0a1b2c3d4\",\"snapshot_version\":{},\"latency_us\":{},\"context\":{{\"country\":\"{country}\"}},\"attributes\":{{\"account.plan\":\"{}\"}}}}",
            1 + tenant % 9,
            20 + rng.below(380),
            plan.name(),
        );
        file.write_all(line.as_bytes()).unwrap();
    }
    file.flush().unwrap();
    if records <= rotated {
        // Every record went to the rotated file: the current one is empty.
        std::fs::File::create(dir.join("decisions.log")).unwrap();
    }
}

/// A meter of a tenant's usage stream.
#[derive(Debug, Clone, Copy)]
enum Meter {
    /// `consume` (exact mode), monthly.
    ApiCalls,
    /// `report_counter`, monthly.
    Exports,
    /// `report_gauge`, window `all`.
    StorageGb,
}

impl Meter {
    fn name(self) -> &'static str {
        match self {
            Self::ApiCalls => "api-calls",
            Self::Exports => "exports",
            Self::StorageGb => "storage-gb",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::ApiCalls => "consume",
            Self::Exports => "report_counter",
            Self::StorageGb => "report_gauge",
        }
    }

    fn window(self) -> &'static str {
        match self {
            Self::StorageGb => "all",
            _ => MONTH,
        }
    }
}

/// Writes `events` usage events into the tenants' usage streams (pipelined
/// XADDs), each stream in time order.
fn write_usage(url: &str, events: usize, tenants: usize, expected: &mut Expected) {
    let mut rng = Rng(0x05a9_e5e4);
    let weights = tenant_weights(tenants, &mut rng);
    let total: f64 = weights.iter().sum();
    let mut counts: Vec<usize> = weights
        .iter()
        .map(|weight| (events as f64 * weight / total) as usize)
        .collect();
    let short = events - counts.iter().sum::<usize>();
    for count in counts.iter_mut().take(short) {
        *count += 1;
    }
    let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut pipe = redis::pipe();
    let mut queued = 0;
    for (tenant, count) in counts.into_iter().enumerate() {
        let meters: &[Meter] = if tenant.is_multiple_of(2) {
            &[Meter::ApiCalls, Meter::Exports, Meter::StorageGb]
        } else {
            &[Meter::ApiCalls, Meter::Exports]
        };
        let meter_weights: &[u32] = if meters.len() == 3 {
            &[60, 25, 15]
        } else {
            &[70, 30]
        };
        // (time, meter, amount), in the order counted.
        let mut list: Vec<(i64, usize, i64)> = (0..count)
            .map(|_| {
                let meter = rng.weighted(meter_weights);
                let amount = match meters[meter] {
                    Meter::ApiCalls => 1 + (rng.below(10) / 7) as i64 * rng.below(5) as i64,
                    Meter::Exports => 1 + rng.below(20) as i64,
                    Meter::StorageGb => 5 + rng.below(200) as i64,
                };
                (START_MS + rng.below(SPAN_MS as usize) as i64, meter, amount)
            })
            .collect();
        list.sort_unstable();
        // Each meter's limit: its peak is the chosen share of it (exact
        // consumption never passes 100%; reported counters can).
        let mut limits = [0i64; 3];
        for (at, meter) in meters.iter().enumerate() {
            let peak = match meter {
                Meter::StorageGb => list.iter().filter(|e| e.1 == at).map(|e| e.2).max(),
                _ => Some(list.iter().filter(|e| e.1 == at).map(|e| e.2).sum()),
            }
            .unwrap_or(0);
            let percent: i64 = match meter {
                Meter::ApiCalls => [20, 45, 60, 70, 85, 95, 100][rng.below(7)],
                _ => [20, 40, 55, 75, 90, 110, 130][rng.below(7)],
            };
            limits[at] = (peak * 100 / percent).max(1);
            if peak > 0 {
                for (passed, threshold) in expected.passed.iter_mut().zip([50, 80, 100]) {
                    if peak * 100 >= threshold * limits[at] {
                        *passed += 1;
                    }
                }
            }
        }
        let key = stream_key(&tenant_id(tenant));
        let mut used = [0i64; 3];
        for (index, (time, meter, amount)) in list.into_iter().enumerate() {
            let kind = meters[meter];
            used[meter] = match kind {
                Meter::StorageGb => amount,
                _ => used[meter] + amount,
            };
            expected.events += 1;
            if !matches!(kind, Meter::StorageGb) {
                expected.consumed += amount;
            }
            let principal = format!("User::\"user-{tenant:04}-{:02}\"", rng.below(PRINCIPALS));
            let decision_id = match kind {
                Meter::ApiCalls => format!("9d2e4b6a1c3f5078{tenant:08x}{index:08x}"),
                _ => String::new(),
            };
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("kind")
                .arg(kind.kind())
                .arg("meter")
                .arg(kind.name())
                .arg("amount")
                .arg(amount)
                .arg("idempotency_key")
                .arg(format!("k-{tenant}-{index}"))
                .arg("principal")
                .arg(principal)
                .arg("decision_id")
                .arg(decision_id)
                .arg("time_ms")
                .arg(time)
                .arg("used")
                .arg(used[meter])
                .arg("limit")
                .arg(limits[meter])
                .arg("window")
                .arg(kind.window())
                .ignore();
            queued += 1;
            if queued == 2000 {
                pipe.query::<()>(&mut connection).unwrap();
                pipe.clear();
                queued = 0;
            }
        }
    }
    if queued > 0 {
        pipe.query::<()>(&mut connection).unwrap();
    }
}

/// One run of `tollgate report`.
#[derive(Debug, Clone)]
struct Run {
    /// Wall time of the process, start to exit.
    wall: f64,
    /// The seconds the report says it took (before writing its files).
    own_seconds: f64,
    /// Its own `peak memory Y MiB`.
    own_mib: f64,
    /// The highest `VmHWM` sampled.
    sampled_mib: f64,
    summary: serde_json::Value,
    out: PathBuf,
}

impl Run {
    fn peak_mib(&self) -> f64 {
        self.own_mib.max(self.sampled_mib)
    }
}

/// The number before `suffix` ending the text before it (`in 3.2 s`).
fn number_before(text: &str, prefix: &str, suffix: &str) -> Option<f64> {
    let start = text.find(prefix)? + prefix.len();
    let rest = &text[start..];
    rest[..rest.find(suffix)?].trim().parse().ok()
}

/// Reads a child's pipe to its end on a thread of its own.
fn read_all<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Runs `tollgate report` with `args` into `out`, timing it and sampling its
/// memory.
fn run_report(binary: &Path, args: &[String], out: &Path) -> Result<Run, String> {
    let _ = std::fs::remove_dir_all(out);
    let mut command = Command::new(binary);
    command
        .arg("report")
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--no-progress")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (variable, _) in std::env::vars_os() {
        if let Some(variable) = variable.to_str() {
            if variable.starts_with("TOLLGATE_")
                || variable.starts_with("OTEL_")
                || variable == "RUST_LOG"
            {
                command.env_remove(variable);
            }
        }
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
    let pid = child.id();
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let mut hwm_bytes = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|error| error.to_string())? {
            break status;
        }
        if let Some(now) = memory(pid) {
            hwm_bytes = hwm_bytes.max(now.hwm_bytes);
        }
        if started.elapsed() > REPORT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the report did not finish within {} s",
                REPORT_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(SAMPLE_EVERY);
    };
    let wall = started.elapsed().as_secs_f64();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("tollgate report failed ({status}): {stderr}"));
    }
    let line = stderr
        .lines()
        .find(|line| line.contains(" decision records and ") && line.contains("peak memory"))
        .ok_or_else(|| format!("no summary line on stderr: {stderr}"))?;
    let own_seconds =
        number_before(line, ") in ", " s").ok_or_else(|| format!("no time in `{line}`"))?;
    let own_mib = number_before(line, "peak memory ", " MiB")
        .ok_or_else(|| format!("no peak memory in `{line}`"))?;
    let written = stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count();
    let summary_path = out.join("summary.json");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&summary_path)
            .map_err(|error| format!("{}: {error}", summary_path.display()))?,
    )
    .map_err(|error| format!("{}: {error}", summary_path.display()))?;
    for file in stdout.lines().filter(|line| !line.trim().is_empty()) {
        if !Path::new(file.trim()).is_file() {
            return Err(format!("the report printed {file}, which is not a file"));
        }
    }
    if written == 0 {
        return Err("the report printed no files".to_string());
    }
    Ok(Run {
        wall,
        own_seconds,
        own_mib,
        sampled_mib: hwm_bytes as f64 / (1024.0 * 1024.0),
        summary,
        out: out.to_path_buf(),
    })
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn int(value: &serde_json::Value, field: &str) -> i64 {
    value[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no whole number `{field}` in {value}"))
}

/// Checks a full run's outputs against what was generated.
fn check(run: &Run, expected: &Expected, tenants_with_usage: usize) -> Result<(), String> {
    let summary = &run.summary;
    let mut problems = Vec::new();
    let mut expect = |what: &str, got: i64, want: i64| {
        if got != want {
            problems.push(format!("{what}: {got}, expected {want}"));
        }
    };
    expect(
        "summary.json decision_records",
        int(summary, "decision_records"),
        expected.records as i64,
    );
    expect(
        "summary.json usage_events",
        int(summary, "usage_events"),
        expected.events as i64,
    );
    for field in [
        "outside_window",
        "unreadable",
        "usage_outside_window",
        "usage_unreadable",
        "without_plan",
        "what_if",
        "duplicates",
    ] {
        expect(&format!("summary.json {field}"), int(summary, field), 0);
    }
    expect(
        "summary.json usage_tenants",
        summary["usage_tenants"].as_array().map_or(0, Vec::len) as i64,
        tenants_with_usage as i64,
    );
    expect(
        "summary.json decision_sources",
        summary["decision_sources"].as_array().map_or(0, Vec::len) as i64,
        2,
    );
    let trends = read_json(&run.out.join("trends.json"));
    let days = trends.as_array().ok_or("trends.json is not an array")?;
    let sum = |field: &str| days.iter().map(|day| int(day, field)).sum::<i64>();
    if expected.records >= 3_000 {
        // Every day of the month has records.
        expect("trends.json days", days.len() as i64, 30);
    }
    expect(
        "trends.json decisions",
        sum("decisions"),
        expected.records as i64,
    );
    expect(
        "trends.json allowed",
        sum("allowed"),
        expected.allowed as i64,
    );
    expect("trends.json denied", sum("denied"), expected.denied as i64);
    expect("trends.json consumed", sum("consumed"), expected.consumed);
    let paywall = read_json(&run.out.join("paywall.json"));
    let mut by_code: BTreeMap<String, i64> = BTreeMap::new();
    for row in paywall.as_array().ok_or("paywall.json is not an array")? {
        *by_code
            .entry(row["code"].as_str().unwrap_or("").to_string())
            .or_default() += int(row, "denials");
    }
    for code in CODES {
        expect(
            &format!("paywall.json denials {code}"),
            by_code.get(code).copied().unwrap_or(0),
            expected.by_code.get(code).copied().unwrap_or(0) as i64,
        );
    }
    let cap = read_json(&run.out.join("cap_pressure.json"));
    let cap = cap.as_array().ok_or("cap_pressure.json is not an array")?;
    for (at, threshold) in [50, 80, 100].into_iter().enumerate() {
        let passed = cap
            .iter()
            .filter(|row| int(row, "passed") >= threshold)
            .count();
        expect(
            &format!("cap_pressure.json windows past {threshold}%"),
            passed as i64,
            expected.passed[at] as i64,
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the report's outputs are wrong:\n  {}",
            problems.join("\n  ")
        ))
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

fn thousands(number: u64) -> String {
    let digits = number.to_string();
    let mut text = String::new();
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

fn bench(args: &Args) -> Result<bool, String> {
    let full = args.bench;
    let records = args
        .records
        .unwrap_or(if full { TARGET_RECORDS } else { 20_000 });
    let events = args
        .events
        .unwrap_or(if full { TARGET_EVENTS } else { 4_000 });
    let tenants = args
        .tenants
        .unwrap_or(if full { 2_000 } else { 200 })
        .max(1);
    let runs = args.runs.unwrap_or(if full { 3 } else { 1 }).max(1);
    let binary = Path::new(env!("CARGO_BIN_EXE_tollgate"));
    let (cpus, model) = machine();
    println!(
        "report: {} decision records, {} usage events, {tenants} tenants; {cpus} CPUs, {model}; {}",
        thousands(records as u64),
        thousands(events as u64),
        binary.display()
    );
    if !full {
        println!("report: test mode (run without `cargo bench`): a small run on the test build that checks the counts");
    }
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let mut expected = Expected::default();
    let started = Instant::now();
    write_decisions(dir.path(), records, tenants, &mut expected);
    let bytes: u64 = ["decisions.log.1", "decisions.log"]
        .iter()
        .map(|name| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len()))
        .sum();
    println!(
        "  wrote {} records ({:.0} MB in decisions.log.1 and decisions.log; {} allowed) in {:.1} s",
        thousands(expected.records),
        bytes as f64 / 1e6,
        thousands(expected.allowed),
        started.elapsed().as_secs_f64()
    );
    let redis = RedisServer::try_start(Default::default())?;
    let started = Instant::now();
    write_usage(&redis.url(), events, tenants, &mut expected);
    let streams: i64 = redis.command(&["DBSIZE"]);
    println!(
        "  wrote {} usage events into {streams} streams in {:.1} s; meter windows past 50/80/100% of their limit: {}/{}/{}",
        thousands(expected.events),
        started.elapsed().as_secs_f64(),
        expected.passed[0],
        expected.passed[1],
        expected.passed[2],
    );
    let log = dir.path().join("decisions.log").display().to_string();
    let full_args: Vec<String> = [
        "--decision-log",
        &log,
        "--redis-url",
        &redis.url(),
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--format",
        "html,json,csv",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut measured = Vec::with_capacity(runs);
    for round in 1..=runs {
        let run = run_report(binary, &full_args, &dir.path().join("out"))?;
        check(&run, &expected, streams as usize)?;
        println!(
            "  run {round}: {:.2} s wall ({:.2} s before writing, as it reports), peak memory {:.0} MiB (its own {:.0}, sampled VmHWM {:.0}), {} records/s",
            run.wall,
            run.own_seconds,
            run.peak_mib(),
            run.own_mib,
            run.sampled_mib,
            thousands((records as f64 / run.wall) as u64),
        );
        measured.push(run);
    }
    let walls: Vec<f64> = measured.iter().map(|run| run.wall).collect();
    let median_wall = median(&walls);
    let max_wall = walls.iter().copied().fold(0.0, f64::max);
    let peak = measured.iter().map(Run::peak_mib).fold(0.0, f64::max);
    println!(
        "report: {} records and {} events, {runs} runs: median {median_wall:.2} s, max {max_wall:.2} s; peak memory {peak:.0} MiB; {} records/s (median)",
        thousands(records as u64),
        thousands(events as u64),
        thousands((records as f64 / median_wall) as u64),
    );
    if args.phases {
        // The decision logs alone (no Redis), then the usage streams alone
        // (an empty decision log).
        let files_args: Vec<String> = full_args[..2]
            .iter()
            .chain(&full_args[4..])
            .cloned()
            .collect();
        let files = run_report(binary, &files_args, &dir.path().join("out-files"))?;
        let empty = dir.path().join("empty.log");
        std::fs::write(&empty, "").map_err(|error| error.to_string())?;
        let mut usage_args = full_args.clone();
        usage_args[1] = empty.display().to_string();
        let usage = run_report(binary, &usage_args, &dir.path().join("out-usage"))?;
        for (what, run) in [
            ("decision logs alone", files),
            ("usage streams alone", usage),
        ] {
            println!(
                "  phase, {what}: {:.2} s wall ({:.2} s before writing), peak memory {:.0} MiB; {} records, {} events",
                run.wall,
                run.own_seconds,
                run.peak_mib(),
                thousands(int(&run.summary, "decision_records").unsigned_abs()),
                thousands(int(&run.summary, "usage_events").unsigned_abs()),
            );
        }
    }
    if records != TARGET_RECORDS || events != TARGET_EVENTS || !full {
        println!(
            "report: the targets (≤ {TARGET_SECONDS} s, ≤ {TARGET_MIB} MiB) are for {} records and {} events under `cargo bench`; not judged here",
            thousands(TARGET_RECORDS as u64),
            thousands(TARGET_EVENTS as u64),
        );
        return Ok(true);
    }
    let time_ok = max_wall <= TARGET_SECONDS;
    let memory_ok = peak <= TARGET_MIB;
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!(
        "{}: time {} (max {max_wall:.2} s against ≤ {TARGET_SECONDS} s{}), memory {} ({peak:.0} MiB against ≤ {TARGET_MIB} MiB{})",
        verdict(time_ok && memory_ok),
        verdict(time_ok),
        if time_ok { String::new() } else { format!(", {:.2} s over", max_wall - TARGET_SECONDS) },
        verdict(memory_ok),
        if memory_ok { String::new() } else { format!(", {:.0} MiB over", peak - TARGET_MIB) },
    );
    Ok(time_ok && memory_ok)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !selected(&args.filters, "report") {
        return ExitCode::SUCCESS;
    }
    match bench(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(problem) => {
            eprintln!("report: {problem}");
            ExitCode::FAILURE
        }
    }
}
