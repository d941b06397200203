//! Trust boundaries over real TLS handshakes with certificates made for the
//! test (`openssl`): a client without a certificate is refused on a mutual
//! TLS listener, callers are recognised by their certificate's SAN or their
//! bearer token and held to their operations and tenants, a caller allowed
//! to check but not to report usage is refused and nothing is counted,
//! rotated certificates and tokens take effect without a restart while the
//! old ones stop working, and a listener other hosts could reach without
//! TLS and callers does not start.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tollgate::listen::TlsFiles;
use tollgate_testkit::fixtures::{document, entity};
use tollgate_testkit::pki::{tls_channel, Issued, Pki};
use tollgate_testkit::prelude::*;
use tollgate_testkit::redis_server::{free_port, put, redis_config, settings, RedisServer};
use tonic::transport::Channel;
use tonic::Code;

const SHOP: &str = "spiffe://tollgate.test/ns/shop/sa/storefront";

/// A CA, the server's certificate, and client certificates: `shop` (URI
/// SAN, named in the callers file), `ops` (DNS SAN, named), `stranger`
/// (signed by the CA, named nowhere).
struct Certificates {
    pki: Pki,
    ca: Issued,
    server: Issued,
    shop: Issued,
    ops: Issued,
    stranger: Issued,
}

impl Certificates {
    fn make() -> Self {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let server = pki.server(&ca, "server");
        let shop = pki.leaf(&ca, "shop", &format!("URI:{SHOP}"), true);
        let ops = pki.leaf(&ca, "ops", "DNS:ops.tollgate.test", true);
        let stranger = pki.leaf(&ca, "stranger", "URI:spiffe://elsewhere/x", true);
        Self {
            pki,
            ca,
            server,
            shop,
            ops,
            stranger,
        }
    }

    /// The files the server reads, copies it may replace while it runs.
    fn served(&self) -> TlsFiles {
        let dir = self.pki.path();
        std::fs::copy(&self.server.cert, dir.join("served.crt")).unwrap();
        std::fs::copy(&self.server.key, dir.join("served.key")).unwrap();
        std::fs::copy(&self.ca.cert, dir.join("clients-ca.crt")).unwrap();
        TlsFiles {
            cert: dir.join("served.crt"),
            key: dir.join("served.key"),
            client_ca: Some(dir.join("clients-ca.crt")),
            client_auth_required: true,
        }
    }
}

/// Writes `text` to `path` the way a secret volume updates: a new file
/// renamed over the old one.
fn replace(path: &Path, text: &[u8]) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, text).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

fn write_callers(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("callers.yaml");
    replace(&file, text.as_bytes());
    file
}

fn metrics_address() -> std::net::SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// The value of the first metric line that starts with `series`, 0 when
/// there is none.
fn metric(metrics: std::net::SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(&metrics.to_string(), "/metrics");
    body.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

/// The outcome of a Check for bob of `tenant` on a TLS channel. A
/// connection the server refused is `Unavailable`: the channel fails to
/// connect, or (TLS 1.3, where the client finishes its handshake first) the
/// first call fails on the server's alert, which tonic reports as a
/// transport error or, when the connection closes under the call, as
/// `Cancelled` (a code tollgate itself never answers).
async fn check_on(channel: Result<Channel, String>, tenant: &str) -> Result<pb::Decision, Code> {
    let channel = channel.map_err(|_| Code::Unavailable)?;
    EntitlementServiceClient::new(channel)
        .check(check(tenant, "User:bob", "use", "Feature:pdf-export"))
        .await
        .map(|response| decision(&response.into_inner()))
        .map_err(|status| match status.code() {
            Code::Unknown if status.message().contains("transport error") => Code::Unavailable,
            Code::Cancelled => Code::Unavailable,
            code => code,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_callers_get_what_their_certificate_allows() {
    let certs = Certificates::make();
    let dirs = DataDirs::copy_examples();
    let callers = write_callers(
        certs.pki.path(),
        &format!(
            "callers:\n  - name: storefront\n    uri_san: {SHOP}\n    operations: [check, check_batch]\n    tenants: [acme]\n  - name: ops\n    dns_san: ops.tollgate.test\n    operations: ['*']\n    tenants: ['*']\nlocal:\n  operations: []\n"
        ),
    );
    let mut config = dirs.config();
    config.tls = Some(certs.served());
    config.callers_file = Some(callers);
    let metrics = metrics_address();
    config.metrics_listen = Some(metrics);
    let server = InProcess::start(config).await;
    let port = server.addr.port();

    // No certificate: no connection (the handshake is refused, or the
    // first call fails on its alert).
    assert_eq!(
        check_on(tls_channel(port, &certs.ca, None).await, "acme").await,
        Err(Code::Unavailable)
    );
    // A plaintext client gets nowhere either.
    let plaintext = tollgate_testkit::client::bounded_channel(server.addr, Duration::from_secs(2))
        .await
        .map_err(|_| Code::Unavailable);
    let plaintext = match plaintext {
        Ok(channel) => EntitlementServiceClient::new(channel)
            .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
            .await
            .map(|_| ())
            .map_err(|status| status.code()),
        Err(code) => Err(code),
    };
    assert!(plaintext.is_err(), "a plaintext call was answered");

    let shop = tls_channel(port, &certs.ca, Some(&certs.shop))
        .await
        .unwrap();
    let mut shop = EntitlementServiceClient::new(shop);
    let response = shop
        .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
        .await
        .unwrap()
        .into_inner();
    expect_reasons(
        &response,
        pb::Decision::Allow,
        &["member_role"],
        &["members-use"],
    );
    // Another tenant, usage reports: refused, naming nothing but the caller
    // and the operation.
    let status = shop
        .check(check("globex", "User:bob", "use", "Feature:pdf-export"))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "caller `storefront` may not use check here"
        )
    );
    let status = shop
        .report_usage(pb::ReportUsageRequest {
            tenant: "acme".to_string(),
            reports: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "caller `storefront` may not use report_usage here"
        )
    );
    // A batch with one tenant not its own is refused whole.
    let status = shop
        .check_batch(pb::CheckBatchRequest {
            checks: vec![
                check("acme", "User:bob", "use", "Feature:pdf-export"),
                check("initech", "User:bob", "use", "Feature:pdf-export"),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A certificate the CA signed, for a caller nobody named.
    let stranger = tls_channel(port, &certs.ca, Some(&certs.stranger)).await;
    let status = EntitlementServiceClient::new(stranger.unwrap())
        .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "unauthenticated: the client certificate names no caller"
        )
    );
    // A certificate of another CA: no connection.
    let other_ca = certs.pki.ca("other-ca");
    let impostor = certs
        .pki
        .leaf(&other_ca, "impostor", &format!("URI:{SHOP}"), true);
    assert_eq!(
        check_on(tls_channel(port, &certs.ca, Some(&impostor)).await, "acme").await,
        Err(Code::Unavailable)
    );
    // ops may do everything, on every tenant.
    let ops = tls_channel(port, &certs.ca, Some(&certs.ops)).await;
    assert_eq!(
        check_on(ops, "globex").await.map(|_| ()),
        Ok(()),
        "ops is served on globex"
    );

    let refusals = |caller: &str, operation: &str, code: &str| {
        metric(
            metrics,
            &format!("tollgate_caller_refusals_total{{caller=\"{caller}\",operation=\"{operation}\",code=\"{code}\"}}"),
        )
    };
    assert_eq!(refusals("storefront", "check", "permission_denied"), 2.0);
    assert_eq!(
        refusals("storefront", "report_usage", "permission_denied"),
        1.0
    );
    assert_eq!(
        refusals("storefront", "check_batch", "permission_denied"),
        0.0
    );
    assert_eq!(refusals("unauthenticated", "check", "unauthenticated"), 1.0);
    assert!(
        metric(
            metrics,
            "tollgate_connections_refused_total{listener=\"api\",event=\"handshake_failed\"}"
        ) >= 2.0
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_serve_new_connections_without_a_restart() {
    let certs = Certificates::make();
    let dirs = DataDirs::copy_examples();
    let callers = write_callers(
        certs.pki.path(),
        &format!("callers:\n  - name: storefront\n    uri_san: {SHOP}\n    operations: [check]\n    tenants: ['*']\n"),
    );
    let files = certs.served();
    let mut config = dirs.config();
    config.tls = Some(files.clone());
    config.callers_file = Some(callers);
    config.credentials_poll = Duration::from_millis(100);
    let metrics = metrics_address();
    config.metrics_listen = Some(metrics);
    let server = InProcess::start(config).await;
    let port = server.addr.port();
    assert_eq!(
        check_on(
            tls_channel(port, &certs.ca, Some(&certs.shop)).await,
            "acme"
        )
        .await,
        Ok(pb::Decision::Allow)
    );

    // A new CA signs both the server's and the clients' certificates.
    let next_ca = certs.pki.ca("next-ca");
    let next_server = certs.pki.server(&next_ca, "next-server");
    let next_shop = certs
        .pki
        .leaf(&next_ca, "next-shop", &format!("URI:{SHOP}"), true);
    // An invalid key first: the old pair keeps serving, and says so.
    replace(
        &files.key,
        b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    wait_until("the broken key to be rejected", || async {
        let rejected = metric(
            metrics,
            "tollgate_credential_reloads_total{files=\"tls\",outcome=\"rejected\"}",
        );
        if rejected >= 1.0 {
            Ok(())
        } else {
            Err(format!("{rejected} rejected"))
        }
    })
    .await;
    let (_, status) = http_get(&metrics.to_string(), "/status");
    assert!(
        status.contains("the last change to the tls files was rejected"),
        "{status}"
    );
    assert_eq!(
        check_on(
            tls_channel(port, &certs.ca, Some(&certs.shop)).await,
            "acme"
        )
        .await,
        Ok(pb::Decision::Allow)
    );

    replace(&files.cert, &std::fs::read(&next_server.cert).unwrap());
    replace(&files.key, &std::fs::read(&next_server.key).unwrap());
    replace(
        files.client_ca.as_ref().unwrap(),
        &std::fs::read(&next_ca.cert).unwrap(),
    );
    wait_until("the new CA's clients to be served", || async {
        check_on(tls_channel(port, &next_ca, Some(&next_shop)).await, "acme")
            .await
            .map_err(|code| format!("{code:?}"))
    })
    .await;
    // The old server certificate is no longer presented, and a client
    // certificate of the old CA no longer admitted.
    assert_eq!(
        check_on(
            tls_channel(port, &certs.ca, Some(&certs.shop)).await,
            "acme"
        )
        .await,
        Err(Code::Unavailable)
    );
    assert_eq!(
        check_on(tls_channel(port, &next_ca, Some(&certs.shop)).await, "acme").await,
        Err(Code::Unavailable)
    );
    assert!(
        metric(
            metrics,
            "tollgate_credential_reloads_total{files=\"tls\",outcome=\"applied\"}"
        ) >= 1.0
    );
    server.stop().await.unwrap();
}

/// acme with `Meter::"api-calls"` limited to 1,000 a month.
fn metered_acme() -> String {
    document("acme", 1, |value| {
        entity(value, "Meter", "api-calls")["attrs"]["limit"] = 1_000.into();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_name_callers_rotate_without_a_restart_and_refusals_count_nothing() {
    let redis = RedisServer::start();
    let conn = tollgate::store::redis_client::RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put(&conn, &metered_acme()).await;
    let certs = Certificates::make();
    let dir = certs.pki.path();
    std::fs::write(dir.join("checker.token"), "checker-token-0000000001\n").unwrap();
    std::fs::write(dir.join("reporter.token"), "reporter-token-000000001\n").unwrap();
    let callers = write_callers(
        dir,
        "callers:\n  - name: checker\n    token_file: checker.token\n    operations: [check]\n    tenants: [acme]\n  - name: reporter\n    token_file: reporter.token\n    operations: [report_usage]\n    tenants: [acme]\nlocal:\n  operations: []\n",
    );
    let dirs = DataDirs::copy_examples();
    let mut config = redis_config(&dirs, settings(vec![redis.url()]));
    // Server TLS; client certificates optional, so tokens identify.
    let mut tls = certs.served();
    tls.client_auth_required = false;
    config.tls = Some(tls);
    config.callers_file = Some(callers);
    config.credentials_poll = Duration::from_millis(100);
    let log = dir.join("decisions.log");
    config.decision_log = Some(tollgate::decision_log::Settings {
        sink: Some(tollgate::decision_log::Sink::File(log.clone())),
        redis_stream: None,
        queue: 100,
        sample_allow: 1.0,
        sample_deny: 1.0,
        context: false,
        mask: Vec::new(),
        attributes: Vec::new(),
        max_bytes: 1 << 20,
    });
    let server = InProcess::start(config).await;
    let port = server.addr.port();
    let channel = tls_channel(port, &certs.ca, None).await.unwrap();
    let mut client = EntitlementServiceClient::new(channel);
    let report = |amount: i64, key: &str| pb::ReportUsageRequest {
        tenant: "acme".to_string(),
        reports: vec![pb::UsageReport {
            meter: "api-calls".to_string(),
            amount,
            event_key: key.to_string(),
            principal: Some(parse_ref("User:bob")),
        }],
    };

    // Without a token, the local caller may do nothing here: it is told to
    // bring credentials.
    let status = client
        .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "unauthenticated: check needs credentials (a bearer token or a client certificate); the local caller may not use it here"
        )
    );
    let response = client
        .check(with_token(
            "checker-token-0000000001",
            check("acme", "User:bob", "use", "Feature:pdf-export"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_decision(&response, pb::Decision::Allow);
    // Allowed to check, not to report: refused, and nothing is counted.
    let status = client
        .report_usage(with_token("checker-token-0000000001", report(7, "e1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let totals = client
        .report_usage(with_token("reporter-token-000000001", report(5, "e2")))
        .await
        .unwrap()
        .into_inner()
        .totals;
    assert_eq!((totals[0].used, totals[0].remaining), (5, 995));
    let status = client
        .check(with_token(
            "not-a-token-of-anyone-000",
            check("acme", "User:bob", "use", "Feature:pdf-export"),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "unauthenticated: the bearer token is not valid"
        )
    );

    // Rotation: the new token is served, the old one refused.
    replace(&dir.join("checker.token"), b"checker-token-0000000002\n");
    wait_until("the rotated token to be accepted", || {
        let mut client = client.clone();
        let request = with_token(
            "checker-token-0000000002",
            check("acme", "User:bob", "use", "Feature:pdf-export"),
        );
        async move {
            client
                .check(request)
                .await
                .map_err(|status| status.to_string())
        }
    })
    .await;
    let status = client
        .check(with_token(
            "checker-token-0000000001",
            check("acme", "User:bob", "use", "Feature:pdf-export"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    server.stop().await.unwrap();
    // The decision log names the caller of each decision.
    let records: Vec<serde_json::Value> = read(&log)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|record| record["caller"] == "checker"));
}

/// `message` with `authorization: Bearer <token>`.
fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Runs `tollgate serve` with `args` and `env`; returns its exit code and
/// its log once it exits, or kills it once it has logged `listening` and
/// returns `None` with the log.
fn serve_until_listening(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dirs = DataDirs::copy_examples();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .arg("serve")
        .args(args)
        .arg("--policies")
        .arg(&dirs.policies)
        .arg("--entitlements")
        .arg(&dirs.entitlements)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name.starts_with("TOLLGATE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(strip_ansi(&line)).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    while let Ok(line) = received.recv_timeout(Duration::from_secs(30)) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening") && line.contains("address=") {
            child.kill().unwrap();
            child.wait().unwrap();
            return (None, log);
        }
    }
    let status = child.wait().unwrap();
    (status.code(), log)
}

#[test]
fn a_listener_other_hosts_reach_without_tls_and_callers_does_not_start() {
    let (code, log) = serve_until_listening(&["--listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("listen: 0.0.0.0:0 is not a loopback address")
            && log.contains("insecure_listen: true"),
        "{log}"
    );
    let (code, log) = serve_until_listening(
        &[],
        &[
            ("TOLLGATE_ADMIN_LISTEN", "0.0.0.0:0"),
            ("TOLLGATE_ADMIN_TOKEN", "admin-token-0123456789"),
            ("TOLLGATE_REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("admin_listen: 0.0.0.0:0 is not a loopback address"),
        "{log}"
    );
    // Acknowledged: it serves.
    let (code, log) = serve_until_listening(
        &["--listen", "0.0.0.0:0"],
        &[("TOLLGATE_INSECURE_LISTEN", "true")],
    );
    assert_eq!(code, None, "{log}");
}

#[test]
fn unusable_tls_or_callers_files_stop_serve_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.display().to_string();
    let (code, log) = serve_until_listening(
        &[],
        &[
            ("TOLLGATE_TLS_CERT_FILE", &garbage),
            ("TOLLGATE_TLS_KEY_FILE", &garbage),
        ],
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("TLS:") && log.contains("garbage.pem"), "{log}");
    let callers = dir.path().join("callers.yaml");
    std::fs::write(
        &callers,
        "callers:\n  - {name: a, operations: [check], tenants: ['*']}\n",
    )
    .unwrap();
    let (code, log) = serve_until_listening(
        &[],
        &[("TOLLGATE_CALLERS_FILE", &callers.display().to_string())],
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("uri_san, dns_san or token_file"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_listener_serves_health_and_nothing_else() {
    let dirs = DataDirs::copy_examples();
    let mut config = dirs.config();
    let health: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    config.health_listen = Some(health);
    let server = InProcess::start(config).await;
    let channel = channel(&format!("http://{health}")).await;
    assert_eq!(
        tollgate_testkit::client::health(&channel, "tollgate.v1.EntitlementService")
            .await
            .unwrap(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let status = EntitlementServiceClient::new(channel)
        .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_max_in_flight_are_shed_and_counted() {
    let redis = RedisServer::start();
    let conn = tollgate::store::redis_client::RedisConn::connect(&settings(vec![redis.url()]))
        .await
        .unwrap();
    put(&conn, &metered_acme()).await;
    let dirs = DataDirs::copy_examples();
    let mut redis_settings = settings(vec![redis.url()]);
    // The stopped Redis below holds a call in flight, not past its timeout.
    redis_settings.timeout = Duration::from_secs(10);
    let mut config = redis_config(&dirs, redis_settings);
    config.max_in_flight = 1;
    let metrics = metrics_address();
    config.metrics_listen = Some(metrics);
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    let bob = || check("acme", "User:bob", "use", "Feature:pdf-export");
    assert_decision(
        &client.check(bob()).await.unwrap().into_inner(),
        pb::Decision::Allow,
    );

    // A usage report waits for a Redis that does not answer.
    tollgate_testkit::server::signal(redis.pid(), "STOP").unwrap();
    let waiting = {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .report_usage(pb::ReportUsageRequest {
                    tenant: "acme".to_string(),
                    reports: vec![pb::UsageReport {
                        meter: "api-calls".to_string(),
                        amount: 5,
                        event_key: "e1".to_string(),
                        principal: Some(parse_ref("User:bob")),
                    }],
                })
                .await
        })
    };
    wait_until("the report to be in flight", || async {
        match metric(metrics, "tollgate_requests_in_flight ") {
            1.0 => Ok(()),
            other => Err(format!("{other} in flight")),
        }
    })
    .await;
    let status = client.check(bob()).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::ResourceExhausted,
            "the server is at its limit of 1 requests in flight (max_in_flight); retry with backoff"
        )
    );
    assert_eq!(metric(metrics, "tollgate_requests_shed_total "), 1.0);

    tollgate_testkit::server::signal(redis.pid(), "CONT").unwrap();
    let totals = waiting.await.unwrap().unwrap().into_inner().totals;
    assert_eq!(totals[0].used, 5);
    assert_decision(
        &client.check(bob()).await.unwrap().into_inner(),
        pb::Decision::Allow,
    );
    assert_eq!(metric(metrics, "tollgate_requests_in_flight "), 0.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_past_the_byte_budget_are_shed_while_small_requests_pass() {
    let dirs = DataDirs::copy_examples();
    let mut config = dirs.config();
    config.max_request_bytes_in_flight = 1 << 20;
    let metrics = metrics_address();
    config.metrics_listen = Some(metrics);
    let server = InProcess::start(config).await;
    let mut client = connect(&server.url()).await;
    // 2 MiB of context: more than the whole budget.
    let mut large = check("acme", "User:bob", "use", "Feature:pdf-export");
    large.context = (0..2_000)
        .map(|key| {
            (
                format!("k{key}"),
                pb::Value {
                    kind: Some(pb::value::Kind::String("x".repeat(1_000))),
                },
            )
        })
        .collect();
    let status = client.check(large).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::ResourceExhausted,
            "the bodies of the requests in flight would pass 1048576 bytes (max_request_bytes_in_flight); retry with backoff"
        )
    );
    assert_eq!(
        metric(metrics, "tollgate_requests_shed_for_bytes_total "),
        1.0
    );
    // The budget it took is back, and small requests never touch it.
    for _ in 0..3 {
        let response = client
            .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
            .await
            .unwrap()
            .into_inner();
        assert_decision(&response, pb::Decision::Allow);
    }
    let mut fits = check("acme", "User:bob", "use", "Feature:pdf-export");
    fits.context = (0..500)
        .map(|key| {
            (
                format!("k{key}"),
                pb::Value {
                    kind: Some(pb::value::Kind::String("x".repeat(1_000))),
                },
            )
        })
        .collect();
    // 500 KB: read within the budget, then refused for what it says.
    let status = client.check(fits).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        metric(metrics, "tollgate_requests_shed_for_bytes_total "),
        1.0
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_max_connections_is_closed_and_counted() {
    let dirs = DataDirs::copy_examples();
    let mut config = dirs.config();
    config.max_connections = 1;
    let metrics = metrics_address();
    config.metrics_listen = Some(metrics);
    let server = InProcess::start(config).await;
    // The first connection holds the only place, and is served.
    let mut first = connect(&server.url()).await;
    let bob = || check("acme", "User:bob", "use", "Feature:pdf-export");
    assert_decision(
        &first.check(bob()).await.unwrap().into_inner(),
        pb::Decision::Allow,
    );
    // A second is closed at once: its call fails.
    let second =
        tollgate_testkit::client::bounded_channel(server.addr, Duration::from_secs(2)).await;
    let refused = match second {
        Ok(channel) => EntitlementServiceClient::new(channel)
            .check(bob())
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a second connection was served");
    // Each of its attempts (the client retries a closed connection) counts.
    assert!(
        metric(
            metrics,
            "tollgate_connections_refused_total{listener=\"api\",event=\"over_limit\"}"
        ) >= 1.0
    );
    // The first is still served.
    assert_decision(
        &first.check(bob()).await.unwrap().into_inner(),
        pb::Decision::Allow,
    );
    server.stop().await.unwrap();
}

/// `curl` over TLS (trusting `ca`) to the HTTP front door: the status, the
/// HTTP version and the body.
fn curl(ca: &Path, url: &str, token: Option<&str>, body: &str) -> (u16, String, serde_json::Value) {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args([
            "-H",
            "content-type: application/json",
            "-w",
            "\n%{http_code} %{http_version}",
        ]);
    if let Some(token) = token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    if !body.is_empty() {
        command.args(["--data-binary", body]);
    }
    let output = command.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, version) = last.split_once(' ').unwrap_or((last, ""));
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (code.parse().unwrap_or(0), version.to_string(), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_front_door_serves_tls_and_holds_callers_to_their_rights() {
    let certs = Certificates::make();
    let dir = certs.pki.path();
    std::fs::write(dir.join("checker.token"), "checker-token-0000000001\n").unwrap();
    let callers = write_callers(
        dir,
        "callers:\n  - name: checker\n    token_file: checker.token\n    operations: [check, check_batch]\n    tenants: [acme]\nlocal:\n  operations: []\n",
    );
    let dirs = DataDirs::copy_examples();
    let mut config = dirs.config();
    let mut tls = certs.served();
    tls.client_auth_required = false;
    config.tls = Some(tls);
    config.callers_file = Some(callers);
    config.authzen.tenant = vec![tollgate::http::authzen::TenantFrom::Caller];
    let (_server, http) = InProcess::start_with_http(config).await;
    let base = format!("https://{http}");
    let token = Some("checker-token-0000000001");
    let check = |tenant: &str| {
        let mut request = check_str("acme User:bob use Feature:pdf-export");
        request.tenant = tenant.to_string();
        serde_json::to_string(&request).unwrap()
    };

    // The checker, identified by its token over TLS (HTTP/2 by ALPN).
    let (status, version, body) = curl(
        &certs.ca.cert,
        &format!("{base}/v1/check"),
        token,
        &check("acme"),
    );
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    assert_eq!(body["decision"], "DECISION_ALLOW");
    // No token: the loopback caller may do nothing here, and is told to
    // bring credentials; a token nobody has is unknown.
    let (status, _, body) = curl(
        &certs.ca.cert,
        &format!("{base}/v1/check"),
        None,
        &check("acme"),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "UNAUTHENTICATED");
    let (status, _, body) = curl(
        &certs.ca.cert,
        &format!("{base}/v1/check"),
        Some("guess-0000000000000000"),
        &check("acme"),
    );
    assert_eq!(status, 401, "{body}");
    // Another tenant, another operation: forbidden.
    let (status, _, body) = curl(
        &certs.ca.cert,
        &format!("{base}/v1/check"),
        token,
        &check("globex"),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "PERMISSION_DENIED");
    let (status, _, body) = curl(
        &certs.ca.cert,
        &format!("{base}/v1/report-usage"),
        token,
        r#"{"tenant": "acme", "reports": [{"meter": "api-calls", "amount": "1", "eventKey": "e"}]}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("report_usage"),
        "{body}"
    );
    // AuthZEN: the tenant is the caller's one tenant.
    let evaluation = r#"{"subject": {"type": "User", "id": "bob"}, "action": {"name": "use"},
        "resource": {"type": "Feature", "id": "pdf-export"},
        "context": {"country": "BR", "now": {"__extn": {"fn": "datetime", "arg": "2026-06-01T00:00:00Z"}}}}"#;
    let (status, _, body) = curl(
        &certs.ca.cert,
        &format!("{base}/access/v1/evaluation"),
        token,
        evaluation,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], true, "{body}");
    // Health needs no caller; the AuthZEN metadata names https URLs.
    let (status, _, body) = curl(&certs.ca.cert, &format!("{base}/readyz"), None, "");
    assert_eq!((status, body["status"].as_str()), (200, Some("SERVING")));
    let (_, _, body) = curl(
        &certs.ca.cert,
        &format!("{base}/.well-known/authzen-configuration"),
        None,
        "",
    );
    assert_eq!(
        body["access_evaluation_endpoint"],
        format!("{base}/access/v1/evaluation")
    );
    // Plaintext to the TLS listener: no answer.
    let (status, _, _) = curl(&certs.ca.cert, &format!("http://{http}/healthz"), None, "");
    assert_eq!(status, 0);
}
