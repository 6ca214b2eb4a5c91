//! Outbound HTTP to the shop's own services — the captcha verify service
//! and the webhook receiver: the URL they are configured with and the
//! pooled client that calls them.
//!
//! Plain `http://` only: both are expected on a local address or behind a
//! local proxy or sidecar that speaks TLS to the world (the server's rustls
//! is for incoming connections).

use std::time::Duration;

use axum::body::Body;
use axum::http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A pooled client for one of the shop's services.
pub type HttpClient = Client<HttpConnector, Body>;

/// Reads a configured service URL: an absolute `http://` URL.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_http_url(raw: &str) -> Result<Uri, String> {
    let uri: Uri = raw.parse().map_err(|e| format!("not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(uri),
        (Some("https"), _) => {
            Err("https is not supported: point it at a local proxy or sidecar over http://".into())
        }
        _ => Err("must be an absolute http:// URL".into()),
    }
}

/// A client whose connections are set up within `connect_timeout`, kept
/// idle for 30 s, without Nagle's delay.
pub fn client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_are_taken() {
        assert!(parse_http_url("http://127.0.0.1:9/siteverify").is_ok());
        for bad in [
            "https://shop.example/hook",
            "/hook",
            "ftp://x/y",
            "",
            "http://",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
    }
}
