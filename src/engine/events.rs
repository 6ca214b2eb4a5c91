//! Order events for the shop's other systems: where a notifier goes.
//!
//! The engine tells its [`OrderNotifier`] about every order whose state
//! changed (accepted once stored, paid, expired, cancelled). Notifiers are
//! best effort: a buyer's answer never waits for one. Today: the order
//! queue's event exchange in the distributed mode ([`QueueEvents`], whose
//! subscribers feed every node's buyer streams), the node's own buyer
//! streams in the embedded default
//! ([`BuyerStreams`](super::buyer_stream::BuyerStreams)); [`NoEvents`] for
//! engine tests. Webhooks do not go through here: they leave from a
//! transactional outbox in the order store (`backend::outbox`).

use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::queue::OrderQueue;
use crate::domain::{Order, OrderStatus};

/// Receives order state changes.
#[async_trait]
pub trait OrderNotifier: Send + Sync {
    /// `orders` all moved to the same status.
    async fn notify(&self, orders: &[Order]);
}

/// Tells nobody.
pub struct NoEvents;

#[async_trait]
impl OrderNotifier for NoEvents {
    async fn notify(&self, _orders: &[Order]) {}
}

/// Publishes to the order queue's event exchange: one message whose body is
/// a JSON array of events, routed by status (`order.accepted`,
/// `order.paid`, `order.expired`, `order.cancelled`).
pub struct QueueEvents {
    queue: Arc<dyn OrderQueue>,
}

impl QueueEvents {
    /// Publishes through `queue`.
    pub fn new(queue: Arc<dyn OrderQueue>) -> Self {
        Self { queue }
    }
}

/// The routing key of an event about an order now in `status`.
pub fn routing_key(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::PendingPayment => "order.accepted",
        OrderStatus::Paid => "order.paid",
        OrderStatus::Expired => "order.expired",
        OrderStatus::Cancelled => "order.cancelled",
    }
}

#[async_trait]
impl OrderNotifier for QueueEvents {
    async fn notify(&self, orders: &[Order]) {
        let Some(first) = orders.first() else {
            return;
        };
        let body: Vec<super::buyer_stream::OrderEvent> = orders.iter().map(Into::into).collect();
        let Ok(body) = serde_json::to_string(&body) else {
            return;
        };
        if let Err(e) = self
            .queue
            .publish_event(routing_key(first.status), body.as_bytes())
            .await
        {
            tracing::debug!(error = %e, "order event not published");
        }
    }
}
