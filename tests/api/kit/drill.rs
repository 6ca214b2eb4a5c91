//! The fault drills' reports: what each drill measured, read from the
//! database itself, written as one JSON file per drill under
//! `$FLASHSALE_DRILL_DIR` (nothing is written when it is unset).
//! `scripts/drills.sh` runs the drills and turns the files into
//! docs/RELIABILITY.md. The drills assert the same invariants they report:
//! a report is only written by a drill that held them.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::backends::StoredOrder;

/// One drill's figures.
#[derive(Debug, Serialize)]
pub struct DrillReport {
    /// The test that ran it.
    pub drill: &'static str,
    /// `embedded` or `distributed`.
    pub mode: &'static str,
    /// The fault, in words.
    pub fault: String,
    /// `201`s over the whole drill.
    pub accepted: usize,
    /// `201`s while the fault lasted.
    pub accepted_during: usize,
    /// `503`s (or no answer) while the fault lasted: refused, nothing taken.
    pub refused_during: usize,
    /// From the end of the fault to the first `201` after it, ms (`None`:
    /// the drill sells on through the fault, or nothing was left to sell).
    pub recovered_ms: Option<u64>,
    /// Orders the database holds for the sale.
    pub stored: usize,
    /// `201`s the database does not hold.
    pub lost: usize,
    /// Order ids stored more than once.
    pub duplicated: usize,
    /// Units held (pending or paid) beyond the stock.
    pub oversold: u64,
    /// Buyers holding more than the limit.
    pub over_limit: usize,
    /// Units the stock counts as sold that the database does not hold, once
    /// settled (`None` where there is no separate stock count).
    pub leaked: Option<i64>,
}

impl DrillReport {
    /// A report from the rows the database holds and the `201`s
    /// (`(order id, buyer)`) the buyers were given.
    pub fn from_rows(
        drill: &'static str,
        mode: &'static str,
        fault: impl Into<String>,
        rows: &[StoredOrder],
        accepted: &[(String, String)],
        stock: u64,
        limit: u64,
    ) -> Self {
        let holding: Vec<&StoredOrder> = rows
            .iter()
            .filter(|r| r.status == "pending_payment" || r.status == "paid")
            .collect();
        let units: u64 = holding.iter().map(|r| r.quantity).sum();
        let mut per_user: HashMap<&str, u64> = HashMap::new();
        for r in &holding {
            *per_user.entry(r.user_id.as_str()).or_default() += r.quantity;
        }
        let mut seen = HashSet::new();
        let duplicated = rows.iter().filter(|r| !seen.insert(r.order_id)).count();
        let stored: HashSet<String> = rows.iter().map(|r| r.order_id.to_string()).collect();
        Self {
            drill,
            mode,
            fault: fault.into(),
            accepted: accepted.len(),
            accepted_during: 0,
            refused_during: 0,
            recovered_ms: None,
            stored: rows.len(),
            lost: accepted
                .iter()
                .filter(|(id, _)| !stored.contains(id))
                .count(),
            duplicated,
            oversold: units.saturating_sub(stock),
            over_limit: per_user.values().filter(|&&n| n > limit).count(),
            leaked: None,
        }
    }

    /// Writes the report where `scripts/drills.sh` collects them.
    pub fn write(&self) {
        let Some(dir) = std::env::var_os("FLASHSALE_DRILL_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("creating the drill report directory");
        let path = dir.join(format!("{}.json", self.drill));
        std::fs::write(&path, serde_json::to_vec_pretty(self).unwrap())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// A drill's answers over time: `(ms since the start, status)`; status 0
/// for no answer.
pub type Timeline = [(u64, u16)];

/// Answers with `status` in `window` (ms).
pub fn answers(timeline: &Timeline, window: std::ops::Range<u64>, status: u16) -> usize {
    timeline
        .iter()
        .filter(|(t, s)| window.contains(t) && *s == status)
        .count()
}

/// From `from` (ms) to the first `201` at or after it.
pub fn first_sale_after(timeline: &Timeline, from: u64) -> Option<u64> {
    timeline
        .iter()
        .filter(|(t, s)| *t >= from && *s == 201)
        .map(|(t, _)| t - from)
        .min()
}

/// Every order of `sale_id` in the embedded store under `data_dir`, read
/// from its SQLite file (the WAL lets this reader in beside a running
/// server).
pub fn sqlite_orders(data_dir: &std::path::Path, sale_id: &str) -> Vec<StoredOrder> {
    let path = data_dir.join("flashsale.db");
    let db =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let sale: i64 = sale_id.parse().expect("a sale id");
    let mut stmt = db
        .prepare("SELECT order_id, user_id, quantity, status FROM orders WHERE sale_id = ?1")
        .unwrap();
    stmt.query_map([sale], |r| {
        Ok(StoredOrder {
            order_id: r.get::<_, i64>(0)? as u64,
            user_id: r.get(1)?,
            quantity: r.get::<_, i64>(2)? as u64,
            status: r.get(3)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}
