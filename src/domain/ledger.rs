//! The allocation rules: who gets a unit, decided atomically per sale.
//!
//! Invariants (checked by the property tests below, under real threads too):
//! 1. units held never exceed `stock` (`remaining` never underflows);
//! 2. no user holds more than `per_user_limit` units.
//!
//! Design: `remaining` is one atomic decremented by compare-and-swap, so the
//! sold-out check is lock-free. Per-user holdings live in a fixed number of
//! shards, each behind a short `std::sync::Mutex` never held across `.await`;
//! a reservation holds only its user's shard while it checks the limit and
//! takes the units, so two buyers contend only when they hash to one shard.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::Rejection;

const SHARDS: usize = 64;

/// One shard of per-user holdings.
type Holders = Mutex<HashMap<Box<str>, u32>>;

/// Result of a reservation attempt: `Ok` when the units are now held for
/// the user, otherwise the rejection (`SoldOut` or `LimitReached`).
pub type Reserve = Result<(), Rejection>;

/// Stock and per-user holdings of one sale.
#[derive(Debug)]
pub struct Ledger {
    stock: u64,
    per_user_limit: u32,
    remaining: AtomicU64,
    hasher: RandomState,
    // Boxed strings keep each holder to ~40 bytes: the memory budget is
    // 200 MB for a million holders.
    shards: Box<[Holders]>,
}

impl Ledger {
    /// An empty ledger with all `stock` units available.
    pub fn new(stock: u64, per_user_limit: u32) -> Self {
        Self {
            stock,
            per_user_limit,
            remaining: AtomicU64::new(stock),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<Box<str>, u32>> {
        let idx = (self.hasher.hash_one(user) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere while holding it; the
        // map itself is always left consistent by the code below.
        self.shards[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Units on offer.
    pub fn stock(&self) -> u64 {
        self.stock
    }

    /// Units not held by anyone.
    pub fn remaining(&self) -> u64 {
        self.remaining.load(Ordering::Acquire)
    }

    /// Mirrors a remote stock counter (Redis holds the truth when the node
    /// runs distributed): the local sold-out flag then reads this copy, so a
    /// sold-out sale is refused without a network call.
    pub fn mirror_remaining(&self, remaining: u64) {
        self.remaining
            .store(remaining.min(self.stock), Ordering::Release);
    }

    /// Units held (pending or paid).
    pub fn sold(&self) -> u64 {
        self.stock - self.remaining()
    }

    /// Units `user` holds.
    pub fn held_by(&self, user: &str) -> u32 {
        self.shard(user).get(user).copied().unwrap_or(0)
    }

    /// Lock-free pre-check: true when `quantity` units cannot possibly be had.
    pub fn is_sold_out_for(&self, quantity: u32) -> bool {
        u64::from(quantity) > self.remaining()
    }

    /// Atomically checks the per-user limit and stock and takes the units.
    pub fn try_reserve(&self, user: &str, quantity: u32) -> Reserve {
        if quantity == 0 {
            return Ok(());
        }
        if self.is_sold_out_for(quantity) {
            return Err(Rejection::SoldOut);
        }
        let mut shard = self.shard(user);
        let held = shard.get(user).copied().unwrap_or(0);
        if u64::from(held) + u64::from(quantity) > u64::from(self.per_user_limit) {
            return Err(Rejection::LimitReached);
        }
        let q = u64::from(quantity);
        let taken = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(q));
        if taken.is_err() {
            return Err(Rejection::SoldOut);
        }
        match shard.get_mut(user) {
            Some(h) => *h += quantity,
            None => {
                shard.insert(user.into(), quantity);
            }
        }
        Ok(())
    }

    /// Returns `quantity` units held by `user` to the sale.
    ///
    /// Callers release exactly once per reservation (the order store's
    /// conditional state change guarantees it); releasing more than the user
    /// holds is clamped rather than allowed to corrupt the counters.
    pub fn release(&self, user: &str, quantity: u32) {
        let mut shard = self.shard(user);
        let Some(held) = shard.get_mut(user) else {
            return;
        };
        let back = quantity.min(*held);
        *held -= back;
        if *held == 0 {
            shard.remove(user);
        }
        self.remaining.fetch_add(u64::from(back), Ordering::AcqRel);
    }

    /// Replays a stored holding at start-up, bypassing the limit check (the
    /// store is the truth). Never takes more than what remains.
    pub fn restore(&self, user: &str, quantity: u32) {
        let mut shard = self.shard(user);
        let q = u64::from(quantity).min(self.remaining());
        self.remaining.fetch_sub(q, Ordering::AcqRel);
        *shard.entry(user.into()).or_insert(0) += q as u32;
    }

    /// Number of distinct users holding units.
    pub fn holders(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn sells_exactly_the_stock() {
        let l = Ledger::new(3, 1);
        let got: Vec<_> = (0..5).map(|u| l.try_reserve(&u.to_string(), 1)).collect();
        assert_eq!(got.iter().filter(|r| **r == Ok(())).count(), 3);
        assert_eq!(l.remaining(), 0);
        assert_eq!(l.try_reserve("0", 1), Err(Rejection::SoldOut));
    }

    #[test]
    fn limit_and_release() {
        let l = Ledger::new(10, 2);
        assert_eq!(l.try_reserve("a", 2), Ok(()));
        assert_eq!(l.try_reserve("a", 1), Err(Rejection::LimitReached));
        l.release("a", 1);
        assert_eq!(l.try_reserve("a", 1), Ok(()));
        assert_eq!(l.held_by("a"), 2);
        assert_eq!(l.sold(), 2);
    }

    #[test]
    fn threads_never_oversell() {
        let l = Arc::new(Ledger::new(1000, 3));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let mut granted = 0u64;
                    for i in 0..5000u32 {
                        let user = format!("u{}", (i * 7 + t) % 400);
                        if l.try_reserve(&user, 1 + i % 2) == Ok(()) {
                            granted += u64::from(1 + i % 2);
                        }
                        if i % 5 == 0 {
                            l.release(&user, 1);
                        }
                    }
                    granted
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let held: u64 = (0..400)
            .map(|u| u64::from(l.held_by(&format!("u{u}"))))
            .sum();
        assert_eq!(held, l.sold());
        assert!(l.sold() <= 1000);
        for u in 0..400 {
            assert!(l.held_by(&format!("u{u}")) <= 3);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Buy { user: u8, qty: u32 },
        Cancel { order: usize },
        Expire { order: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..12, 1u32..4).prop_map(|(user, qty)| Op::Buy { user, qty }),
            1 => any::<usize>().prop_map(|order| Op::Cancel { order }),
            1 => any::<usize>().prop_map(|order| Op::Expire { order }),
        ]
    }

    proptest! {
        /// Random interleavings of purchases, cancels and expiries never
        /// oversell nor exceed the per-user limit, and the ledger agrees with
        /// a model that replays the same accepted orders.
        #[test]
        fn never_oversells(stock in 1u64..40, limit in 1u32..5, ops in prop::collection::vec(op(), 1..300)) {
            let l = Ledger::new(stock, limit);
            // (user, qty, live) per accepted order: the model.
            let mut orders: Vec<(String, u32, bool)> = Vec::new();
            for op in ops {
                match op {
                    Op::Buy { user, qty } => {
                        let user = format!("u{user}");
                        let held: u32 = orders.iter().filter(|o| o.2 && o.0 == user).map(|o| o.1).sum();
                        let sold: u64 = orders.iter().filter(|o| o.2).map(|o| u64::from(o.1)).sum();
                        let expected = if u64::from(qty) > stock - sold {
                            Err(Rejection::SoldOut)
                        } else if held + qty > limit {
                            Err(Rejection::LimitReached)
                        } else {
                            Ok(())
                        };
                        let got = l.try_reserve(&user, qty);
                        prop_assert_eq!(got, expected);
                        if got == Ok(()) {
                            orders.push((user, qty, true));
                        }
                    }
                    Op::Cancel { order } | Op::Expire { order } => {
                        if orders.is_empty() { continue; }
                        let i = order % orders.len();
                        // Exactly once: only a live order returns its stock.
                        if orders[i].2 {
                            orders[i].2 = false;
                            l.release(&orders[i].0, orders[i].1);
                        }
                    }
                }
                let sold: u64 = orders.iter().filter(|o| o.2).map(|o| u64::from(o.1)).sum();
                prop_assert_eq!(l.sold(), sold);
                prop_assert!(l.sold() <= stock);
                for u in 0..12 {
                    let held = l.held_by(&format!("u{u}"));
                    prop_assert!(held <= limit);
                }
            }
        }
    }
}
