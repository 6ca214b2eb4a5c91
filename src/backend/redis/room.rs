//! The waiting room in Redis: one script call per operation, every key
//! under the sale's hash tag (so a room lives on its sale's shard of a
//! Cluster, beside the stock), positions and the admission budget shared
//! by every node.
//!
//! Keys per sale: `rd` the drawn buyers (sorted set, score = the secret
//! key), `rq` the line (sorted set, score = place), `rm` the room's meta
//! (hash: `sealed`, `next`, `through`, `last`), `ra` the outstanding passes
//! (sorted set, score = expiry), `rx` the passes' values (hash: user →
//! `expires:nonce`) and `rs` when each waiting buyer was last seen (sorted
//! set, score = ms).

use async_trait::async_trait;

use super::{RedisStock, Script};
use crate::backend::room::{Head, Place, RoomError, RoomStore};
use crate::domain::front_door::WaitingRoom;
use crate::domain::Sale;

/// Numbers the drawn buyers in key order once the sale has started, and
/// reads one buyer's place.
const ROOM_COMMON: &str = r"
local function seal(starts, now)
  if redis.call('HGET', KEYS[3], 'sealed') == '1' or now < starts then return end
  local drawn = redis.call('ZRANGE', KEYS[1], 0, -1)
  local nxt = tonumber(redis.call('HGET', KEYS[3], 'next') or '0')
  local i = 1
  while i <= #drawn do
    local args = {}
    for j = i, math.min(i + 499, #drawn) do
      nxt = nxt + 1
      args[#args + 1] = nxt
      args[#args + 1] = drawn[j]
    end
    redis.call('ZADD', KEYS[2], unpack(args))
    i = i + 500
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[3], 'sealed', '1', 'next', nxt, 'last', now)
end
local function place(user)
  local x = redis.call('HGET', KEYS[5], user)
  if x then return {'A', x} end
  local s = redis.call('ZSCORE', KEYS[2], user)
  if s then return {'W', s} end
  if redis.call('ZSCORE', KEYS[1], user) then return {'D', ''} end
  return {'N', ''}
end
";

/// ARGV: user, now, starts, key.
const JOIN_LUA: &str = r"
local user, now, starts = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
seal(starts, now)
local p = place(user)
if p[1] == 'A' then return p end
redis.call('ZADD', KEYS[6], now, user)
if p[1] ~= 'N' then return p end
if redis.call('HGET', KEYS[3], 'sealed') == '1' then
  local seq = redis.call('HINCRBY', KEYS[3], 'next', 1)
  redis.call('ZADD', KEYS[2], seq, user)
  return {'W', tostring(seq)}
end
redis.call('ZADD', KEYS[1], ARGV[4], user)
return {'D', ''}
";

/// ARGV: user.
const PLACE_LUA: &str = r"
return place(ARGV[1])
";

/// ARGV: now, starts, rate, ttl_ms, cap, nonce.
const ADMIT_LUA: &str = r"
local now, starts, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, cap, nonce = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
seal(starts, now)
local sealed = redis.call('HGET', KEYS[3], 'sealed') == '1'
if sealed then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  for i = 1, #gone do redis.call('HDEL', KEYS[5], gone[i]) end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  local last = tonumber(redis.call('HGET', KEYS[3], 'last') or now)
  if last < now - 1000 then last = now - 1000 end
  local allowed = 0
  if now > last then allowed = math.floor((now - last) * rate / 1000) end
  local room = cap - redis.call('ZCARD', KEYS[4])
  if room < 0 then room = 0 end
  local n = math.min(allowed, room, redis.call('ZCARD', KEYS[2]))
  if n == allowed then last = last + math.floor(n * 1000 / rate) else last = now end
  redis.call('HSET', KEYS[3], 'last', string.format('%d', last))
  if n > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[2], n)
    local exp = now + ttl
    for i = 1, #popped, 2 do
      local u = popped[i]
      redis.call('ZADD', KEYS[4], exp, u)
      redis.call('HSET', KEYS[5], u, string.format('%d:%d', exp, nonce + (i - 1) / 2))
      redis.call('ZREM', KEYS[6], u)
      redis.call('HSET', KEYS[3], 'through', popped[i + 1])
    end
  end
end
local through = tonumber(redis.call('HGET', KEYS[3], 'through') or '0')
local waiting = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[1])
return {through, waiting, redis.call('ZCARD', KEYS[4]), sealed and 1 or 0}
";

/// ARGV: user.
const USED_LUA: &str = r"
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return 1
";

/// ARGV: now, users…
const SEEN_LUA: &str = r"
for i = 2, #ARGV do redis.call('ZADD', KEYS[6], 'XX', ARGV[1], ARGV[i]) end
return 1
";

/// ARGV: before.
const RECLAIM_LUA: &str = r"
local idle = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 5000)
for i = 1, #idle do
  redis.call('ZREM', KEYS[2], idle[i])
  redis.call('ZREM', KEYS[1], idle[i])
  redis.call('ZREM', KEYS[6], idle[i])
end
return #idle
";

/// The room's scripts, each with the common functions in front.
pub(super) struct RoomScripts {
    join: Script,
    place: Script,
    admit: Script,
    used: Script,
    seen: Script,
    reclaim: Script,
}

impl RoomScripts {
    pub(super) fn new() -> Self {
        let with = |body: &str| Script::new(&format!("{ROOM_COMMON}{body}"));
        Self {
            join: with(JOIN_LUA),
            place: with(PLACE_LUA),
            admit: with(ADMIT_LUA),
            used: with(USED_LUA),
            seen: with(SEEN_LUA),
            reclaim: with(RECLAIM_LUA),
        }
    }

    pub(super) fn all(&self) -> [&Script; 6] {
        [
            &self.join,
            &self.place,
            &self.admit,
            &self.used,
            &self.seen,
            &self.reclaim,
        ]
    }
}

impl RedisStock {
    fn room_keys(&self, sale_id: u64) -> Vec<String> {
        ["rd", "rq", "rm", "ra", "rx", "rs"]
            .iter()
            .map(|part| self.key(sale_id, part))
            .collect()
    }
}

fn room_error(e: crate::backend::stock::StockError) -> RoomError {
    RoomError(e.to_string())
}

/// Reads a script's `{letter, value}` answer.
fn parse_place(answer: &[String]) -> Result<Place, RoomError> {
    let bad = || RoomError(format!("unexpected room answer {answer:?}"));
    match answer.first().map(String::as_str) {
        Some("N") => Ok(Place::Absent),
        Some("D") => Ok(Place::Drawing),
        Some("W") => {
            let seq = answer.get(1).ok_or_else(bad)?;
            let seq: f64 = seq.parse().map_err(|_| bad())?;
            Ok(Place::Waiting { seq: seq as u64 })
        }
        Some("A") => {
            let (exp, nonce) = answer
                .get(1)
                .and_then(|v| v.split_once(':'))
                .ok_or_else(bad)?;
            Ok(Place::Admitted {
                expires_ms: exp.parse().map_err(|_| bad())?,
                nonce: nonce.parse().map_err(|_| bad())?,
            })
        }
        _ => Err(bad()),
    }
}

#[async_trait]
impl RoomStore for RedisStock {
    async fn join(
        &self,
        sale: &Sale,
        user: &str,
        now_ms: i64,
        key: u64,
    ) -> Result<Place, RoomError> {
        let (now, starts) = (now_ms.to_string(), sale.starts_at_ms.to_string());
        // A sorted-set score holds 53 bits exactly.
        let key = (key >> 11).to_string();
        let answer: Vec<String> = self
            .eval(
                &self.room_scripts.join,
                &self.room_keys(sale.id),
                &[
                    user.as_bytes(),
                    now.as_bytes(),
                    starts.as_bytes(),
                    key.as_bytes(),
                ],
            )
            .await
            .map_err(room_error)?;
        parse_place(&answer)
    }

    async fn place(&self, sale_id: u64, user: &str) -> Result<Place, RoomError> {
        let answer: Vec<String> = self
            .eval(
                &self.room_scripts.place,
                &self.room_keys(sale_id),
                &[user.as_bytes()],
            )
            .await
            .map_err(room_error)?;
        parse_place(&answer)
    }

    async fn admit(
        &self,
        sale: &Sale,
        room: &WaitingRoom,
        now_ms: i64,
        cap: u64,
        nonce: u64,
    ) -> Result<Head, RoomError> {
        let args = [
            now_ms.to_string(),
            sale.starts_at_ms.to_string(),
            room.admit_per_sec.to_string(),
            (i64::from(room.pass_ttl_secs) * 1000).to_string(),
            cap.to_string(),
            // Exact in a Lua number (53 bits), with room to count up.
            (nonce >> 16).to_string(),
        ];
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let answer: Vec<i64> = self
            .eval(&self.room_scripts.admit, &self.room_keys(sale.id), &args)
            .await
            .map_err(room_error)?;
        let [through, waiting, outstanding, sealed] = answer[..] else {
            return Err(RoomError(format!("unexpected admit answer {answer:?}")));
        };
        Ok(Head {
            through: through.max(0) as u64,
            waiting: waiting.max(0) as u64,
            outstanding: outstanding.max(0) as u64,
            sealed: sealed == 1,
        })
    }

    async fn used(&self, sale_id: u64, user: &str) -> Result<(), RoomError> {
        let _: i64 = self
            .eval(
                &self.room_scripts.used,
                &self.room_keys(sale_id),
                &[user.as_bytes()],
            )
            .await
            .map_err(room_error)?;
        Ok(())
    }

    async fn seen(&self, sale_id: u64, users: &[String], now_ms: i64) -> Result<(), RoomError> {
        let now = now_ms.to_string();
        for chunk in users.chunks(1000) {
            let mut args: Vec<&[u8]> = vec![now.as_bytes()];
            args.extend(chunk.iter().map(|u| u.as_bytes()));
            let _: i64 = self
                .eval(&self.room_scripts.seen, &self.room_keys(sale_id), &args)
                .await
                .map_err(room_error)?;
        }
        Ok(())
    }

    async fn reclaim(&self, sale_id: u64, before_ms: i64) -> Result<u64, RoomError> {
        let before = before_ms.to_string();
        let n: i64 = self
            .eval(
                &self.room_scripts.reclaim,
                &self.room_keys(sale_id),
                &[before.as_bytes()],
            )
            .await
            .map_err(room_error)?;
        Ok(n.max(0) as u64)
    }
}
