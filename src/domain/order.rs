//! An order: units of one sale held by one user, and its payment lifecycle.
//!
//! `pending_payment` → `paid`, or → `expired` / `cancelled` (stock returns).
//! Only `pending_payment` moves; the order store applies each move as one
//! conditional write, so a payment racing an expiry has exactly one winner.

use serde::Serialize;

/// Lifecycle state of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// An accepted order as it travels through the outbox and the order queue:
/// compact JSON, ids as numbers, times as epoch ms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct WireOrder {
    id: u64,
    sale: u64,
    user: String,
    qty: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
}

impl Order {
    /// The queue and outbox form of a freshly accepted order.
    pub fn to_wire(&self) -> String {
        let wire = WireOrder {
            id: self.id,
            sale: self.sale_id,
            user: self.user_id.clone(),
            qty: self.quantity,
            key: self.idempotency_key.clone(),
            at: self.created_at_ms,
            exp: self.expires_at_ms,
        };
        // A struct of numbers and strings always serializes.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Reads a queue message: one order written by [`Order::to_wire`], or a
    /// JSON array of them (nodes publish the orders of one batch together).
    ///
    /// # Errors
    /// When `bytes` is neither (a poison message).
    pub fn batch_from_wire(bytes: &[u8]) -> Result<Vec<Self>, serde_json::Error> {
        if bytes.first() == Some(&b'[') {
            let raw: Vec<&serde_json::value::RawValue> = serde_json::from_slice(bytes)?;
            raw.iter()
                .map(|r| Self::from_wire(r.get().as_bytes()))
                .collect()
        } else {
            Self::from_wire(bytes).map(|o| vec![o])
        }
    }

    /// Reads an order written by [`Order::to_wire`]; it is `pending_payment`.
    ///
    /// # Errors
    /// When `bytes` is not such an order (a poison message).
    pub fn from_wire(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let w: WireOrder = serde_json::from_slice(bytes)?;
        if w.qty == 0 || w.user.is_empty() {
            return Err(serde::de::Error::custom(
                "an order needs a user and a quantity",
            ));
        }
        Ok(Self {
            id: w.id,
            sale_id: w.sale,
            user_id: w.user,
            quantity: w.qty,
            status: OrderStatus::PendingPayment,
            idempotency_key: w.key,
            created_at_ms: w.at,
            updated_at_ms: w.at,
            expires_at_ms: w.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: u64, key: Option<&str>) -> Order {
        Order {
            id,
            sale_id: 7,
            user_id: "ann \"quoted\" ✓".into(),
            quantity: 2,
            status: OrderStatus::PendingPayment,
            idempotency_key: key.map(str::to_owned),
            created_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_000_000,
            expires_at_ms: Some(1_700_000_060_000),
        }
    }

    #[test]
    fn the_wire_form_round_trips_one_order_or_an_array() {
        let (a, b) = (order(1, Some("k")), order(2, None));
        assert_eq!(Order::from_wire(a.to_wire().as_bytes()).unwrap(), a);
        let batch = format!("[{},{}]", a.to_wire(), b.to_wire());
        assert_eq!(
            Order::batch_from_wire(batch.as_bytes()).unwrap(),
            vec![a.clone(), b]
        );
        assert_eq!(
            Order::batch_from_wire(a.to_wire().as_bytes()).unwrap(),
            vec![a]
        );
    }

    #[test]
    fn poison_is_refused_not_guessed() {
        for bad in [
            &b"not json"[..],
            b"{}",
            b"[{\"id\":1}]",
            b"{\"id\":1,\"sale\":1,\"user\":\"\",\"qty\":1,\"at\":0}",
        ] {
            assert!(
                Order::batch_from_wire(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
