//! End users' tokens for the tests: signing keys made with `openssl`, the
//! JWK set that publishes them, and JWTs signed with them.

use std::process::Command;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

/// A private key, its algorithm, its key id and its public JWK.
pub struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    /// Its key id.
    pub kid: String,
    jwk: Jwk,
    /// The public key in PEM (SubjectPublicKeyInfo).
    pub public_pem: Vec<u8>,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (scripts/test.sh installs it)");
    assert!(status.success(), "openssl {args:?}");
}

impl Signer {
    /// A new RSA 2048 key for RS256.
    pub fn rsa(kid: &str) -> Self {
        Self::generate(
            kid,
            Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        )
    }

    /// A new P-256 key for ES256.
    pub fn ec(kid: &str) -> Self {
        Self::generate(
            kid,
            Algorithm::ES256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    /// A new Ed25519 key for EdDSA.
    pub fn ed25519(kid: &str) -> Self {
        Self::generate(kid, Algorithm::EdDSA, &["-algorithm", "ed25519"])
    }

    fn generate(kid: &str, alg: Algorithm, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all = vec!["genpkey"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-out", "key.pem"]);
        openssl(dir.path(), &all);
        openssl(
            dir.path(),
            &["pkey", "-in", "key.pem", "-pubout", "-out", "public.pem"],
        );
        let pem = std::fs::read(dir.path().join("key.pem")).expect("key.pem");
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .expect("a key openssl made");
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("its JWK");
        jwk.common.key_id = Some(kid.to_string());
        Self {
            key,
            alg,
            kid: kid.to_string(),
            jwk,
            public_pem: std::fs::read(dir.path().join("public.pem")).expect("public.pem"),
        }
    }

    /// `claims`, signed with this key (its `kid` in the header).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &self.key).expect("sign")
    }
}

/// The JWK set publishing `signers`' public keys.
pub fn jwks(signers: &[&Signer]) -> String {
    serde_json::to_string(&JwkSet {
        keys: signers.iter().map(|signer| signer.jwk.clone()).collect(),
    })
    .expect("JWK set")
}

/// `claims` signed HS256 with `secret`, under `kid` (an attack: the RSA
/// public key's bytes used as an HMAC secret).
pub fn hs256(secret: &[u8], kid: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_string());
    encode(&header, claims, &EncodingKey::from_secret(secret)).expect("sign")
}

/// `claims` with `alg: none` and no signature.
pub fn unsigned(kid: &str, claims: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let encode = |value: &serde_json::Value| {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = value.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let mut bits = 0u32;
            for (index, byte) in chunk.iter().enumerate() {
                bits |= u32::from(*byte) << (16 - 8 * index);
            }
            for index in 0..=chunk.len() {
                let _ = write!(
                    out,
                    "{}",
                    ALPHABET[((bits >> (18 - 6 * index)) & 63) as usize] as char
                );
            }
        }
        out
    };
    format!(
        "{}.{}.",
        encode(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid})),
        encode(claims)
    )
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or_default(),
    )
    .unwrap_or(i64::MAX)
}
