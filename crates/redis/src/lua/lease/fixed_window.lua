-- fixed_window's lease functions, after fixed_window.lua (whose state helpers
-- they use) and lease/prelude.lua: twins of its arms of
-- tollgate::algorithm::lease_until and give_back.

-- Leases end with the window they are charged in.
LEASE_UNTIL.fixed_window = function(key, p, now)
  return window_lease_until(fixed_window_load(key, now) or now, p.period, now)
end

-- Units go back only to the window the lease was charged in, while the
-- state's stored start is still exactly that window's.
GIVE_BACK.fixed_window = function(key, p, now, units, ends)
  local start, count = fixed_window_load(key, now)
  if not start then return 0 end
  local period = p.period
  if start ~= window_of_end(ends, period) then return 0 end
  local given = imin(units, count)
  if given > 0 then
    count = count - given
    local fresh_at = 0
    if count > 0 then fresh_at = start + period end
    fixed_window_store(key, start, count, fresh_at)
  end
  return given
end
