//! Logs and metrics, set up once per process.
//!
//! Logs: `tracing` with the filter from `RUST_LOG` (default `info`), JSON
//! lines when `FLASHSALE_LOG_FORMAT=json`. Nothing is logged per rejected
//! request; rejections are counted instead.
//!
//! Spans: every request has one carrying its `request_id` (see
//! `http::request_id` and `app`); with the `otel` cargo feature and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans that pass the filter are
//! also exported over OTLP/HTTP, and [`shutdown_tracing`] flushes them.
//!
//! Metrics: the `metrics` facade with the Prometheus exporter; names carry
//! units and labels stay low-cardinality. Each part registers its own
//! handles (the engine's are in `engine::metrics`); this module only
//! installs the recorder, which must happen before any handle is taken.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global tracing subscriber (idempotent).
pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let json = std::env::var("FLASHSALE_LOG_FORMAT").is_ok_and(|v| v == "json");
        let registry = tracing_subscriber::registry()
            .with(filter)
            .with(otel::layer());
        let _ = if json {
            registry
                .with(fmt::layer().json().with_target(false))
                .try_init()
        } else {
            // Colours only on a terminal: a log file or a collector gets
            // plain text, and the server skips writing escape codes into
            // every request span's fields.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            registry
                .with(fmt::layer().with_target(false).with_ansi(ansi))
                .try_init()
        };
    });
}

/// Exports the spans not yet sent and stops the exporter (a no-op without
/// the `otel` feature or an endpoint); called once the server has stopped.
pub fn shutdown_tracing() {
    otel::shutdown();
}

#[cfg(feature = "otel")]
mod otel {
    use std::sync::OnceLock;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Subscriber;
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::Layer;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// The OTLP layer when an endpoint is configured (the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`;
    /// the exporter reads them, and `OTEL_EXPORTER_OTLP_HEADERS`, itself),
    /// under `OTEL_SERVICE_NAME` (default `flashsale`). Spans go out in
    /// batches from the SDK's own thread, never from a request.
    pub(super) fn layer<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let configured = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
        if !configured {
            return None;
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => exporter,
            Err(e) => {
                // No subscriber yet to log it to.
                eprintln!("flashsale: OTLP export off: {e}");
                return None;
            }
        };
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "flashsale".to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build();
        let tracer = provider.tracer("flashsale");
        let _ = PROVIDER.set(provider);
        Some(Box::new(tracing_opentelemetry::layer().with_tracer(tracer)))
    }

    pub(super) fn shutdown() {
        if let Some(provider) = PROVIDER.get() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing the OTLP spans failed");
            }
        }
    }
}

#[cfg(not(feature = "otel"))]
mod otel {
    use tracing_subscriber::layer::Identity;

    pub(super) fn layer() -> Option<Identity> {
        None
    }

    pub(super) fn shutdown() {}
}

/// The process-wide Prometheus recorder; installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("flashsale_store_batch_size".into()),
                    &[
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
                    ],
                )
            })
            .expect("static bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests run many apps in
        // one process); the handle still renders this recorder's registry.
        let _ = metrics::set_global_recorder(recorder);
        register_at_zero(&[
            "flashsale_intents_recorded_total",
            "flashsale_intents_shed_total",
            "flashsale_stock_returned_units_total",
            "flashsale_connections_refused_total",
        ]);
        handle
    })
}

/// Registers counters of rare events at zero, so they are exported before
/// the first event: `rate()` and `increase()` then see the first one, and
/// a dashboard or an alert finds the series. Parts that run only in one
/// mode register theirs when they start.
pub fn register_at_zero(counters: &[&'static str]) {
    for &name in counters {
        metrics::counter!(name).increment(0);
    }
}
