//! The HTTP surface: one file per resource, each declaring its routes once
//! with [`routes!`] (its `ROUTES` list and its `router()`).
//!
//! See `../shared/CONTRACT.md` for the contract these routes implement, and
//! [`openapi`] for the OpenAPI document built from the handlers'
//! annotations (`GET /api/v1/openapi.json`).

/// Declares a module's routes once, as `"path" => method(handler).method(handler)`
/// lines; expands to `ROUTES` (every `(method, path)`, methods lower-case as
/// written) and `MODULE`, whose `router` is built from the same lines.
///
/// One declaration for both is what keeps the OpenAPI document in step: the
/// router can only serve what `ROUTES` lists, and `openapi`'s tests compare
/// `ROUTES` of every module with the document's operations (and
/// `tests/api/openapi.rs` probes the served router with every method). A
/// route added with a bare `.route(...)` would escape the check: add routes
/// here only.
macro_rules! routes {
    ($($path:literal => $method:ident($handler:expr) $(.$more:ident($more_handler:expr))*),* $(,)?) => {
        /// Every `(method, path)` this module serves (see [`routes!`](super::routes)).
        pub(super) const ROUTES: &[(&str, &str)] = &[
            $( (stringify!($method), $path), $( (stringify!($more), $path), )* )*
        ];

        /// This module's routes and their router.
        pub(super) const MODULE: super::RouteModule = super::RouteModule {
            routes: ROUTES,
            router,
        };

        fn router() -> axum::Router<super::AppState> {
            axum::Router::new()
                $( .route($path, axum::routing::$method($handler)$(.$more($more_handler))*) )*
        }
    };
}
use routes;

mod antibot;
pub mod client_ip;
mod coalesce;
pub mod error;
pub mod extract;
pub mod fast_lane;
mod json_errors;
pub mod metrics;
pub mod openapi;
pub mod ops;
mod orders;
mod pages;
pub mod request_id;
mod room;
mod sales;
pub mod server;
mod webhooks;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use serde::Serializer;

use crate::auth::Authenticator;
use crate::engine::{Engine, SaleRuntime};
pub use error::ApiError;
pub use fast_lane::FastLane;
pub use orders::OrderBody;

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
    /// Demo mode (`--demo`): the HS256 secret `POST /api/v1/demo/token`
    /// mints buyer tokens with; `None` when off.
    pub demo: Option<crate::auth::Secret>,
}

/// One route module: what [`routes!`] declares.
#[derive(Clone, Copy)]
pub struct RouteModule {
    /// Every `(method, path)` it serves.
    routes: &'static [(&'static str, &'static str)],
    /// Its router, built from the same declaration.
    router: fn() -> Router<AppState>,
}

/// The modules [`api_router`] merges: the only list of them.
const API_MODULES: [RouteModule; 7] = [
    sales::MODULE,
    webhooks::MODULE,
    orders::MODULE,
    room::MODULE,
    antibot::MODULE,
    openapi::MODULE,
    pages::MODULE,
];
/// The modules [`ops_router`] merges.
const OPS_MODULES: [RouteModule; 1] = [ops::MODULE];

/// Every `(METHOD, path)` the app routes (`GET` also answers `HEAD`), in the
/// router's path syntax (`/api/v1/sales/{sale_id}`): what the OpenAPI
/// document must list, no more, no less.
pub fn all_routes() -> impl Iterator<Item = (String, &'static str)> {
    API_MODULES
        .iter()
        .chain(&OPS_MODULES)
        .flat_map(|m| m.routes)
        .map(|&(method, path)| (method.to_ascii_uppercase(), path))
}

fn merged(modules: &[RouteModule]) -> Router<AppState> {
    modules
        .iter()
        .fold(Router::new(), |router, m| router.merge((m.router)()))
}

/// Operations routes (`/healthz`, `/readyz`, `/metrics`). The app keeps
/// them outside load shedding so probes and scrapes work during a flood.
pub fn ops_router() -> Router<AppState> {
    merged(&OPS_MODULES)
}

/// The API routes, without the cross-cutting layers (see `app`).
pub fn api_router() -> Router<AppState> {
    merged(&API_MODULES)
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

/// The sale of a path's `{sale_id}`: `404` for an unknown or malformed id.
async fn sale(state: &AppState, raw: &str) -> Result<std::sync::Arc<SaleRuntime>, ApiError> {
    state
        .engine
        .find_sale(parse_id(raw)?)
        .await
        .map_err(|e| match e {
            crate::engine::EngineError::NotFound => ApiError::NotFound("sale not found"),
            other => other.into(),
        })
}
