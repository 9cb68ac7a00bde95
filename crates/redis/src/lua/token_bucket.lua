-- token_bucket: KEYS[i] is a string "level:last" (level in scaled units:
-- one token = p.unit, one microsecond adds p.rate).
-- Twin of crates/tollgate/src/algorithm/token_bucket.rs.

local function token_bucket_fresh_at(p, level, last)
  return last + cdiv(imax(0, p.burst * p.unit - level), p.rate)
end

ALG.token_bucket = function(key, p, now, cost, consume)
  local unit, rate = p.unit, p.rate
  local full = p.burst * unit
  local level, last = full, now
  local v = redis.call('GET', key)
  if v then level, last = parse(v) end
  -- Refill since `last`, compared before multiplying so a long idle cannot
  -- leave the exact range.
  local current
  local elapsed = imax(0, now - last)
  if elapsed >= cdiv(imax(0, full - level), rate) then
    current = full
  else
    current = level + elapsed * rate
  end
  local allowed = cost <= p.burst and cost * unit <= current
  local charged = allowed and consume
  local after = current
  local stamp = imax(last, now)
  if charged then
    after = current - cost * unit
    store(key, fmt(after) .. ':' .. fmt(stamp), now, token_bucket_fresh_at(p, after, stamp))
  end
  return allowed, idiv(after, unit), token_bucket_fresh_at(p, after, stamp),
    now + cdiv(imax(0, cost * unit - current), rate), 0
end

