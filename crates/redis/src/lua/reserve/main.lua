-- tollgate reservation code, last part (after main.lua): a reservation's
-- two steps, twins of tollgate's MemoryStore::reserve_sync and settle_sync.
--
-- KEYS[i], i = 1..n, the state of policy i, as for a decision; KEYS[n+1]
-- the reservation's record, in the same slot (src/keys.rs).
--
-- reserve: ARGV[1] "reserve", ARGV[2] the estimate, ARGV[3] the clock,
-- ARGV[3+i] policy i, ARGV[4+n] the policy names (the store's encoding,
-- kept and compared as it is), ARGV[5+n] how long the record lives, µs.
-- `decide` runs it as a consumed check of the estimate between
-- `reserve_begin` (each policy's mark: until when its units may be given
-- back, the twin of lease_until on the state before the charge, and
-- under which algorithm and period) and `reserve_end` (the record,
-- written only when every policy allowed). Returns the check's five
-- integers per policy.
--
-- settle: ARGV[1] "settle", ARGV[2] the actual cost, ARGV[3] the clock,
-- ARGV[3+i] policy i, ARGV[4+n] the policy names, ARGV[4+n+i] policy i's
-- max_overdraft. Returns nothing (an empty array) when there is no such
-- reservation: no record, past its deadline, or made for other policy
-- names (a record is per identity by its key); else the estimate, the
-- actual cost settled at, 1 when replayed (else 0), three integers per
-- policy (units returned, charged, unpaid), then per policy the five
-- integers of a one-unit peek.
--
-- charge: ARGV[1] "charge", ARGV[2] the units, ARGV[3] the clock,
-- ARGV[3+i] policy i, ARGV[3+n+i] policy i's max_overdraft; no record.
-- Returns what a settle does (estimate 0, the units, 0, three integers
-- per policy, the peeks).
--
-- The record is one string: "<deadline µs> <estimate> <mark_1> ...
-- <mark_n>", once settled followed by ";<actual> <returned_1> <charged_1>
-- <unpaid_1> ...", then "|" and the names. A mark is
-- "<until / period><MARK letter><period µs>" for a policy whose units can
-- go back (until when, under which algorithm and period: a window's units
-- go back until its end, a whole number of periods), else "0". It expires at its deadline
-- (PXAT), which a settle keeps.

-- Set below, used by settle and charge.
local peek_into

-- Step 1 of a reservation: each policy's mark, read before anything is
-- charged: until when its units may be given back, and under which
-- algorithm and period. A policy that takes nothing back (no GIVE_BACK:
-- the buckets) reads nothing and is marked 0.
reserve_begin = function(keys, policies, n, now)
  local marks = {}
  for i = 1, n do
    local p, mark = policies[i], '0'
    if GIVE_BACK[p.name] then
      local ends = LEASE_UNTIL[p.name](keys[i], p, now)
      mark = fmt(idiv(ends, p.period)) .. MARK[p.name] .. fmt(p.period)
    end
    marks[i] = mark
  end
  return marks
end

-- Step 3 of a reservation, when every policy allowed: the record.
reserve_end = function(keys, args, n, now, estimate, marks)
  local deadline = now + tonum(args[5 + n])
  local parts = { fmt(deadline), fmt(estimate) }
  for i = 1, n do parts[2 + i] = marks[i] end
  call('SET', keys[n + 1], table.concat(parts, ' ') .. '|' .. args[4 + n],
    'PXAT', fmt(expiry_ms(deadline)))
end

-- A settle, in one step: find the record; unless settled already, give
-- back (GIVE_BACK, windows only, into the very window the estimate was
-- charged in, under the algorithm and period it was reserved under) or
-- overdraw (OVERDRAW) the difference per policy and mark the record
-- settled; then peek every policy.
settle = function(keys, args, policies, n, now, actual)
  local record_key = keys[n + 1]
  local v = load(record_key, now)
  if not v then return {} end
  local head, names = string.match(v, '^([^|]*)|(.*)$')
  if names ~= args[4 + n] then return {} end
  local open, done = string.match(head, '^([^;]*);?(.*)$')
  local fields = {}
  for word in string.gmatch(open, '%S+') do fields[#fields + 1] = word end
  if #fields ~= n + 2 then return {} end
  local deadline, estimate = tonum(fields[1]), tonum(fields[2])
  if now >= deadline then return {} end
  local out = { estimate, actual, 0 }
  if done ~= '' then
    -- Settled already: change nothing, answer what the first settle did.
    out[3] = 1
    local k = 1
    for d in string.gmatch(done, '%d+') do
      if k == 1 then out[2] = tonum(d) else out[2 + k] = tonum(d) end
      k = k + 1
    end
  else
    local settled = { fmt(actual) }
    for i = 1, n do
      local p, key, returned, charged, unpaid = policies[i], keys[i], 0, 0, 0
      if actual < estimate then
        local give_back = GIVE_BACK[p.name]
        local ends, letter, period = string.match(fields[2 + i], '^(%d+)(%a?)(%d*)$')
        if give_back and letter == MARK[p.name] and tonum(period) == p.period then
          local until_ = tonum(ends) * p.period
          if now < until_ then returned = give_back(key, p, now, estimate - actual, until_) end
        end
      elseif actual > estimate then
        local extra, overdraw = actual - estimate, OVERDRAW[p.name]
        if overdraw then
          charged = overdraw(key, p, now, extra, imin(tonum(args[4 + n + i]), p.capacity))
        end
        unpaid = extra - charged
      end
      local k = 3 * i
      out[k + 1], out[k + 2], out[k + 3] = returned, charged, unpaid
      settled[#settled + 1] = fmt(returned) .. ' ' .. fmt(charged) .. ' ' .. fmt(unpaid)
    end
    if actual == 0 then
      -- A cancel gives everything back: nothing is left to charge twice,
      -- and a record kept for its replays would let a reserve-and-cancel
      -- loop hold records its budget never paid for.
      call('DEL', record_key)
    else
      call('SET', record_key, open .. ';' .. table.concat(settled, ' ') .. '|' .. names,
        'PXAT', fmt(expiry_ms(deadline)))
    end
  end
  return peek_into(keys, policies, n, now, out)
end

-- What the next request finds: a one-unit peek of each policy, which
-- pushes a key's expiry as any decision that charges nothing does; its
-- five integers per policy appended to `out` after the three per policy.
peek_into = function(keys, policies, n, now, out)
  local peeks = {}
  run(keys, policies, n, 1, now, false, peeks)
  for i = 1, n do
    local reset_after = peeks[(i - 1) * 5 + 3]
    if reset_after > 0 then extend(keys[i], now + reset_after) end
  end
  for i = 1, 5 * n do out[3 + 3 * n + i] = peeks[i] end
  return out
end

-- A cost charged after the fact, with nothing reserved: each policy
-- overdrawn (OVERDRAW) by the units, at most what remains plus its
-- max_overdraft; the twin of MemoryStore::charge_sync.
charge = function(keys, args, policies, n, now, units)
  local out = { 0, units, 0 }
  for i = 1, n do
    local p, charged = policies[i], 0
    local overdraw = OVERDRAW[p.name]
    if overdraw then
      charged = overdraw(keys[i], p, now, units, imin(tonum(args[3 + n + i]), p.capacity))
    end
    local k = 3 * i
    out[k + 1], out[k + 2], out[k + 3] = 0, charged, units - charged
  end
  return peek_into(keys, policies, n, now, out)
end
