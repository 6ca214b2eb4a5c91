//! An admin opens a sale early or closes it early
//! (`POST /api/v1/sales/{id}/open`, `…/close`): on one embedded node
//! (answers, idempotence, the `409 ended`, the fast lane, the waiting room,
//! a restart), and over two distributed nodes, where a move made on one
//! node holds on the other within a second or two.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::kit::{
    assert_error, eventually, json_ok, json_status, spawn_app, spawn_app_on, time_in, token,
    Backends, Db, TestApp,
};

/// A sale that opens in an hour and ends in two.
fn upcoming_body(stock: u64) -> Value {
    json!({
        "item": "early bird",
        "stock": stock,
        "per_user_limit": 1,
        "starts_at": time_in(3600),
        "ends_at": time_in(7200),
    })
}

async fn create(app: &TestApp, body: Value) -> String {
    app.create_sale(body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("an RFC 3339 time"))
        .unwrap()
        .timestamp_millis()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upcoming_sale_opened_now_sells_and_opening_again_changes_nothing() {
    let app = spawn_app().await;
    let sale = create(&app, upcoming_body(5)).await;
    assert_error(
        app.buy(&sale, "early").await,
        StatusCode::FORBIDDEN,
        "not_started",
    )
    .await;

    let before = now_ms();
    let opened = app.open_now(&sale).await;
    assert_eq!(opened["status"], "open", "{opened}");
    let starts = ms(&opened["starts_at"]);
    assert!(
        (before - 5..=now_ms() + 5).contains(&starts),
        "starts_at is now: {opened}"
    );
    let ends = ms(&opened["ends_at"]);
    assert!(ends > now_ms() + 7_000_000, "ends_at is kept: {opened}");
    // The body is the sale's, as GET answers it.
    assert_eq!(app.sale(&sale).await, opened);
    json_status(app.buy(&sale, "first").await, StatusCode::CREATED).await;

    // Idempotent: an open sale answers 200, unchanged.
    let again = app.open_now(&sale).await;
    assert_eq!(again["starts_at"], opened["starts_at"]);
    assert_eq!(again["ends_at"], opened["ends_at"]);
    assert_eq!(again["remaining"], 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_sale_closed_now_refuses_buyers_on_every_path() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 1).await;
    json_status(app.buy(&sale, "in-time").await, StatusCode::CREATED).await;
    let keyed = app
        .purchase(&sale, &token("keyed"), None, Some("before-close"))
        .await;
    json_status(keyed, StatusCode::CREATED).await;

    let before = now_ms();
    let closed = app.close_now(&sale).await;
    assert_eq!(closed["status"], "ended", "{closed}");
    let ends = ms(&closed["ends_at"]);
    assert!((before - 5..=now_ms() + 5).contains(&ends), "{closed}");
    // No body (the fast lane's shape), a JSON body, and a fresh key: all
    // get the normal `ended` rejection.
    assert_error(app.buy(&sale, "late").await, StatusCode::FORBIDDEN, "ended").await;
    let with_body = app
        .purchase(&sale, &token("late-2"), Some(json!({"quantity": 1})), None)
        .await;
    assert_error(with_body, StatusCode::FORBIDDEN, "ended").await;
    let fresh_key = app
        .purchase(&sale, &token("late-3"), None, Some("after-close"))
        .await;
    assert_error(fresh_key, StatusCode::FORBIDDEN, "ended").await;
    // An earlier acceptance still replays under its key.
    let replay = app
        .purchase(&sale, &token("keyed"), None, Some("before-close"))
        .await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");

    // Idempotent: an ended sale answers 200, unchanged.
    let again = app.close_now(&sale).await;
    assert_eq!(again["ends_at"], closed["ends_at"]);
    assert_eq!(again["status"], "ended");
    let stats = app.stats(&sale).await;
    assert_eq!(stats["sold"], 2, "{stats}");
    assert!(stats["rejected"]["ended"].as_u64().unwrap() >= 3, "{stats}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_an_ended_sale_is_a_conflict_and_buyers_cannot_move_a_window() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 1).await;
    app.close_now(&sale).await;
    let body = assert_error(
        app.move_window(&sale, "open", None).await,
        StatusCode::CONFLICT,
        "ended",
    )
    .await;
    assert_eq!(body["error"]["message"], "the sale has ended");
    assert_eq!(app.sale(&sale).await["status"], "ended");

    // An upcoming sale closed before it opened ends, and stays ended.
    let upcoming = create(&app, upcoming_body(3)).await;
    let closed = app.close_now(&upcoming).await;
    assert_eq!(closed["status"], "ended", "{closed}");
    assert_eq!(closed["starts_at"], closed["ends_at"], "an empty window");
    assert_error(
        app.buy(&upcoming, "x").await,
        StatusCode::FORBIDDEN,
        "ended",
    )
    .await;
    assert_error(
        app.move_window(&upcoming, "open", None).await,
        StatusCode::CONFLICT,
        "ended",
    )
    .await;

    let open = app.open_sale(10, 1).await;
    for action in ["open", "close"] {
        let buyer = token("not-an-admin");
        assert_error(
            app.move_window(&open, action, Some(&buyer)).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_error(
            app.move_window(&open, action, Some("garbage")).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        assert_error(
            app.move_window("4242424242", action, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        // As every route with an id: one that is not a number is not found.
        assert_error(
            app.move_window("not-a-number", action, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    assert_eq!(
        app.sale(&open).await["status"],
        "open",
        "buyers moved nothing"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_window_survives_a_restart() {
    let app = spawn_app().await;
    let opened = create(&app, upcoming_body(5)).await;
    let opened_body = app.open_now(&opened).await;
    let closed = app.open_sale(5, 1).await;
    let closed_body = app.close_now(&closed).await;
    let dir = app.stop().await;

    let app = spawn_app_on(dir).await;
    let after = app.sale(&opened).await;
    assert_eq!(after["starts_at"], opened_body["starts_at"]);
    assert_eq!(after["status"], "open");
    json_status(app.buy(&opened, "after-restart").await, StatusCode::CREATED).await;
    let after = app.sale(&closed).await;
    assert_eq!(after["ends_at"], closed_body["ends_at"]);
    assert_eq!(after["status"], "ended");
    assert_error(
        app.buy(&closed, "late").await,
        StatusCode::FORBIDDEN,
        "ended",
    )
    .await;
    app.stop().await;
}

/// Closing a sale with a waiting room tells every waiter it ended (the
/// room's view turns `ended`), turns newcomers away, and a pass already
/// handed out buys nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_sale_tells_its_waiting_room_it_ended() {
    let app = spawn_app().await;
    room_hears_the_close(&app, &app).await;
    app.stop().await;
}

/// The same over two distributed nodes (the room in Redis): closed on node
/// A, the buyers waiting on node B are told within a second or two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_a_sale_on_one_node_tells_the_room_on_the_other() {
    let backends = Backends::new(Db::Postgres).await;
    let nodes = backends.nodes(2).await;
    room_hears_the_close(&nodes[0], &nodes[1]).await;
    for node in nodes {
        node.stop().await;
    }
    backends.cleanup().await;
}

/// Buyers wait in a room on `buyers`; `admin` closes the sale.
async fn room_hears_the_close(admin: &TestApp, buyers: &TestApp) {
    let sale = create(
        admin,
        json!({
            "item": "room",
            "stock": 100,
            "per_user_limit": 1,
            "starts_at": time_in(-1),
            "front_door": {"waiting_room": {"admit_per_sec": 1, "pass_ttl_secs": 60}},
        }),
    )
    .await;
    let queue = |user: &str| {
        buyers
            .client
            .post(buyers.url(&format!("/api/v1/sales/{sale}/queue")))
            .bearer_auth(token(user))
    };
    let poll = |user: &str| {
        buyers
            .client
            .get(buyers.url(&format!("/api/v1/sales/{sale}/queue")))
            .bearer_auth(token(user))
    };
    for i in 0..5 {
        json_ok(queue(&format!("waiter-{i}")).send().await.unwrap()).await;
    }
    let admitted: Value = eventually(Duration::from_secs(5), "a buyer let in", || async {
        let s = json_ok(poll("waiter-0").send().await.unwrap()).await;
        (s["state"] == "admitted").then_some(s)
    })
    .await;
    let pass = admitted["pass"].as_str().unwrap().to_owned();
    let waiting = json_ok(poll("waiter-4").send().await.unwrap()).await;
    assert_eq!(waiting["state"], "waiting", "{waiting}");

    admin.close_now(&sale).await;
    eventually(
        Duration::from_secs(2),
        "the waiter told it ended",
        || async {
            let s = json_ok(poll("waiter-4").send().await.unwrap()).await;
            (s["state"] == "ended").then_some(())
        },
    )
    .await;
    assert_error(
        queue("newcomer").send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "ended",
    )
    .await;
    let with_pass = buyers
        .client
        .post(buyers.url(&format!("/api/v1/sales/{sale}/purchase")))
        .bearer_auth(token("waiter-0"))
        .header("X-Flashsale-Pass", pass)
        .send()
        .await
        .unwrap();
    assert_error(with_pass, StatusCode::FORBIDDEN, "ended").await;
}

/// Two distributed nodes: a sale opened on node A sells on node B within
/// a second or two (B's early answers mirror the window from Redis, and
/// Redis decides); a close on A makes B refuse with `ended`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_window_moved_on_one_node_holds_on_the_other_over_postgres() {
    moved_on_one_node_holds_on_the_other(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_window_moved_on_one_node_holds_on_the_other_over_mysql() {
    moved_on_one_node_holds_on_the_other(Db::MySql).await;
}

async fn moved_on_one_node_holds_on_the_other(db: Db) {
    let backends = Backends::new(db).await;
    let nodes = backends.nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let sale = create(a, upcoming_body(10)).await;
    // B knows the sale (read from the database) and refuses it as upcoming.
    assert_error(
        b.buy(&sale, "early").await,
        StatusCode::FORBIDDEN,
        "not_started",
    )
    .await;

    a.open_now(&sale).await;
    let opened = std::time::Instant::now();
    for n in 0.. {
        let resp = b.buy(&sale, &format!("b-buyer-{n}")).await;
        match resp.status() {
            StatusCode::CREATED => break,
            StatusCode::FORBIDDEN => {
                assert!(
                    opened.elapsed() < Duration::from_secs(2),
                    "node B still refuses 2 s after the opening: {}",
                    resp.text().await.unwrap()
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => panic!("unexpected {other}: {}", resp.text().await.unwrap()),
        }
    }
    let took = opened.elapsed();
    eprintln!("node B sold {took:?} after node A opened the sale");
    assert_eq!(b.sale(&sale).await["status"], "open");

    a.close_now(&sale).await;
    // Redis decides by the window it holds: B refuses at once, whether its
    // own early check has caught up yet or not.
    assert_error(b.buy(&sale, "late-1").await, StatusCode::FORBIDDEN, "ended").await;
    let keyed = b
        .purchase(&sale, &token("late-2"), None, Some("after-close"))
        .await;
    assert_error(keyed, StatusCode::FORBIDDEN, "ended").await;
    eventually(Duration::from_secs(2), "node B's view ended", || async {
        (b.sale(&sale).await["status"] == "ended").then_some(())
    })
    .await;
    // Opening it again is refused on either node.
    for node in [a, b] {
        assert_error(
            node.move_window(&sale, "open", None).await,
            StatusCode::CONFLICT,
            "ended",
        )
        .await;
    }
    let rows = backends
        .wait_for_orders(&sale, 1, Duration::from_secs(30))
        .await;
    assert_eq!(rows.len(), 1, "one order, inside the window");
    for node in nodes {
        node.stop().await;
    }
    backends.cleanup().await;
}
