//! Signed webhooks (docs/WEBHOOKS.md): every order event of a sale reaches
//! a local receiver that checks each signature and timestamp, fails the
//! first attempts of every event and is stopped and restarted mid-way;
//! none is lost across a `kill -9` of the service with deliveries pending;
//! several nodes on one SQL database deliver each event once; an event
//! whose attempts run out is dead in the admin's delivery log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode as HttpStatus};
use base64::Engine as _;
use flashsale::auth::Secret;
use flashsale::worker::webhooks::WebhookSettings;
use flashsale::Settings;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::task::JoinSet;

use crate::kit::{
    assert_error, eventually, json_ok, json_status, num, spawn_app_with, start_binary_with,
    time_in, token, unique_admin_token, Backends, Db, TestApp,
};

/// The shop's secret, in the Standard Webhooks form.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---------------------------------------------------------------------------
// The receiver: a small hyper server on a fixed port, stoppable.

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Attempts per event id (every POST, answered 500 or 200).
    attempts: HashMap<String, u32>,
    /// Accepted (200) deliveries per event id, with the payload.
    delivered: BTreeMap<String, Vec<Value>>,
    /// Requests whose signature or timestamp did not verify.
    bad: Vec<String>,
}

struct Receiver {
    addr: SocketAddr,
    /// Attempts answered 500 before the receiver accepts an event.
    fail_first: u32,
    /// How long each answer takes.
    delay: Duration,
    seen: Arc<Mutex<Seen>>,
    running: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

/// Checks one delivery the way a shop would (Standard Webhooks): the HMAC
/// of `id.timestamp.body` under the decoded secret, among the `v1,`
/// signatures of the header, and a timestamp within five minutes.
fn verify(headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("no {name} header"))
    };
    let id = get("webhook-id")?;
    let timestamp = get("webhook-timestamp")?;
    let signatures = get("webhook-signature")?;
    let ts: i64 = timestamp.parse().map_err(|_| "bad timestamp".to_owned())?;
    let now = chrono::Utc::now().timestamp();
    if (now - ts).abs() > 300 {
        return Err(format!("timestamp {ts} is {}s off", now - ts));
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    let ok = signatures.split(' ').any(|sig| {
        sig.strip_prefix("v1,")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .is_some_and(|given| {
                // Constant-time, as a shop should compare.
                let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
                mac.update(format!("{id}.{timestamp}.").as_bytes());
                mac.update(body);
                mac.verify_slice(&given).is_ok() && given[..] == expected[..]
            })
    });
    if !ok {
        return Err(format!("signature of {id} does not verify"));
    }
    Ok(id.to_owned())
}

impl Receiver {
    /// A receiver on a free port, not yet listening.
    fn new(fail_first: u32) -> Self {
        let port = crate::kit::free_port();
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            fail_first,
            delay: Duration::ZERO,
            seen: Arc::default(),
            running: None,
        }
    }

    /// A receiver whose every answer takes `delay`.
    fn slow(fail_first: u32, delay: Duration) -> Self {
        Self {
            delay,
            ..Self::new(fail_first)
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/flashsale", self.addr)
    }

    /// Listens (again) on the same port.
    async fn start(&mut self) {
        assert!(self.running.is_none(), "the receiver already runs");
        let listener = {
            let mut tries = 0;
            loop {
                match tokio::net::TcpListener::bind(self.addr).await {
                    Ok(l) => break l,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("rebinding the receiver on {}: {e}", self.addr),
                }
            }
        };
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let seen = self.seen.clone();
        let fail_first = self.fail_first;
        let delay = self.delay;
        let task = tokio::spawn(async move {
            // Connections live in this set: stopping aborts them all, so a
            // stopped receiver keeps no kept-alive connection answering.
            let mut conns = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut stop_rx => break,
                };
                let Ok((stream, _)) = accepted else { continue };
                let seen = seen.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let seen = seen.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            Ok::<_, std::convert::Infallible>(answer(req, &seen, fail_first).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            conns.abort_all();
        });
        self.running = Some((stop_tx, task));
    }

    /// Stops listening and drops every open connection.
    async fn stop(&mut self) {
        let (tx, task) = self.running.take().expect("the receiver runs");
        let _ = tx.send(());
        task.await.expect("the receiver stopped");
    }

    fn delivered(&self) -> BTreeMap<String, Vec<Value>> {
        self.seen.lock().unwrap().delivered.clone()
    }

    fn attempts(&self) -> u32 {
        self.seen.lock().unwrap().attempts.values().sum()
    }

    fn assert_all_verified(&self) {
        let seen = self.seen.lock().unwrap();
        assert!(seen.bad.is_empty(), "bad deliveries: {:?}", seen.bad);
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    seen: &Mutex<Seen>,
    fail_first: u32,
) -> hyper::Response<String> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(axum::body::Body::new(body), 1 << 20)
        .await
        .unwrap_or_default();
    let respond = |status: HttpStatus| {
        let mut r = hyper::Response::new(String::new());
        *r.status_mut() = status;
        r
    };
    if parts.method != hyper::Method::POST || parts.uri.path() != "/hooks/flashsale" {
        seen.lock()
            .unwrap()
            .bad
            .push(format!("{} {}", parts.method, parts.uri));
        return respond(HttpStatus::NOT_FOUND);
    }
    let id = match verify(&parts.headers, &body) {
        Ok(id) => id,
        Err(why) => {
            seen.lock().unwrap().bad.push(why);
            return respond(HttpStatus::BAD_REQUEST);
        }
    };
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            seen.lock()
                .unwrap()
                .bad
                .push(format!("{id}: body is not JSON: {e}"));
            return respond(HttpStatus::BAD_REQUEST);
        }
    };
    let mut seen = seen.lock().unwrap();
    let n = seen.attempts.entry(id.clone()).or_default();
    *n += 1;
    if *n <= fail_first {
        return respond(HttpStatus::INTERNAL_SERVER_ERROR);
    }
    seen.delivered.entry(id).or_default().push(payload);
    respond(HttpStatus::OK)
}

// ---------------------------------------------------------------------------
// Helpers.

/// Fast retries for tests: 20 ms doubling up to 300 ms.
fn webhook_settings(url: &str, max_attempts: u32) -> WebhookSettings {
    WebhookSettings {
        timeout: Duration::from_secs(2),
        max_attempts,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        ..WebhookSettings::new(url.parse().unwrap(), Secret::new(SECRET))
    }
}

fn configure(s: &mut Settings, url: &str, max_attempts: u32) {
    s.webhooks = Some(webhook_settings(url, max_attempts));
    s.sweep_interval = Duration::from_millis(100);
}

/// The flags of the real binary for the same settings.
fn webhook_flags(url: &str) -> Vec<String> {
    [
        "--webhook-url",
        url,
        "--webhook-secret",
        SECRET,
        "--webhook-timeout-ms",
        "2000",
        "--webhook-backoff-ms",
        "20",
        "--webhook-backoff-max-ms",
        "300",
        "--sweep-interval-ms",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The admin's delivery log, every page.
async fn delivery_log(app: &TestApp, status: Option<&str>) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", "3".to_owned())];
        if let Some(s) = status {
            query.push(("status", s.to_owned()));
        }
        if let Some(a) = &after {
            query.push(("after", a.clone()));
        }
        let page = json_ok(
            app.client
                .get(app.url("/api/v1/admin/webhooks"))
                .bearer_auth(&app.admin_token)
                .query(&query)
                .send()
                .await
                .expect("reading the delivery log"),
        )
        .await;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => return items,
        }
    }
}

fn event_id(order_id: &str, kind: &str) -> String {
    format!("evt_{order_id}_{kind}")
}

/// A sale with a 1 s payment window: buyers `prefix-0..2` buy; 0 pays, 1
/// cancels, 2's order expires. Returns the events that must be delivered
/// (event id → type and buyer).
async fn small_sale(app: &TestApp, prefix: &str) -> BTreeMap<String, (&'static str, String)> {
    let sale = app
        .create_sale(json!({
            "item": "phone",
            "stock": 10,
            "per_user_limit": 1,
            "starts_at": time_in(-60),
            "payment_window_secs": 1,
        }))
        .await;
    let sale_id = sale["id"].as_str().unwrap().to_owned();
    let mut orders = Vec::new();
    for i in 0..3 {
        let user = format!("{prefix}-{i}");
        let order = json_status(app.buy(&sale_id, &user).await, StatusCode::CREATED).await;
        orders.push((user, order["order_id"].as_str().unwrap().to_owned()));
    }
    let mut expected = BTreeMap::new();
    for (user, id) in &orders {
        expected.insert(event_id(id, "accepted"), ("order.accepted", user.clone()));
    }
    // In the distributed mode an order reaches the database through the
    // queue: pay and cancel once it is there.
    let settle = |path: &'static str, (user, id): (String, String)| async move {
        eventually(Duration::from_secs(10), "the order is stored", || {
            let (user, id) = (user.clone(), id.clone());
            async move {
                let resp = app
                    .client
                    .post(app.url(&format!("/api/v1/orders/{id}/{path}")))
                    .bearer_auth(token(&user))
                    .send()
                    .await
                    .ok()?;
                (resp.status() == StatusCode::OK).then_some(())
            }
        })
        .await
    };
    settle("pay", orders[0].clone()).await;
    expected.insert(
        event_id(&orders[0].1, "paid"),
        ("order.paid", orders[0].0.clone()),
    );
    settle("cancel", orders[1].clone()).await;
    expected.insert(
        event_id(&orders[1].1, "cancelled"),
        ("order.cancelled", orders[1].0.clone()),
    );
    // The third order's deadline passes; the sweeper expires it.
    let (user, id) = orders[2].clone();
    eventually(Duration::from_secs(10), "the unpaid order expires", || {
        let (app, user, id) = (app, user.clone(), id.clone());
        async move {
            let order = json_ok(app.get_order(&id, &token(&user)).await).await;
            (order["status"] == "expired").then_some(())
        }
    })
    .await;
    expected.insert(event_id(&id, "expired"), ("order.expired", user));
    expected
}

/// Waits until the receiver accepted every expected event, then checks each
/// payload names its order, user and status.
async fn wait_delivered(
    receiver: &Receiver,
    expected: &BTreeMap<String, (&'static str, String)>,
    limit: Duration,
) -> BTreeMap<String, Vec<Value>> {
    let ids: BTreeSet<&String> = expected.keys().collect();
    let delivered = eventually(limit, "every event delivered", || async {
        let delivered = receiver.delivered();
        ids.iter()
            .all(|id| delivered.contains_key(*id))
            .then_some(delivered)
    })
    .await;
    for (id, (kind, user)) in expected {
        for payload in &delivered[id] {
            assert_eq!(payload["id"], id.as_str(), "{payload}");
            assert_eq!(payload["type"], *kind, "{payload}");
            assert_eq!(payload["data"]["user_id"], user.as_str(), "{payload}");
            let status = match *kind {
                "order.accepted" => "pending_payment",
                other => other.strip_prefix("order.").unwrap(),
            };
            assert_eq!(payload["data"]["status"], status, "{payload}");
            assert!(id.starts_with(&format!(
                "evt_{}_",
                payload["data"]["order_id"].as_str().unwrap()
            )));
        }
    }
    receiver.assert_all_verified();
    delivered
}

// ---------------------------------------------------------------------------
// The tests.

/// Embedded default: every event of a small sale delivered, through two
/// refused attempts per event and a receiver stopped and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_through_failures_and_a_receiver_restart() {
    delivers_through_failures_and_a_restart(|_| {}).await;
}

/// The same on one node over MariaDB (`--database mysql://…`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_over_mysql_through_failures_and_a_receiver_restart() {
    let backends = Backends::new(Db::MySql).await;
    let url = backends.db_url.clone();
    delivers_through_failures_and_a_restart(move |s| s.database = Some(url)).await;
    backends.cleanup().await;
}

async fn delivers_through_failures_and_a_restart(backend: impl FnOnce(&mut Settings)) {
    let mut receiver = Receiver::new(2);
    receiver.start().await;
    let url = receiver.url();
    let app = spawn_app_with(|s| {
        backend(s);
        configure(s, &url, 50);
    })
    .await;

    let mut expected = small_sale(&app, "w").await;
    // Mid-way: the receiver goes away while events are still pending.
    receiver.stop().await;
    let sale2 = app.open_sale(5, 1).await;
    for i in 0..3 {
        let order = json_status(
            app.buy(&sale2, &format!("late-{i}")).await,
            StatusCode::CREATED,
        )
        .await;
        expected.insert(
            event_id(order["order_id"].as_str().unwrap(), "accepted"),
            ("order.accepted", format!("late-{i}")),
        );
    }
    // Attempts fail against the closed port for a while…
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pending = delivery_log(&app, Some("pending")).await;
    assert!(
        !pending.is_empty(),
        "events are pending while the receiver is down"
    );
    assert!(
        pending.iter().any(|d| d["last_error"].is_string()),
        "a failed attempt is in the log: {pending:?}"
    );
    // …then it comes back on the same port.
    receiver.start().await;
    let delivered = wait_delivered(&receiver, &expected, Duration::from_secs(30)).await;
    // Exactly the expected events (no stray ones), each accepted once.
    assert_eq!(
        delivered.keys().collect::<BTreeSet<_>>(),
        expected.keys().collect::<BTreeSet<_>>()
    );
    assert!(delivered.values().all(|p| p.len() == 1), "{delivered:?}");
    assert!(receiver.attempts() >= 3 * expected.len() as u32);

    // The admin's log: every event delivered after at least three attempts,
    // last status 200, no next attempt.
    let log = eventually(
        Duration::from_secs(10),
        "the log shows delivery",
        || async {
            let log = delivery_log(&app, None).await;
            log.iter().all(|d| d["state"] == "delivered").then_some(log)
        },
    )
    .await;
    assert_eq!(log.len(), expected.len());
    for line in &log {
        let id = line["event_id"].as_str().unwrap();
        assert_eq!(line["event_type"], expected[id].0, "{line}");
        assert!(num(line, "attempts") >= 3, "{line}");
        assert_eq!(line["last_status"], 200, "{line}");
        assert!(line["next_attempt_at"].is_null(), "{line}");
        assert!(id.starts_with(&format!("evt_{}_", line["order_id"].as_str().unwrap())));
    }
    let ids: Vec<_> = log
        .iter()
        .map(|l| l["event_id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "the log is ordered by event id");
    assert!(delivery_log(&app, Some("dead")).await.is_empty());
    receiver.stop().await;
    app.stop().await;
}

/// The delivery log is the admin's, and its filters are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_needs_the_admin_token_and_valid_filters() {
    let app = spawn_app_with(|s| configure(s, "http://127.0.0.1:9/", 1)).await;
    let url = app.url("/api/v1/admin/webhooks");
    let anonymous = app.client.get(&url).send().await.unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let buyer = app
        .client
        .get(&url)
        .bearer_auth(token("eve"))
        .send()
        .await
        .unwrap();
    assert_error(buyer, StatusCode::FORBIDDEN, "forbidden").await;
    for query in [
        [("status", "lost")],
        [("limit", "0")],
        [("limit", "1001")],
        [("after", "evt_1\u{0}")],
        [("after", "évt")],
    ] {
        let bad = app
            .client
            .get(&url)
            .bearer_auth(&app.admin_token)
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_error(bad, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let empty = json_ok(
        app.client
            .get(&url)
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(empty, json!({"items": [], "next_cursor": null}));
}

/// An event whose every attempt fails is dead after the configured number
/// of attempts, and stays in the log with its last status and error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_attempts_run_out_is_dead_in_the_log() {
    let mut receiver = Receiver::new(u32::MAX);
    receiver.start().await;
    let url = receiver.url();
    let app = spawn_app_with(|s| configure(s, &url, 3)).await;
    let sale = app.open_sale(1, 1).await;
    let order = json_status(app.buy(&sale, "doomed").await, StatusCode::CREATED).await;
    let id = event_id(order["order_id"].as_str().unwrap(), "accepted");
    let dead = eventually(Duration::from_secs(20), "the event is dead", || async {
        delivery_log(&app, Some("dead"))
            .await
            .into_iter()
            .find(|d| d["event_id"] == id.as_str())
    })
    .await;
    assert_eq!(num(&dead, "attempts"), 3, "{dead}");
    assert_eq!(dead["last_status"], 500, "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("500"),
        "{dead}"
    );
    assert!(dead["next_attempt_at"].is_null(), "{dead}");
    // Nothing more is sent.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.attempts(), 3);
    assert!(receiver.delivered().is_empty());
    receiver.assert_all_verified();
    receiver.stop().await;
}

/// The real binary, `kill -9`'d with deliveries pending (the receiver is
/// down), loses none: after a restart every event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_deliveries_pending_loses_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::new(1);
    let url = receiver.url();
    let flags = webhook_flags(&url);
    let admin = unique_admin_token();
    let (mut child, app) = start_binary_with(dir.path(), &admin, |cmd| {
        cmd.args(&flags);
    })
    .await;
    // The receiver is down: every event stays pending.
    let sale = app.open_sale(100, 1).await;
    let mut expected = BTreeSet::new();
    for i in 0..20 {
        let user = format!("k-{i}");
        let order = json_status(app.buy(&sale, &user).await, StatusCode::CREATED).await;
        let order_id = order["order_id"].as_str().unwrap().to_owned();
        expected.insert(event_id(&order_id, "accepted"));
        if i % 4 == 0 {
            json_ok(app.pay(&order_id, &token(&user)).await).await;
            expected.insert(event_id(&order_id, "paid"));
        }
    }
    let pending = eventually(
        Duration::from_secs(10),
        "failed attempts logged",
        || async {
            let log = delivery_log(&app, Some("pending")).await;
            (log.len() == expected.len() && log.iter().all(|d| num(d, "attempts") >= 1))
                .then_some(log)
        },
    )
    .await;
    assert!(pending.iter().all(|d| d["last_status"].is_null()));
    child.start_kill().expect("sending SIGKILL");
    let status = child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL");

    receiver.start().await;
    let (_child, app) = start_binary_with(dir.path(), &admin, |cmd| {
        cmd.args(&flags);
    })
    .await;
    let delivered = eventually(Duration::from_secs(30), "every event delivered", || async {
        let delivered = receiver.delivered();
        expected
            .iter()
            .all(|id| delivered.contains_key(id))
            .then_some(delivered)
    })
    .await;
    assert_eq!(delivered.keys().cloned().collect::<BTreeSet<_>>(), expected);
    receiver.assert_all_verified();
    let log = eventually(
        Duration::from_secs(10),
        "the log shows delivery",
        || async {
            let log = delivery_log(&app, Some("delivered")).await;
            (log.len() == expected.len()).then_some(log)
        },
    )
    .await;
    assert!(log.iter().all(|d| d["last_status"] == 200));
    receiver.stop().await;
}

/// `kill -9` in the middle of deliveries — some delivered, some failed and
/// waiting, some in flight — loses none: after a restart every event is
/// delivered (a few perhaps twice: at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_loses_no_event() {
    let dir = tempfile::tempdir().unwrap();
    // Slow answers keep attempts in flight; the first one of each fails.
    let mut receiver = Receiver::slow(1, Duration::from_millis(150));
    receiver.start().await;
    let url = receiver.url();
    // A short timeout keeps the lease of an attempt cut by the kill short.
    let mut flags = webhook_flags(&url);
    let at = flags
        .iter()
        .position(|f| f == "--webhook-timeout-ms")
        .unwrap();
    flags[at + 1] = "1000".to_owned();
    let admin = unique_admin_token();
    let (mut child, app) = start_binary_with(dir.path(), &admin, |cmd| {
        cmd.args(&flags);
    })
    .await;
    let sale = app.open_sale(100, 1).await;
    let mut expected = BTreeSet::new();
    for i in 0..40 {
        let order = json_status(app.buy(&sale, &format!("m-{i}")).await, StatusCode::CREATED).await;
        expected.insert(event_id(order["order_id"].as_str().unwrap(), "accepted"));
    }
    eventually(Duration::from_secs(20), "a first delivery", || async {
        (!receiver.delivered().is_empty()).then_some(())
    })
    .await;
    child.start_kill().expect("sending SIGKILL");
    child.wait().await.unwrap();
    let before = receiver.delivered().len();
    assert!(
        before < expected.len(),
        "all delivered before the kill: nothing tested"
    );

    let (_child, _app) = start_binary_with(dir.path(), &admin, |cmd| {
        cmd.args(&flags);
    })
    .await;
    let delivered = eventually(Duration::from_secs(40), "every event delivered", || async {
        let delivered = receiver.delivered();
        expected
            .iter()
            .all(|id| delivered.contains_key(id))
            .then_some(delivered)
    })
    .await;
    assert_eq!(delivered.keys().cloned().collect::<BTreeSet<_>>(), expected);
    receiver.assert_all_verified();
    receiver.stop().await;
}

/// Two distributed nodes over PostgreSQL (Redis stock, RabbitMQ orders):
/// both run the dispatcher on one outbox; every event of a sale — orders
/// taken on either node, a pay, a cancel, an expiry — is delivered once,
/// through failures and a receiver restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_distributed_nodes_deliver_every_event_once() {
    let backends = Backends::new(Db::Postgres).await;
    let mut receiver = Receiver::new(1);
    receiver.start().await;
    let url = receiver.url();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(
            spawn_app_with(|s| {
                backends.configure(s);
                configure(s, &url, 50);
            })
            .await,
        );
    }
    let mut expected = small_sale(&nodes[0], "d").await;
    receiver.stop().await;
    let sale = nodes[1].open_sale(10, 1).await;
    for i in 0..4 {
        // Every node learns of the sale; buy on both.
        let node = &nodes[i % 2];
        let user = format!("dn-{i}");
        let order = eventually(Duration::from_secs(10), "the sale is known", || async {
            let resp = node.buy(&sale, &user).await;
            (resp.status() == StatusCode::CREATED).then_some(resp)
        })
        .await;
        let order = json_status(order, StatusCode::CREATED).await;
        expected.insert(
            event_id(order["order_id"].as_str().unwrap(), "accepted"),
            ("order.accepted", user),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.start().await;
    let delivered = wait_delivered(&receiver, &expected, Duration::from_secs(40)).await;
    assert_eq!(
        delivered.keys().collect::<BTreeSet<_>>(),
        expected.keys().collect::<BTreeSet<_>>()
    );
    // Claims exclude each other: no event was accepted twice.
    assert!(
        delivered.values().all(|p| p.len() == 1),
        "an event was delivered twice: {delivered:?}"
    );
    let log = delivery_log(&nodes[1], Some("delivered")).await;
    assert_eq!(log.len(), expected.len());
    receiver.stop().await;
    for node in nodes {
        node.stop().await;
    }
    backends.cleanup().await;
}

/// A webhook URL without a usable secret stops the start, naming the flag.
#[tokio::test]
async fn a_webhook_url_without_a_secret_is_refused_at_start() {
    for secret in ["", "whsec_not base64!"] {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::with_data_dir(dir.path());
        settings.listen = "127.0.0.1:0".parse().unwrap();
        settings.webhooks = Some(WebhookSettings::new(
            "http://127.0.0.1:9/".parse().unwrap(),
            Secret::new(secret),
        ));
        let err = flashsale::Application::build(settings)
            .await
            .err()
            .expect("the start is refused");
        assert!(format!("{err:#}").contains("--webhook-secret"), "{err:#}");
    }
}
