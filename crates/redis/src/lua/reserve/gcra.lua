-- gcra's overdraft, after gcra.lua (whose state helpers it uses): twin of
-- its arm of tollgate::algorithm::overdraw. The TAT moves further ahead,
-- at most `max_overdraft` units past the tolerance.
OVERDRAW.gcra = function(key, p, now, units, max_overdraft)
  local unit, rate = p.unit, p.rate
  local tat, frac = gcra_load(key, p, now)
  if not tat then tat, frac = now, 0 end
  -- A TAT past a full overdraft leaves nothing to charge: decided before
  -- multiplying, so every product stays below 2^53.
  local owed_max = (p.capacity + max_overdraft) * unit
  local ahead = imax(0, tat - now)
  if ahead > cdiv(owed_max, rate) then return 0 end
  local before = 0
  if tat >= now then before = ahead * rate + frac end
  local charged = imin(units, idiv(imax(0, owed_max - before), unit))
  if charged > 0 then gcra_store(key, now, before + charged * unit, rate) end
  return charged
end
