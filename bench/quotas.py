"""What the limits cost a request (issue 20): with every limit set, side by side with none.

    .venv/bin/python bench/quotas.py [--requests 2000] [--redis-url redis://127.0.0.1:6379/9]

1. In-process: ``Quotas.admit`` (the reservation on the request's path) with 12 limits (requests and
   tokens per minute, tokens per day and per month, on the key, the application and the owner) against
   none (no Redis call at all), interleaved call by call; and ``Quotas.settle`` (after the response:
   the correction and the usage record), which no request waits for.
2. End to end: two real app servers (`python -m llmapp.runtime`) on the tiny GPT-2, the same in all
   but their limits: one application with all 12 (set high: none trips), one with none; requests
   alternating between them at concurrency 1 over keep-alive clients: cache hits (the cheapest
   request, where the limiter's share is largest) and 1-token sampled requests.

Redis: an embedded redis-server (as `python app.py` runs it), or --redis-url.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402
import redis.asyncio  # noqa: E402

from bench.overhead import CONFIG, Server  # noqa: E402
from llmapp.embedded import EmbeddedRedis, free_port  # noqa: E402
from llmapp.runtime import keys  # noqa: E402
from llmapp.runtime.keys import KeyInfo  # noqa: E402
from llmapp.runtime.quotas import Quotas  # noqa: E402
from llmapp.runtime.spec import REDIS_URL_VARIABLE, ServerSpec, ServingConfig  # noqa: E402
from llmapp.runtime.tiny_model import build_tiny_model  # noqa: E402

KEY = "llm-bench-quotas"
HIGH = {"rpm": 10**9, "tpm": 10**10, "day": 10**11, "month": 10**11}  # every limit set, none reached


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def policy(limited_key: str) -> dict:
    return {
        "application": {"name": "bench", "limits": HIGH},
        "user": {"id": uuid.uuid4().hex, "name": "bench@example.org", "limits": HIGH},
        "keys": {limited_key: HIGH},
    }


async def in_process(redis_url: str, calls: int) -> dict:
    import json

    connection = redis.asyncio.Redis.from_url(redis_url)
    limited, free = Quotas(connection, uuid.uuid4().hex), Quotas(connection, uuid.uuid4().hex)
    limited.update(json.dumps(policy("1")))
    key = KeyInfo("1", "bench")
    admit = {"all 12 limits": [], "none": []}
    settle = []
    for _ in range(200):  # warm-up: the script loaded, the connection made
        await limited.admit(key, 40)
    for _ in range(calls):
        for name, quotas in (("all 12 limits", limited), ("none", free)):
            start = time.perf_counter()
            charge = await quotas.admit(key, 40)
            admit[name].append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        await limited.settle(charge, "1", {"input": 5, "output": 30, "cached": 0})
        settle.append((time.perf_counter() - start) * 1000)
    redis.Redis.from_url(redis_url).delete("llmapp:usage")
    return {**admit, "settle (after the response)": settle}


def start_server(redis_url: str, work: Path, model_dir: Path, name: str, quotas: dict | None) -> Server:
    from cryptography.fernet import Fernet

    from llmapp.gateway.table import route_key
    from llmapp.runtime.plugins.published import CHAIN_KEY_VARIABLE

    app_id = uuid.uuid4().hex
    spec = ServerSpec(
        app_id=app_id, app_name="bench", engine="transformers", engine_options={"path": str(model_dir)},
        config=ServingConfig.from_dict({**CONFIG, "log_level": "WARNING"}), port=free_port(), grace_s=5,
    )  # fmt: skip
    spec.write(work / f"{name}.json")
    application_key = Fernet.generate_key()
    keys.publish(
        redis.Redis.from_url(redis_url),
        app_id,
        {keys.digest(KEY): (1, "bench")},
        application_key=application_key,
        route_key=route_key("bench"),
        quotas=quotas,
    )
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", REDIS_URL_VARIABLE: redis_url}
    env[CHAIN_KEY_VARIABLE] = application_key.decode()
    return Server(name, ROOT, work / f"{name}.json", env, spec.port)


def end_to_end(redis_url: str, work: Path, requests: int) -> dict:
    model_dir = build_tiny_model(work / "tiny-gpt2")
    servers = {
        "all 12 limits": start_server(redis_url, work, model_dir, "limited", policy("1")),
        "none": start_server(redis_url, work, model_dir, "free", None),
    }
    results = {}
    try:
        bodies = {
            "cache hit": {"model": "bench", "prompt": "hello", "max_tokens": 1, "temperature": 0},
            "1 token": {"model": "bench", "prompt": "hello", "max_tokens": 1, "temperature": 1},
        }
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as client:
            for case, body in bodies.items():
                times = {name: [] for name in servers}
                for _ in range(30):
                    for server in servers.values():
                        client.post(server.url + "/completions", json=body)
                for _ in range(requests):
                    for name, server in servers.items():
                        start = time.perf_counter()
                        answer = client.post(server.url + "/completions", json=body)
                        times[name].append((time.perf_counter() - start) * 1000)
                        assert answer.status_code == 200, answer.text
                        assert ("x-ratelimit-limit-requests" in answer.headers) == (name != "none")
                results[case] = times
    finally:
        for server in servers.values():
            server.stop()
    return results


def row(name: str, values: list[float]) -> str:
    return f"| {name} | {statistics.median(values):.3f} | {percentile(values, 99):.3f} | {len(values)} |"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmapp-quotas-"))
    embedded = None
    redis_url = args.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(work / "redis", publish=False)
        redis_url = embedded.start()
    try:
        measured = asyncio.run(in_process(redis_url, args.requests * 2))
        print("In-process, per call (ms):\n\n| limits | p50 | p99 | calls |\n|---|---|---|---|")
        for name, values in measured.items():
            print(row(name, values))
        added = statistics.median(measured["all 12 limits"]) - statistics.median(measured["none"])
        print(f"\nadded by the reservation, p50: {added:.3f} ms")
        print("\nEnd to end, one app server, concurrency 1, alternating keys (ms):\n")
        print("| case | key | p50 | p99 | requests |\n|---|---|---|---|---|")
        for case, times in end_to_end(redis_url, work, args.requests).items():
            for name, values in times.items():
                print(f"| {case} " + row(name, values))
            added = statistics.median(times["all 12 limits"]) - statistics.median(times["none"])
            print(f"| {case} | added, p50 | {added:.3f} | | |")
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
