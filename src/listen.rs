//! The gRPC servers' connections: plain TCP, TLS (rustls, with the
//! certificate, key and client CA reread when they change on disk) and the
//! Unix socket. Each connection carries what the caller layer needs to
//! know about its peer ([`Peer`]): whether it is on this host, and the
//! verified client certificate's names.
//!
//! Connections are capped per listener; a connection over the cap is closed
//! at once and counted. TLS handshakes run off the accept loop, each within
//! [`HANDSHAKE_TIMEOUT`], so that a slow or silent client holds nothing but
//! its own connection.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use crate::callers::PeerCertificate;
use crate::metrics::Metrics;
use crate::reread::{Fingerprint, Fingerprinter, Reread};

/// Longest a TLS handshake may take before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the TLS material is, and whether clients must show a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates.
    pub client_ca: Option<PathBuf>,
    /// With a client CA: a connection without a valid certificate is refused.
    pub client_auth_required: bool,
}

/// Why TLS files cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct TlsError {
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// The TLS configuration in force, replaced whole when its files change
/// and the new ones are valid.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    config: Reread<ServerConfig>,
}

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|error| TlsError {
        file: file.to_path_buf(),
        message: format!("cannot read: {error}"),
    })
}

fn server_config(files: &TlsFiles) -> Result<(ServerConfig, Fingerprint), TlsError> {
    let failed = |file: &Path, message: String| TlsError {
        file: file.to_path_buf(),
        message,
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let ca_pem = files.client_ca.as_deref().map(read).transpose()?;
    let mut fingerprint = Fingerprinter::default();
    for part in [Some(&cert_pem), Some(&key_pem), ca_pem.as_ref()]
        .into_iter()
        .flatten()
    {
        fingerprint.add(part);
    }
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| failed(&files.cert, format!("not a PEM certificate chain: {error}")))?;
    if chain.is_empty() {
        return Err(failed(&files.cert, "holds no certificate".to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| failed(&files.key, format!("not a PEM private key: {error}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| failed(&files.cert, error.to_string()))?;
    let builder = match (&files.client_ca, &ca_pem) {
        (Some(ca_file), Some(ca_pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem) {
                let cert = cert
                    .map_err(|error| failed(ca_file, format!("not a PEM certificate: {error}")))?;
                roots
                    .add(cert)
                    .map_err(|error| failed(ca_file, format!("not a CA certificate: {error}")))?;
            }
            if roots.is_empty() {
                return Err(failed(ca_file, "holds no certificate".to_string()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.client_auth_required {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|error| failed(ca_file, error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| failed(&files.key, format!("does not fit the certificate: {error}")))?;
    // HTTP/2 first (gRPC offers nothing else); HTTP/1.1 for the HTTP front
    // door's clients that do not speak HTTP/2.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, fingerprint.finish()))
}

impl Tls {
    /// Reads `files`.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let (config, fingerprint) = server_config(&files)?;
        Ok(Self {
            files,
            config: Reread::new(config, fingerprint),
        })
    }

    /// Rereads the files. `Ok(true)`: they changed and serve new
    /// connections from now on; `Ok(false)`: unchanged; an error leaves the
    /// previous configuration serving.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (config, fingerprint) = server_config(&self.files)?;
        Ok(self.config.offer(config, fingerprint))
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}

/// What the caller layer knows of a connection's peer.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The peer's address (none on the Unix socket).
    pub address: Option<SocketAddr>,
    /// On this host: loopback TCP or the Unix socket.
    pub local: bool,
    /// The names of its verified client certificate.
    pub certificate: Option<Arc<PeerCertificate>>,
}

enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// One accepted connection, holding its place under the listener's cap.
pub struct Conn {
    io: Io,
    peer: Peer,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Conn {
    /// What is known of the peer.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
            Io::Unix(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
            Io::Unix(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
            Io::Unix(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
            Io::Unix(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
            Io::Unix(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
            Io::Unix(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// The names of a verified client certificate (the first of the chain).
fn peer_certificate(chain: Option<&[CertificateDer<'static>]>) -> Option<Arc<PeerCertificate>> {
    let cert = webpki::EndEntityCert::try_from(chain?.first()?).ok()?;
    Some(Arc::new(PeerCertificate {
        uri_sans: cert.valid_uri_names().map(str::to_string).collect(),
        dns_sans: cert.valid_dns_names().map(str::to_string).collect(),
    }))
}

/// How a listener serves its connections.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Its name in logs and metrics: `api`, `admin` or `health`.
    pub name: &'static str,
    /// TLS, when configured for it.
    pub tls: Option<Arc<Tls>>,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Where refused connections are counted.
    pub metrics: Arc<Metrics>,
}

/// Whether a peer address is on this host.
fn is_local(address: &SocketAddr) -> bool {
    address.ip().to_canonical().is_loopback()
}

/// The next connection `accept` gives, waiting out failures (out of file
/// descriptors, say) with a backoff from 5 ms to 1 s rather than spinning;
/// `None` once `stop` turns true.
async fn next_accepted<T, F>(
    name: &'static str,
    stop: &mut watch::Receiver<bool>,
    mut accept: impl FnMut() -> F,
) -> Option<T>
where
    F: std::future::Future<Output = io::Result<T>>,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = accept() => accepted,
            _ = stop.wait_for(|stopping| *stopping) => return None,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(error) => {
                tracing::warn!(listener = name, error = %error, retry_in_ms = backoff.as_millis(), "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|stopping| *stopping) => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The connections of `listener`, accepted until `stop` turns true.
pub fn tcp(
    listener: TcpListener,
    settings: Listener,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Conn>> {
    let (sender, receiver) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    tokio::spawn(async move {
        while let Some((stream, address)) =
            next_accepted(settings.name, &mut stop, || listener.accept()).await
        {
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                settings
                    .metrics
                    .record_connection_refused(settings.name, "over_limit");
                drop(stream);
                continue;
            };
            // Decisions are small messages: send them at once (no Nagle delay).
            let _ = stream.set_nodelay(true);
            let local = is_local(&address);
            match &settings.tls {
                None => {
                    let conn = Conn {
                        io: Io::Tcp(stream),
                        peer: Peer {
                            address: Some(address),
                            local,
                            certificate: None,
                        },
                        _permit: Some(permit),
                    };
                    if sender.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    let sender = sender.clone();
                    let metrics = Arc::clone(&settings.metrics);
                    let name = settings.name;
                    tokio::spawn(async move {
                        let handshake =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                        let stream = match handshake {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(listener = name, peer = %address, error = %error, "TLS handshake failed");
                                metrics.record_connection_refused(name, "handshake_failed");
                                return;
                            }
                            Err(_) => {
                                metrics.record_connection_refused(name, "handshake_failed");
                                return;
                            }
                        };
                        let certificate = peer_certificate(stream.get_ref().1.peer_certificates());
                        let conn = Conn {
                            io: Io::Tls(Box::new(stream)),
                            peer: Peer {
                                address: Some(address),
                                local,
                                certificate,
                            },
                            _permit: Some(permit),
                        };
                        let _ = sender.send(Ok(conn)).await;
                    });
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// The connections of a Unix socket listener (at most `max_connections` at
/// once): every peer is local.
pub fn unix(
    listener: tokio::net::UnixListener,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Conn>> {
    let (sender, receiver) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        while let Some((stream, _)) = next_accepted("unix", &mut stop, || listener.accept()).await {
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let conn = Conn {
                io: Io::Unix(stream),
                peer: Peer {
                    address: None,
                    local: true,
                    certificate: None,
                },
                _permit: Some(permit),
            };
            if sender.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}
