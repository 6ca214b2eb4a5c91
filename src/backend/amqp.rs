//! The order queue on RabbitMQ: [`AmqpQueue`].
//!
//! Topology, all durable, every name under one prefix (tests give each run
//! its own):
//!
//! - `<prefix>.orders`: a quorum queue of accepted orders (replicated,
//!   fsynced before the publisher confirm). Poison messages — a consumer
//!   rejects them without requeue — go to the dead-letter exchange.
//! - `<prefix>.dlx` (fanout) → `<prefix>.orders.dlq`: the dead letters, kept
//!   for a person to look at.
//! - `<prefix>.events` (topic): order events for the shop's own systems, with
//!   routing keys `order.accepted`, `order.paid`, `order.expired`,
//!   `order.cancelled`.
//!
//! Publishing waits for the broker's confirm: an order is "queued" only once
//! RabbitMQ has it on disk. A lost connection is re-opened on the next call;
//! [`OrderQueue::is_up`] is the circuit breaker purchases consult so that,
//! while the broker is away, no stock is taken for a `201` that cannot be
//! given.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::sync::Mutex;

use super::queue::{Acker, Delivery, OrderConsumer, OrderQueue, QueueDepth, QueueError};

pub mod management;

impl From<lapin::Error> for QueueError {
    fn from(e: lapin::Error) -> Self {
        Self::new(format!("amqp: {e}"))
    }
}

/// Settings of the RabbitMQ order queue (URLs redacted in `Debug`).
#[derive(Clone)]
pub struct AmqpSettings {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// First part of every exchange and queue name.
    pub prefix: String,
    /// Where the broker's management HTTP API is, for the unacknowledged
    /// count AMQP does not report.
    pub management: ManagementApi,
}

impl AmqpSettings {
    /// Settings for `url` and `prefix`, the management API derived from
    /// the URL.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            management: ManagementApi::Derived,
        }
    }
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &super::sql::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("management", &self.management)
            .finish()
    }
}

/// Where [`AmqpQueue::depth`] reads unacknowledged deliveries (RabbitMQ's
/// management plugin, `GET /api/queues/{vhost}/{queue}`).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum ManagementApi {
    /// `http://` the AMQP URL's host, port 15672, the AMQP URL's user and
    /// password.
    #[default]
    Derived,
    /// This `http://[user:pass@]host:port[/prefix]` URL; without
    /// credentials, the AMQP URL's are sent.
    At(String),
    /// Not asked: unacknowledged deliveries are unknown.
    Off,
}

impl ManagementApi {
    /// Reads a setting: empty = derived, `off` = off, else a URL (checked
    /// when the queue connects).
    pub fn parse(raw: &str) -> Self {
        match raw.trim() {
            "" => Self::Derived,
            "off" | "none" => Self::Off,
            url => Self::At(url.to_owned()),
        }
    }
}

impl std::fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Derived => f.write_str("Derived"),
            Self::At(url) => f
                .debug_tuple("At")
                .field(&super::sql::redact_url(url))
                .finish(),
            Self::Off => f.write_str("Off"),
        }
    }
}

/// The names [`AmqpQueue`] declares.
#[derive(Debug, Clone)]
pub struct Names {
    /// Accepted orders.
    pub orders: String,
    /// Dead letters of the orders queue.
    pub dlq: String,
    /// The dead-letter exchange.
    pub dlx: String,
    /// Order events (topic).
    pub events: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            orders: format!("{prefix}.orders"),
            dlq: format!("{prefix}.orders.dlq"),
            dlx: format!("{prefix}.dlx"),
            events: format!("{prefix}.events"),
        }
    }
}

/// Accepted orders on a durable RabbitMQ queue, plus order events.
pub struct AmqpQueue {
    url: String,
    names: Names,
    publisher: Mutex<Option<(Connection, Channel)>>,
    up: AtomicBool,
    management: Option<management::Api>,
}

impl std::fmt::Debug for AmqpQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpQueue")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

async fn connect(url: &str) -> Result<Connection, QueueError> {
    let connecting = Connection::connect(url, ConnectionProperties::default());
    tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| QueueError::new("connecting timed out"))?
        .map_err(Into::into)
}

fn table(entries: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    t
}

impl AmqpQueue {
    /// Connects and declares the topology (idempotent).
    ///
    /// # Errors
    /// When the broker cannot be reached or refuses a declaration.
    pub async fn connect(settings: &AmqpSettings) -> Result<Self, QueueError> {
        let names = Names::new(&settings.prefix);
        let management =
            management::Api::new(&settings.url, &settings.management, &names.orders)
                .map_err(|e| QueueError::new(format!("the management API setting: {e}")))?;
        let queue = Self {
            url: settings.url.clone(),
            names,
            publisher: Mutex::new(None),
            up: AtomicBool::new(false),
            management,
        };
        let conn = connect(&queue.url).await?;
        let ch = conn.create_channel().await?;
        queue.declare(&ch).await?;
        let closing = conn.close(200, "declared".into());
        let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
        queue.channel().await?;
        Ok(queue)
    }

    async fn declare(&self, ch: &Channel) -> Result<(), QueueError> {
        let n = &self.names;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        ch.exchange_declare(
            n.dlx.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            n.events.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            n.dlq.as_str().into(),
            QueueDeclareOptions::durable(),
            table(&[("x-queue-type", "quorum")]),
        )
        .await?;
        ch.queue_bind(
            n.dlq.as_str().into(),
            n.dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            n.orders.as_str().into(),
            QueueDeclareOptions::durable(),
            table(&[
                ("x-queue-type", "quorum"),
                ("x-dead-letter-exchange", &n.dlx),
            ]),
        )
        .await?;
        Ok(())
    }

    /// A live publishing channel in confirm mode, re-opened when lost.
    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut slot = self.publisher.lock().await;
        if let Some((conn, ch)) = slot.as_ref() {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        *slot = None;
        // Bounded as a whole: a broker that accepts the TCP connection while
        // still booting may leave a handshake step unanswered.
        let opened = tokio::time::timeout(Duration::from_secs(5), async {
            let conn = connect(&self.url).await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, QueueError>((conn, ch))
        })
        .await
        .unwrap_or_else(|_| Err(QueueError::new("opening a channel timed out")));
        match opened {
            Ok((conn, ch)) => {
                *slot = Some((conn, ch.clone()));
                self.up.store(true, Ordering::Release);
                Ok(ch)
            }
            Err(e) => {
                self.up.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    async fn publish(
        &self,
        exchange: &str,
        key: &str,
        mandatory: bool,
        payload: &[u8],
    ) -> Result<(), QueueError> {
        let ch = self.channel().await?;
        let sent = async {
            let pending = ch
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    payload,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await?;
            if !mandatory {
                // Events: handed to the broker, not awaited (best effort).
                return Ok(());
            }
            let confirm = pending.await?;
            if confirm.is_nack() {
                return Err(QueueError::new("the broker refused the message (nack)"));
            }
            if confirm.take_message().is_some() {
                return Err(QueueError::new(format!(
                    "no queue took the message ({key})"
                )));
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(5), sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.mark_down().await;
                Err(e)
            }
            Err(_) => {
                self.mark_down().await;
                Err(QueueError::new("no publisher confirm within 5 s"))
            }
        }
    }

    async fn mark_down(&self) {
        self.up.store(false, Ordering::Release);
        *self.publisher.lock().await = None;
    }
}

#[async_trait]
impl OrderQueue for AmqpQueue {
    async fn publish_orders(&self, body: &[u8]) -> Result<(), QueueError> {
        self.publish("", &self.names.orders, true, body).await
    }

    /// Sent without waiting for the confirm; an event no queue is bound to
    /// is dropped by the broker.
    async fn publish_event(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError> {
        self.publish(&self.names.events, routing_key, false, body)
            .await
    }

    /// A queue of the subscriber's own (server-named, exclusive, deleted
    /// with its connection) bound to every order event; deliveries need no
    /// ack (events are best effort).
    async fn subscribe_events(
        &self,
    ) -> Result<Box<dyn super::queue::EventSubscription>, QueueError> {
        tokio::time::timeout(Duration::from_secs(10), async {
            let conn = connect(&self.url).await?;
            let ch = conn.create_channel().await?;
            let queue = ch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            ch.queue_bind(
                queue.name().as_str().into(),
                self.names.events.as_str().into(),
                "order.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            let consumer = ch
                .basic_consume(
                    queue.name().as_str().into(),
                    "buyer-streams".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok(Box::new(AmqpEvents {
                _conn: conn,
                _channel: ch,
                consumer,
            }) as Box<dyn super::queue::EventSubscription>)
        })
        .await
        .unwrap_or_else(|_| Err(QueueError::new("subscribing to events timed out")))
    }

    /// Each consumer has its own connection, so a writer's stall never
    /// holds up the publishers' channel.
    async fn consume(
        &self,
        tag: &str,
        prefetch: u16,
    ) -> Result<Box<dyn OrderConsumer>, QueueError> {
        tokio::time::timeout(Duration::from_secs(10), async {
            let conn = connect(&self.url).await?;
            let ch = conn.create_channel().await?;
            ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let consumer = ch
                .basic_consume(
                    self.names.orders.as_str().into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok(Box::new(AmqpConsumer {
                conn,
                channel: ch,
                consumer,
            }) as Box<dyn OrderConsumer>)
        })
        .await
        .unwrap_or_else(|_| Err(QueueError::new("opening the consumer timed out")))
    }

    /// Ready and dead messages by a passive `queue.declare` (live counts);
    /// unacknowledged ones, which AMQP does not report, from the management
    /// API when it answers within [`management::TIMEOUT`] (a sampled count,
    /// see [`management`]); `None` otherwise.
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        // Both at once: the API's answer does not wait for the channel's.
        let (live, sample) = match &self.management {
            Some(api) => tokio::join!(self.live_depth(), api.sample()),
            None => (self.live_depth().await, None),
        };
        let mut depth = live?;
        depth.unacked = sample.map(|s| s.unacked);
        depth.sample = sample;
        depth.sample_pending = sample.is_none()
            && self
                .management
                .as_ref()
                .is_some_and(management::Api::worth_waiting_for);
        Ok(depth)
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    async fn probe(&self) -> bool {
        self.channel().await.is_ok()
    }

    async fn delete_topology(&self) -> Result<(), QueueError> {
        let ch = self.channel().await?;
        for q in [&self.names.orders, &self.names.dlq] {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for x in [&self.names.dlx, &self.names.events] {
            ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

impl AmqpQueue {
    /// Ready and dead-lettered messages over AMQP.
    async fn live_depth(&self) -> Result<QueueDepth, QueueError> {
        let ch = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let orders = ch
            .queue_declare(
                self.names.orders.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await?;
        let dlq = ch
            .queue_declare(
                self.names.dlq.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await?;
        Ok(QueueDepth {
            ready: orders.message_count(),
            unacked: None,
            dead: dlq.message_count(),
            sample: None,
            sample_pending: false,
        })
    }
}

/// A consumer on its own connection.
struct AmqpConsumer {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
}

#[async_trait]
impl OrderConsumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        let d = self.consumer.next().await?.ok()?;
        Some(Delivery::new(d.data.clone(), Box::new(AmqpAcker(d))))
    }

    async fn close(self: Box<Self>) {
        // A synchronous round trip first: the broker answers it only after
        // processing every ack sent before it on this channel, so an acked
        // delivery is never requeued by the close (lapin sends close frames
        // ahead of queued ones). A connection the broker already dropped
        // may never answer: don't let it hold up a graceful stop.
        // The cancel first: on a quorum queue an ack the channel has taken
        // is only forwarded to the queue, and a close can overtake it (the
        // acked delivery then comes back); the cancel is answered once the
        // queue has applied what the channel sent it before.
        let closing = async {
            let _ = self
                .channel
                .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
                .await;
            let _ = self.channel.basic_qos(1, BasicQosOptions::default()).await;
            let _ = self.channel.close(200, "consumer closing".into()).await;
            let _ = self.conn.close(200, "consumer closing".into()).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
    }
}

/// A subscription to the events exchange, on a connection of its own.
struct AmqpEvents {
    _conn: Connection,
    _channel: Channel,
    consumer: Consumer,
}

#[async_trait]
impl super::queue::EventSubscription for AmqpEvents {
    async fn next(&mut self) -> Option<Vec<u8>> {
        let d = self.consumer.next().await?.ok()?;
        Some(d.data)
    }
}

struct AmqpAcker(lapin::message::Delivery);

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) {
        let _ = self.0.ack(BasicAckOptions::default()).await;
    }

    /// `basic.ack` with `multiple`: the broker settles every delivery of
    /// this channel up to this one's tag in one step (one settle command
    /// of the quorum queue instead of one per message).
    async fn ack_through(self: Box<Self>) {
        let _ = self.0.ack(BasicAckOptions { multiple: true }).await;
    }

    async fn dead_letter(self: Box<Self>) {
        let _ = self.0.reject(BasicRejectOptions { requeue: false }).await;
    }
}
