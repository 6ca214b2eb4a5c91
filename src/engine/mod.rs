//! The sale engine: every sale's live state and the one purchase path.
//!
//! A purchase goes through the same four steps in every mode:
//!
//! 1. **admission** ([`admission`]): the ordered checks answered from memory,
//!    cheapest first — sale window, the local sold-out flag, the per-user
//!    rate limit (an idempotent replay is answered before them);
//! 2. **stock decision** ([`StockStore::reserve`]): the atomic deduction that
//!    also enforces the per-user limit — the in-memory ledger in the embedded
//!    default, one batched Redis script in the distributed mode;
//! 3. **hand-off** ([`handoff`]): the accepted order is made durable — a
//!    group commit to the order store, or a confirmed publish to the order
//!    queue — and only then
//! 4. **answer**: `201` with the order; any refusal is a [`Refusal`] value.
//!
//! What differs by mode lives behind the traits; the engine has no branch
//! on the mode. Follow-up work after a backend call that must not be lost if
//! the client hangs up (the hand-off and what depends on it) runs in a
//! spawned task.

pub mod admission;
pub mod buyer_stream;
pub mod clock;
mod detach;
pub mod events;
pub mod handoff;
pub mod idempotency;
pub mod intents;
pub mod metrics;
pub mod room;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::backend::stock::{Decision, OrderPlace, Reservation, StockStore};
use crate::backend::{Backends, OrderStore, StoreError, TransitionReport};
use crate::domain::order::Transition;
use crate::domain::sale::Window;
use crate::domain::{
    now_ms, IdGenerator, Ledger, LiveSchedule, NewSale, Order, OrderStatus, Rejection, Sale,
    SaleStatus, Schedule, WindowMove,
};
pub use admission::{Admission, Attempt, Proof, Refusal};

use events::{OrderNotifier, QueueEvents};
use handoff::{HandedOff, HandoffError, OrderHandoff, QueueHandoff, StoreHandoff};
use idempotency::{Claim, IdempotencyCache};
use intents::{IntentRecorder, MissedBuyers};
use metrics::PurchaseMetrics;

/// Sales by id, each with its number of stock buckets.
type SaleBuckets = Arc<Vec<(u64, u8)>>;

/// How many of the newest sales a node looks in for an order in flight
/// (see [`Engine::order`]).
pub const IN_FLIGHT_SALES: usize = 64;

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
    /// Rejections, by [`Rejection::index`].
    pub rejected: [AtomicU64; Rejection::ALL.len()],
    /// Answered from the idempotency cache.
    pub replayed: AtomicU64,
    /// Orders paid.
    pub paid: AtomicU64,
    /// Orders expired (stock returned).
    pub expired: AtomicU64,
    /// Orders cancelled (stock returned).
    pub cancelled: AtomicU64,
    /// The reconciler's last findings (distributed mode).
    pub reconciled: metrics::Reconciled,
}

impl SaleCounters {
    /// Rejections of this kind so far.
    pub fn rejected(&self, r: Rejection) -> u64 {
        self.rejected[r.index()].load(Ordering::Relaxed)
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One sale's live state.
#[derive(Debug)]
pub struct SaleRuntime {
    /// The sale as stored when this node loaded it. Its window may have
    /// moved since (an admin opened or closed it early): read the window
    /// with [`SaleRuntime::schedule`] / [`SaleRuntime::window`].
    pub sale: Sale,
    /// The sale's window as this node decides by: moved here by the admin
    /// endpoints and, over a shared stock, mirrored from it by the stock
    /// watcher (see [`Engine::move_window`]).
    pub schedule: LiveSchedule,
    /// Stock and holdings: the truth in the embedded default, a mirror of
    /// the remaining count kept by a shared stock.
    pub ledger: Ledger,
    /// Counters for stats.
    pub counters: SaleCounters,
    /// Users already recorded as missed.
    pub missed: MissedBuyers,
    /// False while the stock does not hold this sale (a shared stock came
    /// back empty): purchases answer `503` until it is re-seeded.
    pub seeded: AtomicBool,
}

impl SaleRuntime {
    /// Fresh live state of `sale`: every unit available, nothing counted.
    pub fn new(sale: Sale) -> Self {
        Self {
            ledger: Ledger::new(sale.stock, sale.per_user_limit),
            schedule: LiveSchedule::new(sale.schedule()),
            sale,
            counters: SaleCounters::default(),
            missed: MissedBuyers::default(),
            seeded: AtomicBool::new(true),
        }
    }

    /// The sale's window now.
    pub fn schedule(&self) -> Schedule {
        self.schedule.get()
    }

    /// Where `now_ms` falls in the sale's window now.
    pub fn window(&self, now_ms: i64) -> Window {
        self.schedule.get().window(now_ms)
    }

    /// The buyer-facing status at `now_ms`.
    pub fn status(&self, now_ms: i64) -> SaleStatus {
        self.schedule.get().status(now_ms, self.ledger.remaining())
    }

    /// The sale with its window now (a copy: not for the purchase path).
    pub fn current(&self) -> Sale {
        self.sale.clone().with_schedule(self.schedule())
    }
}

/// A purchase's answer; refusals are values.
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
    /// Refused for a business reason.
    Rejected(Refusal),
}

/// Failures of engine operations (business refusals are not failures).
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
    /// The sale's state forbids an admin's change, for the reason named
    /// in the one rejection vocabulary (opening a sale that has
    /// [`Rejection::Ended`]).
    #[error("{}", .0.spec().message)]
    Refused(Rejection),
    /// An earlier request with the same `Idempotency-Key` failed while this
    /// one waited for it; the buyer should retry.
    #[error("a concurrent request with this Idempotency-Key failed; retry")]
    RetryLater,
    /// The stock or the order queue cannot take purchases right now
    /// (unreachable, or the sale is being re-seeded); nothing was promised.
    #[error("not ready: {0}")]
    NotReady(&'static str),
    /// The store failed; nothing was promised to the buyer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn task_failed(why: String) -> EngineError {
    EngineError::Store(StoreError::Backend(why))
}

/// Settings of the engine's protective layers.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Purchase requests per second per user (0 = unlimited).
    pub user_rate_per_sec: u32,
    /// Burst allowed above that rate.
    pub user_burst: u32,
    /// Purchase requests per second per client IP (0 = unlimited).
    pub ip_rate_per_sec: u32,
    /// Burst per client IP.
    pub ip_burst: u32,
    /// Purchase attempts per second reaching one sale's stock decision
    /// (0 = unlimited).
    pub sale_rate_per_sec: u32,
    /// Burst per sale.
    pub sale_burst: u32,
    /// Node id baked into generated ids (0..1024).
    pub node_id: u16,
    /// Signs admission passes and purchase tickets (every node of a
    /// deployment must share it).
    pub pass_secret: crate::auth::Secret,
    /// The captcha verify service (`--captcha-verify-url`), if any.
    pub captcha: Option<admission::CaptchaSettings>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            user_rate_per_sec: 20,
            user_burst: 40,
            ip_rate_per_sec: 0,
            ip_burst: 0,
            sale_rate_per_sec: 0,
            sale_burst: 0,
            node_id: 0,
            pass_secret: crate::auth::Secret::generate(),
            captcha: None,
        }
    }
}

impl EngineSettings {
    /// The rate limits these settings configure.
    pub fn limits(&self) -> crate::backend::limits::Limits {
        use crate::backend::limits::{Limits, Rate};
        Limits {
            user: Rate::new(self.user_rate_per_sec, self.user_burst),
            ip: Rate::new(self.ip_rate_per_sec, self.ip_burst),
            sale: Rate::new(self.sale_rate_per_sec, self.sale_burst),
        }
    }
}

/// The roles the engine runs on.
#[derive(Clone)]
pub struct EngineParts {
    /// Sales, orders, intents.
    pub store: Arc<dyn OrderStore>,
    /// Stock decisions.
    pub stock: Arc<dyn StockStore>,
    /// The durable hand-off of accepted orders.
    pub handoff: Arc<dyn OrderHandoff>,
    /// Order state changes go here.
    pub notifier: Arc<dyn OrderNotifier>,
    /// This node's open buyer streams (fed by the notifier in the embedded
    /// default, by the events exchange's subscriber in the distributed mode).
    pub buyers: Arc<buyer_stream::BuyerStreams>,
    /// Waiting rooms.
    pub room: Arc<dyn crate::backend::room::RoomStore>,
    /// The cluster-wide rate limiter (`None`: per node).
    pub rates: Option<Arc<dyn crate::backend::limits::RateStore>>,
}

impl EngineParts {
    /// The parts for `backends`: with an order queue, accepted orders are
    /// published to it and events go to its exchange; without one, the
    /// store commits them and nobody is notified.
    pub fn from_backends(backends: &Backends) -> Self {
        let buyers = buyer_stream::BuyerStreams::new();
        let (handoff, notifier): (Arc<dyn OrderHandoff>, Arc<dyn OrderNotifier>) =
            match &backends.queue {
                Some(queue) => (
                    Arc::new(QueueHandoff::new(queue.clone(), backends.stock.clone())),
                    Arc::new(QueueEvents::new(queue.clone())),
                ),
                None => (
                    Arc::new(StoreHandoff::new(backends.store.clone())),
                    buyers.clone(),
                ),
            };
        Self {
            store: backends.store.clone(),
            stock: backends.stock.clone(),
            handoff,
            notifier,
            buyers,
            room: backends.room.clone(),
            rates: backends.rates.clone(),
        }
    }
}

/// Every sale's state plus the roles behind it.
pub struct Engine {
    sales: DashMap<u64, Arc<SaleRuntime>>,
    store: Arc<dyn OrderStore>,
    stock: Arc<dyn StockStore>,
    handoff: Arc<dyn OrderHandoff>,
    notifier: Arc<dyn OrderNotifier>,
    buyers: Arc<buyer_stream::BuyerStreams>,
    admission: Admission,
    rooms: Arc<room::Rooms>,
    gear: admission::Gear,
    clock: clock::SaleClock,
    ids: IdGenerator,
    idempotency: IdempotencyCache,
    intents: IntentRecorder,
    metrics: PurchaseMetrics,
    /// Sale ids recently looked up in the store and not found, so a flood
    /// of bad ids does not become a flood of queries.
    unknown: quick_cache::sync::Cache<u64, i64>,
    /// The store's newest sales (id, buckets) and when they were read: where
    /// an order in flight may be, for sales this node never met.
    newest: std::sync::Mutex<(i64, SaleBuckets)>,
}

impl Engine {
    /// Rebuilds the engine from the store: every sale, every holding, every
    /// keyed order. Returns the engine and the intent writer's task (which
    /// ends once `stop` is cancelled and its queue is drained).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn load(
        parts: EngineParts,
        settings: &EngineSettings,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), StoreError> {
        let EngineParts {
            store,
            stock,
            handoff,
            notifier,
            buyers,
            room,
            rates,
        } = parts;
        let gear = admission::Gear::new(
            Arc::new(room::Rooms::new(
                room,
                crate::signed::Signer::new(&settings.pass_secret, "admission"),
            )),
            &settings.pass_secret,
            settings.captcha.as_ref(),
            rates,
        );
        let snapshot = store.load().await?;
        let ids = IdGenerator::new(settings.node_id);
        ids.observe(snapshot.max_id);
        let sales = DashMap::new();
        for sale in snapshot.sales {
            sales.insert(sale.id, Arc::new(SaleRuntime::new(sale)));
        }
        for h in &snapshot.holdings {
            if let Some(rt) = sales.get(&h.sale_id) {
                stock.restore(&rt.ledger, &h.user_id, h.units);
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
        let (intents, intent_task) = IntentRecorder::start(store.clone(), stop);
        tracing::info!(
            sales = sales.len(),
            holdings = snapshot.holdings.len(),
            "engine state rebuilt from the order store"
        );
        let engine = Arc::new(Self {
            sales,
            store,
            stock,
            handoff,
            notifier,
            buyers,
            admission: Admission::standard(settings, &gear),
            rooms: gear.rooms.clone(),
            gear,
            clock: clock::SaleClock::default(),
            ids,
            idempotency,
            intents,
            metrics: PurchaseMetrics::new(),
            unknown: quick_cache::sync::Cache::new(10_000),
            newest: std::sync::Mutex::new((i64::MIN, Arc::new(Vec::new()))),
        });
        Ok((engine, intent_task))
    }

    /// The node's waiting rooms.
    pub fn rooms(&self) -> &Arc<room::Rooms> {
        &self.rooms
    }

    /// What the front-door checks work with (tickets, challenges, captcha).
    pub fn gear(&self) -> &admission::Gear {
        &self.gear
    }

    /// The order store behind the engine.
    pub fn store(&self) -> &Arc<dyn OrderStore> {
        &self.store
    }

    /// The stock behind the engine.
    pub fn stock(&self) -> &Arc<dyn StockStore> {
        &self.stock
    }

    /// The clock the sale window is answered by (see [`clock`]).
    pub fn clock(&self) -> &clock::SaleClock {
        &self.clock
    }

    /// Looks a sale up in memory.
    pub fn sale(&self, sale_id: u64) -> Option<Arc<SaleRuntime>> {
        self.sales.get(&sale_id).map(|s| s.clone())
    }

    /// Looks a sale up; a sale this node does not know yet (another node
    /// created it) is read from the order store and brought in step with
    /// the stock. Misses are remembered for a second.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] when there is no such sale.
    pub async fn find_sale(&self, sale_id: u64) -> Result<Arc<SaleRuntime>, EngineError> {
        if let Some(rt) = self.sale(sale_id) {
            return Ok(rt);
        }
        let now = now_ms();
        if self.unknown.get(&sale_id).is_some_and(|until| until > now) {
            return Err(EngineError::NotFound);
        }
        let Some(sale) = self.store.get_sale(sale_id).await? else {
            self.unknown.insert(sale_id, now + 1000);
            return Err(EngineError::NotFound);
        };
        let rt = Arc::new(SaleRuntime::new(sale));
        match self.stock.sync(&rt.ledger, &rt.schedule, sale_id).await {
            Ok(seeded) => rt.seeded.store(seeded, Ordering::Release),
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
        let sale = Sale::from_new(self.ids.next_id(), new, self.clock.now_ms());
        self.store.create_sale(&sale).await?;
        // The sale is in the store first: a seed that fails here is redone
        // by the stock watcher, which re-seeds missing sales.
        if let Err(e) = self.stock.seed_new(&sale).await {
            tracing::warn!(error = %e, sale_id = sale.id, "publishing a new sale to the stock");
        }
        let rt = Arc::new(SaleRuntime::new(sale));
        self.sales.insert(rt.sale.id, rt.clone());
        Ok(rt)
    }

    /// Opens (`WindowMove::Open`) or closes (`WindowMove::Close`) a sale
    /// now — by the clock that decides the window: the shared stock's
    /// (Redis `TIME`) in the distributed mode, the sale clock otherwise —
    /// and returns it. Idempotent: opening an open sale or closing an ended one
    /// changes nothing.
    ///
    /// The order store is the truth (a compare-and-set on the stored
    /// window, so moves on two nodes cannot undo each other; a restart
    /// keeps the move). Then the shared stock, whose purchase script
    /// decides every sale in the distributed mode by the window it holds —
    /// so a close stops sales on every node as soon as it is written there
    /// — and last this node's live window. Other nodes' live windows (their
    /// early answers and waiting rooms) follow within a stock-watcher tick
    /// (250 ms): they mirror the window from the shared stock with the
    /// counters they already read. The window is pushed to the stock and
    /// here even when the store says nothing changed, so a retry after a
    /// failed step repairs it (so does the reconciler, within 5 s).
    ///
    /// Why the window goes through Redis rather than a broadcast on the
    /// events exchange (best effort: a node cut off from the broker would
    /// miss it) or a periodic read of every sale from the database (a query
    /// per sale per node per second): the script already decides by the
    /// `meta` hash the watcher already reads, so the decision is right the
    /// moment Redis is written and the mirror costs no extra round trip.
    /// The purchase path pays two atomic loads. See docs/ARCHITECTURE.md,
    /// "Moving a sale's window".
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Refused`] with
    /// [`Rejection::Ended`] when opening a sale that has ended;
    /// [`EngineError::Store`] or [`EngineError::NotReady`] when a step
    /// failed (retrying is safe).
    pub async fn move_window(
        &self,
        sale_id: u64,
        how: WindowMove,
    ) -> Result<Arc<SaleRuntime>, EngineError> {
        let rt = self.find_sale(sale_id).await?;
        let mut moved = None;
        // A lost compare-and-set means another admin moved the window first:
        // read it again and decide anew (moves only bring times earlier, so
        // this settles at once).
        for _ in 0..8 {
            let stored = self
                .store
                .get_sale(sale_id)
                .await?
                .ok_or(EngineError::NotFound)?
                .schedule();
            let to = how
                .apply(stored, self.deciding_now().await?)
                .map_err(EngineError::Refused)?;
            if to == stored || self.store.move_schedule(sale_id, stored, to).await? {
                moved = Some(to);
                break;
            }
        }
        let schedule = moved.ok_or(EngineError::NotReady(
            "the sale's window kept changing; retry",
        ))?;
        self.stock
            .set_schedule(sale_id, schedule)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, sale_id, "moving the window in the shared stock");
                EngineError::NotReady("the stock service is unreachable; retry")
            })?;
        rt.schedule.advance(schedule);
        tracing::info!(
            sale_id,
            ?how,
            starts_at_ms = schedule.starts_at_ms,
            ends_at_ms = schedule.ends_at_ms,
            "sale window moved"
        );
        Ok(rt)
    }

    /// Now on the clock that decides the window: the shared stock's own
    /// (read, not estimated: a close must be "now" for the script that
    /// decides the next purchase), or this node's sale clock when one
    /// process decides.
    async fn deciding_now(&self) -> Result<i64, EngineError> {
        match self.stock.server_time_ms().await {
            Ok(Some(now)) => Ok(now),
            Ok(None) => Ok(self.clock.now_ms()),
            Err(e) => {
                tracing::debug!(error = %e, "reading the shared clock");
                Err(EngineError::NotReady(
                    "the stock service is unreachable; retry",
                ))
            }
        }
    }

    /// Tries to buy `quantity` units of `sale_id` for `user`.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] for an unknown sale, [`EngineError::Invalid`]
    /// for a reused idempotency key, [`EngineError::NotReady`] or
    /// [`EngineError::Store`] when the order could not be made durable (no
    /// units are held then, or the relay delivers the order).
    pub async fn purchase(
        self: &Arc<Self>,
        sale_id: u64,
        user: String,
        quantity: u32,
        key: Option<String>,
    ) -> Result<PurchaseOutcome, EngineError> {
        self.purchase_with(sale_id, user, quantity, key, Proof::default())
            .await
    }

    /// [`Self::purchase`] for a request that carries `proof` for the sale's
    /// front-door checks (a ticket, a pass, a challenge's solution, …).
    ///
    /// # Errors
    /// As [`Self::purchase`].
    pub async fn purchase_with(
        self: &Arc<Self>,
        sale_id: u64,
        user: String,
        quantity: u32,
        key: Option<String>,
        proof: Proof,
    ) -> Result<PurchaseOutcome, EngineError> {
        let started = std::time::Instant::now();
        let result = self
            .purchase_inner(sale_id, user, quantity, key, proof)
            .await;
        self.metrics.observe(&result, started.elapsed());
        result
    }

    /// Answers a purchase without awaiting anything when the leading pure
    /// admission checks refuse it (the sale is outside its window or sold
    /// out). `None` means "take the full path" (which re-checks everything).
    /// Only for requests without an `Idempotency-Key`.
    pub fn try_reject_fast(&self, sale_id: u64, user: &str, quantity: u32) -> Option<Refusal> {
        let started = std::time::Instant::now();
        let rt = self.sales.get(&sale_id)?;
        let now = self.clock.now_ms();
        let attempt = Attempt::new(&rt, user, quantity, now);
        let refusal = self.admission.refuse_early(&attempt)?;
        bump(&rt.counters.attempts);
        let outcome = self.reject(&rt, user, quantity, refusal, None, now);
        self.metrics.observe(&Ok(outcome), started.elapsed());
        Some(refusal)
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
    ) -> Option<Refusal> {
        let started = std::time::Instant::now();
        let rt = self.sales.get(&sale_id)?;
        let now = self.clock.now_ms();
        let attempt = Attempt::new(&rt, user, quantity, now);
        let mut fresh = None;
        // For an unused key: the early answer, recorded under the key when
        // the full path would record it (see `Spec::recorded`).
        let peek = self
            .idempotency
            .peek_or_record(user, key, sale_id, quantity, now, || {
                let refusal = self.admission.refuse_early(&attempt)?;
                fresh = Some(refusal);
                refusal
                    .reason
                    .spec()
                    .recorded
                    .then_some(Err(refusal.reason))
            });
        let refusal = match (peek, fresh) {
            (idempotency::Peek::Replay(Err(reason)), _) => {
                bump(&rt.counters.replayed);
                Refusal::from(reason)
            }
            (idempotency::Peek::Vacant, Some(refusal)) => {
                // Counted as the full path counts it; the key was recorded
                // above, so no guard is needed.
                self.reject(&rt, user, quantity, refusal, None, now);
                refusal
            }
            _ => return None,
        };
        bump(&rt.counters.attempts);
        let outcome = PurchaseOutcome::Rejected(refusal);
        self.metrics.observe(&Ok(outcome), started.elapsed());
        Some(refusal)
    }

    async fn purchase_inner(
        self: &Arc<Self>,
        sale_id: u64,
        user: String,
        quantity: u32,
        key: Option<String>,
        proof: Proof,
    ) -> Result<PurchaseOutcome, EngineError> {
        let rt = match self.sale(sale_id) {
            Some(rt) => rt,
            None => Box::pin(self.find_sale(sale_id)).await?,
        };
        bump(&rt.counters.attempts);
        let now = self.clock.now_ms();
        // The keyed and the accepted paths await; they are boxed so the
        // flood's rejection path stays a small future that is cheap to move.
        let guard = match key {
            None => None,
            Some(key) => {
                match Box::pin(self.idempotency.claim(&user, &key, sale_id, quantity)).await {
                    Claim::Fresh(guard) => Some((guard, key)),
                    Claim::Replay(recorded) => {
                        bump(&rt.counters.replayed);
                        return Ok(match recorded {
                            Ok(order) => PurchaseOutcome::Accepted {
                                order,
                                replayed: true,
                            },
                            Err(reason) => PurchaseOutcome::Rejected(reason.into()),
                        });
                    }
                    Claim::Mismatch => return Err(key_reused()),
                    Claim::Retry => return Err(EngineError::RetryLater),
                }
            }
        };
        let attempt = Attempt::with_proof(&rt, &user, quantity, now, &proof);
        // The checks' holds (one purchase in flight) live until the answer.
        let _admitted = match self.admission.admit(&attempt).await {
            Ok(admitted) => admitted,
            Err(refusal) => return Ok(self.reject(&rt, &user, quantity, refusal, guard, now)),
        };
        Box::pin(self.decide(rt.clone(), user, quantity, guard, now)).await
    }

    /// Steps 2 to 4: the stock decision, the hand-off, the answer.
    async fn decide(
        self: &Arc<Self>,
        rt: Arc<SaleRuntime>,
        user: String,
        quantity: u32,
        guard: Option<(idempotency::Guard, String)>,
        now: i64,
    ) -> Result<PurchaseOutcome, EngineError> {
        if !rt.seeded.load(Ordering::Acquire) {
            return Err(EngineError::NotReady("the sale is being restored; retry"));
        }
        // Taking stock now would leave the buyer without an answer.
        self.handoff.ready().map_err(EngineError::NotReady)?;
        let reservation = Arc::new(Reservation::new(Order {
            id: self.ids.next_id(),
            sale_id: rt.sale.id,
            user_id: user,
            quantity,
            status: OrderStatus::PendingPayment,
            idempotency_key: guard.as_ref().map(|(_, k)| k.clone()),
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: rt.sale.payment_window_secs.map(|w| now + w as i64 * 1000),
        }));
        let decision = match self
            .stock
            .reserve(rt.schedule(), &rt.ledger, reservation.clone())
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "the stock decision failed");
                return Err(EngineError::NotReady(
                    "the stock service is unreachable; retry",
                ));
            }
        };
        let guard = guard.map(|(g, _)| g);
        match decision {
            Decision::Accepted => {
                // Once units are taken, the hand-off and its follow-up
                // (units back on failure) run to the end even if the client
                // hangs up: in this task, or in one of their own from then.
                let engine = self.clone();
                detach::finish_detached(
                    async move { engine.hand_off(rt, reservation, guard).await },
                )
                .await
                .map_err(task_failed)?
            }
            Decision::Replay(first) => {
                if first.quantity != quantity {
                    return Err(key_reused());
                }
                bump(&rt.counters.replayed);
                if let Some(g) = guard {
                    g.finish(Ok((*first).clone()), now);
                }
                Ok(PurchaseOutcome::Accepted {
                    order: *first,
                    replayed: true,
                })
            }
            Decision::Rejected(reason) => {
                let user = &reservation.order.user_id;
                let refusal = reason.into();
                Ok(self.reject_guarded(&rt, user, quantity, refusal, guard, now))
            }
            Decision::NotSeeded => {
                rt.seeded.store(false, Ordering::Release);
                Err(EngineError::NotReady("the sale is being restored; retry"))
            }
        }
    }

    async fn hand_off(
        &self,
        rt: Arc<SaleRuntime>,
        reservation: Arc<Reservation>,
        guard: Option<idempotency::Guard>,
    ) -> Result<PurchaseOutcome, EngineError> {
        match self.handoff.hand_off(&reservation).await {
            Ok(to) => {
                bump(&rt.counters.accepted);
                if to == HandedOff::Stored {
                    bump(&rt.counters.orders_persisted);
                }
                let order = Arc::try_unwrap(reservation)
                    .map(|r| r.order)
                    .unwrap_or_else(|r| r.order.clone());
                // Stored here (no queue): the node's own streams hear it now;
                // a queued order is announced by the writer that stores it.
                if to == HandedOff::Stored {
                    self.buyers
                        .publish(std::iter::once(&order).map(buyer_stream::OrderEvent::from));
                }
                if let Some(g) = guard {
                    g.finish(Ok(order.clone()), order.created_at_ms);
                }
                Ok(PurchaseOutcome::Accepted {
                    order,
                    replayed: false,
                })
            }
            Err(HandoffError::NotDurable(e)) => {
                if let Err(release) = self.stock.release(&rt.ledger, &reservation.order).await {
                    tracing::warn!(error = %release, "returning the units of an order that did not become durable");
                }
                Err(e.into())
            }
            Err(HandoffError::Unconfirmed(why)) => Err(EngineError::NotReady(why)),
        }
    }

    /// Counts a refusal, records a missed buyer, and remembers the answer
    /// under the key when the rejection is one that is remembered.
    fn reject(
        &self,
        rt: &SaleRuntime,
        user: &str,
        quantity: u32,
        refusal: Refusal,
        guard: Option<(idempotency::Guard, String)>,
        now: i64,
    ) -> PurchaseOutcome {
        self.reject_guarded(rt, user, quantity, refusal, guard.map(|(g, _)| g), now)
    }

    fn reject_guarded(
        &self,
        rt: &SaleRuntime,
        user: &str,
        quantity: u32,
        refusal: Refusal,
        guard: Option<idempotency::Guard>,
        now: i64,
    ) -> PurchaseOutcome {
        let reason = refusal.reason;
        bump(&rt.counters.rejected[reason.index()]);
        if reason == Rejection::SoldOut {
            self.intents
                .record(&rt.missed, rt.sale.id, user, quantity, now);
        }
        // Dropping an unfinished guard frees the key: a window or rate answer
        // is not remembered (see `Spec::recorded`).
        if let (Some(g), true) = (guard, reason.spec().recorded) {
            g.finish(Err(reason), now);
        }
        PurchaseOutcome::Rejected(refusal)
    }

    /// Reads `user`'s order.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] when it does not exist or is someone else's.
    pub async fn order(&self, order_id: u64, user: &str) -> Result<Order, EngineError> {
        let found = match self.store.get_order(order_id).await? {
            Some(order) => Some(order),
            // Handed off here moments ago, not yet stored by a writer.
            None => match self.handoff.recent(order_id) {
                Some(order) => Some(order),
                None => self.in_flight_order(order_id, user).await,
            },
        };
        match found {
            Some(order) if order.user_id == user => Ok(order),
            _ => Err(EngineError::NotFound),
        }
    }

    /// `user`'s order `order_id` as a shared stock holds it between the
    /// purchase (on any node) and the writer's commit: looked for in the
    /// newest [`IN_FLIGHT_SALES`] sales — those this node knows and the
    /// store's newest (read at most once a second), so a node that never
    /// met the sale finds it too — in the buyer's bucket of each. A stock
    /// or store that cannot be read answers as before the lookup existed:
    /// not found.
    async fn in_flight_order(&self, order_id: u64, user: &str) -> Option<Order> {
        if !self.stock.is_shared() {
            return None;
        }
        let mut sales: Vec<(u64, u8)> = self
            .sales
            .iter()
            .map(|rt| (rt.sale.id, rt.sale.buckets))
            .collect();
        sales.extend(self.newest_sales().await.iter().copied());
        // Ids grow with time: the newest sales are where orders are in flight.
        sales.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        sales.dedup_by_key(|s| s.0);
        sales.truncate(IN_FLIGHT_SALES);
        match self.stock.in_flight_order(order_id, user, &sales).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, order_id, "reading in-flight orders");
                None
            }
        }
    }

    /// The store's newest sales, read again when the last read is a second
    /// old (a flood of polls for unknown orders costs one query a second).
    async fn newest_sales(&self) -> SaleBuckets {
        let now = now_ms();
        {
            let cached = self.newest.lock().unwrap_or_else(|p| p.into_inner());
            if now.saturating_sub(cached.0) < 1000 {
                return cached.1.clone();
            }
        }
        let read = match self.store.newest_sales(IN_FLIGHT_SALES).await {
            Ok(sales) => Arc::new(sales.iter().map(|s| (s.id, s.buckets)).collect()),
            Err(e) => {
                tracing::debug!(error = %e, "reading the newest sales");
                Arc::new(Vec::new())
            }
        };
        *self.newest.lock().unwrap_or_else(|p| p.into_inner()) = (now, read.clone());
        read
    }

    /// Drops the in-flight records of `orders`, which a writer has stored
    /// (see [`Self::order`]). A failure only leaves records that the order
    /// store now shadows; it is logged, not retried.
    pub async fn forget_in_flight(&self, orders: &[Order]) {
        if !self.stock.is_shared() || orders.is_empty() {
            return;
        }
        // A writer-only node may not know the sale yet: its buckets decide
        // where the records are.
        let mut buckets: HashMap<u64, u8> = HashMap::new();
        let mut sale_ids: Vec<u64> = orders.iter().map(|o| o.sale_id).collect();
        sale_ids.sort_unstable();
        sale_ids.dedup();
        for sale_id in sale_ids {
            if let Ok(rt) = self.find_sale(sale_id).await {
                buckets.insert(sale_id, rt.sale.buckets);
            }
        }
        let places: Vec<OrderPlace<'_>> = orders
            .iter()
            .filter_map(|o| {
                Some(OrderPlace {
                    order_id: o.id,
                    sale_id: o.sale_id,
                    user: &o.user_id,
                    buckets: *buckets.get(&o.sale_id)?,
                })
            })
            .collect();
        if let Err(e) = self.stock.forget_in_flight(&places).await {
            tracing::warn!(error = %e, orders = orders.len(), "dropping in-flight order records");
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
        detach::finish_detached(async move {
            let settle = engine.handoff.settle_time();
            let started = std::time::Instant::now();
            let mut report = engine
                .store
                .transition(order_id, &user, transition, engine.clock.now_ms())
                .await?;
            // A just-accepted order may still be on its way to the store
            // (absent, or stored between the conditional update and the
            // read-back, which then shows it still pending): wait for it,
            // at most the hand-off's settle time.
            let in_flight = |r: &Option<TransitionReport>| match r {
                None => true,
                Some(r) => !r.applied && r.order.status == OrderStatus::PendingPayment,
            };
            while in_flight(&report) && started.elapsed() < settle {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                report = engine
                    .store
                    .transition(order_id, &user, transition, engine.clock.now_ms())
                    .await?;
            }
            let report = report.ok_or(EngineError::NotFound)?;
            let order = report.order;
            if report.stock_returned {
                engine.return_stock(&order).await;
            }
            if !report.applied {
                return Err(EngineError::WrongState(Box::new(order)));
            }
            engine.notifier.notify(std::slice::from_ref(&order)).await;
            if order.status == OrderStatus::Paid {
                if let Some(rt) = engine.sale(order.sale_id) {
                    bump(&rt.counters.paid);
                }
            }
            Ok(order)
        })
        .await
        .map_err(task_failed)?
    }

    /// Gives an order's units back (once per order: the store's conditional
    /// transition told exactly one caller to; a shared stock also keeps a
    /// set of returned orders, and the reconciler repairs a failed call).
    async fn return_stock(&self, order: &Order) {
        let Ok(rt) = self.find_sale(order.sale_id).await else {
            return;
        };
        if let Err(e) = self.stock.release(&rt.ledger, order).await {
            tracing::warn!(error = %e, order_id = order.id, "returning units; the reconciler will retry");
        }
        match order.status {
            OrderStatus::Expired => bump(&rt.counters.expired),
            OrderStatus::Cancelled => bump(&rt.counters.cancelled),
            _ => {}
        }
        ::metrics::counter!("flashsale_stock_returned_units_total")
            .increment(u64::from(order.quantity));
    }

    /// Expires up to `limit` overdue orders and returns their units; returns
    /// how many were expired.
    ///
    /// # Errors
    /// [`StoreError`] when the store failed (nothing was returned then).
    pub async fn expire_due(&self, limit: usize) -> Result<usize, StoreError> {
        let expired = self.store.expire_due(self.clock.now_ms(), limit).await?;
        for order in &expired {
            self.return_stock(order).await;
        }
        self.notifier.notify(&expired).await;
        Ok(expired.len())
    }

    /// Whether the hand-off can take orders (re-checked now, for `/readyz`).
    pub async fn handoff_probe(&self) -> bool {
        self.handoff.probe().await
    }

    /// Each guarded backend's circuit breaker (`stock`, `queue`, `store`)
    /// and its state; backends without one are left out.
    pub fn breakers(&self) -> Vec<(&'static str, crate::backend::breaker::BreakerState)> {
        [
            ("stock", self.stock.breaker_state()),
            ("queue", self.handoff.breaker_state()),
            ("store", self.store.breaker_state()),
        ]
        .into_iter()
        .filter_map(|(name, state)| state.map(|s| (name, s)))
        .collect()
    }

    /// This node's open buyer streams.
    pub fn buyer_streams(&self) -> &Arc<buyer_stream::BuyerStreams> {
        &self.buyers
    }

    /// Tells the notifier about orders that moved to one status (the order
    /// writer calls it for the orders it stored).
    pub async fn notify(&self, orders: &[Order]) {
        self.notifier.notify(orders).await;
    }

    /// Housekeeping: forget idle per-buyer admission state and old
    /// idempotent rejections, so memory follows the active crowd.
    pub fn housekeeping(&self) {
        self.admission.housekeeping();
        self.idempotency.evict_expired(now_ms());
    }
}

fn key_reused() -> EngineError {
    EngineError::Invalid("Idempotency-Key was already used for a different purchase".into())
}
