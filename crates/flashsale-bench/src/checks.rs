//! The contract's invariants, judged as pure functions over evidence, so
//! each rule is tested without a server and the bench and the integration
//! tests judge with the same code:
//!
//! - **no oversell**: units sold never exceed the stock;
//! - **per-user limit**: no buyer holds more than the sale allows;
//! - **every `201` is one order**: order ids are unique, every accepted
//!   order reads back as its buyer's (or is stored), and the answers
//!   themselves describe what was asked for.
//!
//! [`evaluate`] applies them all to a bench run; the single rules
//! ([`no_oversell`], [`per_user_limit`], [`unique_orders`], [`orders_stored`],
//! …) take plain figures, so a test can feed them what a database holds.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::hash::Hash;

use serde::Serialize;
use serde_json::Value;

use crate::load::{describe_outcomes, json_id, Accepted, Outcome};

/// The figures of `GET /api/v1/sales/{id}/stats` the checks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
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
    pub fn from_json(value: &Value) -> Result<Self, String> {
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
pub struct Readback {
    /// Orders read back.
    pub checked: usize,
    /// Orders accepted (the sample was drawn from these).
    pub total: usize,
    /// Orders that could not be read back or disagreed.
    pub failed: usize,
    /// The first few failures.
    pub samples: Vec<String>,
}

/// One verdict.
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
    /// A verdict named `name`.
    pub fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// The failed checks of `checks`, one per line (empty when all held).
pub fn failures(checks: &[Check]) -> String {
    checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("FAIL {}: {}", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything a bench run's invariants are judged on.
#[derive(Debug)]
pub struct Evidence<'a> {
    /// Units the bench could buy: the stock less what was sold before.
    pub available: u64,
    /// The sale's stock.
    pub stock: u64,
    /// Units one buyer may hold.
    pub per_user_limit: u64,
    /// Units each purchase asked for.
    pub quantity: u64,
    /// What the load saw.
    pub outcome: &'a Outcome,
    /// The bench reused an existing sale (others may have bought in it).
    pub reused: bool,
    /// Stats before the load (`None`: a fresh sale, nothing sold).
    pub before: Option<Stats>,
    /// Stats after the load, or why they could not be read.
    pub after: Result<Stats, String>,
    /// How reading the accepted orders back went.
    pub readback: Readback,
}

/// Judges every invariant of a bench run; it passed when all are `ok`.
pub fn evaluate(e: &Evidence<'_>) -> Vec<Check> {
    let o = e.outcome;
    // Purchases with no definite answer may have bought up to this much more.
    let slack = o.ambiguous.saturating_mul(e.quantity);
    let mut checks = vec![
        no_oversell(o.units, o.orders, e.available),
        exhaustion(e, slack),
    ];
    checks.extend(answers(o, e.per_user_limit));
    checks.push(readback(&e.readback, o.unnamed_orders()));
    checks.extend(stats(e, slack));
    checks
}

/// What the answers alone prove: nobody over the limit, one order per
/// order id, `201`s that describe what was asked for, and the contract's
/// body on every error.
pub fn answers(outcome: &Outcome, per_user_limit: u64) -> Vec<Check> {
    vec![
        per_user_limit_of(outcome, per_user_limit),
        unique_orders(outcome.accepted.iter().map(|a| a.order_id.as_str())),
        answers_well_formed(outcome),
        errors_well_formed(outcome),
    ]
}

/// `units` in `orders` orders never exceed the `available` stock.
pub fn no_oversell(units: u64, orders: u64, available: u64) -> Check {
    Check::new(
        "no_oversell",
        units <= available,
        format!("{units} units in {orders} orders, {available} available"),
    )
}

/// Once a `sold_out` was seen, everything available must have been bought
/// (less than one purchase's worth may be left).
fn exhaustion(e: &Evidence<'_>, slack: u64) -> Check {
    let units = e.outcome.units;
    if !e.outcome.sold_out_seen() {
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
        "sold_out seen; {units} of {} available units accepted",
        e.available
    );
    if slack > 0 {
        detail.push_str(&format!(
            ", plus up to {slack} units in {} unanswered purchases",
            e.outcome.ambiguous
        ));
    }
    if !ok {
        detail.push_str(&format!(
            "; {} units unsold",
            e.available.saturating_sub(bought_at_most)
        ));
    }
    Check::new("stock_exhausted", ok, detail)
}

fn per_user_limit_of(outcome: &Outcome, limit: u64) -> Check {
    per_user_limit(
        outcome
            .accepted
            .iter()
            .map(|a| (outcome.owner(a), a.quantity)),
        limit,
    )
}

/// No buyer holds more than `limit` units, over `orders` as
/// `(buyer, units)`.
pub fn per_user_limit<K>(orders: impl IntoIterator<Item = (K, u64)>, limit: u64) -> Check
where
    K: Eq + Hash + Ord + Display,
{
    let mut held: HashMap<K, u64> = HashMap::new();
    for (user, units) in orders {
        let total = held.entry(user).or_insert(0);
        *total = total.saturating_add(units);
    }
    let most = held.values().copied().max().unwrap_or(0);
    let mut over: Vec<(&K, u64)> = held
        .iter()
        .filter(|&(_, &units)| units > limit)
        .map(|(user, &units)| (user, units))
        .collect();
    over.sort_unstable();
    if over.is_empty() {
        return Check::new(
            "per_user_limit",
            true,
            format!(
                "{} buyers, at most {most} units each (limit {limit})",
                held.len()
            ),
        );
    }
    let examples: Vec<String> = over
        .iter()
        .take(5)
        .map(|(user, units)| format!("{user} holds {units}"))
        .collect();
    Check::new(
        "per_user_limit",
        false,
        format!(
            "{} buyers over the limit of {limit}: {}",
            over.len(),
            examples.join(", ")
        ),
    )
}

/// No order id appears twice.
pub fn unique_orders<'a>(ids: impl IntoIterator<Item = &'a str>) -> Check {
    let mut seen = HashSet::new();
    let mut duplicates: Vec<&str> = ids.into_iter().filter(|id| !seen.insert(*id)).collect();
    duplicates.sort_unstable();
    duplicates.dedup();
    if duplicates.is_empty() {
        Check::new(
            "unique_orders",
            true,
            format!("{} distinct order ids", seen.len()),
        )
    } else {
        let examples: Vec<&str> = duplicates.iter().copied().take(5).collect();
        Check::new(
            "unique_orders",
            false,
            format!(
                "{} order ids appear more than once: {}",
                duplicates.len(),
                examples.join(", ")
            ),
        )
    }
}

/// Every `201` named its order, buyer, sale and quantity as asked.
pub fn answers_well_formed(outcome: &Outcome) -> Check {
    let a = &outcome.anomalies;
    Check::new(
        "answers_well_formed",
        a.count == 0,
        if a.count == 0 {
            format!(
                "{} accepted answers named their order, buyer, sale and quantity",
                outcome.orders
            )
        } else {
            format!(
                "{} accepted answers disagreed: {}",
                a.count,
                a.first.join("; ")
            )
        },
    )
}

/// Every non-2xx answer carried `{"error": {"code", "message"}}`.
pub fn errors_well_formed(outcome: &Outcome) -> Check {
    let m = &outcome.malformed;
    Check::new(
        "errors_well_formed",
        m.count == 0,
        if m.count == 0 {
            "every error answer had the contract's JSON body".to_owned()
        } else {
            format!(
                "{} error answers without the JSON error body: {}",
                m.count,
                m.first.join("; ")
            )
        },
    )
}

/// Every request got one of the `allowed` outcomes (`201`, `409 sold_out`,
/// `transport_error`, …).
pub fn expected_outcomes(outcome: &Outcome, allowed: &[&str]) -> Check {
    let unexpected: Vec<&str> = outcome
        .outcomes
        .keys()
        .map(String::as_str)
        .filter(|key| !allowed.contains(key))
        .collect();
    let mut detail = format!(
        "outcomes {}, allowed {allowed:?}",
        describe_outcomes(&outcome.outcomes)
    );
    if !outcome.failures.first.is_empty() {
        detail.push_str(&format!(
            "; failures: {}",
            outcome.failures.first.join("; ")
        ));
    }
    Check::new("expected_outcomes", unexpected.is_empty(), detail)
}

/// Every accepted order (or the sample) read back as its owner's; orders
/// whose answer named no id cannot be, and fail the check.
pub fn readback(r: &Readback, unnamed_orders: u64) -> Check {
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
    if unnamed_orders > 0 {
        detail.push_str(&format!(
            "; {unnamed_orders} accepted orders had no id to read back"
        ));
    }
    Check::new(
        "orders_readable",
        r.failed == 0 && unnamed_orders == 0,
        detail,
    )
}

/// Every accepted order, as `(order id, buyer)`, is among the `stored` ids.
pub fn orders_stored<'a>(
    accepted: impl IntoIterator<Item = (&'a str, &'a str)>,
    stored: &HashSet<&str>,
) -> Check {
    let mut total = 0usize;
    let mut missing = Vec::new();
    for (id, buyer) in accepted {
        total += 1;
        if !stored.contains(id) {
            missing.push(format!("order {id} of {buyer}"));
        }
    }
    if missing.is_empty() {
        Check::new(
            "orders_stored",
            true,
            format!("all {total} accepted orders are stored"),
        )
    } else {
        Check::new(
            "orders_stored",
            false,
            format!(
                "{} of {total} orders answered 201 are not stored: {}",
                missing.len(),
                missing[..missing.len().min(5)].join(", ")
            ),
        )
    }
}

/// The store holds no order that no buyer was told about: `stored` orders,
/// `accepted` answers.
pub fn no_untold_orders(stored: usize, accepted: usize) -> Check {
    Check::new(
        "no_untold_orders",
        stored == accepted,
        format!("{stored} orders stored, {accepted} answered 201"),
    )
}

/// The service's own stats agree with what the bench saw.
fn stats(e: &Evidence<'_>, slack: u64) -> Vec<Check> {
    let after = match &e.after {
        Ok(after) => after,
        Err(why) => return vec![Check::new("stats_readable", false, why.clone())],
    };
    let (units, orders) = (e.outcome.units, e.outcome.orders);
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
pub fn compare_order(
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
    match value.get("status").and_then(Value::as_str) {
        Some(status) if !status.is_empty() => {}
        other => problems.push(format!("status {other:?}")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::buyers::Buyers;
    use crate::load::SOLD_OUT;
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

    fn buyers() -> Arc<Buyers> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let names = (0..10).map(|i| format!("user {i}")).collect();
        Arc::new(
            runtime
                .block_on(Buyers::mint(&flashsale::auth::Secret::new("s"), names))
                .unwrap(),
        )
    }

    /// What the load saw: these accepted orders, and a sold_out answer.
    fn outcome(accepted: Vec<Accepted>) -> Outcome {
        let mut o = Outcome::new(buyers());
        o.orders = u64::try_from(accepted.len()).unwrap();
        o.units = accepted.iter().map(|a| a.quantity).sum();
        o.accepted = accepted;
        o.outcomes.insert(SOLD_OUT.to_owned(), 1);
        o
    }

    /// A clean sell-out of `n` single units to `n` different buyers.
    fn orders(n: u32) -> Vec<Accepted> {
        (0..n).map(|i| order(&format!("o{i}"), i, 1)).collect()
    }

    fn evidence(outcome: &Outcome) -> Evidence<'_> {
        let n = outcome.orders;
        Evidence {
            available: 3,
            stock: 3,
            per_user_limit: 1,
            quantity: 1,
            outcome,
            reused: false,
            before: None,
            after: Ok(stats(3, n, n)),
            readback: Readback {
                checked: outcome.accepted.len(),
                total: outcome.accepted.len(),
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
        let o = outcome(orders(3));
        let checks = evaluate(&evidence(&o));
        assert_eq!(failed(&checks), Vec::<&str>::new(), "{checks:#?}");
        assert_eq!(checks.len(), 11);
        assert_eq!(failures(&checks), "");
    }

    #[test]
    fn oversell_is_caught() {
        let o = outcome(orders(4));
        let mut e = evidence(&o);
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
        assert!(failures(&checks).starts_with("FAIL no_oversell: 4 units in 4 orders"));
    }

    #[test]
    fn unsold_stock_after_sold_out_is_caught() {
        let o = outcome(orders(2));
        let checks = evaluate(&evidence(&o));
        assert_eq!(failed(&checks), ["stock_exhausted"]);
        assert!(find(&checks, "stock_exhausted")
            .detail
            .contains("1 units unsold"));
    }

    #[test]
    fn unexhausted_stock_is_only_a_note() {
        let mut o = outcome(orders(2));
        o.outcomes.clear();
        let mut e = evidence(&o);
        e.after = Ok(stats(3, 2, 2));
        let checks = evaluate(&e);
        assert!(failed(&checks).is_empty(), "{checks:#?}");
        assert!(find(&checks, "stock_exhausted").detail.starts_with("note:"));
    }

    #[test]
    fn unanswered_purchases_give_slack() {
        // Two of three units seen; one purchase timed out and may have bought.
        let mut o = outcome(orders(2));
        o.ambiguous = 1;
        let mut e = evidence(&o);
        e.after = Ok(stats(3, 3, 2));
        assert!(failed(&evaluate(&e)).is_empty(), "{:#?}", evaluate(&e));
        let o = outcome(orders(2));
        let mut e = evidence(&o);
        e.after = Ok(stats(3, 2, 2));
        assert_eq!(failed(&evaluate(&e)), ["stock_exhausted"]);
    }

    #[test]
    fn leftover_smaller_than_a_purchase_is_exhausted() {
        // Stock 3 in purchases of 2: one purchase fits, one unit stays.
        let o = outcome(vec![order("o0", 0, 2)]);
        let mut e = evidence(&o);
        e.quantity = 2;
        e.per_user_limit = 2;
        e.after = Ok(stats(3, 2, 1));
        assert!(failed(&evaluate(&e)).is_empty(), "{:#?}", evaluate(&e));
    }

    #[test]
    fn over_the_limit_is_caught() {
        let o = outcome(vec![order("a", 7, 1), order("b", 7, 1), order("c", 1, 1)]);
        let checks = evaluate(&evidence(&o));
        assert_eq!(failed(&checks), ["per_user_limit"]);
        assert!(find(&checks, "per_user_limit")
            .detail
            .contains("user 7 holds 2"));
    }

    #[test]
    fn the_limit_rule_sums_any_kind_of_buyer() {
        let check = per_user_limit([("ann", 1), ("bob", 2), ("ann", 1)], 2);
        assert!(check.ok, "{check:?}");
        assert!(check.detail.contains("2 buyers, at most 2"), "{check:?}");
        let check = per_user_limit([(3u32, 2), (3, 1), (4, 5)], 2);
        assert!(!check.ok);
        assert!(check.detail.contains("3 holds 3, 4 holds 5"), "{check:?}");
    }

    #[test]
    fn duplicate_order_ids_are_caught() {
        let o = outcome(vec![order("a", 0, 1), order("b", 1, 1), order("a", 2, 1)]);
        let checks = evaluate(&evidence(&o));
        assert_eq!(failed(&checks), ["unique_orders"]);
        assert!(find(&checks, "unique_orders").detail.ends_with(": a"));
    }

    #[test]
    fn unreadable_orders_and_bad_answers_fail() {
        let mut o = outcome(orders(3));
        o.anomalies.push("201 to bench-x-1: no order_id".to_owned());
        o.malformed.push("502: \"Bad Gateway\"".to_owned());
        let mut e = evidence(&o);
        e.readback.failed = 1;
        e.readback
            .samples
            .push("order o1: 404 not_found".to_owned());
        let checks = evaluate(&e);
        assert_eq!(
            failed(&checks),
            [
                "answers_well_formed",
                "errors_well_formed",
                "orders_readable"
            ]
        );
        assert!(find(&checks, "orders_readable")
            .detail
            .contains("404 not_found"));
        assert!(find(&checks, "errors_well_formed")
            .detail
            .contains("Bad Gateway"));
    }

    #[test]
    fn orders_without_an_id_cannot_be_read_back() {
        let mut o = outcome(orders(2));
        o.orders = 3;
        o.units = 3;
        let check = find(&evaluate(&evidence(&o)), "orders_readable").clone();
        assert!(!check.ok);
        assert!(
            check.detail.contains("1 accepted orders had no id"),
            "{check:?}"
        );
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
        let o = outcome(orders(3));
        let mut e = evidence(&o);
        e.after = Ok(stats(3, 3, 2));
        assert_eq!(failed(&evaluate(&e)), ["stats_orders_persisted"]);
        e.after = Err("connection refused".to_owned());
        assert_eq!(failed(&evaluate(&e)), ["stats_readable"]);
    }

    #[test]
    fn reused_sale_counts_from_its_earlier_state() {
        let o = outcome(orders(3));
        let mut e = evidence(&o);
        e.stock = 10;
        e.available = 3;
        e.reused = true;
        e.before = Some(stats(10, 7, 7));
        e.after = Ok(stats(10, 10, 10));
        assert!(failed(&evaluate(&e)).is_empty(), "{:#?}", evaluate(&e));
    }

    #[test]
    fn stored_orders_are_matched_to_answers() {
        let stored: HashSet<&str> = ["1", "2", "3"].into();
        assert!(orders_stored([("1", "ann"), ("3", "bob")], &stored).ok);
        let check = orders_stored([("1", "ann"), ("4", "bob")], &stored);
        assert!(!check.ok);
        assert!(check.detail.contains("order 4 of bob"), "{check:?}");
        assert!(no_untold_orders(3, 3).ok);
        assert!(!no_untold_orders(3, 2).ok);
    }

    #[test]
    fn only_the_allowed_outcomes() {
        let mut o = outcome(orders(1));
        o.outcomes.insert("201".to_owned(), 1);
        assert!(expected_outcomes(&o, &["201", SOLD_OUT]).ok);
        o.outcomes.insert("500 internal".to_owned(), 2);
        o.failures.push("connection reset".to_owned());
        let check = expected_outcomes(&o, &["201", SOLD_OUT]);
        assert!(!check.ok);
        assert!(check.detail.contains("500 internal: 2"), "{check:?}");
        assert!(check.detail.contains("connection reset"), "{check:?}");
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
        for part in ["sale_id", "user_id", "quantity", "status"] {
            assert!(problem.contains(part), "{problem}");
        }
    }
}
