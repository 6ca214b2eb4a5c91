//! Logs and metrics, set up once per process.
//!
//! Logs: `tracing` with the filter from `RUST_LOG` (default `info`), JSON
//! lines when `FLASHSALE_LOG_FORMAT=json`. Nothing is logged per rejected
//! request; rejections are counted instead.
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
        let registry = tracing_subscriber::registry().with(filter);
        let _ = if json {
            registry
                .with(fmt::layer().json().with_target(false))
                .try_init()
        } else {
            registry.with(fmt::layer().with_target(false)).try_init()
        };
    });
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
