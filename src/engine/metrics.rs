//! The engine's metrics: pre-registered handles for the purchase hot path,
//! so recording is a few atomic adds.
//!
//! `flashsale_purchase_total{outcome}` has one label value per
//! [`Rejection`] code plus `accepted`, `not_found` and `error`;
//! `flashsale_purchase_duration_seconds` is the latency of every attempt.

use std::time::Duration;

use metrics::{Counter, Histogram};

use super::{EngineError, PurchaseOutcome};
use crate::domain::Rejection;

/// Handles of the purchase metrics.
pub struct PurchaseMetrics {
    accepted: Counter,
    rejected: [Counter; Rejection::ALL.len()],
    not_found: Counter,
    error: Counter,
    duration: Histogram,
}

impl Default for PurchaseMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PurchaseMetrics {
    /// Registers the handles with the installed recorder (install it
    /// first: handles taken before that stay silent).
    pub fn new() -> Self {
        let outcome =
            |o: &'static str| metrics::counter!("flashsale_purchase_total", "outcome" => o);
        Self {
            accepted: outcome("accepted"),
            rejected: Rejection::ALL.map(|r| outcome(r.code())),
            not_found: outcome("not_found"),
            error: outcome("error"),
            duration: metrics::histogram!("flashsale_purchase_duration_seconds"),
        }
    }

    /// Counts one purchase attempt and its latency.
    pub fn observe(&self, result: &Result<PurchaseOutcome, EngineError>, took: Duration) {
        match result {
            Ok(PurchaseOutcome::Accepted { .. }) => &self.accepted,
            Ok(PurchaseOutcome::Rejected(r)) => &self.rejected[r.reason.index()],
            Err(EngineError::NotFound) => &self.not_found,
            Err(_) => &self.error,
        }
        .increment(1);
        self.duration.record(took.as_secs_f64());
    }
}
