//! Stock in Redis, shared by every node: [`RedisStock`].
//!
//! Every key of one sale carries the same hash tag (`{prefix}:{<sale>}:…`),
//! so each script touches one Redis Cluster slot:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `…:meta` | hash | `stock`, `sold`, `limit`, `start`, `end` (ms, 0 = none) |
//! | `…:holders` | hash | user → units held (pending or paid) |
//! | `…:idem` | hash | `user\nkey` → the order a keyed purchase made |
//! | `…:outbox` | sorted set | accepted orders not yet confirmed by the broker, by time |
//! | `…:released` | set | orders whose units went back (so they go back once) |
//! | `…:seedlock` | string | the node re-seeding the sale after Redis lost it |
//!
//! The purchase decision is one Lua script, loaded with `SCRIPT LOAD` and
//! called with `EVALSHA` (loaded again after `NOSCRIPT`: a restarted or
//! failed-over Redis forgets scripts). It checks the window, the idempotency
//! key, stock and the per-user limit, deducts, and appends the order to the
//! outbox in the same atomic step — so stock is never taken without a record
//! of who took it. The script takes a whole batch of purchases: concurrent
//! purchases on one node are coalesced into one call per sale (see
//! [`RedisStock::reserve`]), which is how one node beats one round trip per
//! request.
//!
//! A missing `meta` means Redis lost the sale (this machine's Redis keeps
//! nothing on disk): the script answers "not seeded" and sells nothing until
//! [`RedisStock::seed`] rebuilds it from the order database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind};
use tokio::sync::{mpsc, oneshot, Semaphore};

use async_trait::async_trait;

use super::stock::{Decision, Reservation, StockError, StockState, StockStore};
use super::SaleRecord;
use crate::domain::{Ledger, Order, Rejection, Sale};

/// Most purchases decided by one script call.
const MAX_BATCH: usize = 256;
/// Script calls in flight at once per node (each carrying a batch).
const IN_FLIGHT_BATCHES: usize = 2;

/// The purchase script. `A` accepted, `R<order>` replay, `U` unseeded; the
/// rejection letters (`{code}`) come from [`Rejection`]'s table.
const PURCHASE_LUA: &str = r"
-- KEYS: meta, holders, idem, outbox
-- ARGV: now, n, then n x (order_id, user, qty, idem_key or '', payload)
local m = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'limit', 'start', 'end')
if not m[1] then return {'U'} end
local stock, sold, limit = tonumber(m[1]), tonumber(m[2]), tonumber(m[3])
local start, fin = tonumber(m[4]), tonumber(m[5])
local now, n = tonumber(ARGV[1]), tonumber(ARGV[2])
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
-- KEYS: meta, holders, released; ARGV: order_id, user, qty
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return -2 end
local q = tonumber(ARGV[3])
local sold = redis.call('HINCRBY', KEYS[1], 'sold', -q)
if redis.call('HINCRBY', KEYS[2], ARGV[2], -q) <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
return tonumber(redis.call('HGET', KEYS[1], 'stock')) - sold
";

const STATE_LUA: &str = r"
-- KEYS: meta, outbox; answers {stock, sold, outbox length} or {} when unseeded
local m = redis.call('HMGET', KEYS[1], 'stock', 'sold')
if not m[1] then return {} end
return {tonumber(m[1]), tonumber(m[2]), redis.call('ZCARD', KEYS[2])}
";

/// Settings of the Redis stock backend (URLs redacted in `Debug`).
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://host:port` URLs; several (or `cluster`) = Redis Cluster seeds.
    pub urls: Vec<String>,
    /// Talk to a Redis Cluster.
    pub cluster: bool,
    /// First part of every key (tests give each run its own).
    pub prefix: String,
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
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => cmd.query_async(&mut c.clone()).await,
            Self::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

struct Script {
    source: String,
    sha: String,
}

impl Script {
    fn new(source: impl Into<String>) -> Self {
        let source = source.into();
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

impl From<RedisError> for StockError {
    fn from(e: RedisError) -> Self {
        Self::new(format!("redis: {e}"))
    }
}

/// Sale stock held in Redis (standalone or Cluster).
pub struct RedisStock {
    conn: Conn,
    prefix: String,
    purchase: Script,
    release: Script,
    state: Script,
    batches: mpsc::UnboundedSender<(u64, Pending)>,
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
        let conn = if settings.cluster || settings.urls.len() > 1 {
            let client = redis::cluster::ClusterClient::new(settings.urls.clone())?;
            Conn::Cluster(client.get_async_connection().await?)
        } else {
            let url = settings
                .urls
                .first()
                .ok_or_else(|| StockError::new("no Redis URL given"))?;
            let client = redis::Client::open(url.as_str())?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_number_of_retries(2);
            Conn::Single(client.get_connection_manager_with_config(config).await?)
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let stock = Arc::new(Self {
            conn,
            prefix: settings.prefix.clone(),
            purchase: Script::new(purchase_script()),
            release: Script::new(RELEASE_LUA),
            state: Script::new(STATE_LUA),
            batches: tx,
        });
        stock.load_scripts().await?;
        tokio::spawn(coalesce(Arc::downgrade(&stock), rx));
        Ok(stock)
    }

    async fn load_scripts(&self) -> Result<(), StockError> {
        for script in [&self.purchase, &self.release, &self.state] {
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

    fn key(&self, sale_id: u64, part: &str) -> String {
        format!("{}:{{{sale_id}}}:{part}", self.prefix)
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

    async fn reserve_batch(
        &self,
        sale_id: u64,
        batch: &[Pending],
    ) -> Result<(Vec<Decision>, u64), StockError> {
        let keys = [
            self.key(sale_id, "meta"),
            self.key(sale_id, "holders"),
            self.key(sale_id, "idem"),
            self.key(sale_id, "outbox"),
        ];
        let now = crate::domain::now_ms().to_string();
        let n = batch.len().to_string();
        let mut owned: Vec<String> = Vec::with_capacity(batch.len() * 3);
        for (r, _) in batch {
            owned.push(r.order.id.to_string());
            owned.push(r.order.quantity.to_string());
        }
        let mut args: Vec<&[u8]> = vec![now.as_bytes(), n.as_bytes()];
        for (i, (r, _)) in batch.iter().enumerate() {
            args.push(owned[2 * i].as_bytes());
            args.push(r.order.user_id.as_bytes());
            args.push(owned[2 * i + 1].as_bytes());
            args.push(r.order.idempotency_key.as_deref().unwrap_or("").as_bytes());
            args.push(r.payload().as_bytes());
        }
        let answer: Vec<String> = self.eval(&self.purchase, &keys, &args).await?;
        parse_decisions(&answer, batch.len())
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
        let keys = [
            self.key(s, "meta"),
            self.key(s, "holders"),
            self.key(s, "released"),
        ];
        let id = order.id.to_string();
        let q = order.quantity.to_string();
        let left: i64 = self
            .eval(
                &self.release,
                &keys,
                &[id.as_bytes(), order.user_id.as_bytes(), q.as_bytes()],
            )
            .await?;
        Ok(match left {
            -1 => None,
            -2 => Some(self.counters(s).await?.map_or(0, |st| st.remaining())),
            n => Some(n.max(0) as u64),
        })
    }

    /// The sale's counters, or `None` when Redis does not hold it.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    async fn counters(&self, sale_id: u64) -> Result<Option<StockState>, StockError> {
        let keys = [self.key(sale_id, "meta"), self.key(sale_id, "outbox")];
        let v: Vec<i64> = self.eval(&self.state, &keys, &[]).await?;
        Ok(match v[..] {
            [stock, sold, outbox] => Some(StockState {
                stock: stock.max(0) as u64,
                sold: sold.max(0) as u64,
                outbox: outbox.max(0) as u64,
            }),
            _ => None,
        })
    }

    async fn write_meta(
        &self,
        sale: &Sale,
        sold: u64,
        only_if_absent: bool,
    ) -> Result<(), StockError> {
        let meta = self.key(sale.id, "meta");
        if only_if_absent {
            let created: bool = self
                .conn
                .query(redis::cmd("HSETNX").arg(&meta).arg("stock").arg(sale.stock))
                .await?;
            if !created {
                return Ok(());
            }
        }
        // `stock` goes last when re-seeding: the script reads a sale as
        // present from the moment `stock` exists.
        let _: () = self
            .conn
            .query(
                redis::cmd("HSET")
                    .arg(&meta)
                    .arg("sold")
                    .arg(sold)
                    .arg("limit")
                    .arg(sale.per_user_limit)
                    .arg("start")
                    .arg(sale.starts_at_ms)
                    .arg("end")
                    .arg(sale.ends_at_ms.unwrap_or(0))
                    .arg("stock")
                    .arg(sale.stock),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl StockStore for RedisStock {
    fn is_shared(&self) -> bool {
        true
    }

    /// Concurrent calls are coalesced: the batching task sends everything
    /// waiting for one sale in one script call. The units left after the
    /// batch are mirrored into `ledger`.
    async fn reserve(
        &self,
        _sale: &Sale,
        ledger: &Ledger,
        reservation: Arc<Reservation>,
    ) -> Result<Decision, StockError> {
        let (tx, rx) = oneshot::channel();
        let sale_id = reservation.order.sale_id;
        self.batches
            .send((sale_id, (reservation, tx)))
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

    async fn sync(&self, ledger: &Ledger, sale_id: u64) -> Result<bool, StockError> {
        Ok(match self.counters(sale_id).await? {
            Some(st) => {
                ledger.mirror_remaining(st.remaining());
                true
            }
            None => false,
        })
    }

    async fn state(&self, sale_id: u64) -> Result<Option<StockState>, StockError> {
        self.counters(sale_id).await
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

    /// Outbox entries older than `older_than_ms` (epoch ms), oldest first.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    async fn outbox_due(
        &self,
        sale_id: u64,
        older_than_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StockError> {
        Ok(self
            .conn
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.key(sale_id, "outbox"))
                    .arg("-inf")
                    .arg(older_than_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?)
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
        self.write_meta(sale, 0, true).await
    }

    /// Rebuilds a sale Redis lost, from the order database: holdings, keyed
    /// orders, returned orders, then the counters last (the moment the sale
    /// sells again). Only the node holding the sale's seed lock does it;
    /// `Ok(false)` when another node is on it or the sale is present.
    ///
    /// # Errors
    /// When Redis cannot be reached (the seed lock then expires and a later
    /// attempt starts over).
    async fn seed(&self, sale: &Sale, from_db: &SaleRecord) -> Result<bool, StockError> {
        let meta = self.key(sale.id, "meta");
        let exists: bool = self.conn.query(redis::cmd("EXISTS").arg(&meta)).await?;
        if exists {
            return Ok(false);
        }
        let lock = self.key(sale.id, "seedlock");
        let locked: Option<String> = self
            .conn
            .query(
                redis::cmd("SET")
                    .arg(&lock)
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000),
            )
            .await?;
        if locked.is_none() {
            return Ok(false);
        }
        for key in ["holders", "idem", "released", "outbox"] {
            let _: i64 = self
                .conn
                .query(redis::cmd("DEL").arg(self.key(sale.id, key)))
                .await?;
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

    /// Deletes every key of `sale_id` (tests and benchmarks clean up).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    async fn forget(&self, sale_id: u64) -> Result<(), StockError> {
        for key in ["meta", "holders", "idem", "outbox", "released", "seedlock"] {
            let _: i64 = self
                .conn
                .query(redis::cmd("DEL").arg(self.key(sale_id, key)))
                .await?;
        }
        Ok(())
    }
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
    mut rx: mpsc::UnboundedReceiver<(u64, Pending)>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_BATCHES));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut groups: HashMap<u64, Vec<Pending>> = HashMap::new();
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
                    match stock.reserve_batch(sale, &batch).await {
                        Ok((decisions, remaining)) => {
                            for ((_, tx), d) in batch.into_iter().zip(decisions) {
                                let _ = tx.send(Ok((d, remaining)));
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
    fn a_short_answer_is_an_error_not_a_guess() {
        assert!(parse_decisions(&["A".to_owned()], 2).is_err());
        assert!(parse_decisions(&["X".to_owned(), "1".to_owned()], 1).is_err());
    }
}
