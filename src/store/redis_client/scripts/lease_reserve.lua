-- Reserves min(block, limit - counter) units for a lease if that covers
-- `needed`, and writes the pending usage events (lease_events.lua comes
-- first). Leases past their expiry go back first. The sidecar's lease
-- record then holds its stock (`held` + the grant) and a new expiry,
-- `lease_ttl` from now by Redis's clock. When the sidecar still held stock
-- but its record is gone (reclaimed after it expired), that stock is
-- revoked: it went back already. Safe to run twice: the reply is recorded
-- under the operation id, and a second run answers it and changes nothing.
-- KEYS: counter, stream, operation record, leases. ARGV: block, needed,
-- limit, expire-at (s, 0 = never), stream maxlen, meter, operation ttl
-- (ms), owner, held, lease ttl (ms), the counter's window, then the
-- pending events.
-- Returns {granted, counter after, revoked (0 or 1), ms until the next of
-- the other sidecars' leases expires (-1: none, or a second run)}.
local counter_key, op_key = KEYS[1], KEYS[3]
local done = redis.call('GET', op_key)
if done then
  local grant, counter, revoked = string.match(done, '^(%-?%d+) (%-?%d+) (%d)$')
  return {tonumber(grant), tonumber(counter), tonumber(revoked), -1}
end
local block, needed, limit, expire_at = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local maxlen, meter, op_ttl = ARGV[5], ARGV[6], ARGV[7]
local owner, held, lease_ttl, window = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]

local now = now_ms()
local next_in = reclaim(owner, now)
write_events(12, maxlen, meter, ARGV[3], window)
local revoked = 0
local record = redis.call('HGET', KEYS[4], owner)
if held > 0 and not record then
  revoked = 1
  held = 0
end
local counter = tonumber(redis.call('GET', counter_key) or '0')
local grant = math.min(block, limit - counter)
if grant < needed then
  if record then
    local expires = string.match(record, ' (%d+)$') or '0'
    record_lease(owner, held, expires, expire_at)
  end
  redis.call('SET', op_key, '0 ' .. counter .. ' ' .. revoked, 'PX', op_ttl)
  return {0, counter, revoked, next_in}
end
counter = redis.call('INCRBY', counter_key, grant)
if expire_at ~= '0' then
  redis.call('EXPIREAT', counter_key, expire_at)
end
record_lease(owner, held + grant, now + lease_ttl, expire_at)
redis.call('SET', op_key, grant .. ' ' .. counter .. ' ' .. revoked, 'PX', op_ttl)
return {grant, counter, revoked, next_in}
