//! The per-buyer request rate on this node.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{Attempt, Check, Pass, Refusal};
use crate::domain::Rejection;
use crate::engine::EngineSettings;

/// Per-buyer request rate on this node (GCRA, `governor`).
pub struct UserRate {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl UserRate {
    /// `None` when `settings` set no rate (0 = unlimited).
    pub fn new(settings: &EngineSettings) -> Option<Self> {
        let rate = NonZeroU32::new(settings.user_rate_per_sec)?;
        let burst =
            NonZeroU32::new(settings.user_burst.max(settings.user_rate_per_sec)).unwrap_or(rate);
        Some(Self {
            limiter: RateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst)),
        })
    }
}

impl Check for UserRate {
    fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn name(&self) -> &'static str {
        "user_rate"
    }

    fn check(&self, a: &Attempt<'_>) -> Result<Pass, Refusal> {
        match self.limiter.check_key(&a.user.to_owned()) {
            Ok(()) => Ok(Pass::Through),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                Err(Refusal {
                    reason: Rejection::RateLimited,
                    retry_after_secs: Some(wait.as_secs().max(1)),
                })
            }
        }
    }
}
