//! Request ids: every answer carries `x-request-id`, and every log line of
//! a request carries it as the `request_id` field of its span.
//!
//! A client (or a proxy in front) that sends a usable `x-request-id` gets it
//! back; one that sends none, or an unusable one (empty, longer than
//! [`MAX_LEN`], or with a byte that is not visible ASCII), gets a fresh id.
//! The id is set on the request before anything else reads it, so handlers
//! and the request span see the same value as the answer.
//!
//! A fresh id is a process-wide counter that starts at a random 64-bit
//! value, written as 16 hex digits: unique across the nodes of a
//! deployment in practice (two nodes collide only if their random starts
//! fall within as many requests of each other) and one atomic add plus one
//! 16-byte header value per request on the fast lane, where a UUID would
//! cost a random draw. tower-http's `SetRequestIdLayer` does the same job
//! for a tower stack but keeps a client's value whatever it holds and
//! stores a request extension (an allocation); the fast lane answers before
//! any layer, so it calls [`take_or_make`] itself, and the operations port
//! uses [`echo`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The header, named once.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id kept.
pub const MAX_LEN: usize = 128;

/// The next fresh id.
static NEXT: LazyLock<AtomicU64> = LazyLock::new(|| AtomicU64::new(rand::random()));

/// Whether a client's id is kept: 1..=[`MAX_LEN`] visible ASCII bytes.
pub fn is_usable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(u8::is_ascii_graphic)
}

/// A fresh id: 16 lower-case hex digits.
pub fn fresh() -> HeaderValue {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
}

/// Takes the request's id out of `headers` if it is usable, else makes a
/// fresh one (a second `x-request-id` header is dropped with the first).
pub fn take_or_make(headers: &mut HeaderMap) -> HeaderValue {
    match headers.remove(&X_REQUEST_ID) {
        Some(value) if is_usable(&value) => value,
        _ => fresh(),
    }
}

/// Middleware giving a router's requests and answers their id (the
/// operations port; the API port's fast lane does it itself).
pub async fn echo(mut req: Request, next: Next) -> Response {
    let id = take_or_make(req.headers_mut());
    req.headers_mut().insert(&X_REQUEST_ID, id.clone());
    let mut response = next.run(req).await;
    response.headers_mut().insert(&X_REQUEST_ID, id);
    response
}

/// The id a request carries (set by [`take_or_make`]'s caller), as text.
pub fn of(headers: &HeaderMap) -> &str {
    headers.get(&X_REQUEST_ID).map_or("", as_text)
}

/// An id as text (every kept or made id is visible ASCII).
pub fn as_text(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_sixteen_hex_digits_and_differ() {
        let (a, b) = (fresh(), fresh());
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 16);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        }
    }

    #[test]
    fn a_usable_client_id_is_kept_and_others_replaced() {
        let long = "a".repeat(MAX_LEN);
        for kept in ["abc-123", "X/Y:z=1", long.as_str()] {
            let mut headers = HeaderMap::new();
            headers.insert(&X_REQUEST_ID, HeaderValue::from_str(kept).unwrap());
            assert_eq!(take_or_make(&mut headers), kept);
            assert!(headers.get(&X_REQUEST_ID).is_none());
        }
        let too_long = "a".repeat(MAX_LEN + 1);
        for replaced in [
            &b""[..],
            b"has space",
            b"tab\there",
            b"caf\xc3\xa9",
            too_long.as_bytes(),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(&X_REQUEST_ID, HeaderValue::from_bytes(replaced).unwrap());
            let id = take_or_make(&mut headers);
            assert_ne!(id.as_bytes(), replaced);
            assert_eq!(id.len(), 16);
        }
        assert_eq!(take_or_make(&mut HeaderMap::new()).len(), 16);
    }
}
