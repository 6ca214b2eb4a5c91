//! The one error type of the HTTP layer.
//!
//! Every non-2xx answer has the contract's body
//! `{"error": {"code": "...", "message": "..."}}`. 5xx bodies stay generic;
//! the cause is logged here once, at `error` level.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::AuthError;
use crate::backend::StoreError;
use crate::domain::ValidationError;
use crate::engine::EngineError;

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
    /// A domain rejection with its own status and code.
    #[error("{message}")]
    Rejected {
        /// The HTTP status.
        status: StatusCode,
        /// The machine-readable code.
        code: &'static str,
        /// Human text.
        message: &'static str,
        /// Seconds for `Retry-After`, if any.
        retry_after: Option<u64>,
    },
    /// 409: the order's state forbids the change.
    #[error("order is {0}")]
    WrongState(&'static str),
    /// 503: shedding load or a backend is unavailable.
    #[error("service overloaded")]
    Overloaded,
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
            Self::Invalid { status, .. } | Self::Rejected { status, .. } => *status,
            Self::WrongState(_) => StatusCode::CONFLICT,
            Self::Overloaded | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Invalid { .. } | Self::WrongState(_) => "invalid_request",
            Self::Rejected { code, .. } => code,
            Self::Overloaded | Self::Unavailable(_) => "overloaded",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Rejected {
            status,
            code,
            message,
            retry_after,
        } = self
        {
            // The flood path: codes and messages are our own constants with
            // nothing to escape, so skip building a JSON value.
            let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
            let mut response =
                (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
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
            Self::Overloaded => retry_after = Some(1),
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
            EngineError::RetryLater => Self::Overloaded,
            EngineError::Store(e) => Self::Unavailable(e),
        }
    }
}
