-- tollgate decision script, last part: the entry point.
--
-- KEYS[i]   the state of policy i for one identity; every key carries the
--           same {identity} hash tag, so all of them live in one Cluster slot.
-- ARGV[1]   "1" to consume (charge every policy if all allow), "0" to peek
-- ARGV[2]   cost, an integer >= 1
-- ARGV[3]   "" to use Redis's clock (production), or a time in µs (tests only)
-- ARGV[4]   n, the number of policies
-- ARGV[4 + 6(i-1) + 1..6]  policy i: algorithm name, limit, period (µs),
--           capacity (the burst of a bucket, the limit of a window: what
--           tollgate::Policy::capacity says), scaled unit, scaled rate
--
-- Returns 5 integers per policy: allowed (1/0), remaining, reset_after (µs),
-- retry_after (µs), delay (µs). All-or-nothing: no state is written unless
-- every policy allows and ARGV[1] is "1"; a decision that charges nothing
-- only pushes a key's expiry later when the policy in force needs it
-- (prelude.lua, `extend`).

local consume = ARGV[1] == '1'
local cost = tonumber(ARGV[2])
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
  TEST_CLOCK = true
  EXPIRE_BASE_MS = 2 ^ 52
  LOG_REBASE_AT = 64
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local n = tonumber(ARGV[4])

local policies = {}
for i = 1, n do
  local b = 4 + (i - 1) * 6
  local p = {
    alg = ALG[ARGV[b + 1]],
    limit = tonumber(ARGV[b + 2]),
    period = tonumber(ARGV[b + 3]),
    capacity = tonumber(ARGV[b + 4]),
    unit = tonumber(ARGV[b + 5]),
    rate = tonumber(ARGV[b + 6]),
  }
  if not p.alg then return redis.error_reply('tollgate: unknown algorithm ' .. tostring(ARGV[b + 1])) end
  policies[i] = p
end

local function run(commit)
  local out, all = {}, true
  for i = 1, n do
    local p = policies[i]
    -- A cost above the capacity can never pass: decide it as a zero-cost
    -- look, denied (twin of tollgate::algorithm::decide).
    local over = cost > p.capacity
    local c = cost
    if over then c = 0 end
    local allowed, remaining, fresh_at, retry_at, delay = p.alg(KEYS[i], p, now, c, commit and not over)
    allowed = allowed and not over
    if not allowed then all = false end
    local k = (i - 1) * 5
    out[k + 1] = allowed and 1 or 0
    out[k + 2] = remaining
    out[k + 3] = imax(0, fresh_at - now)
    out[k + 4] = imax(0, retry_at - now)
    out[k + 5] = delay
  end
  return out, all
end

-- Pushes the expiry of every key that was decided without a charge.
local function extend_all(out)
  for i = 1, n do
    local reset_after = out[(i - 1) * 5 + 3]
    if reset_after > 0 then extend(KEYS[i], now + reset_after) end
  end
end

-- All-or-nothing: look first when there are several policies, and charge
-- only if every one allows.
local out, all = run(consume and n == 1)
if consume and all then
  if n > 1 then out = run(true) end
else
  extend_all(out)
end
return out
