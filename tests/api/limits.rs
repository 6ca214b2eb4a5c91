//! The rate limits over real HTTP: per buyer, per client IP (the peer, or
//! behind trusted proxies the right-most untrusted `X-Forwarded-For` hop)
//! and per sale; and across two distributed nodes, where one buyer gets the
//! limit once, not once per node. Every `429` carries `Retry-After`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};

use crate::kit::{open_sale_body, spawn_app_with, token, Backends, Db, TestApp};

/// A purchase by `user`, with an `X-Forwarded-For` header if given.
async fn buy_from(app: &TestApp, sale: &str, user: &str, xff: Option<&str>) -> Response {
    let mut req = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale}/purchase")))
        .bearer_auth(token(user));
    if let Some(xff) = xff {
        req = req.header("X-Forwarded-For", xff);
    }
    req.send().await.expect("POST purchase")
}

/// The status, after checking that a `429` is `rate_limited` with a
/// `Retry-After` of whole seconds, at least 1.
async fn status_of(resp: Response) -> StatusCode {
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry: u64 = resp
            .headers()
            .get("retry-after")
            .expect("Retry-After on a 429")
            .to_str()
            .unwrap()
            .parse()
            .expect("Retry-After in whole seconds");
        assert!(retry >= 1, "Retry-After {retry}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    }
    status
}

async fn wide_sale(app: &TestApp) -> String {
    let sale = app.create_sale(open_sale_body(100_000, 100_000)).await;
    sale["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_buyer_past_the_burst_is_rate_limited() {
    let app = spawn_app_with(|s| {
        s.engine.user_rate_per_sec = 1;
        s.engine.user_burst = 3;
    })
    .await;
    let sale = wide_sale(&app).await;
    for _ in 0..3 {
        assert_eq!(
            status_of(buy_from(&app, &sale, "eager", None).await).await,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        status_of(buy_from(&app, &sale, "eager", None).await).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another buyer is not affected.
    assert_eq!(
        status_of(buy_from(&app, &sale, "calm", None).await).await,
        StatusCode::CREATED
    );
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_limit() {
    let app = spawn_app_with(|s| {
        s.engine.ip_rate_per_sec = 1;
        s.engine.ip_burst = 2;
        s.trusted_proxies =
            flashsale::http::client_ip::TrustedProxies::parse("127.0.0.1/32").unwrap();
    })
    .await;
    let sale = wide_sale(&app).await;
    // Many accounts behind one address: two pass, then 429.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let resp = buy_from(&app, &sale, &format!("acct-{i}"), Some("203.0.113.7")).await;
        statuses.push(status_of(resp).await);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // A client cannot escape by writing its own hop to the left.
    let resp = buy_from(&app, &sale, "acct-9", Some("198.51.100.1, 203.0.113.7")).await;
    assert_eq!(status_of(resp).await, StatusCode::TOO_MANY_REQUESTS);
    // Other addresses are separate.
    for i in 0..20 {
        let resp = buy_from(
            &app,
            &sale,
            &format!("other-{i}"),
            Some(&format!("198.51.100.{}", i + 10)),
        )
        .await;
        assert_eq!(status_of(resp).await, StatusCode::CREATED);
    }
    app.stop().await;
}

#[tokio::test]
async fn an_untrusted_peers_forwarded_for_is_ignored() {
    let app = spawn_app_with(|s| {
        s.engine.ip_rate_per_sec = 1;
        s.engine.ip_burst = 2;
        // The test client (127.0.0.1) is not among them.
        s.trusted_proxies =
            flashsale::http::client_ip::TrustedProxies::parse("10.0.0.0/8").unwrap();
    })
    .await;
    let sale = wide_sale(&app).await;
    let mut passed = 0;
    for i in 0..6 {
        let spoofed = format!("192.0.2.{i}");
        let resp = buy_from(&app, &sale, &format!("acct-{i}"), Some(&spoofed)).await;
        if status_of(resp).await == StatusCode::CREATED {
            passed += 1;
        }
    }
    // Every spoofed address counted as the peer's.
    assert_eq!(passed, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_sale_past_its_rate_is_limited_for_everyone_and_only_that_sale() {
    let app = spawn_app_with(|s| {
        s.engine.sale_rate_per_sec = 1;
        s.engine.sale_burst = 3;
    })
    .await;
    let hot = wide_sale(&app).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(status_of(buy_from(&app, &hot, &format!("b{i}"), None).await).await);
    }
    let passed = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((passed, limited), (3, 2), "{statuses:?}");
    let other = wide_sale(&app).await;
    assert_eq!(
        status_of(buy_from(&app, &other, "b0", None).await).await,
        StatusCode::CREATED
    );
    app.stop().await;
}

const RATE: u32 = 5;
const BURST: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_one_buyers_limit() {
    let backends = Backends::new(Db::Postgres).await;
    let mut nodes = Vec::new();
    for i in 0..2u16 {
        nodes.push(Arc::new(
            spawn_app_with(|s| {
                backends.configure(s);
                s.engine.node_id = i + 1;
                s.lease_node_id = false;
                s.engine.user_rate_per_sec = RATE;
                s.engine.user_burst = BURST;
            })
            .await,
        ));
    }
    let sale = wide_sale(&nodes[0]).await;
    // The second node learns the sale on its first request.
    let passed = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..6 {
            let (node, sale) = (node.clone(), sale.clone());
            let (passed, limited) = (passed.clone(), limited.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    match status_of(buy_from(&node, &sale, "scalper", None).await).await {
                        StatusCode::CREATED => passed.fetch_add(1, Ordering::Relaxed),
                        StatusCode::TOO_MANY_REQUESTS => limited.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected {other}"),
                    };
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let (passed, limited) = (
        passed.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
    );
    let bound = (f64::from(RATE) * secs + f64::from(BURST)).ceil() as u64 + 2;
    assert!(limited > 0, "the flood was limited at all");
    assert!(
        passed <= bound,
        "{passed} passed in {secs:.2} s over two nodes (bound {bound}; per node it would be ~2x)"
    );
    assert!(passed >= u64::from(BURST), "{passed} passed");
    // Both nodes answered 201s and 429s from the shared limiter: another
    // buyer still passes on either node.
    for node in &nodes {
        assert_eq!(
            status_of(buy_from(node, &sale, "calm", None).await).await,
            StatusCode::CREATED
        );
    }
    for node in nodes {
        Arc::into_inner(node).unwrap().stop().await;
    }
    backends.cleanup().await;
}
