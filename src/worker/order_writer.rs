//! The order writer: consumes accepted orders from the queue and stores them
//! in batches.
//!
//! A node runs [`WriterSettings::consumers`] consumers, each on a channel
//! (and connection) of its own with its own prefetch, competing with every
//! other node's. Each takes deliveries while they keep coming (until its
//! batch holds [`WriterSettings::batch`] orders, at most
//! [`WriterSettings::linger`] after the first), stores them with the SQL
//! store's group commit (multi-row inserts that ignore `order_id`s already
//! present, so redelivered or twice-published orders are harmless; the
//! store runs several consumers' inserts side by side), and acknowledges
//! the batch only after the commit, with one `multiple` ack. While the
//! database is down the batch is retried with back-off and nothing is
//! acked: the queue keeps the rest, and a writer that dies leaves its
//! unacked batch to be redelivered to another. A message that is not an
//! order is rejected without requeue and lands on the dead-letter queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::queue::{Delivery, OrderQueue};
use crate::backend::StoreError;
use crate::domain::Order;
use crate::engine::Engine;

/// How a node's order writer consumes (`--writer-…` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterSettings {
    /// Consumers of this node, each on its own channel with its own
    /// prefetch (at least 1).
    pub consumers: usize,
    /// Unacknowledged deliveries the broker sends each consumer ahead.
    pub prefetch: u16,
    /// Most orders one consumer stores per batch (a delivery may carry
    /// hundreds: it is the last one taken that crosses the bound).
    pub batch: usize,
    /// Longest wait for more deliveries after the first of a batch.
    pub linger: Duration,
}

/// Consumers per node by default: measured with `flashsale bench --mode
/// writer-drain` (docs/BENCHMARKS.md, "Writer").
pub const DEFAULT_CONSUMERS: usize = 2;
/// Prefetch per consumer by default: twice a batch of one-order messages,
/// so the next batch is on its way while one is being stored.
pub const DEFAULT_PREFETCH: u16 = 2000;
/// Orders per batch by default: one group commit's worth
/// ([`crate::backend::sql::MAX_BATCH`]).
pub const DEFAULT_BATCH: usize = 1000;
/// Linger by default.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(2);

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            consumers: DEFAULT_CONSUMERS,
            prefetch: DEFAULT_PREFETCH,
            batch: DEFAULT_BATCH,
            linger: DEFAULT_LINGER,
        }
    }
}

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

/// Starts the order writer of this node with the default settings.
pub fn spawn_order_writer(
    engine: Arc<Engine>,
    queue: Arc<dyn OrderQueue>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    spawn_order_writer_with(engine, queue, &WriterSettings::default(), stop)
}

/// Starts the order writer of this node: [`WriterSettings::consumers`]
/// consumers (every node runs one writer; they all share the queue as
/// competing consumers). The handle ends when every consumer has.
pub fn spawn_order_writer_with(
    engine: Arc<Engine>,
    queue: Arc<dyn OrderQueue>,
    settings: &WriterSettings,
    stop: CancellationToken,
) -> JoinHandle<()> {
    crate::telemetry::register_at_zero(&[
        "flashsale_writer_orders_total",
        "flashsale_writer_dead_lettered_total",
        "flashsale_writer_retries_total",
    ]);
    // Deliveries this node's consumers hold and have not settled yet: the
    // batches in hand (the broker's own unacked count adds what the client
    // library buffered ahead, up to the prefetch).
    let held = Arc::new(AtomicUsize::new(0));
    metrics::gauge!("flashsale_writer_unacked_messages").set(0.0);
    let settings = WriterSettings {
        consumers: settings.consumers.max(1),
        prefetch: settings.prefetch.max(1),
        batch: settings.batch.max(1),
        linger: settings.linger,
    };
    let node = rand::random::<u32>();
    // A set, so that aborting the returned handle (a stop that ran out of
    // time) aborts every consumer with it.
    let mut consumers = tokio::task::JoinSet::new();
    for i in 0..settings.consumers {
        consumers.spawn(consume(
            engine.clone(),
            queue.clone(),
            settings.clone(),
            format!("writer-{node:08x}-{i}"),
            held.clone(),
            stop.clone(),
        ));
    }
    tokio::spawn(async move { while consumers.join_next().await.is_some() {} })
}

/// One consumer: reconnects with back-off until `stop`.
async fn consume(
    engine: Arc<Engine>,
    queue: Arc<dyn OrderQueue>,
    settings: WriterSettings,
    tag: String,
    held: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let unacked = metrics::gauge!("flashsale_writer_unacked_messages");
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let opened = tokio::select! {
            opened = queue.consume(&tag, settings.prefetch) => opened,
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
            let mut batch = Batch::default();
            batch.take(first);
            let deadline = tokio::time::Instant::now() + settings.linger;
            // Bounded by orders, and by deliveries below the prefetch (no
            // more can come while the batch holds them all).
            while batch.orders.len() < settings.batch
                && batch.taken < usize::from(settings.prefetch)
            {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(d)) => batch.take(d),
                    _ => break,
                }
            }
            let taken = batch.taken;
            unacked.set((held.fetch_add(taken, Ordering::Relaxed) + taken) as f64);
            batch.write(&engine, &stop).await;
            unacked.set((held.fetch_sub(taken, Ordering::Relaxed) - taken) as f64);
        }
        consumer.close().await;
    }
}

/// One consumer's batch: the orders of its deliveries, decoded as they
/// are taken; `orders[i]` belongs to `deliveries[owner[i]]`.
#[derive(Default)]
struct Batch {
    orders: Vec<Order>,
    owner: Vec<usize>,
    deliveries: Vec<Delivery>,
    /// Poison messages, dead-lettered before the batch is stored.
    poison: Vec<Delivery>,
    /// Deliveries taken (orders and poison).
    taken: usize,
}

impl Batch {
    fn take(&mut self, d: Delivery) {
        self.taken += 1;
        // Each delivery carries one order or an array of them.
        match Order::batch_from_wire(&d.body) {
            Ok(decoded) => {
                self.owner
                    .extend(std::iter::repeat_n(self.deliveries.len(), decoded.len()));
                self.orders.extend(decoded);
                self.deliveries.push(d);
            }
            Err(e) => {
                tracing::error!(error = %e, "poison message sent to the dead-letter queue");
                self.poison.push(d);
            }
        }
    }

    /// Stores the batch (retrying while the store is unreachable), then
    /// settles every delivery: dead letters first, then one ack through
    /// the last stored one.
    async fn write(self, engine: &Engine, stop: &CancellationToken) {
        let Self {
            orders,
            owner,
            deliveries,
            poison,
            ..
        } = self;
        for d in poison {
            metrics::counter!("flashsale_writer_dead_lettered_total").increment(1);
            d.dead_letter().await;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let results = futures::future::join_all(
                orders
                    .iter()
                    .map(|o| engine.store().commit_order(o.clone())),
            )
            .await;
            // A conflict (an idempotency key that belongs to another order)
            // is final for its order; anything else is worth a retry.
            let transient = results
                .iter()
                .any(|r| matches!(r, Err(StoreError::Backend(_) | StoreError::Closed)));
            if !transient {
                settle(engine, &orders, &owner, deliveries, results).await;
                return;
            }
            if stop.is_cancelled() {
                // Not acked: the broker redelivers them to another writer
                // (or to this node after its restart).
                return;
            }
            tracing::warn!("order store unavailable; the writer holds its batch and retries");
            metrics::counter!("flashsale_writer_retries_total").increment(1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

async fn settle(
    engine: &Engine,
    orders: &[Order],
    owner: &[usize],
    deliveries: Vec<Delivery>,
    results: Vec<Result<(), StoreError>>,
) {
    let mut stored = 0u64;
    let mut refused = vec![false; deliveries.len()];
    for ((order, &d), r) in orders.iter().zip(owner).zip(results) {
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
                // A clash on the idempotency index: the message is kept on
                // the dead-letter queue for a person (the rest of its
                // orders are stored, idempotently).
                tracing::error!(error = %e, order_id = order.id, "order refused by the store; dead-lettered");
                refused[d] = true;
            }
        }
    }
    // Dead letters first: the ack below settles every earlier delivery of
    // this consumer, so they must be settled before it.
    let mut last_stored = None;
    for (d, refused) in deliveries.into_iter().zip(refused) {
        if refused {
            metrics::counter!("flashsale_writer_dead_lettered_total").increment(1);
            d.dead_letter().await;
        } else {
            // The ones before it are acked with it.
            last_stored = Some(d);
        }
    }
    if let Some(d) = last_stored {
        d.ack_through().await;
    }
    metrics::counter!("flashsale_writer_orders_total").increment(stored);
    metrics::histogram!("flashsale_writer_batch_size").record(stored as f64);
    // Stored: the order store answers for them now, on every node.
    engine.forget_in_flight(orders).await;
    engine.notify(orders).await;
}
