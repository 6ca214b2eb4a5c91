//! Bad input: every malformed request gets a 4xx with the error body, never
//! a 5xx, and the server stays healthy.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};

use crate::kit::{
    assert_error, assert_error_shape, json_status, num, parse_raw_answer, raw_http, spawn_app,
    time_in, token, TestApp,
};

/// A valid sale body with `field` set to `value` (or removed when `None`).
fn sale_with(field: &str, value: Option<Value>) -> Value {
    let mut body = json!({
        "item": "phone",
        "stock": 10,
        "per_user_limit": 1,
        "starts_at": time_in(-60),
        "ends_at": time_in(3600),
        "payment_window_secs": 60,
    });
    match value {
        Some(v) => body[field] = v,
        None => {
            body.as_object_mut().unwrap().remove(field);
        }
    }
    body
}

#[tokio::test]
async fn invalid_sale_fields_are_400_naming_the_field() {
    let app = spawn_app().await;
    let starts = time_in(-60);
    let cases: Vec<(&str, Value)> = vec![
        ("item", sale_with("item", None)),
        ("item", sale_with("item", Some(json!("")))),
        ("item", sale_with("item", Some(json!("   ")))),
        ("item", sale_with("item", Some(json!("x".repeat(201))))),
        ("item", sale_with("item", Some(json!(42)))),
        ("item", sale_with("item", Some(json!(null)))),
        ("stock", sale_with("stock", None)),
        ("stock", sale_with("stock", Some(json!(0)))),
        ("stock", sale_with("stock", Some(json!(1_000_000_001u64)))),
        ("stock", sale_with("stock", Some(json!(-5)))),
        ("stock", sale_with("stock", Some(json!(2.5)))),
        ("stock", sale_with("stock", Some(json!(1e3)))),
        ("stock", sale_with("stock", Some(json!("10")))),
        ("stock", sale_with("stock", Some(json!(u64::MAX)))),
        (
            "per_user_limit",
            sale_with("per_user_limit", Some(json!(0))),
        ),
        (
            "per_user_limit",
            sale_with("per_user_limit", Some(json!(-1))),
        ),
        (
            "per_user_limit",
            sale_with("per_user_limit", Some(json!(1.5))),
        ),
        (
            "per_user_limit",
            sale_with("per_user_limit", Some(json!("2"))),
        ),
        (
            "per_user_limit",
            sale_with("per_user_limit", Some(json!(4_294_967_296u64))),
        ),
        ("buckets", sale_with("buckets", Some(json!(0)))),
        ("buckets", sale_with("buckets", Some(json!(17)))),
        ("buckets", sale_with("buckets", Some(json!(-1)))),
        ("buckets", sale_with("buckets", Some(json!("3")))),
        ("starts_at", sale_with("starts_at", None)),
        (
            "starts_at",
            sale_with("starts_at", Some(json!("yesterday"))),
        ),
        (
            "starts_at",
            sale_with("starts_at", Some(json!("2026-13-01T00:00:00Z"))),
        ),
        (
            "starts_at",
            sale_with("starts_at", Some(json!(1_700_000_000))),
        ),
        ("ends_at", sale_with("ends_at", Some(json!("soon")))),
        ("ends_at", sale_with("ends_at", Some(json!(time_in(-3600))))),
        (
            "ends_at",
            json!({"item": "x", "stock": 1, "starts_at": starts, "ends_at": starts}),
        ),
        (
            "payment_window_secs",
            sale_with("payment_window_secs", Some(json!(0))),
        ),
        (
            "payment_window_secs",
            sale_with("payment_window_secs", Some(json!(-3))),
        ),
        (
            "payment_window_secs",
            sale_with("payment_window_secs", Some(json!("60"))),
        ),
    ];
    for (field, body) in cases {
        let resp = app.post_sale(&body).await;
        let err = assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{body} → {message:?} does not name {field}"
        );
    }
    app.assert_healthy().await;
}

#[tokio::test]
async fn sale_field_bounds_are_inclusive() {
    let app = spawn_app().await;
    let cases = [
        sale_with("stock", Some(json!(1))),
        sale_with("stock", Some(json!(1_000_000_000u64))),
        sale_with("item", Some(json!("x".repeat(200)))),
        // 200 characters, 400 bytes: the limit counts characters.
        sale_with("item", Some(json!("é".repeat(200)))),
        sale_with("per_user_limit", Some(json!(1_000_000))),
        sale_with("ends_at", Some(Value::Null)),
        sale_with("buckets", Some(json!(1))),
        sale_with("buckets", Some(json!(16))),
        sale_with("payment_window_secs", None),
        // Unknown fields are ignored.
        sale_with("colour", Some(json!("red"))),
    ];
    for body in cases {
        app.create_sale(body).await;
    }
}

/// Posts raw `bytes` as a sale body with the admin token.
async fn post_raw_sale(app: &TestApp, bytes: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/sales"))
        .bearer_auth(&app.admin_token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

fn malformed_bodies() -> Vec<Vec<u8>> {
    vec![
        b"".to_vec(),
        b"   ".to_vec(),
        b"{".to_vec(),
        b"{\"item\":".to_vec(),
        b"not json".to_vec(),
        b"{'item': 'x'}".to_vec(),
        b"{\"item\":\"x\",}".to_vec(),
        b"[1, 2]".to_vec(),
        b"\"a string\"".to_vec(),
        b"42".to_vec(),
        b"null".to_vec(),
        b"true".to_vec(),
        vec![0xff, 0xfe, 0x7b, 0x7d],
        b"{\"item\": \"\xff\"}".to_vec(),
        // Deeper than any parser should recurse; still inside the body limit.
        "[".repeat(5000).into_bytes(),
        format!("{}1{}", "{\"a\":".repeat(2000), "}".repeat(2000)).into_bytes(),
    ]
}

#[tokio::test]
async fn malformed_and_non_object_sale_bodies_are_400() {
    let app = spawn_app().await;
    for bytes in malformed_bodies() {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
        eprintln!("body: {shown}");
        let resp = post_raw_sale(&app, bytes).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    app.assert_healthy().await;
}

#[tokio::test]
async fn malformed_purchase_bodies_are_400_and_buy_nothing() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 5).await;
    let alice = token("alice");
    let mut bodies: Vec<Vec<u8>> = malformed_bodies()
        .into_iter()
        .filter(|b| !b.iter().all(u8::is_ascii_whitespace))
        .collect();
    for quantity in [
        json!(0),
        json!(-1),
        json!("x"),
        json!("1"),
        json!(1.5),
        json!(1.0),
        json!(1_000_000_001u64),
        json!(u64::MAX),
        json!(true),
        json!([1]),
        json!({"n": 1}),
    ] {
        bodies.push(json!({ "quantity": quantity }).to_string().into_bytes());
    }
    for bytes in bodies {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
        let resp = app
            .client
            .post(app.url(&format!("/api/v1/sales/{sale_id}/purchase")))
            .bearer_auth(&alice)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .send()
            .await
            .unwrap();
        eprintln!("body: {shown}");
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 0);
    app.assert_healthy().await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 5).await;
    // A well-formed JSON object of about 1 MB.
    let big = json!({"item": "x".repeat(1 << 20), "stock": 1, "starts_at": time_in(-1)})
        .to_string()
        .into_bytes();
    let resp = post_raw_sale(&app, big.clone()).await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request").await;
    let resp = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale_id}/purchase")))
        .bearer_auth(token("alice"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request").await;

    // The same without a Content-Length: a chunked body that grows too big.
    let chunk = "x".repeat(8192);
    let mut request = format!(
        "POST /api/v1/sales HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n",
        app.admin_token
    );
    for _ in 0..64 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    let answer = raw_http(app.port, request.as_bytes()).await;
    let (status, body) = parse_raw_answer(&answer);
    assert_eq!(status, 413, "{answer}");
    assert_error_shape(&body);
    assert_eq!(body["error"]["code"], "invalid_request");

    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 0);
    app.assert_healthy().await;
}

#[tokio::test]
async fn bad_idempotency_keys_are_400() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 5).await;
    let alice = token("alice");
    let long = "k".repeat(129);
    for key in [long.as_bytes(), b"", "ключ".as_bytes()] {
        let resp = app
            .client
            .post(app.url(&format!("/api/v1/sales/{sale_id}/purchase")))
            .bearer_auth(&alice)
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(key).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_eq!(num(&app.stats(&sale_id).await, "sold"), 0);
    // 128 characters is still a key.
    let resp = app
        .purchase(&sale_id, &alice, None, Some(&"k".repeat(128)))
        .await;
    json_status(resp, StatusCode::CREATED).await;
    app.assert_healthy().await;
}

/// Checks a raw answer is `status` with the contract's error body `code`;
/// returns a description of what is wrong, if anything.
async fn error_mismatch(resp: reqwest::Response, status: StatusCode, code: &str) -> Option<String> {
    let got = resp.status();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let ok = got == status
        && content_type.starts_with("application/json")
        && body["error"]["code"] == code
        && body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty());
    (!ok).then(|| format!("{got}, content type {content_type:?}, body {text:?}"))
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_the_error_body() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    let alice = token("alice");
    let mut wrong = Vec::new();
    // (`/` is a route: it leads to the dashboard.)
    for path in [
        "/s/".to_owned(),
        "/nope".to_owned(),
        "/healthz/extra".to_owned(),
        "/api/v2/sales".to_owned(),
        format!("/api/v1/sales/{sale_id}/nope"),
        format!("/api/v1/sales/{sale_id}/purchase/extra"),
        "/api/v1/orders".to_owned(),
    ] {
        let resp = app
            .client
            .get(app.url(&path))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        if let Some(what) = error_mismatch(resp, StatusCode::NOT_FOUND, "not_found").await {
            wrong.push(format!("GET {path}: {what}"));
        }
    }
    let wrong_methods = [
        (reqwest::Method::POST, "/healthz".to_owned()),
        (reqwest::Method::POST, "/readyz".to_owned()),
        (reqwest::Method::DELETE, "/metrics".to_owned()),
        (reqwest::Method::DELETE, format!("/api/v1/sales/{sale_id}")),
        (reqwest::Method::PUT, "/api/v1/sales".to_owned()),
        (
            reqwest::Method::GET,
            format!("/api/v1/sales/{sale_id}/purchase"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/sales/{sale_id}/stats"),
        ),
        (reqwest::Method::GET, "/api/v1/orders/1/pay".to_owned()),
    ];
    for (method, path) in wrong_methods {
        let resp = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        let mismatch =
            error_mismatch(resp, StatusCode::METHOD_NOT_ALLOWED, "invalid_request").await;
        if let Some(what) = mismatch {
            wrong.push(format!("{method} {path}: {what}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "expected 404 not_found / 405 invalid_request with the JSON error body:\n{}",
        wrong.join("\n")
    );
    app.assert_healthy().await;
}

// ---- property tests: random JSON never makes the server fail ----

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "item", "stock", "per_user_limit", "starts_at", "ends_at",
            "payment_window_secs", "quantity",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{1,10}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![
            0u64,
            1,
            2,
            1_000_000_000,
            1_000_000_001,
            4_294_967_295,
            4_294_967_296,
            2_592_000,
            2_592_001,
        ])
        .prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        (-100_000i64..100_000).prop_map(|s| Value::from(time_in(s))),
        Just(Value::from("9999-12-31T23:59:59Z")),
        Just(Value::from("0001-01-01T00:00:00Z")),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects shaped like a sale, each field present or not with a random value.
fn sale_like() -> impl Strategy<Value = Value> {
    let fields = [
        "item",
        "stock",
        "per_user_limit",
        "starts_at",
        "ends_at",
        "payment_window_secs",
    ];
    prop::collection::vec(prop::option::of(leaf()), fields.len()).prop_map(move |values| {
        let mut obj = Map::new();
        for (field, value) in fields.iter().zip(values) {
            if let Some(v) = value {
                obj.insert((*field).to_owned(), v);
            }
        }
        Value::Object(obj)
    })
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        3 => sale_like().prop_map(|v| v.to_string().into_bytes()),
        2 => leaf().prop_map(|q| json!({ "quantity": q }).to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Sends `body` and checks the answer is 2xx or 4xx, with the error body on 4xx.
async fn check_answer(req: reqwest::RequestBuilder, body: Vec<u8>) -> Result<(), String> {
    let resp = req
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("transport error: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !(status.is_success() || status.is_client_error()) {
        return Err(format!("{status}: {text}"));
    }
    if status.is_client_error() {
        let body: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        let ok = body["error"]["code"].is_string() && body["error"]["message"].is_string();
        if !ok {
            return Err(format!("{status} without the error body: {text}"));
        }
    }
    Ok(())
}

fn run_random_bodies(post: impl Fn(&TestApp, &str) -> reqwest::RequestBuilder) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(spawn_app());
    let sale_id = rt.block_on(app.create_sale(json!({
        "item": "fuzz", "stock": 1_000_000_000u64, "per_user_limit": 4_000_000_000u64,
        "starts_at": time_in(-60),
    })))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&body_strategy(), |body| {
        cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(check_answer(post(&app, &sale_id), body))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(cases.into_inner() >= 64, "fewer cases ran than configured");
    rt.block_on(app.assert_healthy());
    rt.block_on(async {
        let sale = app.sale(&sale_id).await;
        assert!(num(&sale, "remaining") <= 1_000_000_000);
    });
}

#[test]
fn random_sale_bodies_never_make_a_5xx() {
    run_random_bodies(|app, _| {
        app.client
            .post(app.url("/api/v1/sales"))
            .bearer_auth(&app.admin_token)
    });
}

#[test]
fn random_purchase_bodies_never_make_a_5xx() {
    run_random_bodies(|app, sale_id| {
        app.client
            .post(app.url(&format!("/api/v1/sales/{sale_id}/purchase")))
            .bearer_auth(token("fuzzer"))
    });
}
