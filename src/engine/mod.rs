//! The sale engine: every sale's live state and the purchase decision.
//!
//! Rejections are answered from memory, cheapest first — unknown sale, an
//! idempotent replay, window (not started / ended), the local sold-out flag,
//! per-user rate limit — and only then comes the atomic deduction in the
//! [`Ledger`]. An accepted order is committed durably by the order store
//! before the buyer hears `201`; if that fails the units go back.
//!
//! Follow-up work after a store call (returning units, recording the
//! idempotent answer) runs in a spawned task, so a client that hangs up
//! mid-request can never leave the in-memory state out of step with the store.

pub mod distributed;
pub mod idempotency;
pub mod intents;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::backend::redis::{Decision, Reservation};
use crate::backend::{OrderStore, StoreError};
use crate::domain::order::Transition;
use crate::domain::sale::Window;
use crate::domain::{now_ms, IdGenerator, Ledger, NewSale, Order, OrderStatus, Reserve, Sale};
use crate::telemetry::PurchaseMetrics;
use distributed::Distributed;
use idempotency::{Claim, IdempotencyCache, Recorded};
use intents::{IntentRecorder, MissedBuyers};

/// The rejections memory alone decides, cheapest first: the sale window
/// (counted here), then the local sold-out flag (counted by
/// [`Engine::reject`], which also records the intent).
fn memory_rejection(rt: &SaleRuntime, quantity: u32, now: i64) -> Option<PurchaseOutcome> {
    match rt.sale.window(now) {
        Window::Upcoming => {
            bump(&rt.counters.not_started);
            Some(PurchaseOutcome::NotStarted)
        }
        Window::Ended => {
            bump(&rt.counters.ended);
            Some(PurchaseOutcome::Ended)
        }
        Window::Open => rt
            .ledger
            .is_sold_out_for(quantity)
            .then_some(PurchaseOutcome::SoldOut),
    }
}

/// Per-sale counters reported by the stats endpoint (since process start,
/// except `orders_persisted`, which is rebuilt from the store).
#[derive(Debug, Default)]
pub struct SaleCounters {
    /// Purchase attempts that reached this sale.
    pub attempts: AtomicU64,
    /// Orders accepted.
    pub accepted: AtomicU64,
    /// Orders in the order store (any status).
    pub orders_persisted: AtomicU64,
    /// Rejected: sold out.
    pub sold_out: AtomicU64,
    /// Rejected: per-user limit.
    pub limit_reached: AtomicU64,
    /// Rejected: before the start.
    pub not_started: AtomicU64,
    /// Rejected: after the end.
    pub ended: AtomicU64,
    /// Rejected: per-user rate limit.
    pub rate_limited: AtomicU64,
    /// Answered from the idempotency cache.
    pub replayed: AtomicU64,
    /// Orders paid.
    pub paid: AtomicU64,
    /// Orders expired (stock returned).
    pub expired: AtomicU64,
    /// Orders cancelled (stock returned).
    pub cancelled: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One sale's live state.
#[derive(Debug)]
pub struct SaleRuntime {
    /// The sale as stored.
    pub sale: Sale,
    /// Stock and holdings.
    pub ledger: Ledger,
    /// Counters for stats.
    pub counters: SaleCounters,
    /// Users already recorded as missed.
    pub missed: MissedBuyers,
    /// False while the shared stock does not hold this sale (Redis came back
    /// empty): purchases answer `503` until it is re-seeded.
    pub seeded: AtomicBool,
}

impl SaleRuntime {
    fn new(sale: Sale) -> Self {
        Self {
            ledger: Ledger::new(sale.stock, sale.per_user_limit),
            sale,
            counters: SaleCounters::default(),
            missed: MissedBuyers::default(),
            seeded: AtomicBool::new(true),
        }
    }
}

/// A purchase's answer; rejections are values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurchaseOutcome {
    /// Accepted and durable; `replayed` when answered from an earlier
    /// request with the same `Idempotency-Key`.
    Accepted {
        /// The order.
        order: Order,
        /// True for an idempotent replay.
        replayed: bool,
    },
    /// Not enough units left.
    SoldOut,
    /// Over the per-user limit.
    LimitReached,
    /// Before the sale starts.
    NotStarted,
    /// After the sale ends.
    Ended,
    /// Over the per-user request rate; retry after this many seconds.
    RateLimited(u64),
}

impl PurchaseOutcome {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::SoldOut => "sold_out",
            Self::LimitReached => "limit_reached",
            Self::NotStarted => "not_started",
            Self::Ended => "ended",
            Self::RateLimited(_) => "rate_limited",
        }
    }

    fn from_recorded(r: Recorded) -> Self {
        match r {
            Recorded::Accepted(order) => Self::Accepted {
                order,
                replayed: true,
            },
            Recorded::Rejected("limit_reached") => Self::LimitReached,
            Recorded::Rejected("not_started") => Self::NotStarted,
            Recorded::Rejected("ended") => Self::Ended,
            Recorded::Rejected(_) => Self::SoldOut,
        }
    }
}

/// Failures of engine operations (domain rejections are not failures).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such sale or order (or not the caller's order).
    #[error("not found")]
    NotFound,
    /// The request is malformed or conflicts with an earlier one.
    #[error("{0}")]
    Invalid(String),
    /// The order is not in a state that allows the change.
    #[error("order is {}", .0.status.as_str())]
    WrongState(Box<Order>),
    /// An earlier request with the same `Idempotency-Key` failed while this
    /// one waited for it; the buyer should retry.
    #[error("a concurrent request with this Idempotency-Key failed; retry")]
    RetryLater,
    /// The shared stock or the order queue cannot take purchases right now
    /// (unreachable, or the sale is being re-seeded); nothing was promised.
    #[error("not ready: {0}")]
    NotReady(&'static str),
    /// The store failed; nothing was promised to the buyer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings of the engine's protective layers.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Purchase requests per second per user (0 = unlimited).
    pub user_rate_per_sec: u32,
    /// Burst allowed above that rate.
    pub user_burst: u32,
    /// Node id baked into generated ids (0..1024).
    pub node_id: u16,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            user_rate_per_sec: 20,
            user_burst: 40,
            node_id: 0,
        }
    }
}

/// Every sale's state plus the store behind it.
pub struct Engine {
    sales: DashMap<u64, Arc<SaleRuntime>>,
    store: Arc<dyn OrderStore>,
    ids: IdGenerator,
    idempotency: IdempotencyCache,
    intents: IntentRecorder,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    metrics: PurchaseMetrics,
    cluster: Option<Arc<Distributed>>,
    /// Sale ids recently looked up in the store and not found (distributed
    /// mode), so a flood of bad ids does not become a flood of queries.
    unknown: quick_cache::sync::Cache<u64, i64>,
}

impl Engine {
    /// Rebuilds the engine from the store: every sale, every holding, every
    /// keyed order. Returns the engine and the intent writer's task (which
    /// ends once `stop` is cancelled and its queue is drained).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn load(
        store: Arc<dyn OrderStore>,
        settings: &EngineSettings,
        stop: tokio_util::sync::CancellationToken,
        cluster: Option<Arc<Distributed>>,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), StoreError> {
        let snapshot = store.load().await?;
        let ids = IdGenerator::new(settings.node_id);
        ids.observe(snapshot.max_id);
        let sales = DashMap::new();
        for sale in snapshot.sales {
            sales.insert(sale.id, Arc::new(SaleRuntime::new(sale)));
        }
        // Distributed, Redis holds stock and holdings; the local ledger only
        // mirrors the remaining count, which the stock watcher fills in.
        for h in snapshot.holdings.iter().filter(|_| cluster.is_none()) {
            if let Some(rt) = sales.get(&h.sale_id) {
                rt.ledger.restore(&h.user_id, h.units);
            }
        }
        for (sale_id, n) in snapshot.persisted {
            if let Some(rt) = sales.get(&sale_id) {
                rt.counters.orders_persisted.store(n, Ordering::Relaxed);
            }
        }
        let idempotency = IdempotencyCache::default();
        for order in &snapshot.keyed_orders {
            idempotency.restore(order);
        }
        let limiter = NonZeroU32::new(settings.user_rate_per_sec).map(|rate| {
            let burst = NonZeroU32::new(settings.user_burst.max(settings.user_rate_per_sec))
                .unwrap_or(rate);
            RateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst))
        });
        let (intents, intent_task) = IntentRecorder::start(store.clone(), stop);
        tracing::info!(
            sales = sales.len(),
            holdings = snapshot.holdings.len(),
            "engine state rebuilt from the order store"
        );
        let engine = Arc::new(Self {
            sales,
            store,
            ids,
            idempotency,
            intents,
            limiter,
            metrics: PurchaseMetrics::new(),
            cluster,
            unknown: quick_cache::sync::Cache::new(10_000),
        });
        Ok((engine, intent_task))
    }

    /// The store behind the engine.
    pub fn store(&self) -> &Arc<dyn OrderStore> {
        &self.store
    }

    /// Looks a sale up in memory.
    pub fn sale(&self, sale_id: u64) -> Option<Arc<SaleRuntime>> {
        self.sales.get(&sale_id).map(|s| s.clone())
    }

    /// The distributed backends, when the node runs over Redis + RabbitMQ.
    pub fn cluster(&self) -> Option<&Arc<Distributed>> {
        self.cluster.as_ref()
    }

    /// Looks a sale up; in the distributed mode a sale another node created
    /// is read from the order store (misses are remembered for a second).
    ///
    /// # Errors
    /// [`EngineError::NotFound`] when there is no such sale.
    pub async fn find_sale(&self, sale_id: u64) -> Result<Arc<SaleRuntime>, EngineError> {
        if let Some(rt) = self.sale(sale_id) {
            return Ok(rt);
        }
        let Some(cluster) = &self.cluster else {
            return Err(EngineError::NotFound);
        };
        let now = now_ms();
        if self.unknown.get(&sale_id).is_some_and(|until| until > now) {
            return Err(EngineError::NotFound);
        }
        let Some(sale) = self.store.get_sale(sale_id).await? else {
            self.unknown.insert(sale_id, now + 1000);
            return Err(EngineError::NotFound);
        };
        let rt = Arc::new(SaleRuntime::new(sale));
        match cluster.stock.state(sale_id).await {
            Ok(Some(st)) => rt.ledger.mirror_remaining(st.remaining()),
            Ok(None) => rt.seeded.store(false, Ordering::Release),
            Err(e) => tracing::debug!(error = %e, "reading a sale's stock"),
        }
        Ok(self.sales.entry(sale_id).or_insert(rt).clone())
    }

    /// Every sale (for the dashboard and metrics).
    pub fn sales(&self) -> Vec<Arc<SaleRuntime>> {
        let mut all: Vec<_> = self.sales.iter().map(|s| s.clone()).collect();
        all.sort_by_key(|s| s.sale.id);
        all
    }

    /// Creates a sale durably and opens it for business at its start time.
    ///
    /// # Errors
    /// [`EngineError::Store`] when the sale could not be stored.
    pub async fn create_sale(&self, new: NewSale) -> Result<Arc<SaleRuntime>, EngineError> {
        let sale = Sale::from_new(self.ids.next_id(), new, now_ms());
        self.store.create_sale(&sale).await?;
        if let Some(cluster) = &self.cluster {
            // The sale is in the database first: a seed that fails here is
            // redone by the stock watcher, which re-seeds missing sales.
            if let Err(e) = cluster.stock.seed_new(&sale).await {
                tracing::warn!(error = %e, sale_id = sale.id, "publishing a new sale to Redis");
            }
        }
        let rt = Arc::new(SaleRuntime::new(sale));
        self.sales.insert(rt.sale.id, rt.clone());
        Ok(rt)
    }

    /// Tries to buy `quantity` units of `sale_id` for `user`.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] for an unknown sale, [`EngineError::Invalid`]
    /// for a reused idempotency key, [`EngineError::Store`] when the order
    /// could not be made durable (no units are held then).
    pub async fn purchase(
        self: &Arc<Self>,
        sale_id: u64,
        user: String,
        quantity: u32,
        key: Option<String>,
    ) -> Result<PurchaseOutcome, EngineError> {
        let started = std::time::Instant::now();
        let result = self.purchase_inner(sale_id, user, quantity, key).await;
        self.metrics.observe(&result, started.elapsed());
        result
    }

    /// Answers a purchase without awaiting anything when the answer is a
    /// rejection known from memory alone: the sale is outside its window or
    /// sold out. `None` means "take the full path" (which re-checks
    /// everything). Only for requests without an `Idempotency-Key`.
    pub fn try_reject_fast(
        &self,
        sale_id: u64,
        user: &str,
        quantity: u32,
    ) -> Option<PurchaseOutcome> {
        let started = std::time::Instant::now();
        let rt = self.sales.get(&sale_id)?;
        let now = now_ms();
        let outcome = memory_rejection(&rt, quantity, now)?;
        let outcome = self.reject(&rt, user, quantity, outcome, None, now);
        bump(&rt.counters.attempts);
        let result = Ok(outcome);
        self.metrics.observe(&result, started.elapsed());
        result.ok()
    }

    /// [`Self::try_reject_fast`] for a request with an `Idempotency-Key`,
    /// with the full path's bookkeeping: a rejection recorded under the key
    /// is replayed; for an unused key, a closed window is answered (the key
    /// stays unused, as on the full path) and a sold-out rejection is first
    /// recorded under the key. `None` — take the full path — for an
    /// acceptance to replay, a claim in flight, a key used for another
    /// purchase, or a sale memory cannot refuse.
    pub fn try_reject_fast_keyed(
        &self,
        sale_id: u64,
        user: &str,
        quantity: u32,
        key: &str,
    ) -> Option<PurchaseOutcome> {
        let started = std::time::Instant::now();
        let rt = self.sales.get(&sale_id)?;
        let now = now_ms();
        let mut fresh = None;
        // For an unused key: the memory-only answer, recorded under the key
        // when the full path would record it (sold out, not the window).
        let peek = self
            .idempotency
            .peek_or_record(user, key, sale_id, quantity, now, || {
                let outcome = memory_rejection(&rt, quantity, now)?;
                let record = (outcome == PurchaseOutcome::SoldOut)
                    .then(|| Recorded::Rejected(outcome.label()));
                fresh = Some(outcome);
                record
            });
        let outcome = match (peek, fresh) {
            (idempotency::Peek::Replay(recorded @ Recorded::Rejected(_)), _) => {
                bump(&rt.counters.replayed);
                PurchaseOutcome::from_recorded(recorded)
            }
            (idempotency::Peek::Vacant, Some(outcome)) => {
                self.reject(&rt, user, quantity, outcome, None, now)
            }
            _ => return None,
        };
        bump(&rt.counters.attempts);
        let result = Ok(outcome);
        self.metrics.observe(&result, started.elapsed());
        result.ok()
    }

    async fn purchase_inner(
        self: &Arc<Self>,
        sale_id: u64,
        user: String,
        quantity: u32,
        key: Option<String>,
    ) -> Result<PurchaseOutcome, EngineError> {
        let rt = match self.sale(sale_id) {
            Some(rt) => rt,
            None => Box::pin(self.find_sale(sale_id)).await?,
        };
        bump(&rt.counters.attempts);
        let now = now_ms();
        // The keyed and the accepted paths await; they are boxed so the
        // flood's rejection path stays a small future that is cheap to move.
        let guard = match key {
            None => None,
            Some(key) => {
                match Box::pin(self.idempotency.claim(&user, &key, sale_id, quantity)).await {
                    Claim::Fresh(guard) => Some((guard, key)),
                    Claim::Replay(recorded) => {
                        bump(&rt.counters.replayed);
                        return Ok(PurchaseOutcome::from_recorded(recorded));
                    }
                    Claim::Mismatch => {
                        return Err(EngineError::Invalid(
                            "Idempotency-Key was already used for a different purchase".into(),
                        ))
                    }
                    Claim::Retry => return Err(EngineError::RetryLater),
                }
            }
        };
        if let Some(cluster) = &self.cluster {
            if let Err(outcome) = self.precheck(&rt, &user, quantity, now) {
                return Ok(self.reject(&rt, &user, quantity, outcome, guard, now));
            }
            let engine = self.clone();
            let cluster = cluster.clone();
            return tokio::spawn(async move {
                engine
                    .purchase_remote(&cluster, rt, user, quantity, guard, now)
                    .await
            })
            .await
            .map_err(|e| EngineError::Store(StoreError::Backend(e.to_string())))?;
        }
        match self.admit(&rt, &user, quantity, now) {
            Ok(()) => {
                let (guard, key) = match guard {
                    Some((g, k)) => (Some(g), Some(k)),
                    None => (None, None),
                };
                let order = Order {
                    id: self.ids.next_id(),
                    sale_id,
                    user_id: user,
                    quantity,
                    status: OrderStatus::PendingPayment,
                    idempotency_key: key,
                    created_at_ms: now,
                    updated_at_ms: now,
                    expires_at_ms: rt.sale.payment_window_secs.map(|w| now + w as i64 * 1000),
                };
                let engine = self.clone();
                // Detached so the commit's follow-up runs even if the client
                // hangs up: on failure the units must go back.
                tokio::spawn(async move { engine.commit(rt, order, guard).await })
                    .await
                    .map_err(|e| EngineError::Store(StoreError::Backend(e.to_string())))?
            }
            Err(outcome) => Ok(self.reject(&rt, &user, quantity, outcome, guard, now)),
        }
    }

    /// The synchronous admission steps, cheapest first: window, the local
    /// sold-out flag, the per-user rate limit, then the atomic reservation.
    /// `Ok` means the units are now held for `user`.
    fn admit(
        &self,
        rt: &SaleRuntime,
        user: &str,
        quantity: u32,
        now: i64,
    ) -> Result<(), PurchaseOutcome> {
        self.precheck(rt, user, quantity, now)?;
        match rt.ledger.try_reserve(user, quantity) {
            Reserve::Granted => Ok(()),
            Reserve::SoldOut => Err(PurchaseOutcome::SoldOut),
            Reserve::LimitReached => Err(PurchaseOutcome::LimitReached),
        }
    }

    /// The checks before any stock is touched: window, the local sold-out
    /// flag, the per-user rate limit.
    fn precheck(
        &self,
        rt: &SaleRuntime,
        user: &str,
        quantity: u32,
        now: i64,
    ) -> Result<(), PurchaseOutcome> {
        if let Some(outcome) = memory_rejection(rt, quantity, now) {
            return Err(outcome);
        }
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check_key(&user.to_owned()) {
                bump(&rt.counters.rate_limited);
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                return Err(PurchaseOutcome::RateLimited(wait.as_secs().max(1)));
            }
        }
        Ok(())
    }

    /// The distributed purchase: one (coalesced) Redis script call decides
    /// and writes the outbox; an accepted order is answered only once the
    /// broker confirmed it. See [`distributed`] for the steps.
    async fn purchase_remote(
        &self,
        cluster: &Distributed,
        rt: Arc<SaleRuntime>,
        user: String,
        quantity: u32,
        guard: Option<(idempotency::Guard, String)>,
        now: i64,
    ) -> Result<PurchaseOutcome, EngineError> {
        if !rt.seeded.load(Ordering::Acquire) {
            return Err(EngineError::NotReady("the sale is being restored; retry"));
        }
        if !cluster.queue.is_up() {
            // Circuit open: taking stock now would leave the buyer without
            // an answer, so nothing is taken.
            return Err(EngineError::NotReady(
                "the order queue is unreachable; retry",
            ));
        }
        let order = Order {
            id: self.ids.next_id(),
            sale_id: rt.sale.id,
            user_id: user,
            quantity,
            status: OrderStatus::PendingPayment,
            idempotency_key: guard.as_ref().map(|(_, k)| k.clone()),
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: rt.sale.payment_window_secs.map(|w| now + w as i64 * 1000),
        };
        let payload = order.to_wire();
        let reservation = Reservation {
            order: order.clone(),
            payload: payload.clone(),
        };
        let decision = match cluster.stock.reserve(reservation).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "redis purchase failed");
                return Err(EngineError::NotReady(
                    "the stock service is unreachable; retry",
                ));
            }
        };
        let outcome = match decision {
            Decision::Accepted { remaining } => {
                rt.ledger.mirror_remaining(remaining);
                let mut published = cluster.publish_order(payload.clone()).await;
                if published.is_err() {
                    // One quick retry on a fresh channel; after that the
                    // outbox keeps the order and the relay delivers it.
                    published = cluster.publish_order(payload.clone()).await;
                }
                if let Err(e) = published {
                    tracing::warn!(error = %e, order_id = order.id, "order left in the outbox for the relay");
                    return Err(EngineError::NotReady(
                        "the order queue did not confirm; retry with the same Idempotency-Key to learn the outcome",
                    ));
                }
                cluster.confirmed(&order, payload);
                bump(&rt.counters.accepted);
                if let Some((g, _)) = guard {
                    g.finish(Recorded::Accepted(order.clone()), now);
                }
                return Ok(PurchaseOutcome::Accepted {
                    order,
                    replayed: false,
                });
            }
            Decision::Replay(first) => {
                let first = Order::from_wire(first.as_bytes())
                    .map_err(|e| EngineError::Store(StoreError::Backend(e.to_string())))?;
                if first.quantity != quantity {
                    return Err(EngineError::Invalid(
                        "Idempotency-Key was already used for a different purchase".into(),
                    ));
                }
                bump(&rt.counters.replayed);
                if let Some((g, _)) = guard {
                    g.finish(Recorded::Accepted(first.clone()), now);
                }
                return Ok(PurchaseOutcome::Accepted {
                    order: first,
                    replayed: true,
                });
            }
            Decision::SoldOut { remaining } => {
                rt.ledger.mirror_remaining(remaining);
                PurchaseOutcome::SoldOut
            }
            Decision::LimitReached => PurchaseOutcome::LimitReached,
            Decision::NotStarted => PurchaseOutcome::NotStarted,
            Decision::Ended => PurchaseOutcome::Ended,
            Decision::NotSeeded => {
                rt.seeded.store(false, Ordering::Release);
                return Err(EngineError::NotReady("the sale is being restored; retry"));
            }
        };
        Ok(self.reject(&rt, &order.user_id, quantity, outcome, guard, now))
    }

    async fn commit(
        &self,
        rt: Arc<SaleRuntime>,
        order: Order,
        guard: Option<idempotency::Guard>,
    ) -> Result<PurchaseOutcome, EngineError> {
        match self.store.commit_order(order.clone()).await {
            Ok(()) => {
                bump(&rt.counters.accepted);
                bump(&rt.counters.orders_persisted);
                if let Some(g) = guard {
                    g.finish(Recorded::Accepted(order.clone()), order.created_at_ms);
                }
                Ok(PurchaseOutcome::Accepted {
                    order,
                    replayed: false,
                })
            }
            Err(e) => {
                rt.ledger.release(&order.user_id, order.quantity);
                Err(e.into())
            }
        }
    }

    fn reject(
        &self,
        rt: &SaleRuntime,
        user: &str,
        quantity: u32,
        outcome: PurchaseOutcome,
        guard: Option<(idempotency::Guard, String)>,
        now: i64,
    ) -> PurchaseOutcome {
        match outcome {
            PurchaseOutcome::SoldOut => {
                bump(&rt.counters.sold_out);
                self.intents
                    .record(&rt.missed, rt.sale.id, user, quantity, now);
            }
            PurchaseOutcome::LimitReached => bump(&rt.counters.limit_reached),
            // Window and rate-limit answers are not recorded under the key
            // (dropping the guard frees it): a retry once the sale opens, or
            // once the buyer slows down, deserves a real try.
            _ => return outcome,
        }
        if let Some((g, _)) = guard {
            g.finish(Recorded::Rejected(outcome.label()), now);
        }
        outcome
    }

    /// Reads `user`'s order.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] when it does not exist or is someone else's.
    pub async fn order(&self, order_id: u64, user: &str) -> Result<Order, EngineError> {
        let found = match self.store.get_order(order_id).await? {
            Some(order) => Some(order),
            // Accepted here moments ago, not yet stored by a writer.
            None => self.cluster.as_ref().and_then(|c| c.recent(order_id)),
        };
        match found {
            Some(order) if order.user_id == user => Ok(order),
            _ => Err(EngineError::NotFound),
        }
    }

    /// Pays or cancels `user`'s pending order. Units return to the sale
    /// exactly once when the order leaves a stock-holding state (cancel, or
    /// a payment that arrives after the deadline and expires it instead).
    ///
    /// # Errors
    /// [`EngineError::NotFound`], [`EngineError::WrongState`] when the order
    /// is no longer pending, [`EngineError::Store`].
    pub async fn transition(
        self: &Arc<Self>,
        order_id: u64,
        user: String,
        transition: Transition,
    ) -> Result<Order, EngineError> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut report = engine
                .store
                .transition(order_id, &user, transition, now_ms())
                .await?;
            // Distributed, a just-accepted order may still be on its way
            // through the queue (absent, or stored between the conditional
            // update and the read-back, which then shows it still pending):
            // wait for the writer, briefly.
            let in_flight = |r: &Option<crate::backend::TransitionReport>| match r {
                None => true,
                Some(r) => !r.applied && r.order.status == OrderStatus::PendingPayment,
            };
            if engine.cluster.is_some() {
                for _ in 0..40 {
                    if !in_flight(&report) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    report = engine
                        .store
                        .transition(order_id, &user, transition, now_ms())
                        .await?;
                }
            }
            let report = report.ok_or(EngineError::NotFound)?;
            let order = report.order;
            if report.stock_returned {
                engine.return_stock(&order).await;
            }
            if report.applied {
                engine.publish_event(&order).await;
            }
            if report.applied {
                if let Some(rt) = engine.sale(order.sale_id) {
                    if order.status == OrderStatus::Paid {
                        bump(&rt.counters.paid);
                    }
                }
                Ok(order)
            } else {
                Err(EngineError::WrongState(Box::new(order)))
            }
        })
        .await
        .map_err(|e| EngineError::Store(StoreError::Backend(e.to_string())))?
    }

    async fn return_stock(&self, order: &Order) {
        if let Some(cluster) = &self.cluster {
            // Once per order however often it is called (the script keeps a
            // set of returned orders); a failure here is repaired by the
            // reconciler, which returns recently expired or cancelled orders.
            match cluster.stock.release(order).await {
                Ok(Some(left)) => {
                    if let Some(rt) = self.sale(order.sale_id) {
                        rt.ledger.mirror_remaining(left);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, order_id = order.id, "returning units to Redis; the reconciler will retry")
                }
            }
        }
        if let Some(rt) = self.sale(order.sale_id) {
            if self.cluster.is_none() {
                rt.ledger.release(&order.user_id, order.quantity);
            }
            match order.status {
                OrderStatus::Expired => bump(&rt.counters.expired),
                OrderStatus::Cancelled => bump(&rt.counters.cancelled),
                _ => {}
            }
            metrics::counter!("flashsale_stock_returned_units_total")
                .increment(u64::from(order.quantity));
        }
    }

    /// Expires up to `limit` overdue orders and returns their units; returns
    /// how many were expired.
    ///
    /// # Errors
    /// [`StoreError`] when the store failed (nothing was returned then).
    pub async fn expire_due(&self, limit: usize) -> Result<usize, StoreError> {
        let expired = self.store.expire_due(now_ms(), limit).await?;
        for order in &expired {
            self.return_stock(order).await;
        }
        self.publish_events(&expired).await;
        Ok(expired.len())
    }

    /// Publishes an order's new state to the event exchange (distributed
    /// mode; best effort: events feed the shop's other systems).
    pub async fn publish_event(&self, order: &Order) {
        self.publish_events(std::slice::from_ref(order)).await;
    }

    /// Publishes the new states of `orders` (all in the same status): one
    /// message whose body is a JSON array of events, routed by status
    /// (`order.accepted`, `order.paid`, `order.expired`, `order.cancelled`).
    pub async fn publish_events(&self, orders: &[Order]) {
        let (Some(cluster), Some(order)) = (&self.cluster, orders.first()) else {
            return;
        };
        let key = match order.status {
            OrderStatus::PendingPayment => "order.accepted",
            OrderStatus::Paid => "order.paid",
            OrderStatus::Expired => "order.expired",
            OrderStatus::Cancelled => "order.cancelled",
        };
        let body: Vec<serde_json::Value> = orders
            .iter()
            .map(|order| {
                serde_json::json!({
                    "order_id": order.id.to_string(),
                    "sale_id": order.sale_id.to_string(),
                    "user_id": order.user_id,
                    "quantity": order.quantity,
                    "status": order.status.as_str(),
                    "at": order.updated_at_ms,
                })
            })
            .collect();
        let body = serde_json::Value::Array(body);
        if let Err(e) = cluster
            .queue
            .publish_event(key, body.to_string().as_bytes())
            .await
        {
            tracing::debug!(error = %e, "order event not published");
        }
    }

    /// Housekeeping: forget idle rate-limiter keys and old idempotent
    /// rejections, so memory follows the active crowd.
    pub fn housekeeping(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.idempotency.evict_expired(now_ms());
    }
}
