//! Short-lived HMAC-signed passes bound to one buyer and one sale: the
//! purchase ticket of the hidden purchase path and the waiting room's
//! admission pass are both one of these.
//!
//! A pass reads `<kind>.<expires_ms>.<nonce>.<mac>`: the MAC (HMAC-SHA256,
//! base64url) covers the kind, the sale, the buyer, the expiry and the
//! nonce, so a pass stolen from one buyer is worthless to another, a pass
//! for one sale buys nothing in the next, and a pass cannot be stretched.
//! Written by hand because it is twenty lines over `hmac`: a JWT library
//! would add a header, a JSON payload and an algorithm choice that a
//! purchase check has no use for. Nodes that share the secret accept each
//! other's passes, so a pass works across a distributed deployment.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::Secret;

/// Longest pass accepted, in characters (anything longer is not ours).
pub const MAX_PASS_LEN: usize = 128;

/// What a pass grants; part of the MAC, so one kind never passes as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A purchase ticket (`GET /api/v1/sales/{id}/ticket`).
    Ticket,
    /// A waiting room's admission pass.
    Admission,
    /// A proof-of-work challenge (`GET /api/v1/sales/{id}/challenge`).
    Challenge,
}

impl Kind {
    const fn tag(self) -> &'static str {
        match self {
            Self::Ticket => "t1",
            Self::Admission => "a1",
            Self::Challenge => "c1",
        }
    }
}

/// Signs and checks passes with one secret.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

/// A pass that checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// When it expires, epoch ms.
    pub expires_ms: i64,
    /// Its nonce (unique per pass handed out, for one-time use).
    pub nonce: u64,
}

impl Signer {
    /// A signer keyed by `secret`, separated from every other use of the
    /// same secret by `domain` (the secret may also sign buyer JWTs).
    pub fn new(secret: &Secret, domain: &str) -> Self {
        let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        derive.update(b"flashsale-pass:");
        derive.update(domain.as_bytes());
        let key = derive.finalize().into_bytes();
        Self {
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&key)
                .expect("HMAC takes a key of any length"),
        }
    }

    fn mac_of(
        &self,
        kind: Kind,
        sale_id: u64,
        user: &str,
        expires_ms: i64,
        nonce: u64,
    ) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(kind.tag().as_bytes());
        mac.update(&sale_id.to_be_bytes());
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(&expires_ms.to_be_bytes());
        mac.update(&nonce.to_be_bytes());
        mac
    }

    /// A pass of `kind` for `user` on `sale_id`, valid until `expires_ms`.
    pub fn sign(
        &self,
        kind: Kind,
        sale_id: u64,
        user: &str,
        expires_ms: i64,
        nonce: u64,
    ) -> String {
        let tag = self
            .mac_of(kind, sale_id, user, expires_ms, nonce)
            .finalize()
            .into_bytes();
        format!(
            "{}.{expires_ms}.{nonce:x}.{}",
            kind.tag(),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks a pass: of `kind`, for `user` on `sale_id`, unexpired at
    /// `now_ms`, and not valid for longer than `max_ttl_ms` from now.
    /// `None` for anything else, whatever the bytes.
    pub fn verify(
        &self,
        kind: Kind,
        pass: &str,
        sale_id: u64,
        user: &str,
        now_ms: i64,
        max_ttl_ms: i64,
    ) -> Option<Verified> {
        if pass.len() > MAX_PASS_LEN {
            return None;
        }
        let mut parts = pass.split('.');
        let (tag, expires, nonce, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || tag != kind.tag() {
            return None;
        }
        let expires_ms: i64 = expires.parse().ok()?;
        // Canonical numbers only: "+5" or "05" would give one pass many spellings.
        if expires_ms.to_string() != expires || expires_ms <= now_ms {
            return None;
        }
        if expires_ms.saturating_sub(now_ms) > max_ttl_ms {
            return None;
        }
        let nonce_value = u64::from_str_radix(nonce, 16).ok()?;
        if format!("{nonce_value:x}") != nonce {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(mac).ok()?;
        self.mac_of(kind, sale_id, user, expires_ms, nonce_value)
            .verify_slice(&tag)
            .ok()?;
        Some(Verified {
            expires_ms,
            nonce: nonce_value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(&Secret::new("s3cret"), "test")
    }

    #[test]
    fn a_pass_checks_out_only_for_its_buyer_sale_kind_and_time() {
        let s = signer();
        let pass = s.sign(Kind::Ticket, 7, "alice", 10_000, 42);
        let ok = s.verify(Kind::Ticket, &pass, 7, "alice", 5_000, 60_000);
        assert_eq!(
            ok,
            Some(Verified {
                expires_ms: 10_000,
                nonce: 42
            })
        );
        assert_eq!(s.verify(Kind::Ticket, &pass, 7, "bob", 5_000, 60_000), None);
        assert_eq!(
            s.verify(Kind::Ticket, &pass, 8, "alice", 5_000, 60_000),
            None
        );
        assert_eq!(
            s.verify(Kind::Admission, &pass, 7, "alice", 5_000, 60_000),
            None
        );
        assert_eq!(
            s.verify(Kind::Ticket, &pass, 7, "alice", 10_000, 60_000),
            None
        );
        assert_eq!(
            s.verify(Kind::Ticket, &pass, 7, "alice", 5_000, 1_000),
            None
        );
        let other = Signer::new(&Secret::new("s3cret"), "other");
        assert_eq!(
            other.verify(Kind::Ticket, &pass, 7, "alice", 5_000, 60_000),
            None
        );
    }

    #[test]
    fn a_tampered_pass_fails() {
        let s = signer();
        let pass = s.sign(Kind::Admission, 1, "u", 9_999, 1);
        let stretched = pass.replacen("9999", "99999", 1);
        assert_eq!(
            s.verify(Kind::Admission, &stretched, 1, "u", 0, i64::MAX),
            None
        );
        let padded = pass.replacen(".1.", ".01.", 1);
        assert_eq!(
            s.verify(Kind::Admission, &padded, 1, "u", 0, i64::MAX),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic_and_never_pass(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let s = signer();
            let text = String::from_utf8_lossy(&bytes);
            proptest::prop_assert_eq!(s.verify(Kind::Ticket, &text, 1, "u", 0, i64::MAX), None);
            proptest::prop_assert_eq!(s.verify(Kind::Admission, &text, 1, "u", 0, i64::MAX), None);
        }
    }
}
