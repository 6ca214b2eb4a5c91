//! One clock for the sale window across nodes (issue 8): three real
//! `flashsale serve` nodes, one with its clock 10 s ahead and one 10 s
//! behind (libfaketime, Debian's `libfaketime`; `scripts/test.sh` installs
//! it). The window is decided by Redis's clock, so the fast node cannot
//! open the sale early, and the slow one sells from the start (its early
//! answers use its measured offset). Each node exports that offset.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::kit::{start_binary_with, time_in, unique_admin_token, Backends, Db, TestApp};

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A node over `backends` whose clock is shifted by `shift` (libfaketime's
/// `FAKETIME`, e.g. `+10s`; `None` for the true clock).
async fn node(
    backends: &Backends,
    dir: &std::path::Path,
    admin: &str,
    shift: Option<&str>,
) -> (tokio::process::Child, TestApp) {
    start_binary_with(dir, admin, |cmd| {
        cmd.args(backends.flags());
        if let Some(shift) = shift {
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME", shift)
                // Timers and timeouts keep the true pace.
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
    })
    .await
}

/// The node's `flashsale_clock_offset_ms`, once it measured one.
async fn offset_ms(app: &TestApp) -> Option<f64> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("flashsale_clock_offset_ms "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_fast_clock_cannot_open_a_sale_early_and_a_slow_one_sells_from_the_start() {
    assert!(
        std::path::Path::new(FAKETIME_LIB).exists(),
        "libfaketime is missing (apt-get install libfaketime; scripts/test.sh does it)"
    );
    let backends = Backends::new(Db::Postgres).await;
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let admin = unique_admin_token();
    let (_true_child, truth) = node(&backends, dirs[0].path(), &admin, None).await;
    let (_fast_child, fast) = node(&backends, dirs[1].path(), &admin, Some("+10s")).await;
    let (_slow_child, slow) = node(&backends, dirs[2].path(), &admin, Some("-10s")).await;

    // Each node measures its offset from Redis's clock within a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (fast_offset, slow_offset) = loop {
        if let (Some(f), Some(s)) = (offset_ms(&fast).await, offset_ms(&slow).await) {
            break (f, s);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no clock offset exported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!((fast_offset + 10_000.0).abs() < 1_000.0, "{fast_offset}");
    assert!((slow_offset - 10_000.0).abs() < 1_000.0, "{slow_offset}");
    let true_offset = offset_ms(&truth).await.unwrap_or(0.0);
    assert!(true_offset.abs() < 1_000.0, "{true_offset}");

    // A sale that starts in 5 s by the true clock — already open by the
    // fast node's own clock.
    let resp = truth
        .post_sale(&json!({
            "item": "phone", "stock": 30, "per_user_limit": 1, "starts_at": time_in(5),
        }))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let sale: serde_json::Value = resp.json().await.unwrap();
    let sale = sale["id"].as_str().unwrap().to_owned();
    let opens = tokio::time::Instant::now() + Duration::from_secs(5);

    // Before the start every node refuses, the fast one included.
    for (i, app) in [&fast, &truth, &slow, &fast].into_iter().enumerate() {
        let resp = app.buy(&sale, &format!("early{i}")).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "node {i}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_started", "node {i}");
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let resp = fast.buy(&sale, "still-early").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // From the start every node sells, the slow one too (without the
    // offset it would refuse for another 10 s).
    tokio::time::sleep_until(opens + Duration::from_millis(500)).await;
    for (i, app) in [&slow, &truth, &fast].into_iter().enumerate() {
        let resp = app.buy(&sale, &format!("buyer{i}")).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "node {i}");
    }
    backends.cleanup().await;
}

/// An admin's "close now" / "open now" on a node whose clock is off: "now"
/// is Redis's clock, not the node's. Closed on a node 10 s ahead, the sale
/// ends now (by its own clock it would sell 10 s more on every node);
/// opened on a node 10 s behind, it opens now.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opening_or_closing_on_a_node_with_a_wrong_clock_moves_the_window_to_the_true_now() {
    assert!(
        std::path::Path::new(FAKETIME_LIB).exists(),
        "libfaketime is missing (apt-get install libfaketime; scripts/test.sh does it)"
    );
    let backends = Backends::new(Db::Postgres).await;
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let admin = unique_admin_token();
    let (_true_child, truth) = node(&backends, dirs[0].path(), &admin, None).await;
    let (_fast_child, fast) = node(&backends, dirs[1].path(), &admin, Some("+10s")).await;
    let (_slow_child, slow) = node(&backends, dirs[2].path(), &admin, Some("-10s")).await;
    let ms = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let true_now = || chrono::Utc::now().timestamp_millis();

    let open = truth
        .create_sale(json!({
            "item": "phone", "stock": 30, "per_user_limit": 1, "starts_at": time_in(-60),
        }))
        .await;
    let open = open["id"].as_str().unwrap().to_owned();
    assert_eq!(
        truth.buy(&open, "before").await.status(),
        StatusCode::CREATED
    );
    let closed = fast.close_now(&open).await;
    let end = ms(&closed["ends_at"]);
    assert!(
        (end - true_now()).abs() < 1_000,
        "ends_at is the true now, not the fast node's: {closed}"
    );
    for (i, app) in [&truth, &slow, &fast].into_iter().enumerate() {
        let resp = app.buy(&open, &format!("after{i}")).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "node {i}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "ended", "node {i}");
    }

    let upcoming = truth
        .create_sale(json!({
            "item": "phone", "stock": 30, "per_user_limit": 1, "starts_at": time_in(3600),
        }))
        .await;
    let upcoming = upcoming["id"].as_str().unwrap().to_owned();
    let opened = slow.open_now(&upcoming).await;
    let start = ms(&opened["starts_at"]);
    assert!(
        (start - true_now()).abs() < 1_000,
        "starts_at is the true now, not the slow node's: {opened}"
    );
    // Every node sells within a couple of seconds (their early answers
    // mirror the window from Redis).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    for (i, app) in [&truth, &fast, &slow].into_iter().enumerate() {
        loop {
            let resp = app.buy(&upcoming, &format!("buyer{i}")).await;
            if resp.status() == StatusCode::CREATED {
                break;
            }
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "node {i}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {i} still refuses: {}",
                resp.text().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    backends.cleanup().await;
}
