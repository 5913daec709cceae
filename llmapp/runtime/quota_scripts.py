"""The two Lua scripts of the quotas (runtime/quotas.py), each run atomically by Redis: ``ADMIT`` checks and
charges every limit of a request, or none; ``SETTLE`` corrects the charge when the request has ended and
appends its usage to the usage stream."""

USAGE_STREAM_MAX = 200_000  # entries the usage stream keeps when the platform has not drained it

# Shared by both scripts: Redis's clock (or a given one, for the tests), a UTC day's and month's
# bounds (Howard Hinnant's civil-date algorithms), and a token bucket's level now.
_PRELUDE = """
local DAY = 86400000
local function clock(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function period(kind, ms)  -- the counter's suffix and the period's end (ms)
  local day = math.floor(ms / DAY)
  if kind == 'day' then return tostring(day), (day + 1) * DAY end
  local z = day + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  local finish = m == 12 and days_from_civil(y + 1, 1, 1) or days_from_civil(y, m + 1, 1)
  return tostring(y * 100 + m), finish * DAY
end
-- A bucket is one string, "level:time", its level in 1/60000 of a request or token: it refills by its
-- capacity (per minute) each ms, so every quantity is a whole number, exact in a double up to 2^53 (a
-- capacity up to 1.5e11).
local U = 60000
local function level(value, cap, now)  -- a bucket's level now, and the time it was last written
  local l, t
  if value then l, t = string.match(value, '^(-?%d+):(%d+)$') end
  l, t = tonumber(l), tonumber(t)
  if not l then return cap * U, now end
  if now > t then l = l + (now - t) * cap; t = now end
  return math.min(l, cap * U), t
end
local function write(key, cap, l, t)
  local full_in = math.ceil((cap * U - math.min(l, cap * U)) / cap)
  redis.call('SET', key, string.format('%.0f:%.0f', l, t), 'PX', full_in + U)
end
local function limits(spec)  -- "rpm=5,day=1000": kinds and capacities
  local kinds, caps = {}, {}
  for kind, cap in string.gmatch(spec, '(%a+)=(%d+)') do
    kinds[#kinds + 1], caps[#caps + 1] = kind, tonumber(cap)
  end
  return kinds, caps
end
local function names(kinds, ms)  -- each limit's key: a bucket's own, a budget's counter of the period
  local out, finishes = {}, {}
  for i = 1, #kinds do
    if kinds[i] == 'rpm' or kinds[i] == 'tpm' then out[i] = KEYS[i]
    else
      local suffix
      suffix, finishes[i] = period(kinds[i], ms)
      out[i] = KEYS[i] .. ':' .. suffix
    end
  end
  return out, finishes
end
"""

# KEYS: each limit's key. ARGV: the time ('' for Redis's), the request's tokens, the limits ("rpm=5,…",
# in the order of KEYS). All limits pass, and all are charged, or none is. Answers: the failed limit
# (1-based, 0 for none), ms until it would pass (-1: never, the request is larger than the limit), the
# time, then for the headers the requests' limit, remaining and ms to full, and the same for tokens (-1:
# no limit), as one comma-separated string (cheaper to read than an array). One read (MGET) and one
# write per limit.
ADMIT = (
    _PRELUDE
    + """
local now, tokens = clock(ARGV[1]), tonumber(ARGV[2])
local kinds, caps = limits(ARGV[3])
local keys, finishes = names(kinds, now)
local values = redis.call('MGET', unpack(keys))
local levels, times, failed, retry = {}, {}, 0, 0
for i = 1, #kinds do
  local kind, cap = kinds[i], caps[i]
  local cost = kind == 'rpm' and 1 or tokens
  if kind == 'rpm' or kind == 'tpm' then
    levels[i], times[i] = level(values[i], cap, now)
    if failed == 0 and cost > 0 and cost * U > levels[i] then
      failed = i
      retry = cost > cap and -1 or math.ceil((cost * U - levels[i]) / cap)
    end
  else
    levels[i] = cap - tonumber(values[i] or '0')
    if failed == 0 and cost > 0 and cost > levels[i] then
      failed = i
      retry = cost > cap and -1 or finishes[i] - now
    end
  end
end
local head = {-1, -1, -1, -1, -1, -1}
for i = 1, #kinds do
  local kind, cap = kinds[i], caps[i]
  local cost = kind == 'rpm' and 1 or tokens
  if kind == 'rpm' or kind == 'tpm' then
    if failed == 0 then
      levels[i] = levels[i] - cost * U
      write(keys[i], cap, levels[i], times[i])
    end
    local at = kind == 'rpm' and 1 or 4
    local remaining = math.floor(levels[i] / U)
    if head[at] < 0 or remaining < head[at + 1] then
      head[at], head[at + 1], head[at + 2] = cap, remaining, math.ceil((cap * U - levels[i]) / cap)
    end
  elseif failed == 0 and cost > 0 then
    if redis.call('INCRBY', keys[i], cost) == cost then  -- the period's first: it goes a day after it ends
      redis.call('PEXPIREAT', keys[i], finishes[i] + DAY)
    end
  end
end
return table.concat({failed, retry, string.format('%.0f', now), head[1], head[2], head[3], head[4], head[5],
  head[6]}, ',')
"""
)

# KEYS: the token limits' keys, then the usage stream. ARGV: the time ('' for Redis's), the admission's
# time, the tokens to give back (negative: to take), the token limits ("tpm=…,day=…"), then the usage
# entry's fields and values.
SETTLE = (
    _PRELUDE
    + f"""
local now, at, back = clock(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local kinds, caps = limits(ARGV[4])
if back ~= 0 and #kinds > 0 then
  local keys = names(kinds, at)
  local values = redis.call('MGET', unpack(keys))
  for i = 1, #kinds do
    if kinds[i] == 'tpm' then
      local l, t = level(values[i], caps[i], now)
      write(keys[i], caps[i], math.min(l + back * U, caps[i] * U), t)
    elseif values[i] then
      redis.call('INCRBY', keys[i], -back)
    end
  end
end
local entry = {{}}
for i = 5, #ARGV do entry[#entry + 1] = ARGV[i] end
redis.call('XADD', KEYS[#kinds + 1], 'MAXLEN', '~', '{USAGE_STREAM_MAX}', '*', unpack(entry))
return 0
"""
)
