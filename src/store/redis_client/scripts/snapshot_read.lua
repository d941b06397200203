-- Reads a tenant's snapshot, or only its version when the caller holds it.
-- KEYS: snapshot, version. ARGV: the version the caller holds, or ''.
-- A key of the wrong type makes GET fail, which reaches the caller as a
-- Redis error rather than a wrong answer.
local snapshot_key, version_key = KEYS[1], KEYS[2]
local known = ARGV[1]

local version = redis.call('GET', version_key)
if known ~= '' and version == known and redis.call('EXISTS', snapshot_key) == 1 then
  return {'unchanged', version}
end
local document = redis.call('GET', snapshot_key)
if not document then
  return {'absent', version or ''}
end
return {'document', version or '', document}
