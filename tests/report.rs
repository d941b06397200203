//! `tollgate report` over a history the real server made: five days (the
//! server run under libfaketime, one day at a time) of decisions and
//! consumption for tenants on three plans, written to its real decision log
//! (rotated once) and to the usage streams of a real Redis. Every table's
//! numbers are checked against what the server answered, and the HTML page
//! is opened in headless Chromium: no console errors, every chart drawn, a
//! screenshot kept.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use tollgate::api::pb;
use tollgate::store::redis_client::RedisConn;
use tollgate_testkit::fixtures::{document, entity};
use tollgate_testkit::prelude::*;
use tollgate_testkit::redis_server::{put, RedisServer};

/// libfaketime's preload library (Debian's `libfaketime`, which the
/// `faketime` package brings; scripts/test.sh installs it).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The days of the history (the server's clock, 10:00 UTC each).
const DAYS: [&str; 5] = [
    "2026-11-02",
    "2026-11-03",
    "2026-11-04",
    "2026-11-05",
    "2026-11-06",
];

/// The decision Redis Stream the servers also write.
const STREAM: &str = "tollgate:decisions";

/// Each tenant's plan in its snapshot.
const PLANS: [(&str, &str); 4] = [
    ("acme", "pro"),
    ("globex", "pro"),
    ("hooli", "free"),
    ("initech", "enterprise"),
];

/// Who asks, per tenant.
const PRINCIPALS: [(&str, &str); 6] = [
    ("acme", "bob"),
    ("acme", "carol"),
    ("globex", "erin"),
    ("hooli", "gavin"),
    ("initech", "peter"),
    ("initech", "milton"),
];

const FEATURES: [&str; 5] = ["dashboards", "pdf-export", "audit-log", "sso", "payments"];

/// Units consumed of `api-calls` per day: acme (limit 100) passes 50% on
/// day 2, 80% on day 3, is refused on day 4 and reaches 100% on day 5;
/// initech (limit 40) passes 50% on day 2 and 80 and 100% on day 4.
const CONSUMED: [(&str, &str, [i64; 5]); 2] = [
    ("acme", "bob", [30, 25, 30, 20, 15]),
    ("initech", "peter", [10, 10, 10, 10, 10]),
];

fn plan(tenant: &str) -> &'static str {
    PLANS.iter().find(|(t, _)| *t == tenant).unwrap().1
}

/// One answer the server gave.
#[derive(Debug, Clone)]
struct Answer {
    day: usize,
    tenant: String,
    principal: String,
    feature: String,
    allow: bool,
    codes: Vec<String>,
    consumed: i64,
}

fn snapshots(dir: &Path) -> Vec<String> {
    PLANS
        .iter()
        .map(|(tenant, _)| {
            let text = document(tenant, 2, |value| {
                let meter = entity(value, "Meter", "api-calls");
                meter["attrs"]["period"] = "never".into();
                meter["attrs"]["limit"] = match *tenant {
                    "acme" => 100,
                    "initech" => 40,
                    _ => 100_000,
                }
                .into();
            });
            std::fs::write(dir.join(format!("{tenant}.json")), &text).unwrap();
            text
        })
        .collect()
}

fn faked(day: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", FAKETIME.to_string()),
        ("FAKETIME", format!("@{day} 10:00:00")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ("TZ", "UTC".to_string()),
    ]
}

/// Runs the five days through the server; returns its answers.
async fn make_history(redis: &RedisServer, entitlements: &Path, log: &Path) -> Vec<Answer> {
    let mut answers = Vec::new();
    // About 400 bytes a record and 250 records: one rotation, never two.
    let max_bytes = "60000";
    for (day, date) in DAYS.iter().enumerate() {
        let mut env: Vec<(&str, String)> = faked(date);
        env.extend([
            ("TOLLGATE_REDIS_URL", redis.url()),
            ("TOLLGATE_DECISION_LOG", log.display().to_string()),
            (
                "TOLLGATE_DECISION_LOG_ATTRIBUTES",
                "account.plan".to_string(),
            ),
            ("TOLLGATE_DECISION_LOG_MAX_BYTES", max_bytes.to_string()),
            // The hints ask with the context the denied request had.
            ("TOLLGATE_DECISION_LOG_CONTEXT", "true".to_string()),
            // The same records also go to the decision stream.
            ("TOLLGATE_DECISION_LOG_REDIS_STREAM", STREAM.to_string()),
        ]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut server = ServerProcess::spawn(
            env!("CARGO_BIN_EXE_tollgate"),
            &example_policies(),
            entitlements,
            &env,
        );
        let mut client = connect(&server.url()).await;
        for (index, (tenant, user)) in PRINCIPALS.iter().enumerate() {
            for (number, feature) in FEATURES.iter().enumerate() {
                // Not everyone asks for everything every day.
                if (day + index + number) % 3 == 0 {
                    continue;
                }
                for _ in 0..=(day + number) % 3 {
                    let response = decide(
                        &mut client,
                        check(
                            tenant,
                            &format!("User:{user}"),
                            "use",
                            &format!("Feature:{feature}"),
                        ),
                    )
                    .await;
                    answers.push(answer(day, tenant, user, feature, &response, 0));
                }
            }
        }
        for (tenant, user, amounts) in CONSUMED {
            let mut request = check(tenant, &format!("User:{user}"), "use", "Feature:api");
            request.consume = Some(pb::Consume {
                meter: "api-calls".to_string(),
                amount: amounts[day],
                idempotency_key: format!("{tenant}-{day}"),
            });
            let response = decide(&mut client, request).await;
            let allowed = response.decision == pb::Decision::Allow as i32;
            answers.push(answer(
                day,
                tenant,
                user,
                "api",
                &response,
                if allowed { amounts[day] } else { 0 },
            ));
        }
        if day == 0 {
            // A what-if question: answered, logged as what-if, never reported.
            let mut request = check("hooli", "User:gavin", "use", "Feature:pdf-export");
            request.what_if = vec![pb::AttributeOverride {
                entity: Some(entity_ref("Account", "hooli")),
                attribute: "plan".to_string(),
                value: Some(string("pro")),
            }];
            let response = decide(&mut client, request).await;
            assert!(response.hypothetical, "{response:?}");
        }
        server.signal("TERM");
        server.expect_clean_exit().await;
    }
    answers
}

fn answer(
    day: usize,
    tenant: &str,
    user: &str,
    feature: &str,
    response: &pb::CheckResponse,
    consumed: i64,
) -> Answer {
    Answer {
        day,
        tenant: tenant.to_string(),
        principal: format!("User:{user}"),
        feature: format!("Feature:{feature}"),
        allow: response.decision == pb::Decision::Allow as i32,
        codes: {
            let mut codes: Vec<String> = response.reasons.iter().map(|r| r.code.clone()).collect();
            codes.sort();
            codes.dedup();
            codes
        },
        consumed,
    }
}

fn table(out: &Path, name: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join(format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn text(row: &serde_json::Value, column: &str) -> String {
    row[column].as_str().unwrap_or_default().to_string()
}

fn number(row: &serde_json::Value, column: &str) -> i64 {
    row[column]
        .as_i64()
        .unwrap_or_else(|| panic!("{column} in {row}"))
}

fn run_report(out: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("report")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_what_the_server_decided_and_renders_in_a_browser() {
    assert!(
        Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: run scripts/test.sh, which installs Debian's faketime"
    );
    let redis = RedisServer::start();
    let conn = RedisConn::connect(&redis.settings()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let entitlements = dir.path().join("entitlements");
    std::fs::create_dir_all(&entitlements).unwrap();
    for snapshot in snapshots(&entitlements) {
        put(&conn, &snapshot).await;
    }
    let log = dir.path().join("decisions.log");
    let answers = make_history(&redis, &entitlements, &log).await;
    let rotated = dir.path().join("decisions.log.1");
    assert!(rotated.is_file(), "the log rotated once");
    let logged = std::fs::read_to_string(&rotated).unwrap().lines().count()
        + std::fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(
        logged,
        answers.len() + 1,
        "every decision and the what-if logged"
    );

    let out = dir.path().join("report");
    let policies = example_policies();
    let output = run_report(
        &out,
        &[
            "--decision-log",
            log.to_str().unwrap(),
            "--redis-url",
            &redis.url(),
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-30",
            "--format",
            "html,json,csv",
            "--top",
            "100",
            "--hints",
            "--policies",
            policies.to_str().unwrap(),
            "--entitlements",
            entitlements.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    // What was read.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let consumes = answers.iter().filter(|a| a.consumed > 0).count();
    assert_eq!(summary["decision_records"], answers.len(), "{summary}");
    assert_eq!(summary["what_if"], 1, "{summary}");
    assert_eq!(summary["unreadable"], 0, "{summary}");
    assert_eq!(summary["without_plan"], 0, "{summary}");
    assert_eq!(summary["usage_events"], consumes, "{summary}");
    assert_eq!(
        summary["decision_sources"],
        serde_json::json!([rotated.display().to_string(), log.display().to_string()])
    );

    check_adoption(&out, &answers);
    check_paywall(&out, &answers);
    check_cap_pressure(&out);
    check_unused(&out, &answers);
    check_trends(&out, &answers);

    // The same tables as CSV: a header and a line per row.
    for name in ["adoption", "paywall", "unused", "trends"] {
        let csv = std::fs::read_to_string(out.join(format!("{name}.csv"))).unwrap();
        assert_eq!(
            csv.lines().count(),
            table(&out, name).len() + 1,
            "{name}.csv"
        );
    }

    // The decision stream holds the same records; one added twice (as a
    // batch sent again would) is counted once.
    let first = std::fs::read_to_string(&rotated).unwrap();
    let first = first.lines().next().unwrap();
    let _: String = redis.command(&["XADD", STREAM, "*", "record", first]);
    let streamed = dir.path().join("streamed");
    let output = run_report(
        &streamed,
        &[
            "--redis-url",
            &redis.url(),
            "--decision-stream",
            STREAM,
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-30",
            "--top",
            "100",
            "--format",
            "json",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(streamed.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["decision_records"], answers.len(), "{summary}");
    assert_eq!(summary["duplicates"], 1, "{summary}");
    assert_eq!(summary["what_if"], 1, "{summary}");
    for name in [
        "adoption",
        "paywall",
        "paywall_accounts",
        "cap_pressure",
        "unused",
        "trends",
        "denials_by_day",
    ] {
        let without_hints = |rows: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
            rows.into_iter()
                .map(|mut row| {
                    row.as_object_mut().unwrap().remove("unlocked_by");
                    row
                })
                .collect()
        };
        assert_eq!(
            without_hints(table(&streamed, name)),
            without_hints(table(&out, name)),
            "{name} from the stream"
        );
    }

    // A window that holds none of it reports nothing; a line that is no
    // record is skipped, counted and named.
    let junk = dir.path().join("junk.log");
    std::fs::write(&junk, "not a record\n").unwrap();
    let empty = dir.path().join("empty");
    let output = run_report(
        &empty,
        &[
            "--decision-log",
            log.to_str().unwrap(),
            "--decision-log",
            junk.to_str().unwrap(),
            "--since",
            "2026-10-01",
            "--until",
            "2026-10-31",
            "--format",
            "json",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("not a decision record: {}:1:", junk.display())),
        "{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(empty.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["decision_records"], 0);
    assert_eq!(summary["unreadable"], 1, "{summary}");
    assert_eq!(summary["outside_window"], answers.len(), "{summary}");
    assert!(table(&empty, "trends").is_empty());

    check_in_browser(&out.join("report.html"));
}

fn check_adoption(out: &Path, answers: &[Answer]) {
    let mut on_plan: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    // (feature, plan) -> (accounts, principals) allowed it.
    type Users<'a> = (BTreeSet<&'a str>, BTreeSet<&'a str>);
    let mut using: BTreeMap<(String, &str), Users<'_>> = BTreeMap::new();
    for answer in answers {
        on_plan
            .entry(plan(&answer.tenant))
            .or_default()
            .insert(&answer.tenant);
        if answer.allow {
            let entry = using
                .entry((answer.feature.clone(), plan(&answer.tenant)))
                .or_default();
            entry.0.insert(&answer.tenant);
            entry.1.insert(&answer.principal);
        }
    }
    let expected: BTreeSet<(String, String, i64, i64, i64)> = using
        .iter()
        .map(|((feature, plan), (accounts, principals))| {
            (
                feature.clone(),
                (*plan).to_string(),
                on_plan[plan].len() as i64,
                accounts.len() as i64,
                principals.len() as i64,
            )
        })
        .collect();
    let rows = table(out, "adoption");
    let actual: BTreeSet<(String, String, i64, i64, i64)> = rows
        .iter()
        .map(|row| {
            let share = row["share"].as_f64().unwrap();
            let (on, using) = (
                number(row, "accounts_on_plan"),
                number(row, "accounts_using"),
            );
            assert!((share - using as f64 / on as f64).abs() < 1e-3, "{row}");
            (
                text(row, "feature"),
                text(row, "plan"),
                on,
                using,
                number(row, "active_principals"),
            )
        })
        .collect();
    assert_eq!(actual, expected);
    // Two accounts on pro, only acme using pdf-export (globex's trial is over).
    assert!(
        expected.contains(&("Feature:pdf-export".to_string(), "pro".to_string(), 2, 1, 1)),
        "{expected:?}"
    );
}

fn check_paywall(out: &Path, answers: &[Answer]) {
    let mut expected: BTreeMap<(String, String, String), (i64, BTreeSet<&str>)> = BTreeMap::new();
    for answer in answers.iter().filter(|a| !a.allow) {
        for code in &answer.codes {
            let entry = expected
                .entry((
                    answer.feature.clone(),
                    plan(&answer.tenant).to_string(),
                    code.clone(),
                ))
                .or_default();
            entry.0 += 1;
            entry.1.insert(&answer.tenant);
        }
    }
    let expected: BTreeSet<(String, String, String, i64, i64)> = expected
        .into_iter()
        .map(|((feature, plan, code), (denials, accounts))| {
            (feature, plan, code, denials, accounts.len() as i64)
        })
        .collect();
    let rows = table(out, "paywall");
    let actual: BTreeSet<(String, String, String, i64, i64)> = rows
        .iter()
        .map(|row| {
            (
                text(row, "feature"),
                text(row, "plan"),
                text(row, "code"),
                number(row, "denials"),
                number(row, "accounts"),
            )
        })
        .collect();
    assert_eq!(actual, expected);
    let codes: BTreeSet<&str> = actual.iter().map(|row| row.2.as_str()).collect();
    for code in ["cap_exceeded", "tier_too_low"] {
        assert!(codes.contains(code), "{codes:?}");
    }
    // Largest first.
    let denials: Vec<i64> = rows.iter().map(|row| number(row, "denials")).collect();
    assert!(
        denials.windows(2).all(|pair| pair[0] >= pair[1]),
        "{denials:?}"
    );

    // The accounts that hit it most: counts as above, and the offer that
    // unlocks each, from a listing of the same policies and snapshots.
    let accounts = table(out, "paywall_accounts");
    let hit: BTreeSet<(&str, &str, &str)> = answers
        .iter()
        .filter(|a| !a.allow)
        .flat_map(|a| {
            a.codes
                .iter()
                .map(|code| (a.tenant.as_str(), a.feature.as_str(), code.as_str()))
        })
        .collect();
    assert_eq!(
        accounts.len(),
        hit.len(),
        "one row per account, feature and code"
    );
    for row in &accounts {
        let hits = answers
            .iter()
            .filter(|a| {
                !a.allow
                    && a.tenant == text(row, "account")
                    && a.feature == text(row, "feature")
                    && a.codes.contains(&text(row, "code"))
            })
            .count();
        assert_eq!(number(row, "denials"), hits as i64, "{row}");
        assert_eq!(text(row, "plan"), plan(&text(row, "account")), "{row}");
    }
    let gavin = accounts
        .iter()
        .find(|row| {
            text(row, "account") == "hooli"
                && text(row, "feature") == "Feature:pdf-export"
                && text(row, "code") == "tier_too_low"
        })
        .expect("hooli's pdf-export denials");
    assert_eq!(text(gavin, "last_principal"), "User:gavin");
    assert_eq!(text(gavin, "unlocked_by"), "pro (plan)", "{gavin}");
    let acme_cap = accounts
        .iter()
        .find(|row| text(row, "account") == "acme" && text(row, "code") == "cap_exceeded")
        .expect("acme's refused consumption");
    assert_eq!(number(acme_cap, "denials"), 1);
}

fn check_cap_pressure(out: &Path) {
    let rows = table(out, "cap_pressure");
    let row = |account: &str| {
        rows.iter()
            .find(|row| text(row, "account") == account)
            .unwrap_or_else(|| panic!("no {account} in {rows:?}"))
    };
    let acme = row("acme");
    assert_eq!(
        (
            text(acme, "meter"),
            text(acme, "window"),
            number(acme, "limit"),
            number(acme, "peak_used"),
            number(acme, "passed"),
        ),
        ("api-calls".to_string(), "all".to_string(), 100, 100, 100)
    );
    // 30, 55 (50%), 85 (80%), refused, 100 (100%).
    assert_eq!(text(acme, "passed_50_on"), "2026-11-03");
    assert_eq!(text(acme, "passed_80_on"), "2026-11-04");
    assert_eq!(text(acme, "passed_100_on"), "2026-11-06");
    assert_eq!(text(acme, "full_by"), "2026-11-06");
    let initech = row("initech");
    // 10, 20 (50%), 30, 40 (80 and 100%), refused.
    assert_eq!(
        (number(initech, "limit"), number(initech, "peak_used")),
        (40, 40)
    );
    assert_eq!(text(initech, "passed_50_on"), "2026-11-03");
    assert_eq!(text(initech, "passed_80_on"), "2026-11-05");
    assert_eq!(text(initech, "passed_100_on"), "2026-11-05");
    // Nobody else came near a limit.
    assert_eq!(rows.len(), 2, "{rows:?}");
}

fn check_unused(out: &Path, answers: &[Answer]) {
    let mut included: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut used: BTreeSet<(&str, &str)> = BTreeSet::new();
    for answer in answers.iter().filter(|a| a.allow) {
        included
            .entry(plan(&answer.tenant))
            .or_default()
            .insert(&answer.feature);
        used.insert((&answer.tenant, &answer.feature));
    }
    let tenants: BTreeSet<&str> = answers.iter().map(|a| a.tenant.as_str()).collect();
    let mut expected: BTreeSet<(String, String, String)> = BTreeSet::new();
    for tenant in tenants {
        for feature in included.get(plan(tenant)).into_iter().flatten() {
            if !used.contains(&(tenant, feature)) {
                expected.insert((
                    tenant.to_string(),
                    plan(tenant).to_string(),
                    (*feature).to_string(),
                ));
            }
        }
    }
    let actual: BTreeSet<(String, String, String)> = table(out, "unused")
        .iter()
        .map(|row| {
            (
                text(row, "account"),
                text(row, "plan"),
                text(row, "feature"),
            )
        })
        .collect();
    assert!(!expected.is_empty(), "the history leaves something unused");
    assert_eq!(actual, expected);
}

fn check_trends(out: &Path, answers: &[Answer]) {
    let rows = table(out, "trends");
    assert_eq!(rows.len(), DAYS.len());
    for (day, row) in rows.iter().enumerate() {
        let of_day: Vec<&Answer> = answers.iter().filter(|a| a.day == day).collect();
        assert_eq!(text(row, "day"), DAYS[day]);
        assert_eq!(number(row, "decisions"), of_day.len() as i64, "{row}");
        assert_eq!(
            number(row, "allowed"),
            of_day.iter().filter(|a| a.allow).count() as i64,
            "{row}"
        );
        assert_eq!(
            number(row, "denied"),
            of_day.iter().filter(|a| !a.allow).count() as i64,
            "{row}"
        );
        assert_eq!(
            number(row, "consumed"),
            of_day.iter().map(|a| a.consumed).sum::<i64>(),
            "{row}"
        );
    }
    let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
    for answer in answers.iter().filter(|a| !a.allow) {
        for code in &answer.codes {
            *expected
                .entry((DAYS[answer.day].to_string(), code.clone()))
                .or_default() += 1;
        }
    }
    let actual: BTreeMap<(String, String), i64> = table(out, "denials_by_day")
        .iter()
        .map(|row| {
            (
                (text(row, "day"), text(row, "code")),
                number(row, "denials"),
            )
        })
        .collect();
    assert_eq!(actual, expected);
}

/// Opens the page in headless Chromium (tests/browser/check_page.py): it
/// loads without console errors or outside fetches, every chart is drawn,
/// and the page and its screenshot are kept in target/tmp/report/.
fn check_in_browser(page: &Path) {
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("report.png");
    std::fs::copy(page, artifacts.join("report.html")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/check_page.py");
    let output = Command::new("python3")
        .arg(script)
        .arg("--html")
        .arg(page)
        .arg("--screenshot")
        .arg(&screenshot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    let charts: BTreeSet<&str> = seen["charts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|chart| {
            assert!(chart["drawn"].as_u64().unwrap() > 5, "{chart}");
            chart["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        charts,
        BTreeSet::from([
            "chart-adoption",
            "chart-paywall",
            "chart-cap-pressure",
            "chart-trends",
            "chart-consumption",
            "chart-denials-by-day",
        ])
    );
    assert_eq!(seen["tables"], 7, "{seen}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
}

#[test]
fn bad_arguments_and_unreadable_inputs_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing = dir.path().join("missing.log");
    let log = dir.path().join("decisions.log");
    std::fs::write(&log, "").unwrap();
    let port = tollgate_testkit::redis_server::free_port().to_string();
    let unreachable = format!("redis://127.0.0.1:{port}");
    for (args, code, message) in [
        (
            vec![],
            2,
            "no decision records to read: give --decision-log FILE or --decision-stream KEY",
        ),
        (
            vec!["--decision-log", missing.to_str().unwrap()],
            1,
            "decision log ",
        ),
        (
            vec![
                "--decision-log",
                log.to_str().unwrap(),
                "--since",
                "2026-11-05",
                "--until",
                "2026-11-01",
            ],
            2,
            "--since must be before --until",
        ),
        (
            vec!["--decision-log", log.to_str().unwrap(), "--since", "soon"],
            2,
            "--since `soon`: expected a date (2026-11-01), an RFC 3339 time or a duration (7d)",
        ),
        (
            vec!["--decision-stream", "tollgate:decisions"],
            2,
            "--decision-stream needs --redis-url",
        ),
        (
            vec![
                "--decision-log",
                log.to_str().unwrap(),
                "--redis-url",
                &unreachable,
            ],
            3,
            "--redis-url redis://127.0.0.1:",
        ),
    ] {
        let output = run_report(&out, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    assert!(!out.join("report.html").exists(), "nothing written");
}
