//! Logs and traces: `tracing-subscriber` for logs on stderr (text or JSON) and, with the `otlp`
//! feature and `--otlp-endpoint`, span export over OTLP/HTTP that continues the trace Envoy
//! started (W3C `traceparent` in the gRPC metadata).

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Whether spans are exported (OTLP is on); requests make spans only then.
static SPANS_EXPORTED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported, so worth creating per request.
pub fn spans_exported() -> bool {
    SPANS_EXPORTED.load(Ordering::Relaxed)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Keeps span export running; flushes what is buffered when dropped.
#[derive(Debug, Default)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends every finished span now.
    pub fn flush(&self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "cannot flush spans");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            // Errors here have nowhere left to go.
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: logs filtered by `level` (RUST_LOG wins) and, if
/// `otlp_endpoint` is given, span export to `{otlp_endpoint}/v1/traces`.
pub fn init(
    level: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colour only on a terminal: not in files, journald or `kubectl logs`.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // The level filters the logs only: exported spans have their own filter (below), so
    // `--log-level warn` does not silence tracing.
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter));
    match otlp_endpoint {
        None => {
            registry.try_init().map_err(|e| e.to_string())?;
            Ok(Telemetry::default())
        }
        #[cfg(feature = "otlp")]
        Some(endpoint) => {
            let (layer, provider) = otlp::layer(endpoint)?;
            let spans = tracing_subscriber::filter::Targets::new()
                .with_target("tollgate", tracing::Level::INFO);
            registry
                .with(layer.with_filter(spans))
                .try_init()
                .map_err(|e| e.to_string())?;
            SPANS_EXPORTED.store(true, Ordering::Relaxed);
            Ok(Telemetry {
                provider: Some(provider),
            })
        }
        #[cfg(not(feature = "otlp"))]
        Some(_) => Err("--otlp-endpoint needs tollgate built with `--features otlp`".to_owned()),
    }
}

/// Makes `span` a child of the trace context in a request's gRPC metadata, if any.
pub fn continue_trace(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    #[cfg(feature = "otlp")]
    otlp::continue_trace(span, metadata);
    #[cfg(not(feature = "otlp"))]
    let _ = (span, metadata);
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::propagation::Extractor;
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tonic::metadata::{KeyRef, MetadataMap};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    pub fn layer<S>(
        endpoint: &str,
    ) -> Result<(impl tracing_subscriber::Layer<S>, SdkTracerProvider), String>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
            .map_err(|e| format!("cannot export spans to {endpoint}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("tollgate")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tollgate"));
        Ok((layer, provider))
    }

    struct Metadata<'a>(&'a MetadataMap);

    impl Extractor for Metadata<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key)?.to_str().ok()
        }

        fn keys(&self) -> Vec<&str> {
            self.0
                .keys()
                .filter_map(|key| match key {
                    KeyRef::Ascii(key) => Some(key.as_str()),
                    KeyRef::Binary(_) => None,
                })
                .collect()
        }
    }

    pub fn continue_trace(span: &tracing::Span, metadata: &MetadataMap) {
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Metadata(metadata)));
        // Without a valid traceparent the span simply starts a new trace.
        let _ = span.set_parent(parent);
    }
}
