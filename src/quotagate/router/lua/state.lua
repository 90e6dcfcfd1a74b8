-- A deployment's circuit breaker and cooldown, shared by every gateway node.
-- Mirrors quotagate/router/_state.py (MemoryStateStore). Times in ms.
--
-- KEYS[1]  the deployment's state hash: st (0 closed, 1 open, 2 half-open), fw/fc (failure
--          window start and count), ou (open until; while half-open: the probes' deadline),
--          pb (probes let through), cd (cooling down until)
-- ARGV[1]  operation: view | failure | success | probe | cooldown
-- ARGV[2]  "now" in ms or "" for TIME
-- ARGV[3..] failure: threshold, window ms, open ms; probe: probes, open ms; cooldown: ms
-- returns  {state, open ms left, cooldown ms left, allowed (probe)}

local now = clock_ms(ARGV[2])
local key, op = KEYS[1], ARGV[1]
local v = redis.call('HMGET', key, 'st', 'fw', 'fc', 'ou', 'pb', 'cd')
local st, fw, fc = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
local ou, pb, cd = tonumber(v[4]) or 0, tonumber(v[5]) or 0, tonumber(v[6]) or 0
local allowed = 1

if op == 'failure' then
  local threshold, window, open_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  if st == 2 then
    st, ou, pb, fc = 1, now + open_ms, 0, 0
  elseif st == 0 then
    if now - fw > window then fw, fc = now, 0 end
    fc = fc + 1
    if fc >= threshold then st, ou, fc = 1, now + open_ms, 0 end
  end
elseif op == 'success' then
  if st == 2 then st, fc, pb = 0, 0, 0 end
elseif op == 'probe' then
  local probes, open_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
  if st == 1 then
    if now >= ou then st, pb, ou = 2, 1, now + open_ms else allowed = 0 end
  elseif st == 2 then
    if now >= ou then pb, ou = 1, now + open_ms      -- the earlier probes never came back
    elseif pb < probes then pb = pb + 1
    else allowed = 0 end
  end
elseif op == 'cooldown' then
  local until_ms = now + tonumber(ARGV[3])
  if until_ms > cd then cd = until_ms end             -- a longer cooldown is never shortened
end

if op ~= 'view' then
  redis.call('HSET', key, 'st', st, 'fw', fmt(fw), 'fc', fc,
             'ou', fmt(ou), 'pb', pb, 'cd', fmt(cd))
  redis.call('PEXPIRE', key, 86400000)
end
local open_left, cool_left = 0, 0
if st ~= 0 and ou > now then open_left = ou - now end
if cd > now then cool_left = cd - now end
return {st, fmt(open_left), fmt(cool_left), allowed}
