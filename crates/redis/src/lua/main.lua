-- tollgate decision script, last part: the entry point, `decide`.
--
-- KEYS[i]   the state of policy i for one identity; every key carries the
--           same {identity} hash tag, so all of them live in one Cluster slot.
-- ARGV[1]   "1" to consume (charge every policy if all allow), "0" to peek,
--           "lease" for a lease call (lease/main.lua: more arguments follow),
--           "reserve" or "settle" for a reservation's two steps
--           (reserve/main.lua: one more key and more arguments follow)
-- ARGV[2]   cost, an integer >= 1
-- ARGV[3]   "" to use Redis's clock (production), or a time in µs (tests only)
-- ARGV[3+i] policy i (KEYS[i]'s), one argument: "<algorithm> <limit>
--           <period µs> <capacity> <scaled unit> <scaled rate>", six words
--           separated by one space, capacity being the burst of a bucket or
--           the limit of a window (what tollgate::Policy::capacity says)
--
-- Returns 5 integers per policy: allowed (1/0), remaining, reset_after (µs),
-- retry_after (µs), delay (µs). All-or-nothing: no state is written unless
-- every policy allows and ARGV[1] is "1"; a decision that charges nothing
-- only pushes a key's expiry later when the policy in force needs it
-- (prelude.lua, `extend`).
--
-- The same code runs two ways (src/script.rs): as the library function
-- that FCALL calls, whose top level (every helper and algorithm above, and
-- the functions below) runs once, when the library is loaded; or as a
-- script for EVALSHA, which ends with `return decide(KEYS, ARGV)` and runs
-- its whole body on every call. Nothing here may be a global (Redis refuses
-- them in a library), and since a library keeps its upvalues between calls,
-- `decide` sets every per-call one (the clock's) afresh.

-- The policies parsed so far, by their argument: a library parses each
-- policy once, not on every call (a script, on every call). Bounded, in two
-- generations of at most POLICIES_MAX each: when the young one is full it
-- becomes the old one and the oldest is dropped, and a policy found in the
-- old one moves back to the young. So a stream of one-off policies (Envoy
-- overrides carry their numbers in the request, which a client chooses)
-- costs parsing for those alone, and a policy in use at least once per
-- generation stays parsed.
local POLICIES, OLD_POLICIES, POLICIES_CACHED, POLICIES_MAX = {}, {}, 0, 512

-- Policy `spec` (one ARGV word, above) as the table the algorithms take
-- (never written to), or nil when it is not one.
local function policy(spec)
  local p = POLICIES[spec]
  if p then return p end
  p = OLD_POLICIES[spec]
  if not p then
    local name, limit, period, capacity, unit, rate =
      string.match(spec, '^([%w_]+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
    local alg = name and ALG[name]
    if not alg then return nil end
    p = {
      alg = alg,
      name = name,
      limit = tonum(limit),
      period = tonum(period),
      capacity = tonum(capacity),
      unit = tonum(unit),
      rate = tonum(rate),
    }
  end
  if POLICIES_CACHED >= POLICIES_MAX then
    POLICIES, OLD_POLICIES, POLICIES_CACHED = {}, POLICIES, 0
  end
  POLICIES[spec] = p
  POLICIES_CACHED = POLICIES_CACHED + 1
  return p
end

-- Decides every policy; charges them when `commit`. Fills `out` with five
-- integers per policy; returns whether all allowed.
local function run(keys, policies, n, cost, now, commit, out)
  local all = true
  for i = 1, n do
    local p = policies[i]
    -- A cost above the capacity can never pass: decide it as a zero-cost
    -- look, denied (twin of tollgate::algorithm::decide).
    local over = cost > p.capacity
    local c = cost
    if over then c = 0 end
    local allowed, remaining, fresh_at, retry_at, delay = p.alg(keys[i], p, now, c, commit and not over)
    allowed = allowed and not over
    if not allowed then all = false end
    local k = (i - 1) * 5
    out[k + 1] = allowed and 1 or 0
    out[k + 2] = remaining
    out[k + 3] = imax(0, fresh_at - now)
    out[k + 4] = imax(0, retry_at - now)
    out[k + 5] = delay
  end
  return all
end

local function decide(keys, args)
  bind()
  local consume = args[1] == '1'
  -- A lease call (lease/main.lua) is a consumed check with steps before
  -- and after it, and four more words per policy; a reservation
  -- (reserve/main.lua) likewise, with the record's key after the states'
  -- and two more words; a settle is no check at all.
  local lease = not consume and args[1] == 'lease'
  local reserve = not consume and not lease and args[1] == 'reserve'
  local settling = not consume and not lease and not reserve and args[1] == 'settle'
  local cost = tonum(args[2])
  local now
  if args[3] ~= '' then
    now = tonum(args[3])
    TEST_CLOCK = true
    EXPIRE_BASE_MS = 2 ^ 52
    LOG_REBASE_AT = 64
  else
    TEST_CLOCK = false
    EXPIRE_BASE_MS = 0
    LOG_REBASE_AT = 2 ^ 50
    local t = call('TIME')
    now = tonum(t[1]) * 1000000 + tonum(t[2])
  end
  local n = #args - 3
  if lease then
    if not lease_begin then return redis.error_reply('tollgate: a decision script does not lease') end
    n = #keys
    if #args ~= 3 + 5 * n then
      return redis.error_reply('tollgate: a lease call takes 5 arguments per policy')
    end
    consume = true
  elseif reserve or settling then
    if not settle then return redis.error_reply('tollgate: this code does not reserve') end
    n = #keys - 1
    local want = 3 + n + 2
    if settling then want = 4 + 2 * n end
    if n < 1 or #args ~= want then
      return redis.error_reply('tollgate: a reservation call takes the arguments of reserve/main.lua')
    end
    consume = true
  end

  local policies = {}
  for i = 1, n do
    local p = policy(args[3 + i])
    if not p then return redis.error_reply('tollgate: not a policy: ' .. args[3 + i]) end
    policies[i] = p
  end

  if settling then return settle(keys, args, policies, n, now, cost) end
  local out = {}
  local ends, wants, untils
  if lease then ends, wants = lease_begin(keys, args, policies, n, now, out) end
  if reserve then untils = reserve_begin(keys, policies, n, now) end
  -- All-or-nothing: look first when there are several policies, and charge
  -- only if every one allows.
  local all = run(keys, policies, n, cost, now, consume and n == 1, out)
  if consume and all then
    if n > 1 then run(keys, policies, n, cost, now, true, out) end
  else
    -- Push the expiry of every key that was decided without a charge.
    for i = 1, n do
      local reset_after = out[(i - 1) * 5 + 3]
      if reset_after > 0 then extend(keys[i], now + reset_after) end
    end
  end
  if lease then lease_end(keys, policies, n, now, out, all, ends, wants) end
  if reserve and all then reserve_end(keys, args, n, now, cost, untils) end
  return out
end
