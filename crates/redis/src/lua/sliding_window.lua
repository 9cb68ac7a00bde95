-- sliding_window: KEYS[i] is "-<start ms><prev, 3 digits><curr, 3 digits>"
-- (compact, see prelude.lua) when the window starts on a whole millisecond
-- and both counts are below 1000, else the text "start:prev:curr" (start
-- in µs).
-- Twin of crates/tollgate/src/algorithm/sliding_window.rs.

local function sliding_window_fresh_at(start, prev, curr, period)
  start = start - start % period
  if curr > 0 then return start + 2 * period end
  if prev > 0 then return start + period end
  return 0
end

local function sliding_window_retry_at(window, prev, curr, period, limit, cost)
  local room = limit - (curr + cost)
  if room >= 0 and prev > 0 then
    local e = period - imin(idiv(room * period, prev), period)
    if e < period then return window + e end
  end
  room = imax(0, limit - cost)
  local e = 0
  if curr > 0 then e = period - imin(idiv(room * period, curr), period) end
  return window + period + e
end

-- The stored start, prev and curr, or nil when there is no live state.
local function sliding_window_load(key, now)
  local v = load(key, now)
  if not v then return nil end
  if compact(v) then
    local ms, a, b = string.match(v, '^%-(%d+)(%d%d%d)(%d%d%d)$')
    return tonumber(ms) * 1000, tonumber(a), tonumber(b)
  end
  return parse(v)
end

-- Writes a start and counts, fresh when `period` says (0: deleted).
local function sliding_window_store(key, start, prev, curr, period)
  local value
  if start % 1000 == 0 and prev < 1000 and curr < 1000 then
    value = string.format('-%d%03d%03d', start / 1000, prev, curr)
  else
    value = fmt(start) .. ':' .. fmt(prev) .. ':' .. fmt(curr)
  end
  store(key, value, sliding_window_fresh_at(start, prev, curr, period))
end

-- The window start, prev and curr as seen at `now`, and the start a charge
-- stores (the stored one while it lies in that window, never moved back:
-- tollgate::algorithm::stored_start): the counts belong to
-- the window of this policy that holds the stored start, and read as at
-- most `cap`. A decision's cap is the limit (twin of
-- sliding_window::normalize: a count written under a larger limit means a
-- full window); an overdraft's is the limit plus its overdraft, so that a
-- debt already owed counts (reserve/sliding_window.lua). No state (nil)
-- reads as an empty window.
local function sliding_window_at(key, p, now, cap)
  local period = p.period
  local start, prev, curr = sliding_window_load(key, now)
  if not start then start, prev, curr = now - now % period, 0, 0 end
  local held = start - start % period
  if now < held + period then
    return held, imin(prev, cap), imin(curr, cap), start
  elseif now < held + 2 * period then
    return held + period, imin(curr, cap), 0, held + period
  end
  local window = now - now % period
  return window, 0, 0, window
end

ALG.sliding_window = function(key, p, now, cost, consume)
  local period, limit = p.period, p.limit
  local window, pv, cv, kept = sliding_window_at(key, p, now, limit)
  local elapsed = imax(0, now - window)
  local weighted_prev = pv * (period - elapsed)
  local budget = limit * period
  local allowed = cost <= limit and weighted_prev + (cv + cost) * period <= budget
  local charged = allowed and consume
  local c_after = cv
  if charged then
    c_after = cv + cost
    sliding_window_store(key, kept, pv, c_after, period)
  end
  local remaining = idiv(imax(0, budget - (weighted_prev + c_after * period)), period)
  return allowed, remaining, sliding_window_fresh_at(window, pv, c_after, period),
    sliding_window_retry_at(window, pv, cv, period, limit, cost), 0
end
