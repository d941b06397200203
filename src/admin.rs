//! The write path of tenant snapshots: validate against the serving schema,
//! refuse version regressions, write atomically with the invalidation. Shared
//! by the gRPC `AdminService` and the `tollgate snapshot` command.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::pb;
use crate::decide::{Caller, DecisionService, Operation};
use crate::store::redis_client::{
    DeleteOutcome, PutOutcome, Read, RedisConn, RedisFailure, MAX_VERSION,
};
use crate::store::remote::RemoteSnapshots;
use tollgate_engine::{check_tenant_id, PolicySnapshot, SnapshotSource, TenantSnapshot};

pub use pb::admin_service_server::{AdminService, AdminServiceServer};

/// Why a snapshot operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The snapshot does not validate (the Cedar or JSON error says why).
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// The version is not newer than the stored one.
    #[error("version {version} of `{tenant}` is not newer than the stored version {stored}")]
    NotNewer {
        /// The tenant.
        tenant: String,
        /// The version offered.
        version: u64,
        /// The stored version.
        stored: u64,
    },
    /// A delete expected another version.
    #[error("`{tenant}` is at version {stored}, not the expected {expected}")]
    VersionMismatch {
        /// The tenant.
        tenant: String,
        /// The version expected.
        expected: u64,
        /// The stored version.
        stored: u64,
    },
    /// No snapshot is stored for the tenant.
    #[error("no snapshot stored for `{0}`")]
    NotFound(String),
    /// No valid policy set is loaded to validate against.
    #[error("no valid policy set is loaded to validate against")]
    NoPolicies,
    /// Redis could not be reached or answered wrongly.
    #[error("{0}")]
    Redis(#[from] RedisFailure),
}

impl From<AdminError> for Status {
    fn from(error: AdminError) -> Self {
        let message = error.to_string();
        match error {
            AdminError::Invalid(_) => Status::invalid_argument(message),
            AdminError::NotNewer { .. } | AdminError::VersionMismatch { .. } => {
                Status::failed_precondition(message)
            }
            AdminError::NotFound(_) => Status::not_found(message),
            AdminError::NoPolicies => Status::unavailable(message),
            // Redis's own error text stays in the log.
            AdminError::Redis(error) => Status::unavailable(crate::telemetry::internal_error(
                "the snapshot store cannot be reached right now",
                &error,
            )),
        }
    }
}

/// What a successful put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The tenant.
    pub tenant: String,
    /// The version written.
    pub version: u64,
    /// The version it replaced (0 when none).
    pub previous: u64,
}

/// Validates `document` against `policies` and writes it when its version is
/// newer than the stored one, publishing the invalidation in the same step.
pub async fn put(
    conn: &RedisConn,
    policies: &PolicySnapshot,
    document: &str,
) -> Result<Written, AdminError> {
    let snapshot =
        TenantSnapshot::parse(document.as_bytes(), None, policies, SnapshotSource::Redis)
            .map_err(|error| AdminError::Invalid(error.to_string()))?;
    if snapshot.version == 0 || snapshot.version > MAX_VERSION {
        return Err(AdminError::Invalid(format!(
            "version must be from 1 to {MAX_VERSION}, got {}",
            snapshot.version
        )));
    }
    match conn
        .put_snapshot(&snapshot.tenant, snapshot.version, document)
        .await?
    {
        PutOutcome::Written { previous } => Ok(Written {
            tenant: snapshot.tenant,
            version: snapshot.version,
            previous,
        }),
        // A retry of a write that was done: answered as written, replacing
        // itself.
        PutOutcome::AlreadyStored => Ok(Written {
            tenant: snapshot.tenant,
            version: snapshot.version,
            previous: snapshot.version,
        }),
        PutOutcome::NotNewer { stored } => Err(AdminError::NotNewer {
            tenant: snapshot.tenant,
            version: snapshot.version,
            stored,
        }),
    }
}

/// The stored document of `tenant` and its version.
pub async fn get(conn: &RedisConn, tenant: &str) -> Result<(u64, String), AdminError> {
    check_tenant(tenant)?;
    match conn.read_snapshot(tenant, None).await? {
        Read::Document { version, bytes } => {
            let text = String::from_utf8(bytes).map_err(|_| {
                RedisFailure::Garbage(format!("the snapshot of `{tenant}` is not UTF-8"))
            })?;
            let version = version.or_else(|| document_version(&text)).unwrap_or(0);
            Ok((version, text))
        }
        Read::Absent { .. } | Read::Unchanged { .. } => {
            Err(AdminError::NotFound(tenant.to_string()))
        }
    }
}

fn document_version(text: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()?
        .get("version")?
        .as_u64()
}

/// Deletes `tenant`'s snapshot (when `expected` is given, only at that version).
pub async fn delete(
    conn: &RedisConn,
    tenant: &str,
    expected: Option<u64>,
) -> Result<u64, AdminError> {
    check_tenant(tenant)?;
    match conn.delete_snapshot(tenant, expected).await? {
        DeleteOutcome::Deleted { version } => Ok(version),
        DeleteOutcome::Absent => Err(AdminError::NotFound(tenant.to_string())),
        DeleteOutcome::VersionMismatch { stored } => Err(AdminError::VersionMismatch {
            tenant: tenant.to_string(),
            expected: expected.unwrap_or_default(),
            stored,
        }),
    }
}

fn check_tenant(tenant: &str) -> Result<(), AdminError> {
    check_tenant_id(tenant)
        .map_err(|problem| AdminError::Invalid(format!("invalid tenant id `{tenant}`: {problem}")))
}

/// The gRPC `AdminService`: snapshot writes to the Redis source, license
/// deliveries to the licenses directory.
#[derive(Debug, Clone)]
pub struct AdminGrpc {
    service: Arc<DecisionService>,
    remote: Option<Arc<RemoteSnapshots>>,
}

impl AdminGrpc {
    /// Serves writes to the Redis that `remote` reads (when there is one)
    /// and deliveries to the licenses directory of `service`'s store (when
    /// it has one), validated against its serving schema, for the callers
    /// `service` identifies.
    pub fn new(service: Arc<DecisionService>, remote: Option<Arc<RemoteSnapshots>>) -> Self {
        Self { service, remote }
    }

    fn conn(&self) -> Result<&RedisConn, Status> {
        let remote = self.remote.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "snapshots are written to Redis and this sidecar has no redis_url; it serves signed licenses (PutLicense)",
            )
        })?;
        remote
            .connection()
            .ok_or_else(|| Status::unavailable("not connected to redis yet"))
    }

    /// The caller of `request`, when it may use `operation` on `tenant`.
    fn admit<T>(
        &self,
        request: &Request<T>,
        operation: Operation,
        tenant: Option<&str>,
    ) -> Result<Caller, Status> {
        let refused = |error| crate::api::status(&error);
        let caller = self
            .service
            .identify(
                &crate::api::credentials(request.extensions(), request.metadata()),
                operation,
            )
            .map_err(refused)?;
        self.service
            .authorize(&caller, operation, tenant)
            .map_err(refused)?;
        Ok(caller)
    }
}

/// Writes a delivered license into the licenses directory as
/// `<tenant>.license`, replacing the file atomically.
fn write_license(dir: &std::path::Path, tenant: &str, token: &str) -> Result<String, Status> {
    let path = dir.join(format!("{tenant}.license"));
    let temporary = dir.join(format!(".{tenant}.license.tmp"));
    std::fs::write(&temporary, format!("{token}\n"))
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|error| {
            let _ = std::fs::remove_file(&temporary);
            Status::failed_precondition(format!(
                "cannot write the licenses directory {}: {error} (a directory mounted from a Secret is read-only: deliver by updating the Secret)",
                dir.display()
            ))
        })?;
    Ok(tollgate_engine::policies::display_path(&path))
}

/// The `tenant` field of a snapshot document, read before the document is
/// validated (to know whether the caller may write it).
fn document_tenant(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|document| document.get("tenant")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl AdminService for AdminGrpc {
    async fn put_snapshot(
        &self,
        request: Request<pb::PutSnapshotRequest>,
    ) -> Result<Response<pb::PutSnapshotResponse>, Status> {
        let tenant = document_tenant(&request.get_ref().snapshot_json);
        let caller = self.admit(&request, Operation::PutSnapshot, Some(&tenant))?;
        let catalog = self
            .service
            .store()
            .catalog()
            .ok_or(AdminError::NoPolicies)?;
        let written = put(
            self.conn()?,
            &catalog.policies,
            &request.into_inner().snapshot_json,
        )
        .await?;
        tracing::info!(tenant = %written.tenant, version = written.version, previous = written.previous, caller = caller.name(), "snapshot written");
        Ok(Response::new(pb::PutSnapshotResponse {
            tenant: written.tenant,
            version: written.version,
            previous_version: written.previous,
        }))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        let tenant = request.get_ref().tenant.clone();
        self.admit(&request, Operation::GetSnapshot, Some(&tenant))?;
        let (version, snapshot_json) = get(self.conn()?, &tenant).await?;
        Ok(Response::new(pb::GetSnapshotResponse {
            tenant,
            version,
            snapshot_json,
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let caller = self.admit(
            &request,
            Operation::DeleteSnapshot,
            Some(&request.get_ref().tenant),
        )?;
        let request = request.into_inner();
        let expected = (request.expected_version > 0).then_some(request.expected_version);
        let deleted_version = delete(self.conn()?, &request.tenant, expected).await?;
        tracing::info!(tenant = %request.tenant, version = deleted_version, caller = caller.name(), "snapshot deleted");
        Ok(Response::new(pb::DeleteSnapshotResponse {
            tenant: request.tenant,
            deleted_version,
        }))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let caller = self.admit(&request, Operation::ListSnapshots, None)?;
        let mut tenants = self
            .conn()?
            .list_tenants()
            .await
            .map_err(AdminError::from)?;
        // A caller sees only the tenants it may touch.
        tenants.retain(|tenant| caller.may_touch(tenant));
        Ok(Response::new(pb::ListSnapshotsResponse { tenants }))
    }

    async fn put_license(
        &self,
        request: Request<pb::PutLicenseRequest>,
    ) -> Result<Response<pb::PutLicenseResponse>, Status> {
        let token = request.get_ref().license.trim().to_string();
        // Read before it is verified, to know whether the caller may
        // deliver it.
        let tenant = crate::license::unverified(&token)
            .map(|(_, claims)| claims.sub)
            .unwrap_or_default();
        let caller = self.admit(&request, Operation::PutLicense, Some(&tenant))?;
        let store = Arc::clone(self.service.store());
        let Some(settings) = store.license_settings().cloned() else {
            return Err(Status::failed_precondition(
                "this sidecar serves no licenses; set licenses and license_keys",
            ));
        };
        let catalog = store.catalog().ok_or(AdminError::NoPolicies)?;
        let token = crate::license::token_of(token.as_bytes())
            .map(str::to_string)
            .map_err(|refusal| Status::invalid_argument(format!("license refused: {refusal}")))?;
        let checked = {
            let (settings, catalog, token) =
                (settings.clone(), Arc::clone(&catalog), token.clone());
            tokio::task::spawn_blocking(move || {
                crate::license::set::check_delivery(
                    &token,
                    &settings.keys,
                    &settings.installation,
                    &catalog.policies,
                    &catalog.licenses,
                    settings.guard.now_ms().div_euclid(1000),
                    settings.skew_s,
                )
            })
            .await
            .map_err(|error| Status::internal(error.to_string()))?
        };
        let license = checked.map_err(|refusal| match refusal {
            crate::license::Refusal::Older { .. } => {
                Status::failed_precondition(format!("license refused: {refusal}"))
            }
            crate::license::Refusal::Unreadable(_) => {
                Status::unavailable(format!("license keys unreadable: {refusal}"))
            }
            _ => Status::invalid_argument(format!("license refused: {refusal}")),
        })?;
        let tenant = license.claims.sub.clone();
        let previous_version = catalog
            .licenses
            .get(&tenant)
            .map_or(0, |old| old.claims.ver);
        let file = {
            let (dir, tenant, token) = (settings.dir.clone(), tenant.clone(), token.clone());
            tokio::task::spawn_blocking(move || {
                let file = write_license(&dir, &tenant, &token)?;
                store.reload_entitlements();
                Ok::<_, Status>((file, store))
            })
            .await
            .map_err(|error| Status::internal(error.to_string()))??
        };
        let (file, store) = file;
        let serving = store
            .catalog()
            .and_then(|catalog| catalog.licenses.get(&tenant).cloned());
        if serving.as_ref().map(|l| &l.claims.jti) != Some(&license.claims.jti) {
            let why = store
                .reload_log()
                .last_license_report
                .refused
                .iter()
                .find(|refused| refused.file == file)
                .map_or_else(
                    || "another license of the tenant serves".to_string(),
                    |refused| refused.refusal.to_string(),
                );
            return Err(Status::failed_precondition(format!(
                "the license was written to {file} but does not serve: {why}"
            )));
        }
        tracing::info!(tenant = %tenant, license_id = %license.claims.jti, version = license.claims.ver, previous = previous_version, file = %file, caller = caller.name(), "license delivered");
        Ok(Response::new(pb::PutLicenseResponse {
            tenant,
            license_id: license.claims.jti.clone(),
            version: license.claims.ver,
            previous_version,
            file,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_failures_reach_callers_as_an_error_id_only() {
        let status = Status::from(AdminError::Redis(RedisFailure::Garbage(
            "WRONGTYPE Operation against a key holding the wrong kind of value".to_string(),
        )));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let message = status.message();
        assert!(
            message.starts_with("the snapshot store cannot be reached right now (error id "),
            "{message}"
        );
        assert!(!message.contains("WRONGTYPE"), "{message}");
        // Errors about the caller's own request keep their text.
        let status = Status::from(AdminError::NotFound("acme".to_string()));
        assert_eq!(status.message(), "no snapshot stored for `acme`");
    }
}
