-- token_bucket and leaky_bucket (src/limit/bucket.rs). State: "empty_at".
-- `capacity` is burst (token_bucket) or limit (leaky_bucket). The Rust code
-- compares level = (empty_at - now) * limit with multiples of window; here
-- the same comparisons are divided through by limit or window, exactly.
local bucket = {}

function bucket.check(state, now, limit, window, capacity, cost)
  local empty_at = max(state[1], now)
  state[1] = empty_at
  local d = empty_at - now
  local function remaining(extra)
    return max(capacity - extra - muldiv_ceil(d, limit, window), 0)
  end
  if cost > capacity then
    return deny(remaining(0), d, max(muldiv_ceil(capacity, window, limit), window))
  end
  local room = muldiv_floor(capacity - cost, window, limit)
  if d <= room then
    return allow(remaining(cost), d + muldiv_ceil(cost, window, limit))
  end
  return deny(remaining(0), d, d - room)
end

function bucket.consume(state, limit, window, cost)
  state[1] = min(state[1] + muldiv_ceil(cost, window, limit), BIG * 2 - 1)
end

function bucket.refund(state, limit, window, cost)
  state[1] = max(state[1] - muldiv_ceil(cost, window, limit), 0)
  return true
end
