//! `Idempotency-Key` on purchase: a retry with the same key by the same user
//! gets the first answer and never buys twice.
//!
//! Keys are scoped to the user. The first request with a key claims it; a
//! concurrent retry waits for the first to finish and then replays its
//! answer. Accepted orders carry their key into the order store, so replays
//! of accepted purchases survive a restart; a rejection is replayed from
//! memory for [`REJECTION_TTL_MS`]. A failed attempt (store unavailable)
//! releases the key so the retry runs afresh.
//!
//! **Fingerprints.** A `(user, key)` pair is remembered by its 128-bit
//! fingerprint (XXH3-128 under a seed drawn at start), not by copies of the
//! two strings: a keyed request is hashed once, nothing is allocated to look
//! it up or to remember it, and a remembered rejection is 40 bytes. Two
//! pairs share a fingerprint with probability about 2⁻¹²⁸ per pair (the seed
//! is secret, so nobody can search for a collision); the accepted keys are
//! fingerprinted again from the stored orders after a restart, under the new
//! seed.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::domain::{Order, Rejection};

mod rejections;

use rejections::Rejections;

/// How long a remembered rejection is replayed.
pub const REJECTION_TTL_MS: i64 = 24 * 3600 * 1000;
/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 128;

/// The first answer to a keyed purchase: the order it made, or the
/// rejection it got.
pub type Recorded = Result<Order, Rejection>;

#[derive(Debug, Clone)]
struct Done {
    sale_id: u64,
    quantity: u32,
    answer: Recorded,
}

/// A remembered rejection: what [`Done`] holds, without room for an order.
#[derive(Debug, Clone, Copy)]
struct Rejected {
    sale_id: u64,
    at_ms: i64,
    quantity: u32,
    reason: Rejection,
}

impl Rejected {
    fn judge(&self, sale_id: u64, quantity: u32) -> Claim {
        if self.sale_id == sale_id && self.quantity == quantity {
            Claim::Replay(Err(self.reason))
        } else {
            Claim::Mismatch
        }
    }
}

enum Slot {
    InFlight(watch::Receiver<Option<Done>>),
    Done(Done),
}

/// What to do with a keyed purchase.
pub enum Claim {
    /// First use of the key: run the purchase, then [`Guard::finish`].
    Fresh(Guard),
    /// The key already has an answer for this request: replay it.
    Replay(Recorded),
    /// The key was used for a different sale or quantity.
    Mismatch,
    /// The first request with this key failed while this one waited.
    Retry,
}

/// What a keyed purchase would find (see [`IdempotencyCache::peek_or_record`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Peek {
    /// The key was unused; it now holds what `on_vacant` returned, if
    /// anything.
    Vacant,
    /// The key already answered this very purchase: replay it.
    Replay(Recorded),
    /// In flight, or used for a different purchase: only a claim can tell.
    Busy,
}

/// The fingerprint of a `(user, key)` pair (see the module docs).
type Key = u128;

/// Hashes a [`Key`] for the maps: the fingerprint is uniformly random
/// already, so its own bits are the hash (a second hash would only cost).
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys are hashed here; this keeps any other input
        // correct (if slow), never wrong.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(29) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }
}

type BuildFingerprint = BuildHasherDefault<FingerprintHasher>;

/// Most rejections remembered under their keys (48 bytes each, in a table
/// allocated at start: about 10 MB). A flood with a fresh key per request
/// must not grow memory without bound: past this, old rejections are
/// forgotten (see [`rejections`]), and a retry with a forgotten key simply
/// runs again — a rejection bought nothing, so running it again can never
/// buy twice. Accepted keys are never evicted.
pub const MAX_REMEMBERED_REJECTIONS: usize = 200_000;

/// Remembered keyed answers: claims in flight and accepted orders in one
/// map (kept until restart, then rebuilt from the stored orders), rejections
/// in a bounded cache beside it.
pub struct IdempotencyCache {
    seed: u64,
    slots: Arc<DashMap<Key, Slot, BuildFingerprint>>,
    rejected: Arc<Rejections>,
}

impl Default for IdempotencyCache {
    fn default() -> Self {
        Self::with_capacity(MAX_REMEMBERED_REJECTIONS)
    }
}

impl IdempotencyCache {
    /// A cache remembering at most `rejections` rejected keys.
    pub fn with_capacity(rejections: usize) -> Self {
        let rejections = rejections.max(1);
        Self {
            seed: rand::random(),
            slots: Arc::new(DashMap::with_hasher(BuildFingerprint::default())),
            rejected: Arc::new(Rejections::with_capacity(rejections)),
        }
    }

    /// The fingerprint of `user`'s `key`. The user's length goes first, so
    /// no two different pairs hash the same bytes.
    fn fingerprint(&self, user: &str, key: &str) -> Key {
        // Both fit on the stack for every key the API accepts (at most
        // MAX_KEY_LEN bytes) and every ordinary user id; longer ones stream.
        let mut buf = [0u8; 320];
        let len = 8 + user.len() + key.len();
        if len <= buf.len() {
            buf[..8].copy_from_slice(&(user.len() as u64).to_le_bytes());
            buf[8..8 + user.len()].copy_from_slice(user.as_bytes());
            buf[8 + user.len()..len].copy_from_slice(key.as_bytes());
            xxhash_rust::xxh3::xxh3_128_with_seed(&buf[..len], self.seed)
        } else {
            let mut h = xxhash_rust::xxh3::Xxh3::with_seed(self.seed);
            h.update(&(user.len() as u64).to_le_bytes());
            h.update(user.as_bytes());
            h.update(key.as_bytes());
            h.digest128()
        }
    }

    /// Restores an accepted order's key after a restart.
    pub fn restore(&self, order: &Order) {
        if let Some(key) = &order.idempotency_key {
            self.slots.insert(
                self.fingerprint(&order.user_id, key),
                Slot::Done(Done {
                    sale_id: order.sale_id,
                    quantity: order.quantity,
                    answer: Ok(order.clone()),
                }),
            );
        }
    }

    /// Claims `key` for a purchase, or finds its first answer.
    pub async fn claim(&self, user: &str, key: &str, sale_id: u64, quantity: u32) -> Claim {
        let k = self.fingerprint(user, key);
        let mut rx = match self.slots.entry(k) {
            Entry::Vacant(v) => {
                // A finished rejection moves here before its slot goes (see
                // `Guard::finish`), so a vacant slot with no rejection is
                // really unused.
                if let Some(done) = self.rejected.get(k) {
                    return done.judge(sale_id, quantity);
                }
                let (tx, rx) = watch::channel(None);
                v.insert(Slot::InFlight(rx));
                return Claim::Fresh(Guard {
                    slots: self.slots.clone(),
                    rejected: self.rejected.clone(),
                    key: Some(k),
                    tx,
                    sale_id,
                    quantity,
                });
            }
            Entry::Occupied(o) => match o.get() {
                Slot::Done(done) => return judge(done, sale_id, quantity),
                Slot::InFlight(rx) => rx.clone(),
            },
        };
        // Wait for the first request with this key to finish (or fail).
        let _ = rx.wait_for(Option::is_some).await;
        let done = rx.borrow().clone();
        match done {
            Some(done) => judge(&done, sale_id, quantity),
            None => Claim::Retry,
        }
    }

    /// What [`Self::claim`] would find for this purchase, found without
    /// claiming the key or waiting for a claim in flight. For an unused key,
    /// `on_vacant` runs (under the key's shard lock, so it must be quick and
    /// must not touch this cache); what it returns, if anything, is
    /// recorded as the key's first answer, as a claim finished at once would.
    pub fn peek_or_record(
        &self,
        user: &str,
        key: &str,
        sale_id: u64,
        quantity: u32,
        now_ms: i64,
        on_vacant: impl FnOnce() -> Option<Recorded>,
    ) -> Peek {
        let k = self.fingerprint(user, key);
        let replay = |claim| match claim {
            Claim::Replay(answer) => Peek::Replay(answer),
            _ => Peek::Busy,
        };
        match self.slots.entry(k) {
            Entry::Vacant(v) => {
                if let Some(done) = self.rejected.get(k) {
                    return replay(done.judge(sale_id, quantity));
                }
                match on_vacant() {
                    Some(Err(reason)) => self.rejected.insert(
                        k,
                        Rejected {
                            sale_id,
                            at_ms: now_ms,
                            quantity,
                            reason,
                        },
                    ),
                    Some(answer @ Ok(_)) => {
                        v.insert(Slot::Done(Done {
                            sale_id,
                            quantity,
                            answer,
                        }));
                    }
                    None => {}
                }
                Peek::Vacant
            }
            Entry::Occupied(o) => match o.get() {
                Slot::Done(done) => replay(judge(done, sale_id, quantity)),
                Slot::InFlight(_) => Peek::Busy,
            },
        }
    }

    /// Forgets rejections older than the TTL (accepted keys are kept). Walks
    /// the bounded rejection cache only, never the map of accepted keys.
    pub fn evict_expired(&self, now_ms: i64) {
        self.rejected
            .retain(|d| now_ms - d.at_ms < REJECTION_TTL_MS);
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.slots.len() + self.rejected.len()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn judge(done: &Done, sale_id: u64, quantity: u32) -> Claim {
    if done.sale_id == sale_id && done.quantity == quantity {
        Claim::Replay(done.answer.clone())
    } else {
        Claim::Mismatch
    }
}

/// Holds a claimed key until the purchase's answer is known.
pub struct Guard {
    slots: Arc<DashMap<Key, Slot, BuildFingerprint>>,
    rejected: Arc<Rejections>,
    key: Option<Key>,
    tx: watch::Sender<Option<Done>>,
    sale_id: u64,
    quantity: u32,
}

impl Guard {
    /// Records the answer and wakes any waiting retry.
    pub fn finish(mut self, answer: Recorded, now_ms: i64) {
        let done = Done {
            sale_id: self.sale_id,
            quantity: self.quantity,
            answer,
        };
        if let Some(key) = self.key.take() {
            match &done.answer {
                Ok(_) => {
                    self.slots.insert(key, Slot::Done(done.clone()));
                }
                Err(reason) => {
                    // Into the bounded cache first, then out of the map: a
                    // claim that finds the slot vacant finds the rejection.
                    self.rejected.insert(
                        key,
                        Rejected {
                            sale_id: done.sale_id,
                            at_ms: now_ms,
                            quantity: done.quantity,
                            reason: *reason,
                        },
                    );
                    self.slots.remove(&key);
                }
            }
        }
        self.tx.send_replace(Some(done));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Not finished: the attempt failed; free the key for a fresh retry.
        // Waiters see the sender close with `None` and are told to retry.
        if let Some(key) = self.key.take() {
            self.slots.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replays_and_detects_mismatch() {
        let cache = IdempotencyCache::default();
        let Claim::Fresh(guard) = cache.claim("u", "k", 1, 1).await else {
            panic!("first claim must be fresh")
        };
        guard.finish(Err(Rejection::SoldOut), 0);
        assert!(matches!(
            cache.claim("u", "k", 1, 1).await,
            Claim::Replay(Err(Rejection::SoldOut))
        ));
        assert!(matches!(cache.claim("u", "k", 2, 1).await, Claim::Mismatch));
        // Another user's identical key is independent.
        assert!(matches!(cache.claim("v", "k", 1, 1).await, Claim::Fresh(_)));
    }

    #[tokio::test]
    async fn concurrent_retry_waits_for_first() {
        let cache = Arc::new(IdempotencyCache::default());
        let Claim::Fresh(guard) = cache.claim("u", "k", 1, 1).await else {
            panic!("first claim must be fresh")
        };
        let c2 = cache.clone();
        let waiter = tokio::spawn(async move { c2.claim("u", "k", 1, 1).await });
        tokio::task::yield_now().await;
        guard.finish(Err(Rejection::LimitReached), 0);
        assert!(matches!(
            waiter.await.unwrap(),
            Claim::Replay(Err(Rejection::LimitReached))
        ));
    }

    #[test]
    fn fingerprints_separate_user_from_key() {
        let cache = IdempotencyCache::default();
        assert_ne!(cache.fingerprint("ab", "c"), cache.fingerprint("a", "bc"));
        assert_ne!(cache.fingerprint("u", "k"), cache.fingerprint("v", "k"));
        assert_eq!(cache.fingerprint("u", "k"), cache.fingerprint("u", "k"));
        // Past the stack buffer the streamed hash is the same function.
        let long_user = "x".repeat(400);
        let short = cache.fingerprint("u", &"k".repeat(100));
        assert_eq!(short, cache.fingerprint("u", &"k".repeat(100)));
        assert_ne!(
            cache.fingerprint(&long_user, "k"),
            cache.fingerprint(&long_user, "j")
        );
        let mut buf = Vec::new();
        buf.extend_from_slice(&400u64.to_le_bytes());
        buf.extend_from_slice(long_user.as_bytes());
        buf.extend_from_slice(b"k");
        assert_eq!(
            cache.fingerprint(&long_user, "k"),
            xxhash_rust::xxh3::xxh3_128_with_seed(&buf, cache.seed)
        );
    }

    #[test]
    fn a_restart_draws_a_new_seed() {
        let (a, b) = (IdempotencyCache::default(), IdempotencyCache::default());
        assert_ne!(a.fingerprint("u", "k"), b.fingerprint("u", "k"));
    }

    #[tokio::test]
    async fn failed_attempt_frees_the_key() {
        let cache = IdempotencyCache::default();
        let Claim::Fresh(guard) = cache.claim("u", "k", 1, 1).await else {
            panic!("first claim must be fresh")
        };
        drop(guard);
        assert!(matches!(cache.claim("u", "k", 1, 1).await, Claim::Fresh(_)));
    }

    #[tokio::test]
    async fn peek_and_record_agree_with_claim() {
        let cache = IdempotencyCache::default();
        let sold_out = || Some(Err(Rejection::SoldOut));
        assert_eq!(
            cache.peek_or_record("u", "k", 1, 1, 0, || None),
            Peek::Vacant
        );
        assert!(cache.is_empty(), "nothing to record, nothing recorded");
        assert_eq!(
            cache.peek_or_record("u", "k", 1, 1, 0, sold_out),
            Peek::Vacant
        );
        let replay = Peek::Replay(Err(Rejection::SoldOut));
        assert_eq!(
            cache.peek_or_record("u", "k", 1, 1, 0, || unreachable!()),
            replay
        );
        assert!(matches!(
            cache.claim("u", "k", 1, 1).await,
            Claim::Replay(Err(Rejection::SoldOut))
        ));
        assert_eq!(
            cache.peek_or_record("u", "k", 1, 2, 0, sold_out),
            Peek::Busy
        );
        let Claim::Fresh(guard) = cache.claim("u", "other", 1, 1).await else {
            panic!("first claim must be fresh")
        };
        assert_eq!(
            cache.peek_or_record("u", "other", 1, 1, 0, sold_out),
            Peek::Busy
        );
        drop(guard);
        assert_eq!(
            cache.peek_or_record("u", "other", 1, 1, 0, || None),
            Peek::Vacant
        );
    }

    #[tokio::test]
    async fn evicts_old_rejections_only() {
        let cache = IdempotencyCache::default();
        if let Claim::Fresh(g) = cache.claim("u", "k", 1, 1).await {
            g.finish(Err(Rejection::SoldOut), 0);
        }
        cache.evict_expired(REJECTION_TTL_MS + 1);
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn rejections_are_bounded_and_accepted_keys_are_not() {
        let cache = IdempotencyCache::with_capacity(100);
        for i in 0..1000 {
            let key = format!("k{i}");
            let Claim::Fresh(g) = cache.claim("u", &key, 1, 1).await else {
                panic!("fresh key {key}")
            };
            g.finish(Err(Rejection::SoldOut), 0);
        }
        assert!(cache.len() <= 110, "rejections kept: {}", cache.len());
        // A forgotten rejection runs again (it bought nothing); a kept one
        // is replayed.
        let mut replayed = 0;
        for i in 0..1000 {
            match cache.claim("u", &format!("k{i}"), 1, 1).await {
                Claim::Replay(Err(Rejection::SoldOut)) => replayed += 1,
                Claim::Fresh(g) => drop(g),
                _ => panic!("unexpected claim"),
            }
        }
        assert!((1..=110).contains(&replayed), "replayed {replayed}");
        // Accepted keys stay, however many rejections come.
        let Claim::Fresh(g) = cache.claim("u", "bought", 1, 1).await else {
            panic!("fresh")
        };
        let order = Order {
            id: 9,
            sale_id: 1,
            user_id: "u".into(),
            quantity: 1,
            status: crate::domain::OrderStatus::PendingPayment,
            idempotency_key: Some("bought".into()),
            created_at_ms: 0,
            updated_at_ms: 0,
            expires_at_ms: None,
        };
        g.finish(Ok(order.clone()), 0);
        for i in 1000..2000 {
            if let Claim::Fresh(g) = cache.claim("u", &format!("k{i}"), 1, 1).await {
                g.finish(Err(Rejection::SoldOut), 0);
            }
        }
        assert!(matches!(
            cache.claim("u", "bought", 1, 1).await,
            Claim::Replay(Ok(o)) if o == order
        ));
    }
}
