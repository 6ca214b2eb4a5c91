//! The clock that decides a sale's window.
//!
//! One process, one clock: in the embedded default the node's own clock
//! decides. In the distributed mode the shared stock's clock decides (the
//! Redis script reads `TIME`), so a node whose clock runs ahead cannot open
//! a sale early. Each node still answers "not started" and "ended" from
//! memory, cheaply, by its own clock corrected by the offset to the shared
//! one that the stock watcher measures — and those early answers can only
//! refuse, never open: an attempt they let through is decided again by the
//! shared clock.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::now_ms;

/// The node's clock corrected by its measured offset to the deciding one.
#[derive(Debug, Default)]
pub struct SaleClock {
    offset_ms: AtomicI64,
}

/// A measurement whose round trip took longer than this is not used: its
/// midpoint says too little about when the server read its clock.
const MAX_ROUND_TRIP_MS: i64 = 100;

impl SaleClock {
    /// Now, in epoch ms, on the deciding clock (as well as this node knows
    /// it).
    pub fn now_ms(&self) -> i64 {
        now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// The deciding clock minus this node's, in ms.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Records one reading of the deciding clock, `server_ms`, taken between
    /// the node's `sent_ms` and `received_ms`. Returns the offset when the
    /// reading was used.
    pub fn observe(&self, sent_ms: i64, server_ms: i64, received_ms: i64) -> Option<i64> {
        let round_trip = received_ms - sent_ms;
        if !(0..=MAX_ROUND_TRIP_MS).contains(&round_trip) {
            return None;
        }
        let offset = server_ms - (sent_ms + round_trip / 2);
        self.offset_ms.store(offset, Ordering::Relaxed);
        Some(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_taken_at_the_round_trip_midpoint() {
        let clock = SaleClock::default();
        assert_eq!(clock.offset_ms(), 0);
        assert_eq!(clock.observe(1_000, 11_005, 1_010), Some(10_000));
        assert_eq!(clock.offset_ms(), 10_000);
        let now = clock.now_ms();
        assert!((now - now_ms() - 10_000).abs() < 1_000);
        assert_eq!(clock.observe(1_000, -9_000, 1_000), Some(-10_000));
    }

    #[test]
    fn a_slow_or_backwards_reading_is_ignored() {
        let clock = SaleClock::default();
        assert_eq!(clock.observe(1_000, 5_000, 1_500), None);
        assert_eq!(clock.observe(1_000, 5_000, 900), None);
        assert_eq!(clock.offset_ms(), 0);
    }
}
