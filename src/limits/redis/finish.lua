-- Settles a request that has ended: each token bucket moves by the
-- difference between real usage and the estimate reserved (negative gives
-- tokens back), and each concurrency lease is released.
--
-- KEYS[i]  one key per limit
-- ARGV[1]  lease id
-- then four values per limit: kind ('g' or 'c'), limit, period in ms, delta
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
for i, key in ipairs(KEYS) do
  local at = 1 + (i - 1) * 4
  local kind = ARGV[at + 1]
  local limit = tonumber(ARGV[at + 2])
  local period = tonumber(ARGV[at + 3])
  local delta = tonumber(ARGV[at + 4])
  if kind == 'c' then
    redis.call('ZREM', key, ARGV[1])
  elseif delta ~= 0 then
    local interval = period / limit
    local tat = math.max(tonumber(redis.call('GET', key)) or now, now) + delta * interval
    if tat > now then
      redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
    else
      redis.call('DEL', key)
    end
  end
end
return 1
