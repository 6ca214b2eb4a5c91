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

use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
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
        })
        .await
        .expect("the local RabbitMQ on 5672"),
    );
    contract(queue.clone()).await;
    queue.delete_topology().await.unwrap();
}
