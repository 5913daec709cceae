"""What keeps the gateway's view of the platform current: routes from Redis (a change is announced on
a channel and applied at once; the whole table is read again every ``RELOAD_S`` in case a message was
lost), which application a key reaches (asked of Redis, remembered briefly), and the replicas' health.
"""

import asyncio
import logging
import time

import aiohttp
import redis

from .. import keyspace
from ..runtime.keys import digest
from .table import Replica, Route, RoutingTable, application_of_key, parse_route

log = logging.getLogger("llmapp.gateway")

RELOAD_S = 10.0
HEALTH_INTERVAL_S = 2.0
HEALTH_TIMEOUT_S = 2.0
# How long an answer about a key is reused. Only routing depends on it: the replica checks the key
# again on every request, so a key revoked meanwhile is refused there at once.
KEY_TTL_S = 2.0


class RouteWatcher:
    """Loads the table, then follows ``keyspace.routes_changed()``; reloads it all every RELOAD_S.
    ``connection`` answers commands; ``listener`` (no read timeout) holds the subscription."""

    def __init__(self, connection, listener, table: RoutingTable, key: bytes):
        self.connection, self.listener, self.table, self.key = connection, listener, table, key
        self.loaded = asyncio.Event()

    def _parsed(self, application_id: str, raw) -> Route | None:
        try:
            return parse_route(raw, self.key)
        except ValueError as e:  # the id is hex or a UUID the platform wrote, or escaped by %r
            log.warning("skipped the route of application %r: %s", application_id, e)
            return None

    async def reload(self) -> None:
        published = await self.connection.hgetall(keyspace.routes())
        routes = {i.decode(errors="replace"): self._parsed(i.decode(errors="replace"), v) for i, v in published.items()}
        self.table.put_all({i: route for i, route in routes.items() if route is not None})
        self.loaded.set()

    async def reload_one(self, application_id: str) -> None:
        raw = await self.connection.hget(keyspace.routes(), application_id)
        route = self._parsed(application_id, raw) if raw is not None else None
        if route is not None:
            self.table.put(route, application_id)

    async def run(self) -> None:
        while True:
            try:
                async with self.listener.pubsub() as pubsub:
                    await pubsub.subscribe(keyspace.routes_changed())
                    await self.reload()  # after subscribing: no change falls between the two
                    next_reload = time.monotonic() + RELOAD_S
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            changed = message["data"].decode()
                            await (self.reload() if changed == "*" else self.reload_one(changed))
                        if time.monotonic() >= next_reload:
                            await self.reload()
                            next_reload = time.monotonic() + RELOAD_S
            except (redis.RedisError, OSError) as e:
                log.warning("Redis is unreachable (%s): routing with the table as last read", e)
                await asyncio.sleep(1.0)
            except Exception:  # never a frozen table without a word: say why, and start again
                log.exception("the route watcher failed; starting it again")
                await asyncio.sleep(1.0)


class KeyUnknown(Exception):
    """Redis can't be asked and the key was not seen lately."""


class KeyRoutes:
    """Which application a key reaches: ``keyspace.key_routes()``, asked of Redis, reused KEY_TTL_S."""

    def __init__(self, connection, key: bytes):
        self.connection, self.key = connection, key
        self.seen: dict[str, tuple[str | None, float]] = {}  # digest → (application id or None, when)

    async def application_of(self, key: str) -> str | None:
        """:raise KeyUnknown: Redis is unreachable and the key's answer was never seen."""
        key_digest = digest(key)
        seen = self.seen.get(key_digest)
        now = time.monotonic()
        if seen is not None and now - seen[1] < KEY_TTL_S:
            return seen[0]
        try:
            value = await self.connection.hget(keyspace.key_routes(), key_digest)
        except (redis.RedisError, OSError) as e:
            if seen is None:
                raise KeyUnknown() from e
            return seen[0]  # the last answer, while Redis is away
        if len(self.seen) > 100_000:  # a flood of made-up keys must not grow this without bound
            self.seen.clear()
        application_id = application_of_key(self.key, key_digest, value) if value is not None else None
        self.seen[key_digest] = (application_id, now)
        return application_id


async def check_health(session: aiohttp.ClientSession, replica: Replica) -> bool:
    """Whether the replica's /health answers 200 now; recorded on it."""
    try:
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
        async with session.get(f"{replica.url}/health", timeout=timeout) as answer:
            healthy = answer.status == 200
    except (aiohttp.ClientError, TimeoutError):
        healthy = False
    was = replica.healthy
    replica.checked(healthy)
    if was is not None and was is not replica.healthy:
        log.warning("replica %s at %s is %s", replica.id, replica.url, "healthy" if healthy else "not answering")
    return replica.healthy


class HealthChecks:
    """Asks each running replica's /health every HEALTH_INTERVAL_S; one that does not answer 200 gets
    no new requests until it does."""

    def __init__(self, session: aiohttp.ClientSession, table: RoutingTable):
        self.session, self.table = session, table

    async def run(self) -> None:
        while True:
            replicas = list(self.table.replicas())
            if replicas:
                for failure in await asyncio.gather(
                    *(check_health(self.session, replica) for replica in replicas), return_exceptions=True
                ):
                    if isinstance(failure, Exception):
                        log.error("a health check failed: %r", failure)
            await asyncio.sleep(HEALTH_INTERVAL_S)
