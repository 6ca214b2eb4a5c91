//! `--mode writer-drain`: how fast the product's order writer empties a
//! pre-filled queue into the database.
//!
//! 1. A private namespace on `--queue` (`fs_bench_<hex>.orders`, …) and a
//!    private PostgreSQL schema or MariaDB/MySQL database on `--database`,
//!    both removed afterwards.
//! 2. `--requests` orders of one sale, published with the product's own
//!    [`OrderQueue::publish_orders`] in messages of `--orders-per-message`
//!    (the JSON array the hand-off sends), each confirmed by the broker.
//! 3. The product's writer — [`spawn_order_writer_with`] on an [`Engine`]
//!    over the product's own backends, in this process — is started, and
//!    the clock runs until the database holds every order.
//! 4. Checks: the database holds exactly the orders published (the schema
//!    is private and `order_id` its primary key, so a count per sale of N
//!    with N distinct ids published means each is stored once; a sample is
//!    read back field by field), and the queue is empty with no dead
//!    letters.
//!
//! In-process rather than a `flashsale serve` child: the writer is the same
//! code either way, the drain needs no HTTP, Redis or tokens, and the bench
//! can start the writer at a known instant after the fill (a child would
//! start consuming while the queue is still being filled).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
use flashsale::backend::queue::OrderQueue;
use flashsale::backend::sql::{DatabaseKind, PgInsert, SqlSettings};
use flashsale::backend::BackendSettings;
use flashsale::domain::{now_ms, Order, OrderStatus, Sale};
use flashsale::engine::{Engine, EngineParts, EngineSettings};
use flashsale::worker::order_writer::{spawn_order_writer_with, WriterSettings};
use serde::Serialize;
use sqlx::AssertSqlSafe;
use tokio_util::sync::CancellationToken;

use crate::args::BenchArgs;
use crate::checks::Check;

/// Publishes in flight at once while filling the queue.
const FILL_CONCURRENCY: usize = 64;
/// Orders read back field by field.
const READBACK: usize = 200;

/// The result of a drain run (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct DrainSummary {
    /// `writer-drain`.
    pub mode: &'static str,
    /// `postgres` or `mysql`.
    pub database: &'static str,
    /// Orders published and expected in the database.
    pub orders: u64,
    /// Orders per queue message.
    pub orders_per_message: u32,
    /// Messages published.
    pub messages: u64,
    /// The writer's settings.
    pub consumers: usize,
    /// Prefetch per consumer.
    pub prefetch: u16,
    /// Orders per consumer batch.
    pub batch: usize,
    /// Inserts the store runs side by side.
    pub concurrent_inserts: usize,
    /// PostgreSQL insert shape (`unnest` or `values`; `None` on MySQL).
    pub pg_insert: Option<&'static str>,
    /// Seconds to fill the queue.
    pub fill_secs: f64,
    /// Seconds from the writer's start to the last order in the database.
    pub drain_secs: f64,
    /// Orders stored per second while draining.
    pub orders_per_sec: f64,
    /// Orders the database holds at the end.
    pub stored: u64,
    /// Every verdict.
    pub checks: Vec<Check>,
    /// True when every check held.
    pub ok: bool,
}

impl DrainSummary {
    /// The report for a person.
    pub fn render(&self) -> String {
        let mut out = format!(
            "writer-drain into {}: {} orders ({} per message, {} messages)\n\
             writer: {} consumers, prefetch {}, batch {}, {} inserts side by side{}\n\
             filled in {:.2} s; drained in {:.2} s: {:.0} orders/s\n",
            self.database,
            self.orders,
            self.orders_per_message,
            self.messages,
            self.consumers,
            self.prefetch,
            self.batch,
            self.concurrent_inserts,
            self.pg_insert
                .map(|shape| format!(", {shape} insert"))
                .unwrap_or_default(),
            self.fill_secs,
            self.drain_secs,
            self.orders_per_sec,
        );
        for c in &self.checks {
            out.push_str(&format!(
                "  [{}] {}: {}\n",
                if c.ok { "ok" } else { "FAILED" },
                c.name,
                c.detail
            ));
        }
        out
    }
}

/// Where the run's rows live, and how to remove them.
enum Place {
    Pg {
        admin: sqlx::PgPool,
        schema: String,
    },
    My {
        admin: sqlx::MySqlPool,
        database: String,
    },
}

impl Place {
    /// Creates a private schema / database; returns it and its URL.
    async fn create(url: &str, name: &str) -> anyhow::Result<(Self, String)> {
        let mut private = url::Url::parse(url).context("--database")?;
        // `name` is generated from hex digits below; no input reaches SQL.
        match DatabaseKind::of_url(url).map_err(|e| anyhow::anyhow!("{e}"))? {
            DatabaseKind::Postgres => {
                let admin = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .context("connecting to --database")?;
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
                    .execute(&admin)
                    .await?;
                private
                    .query_pairs_mut()
                    .append_pair("options", &format!("-csearch_path={name}"));
                Ok((
                    Self::Pg {
                        admin,
                        schema: name.to_owned(),
                    },
                    private.into(),
                ))
            }
            DatabaseKind::MySql => {
                let admin = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .context("connecting to --database")?;
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
                    .execute(&admin)
                    .await?;
                private.set_path(&format!("/{name}"));
                Ok((
                    Self::My {
                        admin,
                        database: name.to_owned(),
                    },
                    private.into(),
                ))
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Pg { .. } => "postgres",
            Self::My { .. } => "mysql",
        }
    }

    async fn drop_all(self) {
        match self {
            Self::Pg { admin, schema } => {
                let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                )))
                .execute(&admin)
                .await;
                admin.close().await;
            }
            Self::My { admin, database } => {
                let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{database}`"
                )))
                .execute(&admin)
                .await;
                admin.close().await;
            }
        }
    }
}

/// The writer settings a run uses, from the flags.
pub fn writer_settings(args: &BenchArgs) -> WriterSettings {
    WriterSettings {
        consumers: usize::from(args.writer_consumers),
        prefetch: args.writer_prefetch,
        batch: args.writer_batch as usize,
        ..WriterSettings::default()
    }
}

/// Runs the drain; see the module docs.
///
/// # Errors
/// When the database or the broker cannot be reached or set up. A writer
/// that does not store every order within a minute of the expected time
/// fails the `every_order_stored_once` check.
pub async fn run(args: &BenchArgs) -> anyhow::Result<DrainSummary> {
    let name = format!("fs_bench_{:08x}", rand::random::<u32>());
    let (place, url) = Place::create(&args.database, &name).await?;
    let queue = AmqpQueue::connect(&AmqpSettings::new(args.queue.clone(), name.clone()))
        .await
        .context("connecting to --queue");
    let queue: Arc<dyn OrderQueue> = match queue {
        Ok(q) => Arc::new(q),
        Err(e) => {
            place.drop_all().await;
            return Err(e);
        }
    };
    let outcome = drain(args, &url, place.kind(), queue.clone()).await;
    let _ = queue.delete_topology().await;
    place.drop_all().await;
    outcome
}

async fn drain(
    args: &BenchArgs,
    url: &str,
    kind: &'static str,
    queue: Arc<dyn OrderQueue>,
) -> anyhow::Result<DrainSummary> {
    let n = args.requests.unwrap_or(100_000);
    let per_message = args.orders_per_message.max(1);
    let sql = SqlSettings {
        concurrent_inserts: usize::from(args.concurrent_inserts.max(1)),
        pg_insert: match args.pg_insert {
            crate::args::PgShape::Unnest => PgInsert::Unnest,
            crate::args::PgShape::Values => PgInsert::Values,
        },
        ..SqlSettings::default()
    };
    let mut backends = flashsale::backend::connect(&BackendSettings::Sql {
        database: url.to_owned(),
        sql: sql.clone(),
    })
    .await?;
    let sale = Sale {
        id: 1,
        item: "writer drain".into(),
        stock: n,
        per_user_limit: 1,
        starts_at_ms: 0,
        ends_at_ms: None,
        payment_window_secs: None,
        created_at_ms: now_ms(),
        front_door: Default::default(),
        buckets: 1,
    };
    backends.store.create_sale(&sale).await?;
    let store = backends.store.clone();

    // Fill: the hand-off's message format, confirmed publishes.
    let orders: Vec<Order> = (0..n)
        .map(|i| Order {
            id: 1_000 + i,
            sale_id: sale.id,
            user_id: format!("drain-{i}"),
            quantity: 1,
            status: OrderStatus::PendingPayment,
            idempotency_key: None,
            created_at_ms: now_ms(),
            updated_at_ms: now_ms(),
            expires_at_ms: None,
        })
        .collect();
    let bodies: Vec<String> = orders
        .chunks(per_message as usize)
        .map(|chunk| {
            if chunk.len() == 1 {
                chunk[0].to_wire()
            } else {
                let wires: Vec<String> = chunk.iter().map(Order::to_wire).collect();
                format!("[{}]", wires.join(","))
            }
        })
        .collect();
    let messages = bodies.len() as u64;
    if !args.json {
        eprintln!("filling the queue with {n} orders in {messages} messages…");
    }
    let filled = Instant::now();
    use futures::StreamExt as _;
    let mut publishes = futures::stream::iter(bodies.into_iter().map(|body| {
        let queue = queue.clone();
        async move { queue.publish_orders(body.as_bytes()).await }
    }))
    .buffer_unordered(FILL_CONCURRENCY);
    while let Some(published) = publishes.next().await {
        published.context("publishing to --queue")?;
    }
    let fill_secs = filled.elapsed().as_secs_f64();

    // The product's writer on the product's engine.
    backends.queue = Some(queue.clone());
    let stop = CancellationToken::new();
    let (engine, intents) = Engine::load(
        EngineParts::from_backends(&backends),
        &EngineSettings::default(),
        stop.clone(),
    )
    .await?;
    let settings = writer_settings(args);
    if !args.json {
        eprintln!(
            "draining with {} consumers (prefetch {}, batch {})…",
            settings.consumers, settings.prefetch, settings.batch
        );
    }
    let started = Instant::now();
    let writer = spawn_order_writer_with(engine.clone(), queue.clone(), &settings, stop.clone());
    let patience = Duration::from_secs(60) + Duration::from_millis(n / 5);
    let mut stored;
    let drain_secs = loop {
        stored = store.sale_audit(sale.id, now_ms()).await?.orders;
        if stored >= n {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > patience {
            break started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let the last acks land before the queue is judged.
    let mut depth = queue.depth().await?;
    let settled = Instant::now();
    while depth.ready > 0 && settled.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        depth = queue.depth().await?;
    }
    stop.cancel();
    let _ = writer.await;
    let _ = intents.await;

    let mut checks = vec![Check::new(
        "every_order_stored_once",
        stored == n,
        format!("{stored} of {n} published orders in the database (order_id is its key)"),
    )];
    let mut mismatched = Vec::new();
    let step = (orders.len() / READBACK).max(1);
    for o in orders.iter().step_by(step) {
        match store.get_order(o.id).await? {
            Some(got) if got == *o => {}
            other => mismatched.push(format!("order {}: {other:?}", o.id)),
        }
    }
    checks.push(Check::new(
        "orders_read_back",
        mismatched.is_empty(),
        if mismatched.is_empty() {
            format!(
                "{} orders read back as published",
                orders.len().div_ceil(step)
            )
        } else {
            mismatched.truncate(3);
            mismatched.join("; ")
        },
    ));
    checks.push(Check::new(
        "queue_drained",
        depth.ready == 0 && depth.dead == 0,
        format!("{} ready, {} dead-lettered", depth.ready, depth.dead),
    ));
    store.shutdown().await;
    let ok = checks.iter().all(|c| c.ok);
    Ok(DrainSummary {
        mode: "writer-drain",
        database: kind,
        orders: n,
        orders_per_message: per_message,
        messages,
        consumers: settings.consumers,
        prefetch: settings.prefetch,
        batch: settings.batch,
        concurrent_inserts: sql.concurrent_inserts,
        pg_insert: (kind == "postgres").then_some(match sql.pg_insert {
            PgInsert::Unnest => "unnest",
            PgInsert::Values => "values",
        }),
        fill_secs: (fill_secs * 1000.0).round() / 1000.0,
        drain_secs: (drain_secs * 1000.0).round() / 1000.0,
        orders_per_sec: (stored as f64 / drain_secs.max(1e-9)).round(),
        stored,
        checks,
        ok,
    })
}
