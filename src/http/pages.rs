//! The pages people use: the buyer's sale page `/s/{sale_id}`, the admin
//! dashboard `/admin`, their assets under `/assets/`, and the two API calls
//! only they need — the sale clock (`GET /api/v1/time`) and, in demo mode,
//! a buyer token for trying a sale locally (`POST /api/v1/demo/token`).
//!
//! Everything is compiled into the binary from `web/` (`include_bytes!`), so
//! `flashsale serve` on a machine without Node shows every page. uPlot, the
//! one third-party script, is a committed copy of the file npm installs from
//! `web/package-lock.json`; `scripts/web.sh check` fails when the two differ.
//!
//! Caching, as the classic seckill designs put the page on a CDN:
//! - the shells are the same bytes for every sale and every buyer (the sale
//!   id is read from the URL by the script; everything dynamic comes from
//!   the API), so a CDN or the browser may keep them: `ETag` +
//!   `If-None-Match` → `304`, `Cache-Control: public, max-age=60` for the
//!   sale page, `no-cache` for the dashboard;
//! - assets are named by a fingerprint of their bytes
//!   (`/assets/sale.1a2b3c4d5e6f.js`), computed once at start, and served
//!   `immutable` for a year; a request for another fingerprint of a known
//!   asset (a shell cached across a deploy) gets today's bytes, uncached.
//!
//! The fingerprinting is a dozen lines over `sha2` rather than a crate such
//! as `rust-embed`: six files, known at compile time, need no directory
//! walker, and the shells' links are rewritten from the same table.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::extract::Path;
use super::openapi::{DemoToken, ErrorBody, ServerTime};
use super::{parse_id, ApiError, AppState};
use crate::domain::rfc3339;

super::routes! {
    "/" => get(index),
    "/s/{sale_id}" => get(sale_page),
    "/admin" => get(admin_page),
    "/assets/{file}" => get(asset),
    "/api/v1/time" => get(server_time),
    "/api/v1/demo/token" => post(demo_token),
}

/// One file of `web/`, as compiled in.
struct Source {
    /// Its name under `/assets/`, before fingerprinting.
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// The assets, in the order the shells link them.
const SOURCES: [Source; 7] = [
    Source {
        name: "common.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/src/common.css"),
    },
    Source {
        name: "common.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/src/common.js"),
    },
    Source {
        name: "sale.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/src/sale.js"),
    },
    Source {
        name: "admin.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/src/admin.js"),
    },
    Source {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/vendor/uPlot.iife.min.js"),
    },
    Source {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/vendor/uPlot.min.css"),
    },
    Source {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../../web/src/favicon.svg"),
    },
];

/// An asset with its fingerprinted name.
struct Asset {
    source: &'static Source,
    /// `stem.<fingerprint>.ext`.
    fingerprinted: String,
    etag: HeaderValue,
}

/// A page shell with its links rewritten to the fingerprinted assets.
struct Shell {
    html: String,
    etag: HeaderValue,
}

/// The first 12 hex digits of the SHA-256 of `bytes`.
fn fingerprint(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn etag_of(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", fingerprint(bytes))).expect("hex is a header value")
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|source| {
            let (stem, ext) = source
                .name
                .rsplit_once('.')
                .expect("asset names have a dot");
            Asset {
                source,
                fingerprinted: format!("{stem}.{}.{ext}", fingerprint(source.bytes)),
                etag: etag_of(source.bytes),
            }
        })
        .collect()
});

/// `html` with every `/assets/<name>` link pointing at its fingerprint.
fn shell(html: &str) -> Shell {
    let html = ASSETS.iter().fold(html.to_owned(), |html, a| {
        html.replace(
            &format!("\"/assets/{}\"", a.source.name),
            &format!("\"/assets/{}\"", a.fingerprinted),
        )
    });
    Shell {
        etag: etag_of(html.as_bytes()),
        html,
    }
}

static SALE_SHELL: LazyLock<Shell> =
    LazyLock::new(|| shell(include_str!("../../web/src/sale.html")));
static ADMIN_SHELL: LazyLock<Shell> =
    LazyLock::new(|| shell(include_str!("../../web/src/admin.html")));

/// The policy of every page: scripts, styles and connections from this
/// origin only; no framing (the buy button cannot be clickjacked).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'self'";

/// True when the request's `If-None-Match` names `etag` (or `*`).
fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t.as_bytes() == etag.as_bytes())
}

fn page(headers: &HeaderMap, shell: &'static Shell, cache: &'static str) -> Response {
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (header::ETAG, shell.etag.clone()),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if not_modified(headers, &shell.etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        shell.html.as_str(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/", tag = "pages", responses(
    (status = 303, description = "To the admin dashboard (`/admin`)"),
))]
async fn index() -> Redirect {
    Redirect::to("/admin")
}

#[utoipa::path(get, path = "/s/{sale_id}", tag = "pages",
    params(("sale_id" = String, Path, description = "The sale's id (decimal)")),
    responses(
        (status = 200, description = "The sale page: the same static shell for every sale \
            (the script reads the id from the URL); cacheable", body = String,
         content_type = "text/html", headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 404, description = "`not_found`: not a sale id", body = ErrorBody),
    ))]
async fn sale_page(headers: HeaderMap, Path(sale_id): Path<String>) -> Result<Response, ApiError> {
    // Only the id's shape: a lookup would make the shell depend on the
    // store, and the page says "no such sale" itself.
    parse_id(&sale_id)?;
    Ok(page(&headers, &SALE_SHELL, "public, max-age=60"))
}

#[utoipa::path(get, path = "/admin", tag = "pages", responses(
    (status = 200, description = "The admin dashboard (it asks for the admin token)", body = String,
     content_type = "text/html", headers(("ETag" = String))),
    (status = 304, description = "Not modified (`If-None-Match`)"),
))]
async fn admin_page(headers: HeaderMap) -> Response {
    page(&headers, &ADMIN_SHELL, "no-cache")
}

#[utoipa::path(get, path = "/assets/{file}", tag = "pages",
    params(("file" = String, Path, description = "A fingerprinted asset name, as the pages link it")),
    responses(
        (status = 200, description = "The asset; immutable for a year when the fingerprint is \
            today's", content(
                (String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml")),
         headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 400, description = "`invalid_request`: undecodable path", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
async fn asset(headers: HeaderMap, Path(file): Path<String>) -> Result<Response, ApiError> {
    let (asset, current) = find_asset(&file).ok_or(ApiError::NotFound("no such asset"))?;
    let cache = if current {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (header::ETAG, asset.etag.clone()),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if not_modified(&headers, &asset.etag) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    Ok((
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.source.content_type),
        )],
        asset.source.bytes,
    )
        .into_response())
}

/// The asset `file` names, and whether it names today's fingerprint:
/// `stem.<any fingerprint>.ext` or the bare `stem.ext` find it.
fn find_asset(file: &str) -> Option<(&'static Asset, bool)> {
    if let Some(a) = ASSETS.iter().find(|a| a.fingerprinted == file) {
        return Some((a, true));
    }
    let (rest, ext) = file.rsplit_once('.')?;
    let stem = rest.rsplit_once('.').map_or(rest, |(stem, _)| stem);
    ASSETS
        .iter()
        .find(|a| a.source.name == format!("{stem}.{ext}"))
        .map(|a| (a, false))
}

#[utoipa::path(get, path = "/api/v1/time", tag = "sales", responses(
    (status = 200, description = "Now on the clock that opens and closes sales (the shared \
        stock's in the distributed mode): pages count down by it, not by the device's clock",
     body = ServerTime, headers(("Cache-Control" = String))),
    (status = 503, description = "`overloaded`", body = ErrorBody),
))]
async fn server_time(State(state): State<AppState>) -> Response {
    let now = state.engine.clock().now_ms();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "now_ms": now, "now": rfc3339(now) })),
    )
        .into_response()
}

/// Lifetime of a demo buyer token.
const DEMO_TOKEN_TTL_SECS: u64 = 3_600;

#[utoipa::path(post, path = "/api/v1/demo/token", tag = "sales", responses(
    (status = 200, description = "Demo mode (`--demo`): a buyer token for a new demo user",
     body = DemoToken, headers(("Cache-Control" = String))),
    (status = 404, description = "`not_found`: demo mode is off", body = ErrorBody),
    (status = 503, description = "`overloaded`", body = ErrorBody),
))]
async fn demo_token(State(state): State<AppState>) -> Result<Response, ApiError> {
    let secret = state
        .demo
        .as_ref()
        .ok_or(ApiError::NotFound("demo mode is off on this server"))?;
    let user = format!("demo-{:016x}", rand::random::<u64>());
    let token = crate::auth::mint_token(secret, &user, DEMO_TOKEN_TTL_SECS).map_err(|e| {
        tracing::error!(error = %e, "minting a demo token");
        ApiError::NotReady("could not mint a demo token")
    })?;
    let expires = crate::domain::now_ms() + DEMO_TOKEN_TTL_SECS as i64 * 1_000;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "token": token, "user_id": user, "expires_at": rfc3339(expires) })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells_link_only_fingerprinted_assets_that_exist() {
        for shell in [&*SALE_SHELL, &*ADMIN_SHELL] {
            let links: Vec<&str> = shell
                .html
                .split("\"/assets/")
                .skip(1)
                .map(|rest| &rest[..rest.find('"').unwrap()])
                .collect();
            assert!(!links.is_empty());
            for link in links {
                let (_, current) = find_asset(link).unwrap_or_else(|| panic!("{link} missing"));
                assert!(current, "{link} is not today's fingerprint");
            }
        }
    }

    #[test]
    fn any_fingerprint_or_none_finds_an_asset_but_only_today_is_current() {
        let today = &ASSETS[2].fingerprinted;
        assert!(find_asset(today).unwrap().1);
        assert!(!find_asset("sale.000000000000.js").unwrap().1);
        assert!(!find_asset("sale.js").unwrap().1);
        assert!(find_asset("nope.js").is_none());
        assert!(find_asset("noextension").is_none());
    }

    #[test]
    fn if_none_match_lists_and_weak_tags_match() {
        let etag = HeaderValue::from_static("\"abc\"");
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, &etag));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(not_modified(&h, &etag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"abcd\""));
        assert!(!not_modified(&h, &etag));
    }
}
