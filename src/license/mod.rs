//! Signed licenses: a tenant's entitlement snapshot and its terms, carried
//! as a compact JWS (RFC 7515) signed with Ed25519 (`alg: EdDSA`, RFC 8037)
//! and verified offline against trusted public keys.
//!
//! A license is the token alone in a file (one final newline allowed).
//! Its header is `{"alg":"EdDSA","typ":"tollgate-license+jwt","kid":...}`;
//! its claims are [`Claims`]. Any JOSE library that verifies EdDSA checks
//! one; `docs/licenses.md` describes the claims.
//!
//! Signatures are verified when the licenses directory is read, never per
//! check: a check reads the verified snapshot and compares two times.

pub mod clock;
pub mod command;
pub mod keys;
pub mod set;

use std::collections::BTreeMap;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use tollgate_engine::{PolicySnapshot, SnapshotSource, TenantSnapshot};

pub use keys::{KeyRing, PrivateKey};

/// The JWS `typ` of a license: tokens of other kinds signed by the same key
/// are never taken for licenses.
pub const TOKEN_TYPE: &str = "tollgate-license+jwt";

/// The attributes a license may be bound to.
pub const BINDING_KEYS: [&str; 3] = ["install", "hostname", "cluster"];

/// What a license says. Times are Unix seconds (JWT NumericDate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// License id (`jti`): what a revocation names.
    pub jti: String,
    /// The tenant (`sub`); the snapshot's `tenant`.
    pub sub: String,
    /// Issued at.
    pub iat: i64,
    /// Not valid before.
    pub nbf: i64,
    /// Expires: past it, checks are decided as usual for `grace` seconds,
    /// marked in grace; then they are denied `license_expired`.
    pub exp: i64,
    /// Seconds of grace after `exp`.
    #[serde(default)]
    pub grace: u64,
    /// Installation attributes the license is bound to (`install`,
    /// `hostname`, `cluster`); empty: valid anywhere.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bind: BTreeMap<String, String>,
    /// The license's version: the snapshot's `version`. A newer license of
    /// the tenant replaces an older one, never the reverse.
    pub ver: u64,
    /// The tenant snapshot document: `{tenant, version, entities}`.
    pub snapshot: serde_json::Value,
}

impl Claims {
    /// When grace ends (Unix seconds).
    pub fn grace_ends(&self) -> i64 {
        self.exp
            .saturating_add(i64::try_from(self.grace).unwrap_or(i64::MAX))
    }
}

/// Why a license is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The file cannot be read.
    #[error("cannot read: {0}")]
    Unreadable(String),
    /// Not a license token.
    #[error("not a license: {0}")]
    Malformed(String),
    /// The signature does not verify with the key its `kid` names.
    #[error("bad signature: the license does not verify with key {0} (altered, or signed by another key)")]
    BadSignature(String),
    /// No trusted key has the license's key id.
    #[error("unknown key {0}: no trusted key (license_keys) has this key id")]
    UnknownKey(String),
    /// The license's key is revoked.
    #[error("key {0} is revoked")]
    RevokedKey(String),
    /// The license id is revoked.
    #[error("license {0} is revoked")]
    RevokedLicense(String),
    /// `nbf` is still ahead.
    #[error("not yet valid: valid from {0}")]
    NotYetValid(String),
    /// Past `exp` and its grace.
    #[error("expired past grace: expired {expired}, grace ended {grace_ended}")]
    Expired {
        /// `exp`, as RFC 3339.
        expired: String,
        /// `exp + grace`, as RFC 3339.
        grace_ended: String,
    },
    /// Bound to another installation.
    #[error("bound elsewhere: {key} is `{wanted}`, this installation's is {have}")]
    BoundElsewhere {
        /// The binding attribute.
        key: String,
        /// What the license wants.
        wanted: String,
        /// What this installation has (quoted), or `not configured`.
        have: String,
    },
    /// The snapshot does not fit the policies' schema.
    #[error("snapshot invalid for the schema: {0}")]
    InvalidSnapshot(String),
    /// Not newer than the license serving for the tenant.
    #[error("version {version} is not newer than the serving license (version {serving}, {file}); licenses never go backwards")]
    Older {
        /// This license's version.
        version: u64,
        /// The serving license's version.
        serving: u64,
        /// The serving license's file.
        file: String,
    },
}

impl Refusal {
    /// The short name of the reason, for metrics and `/status`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreadable(_) => "unreadable",
            Self::Malformed(_) => "malformed",
            Self::BadSignature(_) => "bad_signature",
            Self::UnknownKey(_) => "unknown_key",
            Self::RevokedKey(_) => "revoked_key",
            Self::RevokedLicense(_) => "revoked_license",
            Self::NotYetValid(_) => "not_yet_valid",
            Self::Expired { .. } => "expired",
            Self::BoundElsewhere { .. } => "bound_elsewhere",
            Self::InvalidSnapshot(_) => "invalid_snapshot",
            Self::Older { .. } => "older_version",
        }
    }

    /// Every code, for metrics that are zero until they are not.
    pub const CODES: [&'static str; 11] = [
        "unreadable",
        "malformed",
        "bad_signature",
        "unknown_key",
        "revoked_key",
        "revoked_license",
        "not_yet_valid",
        "expired",
        "bound_elsewhere",
        "invalid_snapshot",
        "older_version",
    ];
}

/// A time as RFC 3339 (UTC), for messages.
pub fn rfc3339(unix_seconds: i64) -> String {
    jiff::Timestamp::from_second(unix_seconds).map_or_else(
        |_| format!("{unix_seconds} (Unix seconds)"),
        |t| t.to_string(),
    )
}

/// Reads a time: an RFC 3339 timestamp (`2027-06-30T12:00:00Z`) or a date
/// (`2027-06-30`, the start of that day in UTC). Unix seconds.
///
/// # Errors
///
/// When the text is neither.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(timestamp) = text.parse::<jiff::Timestamp>() {
        return Ok(timestamp.as_second());
    }
    text.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|date| {
            jiff::tz::TimeZone::UTC
                .to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
                .ok()
        })
        .map(|timestamp| timestamp.as_second())
        .ok_or_else(|| {
            format!(
                "`{text}` is not a date (2027-06-30) or an RFC 3339 time (2027-06-30T12:00:00Z)"
            )
        })
}

/// Reads a duration such as `30d`, `72h`, `1h 30m` or `0` (days are 24
/// hours). Seconds.
///
/// # Errors
///
/// When the text is not a non-negative duration.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    let problem = || format!("`{text}` is not a duration such as 30d, 72h or 1h 30m");
    let span = text.parse::<jiff::Span>().map_err(|_| problem())?;
    let seconds = span
        .total(jiff::SpanTotal::from(jiff::Unit::Second).days_are_24_hours())
        .map_err(|_| problem())?;
    if seconds < 0.0 || seconds.fract() != 0.0 || seconds > 1e15 {
        return Err(problem());
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked above: a whole number of seconds, 0 to 1e15"
    )]
    Ok(seconds as u64)
}

/// What `tollgate license issue` signs.
#[derive(Debug, Clone)]
pub struct IssueRequest<'a> {
    /// The snapshot document, as read from its file.
    pub snapshot: &'a [u8],
    /// License id; `None`: a random one.
    pub id: Option<String>,
    /// Issued at (Unix seconds).
    pub issued_at: i64,
    /// Not before (Unix seconds).
    pub not_before: i64,
    /// Expires (Unix seconds).
    pub expires: i64,
    /// Grace after `expires`, in seconds.
    pub grace: u64,
    /// Bindings.
    pub bind: BTreeMap<String, String>,
}

/// Validates the snapshot against `policies`' schema and signs a license.
///
/// # Errors
///
/// When the snapshot is invalid, the times are out of order, a binding names
/// an unknown attribute, or signing fails.
pub fn issue(
    request: &IssueRequest<'_>,
    policies: &PolicySnapshot,
    key: &PrivateKey,
) -> Result<(String, Claims), String> {
    let parsed = TenantSnapshot::parse(request.snapshot, None, policies, SnapshotSource::License)
        .map_err(|error| format!("the snapshot is invalid: {error}"))?;
    if request.expires <= request.not_before {
        return Err(format!(
            "--expires ({}) must be after --not-before ({})",
            rfc3339(request.expires),
            rfc3339(request.not_before)
        ));
    }
    for name in request.bind.keys() {
        if !BINDING_KEYS.contains(&name.as_str()) {
            return Err(format!(
                "--bind {name}=...: a license binds to {}",
                BINDING_KEYS.join(", ")
            ));
        }
    }
    let id = match &request.id {
        Some(id) if !id.trim().is_empty() => id.trim().to_string(),
        Some(_) => return Err("--id must not be empty".to_string()),
        None => random_id()?,
    };
    let snapshot: serde_json::Value = serde_json::from_slice(request.snapshot)
        .map_err(|error| format!("the snapshot is invalid: {error}"))?;
    let claims = Claims {
        jti: id,
        sub: parsed.tenant.clone(),
        iat: request.issued_at,
        nbf: request.not_before,
        exp: request.expires,
        grace: request.grace,
        bind: request.bind.clone(),
        ver: parsed.version,
        snapshot,
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(TOKEN_TYPE.to_string());
    header.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &key.encoding_key()?)
        .map_err(|error| format!("cannot sign: {error}"))?;
    Ok((token, claims))
}

fn random_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|error| format!("no random bytes from the operating system: {error}"))?;
    Ok(format!(
        "lic_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// A license whose signature verified with a trusted, unrevoked key.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The key id that signed it.
    pub kid: String,
    /// Its claims.
    pub claims: Claims,
}

/// The token of a license file: the file's bytes without one final newline.
/// Anything else around the token (spaces, other lines) makes it refused,
/// so that every byte of a license file is covered by the signature or by
/// this rule.
///
/// # Errors
///
/// When the file holds more than the token.
pub fn token_of(bytes: &[u8]) -> Result<&str, Refusal> {
    let token = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if token.is_empty() {
        return Err(Refusal::Malformed("the file is empty".to_string()));
    }
    if !token
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Refusal::Malformed(
            "a license file holds one compact JWS (base64url and dots) and at most a final newline"
                .to_string(),
        ));
    }
    // Checked above: ASCII only.
    std::str::from_utf8(token).map_err(|_| Refusal::Malformed("not ASCII".to_string()))
}

/// A license's header and claims read without verifying them: what
/// `inspect` prints, and the tenant the admin API holds a caller to before
/// verifying.
///
/// # Errors
///
/// When the token does not read as a license.
pub fn unverified(token: &str) -> Result<(jsonwebtoken::Header, Claims), Refusal> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|error| Refusal::Malformed(format!("its header does not read: {error}")))?;
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| Refusal::Malformed("not three dot-separated parts".to_string()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|error| Refusal::Malformed(format!("its claims are not base64url: {error}")))?;
    let claims = serde_json::from_slice(&bytes)
        .map_err(|error| Refusal::Malformed(format!("its claims do not read: {error}")))?;
    Ok((header, claims))
}

/// Verifies a license's signature, key and revocation (not its times, its
/// binding or its snapshot: [`set`] does those against the installation).
///
/// # Errors
///
/// The [`Refusal`] that keeps it from serving.
pub fn verify(token: &str, ring: &KeyRing) -> Result<Verified, Refusal> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|error| Refusal::Malformed(format!("its header does not read: {error}")))?;
    if header.alg != Algorithm::EdDSA {
        return Err(Refusal::Malformed(format!(
            "signed with {:?}; licenses are signed with EdDSA",
            header.alg
        )));
    }
    if header.typ.as_deref() != Some(TOKEN_TYPE) {
        return Err(Refusal::Malformed(format!(
            "typ is {}, not {TOKEN_TYPE}",
            header.typ.as_deref().unwrap_or("missing")
        )));
    }
    let Some(kid) = header.kid else {
        return Err(Refusal::Malformed(
            "its header names no key (kid)".to_string(),
        ));
    };
    if ring.revoked_keys.contains(&kid) {
        return Err(Refusal::RevokedKey(kid));
    }
    let Some(key) = ring.keys.get(&kid) else {
        return Err(Refusal::UnknownKey(kid));
    };
    let mut validation = Validation::new(Algorithm::EdDSA);
    // Times and audience are the license's own rules ([`set`]).
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(|error| {
            match error.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature
                | jsonwebtoken::errors::ErrorKind::Base64(_) => Refusal::BadSignature(kid.clone()),
                _ => Refusal::Malformed(format!("its claims do not read: {error}")),
            }
        })?;
    let claims = data.claims;
    if ring.revoked_licenses.contains(&claims.jti) {
        return Err(Refusal::RevokedLicense(claims.jti));
    }
    Ok(Verified { kid, claims })
}

#[cfg(test)]
mod tests;
