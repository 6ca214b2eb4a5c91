//! The admission pipeline: the ordered checks a purchase passes before any
//! stock is touched.
//!
//! Each check is a small [`Check`] in its own file of this folder;
//! [`Admission::standard`] lists them, cheapest first: the sale window, the
//! local sold-out flag, the per-user rate limit, then the sale's own
//! front-door steps (see [`crate::domain::FrontDoor`]). A new check is one
//! file implementing [`Check`] and one line in [`Admission::standard`];
//! what it needs from the request goes into [`Proof`]. A check answers
//! synchronously, or hands back a hold that lives until the purchase is
//! answered ([`Pass::Hold`]: one purchase in flight), or a verification to
//! await ([`Pass::Verify`]: an external captcha, a cluster-wide limiter).
//!
//! Checks that only read state ([`Check::is_pure`]) may be run anywhere and
//! any number of times — the HTTP fast lane runs the leading pure checks to
//! answer a flood before routing. A check that consumes something (a rate
//! token, a one-time ticket) must not be pure: the fast lane stops before
//! it, so it runs exactly once, in the full path.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use super::{EngineSettings, SaleRuntime};
use crate::domain::Rejection;

pub mod captcha;
mod in_flight;
mod limits;
pub mod pow;
mod room_pass;
mod sold_out;
pub mod ticket;
mod window;

pub use captcha::{CaptchaCheck, CaptchaSettings, CaptchaVerifier};
pub use in_flight::InFlightCheck;
pub use limits::RateLimits;
pub use pow::{Challenges, PowCheck};
pub use room_pass::RoomPass;
pub use sold_out::SoldOutFlag;
pub use ticket::{TicketCheck, Tickets};
pub use window::SaleWindow;

/// One purchase attempt as the checks see it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The sale's live state.
    pub sale: &'a SaleRuntime,
    /// The buyer.
    pub user: &'a str,
    /// Units asked for.
    pub quantity: u32,
    /// The sale clock, epoch ms.
    pub now_ms: i64,
    /// What the request brought besides the buyer's token.
    pub proof: &'a Proof,
}

/// No proof at all (a request with none of the front-door headers).
pub static NO_PROOF: Proof = Proof {
    client_ip: None,
    pass: None,
    ticket: None,
    pow: None,
    captcha: None,
};

impl<'a> Attempt<'a> {
    /// An attempt by `user` on `sale` at `now_ms`, with no proof.
    pub fn new(sale: &'a SaleRuntime, user: &'a str, quantity: u32, now_ms: i64) -> Self {
        Self::with_proof(sale, user, quantity, now_ms, &NO_PROOF)
    }

    /// An attempt that carries `proof`.
    pub fn with_proof(
        sale: &'a SaleRuntime,
        user: &'a str,
        quantity: u32,
        now_ms: i64,
        proof: &'a Proof,
    ) -> Self {
        Self {
            sale,
            user,
            quantity,
            now_ms,
            proof,
        }
    }
}

/// What a purchase request carries for the front-door checks, read from its
/// headers by the HTTP layer (names in `http::extract`). Every field is
/// untrusted input: a check parses it and refuses what does not verify.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    /// The client's address (the peer, or the first untrusted hop of
    /// `X-Forwarded-For` behind a trusted proxy).
    pub client_ip: Option<IpAddr>,
    /// A waiting room's admission pass.
    pub pass: Option<String>,
    /// A purchase ticket.
    pub ticket: Option<String>,
    /// A proof-of-work solution.
    pub pow: Option<String>,
    /// An external captcha's token.
    pub captcha: Option<String>,
}

/// Something a check keeps until the purchase is answered (dropped then).
pub type Hold = Box<dyn std::any::Any + Send + Sync>;

/// A verification a check needs awaited before the attempt goes on.
pub type Verification = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send>>;

/// What a check lets through.
pub enum Pass {
    /// Nothing more to do.
    Through,
    /// Passed; the hold lives until the purchase is answered.
    Hold(Hold),
    /// Passes once this resolves `Ok`.
    Verify(Verification),
}

/// What the pipeline let through: the holds of its checks, released when
/// this is dropped (after the purchase is answered).
#[derive(Default)]
pub struct Admitted {
    holds: Vec<Hold>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Admitted({} holds)", self.holds.len())
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

    /// True when the check only reads state and needs no [`Proof`], so
    /// running it twice (fast lane, then full path) answers the same and
    /// changes nothing. A pure check answers [`Pass::Through`] or refuses.
    fn is_pure(&self) -> bool {
        false
    }

    /// Passes the attempt on, or refuses it.
    ///
    /// # Errors
    /// The [`Refusal`] the buyer hears.
    fn check(&self, attempt: &Attempt<'_>) -> Result<Pass, Refusal>;

    /// Drops per-buyer state that went idle (called every few seconds).
    fn forget_idle(&self) {}
}

/// What the front-door checks work with, built once per engine.
#[derive(Clone)]
pub struct Gear {
    /// The node's waiting rooms.
    pub rooms: std::sync::Arc<crate::engine::room::Rooms>,
    /// Purchase tickets.
    pub tickets: std::sync::Arc<Tickets>,
    /// Proof-of-work challenges.
    pub challenges: std::sync::Arc<Challenges>,
    /// The captcha verify service, when the node has one.
    pub captcha: Option<std::sync::Arc<CaptchaVerifier>>,
    /// The cluster-wide rate limiter, if the backends have one.
    pub rates: Option<std::sync::Arc<dyn crate::backend::limits::RateStore>>,
}

impl Gear {
    /// Gear over in-memory rooms and a fresh random pass secret (tests).
    pub fn in_memory() -> Self {
        let secret = crate::auth::Secret::generate();
        let rooms = crate::engine::room::Rooms::new(
            std::sync::Arc::new(crate::backend::room::MemoryRoom::default()),
            crate::signed::Signer::new(&secret, "rooms"),
        );
        Self::new(std::sync::Arc::new(rooms), &secret, None, None)
    }

    /// Gear over `rooms`, with tickets and challenges keyed by `secret`
    /// (the pass secret every node shares) and the captcha service of
    /// `captcha`, if any.
    pub fn new(
        rooms: std::sync::Arc<crate::engine::room::Rooms>,
        secret: &crate::auth::Secret,
        captcha: Option<&CaptchaSettings>,
        rates: Option<std::sync::Arc<dyn crate::backend::limits::RateStore>>,
    ) -> Self {
        Self {
            rooms,
            tickets: std::sync::Arc::new(Tickets::new(secret)),
            challenges: std::sync::Arc::new(Challenges::new(secret)),
            captcha: captcha.map(|c| std::sync::Arc::new(CaptchaVerifier::new(c.clone()))),
            rates,
        }
    }
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

    /// The standard pipeline: window, sold-out flag (both pure, so the
    /// fast lane may answer them), then the sale's front door (the waiting
    /// room's pass, the ticket, the proof of work), then the rate limits
    /// (per buyer, IP and sale, when `settings` set one; cluster-wide with
    /// `gear.rates`), one purchase in flight, and the captcha last (the
    /// only remote call). Front-door checks pass a sale that does not ask
    /// for them.
    pub fn standard(settings: &EngineSettings, gear: &Gear) -> Self {
        let mut checks: Vec<Box<dyn Check>> = vec![Box::new(SaleWindow), Box::new(SoldOutFlag)];
        checks.push(Box::new(RoomPass::new(gear.rooms.clone())));
        checks.push(Box::new(TicketCheck::new(gear.tickets.clone())));
        checks.push(Box::new(PowCheck::new(gear.challenges.clone())));
        if let Some(limit) = RateLimits::new(settings, gear.rates.clone()) {
            checks.push(Box::new(limit));
        }
        checks.push(Box::new(InFlightCheck::default()));
        checks.push(Box::new(CaptchaCheck::new(gear.captcha.clone())));
        Self::new(checks)
    }

    /// Runs every check in order, awaiting the verifications they ask
    /// for; the first refusal wins (and releases the holds taken so far).
    ///
    /// # Errors
    /// The first check's [`Refusal`].
    pub async fn admit(&self, attempt: &Attempt<'_>) -> Result<Admitted, Refusal> {
        let mut admitted = Admitted::default();
        for check in &self.checks {
            match check.check(attempt)? {
                Pass::Through => {}
                Pass::Hold(hold) => admitted.holds.push(hold),
                Pass::Verify(verification) => verification.await?,
            }
        }
        Ok(admitted)
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
        Attempt::new(rt, "u", 1, crate::domain::now_ms())
    }

    fn admit(a: &Admission, attempt: &Attempt<'_>) -> Result<(), Refusal> {
        futures::executor::block_on(a.admit(attempt)).map(drop)
    }

    #[test]
    fn checks_run_in_order_and_the_first_refusal_wins() {
        let settings = EngineSettings {
            user_rate_per_sec: 1,
            user_burst: 1,
            node_id: 0,
            ..EngineSettings::default()
        };
        let a = Admission::standard(&settings, &Gear::in_memory());
        let upcoming = runtime(0, 60_000);
        // Sold out and not started: the window is checked first.
        assert_eq!(
            admit(&a, &attempt(&upcoming)).unwrap_err().reason,
            Rejection::NotStarted
        );
        let open = runtime(5, -1000);
        assert_eq!(admit(&a, &attempt(&open)), Ok(()));
        let limited = admit(&a, &attempt(&open)).unwrap_err();
        assert_eq!(limited.reason, Rejection::RateLimited);
        assert!(limited.retry_after_secs.unwrap() >= 1);
    }

    #[test]
    fn the_standard_order_puts_the_remote_call_last() {
        let settings = EngineSettings::default();
        let a = Admission::standard(&settings, &Gear::in_memory());
        assert_eq!(
            format!("{a:?}"),
            r#"["window", "sold_out_flag", "room_pass", "ticket", "pow", "rate_limits", "in_flight", "captcha"]"#
        );
        let plain = runtime(5, -1000);
        assert_eq!(admit(&a, &attempt(&plain)), Ok(()));
    }

    #[test]
    fn the_early_answer_never_consumes_a_rate_token() {
        let settings = EngineSettings {
            user_rate_per_sec: 1,
            user_burst: 1,
            node_id: 0,
            ..EngineSettings::default()
        };
        let a = Admission::standard(&settings, &Gear::in_memory());
        let open = runtime(5, -1000);
        for _ in 0..10 {
            assert_eq!(a.refuse_early(&attempt(&open)), None);
        }
        assert_eq!(admit(&a, &attempt(&open)), Ok(()));
        let sold_out = runtime(0, -1000);
        assert_eq!(
            a.refuse_early(&attempt(&sold_out)).map(|r| r.reason),
            Some(Rejection::SoldOut)
        );
    }
}
