//! The run's summary: one serializable value, printed either as a report
//! for people or as a single JSON object for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::checks::Check;
use super::load::{per_sec, Outcome};
use super::{BenchArgs, Mode};

/// Latency percentiles in milliseconds, rounded to two decimals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Reads a histogram of microseconds; all zero when it is empty.
    pub(crate) fn from_micros(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| round2(us as f64 / 1000.0);
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: round2(histogram.mean() / 1000.0),
        }
    }
}

/// The JSON summary of a run (`--json`), also rendered as the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub mode: &'static str,
    pub url: String,
    pub sale_id: Option<String>,
    pub run_id: String,
    pub concurrency: u32,
    pub users: u32,
    pub stock: Option<u64>,
    pub per_user_limit: Option<u64>,
    pub quantity: u64,
    pub requests: u64,
    pub elapsed_secs: f64,
    pub throughput_rps: f64,
    pub accepted: u64,
    pub accepted_units: u64,
    pub accepted_per_sec: f64,
    /// Seconds from the start to the last accepted order.
    pub last_accept_secs: Option<f64>,
    pub latency_ms: Latency,
    pub outcomes: BTreeMap<String, u64>,
    pub checks: Vec<Check>,
    /// True when every check held (always true without checks).
    pub ok: bool,
}

impl Summary {
    /// Gathers the figures of a run; `sale` is `(id, stock, per_user_limit)`.
    pub(crate) fn new(
        args: &BenchArgs,
        sale: Option<(&str, u64, u64)>,
        run_id: &str,
        outcome: &Outcome,
        checks: Vec<Check>,
    ) -> Self {
        let accepted = outcome.accepted_orders();
        Self {
            mode: args.mode.as_str(),
            url: args.url.to_string(),
            sale_id: sale.map(|(id, _, _)| id.to_owned()),
            run_id: run_id.to_owned(),
            concurrency: args.concurrency,
            users: args.users,
            stock: sale.map(|(_, stock, _)| stock),
            per_user_limit: sale.map(|(_, _, limit)| limit),
            quantity: args.quantity,
            requests: outcome.requests,
            elapsed_secs: round3(outcome.elapsed.as_secs_f64()),
            throughput_rps: round2(per_sec(outcome.requests, outcome.elapsed)),
            accepted,
            accepted_units: outcome.accepted_units(),
            accepted_per_sec: round2(per_sec(accepted, outcome.elapsed)),
            last_accept_secs: outcome.last_accept.map(|d| round3(d.as_secs_f64())),
            latency_ms: Latency::from_micros(&outcome.latency),
            outcomes: outcome.outcomes.clone(),
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// The report for people.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored.
        let _ = writeln!(out, "\nflashsale bench: {} against {}", self.mode, self.url);
        if let (Some(id), Some(stock), Some(limit)) =
            (&self.sale_id, self.stock, self.per_user_limit)
        {
            let _ = writeln!(out, "  sale {id}: stock {stock}, limit {limit} per user");
        }
        if self.mode == Mode::Purchase.as_str() {
            let _ = writeln!(
                out,
                "  {} buyers (bench-{}-N), {} units per purchase",
                self.users, self.run_id, self.quantity
            );
        }
        let _ = writeln!(out, "  {} connections\n", self.concurrency);

        let _ = writeln!(
            out,
            "requests     {} in {:.2} s = {:.1} req/s",
            self.requests, self.elapsed_secs, self.throughput_rps
        );
        if self.mode == Mode::Purchase.as_str() {
            let _ = write!(
                out,
                "accepted     {} orders, {} units ({:.1} orders/s",
                self.accepted, self.accepted_units, self.accepted_per_sec
            );
            if let Some(last) = self.last_accept_secs {
                let _ = write!(out, "; the last at {last:.3} s");
            }
            let _ = writeln!(out, ")");
        }
        let l = self.latency_ms;
        let _ = writeln!(
            out,
            "latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}\n",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );

        let mut outcomes: Vec<(&String, &u64)> = self.outcomes.iter().collect();
        outcomes.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let width = outcomes
            .iter()
            .map(|(k, _)| k.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let _ = writeln!(
            out,
            "{:<width$}  {:>12}  {:>7}",
            "outcome", "count", "share"
        );
        for (key, &count) in outcomes {
            let share = if self.requests == 0 {
                0.0
            } else {
                100.0 * count as f64 / self.requests as f64
            };
            let _ = writeln!(out, "{key:<width$}  {count:>12}  {share:>6.2}%");
        }

        if self.checks.is_empty() {
            let _ = writeln!(out, "\nno invariant checks in this run");
        } else {
            let _ = writeln!(out, "\nchecks");
            for check in &self.checks {
                let verdict = if check.ok { "PASS" } else { "FAIL" };
                let _ = writeln!(out, "  {verdict}  {}: {}", check.name, check.detail);
            }
            let failed = self.checks.iter().filter(|c| !c.ok).count();
            if failed == 0 {
                let _ = writeln!(out, "\nPASS: all {} checks held", self.checks.len());
            } else {
                let _ = writeln!(
                    out,
                    "\nFAIL: {failed} of {} checks failed",
                    self.checks.len()
                );
            }
        }
        out
    }
}

/// Rounds to two decimals.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Rounds to three decimals.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(checks: Vec<Check>) -> Summary {
        Summary {
            mode: "purchase",
            url: "http://127.0.0.1:8080/".to_owned(),
            sale_id: Some("s1".to_owned()),
            run_id: "abcd".to_owned(),
            concurrency: 8,
            users: 100,
            stock: Some(10),
            per_user_limit: Some(1),
            quantity: 1,
            requests: 200,
            elapsed_secs: 2.0,
            throughput_rps: 100.0,
            accepted: 10,
            accepted_units: 10,
            accepted_per_sec: 5.0,
            last_accept_secs: Some(0.5),
            latency_ms: Latency::default(),
            outcomes: BTreeMap::from([("201".to_owned(), 10), ("409 sold_out".to_owned(), 190)]),
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    #[test]
    fn latency_percentiles_in_ms() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in 1..=1000 {
            h.record(us * 10).unwrap();
        }
        let l = Latency::from_micros(&h);
        assert!((l.p50 - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.p99 - 9.9).abs() < 0.01, "{l:?}");
        assert!((l.max - 10.0).abs() < 0.01, "{l:?}");
        let empty = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        assert_eq!(Latency::from_micros(&empty), Latency::default());
    }

    #[test]
    fn report_lists_outcomes_and_verdicts() {
        let checks = vec![
            Check {
                name: "no_oversell",
                ok: true,
                detail: "10 units".to_owned(),
            },
            Check {
                name: "per_user_limit",
                ok: false,
                detail: "user 3 holds 2".to_owned(),
            },
        ];
        let text = summary(checks).render();
        assert!(
            text.contains("sale s1: stock 10, limit 1 per user"),
            "{text}"
        );
        assert!(text.contains("409 sold_out"), "{text}");
        assert!(text.contains("95.00%"), "{text}");
        assert!(text.contains("PASS  no_oversell: 10 units"), "{text}");
        assert!(
            text.contains("FAIL  per_user_limit: user 3 holds 2"),
            "{text}"
        );
        assert!(text.contains("FAIL: 1 of 2 checks failed"), "{text}");
        // The most frequent outcome comes first.
        assert!(text.find("409 sold_out") < text.find("201 "), "{text}");
    }

    #[test]
    fn json_has_the_promised_fields() {
        let value = serde_json::to_value(summary(Vec::new())).unwrap();
        for field in [
            "mode",
            "url",
            "sale_id",
            "concurrency",
            "users",
            "stock",
            "per_user_limit",
            "requests",
            "elapsed_secs",
            "throughput_rps",
            "accepted",
            "accepted_units",
            "accepted_per_sec",
            "latency_ms",
            "outcomes",
            "checks",
            "ok",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        for p in ["p50", "p90", "p99", "max"] {
            assert!(value["latency_ms"].get(p).is_some(), "missing latency {p}");
        }
        assert_eq!(value["outcomes"]["409 sold_out"], 190);
        assert_eq!(value["ok"], true);
    }

    #[test]
    fn rounding() {
        assert!((round2(1.23456) - 1.23).abs() < f64::EPSILON);
        assert!((round3(1.23456) - 1.235).abs() < f64::EPSILON);
    }
}
