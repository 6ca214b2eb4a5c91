//! One purchase in flight per buyer per sale (`one_in_flight: true`): a
//! double click, or a script firing the same buyer's purchase many times
//! at once, is answered once; the others get `409 in_flight` at once
//! instead of queueing for the stock decision.
//!
//! Per node: in the distributed mode a buyer hitting two nodes at once may
//! have one purchase in flight on each, still bounded by the atomic
//! per-user limit of the shared stock.

use std::sync::Arc;

use dashmap::DashSet;

use super::{Attempt, Check, Pass, Refusal};
use crate::domain::Rejection;

type Key = (u64, Box<str>);

/// Keeps the (sale, buyer) pairs with a purchase in flight on this node.
#[derive(Default)]
pub struct InFlightCheck {
    busy: Arc<DashSet<Key>>,
}

impl InFlightCheck {
    /// Purchases in flight right now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.busy.len()
    }

    /// True when none is in flight.
    pub fn is_empty(&self) -> bool {
        self.busy.is_empty()
    }
}

/// The hold of one purchase in flight: dropping it (once the purchase is
/// answered, or refused by a later check) lets the buyer's next one in.
struct Busy {
    busy: Arc<DashSet<Key>>,
    key: Key,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.busy.remove(&self.key);
    }
}

impl Check for InFlightCheck {
    fn name(&self) -> &'static str {
        "in_flight"
    }

    fn check(&self, a: &Attempt<'_>) -> Result<Pass, Refusal> {
        if !a.sale.sale.front_door.one_in_flight {
            return Ok(Pass::Through);
        }
        let key: Key = (a.sale.sale.id, a.user.into());
        if !self.busy.insert(key.clone()) {
            return Err(Rejection::InFlight.into());
        }
        Ok(Pass::Hold(Box::new(Busy {
            busy: self.busy.clone(),
            key,
        })))
    }
}
