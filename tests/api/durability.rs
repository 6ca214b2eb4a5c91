//! Durability: every `201` survives a clean stop, a restart and a `kill -9`;
//! a clean stop finishes the requests in flight.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::net::TcpStream;

use crate::kit::drill::{sqlite_orders, DrillReport};
use crate::kit::{
    assert_error, assert_only, check_flood, check_orders_readable, check_stored, eventually, flood,
    flood_with, json_ok, json_status, no_answer, num, sigterm, spawn_app, spawn_app_on,
    spawn_app_on_with, start_binary, time_in, token, SlowPurchase, TestApp, NO_ANSWER,
};

/// `n` one-unit purchases by users `prefix-0`, `prefix-1`, …
fn one_each(prefix: &str, n: usize) -> Vec<(String, u32)> {
    (0..n).map(|i| (format!("{prefix}-{i}"), 1)).collect()
}

/// `(sold, remaining, orders_persisted)` from the stats.
async fn accounting(app: &TestApp, sale_id: &str) -> (u64, u64, u64) {
    let stats = app.stats(sale_id).await;
    (
        num(&stats, "sold"),
        num(&stats, "remaining"),
        num(&stats, "orders_persisted"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_order_limit_and_key() {
    let app = spawn_app().await;
    // One sale that sells out, one that does not (so limits stay visible).
    let sold_out = app.open_sale(200, 2).await;
    let roomy = app.open_sale(1000, 2).await;
    let keyed = json_status(
        app.purchase(&roomy, &token("keyed"), None, Some("before-restart"))
            .await,
        StatusCode::CREATED,
    )
    .await;

    let mut crowd = one_each("a", 300);
    crowd.extend(one_each("a", 100));
    let answers_a = flood(&app, &sold_out, crowd, 128).await;
    check_flood(&answers_a, 2);
    // Users b-0..b-199 each try three times: two units each, then the limit.
    let crowd: Vec<_> = (0..3).flat_map(|_| one_each("b", 200)).collect();
    let answers_b = flood(&app, &roomy, crowd, 128).await;
    let held_b = check_flood(&answers_b, 2);
    assert!(
        held_b.values().all(|u| *u == 2),
        "every b user gets 2 units"
    );

    let before_a = accounting(&app, &sold_out).await;
    let before_b = accounting(&app, &roomy).await;
    assert_eq!(before_a.0, 200);
    assert_eq!(before_b.0, 401);
    let sale_before = app.sale(&roomy).await;

    let dir = app.stop().await;
    let app = spawn_app_on(dir).await;

    check_orders_readable(&app, &sold_out, &answers_a).await;
    check_orders_readable(&app, &roomy, &answers_b).await;
    assert_eq!(accounting(&app, &sold_out).await, before_a);
    assert_eq!(accounting(&app, &roomy).await, before_b);
    assert_eq!(app.sale(&roomy).await, sale_before);

    // Holders are still at their limit; the sold-out sale stays sold out.
    assert_error(
        app.buy(&roomy, "b-7").await,
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
    assert_error(
        app.buy(&sold_out, "newcomer").await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;

    // The key still replays the first order, without buying again.
    let replay = json_status(
        app.purchase(&roomy, &token("keyed"), None, Some("before-restart"))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(replay["order_id"], keyed["order_id"]);
    assert_eq!(accounting(&app, &roomy).await, before_b);

    // New orders get new ids.
    let fresh = app.buy_ok(&roomy, "newcomer", 1).await;
    let old_ids: HashSet<&str> = answers_a
        .accepted
        .iter()
        .chain(&answers_b.accepted)
        .map(|a| a.order_id.as_str())
        .chain([keyed["order_id"].as_str().unwrap()])
        .collect();
    assert!(!old_ids.contains(fresh["order_id"].as_str().unwrap()));
    assert_eq!(accounting(&app, &roomy).await.0, before_b.0 + 1);
}

/// Paid, cancelled and pending orders keep their status over a restart,
/// and only the paid and pending ones hold units and limits.
#[tokio::test]
async fn a_restart_keeps_order_statuses() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(3, 1).await;
    let paid = app.buy_ok(&sale_id, "alice", 1).await;
    let cancelled = app.buy_ok(&sale_id, "bob", 1).await;
    let pending = app.buy_ok(&sale_id, "carol", 1).await;
    let id = |o: &serde_json::Value| o["order_id"].as_str().unwrap().to_owned();
    json_ok(app.pay(&id(&paid), &token("alice")).await).await;
    json_ok(app.cancel(&id(&cancelled), &token("bob")).await).await;

    let app = spawn_app_on(app.stop().await).await;
    for (order, user, status) in [
        (&paid, "alice", "paid"),
        (&cancelled, "bob", "cancelled"),
        (&pending, "carol", "pending_payment"),
    ] {
        let got = json_ok(app.get_order(&id(order), &token(user)).await).await;
        assert_eq!(got["status"], status, "{got}");
    }
    assert_eq!(accounting(&app, &sale_id).await, (2, 1, 3));
    assert_error(
        app.buy(&sale_id, "alice").await,
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
    // Bob's cancel freed his limit and his unit.
    app.buy_ok(&sale_id, "bob", 1).await;
    assert_eq!(accounting(&app, &sale_id).await, (3, 0, 4));
}

/// An order left unpaid across a restart still expires and returns its unit.
#[tokio::test]
async fn an_unpaid_order_expires_after_a_restart() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({
            "item": "x", "stock": 1, "starts_at": time_in(-60), "payment_window_secs": 1,
        }))
        .await;
    let sale_id = sale["id"].as_str().unwrap();
    let order = app.buy_ok(sale_id, "alice", 1).await;
    let order_id = order["order_id"].as_str().unwrap();
    let dir = app.stop().await;

    let app = spawn_app_on_with(dir, |s| s.sweep_interval = Duration::from_millis(100)).await;
    eventually(Duration::from_secs(10), "the order to expire", || async {
        let got = json_ok(app.get_order(order_id, &token("alice")).await).await;
        (got["status"] == "expired").then_some(())
    })
    .await;
    let (sold, remaining, _) = accounting(&app, sale_id).await;
    assert_eq!((sold, remaining), (0, 1));
    app.buy_ok(sale_id, "bob", 1).await;
}

/// SIGTERM to the real binary mid-flood: it exits 0, and the store holds
/// exactly the orders that were answered `201`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_flood_exits_cleanly_with_exactly_the_accepted_orders() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, app) = start_binary(dir.path()).await;
    let sale_id = app.open_sale(100_000, 1).await;
    let (client, base) = (app.client.clone(), app.address.clone());
    let mut accepted = 0;
    let mut signalled = false;
    let answers = flood_with(&client, &base, &sale_id, one_each("crowd", 3000), 64, |a| {
        accepted += usize::from(a.accepted);
        if accepted >= 200 && !signalled {
            sigterm(&child);
            signalled = true;
        }
    })
    .await;
    assert!(signalled, "the flood ended before 200 orders were accepted");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("no exit within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "SIGTERM did not stop cleanly: {status}");
    // Only 201s or refused connections.
    assert_only(&answers, &["201", NO_ANSWER[0], NO_ANSWER[1]]);
    let n = answers.orders;
    eprintln!("SIGTERM after {n} of 3000 purchases were accepted");

    let (_child, app) = start_binary(dir.path()).await;
    check_orders_readable(&app, &sale_id, &answers).await;
    let (sold, _, persisted) = accounting(&app, &sale_id).await;
    assert_eq!((sold, persisted), (n, n));
}

/// `kill -9` in the middle of a flood loses no order that was answered `201`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_flood_loses_no_accepted_order() {
    const STOCK: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, app) = start_binary(dir.path()).await;
    let sale_id = app.open_sale(STOCK, 2).await;

    let (client, base) = (app.client.clone(), app.address.clone());
    let mut accepted = 0;
    let mut killed = false;
    let mut killed_at = None;
    let answers = flood_with(
        &client,
        &base,
        &sale_id,
        one_each("crowd", 6000),
        128,
        |a| {
            accepted += usize::from(a.accepted);
            if accepted >= 300 && !killed {
                child.start_kill().expect("sending SIGKILL");
                killed = true;
                killed_at = Some(std::time::Instant::now());
            }
        },
    )
    .await;
    assert!(killed, "the flood ended before 300 orders were accepted");
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    // Only 201s or broken connections.
    assert_only(&answers, &["201", NO_ANSWER[0], NO_ANSWER[1]]);
    let first = answers.orders;
    let first_ids: HashSet<&str> = answers
        .accepted
        .iter()
        .map(|a| a.order_id.as_str())
        .collect();
    assert_eq!(first_ids.len() as u64, first, "duplicate order ids");

    let (_child, app) = start_binary(dir.path()).await;
    let serving_again = killed_at.unwrap().elapsed();
    check_orders_readable(&app, &sale_id, &answers).await;
    let (sold, remaining, persisted) = accounting(&app, &sale_id).await;
    // The same invariants in the database file itself (a drill of
    // scripts/drills.sh: docs/RELIABILITY.md).
    let rows = sqlite_orders(dir.path(), &sale_id);
    let told: Vec<(String, String)> = answers
        .accepted
        .iter()
        .map(|a| (a.order_id.clone(), format!("crowd-{}", a.user)))
        .collect();
    check_stored(&rows, &told, STOCK, 2, false);
    let mut report = DrillReport::from_rows(
        "node_killed_embedded",
        "embedded",
        "the node killed (`kill -9`) mid-flood after 300 orders, restarted on its data directory",
        &rows,
        &told,
        STOCK,
        2,
    );
    report.recovered_ms = Some(serving_again.as_millis() as u64);
    let db_units: u64 = rows.iter().map(|r| r.quantity).sum();
    report.leaked = Some((STOCK - remaining) as i64 - db_units as i64);
    assert_eq!(
        report.leaked,
        Some(0),
        "the rebuilt ledger disagrees with the file"
    );
    report.write();
    eprintln!(
        "killed after {} answers ({first} accepted); {sold} units on disk",
        answers.requests - no_answer(&answers),
    );
    assert!(sold <= STOCK, "oversold after the crash: {sold}");
    assert!(sold >= first, "{sold} sold < {first} accepted");
    // Every stored order holds one unit: the ledger was rebuilt from them.
    assert_eq!(sold, persisted);
    assert_eq!(remaining, STOCK - sold);
    assert_eq!(num(&app.sale(&sale_id).await, "remaining"), remaining);

    // The sale goes on and sells exactly the rest.
    let answers = flood(
        &app,
        &sale_id,
        one_each("late", remaining as usize + 200),
        128,
    )
    .await;
    check_flood(&answers, 2);
    assert_eq!(answers.orders, remaining);
    assert!(answers
        .accepted
        .iter()
        .all(|a| !first_ids.contains(a.order_id.as_str())));
    check_orders_readable(&app, &sale_id, &answers).await;
    assert_eq!(accounting(&app, &sale_id).await, (STOCK, 0, STOCK));
}

/// A purchase whose handler is running (it asked for the body with
/// `100 Continue`) when the stop begins still completes with `201`, and
/// the order is on disk after the restart.
#[tokio::test]
async fn a_request_in_flight_during_a_stop_completes() {
    let mut app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    let slow = SlowPurchase::start(app.port, &sale_id, "slowpoke").await;

    let server = app.begin_stop();
    let port = app.port;
    eventually(
        Duration::from_secs(5),
        "the listener to close",
        || async move {
            TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;

    let (status, order) = slow.finish().await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["user_id"], "slowpoke");

    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the stop did not finish")
        .unwrap()
        .unwrap();
    let app = spawn_app_on(app.take_data_dir()).await;
    let stored = json_ok(
        app.get_order(order["order_id"].as_str().unwrap(), &token("slowpoke"))
            .await,
    )
    .await;
    assert_eq!(stored["status"], "pending_payment");
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 1);
}

/// A stop in the middle of a flood: every answer is a `201` or a refused
/// connection, and after the restart the store holds exactly the `201`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_flood_keeps_exactly_the_accepted_orders() {
    let mut app = spawn_app().await;
    let sale_id = app.open_sale(100_000, 1).await;
    let (client, base) = (app.client.clone(), app.address.clone());
    let mut accepted = 0;
    let mut server = None;
    let answers = flood_with(&client, &base, &sale_id, one_each("crowd", 3000), 64, |a| {
        accepted += usize::from(a.accepted);
        if accepted >= 200 && server.is_none() {
            server = Some(app.begin_stop());
        }
    })
    .await;
    let server = server.expect("the flood ended before 200 orders were accepted");
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the stop did not finish")
        .unwrap()
        .unwrap();
    // Only 201s or refused connections.
    assert_only(&answers, &["201", NO_ANSWER[0], NO_ANSWER[1]]);
    let n = answers.orders;
    eprintln!("stopped after {n} of 3000 purchases were accepted");
    assert!(n < 3000, "the stop did not stop anything");

    let app = spawn_app_on(app.take_data_dir()).await;
    check_orders_readable(&app, &sale_id, &answers).await;
    let (sold, _, persisted) = accounting(&app, &sale_id).await;
    assert_eq!((sold, persisted), (n, n));
}

/// The sale's event stream never ends by itself; a clean stop must not wait
/// for it forever (a dashboard left open would block every deploy).
#[tokio::test]
async fn a_stop_is_not_held_up_by_an_open_event_stream() {
    let mut app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    let events = app
        .client
        .get(app.url(&format!("/api/v1/sales/{sale_id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);

    let server = app.begin_stop();
    let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(
        stopped.is_ok(),
        "a clean stop still waits for the open event stream after 5 s"
    );
    drop(events);
    let app = spawn_app_on(app.take_data_dir()).await;
    assert_eq!(app.sale(&sale_id).await["stock"], json!(10));
}
