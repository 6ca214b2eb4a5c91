//! The order writer with several consumers, on the real RabbitMQ and
//! PostgreSQL or MariaDB: messages of every size, each published twice (as
//! a relay and the first publisher both may), a poison message and an
//! order whose idempotency key another order already holds. Every order is
//! stored exactly once, the two bad messages and nothing else end on the
//! dead-letter queue, and the queue drains.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
use flashsale::backend::queue::OrderQueue;
use flashsale::domain::{now_ms, Order, OrderStatus};

use crate::kit::{spawn_app_with, Backends, Db};

/// Consumers of the node's writer: more than the default, so they compete
/// for one queue's deliveries.
const CONSUMERS: usize = 4;

fn order(id: u64, sale_id: u64, user: &str, key: Option<&str>) -> Order {
    Order {
        id,
        sale_id,
        user_id: user.to_owned(),
        quantity: 1,
        status: OrderStatus::PendingPayment,
        idempotency_key: key.map(str::to_owned),
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
        expires_at_ms: None,
    }
}

/// The hand-off's message: one order, or a JSON array of them.
fn message(orders: &[Order]) -> String {
    if orders.len() == 1 {
        orders[0].to_wire()
    } else {
        let wires: Vec<String> = orders.iter().map(Order::to_wire).collect();
        format!("[{}]", wires.join(","))
    }
}

async fn several_consumers_store_every_order_exactly_once(db: Db) {
    let backends = Backends::new(db).await;
    let node = spawn_app_with(|s| {
        backends.configure(s);
        s.writer.consumers = CONSUMERS;
        // Small batches and prefetch: many batches in flight at once.
        s.writer.batch = 40;
        s.writer.prefetch = 20;
    })
    .await;
    let sale = node.open_sale(100_000, 1).await;
    let sale_id: u64 = sale.parse().unwrap();
    let queue = AmqpQueue::connect(&AmqpSettings::new(
        crate::kit::AMQP,
        backends.namespace.clone(),
    ))
    .await
    .unwrap();

    // An order holding the key ("carol", "k-1") is stored first.
    let first = order(1, sale_id, "carol", Some("k-1"));
    queue
        .publish_orders(message(std::slice::from_ref(&first)).as_bytes())
        .await
        .unwrap();
    backends
        .wait_for_orders(&sale, 1, Duration::from_secs(20))
        .await;

    // 1,500 orders in messages of 1, 7 and 50, each published twice; a
    // message with an order reusing carol's key beside a good one; a
    // message that is not an order at all.
    let orders: Vec<Order> = (0..1500)
        .map(|i| order(1000 + i, sale_id, &format!("buyer-{i}"), None))
        .collect();
    let mut messages = Vec::new();
    let mut rest = &orders[..];
    for size in [1, 7, 50].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at((*size).min(rest.len()));
        messages.push(message(chunk));
        rest = tail;
    }
    let clash = order(2, sale_id, "carol", Some("k-1"));
    let beside = order(3, sale_id, "dave", None);
    let publishes = messages.iter().chain(&messages).cloned().chain([
        message(&[clash.clone(), beside.clone()]),
        "not an order".to_owned(),
    ]);
    let sent = futures::future::join_all(publishes.map(|m| {
        let queue = &queue;
        async move { queue.publish_orders(m.as_bytes()).await }
    }))
    .await;
    assert!(sent.iter().all(Result::is_ok));

    // 1,500 + carol's + dave's.
    let want = orders.len() + 2;
    let rows = backends
        .wait_for_orders(&sale, want, Duration::from_secs(60))
        .await;
    let ids: Vec<u64> = rows.iter().map(|r| r.order_id).collect();
    let distinct: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "an order stored twice");
    let expected: BTreeSet<u64> = orders
        .iter()
        .map(|o| o.id)
        .chain([first.id, beside.id])
        .collect();
    assert_eq!(distinct, expected, "the clashing order 2 is not stored");
    let users: HashMap<u64, &str> = rows
        .iter()
        .map(|r| (r.order_id, r.user_id.as_str()))
        .collect();
    assert_eq!(users[&3], "dave");

    // The clash's message and the poison one are dead letters; nothing
    // else is left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = queue.depth().await.unwrap();
        if d.ready == 0 && d.dead == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && d.dead <= 2,
            "queue depth {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The writer's own count of dead letters.
    let metrics = node
        .client
        .get(format!("{}/metrics", node.address))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    let dead_lettered = text
        .lines()
        .find(|l| l.starts_with("flashsale_writer_dead_lettered_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok());
    // At least: with `cargo test` other tests of this process count too.
    assert!(dead_lettered.is_some_and(|n| n >= 2.0), "{text}");
    node.stop().await;
    backends.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_consumers_over_postgres_store_every_order_exactly_once() {
    several_consumers_store_every_order_exactly_once(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_consumers_over_mysql_store_every_order_exactly_once() {
    several_consumers_store_every_order_exactly_once(Db::MySql).await;
}

/// `flashsale bench --mode writer-drain`, small: it fills a private
/// queue, the product's writer drains it into a private schema (or
/// database), and every order is found stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_writer_drain_bench_finds_every_order_stored_once() {
    use clap::Parser as _;
    for database in [
        std::env::var("FLASHSALE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        std::env::var("FLASHSALE_TEST_MYSQL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
    ] {
        let args = flashsale_bench::BenchArgs::try_parse_from([
            "flashsale-bench",
            "--mode",
            "writer-drain",
            "--json",
            "--requests",
            "3000",
            "--orders-per-message",
            "3",
            "--database",
            &database,
            "--queue",
            crate::kit::AMQP,
        ])
        .unwrap();
        let summary = flashsale_bench::drain::run(&args).await.unwrap();
        assert!(summary.ok, "{}", summary.render());
        assert_eq!(
            (summary.orders, summary.stored, summary.messages),
            (3000, 3000, 1000)
        );
        assert!(summary.orders_per_sec > 0.0);
    }
}
