//! OTLP trace export: when an endpoint is configured, every RPC's span (the gateway's, each
//! backend's, in one process or apart) goes to an OpenTelemetry collector over gRPC, parented
//! across processes by the W3C `traceparent` the gateway and the services pass on
//! ([`postern_common::trace`]).
//!
//! The SDK's batch processor exports from a thread of its own, which has no Tokio reactor for
//! the tonic channel; [`OnRuntime`] runs each export on the server's runtime instead. The
//! standard `OTEL_*` variables apply where no flag says otherwise: `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS` (a collector's credentials),
//! `OTEL_TRACES_SAMPLER`, and `OTEL_BSP_SCHEDULE_DELAY` (how long spans wait to be batched,
//! 5 s by default).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

/// How long the last spans may take to reach the collector when the process stops.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OtlpSettings {
    /// An OpenTelemetry collector's OTLP/gRPC endpoint (`http://collector:4317`, or `https://…`
    /// verified against the web's root CAs and `--otlp-ca-cert`): every RPC's span is exported
    /// there, the gateway's and the services' in one trace. Unset: no export (the standard
    /// OTEL_EXPORTER_OTLP_ENDPOINT also turns it on).
    #[arg(long, env = "POSTERN_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// A PEM file of CA certificates the collector's certificate may chain to, for an
    /// `https://` endpoint under a private CA.
    #[arg(long, env = "POSTERN_OTLP_CA_CERT", global = true)]
    pub otlp_ca_cert: Option<std::path::PathBuf>,
}

impl OtlpSettings {
    /// The endpoint, from the flag or else the standard variable.
    fn endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty())
    }
}

/// The export, running: dropped spans are flushed by [`Export::shutdown`].
#[derive(Debug)]
pub struct Export {
    provider: SdkTracerProvider,
    endpoint: String,
}

/// A tracing layer exporting spans as `service` (the `service.name` unless
/// `OTEL_SERVICE_NAME` says otherwise), and the export to shut down at the end; `None` when
/// no endpoint is configured. Must be called on the server's Tokio runtime.
pub fn layer<S>(
    settings: &OtlpSettings,
    service: &str,
) -> anyhow::Result<Option<(impl tracing_subscriber::Layer<S>, Export)>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let Some(endpoint) = settings.endpoint() else { return Ok(None) };
    let url = url::Url::parse(&endpoint)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .with_context(|| {
            format!("the OTLP endpoint {endpoint:?} is not an http:// or https:// URL (http://collector:4317)")
        })?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone());
    if url.scheme() == "https" {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
        if let Some(path) = &settings.otlp_ca_cert {
            let pem = std::fs::read(path).with_context(|| format!("reading --otlp-ca-cert {}", path.display()))?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        builder = builder.with_tls_config(tls);
    }
    let exporter = builder.build().with_context(|| format!("the OTLP exporter for {endpoint}"))?;
    let mut resource =
        Resource::builder().with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(OnRuntime::new(exporter, endpoint.clone()))
        .with_resource(resource.build())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("postern"));
    Ok(Some((layer, Export { provider, endpoint })))
}

impl Export {
    /// Sends the spans still waiting, for at most [`FLUSH_TIMEOUT`], and stops the export.
    /// Blocks: call it off the runtime's workers (`spawn_blocking`).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(endpoint = %self.endpoint, error = %e, "the last spans may not have reached the collector");
        }
    }
}

/// An exporter whose exports run on a Tokio runtime (the one it was made on), whatever
/// thread asks for them; a failure is logged once, not once per batch, until an export
/// succeeds again.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
    endpoint: String,
    failing: Arc<AtomicBool>,
}

impl OnRuntime {
    fn new(inner: opentelemetry_otlp::SpanExporter, endpoint: String) -> Self {
        Self {
            inner: Arc::new(inner),
            runtime: tokio::runtime::Handle::current(),
            endpoint,
            failing: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl SpanExporter for OnRuntime {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let (inner, failing, endpoint) = (self.inner.clone(), self.failing.clone(), self.endpoint.clone());
        let spans = batch.len();
        let task = self.runtime.spawn(async move {
            let result = inner.export(batch).await;
            match &result {
                Ok(()) => {
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(%endpoint, "spans reach the collector again");
                    }
                }
                Err(e) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%endpoint, error = %e, spans, "spans could not be exported; dropping them until the collector answers");
                    }
                }
            }
            result
        });
        async move { task.await.unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string()))) }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once, while the provider is built, before any export shares the exporter.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
