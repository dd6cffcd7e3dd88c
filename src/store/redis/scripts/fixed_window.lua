-- fixed_window (src/limit/fixed_window.rs). State: "window_index+1 count".
local fixed_window = {}

function fixed_window.check(state, now, limit, window, cost)
  local index = divmod(now, window)
  if state[1] ~= index + 1 then
    state[1] = index + 1
    state[2] = 0
  end
  local count = state[2]
  local until_next = max((index + 1) * window - now, 1)
  if cost > limit then
    return denied_forever(window)
  end
  local after = count + cost
  if after <= limit then
    return allow(limit - after, until_next)
  end
  local reset_after = 0
  if count > 0 then reset_after = until_next end
  return deny(max(limit - count, 0), reset_after, until_next)
end

function fixed_window.consume(state, cost)
  state[2] = state[2] + cost
end

-- Gives back a cost consumed at `now`, if its window is still the current one.
function fixed_window.refund(state, now, window, cost)
  if state[1] == divmod(now, window) + 1 then
    state[2] = max(state[2] - cost, 0)
    return true
  end
  return false
end
