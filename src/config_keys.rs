//! Every configuration key with its default and its meaning: the one place
//! a default is written. The configuration reads the keys' values from the file,
//! the environment and flags, starting from these defaults; a module's own
//! settings type takes its `Default` from here too ([`millis`],
//! [`number`]), so that a default cannot say one thing in `--help` and do
//! another.
//!
//! This module imports nothing of tollgate's: every module may read it.

use std::time::Duration;

/// Every configuration key, its default and what it means (for `--help` and
/// docs/configuration.md). The defaults are the texts the configuration
/// parses, as if set in a file.
pub const KEYS: &[(&str, &str, &str)] = &[
    ("listen", "127.0.0.1:50051", "gRPC listen address (host:port)"),
    ("listen_unix", "", "also serve gRPC on this Unix domain socket path (created mode 0666; a stale socket file is replaced); empty: off"),
    ("health_listen", "", "address of a listener that serves grpc.health.v1 and nothing else, for the kubelet's probes on the pod IP (e.g. 0.0.0.0:50053); plaintext unless health_tls; empty: off"),
    ("health_tls", "false", "serve the health-only listener with TLS too (the kubelet's gRPC probes speak plaintext)"),
    ("http_listen", "", "address of the HTTP front door: the JSON API (POST /v1/check, /v1/check-batch, /v1/report-usage), AuthZEN 1.0 (POST /access/v1/evaluation(s), GET /.well-known/authzen-configuration) and /healthz, /readyz, with the gRPC API's callers, limits and TLS; e.g. 127.0.0.1:8080; empty: off"),
    ("authzen_tenant", "header:x-tollgate-tenant", "where an AuthZEN request's tenant comes from, the first that names one: comma-separated `header:<name>`, `subject:<property>`, `caller` (the one tenant the caller may use), `tenant:<id>`"),
    ("authzen_namespace", "", "Cedar namespace of AuthZEN actions (`<ns>::Action::\"<name>\"`) and of subject and resource types not in authzen_types; empty: none"),
    ("authzen_types", "", "comma-separated `<AuthZEN type>=<Cedar entity type>` pairs, e.g. `user=Acme::User,doc=Acme::Document`"),
    ("ext_authz_listen", "", "address of Envoy's external authorization service (envoy.service.auth.v3.Authorization over gRPC, with health and reflection), with the gRPC API's callers, limits and TLS; needs ext_authz_file; e.g. 127.0.0.1:50054; empty: off"),
    ("ext_authz_file", "", "YAML route table of ext_authz: where the tenant and principal come from, and per method, path pattern and headers the action, resource (path parameters as ids) and meter (docs/envoy.md)"),
    ("jwt_file", "", "YAML file of the issuers whose JWTs identify end users (JWKS file or HTTPS URL, algorithms, audiences, the tenant, principal and context claims); a bearer value shaped as a JWT is then verified on every front door, and a refused one is UNAUTHENTICATED; reloaded when it or a JWKS file changes; empty: off"),
    ("insecure_listen", "false", "allow `listen`, `http_listen`, `ext_authz_listen` or `admin_listen` on a non-loopback address without TLS (tls_cert_file) and callers (callers_file); without it such a configuration refuses to start"),
    ("tls_cert_file", "", "PEM certificate chain of the gRPC listeners (API, admin, and health with health_tls); reloaded when it changes; empty: plaintext"),
    ("tls_key_file", "", "PEM private key of tls_cert_file; reloaded with it"),
    ("tls_client_ca_file", "", "PEM CA certificates that sign client certificates (mutual TLS); reloaded when it changes; empty: no client certificates are asked for"),
    ("tls_client_auth", "required", "with tls_client_ca_file: `required` (a connection without a valid client certificate is refused) or `optional` (callers may identify with a bearer token instead)"),
    ("callers_file", "", "YAML file naming the callers (client certificate SAN or bearer token file), the operations and tenants each may use; reloaded when it or a token file changes; empty: every caller may do everything"),
    ("max_connections", "1024", "most connections each gRPC listener (API, Unix socket, admin, health) holds open at once; a connection over it is closed at once and counted"),
    ("max_in_flight", "1024", "most EntitlementService requests served at once (each may buffer up to max_request_bytes); one over it is answered RESOURCE_EXHAUSTED before its body is read, and counted"),
    ("max_request_bytes_in_flight", "67108864", "memory for the bodies of the requests in flight beyond their first 16 KiB each; a body that would pass it is answered RESOURCE_EXHAUSTED, and counted"),
    ("max_concurrent_streams", "100", "most HTTP/2 streams (concurrent calls) a client may open on one connection"),
    ("credentials_poll_ms", "1000", "how often the TLS files, the callers file and its token files are checked for changes"),
    ("metrics_listen", "", "address of the Prometheus endpoint (GET /metrics), e.g. 127.0.0.1:9090; empty: off"),
    ("policies", "./policies", "policy directory: schema.cedarschema and *.cedar"),
    ("entitlements", "./entitlements", "directory of <tenant>.json snapshots"),
    ("strict_principals", "true", "deny with unknown_principal when the principal is not in the tenant snapshot"),
    ("policy_errors", "deny", "`deny`: a forbid that fails to evaluate denies (policy_error); `cedar`: Cedar's rule, failing policies are ignored"),
    ("max_batch", "100", "most checks in one CheckBatch"),
    ("max_request_bytes", "4194304", "largest request message in bytes"),
    ("request_timeout_ms", "30000", "longest a call that waits for Redis may take before it is answered DEADLINE_EXCEEDED; a caller's shorter grpc-timeout wins (with snapshots from files a call waits for nothing)"),
    ("watch", "true", "reload when files in the policy or entitlements directory change (SIGHUP always reloads)"),
    ("reload_debounce_ms", "200", "quiet time after a file change before reloading"),
    ("shutdown_delay_ms", "0", "after SIGTERM/SIGINT, how long to keep answering new requests (health already NOT_SERVING) before the listener closes"),
    ("shutdown_grace_ms", "10000", "how long in-flight requests may take to finish once the listener has closed"),
    ("decision_log", "", "decision log sink: empty (off), `stdout`, or a file path (rotated to <file>.1)"),
    ("decision_log_queue", "10000", "records the decision log queues before it drops (never blocking a decision)"),
    ("decision_log_sample_allow", "1", "share of ALLOW decisions logged, 0 to 1"),
    ("decision_log_sample_deny", "1", "share of DENY decisions logged, 0 to 1"),
    ("decision_log_context", "false", "include the request context in records"),
    ("decision_log_mask", "", "comma-separated context attributes whose values are logged as \"***\""),
    ("decision_log_attributes", "", "comma-separated attribute paths from the principal, e.g. account.plan, whose values in the tenant's snapshot at decision time each record carries (`attributes`); a path in decision_log_mask is logged as \"***\""),
    ("decision_log_max_bytes", "104857600", "size at which the decision log file rotates"),
    ("decision_log_redis_stream", "", "also add every decision record to this Redis Stream (XADD <key> MAXLEN ~ <decision_log_redis_maxlen> * record <json>), e.g. tollgate:decisions; needs redis_url; empty: off"),
    ("decision_log_redis_maxlen", "1000000", "approximate length the decision log's Redis Stream is trimmed to"),
    ("redis_url", "", "read tenant snapshots from Redis instead of the entitlements directory: `redis://[user:password@]host:port[/db]`, `rediss://` for TLS; with redis_cluster, a comma-separated list of seed nodes; empty: the file source"),
    ("redis_cluster", "false", "use the Redis Cluster client"),
    ("redis_username", "", "Redis ACL user name (overrides the URL's)"),
    ("redis_password", "", "Redis password (overrides the URL's); prefer TOLLGATE_REDIS_PASSWORD"),
    ("redis_tls_ca_file", "", "PEM file of the CA that signs the Redis server certificate (rediss:// with a private CA); empty: the web PKI roots"),
    ("redis_timeout_ms", "250", "upper bound on every Redis call, connecting included"),
    ("cache_max_bytes", "268435456", "upper bound on the cached snapshots' estimated memory (each snapshot's compact form, about 2.6 KB for 20 entities, plus 1 KiB each)"),
    ("cache_ttl_ms", "300000", "a cached snapshot read longer ago than this is read again on next use (safety net for a lost invalidation)"),
    ("max_stale_ms", "300000", "while Redis is unreachable, how long after its last confirmation a cached snapshot still serves (marked STALE) before entitlements_unavailable"),
    ("usage_idempotency_ttl_ms", "86400000", "how long the first answer to a consume's idempotency key (or a usage report's event key) is remembered"),
    ("usage_lease_ttl_ms", "10000", "lease-mode meters: how long unspent reserved units stay with this sidecar before they are returned"),
    ("usage_lease_flush_ms", "500", "lease-mode meters: how often each sidecar writes its granted consumptions' usage events and its unspent stock to Redis (a sidecar that dies loses at most this interval's events; its stock goes back once its lease expires)"),
    ("usage_lease_answers_max_bytes", "33554432", "lease-mode meters: memory for the first answers this sidecar remembers for idempotency keys (counted as its tenant and key plus about 170 bytes each); past it the oldest are forgotten before usage_idempotency_ttl_ms"),
    ("usage_stream_maxlen", "1000000", "approximate upper bound on each tenant's usage event stream (tollgate:{<tenant>}:usage)"),
    ("licenses", "", "directory of signed licenses (*.license, written by `tollgate license issue`): each verified against license_keys, the newest valid license of each tenant served (source LICENSE); without redis_url tenants come from licenses instead of the entitlements directory; with redis_url a tenant's license serves when Redis has no snapshot for it or is unreachable past max_stale_ms; rescanned when it or license_keys changes and every license_poll_ms; empty: off"),
    ("license_keys", "", "directory of the trusted Ed25519 public keys (*.pem, SPKI) and revoked.yaml ({keys: [key id, ...], licenses: [license id, ...]}); needed with licenses; reread with them"),
    ("license_poll_ms", "60000", "how often the licenses are rescanned (a license reaching its not-before starts serving) and the license clock recorded"),
    ("license_clock_file", "", "file that keeps the latest trusted time across restarts, so that a clock set back cannot revive an expired license; empty: only the licenses' issue times guard the clock"),
    ("license_clock_skew_ms", "300000", "how far the clock may read behind the newest license issue time or the recorded time (and a license's not-before ahead of it) before license checks answer license_clock_invalid"),
    ("install_id", "", "this installation's id, matched by licenses issued with --bind install=<id>"),
    ("cluster_id", "", "this cluster's id, matched by licenses issued with --bind cluster=<id> (licenses bound with hostname=<name> match the host's name)"),
    ("admin_listen", "", "address of the gRPC AdminService (snapshot writes, which need redis_url; license deliveries, which need licenses; and admin_token or callers with admin operations), e.g. 127.0.0.1:50052; empty: off"),
    ("admin_token", "", "bearer token of the built-in caller `admin`, which may use every AdminService call; prefer TOLLGATE_ADMIN_TOKEN"),
    ("log_format", "human", "`human` or `json`"),
    ("log_level", "info", "tracing filter, e.g. `info` or `tollgate=debug`"),
    ("transparent_huge_pages", "false", "let the allocator's heap be backed by transparent huge pages (Linux THP, where the kernel allows them): fewer TLB misses with very large caches, but an idle sidecar holds about 20 MiB more resident memory; false: the process opts out at start (prctl PR_SET_THP_DISABLE)"),
];

/// The default text of `key`.
///
/// # Panics
///
/// When `key` is not in [`KEYS`]: a programming error, which the unit tests
/// of every caller's `Default` catch.
pub fn default_text(key: &str) -> &'static str {
    match KEYS.iter().find(|(name, _, _)| *name == key) {
        Some((_, default, _)) => default,
        None => panic!("`{key}` is not a configuration key"),
    }
}

/// The default of a key holding a whole number.
///
/// # Panics
///
/// When the key is unknown or its default is not a whole number (see
/// [`default_text`]; `every_numeric_default_parses` checks them all).
pub fn number(key: &str) -> u64 {
    let text = default_text(key);
    match text.parse() {
        Ok(number) => number,
        Err(_) => panic!("the default of `{key}`, `{text}`, is not a whole number"),
    }
}

/// The default of a key holding milliseconds (`*_ms`).
///
/// # Panics
///
/// As [`number`].
pub fn millis(key: &str) -> Duration {
    Duration::from_millis(number(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_numeric_default_parses() {
        let mut numeric = 0;
        for (key, default, _) in KEYS {
            let looks_numeric = key.ends_with("_ms")
                || key.ends_with("_bytes")
                || key.ends_with("_maxlen")
                || ["max_batch", "decision_log_queue"].contains(key);
            if looks_numeric {
                assert!(default.parse::<u64>().is_ok(), "{key} = {default}");
                numeric += 1;
            }
        }
        assert!(numeric >= 14, "{numeric}");
        let mut names: Vec<&str> = KEYS.iter().map(|(key, _, _)| *key).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "a key is listed twice");
        assert_eq!(millis("redis_timeout_ms"), Duration::from_millis(250));
    }
}
