//! Handing an accepted order off durably, before the buyer hears `201`.
//!
//! [`OrderHandoff`] is the step between the stock decision and the answer.
//! Two implementations, one per mode:
//!
//! - [`StoreHandoff`] (embedded default, single SQL node): the order store
//!   commits the order (group commit: one fsync per batch). If that fails,
//!   the units go back and the buyer hears `503`.
//! - [`QueueHandoff`] (distributed mode): the stock already wrote the order
//!   to its outbox in the same atomic step as the deduction; the hand-off
//!   publishes it to the order queue and waits for the broker's confirm.
//!   Orders accepted together are published together — one message holding
//!   a JSON array, one confirm — so the broker's cost is per batch, not per
//!   order. After the confirm the order leaves the outbox (a batched removal,
//!   off the request) and an order writer stores it. A publish that fails
//!   leaves the order in the outbox, where the relay finds it: its units
//!   stay taken and the buyer is told to retry with the same key.
//!
//! The crash matrix in `docs/CRASH_MATRIX.md` walks every step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::backend::breaker::BreakerState;
use crate::backend::queue::{OrderQueue, QueueError};
use crate::backend::stock::{Reservation, StockStore};
use crate::backend::{OrderStore, StoreError};
use crate::domain::Order;

/// Where a handed-off order is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandedOff {
    /// In the order store.
    Stored,
    /// On the durable order queue; a writer stores it shortly.
    Queued,
}

/// Why a hand-off did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The order is not durable anywhere: its units must go back.
    #[error(transparent)]
    NotDurable(#[from] StoreError),
    /// The order is in the stock's outbox but the queue did not confirm:
    /// the relay delivers it, so its units stay taken.
    #[error("{0}")]
    Unconfirmed(&'static str),
}

/// The durable hand-off of accepted orders.
#[async_trait]
pub trait OrderHandoff: Send + Sync {
    /// `Err` with a reason while a hand-off would surely fail (the queue is
    /// known to be down, or its circuit breaker is open): no stock is taken
    /// for a `201` that cannot be given.
    ///
    /// # Errors
    /// The reason, for the buyer's `503`.
    fn ready(&self) -> Result<(), &'static str> {
        Ok(())
    }

    /// Re-checks what the hand-off depends on (reconnecting when down);
    /// whether it can take orders.
    async fn probe(&self) -> bool {
        true
    }

    /// The state of the circuit breaker in front of what the hand-off
    /// publishes to (the order queue), if any.
    fn breaker_state(&self) -> Option<BreakerState> {
        None
    }

    /// Makes the accepted order durable.
    ///
    /// # Errors
    /// [`HandoffError`], which says whether the units must go back.
    async fn hand_off(&self, reservation: &Reservation) -> Result<HandedOff, HandoffError>;

    /// An order handed off here recently that the store may not hold yet.
    fn recent(&self, _order_id: u64) -> Option<Order> {
        None
    }

    /// How long a handed-off order may take to reach the order store (a
    /// payment for it waits that long at most).
    fn settle_time(&self) -> Duration {
        Duration::ZERO
    }
}

/// The order store commits the order.
pub struct StoreHandoff {
    store: Arc<dyn OrderStore>,
}

impl StoreHandoff {
    /// Hands orders to `store`.
    pub fn new(store: Arc<dyn OrderStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl OrderHandoff for StoreHandoff {
    async fn hand_off(&self, reservation: &Reservation) -> Result<HandedOff, HandoffError> {
        self.store.commit_order(reservation.order.clone()).await?;
        Ok(HandedOff::Stored)
    }
}

/// How many recently accepted orders a node remembers, so a buyer polling
/// the node that sold to them sees the order before the writer stored it.
const RECENT_ORDERS: usize = 100_000;
/// Most orders in one published message.
const PUBLISH_BATCH: usize = 512;
/// Publishes awaiting their confirm at once.
const PUBLISHES_IN_FLIGHT: usize = 4;
/// How long a queued order may take to reach the database.
const SETTLE_TIME: Duration = Duration::from_secs(2);

type Publish = (String, oneshot::Sender<Result<(), QueueError>>);

/// A confirmed publish to the order queue.
pub struct QueueHandoff {
    queue: Arc<dyn OrderQueue>,
    recent: quick_cache::sync::Cache<u64, Order>,
    confirmed: mpsc::UnboundedSender<(u64, String)>,
    publishes: mpsc::UnboundedSender<Publish>,
}

impl QueueHandoff {
    /// Starts the publisher and the outbox cleaner; both end when the
    /// hand-off is dropped.
    pub fn new(queue: Arc<dyn OrderQueue>, stock: Arc<dyn StockStore>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(clean_outbox(stock, rx));
        let (ptx, prx) = mpsc::unbounded_channel();
        tokio::spawn(coalesce_publishes(queue.clone(), prx));
        Self {
            queue,
            recent: quick_cache::sync::Cache::new(RECENT_ORDERS),
            confirmed: tx,
            publishes: ptx,
        }
    }

    async fn publish(&self, payload: &str) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        if self.publishes.send((payload.to_owned(), tx)).is_err() {
            return Err(QueueError::new("the publisher stopped"));
        }
        rx.await
            .unwrap_or_else(|_| Err(QueueError::new("the publisher dropped an order")))
    }
}

#[async_trait]
impl OrderHandoff for QueueHandoff {
    fn ready(&self) -> Result<(), &'static str> {
        if self.queue.is_up() {
            Ok(())
        } else {
            Err("the order queue is unreachable; retry")
        }
    }

    async fn probe(&self) -> bool {
        self.queue.is_up() || self.queue.probe().await
    }

    fn breaker_state(&self) -> Option<BreakerState> {
        self.queue.breaker_state()
    }

    async fn hand_off(&self, reservation: &Reservation) -> Result<HandedOff, HandoffError> {
        let payload = reservation.payload();
        let mut published = self.publish(payload).await;
        if published.is_err() {
            // One quick retry on a fresh channel; after that the outbox
            // keeps the order and the relay delivers it.
            published = self.publish(payload).await;
        }
        let order = &reservation.order;
        if let Err(e) = published {
            tracing::warn!(error = %e, order_id = order.id, "order left in the outbox for the relay");
            return Err(HandoffError::Unconfirmed(
                "the order queue did not confirm; retry with the same Idempotency-Key to learn the outcome",
            ));
        }
        self.recent.insert(order.id, order.clone());
        let _ = self.confirmed.send((order.sale_id, payload.to_owned()));
        Ok(HandedOff::Queued)
    }

    fn recent(&self, order_id: u64) -> Option<Order> {
        self.recent.get(&order_id)
    }

    fn settle_time(&self) -> Duration {
        SETTLE_TIME
    }
}

/// The publishing task: takes everything waiting (up to [`PUBLISH_BATCH`])
/// once a publish slot is free and sends it as one JSON-array message.
async fn coalesce_publishes(queue: Arc<dyn OrderQueue>, mut rx: mpsc::UnboundedReceiver<Publish>) {
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
                std::mem::take(&mut batch[0].0)
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
            let result = queue.publish_orders(body.as_bytes()).await;
            drop(permit);
            for (_, tx) in batch {
                let _ = tx.send(result.clone());
            }
        });
    }
}

/// Batches outbox removals: everything confirmed meanwhile goes in one call
/// per sale. A removal that fails only means the relay publishes the order
/// again, which the idempotent writer ignores.
async fn clean_outbox(stock: Arc<dyn StockStore>, mut rx: mpsc::UnboundedReceiver<(u64, String)>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::{EmbeddedStock, InProcessQueue};
    use crate::domain::OrderStatus;

    fn order(id: u64) -> Order {
        Order {
            id,
            sale_id: 7,
            user_id: format!("u{id}"),
            quantity: 1,
            status: OrderStatus::PendingPayment,
            idempotency_key: None,
            created_at_ms: 1,
            updated_at_ms: 1,
            expires_at_ms: None,
        }
    }

    #[tokio::test]
    async fn concurrent_hand_offs_share_messages_and_every_order_arrives_once() {
        let queue = InProcessQueue::new();
        let handoff = Arc::new(QueueHandoff::new(
            Arc::new(queue.clone()),
            Arc::new(EmbeddedStock),
        ));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let h = handoff.clone();
                tokio::spawn(async move { h.hand_off(&Reservation::new(order(i))).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), HandedOff::Queued);
        }
        let depth = queue.depth().await.unwrap();
        assert!(depth.ready >= 1 && depth.ready <= 200, "{depth:?}");
        let mut consumer = queue.consume("t", 1000).await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..depth.ready {
            let d = consumer.next().await.unwrap();
            ids.extend(
                Order::batch_from_wire(&d.body)
                    .unwrap()
                    .iter()
                    .map(|o| o.id),
            );
            d.ack().await;
        }
        ids.sort_unstable();
        assert_eq!(ids, (0..200).collect::<Vec<_>>());
        assert_eq!(handoff.recent(5).map(|o| o.id), Some(5));
    }
}
