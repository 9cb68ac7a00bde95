-- gcra's lease functions, after gcra.lua (whose state helpers they use) and
-- lease/prelude.lua: twins of its arms of tollgate::algorithm::lease_until
-- (a bucket has no give_back).

-- A lease lasts until the TAT as it is now, before the lease: the instant
-- the bucket would be full again; a full bucket leases nothing (`now`).
LEASE_UNTIL.gcra = function(key, p, now)
  local tat, frac = gcra_load(key, p, now)
  if not tat then return now end
  if frac > 0 then tat = tat + 1 end
  return imax(tat, now)
end

-- No GIVE_BACK: a bucket takes nothing back (tollgate::algorithm::give_back
-- says why: a later lease's end counts on those units staying gone).
