"""The Lua scripts of the Redis broker: each one atomic step that every instance sees whole."""

# KEYS: id counter, topic stream, topic lease, the topic's newest evicted id.
# ARGV: maxlen, floor id, requested id or "", lease token or "", lease ttl ms, event, data, ts.
PUBLISH = """
local token = ARGV[4]
if token ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder == false then
    redis.call('SET', KEYS[3], token, 'PX', ARGV[5])
  elseif holder ~= token then
    return redis.error_reply('FENCED')
  end
end
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local id
if ARGV[3] ~= '' then
  id = tonumber(ARGV[3])
  if id <= last then
    return redis.error_reply('IDORDER ' .. string.format('%.0f', last))
  end
else
  local now = redis.call('TIME')
  id = math.max(last + 1, tonumber(now[1]) * 1000000 + tonumber(now[2]), tonumber(ARGV[2]) + 1)
end
local sid = string.format('%.0f', id)
redis.call('SET', KEYS[1], sid)
local excess = redis.call('XLEN', KEYS[2]) + 1 - tonumber(ARGV[1])
if excess > 0 then
  local evicted = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', excess)
  redis.call('SET', KEYS[4], evicted[#evicted][1])
end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], sid .. '-0', 'e', ARGV[6], 'd', ARGV[7], 't', ARGV[8])
return sid
"""

# Keep the lease while it is ours; take it back when it expired and nobody took it meanwhile
# (after a Redis restart, say): the fence only has to exclude a *different* holder.
RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# The ledger primitive's admission (Broker.ledger_reserve), in one step for every instance: the
# sliding window is a hash of one-second buckets (`r<second>` requests, `t<second>` tokens), the
# day's spend a hash of counters. Times are Redis's own, so instances agree on the window and day.
# KEYS: the account's window, the spend key prefix (the day is appended).
# ARGV: account, rpm, tpm, daily nano-dollars ('' for no limit), tokens, nano-dollars, window, days.
RESERVE = """
local t = redis.call('TIME')
local second = tonumber(t[1])
local now = second + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[7])
local day = math.floor(second / 86400)
local daykey = KEYS[2] .. day
local account, tokens, nusd = ARGV[1], tonumber(ARGV[5]), tonumber(ARGV[6])
local buckets, seconds, requests, used = {}, {}, 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local s = tonumber(string.sub(fields[i], 2))
  local n = tonumber(fields[i + 1])
  if s <= second - window then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    if buckets[s] == nil then
      buckets[s] = {0, 0}
      table.insert(seconds, s)
    end
    if string.sub(fields[i], 1, 1) == 'r' then
      buckets[s][1] = buckets[s][1] + n
      requests = requests + n
    else
      buckets[s][2] = buckets[s][2] + n
      used = used + n
    end
  end
end
table.sort(seconds)
local function wait(index, need)
  local freed = 0
  for _, s in ipairs(seconds) do
    freed = freed + buckets[s][index]
    if freed >= need then
      return math.max(1, math.ceil(s + window - now))
    end
  end
  return window
end
if ARGV[4] ~= '' then
  local budget = tonumber(ARGV[4])
  local spent = tonumber(redis.call('HGET', daykey, 'k|' .. account .. '|nusd') or '0')
  local held = tonumber(redis.call('HGET', daykey, 'k|' .. account .. '|reserved') or '0')
  if spent + held + nusd > budget then
    if held > 0 and spent + nusd <= budget then
      return {'budget', 1}
    end
    return {'budget', math.max(1, math.ceil((day + 1) * 86400 - now))}
  end
end
if ARGV[2] ~= '' and requests + 1 > tonumber(ARGV[2]) then
  return {'rpm', wait(1, requests + 1 - tonumber(ARGV[2]))}
end
if ARGV[3] ~= '' and used + tokens > tonumber(ARGV[3]) then
  return {'tpm', wait(2, used + tokens - tonumber(ARGV[3]))}
end
redis.call('HINCRBY', KEYS[1], 'r' .. second, 1)
redis.call('HINCRBY', KEYS[1], 't' .. second, ARGV[5])
redis.call('EXPIRE', KEYS[1], window * 2)
redis.call('HINCRBY', daykey, 'k|' .. account .. '|reserved', ARGV[6])
redis.call('EXPIRE', daykey, 86400 * tonumber(ARGV[8]))
return {'ok', second, day}
"""

# KEYS: the account's window, the day's spend. ARGV: the reservation's second, the tokens to add
# to its bucket (while the bucket is in the window), days kept, then counter/increment pairs.
SETTLE = """
if redis.call('HEXISTS', KEYS[1], 't' .. ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 't' .. ARGV[1], ARGV[2])
end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[2], 86400 * tonumber(ARGV[3]))
return redis.call('HGETALL', KEYS[2])
"""
