//! Stock in Redis, shared by every node: [`RedisStock`].
//!
//! Every key of one sale — or, for a sale split into buckets (below), of
//! one bucket — carries the same hash tag (`{prefix}:{<tag>}:…`), so each
//! script touches one Redis Cluster slot. The tag is the sale id for a sale
//! of one bucket (the default, and every sale before buckets existed:
//! `{prefix}:{<sale>}:…`, byte for byte):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `…:meta` | hash | `stock`, `sold`, `limit`, `start`, `end` (ms, 0 = none), `rid` (the fencing stamp); `ver` (units added back so far); a bucket's `gen` (its seed generation) and `halt` (ms; set when the sale is being re-seeded as one) |
//! | `…:holders` | hash | user → units held (pending or paid) |
//! | `…:idem` | hash | `user\nkey` → the order a keyed purchase made |
//! | `…:outbox` | sorted set | accepted orders not yet confirmed by the broker, by time |
//! | `…:inflight` | hash | order id → an accepted order not yet stored by a writer (read by any node's `GET` of the order; the writer deletes it once the order is stored) |
//! | `…:released` | set | orders whose units went back (so they go back once) |
//! | `…:seedlock` | string | the node re-seeding the sale after Redis lost it (bucket 0's, for a bucketed sale) |
//! | `…:xfer` | hash | a bucket's transfers out not yet completed: id → `to:units:gen` |
//! | `…:xferin` | set | transfer ids a bucket has received (each is applied once) |
//! | `{prefix}:{<sale>}:buckets` | string | the directory of a bucketed sale: its number of buckets |
//!
//! **Buckets: one hot sale over several shards.** A sale's keys under one
//! tag live on one Redis Cluster master, so one sale's script calls are
//! bound to one shard however large the cluster (about 100k calls/s). A
//! sale created with `buckets: K` (1..=16) has its stock split into K
//! buckets, each a full set of the keys above under its own tag
//! ([`buckets::tag`]: `S.b`, or `S.b.n` for the first `n` whose slot lies
//! near the middle of the `b`-th K-th of the slot space, so K buckets on K
//! masters with the usual even slot ranges land one per master — plain
//! `S.b` tags would share a master two times in three for K = 3).
//! - A buyer's bucket is FNV-1a 64 of the user id mod K
//!   ([`buckets::bucket_of`]): the same on every node and across restarts,
//!   so the per-user limit (`holders`), the idempotency keys (`idem`) and
//!   the outbox stay atomic in one script on one bucket. Purchases are
//!   coalesced per (sale, bucket); returns (expiry, cancel) go to the
//!   buyer's bucket, where its holding is.
//! - Seeding splits the stock as evenly as possible, the remainder to the
//!   low buckets ([`buckets::split`]); each bucket's `meta` counts its own
//!   `stock` and `sold`. The sale's one-bucket tag keeps only the directory,
//!   so a node that has not learned the split yet (it learns it from the
//!   sale it seeds, or from the directory) is redirected by the purchase,
//!   release, state and window scripts in the same call, at no cost to a
//!   sale of one bucket.
//! - **Transfers.** When a buyer's bucket answers "sold out", the node reads
//!   every bucket (one call each, concurrently: they are on different
//!   shards) and moves units from the fullest: a *take* script on the donor
//!   lowers its `stock` by at least half of what it has (at least what the
//!   batch needs) and records the transfer in its `xfer`, in one atomic
//!   step; a *give* script on the receiver adds the units once per transfer
//!   id (`xferin`) and only within the same seed generation; then the
//!   donor's record is cleared. A node dying between the steps leaves the
//!   record, which any node's stock watcher completes (the give is
//!   idempotent): no unit is lost or made. The purchases are then tried
//!   again on their own bucket (rounds repeat, at most 16, then `503`).
//! - **Sold out, exactly.** "Sold out" is answered only when every bucket
//!   read dry with nothing in flight *twice*, with no bucket's `ver` (units
//!   added: returns, transfers in) or `gen` changed in between: units only
//!   reach a bucket by such an addition, and a transfer only starts from a
//!   bucket with units, so at the moment between the two passes the whole
//!   sale was sold out — the answer is as exact as one counter's. The
//!   node's ledger (its local sold-out flag) mirrors the sum over the
//!   buckets, and 0 only after such a proof, so a stale reading never
//!   turns buyers away without a look.
//! - Reading state (`sync`, `state`, the relay's outbox) sums or walks the
//!   buckets; units in flight count as stock.
//! - **Re-seed as one.** A bucket lost (its shard restarted empty) or
//!   fenced while others are current would let those sell on while the
//!   sale's count is rebuilt. So a partial loss that outlasts a second (a
//!   new sale's buckets are written one by one) with no re-seed in progress
//!   halts every bucket (`halt`: every script refuses it as fenced); the
//!   re-seed then waits, beyond the usual drain, until the last bucket was
//!   halted longer than the re-seed settle time, takes bucket 0's seed
//!   lock, clears every bucket and rebuilds each from the database —
//!   holders and keyed orders in their buyer's bucket, every returned order
//!   in every bucket's `released` (the record names them by id only), the
//!   units left split evenly, a new seed generation (so a transfer from
//!   before can never be applied after) — bucket 0 last.
//! - The embedded (in-memory) stock ignores `buckets`: one process, one
//!   ledger, no shard to spread over.
//!
//! The purchase decision is one Lua script, loaded with `SCRIPT LOAD` and
//! called with `EVALSHA` (loaded again after `NOSCRIPT`: a restarted or
//! failed-over Redis forgets scripts). It checks the window, the idempotency
//! key, stock and the per-user limit, deducts, and appends the order to the
//! outbox in the same atomic step — so stock is never taken without a record
//! of who took it. The script takes a whole batch of purchases: concurrent
//! purchases on one node are coalesced into one call per sale and bucket (see
//! [`RedisStock::reserve`]), which is how one node beats one round trip per
//! request.
//!
//! A missing `meta` means Redis lost the sale (this machine's Redis keeps
//! nothing on disk): the script answers "not seeded" and sells nothing until
//! [`RedisStock::seed`] rebuilds it from the order database.
//!
//! **Fencing.** Replication is asynchronous, so a replica promoted by a
//! failover (Sentinel, Redis Cluster) can come up with the sale it knows but
//! an older count: the last decisions are gone and would be sold again. A
//! node cannot tell a caught-up replica from a lagging one, but it can tell
//! that the history changed: a promoted replica starts a new replication id
//! (`master_replid` of `INFO replication`). Every seed stamps the sale's
//! `meta` with the replication id of the server that holds it (`rid`), and
//! every script — purchase, release, state — compares the stamp with the
//! server's id in the same atomic step. A mismatch ("fenced") is treated as
//! a lost sale: `503`, wait for the order queue to drain, re-seed from the
//! database (which then holds every confirmed order), stamp the new id,
//! resume. Any change of master costs that drain, a caught-up one too: the
//! proof that nothing was lost is only in the database.
//!
//! **One clock.** The sale window is decided with the Redis server's clock
//! (`TIME` inside the script), not the node's: a node whose clock runs ahead
//! cannot open a sale early. Nodes read that clock to export their offset
//! and to correct their local early answers.
//!
//! **One window.** The script decides by the `start` / `end` in `meta`,
//! not by what a node believes: an admin's open / close now moves them
//! ([`RedisStock::set_schedule`], only ever to earlier times) and every
//! node mirrors them back with its counters ([`RedisStock::sync`]).

pub mod buckets;
pub(crate) mod limits;
mod room;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind};
use tokio::sync::{mpsc, oneshot, Semaphore};

use async_trait::async_trait;
use dashmap::DashMap;

use self::buckets::Layout;
use super::breaker::Breaker;
use super::stock::{Decision, OrderPlace, Reservation, StockError, StockState, StockStore};
use super::SaleRecord;
use crate::domain::{Ledger, LiveSchedule, Order, Rejection, Sale, Schedule};

/// Most purchases decided by one script call.
const MAX_BATCH: usize = 256;
/// Script calls in flight at once per node (each carrying a batch).
const IN_FLIGHT_BATCHES: usize = 2;

/// The server's replication id and clock, prepended to every script. `INFO`
/// is allowed in scripts (Redis 7 replicates a script's effects, not the
/// script, so reading non-deterministic values is fine).
const LUA_PRELUDE: &str = r"
local function replid()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// The purchase script. `A` accepted, `R<order>` replay, `U` unseeded, `F`
/// fenced (the sale was stamped by another replication history); the
/// rejection letters (`{code}`) come from [`Rejection`]'s table. The last
/// value is the units left, then the server's clock.
const PURCHASE_LUA: &str = r"
-- KEYS: meta, holders, idem, outbox, inflight[, directory (one-bucket keys only)]
-- ARGV: fence ('1' = check the stamp), n, then n x (order_id, user, qty, idem_key or '', payload)
local m = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'limit', 'start', 'end', 'rid', 'halt')
if not m[1] then
  if KEYS[6] then
    local k = redis.call('GET', KEYS[6])
    if k then return {'K', k} end
  end
  return {'U'}
end
if m[7] or (ARGV[1] == '1' and m[6] ~= replid()) then return {'F'} end
local stock, sold, limit = tonumber(m[1]), tonumber(m[2]), tonumber(m[3])
local start, fin = tonumber(m[4]), tonumber(m[5])
local now, n = now_ms(), tonumber(ARGV[2])
local out = {}
for i = 0, n - 1 do
  local b = 3 + i * 5
  local user, q, key, payload = ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4]
  local prior = false
  if key ~= '' then prior = redis.call('HGET', KEYS[3], user .. '\n' .. key) end
  local r
  if prior then r = 'R' .. prior
  elseif now < start then r = '{not_started}'
  elseif fin > 0 and now >= fin then r = '{ended}'
  elseif sold + q > stock then r = '{sold_out}'
  else
    local held = tonumber(redis.call('HGET', KEYS[2], user) or '0')
    if held + q > limit then r = '{limit_reached}'
    else
      sold = sold + q
      redis.call('HINCRBY', KEYS[2], user, q)
      redis.call('ZADD', KEYS[4], now, payload)
      redis.call('HSET', KEYS[5], ARGV[b], payload)
      if key ~= '' then redis.call('HSET', KEYS[3], user .. '\n' .. key, payload) end
      r = 'A'
    end
  end
  out[#out + 1] = r
end
redis.call('HSET', KEYS[1], 'sold', sold)
out[#out + 1] = tostring(stock - sold)
return out
";

const RELEASE_LUA: &str = r"
-- KEYS: meta, holders, released[, directory]; ARGV: order_id, user, qty, fence
-- -1: the sale is absent or fenced (the re-seed counts from the database);
-- -100 - k: absent here, the directory says the sale has k buckets
if redis.call('EXISTS', KEYS[1]) == 0 then
  if KEYS[4] then
    local k = redis.call('GET', KEYS[4])
    if k then return -100 - tonumber(k) end
  end
  return -1
end
local m = redis.call('HMGET', KEYS[1], 'rid', 'halt')
if m[2] or (ARGV[4] == '1' and m[1] ~= replid()) then return -1 end
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return -2 end
local q = tonumber(ARGV[3])
-- An addition of units: what a bucketed sale's sold-out proof watches.
redis.call('HINCRBY', KEYS[1], 'ver', 1)
local sold = redis.call('HINCRBY', KEYS[1], 'sold', -q)
if redis.call('HINCRBY', KEYS[2], ARGV[2], -q) <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
return tonumber(redis.call('HGET', KEYS[1], 'stock')) - sold
";

const STATE_LUA: &str = r"
-- KEYS: meta, outbox, then the directory (ARGV[2] = 'd') or the bucket's
-- transfers (ARGV[2] = 'x'); ARGV: fence, mode
-- answers {stock, sold, outbox length, start, end, ver, units pending out,
-- gen}, {} when unseeded, {-1} when fenced or halted, {-2, k} when the
-- directory says the sale has k buckets
local m = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'rid', 'start', 'end', 'ver', 'gen', 'halt')
if not m[1] then
  if ARGV[2] == 'd' then
    local k = redis.call('GET', KEYS[3])
    if k then return {-2, tonumber(k)} end
  end
  return {}
end
if m[8] or (ARGV[1] == '1' and m[3] ~= replid()) then return {-1} end
local pending = 0
if ARGV[2] == 'x' then
  for _, v in ipairs(redis.call('HVALS', KEYS[3])) do
    pending = pending + tonumber(string.match(v, '^%d+:(%d+):'))
  end
end
return {tonumber(m[1]), tonumber(m[2]), redis.call('ZCARD', KEYS[2]),
  tonumber(m[4]), tonumber(m[5]), tonumber(m[6] or '0'), pending, tonumber(m[7] or '0')}
";

/// Moves the window the purchase script decides by (an admin opened or
/// closed the sale early), for a sale Redis holds; 0 = absent (its re-seed
/// writes the window from the database).
///
/// Each time only moves earlier (as every move of a window does), so a
/// stale write — the reconciler pushing a window it read from the database
/// just before an admin moved it — cannot undo a move. The strings are
/// written as given (a Lua number would be formatted with 14 digits).
const WINDOW_LUA: &str = r"
-- KEYS: meta[, directory]; ARGV: start, end (0 = none)
-- -k: absent here, the directory says the sale has k buckets
local m = redis.call('HMGET', KEYS[1], 'start', 'end')
if not m[1] then
  if KEYS[2] then
    local k = redis.call('GET', KEYS[2])
    if k then return -tonumber(k) end
  end
  return 0
end
local start = m[1]
if tonumber(ARGV[1]) < tonumber(m[1]) then start = ARGV[1] end
local fin, cur, new = m[2], tonumber(m[2]), tonumber(ARGV[2])
if new > 0 and (cur == 0 or new < cur) then fin = ARGV[2] end
redis.call('HSET', KEYS[1], 'start', start, 'end', fin)
return 1
";

/// Claims the re-seed of a sale that is absent, fenced or halted: takes
/// the seed lock and clears what the lost history left (so a fenced sale
/// now reads as absent). 1 = claimed; 0 = present and current, or another
/// node is on it.
const SEED_CLAIM_LUA: &str = r"
-- KEYS: meta, seedlock, then the sale's other keys to clear; ARGV: fence
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'halt') == 0 then
  if ARGV[1] ~= '1' or redis.call('HGET', KEYS[1], 'rid') == replid() then return 0 end
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', 30000) then return 0 end
redis.call('DEL', KEYS[1], unpack(KEYS, 3))
return 1
";

/// Writes a sale's counters, stamped with this server's replication id, in
/// one step (the moment the sale sells). 0 = left alone (`only_if_absent`).
const SEED_META_LUA: &str = r"
-- KEYS: meta; ARGV: sold, limit, start, end, stock, only_if_absent[, gen]
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[7] then redis.call('HSET', KEYS[1], 'gen', ARGV[7]) end
redis.call('HSET', KEYS[1], 'sold', ARGV[1], 'limit', ARGV[2], 'start', ARGV[3],
  'end', ARGV[4], 'rid', replid(), 'stock', ARGV[5])
return 1
";

/// Outbox entries older than `ARGV[1]` ms by the server's clock (the clock
/// that scored them) — none while the sale is absent or fenced: a promoted
/// replica's outbox is stale, and relaying from it between the re-seed's
/// database read and its write would publish orders nobody counted (the
/// hand-off model's counterexample, docs/MODEL.md).
const OUTBOX_DUE_LUA: &str = r"
-- KEYS: outbox, meta; ARGV: age_ms, limit, fence
local m = redis.call('HMGET', KEYS[2], 'rid', 'halt')
if redis.call('EXISTS', KEYS[2]) == 0 then return {} end
if m[2] or (ARGV[3] == '1' and m[1] ~= replid()) then return {} end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms() - tonumber(ARGV[1]),
  'LIMIT', 0, tonumber(ARGV[2]))
";

/// The server's clock, in ms.
const TIME_LUA: &str = r"
return now_ms()
";

/// Settings of the Redis stock backend (URLs redacted in `Debug`).
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://host:port` URLs; several (or `cluster`) = Redis Cluster
    /// seeds; with `sentinel_master`, the Sentinels.
    pub urls: Vec<String>,
    /// Talk to a Redis Cluster.
    pub cluster: bool,
    /// The master's name at the Sentinels in `urls`: the node asks them
    /// where the master is and follows a failover.
    pub sentinel_master: Option<String>,
    /// Check every sale's replication stamp (see the module docs). On
    /// unless a drill turns it off to show what it prevents.
    pub fencing: bool,
    /// First part of every key (tests give each run its own).
    pub prefix: String,
}

impl RedisSettings {
    /// Standalone Redis (or Cluster seeds) at `urls`, fencing on.
    pub fn new(urls: Vec<String>, prefix: impl Into<String>) -> Self {
        Self {
            cluster: urls.len() > 1,
            urls,
            sentinel_master: None,
            fencing: true,
            prefix: prefix.into(),
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| super::sql::redact_url(u))
            .collect();
        f.debug_struct("RedisSettings")
            .field("urls", &urls)
            .field("cluster", &self.cluster)
            .field("sentinel_master", &self.sentinel_master)
            .field("fencing", &self.fencing)
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<Followed>),
}

impl Conn {
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => cmd.query_async(&mut c.clone()).await,
            Self::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            Self::Sentinel(f) => f.query(cmd).await,
        }
    }
}

fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
}

/// A master found through Sentinel, followed across failovers.
///
/// The `redis` crate resolves the master (`SENTINEL get-master-addr-by-name`,
/// then `ROLE` on it) but does not follow it: a connection manager keeps
/// reconnecting to the old address. So this holds the current manager and,
/// when a call fails as a moved or dead master fails (refused, dropped,
/// timed out, `READONLY` from a demoted one), asks the Sentinels again and
/// switches. The stock watcher also calls [`Followed::refresh`] every tick,
/// so an idle node follows too.
struct Followed {
    sentinel: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    current: std::sync::RwLock<(String, ConnectionManager)>,
}

impl Followed {
    async fn connect(urls: &[String], master: &str) -> redis::RedisResult<Self> {
        let mut sentinel = redis::sentinel::SentinelClient::build(
            urls.to_vec(),
            master.to_owned(),
            None,
            redis::sentinel::SentinelServerType::Master,
        )?;
        let client = sentinel.async_get_client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let manager = client
            .get_connection_manager_with_config(manager_config())
            .await?;
        tracing::info!(%addr, master, "redis master found through sentinel");
        Ok(Self {
            sentinel: tokio::sync::Mutex::new(sentinel),
            current: std::sync::RwLock::new((addr, manager)),
        })
    }

    fn manager(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .clone()
    }

    /// Asks the Sentinels where the master is and switches to it if it
    /// moved. True when it switched.
    async fn refresh(&self) -> redis::RedisResult<bool> {
        let client = self.sentinel.lock().await.async_get_client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let known = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone();
        if addr == known {
            return Ok(false);
        }
        let manager = client
            .get_connection_manager_with_config(manager_config())
            .await?;
        tracing::warn!(from = %known, to = %addr, "redis master moved; following it");
        metrics::counter!("flashsale_redis_master_switches_total").increment(1);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (addr, manager);
        Ok(true)
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        match cmd.query_async(&mut self.manager()).await {
            Err(e)
                if e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) =>
            {
                match self.refresh().await {
                    Ok(true) => cmd.query_async(&mut self.manager()).await,
                    _ => Err(e),
                }
            }
            other => other,
        }
    }
}

struct Script {
    source: String,
    sha: String,
}

impl Script {
    fn new(source: &str) -> Self {
        let source = format!("{LUA_PRELUDE}{source}");
        Self {
            sha: redis::Script::new(&source).get_hash().to_owned(),
            source,
        }
    }
}

/// [`PURCHASE_LUA`] with each rejection's letter filled in.
fn purchase_script() -> String {
    Rejection::ALL
        .into_iter()
        .filter(|r| r.spec().script_code != 0)
        .fold(PURCHASE_LUA.to_owned(), |lua, r| {
            lua.replace(
                &format!("{{{}}}", r.code()),
                &char::from(r.spec().script_code).to_string(),
            )
        })
}

/// A purchase waiting for its batch: the decision and the units left after
/// the batch go back on the channel.
type Pending = (
    Arc<Reservation>,
    oneshot::Sender<Result<(Decision, u64), StockError>>,
);

/// Where a purchase goes: its sale and its buyer's bucket (0 for a sale of
/// one bucket). Purchases are coalesced per route.
type Route = (u64, u8);

/// What one purchase script call answered.
enum Answer {
    /// A decision per purchase and the units the bucket has left.
    Decided(Vec<Decision>, u64),
    /// The sale's one-bucket keys are absent and its directory says it has
    /// this many buckets: ask them instead.
    Redirect(u8),
}

impl Answer {
    fn decided(self) -> Result<(Vec<Decision>, u64), StockError> {
        match self {
            Self::Decided(d, left) => Ok((d, left)),
            Self::Redirect(k) => Err(StockError::new(format!(
                "a bucket of a {k}-bucket sale redirected to the directory"
            ))),
        }
    }
}

impl From<RedisError> for StockError {
    fn from(e: RedisError) -> Self {
        Self::new(format!("redis: {e}"))
    }
}

/// Sale stock held in Redis (standalone, Cluster, or found through
/// Sentinel).
pub struct RedisStock {
    conn: Conn,
    prefix: String,
    /// `b"1"` when fencing is on, `b"0"` when a drill turned it off.
    fence: &'static [u8],
    scripts: Scripts,
    bucket_scripts: buckets::BucketScripts,
    room_scripts: room::RoomScripts,
    batches: mpsc::UnboundedSender<(Route, Pending)>,
    /// Sales split over several buckets, as this node knows them (a sale
    /// missing here has one bucket, or this node has not learned its split
    /// yet: its one-bucket keys' directory then redirects).
    layouts: DashMap<u64, Arc<Layout>>,
    /// The circuit breaker in front of this stock, which judges each batch
    /// as one call (see [`StockStore::attach_breaker`]).
    breaker: std::sync::OnceLock<Arc<Breaker>>,
}

struct Scripts {
    purchase: Script,
    release: Script,
    state: Script,
    seed_claim: Script,
    seed_meta: Script,
    outbox_due: Script,
    time: Script,
    window: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            purchase: Script::new(&purchase_script()),
            release: Script::new(RELEASE_LUA),
            state: Script::new(STATE_LUA),
            seed_claim: Script::new(SEED_CLAIM_LUA),
            seed_meta: Script::new(SEED_META_LUA),
            outbox_due: Script::new(OUTBOX_DUE_LUA),
            time: Script::new(TIME_LUA),
            window: Script::new(WINDOW_LUA),
        }
    }

    fn all(&self) -> [&Script; 8] {
        [
            &self.purchase,
            &self.release,
            &self.state,
            &self.seed_claim,
            &self.seed_meta,
            &self.outbox_due,
            &self.time,
            &self.window,
        ]
    }
}

/// What Redis holds of a sale (or of one bucket of it).
enum Held {
    /// The counters and the window the purchase script decides by.
    Present(StockState, Schedule, StateExtra),
    Absent,
    /// Stamped by another replication history: a failover happened since
    /// (or, for a bucketed sale, halted to be re-seeded as one).
    Fenced,
    /// The one-bucket keys are absent; the directory says the sale has
    /// this many buckets.
    Redirect(u8),
}

/// What a bucketed sale's transfers and sold-out proof read of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct StateExtra {
    /// Additions of units so far (returns, transfers in).
    ver: i64,
    /// Units taken off this bucket for a transfer not yet completed.
    pending: u64,
    /// The seed generation (0 for a sale as first published).
    gen: i64,
}

impl std::fmt::Debug for RedisStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStock")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStock {
    /// Connects, loads the scripts and starts the batching task.
    ///
    /// # Errors
    /// When Redis cannot be reached or refuses the scripts.
    pub async fn connect(settings: &RedisSettings) -> Result<Arc<Self>, StockError> {
        if settings.urls.is_empty() {
            return Err(StockError::new("no Redis URL given"));
        }
        let conn = if let Some(master) = &settings.sentinel_master {
            Conn::Sentinel(Arc::new(Followed::connect(&settings.urls, master).await?))
        } else if settings.cluster || settings.urls.len() > 1 {
            // The crate's defaults retry a dead master 16 times with waits
            // growing to minutes; a purchase should rather fail fast (503)
            // while the cluster promotes a replica, and find it after.
            let client = redis::cluster::ClusterClient::builder(settings.urls.clone())
                .retries(3)
                .min_retry_wait(50)
                .max_retry_wait(500)
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_secs(2))
                .overall_response_timeout(Some(Duration::from_secs(3)))
                .build()?;
            Conn::Cluster(client.get_async_connection().await?)
        } else {
            let client = redis::Client::open(settings.urls[0].as_str())?;
            Conn::Single(
                client
                    .get_connection_manager_with_config(manager_config())
                    .await?,
            )
        };
        if !settings.fencing {
            tracing::warn!(
                "redis fencing is OFF: a failover to a lagging replica will oversell \
                 (this setting exists for drills only)"
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let stock = Arc::new(Self {
            conn,
            prefix: settings.prefix.clone(),
            fence: if settings.fencing { b"1" } else { b"0" },
            scripts: Scripts::new(),
            bucket_scripts: buckets::BucketScripts::new(),
            room_scripts: room::RoomScripts::new(),
            batches: tx,
            layouts: DashMap::new(),
            breaker: std::sync::OnceLock::new(),
        });
        stock.load_scripts().await?;
        tokio::spawn(coalesce(Arc::downgrade(&stock), rx));
        Ok(stock)
    }

    async fn load_scripts(&self) -> Result<(), StockError> {
        for script in self
            .scripts
            .all()
            .into_iter()
            .chain(self.bucket_scripts.all())
            .chain(self.room_scripts.all())
            .chain([&*limits::SCRIPT])
        {
            // On a cluster the client sends SCRIPT LOAD to every primary.
            let sha: String = self
                .conn
                .query(redis::cmd("SCRIPT").arg("LOAD").arg(&script.source))
                .await?;
            if sha != script.sha {
                return Err(StockError::new(format!("SCRIPT LOAD answered {sha}")));
            }
        }
        Ok(())
    }

    /// A key of the sale's one-bucket tag (`{prefix}:{S}:part`).
    fn key(&self, sale_id: u64, part: &str) -> String {
        format!("{}:{{{sale_id}}}:{part}", self.prefix)
    }

    /// A key under the hash tag `tag` (`{prefix}:{tag}:part`).
    fn tkey(&self, tag: &str, part: &str) -> String {
        format!("{}:{{{tag}}}:{part}", self.prefix)
    }

    /// The in-flight hash of `user`'s orders in a sale of `k` buckets:
    /// under the buyer's bucket's tag, where the purchase script wrote it
    /// (for one bucket, the sale's own tag).
    fn in_flight_key(&self, sale_id: u64, user: &str, k: u8) -> String {
        let b = buckets::bucket_of(user, k);
        self.tkey(&buckets::tag(sale_id, b, k), "inflight")
    }

    /// `EVALSHA`, loading the scripts again once on `NOSCRIPT`.
    async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, StockError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha).arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(*a);
        }
        match self.conn.query(&cmd).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                tracing::info!(
                    "redis forgot the scripts (restart or failover); loading them again"
                );
                self.load_scripts().await?;
                Ok(self.conn.query(&cmd).await?)
            }
            other => Ok(other?),
        }
    }

    /// The purchase script's keys under `tag`; `directory` adds the
    /// sale's directory (only under the one-bucket tag, whose slot it
    /// shares).
    fn purchase_keys(&self, tag: &str, directory: bool) -> Vec<String> {
        let mut keys = vec![
            self.tkey(tag, "meta"),
            self.tkey(tag, "holders"),
            self.tkey(tag, "idem"),
            self.tkey(tag, "outbox"),
            self.tkey(tag, "inflight"),
        ];
        if directory {
            keys.push(self.tkey(tag, "buckets"));
        }
        keys
    }

    async fn purchase_call(
        &self,
        keys: &[String],
        batch: &[&Reservation],
    ) -> Result<Answer, StockError> {
        let n = batch.len().to_string();
        let mut owned: Vec<String> = Vec::with_capacity(batch.len() * 2);
        for r in batch {
            owned.push(r.order.id.to_string());
            owned.push(r.order.quantity.to_string());
        }
        let mut args: Vec<&[u8]> = vec![self.fence, n.as_bytes()];
        for (i, r) in batch.iter().enumerate() {
            args.push(owned[2 * i].as_bytes());
            args.push(r.order.user_id.as_bytes());
            args.push(owned[2 * i + 1].as_bytes());
            args.push(r.order.idempotency_key.as_deref().unwrap_or("").as_bytes());
            args.push(r.payload().as_bytes());
        }
        let answer: Vec<String> = self.eval(&self.scripts.purchase, keys, &args).await?;
        parse_answer(&answer, batch.len())
    }

    /// Decides one coalesced batch of a route: a sale of one bucket in one
    /// script call (as before buckets existed); a bucketed sale per bucket
    /// ([`RedisStock::decide_bucket`]). A batch sent to the one-bucket keys
    /// of a sale this node did not know was split is redirected by the
    /// directory and decided on the buckets. Also answers the units the
    /// node's ledger mirrors.
    async fn decide(
        &self,
        // The bucket of the route is the buyers' own (the batch is regrouped
        // by buyer below, which also covers a batch redirected here).
        (sale_id, _bucket): Route,
        batch: &[Pending],
    ) -> Result<(Vec<Result<Decision, StockError>>, u64), StockError> {
        let items: Vec<&Reservation> = batch.iter().map(|(r, _)| &**r).collect();
        let layout = match self.layout(sale_id) {
            Some(layout) => layout,
            None => {
                let keys = self.purchase_keys(&sale_id.to_string(), true);
                match self.purchase_call(&keys, &items).await? {
                    Answer::Decided(d, left) => {
                        return Ok((d.into_iter().map(Ok).collect(), left));
                    }
                    Answer::Redirect(k) => self.learn(sale_id, k).ok_or_else(|| {
                        StockError::new(format!("the sale's directory says {k} buckets"))
                    })?,
                }
            }
        };
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); usize::from(layout.k)];
        for (i, r) in items.iter().enumerate() {
            groups[buckets::bucket_of(&r.order.user_id, layout.k)].push(i);
        }
        let mut out: Vec<Option<Result<Decision, StockError>>> = vec![None; items.len()];
        for (b, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let sub: Vec<&Reservation> = group.iter().map(|&i| items[i]).collect();
            match self.decide_bucket(&layout, b, &sub).await {
                Ok(decided) => {
                    for (&i, d) in group.iter().zip(decided) {
                        out[i] = Some(d);
                    }
                }
                // One bucket failing leaves the other buckets' answers.
                Err(e) => {
                    for &i in group {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        let out = out
            .into_iter()
            .map(|d| d.unwrap_or_else(|| Err(StockError::new("a purchase was not decided"))))
            .collect();
        Ok((out, layout.mirror()))
    }

    /// Returns an order's units to the sale, once per order whatever the
    /// number of calls. `Ok(None)` when Redis does not hold the sale (the
    /// re-seed counts from the database, which already knows the order is
    /// no longer holding stock); otherwise the units now left.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    async fn release_units(&self, order: &Order) -> Result<Option<u64>, StockError> {
        let s = order.sale_id;
        if let Some(layout) = self.layout(s) {
            return self.release_bucket(&layout, order).await;
        }
        let keys = [
            self.key(s, "meta"),
            self.key(s, "holders"),
            self.key(s, "released"),
            self.key(s, "buckets"),
        ];
        Ok(match self.release_call(&keys, order).await? {
            -1 => None,
            -2 => match self.counters(s).await? {
                Held::Present(st, _, _) => Some(st.remaining()),
                _ => None,
            },
            k if k <= -101 => match self.learn(s, (-100 - k).clamp(1, 16) as u8) {
                Some(layout) => self.release_bucket(&layout, order).await?,
                None => None,
            },
            n => Some(n.max(0) as u64),
        })
    }

    /// The release script on `keys`: the units left, or its negative codes.
    async fn release_call(&self, keys: &[String], order: &Order) -> Result<i64, StockError> {
        let id = order.id.to_string();
        let q = order.quantity.to_string();
        self.eval(
            &self.scripts.release,
            keys,
            &[
                id.as_bytes(),
                order.user_id.as_bytes(),
                q.as_bytes(),
                self.fence,
            ],
        )
        .await
    }

    /// What Redis holds of the sale.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    async fn counters(&self, sale_id: u64) -> Result<Held, StockError> {
        let keys = [
            self.key(sale_id, "meta"),
            self.key(sale_id, "outbox"),
            self.key(sale_id, "buckets"),
        ];
        self.counters_with(&keys, b"d").await
    }

    /// The state script on `keys` (meta, outbox, then the directory for
    /// `mode` `d` or the bucket's transfers for `x`).
    async fn counters_with(&self, keys: &[String], mode: &[u8]) -> Result<Held, StockError> {
        let v: Vec<i64> = self
            .eval(&self.scripts.state, keys, &[self.fence, mode])
            .await?;
        Ok(match v[..] {
            [stock, sold, outbox, start, end, ver, pending, gen] => Held::Present(
                StockState {
                    stock: stock.max(0) as u64,
                    sold: sold.max(0) as u64,
                    outbox: outbox.max(0) as u64,
                },
                Schedule {
                    starts_at_ms: start,
                    ends_at_ms: (end > 0).then_some(end),
                },
                StateExtra {
                    ver,
                    pending: pending.max(0) as u64,
                    gen,
                },
            ),
            [-1] => {
                metrics::counter!("flashsale_redis_fenced_total").increment(1);
                Held::Fenced
            }
            [-2, k] => Held::Redirect(k.clamp(1, 16) as u8),
            _ => Held::Absent,
        })
    }

    /// Writes the sale's counters stamped with the server's replication id;
    /// false when `only_if_absent` and the sale is there.
    async fn write_meta(
        &self,
        sale: &Sale,
        sold: u64,
        only_if_absent: bool,
    ) -> Result<bool, StockError> {
        let meta = self.key(sale.id, "meta");
        self.write_meta_at(&meta, sale, sold, sale.stock, only_if_absent, None)
            .await
    }

    /// [`Self::write_meta`] of the `meta` key given, with `stock` units
    /// (a bucket's share) and, for a bucket, the seed generation.
    async fn write_meta_at(
        &self,
        meta: &str,
        sale: &Sale,
        sold: u64,
        stock: u64,
        only_if_absent: bool,
        gen: Option<u64>,
    ) -> Result<bool, StockError> {
        let mut args = vec![
            sold.to_string(),
            sale.per_user_limit.to_string(),
            sale.starts_at_ms.to_string(),
            sale.ends_at_ms.unwrap_or(0).to_string(),
            stock.to_string(),
            u8::from(only_if_absent).to_string(),
        ];
        args.extend(gen.map(|g| g.to_string()));
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let written: i64 = self
            .eval(&self.scripts.seed_meta, &[meta.to_owned()], &args)
            .await?;
        Ok(written == 1)
    }

    /// Follows a Sentinel failover (a no-op for other connections).
    async fn follow_master(&self) {
        if let Conn::Sentinel(f) = &self.conn {
            if let Err(e) = f.refresh().await {
                tracing::debug!(error = %e, "cannot ask the sentinels for the master");
            }
        }
    }
}

#[async_trait]
impl StockStore for RedisStock {
    fn is_shared(&self) -> bool {
        true
    }

    /// Batches are judged by the breaker one script call each, and refused
    /// without a round trip while it is open.
    fn attach_breaker(&self, breaker: Arc<Breaker>) -> bool {
        self.breaker.set(breaker).is_ok()
    }

    /// Concurrent calls are coalesced: the batching task sends everything
    /// waiting for one sale in one script call. The units left after the
    /// batch are mirrored into `ledger`.
    async fn reserve(
        &self,
        _schedule: Schedule,
        ledger: &Ledger,
        reservation: Arc<Reservation>,
    ) -> Result<Decision, StockError> {
        let (tx, rx) = oneshot::channel();
        let sale_id = reservation.order.sale_id;
        // A map miss (a sale of one bucket) is the whole cost for K = 1.
        let bucket = self.layouts.get(&sale_id).map_or(0, |l| {
            buckets::bucket_of(&reservation.order.user_id, l.k) as u8
        });
        self.batches
            .send(((sale_id, bucket), (reservation, tx)))
            .map_err(|_| StockError::new("the stock batcher stopped"))?;
        let (decision, remaining) = rx
            .await
            .map_err(|_| StockError::new("the stock batcher dropped a purchase"))??;
        if matches!(
            decision,
            Decision::Accepted | Decision::Rejected(Rejection::SoldOut)
        ) {
            ledger.mirror_remaining(remaining);
        }
        Ok(decision)
    }

    /// A release for a sale Redis does not hold is a no-op: the re-seed
    /// counts from the database, which already knows the order no longer
    /// holds stock.
    async fn release(&self, ledger: &Ledger, order: &Order) -> Result<(), StockError> {
        if let Some(left) = self.release_units(order).await? {
            ledger.mirror_remaining(left);
        }
        Ok(())
    }

    fn restore(&self, _ledger: &Ledger, _user: &str, _units: u32) {}

    /// Mirrors the units left and the window (which an admin on any node
    /// may have moved) from the sale's `meta`, in the one script call.
    async fn sync(
        &self,
        ledger: &Ledger,
        schedule: &LiveSchedule,
        sale_id: u64,
    ) -> Result<bool, StockError> {
        if let Some(layout) = self.layout(sale_id) {
            return self.sync_buckets(&layout, ledger, schedule).await;
        }
        Ok(match self.counters(sale_id).await? {
            Held::Present(st, window, _) => {
                ledger.mirror_remaining(st.remaining());
                schedule.advance(window);
                true
            }
            Held::Redirect(k) => match self.learn(sale_id, k) {
                Some(layout) => self.sync_buckets(&layout, ledger, schedule).await?,
                None => false,
            },
            Held::Absent | Held::Fenced => false,
        })
    }

    async fn set_schedule(&self, sale_id: u64, schedule: Schedule) -> Result<(), StockError> {
        let start = schedule.starts_at_ms.to_string();
        let end = schedule.ends_at_ms.unwrap_or(0).to_string();
        if let Some(layout) = self.layout(sale_id) {
            return self.set_schedule_buckets(&layout, &start, &end).await;
        }
        let moved: i64 = self
            .eval(
                &self.scripts.window,
                &[self.key(sale_id, "meta"), self.key(sale_id, "buckets")],
                &[start.as_bytes(), end.as_bytes()],
            )
            .await?;
        if moved < 0 {
            if let Some(layout) = self.learn(sale_id, (-moved).clamp(1, 16) as u8) {
                self.set_schedule_buckets(&layout, &start, &end).await?;
            }
        }
        Ok(())
    }

    /// For a bucketed sale, the sums over its buckets (`None` unless every
    /// bucket is current); units in flight between buckets count as stock.
    async fn state(&self, sale_id: u64) -> Result<Option<StockState>, StockError> {
        if let Some(layout) = self.layout(sale_id) {
            return self.state_buckets(&layout).await;
        }
        Ok(match self.counters(sale_id).await? {
            Held::Present(st, _, _) => Some(st),
            Held::Redirect(k) => match self.learn(sale_id, k) {
                Some(layout) => self.state_buckets(&layout).await?,
                None => None,
            },
            Held::Absent | Held::Fenced => None,
        })
    }

    /// Redis's clock (`TIME`), after following a Sentinel failover.
    async fn server_time_ms(&self) -> Result<Option<i64>, StockError> {
        self.follow_master().await;
        let key = format!("{}:clock", self.prefix);
        Ok(Some(self.eval(&self.scripts.time, &[key], &[]).await?))
    }

    /// One `HGET` per sale, side by side (each sale's keys may sit on
    /// another shard); the first record of this buyer wins (an order id is
    /// one order, so at most one sale holds it).
    async fn in_flight_order(
        &self,
        order_id: u64,
        user: &str,
        sales: &[(u64, u8)],
    ) -> Result<Option<Order>, StockError> {
        let id = order_id.to_string();
        let reads = sales.iter().map(|&(sale_id, k)| {
            let key = self.in_flight_key(sale_id, user, k);
            let id = &id;
            async move {
                self.conn
                    .query::<Option<Vec<u8>>>(redis::cmd("HGET").arg(key).arg(id))
                    .await
            }
        });
        for payload in futures::future::join_all(reads).await {
            let Some(payload) = payload? else { continue };
            match Order::from_wire(&payload) {
                Ok(order) if order.id == order_id && order.user_id == user => {
                    return Ok(Some(order))
                }
                Ok(_) => {}
                Err(e) => return Err(StockError::new(format!("an in-flight record: {e}"))),
            }
        }
        Ok(None)
    }

    /// One `HDEL` per (sale, bucket) of the batch, side by side.
    async fn forget_in_flight(&self, orders: &[OrderPlace<'_>]) -> Result<(), StockError> {
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        for o in orders {
            by_key
                .entry(self.in_flight_key(o.sale_id, o.user, o.buckets))
                .or_default()
                .push(o.order_id.to_string());
        }
        let deletes = by_key.into_iter().map(|(key, ids)| async move {
            self.conn
                .query::<i64>(redis::cmd("HDEL").arg(key).arg(ids))
                .await
        });
        for deleted in futures::future::join_all(deletes).await {
            deleted?;
        }
        Ok(())
    }

    /// A node id (0..1024) for this process: ids are unique across nodes
    /// only if node ids are, so distributed nodes take the next number of a
    /// shared counter unless one was configured.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    async fn lease_node_id(&self) -> Result<u16, StockError> {
        let n: u64 = self
            .conn
            .query(redis::cmd("INCR").arg(format!("{}:node-seq", self.prefix)))
            .await?;
        Ok(((n - 1) % 1024) as u16)
    }

    /// Checks Redis answers.
    ///
    /// # Errors
    /// When it does not.
    async fn ping(&self) -> Result<(), StockError> {
        let _: String = self.conn.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Outbox entries older than `age_ms` by Redis's clock (which scored
    /// them), oldest first.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    async fn outbox_due(
        &self,
        sale_id: u64,
        age_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StockError> {
        if let Some(layout) = self.layout(sale_id) {
            return self.outbox_due_buckets(&layout, age_ms, limit).await;
        }
        let (age, limit) = (age_ms.to_string(), limit.to_string());
        self.eval(
            &self.scripts.outbox_due,
            &[self.key(sale_id, "outbox"), self.key(sale_id, "meta")],
            &[age.as_bytes(), limit.as_bytes(), self.fence],
        )
        .await
    }

    /// Drops outbox entries the broker has confirmed.
    ///
    /// # Errors
    /// When Redis cannot be reached (the relay then sends them again, which
    /// the idempotent order writer ignores).
    async fn outbox_remove(&self, sale_id: u64, payloads: &[String]) -> Result<(), StockError> {
        if payloads.is_empty() {
            return Ok(());
        }
        if let Some(layout) = self.layout(sale_id) {
            return self.outbox_remove_buckets(&layout, payloads).await;
        }
        let _: i64 = self
            .conn
            .query(
                redis::cmd("ZREM")
                    .arg(self.key(sale_id, "outbox"))
                    .arg(payloads),
            )
            .await?;
        Ok(())
    }

    /// Publishes a brand-new sale (nothing sold). Overwrites nothing: a sale
    /// already in Redis keeps its counters.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    async fn seed_new(&self, sale: &Sale) -> Result<(), StockError> {
        if let Some(layout) = self.learn(sale.id, sale.buckets) {
            return self.seed_new_buckets(&layout, sale).await;
        }
        self.write_meta(sale, 0, true).await.map(|_| ())
    }

    /// Rebuilds a sale Redis lost — or holds from another replication
    /// history (fenced) — from the order database: holdings, keyed orders,
    /// returned orders, then the counters with the new stamp last (the
    /// moment the sale sells again). Only the node holding the sale's seed
    /// lock does it; `Ok(false)` when another node is on it or the sale is
    /// present and current.
    ///
    /// # Errors
    /// When Redis cannot be reached (the seed lock then expires and a later
    /// attempt starts over).
    async fn seed(&self, sale: &Sale, from_db: &SaleRecord) -> Result<bool, StockError> {
        if let Some(layout) = self.learn(sale.id, sale.buckets) {
            return self.seed_buckets(&layout, sale, from_db).await;
        }
        let lock = self.key(sale.id, "seedlock");
        let keys = [
            "meta", "seedlock", "holders", "idem", "released", "outbox", "inflight",
        ]
        .map(|k| self.key(sale.id, k));
        let claimed: i64 = self
            .eval(&self.scripts.seed_claim, &keys, &[self.fence])
            .await?;
        if claimed == 0 {
            return Ok(false);
        }
        for chunk in from_db.holders.chunks(500) {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(self.key(sale.id, "holders"));
            for (user, units) in chunk {
                cmd.arg(user).arg(units);
            }
            let _: i64 = self.conn.query(&cmd).await?;
        }
        for chunk in from_db.keyed.chunks(500) {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(self.key(sale.id, "idem"));
            for order in chunk {
                let key = order.idempotency_key.as_deref().unwrap_or_default();
                cmd.arg(format!("{}\n{key}", order.user_id))
                    .arg(order.to_wire());
            }
            let _: i64 = self.conn.query(&cmd).await?;
        }
        for chunk in from_db.released.chunks(1000) {
            let _: i64 = self
                .conn
                .query(
                    redis::cmd("SADD")
                        .arg(self.key(sale.id, "released"))
                        .arg(chunk),
                )
                .await?;
        }
        self.write_meta(sale, from_db.sold, false).await?;
        let _: i64 = self.conn.query(redis::cmd("DEL").arg(&lock)).await?;
        Ok(true)
    }

    /// Drops the sale's stamp: every script then answers "fenced" and the
    /// stock watcher re-seeds it (with fencing off, drops the sale's
    /// counters instead, which reads as lost).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    async fn fence(&self, sale_id: u64) -> Result<(), StockError> {
        if let Some(layout) = self.layout(sale_id) {
            return self.halt_all(&layout).await.map(|_| ());
        }
        let meta = self.key(sale_id, "meta");
        let cmd = if self.fence == b"1" {
            redis::cmd("HDEL").arg(&meta).arg("rid").clone()
        } else {
            redis::cmd("DEL").arg(&meta).clone()
        };
        let _: i64 = self.conn.query(&cmd).await?;
        Ok(())
    }

    /// Deletes every key of `sale_id` (tests and benchmarks clean up).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    async fn forget(&self, sale_id: u64) -> Result<(), StockError> {
        let k: Option<u8> = self
            .conn
            .query(redis::cmd("GET").arg(self.key(sale_id, "buckets")))
            .await?;
        if let Some(layout) = self
            .layout(sale_id)
            .or_else(|| k.and_then(|k| self.learn(sale_id, k)))
        {
            self.forget_buckets(&layout).await?;
        }
        for key in [
            "meta", "holders", "idem", "outbox", "inflight", "released", "seedlock", "buckets",
        ] {
            let _: i64 = self
                .conn
                .query(redis::cmd("DEL").arg(self.key(sale_id, key)))
                .await?;
        }
        Ok(())
    }
}

/// The purchase script's answer: a redirect to the buckets, or
/// [`parse_decisions`].
fn parse_answer(answer: &[String], n: usize) -> Result<Answer, StockError> {
    if let [letter, k] = answer {
        if letter == "K" {
            let k: u8 = k
                .parse()
                .map_err(|_| StockError::new(format!("a sale directory holds {k:?}")))?;
            return Ok(Answer::Redirect(k.clamp(1, 16)));
        }
    }
    parse_decisions(answer, n).map(|(d, left)| Answer::Decided(d, left))
}

/// One decision per purchase, and the units left after the batch (the
/// script's last value).
fn parse_decisions(answer: &[String], n: usize) -> Result<(Vec<Decision>, u64), StockError> {
    if answer.first().map(String::as_str) == Some("U") && answer.len() == 1 {
        return Ok((vec![Decision::NotSeeded; n], 0));
    }
    if answer.len() != n + 1 {
        return Err(StockError::new(format!(
            "the purchase script answered {} values for {n} purchases",
            answer.len()
        )));
    }
    let remaining: u64 = answer[n].parse::<i64>().map_or(0, |r| r.max(0) as u64);
    let decisions = answer[..n]
        .iter()
        .map(|r| {
            let letter = r.as_bytes().first().copied().unwrap_or(0);
            Ok(match letter {
                b'A' => Decision::Accepted,
                b'R' => Decision::Replay(Box::new(
                    Order::from_wire(&r.as_bytes()[1..])
                        .map_err(|e| StockError::new(format!("a stored order: {e}")))?,
                )),
                _ => Decision::Rejected(
                    Rejection::from_script_code(letter)
                        .ok_or_else(|| StockError::new(format!("unknown script answer {r:?}")))?,
                ),
            })
        })
        .collect::<Result<_, StockError>>()?;
    Ok((decisions, remaining))
}

/// The batching task: takes a purchase, waits for a free batch slot (more
/// purchases pile up meanwhile), then sends everything waiting — grouped by
/// sale — as one script call per sale. Under load the batches grow by
/// themselves; alone, a purchase goes out at once.
async fn coalesce(
    stock: std::sync::Weak<RedisStock>,
    mut rx: mpsc::UnboundedReceiver<(Route, Pending)>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_BATCHES));
    while let Some(first) = rx.recv().await {
        // While every slot is taken by a stalled call, purchases waiting
        // here are refused as soon as the breaker stops admitting calls,
        // rather than after the stalled calls' timeouts.
        let breaker = stock.upgrade().and_then(|s| s.breaker.get().cloned());
        let permit = loop {
            tokio::select! {
                permit = slots.clone().acquire_owned() => break permit.ok(),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if breaker.as_ref().is_some_and(|b| !b.would_admit()) {
                        break None;
                    }
                }
            }
        };
        let Some(permit) = permit else {
            if slots.is_closed() {
                return;
            }
            let refused = || StockError::new("the stock's circuit breaker is open; retry");
            let _ = first.1 .1.send(Err(refused()));
            while let Ok((_, (_, tx))) = rx.try_recv() {
                let _ = tx.send(Err(refused()));
            }
            continue;
        };
        let mut groups: HashMap<Route, Vec<Pending>> = HashMap::new();
        groups.entry(first.0).or_default().push(first.1);
        let mut taken = 1;
        while taken < MAX_BATCH {
            match rx.try_recv() {
                Ok((sale, p)) => {
                    groups.entry(sale).or_default().push(p);
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        let Some(stock) = stock.upgrade() else {
            return;
        };
        metrics::histogram!("flashsale_redis_batch_size").record(taken as f64);
        tokio::spawn(async move {
            let calls = groups.into_iter().map(|(sale, batch)| {
                let stock = stock.clone();
                async move {
                    let call = stock.decide(sale, &batch);
                    let decided = match stock.breaker.get() {
                        Some(b) => {
                            b.run(
                                call,
                                || StockError::new("the stock's circuit breaker is open; retry"),
                                |_| true,
                            )
                            .await
                        }
                        None => call.await,
                    };
                    match decided {
                        Ok((decisions, remaining)) => {
                            for ((_, tx), d) in batch.into_iter().zip(decisions) {
                                let _ = tx.send(d.map(|d| (d, remaining)));
                            }
                        }
                        Err(e) => {
                            metrics::counter!("flashsale_redis_errors_total").increment(1);
                            for (_, tx) in batch {
                                let _ = tx.send(Err(e.clone()));
                            }
                        }
                    }
                }
            });
            futures::future::join_all(calls).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_parse_per_purchase_with_the_remaining_count_last() {
        let order = Order {
            id: 1,
            sale_id: 2,
            user_id: "u".into(),
            quantity: 1,
            status: crate::domain::OrderStatus::PendingPayment,
            idempotency_key: Some("k".into()),
            created_at_ms: 5,
            updated_at_ms: 5,
            expires_at_ms: None,
        };
        let replay = format!("R{}", order.to_wire());
        let answer: Vec<String> = ["A", "S", "L", replay.as_str(), "N", "E", "7"]
            .map(String::from)
            .to_vec();
        let (d, remaining) = parse_decisions(&answer, 6).unwrap();
        assert_eq!(remaining, 7);
        assert_eq!(d[0], Decision::Accepted);
        assert_eq!(d[1], Decision::Rejected(Rejection::SoldOut));
        assert_eq!(d[2], Decision::Rejected(Rejection::LimitReached));
        assert_eq!(d[3], Decision::Replay(Box::new(order)));
        assert_eq!(d[4], Decision::Rejected(Rejection::NotStarted));
        assert_eq!(d[5], Decision::Rejected(Rejection::Ended));
    }

    #[test]
    fn the_script_carries_every_rejection_letter_it_decides() {
        let lua = purchase_script();
        assert!(!lua.contains("'{"), "a placeholder was left: {lua}");
        for r in Rejection::ALL {
            let c = r.spec().script_code;
            if c != 0 {
                assert!(lua.contains(&format!("r = '{}'", char::from(c))), "{r}");
            }
        }
    }

    #[test]
    fn an_unseeded_sale_refuses_the_whole_batch() {
        let (d, _) = parse_decisions(&["U".to_owned()], 3).unwrap();
        assert_eq!(d, vec![Decision::NotSeeded; 3]);
    }

    #[test]
    fn the_directory_redirects_to_the_buckets() {
        let answer = ["K".to_owned(), "3".to_owned()];
        assert!(matches!(parse_answer(&answer, 5), Ok(Answer::Redirect(3))));
        // `K` must stay free of rejection letters: one purchase rejected
        // with it would answer two values and read as a redirect.
        assert_eq!(Rejection::from_script_code(b'K'), None);
        let bad = ["K".to_owned(), "x".to_owned()];
        assert!(parse_answer(&bad, 1).is_err());
        // One purchase and its count also make two values: not a redirect.
        let decided = ["A".to_owned(), "3".to_owned()];
        assert!(matches!(
            parse_answer(&decided, 1),
            Ok(Answer::Decided(d, 3)) if d == vec![Decision::Accepted]
        ));
    }

    #[test]
    fn a_short_answer_is_an_error_not_a_guess() {
        assert!(parse_decisions(&["A".to_owned()], 2).is_err());
        assert!(parse_decisions(&["X".to_owned(), "1".to_owned()], 1).is_err());
    }
}
