//! The simulated buyers: a name and a signed `Authorization` header each,
//! minted once before the load so that signing never competes with it.
//!
//! A buyer is a number (`u32`) into the table; the load loop, the accepted
//! orders and the checks all refer to buyers by that number.

use std::num::NonZeroUsize;

use anyhow::Context as _;
use flashsale::auth::{mint_token, Secret};
use reqwest::header::HeaderValue;

/// Lifetime of the buyer tokens: long enough for any run.
const TOKEN_TTL_SECS: u64 = 24 * 3600;

/// Buyers by number: their user ids and bearer tokens.
#[derive(Debug, Default)]
pub struct Buyers {
    names: Vec<String>,
    tokens: Vec<HeaderValue>,
}

impl Buyers {
    /// No buyers: for loads that send no buyer token (`healthz`, the
    /// baselines).
    pub fn none() -> Self {
        Self::default()
    }

    /// The bench's buyers of run `run_id`: `bench-<run id>-0` … `-(users-1)`.
    ///
    /// # Errors
    /// As [`Buyers::mint`].
    pub async fn for_run(secret: &Secret, run_id: &str, users: u32) -> anyhow::Result<Self> {
        Self::mint(secret, (0..users).map(|n| user_name(run_id, n)).collect()).await
    }

    /// Mints a token for each of `names` with `secret`, spreading the signing
    /// over the machine's cores; buyer `n` is `names[n]`.
    ///
    /// # Errors
    /// When a name cannot be put in a token, or more than `u32::MAX` names.
    pub async fn mint(secret: &Secret, names: Vec<String>) -> anyhow::Result<Self> {
        u32::try_from(names.len()).context("too many buyers")?;
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let chunk = names.len().div_ceil(cores).max(1);
        let mut tasks = Vec::new();
        for part in names.chunks(chunk) {
            let (secret, part) = (secret.clone(), part.to_vec());
            tasks.push(tokio::task::spawn_blocking(move || {
                part.iter()
                    .map(|name| bearer(&mint_token(&secret, name, TOKEN_TTL_SECS)?))
                    .collect::<anyhow::Result<Vec<_>>>()
            }));
        }
        let mut tokens = Vec::with_capacity(names.len());
        for task in tasks {
            tokens.extend(task.await.context("a token minting task panicked")??);
        }
        Ok(Self { names, tokens })
    }

    /// How many buyers there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The user id of buyer `n` (empty for an unknown number).
    pub fn name(&self, n: u32) -> &str {
        usize::try_from(n)
            .ok()
            .and_then(|i| self.names.get(i))
            .map_or("", String::as_str)
    }

    /// The `Authorization` value of buyer `n`.
    pub fn token(&self, n: u32) -> Option<&HeaderValue> {
        usize::try_from(n).ok().and_then(|i| self.tokens.get(i))
    }
}

/// The user id of simulated buyer `n` in run `run_id`.
pub fn user_name(run_id: &str, n: u32) -> String {
    format!("bench-{run_id}-{n}")
}

/// An `Authorization: Bearer …` value, marked sensitive so it never prints.
///
/// # Errors
/// When the token holds bytes a header cannot.
pub fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .context("a token is not a valid header value")?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_user() {
        let secret = Secret::new("s3cret");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let buyers = runtime
            .block_on(Buyers::for_run(&secret, "abc", 5))
            .unwrap();
        assert_eq!(buyers.len(), 5);
        let auth = flashsale::auth::Authenticator::new(&secret, Secret::new("admin"));
        for n in 0..5 {
            let value = buyers.token(n).unwrap();
            assert!(value.is_sensitive());
            let token = flashsale::auth::bearer(value.to_str().unwrap()).unwrap();
            assert_eq!(&*auth.verify_buyer(token).unwrap(), user_name("abc", n));
            assert_eq!(buyers.name(n), user_name("abc", n));
        }
        assert_eq!(buyers.name(5), "");
        assert!(buyers.token(5).is_none());
    }

    #[test]
    fn named_buyers_keep_their_order() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let names: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
        let buyers = runtime
            .block_on(Buyers::mint(&Secret::new("s"), names.clone()))
            .unwrap();
        for (n, name) in (0..).zip(&names) {
            assert_eq!(buyers.name(n), name);
        }
        assert!(Buyers::none().is_empty());
    }
}
