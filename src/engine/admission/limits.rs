//! The rate limits: per buyer, per client IP, per sale (see
//! [`crate::backend::limits`]).
//!
//! Without a shared limiter (one node, the embedded default) the node's own
//! governor limiters answer synchronously — the cheap first line. With one
//! (Redis, the distributed mode) one script call per attempt counts it
//! against every limit cluster-wide, and the local limiters are not asked
//! (a buyer is counted once). When the shared limiter cannot answer in
//! [`SHARED_TIMEOUT`] the attempt fails open to the local limiters
//! (availability over strictness for a rate limit; the stock decision stays
//! atomic in Redis) and `flashsale_rate_limit_fallback_total` counts it.
//!
//! The check runs last in the pipeline, so the per-sale limit counts the
//! attempts that reach the stock decision.

use std::sync::Arc;
use std::time::Duration;

use super::{Attempt, Check, Pass, Refusal};
use crate::backend::limits::{Limits, MemoryRates, RateStore, Subject, Verdict};
use crate::domain::Rejection;
use crate::engine::EngineSettings;

/// Longest the shared limiter may take before the local one answers.
pub const SHARED_TIMEOUT: Duration = Duration::from_millis(250);

/// The configured rate limits.
pub struct RateLimits {
    limits: Limits,
    local: Arc<MemoryRates>,
    shared: Option<Arc<dyn RateStore>>,
}

impl RateLimits {
    /// `None` when `settings` set no limit.
    pub fn new(settings: &EngineSettings, shared: Option<Arc<dyn RateStore>>) -> Option<Self> {
        let limits = settings.limits();
        if limits.is_off() {
            return None;
        }
        Some(Self {
            limits,
            local: Arc::new(MemoryRates::new(&limits)),
            shared,
        })
    }
}

fn refusal(verdict: Verdict) -> Result<(), Refusal> {
    match verdict {
        Verdict::Pass => Ok(()),
        Verdict::Limited { retry_after_ms } => Err(Refusal {
            reason: Rejection::RateLimited,
            retry_after_secs: Some(Verdict::retry_after_secs(retry_after_ms)),
        }),
    }
}

impl Check for RateLimits {
    fn forget_idle(&self) {
        self.local.forget_idle();
    }

    fn name(&self) -> &'static str {
        "rate_limits"
    }

    fn check(&self, a: &Attempt<'_>) -> Result<Pass, Refusal> {
        let subject = Subject {
            sale_id: a.sale.sale.id,
            user: a.user.to_owned(),
            ip: a.proof.client_ip,
        };
        let Some(shared) = &self.shared else {
            return refusal(self.local.check_now(&subject)).map(|()| Pass::Through);
        };
        let (shared, local, limits) = (shared.clone(), self.local.clone(), self.limits);
        Ok(Pass::Verify(Box::pin(async move {
            let failed =
                match tokio::time::timeout(SHARED_TIMEOUT, shared.check(&limits, &subject)).await {
                    Ok(Ok(verdict)) => return refusal(verdict),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
            metrics::counter!("flashsale_rate_limit_fallback_total").increment(1);
            tracing::debug!(error = %failed, "shared rate limiter unavailable; local limits apply");
            refusal(local.check_now(&subject))
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::limits::RateError;
    use crate::domain::{NewSale, Sale};
    use crate::engine::SaleRuntime;

    struct Down;

    #[async_trait::async_trait]
    impl RateStore for Down {
        async fn check(&self, _: &Limits, _: &Subject) -> Result<Verdict, RateError> {
            Err(RateError("down".into()))
        }
    }

    fn open_sale() -> SaleRuntime {
        let now = crate::domain::now_ms();
        let new = NewSale::parse(&serde_json::json!({
            "item": "x", "stock": 10, "per_user_limit": 1,
            "starts_at": crate::domain::rfc3339(now - 1000),
        }))
        .unwrap();
        SaleRuntime::new(Sale::from_new(1, new, now))
    }

    async fn run(check: &RateLimits, rt: &SaleRuntime) -> Result<(), Refusal> {
        let attempt = Attempt::new(rt, "u", 1, crate::domain::now_ms());
        match check.check(&attempt)? {
            Pass::Verify(v) => v.await,
            _ => Ok(()),
        }
    }

    #[tokio::test]
    async fn an_unreachable_shared_limiter_fails_open_to_the_local_one() {
        let settings = EngineSettings {
            user_rate_per_sec: 1,
            user_burst: 2,
            ..EngineSettings::default()
        };
        let check = RateLimits::new(&settings, Some(Arc::new(Down))).unwrap();
        let rt = open_sale();
        assert_eq!(run(&check, &rt).await, Ok(()));
        assert_eq!(run(&check, &rt).await, Ok(()));
        let refused = run(&check, &rt).await.unwrap_err();
        assert_eq!(refused.reason, Rejection::RateLimited);
        assert!(refused.retry_after_secs.unwrap() >= 1);
    }

    #[tokio::test]
    async fn a_shared_limiter_replaces_the_local_one() {
        let settings = EngineSettings {
            user_rate_per_sec: 1,
            user_burst: 1,
            ..EngineSettings::default()
        };
        let shared = Arc::new(MemoryRates::new(&settings.limits()));
        let check = RateLimits::new(&settings, Some(shared)).unwrap();
        let rt = open_sale();
        // Counted once (by the shared limiter), not twice.
        assert_eq!(run(&check, &rt).await, Ok(()));
        assert_eq!(
            run(&check, &rt).await.unwrap_err().reason,
            Rejection::RateLimited
        );
        assert!(RateLimits::new(
            &EngineSettings {
                user_rate_per_sec: 0,
                ..EngineSettings::default()
            },
            None
        )
        .is_none());
    }
}
