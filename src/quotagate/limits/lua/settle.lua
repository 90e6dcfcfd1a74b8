-- Settle estimates with actual usage: add (or refund) a delta to each limit. A limit may go into
-- debt; the requests after it then wait. Mirrors the *_adjust functions of _algorithms.py.
--
-- ARGV[1]    "now" in ms, or "" for TIME
-- ARGV[2..]  six per limit: code, delta, a, b, c, window the estimate was charged to
--            (codes and a, b, c as in acquire.lua)

local now = clock_ms(ARGV[1])

for i = 1, #KEYS do
  local j = 2 + (i - 1) * 6
  local code, delta = ARGV[j], tonumber(ARGV[j + 1])
  local a, b, c, charged = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3]), tonumber(ARGV[j + 4]), tonumber(ARGV[j + 5])
  local key = KEYS[i]
  if delta ~= 0 then
    if code == 'g' then
      local tat = tonumber(redis.call('GET', key) or '')
      local base = now
      if tat and tat > now then base = tat end
      local new = base + delta * a
      if new < now then new = now end
      redis.call('SET', key, fmt(new), 'PX', math.ceil(new - now + 1000))
    elseif code == 's' then
      local w = math.floor(now / a)
      local cur, prev = sliding_counts(key, w)
      cur = cur + delta
      if cur < 0 then
        prev = math.max(0, prev + cur)
        cur = 0
      end
      redis.call('HSET', key, 'w', fmt(w), 'c', fmt(cur), 'p', fmt(prev))
      redis.call('PEXPIRE', key, math.ceil(2 * a + 1000))
    elseif code == 'c' then
      local start, stop = b, c
      if now >= stop then start = stop end
      local v = redis.call('HMGET', key, 'w', 'u')
      local sw, u = tonumber(v[1]), tonumber(v[2])
      if sw ~= nil and sw == charged then
        redis.call('HSET', key, 'u', fmt(math.max(0, u + delta)))
      elseif delta > 0 then
        if sw ~= start then u = 0 end
        redis.call('HSET', key, 'w', fmt(start), 'u', fmt(u + delta))
        redis.call('PEXPIRE', key, math.ceil(stop - now + 3600000))
      end
    end
  end
end
return 1
