#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const ISSUER: &str = "https://login.example.com/";

/// Private keys made once with the `openssl` command line, as PEM.
struct Pems {
    rsa: Vec<u8>,
    rsa_public: Vec<u8>,
    rsa2: Vec<u8>,
    ec: Vec<u8>,
    ed: Vec<u8>,
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl").args(args).status().unwrap();
    assert!(status.success(), "openssl {args:?}");
}

fn pems() -> &'static Pems {
    static PEMS: OnceLock<Pems> = OnceLock::new();
    PEMS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let genpkey = |name: &str, args: &[&str]| {
            let out = path(name);
            let mut all = vec!["genpkey"];
            all.extend_from_slice(args);
            all.extend_from_slice(&["-out", &out]);
            openssl(&all);
            std::fs::read(&out).unwrap()
        };
        let rsa = genpkey(
            "rsa.pem",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let rsa2 = genpkey(
            "rsa2.pem",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let ec = genpkey(
            "ec.pem",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let ed = genpkey("ed.pem", &["-algorithm", "ed25519"]);
        let public = path("rsa.pub.pem");
        openssl(&["pkey", "-in", &path("rsa.pem"), "-pubout", "-out", &public]);
        Pems {
            rsa,
            rsa_public: std::fs::read(&public).unwrap(),
            rsa2,
            ec,
            ed,
        }
    })
}

/// A private key, its algorithm, its key id and its public JWK.
struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
    jwk: Jwk,
}

fn signer(pem: &[u8], alg: Algorithm, kid: &str) -> Signer {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        other => panic!("no test key for {other:?}"),
    }
    .unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    Signer {
        key,
        alg,
        kid: kid.to_string(),
        jwk,
    }
}

fn rsa() -> Signer {
    signer(&pems().rsa, Algorithm::RS256, "rsa-1")
}
fn rsa2() -> Signer {
    signer(&pems().rsa2, Algorithm::RS256, "rsa-2")
}
fn ec() -> Signer {
    signer(&pems().ec, Algorithm::ES256, "ec-1")
}
fn ed() -> Signer {
    signer(&pems().ed, Algorithm::EdDSA, "ed-1")
}

fn jwks(signers: &[&Signer]) -> String {
    serde_json::to_string(&JwkSet {
        keys: signers.iter().map(|signer| signer.jwk.clone()).collect(),
    })
    .unwrap()
}

fn now() -> i64 {
    now_s() as i64
}

/// Claims that pass, with `extra` merged over them (`null` removes one).
fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER,
        "aud": "tollgate",
        "sub": "alice",
        "exp": now() + 600,
        "iat": now(),
    });
    for (name, value) in extra.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn sign(signer: &Signer, claims: &Value) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = Some(signer.kid.clone());
    encode(&header, claims, &signer.key).unwrap()
}

fn b64url_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut bits = 0u32;
        for (index, byte) in chunk.iter().enumerate() {
            bits |= u32::from(*byte) << (16 - 8 * index);
        }
        for index in 0..=chunk.len() {
            out.push(ALPHABET[(bits >> (18 - 6 * index) & 63) as usize] as char);
        }
    }
    out
}

/// A token of `header` and `claims` with `signature` (already base64url).
fn forged(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(claims.to_string().as_bytes())
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A JWT file of one issuer (`ISSUER`) with keys from `keys.jwks.json`,
/// and `more` lines for the issuer.
fn file_issuer(dir: &Path, algorithms: &str, more: &str) -> PathBuf {
    write(
        dir,
        "jwt.yaml",
        &format!(
            "issuers:\n  - issuer: {ISSUER}\n    audiences: [tollgate, 'api://shop']\n    algorithms: [{algorithms}]\n    jwks_file: keys.jwks.json\n{more}"
        ),
    )
}

#[test]
fn base64url_round_trips() {
    for length in 0..40 {
        let bytes: Vec<u8> = (0..length).map(|i| (i * 37 + 11) as u8).collect();
        assert_eq!(b64url_decode(&b64url_encode(&bytes)).unwrap(), bytes);
    }
    assert_eq!(b64url_decode("a"), None);
    assert_eq!(b64url_decode("ab=="), None);
    assert_eq!(b64url_decode("a+b/"), None);
}

#[tokio::test]
async fn each_algorithm_verifies_and_the_claims_are_read() {
    let (rsa, ec, ed) = (rsa(), ec(), ed());
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "keys.jwks.json", &jwks(&[&rsa, &ec, &ed]));
    let file = file_issuer(
        dir.path(),
        "RS256, ES256, EdDSA",
        "    tenant_claim: org_id\n    principal_type: Shop::Customer\n    context_claims: [email, roles, plan, aud]\n",
    );
    let verifier = Verifier::load(&file).await.unwrap();
    assert!(!verifier.required());
    assert_eq!(verifier.issuers(), vec![ISSUER.to_string()]);
    for signer in [&rsa, &ec, &ed] {
        let token = sign(
            signer,
            &claims(json!({
                "aud": ["other", "api://shop"],
                "org_id": "acme",
                "email": "alice@acme.example",
                "roles": ["buyer", "admin"],
                "unlisted": true,
            })),
        );
        assert!(looks_like_jwt(&token), "{token}");
        let verified = verifier
            .verify(&token)
            .await
            .unwrap_or_else(|refusal| panic!("{:?}: {refusal}", signer.alg));
        assert_eq!(verified.issuer, ISSUER);
        assert_eq!(verified.subject.as_deref(), Some("alice"));
        assert_eq!(verified.tenant.as_deref(), Some("acme"));
        assert_eq!(
            verified.principal,
            Some(("Shop::Customer".to_string(), "alice".to_string()))
        );
        assert_eq!(
            Value::Object(verified.context),
            json!({
                "email": "alice@acme.example",
                "roles": ["buyer", "admin"],
                "aud": ["other", "api://shop"],
            })
        );
        assert!(verified.expires_at > now_s());
    }
    // Another principal claim, and no tenant claim in the token.
    let file = file_issuer(dir.path(), "ES256", "    principal_claim: uid\n");
    let verifier = Verifier::load(&file).await.unwrap();
    let verified = verifier
        .verify(&sign(&ec, &claims(json!({"uid": "u-7", "sub": null}))))
        .await
        .unwrap();
    assert_eq!(verified.subject, None);
    assert_eq!(verified.tenant, None);
    assert_eq!(
        verified.principal,
        Some(("User".to_string(), "u-7".to_string()))
    );
    assert!(verified.context.is_empty());
}

#[tokio::test]
async fn each_failed_check_is_named() {
    let (rsa, ec, ed) = (rsa(), ec(), ed());
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "keys.jwks.json", &jwks(&[&rsa, &ec]));
    let file = file_issuer(dir.path(), "RS256, ES256", "    tenant_claim: org_id\n");
    let verifier = Verifier::load(&file).await.unwrap();
    let good = sign(&rsa, &claims(json!({})));
    assert!(verifier.verify(&good).await.is_ok());

    // Tampered: the payload of another token under this one's signature.
    let other = sign(&rsa, &claims(json!({"sub": "mallory"})));
    let signature = good.rsplit('.').next().unwrap();
    let (message, _) = other.rsplit_once('.').unwrap();
    let tampered = format!("{message}.{signature}");
    // An HS256 token whose HMAC secret is the RSA public key, naming the
    // RSA key.
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rsa-1".to_string());
    let confused = encode(
        &hs_header,
        &claims(json!({})),
        &EncodingKey::from_secret(&pems().rsa_public),
    )
    .unwrap();
    // An ES256 header naming the RSA key, signed by the EC key.
    let mut es_on_rsa = Header::new(Algorithm::ES256);
    es_on_rsa.kid = Some("rsa-1".to_string());
    let mismatched = encode(&es_on_rsa, &claims(json!({})), &ec.key).unwrap();
    let unsigned = forged(
        &json!({"alg": "none", "typ": "JWT"}),
        &claims(json!({})),
        "",
    );
    let unsigned_named = forged(
        &json!({"alg": "none", "kid": "rsa-1"}),
        &claims(json!({})),
        "c2ln",
    );
    let critical = forged(
        &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["b64"], "b64": false}),
        &claims(json!({})),
        "c2ln",
    );
    let cases: Vec<(String, &str, String)> = vec![
        (
            sign(&rsa, &claims(json!({"exp": now() - 600}))),
            "expired",
            "token: expired".into(),
        ),
        (
            sign(&rsa, &claims(json!({"nbf": now() + 600}))),
            "not_yet_valid",
            "token: not valid yet (nbf or iat in the future)".into(),
        ),
        (
            sign(&rsa, &claims(json!({"iat": now() + 600}))),
            "not_yet_valid",
            "token: not valid yet (nbf or iat in the future)".into(),
        ),
        (
            sign(&rsa, &claims(json!({"aud": "someone-else"}))),
            "audience",
            format!("token: audience is not accepted for issuer `{ISSUER}`"),
        ),
        (
            sign(&rsa, &claims(json!({"aud": ["a", "b"]}))),
            "audience",
            format!("token: audience is not accepted for issuer `{ISSUER}`"),
        ),
        (
            sign(&rsa, &claims(json!({"aud": null}))),
            "audience",
            format!("token: audience is not accepted for issuer `{ISSUER}`"),
        ),
        (
            sign(&rsa, &claims(json!({"iss": "https://evil.example/"}))),
            "issuer",
            "token: issuer `https://evil.example/` is not trusted".into(),
        ),
        (
            sign(&rsa, &claims(json!({"iss": "https://login.example.com"}))),
            "issuer",
            "token: issuer `https://login.example.com` is not trusted".into(),
        ),
        (
            sign(&rsa, &claims(json!({"iss": "evil\n\u{1b}[31m"}))),
            "issuer",
            "token: issuer `evil\\n\\u{1b}[31m` is not trusted".into(),
        ),
        (
            sign(&rsa, &claims(json!({"iss": null}))),
            "claim",
            "token: claim `iss` is required: a string naming the issuer".into(),
        ),
        (tampered, "signature", "token: signature does not verify".into()),
        (
            // Signed by a key the issuer does not have, under its key id.
            sign(&signer(&pems().rsa2, Algorithm::RS256, "rsa-1"), &claims(json!({}))),
            "signature",
            "token: signature does not verify".into(),
        ),
        (
            sign(&rsa2(), &claims(json!({}))),
            "unknown_key",
            format!("token: no key `rsa-2` for issuer `{ISSUER}`"),
        ),
        (
            sign(&ed, &claims(json!({}))),
            "algorithm",
            format!("token: algorithm EdDSA is not accepted for issuer `{ISSUER}`"),
        ),
        (
            unsigned,
            "algorithm",
            format!("token: algorithm none is not accepted for issuer `{ISSUER}`"),
        ),
        (
            unsigned_named,
            "algorithm",
            format!("token: algorithm none is not accepted for issuer `{ISSUER}`"),
        ),
        (
            confused,
            "algorithm",
            format!("token: algorithm HS256 is not accepted for issuer `{ISSUER}`"),
        ),
        (
            mismatched,
            "algorithm",
            format!("token: algorithm ES256 does not fit key `rsa-1` of issuer `{ISSUER}`"),
        ),
        (
            sign(&rsa, &claims(json!({"exp": null}))),
            "claim",
            "token: claim `exp` is required: a number of seconds since the Unix epoch".into(),
        ),
        (
            sign(&rsa, &claims(json!({"exp": "tomorrow"}))),
            "claim",
            "token: claim `exp` is required: a number of seconds since the Unix epoch".into(),
        ),
        (
            sign(&rsa, &claims(json!({"org_id": 42}))),
            "claim",
            "token: claim `org_id` must be a string".into(),
        ),
        (
            sign(&rsa, &claims(json!({"sub": null}))),
            "claim",
            "token: claim `sub` is required: it names the principal".into(),
        ),
        (
            sign(&rsa, &claims(json!({"sub": ["alice"]}))),
            "claim",
            "token: claim `sub` must be a string".into(),
        ),
        (
            critical,
            "malformed",
            "token: not a JWT: the header names critical extensions (`crit`), which tollgate does not understand".into(),
        ),
        (
            "not-a-token".into(),
            "malformed",
            "token: not a JWT: not three dot-separated parts".into(),
        ),
        (
            "eyJ!.e30.c2ln".into(),
            "malformed",
            "token: not a JWT: the header is not base64url".into(),
        ),
        (
            format!("{}.e30.c2ln", b64url_encode(b"[1]")),
            "malformed",
            "token: not a JWT: the header is not a JSON object".into(),
        ),
        (
            format!("{}.e30.c2ln", b64url_encode(b"{\"typ\":\"JWT\"}")),
            "malformed",
            "token: not a JWT: the header has no `alg`".into(),
        ),
        (
            "x".repeat(MAX_TOKEN_BYTES + 1),
            "malformed",
            format!("token: not a JWT: longer than {MAX_TOKEN_BYTES} bytes"),
        ),
    ];
    for (token, check, message) in cases {
        let refusal = verifier.verify(&token).await.unwrap_err();
        assert_eq!(refusal.to_string(), message, "{token}");
        assert_eq!(refusal.check(), check, "{token}");
    }
    // A tenant claim that is no tenant id.
    let refusal = verifier
        .verify(&sign(&rsa, &claims(json!({"org_id": "no spaces allowed"}))))
        .await
        .unwrap_err();
    assert_eq!(refusal.check(), "claim");
    assert!(
        refusal
            .to_string()
            .starts_with("token: claim `org_id` is not a tenant id"),
        "{refusal}"
    );
    // A token without `kid` is tried against the keys of its algorithm.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = None;
    let anonymous = encode(&header, &claims(json!({})), &ec.key).unwrap();
    assert!(verifier.verify(&anonymous).await.is_ok());
    // Missing tokens.
    assert_eq!(verifier.verify_optional(None).await, Ok(None));
    let file = file_issuer(dir.path(), "RS256", "required: true\n");
    let strict = Verifier::load(&file).await.unwrap();
    assert!(strict.required());
    let missing = strict.verify_optional(None).await.unwrap_err();
    assert_eq!(missing, TokenRefusal::Missing);
    assert_eq!(missing.to_string(), "token: required but none was sent");
    assert_eq!(missing.check(), "missing");
    assert!(strict.verify_optional(Some(&good)).await.unwrap().is_some());
}

#[tokio::test]
async fn the_leeway_is_honoured() {
    let rsa = rsa();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "keys.jwks.json", &jwks(&[&rsa]));
    let file = file_issuer(dir.path(), "RS256", "");
    let verifier = Verifier::load(&file).await.unwrap();
    for (extra, accepted) in [
        (json!({"exp": now() - 10}), true),
        (json!({"exp": now() - 60}), false),
        (json!({"nbf": now() + 10}), true),
        (json!({"nbf": now() + 60}), false),
        (json!({"iat": now() + 10}), true),
        (json!({"iat": now() + 60}), false),
    ] {
        let outcome = verifier.verify(&sign(&rsa, &claims(extra.clone()))).await;
        assert_eq!(outcome.is_ok(), accepted, "{extra}: {outcome:?}");
    }
    let file = file_issuer(dir.path(), "RS256", "leeway_s: 0\n");
    let strict = Verifier::load(&file).await.unwrap();
    let refusal = strict
        .verify(&sign(&rsa, &claims(json!({"exp": now() - 10}))))
        .await
        .unwrap_err();
    assert_eq!(refusal, TokenRefusal::Expired);
    let refusal = strict
        .verify(&sign(&rsa, &claims(json!({"nbf": now() + 10}))))
        .await
        .unwrap_err();
    assert_eq!(refusal, TokenRefusal::NotYetValid);
}

#[tokio::test]
async fn a_rotated_jwks_file_is_picked_up_by_reload() {
    let (old, new) = (rsa(), rsa2());
    let dir = tempfile::tempdir().unwrap();
    let keys = write(dir.path(), "keys.jwks.json", &jwks(&[&old]));
    let file = file_issuer(dir.path(), "RS256", "");
    let verifier = Verifier::load(&file).await.unwrap();
    let old_token = sign(&old, &claims(json!({})));
    let new_token = sign(&new, &claims(json!({})));
    assert!(verifier.verify(&old_token).await.is_ok());
    assert_eq!(
        verifier.verify(&new_token).await.unwrap_err().check(),
        "unknown_key"
    );
    assert_eq!(verifier.reload().await, Ok(false));

    // Both keys for a while, then the new one only.
    std::fs::write(&keys, jwks(&[&old, &new])).unwrap();
    assert_eq!(verifier.reload().await, Ok(true));
    assert!(verifier.verify(&old_token).await.is_ok());
    assert!(verifier.verify(&new_token).await.is_ok());
    std::fs::write(&keys, jwks(&[&new])).unwrap();
    assert_eq!(verifier.reload().await, Ok(true));
    assert_eq!(verifier.reload().await, Ok(false));
    assert_eq!(
        verifier.verify(&old_token).await.unwrap_err(),
        TokenRefusal::UnknownKey {
            kid: Some("rsa-1".to_string()),
            issuer: ISSUER.to_string()
        }
    );
    assert!(verifier.verify(&new_token).await.is_ok());

    // A broken set is an error naming its file; the keys in force stay.
    std::fs::write(&keys, "{\"keys\": 3}").unwrap();
    let error = verifier.reload().await.unwrap_err();
    assert_eq!(error.file, keys);
    assert!(error.message.contains("not a JWK set"), "{error}");
    assert!(verifier.verify(&new_token).await.is_ok());
    std::fs::write(
        &keys,
        "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
    )
    .unwrap();
    let error = verifier.reload().await.unwrap_err();
    assert!(
        error.message.contains("holds no usable key for RS256"),
        "{error}"
    );
    assert!(error.message.contains("symmetric"), "{error}");
    assert!(verifier.verify(&new_token).await.is_ok());
    // So does a broken JWT file.
    std::fs::write(&file, "issuers: []\n").unwrap();
    let error = verifier.reload().await.unwrap_err();
    assert_eq!(error.file, file);
    assert!(verifier.verify(&new_token).await.is_ok());
    // Once fixed, the change is in force.
    std::fs::write(&keys, jwks(&[&old])).unwrap();
    file_issuer(dir.path(), "RS256", "");
    assert_eq!(verifier.reload().await, Ok(true));
    assert!(verifier.verify(&old_token).await.is_ok());
    assert_eq!(
        verifier.verify(&new_token).await.unwrap_err().check(),
        "unknown_key"
    );
}

#[test]
fn mistakes_in_the_file_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let issuer =
        |more: &str| format!("issuers:\n  - issuer: {ISSUER}\n    audiences: [tollgate]\n{more}");
    let cases = [
        (issuer("    algorithms: [RS256]\n    jwks_file: k.json\n    colour: red\n"), "unknown field `colour`"),
        (issuer("    algorithms: [RS256]\n    jwks_file: k.json\nleeway: 3\n"), "unknown field `leeway`"),
        (issuer("    algorithms: [RS256]\n    jwks_file: k.json\n    jwks_url: https://login.example.com/jwks\n"), "has both jwks_file and jwks_url; give exactly one"),
        (issuer("    algorithms: [RS256]\n"), "has neither jwks_file nor jwks_url"),
        (issuer("    algorithms: []\n    jwks_file: k.json\n"), "algorithms: none listed"),
        (issuer("    jwks_file: k.json\n"), "missing field `algorithms`"),
        (issuer("    algorithms: [RS256, none]\n    jwks_file: k.json\n"), "algorithms: `none` (an unsigned token) is never accepted"),
        (issuer("    algorithms: [HS256]\n    jwks_file: k.json\n"), "algorithms: HS256 is not supported"),
        (issuer("    algorithms: [RS257]\n    jwks_file: k.json\n"), "unknown algorithm `RS257`"),
        (issuer("    algorithms: [RS256]\n    jwks_file: k.json\n    jwks_refresh_s: 60\n"), "jwks_refresh_s applies to jwks_url only"),
        (issuer("    algorithms: [RS256]\n    jwks_url: http://login.example.com/jwks\n"), "http:// is allowed only to a loopback address"),
        (issuer("    algorithms: [RS256]\n    jwks_url: ftp://login.example.com/jwks\n"), "must be an https:// URL"),
        (issuer("    algorithms: [RS256]\n    jwks_url: https://login.example.com/jwks\n    jwks_refresh_s: 1\n"), "jwks_refresh_s: 1 is not between 10 and 86400"),
        (issuer("    algorithms: [RS256]\n    jwks_file: k.json\n    principal_type: 'not a type'\n"), "principal_type: `not a type` is not a Cedar entity type name"),
        (issuer("    algorithms: [RS256]\n    jwks_file: k.json\nleeway_s: 301\n"), "leeway_s: 301 is more than 300 seconds"),
        (format!("{}{}", issuer("    algorithms: [RS256]\n    jwks_file: k.json\n"), "  - issuer: https://login.example.com/\n    audiences: [x]\n    algorithms: [ES256]\n    jwks_file: k.json\n"), "is listed twice"),
        ("issuers: []\n".to_string(), "issuers: none listed"),
        (format!("issuers:\n  - issuer: {ISSUER}\n    audiences: []\n    algorithms: [RS256]\n    jwks_file: k.json\n"), "audiences: none listed"),
    ];
    for (text, expected) in cases {
        let file = write(dir.path(), "jwt.yaml", &text);
        let error = JwtSettings::from_file(&file).unwrap_err();
        assert_eq!(error.file, file);
        assert!(error.to_string().contains(expected), "{text}: {error}");
    }
    let file = write(
        dir.path(),
        "jwt.yaml",
        &issuer(
            "    algorithms: [RS256, ES256, RS256]\n    jwks_url: https://login.example.com/jwks\n",
        ),
    );
    let settings = JwtSettings::from_file(&file).unwrap();
    assert_eq!(settings.leeway_s, DEFAULT_LEEWAY_S);
    assert!(!settings.required);
    let issuer = &settings.issuers[0];
    assert_eq!(issuer.algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
    assert_eq!(issuer.principal_claim, "sub");
    assert_eq!(issuer.principal_type, "User");
    assert_eq!(
        issuer.keys,
        KeySource::Url {
            url: "https://login.example.com/jwks".to_string(),
            refresh: std::time::Duration::from_secs(DEFAULT_REFRESH_S)
        }
    );
    let file = write(
        dir.path(),
        "jwt.yaml",
        &issuer_file_text("keys/login.jwks.json"),
    );
    let settings = JwtSettings::from_file(&file).unwrap();
    assert_eq!(
        settings.issuers[0].keys,
        KeySource::File(dir.path().join("keys/login.jwks.json"))
    );
}

fn issuer_file_text(jwks_file: &str) -> String {
    format!("issuers:\n  - issuer: {ISSUER}\n    audiences: [tollgate]\n    algorithms: [RS256]\n    jwks_file: {jwks_file}\n")
}

#[tokio::test]
async fn a_missing_jwks_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "jwt.yaml", &issuer_file_text("absent.json"));
    let error = Verifier::load(&file).await.unwrap_err();
    assert_eq!(error.file, dir.path().join("absent.json"));
    assert!(error.message.contains("cannot read the JWK set"), "{error}");
}

#[test]
fn unusable_keys_of_a_set_are_skipped() {
    let (rsa, ec, ed) = (rsa(), ec(), ed());
    let mut short_ed = ed.jwk.clone();
    if let jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(okp) = &mut short_ed.algorithm {
        okp.x = "AAAA".to_string();
    }
    short_ed.common.key_id = Some("short".to_string());
    let mut ec_as_rs = ec.jwk.clone();
    ec_as_rs.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS256);
    ec_as_rs.common.key_id = Some("ec-as-rs".to_string());
    let mut encrypting = rsa.jwk.clone();
    encrypting.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Encryption);
    encrypting.common.key_id = Some("enc".to_string());
    let mut values: Vec<Value> = [
        &short_ed,
        &ec_as_rs,
        &encrypting,
        &rsa.jwk,
        &ec.jwk,
        &ed.jwk,
    ]
    .iter()
    .map(|jwk| serde_json::to_value(jwk).unwrap())
    .collect();
    values.push(json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}));
    values.push(json!({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "kid": "k1"}));
    values.push(json!({"kty": "OKP", "crv": "X25519", "x": "AA", "kid": "x"}));
    values.push(json!({"kty": "whatever", "kid": "w"}));
    values.push(json!("not even an object"));
    let set = serde_json::to_vec(&json!({ "keys": values })).unwrap();
    let all = [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];
    let keys = keys::KeySet::parse(&set, &all, "test").unwrap();
    let kids: Vec<_> = keys
        .keys
        .iter()
        .map(|key| key.kid.clone().unwrap())
        .collect();
    assert_eq!(kids, ["rsa-1", "ec-1", "ed-1"]);
    // The JWK's own `alg` narrows the RSA key to RS256.
    assert_eq!(keys.keys[0].algorithms, vec![Algorithm::RS256]);
    // Only keys fitting the issuer's algorithms count.
    let keys = keys::KeySet::parse(&set, &[Algorithm::EdDSA], "test").unwrap();
    assert_eq!(keys.keys.len(), 1);
    let error = keys::KeySet::parse(&set, &[Algorithm::ES384], "test").unwrap_err();
    assert!(
        error.starts_with("holds no usable key for ES384"),
        "{error}"
    );
    // An RSA key under 2048 bits.
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        small.to_str().unwrap(),
    ]);
    let small = signer(&std::fs::read(&small).unwrap(), Algorithm::RS256, "small");
    let error = keys::KeySet::parse(jwks(&[&small]).as_bytes(), &all, "test").unwrap_err();
    assert!(error.contains("an RSA key of 1024 bits"), "{error}");
}

#[test]
fn jwt_shapes_are_told_from_opaque_tokens() {
    let token = sign(&ec(), &claims(json!({})));
    assert!(looks_like_jwt(&token));
    for opaque in [
        "shop-token-0123456789",
        "a.b.c",
        "eyJ..c2ln",
        "eyJ.e30.c2ln.more",
        "eyJ.e3 0.c2ln",
        "eyJ+.e30.c2ln",
        "",
    ] {
        assert!(!looks_like_jwt(opaque), "{opaque}");
    }
    assert!(looks_like_jwt("eyJ.e30.c2ln"));
    // Unsigned: taken for a token, so that `alg: none` is refused by name.
    assert!(looks_like_jwt("eyJ.e30."));
}

/// A JWK set served over plain HTTP on 127.0.0.1, its body replaceable, its
/// requests counted. An empty body answers 404.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(body: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&body), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let text = served.lock().unwrap().clone();
                        async move {
                            let mut response = Response::new(Full::new(Bytes::from(text.clone())));
                            if text.is_empty() {
                                *response.status_mut() = StatusCode::NOT_FOUND;
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{address}/.well-known/jwks.json"),
            body,
            hits,
            task,
        }
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn url_file(dir: &Path, url: &str) -> PathBuf {
    write(
        dir,
        "jwt.yaml",
        &format!("issuers:\n  - issuer: {ISSUER}\n    audiences: [tollgate]\n    algorithms: [ES256, EdDSA]\n    jwks_url: {url}\n    jwks_refresh_s: 60\n"),
    )
}

fn remote(verifier: &Verifier) -> Arc<RemoteKeys> {
    match &verifier.state.load().issuers[ISSUER].keys {
        IssuerKeys::Url(remote) => Arc::clone(remote),
        IssuerKeys::File(_) => panic!("not fetched"),
    }
}

#[tokio::test]
async fn fetched_keys_are_refetched_for_an_unknown_kid_at_most_every_ten_seconds() {
    let (ec, ed) = (ec(), ed());
    let server = JwksServer::start(jwks(&[&ec])).await;
    let dir = tempfile::tempdir().unwrap();
    let file = url_file(dir.path(), &server.url);
    let verifier = Verifier::load(&file).await.unwrap();
    assert_eq!(server.hits(), 1);
    let ec_token = sign(&ec, &claims(json!({})));
    let ed_token = sign(&ed, &claims(json!({})));
    assert!(verifier.verify(&ec_token).await.is_ok());
    assert_eq!(server.hits(), 1);

    // The identity provider rotates: a token of the new key makes tollgate
    // refetch, once.
    server.serve(jwks(&[&ed]));
    assert!(verifier.verify(&ed_token).await.is_ok());
    assert_eq!(server.hits(), 2);
    assert!(verifier.verify(&ed_token).await.is_ok());
    assert_eq!(server.hits(), 2);
    // Unknown kids now are refused without a fetch (the last was just now).
    let mut stranger = Header::new(Algorithm::ES256);
    stranger.kid = Some("made-up".to_string());
    let made_up = encode(&stranger, &claims(json!({})), &ec.key).unwrap();
    for _ in 0..5 {
        assert_eq!(
            verifier.verify(&made_up).await.unwrap_err().check(),
            "unknown_key"
        );
    }
    assert_eq!(
        verifier.verify(&ec_token).await.unwrap_err(),
        TokenRefusal::UnknownKey {
            kid: Some("ec-1".to_string()),
            issuer: ISSUER.to_string()
        }
    );
    assert_eq!(server.hits(), 2);
    // Ten seconds later, a miss may fetch again.
    let remote = remote(&verifier);
    *lock(&remote.last_miss_fetch) = Instant::now().checked_sub(KID_MISS_REFETCH_INTERVAL);
    assert_eq!(
        verifier.verify(&made_up).await.unwrap_err().check(),
        "unknown_key"
    );
    assert_eq!(server.hits(), 3);

    // The schedule: nothing is due yet, then a fetch that changes nothing,
    // then one that does.
    assert_eq!(verifier.reload().await, Ok(false));
    assert_eq!(server.hits(), 3);
    *lock(&remote.next_due) = Instant::now();
    assert_eq!(verifier.reload().await, Ok(false));
    assert_eq!(server.hits(), 4);
    server.serve(jwks(&[&ec, &ed]));
    *lock(&remote.next_due) = Instant::now();
    assert_eq!(verifier.reload().await, Ok(true));
    assert_eq!(server.hits(), 5);
    assert!(verifier.verify(&ec_token).await.is_ok());
    // A failed scheduled fetch is an error naming the URL; the keys stay,
    // and the next try comes sooner than the schedule.
    server.serve(String::new());
    *lock(&remote.next_due) = Instant::now();
    let error = verifier.reload().await.unwrap_err();
    assert_eq!(error.file, file);
    assert!(error.message.contains(&server.url), "{error}");
    assert!(error.message.contains("404"), "{error}");
    assert!(*lock(&remote.next_due) <= Instant::now() + RETRY_AFTER_FAILED_FETCH);
    assert!(verifier.verify(&ec_token).await.is_ok());
    assert!(verifier.verify(&ed_token).await.is_ok());
    // A reload of a changed file keeps the keys fetched from the same URL.
    server.serve(jwks(&[&ec, &ed]));
    let hits = server.hits();
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap() + "leeway_s: 10\n",
    )
    .unwrap();
    assert_eq!(verifier.reload().await, Ok(true));
    assert_eq!(server.hits(), hits);
    assert!(verifier.verify(&ed_token).await.is_ok());
}

#[tokio::test]
async fn a_jwks_url_that_cannot_be_fetched_at_start_is_named() {
    let server = JwksServer::start(String::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = url_file(dir.path(), &server.url);
    let error = Verifier::load(&file).await.unwrap_err();
    assert_eq!(error.file, file);
    assert_eq!(
        error.message,
        format!(
            "issuer `{ISSUER}`: jwks_url `{}`: answered 404 Not Found (200 expected)",
            server.url
        )
    );
    server.serve("{\"keys\": []}".to_string());
    let error = Verifier::load(&file).await.unwrap_err();
    assert!(
        error
            .message
            .contains("holds no usable key for ES256, EdDSA (it lists no key)"),
        "{error}"
    );
    server.serve("x".repeat(MAX_JWKS_BYTES + 1));
    let error = Verifier::load(&file).await.unwrap_err();
    assert!(error.message.contains("larger than"), "{error}");
    // TLS to a server that speaks plain HTTP fails in the handshake.
    let https = server.url.replace("http://", "https://");
    let file = url_file(dir.path(), &https);
    let error = Verifier::load(&file).await.unwrap_err();
    assert!(
        error
            .message
            .contains(&format!("jwks_url `{https}`: TLS: ")),
        "{error}"
    );
    // Nothing listens on the port of a closed listener.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("http://{closed}/jwks");
    let file = url_file(dir.path(), &url);
    let error = Verifier::load(&file).await.unwrap_err();
    assert!(
        error
            .message
            .contains(&format!("jwks_url `{url}`: cannot connect")),
        "{error}"
    );
}
