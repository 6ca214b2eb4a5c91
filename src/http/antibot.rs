//! The anti-bot front door over HTTP: the purchase ticket and the
//! proof-of-work challenge a sale may ask for (see docs/SECURITY.md).
//!
//! - `GET /api/v1/sales/{id}/ticket` → `{"ticket", "expires_at"}`; send the
//!   ticket as `X-Flashsale-Ticket` with the purchase;
//! - `GET /api/v1/sales/{id}/challenge` → `{"challenge", "bits",
//!   "expires_at"}`; send `X-Flashsale-Pow: <challenge>:<solution>`.
//!
//! Both need the buyer's token (what they hand out is bound to the buyer
//! and the sale), are answered only inside the sale's window (before:
//! `403 not_started`, the purchase's own rejection) and never cached.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::extract::{Buyer, Path};
use super::openapi::{ChallengeBody, ErrorBody, SaleId, TicketBody};
use super::{sale, ApiError, AppState};
use crate::engine::admission::{Attempt, Check, SaleWindow};
use crate::engine::SaleRuntime;

super::routes! {
    "/api/v1/sales/{sale_id}/ticket" => get(ticket),
    "/api/v1/sales/{sale_id}/challenge" => get(challenge),
}

/// The sale clock's now, refused unless the sale is inside its window.
fn inside_window(state: &AppState, rt: &SaleRuntime, user: &str) -> Result<i64, ApiError> {
    let now = state.engine.clock().now_ms();
    SaleWindow
        .check(&Attempt::new(rt, user, 1, now))
        .map_err(ApiError::Rejected)?;
    Ok(now)
}

#[utoipa::path(get, path = "/api/v1/sales/{sale_id}/ticket", tag = "sales", params(SaleId),
    security(("buyer" = [])),
    responses(
        (status = 200, description = "A purchase ticket (send it as `X-Flashsale-Ticket`)",
         body = TicketBody, headers(("Cache-Control" = String))),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`not_started` / `ended`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sale, or it needs no ticket", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
pub(super) async fn ticket(
    State(state): State<AppState>,
    buyer: Buyer,
    Path(sale_id): Path<String>,
) -> Result<Response, ApiError> {
    let rt = sale(&state, &sale_id).await?;
    if !rt.sale.front_door.ticket {
        return Err(ApiError::NotFound("this sale needs no ticket"));
    }
    let now = inside_window(&state, &rt, &buyer.0)?;
    let (ticket, expires_ms) = state.engine.gear().tickets.issue(rt.sale.id, &buyer.0, now);
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "ticket": ticket,
            "expires_at": crate::domain::rfc3339(expires_ms),
        })),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/sales/{sale_id}/challenge", tag = "sales", params(SaleId),
    security(("buyer" = [])),
    responses(
        (status = 200, description = "A proof-of-work challenge (send `X-Flashsale-Pow: <challenge>:<solution>`)",
         body = ChallengeBody, headers(("Cache-Control" = String))),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`not_started` / `ended`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sale, or it needs no challenge", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
pub(super) async fn challenge(
    State(state): State<AppState>,
    buyer: Buyer,
    Path(sale_id): Path<String>,
) -> Result<Response, ApiError> {
    let rt = sale(&state, &sale_id).await?;
    let bits = rt.sale.front_door.pow_bits;
    if bits == 0 {
        return Err(ApiError::NotFound("this sale needs no challenge"));
    }
    let now = inside_window(&state, &rt, &buyer.0)?;
    let (challenge, expires_ms) = state
        .engine
        .gear()
        .challenges
        .issue(rt.sale.id, &buyer.0, now);
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "challenge": challenge,
            "bits": bits,
            "expires_at": crate::domain::rfc3339(expires_ms),
        })),
    )
        .into_response())
}
