//! Intent-to-buy records: buyers turned away with `sold_out`, once per user
//! per sale, written in batches off the hot path.
//!
//! The hot path only inserts into a per-sale in-memory set and, for a user
//! not seen before, hands the record to a bounded channel. A background task
//! drains the channel in batches into the order store. If the channel is
//! full the user is taken out of the set again, so a later miss retries.
//! On a clean stop the writer drains the queue before it exits.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashSet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{Intent, OrderStore};

/// Records to buffer before the hot path starts shedding them.
const QUEUE: usize = 65_536;
/// Most records per store write.
const BATCH: usize = 2_048;

/// Users of one sale already recorded as missed.
#[derive(Debug, Default)]
pub struct MissedBuyers(DashSet<Box<str>>);

impl MissedBuyers {
    /// Number of distinct users recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nobody has been recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Hands missed buyers to the background batch writer.
pub struct IntentRecorder {
    tx: mpsc::Sender<Intent>,
}

impl IntentRecorder {
    /// Starts the batch writer over `store`; it stops once every recorder
    /// handle is dropped and the queue is drained.
    pub fn start(
        store: Arc<dyn OrderStore>,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_batches(store, rx, stop));
        (Self { tx }, task)
    }

    /// Records `user` as having missed `sale_id`, once.
    pub fn record(
        &self,
        missed: &MissedBuyers,
        sale_id: u64,
        user: &str,
        quantity: u32,
        now_ms: i64,
    ) {
        if missed.0.contains(user) || !missed.0.insert(user.into()) {
            return;
        }
        let intent = Intent {
            sale_id,
            user_id: user.to_owned(),
            quantity,
            created_at_ms: now_ms,
        };
        if self.tx.try_send(intent).is_err() {
            missed.0.remove(user);
            metrics::counter!("flashsale_intents_shed_total").increment(1);
        }
    }
}

async fn write_batches(
    store: Arc<dyn OrderStore>,
    mut rx: mpsc::Receiver<Intent>,
    stop: CancellationToken,
) {
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        let got = tokio::select! {
            n = rx.recv_many(&mut buf, BATCH) => n,
            () = stop.cancelled() => {
                // Stopping: take what is queued, write it, and finish.
                rx.close();
                rx.recv_many(&mut buf, QUEUE).await
            }
        };
        if got == 0 {
            return;
        }
        // Coalesce: let a flood's misses pile up briefly into bigger batches.
        let n = buf.len();
        loop {
            match store.record_intents(buf.clone()).await {
                Ok(()) => break,
                Err(crate::backend::StoreError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, batch = n, "writing purchase intents failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        metrics::counter!("flashsale_intents_recorded_total").increment(n as u64);
        buf.clear();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
