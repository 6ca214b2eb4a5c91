//! The one error type of the HTTP layer.
//!
//! Every non-2xx answer has the contract's body
//! `{"error": {"code": "...", "message": "..."}}`. 5xx bodies stay generic;
//! the cause is logged here once, at `error` level.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::AuthError;
use crate::backend::StoreError;
use crate::domain::{Rejection, ValidationError};
use crate::engine::{EngineError, Refusal};

/// An API failure with its status and machine-readable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: missing or bad credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404.
    #[error("{0}")]
    NotFound(&'static str),
    /// 400 (or another 4xx) with a message naming the problem.
    #[error("{message}")]
    Invalid {
        /// The HTTP status (400, 409, 413, 415, 422 …).
        status: StatusCode,
        /// What is wrong.
        message: String,
    },
    /// A business refusal of a purchase (see [`Rejection`]).
    #[error("{}", .0.reason.spec().message)]
    Rejected(Refusal),
    /// 409: the order's state forbids the change.
    #[error("order is {0}")]
    WrongState(&'static str),
    /// 409: the sale's state forbids an admin's change; the code and
    /// message are the named rejection's (`ended`: opening a sale that has
    /// ended).
    #[error("{}", .0.spec().message)]
    Conflict(Rejection),
    /// 503: shedding load or a backend is unavailable.
    #[error("service overloaded")]
    Overloaded,
    /// 503 `unavailable`: the shared stock or the order queue is not ready
    /// (unreachable, or the sale is being re-seeded); retry in a second.
    #[error("not ready: {0}")]
    NotReady(&'static str),
    /// 503: a backend failed; the cause is logged, not returned.
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

impl ApiError {
    /// 400 `invalid_request` with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Invalid { status, .. } => *status,
            Self::Rejected(r) => {
                StatusCode::from_u16(r.reason.spec().status).unwrap_or(StatusCode::CONFLICT)
            }
            Self::WrongState(_) | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Overloaded | Self::Unavailable(_) | Self::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub(super) fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Invalid { .. } | Self::WrongState(_) => "invalid_request",
            Self::Rejected(r) => r.reason.code(),
            Self::Conflict(r) => r.code(),
            Self::Overloaded | Self::Unavailable(_) => "overloaded",
            Self::NotReady(_) => "unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Rejected(refusal) = self {
            // The flood path: a pre-rendered body, no JSON value.
            let status = self.status_code();
            let mut response = Response::new(Body::from(refusal.reason.spec().body));
            *response.status_mut() = status;
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(secs) = refusal.retry_after_secs {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return response;
        }
        let status = self.status_code();
        let mut body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        let mut retry_after = None;
        match &self {
            Self::Unavailable(cause) => {
                tracing::error!(error = %cause, "backend unavailable");
                body["error"]["message"] = json!("service temporarily unavailable");
                retry_after = Some(1);
            }
            Self::Overloaded | Self::NotReady(_) => retry_after = Some(1),
            Self::WrongState(status) => body["error"]["order_status"] = json!(status),
            _ => {}
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Self::Unauthorized("missing bearer token"),
            AuthError::Invalid => Self::Unauthorized("invalid or expired token"),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::invalid(e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound => Self::NotFound("not found"),
            EngineError::Invalid(message) => Self::Invalid {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message,
            },
            EngineError::WrongState(order) => Self::WrongState(order.status.as_str()),
            EngineError::Refused(reason) => Self::Conflict(reason),
            EngineError::RetryLater => Self::Overloaded,
            EngineError::Store(e) => Self::Unavailable(e),
            EngineError::NotReady(why) => Self::NotReady(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rejection's status is one HTTP knows, and its answer carries
    /// the vocabulary's body.
    #[tokio::test]
    async fn rejections_answer_their_pre_rendered_bodies() {
        for r in Rejection::ALL {
            let e = ApiError::Rejected(r.into());
            assert_eq!(e.status_code().as_u16(), r.spec().status);
            let response = e.into_response();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            assert_eq!(&body[..], r.spec().body.as_bytes());
        }
    }
}
