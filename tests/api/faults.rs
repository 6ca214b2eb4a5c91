//! Faults of the shared services, the fault drills of `scripts/drills.sh`
//! (docs/RELIABILITY.md): RabbitMQ, PostgreSQL and Redis stopped for 10 s
//! mid-sale, and a node killed while its writer holds unacked deliveries.
//! Each drill checks the invariants in the database itself and writes its
//! figures ([`DrillReport`]). These stop services every other test uses, so
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

use crate::kit::drill::{answers, first_sale_after, DrillReport, Timeline};
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
/// buying once; every answer recorded with the millisecond (since
/// `started`) it came in (status 0: no answer).
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
                let at = started.elapsed().as_millis() as u64;
                let Ok(resp) = resp else {
                    timeline.lock().await.push((at, 0));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                timeline.lock().await.push((at, status.as_u16()));
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

/// Answers with `status` in the whole seconds `seconds`.
fn count(timeline: &Timeline, seconds: std::ops::Range<u64>, status: u16) -> usize {
    answers(timeline, seconds.start * 1000..seconds.end * 1000, status)
}

/// The drill's report: the database's rows against the `201`s, the answers
/// while the fault lasted (`fault`, ms), and the stock's count against the
/// database's once settled.
#[allow(clippy::too_many_arguments)] // one drill's every figure, named at the call
async fn report(
    drill: &'static str,
    fault: &str,
    backends: &Backends,
    sale: &str,
    flood: &Flood,
    timeline: &Timeline,
    window: std::ops::Range<u64>,
    stock: u64,
) -> DrillReport {
    let rows = backends.orders(sale).await;
    let mut r = DrillReport::from_rows(
        drill,
        "distributed",
        fault,
        &rows,
        &flood.accepted,
        stock,
        1,
    );
    r.accepted_during = answers(timeline, window.clone(), 201);
    r.refused_during =
        answers(timeline, window.clone(), 503) + answers(timeline, window.clone(), 0);
    r.recovered_ms = first_sale_after(timeline, window.end);
    let db: u64 = rows.iter().map(|r| r.quantity).sum();
    r.leaked = redis_sold(backends, sale)
        .await
        .map(|redis| redis as i64 - db as i64);
    r
}

/// Waits until every `201` is stored and the stock's count of sold units
/// equals the database's (leaked units returned), checking the invariants.
async fn settle(backends: &Backends, sale: &str, accepted: &[(String, String)], stock: u64) {
    let rows = backends
        .wait_for_accepted(sale, accepted, Duration::from_secs(60))
        .await;
    check_stored(&rows, accepted, stock, 1, false);
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

/// A drill under way: steady buyers on one sale over its nodes.
struct Flooding {
    nodes: Arc<Vec<TestApp>>,
    sale: String,
    started: tokio::time::Instant,
    stop: Arc<AtomicBool>,
    buyers: tokio::task::JoinHandle<(Flood, Vec<(u64, u16)>)>,
}

impl Flooding {
    /// Opens a sale of `stock` (one per buyer) on the first node and sets
    /// the buyers going.
    async fn start(nodes: Vec<TestApp>, stock: u64) -> Self {
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
        Self {
            nodes,
            sale,
            started,
            stop,
            buyers,
        }
    }

    /// Stops the buyers: the nodes back, and what the buyers were told.
    async fn end(self) -> (Vec<TestApp>, Flood, Vec<(u64, u16)>) {
        self.stop.store(true, Ordering::Release);
        let (flood, timeline) = self.buyers.await.unwrap();
        let nodes = Arc::try_unwrap(self.nodes)
            .ok()
            .expect("the buyers are done");
        (nodes, flood, timeline)
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
    let flooding = Flooding::start(nodes, stock).await;
    let (sale, started) = (flooding.sale.clone(), flooding.started);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(run("rabbitmqctl", &["stop_app"]), "rabbitmqctl stop_app");
    // The fault counts from the broker's stop (the command takes a while).
    let down_ms = started.elapsed().as_millis() as u64;
    let down = started.elapsed().as_secs();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarting = started.elapsed().as_secs();
    if !run("rabbitmqctl", &["start_app"]) {
        services("check", "rabbitmq");
    }
    services("check", "rabbitmq");
    let up_ms = started.elapsed().as_millis() as u64;
    let up = started.elapsed().as_secs();
    // Buy on until the nodes have had 6 s to reconnect.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (nodes, flood, timeline) = flooding.end().await;
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
    settle(&backends, &sale, &flood.accepted, stock).await;
    report(
        "rabbitmq_stopped_10_s",
        "RabbitMQ stopped 10 s (`rabbitmqctl stop_app`), two nodes",
        &backends,
        &sale,
        &flood,
        &timeline,
        down_ms..up_ms,
        stock,
    )
    .await
    .write();
    for n in nodes {
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
    let flooding = Flooding::start(nodes, stock).await;
    let (sale, started) = (flooding.sale.clone(), flooding.started);
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
    let down_ms = started.elapsed().as_millis() as u64;
    let down = started.elapsed().as_secs();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarting = started.elapsed().as_secs();
    services("check", "postgres");
    let up_ms = started.elapsed().as_millis() as u64;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (nodes, flood, timeline) = flooding.end().await;
    // Purchases never needed the database: sales go on through the outage.
    assert!(
        count(&timeline, down + 1..restarting, 201) > 0,
        "{:?}",
        flood.statuses
    );
    settle(&backends, &sale, &flood.accepted, stock).await;
    let mut r = report(
        "postgres_stopped_10_s",
        "PostgreSQL stopped 10 s (`pg_ctlcluster … stop -m fast`), two nodes",
        &backends,
        &sale,
        &flood,
        &timeline,
        down_ms..up_ms,
        stock,
    )
    .await;
    // Sales never stopped: there is nothing to recover from.
    r.recovered_ms = None;
    r.write();
    for n in nodes {
        n.stop().await;
    }
    backends.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_for_10_s_refuses_then_reseeds_and_sells_on() {
    services("check", "redis");
    let backends = Backends::new(Db::Postgres).await;
    let nodes = two_nodes(&backends, 30).await;
    let stock = 100_000;
    let flooding = Flooding::start(nodes, stock).await;
    let (sale, started) = (flooding.sale.clone(), flooding.started);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down_ms = started.elapsed().as_millis() as u64;
    // The machine's Redis keeps nothing on disk: stopped, it comes back
    // empty, and the nodes must re-seed the sale from the database.
    assert!(
        run("redis-cli", &["-p", "6379", "shutdown", "nosave"])
            || !run("redis-cli", &["-p", "6379", "ping"]),
        "stopping Redis"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarting = started.elapsed().as_secs();
    services("check", "redis");
    let up_ms = started.elapsed().as_millis() as u64;
    // The re-seed waits out RESEED_SETTLE (6 s) from the moment a node sees
    // the sale gone, then a second of a still queue and database.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (nodes, flood, timeline) = flooding.end().await;
    assert!(count(&timeline, 0..3, 201) > 0, "{:?}", flood.statuses);
    // Nothing is sold without the stock's decision.
    let during = down_ms / 1000 + 1..restarting;
    assert_eq!(
        count(&timeline, during.clone(), 201),
        0,
        "accepted while Redis was down"
    );
    assert!(count(&timeline, during, 503) > 0, "{:?}", flood.statuses);
    assert!(
        first_sale_after(&timeline, up_ms).is_some(),
        "no sale after Redis came back: {:?}",
        flood.statuses
    );
    settle(&backends, &sale, &flood.accepted, stock).await;
    report(
        "redis_stopped_10_s",
        "Redis stopped 10 s (`SHUTDOWN NOSAVE`: it comes back empty), two nodes",
        &backends,
        &sale,
        &flood,
        &timeline,
        down_ms..up_ms,
        stock,
    )
    .await
    .write();
    for n in nodes {
        n.stop().await;
    }
    backends.cleanup().await;
}

/// Unacked deliveries of the namespace's order queue, by `rabbitmqctl`.
fn unacked(namespace: &str) -> u64 {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "name", "messages_unacknowledged"])
        .output()
        .expect("rabbitmqctl list_queues");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(name, _)| *name == format!("{namespace}.orders"))
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_killed_holding_unacked_deliveries_loses_none() {
    use crate::kit::{accepted_orders, flood_nodes, start_binary_with, unique_admin_token};
    use sqlx::Connection as _;
    services("check", "rabbitmq");
    let backends = Backends::new(Db::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = unique_admin_token();
    let mut children = Vec::new();
    let mut apps = Vec::new();
    for _ in 0..2 {
        let (child, app) = start_binary_with(dir.path(), &admin, |cmd| {
            cmd.args(backends.flags());
        })
        .await;
        children.push(child);
        apps.push(app);
    }
    let stock = 3_000;
    let sale = apps[0].open_sale(stock, 1).await;
    // The writers cannot insert while this transaction holds the table:
    // what they took from the queue stays unacked.
    let mut lock = sqlx::PgConnection::connect(&backends.db_url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE orders IN EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let result = flood_nodes(&apps, &sale, 1_000, 1_000).await;
    let accepted = accepted_orders(&result);
    assert!(!accepted.is_empty(), "{:?}", result.outcomes);
    let held = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = unacked(&backends.namespace);
            if n > 0 || tokio::time::Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(held > 0, "no delivery was held unacked");
    // kill -9 of the first node, its writer mid-batch.
    let mut victim = children.remove(0);
    victim.start_kill().expect("kill -9");
    let _ = victim.wait().await;
    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    let released_ms = started.elapsed().as_millis() as u64;
    // The survivor's writer gets the victim's deliveries again and stores
    // them with its own, each once.
    settle(&backends, &sale, &accepted, stock).await;
    let stored_ms = started.elapsed().as_millis() as u64;
    let rows = backends.orders(&sale).await;
    let mut r = DrillReport::from_rows(
        "writer_killed_with_unacked",
        "distributed",
        format!(
            "a node killed (`kill -9`) while its writer held {held} deliveries unacked \
             (the orders table locked), two nodes"
        ),
        &rows,
        &accepted,
        stock,
        1,
    );
    // Every 201 of the drill was given while the writers were held.
    r.accepted_during = accepted.len();
    // Recovery: from the lock's release to every 201 stored.
    r.recovered_ms = Some(stored_ms - released_ms);
    let db: u64 = rows.iter().map(|r| r.quantity).sum();
    r.leaked = redis_sold(&backends, &sale)
        .await
        .map(|redis| redis as i64 - db as i64);
    assert_eq!(r.leaked, Some(0), "Redis and the database disagree");
    r.write();
    for mut c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    backends.cleanup().await;
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().to_str().unwrap().to_owned();
        assert!(
            run(
                "mount",
                &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &at]
            ),
            "mounting a {size} tmpfs at {at} (the drill needs root)"
        );
        Self { dir }
    }

    /// Fills the disk to the last byte; returns the filler file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
        for _ in 0..4096 {
            if f.write_all(&[0]).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run("umount", &[self.dir.path().to_str().unwrap()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_data_disk_full_refuses_orders_it_cannot_store_then_sells_on() {
    use crate::kit::drill::sqlite_orders;
    use crate::kit::start_binary;
    let disk = SmallDisk::mount("16m");
    let data = disk.dir.path().join("data");
    let (mut child, app) = start_binary(&data).await;
    let stock = 100_000;
    let flooding = Flooding::start(vec![app], stock).await;
    let (sale, started) = (flooding.sale.clone(), flooding.started);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let full_ms = started.elapsed().as_millis() as u64;
    let filler = disk.fill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    std::fs::remove_file(&filler).unwrap();
    let freed_ms = started.elapsed().as_millis() as u64;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (nodes, flood, timeline) = flooding.end().await;
    assert!(
        first_sale_after(&timeline, freed_ms).is_some(),
        "no sale once the disk had room again: {:?}",
        flood.statuses
    );
    // No answer but 201 and 503 (and 409 never: the stock is large).
    let odd: Vec<_> = flood
        .statuses
        .keys()
        .filter(|s| ![201, 503].contains(*s))
        .collect();
    assert!(odd.is_empty(), "unexpected answers: {:?}", flood.statuses);
    // A clean stop, then the file itself: every 201 stored once.
    let app = nodes.into_iter().next().unwrap();
    let remaining = crate::kit::num(&app.sale(&sale).await, "remaining");
    crate::kit::sigterm(&child);
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{status}");
    let rows = sqlite_orders(&data, &sale);
    check_stored(&rows, &flood.accepted, stock, 1, false);
    let mut r = DrillReport::from_rows(
        "disk_full_embedded",
        "embedded",
        "the data disk (a 16 MiB tmpfs) filled to the last byte for 8 s",
        &rows,
        &flood.accepted,
        stock,
        1,
    );
    r.accepted_during = answers(&timeline, full_ms..freed_ms, 201);
    r.refused_during =
        answers(&timeline, full_ms..freed_ms, 503) + answers(&timeline, full_ms..freed_ms, 0);
    r.recovered_ms = first_sale_after(&timeline, freed_ms);
    let db_units: u64 = rows.iter().map(|r| r.quantity).sum();
    r.leaked = Some((stock - remaining) as i64 - db_units as i64);
    assert_eq!(r.leaked, Some(0), "units taken for orders never stored");
    r.write();
    drop(disk);
}
