//! `/api/v1/orders`: a buyer's own orders, payment and cancellation.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::extract::{Buyer, Path};
use super::{parse_id, ApiError, AppState};
use crate::domain::order::Transition;
use crate::domain::{Order, OrderStatus};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/orders/{order_id}", get(get_order))
        .route("/api/v1/orders/{order_id}/pay", post(pay_order))
        .route("/api/v1/orders/{order_id}/cancel", post(cancel_order))
}

/// An order on the wire.
#[derive(Debug, Serialize)]
pub struct OrderBody {
    #[serde(serialize_with = "super::ser_id")]
    order_id: u64,
    #[serde(serialize_with = "super::ser_id")]
    sale_id: u64,
    user_id: String,
    quantity: u32,
    status: OrderStatus,
    #[serde(serialize_with = "super::ser_time")]
    created_at: i64,
    #[serde(serialize_with = "super::ser_time")]
    updated_at: i64,
    #[serde(serialize_with = "super::ser_opt_time")]
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

async fn get_order(
    State(state): State<AppState>,
    Buyer(user): Buyer,
    Path(order_id): Path<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let order = state.engine.order(parse_id(&order_id)?, &user).await?;
    Ok(Json(order.into()))
}

async fn pay_order(
    State(state): State<AppState>,
    Buyer(user): Buyer,
    Path(order_id): Path<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let id = parse_id(&order_id)?;
    let order = state.engine.transition(id, user, Transition::Pay).await?;
    Ok(Json(order.into()))
}

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
