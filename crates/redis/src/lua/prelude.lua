-- tollgate decision script, first part: shared helpers.
--
-- A script is the concatenation of prelude.lua, the files of the algorithms
-- a check uses and main.lua (see src/script.rs); the library and a lease
-- call's script add lease/prelude.lua and the lease files of those
-- algorithms after the algorithm files, and lease/main.lua after main.lua;
-- the library and a reservation's script add the lease files and
-- reserve/prelude.lua and the reservation files of those algorithms after
-- them, and reserve/main.lua after main.lua.
-- Each algorithm file is the Lua twin of the Rust step function of the same
-- name in crates/tollgate/src/algorithm/; the differential test requires
-- both to decide identically. All arithmetic is on integers below 2^53
-- (Policy::new guarantees it), where Lua's doubles are exact.

local ALG = {}

-- The lease step's two halves (lease/main.lua), where the code holds them:
-- `decide` (main.lua) runs them before and after a lease call's check.
-- Likewise a reservation's two halves and the settle step
-- (reserve/main.lua). Declared here, set after main.lua.
local lease_begin, lease_end
local reserve_begin, reserve_end, settle

-- Redis's and Lua's functions used on every decision, as locals: a global
-- is a table lookup on every use.
-- A library's top level runs in a sandbox that cannot reach them, so
-- `bind` sets them on a call's first use (main.lua, envoy_counter.lua).
local call, floor, format, tonum
local function bind()
  if not call then call, floor, format, tonum = redis.call, math.floor, string.format, tonumber end
end

-- floor(a / b) for integers 0 <= a < 2^53 and b > 0. The quotient of two such
-- doubles floors correctly; the correction keeps that true by construction.
local function idiv(a, b)
  local q = floor(a / b)
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
local function fmt(n) return format('%d', n) end

-- Parses "a", "a:b" or "a:b:c" into numbers (missing parts are 0).
local function parse(v)
  local a, b, c = string.match(v, '^(%d+):?(%d*):?(%d*)$')
  return tonum(a), tonum(b) or 0, tonum(c) or 0
end

-- Expiry. A state that becomes fresh at `fresh_at` (µs) expires at
-- millisecond ceil(fresh_at / 1000): Redis drops it once its clock is past
-- that millisecond, the instant the memory store drops its entry too
-- (tollgate::algorithm::expires_at), so both forget state together.
--
-- With Redis's clock (production) EXPIRE_BASE_MS is 0 and Redis's own expiry
-- does the forgetting. When a test drives the clock (ARGV[3]), Redis still
-- expires keys on its real clock, so main.lua moves every expiry 2^52 ms
-- into the future (EXPIRE_BASE_MS) and sets TEST_CLOCK: a key then counts as
-- gone once the test's time is past its expiry minus that base.
local EXPIRE_BASE_MS = 0
local TEST_CLOCK = false

-- Where sliding_log.lua rebases its totals (see there). Declared here, like
-- the two above, because main.lua sets it under a test clock and a script
-- may hold main.lua without sliding_log.lua: Redis refuses to create a
-- global.
local LOG_REBASE_AT = 2 ^ 50

local function expiry_ms(fresh_at)
  return EXPIRE_BASE_MS + cdiv(fresh_at, 1000)
end

-- Whether the key's state is still live at `now`: always, on Redis's clock
-- (an expired key is already gone); on a test clock, until its expiry, when
-- it is deleted as Redis would: a clock that then steps back finds it gone.
local function live(key, now)
  if not TEST_CLOCK then return true end
  local at = call('PEXPIRETIME', key)
  if at < 0 then return false end
  if idiv(now, 1000) <= at - EXPIRE_BASE_MS then return true end
  call('DEL', key)
  return false
end

-- The key's string state, or nil when there is none (or it has expired).
local function load(key, now)
  if TEST_CLOCK and not live(key, now) then return nil end
  return call('GET', key)
end

-- Stores a string state that becomes fresh at `fresh_at` (> now), or
-- deletes it when it is fresh already (`fresh_at` 0: a window that a
-- give-back emptied), as the memory store's entry is gone then.
local function store(key, value, fresh_at)
  if fresh_at == 0 then
    call('DEL', key)
  else
    call('SET', key, value, 'PXAT', fmt(expiry_ms(fresh_at)))
  end
end

-- After a decision that charged nothing: a state read under a policy that
-- keeps it longer than its key's expiry (a changed policy) has its expiry
-- pushed to where that policy needs it, never earlier. Under the policy
-- that wrote the state the expiry already matches and nothing is written.
local function extend(key, fresh_at)
  local want = expiry_ms(fresh_at)
  if call('PEXPIRETIME', key) < want then
    call('PEXPIREAT', key, fmt(want))
  end
end

-- Compact states (docs/REDIS.md, "Keys and state"). A window or bucket state
-- whose numbers fit is stored as one negative decimal integer: '-', then
-- its fields, the first as it is and the others zero-padded to fixed
-- widths. Redis keeps such a value inside the key's object, like a counter
-- (INT encoding), instead of allocating a string. Every field stays below
-- 2^53 and is joined and split as text (string.format, string.match), so
-- Lua never holds the 64-bit whole. The sign tells it from the text form
-- "a:b[:c]", which is still read (and written when the numbers do not
-- fit), and makes the parse of earlier releases fail instead of misreading.
local function compact(v)
  return string.byte(v) == 45
end
