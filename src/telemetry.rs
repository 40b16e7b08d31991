//! What tenantd tells its operators besides metrics: logs (text or JSON lines, filtered by
//! `TENANTD_LOG`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry traces
//! exported over OTLP/gRPC (docs/operations.md). Every gRPC call is a server span, continued
//! from the caller's W3C `traceparent` when it sends one; every operation a worker drives is
//! a span with one child span per step run. The standard `OTEL_*` variables (service name,
//! resource attributes, batch delays) apply.

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Keeps the trace pipeline alive; dropping it flushes and stops it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("tenantd: flushing traces: {e}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry exporter: {0}")]
pub struct TelemetryError(String);

/// Installs the global subscriber: logs as JSON lines or text, and traces if an OTLP
/// endpoint is configured in the environment.
pub fn init(json: bool) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TENANTD_LOG")
        .unwrap_or_else(|_| "info,sqlx=warn,tower=warn,h2=warn".into());
    let logs = if json {
        // Span fields (operation_id, tenant_id, kind, …) as well as the event's own.
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        // Colour only for a person at a terminal: redirected logs stay plain text.
        use std::io::IsTerminal;
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed()
    };
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    let provider = if endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("tenantd")
            .build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    };
    let traces = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("tenantd")));
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .init();
    Ok(Telemetry { provider })
}

/// A span for one gRPC call, continuing the caller's trace when its headers carry one.
pub fn grpc_span(method: &str, headers: &http::HeaderMap) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!("grpc", otel.name = %method, otel.kind = "server",
        rpc.system = "grpc", rpc.method = %method, rpc.grpc.status_code = tracing::field::Empty);
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
    span
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
