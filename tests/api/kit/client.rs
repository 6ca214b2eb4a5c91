//! The typed API client: one method on [`TestApp`] per endpoint of the
//! contract (create a sale, buy, read an order, pay, cancel, stats,
//! intents), buyer tokens, and the assertions every test uses on answers
//! (status, JSON body, the contract's error body).

use flashsale::auth::{mint_token, Secret};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use super::app::{TestApp, JWT_SECRET};

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

    /// `POST /api/v1/sales/{id}/{action}` (`open` or `close`) with the
    /// admin token, or with `token` instead when given.
    pub async fn move_window(&self, sale_id: &str, action: &str, token: Option<&str>) -> Response {
        self.client
            .post(self.url(&format!("/api/v1/sales/{sale_id}/{action}")))
            .bearer_auth(token.unwrap_or(&self.admin_token))
            .send()
            .await
            .expect("POST open/close")
    }

    /// Opens the sale now; the sale body, failing the test unless `200`.
    pub async fn open_now(&self, sale_id: &str) -> Value {
        json_ok(self.move_window(sale_id, "open", None).await).await
    }

    /// Closes the sale now; the sale body, failing the test unless `200`.
    pub async fn close_now(&self, sale_id: &str) -> Value {
        json_ok(self.move_window(sale_id, "close", None).await).await
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

/// An integer field of a JSON body.
pub fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not an unsigned integer in {v}"))
}
