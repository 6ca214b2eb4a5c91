//! The served OpenAPI document (`GET /api/v1/openapi.json`, built in
//! `src/http/openapi.rs`) against the served router and its answers.
//!
//! How the document is kept in step with the routes, in two independent
//! ways, so neither can drift alone:
//!
//! 1. By construction: every route module declares its routes once with
//!    `routes!`, which builds the router *and* the list
//!    `flashsale::http::all_routes()`; the document's operations must equal that
//!    list exactly (a route missing from the document, or a documented one
//!    not routed, fails here and in the unit test beside `ApiDoc`).
//! 2. By behaviour, which needs no trust in that list: every documented
//!    `(method, path)` is probed on the running app and must be answered by a
//!    handler (not `405`, not the router's "no such route" `404`), and every
//!    other method on a documented path must be `405`. (A path that is routed
//!    but in no list at all cannot be probed from outside; step 1 is what
//!    rules it out, as the router is built from the same lines.)
//!
//! Then what schemathesis (`scripts/schemathesis.sh`) checks on random
//! input is checked here on known bodies: the fields each answer carries are
//! exactly the documented ones.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::kit::{json_ok, spawn_app, token, TestApp};

async fn document(app: &TestApp) -> Value {
    let resp = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("GET openapi.json");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    resp.json().await.expect("the document is JSON")
}

/// `(METHOD, path)` of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .expect("paths is an object")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item is an object")
                .keys()
                .filter(|k| HTTP_METHODS.contains(&k.as_str()))
                .map(|m| (m.to_ascii_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The methods probed on every documented path (`HEAD` is `GET`'s, and
/// `OPTIONS`/`TRACE` are not routed anywhere).
const PROBED: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[tokio::test]
async fn openapi_document_is_served_as_openapi_3_1_without_auth() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    for (name, format) in [("buyer", Some("JWT")), ("admin", None)] {
        let scheme = &doc["components"]["securitySchemes"][name];
        assert_eq!(scheme["type"], "http", "{name}");
        assert_eq!(scheme["scheme"], "bearer", "{name}");
        if let Some(format) = format {
            assert_eq!(scheme["bearerFormat"], format);
        }
    }

    let purchase = &doc["paths"]["/api/v1/sales/{sale_id}/purchase"]["post"];
    let codes: BTreeSet<&str> = purchase["responses"]
        .as_object()
        .expect("purchase responses")
        .keys()
        .map(String::as_str)
        .collect();
    for code in ["201", "401", "403", "404", "409", "429", "503"] {
        assert!(codes.contains(code), "purchase does not document {code}");
    }
    assert_eq!(purchase["security"], json!([{"buyer": []}]));
    assert_eq!(
        doc["paths"]["/api/v1/sales"]["post"]["security"],
        json!([{"admin": []}])
    );
    // Public routes carry no security requirement.
    assert!(doc["paths"]["/api/v1/sales/{sale_id}"]["get"]
        .get("security")
        .is_none());

    // The error codes are an enum that includes every rejection's code.
    let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum");
    for code in [
        "unauthorized",
        "forbidden",
        "not_found",
        "invalid_request",
        "not_started",
        "ended",
        "sold_out",
        "limit_reached",
        "rate_limited",
        "overloaded",
    ] {
        assert!(codes.contains(&json!(code)), "{code}");
    }
}

#[tokio::test]
async fn openapi_operations_are_exactly_the_served_routes() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let documented = operations(&doc);

    // 1. The document against the routes the router is built from.
    let routed: BTreeSet<(String, String)> = flashsale::http::all_routes()
        .map(|(m, p)| (m, p.to_owned()))
        .collect();
    assert_eq!(
        documented, routed,
        "the OpenAPI document and the router disagree (left: documented, right: routed)"
    );

    // 2. The document against the running app, every method on every path.
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        // Unknown ids: every handler answers before doing anything.
        let concrete = path.replace("{sale_id}", "1").replace("{order_id}", "1");
        for method in PROBED {
            let resp = app
                .client
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&concrete),
                )
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {concrete}: {e}"));
            let status = resp.status();
            let body: Value = if status.is_success() {
                Value::Null
            } else {
                resp.json().await.unwrap_or(Value::Null)
            };
            let unrouted = status == StatusCode::METHOD_NOT_ALLOWED
                || (status == StatusCode::NOT_FOUND && body["error"]["message"] == "no such route");
            if documented.contains(&(method.to_owned(), path.clone())) {
                assert!(
                    !unrouted,
                    "{method} {path} is documented but not routed: {status} {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is routed but not documented: {body}"
                );
            }
        }
    }
    // The probe tells the router's fallback apart from a handler's 404.
    let resp = app
        .client
        .get(app.url("/api/v1/sales/1/undocumented"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "no such route");
}

/// `name`'s schema in the document's components.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "no schema {name}");
    s
}

/// Every field of `body` is one of the schema's properties, and every
/// required property is there.
fn assert_fields(doc: &Value, name: &str, body: &Value) {
    let s = schema(doc, name);
    let properties: BTreeSet<&str> = s["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has no properties"))
        .keys()
        .map(String::as_str)
        .collect();
    let required: BTreeSet<&str> = s["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let fields: BTreeSet<&str> = body
        .as_object()
        .unwrap_or_else(|| panic!("{name}: not an object: {body}"))
        .keys()
        .map(String::as_str)
        .collect();
    let undocumented: Vec<_> = fields.difference(&properties).collect();
    let missing: Vec<_> = required.difference(&fields).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "{name}: fields not in the document {undocumented:?}, required fields missing \
         {missing:?}: {body}"
    );
}

/// The `$ref`'d schema name of `operation`'s answer `status`.
fn answer_schema<'a>(doc: &'a Value, method: &str, path: &str, status: &str) -> &'a str {
    doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .unwrap_or_else(|| panic!("{method} {path} {status}: no schema reference"))
}

#[tokio::test]
async fn openapi_bodies_carry_exactly_the_documented_fields() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let admin = |req: reqwest::RequestBuilder| req.bearer_auth(&app.admin_token);

    let sale_id = app.open_sale(1, 1).await;
    let sale = app.sale(&sale_id).await;
    assert_fields(
        &doc,
        answer_schema(&doc, "get", "/api/v1/sales/{sale_id}", "200"),
        &sale,
    );

    let order = app.buy_ok(&sale_id, "ann", 1).await;
    let path = "/api/v1/sales/{sale_id}/purchase";
    assert_fields(&doc, answer_schema(&doc, "post", path, "201"), &order);
    // A miss records an intent, so the intents page has an item.
    let missed = app.buy(&sale_id, "bob").await;
    assert_eq!(missed.status(), StatusCode::CONFLICT);
    let error: Value = missed.json().await.unwrap();
    assert_fields(&doc, answer_schema(&doc, "post", path, "409"), &error);
    assert_fields(&doc, "ErrorDetail", &error["error"]);

    let order_id = order["order_id"].as_str().unwrap();
    let paid = json_ok(app.pay(order_id, &token("ann")).await).await;
    assert_fields(
        &doc,
        answer_schema(&doc, "post", "/api/v1/orders/{order_id}/pay", "200"),
        &paid,
    );
    let wrong_state = app.cancel(order_id, &token("ann")).await;
    assert_eq!(wrong_state.status(), StatusCode::CONFLICT);
    let error: Value = wrong_state.json().await.unwrap();
    assert_fields(&doc, "ErrorDetail", &error["error"]);

    let stats = app.stats(&sale_id).await;
    let name = answer_schema(&doc, "get", "/api/v1/sales/{sale_id}/stats", "200");
    assert_fields(&doc, name, &stats);
    assert_fields(&doc, "RejectedCounts", &stats["rejected"]);

    let list = json_ok(
        admin(app.client.get(app.url("/api/v1/sales")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_fields(
        &doc,
        answer_schema(&doc, "get", "/api/v1/sales", "200"),
        &list,
    );

    let intents = crate::kit::eventually(
        std::time::Duration::from_secs(10),
        "bob's intent is stored",
        || async {
            let page = json_ok(app.intents(&sale_id, None, None).await).await;
            (!page["items"].as_array().unwrap().is_empty()).then_some(page)
        },
    )
    .await;
    let name = answer_schema(&doc, "get", "/api/v1/sales/{sale_id}/intents", "200");
    assert_fields(&doc, name, &intents);
    assert_fields(&doc, "Intent", &intents["items"][0]);

    for (path, status) in [("/healthz", "200"), ("/readyz", "200")] {
        let body = json_ok(app.client.get(app.url(path)).send().await.unwrap()).await;
        assert_fields(&doc, answer_schema(&doc, "get", path, status), &body);
    }
}
