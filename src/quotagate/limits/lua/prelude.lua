-- Shared by quotagate's scripts: prepended to each when it is loaded (see lua_script()).

-- Milliseconds: the time a test injected, or Redis's own clock (TIME), never a node's.
local function clock_ms(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- Numbers go to Redis as text; %.17g round-trips a double exactly.
local function fmt(x) return string.format('%.17g', x) end

-- A sliding window's (current, previous) counts as seen from window w.
local function sliding_counts(key, w)
  local v = redis.call('HMGET', key, 'w', 'c', 'p')
  local sw = tonumber(v[1])
  if sw == w then return tonumber(v[2]), tonumber(v[3]) end
  if sw == w - 1 then return 0, tonumber(v[2]) end
  return 0, 0
end

