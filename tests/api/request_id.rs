//! Request ids: every answer carries `x-request-id` (the fast lane's, the
//! router's, errors, unknown routes, the operations port); a usable client
//! id is echoed and an unusable one replaced; the id is in the log lines of
//! its request (the real binary, JSON logs).

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::kit::{
    assert_error, json_status, serve_command, serving, sigterm, spawn_app, spawn_app_with, token,
    unique_admin_token, TestApp,
};

/// The answer's id; fails the test unless there is exactly one.
fn id_of(resp: &Response) -> String {
    let all: Vec<_> = resp.headers().get_all("x-request-id").iter().collect();
    assert_eq!(all.len(), 1, "x-request-id headers on {resp:?}");
    all[0].to_str().expect("a visible ASCII id").to_owned()
}

fn is_fresh(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A sold-out sale (its one unit bought by `first`).
async fn sold_out_sale(app: &TestApp) -> String {
    let sale_id = app.open_sale(1, 1).await;
    app.buy_ok(&sale_id, "first", 1).await;
    sale_id
}

fn purchase(app: &TestApp, sale_id: &str, user: &str) -> RequestBuilder {
    app.client
        .post(app.url(&format!("/api/v1/sales/{sale_id}/purchase")))
        .bearer_auth(token(user))
}

#[tokio::test]
async fn every_answer_carries_a_fresh_request_id() {
    let app = spawn_app_with(|s| s.ops_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let sale_id = app.open_sale(1, 1).await;
    let mut ids = Vec::new();

    let accepted = app.buy(&sale_id, "alice").await;
    ids.push(id_of(&accepted));
    json_status(accepted, StatusCode::CREATED).await;
    // The fast lane: no body, a JSON body, a fresh key, a bad token.
    let answers = [
        purchase(&app, &sale_id, "bob").send().await.unwrap(),
        purchase(&app, &sale_id, "bob")
            .json(&json!({"quantity": 1}))
            .send()
            .await
            .unwrap(),
        purchase(&app, &sale_id, "bob")
            .header("Idempotency-Key", "key-1")
            .send()
            .await
            .unwrap(),
    ];
    for resp in answers {
        ids.push(id_of(&resp));
        assert_error(resp, StatusCode::CONFLICT, "sold_out").await;
    }
    let bad_token = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale_id}/purchase")))
        .bearer_auth("not-a-jwt")
        .send()
        .await
        .unwrap();
    ids.push(id_of(&bad_token));
    assert_error(bad_token, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // The router: a read, an unknown sale, an unknown route, a wrong
    // method, an invalid body, the probes.
    let sale = app.get_sale(&sale_id).await;
    ids.push(id_of(&sale));
    json_status(sale, StatusCode::OK).await;
    let unknown = app.get_sale("999999").await;
    ids.push(id_of(&unknown));
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found").await;
    let no_route = app
        .client
        .get(app.url("/no/such/route"))
        .send()
        .await
        .unwrap();
    ids.push(id_of(&no_route));
    assert_error(no_route, StatusCode::NOT_FOUND, "not_found").await;
    let wrong_method = app
        .client
        .delete(app.url(&format!("/api/v1/sales/{sale_id}")))
        .send()
        .await
        .unwrap();
    ids.push(id_of(&wrong_method));
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    let invalid = app.post_sale(&json!({"item": 1})).await;
    ids.push(id_of(&invalid));
    assert_error(invalid, StatusCode::BAD_REQUEST, "invalid_request").await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        ids.push(id_of(&resp));
    }
    let ops = app.ops_address.clone().expect("the operations port");
    let probe = app
        .client
        .get(format!("{ops}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), StatusCode::OK);
    ids.push(id_of(&probe));

    for id in &ids {
        assert!(is_fresh(id), "not a fresh id: {id:?}");
    }
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "ids repeat: {ids:?}");
}

#[tokio::test]
async fn a_usable_client_id_is_echoed_and_an_unusable_one_replaced() {
    let app = spawn_app().await;
    let sale_id = sold_out_sale(&app).await;
    let longest = "r".repeat(128);
    for kept in ["client-id-1", "a/b:c=d_e.f~1", longest.as_str()] {
        let sold_out = purchase(&app, &sale_id, "bob")
            .header("x-request-id", kept)
            .send()
            .await
            .unwrap();
        assert_eq!(id_of(&sold_out), kept);
        assert_error(sold_out, StatusCode::CONFLICT, "sold_out").await;
        let routed = app
            .client
            .get(app.url("/api/v1/sales/999999"))
            .header("x-request-id", kept)
            .send()
            .await
            .unwrap();
        assert_eq!(id_of(&routed), kept);
        assert_error(routed, StatusCode::NOT_FOUND, "not_found").await;
    }
    let too_long = "r".repeat(129);
    let unusable: [&[u8]; 4] = [b"has space", b"caf\xc3\xa9", too_long.as_bytes(), b""];
    for bad in unusable {
        let value = reqwest::header::HeaderValue::from_bytes(bad).unwrap();
        let sold_out = purchase(&app, &sale_id, "bob")
            .header("x-request-id", value.clone())
            .send()
            .await
            .unwrap();
        let id = id_of(&sold_out);
        assert!(is_fresh(&id), "{bad:?} was not replaced: {id:?}");
        assert_error(sold_out, StatusCode::CONFLICT, "sold_out").await;
        let routed = app
            .client
            .get(app.url(&format!("/api/v1/sales/{sale_id}")))
            .header("x-request-id", value)
            .send()
            .await
            .unwrap();
        let id = id_of(&routed);
        assert!(is_fresh(&id), "{bad:?} was not replaced: {id:?}");
    }
}

/// The JSON log lines (stdout) of a real `flashsale serve`.
fn json_lines(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect()
}

#[tokio::test]
async fn the_request_id_is_in_every_log_line_of_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let admin = unique_admin_token();
    let port = crate::kit::free_port();
    let mut app = TestApp::attach(port);
    app.admin_token = admin.clone();
    // The default level for the handlers, DEBUG for the app's per-request
    // "answered" event.
    let mut child = serve_command(dir.path(), port, &admin)
        .env("FLASHSALE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,flashsale::app=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
        buf
    });
    serving(&mut child, &app).await.unwrap();

    let create = app
        .client
        .post(app.url("/api/v1/sales"))
        .bearer_auth(&admin)
        .header("x-request-id", "create-sale-1")
        .json(&crate::kit::open_sale_body(1, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&create), "create-sale-1");
    let sale = json_status(create, StatusCode::CREATED).await;
    let sale_id = sale["id"].as_str().unwrap().to_owned();
    let buy = purchase(&app, &sale_id, "alice")
        .header("x-request-id", "buy-1")
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&buy), "buy-1");
    json_status(buy, StatusCode::CREATED).await;

    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("no exit within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let output = String::from_utf8(out.await.unwrap()).unwrap();
    let lines = json_lines(&output);
    assert!(!lines.is_empty(), "no JSON log lines: {output}");
    let of = |id: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["span"]["request_id"] == id)
            .collect()
    };

    // The handler's own INFO line, and the answer's DEBUG line.
    let created = of("create-sale-1");
    let messages: Vec<_> = created.iter().map(|l| &l["fields"]["message"]).collect();
    assert!(
        messages.contains(&&json!("sale created")) && messages.contains(&&json!("answered")),
        "{messages:?} in {output}"
    );
    for line in &created {
        assert_eq!(line["span"]["method"], "POST", "{line}");
        assert_eq!(line["span"]["route"], "/api/v1/sales", "{line}");
    }
    let bought = of("buy-1");
    let answered = bought
        .iter()
        .find(|l| l["fields"]["message"] == "answered")
        .unwrap_or_else(|| panic!("no answered line for buy-1 in {output}"));
    assert_eq!(answered["fields"]["status"], 201);
    assert_eq!(
        answered["span"]["route"],
        "/api/v1/sales/{sale_id}/purchase"
    );
    // Every line logged inside a request span names its id.
    for line in &lines {
        if line["span"]["name"] == "request" {
            assert!(line["span"]["request_id"].is_string(), "{line}");
        }
    }
}

/// With `--features otel` and an endpoint, the request spans reach an
/// OTLP/HTTP receiver (a local one counting `POST /v1/traces`), the last
/// batch flushed by the clean stop, under `OTEL_SERVICE_NAME`.
#[cfg(feature = "otel")]
#[tokio::test]
async fn request_spans_are_exported_over_otlp_and_flushed_on_stop() {
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::routing::post;

    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let receiver = {
        let received = received.clone();
        axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                received.lock().unwrap().push(body);
                StatusCode::OK
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let dir = tempfile::tempdir().unwrap();
    let (mut child, app) =
        crate::kit::start_binary_with(dir.path(), &unique_admin_token(), |cmd| {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
                .env("OTEL_SERVICE_NAME", "flashsale-otel-test");
        })
        .await;
    let resp = app
        .client
        .get(app.url("/api/v1/sales/999999"))
        .header("x-request-id", "otel-probe-1")
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&resp), "otel-probe-1");
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("no exit within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    // Protobuf keeps strings as they are: the span's id and the service
    // name are in the bytes of some export.
    let exports = received.lock().unwrap().concat();
    let has = |needle: &[u8]| exports.windows(needle.len()).any(|w| w == needle);
    assert!(
        !exports.is_empty(),
        "no POST /v1/traces reached the receiver"
    );
    assert!(has(b"otel-probe-1"), "the request's span was not exported");
    assert!(
        has(b"flashsale-otel-test"),
        "OTEL_SERVICE_NAME was not used"
    );
}
