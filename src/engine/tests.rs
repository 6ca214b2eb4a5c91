//! The one purchase path against in-process parts: the embedded stock, the
//! in-process queue, fake hand-offs — no server, no network.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::handoff::{HandedOff, HandoffError, OrderHandoff, QueueHandoff, StoreHandoff};
use super::*;
use crate::backend::embedded::{SqliteSettings, SqliteStore};
use crate::backend::memory::{EmbeddedStock, InProcessQueue};
use crate::backend::queue::OrderQueue;

fn open_sale(stock: u64, limit: u32) -> NewSale {
    NewSale::parse(&serde_json::json!({
        "item": "engine test",
        "stock": stock,
        "per_user_limit": limit,
        "starts_at": crate::domain::rfc3339(now_ms() - 1000),
    }))
    .unwrap()
}

fn unlimited() -> EngineSettings {
    EngineSettings {
        user_rate_per_sec: 0,
        user_burst: 0,
        node_id: 1,
        ..EngineSettings::default()
    }
}

async fn engine(parts: EngineParts) -> Arc<Engine> {
    Engine::load(parts, &unlimited(), CancellationToken::new())
        .await
        .unwrap()
        .0
}

fn store(dir: &tempfile::TempDir) -> Arc<dyn OrderStore> {
    Arc::new(SqliteStore::open(dir.path(), &SqliteSettings::default()).unwrap())
}

async fn flood(
    engine: &Arc<Engine>,
    sale_id: u64,
    buyers: usize,
    tries: usize,
) -> Vec<PurchaseOutcome> {
    let tasks: Vec<_> = (0..tries)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .purchase(sale_id, format!("buyer-{}", i % buyers), 1, None)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn stored(store: &Arc<dyn OrderStore>, sale_id: u64) -> u64 {
    let snapshot = store.load().await.unwrap();
    snapshot
        .persisted
        .iter()
        .find(|(s, _)| *s == sale_id)
        .map_or(0, |(_, n)| *n)
}

fn accepted(outcomes: &[PurchaseOutcome]) -> usize {
    outcomes
        .iter()
        .filter(|o| matches!(o, PurchaseOutcome::Accepted { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_hand_off_sells_exactly_the_stock() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let engine = engine(EngineParts {
        store: store.clone(),
        stock: Arc::new(EmbeddedStock),
        handoff: Arc::new(StoreHandoff::new(store.clone())),
        notifier: Arc::new(events::NoEvents),
        buyers: super::buyer_stream::BuyerStreams::new(),
        room: Arc::new(crate::backend::room::MemoryRoom::default()),
        rates: None,
    })
    .await;
    let sale = engine.create_sale(open_sale(50, 1)).await.unwrap();
    let outcomes = flood(&engine, sale.sale.id, 300, 600).await;
    assert_eq!(accepted(&outcomes), 50);
    assert_eq!(sale.ledger.remaining(), 0);
    assert_eq!(stored(&store, sale.sale.id).await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_hand_off_runs_the_same_path_and_the_writer_stores_every_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let queue = InProcessQueue::new();
    let stock: Arc<dyn crate::backend::stock::StockStore> = Arc::new(EmbeddedStock);
    let engine = engine(EngineParts {
        store: store.clone(),
        stock: stock.clone(),
        handoff: Arc::new(QueueHandoff::new(Arc::new(queue.clone()), stock)),
        notifier: Arc::new(events::QueueEvents::new(Arc::new(queue.clone()))),
        buyers: super::buyer_stream::BuyerStreams::new(),
        room: Arc::new(crate::backend::room::MemoryRoom::default()),
        rates: None,
    })
    .await;
    let stop = CancellationToken::new();
    let writer = crate::worker::order_writer::spawn_order_writer(
        engine.clone(),
        Arc::new(queue.clone()),
        stop.clone(),
    );
    let sale = engine.create_sale(open_sale(40, 2)).await.unwrap();
    let outcomes = flood(&engine, sale.sale.id, 100, 400).await;
    assert_eq!(accepted(&outcomes), 40);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored(&store, sale.sale.id).await < 40 {
        assert!(tokio::time::Instant::now() < deadline, "the writer stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The writer announces a batch after it stored it, so the event may
    // trail the rows by a moment.
    while !queue.events().iter().any(|(k, _)| k == "order.accepted") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never announced what it stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queue.depth().await.unwrap().ready, 0);
    stop.cancel();
    writer.await.unwrap();
}

/// A hand-off that always fails in the given way.
struct Failing {
    durable_elsewhere: bool,
    calls: AtomicUsize,
}

#[async_trait]
impl OrderHandoff for Failing {
    async fn hand_off(&self, _r: &Reservation) -> Result<HandedOff, HandoffError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.durable_elsewhere {
            Err(HandoffError::Unconfirmed("not confirmed"))
        } else {
            Err(HandoffError::NotDurable(StoreError::Backend(
                "disk on fire".into(),
            )))
        }
    }
}

async fn failing_engine(durable_elsewhere: bool) -> (Arc<Engine>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let engine = engine(EngineParts {
        store,
        stock: Arc::new(EmbeddedStock),
        handoff: Arc::new(Failing {
            durable_elsewhere,
            calls: AtomicUsize::new(0),
        }),
        notifier: Arc::new(events::NoEvents),
        buyers: super::buyer_stream::BuyerStreams::new(),
        room: Arc::new(crate::backend::room::MemoryRoom::default()),
        rates: None,
    })
    .await;
    (engine, dir)
}

#[tokio::test]
async fn an_order_that_did_not_become_durable_gives_its_units_back() {
    let (engine, _dir) = failing_engine(false).await;
    let sale = engine.create_sale(open_sale(3, 1)).await.unwrap();
    let err = engine
        .purchase(sale.sale.id, "a".into(), 1, Some("k".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Store(_)), "{err:?}");
    assert_eq!(sale.ledger.remaining(), 3, "the unit went back");
    assert_eq!(sale.ledger.held_by("a"), 0);
}

#[tokio::test]
async fn an_order_left_for_the_relay_keeps_its_units() {
    let (engine, _dir) = failing_engine(true).await;
    let sale = engine.create_sale(open_sale(3, 1)).await.unwrap();
    let err = engine
        .purchase(sale.sale.id, "a".into(), 1, None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::NotReady(_)), "{err:?}");
    assert_eq!(
        sale.ledger.remaining(),
        2,
        "the outbox still holds the order"
    );
}

#[tokio::test]
async fn refusals_are_counted_once_by_their_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let engine = engine(EngineParts {
        store: store.clone(),
        stock: Arc::new(EmbeddedStock),
        handoff: Arc::new(StoreHandoff::new(store)),
        notifier: Arc::new(events::NoEvents),
        buyers: super::buyer_stream::BuyerStreams::new(),
        room: Arc::new(crate::backend::room::MemoryRoom::default()),
        rates: None,
    })
    .await;
    let sale = engine.create_sale(open_sale(1, 1)).await.unwrap();
    let id = sale.sale.id;
    assert!(matches!(
        engine.purchase(id, "a".into(), 1, None).await.unwrap(),
        PurchaseOutcome::Accepted { .. }
    ));
    // The ledger refuses the second unit of `a` … the flag every later one.
    for user in ["a", "b", "c"] {
        let outcome = engine.purchase(id, user.into(), 1, None).await.unwrap();
        assert_eq!(
            outcome,
            PurchaseOutcome::Rejected(Rejection::SoldOut.into()),
            "{user}"
        );
    }
    assert_eq!(sale.counters.rejected(Rejection::SoldOut), 3);
    assert_eq!(sale.counters.rejected(Rejection::LimitReached), 0);
    assert_eq!(
        engine.try_reject_fast(id, "d", 1),
        Some(Rejection::SoldOut.into())
    );
    assert_eq!(sale.counters.rejected(Rejection::SoldOut), 4);
    assert_eq!(
        sale.missed.len(),
        4,
        "a, b, c and d were recorded as missed"
    );
}

fn embedded_parts(store: &Arc<dyn OrderStore>) -> EngineParts {
    EngineParts {
        store: store.clone(),
        stock: Arc::new(EmbeddedStock),
        handoff: Arc::new(StoreHandoff::new(store.clone())),
        notifier: Arc::new(events::NoEvents),
        buyers: super::buyer_stream::BuyerStreams::new(),
        room: Arc::new(crate::backend::room::MemoryRoom::default()),
        rates: None,
    }
}

fn upcoming_sale(stock: u64) -> NewSale {
    NewSale::parse(&serde_json::json!({
        "item": "opens early",
        "stock": stock,
        "starts_at": crate::domain::rfc3339(now_ms() + 3_600_000),
        "ends_at": crate::domain::rfc3339(now_ms() + 7_200_000),
    }))
    .unwrap()
}

fn refused(outcome: &PurchaseOutcome) -> Option<Rejection> {
    match outcome {
        PurchaseOutcome::Rejected(r) => Some(r.reason),
        PurchaseOutcome::Accepted { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_early_sells_at_once_and_closing_stops_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let engine = engine(embedded_parts(&store)).await;
    let rt = engine.create_sale(upcoming_sale(10)).await.unwrap();
    let id = rt.sale.id;
    let buy = |user: &'static str| {
        let engine = engine.clone();
        async move { engine.purchase(id, user.into(), 1, None).await.unwrap() }
    };
    assert_eq!(refused(&buy("early").await), Some(Rejection::NotStarted));

    let before = now_ms();
    let opened = engine.move_window(id, WindowMove::Open).await.unwrap();
    let schedule = opened.schedule();
    assert!(schedule.starts_at_ms >= before && schedule.starts_at_ms <= now_ms());
    assert_eq!(schedule.ends_at_ms, rt.sale.ends_at_ms, "the end stays");
    assert_eq!(refused(&buy("a").await), None, "sells at once");
    // Idempotent: opening an open sale changes nothing.
    let again = engine.move_window(id, WindowMove::Open).await.unwrap();
    assert_eq!(again.schedule(), schedule);
    assert_eq!(
        store.get_sale(id).await.unwrap().unwrap().schedule(),
        schedule,
        "the move is stored"
    );

    let closed = engine.move_window(id, WindowMove::Close).await.unwrap();
    let end = closed.schedule().ends_at_ms.unwrap();
    assert!(end <= now_ms());
    assert_eq!(closed.status(now_ms()), SaleStatus::Ended);
    assert_eq!(refused(&buy("b").await), Some(Rejection::Ended));
    // The fast lane's memory-only answer agrees.
    assert_eq!(
        engine.try_reject_fast(id, "c", 1).map(|r| r.reason),
        Some(Rejection::Ended)
    );
    // Closing again changes nothing; opening an ended sale is refused.
    let again = engine.move_window(id, WindowMove::Close).await.unwrap();
    assert_eq!(again.schedule().ends_at_ms, Some(end));
    assert!(matches!(
        engine.move_window(id, WindowMove::Open).await,
        Err(EngineError::Refused(Rejection::Ended))
    ));
    assert!(matches!(
        engine.move_window(id + 1, WindowMove::Open).await,
        Err(EngineError::NotFound)
    ));
    assert_eq!(rt.ledger.remaining(), 9, "one unit sold, inside the window");

    // A restart keeps the moved window.
    drop(engine);
    store.shutdown().await;
    let store = self::store(&dir);
    let engine = self::engine(embedded_parts(&store)).await;
    let back = engine.sale(id).unwrap();
    assert_eq!(back.schedule(), closed.schedule());
    assert_eq!(
        refused(&engine.purchase(id, "d".into(), 1, None).await.unwrap()),
        Some(Rejection::Ended)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_an_upcoming_sale_ends_it_without_ever_opening() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let engine = engine(embedded_parts(&store)).await;
    let rt = engine.create_sale(upcoming_sale(10)).await.unwrap();
    let closed = engine
        .move_window(rt.sale.id, WindowMove::Close)
        .await
        .unwrap();
    let s = closed.schedule();
    assert_eq!(Some(s.starts_at_ms), s.ends_at_ms, "an empty window");
    assert_eq!(closed.status(now_ms()), SaleStatus::Ended);
    let outcome = engine
        .purchase(rt.sale.id, "x".into(), 1, None)
        .await
        .unwrap();
    assert_eq!(refused(&outcome), Some(Rejection::Ended));
}
