//! The deployment files against the real service: every metric that the
//! alert rules (`deploy/prometheus/alerts.yaml`) and the Grafana dashboard
//! (`deploy/grafana/dashboards/flashsale.json`) query is one the service
//! exports, and every metric it exports is in the reference of
//! `docs/OPERATIONS.md`.
//!
//! One embedded node and one distributed node (Redis, RabbitMQ,
//! PostgreSQL) run in this test's process and share its recorder; both are
//! scraped after a few purchases and the first reconciler pass, so the
//! per-sale and distributed-only families are there too. Counters of rare
//! events are registered at zero by the service, which is why the
//! allowlist below is nearly empty.
//!
//! The files are read by hand: PromQL and these two YAML shapes need no
//! parser crate for what is checked here (metric names), and the workspace
//! carries none.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;

use crate::kit::{eventually, spawn_app, spawn_app_with, token, Backends, Db, TestApp};

/// Metrics a query may name that this test's scrape cannot show, each with
/// the reason. Keep it short: a metric that can be registered at start
/// belongs there instead.
const ALLOWLIST: &[(&str, &str)] = &[];

/// PromQL words that are not metric names.
const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    // Aggregation operators, which may stand before `by (…)` rather than `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "inf",
    "nan",
    // Prometheus's own series for a failed scrape.
    "up",
];

fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
}

/// The `expr:` values of a Prometheus rule file: inline, or a folded or
/// literal block (`>`/`|`) of the lines indented deeper than `expr:`.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(value) = line.trim_start().strip_prefix("expr:") {
            let value = value.trim();
            if value.starts_with('>') || value.starts_with('|') {
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let deeper = next.len() - next.trim_start().len() > indent;
                    if !deeper && !next.trim().is_empty() {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                exprs.push(block.join(" "));
            } else {
                exprs.push(value.trim_matches(['\'', '"']).to_owned());
            }
        }
        i += 1;
    }
    exprs
}

/// Every `expr` of the dashboard's panels and every templating query.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("a target's expr").to_owned());
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = var["query"]["query"].as_str().or(var["query"].as_str()) {
            exprs.push(q.to_owned());
        }
    }
    exprs
}

/// The metric names a PromQL expression reads: identifiers left once
/// strings, label matchers, ranges, grouping clauses, Grafana variables and
/// numbers are taken out, less function names (followed by `(`) and
/// keywords. `label_values(metric, label)` reads `metric`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings and the contents of {…} and […] go first.
    let mut flat = String::new();
    let (mut quote, mut depth) = (None, 0u32);
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth = depth.saturating_sub(1),
            (None, c) if depth == 0 => flat.push(c),
            _ => {}
        }
    }
    // `label_values(m, label)`: only the first argument is a metric.
    let flat = match flat.trim().strip_prefix("label_values(") {
        Some(args) => args.split(',').next().unwrap_or_default().to_owned(),
        None => flat,
    };
    let mut names = BTreeSet::new();
    let chars: Vec<char> = flat.chars().collect();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            // A Grafana variable ($sale, $__rate_interval).
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let rest = chars[i..].iter().find(|c| !c.is_whitespace());
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                // Its parenthesised list holds labels, not metrics.
                skip_group = rest == Some(&'(');
                continue;
            }
            if rest == Some(&'(') || PROMQL_WORDS.contains(&word.to_lowercase().as_str()) {
                continue;
            }
            names.insert(word);
            continue;
        }
        if c == '(' && skip_group {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
        }
        i += 1;
    }
    names
}

/// Sample names and declared families of a Prometheus text scrape.
fn exported(scrape: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.extend(rest.split_whitespace().next().map(str::to_owned));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    (samples, families)
}

fn is_exported(name: &str, samples: &BTreeSet<String>, families: &BTreeSet<String>) -> bool {
    samples.contains(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .any(|base| families.contains(base))
}

async fn scrape(app: &TestApp) -> String {
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.unwrap()
}

/// Two orders and a refusal, so purchase counters and per-sale families
/// have samples.
async fn purchases(app: &TestApp) -> String {
    let sale = app.open_sale(2, 1).await;
    app.buy_ok(&sale, "deploy-a", 1).await;
    app.buy_ok(&sale, "deploy-b", 1).await;
    let refused = app.buy(&sale, "deploy-c").await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    sale
}

#[test]
fn the_tokenizer_finds_metrics_and_only_metrics() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (sale_id, outcome) (rate(flashsale_sale_purchases_total{sale_id=~"$sale"}[1m]))"#
        ),
        ["flashsale_sale_purchases_total"]
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket[$__rate_interval])))"),
        ["a_seconds_bucket"]
    );
    assert_eq!(
        names("max(x) > 0 and on() max by (q) (delta(y[5m])) >= 0 or up == 0"),
        ["x", "y"]
    );
    assert_eq!(
        names("label_values(flashsale_sale_remaining_units, sale_id)"),
        ["flashsale_sale_remaining_units"]
    );
    assert_eq!(
        rule_exprs("    expr: up == 0\n    expr: >\n      a\n      / b\n    for: 1m\n"),
        ["up == 0", "a / b"]
    );
    let (samples, families) = exported("# TYPE h histogram\nh_bucket{le=\"1\"} 0\nc_total 3\n");
    assert!(is_exported("h_count", &samples, &families));
    assert!(is_exported("c_total", &samples, &families));
    assert!(!is_exported("c", &samples, &families));
}

#[tokio::test]
async fn every_queried_metric_is_exported_and_documented() {
    let embedded = spawn_app().await;
    purchases(&embedded).await;

    let backends = Backends::new(Db::Postgres).await;
    let distributed = spawn_app_with(|s| backends.configure(s)).await;
    let sale = purchases(&distributed).await;
    // The reconciler (every 5 s) fills the distributed per-sale families,
    // the writer the writer's metrics.
    let distributed_scrape = eventually(Duration::from_secs(30), "a reconciler pass", || async {
        let text = scrape(&distributed).await;
        let reconciled = text
            .lines()
            .any(|l| l.starts_with(&format!("flashsale_writer_lag_units{{sale_id=\"{sale}\"}}")));
        let stored = text
            .lines()
            .any(|l| l.starts_with("flashsale_writer_orders_total 2"));
        (reconciled && stored).then_some(text)
    })
    .await;
    let embedded_scrape = scrape(&embedded).await;
    let ready = |t: &str| t.lines().any(|l| l == "flashsale_ready 1");
    assert!(ready(&embedded_scrape), "{embedded_scrape}");
    // Bought twice and refused once on each node, through the router.
    assert!(
        embedded_scrape.contains(r#"flashsale_http_responses_total{class="2xx"}"#),
        "{embedded_scrape}"
    );

    let (mut samples, mut families) = exported(&embedded_scrape);
    let (more_samples, more_families) = exported(&distributed_scrape);
    samples.extend(more_samples);
    families.extend(more_families);

    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/dashboards/flashsale.json"))
            .expect("the dashboard is JSON");
    let mut queries: Vec<(String, String)> =
        rule_exprs(&repo_file("deploy/prometheus/alerts.yaml"))
            .into_iter()
            .map(|e| ("alerts.yaml".to_owned(), e))
            .collect();
    assert!(queries.len() >= 6, "alert expressions found: {queries:?}");
    let panels = dashboard_exprs(&dashboard);
    assert!(
        panels.len() >= 10,
        "dashboard expressions found: {panels:?}"
    );
    queries.extend(panels.into_iter().map(|e| ("flashsale.json".to_owned(), e)));

    let mut missing = Vec::new();
    let mut queried = BTreeSet::new();
    for (file, expr) in &queries {
        let names = metric_names(expr);
        // Only an `up` rule reads no metric of the service.
        assert!(
            !names.is_empty() || expr.trim_start().starts_with("up"),
            "{file}: no metric found in {expr}"
        );
        for name in names {
            if !is_exported(&name, &samples, &families)
                && !ALLOWLIST.iter().any(|(allowed, _)| *allowed == name)
            {
                missing.push(format!("{file}: {name} (in {expr})"));
            }
            queried.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "queried but not exported:\n{}",
        missing.join("\n")
    );
    assert!(
        queried.contains("flashsale_writer_lag_units")
            && queried.contains("flashsale_http_requests_in_flight")
    );

    // Every family the service exports is in the metrics reference.
    let reference = repo_file("docs/OPERATIONS.md");
    let undocumented: Vec<_> = families
        .iter()
        .filter(|f| f.starts_with("flashsale_") && !reference.contains(&format!("`{f}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/OPERATIONS.md: {undocumented:?}"
    );

    // A buyer token is what the dashboards' purchase panels count; one more
    // refusal moves the per-sale counter, read back from the scrape.
    let before = per_sale_sold_out(&scrape(&distributed).await, &sale);
    let _ = distributed
        .purchase(&sale, &token("deploy-d"), None, None)
        .await;
    let after = per_sale_sold_out(&scrape(&distributed).await, &sale);
    assert_eq!(after, before + 1, "per-sale sold_out count");

    embedded.stop().await;
    distributed.stop().await;
    backends.cleanup().await;
}

fn per_sale_sold_out(scrape: &str, sale: &str) -> u64 {
    let prefix =
        format!("flashsale_sale_purchases_total{{sale_id=\"{sale}\",outcome=\"sold_out\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {scrape}"))
}
