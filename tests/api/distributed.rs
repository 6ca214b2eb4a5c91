//! Several stateless nodes over the real Redis, RabbitMQ and PostgreSQL or
//! MariaDB of this machine, each test in its own namespace (see
//! [`crate::cluster`]). Invariants are checked in the database.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::cluster::{check_invariants, flood, Backends, Db};
use crate::helpers::{json_status, open_sale_body, spawn_app_with, token, TestApp};

async fn nodes(backends: &Backends, n: usize) -> Vec<TestApp> {
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(
            spawn_app_with(|s| {
                backends.configure(s);
                s.engine.node_id = i as u16 + 1;
            })
            .await,
        );
    }
    nodes
}

async fn stop_all(nodes: Vec<TestApp>) {
    for n in nodes {
        n.stop().await;
    }
}

async fn three_nodes_sell_exactly_the_stock(db: Db) {
    let backends = Backends::new(db).await;
    let nodes = nodes(&backends, 3).await;
    let stock = 300;
    let sale = nodes[0].open_sale(stock, 2).await;
    // 2,400 purchases by 400 users (limit 2 each) over three nodes at once.
    let result = flood(&nodes, &sale, 400, 2400).await;
    assert_eq!(result.accepted.len() as u64, stock, "statuses: {:?}", result.statuses);
    let only_expected = result
        .statuses
        .keys()
        .all(|s| [201, 409].contains(s));
    assert!(only_expected, "unexpected answers: {:?}", result.statuses);
    let rows = backends
        .wait_for_orders(&sale, stock as usize, Duration::from_secs(30))
        .await;
    check_invariants(&rows, &result, stock, 2, true);
    // Every node now refuses from its local flag.
    for node in &nodes {
        let resp = node.buy(&sale, "late-buyer").await;
        assert_eq!(resp.status(), StatusCode::CONFLICT);
    }
    // The stats endpoint agrees with the database once the writer caught up.
    let stats = nodes[1].stats(&sale).await;
    assert_eq!(stats["sold"], stock);
    stop_all(nodes).await;
    backends.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_over_postgres_sell_exactly_the_stock() {
    three_nodes_sell_exactly_the_stock(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_over_mysql_sell_exactly_the_stock() {
    three_nodes_sell_exactly_the_stock(Db::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_created_on_one_node_sells_on_every_node_and_a_cancel_reopens_them_all() {
    let backends = Backends::new(Db::Postgres).await;
    let nodes = nodes(&backends, 3).await;
    let sale = nodes[0].open_sale(1, 1).await;
    // Node 1 never saw the sale being created: it finds it in the database.
    let page = nodes[1].sale(&sale).await;
    assert_eq!(page["remaining"], 1);
    let order = nodes[1].buy_ok(&sale, "alice", 1).await;
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    // Sold out everywhere, answered from each node's own flag.
    for node in &nodes {
        assert_eq!(node.buy(&sale, "bob").await.status(), StatusCode::CONFLICT);
    }
    // Alice cancels on node 2 (the writer may still be storing the order).
    let resp = nodes[2].cancel(&order_id, &token("alice")).await;
    let cancelled = json_status(resp, StatusCode::OK).await;
    assert_eq!(cancelled["status"], "cancelled");
    // Within a second every node sells the returned unit again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let again = nodes[0].buy_ok(&sale, "bob", 1).await;
    assert_eq!(again["status"], "pending_payment");
    assert_eq!(nodes[1].buy(&sale, "carol").await.status(), StatusCode::CONFLICT);
    let rows = backends.wait_for_orders(&sale, 2, Duration::from_secs(10)).await;
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(rows.len(), 2, "{statuses:?}");
    assert!(statuses.contains(&"cancelled") && statuses.contains(&"pending_payment"));
    stop_all(nodes).await;
    backends.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replays_the_first_order_on_another_node() {
    let backends = Backends::new(Db::Postgres).await;
    let nodes = nodes(&backends, 2).await;
    let sale = nodes[0].open_sale(10, 5).await;
    let t = token("dora");
    let first = nodes[0]
        .purchase(&sale, &t, Some(json!({"quantity": 2})), Some("key-1"))
        .await;
    let first = json_status(first, StatusCode::CREATED).await;
    let replay = nodes[1]
        .purchase(&sale, &t, Some(json!({"quantity": 2})), Some("key-1"))
        .await;
    let replay = json_status(replay, StatusCode::CREATED).await;
    assert_eq!(first["order_id"], replay["order_id"]);
    // The same key for another quantity is refused, on any node.
    let other = nodes[1]
        .purchase(&sale, &t, Some(json!({"quantity": 1})), Some("key-1"))
        .await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let rows = backends.wait_for_orders(&sale, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backends.orders(&sale).await.len(), 1, "{rows:?}");
    assert_eq!(nodes[0].sale(&sale).await["remaining"], 8);
    stop_all(nodes).await;
    backends.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_expire_once_across_nodes_and_their_units_return() {
    let backends = Backends::new(Db::MySql).await;
    let nodes = nodes(&backends, 3).await;
    let mut body = open_sale_body(20, 1);
    body["payment_window_secs"] = json!(1);
    let sale = nodes[0].create_sale(body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let result = flood(&nodes, &sale, 20, 20).await;
    assert_eq!(result.accepted.len(), 20);
    // Three sweepers race; every order expires exactly once and Redis gets
    // each unit back exactly once: 20 units again, not 40 or 60.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = backends.orders(&sale).await;
        if rows.len() == 20 && rows.iter().all(|r| r.status == "expired") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "orders did not expire: {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(nodes[2].sale(&sale).await["remaining"], 20);
    let again = flood(&nodes, &sale, 40, 40).await;
    assert_eq!(again.accepted.len(), 20, "{:?}", again.statuses);
    stop_all(nodes).await;
    backends.cleanup().await;
}

#[tokio::test]
async fn half_a_distributed_configuration_is_refused_at_start() {
    let backends = Backends::new(Db::Postgres).await;
    let mut settings = flashsale::Settings::with_data_dir(tempfile::tempdir().unwrap().path());
    backends.configure(&mut settings);
    settings.queue = None;
    let err = flashsale::Application::build(settings).await.err().expect("refused");
    assert!(format!("{err:#}").contains("--queue"), "{err:#}");
    backends.cleanup().await;
}
