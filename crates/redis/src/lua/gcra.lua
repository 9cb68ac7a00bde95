-- gcra: KEYS[i] is the theoretical arrival time in whole microseconds, as an
-- integer ("tat"), or "tat:frac:rate" when it has a fraction of a
-- microsecond (frac / rate). Policies whose emission interval is a whole
-- number of microseconds (p.rate == 1: 100/1m, 10/s, 1000/1h...) always
-- store one integer. The TAT is an instant, the same under any policy; read
-- under another rate, a fraction rounds the TAT up to the next microsecond.
-- Twin of crates/tollgate/src/algorithm/gcra.rs.

-- The stored TAT as p reads it (whole µs, fraction in p's steps), or nil
-- when there is no live state.
local function gcra_load(key, p, now)
  local v = load(key, now)
  if not v then return nil end
  local tat, frac, from = parse(v)
  if frac > 0 and from ~= p.rate then tat, frac = tat + 1, 0 end
  return tat, frac
end

-- The most whole microseconds the TAT is counted ahead of now: beyond, every
-- request is denied anyway, and the cap keeps products below 2^53 under any
-- policy.
local function gcra_cap(p)
  return cdiv((p.capacity + 1) * p.unit, p.rate) + 1
end

-- Writes the TAT `after` scaled units (of `rate`) ahead of now; returns the
-- instant it is fresh.
local function gcra_store(key, now, after, rate)
  local new_frac = after % rate
  local value = fmt(now + idiv(after, rate))
  if new_frac > 0 then value = value .. ':' .. fmt(new_frac) .. ':' .. fmt(rate) end
  local fresh_at = now + cdiv(after, rate)
  store(key, value, fresh_at)
  return fresh_at
end

ALG.gcra = function(key, p, now, cost, consume)
  local unit, rate = p.unit, p.rate
  local tolerance = p.capacity * unit
  local need = cost * unit
  local tat, frac = gcra_load(key, p, now)
  if not tat then tat, frac = now, 0 end
  -- How far the TAT is ahead, in scaled units, capped.
  local cap = gcra_cap(p)
  local before = 0
  if tat >= now then before = imin(tat - now, cap) * rate + frac end
  local allowed = cost <= p.capacity and before + need <= tolerance
  local charged = allowed and consume
  local after = before
  local fresh_at = 0
  if charged then
    after = before + need
    fresh_at = gcra_store(key, now, after, rate)
  elseif before > 0 then
    fresh_at = tat
    if frac > 0 then fresh_at = tat + 1 end
  end
  local retry_at
  if tat >= now and tat - now > cap - 1 then
    if frac + need >= tolerance then
      retry_at = tat + cdiv(frac + need - tolerance, rate)
    else
      retry_at = tat - idiv(tolerance - need - frac, rate)
    end
  else
    retry_at = now + cdiv(imax(0, before + need - tolerance), rate)
  end
  return allowed, idiv(imax(0, tolerance - after), unit), fresh_at, retry_at, 0
end
