//! Purchase outcomes and `Idempotency-Key`.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::kit::{assert_error, eventually, json_status, num, spawn_app, time_in, token};

#[tokio::test]
async fn an_accepted_purchase_is_201_with_the_order() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 2).await;
    let resp = app
        .purchase(
            &sale_id,
            &token("alice"),
            Some(json!({"quantity": 2})),
            None,
        )
        .await;
    let order = json_status(resp, StatusCode::CREATED).await;
    let order_id = order["order_id"].as_str().expect("order_id is a string");
    assert!(!order_id.is_empty());
    assert_eq!(order["sale_id"], sale_id.as_str());
    assert_eq!(order["user_id"], "alice");
    assert_eq!(order["quantity"], 2);
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(num(&app.stats(&sale_id).await, "remaining"), 8);
}

#[tokio::test]
async fn an_empty_body_buys_one_unit() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 5).await;
    let order = json_status(
        app.purchase(&sale_id, &token("alice"), None, None).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(order["quantity"], 1);
    let order = json_status(
        app.purchase(&sale_id, &token("alice"), Some(json!({})), None)
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(order["quantity"], 1);
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 2);
}

#[tokio::test]
async fn a_sold_out_sale_answers_409_sold_out() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(1, 1).await;
    app.buy_ok(&sale_id, "alice", 1).await;
    for user in ["bob", "carol"] {
        assert_error(
            app.buy(&sale_id, user).await,
            StatusCode::CONFLICT,
            "sold_out",
        )
        .await;
    }
    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "sold"), 1);
    assert_eq!(num(&stats["rejected"], "sold_out"), 2);
}

#[tokio::test]
async fn the_per_user_limit_answers_409_limit_reached() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 2).await;
    app.buy_ok(&sale_id, "alice", 2).await;
    assert_error(
        app.buy(&sale_id, "alice").await,
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
    // Asking for more than the limit at once is refused the same way.
    assert_error(
        app.purchase(&sale_id, &token("bob"), Some(json!({"quantity": 3})), None)
            .await,
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
    // Bob was not charged for the refused attempt: he can still take 2.
    app.buy_ok(&sale_id, "bob", 2).await;
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 4);
}

#[tokio::test]
async fn asking_for_more_than_remains_is_sold_out_and_takes_nothing() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(3, 10).await;
    assert_error(
        app.purchase(
            &sale_id,
            &token("alice"),
            Some(json!({"quantity": 5})),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;
    assert_eq!(num(&app.stats(&sale_id).await, "remaining"), 3);
    app.buy_ok(&sale_id, "alice", 3).await;
    assert_eq!(num(&app.stats(&sale_id).await, "remaining"), 0);
}

#[tokio::test]
async fn before_the_start_is_403_not_started() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({"item": "x", "stock": 5, "starts_at": time_in(3600)}))
        .await;
    let sale_id = sale["id"].as_str().unwrap();
    assert_error(
        app.buy(sale_id, "alice").await,
        StatusCode::FORBIDDEN,
        "not_started",
    )
    .await;
    let stats = app.stats(sale_id).await;
    assert_eq!(num(&stats, "sold"), 0);
    assert_eq!(num(&stats["rejected"], "not_started"), 1);
}

#[tokio::test]
async fn after_the_end_is_403_ended() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({
            "item": "x", "stock": 5, "per_user_limit": 5,
            "starts_at": time_in(-2), "ends_at": time_in(2),
        }))
        .await;
    let sale_id = sale["id"].as_str().unwrap();
    // Open now …
    app.buy_ok(sale_id, "alice", 1).await;
    // … closed once the end has passed.
    eventually(Duration::from_secs(6), "the sale to end", || async {
        (app.sale(sale_id).await["status"] == "ended").then_some(())
    })
    .await;
    assert_error(
        app.buy(sale_id, "alice").await,
        StatusCode::FORBIDDEN,
        "ended",
    )
    .await;
    assert_eq!(num(&app.stats(sale_id).await, "sold"), 1);
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_order_once() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 5).await;
    let alice = app.token("alice");
    let first = json_status(
        app.purchase(&sale_id, &alice, None, Some("key-1")).await,
        StatusCode::CREATED,
    )
    .await;
    let again = json_status(
        app.purchase(&sale_id, &alice, None, Some("key-1")).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(first["order_id"], again["order_id"]);
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 1);
    // A new key is a new purchase.
    let other = json_status(
        app.purchase(&sale_id, &alice, None, Some("key-2")).await,
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(first["order_id"], other["order_id"]);
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 2);
}

#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_user() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 5).await;
    let a = json_status(
        app.purchase(&sale_id, &token("alice"), None, Some("shared"))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let b = json_status(
        app.purchase(&sale_id, &token("bob"), None, Some("shared"))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(a["order_id"], b["order_id"]);
    assert_eq!(b["user_id"], "bob");
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 2);
}

#[tokio::test]
async fn reusing_a_key_for_another_quantity_is_422() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 5).await;
    let alice = app.token("alice");
    json_status(
        app.purchase(&sale_id, &alice, Some(json!({"quantity": 1})), Some("k"))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_error(
        app.purchase(&sale_id, &alice, Some(json!({"quantity": 2})), Some("k"))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 1);
}

#[tokio::test]
async fn a_rejection_is_replayed_for_its_key() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(1, 1).await;
    app.buy_ok(&sale_id, "alice", 1).await;
    let bob = token("bob");
    for _ in 0..2 {
        assert_error(
            app.purchase(&sale_id, &bob, None, Some("bob-1")).await,
            StatusCode::CONFLICT,
            "sold_out",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_make_one_order() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(100, 50).await;
    let alice = app.token("alice");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url(&format!("/api/v1/sales/{sale_id}/purchase"));
            let alice = alice.clone();
            tokio::spawn(async move {
                let resp = client
                    .post(url)
                    .bearer_auth(alice)
                    .header("Idempotency-Key", "same-key")
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                (status, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.insert(body["order_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one key, several orders: {ids:?}");
    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "sold"), 1);
    assert_eq!(num(&stats, "orders_persisted"), 1);
}

/// Contract: "a retry with the same key by the same user returns the first
/// answer and never buys twice". A buyer whose `201` was lost and who
/// retries after the sale window closed must learn about the order they hold.
#[tokio::test]
async fn a_keyed_retry_after_the_end_still_returns_the_first_answer() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({
            "item": "x", "stock": 5,
            "starts_at": time_in(-2), "ends_at": time_in(2),
        }))
        .await;
    let sale_id = sale["id"].as_str().unwrap();
    let alice = app.token("alice");
    let first = json_status(
        app.purchase(sale_id, &alice, None, Some("retry-me")).await,
        StatusCode::CREATED,
    )
    .await;
    eventually(Duration::from_secs(6), "the sale to end", || async {
        (app.sale(sale_id).await["status"] == "ended").then_some(())
    })
    .await;
    let resp = app.purchase(sale_id, &alice, None, Some("retry-me")).await;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (status, &body["order_id"]),
        (StatusCode::CREATED, &first["order_id"]),
        "the retry got {status} {body} instead of the first answer {first}"
    );
}
