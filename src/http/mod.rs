//! The HTTP surface: one file per resource, each with its own `router()`.
//!
//! See `../shared/CONTRACT.md` for the contract these routes implement.

pub mod client_ip;
pub mod error;
pub mod extract;
pub mod fast_lane;
mod json_errors;
mod ops;
mod orders;
mod room;
mod sales;
pub mod server;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use serde::Serializer;

use crate::auth::Authenticator;
use crate::engine::Engine;
pub use error::ApiError;
pub use fast_lane::FastLane;

/// Shared state of every handler: one `Arc`, so the per-request clone that
/// axum's `State` makes is a single atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl AppState {
    /// Wraps the shared parts.
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What handlers share.
pub struct AppInner {
    /// The sale engine.
    pub engine: Arc<Engine>,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// Cleared when a graceful stop begins, so `/readyz` turns away traffic.
    pub accepting: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled when a graceful stop begins: long-lived streams end.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Proxies whose `X-Forwarded-For` names the client (see [`client_ip`]).
    pub trusted_proxies: client_ip::TrustedProxies,
}

/// Operations routes (`/healthz`, `/readyz`, `/metrics`). The app keeps
/// them outside load shedding so probes and scrapes work during a flood.
pub fn ops_router() -> Router<AppState> {
    ops::router()
}

/// The API routes, without the cross-cutting layers (see `app`).
pub fn api_router() -> Router<AppState> {
    Router::new()
        .merge(sales::router())
        .merge(orders::router())
        .merge(room::router())
        .fallback(|| async { ApiError::NotFound("no such route") })
        .method_not_allowed_fallback(method_not_allowed)
}

/// `405` with the contract's error body; the app applies it to every route.
pub async fn method_not_allowed() -> ApiError {
    ApiError::Invalid {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "method not allowed on this route".into(),
    }
}

/// Serializes an id as a decimal string (JSON numbers lose precision past 2^53).
pub fn ser_id<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// Serializes epoch milliseconds as RFC 3339.
pub fn ser_time<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::domain::rfc3339(*ms))
}

/// Serializes optional epoch milliseconds as RFC 3339 or `null`.
pub fn ser_opt_time<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => ser_time(ms, s),
        None => s.serialize_none(),
    }
}

/// Parses an id from the path; anything that is not one of ours is unknown.
pub fn parse_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .map_err(|_| ApiError::NotFound("not found"))
}
