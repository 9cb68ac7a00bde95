-- token_bucket's lease functions, after token_bucket.lua (whose state helpers
-- they use) and lease/prelude.lua: twins of its arms of
-- tollgate::algorithm::lease_until and give_back.

-- A lease lasts until the bucket as it is now, before the lease, would be
-- full again; a full bucket leases nothing (`now`).
LEASE_UNTIL.token_bucket = function(key, p, now)
  local level, last = token_bucket_load(key, p, now)
  if not level then return now end
  local current = token_bucket_refill(p, level, last, now)
  if current >= p.capacity * p.unit then return now end
  return token_bucket_fresh_at(p, current, imax(last, now))
end

-- Units go back as tokens, never past a full bucket.
GIVE_BACK.token_bucket = function(key, p, now, units, ends)
  local level, last = token_bucket_load(key, p, now)
  if not level then return 0 end
  local unit = p.unit
  local current = token_bucket_refill(p, level, last, now)
  local given = imin(units, idiv(imax(0, p.capacity * unit - current), unit))
  if given > 0 then token_bucket_store(key, p, current + given * unit, imax(last, now)) end
  return given
end
