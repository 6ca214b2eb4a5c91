//! Order events for the shop's other systems: where a notifier goes.
//!
//! The engine tells its [`OrderNotifier`] about every order whose state
//! changed (accepted once stored, paid, expired, cancelled). Notifiers are
//! best effort: a buyer's answer never waits for one. Today: the order
//! queue's event exchange in the distributed mode ([`QueueEvents`]), nothing
//! in the embedded default ([`NoEvents`]). A new notifier (webhooks, a
//! buyer's stream) is one implementation of the trait.

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
        let body: Vec<serde_json::Value> = orders
            .iter()
            .map(|order| {
                serde_json::json!({
                    "order_id": order.id.to_string(),
                    "sale_id": order.sale_id.to_string(),
                    "user_id": order.user_id,
                    "quantity": order.quantity,
                    "status": order.status.as_str(),
                    "at": order.updated_at_ms,
                })
            })
            .collect();
        let body = serde_json::Value::Array(body).to_string();
        if let Err(e) = self
            .queue
            .publish_event(routing_key(first.status), body.as_bytes())
            .await
        {
            tracing::debug!(error = %e, "order event not published");
        }
    }
}
