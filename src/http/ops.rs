//! Operations: liveness, readiness, Prometheus metrics.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if !state.accepting.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "stopping"})),
        );
    }
    let store_ok = state.engine.store().ping().await.is_ok();
    let Some(cluster) = state.engine.cluster() else {
        if store_ok {
            return (
                StatusCode::OK,
                Json(json!({"status": "ready", "store": "ok"})),
            );
        }
        tracing::warn!("readiness check failed: the order store is unavailable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "store": "unavailable"})),
        );
    };
    // Distributed, purchases need Redis and the broker; the database may be
    // away for a while (the queue holds orders until the writer resumes).
    let redis_ok = cluster.stock.ping().await.is_ok();
    let queue_ok = cluster.queue.is_up() || cluster.queue.probe().await;
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let ready = redis_ok && queue_ok;
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "store": word(store_ok),
            "redis": word(redis_ok),
            "queue": word(queue_ok),
        })),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    for rt in state.engine.sales() {
        let id = rt.sale.id.to_string();
        let remaining = rt.ledger.remaining();
        metrics::gauge!("flashsale_sale_remaining_units", "sale_id" => id.clone())
            .set(remaining as f64);
        metrics::gauge!("flashsale_sale_sold_units", "sale_id" => id)
            .set((rt.sale.stock - remaining) as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::prometheus().render(),
    )
}
