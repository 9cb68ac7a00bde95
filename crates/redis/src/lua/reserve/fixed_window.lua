-- fixed_window's overdraft, after fixed_window.lua (whose state helpers it
-- uses): twin of its arm of tollgate::algorithm::overdraw. The count goes
-- past the limit, by at most `max_overdraft`; the debt ends with the window.
MARK.fixed_window = 'f'

OVERDRAW.fixed_window = function(key, p, now, units, max_overdraft)
  local window, used, kept = fixed_window_at(key, p, now)
  local charged = imin(units, imax(0, p.limit + max_overdraft - used))
  if charged > 0 then fixed_window_store(key, kept, used + charged, window + p.period) end
  return charged
end
