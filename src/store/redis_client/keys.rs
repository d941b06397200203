//! Every Redis key and channel tollgate uses. A tenant's keys carry the hash
//! tag `{<tenant>}`, so that they share one Redis Cluster slot and one
//! script can touch them together.
//!
//! - `tollgate:{t}:snapshot`: the snapshot document `{"tenant", "version",
//!   "entities"}`;
//! - `tollgate:{t}:version`: the highest version ever written for the tenant
//!   (it survives a delete, so versions never go backwards);
//! - `tollgate:{t}:usage:<meter>:<window>`: a counter meter's count in one
//!   period window (`2026-11`, `2026-11-27`, or `all`), expiring 35 days
//!   after the window ends;
//! - `tollgate:{t}:gauge:<meter>`: a gauge meter's current value;
//! - `tollgate:{t}:idem:<key>`: the first answer to a consume's idempotency
//!   key;
//! - `tollgate:{t}:event:<key>`: a usage report's event, by its event key
//!   (a key space of its own: a report and a consume never share a key);
//! - `tollgate:{t}:usage:<meter>:<window>:leases` (hash): each sidecar's
//!   lease of that counter: `<stock> <expires ms>`, so that the stock of a
//!   sidecar that died goes back once its lease expires;
//! - `tollgate:{t}:op:<id>`: the outcome of a lease reservation or return,
//!   so that running it again (a retry after a lost reply) changes nothing;
//! - `tollgate:{t}:usage` (stream): one entry per accepted consumption or
//!   report;
//! - [`INVALIDATE_CHANNEL`]: where every snapshot write publishes
//!   `<tenant> <version>`.

/// Channel on which writers announce `<tenant> <version>`.
pub const INVALIDATE_CHANNEL: &str = "tollgate:invalidate";

/// Key of a tenant's snapshot document.
pub fn snapshot_key(tenant: &str) -> String {
    format!("tollgate:{{{tenant}}}:snapshot")
}

/// Key of a tenant's version high-water mark.
pub fn version_key(tenant: &str) -> String {
    format!("tollgate:{{{tenant}}}:version")
}

/// The tenant a snapshot key belongs to.
pub fn tenant_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("tollgate:{")?.strip_suffix("}:snapshot")
}

/// Key of a counter meter's count in one period window.
pub fn counter_key(tenant: &str, meter: &str, window: &str) -> String {
    format!("tollgate:{{{tenant}}}:usage:{meter}:{window}")
}

/// Key of a gauge meter's current value.
pub fn gauge_key(tenant: &str, meter: &str) -> String {
    format!("tollgate:{{{tenant}}}:gauge:{meter}")
}

/// Key of the lease records of a counter (its key, and `:leases`).
pub fn leases_key(counter_key: &str) -> String {
    format!("{counter_key}:leases")
}

/// Key of the recorded outcome of a lease operation.
pub fn operation_key(tenant: &str, op: &str) -> String {
    format!("tollgate:{{{tenant}}}:op:{op}")
}

/// Key of a usage report's event, by its event key.
pub fn event_key(tenant: &str, key: &str) -> String {
    format!("tollgate:{{{tenant}}}:event:{key}")
}

/// Key of the first answer to an idempotency key.
pub fn idempotency_key(tenant: &str, key: &str) -> String {
    format!("tollgate:{{{tenant}}}:idem:{key}")
}

/// Key of a tenant's usage event stream.
pub fn stream_key(tenant: &str) -> String {
    format!("tollgate:{{{tenant}}}:usage")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_keys_share_its_hash_tag() {
        let tag = "{acme}";
        for key in [
            snapshot_key("acme"),
            version_key("acme"),
            counter_key("acme", "api-calls", "2026-11"),
            gauge_key("acme", "seats"),
            idempotency_key("acme", "k-1"),
            stream_key("acme"),
        ] {
            assert!(key.starts_with("tollgate:{acme}:"), "{key}");
            assert_eq!(key.matches(tag).count(), 1, "{key}");
        }
        assert_eq!(
            counter_key("acme", "api-calls", "2026-11"),
            "tollgate:{acme}:usage:api-calls:2026-11"
        );
        assert_eq!(tenant_of_key(&snapshot_key("acme")), Some("acme"));
        assert_eq!(tenant_of_key(&version_key("acme")), None);
    }
}
