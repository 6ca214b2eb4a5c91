//! Authentication: buyer JWTs (HS256, `sub` and `exp`) and the admin token.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::kit::{
    assert_error, eventually, open_sale_body, spawn_app, token, TestApp, ADMIN_TOKEN, JWT_SECRET,
};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn alg_none(claims: &Value) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// Every way a buyer credential can be bad, with a name for the message.
fn bad_buyer_tokens() -> Vec<(&'static str, String)> {
    let valid_claims = json!({"sub": "alice", "exp": now() + 3600});
    vec![
        ("garbage", "garbage".to_owned()),
        ("three dots", "a.b.c".to_owned()),
        (
            "expired",
            sign(
                Algorithm::HS256,
                JWT_SECRET,
                &json!({"sub": "alice", "exp": now() - 3600}),
            ),
        ),
        (
            "wrong secret",
            sign(Algorithm::HS256, "not-the-secret", &valid_claims),
        ),
        ("alg none", alg_none(&valid_claims)),
        (
            "HS512 with the right secret",
            sign(Algorithm::HS512, JWT_SECRET, &valid_claims),
        ),
        (
            "no sub",
            sign(Algorithm::HS256, JWT_SECRET, &json!({"exp": now() + 3600})),
        ),
        (
            "no exp",
            sign(Algorithm::HS256, JWT_SECRET, &json!({"sub": "alice"})),
        ),
        (
            "empty sub",
            sign(
                Algorithm::HS256,
                JWT_SECRET,
                &json!({"sub": "", "exp": now() + 3600}),
            ),
        ),
        (
            "tampered payload",
            tamper(&sign(Algorithm::HS256, JWT_SECRET, &valid_claims)),
        ),
        ("the admin token", ADMIN_TOKEN.to_owned()),
        ("10 KB of garbage", "x".repeat(10_000)),
    ]
}

/// Swaps the payload of a valid token for one naming another user.
fn tamper(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let payload = json!({"sub": "mallory", "exp": now() + 3600}).to_string();
    format!("{}.{}.{}", parts[0], b64(payload.as_bytes()), parts[2])
}

async fn buyer_requests(app: &TestApp, sale_id: &str, order_id: &str, auth: Option<&str>) {
    let requests = [
        app.client
            .post(app.url(&format!("/api/v1/sales/{sale_id}/purchase")))
            .json(&json!({"quantity": 1})),
        app.client
            .get(app.url(&format!("/api/v1/orders/{order_id}"))),
        app.client
            .post(app.url(&format!("/api/v1/orders/{order_id}/pay"))),
        app.client
            .post(app.url(&format!("/api/v1/orders/{order_id}/cancel"))),
    ];
    for req in requests {
        let req = match auth {
            Some(value) => req.header(reqwest::header::AUTHORIZATION, value),
            None => req,
        };
        let resp = req.send().await.unwrap();
        assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}

#[tokio::test]
async fn buyer_endpoints_refuse_missing_and_bad_tokens() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    let order = app.buy_ok(&sale_id, "alice", 1).await;
    let order_id = order["order_id"].as_str().unwrap();

    buyer_requests(&app, &sale_id, order_id, None).await;
    buyer_requests(&app, &sale_id, order_id, Some("Basic YWxpY2U6cHc=")).await;
    buyer_requests(&app, &sale_id, order_id, Some("Bearer")).await;
    for (name, bad) in bad_buyer_tokens() {
        eprintln!("token: {name}");
        buyer_requests(&app, &sale_id, order_id, Some(&format!("Bearer {bad}"))).await;
    }

    // Nothing above bought, paid or cancelled anything.
    let stats = app.stats(&sale_id).await;
    assert_eq!(stats["sold"], 1);
    let order = app.get_order(order_id, &token("alice")).await;
    assert_eq!(
        order.json::<Value>().await.unwrap()["status"],
        "pending_payment"
    );
}

#[tokio::test]
async fn a_valid_buyer_token_is_accepted_with_any_bearer_casing() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    let resp = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale_id}/purchase")))
        .header(
            reqwest::header::AUTHORIZATION,
            format!("bearer {}", token("alice")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

fn admin_requests(app: &TestApp, sale_id: &str) -> Vec<reqwest::RequestBuilder> {
    vec![
        app.client
            .post(app.url("/api/v1/sales"))
            .json(&open_sale_body(5, 1)),
        app.client
            .get(app.url(&format!("/api/v1/sales/{sale_id}/stats"))),
        app.client
            .get(app.url(&format!("/api/v1/sales/{sale_id}/intents"))),
    ]
}

#[tokio::test]
async fn admin_endpoints_refuse_missing_and_bad_tokens() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    let bad = [
        None,
        Some("Bearer wrong-admin-token".to_owned()),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(format!(
            "Bearer {}",
            alg_none(&json!({"sub": "admin", "exp": now() + 60}))
        )),
    ];
    for auth in bad {
        for req in admin_requests(&app, &sale_id) {
            let req = match &auth {
                Some(value) => req.header(reqwest::header::AUTHORIZATION, value),
                None => req,
            };
            let resp = req.send().await.unwrap();
            assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
        }
    }
}

#[tokio::test]
async fn a_buyer_token_on_an_admin_endpoint_is_403() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    for req in admin_requests(&app, &sale_id) {
        let resp = req.bearer_auth(token("alice")).send().await.unwrap();
        assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    }
    // No sale was created by the refused POST.
    let list = app
        .client
        .get(app.url("/api/v1/sales"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    if list.status() == StatusCode::OK {
        let body: Value = list.json().await.unwrap();
        assert_eq!(body["items"].as_array().map(Vec::len), Some(1), "{body}");
    }
}

#[tokio::test]
async fn the_admin_token_on_a_buyer_endpoint_is_401() {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 1).await;
    let resp = app.purchase(&sale_id, ADMIN_TOKEN, None, None).await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(app.stats(&sale_id).await["sold"], 0);
}

/// A token that worked once stops working when it expires, however the
/// server remembers tokens it has already verified.
#[tokio::test]
async fn a_token_that_worked_is_refused_once_it_expires() {
    let app = spawn_app().await;
    let short = sign(
        Algorithm::HS256,
        JWT_SECRET,
        &json!({"sub": "alice", "exp": now() + 1}),
    );
    // Accepted now: an unknown order is 404, not 401.
    assert_error(
        app.get_order("1", &short).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Refused within a reasonable clock leeway after `exp`.
    eventually(Duration::from_secs(15), "the token to expire", || async {
        let resp = app.get_order("1", &short).await;
        (resp.status() == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let resp = app.get_order("1", &short).await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
