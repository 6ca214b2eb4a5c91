//! The distributed mode's feed of buyer streams: every node's order events,
//! from the order queue's events exchange, into this node's
//! [`BuyerStreams`](crate::engine::buyer_stream::BuyerStreams), so a buyer
//! listening on one node hears of an order accepted (stored by any node's
//! writer), paid, cancelled or expired on any other.
//!
//! Best effort: while the subscription is down (the broker away) events are
//! missed, and the streams' clients re-read their orders when told so.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::queue::{EventSubscription, OrderQueue};
use crate::engine::buyer_stream::OrderEvent;
use crate::engine::Engine;

/// Wait before subscribing again after the subscription failed or ended.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Feeds the node's buyer streams from `first` (a subscription made
/// before the node serves, so a buyer's stream opened on a node that
/// answers hears every event from then on), then from a new subscription
/// whenever one is cut off, until `stop`.
pub fn spawn_buyer_events(
    engine: Arc<Engine>,
    queue: Arc<dyn OrderQueue>,
    first: Option<Box<dyn EventSubscription>>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut first = first;
        loop {
            let subscribed = match first.take() {
                Some(s) => Ok(s),
                None => tokio::select! {
                    s = queue.subscribe_events() => s,
                    () = stop.cancelled() => return,
                },
            };
            match subscribed {
                Ok(mut events) => loop {
                    let body = tokio::select! {
                        b = events.next() => b,
                        () = stop.cancelled() => return,
                    };
                    let Some(body) = body else {
                        tracing::debug!("order-event subscription ended; subscribing again");
                        break;
                    };
                    // No stream open on this node: nobody to tell, so the
                    // batch is not parsed (about 4k instructions an order
                    // on an API node that serves no stream).
                    if engine.buyer_streams().open() == 0 {
                        continue;
                    }
                    match serde_json::from_slice::<Vec<OrderEvent>>(&body) {
                        Ok(batch) => engine.buyer_streams().publish(batch),
                        Err(e) => tracing::debug!(error = %e, "an order event that is not one"),
                    }
                },
                Err(e) => tracing::debug!(error = %e, "subscribing to order events"),
            }
            tokio::select! {
                () = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
                () = stop.cancelled() => return,
            }
        }
    })
}
