//! Faults of the shared services: RabbitMQ and the database stopped for
//! 10 s mid-sale. These stop services every other test uses, so
//! `scripts/test.sh` runs them in a phase of their own, one at a time, after
//! everything else (`-E 'test(/^faults::/)' -j 1`); each restarts its
//! service as `machines/rust-svc.md` says and waits until it answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::kit::{check_stored, redis_sold, spawn_app_with, token, Backends, Db, TestApp};

fn run(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn services(action: &str, service: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    assert!(
        run(script, &[action, service]),
        "services.sh {action} {service} failed"
    );
}

/// What the steady buyers were told.
#[derive(Debug, Default)]
struct Flood {
    /// `(order id, buyer)` of every `201`.
    accepted: Vec<(String, String)>,
    /// Answers by status code.
    statuses: HashMap<u16, usize>,
}

/// Buyers who keep trying until `stop` is set, 24 at a time, each user
/// buying once; every answer recorded with the second (since `started`) it
/// came in.
async fn steady_buyers(
    nodes: Arc<Vec<TestApp>>,
    sale: String,
    started: tokio::time::Instant,
    stop: Arc<AtomicBool>,
) -> (Flood, Vec<(u64, u16)>) {
    let flood = Arc::new(Mutex::new(Flood::default()));
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let mut loops = Vec::new();
    for worker in 0..24 {
        let (nodes, sale, flood, timeline, stop) = (
            nodes.clone(),
            sale.clone(),
            flood.clone(),
            timeline.clone(),
            stop.clone(),
        );
        loops.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                let user = format!("w{worker}-{i}");
                i += 1;
                let node = &nodes[i % nodes.len()];
                let resp = node
                    .client
                    .post(node.url(&format!("/api/v1/sales/{sale}/purchase")))
                    .bearer_auth(token(&user))
                    .send()
                    .await;
                let second = started.elapsed().as_secs();
                let Ok(resp) = resp else { continue };
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                timeline.lock().await.push((second, status.as_u16()));
                let mut f = flood.lock().await;
                *f.statuses.entry(status.as_u16()).or_default() += 1;
                if status == StatusCode::CREATED {
                    let id: u64 = body["order_id"].as_str().unwrap().parse().unwrap();
                    f.accepted.push((id.to_string(), user));
                }
                drop(f);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for l in loops {
        l.await.unwrap();
    }
    let flood = std::mem::take(&mut *flood.lock().await);
    let timeline = std::mem::take(&mut *timeline.lock().await);
    (flood, timeline)
}

fn count(timeline: &[(u64, u16)], seconds: std::ops::Range<u64>, status: u16) -> usize {
    timeline
        .iter()
        .filter(|(s, st)| seconds.contains(s) && *st == status)
        .count()
}

async fn settle(backends: &Backends, sale: &str, flood: &Flood, stock: u64) {
    let rows = backends
        .wait_for_accepted(sale, &flood.accepted, Duration::from_secs(60))
        .await;
    check_stored(&rows, &flood.accepted, stock, 1, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = backends.orders(sale).await;
        let db: u64 = rows.iter().map(|r| r.quantity).sum();
        let redis = redis_sold(backends, sale).await.unwrap();
        if db == redis {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis {redis} vs database {db}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn two_nodes(backends: &Backends, first_id: u16) -> Vec<TestApp> {
    let mut nodes = Vec::new();
    for i in 0..2 {
        nodes.push(
            spawn_app_with(|s| {
                backends.configure(s);
                s.engine.node_id = first_id + i;
                s.lease_node_id = false;
            })
            .await,
        );
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_down_for_10_s_buffers_orders_then_they_flow() {
    services("check", "rabbitmq");
    let backends = Backends::new(Db::Postgres).await;
    let nodes = two_nodes(&backends, 10).await;
    let stock = 100_000;
    let sale = nodes[0].open_sale(stock, 1).await;
    let nodes = Arc::new(nodes);
    let (started, stop) = (
        tokio::time::Instant::now(),
        Arc::new(AtomicBool::new(false)),
    );
    let buyers = tokio::spawn(steady_buyers(
        nodes.clone(),
        sale.clone(),
        started,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(run("rabbitmqctl", &["stop_app"]), "rabbitmqctl stop_app");
    let down = started.elapsed().as_secs();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarting = started.elapsed().as_secs();
    if !run("rabbitmqctl", &["start_app"]) {
        services("check", "rabbitmq");
    }
    services("check", "rabbitmq");
    let up = started.elapsed().as_secs();
    // Buy on until the nodes have had 6 s to reconnect.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Release);
    let (flood, timeline) = buyers.await.unwrap();
    let end = started.elapsed().as_secs() + 1;
    let by_status: HashMap<u16, usize> = flood.statuses.clone();
    // Before: sales. During: refused with 503 (no stock taken without a
    // broker to confirm). After: sales again.
    assert!(count(&timeline, 0..3, 201) > 0, "{by_status:?}");
    let during = down + 1..restarting;
    assert!(count(&timeline, during.clone(), 503) > 0, "{timeline:?}");
    assert_eq!(
        count(&timeline, during, 201),
        0,
        "accepted while the broker was down"
    );
    assert!(
        count(&timeline, up..end, 201) > 0,
        "no sales after the broker came back at {up} s: {by_status:?}"
    );
    settle(&backends, &sale, &flood, stock).await;
    for n in Arc::try_unwrap(nodes).ok().unwrap() {
        n.stop().await;
    }
    backends.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_down_for_10_s_queues_orders_and_the_writer_resumes() {
    services("check", "postgres");
    let backends = Backends::new(Db::Postgres).await;
    let nodes = two_nodes(&backends, 20).await;
    let stock = 100_000;
    let sale = nodes[0].open_sale(stock, 1).await;
    let nodes = Arc::new(nodes);
    let (started, stop) = (
        tokio::time::Instant::now(),
        Arc::new(AtomicBool::new(false)),
    );
    let buyers = tokio::spawn(steady_buyers(
        nodes.clone(),
        sale.clone(),
        started,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("a PostgreSQL cluster in /etc/postgresql");
    let pg_ctl = [
        "--skip-systemctl-redirect",
        &version,
        "main",
        "stop",
        "-m",
        "fast",
    ];
    assert!(run("pg_ctlcluster", &pg_ctl), "stopping PostgreSQL");
    let down = started.elapsed().as_secs();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarting = started.elapsed().as_secs();
    services("check", "postgres");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Release);
    let (flood, timeline) = buyers.await.unwrap();
    // Purchases never needed the database: sales go on through the outage.
    assert!(
        count(&timeline, down + 1..restarting, 201) > 0,
        "{:?}",
        flood.statuses
    );
    settle(&backends, &sale, &flood, stock).await;
    for n in Arc::try_unwrap(nodes).ok().unwrap() {
        n.stop().await;
    }
    backends.cleanup().await;
}
