//! The PostgreSQL order store.
//!
//! Owns the `sales`, `orders` and `purchase_intents` tables of the first
//! schema on the connection's `search_path` (migrations in
//! `migrations/postgres`, applied at connect).
//!
//! Invariants callers rely on, which hold with any number of stores (nodes)
//! on one database:
//! - `commit_order` answers `Ok` only once the order is committed; orders are
//!   group-committed by one writer task per store (see [`super::sql`]), one
//!   multi-row `INSERT … ON CONFLICT DO NOTHING` per batch, so committing the
//!   same order twice stores it once.
//! - `transition` is one conditional `UPDATE … WHERE status =
//!   'pending_payment' RETURNING …`: of a payment and an expiry (or two
//!   nodes) racing on one order exactly one changes it, and only that call
//!   reports `stock_returned`.
//! - `expire_due` claims rows with `FOR UPDATE SKIP LOCKED` and flips them in
//!   the same statement, so concurrent sweepers never return an order twice.
//!
//! Durability is the server's: the commit waits for the WAL flush unless the
//! server runs with `synchronous_commit = off`, which [`PgOrderStore::connect`]
//! warns about.

use std::collections::HashSet;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{QueryBuilder, Row};

use super::outbox::{AttemptRecord, Delivery, DeliveryFilter, DeliveryState, OutboxEvent};
use super::sql::{
    attempt_binds, claimed_columns, delivery_columns, delivery_from_row, order_columns,
    order_from_row, orders_insert, outbox_event_from_row, read_snapshot, sale_columns,
    sale_from_row, sale_reads, text_column, to_u32, to_u64, GroupCommit, OrderSink, PgInsert,
    SqlSettings, MAX_BATCH,
};
use super::{
    Holding, Intent, OrderStore, SaleAudit, SaleRecord, Snapshot, StoreError, TransitionReport,
};
use crate::domain::order::Transition;
use crate::domain::{Order, OrderStatus, Sale, Schedule};

/// [`OrderStore`] on PostgreSQL with a group-committing order writer.
pub struct PgOrderStore {
    pool: PgPool,
    writer: GroupCommit,
    outbox: bool,
}

/// The event id of an order row (`order_id`, `status` in scope) in SQL:
/// the same text as [`super::outbox::event_id`].
macro_rules! pg_event_id {
    () => {
        "'evt_' || order_id || '_' || CASE status WHEN 'pending_payment' THEN 'accepted' \
         ELSE status END"
    };
}

/// A data-modifying CTE named `ob` writing the outbox row of every order
/// row of CTE `$from` (at its `updated_at`), when `$enabled` (a
/// placeholder) is true. A comma precedes it.
macro_rules! pg_outbox_cte {
    ($from:literal, $enabled:literal) => {
        concat!(
            ", ob AS (INSERT INTO webhook_outbox (event_id, order_id, order_status, \
             occurred_at, next_attempt_at, updated_at) SELECT ",
            pg_event_id!(),
            ", order_id, status, updated_at, updated_at, updated_at FROM ",
            $from,
            " WHERE ",
            $enabled,
            " ON CONFLICT (event_id) DO NOTHING)"
        )
    };
}

impl PgOrderStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`), applies the
    /// migrations and starts the order writer on the current runtime.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the server cannot be reached or the
    /// schema cannot be migrated.
    pub async fn connect(url: &str, settings: &SqlSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        let sync: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
            .fetch_one(&pool)
            .await?;
        if sync == "off" {
            tracing::warn!(
                "PostgreSQL runs with synchronous_commit = off: an order answered \
                 201 may be lost if the server crashes"
            );
        }
        let writer = GroupCommit::start(
            PgSink {
                pool: pool.clone(),
                outbox: settings.outbox,
                shape: settings.pg_insert,
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

struct PgSink {
    pool: PgPool,
    outbox: bool,
    shape: PgInsert,
}

/// `INSERT INTO orders (…) SELECT * FROM UNNEST(…)`: one typed array per
/// column, in [`order_columns!`]'s order. The text never changes, so each
/// connection prepares it once, whatever the batch size.
macro_rules! pg_unnest_insert {
    () => {
        concat!(
            "INSERT INTO orders (",
            order_columns!(),
            ") SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], \
             $5::TEXT[], $6::TEXT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[])"
        )
    };
}

impl PgSink {
    /// The batch's ids newly stored by one `UNNEST` insert (with the
    /// accepted events in the same statement when the outbox is on).
    async fn insert_unnest(&self, orders: &[Order]) -> Result<Vec<i64>, sqlx::Error> {
        let n = orders.len();
        let mut ids = Vec::with_capacity(n);
        let mut sales = Vec::with_capacity(n);
        let mut users = Vec::with_capacity(n);
        let mut quantities = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        let mut updated = Vec::with_capacity(n);
        let mut expires = Vec::with_capacity(n);
        for o in orders {
            ids.push(o.id as i64);
            sales.push(o.sale_id as i64);
            users.push(o.user_id.as_str());
            quantities.push(i64::from(o.quantity));
            statuses.push(o.status.as_str());
            keys.push(o.idempotency_key.as_deref());
            created.push(o.created_at_ms);
            updated.push(o.updated_at_ms);
            expires.push(o.expires_at_ms);
        }
        let sql = if self.outbox {
            concat!(
                "WITH ins AS (",
                pg_unnest_insert!(),
                " ON CONFLICT DO NOTHING RETURNING order_id, status, updated_at)",
                pg_outbox_cte!("ins", "TRUE"),
                " SELECT order_id FROM ins"
            )
        } else {
            concat!(
                pg_unnest_insert!(),
                " ON CONFLICT DO NOTHING RETURNING order_id"
            )
        };
        sqlx::query_scalar::<_, i64>(sql)
            .bind(ids)
            .bind(sales)
            .bind(users)
            .bind(quantities)
            .bind(statuses)
            .bind(keys)
            .bind(created)
            .bind(updated)
            .bind(expires)
            .fetch_all(&self.pool)
            .await
    }

    /// The same with a multi-row `VALUES`.
    async fn insert_values(&self, orders: &[Order]) -> Result<Vec<i64>, sqlx::Error> {
        let mut insert = if self.outbox {
            let mut insert = orders_insert!(sqlx::Postgres, orders, "WITH ins AS (");
            insert.push(concat!(
                " ON CONFLICT DO NOTHING RETURNING order_id, status, updated_at)",
                pg_outbox_cte!("ins", "TRUE"),
                " SELECT order_id FROM ins"
            ));
            insert
        } else {
            let mut insert = orders_insert!(sqlx::Postgres, orders);
            insert.push(" ON CONFLICT DO NOTHING RETURNING order_id");
            insert
        };
        insert
            .build_query_scalar::<i64>()
            .fetch_all(&self.pool)
            .await
    }
}

#[async_trait]
impl OrderSink for PgSink {
    async fn insert_orders(&self, orders: &[Order]) -> Result<HashSet<u64>, sqlx::Error> {
        // One statement is one transaction: one commit, one WAL flush.
        // DO NOTHING without a target also skips a clash on the idempotency
        // index; such an order is missing from RETURNING and from the check
        // below, and fails alone.
        // With the outbox on, the accepted events are written by the same
        // statement (a data-modifying CTE): one transaction, as before.
        let inserted = match self.shape {
            PgInsert::Unnest => self.insert_unnest(orders).await?,
            PgInsert::Values => self.insert_values(orders).await?,
        };
        let mut stored: HashSet<u64> = inserted.into_iter().map(to_u64).collect();
        if stored.len() < orders.len() {
            // Some were there already (a retried batch, a second commit of
            // the same order) or clashed: ask which ids are stored now.
            let missing: Vec<i64> = orders
                .iter()
                .filter(|o| !stored.contains(&o.id))
                .map(|o| o.id as i64)
                .collect();
            let found: Vec<i64> =
                sqlx::query_scalar("SELECT order_id FROM orders WHERE order_id = ANY($1)")
                    .bind(missing)
                    .fetch_all(&self.pool)
                    .await?;
            stored.extend(found.into_iter().map(to_u64));
        }
        Ok(stored)
    }
}

sale_reads!(PgPool, "$1", "$2", "SUM(quantity)::BIGINT");

fn decode_orders(rows: &[PgRow]) -> Result<Vec<Order>, sqlx::Error> {
    rows.iter().map(order_from_row).collect()
}

#[async_trait]
impl OrderStore for PgOrderStore {
    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO sales (",
            sale_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
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
        // One snapshot for every query, even while other nodes write.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        read_snapshot!(tx, "SUM(quantity)::BIGINT")
    }

    async fn commit_order(&self, order: Order) -> Result<(), StoreError> {
        self.writer.commit(order).await
    }

    async fn get_order(&self, order_id: u64) -> Result<Option<Order>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE order_id = $1"
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
        // The outbox row (when on) is written by the same statement.
        let won = sqlx::query(concat!(
            "WITH t AS (UPDATE orders SET status = CASE WHEN $4 AND expires_at <= $5 \
             THEN 'expired' ELSE $3 END, updated_at = $5 \
             WHERE order_id = $1 AND user_id = $2 AND status = 'pending_payment' \
             RETURNING ",
            order_columns!(),
            ")",
            pg_outbox_cte!("t", "$6"),
            " SELECT ",
            order_columns!(),
            " FROM t"
        ))
        .bind(order_id as i64)
        .bind(user_id)
        .bind(target.as_str())
        .bind(transition == Transition::Pay)
        .bind(now_ms)
        .bind(self.outbox)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = won {
            let order = order_from_row(&row)?;
            return Ok(Some(TransitionReport {
                applied: order.status == target,
                stock_returned: !order.status.holds_stock(),
                order,
            }));
        }
        // Lost, or nothing to change: report the order as it stands.
        Ok(self
            .get_order(order_id)
            .await?
            .filter(|o| o.user_id == user_id)
            .map(|order| TransitionReport {
                order,
                applied: false,
                stock_returned: false,
            }))
    }

    async fn expire_due(&self, now_ms: i64, limit: usize) -> Result<Vec<Order>, StoreError> {
        // SKIP LOCKED: concurrent sweepers (and payments holding a row) are
        // stepped over rather than waited for; the status check in the
        // UPDATE keeps an order that changed meanwhile out.
        let rows = sqlx::query(concat!(
            "WITH due AS (SELECT order_id FROM orders \
             WHERE status = 'pending_payment' AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
             t AS (UPDATE orders o SET status = 'expired', updated_at = $1 FROM due \
             WHERE o.order_id = due.order_id AND o.status = 'pending_payment' \
             RETURNING o.order_id, o.sale_id, o.user_id, o.quantity, o.status, \
             o.idempotency_key, o.created_at, o.updated_at, o.expires_at)",
            pg_outbox_cte!("t", "$3"),
            " SELECT ",
            order_columns!(),
            " FROM t"
        ))
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(self.outbox)
        .fetch_all(&self.pool)
        .await?;
        Ok(decode_orders(&rows)?)
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
            insert.push(" ON CONFLICT (sale_id, user_id) DO NOTHING");
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
             WHERE sale_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3",
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
            "UPDATE sales SET starts_at = $1, ends_at = $2 WHERE sale_id = $3 AND starts_at = $4 AND ends_at IS NOT DISTINCT FROM $5",
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
        // SKIP LOCKED: dispatchers on other nodes step over rows another
        // claim holds; the state check keeps a row that moved on out.
        let rows = sqlx::query(concat!(
            "WITH due AS (SELECT event_id FROM webhook_outbox \
             WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
             w AS (UPDATE webhook_outbox x SET attempts = x.attempts + 1, \
             next_attempt_at = $2, updated_at = $1 FROM due \
             WHERE x.event_id = due.event_id AND x.state = 'pending' \
             RETURNING x.event_id, x.order_id, x.order_status, x.occurred_at, x.attempts) \
             SELECT ",
            claimed_columns!(),
            " FROM w JOIN orders o ON o.order_id = w.order_id"
        ))
        .bind(now_ms)
        .bind(now_ms.saturating_add(lease_ms))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(outbox_event_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn record_webhook_attempt(&self, record: AttemptRecord) -> Result<bool, StoreError> {
        let (next, error) = attempt_binds(&record);
        let changed = sqlx::query(
            "UPDATE webhook_outbox SET state = $3, last_status = $4, last_error = $5, \
             next_attempt_at = $6, updated_at = $7 \
             WHERE event_id = $1 AND attempts = $2 AND state = 'pending'",
        )
        .bind(&record.event_id)
        .bind(i64::from(record.attempt))
        .bind(record.state.as_str())
        .bind(record.status.map(i64::from))
        .bind(error)
        .bind(next)
        .bind(record.now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn list_webhooks(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_outbox WHERE ($1 = '' OR state = $1) AND event_id > $2 \
             ORDER BY event_id LIMIT $3"
        ))
        .bind(filter.state.map(DeliveryState::as_str).unwrap_or(""))
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
