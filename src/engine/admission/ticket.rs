//! The purchase ticket: the hidden purchase path of classic seckill
//! designs. A buyer asks `GET /api/v1/sales/{id}/ticket` (only from the
//! sale's `starts_at`) and sends the ticket back in `X-Flashsale-Ticket`,
//! so a script that fires purchases blind before the start, or replays
//! one buyer's request for another, is refused with `ticket_required`.

use std::sync::Arc;

use super::{Attempt, Check, Pass, Refusal};
use crate::auth::Secret;
use crate::domain::Rejection;
use crate::signed::{Kind, Signer};

/// How long a purchase ticket stays valid, ms (a buyer fetches one and
/// buys at once; the ticket is bound to buyer and sale, so a short life
/// only limits how long a leaked one is worth anything).
pub const TICKET_TTL_MS: i64 = 30_000;

/// Issues and checks purchase tickets ([`Kind::Ticket`] passes).
#[derive(Debug, Clone)]
pub struct Tickets {
    signer: Signer,
}

impl Tickets {
    /// Tickets signed with `secret` (every node of a deployment shares it,
    /// so a ticket from one node works on the next).
    pub fn new(secret: &Secret) -> Self {
        Self {
            signer: Signer::new(secret, "ticket"),
        }
    }

    /// A fresh ticket for `user` on `sale_id` and when it expires (epoch ms).
    pub fn issue(&self, sale_id: u64, user: &str, now_ms: i64) -> (String, i64) {
        let expires_ms = now_ms + TICKET_TTL_MS;
        let ticket = self
            .signer
            .sign(Kind::Ticket, sale_id, user, expires_ms, rand::random());
        (ticket, expires_ms)
    }

    /// True when `ticket` is one of ours for `user` on `sale_id`, unexpired.
    pub fn verify(&self, ticket: &str, sale_id: u64, user: &str, now_ms: i64) -> bool {
        self.signer
            .verify(Kind::Ticket, ticket, sale_id, user, now_ms, TICKET_TTL_MS)
            .is_some()
    }
}

/// Refuses a purchase of a `ticket: true` sale without a valid ticket.
pub struct TicketCheck {
    tickets: Arc<Tickets>,
}

impl TicketCheck {
    /// The check over the node's tickets.
    pub fn new(tickets: Arc<Tickets>) -> Self {
        Self { tickets }
    }
}

impl Check for TicketCheck {
    fn name(&self) -> &'static str {
        "ticket"
    }

    fn check(&self, a: &Attempt<'_>) -> Result<Pass, Refusal> {
        if !a.sale.sale.front_door.ticket {
            return Ok(Pass::Through);
        }
        let ticket = a.proof.ticket.as_deref().ok_or(Rejection::TicketRequired)?;
        if self
            .tickets
            .verify(ticket, a.sale.sale.id, a.user, a.now_ms)
        {
            Ok(Pass::Through)
        } else {
            Err(Rejection::TicketRequired.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_works_for_its_buyer_and_sale_until_it_expires() {
        let t = Tickets::new(&Secret::new("k"));
        let (ticket, expires) = t.issue(3, "alice", 1_000);
        assert_eq!(expires, 1_000 + TICKET_TTL_MS);
        assert!(t.verify(&ticket, 3, "alice", 1_001));
        assert!(!t.verify(&ticket, 3, "bob", 1_001));
        assert!(!t.verify(&ticket, 4, "alice", 1_001));
        assert!(!t.verify(&ticket, 3, "alice", expires));
        // Another node with the same secret accepts it; another secret does not.
        assert!(Tickets::new(&Secret::new("k")).verify(&ticket, 3, "alice", 1_001));
        assert!(!Tickets::new(&Secret::new("j")).verify(&ticket, 3, "alice", 1_001));
    }

    proptest::proptest! {
        #[test]
        fn random_tickets_never_panic_and_never_pass(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let t = Tickets::new(&Secret::new("k"));
            let text = String::from_utf8_lossy(&bytes);
            proptest::prop_assert!(!t.verify(&text, 1, "u", 0));
        }

        #[test]
        fn mangled_tickets_never_pass(cut in 0usize..100, byte in proptest::num::u8::ANY) {
            let t = Tickets::new(&Secret::new("k"));
            let (ticket, _) = t.issue(1, "u", 0);
            let mut bytes = ticket.clone().into_bytes();
            let i = cut % bytes.len();
            proptest::prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            let text = String::from_utf8_lossy(&bytes);
            proptest::prop_assert!(!t.verify(&text, 1, "u", 1));
        }
    }
}
