-- fixed_window: KEYS[i] is "-<start ms><count, 6 digits>" (compact, see
-- prelude.lua) when the window starts on a whole millisecond and the count
-- is below 10^6, else the text "start:count" (start in µs, a multiple of the
-- period).
-- Twin of crates/tollgate/src/algorithm/fixed_window.rs.

ALG.fixed_window = function(key, p, now, cost, consume)
  local period = p.period
  local v = load(key, now)
  local start, count = now - now % period, 0
  if v then
    if compact(v) then
      local ms, n = string.match(v, '^%-(%d+)(%d%d%d%d%d%d)$')
      start, count = tonumber(ms) * 1000, tonumber(n)
    else
      start, count = parse(v)
    end
  end
  -- The count belongs to the window of this policy that holds its start.
  local held = start - start % period
  local window, used
  if now >= held + period then
    window, used = now - now % period, 0
  else
    window, used = held, count
  end
  local allowed = used + cost <= p.limit
  local charged = allowed and consume
  local used_after = used
  if charged then
    used_after = used + cost
    local value
    if window % 1000 == 0 and used_after < 1000000 then
      value = string.format('-%d%06d', window / 1000, used_after)
    else
      value = fmt(window) .. ':' .. fmt(used_after)
    end
    store(key, value, window + period)
  end
  local fresh_at = 0
  if used_after > 0 then fresh_at = window + period end
  return allowed, imax(0, p.limit - used_after), fresh_at, window + period, 0
end

