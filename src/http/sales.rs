//! `/api/v1/sales`: create, read, buy, stats, intents, live events.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::extract::{Admin, Buyer, FrontDoorProof, IdempotencyKey, JsonBody, Path, Query};
use super::openapi::{
    ErrorBody, IntentPage, PurchaseRequest, SaleId, SaleList, SaleRequest, SaleStats,
};
use super::orders::OrderBody;
use super::{parse_id, sale, ApiError, AppState};
use crate::backend::Intent;
use crate::domain::{FrontDoor, NewSale, Rejection, SaleStatus, WindowMove};
use crate::engine::{PurchaseOutcome, SaleRuntime};

/// Most units one purchase may ask for.
pub(super) const MAX_QUANTITY: u64 = 1_000_000_000;
/// Largest page of intents.
const MAX_PAGE: usize = 1_000;

super::routes! {
    "/api/v1/sales" => post(create_sale).get(list_sales),
    "/api/v1/sales/{sale_id}" => get(get_sale),
    "/api/v1/sales/{sale_id}/purchase" => post(purchase),
    "/api/v1/sales/{sale_id}/open" => post(open_sale),
    "/api/v1/sales/{sale_id}/close" => post(close_sale),
    "/api/v1/sales/{sale_id}/stats" => get(stats),
    "/api/v1/sales/{sale_id}/intents" => get(intents),
    "/api/v1/sales/{sale_id}/events" => get(events),
}

/// The sale as buyers see it.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Sale)]
pub struct SaleBody {
    #[serde(serialize_with = "super::ser_id")]
    #[schema(value_type = String, example = "7239847239811")]
    id: u64,
    item: String,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    stock: u64,
    /// Units left; may lag by up to a second.
    remaining: u64,
    #[schema(minimum = 1)]
    per_user_limit: u32,
    #[serde(serialize_with = "super::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    starts_at: i64,
    #[serde(serialize_with = "super::ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    ends_at: Option<i64>,
    #[schema(required = true)]
    payment_window_secs: Option<u64>,
    status: SaleStatus,
    /// The optional admission steps; absent for a plain sale.
    #[serde(skip_serializing_if = "FrontDoor::is_open")]
    front_door: FrontDoor,
    /// Stock buckets (Redis hash tags) the sale's stock is split over in
    /// the distributed mode; 1 = one tag.
    #[schema(minimum = 1, maximum = 16)]
    buckets: u8,
}

impl SaleBody {
    /// The sale's body at `now_ms` (the engine's sale clock), with its
    /// window as this node decides by now.
    fn of(rt: &SaleRuntime, now_ms: i64) -> Self {
        let remaining = rt.ledger.remaining();
        let schedule = rt.schedule();
        Self {
            id: rt.sale.id,
            item: rt.sale.item.clone(),
            stock: rt.sale.stock,
            remaining,
            per_user_limit: rt.sale.per_user_limit,
            starts_at: schedule.starts_at_ms,
            ends_at: schedule.ends_at_ms,
            payment_window_secs: rt.sale.payment_window_secs,
            status: schedule.status(now_ms, remaining),
            front_door: rt.sale.front_door.clone(),
            buckets: rt.sale.buckets,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/sales", tag = "sales", request_body = SaleRequest,
    security(("admin" = [])),
    responses(
        (status = 201, description = "Created", body = SaleBody,
         headers(("Location" = String, description = "The sale's URL"))),
        (status = 400, description = "`invalid_request` naming the field", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: a buyer token", body = ErrorBody),
        (status = 413, description = "`invalid_request`: body over the limit", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
async fn create_sale(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let body = body.ok_or_else(|| ApiError::invalid("body: a JSON object is required"))?;
    let new = NewSale::parse(&body)?;
    if new.front_door.captcha && state.engine.gear().captcha.is_none() {
        return Err(ApiError::invalid(
            "front_door.captcha needs --captcha-verify-url on this node",
        ));
    }
    let rt = state.engine.create_sale(new).await?;
    tracing::info!(sale_id = rt.sale.id, stock = rt.sale.stock, "sale created");
    let location = format!("/api/v1/sales/{}", rt.sale.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(SaleBody::of(&rt, state.engine.clock().now_ms())),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/sales", tag = "sales", security(("admin" = [])),
    responses(
        (status = 200, description = "Every sale", body = SaleList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: a buyer token", body = ErrorBody),
        (status = 503, description = "`overloaded`", body = ErrorBody),
    ))]
async fn list_sales(State(state): State<AppState>, _: Admin) -> Json<Value> {
    let now = state.engine.clock().now_ms();
    let sales: Vec<_> = state
        .engine
        .sales()
        .iter()
        .map(|rt| SaleBody::of(rt, now))
        .collect();
    Json(json!({ "items": sales }))
}

#[utoipa::path(get, path = "/api/v1/sales/{sale_id}", tag = "sales", params(SaleId),
    responses(
        (status = 200, description = "The sale as buyers see it (cacheable for a second)",
         body = SaleBody, headers(("Cache-Control" = String))),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
async fn get_sale(
    State(state): State<AppState>,
    Path(sale_id): Path<String>,
) -> Result<Response, ApiError> {
    let rt = sale(&state, &sale_id).await?;
    // Cacheable for a second: a CDN or proxy can absorb the page-refresh storm.
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=1")],
        Json(SaleBody::of(&rt, state.engine.clock().now_ms())),
    )
        .into_response())
}

#[utoipa::path(post, path = "/api/v1/sales/{sale_id}/open", tag = "sales", params(SaleId),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The sale, open now: an upcoming sale starts at this moment \
         (by the sale clock); an open one is unchanged", body = SaleBody),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: a buyer token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`ended`: the sale has ended and does not reopen", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`; retrying is safe", body = ErrorBody),
    ))]
async fn open_sale(
    State(state): State<AppState>,
    _: Admin,
    Path(sale_id): Path<String>,
) -> Result<Json<SaleBody>, ApiError> {
    move_window(&state, &sale_id, WindowMove::Open).await
}

#[utoipa::path(post, path = "/api/v1/sales/{sale_id}/close", tag = "sales", params(SaleId),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The sale, ended now: `ends_at` becomes this moment (by the \
         sale clock) if it was later or absent; an ended sale is unchanged. Buyers then get \
         `403 ended` and its waiting room tells every waiter it ended", body = SaleBody),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: a buyer token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`; retrying is safe", body = ErrorBody),
    ))]
async fn close_sale(
    State(state): State<AppState>,
    _: Admin,
    Path(sale_id): Path<String>,
) -> Result<Json<SaleBody>, ApiError> {
    move_window(&state, &sale_id, WindowMove::Close).await
}

async fn move_window(
    state: &AppState,
    sale_id: &str,
    how: WindowMove,
) -> Result<Json<SaleBody>, ApiError> {
    let sale_id = parse_id(sale_id)?;
    let rt = state
        .engine
        .move_window(sale_id, how)
        .await
        .map_err(|e| match e {
            crate::engine::EngineError::NotFound => ApiError::NotFound("sale not found"),
            other => other.into(),
        })?;
    Ok(Json(SaleBody::of(&rt, state.engine.clock().now_ms())))
}

/// The quantity a collected purchase body asks for, exactly as the
/// purchase handler reads it ([`JsonBody`], then [`parse_quantity`]).
///
/// # Errors
/// `400 invalid_request` for malformed JSON or a bad quantity.
pub(super) fn body_quantity(bytes: &[u8]) -> Result<u32, ApiError> {
    parse_quantity(super::extract::json_body(bytes)?)
}

fn parse_quantity(body: Option<Value>) -> Result<u32, ApiError> {
    let Some(body) = body else { return Ok(1) };
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("body: must be a JSON object"))?;
    match obj.get("quantity") {
        None | Some(Value::Null) => Ok(1),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(q) if (1..=MAX_QUANTITY).contains(&q) => Ok(q as u32),
            _ => Err(ApiError::invalid(
                "quantity: must be an integer in 1..=1000000000",
            )),
        },
        Some(_) => Err(ApiError::invalid("quantity: must be an integer")),
    }
}

#[utoipa::path(post, path = "/api/v1/sales/{sale_id}/purchase", tag = "sales",
    params(SaleId, ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 128,
        description = "A retry with the same key by the same user returns the first answer")),
    request_body(content = Option<PurchaseRequest>, description = "Optional; quantity 1 by default"),
    security(("buyer" = [])),
    responses(
        (status = 201, description = "Accepted: the order is durable", body = OrderBody, headers(
            ("Location" = String, description = "The order's URL"),
            ("Idempotent-Replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "`invalid_request`: bad body, quantity or key", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`not_started` / `ended`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`sold_out` / `limit_reached`", body = ErrorBody),
        (status = 413, description = "`invalid_request`: body over the limit", body = ErrorBody),
        (status = 422, description = "`invalid_request`: the key was used for another purchase",
         body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody,
         headers(("Retry-After" = u64))),
    ))]
async fn purchase(
    State(state): State<AppState>,
    buyer: Buyer,
    Path(sale_id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    FrontDoorProof(proof): FrontDoorProof,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let sale_id = parse_id(&sale_id)?;
    let quantity = parse_quantity(body)?;
    let outcome = state
        .engine
        .purchase_with(sale_id, buyer.0, quantity, key, proof)
        .await?;
    match outcome {
        PurchaseOutcome::Accepted { order, replayed } => {
            let location = format!("/api/v1/orders/{}", order.id);
            let mut response = (
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(OrderBody::from(order)),
            )
                .into_response();
            if replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        PurchaseOutcome::Rejected(refusal) => Err(ApiError::Rejected(refusal)),
    }
}

#[utoipa::path(get, path = "/api/v1/sales/{sale_id}/stats", tag = "sales", params(SaleId),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The sale's counters", body = SaleStats),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: a buyer token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
async fn stats(
    State(state): State<AppState>,
    _: Admin,
    Path(sale_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rt = sale(&state, &sale_id).await?;
    let c = &rt.counters;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let remaining = rt.ledger.remaining();
    Ok(Json(json!({
        "sale_id": rt.sale.id.to_string(),
        "stock": rt.sale.stock,
        "sold": rt.sale.stock - remaining,
        "remaining": remaining,
        "status": rt.schedule().status(state.engine.clock().now_ms(), remaining),
        "orders_persisted": n(&c.orders_persisted),
        "attempts": n(&c.attempts),
        "accepted": n(&c.accepted),
        "holders": rt.ledger.holders(),
        "intents": rt.missed.len(),
        "rejected": Rejection::ALL
            .iter()
            .map(|&r| (r.code().to_owned(), json!(c.rejected(r))))
            .collect::<serde_json::Map<_, _>>(),
        "replayed": n(&c.replayed),
        "paid": n(&c.paid),
        "expired": n(&c.expired),
        "cancelled": n(&c.cancelled),
    })))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/sales/{sale_id}/intents", tag = "sales",
    params(SaleId,
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    security(("admin" = [])),
    responses(
        (status = 200, description = "Buyers who missed out, a page", body = IntentPage),
        (status = 400, description = "`invalid_request`: bad `limit`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: a buyer token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
async fn intents(
    State(state): State<AppState>,
    _: Admin,
    Path(sale_id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let sale_id = sale(&state, &sale_id).await?.sale.id;
    let limit = match page.limit.as_deref() {
        None => 100,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(ApiError::invalid("limit: must be an integer in 1..=1000")),
        },
    };
    let items = state
        .engine
        .store()
        .list_intents(sale_id, page.cursor, limit)
        .await?;
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(|i| i.user_id.clone()))
        .flatten();
    let items: Vec<IntentBody> = items.into_iter().map(IntentBody::from).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// A missed buyer as the shop reads it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Intent)]
pub(super) struct IntentBody {
    #[serde(serialize_with = "super::ser_id")]
    #[schema(value_type = String)]
    sale_id: u64,
    user_id: String,
    quantity: u32,
    #[serde(serialize_with = "super::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    created_at: i64,
}

impl From<Intent> for IntentBody {
    fn from(i: Intent) -> Self {
        Self {
            sale_id: i.sale_id,
            user_id: i.user_id,
            quantity: i.quantity,
            created_at: i.created_at_ms,
        }
    }
}

/// Server-sent events: the sale's public view whenever it changes (checked
/// every 200 ms), so buyers see "sold out" or a reopening without polling.
#[utoipa::path(get, path = "/api/v1/sales/{sale_id}/events", tag = "sales", params(SaleId),
    responses(
        (status = 200, description = "Server-sent events: a `sale` event (the sale's body) at each change",
         body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
async fn events(
    State(state): State<AppState>,
    Path(sale_id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let rt = sale(&state, &sale_id).await?;
    let stopping = state.stopping.clone().cancelled_owned();
    let engine = state.engine.clone();
    let stream = futures::stream::unfold((rt, None), move |(rt, last)| {
        let engine = engine.clone();
        async move {
            loop {
                let body = SaleBody::of(&rt, engine.clock().now_ms());
                let changed = last.as_ref() != Some(&(body.remaining, body.status));
                if changed {
                    let key = Some((body.remaining, body.status));
                    let event = Event::default()
                        .event("sale")
                        .json_data(&body)
                        .unwrap_or_else(|_| Event::default().comment("serialization failed"));
                    return Some((Ok(event), (rt, key)));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // Ends when a graceful stop begins, so an open stream never holds it up.
    Ok(Sse::new(stream.take_until(stopping)).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_defaults_and_bounds() {
        assert_eq!(parse_quantity(None).unwrap(), 1);
        assert_eq!(parse_quantity(Some(json!({}))).unwrap(), 1);
        assert_eq!(parse_quantity(Some(json!({"quantity": 3}))).unwrap(), 3);
        for bad in [
            json!({"quantity": 0}),
            json!({"quantity": -1}),
            json!({"quantity": "2"}),
            json!({"quantity": 1.5}),
            json!({"quantity": 10_000_000_000u64}),
            json!([1]),
        ] {
            assert!(parse_quantity(Some(bad)).is_err());
        }
    }
}
