//! Several stateless nodes over the real Redis, RabbitMQ and PostgreSQL or
//! MariaDB of this machine, each test in its own namespace (see
//! [`crate::kit::backends`]). Invariants are checked in the database.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::kit::drill::DrillReport;
use crate::kit::{
    accepted_orders, check_stored, flood_nodes, json_status, no_answer, open_sale_body, redis_sold,
    start_binary_with, token, unique_admin_token, Backends, Db, RedisServers, TestApp,
};

async fn nodes(backends: &Backends, n: usize) -> Vec<TestApp> {
    backends.nodes(n).await
}

async fn stop_all(nodes: Vec<TestApp>) {
    for n in nodes {
        n.stop().await;
    }
}

async fn three_nodes_sell_exactly_the_stock(db: Db) {
    let backends = Backends::new(db).await;
    let nodes = nodes(&backends, 3).await;
    let ready: serde_json::Value = nodes[2]
        .client
        .get(nodes[2].url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(
        (&ready["redis"], &ready["queue"]),
        (&json!("ok"), &json!("ok"))
    );
    let stock = 300;
    let sale = nodes[0].open_sale(stock, 2).await;
    // 2,400 purchases by 400 users (limit 2 each) over three nodes at once.
    let result = flood_nodes(&nodes, &sale, 400, 2400).await;
    assert_eq!(result.orders, stock, "outcomes: {:?}", result.outcomes);
    let only_expected = result.status_count(201) + result.status_count(409) == result.requests;
    assert!(only_expected, "unexpected answers: {:?}", result.outcomes);
    let rows = backends
        .wait_for_orders(&sale, stock as usize, Duration::from_secs(30))
        .await;
    check_stored(&rows, &accepted_orders(&result), stock, 2, true);
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
    assert_eq!(
        nodes[1].buy(&sale, "carol").await.status(),
        StatusCode::CONFLICT
    );
    let rows = backends
        .wait_for_orders(&sale, 2, Duration::from_secs(10))
        .await;
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
    let rows = backends
        .wait_for_orders(&sale, 1, Duration::from_secs(10))
        .await;
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
    let result = flood_nodes(&nodes, &sale, 20, 20).await;
    assert_eq!(result.orders, 20);
    // Three sweepers race; every order expires exactly once and Redis gets
    // each unit back exactly once: 20 units again, not 40 or 60.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = backends.orders(&sale).await;
        if rows.len() == 20 && rows.iter().all(|r| r.status == "expired") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "orders did not expire: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(nodes[2].sale(&sale).await["remaining"], 20);
    let again = flood_nodes(&nodes, &sale, 40, 40).await;
    assert_eq!(again.orders, 20, "{:?}", again.outcomes);
    stop_all(nodes).await;
    backends.cleanup().await;
}

#[tokio::test]
async fn half_a_distributed_configuration_is_refused_at_start() {
    let backends = Backends::new(Db::Postgres).await;
    let mut settings = flashsale::Settings::with_data_dir(tempfile::tempdir().unwrap().path());
    backends.configure(&mut settings);
    settings.queue = None;
    let err = flashsale::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("--queue"), "{err:#}");
    backends.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_over_a_three_master_redis_cluster_sell_exactly_the_stock() {
    let servers = RedisServers::cluster().await;
    let mut backends = Backends::new(Db::Postgres).await;
    servers.use_for(&mut backends);
    let nodes = nodes(&backends, 3).await;
    // Several sales: their hash tags land in different slots, so on
    // different masters; each script still touches one slot.
    for stock in [50u64, 80, 120] {
        let sale = nodes[(stock % 3) as usize].open_sale(stock, 1).await;
        let result = flood_nodes(&nodes, &sale, 400, 600).await;
        assert_eq!(result.orders, stock, "{:?}", result.outcomes);
        let rows = backends
            .wait_for_orders(&sale, stock as usize, Duration::from_secs(30))
            .await;
        check_stored(&rows, &accepted_orders(&result), stock, 1, true);
    }
    stop_all(nodes).await;
    backends.cleanup().await;
    drop(servers);
}

/// Redis forgets decisions without any change the fence could see (here
/// by hand: the sale's `sold` set back, as a restore from an old snapshot
/// would): the reconciler finds the database holding more than Redis
/// counts, fences the sale, and it is re-seeded before it oversells.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_fences_a_sale_whose_redis_count_fell_behind_the_database() {
    let backends = Backends::new(Db::Postgres).await;
    let nodes = nodes(&backends, 2).await;
    let stock = 100;
    let sale = nodes[0].open_sale(stock, 1).await;
    let first = flood_nodes(&nodes, &sale, 60, 60).await;
    assert_eq!(first.orders, 60);
    backends
        .wait_for_orders(&sale, 60, Duration::from_secs(30))
        .await;
    let mut conn = backends.redis_conn().await;
    let meta = format!("{}:{{{sale}}}:meta", backends.namespace);
    let _: () = redis::cmd("HSET")
        .arg(&meta)
        .arg("sold")
        .arg(20)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Two reconciler readings (5 s apart), the settle window, the drain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while redis_sold(&backends, &sale).await != Some(60) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never fenced and re-seeded: Redis says {:?}",
            redis_sold(&backends, &sale).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = flood_nodes(&nodes, &sale, 200, 400).await;
    let mut accepted = accepted_orders(&first);
    accepted.extend(accepted_orders(&second));
    let rows = backends
        .wait_for_accepted(&sale, &accepted, Duration::from_secs(30))
        .await;
    check_stored(&rows, &accepted, stock, 1, true);
    assert_eq!(rows.len() as u64, stock);
    stop_all(nodes).await;
    backends.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_refuses_purchases_until_reseeded_then_sells_exactly_the_rest() {
    let mut servers = RedisServers::standalone().await;
    let mut backends = Backends::new(Db::Postgres).await;
    servers.use_for(&mut backends);
    let nodes = nodes(&backends, 2).await;
    let stock = 200;
    let sale = nodes[0].open_sale(stock, 1).await;
    let first = flood_nodes(&nodes, &sale, 120, 120).await;
    assert_eq!(first.orders, 120);
    backends
        .wait_for_orders(&sale, 120, Duration::from_secs(30))
        .await;

    servers.restart_empty().await;
    // Redis holds nothing: no node may sell from a blank counter.
    let resp = nodes[1].buy(&sale, "right-after-restart").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");

    // A node re-seeds from the database; then the sale sells the rest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while redis_sold(&backends, &sale).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never re-seeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis_sold(&backends, &sale).await, Some(120));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The first 120 buyers are still at their limit; 400 others compete.
    let second = flood_nodes(&nodes, &sale, 520, 1040).await;
    assert_eq!(second.orders, 80, "{:?}", second.outcomes);
    let mut accepted = accepted_orders(&first);
    for (id, user) in accepted_orders(&second) {
        assert!(user != "right-after-restart");
        accepted.push((id, user));
    }
    let rows = backends
        .wait_for_orders(&sale, 200, Duration::from_secs(30))
        .await;
    check_stored(&rows, &accepted, stock, 1, true);
    stop_all(nodes).await;
    backends.cleanup().await;
}

/// A writer holding deliveries it cannot insert (the orders table locked,
/// reads still served) while Redis comes back empty: the re-seed sees the
/// unacked deliveries through the broker's management API and waits for
/// them, so the sale is re-seeded with every confirmed order counted. (The
/// old stand-in, the database's count standing still, would re-seed at
/// the first 40 — and sell the held 20 units again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reseed_waits_for_deliveries_a_writer_holds_unacked() {
    use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
    use flashsale::backend::queue::OrderQueue;
    use sqlx::Connection as _;
    let mut servers = RedisServers::standalone().await;
    let mut backends = Backends::new(Db::Postgres).await;
    servers.use_for(&mut backends);
    let nodes = nodes(&backends, 1).await;
    let stock = 100;
    let sale = nodes[0].open_sale(stock, 1).await;
    let first = flood_nodes(&nodes, &sale, 40, 40).await;
    assert_eq!(first.orders, 40);
    backends
        .wait_for_orders(&sale, 40, Duration::from_secs(30))
        .await;

    // Writes to orders wait; reads go on.
    let mut lock = sqlx::PgConnection::connect(&backends.db_url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE orders IN EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    // u0..u39 are at their limit: u40..u59 buy.
    let second = flood_nodes(&nodes, &sale, 60, 60).await;
    assert_eq!(second.orders, 20, "{:?}", second.outcomes);
    servers.restart_empty().await;
    let held = std::time::Instant::now();

    // The broker counts the writer's 20 deliveries unacked (in one or more
    // messages: at least one).
    let queue = AmqpQueue::connect(&AmqpSettings::new(
        crate::kit::AMQP,
        backends.namespace.clone(),
    ))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = queue.depth().await.unwrap();
        if d.sample
            .is_some_and(|s| s.taken_after >= held && s.unacked > 0 && s.ready == 0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never counted unacked: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Past the settle window (6 s) and a broker sample (5 s) after it:
    // the count stood still all along, yet no re-seed.
    while held.elapsed() < Duration::from_secs(14) {
        assert_eq!(
            redis_sold(&backends, &sale).await,
            None,
            "re-seeded while a writer held confirmed orders"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    backends
        .wait_for_orders(&sale, 60, Duration::from_secs(30))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while redis_sold(&backends, &sale).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never re-seeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis_sold(&backends, &sale).await, Some(60));
    let mut accepted = accepted_orders(&first);
    accepted.extend(accepted_orders(&second));
    let rows = backends.orders(&sale).await;
    check_stored(&rows, &accepted, stock, 1, true);
    stop_all(nodes).await;
    backends.cleanup().await;
}

/// Starts the real binary as a node over `backends`.
async fn start_node_binary(
    backends: &Backends,
    dir: &std::path::Path,
) -> (tokio::process::Child, TestApp) {
    start_binary_with(dir, &unique_admin_token(), |cmd| {
        cmd.args(backends.flags());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_node_mid_flood_loses_no_accepted_order_and_oversells_nothing() {
    let backends = Backends::new(Db::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    let mut apps = Vec::new();
    for _ in 0..3 {
        let (child, mut app) = start_node_binary(&backends, dir.path()).await;
        // One admin token for all: each node was started with its own.
        app.admin_token = app.admin_token.clone();
        children.push(child);
        apps.push(app);
    }
    let stock = 2000;
    let sale = {
        let resp = apps[0].post_sale(&open_sale_body(stock, 1)).await;
        json_status(resp, StatusCode::CREATED).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let victim = children.remove(2);
    let killer = tokio::spawn(async move {
        let mut victim = victim;
        tokio::time::sleep(Duration::from_millis(400)).await;
        victim.start_kill().expect("kill -9");
        let _ = victim.wait().await;
    });
    let result = flood_nodes(&apps, &sale, 3000, 3000).await;
    let flood_ended = std::time::Instant::now();
    killer.await.unwrap();
    let dropped = no_answer(&result);
    assert!(
        dropped > 0,
        "the kill landed after the flood: {:?}",
        result.outcomes
    );
    // The survivors' writers take over the victim's unacked messages and
    // their relays deliver its outbox: every 201 ends up stored.
    let rows = backends
        .wait_for_accepted(&sale, &accepted_orders(&result), Duration::from_secs(40))
        .await;
    check_stored(&rows, &accepted_orders(&result), stock, 1, false);
    // Redis and the database agree once the pipeline settled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let db: u64 = backends
            .orders(&sale)
            .await
            .iter()
            .map(|r| r.quantity)
            .sum();
        let redis = redis_sold(&backends, &sale).await.unwrap();
        if db == redis {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis {redis} vs database {db}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A drill of scripts/drills.sh (docs/RELIABILITY.md).
    let rows = backends.orders(&sale).await;
    let mut report = DrillReport::from_rows(
        "node_killed_distributed",
        "distributed",
        "one of three nodes killed (`kill -9`) 0.4 s into a flood",
        &rows,
        &accepted_orders(&result),
        stock,
        1,
    );
    report.refused_during = dropped as usize;
    // Until every 201 is stored and Redis agrees with the database.
    report.recovered_ms = Some(flood_ended.elapsed().as_millis() as u64);
    report.leaked = Some(0);
    report.write();
    for mut c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    backends.cleanup().await;
}

/// Calls of `EVALSHA` Redis has served so far.
async fn evalsha_calls(backends: &Backends) -> u64 {
    let mut conn = backends.redis_conn().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sold_out_rejections_make_no_redis_calls() {
    // A private Redis: its command counters see only this test.
    let servers = RedisServers::standalone().await;
    let mut backends = Backends::new(Db::Postgres).await;
    servers.use_for(&mut backends);
    let nodes = nodes(&backends, 2).await;
    let sale = nodes[0].open_sale(5, 1).await;
    let sold = flood_nodes(&nodes, &sale, 50, 50).await;
    assert_eq!(sold.orders, 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = evalsha_calls(&backends).await;
    let started = tokio::time::Instant::now();
    let rejected = flood_nodes(&nodes, &sale, 3000, 3000).await;
    let elapsed = started.elapsed();
    let calls = evalsha_calls(&backends).await - before;
    assert_eq!(rejected.status_count(409), 3000, "{:?}", rejected.outcomes);
    // Only the stock watchers' reads (each node, every 250 ms, plus the
    // relay and reconciler) — none per request.
    let watcher_budget = 2 * (elapsed.as_millis() as u64 / 250 + 2) * 3;
    assert!(
        calls <= watcher_budget,
        "{calls} EVALSHA calls during 3000 sold-out answers in {elapsed:?} (budget {watcher_budget})"
    );
    stop_all(nodes).await;
    backends.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_goes_to_the_dead_letter_queue_and_orders_keep_flowing() {
    use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
    use flashsale::backend::queue::OrderQueue;
    let backends = Backends::new(Db::Postgres).await;
    let nodes = nodes(&backends, 1).await;
    let queue = AmqpQueue::connect(&AmqpSettings {
        url: crate::kit::AMQP.to_owned(),
        prefix: backends.namespace.clone(),
        management: Default::default(),
    })
    .await
    .unwrap();
    queue.publish_orders(b"this is not an order").await.unwrap();
    queue.publish_orders(b"[{\"id\":1}]").await.unwrap();
    let sale = nodes[0].open_sale(10, 1).await;
    let order = nodes[0].buy_ok(&sale, "erin", 1).await;
    let rows = backends
        .wait_for_orders(&sale, 1, Duration::from_secs(10))
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].order_id.to_string(),
        order["order_id"].as_str().unwrap()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let depth = queue.depth().await.unwrap();
        let (ready, dead) = (depth.ready, depth.dead);
        if dead == 2 {
            assert_eq!(ready, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {dead}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_all(nodes).await;
    backends.cleanup().await;
}

/// One purchase of the stall drill: when it started (since the pause), how
/// long it took, its status and the order it made.
struct Attempt {
    started: Duration,
    took: Duration,
    status: u16,
    order: Option<(String, String)>,
}

/// The 99th percentile of `latencies` (sorted in place).
fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

/// The breakers `/readyz` shows; `null` when it did not answer within
/// 1.2 s (its checks run at once, each bounded at 0.8 s, so a stalled
/// backend is answered "unavailable" within that).
async fn readyz_breakers(node: &TestApp) -> serde_json::Value {
    let asked = node
        .client
        .get(node.url("/readyz"))
        .timeout(Duration::from_millis(1_200))
        .send()
        .await;
    match asked {
        Ok(resp) => resp.json::<serde_json::Value>().await.unwrap()["breakers"].clone(),
        Err(_) => serde_json::Value::Null,
    }
}

/// A private Redis stalled 8 s (`CLIENT PAUSE 8000 ALL`) while buyers keep
/// coming: the first purchases wait, then the stock's circuit breaker opens
/// and purchases are refused `503 unavailable` in milliseconds; `/readyz`
/// shows it open; once Redis answers again the breaker closes and the sale
/// sells exactly its stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_redis_opens_the_stock_breaker_then_purchases_fail_fast_and_recover() {
    let servers = RedisServers::standalone().await;
    let mut backends = Backends::new(Db::Postgres).await;
    servers.use_for(&mut backends);
    backends.private_redis = true;
    let node = nodes(&backends, 1).await.remove(0);
    let closed = json!({"stock": "closed", "queue": "closed", "store": "closed"});
    assert_eq!(readyz_breakers(&node).await, closed);
    let stock = 150;
    let sale = node.open_sale(stock, 1).await;
    let first = flood_nodes(std::slice::from_ref(&node), &sale, 40, 40).await;
    assert_eq!(first.orders, 40, "{:?}", first.outcomes);

    let mut redis = backends.redis_conn().await;
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(8000)
        .arg("ALL")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let paused = tokio::time::Instant::now();
    let pause = Duration::from_secs(8);

    // Sixteen buyers, each buying again as soon as answered (new names
    // every time), for 16 s from the pause.
    let buyers = (0..16).map(|b| {
        let client = node.client.clone();
        let url = node.url(&format!("/api/v1/sales/{sale}/purchase"));
        tokio::spawn(async move {
            let mut attempts = Vec::new();
            for n in 0.. {
                let started = paused.elapsed();
                if started > Duration::from_secs(16) {
                    break;
                }
                let user = format!("stall-{b}-{n}");
                let sent = tokio::time::Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(token(&user))
                    .send()
                    .await
                    .expect("POST purchase");
                let took = sent.elapsed();
                let status = resp.status().as_u16();
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                let order =
                    (status == 201).then(|| (body["order_id"].as_str().unwrap().to_owned(), user));
                if status == 503 {
                    assert_eq!(body["error"]["code"], "unavailable", "{body}");
                }
                attempts.push(Attempt {
                    started,
                    took,
                    status,
                    order,
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            attempts
        })
    });
    let buyers: Vec<_> = buyers.collect();

    // /readyz shows the stock breaker open while Redis is stalled.
    let mut opened_at = None;
    let mut seen = Vec::new();
    while paused.elapsed() < pause {
        let breakers = readyz_breakers(&node).await;
        seen.push((paused.elapsed(), breakers["stock"].clone()));
        if breakers["stock"] == "open" && opened_at.is_none() {
            opened_at = Some(paused.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opened_at = opened_at
        .unwrap_or_else(|| panic!("/readyz never showed the stock breaker open: {seen:?}"));
    // A stalled Redis never held the readiness probe past its bound.
    assert!(
        seen.iter().all(|(_, stock)| !stock.is_null()),
        "/readyz did not answer within 1.2 s while Redis was stalled: {seen:?}"
    );
    // After the pause the breaker closes again.
    let closed_at = loop {
        if readyz_breakers(&node).await["stock"] == "closed" {
            break paused.elapsed();
        }
        assert!(paused.elapsed() < Duration::from_secs(16), "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut attempts = Vec::new();
    for b in buyers {
        attempts.extend(b.await.unwrap());
    }

    // The first purchases waited on the stalled Redis.
    let waited = attempts
        .iter()
        .filter(|a| a.started < Duration::from_millis(500))
        .map(|a| a.took)
        .max()
        .unwrap();
    assert!(
        waited >= Duration::from_millis(900),
        "first purchases took {waited:?}"
    );
    // Once open, refusals are fast.
    let mut fast: Vec<Duration> = attempts
        .iter()
        .filter(|a| a.status == 503 && a.started > opened_at && a.started < pause)
        .map(|a| a.took)
        .collect();
    let timeline: Vec<String> = attempts
        .iter()
        .map(|a| format!("{}@{:?}+{:?}", a.status, a.started, a.took))
        .collect();
    assert!(
        fast.len() >= 20,
        "only {} refusals while open (open at {opened_at:?}); /readyz: {seen:?}; purchases: {timeline:?}",
        fast.len()
    );
    let refused_p99 = p99(&mut fast);
    assert!(
        refused_p99 < Duration::from_millis(100),
        "p99 of refusals while open: {refused_p99:?}"
    );
    // No purchase succeeded while Redis was stalled and the breaker open.
    let sold_while_open = attempts
        .iter()
        .filter(|a| a.status == 201 && a.started > opened_at && a.started + a.took < pause)
        .count();
    assert_eq!(sold_while_open, 0);
    // It sells again afterwards, and then sells out.
    assert!(attempts
        .iter()
        .any(|a| a.status == 201 && a.started > pause));
    let mut accepted = accepted_orders(&first);
    accepted.extend(attempts.iter().filter_map(|a| a.order.clone()));
    let rows = backends
        .wait_for_orders(&sale, accepted.len(), Duration::from_secs(30))
        .await;
    // A batch that reached Redis only when the pause ended took units whose
    // buyers heard `503`: the relay stores those orders, so not `exact`.
    let mut rows = rows;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let units = |rows: &[crate::kit::backends::StoredOrder]| {
        rows.iter()
            .filter(|r| r.status == "pending_payment")
            .map(|r| r.quantity)
            .sum::<u64>()
    };
    while units(&rows) < stock && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rows = backends.orders(&sale).await;
    }
    check_stored(&rows, &accepted, stock, 1, false);
    assert_eq!(units(&rows), stock);
    let mut statuses: std::collections::BTreeMap<u16, usize> = Default::default();
    for a in &attempts {
        *statuses.entry(a.status).or_default() += 1;
    }
    eprintln!(
        "drill: redis stalled 8 s: first purchases waited up to {waited:?}; breaker open at \
         {opened_at:?} (per /readyz), closed at {closed_at:?}; {} refusals while open, p99 \
         {refused_p99:?}; answers {statuses:?}; {} units stored of {stock}",
        fast.len(),
        units(&rows),
    );
    node.stop().await;
    backends.cleanup().await;
}
