//! Validated domain types and the pure allocation rules.
//!
//! Nothing here does I/O: the types are built by `parse` constructors that
//! reject bad input with a [`ValidationError`] naming the field, and the
//! [`ledger`] decides, atomically and without a global lock, who gets a unit.

pub mod front_door;
pub mod ids;
pub mod ledger;
pub mod order;
pub mod rejection;
pub mod sale;

pub use front_door::FrontDoor;
pub use ids::IdGenerator;
pub use ledger::{Ledger, Reserve};
pub use order::{Order, OrderStatus};
pub use rejection::Rejection;
pub use sale::{LiveSchedule, NewSale, Sale, SaleStatus, Schedule, Window, WindowMove};

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The JSON field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Milliseconds since the Unix epoch, the clock every component shares.
pub fn now_ms() -> i64 {
    // `SystemTime` directly: chrono's `Utc::now` reads the same clock and
    // then builds a calendar date the hot path never looks at.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Formats epoch milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
