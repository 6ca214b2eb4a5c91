//! Symmetry reduction: buyers are interchangeable (same attempts, same
//! limit), so two states that differ only by a renaming of buyers behave
//! alike. [`State`]'s representative renames buyers into a canonical order,
//! and the depth-first checker stores one state per class — about
//! `buyers!` times fewer states for the same coverage.
//!
//! Every property is symmetric too (counts over all orders and per-user
//! bounds over all buyers), so a violation in one state of a class is a
//! violation in all of them.

use std::cmp::Reverse;

use stateright::Representative;

use crate::model::{Orders, Phase, Relay, State, MAX_BUYERS, MAX_ORDERS, MAX_RELAYS};

/// Orders of one buyer (one per attempt slot).
const ATTEMPTS: usize = MAX_ORDERS / MAX_BUYERS;
/// Bytes of a buyer's key: 8 per attempt, 3 for the holdings.
const KEY: usize = ATTEMPTS * 8 + 3;

fn phase_code(p: Phase) -> u8 {
    match p {
        Phase::Unborn => 0,
        Phase::InFlight => 1,
        Phase::Failed => 2,
        Phase::Accepted { cleaned: false } => 3,
        Phase::Accepted { cleaned: true } => 4,
    }
}

fn slot(buyer: usize, attempt: usize) -> usize {
    attempt * MAX_BUYERS + buyer
}

impl State {
    /// Everything the state holds about `buyer`, as bytes; all zeros for a
    /// buyer who did nothing yet.
    fn buyer_key(&self, buyer: usize) -> [u8; KEY] {
        let mut key = [0u8; KEY];
        let bit = |set: Orders, i: usize| u8::from(set.0 & (1 << i) != 0);
        for a in 0..ATTEMPTS {
            let i = slot(buyer, a);
            let relays = self
                .relays
                .iter()
                .enumerate()
                .map(|(r, relay)| match relay {
                    Relay::Holding(o) if o.index() == i => 1 << r,
                    _ => 0,
                })
                .sum();
            key[a * 8..a * 8 + 8].copy_from_slice(&[
                phase_code(self.phase[i]),
                self.db[i],
                bit(self.ready, i) | (bit(self.unacked, i) << 1) | (bit(self.inserted, i) << 2),
                bit(self.master.outbox, i),
                self.replica.map_or(0, |r| bit(r.outbox, i)),
                relays,
                0,
                0,
            ]);
        }
        key[ATTEMPTS * 8] = self.master.meta.map_or(0, |m| m.held[buyer]);
        key[ATTEMPTS * 8 + 1] = self
            .replica
            .and_then(|r| r.meta)
            .map_or(0, |m| m.held[buyer]);
        key[ATTEMPTS * 8 + 2] = self.watcher.map_or(0, |w| w.held[buyer]);
        key
    }

    /// The state with buyer `from[b]` renamed `b`.
    fn rename_buyers(&self, from: [usize; MAX_BUYERS]) -> Self {
        let mut to = [0; MAX_BUYERS];
        for (b, f) in from.iter().enumerate() {
            to[*f] = b;
        }
        let slot_of = |i: usize| slot(to[i % MAX_BUYERS], i / MAX_BUYERS);
        let set = |s: Orders| {
            Orders((0..MAX_ORDERS).fold(0, |acc, i| acc | (((s.0 >> i) & 1) << slot_of(i))))
        };
        let held = |h: [u8; MAX_BUYERS]| std::array::from_fn(|b| h[from[b]]);
        let mut n = self.clone();
        for i in 0..MAX_ORDERS {
            n.phase[slot_of(i)] = self.phase[i];
            n.db[slot_of(i)] = self.db[i];
        }
        n.ready = set(self.ready);
        n.unacked = set(self.unacked);
        n.inserted = set(self.inserted);
        n.master.outbox = set(self.master.outbox);
        if let Some(m) = n.master.meta.as_mut() {
            m.held = held(m.held);
        }
        if let Some(r) = n.replica.as_mut() {
            r.outbox = set(r.outbox);
            if let Some(m) = r.meta.as_mut() {
                m.held = held(m.held);
            }
        }
        if let Some(w) = n.watcher.as_mut() {
            w.held = held(w.held);
        }
        for r in 0..MAX_RELAYS {
            if let Relay::Holding(o) = self.relays[r] {
                n.relays[r] = Relay::Holding(crate::model::Order(slot_of(o.index()) as u8));
            }
        }
        n
    }
}

impl Representative for State {
    /// Buyers sorted by what they hold, busiest first, so untouched buyers
    /// (all-zero keys) stay last and the model's buyers `0..buyers` still
    /// cover every buyer who did anything.
    fn representative(&self) -> Self {
        let keys: [[u8; KEY]; MAX_BUYERS] = std::array::from_fn(|b| self.buyer_key(b));
        if keys.windows(2).all(|w| w[0] >= w[1]) {
            return self.clone(); // already canonical (the common case)
        }
        let mut from: [usize; MAX_BUYERS] = std::array::from_fn(|b| b);
        from.sort_by_key(|b| Reverse(keys[*b]));
        self.rename_buyers(from)
    }
}

#[cfg(test)]
mod tests {
    use stateright::Model;

    use super::*;
    use crate::model::{Action, HandoffModel, Order};

    fn after(m: &HandoffModel, actions: &[Action]) -> State {
        actions.iter().fold(m.init_states().remove(0), |s, a| {
            m.next_state(&s, *a).expect("enabled")
        })
    }

    #[test]
    fn renamed_buyers_share_a_representative() {
        let m = HandoffModel::fenced();
        let a = after(
            &m,
            &[
                Action::Decide(Order::new(0, 0)),
                Action::Confirm(Order::new(0, 0)),
                Action::Decide(Order::new(2, 0)),
            ],
        );
        let b = after(
            &m,
            &[
                Action::Decide(Order::new(1, 0)),
                Action::Confirm(Order::new(1, 0)),
                Action::Decide(Order::new(0, 0)),
            ],
        );
        assert_ne!(a, b);
        assert_eq!(a.representative(), b.representative());
        // The busiest buyer comes first; the untouched one stays last.
        let r = a.representative();
        assert!(r.phase[slot(0, 0)].accepted());
        assert_eq!(r.phase[slot(1, 0)], Phase::InFlight);
        assert_eq!(r.phase[slot(2, 0)], Phase::Unborn);
    }

    #[test]
    fn renaming_keeps_every_component_consistent() {
        let m = HandoffModel {
            limit: 2,
            ..HandoffModel::fenced()
        };
        let s = after(
            &m,
            &[
                Action::Decide(Order::new(2, 0)),
                Action::HandoffFails(Order::new(2, 0)),
                Action::Decide(Order::new(2, 1)),
                Action::Confirm(Order::new(2, 1)),
                Action::Deliver(Order::new(2, 1)),
                Action::RelayRead(0, Order::new(2, 0)),
            ],
        );
        let r = s.representative();
        // Buyer C became buyer A, with all of its orders.
        assert_eq!(r.phase[slot(0, 0)], Phase::Failed);
        assert!(r.phase[slot(0, 1)].accepted());
        assert!(r.unacked.contains(Order::new(0, 1)));
        assert_eq!(r.relays[0], Relay::Holding(Order::new(0, 0)));
        assert!(r.master.outbox.contains(Order::new(0, 0)));
        assert_eq!(r.master.meta.map(|m| m.held), Some([2, 0, 0, 0]));
        assert_eq!(r.representative(), r);
    }
}
