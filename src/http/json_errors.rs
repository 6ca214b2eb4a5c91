//! The last line of defence for the contract's error body.
//!
//! Handlers and our extractors answer errors with [`ApiError`]. An error
//! answer built anywhere else — an axum rejection of an extractor we do not
//! wrap, a router default, a tower or tower-http layer — is rewritten here
//! into `{"error": {"code", "message"}}` with `Content-Type:
//! application/json`, keeping its status and every other header (`Allow`,
//! `Retry-After`, …). A 4xx keeps its text as the message; a 5xx gets a
//! generic one and its text goes to the log.
//!
//! Answers hyper writes itself, before any service runs (a request line or
//! header block it cannot parse), are out of reach of every service.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

/// Longest original body kept as the message.
const MAX_MESSAGE: usize = 512;

/// Returns `response` unchanged unless it is an error without a JSON body;
/// such an answer is rewritten into the contract's error body.
pub(super) async fn ensure(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_MESSAGE)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let fallback = status.canonical_reason().unwrap_or("request rejected");
    let message = if status.is_server_error() {
        if let Some(text) = &text {
            tracing::error!(status = status.as_u16(), error = %text, "error answer rewritten");
        }
        fallback.to_owned()
    } else {
        text.unwrap_or_else(|| fallback.to_owned())
    };
    let body = serde_json::json!({"error": {"code": code(status), "message": message}});
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED && !parts.headers.contains_key(header::WWW_AUTHENTICATE) {
        parts
            .headers
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    Response::from_parts(parts, Body::from(body.to_string()))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The contract's code for an error status nobody gave a code.
pub(super) fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "overloaded",
        s if s.is_server_error() => "internal_error",
        _ => "invalid_request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn text_errors_become_the_contract_body() {
        let text = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET,HEAD")],
            "Invalid URL",
        )
            .into_response();
        let rewritten = ensure(text).await;
        assert_eq!(rewritten.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(rewritten.headers()[header::ALLOW], "GET,HEAD");
        assert_eq!(
            rewritten.headers()[header::CONTENT_TYPE],
            "application/json"
        );
        assert_eq!(
            body_of(rewritten).await,
            serde_json::json!({"error": {"code": "invalid_request", "message": "Invalid URL"}})
        );
    }

    #[tokio::test]
    async fn server_errors_stay_generic_and_json_passes_through() {
        let secret = (StatusCode::INTERNAL_SERVER_ERROR, "db password wrong").into_response();
        let body = body_of(ensure(secret).await).await;
        assert_eq!(body["error"]["code"], "internal_error");
        assert_eq!(body["error"]["message"], "Internal Server Error");

        let empty = StatusCode::NOT_FOUND.into_response();
        let body = body_of(ensure(empty).await).await;
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(body["error"]["message"], "Not Found");

        let ok = (StatusCode::OK, "fine").into_response();
        assert!(ensure(ok).await.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
    }
}
