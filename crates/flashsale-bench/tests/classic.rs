//! The classic reference server (`flashsale_bench::classic`) on this
//! machine's Redis and RabbitMQ (`FLASHSALE_TEST_REDIS`,
//! `FLASHSALE_TEST_AMQP` override them), started in-process on a random
//! port under a key prefix and queue of its own, flooded by the load tool's
//! own run (`flashsale_bench::run`, as `flashsale bench --url` of it): it
//! sells exactly its stock, nobody gets over the limit, and every `201` is
//! on its queue exactly once. The test removes its keys and queue.

use clap::Parser as _;
use flashsale::auth::{mint_token, Secret};
use flashsale_bench::classic::{Classic, Config, Seed};
use flashsale_bench::BenchArgs;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

const ADMIN: &str = "classic-test-admin";
const SECRET: &str = "classic-test-secret";

/// Parses a load tool command line against `url`.
fn bench_args(url: &str, queue: &str, extra: &[&str]) -> BenchArgs {
    let mut argv = vec![
        "flashsale-bench",
        "--url",
        url,
        "--queue",
        queue,
        "--admin-token",
        ADMIN,
        "--jwt-secret",
        SECRET,
        "--json",
    ];
    argv.extend_from_slice(extra);
    BenchArgs::try_parse_from(argv).unwrap()
}

fn check<'a>(
    summary: &'a flashsale_bench::Summary,
    name: &str,
) -> &'a flashsale_bench::checks::Check {
    summary
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} check in {:?}", summary.checks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_server_sells_exactly_its_stock_and_queues_every_201_once() {
    let redis_url = env_or("FLASHSALE_TEST_REDIS", "redis://127.0.0.1:6379");
    let amqp = env_or(
        "FLASHSALE_TEST_AMQP",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    let prefix = format!("fs_classic_test_{:08x}", rand::random::<u32>());
    let classic = Classic::connect(&Config {
        redis: redis_url.clone(),
        queue: amqp.clone(),
        prefix: prefix.clone(),
        jwt_secret: Secret::new(SECRET),
        admin_token: Secret::new(ADMIN),
        redis_connections: 2,
        amqp_channels: 2,
        // Sale 1, seeded at start as `flashsale-classic --stock 20` does.
        seed: Some(Seed {
            stock: 20,
            per_user_limit: 1,
        }),
    })
    .await
    .expect("Redis and RabbitMQ on this machine");
    assert_eq!(classic.queue_name(), format!("{prefix}.orders"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let classic = classic.clone();
        tokio::spawn(async move {
            classic
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        })
    };

    // A sale that sells out: 50 units, one each, 80 buyers.
    let sold_out = flashsale_bench::run(&bench_args(
        &url,
        &amqp,
        &[
            "--stock",
            "50",
            "--users",
            "80",
            "--requests",
            "200",
            "--concurrency",
            "16",
        ],
    ))
    .await
    .unwrap();
    assert!(sold_out.ok, "{}", sold_out.render());
    assert_eq!(sold_out.accepted, 50, "{}", sold_out.render());
    assert_eq!(sold_out.outcomes.get("201"), Some(&50));
    assert_eq!(sold_out.outcomes.get("409 sold_out"), Some(&150));
    let queued = check(&sold_out, "queued_once");
    assert!(queued.detail.starts_with("50 orders of sale"), "{queued:?}");
    assert!(check(&sold_out, "no_untold_orders").ok);

    // A sale where the per-user limit binds first: 2 units each, 30 buyers,
    // more stock than they may take; the JSON body a buy button sends.
    let limited = flashsale_bench::run(&bench_args(
        &url,
        &amqp,
        &[
            "--stock",
            "100",
            "--per-user-limit",
            "2",
            "--users",
            "30",
            "--requests",
            "150",
            "--concurrency",
            "8",
            "--shape",
            "json",
        ],
    ))
    .await
    .unwrap();
    assert!(limited.ok, "{}", limited.render());
    assert_eq!(limited.accepted, 60, "{}", limited.render());
    assert_eq!(limited.outcomes.get("409 limit_reached"), Some(&90));
    assert!(check(&limited, "per_user_limit").ok);

    // The seeded sale, given by id (`--sale-id`) instead of created.
    let seeded = flashsale_bench::run(&bench_args(
        &url,
        &amqp,
        &[
            "--sale-id",
            "1",
            "--users",
            "30",
            "--requests",
            "60",
            "--concurrency",
            "4",
        ],
    ))
    .await
    .unwrap();
    assert!(seeded.ok, "{}", seeded.render());
    assert_eq!(seeded.sale_id.as_deref(), Some("1"));
    assert_eq!((seeded.stock, seeded.accepted), (Some(20), 20));
    assert!(check(&seeded, "queued_once")
        .detail
        .starts_with("20 orders"));

    // What Redis holds agrees, independently of the load tool.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ids = [
        sold_out.sale_id.clone().unwrap(),
        limited.sale_id.clone().unwrap(),
    ];
    let left: Vec<u64> = redis::cmd("MGET")
        .arg(format!("{prefix}:sale:{}:stock", ids[0]))
        .arg(format!("{prefix}:sale:{}:stock", ids[1]))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, [0, 40]);
    let held: Vec<u64> = redis::cmd("HVALS")
        .arg(format!("{prefix}:sale:{}:held", ids[1]))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(held.len(), 30);
    assert!(held.iter().all(|&n| n == 2), "{held:?}");

    // The contract's refusals.
    let http = reqwest::Client::new();
    let buy = format!("{url}/api/v1/sales/{}/purchase", ids[1]);
    let token = mint_token(&Secret::new(SECRET), "someone", 60).unwrap();
    let forged = mint_token(&Secret::new("another secret"), "someone", 60).unwrap();
    for (auth, body, status, code) in [
        (None, "", 401, "unauthorized"),
        (Some(&forged), "", 401, "unauthorized"),
        (Some(&token), r#"{"quantity":0}"#, 400, "invalid_request"),
        (Some(&token), r#"{"quantity":3}"#, 409, "limit_reached"),
    ] {
        let mut request = http.post(&buy).body(body.to_owned());
        if let Some(auth) = auth {
            request = request.bearer_auth(auth);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), status, "{body}");
        let value: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(value["error"]["code"], code, "{value}");
    }
    let missing = http
        .post(format!("{url}/api/v1/sales/999/purchase"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let buyer_as_admin = http
        .get(format!("{url}/api/v1/sales/{}/stats", ids[0]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(buyer_as_admin.status().as_u16(), 403);
    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // Stop, clean up, and nothing is left behind.
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    classic.cleanup().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    assert!(
        flashsale_bench::classic::drain_queue(&amqp, &format!("{prefix}.orders"))
            .await
            .is_err(),
        "the queue is deleted"
    );
}
