-- Returns a lease's unspent units and writes its pending usage events
-- (lease_events.lua comes first). Safe to run twice: a second run with the
-- same operation id changes nothing.
-- KEYS: counter, stream, operation record. ARGV: unspent units, stream
-- maxlen, meter, operation ttl (ms), then the pending events.
local counter_key, op_key = KEYS[1], KEYS[3]
if redis.call('EXISTS', op_key) == 1 then
  return 1
end
local unspent, maxlen, meter, op_ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]

write_events(5, maxlen, meter)
if unspent > 0 and redis.call('EXISTS', counter_key) == 1 then
  redis.call('DECRBY', counter_key, unspent)
end
redis.call('SET', op_key, '1', 'PX', op_ttl)
return 1
