//! `/api/v1/admin/webhooks`: the webhook delivery log (admin).
//!
//! One line per order event in the outbox, ordered by event id, with where
//! its delivery stands; pages follow `next_cursor` (`after`).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{Admin, Query};
use super::openapi::ErrorBody;
use super::{ApiError, AppState};
use crate::backend::outbox::{event_type, Delivery, DeliveryFilter, DeliveryState};

/// Largest page.
const MAX_PAGE: usize = 1_000;

super::routes! {
    "/api/v1/admin/webhooks" => get(list_webhooks),
}

/// One event's delivery, as the admin reads it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WebhookDelivery)]
pub struct DeliveryBody {
    /// The event id (the `webhook-id` header and the payload's `id`).
    event_id: String,
    #[serde(serialize_with = "super::ser_id")]
    #[schema(value_type = String)]
    order_id: u64,
    /// `order.accepted`, `order.paid`, `order.expired` or `order.cancelled`.
    event_type: &'static str,
    #[serde(serialize_with = "super::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    occurred_at: i64,
    state: DeliveryState,
    /// Attempts started so far.
    attempts: u32,
    /// The receiver's last HTTP status (`null`: it never answered).
    #[schema(required = true)]
    last_status: Option<u16>,
    /// Why the last attempt failed (`null` after a success or before any).
    #[schema(required = true)]
    last_error: Option<String>,
    /// When a pending event is attempted next (`null` once delivered or dead).
    #[serde(serialize_with = "super::ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    next_attempt_at: Option<i64>,
    #[serde(serialize_with = "super::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: i64,
}

impl From<Delivery> for DeliveryBody {
    fn from(d: Delivery) -> Self {
        Self {
            event_id: d.event_id,
            order_id: d.order_id,
            event_type: event_type(d.order_status),
            occurred_at: d.occurred_at_ms,
            state: d.state,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error,
            next_attempt_at: (d.state == DeliveryState::Pending).then_some(d.next_attempt_at_ms),
            updated_at: d.updated_at_ms,
        }
    }
}

/// `GET /api/v1/admin/webhooks`: a page of the delivery log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookPage {
    items: Vec<DeliveryBody>,
    /// Pass as `after` for the next page; `null` on the last one.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct LogQuery {
    status: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/admin/webhooks", tag = "webhooks",
    params(
        ("status" = Option<String>, Query, description = "Only `pending`, `delivered` or `dead` events"),
        ("after" = Option<String>, Query, description = "`next_cursor` of the previous page (an event id)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (100)")),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The delivery log, a page", body = WebhookPage),
        (status = 400, description = "`invalid_request`: bad `status`, `after` or `limit`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: a buyer token", body = ErrorBody),
        (status = 503, description = "`overloaded` / `unavailable`", body = ErrorBody),
    ))]
async fn list_webhooks(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<LogQuery>,
) -> Result<Json<WebhookPage>, ApiError> {
    let status =
        match q.status.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(DeliveryState::parse(raw).ok_or_else(|| {
                ApiError::invalid("status: must be one of pending, delivered, dead")
            })?),
        };
    // A cursor is an event id (`evt_<digits>_<kind>`): anything else is
    // refused here rather than handed to a database that may reject it.
    let after = q.after.filter(|a| !a.is_empty());
    if after
        .as_deref()
        .is_some_and(|a| a.len() > 64 || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err(ApiError::invalid(
            "after: must be an event id (next_cursor)",
        ));
    }
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(ApiError::invalid("limit: must be an integer in 1..=1000")),
        },
    };
    let lines = state
        .engine
        .store()
        .list_webhooks(DeliveryFilter {
            state: status,
            after,
            limit,
        })
        .await?;
    let next_cursor = (lines.len() == limit)
        .then(|| lines.last().map(|d| d.event_id.clone()))
        .flatten();
    Ok(Json(WebhookPage {
        items: lines.into_iter().map(DeliveryBody::from).collect(),
        next_cursor,
    }))
}
