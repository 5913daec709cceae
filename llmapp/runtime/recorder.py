"""The app server's side of monitoring: each finished request is counted twice in memory (cheap, on
the event loop), for the application's series in Redis (flushed by one background task) and for
Prometheus (served on /metrics). Nothing here makes a network round trip on the request path.

Prometheus names follow the OpenTelemetry GenAI semantic conventions where one exists
(gen_ai.server.request.duration, gen_ai.server.time_to_first_token,
gen_ai.server.time_per_output_token, gen_ai.operation.name, gen_ai.token.type); the rest are llmapp_*.
"""

import asyncio
import logging
import time
from collections import Counter

import redis
from prometheus_client import CollectorRegistry, Gauge, Histogram, Summary
from prometheus_client import Counter as PromCounter
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector

from . import metrics

log = logging.getLogger("llmapp.server")
OPERATIONS = {"chat": "chat", "completion": "text_completion"}
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class BatchSizes:
    """A Prometheus collector of the engine's forward passes by batch size (read when scraped)."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        sizes: Counter = getattr(self.engine, "batch_sizes", Counter())
        family = HistogramMetricFamily("llmapp_batch_size", "Requests per forward pass of the engine.")
        cumulative, buckets = 0, []
        for bound in BATCH_BUCKETS:
            cumulative = sum(count for size, count in sizes.items() if size <= bound)
            buckets.append((str(bound), cumulative))
        total = sum(sizes.values())
        buckets.append(("+Inf", total))
        family.add_metric([], buckets, sum_value=sum(size * count for size, count in sizes.items()))
        yield family


class Recorder:
    def __init__(self, application_id: str, engine, admission, flush_s: float = metrics.FLUSH_S):
        self.application_id, self.engine, self.flush_s = application_id, engine, flush_s
        self.aggregator = metrics.Aggregator()
        self.batches_flushed: Counter = Counter()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = PromCounter(
            "llmapp_requests", "Requests answered, by outcome and API key label.", ["outcome", "api_key"], registry=r
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time to answer a whole request.",
            ["gen_ai_operation_name"],
            buckets=metrics.LATENCY_S,
            registry=r,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Streams: time from the request to its first token.",
            ["gen_ai_operation_name"],
            buckets=metrics.TTFT_S,
            registry=r,
        )
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Streams: time per output token after the first.",
            ["gen_ai_operation_name"],
            buckets=metrics.TPOT_S,
            registry=r,
        )
        self.tokens = PromCounter(
            "llmapp_tokens", "Tokens of answered requests.", ["gen_ai_token_type", "api_key"], registry=r
        )
        self.cache = PromCounter("llmapp_cache_lookups", "Response cache lookups.", ["result"], registry=r)
        self.stages = Summary(
            "llmapp_pipeline_stage_duration_seconds", "Time spent in each stage of the request path.", ["stage"],
            registry=r,
        )  # fmt: skip
        in_flight = Gauge("llmapp_requests_in_flight", "Requests admitted and not yet answered.", registry=r)
        in_flight.set_function(lambda: admission.in_flight)
        r.register(BatchSizes(engine))
        ProcessCollector(registry=r)

    def observe(self, ctx) -> None:
        """Count one finished request (a Context of the pipeline)."""
        now = time.perf_counter()
        seconds = now - ctx.started
        ttft = tpot = None
        if ctx.first_token_at is not None:
            ttft = ctx.first_token_at - ctx.started
            if ctx.completion_tokens > 1 and ctx.status == 200:
                tpot = (now - ctx.first_token_at) / (ctx.completion_tokens - 1)
        label = None if ctx.key is None else (ctx.key.label or f"key {ctx.key.id}")
        self.aggregator.add(
            metrics.request_fields(
                ctx.status,
                seconds,
                label,
                ctx.prompt_tokens,
                ctx.completion_tokens,
                ctx.cache_status,
                ttft,
                tpot,
                ctx.timings,
            )
        )
        operation = OPERATIONS.get(ctx.kind, ctx.kind)
        outcome = metrics.outcome(ctx.status)
        self.requests.labels(outcome, label or "").inc()
        self.duration.labels(operation).observe(seconds)
        if ttft is not None:
            self.ttft.labels(operation).observe(ttft)
        if tpot is not None:
            self.tpot.labels(operation).observe(tpot)
        if outcome == "2xx":
            self.tokens.labels("input", label or "").inc(ctx.prompt_tokens)
            self.tokens.labels("output", label or "").inc(ctx.completion_tokens)
        if ctx.cache_status:
            self.cache.labels("hit" if ctx.cache_status == "HIT" else "miss").inc()
        for stage, spent in ctx.timings.items():
            self.stages.labels(stage).observe(spent)

    def _batches(self) -> None:
        """The engine's forward passes since the last flush, by size."""
        sizes = Counter(getattr(self.engine, "batch_sizes", {}))
        new = sizes - self.batches_flushed
        self.batches_flushed = sizes
        if new:
            self.aggregator.add({f"batch|{size}": count for size, count in new.items()})

    async def flush(self, connection) -> bool:
        """Write what was counted to Redis. On failure it is kept for the next flush (never lost)."""
        self._batches()
        taken = self.aggregator.take()
        try:
            await metrics.write_async(connection, self.application_id, taken)
        except redis.RedisError:
            self.aggregator.give_back(taken)
            return False
        return True

    async def run(self, connection) -> None:
        """Flush every flush_s, at the same phase as the 10-second buckets."""
        while True:
            await asyncio.sleep(self.flush_s - time.time() % self.flush_s)
            await self.flush(connection)
