-- Adds decision-log records to a stream in one round trip.
-- KEYS: stream. ARGV: approximate maximum length, then the records (JSON).
local stream_key = KEYS[1]
local maxlen = ARGV[1]

for i = 2, #ARGV do
  redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, '*', 'record', ARGV[i])
end
return #ARGV - 1
