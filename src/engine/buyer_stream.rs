//! A buyer's order stream: every change of that buyer's orders (accepted,
//! paid, expired, cancelled) pushed to their open streams (server-sent
//! events, `GET /api/v1/orders/events`).
//!
//! [`BuyerStreams`] keeps one broadcast channel per buyer with a stream
//! open, and nothing for anyone else: publishing an event for a buyer
//! nobody watches is one map lookup (none at all while no stream is open).
//! In the embedded default the engine publishes here directly (it is the
//! node's [`OrderNotifier`]); in the distributed mode every node publishes
//! to the order queue's events exchange and each node's subscriber
//! (`worker::buyer_events`) feeds its own streams, so an order accepted or
//! paid on any node reaches the buyer on whichever node they listen.
//!
//! Best effort, like every notifier: a buyer's stream is a prompt, the
//! order itself (`GET /api/v1/orders/{id}`) stays the truth.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::events::OrderNotifier;
use crate::domain::Order;

/// Events a slow stream may fall behind by before it skips (and is told
/// so, to re-read its orders).
const PER_BUYER_BACKLOG: usize = 64;

/// One change of one order, as streams and the events exchange carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderEvent {
    /// The order (decimal string).
    pub order_id: String,
    /// Its sale (decimal string).
    pub sale_id: String,
    /// Its buyer.
    pub user_id: String,
    /// Units in it.
    pub quantity: u64,
    /// Its status now: `pending_payment`, `paid`, `expired`, `cancelled`.
    pub status: String,
    /// When it changed, epoch milliseconds.
    pub at: i64,
}

impl From<&Order> for OrderEvent {
    fn from(order: &Order) -> Self {
        Self {
            order_id: order.id.to_string(),
            sale_id: order.sale_id.to_string(),
            user_id: order.user_id.clone(),
            quantity: u64::from(order.quantity),
            status: order.status.as_str().to_owned(),
            at: order.updated_at_ms,
        }
    }
}

/// The open buyer streams of this node.
#[derive(Default)]
pub struct BuyerStreams {
    buyers: DashMap<String, broadcast::Sender<Arc<OrderEvent>>>,
    open: AtomicUsize,
}

/// One open stream: its events, and its place in [`BuyerStreams`] (given
/// back when dropped).
pub struct Subscription {
    /// The buyer's events from now on.
    pub events: broadcast::Receiver<Arc<OrderEvent>>,
    streams: Arc<BuyerStreams>,
    user: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.streams.open.fetch_sub(1, Ordering::Relaxed);
        // The receiver is still alive here: one left means it is ours.
        self.streams
            .buyers
            .remove_if(&self.user, |_, tx| tx.receiver_count() <= 1);
    }
}

impl BuyerStreams {
    /// No stream open.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Opens a stream of `user`'s events.
    pub fn subscribe(self: &Arc<Self>, user: &str) -> Subscription {
        self.open.fetch_add(1, Ordering::Relaxed);
        let events = self
            .buyers
            .entry(user.to_owned())
            .or_insert_with(|| broadcast::channel(PER_BUYER_BACKLOG).0)
            .subscribe();
        Subscription {
            events,
            streams: self.clone(),
            user: user.to_owned(),
        }
    }

    /// Streams open on this node.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Hands each event to its buyer's streams, if they have any.
    pub fn publish(&self, events: impl IntoIterator<Item = OrderEvent>) {
        if self.open() == 0 {
            return;
        }
        for event in events {
            if let Some(tx) = self.buyers.get(&event.user_id) {
                // No receiver left (closing): nothing to tell.
                let _ = tx.send(Arc::new(event));
            }
        }
    }
}

/// The embedded default's notifier: straight to the node's streams.
#[async_trait]
impl OrderNotifier for BuyerStreams {
    async fn notify(&self, orders: &[Order]) {
        // `publish` returns at once while no stream is open, before any
        // event is built (the iterator is lazy).
        self.publish(orders.iter().map(OrderEvent::from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, order: u64, status: &str) -> OrderEvent {
        OrderEvent {
            order_id: order.to_string(),
            sale_id: "1".into(),
            user_id: user.into(),
            quantity: 1,
            status: status.into(),
            at: 0,
        }
    }

    #[tokio::test]
    async fn a_buyer_gets_their_own_events_in_order_and_nobody_elses() {
        let streams = BuyerStreams::new();
        let mut alice = streams.subscribe("alice");
        let mut bob = streams.subscribe("bob");
        streams.publish([
            event("alice", 1, "pending_payment"),
            event("carol", 2, "pending_payment"),
            event("alice", 1, "paid"),
        ]);
        assert_eq!(alice.events.recv().await.unwrap().status, "pending_payment");
        assert_eq!(alice.events.recv().await.unwrap().status, "paid");
        assert!(alice.events.try_recv().is_err());
        assert!(bob.events.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_closed_stream_gives_its_place_back_and_two_streams_share_one_channel() {
        let streams = BuyerStreams::new();
        let first = streams.subscribe("alice");
        let mut second = streams.subscribe("alice");
        assert_eq!((streams.open(), streams.buyers.len()), (2, 1));
        drop(first);
        assert_eq!((streams.open(), streams.buyers.len()), (1, 1));
        streams.publish([event("alice", 1, "paid")]);
        assert_eq!(second.events.recv().await.unwrap().order_id, "1");
        drop(second);
        assert_eq!((streams.open(), streams.buyers.len()), (0, 0));
    }
}
