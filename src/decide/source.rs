//! Where a request's tenant snapshot comes from: one trait, implemented by
//! the file source, the Redis source and the license source.

use std::sync::Arc;
use std::time::Duration;

use crate::license::clock::ClockGuard;
use crate::store::redis_client::RedisConn;
use crate::store::remote::RemoteSnapshots;
use crate::store::{Catalog, Lookup};

/// A source of tenant snapshots.
pub trait TenantSource {
    /// `tenant`'s snapshot under `catalog`'s policies, confirmed current
    /// within `max_staleness` when one is asked (else the source's own
    /// bound).
    fn lookup(
        &self,
        catalog: &Catalog,
        tenant: &str,
        max_staleness: Option<Duration>,
    ) -> impl std::future::Future<Output = Lookup> + Send;

    /// The Redis connection metering counts over, when the source has one.
    fn connection(&self) -> Option<&RedisConn> {
        None
    }
}

/// The snapshots of the serving catalog, read from the entitlements
/// directory with the policies.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSource;

impl TenantSource for FileSource {
    async fn lookup(&self, catalog: &Catalog, tenant: &str, _: Option<Duration>) -> Lookup {
        catalog.file_lookup(tenant)
    }
}

impl TenantSource for Arc<RemoteSnapshots> {
    async fn lookup(
        &self,
        catalog: &Catalog,
        tenant: &str,
        max_staleness: Option<Duration>,
    ) -> Lookup {
        RemoteSnapshots::lookup(self, tenant, &catalog.policies, max_staleness).await
    }

    fn connection(&self) -> Option<&RedisConn> {
        RemoteSnapshots::connection(self)
    }
}

/// The snapshots of the serving catalog's signed licenses, judged at the
/// guard's time.
#[derive(Debug, Clone)]
pub struct LicenseSource {
    /// The clock licenses are judged by.
    pub guard: Arc<ClockGuard>,
}

impl TenantSource for LicenseSource {
    async fn lookup(&self, catalog: &Catalog, tenant: &str, _: Option<Duration>) -> Lookup {
        catalog
            .license_lookup(tenant, &self.guard)
            .unwrap_or(Lookup::Unknown)
    }
}

/// The source a decision service reads: chosen once, at start.
#[derive(Debug)]
pub enum Tenants {
    /// The entitlements directory.
    Files(FileSource),
    /// Redis, through the in-process cache; with licenses, a tenant's valid
    /// license serves when Redis has no snapshot for it or cannot be reached
    /// past `max_stale_ms`.
    Redis(Arc<RemoteSnapshots>, Option<LicenseSource>),
    /// Signed licenses.
    Licenses(LicenseSource),
}

impl TenantSource for Tenants {
    async fn lookup(
        &self,
        catalog: &Catalog,
        tenant: &str,
        max_staleness: Option<Duration>,
    ) -> Lookup {
        match self {
            Self::Files(files) => TenantSource::lookup(files, catalog, tenant, max_staleness).await,
            Self::Redis(redis, floor) => {
                let lookup = TenantSource::lookup(redis, catalog, tenant, max_staleness).await;
                match (lookup, floor) {
                    (lookup @ (Lookup::Unknown | Lookup::Unavailable), Some(floor)) => catalog
                        .license_lookup(tenant, &floor.guard)
                        .unwrap_or(lookup),
                    (lookup, _) => lookup,
                }
            }
            Self::Licenses(licenses) => {
                TenantSource::lookup(licenses, catalog, tenant, max_staleness).await
            }
        }
    }

    fn connection(&self) -> Option<&RedisConn> {
        match self {
            Self::Files(files) => files.connection(),
            Self::Redis(redis, _) => TenantSource::connection(redis),
            Self::Licenses(licenses) => licenses.connection(),
        }
    }
}
