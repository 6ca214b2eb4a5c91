//! An order: units of one sale held by one user, and its payment lifecycle.
//!
//! `pending_payment` → `paid`, or → `expired` / `cancelled` (stock returns).
//! Only `pending_payment` moves; the order store applies each move as one
//! conditional write, so a payment racing an expiry has exactly one winner.

use serde::Serialize;

/// Lifecycle state of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Accepted, awaiting payment; holds stock.
    PendingPayment,
    /// Paid; holds stock for good.
    Paid,
    /// Not paid within the payment window; stock returned.
    Expired,
    /// Cancelled by the buyer; stock returned.
    Cancelled,
}

impl OrderStatus {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::Paid => "paid",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending_payment" => Self::PendingPayment,
            "paid" => Self::Paid,
            "expired" => Self::Expired,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// True while the order counts against stock and the per-user limit.
    pub fn holds_stock(self) -> bool {
        matches!(self, Self::PendingPayment | Self::Paid)
    }
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Unique id.
    pub id: u64,
    /// The sale it belongs to.
    pub sale_id: u64,
    /// The buyer.
    pub user_id: String,
    /// Units held.
    pub quantity: u32,
    /// Lifecycle state.
    pub status: OrderStatus,
    /// The buyer's `Idempotency-Key`, if one was sent.
    pub idempotency_key: Option<String>,
    /// Acceptance time, epoch ms.
    pub created_at_ms: i64,
    /// Last change, epoch ms.
    pub updated_at_ms: i64,
    /// When an unpaid order expires, epoch ms, if the sale has a payment window.
    pub expires_at_ms: Option<i64>,
}

/// A requested change of an order's state by its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Mark paid (only before the payment deadline).
    Pay,
    /// Cancel and return the stock.
    Cancel,
}
