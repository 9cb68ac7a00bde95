-- fixed_window: KEYS[i] is "-<start ms><count, 6 digits>" (compact, see
-- prelude.lua) when the window starts on a whole millisecond and the count
-- is below 10^6, else the text "start:count" (start in µs, a multiple of the
-- period).
-- Twin of crates/tollgate/src/algorithm/fixed_window.rs.

-- The stored start and count, or nil when there is no live state.
local function fixed_window_load(key, now)
  local v = load(key, now)
  if not v then return nil end
  if compact(v) then
    local ms, n = string.match(v, '^%-(%d+)(%d%d%d%d%d%d)$')
    return tonumber(ms) * 1000, tonumber(n)
  end
  local start, count = parse(v)
  return start, count
end

-- Writes a start and count, fresh at `fresh_at` (0: deleted).
local function fixed_window_store(key, start, count, fresh_at)
  local value
  if start % 1000 == 0 and count < 1000000 then
    value = string.format('-%d%06d', start / 1000, count)
  else
    value = fmt(start) .. ':' .. fmt(count)
  end
  store(key, value, fresh_at)
end

-- The window start and count as seen at `now`, and the start a charge
-- stores: the count belongs to the window of this policy that holds its
-- start, which stays stored while the count carries (never moved back:
-- tollgate::algorithm::stored_start). No state (nil) reads as an empty
-- window.
local function fixed_window_at(key, p, now)
  local period = p.period
  local start, count = fixed_window_load(key, now)
  if not start then start, count = now - now % period, 0 end
  local held = start - start % period
  if now >= held + period then
    local window = now - now % period
    return window, 0, window
  end
  return held, count, start
end

ALG.fixed_window = function(key, p, now, cost, consume)
  local period = p.period
  local window, used, kept = fixed_window_at(key, p, now)
  local allowed = used + cost <= p.limit
  local charged = allowed and consume
  local used_after = used
  if charged then
    used_after = used + cost
    fixed_window_store(key, kept, used_after, window + period)
  end
  local fresh_at = 0
  if used_after > 0 then fresh_at = window + period end
  return allowed, imax(0, p.limit - used_after), fresh_at, window + period, 0
end
