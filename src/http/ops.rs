//! Operations: liveness, readiness, Prometheus metrics.
//!
//! `/metrics` is the recorder's text plus the per-sale families of the
//! active sales (`engine::metrics::render_sale_families`); the metric
//! reference is docs/OPERATIONS.md.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::openapi::{Health, Readiness};
use super::AppState;

super::routes! {
    "/healthz" => get(healthz),
    "/readyz" => get(readyz),
    "/metrics" => get(metrics),
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses(
    (status = 200, description = "The process is alive", body = Health),
))]
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Longest one readiness check may take.
const READY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// `check`, counted as failed if it takes longer than [`READY_CHECK_TIMEOUT`].
async fn bounded(check: impl std::future::Future<Output = bool>) -> bool {
    tokio::time::timeout(READY_CHECK_TIMEOUT, check)
        .await
        .unwrap_or(false)
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready: the backends purchases need answer", body = Readiness),
    (status = 503, description = "Not ready, or stopping", body = Readiness),
))]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (ready, body) = readiness(&state).await;
    if !ready && body["status"] != "stopping" {
        tracing::warn!(checks = %body, "readiness check failed");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Whether the node is ready, and the answer's body: the checks of each
/// backend and the circuit breakers. Also sets `flashsale_ready` and
/// `flashsale_backend_up{backend}`, so a scrape records what a probe saw.
async fn readiness(state: &AppState) -> (bool, serde_json::Value) {
    if !state.accepting.load(Ordering::Acquire) {
        metrics::gauge!("flashsale_ready").set(0.0);
        return (false, json!({"status": "stopping"}));
    }
    let engine = &state.engine;
    // The checks run at once, each bounded: a stalled backend makes the
    // answer "unavailable" within the bound instead of holding the probe
    // past an orchestrator's timeout (Kubernetes' default is 1 s).
    let shared = engine.stock().is_shared();
    let (store_ok, stock_ok, queue_ok) = tokio::join!(
        bounded(async { engine.store().ping().await.is_ok() }),
        bounded(async { !shared || engine.stock().ping().await.is_ok() }),
        bounded(async { !shared || engine.handoff_probe().await }),
    );
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let up = |backend: &'static str, ok: bool| {
        metrics::gauge!("flashsale_backend_up", "backend" => backend).set(f64::from(u8::from(ok)));
    };
    up("store", store_ok);
    let mut body = json!({"store": word(store_ok)});
    let ready = if shared {
        // Over a shared stock, purchases need it and the order queue; the
        // database may be away for a while (the queue holds orders until
        // the writer resumes).
        body["redis"] = json!(word(stock_ok));
        body["queue"] = json!(word(queue_ok));
        up("redis", stock_ok);
        up("queue", queue_ok);
        stock_ok && queue_ok
    } else {
        store_ok
    };
    let breakers = engine.breakers();
    if !breakers.is_empty() {
        body["breakers"] = breakers
            .iter()
            .map(|(name, state)| ((*name).to_owned(), json!(state.as_str())))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    body["status"] = json!(if ready { "ready" } else { "not_ready" });
    metrics::gauge!("flashsale_ready").set(f64::from(u8::from(ready)));
    (ready, body)
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses(
    (status = 200, description = "Prometheus text format", body = String,
     content_type = "text/plain; version=0.0.4"),
))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // The readiness checks run at each scrape too (bounded, as for a
    // probe), so `flashsale_ready` is fresh whoever probes the node.
    readiness(&state).await;
    let mut text = crate::telemetry::prometheus().render();
    crate::engine::metrics::render_sale_families(
        &state.engine.sales(),
        crate::domain::now_ms(),
        &mut text,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The operations port (`--ops-listen`): `/healthz`, `/readyz` and
/// `/metrics` on an address of their own, served by a thread and a runtime
/// of their own.
///
/// On the main port a probe waits its turn behind every request of a flood
/// (a closed loop of 2,000 connections keeps the runtime's queues full, and
/// each request waits about connections ÷ throughput). Here the probe has a
/// thread the kernel schedules beside the runtime's workers, a listener of
/// its own (its accept queue is not the flood's) and a reactor of its own,
/// so a node that is shedding still tells its orchestrator it is alive.
/// Readiness still asks the backends, whose connections live on the main
/// runtime.
pub struct OpsPort {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    thread: std::thread::JoinHandle<()>,
}

impl OpsPort {
    /// Binds `addr` and serves `router` until `stop` is cancelled.
    ///
    /// # Errors
    /// When the address cannot be bound or the thread cannot start.
    pub fn start(
        addr: std::net::SocketAddr,
        router: axum::Router,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("flashsale-ops".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = bound_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Bound here so the listener belongs to this runtime's
                    // reactor, not the main one.
                    let listener = match super::server::bind(addr) {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = bound_tx.send(listener.local_addr().map_err(Into::into));
                    let served = super::server::serve(
                        listener,
                        router,
                        super::server::ConnectionSettings {
                            port: "ops",
                            ..Default::default()
                        },
                        64,
                        None,
                        stop.cancelled_owned(),
                    )
                    .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "the operations port failed");
                    }
                });
            })
            .context("starting the operations port's thread")?;
        let addr = bound_rx
            .recv()
            .context("the operations port's thread ended before binding")?
            .with_context(|| format!("binding the operations port {addr}"))?;
        tracing::info!(%addr, "operations port (/healthz, /readyz, /metrics)");
        Ok(Self { addr, thread })
    }

    /// Waits for the port's thread to end (after its `stop`).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}
