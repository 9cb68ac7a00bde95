-- sliding_window's lease functions, after sliding_window.lua (whose state
-- helpers they use) and lease/prelude.lua: twins of its arms of
-- tollgate::algorithm::lease_until and give_back.

-- Leases end with the window they are charged in (as fixed_window's).
LEASE_UNTIL.sliding_window = function(key, p, now)
  return window_lease_until(sliding_window_load(key, now) or now, p.period, now)
end

-- Units go back only to the current count of the window the lease ended
-- with, still current.
GIVE_BACK.sliding_window = function(key, p, now, units, ends)
  local start, prev, curr = sliding_window_load(key, now)
  if not start then return 0 end
  local period = p.period
  local held = start - start % period
  if now >= held + period or ends <= held or ends > held + period then return 0 end
  local given = imin(units, curr)
  if given > 0 then sliding_window_store(key, start, prev, curr - given, period) end
  return given
end
