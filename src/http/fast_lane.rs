//! The flood's fast lane: `POST /api/v1/sales/{id}/purchase` rejections
//! answered before axum's router.
//!
//! Once a sale is sold out (or outside its window) almost every request of
//! a flash crowd is a purchase that will be refused. Callgrind showed the
//! router's generic machinery (url-parameter maps, request extensions,
//! extractors, boxed futures, the middleware stack) costing about as much
//! as hyper's HTTP parsing for such a request. This service recognises the
//! plain case — the purchase path, a bearer token, no body, no
//! `Idempotency-Key` — answers a bad token `401` as the full path would, and
//! otherwise asks the engine for a synchronous, memory-only rejection.
//! Anything else, including every case that could buy, goes to the full
//! router unchanged, which re-checks from scratch; so the fast lane can only
//! answer what the full path would have answered.
//!
//! It sits in front of load shedding on purpose: an answer computed without
//! awaiting holds no resources and cannot pile up.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::Service;

use super::{ApiError, AppState};
use crate::auth::bearer;

/// The fast lane wrapped around the full router.
#[derive(Clone)]
pub struct FastLane {
    router: Router,
    state: AppState,
}

impl FastLane {
    /// Puts the fast lane in front of `router`.
    pub fn new(router: Router, state: AppState) -> Self {
        Self { router, state }
    }

    /// The memory-only answer to `req`, if it has one.
    fn try_answer(&self, req: &Request) -> Option<Response> {
        if req.method() != Method::POST {
            return None;
        }
        let sale_id = purchase_path(req.uri().path())?;
        let headers = req.headers();
        if headers.contains_key("idempotency-key") || !http_body::Body::is_end_stream(req.body()) {
            return None;
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)?;
        // A bad token gets the full path's answer (its first extractor is
        // the buyer's) right here, instead of a second full verification.
        let user = match self.state.auth.verify_buyer(token) {
            Ok(user) => user,
            Err(e) => return Some(ApiError::from(e).into_response()),
        };
        let refusal = self.state.engine.try_reject_fast(sale_id, &user, 1)?;
        Some(ApiError::Rejected(refusal).into_response())
    }
}

/// `Some(sale_id)` for `/api/v1/sales/{decimal id}/purchase`.
fn purchase_path(path: &str) -> Option<u64> {
    let id = path
        .strip_prefix("/api/v1/sales/")?
        .strip_suffix("/purchase")?;
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

impl Service<Request<Body>> for FastLane {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <Router as Service<Request>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.try_answer(&req) {
            Some(response) => Box::pin(std::future::ready(Ok(response))),
            None => Box::pin(self.router.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_the_purchase_path() {
        assert_eq!(purchase_path("/api/v1/sales/42/purchase"), Some(42));
        assert_eq!(purchase_path("/api/v1/sales//purchase"), None);
        assert_eq!(purchase_path("/api/v1/sales/4x2/purchase"), None);
        assert_eq!(purchase_path("/api/v1/sales/42/purchase/"), None);
        assert_eq!(purchase_path("/api/v1/sales/42"), None);
        assert_eq!(
            purchase_path("/api/v1/sales/99999999999999999999999/purchase"),
            None
        );
    }
}
