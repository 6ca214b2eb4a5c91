//! The binary's own contract: `flashsale token`, secrets generated and
//! printed when unset (never running open), and never printed when given.

use std::process::Stdio;
use std::time::Duration;

use flashsale::auth::{mint_token, Secret};
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::kit::{
    assert_error, free_port, json_status, open_sale_body, serve_command, serving, sigterm,
    spawn_app, unique_admin_token, TestApp, ADMIN_TOKEN, JWT_SECRET,
};

#[tokio::test]
async fn the_token_command_mints_a_buyer_token() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["token", "--user", "cli-user"])
        .env("FLASHSALE_JWT_SECRET", JWT_SECRET)
        .output()
        .await
        .expect("running flashsale token");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let app = spawn_app().await;
    let sale_id = app.open_sale(5, 1).await;
    let order = app.purchase(&sale_id, &token, None, None).await;
    let order = json_status(order, StatusCode::CREATED).await;
    assert_eq!(order["user_id"], "cli-user");
}

/// Reads `name=value` from the child's stdout lines until the listening line.
async fn printed_secrets(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> (Option<String>, Option<String>) {
    let (mut admin, mut jwt) = (None, None);
    let read = async {
        while let Some(line) = lines.next_line().await.expect("reading stdout") {
            if let Some(v) = line.strip_prefix("FLASHSALE_ADMIN_TOKEN=") {
                admin = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("FLASHSALE_JWT_SECRET=") {
                jwt = Some(v.trim().to_owned());
            } else if line.contains("listening on") {
                return;
            }
        }
        panic!("stdout ended before the listening line");
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("no listening line within 30 s");
    (admin, jwt)
}

#[tokio::test]
async fn unset_secrets_are_generated_and_printed_never_open() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = serve_command(dir.path(), port, "")
        .env_remove("FLASHSALE_ADMIN_TOKEN")
        .env_remove("FLASHSALE_JWT_SECRET")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (admin, jwt) = printed_secrets(&mut lines).await;
    let admin = admin.expect("the generated admin token is printed");
    let jwt = jwt.expect("the generated JWT secret is printed");
    assert!(
        admin.len() >= 16 && jwt.len() >= 16,
        "weak generated secrets"
    );
    assert_ne!(admin, jwt);

    let mut app = TestApp::attach(port);
    app.admin_token = admin.clone();
    serving(&mut child, &app).await.unwrap();
    // Not open: the usual test token and an empty one are refused.
    for wrong in [ADMIN_TOKEN, ""] {
        app.admin_token = wrong.to_owned();
        let resp = app.post_sale(&open_sale_body(5, 1)).await;
        assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // The printed ones work.
    app.admin_token = admin;
    let sale_id = app.open_sale(5, 1).await;
    let buyer = mint_token(&Secret::new(jwt), "alice", 60).unwrap();
    let resp = app.purchase(&sale_id, &buyer, None, None).await;
    json_status(resp, StatusCode::CREATED).await;
    let resp = app
        .purchase(&sale_id, &crate::kit::token("bob"), None, None)
        .await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn given_secrets_never_appear_in_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin = unique_admin_token();
    // A webhook secret too, with the hook failing (nothing listens on the
    // discard port) so its attempts are logged at debug level.
    let webhook_secret = "whsec_c2VjcmV0LXdlYmhvb2sta2V5LTEyMzQ1Njc4OTA=";
    let mut child = serve_command(dir.path(), port, &admin)
        .env("RUST_LOG", "debug")
        .env("FLASHSALE_WEBHOOK_URL", "http://127.0.0.1:9/hook")
        .env("FLASHSALE_WEBHOOK_SECRET", webhook_secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Drain both pipes while the server runs so it never blocks on them.
    let out = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
        buf
    });
    let err = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    });
    let mut app = TestApp::attach(port);
    app.admin_token = admin.clone();
    serving(&mut child, &app).await.unwrap();
    let sale_id = app.open_sale(5, 1).await;
    app.buy_ok(&sale_id, "alice", 1).await;
    let resp = app.post_sale(&serde_json::json!({"item": 1})).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("no exit within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let output = [out.await.unwrap(), err.await.unwrap()].concat();
    let output = String::from_utf8_lossy(&output);
    assert!(output.contains("listening"), "no output captured: {output}");
    assert!(
        output.contains("webhooks on"),
        "webhooks were not on: {output}"
    );
    for secret in [
        admin.as_str(),
        JWT_SECRET,
        webhook_secret,
        &webhook_secret[6..],
    ] {
        assert!(!output.contains(secret), "{secret} printed:\n{output}");
    }
}

/// `flashsale bench ARGS` runs the `flashsale-bench` next to the executable
/// with `ARGS` untouched and ends as it ends; without it, the error names
/// the build command. A copy of the binary in a directory of its own, next
/// to a stand-in load tool, keeps the test independent of what is built.
#[tokio::test]
async fn the_bench_command_runs_the_load_tool_next_to_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("flashsale");
    std::fs::copy(env!("CARGO_BIN_EXE_flashsale"), &exe).expect("copying the binary");

    let missing = tokio::process::Command::new(&exe)
        .args(["bench", "--mode", "healthz"])
        .output()
        .await
        .expect("running flashsale bench");
    assert!(!missing.status.success(), "{missing:?}");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("flashsale-bench") && stderr.contains("cargo build --release"),
        "{stderr}"
    );

    let tool = dir.path().join("flashsale-bench");
    std::fs::write(
        &tool,
        "#!/bin/sh\nprintf '%s|' \"$0\" \"$@\"\necho \"$FLASHSALE_URL\"\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = tokio::process::Command::new(&exe)
        .args(["bench", "--mode", "healthz", "--help", "a b"])
        .env("FLASHSALE_URL", "http://127.0.0.1:9")
        .output()
        .await
        .expect("running flashsale bench");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("|--mode|healthz|--help|a b|http://127.0.0.1:9\n"),
        "{stdout}"
    );
}
