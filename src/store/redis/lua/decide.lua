-- decide.lua: requests' entries decided atomically, each request settled as store::contract
-- says and MemoryStore::settle_now does. Concurrent requests bound for one slot come in one
-- call (a batch), decided in order, each at its own time.
--
-- ARGV: the header, then per request REQUEST_FIELDS (now in whole seconds, nanoseconds within
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

-- Decides one entry, `i` its first argument; returns its verdict, with what settling needs.
local k = 0
local function decide_entry(i)
  local kind, cost, p1, p2 = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
    tonumber(ARGV[i + 3])
  local role = tonumber(ARGV[i + 4])
  local v
  if kind == KIND_DECIDED then
    v = {allowed = p1 == 1, remaining = 0, reset = 0, retry = -1, taken = 0}
  else
    k = k + 1
    local key = KEYS[k]
    local debt, ticket = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7])
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
    v = algorithms[kind](key, cost, p1, p2, debt)
    v.key, v.kind, v.p1, v.p2, v.debt = key, kind, p1, p2, debt
    v.released, v.ticket, v.reservation = released, ticket, reservation
    v.ttl = tonumber(ARGV[i + 8])
    v.took = v.allowed and cost > 0
    v.keeps = debt > 0
    v.cost = cost
    v.lease = tonumber(ARGV[i + 5])
  end
  v.denies = role % (2 * ROLE_DENIES) >= ROLE_DENIES
  v.quota = role % (2 * ROLE_QUOTA) >= ROLE_QUOTA
  return v
end

-- Whether a request of `decided` entries is denied, as store::contract::denied says: any
-- denying entry over, or every quota-mode one.
local function denied_by(decided)
  local quota_seen, quota_all_over = false, true
  for _, v in ipairs(decided) do
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

-- An admitted entry that took its cost: also takes its lease and holds its reservation.
local function admit(out, v)
  local leased = 0
  if v.lease > 0 and v.remaining > 0 then
    -- After the settlement: a lease never makes the request's own entries deny. What the
    -- entry left is the most there is to lease (a later entry on the same bucket may have
    -- taken some: then the take below fails and nothing is leased).
    local wanted = math.min(v.lease, v.remaining)
    if algorithms[v.kind](v.key, wanted, v.p1, v.p2).allowed then leased = wanted end
  end
  if v.ticket == TICKET_RESERVE then
    redis.call('SET', v.reservation, string.format('%d:%d:%d', v.cost, now_ms, v.window_end or 0),
      'PX', v.ttl)
  end
  reply(out, v, false, v.cost + leased)
end

-- Settles a request of `n` entries from argument `i` in `mode`, appending its reply to `out`.
local function settle(out, i, n, mode)
  saved, added = {}, {}
  undoable = mode == MODE_SETTLE and n > 1
  local decided = {}
  for e = 0, n - 1 do
    decided[#decided + 1] = decide_entry(i + e * DECIDE_FIELDS)
  end
  local denied = denied_by(decided)
  out[#out + 1] = denied and 1 or 0
  if mode == MODE_PROVISIONAL then
    for _, v in ipairs(decided) do
      if v.took then admit(out, v) else reply(out, v, false, v.taken) end
    end
    return
  end
  if denied and undoable then
    restore()
    -- What entries running debt took stands: take it again on the restored buckets (where it
    -- fits at least as well as it did).
    undoable = false
    for _, v in ipairs(decided) do
      if v.keeps and v.taken > 0 then algorithms[v.kind](v.key, v.taken, v.p1, v.p2, v.debt) end
    end
  end
  for _, v in ipairs(decided) do
    if denied and v.took and not v.keeps then
      -- Report the bucket as it stands, untouched by this request.
      local check = algorithms[v.kind](v.key, 0, v.p1, v.p2, v.debt)
      check.released = v.released
      reply(out, check, true, 0)
    elseif v.took and not denied then
      admit(out, v)
    else
      reply(out, v, false, v.taken)
    end
  end
end

-- Undoes what a provisional call took for `n` entries from argument `i`.
local function undo(out, i, n)
  undoable = false
  out[#out + 1] = 1
  for e = 0, n - 1 do
    local a = i + e * DECIDE_FIELDS
    local kind, n_back, p1, p2 = tonumber(ARGV[a]), tonumber(ARGV[a + 1]),
      tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local debt, ticket = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
    k = k + 1
    local key = KEYS[k]
    if ticket ~= TICKET_NONE then
      k = k + 1
      if ticket == TICKET_RESERVE then redis.call('DEL', KEYS[k]) end
    end
    if n_back > 0 then give_back(kind, key, n_back, p1, p2) end
    reply(out, algorithms[kind](key, 0, p1, p2, debt), true, 0)
  end
end

local out = {}
local i = HEADER_ARGS + 1
while i <= #ARGV do
  at(tonumber(ARGV[i]), tonumber(ARGV[i + 1]))
  local mode, n = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  i = i + REQUEST_FIELDS
  if mode == MODE_UNDO then undo(out, i, n) else settle(out, i, n, mode) end
  i = i + n * DECIDE_FIELDS
end
return out
