"""What the request pipeline and the recording of each request (its log line and metrics) cost,
before and after: the app server of a baseline commit and today's, side by side in one run.

    .venv/bin/python bench/overhead.py [--baseline 4bd0dda] [--requests 1500] [--cases "cache hit" …]

Both servers serve the same tiny GPT-2 with the same configuration (INFO log level: one log line per
request in both), on one embedded Redis. The baseline is checked out into a temporary git worktree and
started with the spec format it reads. Cases: a cache hit (temperature 0, the same prompt), a
1-token request (sampled, never cached) and a 16-token request (sampled, min_tokens forcing all 16);
latency at concurrency 1 (p50/p99, a keep-alive client) and requests/s at concurrency 8. Rounds
alternate between the servers so that drift hits both alike.
Then the recording alone, in-process: request_log.record_request() per call (the log line and the metrics).
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

import httpx  # noqa: E402
import redis  # noqa: E402

from llmapp.embedded import EmbeddedRedis, free_port  # noqa: E402
from llmapp.runtime import keys  # noqa: E402
from llmapp.runtime.spec import REDIS_URL_VARIABLE, ServerSpec, ServingConfig  # noqa: E402
from llmapp.runtime.tiny_model import build_tiny_model  # noqa: E402

CONFIG = {
    "max_concurrency": 64,
    "timeout_s": 60,
    "log_level": "INFO",
    "cache_size": 64,
    "batch_size": 8,
    "restart_policy": "never",
    "max_restarts": 0,
}
KEY = "llm-bench-overhead"


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Server:
    def __init__(self, name, cwd, spec_path, env, port):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}/v1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llmapp.runtime", "--spec", str(spec_path)],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json().get("status") == "ready":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"the {name} server did not become ready")

    def stop(self):
        self.process.terminate()
        self.process.wait(15)


def latencies(server: Server, body: dict, count: int) -> list[float]:
    out = []
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        for _ in range(20):
            client.post(f"{server.url}/completions", json=body)
        for _ in range(count):
            start = time.perf_counter()
            response = client.post(f"{server.url}/completions", json=body)
            out.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.text
    return out


async def throughput(server: Server, body: dict, count: int, concurrency: int = 8) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, limits=limits, timeout=60) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one():
            async with semaphore:
                response = await client.post(f"{server.url}/completions", json=body)
                assert response.status_code == 200, response.text

        await asyncio.gather(*(one() for _ in range(50)))
        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - start)


def start_baseline(rev: str, work: Path, model_dir: Path, redis_url: str) -> Server:
    tree = work / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True, capture_output=True
    )
    app_id = uuid.uuid4().hex
    port = free_port()
    spec = {  # the spec format of the baseline (issue 3): a plain dict, the Redis URL inside
        "app_id": app_id, "app_name": "baseline", "deploy_id": "", "engine": "transformers",
        "model_name": "tiny", "model_path": str(model_dir), "precision": "fp32", "base_url": None,
        "upstream_model": None, "api_key_env": "OPENAI_API_KEY", "config": CONFIG, "redis_url": redis_url,
        "host": "127.0.0.1", "bind": "127.0.0.1", "port": port, "grace_s": 5, "secret_names": [],
    }  # fmt: skip
    path = work / "baseline.json"
    path.write_text(json.dumps(spec))
    redis.Redis.from_url(redis_url).hset(keys.keyspace.api_keys(app_id), keys.digest(KEY), "1")
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1"}
    return Server(f"baseline {rev}", tree, path, env, port)


def start_current(work: Path, model_dir: Path, redis_url: str) -> Server:
    app_id = uuid.uuid4().hex
    spec = ServerSpec(
        app_id=app_id, app_name="current", engine="transformers", engine_options={"path": str(model_dir)},
        config=ServingConfig.from_dict(CONFIG), port=free_port(), grace_s=5,
    )  # fmt: skip
    spec.write(work / "current.json")
    from cryptography.fernet import Fernet

    from llmapp.gateway.table import route_key
    from llmapp.runtime.plugins.published import CHAIN_KEY_VARIABLE

    application_key = Fernet.generate_key()  # the application's own key, as the platform hands it over
    entries = {keys.digest(KEY): (1, "bench")}
    keys.publish(
        redis.Redis.from_url(redis_url), app_id, entries, application_key=application_key, route_key=route_key("bench")
    )
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", REDIS_URL_VARIABLE: redis_url}
    env[CHAIN_KEY_VARIABLE] = application_key.decode()
    return Server("current", ROOT, work / "current.json", env, spec.port)


def recording_alone(calls: int = 20000) -> float:
    """µs per request_log.record_request(): one log line (to the Redis writer's queue) and the metrics."""
    import logging

    from llmapp.runtime import logs, pipeline
    from llmapp.runtime.engines import Engine
    from llmapp.runtime.keys import KeyInfo
    from llmapp.runtime.recorder import Recorder
    from llmapp.runtime.request_log import record_request
    from llmapp.runtime.serving import ENDPOINTS

    class Quiet(Engine):
        name = "quiet"

    spec = ServerSpec(app_id="x", app_name="x", engine="quiet", config=ServingConfig(), port=0)
    served = pipeline.Served(spec, Quiet("x"), keys.KeyChecker(None, "x", application_key=b"bench"))
    served.recorder = Recorder("x", served.engine, served.admission)
    writer = logs.StreamWriter(redis.Redis(port=1), "x", capacity=calls + 10)  # never reached: measures the queueing
    logger = logging.getLogger("llmapp.server")
    logger.handlers[:] = [logs.RedisStreamHandler(writer)]
    logger.setLevel("INFO")

    class Request:
        class url:
            path = "/v1/completions"

    timings = {"authenticate": 1e-4, "parse": 1e-4, "admit": 1e-6, "prepare": 1e-4, "cache_lookup": 1e-6}
    contexts = []
    for _ in range(calls):
        ctx = pipeline.Context(served, Request(), ENDPOINTS["completion"], "id")
        ctx.key = KeyInfo("1", "bench")
        ctx.outcome.prompt_tokens, ctx.outcome.completion_tokens, ctx.outcome.timings = 5, 1, timings
        contexts.append(ctx)
    start = time.perf_counter()
    for ctx in contexts:
        record_request(ctx)
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="4bd0dda")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", nargs="*", help="the cases to run (default: all)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmapp-overhead-"))
    embedded = EmbeddedRedis(work / "redis", publish=False)
    redis_url = embedded.start()
    model_dir = build_tiny_model(work / "tiny-gpt2")
    servers = []
    try:
        servers = [start_baseline(args.baseline, work, model_dir, redis_url), start_current(work, model_dir, redis_url)]
        cases = {
            "cache hit": {"prompt": "hello world", "max_tokens": 8, "temperature": 0},
            "1-token request": {"prompt": "hello world", "max_tokens": 1},
            "16-token request": {"prompt": "hello world", "max_tokens": 16, "min_tokens": 16},
        }
        cases = {name: body for name, body in cases.items() if not args.cases or name in args.cases}
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; {args.requests} requests a round")
        for case, body in cases.items():
            results = {s.name: {"lat": [], "rps": []} for s in servers}
            for _ in range(args.rounds):
                for server in servers:
                    request = {**body, "model": "baseline" if server.name.startswith("baseline") else "current"}
                    results[server.name]["lat"] += latencies(server, request, args.requests)
                    results[server.name]["rps"].append(asyncio.run(throughput(server, request, args.requests)))
            print(f"{case}:")
            for name, r in results.items():
                print(
                    f"  {name:18} c=1 p50 {percentile(r['lat'], 50):6.3f} ms  p99 {percentile(r['lat'], 99):6.3f} ms"
                    f"   c=8 {statistics.median(r['rps']):7.0f} requests/s (rounds: "
                    + ", ".join(f"{v:.0f}" for v in r["rps"])
                    + ")"
                )
        print(f"recording alone (log line + metrics), in-process: {recording_alone():.1f} µs per request")
    finally:
        for server in servers:
            server.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline")])
        embedded.stop()


if __name__ == "__main__":
    main()
