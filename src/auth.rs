//! Buyer and admin authentication.
//!
//! Buyers present an HS256 JWT (`sub` = user id, `exp` required) minted by the
//! shop's own login; `flashsale token` mints one for testing. Admins present a
//! static bearer token compared in constant time. Only HS256 is accepted, so
//! `alg: none` and algorithm-confusion tokens are refused by construction.

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// A secret string that never prints itself in logs or `Debug` output.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// A fresh random secret of 32 alphanumeric characters.
    pub fn generate() -> Self {
        use rand::distr::{Alphanumeric, SampleString};
        Self(Alphanumeric.sample_string(&mut rand::rng(), 32))
    }

    /// The secret itself; call only where it is really needed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Claims of a buyer token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The buyer's user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Longest user id accepted in a token (bounds memory per buyer).
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest buyer token looked at.
pub const MAX_TOKEN_LEN: usize = 2048;

/// Why a bearer credential was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("missing bearer token")]
    Missing,
    /// Bad signature, expired, wrong algorithm, malformed or missing claims.
    #[error("invalid token")]
    Invalid,
}

/// Verified tokens remembered, so a buyer hammering the buy button costs one
/// signature check, not one per request.
const VERIFIED_CACHE: usize = 65_536;

/// Verifies buyer tokens and the admin token.
pub struct Authenticator {
    decoding: DecodingKey,
    validation: Validation,
    admin_token: Secret,
    // Keyed by the whole token string: a hit means these exact bytes were
    // verified before, so nothing an attacker can alter goes unchecked.
    verified: quick_cache::sync::Cache<String, (Arc<str>, u64)>,
}

impl Authenticator {
    /// Builds an authenticator from the JWT secret and the admin token.
    pub fn new(jwt_secret: &Secret, admin_token: Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Self {
            decoding: DecodingKey::from_secret(jwt_secret.expose().as_bytes()),
            validation,
            admin_token,
            verified: quick_cache::sync::Cache::new(VERIFIED_CACHE),
        }
    }

    /// Verifies a buyer JWT and returns its user id.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] for anything but a valid, unexpired HS256 token
    /// with a non-empty `sub` of at most [`MAX_USER_ID_LEN`] bytes.
    pub fn verify_buyer(&self, token: &str) -> Result<Arc<str>, AuthError> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        if let Some((sub, exp)) = self.verified.get(token) {
            if exp + self.validation.leeway > now {
                return Ok(sub);
            }
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| AuthError::Invalid)?;
        let Claims { sub, exp } = data.claims;
        if sub.is_empty() || sub.len() > MAX_USER_ID_LEN {
            return Err(AuthError::Invalid);
        }
        let sub: Arc<str> = sub.into();
        self.verified.insert(token.to_owned(), (sub.clone(), exp));
        Ok(sub)
    }

    /// True when `token` is the admin token (constant-time comparison).
    pub fn is_admin(&self, token: &str) -> bool {
        constant_time_eq(token.as_bytes(), self.admin_token.expose().as_bytes())
    }
}

/// Compares two byte strings without an early exit on the first difference,
/// so response timing does not reveal how much of the admin token matched.
/// (Ten lines do not justify another dependency.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Mints a buyer token for `user` valid for `ttl_secs` seconds.
///
/// # Errors
/// Only if signing fails, which HS256 with a byte key does not do in practice.
pub fn mint_token(secret: &Secret, user: &str, ttl_secs: u64) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let claims = Claims {
        sub: user.to_owned(),
        exp: now + ttl_secs,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )?)
}

/// Extracts the token from an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(&Secret::new("s3cret"), Secret::new("admin"))
    }

    #[test]
    fn valid_token_round_trips() {
        let token = mint_token(&Secret::new("s3cret"), "alice", 60).unwrap();
        let auth = auth();
        assert_eq!(&*auth.verify_buyer(&token).unwrap(), "alice");
        // Second time from the cache; a tampered copy is still refused.
        assert_eq!(&*auth.verify_buyer(&token).unwrap(), "alice");
        let mut tampered = token.clone();
        tampered.pop();
        assert_eq!(auth.verify_buyer(&tampered), Err(AuthError::Invalid));
    }

    #[test]
    fn wrong_secret_is_refused() {
        let token = mint_token(&Secret::new("other"), "alice", 60).unwrap();
        assert_eq!(auth().verify_buyer(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn expired_token_is_refused() {
        let claims = Claims {
            sub: "alice".into(),
            exp: 1_000,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(auth().verify_buyer(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let encode = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = encode(br#"{"sub":"alice","exp":99999999999}"#);
        let token = format!("{header}.{body}.");
        assert_eq!(auth().verify_buyer(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn admin_token_compare() {
        assert!(auth().is_admin("admin"));
        assert!(!auth().is_admin("admim"));
        assert!(!auth().is_admin(""));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
