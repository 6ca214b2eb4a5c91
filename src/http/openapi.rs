//! The OpenAPI 3.1 document of the whole API, generated from the code and
//! served at `GET /api/v1/openapi.json` (no auth).
//!
//! Each handler carries its own `#[utoipa::path(...)]` (method, path,
//! parameters, body, every status it answers, its security); the bodies it
//! answers derive `utoipa::ToSchema` where they are typed (`Sale`, `Order`,
//! `Intent`) and are described here where the handler builds them with
//! `json!` (stats, lists, probes), strictly (`additionalProperties: false`)
//! so a field added to the handler but not here fails schemathesis
//! (`scripts/schemathesis.sh`) and `tests/api/openapi.rs`. The error code
//! and the stats' `rejected` keys are derived from [`Rejection::ALL`], so a
//! new rejection appears in the document by itself.
//!
//! Keeping it in step: a route is declared once with [`routes!`](super::routes)
//! (which builds the router from the same lines), its handler is added to
//! [`ApiDoc`]'s `paths(...)`, and the tests below fail when the router and
//! the document disagree on any `(method, path)`.

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use crate::domain::{OrderStatus, Rejection, SaleStatus};

super::routes! {
    "/api/v1/openapi.json" => get(openapi_json),
}

/// The document: every operation of every route module.
#[derive(OpenApi)]
#[openapi(
    info(title = "Flashsale", description = "The flash-sale HTTP API (shared/CONTRACT.md)."),
    paths(
        super::sales::create_sale,
        super::sales::list_sales,
        super::sales::get_sale,
        super::sales::purchase,
        super::sales::open_sale,
        super::sales::close_sale,
        super::sales::stats,
        super::sales::intents,
        super::sales::events,
        super::antibot::ticket,
        super::antibot::challenge,
        super::room::join,
        super::room::poll,
        super::room::events,
        super::orders::order_events,
        super::orders::get_order,
        super::orders::pay_order,
        super::orders::cancel_order,
        super::webhooks::list_webhooks,
        super::pages::index,
        super::pages::sale_page,
        super::pages::admin_page,
        super::pages::asset,
        super::pages::server_time,
        super::pages::demo_token,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        openapi_json,
    ),
    components(schemas(ErrorCode, RejectedCounts, crate::engine::buyer_stream::OrderEvent)),
    modifiers(&Security),
    tags(
        (name = "sales", description = "Sales: create, read, buy, counters, missed buyers, live events"),
        (name = "orders", description = "A buyer's own orders: read, pay, cancel"),
        (name = "webhooks", description = "The webhook delivery log (docs/WEBHOOKS.md)"),
        (name = "pages", description = "The buyer's sale page, the admin dashboard and their assets"),
        (name = "ops", description = "Probes and metrics"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The two bearer schemes: `buyer` (an HS256/RS256/ES256 JWT whose `sub`
/// is the user) and `admin` (the static admin token).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |format: Option<&str>, description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format(format.unwrap_or("opaque"))
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "buyer",
            bearer(
                Some("JWT"),
                "A buyer JWT: `sub` (the user id) and `exp` required",
            ),
        );
        components.add_security_scheme(
            "admin",
            bearer(
                None,
                "The admin token (`FLASHSALE_ADMIN_TOKEN`); a buyer token gets `403`",
            ),
        );
    }
}

/// The rendered document, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// The document as served.
pub fn document_json() -> &'static str {
    &DOCUMENT
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", responses(
    (status = 200, description = "This OpenAPI 3.1 document", body = Object),
))]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}

/// Every `code` an error body may carry: the HTTP layer's own
/// (`ApiError`, and `json_errors` for answers built outside it) and one per
/// [`Rejection`].
const HTTP_CODES: [&str; 8] = [
    "unauthorized",
    "forbidden",
    "not_found",
    "invalid_request",
    "rate_limited",
    "overloaded",
    "unavailable",
    "internal_error",
];

fn error_codes() -> Vec<&'static str> {
    let mut codes: Vec<&str> = HTTP_CODES.to_vec();
    for r in Rejection::ALL {
        if !codes.contains(&r.code()) {
            codes.push(r.code());
        }
    }
    codes
}

/// The machine-readable code of an error (schema only).
pub struct ErrorCode;

impl PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(error_codes()))
            .description(Some("The machine-readable error code"))
            .into()
    }
}

impl ToSchema for ErrorCode {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

/// The stats' refusals by code: one key per [`Rejection`] (schema only).
#[derive(Serialize)]
pub struct RejectedCounts;

impl PartialSchema for RejectedCounts {
    fn schema() -> RefOr<Schema> {
        let mut object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Purchases refused, by rejection code"))
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
        for r in Rejection::ALL {
            object = object
                .property(
                    r.code(),
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .required(r.code());
        }
        object.into()
    }
}

impl ToSchema for RejectedCounts {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RejectedCounts")
    }
}

pub use bodies::*;

/// Bodies the handlers build with `json!` (and request bodies they read as
/// JSON values), described for the document only: none is ever built, hence
/// the `allow`. `Serialize` is derived only so that `deny_unknown_fields`
/// (read by utoipa: `additionalProperties: false`) is accepted.
#[allow(dead_code)]
mod bodies {
    use super::*;

    /// Every non-2xx answer.
    #[derive(ToSchema)]
    #[schema(example = json!({"error": {"code": "sold_out", "message": "sold out"}}))]
    pub struct ErrorBody {
        error: ErrorDetail,
    }

    /// What went wrong.
    #[derive(ToSchema)]
    pub struct ErrorDetail {
        code: ErrorCode,
        /// Human text.
        message: String,
        /// The order's status, where it forbids a payment or cancellation.
        order_status: Option<OrderStatus>,
    }

    /// `POST /api/v1/sales`. Unknown fields are ignored.
    #[derive(ToSchema)]
    pub struct SaleRequest {
        /// What is on sale (1..200 characters once trimmed).
        #[schema(min_length = 1, max_length = 200)]
        item: String,
        #[schema(minimum = 1, maximum = 1_000_000_000)]
        stock: u64,
        /// Most units one user may hold (1).
        #[schema(minimum = 1, maximum = 4_294_967_295_u64)]
        per_user_limit: Option<u64>,
        #[schema(format = DateTime)]
        starts_at: String,
        /// After `starts_at`.
        #[schema(format = DateTime)]
        ends_at: Option<String>,
        /// Unpaid orders expire after it and their units return.
        #[schema(minimum = 1, maximum = 2_592_000)]
        payment_window_secs: Option<u64>,
        /// The optional admission steps (all off when absent).
        front_door: Option<crate::domain::FrontDoor>,
        /// Split the stock over this many Redis hash tags (1), so one hot
        /// sale spreads over several Redis Cluster shards; the embedded
        /// stock ignores it.
        #[schema(minimum = 1, maximum = 16)]
        buckets: Option<u64>,
    }

    /// A purchase ticket.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TicketBody {
        /// Send it as `X-Flashsale-Ticket` with the purchase.
        ticket: String,
        #[schema(format = DateTime)]
        expires_at: String,
    }

    /// A proof-of-work challenge.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ChallengeBody {
        challenge: String,
        /// Leading zero bits SHA-256(`challenge:solution`) must have.
        #[schema(minimum = 1, maximum = 28)]
        bits: u8,
        #[schema(format = DateTime)]
        expires_at: String,
    }

    /// Where a buyer stands in a sale's waiting room; which fields are
    /// present depends on `state`.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Standing {
        #[schema(value_type = String)]
        sale_id: String,
        /// `drawing`, `waiting`, `admitted`, `sold_out`, `ended`, `absent`.
        #[schema(pattern = "^(drawing|waiting|admitted|sold_out|ended|absent)$")]
        state: String,
        /// The buyer's number in line (`waiting`).
        place: Option<u64>,
        /// 1 = next to be let in (`waiting`).
        position: Option<u64>,
        /// Buyers in the room (`drawing`, `waiting`).
        waiting: Option<u64>,
        /// Estimated wait, ms (`waiting`).
        estimated_wait_ms: Option<u64>,
        /// The admission pass: send it as `X-Flashsale-Pass` (`admitted`).
        pass: Option<String>,
        /// When the pass expires (`admitted`).
        #[schema(format = DateTime)]
        expires_at: Option<String>,
    }

    /// `POST /api/v1/sales/{sale_id}/purchase`.
    #[derive(ToSchema)]
    pub struct PurchaseRequest {
        /// Units to buy (1).
        #[schema(minimum = 1, maximum = 1_000_000_000)]
        quantity: Option<u64>,
    }

    /// The sale id of a `/api/v1/sales/{sale_id}/…` route.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct SaleId {
        /// The sale's id (decimal).
        sale_id: String,
    }

    /// `GET /api/v1/sales`.
    #[derive(ToSchema, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct SaleList {
        items: Vec<super::super::sales::SaleBody>,
    }

    /// `GET /api/v1/sales/{sale_id}/intents`: a page of missed buyers.
    #[derive(ToSchema, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct IntentPage {
        items: Vec<super::super::sales::IntentBody>,
        /// Pass as `cursor` for the next page; `null` on the last one.
        #[schema(required = true)]
        next_cursor: Option<String>,
    }

    /// `GET /api/v1/sales/{sale_id}/stats`.
    #[derive(ToSchema, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct SaleStats {
        #[schema(value_type = String)]
        sale_id: u64,
        stock: u64,
        /// Units in accepted orders that are not expired or cancelled.
        sold: u64,
        remaining: u64,
        status: SaleStatus,
        /// Orders already written to the order store.
        orders_persisted: u64,
        attempts: u64,
        accepted: u64,
        /// Users holding units.
        holders: u64,
        /// Missed buyers recorded.
        intents: u64,
        rejected: RejectedCounts,
        replayed: u64,
        paid: u64,
        expired: u64,
        cancelled: u64,
    }

    /// `GET /api/v1/time`.
    #[derive(ToSchema, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct ServerTime {
        /// Epoch milliseconds.
        now_ms: i64,
        #[schema(format = DateTime)]
        now: String,
    }

    /// `POST /api/v1/demo/token`.
    #[derive(ToSchema, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct DemoToken {
        /// A buyer token (HS256) for `user_id`.
        token: String,
        user_id: String,
        #[schema(format = DateTime)]
        expires_at: String,
    }

    /// `GET /healthz`.
    #[derive(ToSchema, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        #[schema(value_type = String, pattern = "^ok$")]
        status: &'static str,
    }

    /// `GET /readyz`: each backend's check, and the circuit breakers.
    #[derive(ToSchema, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct Readiness {
        status: ReadyStatus,
        /// The order store (absent while stopping).
        store: Option<Check>,
        /// The shared stock (distributed mode).
        redis: Option<Check>,
        /// The order queue (distributed mode).
        queue: Option<Check>,
        /// Each networked backend's breaker.
        breakers: Option<std::collections::BTreeMap<String, BreakerState>>,
    }

    /// Overall readiness.
    #[derive(ToSchema, Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum ReadyStatus {
        Ready,
        NotReady,
        Stopping,
    }

    /// One backend's check.
    #[derive(ToSchema, Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Check {
        Ok,
        Unavailable,
    }

    /// A circuit breaker's state.
    #[derive(ToSchema, Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum BreakerState {
        Closed,
        HalfOpen,
        Open,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::http::StatusCode;
    use serde_json::Value;

    use super::*;
    use crate::http::ApiError;

    /// `(METHOD, path)` of every operation in a rendered document.
    pub(crate) fn operations(doc: &Value) -> BTreeSet<(String, String)> {
        const METHODS: [&str; 8] = [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ];
        doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| (m.to_ascii_uppercase(), path.clone()))
            })
            .collect()
    }

    /// The check that keeps the document in step: the router is built from
    /// the same `routes!` lines as `http::all_routes()`, so comparing that list
    /// with the document's operations catches a route without an
    /// operation, an operation without a route, and a method or a path
    /// spelled differently in the two.
    #[test]
    fn openapi_documents_every_route_and_nothing_else() {
        let doc: Value = serde_json::from_str(document_json()).unwrap();
        let routed: BTreeSet<(String, String)> = crate::http::all_routes()
            .map(|(m, p)| (m, p.to_owned()))
            .collect();
        assert_eq!(
            crate::http::all_routes().count(),
            routed.len(),
            "a route declared twice"
        );
        let documented = operations(&doc);
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routes missing from the OpenAPI document (add the handler to ApiDoc's paths and \
             annotate it): {undocumented:?}; documented but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn openapi_document_is_3_1_with_both_security_schemes() {
        let doc: Value = serde_json::from_str(document_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        for scheme in ["buyer", "admin"] {
            assert_eq!(
                doc["components"]["securitySchemes"][scheme]["scheme"],
                "bearer"
            );
        }
        // Every `$ref` resolves.
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").expect(&r);
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling {r}"
            );
        }
    }

    /// The error code enum names every code the HTTP layer answers.
    #[test]
    fn openapi_error_codes_cover_every_answer() {
        let codes = error_codes();
        for r in Rejection::ALL {
            assert!(codes.contains(&r.code()), "{r}");
        }
        let errors = [
            ApiError::Unauthorized(""),
            ApiError::Forbidden(""),
            ApiError::NotFound(""),
            ApiError::invalid(""),
            ApiError::WrongState("paid"),
            ApiError::Overloaded,
            ApiError::NotReady(""),
        ];
        for e in errors {
            assert!(codes.contains(&e.code()), "{}", e.code());
        }
        for status in 400..600 {
            let status = StatusCode::from_u16(status).unwrap();
            let code = super::super::json_errors::code(status);
            assert!(codes.contains(&code), "{code}");
        }
    }
}
