//! In-process implementations of the stock and queue seams.
//!
//! - [`EmbeddedStock`]: the embedded default's stock. The sale's [`Ledger`]
//!   is the truth, so a decision is a compare-and-swap and one user-shard
//!   lock, with no I/O at all.
//! - [`InProcessQueue`]: an at-least-once queue in memory with the same
//!   delivery rules as the broker (prefetch, explicit ack, redelivery of
//!   what a closed consumer left unsettled, a dead-letter list). Nothing
//!   survives the process, so it is for engine tests and the queue contract
//!   suite, never for a deployment.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::queue::{Acker, Delivery, OrderConsumer, OrderQueue, QueueDepth, QueueError};
use super::stock::{Decision, Reservation, StockError, StockStore};
use crate::domain::sale::Window;
use crate::domain::{Ledger, LiveSchedule, Order, Rejection, Sale, Schedule};

/// The embedded default's stock: each sale's in-memory ledger decides.
#[derive(Debug, Default)]
pub struct EmbeddedStock;

#[async_trait]
impl StockStore for EmbeddedStock {
    fn is_shared(&self) -> bool {
        false
    }

    async fn reserve(
        &self,
        schedule: Schedule,
        ledger: &Ledger,
        reservation: Arc<Reservation>,
    ) -> Result<Decision, StockError> {
        let o = &reservation.order;
        match schedule.window(o.created_at_ms) {
            Window::Upcoming => return Ok(Decision::Rejected(Rejection::NotStarted)),
            Window::Ended => return Ok(Decision::Rejected(Rejection::Ended)),
            Window::Open => {}
        }
        Ok(match ledger.try_reserve(&o.user_id, o.quantity) {
            Ok(()) => Decision::Accepted,
            Err(r) => Decision::Rejected(r),
        })
    }

    async fn release(&self, ledger: &Ledger, order: &Order) -> Result<(), StockError> {
        ledger.release(&order.user_id, order.quantity);
        Ok(())
    }

    fn restore(&self, ledger: &Ledger, user: &str, units: u32) {
        ledger.restore(user, units);
    }

    async fn seed_new(&self, _sale: &Sale) -> Result<(), StockError> {
        Ok(())
    }

    async fn sync(
        &self,
        _ledger: &Ledger,
        _schedule: &LiveSchedule,
        _sale_id: u64,
    ) -> Result<bool, StockError> {
        Ok(true)
    }
}

#[derive(Default)]
struct QueueState {
    next_id: u64,
    next_consumer: u64,
    ready: VecDeque<(u64, Vec<u8>)>,
    /// Delivery id → (consumer, body).
    unacked: HashMap<u64, (u64, Vec<u8>)>,
    dead: Vec<Vec<u8>>,
    events: Vec<(String, Vec<u8>)>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<QueueState>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every critical section below leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An at-least-once order queue inside the process (tests and the contract
/// suite).
#[derive(Clone)]
pub struct InProcessQueue {
    shared: Arc<Shared>,
    events: tokio::sync::broadcast::Sender<Vec<u8>>,
}

impl Default for InProcessQueue {
    fn default() -> Self {
        Self {
            shared: Arc::default(),
            events: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

/// A subscription to an [`InProcessQueue`]'s events.
struct InProcessEvents(tokio::sync::broadcast::Receiver<Vec<u8>>);

#[async_trait]
impl super::queue::EventSubscription for InProcessEvents {
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.0.recv().await {
                Ok(body) => return Some(body),
                // Best effort, like the broker: a slow subscriber skips.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl std::fmt::Debug for InProcessQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessQueue").finish_non_exhaustive()
    }
}

impl InProcessQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events published so far, oldest first (routing key, body).
    pub fn events(&self) -> Vec<(String, Vec<u8>)> {
        self.shared.lock().events.clone()
    }
}

#[async_trait]
impl OrderQueue for InProcessQueue {
    async fn publish_orders(&self, body: &[u8]) -> Result<(), QueueError> {
        let mut s = self.shared.lock();
        s.next_id += 1;
        let id = s.next_id;
        s.ready.push_back((id, body.to_vec()));
        drop(s);
        self.shared.notify.notify_waiters();
        Ok(())
    }

    async fn publish_event(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError> {
        self.shared
            .lock()
            .events
            .push((routing_key.to_owned(), body.to_vec()));
        // No subscriber is not an error: the event is dropped, as a broker
        // drops one no queue is bound to.
        let _ = self.events.send(body.to_vec());
        Ok(())
    }

    async fn subscribe_events(
        &self,
    ) -> Result<Box<dyn super::queue::EventSubscription>, QueueError> {
        Ok(Box::new(InProcessEvents(self.events.subscribe())))
    }

    async fn consume(
        &self,
        _tag: &str,
        prefetch: u16,
    ) -> Result<Box<dyn OrderConsumer>, QueueError> {
        let mut s = self.shared.lock();
        s.next_consumer += 1;
        Ok(Box::new(InProcessConsumer {
            shared: self.shared.clone(),
            id: s.next_consumer,
            prefetch: usize::from(prefetch.max(1)),
        }))
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let s = self.shared.lock();
        Ok(QueueDepth {
            ready: s.ready.len() as u32,
            unacked: Some(s.unacked.len() as u32),
            dead: s.dead.len() as u32,
            // Live counts, under one lock.
            sample: Some(super::queue::DepthSample {
                ready: s.ready.len() as u32,
                unacked: s.unacked.len() as u32,
                taken_after: std::time::Instant::now(),
            }),
            sample_pending: false,
        })
    }
}

struct InProcessConsumer {
    shared: Arc<Shared>,
    id: u64,
    prefetch: usize,
}

impl InProcessConsumer {
    fn try_take(&self) -> Option<Delivery> {
        let mut s = self.shared.lock();
        let held = s.unacked.values().filter(|(c, _)| *c == self.id).count();
        if held >= self.prefetch {
            return None;
        }
        let (id, body) = s.ready.pop_front()?;
        s.unacked.insert(id, (self.id, body.clone()));
        Some(Delivery::new(
            body,
            Box::new(InProcessAcker {
                shared: self.shared.clone(),
                id,
                consumer: self.id,
            }),
        ))
    }
}

#[async_trait]
impl OrderConsumer for InProcessConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(d) = self.try_take() {
                return Some(d);
            }
            notified.await;
        }
    }

    async fn close(self: Box<Self>) {}
}

impl Drop for InProcessConsumer {
    fn drop(&mut self) {
        // What this consumer left unsettled goes back to the front, in order.
        let mut s = self.shared.lock();
        let mut back: Vec<(u64, Vec<u8>)> = s
            .unacked
            .iter()
            .filter(|(_, (c, _))| *c == self.id)
            .map(|(id, (_, body))| (*id, body.clone()))
            .collect();
        back.sort_by_key(|(id, _)| *id);
        for (id, _) in &back {
            s.unacked.remove(id);
        }
        for item in back.into_iter().rev() {
            s.ready.push_front(item);
        }
        drop(s);
        self.shared.notify.notify_waiters();
    }
}

struct InProcessAcker {
    shared: Arc<Shared>,
    id: u64,
    consumer: u64,
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn ack(self: Box<Self>) {
        self.shared.lock().unacked.remove(&self.id);
        self.shared.notify.notify_waiters();
    }

    async fn ack_through(self: Box<Self>) {
        // Delivery ids grow in delivery order, as AMQP's tags do.
        self.shared
            .lock()
            .unacked
            .retain(|id, (c, _)| *c != self.consumer || *id > self.id);
        self.shared.notify.notify_waiters();
    }

    async fn dead_letter(self: Box<Self>) {
        let mut s = self.shared.lock();
        if let Some((_, body)) = s.unacked.remove(&self.id) {
            s.dead.push(body);
        }
        drop(s);
        self.shared.notify.notify_waiters();
    }
}
