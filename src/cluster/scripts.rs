//! The Lua scripts that keep the fleet's shared state atomic in Redis. Each runs on Redis's
//! own clock (`TIME`), so the instances' clocks never need to agree.

use std::sync::LazyLock;

use redis::Script;

/// Takes back ARGV[5] leased requests that lapsed unspent, charges ARGV[4] requests admitted
/// elsewhere, then leases up to ARGV[3] requests of a GCRA rate kept as one number, the
/// theoretical arrival time in µs, under KEYS[1] (ARGV[1]: µs between requests, ARGV[2]: µs
/// of burst tolerance).
/// Returns {granted, µs until room again (when nothing was granted)}.
pub static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') - tonumber(ARGV[5]) * interval
if tat < now then tat = now end
tat = tat + tonumber(ARGV[4]) * interval
local room = math.floor((now + tolerance - tat) / interval) + 1
if room < 1 then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  return {0, tat - tolerance - now}
end
local n = math.min(want, room)
tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {n, 0}
",
    )
});

/// Adds ARGV[3] requests admitted elsewhere, then leases up to ARGV[2] requests of a quota of
/// ARGV[1] counted under KEYS[1]; the key goes at ARGV[4] (ms since the Unix epoch).
/// Returns {granted, the count after it}.
pub static QUOTA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local limit, want, debt = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if debt > 0 then used = redis.call('INCRBY', KEYS[1], debt) end
local n = math.min(want, limit - used)
if n > 0 then used = redis.call('INCRBY', KEYS[1], n) else n = 0 end
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return {n, used}
",
    )
});

/// Records ARGV[1] as alive in the sorted set KEYS[1], forgets members silent for ARGV[2] ms,
/// and returns the members left.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 6)
return redis.call('ZRANGE', KEYS[1], 0, -1)
",
    )
});
