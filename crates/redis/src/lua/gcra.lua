-- gcra: KEYS[i] is the theoretical arrival time in whole microseconds, as an
-- integer ("tat"), or "tat:frac" when it has a fraction of a microsecond
-- (frac / p.rate). Policies whose emission interval is a whole number of
-- microseconds (p.rate == 1: 100/1m, 10/s, 1000/1h...) always store one integer.
-- Twin of crates/tollgate/src/algorithm/gcra.rs.

ALG.gcra = function(key, p, now, cost, consume)
  local unit, rate = p.unit, p.rate
  local tolerance = p.burst * unit
  local tat, frac = now, 0
  local v = redis.call('GET', key)
  if v then tat, frac = parse(v) end
  local before = 0
  if tat >= now then before = (tat - now) * rate + frac end
  local allowed = cost <= p.burst and before + cost * unit <= tolerance
  local charged = allowed and consume
  local after = before
  if charged then
    after = before + cost * unit
    local new_frac = after % rate
    local value = fmt(now + idiv(after, rate))
    if new_frac > 0 then value = value .. ':' .. fmt(new_frac) end
    store(key, value, now, now + cdiv(after, rate))
  end
  local fresh_at = 0
  if after > 0 then fresh_at = now + cdiv(after, rate) end
  return allowed, idiv(imax(0, tolerance - after), unit), fresh_at,
    now + cdiv(imax(0, before + cost * unit - tolerance), rate), 0
end

