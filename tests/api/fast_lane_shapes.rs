//! The fast lane over real connections, for every request shape a buyer
//! sends: a JSON body, an `Idempotency-Key` (fresh and replayed), a body
//! that arrives after its headers. `fast_lane_equivalence` compares answers
//! in process; these check what hyper's bodies and the counters do.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kit::{assert_error, json_status, num, parse_raw_answer, spawn_app, token, TestApp};

/// A sold-out sale (stock 1, bought by `first`); its id and the order.
async fn sold_out_sale(app: &TestApp) -> (String, String) {
    let sale_id = app.open_sale(1, 1).await;
    let order = app.buy_ok(&sale_id, "first", 1).await;
    (sale_id, order["order_id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn json_bodies_on_a_sold_out_sale_are_refused_and_counted_once_each() {
    let app = spawn_app().await;
    let (sale_id, _) = sold_out_sale(&app).await;
    for (user, body) in [
        ("a", json!({"quantity": 1})),
        ("b", json!({"quantity": 3})),
        ("c", json!({})),
        ("a", json!({"quantity": 1})),
    ] {
        let resp = app.purchase(&sale_id, &token(user), Some(body), None).await;
        assert_error(resp, StatusCode::CONFLICT, "sold_out").await;
    }
    // Still validated first, as the full path does.
    let resp = app
        .purchase(&sale_id, &token("d"), Some(json!({"quantity": 0})), None)
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "attempts"), 5, "{stats}");
    assert_eq!(stats["rejected"]["sold_out"], 4, "{stats}");
    assert_eq!(num(&stats, "intents"), 3, "one intent per buyer: {stats}");
}

#[tokio::test]
async fn a_keyed_sold_out_answer_is_recorded_and_replayed_even_after_stock_returns() {
    let app = spawn_app().await;
    let (sale_id, order_id) = sold_out_sale(&app).await;
    let bob = token("bob");
    let body = || Some(json!({"quantity": 1}));
    let resp = app.purchase(&sale_id, &bob, body(), Some("k-1")).await;
    assert_error(resp, StatusCode::CONFLICT, "sold_out").await;
    let stats = app.stats(&sale_id).await;
    assert_eq!(stats["rejected"]["sold_out"], 1, "{stats}");
    assert_eq!(num(&stats, "replayed"), 0, "{stats}");

    let resp = app.purchase(&sale_id, &bob, body(), Some("k-1")).await;
    assert_error(resp, StatusCode::CONFLICT, "sold_out").await;
    let stats = app.stats(&sale_id).await;
    assert_eq!(
        stats["rejected"]["sold_out"], 1,
        "a replay is not a new rejection"
    );
    assert_eq!(num(&stats, "replayed"), 1, "{stats}");

    // The unit comes back: the key still answers what it answered first,
    // while a new key buys it.
    json_status(app.cancel(&order_id, &token("first")).await, StatusCode::OK).await;
    let resp = app.purchase(&sale_id, &bob, body(), Some("k-1")).await;
    assert_error(resp, StatusCode::CONFLICT, "sold_out").await;
    let order = json_status(
        app.purchase(&sale_id, &bob, body(), Some("k-2")).await,
        StatusCode::CREATED,
    )
    .await;
    // And that acceptance replays (the full path answers it).
    let again = json_status(
        app.purchase(&sale_id, &bob, body(), Some("k-2")).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(order["order_id"], again["order_id"]);
    // The same key for a different quantity is a conflict, not a replay.
    let resp = app
        .purchase(&sale_id, &bob, Some(json!({"quantity": 2})), Some("k-1"))
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request").await;
    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "replayed"), 3, "{stats}");
    assert_eq!(num(&stats, "sold"), 1, "{stats}");
}

#[tokio::test]
async fn a_keyed_request_before_the_start_leaves_its_key_unused() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({"item": "later", "stock": 5, "starts_at": crate::kit::time_in(3600)}))
        .await;
    let sale_id = sale["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let resp = app
            .purchase(
                &sale_id,
                &token("eve"),
                Some(json!({"quantity": 1})),
                Some("k"),
            )
            .await;
        assert_error(resp, StatusCode::FORBIDDEN, "not_started").await;
    }
    let stats = app.stats(&sale_id).await;
    assert_eq!(stats["rejected"]["not_started"], 2, "{stats}");
    assert_eq!(
        num(&stats, "replayed"),
        0,
        "window answers are not recorded: {stats}"
    );
}

/// Sends a purchase head, waits, then sends `body`; returns the answer.
async fn late_body(
    app: &TestApp,
    sale_id: &str,
    user: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let head = format!(
        "POST /api/v1/sales/{sale_id}/purchase HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        token(user),
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(rest).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    parse_raw_answer(&String::from_utf8_lossy(&answer))
}

#[tokio::test]
async fn a_body_that_arrives_after_its_headers_is_read_in_full() {
    let app = spawn_app().await;
    let (sold_out, _) = sold_out_sale(&app).await;
    let (status, body) = late_body(&app, &sold_out, "late", br#"{"quantity":1}"#).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("sold_out")),
        "{body}"
    );
    let (status, body) = late_body(&app, &sold_out, "late", br#"{"quantity":"#).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_request")),
        "{body}"
    );
    let open = app.open_sale(10, 5).await;
    let (status, body) = late_body(&app, &open, "late", br#"{"quantity":2}"#).await;
    assert_eq!((status, &body["quantity"]), (201, &json!(2)), "{body}");
    // The buy that sold it out and the late refusal; the malformed body
    // never reached the sale.
    let stats = app.stats(&sold_out).await;
    assert_eq!(num(&stats, "attempts"), 2, "{stats}");
    assert_eq!(stats["rejected"]["sold_out"], 1, "{stats}");
}
