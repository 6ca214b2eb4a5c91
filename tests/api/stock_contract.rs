//! The stock contract: every `StockStore` (the embedded ledger, Redis
//! standalone, Redis Cluster) passes the same suite, with real concurrency.
//!
//! What a stock must do, whatever it is built on: sell exactly its units
//! under a concurrent crowd, never sell a buyer past the per-user limit,
//! refuse outside the sale's window (by the stock's clock), give units back once per order, keep
//! the engine's local ledger (the sold-out flag) in step, and say whether it
//! holds a sale. Keyed replays are a shared stock's extra (the embedded
//! engine answers them from its cache before the stock is asked) and are
//! checked for Redis only.

use std::sync::Arc;

use flashsale::backend::memory::EmbeddedStock;
use flashsale::backend::redis::{RedisSettings, RedisStock};
use flashsale::backend::stock::{Decision, OrderPlace, Reservation, StockStore};
use flashsale::domain::{now_ms, Ledger, LiveSchedule, Order, OrderStatus, Rejection, Sale};

use crate::kit::RedisServers;

/// One sale on one stock, with the node's ledger beside it.
struct Fixture {
    stock: Arc<dyn StockStore>,
    sale: Arc<Sale>,
    ledger: Arc<Ledger>,
    /// The node's live window (what the engine passes to `reserve`).
    schedule: LiveSchedule,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Fixture {
    async fn new(
        stock: Arc<dyn StockStore>,
        k: u8,
        units: u64,
        limit: u32,
        starts_in_ms: i64,
    ) -> Self {
        Self::with_window(stock, k, units, limit, starts_in_ms, 3_600_000).await
    }

    async fn with_window(
        stock: Arc<dyn StockStore>,
        k: u8,
        units: u64,
        limit: u32,
        starts_in_ms: i64,
        ends_in_ms: i64,
    ) -> Self {
        let now = now_ms();
        let sale = Sale {
            id: next_id() + 1_000_000 * u64::from(rand::random::<u16>()),
            item: "contract".into(),
            stock: units,
            per_user_limit: limit,
            starts_at_ms: now + starts_in_ms,
            ends_at_ms: Some(now + ends_in_ms),
            payment_window_secs: None,
            created_at_ms: now,
            front_door: Default::default(),
            buckets: k,
        };
        stock.seed_new(&sale).await.unwrap();
        Self {
            ledger: Arc::new(Ledger::new(sale.stock, sale.per_user_limit)),
            schedule: LiveSchedule::new(sale.schedule()),
            sale: Arc::new(sale),
            stock,
        }
    }

    fn order(&self, user: &str, quantity: u32, key: Option<&str>) -> Order {
        let now = now_ms();
        Order {
            id: next_id(),
            sale_id: self.sale.id,
            user_id: user.to_owned(),
            quantity,
            status: OrderStatus::PendingPayment,
            idempotency_key: key.map(str::to_owned),
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: None,
        }
    }

    async fn reserve(&self, order: Order) -> Decision {
        self.stock
            .reserve(
                self.schedule.get(),
                &self.ledger,
                Arc::new(Reservation::new(order)),
            )
            .await
            .unwrap()
    }

    async fn cleanup(self) {
        let _ = self.stock.forget(self.sale.id).await;
    }
}

/// Runs every case of the contract against stocks made by `make`, with
/// sales split over `k` buckets (which only a shared stock heeds).
async fn contract<F, Fut>(make: F, k: u8)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn StockStore>>,
{
    sells_exactly_its_units_to_a_concurrent_crowd(make().await, k).await;
    never_sells_past_the_per_user_limit(make().await, k).await;
    refuses_outside_the_window(make().await, k).await;
    decides_by_a_moved_window(make().await, k).await;
    gives_units_back_once_per_order(make().await, k).await;
    keeps_the_local_ledger_in_step(make().await, k).await;
}

async fn sells_exactly_its_units_to_a_concurrent_crowd(stock: Arc<dyn StockStore>, k: u8) {
    let f = Arc::new(Fixture::new(stock, k, 50, 1, -1000).await);
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move { f.reserve(f.order(&format!("u{}", i % 200), 1, None)).await })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Decision::Accepted => accepted += 1,
            Decision::Rejected(Rejection::SoldOut | Rejection::LimitReached) => {}
            other => panic!("unexpected decision {other:?}"),
        }
    }
    assert_eq!(accepted, 50, "exactly the stock is sold");
    assert_eq!(f.ledger.remaining(), 0, "the local sold-out flag is set");
    assert_eq!(
        f.reserve(f.order("late", 1, None)).await,
        Decision::Rejected(Rejection::SoldOut)
    );
    Arc::into_inner(f).unwrap().cleanup().await;
}

async fn never_sells_past_the_per_user_limit(stock: Arc<dyn StockStore>, k: u8) {
    let f = Arc::new(Fixture::new(stock, k, 1000, 2, -1000).await);
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { f.reserve(f.order("greedy", 1, None)).await })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Decision::Accepted => accepted += 1,
            Decision::Rejected(Rejection::LimitReached) => {}
            other => panic!("unexpected decision {other:?}"),
        }
    }
    assert_eq!(accepted, 2);
    assert_eq!(
        f.reserve(f.order("big", 3, None)).await,
        Decision::Rejected(Rejection::LimitReached)
    );
    assert_eq!(
        f.reserve(f.order("pair", 2, None)).await,
        Decision::Accepted
    );
    Arc::into_inner(f).unwrap().cleanup().await;
}

/// An admin opens an upcoming sale and closes it again: the stock decides
/// by the moved window (a shared stock by the window it holds, which every
/// node's live window mirrors), and a stale push never reopens it.
async fn decides_by_a_moved_window(stock: Arc<dyn StockStore>, k: u8) {
    let f = Fixture::new(stock.clone(), k, 10, 1, 60_000).await;
    assert_eq!(
        f.reserve(f.order("early", 1, None)).await,
        Decision::Rejected(Rejection::NotStarted)
    );
    let opened = f.sale.schedule().open_now(now_ms()).unwrap();
    stock.set_schedule(f.sale.id, opened).await.unwrap();
    f.schedule.advance(opened);
    assert_eq!(f.reserve(f.order("a", 1, None)).await, Decision::Accepted);
    let other = Ledger::new(f.sale.stock, f.sale.per_user_limit);
    let elsewhere = LiveSchedule::new(f.sale.schedule());
    if stock.is_shared() {
        assert!(stock.sync(&other, &elsewhere, f.sale.id).await.unwrap());
        assert_eq!(elsewhere.get(), opened, "another node mirrors the opening");
    }
    let closed = opened.close_now(now_ms());
    stock.set_schedule(f.sale.id, closed).await.unwrap();
    f.schedule.advance(closed);
    assert_eq!(
        f.reserve(f.order("b", 1, None)).await,
        Decision::Rejected(Rejection::Ended)
    );
    if stock.is_shared() {
        // A stale push (the window read before the close) changes nothing.
        stock.set_schedule(f.sale.id, opened).await.unwrap();
        assert!(stock.sync(&other, &elsewhere, f.sale.id).await.unwrap());
        assert_eq!(elsewhere.get(), closed, "another node mirrors the close");
        // Even a node whose live window is stale cannot buy: the shared
        // stock decides by the window it holds.
        let stale = LiveSchedule::new(opened);
        let decision = stock
            .reserve(
                stale.get(),
                &other,
                Arc::new(Reservation::new(f.order("c", 1, None))),
            )
            .await
            .unwrap();
        assert_eq!(decision, Decision::Rejected(Rejection::Ended));
    }
    assert_eq!(f.ledger.remaining(), 9, "one unit sold, inside the window");
    f.cleanup().await;
}

/// By the stock's own clock: both sales are far from their window's edges.
async fn refuses_outside_the_window(stock: Arc<dyn StockStore>, k: u8) {
    let stock_again = stock.clone();
    let f = Fixture::new(stock, k, 10, 1, 60_000).await;
    assert_eq!(
        f.reserve(f.order("early", 1, None)).await,
        Decision::Rejected(Rejection::NotStarted)
    );
    assert_eq!(f.ledger.remaining(), 10, "nothing was taken");
    f.cleanup().await;
    let f = Fixture::with_window(stock_again, k, 10, 1, -7_200_000, -3_600_000).await;
    assert_eq!(
        f.reserve(f.order("late", 1, None)).await,
        Decision::Rejected(Rejection::Ended)
    );
    assert_eq!(f.ledger.remaining(), 10, "nothing was taken");
    f.cleanup().await;
}

async fn gives_units_back_once_per_order(stock: Arc<dyn StockStore>, k: u8) {
    let f = Fixture::new(stock, k, 1, 1, -1000).await;
    let order = f.order("a", 1, None);
    assert_eq!(f.reserve(order.clone()).await, Decision::Accepted);
    assert_eq!(
        f.reserve(f.order("b", 1, None)).await,
        Decision::Rejected(Rejection::SoldOut)
    );
    let mut released = order.clone();
    released.status = OrderStatus::Cancelled;
    f.stock.release(&f.ledger, &released).await.unwrap();
    f.stock.release(&f.ledger, &released).await.unwrap();
    assert_eq!(f.ledger.remaining(), 1, "the unit came back once");
    assert_eq!(f.reserve(f.order("b", 1, None)).await, Decision::Accepted);
    assert_eq!(
        f.reserve(f.order("c", 1, None)).await,
        Decision::Rejected(Rejection::SoldOut),
        "a second release of the same order gave nothing back"
    );
    f.cleanup().await;
}

async fn keeps_the_local_ledger_in_step(stock: Arc<dyn StockStore>, k: u8) {
    let f = Fixture::new(stock.clone(), k, 5, 5, -1000).await;
    for _ in 0..3 {
        assert_eq!(f.reserve(f.order("a", 1, None)).await, Decision::Accepted);
    }
    assert_eq!(f.ledger.remaining(), 2);
    assert!(
        stock.sync(&f.ledger, &f.schedule, f.sale.id).await.unwrap(),
        "a stock that holds the sale says so"
    );
    assert_eq!(f.ledger.remaining(), 2);
    if stock.is_shared() {
        // Another node's ledger catches up from the shared stock.
        let other = Ledger::new(f.sale.stock, f.sale.per_user_limit);
        let window = LiveSchedule::new(f.sale.schedule());
        assert!(stock.sync(&other, &window, f.sale.id).await.unwrap());
        assert_eq!(other.remaining(), 2);
        assert!(
            !stock
                .sync(&other, &window, f.sale.id + 77_777)
                .await
                .unwrap(),
            "a sale the stock does not hold is reported as such"
        );
    }
    f.cleanup().await;
}

/// A shared stock replays a keyed purchase any node accepted.
async fn replays_a_keyed_purchase(stock: Arc<dyn StockStore>, k: u8) {
    let f = Fixture::new(stock, k, 10, 5, -1000).await;
    let first = f.order("k", 1, Some("key-1"));
    assert_eq!(f.reserve(first.clone()).await, Decision::Accepted);
    match f.reserve(f.order("k", 1, Some("key-1"))).await {
        Decision::Replay(o) => assert_eq!(o.id, first.id),
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(f.ledger.remaining(), 9, "the replay took nothing");
    f.cleanup().await;
}

/// A shared stock holds every accepted order in flight, readable from any
/// node by its buyer, until a writer says it is stored.
async fn keeps_accepted_orders_in_flight_until_forgotten(stock: Arc<dyn StockStore>, k: u8) {
    // 1 + 2 + 1 + 2 + 1 + 2 = 9 units: all of them.
    let f = Fixture::new(stock.clone(), k, 9, 2, -1000).await;
    let mut orders = Vec::new();
    for i in 0..6u32 {
        let order = f.order(&format!("in-flight-{i}"), 1 + i % 2, None);
        assert_eq!(f.reserve(order.clone()).await, Decision::Accepted);
        orders.push(order);
    }
    // Sold out now: a refused order leaves no record.
    let refused = f.order("late", 1, None);
    let late = f.reserve(refused.clone()).await;
    assert_eq!(late, Decision::Rejected(Rejection::SoldOut));
    // Another sale listed first, as a node looks in several.
    let sales = [(f.sale.id + 7, 1), (f.sale.id, k)];
    for o in &orders {
        let found = stock
            .in_flight_order(o.id, &o.user_id, &sales)
            .await
            .unwrap();
        assert_eq!(found.as_ref(), Some(o), "order {}", o.id);
        assert_eq!(
            stock
                .in_flight_order(o.id, "someone-else", &sales)
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(
        stock
            .in_flight_order(refused.id, "late", &sales)
            .await
            .unwrap(),
        None
    );
    let stored: Vec<OrderPlace<'_>> = orders[..4]
        .iter()
        .map(|o| OrderPlace {
            order_id: o.id,
            sale_id: o.sale_id,
            user: &o.user_id,
            buckets: k,
        })
        .collect();
    stock.forget_in_flight(&stored).await.unwrap();
    for (i, o) in orders.iter().enumerate() {
        let found = stock
            .in_flight_order(o.id, &o.user_id, &sales)
            .await
            .unwrap();
        assert_eq!(found.is_some(), i >= 4, "order {i}");
    }
    f.cleanup().await;
}

fn prefix() -> String {
    format!("fs_stock_{:08x}", rand::random::<u32>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_stock_keeps_the_contract() {
    // The embedded stock is one process, one ledger: it ignores buckets.
    for k in [1, 3] {
        contract(
            || async { Arc::new(EmbeddedStock) as Arc<dyn StockStore> },
            k,
        )
        .await;
    }
}

async fn standalone(k: u8) {
    let url = std::env::var("FLASHSALE_TEST_REDIS")
        .unwrap_or_else(|_| crate::kit::backends::REDIS.to_owned());
    let make = || async {
        RedisStock::connect(&RedisSettings::new(vec![url.clone()], prefix()))
            .await
            .expect("the local Redis on 6379") as Arc<dyn StockStore>
    };
    contract(make, k).await;
    replays_a_keyed_purchase(make().await, k).await;
    keeps_accepted_orders_in_flight_until_forgotten(make().await, k).await;
}

async fn cluster(k: u8) {
    let servers = RedisServers::cluster().await;
    let urls = servers.urls();
    let make = || async {
        RedisStock::connect(&RedisSettings {
            cluster: true,
            ..RedisSettings::new(urls.clone(), prefix())
        })
        .await
        .expect("the private Redis Cluster") as Arc<dyn StockStore>
    };
    contract(make, k).await;
    replays_a_keyed_purchase(make().await, k).await;
    keeps_accepted_orders_in_flight_until_forgotten(make().await, k).await;
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_standalone_keeps_the_contract() {
    standalone(1).await;
}

/// A sale split over three buckets keeps the same contract: units move
/// between buckets as buyers drain theirs, and nothing is oversold or left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_standalone_keeps_the_contract_with_3_buckets() {
    standalone(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_keeps_the_contract() {
    cluster(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_keeps_the_contract_with_3_buckets() {
    cluster(3).await;
}

/// A node that never saw a bucketed sale's split (it did not create or
/// seed it, nor sync it yet) is sent to the buckets by the sale's
/// directory in the same call: its purchase lands in the buyer's bucket
/// (the per-user limit holds across nodes), its release and its window move
/// reach the right bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_saw_the_split_is_redirected_to_the_buckets() {
    let url = std::env::var("FLASHSALE_TEST_REDIS")
        .unwrap_or_else(|_| crate::kit::backends::REDIS.to_owned());
    let prefix = prefix();
    let connect = || async {
        RedisStock::connect(&RedisSettings::new(vec![url.clone()], prefix.clone()))
            .await
            .expect("the local Redis on 6379") as Arc<dyn StockStore>
    };
    let f = Fixture::new(connect().await, 3, 6, 1, -1000).await;
    let first = f.order("x", 1, None);
    assert_eq!(f.reserve(first.clone()).await, Decision::Accepted);
    // A fresh node buys for the same buyer: the limit is checked in the
    // buyer's bucket, where the first unit is.
    let other = connect().await;
    let ledger = Ledger::new(f.sale.stock, f.sale.per_user_limit);
    let again = other
        .reserve(
            f.schedule.get(),
            &ledger,
            Arc::new(Reservation::new(f.order("x", 1, None))),
        )
        .await
        .unwrap();
    assert_eq!(again, Decision::Rejected(Rejection::LimitReached));
    // Another fresh node returns the first unit, to the buyer's bucket.
    let third = connect().await;
    let mut cancelled = first.clone();
    cancelled.status = OrderStatus::Cancelled;
    third.release(&ledger, &cancelled).await.unwrap();
    let st = f.stock.state(f.sale.id).await.unwrap().unwrap();
    assert_eq!((st.stock, st.sold), (6, 0), "the unit is back");
    // And a fourth closes the sale on every bucket.
    let fourth = connect().await;
    let closed = f.sale.schedule().close_now(now_ms());
    fourth.set_schedule(f.sale.id, closed).await.unwrap();
    for user in ["a", "b", "c", "d", "e", "f"] {
        assert_eq!(
            f.reserve(f.order(user, 1, None)).await,
            Decision::Rejected(Rejection::Ended),
            "{user}"
        );
    }
    f.cleanup().await;
}
