"""The app server's side of monitoring. Each finished request becomes one set of fields (see
metrics.request_fields), added in memory on the event loop, twice: to what waits for the next flush to
the application's series in Redis (one background task), and to the totals since the server started,
which /metrics renders in Prometheus's format when it is scraped. Nothing here makes a network round
trip on the request path, and the two views are the same numbers by construction.

Prometheus names follow the OpenTelemetry GenAI semantic conventions where one exists
(gen_ai.server.request.duration, gen_ai.server.time_to_first_token,
gen_ai.server.time_per_output_token, the gen_ai.operation.name and gen_ai.token.type attributes);
the rest are llmapp_*.
"""

import time
from collections import Counter, defaultdict

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector

from . import metrics
from .tasks import pause

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HISTOGRAM_FAMILIES = (
    ("lat", "gen_ai_server_request_duration_seconds", "Time to answer a whole request."),
    ("ttft", "gen_ai_server_time_to_first_token_seconds", "Streams: time from the request to its first token."),
    ("tpot", "gen_ai_server_time_per_output_token_seconds", "Streams: time per output token after the first."),
)


class Recorder:
    def __init__(self, application_id: str, engine, admission, flush_s: float = metrics.FLUSH_S):
        self.application_id, self.engine, self.admission, self.flush_s = application_id, engine, admission, flush_s
        self.aggregator = metrics.Aggregator()
        self.totals: defaultdict[str, Counter] = defaultdict(Counter)  # gen_ai operation → fields, since start
        self.batches_flushed: Counter = Counter()
        self.registry = CollectorRegistry()
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    def observe(self, ctx) -> None:
        """Count one finished request (a Context of the pipeline)."""
        now, outcome = time.perf_counter(), ctx.outcome
        ttft = tpot = None
        if outcome.first_token_at is not None:
            ttft = outcome.first_token_at - ctx.started
            if outcome.completion_tokens > 1 and outcome.status == 200:
                tpot = (now - outcome.first_token_at) / (outcome.completion_tokens - 1)
        fields = metrics.request_fields(
            outcome.status,
            now - ctx.started,
            None if ctx.key is None else (ctx.key.label or f"key {ctx.key.id}"),
            outcome.prompt_tokens,
            outcome.completion_tokens,
            outcome.cache_status,
            ttft,
            tpot,
            outcome.timings,
        )
        if ctx.plugins is not None:
            fields.update(metrics.plugin_fields(ctx.plugins.seconds, ctx.plugins.events))
        self.aggregator.add(fields)
        metrics.combine(self.totals[ctx.endpoint.operation], fields)

    # Prometheus -----------------------------------------------------------------------------------

    def collect(self):
        """The totals as Prometheus families (prometheus_client calls this on each scrape)."""
        requests = CounterMetricFamily("llmapp_requests", "Requests answered, by outcome.", labels=["outcome"])
        by_key = CounterMetricFamily("llmapp_key_requests", "Requests by API key label.", labels=["api_key"])
        tokens = CounterMetricFamily(
            "llmapp_tokens", "Tokens of answered requests.", labels=["gen_ai_token_type", "api_key"]
        )
        cache = CounterMetricFamily("llmapp_cache_lookups", "Response cache lookups.", labels=["result"])
        stages = SummaryMetricFamily(
            "llmapp_pipeline_stage_duration_seconds", "Time spent in each stage of the request path.", labels=["stage"]
        )
        total = Counter()
        for fields in self.totals.values():
            total.update(fields)
        for outcome in metrics.OUTCOMES:
            requests.add_metric([outcome], total.get(f"n|{outcome}", 0))
        for result in ("hit", "miss"):
            cache.add_metric([result], total.get(f"cache|{result}", 0))
        for field, value in sorted(total.items()):
            kind, _, rest = field.partition("|")
            if kind == "key":
                label, _, part = rest.rpartition("|")
                if part == "n":
                    by_key.add_metric([label], value)
                elif part in ("in", "out"):
                    tokens.add_metric(["input" if part == "in" else "output", label], value)
            elif kind == "stage" and not rest.endswith("|n"):
                stages.add_metric([rest], total.get(f"stage|{rest}|n", 0), value)
        policy = CounterMetricFamily(
            "llmapp_policy_events", "What plugins blocked or masked.", labels=["plugin", "action", "side"]
        )
        plugin_time = SummaryMetricFamily(
            "llmapp_plugin_duration_seconds", "Time each plugin of the chain spent per request.", labels=["plugin"]
        )
        for field, value in sorted(total.items()):
            kind, _, rest = field.partition("|")
            if kind == "policy":
                policy.add_metric(rest.split("|"), value)
            elif kind == "plugin" and not rest.endswith("|n"):
                plugin_time.add_metric([rest], total.get(f"plugin|{rest}|n", 0), value)
        yield from (requests, by_key, tokens, cache, stages, policy, plugin_time)
        for name, family_name, text in HISTOGRAM_FAMILIES:
            family = HistogramMetricFamily(family_name, text, labels=["gen_ai_operation_name"])
            for operation, fields in sorted(self.totals.items()):
                counts, cumulative, buckets = metrics.histogram(fields, name), 0, []
                for bound, count in zip([*metrics.HISTOGRAMS[name], "+Inf"], counts, strict=True):
                    cumulative += count
                    buckets.append((str(bound) if bound == "+Inf" else repr(float(bound)), cumulative))
                if cumulative:
                    family.add_metric([operation], buckets, sum_value=fields.get(f"{name}|sum", 0))
            yield family
        yield self._batch_sizes()
        in_flight = GaugeMetricFamily("llmapp_requests_in_flight", "Requests admitted and not yet answered.")
        in_flight.add_metric([], self.admission.in_flight)
        yield in_flight

    def _batch_sizes(self) -> HistogramMetricFamily:
        sizes: Counter = getattr(self.engine, "batch_sizes", Counter())
        family = HistogramMetricFamily("llmapp_batch_size", "Requests per forward pass of the engine.")
        buckets = [(str(b), sum(n for size, n in sizes.items() if size <= b)) for b in BATCH_BUCKETS]
        buckets.append(("+Inf", sum(sizes.values())))
        family.add_metric([], buckets, sum_value=sum(size * n for size, n in sizes.items()))
        return family

    # Redis ----------------------------------------------------------------------------------------

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
            await pause(self.flush_s - time.time() % self.flush_s)
            await self.flush(connection)
