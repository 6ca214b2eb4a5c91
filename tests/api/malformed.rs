//! Malformed requests to every route get a 4xx with the contract's JSON
//! error body (`{"error": {"code", "message"}}`, `application/json`),
//! whichever layer refuses them: the router, an extractor, a middleware.
//!
//! Requests go over raw TCP, byte for byte as written here, since a client
//! library would normalise (`..`, percent-encoding) or refuse them.

use serde_json::Value;

use crate::kit::{json_status, raw_http, spawn_app, token, TestApp};

/// Who a route lets in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    Public,
    Admin,
    Buyer,
}

/// Every route of the contract: path template (`{id}` is a sale or order
/// id), the methods it answers, who may call it.
const ROUTES: &[(&str, &[&str], Caller)] = &[
    ("/api/v1/sales", &["GET", "POST"], Caller::Admin),
    ("/api/v1/sales/{id}", &["GET"], Caller::Public),
    ("/api/v1/sales/{id}/purchase", &["POST"], Caller::Buyer),
    ("/api/v1/sales/{id}/stats", &["GET"], Caller::Admin),
    ("/api/v1/sales/{id}/intents", &["GET"], Caller::Admin),
    ("/api/v1/sales/{id}/events", &["GET"], Caller::Public),
    ("/api/v1/orders/{id}", &["GET"], Caller::Buyer),
    ("/api/v1/orders/{id}/pay", &["POST"], Caller::Buyer),
    ("/api/v1/orders/{id}/cancel", &["POST"], Caller::Buyer),
    ("/healthz", &["GET"], Caller::Public),
    ("/readyz", &["GET"], Caller::Public),
    ("/metrics", &["GET"], Caller::Public),
];

/// Methods tried on every route.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "FOO",
];

/// Id segments that are not ids: bad percent-encoding, invalid UTF-8 once
/// decoded, dot segments, overlong or out-of-range numbers, junk.
fn bad_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "%FF",
        "%C3%28",
        "%ED%A0%80",
        "%",
        "%zz",
        "%2",
        "..",
        "%2e%2e",
        ".",
        "%2F",
        "%00",
        "abc",
        "-1",
        "+1",
        "0x10",
        "1.5",
        "1e3",
        "%20",
        "18446744073709551616",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Empty: `/api/v1/sales//purchase` still matches its route.
    ids.push(String::new());
    ids.push("9".repeat(40));
    ids.push("1".repeat(5000));
    ids
}

/// A raw answer: status, headers (names lower-cased), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request over its own connection and reads the whole answer.
async fn send(
    app: &TestApp,
    method: &str,
    target: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Answer {
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    let framed = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    if !framed && (!body.is_empty() || method == "POST") {
        request.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    request.extend_from_slice(body);
    parse(&raw_http(app.port, &request).await)
}

fn parse(raw: &str) -> Answer {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Collects what is wrong with `answer`, which must be one of `statuses`
/// (all 4xx) with the JSON error body (none for `HEAD`).
fn check(wrong: &mut Vec<String>, what: &str, answer: &Answer, statuses: &[u16]) {
    let mut problems = Vec::new();
    if !statuses.contains(&answer.status) || !(400..500).contains(&answer.status) {
        problems.push(format!(
            "status {} (wanted one of {statuses:?})",
            answer.status
        ));
    }
    let content_type = answer.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        problems.push(format!("content type {content_type:?}"));
    }
    if !what.starts_with("HEAD ") {
        match serde_json::from_str::<Value>(&answer.body) {
            Ok(body) => {
                let code = body["error"]["code"].as_str().unwrap_or_default();
                let machine = !code.is_empty()
                    && code
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                let message = body["error"]["message"].as_str().unwrap_or_default();
                if !machine || message.is_empty() {
                    problems.push(format!("error body {body}"));
                }
            }
            Err(_) => problems.push(format!("body {:?}", answer.body)),
        }
    }
    if !problems.is_empty() {
        wrong.push(format!("{what}: {}", problems.join(", ")));
    }
}

fn assert_none_wrong(wrong: Vec<String>) {
    assert!(
        wrong.is_empty(),
        "{} answers without a 4xx and the JSON error body:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// An app with an open sale and one order by `alice`; returns both ids.
async fn app_with_an_order() -> (TestApp, String, String) {
    let app = spawn_app().await;
    let sale_id = app.open_sale(10, 5).await;
    let order = json_status(
        app.purchase(&sale_id, &token("alice"), None, None).await,
        reqwest::StatusCode::CREATED,
    )
    .await;
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    (app, sale_id, order_id)
}

fn credentials(app: &TestApp, caller: Caller) -> Vec<u8> {
    match caller {
        Caller::Public => Vec::new(),
        Caller::Admin => format!("Bearer {}", app.admin_token).into_bytes(),
        Caller::Buyer => format!("Bearer {}", token("alice")).into_bytes(),
    }
}

#[tokio::test]
async fn malformed_ids_on_every_route_are_4xx_with_the_error_body() {
    let (app, _, _) = app_with_an_order().await;
    let mut wrong = Vec::new();
    for (template, methods, caller) in ROUTES.iter().filter(|r| r.0.contains("{id}")) {
        let auth = credentials(&app, *caller);
        for id in bad_ids() {
            let target = template.replace("{id}", &id);
            let mut headers: Vec<(&str, &[u8])> = Vec::new();
            if !auth.is_empty() {
                headers.push(("Authorization", &auth));
            }
            for method in *methods {
                let answer = send(&app, method, &target, &headers, b"").await;
                let shown = &target[..target.len().min(60)];
                check(
                    &mut wrong,
                    &format!("{method} {shown}"),
                    &answer,
                    &[400, 404],
                );
            }
        }
    }
    // The case of the issue, word for word.
    let auth = credentials(&app, Caller::Buyer);
    let answer = send(
        &app,
        "POST",
        "/api/v1/sales/%FF/purchase",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    check(
        &mut wrong,
        "POST /api/v1/sales/%FF/purchase",
        &answer,
        &[400],
    );
    assert_none_wrong(wrong);
    app.assert_healthy().await;
}

#[tokio::test]
async fn every_wrong_method_on_every_route_is_405_with_the_error_body_and_allow() {
    let (app, sale_id, order_id) = app_with_an_order().await;
    let mut wrong = Vec::new();
    for (template, methods, caller) in ROUTES {
        let id = if template.contains("orders") {
            &order_id
        } else {
            &sale_id
        };
        let target = template.replace("{id}", id);
        let auth = credentials(&app, *caller);
        let allowed = |m: &str| methods.contains(&m) || (m == "HEAD" && methods.contains(&"GET"));
        for method in METHODS.iter().filter(|m| !allowed(m)) {
            let mut headers: Vec<(&str, &[u8])> = Vec::new();
            if !auth.is_empty() {
                headers.push(("Authorization", &auth));
            }
            let answer = send(&app, method, &target, &headers, b"").await;
            let what = format!("{method} {target}");
            check(&mut wrong, &what, &answer, &[405]);
            if answer.header("allow").is_none() {
                wrong.push(format!("{what}: no Allow header"));
            }
        }
    }
    assert_none_wrong(wrong);
    app.assert_healthy().await;
}

#[tokio::test]
async fn unknown_routes_and_bad_queries_are_4xx_with_the_error_body() {
    let (app, sale_id, _) = app_with_an_order().await;
    let admin = credentials(&app, Caller::Admin);
    let auth: &[(&str, &[u8])] = &[("Authorization", &admin)];
    let mut wrong = Vec::new();
    // (`/` is a route: it leads to the dashboard.)
    for target in [
        "/s/".to_owned(),
        "/assets/".to_owned(),
        "/admin/x".to_owned(),
        "//".to_owned(),
        "/api".to_owned(),
        "/api/v1".to_owned(),
        "/api/v1/sales/".to_owned(),
        format!("/api/v1/sales/{sale_id}/purchase/extra"),
        format!("/api/v1/sales/{sale_id}/"),
        "/api/v1/orders".to_owned(),
        "/healthz/".to_owned(),
        "/%FF".to_owned(),
        "/api/v1/%2e%2e/healthz".to_owned(),
        format!("/{}", "x".repeat(6000)),
    ] {
        for method in ["GET", "POST", "HEAD"] {
            let answer = send(&app, method, &target, auth, b"").await;
            check(
                &mut wrong,
                &format!("{method} {target:.60}"),
                &answer,
                &[404],
            );
        }
    }
    let intents = format!("/api/v1/sales/{sale_id}/intents");
    for query in [
        "limit=",
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=1001",
        "limit=99999999999999999999999",
        "limit=1&limit=2",
        "cursor=a&cursor=b",
        "limit=%FF",
    ] {
        let target = format!("{intents}?{query}");
        let answer = send(&app, "GET", &target, auth, b"").await;
        check(
            &mut wrong,
            &format!("GET …/intents?{query}"),
            &answer,
            &[400],
        );
    }
    assert_none_wrong(wrong);
    app.assert_healthy().await;
}

#[tokio::test]
async fn bad_headers_on_every_route_are_4xx_with_the_error_body() {
    let (app, sale_id, order_id) = app_with_an_order().await;
    let mut wrong = Vec::new();
    let buyer = credentials(&app, Caller::Buyer);
    let admin = credentials(&app, Caller::Admin);
    let bad_credentials: Vec<(&str, Vec<u8>, u16)> = vec![
        ("non-ASCII", b"Bearer \xff\xfe\xc3\x28".to_vec(), 401),
        ("Latin-1", "Bearer é".as_bytes().to_vec(), 401),
        ("empty", Vec::new(), 401),
        ("scheme only", b"Bearer".to_vec(), 401),
        ("Basic", b"Basic YWxpY2U6c2VjcmV0".to_vec(), 401),
        ("not a JWT", b"Bearer not-a-jwt".to_vec(), 401),
        (
            "JWT with a bad signature",
            {
                let mut t = token("alice").into_bytes();
                let last = t.len() - 2;
                t[last] = if t[last] == b'A' { b'B' } else { b'A' };
                [b"Bearer ".to_vec(), t].concat()
            },
            401,
        ),
    ];
    for (template, methods, caller) in ROUTES.iter().filter(|r| r.2 != Caller::Public) {
        let id = if template.contains("orders") {
            &order_id
        } else {
            &sale_id
        };
        let target = template.replace("{id}", id);
        for method in *methods {
            let what = |why: &str| format!("{method} {target} ({why})");
            let answer = send(&app, method, &target, &[], b"").await;
            check(&mut wrong, &what("no Authorization"), &answer, &[401]);
            for (why, value, status) in &bad_credentials {
                let answer = send(&app, method, &target, &[("Authorization", value)], b"").await;
                check(&mut wrong, &what(why), &answer, &[*status]);
            }
            // The other kind of caller's valid token.
            let (other, status) = match caller {
                Caller::Admin => (&buyer, 403),
                _ => (&admin, 401),
            };
            let answer = send(&app, method, &target, &[("Authorization", other)], b"").await;
            check(
                &mut wrong,
                &what("the other kind of token"),
                &answer,
                &[status],
            );
        }
    }
    // Bad Idempotency-Keys, with and without a body, on the purchase route.
    let purchase = format!("/api/v1/sales/{sale_id}/purchase");
    let long = vec![b'k'; 129];
    for key in [&b""[..], &long, "ключ".as_bytes(), b"\x80\x81"] {
        for body in [&b""[..], br#"{"quantity":1}"#] {
            let headers: &[(&str, &[u8])] = &[("Authorization", &buyer), ("Idempotency-Key", key)];
            let answer = send(&app, "POST", &purchase, headers, body).await;
            let shown = String::from_utf8_lossy(key);
            check(
                &mut wrong,
                &format!("POST purchase, key {shown:.20}"),
                &answer,
                &[400],
            );
        }
    }
    // Odd content types with a malformed body: the body is still read as
    // JSON (curl's default form type included) and refused as such.
    for content_type in [
        &b"text/plain"[..],
        b"multipart/form-data; boundary=",
        b"application/json; charset=latin-9",
        b"\xff\xfe",
        b"",
    ] {
        for (target, auth) in [(&purchase, &buyer), (&"/api/v1/sales".to_owned(), &admin)] {
            let headers: &[(&str, &[u8])] =
                &[("Authorization", auth), ("Content-Type", content_type)];
            let answer = send(&app, "POST", target, headers, b"{not json").await;
            let shown = String::from_utf8_lossy(content_type);
            check(
                &mut wrong,
                &format!("POST {target} as {shown:?}"),
                &answer,
                &[400],
            );
        }
    }
    assert_none_wrong(wrong);
    app.assert_healthy().await;
}

#[tokio::test]
async fn bad_bodies_on_every_body_route_are_4xx_with_the_error_body() {
    let (app, sale_id, _) = app_with_an_order().await;
    let mut wrong = Vec::new();
    let buyer = credentials(&app, Caller::Buyer);
    let admin = credentials(&app, Caller::Admin);
    let purchase = format!("/api/v1/sales/{sale_id}/purchase");
    let big = format!("{{\"quantity\":1,\"pad\":\"{}\"}}", "x".repeat(20_000));
    for (target, auth) in [(purchase.as_str(), &buyer), ("/api/v1/sales", &admin)] {
        let json: &[(&str, &[u8])] = &[
            ("Authorization", auth),
            ("Content-Type", b"application/json"),
        ];
        for body in [
            &b"{"[..],
            b"{\"quantity\":",
            b"[1]",
            b"\"x\"",
            b"nul",
            b"\xff\xfe{}",
            b"{\"quantity\":0,\"item\":7}",
        ] {
            let answer = send(&app, "POST", target, json, body).await;
            let shown = String::from_utf8_lossy(body);
            check(
                &mut wrong,
                &format!("POST {target} {shown:.20}"),
                &answer,
                &[400],
            );
        }
        // Too large: with a length, and chunked without one.
        let answer = send(&app, "POST", target, json, big.as_bytes()).await;
        check(
            &mut wrong,
            &format!("POST {target} (20 kB)"),
            &answer,
            &[413],
        );
        let mut chunked = Vec::new();
        for piece in big.as_bytes().chunks(4096) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let headers: &[(&str, &[u8])] = &[
            ("Authorization", auth),
            ("Content-Type", b"application/json"),
            ("Transfer-Encoding", b"chunked"),
        ];
        let answer = send(&app, "POST", target, headers, &chunked).await;
        check(
            &mut wrong,
            &format!("POST {target} (20 kB chunked)"),
            &answer,
            &[413],
        );
        // A small body in several chunks is read like any other.
        let answer = send(
            &app,
            "POST",
            target,
            headers,
            b"2\r\n{\"\r\n3\r\nqua\r\n0\r\n\r\n",
        )
        .await;
        check(
            &mut wrong,
            &format!("POST {target} (chunked, malformed)"),
            &answer,
            &[400],
        );
    }
    assert_none_wrong(wrong);
    app.assert_healthy().await;
}
