//! Background workers: the expiry sweeper, housekeeping and (when
//! configured) the webhook dispatcher; in the
//! distributed mode also the order writer and the stock watcher (relay and
//! reconciler).

//!
//! Each runs until its cancellation token fires; the application awaits them
//! during a graceful stop.

pub mod buyer_events;
pub mod order_writer;
mod roles;
pub mod stock_watch;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

pub use roles::Roles;

/// Orders expired per store call; a full batch triggers another at once.
const EXPIRE_BATCH: usize = 4096;

/// Expires unpaid orders past their payment window and returns their stock.
pub fn spawn_expiry_sweeper(
    engine: Arc<Engine>,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            loop {
                match engine.expire_due(EXPIRE_BATCH).await {
                    Ok(n) if n == EXPIRE_BATCH => continue,
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(expired = n, "expired unpaid orders");
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "expiry sweep failed; will retry");
                        break;
                    }
                }
            }
        }
    })
}

/// Runs the waiting rooms: every 100 ms each room lets in what its rate
/// and the units left allow and publishes its view to the streams.
pub fn spawn_room_ticker(engine: Arc<Engine>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let sales: Vec<_> = engine
                .sales()
                .into_iter()
                .filter(|rt| rt.sale.front_door.waiting_room.is_some())
                .collect();
            if !sales.is_empty() {
                engine.rooms().tick(&sales, engine.clock().now_ms()).await;
            }
        }
    })
}

/// Trims idle rate-limiter keys and old idempotency records every 2 s, and
/// folds recorded histogram samples every second (the Prometheus recorder
/// buffers raw samples until upkeep runs).
pub fn spawn_housekeeping(engine: Arc<Engine>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    crate::telemetry::prometheus().run_upkeep();
                    n += 1;
                    if n.is_multiple_of(2) {
                        engine.housekeeping();
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    })
}
