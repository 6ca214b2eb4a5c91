//! Unique, roughly time-ordered 63-bit ids for sales and orders.
//!
//! Layout (Snowflake-style): 41 bits of milliseconds since 2024-01-01, 10 bits
//! of node id, 12 bits of sequence. The generator is a single atomic: it hands
//! out `max(last + 1, now_id)`, so ids stay unique across restarts as long as
//! the clock does not run backwards past the highest id already stored, which
//! the caller guarantees by seeding [`IdGenerator::observe`] with it.

use std::sync::atomic::{AtomicU64, Ordering};

const EPOCH_MS: i64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;

/// Lock-free id source shared by all request handlers.
#[derive(Debug)]
pub struct IdGenerator {
    node: u64,
    last: AtomicU64,
}

impl IdGenerator {
    /// A generator for `node` (0..1024; nodes of one deployment must differ).
    pub fn new(node: u16) -> Self {
        Self {
            node: u64::from(node) & ((1 << NODE_BITS) - 1),
            last: AtomicU64::new(0),
        }
    }

    /// Makes every future id greater than `id` (call with the highest stored id).
    pub fn observe(&self, id: u64) {
        self.last.fetch_max(id, Ordering::AcqRel);
    }

    /// The next id.
    pub fn next_id(&self) -> u64 {
        let now = (super::now_ms() - EPOCH_MS).max(0) as u64;
        let floor = (now << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS);
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(floor.max(last + 1))
            })
            .unwrap_or_else(|v| v);
        floor.max(prev + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn ids_are_unique_across_threads() {
        let gen = Arc::new(IdGenerator::new(3));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let gen = gen.clone();
                std::thread::spawn(move || (0..20_000).map(|_| gen.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 80_000);
    }

    #[test]
    fn observe_moves_the_floor() {
        let gen = IdGenerator::new(0);
        gen.observe(u64::MAX / 4);
        assert!(gen.next_id() > u64::MAX / 4);
    }
}
