//! Logs and traces: the process's `tracing` subscriber (human or JSON lines on
//! stderr, with the trace and span ids of the current span), and, when an OTLP
//! endpoint is configured, export of spans over OTLP/gRPC, batched by the
//! OpenTelemetry SDK on its own thread and flushed at shutdown.
//!
//! The standard OpenTelemetry variables configure the export:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! turns it on; `OTEL_SERVICE_NAME` (default `tollgate`),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always on),
//! `OTEL_BSP_*` (batching), `OTEL_EXPORTER_OTLP_{TIMEOUT,HEADERS,COMPRESSION}`
//! and `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER=none` are honoured.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// `service.name` when `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`)
/// does not name one.
pub const DEFAULT_SERVICE_NAME: &str = "tollgate";

/// The variables that name an OTLP endpoint, most specific first.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The samplers `OTEL_TRACES_SAMPLER` may name (those the SDK implements).
const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Whether spans are exported: read on the request path to skip the work
/// that only export needs (the caller's context, span attributes).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// What `shutdown` flushes: the provider and the runtime its exporter runs on.
static PIPELINE: OnceLock<Mutex<Option<Pipeline>>> = OnceLock::new();

struct Pipeline {
    provider: SdkTracerProvider,
    /// The exporter's gRPC channel lives here, off the request threads; kept
    /// until the process ends.
    runtime: tokio::runtime::Runtime,
}

tokio::task_local! {
    /// The caller's trace id (from `traceparent`) while no spans are
    /// exported, so that decision-log records still name the caller's trace.
    static CALLER_TRACE: TraceId;
}

/// A bad `OTEL_*` setting.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A variable holds a value that cannot be used.
    #[error("{variable}: {problem}")]
    Setting {
        /// The environment variable.
        variable: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The exporter could not be built.
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
}

/// The export settings read from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// The collector, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// The variable that named it.
    pub endpoint_variable: &'static str,
    /// Which requests are traced.
    pub sampling: Sampling,
}

/// Head sampling, decided once per request where it arrives, from
/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`. An unsampled request
/// builds no span at all, so that tracing costs only the traced share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Follow the `sampled` flag of the caller's `traceparent` when present.
    pub parent_based: bool,
    /// Share of requests without a caller's trace that start a new one.
    pub root_ratio: f64,
}

impl Sampling {
    fn from_env(sampler: Option<&str>, argument: Option<&str>) -> Self {
        let ratio = argument.and_then(|a| a.parse::<f64>().ok()).unwrap_or(1.0);
        let (parent_based, root_ratio) = match sampler {
            Some("always_on") => (false, 1.0),
            Some("always_off") => (false, 0.0),
            Some("traceidratio") => (false, ratio),
            Some("parentbased_always_off") => (true, 0.0),
            Some("parentbased_traceidratio") => (true, ratio),
            _ => (true, 1.0),
        };
        Self {
            parent_based,
            root_ratio,
        }
    }
}

/// The sampling of the running export (as `f64` bits, with the
/// parent-based flag in `SAMPLING_PARENT_BASED`).
static SAMPLING_RATIO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SAMPLING_PARENT_BASED: AtomicBool = AtomicBool::new(true);

/// Whether a request with `metadata` is traced: always false when nothing is
/// exported.
pub fn sampled(metadata: &tonic::metadata::MetadataMap) -> bool {
    if !exporting() {
        return false;
    }
    if SAMPLING_PARENT_BASED.load(Ordering::Relaxed) {
        // traceparent: version-traceid-parentid-flags; bit 0 of flags is `sampled`.
        if let Some(flags) = metadata
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit('-').next())
            .and_then(|flags| u8::from_str_radix(flags, 16).ok())
        {
            return flags & 1 == 1;
        }
    }
    let ratio = f64::from_bits(SAMPLING_RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && random_unit() < ratio)
}

/// A uniform number in [0, 1) from a per-thread xorshift generator.
fn random_unit() -> f64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(0x9e37_79b9_7f4a_7c15);
            hasher.finish() | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        // 53 random bits as a fraction.
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Reads the OTLP settings from `lookup` (the process environment in
/// production): `None` when no endpoint is set or export is disabled.
pub fn export_settings(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<ExportSettings>, TelemetryError> {
    let set = |name: &str| {
        lookup(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match set("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(TelemetryError::Setting {
                variable: "OTEL_TRACES_EXPORTER",
                problem: format!("`{other}` is not supported; use `otlp` or `none`"),
            })
        }
    }
    if let Some(protocol) = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .filter(|protocol| protocol != "grpc")
    {
        return Err(TelemetryError::Setting {
            variable: "OTEL_EXPORTER_OTLP_PROTOCOL",
            problem: format!("`{protocol}` is not supported; tollgate exports over `grpc`"),
        });
    }
    if let Some(sampler) = set("OTEL_TRACES_SAMPLER") {
        if !SAMPLERS.contains(&sampler.as_str()) {
            return Err(TelemetryError::Setting {
                variable: "OTEL_TRACES_SAMPLER",
                problem: format!("`{sampler}` is not one of {}", SAMPLERS.join(", ")),
            });
        }
        if let Some(argument) =
            set("OTEL_TRACES_SAMPLER_ARG").filter(|_| sampler.ends_with("traceidratio"))
        {
            if !argument
                .parse::<f64>()
                .is_ok_and(|ratio| (0.0..=1.0).contains(&ratio))
            {
                return Err(TelemetryError::Setting {
                    variable: "OTEL_TRACES_SAMPLER_ARG",
                    problem: format!("`{argument}` is not a ratio from 0 to 1"),
                });
            }
        }
    }
    let Some((endpoint_variable, endpoint)) = ENDPOINT_VARIABLES
        .iter()
        .find_map(|name| set(name).map(|value| (*name, value)))
    else {
        return Ok(None);
    };
    match endpoint.parse::<tonic::codegen::http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
        _ => {
            return Err(TelemetryError::Setting {
                variable: endpoint_variable,
                problem: format!(
                    "`{endpoint}` is not an http:// or https:// URL such as http://127.0.0.1:4317"
                ),
            })
        }
    }
    Ok(Some(ExportSettings {
        sampling: Sampling::from_env(
            set("OTEL_TRACES_SAMPLER").as_deref(),
            set("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        ),
        endpoint,
        endpoint_variable,
    }))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the process's subscriber for a log format and level (a tracing
/// filter such as `info` or `tollgate=debug`) and, when an OTLP endpoint is
/// configured, the span export.
pub fn init(log_level: &str, log_format: LogFormat) -> Result<(), TelemetryError> {
    let export = export_settings(|name| std::env::var(name).ok())?;
    let tracer = match &export {
        Some(settings) => Some(start_export(settings)?),
        None => None,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let otel = tracer.map(|tracer| {
        // Only what a trace needs: no source locations, thread names or
        // busy/idle timings, which cost time on every request.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_level(false)
            .with_target(false)
            // Nothing here reads `opentelemetry::Context::current()`: the
            // context need not be attached at every poll of a request.
            .with_context_activation(false)
    });
    // Spans are exported whatever the log level: the export has its own filter.
    let otel = otel.map(|layer| {
        layer.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("tollgate", tracing::level_filters::LevelFilter::INFO),
        )
    });
    let registry = tracing_subscriber::registry().with(otel);
    match log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(TraceIds::json(
                        tracing_subscriber::fmt::format().json().flatten_event(true),
                    ))
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .event_format(TraceIds::human(
                        tracing_subscriber::fmt::format().with_ansi(ansi),
                    ))
                    .with_filter(filter),
            )
            .init(),
    }
    if let Some(settings) = export {
        EXPORTING.store(true, Ordering::Release);
        tracing::info!(
            endpoint = %settings.endpoint,
            from = settings.endpoint_variable,
            "exporting traces over OTLP"
        );
    }
    Ok(())
}

/// Builds the exporter and the tracer provider on a runtime of their own.
fn start_export(
    settings: &ExportSettings,
) -> Result<opentelemetry_sdk::trace::Tracer, TelemetryError> {
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otel-export")
        .enable_all()
        .build()
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    // The gRPC channel spawns its connection task on the runtime current
    // while it is built.
    let exporter = {
        let _entered = runtime.enter();
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone());
        if settings.endpoint.starts_with("https://") {
            builder = builder
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
        }
        builder
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?
    };
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attributes| {
            attributes
                .split(',')
                .any(|pair| pair.trim_start().starts_with("service.name="))
        });
    let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    );
    if !named {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    // Sampling is decided where a request arrives (see `sampled`): a span
    // that exists is one to export. The batching comes from OTEL_BSP_*,
    // which the SDK reads.
    SAMPLING_RATIO.store(settings.sampling.root_ratio.to_bits(), Ordering::Relaxed);
    SAMPLING_PARENT_BASED.store(settings.sampling.parent_based, Ordering::Relaxed);
    let provider = SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("tollgate");
    *PIPELINE
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Pipeline { provider, runtime });
    Ok(tracer)
}

/// Whether spans are exported over OTLP.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Exports the spans still queued and stops the export, waiting at most
/// `limit`. Does nothing when nothing is exported.
pub async fn shutdown(limit: Duration) {
    let Some(pipeline) = PIPELINE
        .get()
        .and_then(|pipeline| pipeline.lock().unwrap_or_else(|p| p.into_inner()).take())
    else {
        return;
    };
    EXPORTING.store(false, Ordering::Release);
    let provider = pipeline.provider.clone();
    let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(limit));
    match tokio::time::timeout(limit + Duration::from_millis(100), flushed).await {
        Ok(Ok(Ok(()))) => tracing::debug!("trace export flushed"),
        Ok(Ok(Err(error))) => tracing::warn!(error = %error, "trace export not flushed"),
        Ok(Err(_)) | Err(_) => tracing::warn!(
            limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            "trace export not flushed in time"
        ),
    }
    // Not a blocking drop: this runs on a runtime thread.
    pipeline.runtime.shutdown_background();
}

/// Reads W3C trace context (`traceparent`, `tracestate`) from gRPC metadata.
pub struct MetadataExtractor<'a>(pub &'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

fn propagator() -> &'static TraceContextPropagator {
    static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

/// Runs one RPC's work inside `span`: with export on, the span continues the
/// caller's trace (its `traceparent`); with export off, the caller's trace id
/// is kept for the decision log.
pub fn in_rpc<F: std::future::Future>(
    span: tracing::Span,
    metadata: &tonic::metadata::MetadataMap,
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    // Not an `async fn`: its state would hold `work` (a call's whole future,
    // kilobytes) as the argument and again as the awaited future.
    use futures_util::future::Either;
    use tracing::Instrument as _;
    if exporting() && !span.is_none() {
        if metadata.contains_key("traceparent") {
            let parent = propagator().extract(&MetadataExtractor(metadata));
            // Fails only when the span is disabled by the log filter.
            let _ = span.set_parent(parent);
        }
        return Either::Left(work.instrument(span));
    }
    let caller = metadata.contains_key("traceparent").then(|| {
        propagator()
            .extract(&MetadataExtractor(metadata))
            .span()
            .span_context()
            .trace_id()
    });
    match caller.filter(|id| *id != TraceId::INVALID) {
        Some(trace_id) => Either::Right(Either::Left(
            CALLER_TRACE.scope(trace_id, work.instrument(span)),
        )),
        None => Either::Right(Either::Right(work.instrument(span))),
    }
}

/// The span of one RPC of `tollgate.v1.EntitlementService`, named after the
/// method; with export on it carries the OpenTelemetry RPC attributes.
#[macro_export]
#[doc(hidden)]
macro_rules! rpc_span {
    ($method:literal, $sampled:expr) => {
        if $sampled {
            tracing::info_span!(
                $method,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = "tollgate.v1.EntitlementService",
                rpc.method = $method,
                rpc.grpc.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            )
        } else if $crate::telemetry::exporting() {
            // Not sampled: no span, no work for the exporter's layer.
            tracing::Span::none()
        } else {
            tracing::info_span!($method)
        }
    };
}

/// A span for a stage of a request (snapshot lookup, evaluation, metering),
/// only inside an exported request span: an unsampled request builds none,
/// and neither does any request while no spans are exported (the stages are
/// for traces; a log line names the request's span).
#[macro_export]
#[doc(hidden)]
macro_rules! stage_span {
    ($($args:tt)*) => {
        if !$crate::telemetry::exporting() || tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!($($args)*)
        }
    };
}

/// Marks `span` (made by `rpc_span!`) as failed with `status`.
pub fn record_error(span: &tracing::Span, status: &tonic::Status) {
    if exporting() {
        span.record("otel.status_code", "ERROR");
        span.record("rpc.grpc.status_code", i64::from(status.code() as i32));
    }
}

/// Logs an internal failure (Redis's error text, say) under a new error id
/// and returns what a caller may see instead: `what`, and the id to quote
/// (`usage cannot be recorded right now (error id 3f2a...)`). Internal
/// details stay in the log, where the id finds them.
pub fn internal_error(what: &str, error: &dyn fmt::Display) -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let id = format!("{:016x}", hasher.finish());
    tracing::warn!(error_id = %id, error = %error, "{what}");
    format!("{what} (error id {id})")
}

/// The trace id of the current RPC, as 32 hex digits: its span's when spans
/// are exported, else the caller's `traceparent`'s, if any.
pub fn current_trace_id() -> Option<String> {
    if exporting() {
        let context = tracing::Span::current().context();
        let span = context.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            return Some(span_context.trace_id().to_string());
        }
    }
    CALLER_TRACE.try_with(|id| id.to_string()).ok()
}

/// The trace and span ids of the span an event happens in, when it has one.
fn event_ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(TraceId, opentelemetry::trace::SpanId)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    if !exporting() {
        return None;
    }
    let span = ctx.parent_span()?;
    let id = span.id();
    drop(span);
    let context = tracing::dispatcher::get_default(|dispatch| {
        tracing_opentelemetry::get_otel_context(&id, dispatch)
    })?;
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    span_context
        .is_valid()
        .then(|| (span_context.trace_id(), span_context.span_id()))
}

/// An event format that adds `trace_id` and `span_id` of the current span:
/// as the first keys of a JSON line, or at the end of a human one.
pub struct TraceIds<F> {
    inner: F,
    json: bool,
}

impl<F> TraceIds<F> {
    /// Wraps a JSON format.
    pub fn json(inner: F) -> Self {
        Self { inner, json: true }
    }

    /// Wraps a human format.
    pub fn human(inner: F) -> Self {
        Self { inner, json: false }
    }
}

impl<S, N, F> FormatEvent<S, N> for TraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = event_ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            match line.strip_prefix('{') {
                Some(rest) => write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
                ),
                None => writer.write_str(&line),
            }
        } else {
            let body = line.strip_suffix('\n').unwrap_or(&line);
            writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Option<ExportSettings>, TelemetryError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        export_settings(|name| {
            pairs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, value)| value.clone())
        })
    }

    #[test]
    fn export_is_on_only_with_an_endpoint() {
        assert_eq!(settings(&[]).unwrap(), None);
        let on = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")])
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://127.0.0.1:4317");
        let traces = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            traces.endpoint_variable,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        );
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"), off]).unwrap(),
                None
            );
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let cases = [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317")],
                "OTEL_EXPORTER_OTLP_ENDPOINT: `127.0.0.1:4317` is not an http:// or https:// URL",
            ),
            (
                vec![("OTEL_TRACES_SAMPLER", "sometimes")],
                "OTEL_TRACES_SAMPLER: `sometimes` is not one of",
            ),
            (
                vec![
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG: `2` is not a ratio",
            ),
            (
                vec![("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER: `zipkin` is not supported",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                "`http/protobuf` is not supported",
            ),
        ];
        for (pairs, expected) in cases {
            let error = settings(&pairs).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
