//! Floods and checks: thin wrappers over the load tool's crate
//! (`flashsale-bench`), so the tests and `flashsale bench` share one load
//! loop ([`load::drive`]) and one set of invariant rules ([`checks`]).
//!
//! A flood returns the load's [`Outcome`]: counts by outcome key (`201`,
//! `409 sold_out`, `transport_error`, …), the accepted orders with their
//! buyers, and what disagreed. The `check_*` functions turn the invariants
//! into assertions: nobody over the per-user limit, one order per order id,
//! every `201` a well-formed order that reads back as its buyer's
//! ([`check_flood`], [`check_orders_readable`]) or is stored in the
//! database ([`check_stored`]), and never more units sold than the stock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use flashsale::auth::Secret;
use flashsale_bench::api::Api;
use flashsale_bench::buyers::Buyers;
use flashsale_bench::checks::{self, Check};
use flashsale_bench::load::{self, Body, Http, Plan, Requests, Stop};
pub use flashsale_bench::load::{Outcome, Seen, TIMEOUT, TRANSPORT_ERROR};
use reqwest::Url;
use tokio::sync::mpsc;

use super::app::{TestApp, JWT_SECRET, REQUEST_TIMEOUT};
use super::backends::StoredOrder;

/// Outcome keys of a request that got no answer (a stopped or killed
/// server).
pub const NO_ANSWER: [&str; 2] = [TRANSPORT_ERROR, TIMEOUT];

/// Sends every `(buyer, units)` purchase (a JSON body each) to `app`, at
/// most `concurrency` at once.
pub async fn flood(
    app: &TestApp,
    sale_id: &str,
    requests: Vec<(String, u32)>,
    concurrency: usize,
) -> Outcome {
    flood_with(
        &app.client,
        &app.address,
        sale_id,
        requests,
        concurrency,
        |_| {},
    )
    .await
}

/// [`flood`] against the server at `base`, calling `on_answer` with every
/// answer as it arrives (to stop or kill the server mid-flood).
pub async fn flood_with(
    client: &reqwest::Client,
    base: &str,
    sale_id: &str,
    requests: Vec<(String, u32)>,
    concurrency: usize,
    mut on_answer: impl FnMut(&Seen),
) -> Outcome {
    // Buyers by first appearance; a buyer may send several requests.
    let mut numbers: HashMap<String, u32> = HashMap::new();
    let mut names = Vec::new();
    let listed: Vec<(u32, u64)> = requests
        .into_iter()
        .map(|(name, units)| {
            let next = u32::try_from(names.len()).unwrap();
            let n = *numbers.entry(name.clone()).or_insert_with(|| {
                names.push(name);
                next
            });
            (n, u64::from(units))
        })
        .collect();
    let buyers = Arc::new(
        Buyers::mint(&Secret::new(JWT_SECRET), names)
            .await
            .expect("minting buyer tokens"),
    );
    let target = purchase_url(base, sale_id);
    let (watch, mut answers) = mpsc::unbounded_channel();
    let plan = Plan {
        requests: Requests::Listed(listed.into()),
        concurrency,
        sale_id: Some(sale_id.to_owned()),
        buyers: Arc::clone(&buyers),
        progress: false,
        watch: Some(watch),
    };
    let action = Http::purchases(client.clone(), vec![target], buyers, Body::Json);
    let load = tokio::spawn(load::drive(plan, action));
    // Ends when the load is over and its workers dropped the sender.
    while let Some(answer) = answers.recv().await {
        on_answer(&answer);
    }
    load.await
        .expect("the flood panicked")
        .expect("the flood failed")
}

/// `requests` one-unit purchases (no body) by buyers `u0..u{users}` in turn,
/// spread round-robin over `nodes`, 64 at a time. Every `201` must name a
/// distinct order as asked, and every error carry the JSON body; other
/// outcomes (a node that is down, `503 unavailable`) are the test's to judge.
pub async fn flood_nodes(
    nodes: &[TestApp],
    sale_id: &str,
    users: usize,
    requests: usize,
) -> Outcome {
    let names = (0..users).map(|n| format!("u{n}")).collect();
    let requests = Requests::RoundRobin {
        users: u32::try_from(users).unwrap(),
        quantity: 1,
        stop: Stop::Requests(u64::try_from(requests).unwrap()),
    };
    flood_with_plan(nodes, sale_id, names, requests).await
}

/// One one-unit purchase per buyer of `names`, in that order, spread
/// round-robin over `nodes`, 64 at a time; checked as [`flood_nodes`] is.
pub async fn flood_buyers(nodes: &[TestApp], sale_id: &str, names: Vec<String>) -> Outcome {
    let n = u32::try_from(names.len()).unwrap();
    let requests = Requests::Listed((0..n).map(|i| (i, 1)).collect::<Vec<_>>().into());
    flood_with_plan(nodes, sale_id, names, requests).await
}

async fn flood_with_plan(
    nodes: &[TestApp],
    sale_id: &str,
    names: Vec<String>,
    requests: Requests,
) -> Outcome {
    let buyers = Arc::new(
        Buyers::mint(&Secret::new(JWT_SECRET), names)
            .await
            .expect("minting buyer tokens"),
    );
    let targets = nodes
        .iter()
        .map(|node| purchase_url(&node.address, sale_id))
        .collect();
    let plan = Plan {
        requests,
        concurrency: 64,
        sale_id: Some(sale_id.to_owned()),
        buyers: Arc::clone(&buyers),
        progress: false,
        watch: None,
    };
    // The floods over several nodes use the load tool's lean client (the
    // one `flashsale bench` floods with); `flood_with` keeps reqwest.
    let action = Http::purchases(nodes[0].client.clone(), targets, buyers, Body::Auto)
        .over_wire(REQUEST_TIMEOUT);
    let outcome = load::drive(plan, action).await.expect("the flood failed");
    assert_checks(&[
        checks::unique_orders(outcome.accepted.iter().map(|a| a.order_id.as_str())),
        checks::answers_well_formed(&outcome),
        checks::errors_well_formed(&outcome),
    ]);
    outcome
}

fn purchase_url(base: &str, sale_id: &str) -> Url {
    Url::parse(&format!("{base}/api/v1/sales/{sale_id}/purchase")).expect("a purchase URL")
}

/// Requests of `outcome` that got no answer.
pub fn no_answer(outcome: &Outcome) -> u64 {
    NO_ANSWER.iter().map(|key| outcome.count(key)).sum()
}

/// The accepted orders of `outcome` as `(order id, buyer)`.
pub fn accepted_orders(outcome: &Outcome) -> Vec<(String, String)> {
    outcome
        .accepted
        .iter()
        .map(|a| (a.order_id.clone(), outcome.owner(a).to_owned()))
        .collect()
}

/// Fails the test with every failed check.
pub fn assert_checks(checks: &[Check]) {
    let failures = checks::failures(checks);
    assert!(failures.is_empty(), "{failures}");
}

/// Every request of `outcome` got one of the `allowed` outcome keys.
pub fn assert_only(outcome: &Outcome, allowed: &[&str]) {
    assert_checks(&[checks::expected_outcomes(outcome, allowed)]);
}

/// Asserts every answer of a flood is one of the contract's purchase
/// outcomes (`201`, `409 sold_out`, `409 limit_reached`, each with its
/// body), that every order id is distinct and no buyer got more than
/// `limit` units. Returns the accepted units per buyer.
pub fn check_flood(outcome: &Outcome, limit: u32) -> HashMap<String, u64> {
    assert_only(outcome, &["201", "409 sold_out", "409 limit_reached"]);
    assert_checks(&checks::answers(outcome, u64::from(limit)));
    load::held_by_buyer(outcome)
        .into_iter()
        .map(|(n, units)| (outcome.buyers.name(n).to_owned(), units))
        .collect()
}

/// Checks every accepted order of `outcome` reads back from `app` at the
/// first try with its owner, sale, quantity and a status (64 reads at a
/// time); a `201` that named no order fails too.
pub async fn check_orders_readable(app: &TestApp, sale_id: &str, outcome: &Outcome) {
    let api = Api {
        client: app.client.clone(),
        base: Url::parse(&app.address).expect("the app's address"),
        admin: None,
    };
    let readback = api.read_back(sale_id, outcome, usize::MAX, 64, 1).await;
    assert_checks(&[checks::readback(&readback, outcome.unnamed_orders())]);
}

/// The contract's invariants, checked on the rows a database holds for one
/// sale: units held (pending or paid) never exceed `stock`, no buyer holds
/// more than `limit`, no order is stored twice, every order answered `201`
/// (`accepted`, as `(order id, buyer)`) is stored, and — when `exact` —
/// nothing is stored that no buyer was told about.
pub fn check_stored(
    rows: &[StoredOrder],
    accepted: &[(String, String)],
    stock: u64,
    limit: u64,
    exact: bool,
) {
    let holding: Vec<&StoredOrder> = rows
        .iter()
        .filter(|r| r.status == "pending_payment" || r.status == "paid")
        .collect();
    let units = holding.iter().map(|r| r.quantity).sum();
    let ids: Vec<String> = rows.iter().map(|r| r.order_id.to_string()).collect();
    let stored: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut verdicts = vec![
        checks::no_oversell(units, holding.len() as u64, stock),
        checks::per_user_limit(
            holding.iter().map(|r| (r.user_id.as_str(), r.quantity)),
            limit,
        ),
        checks::unique_orders(ids.iter().map(String::as_str)),
        checks::orders_stored(
            accepted
                .iter()
                .map(|(id, user)| (id.as_str(), user.as_str())),
            &stored,
        ),
    ];
    if exact {
        verdicts.push(checks::no_untold_orders(rows.len(), accepted.len()));
    }
    assert_checks(&verdicts);
}
