-- lease.lua: cached mode takes slices of global buckets, each as many units as remain up to
-- its cost, and no part in any settlement.
--
-- The numbers: the header, then LEASE_FIELDS per entry: kind, cost (the slice wanted), p1, p2.
-- Returns REPLY_FIELDS per entry: the figures of the bucket before the lease, and the units
-- granted (0 when the bucket had none left).

undoable = false
entries(function(kind, key, cost, p1, p2)
  local allowed, remaining, reset, retry = algorithms[kind](key, 0, p1, p2)
  local wanted = 0
  if allowed then wanted = math.min(cost, remaining) end
  local taken = 0
  if wanted > 0 and (algorithms[kind](key, wanted, p1, p2)) then taken = wanted end
  reply(allowed, remaining, reset, retry, false, taken, 0)
end)
return out
