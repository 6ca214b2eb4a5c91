//! Settings: typed, with defaults, from flags and `FLASHSALE_…` variables.
//!
//! `flashsale serve --help` lists every setting with its variable; the
//! README's configuration reference mirrors it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Secret;
use crate::backend::amqp::{AmqpSettings, ManagementApi};
use crate::backend::embedded::SqliteSettings;
use crate::backend::redis::RedisSettings;
use crate::backend::{sql, BackendSettings};
use crate::engine::EngineSettings;
use crate::worker::order_writer::WriterSettings;
use crate::worker::webhooks::WebhookSettings;
use crate::worker::Roles;

/// Everything `flashsale serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// A second address for `/healthz`, `/readyz` and `/metrics` only,
    /// served on a thread of its own so probes are answered during a flood.
    pub ops_listen: Option<SocketAddr>,
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// Order database URL (`postgres://`, `postgresql://`, `mysql://`,
    /// `mariadb://`); `None` keeps orders in the embedded store in `data_dir`.
    pub database: Option<String>,
    /// Shared stock in Redis: `redis://` URLs (several, or `redis_cluster`,
    /// for a Redis Cluster). With `queue` and `database` it makes the node
    /// one of many stateless nodes.
    pub redis: Vec<String>,
    /// Treat `redis` as Redis Cluster seed nodes.
    pub redis_cluster: bool,
    /// The master's name at the Sentinels: `redis` then lists Sentinels.
    pub redis_sentinel: Option<String>,
    /// Fence sales against a failover to a lagging replica (on; off only
    /// for the drill that shows what it prevents).
    pub redis_fencing: bool,
    /// RabbitMQ URL of the order queue (`amqp://…`).
    pub queue: Option<String>,
    /// First part of every Redis key and RabbitMQ name, so several
    /// deployments (or test runs) share the servers.
    pub namespace: String,
    /// RabbitMQ's management API, read for unacknowledged deliveries
    /// (derived from `queue` unless set).
    pub queue_management: ManagementApi,
    /// How the order writer consumes (distributed mode).
    pub writer: WriterSettings,
    /// Admin bearer token; generated and printed when unset.
    pub admin_token: Option<Secret>,
    /// HS256 secret of buyer tokens; generated and printed when unset and
    /// no public key is configured either.
    pub jwt_secret: Option<Secret>,
    /// PEM public key (RSA: RS256, EC P-256: ES256) of buyer tokens.
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file of buyer-token public keys, chosen by `kid`.
    pub jwt_jwks: Option<PathBuf>,
    /// Clock leeway on buyer tokens' `exp` and `nbf`, seconds.
    pub jwt_leeway_secs: u64,
    /// Embedded store settings (group-commit batch size).
    pub store: SqliteSettings,
    /// Rate limits and node id.
    pub engine: EngineSettings,
    /// True when no node id was configured: a distributed node then leases
    /// one from Redis so ids stay unique across nodes.
    pub lease_node_id: bool,
    /// Requests in flight before new ones are shed with `503 overloaded`.
    pub max_in_flight: usize,
    /// Longest a request may take before it is answered `503`.
    pub request_timeout: Duration,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// How often overdue unpaid orders are expired.
    pub sweep_interval: Duration,
    /// Header-read and idle timeouts, the cap on open connections.
    pub connections: crate::http::server::ConnectionSettings,
    /// Serve TLS with this certificate chain and private key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Proxies whose `X-Forwarded-For` names the client (for the per-IP
    /// limit); none by default: the peer is the client.
    pub trusted_proxies: crate::http::client_ip::TrustedProxies,
    /// Signed webhooks of order events (`None`: off, and no outbox rows).
    pub webhooks: Option<WebhookSettings>,
    /// Demo mode: `POST /api/v1/demo/token` hands out buyer tokens, and
    /// `serve` creates a demo sale when there is none. For trying the sale
    /// page locally, never for a real sale.
    pub demo: bool,
    /// What this node runs: the API, the order writer, the relay, the
    /// reconciler, or any subset (distributed mode only; all by default).
    pub roles: Roles,
}

impl Settings {
    /// Defaults with `data_dir` set: the embedded default on a free port.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ops_listen: None,
            data_dir: data_dir.into(),
            database: None,
            redis: Vec::new(),
            redis_cluster: false,
            redis_sentinel: None,
            redis_fencing: true,
            queue: None,
            namespace: "fs".to_owned(),
            queue_management: ManagementApi::Derived,
            writer: WriterSettings::default(),
            admin_token: None,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_jwks: None,
            jwt_leeway_secs: crate::auth::DEFAULT_LEEWAY_SECS,
            store: SqliteSettings::default(),
            engine: EngineSettings::default(),
            lease_node_id: true,
            max_in_flight: 8192,
            request_timeout: Duration::from_secs(10),
            body_limit: 16 * 1024,
            sweep_interval: Duration::from_millis(500),
            connections: crate::http::server::ConnectionSettings::default(),
            tls: None,
            trusted_proxies: crate::http::client_ip::TrustedProxies::default(),
            demo: false,
            webhooks: None,
            roles: Roles::ALL,
        }
    }
}

impl Settings {
    /// The backends these settings name. The distributed mode needs Redis,
    /// RabbitMQ and a SQL database together (any one alone is refused: it
    /// could not keep the invariants).
    ///
    /// # Errors
    /// When the combination is not one of the three modes.
    pub fn backend(&self) -> anyhow::Result<BackendSettings> {
        // The outbox is written only where a dispatcher will read it.
        let outbox = self.webhooks.is_some();
        let sql = sql::SqlSettings {
            max_batch: self.store.max_batch,
            outbox,
            ..sql::SqlSettings::default()
        };
        match (&self.redis[..], &self.queue, &self.database) {
            ([], None, None) => Ok(BackendSettings::Embedded {
                data_dir: self.data_dir.clone(),
                sqlite: SqliteSettings {
                    outbox,
                    ..self.store.clone()
                },
            }),
            ([], None, Some(database)) => Ok(BackendSettings::Sql {
                database: database.clone(),
                sql,
            }),
            ([_, ..], Some(queue), Some(database)) => Ok(BackendSettings::Distributed {
                database: database.clone(),
                sql,
                redis: RedisSettings {
                    urls: self.redis.clone(),
                    cluster: self.redis_cluster,
                    sentinel_master: self.redis_sentinel.clone(),
                    fencing: self.redis_fencing,
                    prefix: self.namespace.clone(),
                },
                queue: AmqpSettings {
                    url: queue.clone(),
                    prefix: self.namespace.clone(),
                    management: self.queue_management.clone(),
                },
            }),
            _ => anyhow::bail!(
                "the distributed mode needs --redis, --queue and --database together \
                 (or none of --redis and --queue for the single-node default)"
            ),
        }
    }
}

/// Flags of `flashsale serve`, each also read from its variable.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Also serve `/healthz`, `/readyz` and `/metrics` on this address,
    /// from a thread of their own: point probes and scrapes here, and they
    /// are answered while the main port is flooded.
    #[arg(long, env = "FLASHSALE_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,
    /// Directory of the embedded order store.
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Order database URL: postgres://, postgresql://, mysql:// or mariadb://
    /// (unset: the embedded store in --data-dir).
    #[arg(long, env = "FLASHSALE_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// Shared stock in Redis, `redis://host:port` (comma-separated seeds for
    /// a Redis Cluster). Needs --queue and --database.
    #[arg(long, env = "FLASHSALE_REDIS", value_delimiter = ',')]
    pub redis: Vec<String>,
    /// Treat --redis as Redis Cluster seed nodes (implied by several URLs).
    #[arg(long, env = "FLASHSALE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Find the Redis master through Sentinel: the master's name; --redis
    /// then lists the Sentinels (redis://host:26379,…). The node follows a
    /// failover on its own.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_SENTINEL",
        conflicts_with = "redis_cluster"
    )]
    pub redis_sentinel: Option<String>,
    /// Fence every sale against a failover to a lagging replica (see
    /// docs/ARCHITECTURE.md). Turning it off oversells after such a
    /// failover; it exists for the drill that shows it.
    #[arg(long, env = "FLASHSALE_REDIS_FENCING", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub redis_fencing: bool,
    /// RabbitMQ URL of the order queue, amqp://user:pass@host:port/vhost.
    /// Needs --redis and --database.
    #[arg(long, env = "FLASHSALE_QUEUE", hide_env_values = true)]
    pub queue: Option<String>,
    /// Prefix of every Redis key and RabbitMQ queue/exchange name.
    #[arg(long, env = "FLASHSALE_NAMESPACE", default_value = "fs")]
    pub namespace: String,
    /// RabbitMQ's management API, for the unacknowledged deliveries a
    /// re-seed waits for: http://[user:pass@]host:port[/prefix]; `off` to
    /// not ask. Unset: the --queue host on port 15672 with its user and
    /// password.
    #[arg(long, env = "FLASHSALE_QUEUE_MANAGEMENT_URL", hide_env_values = true)]
    pub queue_management_url: Option<String>,
    /// Consumers of this node's order writer, each on its own channel with
    /// its own prefetch (distributed mode).
    #[arg(long, env = "FLASHSALE_WRITER_CONSUMERS",
          default_value_t = crate::worker::order_writer::DEFAULT_CONSUMERS as u16,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub writer_consumers: u16,
    /// Unacknowledged deliveries the broker sends each writer consumer ahead.
    #[arg(long, env = "FLASHSALE_WRITER_PREFETCH",
          default_value_t = crate::worker::order_writer::DEFAULT_PREFETCH,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub writer_prefetch: u16,
    /// Most orders one writer consumer stores per batch (at most
    /// 1000 per insert; a larger batch is several inserts).
    #[arg(long, env = "FLASHSALE_WRITER_BATCH",
          default_value_t = crate::worker::order_writer::DEFAULT_BATCH as u32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub writer_batch: u32,
    /// Admin bearer token (generated and printed when unset).
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// HS256 secret for buyer JWTs (generated and printed when unset and no
    /// --jwt-public-key or --jwt-jwks is given).
    #[arg(long, env = "FLASHSALE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Secret that signs waiting-room passes and purchase tickets; every
    /// node of a deployment must share it. Unset: derived from
    /// --jwt-secret, or random for this process (a pass then works only on
    /// the node that issued it).
    #[arg(long, env = "FLASHSALE_PASS_SECRET", hide_env_values = true)]
    pub pass_secret: Option<String>,
    /// PEM public key file for buyer JWTs: RSA (RS256) or EC P-256 (ES256).
    /// The key's type fixes the algorithm a token must use.
    #[arg(long, env = "FLASHSALE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file (`{"keys": [...]}`) of buyer-JWT public keys, RSA and EC,
    /// chosen by the token's `kid`.
    #[arg(long, env = "FLASHSALE_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,
    /// Clock leeway in seconds on buyer JWTs' `exp` and `nbf` (at most 3600).
    #[arg(long, env = "FLASHSALE_JWT_LEEWAY_SECS",
          default_value_t = crate::auth::DEFAULT_LEEWAY_SECS,
          value_parser = clap::value_parser!(u64).range(0..=crate::auth::MAX_LEEWAY_SECS))]
    pub jwt_leeway_secs: u64,
    /// Most writes per group commit (1 = one fsync per order, the baseline).
    #[arg(long, env = "FLASHSALE_COMMIT_BATCH", default_value_t = 4096)]
    pub commit_batch: usize,
    /// Microseconds the writer waits for more writes under load before a
    /// group commit (0 = commit as soon as the queue is empty).
    #[arg(long, env = "FLASHSALE_COMMIT_LINGER_US", default_value_t = 0)]
    pub commit_linger_us: u64,
    /// Requests in flight before shedding with 503.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = 8192)]
    pub max_in_flight: usize,
    /// Request timeout in milliseconds.
    #[arg(long, env = "FLASHSALE_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "FLASHSALE_BODY_LIMIT", default_value_t = 16 * 1024)]
    pub body_limit: usize,
    /// Purchase requests per second per user (0 disables the limit).
    #[arg(long, env = "FLASHSALE_USER_RATE", default_value_t = 20)]
    pub user_rate: u32,
    /// Per-user token-bucket size: requests a user may send at once.
    #[arg(long, env = "FLASHSALE_USER_BURST", default_value_t = 40)]
    pub user_burst: u32,
    /// Purchase requests per second per client IP (0 disables the limit).
    /// The client IP is the peer, or behind --trusted-proxies the
    /// right-most untrusted `X-Forwarded-For` hop.
    #[arg(long, env = "FLASHSALE_IP_RATE", default_value_t = 0)]
    pub ip_rate: u32,
    /// Per-IP burst: requests one address may send at once.
    #[arg(long, env = "FLASHSALE_IP_BURST", default_value_t = 0)]
    pub ip_burst: u32,
    /// Purchase attempts per second that reach one sale's stock decision
    /// (0 disables the limit).
    #[arg(long, env = "FLASHSALE_SALE_RATE", default_value_t = 0)]
    pub sale_rate: u32,
    /// Per-sale burst.
    #[arg(long, env = "FLASHSALE_SALE_BURST", default_value_t = 0)]
    pub sale_burst: u32,
    /// Proxies (comma-separated CIDRs or addresses, e.g.
    /// `10.0.0.0/8,127.0.0.1/32`) whose `X-Forwarded-For` is believed.
    #[arg(long, env = "FLASHSALE_TRUSTED_PROXIES", default_value = "",
          value_parser = crate::http::client_ip::TrustedProxies::parse)]
    pub trusted_proxies: crate::http::client_ip::TrustedProxies,
    /// Demo mode, for trying the sale page locally: anyone may get a buyer
    /// token from `POST /api/v1/demo/token`, and a demo sale is created
    /// when there is none. Never for a real sale.
    #[arg(long, env = "FLASHSALE_DEMO")]
    pub demo: bool,
    /// Expiry sweep interval in milliseconds.
    #[arg(long, env = "FLASHSALE_SWEEP_INTERVAL_MS", default_value_t = 500)]
    pub sweep_interval_ms: u64,
    /// Milliseconds a client may take to send a request's head before the
    /// connection is closed (slow clients).
    #[arg(long, env = "FLASHSALE_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Milliseconds a connection may stay open with no request in flight.
    #[arg(long, env = "FLASHSALE_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Serve HTTPS: the certificate chain (PEM). Needs --tls-key. HTTP/2
    /// and HTTP/1.1 are offered by ALPN.
    #[arg(long, env = "FLASHSALE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "FLASHSALE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most connections open at once; at the cap the one idle the longest
    /// is closed. 0: the open-file limit (raised to its hard limit at
    /// start) less 128.
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Captcha verify service (`captcha: true` sales): an http:// URL taking
    /// the siteverify form POST (reCAPTCHA, hCaptcha, Turnstile, or a local
    /// sidecar in front of one). Unset: sales cannot ask for a captcha.
    #[arg(long, env = "FLASHSALE_CAPTCHA_VERIFY_URL", hide_env_values = true,
          value_parser = crate::outbound::parse_http_url)]
    pub captcha_verify_url: Option<axum::http::Uri>,
    /// The site secret sent to the captcha verify service.
    #[arg(long, env = "FLASHSALE_CAPTCHA_SECRET", hide_env_values = true)]
    pub captcha_secret: Option<String>,
    /// Bound on one captcha verify call, milliseconds (then refused).
    #[arg(long, env = "FLASHSALE_CAPTCHA_TIMEOUT_MS", default_value_t = 2_000)]
    pub captcha_timeout_ms: u64,
    /// Deliver order events (accepted, paid, expired, cancelled) to this
    /// http:// URL, signed the Standard Webhooks way (docs/WEBHOOKS.md).
    /// Needs --webhook-secret. Unset: no webhooks.
    #[arg(long, env = "FLASHSALE_WEBHOOK_URL",
          value_parser = crate::outbound::parse_http_url)]
    pub webhook_url: Option<axum::http::Uri>,
    /// The webhook signing secret: `whsec_<base64>` (the Standard Webhooks
    /// form: the key is the decoded bytes) or any other text (its bytes).
    #[arg(long, env = "FLASHSALE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Bound on one webhook attempt, milliseconds.
    #[arg(long, env = "FLASHSALE_WEBHOOK_TIMEOUT_MS", default_value_t = 5_000)]
    pub webhook_timeout_ms: u64,
    /// Attempts before an event is given up on (dead, still in the log).
    #[arg(long, env = "FLASHSALE_WEBHOOK_MAX_ATTEMPTS", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub webhook_max_attempts: u32,
    /// Back-off ceiling after the first failed attempt, milliseconds; it
    /// doubles per failure (the wait is random below it: full jitter).
    #[arg(long, env = "FLASHSALE_WEBHOOK_BACKOFF_MS", default_value_t = 1_000)]
    pub webhook_backoff_ms: u64,
    /// Highest back-off ceiling, milliseconds.
    #[arg(
        long,
        env = "FLASHSALE_WEBHOOK_BACKOFF_MAX_MS",
        default_value_t = 600_000
    )]
    pub webhook_backoff_max_ms: u64,
    /// What this node runs, comma-separated: `api` (the public HTTP API and
    /// what serving it needs: the stock watcher, the buyers' streams),
    /// `writer` (stores queued orders), `relay` (re-publishes orders whose
    /// node died before the broker's confirm; delivers webhooks),
    /// `reconciler` (expires unpaid orders, repairs counts, exports drift),
    /// or `all`. Subsets need the distributed mode. Without `api` the port
    /// serves only `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "FLASHSALE_ROLES", default_value = "all",
          value_parser = Roles::parse)]
    pub roles: Roles,
    /// Node id (0..1023) baked into generated ids; unique per node. Unset:
    /// 0 on a single node, leased from Redis in the distributed mode.
    #[arg(long, env = "FLASHSALE_NODE_ID",
          value_parser = clap::value_parser!(u16).range(0..1024))]
    pub node_id: Option<u16>,
}

impl ServeArgs {
    /// The settings these flags describe.
    pub fn into_settings(self) -> Settings {
        let mut s = Settings::with_data_dir(self.data_dir);
        s.listen = self.listen;
        s.ops_listen = self.ops_listen;
        s.database = self.database.filter(|d| !d.is_empty());
        s.redis = self.redis.into_iter().filter(|r| !r.is_empty()).collect();
        s.redis_cluster = self.redis_cluster;
        s.redis_sentinel = self.redis_sentinel.filter(|m| !m.is_empty());
        s.redis_fencing = self.redis_fencing;
        s.queue = self.queue.filter(|q| !q.is_empty());
        s.namespace = self.namespace;
        s.queue_management = ManagementApi::parse(&self.queue_management_url.unwrap_or_default());
        s.writer = WriterSettings {
            consumers: usize::from(self.writer_consumers),
            prefetch: self.writer_prefetch,
            batch: self.writer_batch as usize,
            ..WriterSettings::default()
        };
        s.admin_token = self.admin_token.filter(|t| !t.is_empty()).map(Secret::new);
        s.jwt_secret = self.jwt_secret.filter(|t| !t.is_empty()).map(Secret::new);
        s.jwt_public_key = self.jwt_public_key.filter(|p| !p.as_os_str().is_empty());
        s.jwt_jwks = self.jwt_jwks.filter(|p| !p.as_os_str().is_empty());
        s.jwt_leeway_secs = self.jwt_leeway_secs;
        s.store.max_batch = self.commit_batch.max(1);
        s.store.linger = Duration::from_micros(self.commit_linger_us);
        s.max_in_flight = self.max_in_flight.max(1);
        s.request_timeout = Duration::from_millis(self.request_timeout_ms.max(1));
        s.body_limit = self.body_limit;
        s.engine.user_rate_per_sec = self.user_rate;
        s.engine.user_burst = self.user_burst;
        s.engine.ip_rate_per_sec = self.ip_rate;
        s.engine.ip_burst = self.ip_burst;
        s.engine.sale_rate_per_sec = self.sale_rate;
        s.engine.sale_burst = self.sale_burst;
        s.trusted_proxies = self.trusted_proxies;
        s.demo = self.demo;
        s.roles = self.roles;
        s.engine.node_id = self.node_id.unwrap_or(0);
        s.engine.pass_secret = match (self.pass_secret.filter(|p| !p.is_empty()), &s.jwt_secret) {
            (Some(secret), _) => Secret::new(secret),
            // Domain-separated by `Signer::new`, so the JWT key is not reused as is.
            (None, Some(jwt)) => jwt.clone(),
            (None, None) => Secret::generate(),
        };
        s.engine.captcha =
            self.captcha_verify_url
                .map(|verify_url| crate::engine::admission::CaptchaSettings {
                    verify_url,
                    secret: Secret::new(self.captcha_secret.unwrap_or_default()),
                    timeout: Duration::from_millis(self.captcha_timeout_ms.max(1)),
                });
        s.webhooks = self.webhook_url.map(|url| WebhookSettings {
            url,
            // An empty secret is refused when the dispatcher starts.
            secret: Secret::new(self.webhook_secret.unwrap_or_default()),
            timeout: Duration::from_millis(self.webhook_timeout_ms.max(1)),
            max_attempts: self.webhook_max_attempts,
            backoff_base: Duration::from_millis(self.webhook_backoff_ms),
            backoff_max: Duration::from_millis(self.webhook_backoff_max_ms),
        });
        s.lease_node_id = self.node_id.is_none();
        s.sweep_interval = Duration::from_millis(self.sweep_interval_ms.max(10));
        s.tls = self.tls_cert.zip(self.tls_key);
        s.connections = crate::http::server::ConnectionSettings {
            header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            max_connections: self.max_connections,
            ..Default::default()
        };
        s
    }
}
