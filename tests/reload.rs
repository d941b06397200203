//! Hot reload: policy and snapshot files change under a running server (file
//! watch, Kubernetes ConfigMap symlink swaps, SIGHUP) while clients keep asking.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tollgate::api::pb;
use tollgate_testkit::prelude::*;
use tonic_health::pb::health_check_response::ServingStatus;

/// A policy that lets viewers use features: appended to `roles.cedar`, it turns
/// carol's (a viewer's) `use` from DENY no_permit into ALLOW viewers-use.
const VIEWERS_USE: &str = r#"
@id("viewers-use")
@code("viewer_use")
@reason("viewers may use features too")
permit (principal in Role::"viewer", action == Action::"use", resource);
"#;

fn carol_uses_dashboards() -> pb::CheckRequest {
    check("acme", "User:carol", "use", "Feature:dashboards")
}

fn bob_uses_pdf_export() -> pb::CheckRequest {
    check("acme", "User:bob", "use", "Feature:pdf-export")
}

/// Asserts hooli still serves its first snapshot: gavin may use dashboards.
async fn assert_hooli_untouched(
    client: &mut tollgate::api::pb::entitlement_service_client::EntitlementServiceClient<
        tonic::transport::Channel,
    >,
) {
    let hooli = decide(client, check_str("hooli User:gavin use Feature:dashboards")).await;
    assert_eq!(snapshot_version(&hooli), 1, "{}", summary(&hooli));
    assert_decision(&hooli, pb::Decision::Allow);
}

/// `roles.cedar` with [`VIEWERS_USE`] appended.
fn roles_with_viewers_use(original: &str) -> String {
    format!("{original}\n{VIEWERS_USE}")
}

fn is_old_answer(response: &pb::CheckResponse) -> bool {
    decision(response) == pb::Decision::Deny && codes(response) == ["no_permit"]
}

fn is_new_answer(response: &pb::CheckResponse) -> bool {
    decision(response) == pb::Decision::Allow && policy_ids(response) == ["viewers-use"]
}

/// Sends `request` on a fresh connection until `wanted` holds for the answer
/// (bounded); returns that answer.
async fn wait_for_answer(
    url: &str,
    what: &str,
    request: pb::CheckRequest,
    wanted: impl Fn(&pb::CheckResponse) -> bool,
) -> pb::CheckResponse {
    let wanted = &wanted;
    let request = &request;
    wait_until(what, || async move {
        let mut client = connect(url).await;
        let response = send(&mut client, request.clone())
            .await
            .map_err(|status| format!("{status:?}"))?;
        if wanted(&response) {
            Ok(response)
        } else {
            Err(summary(&response))
        }
    })
    .await
}

/// Waits (bounded) until carol's `use` is allowed by `viewers-use`.
async fn wait_for_viewers_use(url: &str) -> pb::CheckResponse {
    wait_for_answer(
        url,
        "the new policy (viewers-use) to decide",
        carol_uses_dashboards(),
        is_new_answer,
    )
    .await
}

/// Waits (bounded) until bob's `use` of pdf-export is decided with acme's
/// snapshot `version`.
async fn wait_for_acme_version(url: &str, version: u64) -> pb::CheckResponse {
    wait_for_answer(
        url,
        &format!("acme snapshot version {version}"),
        bob_uses_pdf_export(),
        |response| snapshot_version(response) == version,
    )
    .await
}

/// Rewrites a tenant snapshot: sets its version and the role of `user`.
fn snapshot_with(original: &str, version: u64, user: &str, role: &str) -> String {
    let mut document: serde_json::Value = serde_json::from_str(original).expect("snapshot JSON");
    document["version"] = serde_json::json!(version);
    let entities = document["entities"].as_array_mut().expect("entities array");
    let entity = entities
        .iter_mut()
        .find(|e| e["uid"]["type"] == "User" && e["uid"]["id"] == user)
        .unwrap_or_else(|| panic!("user {user} in the snapshot"));
    entity["parents"] = serde_json::json!([{"type": "Role", "id": role}]);
    serde_json::to_string_pretty(&document).expect("serialize snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_replaced_while_clients_keep_checking() {
    let dirs = DataDirs::copy_examples();
    let server = InProcess::start(dirs.config()).await;
    let url = server.url();

    let mut client = connect(&url).await;
    let before = decide(&mut client, carol_uses_dashboards()).await;
    assert!(is_old_answer(&before), "{}", summary(&before));
    let old_version = policy_version(&before);

    // Clients asking without pause, each recording every answer in order. Each
    // runs until told to stop and it has seen the new policy (or a bound passes).
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        let stop = Arc::clone(&stop);
        let calls = Arc::new(AtomicUsize::new(0));
        counters.push(Arc::clone(&calls));
        loops.push(tokio::spawn(async move {
            let deadline = Instant::now() + WAIT * 3;
            let mut client = connect(&url).await;
            let mut answers = Vec::new();
            let mut switched = false;
            while !(stop.load(Ordering::Relaxed) && switched) && Instant::now() < deadline {
                let answer = send(&mut client, carol_uses_dashboards()).await;
                switched |= answer.as_ref().is_ok_and(is_new_answer);
                answers.push(answer);
                calls.fetch_add(1, Ordering::Relaxed);
            }
            answers
        }));
    }
    // Every client has been answered by the old set before the file changes.
    wait_until("every client loop to make a few calls", || {
        let counts: Vec<usize> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        async move {
            if counts.iter().all(|&n| n >= 5) {
                Ok(())
            } else {
                Err(format!("calls per loop {counts:?}"))
            }
        }
    })
    .await;

    let roles = dirs.policies.join("roles.cedar");
    replace_file(&roles, &roles_with_viewers_use(&read(&roles)));
    let after = wait_for_viewers_use(&url).await;
    let new_version = policy_version(&after);
    assert_ne!(
        old_version, new_version,
        "policy_version changes with the text"
    );
    assert_eq!(codes(&after), ["viewer_use"]);
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for (index, handle) in loops.into_iter().enumerate() {
        let answers = handle.await.expect("client loop");
        total += answers.len();
        let mut old_seen = 0;
        let mut new_seen = 0;
        for (call, answer) in answers.iter().enumerate() {
            let response = answer
                .as_ref()
                .unwrap_or_else(|status| panic!("loop {index} call {call} failed: {status:?}"));
            let version = policy_version(response);
            if is_new_answer(response) {
                assert_eq!(version, new_version, "loop {index} call {call}");
                new_seen += 1;
            } else {
                assert!(
                    is_old_answer(response),
                    "loop {index} call {call}: neither the old nor the new answer: {}",
                    summary(response)
                );
                assert_eq!(version, old_version, "loop {index} call {call}");
                assert_eq!(
                    new_seen, 0,
                    "loop {index} call {call}: old answer after the new one was served"
                );
                old_seen += 1;
            }
        }
        assert!(
            old_seen >= 5,
            "loop {index} saw the old set {old_seen} times"
        );
        assert!(
            new_seen >= 1,
            "loop {index} never saw the new set within the bound"
        );
    }
    eprintln!("{total} checks during the reload, none failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_edits_change_nothing() {
    let dirs = DataDirs::copy_examples();
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &dirs.policies,
        &dirs.entitlements,
        &[("TOLLGATE_RELOAD_DEBOUNCE_MS", "50")],
    );
    let channel = channel(&server.url()).await;
    let mut client = connect(&server.url()).await;
    let baseline_carol = decide(&mut client, carol_uses_dashboards()).await;
    let baseline_bob = decide(&mut client, bob_uses_pdf_export()).await;
    assert!(
        is_old_answer(&baseline_carol),
        "{}",
        summary(&baseline_carol)
    );
    assert_decision(&baseline_bob, pb::Decision::Allow);
    let version = policy_version(&baseline_carol);

    let roles = dirs.policies.join("roles.cedar");
    let original = read(&roles);
    let wanted = roles_with_viewers_use(&original);
    let broken_line = wanted.lines().count() + 1;
    let edits = [
        (
            "syntax error",
            "roles.cedar",
            format!("{wanted}permit (principal, action, resource\n"),
            broken_line,
            "unexpected end of input",
        ),
        (
            "attribute the schema does not declare",
            "roles.cedar",
            format!(
                "{wanted}permit (principal, action, resource) when {{ principal.nope == 1 }};\n"
            ),
            broken_line,
            "attribute `nope`",
        ),
        (
            "duplicate policy id",
            "roles.cedar",
            format!("{wanted}{VIEWERS_USE}"),
            broken_line + 1,
            "duplicate policy id `viewers-use`",
        ),
    ];
    for (what, file, text, line, message) in edits {
        let from = server.log_len();
        replace_file(&dirs.policies.join(file), &text);
        let problem = server
            .wait_for_log(from, &["policy problem", file, message])
            .await;
        assert!(
            problem.contains(&format!("line={line}")),
            "{what}: the problem names line {line}: {problem}"
        );
        assert!(problem.contains(message), "{what}: {problem}");
        server.wait_for_log(from, &["policy reload rejected"]).await;
        let carol = decide(&mut client, carol_uses_dashboards()).await;
        let bob = decide(&mut client, bob_uses_pdf_export()).await;
        assert!(is_old_answer(&carol), "{what}: {}", summary(&carol));
        assert_eq!(
            decision(&bob),
            pb::Decision::Allow,
            "{what}: {}",
            summary(&bob)
        );
        assert_eq!(
            policy_version(&carol),
            version,
            "{what}: policy_version unchanged"
        );
        assert_eq!(
            policy_version(&bob),
            version,
            "{what}: policy_version unchanged"
        );
        assert_eq!(
            health(&channel, "").await.expect("health"),
            ServingStatus::Serving,
            "{what}: still serving"
        );
    }

    // A broken schema is refused too, and the roles file can be fixed meanwhile.
    let schema = dirs.policies.join("schema.cedarschema");
    let good_schema = read(&schema);
    let from = server.log_len();
    replace_file(
        &schema,
        &format!("{good_schema}\nentity Broken = {{ oops }};\n"),
    );
    server
        .wait_for_log(from, &["policy problem", "schema.cedarschema"])
        .await;
    server.wait_for_log(from, &["policy reload rejected"]).await;
    let carol = decide(&mut client, carol_uses_dashboards()).await;
    assert!(is_old_answer(&carol), "broken schema: {}", summary(&carol));
    assert_eq!(policy_version(&carol), version);

    // Fixing everything applies the intended edit: the watcher still works.
    replace_file(&schema, &good_schema);
    replace_file(&roles, &wanted);
    let after = wait_for_viewers_use(&server.url()).await;
    assert_ne!(policy_version(&after), version);
    let loaded = server
        .wait_for_log(0, &["policy set loaded", &policy_version(&after)])
        .await;
    let (_, tenants) = example_counts();
    assert!(loaded.contains(&format!("tenants={tenants}")), "{loaded}");
}

/// Lays out `files` as Kubernetes mounts a ConfigMap: the files in
/// `..<generation>/`, `..data -> ..<generation>`, and `name -> ..data/name`.
fn configmap_create(dir: &Path, generation: &str, files: &[(String, String)]) {
    std::fs::create_dir_all(dir.join(generation)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(generation).join(name), text).unwrap();
    }
    std::os::unix::fs::symlink(generation, dir.join("..data")).unwrap();
    for (name, _) in files {
        std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
    }
}

/// Updates a ConfigMap mount the way the kubelet does: a new generation
/// directory, `..data_tmp -> ..<new>`, rename `..data_tmp` over `..data`,
/// remove the old generation.
fn configmap_swap(dir: &Path, old: &str, new: &str, files: &[(String, String)]) {
    std::fs::create_dir_all(dir.join(new)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(new).join(name), text).unwrap();
    }
    std::os::unix::fs::symlink(new, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(old)).unwrap();
}

fn files_of(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                read(&path),
            )
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_picked_up() {
    let root = tempfile::tempdir().unwrap();
    let policies = root.path().join("policies");
    let entitlements = root.path().join("entitlements");
    let policy_files = files_of(&example_policies());
    let snapshot_files = files_of(&example_entitlements());
    configmap_create(&policies, "..2026_11_27_a", &policy_files);
    configmap_create(&entitlements, "..2026_11_27_a", &snapshot_files);

    let mut config = tollgate::config::Config::with_dirs(policies.clone(), entitlements.clone());
    config.reload_debounce = std::time::Duration::from_millis(50);
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    let before = decide(&mut client, carol_uses_dashboards()).await;
    assert!(is_old_answer(&before), "{}", summary(&before));
    assert_eq!(
        snapshot_version(&before),
        1,
        "snapshots load through the symlinks"
    );

    // New policy generation.
    let updated: Vec<(String, String)> = policy_files
        .iter()
        .map(|(name, text)| {
            let text = if name == "roles.cedar" {
                roles_with_viewers_use(text)
            } else {
                text.clone()
            };
            (name.clone(), text)
        })
        .collect();
    configmap_swap(&policies, "..2026_11_27_a", "..2026_11_27_b", &updated);
    let after = wait_for_viewers_use(&server.url()).await;
    assert_ne!(policy_version(&after), policy_version(&before));

    // New snapshot generation: bob demoted to viewer at version 2.
    let updated: Vec<(String, String)> = snapshot_files
        .iter()
        .map(|(name, text)| {
            let text = if name == "acme.json" {
                snapshot_with(text, 2, "bob", "viewer")
            } else {
                text.clone()
            };
            (name.clone(), text)
        })
        .collect();
    configmap_swap(&entitlements, "..2026_11_27_a", "..2026_11_27_b", &updated);
    let url = server.url();
    let demoted = wait_for_acme_version(&url, 2).await;
    // As a viewer, bob now gets his `use` only through viewers-use.
    assert_decision(&demoted, pb::Decision::Allow);
    assert_eq!(
        policy_ids(&demoted),
        ["viewers-use"],
        "{}",
        summary(&demoted)
    );
    // Other tenants are untouched.
    assert_hooli_untouched(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_versions_only_go_forward() {
    let dirs = DataDirs::copy_examples();
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &dirs.policies,
        &dirs.entitlements,
        &[("TOLLGATE_RELOAD_DEBOUNCE_MS", "50")],
    );
    let url = server.url();
    let mut client = connect(&url).await;
    let before = decide(&mut client, bob_uses_pdf_export()).await;
    assert_decision(&before, pb::Decision::Allow);
    assert_eq!(snapshot_version(&before), 1);

    let acme = dirs.entitlements.join("acme.json");
    let original = read(&acme);

    // Version 2 demotes bob to viewer: picked up.
    replace_file(&acme, &snapshot_with(&original, 2, "bob", "viewer"));
    let demoted = wait_for_acme_version(&url, 2).await;
    expect_decision(&demoted, pb::Decision::Deny, &["no_permit"]);
    assert_eq!(
        policy_version(&demoted),
        policy_version(&before),
        "policies untouched"
    );
    server
        .wait_for_log(0, &["snapshot loaded", "tenant=acme", "version=2"])
        .await;

    // Version 1 again (bob a member): older, refused; version 2 keeps serving.
    let from = server.log_len();
    replace_file(&acme, &snapshot_with(&original, 1, "bob", "member"));
    let refused = server
        .wait_for_log(
            from,
            &["snapshot rejected", "acme.json", "older than the serving"],
        )
        .await;
    assert!(
        refused.contains("older than the serving version 2"),
        "{refused}"
    );
    let still = decide(&mut client, bob_uses_pdf_export()).await;
    assert_eq!(snapshot_version(&still), 2, "{}", summary(&still));
    assert_decision(&still, pb::Decision::Deny);

    // Same version, different content: refused.
    let from = server.log_len();
    replace_file(&acme, &snapshot_with(&original, 2, "bob", "admin"));
    let refused = server
        .wait_for_log(from, &["snapshot rejected", "acme.json", "not increased"])
        .await;
    assert!(refused.contains("version 2 was not increased"), "{refused}");
    let still = decide(&mut client, bob_uses_pdf_export()).await;
    assert_eq!(snapshot_version(&still), 2);
    assert_decision(&still, pb::Decision::Deny);

    // A snapshot that does not fit the schema: refused.
    let from = server.log_len();
    replace_file(
        &acme,
        &original
            .replacen("\"version\": 1", "\"version\": 9", 1)
            .replacen("\"tier\": 1", "\"tier\": \"one\"", 1),
    );
    server
        .wait_for_log(
            from,
            &["snapshot rejected", "acme.json", "do not match the schema"],
        )
        .await;
    let still = decide(&mut client, bob_uses_pdf_export()).await;
    assert_eq!(snapshot_version(&still), 2);

    // Version 3 (bob a member again): picked up.
    replace_file(&acme, &snapshot_with(&original, 3, "bob", "member"));
    let restored = wait_for_acme_version(&url, 3).await;
    assert_decision(&restored, pb::Decision::Allow);

    // Other tenants kept their snapshots all along.
    assert_hooli_untouched(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_policies_and_snapshots() {
    let dirs = DataDirs::copy_examples();
    // A debounce of an hour: within this test only SIGHUP can reload.
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_tollgate"),
        &dirs.policies,
        &dirs.entitlements,
        &[("TOLLGATE_RELOAD_DEBOUNCE_MS", "3600000")],
    );
    let mut client = connect(&server.url()).await;
    let before = decide(&mut client, carol_uses_dashboards()).await;
    assert!(is_old_answer(&before), "{}", summary(&before));
    assert_eq!(snapshot_version(&before), 1);

    let roles = dirs.policies.join("roles.cedar");
    let original_roles = read(&roles);
    replace_file(&roles, &roles_with_viewers_use(&original_roles));
    let acme = dirs.entitlements.join("acme.json");
    replace_file(&acme, &snapshot_with(&read(&acme), 2, "bob", "viewer"));

    // Files changed but nothing reloads until the signal.
    let unchanged = decide(&mut client, carol_uses_dashboards()).await;
    assert!(is_old_answer(&unchanged), "{}", summary(&unchanged));
    assert_eq!(snapshot_version(&unchanged), 1);

    let from = server.log_len();
    server.signal("HUP");
    server
        .wait_for_log(from, &["reloading policies and entitlements", "SIGHUP"])
        .await;
    // SIGHUP reloads the policies, then the snapshots: wait for both.
    let after = wait_for_answer(
        &server.url(),
        "viewers-use and acme snapshot version 2 after SIGHUP",
        carol_uses_dashboards(),
        |response| is_new_answer(response) && snapshot_version(response) == 2,
    )
    .await;
    let bob = decide(&mut client, bob_uses_pdf_export()).await;
    assert_eq!(policy_ids(&bob), ["viewers-use"], "{}", summary(&bob));
    let new_version = policy_version(&after);
    server
        .wait_for_log(
            from,
            &[
                "policy set loaded",
                &format!("policy_version={new_version}"),
            ],
        )
        .await;

    // A broken file and SIGHUP: refused, the process keeps serving.
    replace_file(&roles, &format!("{original_roles}\npermit (principal,"));
    let from = server.log_len();
    server.signal("HUP");
    server.wait_for_log(from, &["policy reload rejected"]).await;
    let still = decide(&mut client, carol_uses_dashboards()).await;
    assert!(is_new_answer(&still), "{}", summary(&still));
    assert_eq!(policy_version(&still), new_version);
    let channel = channel(&server.url()).await;
    assert_eq!(health(&channel, "").await.unwrap(), ServingStatus::Serving);
}
