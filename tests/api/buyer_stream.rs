//! A buyer's order stream (`GET /api/v1/orders/events`, issue 9): every
//! change of the buyer's orders — accepted, paid, cancelled, expired — in
//! order, nobody else's, authenticated; in the distributed mode from
//! whichever node the change happened on.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::kit::{
    assert_error, json_ok, spawn_app_with, time_in, token, Backends, Db, EventReader, TestApp,
};

type Reader = EventReader<
    std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
>;

/// Opens `user`'s order stream on `app` (the token in the query, as a
/// browser's `EventSource` sends it).
async fn open_stream(app: &TestApp, user: &str) -> Reader {
    let resp = app
        .client
        .get(app.url(&format!(
            "/api/v1/orders/events?access_token={}",
            token(user)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    EventReader::new(Box::pin(resp.bytes_stream()))
}

/// The next event: its name and the order it names.
async fn next(reader: &mut Reader, what: &str) -> (String, Value) {
    reader
        .next(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no event: {what}"))
}

fn check(event: &(String, Value), name: &str, order_id: &str, user: &str, status: &str) {
    assert_eq!(event.0, name, "{event:?}");
    assert_eq!(event.1["order_id"], order_id, "{event:?}");
    assert_eq!(event.1["user_id"], user, "{event:?}");
    assert_eq!(event.1["status"], status, "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_hears_each_change_of_their_orders_in_order_and_nobody_elses() {
    let app = spawn_app_with(|s| s.sweep_interval = Duration::from_millis(100)).await;
    let sale = app.open_sale(10, 3).await;
    let mut alice = open_stream(&app, "alice").await;
    let mut bob = open_stream(&app, "bob").await;

    let first = app.buy_ok(&sale, "alice", 1).await;
    let first_id = first["order_id"].as_str().unwrap();
    let _ = app.buy_ok(&sale, "carol", 1).await;
    let second = app.buy_ok(&sale, "alice", 1).await;
    let second_id = second["order_id"].as_str().unwrap();
    assert_eq!(
        app.pay(first_id, &token("alice")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.cancel(second_id, &token("alice")).await.status(),
        StatusCode::OK
    );

    check(
        &next(&mut alice, "first accepted").await,
        "accepted",
        first_id,
        "alice",
        "pending_payment",
    );
    check(
        &next(&mut alice, "second accepted").await,
        "accepted",
        second_id,
        "alice",
        "pending_payment",
    );
    check(
        &next(&mut alice, "first paid").await,
        "paid",
        first_id,
        "alice",
        "paid",
    );
    check(
        &next(&mut alice, "second cancelled").await,
        "cancelled",
        second_id,
        "alice",
        "cancelled",
    );
    // Carol's order is not Alice's news, nor Bob's.
    assert!(alice.next(Duration::from_millis(300)).await.is_none());
    assert!(bob.next(Duration::from_millis(300)).await.is_none());

    // An unpaid order past its payment window expires: that is news too.
    let short = app
        .create_sale(json!({
            "item": "short window",
            "stock": 5,
            "per_user_limit": 1,
            "starts_at": time_in(-60),
            "payment_window_secs": 1,
        }))
        .await;
    let order = app.buy_ok(short["id"].as_str().unwrap(), "bob", 1).await;
    let order_id = order["order_id"].as_str().unwrap();
    check(
        &next(&mut bob, "accepted").await,
        "accepted",
        order_id,
        "bob",
        "pending_payment",
    );
    check(
        &next(&mut bob, "expired").await,
        "expired",
        order_id,
        "bob",
        "expired",
    );
    // Polling still tells the same story.
    let polled = json_ok(app.get_order(order_id, &token("bob")).await).await;
    assert_eq!(polled["status"], "expired");
    app.stop().await;
}

#[tokio::test]
async fn the_stream_needs_a_buyer_token() {
    let app = spawn_app_with(|_| {}).await;
    let get = |query: &str| {
        app.client
            .get(app.url(&format!("/api/v1/orders/events{query}")))
    };
    let unauthorized = [
        get(""),
        get("?access_token=not-a-token"),
        // The admin token is not a buyer's.
        get("").bearer_auth(&app.admin_token),
    ];
    for request in unauthorized {
        let resp = request.send().await.unwrap();
        assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // An ordinary order id still reads as one.
    let sale = app.open_sale(1, 1).await;
    let order = app.buy_ok(&sale, "dave", 1).await;
    let id = order["order_id"].as_str().unwrap();
    assert_eq!(
        app.get_order(id, &token("dave")).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

/// Two distributed nodes: the buyer listens on one, buys and pays on the
/// other; the stored order (by whichever node's writer) and the payment
/// reach the stream, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn across_nodes_a_buyer_hears_of_orders_made_and_paid_on_another_node() {
    let backends = Backends::new(Db::Postgres).await;
    let nodes = backends.nodes(2).await;
    let sale = nodes[0].open_sale(10, 2).await;
    let mut stream = open_stream(&nodes[1], "erin").await;
    // (Each node subscribes to the events exchange before it serves.)
    let order = nodes[0].buy_ok(&sale, "erin", 1).await;
    let order_id = order["order_id"].as_str().unwrap();
    check(
        &next(&mut stream, "accepted across nodes").await,
        "accepted",
        order_id,
        "erin",
        "pending_payment",
    );
    // Paid on the first node once it is stored.
    crate::kit::eventually(Duration::from_secs(10), "the order is stored", || async {
        let resp = nodes[0].pay(order_id, &token("erin")).await;
        (resp.status() == StatusCode::OK).then_some(())
    })
    .await;
    check(
        &next(&mut stream, "paid across nodes").await,
        "paid",
        order_id,
        "erin",
        "paid",
    );
    for n in nodes {
        n.stop().await;
    }
    backends.cleanup().await;
}
