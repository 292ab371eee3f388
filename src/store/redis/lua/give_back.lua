-- give_back.lua: cached mode returns the unspent units of its leases (the prelude's give_back).
--
-- The numbers: the header, then LEASE_FIELDS per entry: kind, cost (the units to give back), p1, p2.
-- Returns nothing.

undoable = false
entries(give_back)
return {}
