//! The one report of every mode: a serializable summary of the run,
//! printed either for people or as a single JSON object for machines
//! (`--json`, what `scripts/bench*.sh` read).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::args::{BenchArgs, Mode};
use crate::checks::Check;
use crate::load::{per_sec, Outcome};

/// Latency percentiles in milliseconds, rounded to two decimals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Reads a histogram of microseconds; all zero when it is empty.
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
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
pub struct Summary {
    /// `purchase`, `healthz`, … (see [`Mode`]).
    pub mode: &'static str,
    /// The server under test, or the database or Redis of a baseline
    /// (without its password).
    pub url: String,
    /// The sale under load.
    pub sale_id: Option<String>,
    /// Names this run's buyers: `bench-<run id>-N`.
    pub run_id: String,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// Simulated buyers.
    pub users: u32,
    /// The sale's stock.
    pub stock: Option<u64>,
    /// Units one buyer may hold.
    pub per_user_limit: Option<u64>,
    /// Units per purchase.
    pub quantity: u64,
    /// Requests sent.
    pub requests: u64,
    /// Seconds from the first request to the last answer.
    pub elapsed_secs: f64,
    /// Requests per second.
    pub throughput_rps: f64,
    /// Orders accepted.
    pub accepted: u64,
    /// Units in them.
    pub accepted_units: u64,
    /// Orders accepted per second.
    pub accepted_per_sec: f64,
    /// Seconds from the start to the last accepted order.
    pub last_accept_secs: Option<f64>,
    /// Latency percentiles, milliseconds.
    pub latency_ms: Latency,
    /// Latency percentiles by outcome key (`201`, `503 overloaded`, …).
    pub latency_by_outcome_ms: BTreeMap<String, Latency>,
    /// The health probes beside the load (`--probe`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<crate::probe::ProbeReport>,
    /// Requests by outcome key (`201`, `409 sold_out`, …).
    pub outcomes: BTreeMap<String, u64>,
    /// The first requests that got no answer, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// CPU microseconds the `--server-pid` processes used during the load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us: Option<u64>,
    /// The same per accepted order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_accept: Option<f64>,
    /// The same per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_request: Option<f64>,
    /// Every verdict.
    pub checks: Vec<Check>,
    /// True when every check held (always true without checks).
    pub ok: bool,
}

impl Summary {
    /// Gathers the figures of a run of `args`; the sale fields start empty.
    pub fn new(args: &BenchArgs, run_id: &str, outcome: &Outcome, checks: Vec<Check>) -> Self {
        Self {
            mode: args.mode.as_str(),
            url: args.url.to_string(),
            sale_id: None,
            run_id: run_id.to_owned(),
            concurrency: args.concurrency,
            users: args.users,
            stock: None,
            per_user_limit: None,
            quantity: args.quantity,
            requests: outcome.requests,
            elapsed_secs: round3(outcome.elapsed.as_secs_f64()),
            throughput_rps: round2(per_sec(outcome.requests, outcome.elapsed)),
            accepted: outcome.orders,
            accepted_units: outcome.units,
            accepted_per_sec: round2(per_sec(outcome.orders, outcome.elapsed)),
            last_accept_secs: outcome.last_accept.map(|d| round3(d.as_secs_f64())),
            latency_ms: Latency::from_micros(&outcome.latency),
            latency_by_outcome_ms: outcome
                .latency_by_outcome
                .iter()
                .map(|(key, h)| (key.clone(), Latency::from_micros(h)))
                .collect(),
            probes: Vec::new(),
            outcomes: outcome.outcomes.clone(),
            failures: outcome.failures.first.clone(),
            server_cpu_us: None,
            server_cpu_us_per_accept: None,
            server_cpu_us_per_request: None,
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// The report for people.
    pub fn render(&self) -> String {
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
        if self.mode != Mode::Healthz.as_str() && self.mode != Mode::SalePage.as_str() {
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
            "{:<width$}  {:>12}  {:>7}  {:>9}  {:>9}",
            "outcome", "count", "share", "p50 ms", "p99 ms"
        );
        for (key, &count) in outcomes {
            let share = if self.requests == 0 {
                0.0
            } else {
                100.0 * count as f64 / self.requests as f64
            };
            let l = self
                .latency_by_outcome_ms
                .get(key)
                .copied()
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{key:<width$}  {count:>12}  {share:>6.2}%  {:>9.2}  {:>9.2}",
                l.p50, l.p99
            );
        }
        if let Some(us) = self.server_cpu_us {
            let per = |x: Option<f64>| x.map_or_else(|| "–".to_owned(), |x| format!("{x:.1} µs"));
            let _ = writeln!(
                out,
                "\nserver CPU   {:.3} s (user + system): {} per accepted order, {} per request",
                us as f64 / 1e6,
                per(self.server_cpu_us_per_accept),
                per(self.server_cpu_us_per_request)
            );
        }
        for p in &self.probes {
            let l = p.latency_ms;
            let _ = writeln!(
                out,
                "\nprobe        {}: {} sent, {} ok, {} failed, {} slower than 250 ms; \
                 ms p50 {:.2}  p99 {:.2}  max {:.2}",
                p.url, p.sent, p.ok, p.failed, p.slower_than_250ms, l.p50, l.p99, l.max
            );
        }

        if !self.failures.is_empty() {
            let _ = writeln!(out, "\nfirst requests without an answer");
            for failure in &self.failures {
                let _ = writeln!(out, "  {failure}");
            }
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
            latency_by_outcome_ms: BTreeMap::new(),
            probes: Vec::new(),
            outcomes: BTreeMap::from([("201".to_owned(), 10), ("409 sold_out".to_owned(), 190)]),
            failures: Vec::new(),
            server_cpu_us: None,
            server_cpu_us_per_accept: None,
            server_cpu_us_per_request: None,
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
    fn a_baseline_report_shows_its_sales_and_failures() {
        let mut s = summary(vec![Check {
            name: "store_agrees",
            ok: true,
            detail: "database sold 10".to_owned(),
        }]);
        s.mode = "pg-row-lock";
        s.sale_id = None;
        s.failures = vec!["connection refused".to_owned()];
        let text = s.render();
        assert!(
            text.contains("flashsale bench: pg-row-lock against"),
            "{text}"
        );
        assert!(text.contains("accepted     10 orders"), "{text}");
        assert!(!text.contains("buyers (bench-"), "{text}");
        assert!(
            text.contains("first requests without an answer\n  connection refused"),
            "{text}"
        );
        let value = serde_json::to_value(&s).unwrap();
        assert_eq!(value["failures"][0], "connection refused");
        let quiet = serde_json::to_value(summary(Vec::new())).unwrap();
        assert!(quiet.get("failures").is_none(), "{quiet}");
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
        assert!(
            value.get("server_cpu_us").is_none(),
            "only with --server-pid"
        );
    }

    #[test]
    fn the_servers_cpu_is_reported() {
        let mut s = summary(Vec::new());
        s.server_cpu_us = Some(150_000);
        s.server_cpu_us_per_accept = Some(15_000.0);
        s.server_cpu_us_per_request = Some(750.0);
        let text = s.render();
        assert!(
            text.contains(
                "server CPU   0.150 s (user + system): 15000.0 µs per accepted order, 750.0 µs per request"
            ),
            "{text}"
        );
        let value = serde_json::to_value(&s).unwrap();
        assert_eq!(value["server_cpu_us_per_accept"], 15_000.0);
        assert_eq!(value["server_cpu_us_per_request"], 750.0);
    }

    #[test]
    fn rounding() {
        assert!((round2(1.23456) - 1.23).abs() < f64::EPSILON);
        assert!((round3(1.23456) - 1.235).abs() < f64::EPSILON);
    }
}
