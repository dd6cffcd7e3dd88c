-- Exact integer arithmetic over Lua numbers (IEEE doubles, exact below 2^53).
-- Every time is an integer number of microseconds; every helper keeps its
-- operands and intermediate values below 2^53 so the integer steps of
-- src/limit/ are reproduced bit for bit at that resolution.

local floor = math.floor
local BIG = 4503599627370496 -- 2^52: the cap on any duration or quotient

local function max(a, b)
  if a > b then return a end
  return b
end

local function min(a, b)
  if a < b then return a end
  return b
end


-- floor(a / c) and a % c for 0 <= a < 2^52, 0 < c < 2^52, corrected for the
-- rounding of the double division.
local function divmod(a, c)
  local q = floor(a / c)
  local r = a - q * c
  if r < 0 then
    q = q - 1
    r = r + c
  elseif r >= c then
    q = q + 1
    r = r - c
  end
  return q, r
end

-- floor(a * b / c) and the remainder, for integers 0 <= a, b < 2^53 and
-- 0 < c < 2^52. A quotient above BIG is returned as BIG with remainder 0:
-- callers only ever compare such values with durations below BIG.
local function muldiv(a, b, c)
  local p = a * b
  if p < BIG then
    return divmod(p, c)
  end
  -- a * b = (qa * c + ra) * b: the qa * b part first, then ra * b / c by
  -- shift-and-add (ra < c, so every partial remainder stays below 2 * c).
  local qa, ra = divmod(min(a, BIG - 1), c)
  if qa > 0 and qa * b >= BIG then
    return BIG, 0
  end
  local q, r = qa * b, 0
  local bit = 1
  while bit * 2 <= b do
    bit = bit * 2
  end
  local part = 0
  while bit >= 1 do
    part = part * 2
    r = r * 2
    if r >= c then
      r = r - c
      part = part + 1
    end
    if b >= bit then
      b = b - bit
      r = r + ra
      if r >= c then
        r = r - c
        part = part + 1
      end
    end
    if q + part >= BIG then
      return BIG, 0
    end
    bit = bit / 2
  end
  return q + part, r
end

local function muldiv_floor(a, b, c)
  local q = muldiv(a, b, c)
  return q
end

local function muldiv_ceil(a, b, c)
  local q, r = muldiv(a, b, c)
  if r > 0 then
    return q + 1
  end
  return q
end

-- A verdict: allowed (1/0), remaining, reset_after, retry_after (0 when allowed).
local function allow(remaining, reset_after)
  return {1, remaining, reset_after, 0}
end

local function deny(remaining, reset_after, retry_after)
  return {0, remaining, reset_after, max(retry_after, 1)}
end

-- A cost above the whole quota never passes.
local function denied_forever(window)
  return deny(0, window, window)
end

-- Compact state is stored as one to three decimal integers separated by
-- spaces; a missing key is all zeros (a fresh key, as in memory).
local function read_state(key, n)
  local text = redis.call('GET', key)
  if not text then
    if n == 1 then return {0} elseif n == 2 then return {0, 0} end
    return {0, 0, 0}
  end
  if n == 1 then
    return {tonumber(text) or 0}
  elseif n == 2 then
    local a, b = string.match(text, '^(%d+) (%d+)$')
    return {tonumber(a) or 0, tonumber(b) or 0}
  end
  local a, b, c = string.match(text, '^(%d+) (%d+) (%d+)$')
  return {tonumber(a) or 0, tonumber(b) or 0, tonumber(c) or 0}
end

-- %.0f prints every integer below 2^53 exactly (tostring would round to 14 digits).
local function encode(state)
  local n = #state
  if n == 1 then
    return string.format('%.0f', state[1])
  elseif n == 2 then
    return string.format('%.0f %.0f', state[1], state[2])
  end
  return string.format('%.0f %.0f %.0f', state[1], state[2], state[3])
end

-- Keys live until their state is fresh again, plus a second (as in memory).
local function ttl_ms(reset_after)
  return floor((reset_after + 999) / 1000) + 1000
end
