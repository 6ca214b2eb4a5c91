//! Keeping a distributed node in step with the shared stock.
//!
//! - **Stock watcher** (every 250 ms): mirrors each sale's remaining units
//!   from Redis into the local sold-out flag, so a unit returned by any node
//!   reopens the sale on every node within a second — and, in the same
//!   script call, the sale's window into its live window, so an admin's
//!   "open now" / "close now" on any node reaches every node's early
//!   answers within a tick (Redis itself decides by it at once) — and notices a sale
//!   Redis lost (it restarted empty). Such a sale answers `503` until it is
//!   re-seeded from the database — and the re-seed waits until the order
//!   queue has been empty for a second, so every confirmed order is counted:
//!   never sell from a blank counter.
//! - **Relay** (every second): publishes outbox entries older than
//!   [`RELAY_AFTER_MS`] — orders whose node died (or lost the broker) between
//!   the Redis deduction and the confirm — and drops them from the outbox
//!   once confirmed. Several nodes may relay the same entry; the writer's
//!   idempotent insert makes that harmless.
//! - **Reconciler** (every [`RECONCILE_EVERY`]): compares Redis, the outbox
//!   and the database per sale, keeps the drift, the writer lag and the
//!   outbox length for `/metrics` (`flashsale_stock_drift_units{sale_id}`,
//!   `flashsale_writer_lag_units`, `flashsale_outbox_entries`; see
//!   `engine::metrics`), and returns units of orders
//!   that expired or were cancelled recently (the release is once per order,
//!   so this only repairs a node that crashed between the database change
//!   and the Redis release).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::queue::OrderQueue;
use crate::backend::stock::StockStore;
use crate::domain::now_ms;
use crate::engine::{Engine, SaleRuntime};

/// The shared backends the watcher keeps in step.
struct Shared {
    stock: Arc<dyn StockStore>,
    queue: Arc<dyn OrderQueue>,
    /// When this node first found each lost (or fenced) sale.
    lost_since: std::sync::Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    /// Consecutive reconciler readings of a sale whose database holds more
    /// units than Redis counts.
    short_counts: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
    /// True once a re-seed fell back to the database standing still (warned
    /// once per process).
    fallback_logged: std::sync::atomic::AtomicBool,
}

/// How long a lost sale waits before it may be re-seeded: longer than a
/// hand-off decided before the loss can take to land in the queue (a
/// publish waits up to 5 s for its confirm, then gives up), so every
/// confirmed order is in the queue — and then, once drained, in the
/// database — before the count is read. The hand-off model calls this
/// assumption `settle_outlasts_publish` (docs/MODEL.md).
pub const RESEED_SETTLE: Duration = Duration::from_secs(6);

/// Outbox entries older than this are relayed by any node.
pub const RELAY_AFTER_MS: i64 = 3000;
/// How often the reconciler runs.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// How far back the reconciler returns units of released orders.
const RELEASE_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Starts the stock watcher, relay and reconciler of a distributed node,
/// each as its role says: the relay and the reconciler by their own roles,
/// the watcher (the shared clock, sold-out flags, re-seeding a sale Redis
/// lost) for any of the API, relay and reconciler roles (both steps read
/// its view of which sales Redis holds); a writer-only node needs none.
pub fn spawn_stock_watch(
    engine: Arc<Engine>,
    queue: Arc<dyn OrderQueue>,
    roles: super::Roles,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let watches = roles.api || roles.relay || roles.reconciler;
    crate::telemetry::register_at_zero(&[
        "flashsale_reseeds_total",
        "flashsale_relayed_orders_total",
        "flashsale_reconciler_fences_total",
    ]);
    tokio::spawn(async move {
        let cluster = Shared {
            stock: engine.stock().clone(),
            queue,
            lost_since: std::sync::Mutex::default(),
            short_counts: std::sync::Mutex::default(),
            fallback_logged: std::sync::atomic::AtomicBool::new(false),
        };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            n += 1;
            let work = async {
                if !cluster.queue.is_up() {
                    cluster.queue.probe().await;
                }
                if watches {
                    measure_clock(&engine, &cluster, n % 240 == 1).await;
                    for rt in engine.sales() {
                        watch(&engine, &cluster, &rt).await;
                    }
                }
                if roles.relay && n.is_multiple_of(4) {
                    for rt in engine.sales() {
                        if rt.seeded.load(Ordering::Acquire) {
                            relay(&cluster, rt.sale.id).await;
                        }
                    }
                }
                if n.is_multiple_of(RECONCILE_EVERY.as_millis() as u64 / 250) {
                    for rt in engine.sales() {
                        if roles.reconciler {
                            reconcile(&engine, &cluster, &rt).await;
                        } else if roles.api {
                            // The stats' persisted count, which the
                            // reconciler keeps where it runs.
                            refresh_persisted(&engine, &rt).await;
                        }
                    }
                }
            };
            // Every step is safe to cut short (the next tick, or another
            // node, redoes it), so a stop never waits for a slow backend.
            tokio::select! {
                () = work => {}
                () = stop.cancelled() => return,
            }
        }
    })
}

/// Reads the shared stock's clock (which decides the sale window), keeps
/// the node's offset to it for the early answers, and exports it as
/// `flashsale_clock_offset_ms` (shared clock minus this node's); warns at
/// most once a minute when it is over a second.
async fn measure_clock(engine: &Engine, cluster: &Shared, may_warn: bool) {
    let sent = now_ms();
    match cluster.stock.server_time_ms().await {
        Ok(Some(server)) => {
            if let Some(offset) = engine.clock().observe(sent, server, now_ms()) {
                metrics::gauge!("flashsale_clock_offset_ms").set(offset as f64);
                if may_warn && offset.abs() > 1000 {
                    tracing::warn!(
                        offset_ms = offset,
                        "this node's clock is off the shared stock's by over a second; \
                         the sale window follows the shared clock"
                    );
                }
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read the shared clock"),
    }
}

async fn watch(engine: &Engine, cluster: &Shared, rt: &SaleRuntime) {
    match cluster
        .stock
        .sync(&rt.ledger, &rt.schedule, rt.sale.id)
        .await
    {
        Ok(true) => {
            cluster
                .lost_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&rt.sale.id);
            if !rt.seeded.swap(true, Ordering::AcqRel) {
                tracing::info!(sale_id = rt.sale.id, "sale back in Redis; purchases resume");
            }
        }
        Ok(false) => {
            if rt.seeded.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    sale_id = rt.sale.id,
                    "Redis lost the sale (or it was fenced after a failover); refusing \
                     purchases until it is re-seeded"
                );
            }
            let since = *cluster
                .lost_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(rt.sale.id)
                .or_insert_with(std::time::Instant::now);
            if since.elapsed() >= RESEED_SETTLE {
                reseed(engine, cluster, rt, since + RESEED_SETTLE).await;
            }
        }
        Err(e) => tracing::debug!(error = %e, "stock watcher cannot read Redis"),
    }
}

/// Re-seeds a sale Redis lost once every order confirmed before the
/// loss is in the database. No new order of the sale reaches the queue
/// after `settled` (the end of [`RESEED_SETTLE`]), so that holds once the
/// queue held none of them, ready *or* unacknowledged, at one instant
/// after `settled` — every one was then acked, which a writer does only
/// after its commit. Where the queue counts both in one sample (RabbitMQ's
/// management API, the in-process queue), that is what is required. Where
/// it cannot tell unacknowledged deliveries (the API unreachable), the
/// queue must stay empty of ready messages for a second and the database's
/// count stand still over another (after the API failed for a while: a
/// late answer is waited for) (a writer that is inserting shows; one
/// holding a delivery without inserting it would not: the residual risk
/// in docs/CRASH_MATRIX.md).
async fn reseed(engine: &Engine, cluster: &Shared, rt: &SaleRuntime, settled: std::time::Instant) {
    let depth = match cluster.queue.depth().await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the queue depth; not re-seeding yet");
            return;
        }
    };
    let counted = match depth.sample {
        Some(sample) if sample.taken_after < settled => {
            // Counted before the settle window closed, possibly before
            // the last publish: wait for the broker's next sample.
            tracing::debug!("waiting for a queue count taken after the settle window");
            return;
        }
        Some(sample) if sample.ready > 0 || sample.unacked > 0 => {
            tracing::info!(
                ready = sample.ready,
                unacked = sample.unacked,
                "waiting for the order queue to drain (ready and unacked) before re-seeding"
            );
            return;
        }
        Some(_) => true,
        None if depth.sample_pending => {
            // The broker's API answered late or not yet: it will count
            // again; the weaker check is for when it stays away.
            tracing::debug!("waiting for the queue's count of unacked deliveries");
            return;
        }
        None => false,
    };
    if !counted && !drained_without_unacked(engine, cluster, rt, depth.ready).await {
        return;
    }
    let Ok(record) = engine
        .store()
        .sale_record(rt.sale.id)
        .await
        .inspect_err(|e| {
            tracing::warn!(error = %e, "cannot read the database to re-seed");
        })
    else {
        return;
    };
    seed_from(engine, cluster, rt, record).await;
}

/// The fallback drain check where unacknowledged deliveries are unknown:
/// no ready message now and a second later, and the database's count the
/// same over the next second.
async fn drained_without_unacked(
    engine: &Engine,
    cluster: &Shared,
    rt: &SaleRuntime,
    ready: u32,
) -> bool {
    if ready > 0 {
        tracing::info!(
            ready,
            "waiting for the order queue to drain before re-seeding"
        );
        return false;
    }
    if !cluster.fallback_logged.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "the order queue cannot report unacknowledged deliveries (is the RabbitMQ \
             management API reachable? --queue-management-url); re-seeding waits for \
             the database's count to stand still instead"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    match cluster.queue.depth().await {
        Ok(d) if d.ready == 0 => {}
        Ok(d) => {
            tracing::info!(
                ready = d.ready,
                "waiting for the order queue to drain before re-seeding"
            );
            return false;
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the queue depth; not re-seeding yet");
            return false;
        }
    }
    let read = || async {
        engine
            .store()
            .sale_record(rt.sale.id)
            .await
            .inspect_err(|e| {
                tracing::warn!(error = %e, "cannot read the database to re-seed");
            })
    };
    let Ok(before) = read().await else {
        return false;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let Ok(record) = read().await else {
        return false;
    };
    if record.sold != before.sold || record.holders.len() != before.holders.len() {
        tracing::info!("orders are still arriving in the database; not re-seeding yet");
        return false;
    }
    true
}

/// Seeds the sale's Redis state from `record`, read from the database.
async fn seed_from(
    engine: &Engine,
    cluster: &Shared,
    rt: &SaleRuntime,
    record: crate::backend::SaleRecord,
) {
    // The window as stored now: an admin may have moved it while Redis did
    // not hold the sale (their write to Redis then found nothing to move).
    let Ok(Some(stored)) = engine.store().get_sale(rt.sale.id).await else {
        return;
    };
    rt.schedule.advance(stored.schedule());
    match cluster.stock.seed(&rt.current(), &record).await {
        Ok(true) => {
            tracing::info!(
                sale_id = rt.sale.id,
                sold = record.sold,
                "re-seeded the sale from the database"
            );
            metrics::counter!("flashsale_reseeds_total").increment(1);
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "re-seeding failed; will retry"),
    }
}

async fn relay(cluster: &Shared, sale_id: u64) {
    let due = match cluster.stock.outbox_due(sale_id, RELAY_AFTER_MS, 500).await {
        Ok(due) if !due.is_empty() => due,
        _ => return,
    };
    let mut sent = Vec::with_capacity(due.len());
    // A round ends after 2 s: publishes of entries read before a failover
    // must land inside the re-seed's settle window (RESEED_SETTLE).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for payload in due {
        if std::time::Instant::now() > deadline {
            break;
        }
        match cluster.queue.publish_orders(payload.as_bytes()).await {
            Ok(()) => sent.push(payload),
            Err(e) => {
                tracing::debug!(error = %e, "relay cannot publish yet");
                break;
            }
        }
    }
    metrics::counter!("flashsale_relayed_orders_total").increment(sent.len() as u64);
    if let Err(e) = cluster.stock.outbox_remove(sale_id, &sent).await {
        tracing::debug!(error = %e, "relay cannot clean the outbox");
    }
}

/// Reads how many of the sale's orders the database holds, for its stats
/// (`orders_persisted`) on a node that does not run the reconciler.
async fn refresh_persisted(engine: &Engine, rt: &SaleRuntime) {
    if let Ok(audit) = engine.store().sale_audit(rt.sale.id, now_ms()).await {
        rt.counters
            .orders_persisted
            .store(audit.orders, Ordering::Relaxed);
    }
}

async fn reconcile(engine: &Engine, cluster: &Shared, rt: &SaleRuntime) {
    let id = rt.sale.id;
    let since = now_ms() - RELEASE_WINDOW_MS;
    // The window as stored, pushed to Redis and here: repairs a move whose
    // write to Redis failed, or that a re-seed racing it wrote over. Both
    // only ever move times earlier, so pushing a window read a moment
    // before another move cannot undo that move.
    if let Ok(Some(stored)) = engine.store().get_sale(id).await {
        if let Err(e) = cluster.stock.set_schedule(id, stored.schedule()).await {
            tracing::debug!(error = %e, "cannot push the sale's window to Redis");
        }
        rt.schedule.advance(stored.schedule());
    }
    let Ok(audit) = engine.store().sale_audit(id, since).await else {
        return;
    };
    rt.counters
        .orders_persisted
        .store(audit.orders, Ordering::Relaxed);
    for order in &audit.released {
        // Once per order: a no-op unless a node died mid-release.
        let _ = cluster.stock.release(&rt.ledger, order).await;
    }
    let Ok(Some(st)) = cluster.stock.state(id).await else {
        return;
    };
    // Positive: units Redis counts as sold that neither the database nor the
    // outbox knows (orders in the queue, or leaked); negative: the database
    // and the outbox hold more than Redis counts (for a moment an order is
    // in both; for longer, Redis lost decisions — see below).
    let drift = st.sold as i64 - audit.sold as i64 - st.outbox as i64;
    // Exported per active sale at scrape time (engine::metrics), not through
    // the recorder, so a finished sale's series end.
    let seen = &rt.counters.reconciled;
    seen.drift_units.store(drift, Ordering::Relaxed);
    seen.lag_units
        .store(st.sold.saturating_sub(audit.sold), Ordering::Relaxed);
    seen.outbox_entries.store(st.outbox, Ordering::Relaxed);
    seen.at_ms.store(now_ms(), Ordering::Relaxed);
    // The database holding more units than Redis counts as sold at all
    // means Redis lost decisions that the fence did not catch. A release
    // (database first, then Redis) racing the two reads could fake that for
    // a moment, so the database is read again and the smaller count is
    // used; and it takes two readings in a row to fence the sale, which is
    // then re-seeded from the database before it sells those units again.
    let again = engine
        .store()
        .sale_audit(id, since)
        .await
        .map_or(audit.sold, |a| a.sold);
    let short = audit.sold.min(again) > st.sold;
    let readings = {
        let mut counts = cluster
            .short_counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !short {
            counts.remove(&id);
            return;
        }
        let seen = counts.entry(id).or_insert(0);
        *seen += 1;
        let readings = *seen;
        if readings >= 2 {
            counts.remove(&id);
        }
        readings
    };
    tracing::error!(
        sale_id = id,
        redis_sold = st.sold,
        database_sold = audit.sold.min(again),
        readings,
        "the database holds more units than Redis counts as sold"
    );
    if readings >= 2 {
        match cluster.stock.fence(id).await {
            Ok(()) => {
                metrics::counter!("flashsale_reconciler_fences_total").increment(1);
                tracing::error!(
                    sale_id = id,
                    "sale fenced by the reconciler; it will be re-seeded"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot fence the sale"),
        }
    }
}
