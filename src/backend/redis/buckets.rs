//! One sale's stock over K Redis hash tags ("buckets"), so one hot sale
//! spreads over K Redis Cluster shards (see the parent module's docs for
//! the design and the key table).
//!
//! What is here: the pure parts (which bucket a buyer is in, how stock is
//! split, which hash tag a bucket has), the node's view of a bucketed sale
//! ([`Layout`]), the transfer scripts, and the bucketed paths of
//! [`RedisStock`]: a purchase on the buyer's bucket that moves units from
//! another bucket when its own runs dry, the sums of `sync` / `state`, the
//! fence of every bucket, and the re-seed of every bucket.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Held, RedisStock, Script, StateExtra};
use crate::backend::stock::{Decision, Reservation, StockError, StockState};
use crate::backend::SaleRecord;
use crate::domain::{Ledger, LiveSchedule, Order, Rejection, Sale, Schedule};

/// Redis Cluster hash slots.
const SLOTS: u32 = 16_384;

/// Rounds of "move units here, buy again" one batch may take before the
/// purchases still short are answered "retry" (a `503`, nothing taken).
const MAX_ROUNDS: usize = 16;

/// How long a partial loss (some buckets current, some not, no re-seed in
/// progress) must last before the current buckets are halted: the moment
/// a sale is created its buckets are written one by one, and a node that
/// looks in between must not take that for a loss.
const PARTIAL_GRACE_MS: u128 = 1_000;

/// The bucket of `user` in a sale of `k` buckets: FNV-1a (64-bit) of the
/// user id's UTF-8 bytes, mod `k`.
///
/// Hand-written (eight lines) because it must never change: every node,
/// before and after any upgrade or restart, must put a buyer in the same
/// bucket, or the per-user limit would be checked in two places. The
/// standard library's hashers are seeded or unspecified across releases.
pub fn bucket_of(user: &str, k: u8) -> usize {
    if k <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(k)) as usize
}

/// `units` split over `k` buckets as evenly as possible, the remainder to
/// the lowest buckets.
pub fn split(units: u64, k: u8) -> Vec<u64> {
    let k = u64::from(k.max(1));
    (0..k)
        .map(|b| units / k + u64::from(b < units % k))
        .collect()
}

/// The Redis Cluster slot of a hash tag (CRC16/XMODEM mod 16384, as Redis
/// computes it).
pub fn slot(tag: &str) -> u16 {
    (u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % SLOTS) as u16
}

/// The hash tag of bucket `b` of sale `sale_id` split over `k` buckets.
///
/// `k == 1`: the sale id (today's keys, byte for byte). Otherwise the first
/// of `S.b`, `S.b.1`, `S.b.2`, … whose slot falls within an eighth of a
/// bucket's share of the slot space around the middle of the `b`-th
/// `k`-th of it. A cluster's masters usually hold contiguous, equal slot
/// ranges (`redis-cli --cluster create` splits them so), so `k` buckets
/// on `k` masters land one per master — plain `S.b` tags would share a
/// master two times in three for `k = 3`. A pure function of the sale id,
/// `b` and `k`: the same on every node and across restarts.
pub fn tag(sale_id: u64, b: usize, k: u8) -> String {
    if k <= 1 {
        return sale_id.to_string();
    }
    let width = SLOTS / u32::from(k);
    let center = width * b as u32 + width / 2;
    let reach = (width / 8).max(1);
    for n in 0..1_000_000u32 {
        let t = if n == 0 {
            format!("{sale_id}.{b}")
        } else {
            format!("{sale_id}.{b}.{n}")
        };
        if u32::from(slot(&t)).abs_diff(center) <= reach {
            return t;
        }
    }
    // Unreachable in practice (CRC16 spreads evenly); any tag is correct,
    // only the spread over masters would suffer.
    format!("{sale_id}.{b}")
}

/// A node's view of a sale split over `k > 1` buckets: the tags, and the
/// units each bucket had left when last seen (for the local sold-out flag).
pub(super) struct Layout {
    pub(super) k: u8,
    tags: Vec<String>,
    left: Vec<AtomicU64>,
    /// Set when every bucket was seen dry twice with nothing moving in
    /// between (see [`RedisStock::prove_dry`]); cleared when units show up.
    proven_dry: AtomicBool,
    /// Since when this node has seen the sale partly lost.
    partial_since: Mutex<Option<Instant>>,
}

impl Layout {
    pub(super) fn new(sale_id: u64, k: u8) -> Self {
        Self {
            k,
            tags: (0..usize::from(k)).map(|b| tag(sale_id, b, k)).collect(),
            left: (0..k).map(|_| AtomicU64::new(0)).collect(),
            proven_dry: AtomicBool::new(false),
            partial_since: Mutex::new(None),
        }
    }

    pub(super) fn tag(&self, b: usize) -> &str {
        &self.tags[b]
    }

    fn note(&self, b: usize, left: u64) {
        self.left[b].store(left, Ordering::Release);
        if left > 0 {
            self.proven_dry.store(false, Ordering::Release);
        }
    }

    /// What the node's ledger mirrors: the units last seen in every bucket
    /// — but never 0 unless proven, so a stale zero (a bucket that got
    /// units since it was read) never turns buyers away without a look.
    pub(super) fn mirror(&self) -> u64 {
        let sum: u64 = self.left.iter().map(|l| l.load(Ordering::Acquire)).sum();
        if sum == 0 && !self.proven_dry.load(Ordering::Acquire) {
            1
        } else {
            sum
        }
    }
}

/// Takes up to `ARGV[3]` units (at least half of what the donor has left,
/// so a dry bucket does not come back for every unit) off a donor bucket
/// and records them as a pending transfer to bucket `ARGV[4]` under the
/// transfer id `ARGV[2]`: `{'T', units, left, gen}`; `{'0'}` when the donor
/// is dry; `{'U'}` / `{'F'}` absent / fenced or halted.
const TAKE_LUA: &str = r"
-- KEYS: meta, xfer; ARGV: fence, tid, want, receiver
local m = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'rid', 'halt', 'gen')
if not m[1] then return {'U'} end
if m[4] or (ARGV[1] == '1' and m[3] ~= replid()) then return {'F'} end
local stock, sold = tonumber(m[1]), tonumber(m[2])
local avail = stock - sold
if avail <= 0 then return {'0'} end
local take = math.max(tonumber(ARGV[3]), math.ceil(avail / 2))
if take > avail then take = avail end
redis.call('HSET', KEYS[1], 'stock', stock - take)
local gen = m[5] or '0'
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4] .. ':' .. take .. ':' .. gen)
return {'T', tostring(take), tostring(avail - take), gen}
";

/// Adds a transfer's units to the receiving bucket, once per transfer id
/// (`xferin` remembers the applied ids), and only within the seed
/// generation the units were taken in: `{'A', left}` applied, `{'D', left}`
/// applied before, `{'G'}` from another generation (a re-seed rebuilt both
/// buckets since: drop it), `{'U'}` / `{'F'}` absent / fenced or halted
/// (left pending; the re-seed clears it).
const GIVE_LUA: &str = r"
-- KEYS: meta, xferin; ARGV: fence, tid, units, gen
local m = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'rid', 'halt', 'gen')
if not m[1] then return {'U'} end
if m[4] or (ARGV[1] == '1' and m[3] ~= replid()) then return {'F'} end
if (m[5] or '0') ~= ARGV[4] then return {'G'} end
local stock, sold = tonumber(m[1]), tonumber(m[2])
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then
  return {'D', tostring(stock - sold)}
end
stock = stock + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'stock', stock)
redis.call('HINCRBY', KEYS[1], 'ver', 1)
return {'A', tostring(stock - sold)}
";

/// Halts a bucket (it answers "fenced" to every script from now on) and
/// answers how long ago it was first halted, by its server's clock; `-1`
/// when the bucket is absent, `-2` when its stamp is another replication
/// history's (fenced: it has sold nothing since, so there is nothing to
/// halt or to wait for).
const HALT_LUA: &str = r"
-- KEYS: meta; ARGV: fence
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local now = now_ms()
local m = redis.call('HMGET', KEYS[1], 'halt', 'rid')
if m[1] then return now - tonumber(m[1]) end
if ARGV[1] == '1' and m[2] ~= replid() then return -2 end
redis.call('HSET', KEYS[1], 'halt', now)
return 0
";

pub(super) struct BucketScripts {
    take: Script,
    give: Script,
    halt: Script,
}

impl BucketScripts {
    pub(super) fn new() -> Self {
        Self {
            take: Script::new(TAKE_LUA),
            give: Script::new(GIVE_LUA),
            halt: Script::new(HALT_LUA),
        }
    }

    pub(super) fn all(&self) -> [&Script; 3] {
        [&self.take, &self.give, &self.halt]
    }
}

/// One bucket as a probe read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    state: StockState,
    window: Schedule,
    extra: StateExtra,
}

impl Probe {
    fn left(&self) -> u64 {
        self.state.stock.saturating_sub(self.state.sold)
    }
}

/// The keys every bucket has (`seedlock` only on bucket 0).
const BUCKET_PARTS: [&str; 8] = [
    "meta", "holders", "idem", "outbox", "inflight", "released", "xfer", "xferin",
];

/// What a transfer's give answered.
enum Given {
    /// Applied (now or before) or stale: the donor's record can go.
    Settled,
    /// The receiver cannot take it now (absent or fenced): stays pending.
    Pending,
}

impl RedisStock {
    /// The layout of a sale known to have several buckets.
    pub(super) fn layout(&self, sale_id: u64) -> Option<Arc<Layout>> {
        self.layouts.get(&sale_id).map(|l| l.clone())
    }

    /// Remembers that `sale_id` has `k` buckets (`k` never changes).
    pub(super) fn learn(&self, sale_id: u64, k: u8) -> Option<Arc<Layout>> {
        if k <= 1 {
            return None;
        }
        Some(
            self.layouts
                .entry(sale_id)
                .or_insert_with(|| Arc::new(Layout::new(sale_id, k)))
                .clone(),
        )
    }

    fn bkey(&self, layout: &Layout, b: usize, part: &str) -> String {
        self.tkey(layout.tag(b), part)
    }

    /// Decides a batch of purchases of a bucketed sale whose buyers all
    /// hash to bucket `b`: one purchase call on `b`; for the purchases it
    /// answered "sold out", units are moved in from other buckets and they
    /// are tried again, until bought, proven sold out, or [`MAX_ROUNDS`].
    pub(super) async fn decide_bucket(
        &self,
        layout: &Layout,
        b: usize,
        items: &[&Reservation],
    ) -> Result<Vec<Result<Decision, StockError>>, StockError> {
        let keys = self.purchase_keys(layout.tag(b), false);
        let (first, left) = self.purchase_call(&keys, items).await?.decided()?;
        layout.note(b, left);
        let mut out: Vec<Result<Decision, StockError>> = first.into_iter().map(Ok).collect();
        let sold_out = |d: &Result<Decision, StockError>| {
            matches!(d, Ok(Decision::Rejected(Rejection::SoldOut)))
        };
        let mut short: Vec<usize> = (0..items.len()).filter(|&i| sold_out(&out[i])).collect();
        let mut rounds = 0;
        // A failure while moving units answers only the purchases still
        // short: those the bucket accepted keep their answer (their orders
        // are in its outbox).
        let moved: Result<(), StockError> = async {
            while !short.is_empty() {
                rounds += 1;
                if rounds > MAX_ROUNDS {
                    metrics::counter!("flashsale_redis_bucket_busy_total").increment(1);
                    for &i in &short {
                        out[i] = Err(StockError::new(
                            "the sale's buckets are busy moving units; retry",
                        ));
                    }
                    break;
                }
                let need: u64 = short
                    .iter()
                    .map(|&i| u64::from(items[i].order.quantity))
                    .sum();
                let Some(seen) = self.probe_all(layout).await? else {
                    for &i in &short {
                        out[i] = Ok(Decision::NotSeeded);
                    }
                    break;
                };
                if seen[b].left() == 0 {
                    if seen.iter().any(|p| p.extra.pending > 0) {
                        self.complete_pending(layout, &seen).await?;
                    } else if let Some(d) = (0..seen.len())
                        .filter(|&d| d != b && seen[d].left() > 0)
                        .max_by_key(|&d| seen[d].left())
                    {
                        if self.transfer(layout, d, b, need).await? == 0 {
                            continue;
                        }
                    } else if self.prove_dry(layout, &seen).await? {
                        // Every bucket dry, nothing in flight: sold out.
                        break;
                    } else {
                        continue;
                    }
                }
                let retry: Vec<&Reservation> = short.iter().map(|&i| items[i]).collect();
                let (again, left) = self.purchase_call(&keys, &retry).await?.decided()?;
                layout.note(b, left);
                for (&i, d) in short.iter().zip(again) {
                    out[i] = Ok(d);
                }
                short.retain(|&i| sold_out(&out[i]));
            }
            Ok(())
        }
        .await;
        if let Err(e) = moved {
            for &i in &short {
                out[i] = Err(e.clone());
            }
        }
        if rounds > 0 {
            metrics::counter!("flashsale_redis_bucket_rounds_total").increment(rounds as u64);
        }
        Ok(out)
    }

    /// Reads every bucket (concurrently: they are on different shards);
    /// `None` when one is absent, fenced or halted.
    async fn probe_all(&self, layout: &Layout) -> Result<Option<Vec<Probe>>, StockError> {
        let reads = (0..usize::from(layout.k)).map(|b| self.counters_at(layout, b));
        let mut seen = Vec::with_capacity(usize::from(layout.k));
        let mut whole = true;
        for (b, held) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            match held? {
                Held::Present(state, window, extra) => {
                    layout.note(b, state.stock.saturating_sub(state.sold) + extra.pending);
                    seen.push(Probe {
                        state,
                        window,
                        extra,
                    });
                }
                _ => whole = false,
            }
        }
        Ok(whole.then_some(seen))
    }

    async fn counters_at(&self, layout: &Layout, b: usize) -> Result<Held, StockError> {
        let keys = [
            self.bkey(layout, b, "meta"),
            self.bkey(layout, b, "outbox"),
            self.bkey(layout, b, "xfer"),
        ];
        self.counters_with(&keys, b"x").await
    }

    /// True when every bucket reads dry with nothing pending, twice, with
    /// no unit added to any bucket in between (each bucket's `ver` counts
    /// the additions: returns and transfers in; `gen` the re-seeds). Units
    /// only reach a bucket by an addition, and a transfer only starts from
    /// a bucket with units, so at the moment between the two passes every
    /// bucket was dry and nothing was in flight: the sale was sold out then.
    async fn prove_dry(&self, layout: &Layout, first: &[Probe]) -> Result<bool, StockError> {
        let dry = |p: &Probe| p.left() == 0 && p.extra.pending == 0;
        if !first.iter().all(dry) {
            return Ok(false);
        }
        let Some(second) = self.probe_all(layout).await? else {
            return Ok(false);
        };
        let proven = second
            .iter()
            .zip(first)
            .all(|(s, f)| dry(s) && s.extra.ver == f.extra.ver && s.extra.gen == f.extra.gen);
        if proven {
            layout.proven_dry.store(true, Ordering::Release);
        }
        Ok(proven)
    }

    /// Moves units from bucket `d` to bucket `b`: take on `d` (recorded
    /// there as pending), give on `b` (once per transfer id), then clear
    /// the record. A crash in between leaves the record, which any node's
    /// watcher completes ([`Self::complete_pending`]). The units moved.
    async fn transfer(
        &self,
        layout: &Layout,
        d: usize,
        b: usize,
        want: u64,
    ) -> Result<u64, StockError> {
        let tid = format!("{:016x}", rand::random::<u64>());
        let (want, to) = (want.to_string(), b.to_string());
        let answer: Vec<String> = self
            .eval(
                &self.bucket_scripts.take,
                &[self.bkey(layout, d, "meta"), self.bkey(layout, d, "xfer")],
                &[self.fence, tid.as_bytes(), want.as_bytes(), to.as_bytes()],
            )
            .await?;
        let [letter, units, left, gen] = answer.as_slice() else {
            return Ok(0);
        };
        if letter != "T" {
            return Ok(0);
        }
        let units: u64 = units.parse().unwrap_or(0);
        layout.note(d, left.parse().unwrap_or(0));
        metrics::counter!("flashsale_redis_bucket_transfers_total").increment(1);
        if let Given::Settled = self.give(layout, b, &tid, units, gen).await? {
            self.clear(layout, d, &tid).await?;
        }
        Ok(units)
    }

    async fn give(
        &self,
        layout: &Layout,
        b: usize,
        tid: &str,
        units: u64,
        gen: &str,
    ) -> Result<Given, StockError> {
        let units = units.to_string();
        let answer: Vec<String> = self
            .eval(
                &self.bucket_scripts.give,
                &[self.bkey(layout, b, "meta"), self.bkey(layout, b, "xferin")],
                &[self.fence, tid.as_bytes(), units.as_bytes(), gen.as_bytes()],
            )
            .await?;
        Ok(match answer.first().map(String::as_str) {
            Some("A" | "D") => {
                if let Some(left) = answer.get(1).and_then(|l| l.parse().ok()) {
                    layout.note(b, left);
                }
                Given::Settled
            }
            Some("G") => Given::Settled,
            _ => Given::Pending,
        })
    }

    async fn clear(&self, layout: &Layout, d: usize, tid: &str) -> Result<(), StockError> {
        let _: i64 = self
            .conn
            .query(
                redis::cmd("HDEL")
                    .arg(self.bkey(layout, d, "xfer"))
                    .arg(tid),
            )
            .await?;
        Ok(())
    }

    /// Finishes the transfers recorded as pending on the buckets `seen`
    /// says have some (the give is idempotent, so finishing one its own
    /// node is still on is harmless).
    async fn complete_pending(&self, layout: &Layout, seen: &[Probe]) -> Result<(), StockError> {
        for (d, p) in seen.iter().enumerate() {
            if p.extra.pending == 0 {
                continue;
            }
            let pending: Vec<(String, String)> = self
                .conn
                .query(redis::cmd("HGETALL").arg(self.bkey(layout, d, "xfer")))
                .await?;
            for (tid, record) in pending {
                let mut parts = record.split(':');
                let (Some(to), Some(units), Some(gen)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let (Ok(to), Ok(units)) = (to.parse::<usize>(), units.parse::<u64>()) else {
                    continue;
                };
                if to >= usize::from(layout.k) {
                    continue;
                }
                if let Given::Settled = self.give(layout, to, &tid, units, gen).await? {
                    self.clear(layout, d, &tid).await?;
                    metrics::counter!("flashsale_redis_bucket_transfers_completed_total")
                        .increment(1);
                }
            }
        }
        Ok(())
    }

    /// `sync` of a bucketed sale: the sums into the ledger, each bucket's
    /// window into the live window, pending transfers finished. A partial
    /// loss (some buckets current, some not) that outlasts
    /// [`PARTIAL_GRACE_MS`] with no re-seed in progress halts every bucket,
    /// so the sale is re-seeded as one.
    pub(super) async fn sync_buckets(
        &self,
        layout: &Layout,
        ledger: &Ledger,
        schedule: &LiveSchedule,
    ) -> Result<bool, StockError> {
        let reads = (0..usize::from(layout.k)).map(|b| self.counters_at(layout, b));
        let held: Vec<Held> = futures::future::join_all(reads)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let current = held
            .iter()
            .filter(|h| matches!(h, Held::Present(..)))
            .count();
        if current < held.len() {
            let partial = current > 0;
            let lasting = {
                let mut since = layout
                    .partial_since
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !partial {
                    *since = None;
                    false
                } else {
                    since.get_or_insert_with(Instant::now).elapsed().as_millis() >= PARTIAL_GRACE_MS
                }
            };
            if lasting {
                let lock = self.bkey(layout, 0, "seedlock");
                let reseeding: i64 = self.conn.query(redis::cmd("EXISTS").arg(lock)).await?;
                if reseeding == 0 {
                    tracing::warn!(
                        buckets = layout.k,
                        current,
                        "a bucket of the sale is lost or fenced; halting the others so the \
                         sale is re-seeded as one"
                    );
                    self.halt_all(layout).await?;
                }
            }
            return Ok(false);
        }
        *layout
            .partial_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let seen: Vec<Probe> = held
            .into_iter()
            .enumerate()
            .filter_map(|(b, h)| match h {
                Held::Present(state, window, extra) => {
                    layout.note(b, state.stock.saturating_sub(state.sold) + extra.pending);
                    Some(Probe {
                        state,
                        window,
                        extra,
                    })
                }
                _ => None,
            })
            .collect();
        for p in &seen {
            schedule.advance(p.window);
        }
        if seen.iter().any(|p| p.extra.pending > 0) {
            if let Err(e) = self.complete_pending(layout, &seen).await {
                tracing::debug!(error = %e, "cannot finish a pending bucket transfer yet");
            }
        } else if seen.iter().all(|p| p.left() == 0) && !layout.proven_dry.load(Ordering::Acquire) {
            self.prove_dry(layout, &seen).await?;
        }
        ledger.mirror_remaining(layout.mirror());
        Ok(true)
    }

    /// The sums over the buckets; `None` unless every bucket is current.
    pub(super) async fn state_buckets(
        &self,
        layout: &Layout,
    ) -> Result<Option<StockState>, StockError> {
        Ok(self.probe_all(layout).await?.map(|seen| {
            seen.iter().fold(
                StockState {
                    stock: 0,
                    sold: 0,
                    outbox: 0,
                },
                |acc, p| StockState {
                    // Units in flight between buckets are still on offer.
                    stock: acc.stock + p.state.stock + p.extra.pending,
                    sold: acc.sold + p.state.sold,
                    outbox: acc.outbox + p.state.outbox,
                },
            )
        }))
    }

    /// Halts every bucket; how long the most recently halted one has been
    /// halted, in ms by its server's clock (`None` when none was selling:
    /// every bucket absent or fenced).
    pub(super) async fn halt_all(&self, layout: &Layout) -> Result<Option<i64>, StockError> {
        let mut oldest = None;
        for b in 0..usize::from(layout.k) {
            let age: i64 = self
                .eval(
                    &self.bucket_scripts.halt,
                    &[self.bkey(layout, b, "meta")],
                    &[self.fence],
                )
                .await?;
            if age >= 0 {
                oldest = Some(oldest.map_or(age, |o: i64| o.min(age)));
            }
        }
        Ok(oldest)
    }

    /// Publishes a brand-new bucketed sale: each bucket's share, then the
    /// directory (`{S}:buckets`) that sends a node not yet knowing the
    /// split to the buckets.
    pub(super) async fn seed_new_buckets(
        &self,
        layout: &Layout,
        sale: &Sale,
    ) -> Result<(), StockError> {
        for (b, units) in split(sale.stock, layout.k).into_iter().enumerate() {
            let meta = self.bkey(layout, b, "meta");
            if self
                .write_meta_at(&meta, sale, 0, units, true, Some(0))
                .await?
            {
                layout.note(b, units);
            }
        }
        self.write_directory(sale.id, layout.k).await
    }

    pub(super) async fn write_directory(&self, sale_id: u64, k: u8) -> Result<(), StockError> {
        let _: () = self
            .conn
            .query(redis::cmd("SET").arg(self.key(sale_id, "buckets")).arg(k))
            .await?;
        Ok(())
    }

    /// The re-seed of a bucketed sale, as one: nothing while every bucket
    /// is current; otherwise every bucket is halted first, and only once
    /// the last was halted longer than the re-seed's settle time (so
    /// orders those buckets accepted before the halt are in the database)
    /// is the seed lock taken, every bucket cleared and rebuilt from the
    /// database — holders and keyed orders in their buyer's bucket, every
    /// returned order in every bucket's `released`, the units left split
    /// evenly, a new seed generation — bucket 0 (the lock's) last.
    pub(super) async fn seed_buckets(
        &self,
        layout: &Layout,
        sale: &Sale,
        from_db: &SaleRecord,
    ) -> Result<bool, StockError> {
        self.write_directory(sale.id, layout.k).await?;
        if self.probe_all(layout).await?.is_some() {
            return Ok(false);
        }
        // Another node is rebuilding the buckets: halting them now would
        // only stop the ones it has just written.
        let lock = self.bkey(layout, 0, "seedlock");
        let reseeding: i64 = self.conn.query(redis::cmd("EXISTS").arg(&lock)).await?;
        if reseeding == 1 {
            return Ok(false);
        }
        let settle = crate::worker::stock_watch::RESEED_SETTLE.as_millis() as i64;
        if let Some(age) = self.halt_all(layout).await? {
            if age < settle {
                return Ok(false);
            }
        }
        let mut claim_keys = vec![self.bkey(layout, 0, "meta"), lock.clone()];
        claim_keys.extend(BUCKET_PARTS[1..].iter().map(|p| self.bkey(layout, 0, p)));
        let claimed: i64 = self
            .eval(&self.scripts.seed_claim, &claim_keys, &[self.fence])
            .await?;
        if claimed == 0 {
            return Ok(false);
        }
        for b in 1..usize::from(layout.k) {
            let keys: Vec<String> = BUCKET_PARTS
                .iter()
                .map(|p| self.bkey(layout, b, p))
                .collect();
            let _: i64 = self.conn.query(redis::cmd("DEL").arg(keys)).await?;
        }
        let k = layout.k;
        let mut sold = vec![0u64; usize::from(k)];
        let mut holders: Vec<Vec<&(String, u32)>> = vec![Vec::new(); usize::from(k)];
        for h in &from_db.holders {
            let b = bucket_of(&h.0, k);
            sold[b] += u64::from(h.1);
            holders[b].push(h);
        }
        // The database's count decides; a holder list that disagrees only
        // moves where the difference is counted.
        let listed: u64 = sold.iter().sum();
        if listed != from_db.sold {
            sold[0] = (sold[0] + from_db.sold).saturating_sub(listed);
        }
        let mut keyed: Vec<Vec<&Order>> = vec![Vec::new(); usize::from(k)];
        for o in &from_db.keyed {
            keyed[bucket_of(&o.user_id, k)].push(o);
        }
        let shares = split(sale.stock.saturating_sub(from_db.sold), k);
        let gen = u64::from(rand::random::<u32>()) + 1;
        for b in (0..usize::from(k)).rev() {
            for chunk in holders[b].chunks(500) {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(self.bkey(layout, b, "holders"));
                for (user, units) in chunk.iter().copied() {
                    cmd.arg(user).arg(units);
                }
                let _: i64 = self.conn.query(&cmd).await?;
            }
            for chunk in keyed[b].chunks(500) {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(self.bkey(layout, b, "idem"));
                for order in chunk {
                    let key = order.idempotency_key.as_deref().unwrap_or_default();
                    cmd.arg(format!("{}\n{key}", order.user_id))
                        .arg(order.to_wire());
                }
                let _: i64 = self.conn.query(&cmd).await?;
            }
            // The record names returned orders by id only: every bucket
            // keeps them all, so the buyer's bucket has its own.
            for chunk in from_db.released.chunks(1000) {
                let _: i64 = self
                    .conn
                    .query(
                        redis::cmd("SADD")
                            .arg(self.bkey(layout, b, "released"))
                            .arg(chunk),
                    )
                    .await?;
            }
            let meta = self.bkey(layout, b, "meta");
            self.write_meta_at(&meta, sale, sold[b], sold[b] + shares[b], false, Some(gen))
                .await?;
            layout.note(b, shares[b]);
        }
        let _: i64 = self.conn.query(redis::cmd("DEL").arg(&lock)).await?;
        Ok(true)
    }

    /// Every key of every bucket, and the directory.
    pub(super) async fn forget_buckets(&self, layout: &Layout) -> Result<(), StockError> {
        for b in 0..usize::from(layout.k) {
            for part in BUCKET_PARTS.iter().chain(&["seedlock"]) {
                let _: i64 = self
                    .conn
                    .query(redis::cmd("DEL").arg(self.bkey(layout, b, part)))
                    .await?;
            }
        }
        Ok(())
    }

    /// Outbox entries of every bucket, up to `limit` in all.
    pub(super) async fn outbox_due_buckets(
        &self,
        layout: &Layout,
        age_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StockError> {
        let mut due = Vec::new();
        for b in 0..usize::from(layout.k) {
            if due.len() >= limit {
                break;
            }
            let (age, left) = (age_ms.to_string(), (limit - due.len()).to_string());
            let more: Vec<String> = self
                .eval(
                    &self.scripts.outbox_due,
                    &[self.bkey(layout, b, "outbox"), self.bkey(layout, b, "meta")],
                    &[age.as_bytes(), left.as_bytes(), self.fence],
                )
                .await?;
            due.extend(more);
        }
        Ok(due)
    }

    /// Drops confirmed entries from their buyer's bucket's outbox (from
    /// every bucket when a payload does not parse).
    pub(super) async fn outbox_remove_buckets(
        &self,
        layout: &Layout,
        payloads: &[String],
    ) -> Result<(), StockError> {
        let mut by_bucket: Vec<Vec<&String>> = vec![Vec::new(); usize::from(layout.k)];
        for p in payloads {
            match Order::from_wire(p.as_bytes()) {
                Ok(o) => by_bucket[bucket_of(&o.user_id, layout.k)].push(p),
                Err(_) => by_bucket.iter_mut().for_each(|v| v.push(p)),
            }
        }
        for (b, entries) in by_bucket.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let _: i64 = self
                .conn
                .query(
                    redis::cmd("ZREM")
                        .arg(self.bkey(layout, b, "outbox"))
                        .arg(entries),
                )
                .await?;
        }
        Ok(())
    }

    /// The window moved on every bucket.
    pub(super) async fn set_schedule_buckets(
        &self,
        layout: &Layout,
        start: &str,
        end: &str,
    ) -> Result<(), StockError> {
        for b in 0..usize::from(layout.k) {
            let _: i64 = self
                .eval(
                    &self.scripts.window,
                    &[self.bkey(layout, b, "meta")],
                    &[start.as_bytes(), end.as_bytes()],
                )
                .await?;
        }
        Ok(())
    }

    /// Returns an order's units to its buyer's bucket; the units the node
    /// now mirrors, `None` when the bucket is absent or fenced.
    pub(super) async fn release_bucket(
        &self,
        layout: &Layout,
        order: &Order,
    ) -> Result<Option<u64>, StockError> {
        let b = bucket_of(&order.user_id, layout.k);
        let keys = [
            self.bkey(layout, b, "meta"),
            self.bkey(layout, b, "holders"),
            self.bkey(layout, b, "released"),
        ];
        Ok(match self.release_call(&keys, order).await? {
            -1 => None,
            -2 => Some(layout.mirror()),
            n => {
                layout.note(b, n.max(0) as u64);
                Some(layout.mirror())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_hash_is_fnv1a_and_stable() {
        // FNV-1a 64 of "" is the offset basis; of "a", a known vector.
        assert_eq!(bucket_of("", 7), (0xcbf2_9ce4_8422_2325u64 % 7) as usize);
        assert_eq!(bucket_of("a", 16), (0xaf63_dc4c_8601_ec8cu64 % 16) as usize);
        assert_eq!(bucket_of("anyone", 1), 0);
        for k in 2..=16u8 {
            for u in ["alice", "bob", "u-17", "ünïcode"] {
                let b = bucket_of(u, k);
                assert!(b < usize::from(k));
                assert_eq!(b, bucket_of(u, k), "the same every time");
            }
        }
    }

    #[test]
    fn buyers_spread_over_the_buckets() {
        let mut counts = [0u32; 3];
        for i in 0..3000 {
            counts[bucket_of(&format!("user-{i}"), 3)] += 1;
        }
        for c in counts {
            assert!((800..=1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn the_split_is_even_with_the_remainder_low() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(11, 3), vec![4, 4, 3]);
        assert_eq!(split(2, 3), vec![1, 1, 0]);
        assert_eq!(split(0, 4), vec![0, 0, 0, 0]);
        assert_eq!(split(7, 1), vec![7]);
        for units in [0, 1, 5, 99, 1_000_000_000] {
            for k in 1..=16 {
                let s = split(units, k);
                assert_eq!(s.len(), usize::from(k));
                assert_eq!(s.iter().sum::<u64>(), units);
                assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn slots_are_redis_cluster_slots() {
        // `CLUSTER KEYSLOT` answers: foo 12182, bar 5061, 123456789 12739.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot("123456789"), 12739);
    }

    #[test]
    fn one_bucket_keeps_the_sale_id_as_its_tag() {
        assert_eq!(tag(42, 0, 1), "42");
    }

    #[test]
    fn bucket_tags_land_in_their_share_of_the_slots() {
        for sale in [1u64, 42, 7_239_847_239_811] {
            for k in 2..=16u8 {
                let width = SLOTS / u32::from(k);
                let tags: Vec<String> = (0..usize::from(k)).map(|b| tag(sale, b, k)).collect();
                for (b, t) in tags.iter().enumerate() {
                    let s = u32::from(slot(t));
                    assert!(
                        (width * b as u32..width * (b as u32 + 1)).contains(&s),
                        "sale {sale} bucket {b}/{k}: {t} in slot {s}"
                    );
                    assert!(t.starts_with(&format!("{sale}.{b}")));
                }
            }
        }
    }

    #[test]
    fn the_mirror_is_never_a_guessed_zero() {
        let l = Layout::new(1, 3);
        assert_eq!(l.mirror(), 1, "nothing seen yet: ask Redis");
        l.note(1, 4);
        l.note(2, 2);
        assert_eq!(l.mirror(), 6);
        l.note(1, 0);
        l.note(2, 0);
        assert_eq!(l.mirror(), 1, "all seen dry, not proven");
        l.proven_dry.store(true, Ordering::Release);
        assert_eq!(l.mirror(), 0);
        l.note(0, 1);
        assert_eq!(l.mirror(), 1, "units back: the proof no longer holds");
        assert!(!l.proven_dry.load(Ordering::Acquire));
    }
}
