-- tollgate lease code, last part (after main.lua): the two halves of the
-- lease step, which `decide` runs around a lease call's check.

-- How many units a lease takes when `remaining` remain after the check:
-- `want`, at most a 16th of what remains, at least one when anything
-- remains. Twin of tollgate::algorithm::lease_size (LEASE_SHARE = 16).
local function lease_size(want, remaining)
  local share = idiv(remaining, 16)
  if share == 0 and remaining > 0 then share = 1 end
  return imin(want, share)
end

-- The units worth asking for a lease valid `valid` µs when `want` is what a
-- whole `ttl` would spend: scaled by valid / ttl (at most 1) in steps of
-- 2^-20, every product below 2^53. Twin of tollgate::algorithm::lease_want.
local function lease_want(want, valid, ttl)
  if valid >= ttl then return want end
  want = imin(want, 4294967296)
  return idiv(want * idiv(valid * 1048576, ttl), 1048576)
end

-- A lease call, twin of tollgate's MemoryStore::lease_sync: one atomic
-- step that `decide` (main.lua) runs as a consumed check between
-- `lease_begin` and `lease_end` (declared in prelude.lua):
--   1. `lease_begin` gives back each policy's held units (GIVE_BACK), then
--      reads until when a lease taken now may be spent (LEASE_UNTIL, on the
--      state before anything is charged, capped at now + ttl);
--   2. `decide` decides the check, consuming, all-or-nothing;
--   3. `lease_end`, when all allowed, charges each policy whose lease would
--      end after now a lease of `lease_size` of what remains, asking
--      `lease_want` (the want scaled to how long the lease can live): a
--      second charge of that many units; it reports the remaining and
--      reset_after of that charge.
-- ARGV[1] is "lease", ARGV[2] the cost, ARGV[3] the clock and ARGV[3+i]
-- policy i as for a decision, for the n = #KEYS policies; then four words
-- per policy, ARGV[3+n+4(i-1)+1..4]: units wanted (0: no lease), the
-- lease's longest life (µs), units held from a previous lease, and the
-- instant (µs) that lease was valid until.
-- Returns the check's 5 integers per policy as a decision does, then 4 per
-- policy: units leased, until (µs), valid for (µs), units given back.

-- Step 1: fills the units given back into `out` (after the decisions);
-- returns each lease's end and the units wanted.
lease_begin = function(keys, args, policies, n, now, out)
  local wants, ends = {}, {}
  for i = 1, n do
    local p, key, a = policies[i], keys[i], 3 + n + (i - 1) * 4
    local want, ttl = tonum(args[a + 1]), tonum(args[a + 2])
    local held, held_until = tonum(args[a + 3]), tonum(args[a + 4])
    local give_back, lease_until = GIVE_BACK[p.name], LEASE_UNTIL[p.name]
    local returned = 0
    if give_back and held > 0 and now < held_until then
      returned = give_back(key, p, now, held, held_until)
    end
    local until_ = now
    if want > 0 and lease_until then until_ = imin(lease_until(key, p, now), now + ttl) end
    wants[i], ends[i] = lease_want(want, until_ - now, ttl), until_
    out[5 * n + 4 * i] = returned
  end
  return ends, wants
end

-- Step 3, after the check (`all`: whether every policy allowed it).
lease_end = function(keys, policies, n, now, out, all, ends, wants)
  for i = 1, n do
    local k, until_, units = 5 * n + 4 * (i - 1), ends[i], 0
    if all and until_ > now then units = lease_size(wants[i], out[(i - 1) * 5 + 2]) end
    if units > 0 then
      local p = policies[i]
      local _, remaining, fresh_at = p.alg(keys[i], p, now, units, true)
      out[(i - 1) * 5 + 2] = remaining
      out[(i - 1) * 5 + 3] = imax(0, fresh_at - now)
      out[k + 1], out[k + 2], out[k + 3] = units, until_, until_ - now
    else
      out[k + 1], out[k + 2], out[k + 3] = 0, 0, 0
    end
  end
end
