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
from .quota_scripts import ADMIT, SETTLE

log = logging.getLogger("llmapp.server")

KINDS = ("rpm", "tpm", "day", "month")
UNITS = {"rpm": "requests per minute", "tpm": "tokens per minute", "day": "tokens per day", "month": "tokens per month"}
RATES = ("rpm", "tpm")
WITHOUT_REDIS = ("serve", "refuse")  # what a server does with a limited key while Redis is unreachable


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


UPSTREAM_MAX_TOKENS = 4096  # what an upstream's call without max_tokens reserves (at most its context)


def _text_bytes(content) -> int:
    """The bytes of a message's text: a string, or its text parts (an image's data is not text)."""
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        parts = [
            part for part in content if isinstance(part, dict) and part.get("type", "text") in ("text", "input_text")
        ]
        return sum(len(str(part.get("text") or "").encode()) for part in parts)
    return 0


def estimated_prompt_tokens(body: dict) -> int:
    """A prompt's tokens where no tokenizer counted them (an upstream's): about four bytes a token and a
    few for each message's framing; a prompt of token ids, its length. The settlement corrects it with
    the engine's own count."""
    prompt = body.get("prompt")
    if prompt is not None:
        prompts = prompt if isinstance(prompt, list) and not all(isinstance(p, int) for p in prompt) else [prompt]
        total = 0
        for one in prompts:
            total += len(one.encode()) // 4 + 1 if isinstance(one, str) else len(one) if isinstance(one, list) else 0
        return max(total, 1)
    messages = [message for message in body.get("messages") or () if isinstance(message, dict)]
    return sum(_text_bytes(message.get("content")) for message in messages) // 4 + 4 * len(messages) + 1


def _whole(value, low: int, high: int) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high else None


def reservation(body: dict, max_tokens: int, prompt_tokens: int, passthrough: bool, max_context: int):
    """What a request reserves: (its prompt's tokens, those plus all it may generate). An upstream that
    judges its own parameters (``passthrough``) is held to what the body asks of it: ``max_tokens`` (or,
    without one, up to UPSTREAM_MAX_TOKENS) for each of ``n`` choices of each prompt of a batch."""
    prompt = prompt_tokens or estimated_prompt_tokens(body)
    if not passthrough:
        return prompt, prompt + max_tokens
    limit = _whole(body.get("max_completion_tokens", body.get("max_tokens")), 1, 10**9)
    limit = limit or min(max_context or UPSTREAM_MAX_TOKENS, UPSTREAM_MAX_TOKENS)
    choices = _whole(body.get("n"), 1, 128) or 1
    batch = body.get("prompt")
    prompts = len(batch) if isinstance(batch, list) and batch and not isinstance(batch[0], int) else 1
    return prompt, prompt + limit * choices * prompts


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
        self._admit = connection.register_script(ADMIT)
        self._settle = connection.register_script(SETTLE)
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
        if self.sending.locked():
            return  # the sender under way takes it with its next batch
        async with self.sending:
            while self.pending:
                await self._send(list(self.pending))

    async def _send(self, batch: list[tuple[list, list]]) -> None:
        """The settlements waiting, in one round trip (a pipeline): however many requests end at once,
        one sender keeps up. Kept to send again only when Redis could not be reached (not run at all);
        a timeout or an error of Redis's drops them (sent twice, they would count twice)."""
        for _ in batch:
            self.pending.popleft()
        try:
            async with self.connection.pipeline(transaction=False) as pipe:
                for keys, args in batch:
                    await self._settle(keys=keys, args=args, client=pipe)
                await pipe.execute()
        except redis.ConnectionError as e:
            self.pending.extendleft(reversed(batch))
            log.warning("Redis is unreachable (%s): %d requests' usage kept to record later", e, len(self.pending))
            await asyncio.sleep(self.RETRY_S)
        except redis.RedisError as e:
            log.error("Redis refused the usage of %d requests (%s): not recorded", len(batch), e)

    async def close(self) -> None:
        """Wait for the settlements under way (at shutdown)."""
        if self.settling:
            await asyncio.wait(list(self.settling), timeout=5)
