//! The backend seam: one object-safe trait per role, one file per technology.
//!
//! | role | trait | implementations |
//! | --- | --- | --- |
//! | orders, sales, intents | [`OrderStore`] | [`embedded::SqliteStore`], [`postgres::PgOrderStore`], [`mysql::MySqlOrderStore`] |
//! | stock decisions | [`stock::StockStore`] | [`memory::EmbeddedStock`], [`redis::RedisStock`] |
//! | the order queue | [`queue::OrderQueue`] | [`amqp::AmqpQueue`], [`memory::InProcessQueue`] |
//! | webhook outbox | [`OrderStore`] (`claim_webhooks`, …), vocabulary in [`outbox`] | the three order stores |
//! | rate limits | [`limits::RateStore`] | [`limits::MemoryRates`], [`redis::RedisStock`] |
//!
//! Methods are business-atomic ("commit this accepted order durably",
//! "reserve these units for this buyer", "move this order out of
//! `pending_payment` if it still is"), so each backend uses its own atomic
//! primitive. The vocabulary of each seam (decisions, reservations, queue
//! depth, errors) lives in the seam's file, not in one backend's. One
//! factory, [`connect`], turns [`BackendSettings`] into trait objects, and
//! puts a circuit breaker ([`breaker`]) in front of every networked one.

pub mod amqp;
pub mod breaker;
pub mod embedded;
pub mod limits;
pub mod memory;
pub mod mysql;
pub mod outbox;
pub mod postgres;
pub mod queue;
pub mod redis;
pub mod room;
pub mod sql;
pub mod stock;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;

use crate::domain::order::Transition;
use crate::domain::{Order, Sale, Schedule};

/// Failure of a storage backend; the cause goes to the log, never to buyers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend answered with an error or could not be reached.
    #[error("order store failure: {0}")]
    Backend(String),
    /// The write broke a uniqueness rule (e.g. an `Idempotency-Key` already
    /// stored); nothing else in its batch is affected.
    #[error("order store conflict: {0}")]
    Conflict(String),
    /// The store is shutting down and takes no more work.
    #[error("order store is closed")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // A constraint violation undoes only its own statement; the rest
            // of the transaction stands, so it fails just that one write.
            Some(rusqlite::ErrorCode::ConstraintViolation) => Self::Conflict(e.to_string()),
            _ => Self::Backend(e.to_string()),
        }
    }
}

/// A buyer turned away with `sold_out`, kept so the shop can follow up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The sale.
    pub sale_id: u64,
    /// The buyer.
    pub user_id: String,
    /// Units asked for on the first miss.
    pub quantity: u32,
    /// First miss, epoch ms.
    pub created_at_ms: i64,
}

/// Units one user holds in one sale (orders pending or paid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The sale.
    pub sale_id: u64,
    /// The buyer.
    pub user_id: String,
    /// Units held.
    pub units: u32,
}

/// Everything needed to rebuild in-memory state after a restart.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every sale.
    pub sales: Vec<Sale>,
    /// Every (sale, user) holding units.
    pub holdings: Vec<Holding>,
    /// Orders stored per sale (any status).
    pub persisted: Vec<(u64, u64)>,
    /// Orders that carry an idempotency key, to keep replays working.
    pub keyed_orders: Vec<Order>,
    /// Highest sale or order id stored, so new ids stay unique.
    pub max_id: u64,
}

/// What the order database says about one sale, for a re-seed.
#[derive(Debug, Default, Clone)]
pub struct SaleRecord {
    /// Units held by pending or paid orders.
    pub sold: u64,
    /// User → units held.
    pub holders: Vec<(String, u32)>,
    /// Holding orders that carry an idempotency key.
    pub keyed: Vec<Order>,
    /// Ids of orders whose units went back (expired, cancelled).
    pub released: Vec<u64>,
}

/// What the order database says about one sale, for the reconciler.
#[derive(Debug, Default, Clone)]
pub struct SaleAudit {
    /// Units held by pending or paid orders.
    pub sold: u64,
    /// Orders stored (any status).
    pub orders: u64,
    /// Orders that gave their units back (expired, cancelled) and changed
    /// at or after the `since` asked for.
    pub released: Vec<Order>,
}

/// What an attempted state change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionReport {
    /// The order after the attempt.
    pub order: Order,
    /// True when the requested change was applied.
    pub applied: bool,
    /// True when this very call moved the order out of a stock-holding state,
    /// so the caller must return its units (exactly once).
    pub stock_returned: bool,
}

/// Durable home of sales, orders and purchase intents.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Stores a new sale.
    ///
    /// # Errors
    /// [`StoreError`] when the write did not become durable.
    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError>;

    /// Reads everything needed to rebuild in-memory state.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn load(&self) -> Result<Snapshot, StoreError>;

    /// Stores an accepted order; returns only once it is durable.
    ///
    /// # Errors
    /// [`StoreError`] when the order is not durable; the caller must then
    /// return the units and must not tell the buyer "accepted".
    async fn commit_order(&self, order: Order) -> Result<(), StoreError>;

    /// Reads one order.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn get_order(&self, order_id: u64) -> Result<Option<Order>, StoreError>;

    /// Applies `transition` to `user`'s order if it is still pending; an
    /// order past its payment deadline is expired instead of paid. `None`
    /// when the order does not exist or belongs to someone else.
    ///
    /// # Errors
    /// [`StoreError`] when the change could not be made durable.
    async fn transition(
        &self,
        order_id: u64,
        user_id: &str,
        transition: Transition,
        now_ms: i64,
    ) -> Result<Option<TransitionReport>, StoreError>;

    /// Expires up to `limit` pending orders whose deadline is at or before
    /// `now_ms` and returns them; each is returned by exactly one call.
    ///
    /// # Errors
    /// [`StoreError`] when the change could not be made durable.
    async fn expire_due(&self, now_ms: i64, limit: usize) -> Result<Vec<Order>, StoreError>;

    /// Records missed buyers; a (sale, user) pair already present is kept.
    ///
    /// # Errors
    /// [`StoreError`] when the write failed.
    async fn record_intents(&self, intents: Vec<Intent>) -> Result<(), StoreError>;

    /// Lists a sale's intents ordered by user id, after `cursor`.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn list_intents(
        &self,
        sale_id: u64,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Vec<Intent>, StoreError>;

    /// Reads one sale (nodes learn of sales other nodes created).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn get_sale(&self, sale_id: u64) -> Result<Option<Sale>, StoreError> {
        Ok(self
            .load()
            .await?
            .sales
            .into_iter()
            .find(|s| s.id == sale_id))
    }

    /// Moves a sale's window from `from` to `to` (an admin opened or
    /// closed it early), only if it is still `from`: a compare-and-set, so
    /// two admins racing (on two nodes) cannot undo each other's move.
    /// `false` when the sale's window is no longer `from`, or there is no
    /// such sale; the caller reads the sale again and decides anew. `to`
    /// differs from `from` (MySQL counts changed rows, not matched ones).
    ///
    /// # Errors
    /// [`StoreError`] when the change did not become durable.
    async fn move_schedule(
        &self,
        sale_id: u64,
        from: Schedule,
        to: Schedule,
    ) -> Result<bool, StoreError>;

    /// What a re-seed of the shared stock needs: units held, holders, keyed
    /// orders and orders that gave their units back. Only the SQL stores
    /// (the distributed mode's databases) provide it.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or has no such query.
    async fn sale_record(&self, _sale_id: u64) -> Result<SaleRecord, StoreError> {
        Err(StoreError::Backend(
            "this store does not back shared stock".into(),
        ))
    }

    /// The `limit` newest sales, newest first (where a node that has not
    /// met a sale yet looks for an order in flight). Only the SQL stores
    /// provide it; the others answer none.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn newest_sales(&self, _limit: usize) -> Result<Vec<Sale>, StoreError> {
        Ok(Vec::new())
    }

    /// What the reconciler compares with the shared stock.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or has no such query.
    async fn sale_audit(&self, _sale_id: u64, _since_ms: i64) -> Result<SaleAudit, StoreError> {
        Err(StoreError::Backend(
            "this store does not back shared stock".into(),
        ))
    }

    /// Claims up to `limit` pending webhook events due at `now_ms` (oldest
    /// due first) for `lease_ms`: each gets its next attempt number and is
    /// not handed to anyone else until the lease ends (see [`outbox`]).
    ///
    /// # Errors
    /// [`StoreError`] when the claim could not be made durable.
    async fn claim_webhooks(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<outbox::OutboxEvent>, StoreError>;

    /// Records an attempt's result; `false` when the claim was stale (the
    /// row moved on: another attempt was claimed, or it is no longer
    /// pending), and nothing changed.
    ///
    /// # Errors
    /// [`StoreError`] when the write failed.
    async fn record_webhook_attempt(
        &self,
        record: outbox::AttemptRecord,
    ) -> Result<bool, StoreError>;

    /// The delivery log: one line per event, ordered by event id.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn list_webhooks(
        &self,
        filter: outbox::DeliveryFilter,
    ) -> Result<Vec<outbox::Delivery>, StoreError>;

    /// Checks the store answers.
    ///
    /// # Errors
    /// [`StoreError`] when it does not.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Flushes queued writes and stops taking new ones.
    async fn shutdown(&self);

    /// The state of the circuit breaker in front of this store, if any.
    fn breaker_state(&self) -> Option<breaker::BreakerState> {
        None
    }
}

/// Which backends a node runs on: a typed choice, so an impossible mix
/// (Redis stock without an order queue, say) cannot be described. URLs are
/// redacted in `Debug`.
#[derive(Clone)]
pub enum BackendSettings {
    /// The embedded default: stock in memory, orders in SQLite under
    /// `data_dir`. No external service.
    Embedded {
        /// Where the SQLite files live.
        data_dir: PathBuf,
        /// Group commit settings.
        sqlite: embedded::SqliteSettings,
    },
    /// One node, stock in memory, orders in PostgreSQL or MariaDB/MySQL.
    Sql {
        /// `postgres://`, `postgresql://`, `mysql://` or `mariadb://`.
        database: String,
        /// Batch and pool settings.
        sql: sql::SqlSettings,
    },
    /// One of many stateless nodes: stock in Redis, orders through
    /// RabbitMQ into PostgreSQL or MariaDB/MySQL.
    Distributed {
        /// The order database URL.
        database: String,
        /// Batch and pool settings.
        sql: sql::SqlSettings,
        /// The shared stock.
        redis: redis::RedisSettings,
        /// The order queue.
        queue: amqp::AmqpSettings,
    },
}

impl std::fmt::Debug for BackendSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded { data_dir, sqlite } => f
                .debug_struct("Embedded")
                .field("data_dir", data_dir)
                .field("sqlite", sqlite)
                .finish(),
            Self::Sql { database, sql } => f
                .debug_struct("Sql")
                .field("database", &sql::redact_url(database))
                .field("sql", sql)
                .finish(),
            Self::Distributed {
                database,
                sql,
                redis,
                queue,
            } => f
                .debug_struct("Distributed")
                .field("database", &sql::redact_url(database))
                .field("sql", sql)
                .field("redis", redis)
                .field("queue", queue)
                .finish(),
        }
    }
}

/// The trait objects a node runs on.
#[derive(Clone)]
pub struct Backends {
    /// Sales, orders and intents.
    pub store: Arc<dyn OrderStore>,
    /// Stock decisions.
    pub stock: Arc<dyn stock::StockStore>,
    /// The order queue (distributed mode only: the embedded default and a
    /// single SQL node hand orders to the store directly).
    pub queue: Option<Arc<dyn queue::OrderQueue>>,
    /// Waiting rooms (in memory, or in Redis beside the stock).
    pub room: Arc<dyn room::RoomStore>,
    /// The cluster-wide rate limiter (Redis, distributed mode only; `None`:
    /// each node limits on its own, see [`limits`]).
    pub rates: Option<Arc<dyn limits::RateStore>>,
}

/// Opens every backend `settings` name. A node's state is rebuilt from the
/// order store afterwards (see `engine`).
///
/// # Errors
/// When a backend cannot be opened, reached or migrated, or a database URL
/// has an unknown scheme. Messages show URLs without credentials.
pub async fn connect(settings: &BackendSettings) -> anyhow::Result<Backends> {
    Ok(match settings {
        BackendSettings::Embedded { data_dir, sqlite } => {
            let store = embedded::SqliteStore::open(data_dir, sqlite)
                .with_context(|| format!("opening the store in {}", data_dir.display()))?;
            Backends {
                store: Arc::new(store),
                stock: Arc::new(memory::EmbeddedStock),
                queue: None,
                room: Arc::new(room::MemoryRoom::default()),
                rates: None,
            }
        }
        BackendSettings::Sql { database, sql } => Backends {
            store: guard_store(open_sql_store(database, sql).await?),
            stock: Arc::new(memory::EmbeddedStock),
            queue: None,
            room: Arc::new(room::MemoryRoom::default()),
            rates: None,
        },
        BackendSettings::Distributed {
            database,
            sql,
            redis,
            queue,
        } => {
            let store = open_sql_store(database, sql).await?;
            let stock = redis::RedisStock::connect(redis)
                .await
                .context("connecting to Redis (--redis)")?;
            let queue = amqp::AmqpQueue::connect(queue)
                .await
                .context("connecting to RabbitMQ (--queue)")?;
            Backends {
                store: guard_store(store),
                room: stock.clone(),
                rates: Some(stock.clone()),
                stock: Arc::new(breaker::BreakerStock::new(
                    stock,
                    breaker::BreakerSettings::default(),
                )),
                queue: Some(Arc::new(breaker::BreakerQueue::new(
                    Arc::new(queue),
                    breaker::BreakerSettings::default(),
                ))),
            }
        }
    })
}

/// The SQL store behind its circuit breaker (the embedded SQLite store
/// needs none: it is a file, not a server).
fn guard_store(store: Arc<dyn OrderStore>) -> Arc<dyn OrderStore> {
    Arc::new(breaker::BreakerStore::new(
        store,
        breaker::BreakerSettings::default(),
    ))
}

async fn open_sql_store(
    url: &str,
    settings: &sql::SqlSettings,
) -> anyhow::Result<Arc<dyn OrderStore>> {
    let kind = sql::DatabaseKind::of_url(url).context("--database / FLASHSALE_DATABASE")?;
    let context = || format!("opening the order store at {}", sql::redact_url(url));
    Ok(match kind {
        sql::DatabaseKind::Postgres => Arc::new(
            postgres::PgOrderStore::connect(url, settings)
                .await
                .with_context(context)?,
        ),
        sql::DatabaseKind::MySql => Arc::new(
            mysql::MySqlOrderStore::connect(url, settings)
                .await
                .with_context(context)?,
        ),
    })
}
