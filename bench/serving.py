"""Serving benchmarks (issue 3): proxy overhead, batching, cache, deploy and stop times.

    .venv/bin/python bench/serving.py            # results go to stdout; copy them to bench/RESULTS.md

Everything is real: a temporary SQLite database and an embedded Redis, a `python -m jobs.worker`
process, a tiny GPT-2 built on the spot, and app servers deployed through the platform's services.
Latencies are measured by an httpx client on the same machine (loopback), so client, servers and
worker share the cores.
"""

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import flask_migrate  # noqa: E402
import httpx  # noqa: E402

from llmapp import create_app  # noqa: E402
from llmapp.embedded import EmbeddedRedis  # noqa: E402
from llmapp.extensions import db  # noqa: E402
from llmapp.models import Application, EnvVar, RegistryModel, User  # noqa: E402
from llmapp.runtime.tiny_model import build_tiny_model  # noqa: E402
from llmapp.services import api_keys, deployments, server_processes, stops  # noqa: E402

BASE = {
    "max_concurrency": 64,
    "timeout_s": 120,
    "log_level": "WARNING",
    "cache_size": 0,
    "batch_size": 8,
    "restart_policy": "never",
    "max_restarts": 0,
}


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def load(url, key, body, total, concurrency, headers_out=None, elapsed_out=None, uds=None):
    """Send ``total`` requests, ``concurrency`` at a time (after 20 warm-up requests that do not count);
    return each one's latency in ms. ``uds``: a Unix socket to send them over."""
    latencies, semaphore = [], asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = httpx.AsyncHTTPTransport(uds=uds, limits=limits) if uds else None
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=120, transport=transport
    ) as client:

        async def one():
            async with semaphore:
                start = time.perf_counter()
                response = await client.post(url, json=body)
                latencies.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, response.text
                if headers_out is not None:
                    headers_out.append(response.headers)

        for _ in range(min(20, total)):  # warm the connections and the server
            await one()
        latencies.clear()
        if headers_out is not None:
            headers_out.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        if elapsed_out is not None:
            elapsed_out.append(time.perf_counter() - start)
    return latencies


def main():
    main_with(run)


def main_with(run_benchmark) -> None:
    """Run ``run_benchmark(app, work)`` on a temporary platform: SQLite, an embedded Redis, one worker."""
    work = Path(tempfile.mkdtemp(prefix="llmapp-bench-"))
    redis_server = EmbeddedRedis(work / "redis", publish=False)
    redis_url = redis_server.start()
    env = {
        **os.environ,
        "LLMAPP_ENV": "testing",
        "SECRET_KEY": "bench",
        "DATABASE_URL": f"sqlite:///{work}/bench.db",
        "REDIS_URL": redis_url,
        "LLMAPP_INSTANCE_PATH": str(work / "instance"),
        "LLMAPP_WORKER_LOG_LEVEL": "WARNING",
        "LLMAPP_RECONCILE_INTERVAL_S": "5",
    }
    os.environ.update({k: env[k] for k in ("LLMAPP_INSTANCE_PATH",)})
    app = create_app(
        {
            "LLMAPP_ENV": "testing",
            "SECRET_KEY": "bench",
            "SQLALCHEMY_DATABASE_URI": env["DATABASE_URL"],
            "REDIS_URL": redis_url,
        }
    )
    worker = subprocess.Popen([sys.executable, "-m", "jobs.worker"], cwd=ROOT, env=env, start_new_session=True)
    try:
        with app.app_context():
            flask_migrate.upgrade()
            run_benchmark(app, work)
    finally:
        with app.app_context():
            stops.shutdown_host("the benchmark ended")
        worker.terminate()
        worker.wait(15)
        redis_server.stop()


def transition(application, request_transition, until: set[str], timings=None) -> Application:
    """Ask for a deploy or a stop, wait until the application reaches ``until``, record the time."""
    start = time.perf_counter()
    request_transition(application)
    while True:
        db.session.expire_all()
        current = db.session.get(Application, application.id)
        if current.status in until:
            break
        time.sleep(0.02)
    if timings is not None:
        timings.append(time.perf_counter() - start)
    return current


def deploy(application, timings=None):
    current = transition(application, deployments.request_deploy, {"running", "failed"}, timings)
    assert current.status == "running", current.last_error
    return current


def stop(application, timings):
    transition(application, stops.request_stop, {"stopped"}, timings)


def tiny_platform(work: Path) -> tuple[User, RegistryModel, Path]:
    """An admin, and the tiny GPT-2 built in ``work`` and registered as the model "tiny"."""
    tiny = build_tiny_model(work / "tiny-gpt2")
    user = User(email="bench@example.com", is_admin=True)
    user.set_password("password123")
    model = RegistryModel(
        name="tiny",
        parameters_billions=0.0004,
        precision="fp32",
        context_length=8192,
        engine="transformers",
        source=str(tiny),
    )
    db.session.add_all([user, model])
    db.session.commit()
    return user, model, tiny


def run(app, work):
    user, model, _ = tiny_platform(work)

    def application(name, model_id=model.id, **config):
        row = Application(name=name, model_id=model_id, created_by_id=user.id, config={**BASE, **config})
        db.session.add(row)
        db.session.commit()
        return row

    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")

    # Deploy and stop.
    up, down = [], []
    probe = application("deploy-probe")
    for _ in range(3):
        deploy(probe, up)
        stop(probe, down)
    print(f"deploy request → running: {', '.join(f'{t:.2f}' for t in up)} s (median {statistics.median(up):.2f} s)")
    print(f"stop request → stopped:   {', '.join(f'{t:.2f}' for t in down)} s (median {statistics.median(down):.2f} s)")
    phases = db.session.get(Application, probe.id).deploy_phases
    print("  last deploy's phases: " + ", ".join(f"{p['name']} {p['seconds']:.2f} s" for p in phases))

    direct = deploy(application("direct"))
    direct_key = api_keys.create_key(direct, "bench")[1]
    upstream = RegistryModel(
        name="direct-upstream",
        parameters_billions=0.0004,
        precision="fp32",
        context_length=8192,
        engine="openai",
        base_url=direct.endpoint,
        upstream_model="direct",
    )
    db.session.add(upstream)
    db.session.commit()
    proxied = application("proxy", model_id=upstream.id)
    db.session.add(EnvVar(application_id=proxied.id, name="OPENAI_API_KEY", value=direct_key))
    db.session.commit()
    proxied = deploy(proxied)
    proxy_key = api_keys.create_key(proxied, "bench")[1]

    # Proxy overhead: the same requests (max_tokens=1) straight to the app and through the openai engine.
    body = {"prompt": "hello world", "max_tokens": 1}  # each server is asked for its own model name
    if "--profile-proxy" in sys.argv:  # where the proxy's time goes at concurrency 16 (py-spy, raw stacks)
        spy = subprocess.Popen(
            ["py-spy", "record", "-f", "raw", "-o", str(work / "proxy.txt"), "-d", "20", "-p", str(proxied.process_pid)]
        )
        asyncio.run(load(f"{proxied.endpoint}/completions", proxy_key, {**body, "model": "proxy"}, 2000, 16))
        spy.wait()
        print(f"profile of the proxy: {work / 'proxy.txt'}")
    print("proxy overhead (openai engine in front of the app), max_tokens=1, latency in ms:")
    for concurrency, total in ((1, 300), (16, 640)):
        a = asyncio.run(
            load(f"{direct.endpoint}/completions", direct_key, {**body, "model": "direct"}, total, concurrency)
        )
        b = asyncio.run(
            load(f"{proxied.endpoint}/completions", proxy_key, {**body, "model": "proxy"}, total, concurrency)
        )
        for name, p in (("p50", 50), ("p99", 99)):
            print(
                f"  c={concurrency:2d} {name}: direct {percentile(a, p):7.2f}  via proxy {percentile(b, p):7.2f}  "
                f"overhead {percentile(b, p) - percentile(a, p):6.2f}"
            )

    # Batching: concurrency 8, 32 tokens each, batch size 8 vs 1.
    print("batching: concurrency 8, 64 requests of 32 tokens (min_tokens=32):")
    for batch in (1, 8):
        served = deploy(application(f"batch-{batch}", batch_size=batch))
        key = api_keys.create_key(served, "bench")[1]
        body = {"model": f"batch-{batch}", "prompt": "hello", "max_tokens": 32, "min_tokens": 32}
        elapsed = []
        asyncio.run(load(f"{served.endpoint}/completions", key, body, 64, 8, elapsed_out=elapsed))
        health = server_processes.health(served)["engine"]  # its details need the platform's metrics token
        print(
            f"  batch size {batch}: {64 * 32 / elapsed[0]:7.0f} tokens/s  "
            f"batches (warm-up included) {health['batch_size_histogram']}"
        )

    # Cache: a hit against a miss (server time from X-Server-Time-Ms, and the client's latency).
    cached = deploy(application("cached", cache_size=1000))
    key = api_keys.create_key(cached, "bench")[1]
    hits, misses = [], []
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}) as client:
        for i in range(200):  # each prompt once: all misses
            response = client.post(
                f"{cached.endpoint}/completions",
                json={"model": "cached", "prompt": f"cache {i}", "max_tokens": 8, "temperature": 0},
            )
            assert response.headers["X-Cache"] == "MISS"
            misses.append(response.headers)
    hit_latency = asyncio.run(
        load(
            f"{cached.endpoint}/completions",
            key,
            {"model": "cached", "prompt": "cache 0", "max_tokens": 8, "temperature": 0},
            200,
            1,
            hits,
        )
    )
    assert all(h["X-Cache"] == "HIT" for h in hits)
    hit_server = [float(h["X-Server-Time-Ms"]) for h in hits]
    miss_server = [float(h["X-Server-Time-Ms"]) for h in misses]
    print(
        f"cache: hit server time p50 {percentile(hit_server, 50):.3f} ms p99 {percentile(hit_server, 99):.3f} ms; "
        f"client latency p50 {percentile(hit_latency, 50):.2f} ms"
    )
    print(f"       miss (8 tokens) server time p50 {percentile(miss_server, 50):.2f} ms")


if __name__ == "__main__":
    main()
