-- Returns a lease's unspent units and writes its pending usage events
-- (lease_events.lua comes first).
-- KEYS: counter, stream. ARGV: unspent units, stream maxlen, meter, then the
-- pending events.
local counter_key = KEYS[1]
local unspent, maxlen, meter = tonumber(ARGV[1]), ARGV[2], ARGV[3]

write_events(4, maxlen, meter)
if unspent > 0 and redis.call('EXISTS', counter_key) == 1 then
  redis.call('DECRBY', counter_key, unspent)
end
return 1
