"""Quotas an app server enforces: requests and tokens per minute, tokens per day and per month, for the
request's API key, its application and the application's owner (across their applications).

Every limit's state lives in Redis and changes in one Lua script per request, so replicas, gateways
and hosts share it exactly. A rate is a token bucket (it holds its limit, refills at limit per minute:
a burst of exactly the limit passes, then one more each 60/limit s); a budget is a counter per UTC day
or month. Time is Redis's own clock, so hosts whose clocks differ agree.

A request reserves one request and its tokens (prompt plus ``max_tokens``) when it is admitted; when
it ends, however it ends, the settlement gives back what it did not use (or takes what it used past
the reservation) and appends its usage to the usage stream, in one script again. A cache hit costs
one request and no tokens (it used no model). Limits arrive with the keys, signed by the platform
(runtime/keys.py), so a change applies to the next request.
"""

import asyncio
import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

import redis

from .. import keyspace
from .errors import APIError

log = logging.getLogger("llmapp.server")

KINDS = ("rpm", "tpm", "day", "month")
UNITS = {"rpm": "requests per minute", "tpm": "tokens per minute", "day": "tokens per day", "month": "tokens per month"}
RATES = ("rpm", "tpm")
WITHOUT_REDIS = ("serve", "refuse")  # what a server does with a limited key while Redis is unreachable
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
_ADMIT = (
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
_SETTLE = (
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


def amount(capacity: int, kind: str) -> str:
    """ "5 requests per minute", "1 token per day"."""
    unit = UNITS[kind] if capacity != 1 else UNITS[kind].replace("s per", " per", 1)
    return f"{capacity:,} {unit}"


@dataclass(frozen=True)
class Limit:
    """One limit of one scope: "key laptop: 5 requests per minute"."""

    scope: str  # key, application or user
    scope_id: str
    name: str
    kind: str  # one of KINDS
    capacity: int

    @property
    def redis_key(self) -> str:
        return keyspace.quota(self.scope, self.scope_id, self.kind)

    def describe(self) -> str:
        return f"{self.scope} {self.name}: {amount(self.capacity, self.kind)}"


def limits_of(scope: str, scope_id, name: str, values: dict | None) -> list[Limit]:
    """The limits a scope's published values set (a kind left out or null has none)."""
    values = values or {}
    return [Limit(scope, str(scope_id), name, kind, int(values[kind])) for kind in KINDS if values.get(kind)]


@dataclass(frozen=True)
class Policy:
    """An application's limits as the platform published them (with its keys): its own, its owner's, and
    each key's. JSON: {"application": {"name", "limits"}, "user": {"id", "name", "limits"}, "keys": {id: limits}}."""

    application: list[Limit] = field(default_factory=list)
    user: list[Limit] = field(default_factory=list)
    keys: dict[str, dict] = field(default_factory=dict)
    owner_id: str = ""

    @classmethod
    def parse(cls, application_id, text: str | None) -> "Policy":
        if not text:
            return cls()
        data = json.loads(text)
        application, user = data.get("application") or {}, data.get("user") or {}
        return cls(
            limits_of("application", application_id, application.get("name", ""), application.get("limits")),
            limits_of("user", user.get("id", ""), user.get("name", ""), user.get("limits")),
            {str(k): v for k, v in (data.get("keys") or {}).items()},
            str(user.get("id", "")),
        )

    def limits_for(self, key) -> list[Limit]:
        """Every limit a request with ``key`` (a keys.KeyInfo) is held to: the key's first, so a refusal
        names the narrowest scope."""
        own = limits_of("key", key.id, key.label or f"#{key.id}", self.keys.get(str(key.id)))
        return own + self.application + self.user


def duration(ms: int) -> str:
    """OpenAI's way of writing a reset time: "20ms", "1s", "6m0s", "1h2m3s"."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = math.ceil(ms / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def rate_headers(answer) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers from an admission's answer (those of the tightest rate limits)."""
    headers = {}
    for what, (limit, remaining, reset) in (("requests", answer[3:6]), ("tokens", answer[6:9])):
        if limit >= 0:
            headers[f"x-ratelimit-limit-{what}"] = str(limit)
            headers[f"x-ratelimit-remaining-{what}"] = str(max(remaining, 0))
            headers[f"x-ratelimit-reset-{what}"] = duration(reset)
    return headers


def refusal(limit: Limit, retry_ms: int, tokens: int, headers: dict) -> APIError:
    """The 429 a request over ``limit`` gets: in OpenAI's shape, naming the limit, with Retry-After."""
    if retry_ms < 0:
        return APIError(
            429,
            f"This request needs {tokens} tokens (its prompt plus max_tokens), more than the limit of "
            f"{limit.describe()}: lower max_tokens or shorten the prompt.",
            "tokens",
            code="rate_limit_exceeded",
            headers=headers,
        )
    retry_s = max(1, math.ceil(retry_ms / 1000))
    budget = limit.kind in ("day", "month")
    return APIError(
        429,
        f"{'Budget' if budget else 'Rate limit'} reached for {limit.describe()}. Retry in {duration(retry_ms)}.",
        "insufficient_quota" if budget else ("requests" if limit.kind == "rpm" else "tokens"),
        code="insufficient_quota" if budget else "rate_limit_exceeded",
        headers={**headers, "Retry-After": str(retry_s)},
    )


@dataclass(frozen=True)
class Held:
    """The limits a key is held to, with what the scripts are given for them (made once per policy)."""

    limits: list[Limit]
    keys: list[str]
    spec: str  # "rpm=5,tpm=1000,…", in the order of ``keys``
    token_keys: list[str]  # the token limits' (what a settlement corrects)
    token_spec: str

    @classmethod
    def of(cls, limits: list[Limit]) -> "Held":
        tokens = [limit for limit in limits if limit.kind != "rpm"]
        return cls(
            limits,
            [limit.redis_key for limit in limits],
            ",".join(f"{limit.kind}={limit.capacity}" for limit in limits),
            [limit.redis_key for limit in tokens],
            ",".join(f"{limit.kind}={limit.capacity}" for limit in tokens),
        )


NOTHING_HELD = Held([], [], "", [], "")


@dataclass
class Charge:
    """What an admitted request reserved, settled when it ends."""

    at_ms: int  # the admission's time, which says whose day and month the tokens count to
    held: Held
    reserved: int
    headers: dict[str, str] = field(default_factory=dict)


def today(at_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at_ms / 1000))


class Quotas:
    """Admits and settles one application's requests against its limits, in Redis."""

    RETRY_S = 1.0  # after a Redis error, don't ask again for this long
    PENDING_MAX = 10_000  # settlements kept while Redis is unreachable, sent when it is back

    def __init__(self, connection, application_id, without_redis: str = "serve"):
        self.connection, self.application_id, self.without_redis = connection, str(application_id), without_redis
        self.policy = Policy()
        self.policy_text: str | None = None
        self.held: dict[tuple, Held] = {}  # key → the limits it is held to, under this policy
        self._admit = connection.register_script(_ADMIT)
        self._settle = connection.register_script(_SETTLE)
        self.unreachable_until = 0.0
        self.pending: deque[tuple[list, list]] = deque(maxlen=self.PENDING_MAX)
        self.settling: set[asyncio.Task] = set()
        self.sending = asyncio.Lock()  # one sender of the pending settlements at a time

    def update(self, text: str | None) -> None:
        """The published policy (verified by the key checker); parsed only when it changed."""
        if text != self.policy_text:
            self.policy_text, self.policy = text, Policy.parse(self.application_id, text)
            self.held = {}

    async def admit(self, key, tokens: int, *, now_ms: str = "") -> Charge:
        """Charge one request and ``tokens`` to every limit ``key`` is held to, or none.

        :raise APIError: 429 over a limit (naming it); 503 when Redis is unreachable and the setting
            says to refuse.
        """
        held = self.held.get((key.id, key.label))
        if held is None:
            held = self.held[(key.id, key.label)] = Held.of(self.policy.limits_for(key))
        if not held.limits:
            return Charge(int(time.time() * 1000), held, tokens)
        try:
            if time.monotonic() < self.unreachable_until:
                raise redis.ConnectionError("unreachable a moment ago")
            answer = [int(x) for x in (await self._admit(keys=held.keys, args=[now_ms, tokens, held.spec])).split(b",")]
        except redis.RedisError as e:
            return self._without_redis(e, tokens)
        headers = rate_headers(answer)
        if answer[0]:
            raise refusal(held.limits[answer[0] - 1], answer[1], tokens, headers)
        return Charge(answer[2], held, tokens, headers)

    def _without_redis(self, error, tokens: int) -> Charge:
        if not self.unreachable_until or time.monotonic() >= self.unreachable_until:
            log.warning(
                "Redis is unreachable (%s): %s until it is back",
                error,
                "serving keys that have limits without them"
                if self.without_redis == "serve"
                else "refusing keys with limits",
            )
        self.unreachable_until = time.monotonic() + self.RETRY_S
        if self.without_redis == "refuse":
            raise APIError(
                503,
                "The quota store is unreachable, and this application's limits can't be checked; retry shortly.",
                "server_error",
                headers={"Retry-After": "5"},
            )
        return Charge(int(time.time() * 1000), NOTHING_HELD, tokens)

    def settle_later(self, charge: Charge, key_id, used: dict[str, int], *, now_ms: str = "") -> None:
        """Settle in the background (the response has ended; nothing waits for this)."""
        task = asyncio.get_running_loop().create_task(self.settle(charge, key_id, used, now_ms=now_ms))
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    async def settle(self, charge: Charge, key_id, used: dict[str, int], *, now_ms: str = "") -> None:
        """Give back what the request did not use, and append its usage (``used``: input, output, cached)."""
        held = charge.held
        spent = used["input"] + used["output"]
        owner, day = self.policy.owner_id, today(charge.at_ms)
        entry = {"a": self.application_id, "k": key_id, "u": owner, "d": day, "r": 1, **used}
        back = charge.reserved - spent
        corrected = back and held.token_keys  # nothing to give back or take: only the usage to record
        keys = [*held.token_keys, keyspace.usage()] if corrected else [keyspace.usage()]
        args = [now_ms, charge.at_ms, back, held.token_spec if corrected else ""]
        args += [part for item in entry.items() for part in item]
        self.pending.append((keys, args))
        async with self.sending:
            try:
                while self.pending:
                    keys, args = self.pending[0]
                    await self._settle(keys=keys, args=args)
                    self.pending.popleft()
            except redis.RedisError as e:
                log.warning("Redis is unreachable (%s): %d requests' usage kept to record later", e, len(self.pending))

    async def close(self) -> None:
        """Wait for the settlements under way (at shutdown)."""
        if self.settling:
            await asyncio.wait(list(self.settling), timeout=5)
