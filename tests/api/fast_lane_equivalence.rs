//! The fast lane answers exactly what the full path answers.
//!
//! Two twin applications get the same sales and then the same random
//! requests, one after the other: twin A through the fast lane (the service
//! the server runs), twin B through the plain router. Every answer must
//! match — status, `content-type`, `retry-after`, `idempotent-replayed`,
//! `location` and body, with the ids each twin generated mapped away — and
//! so must each sale's stats and the purchase metrics each request moved.
//! The twins stay in lockstep only if every answer changed their state the
//! same way (keys recorded, counters, intents), so later requests check the
//! earlier ones' side effects too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use flashsale::auth::{Authenticator, Secret};
use flashsale::http::{self, AppInner, AppState, FastLane};
use flashsale::{Application, Settings};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

use crate::kit::{time_in, token, ADMIN_TOKEN, JWT_SECRET};

const BODY_LIMIT: usize = 16 * 1024;

/// The sales both twins hold, by index: their roles in the test.
const SALES: [&str; 5] = ["sold_out", "not_started", "ended", "open", "scarce"];

/// One application, its two front doors and its sale ids.
struct Twin {
    _app: Application,
    _dir: TempDir,
    lane: FastLane,
    router: Router,
    sales: Vec<String>,
}

async fn twin() -> Twin {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::with_data_dir(dir.path());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin_token = Some(Secret::new(ADMIN_TOKEN));
    settings.jwt_secret = Some(Secret::new(JWT_SECRET));
    settings.engine.user_rate_per_sec = 0;
    settings.body_limit = BODY_LIMIT;
    let app = Application::build(settings).await.unwrap();
    let state = AppState::new(AppInner {
        engine: app.engine().clone(),
        auth: Arc::new(Authenticator::new(
            &Secret::new(JWT_SECRET),
            Secret::new(ADMIN_TOKEN),
        )),
        accepting: Arc::new(AtomicBool::new(true)),
        stopping: tokio_util::sync::CancellationToken::new(),
        trusted_proxies: Default::default(),
        demo: None,
    });
    // The app's router without its overload layers (shedding, timeout),
    // which answer nothing below their limits.
    let router = http::ops_router()
        .merge(http::api_router().layer(DefaultBodyLimit::max(BODY_LIMIT)))
        .method_not_allowed_fallback(http::method_not_allowed)
        .with_state(state.clone());
    let lane = FastLane::new(router.clone(), state).with_body_limit(BODY_LIMIT);
    let mut twin = Twin {
        _app: app,
        _dir: dir,
        lane,
        router,
        sales: Vec::new(),
    };
    for body in [
        json!({"item": "gone", "stock": 1, "starts_at": time_in(-60)}),
        json!({"item": "later", "stock": 5, "starts_at": time_in(3600)}),
        json!({"item": "over", "stock": 5, "starts_at": time_in(-7200), "ends_at": time_in(-3600)}),
        json!({"item": "plenty", "stock": 1_000_000, "per_user_limit": 1_000_000, "starts_at": time_in(-60)}),
        json!({"item": "few", "stock": 6, "per_user_limit": 2, "starts_at": time_in(-60)}),
    ] {
        let req = Request::post("/api/v1/sales")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, _, body) = answer(twin.router.clone().oneshot(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        twin.sales.push(body["id"].as_str().unwrap().to_owned());
    }
    let req = Request::post(format!("/api/v1/sales/{}/purchase", twin.sales[0]))
        .header(header::AUTHORIZATION, format!("Bearer {}", token("first")))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = answer(twin.router.clone().oneshot(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    twin
}

/// Status, the headers that matter, and the body (JSON, or the raw text).
async fn answer(resp: axum::response::Response) -> (StatusCode, BTreeMap<String, String>, Value) {
    let status = resp.status();
    let mut headers = BTreeMap::new();
    for name in [
        "content-type",
        "retry-after",
        "idempotent-replayed",
        "location",
        "www-authenticate",
        "allow",
    ] {
        if let Some(v) = resp.headers().get(name) {
            headers.insert(
                name.to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            );
        }
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, body)
}

#[derive(Debug, Clone)]
enum Target {
    /// `/api/v1/sales/{sale}/purchase` for the sale at this index of
    /// [`SALES`]; past the end, an id no twin knows.
    Sale(usize),
    /// A purchase path with this raw id segment.
    RawId(&'static str),
    /// Some other path.
    Path(&'static str),
}

#[derive(Debug, Clone)]
enum Auth {
    Buyer(usize),
    Garbage,
    Admin,
    Basic,
    Missing,
}

#[derive(Debug, Clone)]
enum Key {
    None,
    /// A key never sent before.
    Fresh,
    /// One of a few keys, so they come back.
    Pooled(usize),
    Invalid(&'static [u8]),
}

/// How the body's bytes arrive.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    /// One frame, there at once.
    Whole,
    /// Two frames, both there at once.
    Split,
    /// Two frames, the second after a wait.
    Late,
}

#[derive(Debug, Clone)]
struct Case {
    method: Method,
    target: Target,
    auth: Auth,
    body: Option<Vec<u8>>,
    delivery: Delivery,
    content_type: Option<&'static str>,
    key: Key,
}

fn body() -> impl Strategy<Value = Option<Vec<u8>>> {
    let quantity = prop_oneof![
        4 => (1u64..4).prop_map(Value::from),
        1 => prop::sample::select(vec![
            json!(0), json!(-1), json!("1"), json!(1.5), json!(1.0), json!(1_000_000_001u64),
            json!(null), json!(true), json!([1]), json!(u64::MAX), json!(1_000_000_000u64),
        ]),
    ];
    let literal = prop::sample::select(vec![
        "",
        "   ",
        " \n\t",
        "{}",
        "{",
        "[1]",
        "\"x\"",
        "42",
        "null",
        "not json",
        "{\"quantity\":01}",
        "{\"quantity\":1,}",
        " {\"quantity\" : 2 } ",
        "{\"quantity\":1,\"quantity\":5}",
        "{\"quantity\":1,\"note\":[1,{\"a\":null}]}",
        "\u{c}",
        "\u{c}{\"quantity\":1}",
        "{\"quantity\":1e0}",
    ]);
    prop_oneof![
        3 => Just(None),
        4 => quantity.prop_map(|q| Some(json!({ "quantity": q }).to_string().into_bytes())),
        3 => literal.prop_map(|s| Some(s.as_bytes().to_vec())),
        // Past the fast lane's own cap, and past the body limit.
        1 => prop::sample::select(vec![2_000usize, BODY_LIMIT + 1]).prop_map(|n| Some(
            format!("{{\"quantity\":1,\"pad\":\"{}\"}}", "x".repeat(n)).into_bytes()
        )),
        1 => prop::collection::vec(any::<u8>(), 1..24).prop_map(Some),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let method = prop_oneof![
        8 => Just(Method::POST),
        1 => prop::sample::select(vec![Method::GET, Method::PUT, Method::DELETE, Method::HEAD]),
    ];
    let target = prop_oneof![
        // Mostly the sold-out sale: the flood's case, with keys coming back.
        8 => Just(Target::Sale(0)),
        8 => (1..SALES.len() + 1).prop_map(Target::Sale),
        1 => prop::sample::select(vec![
            "abc", "%FF", "0x1", "-1", "99999999999999999999999", "18446744073709551616", "%31", "..",
        ])
        .prop_map(Target::RawId),
        1 => prop::sample::select(vec![
            "/api/v1/sales//purchase", "/api/v1/sales/1/purchase/", "/api/v1/sales/1/buy", "/nope",
        ])
        .prop_map(Target::Path),
    ];
    let auth = prop_oneof![
        8 => (0usize..3).prop_map(Auth::Buyer),
        1 => prop::sample::select(vec![Auth::Garbage, Auth::Admin, Auth::Basic, Auth::Missing]),
    ];
    let content_type = prop::sample::select(vec![
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("nonsense"),
    ]);
    let key = prop_oneof![
        3 => Just(Key::None),
        2 => Just(Key::Fresh),
        3 => (0usize..3).prop_map(Key::Pooled),
        1 => prop::sample::select(vec![&b""[..], &[b'k'; 129][..], "ключ".as_bytes()]).prop_map(Key::Invalid),
    ];
    let delivery = prop::sample::select(vec![Delivery::Whole, Delivery::Split, Delivery::Late]);
    (method, target, auth, body(), delivery, content_type, key).prop_map(
        |(method, target, auth, body, delivery, content_type, key)| Case {
            method,
            target,
            auth,
            body,
            delivery,
            content_type,
            key,
        },
    )
}

/// The request of `case` for `twin`; `fresh` names this case's fresh key.
fn request(case: &Case, twin: &Twin, fresh: &str) -> Request<Body> {
    let path = match &case.target {
        Target::Sale(i) => match twin.sales.get(*i) {
            Some(id) => format!("/api/v1/sales/{id}/purchase"),
            None => "/api/v1/sales/4242/purchase".to_owned(),
        },
        Target::RawId(id) => format!("/api/v1/sales/{id}/purchase"),
        Target::Path(p) => (*p).to_owned(),
    };
    let mut req = Request::builder().method(case.method.clone()).uri(path);
    let authorization = match &case.auth {
        Auth::Buyer(u) => Some(format!("Bearer {}", token(&format!("buyer-{u}")))),
        Auth::Garbage => Some("Bearer not-a-jwt".to_owned()),
        Auth::Admin => Some(format!("Bearer {ADMIN_TOKEN}")),
        Auth::Basic => Some("Basic YWxpY2U6c2VjcmV0".to_owned()),
        Auth::Missing => None,
    };
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    if let Some(ct) = case.content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    match &case.key {
        Key::None => {}
        Key::Fresh => req = req.header("idempotency-key", fresh),
        Key::Pooled(k) => req = req.header("idempotency-key", format!("pooled-{k}")),
        Key::Invalid(bytes) => {
            req = req.header(
                "idempotency-key",
                axum::http::HeaderValue::from_bytes(bytes).unwrap(),
            )
        }
    }
    let body = match &case.body {
        None => Body::empty(),
        Some(bytes) => {
            let bytes = Bytes::from(bytes.clone());
            let half = bytes.len() / 2;
            let (a, b) = (bytes.slice(..half), bytes.slice(half..));
            match case.delivery {
                Delivery::Whole => {
                    req = req.header(header::CONTENT_LENGTH, bytes.len());
                    Body::from(bytes)
                }
                Delivery::Split => {
                    Body::from_stream(futures::stream::iter([Ok::<_, std::io::Error>(a), Ok(b)]))
                }
                Delivery::Late => {
                    Body::from_stream(futures::stream::iter([a, b]).enumerate().then(
                        |(i, chunk)| async move {
                            if i == 1 {
                                tokio::task::yield_now().await;
                            }
                            Ok::<_, std::io::Error>(chunk)
                        },
                    ))
                }
            }
        }
    };
    req.body(body).unwrap()
}

/// Replaces what each twin generates on its own (order ids, times, its
/// sale ids) with placeholders.
fn normalize(twin: &Twin, headers: &mut BTreeMap<String, String>, body: &mut Value) {
    if headers.contains_key("location") {
        headers.insert("location".into(), "<location>".into());
    }
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    for field in ["order_id", "created_at", "updated_at", "expires_at"] {
        if let Some(v) = obj.get_mut(field) {
            *v = json!(format!("<{field}>"));
        }
    }
    if let Some(v) = obj.get_mut("sale_id") {
        let index = twin
            .sales
            .iter()
            .position(|s| Some(s.as_str()) == v.as_str());
        *v = json!(index);
    }
}

/// `flashsale_purchase_total` by outcome, from `GET /metrics`.
async fn purchase_totals(twin: &Twin) -> BTreeMap<String, f64> {
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let resp = twin.router.clone().oneshot(req).await.unwrap();
    let text = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| l.strip_prefix("flashsale_purchase_total{outcome=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(outcome, n)| (outcome.to_owned(), n.trim().parse().unwrap_or(f64::NAN)))
        .collect()
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

async fn stats(twin: &Twin) -> Vec<Value> {
    let mut all = Vec::new();
    for id in &twin.sales {
        let req = Request::get(format!("/api/v1/sales/{id}/stats"))
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let (status, _, mut body) = answer(twin.router.clone().oneshot(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        body["sale_id"] = json!("<sale_id>");
        all.push(body);
    }
    all
}

/// True when this test has its process (and so the metrics registry) to
/// itself, as under nextest; elsewhere other tests move the counters too.
fn own_process() -> bool {
    std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|m| m == "process-per-test")
}

/// Runs `case` on both twins and compares what they answered.
async fn run_case(fast: &Twin, full: &Twin, case: &Case, n: u64) -> Result<(), String> {
    let fresh = format!("fresh-{n}");
    // Both twins share one metrics registry: measure each side alone.
    let m0 = purchase_totals(fast).await;
    let via_lane = fast
        .lane
        .clone()
        .oneshot(request(case, fast, &fresh))
        .await
        .unwrap();
    let (s_fast, mut h_fast, mut b_fast) = answer(via_lane).await;
    let m1 = purchase_totals(fast).await;
    let via_router = full
        .router
        .clone()
        .oneshot(request(case, full, &fresh))
        .await
        .unwrap();
    let (s_full, mut h_full, mut b_full) = answer(via_router).await;
    let m2 = purchase_totals(full).await;
    normalize(fast, &mut h_fast, &mut b_fast);
    normalize(full, &mut h_full, &mut b_full);
    if (s_fast, &h_fast, &b_fast) != (s_full, &h_full, &b_full) {
        return Err(format!(
            "fast lane: {s_fast} {h_fast:?} {b_fast}\nfull path: {s_full} {h_full:?} {b_full}"
        ));
    }
    let (d_fast, d_full) = (delta(&m0, &m1), delta(&m1, &m2));
    if own_process() && d_fast != d_full {
        return Err(format!(
            "purchase metrics moved differently: fast lane {d_fast:?}, full path {d_full:?}"
        ));
    }
    Ok(())
}

#[test]
fn the_fast_lane_answers_exactly_what_the_full_path_answers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (fast, full) = rt.block_on(async { (twin().await, twin().await) });
    // One pair of twins for every case; a failing case leaves them apart,
    // so shrinking would mislead: report the first failure as it came.
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    let counter = AtomicU64::new(0);
    let result = runner.run(&case(), |case| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        rt.block_on(run_case(&fast, &full, &case, n))
            .map_err(|e| TestCaseError::fail(format!("{case:?}\n{e}")))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        counter.into_inner() >= 256,
        "fewer cases ran than configured"
    );
    if !own_process() {
        eprintln!("purchase metrics not compared: other tests share this process");
    }
    rt.block_on(async {
        let (a, b) = (stats(&fast).await, stats(&full).await);
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert_eq!(a, b, "stats of the {} sale differ", SALES[i]);
        }
        // The sold-out sale saw keyed and unkeyed rejections.
        assert!(
            a[0]["rejected"]["sold_out"].as_u64().unwrap() > 0,
            "{}",
            a[0]
        );
    });
}
