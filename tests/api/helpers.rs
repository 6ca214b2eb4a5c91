//! The harness: an in-process server per test on `127.0.0.1:0` with its own
//! data directory, and typed helpers for the contract's endpoints.
//!
//! Every test gets a fresh [`TestApp`]; [`TestApp::stop`] stops it cleanly
//! and hands back the data directory so a test can restart on it with
//! [`spawn_app_on`]. Tracing stays quiet unless `TEST_LOG` is set.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flashsale::auth::{mint_token, Secret};
use flashsale::{Application, Settings};
use futures::StreamExt;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The admin token every test server uses.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The HS256 secret every test server uses for buyer tokens.
pub const JWT_SECRET: &str = "test-jwt-secret";

/// Longest any single request may take before the test fails instead of hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            flashsale::telemetry::init_tracing();
        }
    });
}

/// A reqwest client with a pool big enough for the flood tests.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("building the HTTP client")
}

/// A running in-process server and what a test needs to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// The bound port.
    pub port: u16,
    /// The admin bearer token.
    pub admin_token: String,
    /// The shared, pooled client.
    pub client: reqwest::Client,
    data_dir: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts a server with the test defaults (per-user rate limit off).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server with the test defaults adjusted by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("creating a data dir");
    spawn_app_on_with(dir, configure).await
}

/// Restarts a server on a data dir returned by [`TestApp::stop`].
pub async fn spawn_app_on(dir: TempDir) -> TestApp {
    spawn_app_on_with(dir, |_| {}).await
}

/// Restarts a server on `dir` with adjusted settings.
pub async fn spawn_app_on_with(dir: TempDir, configure: impl FnOnce(&mut Settings)) -> TestApp {
    init_tracing();
    let mut settings = Settings::with_data_dir(dir.path());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin_token = Some(Secret::new(ADMIN_TOKEN));
    settings.jwt_secret = Some(Secret::new(JWT_SECRET));
    // Most tests send many requests as one user; the limiter has its own test.
    settings.engine.user_rate_per_sec = 0;
    configure(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("building the application");
    let port = app.port();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        // A dropped sender (test ended without `stop`) also stops the server.
        let _ = rx.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        admin_token: ADMIN_TOKEN.to_owned(),
        client: http_client(),
        data_dir: Some(dir),
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// Mints a valid buyer token for `user` with the test secret.
pub fn token(user: &str) -> String {
    mint_token(&Secret::new(JWT_SECRET), user, 3600).expect("minting a token")
}

/// An RFC 3339 time `secs` seconds from now (negative: in the past).
pub fn time_in(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A sale body open since a minute ago with `stock` and `per_user_limit`.
pub fn open_sale_body(stock: u64, per_user_limit: u32) -> Value {
    json!({
        "item": "phone",
        "stock": stock,
        "per_user_limit": per_user_limit,
        "starts_at": time_in(-60),
    })
}

impl TestApp {
    /// Talks to a server on `port` that this harness did not start (the real
    /// binary); such an app has no data dir and cannot be stopped from here.
    pub fn attach(port: u16) -> TestApp {
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            admin_token: ADMIN_TOKEN.to_owned(),
            client: http_client(),
            data_dir: None,
            shutdown: None,
            server: None,
        }
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A valid buyer token for `user`.
    pub fn token(&self, user: &str) -> String {
        token(user)
    }

    /// `POST /api/v1/sales` with the admin token; the raw answer.
    pub async fn post_sale(&self, body: &Value) -> Response {
        self.client
            .post(self.url("/api/v1/sales"))
            .bearer_auth(&self.admin_token)
            .json(body)
            .send()
            .await
            .expect("POST /api/v1/sales")
    }

    /// Creates a sale and returns its body; fails the test unless `201`.
    pub async fn create_sale(&self, body: Value) -> Value {
        let resp = self.post_sale(&body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "creating {body}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Creates an open sale and returns its id.
    pub async fn open_sale(&self, stock: u64, per_user_limit: u32) -> String {
        let sale = self
            .create_sale(open_sale_body(stock, per_user_limit))
            .await;
        sale["id"].as_str().expect("sale id is a string").to_owned()
    }

    /// `GET /api/v1/sales/{id}`.
    pub async fn get_sale(&self, sale_id: &str) -> Response {
        self.client
            .get(self.url(&format!("/api/v1/sales/{sale_id}")))
            .send()
            .await
            .expect("GET sale")
    }

    /// The sale's public body; fails the test unless `200`.
    pub async fn sale(&self, sale_id: &str) -> Value {
        json_ok(self.get_sale(sale_id).await).await
    }

    /// `POST /api/v1/sales/{id}/purchase` with an optional body and key.
    pub async fn purchase(
        &self,
        sale_id: &str,
        token: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Response {
        let mut req = self
            .client
            .post(self.url(&format!("/api/v1/sales/{sale_id}/purchase")))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        req.send().await.expect("POST purchase")
    }

    /// One unit for `user`, no key.
    pub async fn buy(&self, sale_id: &str, user: &str) -> Response {
        self.purchase(sale_id, &token(user), None, None).await
    }

    /// Buys for `user` and returns the order; fails the test unless `201`.
    pub async fn buy_ok(&self, sale_id: &str, user: &str, quantity: u32) -> Value {
        let resp = self
            .purchase(
                sale_id,
                &token(user),
                Some(json!({ "quantity": quantity })),
                None,
            )
            .await;
        json_status(resp, StatusCode::CREATED).await
    }

    /// `GET /api/v1/orders/{id}` as the holder of `token`.
    pub async fn get_order(&self, order_id: &str, token: &str) -> Response {
        self.client
            .get(self.url(&format!("/api/v1/orders/{order_id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET order")
    }

    /// `POST /api/v1/orders/{id}/pay`.
    pub async fn pay(&self, order_id: &str, token: &str) -> Response {
        self.client
            .post(self.url(&format!("/api/v1/orders/{order_id}/pay")))
            .bearer_auth(token)
            .send()
            .await
            .expect("POST pay")
    }

    /// `POST /api/v1/orders/{id}/cancel`.
    pub async fn cancel(&self, order_id: &str, token: &str) -> Response {
        self.client
            .post(self.url(&format!("/api/v1/orders/{order_id}/cancel")))
            .bearer_auth(token)
            .send()
            .await
            .expect("POST cancel")
    }

    /// The sale's stats; fails the test unless `200`.
    pub async fn stats(&self, sale_id: &str) -> Value {
        let resp = self
            .client
            .get(self.url(&format!("/api/v1/sales/{sale_id}/stats")))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("GET stats");
        json_ok(resp).await
    }

    /// `GET /api/v1/sales/{id}/intents` with optional `limit` and `cursor`.
    pub async fn intents(
        &self,
        sale_id: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Response {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_owned()));
        }
        self.client
            .get(self.url(&format!("/api/v1/sales/{sale_id}/intents")))
            .bearer_auth(&self.admin_token)
            .query(&query)
            .send()
            .await
            .expect("GET intents")
    }

    /// Every intent of a sale, following `next_cursor` page by page.
    pub async fn all_intents(&self, sale_id: &str, page: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let body = json_ok(self.intents(sale_id, Some(page), cursor.as_deref()).await).await;
            let items = body["items"].as_array().expect("items array").clone();
            assert!(items.len() <= page, "page larger than the limit: {body}");
            all.extend(items);
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return all,
            }
        }
    }

    /// `GET /healthz` answers `200`.
    pub async fn assert_healthy(&self) {
        let resp = self
            .client
            .get(self.url("/healthz"))
            .send()
            .await
            .expect("GET /healthz");
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "the server must stay healthy"
        );
    }

    /// Stops the server cleanly (in-flight requests finish, every accepted
    /// order is flushed) and returns its data dir for a restart.
    pub async fn stop(mut self) -> TempDir {
        self.stop_in_place().await;
        self.data_dir.take().expect("data dir")
    }

    async fn stop_in_place(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(20), server)
                .await
                .expect("the server did not stop within 20 s")
                .expect("the server task panicked")
                .expect("the server stopped with an error");
        }
    }

    /// Begins a clean stop and returns the server task without waiting for it.
    pub fn begin_stop(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.take().expect("server running")
    }

    /// Takes the data dir of a server stopped with [`Self::begin_stop`].
    pub fn take_data_dir(&mut self) -> TempDir {
        self.data_dir.take().expect("data dir")
    }
}

/// Reads a JSON body after checking the status is `expected`.
pub async fn json_status(resp: Response, expected: StatusCode) -> Value {
    let status = resp.status();
    let url = resp.url().clone();
    let text = resp.text().await.expect("reading the body");
    assert_eq!(status, expected, "{url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"))
}

/// Reads a JSON body after checking the status is `200`.
pub async fn json_ok(resp: Response) -> Value {
    json_status(resp, StatusCode::OK).await
}

/// Checks `resp` is the contract's error: `status`, a JSON content type and
/// `{"error": {"code": code, "message": "..."}}`. Returns the body.
pub async fn assert_error(resp: Response, status: StatusCode, code: &str) -> Value {
    let url = resp.url().clone();
    let got = resp.status();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.expect("reading the body");
    assert_eq!(got, status, "{url}: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "{url}: {got} with content type {content_type:?} and body {text:?}; \
         expected the JSON error body"
    );
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"));
    assert_error_shape(&body);
    assert_eq!(body["error"]["code"], code, "{url}: {body}");
    body
}

/// Asserts `body` is `{"error": {"code": snake_case, "message": non-empty}}`.
pub fn assert_error_shape(body: &Value) {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    let code = error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code: {body}"));
    assert!(
        !code.is_empty()
            && code
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "error code is not snake_case: {body}"
    );
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"));
    assert!(!message.is_empty(), "empty error message: {body}");
}

/// Polls `check` every 25 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One purchase attempt of a flood and its answer.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The buyer.
    pub user: String,
    /// Units asked for.
    pub quantity: u32,
    /// The HTTP status, or `None` when the request failed at the transport.
    pub status: Option<StatusCode>,
    /// The JSON body, when there was one.
    pub body: Value,
    /// The transport error, when there was one.
    pub error: Option<String>,
}

impl Attempt {
    /// True for a `201`.
    pub fn accepted(&self) -> bool {
        self.status == Some(StatusCode::CREATED)
    }

    /// The order id of an accepted attempt.
    pub fn order_id(&self) -> &str {
        self.body["order_id"].as_str().expect("order_id")
    }
}

/// Sends one purchase and records its answer; transport errors are values.
pub async fn attempt(
    client: &reqwest::Client,
    base: &str,
    sale_id: &str,
    user: String,
    quantity: u32,
) -> Attempt {
    let result = client
        .post(format!("{base}/api/v1/sales/{sale_id}/purchase"))
        .bearer_auth(token(&user))
        .json(&json!({ "quantity": quantity }))
        .send()
        .await;
    let (status, body, error) = match result {
        Ok(resp) => {
            let status = resp.status();
            match resp.bytes().await {
                Ok(bytes) => (
                    Some(status),
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    None,
                ),
                Err(e) => (None, Value::Null, Some(format!("{e:?}"))),
            }
        }
        Err(e) => (None, Value::Null, Some(format!("{e:?}"))),
    };
    Attempt {
        user,
        quantity,
        status,
        body,
        error,
    }
}

/// Sends every `(user, quantity)` purchase as spawned tasks with at most
/// `concurrency` in flight, calling `on_answer` as answers arrive.
pub async fn flood_with(
    client: &reqwest::Client,
    base: &str,
    sale_id: &str,
    requests: Vec<(String, u32)>,
    concurrency: usize,
    mut on_answer: impl FnMut(&Attempt),
) -> Vec<Attempt> {
    let base: Arc<str> = base.into();
    let sale_id: Arc<str> = sale_id.into();
    let mut answers = futures::stream::iter(requests)
        .map(|(user, quantity)| {
            let client = client.clone();
            let base = base.clone();
            let sale_id = sale_id.clone();
            tokio::spawn(async move { attempt(&client, &base, &sale_id, user, quantity).await })
        })
        .buffer_unordered(concurrency);
    let mut all = Vec::new();
    while let Some(answer) = answers.next().await {
        let answer = answer.expect("a flood task panicked");
        on_answer(&answer);
        all.push(answer);
    }
    all
}

/// [`flood_with`] against a [`TestApp`].
pub async fn flood(
    app: &TestApp,
    sale_id: &str,
    requests: Vec<(String, u32)>,
    concurrency: usize,
) -> Vec<Attempt> {
    flood_with(
        &app.client,
        &app.address,
        sale_id,
        requests,
        concurrency,
        |_| {},
    )
    .await
}

/// Asserts every answer of a flood is one of the contract's purchase
/// outcomes and that no user got more than `limit` units. Returns the
/// accepted units per user.
pub fn check_flood(answers: &[Attempt], limit: u32) -> HashMap<String, u32> {
    let mut held: HashMap<String, u32> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for a in answers {
        match a.status {
            Some(StatusCode::CREATED) => {
                assert!(
                    ids.insert(a.order_id().to_owned()),
                    "duplicate order id: {a:?}"
                );
                assert_eq!(a.body["user_id"], a.user.as_str(), "{:?}", a);
                assert_eq!(a.body["quantity"], a.quantity, "{:?}", a);
                assert_eq!(a.body["status"], "pending_payment", "{:?}", a);
                *held.entry(a.user.clone()).or_default() += a.quantity;
            }
            Some(StatusCode::CONFLICT) => {
                assert_error_shape(&a.body);
                let code = a.body["error"]["code"].as_str().unwrap();
                assert!(code == "sold_out" || code == "limit_reached", "{:?}", a);
            }
            None => panic!(
                "transport error in a flood: {}; {a:?}",
                a.error.as_deref().unwrap_or("unknown")
            ),
            other => panic!("unexpected answer {other:?} in a flood: {a:?}"),
        }
    }
    for (user, units) in &held {
        assert!(*units <= limit, "{user} holds {units} > limit {limit}");
    }
    held
}

/// Checks every accepted order of `answers` reads back with its owner, sale,
/// quantity and a status (64 reads at a time).
pub async fn check_orders_readable(app: &TestApp, sale_id: &str, answers: &[Attempt]) {
    let accepted: Vec<(String, String, u32)> = answers
        .iter()
        .filter(|a| a.accepted())
        .map(|a| (a.order_id().to_owned(), a.user.clone(), a.quantity))
        .collect();
    let client = app.client.clone();
    let base: Arc<str> = app.address.as_str().into();
    let sale_id: Arc<str> = sale_id.into();
    let mut reads = futures::stream::iter(accepted)
        .map(|(order_id, user, quantity)| {
            let client = client.clone();
            let base = base.clone();
            let sale_id = sale_id.clone();
            tokio::spawn(async move {
                let resp = client
                    .get(format!("{base}/api/v1/orders/{order_id}"))
                    .bearer_auth(token(&user))
                    .send()
                    .await
                    .expect("GET order");
                let order = json_ok(resp).await;
                assert_eq!(order["order_id"], order_id.as_str(), "{order}");
                assert_eq!(order["user_id"], user.as_str(), "{order}");
                assert_eq!(order["sale_id"], &*sale_id, "{order}");
                assert_eq!(order["quantity"], quantity, "{order}");
                assert!(order["status"].is_string(), "{order}");
            })
        })
        .buffer_unordered(64);
    while let Some(done) = reads.next().await {
        done.expect("an order did not read back");
    }
}

/// An integer field of a JSON body.
pub fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not an unsigned integer in {v}"))
}

/// Sends raw bytes (a whole HTTP/1.1 request ending in `Connection: close`)
/// and returns the raw answer, for what reqwest will not send.
pub async fn raw_http(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connecting");
    // The server may answer and close before reading everything we send.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("no answer in time");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A purchase sent by hand with `Expect: 100-continue`: once
/// [`SlowPurchase::start`] returns, the server has answered `100 Continue`,
/// so the request holds a place in the server (its handler is reading the
/// body) until [`SlowPurchase::finish`] sends the body.
pub struct SlowPurchase {
    stream: tokio::net::TcpStream,
}

const SLOW_BODY: &[u8] = br#"{"quantity": 1}"#;

impl SlowPurchase {
    /// Sends the head of a one-unit purchase by `user` and waits for `100 Continue`.
    pub async fn start(port: u16, sale_id: &str, user: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = format!(
            "POST /api/v1/sales/{sale_id}/purchase HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            token(user),
            SLOW_BODY.len()
        );
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connecting");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let read_head = async {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.expect("reading the answer");
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read_head)
            .await
            .expect("no 100 Continue within 10 s");
        assert!(
            buf.starts_with(b"HTTP/1.1 100"),
            "expected 100 Continue: {}",
            String::from_utf8_lossy(&buf)
        );
        Self { stream }
    }

    /// Sends the body and returns the final status code and JSON body.
    pub async fn finish(mut self) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The server may already have answered (a timeout) and closed.
        let _ = self.stream.write_all(SLOW_BODY).await;
        let mut answer = Vec::new();
        tokio::time::timeout(REQUEST_TIMEOUT, self.stream.read_to_end(&mut answer))
            .await
            .expect("no answer in time")
            .expect("reading the answer");
        parse_raw_answer(&String::from_utf8_lossy(&answer))
    }
}

/// The status and JSON body of a raw HTTP/1.1 answer (with a fixed length).
pub fn parse_raw_answer(answer: &str) -> (u16, Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header block: {answer}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (status, body)
}

/// A free port: bind port 0, note it, let it go.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}

/// An admin token no other server of this test run uses, so a test can tell
/// its own binary from another test's server that took the same port.
pub fn unique_admin_token() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{ADMIN_TOKEN}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `flashsale serve` on `port` and `dir` with `admin_token`, the test JWT
/// secret, the rate limit off, and output discarded unless `TEST_LOG` is set.
pub fn serve_command(
    dir: &std::path::Path,
    port: u16,
    admin_token: &str,
) -> tokio::process::Command {
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    // Only what this harness sets: no backend or limit from the environment.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FLASHSALE_") {
            cmd.env_remove(name);
        }
    }
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--user-rate", "0"])
        .env("FLASHSALE_ADMIN_TOKEN", admin_token)
        .env("FLASHSALE_JWT_SECRET", JWT_SECRET)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("TEST_LOG").is_none() {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    cmd
}

/// Waits until the child serves on `app`'s port: `/healthz` answers and
/// `app.admin_token` is the admin token there (so it is this child, not
/// another server that took the port). `Err` when the child exits first,
/// another server answers, or 30 s pass.
pub async fn serving(child: &mut tokio::process::Child, app: &TestApp) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("polling the child") {
            return Err(format!("flashsale serve exited before answering: {status}"));
        }
        let health = app.client.get(app.url("/healthz")).send().await;
        if health.is_ok_and(|r| r.status() == StatusCode::OK) {
            // An admin-only lookup of a sale that cannot exist: 404 with our
            // token means it is ours; 401 means someone else's server.
            let probe = app
                .client
                .get(app.url("/api/v1/sales/0/stats"))
                .bearer_auth(&app.admin_token)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            return match probe.status() {
                StatusCode::NOT_FOUND => Ok(()),
                other => Err(format!(
                    "another server answers on port {}: {other}",
                    app.port
                )),
            };
        }
        if tokio::time::Instant::now() > deadline {
            return Err("flashsale serve did not answer /healthz within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Starts the real `flashsale serve` on `dir` on a free port and waits until
/// it serves. The port is picked by binding port 0 and letting it go, so
/// another process may take it first: then it tries again on a new one.
pub async fn start_binary(dir: &std::path::Path) -> (tokio::process::Child, TestApp) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let mut app = TestApp::attach(port);
        app.admin_token = unique_admin_token();
        let mut child = serve_command(dir, port, &app.admin_token)
            .spawn()
            .expect("starting the flashsale binary");
        match serving(&mut child, &app).await {
            Ok(()) => return (child, app),
            Err(why) => {
                let _ = child.kill().await;
                failures.push(why);
            }
        }
    }
    panic!("flashsale serve did not start: {failures:?}");
}

/// Sends SIGTERM to a child (through `kill`, to need no extra crate).
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("the child is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}
