//! The JWT file: which issuers are trusted, for which audiences, with which
//! algorithms and keys, and how a verified token's claims become a
//! principal, a tenant and a context. Reading it does no I/O beyond the
//! file itself: the key sets it names are read (or fetched) by
//! [`super::Verifier`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::fetch::JwksUrl;
use super::JwtFileError;

/// Clock skew allowed for `exp`, `nbf` and `iat` unless the file says
/// otherwise (`leeway_s`).
pub const DEFAULT_LEEWAY_S: u64 = 30;

/// The largest `leeway_s` accepted.
pub const MAX_LEEWAY_S: u64 = 300;

/// How often a `jwks_url` is refetched unless the file says otherwise
/// (`jwks_refresh_s`).
pub const DEFAULT_REFRESH_S: u64 = 300;

/// The shortest `jwks_refresh_s` accepted (so that no schedule hammers the
/// identity provider).
pub const MIN_REFRESH_S: u64 = 10;

/// The longest `jwks_refresh_s` accepted (a day).
pub const MAX_REFRESH_S: u64 = 86_400;

/// The algorithms an issuer may list: public-key signatures only.
const KNOWN_ALGORITHMS: &str = "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// The JWT file as understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// The file it was read from.
    pub file: PathBuf,
    /// The trusted issuers, in the file's order; no two share an `issuer`.
    pub issuers: Vec<IssuerSettings>,
    /// Clock skew allowed for `exp`, `nbf` and `iat`, in seconds.
    pub leeway_s: u64,
    /// Whether a request without a token is refused.
    pub required: bool,
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSettings {
    /// What a token's `iss` must be, exactly.
    pub issuer: String,
    /// A token's `aud` (a string or an array) must name one of them.
    pub audiences: Vec<String>,
    /// The algorithms a token's header may name (never `none`, never HMAC).
    pub algorithms: Vec<Algorithm>,
    /// Where the issuer's public keys are.
    pub keys: KeySource,
    /// The claim whose string value is the tenant, if any.
    pub tenant_claim: Option<String>,
    /// The claim whose string value is the principal's id (`sub` unless
    /// told otherwise).
    pub principal_claim: String,
    /// The Cedar entity type of the principal (`User` unless told
    /// otherwise).
    pub principal_type: String,
    /// The claims copied into the Cedar context record `token`.
    pub context_claims: Vec<String>,
}

/// Where an issuer's public keys (a JWK set) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file, reread when it changes; the path is resolved against the
    /// JWT file's directory.
    File(PathBuf),
    /// An `https://` URL (`http://` only to a loopback address), fetched at
    /// start, every `refresh`, and when a token names a key id the set
    /// lacks.
    Url {
        /// The URL as written.
        url: String,
        /// The refetch schedule.
        refresh: Duration,
    },
}

/// The JWT file as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    issuers: Vec<IssuerDocument>,
    #[serde(default)]
    leeway_s: Option<u64>,
    #[serde(default)]
    required: bool,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerDocument {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<String>,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    jwks_refresh_s: Option<u64>,
    #[serde(default)]
    tenant_claim: Option<String>,
    #[serde(default)]
    principal_claim: Option<String>,
    #[serde(default)]
    principal_type: Option<String>,
    #[serde(default)]
    context_claims: Vec<String>,
}

/// An algorithm of an issuer's `algorithms`: a public-key signature
/// algorithm, never `none` nor an HMAC.
pub(super) fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err(
            "`none` (an unsigned token) is never accepted: anyone could write one".to_string(),
        );
    }
    match Algorithm::from_str(name) {
        Ok(algorithm) if algorithm.family() == AlgorithmFamily::Hmac => Err(format!(
            "{name} is not supported: an HMAC needs a secret shared with the issuer, and tollgate verifies public-key signatures only ({KNOWN_ALGORITHMS})"
        )),
        Ok(algorithm) => Ok(algorithm),
        Err(_) => Err(format!(
            "unknown algorithm `{name}` (known: {KNOWN_ALGORITHMS})"
        )),
    }
}

/// Whether `name` is a Cedar entity type name (`User`, `Shop::Customer`).
fn check_entity_type(name: &str) -> Result<(), String> {
    cedar_policy::EntityTypeName::from_str(name)
        .map(|_| ())
        .map_err(|error| format!("`{name}` is not a Cedar entity type name: {error}"))
}

impl IssuerDocument {
    fn settings(self, directory: &Path) -> Result<IssuerSettings, String> {
        if self.issuer.is_empty() {
            return Err("an issuer's `issuer` is empty".to_string());
        }
        let at = |message: String| format!("issuer `{}`: {message}", self.issuer);
        if self.audiences.is_empty() {
            return Err(at(
                "audiences: none listed; name what a token's `aud` must contain".to_string(),
            ));
        }
        if self.audiences.iter().any(String::is_empty) {
            return Err(at("audiences: an audience is empty".to_string()));
        }
        if self.algorithms.is_empty() {
            return Err(at(format!(
                "algorithms: none listed; name the ones the issuer signs with ({KNOWN_ALGORITHMS})"
            )));
        }
        let mut algorithms = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            let algorithm =
                parse_algorithm(name).map_err(|problem| at(format!("algorithms: {problem}")))?;
            if !algorithms.contains(&algorithm) {
                algorithms.push(algorithm);
            }
        }
        let keys = match (self.jwks_file, self.jwks_url) {
            (Some(_), Some(_)) => {
                return Err(at(
                    "has both jwks_file and jwks_url; give exactly one".to_string()
                ))
            }
            (None, None) => {
                return Err(at(
                    "has neither jwks_file nor jwks_url; give exactly one".to_string()
                ))
            }
            (Some(file), None) => {
                if self.jwks_refresh_s.is_some() {
                    return Err(at(
                        "jwks_refresh_s applies to jwks_url only (a jwks_file is reread when it changes)"
                            .to_string(),
                    ));
                }
                KeySource::File(directory.join(file))
            }
            (None, Some(url)) => {
                JwksUrl::parse(&url)
                    .map_err(|problem| at(format!("jwks_url `{url}`: {problem}")))?;
                let refresh = self.jwks_refresh_s.unwrap_or(DEFAULT_REFRESH_S);
                if !(MIN_REFRESH_S..=MAX_REFRESH_S).contains(&refresh) {
                    return Err(at(format!(
                        "jwks_refresh_s: {refresh} is not between {MIN_REFRESH_S} and {MAX_REFRESH_S}"
                    )));
                }
                KeySource::Url {
                    url,
                    refresh: Duration::from_secs(refresh),
                }
            }
        };
        let claim = |field: &str, name: Option<String>| match name {
            Some(name) if name.is_empty() => Err(at(format!("{field}: a claim name is empty"))),
            name => Ok(name),
        };
        let tenant_claim = claim("tenant_claim", self.tenant_claim)?;
        let principal_claim =
            claim("principal_claim", self.principal_claim)?.unwrap_or_else(|| "sub".to_string());
        let principal_type = self.principal_type.unwrap_or_else(|| "User".to_string());
        check_entity_type(&principal_type)
            .map_err(|problem| at(format!("principal_type: {problem}")))?;
        if self.context_claims.iter().any(String::is_empty) {
            return Err(at("context_claims: a claim name is empty".to_string()));
        }
        Ok(IssuerSettings {
            issuer: self.issuer,
            audiences: self.audiences,
            algorithms,
            keys,
            tenant_claim,
            principal_claim,
            principal_type,
            context_claims: self.context_claims,
        })
    }
}

impl JwtSettings {
    /// Reads and checks `path` (the key sets it names are not read).
    pub fn from_file(path: &Path) -> Result<Self, JwtFileError> {
        let text = std::fs::read(path).map_err(|error| JwtFileError {
            file: path.to_path_buf(),
            message: format!("cannot read: {error}"),
        })?;
        Self::parse(path, &text)
    }

    /// Checks `text`, the content of `path`.
    pub(super) fn parse(path: &Path, text: &[u8]) -> Result<Self, JwtFileError> {
        let failed = |message: String| JwtFileError {
            file: path.to_path_buf(),
            message,
        };
        let document: Document =
            serde_norway::from_slice(text).map_err(|error| failed(error.to_string()))?;
        let leeway_s = document.leeway_s.unwrap_or(DEFAULT_LEEWAY_S);
        if leeway_s > MAX_LEEWAY_S {
            return Err(failed(format!(
                "leeway_s: {leeway_s} is more than {MAX_LEEWAY_S} seconds"
            )));
        }
        if document.issuers.is_empty() {
            return Err(failed(
                "issuers: none listed; a JWT file names at least one trusted issuer".to_string(),
            ));
        }
        let directory = path.parent().unwrap_or_else(|| Path::new(""));
        let mut issuers: Vec<IssuerSettings> = Vec::with_capacity(document.issuers.len());
        for issuer in document.issuers {
            let issuer = issuer.settings(directory).map_err(failed)?;
            if issuers.iter().any(|known| known.issuer == issuer.issuer) {
                return Err(failed(format!(
                    "issuer `{}` is listed twice",
                    issuer.issuer
                )));
            }
            issuers.push(issuer);
        }
        Ok(Self {
            file: path.to_path_buf(),
            issuers,
            leeway_s,
            required: document.required,
        })
    }
}
