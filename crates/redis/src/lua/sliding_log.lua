-- sliding_log: KEYS[i] is a sorted set with one member per admitted unit,
-- scored by its admission instant in µs. The units admitted in one
-- microsecond are members "<µs>:0", "<µs>:1", ..., so members never collide
-- and nothing is under-counted. Counting is ZCOUNT and finding the unit that
-- must expire is a rank lookup: O(log n) per decision, however large the
-- limit (memory still grows with it: one member per unit).
-- Twin of crates/tollgate/src/algorithm/sliding_log.rs.

ALG.sliding_log = function(key, p, now, cost, consume)
  local period, limit = p.period, p.limit
  -- A unit admitted at t counts while t > now - period.
  local boundary = fmt(now - period)
  local expired = redis.call('ZCOUNT', key, '-inf', boundary)
  local used = redis.call('ZCOUNT', key, '(' .. boundary, '+inf')
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local newest_at = nil
  if #newest > 0 then newest_at = tonumber(newest[2]) end
  local allowed = used + cost <= limit
  local stamp = now
  if newest_at then stamp = imax(newest_at, now) end
  local retry_at = now
  if not allowed then
    -- Wait until the (used + cost - limit)-th oldest active unit expires.
    local rank = expired + used + cost - limit - 1
    local unit = redis.call('ZRANGE', key, rank, rank, 'WITHSCORES')
    retry_at = tonumber(unit[2]) + period
  end
  local charged = allowed and consume
  local used_after = used
  local fresh_at = 0
  if newest_at then fresh_at = newest_at + period end
  if charged then
    used_after = used + cost
    fresh_at = stamp + period
    if expired > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', boundary) end
    local at = fmt(stamp)
    local first = redis.call('ZCOUNT', key, at, at)
    -- ZADD in batches: Lua's unpack has a bounded stack.
    local i = 0
    while i < cost do
      local args = {}
      for j = i, imin(cost, i + 1000) - 1 do
        args[#args + 1] = at
        args[#args + 1] = at .. ':' .. fmt(first + j)
      end
      redis.call('ZADD', key, unpack(args))
      i = i + 1000
    end
    redis.call('PEXPIRE', key, ttl_ms(now, fresh_at))
  end
  if used_after == 0 then fresh_at = 0 end
  return allowed, imax(0, limit - used_after), fresh_at, retry_at, 0
end

