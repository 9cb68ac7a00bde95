-- tollgate's envoyproxy/ratelimit counter script (after prelude.lua): a
-- fixed window kept as envoyproxy/ratelimit keeps it, so that both can
-- count in one Redis during a rolling replacement.
--
-- The counter's key is ARGV[1] followed by the window start in Unix seconds
-- (a multiple of the period), and its value is a plain integer that
-- envoyproxy/ratelimit increments with INCRBY and expires with EXPIRE
-- <period>. The window start comes from Redis's clock, read here, so the key
-- is named inside the script: no KEYS (standalone Redis only; a Cluster
-- would need the slot before the window is known).
--
-- ARGV[1]  the key without its window start: <prefix><domain>_<k>_<v>_..._
-- ARGV[2]  "1" consume, "0" peek, "reset" to delete the current window's counter
-- ARGV[3]  cost, an integer >= 1
-- ARGV[4]  "" for Redis's clock, or a time in µs (tests only: nothing expires)
-- ARGV[5]  the limit
-- ARGV[6]  the period, in whole seconds
--
-- Returns allowed (1/0), remaining, reset_after (µs), retry_after (µs) and
-- delay (0), as main.lua does for one fixed_window policy, deciding as
-- fixed_window.lua does: a cost above the limit is denied as a look; a
-- denied or peeked request writes nothing; an allowed one is charged with
-- INCRBY and the expiry set as envoyproxy/ratelimit sets it.

bind()
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
  TEST_CLOCK = true
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local period = tonumber(ARGV[6])
local second = idiv(now, 1000000)
local start = second - second % period
local key = ARGV[1] .. fmt(start)
if ARGV[2] == 'reset' then
  redis.call('DEL', key)
  return {}
end
local cost = tonumber(ARGV[3])
local limit = tonumber(ARGV[5])
local used = 0
local v = redis.call('GET', key)
if v then
  used = tonumber(v)
  if not used then return redis.error_reply('tollgate: an envoyproxy/ratelimit counter does not hold an integer') end
end
local over = cost > limit
local allowed = (not over) and used + cost <= limit
local used_after = used
if allowed and ARGV[2] == '1' then
  used_after = redis.call('INCRBY', key, fmt(cost))
  if not TEST_CLOCK then redis.call('EXPIRE', key, fmt(period)) end
end
local window_end = (start + period) * 1000000
local reset_after = 0
if used_after > 0 then reset_after = window_end - now end
return { allowed and 1 or 0, imax(0, limit - used_after), reset_after, window_end - now, 0 }
