-- sliding_window's lease functions, after sliding_window.lua (whose state
-- helpers they use) and lease/prelude.lua: twins of its arms of
-- tollgate::algorithm::lease_until and give_back.

-- Leases end with the window they are charged in (as fixed_window's).
LEASE_UNTIL.sliding_window = function(key, p, now)
  return window_lease_until(sliding_window_load(key, now) or now, p.period, now)
end

-- Units go back only to the current count of the window the lease was
-- charged in, while the state's stored start is still exactly that
-- window's.
GIVE_BACK.sliding_window = function(key, p, now, units, ends)
  local start, prev, curr = sliding_window_load(key, now)
  if not start then return 0 end
  local period = p.period
  if start ~= window_of_end(ends, period) then return 0 end
  local given = imin(units, curr)
  if given > 0 then sliding_window_store(key, start, prev, curr - given, period) end
  return given
end
