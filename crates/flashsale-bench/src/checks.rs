//! The contract's invariants, judged as pure functions over what the bench
//! collected, so that each rule can be tested without a server.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

/// An accepted order: a `201` answer that named its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// The order id from the answer.
    pub order_id: String,
    /// The buyer's number (`bench-<run id>-<user>`).
    pub user: u32,
    /// Units in the order.
    pub quantity: u64,
}

/// The figures of `GET /api/v1/sales/{id}/stats` the checks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stats {
    /// The sale's stock.
    pub stock: u64,
    /// Units in accepted orders that are not expired or cancelled.
    pub sold: u64,
    /// Units left, when the service reports them.
    pub remaining: Option<u64>,
    /// Orders already in the order store.
    pub orders_persisted: u64,
}

impl Stats {
    /// Reads the stats answer.
    ///
    /// # Errors
    /// Names the first required field that is missing or not a count.
    pub(crate) fn from_json(value: &Value) -> Result<Self, String> {
        let count = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("no `{name}` count"))
        };
        Ok(Self {
            stock: count("stock")?,
            sold: count("sold")?,
            remaining: value.get("remaining").and_then(Value::as_u64),
            orders_persisted: count("orders_persisted")?,
        })
    }
}

/// How reading accepted orders back went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Readback {
    /// Orders read back.
    pub checked: usize,
    /// Orders accepted (the sample was drawn from these).
    pub total: usize,
    /// Orders that could not be read back or disagreed.
    pub failed: usize,
    /// The first few failures.
    pub samples: Vec<String>,
}

/// One verdict of the verification.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// Stable identifier, e.g. `no_oversell`.
    pub name: &'static str,
    /// Whether the invariant held.
    pub ok: bool,
    /// The figures behind the verdict (a `note:` when nothing was proven).
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// Everything the invariants are judged on.
pub(crate) struct Evidence<'a> {
    /// Units the bench could buy: the stock less what was sold before.
    pub available: u64,
    /// The sale's stock.
    pub stock: u64,
    /// Units one buyer may hold.
    pub per_user_limit: u64,
    /// Units each purchase asked for.
    pub quantity: u64,
    /// Accepted orders that named their order id.
    pub accepted: &'a [Accepted],
    /// `201` answers without an order id.
    pub unparsed_orders: u64,
    /// Units in those.
    pub unparsed_units: u64,
    /// `201` answers that disagreed with their request.
    pub anomalies: u64,
    /// The first few of those.
    pub anomaly_samples: &'a [String],
    /// Whether any purchase was answered `409 sold_out`.
    pub sold_out_seen: bool,
    /// Purchases whose fate is unknown (transport errors, server errors).
    pub ambiguous: u64,
    /// The bench reused an existing sale (others may have bought in it).
    pub reused: bool,
    /// Stats before the load (`None`: a fresh sale, nothing sold).
    pub before: Option<Stats>,
    /// Stats after the load, or why they could not be read.
    pub after: Result<Stats, String>,
    /// How reading the accepted orders back went.
    pub readback: Readback,
}

/// Judges every invariant; the run passed when all checks are `ok`.
pub(crate) fn evaluate(e: &Evidence<'_>) -> Vec<Check> {
    let orders = u64::try_from(e.accepted.len())
        .unwrap_or(u64::MAX)
        .saturating_add(e.unparsed_orders);
    let units = e
        .accepted
        .iter()
        .map(|a| a.quantity)
        .fold(e.unparsed_units, u64::saturating_add);
    // Purchases with no definite answer may have bought up to this much more.
    let slack = e.ambiguous.saturating_mul(e.quantity);
    let unknown = if slack > 0 {
        format!(
            ", plus up to {slack} units in {} unanswered purchases",
            e.ambiguous
        )
    } else {
        String::new()
    };

    let mut checks = vec![
        Check::new(
            "no_oversell",
            units <= e.available,
            format!(
                "{units} units accepted in {orders} orders, {} available",
                e.available
            ),
        ),
        exhaustion(e, units, slack, &unknown),
        per_user(e),
        unique_orders(e.accepted),
        Check::new(
            "answers_well_formed",
            e.anomalies == 0,
            if e.anomalies == 0 {
                format!("{orders} accepted answers named their order, buyer, sale and quantity")
            } else {
                format!(
                    "{} accepted answers disagreed: {}",
                    e.anomalies,
                    e.anomaly_samples.join("; ")
                )
            },
        ),
        readback(&e.readback, e.unparsed_orders),
    ];
    checks.extend(stats(e, orders, units, slack));
    checks
}

/// Once a `sold_out` was seen, everything available must have been bought
/// (less than one purchase's worth may be left).
fn exhaustion(e: &Evidence<'_>, units: u64, slack: u64, unknown: &str) -> Check {
    if !e.sold_out_seen {
        return Check::new(
            "stock_exhausted",
            true,
            format!(
                "note: stock not exhausted (no sold_out answer); {units} of {} units bought",
                e.available
            ),
        );
    }
    // The server sold between `units` and `units + slack`; after a sold_out
    // fewer than `quantity` units may remain.
    let bought_at_most = units.saturating_add(slack);
    let ok = e.available < bought_at_most.saturating_add(e.quantity);
    let mut detail = format!(
        "sold_out seen; {units} of {} available units accepted{unknown}",
        e.available
    );
    if !ok {
        detail.push_str(&format!(
            "; {} units unsold",
            e.available.saturating_sub(bought_at_most)
        ));
    }
    Check::new("stock_exhausted", ok, detail)
}

/// Nobody holds more than the per-user limit, counting the `201` answers.
fn per_user(e: &Evidence<'_>) -> Check {
    let mut held: HashMap<u32, u64> = HashMap::new();
    for order in e.accepted {
        let units = held.entry(order.user).or_insert(0);
        *units = units.saturating_add(order.quantity);
    }
    let mut over: Vec<(u32, u64)> = held
        .iter()
        .filter(|&(_, &units)| units > e.per_user_limit)
        .map(|(&user, &units)| (user, units))
        .collect();
    over.sort_unstable();
    let most = held.values().copied().max().unwrap_or(0);
    if over.is_empty() {
        Check::new(
            "per_user_limit",
            true,
            format!(
                "{} buyers, at most {most} units each (limit {})",
                held.len(),
                e.per_user_limit
            ),
        )
    } else {
        let examples: Vec<String> = over
            .iter()
            .take(5)
            .map(|(user, units)| format!("user {user} holds {units}"))
            .collect();
        Check::new(
            "per_user_limit",
            false,
            format!(
                "{} buyers over the limit of {}: {}",
                over.len(),
                e.per_user_limit,
                examples.join(", ")
            ),
        )
    }
}

/// No order id was handed out twice.
fn unique_orders(accepted: &[Accepted]) -> Check {
    let mut seen = HashSet::with_capacity(accepted.len());
    let mut duplicates: Vec<&str> = accepted
        .iter()
        .map(|a| a.order_id.as_str())
        .filter(|id| !seen.insert(*id))
        .collect();
    duplicates.sort_unstable();
    duplicates.dedup();
    if duplicates.is_empty() {
        Check::new(
            "unique_orders",
            true,
            format!("{} distinct order ids", accepted.len()),
        )
    } else {
        let examples: Vec<&str> = duplicates.iter().copied().take(5).collect();
        Check::new(
            "unique_orders",
            false,
            format!(
                "{} order ids answered more than once: {}",
                duplicates.len(),
                examples.join(", ")
            ),
        )
    }
}

/// Every accepted order (or the sample) reads back as its owner's.
fn readback(r: &Readback, unparsed_orders: u64) -> Check {
    let scope = if r.checked < r.total {
        format!(
            "a random sample of {} of {} accepted orders",
            r.checked, r.total
        )
    } else {
        format!("all {} accepted orders", r.total)
    };
    let mut detail = if r.failed == 0 {
        format!("{scope} read back by their owners")
    } else {
        format!(
            "{} of {} orders read back failed ({scope}): {}",
            r.failed,
            r.checked,
            r.samples.join("; ")
        )
    };
    if unparsed_orders > 0 {
        detail.push_str(&format!(
            "; {unparsed_orders} accepted orders had no id to read back"
        ));
    }
    Check::new(
        "orders_readable",
        r.failed == 0 && unparsed_orders == 0,
        detail,
    )
}

/// The service's own stats agree with what the bench saw.
fn stats(e: &Evidence<'_>, orders: u64, units: u64, slack: u64) -> Vec<Check> {
    let after = match &e.after {
        Ok(after) => after,
        Err(why) => return vec![Check::new("stats_readable", false, why.clone())],
    };
    let (sold_before, persisted_before) = e
        .before
        .as_ref()
        .map_or((0, 0), |b| (b.sold, b.orders_persisted));
    let others = if e.reused {
        " (reused sale: other buyers would show here too)"
    } else {
        ""
    };
    let mut checks = vec![
        Check::new(
            "stats_sold_within_stock",
            after.sold <= after.stock && after.stock == e.stock,
            format!(
                "sold {} of stock {} (sale stock {})",
                after.sold, after.stock, e.stock
            ),
        ),
        Check::new(
            "stats_remaining",
            after
                .remaining
                .is_none_or(|r| Some(r) == after.stock.checked_sub(after.sold)),
            match after.remaining {
                Some(r) => format!(
                    "remaining {r} = stock {} - sold {}",
                    after.stock, after.sold
                ),
                None => "note: the stats carry no remaining figure".to_owned(),
            },
        ),
    ];
    let sold = after.sold.saturating_sub(sold_before);
    checks.push(Check::new(
        "stats_sold_matches",
        units <= sold && sold <= units.saturating_add(slack),
        if slack > 0 {
            format!("service sold {sold} units, bench saw {units} accepted (+ up to {slack} unanswered){others}")
        } else {
            format!("service sold {sold} units, bench saw {units} accepted{others}")
        },
    ));
    let persisted = after.orders_persisted.saturating_sub(persisted_before);
    checks.push(Check::new(
        "stats_orders_persisted",
        persisted >= orders,
        format!("{persisted} orders persisted, {orders} accepted{others}"),
    ));
    checks
}

/// Compares an order read back (`GET /api/v1/orders/{id}`) with the
/// accepted order it should be.
///
/// # Errors
/// What disagrees.
pub(crate) fn compare_order(
    value: &Value,
    order: &Accepted,
    owner: &str,
    sale_id: &str,
) -> Result<(), String> {
    let mut problems = Vec::new();
    match value.get("order_id").and_then(json_id) {
        Some(id) if id == order.order_id => {}
        other => problems.push(format!("order_id {other:?}")),
    }
    match value.get("user_id").and_then(Value::as_str) {
        Some(user) if user == owner => {}
        other => problems.push(format!("user_id {other:?}, expected {owner}")),
    }
    match value.get("sale_id").and_then(json_id) {
        Some(sale) if sale == sale_id => {}
        other => problems.push(format!("sale_id {other:?}, expected {sale_id}")),
    }
    match value.get("quantity").and_then(Value::as_u64) {
        Some(q) if q == order.quantity => {}
        other => problems.push(format!("quantity {other:?}, expected {}", order.quantity)),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    }
}

/// An id as text, whether the service sends it as a string or a number.
pub(crate) fn json_id(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(id: &str, user: u32, quantity: u64) -> Accepted {
        Accepted {
            order_id: id.to_owned(),
            user,
            quantity,
        }
    }

    fn stats(stock: u64, sold: u64, persisted: u64) -> Stats {
        Stats {
            stock,
            sold,
            remaining: stock.checked_sub(sold),
            orders_persisted: persisted,
        }
    }

    /// A clean sell-out of `n` single units to `n` different buyers.
    fn orders(n: u32) -> Vec<Accepted> {
        (0..n).map(|i| order(&format!("o{i}"), i, 1)).collect()
    }

    fn evidence(accepted: &[Accepted]) -> Evidence<'_> {
        let n = u64::try_from(accepted.len()).unwrap();
        Evidence {
            available: 3,
            stock: 3,
            per_user_limit: 1,
            quantity: 1,
            accepted,
            unparsed_orders: 0,
            unparsed_units: 0,
            anomalies: 0,
            anomaly_samples: &[],
            sold_out_seen: true,
            ambiguous: 0,
            reused: false,
            before: None,
            after: Ok(stats(3, n, n)),
            readback: Readback {
                checked: accepted.len(),
                total: accepted.len(),
                failed: 0,
                samples: Vec::new(),
            },
        }
    }

    fn failed(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn clean_sell_out_passes() {
        let accepted = orders(3);
        let checks = evaluate(&evidence(&accepted));
        assert_eq!(failed(&checks), Vec::<&str>::new(), "{checks:#?}");
        assert_eq!(checks.len(), 10);
    }

    #[test]
    fn oversell_is_caught() {
        let accepted = orders(4);
        let mut e = evidence(&accepted);
        e.after = Ok(Stats {
            stock: 3,
            sold: 4,
            remaining: Some(0),
            orders_persisted: 4,
        });
        let checks = evaluate(&e);
        assert_eq!(
            failed(&checks),
            ["no_oversell", "stats_sold_within_stock", "stats_remaining"]
        );
    }

    #[test]
    fn unsold_stock_after_sold_out_is_caught() {
        let accepted = orders(2);
        let checks = evaluate(&evidence(&accepted));
        assert_eq!(failed(&checks), ["stock_exhausted"]);
        assert!(find(&checks, "stock_exhausted")
            .detail
            .contains("1 units unsold"));
    }

    #[test]
    fn unexhausted_stock_is_only_a_note() {
        let accepted = orders(2);
        let mut e = evidence(&accepted);
        e.sold_out_seen = false;
        e.after = Ok(stats(3, 2, 2));
        let checks = evaluate(&e);
        assert!(failed(&checks).is_empty(), "{checks:#?}");
        assert!(find(&checks, "stock_exhausted").detail.starts_with("note:"));
    }

    #[test]
    fn unanswered_purchases_give_slack() {
        // Two of three units seen; one purchase timed out and may have bought.
        let accepted = orders(2);
        let mut e = evidence(&accepted);
        e.ambiguous = 1;
        assert!(failed(&evaluate(&e)).is_empty());
        e.ambiguous = 0;
        e.after = Ok(stats(3, 2, 2));
        assert_eq!(failed(&evaluate(&e)), ["stock_exhausted"]);
    }

    #[test]
    fn leftover_smaller_than_a_purchase_is_exhausted() {
        // Stock 3 in purchases of 2: one purchase fits, one unit stays.
        let accepted = [order("o0", 0, 2)];
        let mut e = evidence(&accepted);
        e.quantity = 2;
        e.per_user_limit = 2;
        e.after = Ok(stats(3, 2, 1));
        assert!(failed(&evaluate(&e)).is_empty(), "{:#?}", evaluate(&e));
    }

    #[test]
    fn over_the_limit_is_caught() {
        let accepted = [order("a", 7, 1), order("b", 7, 1), order("c", 1, 1)];
        let checks = evaluate(&evidence(&accepted));
        assert_eq!(failed(&checks), ["per_user_limit"]);
        assert!(find(&checks, "per_user_limit")
            .detail
            .contains("user 7 holds 2"));
    }

    #[test]
    fn duplicate_order_ids_are_caught() {
        let accepted = [order("a", 0, 1), order("b", 1, 1), order("a", 2, 1)];
        let checks = evaluate(&evidence(&accepted));
        assert_eq!(failed(&checks), ["unique_orders"]);
        assert!(find(&checks, "unique_orders").detail.ends_with(": a"));
    }

    #[test]
    fn unreadable_orders_and_bad_answers_fail() {
        let accepted = orders(3);
        let mut e = evidence(&accepted);
        e.readback.failed = 1;
        e.readback
            .samples
            .push("order o1: 404 not_found".to_owned());
        let samples = ["201 to bench-x-1: no order_id".to_owned()];
        e.anomalies = 1;
        e.anomaly_samples = &samples;
        let checks = evaluate(&e);
        assert_eq!(failed(&checks), ["answers_well_formed", "orders_readable"]);
        assert!(find(&checks, "orders_readable")
            .detail
            .contains("404 not_found"));
    }

    #[test]
    fn sampled_readback_says_so() {
        let r = Readback {
            checked: 10,
            total: 1000,
            failed: 0,
            samples: Vec::new(),
        };
        let check = readback(&r, 0);
        assert!(check.ok);
        assert!(check.detail.contains("sample of 10 of 1000"));
    }

    #[test]
    fn stats_lagging_or_missing_fail() {
        let accepted = orders(3);
        let mut e = evidence(&accepted);
        e.after = Ok(stats(3, 3, 2));
        assert_eq!(failed(&evaluate(&e)), ["stats_orders_persisted"]);
        e.after = Err("connection refused".to_owned());
        assert_eq!(failed(&evaluate(&e)), ["stats_readable"]);
    }

    #[test]
    fn reused_sale_counts_from_its_earlier_state() {
        let accepted = orders(3);
        let mut e = evidence(&accepted);
        e.stock = 10;
        e.available = 3;
        e.reused = true;
        e.before = Some(stats(10, 7, 7));
        e.after = Ok(stats(10, 10, 10));
        assert!(failed(&evaluate(&e)).is_empty(), "{:#?}", evaluate(&e));
    }

    #[test]
    fn stats_parse() {
        let value = json!({"sale_id": "s", "stock": 5, "sold": 2, "remaining": 3,
            "orders_persisted": 2, "attempts": 9, "rejected": {}});
        assert_eq!(Stats::from_json(&value), Ok(stats(5, 2, 2)));
        assert!(Stats::from_json(&json!({"stock": 5})).is_err());
    }

    #[test]
    fn order_read_back_is_compared() {
        let accepted = order("o1", 3, 2);
        let good = json!({"order_id": "o1", "sale_id": "s", "user_id": "bench-r-3",
            "quantity": 2, "status": "pending_payment", "created_at": "2030-01-01T00:00:00Z"});
        assert_eq!(compare_order(&good, &accepted, "bench-r-3", "s"), Ok(()));
        let bad = json!({"order_id": "o1", "sale_id": "t", "user_id": "x", "quantity": 1});
        let problem = compare_order(&bad, &accepted, "bench-r-3", "s").unwrap_err();
        for part in ["sale_id", "user_id", "quantity"] {
            assert!(problem.contains(part), "{problem}");
        }
    }

    #[test]
    fn ids_as_text() {
        assert_eq!(json_id(&json!("abc")), Some("abc".to_owned()));
        assert_eq!(json_id(&json!(42)), Some("42".to_owned()));
        assert_eq!(json_id(&json!("")), None);
        assert_eq!(json_id(&json!(null)), None);
    }
}
