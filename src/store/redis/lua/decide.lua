-- decide.lua: requests' entries decided atomically, each request settled as store::contract
-- says and MemoryStore::settle_now does. Concurrent requests bound for one slot come in one
-- call (a batch), decided in order, each at its own time.
--
-- The numbers (see the prelude): the header, then per request REQUEST_FIELDS (now in whole seconds, nanoseconds within
-- the second, mode, entry count) and its entries, DECIDE_FIELDS each: kind, cost (units to
-- take; 0 checks only), p1, p2 (see the prelude), role (ROLE_DENIES + ROLE_QUOTA bits), lease
-- (cached mode: once the request is admitted, also take up to this many more units, as many as
-- remain, for the caller's lease), debt (units of debt the limit runs; 0: none), ticket
-- (TICKET_*) and the reservation's time to live in ms. A KIND_DECIDED entry was decided by the
-- caller (from a lease): its p1 is 1 if it conformed, and it only takes part in settling. An
-- entry with a ticket has its reservation key after its bucket key: TICKET_SETTLE gives back
-- what it holds before the entry is decided; TICKET_RESERVE holds what the entry took once the
-- request is admitted.
--
-- Modes: MODE_SETTLE settles the request here, all or nothing: a denied request takes nothing
-- but what entries running debt took (their usage happened); its other entries that had
-- conformed are `refunded`, their figures those of a check of the restored bucket.
-- MODE_PROVISIONAL is the part of a request whose buckets span Cluster slots: what conforms is
-- taken (with its lease, and its reservation held) as if the request were admitted, and the
-- caller, who settles across slots, sends MODE_UNDO where it was denied: each entry gives back
-- its cost (the units the provisional call took) and drops its reservation, and reports a
-- check, `refunded`.
-- Returns, per request: 1 if it was denied (here), then REPLY_FIELDS per entry: its figures
-- after its own cost, and the units taken (its cost plus what was leased).

-- Decides one entry, `i` its first number; returns its verdict, with what settling needs.
local k = 0
local function decide_entry(i)
  local kind, cost, p1, p2, role, lease, debt, ticket, ttl = read(i, DECIDE_FIELDS)
  local denies = role % (2 * ROLE_DENIES) >= ROLE_DENIES
  local quota = role % (2 * ROLE_QUOTA) >= ROLE_QUOTA
  if kind == KIND_DECIDED then
    return {allowed = p1 == 1, remaining = 0, reset = 0, retry = -1, taken = 0, released = 0,
      denies = denies, quota = quota}
  end
  k = k + 1
  local key = KEYS[k]
  local reservation, released = nil, 0
  if ticket ~= TICKET_NONE then
    k = k + 1
    reservation = KEYS[k]
  end
  if ticket == TICKET_SETTLE then
    local held = redis.call('GET', reservation)
    if held then
      redis.call('DEL', reservation)
      local units, taken_ms, reserved_end = string.match(held, '^(%d+):(%d+):(%d+)$')
      released = tonumber(units)
      release(kind, key, released, p1, p2, debt, tonumber(taken_ms), tonumber(reserved_end))
    end
  end
  local allowed, remaining, reset, retry, taken, window_end = algorithms[kind](key, cost, p1, p2,
    debt)
  -- One constructor: the table is made at its size once.
  return {allowed = allowed, remaining = remaining, reset = reset, retry = retry, taken = taken,
    window_end = window_end, key = key, kind = kind, p1 = p1, p2 = p2, debt = debt,
    released = released, ticket = ticket, reservation = reservation, ttl = ttl,
    took = allowed and cost > 0, keeps = debt > 0, cost = cost, lease = lease, denies = denies,
    quota = quota}
end

-- The entries of the request being settled: decided[1 .. n_decided] (the table is reused).
local decided, n_decided = {}, 0

-- Whether the request is denied, as store::contract::denied says: any denying entry over, or
-- every quota-mode one.
local function denied_by()
  local quota_seen, quota_all_over = false, true
  for e = 1, n_decided do
    local v = decided[e]
    local over = (not v.allowed) and v.denies
    if v.quota then
      quota_seen = true
      if not over then quota_all_over = false end
    elseif over then
      return true
    end
  end
  return quota_seen and quota_all_over
end

-- Appends entry `v`'s reply as it was decided, `taken` units taken.
local function reply_as_decided(v, taken)
  reply(v.allowed, v.remaining, v.reset, v.retry, false, taken, v.released)
end

-- An admitted entry that took its cost: also takes its lease and holds its reservation.
local function admit(v)
  local leased = 0
  if v.lease > 0 and v.remaining > 0 then
    -- After the settlement: a lease never makes the request's own entries deny. What the
    -- entry left is the most there is to lease (a later entry on the same bucket may have
    -- taken some: then the take below fails and nothing is leased).
    local wanted = math.min(v.lease, v.remaining)
    if (algorithms[v.kind](v.key, wanted, v.p1, v.p2)) then leased = wanted end
  end
  if v.ticket == TICKET_RESERVE then
    redis.call('SET', v.reservation, string.format('%d:%d:%d', v.cost, now_ms, v.window_end or 0),
      'PX', v.ttl)
  end
  reply_as_decided(v, v.cost + leased)
end

-- Settles a request of one entry, `i` its first number, in MODE_SETTLE, if the entry has a
-- bucket, no ticket and no lease (as every strict-mode request of one descriptor): what settle
-- below does then, without its bookkeeping. The request is denied exactly when the entry is
-- over and denies (alone, it is every quota-mode entry there is); nothing it wrote needs
-- undoing (an entry that conforms was admitted; one that did not took only its debt, which
-- stands); and whether it took its cost or not, what it took is `taken`. Returns false, having
-- done nothing, for any other entry.
local function settle_one(i)
  local kind, cost, p1, p2, role, lease, debt, ticket = read(i, DECIDE_FIELDS)
  if kind == KIND_DECIDED or ticket ~= TICKET_NONE or lease ~= 0 then return false end
  undoable = false
  k = k + 1
  local allowed, remaining, reset, retry, taken = algorithms[kind](KEYS[k], cost, p1, p2, debt)
  put(((not allowed) and role % (2 * ROLE_DENIES) >= ROLE_DENIES) and 1 or 0)
  reply(allowed, remaining, reset, retry, false, taken, 0)
  return true
end

-- Settles a request of `n` entries from number `i` in `mode`, appending its reply.
local function settle(i, n, mode)
  if n == 1 and mode == MODE_SETTLE and settle_one(i) then return end
  undoable = mode == MODE_SETTLE and n > 1
  -- Only a request whose writes may be undone records them.
  if undoable then saved, added = {}, {} end
  n_decided = n
  for e = 1, n do
    decided[e] = decide_entry(i + (e - 1) * DECIDE_FIELDS)
  end
  local denied = denied_by()
  put(denied and 1 or 0)
  if mode == MODE_PROVISIONAL then
    for e = 1, n do
      local v = decided[e]
      if v.took then admit(v) else reply_as_decided(v, v.taken) end
    end
    return
  end
  if denied and undoable then
    restore()
    -- What entries running debt took stands: take it again on the restored buckets (where it
    -- fits at least as well as it did).
    undoable = false
    for e = 1, n do
      local v = decided[e]
      if v.keeps and v.taken > 0 then algorithms[v.kind](v.key, v.taken, v.p1, v.p2, v.debt) end
    end
  end
  for e = 1, n do
    local v = decided[e]
    if denied and v.took and not v.keeps then
      -- Report the bucket as it stands, untouched by this request.
      local allowed, remaining, reset, retry = algorithms[v.kind](v.key, 0, v.p1, v.p2, v.debt)
      reply(allowed, remaining, reset, retry, true, 0, v.released)
    elseif v.took and not denied then
      admit(v)
    else
      reply_as_decided(v, v.taken)
    end
  end
end

-- Undoes what a provisional call took for `n` entries from number `i`.
local function undo(i, n)
  undoable = false
  put(1)
  for e = 0, n - 1 do
    local kind, n_back, p1, p2, _, _, debt, ticket = read(i + e * DECIDE_FIELDS, DECIDE_FIELDS)
    k = k + 1
    local key = KEYS[k]
    if ticket ~= TICKET_NONE then
      k = k + 1
      if ticket == TICKET_RESERVE then redis.call('DEL', KEYS[k]) end
    end
    if n_back > 0 then give_back(kind, key, n_back, p1, p2) end
    local allowed, remaining, reset, retry = algorithms[kind](key, 0, p1, p2, debt)
    reply(allowed, remaining, reset, retry, true, 0, 0)
  end
end

local i = HEADER_ARGS + 1
while i <= count do
  local s, ns, mode, n = read(i, REQUEST_FIELDS)
  at(s, ns)
  i = i + REQUEST_FIELDS
  if mode == MODE_UNDO then undo(i, n) else settle(i, n, mode) end
  i = i + n * DECIDE_FIELDS
end
return out
