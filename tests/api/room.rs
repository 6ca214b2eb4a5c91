//! The waiting room over real HTTP: joining, order, rate, passes, the fair
//! draw of early arrivals, the sold-out broadcast, returned units, and the
//! room shared by two distributed nodes in Redis.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::kit::{
    assert_error, json_ok, spawn_app_with, time_in, token, Backends, Db, EventReader, TestApp,
};

fn room_sale(stock: u64, rate: u32, starts_in_secs: i64) -> Value {
    json!({
        "item": "room",
        "stock": stock,
        "per_user_limit": 1,
        "starts_at": time_in(starts_in_secs),
        "payment_window_secs": 600,
        "front_door": {"waiting_room": {"admit_per_sec": rate, "pass_ttl_secs": 60}},
    })
}

async fn create(app: &TestApp, body: Value) -> String {
    let sale = app.create_sale(body).await;
    sale["id"].as_str().unwrap().to_owned()
}

async fn join(app: &TestApp, sale: &str, user: &str) -> Value {
    let resp = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale}/queue")))
        .bearer_auth(token(user))
        .send()
        .await
        .unwrap();
    json_ok(resp).await
}

async fn poll(app: &TestApp, sale: &str, user: &str) -> Value {
    let resp = app
        .client
        .get(app.url(&format!("/api/v1/sales/{sale}/queue")))
        .bearer_auth(token(user))
        .send()
        .await
        .unwrap();
    json_ok(resp).await
}

/// Polls until `user` is admitted; returns the standing and when it was seen.
async fn until_admitted(
    app: &TestApp,
    sale: &str,
    user: &str,
    limit: Duration,
) -> (Value, Instant) {
    let started = Instant::now();
    loop {
        let s = poll(app, sale, user).await;
        if s["state"] == "admitted" {
            return (s, Instant::now());
        }
        assert!(started.elapsed() < limit, "{user} not admitted: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn buy_with_pass(
    app: &TestApp,
    sale: &str,
    user: &str,
    pass: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale}/purchase")))
        .bearer_auth(token(user))
        .json(&json!({"quantity": 1}));
    if let Some(pass) = pass {
        req = req.header("X-Flashsale-Pass", pass);
    }
    req.send().await.unwrap()
}

fn ms_of(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_are_let_in_first_come_first_served_at_the_rooms_rate() {
    let app = spawn_app_with(|_| {}).await;
    let sale = create(&app, room_sale(100, 5, -1)).await;
    let mut positions = Vec::new();
    for i in 0..10 {
        let s = join(&app, &sale, &format!("fcfs-{i}")).await;
        positions.push(s.clone());
    }
    // Joining again keeps the place.
    let again = join(&app, &sale, "fcfs-9").await;
    assert!(
        again["state"] == "admitted" || again["position"] == positions[9]["position"],
        "{again} vs {}",
        positions[9]
    );
    let mut expiries = Vec::new();
    for i in 0..10 {
        let (s, _) =
            until_admitted(&app, &sale, &format!("fcfs-{i}"), Duration::from_secs(10)).await;
        expiries.push(ms_of(&s["expires_at"]));
    }
    // Passes are dated by admission: in join order, spread by the rate
    // (10 buyers at 5/s: about 2 s from the first to the last).
    assert!(expiries.windows(2).all(|w| w[0] <= w[1]), "{expiries:?}");
    let spread = expiries[9] - expiries[0];
    assert!((1_300..=3_500).contains(&spread), "spread {spread} ms");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_needs_the_buyers_own_pass() {
    let app = spawn_app_with(|_| {}).await;
    let sale = create(&app, room_sale(10, 50, -1)).await;
    join(&app, &sale, "alice").await;
    join(&app, &sale, "bob").await;
    let (alice, _) = until_admitted(&app, &sale, "alice", Duration::from_secs(5)).await;
    let pass = alice["pass"].as_str().unwrap();
    assert_error(
        buy_with_pass(&app, &sale, "alice", None).await,
        StatusCode::FORBIDDEN,
        "pass_required",
    )
    .await;
    assert_error(
        buy_with_pass(&app, &sale, "bob", Some(pass)).await,
        StatusCode::FORBIDDEN,
        "pass_required",
    )
    .await;
    assert_error(
        buy_with_pass(&app, &sale, "alice", Some("a1.1.1.xyz")).await,
        StatusCode::FORBIDDEN,
        "pass_required",
    )
    .await;
    let resp = buy_with_pass(&app, &sale, "alice", Some(pass)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // A sale without a room has no queue, and buys as before.
    let plain = app.open_sale(5, 1).await;
    let resp = app
        .client
        .post(app.url(&format!("/api/v1/sales/{plain}/queue")))
        .bearer_auth(token("carol"))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(app.buy(&plain, "carol").await.status(), StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_arrivals_are_drawn_fairly_at_the_start() {
    let app = spawn_app_with(|_| {}).await;
    // A slow room, so the places drawn at the start can be read.
    let sale = create(&app, room_sale(100, 1, 2)).await;
    let n = 40;
    for i in 0..n {
        let s = join(&app, &sale, &format!("early-{i}")).await;
        assert_eq!(s["state"], "drawing", "{s}");
    }
    // Nobody is let in before the start, and a purchase is refused.
    assert_error(
        buy_with_pass(&app, &sale, "early-0", None).await,
        StatusCode::FORBIDDEN,
        "not_started",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let mut places = Vec::new();
    for i in 0..n {
        let s = poll(&app, &sale, &format!("early-{i}")).await;
        match s["state"].as_str() {
            // Let in already (one a second): the front of the line.
            Some("admitted") => places.push((0, i)),
            Some("waiting") => places.push((s["position"].as_u64().unwrap(), i)),
            _ => panic!("early-{i}: {s}"),
        }
    }
    let mut positions: Vec<u64> = places.iter().map(|p| p.0).filter(|&p| p > 0).collect();
    positions.sort_unstable();
    positions.dedup();
    assert!(
        positions.len() >= n - 4,
        "places are not distinct: {places:?}"
    );
    // The draw is a shuffle: the line is not arrival order (the chance
    // that 40 drawn buyers come out in arrival order is 1/40!).
    let mut by_place = places.clone();
    by_place.sort_unstable();
    let order: Vec<usize> = by_place.iter().map(|&(_, i)| i).collect();
    assert_ne!(order, (0..n).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sold_out_moment_reaches_every_waiting_stream_and_a_returned_unit_lets_the_next_in() {
    let app = spawn_app_with(|_| {}).await;
    // Two units, a slow room: the first two buyers get in, the rest wait.
    let sale = create(&app, room_sale(2, 2, -1)).await;
    let mut streams = Vec::new();
    for i in 0..6 {
        let resp = app
            .client
            .get(app.url(&format!(
                "/api/v1/sales/{sale}/queue/events?access_token={}",
                token(&format!("sse-{i}"))
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        streams.push(EventReader::new(Box::pin(resp.bytes_stream())));
    }
    let mut passes = Vec::new();
    for (i, s) in streams.iter_mut().take(2).enumerate() {
        let ev = s
            .until("admitted", Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("sse-{i} never admitted"));
        passes.push(ev["pass"].as_str().unwrap().to_owned());
    }
    // The room keeps no more passes out than units left: nobody else is in.
    assert_eq!(poll(&app, &sale, "sse-2").await["state"], "waiting");
    let mut orders = Vec::new();
    for (i, pass) in passes.iter().enumerate() {
        let resp = buy_with_pass(&app, &sale, &format!("sse-{i}"), Some(pass)).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        orders.push(resp.json::<Value>().await.unwrap());
    }
    let sold_at = Instant::now();
    for (i, s) in streams.iter_mut().enumerate().skip(2) {
        assert!(
            s.until("sold_out", Duration::from_secs(2)).await.is_some(),
            "sse-{i} was not told sold out"
        );
    }
    assert!(sold_at.elapsed() < Duration::from_secs(2));
    // The room is closed to newcomers.
    let resp = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale}/queue")))
        .bearer_auth(token("latecomer"))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::CONFLICT, "sold_out").await;
    // A cancelled order returns its unit: the next buyer in line is let in.
    let order_id = orders[0]["order_id"].as_str().unwrap();
    let resp = app.cancel(order_id, &token("sse-0")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ev = streams[2].until("admitted", Duration::from_secs(5)).await;
    assert!(ev.is_some(), "the next buyer was not let in");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_distributed_nodes_share_one_line_and_one_rate() {
    let backends = Backends::new(Db::Postgres).await;
    let nodes = backends.nodes(2).await;
    let sale = create(&nodes[0], room_sale(100, 5, -1)).await;
    // Joins alternate between the nodes; the line is one.
    for i in 0..10 {
        let s = join(&nodes[i % 2], &sale, &format!("d-{i}")).await;
        assert!(s["state"] == "waiting" || s["state"] == "admitted", "{s}");
    }
    let mut expiries = Vec::new();
    for i in 0..10 {
        // Polled on the other node than the one joined.
        let (s, _) = until_admitted(
            &nodes[(i + 1) % 2],
            &sale,
            &format!("d-{i}"),
            Duration::from_secs(10),
        )
        .await;
        expiries.push(ms_of(&s["expires_at"]));
    }
    assert!(expiries.windows(2).all(|w| w[0] <= w[1]), "{expiries:?}");
    // Two nodes ticking still admit 5/s in all (not 10/s): ~2 s for 10.
    let spread = expiries[9] - expiries[0];
    assert!((1_300..=3_500).contains(&spread), "spread {spread} ms");
    // A pass from one node buys on the other.
    let (s, _) = until_admitted(&nodes[0], &sale, "d-3", Duration::from_secs(1)).await;
    let resp = buy_with_pass(&nodes[1], &sale, "d-3", s["pass"].as_str()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    for n in nodes {
        n.stop().await;
    }
    backends.cleanup().await;
}
