//! The classic design Flashsale replaces, as a baseline anyone can rerun:
//! `--mode pg-row-lock`.
//!
//! Every purchase is one PostgreSQL transaction that takes the row lock on
//! the item's stock row — `UPDATE stock SET n = n - 1 WHERE id = 1 AND n > 0`
//! — and, when a unit was taken, inserts the order, then commits. All buyers
//! queue on that one row. The bench drives the database directly (no HTTP),
//! `--concurrency` connections at once, in a schema of its own that it drops
//! afterwards, and checks that it sold exactly what the orders table holds.

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

/// Runs the row-lock baseline; `Ok(true)` when the database agrees with the
/// purchases the bench saw.
///
/// # Errors
/// When the database cannot be reached or the schema cannot be set up.
pub async fn pg_row_lock(args: &BenchArgs) -> anyhow::Result<bool> {
    let schema = format!("fs_bench_{:08x}", rand::random::<u32>());
    let pool = PgPoolOptions::new()
        .max_connections(args.concurrency.max(1))
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
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let limit = args.requests;
    let deadline = args.duration.unwrap_or(Duration::from_secs(10));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (pool, next, update, insert) =
            (pool.clone(), next.clone(), update.clone(), insert.clone());
        let users = u64::from(args.users.max(1));
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut accepted, mut sold_out) = (0u64, 0u64);
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
                latency.saturating_record(
                    u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX),
                );
                if taken == 1 {
                    accepted += 1;
                } else {
                    sold_out += 1;
                }
            }
            anyhow::Ok((latency, accepted, sold_out))
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut accepted, mut sold_out) = (0u64, 0u64);
    for task in tasks {
        let (l, a, s) = task.await??;
        latency.add(&l)?;
        accepted += a;
        sold_out += s;
    }
    let elapsed = started.elapsed().as_secs_f64();
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
    let ok = sold == accepted && u64::try_from(stored).unwrap_or(0) == accepted;
    let total = accepted + sold_out;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        println!(
            "{}",
            json!({
                "mode": "pg-row-lock",
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
            "flashsale bench: pg-row-lock baseline, {} connections",
            args.concurrency
        );
        println!(
            "transactions {total} in {elapsed:.2} s = {:.1} tx/s; accepted {accepted} ({:.1} orders/s), sold out {sold_out}",
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
        println!(
            "{}: database sold {sold}, holds {stored} orders, bench saw {accepted} accepted",
            if ok { "PASS" } else { "FAIL" }
        );
    }
    Ok(ok)
}
