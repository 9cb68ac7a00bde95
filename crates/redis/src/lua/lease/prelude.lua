-- tollgate lease code, first part (after the algorithm files, before their
-- lease files): what the lease files share. Only the library and the lease
-- scripts hold the lease code (src/script.rs): a decision script does not
-- define it on every call.

-- The lease functions of the algorithms that lease (lease/main.lua), by
-- the same names: LEASE_UNTIL[name](key, p, now) is the twin of
-- tollgate::algorithm::lease_until, GIVE_BACK[name](key, p, now, units,
-- ends) of give_back (it writes the state it changes). sliding_log and
-- leaky_bucket have none: they never lease.
local LEASE_UNTIL, GIVE_BACK = {}, {}

-- lease_until of both windows, from the stored window start (`now` when
-- there is none): the end of the window a charge at `now` lands in, the
-- one that holds the start under this `period` or, once that ended, now's.
-- The window a lease (or a reservation) ending at `ends` was charged in:
-- the one holding its last microsecond. Its units are still in a window's
-- counter only while the stored start is exactly that window's: a start
-- moves only forward, to the window of a later charge, so an equal start
-- (not merely a window overlapping it, as under another period) proves
-- the counter has not been emptied since. Twin of give_back's test.
local function window_of_end(ends, period)
  return (ends - 1) - (ends - 1) % period
end

local function window_lease_until(start, period, now)
  local held = start - start % period
  if now >= held + period then return now - now % period + period end
  return held + period
end
