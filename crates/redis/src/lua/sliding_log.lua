-- sliding_log: KEYS[i] is a sorted set with one member per admitted instant:
-- scored by that instant in µs, named "<total>:<cost>" where cost is what
-- was admitted in that microsecond and total the running sum of costs
-- through it. Counting the active units is two lookups (the newest total
-- minus the total of the newest expired entry), finding when a denied cost
-- fits is a binary search over ranks: O(log n) Redis work and one member per
-- admitted request, however large its cost.
-- Twin of crates/tollgate/src/algorithm/sliding_log.rs.

-- Totals are rebased to the first live entry before they reach
-- LOG_REBASE_AT (2^50, prelude.lua), so they stay exact in Lua's doubles
-- however long a key stays busy. A test clock rebases early (main.lua) so
-- that tests exercise it.

local function log_entry(member)
  local total, cost = string.match(member, '^(%d+):(%d+)$')
  return tonum(total), tonum(cost)
end

ALG.sliding_log = function(key, p, now, cost, consume)
  local period, limit = p.period, p.limit
  -- An entry admitted at t counts while t > now - period.
  local boundary = now - period
  local alive = live(key, now)
  local newest = {}
  if alive then newest = call('ZRANGE', key, -1, -1, 'WITHSCORES') end
  local newest_at, top, base, used, expired = nil, 0, 0, 0, false
  if #newest > 0 then
    newest_at = tonum(newest[2])
    top = log_entry(newest[1])
    if newest_at > boundary then
      local last = call('ZRANGE', key, fmt(boundary), '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, 1)
      if #last > 0 then
        expired = true
        base = log_entry(last[1])
      else
        local total, first_cost = log_entry(call('ZRANGE', key, 0, 0)[1])
        base = total - first_cost
      end
      used = top - base
    else
      expired = true
    end
  end
  local allowed = used + cost <= limit
  -- A clock stepping back must not put an entry before a newer one: it is
  -- recorded at the newest instant seen, which only delays expiry.
  local stamp = now
  if newest_at then stamp = imax(newest_at, now) end
  local retry_at = now
  if not allowed then
    -- The first active entry whose running total covers the excess: once it
    -- expires, `cost` fits.
    local target = base + used + cost - limit
    local lo = call('ZCOUNT', key, '-inf', fmt(boundary))
    local hi = call('ZCARD', key) - 1
    while lo < hi do
      local mid = idiv(lo + hi, 2)
      if log_entry(call('ZRANGE', key, mid, mid)[1]) >= target then hi = mid else lo = mid + 1 end
    end
    retry_at = tonum(call('ZRANGE', key, lo, lo, 'WITHSCORES')[2]) + period
  end
  local charged = allowed and consume
  local used_after = used
  local fresh_at = 0
  if newest_at then fresh_at = newest_at + period end
  if charged then
    used_after = used + cost
    fresh_at = stamp + period
    if newest_at and newest_at <= boundary then
      -- Nothing active: start afresh (totals from zero).
      call('DEL', key)
      newest_at, top, base = nil, 0, 0
    elseif expired then
      call('ZREMRANGEBYSCORE', key, '-inf', fmt(boundary))
    end
    if top + cost >= LOG_REBASE_AT then
      local entries = call('ZRANGE', key, 0, -1, 'WITHSCORES')
      call('DEL', key)
      for j = 1, #entries, 2 do
        local total, c = log_entry(entries[j])
        call('ZADD', key, entries[j + 1], fmt(total - base) .. ':' .. fmt(c))
      end
      top = top - base
    end
    local at = fmt(stamp)
    if newest_at == stamp then
      -- Merge with the entry of the same microsecond.
      local member = call('ZRANGE', key, -1, -1)[1]
      local _, c = log_entry(member)
      call('ZREM', key, member)
      call('ZADD', key, at, fmt(top + cost) .. ':' .. fmt(c + cost))
    else
      call('ZADD', key, at, fmt(top + cost) .. ':' .. fmt(cost))
    end
    call('PEXPIREAT', key, fmt(expiry_ms(fresh_at)))
  end
  if used_after == 0 then fresh_at = 0 end
  return allowed, imax(0, limit - used_after), fresh_at, retry_at, 0
end
