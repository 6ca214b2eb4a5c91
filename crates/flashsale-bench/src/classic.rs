//! The fair peer: a reference server of the classic seckill design
//! (`flashsale-classic`), kept beside the load tool as a benchmark fixture,
//! so Flashsale is compared with the usual design *over HTTP*, each paying
//! HTTP, buyer tokens and JSON.
//!
//! It is built from the same parts as Flashsale's API node — axum on a
//! multi-threaded tokio runtime, mimalloc, the product's own buyer-token
//! check ([`flashsale::auth::Authenticator`], with its cache of verified
//! tokens), the product's RabbitMQ publisher ([`AmqpQueue`]: a durable
//! quorum queue, publisher confirms) — and does what the classic design
//! does for every purchase:
//!
//! 1. verify the buyer's JWT (`401 unauthorized`), read the optional
//!    `{"quantity": n}` body (`400 invalid_request`), check the sale's
//!    window from memory (`403 not_started` / `ended`);
//! 2. one `EVALSHA` of [`PURCHASE_LUA`], which checks the stock and the
//!    buyer's per-user limit and deducts both atomically
//!    (`409 sold_out` / `409 limit_reached`); the script is loaded at start
//!    and reloaded when Redis answers `NOSCRIPT`;
//! 3. one publish of the order (JSON) to the durable queue, awaited until the
//!    broker confirms it; when the publish fails the units go back
//!    ([`REFUND_LUA`]) and the answer is `503 unavailable`;
//! 4. `201 Created` with the contract's order body.
//!
//! Nothing is artificially serialised: Redis calls go over several
//! multiplexed (pipelined) connections and publishes over several confirm
//! channels, each on its own AMQP connection, taken in turn.
//!
//! It speaks the part of the contract the load tool needs: `POST
//! /api/v1/sales` (admin) and `--stock` seed a sale, `GET
//! /api/v1/sales/{id}` and `GET /api/v1/sales/{id}/stats` (admin) read it,
//! `POST /api/v1/sales/{id}/purchase` buys, `GET /healthz`. Sales live in
//! the process (one API node). Its sale answers say `"design": "classic"`
//! and name the queue, so `flashsale bench --url` of it verifies accepted
//! orders on the queue ([`judge_queue`]) instead of reading them back over
//! HTTP: every `201` must be on the queue exactly once, as its buyer's.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, SecondsFormat, Utc};
use flashsale::auth::{bearer, Authenticator, Secret};
use flashsale::backend::amqp::{AmqpQueue, AmqpSettings};
use flashsale::backend::queue::OrderQueue as _;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::checks::{Check, Readback};
use crate::load::{json_id, Outcome, MAX_SAMPLES};

/// The purchase script, one call per purchase (shared with `--mode
/// redis-evalsha`). KEYS: the sale's stock, its holdings (a hash of buyer →
/// units); ARGV: buyer, quantity, per-user limit. Answers 1 = bought,
/// 0 = sold out (fewer units left than asked), -1 = over the per-user
/// limit, -2 = no such sale.
pub const PURCHASE_LUA: &str = r"
local left = redis.call('GET', KEYS[1])
if not left then return -2 end
local q = tonumber(ARGV[2])
if tonumber(left) < q then return 0 end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if held + q > tonumber(ARGV[3]) then return -1 end
redis.call('HINCRBY', KEYS[2], ARGV[1], q)
redis.call('DECRBY', KEYS[1], q)
return 1
";

/// Gives a purchase's units back when its order could not be published
/// (same keys and first two arguments as [`PURCHASE_LUA`]).
pub const REFUND_LUA: &str = r"
redis.call('HINCRBY', KEYS[2], ARGV[1], -tonumber(ARGV[2]))
redis.call('INCRBY', KEYS[1], ARGV[2])
return 1
";

/// What the sale answers of the classic server say about it.
pub const DESIGN: &str = "classic";

/// Largest quantity one purchase may ask for (the product's bound too).
const MAX_QUANTITY: u64 = 1_000_000_000;

/// Command line of `flashsale-classic`.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "flashsale-classic",
    version,
    about = "The classic seckill design over HTTP (one EVALSHA and one confirmed publish per purchase): the fair peer `flashsale bench` compares Flashsale with."
)]
pub struct ClassicArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// Redis holding the stock and the buyers' holdings.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// RabbitMQ for the order queue.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub queue: String,
    /// First part of every Redis key and of the queue's name
    /// (`<prefix>.orders`); random by default.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Seed sale 1 with this many units at start (open at once).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub stock: Option<u64>,
    /// Units one buyer may hold in the seeded sale.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub per_user_limit: u64,
    /// Multiplexed Redis connections, taken in turn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub redis_connections: u16,
    /// Publishing channels, each on its own AMQP connection, taken in turn.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub amqp_channels: u16,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Keep the Redis keys and the queue at exit (they are deleted by
    /// default: this is a benchmark fixture).
    #[arg(long)]
    pub keep: bool,
    /// Admin bearer token (generated and printed when unset).
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// HS256 secret of buyer tokens, as `flashsale serve` takes it
    /// (generated and printed when unset).
    #[arg(long, env = "FLASHSALE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// A sale to create at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    /// Units for sale.
    pub stock: u64,
    /// Units one buyer may hold.
    pub per_user_limit: u64,
}

/// What the classic server connects to and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis URL.
    pub redis: String,
    /// AMQP URL.
    pub queue: String,
    /// Prefix of its keys and queue.
    pub prefix: String,
    /// HS256 secret of buyer tokens.
    pub jwt_secret: Secret,
    /// The admin token.
    pub admin_token: Secret,
    /// Multiplexed Redis connections.
    pub redis_connections: usize,
    /// Publishing channels.
    pub amqp_channels: usize,
    /// Sale 1, created at start.
    pub seed: Option<Seed>,
}

/// One sale, in the process; its stock and holdings are in Redis.
#[derive(Debug)]
struct Sale {
    id: u64,
    item: String,
    stock: u64,
    per_user_limit: u64,
    starts_at: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
    stock_key: String,
    held_key: String,
    attempts: AtomicU64,
    sold_out: AtomicU64,
    limit_reached: AtomicU64,
    not_started: AtomicU64,
    published: AtomicU64,
}

/// A running classic server's shared state.
struct Shared {
    auth: Authenticator,
    prefix: String,
    queue_name: String,
    redis: Vec<redis::aio::MultiplexedConnection>,
    next_redis: AtomicUsize,
    purchase: redis::Script,
    refund: redis::Script,
    queues: Vec<AmqpQueue>,
    next_queue: AtomicUsize,
    sales: RwLock<HashMap<u64, Arc<Sale>>>,
    next_sale: AtomicU64,
    next_order: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The classic server, connected and ready to serve.
#[derive(Debug, Clone)]
pub struct Classic {
    shared: Arc<Shared>,
}

impl Classic {
    /// Connects to Redis and RabbitMQ, loads the scripts, declares the
    /// queue and creates the seed sale.
    ///
    /// # Errors
    /// When Redis or RabbitMQ cannot be reached.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let client = redis::Client::open(config.redis.as_str()).context("--redis")?;
        let mut redis = Vec::new();
        for _ in 0..config.redis_connections.max(1) {
            redis.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .context("connecting to Redis")?,
            );
        }
        let purchase = redis::Script::new(PURCHASE_LUA);
        let refund = redis::Script::new(REFUND_LUA);
        let mut conn = redis[0].clone();
        purchase.load_async(&mut conn).await?;
        refund.load_async(&mut conn).await?;
        let settings = AmqpSettings {
            url: config.queue.clone(),
            prefix: config.prefix.clone(),
            management: Default::default(),
        };
        let mut queues = Vec::new();
        for _ in 0..config.amqp_channels.max(1) {
            queues.push(
                AmqpQueue::connect(&settings)
                    .await
                    .context("connecting to RabbitMQ")?,
            );
        }
        let first_order = u64::try_from(Utc::now().timestamp_millis())
            .unwrap_or(0)
            .saturating_mul(1_000_000);
        let shared = Arc::new(Shared {
            auth: Authenticator::new(&config.jwt_secret, config.admin_token.clone()),
            prefix: config.prefix.clone(),
            queue_name: format!("{}.orders", config.prefix),
            redis,
            next_redis: AtomicUsize::new(0),
            purchase,
            refund,
            queues,
            next_queue: AtomicUsize::new(0),
            sales: RwLock::new(HashMap::new()),
            next_sale: AtomicU64::new(1),
            next_order: AtomicU64::new(first_order),
        });
        let classic = Self { shared };
        if let Some(seed) = config.seed {
            classic
                .shared
                .create_sale(
                    "classic".to_owned(),
                    seed.stock,
                    seed.per_user_limit,
                    Utc::now(),
                    None,
                )
                .await?;
        }
        Ok(classic)
    }

    /// The name of its order queue.
    pub fn queue_name(&self) -> &str {
        &self.shared.queue_name
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/api/v1/sales", post(create))
            .route("/api/v1/sales/{id}", get(read_sale))
            .route("/api/v1/sales/{id}/stats", get(stats))
            .route("/api/v1/sales/{id}/purchase", post(purchase))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
            .with_state(Arc::clone(&self.shared))
    }

    /// Serves on `listener` until `shutdown` completes, then lets the
    /// requests in flight finish.
    ///
    /// # Errors
    /// When accepting connections fails for good.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        use axum::serve::ListenerExt as _;
        // Small answers: Nagle's delay would only add latency.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving")
    }

    /// Deletes its Redis keys and its queue.
    ///
    /// # Errors
    /// When Redis or RabbitMQ refuse.
    pub async fn cleanup(&self) -> anyhow::Result<()> {
        let keys: Vec<String> = self
            .shared
            .sales
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .flat_map(|s| [s.stock_key.clone(), s.held_key.clone()])
            .collect();
        if !keys.is_empty() {
            let mut conn = self.shared.redis[0].clone();
            let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        }
        self.shared.queues[0].delete_topology().await?;
        Ok(())
    }
}

impl Shared {
    async fn create_sale(
        &self,
        item: String,
        stock: u64,
        per_user_limit: u64,
        starts_at: DateTime<Utc>,
        ends_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<Arc<Sale>> {
        let id = self.next_sale.fetch_add(1, Ordering::Relaxed);
        let sale = Arc::new(Sale {
            id,
            item,
            stock,
            per_user_limit,
            starts_at,
            ends_at,
            stock_key: format!("{}:sale:{id}:stock", self.prefix),
            held_key: format!("{}:sale:{id}:held", self.prefix),
            attempts: AtomicU64::new(0),
            sold_out: AtomicU64::new(0),
            limit_reached: AtomicU64::new(0),
            not_started: AtomicU64::new(0),
            published: AtomicU64::new(0),
        });
        let mut conn = self.redis_conn();
        let _: () = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(&sale.held_key)
            .ignore()
            .cmd("SET")
            .arg(&sale.stock_key)
            .arg(stock)
            .ignore()
            .query_async(&mut conn)
            .await
            .context("seeding the sale in Redis")?;
        self.sales
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, Arc::clone(&sale));
        Ok(sale)
    }

    fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        let i = self.next_redis.fetch_add(1, Ordering::Relaxed) % self.redis.len();
        self.redis[i].clone()
    }

    fn queue(&self) -> &AmqpQueue {
        let i = self.next_queue.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        &self.queues[i]
    }

    fn sale(&self, id: &str) -> Option<Arc<Sale>> {
        let id: u64 = id.parse().ok()?;
        self.sales
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// The sale as the contract shows it, with what the load tool needs to
    /// find its orders.
    async fn view(&self, sale: &Sale) -> Value {
        let left: Option<u64> = redis::cmd("GET")
            .arg(&sale.stock_key)
            .query_async(&mut self.redis_conn())
            .await
            .ok()
            .flatten();
        let remaining = left.unwrap_or(0);
        let now = Utc::now();
        let status = if now < sale.starts_at {
            "upcoming"
        } else if sale.ends_at.is_some_and(|end| now >= end) {
            "ended"
        } else if remaining == 0 {
            "sold_out"
        } else {
            "open"
        };
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        json!({
            "id": sale.id.to_string(),
            "item": sale.item,
            "stock": sale.stock,
            "remaining": remaining,
            "per_user_limit": sale.per_user_limit,
            "starts_at": time(sale.starts_at),
            "ends_at": sale.ends_at.map(time),
            "status": status,
            "design": DESIGN,
            "queue": self.queue_name,
        })
    }
}

/// The contract's error answer.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The answers of a refused purchase, built once: a sold-out flood answers
/// nothing else.
fn static_error(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

const SOLD_OUT: &str = r#"{"error":{"code":"sold_out","message":"the sale is sold out"}}"#;
const LIMIT_REACHED: &str =
    r#"{"error":{"code":"limit_reached","message":"this buyer would exceed the per-user limit"}}"#;
const UNAUTHORIZED: &str =
    r#"{"error":{"code":"unauthorized","message":"a valid buyer token is required"}}"#;

fn json_answer(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The bearer token of a request, if any.
fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
}

/// `None` when the request carries the admin token, else the refusal.
fn refuse_non_admin(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    match token(headers) {
        Some(t) if shared.auth.is_admin(t) => None,
        Some(_) => Some(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this needs the admin token",
        )),
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this needs the admin token",
        )),
    }
}

async fn healthz() -> Response {
    json_answer(StatusCode::OK, &json!({"status": "ok"}))
}

/// The body of `POST /api/v1/sales`, as the contract has it.
#[derive(Deserialize)]
struct NewSale {
    item: String,
    stock: u64,
    #[serde(default = "one")]
    per_user_limit: u64,
    starts_at: DateTime<Utc>,
    #[serde(default)]
    ends_at: Option<DateTime<Utc>>,
}

fn one() -> u64 {
    1
}

async fn create(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refusal) = refuse_non_admin(&shared, &headers) {
        return refusal;
    }
    let new: NewSale = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("invalid sale: {e}"),
            )
        }
    };
    let problem = if new.item.is_empty() || new.item.chars().count() > 200 {
        Some("item must be 1..200 characters")
    } else if !(1..=1_000_000_000).contains(&new.stock) {
        Some("stock must be 1..10^9")
    } else if new.per_user_limit == 0 {
        Some("per_user_limit must be at least 1")
    } else if new.ends_at.is_some_and(|end| end <= new.starts_at) {
        Some("ends_at must be after starts_at")
    } else {
        None
    };
    if let Some(problem) = problem {
        return error(StatusCode::BAD_REQUEST, "invalid_request", problem);
    }
    match shared
        .create_sale(
            new.item,
            new.stock,
            new.per_user_limit,
            new.starts_at,
            new.ends_at,
        )
        .await
    {
        Ok(sale) => {
            let view = shared.view(&sale).await;
            let mut answer = json_answer(StatusCode::CREATED, &view);
            if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/sales/{}", sale.id)) {
                answer.headers_mut().insert(header::LOCATION, location);
            }
            answer
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!("{e:#}"),
        ),
    }
}

async fn read_sale(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.sale(&id) {
        Some(sale) => json_answer(StatusCode::OK, &shared.view(&sale).await),
        None => error(StatusCode::NOT_FOUND, "not_found", "no such sale"),
    }
}

async fn stats(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refuse_non_admin(&shared, &headers) {
        return refusal;
    }
    let Some(sale) = shared.sale(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such sale");
    };
    let left: Result<Option<u64>, _> = redis::cmd("GET")
        .arg(&sale.stock_key)
        .query_async(&mut shared.redis_conn())
        .await;
    let remaining = match left {
        Ok(left) => left.unwrap_or(0),
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &e.to_string(),
            )
        }
    };
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    json_answer(
        StatusCode::OK,
        &json!({
            "sale_id": sale.id.to_string(),
            "stock": sale.stock,
            "sold": sale.stock.saturating_sub(remaining),
            "remaining": remaining,
            // The classic design's order store is the durable queue: an
            // order counts once the broker confirmed it.
            "orders_persisted": n(&sale.published),
            "attempts": n(&sale.attempts),
            "rejected": {
                "sold_out": n(&sale.sold_out),
                "limit_reached": n(&sale.limit_reached),
                "not_started": n(&sale.not_started),
            },
        }),
    )
}

/// Units asked for: 1 without a body, else the body's `quantity` (a JSON
/// object with that one field, or none).
fn quantity(body: &[u8]) -> Result<u64, &'static str> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(1);
    }
    let object: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| "the body must be {\"quantity\": n}")?;
    if object.keys().any(|k| k != "quantity") {
        return Err("the body must be {\"quantity\": n}");
    }
    match object.get("quantity") {
        None => Ok(1),
        Some(q) => q
            .as_u64()
            .filter(|q| (1..=MAX_QUANTITY).contains(q))
            .ok_or("quantity must be a whole number from 1"),
    }
}

async fn purchase(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // 1. The buyer, the sale, the body, the window.
    let Some(user) = token(&headers).and_then(|t| shared.auth.verify_buyer(t).ok()) else {
        return static_error(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    };
    let Some(sale) = shared.sale(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such sale");
    };
    sale.attempts.fetch_add(1, Ordering::Relaxed);
    let quantity = match quantity(&body) {
        Ok(q) => q,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid_request", why),
    };
    let now = Utc::now();
    if now < sale.starts_at {
        sale.not_started.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::FORBIDDEN,
            "not_started",
            "the sale has not started",
        );
    }
    if sale.ends_at.is_some_and(|end| now >= end) {
        return error(StatusCode::FORBIDDEN, "ended", "the sale has ended");
    }

    // 2. One script call: stock and per-user limit, deducted atomically.
    let decided: redis::RedisResult<i64> = shared
        .purchase
        .key(&sale.stock_key)
        .key(&sale.held_key)
        .arg(&*user)
        .arg(quantity)
        .arg(sale.per_user_limit)
        .invoke_async(&mut shared.redis_conn())
        .await;
    match decided {
        Ok(1) => {}
        Ok(0) => {
            sale.sold_out.fetch_add(1, Ordering::Relaxed);
            return static_error(StatusCode::CONFLICT, SOLD_OUT);
        }
        Ok(-1) => {
            sale.limit_reached.fetch_add(1, Ordering::Relaxed);
            return static_error(StatusCode::CONFLICT, LIMIT_REACHED);
        }
        Ok(_) => return error(StatusCode::NOT_FOUND, "not_found", "no such sale"),
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &format!("redis: {e}"),
            )
        }
    }

    // 3. One confirmed publish of the order.
    let order_id = shared
        .next_order
        .fetch_add(1, Ordering::Relaxed)
        .to_string();
    let order = json!({
        "order_id": order_id,
        "sale_id": sale.id.to_string(),
        "user_id": &*user,
        "quantity": quantity,
        "status": "pending_payment",
        "created_at": now.to_rfc3339_opts(SecondsFormat::Millis, true),
    });
    let body = order.to_string();
    if let Err(e) = shared.queue().publish_orders(body.as_bytes()).await {
        // No 201 without the order on the queue: the units go back.
        let _: redis::RedisResult<i64> = shared
            .refund
            .key(&sale.stock_key)
            .key(&sale.held_key)
            .arg(&*user)
            .arg(quantity)
            .invoke_async(&mut shared.redis_conn())
            .await;
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!("the order could not be queued: {e}"),
        );
    }
    sale.published.fetch_add(1, Ordering::Relaxed);

    // 4. The answer.
    let mut answer = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/orders/{order_id}")) {
        answer.headers_mut().insert(header::LOCATION, location);
    }
    answer
}

/// Runs `flashsale-classic` with `args` until SIGINT or SIGTERM; prints the
/// generated credentials (when unset), the queue and the address.
///
/// # Errors
/// When the services cannot be reached or the address cannot be bound.
pub async fn main(args: ClassicArgs) -> anyhow::Result<()> {
    let credential = |value: &Option<String>, name: &str| match value {
        Some(v) if !v.is_empty() => Secret::new(v.clone()),
        _ => {
            let generated = Secret::generate();
            println!("{name}={}", generated.expose());
            generated
        }
    };
    let admin_token = credential(&args.admin_token, "FLASHSALE_ADMIN_TOKEN");
    let jwt_secret = credential(&args.jwt_secret, "FLASHSALE_JWT_SECRET");
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("fs_classic_{:08x}", rand::random::<u32>()));
    // The address first: a port taken by another process must not leave a
    // queue behind.
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let classic = Classic::connect(&Config {
        redis: args.redis.clone(),
        queue: args.queue.clone(),
        prefix,
        jwt_secret,
        admin_token,
        redis_connections: usize::from(args.redis_connections),
        amqp_channels: usize::from(args.amqp_channels),
        seed: args.stock.map(|stock| Seed {
            stock,
            per_user_limit: args.per_user_limit,
        }),
    })
    .await?;
    println!("queue {}", classic.queue_name());
    println!(
        "flashsale-classic listening on http://{}",
        listener.local_addr()?
    );
    let served = classic.serve(listener, stop_signal()).await;
    if !args.keep {
        if let Err(e) = classic.cleanup().await {
            eprintln!("flashsale-classic: cleaning up: {e:#}");
        }
    }
    served
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// One order as the classic server queued it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Queued {
    /// Its id (the `201`'s `order_id`).
    pub order_id: String,
    /// Its sale.
    pub sale_id: String,
    /// Its buyer.
    pub user_id: String,
    /// Units.
    pub quantity: u64,
}

/// Reads a queued message; `None` for one that is not an order.
pub fn parse_queued(body: &[u8]) -> Option<Queued> {
    let value: Value = serde_json::from_slice(body).ok()?;
    Some(Queued {
        order_id: value.get("order_id").and_then(json_id)?,
        sale_id: value.get("sale_id").and_then(json_id)?,
        user_id: value.get("user_id")?.as_str()?.to_owned(),
        quantity: value.get("quantity")?.as_u64()?,
    })
}

/// Judges the orders found on the queue against the `201`s of `outcome`
/// in `sale_id`: every accepted order is there exactly once as its buyer's,
/// with its quantity, and the queue holds no order nobody was told about
/// (beyond the purchases left without an answer, which may have bought;
/// in a `reused` sale, earlier runs' unverified orders may be there too).
/// Messages of other sales are left out; ones that are not orders count
/// against the queue.
pub fn judge_queue(
    messages: &[Vec<u8>],
    sale_id: &str,
    outcome: &Outcome,
    reused: bool,
) -> (Readback, Vec<Check>) {
    let mut on_queue: HashMap<String, (Queued, u32)> = HashMap::new();
    let (mut others, mut garbage) = (0u64, 0u64);
    for body in messages {
        match parse_queued(body) {
            Some(q) if q.sale_id == sale_id => {
                on_queue
                    .entry(q.order_id.clone())
                    .and_modify(|(_, n)| *n += 1)
                    .or_insert((q, 1));
            }
            Some(_) => others += 1,
            None => garbage += 1,
        }
    }
    let mut readback = Readback {
        checked: outcome.accepted.len(),
        total: outcome.accepted.len(),
        failed: 0,
        samples: Vec::new(),
    };
    let fail = |readback: &mut Readback, why: String| {
        readback.failed += 1;
        if readback.samples.len() < MAX_SAMPLES {
            readback.samples.push(why);
        }
    };
    let accepted: HashSet<&str> = outcome
        .accepted
        .iter()
        .map(|a| a.order_id.as_str())
        .collect();
    for order in &outcome.accepted {
        let owner = outcome.owner(order);
        match on_queue.get(&order.order_id) {
            None => fail(
                &mut readback,
                format!("order {} of {owner}: not on the queue", order.order_id),
            ),
            Some((q, _)) if q.user_id != owner || q.quantity != order.quantity => fail(
                &mut readback,
                format!(
                    "order {}: queued as {} × {}, answered {owner} × {}",
                    order.order_id, q.user_id, q.quantity, order.quantity
                ),
            ),
            Some(_) => {}
        }
    }
    let twice: Vec<&str> = on_queue
        .iter()
        .filter(|(_, (_, n))| *n > 1)
        .map(|(id, _)| id.as_str())
        .collect();
    let untold = on_queue
        .keys()
        .filter(|id| !accepted.contains(id.as_str()))
        .count() as u64;
    let queued_once = Check::new(
        "queued_once",
        twice.is_empty() && garbage == 0,
        format!(
            "{} orders of sale {sale_id} on the queue, {} of them more than once{}; \
             {garbage} messages that are not orders; {others} of other sales left out",
            on_queue.len(),
            twice.len(),
            if twice.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", twice[..twice.len().min(5)].join(", "))
            }
        ),
    );
    let no_untold = Check::new(
        "no_untold_orders",
        reused || untold <= outcome.ambiguous,
        format!(
            "{}{untold} queued orders were never answered 201 ({} purchases had no definite answer)",
            if reused {
                "note: a reused sale, earlier runs' orders may be queued too; "
            } else {
                ""
            },
            outcome.ambiguous
        ),
    );
    (readback, vec![queued_once, no_untold])
}

/// Rewords the read-back verdict for orders checked on the queue (by
/// [`judge_queue`]) rather than read back over HTTP.
pub fn on_the_queue(checks: &mut [Check]) {
    for check in checks.iter_mut().filter(|c| c.name == "orders_readable") {
        check.detail = check
            .detail
            .replace(
                "read back by their owners",
                "found on the queue as their buyers'",
            )
            .replace(
                "read back failed",
                "not found on the queue as their buyers'",
            );
    }
}

/// Takes every message off `queue` (no acknowledgements: the queue is the
/// benchmark's own), until it is empty and nothing more arrives for a
/// moment.
///
/// # Errors
/// When RabbitMQ cannot be reached or the queue does not exist.
pub async fn drain_queue(url: &str, queue: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .context("connecting to --queue to read the classic server's orders")?;
    let channel = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .with_context(|| format!("the queue {queue}"))?;
    let expected = u64::from(declared.message_count());
    channel.basic_qos(2_000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "flashsale-bench-verify".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut messages = Vec::new();
    // Once the count seen at the start is in, wait only briefly for more.
    loop {
        let idle = if (messages.len() as u64) < expected {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(300)
        };
        match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(Ok(delivery))) => messages.push(delivery.data),
            Ok(Some(Err(e))) => return Err(e).context("reading the queue"),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = conn.close(200, "verified".into()).await;
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buyers::Buyers;
    use crate::load::Accepted;

    #[test]
    fn quantities_of_a_purchase_body() {
        assert_eq!(quantity(b""), Ok(1));
        assert_eq!(quantity(b"  \n"), Ok(1));
        assert_eq!(quantity(br#"{"quantity":3}"#), Ok(3));
        assert_eq!(quantity(b"{}"), Ok(1));
        for bad in [
            &br#"{"quantity":0}"#[..],
            br#"{"quantity":-1}"#,
            br#"{"quantity":1.5}"#,
            br#"{"quantity":"2"}"#,
            br#"{"quantity":2000000000}"#,
            br#"{"qty":2}"#,
            b"[1]",
            b"garbage",
        ] {
            assert!(
                quantity(bad).is_err(),
                "{:?} should be refused",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_static_answers_follow_the_contract() {
        for body in [SOLD_OUT, LIMIT_REACHED, UNAUTHORIZED] {
            assert!(crate::load::is_error_envelope(body.as_bytes()), "{body}");
        }
        assert_eq!(
            crate::load::outcome_key(409, SOLD_OUT.as_bytes()),
            crate::load::SOLD_OUT
        );
        assert_eq!(
            crate::load::outcome_key(409, LIMIT_REACHED.as_bytes()),
            "409 limit_reached"
        );
    }

    #[test]
    fn queued_orders_parse() {
        let q = parse_queued(
            br#"{"order_id":"17","sale_id":"1","user_id":"u","quantity":2,"status":"pending_payment"}"#,
        )
        .unwrap();
        assert_eq!(
            q,
            Queued {
                order_id: "17".into(),
                sale_id: "1".into(),
                user_id: "u".into(),
                quantity: 2
            }
        );
        assert!(parse_queued(b"[]").is_none());
        assert!(parse_queued(br#"{"order_id":"1","sale_id":"1","quantity":1}"#).is_none());
    }

    async fn outcome_of(orders: &[(&str, u32)], ambiguous: u64) -> Outcome {
        let buyers = Buyers::mint(&Secret::new("s"), (0..4).map(|i| format!("u{i}")).collect())
            .await
            .unwrap();
        let mut outcome = Outcome::new(Arc::new(buyers));
        for &(id, user) in orders {
            outcome.accepted.push(Accepted {
                order_id: id.to_owned(),
                user,
                quantity: 1,
            });
            outcome.orders += 1;
            outcome.units += 1;
        }
        outcome.ambiguous = ambiguous;
        outcome
    }

    fn message(order: &str, sale: &str, user: &str) -> Vec<u8> {
        json!({"order_id": order, "sale_id": sale, "user_id": user, "quantity": 1})
            .to_string()
            .into_bytes()
    }

    #[tokio::test]
    async fn a_queue_holding_every_201_once_passes() {
        let outcome = outcome_of(&[("o1", 0), ("o2", 1)], 0).await;
        let messages = [
            message("o1", "7", "u0"),
            message("o2", "7", "u1"),
            // Another sale's order is none of this run's business.
            message("o1", "8", "u3"),
        ];
        let (readback, checks) = judge_queue(&messages, "7", &outcome, false);
        assert_eq!((readback.checked, readback.failed), (2, 0), "{readback:?}");
        assert!(checks.iter().all(|c| c.ok), "{checks:?}");
        assert!(checks[0].detail.contains("1 of other sales"), "{checks:?}");
        let mut verdicts = vec![crate::checks::readback(&readback, 0)];
        on_the_queue(&mut verdicts);
        assert_eq!(
            verdicts[0].detail,
            "all 2 accepted orders found on the queue as their buyers'"
        );
    }

    #[tokio::test]
    async fn missing_duplicated_foreign_and_untold_orders_fail() {
        let outcome = outcome_of(&[("o1", 0), ("o2", 1), ("o3", 2)], 0).await;
        let messages = [
            message("o1", "7", "u0"),
            message("o1", "7", "u0"),
            message("o2", "7", "u3"),
            message("o9", "7", "u2"),
            b"not json".to_vec(),
        ];
        let (readback, checks) = judge_queue(&messages, "7", &outcome, false);
        assert_eq!(readback.failed, 2, "o2 is someone else's, o3 is missing");
        let text = readback.samples.join("; ");
        assert!(text.contains("o3 of u2: not on the queue"), "{text}");
        assert!(text.contains("queued as u3"), "{text}");
        assert!(!checks[0].ok, "o1 twice and a message that is no order");
        assert!(!checks[1].ok, "o9 was never answered 201");
        // A purchase without an answer may be the untold order.
        let unsure = outcome_of(&[("o1", 0)], 1).await;
        let (_, checks) = judge_queue(
            &[message("o1", "7", "u0"), message("o9", "7", "u2")],
            "7",
            &unsure,
            false,
        );
        assert!(checks[1].ok, "{checks:?}");
        // So may an earlier run's order in a reused sale.
        let (_, checks) = judge_queue(
            &[message("o1", "7", "u0"), message("o8", "7", "u1")],
            "7",
            &outcome_of(&[("o1", 0)], 0).await,
            true,
        );
        assert!(
            checks[1].ok && checks[1].detail.starts_with("note:"),
            "{checks:?}"
        );
    }
}
