//! Issuing and verifying licenses.

use std::collections::BTreeMap;

use super::*;

pub(crate) const SCHEMA: &str =
    "entity User { plan: String }; entity Feature; action use appliesTo { principal: User, resource: Feature };";

fn policies() -> PolicySnapshot {
    PolicySnapshot::from_sources("schema.cedarschema", SCHEMA, &[]).unwrap()
}

fn snapshot(version: u64) -> Vec<u8> {
    format!(r#"{{"tenant":"acme","version":{version},"entities":[{{"uid":{{"type":"User","id":"alice"}},"attrs":{{"plan":"pro"}},"parents":[]}}]}}"#).into_bytes()
}

fn request(snapshot: &[u8]) -> IssueRequest<'_> {
    IssueRequest {
        snapshot,
        id: Some("lic-1".to_string()),
        issued_at: 1_800_000_000,
        not_before: 1_800_000_000,
        expires: 1_900_000_000,
        grace: 86_400,
        bind: BTreeMap::new(),
    }
}

fn ring(keys: &[&PrivateKey]) -> KeyRing {
    let dir = tempfile::tempdir().unwrap();
    for (index, key) in keys.iter().enumerate() {
        std::fs::write(
            dir.path().join(format!("{index}.pem")),
            key.public_pem().unwrap(),
        )
        .unwrap();
    }
    KeyRing::load(dir.path()).unwrap().0
}

#[test]
fn an_issued_license_verifies_with_its_key_and_says_what_was_issued() {
    let key = PrivateKey::generate().unwrap();
    let document = snapshot(7);
    let (token, claims) = issue(&request(&document), &policies(), &key).unwrap();
    assert_eq!(claims.sub, "acme");
    assert_eq!(claims.ver, 7);
    let verified = verify(&token, &ring(&[&key])).unwrap();
    assert_eq!(verified.kid, key.kid);
    assert_eq!(verified.claims, claims);
    assert_eq!(verified.claims.grace_ends(), 1_900_086_400);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.typ.as_deref(), Some(TOKEN_TYPE));
    assert_eq!(header.alg, Algorithm::EdDSA);
}

#[test]
fn issuing_refuses_an_invalid_snapshot_and_unordered_times() {
    let key = PrivateKey::generate().unwrap();
    let bad = br#"{"tenant":"acme","version":1,"entities":[{"uid":{"type":"User","id":"a"},"attrs":{"plan":3},"parents":[]}]}"#;
    let error = issue(&request(bad), &policies(), &key).unwrap_err();
    assert!(error.starts_with("the snapshot is invalid"), "{error}");
    let document = snapshot(1);
    let mut backwards = request(&document);
    backwards.expires = backwards.not_before;
    let error = issue(&backwards, &policies(), &key).unwrap_err();
    assert!(error.contains("must be after --not-before"), "{error}");
    let mut bound = request(&document);
    bound.bind.insert("region".to_string(), "eu".to_string());
    let error = issue(&bound, &policies(), &key).unwrap_err();
    assert!(error.contains("install, hostname, cluster"), "{error}");
}

#[test]
fn unknown_and_revoked_keys_and_revoked_licenses_are_refused_by_name() {
    let key = PrivateKey::generate().unwrap();
    let other = PrivateKey::generate().unwrap();
    let document = snapshot(1);
    let (token, _) = issue(&request(&document), &policies(), &key).unwrap();
    assert_eq!(
        verify(&token, &ring(&[&other])).unwrap_err(),
        Refusal::UnknownKey(key.kid.clone())
    );
    let mut revoked = ring(&[&key]);
    revoked.revoked_keys.insert(key.kid.clone());
    assert_eq!(
        verify(&token, &revoked).unwrap_err(),
        Refusal::RevokedKey(key.kid.clone())
    );
    let mut revoked = ring(&[&key]);
    revoked.revoked_licenses.insert("lic-1".to_string());
    assert_eq!(
        verify(&token, &revoked).unwrap_err(),
        Refusal::RevokedLicense("lic-1".to_string())
    );
}

#[test]
fn a_token_signed_by_another_key_under_the_same_kid_is_a_bad_signature() {
    let key = PrivateKey::generate().unwrap();
    let impostor = PrivateKey::generate().unwrap();
    let document = snapshot(1);
    let (token, claims) = issue(&request(&document), &policies(), &key).unwrap();
    let mut header = jsonwebtoken::decode_header(&token).unwrap();
    header.kid = Some(key.kid.clone());
    let forged = jsonwebtoken::encode(&header, &claims, &impostor.encoding_key().unwrap()).unwrap();
    assert_eq!(
        verify(&forged, &ring(&[&key])).unwrap_err(),
        Refusal::BadSignature(key.kid.clone())
    );
}

#[test]
fn a_license_file_holds_the_token_and_at_most_one_final_newline() {
    assert_eq!(token_of(b"a.b.c\n").unwrap(), "a.b.c");
    assert_eq!(token_of(b"a.b.c").unwrap(), "a.b.c");
    for bad in [
        &b"a.b.c\n\n"[..],
        b" a.b.c",
        b"a.b.c \n",
        b"a.b.c\r\n",
        b"",
        b"\n",
    ] {
        assert!(
            matches!(token_of(bad), Err(Refusal::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn times_and_durations_read_as_documented() {
    assert_eq!(parse_time("2027-06-30").unwrap(), 1_814_313_600);
    assert_eq!(parse_time("2027-06-30T12:00:00Z").unwrap(), 1_814_356_800);
    assert_eq!(
        parse_time("2027-06-30T14:00:00+02:00").unwrap(),
        1_814_356_800
    );
    assert!(parse_time("30/06/2027")
        .unwrap_err()
        .contains("is not a date"));
    assert_eq!(parse_duration("0").unwrap(), 0);
    assert_eq!(parse_duration("30d").unwrap(), 30 * 86_400);
    assert_eq!(parse_duration("72h").unwrap(), 72 * 3_600);
    assert_eq!(parse_duration("1h 30m").unwrap(), 5_400);
    assert!(parse_duration("-3d").is_err());
    assert!(parse_duration("soon")
        .unwrap_err()
        .contains("is not a duration"));
}
