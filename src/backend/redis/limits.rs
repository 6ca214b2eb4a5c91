//! The cluster-wide rate limits in Redis: one script call per purchase
//! attempt checks every configured limit (GCRA: each key holds its
//! theoretical arrival time in microseconds of the Redis server's clock,
//! `TIME`, so nodes with skewed clocks agree), all or nothing — a refused
//! attempt is counted nowhere.
//!
//! Keys, all under the sale's hash tag (one slot of a Cluster, beside the
//! stock): `rl:u:<buyer>`, `rl:i:<ip>`, `rl:s`. So the cluster-wide limits
//! are per (sale, buyer), per (sale, IP) and per sale. Each key expires
//! (`PX`) once its arrival time has passed plus a second, so idle keys
//! vanish.

use std::sync::LazyLock;

use async_trait::async_trait;

use super::{RedisStock, Script};
use crate::backend::limits::{Limits, Rate, RateError, RateStore, Subject, Verdict};

/// KEYS: one per limit. ARGV: per key, the emission interval (µs) and the
/// burst. Answers `{1, 0}` (passed, counted) or `{0, wait_ms}`.
const LIMITS_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait, tats = 0, {}
for i = 1, #KEYS do
  local interval, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local new = tat + interval
  local allow_at = new - burst * interval
  if allow_at > now and allow_at - now > wait then wait = allow_at - now end
  tats[i] = new
end
if wait > 0 then return {0, math.ceil(wait / 1000)} end
for i = 1, #KEYS do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', ttl)
end
return {1, 0}
";

/// The script, loaded with the others (see `RedisStock::load_scripts`).
pub(super) static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LIMITS_LUA));

/// The emission interval of `rate`, whole microseconds (at least 1).
fn interval_us(rate: Rate) -> u64 {
    (1_000_000 / u64::from(rate.per_sec.max(1))).max(1)
}

impl RedisStock {
    fn limit_call(&self, limits: &Limits, s: &Subject) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::with_capacity(3);
        let mut args = Vec::with_capacity(6);
        let mut add = |key: String, rate: Rate| {
            keys.push(key);
            args.push(interval_us(rate).to_string());
            args.push(rate.burst.to_string());
        };
        if let Some(rate) = limits.user {
            add(self.key(s.sale_id, &format!("rl:u:{}", s.user)), rate);
        }
        if let (Some(rate), Some(ip)) = (limits.ip, s.ip) {
            add(self.key(s.sale_id, &format!("rl:i:{ip}")), rate);
        }
        if let Some(rate) = limits.sale {
            add(self.key(s.sale_id, "rl:s"), rate);
        }
        (keys, args)
    }
}

#[async_trait]
impl RateStore for RedisStock {
    async fn check(&self, limits: &Limits, subject: &Subject) -> Result<Verdict, RateError> {
        let (keys, args) = self.limit_call(limits, subject);
        if keys.is_empty() {
            return Ok(Verdict::Pass);
        }
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let answer: Vec<i64> = self
            .eval(&SCRIPT, &keys, &args)
            .await
            .map_err(|e| RateError(e.to_string()))?;
        match answer[..] {
            [1, _] => Ok(Verdict::Pass),
            [0, wait_ms] => Ok(Verdict::Limited {
                retry_after_ms: wait_ms.max(1) as u64,
            }),
            _ => Err(RateError(format!("unexpected limiter answer {answer:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_whole_microseconds() {
        assert_eq!(interval_us(Rate::new(1, 1).unwrap()), 1_000_000);
        assert_eq!(interval_us(Rate::new(3, 1).unwrap()), 333_333);
        assert_eq!(interval_us(Rate::new(u32::MAX, 1).unwrap()), 1);
    }
}
