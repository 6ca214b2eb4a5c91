//! The waiting room, as a node runs it: joins, each buyer's standing, the
//! admission ticker, admission passes, and one live view per room that
//! every waiting buyer's stream watches.
//!
//! The order and the admission budget live in a [`RoomStore`] (memory, or
//! Redis shared by every node); this module adds what is per node: a
//! [`watch`] channel per room, so fifty thousand open streams cost one
//! wake-up each when the view changes (and nothing in between), and the
//! list of buyers whose stream is open here (marked seen, so their place is
//! kept; a place nobody watches or polls for [`ABANDONED_AFTER_MS`] is
//! reclaimed).
//!
//! Stock-aware: the room never keeps more passes outstanding than units
//! are left, so when the sale sells out every waiting buyer is told at
//! once (the view turns [`RoomState::SoldOut`]) and nobody more is let in;
//! a unit that comes back (an expired or cancelled order) lets the next
//! buyer in.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

use super::SaleRuntime;
use crate::backend::room::{Head, Place, RoomError, RoomStore};
use crate::domain::front_door::WaitingRoom;
use crate::domain::sale::Window;
use crate::signed::{Kind, Signer};

/// A waiting place nobody watched or polled for this long is reclaimed.
pub const ABANDONED_AFTER_MS: i64 = 30_000;
/// How often open streams are marked seen and idle places reclaimed.
const SWEEP_EVERY_MS: i64 = 5_000;
/// Least time between two views of a room that differ only in numbers
/// (a change of state is published at once).
const VIEW_EVERY_MS: i64 = 1_000;

/// What a room is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomState {
    /// Before the start: buyers join and are drawn at the start.
    #[default]
    BeforeStart,
    /// Letting buyers in at its rate.
    Admitting,
    /// No units left: nobody is let in, new buyers are turned away.
    SoldOut,
    /// The sale's window closed.
    Ended,
}

/// One room as every stream on this node sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    /// The store's head.
    pub head: Head,
    /// What the room is doing.
    pub state: RoomState,
    /// Buyers let in per second.
    pub rate: u32,
}

/// What one buyer is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Joined before the start: places are drawn at the start.
    Drawing {
        /// Buyers in the room.
        waiting: u64,
    },
    /// In line.
    Waiting {
        /// The buyer's number in line (fixed once placed; lower numbers
        /// are let in first).
        place: u64,
        /// 1 = next to be let in.
        position: u64,
        /// Buyers in the room.
        waiting: u64,
        /// Estimated wait, ms (at the room's rate; longer while the units
        /// left hold the room back).
        estimated_wait_ms: u64,
    },
    /// Let in: buy with this pass (header `X-Flashsale-Pass`) before it
    /// expires.
    Admitted {
        /// The admission pass.
        pass: String,
        /// When it expires, epoch ms.
        expires_at: i64,
    },
    /// Sold out: nobody is let in (a returned unit lets the next buyer in).
    SoldOut,
    /// The sale has ended.
    Ended,
    /// Not in the room (never joined, reclaimed, or the pass was used).
    Absent,
}

/// Why a buyer could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The sale has no waiting room.
    #[error("this sale has no waiting room")]
    NoRoom,
    /// Sold out or ended: the room is closed to newcomers.
    #[error("the room is closed")]
    Closed(Standing),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] RoomError),
}

struct LiveRoom {
    view: watch::Sender<View>,
    /// Buyers with a stream open on this node (count of streams).
    streams: DashMap<String, u32>,
    published_ms: AtomicI64,
}

/// The node's waiting rooms.
pub struct Rooms {
    store: Arc<dyn RoomStore>,
    signer: Signer,
    live: DashMap<u64, Arc<LiveRoom>>,
    swept_ms: AtomicI64,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("live", &self.live.len())
            .finish_non_exhaustive()
    }
}

/// Releases an admitted buyer's slot when dropped (the purchase was
/// answered), so the next buyer is let in.
struct SlotRelease {
    store: Arc<dyn RoomStore>,
    sale_id: u64,
    user: String,
}

impl Drop for SlotRelease {
    fn drop(&mut self) {
        let store = self.store.clone();
        let (sale_id, user) = (self.sale_id, std::mem::take(&mut self.user));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.used(sale_id, &user).await {
                    tracing::debug!(error = %e, "releasing a waiting-room slot");
                }
            });
        }
    }
}

impl Rooms {
    /// Rooms kept in `store`, passes signed with `signer`.
    pub fn new(store: Arc<dyn RoomStore>, signer: Signer) -> Self {
        Self {
            store,
            signer,
            live: DashMap::new(),
            swept_ms: AtomicI64::new(0),
        }
    }

    fn live(&self, sale_id: u64) -> Arc<LiveRoom> {
        self.live
            .entry(sale_id)
            .or_insert_with(|| {
                Arc::new(LiveRoom {
                    view: watch::Sender::new(View::default()),
                    streams: DashMap::new(),
                    published_ms: AtomicI64::new(0),
                })
            })
            .clone()
    }

    /// The room's live view, for a stream to watch.
    pub fn watch(&self, sale_id: u64) -> watch::Receiver<View> {
        self.live(sale_id).view.subscribe()
    }

    /// The room's view now.
    pub fn view(&self, sale_id: u64) -> View {
        *self.live(sale_id).view.borrow()
    }

    /// Marks a stream of `user` open on this node (their place is kept
    /// while it is); the guard marks it closed.
    pub fn stream_opened(self: &Arc<Self>, sale_id: u64, user: &str) -> StreamGuard {
        *self
            .live(sale_id)
            .streams
            .entry(user.to_owned())
            .or_insert(0) += 1;
        StreamGuard {
            rooms: self.clone(),
            sale_id,
            user: user.to_owned(),
        }
    }

    /// Puts `user` in the sale's room (keeping an existing place) and
    /// says where they stand.
    ///
    /// # Errors
    /// [`JoinError`] when the sale has no room, the room is closed, or the
    /// store failed.
    pub async fn join(
        &self,
        rt: &SaleRuntime,
        user: &str,
        now_ms: i64,
    ) -> Result<Standing, JoinError> {
        let room = rt.sale.front_door.waiting_room.ok_or(JoinError::NoRoom)?;
        let view = self.view(rt.sale.id);
        let closed = match rt.window(now_ms) {
            Window::Ended => Some(Standing::Ended),
            _ if rt.ledger.remaining() == 0 => Some(Standing::SoldOut),
            _ => None,
        };
        if let Some(closed) = closed {
            // A buyer already let in keeps their pass.
            let place = self.store.place(rt.sale.id, user).await?;
            return match self.standing_of(rt, user, &room, place, &view) {
                s @ Standing::Admitted { .. } => Ok(s),
                _ => Err(JoinError::Closed(closed)),
            };
        }
        let place = self
            .store
            .join(&rt.current(), user, now_ms, rand::random())
            .await?;
        Ok(self.standing_of(rt, user, &room, place, &view))
    }

    /// Where `user` stands now (polling marks them seen: their place is
    /// kept).
    ///
    /// # Errors
    /// [`JoinError::NoRoom`] or a store failure.
    pub async fn standing(
        &self,
        rt: &SaleRuntime,
        user: &str,
        now_ms: i64,
    ) -> Result<Standing, JoinError> {
        let room = rt.sale.front_door.waiting_room.ok_or(JoinError::NoRoom)?;
        let place = self.store.place(rt.sale.id, user).await?;
        if matches!(place, Place::Waiting { .. } | Place::Drawing) {
            self.store
                .seen(rt.sale.id, &[user.to_owned()], now_ms)
                .await?;
        }
        Ok(self.standing_of(rt, user, &room, place, &self.view(rt.sale.id)))
    }

    /// The standing a place means under `view`, without asking the store
    /// (a stream calls this at every view and asks the store only once
    /// its estimated position reaches the front).
    pub fn standing_of(
        &self,
        rt: &SaleRuntime,
        user: &str,
        room: &WaitingRoom,
        place: Place,
        view: &View,
    ) -> Standing {
        match place {
            Place::Admitted { expires_ms, nonce } => Standing::Admitted {
                pass: self.pass_for(rt.sale.id, user, expires_ms, nonce),
                expires_at: expires_ms,
            },
            _ if view.state == RoomState::Ended => Standing::Ended,
            _ if view.state == RoomState::SoldOut => Standing::SoldOut,
            Place::Absent => Standing::Absent,
            Place::Drawing => Standing::Drawing {
                waiting: view.head.waiting,
            },
            Place::Waiting { seq } => {
                let position = seq.saturating_sub(view.head.through).max(1);
                Standing::Waiting {
                    place: seq,
                    position,
                    waiting: view.head.waiting,
                    estimated_wait_ms: position * 1000 / u64::from(room.admit_per_sec.max(1)),
                }
            }
        }
    }

    /// The pass `user` holds, signed for them (the store keeps its expiry
    /// and nonce; any node signs the same pass).
    pub fn pass_for(&self, sale_id: u64, user: &str, expires_ms: i64, nonce: u64) -> String {
        self.signer
            .sign(Kind::Admission, sale_id, user, expires_ms, nonce)
    }

    /// Where `user` stands in the store.
    ///
    /// # Errors
    /// A store failure.
    pub async fn place(&self, sale_id: u64, user: &str) -> Result<Place, RoomError> {
        self.store.place(sale_id, user).await
    }

    /// Checks an admission pass; on success the returned hold releases the
    /// buyer's slot once the purchase is answered.
    pub fn check_pass(
        &self,
        sale_id: u64,
        user: &str,
        pass: &str,
        now_ms: i64,
        ttl_secs: u32,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        self.signer.verify(
            Kind::Admission,
            pass,
            sale_id,
            user,
            now_ms,
            i64::from(ttl_secs) * 1000,
        )?;
        Some(Box::new(SlotRelease {
            store: self.store.clone(),
            sale_id,
            user: user.to_owned(),
        }))
    }

    /// One tick of every room in `sales`: admits what each room's rate and
    /// the units left allow, publishes the views, and every few seconds
    /// marks open streams seen and reclaims abandoned places.
    pub async fn tick(&self, sales: &[Arc<SaleRuntime>], now_ms: i64) {
        let sweep = now_ms - self.swept_ms.load(Ordering::Relaxed) >= SWEEP_EVERY_MS;
        if sweep {
            self.swept_ms.store(now_ms, Ordering::Relaxed);
        }
        for rt in sales {
            let Some(room) = rt.sale.front_door.waiting_room else {
                continue;
            };
            if let Err(e) = self.tick_one(rt, &room, now_ms, sweep).await {
                metrics::counter!("flashsale_room_errors_total").increment(1);
                tracing::debug!(sale_id = rt.sale.id, error = %e, "waiting-room tick");
            }
        }
    }

    async fn tick_one(
        &self,
        rt: &SaleRuntime,
        room: &WaitingRoom,
        now_ms: i64,
        sweep: bool,
    ) -> Result<(), RoomError> {
        let live = self.live(rt.sale.id);
        let remaining = rt.ledger.remaining();
        let state = match rt.window(now_ms) {
            Window::Upcoming => RoomState::BeforeStart,
            Window::Ended => RoomState::Ended,
            Window::Open if remaining == 0 => RoomState::SoldOut,
            Window::Open => RoomState::Admitting,
        };
        let previous = *live.view.borrow();
        if state == RoomState::Ended && previous.state == RoomState::Ended {
            return Ok(());
        }
        let cap = if state == RoomState::Admitting {
            remaining
        } else {
            0
        };
        let head = self
            .store
            .admit(&rt.current(), room, now_ms, cap, rand::random())
            .await?;
        if sweep {
            let users: Vec<String> = live.streams.iter().map(|e| e.key().clone()).collect();
            self.store.seen(rt.sale.id, &users, now_ms).await?;
            let reclaimed = self
                .store
                .reclaim(rt.sale.id, now_ms - ABANDONED_AFTER_MS)
                .await?;
            if reclaimed > 0 {
                metrics::counter!("flashsale_room_reclaimed_total").increment(reclaimed);
            }
        }
        let view = View {
            head,
            state,
            rate: room.admit_per_sec,
        };
        metrics::gauge!("flashsale_room_waiting", "sale" => rt.sale.id.to_string())
            .set(head.waiting as f64);
        let due = now_ms - live.published_ms.load(Ordering::Relaxed) >= VIEW_EVERY_MS;
        if view != previous && (view.state != previous.state || due) {
            live.published_ms.store(now_ms, Ordering::Relaxed);
            live.view.send_replace(view);
        }
        Ok(())
    }
}

/// Marks a stream closed when dropped.
pub struct StreamGuard {
    rooms: Arc<Rooms>,
    sale_id: u64,
    user: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(live) = self.rooms.live.get(&self.sale_id) {
            let mut gone = false;
            if let Some(mut n) = live.streams.get_mut(&self.user) {
                *n = n.saturating_sub(1);
                gone = *n == 0;
            }
            if gone {
                live.streams.remove_if(&self.user, |_, n| *n == 0);
            }
        }
    }
}
