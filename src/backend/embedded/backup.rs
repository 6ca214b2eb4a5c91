//! `flashsale backup` and `flashsale restore` of the embedded store.
//!
//! Everything the embedded default keeps lives in `flashsale.db` (and its
//! `-wal` beside it): sales, orders, intents, the webhook outbox. The stock
//! ledger, holdings, idempotency keys and the id counter are rebuilt from
//! it at start, and `flashsale.lock` only says who owns the directory, so
//! one consistent copy of the database is the whole state.
//!
//! Guarantees callers rely on:
//! - [`backup`] runs beside a serving process (online) and writes a
//!   transaction-consistent snapshot: every order committed before it began
//!   is in it, and each order is there with everything its transaction
//!   wrote (its outbox event too) or not at all. The file appears under its
//!   final name only complete, checked (`PRAGMA integrity_check`) and
//!   fsync'd.
//! - [`restore`] puts a backup in place only after checking it (a SQLite
//!   file, intact, a flashsale store, a schema this binary knows), never
//!   into a directory a server holds, and replaces a store only when asked
//!   (`force`). An older schema is migrated before the file is put in
//!   place; a newer one is refused.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};

use super::{migrate, DirLock, DB_FILE, LOCK_FILE, SCHEMA_VERSION};

/// Name of a restore's copy in the data directory until it is renamed to
/// [`DB_FILE`].
pub const RESTORE_TMP: &str = "flashsale.db.restoring";

/// What a backup or a restore did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// The backup file (written or read).
    pub file: PathBuf,
    /// The data directory (read or restored into).
    pub data_dir: PathBuf,
    /// Sales in the backup.
    pub sales: u64,
    /// Orders in the backup, every status.
    pub orders: u64,
    /// Size of the backup file (backup) or of the restored store (restore).
    pub bytes: u64,
    /// `PRAGMA user_version` of the backup.
    pub schema_version: usize,
    /// The schema a restore migrated an older backup to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrated_to: Option<usize>,
    /// Wall time of the whole command.
    pub duration_ms: u64,
}

/// Why a backup or restore did nothing. Every variant but [`Self::Io`] and
/// [`Self::Sqlite`] and [`Self::Migration`] is the caller's to fix
/// ([`Self::is_refusal`]); nothing
/// was written in any case (a temporary file is removed).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The data directory holds no store to back up.
    #[error("no store to back up: {0} does not exist")]
    NoStore(PathBuf),
    /// The backup file to restore does not exist.
    #[error("{0} does not exist")]
    NotFound(PathBuf),
    /// The file is not a SQLite database at all.
    #[error("{0} is not a SQLite database")]
    NotSqlite(PathBuf),
    /// A SQLite database that fails its integrity check.
    #[error("{path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// SQLite's first complaints.
        detail: String,
    },
    /// A SQLite database, but not one this service wrote.
    #[error("{0} is not a flashsale store (no schema version, or no orders and sales tables)")]
    NotAStore(PathBuf),
    /// A store from a newer flashsale, whose schema this binary cannot read.
    #[error(
        "{path} has schema version {found}, newer than this binary's {SCHEMA_VERSION}: \
         restore it with the flashsale that wrote it, or a newer one"
    )]
    SchemaTooNew {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: usize,
    },
    /// Restoring into a directory that already holds something.
    #[error(
        "{dir} is not empty (it holds {entry}): restore into an empty directory, or pass \
         --force to replace its store"
    )]
    NotEmpty {
        /// The data directory.
        dir: PathBuf,
        /// The first entry found.
        entry: String,
    },
    /// A server (or another restore) holds the data directory.
    #[error("{0} is in use by a running flashsale ({LOCK_FILE} is locked): stop it first")]
    InUse(PathBuf),
    /// `--to` names the live store's own files.
    #[error("{0} is the store itself: back up to a file outside the store's files")]
    OntoStore(PathBuf),
    /// Migrating an older backup to this binary's schema failed.
    #[error("migrating {path} to schema {SCHEMA_VERSION}: {source}")]
    Migration {
        /// The backup.
        path: PathBuf,
        /// The cause.
        source: crate::backend::StoreError,
    },
    /// A file-system step failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// SQLite failed for another reason than the file's content.
    #[error("{context}: {source}")]
    Sqlite {
        /// What was being done.
        context: String,
        /// The cause.
        source: rusqlite::Error,
    },
}

impl BackupError {
    /// A stable, machine-readable code (the `code` of `--json` errors).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoStore(_) => "no_store",
            Self::NotFound(_) => "not_found",
            Self::NotSqlite(_) => "not_sqlite",
            Self::Corrupt { .. } => "corrupt",
            Self::NotAStore(_) => "not_a_store",
            Self::SchemaTooNew { .. } => "schema_too_new",
            Self::NotEmpty { .. } => "data_dir_not_empty",
            Self::InUse(_) => "store_in_use",
            Self::OntoStore(_) => "onto_store",
            Self::Migration { .. } => "migration_failed",
            Self::Io { .. } => "io_error",
            Self::Sqlite { .. } => "sqlite_error",
        }
    }

    /// True when the input was refused (a bad file, a busy or non-empty
    /// directory) rather than a step failing: the 4xx of a command line.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Self::Io { .. } | Self::Sqlite { .. } | Self::Migration { .. }
        )
    }
}

/// Turns SQLite errors about a file into what they say about it: not a
/// database, or a corrupt one.
trait OnFile<T> {
    fn on(self, path: &Path, context: &str) -> Result<T, BackupError>;
}

impl<T> OnFile<T> for rusqlite::Result<T> {
    fn on(self, path: &Path, context: &str) -> Result<T, BackupError> {
        self.map_err(|source| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => BackupError::NotSqlite(path.to_owned()),
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => BackupError::Corrupt {
                path: path.to_owned(),
                detail: source.to_string(),
            },
            _ => BackupError::Sqlite {
                context: format!("{context} ({})", path.display()),
                source,
            },
        })
    }
}

fn io<T>(result: std::io::Result<T>, context: impl FnOnce() -> String) -> Result<T, BackupError> {
    result.map_err(|source| BackupError::Io {
        context: context(),
        source,
    })
}

/// A file removed on drop unless [`Self::keep`] was called: no
/// half-written copy outlives a failed command.
struct TempFile(Option<PathBuf>);

impl TempFile {
    /// Claims `path`, removing what a failed earlier run left there.
    fn claim(path: PathBuf) -> Result<Self, BackupError> {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return io(Err(e), || format!("removing {}", path.display())),
        }
        Ok(Self(Some(path)))
    }

    fn path(&self) -> &Path {
        self.0.as_deref().expect("a claimed temporary file")
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn open_read_only(path: &Path) -> Result<Connection, BackupError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .on(path, "opening")?;
    // A checkpoint of the live store may hold a lock for a moment.
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .on(path, "setting the busy timeout")?;
    Ok(conn)
}

/// Copies the database `conn` reads into the new file `to`.
///
/// `VACUUM INTO` rather than the online backup API: it reads the whole
/// database in one read transaction, so the copy is one consistent snapshot
/// by construction and, in WAL mode, never blocks the writer or waits for
/// it. The backup API copies page ranges in steps and restarts whenever
/// another process writes between two steps — under a flood, over and over
/// (unless run as one step, which is then the same single read
/// transaction). `VACUUM INTO` also leaves no free pages in the copy, needs
/// no extra rusqlite feature, and reads a WAL beside the source as any
/// reader does.
fn copy_into(conn: &Connection, from: &Path, to: &Path) -> Result<(), BackupError> {
    let target = to.to_str().ok_or_else(|| BackupError::Io {
        context: format!("{} is not valid UTF-8", to.display()),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    conn.execute("VACUUM INTO ?1", [target])
        .on(from, "copying the database")?;
    Ok(())
}

/// `PRAGMA integrity_check` (up to 5 complaints), `Corrupt` unless `ok`.
fn check_integrity(conn: &Connection, path: &Path) -> Result<(), BackupError> {
    let found: Vec<String> = conn
        .prepare("PRAGMA integrity_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .on(path, "checking integrity")?;
    if found == ["ok"] {
        Ok(())
    } else {
        Err(BackupError::Corrupt {
            path: path.to_owned(),
            detail: found.join("; "),
        })
    }
}

/// The schema version of a flashsale store, refusing anything else.
fn store_version(conn: &Connection, path: &Path) -> Result<usize, BackupError> {
    let version: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .on(path, "reading the schema version")?;
    let tables: u64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' \
             AND name IN ('sales', 'orders')",
            [],
            |r| r.get(0),
        )
        .on(path, "reading the schema")?;
    if version == 0 || tables != 2 {
        return Err(BackupError::NotAStore(path.to_owned()));
    }
    Ok(version)
}

fn count(conn: &Connection, path: &Path, table: &str) -> Result<u64, BackupError> {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .on(path, "counting rows")
}

fn sync_file(path: &Path) -> Result<(), BackupError> {
    io(std::fs::File::open(path).and_then(|f| f.sync_all()), || {
        format!("syncing {}", path.display())
    })
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    io(std::fs::File::open(dir).and_then(|f| f.sync_all()), || {
        format!("syncing the directory {}", dir.display())
    })
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// True when `to` would land on the store's database or its `-wal`/`-shm`.
fn is_store_file(data_dir: &Path, to: &Path) -> bool {
    let (Ok(dir), Ok(parent)) = (data_dir.canonicalize(), parent_of(to).canonicalize()) else {
        return false;
    };
    let name = to.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    dir == parent && [DB_FILE, "flashsale.db-wal", "flashsale.db-shm"].contains(&name)
}

/// Writes a consistent copy of the store in `data_dir` to `to`, online:
/// a server may be serving on `data_dir` meanwhile.
///
/// The copy is written to a temporary file beside `to`, set to the
/// rollback journal (one self-contained file), checked with
/// `PRAGMA integrity_check`, made readable by its owner only, fsync'd and
/// renamed to `to` (replacing an older backup only once the new one is
/// complete); the directory is fsync'd last.
///
/// # Errors
/// [`BackupError`] when there is no store, `to` is one of the store's own
/// files, the store is not one, or a step fails.
pub fn backup(data_dir: &Path, to: &Path) -> Result<Summary, BackupError> {
    let start = Instant::now();
    let db = data_dir.join(DB_FILE);
    if !db.is_file() {
        return Err(BackupError::NoStore(db));
    }
    if is_store_file(data_dir, to) {
        return Err(BackupError::OntoStore(to.to_owned()));
    }
    let name = to.file_name().ok_or_else(|| BackupError::Io {
        context: format!("{} names no file", to.display()),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    let dir = parent_of(to);
    let tmp = TempFile::claim(dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))?;
    {
        let source = open_read_only(&db)?;
        store_version(&source, &db)?;
        copy_into(&source, &db, tmp.path())?;
    }
    let (sales, orders, schema_version) = {
        let copy = Connection::open(tmp.path()).on(tmp.path(), "opening the copy")?;
        // The copy keeps the source's WAL flag; a rollback-journal file is
        // complete on its own, whoever opens it, read-only or not.
        copy.pragma_update(None, "journal_mode", "DELETE")
            .on(tmp.path(), "leaving WAL mode")?;
        check_integrity(&copy, tmp.path())?;
        (
            count(&copy, tmp.path(), "sales")?,
            count(&copy, tmp.path(), "orders")?,
            store_version(&copy, tmp.path())?,
        )
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // Orders name buyers: a backup is for its owner's eyes.
        io(
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600)),
            || format!("restricting {}", tmp.path().display()),
        )?;
    }
    sync_file(tmp.path())?;
    io(std::fs::rename(tmp.path(), to), || {
        format!("renaming the copy to {}", to.display())
    })?;
    tmp.keep();
    sync_dir(dir)?;
    let bytes = io(std::fs::metadata(to), || {
        format!("reading {}", to.display())
    })?
    .len();
    Ok(Summary {
        file: to.to_owned(),
        data_dir: data_dir.to_owned(),
        sales,
        orders,
        bytes,
        schema_version,
        migrated_to: None,
        duration_ms: elapsed_ms(start),
    })
}

/// Entries of `dir` that make it "not empty" for a restore: anything but
/// the lock file, a restore's leftover copy and a file system's
/// `lost+found` (a fresh volume has one).
fn first_entry(dir: &Path) -> Result<Option<String>, BackupError> {
    let entries = io(std::fs::read_dir(dir), || {
        format!("listing {}", dir.display())
    })?;
    for entry in entries {
        let entry = io(entry, || format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if ![LOCK_FILE, RESTORE_TMP, "lost+found"].contains(&name.as_str()) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Puts the backup `from` in place as the store of `data_dir` (created if
/// missing), with no server running on it.
///
/// The backup is checked first (a SQLite file, `PRAGMA integrity_check`,
/// a flashsale schema no newer than this binary's), then, holding the
/// directory's lock (so no server starts meanwhile), copied into the
/// directory, migrated to this binary's schema, checked again, fsync'd and
/// renamed to `flashsale.db`. With `force` a store already there is
/// replaced: its `-wal` and `-shm` are removed first, since SQLite would
/// otherwise replay the old log onto the restored file.
///
/// # Errors
/// [`BackupError`]: the refusals above, a directory that is not empty
/// without `force`, one a server holds, or a failed step.
pub fn restore(from: &Path, data_dir: &Path, force: bool) -> Result<Summary, BackupError> {
    let start = Instant::now();
    if !from.is_file() {
        return Err(BackupError::NotFound(from.to_owned()));
    }
    let source = open_read_only(from)?;
    let schema_version = store_version(&source, from)?;
    check_integrity(&source, from)?;
    if schema_version > SCHEMA_VERSION {
        return Err(BackupError::SchemaTooNew {
            path: from.to_owned(),
            found: schema_version,
        });
    }

    io(std::fs::create_dir_all(data_dir), || {
        format!("creating {}", data_dir.display())
    })?;
    let lock = io(DirLock::try_acquire(data_dir), || {
        format!("locking {}", data_dir.join(LOCK_FILE).display())
    })?
    .ok_or_else(|| BackupError::InUse(data_dir.to_owned()))?;
    if let Some(entry) = first_entry(data_dir)? {
        if !force {
            return Err(BackupError::NotEmpty {
                dir: data_dir.to_owned(),
                entry,
            });
        }
    }

    let tmp = TempFile::claim(data_dir.join(RESTORE_TMP))?;
    copy_into(&source, from, tmp.path())?;
    drop(source);
    let (sales, orders) = {
        let mut copy = Connection::open(tmp.path()).on(tmp.path(), "opening the copy")?;
        migrate(&mut copy).map_err(|source| BackupError::Migration {
            path: from.to_owned(),
            source,
        })?;
        check_integrity(&copy, tmp.path())?;
        (
            count(&copy, tmp.path(), "sales")?,
            count(&copy, tmp.path(), "orders")?,
        )
    };
    sync_file(tmp.path())?;
    for stale in ["flashsale.db-wal", "flashsale.db-shm"] {
        let path = data_dir.join(stale);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return io(Err(e), || format!("removing {}", path.display())),
        }
    }
    let db = data_dir.join(DB_FILE);
    io(std::fs::rename(tmp.path(), &db), || {
        format!("renaming the copy to {}", db.display())
    })?;
    tmp.keep();
    sync_dir(data_dir)?;
    drop(lock);
    let bytes = io(std::fs::metadata(&db), || {
        format!("reading {}", db.display())
    })?
    .len();
    Ok(Summary {
        file: from.to_owned(),
        data_dir: data_dir.to_owned(),
        sales,
        orders,
        bytes,
        schema_version,
        migrated_to: (schema_version < SCHEMA_VERSION).then_some(SCHEMA_VERSION),
        duration_ms: elapsed_ms(start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::{SqliteSettings, SqliteStore};
    use crate::backend::OrderStore as _;
    use crate::domain::order::Transition;
    use crate::domain::{Order, OrderStatus, Sale};

    const T: i64 = 1_700_000_000_000;

    fn sale(id: u64) -> Sale {
        Sale {
            id,
            item: format!("item {id}"),
            stock: 100,
            per_user_limit: 2,
            starts_at_ms: T - 60_000,
            ends_at_ms: None,
            payment_window_secs: Some(900),
            created_at_ms: T - 120_000,
            front_door: Default::default(),
            buckets: 1,
        }
    }

    fn order(id: u64, sale_id: u64, user: &str, quantity: u32) -> Order {
        Order {
            id,
            sale_id,
            user_id: user.to_owned(),
            quantity,
            status: OrderStatus::PendingPayment,
            idempotency_key: Some(format!("key-{id}")),
            created_at_ms: T,
            updated_at_ms: T,
            expires_at_ms: Some(T + 900_000),
        }
    }

    fn open(dir: &Path) -> SqliteStore {
        let settings = SqliteSettings {
            outbox: true,
            ..SqliteSettings::default()
        };
        SqliteStore::open(dir, &settings).unwrap()
    }

    /// A store in a fresh directory with one sale and three orders (one
    /// paid), left open.
    async fn filled() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.create_sale(&sale(1)).await.unwrap();
        for (id, user) in [(10, "alice"), (11, "bob"), (12, "carol")] {
            store.commit_order(order(id, 1, user, 2)).await.unwrap();
        }
        store
            .transition(11, "bob", Transition::Pay, T + 1)
            .await
            .unwrap()
            .unwrap();
        (dir, store)
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_backup_of_an_open_store_restores_every_order() {
        let (dir, store) = filled().await;
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("b.db");
        let summary = backup(dir.path(), &file).unwrap();
        assert_eq!((summary.sales, summary.orders), (1, 3));
        assert_eq!(summary.schema_version, SCHEMA_VERSION);
        assert_eq!(summary.bytes, std::fs::metadata(&file).unwrap().len());
        // Only the backup itself: the temporary file is gone.
        assert_eq!(entries(out.path()), ["b.db"]);
        // The store took no harm and keeps taking writes.
        store.commit_order(order(13, 1, "dave", 1)).await.unwrap();

        let target = tempfile::tempdir().unwrap();
        let restored = restore(&file, target.path(), false).unwrap();
        assert_eq!((restored.sales, restored.orders), (1, 3));
        assert_eq!(restored.migrated_to, None);
        let copy = open(target.path());
        for (id, user, status) in [
            (10, "alice", OrderStatus::PendingPayment),
            (11, "bob", OrderStatus::Paid),
            (12, "carol", OrderStatus::PendingPayment),
        ] {
            let got = copy.get_order(id).await.unwrap().unwrap();
            assert_eq!(
                (got.user_id.as_str(), got.status, got.quantity),
                (user, status, 2)
            );
            assert_eq!(got, store.get_order(id).await.unwrap().unwrap());
        }
        // Taken before order 13: it is not in the backup.
        assert_eq!(copy.get_order(13).await.unwrap(), None);
        // The outbox rows came along with their orders.
        let filter = crate::backend::outbox::DeliveryFilter {
            limit: 100,
            ..Default::default()
        };
        let events = copy.list_webhooks(filter).await.unwrap();
        let mut ids: Vec<_> = events.iter().map(|e| e.event_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [
                "evt_10_accepted",
                "evt_11_accepted",
                "evt_11_paid",
                "evt_12_accepted"
            ]
        );
        store.shutdown().await;
        copy.shutdown().await;
    }

    #[tokio::test]
    async fn the_backup_file_is_one_closed_file_for_its_owner_only() {
        let (dir, store) = filled().await;
        let file = dir.path().join("backup.db");
        backup(dir.path(), &file).unwrap();
        let conn = Connection::open(&file).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        drop(conn);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        store.shutdown().await;
    }

    #[tokio::test]
    async fn a_backup_replaces_an_older_one_and_never_lands_on_the_store() {
        let (dir, store) = filled().await;
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("b.db");
        std::fs::write(&file, b"an older backup").unwrap();
        backup(dir.path(), &file).unwrap();
        assert_eq!(
            restore(&file, &out.path().join("r"), false).unwrap().orders,
            3
        );

        let onto = backup(dir.path(), &dir.path().join(DB_FILE)).unwrap_err();
        assert!(matches!(onto, BackupError::OntoStore(_)), "{onto}");
        let empty = tempfile::tempdir().unwrap();
        let none = backup(empty.path(), &file).unwrap_err();
        assert!(matches!(none, BackupError::NoStore(_)), "{none}");
        assert_eq!(none.code(), "no_store");
        assert!(none.is_refusal());
        store.shutdown().await;
    }

    #[tokio::test]
    async fn restore_refuses_a_non_empty_directory_unless_forced() {
        let (dir, store) = filled().await;
        let file = dir.path().join("..").join(format!(
            "{}.backup",
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        backup(dir.path(), &file).unwrap();

        // A second store with orders of its own, stopped with a WAL left.
        let target = tempfile::tempdir().unwrap();
        let other = open(target.path());
        other.create_sale(&sale(7)).await.unwrap();
        other.commit_order(order(70, 7, "zed", 1)).await.unwrap();
        other.shutdown().await;
        drop(other);
        std::fs::write(target.path().join("flashsale.db-wal"), b"stale log").unwrap();

        let refused = restore(&file, target.path(), false).unwrap_err();
        assert!(matches!(refused, BackupError::NotEmpty { .. }), "{refused}");
        assert_eq!(refused.code(), "data_dir_not_empty");

        let forced = restore(&file, target.path(), true).unwrap();
        assert_eq!(forced.orders, 3);
        assert!(!target.path().join("flashsale.db-wal").exists());
        assert!(!target.path().join(RESTORE_TMP).exists());
        let copy = open(target.path());
        assert_eq!(copy.get_order(70).await.unwrap(), None);
        assert_eq!(copy.get_order(10).await.unwrap().unwrap().user_id, "alice");
        copy.shutdown().await;
        store.shutdown().await;
        std::fs::remove_file(file).unwrap();
    }

    #[tokio::test]
    async fn restore_never_touches_a_directory_a_store_holds() {
        let (dir, store) = filled().await;
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("b.db");
        backup(dir.path(), &file).unwrap();
        store.commit_order(order(13, 1, "dave", 1)).await.unwrap();

        let busy = restore(&file, dir.path(), true).unwrap_err();
        assert!(matches!(busy, BackupError::InUse(_)), "{busy}");
        assert_eq!(store.get_order(13).await.unwrap().unwrap().user_id, "dave");
        // And a second store cannot open it either.
        let second = SqliteStore::open(dir.path(), &SqliteSettings::default());
        assert!(second.is_err(), "two stores on one directory");
        // Once stopped, the directory is free.
        store.shutdown().await;
        let replaced = restore(&file, dir.path(), true).unwrap();
        assert_eq!(replaced.orders, 3);
    }

    #[test]
    fn restore_refuses_what_is_not_a_flashsale_backup() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "orders: none\n".repeat(100)).unwrap();
        let err = restore(&text, &target, false).unwrap_err();
        assert!(matches!(err, BackupError::NotSqlite(_)), "{err}");

        let foreign = dir.path().join("other.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let err = restore(&foreign, &target, false).unwrap_err();
        assert!(matches!(err, BackupError::NotAStore(_)), "{err}");

        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let err = restore(&empty, &target, false).unwrap_err();
        assert!(matches!(err, BackupError::NotAStore(_)), "{err}");

        let missing = restore(&dir.path().join("nope.db"), &target, false).unwrap_err();
        assert!(matches!(missing, BackupError::NotFound(_)), "{missing}");
        assert!(!target.exists(), "a refused restore created the data dir");
    }

    #[tokio::test]
    async fn restore_refuses_a_corrupt_or_truncated_backup() {
        let (dir, store) = filled().await;
        // Enough orders for the table to span several pages.
        for id in 100..600 {
            store
                .commit_order(order(id, 1, &format!("u{id}"), 1))
                .await
                .unwrap();
        }
        let file = dir.path().join("b.db");
        backup(dir.path(), &file).unwrap();
        store.shutdown().await;
        let bytes = std::fs::read(&file).unwrap();
        assert!(bytes.len() > 8 * 4096, "{} bytes", bytes.len());

        let garbled = dir.path().join("garbled.db");
        let mut copy = bytes.clone();
        for b in &mut copy[3 * 4096 + 8..5 * 4096] {
            *b = 0x5a;
        }
        std::fs::write(&garbled, &copy).unwrap();
        let truncated = dir.path().join("truncated.db");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();

        for bad in [garbled, truncated] {
            let target = dir.path().join("target");
            let err = restore(&bad, &target, false).unwrap_err();
            assert!(matches!(err, BackupError::Corrupt { .. }), "{err}");
            assert_eq!(err.code(), "corrupt");
            assert!(!target.join(DB_FILE).exists());
        }
    }

    #[test]
    fn restore_refuses_a_newer_schema_and_migrates_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let newer = dir.path().join("newer.db");
        let conn = Connection::open(&newer).unwrap();
        conn.execute_batch(MIGRATIONS_FIRST).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = restore(&newer, &dir.path().join("a"), false).unwrap_err();
        assert!(
            matches!(err, BackupError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1),
            "{err}"
        );

        // A store as the first release wrote it: schema 1, no front door,
        // no outbox.
        let older = dir.path().join("older.db");
        let conn = Connection::open(&older).unwrap();
        conn.execute_batch(MIGRATIONS_FIRST).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO sales VALUES (1, 'old', 5, 1, 0, NULL, NULL, 0);
             INSERT INTO orders VALUES (2, 1, 'olga', 1, 'paid', NULL, 0, 0, NULL);",
        )
        .unwrap();
        drop(conn);
        let target = dir.path().join("b");
        let summary = restore(&older, &target, false).unwrap();
        assert_eq!(summary.schema_version, 1);
        assert_eq!(summary.migrated_to, Some(SCHEMA_VERSION));
        let conn = Connection::open(target.join(DB_FILE)).unwrap();
        let version: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let user: String = conn
            .query_row("SELECT user_id FROM orders WHERE order_id = 2", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(user, "olga");
    }

    const MIGRATIONS_FIRST: &str = super::super::MIGRATIONS[0];
}
