//! A sale's front door: the optional admission steps a shop turns on per
//! sale (a waiting room, a purchase ticket, a proof-of-work challenge, an
//! external captcha, one purchase in flight per buyer).
//!
//! Everything is off by default, so a sale created with the contract's
//! fields alone behaves exactly as the contract says. The options are sent
//! as the `front_door` object of `POST /api/v1/sales`, stored with the sale
//! (one JSON text column, so a new option needs no schema migration) and
//! shown in the sale's body.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ValidationError;

/// Largest proof-of-work difficulty, in leading zero bits (2^28 hashes is
/// seconds of a phone's CPU; more would lock real buyers out).
pub const MAX_POW_BITS: u8 = 28;
/// Fastest admission rate a waiting room may be set to, per second.
pub const MAX_ADMIT_PER_SEC: u32 = 1_000_000;
/// Longest life of an admission pass, seconds.
pub const MAX_PASS_TTL_SECS: u32 = 3_600;

/// The per-sale admission options. `Default` is every option off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FrontDoor {
    /// A waiting room in front of the purchase, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_room: Option<WaitingRoom>,
    /// Purchase requires a ticket from `GET /api/v1/sales/{id}/ticket`
    /// (handed out only from `starts_at`).
    pub ticket: bool,
    /// Purchase requires a solved proof-of-work challenge with this many
    /// leading zero bits (0 = off).
    #[schema(maximum = 28)]
    pub pow_bits: u8,
    /// Purchase requires a captcha token the configured verify URL accepts.
    pub captcha: bool,
    /// At most one purchase by a buyer in flight at a time: a double click
    /// is answered once.
    pub one_in_flight: bool,
}

/// A waiting room's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoom {
    /// Buyers admitted per second.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub admit_per_sec: u32,
    /// How long an admission pass stays valid, seconds.
    #[serde(default = "default_pass_ttl")]
    #[schema(minimum = 1, maximum = 3600)]
    pub pass_ttl_secs: u32,
}

fn default_pass_ttl() -> u32 {
    60
}

impl FrontDoor {
    /// Reads the optional `front_door` field of a sale request.
    ///
    /// # Errors
    /// A [`ValidationError`] on `front_door` saying what is wrong.
    pub fn parse(value: Option<&Value>) -> Result<Self, ValidationError> {
        let value = match value {
            None | Some(Value::Null) => return Ok(Self::default()),
            Some(v @ Value::Object(_)) => v,
            Some(_) => return Err(ValidationError::new("front_door", "must be a JSON object")),
        };
        let door: Self = serde_json::from_value(value.clone())
            .map_err(|e| ValidationError::new("front_door", e.to_string()))?;
        door.validate()?;
        Ok(door)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.pow_bits > MAX_POW_BITS {
            return Err(ValidationError::new(
                "front_door",
                format!("pow_bits: must be in 0..={MAX_POW_BITS}"),
            ));
        }
        if let Some(room) = &self.waiting_room {
            if !(1..=MAX_ADMIT_PER_SEC).contains(&room.admit_per_sec) {
                return Err(ValidationError::new(
                    "front_door",
                    format!("waiting_room.admit_per_sec: must be in 1..={MAX_ADMIT_PER_SEC}"),
                ));
            }
            if !(1..=MAX_PASS_TTL_SECS).contains(&room.pass_ttl_secs) {
                return Err(ValidationError::new(
                    "front_door",
                    format!("waiting_room.pass_ttl_secs: must be in 1..={MAX_PASS_TTL_SECS}"),
                ));
            }
        }
        Ok(())
    }

    /// True when every option is off (the contract's plain sale).
    pub fn is_open(&self) -> bool {
        *self == Self::default()
    }

    /// The stored form: `None` for a plain sale, else compact JSON.
    pub fn to_stored(&self) -> Option<String> {
        (!self.is_open()).then(|| serde_json::to_string(self).unwrap_or_default())
    }

    /// Reads the stored form back; a value this version cannot read (written
    /// by a newer one) counts as every option on that it names and is
    /// logged, never silently dropped to "all off".
    pub fn from_stored(stored: Option<&str>) -> Self {
        match stored {
            None | Some("") => Self::default(),
            Some(s) => serde_json::from_str(s).unwrap_or_else(|e| {
                tracing::error!(error = %e, stored = s, "unreadable front-door options; closing the sale's door");
                Self {
                    ticket: true,
                    ..Self::default()
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_is_all_off_and_stores_nothing() {
        let d = FrontDoor::parse(None).unwrap();
        assert!(d.is_open());
        assert_eq!(d.to_stored(), None);
        assert_eq!(FrontDoor::from_stored(None), d);
    }

    #[test]
    fn options_round_trip_through_storage() {
        let d = FrontDoor::parse(Some(&json!({
            "waiting_room": {"admit_per_sec": 100},
            "ticket": true,
            "pow_bits": 12,
            "one_in_flight": true
        })))
        .unwrap();
        assert_eq!(d.waiting_room.unwrap().pass_ttl_secs, 60);
        let stored = d.to_stored().unwrap();
        assert_eq!(FrontDoor::from_stored(Some(&stored)), d);
    }

    #[test]
    fn bad_options_name_the_field() {
        for bad in [
            json!(5),
            json!({"ticket": "yes"}),
            json!({"pow_bits": 40}),
            json!({"waiting_room": {"admit_per_sec": 0}}),
            json!({"waiting_room": {}}),
            json!({"unknown": true}),
        ] {
            let e = FrontDoor::parse(Some(&bad)).unwrap_err();
            assert_eq!(e.field, "front_door", "{bad}");
        }
    }
}
