//! An HTTP/1.1 client of the HTTP front door (hyper, one kept-alive
//! connection): JSON requests with headers, and their answers.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Longest a request may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: status, headers and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// The HTTP status code.
    pub status: u16,
    /// The response headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl HttpAnswer {
    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "status {}: body is not JSON ({error}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// One HTTP/1.1 connection to `address` (`host:port`).
pub struct HttpClient {
    address: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl HttpClient {
    /// Connects to `address` (`host:port`).
    pub async fn connect(address: &str) -> Result<Self, String> {
        let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| format!("connecting to {address} timed out"))?
            .map_err(|error| format!("cannot connect to {address}: {error}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("HTTP handshake with {address}: {error}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            address: address.to_string(),
            sender,
        })
    }

    /// `POST path` with a JSON body (`content-type: application/json`
    /// unless `headers` set one).
    pub async fn post(
        &mut self,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<HttpAnswer, String> {
        self.send("POST", path, body.into(), headers).await
    }

    /// `POST path` with `value` as its JSON body (panics on failure).
    pub async fn post_json(&mut self, path: &str, value: &serde_json::Value) -> HttpAnswer {
        self.post(path, value.to_string(), &[])
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<HttpAnswer, String> {
        self.send("GET", path, Bytes::new(), &[]).await
    }

    /// Sends a request with `method`.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<HttpAnswer, String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.address);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            && method == "POST"
        {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|error| format!("{method} {path}: {error}"))?;
        let answered = tokio::time::timeout(TIMEOUT, async {
            self.sender
                .ready()
                .await
                .map_err(|error| format!("{method} {path}: connection closed: {error}"))?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|error| format!("{method} {path}: {error}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|error| format!("{method} {path}: reading the body: {error}"))?
                .to_bytes();
            Ok::<_, String>(HttpAnswer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        })
        .await
        .map_err(|_| format!("{method} {path} timed out after {TIMEOUT:?}"))?;
        answered
    }
}
