-- gcra's overdraft, after gcra.lua (whose state helpers it uses): twin of
-- its arm of tollgate::algorithm::overdraw. The TAT moves further ahead,
-- at most `max_overdraft` units past the tolerance.
OVERDRAW.gcra = function(key, p, now, units, max_overdraft)
  local unit, rate = p.unit, p.rate
  local tat, frac = gcra_load(key, p, now)
  if not tat then tat, frac = now, 0 end
  -- How far ahead the TAT is, counted up to past a full overdraft (beyond
  -- it nothing more is charged).
  local cap = cdiv((p.capacity + max_overdraft + 1) * unit, rate) + 1
  local before = 0
  if tat >= now then before = imin(tat - now, cap) * rate + frac end
  local allowance = imax(0, (p.capacity + max_overdraft) * unit - before)
  local charged = imin(units, idiv(allowance, unit))
  if charged > 0 then gcra_store(key, now, before + charged * unit, rate) end
  return charged
end
