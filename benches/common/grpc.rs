//! What the gRPC-driving benchmarks share: a client channel to a server on
//! loopback, waiting for it to report SERVING, and a description of the
//! machine they ran on.
//!
//! Included with `#[path = "common/grpc.rs"]` by the benchmarks that drive a
//! server (not from `common/mod.rs`, which every benchmark compiles).

#![allow(dead_code, reason = "each benchmark uses a part of it")]

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// A channel to `address` (TCP_NODELAY, every call and the connect bounded
/// by `timeout`).
pub async fn connect(address: SocketAddr, timeout: Duration) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| error.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|error| format!("cannot connect to {address}: {error}"))
}

/// The CPUs available and the CPU model name from `/proc/cpuinfo`.
pub fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    (cpus, model)
}

/// Polls grpc.health.v1 `Check` (service `""`) on `channel` until it answers
/// SERVING, for at most `timeout`.
pub async fn wait_serving(channel: &Channel, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let answer = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        let last = match answer {
            Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => {
                return Ok(())
            }
            Ok(response) => format!("status {}", response.get_ref().status),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "not SERVING after {:.1} s: {last}",
                timeout.as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
