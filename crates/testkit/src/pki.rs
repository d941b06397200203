//! Certificates made for a test with `openssl` (P-256 keys, valid two
//! days): CAs, a server certificate for `localhost` and 127.0.0.1, client
//! certificates with URI or DNS SANs; and TLS channels that present them.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A directory of certificates and keys.
pub struct Pki {
    dir: TempDir,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8).
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run openssl (scripts/test.sh installs it): {error}")
        });
    assert!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Pki {
    /// An empty directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A self-signed CA named `name` (`<name>.crt`, `<name>.key`).
    pub fn ca(&self, name: &str) -> Issued {
        let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
        openssl(
            self.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &cert,
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        self.issued(&cert, &key)
    }

    /// A certificate named `name` signed by `ca`, with the subject
    /// alternative names `sans` (`URI:spiffe://...`, `DNS:...`, `IP:...`,
    /// comma-separated), for a server or a client.
    pub fn leaf(&self, ca: &Issued, name: &str, sans: &str, client: bool) -> Issued {
        let (cert, key, csr, ext) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        let usage = if client { "clientAuth" } else { "serverAuth" };
        std::fs::write(
            self.path().join(&ext),
            format!("subjectAltName={sans}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .expect("write the extensions file");
        openssl(
            self.path(),
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            self.path(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca.cert.display().to_string(),
                "-CAkey",
                &ca.key.display().to_string(),
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        self.issued(&cert, &key)
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, ca: &Issued, name: &str) -> Issued {
        self.leaf(ca, name, "DNS:localhost,IP:127.0.0.1", false)
    }

    fn issued(&self, cert: &str, key: &str) -> Issued {
        Issued {
            cert: self.path().join(cert),
            key: self.path().join(key),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A TLS channel to `127.0.0.1:port` (as `localhost`) trusting `ca`,
/// presenting `identity` when given. The error is the connect error's text.
pub async fn tls_channel(
    port: u16,
    ca: &Issued,
    identity: Option<&Issued>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(
            std::fs::read(&ca.cert).expect("read the CA certificate"),
        ));
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&identity.cert).expect("read the certificate"),
            std::fs::read(&identity.key).expect("read the key"),
        ));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .map_err(|error| error.to_string())?
        .tls_config(tls)
        .map_err(|error| error.to_string())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10));
    endpoint
        .connect()
        .await
        .map_err(|error| tollgate::api::client::connect_error(&error))
}
