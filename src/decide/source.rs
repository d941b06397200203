//! Where a request's tenant snapshot comes from: one trait, implemented by
//! the file source and the Redis source.

use std::sync::Arc;
use std::time::Duration;

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

/// The source a decision service reads: chosen once, at start.
#[derive(Debug)]
pub enum Tenants {
    /// The entitlements directory.
    Files(FileSource),
    /// Redis, through the in-process cache.
    Redis(Arc<RemoteSnapshots>),
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
            Self::Redis(redis) => TenantSource::lookup(redis, catalog, tenant, max_staleness).await,
        }
    }

    fn connection(&self) -> Option<&RedisConn> {
        match self {
            Self::Files(files) => files.connection(),
            Self::Redis(redis) => TenantSource::connection(redis),
        }
    }
}
