-- gcra's lease functions, after gcra.lua (whose state helpers they use) and
-- lease/prelude.lua: twins of its arms of tollgate::algorithm::lease_until
-- and give_back.

-- A lease lasts until the TAT as it is now, before the lease: the instant
-- the bucket would be full again; a full bucket leases nothing (`now`).
LEASE_UNTIL.gcra = function(key, p, now)
  local tat, frac = gcra_load(key, p, now)
  if not tat then return now end
  if frac > 0 then tat = tat + 1 end
  return imax(tat, now)
end

-- Units go back by moving the TAT back, never before now; a TAT further
-- ahead than any decision reads (written under a slower policy) is not
-- this lease's to shorten.
GIVE_BACK.gcra = function(key, p, now, units, ends)
  local tat, frac = gcra_load(key, p, now)
  if not tat or (tat >= now and tat - now > gcra_cap(p)) then return 0 end
  local before = 0
  if tat >= now then before = (tat - now) * p.rate + frac end
  local given = imin(units, idiv(before, p.unit))
  if given > 0 then gcra_store(key, now, before - given * p.unit, p.rate) end
  return given
end
