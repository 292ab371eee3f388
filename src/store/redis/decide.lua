-- tollgate strict mode: decide one request's descriptors atomically, all or nothing.
--
-- The same algorithms as src/algorithm/, in exact integer arithmetic on doubles: times are
-- nanoseconds split into whole seconds and a remainder, so no value that must be exact goes
-- past 2^53 ns (104 days). Token buckets that take longer to refill count tokens exactly but
-- may report times a few nanoseconds off.
--
-- KEYS[k]  bucket keys, one per counted entry, in entry order.
-- ARGV[1]  now, whole seconds     ARGV[2]  now, nanoseconds within the second
-- ARGV[3]  idle grace, milliseconds (added to every key's TTL)
-- then 5 fields per entry:
--   kind   1 token bucket, 2 fixed window, 3 sliding window, 4 sliding log, 0 decided by the
--          caller
--   cost   units to take; 0 checks only
--   p1     token bucket: nanoseconds per token | fixed window: window seconds | sliding
--          window and log: window milliseconds | kind 0: allowed
--   p2     token bucket: capacity in tokens (0: never admits) | fixed window: the limit
--   role   1 if it can deny + 2 if it is in quota mode; or 4: a lease (cached mode), which
--          takes up to `cost` units, as many as remain, and takes no part in the settlement;
--          or 8: give back `cost` units an unused lease took
--
-- Returns 6 integers per entry: allowed, remaining, reset_after (ns), retry_after (ns, -1 for
-- never), refunded (1 if it conformed but the request was denied, so nothing was taken; its
-- figures are then those of a check), and the units taken.

local now_s = tonumber(ARGV[1])
local now_ns = tonumber(ARGV[2])
local grace_ms = tonumber(ARGV[3])
local NS = 1000000000
-- The window algorithms count in whole milliseconds (as sliding_window.rs and sliding_log.rs).
local now_ms = now_s * 1000 + math.floor(now_ns / 1000000)
local past_ms = now_ns % 1000000

-- Milliseconds from the last whole millisecond, as nanoseconds from now.
local function after_ms(ms) return math.max(ms * 1000000 - past_ms, 0) end

-- Whether `cost` units fit in `available`; a check (cost 0) needs one.
local function fits(cost, available)
  if cost == 0 then return available >= 1 end
  return cost <= available
end

-- A token bucket's debt at now: its theoretical arrival time minus now, at least 0.
local function debt(raw)
  if not raw then return 0 end
  local s = tonumber(string.sub(raw, 1, -10)) or 0
  local n = tonumber(string.sub(raw, -9)) or 0
  local d = (s - now_s) * NS + (n - now_ns)
  if d < 0 then return 0 end
  return d
end

-- now + d nanoseconds, as the decimal integer the memory store would hold.
local function at(d)
  local total = now_ns + d
  local carry = math.floor(total / NS)
  return string.format('%d%09d', now_s + carry, total - carry * NS)
end

-- Keys this request wrote, with what they held before, to restore if it is denied.
local saved = {}

local function write(key, value, ttl_ms)
  if not saved[key] then
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

local function token_bucket(key, cost, t, burst)
  if burst == 0 then
    return {allowed = false, remaining = 0, reset = t, retry = -1}
  end
  local capacity = burst * t
  local used = math.min(debt(redis.call('GET', key)), capacity)
  -- floor((capacity - used) / t), without forming capacity, which may pass 2^53. Past 2^53
  -- the debt carries a few nanoseconds of rounding noise: a debt that close above a token
  -- boundary counts as on it.
  local noise = 0
  if used > 9007199254740992 then noise = 64 end
  local available = math.max(burst - math.ceil((used - noise) / t), 0)
  if not fits(cost, available) then
    local want = math.max(cost, 1)
    local retry = -1
    if want <= burst then retry = math.max(used + want * t - capacity, 0) end
    return {allowed = false, remaining = available, reset = used, retry = retry}
  end
  local after = used + cost * t
  if cost > 0 then
    write(key, at(after), math.ceil(after / 1000000) + grace_ms)
  end
  return {allowed = true, remaining = available - cost, reset = after, retry = -1}
end

local function fixed_window(key, cost, unit, limit)
  local window_end = (math.floor(now_s / unit) + 1) * unit
  local used = 0
  local raw = redis.call('GET', key)
  if raw then
    local e, c = string.match(raw, '^(%d+):(%d+)$')
    if tonumber(e) == window_end then used = tonumber(c) end
  end
  local available = math.max(limit - used, 0)
  local reset = (window_end - now_s) * NS - now_ns
  if not fits(cost, available) then
    local retry = -1
    if math.max(cost, 1) <= limit then retry = reset end
    return {allowed = false, remaining = available, reset = reset, retry = retry}
  end
  if cost > 0 then
    write(key, string.format('%d:%d', window_end, used + cost),
      math.ceil(reset / 1000000) + grace_ms)
  end
  return {allowed = true, remaining = available - cost, reset = reset, retry = -1}
end

-- The sliding window counts in whole milliseconds (see sliding_window.rs), so every product
-- here stays below 2^53.
local function sliding_window(key, cost, window, limit)
  local index = math.floor(now_ms / window)
  local left = window - (now_ms - index * window)
  local previous, current = 0, 0
  local raw = redis.call('GET', key)
  if raw then
    local i, p, c = string.match(raw, '^(%d+):(%d+):(%d+)$')
    i, p, c = tonumber(i), tonumber(p), tonumber(c)
    if i == index then
      previous, current = p, c
    elseif i == index - 1 then
      previous = c
    end
  end
  local available = math.max(limit - math.ceil(previous * left / window) - current, 0)
  local reset = 0
  if current > 0 then reset = left + window elseif previous > 0 then reset = left end
  if not fits(cost, available) then
    local want = math.max(cost, 1)
    local retry = -1
    if want <= limit then
      local room = limit - current - want
      if room >= 0 then
        retry = after_ms(math.max(left - math.floor(room * window / math.max(previous, 1)), 0))
      else
        local keep = math.floor((limit - want) * window / math.max(current, 1))
        retry = after_ms(left + math.max(window - keep, 0))
      end
    end
    return {allowed = false, remaining = available, reset = after_ms(reset), retry = retry}
  end
  if cost > 0 then
    reset = left + window
    write(key, string.format('%d:%d:%d', index, previous, current + cost), reset + grace_ms)
  end
  return {allowed = true, remaining = available - cost, reset = after_ms(reset), retry = -1}
end

-- The sliding log: a sorted set of admitted hits scored by their time in ms; members are
-- made unique by a counter beside it (same hash tag, so the same slot).

local function sliding_log(key, cost, unit, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - unit)
  local used = redis.call('ZCARD', key)
  local available = math.max(limit - used, 0)
  local function reset()
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if #newest == 0 then return 0 end
    return after_ms(tonumber(newest[2]) + unit - now_ms)
  end
  if not fits(cost, available) then
    local want = math.max(cost, 1)
    local retry = -1
    if want <= limit then
      local k = used + want - limit - 1
      local leaving = redis.call('ZRANGE', key, k, k, 'WITHSCORES')
      if #leaving > 0 then retry = after_ms(tonumber(leaving[2]) + unit - now_ms) end
    end
    return {allowed = false, remaining = available, reset = reset(), retry = retry}
  end
  if cost > 0 then
    local ttl = unit + grace_ms
    for _ = 1, cost do
      local member = now_ms .. ':' .. redis.call('INCR', key .. ':seq')
      redis.call('ZADD', key, now_ms, member)
      added[#added + 1] = {key, member}
    end
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', key .. ':seq', ttl)
  end
  return {allowed = true, remaining = available - cost, reset = reset(), retry = -1}
end

local algorithms = {token_bucket, fixed_window, sliding_window, sliding_log}

-- Gives back `n` units: the algorithms' refund, bounded below by an untouched bucket.
local function give_back(kind, key, n, p1)
  if kind == 4 then
    redis.call('ZPOPMAX', key, n)
    return
  end
  local raw = redis.call('GET', key)
  if not raw then return end
  if kind == 1 then
    local after = math.max(debt(raw) - n * p1, 0)
    if after == 0 then
      redis.call('DEL', key)
    else
      redis.call('SET', key, at(after), 'PX', math.ceil(after / 1000000) + grace_ms)
    end
  elseif kind == 2 then
    local e, c = string.match(raw, '^(%d+):(%d+)$')
    if tonumber(e) == (math.floor(now_s / p1) + 1) * p1 then
      redis.call('SET', key, string.format('%d:%d', e, math.max(tonumber(c) - n, 0)), 'KEEPTTL')
    end
  else
    local i, p, c = string.match(raw, '^(%d+):(%d+):(%d+)$')
    if tonumber(i) == math.floor(now_ms / p1) then
      local back = string.format('%d:%d:%d', i, p, math.max(tonumber(c) - n, 0))
      redis.call('SET', key, back, 'KEEPTTL')
    end
  end
end

-- Decide each entry in order, writing as it goes, so two entries on one bucket see each other.
local entries = {}
local k = 0
local i = 4
while i <= #ARGV do
  local kind, cost = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local p1, p2, role = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local v
  if kind == 0 then
    v = {allowed = p1 == 1, remaining = 0, reset = 0, retry = -1}
  else
    k = k + 1
    if role == 8 then
      give_back(kind, KEYS[k], cost, p1)
      v = {allowed = true, remaining = 0, reset = 0, retry = -1}
      cost, role = 0, 0
    else
      if role == 4 then
        local probe = algorithms[kind](KEYS[k], 0, p1, p2)
        cost = probe.allowed and math.min(cost, probe.remaining) or 0
        role = 0
      end
      v = algorithms[kind](KEYS[k], cost, p1, p2)
      v.key, v.kind, v.p1, v.p2 = KEYS[k], kind, p1, p2
    end
    v.took = v.allowed and cost > 0
    v.cost = cost
  end
  v.denies = role % 2 == 1
  v.quota = role >= 2
  entries[#entries + 1] = v
  i = i + 5
end

-- Settle as decision::settle does: any strict denial, or every quota-mode entry over.
local denied = false
local quota_seen, quota_all_over = false, true
for _, v in ipairs(entries) do
  local over = (not v.allowed) and v.denies
  if v.quota then
    quota_seen = true
    if not over then quota_all_over = false end
  elseif over then
    denied = true
  end
end
if quota_seen and quota_all_over then denied = true end

local out = {}
if denied then restore() end
for _, v in ipairs(entries) do
  local shown, refunded = v, 0
  if denied and v.took then
    -- Report the bucket as it stands, untouched by this request.
    shown, refunded = algorithms[v.kind](v.key, 0, v.p1, v.p2), 1
  end
  out[#out + 1] = shown.allowed and 1 or 0
  out[#out + 1] = shown.remaining
  out[#out + 1] = shown.reset
  out[#out + 1] = shown.retry
  out[#out + 1] = refunded
  out[#out + 1] = (v.took and not denied) and v.cost or 0
end
return out
