//! Buyer and admin authentication.
//!
//! Buyers present a JWT (`sub` = user id, `exp` required, `nbf` checked when
//! present) minted by the shop's own login; `flashsale token` mints HS256
//! ones for testing. Admins present a static bearer token compared in
//! constant time.
//!
//! # Which algorithm a token may use
//!
//! Every configured key carries the one algorithm it verifies, fixed when the
//! key is loaded: the `--jwt-secret` is HS256, an RSA public key RS256 (or the
//! RSA algorithm its JWK names), an EC P-256 key ES256 and a P-384 key ES384.
//! A token's `alg` header only *selects* among the configured keys of that
//! algorithm; it never decides how a key is used. So `alg: none` matches no
//! key, an HS256 token is refused unless a secret is configured (however it
//! was made, e.g. with a public key's bytes as the HMAC secret), and an RS256
//! token never meets an EC key. This is what defeats algorithm confusion.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

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
    /// Not before, seconds since the Unix epoch (optional). Typed here so a
    /// non-numeric `nbf` makes the token invalid instead of unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Longest user id accepted in a token (bounds memory per buyer).
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest buyer token looked at.
pub const MAX_TOKEN_LEN: usize = 2048;
/// Clock leeway for `exp` and `nbf` unless configured otherwise, seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Largest clock leeway accepted, seconds (an hour is already generous).
pub const MAX_LEEWAY_SECS: u64 = 3600;
/// Most keys one token is tried against (a token without `kid` meeting a
/// JWKS of many keys of its algorithm): bounds the work a bad token costs.
const MAX_CANDIDATE_KEYS: usize = 8;

/// Why a bearer credential was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("missing bearer token")]
    Missing,
    /// Bad signature, expired, not yet valid, wrong algorithm, malformed or
    /// missing claims.
    #[error("invalid token")]
    Invalid,
}

/// A key that verifies buyer tokens, bound to the one algorithm it accepts.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    /// The HS256 secret as a ready HMAC key: `jsonwebtoken` 9 derives the
    /// HMAC key from the secret on every verification (about a fifth of an
    /// accepted purchase's instructions went to that and to parsing the
    /// header twice), so HS256 signatures are checked here with it.
    hmac: Option<ring::hmac::Key>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// DER of the OID of the P-256 curve (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the OID of the P-384 curve (1.3.132.0.34).
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

impl VerifyingKey {
    /// The HS256 shared secret.
    pub fn hmac(secret: &Secret) -> Self {
        Self {
            kid: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            hmac: Some(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                secret.expose().as_bytes(),
            )),
        }
    }

    /// A PEM public key (`PUBLIC KEY`, `RSA PUBLIC KEY` or a certificate):
    /// RSA verifies RS256, EC P-256 ES256, EC P-384 ES384.
    ///
    /// # Errors
    /// When the PEM is not an RSA or EC (P-256, P-384) public key.
    pub fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self {
                kid: None,
                algorithm: Algorithm::RS256,
                key,
                hmac: None,
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            let der = pem_der(pem).context("reading the PEM body")?;
            let algorithm = if contains(&der, OID_P256) {
                Algorithm::ES256
            } else if contains(&der, OID_P384) {
                Algorithm::ES384
            } else {
                anyhow::bail!("unsupported EC curve (P-256 and P-384 are supported)");
            };
            return Ok(Self {
                kid: None,
                algorithm,
                key,
                hmac: None,
            });
        }
        anyhow::bail!("not an RSA or EC public key in PEM form")
    }

    /// One JWK: RSA (RS256 unless its `alg` names another RSA signature
    /// algorithm) or EC P-256/P-384. `Ok(None)` for a key marked for
    /// encryption (`"use": "enc"`), which is skipped.
    ///
    /// # Errors
    /// For symmetric (`oct`) and unsupported keys, an `alg` that does not
    /// fit the key's type, or bad key material.
    pub fn from_jwk(jwk: &Jwk) -> anyhow::Result<Option<Self>> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Ok(None);
        }
        let named = jwk.common.key_algorithm;
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => match named {
                None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(KeyAlgorithm::RS384) => Algorithm::RS384,
                Some(KeyAlgorithm::RS512) => Algorithm::RS512,
                Some(KeyAlgorithm::PS256) => Algorithm::PS256,
                Some(KeyAlgorithm::PS384) => Algorithm::PS384,
                Some(KeyAlgorithm::PS512) => Algorithm::PS512,
                Some(other) => anyhow::bail!("an RSA key cannot be used for {other}"),
            },
            AlgorithmParameters::EllipticCurve(ec) => match (&ec.curve, named) {
                (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
                (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => Algorithm::ES384,
                (curve, named) => {
                    anyhow::bail!("unsupported EC key: curve {curve:?}, alg {named:?}")
                }
            },
            AlgorithmParameters::OctetKey(_) => {
                anyhow::bail!("symmetric (oct) keys are refused in a JWKS; use --jwt-secret")
            }
            AlgorithmParameters::OctetKeyPair(_) => {
                anyhow::bail!("unsupported key type (OKP); RSA and EC keys are supported")
            }
        };
        let key = DecodingKey::from_jwk(jwk).context("bad key material")?;
        Ok(Some(Self {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
            hmac: None,
        }))
    }

    /// Every signing key of a JWKS document (`{"keys": [...]}`).
    ///
    /// # Errors
    /// When the document does not parse, a key is refused by
    /// [`VerifyingKey::from_jwk`], or no key is left.
    pub fn from_jwks(json: &[u8]) -> anyhow::Result<Vec<Self>> {
        let set: JwkSet = serde_json::from_slice(json).context("not a JWKS document")?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for (i, jwk) in set.keys.iter().enumerate() {
            let name = jwk.common.key_id.as_deref().unwrap_or("(no kid)");
            if let Some(key) =
                Self::from_jwk(jwk).with_context(|| format!("JWKS key #{i} {name}"))?
            {
                keys.push(key);
            }
        }
        anyhow::ensure!(!keys.is_empty(), "the JWKS holds no signing key");
        Ok(keys)
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key id (`kid`), for JWKS keys that have one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether a token whose header names `alg` and `kid` may be checked
    /// with this key: same algorithm, and same `kid` when both have one.
    /// True when `signature` (the token's last segment) signs `message`
    /// (everything before it) with this key: for HS256 exactly what
    /// `jsonwebtoken` checks (the base64url text of the HMAC, compared in
    /// constant time), with the key made once; other algorithms by
    /// `jsonwebtoken` itself.
    fn signed(&self, message: &str, signature: &str) -> bool {
        match &self.hmac {
            Some(key) => {
                let tag = ring::hmac::sign(key, message.as_bytes());
                let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag);
                expected.as_bytes().ct_eq(signature.as_bytes()).into()
            }
            None => jsonwebtoken::crypto::verify(
                signature,
                message.as_bytes(),
                &self.key,
                self.algorithm,
            )
            .unwrap_or(false),
        }
    }

    fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.algorithm == alg
            && match (self.kid.as_deref(), kid) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }
}

/// Reads a PEM public key file (`--jwt-public-key`).
///
/// # Errors
/// When the file cannot be read or holds no supported public key.
pub fn load_public_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    VerifyingKey::from_pem(&pem).with_context(|| format!("loading {}", path.display()))
}

/// Reads a JWKS file (`--jwt-jwks`).
///
/// # Errors
/// When the file cannot be read or is refused by [`VerifyingKey::from_jwks`].
pub fn load_jwks(path: &Path) -> anyhow::Result<Vec<VerifyingKey>> {
    let json = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    VerifyingKey::from_jwks(&json).with_context(|| format!("loading {}", path.display()))
}

/// The DER body of the first PEM block in `pem`.
fn pem_der(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let text = std::str::from_utf8(pem)?;
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Verified tokens remembered, so a buyer hammering the buy button costs one
/// signature check, not one per request.
const VERIFIED_CACHE: usize = 65_536;

/// Verifies buyer tokens and the admin token.
pub struct Authenticator {
    /// The keys, each bound to its algorithm.
    keys: Vec<VerifyingKey>,
    /// The claims' rules (`exp` and `sub` required, `exp` and `nbf` within
    /// the leeway, no `aud`), applied by `jsonwebtoken` with its signature
    /// check off: the signature is checked by the key the header picks
    /// ([`VerifyingKey::signed`]).
    claims: Validation,
    leeway: u64,
    /// SHA-256 of the admin token: comparing digests takes the same time
    /// whatever the candidate's length.
    admin_digest: [u8; 32],
    // Keyed by the whole token string: a hit means these exact bytes were
    // verified before, so nothing an attacker can alter goes unchecked.
    verified: quick_cache::sync::Cache<String, (Arc<str>, u64)>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.iter().collect::<Vec<_>>())
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator of HS256 tokens made with `jwt_secret` (and the
    /// default leeway) and of the admin token.
    pub fn new(jwt_secret: &Secret, admin_token: Secret) -> Self {
        Self::build(
            vec![VerifyingKey::hmac(jwt_secret)],
            DEFAULT_LEEWAY_SECS,
            &admin_token,
        )
    }

    /// An authenticator of tokens signed by any of `keys` (each with its
    /// own algorithm), `leeway_secs` of clock leeway on `exp` and `nbf`.
    ///
    /// # Errors
    /// When `keys` is empty (no buyer could ever sign in) or the leeway is
    /// above [`MAX_LEEWAY_SECS`].
    pub fn with_keys(
        keys: Vec<VerifyingKey>,
        leeway_secs: u64,
        admin_token: Secret,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!keys.is_empty(), "no key to verify buyer tokens with");
        anyhow::ensure!(
            leeway_secs <= MAX_LEEWAY_SECS,
            "a JWT leeway of {leeway_secs} s is more than {MAX_LEEWAY_SECS} s"
        );
        Ok(Self::build(keys, leeway_secs, &admin_token))
    }

    fn build(keys: Vec<VerifyingKey>, leeway: u64, admin_token: &Secret) -> Self {
        let mut claims = Validation::new(Algorithm::HS256);
        claims.set_required_spec_claims(&["exp", "sub"]);
        claims.validate_exp = true;
        claims.validate_nbf = true;
        claims.leeway = leeway;
        claims.insecure_disable_signature_validation();
        Self {
            keys,
            claims,
            leeway,
            admin_digest: Sha256::digest(admin_token.expose().as_bytes()).into(),
            verified: quick_cache::sync::Cache::new(VERIFIED_CACHE),
        }
    }

    /// The algorithms buyer tokens may use, in key order (for the log).
    pub fn algorithms(&self) -> Vec<Algorithm> {
        self.keys.iter().map(|k| k.algorithm).collect()
    }

    /// Verifies a buyer JWT and returns its user id.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] for anything but a token of at most
    /// [`MAX_TOKEN_LEN`] bytes, signed by a configured key with that key's
    /// algorithm, unexpired and not before its `nbf` (both within the
    /// leeway), with a non-empty `sub` of at most [`MAX_USER_ID_LEN`] bytes.
    pub fn verify_buyer(&self, token: &str) -> Result<Arc<str>, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid);
        }
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        if let Some((sub, exp)) = self.verified.get(token) {
            if exp.saturating_add(self.leeway) > now {
                return Ok(sub);
            }
        }
        // `jsonwebtoken` parses the header and the claims and applies the
        // claims' rules (its signature check off); the header then only
        // picks keys, and each checks the signature with its own algorithm.
        // The key passed here is not used for anything.
        let any_key = &self.keys.first().ok_or(AuthError::Invalid)?.key;
        let data = jsonwebtoken::decode::<Claims>(token, any_key, &self.claims)
            .map_err(|_| AuthError::Invalid)?;
        // Split as `jsonwebtoken` splits: the signature is the last segment.
        let (message, signature) = token.rsplit_once('.').ok_or(AuthError::Invalid)?;
        let signed = self
            .keys
            .iter()
            .filter(|key| key.fits(data.header.alg, data.header.kid.as_deref()))
            .take(MAX_CANDIDATE_KEYS)
            .any(|key| key.signed(message, signature));
        if !signed {
            return Err(AuthError::Invalid);
        }
        let Claims { sub, exp, .. } = data.claims;
        if sub.is_empty() || sub.len() > MAX_USER_ID_LEN {
            return Err(AuthError::Invalid);
        }
        let sub: Arc<str> = sub.into();
        self.verified.insert(token.to_owned(), (sub.clone(), exp));
        Ok(sub)
    }

    /// True when `token` is the admin token. The comparison is constant
    /// time (`subtle`) over SHA-256 digests, so neither how much of the
    /// token matched nor its length shows in the response time.
    pub fn is_admin(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        digest.ct_eq(&self.admin_digest).into()
    }
}

/// Mints an HS256 buyer token for `user` valid for `ttl_secs` seconds
/// (`flashsale token`; tokens for public-key setups come from the shop).
///
/// # Errors
/// Only if signing fails, which HS256 with a byte key does not do in practice.
pub fn mint_token(secret: &Secret, user: &str, ttl_secs: u64) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let claims = Claims {
        sub: user.to_owned(),
        exp: now + ttl_secs,
        nbf: None,
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
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const RSA_A_KEY: &str = include_str!("../tests/fixtures/jwt/rsa-a.key.pem");
    const RSA_A_PUB: &str = include_str!("../tests/fixtures/jwt/rsa-a.pub.pem");
    const RSA_B_KEY: &str = include_str!("../tests/fixtures/jwt/rsa-b.key.pem");
    const EC_KEY: &str = include_str!("../tests/fixtures/jwt/ec-p256.key.pem");
    const EC_PUB: &str = include_str!("../tests/fixtures/jwt/ec-p256.pub.pem");
    const JWKS: &str = include_str!("../tests/fixtures/jwt/jwks.json");

    fn auth() -> Authenticator {
        Authenticator::new(&Secret::new("s3cret"), Secret::new("admin"))
    }

    fn with_keys(keys: Vec<VerifyingKey>) -> Authenticator {
        Authenticator::with_keys(keys, DEFAULT_LEEWAY_SECS, Secret::new("admin")).unwrap()
    }

    fn rsa_auth() -> Authenticator {
        with_keys(vec![VerifyingKey::from_pem(RSA_A_PUB.as_bytes()).unwrap()])
    }

    fn ec_auth() -> Authenticator {
        with_keys(vec![VerifyingKey::from_pem(EC_PUB.as_bytes()).unwrap()])
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn alive() -> Value {
        json!({"sub": "alice", "exp": now() + 3600})
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn rsa(pem: &str) -> EncodingKey {
        EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
    }

    fn ec() -> EncodingKey {
        EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap()
    }

    fn hs(secret: &[u8]) -> EncodingKey {
        EncodingKey::from_secret(secret)
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
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
            nbf: None,
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
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(br#"{"sub":"alice","exp":99999999999}"#);
        let token = format!("{header}.{body}.");
        assert_eq!(auth().verify_buyer(&token), Err(AuthError::Invalid));
        assert_eq!(rsa_auth().verify_buyer(&token), Err(AuthError::Invalid));
        assert_eq!(ec_auth().verify_buyer(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn pem_keys_get_the_algorithm_of_their_type() {
        let rsa = VerifyingKey::from_pem(RSA_A_PUB.as_bytes()).unwrap();
        assert_eq!(rsa.algorithm(), Algorithm::RS256);
        let ec = VerifyingKey::from_pem(EC_PUB.as_bytes()).unwrap();
        assert_eq!(ec.algorithm(), Algorithm::ES256);
        assert!(VerifyingKey::from_pem(b"not a key").is_err());
        // A private key is not a public key.
        assert!(VerifyingKey::from_pem(EC_KEY.as_bytes()).is_err());
    }

    #[test]
    fn rs256_and_es256_tokens_are_accepted_by_their_keys() {
        let token = sign(Algorithm::RS256, None, &rsa(RSA_A_KEY), &alive());
        assert_eq!(&*rsa_auth().verify_buyer(&token).unwrap(), "alice");
        let token = sign(Algorithm::ES256, None, &ec(), &alive());
        assert_eq!(&*ec_auth().verify_buyer(&token).unwrap(), "alice");
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // HS256 keyed with the public key's bytes: the classic confusion.
        let hs_with_pub = sign(Algorithm::HS256, None, &hs(RSA_A_PUB.as_bytes()), &alive());
        assert_eq!(
            rsa_auth().verify_buyer(&hs_with_pub),
            Err(AuthError::Invalid)
        );
        let hs_with_ec_pub = sign(Algorithm::HS256, None, &hs(EC_PUB.as_bytes()), &alive());
        assert_eq!(
            ec_auth().verify_buyer(&hs_with_ec_pub),
            Err(AuthError::Invalid)
        );
        // An HS256 token with a secret the server does not have (public keys only).
        let hs = sign(Algorithm::HS256, None, &hs(b"s3cret"), &alive());
        assert_eq!(rsa_auth().verify_buyer(&hs), Err(AuthError::Invalid));
        // RS256 against an EC key, ES256 against an RSA key.
        let rs = sign(Algorithm::RS256, None, &rsa(RSA_A_KEY), &alive());
        assert_eq!(ec_auth().verify_buyer(&rs), Err(AuthError::Invalid));
        let es = sign(Algorithm::ES256, None, &ec(), &alive());
        assert_eq!(rsa_auth().verify_buyer(&es), Err(AuthError::Invalid));
        // Another RSA algorithm than the key's.
        let rs512 = sign(Algorithm::RS512, None, &rsa(RSA_A_KEY), &alive());
        assert_eq!(rsa_auth().verify_buyer(&rs512), Err(AuthError::Invalid));
        // An RS256 token against the HS256-only authenticator.
        assert_eq!(auth().verify_buyer(&rs), Err(AuthError::Invalid));
    }

    #[test]
    fn secret_and_public_keys_together_accept_either() {
        let both = with_keys(vec![
            VerifyingKey::hmac(&Secret::new("s3cret")),
            VerifyingKey::from_pem(RSA_A_PUB.as_bytes()).unwrap(),
        ]);
        let hs = sign(Algorithm::HS256, None, &hs(b"s3cret"), &alive());
        let rs = sign(Algorithm::RS256, None, &rsa(RSA_A_KEY), &alive());
        assert!(both.verify_buyer(&hs).is_ok());
        assert!(both.verify_buyer(&rs).is_ok());
        let confused = sign(
            Algorithm::HS256,
            None,
            &super::tests::hs(RSA_A_PUB.as_bytes()),
            &alive(),
        );
        assert_eq!(both.verify_buyer(&confused), Err(AuthError::Invalid));
    }

    #[test]
    fn jwks_keys_are_picked_by_kid() {
        let keys = VerifyingKey::from_jwks(JWKS.as_bytes()).unwrap();
        let algs: Vec<_> = keys
            .iter()
            .map(|k| (k.kid().unwrap(), k.algorithm()))
            .collect();
        assert_eq!(
            algs,
            [
                ("key-a", Algorithm::RS256),
                ("key-b", Algorithm::RS256),
                ("key-ec", Algorithm::ES256)
            ]
        );
        let auth = with_keys(keys);
        let b = sign(Algorithm::RS256, Some("key-b"), &rsa(RSA_B_KEY), &alive());
        assert!(auth.verify_buyer(&b).is_ok());
        let a = sign(Algorithm::RS256, Some("key-a"), &rsa(RSA_A_KEY), &alive());
        assert!(auth.verify_buyer(&a).is_ok());
        let e = sign(Algorithm::ES256, Some("key-ec"), &ec(), &alive());
        assert!(auth.verify_buyer(&e).is_ok());
        // Signed by key B but naming key A, or an unknown kid: refused.
        let wrong = sign(Algorithm::RS256, Some("key-a"), &rsa(RSA_B_KEY), &alive());
        assert_eq!(auth.verify_buyer(&wrong), Err(AuthError::Invalid));
        let unknown = sign(Algorithm::RS256, Some("key-z"), &rsa(RSA_B_KEY), &alive());
        assert_eq!(auth.verify_buyer(&unknown), Err(AuthError::Invalid));
        // No kid: the keys of the token's algorithm are tried.
        let bare = sign(Algorithm::RS256, None, &rsa(RSA_B_KEY), &alive());
        assert!(auth.verify_buyer(&bare).is_ok());
    }

    #[test]
    fn jwks_refuses_symmetric_and_mismatched_keys_and_skips_encryption_keys() {
        let oct = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#;
        assert!(VerifyingKey::from_jwks(oct).is_err());
        let set: Value = serde_json::from_str(JWKS).unwrap();
        let mut rsa_as_es = set["keys"][0].clone();
        rsa_as_es["alg"] = json!("ES256");
        let doc = json!({"keys": [rsa_as_es]}).to_string();
        assert!(VerifyingKey::from_jwks(doc.as_bytes()).is_err());
        let mut enc = set["keys"][0].clone();
        enc["use"] = json!("enc");
        let doc = json!({"keys": [enc, set["keys"][1]]}).to_string();
        let keys = VerifyingKey::from_jwks(doc.as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid(), Some("key-b"));
        assert!(VerifyingKey::from_jwks(br#"{"keys":[]}"#).is_err());
        assert!(VerifyingKey::from_jwks(b"[").is_err());
        assert!(Authenticator::with_keys(Vec::new(), 0, Secret::new("a")).is_err());
        let hmac = vec![VerifyingKey::hmac(&Secret::new("s"))];
        assert!(Authenticator::with_keys(hmac, MAX_LEEWAY_SECS + 1, Secret::new("a")).is_err());
    }

    #[test]
    fn nbf_and_exp_are_checked_with_the_leeway() {
        let key = rsa(RSA_A_KEY);
        let auth = rsa_auth();
        let ok = |claims: Value| auth.verify_buyer(&sign(Algorithm::RS256, None, &key, &claims));
        let t = now();
        assert!(ok(json!({"sub": "a", "exp": t + 60, "nbf": t - 60})).is_ok());
        assert!(ok(json!({"sub": "a", "exp": t + 60, "nbf": t + 10})).is_ok());
        assert!(ok(json!({"sub": "a", "exp": t + 600, "nbf": t + 300})).is_err());
        assert!(ok(json!({"sub": "a", "exp": t - 10})).is_ok());
        assert!(ok(json!({"sub": "a", "exp": t - 300})).is_err());
        // A non-numeric nbf is not silently ignored.
        assert!(ok(json!({"sub": "a", "exp": t + 60, "nbf": "tomorrow"})).is_err());
        // exp stays required.
        assert!(ok(json!({"sub": "a", "nbf": t - 60})).is_err());
        let strict = Authenticator::with_keys(
            vec![VerifyingKey::from_pem(RSA_A_PUB.as_bytes()).unwrap()],
            0,
            Secret::new("admin"),
        )
        .unwrap();
        let late = sign(
            Algorithm::RS256,
            None,
            &key,
            &json!({"sub": "a", "exp": t - 10}),
        );
        assert_eq!(strict.verify_buyer(&late), Err(AuthError::Invalid));
    }

    #[test]
    fn admin_token_compare() {
        assert!(auth().is_admin("admin"));
        assert!(!auth().is_admin("admim"));
        assert!(!auth().is_admin("admin "));
        assert!(!auth().is_admin(""));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    /// One authenticator with every kind of key, and a valid token of each
    /// (made once: signing is the slow part of a case).
    fn everything() -> &'static (Authenticator, Vec<String>) {
        static EVERYTHING: std::sync::OnceLock<(Authenticator, Vec<String>)> =
            std::sync::OnceLock::new();
        EVERYTHING.get_or_init(make_everything)
    }

    fn make_everything() -> (Authenticator, Vec<String>) {
        let mut keys = VerifyingKey::from_jwks(JWKS.as_bytes()).unwrap();
        keys.push(VerifyingKey::hmac(&Secret::new("s3cret")));
        let tokens = vec![
            sign(Algorithm::HS256, None, &hs(b"s3cret"), &alive()),
            sign(Algorithm::RS256, Some("key-a"), &rsa(RSA_A_KEY), &alive()),
            sign(Algorithm::ES256, Some("key-ec"), &ec(), &alive()),
        ];
        (with_keys(keys), tokens)
    }

    /// A change to a token: replace, insert or delete one byte, or cut it.
    #[derive(Debug, Clone)]
    enum Mutation {
        Replace(usize, u8),
        Insert(usize, u8),
        Delete(usize),
        Truncate(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        // Mostly characters a JWT is made of, sometimes any byte.
        let byte = prop_oneof![
            4 => proptest::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".to_vec()
            ),
            1 => any::<u8>(),
        ];
        prop_oneof![
            (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Replace(i, b)),
            (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Delete),
            any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    fn apply(token: &str, mutations: &[Mutation]) -> String {
        let mut bytes = token.as_bytes().to_vec();
        for m in mutations {
            let len = bytes.len();
            match *m {
                Mutation::Replace(i, b) if len > 0 => bytes[i % len] = b,
                Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
                Mutation::Delete(i) if len > 0 => {
                    bytes.remove(i % len);
                }
                Mutation::Truncate(i) if len > 0 => bytes.truncate(i % len),
                _ => {}
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// What `verify_buyer` decided before it checked HS256 signatures
    /// itself: the header by `decode_header`, then `jsonwebtoken::decode`
    /// with each fitting key and a validation of that key's algorithm.
    fn reference(auth: &Authenticator, token: &str) -> Result<String, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let claims = auth
            .keys
            .iter()
            .filter(|key| key.fits(header.alg, header.kid.as_deref()))
            .take(MAX_CANDIDATE_KEYS)
            .find_map(|key| {
                let mut validation = Validation::new(key.algorithm);
                validation.set_required_spec_claims(&["exp", "sub"]);
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.leeway = auth.leeway;
                jsonwebtoken::decode::<Claims>(token, &key.key, &validation).ok()
            })
            .ok_or(AuthError::Invalid)?
            .claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_USER_ID_LEN {
            return Err(AuthError::Invalid);
        }
        Ok(claims.sub)
    }

    /// Claims a shop might send, good and bad: `exp` and `nbf` around now
    /// and the leeway, odd types, an audience, empty or long subjects.
    fn claims() -> impl Strategy<Value = Value> {
        let time = prop_oneof![
            (-4000i64..4000).prop_map(|d| json!(now() + d)),
            Just(json!("soon")),
            Just(json!(1.5)),
            Just(json!(-1)),
        ];
        let sub = prop_oneof![
            4 => "[a-z]{1,12}".prop_map(Value::from),
            1 => Just(json!("")),
            1 => Just(json!("x".repeat(MAX_USER_ID_LEN + 1))),
            1 => Just(json!(7)),
        ];
        (
            proptest::option::of(sub),
            proptest::option::of(time.clone()),
            proptest::option::of(time),
            proptest::option::of(prop_oneof![Just(json!("shop")), Just(json!(["a", "b"]))]),
            any::<bool>(),
        )
            .prop_map(|(sub, exp, nbf, aud, extra)| {
                let mut c = serde_json::Map::new();
                for (name, v) in [("sub", sub), ("exp", exp), ("nbf", nbf), ("aud", aud)] {
                    if let Some(v) = v {
                        c.insert(name.into(), v);
                    }
                }
                if extra {
                    c.insert("iat".into(), json!(now()));
                    c.insert("role".into(), json!("buyer"));
                }
                Value::Object(c)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn verification_agrees_with_jsonwebtoken_alone(
            claims in claims(),
            signer in 0usize..6,
            mutations in proptest::collection::vec(mutation(), 0..3),
        ) {
            let token = match signer {
                0 => sign(Algorithm::HS256, None, &hs(b"s3cret"), &claims),
                1 => sign(Algorithm::HS256, None, &hs(b"other"), &claims),
                2 => sign(Algorithm::HS384, None, &hs(b"s3cret"), &claims),
                3 => sign(Algorithm::RS256, Some("key-a"), &rsa(RSA_A_KEY), &claims),
                4 => sign(Algorithm::RS256, Some("key-a"), &rsa(RSA_B_KEY), &claims),
                _ => sign(Algorithm::ES256, Some("key-ec"), &ec(), &claims),
            };
            let token = apply(&token, &mutations);
            // A fresh authenticator: no verified-token cache in between.
            let auth = make_everything().0;
            let got = auth.verify_buyer(&token).map(|sub| sub.to_string());
            prop_assert_eq!(got, reference(&auth, &token), "token {}", token);
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_pass(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (auth, _) = everything();
            let token = String::from_utf8_lossy(&bytes);
            prop_assert_eq!(auth.verify_buyer(&token), Err(AuthError::Invalid));
            prop_assert!(!auth.is_admin(&token) || token == "admin");
            if let Some(t) = bearer(&format!("Bearer {token}")) {
                prop_assert!(auth.verify_buyer(t).is_err());
            }
        }

        #[test]
        fn random_strings_never_pass(token in "\\PC{0,400}") {
            let (auth, _) = everything();
            prop_assert!(auth.verify_buyer(&token).is_err());
        }

        #[test]
        fn jwt_shaped_strings_never_pass(
            header in "[A-Za-z0-9_-]{0,80}",
            payload in "[A-Za-z0-9_-]{0,200}",
            signature in "[A-Za-z0-9_-]{0,400}",
        ) {
            let (auth, _) = everything();
            let token = format!("{header}.{payload}.{signature}");
            prop_assert!(auth.verify_buyer(&token).is_err());
            // A real header over a random payload and signature.
            for alg in ["HS256", "RS256", "ES256", "none"] {
                let head = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
                let token = format!("{head}.{payload}.{signature}");
                prop_assert!(auth.verify_buyer(&token).is_err());
            }
        }

        #[test]
        fn mutated_valid_tokens_never_pass(
            which in 0usize..3,
            mutations in proptest::collection::vec(mutation(), 1..4),
        ) {
            let (auth, tokens) = everything();
            let token = &tokens[which];
            // The original passes (and is now cached) ...
            prop_assert!(auth.verify_buyer(token).is_ok());
            let mutated = apply(token, &mutations);
            prop_assume!(&mutated != token);
            // ... no changed copy does.
            prop_assert_eq!(auth.verify_buyer(&mutated), Err(AuthError::Invalid), "{}", mutated);
        }
    }
}
