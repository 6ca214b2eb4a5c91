//! `Idempotency-Key` on purchase: a retry with the same key by the same user
//! gets the first answer and never buys twice.
//!
//! Keys are scoped to the user. The first request with a key claims it; a
//! concurrent retry waits for the first to finish and then replays its
//! answer. Accepted orders carry their key into the order store, so replays
//! of accepted purchases survive a restart; a rejection is replayed from
//! memory for [`REJECTION_TTL_MS`]. A failed attempt (store unavailable)
//! releases the key so the retry runs afresh.

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::domain::{Order, Rejection};

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
    at_ms: i64,
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

type Key = (Box<str>, Box<str>);

/// Most rejections remembered under their keys (about 250 bytes each). A
/// flood with a fresh key per request must not grow memory without bound:
/// past this, the least recently used rejections are forgotten, and a retry
/// with a forgotten key simply runs again — a rejection bought nothing, so
/// running it again can never buy twice. Accepted keys are never evicted.
pub const MAX_REMEMBERED_REJECTIONS: usize = 200_000;

type Rejected = quick_cache::sync::Cache<Key, Done>;

/// Remembered keyed answers: claims in flight and accepted orders in one
/// map (kept until restart, then rebuilt from the stored orders), rejections
/// in a bounded cache beside it.
pub struct IdempotencyCache {
    slots: Arc<DashMap<Key, Slot>>,
    rejected: Arc<Rejected>,
}

impl Default for IdempotencyCache {
    fn default() -> Self {
        Self::with_capacity(MAX_REMEMBERED_REJECTIONS)
    }
}

impl IdempotencyCache {
    /// A cache remembering at most `rejections` rejected keys.
    pub fn with_capacity(rejections: usize) -> Self {
        Self {
            slots: Arc::default(),
            rejected: Arc::new(Rejected::new(rejections.max(1))),
        }
    }

    /// Restores an accepted order's key after a restart.
    pub fn restore(&self, order: &Order) {
        if let Some(key) = &order.idempotency_key {
            self.slots.insert(
                (order.user_id.as_str().into(), key.as_str().into()),
                Slot::Done(Done {
                    sale_id: order.sale_id,
                    quantity: order.quantity,
                    answer: Ok(order.clone()),
                    at_ms: order.created_at_ms,
                }),
            );
        }
    }

    /// Claims `key` for a purchase, or finds its first answer.
    pub async fn claim(&self, user: &str, key: &str, sale_id: u64, quantity: u32) -> Claim {
        let k: Key = (user.into(), key.into());
        let mut rx = match self.slots.entry(k.clone()) {
            Entry::Vacant(v) => {
                // A finished rejection moves here before its slot goes (see
                // `Guard::finish`), so a vacant slot with no rejection is
                // really unused.
                if let Some(done) = self.rejected.get(&k) {
                    return judge(&done, sale_id, quantity);
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
        let k: Key = (user.into(), key.into());
        match self.slots.entry(k.clone()) {
            Entry::Vacant(v) => {
                if let Some(done) = self.rejected.get(&k) {
                    return match judge(&done, sale_id, quantity) {
                        Claim::Replay(answer) => Peek::Replay(answer),
                        _ => Peek::Busy,
                    };
                }
                if let Some(answer) = on_vacant() {
                    let done = Done {
                        sale_id,
                        quantity,
                        answer,
                        at_ms: now_ms,
                    };
                    if done.answer.is_ok() {
                        v.insert(Slot::Done(done));
                    } else {
                        self.rejected.insert(k, done);
                    }
                }
                Peek::Vacant
            }
            Entry::Occupied(o) => match o.get() {
                Slot::Done(done) => match judge(done, sale_id, quantity) {
                    Claim::Replay(answer) => Peek::Replay(answer),
                    _ => Peek::Busy,
                },
                Slot::InFlight(_) => Peek::Busy,
            },
        }
    }

    /// Forgets rejections older than the TTL (accepted keys are kept). Walks
    /// the bounded rejection cache only, never the map of accepted keys.
    pub fn evict_expired(&self, now_ms: i64) {
        self.rejected
            .retain(|_, d| now_ms - d.at_ms < REJECTION_TTL_MS);
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
    slots: Arc<DashMap<Key, Slot>>,
    rejected: Arc<Rejected>,
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
            at_ms: now_ms,
        };
        if let Some(key) = self.key.take() {
            if done.answer.is_ok() {
                self.slots.insert(key, Slot::Done(done.clone()));
            } else {
                // Into the bounded cache first, then out of the map: a claim
                // that finds the slot vacant finds the rejection.
                self.rejected.insert(key.clone(), done.clone());
                self.slots.remove(&key);
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
