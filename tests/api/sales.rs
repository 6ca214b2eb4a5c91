//! Sales, stats and the operations endpoints: fields, statuses, 404s.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::kit::{
    assert_error, eventually, json_ok, json_status, num, spawn_app, spawn_app_with, time_in, token,
};

fn same_instant(got: &serde_json::Value, sent: &str) {
    let got = got.as_str().unwrap_or_else(|| panic!("not a time: {got}"));
    let got = chrono::DateTime::parse_from_rfc3339(got).expect("RFC 3339 from the server");
    let sent = chrono::DateTime::parse_from_rfc3339(sent).unwrap();
    assert_eq!(got.timestamp_millis(), sent.timestamp_millis());
}

#[tokio::test]
async fn create_sale_answers_201_with_the_sale() {
    let app = spawn_app().await;
    let starts = time_in(-10);
    let ends = time_in(3600);
    let body = json!({
        "item": "Phone X",
        "stock": 100,
        "per_user_limit": 3,
        "starts_at": starts,
        "ends_at": ends,
        "payment_window_secs": 600,
    });
    let resp = app.post_sale(&body).await;
    let sale = json_status(resp, StatusCode::CREATED).await;
    let id = sale["id"].as_str().expect("id is a string");
    assert!(!id.is_empty());
    assert_eq!(sale["item"], "Phone X");
    assert_eq!(sale["stock"], 100);
    assert_eq!(sale["remaining"], 100);
    assert_eq!(sale["per_user_limit"], 3);
    assert_eq!(sale["status"], "open");
    same_instant(&sale["starts_at"], &starts);
    same_instant(&sale["ends_at"], &ends);

    // The created sale is what GET shows.
    let got = app.sale(id).await;
    assert_eq!(got, sale);
}

#[tokio::test]
async fn create_sale_defaults_per_user_limit_and_ends_at() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({"item": "x", "stock": 5, "starts_at": time_in(-1)}))
        .await;
    assert_eq!(sale["per_user_limit"], 1);
    assert!(sale["ends_at"].is_null(), "{sale}");
    // Two sales never share an id.
    let other = app
        .create_sale(json!({"item": "x", "stock": 5, "starts_at": time_in(-1)}))
        .await;
    assert_ne!(sale["id"], other["id"]);
}

#[tokio::test]
async fn get_sale_is_public_and_cacheable() {
    let app = spawn_app().await;
    let id = app.open_sale(10, 1).await;
    // No Authorization header at all.
    let resp = app.get_sale(&id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cache = resp
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .expect("Cache-Control set")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!cache.is_empty());
    assert!(
        !cache.contains("no-store") && !cache.contains("private"),
        "Cache-Control must allow caching: {cache}"
    );
    let content_type = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let sale: serde_json::Value = resp.json().await.unwrap();
    for field in [
        "id",
        "item",
        "stock",
        "remaining",
        "per_user_limit",
        "starts_at",
        "ends_at",
        "status",
    ] {
        assert!(sale.get(field).is_some(), "missing {field}: {sale}");
    }
}

#[tokio::test]
async fn sale_status_is_upcoming_before_the_start() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({"item": "x", "stock": 5, "starts_at": time_in(3600)}))
        .await;
    assert_eq!(sale["status"], "upcoming");
    assert_eq!(
        app.sale(sale["id"].as_str().unwrap()).await["status"],
        "upcoming"
    );
}

#[tokio::test]
async fn sale_status_turns_sold_out_when_the_last_unit_goes() {
    let app = spawn_app().await;
    let id = app.open_sale(2, 1).await;
    assert_eq!(app.sale(&id).await["status"], "open");
    app.buy_ok(&id, "alice", 1).await;
    assert_eq!(app.sale(&id).await["status"], "open");
    app.buy_ok(&id, "bob", 1).await;
    // `remaining` may lag by up to a second.
    eventually(Duration::from_secs(3), "status sold_out", || async {
        let sale = app.sale(&id).await;
        (sale["status"] == "sold_out" && sale["remaining"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sale_status_turns_ended_after_the_end() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({
            "item": "x", "stock": 5,
            "starts_at": time_in(-2), "ends_at": time_in(1),
        }))
        .await;
    let id = sale["id"].as_str().unwrap();
    eventually(Duration::from_secs(5), "status ended", || async {
        (app.sale(id).await["status"] == "ended").then_some(())
    })
    .await;
}

#[tokio::test]
async fn unknown_and_malformed_sale_ids_are_404() {
    let app = spawn_app().await;
    app.open_sale(1, 1).await;
    for id in ["12345", "0", "abc", "-1", "1.5", "99999999999999999999999"] {
        assert_error(app.get_sale(id).await, StatusCode::NOT_FOUND, "not_found").await;
        assert_error(
            app.purchase(id, &token("alice"), None, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        let stats = app
            .client
            .get(app.url(&format!("/api/v1/sales/{id}/stats")))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .unwrap();
        assert_error(stats, StatusCode::NOT_FOUND, "not_found").await;
        assert_error(
            app.intents(id, None, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn stats_report_the_contract_fields() {
    let app = spawn_app().await;
    let id = app.open_sale(3, 2).await;
    app.buy_ok(&id, "alice", 2).await;
    let limit = app.buy(&id, "alice").await;
    assert_error(limit, StatusCode::CONFLICT, "limit_reached").await;
    app.buy_ok(&id, "bob", 1).await;
    let sold_out = app.buy(&id, "carol").await;
    assert_error(sold_out, StatusCode::CONFLICT, "sold_out").await;

    let stats = app.stats(&id).await;
    assert_eq!(stats["sale_id"], id.as_str());
    assert_eq!(num(&stats, "stock"), 3);
    assert_eq!(num(&stats, "sold"), 3);
    assert_eq!(num(&stats, "remaining"), 0);
    assert_eq!(num(&stats, "orders_persisted"), 2);
    assert_eq!(num(&stats, "attempts"), 4);
    let rejected = &stats["rejected"];
    assert_eq!(num(rejected, "sold_out"), 1);
    assert_eq!(num(rejected, "limit_reached"), 1);
    assert_eq!(num(rejected, "not_started"), 0);
    assert_eq!(num(rejected, "rate_limited"), 0);
}

#[tokio::test]
async fn rate_limited_buyers_get_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.engine.user_rate_per_sec = 1;
        s.engine.user_burst = 1;
    })
    .await;
    let id = app.open_sale(100, 100).await;
    app.buy_ok(&id, "alice", 1).await;
    let resp = app.buy(&id, "alice").await;
    assert!(
        resp.headers().get(reqwest::header::RETRY_AFTER).is_some(),
        "429 without Retry-After"
    );
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // The limit is per user.
    app.buy_ok(&id, "bob", 1).await;
    let stats = app.stats(&id).await;
    assert_eq!(num(&stats["rejected"], "rate_limited"), 1);
    assert_eq!(num(&stats, "sold"), 2);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    let id = app.open_sale(1, 1).await;
    app.buy_ok(&id, "alice", 1).await;

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    json_ok(ready).await;

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let content_type = metrics.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = metrics.text().await.unwrap();
    assert!(text.contains("flashsale_purchase_total"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("flashsale_purchase_total{") && l.contains("accepted")),
        "no accepted purchase counted: {text}"
    );
}
