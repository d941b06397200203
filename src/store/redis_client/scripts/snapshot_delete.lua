-- Deletes a snapshot (keeping the version high-water mark) and publishes the
-- invalidation; with an expected version, only if it is the stored one. With
-- an expected version, a snapshot gone whose high-water mark is that version
-- was deleted at that version already (a retry after a lost reply): answered
-- as deleted, changing nothing.
-- KEYS: snapshot, version. ARGV: tenant, expected version or '', channel.
local snapshot_key, version_key = KEYS[1], KEYS[2]
local tenant, expected, channel = ARGV[1], ARGV[2], ARGV[3]

if redis.call('EXISTS', snapshot_key) == 0 then
  if expected ~= '' and redis.call('GET', version_key) == expected then
    return {1, expected}
  end
  return {0, 0}
end
local stored = redis.call('GET', version_key)
if not stored then
  local ok, document = pcall(cjson.decode, redis.call('GET', snapshot_key))
  stored = (ok and type(document) == 'table' and tostring(document.version)) or '0'
  redis.call('SET', version_key, stored)
end
if expected ~= '' and expected ~= stored then
  return {2, stored}
end
redis.call('DEL', snapshot_key)
redis.call('PUBLISH', channel, tenant .. ' ' .. stored)
return {1, stored}
