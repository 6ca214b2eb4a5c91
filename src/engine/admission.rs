//! The admission pipeline: the ordered checks a purchase passes before any
//! stock is touched.
//!
//! Each check is a small [`Check`]; [`Admission::standard`] lists today's,
//! cheapest first: the sale window, the local sold-out flag, the per-user
//! rate limit. A new check (a waiting-room pass, a purchase ticket, a
//! proof-of-work) is one file implementing [`Check`] and one line in
//! [`Admission::standard`]; what it needs from the request goes into
//! [`Attempt`].
//!
//! Checks that only read state ([`Check::is_pure`]) may be run anywhere and
//! any number of times — the HTTP fast lane runs the leading pure checks to
//! answer a flood before routing. A check that consumes something (a rate
//! token, a one-time ticket) must not be pure: the fast lane stops before
//! it, so it runs exactly once, in the full path.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{EngineSettings, SaleRuntime};
use crate::domain::sale::Window;
use crate::domain::Rejection;

/// One purchase attempt as the checks see it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The sale's live state.
    pub sale: &'a SaleRuntime,
    /// The buyer.
    pub user: &'a str,
    /// Units asked for.
    pub quantity: u32,
    /// The node's clock, epoch ms.
    pub now_ms: i64,
}

impl<'a> Attempt<'a> {
    /// An attempt by `user` on `sale` at `now_ms`.
    pub fn new(sale: &'a SaleRuntime, user: &'a str, quantity: u32, now_ms: i64) -> Self {
        Self {
            sale,
            user,
            quantity,
            now_ms,
        }
    }
}

/// Why a purchase was refused, with the wait to announce, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The rejection.
    pub reason: Rejection,
    /// Seconds for `Retry-After`.
    pub retry_after_secs: Option<u64>,
}

impl From<Rejection> for Refusal {
    fn from(reason: Rejection) -> Self {
        Self {
            reason,
            retry_after_secs: None,
        }
    }
}

/// One admission check.
pub trait Check: Send + Sync {
    /// A short name, for logs and docs.
    fn name(&self) -> &'static str;

    /// True when the check only reads state, so running it twice (fast lane,
    /// then full path) answers the same and changes nothing.
    fn is_pure(&self) -> bool {
        false
    }

    /// Passes the attempt on, or refuses it.
    ///
    /// # Errors
    /// The [`Refusal`] the buyer hears.
    fn check(&self, attempt: &Attempt<'_>) -> Result<(), Refusal>;

    /// Drops per-buyer state that went idle (called every few seconds).
    fn forget_idle(&self) {}
}

/// The ordered checks.
pub struct Admission {
    checks: Vec<Box<dyn Check>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|c| c.name()))
            .finish()
    }
}

impl Admission {
    /// A pipeline of exactly these checks, in this order.
    pub fn new(checks: Vec<Box<dyn Check>>) -> Self {
        Self { checks }
    }

    /// Today's pipeline: window, sold-out flag, per-user rate limit (when
    /// `settings` set one).
    pub fn standard(settings: &EngineSettings) -> Self {
        let mut checks: Vec<Box<dyn Check>> = vec![Box::new(SaleWindow), Box::new(SoldOutFlag)];
        if let Some(limit) = UserRate::new(settings) {
            checks.push(Box::new(limit));
        }
        Self::new(checks)
    }

    /// Runs every check in order; the first refusal wins.
    ///
    /// # Errors
    /// The first check's [`Refusal`].
    pub fn admit(&self, attempt: &Attempt<'_>) -> Result<(), Refusal> {
        self.checks.iter().try_for_each(|c| c.check(attempt))
    }

    /// Runs the leading pure checks only: `Some` when one of them refuses.
    /// `None` says nothing about the rest (the full path runs them all).
    pub fn refuse_early(&self, attempt: &Attempt<'_>) -> Option<Refusal> {
        self.checks
            .iter()
            .take_while(|c| c.is_pure())
            .find_map(|c| c.check(attempt).err())
    }

    /// Housekeeping hook: lets checks that keep per-buyer state drop what is
    /// idle.
    pub fn housekeeping(&self) {
        for c in &self.checks {
            c.forget_idle();
        }
    }
}

/// Refuses outside the sale's window (by this node's clock).
pub struct SaleWindow;

impl Check for SaleWindow {
    fn name(&self) -> &'static str {
        "window"
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn check(&self, a: &Attempt<'_>) -> Result<(), Refusal> {
        match a.sale.sale.window(a.now_ms) {
            Window::Upcoming => Err(Rejection::NotStarted.into()),
            Window::Ended => Err(Rejection::Ended.into()),
            Window::Open => Ok(()),
        }
    }
}

/// Refuses when the local ledger (the truth in the embedded default, a
/// mirror over a shared stock) has fewer units than asked for: a sold-out
/// sale costs one atomic load.
pub struct SoldOutFlag;

impl Check for SoldOutFlag {
    fn name(&self) -> &'static str {
        "sold_out_flag"
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn check(&self, a: &Attempt<'_>) -> Result<(), Refusal> {
        if a.sale.ledger.is_sold_out_for(a.quantity) {
            Err(Rejection::SoldOut.into())
        } else {
            Ok(())
        }
    }
}

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

    fn check(&self, a: &Attempt<'_>) -> Result<(), Refusal> {
        match self.limiter.check_key(&a.user.to_owned()) {
            Ok(()) => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewSale, Sale};

    fn runtime(stock: u64, starts_in_ms: i64) -> SaleRuntime {
        let now = crate::domain::now_ms();
        let new = NewSale::parse(&serde_json::json!({
            "item": "x",
            "stock": stock.max(1),
            "per_user_limit": 1,
            "starts_at": crate::domain::rfc3339(now + starts_in_ms),
        }))
        .unwrap();
        let rt = SaleRuntime::new(Sale::from_new(1, new, now));
        if stock == 0 {
            rt.ledger.try_reserve("someone", 1).unwrap();
        }
        rt
    }

    fn attempt(rt: &SaleRuntime) -> Attempt<'_> {
        Attempt {
            sale: rt,
            user: "u",
            quantity: 1,
            now_ms: crate::domain::now_ms(),
        }
    }

    #[test]
    fn checks_run_in_order_and_the_first_refusal_wins() {
        let settings = EngineSettings {
            user_rate_per_sec: 1,
            user_burst: 1,
            node_id: 0,
        };
        let a = Admission::standard(&settings);
        let upcoming = runtime(0, 60_000);
        // Sold out and not started: the window is checked first.
        assert_eq!(
            a.admit(&attempt(&upcoming)).unwrap_err().reason,
            Rejection::NotStarted
        );
        let open = runtime(5, -1000);
        assert_eq!(a.admit(&attempt(&open)), Ok(()));
        let limited = a.admit(&attempt(&open)).unwrap_err();
        assert_eq!(limited.reason, Rejection::RateLimited);
        assert!(limited.retry_after_secs.unwrap() >= 1);
    }

    #[test]
    fn the_early_answer_never_consumes_a_rate_token() {
        let settings = EngineSettings {
            user_rate_per_sec: 1,
            user_burst: 1,
            node_id: 0,
        };
        let a = Admission::standard(&settings);
        let open = runtime(5, -1000);
        for _ in 0..10 {
            assert_eq!(a.refuse_early(&attempt(&open)), None);
        }
        assert_eq!(a.admit(&attempt(&open)), Ok(()));
        let sold_out = runtime(0, -1000);
        assert_eq!(
            a.refuse_early(&attempt(&sold_out)).map(|r| r.reason),
            Some(Rejection::SoldOut)
        );
    }
}
