-- Reserves min(block, limit - counter) units for a lease if that covers
-- `needed`, and writes the pending usage events (lease_events.lua comes
-- first). Safe to run twice: the reply is recorded under the operation id,
-- and a second run with that id answers the recorded reply and changes
-- nothing.
-- KEYS: counter, stream, operation record. ARGV: block, needed, limit,
-- expire-at (s, 0 = never), stream maxlen, meter, operation ttl (ms), then
-- the pending events.
local counter_key, op_key = KEYS[1], KEYS[3]
local done = redis.call('GET', op_key)
if done then
  local grant, counter = string.match(done, '^(%-?%d+) (%-?%d+)$')
  return {tonumber(grant), tonumber(counter)}
end
local block, needed, limit, expire_at = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local maxlen, meter, op_ttl = ARGV[5], ARGV[6], ARGV[7]

write_events(8, maxlen, meter)
local counter = tonumber(redis.call('GET', counter_key) or '0')
local grant = math.min(block, limit - counter)
if grant < needed then
  redis.call('SET', op_key, '0 ' .. counter, 'PX', op_ttl)
  return {0, counter}
end
counter = redis.call('INCRBY', counter_key, grant)
if expire_at ~= '0' then
  redis.call('EXPIREAT', counter_key, expire_at)
end
redis.call('SET', op_key, grant .. ' ' .. counter, 'PX', op_ttl)
return {grant, counter}
