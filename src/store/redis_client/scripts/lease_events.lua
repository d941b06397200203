-- Appends the lease events in ARGV, from index `first` (a count, then
-- amount, key, principal, decision id and time for each), to KEYS[2].
local function write_events(first, maxlen, meter)
  local count = tonumber(ARGV[first])
  for i = 0, count - 1 do
    local base = first + 1 + i * 5
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
      'kind', 'consume', 'meter', meter, 'amount', ARGV[base], 'idempotency_key', ARGV[base + 1],
      'principal', ARGV[base + 2], 'decision_id', ARGV[base + 3], 'time_ms', ARGV[base + 4], 'used', '', 'lease', '1')
  end
end
