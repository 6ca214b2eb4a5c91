//! The hand-off as a [`stateright::Model`]: [`HandoffModel`] (the bound and
//! the protocol variant), [`State`] (everything every component holds),
//! [`Action`] (every step any component can take) and the properties.
//!
//! Each action is one atomic step of the real system: one Redis script, one
//! broker operation, one SQL statement, one crash. Steps of different
//! components interleave in every order, which is what the checker explores.

use stateright::{Model, Property};

/// Most buyers a model can have (the size of the per-user arrays).
pub const MAX_BUYERS: usize = 4;
/// Most orders (buyers × attempts) a model can have: orders are bits of a
/// `u8`.
pub const MAX_ORDERS: usize = 8;
/// Most relays (one per node) a model can have.
pub const MAX_RELAYS: usize = 2;

/// One order: attempt `index / MAX_BUYERS` of buyer `index % MAX_BUYERS`
/// (a layout that does not depend on the bound, so [`State`]'s symmetry
/// reduction can permute buyers without the model). Every purchase attempt
/// that Redis accepts is a new order (the real order id), of one unit.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order(pub u8);

impl Order {
    /// Attempt `attempt` (0 = the first) of buyer `buyer`.
    pub fn new(buyer: usize, attempt: usize) -> Self {
        Self((attempt * MAX_BUYERS + buyer) as u8)
    }

    /// The buyer who placed it.
    pub fn buyer(self) -> usize {
        usize::from(self.0) % MAX_BUYERS
    }

    /// Which attempt of its buyer it is (0 = the first).
    pub fn attempt(self) -> usize {
        usize::from(self.0) / MAX_BUYERS
    }

    /// The index of its slot in the per-order arrays.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// `A1` for buyer A's first attempt, as the traces print it.
    pub fn name(self) -> String {
        let letter = char::from(b'A' + self.buyer() as u8);
        format!("{letter}{}", self.attempt() + 1)
    }

    fn bit(self) -> u8 {
        1 << self.0
    }
}

/// A set of orders, as a bitset.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct Orders(pub u8);

impl Orders {
    /// Whether `o` is in the set.
    pub fn contains(self, o: Order) -> bool {
        self.0 & o.bit() != 0
    }

    /// The set with `o` added.
    #[must_use]
    pub fn with(self, o: Order) -> Self {
        Self(self.0 | o.bit())
    }

    /// The set without `o`.
    #[must_use]
    pub fn without(self, o: Order) -> Self {
        Self(self.0 & !o.bit())
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The orders in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = Order> {
        (0..MAX_ORDERS as u8)
            .map(Order)
            .filter(move |o| self.contains(*o))
    }
}

/// Where an order's purchase request is, from the buyer's side.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Phase {
    /// Not attempted yet (or every attempt so far was refused, which
    /// changes nothing).
    Unborn,
    /// Decided by the purchase script (stock taken, order in the outbox);
    /// the node is publishing it and the buyer waits.
    InFlight,
    /// The hand-off ended without a `201`: the publish was not confirmed
    /// (`503`) or the node died (the buyer heard nothing). The order stays
    /// in the outbox, for the relay.
    Failed,
    /// Confirmed by the broker and answered `201`. `cleaned` once the node
    /// removed the order from the outbox.
    Accepted {
        /// The node's outbox removal (`ZREM`) ran.
        cleaned: bool,
    },
}

impl Phase {
    /// Whether the buyer was told `201`.
    pub fn accepted(self) -> bool {
        matches!(self, Self::Accepted { .. })
    }
}

/// The sale's `meta` and `holders` hashes: units held per user (the units
/// sold are their sum: one unit per order, nothing is released) and the
/// replication id stamped when the sale was seeded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Meta {
    /// Units held per buyer.
    pub held: [u8; MAX_BUYERS],
    /// The replication id of the Redis the sale was seeded on.
    pub stamp: u8,
}

impl Meta {
    /// Units sold.
    pub fn sold(&self) -> u8 {
        self.held.iter().sum()
    }
}

/// What one Redis server holds of the sale.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct RedisData {
    /// `None`: the sale is not seeded (Redis restarted empty).
    pub meta: Option<Meta>,
    /// The outbox sorted set (its scores, the times, are abstracted away).
    pub outbox: Orders,
}

/// A relay (one per node): idle, or holding an outbox entry it read and is
/// publishing.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Relay {
    /// Between rounds.
    Idle,
    /// Read this entry from the master's outbox; the publish is in flight.
    Holding(Order),
}

/// What the stock watcher read from the database for a re-seed it has not
/// written yet.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Snapshot {
    /// Distinct stored orders per buyer.
    pub held: [u8; MAX_BUYERS],
    /// The replication id the watcher saw before reading the database: the
    /// one the seed stamps.
    pub rid: u8,
}

/// How long the stock watcher waits on the order queue before re-seeding.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Drain {
    /// Not at all (the variant showing why the wait matters).
    None,
    /// Until no message is ready (`docs/CRASH_MATRIX.md`'s residual risk:
    /// a delivery a writer holds unacked is not counted).
    ReadyOnly,
    /// Until no message is ready and none is unacked: every confirmed order
    /// is then in the database.
    ReadyAndUnacked,
}

/// The model: its bound (buyers, attempts, stock, faults) and the protocol
/// variant (fencing, drain wait, timing assumption, insert semantics).
#[derive(Clone, Debug)]
pub struct HandoffModel {
    /// Buyers (≤ [`MAX_BUYERS`]).
    pub buyers: u8,
    /// Purchase attempts per buyer that Redis may accept (at most
    /// `MAX_ORDERS / MAX_BUYERS` = 2): a buyer may buy again after a `201`
    /// (the limit must refuse it) or retry after a `503`.
    pub attempts: u8,
    /// Units of the sale.
    pub stock: u8,
    /// Per-user limit, in units.
    pub limit: u8,
    /// Relays (nodes) running at once (≤ [`MAX_RELAYS`]).
    pub relays: u8,
    /// Times the Redis master may restart empty.
    pub redis_restarts: u8,
    /// Times the replica may be promoted (with whatever it replicated).
    pub promotions: u8,
    /// The purchase script refuses a sale whose stamped replication id is
    /// not the server's current one, and the watcher re-seeds it.
    pub fencing: bool,
    /// The relay reads the outbox only of a sale that is seeded and not
    /// fenced (its read checks the same stamp).
    pub relay_fencing: bool,
    /// The watcher's wait on the order queue before it re-seeds.
    pub drain: Drain,
    /// Timing assumption: the watcher's settling wait outlasts every
    /// publish, so no hand-off or relay publish begun before the re-seed
    /// is still in flight when the watcher reads the database.
    pub settle_outlasts_publish: bool,
    /// The writer's insert ignores an order id already stored (`ON
    /// CONFLICT DO NOTHING`); `false` stores a redelivered order again.
    pub idempotent_insert: bool,
}

impl HandoffModel {
    /// The protocol as it should be: every guard on, 3 buyers with 2
    /// attempts each, 2 units, a limit of 1, one relay, one Redis restart
    /// and one lagging promotion.
    pub fn fenced() -> Self {
        Self {
            buyers: 3,
            attempts: 2,
            stock: 2,
            limit: 1,
            relays: 1,
            redis_restarts: 1,
            promotions: 1,
            fencing: true,
            relay_fencing: true,
            drain: Drain::ReadyAndUnacked,
            settle_outlasts_publish: true,
            idempotent_insert: true,
        }
    }

    /// [`Self::fenced`] without any fencing: the protocol before the fix.
    pub fn unfenced() -> Self {
        Self {
            fencing: false,
            relay_fencing: false,
            ..Self::fenced()
        }
    }

    /// Orders in the model, first attempts first.
    pub fn orders(&self) -> impl Iterator<Item = Order> {
        let buyers = usize::from(self.buyers);
        (0..usize::from(self.attempts))
            .flat_map(move |a| (0..buyers).map(move |b| Order::new(b, a)))
    }

    /// Whether the master's sale must be re-seeded: not seeded, or (with
    /// fencing) stamped with an older replication id.
    pub fn needs_seed(&self, s: &State) -> bool {
        match s.master.meta {
            None => true,
            Some(m) => self.fencing && m.stamp != s.rid,
        }
    }

    /// Distinct stored orders per buyer (what the re-seed reads).
    pub fn db_held(&self, s: &State) -> [u8; MAX_BUYERS] {
        let mut held = [0; MAX_BUYERS];
        for o in self.orders().filter(|o| s.stored(*o)) {
            held[o.buyer()] += 1;
        }
        held
    }

    /// Whether the watcher's drain wait is satisfied.
    fn drained(&self, s: &State) -> bool {
        match self.drain {
            Drain::None => true,
            Drain::ReadyOnly => s.ready.is_empty(),
            Drain::ReadyAndUnacked => s.ready.is_empty() && s.unacked.is_empty(),
        }
    }

    /// Whether nothing is being published: no hand-off and no relay read
    /// in flight.
    pub fn nothing_in_flight(&self, s: &State) -> bool {
        self.orders().all(|o| s.phase[o.index()] != Phase::InFlight)
            && s.relays.iter().all(|r| *r == Relay::Idle)
    }

    /// Whether the relay may read the master's outbox.
    fn relay_may_read(&self, s: &State) -> bool {
        !self.relay_fencing || !self.needs_seed(s)
    }

    /// The system at rest and in agreement: nothing in flight, the queue
    /// empty, the sale seeded on a current stamp, and Redis's holdings
    /// equal to the database's user by user (the reconciler's drift is 0).
    pub fn settled(&self, s: &State) -> bool {
        self.nothing_in_flight(s)
            && s.watcher.is_none()
            && s.ready.is_empty()
            && s.unacked.is_empty()
            && !self.needs_seed(s)
            && s.master.meta.is_some_and(|m| m.held == self.db_held(s))
    }
}

/// Everything the components hold, for one sale.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    /// Each order's purchase request (indexed by [`Order`]).
    pub phase: [Phase; MAX_ORDERS],
    /// The Redis master's copy of the sale.
    pub master: RedisData,
    /// The master's current replication id (a new one after a restart or
    /// a promotion).
    pub rid: u8,
    /// The replica's copy: what it last replicated; `None` right after a
    /// promotion (no replica attached yet).
    pub replica: Option<RedisData>,
    /// Messages ready in the order queue (one per order: a second copy of
    /// an order already ready merges with it).
    pub ready: Orders,
    /// Messages delivered to a writer and not acked.
    pub unacked: Orders,
    /// Unacked deliveries whose insert already ran.
    pub inserted: Orders,
    /// Rows per order id in the database: a multiset, so a second insert
    /// of one id shows.
    pub db: [u8; MAX_ORDERS],
    /// The relays (indexed by node).
    pub relays: [Relay; MAX_RELAYS],
    /// A re-seed read from the database and not written yet.
    pub watcher: Option<Snapshot>,
    /// Redis restarts so far.
    pub restarts: u8,
    /// Promotions so far.
    pub promotions: u8,
}

/// One atomic step of one component.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Action {
    /// A node runs the purchase script for the order and Redis accepts it:
    /// window, stamp (with fencing), limit and stock checked, a unit
    /// deducted, the order added to the outbox. (A refusal changes nothing,
    /// so it is not a step.)
    Decide(Order),
    /// The node's publish is confirmed: the order is ready in the queue
    /// and the buyer hears `201`.
    Confirm(Order),
    /// The node's publish is not confirmed (`503`) or the node dies: no
    /// `201`, the order stays in the outbox.
    HandoffFails(Order),
    /// The node removes a confirmed order from the outbox.
    CleanOutbox(Order),
    /// A relay reads this entry from the master's outbox.
    RelayRead(u8, Order),
    /// The relay's publish is confirmed and it removes the entry.
    RelayConfirmed(u8),
    /// The relay's message reaches the queue but the confirm is lost or the
    /// node dies: the entry stays in the outbox.
    RelayUnconfirmed(u8),
    /// The relay's publish fails or its node dies before the message
    /// reached the broker.
    RelayLost(u8),
    /// A writer takes the order's message (ready → unacked).
    Deliver(Order),
    /// The writer inserts the order into the database.
    Insert(Order),
    /// The writer acks the message (after its insert).
    Ack(Order),
    /// The writer holding the message dies: the broker redelivers it.
    Redeliver(Order),
    /// The Redis master restarts empty (new replication id).
    RedisRestart,
    /// The replica copies the master's current data.
    Replicate,
    /// The master dies; the replica is promoted with what it has (new
    /// replication id).
    Promote,
    /// The stock watcher, seeing the sale unseeded (or fenced) and its
    /// drain wait satisfied, reads the database.
    ReseedRead,
    /// The watcher writes what it read: holders and counters stamped with
    /// the replication id it saw, the outbox emptied.
    ReseedWrite,
}

impl HandoffModel {
    fn decide(&self, s: &State, o: Order) -> Option<State> {
        let i = o.index();
        if s.phase[i] != Phase::Unborn {
            return None;
        }
        // A buyer's attempts come in order (the earlier may still be in
        // flight: a buyer can send concurrent requests).
        if o.attempt() > 0 && s.phase[i - MAX_BUYERS] == Phase::Unborn {
            return None;
        }
        let mut m = s.master.meta?;
        if self.fencing && m.stamp != s.rid {
            return None; // "fenced": answered like "not seeded"
        }
        let b = o.buyer();
        if m.sold() >= self.stock || m.held[b] >= self.limit {
            return None; // sold out or limit reached
        }
        m.held[b] += 1;
        let mut n = s.clone();
        n.master.meta = Some(m);
        n.master.outbox = n.master.outbox.with(o);
        n.phase[i] = Phase::InFlight;
        Some(n)
    }

    fn reseed_read(&self, s: &State) -> Option<State> {
        if s.watcher.is_some() || !self.needs_seed(s) || !self.drained(s) {
            return None;
        }
        if self.settle_outlasts_publish && !self.nothing_in_flight(s) {
            return None;
        }
        let mut n = s.clone();
        n.watcher = Some(Snapshot {
            held: self.db_held(s),
            rid: s.rid,
        });
        Some(n)
    }

    fn reseed_write(&self, s: &State) -> Option<State> {
        let snap = s.watcher?;
        let mut n = s.clone();
        n.watcher = None;
        // `seed` checks the sale is still missing (or fenced) and writes
        // the counters last; a promotion meanwhile makes the stamp stale,
        // so the next round re-seeds again.
        if self.needs_seed(s) {
            n.master = RedisData {
                meta: Some(Meta {
                    held: snap.held,
                    stamp: snap.rid,
                }),
                outbox: Orders::default(),
            };
        }
        Some(n)
    }
}

impl Model for HandoffModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        assert!(usize::from(self.buyers) <= MAX_BUYERS, "too many buyers");
        assert!(self.attempts >= 1, "every buyer needs an attempt");
        assert!(
            usize::from(self.attempts) * MAX_BUYERS <= MAX_ORDERS,
            "too many attempts"
        );
        assert!(usize::from(self.relays) <= MAX_RELAYS, "too many relays");
        let seeded = RedisData {
            meta: Some(Meta {
                held: [0; MAX_BUYERS],
                stamp: 0,
            }),
            outbox: Orders::default(),
        };
        vec![State {
            phase: [Phase::Unborn; MAX_ORDERS],
            master: seeded,
            rid: 0,
            replica: Some(seeded),
            ready: Orders::default(),
            unacked: Orders::default(),
            inserted: Orders::default(),
            db: [0; MAX_ORDERS],
            relays: [Relay::Idle; MAX_RELAYS],
            watcher: None,
            restarts: 0,
            promotions: 0,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for o in self.orders() {
            let i = o.index();
            match s.phase[i] {
                Phase::Unborn => actions.push(Action::Decide(o)),
                Phase::InFlight => {
                    actions.push(Action::Confirm(o));
                    actions.push(Action::HandoffFails(o));
                }
                Phase::Accepted { cleaned: false } => actions.push(Action::CleanOutbox(o)),
                Phase::Failed | Phase::Accepted { cleaned: true } => {}
            }
            if s.ready.contains(o) && !s.unacked.contains(o) {
                actions.push(Action::Deliver(o));
            }
            if s.unacked.contains(o) {
                if !s.inserted.contains(o) {
                    actions.push(Action::Insert(o));
                } else {
                    actions.push(Action::Ack(o));
                }
                actions.push(Action::Redeliver(o));
            }
        }
        for r in 0..self.relays {
            match s.relays[usize::from(r)] {
                Relay::Idle if self.relay_may_read(s) => {
                    for o in s.master.outbox.iter() {
                        actions.push(Action::RelayRead(r, o));
                    }
                }
                Relay::Idle => {}
                Relay::Holding(_) => {
                    actions.push(Action::RelayConfirmed(r));
                    actions.push(Action::RelayUnconfirmed(r));
                    actions.push(Action::RelayLost(r));
                }
            }
        }
        if s.restarts < self.redis_restarts {
            actions.push(Action::RedisRestart);
        }
        if s.replica != Some(s.master) {
            actions.push(Action::Replicate);
        }
        if s.promotions < self.promotions && s.replica.is_some() {
            actions.push(Action::Promote);
        }
        actions.push(Action::ReseedRead);
        actions.push(Action::ReseedWrite);
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        let mut n = s.clone();
        match action {
            Action::Decide(o) => return self.decide(s, o),
            Action::Confirm(o) => {
                n.phase[o.index()] = Phase::Accepted { cleaned: false };
                n.ready = n.ready.with(o);
            }
            Action::HandoffFails(o) => n.phase[o.index()] = Phase::Failed,
            Action::CleanOutbox(o) => {
                n.phase[o.index()] = Phase::Accepted { cleaned: true };
                n.master.outbox = n.master.outbox.without(o);
            }
            Action::RelayRead(r, o) => n.relays[usize::from(r)] = Relay::Holding(o),
            Action::RelayConfirmed(r) | Action::RelayUnconfirmed(r) => {
                let Relay::Holding(o) = s.relays[usize::from(r)] else {
                    return None;
                };
                n.relays[usize::from(r)] = Relay::Idle;
                n.ready = n.ready.with(o);
                if action == Action::RelayConfirmed(r) {
                    n.master.outbox = n.master.outbox.without(o);
                }
            }
            Action::RelayLost(r) => n.relays[usize::from(r)] = Relay::Idle,
            Action::Deliver(o) => {
                n.ready = n.ready.without(o);
                n.unacked = n.unacked.with(o);
            }
            Action::Insert(o) => {
                let rows = &mut n.db[o.index()];
                *rows = if self.idempotent_insert {
                    (*rows).max(1)
                } else {
                    // Two rows are already a violation: saturate, so the
                    // state space stays finite.
                    (*rows + 1).min(2)
                };
                n.inserted = n.inserted.with(o);
            }
            Action::Ack(o) => {
                n.unacked = n.unacked.without(o);
                n.inserted = n.inserted.without(o);
            }
            Action::Redeliver(o) => {
                n.unacked = n.unacked.without(o);
                n.inserted = n.inserted.without(o);
                n.ready = n.ready.with(o);
            }
            Action::RedisRestart => {
                n.master = RedisData {
                    meta: None,
                    outbox: Orders::default(),
                };
                n.rid += 1;
                n.restarts += 1;
            }
            Action::Replicate => n.replica = Some(s.master),
            Action::Promote => {
                n.master = s.replica?;
                n.replica = None;
                n.rid += 1;
                n.promotions += 1;
            }
            Action::ReseedRead => return self.reseed_read(s),
            Action::ReseedWrite => return self.reseed_write(s),
        }
        Some(n)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(NOT_OVERSOLD_201, |m: &Self, s: &State| {
                m.accepted_count(s) <= m.stock
            }),
            Property::always(NOT_OVERSOLD_DB, |m: &Self, s: &State| {
                m.stored_count(s) <= m.stock
            }),
            Property::always(WITHIN_LIMIT_201, |m: &Self, s: &State| {
                m.accepted_held(s).iter().all(|h| *h <= m.limit)
            }),
            Property::always(WITHIN_LIMIT_DB, |m: &Self, s: &State| {
                m.db_held(s).iter().all(|h| *h <= m.limit)
            }),
            Property::always(NO_201_LOST, Self::no_201_lost),
            Property::always(STORED_ONCE, |_, s: &State| {
                s.db.iter().all(|rows| *rows <= 1)
            }),
            Property::sometimes(SELLS_OUT_AFTER_PROMOTION, |m: &Self, s: &State| {
                s.promotions > 0 && !m.needs_seed(s) && m.accepted_and_stored(s) == m.stock
            }),
            Property::sometimes(SELLS_AFTER_RESTART, |m: &Self, s: &State| {
                s.restarts > 0
                    && s.promotions == 0
                    && !m.needs_seed(s)
                    && m.orders()
                        .any(|o| s.phase(o).accepted() && s.master.outbox.contains(o))
            }),
        ]
    }
}

impl State {
    /// The phase of `o`.
    pub fn phase(&self, o: Order) -> Phase {
        self.phase[o.index()]
    }

    /// Whether the database holds `o`.
    pub fn stored(&self, o: Order) -> bool {
        self.db[o.index()] > 0
    }
}

impl HandoffModel {
    /// Distinct orders told `201`.
    pub fn accepted_count(&self, s: &State) -> u8 {
        self.orders().filter(|o| s.phase(*o).accepted()).count() as u8
    }

    /// Distinct orders stored.
    pub fn stored_count(&self, s: &State) -> u8 {
        self.orders().filter(|o| s.stored(*o)).count() as u8
    }

    /// Orders told `201` and already stored.
    pub fn accepted_and_stored(&self, s: &State) -> u8 {
        self.orders()
            .filter(|o| s.phase(*o).accepted() && s.stored(*o))
            .count() as u8
    }

    /// Units told `201` per buyer.
    pub fn accepted_held(&self, s: &State) -> [u8; MAX_BUYERS] {
        let mut held = [0; MAX_BUYERS];
        for o in self.orders().filter(|o| s.phase(*o).accepted()) {
            held[o.buyer()] += 1;
        }
        held
    }

    /// Every order told `201` is stored, ready or unacked.
    pub fn no_201_lost(&self, s: &State) -> bool {
        self.orders().all(|o| {
            !s.phase(o).accepted() || s.stored(o) || s.ready.contains(o) || s.unacked.contains(o)
        })
    }
}

/// Units of distinct orders told `201` never exceed the stock.
pub const NOT_OVERSOLD_201: &str = "not oversold: 201s <= stock";
/// Distinct orders stored never exceed the stock.
pub const NOT_OVERSOLD_DB: &str = "not oversold: stored orders <= stock";
/// No buyer is told `201` for more units than the limit.
pub const WITHIN_LIMIT_201: &str = "per-user limit: 201s";
/// No buyer holds more stored units than the limit.
pub const WITHIN_LIMIT_DB: &str = "per-user limit: stored orders";
/// Every order told `201` is stored or on its way (ready or unacked).
pub const NO_201_LOST: &str = "every 201 stored or queued";
/// No order id is stored twice.
pub const STORED_ONCE: &str = "each order stored at most once";
/// Example: after a lagging promotion the sale is re-seeded and sells out,
/// every unit told `201` and stored (the fence does not wedge the sale).
pub const SELLS_OUT_AFTER_PROMOTION: &str = "example: sells out after a promotion";
/// Example: after Redis restarted empty, the re-seeded sale accepts a new
/// order.
pub const SELLS_AFTER_RESTART: &str = "example: sells again after a restart";

/// The safety properties (every `always` one).
pub const SAFETY: [&str; 6] = [
    NOT_OVERSOLD_201,
    NOT_OVERSOLD_DB,
    WITHIN_LIMIT_201,
    WITHIN_LIMIT_DB,
    NO_201_LOST,
    STORED_ONCE,
];
