//! The embedded order store: SQLite in WAL mode with `synchronous=FULL`.
//!
//! Group commit: one dedicated writer thread owns the write connection.
//! Callers send a command with a reply channel; the writer takes everything
//! queued (up to `max_batch`), applies it in one transaction, commits once
//! (one fsync), then answers every waiter. While one batch is being fsync'd
//! the next one queues up, so durability costs one fsync per batch, not per
//! order. `max_batch = 1` gives the one-commit-per-order baseline.
//!
//! Reads (order lookups, intent pages, start-up load) use separate
//! connections: WAL lets them run beside the writer.
//!
//! rusqlite rather than sqlx here: the writer is a single blocking thread by
//! design, and rusqlite's cached prepared statements avoid sqlx's per-query
//! hop through its own worker thread, which would cap the writer's rate.
//!
//! One process owns a data directory: the store holds an exclusive lock on
//! `flashsale.lock` ([`DirLock`]) from `open` to `shutdown`, since two
//! servers on one store would each sell the full stock from their own
//! ledger. `flashsale restore` takes the same lock; `flashsale backup` reads
//! beside a running server and needs none ([`backup`]).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::outbox::{self, AttemptRecord, Delivery, DeliveryFilter, DeliveryState, OutboxEvent};
use super::{Holding, Intent, OrderStore, Snapshot, StoreError, TransitionReport};
use crate::domain::order::Transition;
use crate::domain::{FrontDoor, Order, OrderStatus, Sale, Schedule};

pub mod backup;

/// File name of the store in its data directory (beside it SQLite keeps
/// `-wal` and `-shm`).
pub const DB_FILE: &str = "flashsale.db";

/// File name of the data directory's owner lock.
pub const LOCK_FILE: &str = "flashsale.lock";

/// The schema version this binary migrates to (`PRAGMA user_version`).
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Schema migrations, applied in order; `PRAGMA user_version` records progress.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE sales (
    sale_id INTEGER PRIMARY KEY,
    item TEXT NOT NULL,
    stock INTEGER NOT NULL,
    per_user_limit INTEGER NOT NULL,
    starts_at INTEGER NOT NULL,
    ends_at INTEGER,
    payment_window_secs INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    sale_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    status TEXT NOT NULL,
    idempotency_key TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX orders_pending_expiry ON orders(expires_at)
    WHERE status = 'pending_payment' AND expires_at IS NOT NULL;
CREATE UNIQUE INDEX orders_idempotency ON orders(user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE purchase_intents (
    sale_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (sale_id, user_id)
) WITHOUT ROWID;
"#,
    // The sale's front-door options (JSON; NULL = every option off).
    "ALTER TABLE sales ADD COLUMN front_door TEXT;",
    // The webhook outbox (see `backend::outbox`): one row per order event,
    // written in the order change's transaction.
    r#"
CREATE TABLE webhook_outbox (
    event_id TEXT PRIMARY KEY,
    order_id INTEGER NOT NULL,
    order_status TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX webhook_outbox_due ON webhook_outbox(next_attempt_at) WHERE state = 'pending';
"#,
    // The sale's stock buckets (a shared stock's split; 1 = one hash tag).
    "ALTER TABLE sales ADD COLUMN buckets INTEGER NOT NULL DEFAULT 1;",
];

const ORDER_COLUMNS: &str = "order_id, sale_id, user_id, quantity, status, idempotency_key, \
                             created_at, updated_at, expires_at";

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteSettings {
    /// Most commands applied in one transaction (1 = commit per order).
    pub max_batch: usize,
    /// Read connections beside the writer.
    pub readers: usize,
    /// Under load (the previous batch held more than one write), wait this
    /// long for more writes before committing: fewer, larger fsyncs when the
    /// CPU is the bottleneck. Zero commits as soon as the queue is empty.
    pub linger: std::time::Duration,
    /// Write a webhook outbox row with every order change (on when
    /// webhooks are configured; see [`super::outbox`]).
    pub outbox: bool,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            readers: 2,
            linger: std::time::Duration::ZERO,
            outbox: false,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Command {
    CreateSale(Sale, Reply<()>),
    CommitOrder(Box<Order>, Reply<()>),
    Transition {
        order_id: u64,
        user_id: String,
        transition: Transition,
        now_ms: i64,
        reply: Reply<Option<TransitionReport>>,
    },
    ExpireDue(i64, usize, Reply<Vec<Order>>),
    RecordIntents(Vec<Intent>, Reply<()>),
    ClaimWebhooks {
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
        reply: Reply<Vec<OutboxEvent>>,
    },
    RecordAttempt(Box<AttemptRecord>, Reply<bool>),
    MoveSchedule {
        sale_id: u64,
        from: Schedule,
        to: Schedule,
        reply: Reply<bool>,
    },
}

/// A reply computed inside the transaction, delivered once the commit's
/// outcome is known: on a failed commit every waiter hears the failure.
type Deliver = Box<dyn FnOnce(Option<&str>) + Send>;

fn deliver<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Deliver {
    Box::new(move |commit_error| {
        let result = match commit_error {
            Some(e) => Err(StoreError::Backend(e.to_owned())),
            None => result,
        };
        // The waiter may have gone (client hung up); the write still stands.
        let _ = reply.send(result);
    })
}

/// SQLite-backed [`OrderStore`] with a group-committing writer thread.
pub struct SqliteStore {
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<[Mutex<Connection>]>,
    next_reader: AtomicUsize,
    stop_checkpoints: Arc<AtomicBool>,
    checkpoints: Mutex<Option<JoinHandle<()>>>,
    /// Released by `shutdown`, once every write is on disk.
    lock: Mutex<Option<DirLock>>,
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is fsync'd at every commit, so a committed order survives
    // power loss, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// An exclusive lock on a data directory's [`LOCK_FILE`] (`flock` on Unix),
/// held for as long as the value lives. The kernel drops it when the
/// process dies, `kill -9` included, so a crash never leaves it stale.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist) without waiting.
    /// `Ok(None)` when another process — or another open store of this one —
    /// holds it.
    ///
    /// # Errors
    /// When the lock file cannot be created or locked for another reason.
    pub fn try_acquire(dir: &Path) -> std::io::Result<Option<Self>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Brings `conn` to [`SCHEMA_VERSION`], one transaction per migration.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/flashsale.db` and starts the writer.
    ///
    /// # Errors
    /// [`StoreError`] when the directory or database cannot be opened or
    /// migrated, or another process holds the directory's [`DirLock`].
    pub fn open(dir: &Path, settings: &SqliteSettings) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(e.to_string()))?;
        let lock = DirLock::try_acquire(dir)
            .map_err(|e| StoreError::Backend(format!("locking {LOCK_FILE}: {e}")))?
            .ok_or_else(|| {
                StoreError::Backend(format!(
                    "{} is in use by another flashsale process ({LOCK_FILE} is locked): \
                     one server per data directory",
                    dir.display()
                ))
            })?;
        let path = dir.join(DB_FILE);
        let mut conn = open_connection(&path)?;
        migrate(&mut conn)?;
        let readers: Vec<_> = (0..settings.readers.max(1))
            .map(|_| open_connection(&path).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        // Checkpoints copy the WAL into the database file and fsync it; run
        // them on their own thread so commits never wait behind one.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = open_connection(&path)?;
        let (tx, rx) = mpsc::channel(65_536);
        let max_batch = settings.max_batch.max(1);
        let linger = settings.linger;
        let outbox = settings.outbox;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let checkpoints = std::thread::Builder::new()
            .name("flashsale-ckpt".into())
            .spawn(move || checkpoint_loop(checkpointer, stop_flag))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let writer = std::thread::Builder::new()
            .name("flashsale-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch, linger, outbox))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: readers.into(),
            next_reader: AtomicUsize::new(0),
            stop_checkpoints: stop,
            checkpoints: Mutex::new(Some(checkpoints)),
            lock: Mutex::new(Some(lock)),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Command>, StoreError> {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let idx = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        tokio::task::spawn_blocking(move || {
            let conn = readers[idx].lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

/// Pages in the WAL before the checkpointer copies them back.
const CHECKPOINT_PAGES: i64 = 4096;

fn checkpoint_loop(conn: Connection, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        // PASSIVE never blocks the writer; it copies what it can.
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match result {
            Ok((wal, done)) if wal - done > CHECKPOINT_PAGES => {
                tracing::debug!(wal, done, "WAL checkpoint lagging")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
    // Final full checkpoint on a clean stop keeps the next start quick.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    max_batch: usize,
    linger: std::time::Duration,
    outbox: bool,
) {
    let mut batch = Vec::with_capacity(max_batch.min(4096));
    let mut last_size = 0;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        drain(&mut rx, &mut batch, max_batch);
        if !linger.is_zero() && last_size > 1 && batch.len() < max_batch {
            std::thread::sleep(linger);
            drain(&mut rx, &mut batch, max_batch);
        }
        last_size = batch.len();
        let size = batch.len();
        let delivers = apply_batch(&mut conn, &mut batch, outbox);
        metrics::histogram!("flashsale_store_batch_size").record(size as f64);
        match delivers {
            Ok(delivers) => delivers.into_iter().for_each(|d| d(None)),
            Err((e, delivers)) => {
                tracing::error!(error = %e, batch = size, "order store commit failed");
                delivers.into_iter().for_each(|d| d(Some(&e)));
            }
        }
    }
    tracing::debug!("order store writer stopped");
}

fn drain(rx: &mut mpsc::Receiver<Command>, batch: &mut Vec<Command>, max_batch: usize) {
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(cmd) => batch.push(cmd),
            Err(_) => break,
        }
    }
}

type BatchResult = Result<Vec<Deliver>, (String, Vec<Deliver>)>;

fn apply_batch(conn: &mut Connection, batch: &mut Vec<Command>, outbox: bool) -> BatchResult {
    let mut delivers: Vec<Deliver> = Vec::with_capacity(batch.len());
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            for cmd in batch.drain(..) {
                delivers.push(fail(cmd));
            }
            return Err((e.to_string(), delivers));
        }
    };
    let mut failed = None;
    for cmd in batch.drain(..) {
        if failed.is_some() {
            delivers.push(fail(cmd));
            continue;
        }
        let (deliver, error) = apply(&tx, cmd, outbox);
        delivers.push(deliver);
        failed = error;
    }
    // A failed statement may have made SQLite roll the transaction back on
    // its own (disk full, I/O error); committing the rest would split the
    // batch between disk and memory. All or nothing: roll back, fail all.
    if let Some(e) = failed {
        drop(tx);
        return Err((e, delivers));
    }
    match tx.commit() {
        Ok(()) => Ok(delivers),
        Err(e) => Err((e.to_string(), delivers)),
    }
}

fn fail(cmd: Command) -> Deliver {
    match cmd {
        Command::CreateSale(_, r) | Command::CommitOrder(_, r) | Command::RecordIntents(_, r) => {
            deliver(r, Ok(()))
        }
        Command::Transition { reply, .. } => deliver(reply, Ok(None)),
        Command::ExpireDue(_, _, r) => deliver(r, Ok(Vec::new())),
        Command::ClaimWebhooks { reply, .. } => deliver(reply, Ok(Vec::new())),
        Command::RecordAttempt(_, r) | Command::MoveSchedule { reply: r, .. } => {
            deliver(r, Ok(false))
        }
    }
}

/// Applies one command; returns its reply and, if a statement failed, the
/// error that must abort the whole batch.
fn apply(tx: &rusqlite::Transaction<'_>, cmd: Command, outbox: bool) -> (Deliver, Option<String>) {
    fn done<T: Send + 'static>(
        reply: Reply<T>,
        result: Result<T, StoreError>,
    ) -> (Deliver, Option<String>) {
        let error = match &result {
            Err(e @ StoreError::Backend(_)) => Some(e.to_string()),
            _ => None,
        };
        (deliver(reply, result), error)
    }
    match cmd {
        Command::CreateSale(sale, r) => done(r, insert_sale(tx, &sale)),
        Command::CommitOrder(order, r) => done(r, insert_order(tx, &order, outbox)),
        Command::Transition {
            order_id,
            user_id,
            transition,
            now_ms,
            reply,
        } => done(
            reply,
            transition_order(tx, order_id, &user_id, transition, now_ms, outbox),
        ),
        Command::ExpireDue(now_ms, limit, r) => done(r, expire_due(tx, now_ms, limit, outbox)),
        Command::RecordIntents(intents, r) => done(r, insert_intents(tx, &intents)),
        Command::ClaimWebhooks {
            now_ms,
            lease_ms,
            limit,
            reply,
        } => done(reply, claim_webhooks(tx, now_ms, lease_ms, limit)),
        Command::RecordAttempt(record, r) => done(r, record_attempt(tx, &record)),
        Command::MoveSchedule {
            sale_id,
            from,
            to,
            reply,
        } => done(reply, move_schedule(tx, sale_id, from, to)),
    }
}

/// The window moves only while the row still holds `from` (`IS`: NULL-safe).
fn move_schedule(
    tx: &Connection,
    sale_id: u64,
    from: Schedule,
    to: Schedule,
) -> Result<bool, StoreError> {
    let changed = tx
        .prepare_cached(
            "UPDATE sales SET starts_at = ?1, ends_at = ?2 \
             WHERE sale_id = ?3 AND starts_at = ?4 AND ends_at IS ?5",
        )?
        .execute(params![
            to.starts_at_ms,
            to.ends_at_ms,
            sale_id as i64,
            from.starts_at_ms,
            from.ends_at_ms
        ])?;
    Ok(changed == 1)
}

fn insert_sale(tx: &Connection, sale: &Sale) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO sales (sale_id, item, stock, per_user_limit, starts_at, ends_at, \
         payment_window_secs, created_at, front_door, buckets) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        sale.id as i64,
        sale.item,
        sale.stock as i64,
        sale.per_user_limit,
        sale.starts_at_ms,
        sale.ends_at_ms,
        sale.payment_window_secs.map(|w| w as i64),
        sale.created_at_ms,
        sale.front_door.to_stored(),
        sale.buckets
    ])?;
    Ok(())
}

fn insert_order(tx: &Connection, o: &Order, outbox: bool) -> Result<(), StoreError> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO orders (order_id, sale_id, user_id, quantity, status, idempotency_key, \
         created_at, updated_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (order_id) DO NOTHING",
        )?
        .execute(params![
            o.id as i64,
            o.sale_id as i64,
            o.user_id,
            o.quantity,
            o.status.as_str(),
            o.idempotency_key,
            o.created_at_ms,
            o.updated_at_ms,
            o.expires_at_ms
        ])?;
    if outbox && inserted == 1 {
        insert_event(tx, o.id, o.status, o.created_at_ms)?;
    }
    Ok(())
}

/// The outbox row of `order_id` reaching `status` at `at_ms`, in the
/// caller's transaction; a row already there (the same event) stays.
fn insert_event(
    tx: &Connection,
    order_id: u64,
    status: OrderStatus,
    at_ms: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO webhook_outbox (event_id, order_id, order_status, occurred_at, \
         next_attempt_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4, ?4) \
         ON CONFLICT (event_id) DO NOTHING",
    )?
    .execute(params![
        outbox::event_id(order_id, status),
        order_id as i64,
        status.as_str(),
        at_ms
    ])?;
    Ok(())
}

fn claim_webhooks(
    tx: &Connection,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<OutboxEvent>, StoreError> {
    // The single writer thread runs this inside its transaction: nobody
    // else can claim between the read and the update.
    let mut due: Vec<OutboxEvent> = tx
        .prepare_cached(
            "SELECT w.event_id, w.order_status, w.occurred_at, w.attempts, o.order_id, \
             o.sale_id, o.user_id, o.quantity, o.idempotency_key, o.created_at, o.expires_at \
             FROM webhook_outbox w JOIN orders o ON o.order_id = w.order_id \
             WHERE w.state = 'pending' AND w.next_attempt_at <= ?1 \
             ORDER BY w.next_attempt_at LIMIT ?2",
        )?
        .query_map(params![now_ms, limit as i64], |r| {
            let status: String = r.get(1)?;
            let occurred_at_ms: i64 = r.get(2)?;
            Ok(OutboxEvent {
                event_id: r.get(0)?,
                occurred_at_ms,
                attempt: r.get::<_, u32>(3)? + 1,
                order: Order {
                    id: r.get::<_, i64>(4)? as u64,
                    sale_id: r.get::<_, i64>(5)? as u64,
                    user_id: r.get(6)?,
                    quantity: r.get(7)?,
                    status: OrderStatus::parse(&status).unwrap_or(OrderStatus::PendingPayment),
                    idempotency_key: r.get(8)?,
                    created_at_ms: r.get(9)?,
                    updated_at_ms: occurred_at_ms,
                    expires_at_ms: r.get(10)?,
                },
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut lease = tx.prepare_cached(
        "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?2, \
         updated_at = ?3 WHERE event_id = ?1",
    )?;
    for event in &mut due {
        lease.execute(params![event.event_id, now_ms + lease_ms, now_ms])?;
    }
    Ok(due)
}

fn record_attempt(tx: &Connection, r: &AttemptRecord) -> Result<bool, StoreError> {
    let changed = tx
        .prepare_cached(
            "UPDATE webhook_outbox SET state = ?3, last_status = ?4, last_error = ?5, \
             next_attempt_at = ?6, updated_at = ?7 \
             WHERE event_id = ?1 AND attempts = ?2 AND state = 'pending'",
        )?
        .execute(params![
            r.event_id,
            r.attempt,
            r.state.as_str(),
            r.status,
            outbox::bounded_error(r.error.as_deref()),
            if r.state == DeliveryState::Pending {
                r.next_attempt_at_ms
            } else {
                r.now_ms
            },
            r.now_ms
        ])?;
    Ok(changed == 1)
}

fn list_webhooks(conn: &Connection, f: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT event_id, order_id, order_status, occurred_at, state, attempts, \
             last_status, last_error, next_attempt_at, updated_at FROM webhook_outbox \
             WHERE (?1 = '' OR state = ?1) AND event_id > ?2 ORDER BY event_id LIMIT ?3",
        )?
        .query_map(
            params![
                f.state.map(DeliveryState::as_str).unwrap_or(""),
                f.after.as_deref().unwrap_or(""),
                f.limit as i64
            ],
            |r| {
                let status: String = r.get(2)?;
                let state: String = r.get(4)?;
                Ok(Delivery {
                    event_id: r.get(0)?,
                    order_id: r.get::<_, i64>(1)? as u64,
                    order_status: OrderStatus::parse(&status)
                        .unwrap_or(OrderStatus::PendingPayment),
                    occurred_at_ms: r.get(3)?,
                    state: DeliveryState::parse(&state).unwrap_or(DeliveryState::Pending),
                    attempts: r.get(5)?,
                    last_status: r.get(6)?,
                    last_error: r.get(7)?,
                    next_attempt_at_ms: r.get(8)?,
                    updated_at_ms: r.get(9)?,
                })
            },
        )?
        .collect::<Result<_, _>>()?)
}

fn row_to_order(row: &rusqlite::Row<'_>) -> rusqlite::Result<Order> {
    let status: String = row.get(4)?;
    Ok(Order {
        id: row.get::<_, i64>(0)? as u64,
        sale_id: row.get::<_, i64>(1)? as u64,
        user_id: row.get(2)?,
        quantity: row.get(3)?,
        status: OrderStatus::parse(&status).unwrap_or(OrderStatus::PendingPayment),
        idempotency_key: row.get(5)?,
        created_at_ms: row.get(6)?,
        updated_at_ms: row.get(7)?,
        expires_at_ms: row.get(8)?,
    })
}

fn select_order(conn: &Connection, order_id: u64) -> Result<Option<Order>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ?1"
        ))?
        .query_row([order_id as i64], row_to_order)
        .optional()?)
}

fn set_status(
    tx: &Connection,
    order_id: u64,
    status: OrderStatus,
    now_ms: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE orders SET status = ?2, updated_at = ?3 WHERE order_id = ?1")?
        .execute(params![order_id as i64, status.as_str(), now_ms])?;
    Ok(())
}

// Runs on the single writer thread inside its transaction, so the read and
// the update below cannot interleave with another writer: one winner always.
fn transition_order(
    tx: &Connection,
    order_id: u64,
    user_id: &str,
    transition: Transition,
    now_ms: i64,
    outbox: bool,
) -> Result<Option<TransitionReport>, StoreError> {
    let Some(mut order) = select_order(tx, order_id)? else {
        return Ok(None);
    };
    if order.user_id != user_id {
        return Ok(None);
    }
    if order.status != OrderStatus::PendingPayment {
        return Ok(Some(TransitionReport {
            order,
            applied: false,
            stock_returned: false,
        }));
    }
    let overdue = order.expires_at_ms.is_some_and(|d| d <= now_ms);
    let (status, applied) = match transition {
        Transition::Pay if overdue => (OrderStatus::Expired, false),
        Transition::Pay => (OrderStatus::Paid, true),
        Transition::Cancel => (OrderStatus::Cancelled, true),
    };
    set_status(tx, order_id, status, now_ms)?;
    if outbox {
        insert_event(tx, order_id, status, now_ms)?;
    }
    order.status = status;
    order.updated_at_ms = now_ms;
    Ok(Some(TransitionReport {
        order,
        applied,
        stock_returned: !status.holds_stock(),
    }))
}

fn expire_due(
    tx: &Connection,
    now_ms: i64,
    limit: usize,
    outbox: bool,
) -> Result<Vec<Order>, StoreError> {
    let mut due: Vec<Order> = tx
        .prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE status = 'pending_payment' \
             AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2"
        ))?
        .query_map(params![now_ms, limit as i64], row_to_order)?
        .collect::<Result<_, _>>()?;
    for order in &mut due {
        set_status(tx, order.id, OrderStatus::Expired, now_ms)?;
        if outbox {
            insert_event(tx, order.id, OrderStatus::Expired, now_ms)?;
        }
        order.status = OrderStatus::Expired;
        order.updated_at_ms = now_ms;
    }
    Ok(due)
}

fn insert_intents(tx: &Connection, intents: &[Intent]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO purchase_intents (sale_id, user_id, quantity, created_at) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for i in intents {
        stmt.execute(params![
            i.sale_id as i64,
            i.user_id,
            i.quantity,
            i.created_at_ms
        ])?;
    }
    Ok(())
}

const SALE_COLUMNS: &str = "SELECT sale_id, item, stock, per_user_limit, starts_at, ends_at, \
     payment_window_secs, created_at, front_door, buckets FROM sales";

fn sale_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Sale> {
    Ok(Sale {
        id: r.get::<_, i64>(0)? as u64,
        item: r.get(1)?,
        stock: r.get::<_, i64>(2)? as u64,
        per_user_limit: r.get(3)?,
        starts_at_ms: r.get(4)?,
        ends_at_ms: r.get(5)?,
        payment_window_secs: r.get::<_, Option<i64>>(6)?.map(|w| w as u64),
        created_at_ms: r.get(7)?,
        front_door: FrontDoor::from_stored(r.get::<_, Option<String>>(8)?.as_deref()),
        buckets: crate::backend::sql::to_buckets(r.get(9)?),
    })
}

fn load_snapshot(conn: &Connection) -> Result<Snapshot, StoreError> {
    let sales = conn
        .prepare(&format!("{SALE_COLUMNS} ORDER BY sale_id"))?
        .query_map([], sale_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let holdings = conn
        .prepare(
            "SELECT sale_id, user_id, SUM(quantity) FROM orders \
             WHERE status IN ('pending_payment', 'paid') GROUP BY sale_id, user_id",
        )?
        .query_map([], |r| {
            Ok(Holding {
                sale_id: r.get::<_, i64>(0)? as u64,
                user_id: r.get(1)?,
                units: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let persisted = conn
        .prepare("SELECT sale_id, COUNT(*) FROM orders GROUP BY sale_id")?
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let keyed_orders = conn
        .prepare(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE idempotency_key IS NOT NULL"
        ))?
        .query_map([], row_to_order)?
        .collect::<Result<Vec<_>, _>>()?;
    let max_id: i64 = conn.query_row(
        "SELECT MAX(COALESCE((SELECT MAX(order_id) FROM orders), 0), \
                    COALESCE((SELECT MAX(sale_id) FROM sales), 0))",
        [],
        |r| r.get(0),
    )?;
    Ok(Snapshot {
        sales,
        holdings,
        persisted,
        keyed_orders,
        max_id: max_id as u64,
    })
}

#[async_trait]
impl OrderStore for SqliteStore {
    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        let sale = sale.clone();
        self.call(|r| Command::CreateSale(sale, r)).await
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.read(load_snapshot).await
    }

    async fn move_schedule(
        &self,
        sale_id: u64,
        from: Schedule,
        to: Schedule,
    ) -> Result<bool, StoreError> {
        self.call(|reply| Command::MoveSchedule {
            sale_id,
            from,
            to,
            reply,
        })
        .await
    }

    async fn commit_order(&self, order: Order) -> Result<(), StoreError> {
        self.call(|r| Command::CommitOrder(Box::new(order), r))
            .await
    }

    async fn get_order(&self, order_id: u64) -> Result<Option<Order>, StoreError> {
        self.read(move |c| select_order(c, order_id)).await
    }

    /// One indexed read: an unknown sale id costs a primary-key lookup, not
    /// a snapshot.
    async fn get_sale(&self, sale_id: u64) -> Result<Option<Sale>, StoreError> {
        let Ok(id) = i64::try_from(sale_id) else {
            return Ok(None);
        };
        self.read(move |c| {
            Ok(
                c.prepare_cached(&format!("{SALE_COLUMNS} WHERE sale_id = ?1"))?
                    .query_row([id], sale_row)
                    .optional()?,
            )
        })
        .await
    }

    async fn transition(
        &self,
        order_id: u64,
        user_id: &str,
        transition: Transition,
        now_ms: i64,
    ) -> Result<Option<TransitionReport>, StoreError> {
        let user_id = user_id.to_owned();
        self.call(|reply| Command::Transition {
            order_id,
            user_id,
            transition,
            now_ms,
            reply,
        })
        .await
    }

    async fn expire_due(&self, now_ms: i64, limit: usize) -> Result<Vec<Order>, StoreError> {
        self.call(|r| Command::ExpireDue(now_ms, limit, r)).await
    }

    async fn record_intents(&self, intents: Vec<Intent>) -> Result<(), StoreError> {
        self.call(|r| Command::RecordIntents(intents, r)).await
    }

    async fn list_intents(
        &self,
        sale_id: u64,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Vec<Intent>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT sale_id, user_id, quantity, created_at FROM purchase_intents \
                 WHERE sale_id = ?1 AND user_id > ?2 ORDER BY user_id LIMIT ?3",
            )?
            .query_map(
                params![sale_id as i64, cursor.unwrap_or_default(), limit as i64],
                |r| {
                    Ok(Intent {
                        sale_id: r.get::<_, i64>(0)? as u64,
                        user_id: r.get(1)?,
                        quantity: r.get(2)?,
                        created_at_ms: r.get(3)?,
                    })
                },
            )?
            .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn claim_webhooks(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.call(|reply| Command::ClaimWebhooks {
            now_ms,
            lease_ms,
            limit,
            reply,
        })
        .await
    }

    async fn record_webhook_attempt(&self, record: AttemptRecord) -> Result<bool, StoreError> {
        self.call(|r| Command::RecordAttempt(Box::new(record), r))
            .await
    }

    async fn list_webhooks(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        self.read(move |c| list_webhooks(c, &filter)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.sender()?;
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn shutdown(&self) {
        // Dropping the last sender lets the writer drain what is queued and
        // stop; joining it means every queued write has been committed.
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        self.stop_checkpoints.store(true, Ordering::Release);
        let handle = self
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // Everything is on disk and checkpointed: the directory is free for
        // the next owner (a restart in this process, a restore).
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}
