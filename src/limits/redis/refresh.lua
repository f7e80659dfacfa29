-- Extends a running request's concurrency leases, so that only a replica
-- that stopped refreshing (it died) loses them. A lease that is gone while
-- its request still runs (it expired during a Redis stall longer than the
-- lease, or Redis lost its data in a restart) is added back: the request
-- still holds its slot. A request that ended stops its refreshes first, so
-- at worst a late one holds the slot for one more lease.
--
-- KEYS[i]  concurrency keys
-- ARGV[1]  lease id, ARGV[2] lease length in ms
-- ARGV[3]  'extend-only' to touch no lease that is gone (the access check)
-- Returns how many leases were added back.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local lease_ms = tonumber(ARGV[2])
-- Whole milliseconds, as admit.lua scores leases (kept as integers).
local expires = math.floor(now) + lease_ms
local restored = 0
for _, key in ipairs(KEYS) do
  if ARGV[3] == 'extend-only' then
    redis.call('ZADD', key, 'XX', expires, ARGV[1])
  else
    restored = restored + redis.call('ZADD', key, expires, ARGV[1])
  end
  redis.call('PEXPIRE', key, lease_ms * 2)
end
return restored
