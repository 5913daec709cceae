"""What the gateway adds: latency over calling the replica directly (p50/p99 at concurrency 1) and
requests/s per gateway process at concurrency 16, against an instant fake upstream, side by side.

    .venv/bin/python bench/gateway.py [--requests 3000] [--seconds 10]

Processes: the embedded Redis (or REDIS_URL), a fake upstream (aiohttp, a fixed chat completion at
once), one gateway (`python -m llmapp.gateway`), and this load generator (aiohttp on uvloop, keep-alive
connections). The route and the key are published as the platform publishes them. Latency rounds
alternate direct and gateway requests so that drift hits both alike. All share the machine's cores:
the load generator and the upstream take CPU the gateway would have on its own machine.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import redis  # noqa: E402

from llmapp import keyspace  # noqa: E402
from llmapp.embedded import EmbeddedRedis, free_port  # noqa: E402
from llmapp.gateway.table import route_key, sign  # noqa: E402
from llmapp.runtime import keys  # noqa: E402

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()  # fmt: skip
BENCH_SECRET = "bench-secret-key"
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode()


def run_upstream(port: int) -> None:
    """The fake replica: answers at once."""
    from aiohttp import web

    async def answer(request):
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def health(request):
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    app.router.add_get("/health", health)
    import uvloop

    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop())


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def wait_http(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


async def one(session, url, headers) -> float:
    started = time.perf_counter()
    async with session.post(url, data=BODY, headers=headers) as response:
        await response.read()
        if response.status != 200:
            raise SystemExit(f"{url}: {response.status} {await response.text()}")
    return time.perf_counter() - started


async def latency(direct, gateway, headers, requests):
    async with aiohttp.ClientSession() as session:
        for url in (direct, gateway):  # warm the connections
            for _ in range(200):
                await one(session, url, headers)
        times = {direct: [], gateway: []}
        for _ in range(requests):
            for url in (direct, gateway):
                times[url].append(await one(session, url, headers))
    return times[direct], times[gateway]


async def throughput(url, headers, concurrency, seconds):
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def client(stop_at):
            nonlocal done
            while time.perf_counter() < stop_at:
                await one(session, url, headers)
                done += 1

        await asyncio.gather(*(client(time.perf_counter() + 1) for _ in range(concurrency)))  # warm-up
        done = 0
        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds) for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        return run_upstream(args.upstream)

    processes, embedded = [], None
    try:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            embedded = EmbeddedRedis(tempfile.mkdtemp(prefix="bench-gateway-"), publish=False)
            redis_url = embedded.start()
        upstream_port, gateway_port = free_port(), free_port()
        processes.append(subprocess.Popen([sys.executable, __file__, "--upstream", str(upstream_port)]))
        application_id, key = uuid.uuid4().hex, keys.generate()
        connection = redis.Redis.from_url(redis_url)
        signing = route_key(BENCH_SECRET)  # the gateway derives the same key from SECRET_KEY
        entries = {keys.digest(key): (1, "bench")}
        keys.publish(connection, application_id, entries, application_key=b"bench-app-key", route_key=signing)
        route = {
            "id": application_id, "name": "bench", "owner_id": 1, "status": "running", "release": 1,
            "replicas": [{"id": "r1", "url": f"http://127.0.0.1:{upstream_port}", "draining": False}],
        }  # fmt: skip
        connection.hset(keyspace.routes(), application_id, sign(signing, json.dumps({"version": 0, **route})))
        instance = tempfile.mkdtemp(prefix="bench-gateway-instance-")
        env = {**os.environ, "REDIS_URL": redis_url, "SECRET_KEY": BENCH_SECRET, "LLMAPP_INSTANCE_PATH": instance}
        gateway_args = ["-m", "llmapp.gateway", "--host", "127.0.0.1", "--port", str(gateway_port)]
        processes.append(subprocess.Popen([sys.executable, *gateway_args], cwd=ROOT, env=env))
        wait_http(f"http://127.0.0.1:{upstream_port}/health")
        wait_http(f"http://127.0.0.1:{gateway_port}/health")
        direct = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        gateway = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

        import uvloop

        direct_times, gateway_times = uvloop.run(latency(direct, gateway, headers, args.requests))
        added = [g - d for g, d in zip(gateway_times, direct_times, strict=True)]
        ms = 1000
        print(f"concurrency 1, {args.requests} requests each, alternating:")
        for name, values in (("direct", direct_times), ("gateway", gateway_times)):
            print(f"  {name:8} p50 {percentile(values, 50) * ms:.3f} ms  p99 {percentile(values, 99) * ms:.3f} ms")
        print(
            f"  added    p50 {(percentile(gateway_times, 50) - percentile(direct_times, 50)) * ms:.3f} ms  "
            f"p99 {(percentile(gateway_times, 99) - percentile(direct_times, 99)) * ms:.3f} ms  "
            f"(median of pairwise differences {statistics.median(added) * ms:.3f} ms)"
        )
        for name, url in (("direct", direct), ("gateway", gateway)):
            rate = uvloop.run(throughput(url, headers, 16, args.seconds))
            print(f"concurrency 16, {args.seconds:.0f} s: {name:8} {rate:,.0f} requests/s")
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
