"""Memory in Redis of one application's retained metrics, at full retention.

    .venv/bin/python bench/metrics_memory.py [REDIS_URL]      # default: a fresh embedded Redis

A busy application has a bucket in every slot of every resolution: 360 ten-second buckets (1 hour),
1,440 one-minute buckets (24 hours) and 720 one-hour buckets (30 days). Each bucket holds the fields a
realistic minute of traffic leaves (every outcome, streams and plain requests, the cache, 7 stages,
batch sizes, resource samples, and API key labels), made with the servers' own code
(metrics.request_fields); the script writes that many buckets and reads Redis's own accounting
(MEMORY USAGE of each key, and used_memory before and after).
"""

import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from llmapp import keyspace  # noqa: E402
from llmapp.embedded import EmbeddedRedis  # noqa: E402
from llmapp.runtime import metrics  # noqa: E402

STAGES = ("authenticate", "parse", "admit", "cache_lookup", "prepare", "generate", "cache_store")


def busy_bucket(key_labels: int) -> dict:
    rng = random.Random(7)
    fields = Counter()
    statuses = [200] * 80 + [400, 401, 404, 413, 429, 429, 499, 500, 503, 504]
    for i in range(300):
        status = rng.choice(statuses)
        stream = i % 3 == 0
        fields.update(
            metrics.request_fields(
                status,
                rng.lognormvariate(-1, 1.2),
                f"key-{i % key_labels}",
                rng.randint(5, 900),
                rng.randint(1, 400),
                None if stream else rng.choice(["HIT", "MISS"]),
                rng.uniform(0.005, 0.4) if stream else None,
                rng.uniform(0.002, 0.05) if stream and status == 200 else None,
                {stage: rng.uniform(1e-6, 2e-3) for stage in STAGES},
            )
        )
    fields.update({f"batch|{size}": rng.randint(1, 50) for size in (1, 2, 3, 4, 5, 6, 7, 8)})
    fields.update({"cpu|sum": 1234.5678, "rss|sum": 2.5e9, "usage|n": 12})
    return {k: (repr(v) if isinstance(v, float) else v) for k, v in fields.items()}


def main():
    embedded = None
    if len(sys.argv) > 1:
        connection = redis.Redis.from_url(sys.argv[1])
    else:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis", publish=False)
        connection = redis.Redis.from_url(embedded.start())
    try:
        version = connection.info("server")["redis_version"]
        print(f"Redis {version}")
        for labels in (3, 20):
            fields = busy_bucket(labels)
            application = f"bench-memory-{labels}"
            before = connection.info("memory")["used_memory"]
            keys = []
            with connection.pipeline(transaction=False) as pipe:
                for resolution in metrics.RESOLUTIONS:
                    slots = resolution.keep_s // resolution.seconds
                    for slot in range(slots):
                        key = keyspace.metrics(application, resolution.name, 1_700_000_000 + slot * resolution.seconds)
                        pipe.hset(key, mapping=fields)
                        pipe.expire(key, resolution.keep_s)
                        keys.append(key)
                pipe.execute()
            after = connection.info("memory")["used_memory"]
            usage = sum(connection.memory_usage(key) or 0 for key in keys)
            print(
                f"{labels:3d} API key labels: {len(fields)} fields a bucket, {len(keys)} buckets; "
                f"MEMORY USAGE {usage / 2**20:.2f} MiB ({usage / len(keys):.0f} B a bucket); "
                f"used_memory +{(after - before) / 2**20:.2f} MiB"
            )
            connection.delete(*keys)
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
