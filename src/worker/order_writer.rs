//! The order writer: consumes accepted orders from the queue and stores them
//! in batches.
//!
//! Deliveries are taken while they keep coming (up to [`BATCH`], at most
//! [`LINGER`] after the first), stored with the SQL store's group commit (one
//! multi-row insert that ignores `order_id`s already present, so redelivered
//! or twice-published orders are harmless), and acknowledged only after the
//! commit. While the database is down the batch is retried with back-off and
//! nothing is acked: the queue keeps the rest, and a writer that dies leaves
//! its unacked batch to be redelivered to another. A message that is not an
//! order is rejected without requeue and lands on the dead-letter queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::queue::{Delivery, OrderQueue};
use crate::backend::StoreError;
use crate::domain::Order;
use crate::engine::Engine;

/// Most orders stored per batch.
const BATCH: usize = 500;
/// Longest wait for more deliveries after the first of a batch.
const LINGER: Duration = Duration::from_millis(2);
/// Unacknowledged deliveries the broker sends ahead (bounded prefetch).
const PREFETCH: u16 = 1000;

/// How often [`spawn_queue_gauges`] reads the queue's depth.
pub const QUEUE_GAUGE_EVERY: Duration = Duration::from_secs(2);

/// Exports the order queue's depth every [`QUEUE_GAUGE_EVERY`]:
/// `flashsale_queue_ready_messages{queue="orders"|"dead_letter"}` (for
/// RabbitMQ a passive `queue.declare`, whose answer carries the count), and
/// `flashsale_queue_unacked_messages` where the queue can tell (RabbitMQ's
/// AMQP interface cannot: see `flashsale_writer_unacked_messages` and the
/// broker's own exporter). A failed read leaves the last values.
pub fn spawn_queue_gauges(queue: Arc<dyn OrderQueue>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let ready = metrics::gauge!("flashsale_queue_ready_messages", "queue" => "orders");
        let dead = metrics::gauge!("flashsale_queue_ready_messages", "queue" => "dead_letter");
        let mut tick = tokio::time::interval(QUEUE_GAUGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            // Bounded, so a stalled broker never stacks reads up.
            match tokio::time::timeout(Duration::from_secs(1), queue.depth()).await {
                Ok(Ok(depth)) => {
                    ready.set(f64::from(depth.ready));
                    dead.set(f64::from(depth.dead));
                    if let Some(unacked) = depth.unacked {
                        metrics::gauge!("flashsale_queue_unacked_messages").set(f64::from(unacked));
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the queue depth"),
                Err(_) => tracing::debug!("reading the queue depth timed out"),
            }
        }
    })
}

/// Starts the order writer of this node (every node runs one; they share the
/// queue as competing consumers).
pub fn spawn_order_writer(
    engine: Arc<Engine>,
    queue: Arc<dyn OrderQueue>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tag = format!("writer-{:08x}", rand::random::<u32>());
        // Deliveries this writer holds and has not settled yet: its batch in
        // hand (the broker's own unacked count adds what the client library
        // buffered ahead, up to the prefetch).
        crate::telemetry::register_at_zero(&[
            "flashsale_writer_orders_total",
            "flashsale_writer_dead_lettered_total",
            "flashsale_writer_retries_total",
        ]);
        let unacked = metrics::gauge!("flashsale_writer_unacked_messages");
        unacked.set(0.0);
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let opened = tokio::select! {
                opened = queue.consume(&tag, PREFETCH) => opened,
                () = stop.cancelled() => return,
            };
            let mut consumer = match opened {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "order writer cannot reach the queue; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                let first = tokio::select! {
                    d = consumer.next() => d,
                    () = stop.cancelled() => None,
                };
                let Some(first) = first else {
                    break;
                };
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + LINGER;
                while batch.len() < BATCH {
                    match tokio::time::timeout_at(deadline, consumer.next()).await {
                        Ok(Some(d)) => batch.push(d),
                        _ => break,
                    }
                }
                unacked.set(batch.len() as f64);
                write_batch(&engine, batch, &stop).await;
                unacked.set(0.0);
            }
            consumer.close().await;
        }
    })
}

async fn write_batch(engine: &Engine, batch: Vec<Delivery>, stop: &CancellationToken) {
    // Each delivery carries one order or an array of them; `orders[i]`
    // belongs to `deliveries[owner[i]]`.
    let mut orders = Vec::with_capacity(batch.len());
    let mut owner = Vec::with_capacity(batch.len());
    let mut deliveries = Vec::with_capacity(batch.len());
    for d in batch {
        match Order::batch_from_wire(&d.body) {
            Ok(decoded) => {
                owner.extend(std::iter::repeat_n(deliveries.len(), decoded.len()));
                orders.extend(decoded);
                deliveries.push(d);
            }
            Err(e) => {
                tracing::error!(error = %e, "poison message sent to the dead-letter queue");
                metrics::counter!("flashsale_writer_dead_lettered_total").increment(1);
                d.dead_letter().await;
            }
        }
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        let results = futures::future::join_all(
            orders
                .iter()
                .map(|o| engine.store().commit_order(o.clone())),
        )
        .await;
        let transient = results
            .iter()
            .any(|r| matches!(r, Err(StoreError::Backend(_) | StoreError::Closed)));
        if !transient {
            let mut stored = 0u64;
            let mut refused = vec![false; deliveries.len()];
            for ((order, &d), r) in orders.iter().zip(&owner).zip(results) {
                match r {
                    Ok(()) => {
                        stored += 1;
                        if let Some(rt) = engine.sale(order.sale_id) {
                            rt.counters
                                .orders_persisted
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        // A clash on the idempotency index: the message is
                        // kept on the dead-letter queue for a person (the
                        // rest of its orders are stored, idempotently).
                        tracing::error!(error = %e, order_id = order.id, "order refused by the store; dead-lettered");
                        refused[d] = true;
                    }
                }
            }
            for (d, refused) in deliveries.into_iter().zip(refused) {
                if refused {
                    metrics::counter!("flashsale_writer_dead_lettered_total").increment(1);
                    d.dead_letter().await;
                } else {
                    d.ack().await;
                }
            }
            metrics::counter!("flashsale_writer_orders_total").increment(stored);
            metrics::histogram!("flashsale_writer_batch_size").record(stored as f64);
            engine.notify(&orders).await;
            return;
        }
        if stop.is_cancelled() {
            // Not acked: the broker redelivers them to another writer (or
            // to this node after its restart).
            return;
        }
        tracing::warn!("order store unavailable; the writer holds its batch and retries");
        metrics::counter!("flashsale_writer_retries_total").increment(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
