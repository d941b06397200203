//! Ed25519 license keys: the vendor's key pair files, their key ids, and the
//! ring of trusted public keys a sidecar verifies licenses with.
//!
//! A key id is the key's JWK thumbprint (RFC 7638: SHA-256 over
//! `{"crv":"Ed25519","kty":"OKP","x":"..."}`, base64url), so that it follows
//! from the key alone and any JOSE library computes the same one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tollgate_engine::policies::display_path;
use tollgate_engine::FileProblem;

/// The name of the revocation list in the trusted keys directory.
pub const REVOKED_FILE: &str = "revoked.yaml";

/// The key id of a public key: its RFC 7638 JWK thumbprint.
pub fn key_id(key: &VerifyingKey) -> String {
    let x = URL_SAFE_NO_PAD.encode(key.as_bytes());
    // RFC 7638: the required members in lexicographic order, no whitespace.
    let jwk = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// A vendor's signing key, read from a PKCS#8 PEM file.
pub struct PrivateKey {
    key: SigningKey,
    /// Its key id.
    pub kid: String,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// A new random key.
    ///
    /// # Errors
    ///
    /// When the operating system gives no random bytes.
    pub fn generate() -> Result<Self, String> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)
            .map_err(|error| format!("no random bytes from the operating system: {error}"))?;
        Ok(Self::from_signing_key(SigningKey::from_bytes(&seed)))
    }

    fn from_signing_key(key: SigningKey) -> Self {
        let kid = key_id(&key.verifying_key());
        Self { key, kid }
    }

    /// Reads an Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    ///
    /// # Errors
    ///
    /// When the file cannot be read or holds no Ed25519 private key.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("{}: cannot read: {error}", path.display()))?;
        SigningKey::from_pkcs8_pem(&text)
            .map(Self::from_signing_key)
            .map_err(|error| {
                format!(
                    "{}: not an Ed25519 private key in PKCS#8 PEM: {error}",
                    path.display()
                )
            })
    }

    /// The private key as PKCS#8 PEM.
    ///
    /// # Errors
    ///
    /// Never for a valid key (the encoder's own errors are passed on).
    pub fn to_pem(&self) -> Result<String, String> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.as_str().to_string())
            .map_err(|error| format!("cannot encode the private key: {error}"))
    }

    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    ///
    /// # Errors
    ///
    /// Never for a valid key (the encoder's own errors are passed on).
    pub fn public_pem(&self) -> Result<String, String> {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|error| format!("cannot encode the public key: {error}"))
    }

    /// The key in the form `jsonwebtoken` signs with (PKCS#8 DER).
    pub(crate) fn encoding_key(&self) -> Result<jsonwebtoken::EncodingKey, String> {
        self.key
            .to_pkcs8_der()
            .map(|der| jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()))
            .map_err(|error| format!("cannot encode the private key: {error}"))
    }
}

/// A trusted public key.
#[derive(Clone)]
pub struct TrustedKey {
    /// The file it was read from.
    pub file: String,
    pub(crate) decoding: jsonwebtoken::DecodingKey,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Reads an Ed25519 public key in SPKI PEM and gives its key id.
///
/// # Errors
///
/// When the file cannot be read or holds no Ed25519 public key (a private
/// key is refused by name: only public keys are trusted).
pub fn read_public_key(path: &Path) -> Result<(String, TrustedKey), String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read: {error}"))?;
    if text.contains("PRIVATE KEY") {
        return Err(
            "holds a private key; a sidecar trusts public keys only (`tollgate license keygen` writes both)"
                .to_string(),
        );
    }
    let key = VerifyingKey::from_public_key_pem(&text)
        .map_err(|error| format!("not an Ed25519 public key in SPKI PEM: {error}"))?;
    Ok((
        key_id(&key),
        TrustedKey {
            file: display_path(path),
            decoding: jsonwebtoken::DecodingKey::from_ed_der(key.as_bytes()),
        },
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedDocument {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    licenses: Vec<String>,
}

/// The trusted public keys (`*.pem` in the `license_keys` directory) and the
/// revocation list beside them (`revoked.yaml`: `keys:` and `licenses:`).
#[derive(Debug, Default, Clone)]
pub struct KeyRing {
    /// Trusted keys by key id.
    pub keys: BTreeMap<String, TrustedKey>,
    /// Revoked key ids: their licenses are refused, whatever else they say.
    pub revoked_keys: BTreeSet<String>,
    /// Revoked license ids.
    pub revoked_licenses: BTreeSet<String>,
    /// The directory they were read from.
    pub dir: PathBuf,
}

impl KeyRing {
    /// Reads the directory. A key file that cannot be read is reported and
    /// left out; an unreadable revocation list fails the whole ring (trusting
    /// keys without their revocations would let revoked licenses through).
    ///
    /// # Errors
    ///
    /// When the directory cannot be listed or `revoked.yaml` cannot be read.
    pub fn load(dir: &Path) -> Result<(Self, Vec<FileProblem>), FileProblem> {
        let shown = display_path(dir);
        let entries = std::fs::read_dir(dir).map_err(|error| {
            FileProblem::new(
                &shown,
                None,
                format!("cannot list the license keys directory: {error}"),
            )
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "pem"))
            .collect();
        paths.sort();
        let mut ring = Self {
            dir: dir.to_path_buf(),
            ..Self::default()
        };
        let mut problems = Vec::new();
        for path in paths {
            match read_public_key(&path) {
                Ok((kid, key)) => {
                    ring.keys.insert(kid, key);
                }
                Err(message) => {
                    problems.push(FileProblem::new(&display_path(&path), None, message))
                }
            }
        }
        let revoked = dir.join(REVOKED_FILE);
        match std::fs::read_to_string(&revoked) {
            Ok(text) => {
                let document: RevokedDocument =
                    serde_norway::from_str(&text).map_err(|error| {
                        FileProblem::new(
                            &display_path(&revoked),
                            error.location().map(|l| l.line()),
                            format!("not a revocation list ({{keys: [key id, ...], licenses: [license id, ...]}}): {error}"),
                        )
                    })?;
                ring.revoked_keys = document.keys.into_iter().collect();
                ring.revoked_licenses = document.licenses.into_iter().collect();
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(FileProblem::new(
                    &display_path(&revoked),
                    None,
                    format!("cannot read: {error}"),
                ))
            }
        }
        Ok((ring, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_the_rfc_7638_thumbprint() {
        // RFC 8037, appendix A.3: the thumbprint of the example Ed25519 key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let key = VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
        assert_eq!(key_id(&key), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn generated_keys_round_trip_through_pem() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap();
        std::fs::write(dir.path().join("k.key"), key.to_pem().unwrap()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.public_pem().unwrap()).unwrap();
        let read = PrivateKey::read(&dir.path().join("k.key")).unwrap();
        assert_eq!(read.kid, key.kid);
        let (kid, _) = read_public_key(&dir.path().join("k.pem")).unwrap();
        assert_eq!(kid, key.kid);
        let error = read_public_key(&dir.path().join("k.key")).unwrap_err();
        assert!(error.contains("holds a private key"), "{error}");
    }
}
