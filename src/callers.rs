//! Who is calling and what it may do. A caller is recognised by its client
//! certificate (a URI SAN such as a SPIFFE ID, or a DNS SAN) or by a bearer
//! token, and has the operations and the tenants it may use. The callers
//! come from `callers_file`, reread when it or one of its token files
//! changes; a token is kept only as its SHA-256 digest and compared in
//! constant time.
//!
//! Every front door hands what it knows of its caller ([`Credentials`]) to
//! [`Callers::identify`] and asks the [`Caller`] for each operation: one
//! identity and one set of rights for gRPC, the admin service and the
//! status page alike.
//!
//! Without a callers file the sidecar is open, as on its loopback default:
//! every caller is `anonymous` and may use every decision operation on
//! every tenant. The admin operations always need a named caller (the
//! built-in `admin` of `admin_token`, or one of the callers file).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::reread::{Fingerprint, Fingerprinter, Reread};

/// What a caller may ask for. Its discriminant is its bit in a set of
/// operations, in the order of [`Operation::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Operation {
    /// `Check` without a consumption.
    Check,
    /// `CheckBatch` (each of its checks is also a [`Operation::Check`]).
    CheckBatch,
    /// `Check` with a consumption.
    Consume,
    /// `ReportUsage`.
    ReportUsage,
    /// `AdminService.PutSnapshot`.
    PutSnapshot,
    /// `AdminService.GetSnapshot`.
    GetSnapshot,
    /// `AdminService.DeleteSnapshot`.
    DeleteSnapshot,
    /// `AdminService.ListSnapshots`.
    ListSnapshots,
    /// `AdminService.PutLicense`.
    PutLicense,
    /// The details of `/status`.
    Status,
    /// `ListEntitlements`.
    ListEntitlements,
    /// A what-if question: a `Check` or `ListEntitlements` with attribute
    /// overrides (never counted, never consumes).
    WhatIf,
}

impl Operation {
    /// Every operation, in the order of their bits.
    pub const ALL: [Operation; 12] = [
        Operation::Check,
        Operation::CheckBatch,
        Operation::Consume,
        Operation::ReportUsage,
        Operation::PutSnapshot,
        Operation::GetSnapshot,
        Operation::DeleteSnapshot,
        Operation::ListSnapshots,
        Operation::PutLicense,
        Operation::Status,
        Operation::ListEntitlements,
        Operation::WhatIf,
    ];

    /// The operation's name in the callers file, metrics and messages.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Check => "check",
            Operation::CheckBatch => "check_batch",
            Operation::Consume => "consume",
            Operation::ReportUsage => "report_usage",
            Operation::PutSnapshot => "admin.put_snapshot",
            Operation::GetSnapshot => "admin.get_snapshot",
            Operation::DeleteSnapshot => "admin.delete_snapshot",
            Operation::ListSnapshots => "admin.list_snapshots",
            Operation::PutLicense => "admin.put_license",
            Operation::Status => "status",
            Operation::ListEntitlements => "list_entitlements",
            Operation::WhatIf => "what_if",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }

    fn is_admin(self) -> bool {
        self.name().starts_with("admin.")
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Operations(u16);

impl Operations {
    fn of(operations: &[Operation]) -> Self {
        Self(operations.iter().fold(0, |bits, op| bits | op.bit()))
    }

    /// What a caller without credentials may do unless told otherwise: the
    /// decision operations and the status page, never the admin ones.
    fn local_default() -> Self {
        Self::of(&[
            Operation::Check,
            Operation::CheckBatch,
            Operation::Consume,
            Operation::ReportUsage,
            Operation::Status,
            Operation::ListEntitlements,
            Operation::WhatIf,
        ])
    }

    fn admin() -> Self {
        Self::of(&[
            Operation::PutSnapshot,
            Operation::GetSnapshot,
            Operation::DeleteSnapshot,
            Operation::ListSnapshots,
            Operation::PutLicense,
        ])
    }

    fn contains(self, operation: Operation) -> bool {
        self.0 & operation.bit() != 0
    }
}

/// The tenants a caller may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TenantScope {
    All,
    Only(HashSet<String>),
}

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rights {
    operations: Operations,
    tenants: TenantScope,
}

/// The front door a request came through, as decision records and metrics
/// name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FrontDoor {
    /// `EntitlementService` over gRPC (TCP or the Unix socket).
    #[default]
    Grpc,
    /// The HTTP front door's JSON API.
    Http,
    /// The HTTP front door's AuthZEN API.
    Authzen,
    /// Envoy's external authorization.
    ExtAuthz,
    /// In the process itself (the `check` command, tests).
    InProcess,
}

impl FrontDoor {
    /// `grpc`, `http`, `authzen`, `ext_authz` or `in_process`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
            Self::Authzen => "authzen",
            Self::ExtAuthz => "ext_authz",
            Self::InProcess => "in_process",
        }
    }
}

/// An identified caller and its rights, and the front door it came through.
#[derive(Debug, Clone)]
pub struct Caller {
    name: Arc<str>,
    rights: Arc<Rights>,
    door: FrontDoor,
}

impl Caller {
    fn new(name: &str, rights: Rights) -> Self {
        Self {
            name: Arc::from(name),
            rights: Arc::new(rights),
            door: FrontDoor::Grpc,
        }
    }

    /// The same caller, come through `door`.
    #[must_use]
    pub fn through(mut self, door: FrontDoor) -> Self {
        self.door = door;
        self
    }

    /// The front door it came through.
    pub fn front_door(&self) -> FrontDoor {
        self.door
    }

    /// A caller that may do everything on every tenant (in-process front
    /// doors such as the `check` command, and tests).
    pub fn trusted(name: &str) -> Self {
        Self::new(
            name,
            Rights {
                operations: Operations::of(&Operation::ALL),
                tenants: TenantScope::All,
            },
        )
        .through(FrontDoor::InProcess)
    }

    /// Its name (`local`, `anonymous`, `admin`, or a callers file's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it was recognised by a credential (a token or a
    /// certificate), not taken for a caller without one.
    pub fn is_named(&self) -> bool {
        !matches!(&*self.name, "local" | "anonymous")
    }

    /// Whether it may use `operation` (on `tenant`, when the operation
    /// names one).
    pub fn authorize(&self, operation: Operation, tenant: Option<&str>) -> Result<(), Refusal> {
        // A caller without credentials is told to bring some.
        let refused = || match self.is_named() {
            true => Refusal::PermissionDenied {
                caller: Arc::clone(&self.name),
                operation,
            },
            false => Refusal::CredentialsRequired {
                caller: Arc::clone(&self.name),
                operation,
            },
        };
        if !self.rights.operations.contains(operation) {
            return Err(refused());
        }
        match (tenant, &self.rights.tenants) {
            (Some(tenant), TenantScope::Only(tenants)) if !tenants.contains(tenant) => {
                Err(refused())
            }
            _ => Ok(()),
        }
    }

    /// The one tenant the caller may use, when its rights name exactly one.
    pub fn only_tenant(&self) -> Option<&str> {
        match &self.rights.tenants {
            TenantScope::Only(tenants) if tenants.len() == 1 => {
                tenants.iter().next().map(String::as_str)
            }
            _ => None,
        }
    }

    /// Whether it may see `tenant` at all (listings show only those).
    pub fn may_touch(&self, tenant: &str) -> bool {
        match &self.rights.tenants {
            TenantScope::All => true,
            TenantScope::Only(tenants) => tenants.contains(tenant),
        }
    }
}

/// Why a call was refused before it was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The caller could not be identified.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// A caller without credentials (`local`, `anonymous`) may not do
    /// this; a named caller might.
    #[error("unauthenticated: {operation} needs credentials (a bearer token or a client certificate); the {caller} caller may not use it here")]
    CredentialsRequired {
        /// `local` or `anonymous`.
        caller: Arc<str>,
        /// The operation refused.
        operation: Operation,
    },
    /// The caller may not do this. The message names the caller and the
    /// operation, never whether a tenant exists.
    #[error("caller `{caller}` may not use {operation} here")]
    PermissionDenied {
        /// The caller.
        caller: Arc<str>,
        /// The operation refused.
        operation: Operation,
    },
}

impl Refusal {
    /// The caller's name for metrics: its name when it was identified.
    pub fn caller(&self) -> &str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::PermissionDenied { caller, .. }
            | Refusal::CredentialsRequired { caller, .. } => caller,
        }
    }
}

/// The subject alternative names of a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// URI SANs (SPIFFE IDs among them).
    pub uri_sans: Vec<String>,
    /// DNS SANs.
    pub dns_sans: Vec<String>,
}

/// What a front door knows of its caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The peer is on this host: loopback TCP or the Unix socket.
    pub local: bool,
    /// The verified client certificate, when the connection has one.
    pub certificate: Option<&'a PeerCertificate>,
    /// The bearer token of the `authorization` header, when sent.
    pub bearer: Option<&'a str>,
}

/// The bearer token of an `authorization` header value (`Bearer <token>`,
/// the scheme in any case).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_BYTES: usize = 16;

/// One named caller and how it is recognised.
#[derive(Debug)]
struct Entry {
    caller: Caller,
    uri_san: Option<String>,
    dns_san: Option<String>,
    token: Option<[u8; 32]>,
}

/// The callers in force.
#[derive(Debug)]
struct Table {
    named: Vec<Entry>,
    /// Callers without credentials on this host; with no callers file, every
    /// caller without credentials.
    local: Caller,
    /// No callers file: a remote caller without credentials is `local` too.
    open: bool,
}

/// Why a callers file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct CallersError {
    /// The file at fault (the callers file or a token file).
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// The callers file as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallersDocument {
    #[serde(default)]
    callers: Vec<CallerDocument>,
    #[serde(default)]
    local: Option<RightsDocument>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerDocument {
    name: String,
    #[serde(default)]
    uri_san: Option<String>,
    #[serde(default)]
    dns_san: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    operations: Vec<String>,
    tenants: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RightsDocument {
    operations: Vec<String>,
    #[serde(default = "all_tenants")]
    tenants: Vec<String>,
}

fn all_tenants() -> Vec<String> {
    vec!["*".to_string()]
}

/// Names that tollgate gives callers itself.
const RESERVED_NAMES: [&str; 4] = ["local", "anonymous", "admin", "unauthenticated"];

fn rights(operations: &[String], tenants: &[String]) -> Result<Rights, String> {
    let mut ops = Vec::new();
    for name in operations {
        match name.as_str() {
            "*" => ops.extend(Operation::ALL),
            "admin.*" => ops.extend(Operation::ALL.iter().filter(|op| op.is_admin())),
            name => match Operation::ALL.iter().find(|op| op.name() == name) {
                Some(op) => ops.push(*op),
                None => {
                    return Err(format!(
                        "unknown operation `{name}` (known: *, admin.*, {})",
                        Operation::ALL.map(Operation::name).join(", ")
                    ))
                }
            },
        }
    }
    let tenants = if tenants.iter().any(|tenant| tenant == "*") {
        TenantScope::All
    } else {
        for tenant in tenants {
            tollgate_engine::check_tenant_id(tenant)
                .map_err(|problem| format!("tenant `{tenant}`: {problem}"))?;
        }
        TenantScope::Only(tenants.iter().cloned().collect())
    };
    Ok(Rights {
        operations: Operations::of(&ops),
        tenants,
    })
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Compares two digests in time independent of where they differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Reads a token file: its content without surrounding whitespace.
fn read_token(file: &Path) -> Result<Vec<u8>, CallersError> {
    let failed = |message: String| CallersError {
        file: file.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(file).map_err(|error| failed(format!("cannot read: {error}")))?;
    let token = bytes.trim_ascii();
    if token.len() < MIN_TOKEN_BYTES {
        return Err(failed(format!(
            "a token must be at least {MIN_TOKEN_BYTES} bytes"
        )));
    }
    if token.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(failed(
            "a token is printable ASCII without spaces (it travels in an HTTP header)".to_string(),
        ));
    }
    Ok(token.to_vec())
}

/// The callers file's table, and the fingerprint of every file it was read
/// from (to tell whether a reread would change anything).
fn load_table(path: &Path, admin_token: Option<&[u8]>) -> Result<(Table, [u8; 32]), CallersError> {
    let failed = |message: String| CallersError {
        file: path.to_path_buf(),
        message,
    };
    let text = std::fs::read(path).map_err(|error| failed(format!("cannot read: {error}")))?;
    let mut fingerprint = Fingerprinter::default();
    fingerprint.add(&text);
    let document: CallersDocument =
        serde_norway::from_slice(&text).map_err(|error| failed(error.to_string()))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let mut named = admin_entry(admin_token).into_iter().collect::<Vec<_>>();
    let mut names = HashSet::new();
    for (index, caller) in document.callers.iter().enumerate() {
        let at = |message: String| failed(format!("callers[{index}] ({}): {message}", caller.name));
        let valid_name = !caller.name.is_empty()
            && caller.name.len() <= 64
            && caller
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid_name {
            return Err(at(
                "a name is 1 to 64 letters, digits, `.`, `_` or `-`".to_string()
            ));
        }
        if RESERVED_NAMES.contains(&caller.name.as_str()) {
            return Err(at(format!(
                "the names {} are tollgate's own",
                RESERVED_NAMES.join(", ")
            )));
        }
        if !names.insert(caller.name.clone()) {
            return Err(at("the name is used twice".to_string()));
        }
        if caller.uri_san.is_none() && caller.dns_san.is_none() && caller.token_file.is_none() {
            return Err(at(
                "say how the caller is recognised: uri_san, dns_san or token_file".to_string(),
            ));
        }
        let rights = rights(&caller.operations, &caller.tenants).map_err(at)?;
        let token = match &caller.token_file {
            Some(file) => {
                let file = base.join(file);
                let token = read_token(&file)?;
                fingerprint.add(file.as_os_str().as_encoded_bytes());
                fingerprint.add(&token);
                Some(digest(&token))
            }
            None => None,
        };
        if let Some(token) = &token {
            if named
                .iter()
                .any(|entry| entry.token.as_ref().is_some_and(|t| same_digest(t, token)))
            {
                return Err(at("its token is another caller's".to_string()));
            }
        }
        named.push(Entry {
            caller: Caller::new(&caller.name, rights),
            uri_san: caller.uri_san.clone(),
            dns_san: caller.dns_san.clone(),
            token,
        });
    }
    let local = match &document.local {
        Some(local) => rights(&local.operations, &local.tenants)
            .map_err(|message| failed(format!("local: {message}")))?,
        None => Rights {
            operations: Operations::local_default(),
            tenants: TenantScope::All,
        },
    };
    Ok((
        Table {
            named,
            local: Caller::new("local", local),
            open: false,
        },
        fingerprint.finish(),
    ))
}

fn admin_entry(admin_token: Option<&[u8]>) -> Option<Entry> {
    admin_token.map(|token| Entry {
        caller: Caller::new(
            "admin",
            Rights {
                operations: Operations::admin(),
                tenants: TenantScope::All,
            },
        ),
        uri_san: None,
        dns_san: None,
        token: Some(digest(token)),
    })
}

/// The callers in force, replaced whole when their files change.
#[derive(Debug)]
pub struct Callers {
    table: Reread<Table>,
    file: Option<PathBuf>,
    admin_token: Option<Vec<u8>>,
}

impl Callers {
    /// No callers file: every caller is `anonymous` with the decision
    /// operations on every tenant; `admin_token` names the `admin` caller.
    pub fn open(admin_token: Option<&str>) -> Self {
        let admin_token = admin_token.map(|token| token.as_bytes().to_vec());
        let table = Table {
            named: admin_entry(admin_token.as_deref()).into_iter().collect(),
            local: Caller::new(
                "anonymous",
                Rights {
                    operations: Operations::local_default(),
                    tenants: TenantScope::All,
                },
            ),
            open: true,
        };
        Self {
            table: Reread::new(table, Fingerprint::default()),
            file: None,
            admin_token,
        }
    }

    /// The callers of `file` (and the `admin` caller of `admin_token`).
    pub fn from_file(file: &Path, admin_token: Option<&str>) -> Result<Self, CallersError> {
        let admin_token = admin_token.map(|token| token.as_bytes().to_vec());
        let (table, fingerprint) = load_table(file, admin_token.as_deref())?;
        Ok(Self {
            table: Reread::new(table, fingerprint),
            file: Some(file.to_path_buf()),
            admin_token,
        })
    }

    /// Whether callers are named by a callers file.
    pub fn is_configured(&self) -> bool {
        self.file.is_some()
    }

    /// Whether some caller may use admin operations.
    pub fn has_admin(&self) -> bool {
        self.table.load().named.iter().any(|entry| {
            Operation::ALL
                .iter()
                .any(|op| op.is_admin() && entry.caller.rights.operations.contains(*op))
        })
    }

    /// Rereads the callers file and its token files. `Ok(true)`: they
    /// changed and are now in force; `Ok(false)`: nothing changed; an error
    /// leaves the callers in force as they were.
    pub fn reload(&self) -> Result<bool, CallersError> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let (table, fingerprint) = load_table(file, self.admin_token.as_deref())?;
        Ok(self.table.offer(table, fingerprint))
    }

    /// The caller `credentials` identify.
    pub fn identify(&self, credentials: &Credentials<'_>) -> Result<Caller, Refusal> {
        let table = self.table.load();
        if let Some(token) = credentials.bearer {
            let presented = digest(token.as_bytes());
            // Every digest is compared, so that the time taken does not
            // tell which caller came close.
            let mut found = None;
            for entry in &table.named {
                if let Some(expected) = &entry.token {
                    if same_digest(expected, &presented) {
                        found = Some(&entry.caller);
                    }
                }
            }
            match found {
                Some(caller) => return Ok(caller.clone()),
                // An open sidecar ignores a token it does not know (one
                // meant for another hop, say), as it always has.
                None if !table.open => {
                    return Err(Refusal::Unauthenticated("the bearer token is not valid"))
                }
                None => {}
            }
        }
        if let Some(certificate) = credentials.certificate {
            let named = table.named.iter().find(|entry| {
                entry
                    .uri_san
                    .as_ref()
                    .is_some_and(|uri| certificate.uri_sans.contains(uri))
                    || entry
                        .dns_san
                        .as_ref()
                        .is_some_and(|dns| certificate.dns_sans.contains(dns))
            });
            match named {
                Some(entry) => return Ok(entry.caller.clone()),
                None if !table.open => {
                    return Err(Refusal::Unauthenticated(
                        "the client certificate names no caller",
                    ))
                }
                None => {}
            }
        }
        if credentials.local || table.open {
            return Ok(table.local.clone());
        }
        Err(Refusal::Unauthenticated(
            "a client certificate or a bearer token is required",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn tokens_certificates_and_the_local_caller_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "shop.token", "shop-token-0123456789\n");
        let file = write(
            dir.path(),
            "callers.yaml",
            "callers:\n  - name: shop\n    token_file: shop.token\n    operations: [check]\n    tenants: [acme]\n  - name: billing\n    uri_san: spiffe://c/billing\n    operations: [report_usage, consume]\n    tenants: ['*']\nlocal:\n  operations: [check]\n",
        );
        let callers = Callers::from_file(&file, Some("admin-token-0123456789")).unwrap();
        let shop = callers
            .identify(&Credentials {
                bearer: Some("shop-token-0123456789"),
                ..Credentials::default()
            })
            .unwrap();
        assert_eq!(shop.name(), "shop");
        assert!(shop.authorize(Operation::Check, Some("acme")).is_ok());
        assert_eq!(
            shop.authorize(Operation::Check, Some("globex"))
                .unwrap_err()
                .to_string(),
            "caller `shop` may not use check here"
        );
        assert!(shop
            .authorize(Operation::ReportUsage, Some("acme"))
            .is_err());
        assert_eq!(
            callers
                .identify(&Credentials {
                    bearer: Some("shop-token-0123456788"),
                    local: true,
                    ..Credentials::default()
                })
                .unwrap_err(),
            Refusal::Unauthenticated("the bearer token is not valid")
        );
        let certificate = PeerCertificate {
            uri_sans: vec!["spiffe://c/billing".into()],
            dns_sans: vec![],
        };
        let billing = callers
            .identify(&Credentials {
                certificate: Some(&certificate),
                ..Credentials::default()
            })
            .unwrap();
        assert_eq!(billing.name(), "billing");
        assert!(billing.authorize(Operation::Consume, Some("any")).is_ok());
        let local = callers
            .identify(&Credentials {
                local: true,
                ..Credentials::default()
            })
            .unwrap();
        assert_eq!(local.name(), "local");
        assert!(local.authorize(Operation::Check, Some("acme")).is_ok());
        assert!(local
            .authorize(Operation::ReportUsage, Some("acme"))
            .is_err());
        assert_eq!(
            callers.identify(&Credentials::default()).unwrap_err(),
            Refusal::Unauthenticated("a client certificate or a bearer token is required")
        );
        let admin = callers
            .identify(&Credentials {
                bearer: Some("admin-token-0123456789"),
                ..Credentials::default()
            })
            .unwrap();
        assert!(admin
            .authorize(Operation::PutSnapshot, Some("acme"))
            .is_ok());
        assert!(admin.authorize(Operation::Check, Some("acme")).is_err());
    }

    #[test]
    fn a_changed_token_file_replaces_the_token_and_a_broken_one_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let token = write(dir.path(), "t", "first-token-0123456789");
        let file = write(
            dir.path(),
            "callers.yaml",
            "callers:\n  - {name: app, token_file: t, operations: ['*'], tenants: ['*']}\n",
        );
        let callers = Callers::from_file(&file, None).unwrap();
        let with = |token: &'static str| Credentials {
            bearer: Some(token),
            ..Credentials::default()
        };
        assert!(callers.identify(&with("first-token-0123456789")).is_ok());
        assert_eq!(callers.reload(), Ok(false));
        std::fs::write(&token, "second-token-0123456789").unwrap();
        assert_eq!(callers.reload(), Ok(true));
        assert!(callers.identify(&with("first-token-0123456789")).is_err());
        assert!(callers.identify(&with("second-token-0123456789")).is_ok());
        std::fs::write(&token, "short").unwrap();
        let error = callers.reload().unwrap_err();
        assert_eq!(error.file, token);
        assert!(error.message.contains("at least 16 bytes"), "{error}");
        assert!(callers.identify(&with("second-token-0123456789")).is_ok());
    }

    #[test]
    fn mistakes_in_the_callers_file_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (text, expected) in [
            ("callers:\n  - {name: a, uri_san: x, operations: [checks], tenants: ['*']}\n", "unknown operation `checks`"),
            ("callers:\n  - {name: local, uri_san: x, operations: [check], tenants: ['*']}\n", "tollgate's own"),
            ("callers:\n  - {name: a, operations: [check], tenants: ['*']}\n", "uri_san, dns_san or token_file"),
            ("callers:\n  - {name: a, uri_san: x, operations: [check], tenants: ['*']}\n  - {name: a, uri_san: y, operations: [check], tenants: ['*']}\n", "used twice"),
            ("callers:\n  - {name: 'a b', uri_san: x, operations: [check], tenants: ['*']}\n", "a name is"),
            ("callers:\n  - {name: a, uri_san: x, operations: [check], tenants: ['*'], extra: 1}\n", "unknown field `extra`"),
            ("callers:\n  - {name: a, token_file: missing, operations: [check], tenants: ['*']}\n", "cannot read"),
        ] {
            let file = write(dir.path(), "callers.yaml", text);
            let error = Callers::from_file(&file, None).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn each_operation_has_its_own_bit() {
        for (index, operation) in Operation::ALL.into_iter().enumerate() {
            assert_eq!(operation.bit(), 1 << index, "{operation}");
        }
    }

    #[test]
    fn an_open_sidecar_serves_everyone_but_admin_needs_the_token() {
        let callers = Callers::open(Some("admin-token-0123456789"));
        let anyone = callers.identify(&Credentials::default()).unwrap();
        assert_eq!(anyone.name(), "anonymous");
        assert!(anyone
            .authorize(Operation::ReportUsage, Some("acme"))
            .is_ok());
        assert!(anyone
            .authorize(Operation::PutSnapshot, Some("acme"))
            .is_err());
        let stranger = callers
            .identify(&Credentials {
                bearer: Some("someone-elses-token-123"),
                ..Credentials::default()
            })
            .unwrap();
        assert_eq!(stranger.name(), "anonymous");
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
