//! Connecting to a tollgate server as a client (the CLI's `--remote`): over
//! TCP (`host:port`, `http://host:port`) or a Unix domain socket
//! (`unix:/path/to/socket`); and the CLI's `--http`, a JSON POST to the
//! HTTP front door.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// `POST path` with a JSON `body` to `url` (`http://host:port`) over
/// HTTP/1.1: the status and the body of the answer. Bounded by 30 s.
pub async fn post_json(
    url: &str,
    path: &str,
    body: Vec<u8>,
    authorization: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::BodyExt as _;
    let address = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}`: --http takes http://host:port (TLS: use --remote)"))?
        .trim_end_matches('/');
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| format!("cannot connect to {address}: {error}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("{address}: {error}"))?;
        tokio::spawn(connection);
        let mut request = hyper::Request::post(path)
            .header(hyper::header::HOST, address)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(authorization) = authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
            .map_err(|error| error.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("{address}: {error}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| format!("{address}: {error}"))?
            .to_bytes();
        Ok((status, body.to_vec()))
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
        .await
        .map_err(|_| format!("{address} did not answer within 30 s"))?
}

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
