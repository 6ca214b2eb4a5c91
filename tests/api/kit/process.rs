//! Child processes: the real `flashsale serve` binary on a free port
//! ([`start_binary`], [`serve_command`] and [`serving`] for custom flags),
//! and [`sigterm`] to stop it the way an orchestrator does.

use std::time::Duration;

use reqwest::StatusCode;

use super::app::{TestApp, ADMIN_TOKEN, JWT_SECRET};

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
    start_binary_with(dir, &unique_admin_token(), |_| {}).await
}

/// [`start_binary`] with the admin token `admin` and the command adjusted
/// by `adjust` (flags of a distributed node, a shifted clock).
pub async fn start_binary_with(
    dir: &std::path::Path,
    admin: &str,
    adjust: impl Fn(&mut tokio::process::Command),
) -> (tokio::process::Child, TestApp) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let mut app = TestApp::attach(port);
        app.admin_token = admin.to_owned();
        let mut cmd = serve_command(dir, port, admin);
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("starting the flashsale binary");
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
