//! `tollgate license keygen | issue | inspect`: the vendor's side.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tollgate_engine::PolicySnapshot;

use super::{
    issue as sign, parse_duration, parse_time, rfc3339, token_of, unverified, verify, IssueRequest,
    KeyRing, PrivateKey, Refusal,
};

/// Writes a new key pair into `dir`.
pub fn keygen(dir: &Path) -> ExitCode {
    match write_key_pair(dir) {
        Ok((kid, private, public)) => {
            println!("key id: {kid}");
            println!(
                "private key: {} (keep it secret: it signs licenses)",
                private.display()
            );
            println!(
                "public key:  {} (copy it into the sidecars' license_keys directory)",
                public.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tollgate license keygen: {error}");
            ExitCode::from(2)
        }
    }
}

fn write_key_pair(dir: &Path) -> Result<(String, PathBuf, PathBuf), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let key = PrivateKey::generate()?;
    let private = dir.join(format!("{}.key.pem", key.kid));
    let public = dir.join(format!("{}.pub.pem", key.kid));
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|error| format!("cannot write {}: {error}", path.display()))
    };
    write(&private, &key.to_pem()?, 0o600)?;
    write(&public, &key.public_pem()?, 0o644)?;
    Ok((key.kid, private, public))
}

/// The arguments of `tollgate license issue`.
#[derive(Debug, Clone)]
pub struct IssueArgs {
    /// The snapshot file.
    pub snapshot: PathBuf,
    /// The private key file.
    pub key: PathBuf,
    /// Expiry (date or RFC 3339).
    pub expires: String,
    /// Not before (date or RFC 3339); `None`: now.
    pub not_before: Option<String>,
    /// Grace (duration).
    pub grace: String,
    /// `KEY=VALUE` bindings.
    pub bind: Vec<String>,
    /// License id.
    pub id: Option<String>,
    /// Output file; `None`: standard output.
    pub out: Option<PathBuf>,
}

/// Signs a license for the snapshot under the policy directory's schema.
pub fn issue(policy_dir: &Path, args: &IssueArgs) -> ExitCode {
    let bad = |message: String| {
        eprintln!("tollgate license issue: {message}");
        ExitCode::from(2)
    };
    let policies = match PolicySnapshot::load_dir(policy_dir) {
        Ok(policies) => policies,
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            return bad(format!(
                "the policy directory {} does not load; a license is checked against its schema",
                policy_dir.display()
            ));
        }
    };
    let key = match PrivateKey::read(&args.key) {
        Ok(key) => key,
        Err(error) => return bad(error),
    };
    let snapshot = match std::fs::read(&args.snapshot) {
        Ok(bytes) => bytes,
        Err(error) => return bad(format!("{}: cannot read: {error}", args.snapshot.display())),
    };
    let now = jiff::Timestamp::now().as_second();
    let expires = match parse_time(&args.expires) {
        Ok(time) => time,
        Err(error) => return bad(format!("--expires: {error}")),
    };
    let not_before = match args.not_before.as_deref().map(parse_time).transpose() {
        Ok(time) => time.unwrap_or(now),
        Err(error) => return bad(format!("--not-before: {error}")),
    };
    let grace = match parse_duration(&args.grace) {
        Ok(grace) => grace,
        Err(error) => return bad(format!("--grace: {error}")),
    };
    let mut bind = BTreeMap::new();
    for pair in &args.bind {
        match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() && !value.trim().is_empty() => {
                bind.insert(key.trim().to_string(), value.trim().to_string());
            }
            _ => {
                return bad(format!(
                    "--bind `{pair}`: expected KEY=VALUE, e.g. install=prod-eu-1"
                ))
            }
        }
    }
    let request = IssueRequest {
        snapshot: &snapshot,
        id: args.id.clone(),
        issued_at: now,
        not_before,
        expires,
        grace,
        bind,
    };
    let (token, claims) = match sign(&request, &policies, &key) {
        Ok(issued) => issued,
        Err(error) => {
            eprintln!(
                "tollgate license issue: {}: {error}",
                args.snapshot.display()
            );
            return ExitCode::from(1);
        }
    };
    let written = match &args.out {
        Some(path) => std::fs::write(path, format!("{token}\n"))
            .map_err(|error| format!("cannot write {}: {error}", path.display())),
        None => {
            println!("{token}");
            Ok(())
        }
    };
    if let Err(error) = written {
        return bad(error);
    }
    eprintln!(
        "issued license {} for tenant {} (version {}), valid {} to {}{}, signed by key {}",
        claims.jti,
        claims.sub,
        claims.ver,
        rfc3339(claims.nbf),
        rfc3339(claims.exp),
        if claims.grace > 0 {
            format!(" with grace until {}", rfc3339(claims.grace_ends()))
        } else {
            String::new()
        },
        key.kid
    );
    ExitCode::SUCCESS
}

/// Prints a license and whether it verifies with `keys`.
pub fn inspect(file: &Path, keys: Option<&Path>, json: bool) -> ExitCode {
    let refused = |refusal: Refusal| {
        eprintln!("{}: refused: {refusal}", file.display());
        ExitCode::from(1)
    };
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("{}: cannot read: {error}", file.display());
            return ExitCode::from(2);
        }
    };
    let token = match token_of(&bytes) {
        Ok(token) => token,
        Err(refusal) => return refused(refusal),
    };
    let (header, claims) = match unverified(token) {
        Ok(read) => read,
        Err(refusal) => return refused(refusal),
    };
    let verdict = match keys {
        None => None,
        Some(dir) => match KeyRing::load(dir) {
            Ok((ring, problems)) => {
                for problem in problems {
                    eprintln!("{problem}");
                }
                Some(verify(token, &ring).map(|verified| {
                    ring.keys
                        .get(&verified.kid)
                        .map(|key| key.file.clone())
                        .unwrap_or_default()
                }))
            }
            Err(problem) => {
                eprintln!("{problem}");
                return ExitCode::from(2);
            }
        },
    };
    let now = jiff::Timestamp::now().as_second();
    let state = if now < claims.nbf {
        "not yet valid"
    } else if now <= claims.exp {
        "valid"
    } else if now <= claims.grace_ends() {
        "in grace"
    } else {
        "expired past grace"
    };
    if json {
        let document = serde_json::json!({
            "header": {
                "alg": format!("{:?}", header.alg),
                "typ": header.typ,
                "kid": header.kid,
            },
            "claims": claims,
            "state": state,
            "verified": verdict.as_ref().map(Result::is_ok),
            "refusal": verdict.as_ref().and_then(|v| v.as_ref().err()).map(ToString::to_string),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        );
    } else {
        let entities = claims
            .snapshot
            .get("entities")
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        println!(
            "license {}: tenant {}, version {}",
            claims.jti, claims.sub, claims.ver
        );
        println!("  key id: {}", header.kid.as_deref().unwrap_or("(none)"));
        println!(
            "  issued {}, valid from {}, expires {}, grace until {}",
            rfc3339(claims.iat),
            rfc3339(claims.nbf),
            rfc3339(claims.exp),
            rfc3339(claims.grace_ends())
        );
        if claims.bind.is_empty() {
            println!("  bound to: nothing (valid on any installation)");
        } else {
            let bound: Vec<String> = claims
                .bind
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            println!("  bound to: {}", bound.join(", "));
        }
        println!("  snapshot: {entities} entities");
        println!("  now: {state}");
        match &verdict {
            None => println!("  signature: not checked (give --keys DIR)"),
            Some(Ok(key_file)) => println!("  signature: verifies with {key_file}"),
            Some(Err(refusal)) => println!("  signature: REFUSED: {refusal}"),
        }
    }
    match verdict {
        Some(Err(_)) => ExitCode::from(1),
        Some(Ok(_)) if matches!(state, "valid" | "in grace") => ExitCode::SUCCESS,
        Some(Ok(_)) => ExitCode::from(1),
        None => ExitCode::SUCCESS,
    }
}
