-- tollgate decision script, part 1 of 8: shared helpers.
--
-- The script is the concatenation of prelude.lua, the six algorithm files and
-- main.lua (see src/script.rs). Each algorithm file is the Lua twin of the
-- Rust step function of the same name in crates/tollgate/src/algorithm/; the
-- differential test requires both to decide identically. All arithmetic is on
-- integers below 2^53 (Policy::new guarantees it), where Lua's doubles are exact.

local ALG = {}

-- floor(a / b) for integers 0 <= a < 2^53 and b > 0. The quotient of two such
-- doubles floors correctly; the correction keeps that true by construction.
local function idiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then q = q - 1 elseif r >= b then q = q + 1 end
  return q
end

-- ceil(a / b) for integers 0 <= a < 2^53 and b > 0.
local function cdiv(a, b)
  local q = idiv(a, b)
  if q * b < a then q = q + 1 end
  return q
end

local function imax(a, b) if a > b then return a end return b end
local function imin(a, b) if a < b then return a end return b end

-- Integers to decimal text. Never pass a Lua number to redis.call directly:
-- large values could be written in exponent form.
local function fmt(n) return string.format('%d', n) end

-- Parses "a", "a:b" or "a:b:c" into numbers (missing parts are 0).
local function parse(v)
  local a, b, c = string.match(v, '^(%d+):?(%d*):?(%d*)$')
  return tonumber(a), tonumber(b) or 0, tonumber(c) or 0
end

-- Added to every TTL. Zero in production. When a test drives the clock
-- (ARGV[3]), Redis still expires keys on its real clock, which runs ahead of
-- the test's timeline; main.lua then sets an hour of slack so keys outlive
-- the test and freshness is decided by the state alone (as it always is).
local TTL_SLACK_MS = 0

-- The TTL of a state that becomes fresh at `fresh_at`: exactly that instant,
-- rounded up to the millisecond, never earlier.
local function ttl_ms(now, fresh_at)
  return fmt(imax(1, cdiv(fresh_at - now, 1000)) + TTL_SLACK_MS)
end

-- Stores a string state that becomes fresh at `fresh_at`.
local function store(key, value, now, fresh_at)
  redis.call('SET', key, value, 'PX', ttl_ms(now, fresh_at))
end

