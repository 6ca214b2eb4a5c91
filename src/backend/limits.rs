//! The rate-limit seam: per buyer, per client IP and per sale, as GCRA
//! (the generic cell rate algorithm: one "theoretical arrival time" per key).
//!
//! Two implementations: [`MemoryRates`] (governor, this node only — the
//! embedded default and the fallback) and `RedisStock` (the distributed
//! mode, `super::redis::limits`: one script call per purchase attempt that
//! checks every configured limit at once with the Redis server's clock, so
//! N nodes allow the limit once, not N times). In Redis the keys live under
//! the sale's hash tag, so the cluster-wide limits are per (sale, buyer),
//! per (sale, IP) and per sale.

use std::net::IpAddr;
use std::num::NonZeroU32;

use async_trait::async_trait;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// One limit: `per_sec` a second, `burst` at once (at least `per_sec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained rate, per second (> 0).
    pub per_sec: u32,
    /// Most let through at once.
    pub burst: u32,
}

impl Rate {
    /// `None` for a rate of 0 (off); the burst is at least the rate.
    pub fn new(per_sec: u32, burst: u32) -> Option<Self> {
        if per_sec == 0 {
            return None;
        }
        Some(Self {
            per_sec,
            burst: burst.max(per_sec),
        })
    }

    fn quota(self) -> Quota {
        let rate = NonZeroU32::new(self.per_sec).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(rate).allow_burst(NonZeroU32::new(self.burst).unwrap_or(rate))
    }
}

/// The configured limits (`None` = off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Per buyer.
    pub user: Option<Rate>,
    /// Per client IP.
    pub ip: Option<Rate>,
    /// Per sale: attempts that reach the stock decision.
    pub sale: Option<Rate>,
}

impl Limits {
    /// True when no limit is on.
    pub fn is_off(&self) -> bool {
        self.user.is_none() && self.ip.is_none() && self.sale.is_none()
    }
}

/// Who an attempt counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The sale.
    pub sale_id: u64,
    /// The buyer.
    pub user: String,
    /// The client's address, when known (no IP limit without it).
    pub ip: Option<IpAddr>,
}

/// A limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under every limit (and counted).
    Pass,
    /// Over a limit: nothing was counted; try again after this wait.
    Limited {
        /// Milliseconds until the attempt would pass.
        retry_after_ms: u64,
    },
}

impl Verdict {
    /// The `Retry-After` of a refusal: whole seconds, at least 1.
    pub fn retry_after_secs(retry_after_ms: u64) -> u64 {
        retry_after_ms.div_ceil(1000).max(1)
    }
}

/// The limiter could not be asked (its store is unreachable).
#[derive(Debug, Clone, thiserror::Error)]
#[error("rate limiter: {0}")]
pub struct RateError(pub String);

/// Counts attempts against the limits.
#[async_trait]
pub trait RateStore: Send + Sync {
    /// Counts one attempt by `subject` against every limit in `limits` that
    /// applies, all or nothing: a refused attempt is counted nowhere.
    ///
    /// # Errors
    /// [`RateError`] when the store cannot be reached.
    async fn check(&self, limits: &Limits, subject: &Subject) -> Result<Verdict, RateError>;
}

/// The limits on this node only (governor, keyed, GCRA). The buyer's limit
/// is per buyer across sales (as the flag always was), the IP's per
/// address, the sale's per sale.
pub struct MemoryRates {
    user: Option<DefaultKeyedRateLimiter<String>>,
    ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    sale: Option<DefaultKeyedRateLimiter<u64>>,
}

impl std::fmt::Debug for MemoryRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRates").finish_non_exhaustive()
    }
}

impl MemoryRates {
    /// Limiters for the limits that are on.
    pub fn new(limits: &Limits) -> Self {
        Self {
            user: limits.user.map(|r| RateLimiter::dashmap(r.quota())),
            ip: limits.ip.map(|r| RateLimiter::dashmap(r.quota())),
            sale: limits.sale.map(|r| RateLimiter::dashmap(r.quota())),
        }
    }

    /// Counts one attempt, synchronously. The buyer's limit is checked
    /// first, then the IP's, then the sale's, so only an attempt that
    /// passed the first two spends from the sale's budget.
    pub fn check_now(&self, subject: &Subject) -> Verdict {
        fn wait(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> Verdict {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            Verdict::Limited {
                retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            }
        }
        if let Some(limiter) = &self.user {
            if let Err(n) = limiter.check_key(&subject.user) {
                return wait(n);
            }
        }
        if let (Some(limiter), Some(ip)) = (&self.ip, &subject.ip) {
            if let Err(n) = limiter.check_key(ip) {
                return wait(n);
            }
        }
        if let Some(limiter) = &self.sale {
            if let Err(n) = limiter.check_key(&subject.sale_id) {
                return wait(n);
            }
        }
        Verdict::Pass
    }

    /// Drops keys that went idle (memory stays bounded by the active ones).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.user {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.sale {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[async_trait]
impl RateStore for MemoryRates {
    async fn check(&self, _: &Limits, subject: &Subject) -> Result<Verdict, RateError> {
        Ok(self.check_now(subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(user: &str, ip: Option<[u8; 4]>) -> Subject {
        Subject {
            sale_id: 1,
            user: user.to_owned(),
            ip: ip.map(IpAddr::from),
        }
    }

    #[test]
    fn each_limit_refuses_past_its_burst() {
        let rates = MemoryRates::new(&Limits {
            user: Rate::new(1, 2),
            ip: Rate::new(1, 3),
            sale: Rate::new(1, 5),
        });
        let ip = Some([10, 0, 0, 1]);
        assert_eq!(rates.check_now(&subject("a", ip)), Verdict::Pass);
        assert_eq!(rates.check_now(&subject("a", ip)), Verdict::Pass);
        assert!(matches!(
            rates.check_now(&subject("a", ip)),
            Verdict::Limited { .. }
        ));
        // Another buyer from the same address: the IP's third.
        assert_eq!(rates.check_now(&subject("b", ip)), Verdict::Pass);
        assert!(matches!(
            rates.check_now(&subject("c", ip)),
            Verdict::Limited { .. }
        ));
        // Other addresses: the sale's budget (5) runs out after two more.
        assert_eq!(
            rates.check_now(&subject("d", Some([10, 0, 0, 2]))),
            Verdict::Pass
        );
        assert_eq!(rates.check_now(&subject("e", None)), Verdict::Pass);
        let Verdict::Limited { retry_after_ms } = rates.check_now(&subject("f", None)) else {
            panic!("the sale's budget is spent");
        };
        assert!(retry_after_ms <= 1000);
        assert_eq!(Verdict::retry_after_secs(retry_after_ms), 1);
        rates.forget_idle();
    }

    #[test]
    fn off_limits_let_everything_through() {
        let rates = MemoryRates::new(&Limits::default());
        for _ in 0..1000 {
            assert_eq!(rates.check_now(&subject("a", None)), Verdict::Pass);
        }
        assert!(Limits::default().is_off());
        assert_eq!(Rate::new(0, 10), None);
        assert_eq!(
            Rate::new(5, 1),
            Some(Rate {
                per_sec: 5,
                burst: 5
            })
        );
    }
}
