//! The order-queue contract: RabbitMQ and the in-process queue pass the
//! same suite.
//!
//! What a queue must do: hand every published message to a consumer, keep a
//! delivery until it is acknowledged (a consumer closed with unsettled
//! deliveries gives them back), send dead letters aside for good, bound
//! the unsettled deliveries by the prefetch, lose nothing under
//! concurrent publishers, and hand every order event to every subscriber
//! (the buyers' streams of every node), apart from the orders.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flashsale::backend::amqp::{AmqpQueue, AmqpSettings, ManagementApi};
use flashsale::backend::memory::InProcessQueue;
use flashsale::backend::queue::{OrderConsumer, OrderQueue};

const WAIT: Duration = Duration::from_secs(10);

async fn next(c: &mut Box<dyn OrderConsumer>) -> Vec<u8> {
    let d = tokio::time::timeout(WAIT, c.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the consumer is open");
    let body = d.body.clone();
    d.ack().await;
    body
}

/// Waits until the queue reports `ready` ready and `dead` dead messages.
async fn depth_becomes(q: &dyn OrderQueue, ready: u32, dead: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = q.depth().await.unwrap();
        if d.ready == ready && d.dead == dead {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "depth {d:?}, expected ready {ready} dead {dead}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn contract(q: Arc<dyn OrderQueue>) {
    delivers_what_was_published(&*q).await;
    redelivers_what_a_closed_consumer_left_unsettled(&*q).await;
    dead_letters_are_kept_aside(&*q).await;
    prefetch_bounds_unsettled_deliveries(&*q).await;
    concurrent_publishers_lose_nothing(q.clone()).await;
    every_subscriber_hears_every_event(&*q).await;
    ack_through_settles_the_earlier_deliveries_of_its_consumer(&*q).await;
}

/// One ack for a batch (what the order writer sends): it settles the
/// earlier deliveries of its consumer and itself, not a dead letter
/// settled before it, and not what another consumer holds.
async fn ack_through_settles_the_earlier_deliveries_of_its_consumer(q: &dyn OrderQueue) {
    let before = q.depth().await.unwrap();
    for i in 0..4u8 {
        q.publish_orders(&[b'b', b'0' + i]).await.unwrap();
    }
    let mut c = q.consume("contract-f", 4).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap());
    }
    let bodies: Vec<Vec<u8>> = held.iter().map(|d| d.body.clone()).collect();
    assert_eq!(
        bodies,
        [b"b0", b"b1", b"b2", b"b3"],
        "{:?}",
        bodies
            .iter()
            .map(|b| String::from_utf8_lossy(b))
            .collect::<Vec<_>>()
    );
    let last = held.pop().unwrap();
    let poison = held.pop().unwrap();
    // Another consumer's delivery is not settled by this consumer's ack.
    q.publish_orders(b"other").await.unwrap();
    let mut other = q.consume("contract-g", 1).await.unwrap();
    let theirs = tokio::time::timeout(WAIT, other.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(theirs.body, b"other");
    poison.dead_letter().await;
    drop(held);
    last.ack_through().await;
    c.close().await;
    drop(theirs);
    other.close().await;
    // Only "other" comes back; b0, b1 and b3 are gone, b2 is a dead letter.
    let mut again = q.consume("contract-h", 10).await.unwrap();
    assert_eq!(next(&mut again).await, b"other");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), again.next())
            .await
            .is_err(),
        "a delivery settled by ack_through came back"
    );
    again.close().await;
    depth_becomes(q, before.ready, before.dead + 1).await;
}

async fn every_subscriber_hears_every_event(q: &dyn OrderQueue) {
    let before = q.depth().await.unwrap();
    let mut a = q.subscribe_events().await.unwrap();
    let mut b = q.subscribe_events().await.unwrap();
    q.publish_event("order.accepted", b"[1]").await.unwrap();
    q.publish_event("order.paid", b"[2]").await.unwrap();
    for s in [&mut a, &mut b] {
        for want in [b"[1]", b"[2]"] {
            let got = tokio::time::timeout(WAIT, s.next())
                .await
                .expect("an event within 10 s")
                .expect("the subscription is open");
            assert_eq!(got, want);
        }
    }
    // Events are not orders: the orders queue holds none of them.
    depth_becomes(q, before.ready, before.dead).await;
}

async fn delivers_what_was_published(q: &dyn OrderQueue) {
    q.publish_orders(b"one").await.unwrap();
    q.publish_orders(b"two").await.unwrap();
    let mut c = q.consume("contract-a", 10).await.unwrap();
    assert_eq!(next(&mut c).await, b"one");
    assert_eq!(next(&mut c).await, b"two");
    c.close().await;
    depth_becomes(q, 0, 0).await;
}

async fn redelivers_what_a_closed_consumer_left_unsettled(q: &dyn OrderQueue) {
    q.publish_orders(b"kept").await.unwrap();
    let mut c = q.consume("contract-b", 10).await.unwrap();
    let d = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
    assert_eq!(d.body, b"kept");
    // Not acked: the consumer goes away (a writer that died).
    drop(d);
    c.close().await;
    let mut again = q.consume("contract-b2", 10).await.unwrap();
    assert_eq!(next(&mut again).await, b"kept", "redelivered");
    again.close().await;
    depth_becomes(q, 0, 0).await;
}

async fn dead_letters_are_kept_aside(q: &dyn OrderQueue) {
    q.publish_orders(b"poison").await.unwrap();
    q.publish_orders(b"fine").await.unwrap();
    let mut c = q.consume("contract-c", 10).await.unwrap();
    let d = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
    assert_eq!(d.body, b"poison");
    d.dead_letter().await;
    assert_eq!(next(&mut c).await, b"fine", "the next message flows");
    c.close().await;
    depth_becomes(q, 0, 1).await;
}

async fn prefetch_bounds_unsettled_deliveries(q: &dyn OrderQueue) {
    for i in 0..5u8 {
        q.publish_orders(&[b'p', b'0' + i]).await.unwrap();
    }
    let mut c = q.consume("contract-d", 2).await.unwrap();
    let first = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
    let second = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.next())
            .await
            .is_err(),
        "a third delivery came while two were unsettled"
    );
    first.ack().await;
    let third = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
    second.ack().await;
    third.ack().await;
    let rest: BTreeSet<Vec<u8>> = [next(&mut c).await, next(&mut c).await].into();
    assert_eq!(rest.len(), 2);
    c.close().await;
    depth_becomes(q, 0, 1).await;
}

async fn concurrent_publishers_lose_nothing(q: Arc<dyn OrderQueue>) {
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move { q.publish_orders(format!("m{i}").as_bytes()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut c = q.consume("contract-e", 50).await.unwrap();
    let mut got = BTreeSet::new();
    for _ in 0..100 {
        got.insert(next(&mut c).await);
    }
    let want: BTreeSet<Vec<u8>> = (0..100).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(got, want);
    c.close().await;
    depth_becomes(&*q, 0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_queue_keeps_the_contract() {
    contract(Arc::new(InProcessQueue::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_keeps_the_contract() {
    let url = std::env::var("FLASHSALE_TEST_AMQP").unwrap_or_else(|_| crate::kit::AMQP.to_owned());
    let queue = Arc::new(
        AmqpQueue::connect(&AmqpSettings {
            url,
            prefix: format!("fs_queue_{:08x}", rand::random::<u32>()),
            management: Default::default(),
        })
        .await
        .expect("the local RabbitMQ on 5672"),
    );
    contract(queue.clone()).await;
    queue.delete_topology().await.unwrap();
}

/// Waits until the RabbitMQ queue's management sample, taken after
/// `after`, shows `ready` and `unacked`.
async fn sample_becomes(q: &AmqpQueue, ready: u32, unacked: u32, after: std::time::Instant) {
    // The broker samples every 5 s: two samples' time, and some.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = q.depth().await.unwrap();
        if let Some(s) = d.sample {
            if s.taken_after >= after && s.ready == ready && s.unacked == unacked {
                assert_eq!(d.unacked, Some(unacked));
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "depth {d:?}, expected a sample after the change with ready {ready} unacked {unacked}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// AMQP cannot count deliveries a consumer holds; the management API can,
/// as a sample stamped no earlier than the request that first saw it
/// change. The re-seed relies on both (see `worker::stock_watch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_counts_unacked_deliveries_through_its_management_api() {
    let url = std::env::var("FLASHSALE_TEST_AMQP").unwrap_or_else(|_| crate::kit::AMQP.to_owned());
    let prefix = format!("fs_queue_{:08x}", rand::random::<u32>());
    let queue = AmqpQueue::connect(&AmqpSettings::new(url.clone(), prefix.clone()))
        .await
        .expect("the local RabbitMQ on 5672");
    for i in 0..3u8 {
        queue.publish_orders(&[b'u', b'0' + i]).await.unwrap();
    }
    let mut c = queue.consume("holder", 10).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap());
    }
    let holding = std::time::Instant::now();
    // Over AMQP the queue looks empty at once: nothing is ready.
    assert_eq!(queue.depth().await.unwrap().ready, 0);
    sample_becomes(&queue, 0, 3, holding).await;
    held.pop().unwrap().ack_through().await;
    let settled = std::time::Instant::now();
    sample_becomes(&queue, 0, 0, settled).await;
    c.close().await;

    // Switched off, or unreachable: unknown, and the rest still works.
    for management in [
        ManagementApi::Off,
        ManagementApi::At("http://127.0.0.1:1".into()),
    ] {
        let blind = AmqpQueue::connect(&AmqpSettings {
            management,
            ..AmqpSettings::new(url.clone(), prefix.clone())
        })
        .await
        .unwrap();
        let d = blind.depth().await.unwrap();
        assert_eq!((d.ready, d.unacked, d.sample), (0, None, None));
    }
    queue.delete_topology().await.unwrap();
}
