-- leaky_bucket: KEYS[i] is a string "level:last:unit" (units queued, scaled
-- as for token_bucket). Read under a policy of another unit, a fraction of a
-- queued unit counts whole, at most a full queue. A queue of exactly one
-- unit (a request of cost 1 into an empty queue) is stored compact
-- (prelude.lua) as "-<last>" and read as one unit of any policy: the text
-- form would read the same. More whole units would not: under the same
-- unit the text form is read unclamped, under another one clamped to the
-- queue, and the compact form cannot tell which.
-- Twin of crates/tollgate/src/algorithm/leaky_bucket.rs.

local function leaky_bucket_fresh_at(p, level, last)
  if level == 0 then return 0 end
  return last + cdiv(level, p.rate)
end

ALG.leaky_bucket = function(key, p, now, cost, consume)
  local unit, rate = p.unit, p.rate
  local capacity = p.capacity * unit
  local level, last = 0, now
  local v = load(key, now)
  if v then
    if compact(v) then
      level, last = unit, tonumber(string.sub(v, 2))
    else
      local from
      level, last, from = parse(v)
      if from > 0 and from ~= unit then level = imin(cdiv(level, from), p.capacity) * unit end
    end
  end
  local current
  local elapsed = imax(0, now - last)
  if elapsed >= cdiv(level, rate) then
    current = 0
  else
    current = level - elapsed * rate
  end
  local allowed = cost <= p.capacity and current + cost * unit <= capacity
  local charged = allowed and consume
  local after = current
  -- The queue drains only from `last`, also when the clock stepped back.
  local stamp = imax(last, now)
  if charged then
    after = current + cost * unit
    local value
    if after == unit then
      value = '-' .. fmt(stamp)
    else
      value = fmt(after) .. ':' .. fmt(stamp) .. ':' .. fmt(unit)
    end
    store(key, value, leaky_bucket_fresh_at(p, after, stamp))
  end
  local delay = 0
  if allowed then delay = cdiv(current, rate) + (stamp - now) end
  return allowed, idiv(imax(0, capacity - after), unit), leaky_bucket_fresh_at(p, after, stamp),
    stamp + cdiv(imax(0, current + cost * unit - capacity), rate), delay
end
