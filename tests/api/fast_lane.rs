//! The fast lane (`src/http/fast_lane.rs`) answers memory-only purchase
//! rejections before routing. These tests pin down that it answers exactly
//! what the full path would, counts what it answers, and hands everything
//! else (bad tokens, keyed retries, bodies) to the full path.

use reqwest::StatusCode;
use serde_json::json;

use crate::kit::{assert_error, eventually, json_status, num, spawn_app, time_in, token};

#[tokio::test]
async fn sold_out_rejections_are_counted_and_recorded_as_intents() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(1, 1).await;
    json_status(app.buy(&sale_id, "first").await, StatusCode::CREATED).await;
    for user in ["late-1", "late-2", "late-1"] {
        // No body, no key: the fast lane's case.
        assert_error(
            app.buy(&sale_id, user).await,
            StatusCode::CONFLICT,
            "sold_out",
        )
        .await;
    }
    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "attempts"), 4, "{stats}");
    assert_eq!(stats["rejected"]["sold_out"], 3, "{stats}");
    assert_eq!(num(&stats, "sold"), 1, "{stats}");
    let intents = eventually(std::time::Duration::from_secs(5), "two intents", || async {
        let all = app.all_intents(&sale_id, 10).await;
        (all.len() == 2).then_some(all)
    })
    .await;
    let users: Vec<_> = intents.iter().map(|i| i["user_id"].clone()).collect();
    assert_eq!(users, vec![json!("late-1"), json!("late-2")]);
}

#[tokio::test]
async fn a_bad_token_on_a_sold_out_sale_is_still_401() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(1, 1).await;
    json_status(app.buy(&sale_id, "first").await, StatusCode::CREATED).await;
    let resp = app.purchase(&sale_id, "not-a-jwt", None, None).await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(num(&app.stats(&sale_id).await, "attempts"), 1);
}

#[tokio::test]
async fn a_keyed_retry_on_a_sold_out_sale_replays_its_acceptance() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(1, 1).await;
    let first = json_status(
        app.purchase(&sale_id, &token("alice"), None, Some("key-1"))
            .await,
        StatusCode::CREATED,
    )
    .await;
    // The sale is sold out now; the retry must not be answered `sold_out`.
    let again = json_status(
        app.purchase(&sale_id, &token("alice"), None, Some("key-1"))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(first["order_id"], again["order_id"]);
}

#[tokio::test]
async fn a_body_on_a_sold_out_sale_is_validated_first() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(1, 1).await;
    json_status(app.buy(&sale_id, "first").await, StatusCode::CREATED).await;
    let resp = app
        .purchase(&sale_id, &token("bob"), Some(json!({"quantity": 0})), None)
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test]
async fn not_started_is_answered_and_counted() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({"item": "later", "stock": 5, "starts_at": time_in(3600)}))
        .await;
    let sale_id = sale["id"].as_str().unwrap().to_owned();
    assert_error(
        app.buy(&sale_id, "early").await,
        StatusCode::FORBIDDEN,
        "not_started",
    )
    .await;
    let stats = app.stats(&sale_id).await;
    assert_eq!(stats["rejected"]["not_started"], 1, "{stats}");
    assert_eq!(num(&stats, "remaining"), 5);
}
