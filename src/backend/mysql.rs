//! The MariaDB / MySQL order store (InnoDB).
//!
//! Owns the `sales`, `orders` and `purchase_intents` tables of the URL's
//! database (migrations in `migrations/mysql`, applied at connect). Sessions
//! run at READ COMMITTED, so locking reads take no gap locks that would
//! stall the order writer's inserts.
//!
//! Invariants callers rely on, which hold with any number of stores (nodes)
//! on one database:
//! - `commit_order` answers `Ok` only once the order is committed; orders are
//!   group-committed by one writer task per store (see [`super::sql`]), one
//!   multi-row `INSERT … ON DUPLICATE KEY UPDATE order_id = order_id` per
//!   batch, so committing the same order twice stores it once. (Not `INSERT
//!   IGNORE`: that would also turn data errors into silent truncation.)
//! - `transition` is one conditional `UPDATE … WHERE status =
//!   'pending_payment'`; only the call whose update changed the row has
//!   won, so of a payment and an expiry racing on one order exactly one
//!   changes it, and only that call reports `stock_returned`. There is no
//!   `UPDATE … RETURNING` here: the order is read back in the same
//!   transaction.
//! - `expire_due` locks due rows with `FOR UPDATE SKIP LOCKED` (MariaDB
//!   10.6+, MySQL 8.0+) and flips them in the same transaction, so
//!   concurrent sweepers never return an order twice.
//!
//! Durability is the server's: InnoDB flushes its log at each commit unless
//! `innodb_flush_log_at_trx_commit` is relaxed, which
//! [`MySqlOrderStore::connect`] warns about.

use std::collections::HashSet;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Connection, Executor, QueryBuilder, Row};

use super::outbox::{self, AttemptRecord, Delivery, DeliveryFilter, DeliveryState, OutboxEvent};
use super::sql::{
    attempt_binds, claimed_columns, delivery_columns, delivery_from_row, order_columns,
    order_from_row, orders_insert, outbox_event_from_row, read_snapshot, sale_columns,
    sale_from_row, sale_reads, text_column, to_u32, to_u64, GroupCommit, OrderSink, SqlSettings,
    MAX_BATCH,
};
use super::{
    Holding, Intent, OrderStore, SaleAudit, SaleRecord, Snapshot, StoreError, TransitionReport,
};
use crate::domain::order::Transition;
use crate::domain::{Order, OrderStatus, Sale, Schedule};

/// [`OrderStore`] on MariaDB or MySQL with a group-committing order writer.
pub struct MySqlOrderStore {
    pool: MySqlPool,
    writer: GroupCommit,
    outbox: bool,
}

/// Writes the outbox rows of `events` (order id, status, time) in `tx`;
/// rows already there (the same events) stay as they are.
async fn insert_events(
    tx: &mut sqlx::MySqlConnection,
    events: impl IntoIterator<Item = (u64, OrderStatus, i64)>,
) -> Result<(), sqlx::Error> {
    let events: Vec<_> = events.into_iter().collect();
    if events.is_empty() {
        return Ok(());
    }
    let mut insert = QueryBuilder::new(
        "INSERT INTO webhook_outbox (event_id, order_id, order_status, occurred_at, \
         next_attempt_at, updated_at) ",
    );
    insert.push_values(&events, |mut row, (order_id, status, at)| {
        row.push_bind(outbox::event_id(*order_id, *status))
            .push_bind(*order_id as i64)
            .push_bind(status.as_str())
            .push_bind(*at)
            .push_bind(*at)
            .push_bind(*at);
    });
    insert.push(" ON DUPLICATE KEY UPDATE event_id = event_id");
    insert.build().execute(&mut *tx).await?;
    Ok(())
}

impl MySqlOrderStore {
    /// Connects to `url` (`mysql://…` or `mariadb://…`), applies the
    /// migrations and starts the order writer on the current runtime.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the server cannot be reached or the
    /// database cannot be migrated.
    pub async fn connect(url: &str, settings: &SqlSettings) -> Result<Self, StoreError> {
        let options = MySqlConnectOptions::from_str(url)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .acquire_timeout(settings.acquire_timeout)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/mysql").run(&pool).await?;
        let flush: i64 =
            sqlx::query_scalar("SELECT CAST(@@innodb_flush_log_at_trx_commit AS SIGNED)")
                .fetch_one(&pool)
                .await?;
        if flush != 1 {
            tracing::warn!(
                innodb_flush_log_at_trx_commit = flush,
                "InnoDB does not flush its log at every commit: an order answered \
                 201 may be lost if the server crashes"
            );
        }
        let writer = GroupCommit::start(
            MySqlSink {
                pool: pool.clone(),
                outbox: settings.outbox,
            },
            settings.max_batch,
            settings.concurrent_inserts,
        );
        Ok(Self {
            pool,
            writer,
            outbox: settings.outbox,
        })
    }
}

struct MySqlSink {
    pool: MySqlPool,
    outbox: bool,
}

#[async_trait]
impl OrderSink for MySqlSink {
    async fn insert_orders(&self, orders: &[Order]) -> Result<HashSet<u64>, sqlx::Error> {
        // Without the outbox: one autocommit insert, one commit, one log
        // flush. With it on, orders and their accepted events share one
        // transaction (insert, read back, events of the stored ones).
        if !self.outbox {
            let mut conn = self.pool.acquire().await?;
            return insert_and_check(&mut conn, orders).await;
        }
        let mut tx = self.pool.begin().await?;
        let stored = insert_and_check(&mut tx, orders).await?;
        insert_events(
            &mut tx,
            orders
                .iter()
                .filter(|o| stored.contains(&o.id))
                .map(|o| (o.id, o.status, o.updated_at_ms)),
        )
        .await?;
        tx.commit().await?;
        Ok(stored)
    }
}

/// Inserts `orders` on `conn`, skipping stored ones, and reads back which
/// of their ids are stored.
async fn insert_and_check(
    conn: &mut sqlx::MySqlConnection,
    orders: &[Order],
) -> Result<HashSet<u64>, sqlx::Error> {
    // A clash on the idempotency index "updates" the other order to
    // itself, so the new order is simply not stored; the read-back finds
    // out.
    let mut insert = orders_insert!(sqlx::MySql, orders);
    insert.push(" ON DUPLICATE KEY UPDATE order_id = order_id");
    insert.build().execute(&mut *conn).await?;
    // The affected-row count cannot tell "inserted" from "was there"
    // (sqlx asks for found rows), so read the ids back.
    let mut check = QueryBuilder::new("SELECT order_id FROM orders WHERE order_id IN (");
    let mut ids = check.separated(", ");
    for o in orders {
        ids.push_bind(o.id as i64);
    }
    check.push(")");
    Ok(check
        .build_query_scalar::<i64>()
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(to_u64)
        .collect())
}

fn decode_orders(rows: &[MySqlRow]) -> Result<Vec<Order>, sqlx::Error> {
    rows.iter().map(order_from_row).collect()
}

sale_reads!(MySqlPool, "?", "?", "CAST(SUM(quantity) AS SIGNED)");

#[async_trait]
impl OrderStore for MySqlOrderStore {
    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO sales (",
            sale_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(sale.id as i64)
        .bind(&sale.item)
        .bind(sale.stock as i64)
        .bind(i64::from(sale.per_user_limit))
        .bind(sale.starts_at_ms)
        .bind(sale.ends_at_ms)
        .bind(sale.payment_window_secs.map(|w| w as i64))
        .bind(sale.created_at_ms)
        .bind(sale.front_door.to_stored())
        .bind(i64::from(sale.buckets))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        // One consistent snapshot for every query, even while other nodes
        // write (the session default is READ COMMITTED).
        let mut conn = self.pool.acquire().await?;
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await?;
        let mut tx = conn
            .begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await?;
        read_snapshot!(tx, "CAST(SUM(quantity) AS SIGNED)")
    }

    async fn commit_order(&self, order: Order) -> Result<(), StoreError> {
        self.writer.commit(order).await
    }

    async fn get_order(&self, order_id: u64) -> Result<Option<Order>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE order_id = ?"
        ))
        .bind(order_id as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(order_from_row).transpose()?)
    }

    async fn transition(
        &self,
        order_id: u64,
        user_id: &str,
        transition: Transition,
        now_ms: i64,
    ) -> Result<Option<TransitionReport>, StoreError> {
        let target = match transition {
            Transition::Pay => OrderStatus::Paid,
            Transition::Cancel => OrderStatus::Cancelled,
        };
        // The status condition makes this the one winner among racing
        // calls; a payment past the deadline expires the order instead.
        // Update and read-back share a transaction, so a failure between
        // them cannot leave a change made but unreported.
        let mut tx = self.pool.begin().await?;
        let won = sqlx::query(
            "UPDATE orders SET status = CASE WHEN ? AND expires_at <= ? \
             THEN 'expired' ELSE ? END, updated_at = ? \
             WHERE order_id = ? AND user_id = ? AND status = 'pending_payment'",
        )
        .bind(transition == Transition::Pay)
        .bind(now_ms)
        .bind(target.as_str())
        .bind(now_ms)
        .bind(order_id as i64)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let row = sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE order_id = ?"
        ))
        .bind(order_id as i64)
        .fetch_optional(&mut *tx)
        .await?;
        let order = row.as_ref().map(order_from_row).transpose()?;
        if won && self.outbox {
            if let Some(o) = &order {
                insert_events(&mut tx, [(o.id, o.status, now_ms)]).await?;
            }
        }
        tx.commit().await?;
        let Some(order) = order.filter(|o| o.user_id == user_id) else {
            return Ok(None);
        };
        Ok(Some(TransitionReport {
            applied: won && order.status == target,
            stock_returned: won && !order.status.holds_stock(),
            order,
        }))
    }

    async fn expire_due(&self, now_ms: i64, limit: usize) -> Result<Vec<Order>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Locking read: the newest committed version of each row, locked
        // until commit; rows other sweepers or payments hold are skipped.
        let mut due = decode_orders(
            &sqlx::query(concat!(
                "SELECT ",
                order_columns!(),
                " FROM orders WHERE status = 'pending_payment' AND expires_at <= ? \
                 ORDER BY expires_at LIMIT ? FOR UPDATE SKIP LOCKED"
            ))
            .bind(now_ms)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?,
        )?;
        if due.is_empty() {
            tx.commit().await?;
            return Ok(due);
        }
        let mut update = QueryBuilder::new("UPDATE orders SET status = 'expired', updated_at = ");
        update.push_bind(now_ms);
        update.push(" WHERE status = 'pending_payment' AND order_id IN (");
        let mut ids = update.separated(", ");
        for o in &due {
            ids.push_bind(o.id as i64);
        }
        update.push(")");
        let changed = update.build().execute(&mut *tx).await?.rows_affected();
        if changed != due.len() as u64 {
            // Cannot happen while the rows are locked; never report an
            // order as expired by this call unless it was.
            return Err(StoreError::Backend(format!(
                "expired {changed} of {} locked orders; rolled back",
                due.len()
            )));
        }
        if self.outbox {
            insert_events(
                &mut tx,
                due.iter().map(|o| (o.id, OrderStatus::Expired, now_ms)),
            )
            .await?;
        }
        tx.commit().await?;
        for o in &mut due {
            o.status = OrderStatus::Expired;
            o.updated_at_ms = now_ms;
        }
        Ok(due)
    }

    async fn record_intents(&self, intents: Vec<Intent>) -> Result<(), StoreError> {
        if intents.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in intents.chunks(MAX_BATCH) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO purchase_intents (sale_id, user_id, quantity, created_at) ",
            );
            insert.push_values(chunk, |mut row, i| {
                row.push_bind(i.sale_id as i64)
                    .push_bind(&i.user_id)
                    .push_bind(i64::from(i.quantity))
                    .push_bind(i.created_at_ms);
            });
            insert.push(" ON DUPLICATE KEY UPDATE sale_id = sale_id");
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_intents(
        &self,
        sale_id: u64,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Vec<Intent>, StoreError> {
        let rows = sqlx::query(
            "SELECT sale_id, user_id, quantity, created_at FROM purchase_intents \
             WHERE sale_id = ? AND user_id > ? ORDER BY user_id LIMIT ?",
        )
        .bind(sale_id as i64)
        .bind(cursor.unwrap_or_default())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(Intent {
                    sale_id: to_u64(r.try_get(0)?),
                    user_id: text_column(r, 1)?,
                    quantity: to_u32(r.try_get(2)?, "quantity")?,
                    created_at_ms: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }

    async fn get_sale(&self, sale_id: u64) -> Result<Option<Sale>, StoreError> {
        get_sale(&self.pool, sale_id).await
    }

    async fn newest_sales(&self, limit: usize) -> Result<Vec<Sale>, StoreError> {
        newest_sales(&self.pool, limit).await
    }

    /// One conditional `UPDATE`: the row changes only while it still holds
    /// `from` (a NULL-safe comparison for "no end").
    async fn move_schedule(
        &self,
        sale_id: u64,
        from: Schedule,
        to: Schedule,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sales SET starts_at = ?, ends_at = ? WHERE sale_id = ? AND starts_at = ? AND ends_at <=> ?",
        )
        .bind(to.starts_at_ms)
        .bind(to.ends_at_ms)
        .bind(sale_id as i64)
        .bind(from.starts_at_ms)
        .bind(from.ends_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn sale_record(&self, sale_id: u64) -> Result<SaleRecord, StoreError> {
        sale_record(&self.pool, sale_id).await
    }

    async fn sale_audit(&self, sale_id: u64, since_ms: i64) -> Result<SaleAudit, StoreError> {
        sale_audit(&self.pool, sale_id, since_ms).await
    }

    async fn claim_webhooks(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Locking read: rows another node's claim holds are skipped.
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT event_id FROM webhook_outbox WHERE state = 'pending' \
             AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut lease = QueryBuilder::new(
            "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ",
        );
        lease.push_bind(now_ms.saturating_add(lease_ms));
        lease.push(", updated_at = ");
        lease.push_bind(now_ms);
        lease.push(" WHERE state = 'pending' AND event_id IN (");
        let mut ids = lease.separated(", ");
        for id in &due {
            ids.push_bind(id);
        }
        lease.push(")");
        lease.build().execute(&mut *tx).await?;
        let mut read = QueryBuilder::new(concat!(
            "SELECT ",
            claimed_columns!(),
            " FROM webhook_outbox w JOIN orders o ON o.order_id = w.order_id \
             WHERE w.event_id IN ("
        ));
        let mut ids = read.separated(", ");
        for id in &due {
            ids.push_bind(id);
        }
        read.push(")");
        let rows = read.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(outbox_event_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn record_webhook_attempt(&self, record: AttemptRecord) -> Result<bool, StoreError> {
        let (next, error) = attempt_binds(&record);
        let changed = sqlx::query(
            "UPDATE webhook_outbox SET state = ?, last_status = ?, last_error = ?, \
             next_attempt_at = ?, updated_at = ? \
             WHERE event_id = ? AND attempts = ? AND state = 'pending'",
        )
        .bind(record.state.as_str())
        .bind(record.status.map(i64::from))
        .bind(error)
        .bind(next)
        .bind(record.now_ms)
        .bind(&record.event_id)
        .bind(i64::from(record.attempt))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn list_webhooks(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        let state = filter.state.map(DeliveryState::as_str).unwrap_or("");
        let rows = sqlx::query(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_outbox WHERE (? = '' OR state = ?) AND event_id > ? \
             ORDER BY event_id LIMIT ?"
        ))
        .bind(state)
        .bind(state)
        .bind(filter.after.unwrap_or_default())
        .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if !self.writer.is_open() {
            return Err(StoreError::Closed);
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn shutdown(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}
