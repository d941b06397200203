-- Reserves min(block, limit - counter) units for a lease if that covers
-- `needed`, and writes the pending usage events (lease_events.lua comes
-- first).
-- KEYS: counter, stream. ARGV: block, needed, limit, expire-at (s, 0 =
-- never), stream maxlen, meter, then the pending events.
local counter_key = KEYS[1]
local block, needed, limit, expire_at = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local maxlen, meter = ARGV[5], ARGV[6]

write_events(7, maxlen, meter)
local counter = tonumber(redis.call('GET', counter_key) or '0')
local grant = math.min(block, limit - counter)
if grant < needed then
  return {0, counter}
end
counter = redis.call('INCRBY', counter_key, grant)
if expire_at ~= '0' then
  redis.call('EXPIREAT', counter_key, expire_at)
end
return {grant, counter}
