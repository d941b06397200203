//! The command line as a user runs it: `validate`, `check` (local and
//! `--remote`) and configuration errors, with their output and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use tollgate_testkit::prelude::{
    example_counts, example_entitlements, example_policies, read, replace_file, DataDirs,
    ServerProcess, NOW,
};

fn tollgate(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .expect("run tollgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Runs `tollgate` with `args` followed by `--policies` and `--entitlements`.
fn tollgate_on(args: &[&str], policies: &Path, entitlements: &Path, cwd: &Path) -> Output {
    let (p, e) = (policies.to_str().unwrap(), entitlements.to_str().unwrap());
    let mut args = args.to_vec();
    args.extend(["--policies", p, "--entitlements", e]);
    tollgate(&args, cwd)
}

/// Runs `tollgate` on a blocking thread (for async tests).
async fn tollgate_blocking(args: &[&str], cwd: &Path) -> Output {
    let cwd = cwd.to_path_buf();
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tollgate(&args, &cwd)
    })
    .await
    .unwrap()
}

/// The `check` options of one request: `[tenant, principal, action, resource]`
/// and the context JSON.
fn request_args<'a>(request: [&'a str; 4], context: &'a str) -> Vec<&'a str> {
    let [tenant, principal, action, resource] = request;
    vec![
        "--tenant",
        tenant,
        "--principal",
        principal,
        "--action",
        action,
        "--resource",
        resource,
        "--context",
        context,
    ]
}

/// `check [extra...]` followed by the options of one request.
fn check_args<'a>(extra: &[&'a str], request: [&'a str; 4], context: &'a str) -> Vec<&'a str> {
    let mut args = vec!["check"];
    args.extend(extra);
    args.extend(request_args(request, context));
    args
}

fn context(country: &str) -> String {
    format!(r#"{{"country":"{country}","now":{{"__extn":{{"fn":"datetime","arg":"{NOW}"}}}}}}"#)
}

#[test]
fn validate_accepts_the_example_and_lists_every_problem_with_file_and_line() {
    let cwd = tempfile::tempdir().unwrap();
    let validate = |policies: &Path, entitlements: &Path| {
        tollgate_on(&["validate"], policies, entitlements, cwd.path())
    };
    let output = validate(&example_policies(), &example_entitlements());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let (policies, tenants) = example_counts();
    assert!(
        stdout.starts_with(&format!("ok: {policies} policies")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{tenants} tenant snapshots")),
        "{stdout}"
    );

    let dirs = DataDirs::copy_examples();
    replace_file(
        &dirs.policies.join("plans.cedar"),
        &read(&dirs.policies.join("plans.cedar"))
            .replace("principal.account.tier >=", "principal.account.tierx >="),
    );
    replace_file(
        &dirs.policies.join("geo.cedar"),
        "\n\npermit(principal action, resource);\n",
    );
    let output = validate(&dirs.policies, &dirs.entitlements);
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("geo.cedar:3:18: unexpected token `action`"),
        "{stdout}"
    );
    assert!(stdout.contains("plans.cedar:8:"), "{stdout}");
    assert!(stdout.contains("`tierx`"), "{stdout}");
    assert!(stdout.contains("2 problems found"), "{stdout}");

    // A snapshot that does not fit the schema is named with the attribute.
    let dirs = DataDirs::copy_examples();
    replace_file(
        &dirs.entitlements.join("acme.json"),
        &read(&dirs.entitlements.join("acme.json")).replace("\"tier\": 1", "\"tier\": \"one\""),
    );
    let output = validate(&dirs.policies, &dirs.entitlements);
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("acme.json"), "{stdout}");
    assert!(
        stdout.contains("in attribute `tier` on `Account::\"acme\"`"),
        "{stdout}"
    );
}

#[test]
fn check_decides_locally_with_exit_codes_and_json() {
    let cwd = tempfile::tempdir().unwrap();
    let (policies, entitlements) = (example_policies(), example_entitlements());
    let check = |args: &[&str]| tollgate_on(args, &policies, &entitlements, cwd.path());
    let pdf_export = ["acme", "User:bob", "use", "Feature:pdf-export"];

    let allow_context = context("BR");
    let output = check(&check_args(&[], pdf_export, &allow_context));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("ALLOW\n"), "{stdout}");
    assert!(
        stdout.contains("reason: member_role [permit members-use]"),
        "{stdout}"
    );

    let deny_context = context("CN");
    let payments = ["acme", "User:bob", "use", "Feature:payments"];
    let output = check(&check_args(&["--json"], payments, &deny_context));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["decision"], "DENY");
    assert_eq!(json["reasons"][0]["code"], "geo_restricted");
    assert_eq!(json["reasons"][0]["policy_id"], "outside-allowed-countries");
    assert_eq!(json["freshness"]["source"], "FILE");

    // A request that does not fit the schema: exit 2, the field named.
    let bad_context = r#"{"country": 3}"#;
    let output = check(&check_args(&[], pdf_export, bad_context));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("context.country: expected String, got Long"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_remote_asks_a_running_server() {
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[],
    );
    let address = server.addr.to_string();
    let cwd = tempfile::tempdir().unwrap();
    let deny_context = context("BR");
    let request = ["hooli", "User:gavin", "use", "Feature:pdf-export"];
    let args = check_args(&["--remote", &address], request, &deny_context);
    let output = tollgate_blocking(&args, cwd.path()).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("DENY\n"), "{stdout}");
    assert!(
        stdout.contains("reason: tier_too_low [forbid tier-too-low]"),
        "{stdout}"
    );
    // The listing over gRPC: the same table as from the files.
    let listing = [
        "entitlements",
        "--remote",
        &address,
        "--tenant",
        "hooli",
        "--principal",
        "User:gavin",
        "--action",
        "use",
        "--context",
        r#"{"country":"US"}"#,
    ];
    let output = tollgate_blocking(&listing, cwd.path()).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()
                == [
                    "Feature:pdf-export",
                    "use",
                    "no",
                    "tier_too_low",
                    "pro",
                    "(plan)"
                ]),
        "{stdout}"
    );
    drop(server);

    // Nobody listening any more: exit 3.
    let output = tollgate_blocking(&args, cwd.path()).await;
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to {address}: connection refused")),
        "{stderr}"
    );
}

#[test]
fn bad_configuration_lists_every_problem_and_exits_2_before_listening() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("tollgate.yaml"),
        "listen: nowhere\nmax_batch: 0\nunknown_key: 1\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .current_dir(cwd.path())
        .env_clear()
        .env("TOLLGATE_STRICT_PRINCIPAL", "false")
        .stdin(Stdio::null())
        .output()
        .expect("run tollgate");
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("invalid configuration (6 problems)"),
        "{stderr}"
    );
    for expected in [
        "unknown key `unknown_key`",
        "unknown environment variable TOLLGATE_STRICT_PRINCIPAL",
        "listen (from tollgate.yaml): `nowhere` is not a socket address",
        "max_batch (from tollgate.yaml): must be at least 1",
        "policies (from default): `./policies` is not a directory",
        "entitlements (from default): `./entitlements` is not a directory",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn check_explain_shows_every_policy_whose_scope_matched() {
    let cwd = tempfile::tempdir().unwrap();
    let (policies, entitlements) = (example_policies(), example_entitlements());
    let deny_context = context("CN");
    let args = check_args(
        &["--explain"],
        ["acme", "User:bob", "use", "Feature:payments"],
        &deny_context,
    );
    let output = tollgate_on(&args, &policies, &entitlements, cwd.path());
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("  policies whose scope matched:"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "    forbid outside-allowed-countries: satisfied: blocks (geo_restricted: this feature is not available in your country)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("    permit members-use: satisfied: grants (member_role)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    forbid tier-too-low: not satisfied"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("viewers-view"),
        "other actions' rules are left out:\n{stdout}"
    );
}

#[test]
fn entitlements_lists_what_a_user_may_do_and_what_if_answers_hypothetically() {
    let cwd = tempfile::tempdir().unwrap();
    let (policies, entitlements) = (example_policies(), example_entitlements());
    let run = |args: &[&str]| tollgate_on(args, &policies, &entitlements, cwd.path());
    let gavin = [
        "entitlements",
        "--tenant",
        "hooli",
        "--principal",
        "User:gavin",
        "--action",
        "use",
        "--context",
        r#"{"country":"US"}"#,
    ];

    // The table: one line per feature, the offer that unlocks each denial.
    let output = run(&gavin);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let row = |resource: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(&format!("{resource} ")))
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no row {resource}:\n{stdout}"))
    };
    assert_eq!(
        stdout
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["RESOURCE", "ACTION", "ALLOWED", "REASON", "USAGE", "UNLOCKED", "BY"]
    );
    assert_eq!(
        row("Feature:pdf-export"),
        [
            "Feature:pdf-export",
            "use",
            "no",
            "tier_too_low",
            "pro",
            "(plan)"
        ]
    );
    assert_eq!(
        row("Feature:dashboards"),
        ["Feature:dashboards", "use", "yes", "member_role"]
    );
    assert_eq!(
        row("Feature:e-invoicing"),
        [
            "Feature:e-invoicing",
            "use",
            "no",
            "region_restricted,",
            "tier_too_low",
            "(no",
            "offer)"
        ]
    );
    assert!(stdout.contains("8 items; policy_version "), "{stdout}");

    // As JSON, and as if hooli were on pro: pdf-export allowed, hypothetical.
    let mut what_if = gavin.to_vec();
    what_if.extend(["--json", "--what-if", "Account:hooli.tier=1"]);
    let output = run(&what_if);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["hypothetical"], true);
    let pdf = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["resource"]["id"] == "pdf-export")
        .unwrap();
    assert_eq!(pdf["decision"], "DECISION_ALLOW");

    // `check --what-if` answers the same question, marked hypothetical.
    let request = ["hooli", "User:gavin", "use", "Feature:pdf-export"];
    let allow_context = context("US");
    let output = run(&check_args(
        &["--json", "--what-if", "Account:hooli.tier=1"],
        request,
        &allow_context,
    ));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["decision"], "ALLOW");
    assert_eq!(json["hypothetical"], true);
    let output = run(&check_args(
        &["--what-if", "Account:hooli.tier=1"],
        request,
        &allow_context,
    ));
    assert!(
        text(&output.stdout)
            .contains("  HYPOTHETICAL: decided with --what-if; nothing was counted"),
        "{}",
        text(&output.stdout)
    );

    // A bad override or action is refused, naming it, with exit code 2.
    let mut bad = gavin.to_vec();
    bad.extend(["--what-if", "Account:hooli.tier"]);
    let output = run(&bad);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr).trim(),
        "error: --what-if `Account:hooli.tier`: expected Type:id.attribute=JSON"
    );
    let mut fly = gavin.to_vec();
    fly[6] = "fly";
    let output = run(&fly);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr).trim(),
        "error: actions[0]: action `Action::\"fly\"` is not declared in the schema"
    );
}

/// The process's transparent huge pages setting, from `/proc/<pid>/status`
/// (`THP_enabled: 0` once it has opted out).
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no THP_enabled line:\n{status}"))
        .trim()
        .to_string()
}

#[test]
fn serve_opts_out_of_transparent_huge_pages_unless_configured() {
    let by_default = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[],
    );
    assert_eq!(thp_enabled(by_default.pid()), "0");
    let allowed = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &example_policies(),
        &example_entitlements(),
        &[("TOLLGATE_TRANSPARENT_HUGE_PAGES", "true")],
    );
    assert_eq!(thp_enabled(allowed.pid()), "1");
}
