-- Admits one request against several limits at once, all or nothing, on
-- Redis's own clock (so replicas with skewed clocks agree).
--
-- KEYS[i]  one key per limit
-- ARGV[1]  lease id (concurrency), ARGV[2] lease length in ms
-- then four values per limit: kind, limit, period in ms, cost
--   kind 'g': a GCRA bucket (requests cost 1, tokens cost their estimate);
--             the key holds the theoretical arrival time in ms
--   kind 'c': a concurrency limit; the key is a sorted set of lease ids
--             scored by when they expire
--
-- Returns {1, remaining_1, reset_ms_1, remaining_2, ...} when admitted,
-- or {0, index of the refusing limit, retry-after in ms, what it holds
-- (tokens; 0 for requests and concurrency)}. Of several refusing limits it
-- names the one with the longest wait: a spent daily budget, not the
-- minute limit that would refuse too.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local lease, lease_ms = ARGV[1], tonumber(ARGV[2])
local next_tat = {}
local out = {1}
local refusal = nil
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 4
  local kind = ARGV[at + 1]
  local limit = tonumber(ARGV[at + 2])
  local period = tonumber(ARGV[at + 3])
  local cost = tonumber(ARGV[at + 4])
  if kind == 'c' then
    -- Leases of replicas that died without releasing them expire here.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local used = redis.call('ZCARD', key)
    if used >= limit then
      if not refusal or refusal[3] < 1000 then
        refusal = {0, i, 1000, 0}
      end
    end
    out[#out + 1] = limit - used - 1
    out[#out + 1] = 0
  else
    local interval = period / limit
    -- Counted from now, not as absolute times: `now` in milliseconds is a
    -- number so large that its last bits would round a fresh bucket's
    -- remaining count down by one.
    local owed = math.max((tonumber(redis.call('GET', key)) or now) - now, 0)
    -- A full bucket admits a cost larger than itself (a big max_tokens).
    local conforms_in = owed + math.min(cost, limit) * interval - period
    if conforms_in > 0 then
      local wait = math.ceil(conforms_in)
      if not refusal or refusal[3] < wait then
        local left = math.max(0, math.floor((period - owed) / interval + 1e-6))
        refusal = {0, i, wait, math.min(left, limit)}
      end
    end
    local debt = owed + cost * interval
    next_tat[i] = now + debt
    -- The epsilon: 59999.4 / 0.6 may come out as 99998.99999999999.
    out[#out + 1] = math.max(0, math.floor((period - debt) / interval + 1e-6))
    out[#out + 1] = math.ceil(debt)
  end
end
if refusal then
  return refusal
end
for i, key in ipairs(KEYS) do
  if next_tat[i] then
    local tat = next_tat[i]
    redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  else
    -- A whole millisecond: a sorted set this small keeps an integer score
    -- as an integer, but a fraction as text that every insert parses again
    -- for each lease it walks past (ZADD ~10 us instead of ~2 us at 64
    -- leases).
    redis.call('ZADD', key, math.floor(now) + lease_ms, lease)
    redis.call('PEXPIRE', key, lease_ms * 2)
  end
end
return out
