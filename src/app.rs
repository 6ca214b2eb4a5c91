//! The application: builds every part from settings, binds, and runs until
//! told to stop.
//!
//! A clean stop (the future passed to [`Application::run_until_stopped`])
//! turns `/readyz` to 503, finishes in-flight requests (every accepted order
//! is already durable when its `201` leaves), stops the workers, drains the
//! intent queue and joins the store's writer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::{BoxError, Router};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::auth::{self, Authenticator, Secret, VerifyingKey};
use crate::backend::{self, OrderStore};
use crate::config::Settings;
use crate::engine::{Engine, EngineParts};
use crate::http::{self, ApiError, AppInner, AppState, FastLane};
use crate::worker;

/// A built, bound, not yet serving application.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    service: FastLane,
    connections: http::server::ConnectionSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    engine: Arc<Engine>,
    store: Arc<dyn OrderStore>,
    accepting: Arc<AtomicBool>,
    stopping: CancellationToken,
    stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The operations port, and what stops it.
    ops: Option<(http::ops::OpsPort, CancellationToken)>,
    /// The admin token in force (given or generated).
    pub admin_token: Secret,
    /// The HS256 JWT secret in force (given, or generated when no public
    /// key is configured either); `None` when only public keys verify
    /// buyer tokens.
    pub jwt_secret: Option<Secret>,
}

impl Application {
    /// Opens the store, rebuilds state, starts workers, binds the listener.
    ///
    /// # Errors
    /// When the data directory, store or address cannot be used.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        crate::telemetry::prometheus();
        // Keys first: a bad key file fails before any backend is touched.
        let (buyer_keys, jwt_secret) = buyer_keys(&settings)?;
        let backends = backend::connect(&settings.backend()?).await?;
        let store = backends.store.clone();
        let stop = CancellationToken::new();
        let built = Self::start(settings, backends, buyer_keys, jwt_secret, stop.clone()).await;
        if built.is_err() {
            // Workers may have started: stop them, and close the store so
            // its data directory is free again (the embedded store's lock).
            stop.cancel();
            store.shutdown().await;
        }
        built
    }

    /// [`Self::build`] once the backends are open: rebuilds state, starts
    /// the workers under `stop`, binds the listener.
    async fn start(
        settings: Settings,
        backends: backend::Backends,
        buyer_keys: Vec<VerifyingKey>,
        jwt_secret: Option<Secret>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let store = backends.store.clone();
        let shared = backends.stock.is_shared();
        let roles = settings.roles;
        if !shared && !roles.is_all() {
            anyhow::bail!(
                "--roles {roles}: a subset of roles needs the distributed mode (Redis, RabbitMQ \
                 and a SQL database); the embedded store runs every role in one process"
            );
        }
        tracing::info!(%roles, "roles of this node");
        let mut engine_settings = settings.engine.clone();
        if shared && settings.lease_node_id {
            engine_settings.node_id = backends
                .stock
                .lease_node_id()
                .await
                .context("leasing a node id")?;
            tracing::info!(
                node_id = engine_settings.node_id,
                "leased a node id from the shared stock"
            );
        }
        let (engine, intent_task) = Engine::load(
            EngineParts::from_backends(&backends),
            &engine_settings,
            stop.clone(),
        )
        .await
        .context("rebuilding state from the store")?;
        let admin_token = settings
            .admin_token
            .clone()
            .unwrap_or_else(Secret::generate);
        let demo = match (settings.demo, &jwt_secret) {
            (false, _) => None,
            (true, Some(secret)) => Some(secret.clone()),
            (true, None) => anyhow::bail!(
                "--demo mints HS256 buyer tokens: it needs --jwt-secret (or no public key)"
            ),
        };
        let accepting = Arc::new(AtomicBool::new(true));
        let stopping = CancellationToken::new();
        let state = AppState::new(AppInner {
            engine: engine.clone(),
            auth: Arc::new(Authenticator::with_keys(
                buyer_keys,
                settings.jwt_leeway_secs,
                admin_token.clone(),
            )?),
            accepting: accepting.clone(),
            stopping: stopping.clone(),
            trusted_proxies: settings.trusted_proxies.clone(),
            demo,
        });
        // Without the API role the port answers probes and scrapes only.
        let router = if roles.api {
            http::ops_router().merge(with_layers(http::api_router(), &settings))
        } else {
            http::ops_router().fallback(|| async {
                ApiError::NotFound("no such route: this node does not run the API role")
            })
        }
        .method_not_allowed_fallback(http::method_not_allowed)
        .with_state(state.clone());
        let mut service = FastLane::new(router, state.clone()).with_body_limit(settings.body_limit);
        if !roles.api {
            service = service.routing_only();
        }
        // Each worker by the role it belongs to (`worker::Roles`).
        let mut tasks = vec![
            ("intent writer", intent_task),
            (
                "housekeeping",
                worker::spawn_housekeeping(engine.clone(), stop.clone()),
            ),
        ];
        if roles.reconciler {
            tasks.push((
                "expiry sweeper",
                worker::spawn_expiry_sweeper(engine.clone(), settings.sweep_interval, stop.clone()),
            ));
        }
        if roles.api {
            tasks.push((
                "room ticker",
                worker::spawn_room_ticker(engine.clone(), stop.clone()),
            ));
        }
        if let Some(queue) = &backends.queue {
            if roles.writer {
                tasks.push((
                    "order writer",
                    worker::order_writer::spawn_order_writer_with(
                        engine.clone(),
                        queue.clone(),
                        &settings.writer,
                        stop.clone(),
                    ),
                ));
            }
            tasks.push((
                "queue gauges",
                worker::order_writer::spawn_queue_gauges(queue.clone(), stop.clone()),
            ));
            if shared && roles.api {
                tasks.push((
                    "buyer events",
                    worker::buyer_events::spawn_buyer_events(
                        engine.clone(),
                        queue.clone(),
                        // Subscribed before the port opens; a failure here
                        // is retried by the worker.
                        queue.subscribe_events().await.ok(),
                        stop.clone(),
                    ),
                ));
            }
            if shared {
                tasks.push((
                    "stock watcher",
                    worker::stock_watch::spawn_stock_watch(
                        engine.clone(),
                        queue.clone(),
                        roles,
                        stop.clone(),
                    ),
                ));
            }
        }
        if let (Some(webhooks), true) = (&settings.webhooks, roles.relay) {
            tasks.push((
                "webhook dispatcher",
                worker::webhooks::spawn_webhook_dispatcher(
                    engine.clone(),
                    webhooks.clone(),
                    stop.clone(),
                )?,
            ));
        }
        let tls = match &settings.tls {
            Some((cert, key)) => Some(http::server::tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = http::server::bind(settings.listen)
            .with_context(|| format!("binding {}", settings.listen))?;
        let addr = listener.local_addr()?;
        // Last: nothing after it can fail, so a failed start leaves no
        // operations thread behind.
        let ops = match settings.ops_listen {
            Some(addr) => {
                let ops_stop = CancellationToken::new();
                let port = http::ops::OpsPort::start(
                    addr,
                    http::ops_router()
                        .layer(axum::middleware::from_fn(http::request_id::echo))
                        .with_state(state.clone()),
                    ops_stop.clone(),
                )?;
                Some((port, ops_stop))
            }
            None => None,
        };
        Ok(Self {
            listener,
            addr,
            service,
            connections: http::server::ConnectionSettings {
                // The peer's address travels with each request only when
                // something reads it (an extension costs an allocation): the
                // per-IP limit, the proxy list, and the captcha check, which
                // hands the buyer's address to the verify service
                // (`remoteip`) as those services expect.
                peer_addr: settings.connections.peer_addr
                    || settings.engine.ip_rate_per_sec > 0
                    || !settings.trusted_proxies.is_empty()
                    || settings.engine.captcha.is_some(),
                ..settings.connections
            },
            tls,
            engine,
            store,
            accepting,
            stopping,
            stop,
            tasks,
            ops,
            admin_token,
            jwt_secret,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The operations port's address, when `--ops-listen` is set.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|(port, _)| port.addr)
    }

    /// The engine (for in-process inspection by tests and tools).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Demo mode's sale: the newest open or upcoming sale, else a new one —
    /// 20 units, 2 per buyer, opening 30 s from now for 15 minutes, unpaid
    /// orders expiring after 5 minutes. Returns its id.
    ///
    /// # Errors
    /// When the sale cannot be stored.
    pub async fn demo_sale(&self) -> anyhow::Result<u64> {
        let now = self.engine.clock().now_ms();
        if let Some(rt) =
            self.engine.sales().iter().rev().find(|rt| {
                rt.window(now) != crate::domain::Window::Ended && rt.ledger.remaining() > 0
            })
        {
            return Ok(rt.sale.id);
        }
        let new = crate::domain::NewSale::parse(&serde_json::json!({
            "item": "Demo: limited-edition sneakers",
            "stock": 20,
            "per_user_limit": 2,
            "starts_at": crate::domain::rfc3339(now + 30_000),
            "ends_at": crate::domain::rfc3339(now + 30_000 + 15 * 60_000),
            "payment_window_secs": 300,
        }))
        .map_err(|e| anyhow::anyhow!("the demo sale: {e}"))?;
        Ok(self.engine.create_sale(new).await?.sale.id)
    }

    /// Serves until `shutdown` resolves, then stops cleanly.
    ///
    /// # Errors
    /// When the server fails while serving.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let accepting = self.accepting.clone();
        let stopping = self.stopping.clone();
        let cap = http::server::connection_cap(self.connections.max_connections);
        tracing::info!(
            max_connections = cap,
            header_timeout_ms = self.connections.header_timeout.as_millis() as u64,
            idle_timeout_ms = self.connections.idle_timeout.as_millis() as u64,
            "connection limits"
        );
        http::server::serve(
            self.listener,
            self.service,
            self.connections,
            cap,
            self.tls,
            async move {
                shutdown.await;
                accepting.store(false, Ordering::Release);
                stopping.cancel();
                tracing::info!("stopping: finishing in-flight requests");
            },
        )
        .await
        .context("serving HTTP")?;
        self.stop.cancel();
        // Every worker's step is safe to cut short (an unacked delivery is
        // redelivered, a transaction rolls back, the relay and reconciler
        // run again on any node), so one stuck on a dead backend is aborted
        // after a while rather than holding the stop for ever.
        for (name, mut task) in self.tasks {
            // The intent writer drains its queue (a flood's missed buyers)
            // first, which may take longer.
            let grace = if name == "intent writer" {
                WORKER_STOP_GRACE * 5
            } else {
                WORKER_STOP_GRACE
            };
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                tracing::warn!(worker = name, "worker did not stop in time; aborted");
                task.abort();
            }
        }
        drop(self.engine);
        self.store.shutdown().await;
        // Probes are answered until the very end (`/readyz` says
        // "stopping" since the stop began).
        if let Some((port, ops_stop)) = self.ops {
            ops_stop.cancel();
            let _ = tokio::task::spawn_blocking(move || port.join()).await;
        }
        tracing::info!("stopped cleanly; every accepted order is on disk");
        Ok(())
    }
}

/// The keys that verify buyer tokens, and the HS256 secret among them: the
/// configured one, or a generated one when no public key is configured
/// either (with public keys only, HS256 tokens are refused).
///
/// # Errors
/// When a key file cannot be read or holds no usable key.
fn buyer_keys(settings: &Settings) -> anyhow::Result<(Vec<VerifyingKey>, Option<Secret>)> {
    let mut public = Vec::new();
    if let Some(path) = &settings.jwt_public_key {
        public.push(auth::load_public_key(path)?);
    }
    if let Some(path) = &settings.jwt_jwks {
        public.extend(auth::load_jwks(path)?);
    }
    let secret = match &settings.jwt_secret {
        Some(secret) => Some(secret.clone()),
        None if public.is_empty() => Some(Secret::generate()),
        None => None,
    };
    let mut keys: Vec<VerifyingKey> = secret.iter().map(VerifyingKey::hmac).collect();
    keys.extend(public);
    tracing::info!(
        algorithms = ?keys.iter().map(|k| (k.algorithm(), k.kid())).collect::<Vec<_>>(),
        "buyer token keys"
    );
    Ok((keys, secret))
}

/// Longest a stop waits for one background worker.
const WORKER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

fn with_layers(router: Router<AppState>, settings: &Settings) -> Router<AppState> {
    let http_metrics = http::metrics::HttpMetrics::new();
    let counted = http_metrics.clone();
    router
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |err: BoxError| {
                    counted.count_refusal(&err);
                    async move {
                        if !err.is::<tower::load_shed::error::Overloaded>()
                            && !err.is::<tower::timeout::error::Elapsed>()
                        {
                            tracing::error!(error = %err, "request failed in middleware");
                        }
                        ApiError::Overloaded
                    }
                }))
                // Shed instead of queueing: in a flash crowd a fast "try
                // again" beats a slow timeout.
                .load_shed()
                .concurrency_limit(settings.max_in_flight)
                .timeout(settings.request_timeout),
        )
        .layer(DefaultBodyLimit::max(settings.body_limit))
        // Outside shedding and the timeout, so their 503s are counted too.
        .layer(http_metrics.layer())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(
                    |response: &axum::response::Response, latency: Duration, span: &Span| {
                        span.record("status", response.status().as_u16());
                        tracing::debug!(
                            status = response.status().as_u16(),
                            latency_us = latency.as_micros() as u64,
                            "answered"
                        );
                    },
                ),
        )
}

/// The span of a routed request: every line logged while the request is
/// served carries its `request_id` (set by the fast lane before routing),
/// with the method, the matched route and, once answered, the status.
///
/// At INFO, so the warnings and errors of a request are tied to it at the
/// default level; its one event ("answered", with the latency) is at DEBUG,
/// so nothing is logged per request at the default level. The fast lane's
/// answers, the flood's, have a DEBUG span of their own. Its target is
/// `flashsale::request`: `RUST_LOG=info,flashsale::request=off` turns the
/// spans off.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> Span {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str);
    tracing::info_span!(
        target: "flashsale::request",
        "request",
        request_id = http::request_id::of(req.headers()),
        method = %req.method(),
        route,
        status = tracing::field::Empty,
    )
}

/// Resolves on SIGINT (ctrl-c) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
