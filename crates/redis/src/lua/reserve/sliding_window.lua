-- sliding_window's overdraft, after sliding_window.lua (whose state helpers
-- it uses): twin of its arm of tollgate::algorithm::overdraw. The current
-- count goes up until the weighted count reaches the limit plus
-- `max_overdraft` (compared multiplied through by the period, as a
-- decision compares). Both counts are read up to that, not up to the
-- limit as a decision reads them: a debt already owed counts, or a second
-- overdraft in the window would be charged as if the first had never
-- been (Policy::overdraft_cap keeps 2 x cap x period below 2^53).
MARK.sliding_window = 's'

OVERDRAW.sliding_window = function(key, p, now, units, max_overdraft)
  local period, cap = p.period, p.limit + max_overdraft
  local window, pv, cv, kept = sliding_window_at(key, p, now, cap)
  local weighted = pv * (period - imin(imax(0, now - window), period)) + cv * period
  local charged = imin(units, idiv(imax(0, cap * period - weighted), period))
  if charged > 0 then sliding_window_store(key, kept, pv, cv + charged, period) end
  return charged
end
