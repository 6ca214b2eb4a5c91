//! Purchase intents: buyers turned away with `sold_out`, once per user per
//! sale, written in batches, listed page by page to the admin.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::kit::{assert_error, eventually, json_ok, spawn_app, token, TestApp};

/// A sale of one unit, already sold to `winner`.
async fn sold_out_sale(app: &TestApp) -> String {
    let sale_id = app.open_sale(1, 1).await;
    app.buy_ok(&sale_id, "winner", 1).await;
    sale_id
}

/// Waits until the batch writer has flushed `n` intents of the sale.
async fn intents_flushed(app: &TestApp, sale_id: &str, n: usize) -> Vec<serde_json::Value> {
    eventually(
        Duration::from_secs(10),
        "the intents to be written",
        || async {
            let all = app.all_intents(sale_id, 1000).await;
            (all.len() >= n).then_some(all)
        },
    )
    .await
}

#[tokio::test]
async fn sold_out_buyers_are_recorded_once_per_user() {
    let app = spawn_app().await;
    let sale_id = sold_out_sale(&app).await;
    // bob three times, carol twice (asking for 2), dave once.
    for (user, quantity, times) in [("bob", 1, 3), ("carol", 2, 2), ("dave", 1, 1)] {
        for _ in 0..times {
            let resp = app
                .purchase(
                    &sale_id,
                    &token(user),
                    Some(json!({"quantity": quantity})),
                    None,
                )
                .await;
            assert_error(resp, StatusCode::CONFLICT, "sold_out").await;
        }
    }
    let all = intents_flushed(&app, &sale_id, 3).await;
    let users: Vec<&str> = all
        .iter()
        .map(|i| i["user_id"].as_str().expect("user_id"))
        .collect();
    assert_eq!(users, ["bob", "carol", "dave"], "{all:?}");
    for intent in &all {
        assert_eq!(intent["sale_id"], sale_id.as_str(), "{intent}");
        assert!(intent["created_at"].is_string(), "{intent}");
    }
    assert_eq!(all[1]["quantity"], 2, "{:?}", all[1]);

    // A rejection for the limit (not stock) is no intent; nor is the winner.
    let other = app.open_sale(5, 1).await;
    app.buy_ok(&other, "erin", 1).await;
    assert_error(
        app.buy(&other, "erin").await,
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
    let page = json_ok(app.intents(&other, None, None).await).await;
    assert_eq!(page["items"], json!([]), "{page}");
    assert!(page["next_cursor"].is_null(), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_are_paginated_with_limit_and_cursor() {
    let app = spawn_app().await;
    let sale_id = sold_out_sale(&app).await;
    let users: BTreeSet<String> = (0..25).map(|i| format!("missed-{i:02}")).collect();
    for user in &users {
        assert_error(
            app.buy(&sale_id, user).await,
            StatusCode::CONFLICT,
            "sold_out",
        )
        .await;
    }
    intents_flushed(&app, &sale_id, users.len()).await;

    // limit 10: 10, 10, 5 and no cursor after the short page.
    let first = json_ok(app.intents(&sale_id, Some(10), None).await).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 10, "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a cursor after a full page");
    let second = json_ok(app.intents(&sale_id, Some(10), Some(cursor)).await).await;
    assert_eq!(second["items"].as_array().unwrap().len(), 10, "{second}");
    let cursor = second["next_cursor"]
        .as_str()
        .expect("a cursor after a full page");
    let third = json_ok(app.intents(&sale_id, Some(10), Some(cursor)).await).await;
    assert_eq!(third["items"].as_array().unwrap().len(), 5, "{third}");
    assert!(third["next_cursor"].is_null(), "{third}");

    let mut seen = Vec::new();
    for page in [&first, &second, &third] {
        for item in page["items"].as_array().unwrap() {
            seen.push(item["user_id"].as_str().unwrap().to_owned());
        }
    }
    let expected: Vec<String> = users.iter().cloned().collect();
    assert_eq!(seen, expected, "pages overlap, skip or repeat users");

    // limit 5: five full pages, then an empty one ends the walk.
    let walked = app.all_intents(&sale_id, 5).await;
    let walked: Vec<&str> = walked
        .iter()
        .map(|i| i["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(walked, expected);

    // The default page holds them all.
    let default = json_ok(app.intents(&sale_id, None, None).await).await;
    assert_eq!(default["items"].as_array().unwrap().len(), 25);
}

#[tokio::test]
async fn intents_are_admin_only_and_validate_the_limit() {
    let app = spawn_app().await;
    let sale_id = sold_out_sale(&app).await;
    let url = app.url(&format!("/api/v1/sales/{sale_id}/intents"));
    let resp = app.client.get(&url).send().await.unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = app
        .client
        .get(&url)
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    for bad in ["0", "1001", "x", "-1", "1.5"] {
        let resp = app
            .client
            .get(&url)
            .bearer_auth(&app.admin_token)
            .query(&[("limit", bad)])
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    json_ok(app.intents(&sale_id, Some(1000), None).await).await;
}
