//! The licenses directory: every `*.license` file verified against the
//! trusted keys, checked against this installation and the policies'
//! schema, and the newest valid license of each tenant served.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tollgate_engine::policies::{display_path, list_files};
use tollgate_engine::{FileProblem, PolicySnapshot, SnapshotSource, TenantSnapshot};

use super::{rfc3339, token_of, verify, Claims, KeyRing, Refusal};

/// The file extension of licenses in the licenses directory.
pub const EXTENSION: &str = "license";

/// What this installation is, for licenses bound to one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installation {
    /// `install_id`.
    pub install: Option<String>,
    /// The host's name.
    pub hostname: Option<String>,
    /// `cluster_id`.
    pub cluster: Option<String>,
}

impl Installation {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "install" => self.install.as_deref(),
            "hostname" => self.hostname.as_deref(),
            "cluster" => self.cluster.as_deref(),
            _ => None,
        }
    }

    /// The host's name as the kernel reports it (Linux), else `$HOSTNAME`.
    pub fn hostname_of_host() -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
    }
}

/// A license that verified, serving its tenant.
#[derive(Debug)]
pub struct License {
    /// The file it was read from.
    pub file: String,
    /// The key id that signed it.
    pub kid: String,
    /// Its claims, without the snapshot document (parsed into `snapshot`).
    pub claims: Claims,
    /// The tenant snapshot it carries, validated against the schema.
    pub snapshot: Arc<TenantSnapshot>,
    /// SHA-256 of the token, to reuse the parsed snapshot of an unchanged file.
    token_hash: [u8; 32],
}

impl License {
    /// `(version, issued at)`: a license replaces one that orders lower.
    fn order(&self) -> (u64, i64) {
        (self.claims.ver, self.claims.iat)
    }
}

/// The serving licenses by tenant.
pub type LicenseMap = HashMap<String, Arc<License>>;

/// A license file that is not served, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The file.
    pub file: String,
    /// Why.
    pub refusal: Refusal,
}

impl Refused {
    /// As a file problem, for logs, `tollgate validate` and `/status`.
    pub fn problem(&self) -> FileProblem {
        FileProblem::new(
            &self.file,
            None,
            format!("license refused: {}", self.refusal),
        )
    }
}

/// What a scan of the licenses directory gives.
#[derive(Debug, Default)]
pub struct Scan {
    /// The licenses to serve.
    pub licenses: LicenseMap,
    /// Files not served (licenses kept only to answer `license_expired`
    /// are listed too, as `expired`).
    pub refused: Vec<Refused>,
    /// Problems of the keys directory (an unreadable key file, a broken
    /// revocation list).
    pub key_problems: Vec<FileProblem>,
}

/// Reads `dir` against the keys in `keys_dir`, at `now` (Unix seconds) with
/// `skew` seconds of tolerance for `nbf`.
///
/// A file that is refused keeps its tenant's previous license serving while
/// that license is still trusted (its key trusted and neither revoked); a
/// tenant whose files are all gone is dropped. A keys directory that cannot
/// be read keeps every previous license.
pub fn scan(
    dir: &Path,
    keys_dir: &Path,
    installation: &Installation,
    policies: &PolicySnapshot,
    previous: &LicenseMap,
    now: i64,
    skew: i64,
) -> Scan {
    let mut scan = Scan::default();
    let ring = match KeyRing::load(keys_dir) {
        Ok((ring, problems)) => {
            scan.key_problems = problems;
            ring
        }
        Err(problem) => {
            scan.key_problems.push(problem);
            scan.licenses = previous.clone();
            return scan;
        }
    };
    let files = match list_files(dir, EXTENSION) {
        Ok(files) => files,
        Err(error) => {
            scan.key_problems.push(FileProblem::new(
                &display_path(dir),
                None,
                format!("cannot list the licenses directory: {error}"),
            ));
            scan.licenses = previous.clone();
            return scan;
        }
    };
    let previous_by_hash: HashMap<[u8; 32], &Arc<License>> = previous
        .values()
        .map(|license| (license.token_hash, license))
        .collect();
    let listed: BTreeSet<String> = files.iter().map(|path| display_path(path)).collect();
    let mut candidates: HashMap<String, Vec<License>> = HashMap::new();
    for path in &files {
        let file = display_path(path);
        match read_one(
            path,
            &ring,
            installation,
            policies,
            &previous_by_hash,
            now,
            skew,
        ) {
            Ok((license, expired)) => {
                if let Some(refusal) = expired {
                    scan.refused.push(Refused {
                        file: file.clone(),
                        refusal,
                    });
                }
                candidates
                    .entry(license.claims.sub.clone())
                    .or_default()
                    .push(license);
            }
            Err(refusal) => scan.refused.push(Refused { file, refusal }),
        }
    }
    for (tenant, licenses) in candidates {
        // The tenant's other files are superseded by the newest, a license
        // beside them (an upgrade delivered next to the old file): not
        // served, and no problem.
        let Some(best) = licenses.into_iter().max_by_key(License::order) else {
            continue;
        };
        let serving = match previous.get(&tenant) {
            // A newer license whose file is still there (replaced in place by
            // an older one) keeps serving; one whose file was removed does not.
            Some(old)
                if old.order() > best.order()
                    && trusted(old, &ring)
                    && listed.contains(&old.file) =>
            {
                scan.refused.push(older(&best, old));
                Arc::clone(old)
            }
            Some(old) if old.token_hash == best.token_hash => Arc::clone(old),
            _ => Arc::new(best),
        };
        scan.licenses.insert(tenant, serving);
    }
    // A tenant whose file was replaced by one that is refused keeps its
    // license while the license is still trusted and its file still there.
    for (tenant, old) in previous {
        if !scan.licenses.contains_key(tenant) && listed.contains(&old.file) && trusted(old, &ring)
        {
            scan.licenses.insert(tenant.clone(), Arc::clone(old));
        }
    }
    scan.refused.sort_by(|a, b| a.file.cmp(&b.file));
    scan
}

fn older(license: &License, serving: &License) -> Refused {
    Refused {
        file: license.file.clone(),
        refusal: Refusal::Older {
            version: license.claims.ver,
            serving: serving.claims.ver,
            file: serving.file.clone(),
        },
    }
}

/// Its key is still trusted and neither the key nor the license revoked.
fn trusted(license: &License, ring: &KeyRing) -> bool {
    ring.keys.contains_key(&license.kid)
        && !ring.revoked_keys.contains(&license.kid)
        && !ring.revoked_licenses.contains(&license.claims.jti)
}

/// One file: the license, and `Some(Expired)` when it is past its grace (it
/// is kept to answer `license_expired`, and reported).
fn read_one(
    path: &Path,
    ring: &KeyRing,
    installation: &Installation,
    policies: &PolicySnapshot,
    previous: &HashMap<[u8; 32], &Arc<License>>,
    now: i64,
    skew: i64,
) -> Result<(License, Option<Refusal>), Refusal> {
    let bytes = std::fs::read(path).map_err(|error| Refusal::Unreadable(error.to_string()))?;
    let token = token_of(&bytes)?;
    check_token(
        token,
        &display_path(path),
        ring,
        installation,
        policies,
        previous,
        now,
        skew,
    )
}

/// A license token checked as a scan checks a file (`file` names it): the
/// license, and `Some(Expired)` when it is past its grace.
#[allow(
    clippy::too_many_arguments,
    reason = "the scan's context, passed through"
)]
fn check_token(
    token: &str,
    file: &str,
    ring: &KeyRing,
    installation: &Installation,
    policies: &PolicySnapshot,
    previous: &HashMap<[u8; 32], &Arc<License>>,
    now: i64,
    skew: i64,
) -> Result<(License, Option<Refusal>), Refusal> {
    let verified = verify(token, ring)?;
    let mut claims = verified.claims;
    for (key, wanted) in &claims.bind {
        let have = installation.get(key);
        if have != Some(wanted.as_str()) {
            return Err(Refusal::BoundElsewhere {
                key: key.clone(),
                wanted: wanted.clone(),
                have: have.map_or_else(|| "not configured".to_string(), |have| format!("`{have}`")),
            });
        }
    }
    if claims.nbf > now.saturating_add(skew) {
        return Err(Refusal::NotYetValid(rfc3339(claims.nbf)));
    }
    let token_hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let snapshot = match previous.get(&token_hash) {
        Some(old) if old.snapshot.schema_version == policies.schema_version => {
            Arc::clone(&old.snapshot)
        }
        _ => {
            let document = serde_json::to_vec(&claims.snapshot)
                .map_err(|error| Refusal::InvalidSnapshot(error.to_string()))?;
            let snapshot = TenantSnapshot::parse(
                &document,
                Some(&claims.sub),
                policies,
                SnapshotSource::License,
            )
            .map_err(|error| Refusal::InvalidSnapshot(error.to_string()))?;
            if snapshot.version != claims.ver {
                return Err(Refusal::InvalidSnapshot(format!(
                    "the snapshot's version {} is not the license's version {}",
                    snapshot.version, claims.ver
                )));
            }
            Arc::new(snapshot)
        }
    };
    // The document is parsed; the claims keep the terms only.
    claims.snapshot = serde_json::Value::Null;
    let expired = (now > claims.grace_ends()).then(|| Refusal::Expired {
        expired: rfc3339(claims.exp),
        grace_ended: rfc3339(claims.grace_ends()),
    });
    Ok((
        License {
            file: file.to_string(),
            kid: verified.kid,
            claims,
            snapshot,
            token_hash,
        },
        expired,
    ))
}

/// Checks a license offered for delivery as a scan of `dir` would check its
/// file, against the keys of `keys_dir` and the license serving its tenant
/// (`serving`): the license, or why it would be refused (an expired one is
/// refused too).
///
/// # Errors
///
/// The refusal; an unreadable keys directory is [`Refusal::Unreadable`].
pub fn check_delivery(
    token: &str,
    keys_dir: &Path,
    installation: &Installation,
    policies: &PolicySnapshot,
    serving: &LicenseMap,
    now: i64,
    skew: i64,
) -> Result<Arc<License>, Refusal> {
    let (ring, _) =
        KeyRing::load(keys_dir).map_err(|problem| Refusal::Unreadable(problem.to_string()))?;
    let (license, expired) = check_token(
        token,
        "(delivered)",
        &ring,
        installation,
        policies,
        &HashMap::new(),
        now,
        skew,
    )?;
    if let Some(refusal) = expired {
        return Err(refusal);
    }
    if let Some(old) = serving.get(&license.claims.sub) {
        if old.order() > license.order() {
            return Err(older(&license, old).refusal);
        }
    }
    Ok(Arc::new(license))
}
