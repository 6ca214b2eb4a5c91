//! Circuit breakers as decorators over the backend traits.
//!
//! A [`Breaker`] watches the calls to one backend and, when the backend is
//! failing or stalling, stops calling it for a while so callers get a fast
//! error (a `503` for buyers) instead of waiting on timeouts:
//!
//! - **closed** (normal): every call goes through. It opens when, over the
//!   last [`BreakerSettings::window`], at least
//!   [`BreakerSettings::failure_rate`] of at least
//!   [`BreakerSettings::min_calls`] calls failed, or after
//!   [`BreakerSettings::consecutive_failures`] failures in a row. A call
//!   still running after [`BreakerSettings::slow_call`] counts as a failure
//!   the moment it crosses that threshold (it is not cut short: its own
//!   timeout still decides its answer), so a stalled backend opens the
//!   breaker without waiting for the stalled calls' timeouts.
//! - **open**: calls fail at once with the role's error type, without
//!   touching the backend, for [`BreakerSettings::cool_down`].
//! - **half-open**: after the cool-down, up to
//!   [`BreakerSettings::half_open_probes`] calls go through as probes; the
//!   first probe that succeeds closes the breaker, one that fails re-opens
//!   it. Probes that never report (their caller gave up) are replaced after
//!   another cool-down.
//!
//! The decorators [`BreakerStock`], [`BreakerQueue`] and [`BreakerStore`]
//! wrap a role's trait object and route every call through their breaker;
//! [`super::connect`] puts them around the networked backends. Each breaker
//! exports `flashsale_breaker_state{backend}` (0 closed, 1 half-open,
//! 2 open) and `flashsale_breaker_transitions_total{backend,to}`; `/readyz`
//! shows the states.
//!
//! Hand-written rather than taken from a crate: `failsafe` (the best-kept
//! Rust circuit breaker) decides on call *results* only, so a stalled call
//! counts only once its timeout fires, and it has no probe limit for the
//! half-open state nor a state to export; wrapping it would need as much
//! code as the state machine itself. The closed path here is one atomic
//! load to admit a call plus a few atomic adds to record it — no lock.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::outbox::{AttemptRecord, Delivery, DeliveryFilter, OutboxEvent};
use super::queue::{OrderConsumer, OrderQueue, QueueDepth, QueueError};
use super::stock::{Decision, OrderPlace, Reservation, StockError, StockState, StockStore};
use super::{Intent, OrderStore, SaleAudit, SaleRecord, Snapshot, StoreError, TransitionReport};
use crate::domain::order::Transition;
use crate::domain::{Ledger, LiveSchedule, Order, Sale, Schedule};

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// The sliding window the failure rate is measured over (default 10 s,
    /// kept in ten buckets).
    pub window: Duration,
    /// Fewest calls in the window before the failure rate may open the
    /// breaker (default 20).
    pub min_calls: u32,
    /// Share of failed calls in the window that opens it (default 0.5).
    pub failure_rate: f64,
    /// Failures in a row that open it whatever the window says (default 3:
    /// a stalled Redis has at most its two batch calls and the stock
    /// watcher's read in flight, each counted once when it turns slow, so a
    /// stall must open the breaker on three).
    pub consecutive_failures: u32,
    /// A call slower than this counts as a failure (default 1 s; a Redis
    /// script or a confirmed publish normally takes milliseconds).
    pub slow_call: Duration,
    /// How long an open breaker refuses every call before it lets probes
    /// through (default 2 s).
    pub cool_down: Duration,
    /// Calls let through at once while half-open (default 3).
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_calls: 20,
            failure_rate: 0.5,
            consecutive_failures: 3,
            slow_call: Duration::from_secs(1),
            cool_down: Duration::from_secs(2),
            half_open_probes: 3,
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// A few probe calls go through.
    HalfOpen,
    /// Calls fail fast.
    Open,
}

impl BreakerState {
    const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Closed,
            1 => Self::HalfOpen,
            _ => Self::Open,
        }
    }

    /// The name `/readyz` and the metrics use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }

    /// The value of `flashsale_breaker_state`.
    pub const fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;
const BUCKETS: usize = 10;

/// The right to make one call, from [`Breaker::admit`].
#[derive(Debug, Clone, Copy)]
#[must_use = "report the call's outcome with Breaker::record"]
pub struct Permit {
    probe: bool,
}

/// How one call went, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered (a business refusal is an answer too).
    Success,
    /// It failed, could not be reached, or was too slow.
    Failure,
}

/// A circuit breaker for one backend (see the module docs).
#[derive(Debug)]
pub struct Breaker {
    backend: &'static str,
    settings: BreakerSettings,
    epoch: Instant,
    state: AtomicU8,
    /// Ms since `epoch` the breaker opened (open) or turned half-open.
    since_ms: AtomicU64,
    probes: AtomicU32,
    consecutive: AtomicU32,
    /// Per bucket: bucket number (24 bits) | calls (20 bits) | failures (20).
    buckets: [AtomicU64; BUCKETS],
}

const FIELD: u64 = (1 << 20) - 1;

impl Breaker {
    /// A closed breaker for `backend` (the metrics label: `stock`, `queue`,
    /// `store`).
    pub fn new(backend: &'static str, settings: BreakerSettings) -> Arc<Self> {
        metrics::gauge!("flashsale_breaker_state", "backend" => backend)
            .set(BreakerState::Closed.gauge());
        Arc::new(Self {
            backend,
            settings,
            epoch: Instant::now(),
            state: AtomicU8::new(CLOSED),
            since_ms: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        })
    }

    /// The backend's label.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn bucket_ms(&self) -> u64 {
        (self.settings.window.as_millis() as u64 / BUCKETS as u64).max(1)
    }

    /// False while a call would be refused (open with the cool-down
    /// running, or half-open with every probe out): what a caller that
    /// queues work before the call checks first. It takes no permit.
    pub fn would_admit(&self) -> bool {
        let cool_down = self.settings.cool_down.as_millis() as u64;
        let since = || self.since_ms.load(Ordering::Acquire);
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => self.now_ms().saturating_sub(since()) >= cool_down,
            _ => {
                self.probes.load(Ordering::Acquire) < self.settings.half_open_probes
                    || self.now_ms().saturating_sub(since()) >= cool_down
            }
        }
    }

    /// A permit for one call, or `None` when the call must fail fast.
    pub fn admit(&self) -> Option<Permit> {
        let mut state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            return Some(Permit { probe: false });
        }
        let now = self.now_ms();
        let cool_down = self.settings.cool_down.as_millis() as u64;
        if state == OPEN {
            let since = self.since_ms.load(Ordering::Acquire);
            if now.saturating_sub(since) < cool_down {
                return None;
            }
            if self
                .state
                .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.probes.store(0, Ordering::Release);
                self.since_ms.store(now, Ordering::Release);
                self.transitioned(BreakerState::HalfOpen);
            }
            state = self.state.load(Ordering::Acquire);
            if state == CLOSED {
                return Some(Permit { probe: false });
            }
            if state == OPEN {
                return None;
            }
        }
        // Half-open: a limited number of probes; probes whose callers gave
        // up without reporting are replaced after another cool-down.
        if self.probes.fetch_add(1, Ordering::AcqRel) < self.settings.half_open_probes {
            return Some(Permit { probe: true });
        }
        let since = self.since_ms.load(Ordering::Acquire);
        if now.saturating_sub(since) >= cool_down
            && self
                .since_ms
                .compare_exchange(since, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.probes.store(1, Ordering::Release);
            return Some(Permit { probe: true });
        }
        None
    }

    /// Records how the call `permit` admitted went.
    pub fn record(&self, permit: Permit, outcome: Outcome) {
        let failed = outcome == Outcome::Failure;
        self.count(failed);
        if failed {
            let run = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
            match self.state.load(Ordering::Acquire) {
                HALF_OPEN if permit.probe => self.open_from(HALF_OPEN),
                CLOSED if run >= self.settings.consecutive_failures || self.rate_exceeded() => {
                    self.open_from(CLOSED);
                }
                _ => {}
            }
        } else {
            self.consecutive.store(0, Ordering::Release);
            if permit.probe
                && self
                    .state
                    .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // A fresh window: the failures that opened it are history.
                for b in &self.buckets {
                    b.store(0, Ordering::Release);
                }
                self.transitioned(BreakerState::Closed);
            }
        }
    }

    /// Opens the breaker at once (the backend is known to be down).
    pub fn trip(&self) {
        self.open_from(CLOSED);
    }

    fn open_from(&self, from: u8) {
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.since_ms.store(self.now_ms(), Ordering::Release);
            self.transitioned(BreakerState::Open);
        }
    }

    fn transitioned(&self, to: BreakerState) {
        metrics::gauge!("flashsale_breaker_state", "backend" => self.backend).set(to.gauge());
        metrics::counter!(
            "flashsale_breaker_transitions_total",
            "backend" => self.backend,
            "to" => to.as_str()
        )
        .increment(1);
        match to {
            BreakerState::Open => tracing::warn!(
                backend = self.backend,
                "circuit breaker open: calls fail fast for {:?}",
                self.settings.cool_down
            ),
            BreakerState::HalfOpen => {
                tracing::info!(backend = self.backend, "circuit breaker half-open: probing");
            }
            BreakerState::Closed => {
                tracing::info!(backend = self.backend, "circuit breaker closed")
            }
        }
    }

    fn count(&self, failed: bool) {
        let n = self.now_ms() / self.bucket_ms();
        let tag = n & ((1 << 24) - 1);
        let slot = &self.buckets[(n % BUCKETS as u64) as usize];
        let mut cur = slot.load(Ordering::Acquire);
        loop {
            let (calls, fails) = if cur >> 40 == tag {
                ((cur >> 20) & FIELD, cur & FIELD)
            } else {
                (0, 0)
            };
            let next = (tag << 40)
                | ((calls + 1).min(FIELD) << 20)
                | (fails + u64::from(failed)).min(FIELD);
            match slot.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Calls and failures in the window.
    fn window(&self) -> (u64, u64) {
        let n = self.now_ms() / self.bucket_ms();
        let (mut calls, mut fails) = (0, 0);
        for b in &self.buckets {
            let v = b.load(Ordering::Acquire);
            let tag = v >> 40;
            let current = n & ((1 << 24) - 1);
            if current.wrapping_sub(tag) & ((1 << 24) - 1) < BUCKETS as u64 {
                calls += (v >> 20) & FIELD;
                fails += v & FIELD;
            }
        }
        (calls, fails)
    }

    fn rate_exceeded(&self) -> bool {
        let (calls, fails) = self.window();
        calls >= u64::from(self.settings.min_calls)
            && fails as f64 >= self.settings.failure_rate * calls as f64
    }

    /// Runs `call` through the breaker: fails fast with `refused()` while
    /// open, counts the call a failure once it runs past
    /// [`BreakerSettings::slow_call`] (and lets it finish), otherwise by
    /// `failed(&result)`.
    ///
    /// # Errors
    /// `refused()` when the breaker refused the call, else the call's own.
    pub async fn run<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        refused: impl FnOnce() -> E,
        failed: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        let Some(permit) = self.admit() else {
            return Err(refused());
        };
        let mut call = std::pin::pin!(call);
        match tokio::time::timeout(self.settings.slow_call, &mut call).await {
            Ok(result) => {
                let outcome = match &result {
                    Err(e) if failed(e) => Outcome::Failure,
                    _ => Outcome::Success,
                };
                self.record(permit, outcome);
                result
            }
            Err(_) => {
                self.record(permit, Outcome::Failure);
                call.await
            }
        }
    }
}

fn stock_refused() -> StockError {
    StockError::new("the stock's circuit breaker is open; retry")
}

fn queue_refused() -> QueueError {
    QueueError::new("the order queue's circuit breaker is open; retry")
}

fn store_refused() -> StoreError {
    StoreError::Backend("the order store's circuit breaker is open".into())
}

/// Every stock error is the stock's failure.
fn any_stock(_: &StockError) -> bool {
    true
}

/// A conflict is the store's answer, a closed store is ours: neither is
/// the backend failing.
fn store_failed(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend(_))
}

/// A [`StockStore`] behind a [`Breaker`]. A stock that batches purchases
/// itself (Redis) is given the breaker ([`StockStore::attach_breaker`]) so a
/// batch counts as one call; purchases are then only refused up front while
/// the breaker is open.
#[derive(Debug)]
pub struct BreakerStock {
    inner: Arc<dyn StockStore>,
    breaker: Arc<Breaker>,
    batches_itself: bool,
}

impl BreakerStock {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn StockStore>, settings: BreakerSettings) -> Self {
        let breaker = Breaker::new("stock", settings);
        let batches_itself = inner.attach_breaker(breaker.clone());
        Self {
            inner,
            breaker,
            batches_itself,
        }
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, StockError>>,
    ) -> Result<T, StockError> {
        self.breaker.run(call, stock_refused, any_stock).await
    }
}

#[async_trait]
impl StockStore for BreakerStock {
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    async fn reserve(
        &self,
        schedule: Schedule,
        ledger: &Ledger,
        reservation: Arc<Reservation>,
    ) -> Result<Decision, StockError> {
        if self.batches_itself {
            if !self.breaker.would_admit() {
                return Err(stock_refused());
            }
            return self.inner.reserve(schedule, ledger, reservation).await;
        }
        self.run(self.inner.reserve(schedule, ledger, reservation))
            .await
    }

    async fn release(&self, ledger: &Ledger, order: &Order) -> Result<(), StockError> {
        self.run(self.inner.release(ledger, order)).await
    }

    fn restore(&self, ledger: &Ledger, user: &str, units: u32) {
        self.inner.restore(ledger, user, units);
    }

    async fn seed_new(&self, sale: &Sale) -> Result<(), StockError> {
        self.run(self.inner.seed_new(sale)).await
    }

    async fn sync(
        &self,
        ledger: &Ledger,
        schedule: &LiveSchedule,
        sale_id: u64,
    ) -> Result<bool, StockError> {
        self.run(self.inner.sync(ledger, schedule, sale_id)).await
    }

    async fn set_schedule(&self, sale_id: u64, schedule: Schedule) -> Result<(), StockError> {
        self.run(self.inner.set_schedule(sale_id, schedule)).await
    }

    async fn ping(&self) -> Result<(), StockError> {
        self.run(self.inner.ping()).await
    }

    async fn state(&self, sale_id: u64) -> Result<Option<StockState>, StockError> {
        self.run(self.inner.state(sale_id)).await
    }

    async fn server_time_ms(&self) -> Result<Option<i64>, StockError> {
        self.run(self.inner.server_time_ms()).await
    }

    async fn seed(&self, sale: &Sale, from_db: &SaleRecord) -> Result<bool, StockError> {
        self.run(self.inner.seed(sale, from_db)).await
    }

    async fn fence(&self, sale_id: u64) -> Result<(), StockError> {
        self.run(self.inner.fence(sale_id)).await
    }

    async fn forget(&self, sale_id: u64) -> Result<(), StockError> {
        self.run(self.inner.forget(sale_id)).await
    }

    async fn outbox_due(
        &self,
        sale_id: u64,
        age_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StockError> {
        self.run(self.inner.outbox_due(sale_id, age_ms, limit))
            .await
    }

    async fn outbox_remove(&self, sale_id: u64, payloads: &[String]) -> Result<(), StockError> {
        self.run(self.inner.outbox_remove(sale_id, payloads)).await
    }

    async fn in_flight_order(
        &self,
        order_id: u64,
        user: &str,
        sales: &[(u64, u8)],
    ) -> Result<Option<Order>, StockError> {
        self.run(self.inner.in_flight_order(order_id, user, sales))
            .await
    }

    async fn forget_in_flight(&self, orders: &[OrderPlace<'_>]) -> Result<(), StockError> {
        self.run(self.inner.forget_in_flight(orders)).await
    }

    async fn lease_node_id(&self) -> Result<u16, StockError> {
        self.run(self.inner.lease_node_id()).await
    }

    fn breaker_state(&self) -> Option<BreakerState> {
        Some(self.breaker.state())
    }
}

/// An [`OrderQueue`] behind a [`Breaker`]. [`OrderQueue::is_up`] is the
/// breaker's answer (not open), with the queue's own "connection known
/// lost" flag as a further input.
#[derive(Debug)]
pub struct BreakerQueue {
    inner: Arc<dyn OrderQueue>,
    breaker: Arc<Breaker>,
}

impl BreakerQueue {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn OrderQueue>, settings: BreakerSettings) -> Self {
        Self {
            inner,
            breaker: Breaker::new("queue", settings),
        }
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, QueueError>>,
    ) -> Result<T, QueueError> {
        self.breaker.run(call, queue_refused, |_| true).await
    }
}

#[async_trait]
impl OrderQueue for BreakerQueue {
    async fn publish_orders(&self, body: &[u8]) -> Result<(), QueueError> {
        self.run(self.inner.publish_orders(body)).await
    }

    async fn publish_event(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError> {
        self.run(self.inner.publish_event(routing_key, body)).await
    }

    async fn consume(
        &self,
        tag: &str,
        prefetch: u16,
    ) -> Result<Box<dyn OrderConsumer>, QueueError> {
        self.run(self.inner.consume(tag, prefetch)).await
    }

    async fn subscribe_events(
        &self,
    ) -> Result<Box<dyn super::queue::EventSubscription>, QueueError> {
        self.run(self.inner.subscribe_events()).await
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.run(self.inner.depth()).await
    }

    fn is_up(&self) -> bool {
        self.breaker.state() != BreakerState::Open && self.inner.is_up()
    }

    /// A probe is a call like any other: while the breaker is open it
    /// answers `false` without touching the broker until the cool-down
    /// ends, then it is one of the half-open probes.
    async fn probe(&self) -> bool {
        let probed = self.run(async {
            if self.inner.probe().await {
                Ok(())
            } else {
                Err(QueueError::new("the probe found the queue down"))
            }
        });
        probed.await.is_ok()
    }

    async fn delete_topology(&self) -> Result<(), QueueError> {
        self.inner.delete_topology().await
    }

    fn breaker_state(&self) -> Option<BreakerState> {
        Some(self.breaker.state())
    }
}

/// An [`OrderStore`] behind a [`Breaker`]. Conflicts and a closed store are
/// answers, not failures.
pub struct BreakerStore {
    inner: Arc<dyn OrderStore>,
    breaker: Arc<Breaker>,
}

impl BreakerStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn OrderStore>, settings: BreakerSettings) -> Self {
        Self {
            inner,
            breaker: Breaker::new("store", settings),
        }
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.breaker.run(call, store_refused, store_failed).await
    }
}

#[async_trait]
impl OrderStore for BreakerStore {
    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        self.run(self.inner.create_sale(sale)).await
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.run(self.inner.load()).await
    }

    async fn commit_order(&self, order: Order) -> Result<(), StoreError> {
        self.run(self.inner.commit_order(order)).await
    }

    async fn get_order(&self, order_id: u64) -> Result<Option<Order>, StoreError> {
        self.run(self.inner.get_order(order_id)).await
    }

    async fn transition(
        &self,
        order_id: u64,
        user_id: &str,
        transition: Transition,
        now_ms: i64,
    ) -> Result<Option<TransitionReport>, StoreError> {
        self.run(self.inner.transition(order_id, user_id, transition, now_ms))
            .await
    }

    async fn expire_due(&self, now_ms: i64, limit: usize) -> Result<Vec<Order>, StoreError> {
        self.run(self.inner.expire_due(now_ms, limit)).await
    }

    async fn record_intents(&self, intents: Vec<Intent>) -> Result<(), StoreError> {
        self.run(self.inner.record_intents(intents)).await
    }

    async fn list_intents(
        &self,
        sale_id: u64,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Vec<Intent>, StoreError> {
        self.run(self.inner.list_intents(sale_id, cursor, limit))
            .await
    }

    async fn get_sale(&self, sale_id: u64) -> Result<Option<Sale>, StoreError> {
        self.run(self.inner.get_sale(sale_id)).await
    }

    async fn newest_sales(&self, limit: usize) -> Result<Vec<Sale>, StoreError> {
        self.run(self.inner.newest_sales(limit)).await
    }

    async fn move_schedule(
        &self,
        sale_id: u64,
        from: Schedule,
        to: Schedule,
    ) -> Result<bool, StoreError> {
        self.run(self.inner.move_schedule(sale_id, from, to)).await
    }

    async fn sale_record(&self, sale_id: u64) -> Result<SaleRecord, StoreError> {
        self.run(self.inner.sale_record(sale_id)).await
    }

    async fn sale_audit(&self, sale_id: u64, since_ms: i64) -> Result<SaleAudit, StoreError> {
        self.run(self.inner.sale_audit(sale_id, since_ms)).await
    }

    async fn claim_webhooks(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.run(self.inner.claim_webhooks(now_ms, lease_ms, limit))
            .await
    }

    async fn record_webhook_attempt(&self, record: AttemptRecord) -> Result<bool, StoreError> {
        self.run(self.inner.record_webhook_attempt(record)).await
    }

    async fn list_webhooks(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        self.run(self.inner.list_webhooks(filter)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(self.inner.ping()).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }

    fn breaker_state(&self) -> Option<BreakerState> {
        Some(self.breaker.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings::default()
    }

    async fn fail(b: &Breaker) -> Result<(), StockError> {
        b.run(
            async { Err(StockError::new("down")) },
            stock_refused,
            any_stock,
        )
        .await
    }

    async fn succeed(b: &Breaker) -> Result<(), StockError> {
        b.run(async { Ok(()) }, stock_refused, any_stock).await
    }

    fn refused(r: &Result<(), StockError>) -> bool {
        r.as_ref()
            .is_err_and(|e| e.to_string().contains("circuit breaker is open"))
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_it_and_it_then_fails_fast() {
        let b = Breaker::new("test", settings());
        for _ in 1..b.settings.consecutive_failures {
            assert!(!refused(&fail(&b).await));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!refused(&fail(&b).await));
        assert_eq!(b.state(), BreakerState::Open);
        // The backend is not called while open.
        let called = std::sync::atomic::AtomicBool::new(false);
        let r = b
            .run(
                async {
                    called.store(true, Ordering::SeqCst);
                    Ok(())
                },
                stock_refused,
                any_stock,
            )
            .await;
        assert!(refused(&r));
        assert!(!called.load(Ordering::SeqCst));
        assert!(!b.would_admit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_breaks_the_run_of_failures() {
        let b = Breaker::new("test", settings());
        for _ in 0..3 {
            for _ in 1..b.settings.consecutive_failures {
                let _ = fail(&b).await;
            }
            succeed(&b).await.unwrap();
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_rate_over_the_window_opens_it() {
        let b = Breaker::new("test", settings());
        // Alternating: never two in a row, but 50 % of 20 calls.
        for i in 0..19 {
            if i % 2 == 0 {
                succeed(&b).await.unwrap();
            } else {
                let _ = fail(&b).await;
            }
            assert_eq!(b.state(), BreakerState::Closed, "call {i}");
        }
        let _ = fail(&b).await;
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_older_than_the_window_do_not_count() {
        let b = Breaker::new("test", settings());
        for _ in 0..10 {
            succeed(&b).await.unwrap();
            let _ = fail(&b).await;
        }
        // 10 of 20 failed... but opened only if all are in the window.
        assert_eq!(b.state(), BreakerState::Open);
        let b = Breaker::new("test", settings());
        for _ in 0..9 {
            succeed(&b).await.unwrap();
            let _ = fail(&b).await;
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..2 {
            succeed(&b).await.unwrap();
            let _ = fail(&b).await;
        }
        assert_eq!(b.state(), BreakerState::Closed, "{:?}", b.window());
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cool_down_a_successful_probe_closes_it() {
        let b = Breaker::new("test", settings());
        b.trip();
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert!(refused(&succeed(&b).await));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(b.would_admit());
        // Half-open: three probes at once, no more.
        let permits: Vec<_> = (0..3).map(|_| b.admit()).collect();
        assert!(permits.iter().all(Option::is_some));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.would_admit());
        assert!(b.admit().is_none());
        b.record(permits[0].unwrap(), Outcome::Success);
        assert_eq!(b.state(), BreakerState::Closed);
        // Closed with a fresh window: one failure does not re-open it.
        let _ = fail(&b).await;
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again_for_another_cool_down() {
        let b = Breaker::new("test", settings());
        b.trip();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!refused(&fail(&b).await));
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(refused(&succeed(&b).await));
        tokio::time::advance(Duration::from_millis(600)).await;
        succeed(&b).await.unwrap();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_that_never_report_are_replaced_after_a_cool_down() {
        let b = Breaker::new("test", settings());
        b.trip();
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..3 {
            let _lost = b.admit().unwrap();
        }
        assert!(b.admit().is_none());
        tokio::time::advance(Duration::from_secs(2)).await;
        let p = b.admit().expect("a new probe");
        b.record(p, Outcome::Success);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_counts_as_a_failure_when_it_crosses_the_threshold() {
        let b = Breaker::new("test", settings());
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, StockError>(())
        };
        // Three stalled calls at once: the breaker opens after 1 s, while
        // they are still running; each still gets its own answer.
        let started = Instant::now();
        let calls = futures::future::join_all((0..3).map(|_| async {
            let r = b.run(slow(), stock_refused, any_stock).await;
            (r, b.state())
        }));
        let watcher = async {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            b.state()
        };
        let (results, at_1100ms) = tokio::join!(calls, watcher);
        assert_eq!(at_1100ms, BreakerState::Open);
        assert!(results.iter().all(|(r, _)| r.is_ok()));
        assert!(started.elapsed() >= Duration::from_secs(3));
        // A fast call is a success.
        let b = Breaker::new("test", settings());
        for _ in 0..10 {
            succeed(&b).await.unwrap();
        }
        assert_eq!(b.window(), (10, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn store_conflicts_are_answers_not_failures() {
        let b = Breaker::new("test", settings());
        for _ in 0..10 {
            let r: Result<(), StoreError> = b
                .run(
                    async { Err(StoreError::Conflict("dup".into())) },
                    store_refused,
                    store_failed,
                )
                .await;
            assert!(matches!(r, Err(StoreError::Conflict(_))));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.window(), (10, 0));
    }
}
