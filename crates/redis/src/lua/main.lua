-- tollgate decision script, last part: the entry point, `decide`.
--
-- KEYS[i]   the state of policy i for one identity; every key carries the
--           same {identity} hash tag, so all of them live in one Cluster slot.
-- ARGV[1]   "1" to consume (charge every policy if all allow), "0" to peek,
--           "lease" for a lease call (`lease`, below: more arguments follow)
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
      lease_until = LEASE_UNTIL[name],
      give_back = GIVE_BACK[name],
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

-- Sets the clock of this call from ARGV[3] (every per-call upvalue of the
-- prelude); returns now, in µs.
local function clock(arg)
  if arg ~= '' then
    TEST_CLOCK = true
    EXPIRE_BASE_MS = 2 ^ 52
    LOG_REBASE_AT = 64
    return tonum(arg)
  end
  TEST_CLOCK = false
  EXPIRE_BASE_MS = 0
  LOG_REBASE_AT = 2 ^ 50
  local t = call('TIME')
  return tonum(t[1]) * 1000000 + tonum(t[2])
end

-- The n policies of ARGV[4..3+n], or nil and the error to return.
local function policies_of(args, n)
  local policies = {}
  for i = 1, n do
    local p = policy(args[3 + i])
    if not p then return nil, redis.error_reply('tollgate: not a policy: ' .. args[3 + i]) end
    policies[i] = p
  end
  return policies
end

-- Decides the check, all-or-nothing: looks first when there are several
-- policies, and charges (when `consume`) only if every one allows. Fills
-- `out` as `run` does; returns whether all allowed.
local function check(keys, policies, n, cost, now, consume, out)
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
  return all
end

-- How many units a lease takes when `remaining` remain after the check:
-- `want`, at most a 16th of what remains, at least one when anything
-- remains. Twin of tollgate::algorithm::lease_size (LEASE_SHARE = 16).
local function lease_size(want, remaining)
  local share = idiv(remaining, 16)
  if share == 0 and remaining > 0 then share = 1 end
  return imin(want, share)
end

-- A lease call, twin of tollgate's MemoryStore::lease_sync: one atomic
-- step that
--   1. gives back each policy's held units (GIVE_BACK), then reads until
--      when a lease taken now may be spent (LEASE_UNTIL, on the state
--      before anything is charged, capped at now + ttl);
--   2. decides the check, consuming, all-or-nothing (`check`);
--   3. when all allow, charges each policy whose lease would end after now
--      a lease of `lease_size` of what remains (a second charge of that
--      many units), and reports the remaining and reset_after of that
--      charge.
-- ARGV[1] is "lease", ARGV[2] the cost, ARGV[3] the clock and ARGV[3+i]
-- policy i as for `decide`, for the n = #KEYS policies; then four words per
-- policy, ARGV[3+n+4(i-1)+1..4]: units wanted (0: no lease), the lease's
-- longest life (µs), units held from a previous lease, and the instant
-- (µs) that lease was valid until.
-- Returns the check's 5 integers per policy as `decide` does, then 4 per
-- policy: units leased, until (µs), valid for (µs), units given back.
local function lease(keys, args)
  local n = #keys
  if #args ~= 3 + 5 * n then
    return redis.error_reply('tollgate: a lease call takes 5 arguments per policy')
  end
  local cost = tonum(args[2])
  local now = clock(args[3])
  local policies, err = policies_of(args, n)
  if not policies then return err end
  local out, wants, untils = {}, {}, {}
  for i = 1, n do
    local p, key, a = policies[i], keys[i], 3 + n + (i - 1) * 4
    local want, ttl = tonum(args[a + 1]), tonum(args[a + 2])
    local held, held_until = tonum(args[a + 3]), tonum(args[a + 4])
    local returned = 0
    if p.give_back and held > 0 and now < held_until then
      returned = p.give_back(key, p, now, held, held_until)
    end
    local ends = now
    if want > 0 and p.lease_until then ends = imin(p.lease_until(key, p, now), now + ttl) end
    wants[i], untils[i] = want, ends
    out[5 * n + 4 * i] = returned
  end
  local all = check(keys, policies, n, cost, now, true, out)
  for i = 1, n do
    local k, ends, units = 5 * n + 4 * (i - 1), untils[i], 0
    if all and ends > now then units = lease_size(wants[i], out[(i - 1) * 5 + 2]) end
    if units > 0 then
      local p = policies[i]
      local _, remaining, fresh_at = p.alg(keys[i], p, now, units, true)
      out[(i - 1) * 5 + 2] = remaining
      out[(i - 1) * 5 + 3] = imax(0, fresh_at - now)
      out[k + 1], out[k + 2], out[k + 3] = units, ends, ends - now
    else
      out[k + 1], out[k + 2], out[k + 3] = 0, 0, 0
    end
  end
  return out
end

local function decide(keys, args)
  bind()
  local consume = args[1] == '1'
  if not consume and args[1] == 'lease' then return lease(keys, args) end
  local cost = tonum(args[2])
  local now = clock(args[3])
  local n = #args - 3
  local policies, err = policies_of(args, n)
  if not policies then return err end
  local out = {}
  check(keys, policies, n, cost, now, consume, out)
  return out
end
