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
//! `EVALSHA` of a script that checks the buyer and the stock and decrements,
//! then — when a unit was taken — one publish of the order to a durable
//! RabbitMQ queue, awaited until the broker confirms. One round trip each,
//! no batching: the design Flashsale's coalesced script calls are measured
//! against. It checks that Redis sold exactly what the queue holds.
//!
//! `--mode redis-coalesced` runs Flashsale's own step on the same servers
//! and the same loop: [`RedisStock::reserve`] (coalesced purchase-script
//! calls) then [`Distributed::publish_order`] (one confirmed message per
//! batch), so the two designs are compared without HTTP in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
// Every dynamic statement below only splices in `schema`, a name this
// module generates from hex digits; no outside input reaches SQL text.
use sqlx::AssertSqlSafe;

use super::BenchArgs;

/// Most PostgreSQL connections the `pg-row-lock` baseline opens.
const MAX_PG_CONNECTIONS: u32 = 64;

/// Runs the row-lock baseline; `Ok(true)` when the database agrees with the
/// purchases the bench saw.
///
/// # Errors
/// When the database cannot be reached or the schema cannot be set up.
pub async fn pg_row_lock(args: &BenchArgs) -> anyhow::Result<bool> {
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
    let result = drive(args, &pool, &schema).await;
    let _ = sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&pool)
        .await;
    pool.close().await;
    result
}

async fn drive(args: &BenchArgs, pool: &sqlx::PgPool, schema: &str) -> anyhow::Result<bool> {
    let update = format!("UPDATE {schema}.stock SET n = n - 1 WHERE id = 1 AND n > 0");
    let insert = format!("INSERT INTO {schema}.orders (user_id) VALUES ($1)");
    let users = u64::from(args.users.max(1));
    let pool_ = pool.clone();
    let tally = run_workers(args, move |i| {
        let (pool, update, insert) = (pool_.clone(), update.clone(), insert.clone());
        async move {
            let mut tx = pool.begin().await?;
            let taken = sqlx::query(AssertSqlSafe(update.as_str()))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if taken == 1 {
                sqlx::query(AssertSqlSafe(insert.as_str()))
                    .bind(format!("user-{}", i % users))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(taken == 1)
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
    let accepted = tally.accepted;
    let ok = sold == accepted && u64::try_from(stored).unwrap_or(0) == accepted;
    report(
        args,
        "pg-row-lock",
        tally,
        ok,
        &format!("database sold {sold}, holds {stored} orders, bench saw {accepted} accepted"),
    );
    Ok(ok)
}

/// The load loop every baseline shares: `--concurrency` workers take
/// request numbers until `--requests` (or `--duration`) is reached, run
/// `purchase(i)` (`true` = a unit was sold) and record its latency.
async fn run_workers<F, Fut>(args: &BenchArgs, purchase: F) -> anyhow::Result<Tally>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<bool>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let limit = args.requests;
    let deadline = args.duration.unwrap_or(Duration::from_secs(10));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (purchase, next) = (purchase.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut accepted, mut rejected) = (0u64, 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let done = match limit {
                    Some(n) => i >= n,
                    None => started.elapsed() >= deadline,
                };
                if done {
                    break;
                }
                let sent = Instant::now();
                let sold = purchase(i).await?;
                latency.saturating_record(
                    u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX),
                );
                if sold {
                    accepted += 1;
                } else {
                    rejected += 1;
                }
            }
            anyhow::Ok((latency, accepted, rejected))
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut accepted, mut rejected) = (0u64, 0u64);
    for task in tasks {
        let (l, a, r) = task.await??;
        latency.add(&l)?;
        accepted += a;
        rejected += r;
    }
    Ok(Tally {
        latency,
        accepted,
        rejected,
        elapsed: started.elapsed().as_secs_f64(),
    })
}

/// What a baseline run counted.
struct Tally {
    latency: Histogram<u64>,
    accepted: u64,
    rejected: u64,
    elapsed: f64,
}

/// Prints a baseline's result: one JSON line with `--json`, else a report.
fn report(args: &BenchArgs, mode: &str, t: Tally, ok: bool, check: &str) {
    let Tally {
        latency,
        accepted,
        rejected,
        elapsed,
    } = t;
    let total = accepted + rejected;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        println!(
            "{}",
            json!({
                "mode": mode,
                "concurrency": args.concurrency,
                "stock": args.stock,
                "requests": total,
                "elapsed_secs": elapsed,
                "throughput_rps": total as f64 / elapsed,
                "accepted": accepted,
                "accepted_per_sec": accepted as f64 / elapsed,
                "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": latency.max() as f64 / 1000.0},
                "ok": ok,
            })
        );
    } else {
        println!(
            "flashsale bench: {mode} baseline, {} connections",
            args.concurrency
        );
        println!(
            "purchases {total} in {elapsed:.2} s = {:.1}/s; accepted {accepted} ({:.1} orders/s), refused {rejected}",
            total as f64 / elapsed,
            accepted as f64 / elapsed
        );
        println!(
            "latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            latency.max() as f64 / 1000.0
        );
        println!("{}: {check}", if ok { "PASS" } else { "FAIL" });
    }
}

const SECKILL_LUA: &str = r"
-- KEYS: stock, buyers; ARGV: user. 1 = bought, 0 = sold out, -1 = bought before
if tonumber(redis.call('GET', KEYS[1]) or '0') <= 0 then return 0 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return -1 end
redis.call('DECR', KEYS[1])
return 1
";

/// Runs the Redis + RabbitMQ baseline; `Ok(true)` when Redis sold exactly
/// what the queue received.
///
/// # Errors
/// When Redis or RabbitMQ cannot be reached.
pub async fn redis_evalsha(args: &BenchArgs) -> anyhow::Result<bool> {
    use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
    let prefix = format!("fs_bench_{:08x}", rand::random::<u32>());
    let client = redis::Client::open(args.redis.as_str()).context("--redis")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to --redis for the redis-evalsha baseline")?;
    let (stock_key, buyers_key) = (format!("{prefix}:stock"), format!("{prefix}:buyers"));
    let _: () = redis::cmd("SET")
        .arg(&stock_key)
        .arg(args.stock)
        .query_async(&mut conn)
        .await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SECKILL_LUA)
        .query_async(&mut conn)
        .await?;
    let queue = Arc::new(
        AmqpQueue::connect(&AmqpSettings {
            url: args.queue.clone(),
            prefix: prefix.clone(),
        })
        .await
        .context("connecting to --queue for the redis-evalsha baseline")?,
    );
    let users = u64::from(args.users.max(1));
    let tally = {
        let (conn, queue, sha) = (conn.clone(), queue.clone(), sha.clone());
        let (stock_key, buyers_key) = (stock_key.clone(), buyers_key.clone());
        run_workers(args, move |i| {
            let (mut conn, queue, sha) = (conn.clone(), queue.clone(), sha.clone());
            let (stock_key, buyers_key) = (stock_key.clone(), buyers_key.clone());
            async move {
                let user = format!("user-{}", i % users);
                let taken: i64 = redis::cmd("EVALSHA")
                    .arg(&sha)
                    .arg(2)
                    .arg(&stock_key)
                    .arg(&buyers_key)
                    .arg(&user)
                    .query_async(&mut conn)
                    .await?;
                if taken == 1 {
                    let order = json!({"order": i, "user": user}).to_string();
                    queue.publish_order(order.as_bytes()).await?;
                }
                Ok(taken == 1)
            }
        })
        .await?
    };
    let left: i64 = redis::cmd("GET")
        .arg(&stock_key)
        .query_async(&mut conn)
        .await?;
    let (queued, _) = queue.depth().await?;
    let sold = args.stock.saturating_sub(u64::try_from(left).unwrap_or(0));
    let accepted = tally.accepted;
    let ok = sold == accepted && u64::from(queued) == accepted;
    let _ = queue.delete_topology().await;
    let _: Result<i64, _> = redis::cmd("DEL")
        .arg(&stock_key)
        .arg(&buyers_key)
        .query_async(&mut conn)
        .await;
    report(
        args,
        "redis-evalsha",
        tally,
        ok,
        &format!(
            "Redis sold {sold}, the queue holds {queued} orders, bench saw {accepted} accepted"
        ),
    );
    Ok(ok)
}

/// Runs Flashsale's coalesced decision + publish on the `redis-evalsha`
/// loop; `Ok(true)` when Redis sold exactly what was accepted and the
/// outbox emptied.
///
/// # Errors
/// When Redis or RabbitMQ cannot be reached.
pub async fn redis_coalesced(args: &BenchArgs) -> anyhow::Result<bool> {
    use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
    use flashsale::backend::redis::{Decision, RedisSettings, RedisStock, Reservation};
    use flashsale::domain::{now_ms, Order, OrderStatus, Sale};
    use flashsale::engine::distributed::Distributed;
    let prefix = format!("fs_bench_{:08x}", rand::random::<u32>());
    let stock = RedisStock::connect(&RedisSettings {
        urls: vec![args.redis.clone()],
        cluster: false,
        prefix: prefix.clone(),
    })
    .await
    .context("connecting to --redis for the redis-coalesced run")?;
    let queue = Arc::new(
        AmqpQueue::connect(&AmqpSettings {
            url: args.queue.clone(),
            prefix: prefix.clone(),
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
    };
    stock.seed_new(&sale).await?;
    let cluster = Distributed::new(stock.clone(), queue.clone());
    let users = u64::from(args.users.max(1));
    let tally = {
        let cluster = cluster.clone();
        run_workers(args, move |i| {
            let cluster = cluster.clone();
            async move {
                let now = now_ms();
                let order = Order {
                    id: i + 1,
                    sale_id: 1,
                    user_id: format!("user-{}", i % users),
                    quantity: 1,
                    status: OrderStatus::PendingPayment,
                    idempotency_key: None,
                    created_at_ms: now,
                    updated_at_ms: now,
                    expires_at_ms: None,
                };
                let payload = order.to_wire();
                let decision = cluster
                    .stock
                    .reserve(Reservation {
                        order: order.clone(),
                        payload: payload.clone(),
                    })
                    .await?;
                let accepted = matches!(decision, Decision::Accepted { .. });
                if accepted {
                    cluster.publish_order(payload.clone()).await?;
                    cluster.confirmed(&order, payload);
                }
                Ok(accepted)
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
    let accepted = tally.accepted;
    let ok = state.sold == accepted && state.outbox == 0;
    let _ = queue.delete_topology().await;
    let _ = stock.forget(1).await;
    report(
        args,
        "redis-coalesced",
        tally,
        ok,
        &format!(
            "Redis sold {}, outbox {}, bench saw {accepted} accepted",
            state.sold, state.outbox
        ),
    );
    Ok(ok)
}
