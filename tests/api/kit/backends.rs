//! The backends of the distributed tests: a private namespace on the
//! machine's shared Redis and RabbitMQ, and a private PostgreSQL schema or
//! MariaDB database ([`Backends`]), so parallel tests (and CI) never see each
//! other's keys, queues or rows; [`Backends::cleanup`] removes all of it.
//! [`RedisServers`] starts private `redis-server`s (standalone or a
//! cluster) for the tests that restart Redis or count its commands.
//!
//! Orders are read **from the database itself** ([`Backends::orders`]), so
//! [`super::flood::check_stored`] judges what is stored, not what a node
//! says.

use std::time::Duration;

use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
use flashsale::backend::queue::OrderQueue;
use flashsale::Settings;
use sqlx::{AssertSqlSafe, Row};

use super::process::free_port;

/// The shared Redis (`FLASHSALE_TEST_REDIS` overrides it).
pub const REDIS: &str = "redis://127.0.0.1:6379";
/// The shared RabbitMQ (`FLASHSALE_TEST_AMQP` overrides it).
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MYSQL: &str = "mysql://root@127.0.0.1:3306/test";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Which SQL server holds the orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// PostgreSQL, one schema per test.
    Postgres,
    /// MariaDB/MySQL, one database per test.
    MySql,
}

enum Admin {
    Pg(sqlx::PgPool, String),
    My(sqlx::MySqlPool, String),
}

/// One order row as the database holds it.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    /// The order's id.
    pub order_id: u64,
    /// The buyer.
    pub user_id: String,
    /// Units.
    pub quantity: u64,
    /// `pending_payment`, `paid`, `expired` or `cancelled`.
    pub status: String,
}

/// The shared servers, isolated for one test.
pub struct Backends {
    /// Prefix of this test's Redis keys and RabbitMQ names.
    pub namespace: String,
    /// URL of this test's schema or database.
    pub db_url: String,
    /// Redis URLs (several: cluster seeds).
    pub redis: Vec<String>,
    /// Treat `redis` as a Redis Cluster.
    pub redis_cluster: bool,
    /// `redis` lists Sentinels that know the master by this name.
    pub redis_sentinel: Option<String>,
    /// The nodes' fencing setting (on unless a drill shows its absence).
    pub redis_fencing: bool,
    /// `redis` points at private servers the test kills: no key cleanup.
    pub private_redis: bool,
    admin: Admin,
}

fn unique(prefix: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("{prefix}{secs}_{:08x}", rand::random::<u32>())
}

impl Backends {
    /// A fresh namespace and schema (or database) on `db`.
    pub async fn new(db: Db) -> Self {
        let namespace = unique("fst_");
        let name = unique("fs_test_");
        let (admin, db_url) = match db {
            Db::Postgres => {
                let base = env_or("FLASHSALE_TEST_PG", PG);
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&base)
                    .await
                    .expect("PostgreSQL is unreachable (scripts/services.sh check postgres)");
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
                    .execute(&pool)
                    .await
                    .expect("creating the schema");
                let mut url = url::Url::parse(&base).unwrap();
                url.query_pairs_mut()
                    .append_pair("options", &format!("-csearch_path={name}"));
                (Admin::Pg(pool, name), url.to_string())
            }
            Db::MySql => {
                let base = env_or("FLASHSALE_TEST_MYSQL", MYSQL);
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(2)
                    .connect(&base)
                    .await
                    .expect("MariaDB is unreachable (scripts/services.sh check mariadb)");
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
                    .execute(&pool)
                    .await
                    .expect("creating the database");
                let mut url = url::Url::parse(&base).unwrap();
                url.set_path(&format!("/{name}"));
                (Admin::My(pool, name), url.to_string())
            }
        };
        Self {
            namespace,
            db_url,
            redis: vec![env_or("FLASHSALE_TEST_REDIS", REDIS)],
            redis_cluster: false,
            redis_sentinel: None,
            redis_fencing: true,
            private_redis: false,
            admin,
        }
    }

    /// Points a node's settings at these backends.
    pub fn configure(&self, s: &mut Settings) {
        s.database = Some(self.db_url.clone());
        s.redis = self.redis.clone();
        s.redis_cluster = self.redis_cluster;
        s.redis_sentinel = self.redis_sentinel.clone();
        s.redis_fencing = self.redis_fencing;
        s.queue = Some(env_or("FLASHSALE_TEST_AMQP", AMQP));
        s.namespace = self.namespace.clone();
        s.sweep_interval = Duration::from_millis(100);
    }

    /// Starts `n` nodes on these backends, node ids 1..=n.
    pub async fn nodes(&self, n: usize) -> Vec<super::TestApp> {
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            nodes.push(
                super::spawn_app_with(|s| {
                    self.configure(s);
                    s.engine.node_id = i as u16 + 1;
                    s.lease_node_id = false;
                })
                .await,
            );
        }
        nodes
    }

    /// The flags of the real binary for these backends.
    pub fn flags(&self) -> Vec<String> {
        let mut f = vec![
            "--database".to_owned(),
            self.db_url.clone(),
            "--redis".to_owned(),
            self.redis.join(","),
            "--queue".to_owned(),
            env_or("FLASHSALE_TEST_AMQP", AMQP),
            "--namespace".to_owned(),
            self.namespace.clone(),
        ];
        if self.redis_cluster {
            f.push("--redis-cluster".to_owned());
        }
        f
    }

    /// Every order of `sale_id` in the database (retried for a while: the
    /// fault tests read right after restarting the server).
    pub async fn orders(&self, sale_id: &str) -> Vec<StoredOrder> {
        let mut last = None;
        for _ in 0..40 {
            match self.try_orders(sale_id).await {
                Ok(rows) => return rows,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("reading orders: {last:?}");
    }

    async fn try_orders(&self, sale_id: &str) -> Result<Vec<StoredOrder>, sqlx::Error> {
        let id: i64 = sale_id.parse().unwrap();
        let q = "SELECT order_id, user_id, quantity, status FROM orders WHERE sale_id = ";
        let rows = match &self.admin {
            Admin::Pg(pool, schema) => sqlx::query(AssertSqlSafe(format!(
                "{}$1",
                q.replace("FROM orders", &format!("FROM \"{schema}\".orders"))
            )))
            .bind(id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| StoredOrder {
                order_id: r.get::<i64, _>(0) as u64,
                user_id: r.get(1),
                quantity: r.get::<i64, _>(2) as u64,
                status: r.get(3),
            })
            .collect::<Vec<_>>(),
            Admin::My(pool, db) => sqlx::query(AssertSqlSafe(format!(
                "{}?",
                q.replace("FROM orders", &format!("FROM `{db}`.orders"))
            )))
            .bind(id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| StoredOrder {
                order_id: r.get::<i64, _>(0) as u64,
                user_id: String::from_utf8(r.get::<Vec<u8>, _>(1)).unwrap(),
                quantity: r.get::<i64, _>(2) as u64,
                status: String::from_utf8(r.get::<Vec<u8>, _>(3)).unwrap_or_default(),
            })
            .collect::<Vec<_>>(),
        };
        Ok(rows)
    }

    /// Waits until the database holds `n` orders of `sale_id` (the writers
    /// caught up); returns them.
    pub async fn wait_for_orders(
        &self,
        sale_id: &str,
        n: usize,
        within: Duration,
    ) -> Vec<StoredOrder> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let rows = self.orders(sale_id).await;
            if rows.len() >= n || tokio::time::Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the database holds every order in `accepted` (order id,
    /// buyer: the orders answered `201`). A count is not enough when orders
    /// no buyer heard of — a dead node's outbox, relayed — are stored too.
    pub async fn wait_for_accepted(
        &self,
        sale_id: &str,
        accepted: &[(String, String)],
        within: Duration,
    ) -> Vec<StoredOrder> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let rows = self.orders(sale_id).await;
            let stored: std::collections::HashSet<String> =
                rows.iter().map(|r| r.order_id.to_string()).collect();
            let all = accepted.iter().all(|(id, _)| stored.contains(id));
            if all || tokio::time::Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A connection to the Redis these backends use.
    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis[0].as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to Redis")
    }

    /// Drops the schema or database, the queues and exchanges, the keys.
    pub async fn cleanup(self) {
        match &self.admin {
            Admin::Pg(pool, schema) => {
                let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                )))
                .execute(pool)
                .await;
            }
            Admin::My(pool, db) => {
                let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{db}`")))
                    .execute(pool)
                    .await;
            }
        }
        if let Ok(q) = AmqpQueue::connect(&AmqpSettings {
            url: env_or("FLASHSALE_TEST_AMQP", AMQP),
            prefix: self.namespace.clone(),
            management: Default::default(),
        })
        .await
        {
            let _ = q.delete_topology().await;
        }
        if !self.redis_cluster && !self.private_redis {
            let mut conn = self.redis_conn().await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.namespace))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
            }
        }
    }
}

/// A private `redis-server` (or several, as a cluster) on free ports, for
/// the tests that restart Redis or need a Redis Cluster; killed on drop.
pub struct RedisServers {
    /// Their ports.
    pub ports: Vec<u16>,
    children: Vec<std::process::Child>,
    dirs: Vec<tempfile::TempDir>,
    cluster: bool,
}

/// A private `redis-server` on `port` keeping nothing on disk, with `extra`
/// arguments (cluster mode, replication).
pub(crate) fn spawn_redis(port: u16, dir: &std::path::Path, extra: &[&str]) -> std::process::Child {
    std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting redis-server (Debian package redis-server)")
}

/// The arguments of a cluster node.
const CLUSTER: &[&str] = &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"];

async fn wait_for_redis(port: u16) {
    super::redis_ha::connect(port).await;
}

impl RedisServers {
    /// One standalone server.
    pub async fn standalone() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = spawn_redis(port, dir.path(), &[]);
        wait_for_redis(port).await;
        Self {
            ports: vec![port],
            children: vec![child],
            dirs: vec![dir],
            cluster: false,
        }
    }

    /// A Redis Cluster of three masters, slots spread by `redis-cli`.
    pub async fn cluster() -> Self {
        Self::cluster_of(0).await
    }

    /// A Redis Cluster of three masters with `replicas` replicas each.
    pub async fn cluster_of(replicas: usize) -> Self {
        let mut servers = Self {
            ports: Vec::new(),
            children: Vec::new(),
            dirs: Vec::new(),
            cluster: true,
        };
        for _ in 0..3 * (1 + replicas) {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            servers
                .children
                .push(spawn_redis(port, dir.path(), CLUSTER));
            servers.ports.push(port);
            servers.dirs.push(dir);
        }
        for &p in &servers.ports {
            wait_for_redis(p).await;
        }
        let mut create = std::process::Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for p in &servers.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("running redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for _ in 0..400 {
            let info = std::process::Command::new("redis-cli")
                .args(["-p", &servers.ports[0].to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok")
                && servers.replicas_in_sync() == 3 * replicas
            {
                return servers;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the Redis Cluster did not become ready");
    }

    /// Replicas whose link to their master is up (a replica that never
    /// synced cannot be promoted).
    fn replicas_in_sync(&self) -> usize {
        self.ports
            .iter()
            .filter(|p| {
                let out = std::process::Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "info", "replication"])
                    .output()
                    .unwrap();
                let info = String::from_utf8_lossy(&out.stdout).into_owned();
                info.contains("role:slave") && info.contains("master_link_status:up")
            })
            .count()
    }

    /// `redis://` URLs of the servers.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Kills the (standalone) server and starts an empty one on its port —
    /// what a Redis without persistence looks like after a crash.
    pub async fn restart_empty(&mut self) {
        assert!(!self.cluster);
        let mut old = self.children.remove(0);
        let _ = old.kill();
        let _ = old.wait();
        self.children
            .push(spawn_redis(self.ports[0], self.dirs[0].path(), &[]));
        wait_for_redis(self.ports[0]).await;
    }

    /// The port of the cluster master that serves `hash_tag`'s slot.
    pub fn master_of(&self, hash_tag: &str) -> u16 {
        // Asked of the first server that answers: one may have been killed.
        let cli = |args: &[&str]| {
            for port in &self.ports {
                let out = std::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string()])
                    .args(args)
                    .output()
                    .expect("running redis-cli");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() && !text.trim().is_empty() && !text.contains("refused") {
                    return text;
                }
            }
            panic!("no cluster server answers redis-cli {args:?}");
        };
        let slot: u16 = cli(&["cluster", "keyslot", hash_tag])
            .trim()
            .parse()
            .unwrap();
        for line in cli(&["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields.get(2).is_some_and(|f| f.contains("master")) || fields.len() < 9 {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let mut ends = range
                    .split('-')
                    .map(|n| n.parse::<u16>().unwrap_or(u16::MAX));
                let lo = ends.next().unwrap_or(u16::MAX);
                let hi = ends.next().unwrap_or(lo);
                (lo..=hi).contains(&slot)
            });
            if serves {
                let port = fields[1].split(['@', ':']).nth(1).unwrap();
                return port.parse().unwrap();
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Kills (`kill -9`) the server on `port`.
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|&p| p == port).unwrap();
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    /// Points `backends` at these servers.
    pub fn use_for(&self, backends: &mut Backends) {
        backends.redis = self.urls();
        backends.redis_cluster = self.cluster;
    }
}

impl Drop for RedisServers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Units Redis counts as sold for `sale_id` (standalone servers only).
pub async fn redis_sold(backends: &Backends, sale_id: &str) -> Option<u64> {
    let mut conn = backends.redis_conn().await;
    redis::cmd("HGET")
        .arg(format!("{}:{{{sale_id}}}:meta", backends.namespace))
        .arg("sold")
        .query_async::<Option<u64>>(&mut conn)
        .await
        .unwrap()
}
