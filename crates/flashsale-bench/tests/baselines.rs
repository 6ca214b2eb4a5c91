//! The baselines run by the real `flashsale-bench` binary on this machine's
//! services (PostgreSQL, Redis, RabbitMQ; `FLASHSALE_TEST_PG`,
//! `FLASHSALE_TEST_REDIS`, `FLASHSALE_TEST_AMQP` override them): each sells
//! exactly its stock, says so in its JSON summary and exits 0. Each run
//! works under keys, a schema or queues of its own and removes them.

use serde_json::Value;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Runs `flashsale-bench --json` with `args`; its exit status must be 0.
async fn bench(args: &[&str]) -> Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale-bench"))
        .args(args)
        .arg("--json")
        .output()
        .await
        .expect("running flashsale-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_str(stdout.trim()).expect("one JSON summary")
}

/// `--mode pg-row-lock` sells exactly its stock on the real PostgreSQL.
#[tokio::test]
async fn the_pg_row_lock_baseline_sells_exactly_its_stock() {
    let database = env_or(
        "FLASHSALE_TEST_PG",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    let summary = bench(&[
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
    ])
    .await;
    assert_eq!(summary["accepted"], 50, "{summary}");
    assert_eq!(summary["requests"], 80, "{summary}");
    assert_eq!(summary["ok"], true, "{summary}");
}

/// `--mode redis-evalsha` (one script call and one confirmed publish per
/// purchase) and `--mode redis-coalesced` (Flashsale's batched step) each
/// sell exactly the stock on the real Redis and RabbitMQ; with one unit per
/// buyer, the buyers past the stock are refused.
#[tokio::test]
async fn the_redis_baselines_sell_exactly_their_stock() {
    let redis = env_or("FLASHSALE_TEST_REDIS", "redis://127.0.0.1:6379");
    let queue = env_or(
        "FLASHSALE_TEST_AMQP",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    for mode in ["redis-evalsha", "redis-coalesced"] {
        let summary = bench(&[
            "--mode",
            mode,
            "--redis",
            &redis,
            "--queue",
            &queue,
            "--stock",
            "40",
            "--users",
            "60",
            "--concurrency",
            "8",
            "--requests",
            "100",
        ])
        .await;
        assert_eq!(summary["mode"], mode, "{summary}");
        assert_eq!(summary["accepted"], 40, "{summary}");
        assert_eq!(summary["requests"], 100, "{summary}");
        assert_eq!(summary["outcomes"]["sold"], 40, "{summary}");
        assert_eq!(summary["outcomes"]["refused"], 60, "{summary}");
        assert_eq!(summary["ok"], true, "{summary}");
        assert!(
            !summary.to_string().contains("guest:guest"),
            "a password in the summary: {summary}"
        );
    }
}
