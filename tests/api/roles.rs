//! Node roles (`--roles`): API nodes and order writers scale apart. An
//! API-only node sells with no writer anywhere (the broker holds the
//! orders); a writer started later stores every one; a node without the API
//! role answers probes only.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::kit::{
    accepted_orders, assert_error, check_stored, flood_nodes, json_ok, spawn_app_with, time_in,
    Backends, Db, TestApp,
};
use flashsale::worker::Roles;

/// A node of `backends` running `roles`, with node id `id`.
async fn role_node(backends: &Backends, roles: &str, id: u16) -> TestApp {
    spawn_app_with(|s| {
        backends.configure(s);
        s.roles = Roles::parse(roles).unwrap();
        s.engine.node_id = id;
        s.lease_node_id = false;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_only_node_sells_with_no_writer_and_a_writer_started_later_stores_every_order() {
    let backends = Backends::new(Db::Postgres).await;
    let api = role_node(&backends, "api", 1).await;
    let stock = 150;
    let sale = api.open_sale(stock, 2).await;
    let result = flood_nodes(std::slice::from_ref(&api), &sale, 100, 400).await;
    assert_eq!(result.orders, stock, "outcomes: {:?}", result.outcomes);
    assert_eq!(
        result.status_count(201) + result.status_count(409),
        result.requests,
        "unexpected answers: {:?}",
        result.outcomes
    );
    // No writer runs anywhere: every accepted order waits in the broker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        backends.orders(&sale).await.len(),
        0,
        "an API-only node stored orders itself"
    );
    let writer = role_node(&backends, "writer,relay,reconciler", 2).await;
    let accepted = accepted_orders(&result);
    let rows = backends
        .wait_for_accepted(&sale, &accepted, Duration::from_secs(30))
        .await;
    check_stored(&rows, &accepted, stock, 2, true);
    // The writer node serves probes and scrapes, not the API.
    let health = writer
        .client
        .get(writer.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = writer
        .client
        .get(writer.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("flashsale_writer_orders_total"), "{text}");
    let buy = writer.buy(&sale, "u1").await;
    assert_error(buy, StatusCode::NOT_FOUND, "not_found").await;
    let page = writer.get_sale(&sale).await;
    assert_error(page, StatusCode::NOT_FOUND, "not_found").await;
    // The API node's stats learn what the writer stored (no reconciler
    // runs there: the stock watcher refreshes the count).
    crate::kit::eventually(
        Duration::from_secs(15),
        "orders_persisted on the API node",
        || async {
            let stats = api.stats(&sale).await;
            (stats["orders_persisted"] == stock).then_some(())
        },
    )
    .await;
    // The API node still reads what the writer stored.
    let (order_id, user) = &accepted[0];
    let read = api.get_order(order_id, &api.token(user)).await;
    assert_eq!(read.status(), StatusCode::OK);
    writer.stop().await;
    api.stop().await;
    backends.cleanup().await;
}

#[tokio::test]
async fn a_subset_of_roles_is_refused_in_the_embedded_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = flashsale::Settings::with_data_dir(dir.path());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.roles = Roles::parse("api").unwrap();
    let err = flashsale::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{err:#}").contains("needs the distributed mode"),
        "{err:#}"
    );
}

/// In-flight records left in Redis under this test's namespace.
async fn in_flight_records(backends: &Backends) -> i64 {
    let mut conn = backends.redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*:inflight", backends.namespace))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut n = 0;
    for key in keys {
        n += redis::cmd("HLEN")
            .arg(key)
            .query_async::<i64>(&mut conn)
            .await
            .unwrap();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_accepted_on_one_node_reads_on_another_before_any_writer_stores_it() {
    let backends = Backends::new(Db::Postgres).await;
    let (seller, reader) = (
        role_node(&backends, "api", 1).await,
        role_node(&backends, "api", 2).await,
    );
    // A sale of one bucket and one over three (an order's record sits in
    // its buyer's bucket).
    let mut bought = Vec::new();
    for buckets in [1, 3] {
        let sale = seller
            .create_sale(json!({
                "item": format!("in flight, {buckets} buckets"), "stock": 20,
                "per_user_limit": 2, "starts_at": time_in(-1), "buckets": buckets,
            }))
            .await;
        let sale = sale["id"].as_str().unwrap().to_owned();
        for i in 0..6 {
            let user = format!("b{buckets}-u{i}");
            let order = seller.buy_ok(&sale, &user, 1 + i % 2).await;
            bought.push((user, order));
        }
    }
    assert_eq!(in_flight_records(&backends).await, 12);
    // No writer runs: the other node reads each order from Redis, at once,
    // as its buyer's; anybody else gets 404.
    for (user, order) in &bought {
        let id = order["order_id"].as_str().unwrap();
        let read = json_ok(reader.get_order(id, &reader.token(user)).await).await;
        for field in [
            "order_id",
            "sale_id",
            "user_id",
            "quantity",
            "status",
            "created_at",
        ] {
            assert_eq!(read[field], order[field], "{field}: {read} vs {order}");
        }
        assert_eq!(read["status"], "pending_payment");
        let other = reader.get_order(id, &reader.token("someone-else")).await;
        assert_error(other, StatusCode::NOT_FOUND, "not_found").await;
    }
    let unknown = reader.get_order("12345", &reader.token("b1-u0")).await;
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found").await;
    // A writer stores them and drops their records; the reads go on, now
    // from the database.
    let writer = role_node(&backends, "writer", 3).await;
    crate::kit::eventually(
        Duration::from_secs(20),
        "in-flight records dropped",
        || async { (in_flight_records(&backends).await == 0).then_some(()) },
    )
    .await;
    for (user, order) in &bought {
        let id = order["order_id"].as_str().unwrap();
        let read = json_ok(reader.get_order(id, &reader.token(user)).await).await;
        assert_eq!(read["order_id"], order["order_id"]);
    }
    writer.stop().await;
    reader.stop().await;
    seller.stop().await;
    backends.cleanup().await;
}
