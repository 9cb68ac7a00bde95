-- token_bucket: KEYS[i] is a string "level:last:unit": the level in scaled
-- units of `unit` (one token; one microsecond adds p.rate when unit is
-- p.unit). Read under a policy of another unit, whole tokens carry over,
-- at most a full bucket. A level of whole tokens, fewer than 1000, is
-- stored compact (prelude.lua) as "-<last><tokens, 3 digits>" and read as
-- that many tokens in any policy's unit: the text form would read the same
-- (whole tokens carry over; above a full bucket both read full).
-- Twin of crates/tollgate/src/algorithm/token_bucket.rs.

local function token_bucket_fresh_at(p, level, last)
  return last + cdiv(imax(0, p.capacity * p.unit - level), p.rate)
end

-- The stored level (in p's unit: whole tokens carry over from another
-- unit, at most a full bucket) and its instant, or nil when there is no
-- live state.
local function token_bucket_load(key, p, now)
  local v = load(key, now)
  if not v then return nil end
  local unit = p.unit
  if compact(v) then
    local at, tokens = string.match(v, '^%-(%d+)(%d%d%d)$')
    return imin(tonumber(tokens), p.capacity) * unit, tonumber(at)
  end
  local level, last, from = parse(v)
  if from > 0 and from ~= unit then level = imin(idiv(level, from), p.capacity) * unit end
  return level, last
end

-- The level at `now`: refilled since `last`, compared before multiplying
-- so a long idle cannot leave the exact range, capped at a full bucket.
local function token_bucket_refill(p, level, last, now)
  local full = p.capacity * p.unit
  local elapsed = imax(0, now - last)
  if elapsed >= cdiv(imax(0, full - level), p.rate) then return full end
  return level + elapsed * p.rate
end

-- Writes a level (in p's unit) at instant `last`.
local function token_bucket_store(key, p, level, last)
  local unit = p.unit
  local value
  if level % unit == 0 and level / unit < 1000 then
    value = string.format('-%d%03d', last, level / unit)
  else
    value = fmt(level) .. ':' .. fmt(last) .. ':' .. fmt(unit)
  end
  store(key, value, token_bucket_fresh_at(p, level, last))
end

ALG.token_bucket = function(key, p, now, cost, consume)
  local unit, rate = p.unit, p.rate
  local full = p.capacity * unit
  local level, last = token_bucket_load(key, p, now)
  if not level then level, last = full, now end
  local current = token_bucket_refill(p, level, last, now)
  local allowed = cost <= p.capacity and cost * unit <= current
  local charged = allowed and consume
  local after = current
  -- The level is known at `last` and refills only from then, also when the
  -- clock stepped back.
  local stamp = imax(last, now)
  if charged then
    after = current - cost * unit
    token_bucket_store(key, p, after, stamp)
  end
  return allowed, idiv(after, unit), token_bucket_fresh_at(p, after, stamp),
    stamp + cdiv(imax(0, cost * unit - current), rate), 0
end
