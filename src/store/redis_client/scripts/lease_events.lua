-- What the lease scripts share.

-- Appends the lease events in ARGV, from index `first` (a count, then
-- amount, key, principal, decision id and time for each), to KEYS[2], each
-- with the meter's limit and the counter's window.
local function write_events(first, maxlen, meter, limit, window)
  local count = tonumber(ARGV[first])
  for i = 0, count - 1 do
    local base = first + 1 + i * 5
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
      'kind', 'consume', 'meter', meter, 'amount', ARGV[base], 'idempotency_key', ARGV[base + 1],
      'principal', ARGV[base + 2], 'decision_id', ARGV[base + 3], 'time_ms', ARGV[base + 4], 'used', '', 'lease', '1',
      'limit', limit, 'window', window)
  end
end

-- Redis's clock, in milliseconds.
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The leases of a meter's window (KEYS[4]) record each sidecar's unspent
-- stock and when its lease expires: `<stock> <expires ms>`. A lease past its
-- expiry belongs to a sidecar that could not give it back (it died, or lost
-- Redis): its stock goes back to the counter (KEYS[1]) and the record goes.
-- Returns in how many ms the next of the other leases expires (-1: none),
-- so that the caller comes back for it then.
local function reclaim(owner, now)
  local all = redis.call('HGETALL', KEYS[4])
  local next_in = -1
  for i = 1, #all, 2 do
    local who, record = all[i], all[i + 1]
    if who ~= owner then
      local stock, expires = string.match(record, '^(%-?%d+) (%d+)$')
      if not expires or tonumber(expires) < now then
        stock = tonumber(stock or '0')
        if stock > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
          redis.call('DECRBY', KEYS[1], stock)
        end
        redis.call('HDEL', KEYS[4], who)
      else
        local left = tonumber(expires) - now
        if next_in < 0 or left < next_in then
          next_in = left
        end
      end
    end
  end
  return next_in
end

-- Records `owner`'s lease: its stock and expiry; the record lives as long as
-- the counter's window (`expire_at`, Unix seconds, 0 = never).
local function record_lease(owner, stock, expires, expire_at)
  redis.call('HSET', KEYS[4], owner, stock .. ' ' .. expires)
  if expire_at ~= '0' then
    redis.call('EXPIREAT', KEYS[4], expire_at)
  end
end
