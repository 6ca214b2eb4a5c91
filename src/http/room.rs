//! The waiting room over HTTP: join, poll, and a live stream of one buyer's
//! place (server-sent events).
//!
//! - `POST /api/v1/sales/{id}/queue` joins (a buyer already in keeps their
//!   place) and answers the standing;
//! - `GET /api/v1/sales/{id}/queue` polls it (and keeps the place);
//! - `GET /api/v1/sales/{id}/queue/events` joins and streams it: an event
//!   per change (`drawing`, `waiting`, `admitted`, `sold_out`, `ended`,
//!   `absent`); the stream ends after `admitted` (buy with the pass, header
//!   `X-Flashsale-Pass`), `ended` or `absent`. A browser's `EventSource`
//!   cannot send headers, so this route also takes the buyer token as the
//!   `access_token` query parameter (RFC 6750 §2.3).

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};

use super::extract::{stream_buyer, Buyer, Path, Query, TokenQuery};
use super::openapi::{ErrorBody, SaleId, Standing as StandingBody};
use super::{sale, ApiError, AppState};
use crate::backend::room::Place;
use crate::domain::Rejection;
use crate::engine::room::{JoinError, RoomState, Standing};
use crate::engine::SaleRuntime;

super::routes! {
    "/api/v1/sales/{sale_id}/queue" => get(poll).post(join),
    "/api/v1/sales/{sale_id}/queue/events" => get(events),
}

/// The JSON body of a standing.
fn body(sale_id: u64, s: &Standing) -> Value {
    let mut v = match s {
        Standing::Drawing { waiting } => json!({"state": "drawing", "waiting": waiting}),
        Standing::Waiting {
            place,
            position,
            waiting,
            estimated_wait_ms,
        } => json!({
            "state": "waiting",
            "place": place,
            "position": position,
            "waiting": waiting,
            "estimated_wait_ms": estimated_wait_ms,
        }),
        Standing::Admitted { pass, expires_at } => json!({
            "state": "admitted",
            "pass": pass,
            "expires_at": crate::domain::rfc3339(*expires_at),
        }),
        Standing::SoldOut => json!({"state": "sold_out"}),
        Standing::Ended => json!({"state": "ended"}),
        Standing::Absent => json!({"state": "absent"}),
    };
    v["sale_id"] = json!(sale_id.to_string());
    v
}

fn event_name(s: &Standing) -> &'static str {
    match s {
        Standing::Drawing { .. } => "drawing",
        Standing::Waiting { .. } => "waiting",
        Standing::Admitted { .. } => "admitted",
        Standing::SoldOut => "sold_out",
        Standing::Ended => "ended",
        Standing::Absent => "absent",
    }
}

impl From<JoinError> for ApiError {
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::NoRoom => Self::NotFound("this sale has no waiting room"),
            JoinError::Closed(Standing::Ended) => Self::Rejected(Rejection::Ended.into()),
            JoinError::Closed(_) => Self::Rejected(Rejection::SoldOut.into()),
            JoinError::Store(e) => {
                tracing::warn!(error = %e, "waiting room unavailable");
                Self::NotReady("the waiting room is unreachable; retry")
            }
        }
    }
}

#[utoipa::path(post, path = "/api/v1/sales/{sale_id}/queue", tag = "sales", params(SaleId),
    security(("buyer" = [])),
    responses(
        (status = 200, description = "Joined (or already in): the standing", body = StandingBody),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`ended`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sale, or it has no waiting room", body = ErrorBody),
        (status = 409, description = "`sold_out`: the room is closed", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
pub(super) async fn join(
    State(state): State<AppState>,
    buyer: Buyer,
    Path(sale_id): Path<String>,
) -> Result<Response, ApiError> {
    let rt = sale(&state, &sale_id).await?;
    let now = state.engine.clock().now_ms();
    let standing = state.engine.rooms().join(&rt, &buyer.0, now).await?;
    Ok((StatusCode::OK, Json(body(rt.sale.id, &standing))).into_response())
}

#[utoipa::path(get, path = "/api/v1/sales/{sale_id}/queue", tag = "sales", params(SaleId),
    security(("buyer" = [])),
    responses(
        (status = 200, description = "The buyer's standing (the place is kept)", body = StandingBody),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sale, or it has no waiting room", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
pub(super) async fn poll(
    State(state): State<AppState>,
    buyer: Buyer,
    Path(sale_id): Path<String>,
) -> Result<Response, ApiError> {
    let rt = sale(&state, &sale_id).await?;
    let now = state.engine.clock().now_ms();
    let standing = state.engine.rooms().standing(&rt, &buyer.0, now).await?;
    Ok(Json(body(rt.sale.id, &standing)).into_response())
}

#[utoipa::path(get, path = "/api/v1/sales/{sale_id}/queue/events", tag = "sales",
    params(SaleId, ("access_token" = Option<String>, Query,
        description = "The buyer token, for clients that cannot send headers (EventSource)")),
    security(("buyer" = [])),
    responses(
        (status = 200, description = "Server-sent events, one per change of the standing, named by its state",
         content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sale, or it has no waiting room", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
pub(super) async fn events(
    State(state): State<AppState>,
    Path(sale_id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let user = stream_buyer(&state, &headers, &query)?;
    let rt = sale(&state, &sale_id).await?;
    let room = rt
        .sale
        .front_door
        .waiting_room
        .ok_or(ApiError::NotFound("this sale has no waiting room"))?;
    let rooms = state.engine.rooms().clone();
    let now = state.engine.clock().now_ms();
    let first = match rooms.join(&rt, &user, now).await {
        Ok(standing) => standing,
        Err(JoinError::Closed(standing)) => standing,
        Err(e) => return Err(e.into()),
    };
    let place = rooms
        .place(rt.sale.id, &user)
        .await
        .unwrap_or(Place::Absent);
    let guard = rooms.stream_opened(rt.sale.id, &user);
    let views = rooms.watch(rt.sale.id);
    let stopping = state.stopping.clone().cancelled_owned();
    struct Watch {
        rooms: std::sync::Arc<crate::engine::room::Rooms>,
        rt: std::sync::Arc<SaleRuntime>,
        user: String,
        place: Place,
        views: tokio::sync::watch::Receiver<crate::engine::room::View>,
        last: Option<Standing>,
        pending: Option<Standing>,
        done: bool,
        _guard: crate::engine::room::StreamGuard,
    }
    let start = Watch {
        rooms,
        rt,
        user,
        place,
        views,
        last: None,
        pending: Some(first),
        done: false,
        _guard: guard,
    };
    let stream = futures::stream::unfold(start, move |mut w| async move {
        loop {
            if w.done {
                return None;
            }
            let standing = match w.pending.take() {
                Some(s) => s,
                None => {
                    let view = *w.views.borrow_and_update();
                    // Ask the store only when the estimate says the buyer
                    // may have moved on: at the front, or drawn and sealed.
                    let stale = match w.place {
                        Place::Waiting { seq } => seq <= view.head.through,
                        Place::Drawing => view.head.sealed,
                        Place::Absent | Place::Admitted { .. } => {
                            view.state == RoomState::Admitting
                        }
                    };
                    if stale {
                        if let Ok(place) = w.rooms.place(w.rt.sale.id, &w.user).await {
                            w.place = place;
                        }
                    }
                    w.rooms.standing_of(&w.rt, &w.user, &room, w.place, &view)
                }
            };
            if w.last.as_ref() != Some(&standing) {
                w.done = matches!(
                    standing,
                    Standing::Admitted { .. } | Standing::Ended | Standing::Absent
                );
                let event = Event::default()
                    .event(event_name(&standing))
                    .json_data(body(w.rt.sale.id, &standing))
                    .unwrap_or_else(|_| Event::default().comment("serialization failed"));
                w.last = Some(standing);
                return Some((Ok(event), w));
            }
            if w.views.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok(Sse::new(stream.take_until(stopping)).keep_alive(KeepAlive::default()))
}
