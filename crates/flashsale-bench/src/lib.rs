//! `flashsale bench`: the load tool of Flashsale, a crate of its own so the
//! server does not link it. It floods a running server with purchases (or
//! other requests) and proves the sale's invariants held once the load
//! stopped; the integration tests use the same loop and checks.
//!
//! A run goes through five steps:
//! 1. create a sale (or reuse one given by `--sale-id`);
//! 2. mint one buyer token per simulated user (`bench-<run id>-<n>`,
//!    [`buyers`]);
//! 3. drive `--concurrency` keep-alive connections, all pulling request
//!    numbers from one shared counter, until `--duration` has passed or
//!    `--requests` have been sent; buyers are served round-robin ([`load`]);
//! 4. in `purchase` mode, check the contract's invariants: no oversell,
//!    nobody over the per-user limit, every accepted order unique and
//!    readable, and the server's own stats in agreement ([`checks`], with
//!    [`api`] for the reads);
//! 5. summarise throughput, latency percentiles and every outcome seen,
//!    keyed by status and error code (`201`, `409 sold_out`, …), as a report
//!    or one JSON object ([`report`]).
//!
//! The baselines (`pg-row-lock`, `redis-evalsha`, `redis-coalesced`) run the
//! same loop and report on a database or Redis directly, without HTTP;
//! [`classic`] is the classic design as an HTTP server (`flashsale-classic`),
//! which purchase mode floods like Flashsale and verifies on its queue.
//! `--server-pid` adds what the load cost the server in CPU ([`cpu`]).
//!
//! [`benchmarks`] and [`plots`] write the generated report of
//! docs/BENCHMARKS.md (`scripts/bench-report.sh`) from the runs' JSON
//! summaries.

pub mod api;
pub mod args;
mod baseline;
pub mod benchmarks;
pub mod buyers;
pub mod checks;
pub mod classic;
pub mod cpu;
pub mod drain;
pub mod load;
pub mod plots;
pub mod probe;
pub mod report;
pub mod room;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub use args::{BenchArgs, LoadClient, Mode, Shape};
pub use report::Summary;

use api::Api;
use buyers::{bearer, Buyers};
use checks::{Evidence, Stats};
use load::{json_id, Body, Http, Outcome, Plan, Requests};

/// The flood's requests as `--client` says.
fn lean(args: &BenchArgs, http: Http) -> Http {
    match args.client {
        LoadClient::Wire => http.over_wire(args.timeout),
        LoadClient::Reqwest => http,
    }
}

/// Reads of an accepted order before it counts as missing (the distributed
/// mode's writer may lag the `201` by a moment).
const READBACK_ATTEMPTS: u32 = 3;

/// Runs the load `args` describe and returns its summary; the summary's
/// `ok` is false when an invariant broke. Progress and notes go to stderr;
/// printing the summary is the caller's.
///
/// # Errors
/// When the run cannot take place: missing credentials, an unreachable
/// service, or a sale that cannot be created or read.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Summary> {
    match args.mode {
        Mode::PgRowLock => return baseline::pg_row_lock(args).await,
        Mode::RedisEvalsha => return baseline::redis_evalsha(args).await,
        Mode::RedisCoalesced => return baseline::redis_coalesced(args).await,
        Mode::Room => bail!("room mode reports with room::run (flashsale-bench runs it)"),
        Mode::WriterDrain => {
            bail!("writer-drain mode reports with drain::run (flashsale-bench runs it)")
        }
        Mode::Purchase | Mode::Healthz | Mode::SalePage => {}
    }
    let concurrency = usize::try_from(args.concurrency)?;
    let admin = match &args.admin_token {
        Some(token) => Some(bearer(token.expose())?),
        None => None,
    };
    let api = Api {
        client: api::client(concurrency, args.timeout)?,
        base: args.url.clone(),
        admin,
    };
    let run_id = format!("{:08x}", rand::random::<u32>());
    // Refuse missing credentials before anything is created on the service.
    let secret = match args.mode {
        Mode::Purchase => Some(args.jwt_secret.as_ref().ok_or_else(|| {
            anyhow!("purchase mode needs --jwt-secret (or FLASHSALE_JWT_SECRET)")
        })?),
        _ => None,
    };
    let needs_admin = match args.mode {
        Mode::SalePage => args.sale_id.is_none(),
        Mode::Purchase => args.sale_id.is_none() || !args.no_verify,
        _ => false,
    };
    if needs_admin && api.admin.is_none() {
        bail!(
            "{} mode needs --admin-token (or FLASHSALE_ADMIN_TOKEN) to {}",
            args.mode.as_str(),
            if args.sale_id.is_none() {
                "create the sale"
            } else {
                "read the sale's stats"
            }
        );
    }

    // 1. The sale.
    let sale = match args.mode {
        Mode::Purchase | Mode::SalePage => Some(prepare_sale(&api, args).await?),
        _ => None,
    };

    // 2. Buyer tokens, one per simulated user.
    let buyers = match secret {
        Some(secret) => {
            let started = Instant::now();
            let buyers = Buyers::for_run(secret, &run_id, args.users).await?;
            eprintln!(
                "minted {} buyer tokens in {:.2} s",
                buyers.len(),
                started.elapsed().as_secs_f64()
            );
            buyers
        }
        None => Buyers::none(),
    };
    let buyers = Arc::new(buyers);

    // 3. The load.
    let plan = Plan {
        requests: Requests::RoundRobin {
            users: args.users,
            quantity: args.quantity,
            stop: args.stop(),
        },
        concurrency,
        sale_id: None,
        buyers: Arc::clone(&buyers),
        progress: !args.json,
        watch: None,
    };
    let mut probes = Vec::new();
    for target in &args.probe {
        let url = args
            .url
            .join(target)
            .with_context(|| format!("the probe {target}"))?;
        probes.push(probe::Probe::start(url, args.probe_every, args.timeout)?);
    }
    let meter = if args.server_pid.is_empty() {
        None
    } else {
        Some(cpu::CpuMeter::start(&args.server_pid)?)
    };
    let outcome = match (args.mode, &sale) {
        (Mode::Purchase, Some(sale)) => {
            let target = api.url(&["api", "v1", "sales", &sale.id, "purchase"])?;
            announce(args, &target, concurrency);
            let plan = Plan {
                sale_id: Some(sale.id.clone()),
                ..plan
            };
            // `--shape bare`: one unit is the contract's default, no body
            // then; other quantities go in the JSON body.
            let body = match args.shape {
                Shape::Bare => Body::Auto,
                Shape::Json => Body::Json,
                Shape::Keyed => Body::JsonFreshKey,
                Shape::Replayed => Body::JsonBuyerKey,
            };
            let action = lean(
                args,
                Http::purchases(api.client.clone(), vec![target], Arc::clone(&buyers), body),
            );
            let mut outcome = load::drive(plan, action).await?;
            if args.shape == Shape::Replayed {
                outcome.count_replays_once();
            }
            outcome
        }
        (Mode::SalePage, Some(sale)) => {
            let target = api.url(&["api", "v1", "sales", &sale.id])?;
            announce(args, &target, concurrency);
            let action = lean(args, Http::get(api.client.clone(), target));
            load::drive(plan, action).await?
        }
        (Mode::Healthz, _) => {
            let target = api.url(&["healthz"])?;
            announce(args, &target, concurrency);
            let action = lean(args, Http::get(api.client.clone(), target));
            load::drive(plan, action).await?
        }
        _ => bail!("no sale to send {} requests to", args.mode.as_str()),
    };

    let server_cpu = match &meter {
        Some(meter) => Some(meter.finish(outcome.orders, outcome.requests)?),
        None => None,
    };

    let mut probed = Vec::new();
    for probe in probes {
        probed.push(probe.finish().await?);
    }

    // 4. The invariants.
    let checks = match (&sale, args.mode, args.no_verify) {
        (Some(sale), Mode::Purchase, false) => {
            eprintln!("verifying invariants…");
            verify(&api, sale, args, &outcome, concurrency).await
        }
        _ => Vec::new(),
    };

    // 5. The summary.
    let mut summary = Summary::new(args, &run_id, &outcome, checks);
    summary.probes = probed;
    if let Some(cpu) = server_cpu {
        summary.server_cpu_us = Some(cpu.cpu_us);
        summary.server_cpu_us_per_accept = cpu.us_per_accept;
        summary.server_cpu_us_per_request = cpu.us_per_request;
    }
    if let Some(sale) = &sale {
        summary.sale_id = Some(sale.id.clone());
        summary.stock = Some(sale.stock);
        summary.per_user_limit = Some(sale.per_user_limit);
    }
    Ok(summary)
}

/// The start-up line of a load.
fn announce(args: &BenchArgs, target: &reqwest::Url, concurrency: usize) {
    eprintln!(
        "sending {} requests to {target} over {concurrency} connections ({})",
        args.mode.as_str(),
        args.stop().describe()
    );
}

/// The sale under load, as the bench knows it.
struct Sale {
    id: String,
    stock: u64,
    per_user_limit: u64,
    /// The sale's stats before the load when the bench reuses a sale; a sale
    /// the bench created starts from nothing sold.
    before: Option<Stats>,
    /// The order queue, when the server is the classic reference server
    /// (its sale answers say `"design": "classic"`): accepted orders are
    /// verified there instead of being read back.
    classic_queue: Option<String>,
}

/// The queue a classic server's sale answer names.
fn classic_queue(sale: &Value) -> Option<String> {
    (sale.get("design").and_then(Value::as_str) == Some(classic::DESIGN))
        .then(|| sale.get("queue").and_then(Value::as_str).map(str::to_owned))
        .flatten()
}

/// Creates the sale, or reads the one given by `--sale-id`.
async fn prepare_sale(api: &Api, args: &BenchArgs) -> anyhow::Result<Sale> {
    if let Some(id) = &args.sale_id {
        let url = api.url(&["api", "v1", "sales", id])?;
        let sale = api.expect(api.client.get(url), StatusCode::OK).await?;
        let stock = field_u64(&sale, "stock")?;
        let per_user_limit = field_u64(&sale, "per_user_limit")?;
        // Only purchases change what is sold; remember where the sale stood.
        let before = if args.mode == Mode::Purchase && !args.no_verify {
            Some(api.stats(id).await?)
        } else {
            None
        };
        eprintln!(
            "reusing sale {id} (stock {stock}, limit {per_user_limit} per user, status {})",
            sale.get("status").and_then(Value::as_str).unwrap_or("?")
        );
        return Ok(Sale {
            id: id.clone(),
            stock,
            per_user_limit,
            before,
            classic_queue: classic_queue(&sale),
        });
    }

    let offset = i64::try_from(args.starts_in_ms)
        .ok()
        .and_then(chrono::TimeDelta::try_milliseconds)
        .ok_or_else(|| anyhow!("--starts-in-ms {} is too large", args.starts_in_ms))?;
    let starts_at = chrono::Utc::now() + offset;
    let mut body = json!({
        "item": "bench",
        "stock": args.stock,
        "per_user_limit": args.per_user_limit,
        "starts_at": starts_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    if args.buckets > 1 {
        body["buckets"] = json!(args.buckets);
    }
    let url = api.url(&["api", "v1", "sales"])?;
    let created = api
        .expect(
            api.admin(api.client.post(url))?.json(&body),
            StatusCode::CREATED,
        )
        .await
        .context("creating the sale")?;
    let id = created
        .get("id")
        .and_then(json_id)
        .ok_or_else(|| anyhow!("the created sale has no id: {created}"))?;
    eprintln!(
        "created sale {id} (stock {}, limit {} per user, starts {})",
        args.stock,
        args.per_user_limit,
        starts_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    Ok(Sale {
        id,
        stock: args.stock,
        per_user_limit: args.per_user_limit,
        before: None,
        classic_queue: classic_queue(&created),
    })
}

/// Checks the invariants against what the load observed and what the
/// service now says.
async fn verify(
    api: &Api,
    sale: &Sale,
    args: &BenchArgs,
    outcome: &Outcome,
    concurrency: usize,
) -> Vec<checks::Check> {
    let before_persisted = sale.before.as_ref().map_or(0, |s| s.orders_persisted);
    let after = api
        .settled_stats(&sale.id, outcome.orders, before_persisted)
        .await
        .map_err(|e| format!("{e:#}"));
    let sample = args
        .verify_sample
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let (readback, queue_checks) = match &sale.classic_queue {
        // The classic design's store is its queue: every 201 must be there.
        Some(queue) => match classic::drain_queue(&args.queue, queue).await {
            Ok(messages) => {
                classic::judge_queue(&messages, &sale.id, outcome, sale.before.is_some())
            }
            Err(e) => (
                checks::Readback::default(),
                vec![checks::Check::new(
                    "queue_readable",
                    false,
                    format!("{e:#}"),
                )],
            ),
        },
        None => (
            api.read_back(&sale.id, outcome, sample, concurrency, READBACK_ATTEMPTS)
                .await,
            Vec::new(),
        ),
    };
    let sold_before = sale.before.as_ref().map_or(0, |s| s.sold);
    let mut checks = checks::evaluate(&Evidence {
        available: sale.stock.saturating_sub(sold_before),
        stock: sale.stock,
        per_user_limit: sale.per_user_limit,
        quantity: args.quantity,
        outcome,
        reused: sale.before.is_some(),
        before: sale.before.clone(),
        after,
        readback,
    });
    if sale.classic_queue.is_some() {
        classic::on_the_queue(&mut checks);
    }
    checks.extend(queue_checks);
    checks
}

/// Reads a non-negative integer field of a JSON object.
fn field_u64(value: &Value, name: &str) -> anyhow::Result<u64> {
    value
        .get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("missing or invalid `{name}` in {value}"))
}
