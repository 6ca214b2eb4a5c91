//! The distributed mode's purchase path: stock in Redis, orders through
//! RabbitMQ into the SQL order store.
//!
//! Steps of an accepted purchase and where the order lives after each:
//!
//! 1. the Redis script deducts stock and appends the order to the sale's
//!    outbox, atomically (Redis: outbox);
//! 2. the node publishes it to the durable queue and waits for the broker's
//!    confirm (RabbitMQ: queue; the buyer hears `201` only now). Orders
//!    accepted together are published together: one message holding a JSON
//!    array, one confirm — so the broker's cost is per batch, not per order;
//! 3. the node drops it from the outbox (a batched `ZREM`, off the request);
//! 4. an order writer inserts it, idempotently on `order_id`, and only then
//!    acks the message (database).
//!
//! A node that dies between 1 and 3 leaves the order in the outbox; the relay
//! ([`crate::worker::relay`]) of any node publishes outbox entries older
//! than a few seconds, so it still reaches the database. The crash matrix in
//! `docs/CRASH_MATRIX.md` walks every step.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::backend::amqp::{AmqpQueue, QueueError};
use crate::backend::redis::RedisStock;
use crate::domain::Order;

/// How many recently accepted orders a node remembers, so a buyer polling
/// the node that sold to them sees the order before the writer stored it.
const RECENT_ORDERS: usize = 100_000;

/// The shared backends of a node in the distributed mode.
pub struct Distributed {
    /// Stock, holdings, idempotency keys and the outbox.
    pub stock: Arc<RedisStock>,
    /// The order queue and the event exchange.
    pub queue: Arc<AmqpQueue>,
    recent: quick_cache::sync::Cache<u64, Order>,
    confirmed: mpsc::UnboundedSender<(u64, String)>,
    publishes: mpsc::UnboundedSender<(String, oneshot::Sender<Result<(), QueueError>>)>,
}

/// Most orders in one published message.
const PUBLISH_BATCH: usize = 512;
/// Publishes awaiting their confirm at once.
const PUBLISHES_IN_FLIGHT: usize = 4;

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("stock", &self.stock)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Distributed {
    /// Wires the backends and starts the outbox cleaner, which ends when
    /// the last [`Distributed`] handle is dropped.
    pub fn new(stock: Arc<RedisStock>, queue: Arc<AmqpQueue>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(clean_outbox(stock.clone(), rx));
        let (ptx, prx) = mpsc::unbounded_channel();
        tokio::spawn(coalesce_publishes(queue.clone(), prx));
        Arc::new(Self {
            stock,
            queue,
            recent: quick_cache::sync::Cache::new(RECENT_ORDERS),
            confirmed: tx,
            publishes: ptx,
        })
    }

    /// Publishes an accepted order; `Ok` once the broker confirmed it.
    /// Concurrent calls share one message and one confirm.
    ///
    /// # Errors
    /// When the broker is unreachable or did not confirm.
    pub async fn publish_order(&self, payload: String) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        if self.publishes.send((payload, tx)).is_err() {
            return Err(QueueError::new("the publisher stopped"));
        }
        rx.await
            .unwrap_or_else(|_| Err(QueueError::new("the publisher dropped an order")))
    }

    /// Records that the broker confirmed `payload`: it leaves the outbox and
    /// the order is remembered for polling.
    pub fn confirmed(&self, order: &Order, payload: String) {
        self.recent.insert(order.id, order.clone());
        let _ = self.confirmed.send((order.sale_id, payload));
    }

    /// An order this node accepted recently, if the writer has not stored
    /// it yet.
    pub fn recent(&self, order_id: u64) -> Option<Order> {
        self.recent.get(&order_id)
    }
}

/// The publishing task: takes everything waiting (up to [`PUBLISH_BATCH`])
/// once a publish slot is free and sends it as one JSON-array message.
async fn coalesce_publishes(
    queue: Arc<AmqpQueue>,
    mut rx: mpsc::UnboundedReceiver<(String, oneshot::Sender<Result<(), QueueError>>)>,
) {
    let slots = Arc::new(Semaphore::new(PUBLISHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < PUBLISH_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let queue = queue.clone();
        tokio::spawn(async move {
            let body = if batch.len() == 1 {
                batch[0].0.clone()
            } else {
                let mut body = String::with_capacity(
                    batch.iter().map(|(p, _)| p.len() + 1).sum::<usize>() + 2,
                );
                body.push('[');
                for (i, (p, _)) in batch.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(p);
                }
                body.push(']');
                body
            };
            metrics::histogram!("flashsale_publish_batch_size").record(batch.len() as f64);
            let result = queue.publish_order(body.as_bytes()).await;
            drop(permit);
            for (_, tx) in batch {
                let _ = tx.send(result.clone());
            }
        });
    }
}

/// Batches outbox removals: everything confirmed meanwhile goes in one
/// `ZREM` per sale. A removal that fails only means the relay publishes the
/// order again, which the idempotent writer ignores.
async fn clean_outbox(stock: Arc<RedisStock>, mut rx: mpsc::UnboundedReceiver<(u64, String)>) {
    while let Some(first) = rx.recv().await {
        let mut by_sale: HashMap<u64, Vec<String>> = HashMap::new();
        by_sale.entry(first.0).or_default().push(first.1);
        let mut taken = 1;
        while taken < 1000 {
            let Ok((sale, payload)) = rx.try_recv() else {
                break;
            };
            by_sale.entry(sale).or_default().push(payload);
            taken += 1;
        }
        for (sale, payloads) in by_sale {
            if let Err(e) = stock.outbox_remove(sale, &payloads).await {
                tracing::debug!(error = %e, sale, "outbox cleanup failed; the relay will resend");
            }
        }
    }
}
