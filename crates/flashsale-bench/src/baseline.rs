//! The classic design Flashsale replaces, as a baseline anyone can rerun:
//! `--mode pg-row-lock`.
//!
//! Every purchase is one PostgreSQL transaction that takes the row lock on
//! the item's stock row — `UPDATE stock SET n = n - 1 WHERE id = 1 AND n > 0`
//! — and, when a unit was taken, inserts the order, then commits. All buyers
//! queue on that one row. The bench drives the database directly (no HTTP),
//! `--concurrency` connections at once, in a schema of its own that it drops
//! afterwards, and checks that it sold exactly what the orders table holds.
//!
//! `--mode redis-evalsha` is the usual Redis seckill: per purchase one
//! `EVALSHA` of a script that checks the stock and the buyer's per-user
//! limit and deducts both (the classic server's script,
//! [`crate::classic::PURCHASE_LUA`]),
//! then — when a unit was taken — one publish of the order to a durable
//! RabbitMQ queue, awaited until the broker confirms. One round trip each,
//! no batching: the design Flashsale's coalesced script calls are measured
//! against. It checks that Redis sold exactly what the queue holds.
//!
//! `--mode redis-coalesced` runs Flashsale's own step on the same servers
//! and the same loop: `RedisStock::reserve` (coalesced purchase-script
//! calls) then `QueueHandoff::hand_off` (one confirmed message per
//! batch), so the two designs are compared without HTTP in between.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
// Every dynamic statement below only splices in `schema`, a name this
// module generates from hex digits; no outside input reaches SQL text.
use sqlx::AssertSqlSafe;

use crate::args::BenchArgs;
use crate::buyers::Buyers;
use crate::checks::Check;
use crate::load::{self, Action, Answer, Outcome, Plan, Requests};
use crate::report::Summary;

/// Most PostgreSQL connections the `pg-row-lock` baseline opens.
const MAX_PG_CONNECTIONS: u32 = 64;

/// Runs the row-lock baseline; the summary is `ok` when the database agrees
/// with the purchases the bench saw.
///
/// # Errors
/// When the database cannot be reached or the schema cannot be set up.
pub async fn pg_row_lock(args: &BenchArgs) -> anyhow::Result<Summary> {
    let schema = format!("fs_bench_{:08x}", rand::random::<u32>());
    let pool = PgPoolOptions::new()
        // PostgreSQL's default `max_connections` is 100: beyond
        // `MAX_PG_CONNECTIONS` buyers, the rest queue for a pooled
        // connection (as they would behind any real connection pool).
        .max_connections(args.concurrency.clamp(1, MAX_PG_CONNECTIONS))
        .connect(&args.database)
        .await
        .context("connecting to --database for the pg-row-lock baseline")?;
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.stock (id INT PRIMARY KEY, n BIGINT NOT NULL)"),
        format!(
            "CREATE TABLE {schema}.orders (order_id BIGSERIAL PRIMARY KEY, \
             user_id TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ),
        format!("INSERT INTO {schema}.stock VALUES (1, {})", args.stock),
    ] {
        sqlx::query(AssertSqlSafe(sql)).execute(&pool).await?;
    }
    let result = sell_on_pg(args, &pool, &schema).await;
    let _ = sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&pool)
        .await;
    pool.close().await;
    result
}

async fn sell_on_pg(
    args: &BenchArgs,
    pool: &sqlx::PgPool,
    schema: &str,
) -> anyhow::Result<Summary> {
    let update = format!("UPDATE {schema}.stock SET n = n - 1 WHERE id = 1 AND n > 0");
    let insert = format!("INSERT INTO {schema}.orders (user_id) VALUES ($1)");
    let pool_ = pool.clone();
    let outcome = run_baseline(args, move |job: load::Job| {
        let (pool, update, insert) = (pool_.clone(), update.clone(), insert.clone());
        async move {
            let purchase = async {
                let mut tx = pool.begin().await?;
                let taken = sqlx::query(AssertSqlSafe(update.as_str()))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if taken == 1 {
                    sqlx::query(AssertSqlSafe(insert.as_str()))
                        .bind(format!("user-{}", job.user))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                anyhow::Ok(taken == 1)
            };
            decided(purchase.await)
        }
    })
    .await?;
    let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT n FROM {schema}.stock WHERE id = 1"
    )))
    .fetch_one(pool)
    .await?;
    let stored: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {schema}.orders"
    )))
    .fetch_one(pool)
    .await?;
    let sold = args.stock.saturating_sub(u64::try_from(left).unwrap_or(0));
    let accepted = outcome.orders;
    let agrees = Check::new(
        "store_agrees",
        sold == accepted && u64::try_from(stored).unwrap_or(0) == accepted,
        format!("database sold {sold}, holds {stored} orders, bench saw {accepted} accepted"),
    );
    Ok(summarise(args, &args.database, &outcome, agrees))
}

/// A baseline's purchase as an answer: a sale, a refusal, or an error
/// (which leaves the purchase's fate unknown).
fn decided(result: anyhow::Result<bool>) -> Answer {
    match result {
        Ok(true) => Answer::Decided {
            sold: true,
            key: "sold",
        },
        Ok(false) => Answer::Decided {
            sold: false,
            key: "refused",
        },
        Err(e) => Answer::Failed {
            key: "error",
            error: format!("{e:#}"),
        },
    }
}

/// The one load loop ([`load::drive`]) on a baseline's purchase: buyer
/// `i % --users`, one unit each, until `--requests` or `--duration`.
async fn run_baseline<A: Action>(args: &BenchArgs, purchase: A) -> anyhow::Result<Outcome> {
    let plan = Plan {
        requests: Requests::RoundRobin {
            users: args.users.max(1),
            quantity: 1,
            stop: args.stop(),
        },
        concurrency: usize::try_from(args.concurrency)?,
        sale_id: None,
        buyers: Arc::new(Buyers::none()),
        progress: !args.json,
        watch: None,
    };
    load::drive(plan, purchase).await
}

/// The report of a baseline run against `url`: its agreement check, and
/// one that every purchase got a decision.
fn summarise(args: &BenchArgs, url: &str, outcome: &Outcome, agrees: Check) -> Summary {
    let decided = Check::new(
        "every_purchase_decided",
        outcome.failures.count == 0,
        if outcome.failures.count == 0 {
            format!("{} purchases, each sold or refused", outcome.requests)
        } else {
            format!(
                "{} purchases failed: {}",
                outcome.failures.count,
                outcome.failures.first.join("; ")
            )
        },
    );
    let mut summary = Summary::new(args, "", outcome, vec![agrees, decided]);
    summary.url = without_password(url);
    summary.stock = Some(args.stock);
    summary.per_user_limit = Some(args.per_user_limit);
    summary
}

/// `url` with its password removed, for the report.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only a URL that cannot have a password refuses this.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

/// Runs the Redis + RabbitMQ baseline; the summary is `ok` when Redis sold
/// exactly what the queue received.
///
/// # Errors
/// When Redis or RabbitMQ cannot be reached.
pub async fn redis_evalsha(args: &BenchArgs) -> anyhow::Result<Summary> {
    use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
    use flashsale::backend::queue::OrderQueue;
    let prefix = format!("fs_bench_{:08x}", rand::random::<u32>());
    let client = redis::Client::open(args.redis.as_str()).context("--redis")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to --redis for the redis-evalsha baseline")?;
    let (stock_key, buyers_key) = (format!("{prefix}:stock"), format!("{prefix}:held"));
    let _: () = redis::cmd("SET")
        .arg(&stock_key)
        .arg(args.stock)
        .query_async(&mut conn)
        .await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(crate::classic::PURCHASE_LUA)
        .query_async(&mut conn)
        .await?;
    let queue = Arc::new(
        AmqpQueue::connect(&AmqpSettings {
            url: args.queue.clone(),
            prefix: prefix.clone(),
            management: Default::default(),
        })
        .await
        .context("connecting to --queue for the redis-evalsha baseline")?,
    );
    let limit = args.per_user_limit;
    let outcome = {
        let (conn, queue, sha) = (conn.clone(), queue.clone(), sha.clone());
        let (stock_key, buyers_key) = (stock_key.clone(), buyers_key.clone());
        run_baseline(args, move |job: load::Job| {
            let (mut conn, queue, sha) = (conn.clone(), queue.clone(), sha.clone());
            let (stock_key, buyers_key) = (stock_key.clone(), buyers_key.clone());
            async move {
                let purchase = async {
                    let user = format!("user-{}", job.user);
                    let taken: i64 = redis::cmd("EVALSHA")
                        .arg(&sha)
                        .arg(2)
                        .arg(&stock_key)
                        .arg(&buyers_key)
                        .arg(&user)
                        .arg(1)
                        .arg(limit)
                        .query_async(&mut conn)
                        .await?;
                    if taken == 1 {
                        let order = json!({"order": job.index, "user": user}).to_string();
                        queue.publish_orders(order.as_bytes()).await?;
                    }
                    anyhow::Ok(taken == 1)
                };
                decided(purchase.await)
            }
        })
        .await?
    };
    let left: i64 = redis::cmd("GET")
        .arg(&stock_key)
        .query_async(&mut conn)
        .await?;
    let queued = queue.depth().await?.ready;
    let sold = args.stock.saturating_sub(u64::try_from(left).unwrap_or(0));
    let accepted = outcome.orders;
    let agrees = Check::new(
        "store_agrees",
        sold == accepted && u64::from(queued) == accepted,
        format!(
            "Redis sold {sold}, the queue holds {queued} orders, bench saw {accepted} accepted"
        ),
    );
    let _ = queue.delete_topology().await;
    let _: Result<i64, _> = redis::cmd("DEL")
        .arg(&stock_key)
        .arg(&buyers_key)
        .query_async(&mut conn)
        .await;
    Ok(summarise(args, &args.redis, &outcome, agrees))
}

/// Runs Flashsale's coalesced decision + publish on the `redis-evalsha`
/// loop; the summary is `ok` when Redis sold exactly what was accepted and
/// the outbox emptied.
///
/// # Errors
/// When Redis or RabbitMQ cannot be reached.
pub async fn redis_coalesced(args: &BenchArgs) -> anyhow::Result<Summary> {
    use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
    use flashsale::backend::queue::OrderQueue;
    use flashsale::backend::redis::{RedisSettings, RedisStock};
    use flashsale::backend::stock::{Decision, Reservation, StockStore};
    use flashsale::domain::{now_ms, Ledger, Order, OrderStatus, Sale};
    use flashsale::engine::handoff::{OrderHandoff, QueueHandoff};
    let prefix = format!("fs_bench_{:08x}", rand::random::<u32>());
    let stock = RedisStock::connect(&RedisSettings {
        fencing: args.redis_fencing,
        ..RedisSettings::new(vec![args.redis.clone()], prefix.clone())
    })
    .await
    .context("connecting to --redis for the redis-coalesced run")?;
    let queue: Arc<dyn OrderQueue> = Arc::new(
        AmqpQueue::connect(&AmqpSettings {
            url: args.queue.clone(),
            prefix: prefix.clone(),
            management: Default::default(),
        })
        .await
        .context("connecting to --queue for the redis-coalesced run")?,
    );
    let sale = Sale {
        id: 1,
        item: "bench".into(),
        stock: args.stock,
        per_user_limit: u32::try_from(args.per_user_limit).unwrap_or(u32::MAX),
        starts_at_ms: 0,
        ends_at_ms: None,
        payment_window_secs: None,
        created_at_ms: now_ms(),
        front_door: Default::default(),
        buckets: 1,
    };
    stock.seed_new(&sale).await?;
    // The node's own parts: the coalesced decision and the coalesced,
    // confirmed publish (the ledger only mirrors Redis's count here).
    let handoff = Arc::new(QueueHandoff::new(queue.clone(), stock.clone()));
    let ledger = Arc::new(Ledger::new(sale.stock, sale.per_user_limit));
    let sale = Arc::new(sale);
    let outcome = {
        let stock = stock.clone();
        run_baseline(args, move |job: load::Job| {
            let (stock, handoff, ledger, sale) =
                (stock.clone(), handoff.clone(), ledger.clone(), sale.clone());
            async move {
                let purchase = async {
                    let now = now_ms();
                    let order = Order {
                        id: job.index + 1,
                        sale_id: 1,
                        user_id: format!("user-{}", job.user),
                        quantity: 1,
                        status: OrderStatus::PendingPayment,
                        idempotency_key: None,
                        created_at_ms: now,
                        updated_at_ms: now,
                        expires_at_ms: None,
                    };
                    let reservation = Arc::new(Reservation::new(order));
                    let decision = stock
                        .reserve(sale.schedule(), &ledger, reservation.clone())
                        .await?;
                    let accepted = decision == Decision::Accepted;
                    if accepted {
                        handoff.hand_off(&reservation).await?;
                    }
                    anyhow::Ok(accepted)
                };
                decided(purchase.await)
            }
        })
        .await?
    };
    // The outbox cleaner runs behind the answers: give it a moment.
    let mut state = stock.state(1).await?;
    for _ in 0..50 {
        if state.is_some_and(|s| s.outbox == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = stock.state(1).await?;
    }
    let state = state.context("the sale vanished from Redis")?;
    let accepted = outcome.orders;
    let agrees = Check::new(
        "store_agrees",
        state.sold == accepted && state.outbox == 0,
        format!(
            "Redis sold {}, outbox {}, bench saw {accepted} accepted",
            state.sold, state.outbox
        ),
    );
    let _ = queue.delete_topology().await;
    let _ = stock.forget(1).await;
    Ok(summarise(args, &args.redis, &outcome, agrees))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_the_report() {
        assert_eq!(
            without_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            without_password("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(without_password("not a url"), "<unparsable URL>");
    }

    #[test]
    fn answers_of_a_baseline_purchase() {
        assert!(matches!(
            decided(Ok(true)),
            Answer::Decided { sold: true, .. }
        ));
        assert!(matches!(
            decided(Ok(false)),
            Answer::Decided { sold: false, .. }
        ));
        assert!(matches!(
            decided(Err(anyhow::anyhow!("down"))),
            Answer::Failed { key: "error", error } if error == "down"
        ));
    }
}
