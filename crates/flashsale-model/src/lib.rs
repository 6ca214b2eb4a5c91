//! A model of Flashsale's distributed purchase hand-off, checked with
//! [stateright] over every interleaving of its steps up to a bound
//! (docs/MODEL.md has the bound, the numbers and the counterexamples).
//!
//! The model follows the real path of an accepted order in distributed
//! mode, for one sale:
//!
//! 1. **Decide** (`src/backend/redis.rs`, the purchase script): one atomic
//!    step checks the stamp (with fencing), stock and the per-user limit,
//!    deducts and adds the order to the outbox.
//! 2. **Hand off** (`src/engine/handoff.rs`): the node publishes; on the
//!    broker's confirm the order is ready in the queue and the buyer hears
//!    `201`; then the node removes it from the outbox. No confirm, or a
//!    node crash: no `201`, the entry stays in the outbox.
//! 3. **Relay** (`src/worker/stock_watch.rs`): reads an outbox entry,
//!    publishes it, removes it once confirmed; duplicates are possible.
//! 4. **Write** (`src/worker/order_writer.rs`): a writer takes a message
//!    (unacked), inserts the order by id, acks; a writer that dies before
//!    the ack has its message redelivered.
//! 5. **Faults**: Redis restarts empty; the replica, which copies the
//!    master only when replication runs, is promoted with whatever it has;
//!    each gives the master a new replication id.
//! 6. **Re-seed** (`src/worker/stock_watch.rs`, `RedisStock::seed`): the
//!    stock watcher, seeing the sale not seeded (or fenced: stamped with an
//!    older replication id), waits for the queue to drain, reads the
//!    database, and writes the holdings stamped with the current id.
//!
//! [`HandoffModel`] holds the bound and the protocol variant: fencing on or
//! off, the relay's fence, how far the watcher waits for the queue, the
//! timing assumption that the watcher's settling wait outlasts a publish,
//! and whether inserts are idempotent. Its `always` properties are the
//! contract's invariants (never oversold, the per-user limit, every `201`
//! stored exactly once, each counted both among the `201`s and in the
//! database); two `sometimes` properties show the checked runs are not
//! vacuous (a promoted or restarted sale does sell again), and
//! [`HandoffModel::check_recovery`] checks that every state can still reach
//! a settled one.
//!
//! Run it with `cargo test -p flashsale-model -- --nocapture` to see the
//! state counts and the counterexamples in words
//! ([`HandoffModel::narrate`]).

pub mod model;
mod narrate;
mod recovery;
mod symmetry;

pub use model::*;
pub use recovery::Recovery;
