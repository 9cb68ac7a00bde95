-- fixed_window: KEYS[i] is a string "start:count" (start a multiple of the period).
-- Twin of crates/tollgate/src/algorithm/fixed_window.rs.

ALG.fixed_window = function(key, p, now, cost, consume)
  local period = p.period
  local v = load(key, now)
  local start, count = now - now % period, 0
  if v then start, count = parse(v) end
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
    store(key, fmt(window) .. ':' .. fmt(used_after), window + period)
  end
  local fresh_at = 0
  if used_after > 0 then fresh_at = window + period end
  return allowed, imax(0, p.limit - used_after), fresh_at, window + period, 0
end

