-- One batch of checks, decided atomically (src/store/mod.rs, Store::check).
--
-- ARGV[1]: 'c' to check and consume, 'k' to check only, 'r' to refund what
-- a 'c' call consumed.
-- ARGV[2]: the time in microseconds, or '' for Redis TIME (only tests set it).
-- Then six numbers per key: strategy (1 sliding_window, 2 sliding_window_counter,
-- 3 token_bucket, 4 leaky_bucket, 5 fixed_window), limit, window (µs),
-- capacity, cost, and enforce (1/0) — or, for 'r', the token 'c' returned.
--
-- 'c' returns {now, then per key: allowed, remaining, reset_after, retry_after,
-- consumed, token}, integers only: Redis cuts a reply table at its first nil.

local mode = ARGV[1]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local SLIDING_LOG, COUNTER, TOKEN, LEAKY, FIXED = 1, 2, 3, 4, 5
local STATE_WORDS = {[COUNTER] = 3, [TOKEN] = 1, [LEAKY] = 1, [FIXED] = 2}

local function params(i)
  local base = 3 + (i - 1) * 6
  return tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
    tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
end

local function check_compact(kind, state, limit, window, capacity, cost)
  if kind == COUNTER then
    return sliding_counter.check(state, now, limit, window, cost)
  elseif kind == FIXED then
    return fixed_window.check(state, now, limit, window, cost)
  end
  return bucket.check(state, now, limit, window, capacity, cost)
end

if mode == 'r' then
  for i = 1, #KEYS do
    local kind, limit, window, capacity, cost, token = params(i)
    if kind == SLIDING_LOG then
      sliding_log.refund(KEYS[i], token, cost)
    else
      local state = read_state(KEYS[i], STATE_WORDS[kind])
      local changed
      if kind == COUNTER then
        changed = sliding_counter.refund(state, token, window, cost)
      elseif kind == FIXED then
        changed = fixed_window.refund(state, token, window, cost)
      else
        changed = bucket.refund(state, limit, window, cost)
      end
      if changed and redis.call('EXISTS', KEYS[i]) == 1 then
        redis.call('SET', KEYS[i], encode(state), 'KEEPTTL')
      end
    end
  end
  return {now}
end

local verdicts = {}
local states = {}
-- How often each key appears: a key checked once can be consumed from the
-- state its check brought forward, without reading it again.
local seen = {}
for i = 1, #KEYS do
  seen[KEYS[i]] = (seen[KEYS[i]] or 0) + 1
end
local all_allow = true
for i = 1, #KEYS do
  local kind, limit, window, capacity, cost, enforce = params(i)
  local verdict
  if kind == SLIDING_LOG then
    verdict = sliding_log.check(KEYS[i], now, limit, window, cost)
  else
    local state = read_state(KEYS[i], STATE_WORDS[kind])
    verdict = check_compact(kind, state, limit, window, capacity, cost)
    states[i] = state
  end
  verdicts[i] = verdict
  if enforce == 1 and verdict[1] == 0 then
    all_allow = false
  end
end

local out = {now}
for i = 1, #KEYS do
  local kind, limit, window, capacity, cost = params(i)
  local verdict = verdicts[i]
  local consumed, token = 0, now
  if mode == 'c' and all_allow and verdict[1] == 1 then
    local ttl = ttl_ms(verdict[3])
    if kind == SLIDING_LOG then
      token = sliding_log.consume(KEYS[i], now, cost, ttl)
    else
      local state = states[i]
      if seen[KEYS[i]] > 1 then
        -- Read again: an earlier consume of this batch may have written it.
        state = read_state(KEYS[i], STATE_WORDS[kind])
        check_compact(kind, state, limit, window, capacity, cost)
      end
      if kind == COUNTER then
        sliding_counter.consume(state, cost)
      elseif kind == FIXED then
        fixed_window.consume(state, cost)
      else
        bucket.consume(state, limit, window, cost)
      end
      redis.call('SET', KEYS[i], encode(state), 'PX', ttl)
    end
    consumed = 1
  end
  for j = 1, 4 do
    out[#out + 1] = verdict[j]
  end
  out[#out + 1] = consumed
  out[#out + 1] = token
end
return out
