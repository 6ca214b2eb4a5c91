//! The engine's metrics: pre-registered handles for the purchase hot path,
//! so recording is a few atomic adds.
//!
//! `flashsale_purchase_total{outcome}` has one label value per
//! [`Rejection`] code plus `accepted`, `not_found` and `error`;
//! `flashsale_purchase_duration_seconds` is the latency of every attempt.
//!
//! Per-sale families (`sale_id` label) are not kept in the recorder, which
//! can never forget a series: [`render_sale_families`] writes them at each
//! scrape from the engine's own counters, for the *active* sales only
//! ([`labelled_sales`]), so a finished sale's series end and the number of
//! series stays bounded however many sales a shop has run.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Histogram};

use super::{EngineError, PurchaseOutcome, SaleRuntime};
use crate::domain::{Rejection, Schedule};

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

/// A sale stays labelled this long after its `ends_at`, so the last values
/// are scraped and a dashboard shows how it ended.
pub const ENDED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Most sales with per-sale series at once (the most recently started win).
pub const MAX_LABELLED_SALES: usize = 100;

/// What the reconciler found for a sale at its last pass (distributed mode).
#[derive(Debug, Default)]
pub struct Reconciled {
    /// When it last ran for this sale, epoch ms; 0: never.
    pub at_ms: AtomicI64,
    /// Redis's sold units − the database's − the outbox's (see the
    /// reconciler).
    pub drift_units: AtomicI64,
    /// Units Redis counts as sold that the database does not hold yet:
    /// accepted, not yet persisted.
    pub lag_units: AtomicU64,
    /// Entries in the sale's outbox (accepted, not yet confirmed by the
    /// broker).
    pub outbox_entries: AtomicU64,
}

/// Whether a sale with window `schedule` gets per-sale series at `now_ms`:
/// until [`ENDED_RETENTION_MS`] after its end, for ever when it has none.
pub fn is_active(schedule: Schedule, now_ms: i64) -> bool {
    schedule
        .ends_at_ms
        .is_none_or(|end| now_ms < end.saturating_add(ENDED_RETENTION_MS))
}

/// The sales that get per-sale series: the active ones, at most
/// [`MAX_LABELLED_SALES`], most recently started first.
pub fn labelled_sales(sales: &[Arc<SaleRuntime>], now_ms: i64) -> Vec<&Arc<SaleRuntime>> {
    let mut active: Vec<_> = sales
        .iter()
        .filter(|rt| is_active(rt.schedule(), now_ms))
        .collect();
    active.sort_by_key(|rt| std::cmp::Reverse((rt.schedule().starts_at_ms, rt.sale.id)));
    active.truncate(MAX_LABELLED_SALES);
    active
}

/// Appends the per-sale families of the labelled sales to `out`, in the
/// Prometheus text format. Written by hand: the recorder cannot drop a
/// series, and these few lines need no exporter.
pub fn render_sale_families(sales: &[Arc<SaleRuntime>], now_ms: i64, out: &mut String) {
    let sales = labelled_sales(sales, now_ms);
    if sales.is_empty() {
        return;
    }
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        out,
        "flashsale_sale_remaining_units",
        "gauge",
        "Units left, per active sale.",
    );
    for rt in &sales {
        let _ = writeln!(
            out,
            "flashsale_sale_remaining_units{{sale_id=\"{}\"}} {}",
            rt.sale.id,
            rt.ledger.remaining()
        );
    }
    family(
        out,
        "flashsale_sale_sold_units",
        "gauge",
        "Units held by orders, per active sale.",
    );
    for rt in &sales {
        let sold = rt.sale.stock.saturating_sub(rt.ledger.remaining());
        let _ = writeln!(
            out,
            "flashsale_sale_sold_units{{sale_id=\"{}\"}} {sold}",
            rt.sale.id
        );
    }
    family(
        out,
        "flashsale_sale_purchases_total",
        "counter",
        "Purchase attempts on this node by answer, per active sale (since start).",
    );
    for rt in &sales {
        let c = &rt.counters;
        let id = rt.sale.id;
        let outcomes = std::iter::once(("accepted", load(&c.accepted)))
            .chain(std::iter::once(("replayed", load(&c.replayed))))
            .chain(
                Rejection::ALL
                    .iter()
                    .map(|r| (r.code(), load(&c.rejected[r.index()]))),
            );
        for (outcome, n) in outcomes {
            let _ = writeln!(
                out,
                "flashsale_sale_purchases_total{{sale_id=\"{id}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    family(
        out,
        "flashsale_sale_orders_persisted",
        "gauge",
        "Orders of the sale in the order store, per active sale.",
    );
    for rt in &sales {
        let n = load(&rt.counters.orders_persisted);
        let _ = writeln!(
            out,
            "flashsale_sale_orders_persisted{{sale_id=\"{}\"}} {n}",
            rt.sale.id
        );
    }
    // Only where a reconciler runs (the distributed mode): on the embedded
    // default an order is answered only after its commit, so there is no lag
    // and no second count to drift from.
    let reconciled: Vec<_> = sales
        .iter()
        .filter(|rt| rt.counters.reconciled.at_ms.load(Ordering::Relaxed) > 0)
        .collect();
    if reconciled.is_empty() {
        return;
    }
    /// A family's name, help text, and its value in the findings.
    type Family = (&'static str, &'static str, fn(&Reconciled) -> i64);
    let gauges: [Family; 3] = [
        (
            "flashsale_stock_drift_units",
            "Redis sold units minus the database's and the outbox's, per active sale.",
            |r| r.drift_units.load(Ordering::Relaxed),
        ),
        (
            "flashsale_writer_lag_units",
            "Units accepted (sold in Redis) and not yet persisted in the database, per active sale.",
            |r| r.lag_units.load(Ordering::Relaxed) as i64,
        ),
        (
            "flashsale_outbox_entries",
            "Accepted orders in the sale's Redis outbox, not yet confirmed by the broker.",
            |r| r.outbox_entries.load(Ordering::Relaxed) as i64,
        ),
    ];
    for (name, help, value) in gauges {
        family(out, name, "gauge", help);
        for rt in &reconciled {
            let v = value(&rt.counters.reconciled);
            let _ = writeln!(out, "{name}{{sale_id=\"{}\"}} {v}", rt.sale.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewSale, Sale};

    fn sale(id: u64, starts_at_ms: i64, ends_at_ms: Option<i64>) -> Arc<SaleRuntime> {
        let body = serde_json::json!({
            "item": "x", "stock": 10, "per_user_limit": 1,
            "starts_at": crate::domain::rfc3339(starts_at_ms),
        });
        let mut sale = Sale::from_new(id, NewSale::parse(&body).unwrap(), 0);
        sale.ends_at_ms = ends_at_ms;
        Arc::new(SaleRuntime::new(sale))
    }

    #[test]
    fn only_active_sales_are_labelled_and_never_more_than_the_cap() {
        let now = 10_000_000_000;
        let sales = vec![
            sale(1, now - 1000, None),
            sale(2, now - 1000, Some(now - ENDED_RETENTION_MS - 1)),
            sale(3, now - 1000, Some(now - ENDED_RETENTION_MS + 1000)),
            sale(4, now + 1000, Some(now + 5000)),
        ];
        let ids: Vec<u64> = labelled_sales(&sales, now)
            .iter()
            .map(|rt| rt.sale.id)
            .collect();
        assert_eq!(
            ids,
            [4, 3, 1],
            "ended long ago: left out; most recent first"
        );

        let many: Vec<_> = (0..MAX_LABELLED_SALES as u64 + 20)
            .map(|i| sale(i, now + i as i64, None))
            .collect();
        let labelled = labelled_sales(&many, now);
        assert_eq!(labelled.len(), MAX_LABELLED_SALES);
        assert_eq!(labelled[0].sale.id, MAX_LABELLED_SALES as u64 + 19);
    }

    #[test]
    fn rendered_families_follow_the_engine_and_the_reconciler() {
        let now = 10_000_000_000;
        let live = sale(7, now - 1000, None);
        live.counters.accepted.store(3, Ordering::Relaxed);
        let gone = sale(8, now - 1000, Some(now - ENDED_RETENTION_MS - 1));
        let mut out = String::new();
        render_sale_families(&[live.clone(), gone], now, &mut out);
        assert!(
            out.contains("flashsale_sale_remaining_units{sale_id=\"7\"} 10"),
            "{out}"
        );
        assert!(
            out.contains(r#"flashsale_sale_purchases_total{sale_id="7",outcome="accepted"} 3"#),
            "{out}"
        );
        assert!(
            !out.contains("sale_id=\"8\""),
            "an ended sale has no series: {out}"
        );
        assert!(
            !out.contains("flashsale_stock_drift_units"),
            "no reconciler yet: {out}"
        );

        live.counters
            .reconciled
            .drift_units
            .store(-2, Ordering::Relaxed);
        live.counters
            .reconciled
            .lag_units
            .store(5, Ordering::Relaxed);
        live.counters.reconciled.at_ms.store(now, Ordering::Relaxed);
        let mut out = String::new();
        render_sale_families(&[live], now, &mut out);
        assert!(
            out.contains("flashsale_stock_drift_units{sale_id=\"7\"} -2"),
            "{out}"
        );
        assert!(
            out.contains("flashsale_writer_lag_units{sale_id=\"7\"} 5"),
            "{out}"
        );
        // Every family is declared once, before its samples.
        let types = out.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(types, 7, "{out}");
    }
}
