//! The bounded memory of rejected keys: a fixed, set-associative table of
//! fingerprints, like a CPU cache.
//!
//! Written by hand because a flood with a fresh `Idempotency-Key` on every
//! request records one rejection per request, and the general caches cost
//! too much for that. quick_cache (used here before) keeps CLOCK-Pro's
//! hot, cold and ghost rings to decide what to forget; every insert into a
//! full cache walks the cold ring, and every operation takes a shard lock
//! and touches a hash table, its entry slab and the ring, each a separate
//! cache miss in a table of 200,000 entries. Measured on the server, that
//! was about a fifth of a keyed sold-out request. A rejection needs none of
//! it: forgetting one is harmless (the retry runs again and, having bought
//! nothing, can never buy twice), so any reasonable eviction will do.
//!
//! The table has `capacity` ways in sets of [`WAYS`]; a fingerprint picks
//! its set from its own bits (it is uniformly random already). A set is one
//! lock and its ways, 192 bytes aligned to cache lines: a lookup or an
//! insert is one uncontended lock and two or three adjacent lines. A full
//! set forgets its oldest insertion that was not looked up since it was
//! last passed over (first in, first out with a second chance, CLOCK within
//! the set): a buyer's key that is being retried stays while a stream of
//! one-off keys flows through, and the table never holds more than
//! `capacity`.

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Key, Rejected};

/// Ways per set.
pub const WAYS: usize = 4;

/// One remembered rejection.
#[derive(Clone, Copy)]
struct Way {
    /// The fingerprint's two halves (a `u128` would pad the way to 48
    /// bytes).
    key: [u64; 2],
    value: Rejected,
}

struct Ways {
    ways: [Option<Way>; WAYS],
    /// The way the next insertion into a full set looks at first.
    next: u8,
    /// Bit `i`: way `i` was looked up since the hand last passed it.
    referenced: u8,
}

/// A set: its lock and its ways, on lines of their own.
#[repr(align(64))]
struct Set(Mutex<Ways>);

/// Rejections remembered under their keys' fingerprints, at most
/// `capacity` of them (see the module docs).
pub struct Rejections {
    sets: Box<[Set]>,
}

fn split(key: Key) -> [u64; 2] {
    [key as u64, (key >> 64) as u64]
}

impl Rejections {
    /// Room for `capacity` rejections (at least one set), rounded up to
    /// whole sets.
    pub fn with_capacity(capacity: usize) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1);
        Self {
            sets: (0..sets)
                .map(|_| {
                    Set(Mutex::new(Ways {
                        ways: [None; WAYS],
                        next: 0,
                        referenced: 0,
                    }))
                })
                .collect(),
        }
    }

    /// The set of `key`: the high half, scaled to the number of sets (a
    /// multiply instead of a division; the bits are uniform).
    fn set(&self, key: [u64; 2]) -> MutexGuard<'_, Ways> {
        let index = ((u128::from(key[1]) * self.sets.len() as u128) >> 64) as usize;
        lock(&self.sets[index])
    }

    /// The rejection remembered under `key`.
    pub fn get(&self, key: Key) -> Option<Rejected> {
        let key = split(key);
        let mut set = self.set(key);
        let i = set
            .ways
            .iter()
            .position(|w| w.is_some_and(|w| w.key == key))?;
        set.referenced |= 1 << i;
        set.ways[i].map(|w| w.value)
    }

    /// Remembers `value` under `key`, in place of what `key` held, or in an
    /// empty way, or in place of the set's oldest insertion not looked up
    /// since the hand last passed it.
    pub fn insert(&self, key: Key, value: Rejected) {
        let key = split(key);
        let mut set = self.set(key);
        let way = Some(Way { key, value });
        if let Some(slot) = set.ways.iter_mut().flatten().find(|w| w.key == key) {
            slot.value = value;
        } else if let Some(i) = set.ways.iter().position(Option::is_none) {
            set.ways[i] = way;
            set.referenced &= !(1 << i);
        } else {
            // The hand passes over looked-up ways once, clearing their bit;
            // after one turn every bit is clear, so this ends.
            let mut victim = usize::from(set.next) % WAYS;
            while set.referenced & (1 << victim) != 0 {
                set.referenced &= !(1 << victim);
                victim = (victim + 1) % WAYS;
            }
            set.ways[victim] = way;
            set.next = ((victim + 1) % WAYS) as u8;
        }
    }

    /// Forgets every rejection `keep` says no to.
    pub fn retain(&self, keep: impl Fn(&Rejected) -> bool) {
        for set in &self.sets {
            for slot in &mut lock(set).ways {
                if slot.is_some_and(|w| !keep(&w.value)) {
                    *slot = None;
                }
            }
        }
    }

    /// Rejections remembered, counted set by set (for tests and reports; the
    /// purchase path never asks, so it keeps no counter to update).
    pub fn len(&self) -> usize {
        self.sets
            .iter()
            .map(|set| lock(set).ways.iter().flatten().count())
            .sum()
    }
}

/// Locks `set`. A panic while a set is held leaves it consistent (every
/// write is one assignment), so a poisoned lock is used as it is.
fn lock(set: &Set) -> MutexGuard<'_, Ways> {
    set.0.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Rejection;

    fn rejected(sale_id: u64) -> Rejected {
        Rejected {
            sale_id,
            at_ms: 0,
            quantity: 1,
            reason: Rejection::SoldOut,
        }
    }

    #[test]
    fn a_set_is_cache_lines_of_its_own() {
        assert_eq!(std::mem::align_of::<Set>(), 64);
        assert!(
            std::mem::size_of::<Set>() <= 192,
            "{}",
            std::mem::size_of::<Set>()
        );
    }

    #[test]
    fn remembers_replaces_and_forgets() {
        let table = Rejections::with_capacity(8);
        table.insert(7, rejected(1));
        table.insert(7 << 64 | 9, rejected(2));
        assert_eq!(table.get(7).map(|r| r.sale_id), Some(1));
        assert_eq!(table.get(7 << 64 | 9).map(|r| r.sale_id), Some(2));
        assert!(table.get(8).is_none());
        table.insert(7, rejected(3));
        assert_eq!(
            table.get(7).map(|r| r.sale_id),
            Some(3),
            "replaced in place"
        );
        assert_eq!(table.len(), 2);
        table.retain(|r| r.sale_id != 3);
        assert!(table.get(7).is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn never_holds_more_than_its_capacity_and_keeps_the_newest() {
        let table = Rejections::with_capacity(100);
        let keys: Vec<Key> = (0..10_000u64)
            .map(|i| xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()))
            .collect();
        for (i, key) in keys.iter().enumerate() {
            table.insert(*key, rejected(i as u64));
            assert!(table.len() <= 100);
        }
        assert_eq!(table.len(), 100, "every way is in use");
        // Each set keeps its last WAYS insertions: the newest key always.
        let last = *keys.last().unwrap();
        assert_eq!(table.get(last).map(|r| r.sale_id), Some(9_999));
        let kept = keys.iter().filter(|k| table.get(**k).is_some()).count();
        assert_eq!(kept, 100);
        let recent = keys[9_000..]
            .iter()
            .filter(|k| table.get(**k).is_some())
            .count();
        assert!(recent >= 95, "the survivors are recent: {recent} of 100");
    }

    #[test]
    fn a_key_looked_up_outlives_a_stream_of_one_off_keys() {
        let table = Rejections::with_capacity(WAYS);
        let retried = xxhash_rust::xxh3::xxh3_128(b"retried");
        table.insert(retried, rejected(1));
        for i in 0..1_000u64 {
            // Retried between every few one-off keys, as a buyer's retries
            // come between other buyers' fresh requests.
            if i % 2 == 0 {
                assert!(
                    table.get(retried).is_some(),
                    "forgotten after {i} one-off keys"
                );
            }
            table.insert(xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()), rejected(2));
        }
        assert_eq!(table.len(), WAYS);
        // Not looked up any more: it goes like any other.
        for i in 1_000..1_010u64 {
            table.insert(xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()), rejected(2));
        }
        assert!(table.get(retried).is_none());
    }

    #[test]
    fn concurrent_inserts_fill_every_way_and_no_more() {
        let table = std::sync::Arc::new(Rejections::with_capacity(1_000));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let table = table.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let key = xxhash_rust::xxh3::xxh3_128(&(t << 32 | i).to_le_bytes());
                        table.insert(key, rejected(i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(table.len(), 1_000);
    }
}
