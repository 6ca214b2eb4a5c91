//! The waiting-room seam: who waits for a sale, in what order, and who was
//! let in.
//!
//! A room holds, per sale, the buyers waiting in a line numbered by
//! sequence (their place), the highest place admitted so far, and the
//! admitted buyers whose pass is still outstanding. Buyers who join before
//! the start are *drawn*: each gets a secret random key, and at the start
//! (the first join or admission at or after `starts_at`) the drawn buyers
//! are numbered in key order — a fair shuffle, so arriving early with a
//! script buys no better place than arriving early by hand. Buyers joining
//! after the start are numbered in arrival order.
//!
//! The admission rate is kept by the store, not by a node: each
//! [`RoomStore::admit`] call admits what the rate allows since the last
//! call (whoever made it), so N nodes ticking do not admit N times the rate.
//! Implementations: in memory ([`MemoryRoom`], the embedded default) and
//! Redis (`super::redis_room`, the distributed mode: one script call per
//! operation, every key under the sale's hash tag).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::front_door::WaitingRoom;
use crate::domain::Sale;

/// Failure to reach the room's store.
#[derive(Debug, Clone, thiserror::Error)]
#[error("waiting room: {0}")]
pub struct RoomError(pub String);

/// Where one buyer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Not in the room.
    Absent,
    /// Joined before the start; the place is drawn at the start.
    Drawing,
    /// Waiting at place `seq` (compare with [`Head::through`]).
    Waiting {
        /// The buyer's place in line.
        seq: u64,
    },
    /// Let in: the pass (signed from these two values) is valid until
    /// `expires_ms`.
    Admitted {
        /// When the pass expires, epoch ms.
        expires_ms: i64,
        /// The pass's nonce.
        nonce: u64,
    },
}

/// The room as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    /// The highest place admitted so far (0 = none yet).
    pub through: u64,
    /// Buyers waiting (drawn or placed).
    pub waiting: u64,
    /// Admitted buyers whose pass is unused and unexpired.
    pub outstanding: u64,
    /// True once the drawn buyers were numbered (the sale has started).
    pub sealed: bool,
}

/// Where waiting rooms live.
#[async_trait]
pub trait RoomStore: Send + Sync {
    /// Puts `user` in `sale`'s room (idempotent: a buyer already in the
    /// room keeps their place) and marks them seen at `now_ms`.
    async fn join(
        &self,
        sale: &Sale,
        user: &str,
        now_ms: i64,
        key: u64,
    ) -> Result<Place, RoomError>;

    /// Where `user` stands.
    async fn place(&self, sale_id: u64, user: &str) -> Result<Place, RoomError>;

    /// Admits the next buyers in line: as many as `room`'s rate allows
    /// since the last admission, keeping at most `cap` passes outstanding
    /// (the units left: the room never lets in more buyers than could
    /// buy). Numbers the drawn buyers first when the sale has started.
    /// `nonce` seeds the new passes' nonces.
    async fn admit(
        &self,
        sale: &Sale,
        room: &WaitingRoom,
        now_ms: i64,
        cap: u64,
        nonce: u64,
    ) -> Result<Head, RoomError>;

    /// The buyer's pass was used (the purchase was answered): the slot it
    /// held goes to the next buyer.
    async fn used(&self, sale_id: u64, user: &str) -> Result<(), RoomError>;

    /// Marks these waiting buyers seen at `now_ms` (their stream is open).
    async fn seen(&self, sale_id: u64, users: &[String], now_ms: i64) -> Result<(), RoomError>;

    /// Drops waiting buyers not seen since `before_ms` (abandoned places);
    /// returns how many.
    async fn reclaim(&self, sale_id: u64, before_ms: i64) -> Result<u64, RoomError>;
}

/// The rate budget: admissions allowed since `last_ms` at `rate` per
/// second. Returns the count and the new `last_ms` (advanced by exactly the
/// time those admissions used, so no fraction is lost; idle time beyond one
/// second is not banked as a burst).
pub fn budget(last_ms: i64, now_ms: i64, rate: u32) -> (u64, i64) {
    let rate = i64::from(rate.max(1));
    let last = last_ms.max(now_ms - 1000);
    if now_ms <= last {
        return (0, last);
    }
    let n = (now_ms - last) * rate / 1000;
    (n as u64, last + n * 1000 / rate)
}

/// Waiting rooms in this process (the embedded default).
#[derive(Default)]
pub struct MemoryRoom {
    rooms: Mutex<HashMap<u64, Room>>,
}

#[derive(Default)]
struct Room {
    sealed: bool,
    /// Drawn buyers: user → secret key.
    drawing: HashMap<String, u64>,
    /// Placed buyers: seq → user, and back.
    line: BTreeMap<u64, String>,
    seq_of: HashMap<String, u64>,
    next_seq: u64,
    through: u64,
    /// Outstanding passes: user → (expires, nonce).
    admitted: HashMap<String, (i64, u64)>,
    seen: HashMap<String, i64>,
    last_ms: i64,
}

impl Room {
    fn seal_if_started(&mut self, sale: &Sale, now_ms: i64) {
        if self.sealed || now_ms < sale.starts_at_ms {
            return;
        }
        let mut drawn: Vec<(u64, String)> = self
            .drawing
            .drain()
            .map(|(user, key)| (key, user))
            .collect();
        drawn.sort_unstable();
        for (_, user) in drawn {
            self.place_next(user);
        }
        self.sealed = true;
        self.last_ms = now_ms;
    }

    fn place_next(&mut self, user: String) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.seq_of.insert(user.clone(), seq);
        self.line.insert(seq, user);
        seq
    }

    fn place(&self, user: &str) -> Place {
        if let Some(&(expires_ms, nonce)) = self.admitted.get(user) {
            Place::Admitted { expires_ms, nonce }
        } else if let Some(&seq) = self.seq_of.get(user) {
            Place::Waiting { seq }
        } else if self.drawing.contains_key(user) {
            Place::Drawing
        } else {
            Place::Absent
        }
    }

    fn head(&self) -> Head {
        Head {
            through: self.through,
            waiting: (self.line.len() + self.drawing.len()) as u64,
            outstanding: self.admitted.len() as u64,
            sealed: self.sealed,
        }
    }
}

#[async_trait]
impl RoomStore for MemoryRoom {
    async fn join(
        &self,
        sale: &Sale,
        user: &str,
        now_ms: i64,
        key: u64,
    ) -> Result<Place, RoomError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = rooms.entry(sale.id).or_default();
        room.seal_if_started(sale, now_ms);
        let place = room.place(user);
        if place == Place::Absent {
            room.seen.insert(user.to_owned(), now_ms);
            if room.sealed {
                let seq = room.place_next(user.to_owned());
                return Ok(Place::Waiting { seq });
            }
            room.drawing.insert(user.to_owned(), key);
            return Ok(Place::Drawing);
        }
        room.seen.insert(user.to_owned(), now_ms);
        Ok(place)
    }

    async fn place(&self, sale_id: u64, user: &str) -> Result<Place, RoomError> {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rooms.get(&sale_id).map_or(Place::Absent, |r| r.place(user)))
    }

    async fn admit(
        &self,
        sale: &Sale,
        room_settings: &WaitingRoom,
        now_ms: i64,
        cap: u64,
        nonce: u64,
    ) -> Result<Head, RoomError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = rooms.entry(sale.id).or_default();
        room.seal_if_started(sale, now_ms);
        if !room.sealed {
            return Ok(room.head());
        }
        room.admitted.retain(|_, (expires, _)| *expires > now_ms);
        let (allowed, last) = budget(room.last_ms, now_ms, room_settings.admit_per_sec);
        let room_for = cap.saturating_sub(room.admitted.len() as u64);
        let n = allowed.min(room_for).min(room.line.len() as u64);
        // Time blocked by the stock cap or an empty line is not banked.
        room.last_ms = if n == allowed { last } else { now_ms };
        let expires = now_ms + i64::from(room_settings.pass_ttl_secs) * 1000;
        for i in 0..n {
            let Some((seq, user)) = room.line.pop_first() else {
                break;
            };
            room.seq_of.remove(&user);
            room.seen.remove(&user);
            room.through = seq;
            room.admitted.insert(user, (expires, nonce.wrapping_add(i)));
        }
        Ok(room.head())
    }

    async fn used(&self, sale_id: u64, user: &str) -> Result<(), RoomError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(room) = rooms.get_mut(&sale_id) {
            room.admitted.remove(user);
        }
        Ok(())
    }

    async fn seen(&self, sale_id: u64, users: &[String], now_ms: i64) -> Result<(), RoomError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(room) = rooms.get_mut(&sale_id) {
            for user in users {
                if let Some(at) = room.seen.get_mut(user) {
                    *at = now_ms;
                }
            }
        }
        Ok(())
    }

    async fn reclaim(&self, sale_id: u64, before_ms: i64) -> Result<u64, RoomError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let Some(room) = rooms.get_mut(&sale_id) else {
            return Ok(0);
        };
        let idle: Vec<String> = room
            .seen
            .iter()
            .filter(|(_, &at)| at < before_ms)
            .map(|(u, _)| u.clone())
            .collect();
        for user in &idle {
            room.seen.remove(user);
            room.drawing.remove(user);
            if let Some(seq) = room.seq_of.remove(user) {
                room.line.remove(&seq);
            }
        }
        Ok(idle.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_the_rate_and_banks_at_most_a_second() {
        // 10/s: 250 ms allow 2, and 50 ms are carried.
        assert_eq!(budget(1_000, 1_250, 10), (2, 1_200));
        assert_eq!(budget(1_200, 1_299, 10), (0, 1_200));
        assert_eq!(budget(1_200, 1_300, 10), (1, 1_300));
        // A minute idle is one second of burst, not sixty.
        assert_eq!(budget(0, 60_000, 10), (10, 60_000));
    }
}
