-- tollgate's Redis scripts share this prelude: the algorithms of src/algorithm/ in exact integer
-- arithmetic on doubles. Each script is the wire constants (Lua locals written by
-- src/store/redis/wire.rs), this prelude, then its body: decide.lua, lease.lua or give_back.lua.
--
-- Times are nanoseconds split into whole seconds and a remainder, so no value that must be exact
-- goes past 2^53 ns (104 days). Token buckets that take longer to refill count tokens exactly but
-- may report times a few nanoseconds off.
--
-- The numbers come in one argument, ARGV[1], as little-endian doubles (each u64 as Rust's `as
-- f64` makes it, the value tonumber would read from its decimal digits), read with
-- struct.unpack: no argument strings to convert one by one. Positions below count numbers.
--
-- Wire constants (a test checks this list against wire.rs):
--   HEADER_ARGS = 3          number 1: now, whole seconds; 2: nanoseconds within the second;
--                            3: idle grace in ms, added to every key's TTL
--   REQUEST_FIELDS = 4       decide.lua, per request: now (s), now (ns within the s), mode, entries
--   MODE_SETTLE = 0          decide.lua: settle the request here, all or nothing
--   MODE_PROVISIONAL = 1     decide.lua: take what conforms; the caller settles across slots
--   MODE_UNDO = 2            decide.lua: give back what a provisional call took
--   KIND_DECIDED = 0         an entry its caller already decided (decide.lua only)
--   KIND_TOKEN_BUCKET = 1    p1: nanoseconds per token, p2: capacity in tokens (0: never admits)
--   KIND_FIXED_WINDOW = 2    p1: window seconds, p2: the limit
--   KIND_SLIDING_WINDOW = 3  p1: window milliseconds, p2: the limit
--   KIND_SLIDING_LOG = 4     p1: window milliseconds, p2: the limit
--   KIND_CALENDAR_WINDOW = 5 p1: the end of the window that holds now (s), p2: the limit
--   ROLE_DENIES = 1          role bit: the entry's denial denies the request
--   ROLE_QUOTA = 2           role bit: the entry is a quota-mode limit
--   TICKET_NONE = 0          an entry without a reservation ticket
--   TICKET_RESERVE = 1       hold what the entry takes under its reservation key (the next key)
--   TICKET_SETTLE = 2        give back what the reservation key holds, then decide
--   DECIDE_FIELDS = 9        decide.lua: kind, cost, p1, p2, role, lease, debt, ticket, ttl (ms)
--                            per entry
--   LEASE_FIELDS = 4         lease.lua and give_back.lua: kind, cost, p1, p2 per entry
--   REPLY_FIELDS = 7         per entry: allowed, remaining, reset_after (ns), retry_after (ns, -1
--                            for never), refunded, units taken, units a settled reservation gave
--                            back
--
-- Each algorithm is called as `(key, cost, p1, p2, debt)` and returns allowed, remaining,
-- reset, retry, taken (and fixed and calendar windows the window's end), as values, not a
-- table: a hit conforms when what is used plus its cost stays within the limit
-- (a check, cost 0, conforms unless the bucket is past it); one that does not takes nothing,
-- unless `debt` (units, nil for none) lets it run the bucket into debt.
--
-- KEYS hold one bucket key per entry that has a bucket (every kind but KIND_DECIDED), in entry
-- order, each followed by its reservation key if the entry has a ticket (a reservation holds
-- `<units>:<ms taken>:<window end in s, for fixed and calendar windows; else 0>`). Stored
-- values: a token bucket's is `<theoretical arrival time, ns>:<ns per token>`, a fixed or
-- calendar window's `<window end, s>:<count>`, a sliding window's
-- `<window index>:<previous count>:<current count>:<window ms>`; a sliding log is a sorted set of
-- hits scored in ms, with a `:seq` counter beside it. Carrying the token length and the window
-- lets a reload that changes them keep what was consumed, as the memory store does.

local NS = 1000000000
local numbers = ARGV[1]
-- Reads `n` numbers (at most 9) from number `first` (counting from 1); returns them.
local formats = {'<d', '<dd', '<ddd', '<dddd', '<ddddd', '<dddddd', '<ddddddd', '<dddddddd',
  '<ddddddddd'}
local function read(first, n)
  return struct.unpack(formats[n], numbers, (first - 1) * 8 + 1)
end
-- How many numbers came.
local count = #numbers / 8
local header_s, header_ns, grace_ms = read(1, HEADER_ARGS)
local now_s, now_ns, now_ms, past_ms

-- Sets the time the algorithms read: `s` whole seconds and `ns` nanoseconds. The window
-- algorithms count in whole milliseconds (as sliding_window.rs and sliding_log.rs).
local function at(s, ns)
  now_s, now_ns = s, ns
  now_ms = now_s * 1000 + math.floor(now_ns / 1000000)
  past_ms = now_ns % 1000000
end
at(header_s, header_ns)

-- Milliseconds from the last whole millisecond, as nanoseconds from now.
local function after_ms(ms) return math.max(ms * 1000000 - past_ms, 0) end

-- A hit that does not conform takes nothing, unless its limit runs `debt` units of debt: then
-- it takes its cost, as far as `room` (the limit plus the debt, less what is used) allows.
local function owed(cost, debt, room)
  if debt == 0 then return 0 end
  return math.max(math.min(cost, room), 0)
end

-- A token bucket's stored value for a debt of `d` ns at `t` ns per token, and its TTL in ms.
local function tb_value(d, t)
  local total = now_ns + d
  local carry = math.floor(total / NS)
  return string.format('%d%09d:%d', now_s + carry, total - carry * NS, t)
end
local function tb_ttl(d) return math.ceil(d / 1000000) + grace_ms end

-- Whether what this call writes may have to be undone: a script sets it false when nothing
-- can be (a lease, a give-back, a request of one entry: that entry writes only if it conforms,
-- and then the request is admitted), sparing two reads per write.
local undoable = true

-- Keys this request wrote, with what they held before, to restore if it is denied.
local saved = {}

local function write(key, value, ttl_ms)
  if undoable and not saved[key] then
    saved[key] = {raw = redis.call('GET', key), pttl = redis.call('PTTL', key)}
  end
  redis.call('SET', key, value, 'PX', ttl_ms)
end

-- Sliding-log members this request added, to remove if it is denied.
local added = {}

local function restore()
  for _, entry in ipairs(added) do
    redis.call('ZREM', entry[1], entry[2])
  end
  for key, old in pairs(saved) do
    if not old.raw then
      redis.call('DEL', key)
    elseif old.pttl > 0 then
      redis.call('SET', key, old.raw, 'PX', old.pttl)
    else
      redis.call('SET', key, old.raw)
    end
  end
end

-- A token bucket's debt at now (its theoretical arrival time minus now, at least 0), at `t` ns
-- per token. A bucket written at another token length (a reload changed the rate) keeps its
-- whole tokens consumed, a partly refilled one counting as consumed, at most `most` tokens (an
-- empty bucket run to its debt's ceiling: token_bucket::rescale); the rescaled value is stored at once, as the memory store does, so
-- it is not undone when the request is denied.
local function tb_debt(key, t, most)
  local raw = redis.call('GET', key)
  if not raw then return 0 end
  local tat, from = raw, nil
  local sep = string.find(raw, ':', 1, true)
  if sep then tat, from = string.sub(raw, 1, sep - 1), string.sub(raw, sep + 1) end
  local s = tonumber(string.sub(tat, 1, -10)) or 0
  local n = tonumber(string.sub(tat, -9)) or 0
  local d = (s - now_s) * NS + (n - now_ns)
  if d < 0 then d = 0 end
  from = tonumber(from)
  if from and from ~= t then
    local used = math.ceil(d / from)
    -- Division of doubles may round across an integer: settle it with exact products.
    if used > 0 and (used - 1) * from >= d then used = used - 1 end
    if used * from < d then used = used + 1 end
    d = math.min(used, most) * t
    redis.call('SET', key, tb_value(d, t), 'PX', tb_ttl(d))
  end
  return d
end

-- Whole tokens of `tokens` a bucket `used` ns deep still holds: floor(tokens - used / t), at
-- least 0, without forming a product that may pass 2^53. Past 2^53 the debt carries a few
-- nanoseconds of rounding noise: a debt that close above a token boundary counts as on it.
local function tb_left(tokens, used, t)
  local noise = 0
  if used > 9007199254740992 then noise = 64 end
  return math.max(tokens - math.ceil((used - noise) / t), 0)
end

local function token_bucket(key, cost, t, burst, debt)
  debt = debt or 0
  if burst == 0 then return cost == 0, 0, t, -1, 0 end
  local capacity = burst * t
  -- Debt past the ceiling (left by a lowered burst or rate) is forgiven.
  local used = math.min(tb_debt(key, t, burst + debt), (burst + debt) * t)
  local available = tb_left(burst, used, t)
  if used <= capacity and cost <= available then
    local after = used + cost * t
    if cost > 0 then
      write(key, tb_value(after, t), tb_ttl(after))
    end
    return true, available - cost, after, -1, cost
  end
  local taken = owed(cost, debt, tb_left(burst + debt, used, t))
  if taken > 0 then
    used = used + taken * t
    write(key, tb_value(used, t), tb_ttl(used))
  end
  local retry = -1
  if cost <= burst then retry = math.max(used + cost * t - capacity, 0) end
  return false, tb_left(burst, used, t), used, retry, taken
end

-- A fixed window ending at `window_end` (whole seconds): epoch-aligned windows of `unit`
-- seconds (KIND_FIXED_WINDOW), or calendar windows whose end Rust computed
-- (KIND_CALENDAR_WINDOW). The verdict carries the window's end, for reservations.
local function window(key, cost, window_end, limit, debt)
  local used = 0
  local raw = redis.call('GET', key)
  if raw then
    local e, c = string.match(raw, '^(%d+):(%d+)$')
    if tonumber(e) == window_end then used = tonumber(c) end
  end
  local available = math.max(limit - used, 0)
  local reset = (window_end - now_s) * NS - now_ns
  local allowed = used <= limit and cost <= available
  local taken = cost
  if not allowed then taken = owed(cost, debt or 0, limit + (debt or 0) - used) end
  if taken > 0 then
    write(key, string.format('%d:%d', window_end, used + taken),
      math.ceil(reset / 1000000) + grace_ms)
  end
  local retry = -1
  if not allowed and cost <= limit then retry = reset end
  return allowed, math.max(available - taken, 0), reset, retry, taken, window_end
end

-- The end of the current window of a fixed or calendar window entry (p1 as the kind says).
local function window_end_of(kind, p1)
  if kind == KIND_CALENDAR_WINDOW then return p1 end
  return (math.floor(now_s / p1) + 1) * p1
end

local function fixed_window(key, cost, unit, limit, debt)
  return window(key, cost, window_end_of(KIND_FIXED_WINDOW, unit), limit, debt)
end

local function calendar_window(key, cost, window_end, limit, debt)
  return window(key, cost, window_end, limit, debt)
end

local function sw_value(index, previous, current, window)
  return string.format('%d:%d:%d:%d', index, previous, current, window)
end

-- A sliding window's (index, previous, current) as stored, for `window` ms windows. A window
-- stored at another length (a reload changed the unit) keeps every hit it remembers, counted in
-- the current window (sliding_window::rescale), stored at once.
local function sw_counts(key, window)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local i, p, c, w = string.match(raw, '^(%d+):(%d+):(%d+):?(%d*)$')
  i, p, c, w = tonumber(i), tonumber(p), tonumber(c), tonumber(w)
  if not i then return nil end
  if w and w ~= window then
    local old = math.floor(now_ms / w)
    local kept = 0
    if i == old then kept = p + c elseif i == old - 1 then kept = c end
    local index = math.floor(now_ms / window)
    local left = window - (now_ms - index * window)
    redis.call('SET', key, sw_value(index, 0, kept, window), 'PX', left + window + grace_ms)
    return index, 0, kept
  end
  return i, p, c
end

-- The sliding window counts in whole milliseconds (see sliding_window.rs), so every product
-- here stays below 2^53.
local function sliding_window(key, cost, window, limit, debt)
  local index = math.floor(now_ms / window)
  local left = window - (now_ms - index * window)
  local previous, current = 0, 0
  local i, p, c = sw_counts(key, window)
  if i == index then
    previous, current = p, c
  elseif i == index - 1 then
    previous = c
  end
  local used = math.ceil(previous * left / window) + current
  local available = math.max(limit - used, 0)
  local allowed = used <= limit and cost <= available
  local taken = cost
  if not allowed then taken = owed(cost, debt or 0, limit + (debt or 0) - used) end
  if taken > 0 then
    current = current + taken
    write(key, sw_value(index, previous, current, window), left + window + grace_ms)
  end
  local reset = 0
  if current > 0 then reset = left + window elseif previous > 0 then reset = left end
  local retry = -1
  if not allowed and cost <= limit then
    local room = limit - current - cost
    if room >= 0 then
      retry = after_ms(math.max(left - math.floor(room * window / math.max(previous, 1)), 0))
    else
      local keep = math.floor((limit - cost) * window / math.max(current, 1))
      retry = after_ms(left + math.max(window - keep, 0))
    end
  end
  return allowed, math.max(available - taken, 0), after_ms(reset), retry, taken
end

-- The sliding log: a sorted set of admitted hits scored by their time in ms; members are
-- made unique by a counter beside it (same hash tag, so the same slot).
local function sliding_log(key, cost, unit, limit, debt)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - unit)
  local used = redis.call('ZCARD', key)
  local allowed = used <= limit and cost <= limit - used
  local taken = cost
  if not allowed then taken = owed(cost, debt or 0, limit + (debt or 0) - used) end
  if taken > 0 then
    local ttl = unit + grace_ms
    for _ = 1, taken do
      local member = now_ms .. ':' .. redis.call('INCR', key .. ':seq')
      redis.call('ZADD', key, now_ms, member)
      if undoable then added[#added + 1] = {key, member} end
    end
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', key .. ':seq', ttl)
    used = used + taken
  end
  local reset = 0
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #newest > 0 then reset = after_ms(tonumber(newest[2]) + unit - now_ms) end
  local retry = -1
  if not allowed and cost <= limit then
    -- The hit whose leaving lets the cost conform: the (used + cost - limit)-th oldest.
    local k = used + cost - limit - 1
    local leaving = redis.call('ZRANGE', key, k, k, 'WITHSCORES')
    if #leaving > 0 then retry = after_ms(tonumber(leaving[2]) + unit - now_ms) end
  end
  return allowed, math.max(limit - used, 0), reset, retry, taken
end

local algorithms = {
  [KIND_TOKEN_BUCKET] = token_bucket,
  [KIND_FIXED_WINDOW] = fixed_window,
  [KIND_SLIDING_WINDOW] = sliding_window,
  [KIND_SLIDING_LOG] = sliding_log,
  [KIND_CALENDAR_WINDOW] = calendar_window,
}

-- Gives back `n` units a reservation took at `taken_ms` from an entry's bucket, as far as they
-- still count (algorithm::release): a token bucket refills at most to full, a window gives back
-- only from the window they were counted in, a log drops hits recorded then. Written at once,
-- never undone: a settlement stands whatever the answer.
local function release(kind, key, n, p1, p2, debt, taken_ms, reserved_end)
  if kind == KIND_TOKEN_BUCKET then
    if p2 == 0 then return end
    local d = tb_debt(key, p1, p2 + debt)
    if d == 0 then return end
    local after = math.max(d - n * p1, 0)
    if after == 0 then
      redis.call('DEL', key)
    else
      redis.call('SET', key, tb_value(after, p1), 'PX', tb_ttl(after))
    end
  elseif kind == KIND_FIXED_WINDOW or kind == KIND_CALENDAR_WINDOW then
    local raw = redis.call('GET', key)
    if not raw then return end
    local e, c = string.match(raw, '^(%d+):(%d+)$')
    if tonumber(e) == reserved_end then
      redis.call('SET', key, string.format('%d:%d', e, math.max(tonumber(c) - n, 0)), 'KEEPTTL')
    end
  elseif kind == KIND_SLIDING_WINDOW then
    local i, p, c = sw_counts(key, p1)
    local taken = math.floor(taken_ms / p1)
    if i == taken then
      redis.call('SET', key, sw_value(i, p, math.max(c - n, 0), p1), 'KEEPTTL')
    elseif i == taken + 1 then
      redis.call('SET', key, sw_value(i, math.max(p - n, 0), c, p1), 'KEEPTTL')
    end
  else
    local hits = redis.call('ZRANGEBYSCORE', key, taken_ms, taken_ms, 'LIMIT', 0, n)
    -- In chunks: unpack has a stack limit, and a log holds up to 10 000 hits.
    for first = 1, #hits, 1000 do
      redis.call('ZREM', key, unpack(hits, first, math.min(first + 999, #hits)))
    end
  end
end

-- Gives back `n` units taken now (a lease's unspent units, a request undone): the algorithms'
-- refund, bounded below by an untouched bucket, and nothing where the window has moved on (a
-- sliding log drops its newest hits).
local function give_back(kind, key, n, p1, p2)
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
  if kind == KIND_FIXED_WINDOW or kind == KIND_CALENDAR_WINDOW then
    local e, c = string.match(raw, '^(%d+):(%d+)$')
    if tonumber(e) == window_end_of(kind, p1) then
      redis.call('SET', key, string.format('%d:%d', e, math.max(tonumber(c) - n, 0)), 'KEEPTTL')
    end
    return
  end
  local i, p, c = sw_counts(key, p1)
  if i == math.floor(now_ms / p1) then
    redis.call('SET', key, sw_value(i, p, math.max(c - n, 0), p1), 'KEEPTTL')
  end
end

-- Calls `each(kind, key, cost, p1, p2)` for every entry of LEASE_FIELDS numbers after the
-- header (lease.lua, give_back.lua; decide.lua reads its wider entries inline, on the hot path),
-- each entry with its key, KEYS[n] for the n-th entry.
local function entries(each)
  local k = 0
  for i = HEADER_ARGS + 1, count, LEASE_FIELDS do
    k = k + 1
    local kind, cost, p1, p2 = read(i, LEASE_FIELDS)
    each(kind, KEYS[k], cost, p1, p2)
  end
end

-- The script's reply, `n_out` numbers so far.
local out, n_out = {}, 0

-- Appends a number to the reply.
local function put(value)
  n_out = n_out + 1
  out[n_out] = value
end

-- Appends one entry's reply (REPLY_FIELDS numbers): an algorithm's first four values, whether
-- it was refunded, the units taken and the units a settled reservation gave back.
local function reply(allowed, remaining, reset, retry, refunded, taken, released)
  local n = n_out
  out[n + 1] = allowed and 1 or 0
  out[n + 2] = remaining
  out[n + 3] = reset
  out[n + 4] = retry
  out[n + 5] = refunded and 1 or 0
  out[n + 6] = taken
  out[n + 7] = released
  n_out = n + REPLY_FIELDS
end
