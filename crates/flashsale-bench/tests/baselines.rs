//! The baselines run by the real `flashsale-bench` binary on this machine's
//! services: each sells exactly its stock, says so in its JSON summary and
//! exits 0.

/// `--mode pg-row-lock` sells exactly its stock on the real PostgreSQL.
#[tokio::test]
async fn the_pg_row_lock_baseline_sells_exactly_its_stock() {
    let database = std::env::var("FLASHSALE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale-bench"))
        .args([
            "--mode",
            "pg-row-lock",
            "--database",
            &database,
            "--stock",
            "50",
            "--users",
            "50",
            "--concurrency",
            "8",
            "--requests",
            "80",
            "--json",
        ])
        .output()
        .await
        .expect("running flashsale-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON summary");
    assert_eq!(summary["accepted"], 50, "{summary}");
    assert_eq!(summary["requests"], 80, "{summary}");
    assert_eq!(summary["ok"], true, "{summary}");
}
