-- token_bucket's lease functions, after token_bucket.lua (whose state helpers
-- they use) and lease/prelude.lua: twins of its arms of
-- tollgate::algorithm::lease_until (a bucket has no give_back).

-- A lease lasts until the bucket as it is now, before the lease, would be
-- full again; a full bucket leases nothing (`now`).
LEASE_UNTIL.token_bucket = function(key, p, now)
  local level, last = token_bucket_load(key, p, now)
  if not level then return now end
  local current = token_bucket_refill(p, level, last, now)
  if current >= p.capacity * p.unit then return now end
  return token_bucket_fresh_at(p, current, imax(last, now))
end

-- No GIVE_BACK: a bucket takes nothing back (tollgate::algorithm::give_back
-- says why: a later lease's end counts on those units staying gone).
