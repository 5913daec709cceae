"""What the gateway answered, counted per application and release, and added to each application's
metrics series (``gw|<release>|…`` fields, runtime/metrics.py) every FLUSH_S: the Monitoring pane
shows a canary's requests, errors and latency beside the release deployed, as clients saw them."""

import asyncio
import contextlib
import logging
from collections import defaultdict

import redis

from ..runtime import metrics

log = logging.getLogger("llmapp.gateway")

FLUSH_S = 2.0


class ReleaseCounts:
    def __init__(self, connection):
        self.connection = connection
        self.pending: defaultdict[str, metrics.Aggregator] = defaultdict(metrics.Aggregator)
        self.failing = False

    def add(self, application_id: str, release: int | None, status: int, seconds: float) -> None:
        if release is not None:
            self.pending[application_id].add(metrics.release_fields(release, status, seconds))

    async def flush(self) -> None:
        pending, self.pending = self.pending, defaultdict(metrics.Aggregator)
        for application_id, counted in pending.items():
            taken = counted.take()
            try:
                await metrics.write_async(self.connection, application_id, taken)
                self.failing = False
            except redis.RedisError as e:  # kept for the next flush: nothing is lost or counted twice
                self.pending[application_id].give_back(taken)
                if not self.failing:
                    log.warning("the per-release counts wait for Redis: %s", e)
                self.failing = True

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(FLUSH_S)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):  # on shutdown, what is left, once
                await asyncio.shield(self.flush())
