-- One decision over every limit that applies to a request: all admit, or nothing is written.
-- A line-by-line transcription of quotagate/limits/_algorithms.py (times in milliseconds).
--
-- KEYS[i]     the i-th limit's state
-- ARGV[1]     lease id (concurrency limits)
-- ARGV[2]     "now" in ms, or "" to use Redis's own clock (TIME), never the nodes'
-- ARGV[3]     "1": only report (no writes), "0": decide
-- ARGV[4..]   six per limit: cost, code, a, b, c, d (the cost first: the rest is fixed per limit,
--             so the client can encode it once)
--             g (gcra)            a = ms per unit, b = tolerance (burst x a)
--             s (sliding window)  a = period ms, b = amount
--             c (calendar quota)  a = amount, b = window start, c = window end, d = next end
--             n (concurrency)     a = amount, b = lease ms
-- returns     {allowed, denied index, retry ms, then per limit: ok, used, remaining, reset ms, window}

local now = clock_ms(ARGV[2])
local lease = ARGV[1]
local dry = ARGV[3] == '1'
local EPS = 1e-6
local TIME_EPS = 1e-3  -- times are epoch ms: see TIME_EPS and SPACING in _algorithms.py
local SPACING = 2.3e-16
local INF = math.huge

local n = #KEYS
local out = {0, 0, '0'}
local writes = {}
local worst, worst_i = -1, 0

for i = 1, n do
  local j = 4 + (i - 1) * 6
  local cost, code = tonumber(ARGV[j]), ARGV[j + 1]
  local a, b, c, d = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3]), tonumber(ARGV[j + 4]), tonumber(ARGV[j + 5])
  local key = KEYS[i]
  local ok, retry, used, remaining, reset, window = true, 0, 0, 0, 0, 0

  if code == 'g' then
    local tat = tonumber(redis.call('GET', key) or '')
    local base = now
    if tat and tat > now then base = tat end
    local new_tat = base + cost * a
    local capacity = math.floor(b / a + 0.5)
    local slack = TIME_EPS + capacity * now * SPACING
    if slack >= a * 0.5 then slack = a * 0.5 end
    local after
    if cost * a > b + slack then
      ok, retry, after = false, INF, base
    elseif new_tat - now <= b + slack then
      after = new_tat
    else
      ok, retry, after = false, new_tat - b - now, base
    end
    remaining = math.floor((b - (after - now) + slack) / a)
    if remaining < 0 then remaining = 0 end
    if remaining > capacity then remaining = capacity end
    used, reset = capacity - remaining, after - now
    writes[i] = {'g', after, after - now + 1000}

  elseif code == 's' then
    local w = math.floor(now / a)
    local cur, prev = sliding_counts(key, w)
    local weight = 1 - (now - w * a) / a
    local est = prev * weight + cur
    if cost > b + EPS then
      ok, retry = false, INF
    elseif est + cost <= b + EPS then
      cur = cur + cost
    else
      ok = false
      local room = b - cost
      if cur <= room then
        retry = w * a + (1 - (room - cur) / prev) * a - now
      else
        retry = (w + 1) * a + (1 - room / cur) * a - now
      end
    end
    est = prev * weight + cur
    remaining = math.floor(b - est + EPS)
    if remaining < 0 then remaining = 0 end
    if cur > 0 then reset = (w + 2) * a - now elseif prev > 0 then reset = (w + 1) * a - now else reset = 0 end
    used = math.ceil(est - EPS)
    if used < 0 then used = 0 end
    writes[i] = {'s', w, cur, prev, 2 * a + 1000}

  elseif code == 'c' then
    local start, stop = b, c
    if now >= stop then start, stop = c, d end
    local v = redis.call('HMGET', key, 'w', 'u')
    local u = 0
    if tonumber(v[1]) == start then u = tonumber(v[2]) end
    if cost > a + EPS then
      ok, retry = false, INF
    elseif u + cost <= a + EPS then
      u = u + cost
    else
      ok, retry = false, stop - now
    end
    used = math.floor(u)
    remaining = math.floor(a - u)
    if remaining < 0 then remaining = 0 end
    reset, window = stop - now, start
    writes[i] = {'c', start, u, stop - now + 3600000}

  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local count = redis.call('ZCARD', key)
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local earliest = first[2] and tonumber(first[2]) or nil
    if cost > a then
      ok, retry = false, INF
    elseif count + cost <= a then
      if cost > 0 then
        count = count + 1
        if earliest == nil or now + b < earliest then earliest = now + b end
      end
    else
      ok, retry = false, math.min(earliest - now, 250)
    end
    used = count
    remaining = a - count
    if remaining < 0 then remaining = 0 end
    if earliest then reset = earliest - now end
    writes[i] = {'n', cost, b}
  end

  if not ok and retry > worst then worst, worst_i = retry, i end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = used
  out[#out + 1] = remaining
  out[#out + 1] = fmt(reset)
  out[#out + 1] = fmt(window)
end

if worst_i > 0 then
  out[2], out[3] = worst_i, fmt(worst)
  return out
end
out[1] = 1
if dry then return out end

for i = 1, n do
  local w, key = writes[i], KEYS[i]
  if w[1] == 'g' then
    redis.call('SET', key, fmt(w[2]), 'PX', math.ceil(w[3]))
  elseif w[1] == 's' then
    redis.call('HSET', key, 'w', fmt(w[2]), 'c', fmt(w[3]), 'p', fmt(w[4]))
    redis.call('PEXPIRE', key, math.ceil(w[5]))
  elseif w[1] == 'c' then
    redis.call('HSET', key, 'w', fmt(w[2]), 'u', fmt(w[3]))
    redis.call('PEXPIRE', key, math.ceil(w[4]))
  elseif w[2] > 0 then
    redis.call('ZADD', key, now + w[3], lease)
    redis.call('PEXPIRE', key, math.ceil(2 * w[3]))
  end
end
return out
