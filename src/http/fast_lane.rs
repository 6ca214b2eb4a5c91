//! The flood's fast lane: `POST /api/v1/sales/{id}/purchase` rejections
//! answered before axum's router, for every shape a buyer's request takes.
//!
//! Once a sale is sold out (or outside its window) almost every request of
//! a flash crowd is a purchase that will be refused. Callgrind showed the
//! router's generic machinery (url-parameter maps, request extensions,
//! extractors, boxed futures, the middleware stack) costing about as much
//! as hyper's HTTP parsing for such a request. This service recognises a
//! purchase with a bearer token, answers a bad token `401` as the full path
//! would, and otherwise asks the engine for a synchronous, memory-only
//! rejection:
//!
//! - a body is read only as far as it has already arrived (it comes with
//!   the headers in practice) and only up to the body limit; the quantity
//!   is read exactly as the purchase handler reads it;
//! - an `Idempotency-Key` gets the full path's treatment: a rejection
//!   recorded under it is replayed, and a sold-out answer to an unused key
//!   is recorded under it (see [`Engine::try_reject_fast_keyed`]).
//!
//! Anything else — a body not yet arrived or not understood, a key in use,
//! every case that could buy — goes to the full router with the body
//! rebuilt from the bytes read, and the router re-checks from scratch; so
//! the fast lane can only answer what the full path would have answered
//! (`tests/api/fast_lane_equivalence.rs` checks it on random requests).
//!
//! Every answer, its own and the router's, carries the request's
//! `x-request-id` ([`request_id::take_or_make`], called first, so the
//! router's request span and handlers see the same id).
//!
//! It sits in front of load shedding on purpose: an answer computed without
//! waiting on the network holds no resources and cannot pile up. Every
//! answer of the router passes [`json_errors::ensure`] on its way out.
//!
//! [`Engine::try_reject_fast_keyed`]: crate::engine::Engine::try_reject_fast_keyed

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::{Body as _, Frame, SizeHint};
use tower::Service;

use super::extract::idempotency_key;
use super::request_id::{self, X_REQUEST_ID};
use super::sales::{body_quantity, MAX_QUANTITY};
use super::{json_errors, ApiError, AppState};
use crate::auth::bearer;

/// Largest body the fast lane reads itself; a longer one (never a buyer's
/// `{"quantity": n}`) goes to the router unread.
const MAX_FAST_BODY: usize = 1024;

/// The `Idempotency-Key` header, named once (a name given as a string is
/// parsed again at every lookup).
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The fast lane wrapped around the full router.
#[derive(Clone)]
pub struct FastLane {
    router: Router,
    state: AppState,
    /// The router's body limit; `None` until [`FastLane::with_body_limit`].
    body_limit: Option<usize>,
    /// Off on a node without the API role: everything goes to the router.
    purchases: bool,
}

/// What to do with a request, decided from its head alone.
enum Triage {
    /// Answered already.
    Answer(Response),
    /// Not the fast lane's: the router takes it as it is.
    Route,
    /// A purchase with a body: read what has arrived, then decide.
    ReadBody(Pending),
}

/// A purchase waiting for its body, its head already checked.
struct Pending {
    sale_id: u64,
    user: Arc<str>,
    /// A valid key, if the request has one.
    key: Option<HeaderValue>,
    cap: usize,
}

impl FastLane {
    /// Puts the fast lane in front of `router`. Without
    /// [`Self::with_body_limit`] it never reads a body: a purchase with one
    /// always takes the full path.
    pub fn new(router: Router, state: AppState) -> Self {
        Self {
            router,
            state,
            body_limit: None,
            purchases: true,
        }
    }

    /// Leaves every request to the router (a node that does not serve the
    /// API: its router answers purchases `404`).
    pub fn routing_only(mut self) -> Self {
        self.purchases = false;
        self
    }

    /// Lets the fast lane read purchase bodies; `limit` must be the
    /// router's own body limit, so a body the full path would refuse with
    /// `413` is left to it.
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        self.body_limit = Some(limit);
        self
    }

    /// Decides what to do with `req` from its head.
    fn triage(&self, req: &Request) -> Triage {
        if !self.purchases || req.method() != Method::POST {
            return Triage::Route;
        }
        let Some(sale_id) = purchase_path(req.uri().path()) else {
            return Triage::Route;
        };
        let headers = req.headers();
        let Some(token) = headers.get(header::AUTHORIZATION).and_then(bearer_token) else {
            return Triage::Route;
        };
        // A bad token gets the full path's answer (its first extractor is
        // the buyer's) right here, instead of a second full verification.
        let user = match self.state.auth.verify_buyer(token) {
            Ok(user) => user,
            Err(e) => return Triage::Answer(ApiError::from(e).into_response()),
        };
        let key = match headers.get(&IDEMPOTENCY_KEY) {
            None => None,
            Some(value) if idempotency_key(value).is_some() => Some(value),
            // The full path's 400.
            Some(_) => return Triage::Route,
        };
        if http_body::Body::is_end_stream(req.body()) {
            let key = key.and_then(idempotency_key);
            return match self.decide(sale_id, &user, 1, key) {
                Some(response) => Triage::Answer(response),
                None => Triage::Route,
            };
        }
        let Some(limit) = self.body_limit else {
            return Triage::Route;
        };
        let cap = limit.min(MAX_FAST_BODY);
        // `Expect: 100-continue`: the body is not sent until asked for, so
        // it cannot have arrived; the router's timeout should cover the wait.
        if headers.contains_key(header::EXPECT)
            || http_body::Body::size_hint(req.body()).lower() > cap as u64
        {
            return Triage::Route;
        }
        Triage::ReadBody(Pending {
            sale_id,
            user,
            key: key.cloned(),
            cap,
        })
    }

    /// The memory-only rejection of a purchase of `quantity`, if any.
    fn decide(
        &self,
        sale_id: u64,
        user: &str,
        quantity: u32,
        key: Option<&str>,
    ) -> Option<Response> {
        let engine = &self.state.engine;
        let outcome = match key {
            None => engine.try_reject_fast(sale_id, user, quantity)?,
            Some(key) => engine.try_reject_fast_keyed(sale_id, user, quantity, key)?,
        };
        Some(ApiError::Rejected(outcome).into_response())
    }

    /// Reads what has arrived of the body (never waiting); answers from
    /// memory if it can, else routes the request with the body rebuilt.
    /// Runs inside the first poll of the request's future: hyper reads a
    /// body that came with the head before it polls the service's future.
    fn read_body(
        mut self,
        req: Request,
        pending: Pending,
        id: HeaderValue,
        cx: &mut Context<'_>,
    ) -> LaneFuture {
        let (parts, mut body) = req.into_parts();
        let mut read = Bytes::new();
        let body = match read_arrived(&mut body, &mut read, pending.cap, cx) {
            BodyState::Whole => {
                let key = pending.key.as_ref().and_then(idempotency_key);
                let answer = quick_quantity(&read)
                    .or_else(|| body_quantity(&read).ok())
                    .and_then(|quantity| {
                        self.decide(pending.sale_id, &pending.user, quantity, key)
                    });
                if let Some(mut response) = answer {
                    answered_span(&parts.method, &id, &response);
                    response.headers_mut().insert(&X_REQUEST_ID, id);
                    return LaneFuture::Ready(Some(response));
                }
                Body::from(read)
            }
            BodyState::Partial => Body::new(Resumed {
                read: Some(read),
                failed: None,
                rest: body,
            }),
            BodyState::Failed(e) => Body::new(Resumed {
                read: Some(read),
                failed: Some(e),
                rest: body,
            }),
        };
        let mut parts = parts;
        parts.headers.insert(&X_REQUEST_ID, id.clone());
        self.route(Request::from_parts(parts, body), id)
    }

    /// The full router, its answer passed through [`json_errors::ensure`]
    /// and given the request's `id`.
    fn route(&mut self, req: Request, id: HeaderValue) -> <Self as Service<Request>>::Future {
        let routed = self.router.call(req);
        LaneFuture::Pending(Box::pin(async move {
            let response = match routed.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let mut response = json_errors::ensure(response).await;
            response.headers_mut().insert(&X_REQUEST_ID, id);
            Ok(response)
        }))
    }
}

/// The span of a request this lane answered, at DEBUG: nothing is logged
/// inside it (rejections are counted, not logged), so at the default level
/// it is never built and costs one check of the callsite's interest; its
/// fields are formatted only where it is enabled (debug logs, or an OTLP
/// exporter with a filter that lets it through).
fn answered_span(method: &Method, id: &HeaderValue, response: &Response) {
    let span = tracing::debug_span!(
        target: "flashsale::request",
        "request",
        request_id = request_id::as_text(id),
        method = %method,
        route = "/api/v1/sales/{sale_id}/purchase",
        status = response.status().as_u16(),
        fast_lane = true,
    );
    drop(span);
}

/// The bearer token of an `Authorization` value, read exactly as the full
/// path's extractor reads it (`to_str`, then [`bearer`]). A header value
/// holds no control byte but tab, so `to_str` succeeds exactly when every
/// byte is ASCII, which is checked a word at a time rather than byte by
/// byte.
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    if !bytes.is_ascii() {
        return None;
    }
    std::str::from_utf8(bytes).ok().and_then(bearer)
}

/// `Some(sale_id)` for `/api/v1/sales/{decimal id}/purchase`.
fn purchase_path(path: &str) -> Option<u64> {
    let id = path
        .strip_prefix("/api/v1/sales/")?
        .strip_suffix("/purchase")?;
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// How far a body could be read without waiting.
enum BodyState {
    /// All of it.
    Whole,
    /// Not all of it: more is on its way, or it is longer than the cap.
    Partial,
    /// Reading it failed (the client went away, say).
    Failed(axum::Error),
}

/// Appends to `read` every data frame of `body` that has already arrived,
/// stopping past `cap` bytes. Never waits: the caller polls once.
fn read_arrived(body: &mut Body, read: &mut Bytes, cap: usize, cx: &mut Context<'_>) -> BodyState {
    loop {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers are dropped: the full path never reads them either.
                if let Ok(data) = frame.into_data() {
                    if read.is_empty() {
                        *read = data;
                    } else {
                        let mut joined = Vec::with_capacity(read.len() + data.len());
                        joined.extend_from_slice(read);
                        joined.extend_from_slice(&data);
                        *read = joined.into();
                    }
                    if read.len() > cap {
                        return BodyState::Partial;
                    }
                    // A body of known length is over once it is all here;
                    // asking for its end would cost another round.
                    if body.is_end_stream() {
                        return BodyState::Whole;
                    }
                }
            }
            Poll::Ready(None) => return BodyState::Whole,
            Poll::Ready(Some(Err(e))) => return BodyState::Failed(e),
            Poll::Pending => return BodyState::Partial,
        }
    }
}

/// The quantity of a body shaped exactly `{"quantity": n}` (JSON
/// whitespace allowed between tokens) with `n` a valid quantity written
/// as a plain integer; `None` for anything else, which [`body_quantity`]
/// then reads. Where this says `Some(q)`, `body_quantity` says `Ok(q)`.
fn quick_quantity(body: &[u8]) -> Option<u32> {
    // What a buy button sends, checked first.
    if body == br#"{"quantity":1}"# {
        return Some(1);
    }
    fn ws(b: &[u8]) -> &[u8] {
        let n = b
            .iter()
            .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
        &b[n..]
    }
    let rest = ws(body).strip_prefix(b"{")?;
    let rest = ws(rest).strip_prefix(b"\"quantity\"")?;
    let rest = ws(rest).strip_prefix(b":")?;
    let rest = ws(rest);
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    // No leading zero (JSON forbids it), at most 10 digits (> 10^9 anyway).
    if digits == 0 || digits > 10 || rest[0] == b'0' {
        return None;
    }
    let (number, rest) = rest.split_at(digits);
    if !ws(ws(rest).strip_prefix(b"}")?).is_empty() {
        return None;
    }
    let q = number
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    (1..=MAX_QUANTITY).contains(&q).then_some(q as u32)
}

/// A body whose first bytes were already read: they come first, then
/// whatever was not read yet (or the error reading it met).
struct Resumed {
    read: Option<Bytes>,
    failed: Option<axum::Error>,
    rest: Body,
}

impl http_body::Body for Resumed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(read) = self.read.take().filter(|r| !r.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.as_ref().is_none_or(Bytes::is_empty)
            && self.failed.is_none()
            && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read = self.read.as_ref().map_or(0, |r| r.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

/// A purchase whose body the first poll reads (see [`FastLane::read_body`]).
pub struct BodyRead {
    lane: FastLane,
    req: Request,
    pending: Pending,
    id: HeaderValue,
}

/// The future of a [`FastLane`] answer: ready at once, or answered from
/// the body on the first poll (both without an allocation), or on its way
/// through the router.
pub enum LaneFuture {
    /// Answered from memory.
    Ready(Option<Response>),
    /// A purchase with a body, not read yet.
    Body(Option<BodyRead>),
    /// Routed.
    Pending(Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>),
}

impl Future for LaneFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this {
                Self::Ready(response) => match response.take() {
                    Some(response) => return Poll::Ready(Ok(response)),
                    None => panic!("LaneFuture polled after it answered"),
                },
                Self::Body(read) => {
                    let Some(BodyRead {
                        lane,
                        req,
                        pending,
                        id,
                    }) = read.take()
                    else {
                        panic!("LaneFuture polled after it answered")
                    };
                    *this = lane.read_body(req, pending, id, cx);
                }
                Self::Pending(future) => return future.as_mut().poll(cx),
            }
        }
    }
}

impl Service<Request<Body>> for FastLane {
    type Response = Response;
    type Error = Infallible;
    type Future = LaneFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <Router as Service<Request>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // Every answer carries the request's id, this lane's included; the
        // router's requests carry it too, for their span and handlers.
        let id = request_id::take_or_make(req.headers_mut());
        match self.triage(&req) {
            Triage::Answer(mut response) => {
                answered_span(req.method(), &id, &response);
                response.headers_mut().insert(&X_REQUEST_ID, id);
                LaneFuture::Ready(Some(response))
            }
            Triage::Route => {
                req.headers_mut().insert(&X_REQUEST_ID, id.clone());
                self.route(req, id)
            }
            Triage::ReadBody(pending) => LaneFuture::Body(Some(BodyRead {
                lane: self.clone(),
                req,
                pending,
                id,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn recognises_only_the_purchase_path() {
        assert_eq!(purchase_path("/api/v1/sales/42/purchase"), Some(42));
        assert_eq!(purchase_path("/api/v1/sales//purchase"), None);
        assert_eq!(purchase_path("/api/v1/sales/4x2/purchase"), None);
        assert_eq!(purchase_path("/api/v1/sales/42/purchase/"), None);
        assert_eq!(purchase_path("/api/v1/sales/42"), None);
        assert_eq!(
            purchase_path("/api/v1/sales/99999999999999999999999/purchase"),
            None
        );
    }

    #[test]
    fn bearer_token_reads_as_to_str_then_bearer() {
        for bytes in [
            &b"Bearer abc"[..],
            b"bearer  abc ",
            b"Bearer \tabc",
            b"Basic abc",
            b"Bearer ",
            b"Bearer \xc3\xa9",
            b"Bearer abc\xff",
            b"",
        ] {
            let v = HeaderValue::from_bytes(bytes).unwrap();
            assert_eq!(bearer_token(&v), v.to_str().ok().and_then(bearer), "{v:?}");
        }
    }

    proptest! {
        #[test]
        fn bearer_token_agrees_with_to_str(bytes in prop::collection::vec(
            prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..40)
        ) {
            let mut value = b"Bearer ".to_vec();
            value.extend(bytes);
            let v = HeaderValue::from_bytes(&value).unwrap();
            prop_assert_eq!(bearer_token(&v), v.to_str().ok().and_then(bearer));
        }
    }

    #[test]
    fn quick_quantity_reads_the_plain_shape() {
        assert_eq!(quick_quantity(br#"{"quantity":1}"#), Some(1));
        assert_eq!(quick_quantity(b" {\n\"quantity\" :\t25 }\r\n"), Some(25));
        assert_eq!(
            quick_quantity(br#"{"quantity":1000000000}"#),
            Some(1_000_000_000)
        );
        for other in [
            &br#"{"quantity":0}"#[..],
            br#"{"quantity":01}"#,
            br#"{"quantity":1000000001}"#,
            br#"{"quantity":1.0}"#,
            br#"{"quantity":1e0}"#,
            br#"{"quantity":-1}"#,
            br#"{"quantity":"1"}"#,
            br#"{"quantity":1,}"#,
            br#"{"quantity":1}}"#,
            br#"{"quantity":1,"quantity":2}"#,
            br#"{"quantity":1} x"#,
            b"\x0c{\"quantity\":1}",
            b"{}",
            b"",
        ] {
            assert_eq!(
                quick_quantity(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    /// Bytes near the plain shape: its pieces, whitespace and noise.
    fn near_shape() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"{".to_vec()),
            Just(b"}".to_vec()),
            Just(b"\"quantity\"".to_vec()),
            Just(b":".to_vec()),
            Just(b",".to_vec()),
            Just(b"-".to_vec()),
            Just(b".".to_vec()),
            Just(b"e".to_vec()),
            prop::sample::select(vec![" ", "\t", "\n", "\r", "\x0c", "\u{a0}"])
                .prop_map(|s| s.as_bytes().to_vec()),
            "[0-9]{1,12}".prop_map(String::into_bytes),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        let plain = (
            "[ \t\n\r]{0,2}",
            "[ \t\n\r]{0,2}",
            "[0-9]{1,11}",
            "[ \t\n\r]{0,2}",
        )
            .prop_map(|(a, b, n, c)| format!("{a}{{{b}\"quantity\":{n}{c}}}{a}").into_bytes());
        prop_oneof![
            prop::collection::vec(piece, 0..12).prop_map(|p| p.concat()),
            plain,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn quick_quantity_agrees_with_the_handler(body in near_shape()) {
            if let Some(q) = quick_quantity(&body) {
                prop_assert_eq!(body_quantity(&body).ok(), Some(q));
            }
        }
    }
}
