//! The webhook outbox's vocabulary: what the order stores keep per order
//! event and what the dispatcher ([`crate::worker::webhooks`]) asks of them.
//!
//! A transactional outbox: when a store's outbox is on, every order change
//! (accepted, paid, expired, cancelled) writes its event row in the SAME
//! transaction as the change, so an order change is never durable without
//! its event, nor the event without the change, whatever crashes.
//!
//! Invariants callers rely on:
//! - An event's id is [`event_id`] of its order and status: each order has
//!   at most one event per status (accepted once, then exactly one of paid,
//!   expired, cancelled), so a re-written event (a retried batch) is the
//!   same row, never a second one.
//! - A claim hands a due event to one dispatcher for a lease: the row's
//!   `next_attempt_at` moves to the lease's end and its attempt count goes
//!   up, in one conditional update, so concurrent dispatchers (nodes) never
//!   claim one event at once. A dispatcher that dies mid-attempt leaves the
//!   row due again when the lease ends.
//! - An attempt's result is recorded only while the row is still pending at
//!   the attempt number its claim produced: a late result of an older,
//!   expired lease changes nothing.

use crate::domain::{Order, OrderStatus};

/// The event id of `order_id` reaching `status`: `evt_<order id>_<kind>`
/// with kind `accepted`, `paid`, `expired` or `cancelled`. The PostgreSQL
/// store builds the same text in SQL (see its migration's comment).
pub fn event_id(order_id: u64, status: OrderStatus) -> String {
    format!("evt_{order_id}_{}", event_kind(status))
}

/// `accepted`, `paid`, `expired` or `cancelled`.
pub fn event_kind(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::PendingPayment => "accepted",
        OrderStatus::Paid => "paid",
        OrderStatus::Expired => "expired",
        OrderStatus::Cancelled => "cancelled",
    }
}

/// The event type on the wire: `order.accepted`, `order.paid`,
/// `order.expired`, `order.cancelled` (the queue's routing keys too).
pub fn event_type(status: OrderStatus) -> &'static str {
    crate::engine::events::routing_key(status)
}

/// Where one event's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet; attempted again at `next_attempt_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every allowed attempt failed; kept for the log, never sent again.
    Dead,
}

impl DeliveryState {
    /// Every state, in the log's order.
    pub const ALL: [Self; 3] = [Self::Pending, Self::Delivered, Self::Dead];

    /// The stored (and wire) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    /// Reads a stored spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// A claimed event: what its payload is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// [`event_id`] of the order and its status.
    pub event_id: String,
    /// The order as the event saw it: its status is the event's, its
    /// `updated_at_ms` the event's time (the other fields never change).
    pub order: Order,
    /// When the change happened, epoch ms.
    pub occurred_at_ms: i64,
    /// This attempt's number (1 for the first): the claim's token.
    pub attempt: u32,
}

/// What one attempt did, as the dispatcher records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The event.
    pub event_id: String,
    /// The attempt number its claim returned.
    pub attempt: u32,
    /// The new state: delivered, pending again, or dead.
    pub state: DeliveryState,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why it failed (a transport error or a non-2xx status), if it did.
    pub error: Option<String>,
    /// When a pending event is next due, epoch ms (ignored otherwise).
    pub next_attempt_at_ms: i64,
    /// When the attempt ended, epoch ms.
    pub now_ms: i64,
}

/// One event's line in the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event.
    pub event_id: String,
    /// Its order.
    pub order_id: u64,
    /// The order's status the event announces.
    pub order_status: OrderStatus,
    /// When the change happened, epoch ms.
    pub occurred_at_ms: i64,
    /// Where delivery stands.
    pub state: DeliveryState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The receiver's last HTTP status, if it ever answered.
    pub last_status: Option<u16>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When a pending event is next due (or its lease ends), epoch ms.
    pub next_attempt_at_ms: i64,
    /// When the row last changed, epoch ms.
    pub updated_at_ms: i64,
}

/// Which log lines to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Only this state (`None`: every state).
    pub state: Option<DeliveryState>,
    /// Only events whose id sorts after this one (the page cursor).
    pub after: Option<String>,
    /// Most lines.
    pub limit: usize,
}

/// Stored text of an optional last error, bounded so a chatty receiver's
/// error cannot grow the table.
pub fn bounded_error(error: Option<&str>) -> Option<String> {
    const MAX: usize = 500;
    error.map(|e| {
        if e.len() <= MAX {
            e.to_owned()
        } else {
            let mut end = MAX;
            while !e.is_char_boundary(end) {
                end -= 1;
            }
            e[..end].to_owned()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_name_the_order_and_kind() {
        assert_eq!(event_id(42, OrderStatus::PendingPayment), "evt_42_accepted");
        assert_eq!(event_id(42, OrderStatus::Paid), "evt_42_paid");
        assert_eq!(event_id(7, OrderStatus::Expired), "evt_7_expired");
        assert_eq!(event_id(7, OrderStatus::Cancelled), "evt_7_cancelled");
        assert_eq!(event_type(OrderStatus::Cancelled), "order.cancelled");
    }

    #[test]
    fn states_round_trip() {
        for s in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::parse("lost"), None);
    }

    #[test]
    fn errors_are_bounded_on_a_char_boundary() {
        let long = "é".repeat(400);
        let kept = bounded_error(Some(&long)).unwrap();
        assert!(kept.len() <= 500 && long.starts_with(&kept));
        assert_eq!(bounded_error(None), None);
    }
}
