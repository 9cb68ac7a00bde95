-- sliding_window's overdraft, after sliding_window.lua (whose state helpers
-- it uses): twin of its arm of tollgate::algorithm::overdraw. The current
-- count goes up until the weighted count reaches the limit plus
-- `max_overdraft` (compared multiplied through by the period, as a
-- decision compares).
OVERDRAW.sliding_window = function(key, p, now, units, max_overdraft)
  local period = p.period
  local window, pv, cv, own = sliding_window_at(key, p, now)
  -- In the window it was counted in, the count as stored (past the limit:
  -- an earlier overdraft's debt), at most past a full overdraft.
  if own then cv = imin(own, p.limit + max_overdraft) end
  local weighted = pv * (period - imax(0, now - window)) + cv * period
  local room = idiv(imax(0, (p.limit + max_overdraft) * period - weighted), period)
  local charged = imin(units, room)
  if charged > 0 then sliding_window_store(key, window, pv, cv + charged, period) end
  return charged
end
