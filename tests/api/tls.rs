//! TLS in the binary (issue 8): `--tls-cert` and `--tls-key` serve HTTPS
//! with rustls, HTTP/2 and HTTP/1.1 offered by ALPN; cleartext is not
//! served on a TLS port; unusable key material stops the start.

use std::path::{Path, PathBuf};

use flashsale::{Application, Settings};
use reqwest::StatusCode;

use crate::kit::{open_sale_body, spawn_app_with, token, TestApp};

/// A self-signed certificate for `localhost` and `127.0.0.1` (openssl),
/// written into `dir`: (certificate, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A server certificate, not a CA (rustls refuses a CA as the leaf).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn https_client(cert: &Path, http1_only: bool) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(&std::fs::read(cert).unwrap()).unwrap();
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root);
    let builder = if http1_only {
        builder.http1_only()
    } else {
        builder
    };
    builder.build().unwrap()
}

async fn tls_app(dir: &Path) -> (TestApp, PathBuf) {
    let (cert, key) = self_signed(dir);
    let app = spawn_app_with(|s| s.tls = Some((cert.clone(), key))).await;
    (app, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http2_by_alpn_and_http1_to_clients_that_ask() {
    let dir = tempfile::tempdir().unwrap();
    let (app, cert) = tls_app(dir.path()).await;
    let url = format!("https://localhost:{}/healthz", app.port);
    let h2 = https_client(&cert, false).get(&url).send().await.unwrap();
    assert_eq!(h2.status(), StatusCode::OK);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let h1 = https_client(&cert, true).get(&url).send().await.unwrap();
    assert_eq!(h1.status(), StatusCode::OK);
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_over_https_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (app, cert) = tls_app(dir.path()).await;
    let client = https_client(&cert, false);
    let base = format!("https://localhost:{}", app.port);
    let sale: serde_json::Value = client
        .post(format!("{base}/api/v1/sales"))
        .bearer_auth(&app.admin_token)
        .json(&open_sale_body(3, 1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = sale["id"].as_str().unwrap();
    let resp = client
        .post(format!("{base}/api/v1/sales/{id}/purchase"))
        .bearer_auth(token("alice"))
        .json(&serde_json::json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_is_not_served_on_a_tls_port() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = tls_app(dir.path()).await;
    let plain = app.client.get(app.url("/healthz")).send().await;
    assert!(
        plain
            .as_ref()
            .map_or(true, |r| r.status() != StatusCode::OK),
        "cleartext answered: {plain:?}"
    );
    // And the server is still well.
    let answer = crate::kit::raw_http(app.port, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn unusable_key_material_stops_the_start_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = self_signed(dir.path());
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    for (c, k, says) in [
        (dir.path().join("missing.pem"), junk.clone(), "certificate"),
        (cert.clone(), junk.clone(), "private key"),
    ] {
        let mut s = Settings::with_data_dir(dir.path().join("data"));
        s.listen = "127.0.0.1:0".parse().unwrap();
        s.tls = Some((c, k));
        let err = Application::build(s).await.err().expect("started anyway");
        assert!(format!("{err:#}").contains(says), "{err:#}");
    }
}
