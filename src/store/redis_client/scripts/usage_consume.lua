-- Exact mode: unless the key was answered before, counts `amount` units if
-- the count lies in the range the decision holds for and the limit leaves
-- room, remembers the answer under the key, and appends the consumption to
-- the usage stream.
-- KEYS: counter, idempotency record, stream.
-- ARGV: amount, limit, idempotency ttl (ms), meter, key, principal,
-- decision id, time (ms), stream maxlen, counter expire-at (s, 0 = never; set
-- when the window's counter starts), the allowed and the refused answer's
-- record up to its count, the lowest and highest count the decision holds
-- for ('' = unbounded), the counter's window (`2026-11`, `all`).
local counter_key, record_key, stream_key = KEYS[1], KEYS[2], KEYS[3]
local amount, limit, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local meter, key, principal, decision_id, time_ms = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local maxlen, expire_at = ARGV[9], ARGV[10]
local allowed_record, refused_record = ARGV[11], ARGV[12]
local lowest, highest, window = ARGV[13], ARGV[14], ARGV[15]

local first = redis.call('GET', record_key)
if first then
  return {'replay', 0, first}
end
local used = tonumber(redis.call('GET', counter_key) or '0')
if (lowest ~= '' and used < tonumber(lowest)) or (highest ~= '' and used > tonumber(highest)) then
  return {'redecide', used}
end
if used + amount > limit then
  redis.call('SET', record_key, refused_record .. used .. '}', 'PX', ttl_ms)
  return {'deny', used}
end
local after = redis.call('INCRBY', counter_key, amount)
if used == 0 and expire_at ~= '0' then
  redis.call('EXPIREAT', counter_key, expire_at)
end
redis.call('SET', record_key, allowed_record .. after .. '}', 'PX', ttl_ms)
redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, '*',
  'kind', 'consume', 'meter', meter, 'amount', ARGV[1], 'idempotency_key', key,
  'principal', principal, 'decision_id', decision_id, 'time_ms', time_ms, 'used', after,
  'limit', ARGV[2], 'window', window)
return {'allow', after}
