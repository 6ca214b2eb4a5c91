//! A flash crowd over real HTTP: thousands of concurrent purchases never
//! oversell, never exceed the per-user limit, and every `201` is an order;
//! the load tool (`flashsale-bench`, run in-process) proves the same of a
//! sale it creates.

use std::time::Duration;

use reqwest::StatusCode;

use crate::kit::{
    assert_error, check_flood, check_orders_readable, flood, num, spawn_app, spawn_app_on,
    spawn_app_with, SlowPurchase, ADMIN_TOKEN, JWT_SECRET,
};

/// Users 0..1000 send two requests back to back (every third asks for 2
/// units first, so its second would exceed the limit of 2); users
/// 1000..3000 send one.
fn crowd() -> Vec<(String, u32)> {
    let mut requests = Vec::with_capacity(4000);
    for k in 0..1000 {
        let user = format!("user-{k}");
        requests.push((user.clone(), if k % 3 == 0 { 2 } else { 1 }));
        requests.push((user, 1));
    }
    for k in 1000..3000 {
        requests.push((format!("user-{k}"), 1));
    }
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_crowd_buys_exactly_the_stock() {
    const STOCK: u64 = 500;
    let app = spawn_app().await;
    let sale_id = app.open_sale(STOCK, 2).await;
    let requests = crowd();
    let total = requests.len() as u64;

    let answers = flood(&app, &sale_id, requests, 256).await;

    let held = check_flood(&answers, 2);
    let units: u64 = held.values().sum();
    assert_eq!(units, STOCK, "units in 201 answers");
    assert_eq!(answers.requests, total);
    let accepted = answers.orders;
    let limit_reached = answers.count("409 limit_reached");
    assert!(limit_reached > 0, "the crowd never hit the per-user limit");

    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "sold"), STOCK, "{stats}");
    assert_eq!(num(&stats, "remaining"), 0, "{stats}");
    assert_eq!(num(&stats, "orders_persisted"), accepted, "{stats}");
    assert_eq!(num(&stats, "attempts"), total, "{stats}");
    let rejected = &stats["rejected"];
    assert_eq!(
        accepted + num(rejected, "sold_out") + num(rejected, "limit_reached"),
        total,
        "{stats}"
    );
    assert_eq!(num(rejected, "limit_reached"), limit_reached, "{stats}");
    assert_eq!(app.sale(&sale_id).await["status"], "sold_out");

    check_orders_readable(&app, &sale_id, &answers).await;
}

/// The one-commit-per-order baseline (`max_batch = 1`) keeps the same
/// guarantees as group commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_commit_per_order_sells_exactly_the_stock() {
    const STOCK: u64 = 100;
    let app = spawn_app_with(|s| s.store.max_batch = 1).await;
    let sale_id = app.open_sale(STOCK, 1).await;
    let requests = (0..300).map(|k| (format!("user-{k}"), 1)).collect();
    let answers = flood(&app, &sale_id, requests, 64).await;
    check_flood(&answers, 1);
    assert_eq!(answers.orders, STOCK);
    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "sold"), STOCK, "{stats}");
    assert_eq!(num(&stats, "orders_persisted"), STOCK, "{stats}");
    let dir = app.stop().await;
    let app = spawn_app_on(dir).await;
    check_orders_readable(&app, &sale_id, &answers).await;
}

/// Past `max_in_flight` the server sheds at once with `503 overloaded` and
/// `Retry-After` instead of queueing; health checks still answer.
#[tokio::test]
async fn requests_past_the_in_flight_limit_are_shed_with_503() {
    let app = spawn_app_with(|s| s.max_in_flight = 1).await;
    let sale_id = app.open_sale(10, 1).await;
    // Holds the only place until its body is sent.
    let slow = SlowPurchase::start(app.port, &sale_id, "slowpoke").await;

    let resp = app.buy(&sale_id, "alice").await;
    assert_eq!(
        resp.headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("1".to_owned())
    );
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
    app.assert_healthy().await;

    let (status, order) = slow.finish().await;
    assert_eq!(status, 201, "{order}");
    // Once the place is free, the next buyer gets in.
    app.buy_ok(&sale_id, "alice", 1).await;
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 2);
}

/// A request that takes longer than the request timeout is answered
/// `503 overloaded`, and buys nothing.
#[tokio::test]
async fn a_request_over_the_timeout_is_503_and_buys_nothing() {
    let app = spawn_app_with(|s| s.request_timeout = Duration::from_millis(300)).await;
    let sale_id = app.open_sale(10, 1).await;
    let slow = SlowPurchase::start(app.port, &sale_id, "slowpoke").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, body) = slow.finish().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 0);
    app.buy_ok(&sale_id, "slowpoke", 1).await;
}

/// The load tool's purchase mode against a real server: it creates the
/// sale, floods it past the stock, and every invariant check holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_proves_the_invariants_of_a_sale_it_creates() {
    use clap::Parser as _;
    let app = spawn_app().await;
    let args = flashsale_bench::BenchArgs::try_parse_from([
        "flashsale-bench",
        "--url",
        &app.address,
        "--admin-token",
        ADMIN_TOKEN,
        "--jwt-secret",
        JWT_SECRET,
        "--stock",
        "150",
        "--per-user-limit",
        "2",
        "--quantity",
        "2",
        "--users",
        "100",
        "--requests",
        "300",
        "--concurrency",
        "16",
        "--json",
    ])
    .unwrap();
    let summary = flashsale_bench::run(&args).await.expect("the bench runs");
    let failures = flashsale_bench::checks::failures(&summary.checks);
    assert!(summary.ok, "{failures}");
    let names: Vec<&str> = summary.checks.iter().map(|c| c.name).collect();
    for name in [
        "no_oversell",
        "stock_exhausted",
        "per_user_limit",
        "unique_orders",
        "answers_well_formed",
        "errors_well_formed",
        "orders_readable",
        "stats_sold_matches",
        "stats_orders_persisted",
    ] {
        assert!(names.contains(&name), "no {name} check: {names:?}");
    }
    // 150 units in twos: 75 orders; each of 100 buyers may take one.
    assert_eq!((summary.accepted, summary.accepted_units), (75, 150));
    assert_eq!(summary.requests, 300);
    assert_eq!(
        summary.outcomes.get("201"),
        Some(&75),
        "{:?}",
        summary.outcomes
    );
    let sale_id = summary.sale_id.clone().expect("the sale it created");
    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "sold"), 150, "{stats}");
    assert_eq!(num(&stats, "orders_persisted"), 75, "{stats}");

    // The server's floor, no credentials: every answer a 200.
    let args = flashsale_bench::BenchArgs::try_parse_from([
        "flashsale-bench",
        "--url",
        &app.address,
        "--mode",
        "healthz",
        "--requests",
        "200",
        "--concurrency",
        "4",
        "--json",
    ])
    .unwrap();
    let summary = flashsale_bench::run(&args).await.expect("the bench runs");
    assert!(summary.ok && summary.checks.is_empty(), "{summary:?}");
    assert_eq!(
        summary.outcomes.get("200"),
        Some(&200),
        "{:?}",
        summary.outcomes
    );
}
