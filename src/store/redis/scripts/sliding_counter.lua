-- sliding_window_counter (src/limit/sliding_counter.rs).
-- State: "window_index+1 previous current".
local sliding_counter = {}

function sliding_counter.check(state, now, limit, window, cost)
  local index, elapsed = divmod(now, window)
  local previous, current = state[2], state[3]
  local stored = state[1]
  if stored ~= index + 1 then
    if stored ~= 0 and stored == index then
      previous, current = current, 0
    else
      previous, current = 0, 0
    end
    state[1], state[2], state[3] = index + 1, previous, current
  end

  local until_next = window - elapsed
  if cost > limit then
    return denied_forever(window)
  end

  -- previous * (window - elapsed) <= k * window, in integers.
  local weighted_whole = 0
  if previous > 0 then
    weighted_whole = muldiv_ceil(previous, window - elapsed, window)
  end
  local fits = current + cost <= limit
    and (previous == 0
      or window - elapsed <= muldiv_floor(limit - current - cost, window, previous))
  if fits then
    local left = max(limit - (current + cost + weighted_whole), 0)
    local reset_after = 0
    if current + cost > 0 then
      reset_after = until_next + window
    elseif previous > 0 then
      reset_after = until_next
    end
    return allow(left, reset_after)
  end

  local left = max(limit - (current + weighted_whole), 0)
  local retry_after
  if current + cost <= limit and previous > 0 then
    local room = muldiv_floor(limit - current - cost, window, previous)
    retry_after = max(window - min(room, window) - elapsed, 0)
  else
    local room = window
    if current > 0 then room = muldiv_floor(limit - cost, window, current) end
    retry_after = until_next + (window - min(room, window))
  end
  local reset_after = 0
  if current > 0 then
    reset_after = until_next + window
  elseif previous > 0 then
    reset_after = until_next
  end
  return deny(left, reset_after, retry_after)
end

function sliding_counter.consume(state, cost)
  state[3] = state[3] + cost
end

function sliding_counter.refund(state, now, window, cost)
  local index = divmod(now, window)
  if state[1] == index + 1 then
    state[3] = max(state[3] - cost, 0)
  elseif state[1] == index + 2 then
    state[2] = max(state[2] - cost, 0)
  else
    return false
  end
  return true
end
