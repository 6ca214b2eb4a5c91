//! One hot sale split over K stock buckets (K Redis hash tags), over
//! several nodes: exact stock with buyers skewed onto one bucket, returns
//! (expiry, cancel) that sell again, a node killed mid-flood, and the
//! spread of script calls over a 3-master Redis Cluster. Each test in its
//! own namespace (see [`crate::kit::backends`]); the invariants are
//! checked in the database and in Redis.

use std::collections::HashMap;
use std::time::Duration;

use flashsale::backend::redis::buckets::{bucket_of, tag};
use reqwest::StatusCode;
use serde_json::json;

use crate::kit::flood::flood_buyers;
use crate::kit::{
    accepted_orders, check_stored, json_status, no_answer, open_sale_body, start_binary_with,
    token, unique_admin_token, Backends, Db, RedisServers, TestApp,
};

const K: u8 = 3;

/// `n` buyer names, `skew` of them (a fraction) hashing to bucket 0 of a
/// `K`-bucket sale, the rest spread over the other buckets; prefixed so
/// two floods never share a buyer.
fn skewed_buyers(prefix: &str, n: usize, skew: f64) -> Vec<String> {
    let in_zero = (n as f64 * skew).round() as usize;
    let (mut zero, mut rest) = (Vec::new(), Vec::new());
    for i in 0.. {
        if zero.len() >= in_zero && rest.len() >= n - in_zero {
            break;
        }
        let name = format!("{prefix}{i}");
        if bucket_of(&name, K) == 0 {
            if zero.len() < in_zero {
                zero.push(name);
            }
        } else if rest.len() < n - in_zero {
            rest.push(name);
        }
    }
    // Interleaved, so both kinds of buyer arrive throughout the flood.
    let mut all = Vec::with_capacity(n);
    let (mut z, mut r) = (zero.into_iter(), rest.into_iter());
    loop {
        let mut any = false;
        for _ in 0..9 {
            if let Some(x) = z.next() {
                all.push(x);
                any = true;
            }
        }
        if let Some(x) = r.next() {
            all.push(x);
            any = true;
        }
        if !any {
            return all;
        }
    }
}

/// A Redis connection for reading a bucket's keys: standalone, or the
/// cluster (which routes each command by its key).
enum Reader {
    One(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Reader {
    async fn new(backends: &Backends) -> Self {
        if backends.redis_cluster {
            let client = redis::cluster::ClusterClient::new(backends.redis.clone()).unwrap();
            Self::Cluster(client.get_async_connection().await.unwrap())
        } else {
            Self::One(backends.redis_conn().await)
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        match self {
            Self::One(c) => cmd.query_async(c).await.unwrap(),
            Self::Cluster(c) => cmd.query_async(c).await.unwrap(),
        }
    }
}

/// Per bucket: (stock, sold, units pending out in transfers).
async fn buckets_state(backends: &Backends, sale: &str) -> Vec<(u64, u64, u64)> {
    let id: u64 = sale.parse().unwrap();
    let mut r = Reader::new(backends).await;
    let mut out = Vec::new();
    for b in 0..usize::from(K) {
        let key = |part: &str| format!("{}:{{{}}}:{part}", backends.namespace, tag(id, b, K));
        let (stock, sold): (Option<u64>, Option<u64>) = r
            .query(
                redis::cmd("HMGET")
                    .arg(key("meta"))
                    .arg("stock")
                    .arg("sold"),
            )
            .await;
        let pending: Vec<String> = r.query(redis::cmd("HVALS").arg(key("xfer"))).await;
        let pending = pending
            .iter()
            .map(|v| v.split(':').nth(1).unwrap().parse::<u64>().unwrap())
            .sum();
        out.push((
            stock.expect("every bucket is seeded"),
            sold.unwrap(),
            pending,
        ));
    }
    out
}

/// Units held (pending or paid) in the database.
async fn held_in_db(backends: &Backends, sale: &str) -> u64 {
    backends
        .orders(sale)
        .await
        .iter()
        .filter(|r| r.status == "pending_payment" || r.status == "paid")
        .map(|r| r.quantity)
        .sum()
}

/// The buckets hold exactly the sale's stock (in their counts or in
/// flight between them) and count exactly what the database holds.
async fn assert_buckets_agree(backends: &Backends, sale: &str, stock: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = buckets_state(backends, sale).await;
        let total: u64 = state.iter().map(|(s, _, p)| s + p).sum();
        let sold: u64 = state.iter().map(|(_, s, _)| s).sum();
        let db = held_in_db(backends, sale).await;
        if total == stock && sold == db && state.iter().all(|(_, _, p)| *p == 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "buckets {state:?} (stock {stock}) vs database {db}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn create_bucketed_sale(node: &TestApp, stock: u64, extra: serde_json::Value) -> String {
    let mut body = open_sale_body(stock, 1);
    body["buckets"] = json!(K);
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let sale = node.create_sale(body).await;
    assert_eq!(sale["buckets"], K, "{sale}");
    sale["id"].as_str().unwrap().to_owned()
}

/// 90 % of the buyers hash to bucket 0, which holds a third of the units:
/// the other buckets' units must move to it, and the sale still sells
/// exactly its stock — all of it, since demand exceeds it.
async fn skewed_buyers_buy_exactly_the_stock(backends: &Backends) {
    let nodes = backends.nodes(2).await;
    let stock = 150;
    let sale = create_bucketed_sale(&nodes[0], stock, json!({})).await;
    // The other node learns the split from Redis (its directory).
    assert_eq!(nodes[1].sale(&sale).await["buckets"], K);
    let names = skewed_buyers("s", 600, 0.9);
    let result = flood_buyers(&nodes, &sale, names).await;
    assert_eq!(
        result.orders, stock,
        "nothing stranded: {:?}",
        result.outcomes
    );
    assert_eq!(
        result.status_count(201) + result.count("409 sold_out"),
        result.requests,
        "only 201 and sold out: {:?}",
        result.outcomes
    );
    let rows = backends
        .wait_for_accepted(&sale, &accepted_orders(&result), Duration::from_secs(30))
        .await;
    check_stored(&rows, &accepted_orders(&result), stock, 1, true);
    let by_bucket = rows.iter().fold([0u64; 3], |mut acc, r| {
        acc[bucket_of(&r.user_id, K)] += r.quantity;
        acc
    });
    assert!(
        by_bucket[0] > stock / 3,
        "units moved to bucket 0: {by_bucket:?}"
    );
    assert_buckets_agree(backends, &sale, stock).await;
    // Sold out everywhere, from each node's own flag.
    for node in &nodes {
        assert_eq!(node.buy(&sale, "late").await.status(), StatusCode::CONFLICT);
    }
    for n in nodes {
        n.stop().await;
    }
}

/// Runs `test` on fresh backends over the machine's Redis, then cleans up.
async fn on_standalone(db: Db, test: impl AsyncFnOnce(&Backends)) {
    let backends = Backends::new(db).await;
    test(&backends).await;
    backends.cleanup().await;
}

/// Runs `test` on fresh backends over a private 3-master Redis Cluster.
async fn on_cluster(db: Db, test: impl AsyncFnOnce(&Backends)) {
    let servers = RedisServers::cluster().await;
    let mut backends = Backends::new(db).await;
    servers.use_for(&mut backends);
    test(&backends).await;
    backends.cleanup().await;
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skewed_buyers_buy_exactly_the_stock_of_a_3_bucket_sale_on_standalone_redis() {
    on_standalone(Db::Postgres, skewed_buyers_buy_exactly_the_stock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skewed_buyers_buy_exactly_the_stock_of_a_3_bucket_sale_on_a_redis_cluster() {
    on_cluster(Db::MySql, skewed_buyers_buy_exactly_the_stock).await;
}

/// Units that come back — by cancel, by expiry — return to their buyer's
/// bucket and sell again, to buyers of other buckets too, exactly.
async fn returned_units_sell_again_exactly(backends: &Backends) {
    let nodes = backends.nodes(2).await;
    let stock = 12;

    // Cancel: four buyers give their units back; buyers of other buckets
    // buy exactly those four.
    let sale = create_bucketed_sale(&nodes[0], stock, json!({})).await;
    let first = flood_buyers(&nodes, &sale, skewed_buyers("c", 40, 0.9)).await;
    assert_eq!(first.orders, stock, "{:?}", first.outcomes);
    let accepted = accepted_orders(&first);
    backends
        .wait_for_accepted(&sale, &accepted, Duration::from_secs(30))
        .await;
    for (i, (order, user)) in accepted.iter().take(4).enumerate() {
        let resp = nodes[i % 2].cancel(order, &token(user)).await;
        assert_eq!(
            json_status(resp, StatusCode::OK).await["status"],
            "cancelled"
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let late: Vec<String> = skewed_buyers("d", 40, 0.0);
    let second = flood_buyers(&nodes, &sale, late).await;
    assert_eq!(
        second.orders, 4,
        "the four returned units: {:?}",
        second.outcomes
    );
    let mut all = accepted.clone();
    all.extend(accepted_orders(&second));
    let rows = backends
        .wait_for_accepted(&sale, &all, Duration::from_secs(30))
        .await;
    check_stored(&rows, &all, stock, 1, true);
    assert_eq!(held_in_db(backends, &sale).await, stock);
    assert_buckets_agree(backends, &sale, stock).await;

    // Expiry: every order expires (once, whichever node's sweeper gets
    // it), all twelve units come back and sell again.
    let sale = create_bucketed_sale(&nodes[1], stock, json!({"payment_window_secs": 1})).await;
    let first = flood_buyers(&nodes, &sale, skewed_buyers("e", 40, 0.9)).await;
    assert_eq!(first.orders, stock, "{:?}", first.outcomes);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = backends.orders(&sale).await;
        if rows.len() == stock as usize && rows.iter().all(|r| r.status == "expired") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not expire: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(nodes[0].sale(&sale).await["remaining"], stock);
    let again = flood_buyers(&nodes, &sale, skewed_buyers("f", 40, 0.9)).await;
    assert_eq!(again.orders, stock, "{:?}", again.outcomes);
    let rows = backends
        .wait_for_orders(&sale, 2 * stock as usize, Duration::from_secs(30))
        .await;
    check_stored(&rows, &accepted_orders(&again), stock, 1, false);
    assert_buckets_agree(backends, &sale, stock).await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn returned_units_of_a_3_bucket_sale_sell_again_exactly_on_standalone_redis() {
    on_standalone(Db::Postgres, returned_units_sell_again_exactly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn returned_units_of_a_3_bucket_sale_sell_again_exactly_on_a_redis_cluster() {
    on_cluster(Db::Postgres, returned_units_sell_again_exactly).await;
}

/// `kill -9` of one of three nodes in the middle of a skewed flood (it may
/// die between a transfer's take and give): every `201` is stored, nothing
/// is oversold, and the buckets end up holding exactly the stock and
/// counting exactly what the database holds (the survivors finish any
/// transfer the victim left pending).
async fn kill_9_mid_flood(backends: &Backends) {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    let mut apps = Vec::new();
    let admin = unique_admin_token();
    for _ in 0..3 {
        let (child, app) = start_binary_with(dir.path(), &admin, |cmd| {
            cmd.args(backends.flags());
        })
        .await;
        children.push(child);
        apps.push(app);
    }
    let stock = 1500;
    let sale = create_bucketed_sale(&apps[0], stock, json!({})).await;
    let victim = children.remove(2);
    let killer = tokio::spawn(async move {
        let mut victim = victim;
        tokio::time::sleep(Duration::from_millis(400)).await;
        victim.start_kill().expect("kill -9");
        let _ = victim.wait().await;
    });
    let result = flood_buyers(&apps, &sale, skewed_buyers("k", 2400, 0.8)).await;
    killer.await.unwrap();
    assert!(
        no_answer(&result) > 0,
        "the kill landed after the flood: {:?}",
        result.outcomes
    );
    let rows = backends
        .wait_for_accepted(&sale, &accepted_orders(&result), Duration::from_secs(40))
        .await;
    check_stored(&rows, &accepted_orders(&result), stock, 1, false);
    assert_buckets_agree(backends, &sale, stock).await;
    // The survivors sell whatever is left (the victim's unanswered
    // purchases may have taken units or not): all of it, exactly.
    let left = stock - held_in_db(backends, &sale).await;
    let rest = flood_buyers(
        &apps[..2],
        &sale,
        skewed_buyers("r", left as usize + 200, 0.9),
    )
    .await;
    assert_eq!(rest.orders, left, "{:?}", rest.outcomes);
    let mut all = accepted_orders(&result);
    all.extend(accepted_orders(&rest));
    let rows = backends
        .wait_for_accepted(&sale, &all, Duration::from_secs(40))
        .await;
    check_stored(&rows, &all, stock, 1, false);
    assert_eq!(held_in_db(backends, &sale).await, stock);
    assert_buckets_agree(backends, &sale, stock).await;
    for mut c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_node_mid_flood_of_a_3_bucket_sale_loses_and_strands_nothing() {
    on_standalone(Db::Postgres, kill_9_mid_flood).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_node_mid_flood_of_a_3_bucket_sale_on_a_redis_cluster_loses_nothing() {
    on_cluster(Db::MySql, kill_9_mid_flood).await;
}

/// `EVALSHA` calls each server has served so far.
fn evalsha_by_port(ports: &[u16]) -> HashMap<u16, u64> {
    ports
        .iter()
        .map(|&p| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &p.to_string(), "INFO", "commandstats"])
                .output()
                .expect("running redis-cli");
            let calls = String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (p, calls)
        })
        .collect()
}

/// A hot sale of 3 buckets on a 3-master cluster: one bucket per master,
/// and each master serves about a third of the sale's script calls (the
/// figure in docs/BENCHMARKS.md holds ±20 %; the bound here is looser,
/// for a busy machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_3_bucket_sale_spreads_its_script_calls_over_3_cluster_masters() {
    let servers = RedisServers::cluster().await;
    let mut backends = Backends::new(Db::Postgres).await;
    servers.use_for(&mut backends);
    let nodes = backends.nodes(2).await;
    let stock = 3000;
    let sale = create_bucketed_sale(&nodes[0], stock, json!({})).await;
    let id: u64 = sale.parse().unwrap();
    let masters: Vec<u16> = (0..usize::from(K))
        .map(|b| servers.master_of(&tag(id, b, K)))
        .collect();
    let mut distinct = masters.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "one bucket per master: {masters:?}");
    let before = evalsha_by_port(&masters);
    let names: Vec<String> = (0..3000).map(|i| format!("b{i}")).collect();
    let result = flood_buyers(&nodes, &sale, names).await;
    assert_eq!(result.orders, stock, "{:?}", result.outcomes);
    let after = evalsha_by_port(&masters);
    let calls: Vec<u64> = masters.iter().map(|p| after[p] - before[p]).collect();
    let total: u64 = calls.iter().sum();
    for c in &calls {
        let share = *c as f64 / total as f64;
        assert!(
            (0.2..=0.47).contains(&share),
            "script calls per master {calls:?} (a third each, ±40 %)"
        );
    }
    let rows = backends
        .wait_for_accepted(&sale, &accepted_orders(&result), Duration::from_secs(30))
        .await;
    check_stored(&rows, &accepted_orders(&result), stock, 1, true);
    assert_buckets_agree(&backends, &sale, stock).await;
    for n in nodes {
        n.stop().await;
    }
    backends.cleanup().await;
    drop(servers);
}

/// Every field of bucket `b`'s `meta` (empty when absent).
async fn bucket_meta(backends: &Backends, sale: &str, b: usize) -> HashMap<String, String> {
    let id: u64 = sale.parse().unwrap();
    let meta = format!("{}:{{{}}}:meta", backends.namespace, tag(id, b, K));
    Reader::new(backends)
        .await
        .query(redis::cmd("HGETALL").arg(meta))
        .await
}

/// Waits until every bucket is seeded and selling again (present, not
/// halted).
async fn wait_reseeded(backends: &Backends, sale: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let mut all = true;
        for b in 0..usize::from(K) {
            let meta = bucket_meta(backends, sale, b).await;
            all &= meta.contains_key("stock") && !meta.contains_key("halt");
        }
        if all {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never re-seeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A buyer name in bucket `b`.
fn buyer_in(b: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| bucket_of(n, K) == b)
        .unwrap()
}

/// One bucket of a 3-bucket sale is lost (its keys gone, as when its shard
/// restarts empty) while the other two are fine: the nodes halt those two
/// — so no bucket sells on while the sale's count is rebuilt — wait for
/// the order queue to drain, and re-seed all three from the database; the
/// sale then sells exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_bucket_halts_the_others_and_the_sale_is_reseeded_as_one() {
    let backends = Backends::new(Db::Postgres).await;
    let nodes = backends.nodes(2).await;
    let stock = 90;
    let sale = create_bucketed_sale(&nodes[0], stock, json!({})).await;
    let first = flood_buyers(&nodes, &sale, skewed_buyers("p", 50, 0.5)).await;
    assert_eq!(first.orders, 50, "{:?}", first.outcomes);
    backends
        .wait_for_accepted(&sale, &accepted_orders(&first), Duration::from_secs(30))
        .await;
    let id: u64 = sale.parse().unwrap();
    let mut conn = backends.redis_conn().await;
    let lost: Vec<String> = [
        "meta", "holders", "idem", "outbox", "released", "xfer", "xferin",
    ]
    .iter()
    .map(|p| format!("{}:{{{}}}:{p}", backends.namespace, tag(id, 1, K)))
    .collect();
    let _: i64 = redis::cmd("DEL")
        .arg(&lost)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Within the grace period (1 s) and a watcher tick, the other buckets
    // are halted (the re-seed cannot come before the settle time after
    // that); a buyer of a healthy bucket is refused too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for b in [0, 2] {
        loop {
            let meta = bucket_meta(&backends, &sale, b).await;
            if meta.contains_key("halt") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "bucket {b} never halted: {meta:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let resp = nodes[1].buy(&sale, &buyer_in(0, "healthy")).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    wait_reseeded(&backends, &sale).await;
    assert_buckets_agree(&backends, &sale, stock).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The first 50 buyers are at their limit; 100 others compete for 40.
    let mut names = skewed_buyers("p", 50, 0.5);
    names.extend(skewed_buyers("q", 100, 0.9));
    let second = flood_buyers(&nodes, &sale, names).await;
    assert_eq!(second.orders, stock - 50, "{:?}", second.outcomes);
    let mut all = accepted_orders(&first);
    all.extend(accepted_orders(&second));
    let rows = backends
        .wait_for_accepted(&sale, &all, Duration::from_secs(30))
        .await;
    check_stored(&rows, &all, stock, 1, true);
    assert_buckets_agree(&backends, &sale, stock).await;
    for n in nodes {
        n.stop().await;
    }
    backends.cleanup().await;
}

/// Redis restarts empty (no persistence): every bucket and the directory
/// are gone; purchases answer `503` until a node re-seeds all three buckets
/// from the database, then the sale sells exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_reseeds_every_bucket_then_sells_exactly_the_rest() {
    let mut servers = RedisServers::standalone().await;
    let mut backends = Backends::new(Db::MySql).await;
    servers.use_for(&mut backends);
    let nodes = backends.nodes(2).await;
    let stock = 120;
    let sale = create_bucketed_sale(&nodes[0], stock, json!({})).await;
    let first = flood_buyers(&nodes, &sale, skewed_buyers("w", 70, 0.9)).await;
    assert_eq!(first.orders, 70, "{:?}", first.outcomes);
    backends
        .wait_for_accepted(&sale, &accepted_orders(&first), Duration::from_secs(30))
        .await;
    servers.restart_empty().await;
    let resp = nodes[1].buy(&sale, "right-after-restart").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    wait_reseeded(&backends, &sale).await;
    assert_buckets_agree(&backends, &sale, stock).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut names = skewed_buyers("w", 70, 0.9);
    names.extend(skewed_buyers("x", 150, 0.1));
    let second = flood_buyers(&nodes, &sale, names).await;
    assert_eq!(second.orders, stock - 70, "{:?}", second.outcomes);
    let mut all = accepted_orders(&first);
    all.extend(accepted_orders(&second));
    let rows = backends
        .wait_for_accepted(&sale, &all, Duration::from_secs(30))
        .await;
    check_stored(&rows, &all, stock, 1, true);
    assert_buckets_agree(&backends, &sale, stock).await;
    for n in nodes {
        n.stop().await;
    }
    backends.cleanup().await;
    drop(servers);
}

/// Redis forgets decisions of one bucket with no change the fence can see
/// (its `sold` set back by hand, as a restore from an old snapshot would):
/// the reconciler finds the database holding more than the buckets count
/// in all, halts every bucket, and the sale is re-seeded as one before it
/// oversells.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_halts_a_3_bucket_sale_whose_count_fell_behind_and_it_is_reseeded() {
    let backends = Backends::new(Db::Postgres).await;
    let nodes = backends.nodes(2).await;
    let stock = 60;
    let sale = create_bucketed_sale(&nodes[0], stock, json!({})).await;
    let first = flood_buyers(&nodes, &sale, skewed_buyers("g", 30, 0.3)).await;
    assert_eq!(first.orders, 30, "{:?}", first.outcomes);
    backends
        .wait_for_accepted(&sale, &accepted_orders(&first), Duration::from_secs(30))
        .await;
    let id: u64 = sale.parse().unwrap();
    let meta = format!("{}:{{{}}}:meta", backends.namespace, tag(id, 2, K));
    let mut conn = backends.redis_conn().await;
    let _: () = redis::cmd("HSET")
        .arg(&meta)
        .arg("sold")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Two reconciler readings (5 s apart), the halt's settle, the drain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let sold: u64 = (0..usize::from(K))
            .map(|b| bucket_meta(&backends, &sale, b))
            .collect::<futures::future::JoinAll<_>>()
            .await
            .iter()
            .map(|m| {
                if m.contains_key("halt") {
                    0
                } else {
                    m.get("sold").and_then(|s| s.parse().ok()).unwrap_or(0)
                }
            })
            .sum();
        if sold == 30 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never halted and re-seeded: the buckets count {sold}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_reseeded(&backends, &sale).await;
    assert_buckets_agree(&backends, &sale, stock).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = flood_buyers(&nodes, &sale, skewed_buyers("h", 100, 0.5)).await;
    assert_eq!(second.orders, stock - 30, "{:?}", second.outcomes);
    let mut all = accepted_orders(&first);
    all.extend(accepted_orders(&second));
    let rows = backends
        .wait_for_accepted(&sale, &all, Duration::from_secs(30))
        .await;
    check_stored(&rows, &all, stock, 1, true);
    assert_buckets_agree(&backends, &sale, stock).await;
    for n in nodes {
        n.stop().await;
    }
    backends.cleanup().await;
}
