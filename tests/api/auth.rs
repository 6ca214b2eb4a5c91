//! Authentication: buyer JWTs (HS256 with the secret, RS256/ES256 with a
//! public key or a JWKS; `sub` and `exp`, `nbf` and the leeway) and the
//! admin token.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::kit::{
    assert_error, eventually, open_sale_body, spawn_app, spawn_app_with, token, TestApp,
    ADMIN_TOKEN, JWT_SECRET,
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
    // A short leeway, so the test does not wait out the default 30 s.
    let app = spawn_app_with(|s| s.jwt_leeway_secs = 2).await;
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

// ---- Public keys: RS256, ES256, JWKS, algorithm confusion, nbf, leeway ----

/// The test keys under tests/fixtures/jwt (see its README).
fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn sign_with(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_fixture(name)).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&read_fixture("ec-p256.key.pem")).unwrap()
}

fn alive(user: &str) -> Value {
    json!({"sub": user, "exp": now() + 3600})
}

/// A server whose buyer tokens are verified by public keys only (no secret).
async fn spawn_public_key_app(public_key: Option<&str>, jwks: Option<&str>) -> TestApp {
    let public_key = public_key.map(fixture);
    let jwks = jwks.map(fixture);
    spawn_app_with(move |s| {
        s.jwt_secret = None;
        s.jwt_public_key = public_key;
        s.jwt_jwks = jwks;
    })
    .await
}

/// `token` is accepted: an unknown order is 404, not 401.
async fn assert_accepted(app: &TestApp, token: &str, what: &str) {
    let resp = app.get_order("1", token).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{what}");
}

/// `token` is refused with the JSON 401 every bad credential gets.
async fn assert_refused(app: &TestApp, token: &str, what: &str) {
    eprintln!("refused: {what}");
    assert_error(
        app.get_order("1", token).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn an_rs256_token_is_accepted_with_an_rsa_public_key() {
    let app = spawn_public_key_app(Some("rsa-a.pub.pem"), None).await;
    let token = sign_with(
        Algorithm::RS256,
        None,
        &rsa_key("rsa-a.key.pem"),
        &alive("alice"),
    );
    assert_accepted(&app, &token, "RS256").await;
    // And it buys.
    let sale_id = app.open_sale(10, 1).await;
    let resp = app.purchase(&sale_id, &token, None, None).await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    let pub_pem = read_fixture("rsa-a.pub.pem");
    let pub_pem = std::str::from_utf8(&pub_pem).unwrap();
    for (what, bad) in [
        ("alg none", alg_none(&alive("alice"))),
        (
            "HS256 with the public key as the secret",
            sign(Algorithm::HS256, pub_pem, &alive("alice")),
        ),
        (
            "HS256 with the default test secret (no secret configured)",
            sign(Algorithm::HS256, JWT_SECRET, &alive("alice")),
        ),
        (
            "RS256 by another RSA key",
            sign_with(
                Algorithm::RS256,
                None,
                &rsa_key("rsa-b.key.pem"),
                &alive("alice"),
            ),
        ),
        (
            "ES256 against an RSA key",
            sign_with(Algorithm::ES256, None, &ec_key(), &alive("alice")),
        ),
        (
            "RS512 against an RS256 key",
            sign_with(
                Algorithm::RS512,
                None,
                &rsa_key("rsa-a.key.pem"),
                &alive("alice"),
            ),
        ),
    ] {
        assert_refused(&app, &bad, what).await;
    }
}

#[tokio::test]
async fn an_es256_token_is_accepted_with_an_ec_public_key() {
    let app = spawn_public_key_app(Some("ec-p256.pub.pem"), None).await;
    let token = sign_with(Algorithm::ES256, None, &ec_key(), &alive("alice"));
    assert_accepted(&app, &token, "ES256").await;

    let pub_pem = read_fixture("ec-p256.pub.pem");
    let pub_pem = std::str::from_utf8(&pub_pem).unwrap();
    for (what, bad) in [
        ("alg none", alg_none(&alive("alice"))),
        (
            "HS256 with the public key as the secret",
            sign(Algorithm::HS256, pub_pem, &alive("alice")),
        ),
        (
            "RS256 against an EC key",
            sign_with(
                Algorithm::RS256,
                None,
                &rsa_key("rsa-a.key.pem"),
                &alive("alice"),
            ),
        ),
    ] {
        assert_refused(&app, &bad, what).await;
    }
}

#[tokio::test]
async fn a_jwks_picks_the_key_by_kid() {
    let app = spawn_public_key_app(None, Some("jwks.json")).await;
    for (kid, key) in [("key-a", "rsa-a.key.pem"), ("key-b", "rsa-b.key.pem")] {
        let token = sign_with(Algorithm::RS256, Some(kid), &rsa_key(key), &alive("alice"));
        assert_accepted(&app, &token, kid).await;
    }
    let token = sign_with(Algorithm::ES256, Some("key-ec"), &ec_key(), &alive("alice"));
    assert_accepted(&app, &token, "key-ec").await;
    // Key B's signature under key A's kid, an unknown kid: refused.
    let swapped = sign_with(
        Algorithm::RS256,
        Some("key-a"),
        &rsa_key("rsa-b.key.pem"),
        &alive("alice"),
    );
    assert_refused(&app, &swapped, "key B's token naming key A").await;
    let unknown = sign_with(
        Algorithm::RS256,
        Some("key-z"),
        &rsa_key("rsa-b.key.pem"),
        &alive("alice"),
    );
    assert_refused(&app, &unknown, "unknown kid").await;
    let es_as_rsa = sign_with(Algorithm::ES256, Some("key-a"), &ec_key(), &alive("alice"));
    assert_refused(&app, &es_as_rsa, "ES256 naming an RSA kid").await;
}

#[tokio::test]
async fn nbf_and_exp_are_checked_with_the_leeway() {
    let app = spawn_public_key_app(Some("rsa-a.pub.pem"), None).await;
    let key = rsa_key("rsa-a.key.pem");
    let t = now();
    for (what, claims) in [
        (
            "nbf in the future",
            json!({"sub": "alice", "exp": t + 3600, "nbf": t + 600}),
        ),
        (
            "expired beyond the leeway",
            json!({"sub": "alice", "exp": t - 600}),
        ),
        (
            "a non-numeric nbf",
            json!({"sub": "alice", "exp": t + 3600, "nbf": "soon"}),
        ),
    ] {
        assert_refused(
            &app,
            &sign_with(Algorithm::RS256, None, &key, &claims),
            what,
        )
        .await;
    }
    for (what, claims) in [
        (
            "expired within the leeway",
            json!({"sub": "alice", "exp": t - 10}),
        ),
        (
            "nbf within the leeway",
            json!({"sub": "alice", "exp": t + 3600, "nbf": t + 10}),
        ),
        (
            "nbf in the past",
            json!({"sub": "alice", "exp": t + 3600, "nbf": t - 10}),
        ),
    ] {
        let token = sign_with(Algorithm::RS256, None, &key, &claims);
        assert_accepted(&app, &token, what).await;
    }
}

#[tokio::test]
async fn the_secret_and_a_public_key_together_accept_either() {
    let public_key = fixture("rsa-a.pub.pem");
    let app = spawn_app_with(move |s| s.jwt_public_key = Some(public_key)).await;
    assert_accepted(&app, &token("alice"), "HS256 with the secret").await;
    let rs = sign_with(
        Algorithm::RS256,
        None,
        &rsa_key("rsa-a.key.pem"),
        &alive("bob"),
    );
    assert_accepted(&app, &rs, "RS256 with the key").await;
    let pub_pem = read_fixture("rsa-a.pub.pem");
    let confused = sign(
        Algorithm::HS256,
        std::str::from_utf8(&pub_pem).unwrap(),
        &alive("alice"),
    );
    assert_refused(&app, &confused, "HS256 with the public key as the secret").await;
    assert_refused(&app, &alg_none(&alive("alice")), "alg none").await;
}

#[tokio::test]
async fn a_bad_key_file_stops_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("key.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let oct = dir.path().join("jwks.json");
    std::fs::write(&oct, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
    for (settings, why) in [
        ((Some(garbage.clone()), None), "not an RSA or EC public key"),
        ((Some(dir.path().join("missing.pem")), None), "reading"),
        (
            (None, Some(oct.clone())),
            "symmetric (oct) keys are refused",
        ),
    ] {
        let mut s = flashsale::config::Settings::with_data_dir(dir.path().join("data"));
        s.listen = "127.0.0.1:0".parse().unwrap();
        (s.jwt_public_key, s.jwt_jwks) = settings;
        match flashsale::app::Application::build(s).await {
            Ok(_) => panic!("a bad key file was accepted ({why})"),
            Err(e) => assert!(format!("{e:#}").contains(why), "{e:#}"),
        }
    }
}
