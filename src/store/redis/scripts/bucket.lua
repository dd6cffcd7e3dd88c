-- token_bucket and leaky_bucket (src/limit/bucket.rs). State: "empty_at".
-- `capacity` is burst (token_bucket) or limit (leaky_bucket). The Rust code
-- compares level = (empty_at - now) * limit with multiples of window; here
-- the same comparisons are divided through by limit or window, exactly.
local bucket = {}

function bucket.check(state, now, limit, window, capacity, cost)
  local empty_at = max(state[1], now)
  state[1] = empty_at
  local d = empty_at - now
  -- Whole requests the level takes up: ceil(d * limit / window).
  local used = 0
  if d > 0 then
    used = muldiv_ceil(d, limit, window)
  end
  if cost > capacity then
    return deny(max(capacity - used, 0), d, max(muldiv_ceil(capacity, window, limit), window))
  end
  local room = muldiv_floor(capacity - cost, window, limit)
  if d <= room then
    return allow(max(capacity - cost - used, 0), d + muldiv_ceil(cost, window, limit))
  end
  return deny(max(capacity - used, 0), d, d - room)
end

function bucket.consume(state, limit, window, cost)
  state[1] = min(state[1] + muldiv_ceil(cost, window, limit), BIG * 2 - 1)
end

function bucket.refund(state, limit, window, cost)
  state[1] = max(state[1] - muldiv_ceil(cost, window, limit), 0)
  return true
end
