-- sliding_window (src/limit/sliding_log.rs): a list of the accepted requests'
-- arrival times, oldest first, at most `limit` long.
local sliding_log = {}

function sliding_log.check(key, now, limit, window, cost)
  -- A stamp counts while now - stamp < window.
  while true do
    local oldest = redis.call('LINDEX', key, 0)
    if oldest and now - tonumber(oldest) >= window then
      redis.call('LPOP', key)
    else
      break
    end
  end
  local count = redis.call('LLEN', key)
  local function expiry(stamp)
    return max(stamp + window - now, 1)
  end
  if cost > limit then
    return denied_forever(window)
  end
  if count + cost <= limit then
    return allow(limit - count - cost, window)
  end
  local must_expire = count + cost - limit
  local freeing = tonumber(redis.call('LINDEX', key, must_expire - 1))
  local newest = tonumber(redis.call('LINDEX', key, -1)) or now
  return deny(max(limit - count, 0), expiry(newest), expiry(freeing))
end

-- Returns the stamp pushed, which a refund needs.
function sliding_log.consume(key, now, cost, ttl)
  local newest = tonumber(redis.call('LINDEX', key, -1))
  local stamp = now
  if newest and newest > now then stamp = newest end
  local text = string.format('%.0f', stamp)
  local left = cost
  while left > 0 do
    local chunk = {}
    for i = 1, min(left, 512) do chunk[i] = text end
    redis.call('RPUSH', key, unpack(chunk))
    left = left - #chunk
  end
  redis.call('PEXPIRE', key, ttl)
  return stamp
end

function sliding_log.refund(key, stamp, cost)
  redis.call('LREM', key, -cost, string.format('%.0f', stamp))
  return true
end
