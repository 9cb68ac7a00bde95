-- token_bucket's overdraft, after token_bucket.lua (whose state helpers it
-- uses): twin of its arm of tollgate::algorithm::overdraw. Below empty, the
-- bucket is held empty with a refill that starts later (`last` in the
-- future), so refill pays the debt first.
OVERDRAW.token_bucket = function(key, p, now, units, max_overdraft)
  local unit, rate = p.unit, p.rate
  local level, last = token_bucket_load(key, p, now)
  if not level then level, last = p.capacity * unit, now end
  local current = token_bucket_refill(p, level, last, now)
  -- An empty bucket whose refill starts after now owes what that refill
  -- pays first (counted at most past a full overdraft).
  local owed = 0
  if current == 0 and last > now then
    owed = imin(last - now, cdiv((max_overdraft + 1) * unit, rate) + 1) * rate
  end
  local charged = imin(units, idiv(imax(0, current + max_overdraft * unit - owed), unit))
  if charged == 0 then return 0 end
  local stamp = imax(last, now)
  local need = charged * unit
  if need <= current then
    token_bucket_store(key, p, current - need, stamp)
  else
    token_bucket_store(key, p, 0, stamp + cdiv(need - current, rate))
  end
  return charged
end
