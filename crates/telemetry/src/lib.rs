//! Logging and tracing setup shared by every ringfs binary.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default given by the binary). Spans that pass
//! the same filter are also exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set (for example `http://otel-collector:4317`; plaintext only, this build has no TLS).
//! The standard variables apply: `OTEL_SERVICE_NAME` (default: the binary's name),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER[_ARG]`,
//! `OTEL_BSP_*`, and `OTEL_SDK_DISABLED=true` turns export off.
//!
//! Export can never stop or slow a binary down: spans are queued (and dropped when the
//! queue is full) for a background thread, the gRPC client runs on its own small runtime,
//! and an exporter that cannot be built or cannot reach its collector only logs a warning.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter, fmt, EnvFilter, Layer, Registry};

/// Why span export is off or failed. Never fatal: binaries log it and go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0} is not supported, only grpc")]
    UnsupportedProtocol(String),
    #[error("cannot start the exporter runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("span export failed: {0}")]
    Export(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// The variable whose presence turns span export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How long dropping [`Telemetry`] waits for the last spans to be exported. Bounded so a
/// binary whose collector is gone still exits promptly.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Installs the global subscriber, exporting spans if `OTEL_EXPORTER_OTLP_ENDPOINT` is set
/// (service name: the binary's name). Safe to call more than once (later calls do
/// nothing), which keeps tests that start several components in one process simple.
///
/// Export keeps running until the process exits, so spans of its last seconds may be
/// lost; binaries use [`init_with_service`] and keep its guard.
pub fn init(default_filter: &str) {
    std::mem::forget(init_with_service(default_filter, &binary_name()));
}

/// Like [`init`], with `service` as the default `service.name` of exported spans; the
/// returned guard flushes them when dropped, so keep it for the life of `main`.
pub fn init_with_service(default_filter: &str, service: &str) -> Telemetry {
    let (otlp, otlp_error) = match otlp_wanted() {
        Ok(false) => (None, None),
        Ok(true) => match Otlp::start(service) {
            Ok(otlp) => (Some(otlp), None),
            Err(e) => (None, Some(e)),
        },
        Err(e) => (None, Some(e)),
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let installed = Registry::default()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr).with_target(true))
        .with(otlp.as_ref().map(Otlp::layer))
        .try_init()
        .is_ok();
    if !installed {
        // Another subscriber was there first: nothing would reach this exporter.
        return Telemetry { otlp: None };
    }
    if let Some(e) = otlp_error {
        tracing::warn!(error = %e, "OTLP span export is off");
    }
    if let Some(o) = &otlp {
        tracing::info!(service = %o.service, "exporting spans over OTLP");
    }
    Telemetry { otlp }
}

/// Keeps span export running; dropping it exports the spans still queued (waiting at most
/// two seconds) and stops the exporter.
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    otlp: Option<Otlp>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.otlp.is_some()
    }

    /// Exports the queued spans now. Blocks the calling thread until the collector
    /// answered or the attempt failed, at most about five seconds.
    pub fn flush(&self) -> Result<(), Error> {
        match &self.otlp {
            Some(o) => Ok(o.provider.force_flush()?),
            None => Ok(()),
        }
    }
}

/// Whether the environment asks for span export; an error names a setting this build
/// cannot honour.
fn otlp_wanted() -> Result<bool, Error> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if var(OTLP_ENDPOINT_ENV).is_none()
        || var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Ok(false);
    }
    match var("OTEL_EXPORTER_OTLP_PROTOCOL") {
        Some(p) if p != "grpc" => Err(Error::UnsupportedProtocol(p)),
        _ => Ok(true),
    }
}

/// The name of the running executable, the default service name.
fn binary_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "ringfs".to_string())
}

/// A running OTLP pipeline: the SDK's batch processor thread plus the runtime that owns
/// the gRPC channel.
struct Otlp {
    provider: SdkTracerProvider,
    service: String,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Otlp {
    /// Starts exporting to where the `OTEL_*` variables say. The channel connects lazily:
    /// an absent collector is not an error here.
    fn start(default_service: &str) -> Result<Otlp, Error> {
        // The channel's connection task lives on this runtime, not the binary's: export
        // then works from the SDK's plain batch thread, during the binary's runtime
        // shutdown, and under a current-thread runtime, without deadlocking on it.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let built = {
            let _in_runtime = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
        };
        let exporter = match built {
            Ok(exporter) => exporter,
            Err(e) => {
                // Dropping a runtime panics in async code, where binaries call this.
                runtime.shutdown_background();
                return Err(e.into());
            }
        };
        let detected = Resource::builder().build();
        let named_by_env = detected
            .get(&opentelemetry::Key::new("service.name"))
            .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
        let resource = if named_by_env {
            detected
        } else {
            Resource::builder()
                .with_service_name(default_service.to_string())
                .build()
        };
        let service = resource
            .get(&opentelemetry::Key::new("service.name"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(WarnOnFailure {
                inner: exporter,
                failing: AtomicBool::new(false),
            })
            .build();
        Ok(Otlp {
            provider,
            service,
            runtime: Some(runtime),
        })
    }

    /// The layer turning tracing spans into exported spans.
    fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("ringfs"))
            .with_filter(not_export_machinery())
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "spans still queued for OTLP export may be lost");
        }
        if let Some(rt) = self.runtime.take() {
            // Not `drop(rt)`: that panics when called from async code, such as the end of
            // an async `main`.
            rt.shutdown_background();
        }
    }
}

/// Passes everything but the crates the exporter itself runs through: exporting their
/// spans would make every export create more spans to export.
fn not_export_machinery() -> filter::Targets {
    [
        "h2",
        "hyper",
        "hyper_util",
        "tonic",
        "tower",
        "opentelemetry",
        "opentelemetry_sdk",
        "opentelemetry_otlp",
    ]
    .into_iter()
    .fold(
        filter::Targets::new().with_default(tracing::Level::TRACE),
        |targets, krate| targets.with_target(krate, filter::LevelFilter::OFF),
    )
}

/// Logs when export starts failing and when it recovers, not once per batch: an absent
/// collector must not flood the logs.
#[derive(Debug)]
struct WarnOnFailure<E> {
    inner: E,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for WarnOnFailure<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(error = %e, spans, "cannot export spans over OTLP; dropping them until the collector answers");
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("OTLP span export works again");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_exporters_own_crates_are_not_exported() {
        let targets = not_export_machinery();
        for t in [
            "h2::proto::connection",
            "hyper_util::client::legacy",
            "tonic::transport",
            "tower::buffer",
            "opentelemetry_sdk",
        ] {
            assert!(!targets.would_enable(t, &Level::ERROR), "{t}");
        }
        for t in [
            "ringfs_node::raft",
            "ringfs_operator::cluster",
            "kube_runtime",
        ] {
            assert!(targets.would_enable(t, &Level::TRACE), "{t}");
        }
    }
}
