//! The load itself: worker tasks sharing one HTTP client and one request
//! counter, each keeping its own tallies that are merged at the end.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

use super::checks::{json_id, Accepted};
use super::{user_name, Mode, MAX_SAMPLES};

/// Largest latency the histograms track, in microseconds (one hour); longer
/// ones are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Outcome key of a request that got no complete answer.
const TRANSPORT_ERROR: &str = "transport_error";
/// Outcome key of a request that hit `--timeout`.
const TIMEOUT: &str = "timeout";
/// Outcome key of the answer that proves the stock ran out.
pub(crate) const SOLD_OUT: &str = "409 sold_out";

/// When the load stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// After this many requests in total.
    Requests(u64),
    /// Once this long has passed; requests in flight then still finish.
    Deadline(Duration),
}

impl Stop {
    /// Human description for the start-up line.
    pub(crate) fn describe(self) -> String {
        match self {
            Self::Requests(n) => format!("{n} requests"),
            Self::Deadline(d) => format!("for {:.1} s", d.as_secs_f64()),
        }
    }
}

/// Everything the workers need, shared read-only between them.
pub(crate) struct Plan {
    /// What each request does.
    pub mode: Mode,
    /// The URL every request goes to.
    pub target: Url,
    /// JSON body of each purchase (`None`: no body, one unit).
    pub body: Option<String>,
    /// `Authorization` values by user number (purchase mode only).
    pub tokens: Arc<[HeaderValue]>,
    /// Number of simulated users, served round-robin.
    pub users: u32,
    /// Units asked for by each purchase.
    pub quantity: u64,
    /// The sale under load (empty for `healthz`).
    pub sale_id: String,
    /// Names the simulated users (`bench-<run id>-<n>`).
    pub run_id: String,
    /// When to stop.
    pub stop: Stop,
    /// Worker tasks to run.
    pub concurrency: usize,
}

/// What the load observed, merged over all workers.
pub(crate) struct Outcome {
    /// From the first request sent to the last answer received.
    pub elapsed: Duration,
    /// Requests sent (answered or not).
    pub requests: u64,
    /// Latency of every answered request, in microseconds.
    pub latency: Histogram<u64>,
    /// Request count by outcome key (see [`outcome_key`]).
    pub outcomes: BTreeMap<String, u64>,
    /// Every `201` whose body named its order.
    pub accepted: Vec<Accepted>,
    /// `201` answers whose body did not name an order.
    pub unparsed_orders: u64,
    /// Units those unnamed orders asked for.
    pub unparsed_units: u64,
    /// `201` answers that disagreed with the request (wrong user, sale, …).
    pub anomalies: u64,
    /// The first few of those disagreements.
    pub anomaly_samples: Vec<String>,
    /// Requests whose fate is unknown (no answer, or a server error other
    /// than `503 overloaded`): each may or may not have bought.
    pub ambiguous: u64,
    /// Time from the start to the last `201` answer.
    pub last_accept: Option<Duration>,
}

impl Outcome {
    /// True when some purchase was refused because the stock ran out.
    pub(crate) fn sold_out_seen(&self) -> bool {
        self.outcomes.get(SOLD_OUT).is_some_and(|&n| n > 0)
    }

    /// Orders accepted (`201` answers).
    pub(crate) fn accepted_orders(&self) -> u64 {
        u64::try_from(self.accepted.len())
            .unwrap_or(u64::MAX)
            .saturating_add(self.unparsed_orders)
    }

    /// Units in the accepted orders.
    pub(crate) fn accepted_units(&self) -> u64 {
        self.accepted
            .iter()
            .map(|a| a.quantity)
            .fold(self.unparsed_units, u64::saturating_add)
    }
}

/// One worker's tallies.
struct Tally {
    latency: Histogram<u64>,
    outcomes: HashMap<String, u64>,
    accepted: Vec<Accepted>,
    unparsed_orders: u64,
    unparsed_units: u64,
    anomalies: u64,
    anomaly_samples: Vec<String>,
    ambiguous: u64,
    last_accept: Option<Duration>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            outcomes: HashMap::new(),
            accepted: Vec::new(),
            unparsed_orders: 0,
            unparsed_units: 0,
            anomalies: 0,
            anomaly_samples: Vec::new(),
            ambiguous: 0,
            last_accept: None,
        })
    }

    fn count(&mut self, key: String) {
        *self.outcomes.entry(key).or_insert(0) += 1;
    }

    fn anomaly(&mut self, problem: String) {
        self.anomalies += 1;
        if self.anomaly_samples.len() < MAX_SAMPLES {
            self.anomaly_samples.push(problem);
        }
    }

    /// Records a `201` answer to user `user`'s purchase.
    fn accept(&mut self, plan: &Plan, user: u32, body: &[u8], at: Duration) {
        let owner = user_name(&plan.run_id, user);
        let claimed = read_created(body, &owner, &plan.sale_id, plan.quantity);
        match claimed.order_id {
            Some(order_id) => self.accepted.push(Accepted {
                order_id,
                user,
                quantity: claimed.quantity,
            }),
            None => {
                self.unparsed_orders += 1;
                self.unparsed_units += claimed.quantity;
            }
        }
        if let Some(problem) = claimed.problem {
            self.anomaly(format!("201 to {owner}: {problem}"));
        }
        self.last_accept = self.last_accept.max(Some(at));
    }
}

/// Runs the load described by `plan` and merges what the workers saw.
pub(crate) async fn drive(
    client: &Client,
    plan: Plan,
    progress: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();

    let workers: Vec<_> = (0..plan.concurrency)
        .map(|_| {
            let (client, plan, next, done) = (
                client.clone(),
                Arc::clone(&plan),
                Arc::clone(&next),
                Arc::clone(&done),
            );
            tokio::spawn(async move { worker(&client, &plan, &next, &done, start).await })
        })
        .collect();

    // Progress comes from the shared counter, so workers never touch the bar.
    let ticker = {
        let (bar, done, stop) = (progress.clone(), Arc::clone(&done), plan.stop);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                let sent = done.load(Ordering::Relaxed);
                let elapsed = start.elapsed();
                bar.set_position(match stop {
                    Stop::Requests(_) => sent,
                    Stop::Deadline(_) => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                });
                bar.set_message(format!(
                    "{sent} requests, {:.0} req/s",
                    per_sec(sent, elapsed)
                ));
            }
        })
    };

    let mut tallies = Vec::with_capacity(workers.len());
    for joined in futures::future::join_all(workers).await {
        tallies.push(joined.context("a bench worker panicked")??);
    }
    let elapsed = start.elapsed();
    ticker.abort();
    progress.finish_and_clear();

    let mut merged = Outcome {
        elapsed,
        requests: done.load(Ordering::Relaxed),
        latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
        outcomes: BTreeMap::new(),
        accepted: Vec::with_capacity(tallies.iter().map(|t| t.accepted.len()).sum()),
        unparsed_orders: 0,
        unparsed_units: 0,
        anomalies: 0,
        anomaly_samples: Vec::new(),
        ambiguous: 0,
        last_accept: None,
    };
    for tally in tallies {
        merged.latency.add(&tally.latency)?;
        for (key, n) in tally.outcomes {
            *merged.outcomes.entry(key).or_insert(0) += n;
        }
        merged.accepted.extend(tally.accepted);
        merged.unparsed_orders += tally.unparsed_orders;
        merged.unparsed_units += tally.unparsed_units;
        merged.anomalies += tally.anomalies;
        let room = MAX_SAMPLES.saturating_sub(merged.anomaly_samples.len());
        merged
            .anomaly_samples
            .extend(tally.anomaly_samples.into_iter().take(room));
        merged.ambiguous += tally.ambiguous;
        merged.last_accept = merged.last_accept.max(tally.last_accept);
    }
    Ok(merged)
}

/// One connection's loop: take the next request number, send, record, until
/// the plan says stop.
async fn worker(
    client: &Client,
    plan: &Plan,
    next: &AtomicU64,
    done: &AtomicU64,
    start: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let users = u64::from(plan.users);
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        match plan.stop {
            Stop::Requests(total) if index >= total => break,
            Stop::Deadline(limit) if start.elapsed() >= limit => break,
            _ => {}
        }
        let user = u32::try_from(index % users)?;
        let request = match plan.mode {
            Mode::Purchase => {
                let token = plan
                    .tokens
                    .get(usize::try_from(user)?)
                    .context("no token for a simulated user")?;
                let request = client
                    .post(plan.target.clone())
                    .header(AUTHORIZATION, token.clone());
                match &plan.body {
                    Some(body) => request
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone()),
                    None => request,
                }
            }
            Mode::Healthz
            | Mode::SalePage
            | Mode::PgRowLock
            | Mode::RedisEvalsha
            | Mode::RedisCoalesced => client.get(plan.target.clone()),
        };

        let sent = Instant::now();
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        let took = sent.elapsed();
        done.fetch_add(1, Ordering::Relaxed);

        match answer {
            Ok((status, body)) => {
                tally
                    .latency
                    .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                let key = outcome_key(status.as_u16(), &body);
                if plan.mode == Mode::Purchase {
                    if status == StatusCode::CREATED {
                        tally.accept(plan, user, &body, start.elapsed());
                    } else if is_ambiguous(status, &key) {
                        tally.ambiguous += 1;
                    }
                }
                tally.count(key);
            }
            Err(e) => {
                tally.ambiguous += 1;
                tally.count(transport_key(&e).to_owned());
            }
        }
    }
    Ok(tally)
}

/// The error envelope every non-2xx answer carries.
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
}

/// Keys an answer for the outcome table: the status alone for a success
/// (`201`), the status and the contract's error code otherwise
/// (`409 sold_out`), or the status alone when the body has no code.
pub(crate) fn outcome_key(status: u16, body: &[u8]) -> String {
    if (200..300).contains(&status) {
        return status.to_string();
    }
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) if !envelope.error.code.is_empty() => {
            format!("{status} {}", envelope.error.code)
        }
        _ => status.to_string(),
    }
}

/// Keys a request that got no complete answer.
fn transport_key(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        TIMEOUT
    } else {
        TRANSPORT_ERROR
    }
}

/// True when a purchase answered `status` may still have bought: server
/// errors, except the explicit load shedding of `503 overloaded`.
fn is_ambiguous(status: StatusCode, key: &str) -> bool {
    status.is_server_error() && key != "503 overloaded"
}

/// What a `201` answer to a purchase says.
#[derive(Debug, PartialEq, Eq)]
struct Created {
    /// The order id, when the body names one.
    order_id: Option<String>,
    /// Units bought: the body's `quantity`, or the request's when absent.
    quantity: u64,
    /// How the answer disagrees with the request, if it does.
    problem: Option<String>,
}

/// Reads a `201` purchase answer and compares it with the request: `owner`
/// bought `quantity` units in `sale_id`.
fn read_created(body: &[u8], owner: &str, sale_id: &str, quantity: u64) -> Created {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Created {
            order_id: None,
            quantity,
            problem: Some("the body is not JSON".to_owned()),
        };
    };
    let order_id = value.get("order_id").and_then(json_id);
    let bought = value.get("quantity").and_then(Value::as_u64);
    let mut problems = Vec::new();
    if order_id.is_none() {
        problems.push("no order_id".to_owned());
    }
    if let Some(bought) = bought.filter(|&b| b != quantity) {
        problems.push(format!("quantity {bought}, asked {quantity}"));
    }
    match value.get("user_id").and_then(Value::as_str) {
        Some(user) if user == owner => {}
        other => problems.push(format!("user_id {other:?}")),
    }
    match value.get("sale_id").and_then(json_id) {
        Some(sale) if sale == sale_id => {}
        other => problems.push(format!("sale_id {other:?}, expected {sale_id}")),
    }
    Created {
        order_id,
        quantity: bought.unwrap_or(quantity),
        problem: (!problems.is_empty()).then(|| problems.join(", ")),
    }
}

/// `n` events over `elapsed`, per second (0 for no time at all).
pub(crate) fn per_sec(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_keyed_by_status_and_code() {
        let err = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"x"}}}}"#);
        assert_eq!(outcome_key(201, br#"{"order_id":"o1"}"#), "201");
        assert_eq!(outcome_key(200, b"ok"), "200");
        assert_eq!(outcome_key(409, err("sold_out").as_bytes()), SOLD_OUT);
        assert_eq!(
            outcome_key(409, err("limit_reached").as_bytes()),
            "409 limit_reached"
        );
        assert_eq!(
            outcome_key(429, err("rate_limited").as_bytes()),
            "429 rate_limited"
        );
        assert_eq!(
            outcome_key(503, err("overloaded").as_bytes()),
            "503 overloaded"
        );
        assert_eq!(outcome_key(500, b"Internal Server Error"), "500");
        assert_eq!(outcome_key(502, b""), "502");
        assert_eq!(outcome_key(400, err("").as_bytes()), "400");
    }

    #[test]
    fn ambiguity_of_answers() {
        assert!(is_ambiguous(StatusCode::INTERNAL_SERVER_ERROR, "500"));
        assert!(is_ambiguous(StatusCode::SERVICE_UNAVAILABLE, "503"));
        assert!(!is_ambiguous(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 overloaded"
        ));
        assert!(!is_ambiguous(StatusCode::CONFLICT, SOLD_OUT));
        assert!(!is_ambiguous(
            StatusCode::TOO_MANY_REQUESTS,
            "429 rate_limited"
        ));
    }

    #[test]
    fn well_formed_created_answer() {
        let body = br#"{"order_id":"o-1","sale_id":"s1","user_id":"bench-x-3","quantity":2,"status":"pending_payment"}"#;
        assert_eq!(
            read_created(body, "bench-x-3", "s1", 2),
            Created {
                order_id: Some("o-1".to_owned()),
                quantity: 2,
                problem: None
            }
        );
        // Numeric ids are accepted as their decimal text.
        let numeric = br#"{"order_id":17,"sale_id":4,"user_id":"u","quantity":1}"#;
        let created = read_created(numeric, "u", "4", 1);
        assert_eq!(created.order_id.as_deref(), Some("17"));
        assert_eq!(created.problem, None);
    }

    #[test]
    fn created_answers_that_disagree() {
        let body = br#"{"order_id":"o-1","sale_id":"s2","user_id":"someone","quantity":3}"#;
        let created = read_created(body, "bench-x-3", "s1", 1);
        assert_eq!(created.order_id.as_deref(), Some("o-1"));
        assert_eq!(created.quantity, 3, "units count as the server says");
        let problem = created.problem.unwrap();
        assert!(problem.contains("quantity 3"), "{problem}");
        assert!(problem.contains("user_id"), "{problem}");
        assert!(problem.contains("sale_id"), "{problem}");

        let garbage = read_created(b"<html>", "u", "s", 2);
        assert_eq!((garbage.order_id, garbage.quantity), (None, 2));
        assert!(garbage.problem.is_some());

        let nameless = read_created(br#"{"sale_id":"s","user_id":"u"}"#, "u", "s", 1);
        assert_eq!(nameless.order_id, None);
        assert_eq!(nameless.problem.as_deref(), Some("no order_id"));
    }

    #[test]
    fn rates() {
        assert!((per_sec(500, Duration::from_millis(250)) - 2000.0).abs() < 1e-9);
        assert!(per_sec(10, Duration::ZERO).abs() < f64::EPSILON);
    }
}
