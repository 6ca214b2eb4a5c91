//! What the pages need from the server, over real HTTP: the sale clock, demo
//! tokens, the shells' caching and headers. (The pages themselves are tested
//! in Chromium: web/tests/, scripts/browser-tests.sh.)

use reqwest::StatusCode;

use crate::kit::{assert_error, json_ok, spawn_app, spawn_app_with};

#[tokio::test]
async fn the_time_is_the_sale_clock_and_never_cached() {
    let app = spawn_app().await;
    let before = chrono::Utc::now().timestamp_millis();
    let resp = app
        .client
        .get(format!("{}/api/v1/time", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body = json_ok(resp).await;
    let after = chrono::Utc::now().timestamp_millis();
    let now = body["now_ms"].as_i64().expect("now_ms");
    assert!(
        (before..=after).contains(&now),
        "{before} <= {now} <= {after}"
    );
    let parsed = chrono::DateTime::parse_from_rfc3339(body["now"].as_str().unwrap()).unwrap();
    assert_eq!(parsed.timestamp_millis(), now);
}

#[tokio::test]
async fn demo_tokens_only_in_demo_mode_and_they_buy() {
    let off = spawn_app().await;
    let resp = off
        .client
        .post(format!("{}/api/v1/demo/token", off.address))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;

    let app = spawn_app_with(|s| s.demo = true).await;
    let mint = || async {
        let resp = app
            .client
            .post(format!("{}/api/v1/demo/token", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["cache-control"], "no-store");
        json_ok(resp).await
    };
    let (a, b) = (mint().await, mint().await);
    let user = a["user_id"].as_str().unwrap();
    assert!(user.starts_with("demo-"), "{a}");
    assert_ne!(a["user_id"], b["user_id"], "each demo buyer is new");
    let sale = app.open_sale(5, 1).await;
    let resp = app
        .purchase(&sale, a["token"].as_str().unwrap(), None, None)
        .await;
    let order = crate::kit::json_status(resp, StatusCode::CREATED).await;
    assert_eq!(order["user_id"], a["user_id"]);
}

#[tokio::test]
async fn demo_mode_needs_a_secret_it_can_mint_with() {
    let dir = tempfile::tempdir().unwrap();
    let key =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt/rsa-a.pub.pem");
    let mut settings = flashsale::Settings::with_data_dir(dir.path());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.demo = true;
    settings.jwt_secret = None;
    settings.jwt_public_key = Some(key);
    let err = match flashsale::Application::build(settings).await {
        Ok(_) => panic!("started in demo mode with no HS256 secret"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("--demo"), "{err}");
}

#[tokio::test]
async fn the_sale_page_shell_is_static_cacheable_and_locked_down() {
    let app = spawn_app().await;
    let sale = app.open_sale(3, 1).await;
    let get = |path: String, etag: Option<String>| {
        let mut req = app.client.get(format!("{}{path}", app.address));
        if let Some(etag) = etag {
            req = req.header("if-none-match", etag);
        }
        req.send()
    };
    let first = get(format!("/s/{sale}"), None).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let h = first.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(h["cache-control"], "public, max-age=60");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    let etag = h["etag"].to_str().unwrap().to_owned();
    let html = first.text().await.unwrap();
    assert!(html.contains("id=\"buy\""), "{html}");
    // The same shell for any sale id: nothing of the sale is in it.
    let other = get("/s/123".into(), None).await.unwrap();
    assert_eq!(other.headers()["etag"].to_str().unwrap(), etag);
    let again = get(format!("/s/{sale}"), Some(etag.clone())).await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());
    // Not a sale id: the contract's JSON error.
    let bad = get("/s/not-a-number".into(), None).await.unwrap();
    assert_error(bad, StatusCode::NOT_FOUND, "not_found").await;
    // The dashboard revalidates every time.
    let admin = get("/admin".into(), None).await.unwrap();
    assert_eq!(admin.status(), StatusCode::OK);
    assert_eq!(admin.headers()["cache-control"], "no-cache");
    // `/` leads to it.
    let root = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), StatusCode::SEE_OTHER);
    assert_eq!(root.headers()["location"], "/admin");
}

#[tokio::test]
async fn assets_are_fingerprinted_immutable_and_typed() {
    let app = spawn_app().await;
    let html = app
        .client
        .get(format!("{}/admin", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let links: Vec<&str> = html
        .split("\"/assets/")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert!(
        links.iter().any(|l| l.starts_with("uPlot.iife.min.")),
        "{links:?}"
    );
    for link in links {
        let resp = app
            .client
            .get(format!("{}/assets/{link}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{link}");
        assert_eq!(
            resp.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let ty = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let want = match link.rsplit('.').next().unwrap() {
            "js" => "text/javascript",
            "css" => "text/css",
            "svg" => "image/svg+xml",
            other => panic!("unexpected asset type {other}"),
        };
        assert!(ty.starts_with(want), "{link}: {ty}");
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        assert!(!resp.bytes().await.unwrap().is_empty());
        let cached = app
            .client
            .get(format!("{}/assets/{link}", app.address))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    }
    let missing = app
        .client
        .get(format!("{}/assets/missing.js", app.address))
        .send()
        .await
        .unwrap();
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
}
