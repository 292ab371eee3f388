-- give_back.lua: cached mode returns the unspent units of its leases: the algorithms' refund,
-- bounded below by an untouched bucket, and nothing where the window has moved on.
--
-- ARGV: the header, then LEASE_FIELDS per entry: kind, cost (the units to give back), p1, p2.
-- Returns nothing.

undoable = false
entries(function(kind, key, n, p1, p2)
  if kind == KIND_SLIDING_LOG then
    redis.call('ZPOPMAX', key, n)
    return
  end
  if kind == KIND_TOKEN_BUCKET then
    local after = math.max(tb_debt(key, p1, p2) - n * p1, 0)
    if after == 0 then
      redis.call('DEL', key)
    else
      redis.call('SET', key, tb_value(after, p1), 'PX', tb_ttl(after))
    end
    return
  end
  local raw = redis.call('GET', key)
  if not raw then return end
  if kind == KIND_FIXED_WINDOW then
    local e, c = string.match(raw, '^(%d+):(%d+)$')
    if tonumber(e) == (math.floor(now_s / p1) + 1) * p1 then
      redis.call('SET', key, string.format('%d:%d', e, math.max(tonumber(c) - n, 0)), 'KEEPTTL')
    end
    return
  end
  local i, p, c = sw_counts(key, p1)
  if i == math.floor(now_ms / p1) then
    redis.call('SET', key, sw_value(i, p, math.max(c - n, 0), p1), 'KEEPTTL')
  end
end)
return {}
