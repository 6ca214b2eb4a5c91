//! A sale: N units of one item on sale in a time window, with a per-user limit.

use std::sync::atomic::{AtomicI64, Ordering};

use serde::Serialize;
use serde_json::{Map, Value};

use super::front_door::FrontDoor;
use super::{Rejection, ValidationError};

/// Largest stock one sale may offer (contract: 1..10^9).
pub const MAX_STOCK: u64 = 1_000_000_000;
/// Longest item name, in characters.
pub const MAX_ITEM_CHARS: usize = 200;
/// Longest payment window: 30 days.
pub const MAX_PAYMENT_WINDOW_SECS: u64 = 30 * 24 * 3600;
/// Most stock buckets one sale may be split into (see
/// [`crate::backend::redis`]: one bucket per Redis Cluster shard).
pub const MAX_BUCKETS: u8 = 16;

/// A validated request to create a sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSale {
    /// What is on sale.
    pub item: String,
    /// Units on offer.
    pub stock: u64,
    /// Most units one user may hold.
    pub per_user_limit: u32,
    /// Opening time, epoch ms.
    pub starts_at_ms: i64,
    /// Closing time, epoch ms (exclusive), if any.
    pub ends_at_ms: Option<i64>,
    /// Unpaid orders expire after this many seconds, if set.
    pub payment_window_secs: Option<u64>,
    /// The optional admission steps (all off by default).
    pub front_door: FrontDoor,
    /// Stock buckets in a shared stock (1..=16, default 1): the sale's stock
    /// split over that many Redis hash tags, so one hot sale spreads over
    /// several Redis Cluster shards. The embedded stock ignores it.
    pub buckets: u8,
}

impl NewSale {
    /// Validates the JSON body of `POST /api/v1/sales`.
    ///
    /// Unknown fields are ignored so shops can send richer bodies; every known
    /// field is checked for type and range, and the error names the field.
    ///
    /// # Errors
    /// A [`ValidationError`] naming the first field at fault.
    pub fn parse(body: &Value) -> Result<Self, ValidationError> {
        let obj = body
            .as_object()
            .ok_or_else(|| ValidationError::new("body", "must be a JSON object"))?;
        let item = match obj.get("item") {
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(_) => return Err(ValidationError::new("item", "must be a string")),
            None => return Err(ValidationError::new("item", "is required")),
        };
        let chars = item.chars().count();
        if chars == 0 || chars > MAX_ITEM_CHARS {
            return Err(ValidationError::new("item", "must be 1..200 characters"));
        }
        let stock =
            int_field(obj, "stock")?.ok_or_else(|| ValidationError::new("stock", "is required"))?;
        if !(1..=MAX_STOCK).contains(&stock) {
            return Err(ValidationError::new(
                "stock",
                "must be an integer in 1..=1000000000",
            ));
        }
        let per_user_limit = int_field(obj, "per_user_limit")?.unwrap_or(1);
        if per_user_limit == 0 || per_user_limit > u64::from(u32::MAX) {
            return Err(ValidationError::new(
                "per_user_limit",
                "must be an integer >= 1",
            ));
        }
        let starts_at_ms = time_field(obj, "starts_at")?
            .ok_or_else(|| ValidationError::new("starts_at", "is required (RFC 3339)"))?;
        let ends_at_ms = time_field(obj, "ends_at")?;
        if let Some(ends) = ends_at_ms {
            if ends <= starts_at_ms {
                return Err(ValidationError::new("ends_at", "must be after starts_at"));
            }
        }
        let payment_window_secs = int_field(obj, "payment_window_secs")?;
        if let Some(w) = payment_window_secs {
            if w == 0 || w > MAX_PAYMENT_WINDOW_SECS {
                return Err(ValidationError::new(
                    "payment_window_secs",
                    "must be an integer in 1..=2592000",
                ));
            }
        }
        let front_door = FrontDoor::parse(obj.get("front_door"))?;
        let buckets = int_field(obj, "buckets")?.unwrap_or(1);
        if !(1..=u64::from(MAX_BUCKETS)).contains(&buckets) {
            return Err(ValidationError::new(
                "buckets",
                "must be an integer in 1..=16",
            ));
        }
        Ok(Self {
            item,
            stock,
            per_user_limit: per_user_limit as u32,
            starts_at_ms,
            ends_at_ms,
            payment_window_secs,
            front_door,
            buckets: buckets as u8,
        })
    }
}

/// Reads an optional non-negative integer field; `null` counts as absent.
fn int_field(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<u64>, ValidationError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| ValidationError::new(field, "must be a non-negative integer")),
        Some(_) => Err(ValidationError::new(field, "must be an integer")),
    }
}

/// Reads an optional RFC 3339 timestamp field as epoch milliseconds.
fn time_field(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<i64>, ValidationError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|_| ValidationError::new(field, "must be an RFC 3339 time")),
        Some(_) => Err(ValidationError::new(
            field,
            "must be an RFC 3339 time string",
        )),
    }
}

/// A sale as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    /// Unique id.
    pub id: u64,
    /// What is on sale.
    pub item: String,
    /// Units on offer.
    pub stock: u64,
    /// Most units one user may hold.
    pub per_user_limit: u32,
    /// Opening time, epoch ms.
    pub starts_at_ms: i64,
    /// Closing time, epoch ms (exclusive), if any.
    pub ends_at_ms: Option<i64>,
    /// Unpaid orders expire after this many seconds, if set.
    pub payment_window_secs: Option<u64>,
    /// Creation time, epoch ms.
    pub created_at_ms: i64,
    /// The optional admission steps.
    pub front_door: FrontDoor,
    /// Stock buckets in a shared stock (1..=16; see [`NewSale::buckets`]).
    pub buckets: u8,
}

impl Sale {
    /// A stored sale from a validated request.
    pub fn from_new(id: u64, new: NewSale, created_at_ms: i64) -> Self {
        Self {
            id,
            item: new.item,
            stock: new.stock,
            per_user_limit: new.per_user_limit,
            starts_at_ms: new.starts_at_ms,
            ends_at_ms: new.ends_at_ms,
            payment_window_secs: new.payment_window_secs,
            created_at_ms,
            front_door: new.front_door,
            buckets: new.buckets,
        }
    }

    /// The sale's window as stored.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            starts_at_ms: self.starts_at_ms,
            ends_at_ms: self.ends_at_ms,
        }
    }

    /// The same sale with its window moved to `schedule`.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.starts_at_ms = schedule.starts_at_ms;
        self.ends_at_ms = schedule.ends_at_ms;
        self
    }

    // No `window` / `status` here: the stored window may have moved since
    // (an admin opened or closed the sale). The live one is
    // `SaleRuntime::window` / `status`; the stored one is `schedule()`.
}

/// A sale's window: opening time and (exclusive) closing time, epoch ms.
///
/// Fixed at creation unless an admin opens or closes the sale early
/// ([`Schedule::open_now`], [`Schedule::close_now`]); those moves only ever
/// bring a time forward to "now", so a window never grows at its end and a
/// closed sale never reopens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Opening time, epoch ms.
    pub starts_at_ms: i64,
    /// Closing time, epoch ms (exclusive), if any.
    pub ends_at_ms: Option<i64>,
}

impl Schedule {
    /// Where `now_ms` falls relative to the window.
    pub fn window(&self, now_ms: i64) -> Window {
        if now_ms < self.starts_at_ms {
            Window::Upcoming
        } else if self.ends_at_ms.is_some_and(|end| now_ms >= end) {
            Window::Ended
        } else {
            Window::Open
        }
    }

    /// The buyer-facing status given the units left.
    pub fn status(&self, now_ms: i64, remaining: u64) -> SaleStatus {
        match self.window(now_ms) {
            Window::Upcoming => SaleStatus::Upcoming,
            Window::Ended => SaleStatus::Ended,
            Window::Open if remaining == 0 => SaleStatus::SoldOut,
            Window::Open => SaleStatus::Open,
        }
    }

    /// The window once an admin opens the sale at `now_ms`: an upcoming
    /// sale starts now, an open one is unchanged.
    ///
    /// # Errors
    /// [`Rejection::Ended`] for a sale whose window has closed (opening it
    /// again would sell outside the window buyers were told about).
    pub fn open_now(self, now_ms: i64) -> Result<Self, Rejection> {
        match self.window(now_ms) {
            Window::Upcoming => Ok(Self {
                starts_at_ms: now_ms,
                ..self
            }),
            Window::Open => Ok(self),
            Window::Ended => Err(Rejection::Ended),
        }
    }

    /// The window once an admin closes the sale at `now_ms`: it ends now if
    /// it ended later or never; an ended sale is unchanged. An upcoming sale
    /// also "starts" now, so the window is empty (`starts_at == ends_at`)
    /// and reads as ended rather than upcoming.
    pub fn close_now(self, now_ms: i64) -> Self {
        match self.window(now_ms) {
            Window::Ended => self,
            Window::Upcoming | Window::Open => Self {
                starts_at_ms: self.starts_at_ms.min(now_ms),
                ends_at_ms: Some(now_ms),
            },
        }
    }
}

/// A sale's window as every check on one node reads it, in two atomics: the
/// purchase path pays two loads, no lock and no allocation.
///
/// Every legitimate move of a window only brings its times earlier (see
/// [`Schedule`]), so [`LiveSchedule::advance`] keeps the earlier of each
/// time: a stale reading (a mirror read from the shared stock just before
/// a move) cannot undo a move. The end is moved before the start and read
/// after it, so a reader that sees a new start also sees the new end; one
/// that sees the old start may pair it with the new end, and that window
/// lies inside both the old and the new one — a torn read never admits a
/// purchase outside the window.
#[derive(Debug)]
pub struct LiveSchedule {
    starts_at_ms: AtomicI64,
    /// `i64::MAX` for "no end".
    ends_at_ms: AtomicI64,
}

impl LiveSchedule {
    /// Starts at `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        Self {
            starts_at_ms: AtomicI64::new(schedule.starts_at_ms),
            ends_at_ms: AtomicI64::new(schedule.ends_at_ms.unwrap_or(i64::MAX)),
        }
    }

    /// The window now.
    pub fn get(&self) -> Schedule {
        let starts_at_ms = self.starts_at_ms.load(Ordering::Acquire);
        let ends = self.ends_at_ms.load(Ordering::Acquire);
        Schedule {
            starts_at_ms,
            ends_at_ms: (ends != i64::MAX).then_some(ends),
        }
    }

    /// Moves each time to the earlier of the current one and `schedule`'s.
    pub fn advance(&self, schedule: Schedule) {
        self.ends_at_ms
            .fetch_min(schedule.ends_at_ms.unwrap_or(i64::MAX), Ordering::AcqRel);
        self.starts_at_ms
            .fetch_min(schedule.starts_at_ms, Ordering::AcqRel);
    }
}

/// An admin's move of a sale's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowMove {
    /// Open now (`POST /api/v1/sales/{id}/open`).
    Open,
    /// Close now (`POST /api/v1/sales/{id}/close`).
    Close,
}

impl WindowMove {
    /// `schedule` after this move at `now_ms` (see [`Schedule::open_now`],
    /// [`Schedule::close_now`]).
    ///
    /// # Errors
    /// [`Rejection::Ended`] when opening a sale that has ended.
    pub fn apply(self, schedule: Schedule, now_ms: i64) -> Result<Schedule, Rejection> {
        match self {
            Self::Open => schedule.open_now(now_ms),
            Self::Close => Ok(schedule.close_now(now_ms)),
        }
    }
}

/// Position of a moment relative to the sale window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Before `starts_at`.
    Upcoming,
    /// Between `starts_at` and `ends_at`.
    Open,
    /// At or after `ends_at`.
    Ended,
}

/// What buyers see of a sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    /// Not started yet.
    Upcoming,
    /// Buying is possible.
    Open,
    /// No units left (may reopen when an order expires or is cancelled).
    SoldOut,
    /// The window has closed.
    Ended,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({"item": "phone", "stock": 10, "starts_at": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn parses_defaults() {
        let s = NewSale::parse(&valid()).unwrap();
        assert_eq!(s.per_user_limit, 1);
        assert_eq!(s.ends_at_ms, None);
        assert_eq!(s.stock, 10);
        assert_eq!(s.buckets, 1, "one bucket unless asked: today's keys");
    }

    #[test]
    fn buckets_are_1_to_16() {
        for (k, ok) in [
            (json!(1), true),
            (json!(16), true),
            (json!(3), true),
            (json!(0), false),
            (json!(17), false),
            (json!(-1), false),
            (json!("3"), false),
            (json!(2.5), false),
        ] {
            let mut body = valid();
            body["buckets"] = k.clone();
            match NewSale::parse(&body) {
                Ok(s) => {
                    assert!(ok, "{k} accepted");
                    assert_eq!(Some(u64::from(s.buckets)), k.as_u64());
                }
                Err(e) => {
                    assert!(!ok, "{k} refused");
                    assert_eq!(e.field, "buckets");
                }
            }
        }
    }

    #[test]
    fn names_the_bad_field() {
        let cases = [
            (
                json!({"stock": 1, "starts_at": "2026-01-01T00:00:00Z"}),
                "item",
            ),
            (
                json!({"item": "", "stock": 1, "starts_at": "2026-01-01T00:00:00Z"}),
                "item",
            ),
            (
                json!({"item": "x", "stock": 0, "starts_at": "2026-01-01T00:00:00Z"}),
                "stock",
            ),
            (
                json!({"item": "x", "stock": "5", "starts_at": "2026-01-01T00:00:00Z"}),
                "stock",
            ),
            (
                json!({"item": "x", "stock": 1_000_000_001u64, "starts_at": "2026-01-01T00:00:00Z"}),
                "stock",
            ),
            (
                json!({"item": "x", "stock": 1.5, "starts_at": "2026-01-01T00:00:00Z"}),
                "stock",
            ),
            (
                json!({"item": "x", "stock": 1, "starts_at": "yesterday"}),
                "starts_at",
            ),
            (
                json!({"item": "x", "stock": 1, "per_user_limit": 0, "starts_at": "2026-01-01T00:00:00Z"}),
                "per_user_limit",
            ),
            (
                json!({"item": "x", "stock": 1, "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2025-01-01T00:00:00Z"}),
                "ends_at",
            ),
            (
                json!({"item": "x", "stock": 1, "starts_at": "2026-01-01T00:00:00Z", "payment_window_secs": -3}),
                "payment_window_secs",
            ),
            (json!([1, 2]), "body"),
        ];
        for (body, field) in cases {
            assert_eq!(NewSale::parse(&body).unwrap_err().field, field, "{body}");
        }
    }

    #[test]
    fn status_follows_window_and_stock() {
        let sale = Sale::from_new(1, NewSale::parse(&valid()).unwrap(), 0);
        let start = sale.starts_at_ms;
        let schedule = sale.schedule();
        assert_eq!(schedule.status(start - 1, 5), SaleStatus::Upcoming);
        assert_eq!(schedule.status(start, 5), SaleStatus::Open);
        assert_eq!(schedule.status(start, 0), SaleStatus::SoldOut);
    }

    #[test]
    fn open_now_starts_an_upcoming_sale_and_refuses_an_ended_one() {
        let s = Schedule {
            starts_at_ms: 1_000,
            ends_at_ms: Some(5_000),
        };
        let opened = s.open_now(400).unwrap();
        assert_eq!(opened.starts_at_ms, 400);
        assert_eq!(opened.ends_at_ms, Some(5_000));
        assert_eq!(opened.window(400), Window::Open);
        // Open: unchanged (idempotent).
        assert_eq!(opened.open_now(700), Ok(opened));
        assert_eq!(s.open_now(1_000), Ok(s));
        assert_eq!(s.open_now(5_000), Err(Rejection::Ended));
        let endless = Schedule {
            starts_at_ms: 1_000,
            ends_at_ms: None,
        };
        assert_eq!(endless.open_now(i64::MAX - 1), Ok(endless));
    }

    #[test]
    fn close_now_ends_the_window_now_and_never_reopens() {
        let open = Schedule {
            starts_at_ms: 1_000,
            ends_at_ms: None,
        };
        let closed = open.close_now(2_000);
        assert_eq!(closed.ends_at_ms, Some(2_000));
        assert_eq!(closed.starts_at_ms, 1_000);
        assert_eq!(closed.window(2_000), Window::Ended);
        assert_eq!(closed.window(1_999), Window::Open);
        // Ended: unchanged, even later (a later "close" never moves the end).
        assert_eq!(closed.close_now(9_000), closed);
        let later = Schedule {
            starts_at_ms: 1_000,
            ends_at_ms: Some(3_000),
        };
        assert_eq!(later.close_now(2_000).ends_at_ms, Some(2_000));
        // Upcoming: the window becomes empty and reads as ended, not upcoming.
        let upcoming = Schedule {
            starts_at_ms: 5_000,
            ends_at_ms: Some(6_000),
        }
        .close_now(2_000);
        assert_eq!(upcoming.starts_at_ms, 2_000);
        assert_eq!(upcoming.ends_at_ms, Some(2_000));
        assert_eq!(upcoming.window(2_000), Window::Ended);
        assert_eq!(upcoming.status(2_000, 5), SaleStatus::Ended);
        // Opening it again is refused.
        assert_eq!(
            WindowMove::Open.apply(upcoming, 2_001),
            Err(Rejection::Ended)
        );
    }

    #[test]
    fn a_live_schedule_only_moves_earlier() {
        let live = LiveSchedule::new(Schedule {
            starts_at_ms: 1_000,
            ends_at_ms: None,
        });
        assert_eq!(live.get().ends_at_ms, None);
        let closed = live.get().close_now(2_000);
        live.advance(closed);
        assert_eq!(live.get(), closed);
        // A stale reading (the window before the close) changes nothing.
        live.advance(Schedule {
            starts_at_ms: 1_000,
            ends_at_ms: None,
        });
        assert_eq!(live.get(), closed);
    }
}
