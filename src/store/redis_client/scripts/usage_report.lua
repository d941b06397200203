-- Applies usage measured after the fact: counter increments and gauge
-- values, each once per event key, each appended to the usage stream. An
-- event key already recorded for the same event (the same fingerprint) is a
-- retry and is skipped; one recorded for another event refuses the whole
-- report before anything is applied.
-- Returns {'totals', each report's meter total afterwards...} or
-- {'collision', the 1-based index of the report whose key names another
-- event}.
-- KEYS: stream, then per report its counter and event record.
-- ARGV: report count, stream maxlen, idempotency ttl (ms), time (ms), then
-- per report: kind, amount, meter, event key, principal, expire-at,
-- fingerprint, the meter's limit, the counter's window.
local stream_key = KEYS[1]
local count, maxlen, ttl_ms, time_ms = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local FIELDS = 9

for i = 1, count do
  local stored = redis.call('GET', KEYS[2 * i + 1])
  if stored then
    local ok, record = pcall(cjson.decode, stored)
    local fingerprint = ARGV[4 + (i - 1) * FIELDS + 7]
    if not ok or type(record) ~= 'table' or record.fingerprint ~= fingerprint then
      return {'collision', i}
    end
  end
end

for i = 1, count do
  local counter, record = KEYS[2 * i], KEYS[2 * i + 1]
  local base = 4 + (i - 1) * FIELDS
  local kind, amount, meter, key, principal, expire, fingerprint =
    ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4], ARGV[base + 5], ARGV[base + 6], ARGV[base + 7]
  local limit, window = ARGV[base + 8], ARGV[base + 9]
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
    redis.call('SET', record, cjson.encode({meter = meter, amount = tonumber(amount), principal = principal, fingerprint = fingerprint, used = total}), 'PX', ttl_ms)
    redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, '*',
      'kind', 'report_' .. kind, 'meter', meter, 'amount', amount, 'idempotency_key', key,
      'principal', principal, 'decision_id', '', 'time_ms', time_ms, 'used', total,
      'limit', limit, 'window', window)
  end
end
local totals = {'totals'}
for i = 1, count do
  totals[i + 1] = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
end
return totals
