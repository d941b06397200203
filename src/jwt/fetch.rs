//! Fetching a JWK set: one small GET with hyper's HTTP/1 client, over
//! rustls (ring, the web PKI roots) for `https://`, in plain text only to a
//! loopback address. Within [`FETCH_TIMEOUT`] as a whole, at most
//! [`MAX_JWKS_BYTES`] of body, status 200 only (redirects are not
//! followed).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::{header, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Longest a fetch may take, from connecting to the last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWK set accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A `jwks_url`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JwksUrl {
    /// As written.
    pub(super) text: String,
    /// The host to connect to (an IPv6 address without brackets).
    host: String,
    port: u16,
    tls: bool,
    /// The `Host` header.
    authority: String,
    /// The request target.
    path: String,
}

impl JwksUrl {
    /// Checks `text`: `https://host[:port]/path`, or `http://` to a
    /// loopback IP address (for tests and local identity providers).
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|error| format!("not a URL: {error}"))?;
        let Some(authority) = uri.authority() else {
            return Err("has no host".to_string());
        };
        if authority.as_str().contains('@') {
            return Err("must not carry credentials (user@host)".to_string());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("has no host".to_string());
        }
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http")
                if host
                    .parse::<IpAddr>()
                    .is_ok_and(|address| address.is_loopback()) =>
            {
                false
            }
            Some("http") => return Err(
                "http:// is allowed only to a loopback address (127.0.0.1, [::1]); use https://"
                    .to_string(),
            ),
            _ => return Err("must be an https:// URL".to_string()),
        };
        Ok(Self {
            text: text.to_string(),
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            tls,
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or("/", |path| path.as_str())
                .to_string(),
        })
    }

    /// The body of a 200 answer to a GET of the URL.
    pub(super) async fn fetch(&self) -> Result<Vec<u8>, String> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_unbounded())
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no complete answer within {} s",
                    FETCH_TIMEOUT.as_secs()
                ))
            })
    }

    async fn fetch_unbounded(&self) -> Result<Vec<u8>, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|error| format!("cannot connect: {error}"))?;
        // Nagle would only delay the one small request.
        let _ = tcp.set_nodelay(true);
        if !self.tls {
            return self.exchange(tcp).await;
        }
        let name = ServerName::try_from(self.host.clone())
            .map_err(|error| format!("`{}` is not a server name: {error}", self.host))?;
        let tls = tokio_rustls::TlsConnector::from(client_config()?)
            .connect(name, tcp)
            .await
            .map_err(|error| format!("TLS: {error}"))?;
        self.exchange(tls).await
    }

    /// Sends the GET on `io` and reads the answer.
    async fn exchange<I>(&self, io: I) -> Result<Vec<u8>, String>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|error| format!("HTTP: {error}"))?;
        let request = Request::get(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(
                header::USER_AGENT,
                concat!("tollgate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|error| format!("cannot build the request: {error}"))?;
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|error| format!("HTTP: {error}"))?;
            if response.status() != StatusCode::OK {
                return Err(format!("answered {} (200 expected)", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|error| {
                    if error.downcast_ref::<LengthLimitError>().is_some() {
                        format!("the answer is larger than {MAX_JWKS_BYTES} bytes")
                    } else {
                        format!("reading the answer: {error}")
                    }
                })?;
            Ok(body.to_bytes().to_vec())
        };
        // The connection is driven here, beside the exchange, rather than
        // by a task of its own: nothing outlives the fetch.
        tokio::pin!(exchange);
        tokio::pin!(connection);
        tokio::select! {
            biased;
            answer = &mut exchange => answer,
            closed = &mut connection => {
                closed.map_err(|error| format!("HTTP: {error}"))?;
                exchange.await
            }
        }
    }
}

/// The TLS client configuration: ring, the web PKI roots, HTTP/1.1.
fn client_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(Arc::clone(config));
    }
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS: {error}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::clone(CONFIG.get_or_init(|| Arc::new(config))))
}
