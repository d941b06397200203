-- Writes a lease's pending usage events (lease_events.lua comes first), and
-- either returns its unspent units (`return`: the counter goes down by
-- them and the sidecar's lease record goes), or records its stock as it
-- stands (`flush`: how much a crash would leave unspent). Either only while
-- the sidecar's record is there: once it is gone, the lease was reclaimed
-- (it expired without being given back) and its stock went back already.
-- Leases of other sidecars past their expiry go back too. Safe to run
-- twice: a second run with the same operation id changes nothing.
-- KEYS: counter, stream, operation record, leases. ARGV: unspent units,
-- stream maxlen, meter, operation ttl (ms), owner, mode (`return` or
-- `flush`), the meter's limit, the counter's window, then the pending
-- events.
-- Returns {1, or 0 when the sidecar's lease was found reclaimed; ms until
-- the next of the other sidecars' leases expires (-1: none, or a second
-- run)}.
local counter_key, op_key = KEYS[1], KEYS[3]
local done = redis.call('GET', op_key)
if done then
  return {tonumber(done), -1}
end
local unspent, maxlen, meter, op_ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local owner, mode, limit, window = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

local next_in = reclaim(owner, now_ms())
write_events(9, maxlen, meter, limit, window)
local record = redis.call('HGET', KEYS[4], owner)
local held = 1
if not record then
  held = 0
elseif mode == 'return' then
  if unspent > 0 and redis.call('EXISTS', counter_key) == 1 then
    redis.call('DECRBY', counter_key, unspent)
  end
  redis.call('HDEL', KEYS[4], owner)
else
  local expires = string.match(record, ' (%d+)$') or '0'
  redis.call('HSET', KEYS[4], owner, unspent .. ' ' .. expires)
end
redis.call('SET', op_key, tostring(held), 'PX', op_ttl)
return {held, next_in}
