//! The policy author's tools, run as a user runs them: `tollgate test` (pass,
//! a deliberately broken rule caught with a readable diff, JUnit, filters,
//! unknown keys) and explained decisions (`explain` on `CheckRequest`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use tollgate::api::pb;
use tollgate_testkit::prelude::{check, connect, string, DataDirs, InProcess};

const TEST_FILE: &str = r#"
now: "2026-11-27T12:00:00Z"
fixtures:
  acme:
    snapshot: ../entitlements/acme.json
  hooli:
    snapshot: ../entitlements/hooli.json
cases:
  - name: pro member may export PDFs
    fixture: acme
    principal: User:bob
    action: use
    resource: Feature:pdf-export
    context: { country: BR }
    expect: { decision: ALLOW, reasons: [member_role], policies: [members-use] }
  - name: free plan may not export PDFs
    fixture: hooli
    principal: User:gavin
    action: use
    resource: Feature:pdf-export
    context: { country: BR }
    expect: { decision: DENY, reasons: [tier_too_low], policies: [tier-too-low] }
"#;

fn tollgate_test(dirs: &DataDirs, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("test")
        .arg("--policies")
        .arg(&dirs.policies)
        .arg("--entitlements")
        .arg(&dirs.entitlements)
        .args(args)
        .current_dir(dirs.root.path())
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("run tollgate test")
}

fn write_test_file(dirs: &DataDirs, name: &str, text: &str) -> String {
    let dir = dirs.root.path().join("authoring");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn passing_cases_report_like_cargo_test() {
    let dirs = DataDirs::copy_examples();
    let file = write_test_file(&dirs, "plans.test.yaml", TEST_FILE);
    let output = tollgate_test(&dirs, &[&file]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("running 2 cases from 1 files"), "{out}");
    assert!(
        out.contains(&format!("test {file} :: pro member may export PDFs ... ok")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "test {file} :: free plan may not export PDFs ... ok"
        )),
        "{out}"
    );
    assert!(out.trim_end().ends_with("2 passed, 0 failed"), "{out}");
    // Two cases cannot determine every policy: the rest are listed.
    assert!(out.contains("policies that determined no case"), "{out}");
    assert!(out.contains("outside-allowed-countries"), "{out}");
    assert!(
        out.contains("policies no case tested the other way"),
        "{out}"
    );
}

#[test]
fn a_flipped_tier_comparison_fails_with_a_readable_diff() {
    let dirs = DataDirs::copy_examples();
    let plans = dirs.policies.join("plans.cedar");
    let text = std::fs::read_to_string(&plans).unwrap();
    let broken = text.replace(
        "principal.account.tier >= resource.min_tier",
        "principal.account.tier < resource.min_tier",
    );
    assert_ne!(text, broken, "the rule to break is in plans.cedar");
    std::fs::write(&plans, broken).unwrap();
    let file = write_test_file(&dirs, "plans.test.yaml", TEST_FILE);
    let output = tollgate_test(&dirs, &[&file]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "test {file} :: pro member may export PDFs ... FAILED"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("---- {file} :: pro member may export PDFs ----")),
        "{out}"
    );
    assert!(
        out.contains("  decision: expected ALLOW, got DENY"),
        "{out}"
    );
    assert!(
        out.contains("  reasons:  expected [member_role], got [tier_too_low]"),
        "{out}"
    );
    assert!(
        out.contains("  policies: expected [members-use], got [tier-too-low]"),
        "{out}"
    );
    assert!(
        out.contains(
            "  why: tier_too_low (tier-too-low): this feature is not included in your plan"
        ),
        "{out}"
    );
    assert!(out.trim_end().ends_with("0 passed, 2 failed"), "{out}");
}

#[test]
fn junit_filter_and_unknown_keys() {
    let dirs = DataDirs::copy_examples();
    let file = write_test_file(&dirs, "plans.test.yaml", TEST_FILE);
    let output = tollgate_test(
        &dirs,
        &[&file, "--format", "junit", "--filter", "free plan"],
    );
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.starts_with("<?xml"), "{out}");
    assert!(
        out.contains("<testsuites name=\"tollgate\" tests=\"1\" failures=\"0\">"),
        "{out}"
    );
    assert!(
        out.contains("name=\"free plan may not export PDFs\"/>"),
        "{out}"
    );
    assert!(!out.contains("pro member"), "{out}");

    let typo = TEST_FILE.replace("    resource: Feature:pdf-export\n    context: { country: BR }\n    expect: { decision: DENY", "    resourse: Feature:pdf-export\n    context: { country: BR }\n    expect: { decision: DENY");
    let bad = write_test_file(&dirs, "typo.test.yaml", &typo);
    let output = tollgate_test(&dirs, &[&bad]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "---- {bad}:20:5: cases[1]: unknown field `resourse`"
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_lists_every_policy_whose_scope_matched() {
    let dirs = DataDirs::copy_examples();
    let server = InProcess::start(dirs.config()).await;
    let mut client = connect(&server.url()).await;

    let mut request = check("hooli", "User:gavin", "use", "Feature:payments");
    request.context.insert("country".to_string(), string("CN"));
    let plain = client.check(request.clone()).await.unwrap().into_inner();
    assert!(plain.explanation.is_empty(), "explanation only on request");

    request.explain = true;
    let explained = client.check(request).await.unwrap().into_inner();
    assert_eq!(explained.decision, plain.decision);
    let outcome = |id: &str| {
        explained
            .explanation
            .iter()
            .find(|e| e.policy_id == id)
            .map(|e| (e.satisfied, e.effect, e.code.clone(), e.error.clone()))
    };
    assert_eq!(
        outcome("tier-too-low"),
        Some((
            true,
            pb::Effect::Forbid as i32,
            "tier_too_low".to_string(),
            String::new()
        ))
    );
    assert_eq!(
        outcome("outside-allowed-countries"),
        Some((
            true,
            pb::Effect::Forbid as i32,
            "geo_restricted".to_string(),
            String::new()
        ))
    );
    assert_eq!(
        outcome("members-use"),
        Some((
            true,
            pb::Effect::Permit as i32,
            "member_role".to_string(),
            String::new()
        ))
    );
    assert_eq!(outcome("addon-missing").map(|o| o.0), Some(false));
    // Scopes that do not match the request are left out: other actions, and
    // roles gavin does not hold.
    assert_eq!(outcome("viewers-view"), None);
    assert_eq!(outcome("admins-administer"), None);
    let ids: Vec<&str> = explained
        .explanation
        .iter()
        .map(|e| e.policy_id.as_str())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "explanation is in id order");
    server.stop().await.unwrap();
}

#[test]
fn the_shipped_catalog_passes_its_own_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("test")
        .current_dir(root)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("run tollgate test");
    let out = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !out.contains("policies that determined no case"),
        "every policy is tested:\n{out}"
    );
}

#[test]
fn mistakes_in_how_the_runner_is_called_do_not_pass_silently() {
    let dirs = DataDirs::copy_examples();
    let file = write_test_file(&dirs, "plans.test.yaml", TEST_FILE);

    let output = tollgate_test(&dirs, &[&file, "/nonexistent/typo.test.yaml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no such test file or directory"));

    let output = tollgate_test(&dirs, &[&file, "--filter", "no such case"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("no case to run: none matches the filter `no such case`"));

    let twice = TEST_FILE.replace(
        "  hooli:\n    snapshot: ../entitlements/hooli.json\n",
        "  hooli:\n    snapshot: ../entitlements/hooli.json\n  acme:\n    snapshot: ../entitlements/hooli.json\n",
    );
    let duplicate = write_test_file(&dirs, "twice.test.yaml", &twice);
    let output = tollgate_test(&dirs, &[&duplicate]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("duplicate fixture `acme`"), "{out}");
}

#[test]
fn junit_output_stays_well_formed_whatever_the_case_names() {
    let dirs = DataDirs::copy_examples();
    let odd = TEST_FILE.replace(
        "name: pro member may export PDFs",
        "name: \"a <b> & \\\"c\\\" \\x01 ]]>\"",
    );
    let file = write_test_file(&dirs, "odd.test.yaml", &odd);
    let output = tollgate_test(&dirs, &[&file, "--format", "junit"]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("name=\"a &lt;b&gt; &amp; &quot;c&quot; \u{FFFD} ]]&gt;\""),
        "{out}"
    );
    assert!(!out.chars().any(|c| c < ' ' && c != '\n'), "{out:?}");
}

#[test]
fn wrong_hints_fail_with_a_readable_diff() {
    // Wrong hints fail with a diff: a free user's analytics needs a plan
    // and a seat, not the seat alone; an allowed item has no hint.
    let dirs = DataDirs::copy_examples();
    let file = write_test_file(
        &dirs,
        "offers.test.yaml",
        r#"
now: "2026-11-27T12:00:00Z"
fixtures:
  hooli:
    snapshot: ../entitlements/hooli.json
cases:
  - name: analytics for a free user
    principal: User:gavin
    action: use
    resource: Feature:analytics
    context: { country: US }
    expect: { decision: DENY, unlocked_by: analytics-seat }
listings:
  - name: what a free user may use
    principal: User:gavin
    actions: [use]
    types: [Feature]
    context: { country: US }
    expect:
      allowed: [Feature:api, Feature:dashboards]
      unlocked_by:
        Feature:pdf-export: pro
        Feature:audit-log: enterprise
        Feature:dashboards: pro
"#,
    );
    let output = tollgate_test(&dirs, &[&file]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("  unlocked_by: expected analytics-seat, got pro + analytics-seat"),
        "{out}"
    );
    assert!(
        out.contains("  unlocked_by: `Feature:dashboards` is allowed; expected pro"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("0 passed, 2 failed"), "{out}");
}
