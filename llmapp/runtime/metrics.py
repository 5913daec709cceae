"""Request metrics: what an app server counts, how it keeps them in Redis, and how they are read back.

Only counters and fixed-bucket histograms, never averages: every number is a sum, so the series two
server processes of one application write add up exactly (a rolling redeploy, a gateway), and
percentiles come from the buckets.

In Redis, per application, one hash per time bucket and resolution (`keyspace.metrics`): 10-second
buckets kept 1 hour, 1-minute buckets kept 24 hours, 1-hour buckets kept 30 days. A server adds what
it counted to all three at once, every FLUSH_S, with HINCRBY/HINCRBYFLOAT in one MULTI/EXEC: several
writers never lose an increment, and a reader never sees half a flush. Fields:

    n|<outcome>                     requests by outcome (2xx, 400, 401, 404, 4xx, 429, 499, 5xx, 504)
    cache|hit, cache|miss           exact-match cache
    lat|<i>, lat|sum, lat|max       whole-request latency: count per bucket i of LATENCY_S, sum of seconds,
                                    the slowest (a percentile read back never exceeds it)
    ttft|<i>, ttft|sum, ttft|max    streams: time to first token
    tpot|<i>, tpot|sum, tpot|max    streams: time per output token after the first
    tok|in, tok|out                 prompt and completion tokens of answered requests
    batch|<size>                    forward passes of the engine, by how many requests they held
    stage|<name>, stage|<name>|n    seconds spent in each pipeline stage, and how many times it ran
    key|<label>|n, |err, |in, |out  per API key label: requests, errors, tokens
    plugin|<name>, plugin|<name>|n  seconds each plugin of the chain spent, and on how many requests
    policy|<plugin>|<action>|<side> what the plugins blocked or masked (action block/mask, side input/output)
    cpu|sum, rss|sum, usage|n       the reconcile's samples of the server process (CPU %, RSS bytes)
    gw|<release>|n|<outcome>,       the gateway's answers by the release that gave them (a canary's
    gw|<release>|lat|<i>, |lat|sum    beside the release deployed): outcomes and latency as seen by clients
    |lat|max

Every field adds up, but for the |max ones, which keep the larger value (in Redis, one small script in
the same MULTI/EXEC; read back, `combine`).
"""

import bisect
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import redis

from .. import keyspace

LATENCY_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TPOT_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
HISTOGRAMS = {"lat": LATENCY_S, "ttft": TTFT_S, "tpot": TPOT_S}
OUTCOMES = ("2xx", "400", "401", "404", "4xx", "429", "499", "5xx", "504")
FLUSH_S = 10.0


@dataclass(frozen=True)
class Resolution:
    name: str
    seconds: int
    keep_s: int


RESOLUTIONS = (
    Resolution("10s", 10, 3600),
    Resolution("1m", 60, 24 * 3600),
    Resolution("1h", 3600, 30 * 24 * 3600),
)


def outcome(status: int) -> str:
    if 200 <= status < 300:
        return "2xx"
    if str(status) in OUTCOMES:
        return str(status)
    return "5xx" if status >= 500 else "4xx"


def is_error(outcome_: str) -> bool:
    """Answers that failed the caller: anything but 2xx, not counting clients that went away (499)."""
    return outcome_ not in ("2xx", "499")


def is_float_field(name: str) -> bool:
    """Seconds and samples are sums of floats (HINCRBYFLOAT); everything else counts (HINCRBY)."""
    return name.endswith("|sum") or (name.startswith(("stage|", "plugin|")) and not name.endswith("|n"))


def bucket_index(bounds: tuple, value: float) -> int:
    """The histogram bucket of ``value``: the first bound it does not exceed (len(bounds) is +Inf)."""
    return bisect.bisect_left(bounds, value)


# Keep the larger of the value stored and the one given (Redis has no HINCRBY for a maximum).
HASH_MAX_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if not current or tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""


def is_max_field(name: str) -> bool:
    return name.endswith("|max")


def combine(total: Counter, fields: dict) -> None:
    """Add ``fields`` to ``total``: counts and sums add up, a |max field keeps the larger value."""
    for name, value in fields.items():
        if is_max_field(name):
            if value > total.get(name, 0):
                total[name] = value
        else:
            total[name] += value


class Aggregator:
    """What a server counted since its last flush, per 10-second bucket. Touched on the event loop only."""

    def __init__(self):
        self.pending: defaultdict[int, Counter] = defaultdict(Counter)

    def add(self, fields: dict, at: float | None = None) -> None:
        bucket = int((time.time() if at is None else at) // RESOLUTIONS[0].seconds * RESOLUTIONS[0].seconds)
        combine(self.pending[bucket], fields)

    def take(self) -> dict[int, Counter]:
        taken, self.pending = self.pending, defaultdict(Counter)
        return taken

    def give_back(self, taken: dict[int, Counter]) -> None:
        """A flush that failed: its counts wait for the next one (nothing is lost or counted twice)."""
        for bucket, counter in taken.items():
            combine(self.pending[bucket], counter)


_STAGE_FIELDS: dict[str, tuple[str, str]] = {}


def request_fields(
    status: int,
    seconds: float,
    key_label: str | None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cache: str | None = None,
    ttft_s: float | None = None,
    tpot_s: float | None = None,
    stages: dict[str, float] | None = None,
) -> dict:
    """The fields one finished request adds."""
    kind = outcome(status)
    answered = kind == "2xx"
    fields = {f"n|{kind}": 1, f"lat|{bucket_index(LATENCY_S, seconds)}": 1, "lat|sum": seconds, "lat|max": seconds}
    if cache:
        fields[f"cache|{'hit' if cache == 'HIT' else 'miss'}"] = 1
    if answered:
        fields["tok|in"], fields["tok|out"] = prompt_tokens, completion_tokens
    if ttft_s is not None:
        fields[f"ttft|{bucket_index(TTFT_S, ttft_s)}"] = 1
        fields["ttft|sum"] = fields["ttft|max"] = ttft_s
    if tpot_s is not None:
        fields[f"tpot|{bucket_index(TPOT_S, tpot_s)}"] = 1
        fields["tpot|sum"] = fields["tpot|max"] = tpot_s
    for stage, spent in (stages or {}).items():
        names = _STAGE_FIELDS.get(stage) or _STAGE_FIELDS.setdefault(stage, (f"stage|{stage}", f"stage|{stage}|n"))
        fields[names[0]] = spent
        fields[names[1]] = 1
    if key_label is not None:
        label = key_label.replace("|", "/")
        fields[f"key|{label}|n"] = 1
        fields[f"key|{label}|err"] = int(is_error(kind))
        if answered:
            fields[f"key|{label}|in"], fields[f"key|{label}|out"] = prompt_tokens, completion_tokens
    return fields


def release_fields(release: int, status: int, seconds: float) -> dict:
    """What a gateway counts of one answer, by the release that gave it."""
    prefix = f"gw|{release}|"
    return {
        f"{prefix}n|{outcome(status)}": 1,
        f"{prefix}lat|{bucket_index(LATENCY_S, seconds)}": 1,
        f"{prefix}lat|sum": seconds,
        f"{prefix}lat|max": seconds,
    }


def plugin_fields(seconds: dict[str, float], events: list[dict]) -> dict:
    """The fields the plugin chain adds to one request's: time per plugin, and its policy events."""
    fields: Counter = Counter()
    for name, spent in seconds.items():
        name = name.replace("|", "/")
        fields[f"plugin|{name}"] += spent
        fields[f"plugin|{name}|n"] += 1
    for event in events:
        fields[f"policy|{event['plugin'].replace('|', '/')}|{event['action']}|{event['side']}"] += 1
    return dict(fields)


def _queue_writes(pipe, application_id, taken: dict[int, Counter]) -> None:
    for bucket, counter in taken.items():
        for resolution in RESOLUTIONS:
            start = bucket // resolution.seconds * resolution.seconds
            key = keyspace.metrics(application_id, resolution.name, start)
            for name, value in counter.items():
                if is_max_field(name):
                    pipe.eval(HASH_MAX_SCRIPT, 1, key, name, repr(float(value)))
                elif is_float_field(name):
                    pipe.hincrbyfloat(key, name, float(value))
                elif value:
                    pipe.hincrby(key, name, int(value))
            pipe.expire(key, resolution.keep_s + resolution.seconds)
        minute = bucket // 60 * 60  # the App Center's overview: requests and errors per application
        requests = sum(v for k, v in counter.items() if k.startswith("n|"))
        errors = sum(v for k, v in counter.items() if k.startswith("n|") and is_error(k[2:]))
        if requests:
            overview = keyspace.metrics_overview(minute)
            pipe.hincrby(overview, f"{application_id}|n", int(requests))
            if errors:
                pipe.hincrby(overview, f"{application_id}|err", int(errors))
            pipe.expire(overview, 2 * 3600)


def write(connection: redis.Redis, application_id, taken: dict[int, Counter]) -> None:
    """Add counts to the application's series, atomically (one MULTI/EXEC)."""
    if not taken:
        return
    with connection.pipeline(transaction=True) as pipe:
        _queue_writes(pipe, application_id, taken)
        pipe.execute()


async def write_async(connection, application_id, taken: dict[int, Counter]) -> None:
    """The same, from an app server's event loop (redis.asyncio)."""
    if not taken:
        return
    async with connection.pipeline(transaction=True) as pipe:
        _queue_writes(pipe, application_id, taken)
        await pipe.execute()


# --- reading back ---------------------------------------------------------------------------------


def percentile(bounds: tuple, counts: list[float], q: float, slowest: float | None = None) -> float | None:
    """The q-quantile (0 < q < 1) of a histogram: per-bucket counts (the last is +Inf), interpolated
    linearly inside the bucket that holds it, as Prometheus's histogram_quantile does, never above
    ``slowest`` (the largest value seen, where it is known), which also closes the +Inf bucket; without it,
    a quantile there is reported as the bucket's lower bound. None for an empty histogram."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = 0.0 if i == 0 else bounds[i - 1]
            upper = bounds[i] if i < len(bounds) else max(slowest or lower, lower)
            value = lower + (upper - lower) * (rank - seen) / count
            return min(value, slowest) if slowest else value
        seen += count
    return float(bounds[-1])


def histogram(fields: dict, name: str) -> list[float]:
    bounds = HISTOGRAMS[name]
    return [fields.get(f"{name}|{i}", 0) for i in range(len(bounds) + 1)]


def merge(buckets: list[dict]) -> Counter:
    total = Counter()
    for fields in buckets:
        combine(total, fields)
    return total


def decode(raw: dict) -> dict[str, float]:
    """A hash as Redis returns it (bytes) → field → number."""
    out = {}
    for key, value in raw.items():
        number = float(value)
        out[key.decode()] = int(number) if number.is_integer() else number
    return out


def is_finite(value) -> bool:
    return value is not None and math.isfinite(value)
