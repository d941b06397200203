-- Applies usage measured after the fact: counter increments and gauge
-- values, each once per event key, each appended to the usage stream.
-- Returns each report's meter total afterwards.
-- KEYS: stream, then per report its counter and idempotency record.
-- ARGV: report count, stream maxlen, idempotency ttl (ms), time (ms), then
-- per report: kind, amount, meter, event key, principal, expire-at.
local stream_key = KEYS[1]
local count, maxlen, ttl_ms, time_ms = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]

local totals = {}
for i = 1, count do
  local counter, record = KEYS[2 * i], KEYS[2 * i + 1]
  local base = 4 + (i - 1) * 6
  local kind, amount, meter, key, principal, expire = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4], ARGV[base + 5], ARGV[base + 6]
  if redis.call('EXISTS', record) == 0 then
    local total
    if kind == 'gauge' then
      redis.call('SET', counter, amount)
      total = tonumber(amount)
    else
      total = redis.call('INCRBY', counter, amount)
      if expire ~= '0' then
        redis.call('EXPIREAT', counter, expire)
      end
    end
    redis.call('SET', record, cjson.encode({meter = meter, amount = tonumber(amount), allow = true, used = total, decision_id = '', code = 'reported', policy_id = ''}), 'PX', ttl_ms)
    redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, '*',
      'kind', 'report_' .. kind, 'meter', meter, 'amount', amount, 'idempotency_key', key,
      'principal', principal, 'decision_id', '', 'time_ms', time_ms, 'used', total)
  end
end
for i = 1, count do
  totals[i] = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
end
return totals
