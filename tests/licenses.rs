//! Signed licenses, end to end: issued with the library `tollgate license
//! issue` uses, served from a licenses directory by a running server, and
//! refused for every reason a user can meet.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as URL_SAFE;
use base64::Engine as _;
use tollgate::api::pb;
use tollgate::config::{Config, LicenseConfig};
use tollgate::license::set::Installation;
use tollgate::license::{issue, Claims, IssueRequest, PrivateKey, TOKEN_TYPE};
use tollgate::metering::Clock;
use tollgate_testkit::fixtures::policies;
use tollgate_testkit::prelude::*;
use tollgate_testkit::redis_server::{put, redis_config, settings, RedisServer};

/// Issue times of the licenses these tests write (2026-11-01T00:00:00Z).
const ISSUED: i64 = 1_793_491_200;
/// Their expiry, well after the tests' requests (2030-01-01).
const FAR: i64 = 1_893_456_000;

/// A vendor: signing keys, and a sidecar's trusted keys and licenses
/// directories.
struct Vendor {
    _root: tempfile::TempDir,
    keys: PathBuf,
    licenses: PathBuf,
    key: PrivateKey,
}

impl Vendor {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let keys = root.path().join("keys");
        let licenses = root.path().join("licenses");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::create_dir_all(&licenses).unwrap();
        let vendor = Self {
            _root: root,
            keys,
            licenses,
            key: PrivateKey::generate().unwrap(),
        };
        vendor.trust(&vendor.key);
        vendor
    }

    fn trust(&self, key: &PrivateKey) {
        write_atomically(
            &self.keys.join(format!("{}.pem", key.kid)),
            &key.public_pem().unwrap(),
        );
    }

    /// A license of `snapshot`, signed by `key`, with `edit` applied to the
    /// default terms (issued at [`ISSUED`], valid until [`FAR`]).
    fn issue_with(
        &self,
        key: &PrivateKey,
        snapshot: &[u8],
        edit: impl FnOnce(&mut IssueRequest<'_>),
    ) -> String {
        let mut request = IssueRequest {
            snapshot,
            id: None,
            issued_at: ISSUED,
            not_before: ISSUED,
            expires: FAR,
            grace: 0,
            bind: Default::default(),
        };
        edit(&mut request);
        issue(&request, &policies(), key).unwrap().0
    }

    fn issue(&self, snapshot: &[u8]) -> String {
        self.issue_with(&self.key, snapshot, |_| {})
    }

    fn deliver(&self, name: &str, token: &str) {
        write_atomically(
            &self.licenses.join(format!("{name}.license")),
            &format!("{token}\n"),
        );
    }

    fn license_config(&self) -> LicenseConfig {
        LicenseConfig {
            dir: self.licenses.clone(),
            keys: self.keys.clone(),
            poll: Duration::from_millis(200),
            clock_file: None,
            skew: Duration::from_secs(60),
            installation: Installation {
                install: Some("install-a".to_string()),
                hostname: None,
                cluster: None,
            },
        }
    }

    /// A configuration serving the shipped policies with tenants from these
    /// licenses, judged by `clock`.
    fn config(&self, dirs: &DataDirs, clock: Clock) -> Config {
        let mut config = dirs.config();
        config.licenses = Some(self.license_config());
        config.clock = clock;
        config
    }
}

/// A config's metrics and status listener on a free loopback port; its
/// `host:port`.
fn with_metrics(config: &mut Config) -> String {
    let address =
        std::net::SocketAddr::from(([127, 0, 0, 1], tollgate_testkit::redis_server::free_port()));
    config.metrics_listen = Some(address);
    address.to_string()
}

/// `GET path` on `address` (`host:port`), once it answers.
async fn get(address: &str, path: &str) -> String {
    wait_until(&format!("GET {path} on {address}"), || async move {
        let mut client = HttpClient::connect(address).await?;
        let answer = client.get(path).await?;
        Ok(String::from_utf8_lossy(&answer.body).into_owned())
    })
    .await
}

fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn snapshot_file(tenant: &str) -> Vec<u8> {
    std::fs::read(example_entitlements().join(format!("{tenant}.json"))).unwrap()
}

/// The shipped snapshot of `tenant` with `version` and `edit` applied.
fn snapshot_with(tenant: &str, version: u64, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut document: serde_json::Value = serde_json::from_slice(&snapshot_file(tenant)).unwrap();
    document["version"] = version.into();
    edit(&mut document);
    serde_json::to_vec(&document).unwrap()
}

/// A clock the test moves (Unix seconds).
fn clock_at(seconds: &Arc<AtomicI64>) -> Clock {
    let seconds = Arc::clone(seconds);
    Clock::from_fn(move || seconds.load(Ordering::Relaxed) * 1000)
}

fn source(response: &pb::CheckResponse) -> pb::SnapshotSource {
    response
        .freshness
        .as_ref()
        .and_then(|f| pb::SnapshotSource::try_from(f.source).ok())
        .unwrap_or_default()
}

fn terms(response: &pb::CheckResponse) -> Option<pb::LicenseTerms> {
    response.freshness.as_ref().and_then(|f| f.license.clone())
}

/// Every user of `tenant`'s snapshot, on every feature and on the account,
/// with every action its schema allows there, from two countries.
fn requests_of(tenant: &str) -> Vec<pb::CheckRequest> {
    let document: serde_json::Value = serde_json::from_slice(&snapshot_file(tenant)).unwrap();
    let ids = |kind: &str| -> Vec<String> {
        document["entities"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["uid"]["type"] == kind)
            .map(|e| e["uid"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut requests = Vec::new();
    for user in ids("User") {
        for feature in ids("Feature") {
            for action in ["use", "view"] {
                for country in ["BR", "KP"] {
                    let mut request = check(
                        tenant,
                        &format!("User:{user}"),
                        action,
                        &format!("Feature:{feature}"),
                    );
                    if action == "use" {
                        request
                            .context
                            .insert("country".to_string(), string(country));
                    }
                    requests.push(request);
                }
            }
        }
        for account in ids("Account") {
            for action in ["administer", "manage_billing"] {
                requests.push(check(
                    tenant,
                    &format!("User:{user}"),
                    action,
                    &format!("Account:{account}"),
                ));
            }
        }
    }
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licenses_decide_as_the_files_do_for_every_catalog_tenant() {
    let dirs = DataDirs::copy_examples();
    let vendor = Vendor::new();
    let mut tenants: Vec<String> = std::fs::read_dir(example_entitlements())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    tenants.sort();
    assert_eq!(tenants.len(), example_counts().1, "{tenants:?}");
    for tenant in &tenants {
        vendor.deliver(tenant, &vendor.issue(&snapshot_file(tenant)));
    }
    let files = InProcess::start(dirs.config()).await;
    let licensed = InProcess::start(vendor.config(&dirs, Clock::system())).await;
    let mut from_files = connect(&files.url()).await;
    let mut from_licenses = connect(&licensed.url()).await;
    let mut compared = 0;
    let mut allowed = 0;
    for tenant in &tenants {
        for request in requests_of(tenant) {
            let want = decide(&mut from_files, request.clone()).await;
            let got = decide(&mut from_licenses, request.clone()).await;
            assert_eq!(
                (decision(&got), codes(&got), policy_ids(&got)),
                (decision(&want), codes(&want), policy_ids(&want)),
                "{request:?}"
            );
            assert_eq!(source(&want), pb::SnapshotSource::File);
            assert_eq!(
                source(&got),
                pb::SnapshotSource::License,
                "{}",
                summary(&got)
            );
            assert_eq!(snapshot_version(&got), snapshot_version(&want));
            let terms = terms(&got).expect("a license-sourced answer names its license");
            assert!(terms.license_id.starts_with("lic_"), "{terms:?}");
            assert_eq!((terms.expires_at, terms.in_grace), (FAR, false));
            compared += 1;
            allowed += usize::from(decision(&got) == pb::Decision::Allow);
        }
    }
    println!(
        "{compared} checks over {} tenants decided alike from files and licenses ({allowed} ALLOW)",
        tenants.len()
    );
    assert!(
        compared > 300 && allowed > 20,
        "{compared} compared, {allowed} allowed"
    );
    // A tenant without a license is unknown, as one without a file is.
    let unknown = decide(
        &mut from_licenses,
        check("nobody", "User:x", "use", "Feature:pdf-export"),
    )
    .await;
    expect_decision(&unknown, pb::Decision::Deny, &["unknown_tenant"]);
    drop((from_files, from_licenses));
    files.stop().await.unwrap();
    licensed.stop().await.unwrap();
}

#[test]
fn any_altered_byte_of_a_license_file_is_refused() {
    let vendor = Vendor::new();
    // A small license, so that every one of its bytes is tried.
    let small = br#"{"tenant":"tiny","version":1,"entities":[{"uid":{"type":"Account","id":"a"},"attrs":{"plan":"pro","tier":1,"addons":[]},"parents":[]},{"uid":{"type":"User","id":"u"},"attrs":{"account":{"__entity":{"type":"Account","id":"a"}}},"parents":[]}]}"#;
    let token = vendor.issue(small);
    let file = vendor.licenses.join("tiny.license");
    let original = format!("{token}\n").into_bytes();
    let policies = policies();
    let installation = vendor.license_config().installation;
    // What a store does on each reload, from no previous license (a store
    // keeps a tenant's last good license while its file is refused).
    let scan = || {
        tollgate::license::set::scan(
            &vendor.licenses,
            &vendor.keys,
            &installation,
            &policies,
            &Default::default(),
            ISSUED + 60,
            60,
        )
    };
    std::fs::write(&file, &original).unwrap();
    let untouched = scan();
    assert!(
        untouched.licenses.contains_key("tiny") && untouched.refused.is_empty(),
        "{untouched:?}"
    );

    // Each byte flipped in turn, each of three ways.
    let mut tried = 0;
    for index in 0..original.len() {
        for mask in [0x01u8, 0x20, 0x80] {
            let mut altered = original.clone();
            altered[index] ^= mask;
            std::fs::write(&file, &altered).unwrap();
            let scanned = scan();
            assert!(
                scanned.licenses.is_empty() && scanned.refused.len() == 1,
                "byte {index} ^ {mask:#04x} ({:?} -> {:?}) was not refused: {scanned:?}",
                original[index] as char,
                altered[index] as char
            );
            tried += 1;
        }
    }
    println!(
        "{tried} single-byte alterations of a {}-byte license, each refused",
        original.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_named_in_validate_and_its_tenant_is_not_served() {
    let dirs = DataDirs::copy_examples();
    let vendor = Vendor::new();
    let stranger = PrivateKey::generate().unwrap();
    let retired = PrivateKey::generate().unwrap();
    vendor.trust(&retired);
    let now = jiff::Timestamp::now().as_second();
    let cases: [(&str, String, &str); 8] = [
        ("acme", vendor.issue(&snapshot_file("acme")), ""),
        (
            "globex",
            vendor.issue_with(&stranger, &snapshot_file("globex"), |_| {}),
            "unknown key",
        ),
        (
            "hooli",
            vendor.issue_with(&retired, &snapshot_file("hooli"), |_| {}),
            "is revoked",
        ),
        (
            "initech",
            vendor.issue_with(&vendor.key, &snapshot_file("initech"), |r| {
                r.id = Some("lic-refunded".to_string())
            }),
            "license lic-refunded is revoked",
        ),
        (
            "soylent",
            vendor.issue_with(&vendor.key, &snapshot_file("soylent"), |r| {
                r.not_before = now + 86_400;
                r.expires = now + 10 * 86_400;
            }),
            "not yet valid: valid from",
        ),
        (
            "vandelay",
            vendor.issue_with(&vendor.key, &snapshot_file("vandelay"), |r| {
                r.not_before = now - 10 * 86_400;
                r.expires = now - 2 * 86_400;
                r.grace = 86_400;
            }),
            "expired past grace",
        ),
        (
            "bound",
            vendor.issue_with(
                &vendor.key,
                &snapshot_with("acme", 1, |d| d["tenant"] = "bound".into()),
                |r| {
                    r.bind
                        .insert("install".to_string(), "install-b".to_string());
                },
            ),
            "bound elsewhere: install is `install-b`, this installation's is `install-a`",
        ),
        (
            "altered",
            {
                let token = vendor.issue(&snapshot_with("acme", 1, |d| {
                    d["tenant"] = "altered".into()
                }));
                let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
                // The same claims re-encoded with one more entity: the
                // signature no longer covers them.
                let claims = URL_SAFE.decode(&parts[1]).unwrap();
                let mut claims: Claims = serde_json::from_slice(&claims).unwrap();
                claims.snapshot["entities"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!(
                        {"uid": {"type": "Role", "id": "owner2"}, "attrs": {}, "parents": []}
                    ));
                parts[1] = URL_SAFE.encode(serde_json::to_vec(&claims).unwrap());
                parts.join(".")
            },
            "bad signature",
        ),
    ];
    for (name, token, _) in &cases {
        vendor.deliver(name, token);
    }
    write_atomically(
        &vendor.keys.join("revoked.yaml"),
        &format!("keys: [{}]\nlicenses: [lic-refunded]\n", retired.kid),
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("validate")
        .env("TOLLGATE_POLICIES", &dirs.policies)
        .env("TOLLGATE_LICENSES", &vendor.licenses)
        .env("TOLLGATE_LICENSE_KEYS", &vendor.keys)
        .env("TOLLGATE_INSTALL_ID", "install-a")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for (name, _, reason) in &cases {
        let line = stdout
            .lines()
            .find(|line| line.contains(&format!("/{name}.license:")));
        match (reason.is_empty(), line) {
            (true, None) => {}
            (false, Some(line)) => {
                assert!(line.contains(reason), "{name}: `{line}` lacks `{reason}`")
            }
            (_, line) => panic!("{name}: {line:?}\n{stdout}"),
        }
    }
    assert!(stdout.contains("7 problems found"), "{stdout}");

    // `tollgate check` without --remote decides from the licenses too.
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "check",
            "--tenant",
            "acme",
            "--principal",
            "User:alice",
            "--action",
            "use",
        ])
        .args(["--resource", "Feature:pdf-export", "--context"])
        .arg(r#"{"country": "BR", "now": {"__extn": {"fn": "datetime", "arg": "2026-11-27"}}}"#)
        .env("TOLLGATE_POLICIES", &dirs.policies)
        .env("TOLLGATE_LICENSES", &vendor.licenses)
        .env("TOLLGATE_LICENSE_KEYS", &vendor.keys)
        .env("TOLLGATE_INSTALL_ID", "install-a")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(0), "{text}");
    assert!(text.starts_with("ALLOW\n"), "{text}");
    assert!(text.contains("(LICENSE, "), "{text}");
    assert!(text.contains("  license lic_"), "{text}");
    // The refused files are warned about on the way.
    let warnings = String::from_utf8_lossy(&checked.stderr);
    assert!(
        warnings.contains("globex.license: license refused: unknown key"),
        "{warnings}"
    );

    let server = InProcess::start(vendor.config(&dirs, Clock::system())).await;
    let mut client = connect(&server.url()).await;
    let served = decide(
        &mut client,
        check("acme", "User:alice", "use", "Feature:pdf-export"),
    )
    .await;
    assert_eq!(source(&served), pb::SnapshotSource::License);
    for tenant in ["globex", "hooli", "initech", "soylent", "bound", "altered"] {
        let refused = decide(
            &mut client,
            check(tenant, "User:x", "use", "Feature:pdf-export"),
        )
        .await;
        expect_decision(&refused, pb::Decision::Deny, &["unknown_tenant"]);
    }
    // An expired license still answers for its tenant: license_expired.
    let expired = decide(
        &mut client,
        check("vandelay", "User:x", "use", "Feature:pdf-export"),
    )
    .await;
    expect_decision(&expired, pb::Decision::Deny, &["license_expired"]);
    assert_eq!(source(&expired), pb::SnapshotSource::License);
    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_expiry_and_a_clock_set_back_are_answered_by_name() {
    let dirs = DataDirs::copy_examples();
    let vendor = Vendor::new();
    let now = Arc::new(AtomicI64::new(ISSUED + 10));
    vendor.deliver(
        "acme",
        &vendor.issue_with(&vendor.key, &snapshot_file("acme"), |r| {
            r.expires = ISSUED + 1_000;
            r.grace = 500;
        }),
    );
    let mut config = vendor.config(&dirs, clock_at(&now));
    let metrics = with_metrics(&mut config);
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    let request = || check("acme", "User:alice", "use", "Feature:pdf-export");
    let gauge = |text: &str, state: &str| -> Option<String> {
        let prefix = format!("tollgate_licenses{{state=\"{state}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix).map(str::to_string))
    };
    assert_eq!(
        gauge(&get(&metrics, "/metrics").await, "valid").as_deref(),
        Some("1")
    );

    let valid = decide(&mut client, request()).await;
    assert_eq!(decision(&valid), pb::Decision::Allow, "{}", summary(&valid));
    let valid_terms = terms(&valid).unwrap();
    assert_eq!(
        (
            valid_terms.expires_at,
            valid_terms.grace_ends_at,
            valid_terms.in_grace
        ),
        (ISSUED + 1_000, ISSUED + 1_500, false)
    );

    now.store(ISSUED + 1_200, Ordering::Relaxed);
    let grace = decide(&mut client, request()).await;
    assert_eq!(decision(&grace), pb::Decision::Allow, "{}", summary(&grace));
    assert!(terms(&grace).unwrap().in_grace, "{grace:?}");
    let scraped = get(&metrics, "/metrics").await;
    assert_eq!(gauge(&scraped, "grace").as_deref(), Some("1"), "{scraped}");
    assert_eq!(gauge(&scraped, "valid").as_deref(), Some("0"), "{scraped}");

    now.store(ISSUED + 1_501, Ordering::Relaxed);
    let expired = decide(&mut client, request()).await;
    expect_decision(&expired, pb::Decision::Deny, &["license_expired"]);
    assert_eq!(source(&expired), pb::SnapshotSource::License);
    assert_eq!(
        gauge(&get(&metrics, "/metrics").await, "expired").as_deref(),
        Some("1")
    );

    // Set back before the issue time (beyond the 60 s skew): not trusted,
    // whatever the license says.
    now.store(ISSUED - 3_600, Ordering::Relaxed);
    let backwards = decide(&mut client, request()).await;
    expect_decision(&backwards, pb::Decision::Deny, &["license_clock_invalid"]);
    let status = get(&metrics, "/status").await;
    assert!(
        status.contains("license checks answer license_clock_invalid"),
        "{status}"
    );
    // Within the skew it is trusted again.
    now.store(ISSUED - 30, Ordering::Relaxed);
    let within = decide(&mut client, request()).await;
    assert_eq!(
        decision(&within),
        pb::Decision::Allow,
        "{}",
        summary(&within)
    );
    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_replaces_a_license_on_reload_and_an_older_one_is_refused() {
    let dirs = DataDirs::copy_examples();
    let vendor = Vendor::new();
    // hooli's only user is on the free plan in version 1; version 2 moves the
    // account to enterprise.
    let free = snapshot_with("hooli", 1, |_| {});
    let upgraded = snapshot_with("hooli", 2, |document| {
        for entity in document["entities"].as_array_mut().unwrap() {
            if entity["uid"]["type"] == "Account" {
                entity["attrs"]["plan"] = "enterprise".into();
                entity["attrs"]["tier"] = 3.into();
            }
        }
    });
    vendor.deliver("hooli", &vendor.issue(&free));
    let mut config = vendor.config(&dirs, Clock::system());
    let metrics = with_metrics(&mut config);
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    let request = || check("hooli", "User:gavin", "use", "Feature:pdf-export");
    let before = decide(&mut client, request()).await;
    assert_eq!(
        decision(&before),
        pb::Decision::Deny,
        "{}",
        summary(&before)
    );
    assert_eq!(snapshot_version(&before), 1);

    vendor.deliver("hooli", &vendor.issue(&upgraded));
    let after = answer_until(
        &client,
        request(),
        "the upgraded license to serve",
        |response| snapshot_version(response) == 2,
    )
    .await;
    assert_eq!(decision(&after), pb::Decision::Allow, "{}", summary(&after));
    // Delivered beside the old file, an upgrade supersedes it: no problem
    // is reported for the old one.
    vendor.deliver(
        "hooli-2027",
        &vendor.issue(&snapshot_with("hooli", 3, |_| {})),
    );
    answer_until(&client, request(), "version 3 to serve", |response| {
        snapshot_version(response) == 3
    })
    .await;
    let status: serde_json::Value = serde_json::from_str(&get(&metrics, "/status").await).unwrap();
    assert_eq!(
        status["licenses"]["refused"],
        serde_json::json!([]),
        "{status}"
    );
    assert_eq!(status["status"], "healthy", "{status}");
    std::fs::remove_file(vendor.licenses.join("hooli-2027.license")).unwrap();
    answer_until(&client, request(), "version 2 to serve again", |response| {
        snapshot_version(response) == 2
    })
    .await;

    // The old license delivered again over the new one: refused, the
    // upgrade keeps serving.
    vendor.deliver("hooli", &vendor.issue(&free));
    let status: serde_json::Value = wait_until("/status to name the older license", || {
        let metrics = metrics.clone();
        async move {
            let status: serde_json::Value =
                serde_json::from_str(&get(&metrics, "/status").await).map_err(|e| e.to_string())?;
            if status["licenses"]["refused"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                Ok(status)
            } else {
                Err(status["licenses"].to_string())
            }
        }
    })
    .await;
    let refused = &status["licenses"]["refused"][0];
    assert_eq!(refused["reason"], "older_version", "{status}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("version 1 is not newer than the serving license (version 2"),
        "{status}"
    );
    assert_eq!(status["licenses"]["serving"][0]["version"], 2, "{status}");
    assert_eq!(status["status"], "degraded", "{status}");
    let still = decide(&mut client, request()).await;
    assert_eq!(
        (decision(&still), snapshot_version(&still)),
        (pb::Decision::Allow, 2)
    );
    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_a_revoked_key_stops_serving_without_a_restart() {
    let dirs = DataDirs::copy_examples();
    let vendor = Vendor::new();
    let next = PrivateKey::generate().unwrap();
    vendor.trust(&next);
    vendor.deliver("acme", &vendor.issue(&snapshot_file("acme")));
    vendor.deliver(
        "globex",
        &vendor.issue_with(&next, &snapshot_file("globex"), |_| {}),
    );
    let server = InProcess::start(vendor.config(&dirs, Clock::system())).await;
    let mut client = connect(&server.url()).await;
    let acme = || check("acme", "User:alice", "use", "Feature:pdf-export");
    let globex = || check("globex", "User:erin", "view", "Feature:pdf-export");
    for request in [acme(), globex()] {
        let response = decide(&mut client, request).await;
        assert_eq!(
            source(&response),
            pb::SnapshotSource::License,
            "{}",
            summary(&response)
        );
    }

    // The old key is revoked: its licenses stop serving, the new key's serve on.
    write_atomically(
        &vendor.keys.join("revoked.yaml"),
        &format!("keys: [{}]\n", vendor.key.kid),
    );
    let revoked = answer_until(
        &client,
        acme(),
        "the revoked key's license to stop serving",
        |response| codes(response) == ["unknown_tenant"],
    )
    .await;
    expect_decision(&revoked, pb::Decision::Deny, &["unknown_tenant"]);
    let still = decide(&mut client, globex()).await;
    assert_eq!(
        source(&still),
        pb::SnapshotSource::License,
        "{}",
        summary(&still)
    );

    // Re-issued under the new key, acme serves again.
    vendor.deliver(
        "acme",
        &vendor.issue_with(&next, &snapshot_with("acme", 2, |_| {}), |_| {}),
    );
    answer_until(
        &client,
        acme(),
        "acme's re-issued license to serve",
        |response| source(response) == pb::SnapshotSource::License,
    )
    .await;
    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_is_the_floor_while_redis_is_away_and_redis_serves_when_back() {
    let mut redis = RedisServer::start();
    let dirs = DataDirs::copy_examples();
    let vendor = Vendor::new();
    vendor.deliver("acme", &vendor.issue(&snapshot_file("acme")));
    let conn = tollgate::store::redis_client::RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put(
        &conn,
        &String::from_utf8(snapshot_with("acme", 5, |_| {})).unwrap(),
    )
    .await;
    let mut config = redis_config(&dirs, settings(vec![redis.url()]));
    config.licenses = Some(vendor.license_config());
    config.cache.max_stale = Duration::from_millis(300);
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    let request = || check("acme", "User:alice", "use", "Feature:pdf-export");
    let from_redis = decide(&mut client, request()).await;
    assert_eq!(
        decision(&from_redis),
        pb::Decision::Allow,
        "{}",
        summary(&from_redis)
    );
    assert_eq!(source(&from_redis), pb::SnapshotSource::Redis);
    assert_eq!(snapshot_version(&from_redis), 5);
    // A tenant Redis does not have is served from its license.
    vendor.deliver("globex", &vendor.issue(&snapshot_file("globex")));
    let floor = answer_until(
        &client,
        check("globex", "User:erin", "view", "Feature:pdf-export"),
        "globex's license to serve",
        |response| source(response) == pb::SnapshotSource::License,
    )
    .await;
    assert_eq!(snapshot_version(&floor), 1);

    redis.kill();
    let licensed = answer_until(
        &client,
        request(),
        "the license to serve while Redis is away",
        |response| source(response) == pb::SnapshotSource::License,
    )
    .await;
    assert_eq!(
        decision(&licensed),
        pb::Decision::Allow,
        "{}",
        summary(&licensed)
    );
    assert_eq!(snapshot_version(&licensed), 1);
    // Consumption still needs Redis.
    let mut consume = check("acme", "User:alice", "use", "Feature:api");
    consume.consume = Some(pb::Consume {
        meter: "api-calls".to_string(),
        amount: 1,
        idempotency_key: "floor-1".to_string(),
    });
    match client.check(consume).await {
        Ok(response) => expect_decision(
            &response.into_inner(),
            pb::Decision::Deny,
            &["metering_unavailable"],
        ),
        Err(status) => panic!("consume while Redis is away: {status:?}"),
    }

    redis.restart();
    answer_until(
        &client,
        request(),
        "Redis to serve acme again",
        |response| {
            matches!(
                source(response),
                pb::SnapshotSource::Redis | pb::SnapshotSource::Cache
            )
        },
    )
    .await;
    drop(client);
    server.stop().await.unwrap();
}

/// An independent implementation of the format: PyJWT (with `cryptography`
/// for Ed25519) verifies a license `tollgate license issue` wrote, with the
/// public key file `tollgate license keygen` wrote. scripts/test.sh provides
/// the interpreter as PYJWT_PYTHON.
#[test]
fn pyjwt_verifies_a_license_the_command_line_issued() {
    let python = std::env::var("PYJWT_PYTHON").unwrap_or_else(|_| {
        panic!("PYJWT_PYTHON is not set: it names a Python with PyJWT and cryptography (scripts/test.sh installs them into a venv and sets it)")
    });
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_tollgate");
    let keygen = std::process::Command::new(binary)
        .args(["license", "keygen", "--out"])
        .arg(dir.path().join("keys"))
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let stdout = String::from_utf8_lossy(&keygen.stdout);
    let kid = stdout
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("key id: ")
        .to_string();
    let private = dir.path().join("keys").join(format!("{kid}.key.pem"));
    let public = dir.path().join("keys").join(format!("{kid}.pub.pem"));
    let license = dir.path().join("acme.license");
    let issued = std::process::Command::new(binary)
        .args(["license", "issue", "--policies"])
        .arg(example_policies())
        .arg("--snapshot")
        .arg(example_entitlements().join("acme.json"))
        .arg("--key")
        .arg(&private)
        .args([
            "--expires",
            "2031-01-01",
            "--grace",
            "14d",
            "--bind",
            "install=prod-eu-1",
            "--id",
            "lic-py",
        ])
        .arg("--out")
        .arg(&license)
        .output()
        .unwrap();
    assert!(issued.status.success(), "{issued:?}");
    let script = r#"
import json, sys, jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
key = load_pem_public_key(open(sys.argv[1], "rb").read())
assert isinstance(key, Ed25519PublicKey), type(key)
token = open(sys.argv[2]).read().strip()
header = jwt.get_unverified_header(token)
claims = jwt.decode(token, key, algorithms=["EdDSA"], options={"verify_exp": False, "verify_nbf": False})
print(json.dumps({"header": header, "sub": claims["sub"], "jti": claims["jti"], "ver": claims["ver"], "exp": claims["exp"], "grace": claims["grace"], "bind": claims["bind"], "entities": len(claims["snapshot"]["entities"])}, sort_keys=True))
tampered = token[:-8] + ("A" if token[-8] != "A" else "B") + token[-7:]
try:
    jwt.decode(tampered, key, algorithms=["EdDSA"], options={"verify_exp": False, "verify_nbf": False})
    print("tampered: accepted")
except jwt.InvalidSignatureError:
    print("tampered: InvalidSignatureError")
"#;
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&public)
        .arg(&license)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    let read: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        read,
        serde_json::json!({
            "header": {"alg": "EdDSA", "typ": TOKEN_TYPE, "kid": kid},
            "sub": "acme", "jti": "lic-py", "ver": 1, "exp": 1_924_992_000,
            "grace": 14 * 86_400, "bind": {"install": "prod-eu-1"}, "entities": 20
        })
    );
    assert_eq!(lines.next(), Some("tampered: InvalidSignatureError"));

    // `tollgate license inspect` with the trusted keys: the claims and a
    // verifying signature, exit code 0; an altered copy is refused, 1.
    let trusted = dir.path().join("trusted");
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::copy(&public, trusted.join("vendor.pem")).unwrap();
    let inspect = |file: &Path, json: bool| {
        let mut command = std::process::Command::new(binary);
        command
            .args(["license", "inspect"])
            .arg(file)
            .arg("--keys")
            .arg(&trusted);
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    let good = inspect(&license, false);
    let text = String::from_utf8_lossy(&good.stdout);
    assert_eq!(good.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("license lic-py: tenant acme, version 1\n"),
        "{text}"
    );
    assert!(text.contains("  bound to: install=prod-eu-1\n"), "{text}");
    assert!(text.contains("  snapshot: 20 entities\n"), "{text}");
    assert!(text.contains("  now: valid\n"), "{text}");
    assert!(text.contains("  signature: verifies with "), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&inspect(&license, true).stdout).unwrap();
    assert_eq!(
        (&json["verified"], &json["state"], &json["claims"]["grace"]),
        (
            &serde_json::json!(true),
            &serde_json::json!("valid"),
            &serde_json::json!(1_209_600)
        )
    );
    let token = std::fs::read_to_string(&license).unwrap();
    let mut parts: Vec<&str> = token.trim_end().split('.').collect();
    let claims: String = parts[1].chars().rev().collect();
    parts[1] = &claims;
    let altered = dir.path().join("altered.license");
    std::fs::write(&altered, format!("{}\n", parts.join("."))).unwrap();
    let refused = inspect(&altered, false);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
}

#[test]
fn cluster_and_hostname_bindings_match_this_installation() {
    let vendor = Vendor::new();
    let policies = policies();
    let host = Installation::hostname_of_host().expect("the host has a name");
    let bound = |tenant: &str, bind: &[(&str, &str)]| {
        let document = snapshot_with("acme", 1, |d| d["tenant"] = tenant.into());
        vendor.issue_with(&vendor.key, &document, |r| {
            for (key, value) in bind {
                r.bind.insert((*key).to_string(), (*value).to_string());
            }
        })
    };
    vendor.deliver(
        "here",
        &bound("here", &[("cluster", "eu-1"), ("hostname", &host)]),
    );
    vendor.deliver(
        "other-cluster",
        &bound("other-cluster", &[("cluster", "us-2")]),
    );
    vendor.deliver(
        "other-host",
        &bound("other-host", &[("hostname", "not-this-host")]),
    );
    let installation = Installation {
        install: None,
        hostname: Some(host.clone()),
        cluster: Some("eu-1".to_string()),
    };
    let scan = tollgate::license::set::scan(
        &vendor.licenses,
        &vendor.keys,
        &installation,
        &policies,
        &Default::default(),
        ISSUED + 60,
        60,
    );
    let mut serving: Vec<&String> = scan.licenses.keys().collect();
    serving.sort();
    assert_eq!(serving, ["here"]);
    let reasons: Vec<String> = scan.refused.iter().map(|r| r.refusal.to_string()).collect();
    assert_eq!(
        reasons,
        [
            "bound elsewhere: cluster is `us-2`, this installation's is `eu-1`".to_string(),
            format!(
                "bound elsewhere: hostname is `not-this-host`, this installation's is `{host}`"
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_delivers_a_license_as_the_directory_would_read_it() {
    use tollgate::api::pb::admin_service_client::AdminServiceClient;
    use tonic::Code;
    const TOKEN: &str = "admin-token-0123456789";
    let dirs = DataDirs::copy_examples();
    let vendor = Vendor::new();
    let mut config = vendor.config(&dirs, Clock::system());
    let admin_address =
        std::net::SocketAddr::from(([127, 0, 0, 1], tollgate_testkit::redis_server::free_port()));
    config.admin_listen = Some(admin_address);
    config.admin_token = Some(tollgate::config::Secret(TOKEN.to_string()));
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    let mut admin = AdminServiceClient::new(channel(&format!("http://{admin_address}")).await);
    let license = |token: String| pb::PutLicenseRequest { license: token };
    let acme_v1 = vendor.issue(&snapshot_file("acme"));

    // Held to the same caller identity as every admin call.
    let status = admin
        .put_license(authed(license(acme_v1.clone()), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(std::fs::read_dir(&vendor.licenses).unwrap().count(), 0);

    let delivered = admin
        .put_license(authed(license(acme_v1.clone()), Some(TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            delivered.tenant.as_str(),
            delivered.version,
            delivered.previous_version
        ),
        ("acme", 1, 0)
    );
    assert!(delivered.file.ends_with("/acme.license"), "{delivered:?}");
    // Answered once it serves.
    let served = decide(
        &mut client,
        check("acme", "User:alice", "use", "Feature:pdf-export"),
    )
    .await;
    assert_eq!(
        source(&served),
        pb::SnapshotSource::License,
        "{}",
        summary(&served)
    );
    assert_eq!(terms(&served).unwrap().license_id, delivered.license_id);

    // What the directory would refuse is refused, and nothing is written.
    let stranger = PrivateKey::generate().unwrap();
    let refused = [
        (
            vendor.issue_with(&stranger, &snapshot_file("globex"), |_| {}),
            Code::InvalidArgument,
            "license refused: unknown key",
        ),
        (
            vendor.issue_with(&vendor.key, &snapshot_file("globex"), |r| {
                r.bind
                    .insert("install".to_string(), "install-b".to_string());
            }),
            Code::InvalidArgument,
            "license refused: bound elsewhere",
        ),
        (
            "not a license".to_string(),
            Code::InvalidArgument,
            "license refused: not a license",
        ),
        (
            vendor.issue_with(&vendor.key, &snapshot_with("acme", 1, |_| {}), |r| {
                r.issued_at = ISSUED - 10;
            }),
            Code::FailedPrecondition,
            "license refused: version 1 is not newer than the serving license",
        ),
    ];
    for (token, code, message) in refused {
        let status = admin
            .put_license(authed(license(token), Some(TOKEN)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().starts_with(message), "{status:?}");
    }
    let files: Vec<String> = std::fs::read_dir(&vendor.licenses)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["acme.license"]);

    // An upgrade replaces it; snapshot calls need Redis, which this sidecar has not.
    let upgraded = admin
        .put_license(authed(
            license(vendor.issue(&snapshot_with("acme", 2, |_| {}))),
            Some(TOKEN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((upgraded.version, upgraded.previous_version), (2, 1));
    let status = admin
        .list_snapshots(authed(pb::ListSnapshotsRequest {}, Some(TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    drop((client, admin));
    server.stop().await.unwrap();
}
