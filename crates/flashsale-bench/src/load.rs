//! The one load loop: `concurrency` workers pull request numbers from one
//! shared counter, ask an [`Action`] to perform each, and keep their own
//! tallies, merged into an [`Outcome`] at the end.
//!
//! The loop is closed: a worker waits for its answer before it sends the
//! next request, so latency does not correct for coordinated omission and
//! throughput is what `concurrency` connections achieve. What a request
//! does is the action's business: an HTTP request to a Flashsale server
//! ([`Http`]) or a baseline's purchase straight on a database or Redis.
//!
//! When the plan names a sale, every answer is judged as a purchase in it:
//! a `201` must describe the order that was asked for (buyer, sale,
//! quantity, `pending_payment`) and is kept as an [`Accepted`] order; every
//! non-2xx answer must carry the contract's error body; a request without a
//! definite answer is *ambiguous* (it may have bought). The invariant
//! checks of [`crate::checks`] read this evidence.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, Url};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::buyers::Buyers;
use crate::wire::{self, Wire};

/// Largest latency the histograms track, in microseconds (one hour); longer
/// ones are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Failure details kept per kind; the rest are only counted.
pub const MAX_SAMPLES: usize = 5;
/// Outcome key of a request that got no complete answer.
pub const TRANSPORT_ERROR: &str = "transport_error";
/// Outcome key of a request that ran out of time.
pub const TIMEOUT: &str = "timeout";
/// Outcome key of the answer that proves the stock ran out.
pub const SOLD_OUT: &str = "409 sold_out";

/// When a round-robin load stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many requests in total.
    Requests(u64),
    /// Once this long has passed; requests in flight then still finish.
    Deadline(Duration),
}

impl Stop {
    /// Human description for the start-up line.
    pub fn describe(self) -> String {
        match self {
            Self::Requests(n) => format!("{n} requests"),
            Self::Deadline(d) => format!("for {:.1} s", d.as_secs_f64()),
        }
    }
}

/// Which buyer sends request number `i`, for how many units.
#[derive(Debug, Clone)]
pub enum Requests {
    /// Buyer `i % users` asks for `quantity` units, until `stop`.
    RoundRobin {
        /// Buyers served in turn.
        users: u32,
        /// Units per request.
        quantity: u64,
        /// When to stop.
        stop: Stop,
    },
    /// Exactly these `(buyer, units)` requests, one each, in this order.
    Listed(Arc<[(u32, u64)]>),
}

impl Requests {
    /// Request number `index`, or `None` once the load is over.
    fn job(&self, index: u64, started: Instant) -> Option<Job> {
        match self {
            Self::RoundRobin {
                users,
                quantity,
                stop,
            } => {
                let over = match *stop {
                    Stop::Requests(total) => index >= total,
                    Stop::Deadline(limit) => started.elapsed() >= limit,
                };
                let user = u32::try_from(index % u64::from((*users).max(1))).ok()?;
                (!over).then_some(Job {
                    index,
                    user,
                    quantity: *quantity,
                })
            }
            Self::Listed(list) => {
                let &(user, quantity) = list.get(usize::try_from(index).ok()?)?;
                Some(Job {
                    index,
                    user,
                    quantity,
                })
            }
        }
    }

    /// When the load stops, for the progress bar.
    pub fn stop(&self) -> Stop {
        match self {
            Self::RoundRobin { stop, .. } => *stop,
            Self::Listed(list) => Stop::Requests(u64::try_from(list.len()).unwrap_or(u64::MAX)),
        }
    }
}

/// One request to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Its number, from 0, in the order requests were handed out.
    pub index: u64,
    /// The buyer sending it.
    pub user: u32,
    /// Units it asks for.
    pub quantity: u64,
}

/// What came back from one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// An HTTP answer: its status and body.
    Http {
        /// The status code.
        status: u16,
        /// The whole body.
        body: Bytes,
    },
    /// A decision taken without HTTP (the baselines).
    Decided {
        /// True when a unit was sold.
        sold: bool,
        /// The outcome key, e.g. `sold` or `sold_out`.
        key: &'static str,
    },
    /// No definite answer: the request may or may not have taken effect.
    Failed {
        /// The outcome key: [`TRANSPORT_ERROR`], [`TIMEOUT`] or `error`.
        key: &'static str,
        /// What went wrong.
        error: String,
    },
}

/// What one request of the load does.
pub trait Action: Send + Sync + 'static {
    /// Performs `job` and reports what came back; failures are answers too.
    fn perform(&self, job: Job) -> impl Future<Output = Answer> + Send;
}

impl<F, Fut> Action for F
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send,
{
    fn perform(&self, job: Job) -> impl Future<Output = Answer> + Send {
        self(job)
    }
}

/// The body of a purchase request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body for one unit (the contract's default, what a bare buy button
    /// sends); `{"quantity": n}` otherwise.
    Auto,
    /// Always `{"quantity": n}` with `Content-Type: application/json`.
    Json,
    /// The JSON body and a fresh `Idempotency-Key` per request.
    JsonFreshKey,
    /// The JSON body and one `Idempotency-Key` per buyer (retries).
    JsonBuyerKey,
}

impl Body {
    /// The `Idempotency-Key` request `job` carries in this shape, if any.
    fn key(self, job: Job) -> Option<RequestKey> {
        match self {
            Self::JsonFreshKey => Some(RequestKey::Fresh(job.index)),
            Self::JsonBuyerKey => Some(RequestKey::Buyer(job.user)),
            Self::Auto | Self::Json => None,
        }
    }

    /// True when request `job` carries `{"quantity": n}` in this shape.
    fn has_json(self, job: Job) -> bool {
        !(self == Self::Auto && job.quantity == 1)
    }
}

/// An `Idempotency-Key` value, written by both clients as `k<request>` or
/// `b<buyer>`.
enum RequestKey {
    /// Unique to one request.
    Fresh(u64),
    /// The same for every request of one buyer.
    Buyer(u32),
}

impl std::fmt::Display for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fresh(index) => write!(f, "k{index}"),
            Self::Buyer(user) => write!(f, "b{user}"),
        }
    }
}

/// HTTP requests to a Flashsale server (or several, taken in turn).
#[derive(Debug, Clone)]
pub struct Http {
    client: Client,
    targets: Arc<[Url]>,
    /// The lean client's connections, one [`Wire`] per target, when
    /// [`Http::over_wire`] chose it; reqwest's pool otherwise.
    wires: Option<Arc<[Wire]>>,
    purchase: Option<(Arc<Buyers>, Body)>,
}

impl Http {
    /// `GET url` for every request.
    pub fn get(client: Client, url: Url) -> Self {
        Self {
            client,
            targets: Arc::from([url]),
            wires: None,
            purchase: None,
        }
    }

    /// `POST` purchases by `buyers`, request `i` to `targets[i % len]`
    /// (each a sale's `…/purchase` URL on one node).
    pub fn purchases(client: Client, targets: Vec<Url>, buyers: Arc<Buyers>, body: Body) -> Self {
        Self {
            client,
            targets: targets.into(),
            wires: None,
            purchase: Some((buyers, body)),
        }
    }

    /// Sends the requests with the lean HTTP/1.1 client of [`crate::wire`]
    /// instead of reqwest, each given up after `timeout`: the floods'
    /// client, so the load tool spends little more per request than `wrk`.
    /// Leaves the requests to reqwest when a target is not plain `http://`.
    #[must_use]
    pub fn over_wire(mut self, timeout: Duration) -> Self {
        let method = if self.purchase.is_some() {
            "POST"
        } else {
            "GET"
        };
        let wires: Option<Vec<Wire>> = self
            .targets
            .iter()
            .map(|url| Wire::new(method, url, timeout))
            .collect();
        self.wires = wires.map(Arc::from);
        self
    }

    /// Appends the headers (after `Host`) and body of request `job` in the
    /// wire format; `token` is the buyer's `Authorization` value.
    fn write_rest(&self, job: Job, token: Option<&HeaderValue>, out: &mut Vec<u8>) {
        let (Some((_, body)), Some(token)) = (&self.purchase, token) else {
            out.extend_from_slice(b"\r\n");
            return;
        };
        out.extend_from_slice(b"Authorization: ");
        out.extend_from_slice(token.as_bytes());
        out.extend_from_slice(b"\r\n");
        // Writing into a Vec cannot fail.
        if let Some(key) = body.key(job) {
            let _ = write!(out, "Idempotency-Key: {key}\r\n");
        }
        if !body.has_json(job) {
            out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        } else {
            // `{"quantity":` and `}` around the number's digits.
            let digits = job.quantity.checked_ilog10().unwrap_or(0) + 1;
            let _ = write!(
                out,
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"quantity\":{}}}",
                digits + 13,
                job.quantity
            );
        }
    }
}

impl Action for Http {
    async fn perform(&self, job: Job) -> Answer {
        let Some(pick) = usize::try_from(job.index)
            .ok()
            .map(|i| i % self.targets.len().max(1))
        else {
            return failed("error", "no target URL");
        };
        let token = match &self.purchase {
            Some((buyers, _)) => match buyers.token(job.user) {
                Some(token) => Some(token),
                None => return failed("error", format!("no token for buyer {}", job.user)),
            },
            None => None,
        };
        if let Some(wire) = self.wires.as_ref().and_then(|w| w.get(pick)) {
            let sent = wire.send(|out| self.write_rest(job, token, out)).await;
            return match sent {
                Ok((status, body)) => Answer::Http { status, body },
                Err(wire::Failure::Timeout) => failed(TIMEOUT, "no answer in time"),
                Err(wire::Failure::Transport(e)) => failed(TRANSPORT_ERROR, e),
            };
        }
        let Some(target) = self.targets.get(pick) else {
            return failed("error", "no target URL");
        };
        let request = match (&self.purchase, token) {
            (Some((_, body)), Some(token)) => {
                let mut request = self
                    .client
                    .post(target.clone())
                    .header(AUTHORIZATION, token.clone());
                if let Some(key) = body.key(job) {
                    request = request.header("idempotency-key", key.to_string());
                }
                if body.has_json(job) {
                    request = request
                        .header(CONTENT_TYPE, "application/json")
                        .body(format!(r#"{{"quantity":{}}}"#, job.quantity));
                }
                request
            }
            _ => self.client.get(target.clone()),
        };
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                response.bytes().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok((status, body)) => Answer::Http { status, body },
            Err(e) => failed(
                if e.is_timeout() {
                    TIMEOUT
                } else {
                    TRANSPORT_ERROR
                },
                error_chain(&e),
            ),
        }
    }
}

fn failed(key: &'static str, error: impl Into<String>) -> Answer {
    Answer::Failed {
        key,
        error: error.into(),
    }
}

/// An error with its causes, `a: b: c`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One answer as it arrives, for a caller that acts during the load (stop
/// the server after the 200th order, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The request.
    pub job: Job,
    /// Its outcome key (`201`, `409 sold_out`, `transport_error`, …).
    pub key: String,
    /// True when it sold (a `201`, or a baseline's sale).
    pub accepted: bool,
}

/// Everything a load needs besides its [`Action`].
#[derive(Debug)]
pub struct Plan {
    /// Who sends which request, and when to stop.
    pub requests: Requests,
    /// Requests in flight at once (workers).
    pub concurrency: usize,
    /// The sale the requests buy in: answers are then judged as purchases.
    pub sale_id: Option<String>,
    /// The buyers that [`Job::user`] numbers.
    pub buyers: Arc<Buyers>,
    /// Draw a progress bar on stderr (indicatif hides it off a terminal).
    pub progress: bool,
    /// Receives every answer as it arrives.
    pub watch: Option<mpsc::UnboundedSender<Seen>>,
}

/// An accepted order: a `201` answer that named its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The order id from the answer.
    pub order_id: String,
    /// The buyer's number.
    pub user: u32,
    /// Units in the order.
    pub quantity: u64,
}

/// A count of problems of one kind and the first few of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Samples {
    /// How many there were.
    pub count: u64,
    /// The first [`MAX_SAMPLES`] of them.
    pub first: Vec<String>,
}

impl Samples {
    /// Counts one and keeps it if there is room.
    pub fn push(&mut self, sample: String) {
        self.count += 1;
        if self.first.len() < MAX_SAMPLES {
            self.first.push(sample);
        }
    }

    fn merge(&mut self, other: Self) {
        self.count += other.count;
        let room = MAX_SAMPLES.saturating_sub(self.first.len());
        self.first.extend(other.first.into_iter().take(room));
    }
}

/// What a load observed, merged over all workers: the evidence the checks
/// and the report read.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// From the first request sent to the last answer received.
    pub elapsed: Duration,
    /// Requests sent (answered or not).
    pub requests: u64,
    /// Latency of every answered request, in microseconds.
    pub latency: Histogram<u64>,
    /// Latency of answered requests by outcome key, in microseconds.
    pub latency_by_outcome: BTreeMap<String, Histogram<u64>>,
    /// Request count by outcome key (see [`outcome_key`]).
    pub outcomes: BTreeMap<String, u64>,
    /// The buyers the requests were sent for.
    pub buyers: Arc<Buyers>,
    /// Every `201` whose body named its order.
    pub accepted: Vec<Accepted>,
    /// Orders accepted, named or not.
    pub orders: u64,
    /// Units in those orders.
    pub units: u64,
    /// `201` answers that disagreed with their request.
    pub anomalies: Samples,
    /// Non-2xx answers without the contract's error body.
    pub malformed: Samples,
    /// Requests that got no definite answer, with what went wrong.
    pub failures: Samples,
    /// Purchases whose fate is unknown (no answer, or a server error other
    /// than `503 overloaded`): each may or may not have bought.
    pub ambiguous: u64,
    /// Time from the start to the last accepted order.
    pub last_accept: Option<Duration>,
}

impl Outcome {
    /// Counts each accepted order once: a retry with the buyer's key gets
    /// the first `201` again (`--shape replayed`), the same order, which is
    /// one order however often it is answered. `201`s that named no order
    /// are kept as they are.
    pub fn count_replays_once(&mut self) {
        let before = self.accepted.len();
        let mut seen = std::collections::HashSet::new();
        let mut dropped_units = 0;
        self.accepted.retain(|a| {
            let first = seen.insert(a.order_id.clone());
            if !first {
                dropped_units += a.quantity;
            }
            first
        });
        self.orders -= (before - self.accepted.len()) as u64;
        self.units -= dropped_units;
    }

    /// Nothing seen yet, for `buyers`.
    pub fn new(buyers: Arc<Buyers>) -> Self {
        Self {
            elapsed: Duration::ZERO,
            requests: 0,
            latency: histogram(),
            latency_by_outcome: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            buyers,
            accepted: Vec::new(),
            orders: 0,
            units: 0,
            anomalies: Samples::default(),
            malformed: Samples::default(),
            failures: Samples::default(),
            ambiguous: 0,
            last_accept: None,
        }
    }

    /// Requests with outcome `key`.
    pub fn count(&self, key: &str) -> u64 {
        self.outcomes.get(key).copied().unwrap_or(0)
    }

    /// Answers with HTTP status `status`, whatever their error code.
    pub fn status_count(&self, status: u16) -> u64 {
        let status = status.to_string();
        self.outcomes
            .iter()
            .filter(|(key, _)| key.split(' ').next() == Some(status.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// True when some purchase was refused because the stock ran out.
    pub fn sold_out_seen(&self) -> bool {
        self.count(SOLD_OUT) > 0
    }

    /// Accepted orders whose answer named no order id.
    pub fn unnamed_orders(&self) -> u64 {
        self.orders
            .saturating_sub(u64::try_from(self.accepted.len()).unwrap_or(u64::MAX))
    }

    /// The user id of an accepted order's buyer.
    pub fn owner(&self, order: &Accepted) -> &str {
        self.buyers.name(order.user)
    }

    fn merge(&mut self, tally: Self) -> anyhow::Result<()> {
        self.latency.add(&tally.latency)?;
        for (key, n) in tally.outcomes {
            *self.outcomes.entry(key).or_insert(0) += n;
        }
        self.accepted.extend(tally.accepted);
        self.orders += tally.orders;
        self.units += tally.units;
        self.anomalies.merge(tally.anomalies);
        self.malformed.merge(tally.malformed);
        self.failures.merge(tally.failures);
        self.ambiguous += tally.ambiguous;
        self.last_accept = self.last_accept.max(tally.last_accept);
        Ok(())
    }

    /// Records one answer to `job`, `at` since the start; true when it sold.
    fn record(&mut self, plan: &Plan, job: Job, answer: &Answer, at: Duration) -> (String, bool) {
        let (key, sold) = match answer {
            Answer::Http { status, body } => {
                let (key, well_formed) = classify(*status, body);
                let mut sold = false;
                if !well_formed {
                    let shown = String::from_utf8_lossy(&body[..body.len().min(200)]);
                    self.malformed.push(format!("{status}: {shown:?}"));
                }
                if let Some(sale_id) = &plan.sale_id {
                    if *status == 201 {
                        sold = true;
                        self.accept(plan, sale_id, job, body);
                    } else if is_ambiguous(*status, &key) {
                        self.ambiguous += 1;
                    }
                }
                (key, sold)
            }
            Answer::Decided { sold, key } => {
                if *sold {
                    self.orders += 1;
                    self.units = self.units.saturating_add(job.quantity);
                }
                ((*key).to_owned(), *sold)
            }
            Answer::Failed { key, error } => {
                self.ambiguous += 1;
                self.failures.push(error.clone());
                ((*key).to_owned(), false)
            }
        };
        if sold {
            self.last_accept = self.last_accept.max(Some(at));
        }
        // Looked up by reference first: the key is only copied when new.
        match self.outcomes.get_mut(&key) {
            Some(n) => *n += 1,
            None => {
                self.outcomes.insert(key.clone(), 1);
            }
        }
        (key, sold)
    }

    /// Records a `201` answer to buyer `job.user`'s purchase.
    fn accept(&mut self, plan: &Plan, sale_id: &str, job: Job, body: &[u8]) {
        let owner = plan.buyers.name(job.user);
        let claimed = read_created(body, owner, sale_id, job.quantity);
        self.orders += 1;
        self.units = self.units.saturating_add(claimed.quantity);
        if let Some(order_id) = claimed.order_id {
            self.accepted.push(Accepted {
                order_id,
                user: job.user,
                quantity: claimed.quantity,
            });
        }
        if let Some(problem) = claimed.problem {
            self.anomalies.push(format!("201 to {owner}: {problem}"));
        }
    }
}

/// Locks `m`, also after a panic elsewhere (a tally stays readable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An empty latency histogram in microseconds (1 µs to one hour, three
/// significant digits).
pub(crate) fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Runs the load described by `plan`, each request performed by `action`,
/// and merges what the workers saw.
///
/// # Errors
/// When a worker panicked.
pub async fn drive<A: Action>(plan: Plan, action: A) -> anyhow::Result<Outcome> {
    let plan = Arc::new(plan);
    let action = Arc::new(action);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    // One shared table, not one per worker: a histogram is ~190 KB, and a
    // flood runs thousands of workers.
    let by_outcome = Arc::new(Mutex::new(BTreeMap::new()));
    let start = Instant::now();

    let workers: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let (plan, action, next, done, by_outcome) = (
                Arc::clone(&plan),
                Arc::clone(&action),
                Arc::clone(&next),
                Arc::clone(&done),
                Arc::clone(&by_outcome),
            );
            tokio::spawn(
                async move { worker(&plan, &*action, &next, &done, &by_outcome, start).await },
            )
        })
        .collect();

    // Progress comes from the shared counter, so workers never touch the bar.
    let progress = progress_bar(plan.progress, plan.requests.stop());
    let ticker = {
        let (bar, done, stop) = (progress.clone(), Arc::clone(&done), plan.requests.stop());
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
        tallies.push(joined.context("a load worker panicked")?);
    }
    let elapsed = start.elapsed();
    ticker.abort();
    progress.finish_and_clear();

    let mut merged = Outcome::new(Arc::clone(&plan.buyers));
    merged
        .accepted
        .reserve(tallies.iter().map(|t| t.accepted.len()).sum());
    for tally in tallies {
        merged.merge(tally)?;
    }
    merged.elapsed = elapsed;
    merged.requests = done.load(Ordering::Relaxed);
    merged.latency_by_outcome = std::mem::take(&mut *lock(&by_outcome));
    Ok(merged)
}

/// One worker's loop: take the next request number, perform, record, until
/// the plan says stop.
async fn worker<A: Action>(
    plan: &Plan,
    action: &A,
    next: &AtomicU64,
    done: &AtomicU64,
    by_outcome: &Mutex<BTreeMap<String, Histogram<u64>>>,
    start: Instant,
) -> Outcome {
    let mut tally = Outcome::new(Arc::clone(&plan.buyers));
    while let Some(job) = plan
        .requests
        .job(next.fetch_add(1, Ordering::Relaxed), start)
    {
        let sent = Instant::now();
        let answer = action.perform(job).await;
        let took = sent.elapsed();
        done.fetch_add(1, Ordering::Relaxed);
        let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let answered = !matches!(answer, Answer::Failed { .. });
        if answered {
            tally.latency.saturating_record(took_us);
        }
        let (key, accepted) = tally.record(plan, job, &answer, start.elapsed());
        if answered {
            let mut table = lock(by_outcome);
            match table.get_mut(&key) {
                Some(h) => h.saturating_record(took_us),
                None => {
                    let mut h = histogram();
                    h.saturating_record(took_us);
                    table.insert(key.clone(), h);
                }
            }
        }
        if let Some(watch) = &plan.watch {
            // A watcher that went away only stops watching.
            let _ = watch.send(Seen { job, key, accepted });
        }
    }
    tally
}

/// A progress bar on stderr, or a hidden one.
fn progress_bar(show: bool, stop: Stop) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let length = match stop {
        Stop::Requests(n) => n,
        Stop::Deadline(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The error envelope every non-2xx answer carries.
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: Option<String>,
}

/// Keys an answer for the outcome table: the status alone for a success
/// (`201`), the status and the contract's error code otherwise
/// (`409 sold_out`), or the status alone when the body has no code.
pub fn outcome_key(status: u16, body: &[u8]) -> String {
    classify(status, body).0
}

/// True when `body` is the contract's error body:
/// `{"error": {"code": snake_case, "message": non-empty}}`.
pub fn is_error_envelope(body: &[u8]) -> bool {
    classify(400, body).1
}

/// The outcome key of an answer, and whether it is well formed: a success
/// always is; an error when it has the contract's error body. The body is
/// parsed once: in a sold-out flood every answer is an error, and the load
/// tool shares the machine with the server.
fn classify(status: u16, body: &[u8]) -> (String, bool) {
    if (200..300).contains(&status) {
        return (status.to_string(), true);
    }
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) if !envelope.error.code.is_empty() => {
            let code = &envelope.error.code;
            let well_formed = code
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && envelope.error.message.is_some_and(|m| !m.is_empty());
            (format!("{status} {code}"), well_formed)
        }
        _ => (status.to_string(), false),
    }
}

/// True when a purchase answered `status` may still have bought: server
/// errors, except the explicit load shedding of `503 overloaded`.
fn is_ambiguous(status: u16, key: &str) -> bool {
    (500..600).contains(&status) && key != "503 overloaded"
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
/// bought `quantity` units in `sale_id`, and the new order awaits payment.
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
    match bought {
        Some(b) if b == quantity => {}
        other => problems.push(format!("quantity {other:?}, asked {quantity}")),
    }
    match value.get("user_id").and_then(Value::as_str) {
        Some(user) if user == owner => {}
        other => problems.push(format!("user_id {other:?}")),
    }
    match value.get("sale_id").and_then(json_id) {
        Some(sale) if sale == sale_id => {}
        other => problems.push(format!("sale_id {other:?}, expected {sale_id}")),
    }
    match value.get("status").and_then(Value::as_str) {
        Some("pending_payment") => {}
        other => problems.push(format!("status {other:?}, expected pending_payment")),
    }
    Created {
        order_id,
        quantity: bought.unwrap_or(quantity),
        problem: (!problems.is_empty()).then(|| problems.join(", ")),
    }
}

/// An id as text, whether the service sends it as a string or a number.
pub fn json_id(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `n` events over `elapsed`, per second (0 for no time at all).
pub fn per_sec(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Counts by outcome key, for messages: `{"201": 5, "409 sold_out": 95}`.
pub fn describe_outcomes(outcomes: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = outcomes.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// How many units each buyer got in `outcome`'s named orders.
pub fn held_by_buyer(outcome: &Outcome) -> HashMap<u32, u64> {
    let mut held = HashMap::new();
    for order in &outcome.accepted {
        let units: &mut u64 = held.entry(order.user).or_insert(0);
        *units = units.saturating_add(order.quantity);
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(code: &str) -> String {
        format!(r#"{{"error":{{"code":"{code}","message":"x"}}}}"#)
    }

    #[test]
    fn a_replayed_order_counts_once() {
        let mut o = Outcome::new(Arc::new(Buyers::none()));
        for (id, user) in [("o1", 1), ("o2", 2), ("o1", 1), ("o1", 1)] {
            o.accepted.push(Accepted {
                order_id: id.into(),
                user,
                quantity: 2,
            });
            o.orders += 1;
            o.units += 2;
        }
        o.count_replays_once();
        assert_eq!(o.accepted.len(), 2);
        assert_eq!((o.orders, o.units), (2, 4));
    }

    #[test]
    fn outcomes_are_keyed_by_status_and_code() {
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
    fn error_bodies_must_follow_the_contract() {
        assert!(is_error_envelope(err("sold_out").as_bytes()));
        assert!(is_error_envelope(err("rate_limited2").as_bytes()));
        assert!(!is_error_envelope(err("Sold-Out").as_bytes()));
        assert!(!is_error_envelope(err("").as_bytes()));
        assert!(!is_error_envelope(br#"{"error":{"code":"sold_out"}}"#));
        assert!(!is_error_envelope(
            br#"{"error":{"code":"sold_out","message":""}}"#
        ));
        assert!(!is_error_envelope(b"Invalid URL"));
    }

    #[test]
    fn ambiguity_of_answers() {
        assert!(is_ambiguous(500, "500"));
        assert!(is_ambiguous(503, "503"));
        assert!(!is_ambiguous(503, "503 overloaded"));
        assert!(!is_ambiguous(409, SOLD_OUT));
        assert!(!is_ambiguous(429, "429 rate_limited"));
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
        let numeric =
            br#"{"order_id":17,"sale_id":4,"user_id":"u","quantity":1,"status":"pending_payment"}"#;
        let created = read_created(numeric, "u", "4", 1);
        assert_eq!(created.order_id.as_deref(), Some("17"));
        assert_eq!(created.problem, None);
    }

    #[test]
    fn created_answers_that_disagree() {
        let body = br#"{"order_id":"o-1","sale_id":"s2","user_id":"someone","quantity":3,"status":"paid"}"#;
        let created = read_created(body, "bench-x-3", "s1", 1);
        assert_eq!(created.order_id.as_deref(), Some("o-1"));
        assert_eq!(created.quantity, 3, "units count as the server says");
        let problem = created.problem.unwrap();
        for part in ["quantity Some(3)", "user_id", "sale_id", "status"] {
            assert!(problem.contains(part), "{problem}");
        }

        let garbage = read_created(b"<html>", "u", "s", 2);
        assert_eq!((garbage.order_id, garbage.quantity), (None, 2));
        assert!(garbage.problem.is_some());

        let nameless = read_created(
            br#"{"sale_id":"s","user_id":"u","quantity":1,"status":"pending_payment"}"#,
            "u",
            "s",
            1,
        );
        assert_eq!(nameless.order_id, None);
        assert_eq!(nameless.problem.as_deref(), Some("no order_id"));
        let quantityless = read_created(
            br#"{"order_id":"o","sale_id":"s","user_id":"u","status":"pending_payment"}"#,
            "u",
            "s",
            1,
        );
        assert_eq!(
            quantityless.problem.as_deref(),
            Some("quantity None, asked 1")
        );
    }

    #[test]
    fn ids_as_text() {
        assert_eq!(json_id(&json!("abc")), Some("abc".to_owned()));
        assert_eq!(json_id(&json!(42)), Some("42".to_owned()));
        assert_eq!(json_id(&json!("")), None);
        assert_eq!(json_id(&json!(null)), None);
    }

    #[test]
    fn rates() {
        assert!((per_sec(500, Duration::from_millis(250)) - 2000.0).abs() < 1e-9);
        assert!(per_sec(10, Duration::ZERO).abs() < f64::EPSILON);
    }

    #[test]
    fn round_robin_and_listed_requests() {
        let start = Instant::now();
        let rr = Requests::RoundRobin {
            users: 3,
            quantity: 2,
            stop: Stop::Requests(5),
        };
        let users: Vec<u32> = (0..10)
            .filter_map(|i| rr.job(i, start))
            .map(|j| j.user)
            .collect();
        assert_eq!(users, [0, 1, 2, 0, 1]);
        let listed = Requests::Listed(Arc::from(vec![(7, 1), (7, 2), (3, 1)]));
        assert_eq!(
            listed.job(1, start),
            Some(Job {
                index: 1,
                user: 7,
                quantity: 2
            })
        );
        assert_eq!(listed.job(3, start), None);
        assert_eq!(listed.stop(), Stop::Requests(3));
    }

    /// The loop against an in-process action: every request is answered
    /// once, tallies merge, the watcher sees each answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loop_records_every_answer() {
        let runtime_buyers = Buyers::mint(
            &flashsale::auth::Secret::new("s"),
            (0..4).map(|i| format!("u{i}")).collect(),
        )
        .await
        .unwrap();
        let buyers = Arc::new(runtime_buyers);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let plan = Plan {
            requests: Requests::RoundRobin {
                users: 4,
                quantity: 1,
                stop: Stop::Requests(40),
            },
            concurrency: 8,
            sale_id: Some("s".to_owned()),
            buyers: Arc::clone(&buyers),
            progress: false,
            watch: Some(tx),
        };
        let names = Arc::clone(&buyers);
        let action = move |job: Job| {
            let owner = names.name(job.user).to_owned();
            async move {
                match job.index {
                    // Four sales, one per buyer.
                    0..4 => Answer::Http {
                        status: 201,
                        body: Bytes::from(
                            json!({"order_id": format!("o{}", job.index), "sale_id": "s",
                                "user_id": owner, "quantity": 1, "status": "pending_payment"})
                            .to_string(),
                        ),
                    },
                    4 => failed(TIMEOUT, "slow"),
                    5 => Answer::Http {
                        status: 502,
                        body: Bytes::from_static(b"Bad Gateway"),
                    },
                    _ => Answer::Http {
                        status: 409,
                        body: Bytes::from(err("sold_out")),
                    },
                }
            }
        };
        let outcome = drive(plan, action).await.unwrap();
        assert_eq!(outcome.requests, 40);
        assert_eq!(outcome.count("201"), 4);
        assert_eq!(outcome.count(SOLD_OUT), 34);
        assert_eq!(outcome.status_count(409), 34);
        assert_eq!(outcome.count(TIMEOUT), 1);
        assert_eq!((outcome.orders, outcome.units), (4, 4));
        assert_eq!(outcome.accepted.len(), 4);
        assert_eq!(outcome.anomalies.count, 0, "{:?}", outcome.anomalies);
        assert_eq!(outcome.malformed.count, 1, "{:?}", outcome.malformed);
        assert_eq!(outcome.failures.first, ["slow"]);
        // The timeout and the 502 may each have bought.
        assert_eq!(outcome.ambiguous, 2);
        assert_eq!(outcome.latency.len(), 39);
        assert!(outcome.sold_out_seen());
        let held = held_by_buyer(&outcome);
        assert!(held.values().all(|&u| u == 1) && held.len() == 4);
        for order in &outcome.accepted {
            assert_eq!(outcome.owner(order), format!("u{}", order.user));
        }
        let mut seen = Vec::new();
        while let Some(s) = rx.recv().await {
            seen.push(s);
        }
        assert_eq!(seen.len(), 40);
        assert_eq!(seen.iter().filter(|s| s.accepted).count(), 4);
    }
}
