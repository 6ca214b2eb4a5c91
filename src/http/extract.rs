//! Extractors: who is calling (buyer or admin), the path and query, and
//! the JSON body.
//!
//! Every extractor here rejects with [`ApiError`], so a malformed request
//! gets the contract's JSON error body, never axum's text rejections.
//! Handlers use [`Path`] and [`Query`] from this module, not axum's.

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
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
        json_body(&bytes).map(Self)
    }
}

/// A collected body read as [`JsonBody`] reads it: blank is `None`.
///
/// # Errors
/// `400 invalid_request` for malformed JSON.
pub(super) fn json_body(bytes: &[u8]) -> Result<Option<Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|e| ApiError::invalid(format!("body: malformed JSON ({e})")))
}

/// The optional `Idempotency-Key` header (1..=128 visible ASCII characters).
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.headers.get("idempotency-key") {
            None => Ok(Self(None)),
            Some(value) => idempotency_key(value)
                .map(|key| Self(Some(key.to_owned())))
                .ok_or_else(|| {
                    ApiError::invalid("Idempotency-Key: must be 1..128 visible ASCII characters")
                }),
        }
    }
}

/// The key in an `Idempotency-Key` header value, if it is a valid one.
pub(super) fn idempotency_key(value: &HeaderValue) -> Option<&str> {
    value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= MAX_KEY_LEN)
}

/// axum's `Path`, rejecting with [`ApiError`]: a segment that does not
/// decode (bad percent-encoding, invalid UTF-8) is `400 invalid_request`.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(ApiError::from)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        // Our routes' parameters are all strings, so the only failure a
        // client can cause is a segment that is not UTF-8 once decoded.
        Self::invalid(format!("path: {}", rejection.body_text()))
    }
}

/// axum's `Query`, rejecting with [`ApiError`] (`400 invalid_request`).
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(ApiError::from)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid(format!("query: {}", rejection.body_text()))
    }
}

/// Header of a waiting room's admission pass.
pub const PASS_HEADER: &str = "x-flashsale-pass";
/// Header of a purchase ticket.
pub const TICKET_HEADER: &str = "x-flashsale-ticket";
/// Header of a proof-of-work solution.
pub const POW_HEADER: &str = "x-flashsale-pow";
/// Header of an external captcha's token.
pub const CAPTCHA_HEADER: &str = "x-captcha-token";

/// What a purchase brings for the sale's front-door checks, read from its
/// headers. Each value is untrusted; the checks verify it. A value that is
/// not visible ASCII counts as absent (the check then refuses it).
pub struct FrontDoorProof(pub crate::engine::Proof);

impl FromRequestParts<AppState> for FrontDoorProof {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client_ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|peer| state.trusted_proxies.client_ip(peer.0.ip(), &parts.headers));
        let get = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Self(crate::engine::Proof {
            client_ip,
            pass: get(PASS_HEADER),
            ticket: get(TICKET_HEADER),
            pow: get(POW_HEADER),
            captcha: get(CAPTCHA_HEADER),
        }))
    }
}

/// `?access_token=` of a server-sent-events route.
#[derive(serde::Deserialize)]
pub struct TokenQuery {
    /// The buyer token, for clients that cannot send headers.
    pub access_token: Option<String>,
}

/// The buyer of a stream: the bearer header, else the query's token
/// (`EventSource` cannot send headers).
///
/// # Errors
/// `401` when neither holds a valid buyer token.
pub fn stream_buyer(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    query: &TokenQuery,
) -> Result<String, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer);
    let token = header
        .or(query.access_token.as_deref())
        .ok_or(ApiError::from(crate::auth::AuthError::Missing))?;
    Ok(String::from(&*state.auth.verify_buyer(token)?))
}
