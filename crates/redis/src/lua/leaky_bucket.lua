-- leaky_bucket: KEYS[i] is a string "level:last" (units queued, scaled as
-- for token_bucket).
-- Twin of crates/tollgate/src/algorithm/leaky_bucket.rs.

local function leaky_bucket_fresh_at(p, level, last)
  if level == 0 then return 0 end
  return last + cdiv(level, p.rate)
end

ALG.leaky_bucket = function(key, p, now, cost, consume)
  local unit, rate = p.unit, p.rate
  local capacity = p.burst * unit
  local level, last = 0, now
  local v = redis.call('GET', key)
  if v then level, last = parse(v) end
  local current
  local elapsed = imax(0, now - last)
  if elapsed >= cdiv(level, rate) then
    current = 0
  else
    current = level - elapsed * rate
  end
  local allowed = cost <= p.burst and current + cost * unit <= capacity
  local charged = allowed and consume
  local after = current
  local stamp = imax(last, now)
  if charged then
    after = current + cost * unit
    store(key, fmt(after) .. ':' .. fmt(stamp), now, leaky_bucket_fresh_at(p, after, stamp))
  end
  local delay = 0
  if allowed then delay = cdiv(current, rate) end
  return allowed, idiv(imax(0, capacity - after), unit), leaky_bucket_fresh_at(p, after, stamp),
    now + cdiv(imax(0, current + cost * unit - capacity), rate), delay
end

