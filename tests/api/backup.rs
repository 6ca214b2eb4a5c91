//! `flashsale backup` and `flashsale restore` on the real binary: a backup
//! taken while a flood buys (online) restores into a fresh data directory
//! with every order it holds readable, whole and accounted for; bad files,
//! non-empty directories and a directory a server runs on are refused with
//! a non-zero exit and a machine-readable code.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;

use crate::kit::{
    assert_error, check_flood, flood_with, json_ok, json_status, num, sigterm, start_binary,
    start_binary_with, token, unique_admin_token, TestApp,
};

const WEBHOOK_SECRET: &str = "whsec_c2VjcmV0LXdlYmhvb2sta2V5LTEyMzQ1Njc4OTA=";

/// `flashsale ARGS` with no `FLASHSALE_…` variable from the environment.
async fn flashsale(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FLASHSALE_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args).output().await.expect("running flashsale")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// The one JSON document a `--json` run printed.
fn printed(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {out:?}"))
}

/// Asserts a run was refused (exit 2) with `code`, as JSON with `--json`.
fn assert_refused(out: &Output, code: &str) -> String {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let body = printed(out);
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// An order as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    order_id: String,
    sale_id: String,
    user_id: String,
    quantity: u64,
    status: String,
}

/// Every order of a backup file and the ids of its webhook outbox events,
/// read with SQLite itself.
fn read_backup(file: &Path) -> (Vec<Row>, HashSet<String>) {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("opening the backup");
    let rows = conn
        .prepare("SELECT order_id, sale_id, user_id, quantity, status FROM orders")
        .unwrap()
        .query_map([], |r| {
            Ok(Row {
                order_id: r.get::<_, i64>(0)?.to_string(),
                sale_id: r.get::<_, i64>(1)?.to_string(),
                user_id: r.get(2)?,
                quantity: r.get(3)?,
                status: r.get(4)?,
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let events = conn
        .prepare("SELECT event_id FROM webhook_outbox")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<HashSet<String>, _>>()
        .unwrap();
    (rows, events)
}

fn event_kind(status: &str) -> &'static str {
    match status {
        "pending_payment" => "accepted",
        "paid" => "paid",
        "cancelled" => "cancelled",
        "expired" => "expired",
        other => panic!("unknown status {other}"),
    }
}

/// Asks the server for every order in `rows` as its owner, 32 at a time:
/// each must answer `200` with the stored owner, sale, quantity and status.
async fn check_rows_served(app: &TestApp, rows: &[Row]) {
    let wrong: Vec<String> = futures::stream::iter(rows)
        .map(|row| async move {
            let resp = app.get_order(&row.order_id, &token(&row.user_id)).await;
            if resp.status() != StatusCode::OK {
                return Some(format!("{}: {}", row.order_id, resp.status()));
            }
            let got: Value = resp.json().await.unwrap();
            let served = Row {
                order_id: got["order_id"].as_str().unwrap_or_default().to_owned(),
                sale_id: got["sale_id"].as_str().unwrap_or_default().to_owned(),
                user_id: got["user_id"].as_str().unwrap_or_default().to_owned(),
                quantity: got["quantity"].as_u64().unwrap_or_default(),
                status: got["status"].as_str().unwrap_or_default().to_owned(),
            };
            (served != *row).then(|| format!("stored {row:?}, served {served:?}"))
        })
        .buffer_unordered(32)
        .filter_map(|w| async move { w })
        .collect()
        .await;
    assert!(
        wrong.is_empty(),
        "{} orders wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// The acceptance test: a backup during a flood, restored into a fresh
/// directory, holds exactly a consistent prefix of the accepted orders —
/// every order accepted before it began, nothing no buyer was told about,
/// each order with its outbox event — and a server on the restored
/// directory serves every one of them and counts exactly them as sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_during_a_flood_restores_every_order_it_holds() {
    const STOCK: u64 = 100_000;
    const CROWD: usize = 5000;
    let live = tempfile::tempdir().unwrap();
    let spare = tempfile::tempdir().unwrap();
    let file = spare.path().join("flashsale.backup");
    let admin = unique_admin_token();
    // Webhooks on (to a port nothing listens on): each order change writes
    // an outbox row in its own transaction, so a torn snapshot would show.
    let with_webhooks = |cmd: &mut tokio::process::Command| {
        cmd.env("FLASHSALE_WEBHOOK_URL", "http://127.0.0.1:9/hook")
            .env("FLASHSALE_WEBHOOK_SECRET", WEBHOOK_SECRET);
    };
    let (mut child, app) = start_binary_with(live.path(), &admin, with_webhooks).await;
    let sale_id = app.open_sale(STOCK, 1).await;

    // Orders of every kind before the flood: paid, cancelled, keyed.
    let paid = app.buy_ok(&sale_id, "alice", 1).await;
    let paid_id = paid["order_id"].as_str().unwrap().to_owned();
    json_ok(app.pay(&paid_id, &token("alice")).await).await;
    let cancelled = app.buy_ok(&sale_id, "bob", 1).await;
    let cancelled_id = cancelled["order_id"].as_str().unwrap().to_owned();
    json_ok(app.cancel(&cancelled_id, &token("bob")).await).await;
    let keyed = json_status(
        app.purchase(&sale_id, &token("carol"), None, Some("carol-key"))
            .await,
        StatusCode::CREATED,
    )
    .await;

    // The flood; the backup starts once 400 of its orders were answered.
    let accepted = Arc::new(AtomicU64::new(0));
    let mut before_backup: HashSet<u32> = HashSet::new();
    let mut backup = None;
    let crowd = (0..CROWD).map(|i| (format!("crowd-{i}"), 1)).collect();
    let answers = flood_with(&app.client, &app.address, &sale_id, crowd, 64, |seen| {
        if !seen.accepted {
            return;
        }
        let n = accepted.fetch_add(1, Ordering::Relaxed) + 1;
        if backup.is_none() {
            before_backup.insert(seen.job.user);
        }
        if n >= 400 && backup.is_none() {
            let (data_dir, to) = (path(live.path()).to_owned(), path(&file).to_owned());
            let accepted = Arc::clone(&accepted);
            backup = Some(tokio::spawn(async move {
                let out =
                    flashsale(&["backup", "--data-dir", &data_dir, "--to", &to, "--json"]).await;
                (out, accepted.load(Ordering::Relaxed))
            }));
        }
    })
    .await;
    let (out, accepted_when_done) = backup
        .expect("the flood ended before 400 orders were accepted")
        .await
        .unwrap();
    check_flood(&answers, 1);
    assert!(out.status.success(), "{out:?}");
    let summary = printed(&out);
    eprintln!(
        "backup during the flood: {summary}; {} orders accepted before it began, {accepted_when_done} \
         when it ended, {} in all",
        before_backup.len(),
        answers.orders
    );
    // Online: the flood kept selling while the backup ran and after it.
    assert!(
        accepted_when_done < answers.orders,
        "the flood was over before the backup finished ({accepted_when_done} of {})",
        answers.orders
    );
    sigterm(&child);
    assert!(child.wait().await.unwrap().success());

    // What the file holds, read with SQLite.
    let (rows, events) = read_backup(&file);
    assert_eq!(summary["command"], "backup");
    assert_eq!(summary["orders"], rows.len() as u64, "{summary}");
    assert_eq!(summary["sales"], 1, "{summary}");
    assert_eq!(
        summary["bytes"],
        std::fs::metadata(&file).unwrap().len(),
        "{summary}"
    );
    let told: HashMap<&str, &str> = answers
        .accepted
        .iter()
        .map(|a| (a.order_id.as_str(), answers.owner(a)))
        .chain([
            (paid_id.as_str(), "alice"),
            (cancelled_id.as_str(), "bob"),
            (keyed["order_id"].as_str().unwrap(), "carol"),
        ])
        .collect();
    let in_backup: HashMap<&str, &Row> = rows.iter().map(|r| (r.order_id.as_str(), r)).collect();
    assert_eq!(in_backup.len(), rows.len(), "an order stored twice");
    for row in &rows {
        // Nothing nobody was told about, and each order whole: its buyer,
        // sale, one unit, a status, and the outbox event of every change.
        assert_eq!(
            told.get(row.order_id.as_str()),
            Some(&row.user_id.as_str()),
            "{row:?}"
        );
        assert_eq!(
            (row.sale_id.as_str(), row.quantity),
            (sale_id.as_str(), 1),
            "{row:?}"
        );
        assert!(
            events.contains(&format!("evt_{}_accepted", row.order_id)),
            "{row:?} without its accepted event"
        );
        if row.status != "pending_payment" {
            let kind = event_kind(&row.status);
            assert!(
                events.contains(&format!("evt_{}_{kind}", row.order_id)),
                "{row:?} without its {kind} event"
            );
        }
    }
    // No event without its order (the transaction's other half).
    for event in &events {
        let order_id = event.split('_').nth(1).unwrap();
        assert!(
            in_backup.contains_key(order_id),
            "event {event} without its order"
        );
    }
    // Every order answered before the backup began is in it.
    let crowd_in_backup: HashSet<&str> = rows
        .iter()
        .filter(|r| r.user_id.starts_with("crowd-"))
        .map(|r| r.user_id.as_str())
        .collect();
    for user in &before_backup {
        let name = answers.buyers.name(*user);
        assert!(
            crowd_in_backup.contains(name),
            "{name}'s order, answered before the backup, is missing"
        );
    }
    assert!(crowd_in_backup.len() >= before_backup.len());
    assert!(
        (crowd_in_backup.len() as u64) < answers.orders,
        "the backup holds every order of the flood: it was not taken during it"
    );
    let status_of = |id: &str| in_backup[id].status.as_str();
    assert_eq!(status_of(&paid_id), "paid");
    assert_eq!(status_of(&cancelled_id), "cancelled");

    // Restore into a fresh directory (not yet created) and serve it.
    let fresh = spare.path().join("restored");
    let out = flashsale(&[
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(&fresh),
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let restored = printed(&out);
    assert_eq!(restored["command"], "restore");
    assert_eq!(restored["orders"], rows.len() as u64, "{restored}");
    let (_child, app) = start_binary(&fresh).await;
    check_rows_served(&app, &rows).await;

    // The sale agrees with the orders: sold = units held in the backup.
    let held = rows
        .iter()
        .filter(|r| r.status == "pending_payment" || r.status == "paid")
        .map(|r| r.quantity)
        .sum::<u64>();
    let stats = app.stats(&sale_id).await;
    assert_eq!(num(&stats, "sold"), held, "{stats}");
    assert_eq!(num(&stats, "remaining"), STOCK - held, "{stats}");
    assert_eq!(
        num(&stats, "orders_persisted"),
        rows.len() as u64,
        "{stats}"
    );

    // Orders accepted after the snapshot are not there, and their buyers
    // may buy again; buyers in it are at their limit; keys still replay.
    let after: Vec<_> = answers
        .accepted
        .iter()
        .filter(|a| !in_backup.contains_key(a.order_id.as_str()))
        .collect();
    assert!(!after.is_empty());
    for a in after.iter().take(20) {
        let resp = app.get_order(&a.order_id, &token(answers.owner(a))).await;
        assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    app.buy_ok(&sale_id, answers.owner(after[0]), 1).await;
    let holder = rows
        .iter()
        .find(|r| r.user_id.starts_with("crowd-"))
        .unwrap();
    assert_error(
        app.buy(&sale_id, &holder.user_id).await,
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
    let replay = json_status(
        app.purchase(&sale_id, &token("carol"), None, Some("carol-key"))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(replay["order_id"], keyed["order_id"]);
}

/// Restore refuses a directory that holds a store, and `--force` replaces
/// it once no server runs there — never while one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_non_empty_or_served_directory() {
    let source = tempfile::tempdir().unwrap();
    let (mut child, app) = start_binary(source.path()).await;
    let sale_id = app.open_sale(10, 1).await;
    let kept = app.buy_ok(&sale_id, "kept", 1).await;
    let file = source.path().join("backup.db");
    let out = flashsale(&[
        "backup",
        "--data-dir",
        path(source.path()),
        "--to",
        path(&file),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("backup: 1 sales, 1 orders, "), "{line}");
    sigterm(&child);
    assert!(child.wait().await.unwrap().success());

    // Another server's directory, with an order of its own.
    let target = tempfile::tempdir().unwrap();
    let (mut child, other) = start_binary(target.path()).await;
    let other_sale = other.open_sale(10, 1).await;
    let theirs = other.buy_ok(&other_sale, "theirs", 1).await;
    let theirs_id = theirs["order_id"].as_str().unwrap();

    // While it runs: refused, with or without --force, and it keeps serving.
    let plain = [
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(target.path()),
        "--json",
    ];
    let forced = [&plain[..], &["--force"]].concat();
    for args in [&plain[..], &forced[..]] {
        let message = assert_refused(&flashsale(args).await, "store_in_use");
        assert!(message.contains("stop it first"), "{message}");
    }
    json_ok(other.get_order(theirs_id, &token("theirs")).await).await;
    other.buy_ok(&other_sale, "after-refusal", 1).await;
    // A second server on the same directory is refused too.
    let mut second = crate::kit::serve_command(
        target.path(),
        crate::kit::free_port(),
        &unique_admin_token(),
    );
    let second = tokio::time::timeout(Duration::from_secs(30), second.status())
        .await
        .expect("a second server on the same data directory is still running")
        .unwrap();
    assert!(!second.success(), "two servers on one data directory");
    sigterm(&child);
    assert!(child.wait().await.unwrap().success());

    // Stopped: refused without --force (the store is there), replaced with.
    let message = assert_refused(&flashsale(&plain).await, "data_dir_not_empty");
    assert!(message.contains("--force"), "{message}");
    let out = flashsale(&forced).await;
    assert!(out.status.success(), "{out:?}");
    let (_child, app) = start_binary(target.path()).await;
    let resp = app.get_order(theirs_id, &token("theirs")).await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let got = json_ok(
        app.get_order(kept["order_id"].as_str().unwrap(), &token("kept"))
            .await,
    )
    .await;
    assert_eq!(
        (got["user_id"].as_str(), got["status"].as_str()),
        (Some("kept"), Some("pending_payment"))
    );
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 1);
}

/// A file that is not SQLite, a corrupt backup and a truncated one are
/// refused before anything is put in place, in text and in JSON.
#[tokio::test]
async fn restore_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, app) = start_binary(&dir.path().join("live")).await;
    let sale_id = app.open_sale(5000, 1).await;
    for i in 0..300 {
        app.buy_ok(&sale_id, &format!("u{i}"), 1).await;
    }
    let good = dir.path().join("good.db");
    let out = flashsale(&[
        "backup",
        "--data-dir",
        path(&dir.path().join("live")),
        "--to",
        path(&good),
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    sigterm(&child);
    assert!(child.wait().await.unwrap().success());
    let bytes = std::fs::read(&good).unwrap();
    assert!(bytes.len() >= 8 * 4096, "{} bytes", bytes.len());

    let text = dir.path().join("orders.csv");
    std::fs::write(&text, "order_id,user\n".repeat(500)).unwrap();
    let garbled = dir.path().join("garbled.db");
    let mut copy = bytes.clone();
    copy[2 * 4096 + 16..6 * 4096].fill(0xa5);
    std::fs::write(&garbled, &copy).unwrap();
    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();

    let target = dir.path().join("target");
    for (file, code) in [
        (&text, "not_sqlite"),
        (&garbled, "corrupt"),
        (&truncated, "corrupt"),
    ] {
        let out = flashsale(&[
            "restore",
            "--from",
            path(file),
            "--data-dir",
            path(&target),
            "--json",
        ])
        .await;
        assert_refused(&out, code);
        // Without --json: the message on stderr, nothing on stdout.
        let out = flashsale(&["restore", "--from", path(file), "--data-dir", path(&target)]).await;
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(&format!("[{code}]")), "{stderr}");
        assert!(
            !target.join("flashsale.db").exists(),
            "{file:?} was put in place"
        );
    }
    // A backup of nothing is refused too, and writes no file.
    let nowhere = dir.path().join("nothing.db");
    let out = flashsale(&[
        "backup",
        "--data-dir",
        path(&dir.path().join("empty")),
        "--to",
        path(&nowhere),
        "--json",
    ])
    .await;
    assert_refused(&out, "no_store");
    assert!(!nowhere.exists());
    // The good one still restores.
    let out = flashsale(&[
        "restore",
        "--from",
        path(&good),
        "--data-dir",
        path(&target),
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(printed(&out)["orders"], 300);
}
