//! The waiting room's admission pass.

use std::sync::Arc;

use super::{Attempt, Check, Pass, Refusal};
use crate::domain::Rejection;
use crate::engine::room::Rooms;

/// Refuses a purchase without a valid admission pass while the sale's
/// waiting room is on; a valid pass holds the buyer's slot until the
/// purchase is answered, then frees it for the next buyer in line.
pub struct RoomPass {
    rooms: Arc<Rooms>,
}

impl RoomPass {
    /// The check over the node's rooms.
    pub fn new(rooms: Arc<Rooms>) -> Self {
        Self { rooms }
    }
}

impl Check for RoomPass {
    fn name(&self) -> &'static str {
        "room_pass"
    }

    fn check(&self, a: &Attempt<'_>) -> Result<Pass, Refusal> {
        let Some(room) = a.sale.sale.front_door.waiting_room else {
            return Ok(Pass::Through);
        };
        let pass = a.proof.pass.as_deref().ok_or(Rejection::PassRequired)?;
        self.rooms
            .check_pass(a.sale.sale.id, a.user, pass, a.now_ms, room.pass_ttl_secs)
            .map(Pass::Hold)
            .ok_or_else(|| Rejection::PassRequired.into())
    }
}
