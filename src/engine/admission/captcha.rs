//! The external captcha hook (`captcha: true`): the request's
//! `X-Captcha-Token` is checked by the node's verify service, the
//! reCAPTCHA / hCaptcha / Turnstile `siteverify` convention: a form POST of
//! `secret`, `response` (the token) and `remoteip` (when known), answered
//! with JSON whose `success` must be `true`.
//!
//! The call is made with hyper-util's small HTTP/1 client (plain `http://`:
//! put a local sidecar or proxy in front of an `https://` service) under a
//! short timeout; a missing token, `success: false`, a timeout or any error
//! refuses with `captcha_required`. It is the last check: it is the only
//! one that costs a remote call.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, Uri};

use super::{Attempt, Check, Pass, Refusal};
use crate::auth::Secret;
use crate::domain::Rejection;

/// Default bound on one verify call.
pub const DEFAULT_CAPTCHA_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest captcha token sent on (real ones are at most a few KiB).
pub const MAX_TOKEN_LEN: usize = 4096;
/// Largest verify answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Where and how the node verifies captcha tokens.
#[derive(Debug, Clone)]
pub struct CaptchaSettings {
    /// The verify URL (`http://` only).
    pub verify_url: Uri,
    /// The site secret sent as `secret`.
    pub secret: Secret,
    /// Bound on one verify call.
    pub timeout: Duration,
}

/// The verify service's client.
pub struct CaptchaVerifier {
    client: crate::outbound::HttpClient,
    settings: CaptchaSettings,
}

impl std::fmt::Debug for CaptchaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaptchaVerifier({})", self.settings.verify_url)
    }
}

impl CaptchaVerifier {
    /// A client for `settings`.
    pub fn new(settings: CaptchaSettings) -> Self {
        Self {
            client: crate::outbound::client(settings.timeout),
            settings,
        }
    }

    /// True only when the service answers `{"success": true}` in time.
    pub async fn verify(&self, token: &str, remote_ip: Option<IpAddr>) -> bool {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return false;
        }
        // Built before any await: the serializer is not `Send`.
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("secret", self.settings.secret.expose())
                .append_pair("response", token);
            if let Some(ip) = remote_ip {
                form.append_pair("remoteip", &ip.to_string());
            }
            form.finish()
        };
        let Ok(request) = Request::builder()
            .method(Method::POST)
            .uri(self.settings.verify_url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Body::from(form))
        else {
            return false;
        };
        let call = async {
            let answer = self.client.request(request).await.ok()?;
            if !answer.status().is_success() {
                return None;
            }
            let bytes = axum::body::to_bytes(Body::new(answer.into_body()), MAX_ANSWER_BYTES)
                .await
                .ok()?;
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()?
                .get("success")?
                .as_bool()
        };
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Some(success)) => success,
            Ok(None) => {
                tracing::debug!("captcha verify call failed");
                false
            }
            Err(_) => {
                tracing::debug!("captcha verify call timed out");
                false
            }
        }
    }
}

/// Refuses a purchase of a `captcha: true` sale unless the verify service
/// accepts the request's token.
pub struct CaptchaCheck {
    verifier: Option<Arc<CaptchaVerifier>>,
}

impl CaptchaCheck {
    /// The check over the node's verifier (`None`: no verify URL set; a
    /// captcha sale is then always refused here).
    pub fn new(verifier: Option<Arc<CaptchaVerifier>>) -> Self {
        Self { verifier }
    }
}

impl Check for CaptchaCheck {
    fn name(&self) -> &'static str {
        "captcha"
    }

    fn check(&self, a: &Attempt<'_>) -> Result<Pass, Refusal> {
        if !a.sale.sale.front_door.captcha {
            return Ok(Pass::Through);
        }
        let token = a
            .proof
            .captcha
            .as_deref()
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN)
            .ok_or(Rejection::CaptchaRequired)?;
        // A sale created on a node with a verify URL, bought on one without.
        let verifier = self.verifier.clone().ok_or(Rejection::CaptchaRequired)?;
        let token = token.to_owned();
        let ip = a.proof.client_ip;
        Ok(Pass::Verify(Box::pin(async move {
            if verifier.verify(&token, ip).await {
                Ok(())
            } else {
                Err(Rejection::CaptchaRequired.into())
            }
        })))
    }
}
