//! Orders: reading, paying, cancelling, payment expiry, and races between them.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::kit::{
    assert_error, eventually, json_ok, num, spawn_app, spawn_app_with, time_in, token, TestApp,
};

async fn order_status(app: &TestApp, order_id: &str, user: &str) -> Value {
    json_ok(app.get_order(order_id, &token(user)).await).await["status"].clone()
}

#[tokio::test]
async fn a_buyer_reads_their_own_order() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 2).await;
    let placed = app.buy_ok(&sale_id, "alice", 2).await;
    let order_id = placed["order_id"].as_str().unwrap();
    let order = json_ok(app.get_order(order_id, &token("alice")).await).await;
    assert_eq!(order["order_id"], order_id);
    assert_eq!(order["sale_id"], sale_id.as_str());
    assert_eq!(order["user_id"], "alice");
    assert_eq!(order["quantity"], 2);
    assert_eq!(order["status"], "pending_payment");
    let created = order["created_at"].as_str().expect("created_at");
    let created = chrono::DateTime::parse_from_rfc3339(created).expect("RFC 3339");
    let age = chrono::Utc::now().signed_duration_since(created);
    assert!(age.num_seconds().abs() < 60, "created_at {created} is off");
}

#[tokio::test]
async fn another_users_order_is_404_and_untouchable() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    let placed = app.buy_ok(&sale_id, "alice", 1).await;
    let order_id = placed["order_id"].as_str().unwrap();
    let bob = token("bob");
    assert_error(
        app.get_order(order_id, &bob).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.pay(order_id, &bob).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.cancel(order_id, &bob).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(
        order_status(&app, order_id, "alice").await,
        "pending_payment"
    );
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 1);
}

#[tokio::test]
async fn unknown_and_malformed_order_ids_are_404() {
    let app = spawn_app().await;
    let alice = token("alice");
    for id in ["1", "123456789", "abc", "-5", "18446744073709551616"] {
        assert_error(
            app.get_order(id, &alice).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert_error(
            app.pay(id, &alice).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert_error(
            app.cancel(id, &alice).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn pay_marks_paid_once_and_a_paid_order_cannot_change() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    let placed = app.buy_ok(&sale_id, "alice", 1).await;
    let order_id = placed["order_id"].as_str().unwrap();
    let alice = token("alice");

    let paid = json_ok(app.pay(order_id, &alice).await).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["order_id"], order_id);
    assert_error(
        app.pay(order_id, &alice).await,
        StatusCode::CONFLICT,
        "invalid_request",
    )
    .await;
    assert_error(
        app.cancel(order_id, &alice).await,
        StatusCode::CONFLICT,
        "invalid_request",
    )
    .await;
    assert_eq!(order_status(&app, order_id, "alice").await, "paid");
    // A paid order keeps its unit, and its buyer's limit.
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 1);
    assert_error(
        app.buy(&sale_id, "alice").await,
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
}

#[tokio::test]
async fn cancel_returns_the_stock_and_reopens_the_sale() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(1, 1).await;
    let placed = app.buy_ok(&sale_id, "alice", 1).await;
    let order_id = placed["order_id"].as_str().unwrap();
    assert_error(
        app.buy(&sale_id, "bob").await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;
    eventually(Duration::from_secs(3), "status sold_out", || async {
        (app.sale(&sale_id).await["status"] == "sold_out").then_some(())
    })
    .await;

    let alice = token("alice");
    let cancelled = json_ok(app.cancel(order_id, &alice).await).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(order_status(&app, order_id, "alice").await, "cancelled");
    // Cancelling twice neither succeeds nor returns the unit twice.
    assert_error(
        app.cancel(order_id, &alice).await,
        StatusCode::CONFLICT,
        "invalid_request",
    )
    .await;
    assert_error(
        app.pay(order_id, &alice).await,
        StatusCode::CONFLICT,
        "invalid_request",
    )
    .await;

    eventually(Duration::from_secs(3), "the sale to reopen", || async {
        let sale = app.sale(&sale_id).await;
        (sale["status"] == "open" && sale["remaining"] == 1).then_some(())
    })
    .await;
    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "sold"), 0);
    assert_eq!(num(&stats, "remaining"), 1);

    // Another buyer gets the returned unit, and only that one.
    app.buy_ok(&sale_id, "bob", 1).await;
    assert_error(
        app.buy(&sale_id, "carol").await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 1);
}

#[tokio::test]
async fn cancel_frees_the_per_user_limit() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    let placed = app.buy_ok(&sale_id, "alice", 1).await;
    json_ok(
        app.cancel(placed["order_id"].as_str().unwrap(), &token("alice"))
            .await,
    )
    .await;
    app.buy_ok(&sale_id, "alice", 1).await;
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 1);
}

/// An unpaid order expires after the payment window; its unit returns to the
/// sale exactly once, even with a late payment racing the sweeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_expire_and_return_their_stock_once() {
    let app = spawn_app_with(|s| s.sweep_interval = Duration::from_millis(100)).await;
    let sale = app
        .create_sale(json!({
            "item": "x", "stock": 3, "per_user_limit": 2,
            "starts_at": time_in(-60), "payment_window_secs": 1,
        }))
        .await;
    let sale_id = sale["id"].as_str().unwrap();
    let alice = token("alice");
    let keep = app.buy_ok(sale_id, "alice", 1).await;
    let keep_id = keep["order_id"].as_str().unwrap();
    let lapse = app.buy_ok(sale_id, "alice", 1).await;
    // Taken after the 201, so it is at or past the server's deadline below.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1010);
    let lapse_id = lapse["order_id"].as_str().unwrap();
    json_ok(app.pay(keep_id, &alice).await).await;
    assert_eq!(num(&app.stats(sale_id).await, "remaining"), 1);

    // From the deadline on, keep paying the lapsed order while the sweeper
    // runs: whoever moves it first, the unit must come back once.
    tokio::time::sleep_until(deadline).await;
    eventually(Duration::from_secs(10), "the order to expire", || async {
        let resp = app.pay(lapse_id, &alice).await;
        assert_ne!(resp.status(), StatusCode::OK, "paid after the deadline");
        (order_status(&app, lapse_id, "alice").await == "expired").then_some(())
    })
    .await;
    assert_error(
        app.pay(lapse_id, &alice).await,
        StatusCode::CONFLICT,
        "invalid_request",
    )
    .await;
    assert_error(
        app.cancel(lapse_id, &alice).await,
        StatusCode::CONFLICT,
        "invalid_request",
    )
    .await;
    // Let a few more sweeps pass: none may return the unit again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = app.stats(sale_id).await;
    assert_eq!(num(&stats, "sold"), 1, "{stats}");
    assert_eq!(num(&stats, "remaining"), 2, "{stats}");
    assert_eq!(order_status(&app, keep_id, "alice").await, "paid");

    // Alice holds 1 (paid) of her 2: one more, then the limit.
    app.buy_ok(sale_id, "alice", 1).await;
    assert_error(
        app.buy(sale_id, "alice").await,
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
    app.buy_ok(sale_id, "bob", 1).await;
    assert_error(
        app.buy(sale_id, "carol").await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;
    assert_eq!(num(&app.stats(sale_id).await, "sold"), 3);
}

/// With no sweep in between, a payment after the deadline expires the order
/// instead of paying it, and returns its unit.
#[tokio::test]
async fn paying_after_the_deadline_is_409_and_expires_the_order() {
    let app = spawn_app_with(|s| s.sweep_interval = Duration::from_secs(3600)).await;
    let sale = app
        .create_sale(json!({
            "item": "x", "stock": 1, "per_user_limit": 1,
            "starts_at": time_in(-60), "payment_window_secs": 1,
        }))
        .await;
    let sale_id = sale["id"].as_str().unwrap();
    let placed = app.buy_ok(sale_id, "alice", 1).await;
    let order_id = placed["order_id"].as_str().unwrap();
    // Wait out the payment window on the wall clock (the server's clock).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    tokio::time::sleep_until(deadline).await;
    assert_eq!(
        order_status(&app, order_id, "alice").await,
        "pending_payment"
    );

    let body = assert_error(
        app.pay(order_id, &token("alice")).await,
        StatusCode::CONFLICT,
        "invalid_request",
    )
    .await;
    assert!(body["error"]["message"].is_string());
    assert_eq!(order_status(&app, order_id, "alice").await, "expired");
    let stats = app.stats(sale_id).await;
    assert_eq!(num(&stats, "sold"), 0);
    assert_eq!(num(&stats, "remaining"), 1);
    app.buy_ok(sale_id, "bob", 1).await;
}

/// Pay and cancel sent at once on the same order: exactly one wins, the
/// other gets 409, and stock accounting follows the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_and_cancel_race_has_exactly_one_winner() {
    const ORDERS: usize = 50;
    let app = spawn_app().await;
    let sale_id = app.open_sale(ORDERS as u64, 1).await;
    let mut orders = Vec::new();
    for i in 0..ORDERS {
        let user = format!("racer-{i}");
        let order = app.buy_ok(&sale_id, &user, 1).await;
        orders.push((user, order["order_id"].as_str().unwrap().to_owned()));
    }

    let races: Vec<_> = orders
        .iter()
        .map(|(user, order_id)| {
            let client = app.client.clone();
            let base = app.address.clone();
            let (user, order_id) = (user.clone(), order_id.clone());
            tokio::spawn(async move {
                let send = |action: &'static str| {
                    client
                        .post(format!("{base}/api/v1/orders/{order_id}/{action}"))
                        .bearer_auth(token(&user))
                        .send()
                };
                let (pay, cancel) = tokio::join!(send("pay"), send("cancel"));
                let (pay, cancel) = (pay.unwrap(), cancel.unwrap());
                let statuses = (pay.status(), cancel.status());
                let bodies = (
                    pay.json::<Value>().await.unwrap(),
                    cancel.json::<Value>().await.unwrap(),
                );
                (user, order_id, statuses, bodies)
            })
        })
        .collect();

    let mut paid = 0u64;
    for race in races {
        let (user, order_id, statuses, (pay, cancel)) = race.await.unwrap();
        let winner = match statuses {
            (StatusCode::OK, StatusCode::CONFLICT) => {
                assert_eq!(pay["status"], "paid", "{pay}");
                assert_eq!(cancel["error"]["code"], "invalid_request", "{cancel}");
                paid += 1;
                "paid"
            }
            (StatusCode::CONFLICT, StatusCode::OK) => {
                assert_eq!(cancel["status"], "cancelled", "{cancel}");
                assert_eq!(pay["error"]["code"], "invalid_request", "{pay}");
                "cancelled"
            }
            other => panic!("order {order_id}: pay/cancel answered {other:?}: {pay} {cancel}"),
        };
        assert_eq!(order_status(&app, &order_id, &user).await, winner);
    }
    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "sold"), paid, "{stats}");
    assert_eq!(num(&stats, "remaining"), ORDERS as u64 - paid, "{stats}");
}
