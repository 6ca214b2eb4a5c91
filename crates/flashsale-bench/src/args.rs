//! The command line of `flashsale-bench` (`flashsale bench`): what to load,
//! how hard, for how long, and how to verify it.

use std::time::Duration;

use flashsale::auth::Secret;
use reqwest::Url;

use crate::load::Stop;

/// The shape of a purchase request.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// No body for one unit (the contract's default); `{"quantity": n}`
    /// otherwise.
    Bare,
    /// `{"quantity": n}` with `Content-Type: application/json`, what a
    /// shop's buy button sends.
    Json,
    /// The JSON body and a fresh `Idempotency-Key` on every request.
    Keyed,
    /// The JSON body and one `Idempotency-Key` per buyer, so every request
    /// after a buyer's first is a retry that replays the first answer.
    Replayed,
}

/// The HTTP client the load itself sends with.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadClient {
    /// A lean HTTP/1.1 client that writes each request's bytes as they are
    /// (like `wrk`), so the load tool costs little per request; plain
    /// `http://` only (TLS falls back to reqwest).
    Wire,
    /// reqwest's pooled client: more work per request, most of all for
    /// requests with headers and a body.
    Reqwest,
}

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
    /// Many buyers waiting at once in a sale's waiting room over
    /// server-sent events (`--users` streams, `--room-rate`): admission
    /// rate and order, the sold-out broadcast, the server's memory.
    Room,
    /// The product's order writer draining a pre-filled queue (`--queue`,
    /// `--requests` orders) into `--database` (PostgreSQL or MariaDB):
    /// orders stored per second, each exactly once.
    WriterDrain,
}

/// PostgreSQL's insert shape for `--mode writer-drain`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgShape {
    /// One typed array per column, `INSERT … SELECT * FROM UNNEST(…)`.
    Unnest,
    /// A multi-row `VALUES` list, nine parameters per row.
    Values,
}

impl Mode {
    /// The name used on the command line and in the JSON summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Healthz => "healthz",
            Self::SalePage => "sale-page",
            Self::PgRowLock => "pg-row-lock",
            Self::RedisEvalsha => "redis-evalsha",
            Self::RedisCoalesced => "redis-coalesced",
            Self::Room => "room",
            Self::WriterDrain => "writer-drain",
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

    /// `--mode redis-coalesced`: check each sale's replication stamp in
    /// every script (as the service does); `false` measures what the fence
    /// costs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub redis_fencing: bool,

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

    /// Stock buckets of the sale the bench creates (1..=16): its stock over
    /// that many Redis hash tags, so one hot sale spreads over that many
    /// Redis Cluster shards (the server's `buckets` sale field).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub buckets: u8,

    /// Let the created sale start this many milliseconds after the bench
    /// starts (requests before then are answered `403 not_started`).
    #[arg(long, default_value_t = 0)]
    pub starts_in_ms: u64,

    /// What each request does.
    #[arg(long, value_enum, default_value_t = Mode::Purchase)]
    pub mode: Mode,

    /// The shape of each purchase request (purchase mode): what a client
    /// really sends matters as much as how many.
    #[arg(long, value_enum, default_value_t = Shape::Bare)]
    pub shape: Shape,

    /// The load's own HTTP client for the flood (the set-up and the checks
    /// always use reqwest).
    #[arg(long, value_enum, default_value_t = LoadClient::Wire)]
    pub client: LoadClient,

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

    /// Room mode: buyers let in per second.
    #[arg(long, default_value_t = 1000)]
    pub room_rate: u32,

    /// Room mode: loopback source addresses to spread streams over
    /// (127.0.0.2, 127.0.0.3, …), each good for ~28k connections.
    #[arg(long, default_value_t = 8)]
    pub source_ips: u32,

    /// A server process to measure: the CPU time (user + system) it used
    /// during the load, per accepted order and per request, goes into the
    /// summary (`server_cpu_us_per_accept`); may be repeated, the processes'
    /// times are added. Room mode samples the first one's resident memory.
    #[arg(long)]
    pub server_pid: Vec<u32>,

    /// Probe this path (e.g. `/healthz`, on `--url`) or URL (an operations
    /// port, say) during the load, on a fresh connection each time, and
    /// report its latency (purchase, healthz and sale-page modes); may be
    /// repeated.
    #[arg(long)]
    pub probe: Vec<String>,

    /// How often the probe runs.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub probe_every: Duration,

    /// Give up on a single request after this long (counted as `timeout`).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,

    /// Writer-drain mode: orders per queue message (the hand-off sends the
    /// orders accepted together as one JSON array, up to 512).
    #[arg(long, default_value_t = DEFAULT_ORDERS_PER_MESSAGE,
          value_parser = clap::value_parser!(u32).range(1..=512))]
    pub orders_per_message: u32,

    /// Writer-drain mode: consumers of the writer (`--writer-consumers` of
    /// `flashsale serve`).
    #[arg(long, default_value_t = flashsale::worker::order_writer::DEFAULT_CONSUMERS as u16,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub writer_consumers: u16,

    /// Writer-drain mode: prefetch per consumer.
    #[arg(long, default_value_t = flashsale::worker::order_writer::DEFAULT_PREFETCH,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub writer_prefetch: u16,

    /// Writer-drain mode: most orders per consumer batch.
    #[arg(long, default_value_t = flashsale::worker::order_writer::DEFAULT_BATCH as u32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub writer_batch: u32,

    /// Writer-drain mode: order batches the store inserts side by side.
    #[arg(long, default_value_t = flashsale::backend::sql::DEFAULT_CONCURRENT_INSERTS as u16,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    pub concurrent_inserts: u16,

    /// Writer-drain mode: PostgreSQL's insert statement.
    #[arg(long, value_enum, default_value_t = PgShape::Unnest)]
    pub pg_insert: PgShape,
}

/// Orders per message in writer-drain mode by default.
pub const DEFAULT_ORDERS_PER_MESSAGE: u32 = 1;

impl BenchArgs {
    /// When the load stops: after `--requests`, else after `--duration`
    /// (10 s by default).
    pub fn stop(&self) -> Stop {
        match (self.requests, self.duration) {
            (Some(n), _) => Stop::Requests(n),
            (None, Some(d)) => Stop::Deadline(d),
            (None, None) => Stop::Deadline(Duration::from_secs(10)),
        }
    }
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
    fn writer_drain_flags() {
        let cli = Cli::try_parse_from([
            "bench",
            "--mode",
            "writer-drain",
            "--requests",
            "5000",
            "--orders-per-message",
            "10",
            "--writer-consumers",
            "3",
            "--pg-insert",
            "values",
        ])
        .unwrap();
        let args = cli.bench;
        assert_eq!(args.mode, Mode::WriterDrain);
        assert_eq!(args.mode.as_str(), "writer-drain");
        assert_eq!(
            (
                args.orders_per_message,
                args.writer_consumers,
                args.pg_insert
            ),
            (10, 3, PgShape::Values)
        );
        let defaults = Cli::try_parse_from(["bench"]).unwrap().bench;
        assert_eq!(
            usize::from(defaults.writer_consumers),
            flashsale::worker::order_writer::DEFAULT_CONSUMERS
        );
        assert_eq!(defaults.pg_insert, PgShape::Unnest);
        for bad in [
            &["bench", "--orders-per-message", "0"][..],
            &["bench", "--orders-per-message", "513"],
            &["bench", "--writer-consumers", "0"],
            &["bench", "--pg-insert", "copy"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_stop_follows_requests_then_duration() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["bench"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().bench.stop()
        };
        assert_eq!(parse(&[]), Stop::Deadline(Duration::from_secs(10)));
        assert_eq!(
            parse(&["--duration", "2s"]),
            Stop::Deadline(Duration::from_secs(2))
        );
        assert_eq!(parse(&["--requests", "7"]), Stop::Requests(7));
    }
}
