-- Extends a running request's concurrency leases, so that only a replica
-- that stopped refreshing (it died) loses them.
--
-- KEYS[i]  concurrency keys
-- ARGV[1]  lease id, ARGV[2] lease length in ms
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local lease_ms = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease_ms, ARGV[1])
  redis.call('PEXPIRE', key, lease_ms * 2)
end
return 1
