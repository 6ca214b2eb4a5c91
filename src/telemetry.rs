//! Logs and metrics, set up once per process.
//!
//! Logs: `tracing` with the filter from `RUST_LOG` (default `info`), JSON
//! lines when `FLASHSALE_LOG_FORMAT=json`. Nothing is logged per rejected
//! request; rejections are counted instead.
//!
//! Metrics: the `metrics` facade with the Prometheus exporter; names carry
//! units and labels stay low-cardinality. Hot-path handles are registered
//! once ([`PurchaseMetrics`]) so recording is a few atomic adds.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};
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
        handle
    })
}

/// Pre-registered handles for the purchase hot path.
pub struct PurchaseMetrics {
    outcomes: [Counter; 8],
    duration: Histogram,
}

const OUTCOMES: [&str; 8] = [
    "accepted",
    "sold_out",
    "limit_reached",
    "not_started",
    "ended",
    "rate_limited",
    "not_found",
    "error",
];

impl Default for PurchaseMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PurchaseMetrics {
    /// Registers the handles.
    pub fn new() -> Self {
        prometheus();
        Self {
            outcomes: OUTCOMES
                .map(|o| metrics::counter!("flashsale_purchase_total", "outcome" => o)),
            duration: metrics::histogram!("flashsale_purchase_duration_seconds"),
        }
    }

    /// Counts one purchase attempt and its latency.
    pub fn observe(
        &self,
        result: &Result<crate::engine::PurchaseOutcome, crate::engine::EngineError>,
        took: Duration,
    ) {
        let label = match result {
            Ok(o) => o.label(),
            Err(crate::engine::EngineError::NotFound) => "not_found",
            Err(_) => "error",
        };
        let idx = OUTCOMES.iter().position(|o| *o == label).unwrap_or(7);
        self.outcomes[idx].increment(1);
        self.duration.record(took.as_secs_f64());
    }
}
