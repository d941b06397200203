//! Verified end-user identities: JSON Web Tokens (JWS compact serialization,
//! signed) checked against the issuers of `jwt_file` and their public keys
//! (JWK sets, from files or fetched from URLs). A token that passes becomes
//! a [`VerifiedToken`]: its issuer, its principal, its tenant and the claims
//! the file copies into the Cedar context. One that does not is refused
//! with the check that failed ([`TokenRefusal`], whose
//! [`TokenRefusal::check`] names it for metrics).
//!
//! Every front door (the gRPC `authorization` metadata, the HTTP header,
//! AuthZEN, Envoy's ext_authz request headers) hands the bare token to
//! [`Verifier::verify`] (or [`Verifier::verify_optional`]); [`looks_like_jwt`]
//! tells a JWT from an opaque caller token.
//!
//! # Design
//!
//! **The issuer is chosen before any key.** The token's `iss` is read
//! unverified, for one purpose only: to pick the issuer's configuration,
//! which then decides everything else (the algorithms, the keys, the
//! audiences). A token is never checked against another issuer's keys, so
//! one identity provider's key cannot vouch for another's `iss`, and an
//! unknown issuer costs no signature check and no fetch. Signature checks
//! (`jsonwebtoken`) then validate `iss`, `aud`, `exp` and `nbf` again on the
//! verified claims.
//!
//! **Algorithm confusion.** The header's `alg` is attacker-chosen, so it
//! picks nothing by itself: it must be in the issuer's `algorithms` (which
//! never hold `none` or an HMAC: the file is refused at load if they do),
//! and it must fit the key's type (RSA for RS*/PS*, P-256 for ES256, P-384
//! for ES384, Ed25519 for EdDSA; a key's own `alg`, when given, narrows it
//! further). Symmetric (`oct`) keys of a JWK set are skipped, so there is no
//! HMAC key to verify with at all; and each check hands `jsonwebtoken` the
//! one algorithm of the token (its `Validation::algorithms`), whose
//! verifier refuses a key of another family. The classic attack (an HS256
//! token whose secret is the RSA public key) fails three times over. Keys a
//! token carries or points at (`jwk`, `jku`, `x5u`, `x5c`) are ignored, and
//! a token with critical header extensions (`crit`) is refused.
//!
//! **Refetch throttling.** A URL's key set is fetched at start (a failure
//! there is an error naming the URL), by [`Verifier::reload`] on its
//! schedule (`jwks_refresh_s`; sooner after a failure), and when a token of
//! the issuer names a `kid` the cached set lacks (keys rotate before
//! schedules notice). That last fetch is what a stranger could provoke with
//! made-up key ids, so it happens at most once per
//! [`KID_MISS_REFETCH_INTERVAL`] per issuer, and concurrent misses share one
//! fetch: unknown kids cannot make tollgate hammer the identity provider. A
//! failed fetch keeps the keys in force.
//!
//! **Reloads.** The file and its JWKS files are fingerprinted; a reload
//! that finds them unchanged does nothing, a valid change replaces the
//! whole state at once (keys fetched from an unchanged URL are kept, not
//! refetched), an invalid one leaves the previous state serving.

mod fetch;
mod keys;
mod settings;
#[cfg(test)]
mod tests;

pub use fetch::{FETCH_TIMEOUT, MAX_JWKS_BYTES};
pub use settings::{
    IssuerSettings, JwtSettings, KeySource, DEFAULT_LEEWAY_S, DEFAULT_REFRESH_S, MAX_LEEWAY_S,
    MAX_REFRESH_S, MIN_REFRESH_S,
};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::reread::{Fingerprint, Fingerprinter};
use fetch::JwksUrl;
use keys::KeySet;

/// A token naming a `kid` its issuer's fetched set lacks makes tollgate
/// refetch the set at most this often per issuer.
pub const KID_MISS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// After a scheduled fetch fails, the next is tried this much later (or on
/// the schedule, when that is sooner).
pub const RETRY_AFTER_FAILED_FETCH: Duration = Duration::from_secs(30);

/// Tokens longer than this are refused as malformed without being decoded.
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

/// Why the JWT file (or a key set it names) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct JwtFileError {
    /// The file at fault: the JWT file, or a JWKS file it names. A
    /// `jwks_url` that cannot be fetched is the JWT file's, and the message
    /// names the URL.
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// A token that passed every check, and what the issuer's settings make
/// of its claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The issuer (the token's `iss`, one of the file's issuers).
    pub issuer: String,
    /// The token's `sub`, when it has one.
    pub subject: Option<String>,
    /// The string value of the issuer's `tenant_claim`, when configured and
    /// present (a valid tenant id).
    pub tenant: Option<String>,
    /// The principal: the issuer's `principal_type` and the string value of
    /// its `principal_claim`. Always `Some` for a token [`Verifier::verify`]
    /// accepts (the claim is required).
    pub principal: Option<(String, String)>,
    /// The issuer's `context_claims` present in the token, as JSON (for the
    /// context record `token`).
    pub context: Map<String, Value>,
    /// The token's `exp`, in seconds since the Unix epoch (how long a caller
    /// may keep the verdict).
    pub expires_at: u64,
}

/// Why a token was refused: one variant per check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// Not a JWS compact token, or parts of it do not decode.
    #[error("token: not a JWT: {0}")]
    Malformed(String),
    /// The `iss` is not one of the file's issuers.
    #[error("token: issuer `{0}` is not trusted")]
    UnknownIssuer(String),
    /// The header's `alg` is not one of the issuer's algorithms (`none`
    /// never is), or does not fit the key the token names.
    #[error("token: {}", algorithm_problem(.algorithm, .issuer, .key.as_deref()))]
    AlgorithmNotAllowed {
        /// The header's `alg`.
        algorithm: String,
        /// The issuer.
        issuer: String,
        /// The key the token names, when it is the key's type that does not
        /// fit.
        key: Option<String>,
    },
    /// No key of the issuer has the token's `kid` (even after a refetch,
    /// for a fetched set), or, without a `kid`, none fits its algorithm.
    #[error("token: {}", key_problem(.kid.as_deref(), .issuer))]
    UnknownKey {
        /// The header's `kid`.
        kid: Option<String>,
        /// The issuer.
        issuer: String,
    },
    /// The signature does not verify with the issuer's key.
    #[error("token: signature does not verify")]
    Signature,
    /// Its `exp` has passed (beyond the leeway).
    #[error("token: expired")]
    Expired,
    /// Its `nbf` or its `iat` is in the future (beyond the leeway).
    #[error("token: not valid yet (nbf or iat in the future)")]
    NotYetValid,
    /// Its `aud` names none of the issuer's audiences (or is missing).
    #[error("token: audience is not accepted for issuer `{0}`")]
    Audience(String),
    /// A claim tollgate needs is missing or not what it should be: `exp`,
    /// `iss`, the principal claim, the tenant claim.
    #[error("token: claim `{claim}` {problem}")]
    Claim {
        /// The claim.
        claim: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No token was sent where one is required.
    #[error("token: required but none was sent")]
    Missing,
}

fn algorithm_problem(algorithm: &str, issuer: &str, key: Option<&str>) -> String {
    match key {
        None => format!("algorithm {algorithm} is not accepted for issuer `{issuer}`"),
        Some(key) => {
            format!("algorithm {algorithm} does not fit key `{key}` of issuer `{issuer}`")
        }
    }
}

fn key_problem(kid: Option<&str>, issuer: &str) -> String {
    match kid {
        Some(kid) => format!("no key `{kid}` for issuer `{issuer}`"),
        None => format!("names no key (`kid`) and no key of issuer `{issuer}` fits its algorithm"),
    }
}

impl TokenRefusal {
    /// The check that failed, a short stable name for metrics: `malformed`,
    /// `issuer`, `algorithm`, `unknown_key`, `signature`, `expired`,
    /// `not_yet_valid`, `audience`, `claim` or `missing`.
    pub fn check(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownIssuer(_) => "issuer",
            Self::AlgorithmNotAllowed { .. } => "algorithm",
            Self::UnknownKey { .. } => "unknown_key",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Audience(_) => "audience",
            Self::Claim { .. } => "claim",
            Self::Missing => "missing",
        }
    }

    fn claim(claim: &str, problem: impl Into<String>) -> Self {
        Self::Claim {
            claim: shown(claim),
            problem: problem.into(),
        }
    }
}

/// Whether a bearer value is shaped as a JWT: three dot-separated parts of
/// base64url, the header and the payload not empty, the header beginning as
/// a JSON object does (`ey`). The signature may be empty, so that an
/// unsigned token (`alg: none`) is taken for what it claims to be and
/// refused by name. Front doors use it to tell user tokens from opaque
/// caller tokens; it verifies nothing.
pub fn looks_like_jwt(value: &str) -> bool {
    let base64url = |part: &str| {
        part.bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    };
    let mut parts = value.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            header.starts_with("ey")
                && !payload.is_empty()
                && base64url(header)
                && base64url(payload)
                && base64url(signature)
        }
        _ => false,
    }
}

/// Decodes unpadded base64url (RFC 7515's encoding of every JWS part and
/// JWK field).
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    fn value(byte: u8) -> Option<u32> {
        Some(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut bits = 0u32;
        for byte in chunk {
            bits = bits << 6 | value(*byte)?;
        }
        bits <<= 6 * (4 - chunk.len() as u32);
        let decoded = bits.to_be_bytes();
        out.extend_from_slice(&decoded[1..chunk.len()]);
    }
    Some(out)
}

/// A string of the token (unverified, so anyone's) as messages show it:
/// control characters escaped, at most 100 characters.
fn shown(text: &str) -> String {
    const MOST: usize = 100;
    let mut out: String = text
        .chars()
        .take(MOST)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MOST).is_some() {
        out.push('…');
    }
    out
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What is read of a token before any key is chosen.
struct Unverified {
    alg: String,
    kid: Option<String>,
    iss: String,
    /// The payload has a `sub` that is not a string, which `jsonwebtoken`
    /// cannot read (it reports the payload as broken JSON).
    sub_not_string: bool,
}

impl Unverified {
    fn parse(token: &str) -> Result<Self, TokenRefusal> {
        let malformed = |why: &str| TokenRefusal::Malformed(why.to_string());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenRefusal::Malformed(format!(
                "longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three dot-separated parts"));
        };
        let object = |part: &str, what: &str| -> Result<Map<String, Value>, TokenRefusal> {
            let bytes = b64url_decode(part)
                .ok_or_else(|| TokenRefusal::Malformed(format!("the {what} is not base64url")))?;
            serde_json::from_slice(&bytes)
                .map_err(|_| TokenRefusal::Malformed(format!("the {what} is not a JSON object")))
        };
        let header = object(header, "header")?;
        let payload = object(payload, "payload")?;
        let Some(alg) = header.get("alg").and_then(Value::as_str) else {
            return Err(malformed("the header has no `alg`"));
        };
        if header.contains_key("crit") {
            return Err(malformed(
                "the header names critical extensions (`crit`), which tollgate does not understand",
            ));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(malformed("the header's `kid` is not a string")),
        };
        let Some(iss) = payload.get("iss").and_then(Value::as_str) else {
            return Err(TokenRefusal::claim(
                "iss",
                "is required: a string naming the issuer",
            ));
        };
        Ok(Self {
            alg: alg.to_string(),
            kid,
            iss: iss.to_string(),
            sub_not_string: payload.get("sub").is_some_and(|sub| !sub.is_string()),
        })
    }
}

/// A fetched key set and its schedule.
#[derive(Debug)]
struct RemoteKeys {
    issuer: String,
    url: JwksUrl,
    algorithms: Vec<Algorithm>,
    refresh: Duration,
    keys: ArcSwap<KeySet>,
    /// When the schedule fetches next.
    next_due: Mutex<Instant>,
    /// When a `kid` miss last fetched.
    last_miss_fetch: Mutex<Option<Instant>>,
    /// Held while fetching: one fetch at a time per set.
    fetching: tokio::sync::Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RemoteKeys {
    /// The set of `url`, fetched once.
    async fn first(issuer: &IssuerSettings, url: &str, refresh: Duration) -> Result<Self, String> {
        let url = JwksUrl::parse(url)?;
        let body = url.fetch().await?;
        let keys = KeySet::parse(&body, &issuer.algorithms, &url.text)?;
        Ok(Self {
            issuer: issuer.issuer.clone(),
            url,
            algorithms: issuer.algorithms.clone(),
            refresh,
            keys: ArcSwap::from_pointee(keys),
            next_due: Mutex::new(Instant::now() + refresh),
            last_miss_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Fetches the set and puts it in force when valid; whether it changed.
    /// The caller holds `fetching`.
    async fn fetch_now(&self) -> Result<bool, String> {
        let outcome = match self.url.fetch().await {
            Ok(body) => KeySet::parse(&body, &self.algorithms, &self.url.text),
            Err(error) => Err(error),
        };
        let now = Instant::now();
        match outcome {
            Ok(keys) => {
                *lock(&self.next_due) = now + self.refresh;
                if keys.digest == self.keys.load().digest {
                    return Ok(false);
                }
                info!(issuer = %self.issuer, url = %self.url.text, keys = keys.keys.len(), "JWK set changed; new keys in force");
                self.keys.store(Arc::new(keys));
                Ok(true)
            }
            Err(error) => {
                *lock(&self.next_due) = now + self.refresh.min(RETRY_AFTER_FAILED_FETCH);
                Err(error)
            }
        }
    }

    /// Fetches the set when its schedule says so.
    async fn refresh_if_due(&self) -> Result<bool, String> {
        if Instant::now() < *lock(&self.next_due) {
            return Ok(false);
        }
        let _fetching = self.fetching.lock().await;
        // Someone else may have fetched while this waited.
        if Instant::now() < *lock(&self.next_due) {
            return Ok(false);
        }
        self.fetch_now().await
    }

    /// A token names `kid`, which the set lacks: refetches the set unless a
    /// miss did within [`KID_MISS_REFETCH_INTERVAL`].
    async fn refetch_for(&self, kid: &str) {
        let _fetching = self.fetching.lock().await;
        if self.keys.load().has_kid(kid) {
            // Fetched meanwhile, by another miss or the schedule.
            return;
        }
        {
            let mut last = lock(&self.last_miss_fetch);
            let now = Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < KID_MISS_REFETCH_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        if let Err(error) = self.fetch_now().await {
            warn!(issuer = %self.issuer, url = %self.url.text, error = %error, "cannot refetch the JWK set for an unknown key id; the keys in force stay");
        }
    }
}

/// Where an issuer's keys are held.
#[derive(Debug)]
enum IssuerKeys {
    /// Read from a file (replaced with the whole state when it changes).
    File(Arc<KeySet>),
    /// Fetched from a URL (replaced in place when a fetch changes them).
    Url(Arc<RemoteKeys>),
}

impl IssuerKeys {
    fn current(&self) -> Arc<KeySet> {
        match self {
            Self::File(keys) => Arc::clone(keys),
            Self::Url(remote) => remote.keys.load_full(),
        }
    }
}

/// One trusted issuer in force.
#[derive(Debug)]
struct Issuer {
    settings: IssuerSettings,
    keys: IssuerKeys,
    /// `iss`, `aud`, `exp`, `nbf` and the leeway; the algorithm is set per
    /// token.
    validation: Validation,
}

/// Everything in force.
#[derive(Debug)]
struct State {
    issuers: BTreeMap<String, Issuer>,
    leeway_s: u64,
    required: bool,
}

/// The JWT file, and the JWKS files it names, read.
struct Read {
    settings: JwtSettings,
    files: HashMap<PathBuf, Vec<u8>>,
    fingerprint: Fingerprint,
}

async fn read_files(file: &Path) -> Result<Read, JwtFileError> {
    let text = tokio::fs::read(file).await.map_err(|error| JwtFileError {
        file: file.to_path_buf(),
        message: format!("cannot read: {error}"),
    })?;
    let settings = JwtSettings::parse(file, &text)?;
    let mut fingerprint = Fingerprinter::default();
    fingerprint.add(&text);
    let mut files = HashMap::new();
    for issuer in &settings.issuers {
        if let KeySource::File(path) = &issuer.keys {
            if files.contains_key(path) {
                continue;
            }
            let bytes = tokio::fs::read(path).await.map_err(|error| JwtFileError {
                file: path.clone(),
                message: format!(
                    "issuer `{}`: cannot read the JWK set: {error}",
                    issuer.issuer
                ),
            })?;
            fingerprint.add(path.as_os_str().as_encoded_bytes());
            fingerprint.add(&bytes);
            files.insert(path.clone(), bytes);
        }
    }
    Ok(Read {
        settings,
        files,
        fingerprint: fingerprint.finish(),
    })
}

fn validation(issuer: &IssuerSettings, leeway_s: u64) -> Validation {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.algorithms.clear();
    validation.leeway = leeway_s;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_issuer(&[&issuer.issuer]);
    validation.set_audience(&issuer.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation
}

/// The state of `read`; keys fetched for `previous` from the same URL are
/// kept, other URLs are fetched.
async fn build_state(read: Read, previous: Option<&State>) -> Result<State, JwtFileError> {
    let file = &read.settings.file;
    let mut issuers = BTreeMap::new();
    for settings in read.settings.issuers {
        let keys = match &settings.keys {
            KeySource::File(path) => {
                let bytes = read.files.get(path).ok_or_else(|| JwtFileError {
                    file: path.clone(),
                    message: format!("issuer `{}`: the JWK set was not read", settings.issuer),
                })?;
                let keys = KeySet::parse(bytes, &settings.algorithms, &path.display().to_string())
                    .map_err(|problem| JwtFileError {
                        file: path.clone(),
                        message: format!("issuer `{}`: {problem}", settings.issuer),
                    })?;
                IssuerKeys::File(Arc::new(keys))
            }
            KeySource::Url { url, refresh } => {
                let kept = previous
                    .and_then(|state| state.issuers.get(&settings.issuer))
                    .and_then(|issuer| match &issuer.keys {
                        IssuerKeys::Url(remote)
                            if remote.url.text == *url
                                && remote.algorithms == settings.algorithms
                                && remote.refresh == *refresh =>
                        {
                            Some(Arc::clone(remote))
                        }
                        _ => None,
                    });
                let remote = match kept {
                    Some(remote) => remote,
                    None => Arc::new(RemoteKeys::first(&settings, url, *refresh).await.map_err(
                        |problem| JwtFileError {
                            file: file.clone(),
                            message: format!(
                                "issuer `{}`: jwks_url `{url}`: {problem}",
                                settings.issuer
                            ),
                        },
                    )?),
                };
                IssuerKeys::Url(remote)
            }
        };
        let validation = validation(&settings, read.settings.leeway_s);
        issuers.insert(
            settings.issuer.clone(),
            Issuer {
                settings,
                keys,
                validation,
            },
        );
    }
    Ok(State {
        issuers,
        leeway_s: read.settings.leeway_s,
        required: read.settings.required,
    })
}

/// What a failed `jsonwebtoken` check means.
fn refusal(
    error: &jsonwebtoken::errors::Error,
    issuer: &str,
    algorithm: Algorithm,
) -> TokenRefusal {
    match error.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenRefusal::Signature,
        ErrorKind::ExpiredSignature => TokenRefusal::Expired,
        ErrorKind::ImmatureSignature => TokenRefusal::NotYetValid,
        ErrorKind::InvalidAudience => TokenRefusal::Audience(issuer.to_string()),
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
            TokenRefusal::Audience(issuer.to_string())
        }
        // `jsonwebtoken` takes an `exp` (or `nbf`) that is not a number for
        // a missing one.
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" || claim == "nbf" => {
            TokenRefusal::claim(
                claim,
                "is required: a number of seconds since the Unix epoch",
            )
        }
        ErrorKind::MissingRequiredClaim(claim) => TokenRefusal::claim(claim, "is required"),
        ErrorKind::InvalidClaimFormat(claim) => {
            TokenRefusal::claim(claim, "must be a number of seconds since the Unix epoch")
        }
        ErrorKind::InvalidIssuer => TokenRefusal::UnknownIssuer(issuer.to_string()),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => TokenRefusal::AlgorithmNotAllowed {
            algorithm: format!("{algorithm:?}"),
            issuer: issuer.to_string(),
            key: None,
        },
        _ => TokenRefusal::Malformed(error.to_string()),
    }
}

impl Issuer {
    /// The identity of verified `claims`.
    fn identity(
        &self,
        claims: Map<String, Value>,
        leeway_s: u64,
    ) -> Result<VerifiedToken, TokenRefusal> {
        let settings = &self.settings;
        let seconds = |value: &Value| {
            value.as_u64().or_else(|| {
                value
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| s as u64)
            })
        };
        if let Some(iat) = claims.get("iat") {
            match seconds(iat) {
                Some(iat) if iat > now_s().saturating_add(leeway_s) => {
                    return Err(TokenRefusal::NotYetValid)
                }
                Some(_) => {}
                None => {
                    return Err(TokenRefusal::claim(
                        "iat",
                        "must be a number of seconds since the Unix epoch",
                    ))
                }
            }
        }
        let expires_at = claims.get("exp").and_then(seconds).ok_or_else(|| {
            TokenRefusal::claim("exp", "must be a number of seconds since the Unix epoch")
        })?;
        let string = |name: &str| -> Result<Option<String>, TokenRefusal> {
            match claims.get(name) {
                None => Ok(None),
                Some(Value::String(value)) => Ok(Some(value.clone())),
                Some(_) => Err(TokenRefusal::claim(name, "must be a string")),
            }
        };
        let subject = string("sub")?;
        let tenant = match &settings.tenant_claim {
            None => None,
            Some(name) => match string(name)? {
                None => None,
                Some(tenant) => {
                    tollgate_engine::check_tenant_id(&tenant).map_err(|problem| {
                        TokenRefusal::claim(name, format!("is not a tenant id: {problem}"))
                    })?;
                    Some(tenant)
                }
            },
        };
        let principal = match string(&settings.principal_claim)? {
            Some(id) if !id.is_empty() => (settings.principal_type.clone(), id),
            Some(_) => return Err(TokenRefusal::claim(&settings.principal_claim, "is empty")),
            None => {
                return Err(TokenRefusal::claim(
                    &settings.principal_claim,
                    "is required: it names the principal",
                ))
            }
        };
        let context = settings
            .context_claims
            .iter()
            .filter_map(|name| Some((name.clone(), claims.get(name)?.clone())))
            .collect();
        Ok(VerifiedToken {
            issuer: settings.issuer.clone(),
            subject,
            tenant,
            principal: Some(principal),
            context,
            expires_at,
        })
    }
}

/// The trusted issuers and their keys, replaced whole when the files
/// change, keys of URLs replaced in place when a fetch changes them.
#[derive(Debug)]
pub struct Verifier {
    file: PathBuf,
    state: ArcSwap<State>,
    /// The fingerprint of the files in force; held through a reload, so
    /// that reloads do not overlap.
    fingerprint: tokio::sync::Mutex<Fingerprint>,
}

impl Verifier {
    /// Reads `file` and the JWKS files it names, and fetches its JWKS URLs
    /// (a URL that cannot be fetched is an error naming it).
    pub async fn load(file: &Path) -> Result<Self, JwtFileError> {
        let read = read_files(file).await?;
        let fingerprint = read.fingerprint;
        let state = build_state(read, None).await?;
        Ok(Self {
            file: file.to_path_buf(),
            state: ArcSwap::from_pointee(state),
            fingerprint: tokio::sync::Mutex::new(fingerprint),
        })
    }

    /// The JWT file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Whether a request without a token is refused (`required`).
    pub fn required(&self) -> bool {
        self.state.load().required
    }

    /// The trusted issuers, in order.
    pub fn issuers(&self) -> Vec<String> {
        self.state.load().issuers.keys().cloned().collect()
    }

    /// Verifies `token` when there is one: without one, `Ok(None)`, or
    /// [`TokenRefusal::Missing`] when the file says tokens are `required`.
    pub async fn verify_optional(
        &self,
        token: Option<&str>,
    ) -> Result<Option<VerifiedToken>, TokenRefusal> {
        match token {
            Some(token) => self.verify(token).await.map(Some),
            None if self.required() => Err(TokenRefusal::Missing),
            None => Ok(None),
        }
    }

    /// Verifies `token` (the bare JWT, without `Bearer `): its issuer, its
    /// algorithm, its signature with the issuer's key, `exp` (required),
    /// `nbf`, `iat`, `aud`, and the claims the issuer's settings read. On a
    /// `kid` that no key of a fetched set has, the set is refetched first
    /// (at most once per [`KID_MISS_REFETCH_INTERVAL`] per issuer).
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenRefusal> {
        let state = self.state.load_full();
        let unverified = Unverified::parse(token)?;
        let Some(issuer) = state.issuers.get(&unverified.iss) else {
            return Err(TokenRefusal::UnknownIssuer(shown(&unverified.iss)));
        };
        let name = &issuer.settings.issuer;
        let algorithm = match Algorithm::from_str(&unverified.alg) {
            Ok(algorithm) if issuer.settings.algorithms.contains(&algorithm) => algorithm,
            _ => {
                return Err(TokenRefusal::AlgorithmNotAllowed {
                    algorithm: shown(&unverified.alg),
                    issuer: name.clone(),
                    key: None,
                })
            }
        };
        if unverified.sub_not_string {
            return Err(TokenRefusal::claim("sub", "must be a string"));
        }
        let kid = unverified.kid.as_deref();
        let mut keys = issuer.keys.current();
        if let (Some(kid), IssuerKeys::Url(remote)) = (kid, &issuer.keys) {
            if !keys.has_kid(kid) {
                remote.refetch_for(kid).await;
                keys = remote.keys.load_full();
            }
        }
        let named: Vec<&keys::Key> = keys
            .keys
            .iter()
            .filter(|key| kid.is_none() || key.kid.as_deref() == kid)
            .collect();
        if named.is_empty() {
            return Err(TokenRefusal::UnknownKey {
                kid: kid.map(shown),
                issuer: name.clone(),
            });
        }
        let fitting: Vec<&keys::Key> = named
            .into_iter()
            .filter(|key| key.algorithms.contains(&algorithm))
            .collect();
        if fitting.is_empty() {
            return Err(match kid {
                Some(kid) => TokenRefusal::AlgorithmNotAllowed {
                    algorithm: format!("{algorithm:?}"),
                    issuer: name.clone(),
                    key: Some(shown(kid)),
                },
                None => TokenRefusal::UnknownKey {
                    kid: None,
                    issuer: name.clone(),
                },
            });
        }
        let mut validation = issuer.validation.clone();
        validation.algorithms = vec![algorithm];
        let mut refused = TokenRefusal::Signature;
        for key in fitting {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return issuer.identity(data.claims, state.leeway_s),
                Err(error) => {
                    refused = refusal(&error, name, algorithm);
                    // Another key of the same id or algorithm may verify
                    // it; any other failure is the token's.
                    if refused != TokenRefusal::Signature {
                        return Err(refused);
                    }
                }
            }
        }
        Err(refused)
    }

    /// Rereads the JWT file and its JWKS files: `Ok(true)` when they changed
    /// and now serve (or a fetched set changed), `Ok(false)` when nothing
    /// changed; an error keeps the previous state serving. Also refetches
    /// the JWKS URLs whose schedule is due (a failure keeps their keys and
    /// is the error, unless the files changed).
    pub async fn reload(&self) -> Result<bool, JwtFileError> {
        let files = self.reload_files().await;
        let fetched = self.refresh_due().await;
        match (files, fetched) {
            (Err(error), Err(fetch)) => {
                warn!(error = %fetch, "cannot refetch a JWK set; its keys in force stay");
                Err(error)
            }
            (Err(error), Ok(_)) => Err(error),
            (Ok(changed), Ok(fetched)) => Ok(changed || fetched),
            (Ok(true), Err(fetch)) => {
                warn!(error = %fetch, "cannot refetch a JWK set; its keys in force stay");
                Ok(true)
            }
            (Ok(false), Err(fetch)) => Err(fetch),
        }
    }

    async fn reload_files(&self) -> Result<bool, JwtFileError> {
        let mut in_force = self.fingerprint.lock().await;
        let read = read_files(&self.file).await?;
        if read.fingerprint == *in_force {
            return Ok(false);
        }
        let fingerprint = read.fingerprint;
        let previous = self.state.load_full();
        let state = build_state(read, Some(&previous)).await?;
        self.state.store(Arc::new(state));
        *in_force = fingerprint;
        Ok(true)
    }

    async fn refresh_due(&self) -> Result<bool, JwtFileError> {
        let state = self.state.load_full();
        let mut changed = false;
        let mut failed = None;
        for issuer in state.issuers.values() {
            let IssuerKeys::Url(remote) = &issuer.keys else {
                continue;
            };
            match remote.refresh_if_due().await {
                Ok(fetched) => changed |= fetched,
                Err(problem) => {
                    failed.get_or_insert_with(|| JwtFileError {
                        file: self.file.clone(),
                        message: format!(
                            "issuer `{}`: jwks_url `{}`: {problem}",
                            remote.issuer, remote.url.text
                        ),
                    });
                }
            }
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(changed),
        }
    }
}
