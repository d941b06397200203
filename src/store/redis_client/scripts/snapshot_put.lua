-- Writes a snapshot unless the stored version is the same or newer, and
-- publishes the invalidation in the same step. The same document at the
-- stored version is a write done already (a retry after a lost reply):
-- answered as such, changing nothing.
-- Returns {1, replaced version}, {0, stored version} (not newer) or
-- {2, stored version} (this very document is stored already).
-- KEYS: snapshot, version. ARGV: version, document, tenant, channel.
-- The stored version is the high-water mark, or, for a snapshot written
-- without one, the document's own version.
local snapshot_key, version_key = KEYS[1], KEYS[2]
local new_version, document_text, tenant, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local stored = tonumber(redis.call('GET', version_key) or '0') or 0
if stored == 0 and redis.call('EXISTS', snapshot_key) == 1 then
  local ok, document = pcall(cjson.decode, redis.call('GET', snapshot_key))
  if ok and type(document) == 'table' and tonumber(document.version) then
    stored = tonumber(document.version)
  end
end
if tonumber(new_version) == stored and redis.call('GET', snapshot_key) == document_text then
  return {2, stored}
end
if tonumber(new_version) <= stored then
  return {0, stored}
end
redis.call('SET', snapshot_key, document_text)
redis.call('SET', version_key, new_version)
redis.call('PUBLISH', channel, tenant .. ' ' .. new_version)
return {1, stored}
