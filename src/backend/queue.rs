//! The order-queue seam: accepted orders on their way to the order writer.
//!
//! [`OrderQueue`] publishes one message (an order, or a JSON array of
//! orders) and returns only once the queue holds it durably (the broker's
//! confirm); consumers take deliveries with an explicit acknowledgement, so
//! a writer that dies before it stored a batch leaves it to be redelivered.
//! Implementations: RabbitMQ ([`super::amqp::AmqpQueue`]) and the in-process
//! queue ([`super::memory::InProcessQueue`]) that engine tests and the
//! contract suite run against.

use async_trait::async_trait;

/// Failure to reach the queue or a refused publish.
#[derive(Debug, Clone, thiserror::Error)]
#[error("order queue: {0}")]
pub struct QueueError(String);

impl QueueError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Messages waiting on the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready for a consumer (as of now).
    pub ready: u32,
    /// Delivered to a consumer and not yet acknowledged (`None` when the
    /// queue cannot tell); for RabbitMQ, [`DepthSample::unacked`].
    pub unacked: Option<u32>,
    /// On the dead-letter queue.
    pub dead: u32,
    /// Ready and unacknowledged counted together, at one instant no earlier
    /// than [`DepthSample::taken_after`] (`None` when the queue cannot
    /// tell unacked deliveries): what the re-seed needs to know that
    /// nothing is in flight.
    pub sample: Option<DepthSample>,
    /// True when this reading has no [`Self::sample`] although the queue
    /// can count unacknowledged deliveries and will soon again (the
    /// broker's API was slow or had not sampled yet): a re-seed waits
    /// rather than falling back to the weaker check.
    pub sample_pending: bool,
}

/// One consistent count of a queue's ready and unacknowledged messages.
///
/// RabbitMQ's management API reports counts the broker sampled (every
/// `collect_statistics_interval`, 5 s by default), not live ones, so a
/// sample carries a lower bound on when it was taken; the in-process queue
/// counts live (`taken_after` is the call's time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthSample {
    /// Ready for a consumer at that instant.
    pub ready: u32,
    /// Delivered and not yet acknowledged at that instant.
    pub unacked: u32,
    /// The sample was taken at this time or later.
    pub taken_after: std::time::Instant,
}

/// How a consumer settles one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Done with it: the queue forgets it.
    async fn ack(self: Box<Self>);
    /// Done with it and with every delivery its consumer received before
    /// it and has not settled yet: one acknowledgement for a whole batch
    /// (AMQP's `multiple` flag). Settle the others of the batch that must
    /// not be acked (dead letters) first.
    async fn ack_through(self: Box<Self>);
    /// It is not an order (or the store refused it for good): it goes to the
    /// dead-letter queue for a person, never redelivered.
    async fn dead_letter(self: Box<Self>);
}

/// One message taken from the queue.
pub struct Delivery {
    /// The message body.
    pub body: Vec<u8>,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery settled through `acker`.
    pub fn new(body: Vec<u8>, acker: Box<dyn Acker>) -> Self {
        Self { body, acker }
    }

    /// Acknowledges it.
    pub async fn ack(self) {
        self.acker.ack().await;
    }

    /// Acknowledges it and every earlier unsettled delivery of its
    /// consumer (see [`Acker::ack_through`]).
    pub async fn ack_through(self) {
        self.acker.ack_through().await;
    }

    /// Sends it to the dead-letter queue.
    pub async fn dead_letter(self) {
        self.acker.dead_letter().await;
    }
}

/// A consumer of the orders queue. Deliveries not settled when it is closed
/// or dropped go back to the queue for another consumer.
#[async_trait]
pub trait OrderConsumer: Send {
    /// The next delivery; `None` once the consumer is cut off (reconnect).
    async fn next(&mut self) -> Option<Delivery>;
    /// Closes it, within a bounded time.
    async fn close(self: Box<Self>);
}

/// Every node's order events, as they are published (best effort: a
/// subscription that was cut off misses what was published meanwhile).
#[async_trait]
pub trait EventSubscription: Send {
    /// The next event message's body; `None` once the subscription is cut
    /// off (subscribe again).
    async fn next(&mut self) -> Option<Vec<u8>>;
}

/// The durable queue of accepted orders, plus best-effort order events.
#[async_trait]
pub trait OrderQueue: Send + Sync + std::fmt::Debug {
    /// Puts one message on the orders queue; `Ok` only once the queue holds
    /// it durably.
    ///
    /// # Errors
    /// [`QueueError`] when the queue is unreachable or did not confirm.
    async fn publish_orders(&self, body: &[u8]) -> Result<(), QueueError>;

    /// Publishes an order event (`order.accepted`, `order.paid`, …) for the
    /// shop's other systems; best effort.
    ///
    /// # Errors
    /// [`QueueError`] when the queue is unreachable.
    async fn publish_event(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError>;

    /// Subscribes to the order events every node publishes (for the
    /// buyers' streams).
    ///
    /// # Errors
    /// [`QueueError`] when the queue is unreachable.
    async fn subscribe_events(&self) -> Result<Box<dyn EventSubscription>, QueueError>;

    /// Opens a consumer with at most `prefetch` unsettled deliveries.
    ///
    /// # Errors
    /// [`QueueError`] when the queue is unreachable.
    async fn consume(&self, tag: &str, prefetch: u16)
        -> Result<Box<dyn OrderConsumer>, QueueError>;

    /// Messages waiting.
    ///
    /// # Errors
    /// [`QueueError`] when the queue is unreachable.
    async fn depth(&self) -> Result<QueueDepth, QueueError>;

    /// False while the queue is known to be unreachable: purchases are then
    /// refused before any stock is taken. Behind a
    /// [`super::breaker::BreakerQueue`] (the distributed mode) this is the
    /// circuit breaker's answer.
    fn is_up(&self) -> bool {
        true
    }

    /// Re-checks the queue (reconnecting when down); whether it is up.
    async fn probe(&self) -> bool {
        true
    }

    /// Deletes the queue's topology (tests clean up).
    ///
    /// # Errors
    /// [`QueueError`] when the queue is unreachable.
    async fn delete_topology(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// The state of the circuit breaker in front of this queue, if any.
    fn breaker_state(&self) -> Option<super::breaker::BreakerState> {
        None
    }
}
