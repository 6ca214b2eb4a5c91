//! The anti-bot front door over real HTTP: purchase tickets, proof-of-work
//! challenges, the external captcha (against a stub verify service started
//! here), one purchase in flight per buyer; and a ticket from one
//! distributed node bought with on another.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashsale::auth::Secret;
use flashsale::engine::admission::pow::solve;
use flashsale::engine::admission::CaptchaSettings;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::kit::{
    assert_error, json_ok, json_status, open_sale_body, spawn_app, spawn_app_with, time_in, token,
    Backends, Db, TestApp,
};

/// A sale open since a minute ago with these front-door options.
async fn door_sale(app: &TestApp, per_user_limit: u32, front_door: Value) -> String {
    let mut body = open_sale_body(100, per_user_limit);
    body["front_door"] = front_door;
    let sale = app.create_sale(body).await;
    sale["id"].as_str().unwrap().to_owned()
}

/// A purchase by `user` with these extra headers.
async fn buy_with(app: &TestApp, sale: &str, user: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale}/purchase")))
        .bearer_auth(token(user));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("POST purchase")
}

async fn get_as(app: &TestApp, path: &str, user: &str) -> Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token(user))
        .send()
        .await
        .expect("GET")
}

async fn ticket_of(app: &TestApp, sale: &str, user: &str) -> String {
    let resp = get_as(app, &format!("/api/v1/sales/{sale}/ticket"), user).await;
    assert_eq!(
        resp.headers()
            .get(reqwest::header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let body = json_ok(resp).await;
    let expires = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap())
        .expect("expires_at is RFC 3339");
    assert!(expires > chrono::Utc::now());
    body["ticket"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_ticket_sale_sells_only_with_the_buyers_own_ticket() {
    let app = spawn_app().await;
    let sale = door_sale(&app, 2, json!({"ticket": true})).await;
    // Blind purchases (the classic script fired at the start) are refused.
    assert_error(
        buy_with(&app, &sale, "alice", &[]).await,
        StatusCode::FORBIDDEN,
        "ticket_required",
    )
    .await;
    let ticket = ticket_of(&app, &sale, "alice").await;
    // Someone else's ticket, a mangled one, garbage: refused.
    for bad in [
        ticket.as_str(),
        &ticket[..ticket.len() - 1],
        "t1.1.1.x",
        "nonsense",
    ] {
        let user = if bad == ticket { "bob" } else { "alice" };
        assert_error(
            buy_with(&app, &sale, user, &[("X-Flashsale-Ticket", bad)]).await,
            StatusCode::FORBIDDEN,
            "ticket_required",
        )
        .await;
    }
    let order = json_status(
        buy_with(&app, &sale, "alice", &[("X-Flashsale-Ticket", &ticket)]).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(order["user_id"], "alice");
    // The ticket endpoint wants a buyer.
    let anonymous = app
        .client
        .get(app.url(&format!("/api/v1/sales/{sale}/ticket")))
        .send()
        .await
        .unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    app.stop().await;
}

#[tokio::test]
async fn tickets_are_handed_out_only_from_the_start_and_only_for_ticket_sales() {
    let app = spawn_app().await;
    let mut upcoming = open_sale_body(10, 1);
    upcoming["starts_at"] = json!(time_in(3600));
    upcoming["front_door"] = json!({"ticket": true});
    let upcoming = app.create_sale(upcoming).await;
    let upcoming = upcoming["id"].as_str().unwrap();
    assert_error(
        get_as(&app, &format!("/api/v1/sales/{upcoming}/ticket"), "alice").await,
        StatusCode::FORBIDDEN,
        "not_started",
    )
    .await;
    let plain = app.open_sale(10, 1).await;
    let body = assert_error(
        get_as(&app, &format!("/api/v1/sales/{plain}/ticket"), "alice").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(body["error"]["message"], "this sale needs no ticket");
    assert_error(
        get_as(&app, &format!("/api/v1/sales/{plain}/challenge"), "alice").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    for unknown in ["987654321", "nope"] {
        assert_error(
            get_as(&app, &format!("/api/v1/sales/{unknown}/ticket"), "alice").await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    // A plain sale still sells without any of it.
    json_status(app.buy(&plain, "alice").await, StatusCode::CREATED).await;
    app.stop().await;
}

#[tokio::test]
async fn a_pow_sale_sells_once_per_solved_challenge() {
    let app = spawn_app().await;
    let sale = door_sale(&app, 3, json!({"pow_bits": 12})).await;
    assert_error(
        buy_with(&app, &sale, "alice", &[]).await,
        StatusCode::FORBIDDEN,
        "challenge_required",
    )
    .await;
    let resp = get_as(&app, &format!("/api/v1/sales/{sale}/challenge"), "alice").await;
    assert_eq!(
        resp.headers()
            .get(reqwest::header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let body = json_ok(resp).await;
    assert_eq!(body["bits"], 12);
    assert!(body["expires_at"].is_string());
    let challenge = body["challenge"].as_str().unwrap();
    let solution = format!("{challenge}:{}", solve(challenge, 12));
    // Bound to the buyer; unsolved or malformed is refused.
    for (user, value) in [
        ("bob", solution.as_str()),
        ("alice", &format!("{challenge}:x")),
        ("alice", challenge),
        ("alice", "garbage:1"),
    ] {
        assert_error(
            buy_with(&app, &sale, user, &[("X-Flashsale-Pow", value)]).await,
            StatusCode::FORBIDDEN,
            "challenge_required",
        )
        .await;
    }
    json_status(
        buy_with(&app, &sale, "alice", &[("X-Flashsale-Pow", &solution)]).await,
        StatusCode::CREATED,
    )
    .await;
    // Single use: the same solution buys nothing more.
    assert_error(
        buy_with(&app, &sale, "alice", &[("X-Flashsale-Pow", &solution)]).await,
        StatusCode::FORBIDDEN,
        "challenge_required",
    )
    .await;
    app.stop().await;
}

/// What the stub verify service saw and how it answers.
#[derive(Default)]
struct Stub {
    forms: Mutex<Vec<Vec<(String, String)>>>,
}

/// A local siteverify stub on a random port: `/ok` accepts token "good",
/// `/slow` does the same after 400 ms, `/hang` never answers in time,
/// `/broken` answers 500.
async fn captcha_stub() -> (String, Arc<Stub>) {
    use axum::routing::post;
    let stub = Arc::new(Stub::default());
    async fn verdict(stub: &Stub, body: &str) -> axum::Json<Value> {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let good = form.iter().any(|(k, v)| k == "response" && v == "good");
        stub.forms.lock().unwrap().push(form);
        axum::Json(json!({"success": good}))
    }
    let app = axum::Router::new()
        .route(
            "/ok",
            post(
                |axum::extract::State(s): axum::extract::State<Arc<Stub>>, body: String| async move {
                    verdict(&s, &body).await
                },
            ),
        )
        .route(
            "/slow",
            post(
                |axum::extract::State(s): axum::extract::State<Arc<Stub>>, body: String| async move {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    verdict(&s, &body).await
                },
            ),
        )
        .route(
            "/hang",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                axum::Json(json!({"success": true}))
            }),
        )
        .route(
            "/broken",
            post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, stub)
}

async fn captcha_app(url: &str, timeout: Duration) -> TestApp {
    let settings = CaptchaSettings {
        verify_url: url.parse().unwrap(),
        secret: Secret::new("site-secret"),
        timeout,
    };
    spawn_app_with(move |s| s.engine.captcha = Some(settings)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captcha_sale_sells_only_on_the_verify_services_yes() {
    let (stub_url, stub) = captcha_stub().await;
    let app = captcha_app(&format!("{stub_url}/ok"), Duration::from_secs(2)).await;
    let sale = door_sale(&app, 2, json!({"captcha": true})).await;
    assert_error(
        buy_with(&app, &sale, "alice", &[]).await,
        StatusCode::FORBIDDEN,
        "captcha_required",
    )
    .await;
    assert_error(
        buy_with(&app, &sale, "alice", &[("X-Captcha-Token", "bad")]).await,
        StatusCode::FORBIDDEN,
        "captcha_required",
    )
    .await;
    json_status(
        buy_with(&app, &sale, "alice", &[("X-Captcha-Token", "good")]).await,
        StatusCode::CREATED,
    )
    .await;
    let forms = stub.forms.lock().unwrap().clone();
    assert_eq!(forms.len(), 2, "one call per token: {forms:?}");
    for form in &forms {
        assert!(
            form.contains(&("secret".into(), "site-secret".into())),
            "{form:?}"
        );
        // The buyer's address, as verify services expect (the test's
        // client connects from loopback).
        assert!(
            form.contains(&("remoteip".into(), "127.0.0.1".into())),
            "{form:?}"
        );
    }
    assert!(forms[1].contains(&("response".into(), "good".into())));
    // A plain sale on the same node never calls the service.
    let plain = app.open_sale(10, 1).await;
    json_status(app.buy(&plain, "alice").await, StatusCode::CREATED).await;
    assert_eq!(stub.forms.lock().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_or_broken_verify_service_refuses_fast() {
    let (stub_url, _) = captcha_stub().await;
    for path in ["/hang", "/broken"] {
        let app = captcha_app(&format!("{stub_url}{path}"), Duration::from_millis(300)).await;
        let sale = door_sale(&app, 2, json!({"captcha": true})).await;
        let started = Instant::now();
        assert_error(
            buy_with(&app, &sale, "alice", &[("X-Captcha-Token", "good")]).await,
            StatusCode::FORBIDDEN,
            "captcha_required",
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path}: refused only after {:?}",
            started.elapsed()
        );
        app.stop().await;
    }
    // Nothing listening at all.
    let app = captcha_app("http://127.0.0.1:9/siteverify", Duration::from_millis(300)).await;
    let sale = door_sale(&app, 2, json!({"captcha": true})).await;
    assert_error(
        buy_with(&app, &sale, "alice", &[("X-Captcha-Token", "good")]).await,
        StatusCode::FORBIDDEN,
        "captcha_required",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_captcha_sale_needs_a_verify_url_on_the_node() {
    let app = spawn_app().await;
    let mut body = open_sale_body(10, 1);
    body["front_door"] = json!({"captcha": true});
    let err = assert_error(
        app.post_sale(&body).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--captcha-verify-url"),
        "{err}"
    );
    app.stop().await;
}

/// Fires `n` purchases by one buyer at once; the answers' (status, code).
async fn burst(
    app: &TestApp,
    sale: &str,
    user: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> Vec<(u16, String)> {
    let answers = futures::future::join_all((0..n).map(|_| async {
        let resp = buy_with(app, sale, user, headers).await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (
            status,
            body["error"]["code"].as_str().unwrap_or("").to_owned(),
        )
    }))
    .await;
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_purchase_in_flight_per_buyer_when_the_decision_is_slow() {
    // The captcha check runs after the in-flight one, so a slow verify
    // service keeps every purchase of the burst in flight together.
    let (stub_url, _) = captcha_stub().await;
    let app = captcha_app(&format!("{stub_url}/slow"), Duration::from_secs(2)).await;
    let sale = door_sale(&app, 5, json!({"captcha": true, "one_in_flight": true})).await;
    let answers = burst(&app, &sale, "alice", 12, &[("X-Captcha-Token", "good")]).await;
    let accepted = answers.iter().filter(|(s, _)| *s == 201).count();
    let in_flight = answers
        .iter()
        .filter(|(s, c)| *s == 409 && c == "in_flight")
        .count();
    assert_eq!(accepted, 1, "{answers:?}");
    assert_eq!(in_flight, answers.len() - 1, "{answers:?}");
    // Answered: the buyer's next purchase goes in again.
    json_status(
        buy_with(&app, &sale, "alice", &[("X-Captcha-Token", "good")]).await,
        StatusCode::CREATED,
    )
    .await;
    // Another buyer was never held up by alice.
    json_status(
        buy_with(&app, &sale, "bob", &[("X-Captcha-Token", "good")]).await,
        StatusCode::CREATED,
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_purchases_by_one_buyer_are_answered_one_at_a_time() {
    let app = spawn_app().await;
    let sale = door_sale(&app, 5, json!({"one_in_flight": true})).await;
    let answers = burst(&app, &sale, "alice", 64, &[]).await;
    let accepted = answers.iter().filter(|(s, _)| *s == 201).count();
    assert!((1..=5).contains(&accepted), "{answers:?}");
    assert!(accepted < answers.len());
    for (status, code) in &answers {
        assert!(
            *status == 201 || (*status == 409 && (code == "in_flight" || code == "limit_reached")),
            "unexpected answer {status} {code}: {answers:?}"
        );
    }
    // Without the option the same burst is never answered in_flight.
    let plain = door_sale(&app, 5, json!({})).await;
    let answers = burst(&app, &plain, "alice", 64, &[]).await;
    assert!(answers.iter().all(|(_, c)| c != "in_flight"), "{answers:?}");
    assert_eq!(answers.iter().filter(|(s, _)| *s == 201).count(), 5);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ticket_from_one_distributed_node_buys_on_another() {
    let backends = Backends::new(Db::Postgres).await;
    let mut nodes = Vec::new();
    for i in 0..2u16 {
        nodes.push(
            spawn_app_with(|s| {
                backends.configure(s);
                s.engine.node_id = i + 1;
                s.lease_node_id = false;
                s.engine.pass_secret = Secret::new("shared-pass-secret");
            })
            .await,
        );
    }
    let sale = door_sale(&nodes[0], 1, json!({"ticket": true})).await;
    let ticket = ticket_of(&nodes[0], &sale, "alice").await;
    assert_error(
        buy_with(&nodes[1], &sale, "alice", &[]).await,
        StatusCode::FORBIDDEN,
        "ticket_required",
    )
    .await;
    let order = json_status(
        buy_with(
            &nodes[1],
            &sale,
            "alice",
            &[("X-Flashsale-Ticket", &ticket)],
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(order["user_id"], "alice");
    // A node with another pass secret does not take it.
    let stranger = spawn_app_with(|s| {
        backends.configure(s);
        s.engine.node_id = 9;
        s.lease_node_id = false;
        s.engine.pass_secret = Secret::new("another-secret");
    })
    .await;
    let bobs = ticket_of(&nodes[0], &sale, "bob").await;
    assert_error(
        buy_with(&stranger, &sale, "bob", &[("X-Flashsale-Ticket", &bobs)]).await,
        StatusCode::FORBIDDEN,
        "ticket_required",
    )
    .await;
    stranger.stop().await;
    for n in nodes {
        n.stop().await;
    }
    backends.cleanup().await;
}

#[tokio::test]
async fn an_idempotency_key_is_not_spent_by_a_front_door_refusal() {
    let app = spawn_app().await;
    let sale = door_sale(&app, 1, json!({"ticket": true, "one_in_flight": true})).await;
    let key = ("Idempotency-Key", "k-1");
    assert_error(
        buy_with(&app, &sale, "alice", &[key]).await,
        StatusCode::FORBIDDEN,
        "ticket_required",
    )
    .await;
    let ticket = ticket_of(&app, &sale, "alice").await;
    let first = json_status(
        buy_with(
            &app,
            &sale,
            "alice",
            &[key, ("X-Flashsale-Ticket", &ticket)],
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    // The retry replays the order before any front-door check.
    let retry = buy_with(&app, &sale, "alice", &[key]).await;
    assert_eq!(
        retry
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let retry = json_status(retry, StatusCode::CREATED).await;
    assert_eq!(retry["order_id"], first["order_id"]);
    app.stop().await;
}
