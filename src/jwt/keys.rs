//! An issuer's JWK set, reduced to the keys tollgate can use: public keys
//! for signatures, of a type and size it supports, fitting one of the
//! issuer's algorithms. A key that does not is skipped (and logged at
//! debug), not fatal; a set left without any key is an error.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use sha2::{Digest, Sha256};
use tracing::debug;

use super::b64url_decode;

/// The most keys of one set that are used (a token without a `kid` is
/// tried against each key that fits its algorithm).
pub(super) const MAX_KEYS: usize = 64;

/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Largest RSA modulus the verifier handles, in bits.
const MAX_RSA_BITS: usize = 4096;

/// One usable public key.
#[derive(Debug)]
pub(super) struct Key {
    /// Its `kid`, when the set gives one.
    pub(super) kid: Option<String>,
    /// The algorithms it may verify: those of its type (or its own `alg`)
    /// that the issuer accepts. Never an HMAC.
    pub(super) algorithms: Vec<Algorithm>,
    /// The key.
    pub(super) key: DecodingKey,
}

/// The usable keys of one JWK set.
#[derive(Debug)]
pub(super) struct KeySet {
    pub(super) keys: Vec<Key>,
    /// SHA-256 of the set as read, to tell whether a refetch changed it.
    pub(super) digest: [u8; 32],
}

/// Why the set as a whole cannot be used.
fn describe_skipped(skipped: &[String]) -> String {
    match skipped.len() {
        0 => "it lists no key".to_string(),
        n if n <= 3 => skipped.join("; "),
        n => format!("{}; and {} more", skipped[..3].join("; "), n - 3),
    }
}

impl KeySet {
    /// The keys of the JWK set `bytes` that verify one of `allowed`.
    /// `origin` names where the set came from in debug logs.
    pub(super) fn parse(bytes: &[u8], allowed: &[Algorithm], origin: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let raw: RawSet = serde_json::from_slice(bytes)
            .map_err(|error| format!("not a JWK set (a JSON object with `keys`): {error}"))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, value) in raw.keys.into_iter().enumerate() {
            let kid = value
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string);
            let named = match &kid {
                Some(kid) => format!("key `{kid}`"),
                None => format!("key {index}"),
            };
            let outcome = serde_json::from_value::<Jwk>(value)
                .map_err(|error| format!("not a JWK: {error}"))
                .and_then(|jwk| usable(&jwk, allowed));
            match outcome {
                Ok(_) if keys.len() >= MAX_KEYS => {
                    debug!(origin, key = %named, "JWK skipped: the set has more than {MAX_KEYS} usable keys");
                }
                Ok(key) => keys.push(key),
                Err(why) => {
                    debug!(origin, key = %named, why = %why, "JWK skipped");
                    skipped.push(format!("{named}: {why}"));
                }
            }
        }
        if keys.is_empty() {
            let names: Vec<String> = allowed.iter().map(|alg| format!("{alg:?}")).collect();
            return Err(format!(
                "holds no usable key for {} ({})",
                names.join(", "),
                describe_skipped(&skipped)
            ));
        }
        Ok(Self {
            keys,
            digest: Sha256::digest(bytes).into(),
        })
    }

    /// Whether a key has the id `kid`.
    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }
}

/// The bytes of a base64url field of a JWK.
fn field(name: &str, value: &str) -> Result<Vec<u8>, String> {
    b64url_decode(value).ok_or_else(|| format!("its `{name}` is not base64url"))
}

/// Checks `jwk` and makes it a [`Key`] for the algorithms of `allowed` it
/// fits.
fn usable(jwk: &Jwk, allowed: &[Algorithm]) -> Result<Key, String> {
    if let Some(used) = &jwk.common.public_key_use {
        if *used != PublicKeyUse::Signature {
            return Err("its `use` is not `sig`".to_string());
        }
    }
    if let Some(operations) = &jwk.common.key_operations {
        if !operations.contains(&KeyOperations::Verify) {
            return Err("its `key_ops` lack `verify`".to_string());
        }
    }
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(Algorithm::try_from(alg).map_err(|_| {
            format!("its `alg` {alg} is not a signature algorithm tollgate supports")
        })?),
    };
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = field("n", &rsa.n)?;
            let significant = match modulus.iter().position(|byte| *byte != 0) {
                Some(first) => &modulus[first..],
                None => &[][..],
            };
            let bits = significant.first().map_or(0, |top| {
                significant.len() * 8 - top.leading_zeros() as usize
            });
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "an RSA key of {bits} bits (at least {MIN_RSA_BITS} are required)"
                ));
            }
            if bits > MAX_RSA_BITS {
                return Err(format!(
                    "an RSA key of {bits} bits (at most {MAX_RSA_BITS} are supported)"
                ));
            }
            if field("e", &rsa.e)?.iter().all(|byte| *byte == 0) {
                return Err("its RSA exponent `e` is empty".to_string());
            }
            AlgorithmFamily::Rsa.algorithms()
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (algorithms, size): (&[Algorithm], usize) = match ec.curve {
                EllipticCurve::P256 => (&[Algorithm::ES256], 32),
                EllipticCurve::P384 => (&[Algorithm::ES384], 48),
                ref curve => return Err(format!("the curve {curve:?} is not supported")),
            };
            if field("x", &ec.x)?.len() != size || field("y", &ec.y)?.len() != size {
                return Err(format!("its `x` and `y` are not {size} bytes each"));
            }
            algorithms
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err(format!("the curve {:?} is not supported", okp.curve));
            }
            // The verifier reads the first 32 bytes of `x` and would panic
            // on fewer: the length is checked here, once, for every key.
            if field("x", &okp.x)?.len() != 32 {
                return Err("its `x` is not 32 bytes (an Ed25519 public key)".to_string());
            }
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (`oct`) key: tollgate accepts no shared secrets".to_string())
        }
        AlgorithmParameters::Other(other) => {
            let kty = other
                .fields
                .get("kty")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?");
            return Err(format!("its key type `{kty}` is not supported"));
        }
        // The enum is non-exhaustive: a key type added later is not known here.
        _ => return Err("its key type is not supported".to_string()),
    };
    let fitting: Vec<Algorithm> = match declared {
        Some(alg) if !family.contains(&alg) => {
            return Err(format!("its `alg` {alg:?} does not fit its key type"))
        }
        Some(alg) => vec![alg],
        None => family.to_vec(),
    };
    let algorithms: Vec<Algorithm> = fitting
        .into_iter()
        .filter(|alg| allowed.contains(alg))
        .collect();
    let Some(first) = algorithms.first().copied() else {
        return Err("it fits none of the issuer's algorithms".to_string());
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|error| format!("not a public key: {error}"))?;
    // Building a verifier checks the key material (an EC point on its
    // curve, an Ed25519 point); the empty signature then simply fails.
    jsonwebtoken::crypto::verify("", b"", &key, first)
        .map_err(|error| format!("not a valid public key: {error}"))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}
