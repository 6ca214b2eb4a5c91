//! `flashsale bench`: a load generator for the flash-sale HTTP contract that
//! proves the sale's invariants held once the load stops.
//!
//! A run goes through five steps:
//! 1. create a sale (or reuse one given by `--sale-id`);
//! 2. mint one buyer token per simulated user (`bench-<run id>-<n>`);
//! 3. drive `--concurrency` keep-alive connections, all pulling request
//!    numbers from one shared counter, until `--duration` has passed or
//!    `--requests` have been sent; buyers are served round-robin;
//! 4. print throughput, latency percentiles and every outcome seen, keyed by
//!    status and error code (`201`, `409 sold_out`, `503 overloaded`, …);
//! 5. in `purchase` mode, check the contract's invariants: no oversell,
//!    nobody over the per-user limit, every accepted order unique and
//!    readable, and the server's own stats in agreement.
//!
//! The load is a closed loop: each connection waits for its answer before it
//! sends the next request, so the latency figures do not correct for
//! coordinated omission, and throughput is what `--concurrency` connections
//! achieve against this server.

mod baseline;
mod checks;
mod load;
mod report;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Client, RequestBuilder, StatusCode, Url};
use serde_json::{json, Value};

use flashsale::auth::{mint_token, Secret};

use checks::{Accepted, Evidence, Readback, Stats};
use load::{Plan, Stop};
use report::Summary;

/// Lifetime of the buyer tokens the bench mints: long enough for any run.
const TOKEN_TTL_SECS: u64 = 24 * 3600;
/// How long verification waits for the order writer to catch up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts to read an accepted order back before calling it missing.
const READBACK_ATTEMPTS: u32 = 3;
/// Failure details kept per check; the rest are only counted.
const MAX_SAMPLES: usize = 5;

/// What each simulated request does.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST /api/v1/sales/{id}/purchase` with a buyer token; invariants are
    /// checked afterwards.
    Purchase,
    /// `GET /healthz`: the server's floor, as a baseline; needs no sale and no
    /// credentials.
    Healthz,
    /// `GET /api/v1/sales/{id}`: the public, cacheable sale page.
    SalePage,
    /// Baseline without Flashsale: one PostgreSQL transaction per purchase
    /// that row-locks the stock row and inserts the order (`--database`).
    PgRowLock,
    /// Baseline without Flashsale: the usual Redis seckill — one `EVALSHA`
    /// per purchase (stock and buyer check, decrement) and one confirmed
    /// publish of the order to RabbitMQ (`--redis`, `--queue`).
    RedisEvalsha,
    /// Flashsale's distributed decision step without HTTP, on the same
    /// servers as `redis-evalsha`: concurrent purchases coalesced into one
    /// purchase-script call (with outbox, limits, idempotency) and one
    /// confirmed publish per batch.
    RedisCoalesced,
}

impl Mode {
    /// The name used on the command line and in the JSON summary.
    fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Healthz => "healthz",
            Self::SalePage => "sale-page",
            Self::PgRowLock => "pg-row-lock",
            Self::RedisEvalsha => "redis-evalsha",
            Self::RedisCoalesced => "redis-coalesced",
        }
    }
}

/// Command-line options of `flashsale bench` (the `flashsale-bench` binary).
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "flashsale-bench",
    version,
    about = "Floods a running Flashsale server (or a baseline design) and verifies the sale's invariants."
)]
pub struct BenchArgs {
    /// Base URL of the service under test.
    #[arg(long, env = "FLASHSALE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: Url,

    /// PostgreSQL for `--mode pg-row-lock` (a schema of its own is created
    /// and dropped).
    #[arg(
        long,
        env = "FLASHSALE_BENCH_DATABASE",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub database: String,

    /// Redis for `--mode redis-evalsha` (keys of its own, deleted after).
    #[arg(
        long,
        env = "FLASHSALE_BENCH_REDIS",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis: String,

    /// RabbitMQ for `--mode redis-evalsha` (a queue of its own, deleted after).
    #[arg(
        long,
        env = "FLASHSALE_BENCH_QUEUE",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub queue: String,

    /// Admin bearer token: needed to create the sale and to read its stats
    /// (every mode but `healthz`; `sale-page` with `--sale-id` does without).
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub admin_token: Option<Secret>,

    /// HS256 secret the service verifies buyer tokens with (`purchase` mode).
    #[arg(long, env = "FLASHSALE_JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: Option<Secret>,

    /// Units for sale in the sale the bench creates.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub stock: u64,

    /// Units one buyer may hold in the sale the bench creates.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub per_user_limit: u64,

    /// Distinct simulated buyers, served round-robin.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub users: u32,

    /// Units asked for by each purchase.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub quantity: u64,

    /// Connections (and worker tasks) sending requests at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// How long to send requests, e.g. `10s`, `500ms`, `2m` (default 10s
    /// unless `--requests` is given).
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Total requests to send instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Reuse this sale instead of creating one; its stock and per-user limit
    /// are read from the service.
    #[arg(long)]
    pub sale_id: Option<String>,

    /// Let the created sale start this many milliseconds after the bench
    /// starts (requests before then are answered `403 not_started`).
    #[arg(long, default_value_t = 0)]
    pub starts_in_ms: u64,

    /// What each request does.
    #[arg(long, value_enum, default_value_t = Mode::Purchase)]
    pub mode: Mode,

    /// Print one JSON summary on stdout instead of the report (no progress
    /// bar).
    #[arg(long)]
    pub json: bool,

    /// Read back only this many randomly chosen accepted orders (default:
    /// all of them).
    #[arg(long)]
    pub verify_sample: Option<u64>,

    /// Skip the invariant checks.
    #[arg(long)]
    pub no_verify: bool,

    /// Give up on a single request after this long (counted as `timeout`).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
}

/// Runs the load; `Ok(true)` when every invariant held, `Ok(false)` when one
/// broke.
///
/// The report (or, with `--json`, the JSON summary) goes to stdout; progress
/// and notes go to stderr.
///
/// # Errors
/// When the run cannot take place: missing credentials, an unreachable
/// service, or a sale that cannot be created or read.
pub async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    match args.mode {
        Mode::PgRowLock => return baseline::pg_row_lock(&args).await,
        Mode::RedisEvalsha => return baseline::redis_evalsha(&args).await,
        Mode::RedisCoalesced => return baseline::redis_coalesced(&args).await,
        _ => {}
    }
    let concurrency = usize::try_from(args.concurrency)?;
    let client = Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .http1_only()
        .timeout(args.timeout)
        .user_agent(concat!("flashsale-bench/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;
    let admin = match &args.admin_token {
        Some(token) => Some(bearer(token.expose())?),
        None => None,
    };
    let api = Api {
        client,
        base: args.url.clone(),
        admin,
    };
    let run_id = format!("{:08x}", rand::random::<u32>());
    // Refuse missing credentials before anything is created on the service.
    let secret = match args.mode {
        Mode::Purchase => Some(args.jwt_secret.as_ref().ok_or_else(|| {
            anyhow!("purchase mode needs --jwt-secret (or FLASHSALE_JWT_SECRET)")
        })?),
        Mode::Healthz
        | Mode::SalePage
        | Mode::PgRowLock
        | Mode::RedisEvalsha
        | Mode::RedisCoalesced => None,
    };
    let needs_admin = match args.mode {
        Mode::Healthz | Mode::PgRowLock | Mode::RedisEvalsha | Mode::RedisCoalesced => false,
        Mode::SalePage => args.sale_id.is_none(),
        Mode::Purchase => args.sale_id.is_none() || !args.no_verify,
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
        Mode::Healthz | Mode::PgRowLock | Mode::RedisEvalsha | Mode::RedisCoalesced => None,
        Mode::Purchase | Mode::SalePage => Some(prepare_sale(&api, &args).await?),
    };

    // 2. Buyer tokens, one per simulated user.
    let tokens: Arc<[HeaderValue]> = if let Some(secret) = secret {
        let started = Instant::now();
        let tokens = mint_tokens(secret, &run_id, args.users).await?;
        eprintln!(
            "minted {} buyer tokens in {:.2} s",
            tokens.len(),
            started.elapsed().as_secs_f64()
        );
        tokens.into()
    } else {
        Arc::from(Vec::new())
    };

    // 3. The load.
    let target = match (args.mode, &sale) {
        (Mode::Healthz | Mode::PgRowLock | Mode::RedisEvalsha | Mode::RedisCoalesced, _) => {
            api.url(&["healthz"])?
        }
        (Mode::SalePage, Some(sale)) => api.url(&["api", "v1", "sales", &sale.id])?,
        (Mode::Purchase, Some(sale)) => api.url(&["api", "v1", "sales", &sale.id, "purchase"])?,
        (_, None) => bail!("no sale to send {} requests to", args.mode.as_str()),
    };
    let stop = match (args.requests, args.duration) {
        (Some(n), _) => Stop::Requests(n),
        (None, Some(d)) => Stop::Deadline(d),
        (None, None) => Stop::Deadline(Duration::from_secs(10)),
    };
    let plan = Plan {
        mode: args.mode,
        target,
        // One unit is the contract's default: send no body then, as a buy
        // button would; other quantities go in the JSON body.
        body: (args.quantity != 1).then(|| json!({ "quantity": args.quantity }).to_string()),
        tokens: Arc::clone(&tokens),
        users: args.users,
        quantity: args.quantity,
        sale_id: sale.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
        run_id: run_id.clone(),
        stop,
        concurrency,
    };
    eprintln!(
        "sending {} requests to {} over {concurrency} connections ({})",
        args.mode.as_str(),
        plan.target,
        stop.describe()
    );
    let progress = progress_bar(args.json, stop);
    let outcome = load::drive(&api.client, plan, &progress).await?;

    // 4. The invariants.
    let checks = match (&sale, args.mode, args.no_verify) {
        (Some(sale), Mode::Purchase, false) => {
            eprintln!("verifying invariants…");
            verify(&api, sale, &args, &tokens, &run_id, &outcome, concurrency).await
        }
        _ => Vec::new(),
    };

    // 5. The report.
    let summary = Summary::new(
        &args,
        sale.as_ref()
            .map(|s| (s.id.as_str(), s.stock, s.per_user_limit)),
        &run_id,
        &outcome,
        checks,
    );
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    Ok(summary.ok)
}

/// The sale under load, as the bench knows it.
struct Sale {
    id: String,
    stock: u64,
    per_user_limit: u64,
    /// The sale's stats before the load when the bench reuses a sale; a sale
    /// the bench created starts from nothing sold.
    before: Option<Stats>,
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
            Some(fetch_stats(api, id).await?)
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
        });
    }

    let offset = i64::try_from(args.starts_in_ms)
        .ok()
        .and_then(chrono::TimeDelta::try_milliseconds)
        .ok_or_else(|| anyhow!("--starts-in-ms {} is too large", args.starts_in_ms))?;
    let starts_at = chrono::Utc::now() + offset;
    let body = json!({
        "item": "bench",
        "stock": args.stock,
        "per_user_limit": args.per_user_limit,
        "starts_at": starts_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
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
        .and_then(checks::json_id)
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
    })
}

/// Mints one `Authorization` header value per simulated user, spreading the
/// signing over the machine's cores.
async fn mint_tokens(
    secret: &Secret,
    run_id: &str,
    users: u32,
) -> anyhow::Result<Vec<HeaderValue>> {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let chunk = users.div_ceil(u32::try_from(cores).unwrap_or(1)).max(1);
    let mut tasks = Vec::new();
    let mut first = 0;
    while first < users {
        let last = first.saturating_add(chunk).min(users);
        let secret = secret.clone();
        let run_id = run_id.to_owned();
        tasks.push(tokio::task::spawn_blocking(move || {
            (first..last)
                .map(|n| {
                    let token = mint_token(&secret, &user_name(&run_id, n), TOKEN_TTL_SECS)?;
                    bearer(&token)
                })
                .collect::<anyhow::Result<Vec<_>>>()
        }));
        first = last;
    }
    let mut tokens = Vec::with_capacity(usize::try_from(users)?);
    for task in tasks {
        tokens.extend(task.await??);
    }
    Ok(tokens)
}

/// The user id of simulated buyer `n` in run `run_id`.
fn user_name(run_id: &str, n: u32) -> String {
    format!("bench-{run_id}-{n}")
}

/// An `Authorization: Bearer …` value, marked sensitive so it never prints.
fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .context("a token is not a valid header value")?;
    value.set_sensitive(true);
    Ok(value)
}

/// A progress bar on stderr, hidden for `--json` (and by indicatif itself
/// when stderr is not a terminal).
fn progress_bar(json: bool, stop: Stop) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let length = match stop {
        Stop::Requests(n) => n,
        Stop::Deadline(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Checks the invariants against what the load observed and what the
/// service now says.
async fn verify(
    api: &Api,
    sale: &Sale,
    args: &BenchArgs,
    tokens: &[HeaderValue],
    run_id: &str,
    outcome: &load::Outcome,
    concurrency: usize,
) -> Vec<checks::Check> {
    let orders =
        outcome.accepted.len() + usize::try_from(outcome.unparsed_orders).unwrap_or(usize::MAX);
    let before_persisted = sale.before.as_ref().map_or(0, |s| s.orders_persisted);
    let after = settled_stats(
        api,
        &sale.id,
        u64::try_from(orders).unwrap_or(u64::MAX),
        before_persisted,
    )
    .await
    .map_err(|e| format!("{e:#}"));
    let sample = args
        .verify_sample
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let readback = read_back(
        api,
        &sale.id,
        tokens,
        run_id,
        &outcome.accepted,
        sample,
        concurrency,
    )
    .await;
    let sold_before = sale.before.as_ref().map_or(0, |s| s.sold);
    checks::evaluate(&Evidence {
        available: sale.stock.saturating_sub(sold_before),
        stock: sale.stock,
        per_user_limit: sale.per_user_limit,
        quantity: args.quantity,
        accepted: &outcome.accepted,
        unparsed_orders: outcome.unparsed_orders,
        unparsed_units: outcome.unparsed_units,
        anomalies: outcome.anomalies,
        anomaly_samples: &outcome.anomaly_samples,
        sold_out_seen: outcome.sold_out_seen(),
        ambiguous: outcome.ambiguous,
        reused: sale.before.is_some(),
        before: sale.before.clone(),
        after,
        readback,
    })
}

/// Polls the sale's stats until the order store holds `orders` more orders
/// than before the load, or [`SETTLE_TIMEOUT`] passes; returns the last
/// stats read either way.
async fn settled_stats(
    api: &Api,
    sale_id: &str,
    orders: u64,
    before: u64,
) -> anyhow::Result<Stats> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let stats = fetch_stats(api, sale_id).await;
        let settled =
            matches!(&stats, Ok(s) if s.orders_persisted.saturating_sub(before) >= orders);
        if settled || Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET /api/v1/sales/{id}/stats` with the admin token.
async fn fetch_stats(api: &Api, sale_id: &str) -> anyhow::Result<Stats> {
    let url = api.url(&["api", "v1", "sales", sale_id, "stats"])?;
    let body = api
        .expect(api.admin(api.client.get(url))?, StatusCode::OK)
        .await
        .context("reading the sale's stats")?;
    Stats::from_json(&body).map_err(|e| anyhow!("unexpected stats {body}: {e}"))
}

/// Reads up to `sample` accepted orders (chosen at random when fewer than
/// all) back with their owners' tokens, `concurrency` at a time.
async fn read_back(
    api: &Api,
    sale_id: &str,
    tokens: &[HeaderValue],
    run_id: &str,
    accepted: &[Accepted],
    sample: usize,
    concurrency: usize,
) -> Readback {
    let picked: Vec<&Accepted> = if sample >= accepted.len() {
        accepted.iter().collect()
    } else {
        rand::seq::index::sample(&mut rand::rng(), accepted.len(), sample)
            .into_iter()
            .map(|i| &accepted[i])
            .collect()
    };
    let results: Vec<Result<(), String>> = futures::stream::iter(picked.iter().copied())
        .map(|order| read_one(api, sale_id, tokens, run_id, order))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut readback = Readback {
        checked: picked.len(),
        total: accepted.len(),
        failed: 0,
        samples: Vec::new(),
    };
    for problem in results.into_iter().filter_map(Result::err) {
        readback.failed += 1;
        if readback.samples.len() < MAX_SAMPLES {
            readback.samples.push(problem);
        }
    }
    readback
}

/// Reads one accepted order back; transient answers are retried.
async fn read_one(
    api: &Api,
    sale_id: &str,
    tokens: &[HeaderValue],
    run_id: &str,
    order: &Accepted,
) -> Result<(), String> {
    let owner = user_name(run_id, order.user);
    let token = usize::try_from(order.user)
        .ok()
        .and_then(|i| tokens.get(i))
        .ok_or_else(|| format!("order {}: no token for {owner}", order.order_id))?;
    let url = api
        .url(&["api", "v1", "orders", &order.order_id])
        .map_err(|e| format!("order {}: {e}", order.order_id))?;
    let mut last = String::new();
    for attempt in 0..READBACK_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let answer = api
            .client
            .get(url.clone())
            .header(AUTHORIZATION, token.clone())
            .send()
            .await;
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                last = format!("order {}: {e}", order.order_id);
                continue;
            }
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => {
                last = format!("order {}: {e}", order.order_id);
                continue;
            }
        };
        if status == StatusCode::OK {
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return checks::compare_order(&value, order, &owner, sale_id)
                .map_err(|e| format!("order {}: {e}", order.order_id));
        }
        last = format!(
            "order {} of {owner}: {}",
            order.order_id,
            load::outcome_key(status.as_u16(), &body)
        );
        // Only a lagging store or load shedding is worth another try.
        if !matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            break;
        }
    }
    Err(last)
}

/// The service's endpoints, as the set-up and verification steps use them.
struct Api {
    client: Client,
    base: Url,
    admin: Option<HeaderValue>,
}

impl Api {
    /// `base` with `segments` appended, each percent-encoded.
    fn url(&self, segments: &[&str]) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("{} cannot be a base URL", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Adds the admin token to `request`.
    fn admin(&self, request: RequestBuilder) -> anyhow::Result<RequestBuilder> {
        let token = self
            .admin
            .clone()
            .ok_or_else(|| anyhow!("this needs --admin-token (or FLASHSALE_ADMIN_TOKEN)"))?;
        Ok(request.header(AUTHORIZATION, token))
    }

    /// Sends `request` and returns its JSON body when the status is `want`.
    async fn expect(&self, request: RequestBuilder, want: StatusCode) -> anyhow::Result<Value> {
        let response = request.send().await.context("sending the request")?;
        let status = response.status();
        let url = response.url().clone();
        let body = response.bytes().await.context("reading the answer")?;
        if status != want {
            let shown = String::from_utf8_lossy(&body);
            bail!("{url} answered {status}: {}", shown.trim());
        }
        serde_json::from_slice(&body).with_context(|| format!("{url} answered with invalid JSON"))
    }
}

/// Reads a non-negative integer field of a JSON object.
fn field_u64(value: &Value, name: &str) -> anyhow::Result<u64> {
    value
        .get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("missing or invalid `{name}` in {value}"))
}

/// Clap parser for credentials: any non-empty string.
fn parse_secret(value: &str) -> Result<Secret, String> {
    if value.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(Secret::new(value))
    }
}

/// Parses `10s`, `250ms`, `2m` or `1h`; a bare number means seconds.
///
/// # Errors
/// A message for clap when the text is not a positive whole number followed
/// by one of those units.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 10s, 500ms or 2m"))?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(value),
        "" | "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    if duration.is_zero() {
        return Err("the duration must be positive".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration(" 3 s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn bad_durations_are_refused() {
        for text in ["", "s", "0s", "-1s", "1.5s", "10x", "ten seconds", "5sm"] {
            assert!(parse_duration(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn defaults_and_conflicts() {
        let cli =
            Cli::try_parse_from(["bench", "--admin-token", "a", "--jwt-secret", "s"]).unwrap();
        let args = cli.bench;
        assert_eq!(args.url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(
            (args.stock, args.per_user_limit, args.users, args.quantity),
            (1000, 1, 10_000, 1)
        );
        assert_eq!(args.concurrency, 64);
        assert_eq!(args.mode, Mode::Purchase);
        assert_eq!(args.timeout, Duration::from_secs(10));
        assert!(args.duration.is_none() && args.requests.is_none());
        // The secrets stay out of Debug output.
        assert!(!format!("{args:?}").contains("\"s\""));

        assert!(Cli::try_parse_from(["bench", "--duration", "1s", "--requests", "5"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--users", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--users", "1000001"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--admin-token", ""]).is_err());
        let cli =
            Cli::try_parse_from(["bench", "--mode", "sale-page", "--duration", "500ms"]).unwrap();
        assert_eq!(cli.bench.mode, Mode::SalePage);
        assert_eq!(cli.bench.duration, Some(Duration::from_millis(500)));
    }

    #[test]
    fn urls_are_built_from_segments() {
        let api = Api {
            client: Client::new(),
            base: Url::parse("http://127.0.0.1:8080").unwrap(),
            admin: None,
        };
        assert_eq!(
            api.url(&["api", "v1", "sales", "a b", "purchase"])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/api/v1/sales/a%20b/purchase"
        );
        let prefixed = Api {
            base: Url::parse("http://localhost:9/shop/").unwrap(),
            ..api
        };
        assert_eq!(
            prefixed.url(&["healthz"]).unwrap().as_str(),
            "http://localhost:9/shop/healthz"
        );
    }

    #[test]
    fn tokens_carry_the_user() {
        let secret = Secret::new("s3cret");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let tokens = runtime.block_on(mint_tokens(&secret, "abc", 5)).unwrap();
        assert_eq!(tokens.len(), 5);
        let auth = flashsale::auth::Authenticator::new(&secret, Secret::new("admin"));
        for (n, value) in (0..).zip(&tokens) {
            assert!(value.is_sensitive());
            let header = value.to_str().unwrap();
            let token = flashsale::auth::bearer(header).unwrap();
            assert_eq!(&*auth.verify_buyer(token).unwrap(), user_name("abc", n));
        }
    }
}
