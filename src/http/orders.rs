//! `/api/v1/orders`: a buyer's own orders, payment and cancellation.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::extract::{stream_buyer, Buyer, Path, Query, TokenQuery};
use super::openapi::ErrorBody;
use super::{parse_id, ApiError, AppState};
use crate::domain::order::Transition;
use crate::domain::{Order, OrderStatus};

super::routes! {
    "/api/v1/orders/events" => get(order_events),
    "/api/v1/orders/{order_id}" => get(get_order),
    "/api/v1/orders/{order_id}/pay" => post(pay_order),
    "/api/v1/orders/{order_id}/cancel" => post(cancel_order),
}

/// An order on the wire.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Order)]
pub struct OrderBody {
    #[serde(serialize_with = "super::ser_id")]
    #[schema(value_type = String, example = "7239847239847")]
    order_id: u64,
    #[serde(serialize_with = "super::ser_id")]
    #[schema(value_type = String, example = "7239847239811")]
    sale_id: u64,
    user_id: String,
    #[schema(minimum = 1)]
    quantity: u32,
    status: OrderStatus,
    #[serde(serialize_with = "super::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    created_at: i64,
    #[serde(serialize_with = "super::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: i64,
    /// When an unpaid order expires (the sale's payment window), if it does.
    #[serde(serialize_with = "super::ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    expires_at: Option<i64>,
}

impl From<Order> for OrderBody {
    fn from(o: Order) -> Self {
        Self {
            order_id: o.id,
            sale_id: o.sale_id,
            user_id: o.user_id,
            quantity: o.quantity,
            status: o.status,
            created_at: o.created_at_ms,
            updated_at: o.updated_at_ms,
            expires_at: o.expires_at_ms,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, description = "The order's id")),
    security(("buyer" = [])),
    responses(
        (status = 200, description = "The buyer's order", body = OrderBody),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`, or another buyer's order", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
async fn get_order(
    State(state): State<AppState>,
    Buyer(user): Buyer,
    Path(order_id): Path<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let order = state.engine.order(parse_id(&order_id)?, &user).await?;
    Ok(Json(order.into()))
}

#[utoipa::path(post, path = "/api/v1/orders/{order_id}/pay", tag = "orders",
    params(("order_id" = String, Path, description = "The order's id")),
    security(("buyer" = [])),
    responses(
        (status = 200, description = "Paid", body = OrderBody),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`, or another buyer's order", body = ErrorBody),
        (status = 409, description = "`invalid_request`: the order's status forbids it (`order_status`)",
         body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
async fn pay_order(
    State(state): State<AppState>,
    Buyer(user): Buyer,
    Path(order_id): Path<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let id = parse_id(&order_id)?;
    let order = state.engine.transition(id, user, Transition::Pay).await?;
    Ok(Json(order.into()))
}

#[utoipa::path(post, path = "/api/v1/orders/{order_id}/cancel", tag = "orders",
    params(("order_id" = String, Path, description = "The order's id")),
    security(("buyer" = [])),
    responses(
        (status = 200, description = "Cancelled: the units return to the sale", body = OrderBody),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`, or another buyer's order", body = ErrorBody),
        (status = 409, description = "`invalid_request`: the order's status forbids it (`order_status`)",
         body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
async fn cancel_order(
    State(state): State<AppState>,
    Buyer(user): Buyer,
    Path(order_id): Path<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let id = parse_id(&order_id)?;
    let order = state
        .engine
        .transition(id, user, Transition::Cancel)
        .await?;
    Ok(Json(order.into()))
}

#[utoipa::path(get, path = "/api/v1/orders/events", tag = "orders",
    params(("access_token" = Option<String>, Query,
        description = "The buyer token, for clients that cannot send headers (EventSource)")),
    security(("buyer" = [])),
    responses(
        (status = 200, description = "Server-sent events, one per change of one of the buyer's \
            orders from now on, named by the change (`accepted`, `paid`, `expired`, `cancelled`; \
            data: an `OrderEvent`); `lagged` when the stream fell behind and skipped events \
            (read the orders again)",
         content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
/// The buyer's order stream: every change of their orders, from any node.
async fn order_events(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    headers: axum::http::HeaderMap,
) -> Result<
    axum::response::sse::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt as _;
    use tokio::sync::broadcast::error::RecvError;
    let user = stream_buyer(&state, &headers, &query)?;
    let subscription = state.engine.buyer_streams().subscribe(&user);
    let stopping = state.stopping.clone().cancelled_owned();
    let stream = futures::stream::unfold(subscription, |mut sub| async move {
        let event = match sub.events.recv().await {
            Ok(event) => Event::default()
                .event(event_name(&event.status))
                .json_data(&*event)
                .unwrap_or_else(|_| Event::default().comment("serialization failed")),
            Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), sub))
    });
    Ok(Sse::new(stream.take_until(stopping)).keep_alive(KeepAlive::default()))
}

/// The event name of a change to `status`.
fn event_name(status: &str) -> &'static str {
    match status {
        "pending_payment" => "accepted",
        "paid" => "paid",
        "expired" => "expired",
        "cancelled" => "cancelled",
        _ => "changed",
    }
}
