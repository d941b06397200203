//! gRPC over a Unix domain socket (`listen_unix`), beside TCP: a stale socket
//! file is replaced, another file in the way is refused, and the socket is
//! removed at shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use tollgate::api::pb;
use tollgate::api::pb::entitlement_service_client::EntitlementServiceClient;
use tollgate_testkit::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_answered_over_the_unix_socket_and_tcp() {
    let dirs = DataDirs::copy_examples();
    let socket = dirs.root.path().join("tollgate.sock");
    // A socket left behind by a previous run.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut config = dirs.config();
    config.listen_unix = Some(socket.clone());
    let server = InProcess::start(config).await;
    let tcp = connect(&server.url()).await;

    let address = format!("unix:{}", socket.display());
    let channel = wait_until("the unix socket to accept", || {
        let address = address.clone();
        async move {
            tollgate::api::client::connect(&address)
                .await
                .map_err(|error| error.to_string())
        }
    })
    .await;
    let mut unix = EntitlementServiceClient::new(channel);
    for mut client in [unix.clone(), tcp] {
        let response = client
            .check(check("acme", "User:bob", "use", "Feature:pdf-export"))
            .await
            .unwrap()
            .into_inner();
        expect_decision(&response, pb::Decision::Allow, &["member_role"]);
    }
    let denied = unix
        .check(check("hooli", "User:gavin", "use", "Feature:pdf-export"))
        .await
        .unwrap()
        .into_inner();
    expect_decision(&denied, pb::Decision::Deny, &["tier_too_low"]);

    // The command line reaches it too.
    let cli_address = address.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["check", "--remote", &cli_address, "--tenant", "acme"])
            .args(["--principal", "User:bob", "--action", "use", "--resource", "Feature:pdf-export"])
            .args(["--context", r#"{"country":"BR","now":{"__extn":{"fn":"datetime","arg":"2026-11-27T12:00:00Z"}}}"#])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("ALLOW"), "{stdout}");

    server.stop().await.unwrap();
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_socket_is_never_replaced() {
    let dirs = DataDirs::copy_examples();
    let path = dirs.root.path().join("important.txt");
    std::fs::write(&path, "keep me").unwrap();
    let mut config = dirs.config();
    config.listen_unix = Some(path.clone());
    let server = InProcess::start(config).await;
    let error = server.stop().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot listen on unix socket {}: a file that is not a socket is in the way",
            path.display()
        )
    );
    assert_eq!(read(&path), "keep me");
}
