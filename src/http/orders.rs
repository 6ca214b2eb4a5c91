//! `/api/v1/orders`: a buyer's own orders, payment and cancellation.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::extract::{Buyer, Path};
use super::openapi::ErrorBody;
use super::{parse_id, ApiError, AppState};
use crate::domain::order::Transition;
use crate::domain::{Order, OrderStatus};

super::routes! {
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
