//! The `OrderStore` contract, run against every implementation: the embedded
//! SQLite store (in a temporary directory), PostgreSQL (in a schema of its
//! own) and MariaDB/MySQL (in a database of its own). Every case is written
//! once against `Arc<dyn OrderStore>`; [`contract_suite!`] instantiates it per
//! backend. For the SQL stores a case may open several stores on the same
//! data — several nodes — and the contract must hold across them.
//!
//! The servers come from `FLASHSALE_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `FLASHSALE_TEST_MYSQL`
//! (default `mysql://root@127.0.0.1:3306/test`). They are shared with other
//! tests and CI: each test works in its own `fs_test_<secs>_<random>` schema
//! or database and drops it at the end, even when the case fails. An
//! unreachable server fails the test; nothing is skipped.
//!
//! The last tests start the whole application on a SQL database (with the
//! shared harness, [`crate::kit`]), sell over HTTP, restart it and check the
//! state came back from the database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashsale::backend::embedded::{SqliteSettings, SqliteStore};
use flashsale::backend::mysql::MySqlOrderStore;
use flashsale::backend::outbox::{
    event_id, AttemptRecord, Delivery, DeliveryFilter, DeliveryState, OutboxEvent,
};
use flashsale::backend::postgres::PgOrderStore;
use flashsale::backend::sql::{redact_url, PgInsert, SqlSettings};
use flashsale::backend::{Intent, OrderStore, StoreError};
use flashsale::domain::order::Transition;
use flashsale::domain::{Order, OrderStatus, Sale};
use flashsale::{Application, Settings};
use futures::future::join_all;
use reqwest::StatusCode;
use sqlx::{AssertSqlSafe, MySqlPool, PgPool};
use tempfile::TempDir;

use crate::kit::{
    assert_only, check_orders_readable, flood, json_status, spawn_app_on_with, spawn_app_with,
    token,
};

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_MYSQL: &str = "mysql://root@127.0.0.1:3306/test";
/// Prefix of every schema or database these tests create.
const PREFIX: &str = "fs_test_";
/// Leftovers of killed runs older than this are dropped by later runs.
const STALE_AFTER_SECS: u64 = 2 * 3600;

/// A fixed "now" (2023-11-14): the stores never read the clock themselves.
const T: i64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------
// Fixtures: where a case's stores live.

enum Place {
    Embedded(TempDir),
    Postgres { admin: PgPool, schema: String },
    MySql { admin: MySqlPool, database: String },
}

/// One isolated data set and every store a case opened on it.
struct Fixture {
    place: Place,
    /// Connection URL of the isolated schema / database (SQL only).
    url: Option<String>,
    opened: Mutex<Vec<Arc<dyn OrderStore>>>,
    /// The PostgreSQL store's insert shape.
    pg_insert: PgInsert,
}

fn sql_settings() -> SqlSettings {
    // Small pools: the servers are shared with other tests and CI.
    SqlSettings {
        max_connections: 4,
        ..SqlSettings::default()
    }
}

fn unique_name() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("{PREFIX}{secs}_{:08x}", rand::random::<u32>())
}

/// True for names this suite made more than [`STALE_AFTER_SECS`] ago.
fn is_stale(name: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.split('_').next())
        .and_then(|secs| secs.parse::<u64>().ok())
        .is_some_and(|secs| secs + STALE_AFTER_SECS < now)
}

impl Fixture {
    fn embedded() -> Self {
        Self {
            place: Place::Embedded(tempfile::tempdir().expect("creating a data dir")),
            url: None,
            opened: Mutex::default(),
            pg_insert: PgInsert::default(),
        }
    }

    async fn postgres() -> Self {
        let base = std::env::var("FLASHSALE_TEST_PG").unwrap_or_else(|_| DEFAULT_PG.to_owned());
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&base)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is unreachable at {} ({e}). Start it \
                     (scripts/services.sh check postgres) or set FLASHSALE_TEST_PG.",
                    redact_url(&base)
                )
            });
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::TEXT FROM pg_namespace WHERE nspname LIKE 'fs\\_test\\_%'",
        )
        .fetch_all(&admin)
        .await
        .expect("listing schemas");
        for schema in stale.iter().filter(|s| is_stale(s)) {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .execute(&admin)
            .await;
        }
        let schema = unique_name();
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(&admin)
            .await
            .expect("creating the test schema");
        let mut url = url::Url::parse(&base).expect("FLASHSALE_TEST_PG is a URL");
        url.query_pairs_mut()
            .append_pair("options", &format!("-csearch_path={schema}"));
        Self {
            place: Place::Postgres { admin, schema },
            url: Some(url.into()),
            opened: Mutex::default(),
            pg_insert: PgInsert::default(),
        }
    }

    async fn mysql() -> Self {
        let base =
            std::env::var("FLASHSALE_TEST_MYSQL").unwrap_or_else(|_| DEFAULT_MYSQL.to_owned());
        let admin = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&base)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "MariaDB/MySQL is unreachable at {} ({e}). Start it \
                     (scripts/services.sh check mariadb) or set FLASHSALE_TEST_MYSQL.",
                    redact_url(&base)
                )
            });
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA \
             WHERE SCHEMA_NAME LIKE 'fs\\_test\\_%'",
        )
        .fetch_all(&admin)
        .await
        .expect("listing databases");
        for database in stale.iter().filter(|d| is_stale(d)) {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS `{database}`"
            )))
            .execute(&admin)
            .await;
        }
        let database = unique_name();
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
            .execute(&admin)
            .await
            .expect("creating the test database");
        let mut url = url::Url::parse(&base).expect("FLASHSALE_TEST_MYSQL is a URL");
        url.set_path(&format!("/{database}"));
        Self {
            place: Place::MySql { admin, database },
            url: Some(url.into()),
            opened: Mutex::default(),
            pg_insert: PgInsert::default(),
        }
    }

    /// How many stores (nodes) a case may run on this data at once.
    fn nodes(&self) -> usize {
        match self.place {
            // One process owns an embedded store.
            Place::Embedded(_) => 1,
            _ => 2,
        }
    }

    /// True when committing an order that is already stored answers `Ok`
    /// (the SQL stores insert idempotently on `order_id`). The embedded
    /// store refuses such a commit with an error; it never stores it twice.
    fn commits_are_idempotent(&self) -> bool {
        !matches!(self.place, Place::Embedded(_))
    }

    /// Opens a store (a node) on this fixture's data.
    async fn open(&self) -> Arc<dyn OrderStore> {
        self.open_with(false).await
    }

    /// Opens a store whose webhook outbox is on.
    async fn open_outbox(&self) -> Arc<dyn OrderStore> {
        self.open_with(true).await
    }

    async fn open_with(&self, outbox: bool) -> Arc<dyn OrderStore> {
        let sql = SqlSettings {
            outbox,
            pg_insert: self.pg_insert,
            ..sql_settings()
        };
        let store: Arc<dyn OrderStore> = match &self.place {
            Place::Embedded(dir) => Arc::new(
                SqliteStore::open(
                    dir.path(),
                    &SqliteSettings {
                        outbox,
                        ..SqliteSettings::default()
                    },
                )
                .expect("opening the embedded store"),
            ),
            Place::Postgres { .. } => Arc::new(
                PgOrderStore::connect(self.url.as_deref().unwrap(), &sql)
                    .await
                    .expect("connecting the PostgreSQL store"),
            ),
            Place::MySql { .. } => Arc::new(
                MySqlOrderStore::connect(self.url.as_deref().unwrap(), &sql)
                    .await
                    .expect("connecting the MySQL store"),
            ),
        };
        self.opened.lock().unwrap().push(store.clone());
        store
    }

    /// Opens [`Self::nodes`] stores on this data.
    async fn open_nodes(&self) -> Vec<Arc<dyn OrderStore>> {
        let mut nodes = Vec::new();
        for _ in 0..self.nodes() {
            nodes.push(self.open().await);
        }
        nodes
    }

    async fn cleanup(&self) {
        let opened: Vec<_> = self.opened.lock().unwrap().drain(..).collect();
        for store in opened {
            store.shutdown().await;
        }
        match &self.place {
            Place::Embedded(_) => {}
            Place::Postgres { admin, schema } => {
                sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
                    .execute(admin)
                    .await
                    .expect("dropping the test schema");
                admin.close().await;
            }
            Place::MySql { admin, database } => {
                sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE `{database}`")))
                    .execute(admin)
                    .await
                    .expect("dropping the test database");
                admin.close().await;
            }
        }
    }
}

/// Runs `case` on `fixture`, then cleans up whether or not it passed.
async fn run<F, Fut>(fixture: Fixture, case: F)
where
    F: FnOnce(Arc<Fixture>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let fixture = Arc::new(fixture);
    // A spawned task turns a failed assertion into a JoinError, so the
    // cleanup below still runs.
    let outcome = tokio::spawn(case(fixture.clone())).await;
    fixture.cleanup().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("case did not finish: {e}"),
        }
    }
}

/// Instantiates every named case once per backend.
macro_rules! contract_suite {
    ($($case:ident),+ $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run(super::Fixture::embedded(), super::$case).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run(super::Fixture::postgres().await, super::$case).await;
                }
            )+
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run(super::Fixture::mysql().await, super::$case).await;
                }
            )+
        }
    };
}

contract_suite!(
    sales_round_trip,
    a_window_moves_by_compare_and_set,
    concurrent_commits_are_all_loaded,
    committing_an_order_twice_stores_it_once,
    idempotency_keys_are_stored_and_loaded,
    transitions_follow_the_lifecycle,
    late_payment_expires_the_order,
    concurrent_expiry_returns_each_order_once,
    payment_racing_expiry_has_one_winner,
    intents_dedupe_and_paginate,
    shutdown_flushes_then_refuses,
    outbox_records_each_order_change_once,
    claims_lease_events_and_stale_results_change_nothing,
    concurrent_claims_hand_each_event_out_once,
);

/// The SQL stores' batch insert, in each shape it comes in: new orders,
/// one of them three times, an order already stored and one clashing on
/// another's idempotency key, all committed at once, with the outbox off
/// and on.
mod batch_insert {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_unnest() {
        super::run(
            super::Fixture::postgres().await,
            super::a_mixed_batch_stores_each_order_once,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_values() {
        let mut fixture = super::Fixture::postgres().await;
        fixture.pg_insert = super::PgInsert::Values;
        super::run(fixture, super::a_mixed_batch_stores_each_order_once).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        super::run(
            super::Fixture::mysql().await,
            super::a_mixed_batch_stores_each_order_once,
        )
        .await;
    }
}

async fn a_mixed_batch_stores_each_order_once(fx: Arc<Fixture>) {
    for (sale_id, outbox) in [(1, false), (2, true)] {
        let store = fx.open_with(outbox).await;
        store.create_sale(&sale(sale_id)).await.unwrap();
        let base = sale_id * 10_000;
        let keyed = |id, user: &str| Order {
            idempotency_key: Some("k-1".to_owned()),
            ..order(id, sale_id, user, 1, None)
        };
        let stored = order(base + 1, sale_id, "pre", 1, None);
        // Keys are unique per user across sales: a user of this sale alone.
        let kim = format!("kim-{sale_id}");
        let key_holder = keyed(base + 2, &kim);
        for o in [&stored, &key_holder] {
            store.commit_order(o.clone()).await.unwrap();
        }
        let fresh: Vec<Order> = (0..50)
            .map(|i| {
                order(
                    base + 100 + i,
                    sale_id,
                    &format!("n{i}"),
                    1,
                    Some(T + 60_000),
                )
            })
            .collect();
        let clash = keyed(base + 3, &kim);
        let mut batch = fresh.clone();
        batch.extend([
            fresh[7].clone(),
            fresh[7].clone(),
            stored.clone(),
            clash.clone(),
        ]);
        let results = join_all(batch.iter().map(|o| store.commit_order(o.clone()))).await;
        for (o, r) in batch.iter().zip(&results) {
            if o.id == clash.id {
                assert!(
                    matches!(r, Err(StoreError::Conflict(_))),
                    "the clash fails alone, for good: {r:?}"
                );
            } else {
                assert!(r.is_ok(), "order {}: {r:?}", o.id);
            }
        }
        assert_eq!(store.get_order(clash.id).await.unwrap(), None);
        for o in fresh.iter().chain([&stored, &key_holder]) {
            assert_eq!(store.get_order(o.id).await.unwrap().as_ref(), Some(o));
        }
        let snapshot = store.load().await.unwrap();
        assert_eq!(
            persisted_map(&snapshot.persisted).get(&sale_id),
            Some(&(fresh.len() as u64 + 2))
        );
        // With the outbox on, one accepted event per stored order, none
        // for the repeats or the clash.
        let ids: HashSet<u64> = fresh
            .iter()
            .chain([&stored, &key_holder, &clash])
            .map(|o| o.id)
            .collect();
        let events: Vec<Delivery> = log_of(&store, None)
            .await
            .into_iter()
            .filter(|d| ids.contains(&d.order_id))
            .collect();
        if outbox {
            let mut want: Vec<String> = fresh
                .iter()
                .chain([&stored, &key_holder])
                .map(|o| event_id(o.id, OrderStatus::PendingPayment))
                .collect();
            want.sort();
            let mut got = ids_of(&events);
            got.sort();
            assert_eq!(got, want);
        } else {
            assert!(events.is_empty(), "{events:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Builders.

fn sale(id: u64) -> Sale {
    Sale {
        id,
        item: format!("phone {id} ✓"),
        stock: 100,
        per_user_limit: 1,
        starts_at_ms: T - 60_000,
        ends_at_ms: None,
        payment_window_secs: None,
        created_at_ms: T - 120_000,
        front_door: Default::default(),
        buckets: 1,
    }
}

fn order(id: u64, sale_id: u64, user: &str, quantity: u32, expires_at_ms: Option<i64>) -> Order {
    Order {
        id,
        sale_id,
        user_id: user.to_owned(),
        quantity,
        status: OrderStatus::PendingPayment,
        idempotency_key: None,
        created_at_ms: T - 1_000,
        updated_at_ms: T - 1_000,
        expires_at_ms,
    }
}

fn holdings_map(holdings: &[flashsale::backend::Holding]) -> BTreeMap<(u64, String), u32> {
    let mut map = BTreeMap::new();
    for h in holdings {
        let previous = map.insert((h.sale_id, h.user_id.clone()), h.units);
        assert!(previous.is_none(), "holding listed twice: {h:?}");
    }
    map
}

fn persisted_map(persisted: &[(u64, u64)]) -> BTreeMap<u64, u64> {
    persisted.iter().copied().collect()
}

// ---------------------------------------------------------------------------
// The contract.

async fn sales_round_trip(fx: Arc<Fixture>) {
    let store = fx.open().await;
    let empty = store.load().await.unwrap();
    assert!(empty.sales.is_empty() && empty.holdings.is_empty());
    assert!(empty.persisted.is_empty() && empty.keyed_orders.is_empty());
    assert_eq!(empty.max_id, 0);

    let plain = sale(7);
    let full = Sale {
        id: 3,
        item: "limited sneakers, 'quoted' \"twice\"".into(),
        stock: 1_000_000_000,
        per_user_limit: u32::MAX,
        starts_at_ms: T,
        ends_at_ms: Some(T + 3_600_000),
        payment_window_secs: Some(30 * 24 * 3600),
        created_at_ms: T - 5,
        front_door: Default::default(),
        // The most stock buckets a sale may have, stored and read back.
        buckets: 16,
    };
    store.create_sale(&plain).await.unwrap();
    store.create_sale(&full).await.unwrap();
    assert!(
        store.create_sale(&plain).await.is_err(),
        "a sale id is stored once"
    );
    store.ping().await.unwrap();

    // Every node sees the sales, ordered by id; they survive a restart
    // (the first store stopped first: an embedded store's directory has
    // one owner at a time).
    store.shutdown().await;
    for node in fx.open_nodes().await {
        let snapshot = node.load().await.unwrap();
        assert_eq!(snapshot.sales, vec![full.clone(), plain.clone()]);
        assert_eq!(snapshot.max_id, 7);
    }
}

/// An admin's open / close: the window moves only while it still holds
/// what the caller read (two nodes racing cannot undo each other), "no
/// end" compares as a value, and every node reads the move after a restart.
async fn a_window_moves_by_compare_and_set(fx: Arc<Fixture>) {
    let store = fx.open().await;
    let upcoming = Sale {
        starts_at_ms: T + 60_000,
        ends_at_ms: Some(T + 120_000),
        ..sale(11)
    };
    let endless = sale(12);
    store.create_sale(&upcoming).await.unwrap();
    store.create_sale(&endless).await.unwrap();

    let opened = upcoming.schedule().open_now(T).unwrap();
    assert!(store
        .move_schedule(11, upcoming.schedule(), opened)
        .await
        .unwrap());
    // A second mover that read the old window loses and changes nothing.
    let closed_early = upcoming.schedule().close_now(T);
    assert!(!store
        .move_schedule(11, upcoming.schedule(), closed_early)
        .await
        .unwrap());
    assert_eq!(
        store.get_sale(11).await.unwrap().unwrap().schedule(),
        opened
    );
    // NULL-safe: a sale without an end is matched and closed.
    let closed = endless.schedule().close_now(T);
    assert!(store
        .move_schedule(12, endless.schedule(), closed)
        .await
        .unwrap());
    assert!(!store
        .move_schedule(12, endless.schedule(), closed)
        .await
        .unwrap());
    assert!(
        !store
            .move_schedule(99, endless.schedule(), closed)
            .await
            .unwrap(),
        "an unknown sale moves nothing"
    );

    store.shutdown().await;
    for node in fx.open_nodes().await {
        let snapshot = node.load().await.unwrap();
        let by_id: HashMap<u64, Sale> = snapshot.sales.into_iter().map(|s| (s.id, s)).collect();
        assert_eq!(by_id[&11].schedule(), opened);
        assert_eq!(by_id[&12].schedule(), closed);
        assert_eq!(by_id[&12].ends_at_ms, Some(T));
        assert_eq!(by_id[&11].item, upcoming.item, "nothing else changed");
    }
}

async fn concurrent_commits_are_all_loaded(fx: Arc<Fixture>) {
    const ORDERS: u64 = 2_000;
    const TASKS: u64 = 64;
    let nodes = fx.open_nodes().await;
    for id in [1, 2] {
        nodes[0].create_sale(&sale(id)).await.unwrap();
    }
    let all: Vec<Order> = (1..=ORDERS)
        .map(|n| {
            order(
                1_000 + n,
                1 + n % 2,
                &format!("user-{:03}", n % 300),
                1 + (n % 3) as u32,
                Some(T + 60_000),
            )
        })
        .collect();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = nodes[t as usize % nodes.len()].clone();
            let mine: Vec<Order> = all.iter().filter(|o| o.id % TASKS == t).cloned().collect();
            tokio::spawn(async move {
                // All of a task's orders in flight at once: big batches.
                let results = join_all(mine.into_iter().map(|o| store.commit_order(o))).await;
                results.into_iter().filter(Result::is_ok).count()
            })
        })
        .collect();
    let committed: usize = join_all(tasks).await.into_iter().map(Result::unwrap).sum();
    assert_eq!(committed, ORDERS as usize, "every commit answers Ok");

    let mut want_holdings = BTreeMap::new();
    let mut want_persisted = BTreeMap::new();
    for o in &all {
        *want_holdings
            .entry((o.sale_id, o.user_id.clone()))
            .or_insert(0u32) += o.quantity;
        *want_persisted.entry(o.sale_id).or_insert(0u64) += 1;
    }
    for node in &nodes {
        let snapshot = node.load().await.unwrap();
        assert_eq!(holdings_map(&snapshot.holdings), want_holdings);
        assert_eq!(persisted_map(&snapshot.persisted), want_persisted);
        assert_eq!(snapshot.max_id, 1_000 + ORDERS);
        assert!(snapshot.keyed_orders.is_empty());
    }
    for o in all.iter().step_by(97) {
        assert_eq!(nodes[0].get_order(o.id).await.unwrap().as_ref(), Some(o));
    }
    assert_eq!(nodes[0].get_order(999_999_999).await.unwrap(), None);
}

async fn committing_an_order_twice_stores_it_once(fx: Arc<Fixture>) {
    let nodes = fx.open_nodes().await;
    nodes[0].create_sale(&sale(1)).await.unwrap();
    let first = order(10, 1, "alice", 2, None);
    nodes[0].commit_order(first.clone()).await.unwrap();
    // Again, then concurrently: in one batch and across nodes.
    let mut repeats = vec![nodes[0].commit_order(first.clone()).await];
    repeats.extend(
        join_all((0..20).map(|i| nodes[i % nodes.len()].commit_order(first.clone()))).await,
    );
    if fx.commits_are_idempotent() {
        for result in repeats {
            result.expect("a repeated commit of a stored order is Ok");
        }
    }
    let snapshot = nodes[0].load().await.unwrap();
    assert_eq!(persisted_map(&snapshot.persisted), BTreeMap::from([(1, 1)]));
    assert_eq!(
        holdings_map(&snapshot.holdings),
        BTreeMap::from([((1, "alice".to_owned()), 2)])
    );
    assert_eq!(nodes[0].get_order(10).await.unwrap(), Some(first));
}

async fn idempotency_keys_are_stored_and_loaded(fx: Arc<Fixture>) {
    let store = fx.open().await;
    store.create_sale(&sale(1)).await.unwrap();
    let keyed = |id, user: &str, key: &str| Order {
        idempotency_key: Some(key.to_owned()),
        ..order(id, 1, user, 1, Some(T + 1_000))
    };
    let a1 = keyed(11, "alice", "k-1");
    let b1 = keyed(12, "bob", "k-1");
    let a2 = keyed(13, "alice", "k-2");
    // Keys compare exactly: case and trailing spaces matter.
    let a3 = keyed(14, "alice", "K-1 ");
    let plain = order(15, 1, "alice", 1, None);
    for o in [&a1, &b1, &a2, &a3, &plain] {
        store.commit_order(o.clone()).await.unwrap();
    }
    let mut loaded = store.load().await.unwrap().keyed_orders;
    loaded.sort_by_key(|o| o.id);
    assert_eq!(loaded, vec![a1.clone(), b1.clone(), a2.clone(), a3.clone()]);

    // A different order reusing (alice, k-1) fails. Orders sharing its
    // batch may be kept (the SQL stores) or failed with it (the embedded
    // store commits all or nothing), but an answer never lies: Ok means
    // stored, an error means not stored.
    let clash = keyed(16, "alice", "k-1");
    let others: Vec<Order> = (0..20)
        .map(|i| order(100 + i, 1, &format!("u{i}"), 1, None))
        .collect();
    let (clash_result, other_results) = tokio::join!(
        store.commit_order(clash),
        join_all(others.iter().map(|o| store.commit_order(o.clone())))
    );
    assert!(
        matches!(
            clash_result,
            Err(StoreError::Backend(_) | StoreError::Conflict(_))
        ),
        "an idempotency key belongs to one order: {clash_result:?}"
    );
    assert_eq!(store.get_order(16).await.unwrap(), None);
    let mut kept = 0;
    for (o, result) in others.iter().zip(&other_results) {
        let stored = store.get_order(o.id).await.unwrap();
        match result {
            Ok(()) => {
                assert_eq!(stored.as_ref(), Some(o));
                kept += 1;
            }
            Err(_) => assert_eq!(stored, None, "failed yet stored: {o:?}"),
        }
    }
    let snapshot = store.load().await.unwrap();
    assert_eq!(
        persisted_map(&snapshot.persisted),
        BTreeMap::from([(1, 5 + kept)])
    );
    assert_eq!(snapshot.keyed_orders.len(), 4);
}

async fn transitions_follow_the_lifecycle(fx: Arc<Fixture>) {
    let nodes = fx.open_nodes().await;
    let store = &nodes[0];
    let other = &nodes[nodes.len() - 1];
    store.create_sale(&sale(1)).await.unwrap();
    let paid = order(1, 1, "alice", 2, Some(T + 60_000));
    let cancelled = order(2, 1, "bob", 1, Some(T + 60_000));
    let no_deadline = order(3, 1, "carol", 1, None);
    let padded = order(4, 1, "dave ", 1, None);
    for o in [&paid, &cancelled, &no_deadline, &padded] {
        store.commit_order(o.clone()).await.unwrap();
    }

    // Not found, or someone else's (compared exactly): None.
    for (id, user) in [
        (1, "bob"),
        (1, "Alice"),
        (1, "alice "),
        (4, "dave"),
        (99, "alice"),
    ] {
        for t in [Transition::Pay, Transition::Cancel] {
            assert_eq!(store.transition(id, user, t, T).await.unwrap(), None);
        }
    }

    let r = other
        .transition(1, "alice", Transition::Pay, T)
        .await
        .unwrap()
        .unwrap();
    assert!(r.applied && !r.stock_returned);
    assert_eq!(r.order.status, OrderStatus::Paid);
    assert_eq!(r.order.updated_at_ms, T);
    assert_eq!(r.order.quantity, 2);
    for t in [Transition::Pay, Transition::Cancel] {
        let again = store
            .transition(1, "alice", t, T + 5)
            .await
            .unwrap()
            .unwrap();
        assert!(!again.applied && !again.stock_returned, "{t:?}: {again:?}");
        assert_eq!(again.order.status, OrderStatus::Paid);
        assert_eq!(
            again.order.updated_at_ms, T,
            "a refused change writes nothing"
        );
    }

    let r = store
        .transition(2, "bob", Transition::Cancel, T)
        .await
        .unwrap()
        .unwrap();
    assert!(r.applied && r.stock_returned);
    assert_eq!(r.order.status, OrderStatus::Cancelled);
    let again = other
        .transition(2, "bob", Transition::Cancel, T)
        .await
        .unwrap()
        .unwrap();
    assert!(!again.applied && !again.stock_returned);

    // Without a deadline an order never expires.
    let r = store
        .transition(3, "carol", Transition::Pay, i64::MAX / 2)
        .await
        .unwrap()
        .unwrap();
    assert!(r.applied && r.order.status == OrderStatus::Paid);

    let r = store
        .transition(4, "dave ", Transition::Pay, T)
        .await
        .unwrap()
        .unwrap();
    assert!(r.applied);

    assert_eq!(
        other.get_order(2).await.unwrap().unwrap().status,
        OrderStatus::Cancelled
    );
    let snapshot = store.load().await.unwrap();
    assert_eq!(
        holdings_map(&snapshot.holdings),
        BTreeMap::from([
            ((1, "alice".to_owned()), 2),
            ((1, "carol".to_owned()), 1),
            ((1, "dave ".to_owned()), 1),
        ]),
        "cancelled orders hold nothing"
    );
    assert_eq!(persisted_map(&snapshot.persisted), BTreeMap::from([(1, 4)]));
}

async fn late_payment_expires_the_order(fx: Arc<Fixture>) {
    let store = fx.open().await;
    store.create_sale(&sale(1)).await.unwrap();
    store
        .commit_order(order(1, 1, "alice", 3, Some(T)))
        .await
        .unwrap();
    // The deadline is inclusive: paying at it is too late.
    let r = store
        .transition(1, "alice", Transition::Pay, T)
        .await
        .unwrap()
        .unwrap();
    assert!(!r.applied, "{r:?}");
    assert!(r.stock_returned, "the expiring call returns the stock");
    assert_eq!(r.order.status, OrderStatus::Expired);
    assert_eq!(r.order.updated_at_ms, T);

    let again = store
        .transition(1, "alice", Transition::Pay, T + 1)
        .await
        .unwrap()
        .unwrap();
    assert!(!again.applied && !again.stock_returned);
    assert!(store.expire_due(T + 1_000, 10).await.unwrap().is_empty());
    assert!(store.load().await.unwrap().holdings.is_empty());

    // One millisecond before the deadline a payment still counts.
    store
        .commit_order(order(2, 1, "bob", 1, Some(T)))
        .await
        .unwrap();
    let r = store
        .transition(2, "bob", Transition::Pay, T - 1)
        .await
        .unwrap()
        .unwrap();
    assert!(r.applied && r.order.status == OrderStatus::Paid);
}

async fn concurrent_expiry_returns_each_order_once(fx: Arc<Fixture>) {
    const DUE: u64 = 400;
    let nodes = fx.open_nodes().await;
    nodes[0].create_sale(&sale(1)).await.unwrap();
    let mut orders: Vec<Order> = (0..DUE)
        .map(|n| order(n + 1, 1, &format!("due-{n}"), 1, Some(T - (n as i64))))
        .collect();
    orders.extend((0..100).map(|n| order(10_000 + n, 1, &format!("later-{n}"), 1, Some(T + 1))));
    orders.extend((0..100).map(|n| order(20_000 + n, 1, &format!("open-{n}"), 1, None)));
    for result in join_all(orders.iter().map(|o| nodes[0].commit_order(o.clone()))).await {
        result.unwrap();
    }

    // Four sweepers per node, each until it finds nothing more.
    let sweepers: Vec<_> = (0..4 * nodes.len())
        .map(|i| {
            let store = nodes[i % nodes.len()].clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store.expire_due(T, 25).await.unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch);
                }
            })
        })
        .collect();
    let mut seen = HashMap::new();
    for order in join_all(sweepers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
    {
        assert_eq!(order.status, OrderStatus::Expired);
        assert_eq!(order.updated_at_ms, T);
        *seen.entry(order.id).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "an order was expired twice");
    let want: HashSet<u64> = (1..=DUE).collect();
    assert_eq!(seen.keys().copied().collect::<HashSet<_>>(), want);
    for node in &nodes {
        assert!(node.expire_due(T, 1_000).await.unwrap().is_empty());
    }
    let snapshot = nodes[0].load().await.unwrap();
    assert_eq!(snapshot.holdings.len(), 200, "only undue orders hold stock");
}

async fn payment_racing_expiry_has_one_winner(fx: Arc<Fixture>) {
    const ORDERS: u64 = 200;
    let nodes = fx.open_nodes().await;
    nodes[0].create_sale(&sale(1)).await.unwrap();
    let orders: Vec<Order> = (1..=ORDERS)
        .map(|n| order(n, 1, &format!("buyer-{n}"), 1, Some(T)))
        .collect();
    for result in join_all(orders.iter().map(|o| nodes[0].commit_order(o.clone()))).await {
        result.unwrap();
    }
    // Payments just before the deadline race sweepers just after it.
    let payments: Vec<_> = orders
        .iter()
        .map(|o| {
            let store = nodes[o.id as usize % nodes.len()].clone();
            let (id, user) = (o.id, o.user_id.clone());
            tokio::spawn(async move {
                let r = store
                    .transition(id, &user, Transition::Pay, T - 1)
                    .await
                    .unwrap()
                    .unwrap();
                (id, r)
            })
        })
        .collect();
    let sweepers: Vec<_> = (0..2 * nodes.len())
        .map(|i| {
            let store = nodes[i % nodes.len()].clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store.expire_due(T, 8).await.unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|o| o.id));
                }
            })
        })
        .collect();
    let paid: Vec<_> = join_all(payments)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let expired: Vec<u64> = join_all(sweepers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    // Sweep whatever the racing sweepers missed.
    let mut expired: HashSet<u64> = expired.into_iter().collect();
    for o in nodes[0].expire_due(T, 1_000).await.unwrap() {
        assert!(expired.insert(o.id), "order {} expired twice", o.id);
    }
    let mut winners = 0;
    for (id, report) in paid {
        assert!(!report.stock_returned, "a timely payment returns nothing");
        if report.applied {
            winners += 1;
            assert_eq!(report.order.status, OrderStatus::Paid);
            assert!(!expired.contains(&id), "order {id} both paid and expired");
        } else {
            assert_eq!(report.order.status, OrderStatus::Expired);
            assert!(expired.contains(&id), "order {id} neither paid nor expired");
        }
    }
    assert_eq!(winners + expired.len(), ORDERS as usize);

    // Pay against cancel, from different nodes: one winner too.
    let more: Vec<Order> = (1..=50)
        .map(|n| order(1_000 + n, 1, &format!("racer-{n}"), 1, Some(T + 60_000)))
        .collect();
    for o in &more {
        nodes[0].commit_order(o.clone()).await.unwrap();
    }
    let races = more.iter().map(|o| {
        let (pay, cancel) = (nodes[0].clone(), nodes[nodes.len() - 1].clone());
        let (id, user) = (o.id, o.user_id.clone());
        async move {
            let (p, c) = tokio::join!(
                pay.transition(id, &user, Transition::Pay, T),
                cancel.transition(id, &user, Transition::Cancel, T)
            );
            (p.unwrap().unwrap(), c.unwrap().unwrap())
        }
    });
    for (p, c) in join_all(races).await {
        assert!(p.applied != c.applied, "exactly one wins: {p:?} / {c:?}");
        assert_eq!(c.stock_returned, c.applied);
        assert!(!p.stock_returned);
    }
}

async fn intents_dedupe_and_paginate(fx: Arc<Fixture>) {
    let store = fx.open().await;
    let intent = |sale_id, user: &str, quantity| Intent {
        sale_id,
        user_id: user.to_owned(),
        quantity,
        created_at_ms: T + i64::from(quantity),
    };
    store.record_intents(Vec::new()).await.unwrap();
    // Distinct by bytes: case and trailing spaces matter; order is bytewise.
    let mut users: Vec<String> = (0..120).rev().map(|n| format!("u{n:03}")).collect();
    users.extend(["Alice", "alice", "alice ", "élise", "Zed"].map(String::from));
    let first: Vec<Intent> = users.iter().map(|u| intent(1, u, 1)).collect();
    // Repeats inside one call and in a later call keep the first intent.
    let mut repeat = first.clone();
    repeat.extend(users.iter().map(|u| intent(1, u, 2)));
    store.record_intents(repeat).await.unwrap();
    store
        .record_intents(users.iter().map(|u| intent(1, u, 3)).collect())
        .await
        .unwrap();
    store
        .record_intents(vec![intent(2, "u000", 5), intent(2, "zz", 6)])
        .await
        .unwrap();

    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_intents(1, cursor.clone(), 7).await.unwrap();
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        cursor = Some(page.last().unwrap().user_id.clone());
        pages.extend(page);
    }
    let mut want = first;
    want.sort_by(|a, b| a.user_id.as_bytes().cmp(b.user_id.as_bytes()));
    assert_eq!(pages, want);
    assert_eq!(
        store
            .list_intents(2, None, 10)
            .await
            .unwrap()
            .iter()
            .map(|i| (i.user_id.as_str(), i.quantity))
            .collect::<Vec<_>>(),
        vec![("u000", 5), ("zz", 6)]
    );
    assert_eq!(
        store
            .list_intents(2, Some("u000".into()), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store.list_intents(3, None, 10).await.unwrap().is_empty());
}

async fn shutdown_flushes_then_refuses(fx: Arc<Fixture>) {
    let store = fx.open().await;
    store.create_sale(&sale(1)).await.unwrap();
    let commits: Vec<_> = (1..=300)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .commit_order(order(n, 1, &format!("u{n}"), 1, None))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.shutdown().await;
    let mut accepted = 0;
    for result in join_all(commits).await.into_iter().map(Result::unwrap) {
        match result {
            Ok(()) => accepted += 1,
            Err(StoreError::Closed) => {}
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }
    assert!(matches!(
        store.commit_order(order(999, 1, "late", 1, None)).await,
        Err(StoreError::Closed)
    ));
    assert!(store.ping().await.is_err(), "a closed store is not ready");

    // Every order that was answered Ok is there after a restart.
    let reopened = fx.open().await;
    let snapshot = reopened.load().await.unwrap();
    assert_eq!(
        persisted_map(&snapshot.persisted)
            .get(&1)
            .copied()
            .unwrap_or(0),
        accepted
    );
    assert_eq!(reopened.get_order(999).await.unwrap(), None);
    reopened.ping().await.unwrap();
}

// ---------------------------------------------------------------------------
// The application on a SQL database, through the shared harness.

/// The whole delivery log.
async fn log_of(store: &Arc<dyn OrderStore>, state: Option<DeliveryState>) -> Vec<Delivery> {
    store
        .list_webhooks(DeliveryFilter {
            state,
            after: None,
            limit: 1000,
        })
        .await
        .expect("listing the outbox")
}

fn ids_of(log: &[Delivery]) -> Vec<String> {
    log.iter().map(|d| d.event_id.clone()).collect()
}

async fn outbox_records_each_order_change_once(fx: Arc<Fixture>) {
    let store = fx.open_outbox().await;
    store.create_sale(&sale(1)).await.unwrap();
    // 11: paid; 12: cancelled; 13: swept; 14: paid too late (expired);
    // 15: stays pending.
    for (id, expiry) in [
        (11, Some(T + 60_000)),
        (12, Some(T + 60_000)),
        (13, Some(T - 10)),
        (14, Some(T - 5)),
        (15, Some(T + 60_000)),
    ] {
        store
            .commit_order(order(id, 1, &format!("u{id}"), 1, expiry))
            .await
            .unwrap();
    }
    // A second commit of a stored order writes no second event.
    let again = store
        .commit_order(order(11, 1, "u11", 1, Some(T + 60_000)))
        .await;
    if fx.commits_are_idempotent() {
        again.expect("a repeated commit of a stored order is Ok");
    }
    let paid = store
        .transition(11, "u11", Transition::Pay, T)
        .await
        .unwrap()
        .unwrap();
    assert!(paid.applied);
    let cancelled = store
        .transition(12, "u12", Transition::Cancel, T)
        .await
        .unwrap()
        .unwrap();
    assert!(cancelled.applied);
    let late = store
        .transition(14, "u14", Transition::Pay, T)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late.order.status, OrderStatus::Expired);
    let swept = store.expire_due(T, 100).await.unwrap();
    assert_eq!(swept.iter().map(|o| o.id).collect::<Vec<_>>(), [13]);
    // Refused changes write nothing.
    assert!(
        !store
            .transition(11, "u11", Transition::Cancel, T)
            .await
            .unwrap()
            .unwrap()
            .applied
    );
    assert!(store
        .transition(15, "mallory", Transition::Cancel, T)
        .await
        .unwrap()
        .is_none());

    let mut expected: Vec<String> = [11, 12, 13, 14, 15]
        .map(|id| event_id(id, OrderStatus::PendingPayment))
        .into_iter()
        .chain([
            event_id(11, OrderStatus::Paid),
            event_id(12, OrderStatus::Cancelled),
            event_id(13, OrderStatus::Expired),
            event_id(14, OrderStatus::Expired),
        ])
        .collect();
    expected.sort();
    let log = log_of(&store, None).await;
    assert_eq!(
        ids_of(&log),
        expected,
        "one event per change, ordered by id"
    );
    for d in &log {
        assert_eq!(d.state, DeliveryState::Pending);
        assert_eq!(d.attempts, 0);
        assert_eq!(d.last_status, None);
        assert_eq!(event_id(d.order_id, d.order_status), d.event_id);
        let want_at = if d.order_status == OrderStatus::PendingPayment {
            T - 1_000
        } else {
            T
        };
        assert_eq!(d.occurred_at_ms, want_at, "{d:?}");
    }
    // Pages follow the cursor.
    let page = store
        .list_webhooks(DeliveryFilter {
            state: Some(DeliveryState::Pending),
            after: Some(expected[3].clone()),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(ids_of(&page), expected[4..6]);
    assert!(log_of(&store, Some(DeliveryState::Dead)).await.is_empty());

    // A store with the outbox off (webhooks not configured) writes none.
    let plain = Fixture::embedded();
    let off = plain.open().await;
    off.create_sale(&sale(1)).await.unwrap();
    off.commit_order(order(21, 1, "u21", 1, None))
        .await
        .unwrap();
    off.transition(21, "u21", Transition::Pay, T).await.unwrap();
    assert!(log_of(&off, None).await.is_empty());
    plain.cleanup().await;
}

fn record(
    e: &OutboxEvent,
    state: DeliveryState,
    status: Option<u16>,
    now_ms: i64,
) -> AttemptRecord {
    AttemptRecord {
        event_id: e.event_id.clone(),
        attempt: e.attempt,
        state,
        status,
        error: (state != DeliveryState::Delivered).then(|| format!("HTTP {status:?}")),
        next_attempt_at_ms: now_ms + 1_000,
        now_ms,
    }
}

async fn claims_lease_events_and_stale_results_change_nothing(fx: Arc<Fixture>) {
    let store = fx.open_outbox().await;
    store.create_sale(&sale(1)).await.unwrap();
    let mut keyed = order(31, 1, "u31", 2, Some(T + 60_000));
    keyed.idempotency_key = Some("k-31".into());
    store.commit_order(keyed.clone()).await.unwrap();
    store
        .commit_order(order(32, 1, "u32", 1, None))
        .await
        .unwrap();
    store
        .transition(32, "u32", Transition::Pay, T)
        .await
        .unwrap();
    // Not due before the change happened.
    assert!(store
        .claim_webhooks(T - 2_000, 10_000, 10)
        .await
        .unwrap()
        .is_empty());
    let claimed = store.claim_webhooks(T, 10_000, 10).await.unwrap();
    let mut ids: Vec<_> = claimed.iter().map(|e| e.event_id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            event_id(31, OrderStatus::PendingPayment),
            event_id(32, OrderStatus::PendingPayment),
            event_id(32, OrderStatus::Paid)
        ]
    );
    // The payload's order is the order at the event.
    let e31 = claimed.iter().find(|e| e.order.id == 31).unwrap();
    assert_eq!(e31.attempt, 1);
    assert_eq!(e31.order, keyed);
    assert_eq!(e31.occurred_at_ms, T - 1_000);
    let paid = claimed
        .iter()
        .find(|e| e.event_id == event_id(32, OrderStatus::Paid))
        .unwrap();
    assert_eq!(paid.order.status, OrderStatus::Paid);
    assert_eq!(paid.order.updated_at_ms, T);
    let accepted32 = claimed
        .iter()
        .find(|e| e.event_id == event_id(32, OrderStatus::PendingPayment))
        .unwrap();
    assert_eq!(accepted32.order.status, OrderStatus::PendingPayment);

    // Leased: nobody else gets them until the lease ends.
    assert!(store
        .claim_webhooks(T + 9_999, 10_000, 10)
        .await
        .unwrap()
        .is_empty());
    let reclaimed = store.claim_webhooks(T + 10_000, 10_000, 10).await.unwrap();
    assert_eq!(reclaimed.len(), 3);
    assert!(reclaimed.iter().all(|e| e.attempt == 2));
    // The first lease's late result is stale.
    let stale = record(e31, DeliveryState::Delivered, Some(200), T + 10_001);
    assert!(!store.record_webhook_attempt(stale).await.unwrap());
    let now = T + 10_002;
    let r31 = reclaimed.iter().find(|e| e.order.id == 31).unwrap();
    let rpaid = reclaimed
        .iter()
        .find(|e| e.order.status == OrderStatus::Paid)
        .unwrap();
    let r32 = reclaimed
        .iter()
        .find(|e| e.order.id == 32 && e.order.status == OrderStatus::PendingPayment)
        .unwrap();
    assert!(store
        .record_webhook_attempt(record(r31, DeliveryState::Delivered, Some(200), now))
        .await
        .unwrap());
    assert!(store
        .record_webhook_attempt(record(rpaid, DeliveryState::Pending, Some(503), now))
        .await
        .unwrap());
    assert!(store
        .record_webhook_attempt(record(r32, DeliveryState::Dead, None, now))
        .await
        .unwrap());
    // Recorded once: a repeat is stale too.
    assert!(!store
        .record_webhook_attempt(record(r31, DeliveryState::Pending, Some(500), now))
        .await
        .unwrap());

    let log = log_of(&store, None).await;
    let line = |id: &str| log.iter().find(|d| d.event_id == id).unwrap().clone();
    let d31 = line(&r31.event_id);
    assert_eq!(
        (
            d31.state,
            d31.attempts,
            d31.last_status,
            d31.last_error.clone()
        ),
        (DeliveryState::Delivered, 2, Some(200), None)
    );
    let dpaid = line(&rpaid.event_id);
    assert_eq!(
        (
            dpaid.state,
            dpaid.attempts,
            dpaid.last_status,
            dpaid.next_attempt_at_ms
        ),
        (DeliveryState::Pending, 2, Some(503), now + 1_000)
    );
    assert!(dpaid.last_error.is_some());
    let d32 = line(&r32.event_id);
    assert_eq!((d32.state, d32.last_status), (DeliveryState::Dead, None));
    assert_eq!(
        ids_of(&log_of(&store, Some(DeliveryState::Delivered)).await),
        vec![r31.event_id.clone()]
    );
    // Only the pending one comes back, and only once due.
    assert!(store
        .claim_webhooks(now + 999, 10_000, 10)
        .await
        .unwrap()
        .is_empty());
    let third = store.claim_webhooks(now + 1_000, 10_000, 10).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(
        (third[0].event_id.clone(), third[0].attempt),
        (rpaid.event_id.clone(), 3)
    );
    // The log survives a restart.
    store.shutdown().await;
    let reopened = fx.open_outbox().await;
    assert_eq!(log_of(&reopened, None).await.len(), 3);
}

async fn concurrent_claims_hand_each_event_out_once(fx: Arc<Fixture>) {
    let nodes = {
        let mut nodes = Vec::new();
        for _ in 0..fx.nodes() {
            nodes.push(fx.open_outbox().await);
        }
        nodes
    };
    nodes[0].create_sale(&sale(1)).await.unwrap();
    let orders: Vec<_> = (0..60u64)
        .map(|i| order(100 + i, 1, &format!("c{i}"), 1, None))
        .collect();
    join_all(orders.into_iter().map(|o| nodes[0].commit_order(o)))
        .await
        .into_iter()
        .for_each(|r| r.unwrap());
    // Each node claims in small rounds, twice per node at once.
    let claims = nodes
        .iter()
        .flat_map(|n| [n.clone(), n.clone()])
        .map(|n| async move {
            let mut mine = Vec::new();
            loop {
                let got = n.claim_webhooks(T, 60_000, 7).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|e| e.event_id));
            }
        });
    let all: Vec<String> = join_all(claims).await.into_iter().flatten().collect();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 60, "every event claimed once: {all:?}");
    assert_eq!(unique.len(), 60);
}

async fn app_sells_stock_once_and_restarts(fx: Arc<Fixture>) {
    let url = fx.url.clone().expect("a SQL fixture");
    let on_sql = |s: &mut Settings| s.database = Some(url.clone());

    let app = spawn_app_with(on_sql).await;
    let sale_id = app.open_sale(50, 1).await;
    let crowd = (0..200).map(|n| (format!("buyer-{n:03}"), 1)).collect();
    let answers = flood(&app, &sale_id, crowd, 200).await;
    assert_only(&answers, &["201", "409 sold_out"]);
    assert_eq!(answers.orders, 50, "exactly the stock is sold");
    let dir = app.stop().await;

    // A new process on the same database rebuilds its state from it.
    let app = spawn_app_on_with(dir, on_sql).await;
    let sale = app.sale(&sale_id).await;
    assert_eq!(sale["remaining"], 0, "{sale}");
    assert_eq!(sale["status"], "sold_out", "{sale}");
    let stats = app.stats(&sale_id).await;
    assert_eq!(stats["orders_persisted"], 50, "{stats}");
    check_orders_readable(&app, &sale_id, &answers).await;
    for order in &answers.accepted {
        let resp = app
            .get_order(&order.order_id, &token(answers.owner(order)))
            .await;
        let order = json_status(resp, StatusCode::OK).await;
        assert_eq!(order["status"], "pending_payment", "{order}");
    }
    let late = app.buy(&sale_id, "late-buyer").await;
    assert_eq!(late.status(), StatusCode::CONFLICT);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_on_postgres_sells_stock_once_and_restarts() {
    run(Fixture::postgres().await, app_sells_stock_once_and_restarts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_on_mysql_sells_stock_once_and_restarts() {
    run(Fixture::mysql().await, app_sells_stock_once_and_restarts).await;
}

#[tokio::test]
async fn app_refuses_an_unknown_database_scheme() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::with_data_dir(data_dir.path());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.database = Some("redis://:hunter2@127.0.0.1:6379/0".into());
    let err = Application::build(settings)
        .await
        .err()
        .expect("an unknown scheme is a startup error");
    let message = format!("{err:#}");
    assert!(
        message.contains("unsupported database URL scheme"),
        "{message}"
    );
    assert!(
        !message.contains("hunter2"),
        "credentials leaked: {message}"
    );
}
