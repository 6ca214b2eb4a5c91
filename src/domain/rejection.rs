//! The one vocabulary of purchase rejections.
//!
//! A purchase that is refused for a business reason (sold out, over the
//! per-user limit, outside the window, too fast) is a value of
//! [`Rejection`], not an error. Everything that names a rejection derives it
//! from here: the HTTP status, code, message and pre-rendered body
//! (`http::error`), the metric label (`engine::metrics`), the answer an
//! idempotency key replays (`engine::idempotency`), the stats counters, and
//! the one-letter codes of the Redis purchase script (`backend::redis`).
//! Adding a rejection is one variant and one row of [`Rejection::spec`].

/// A business reason to refuse a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Fewer units left than asked for.
    SoldOut,
    /// The buyer would hold more than the per-user limit.
    LimitReached,
    /// Before the sale's start.
    NotStarted,
    /// At or after the sale's end.
    Ended,
    /// Over the buyer's request rate; the answer carries `Retry-After`.
    RateLimited,
    /// The sale's waiting room is on and the request has no valid
    /// admission pass for this buyer.
    PassRequired,
    /// The sale asks for a purchase ticket and the request has no valid one.
    TicketRequired,
    /// The sale asks for a solved proof-of-work challenge and the request
    /// has no valid one.
    ChallengeRequired,
    /// The sale asks for a captcha and the verify service did not accept
    /// the request's token.
    CaptchaRequired,
    /// Another purchase by this buyer for this sale is still in flight.
    InFlight,
}

/// Everything one rejection is spelled as.
#[derive(Debug)]
pub struct Spec {
    /// The HTTP status.
    pub status: u16,
    /// The machine-readable code, also the metric label and stats key.
    pub code: &'static str,
    /// Human text.
    pub message: &'static str,
    /// The contract's error body, rendered at compile time.
    pub body: &'static str,
    /// The letter the Redis purchase script answers (`0` for none: the
    /// script never decides that rejection).
    pub script_code: u8,
    /// Whether a keyed purchase remembers this answer under its key (a
    /// window or rate answer is not remembered: a retry once the sale opens
    /// or the buyer slows down deserves a real try).
    pub recorded: bool,
}

/// Builds a [`Spec`] with its body rendered from code and message.
macro_rules! spec {
    ($status:literal, $code:literal, $message:literal, $script:literal, $recorded:literal) => {
        Spec {
            status: $status,
            code: $code,
            message: $message,
            body: concat!(
                r#"{"error":{"code":""#,
                $code,
                r#"","message":""#,
                $message,
                r#""}}"#
            ),
            script_code: $script,
            recorded: $recorded,
        }
    };
}

const SOLD_OUT: Spec = spec!(409, "sold_out", "sold out", b'S', true);
const LIMIT_REACHED: Spec = spec!(
    409,
    "limit_reached",
    "per-user limit reached for this sale",
    b'L',
    true
);
const NOT_STARTED: Spec = spec!(403, "not_started", "the sale has not started", b'N', false);
const ENDED: Spec = spec!(403, "ended", "the sale has ended", b'E', false);
const RATE_LIMITED: Spec = spec!(
    429,
    "rate_limited",
    "too many requests; slow down",
    0,
    false
);
const PASS_REQUIRED: Spec = spec!(
    403,
    "pass_required",
    "the sale has a waiting room: join it and buy with its admission pass",
    0,
    false
);
const TICKET_REQUIRED: Spec = spec!(
    403,
    "ticket_required",
    "a valid purchase ticket for this sale is required",
    0,
    false
);
const CHALLENGE_REQUIRED: Spec = spec!(
    403,
    "challenge_required",
    "a solved proof-of-work challenge for this sale is required",
    0,
    false
);
const CAPTCHA_REQUIRED: Spec = spec!(
    403,
    "captcha_required",
    "a valid captcha token is required",
    0,
    false
);
const IN_FLIGHT: Spec = spec!(
    409,
    "in_flight",
    "a purchase by this buyer for this sale is already in flight",
    0,
    false
);

impl Rejection {
    /// Every rejection, in [`Rejection::index`] order.
    pub const ALL: [Self; 10] = [
        Self::SoldOut,
        Self::LimitReached,
        Self::NotStarted,
        Self::Ended,
        Self::RateLimited,
        Self::PassRequired,
        Self::TicketRequired,
        Self::ChallengeRequired,
        Self::CaptchaRequired,
        Self::InFlight,
    ];

    /// How it is spelled everywhere.
    pub const fn spec(self) -> &'static Spec {
        match self {
            Self::SoldOut => &SOLD_OUT,
            Self::LimitReached => &LIMIT_REACHED,
            Self::NotStarted => &NOT_STARTED,
            Self::Ended => &ENDED,
            Self::RateLimited => &RATE_LIMITED,
            Self::PassRequired => &PASS_REQUIRED,
            Self::TicketRequired => &TICKET_REQUIRED,
            Self::ChallengeRequired => &CHALLENGE_REQUIRED,
            Self::CaptchaRequired => &CAPTCHA_REQUIRED,
            Self::InFlight => &IN_FLIGHT,
        }
    }

    /// The machine-readable code (`sold_out`, …).
    pub const fn code(self) -> &'static str {
        self.spec().code
    }

    /// Position in [`Rejection::ALL`], for per-rejection counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The rejection a Redis script letter stands for.
    pub fn from_script_code(letter: u8) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.spec().script_code != 0 && r.spec().script_code == letter)
    }

    /// The rejection with this code.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_say_what_code_and_message_say() {
        for r in Rejection::ALL {
            let s = r.spec();
            let body: serde_json::Value = serde_json::from_str(s.body).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"error": {"code": s.code, "message": s.message}})
            );
            assert_eq!(Rejection::ALL[r.index()], r);
            assert_eq!(Rejection::from_code(s.code), Some(r));
        }
    }

    #[test]
    fn script_letters_are_unique_and_round_trip() {
        let letters: Vec<u8> = Rejection::ALL
            .iter()
            .map(|r| r.spec().script_code)
            .filter(|&c| c != 0)
            .collect();
        let mut unique = letters.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), letters.len());
        for r in Rejection::ALL {
            let c = r.spec().script_code;
            if c != 0 {
                assert_eq!(Rejection::from_script_code(c), Some(r));
            }
        }
        // The script's own letters for "accepted", "replay", "unseeded".
        for c in [b'A', b'R', b'U'] {
            assert_eq!(Rejection::from_script_code(c), None);
        }
    }
}
