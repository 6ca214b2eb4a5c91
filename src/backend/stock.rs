//! The stock seam: who decides, atomically, that a buyer gets units.
//!
//! [`StockStore`] is business-atomic: "reserve these units of sale S for
//! user U, respecting stock, the per-user limit and the window" is one call,
//! so each implementation uses its own atomic primitive — the in-memory
//! [`Ledger`] (compare-and-swap plus a user-shard lock) in the embedded
//! default ([`super::memory::EmbeddedStock`]), one Lua script per batch in
//! Redis ([`super::redis::RedisStock`]).
//!
//! Every node keeps a [`Ledger`] per sale. For the embedded stock it is the
//! truth; for a shared stock it mirrors the remaining count, kept current by
//! the stock itself after every call, so the engine's local sold-out flag
//! never needs a network round trip. The engine never writes the mirror.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;

use super::SaleRecord;
use crate::domain::{Ledger, LiveSchedule, Order, Rejection, Sale, Schedule};

/// One purchase handed to [`StockStore::reserve`].
#[derive(Debug)]
pub struct Reservation {
    /// The order the purchase creates if accepted.
    pub order: Order,
    payload: OnceLock<String>,
}

impl Reservation {
    /// A reservation for `order`.
    pub fn new(order: Order) -> Self {
        Self {
            order,
            payload: OnceLock::new(),
        }
    }

    /// `order.to_wire()`, computed once on first use: what a shared stock's
    /// outbox and the order queue carry (the embedded default never needs
    /// it, so it never pays for it).
    pub fn payload(&self) -> &str {
        self.payload.get_or_init(|| self.order.to_wire())
    }
}

/// Where a shared stock keeps an accepted order's in-flight record: the
/// order, its buyer (whose bucket holds it) and its sale's number of
/// buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderPlace<'a> {
    /// The order.
    pub order_id: u64,
    /// Its sale.
    pub sale_id: u64,
    /// Its buyer.
    pub user: &'a str,
    /// The sale's number of stock buckets (1 = one bucket).
    pub buckets: u8,
}

/// What the stock decided for one purchase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The units are taken for the buyer (and, for a shared stock, the
    /// order is in its outbox).
    Accepted,
    /// The same buyer and `Idempotency-Key` already bought: the first order.
    Replay(Box<Order>),
    /// Refused for a business reason.
    Rejected(Rejection),
    /// The stock does not hold the sale (a shared stock that lost its data):
    /// sell nothing until it is re-seeded.
    NotSeeded,
}

/// Stock counters of one sale as a shared stock holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockState {
    /// Units on offer.
    pub stock: u64,
    /// Units held by orders (pending or paid).
    pub sold: u64,
    /// Accepted orders not yet confirmed by the order queue.
    pub outbox: u64,
}

impl StockState {
    /// Units not held by any order.
    pub fn remaining(&self) -> u64 {
        self.stock.saturating_sub(self.sold)
    }
}

/// Failure to reach the stock, or an answer it should not give.
#[derive(Debug, Clone, thiserror::Error)]
#[error("stock: {0}")]
pub struct StockError(String);

impl StockError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    fn unsupported(what: &str) -> Self {
        Self(format!("this stock does not {what}"))
    }
}

/// The stock of every sale: decides purchases and takes units back.
///
/// Methods a shared stock needs and the embedded one does not (seeding from
/// the database, the outbox, node ids) have default bodies that refuse; the
/// workers that call them only run over a shared stock.
#[async_trait]
pub trait StockStore: Send + Sync + std::fmt::Debug {
    /// True when other nodes share this stock (the distributed mode): the
    /// app then runs the stock watcher, relay and reconciler.
    fn is_shared(&self) -> bool;

    /// Decides one purchase of `reservation.order` against `ledger` (the
    /// sale's local ledger), atomically: the window by the stock's clock
    /// (the embedded stock: `schedule`, the node's live window, at the
    /// order's `created_at_ms`; a shared stock: the window it holds itself,
    /// see [`StockStore::set_schedule`]), stock and the per-user limit. A
    /// shared stock also replays a keyed purchase any node already accepted.
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be asked; no units were
    /// taken then — or, for a shared stock whose answer was lost after it
    /// decided, the order is in its outbox and the relay delivers it (the
    /// buyer was told neither way).
    async fn reserve(
        &self,
        schedule: Schedule,
        ledger: &Ledger,
        reservation: Arc<Reservation>,
    ) -> Result<Decision, StockError>;

    /// Gives an order's units back, once per order however often it is
    /// called for that order (the caller's store transition guarantees one
    /// call in the embedded default; a shared stock keeps a set of returned
    /// orders).
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached (the reconciler
    /// retries for a shared stock).
    async fn release(&self, ledger: &Ledger, order: &Order) -> Result<(), StockError>;

    /// Rebuilds one stored holding at start-up. A shared stock holds the
    /// holdings itself and ignores this.
    fn restore(&self, ledger: &Ledger, user: &str, units: u32);

    /// Publishes a brand-new sale (nothing sold); a sale already present
    /// keeps its counters.
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached (the stock
    /// watcher seeds it later).
    async fn seed_new(&self, sale: &Sale) -> Result<(), StockError>;

    /// Brings `ledger` — and `schedule`, for a stock that holds the window
    /// — in step with the stock; `Ok(false)` when the stock does not hold
    /// the sale (it must be re-seeded before it sells).
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached.
    async fn sync(
        &self,
        ledger: &Ledger,
        schedule: &LiveSchedule,
        sale_id: u64,
    ) -> Result<bool, StockError>;

    /// Moves the window a shared stock decides purchases by (an admin
    /// opened or closed the sale early). A no-op for a stock that does not
    /// hold the window, and for a sale the stock does not hold (its re-seed
    /// writes the window from the database).
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached.
    async fn set_schedule(&self, _sale_id: u64, _schedule: Schedule) -> Result<(), StockError> {
        Ok(())
    }

    /// Checks the stock answers.
    ///
    /// # Errors
    /// [`StockError`] when it does not.
    async fn ping(&self) -> Result<(), StockError> {
        Ok(())
    }

    /// The sale's shared counters; `None` when the stock does not hold it.
    ///
    /// # Errors
    /// [`StockError`] when it could not be read, or the stock keeps none.
    async fn state(&self, _sale_id: u64) -> Result<Option<StockState>, StockError> {
        Err(StockError::unsupported("keep shared counters"))
    }

    /// The shared stock's clock (epoch ms), which decides the sale window
    /// in the distributed mode; `None` when the node's own clock decides
    /// (one process, one clock). A shared stock also uses the call to
    /// follow a moved master.
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached.
    async fn server_time_ms(&self) -> Result<Option<i64>, StockError> {
        Ok(None)
    }

    /// Rebuilds a sale the stock lost (or holds from a history it can no
    /// longer vouch for, see the Redis fencing), from the order database;
    /// `Ok(false)` when another node is on it or the sale is present.
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached.
    async fn seed(&self, _sale: &Sale, _from_db: &SaleRecord) -> Result<bool, StockError> {
        Err(StockError::unsupported("re-seed from the database"))
    }

    /// Stops the sale selling from what the stock holds — it no longer
    /// vouches for the count (the reconciler found the database holding
    /// more) — so it is re-seeded from the database like a lost sale.
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached, or keeps no
    /// shared count.
    async fn fence(&self, _sale_id: u64) -> Result<(), StockError> {
        Err(StockError::unsupported("fence a shared count"))
    }

    /// Deletes everything the stock holds of `sale_id` (tests clean up).
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached.
    async fn forget(&self, _sale_id: u64) -> Result<(), StockError> {
        Ok(())
    }

    /// Outbox entries (wire payloads) older than `age_ms` by the stock's
    /// own clock, oldest first.
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be read, or keeps no outbox.
    async fn outbox_due(
        &self,
        _sale_id: u64,
        _age_ms: i64,
        _limit: usize,
    ) -> Result<Vec<String>, StockError> {
        Ok(Vec::new())
    }

    /// Drops outbox entries the order queue confirmed.
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached (the relay then
    /// sends them again, which the idempotent writer ignores).
    async fn outbox_remove(&self, _sale_id: u64, _payloads: &[String]) -> Result<(), StockError> {
        Ok(())
    }

    /// The accepted order `order_id` of `user`, if a shared stock still
    /// holds it as in flight (accepted, not yet stored by a writer), looked
    /// for in each of `sales` (a sale id and its number of buckets): what
    /// lets a buyer polling any node see an order at once. `None` from a
    /// stock that keeps no such record (the embedded default: its node
    /// answers from its own hand-off).
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be read.
    async fn in_flight_order(
        &self,
        _order_id: u64,
        _user: &str,
        _sales: &[(u64, u8)],
    ) -> Result<Option<Order>, StockError> {
        Ok(None)
    }

    /// Drops the in-flight records of orders a writer has stored (the order
    /// store answers for them from now on).
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached: the records stay
    /// (the order store is read first, so they are never seen again) until
    /// the sale is re-seeded or forgotten.
    async fn forget_in_flight(&self, _orders: &[OrderPlace<'_>]) -> Result<(), StockError> {
        Ok(())
    }

    /// A node id (0..1024) unique among the nodes sharing this stock.
    ///
    /// # Errors
    /// [`StockError`] when the stock could not be reached, or hands out none.
    async fn lease_node_id(&self) -> Result<u16, StockError> {
        Err(StockError::unsupported("lease node ids"))
    }

    /// Hands the stock the circuit breaker guarding it, for a stock that
    /// batches purchases itself (Redis): each batch is then one call of the
    /// breaker, refused while it is open. `false` (the default) when the
    /// stock does not batch: the decorator counts every purchase.
    fn attach_breaker(&self, _breaker: Arc<super::breaker::Breaker>) -> bool {
        false
    }

    /// The state of the circuit breaker in front of this stock, if any.
    fn breaker_state(&self) -> Option<super::breaker::BreakerState> {
        None
    }
}
