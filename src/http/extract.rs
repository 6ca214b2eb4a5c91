//! Extractors: who is calling (buyer or admin) and the JSON body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde_json::Value;

use super::{ApiError, AppState};
use crate::auth::{bearer, AuthError};
use crate::engine::idempotency::MAX_KEY_LEN;

fn token(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or(ApiError::from(AuthError::Missing))
}

/// An authenticated buyer: the JWT's `sub`.
pub struct Buyer(pub String);

impl FromRequestParts<AppState> for Buyer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = token(parts)?;
        Ok(Self(String::from(&*state.auth.verify_buyer(token)?)))
    }
}

/// The admin (static bearer token). A valid buyer token gets `403`.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = token(parts)?;
        if state.auth.is_admin(token) {
            Ok(Self)
        } else if state.auth.verify_buyer(token).is_ok() {
            Err(ApiError::Forbidden("admin token required"))
        } else {
            Err(ApiError::Unauthorized("invalid admin token"))
        }
    }
}

/// An optional JSON body: `None` when empty. Any content type is read as
/// JSON (curl's default form type included); malformed JSON is a `400` and
/// an oversized body a `413`, both with the contract's error body.
pub struct JsonBody(pub Option<Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Most purchases carry no body: skip collecting one.
        if http_body::Body::is_end_stream(req.body()) {
            return Ok(Self(None));
        }
        let bytes =
            Bytes::from_request(req, state)
                .await
                .map_err(|rejection| ApiError::Invalid {
                    status: match rejection.status() {
                        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                        _ => StatusCode::BAD_REQUEST,
                    },
                    message: rejection.body_text(),
                })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        serde_json::from_slice(&bytes)
            .map(|v| Self(Some(v)))
            .map_err(|e| ApiError::invalid(format!("body: malformed JSON ({e})")))
    }
}

/// The optional `Idempotency-Key` header (1..=128 visible ASCII characters).
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(Self(None));
        };
        match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= MAX_KEY_LEN => {
                Ok(Self(Some(key.to_owned())))
            }
            _ => Err(ApiError::invalid(
                "Idempotency-Key: must be 1..128 visible ASCII characters",
            )),
        }
    }
}
