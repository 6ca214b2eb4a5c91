//! What the SQL order stores ([`super::postgres`], [`super::mysql`]) share:
//! settings, the database URL check, row decoding, error mapping and the
//! group-commit writer.
//!
//! Group commit: one writer task owns the order write path. Callers hand it
//! an order and a reply channel; it takes everything waiting (up to
//! `max_batch`), stores it with ONE multi-row insert that ignores rows
//! already present, and only then answers every waiter. An answer of `Ok`
//! means the order is committed on the server; a failed batch answers every
//! waiter with the error. The insert is idempotent on `order_id`, so the
//! writer may retry a batch whose outcome is unknown (a dropped connection,
//! a deadlock) without duplicating anything.
//!
//! An order that was not stored although the statement succeeded (its
//! `(user_id, idempotency_key)` belongs to another order) fails alone; the
//! rest of its batch stands.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{ColumnIndex, Decode, Row, Type};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::outbox::{bounded_error, AttemptRecord, Delivery, DeliveryState, OutboxEvent};
use super::StoreError;
use crate::domain::{FrontDoor, Order, OrderStatus, Sale};

/// Hard ceiling on orders per insert: 9 bind parameters per row must stay
/// under the 65 535 parameters one statement may carry (PostgreSQL's and
/// MySQL/MariaDB's protocol limit alike; checked below), and past a
/// thousand rows a bigger statement no longer buys a cheaper commit.
pub const MAX_BATCH: usize = 1000;

/// Bind parameters per order row of [`orders_insert!`].
pub const ORDER_COLUMNS: usize = 9;

/// Most bind parameters one statement may carry (a 16-bit count in both
/// wire protocols).
pub const MAX_PARAMETERS: usize = 65_535;

// A multi-row insert of a full batch, and the id check of one, fit.
const _: () = assert!(MAX_BATCH * ORDER_COLUMNS <= MAX_PARAMETERS);

/// Inserts of order batches one store runs side by side by default: while
/// one waits for its commit (the WAL or redo-log flush), the next is sent,
/// so several writers' batches do not queue behind one another.
pub const DEFAULT_CONCURRENT_INSERTS: usize = 2;

/// How the PostgreSQL store writes a batch of orders (the MySQL store
/// always sends a multi-row `VALUES`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PgInsert {
    /// `INSERT … SELECT * FROM UNNEST($1::BIGINT[], …)`: one array per
    /// column, so the statement text is the same for every batch and is
    /// prepared once per connection.
    #[default]
    Unnest,
    /// A multi-row `VALUES (…), (…)` with nine parameters per row: a new
    /// statement text (parse and plan) per batch size.
    Values,
}

/// Attempts at a batch whose failure looks transient.
const BATCH_ATTEMPTS: u32 = 3;

/// Settings shared by the SQL order stores.
#[derive(Debug, Clone)]
pub struct SqlSettings {
    /// Write a webhook outbox row with every order change (on when
    /// webhooks are configured; see [`super::outbox`]).
    pub outbox: bool,
    /// Most orders written by one insert (clamped to `1..=`[`MAX_BATCH`];
    /// 1 = one commit per order, the baseline).
    pub max_batch: usize,
    /// Connections in the pool (the writer, transitions, reads).
    pub max_connections: u32,
    /// Longest wait for a pooled connection before a call fails.
    pub acquire_timeout: Duration,
    /// Order batches inserted side by side (at least 1).
    pub concurrent_inserts: usize,
    /// The PostgreSQL insert statement's shape.
    pub pg_insert: PgInsert,
}

impl Default for SqlSettings {
    fn default() -> Self {
        Self {
            outbox: false,
            max_batch: MAX_BATCH,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            concurrent_inserts: DEFAULT_CONCURRENT_INSERTS,
            pg_insert: PgInsert::default(),
        }
    }
}

/// The SQL server a database URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `mysql://` or `mariadb://`.
    MySql,
}

impl DatabaseKind {
    /// Reads the kind from the URL's scheme.
    ///
    /// # Errors
    /// [`StoreError::Backend`] for a URL that does not parse or names
    /// another scheme; the message never repeats the URL (it may hold a
    /// password).
    pub fn of_url(url: &str) -> Result<Self, StoreError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| StoreError::Backend(format!("the database URL does not parse: {e}")))?;
        match parsed.scheme() {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::MySql),
            other => Err(StoreError::Backend(format!(
                "unsupported database URL scheme {other:?}: expected postgres://, \
                 postgresql://, mysql:// or mariadb://"
            ))),
        }
    }
}

/// `scheme://host:port/path` of a database URL, without user, password or
/// query: safe for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            match u.port() {
                Some(port) => format!("{}://{host}:{port}{}", u.scheme(), u.path()),
                None => format!("{}://{host}{}", u.scheme(), u.path()),
            }
        }
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolClosed => Self::Closed,
            e => Self::Backend(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Backend(format!("applying migrations: {e}"))
    }
}

/// True for failures after which the same idempotent statement may well
/// succeed: lost connections, pool exhaustion, deadlocks, serialization
/// failures, a server restarting.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 40001 serialization failure (MySQL's deadlock too), 40P01 PG
            // deadlock, 57P0x PG shutting down, 08xxx connection exceptions.
            code == "40001" || code == "40P01" || code.starts_with("57P0") || code.starts_with("08")
        }),
        _ => false,
    }
}

/// Converts a stored integer id or count (never negative) back.
pub(crate) fn to_u64(v: i64) -> u64 {
    v as u64
}

/// Converts a stored quantity back to the domain's `u32`.
pub(crate) fn to_u32(v: i64, what: &str) -> Result<u32, sqlx::Error> {
    u32::try_from(v).map_err(|_| sqlx::Error::Decode(format!("{what} {v} out of range").into()))
}

/// Reads a user id or idempotency key column. Unchecked on purpose: the
/// MySQL schema keeps these as `VARBINARY` (exact bytes, see its migration),
/// which sqlx will not hand out as `String` by type alone, although the bytes
/// are the UTF-8 that was written; decoding still rejects invalid UTF-8.
pub(crate) fn text_column<'r, R, T>(row: &'r R, index: usize) -> Result<T, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Decode<'r, R::Database>,
{
    row.try_get_unchecked(index)
}

/// Column list of every order query, in [`order_from_row`]'s order.
macro_rules! order_columns {
    () => {
        "order_id, sale_id, user_id, quantity, status, idempotency_key, \
         created_at, updated_at, expires_at"
    };
}
pub(crate) use order_columns;

/// Column list of every sale query, in [`sale_from_row`]'s order.
macro_rules! sale_columns {
    () => {
        "sale_id, item, stock, per_user_limit, starts_at, ends_at, \
         payment_window_secs, created_at, front_door, buckets"
    };
}
pub(crate) use sale_columns;

/// The body of `OrderStore::load` for both SQL stores: every query of the
/// snapshot inside the already-open read-only transaction `$tx`, which it
/// commits. `$units` is the dialect's "sum of quantity as a 64-bit integer".
/// A macro rather than a generic function: the two transaction types share
/// no trait that sqlx's executor bounds would accept without a wall of
/// where-clauses.
macro_rules! read_snapshot {
    ($tx:ident, $units:literal) => {{
        let sales = sqlx::query(concat!(
            "SELECT ",
            sale_columns!(),
            " FROM sales ORDER BY sale_id"
        ))
        .fetch_all(&mut *$tx)
        .await?
        .iter()
        .map(sale_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let holdings = sqlx::query(concat!(
            "SELECT sale_id, user_id, ",
            $units,
            " FROM orders \
                 WHERE status IN ('pending_payment', 'paid') GROUP BY sale_id, user_id"
        ))
        .fetch_all(&mut *$tx)
        .await?
        .iter()
        .map(|r| {
            Ok(Holding {
                sale_id: to_u64(r.try_get(0)?),
                user_id: text_column(r, 1)?,
                units: to_u32(r.try_get(2)?, "holding")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let persisted = sqlx::query_as::<_, (i64, i64)>(
            "SELECT sale_id, COUNT(*) FROM orders GROUP BY sale_id",
        )
        .fetch_all(&mut *$tx)
        .await?
        .into_iter()
        .map(|(sale, n)| (to_u64(sale), to_u64(n)))
        .collect();
        let keyed_orders = decode_orders(
            &sqlx::query(concat!(
                "SELECT ",
                order_columns!(),
                " FROM orders WHERE idempotency_key IS NOT NULL"
            ))
            .fetch_all(&mut *$tx)
            .await?,
        )?;
        let max_id: i64 = sqlx::query_scalar(
            "SELECT GREATEST(COALESCE((SELECT MAX(order_id) FROM orders), 0), \
                                 COALESCE((SELECT MAX(sale_id) FROM sales), 0))",
        )
        .fetch_one(&mut *$tx)
        .await?;
        $tx.commit().await?;
        Ok(Snapshot {
            sales,
            holdings,
            persisted,
            keyed_orders,
            max_id: to_u64(max_id),
        })
    }};
}
pub(crate) use read_snapshot;

/// A multi-row `INSERT INTO orders (…) VALUES (…), (…)` of `$orders` for
/// database `$db`, ready for the dialect's conflict clause.
macro_rules! orders_insert {
    ($db:ty, $orders:expr) => {
        orders_insert!($db, $orders, "")
    };
    ($db:ty, $orders:expr, $prefix:expr) => {{
        let mut insert = sqlx::QueryBuilder::<$db>::new(concat!(
            $prefix,
            "INSERT INTO orders (",
            order_columns!(),
            ") "
        ));
        insert.push_values($orders, |mut row, o| {
            row.push_bind(o.id as i64)
                .push_bind(o.sale_id as i64)
                .push_bind(&o.user_id)
                .push_bind(i64::from(o.quantity))
                .push_bind(o.status.as_str())
                .push_bind(&o.idempotency_key)
                .push_bind(o.created_at_ms)
                .push_bind(o.updated_at_ms)
                .push_bind(o.expires_at_ms);
        });
        insert
    }};
}
pub(crate) use orders_insert;

/// Decodes a row selected with [`order_columns!`].
pub(crate) fn order_from_row<R>(row: &R) -> Result<Order, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let status: String = row.try_get(4)?;
    Ok(Order {
        id: to_u64(row.try_get(0)?),
        sale_id: to_u64(row.try_get(1)?),
        user_id: text_column(row, 2)?,
        quantity: to_u32(row.try_get(3)?, "quantity")?,
        status: OrderStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown order status {status:?}").into())
        })?,
        idempotency_key: text_column(row, 5)?,
        created_at_ms: row.try_get(6)?,
        updated_at_ms: row.try_get(7)?,
        expires_at_ms: row.try_get(8)?,
    })
}

/// A stored bucket count, clamped to 1..=16 (a hand-edited row must not
/// make a sale unsellable).
pub(crate) fn to_buckets(v: i64) -> u8 {
    v.clamp(1, i64::from(crate::domain::sale::MAX_BUCKETS)) as u8
}

/// Decodes a row selected with [`sale_columns!`].
pub(crate) fn sale_from_row<R>(row: &R) -> Result<Sale, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Sale {
        id: to_u64(row.try_get(0)?),
        item: row.try_get(1)?,
        stock: to_u64(row.try_get(2)?),
        per_user_limit: to_u32(row.try_get(3)?, "per_user_limit")?,
        starts_at_ms: row.try_get(4)?,
        ends_at_ms: row.try_get(5)?,
        payment_window_secs: row.try_get::<Option<i64>, _>(6)?.map(to_u64),
        created_at_ms: row.try_get(7)?,
        front_door: FrontDoor::from_stored(row.try_get::<Option<String>, _>(8)?.as_deref()),
        buckets: to_buckets(row.try_get(9)?),
    })
}

/// Columns of a claimed event joined with its order, in
/// [`outbox_event_from_row`]'s order (`w` the outbox row, `o` the order;
/// `attempts` already counts the claimed attempt).
macro_rules! claimed_columns {
    () => {
        "w.event_id, w.order_status, w.occurred_at, w.attempts, o.order_id, o.sale_id, \
         o.user_id, o.quantity, o.idempotency_key, o.created_at, o.expires_at"
    };
}
pub(crate) use claimed_columns;

/// Columns of a delivery-log line, in [`delivery_from_row`]'s order.
macro_rules! delivery_columns {
    () => {
        "event_id, order_id, order_status, occurred_at, state, attempts, last_status, \
         last_error, next_attempt_at, updated_at"
    };
}
pub(crate) use delivery_columns;

fn status_of(raw: &str) -> Result<OrderStatus, sqlx::Error> {
    OrderStatus::parse(raw)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown order status {raw:?}").into()))
}

/// Decodes a row selected with [`claimed_columns!`].
pub(crate) fn outbox_event_from_row<R>(row: &R) -> Result<OutboxEvent, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let occurred_at_ms: i64 = row.try_get(2)?;
    Ok(OutboxEvent {
        event_id: row.try_get(0)?,
        occurred_at_ms,
        attempt: to_u32(row.try_get(3)?, "attempts")?,
        order: Order {
            id: to_u64(row.try_get(4)?),
            sale_id: to_u64(row.try_get(5)?),
            user_id: text_column(row, 6)?,
            quantity: to_u32(row.try_get(7)?, "quantity")?,
            status: status_of(&row.try_get::<String, _>(1)?)?,
            idempotency_key: text_column(row, 8)?,
            created_at_ms: row.try_get(9)?,
            updated_at_ms: occurred_at_ms,
            expires_at_ms: row.try_get(10)?,
        },
    })
}

/// Decodes a row selected with [`delivery_columns!`].
pub(crate) fn delivery_from_row<R>(row: &R) -> Result<Delivery, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let state: String = row.try_get(4)?;
    Ok(Delivery {
        event_id: row.try_get(0)?,
        order_id: to_u64(row.try_get(1)?),
        order_status: status_of(&row.try_get::<String, _>(2)?)?,
        occurred_at_ms: row.try_get(3)?,
        state: DeliveryState::parse(&state).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown delivery state {state:?}").into())
        })?,
        attempts: to_u32(row.try_get(5)?, "attempts")?,
        last_status: row
            .try_get::<Option<i64>, _>(6)?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get(7)?,
        next_attempt_at_ms: row.try_get(8)?,
        updated_at_ms: row.try_get(9)?,
    })
}

/// `(next_attempt_at, error)` bound by both SQL stores' attempt update.
pub(crate) fn attempt_binds(r: &AttemptRecord) -> (i64, Option<String>) {
    let next = if r.state == DeliveryState::Pending {
        r.next_attempt_at_ms
    } else {
        r.now_ms
    };
    (next, bounded_error(r.error.as_deref()))
}

/// Where the group-commit writer puts a batch.
#[async_trait]
pub(crate) trait OrderSink: Send + Sync + 'static {
    /// Inserts `orders` in one statement, skipping rows that conflict with
    /// stored ones, and returns which of their ids are stored afterwards.
    ///
    /// # Errors
    /// The database error; the writer retries transient ones.
    async fn insert_orders(&self, orders: &[Order]) -> Result<HashSet<u64>, sqlx::Error>;
}

struct Pending {
    order: Order,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Handle on the group-commit writer task.
pub(crate) struct GroupCommit {
    tx: Mutex<Option<mpsc::Sender<Pending>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts the writer over `sink` (on the current tokio runtime), with
    /// up to `concurrent` batches in flight.
    pub(crate) fn start(sink: impl OrderSink, max_batch: usize, concurrent: usize) -> Self {
        let max_batch = max_batch.clamp(1, MAX_BATCH);
        // Room for a flood's worth of waiters; senders wait beyond it.
        let (tx, rx) = mpsc::channel(65_536);
        let task = tokio::spawn(writer_loop(sink, rx, max_batch, concurrent.max(1)));
        Self {
            tx: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        }
    }

    /// True until [`Self::close`] was called.
    pub(crate) fn is_open(&self) -> bool {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Queues `order` and waits until its batch is committed.
    pub(crate) async fn commit(&self, order: Order) -> Result<(), StoreError> {
        let sender = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        sender
            .send(Pending { order, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops taking orders and waits until every queued one is answered.
    pub(crate) async fn close(&self) {
        // Once the last sender is gone the writer drains the queue and ends.
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn writer_loop(
    sink: impl OrderSink,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    concurrent: usize,
) {
    let sink = std::sync::Arc::new(sink);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrent));
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        // A free slot first: what arrives while every slot is busy joins
        // the next batch instead of waiting behind it in a batch of its own.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        if rx.recv_many(&mut batch, max_batch).await == 0 {
            break;
        }
        let mut taken = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        // Batches in flight together lock the rows they insert in one
        // order (by id), so two holding the same ids (a redelivery) wait
        // for each other instead of deadlocking.
        taken.sort_unstable_by_key(|p| p.order.id);
        let sink = sink.clone();
        tokio::spawn(async move {
            write_batch(&*sink, taken).await;
            drop(slot);
        });
    }
    // Every batch in flight answers its waiters before the writer ends.
    let _ = slots.acquire_many(concurrent as u32).await;
    tracing::debug!("order store writer stopped");
}

async fn write_batch(sink: &impl OrderSink, batch: Vec<Pending>) {
    let (orders, replies): (Vec<Order>, Vec<_>) =
        batch.into_iter().map(|p| (p.order, p.reply)).unzip();
    metrics::histogram!("flashsale_store_batch_size").record(orders.len() as f64);
    match insert_with_retry(sink, &orders).await {
        Ok(stored) => {
            for (order, reply) in orders.iter().zip(replies) {
                let result = if stored.contains(&order.id) {
                    Ok(())
                } else {
                    // Final for this order alone: a conflict, not a
                    // failure worth retrying (the order writer
                    // dead-letters its message).
                    Err(StoreError::Conflict(format!(
                        "order {} not stored: its idempotency key belongs to another order",
                        order.id
                    )))
                };
                // The waiter may have gone (client hung up); the write stands.
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = orders.len(), "order store commit failed");
            let message = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend(message.clone())));
            }
        }
    }
}

async fn insert_with_retry(
    sink: &impl OrderSink,
    orders: &[Order],
) -> Result<HashSet<u64>, sqlx::Error> {
    let mut attempt = 1;
    loop {
        match sink.insert_orders(orders).await {
            Err(e) if attempt < BATCH_ATTEMPTS && is_transient(&e) => {
                tracing::warn!(error = %e, attempt, "order batch failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The per-sale reads of the distributed mode (`get_sale`, `sale_record`,
/// `sale_audit`) for both SQL stores, as `OrderStore` method bodies.
/// `$p1`/`$p2` are the dialect's first and second placeholders and `$units`
/// its "sum of quantity as a 64-bit integer"; a macro for the same reason
/// as [`read_snapshot!`]. It defines free functions `get_sale`,
/// `newest_sales`, `sale_record` and `sale_audit` on `$pool` (the trait impl calls them:
/// `#[async_trait]` does not see methods a macro expands to).
macro_rules! sale_reads {
    ($pool:ty, $p1:literal, $p2:literal, $units:literal) => {
        async fn get_sale(pool: &$pool, sale_id: u64) -> Result<Option<Sale>, StoreError> {
            let row = sqlx::query(concat!(
                "SELECT ",
                sale_columns!(),
                " FROM sales WHERE sale_id = ",
                $p1
            ))
            .bind(sale_id as i64)
            .fetch_optional(pool)
            .await?;
            Ok(row.as_ref().map(sale_from_row).transpose()?)
        }

        async fn newest_sales(pool: &$pool, limit: usize) -> Result<Vec<Sale>, StoreError> {
            let rows = sqlx::query(concat!(
                "SELECT ",
                sale_columns!(),
                " FROM sales ORDER BY sale_id DESC LIMIT ",
                $p1
            ))
            .bind(limit as i64)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .iter()
                .map(sale_from_row)
                .collect::<Result<Vec<_>, _>>()?)
        }

        async fn sale_record(pool: &$pool, sale_id: u64) -> Result<SaleRecord, StoreError> {
            let holders = sqlx::query(concat!(
                "SELECT user_id, ",
                $units,
                " FROM orders WHERE sale_id = ",
                $p1,
                " AND status IN ('pending_payment', 'paid') GROUP BY user_id"
            ))
            .bind(sale_id as i64)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    text_column::<_, String>(r, 0)?,
                    to_u32(r.try_get(1)?, "units")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let keyed = sqlx::query(concat!(
                "SELECT ",
                order_columns!(),
                " FROM orders WHERE sale_id = ",
                $p1,
                " AND idempotency_key IS NOT NULL"
            ))
            .bind(sale_id as i64)
            .fetch_all(pool)
            .await?
            .iter()
            .map(order_from_row)
            .collect::<Result<Vec<_>, _>>()?;
            let released = sqlx::query_scalar::<_, i64>(concat!(
                "SELECT order_id FROM orders WHERE sale_id = ",
                $p1,
                " AND status IN ('expired', 'cancelled')"
            ))
            .bind(sale_id as i64)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(to_u64)
            .collect();
            let sold = holders.iter().map(|(_, u)| u64::from(*u)).sum();
            Ok(SaleRecord {
                sold,
                holders,
                keyed,
                released,
            })
        }

        async fn sale_audit(
            pool: &$pool,
            sale_id: u64,
            since_ms: i64,
        ) -> Result<SaleAudit, StoreError> {
            let row = sqlx::query(concat!(
                "SELECT COALESCE(",
                $units,
                ", 0), COUNT(*) FROM orders WHERE sale_id = ",
                $p1,
                " AND status IN ('pending_payment', 'paid')"
            ))
            .bind(sale_id as i64)
            .fetch_one(pool)
            .await?;
            let sold: i64 = row.try_get(0)?;
            let holding: i64 = row.try_get(1)?;
            let others: i64 = sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM orders WHERE sale_id = ",
                $p1,
                " AND status IN ('expired', 'cancelled')"
            ))
            .bind(sale_id as i64)
            .fetch_one(pool)
            .await?;
            let released = sqlx::query(concat!(
                "SELECT ",
                order_columns!(),
                " FROM orders WHERE sale_id = ",
                $p1,
                " AND status IN ('expired', 'cancelled') AND updated_at >= ",
                $p2
            ))
            .bind(sale_id as i64)
            .bind(since_ms)
            .fetch_all(pool)
            .await?
            .iter()
            .map(order_from_row)
            .collect::<Result<Vec<_>, _>>()?;
            Ok(SaleAudit {
                sold: to_u64(sold),
                orders: to_u64(holding + others),
                released,
            })
        }
    };
}
pub(crate) use sale_reads;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_kinds() {
        assert_eq!(
            DatabaseKind::of_url("postgres://u@h/db").unwrap(),
            DatabaseKind::Postgres
        );
        assert_eq!(
            DatabaseKind::of_url("postgresql://h:5432/db").unwrap(),
            DatabaseKind::Postgres
        );
        assert_eq!(
            DatabaseKind::of_url("mysql://root@h/db").unwrap(),
            DatabaseKind::MySql
        );
        assert_eq!(
            DatabaseKind::of_url("mariadb://root@h/db").unwrap(),
            DatabaseKind::MySql
        );
        let err = DatabaseKind::of_url("redis://:hunter2@h/0").unwrap_err();
        assert!(err.to_string().contains("unsupported database URL scheme"));
        assert!(!err.to_string().contains("hunter2"));
        assert!(DatabaseKind::of_url("not a url").is_err());
    }

    #[test]
    fn redaction_drops_credentials_and_options() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db.internal:5432/shop?sslmode=require"),
            "postgres://db.internal:5432/shop"
        );
        assert_eq!(redact_url("mysql://root@h/db"), "mysql://h/db");
    }
}
