//! The app harness: an in-process server per test on `127.0.0.1:0` with its
//! own data directory, as a [`TestApp`].
//!
//! Every test gets a fresh server from [`spawn_app`] (or [`spawn_app_with`]
//! for other settings, e.g. a SQL order store or the distributed backends);
//! [`TestApp::stop`] stops it cleanly and hands back the data directory so
//! a test can restart on it with [`spawn_app_on`]. [`TestApp::attach`] talks
//! to a server this harness did not start (the real binary, see
//! [`super::process`]). Tracing stays quiet unless `TEST_LOG` is set.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use flashsale::auth::Secret;
use flashsale::{Application, Settings};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The admin token every test server uses.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The HS256 secret every test server uses for buyer tokens.
pub const JWT_SECRET: &str = "test-jwt-secret";

/// Longest any single request may take before the test fails instead of hanging.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// `http://ADDR` of the operations port, when one was asked for.
    pub ops_address: Option<String>,
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
    // As the binary does without --pass-secret: nodes sharing the JWT
    // secret accept each other's passes.
    settings.engine.pass_secret = Secret::new(JWT_SECRET);
    // Most tests send many requests as one user; the limiter has its own test.
    settings.engine.user_rate_per_sec = 0;
    configure(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("building the application");
    let port = app.port();
    let ops_address = app.ops_addr().map(|a| format!("http://{a}"));
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        // A dropped sender (test ended without `stop`) also stops the server.
        let _ = rx.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        ops_address,
        admin_token: ADMIN_TOKEN.to_owned(),
        client: http_client(),
        data_dir: Some(dir),
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// Talks to a server on `port` that this harness did not start (the real
    /// binary); such an app has no data dir and cannot be stopped from here.
    pub fn attach(port: u16) -> TestApp {
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            ops_address: None,
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
