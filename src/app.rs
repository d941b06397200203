//! Assembles the sidecar: loads the store, starts the file watchers and the
//! SIGHUP handler, serves gRPC (entitlements, health, reflection) and drains
//! on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::admin::{AdminGrpc, AdminServiceServer};
use crate::api::{pb, EntitlementServiceServer, GrpcService};
use crate::callers::Callers;
use crate::config::Config;
use crate::decide::DecisionService;
use crate::decision_log::DecisionLog;
use crate::listen::{Listener, Tls};
use crate::metrics::Metrics;
use crate::store::remote::RemoteSnapshots;
use crate::store::{watch as dir_watch, ReloadOutcome, Store};

/// Name under which health reports the entitlement service.
pub const SERVICE_NAME: &str = "tollgate.v1.EntitlementService";

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Unix socket could not be bound.
    #[error("cannot listen on unix socket {path}: {source}")]
    BindUnix {
        /// The socket path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A directory could not be watched.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: String,
        /// The watcher error.
        source: notify::Error,
    },
    /// The reflection service could not be built.
    #[error("cannot build reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The decision log could not be opened.
    #[error("cannot open the decision log: {0}")]
    DecisionLog(std::io::Error),
    /// A signal handler could not be installed.
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    /// The TLS files cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::listen::TlsError),
    /// The callers file cannot be used.
    #[error("callers: {0}")]
    Callers(#[from] crate::callers::CallersError),
    /// The JWT issuers file, or an issuer's keys, cannot be used.
    #[error("jwt: {0}")]
    Jwt(#[from] crate::jwt::JwtFileError),
}

impl ServeError {
    /// The process's exit code: 2 for a file the configuration names that
    /// cannot be used (as for an invalid configuration), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Tls(_) | Self::Callers(_) | Self::Jwt(_) => 2,
            _ => 1,
        }
    }
}

/// Binds `config.listen` and serves until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            address: config.listen,
            source,
        })?;
    let served = serve_on(config, listener, shutdown_signal()?).await;
    // After the servers have stopped: the spans of the last requests are
    // exported before the process exits.
    crate::telemetry::shutdown(TRACE_FLUSH_LIMIT).await;
    served
}

/// Longest wait at shutdown for the spans still queued to be exported.
const TRACE_FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Binds a Unix domain socket at `path`, replacing a stale socket left by a
/// previous run (never another kind of file), and lets any local user that
/// can reach the directory connect (mode 0666): access is the directory's.
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, ServeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let failed = |source: std::io::Error| ServeError::BindUnix {
        path: path.display().to_string(),
        source,
    };
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if metadata.file_type().is_socket() {
            std::fs::remove_file(path).map_err(failed)?;
        } else {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(failed)?;
    Ok(listener)
}

/// A periodic lease upkeep step.
#[derive(Debug, Clone, Copy)]
enum Upkeep {
    /// Return the units of expired leases.
    ReturnExpired,
    /// Write the leases' usage events and stock.
    Flush,
}

/// Runs `upkeep` over the Redis connection every `every` from the
/// sidecar's first lease until shutdown; a failure is retried at the next
/// tick.
async fn lease_upkeep(
    metering: Arc<crate::metering::Metering>,
    remote: Arc<RemoteSnapshots>,
    upkeep: Upkeep,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Nothing to keep before the first lease: no timer wakes an idle
    // sidecar for it.
    tokio::select! {
        () = metering.leasing() => {}
        _ = stop.wait_for(|stopping| *stopping) => return,
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Flushes also come when another sidecar's lease is due to expire,
        // so that its stock is reclaimed then, not at the next tick.
        // One already due waits for the tick (a lease busy with another
        // step keeps its time, which must not make this loop spin).
        let due = match upkeep {
            Upkeep::Flush => metering
                .next_reclaim()
                .filter(|at| *at > std::time::Instant::now()),
            Upkeep::ReturnExpired => None,
        };
        let reclaim = async move {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            () = reclaim => {}
            _ = stop.wait_for(|stopping| *stopping) => return,
        }
        if let Some(conn) = remote.connection() {
            let done = match upkeep {
                Upkeep::ReturnExpired => metering.return_leases(conn, false).await,
                Upkeep::Flush => metering.flush_leases(conn).await,
            };
            if let Err(error) = done {
                tracing::debug!(error = %error, ?upkeep, "lease upkeep failed; retrying at the next tick");
            }
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl Future<Output = ()>, ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => info!(signal = "SIGTERM", "shutting down"),
            _ = interrupt.recv() => info!(signal = "SIGINT", "shutting down"),
        }
    })
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Serves on `listener` until `shutdown` completes, then reports NOT_SERVING,
/// lets in-flight requests finish within the grace period and returns.
pub async fn serve_on(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Installed first: SIGHUP's default action would end the process, also
    // while the first load is still running.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ServeError::Signal)?;
    let tls = config.tls.clone().map(Tls::load).transpose()?.map(Arc::new);
    let admin_token = config.admin_token.as_ref().map(|token| token.0.as_str());
    let callers = Arc::new(match &config.callers_file {
        Some(file) => Callers::from_file(file, admin_token)?,
        None => Callers::open(admin_token),
    });
    let license_settings = config.licenses.as_ref().map(|licenses| {
        let clock = config.clock.clone();
        licenses.settings(move || clock.now_ms())
    });
    let mut store = if config.redis.is_some() || config.licenses.is_some() {
        Store::policies_only(config.policies.clone())
    } else {
        Store::new(config.policies.clone(), config.entitlements.clone())
    };
    if let Some(settings) = &license_settings {
        store = store.with_licenses(settings.clone());
    }
    let store = Arc::new(store);
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let health = HealthReporter::new();
    set_health(&health, ServingStatus::NotServing).await;
    let health_service = crate::health::service(health.clone(), stop_rx.clone());

    let initial = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.reload_all())
            .await
            .unwrap_or_else(|_| ReloadOutcome::Rejected(Vec::new()))
    };
    let reloader = Reloader {
        store: Arc::clone(&store),
        health: health.clone(),
        stopping: stop_rx.clone(),
        metrics: Arc::clone(&metrics),
    };
    reloader.finished(&initial, None);
    if store.catalog().is_some() {
        set_health(&health, ServingStatus::Serving).await;
    } else {
        warn!(
            outcome = initial.name(),
            "no valid policy set; serving UNAVAILABLE until the policy directory is fixed"
        );
    }

    let _watchers = start_reloaders(&config, &reloader, hangup)?;
    // The TLS files and the callers file (with its token files) reread: a
    // valid change serves from then on; an invalid one is logged and counted,
    // and what was in force stays.
    if let Some(tls) = &tls {
        let tls = Arc::clone(tls);
        tokio::spawn(poll_reloads(
            "tls",
            Arc::clone(&metrics),
            config.credentials_poll,
            stop_rx.clone(),
            move || reread_blocking(Arc::clone(&tls), |tls| tls.reload()),
        ));
    }
    if callers.is_configured() {
        let callers = Arc::clone(&callers);
        tokio::spawn(poll_reloads(
            "callers",
            Arc::clone(&metrics),
            config.credentials_poll,
            stop_rx.clone(),
            move || reread_blocking(Arc::clone(&callers), |callers| callers.reload()),
        ));
    }
    let listener_settings = |name: &'static str, tls: Option<Arc<Tls>>| Listener {
        name,
        tls,
        max_connections: config.max_connections,
        metrics: Arc::clone(&metrics),
    };

    let mut decision_point =
        DecisionService::new(Arc::clone(&store), config.options, config.limits)
            .with_metrics(Arc::clone(&metrics))
            .with_callers(Arc::clone(&callers));
    if let Some(file) = &config.jwt_file {
        let verifier = Arc::new(crate::jwt::Verifier::load(file).await?);
        info!(file = %file.display(), issuers = ?verifier.issuers(), required = verifier.required(), "end users' JWTs verified");
        // The issuers file and JWKS files reread, JWKS URLs refetched on
        // their schedule.
        let reloaded = Arc::clone(&verifier);
        tokio::spawn(poll_reloads(
            "jwt",
            Arc::clone(&metrics),
            config.credentials_poll,
            stop_rx.clone(),
            move || {
                let verifier = Arc::clone(&reloaded);
                async move { verifier.reload().await.map_err(|error| error.to_string()) }
            },
        ));
        decision_point = decision_point.with_jwt(verifier);
    }
    let mut remote_link = None;
    let mut leases = None;
    if let Some(settings) = &config.redis {
        let remote =
            RemoteSnapshots::new(settings.clone(), config.cache.clone(), Arc::clone(&store));
        remote_link = Some(remote.start().await);
        metrics.observe_remote(Arc::clone(&remote));
        info!(
            redis = ?settings.urls.iter().map(|url| crate::store::redis_client::redact_url(url)).collect::<Vec<_>>(),
            cluster = settings.cluster,
            connected = remote.connected(),
            "tenant snapshots from redis"
        );
        let metering = Arc::new(crate::metering::Metering::new(
            config.metering.clone(),
            config.clock.clone(),
        ));
        tokio::spawn(lease_upkeep(
            Arc::clone(&metering),
            Arc::clone(&remote),
            Upkeep::ReturnExpired,
            (config.metering.lease_ttl / 4).max(Duration::from_millis(100)),
            stop_rx.clone(),
        ));
        tokio::spawn(lease_upkeep(
            Arc::clone(&metering),
            Arc::clone(&remote),
            Upkeep::Flush,
            config.metering.lease_flush,
            stop_rx.clone(),
        ));
        leases = Some((Arc::clone(&metering), Arc::clone(&remote)));
        metrics.observe_metering(Arc::clone(metering.stats()));
        decision_point = decision_point.with_remote(remote).with_metering(metering);
    }
    if let (Some(licenses), Some(settings)) = (&config.licenses, license_settings) {
        let guard = settings.guard;
        info!(
            licenses = %licenses.dir.display(),
            keys = %licenses.keys.display(),
            floor_for_redis = config.redis.is_some(),
            "tenant snapshots from signed licenses"
        );
        tokio::spawn(license_upkeep(
            reloader.clone(),
            Arc::clone(&guard),
            licenses.poll,
            stop_rx.clone(),
        ));
        metrics.observe_licenses(Arc::clone(&store), Arc::clone(&guard));
        decision_point = decision_point.with_licenses(crate::decide::LicenseSource { guard });
    }
    let mut decision_log_writer = None;
    if let Some(settings) = &config.decision_log {
        let (log, writer) = DecisionLog::start(settings.clone(), Arc::clone(&metrics))
            .map_err(ServeError::DecisionLog)?;
        decision_point = decision_point.with_decision_log(log);
        decision_log_writer = Some(writer);
    }
    let decision_point = Arc::new(decision_point);
    let admin_backend = decision_point.remote().cloned();
    if let (Some(address), true) = (
        config.admin_listen,
        admin_backend.is_some() || config.licenses.is_some(),
    ) {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Bind { address, source })?;
        info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = tls.is_some(), "admin service listening");
        let admin =
            AdminServiceServer::new(AdminGrpc::new(Arc::clone(&decision_point), admin_backend))
                .max_decoding_message_size(config.max_request_bytes);
        let incoming = crate::listen::tcp(
            listener,
            listener_settings("admin", tls.clone()),
            stop_rx.clone(),
        );
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let served = Server::builder()
                .add_service(admin)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|stopping| *stopping).await;
                })
                .await;
            if let Err(error) = served {
                warn!(error = %error, "admin service failed");
            }
        });
    }
    if let Some(address) = config.health_listen {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Bind { address, source })?;
        info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = config.health_tls, "health-only listener");
        let health_tls = tls.clone().filter(|_| config.health_tls);
        let incoming = crate::listen::tcp(
            listener,
            listener_settings("health", health_tls),
            stop_rx.clone(),
        );
        let health_only = health_service.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let served = Server::builder()
                .add_service(health_only)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|stopping| *stopping).await;
                })
                .await;
            if let Err(error) = served {
                warn!(error = %error, "health-only listener failed");
            }
        });
    }
    if let Some(address) = config.metrics_listen {
        let listener = crate::ops_http::bind(address)
            .await
            .map_err(|source| ServeError::Bind { address, source })?;
        info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics at /metrics");
        let mut status = crate::status::StatusSource::new(Arc::clone(&store), Arc::clone(&metrics));
        if let Some(settings) = &config.decision_log {
            status = status.with_decision_log(
                settings
                    .redis_stream
                    .as_ref()
                    .map(|stream| stream.key.clone()),
            );
        }
        tokio::spawn(crate::ops_http::serve(
            listener,
            Arc::clone(&metrics),
            Arc::new(status),
            Arc::clone(&callers),
            stop_rx.clone(),
        ));
    }
    // Callers are identified, and requests admitted, before their bodies
    // are read; batches, entity lists and values over their limits are
    // refused as bytes, before they are decoded.
    let mut http_server = None;
    let mut ext_authz_server = None;
    let admission = crate::api::bounds::Admission::new(
        config.max_in_flight,
        config.max_request_bytes_in_flight,
        metrics.in_flight(),
    );
    if let Some(address) = config.http_listen {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Bind { address, source })?;
        info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = tls.is_some(), "HTTP front door accepting connections");
        let incoming = crate::listen::tcp(
            listener,
            listener_settings("http", tls.clone()),
            stop_rx.clone(),
        );
        let front = crate::http::HttpFrontDoor::new(
            Arc::clone(&decision_point),
            admission.clone(),
            config.max_request_bytes,
            config.authzen.clone(),
            health.clone(),
        )
        .with_tls(tls.is_some());
        http_server = Some(crate::http::serve(front, incoming, stop_rx.clone()));
    }
    if let (Some(address), Some(routes)) =
        (config.ext_authz_listen, config.ext_authz_routes.clone())
    {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Bind { address, source })?;
        info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = tls.is_some(), routes = routes.routes.len(), "Envoy external authorization accepting connections");
        // Envoy is identified and admitted before its request is read, and
        // shares the places in flight with the other front doors.
        let table = Arc::new(crate::ext_authz::RouteTable::new(
            routes,
            config.ext_authz_file.clone(),
        ));
        let reloaded = Arc::clone(&table);
        tokio::spawn(poll_reloads(
            "ext_authz_routes",
            Arc::clone(&metrics),
            config.credentials_poll,
            stop_rx.clone(),
            move || reread_blocking(Arc::clone(&reloaded), |table| table.reload()),
        ));
        let ext_authz = crate::api::bounds::Bounded::new(
            crate::ext_authz::AuthorizationServer::new(crate::ext_authz::ExtAuthz::new(
                Arc::clone(&decision_point),
                table,
            ))
            .max_decoding_message_size(config.max_request_bytes),
            Arc::clone(&decision_point),
            admission.clone(),
        );
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::ext_authz::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let incoming = crate::listen::tcp(
            listener,
            listener_settings("ext_authz", tls.clone()),
            stop_rx.clone(),
        );
        let router = Server::builder()
            .max_concurrent_streams(config.max_concurrent_streams)
            .add_service(health_service.clone())
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(ext_authz);
        let mut stop = stop_rx.clone();
        ext_authz_server = Some(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        }));
    }
    // The benchmarks' floor: the same stack, no decision (src/api/floor.rs).
    #[cfg(feature = "bench-floor")]
    let floor = crate::api::bounds::Bounded::new(
        crate::api::floor::pb::floor_server::FloorServer::new(crate::api::floor::Floor)
            .max_decoding_message_size(config.max_request_bytes),
        Arc::clone(&decision_point),
        admission.clone(),
    );
    let entitlement_service = crate::api::bounds::Bounded::new(
        EntitlementServiceServer::new(GrpcService::new(Arc::clone(&decision_point)))
            .max_decoding_message_size(config.max_request_bytes),
        decision_point,
        admission,
    );
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let address = listener.local_addr().ok();
    info!(
        address = %address.map(|a| a.to_string()).unwrap_or_default(),
        policies = %config.policies.display(),
        entitlements = %config.entitlements.display(),
        "listening"
    );

    let draining = {
        let health = health.clone();
        let stop_tx = stop_tx.clone();
        let delay = config.shutdown_delay;
        async move {
            shutdown.await;
            set_health(&health, ServingStatus::NotServing).await;
            if !delay.is_zero() {
                // Callers (an application draining beside this sidecar, a load
                // balancer that has yet to see NOT_SERVING) keep being answered
                // for a while before the listener closes.
                info!(
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "not serving; still answering until the shutdown delay is over"
                );
                tokio::time::sleep(delay).await;
            }
            let _ = stop_tx.send(true);
        }
    };
    let router = Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(entitlement_service);
    #[cfg(feature = "bench-floor")]
    let router = router.add_service(floor);
    let unix = match &config.listen_unix {
        Some(path) => {
            let listener = bind_unix(path)?;
            info!(path = %path.display(), "listening on unix socket");
            let mut stop = stop_rx.clone();
            let served = router.clone().serve_with_incoming_shutdown(
                crate::listen::unix(listener, config.max_connections, stop_rx.clone()),
                async move {
                    let _ = stop.wait_for(|stopping| *stopping).await;
                },
            );
            Some((path.clone(), served))
        }
        None => None,
    };
    let tcp = router.serve_with_incoming_shutdown(
        crate::listen::tcp(
            listener,
            listener_settings("api", tls.clone()),
            stop_rx.clone(),
        ),
        draining,
    );
    let unix_path = unix.as_ref().map(|(path, _)| path.clone());
    let server = async move {
        let grpc = async move {
            match unix {
                Some((_, unix)) => tokio::try_join!(tcp, unix).map(|_| ()),
                None => tcp.await,
            }
        };
        // The HTTP front door and ext_authz drain with the gRPC listeners.
        let http = async move {
            if let Some(http) = http_server {
                http.await;
            }
        };
        let ext_authz = async move {
            match ext_authz_server {
                Some(server) => server.await,
                None => Ok(()),
            }
        };
        let (grpc, (), ext_authz) = tokio::join!(grpc, http, ext_authz);
        grpc.and(ext_authz)
    };

    let mut stop_rx_grace = stop_rx.clone();
    let grace = config.shutdown_grace;
    let grace_over = async move {
        // Wait for the shutdown to begin, then for the grace period.
        let _ = stop_rx_grace.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => {
            result?;
            info!("stopped");
        }
        () = grace_over => {
            warn!(grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX), "grace period over; abandoning requests still in flight");
        }
    }
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    if let Some((metering, remote)) = leases {
        // Unspent lease units go back, so that other sidecars can use them.
        if let Some(conn) = remote.connection() {
            match tokio::time::timeout(Duration::from_secs(2), metering.return_leases(conn, true))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(error)) => warn!(error = %error, "cannot return unspent lease units"),
                Err(_) => warn!("unspent lease units not returned within 2 s"),
            }
        }
    }
    if let Some(link) = remote_link {
        link.abort();
    }
    if let Some(writer) = decision_log_writer {
        // The writer ends once the last decision path holding the log is gone,
        // after writing everything queued.
        let flushed = tokio::task::spawn_blocking(move || writer.finish());
        if tokio::time::timeout(Duration::from_secs(5), flushed)
            .await
            .is_err()
        {
            warn!("decision log not flushed within 5 s");
        }
    }
    Ok(())
}

/// Calls `reload` every `every` until shutdown: `Ok(true)` (what `files`
/// names changed and is in force) is logged and counted; an error is logged
/// and counted once until it changes, and what was in force stays.
async fn poll_reloads<F, Fut>(
    files: &'static str,
    metrics: Arc<Metrics>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    mut reload: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopping| *stopping) => return,
        }
        match reload().await {
            Ok(true) => {
                info!(files, "changed files are in force");
                metrics.record_credential_reload(files, None);
                last_error = None;
            }
            Ok(false) => {}
            Err(error) => {
                if last_error.as_ref() != Some(&error) {
                    warn!(files, error = %error, "changed files cannot be used; what was in force stays");
                    metrics.record_credential_reload(files, Some(error.clone()));
                    last_error = Some(error);
                }
            }
        }
    }
}

/// `reload` of `files`, run off the async threads (it reads files).
async fn reread_blocking<T, E>(
    files: Arc<T>,
    reload: impl FnOnce(&T) -> Result<bool, E> + Send + 'static,
) -> Result<bool, String>
where
    T: Send + Sync + 'static,
    E: std::fmt::Display,
{
    tokio::task::spawn_blocking(move || reload(&files).map_err(|error| error.to_string()))
        .await
        .map_err(|error| error.to_string())?
}

/// Every `every`: records the license clock and rescans the licenses (a
/// license that reached its not-before starts serving; the files' state is
/// reported again).
async fn license_upkeep(
    reloader: Reloader,
    guard: Arc<crate::license::clock::ClockGuard>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now: the licenses were just read.
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let recorder = Arc::clone(&guard);
        match tokio::task::spawn_blocking(move || recorder.record()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(error = %error, "cannot write the license clock file"),
            Err(error) => warn!(error = %error, "license clock task failed"),
        }
        reloader.reload(Reload::Licenses).await;
    }
}

/// What a reload needs: the store to reload, health to report readiness and
/// metrics to count outcomes.
#[derive(Clone)]
struct Reloader {
    store: Arc<Store>,
    health: HealthReporter,
    stopping: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

/// Starts the file watchers and the SIGHUP handler; returns the watch guards.
fn start_reloaders(
    config: &Config,
    reloader: &Reloader,
    mut hangup: tokio::signal::unix::Signal,
) -> Result<Vec<dir_watch::DirWatcher>, ServeError> {
    let mut guards = Vec::new();
    let mut watched: Vec<(&std::path::PathBuf, Reload)> = Vec::new();
    if config.watch {
        watched.push((&config.policies, Reload::Policies));
        // Snapshots from Redis or licenses: the entitlements directory is not read.
        if config.redis.is_none() && config.licenses.is_none() {
            watched.push((&config.entitlements, Reload::Entitlements));
        }
        if let Some(licenses) = &config.licenses {
            watched.push((&licenses.dir, Reload::Licenses));
            watched.push((&licenses.keys, Reload::Licenses));
        }
    }
    for (dir, what) in watched {
        let (guard, mut changes) =
            dir_watch::watch_dir(dir).map_err(|source| ServeError::Watch {
                path: dir.display().to_string(),
                source,
            })?;
        guards.push(guard);
        let reloader = reloader.clone();
        let debounce = config.reload_debounce;
        let mut stop_rx = reloader.stopping.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = dir_watch::next_settled_change(&mut changes, debounce) => {
                        if !changed { break; }
                    }
                    _ = stop_rx.changed() => break,
                }
                reloader.reload(what).await;
            }
        });
    }

    let reloader = reloader.clone();
    let mut stop_rx = reloader.stopping.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                received = hangup.recv() => {
                    if received.is_none() { break; }
                    info!(signal = "SIGHUP", "reloading policies and entitlements");
                    reloader.reload(Reload::All).await;
                }
                _ = stop_rx.changed() => break,
            }
        }
    });
    Ok(guards)
}

/// What a reload rereads, and why.
#[derive(Debug, Clone, Copy)]
enum Reload {
    /// A file of the policy directory changed.
    Policies,
    /// A file of the entitlements directory changed.
    Entitlements,
    /// SIGHUP: both.
    All,
    /// A file of the licenses or license keys directory changed, or their
    /// periodic rescan.
    Licenses,
}

impl Reload {
    /// The name logs give the reload's trigger.
    fn trigger(self) -> &'static str {
        match self {
            Self::Policies => "policy_change",
            Self::Entitlements => "entitlement_change",
            Self::All => "sighup",
            Self::Licenses => "license_change",
        }
    }
}

impl Reloader {
    async fn reload(&self, what: Reload) {
        let had_policies = self.store.catalog().is_some();
        let worker = Arc::clone(&self.store);
        let outcome = tokio::task::spawn_blocking(move || match what {
            Reload::Policies => worker.reload_policies(),
            Reload::Entitlements | Reload::Licenses => worker.reload_entitlements(),
            Reload::All => worker.reload_all(),
        })
        .await;
        match outcome {
            Ok(outcome) => self.finished(&outcome, Some(what)),
            Err(error) => warn!(error = %error, "reload task failed"),
        }
        // The first valid set makes the service ready, unless it is already draining.
        if !had_policies && self.store.catalog().is_some() && !*self.stopping.borrow() {
            set_health(&self.health, ServingStatus::Serving).await;
        }
    }

    /// Logs and counts a reload's outcome.
    fn finished(&self, outcome: &ReloadOutcome, trigger: Option<Reload>) {
        let catalog = self.store.catalog();
        let version = catalog.as_ref().map(|c| c.policies.version.as_str());
        // Snapshots from files and from licenses (one of the two is empty
        // unless licenses are the Redis source's floor).
        let tenants = catalog
            .as_ref()
            .map_or(0, |c| c.tenants.len() + c.licenses.len());
        info!(
            trigger = trigger.map_or("start", Reload::trigger),
            outcome = outcome.name(),
            policy_version = version.unwrap_or_default(),
            tenants,
            "reload finished"
        );
        self.metrics.record_reload(
            outcome.name(),
            version,
            catalog.as_ref().map_or(0, |c| c.policies.policy_count()),
            tenants,
        );
    }
}
