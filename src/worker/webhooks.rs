//! The webhook dispatcher: delivers the order store's outbox to the shop.
//!
//! Every order change writes its event row in the change's own transaction
//! (see [`crate::backend::outbox`]); this worker claims due rows, POSTs each
//! to the configured URL, signed the Standard Webhooks way, and records the
//! result: delivered on a 2xx, otherwise due again after an exponential
//! back-off with full jitter (capped), and dead after the configured number
//! of attempts. Delivery is at least once: a node that dies after the POST
//! but before recording it sends the event again when its lease ends, so
//! receivers de-duplicate on `webhook-id` (the event id).
//!
//! Signing ([Standard Webhooks](https://www.standardwebhooks.com/)):
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`
//! with `webhook-id` and `webhook-timestamp` (Unix seconds at the attempt)
//! beside it. The key is the base64 after `whsec_` for a secret in that
//! form (what the Standard Webhooks libraries take), else the secret's
//! bytes. Hand-written rather than a crate: it is one HMAC over a string,
//! and the `hmac`/`sha2`/`base64` crates it uses are already here.
//!
//! The client is hyper-util's small HTTP/1 client, `http://` only (as for
//! the captcha hook): TLS to the shop goes through a local proxy or sidecar.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{header, Method, Request, Uri};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Secret;
use crate::backend::outbox::{event_type, AttemptRecord, DeliveryState, OutboxEvent};
use crate::engine::Engine;

/// Events claimed per round; a full round starts the next one at once.
const CLAIM_BATCH: usize = 32;
/// Pause between rounds that found nothing due.
const POLL: Duration = Duration::from_millis(200);
/// Largest answer body read (then dropped) so the connection can be reused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Where and how order events are delivered.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The shop's endpoint (`http://` only).
    pub url: Uri,
    /// The signing secret (`whsec_<base64>`, or any text).
    pub secret: Secret,
    /// Bound on one attempt (connect, send, answer).
    pub timeout: Duration,
    /// Attempts before an event is dead.
    pub max_attempts: u32,
    /// First back-off ceiling; it doubles per failed attempt.
    pub backoff_base: Duration,
    /// Highest back-off ceiling.
    pub backoff_max: Duration,
}

impl WebhookSettings {
    /// Defaults for `url` and `secret`: 5 s per attempt, 12 attempts, back-off
    /// ceilings from 1 s doubling up to 10 min (about an hour in all).
    pub fn new(url: Uri, secret: Secret) -> Self {
        Self {
            url,
            secret,
            timeout: Duration::from_secs(5),
            max_attempts: 12,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
        }
    }

    /// How long a claim holds an event: past any attempt's end.
    fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(1)
    }
}

/// Signs deliveries with the shop's secret (Standard Webhooks, `v1`).
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// The signer of `secret`: `whsec_<base64>` gives the decoded bytes as
    /// the key, anything else its UTF-8 bytes.
    ///
    /// # Errors
    /// An empty secret, or a `whsec_` one whose rest is not base64.
    pub fn new(secret: &Secret) -> anyhow::Result<Self> {
        let raw = secret.expose();
        anyhow::ensure!(!raw.is_empty(), "the webhook secret is empty");
        let key = match raw.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .context("the webhook secret starts with whsec_ but the rest is not base64")?,
            None => raw.as_bytes().to_vec(),
        };
        anyhow::ensure!(!key.is_empty(), "the webhook secret is empty");
        Ok(Self { key })
    }

    /// `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }
}

/// The JSON body of `event`: `{"id", "type", "timestamp", "data": order}`,
/// the order as `GET /api/v1/orders/{id}` shows it at the event. The same
/// bytes on every attempt.
pub fn payload(event: &OutboxEvent) -> Vec<u8> {
    let body = serde_json::json!({
        "id": event.event_id,
        "type": event_type(event.order.status),
        "timestamp": crate::domain::rfc3339(event.occurred_at_ms),
        "data": crate::http::OrderBody::from(event.order.clone()),
    });
    serde_json::to_vec(&body).expect("a JSON value serializes")
}

/// Delay before the attempt after failed attempt `attempt` (1-based):
/// uniform in `0..=min(max, base * 2^(attempt-1))` ("full jitter"), so a
/// receiver that comes back is not hit by every event at once.
pub fn backoff(attempt: u32, base: Duration, max: Duration, rng: &mut impl rand::Rng) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(factor).min(max);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=ms))
}

/// Starts the dispatcher over `engine`'s store.
///
/// # Errors
/// When the secret is unusable (empty, or bad `whsec_` base64).
pub fn spawn_webhook_dispatcher(
    engine: Arc<Engine>,
    settings: WebhookSettings,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let signer = Signer::new(&settings.secret).context("--webhook-secret")?;
    let client = crate::outbound::client(settings.timeout);
    tracing::info!(url = %settings.url, "webhooks on");
    let dispatcher = Arc::new(Dispatcher {
        engine,
        client,
        signer,
        settings,
    });
    Ok(tokio::spawn(async move { dispatcher.run(stop).await }))
}

struct Dispatcher {
    engine: Arc<Engine>,
    client: crate::outbound::HttpClient,
    signer: Signer,
    settings: WebhookSettings,
}

impl Dispatcher {
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let lease_ms = i64::try_from(self.settings.lease().as_millis()).unwrap_or(i64::MAX);
        loop {
            let now = self.engine.clock().now_ms();
            let claimed = self
                .engine
                .store()
                .claim_webhooks(now, lease_ms, CLAIM_BATCH)
                .await;
            let mut full = false;
            match claimed {
                Ok(events) if !events.is_empty() => {
                    full = events.len() == CLAIM_BATCH;
                    // A stop lets the round in flight finish (each attempt
                    // is bounded by the timeout) so a clean restart sends
                    // nothing twice; if the app aborts it first, the leases
                    // run out and the next start sends those events again.
                    futures::future::join_all(events.into_iter().map(|e| {
                        let this = self.clone();
                        async move { this.deliver(e).await }
                    }))
                    .await;
                    if stop.is_cancelled() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "claiming webhook events failed; will retry"),
            }
            if full {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// One attempt at `event`, then its record.
    async fn deliver(&self, event: OutboxEvent) {
        let (status, error) = self.post(&event).await;
        let now_ms = self.engine.clock().now_ms();
        let delivered = error.is_none();
        let (state, next_attempt_at_ms) = if delivered {
            (DeliveryState::Delivered, now_ms)
        } else if event.attempt >= self.settings.max_attempts {
            (DeliveryState::Dead, now_ms)
        } else {
            let wait = backoff(
                event.attempt,
                self.settings.backoff_base,
                self.settings.backoff_max,
                &mut rand::rng(),
            );
            let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            (DeliveryState::Pending, now_ms.saturating_add(wait_ms))
        };
        metrics::counter!("flashsale_webhook_attempts_total", "outcome" => state.as_str())
            .increment(1);
        if let Some(error) = &error {
            tracing::debug!(event_id = %event.event_id, attempt = event.attempt, %error,
                state = state.as_str(), "webhook attempt failed");
        }
        let record = AttemptRecord {
            event_id: event.event_id,
            attempt: event.attempt,
            state,
            status,
            error,
            next_attempt_at_ms,
            now_ms,
        };
        match self.engine.store().record_webhook_attempt(record).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!("webhook attempt recorded after its lease ended"),
            // The lease runs out and the event is sent again: at least once.
            Err(e) => tracing::warn!(error = %e, "recording a webhook attempt failed"),
        }
    }

    /// POSTs `event`; `(status, None)` on a 2xx, else the failure.
    async fn post(&self, event: &OutboxEvent) -> (Option<u16>, Option<String>) {
        let body = payload(event);
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = self.signer.sign(&event.event_id, timestamp, &body);
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.settings.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "flashsale-webhooks")
            .header("webhook-id", &event.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Body::from(body));
        let request = match request {
            Ok(r) => r,
            Err(e) => return (None, Some(format!("building the request: {e}"))),
        };
        let call = async {
            let answer = self.client.request(request).await.map_err(|e| chain(&e))?;
            let status = answer.status();
            // Read (and drop) the answer so the connection goes back to the pool.
            let _ = axum::body::to_bytes(Body::new(answer.into_body()), MAX_ANSWER_BYTES).await;
            Ok::<_, String>(status)
        };
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(status)) if status.is_success() => (Some(status.as_u16()), None),
            Ok(Ok(status)) => (
                Some(status.as_u16()),
                Some(format!("the receiver answered {status}")),
            ),
            Ok(Err(error)) => (None, Some(error)),
            Err(_) => (
                None,
                Some(format!(
                    "no answer within {} ms",
                    self.settings.timeout.as_millis()
                )),
            ),
        }
    }
}

/// An error and its causes on one line (hyper's own text is only the top).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Order, OrderStatus};

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (its test
        // vector): secret, id, timestamp and body as published there.
        let signer = Signer::new(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn plain_secrets_sign_with_their_bytes_and_bad_ones_are_refused() {
        let a = Signer::new(&Secret::new("hunter2")).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("hunter2");
        let b = Signer::new(&Secret::new(format!("whsec_{b64}"))).unwrap();
        assert_eq!(a.sign("id", 1, b"x"), b.sign("id", 1, b"x"));
        assert_ne!(a.sign("id", 1, b"x"), a.sign("id", 2, b"x"));
        assert!(Signer::new(&Secret::new("")).is_err());
        assert!(Signer::new(&Secret::new("whsec_not base64!")).is_err());
        assert!(format!("{a:?}").contains("redacted"));
    }

    #[test]
    fn backoff_is_jittered_under_a_doubling_capped_ceiling() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut rng = rand::rng();
        for attempt in 1..40 {
            let ceiling = (100u64 << (attempt - 1).min(20)).min(1000);
            for _ in 0..50 {
                let d = backoff(attempt, base, max, &mut rng);
                assert!(d.as_millis() as u64 <= ceiling, "{attempt}: {d:?}");
            }
        }
        // Jitter: not always the same delay.
        let seen: std::collections::HashSet<_> =
            (0..50).map(|_| backoff(5, base, max, &mut rng)).collect();
        assert!(seen.len() > 1);
    }

    #[test]
    fn payload_shows_the_order_at_the_event() {
        let event = OutboxEvent {
            event_id: "evt_9_paid".into(),
            occurred_at_ms: 1_700_000_000_000,
            attempt: 1,
            order: Order {
                id: 9,
                sale_id: 3,
                user_id: "alice".into(),
                quantity: 2,
                status: OrderStatus::Paid,
                idempotency_key: None,
                created_at_ms: 1_699_999_999_000,
                updated_at_ms: 1_700_000_000_000,
                expires_at_ms: None,
            },
        };
        let v: serde_json::Value = serde_json::from_slice(&payload(&event)).unwrap();
        assert_eq!(v["id"], "evt_9_paid");
        assert_eq!(v["type"], "order.paid");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["data"]["order_id"], "9");
        assert_eq!(v["data"]["status"], "paid");
        assert_eq!(v["data"]["user_id"], "alice");
        assert_eq!(payload(&event), payload(&event));
    }
}
