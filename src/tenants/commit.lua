-- Commits one change to one runtime tenant, atomically with its audit entry (tenants/redis.rs).
-- KEYS[1] the records (a hash: "<domain>\n<id>" -> record JSON)
-- KEYS[2] the version (a random number each commit writes: it never comes back, even if the
--         key is lost or a failover loses writes)
-- KEYS[3] the audit log (a list, newest first)
-- ARGV[1] the record's field
-- ARGV[2] the revision it must still have ('' : it must not exist)
-- ARGV[3] the record to write ('' : delete it)
-- ARGV[4] the audit entry (JSON)
-- ARGV[5] the most audit entries kept
-- ARGV[6] the new version
-- Returns 1 when committed, 0 when the record is not at ARGV[2] (nothing is written); an
-- error when the stored record is not one tollgate wrote.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if not ok or type(record) ~= 'table' then
    return redis.error_reply('the stored record of this tenant is not JSON: delete field ' .. ARGV[1] .. ' of ' .. KEYS[1])
  end
  if ARGV[2] == '' or record.revision ~= ARGV[2] then
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
redis.call('SET', KEYS[2], ARGV[6])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
return 1
