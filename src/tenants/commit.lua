-- Commits one change to one runtime tenant, atomically with its audit entry (tenants/redis.rs).
-- KEYS[1] the records (a hash: "<domain>\n<id>" -> record JSON)
-- KEYS[2] the version (a counter, incremented by every commit)
-- KEYS[3] the audit log (a list, newest first)
-- ARGV[1] the record's field
-- ARGV[2] the revision it must still have ('' : it must not exist)
-- ARGV[3] the record to write ('' : delete it)
-- ARGV[4] the audit entry (JSON)
-- ARGV[5] the most audit entries kept
-- Returns 1 when committed, 0 when the record is not at ARGV[2] (nothing is written).
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ARGV[2] == '' or not ok or record.revision ~= ARGV[2] then
    return 0
  end
elseif ARGV[2] ~= '' then
  return 0
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
return 1
