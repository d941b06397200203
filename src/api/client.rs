//! Connecting to a tollgate server as a client (the CLI's `--remote`): over
//! TCP (`host:port`, `http://host:port`) or a Unix domain socket
//! (`unix:/path/to/socket`).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects a channel to `address`.
pub async fn connect(address: &str) -> Result<Channel, tonic::transport::Error> {
    match address.strip_prefix("unix:") {
        Some(path) => {
            // The URI is required by the API but unused: the connector dials
            // the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(UnixConnector(PathBuf::from(path)))
                .await
        }
        None if address.contains("://") => {
            Endpoint::from_shared(address.to_string())?.connect().await
        }
        None => {
            Endpoint::from_shared(format!("http://{address}"))?
                .connect()
                .await
        }
    }
}

/// Why a connection failed, for people: "connection refused" when nothing
/// listens there, else the innermost cause (tonic's own message is only
/// "transport error").
pub fn connect_error(error: &tonic::transport::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        if let Some(io) = source.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused (is tollgate serving there?)".to_string()
                }
                std::io::ErrorKind::NotFound => {
                    format!("{io} (is tollgate serving on this socket?)")
                }
                _ => io.to_string(),
            };
        }
        cause = source;
    }
    cause.to_string()
}

/// Dials a Unix domain socket for every connection.
#[derive(Debug, Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(TokioIo::new)
        })
    }
}
