//! The roles a node runs (`flashsale serve --roles`).

/// The roles a node runs (`--roles`): in the distributed mode API nodes and
/// order writers scale apart. Every role is safe on any number of nodes at
/// once (competing consumers, idempotent relay, compare-and-set repairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // four independent switches
pub struct Roles {
    /// The public HTTP API, with the stock watcher (sold-out flags, the
    /// shared clock, re-seeding a sale Redis lost), the buyers' event
    /// streams and the waiting rooms.
    pub api: bool,
    /// The order writer: consumes the order queue into the database.
    pub writer: bool,
    /// The outbox relay (orders decided in Redis whose publish was never
    /// confirmed) and the webhook dispatcher.
    pub relay: bool,
    /// The expiry sweeper and the reconciler (drift, writer lag, lost
    /// returns).
    pub reconciler: bool,
}

impl Roles {
    /// Every role: the default, and the only choice of the embedded mode.
    pub const ALL: Self = Self {
        api: true,
        writer: true,
        relay: true,
        reconciler: true,
    };

    const NONE: Self = Self {
        api: false,
        writer: false,
        relay: false,
        reconciler: false,
    };

    /// Parses `all` or a comma-separated list of `api`, `writer`, `relay`,
    /// `reconciler`.
    ///
    /// # Errors
    /// An unknown or empty role list.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut roles = Self::NONE;
        for part in s.split(',').map(str::trim) {
            match part {
                "all" => roles = Self::ALL,
                "api" => roles.api = true,
                "writer" => roles.writer = true,
                "relay" => roles.relay = true,
                "reconciler" => roles.reconciler = true,
                other => {
                    return Err(format!(
                        "unknown role {other:?}: expected all, api, writer, relay or reconciler"
                    ))
                }
            }
        }
        if roles == Self::NONE {
            return Err("no role given".into());
        }
        Ok(roles)
    }

    /// True when every role runs here.
    pub fn is_all(self) -> bool {
        self == Self::ALL
    }
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        let names = [
            (self.api, "api"),
            (self.writer, "writer"),
            (self.relay, "relay"),
            (self.reconciler, "reconciler"),
        ];
        let list: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&list.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::Roles;

    #[test]
    fn parses_lists_and_all() {
        assert_eq!(Roles::parse("all"), Ok(Roles::ALL));
        let r = Roles::parse("writer, relay").unwrap();
        assert!(!r.api && r.writer && r.relay && !r.reconciler);
        assert_eq!(r.to_string(), "writer,relay");
        assert_eq!(Roles::parse("api,writer,relay,reconciler"), Ok(Roles::ALL));
        assert_eq!(Roles::ALL.to_string(), "all");
    }

    #[test]
    fn refuses_unknown_and_empty() {
        assert!(Roles::parse("api,cook").unwrap_err().contains("cook"));
        assert!(Roles::parse("").is_err());
    }
}
