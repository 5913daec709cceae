"""The server's background work: its plugin chain kept current, and its upkeep in Redis (its address,
the keys, when each key was last used). Both outlive Redis outages."""

import asyncio
import contextlib
import json
import logging
import os
import socket

import redis

from .. import keyspace
from .plugins import published
from .plugins.chain import Chain
from .served import Served
from .tasks import pause

log = logging.getLogger("llmapp.server")
HEARTBEAT_S = 5  # how often a server renews its address in Redis (it expires after 6 beats)
CHAIN_POLL_S = 1.0  # how often a server looks for a new version of its plugin chain


class ChainWatcher:
    """Keeps the server's plugin chain the one the platform published: it polls the version, and on a
    change reads, decrypts and builds the new chain off the event loop (a retrieval index takes a
    while), then swaps it in whole. Requests in flight finish on the chain they started with; none is
    dropped or held. A chain that can't be read or built leaves the current one serving, and says why."""

    def __init__(self, served: Served, connection, key: bytes):
        self.served, self.connection, self.key = served, connection, key
        self.failing = False

    def install(self, version: str | None, body: bytes | None) -> None:
        """Build and swap in a published chain (from any thread)."""
        document = published.decrypt(body, self.key) if version is not None else published.EMPTY
        chain = Chain.build(document)
        previous, self.served.chain = self.served.chain, chain
        if chain.version != previous.version:
            names = ", ".join(f"{step.name} ({step.type})" for step in chain.steps) or "none"
            log.info("plugin chain %s: %s", chain.version[:12] or "empty", names)

    def load(self, connection) -> None:
        """Before the server says it is ready: the chain published at deploy (a plain Redis client)."""
        fields = connection.hgetall(keyspace.plugin_chain(self.served.spec.app_id))
        self.install(fields.get(b"version", b"").decode() if fields else None, fields.get(b"body"))

    async def check(self) -> None:
        version = await published.version(self.connection, self.served.spec.app_id)
        if version is None or version == self.served.chain.version:
            return  # nothing published (Redis lost it: the platform publishes it again), or no change
        body = await self.connection.hget(keyspace.plugin_chain(self.served.spec.app_id), "body")
        await asyncio.to_thread(self.install, version, body)

    async def run(self) -> None:
        while True:
            await pause(CHAIN_POLL_S)
            if self.served.engine.status != "ready":
                continue
            try:
                await self.check()
                self.failing = False
            except (redis.RedisError, ValueError, KeyError, TypeError) as e:
                if not self.failing:
                    log.error("the new plugin chain could not be loaded (%s); the current one keeps serving", e)
                self.failing = True


class Upkeep:
    """The server's periodic work, which outlives Redis outages: once ready, publish where it answers
    (renewed with a TTL, so it reappears after Redis lost its data), load the keys, and write when each
    key was last used."""

    def __init__(self, served: Served, connection):
        self.served, self.connection = served, connection
        self.failing = False
        self.keys_loaded = False

    async def beat(self) -> None:
        spec, engine = self.served.spec, self.served.engine
        if engine.status != "ready":
            return
        if not self.keys_loaded:
            await self.served.keys.load()
            self.keys_loaded = True
        key = keyspace.server(spec.app_id)
        async with self.connection.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "host": spec.host,
                    "port": spec.port,
                    "pid": os.getpid(),
                    "deploy_id": spec.deploy_id,
                    "config": json.dumps(spec.config.__dict__),
                    "hostname": socket.gethostname(),
                },
            )
            pipe.expire(key, HEARTBEAT_S * 6)
            await pipe.execute()
        await self.served.keys.flush_used()

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
                if self.failing:
                    log.warning("Redis is reachable again: the server's address is published")
                self.failing = False
            except redis.RedisError as e:
                if not self.failing:
                    log.warning("Redis is unreachable (%s); the server keeps serving and retries", e)
                self.failing = True
            await pause(HEARTBEAT_S if self.served.engine.status == "ready" and not self.failing else 0.5)

    async def leave(self) -> None:
        with contextlib.suppress(redis.RedisError):
            await self.connection.delete(keyspace.server(self.served.spec.app_id))
