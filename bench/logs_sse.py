"""The live log stream under load: latency from a written line to a viewer, and fan-out to many viewers
beside ordinary pages, on the platform served by gunicorn as in production.

    .venv/bin/python bench/logs_sse.py [--worker-class gthread|gevent] [--viewers 100] [--rate 200] [--seconds 60]

(gevent: `.venv/bin/pip install gevent` first; it is not needed to run the platform.)

Everything is real: an embedded Redis, a SQLite database with one user and one application, gunicorn
with the chosen worker class (2 workers), viewers that hold the SSE stream open over HTTP (httpx, in 4
client processes), and a writer that appends lines to the application's log as an app server does.

1. Latency: one viewer, 500 lines at 50 lines/s; each line carries its write time; p50/p99 of arrival.
2. Fan-out: N viewers while the log grows by RATE lines/s for SECONDS: every viewer must receive every
   line, in order, none twice. Meanwhile an ordinary page (the applications list) is fetched 5 times a
   second; its p95 is compared with the same page fetched with no viewer.
"""

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402

from llmapp import keyspace  # noqa: E402
from llmapp.embedded import EmbeddedRedis, free_port  # noqa: E402
from llmapp.runtime import logs as runtime_logs  # noqa: E402

EMAIL, PASSWORD = "bench@example.com", "bench-password"


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def setup(work: Path, env: dict) -> str:
    """Migrate, create the user and the application; return the application's id."""
    code = f"""
from app import create_app
from llmapp.extensions import db
from llmapp.models import Application, RegistryModel
from llmapp.services import OPERATOR, users
import flask_migrate
app = create_app()
with app.app_context():
    flask_migrate.upgrade()
    user = users.create_user({EMAIL!r}, {PASSWORD!r}, admin=True, acting=OPERATOR)
    model = RegistryModel(
        name="m", parameters_billions=1, precision="fp32", context_length=8, engine="transformers", source="/m"
    )
    db.session.add(model); db.session.commit()
    application = Application(name="logged", model_id=model.id, created_by_id=user.id, config={{}})
    db.session.add(application); db.session.commit()
    print(application.id)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def login(base: str) -> dict:
    with httpx.Client(base_url=base) as client:
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', client.get("/login").text).group(1)
        answer = client.post("/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token})
        assert answer.status_code == 302, answer.text
        return dict(client.cookies)


async def view(base, cookies, path, expected, received, ready, deadline):
    """One viewer: read events until ``expected`` lines arrived (or the deadline); record (id, arrival)."""
    async with httpx.AsyncClient(base_url=base, cookies=cookies, timeout=None) as client:
        async with client.stream("GET", path) as response:
            if response.status_code != 200:
                raise SystemExit(f"the stream answered {response.status_code}")
            ready.release()
            event_id = None
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: ") and event_id:
                    received.append((event_id, time.time(), line))
                    event_id = None
                    if len(received) >= expected:
                        return
                if time.time() > deadline:
                    return


def viewer_process(base, cookies, path, count, expected, seconds, out_queue, started):
    async def main():
        ready = asyncio.Semaphore(0)
        results = [[] for _ in range(count)]
        deadline = time.time() + seconds + 60
        tasks = [asyncio.create_task(view(base, cookies, path, expected, r, ready, deadline)) for r in results]
        for _ in range(count):
            await ready.acquire()
        started.put(count)
        await asyncio.gather(*tasks)
        out_queue.put([[event_id for event_id, _, _ in r] for r in results])

    asyncio.run(main())


def page_p95(base, cookies, count, interval=0.2) -> tuple[float, list[float]]:
    times = []
    with httpx.Client(base_url=base, cookies=cookies) as client:
        for _ in range(count):
            start = time.perf_counter()
            assert client.get("/applications/").status_code == 200
            times.append((time.perf_counter() - start) * 1000)
            time.sleep(interval)
    return percentile(times, 95), times


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker-class", default="gthread", choices=("gthread", "gevent"))
    parser.add_argument("--threads", type=int, default=64, help="gthread: threads per worker")
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmapp-sse-"))
    embedded = EmbeddedRedis(work / "redis", publish=False)
    redis_url = embedded.start()
    port = free_port()
    env = {
        **os.environ,
        "LLMAPP_ENV": "development",
        "LLMAPP_INSTANCE_PATH": str(work / "instance"),
        "DATABASE_URL": f"sqlite:///{work}/bench.db",
        "REDIS_URL": redis_url,
        "LLMAPP_LOGIN_RATE_LIMIT": "1000 per minute",
    }
    application_id = setup(work, env)
    workers = ["--worker-class", args.worker_class, "--workers", "2"]
    workers += ["--threads", str(args.threads)] if args.worker_class == "gthread" else ["--worker-connections", "1000"]
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *workers, "app:create_app()"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    connection = redis.Redis.from_url(redis_url)
    key = keyspace.logs(application_id)
    try:
        for _ in range(100):
            try:
                if httpx.get(base + "/login").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        cookies = login(base)
        stream = f"/applications/{application_id}/logs/stream"
        print(f"gunicorn {' '.join(workers)}; {os.cpu_count()} cores; Python {sys.version.split()[0]}")

        # 1. Latency of one viewer.
        arrivals = []
        ready = asyncio.Semaphore(0)

        async def latency():
            task = asyncio.create_task(view(base, cookies, stream, 500, arrivals, ready, time.time() + 120))
            await ready.acquire()
            await asyncio.sleep(0.5)
            for i in range(500):
                connection.xadd(key, runtime_logs.record(f"latency probe t={time.time():.6f} i={i}"))
                await asyncio.sleep(0.02)
            await task

        asyncio.run(latency())
        delays = []
        for _, arrived, data in arrivals:
            delays.append((arrived - float(re.search(r"t=([0-9.]+)", data).group(1))) * 1000)
        print(
            f"latency, written → at the viewer (500 lines, 50/s): p50 {percentile(delays, 50):.1f} ms, "
            f"p99 {percentile(delays, 99):.1f} ms, max {max(delays):.1f} ms"
        )

        # 2. Fan-out beside ordinary pages.
        alone_p95, alone = page_p95(base, cookies, 100)
        total = args.rate * args.seconds
        processes, per = 4, args.viewers // 4
        out_queue, started = multiprocessing.Queue(), multiprocessing.Queue()
        clients = [
            multiprocessing.Process(
                target=viewer_process, args=(base, cookies, stream, per, total, args.seconds, out_queue, started)
            )
            for _ in range(processes)
        ]
        for client in clients:
            client.start()
        for _ in clients:
            started.get(timeout=120)
        written = []

        def write_lines():
            interval = 1 / args.rate
            start = time.perf_counter()
            for i in range(total):
                written.append(connection.xadd(key, runtime_logs.record(f"fan-out line {i}")).decode())
                delay = start + (i + 1) * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)

        writer = threading.Thread(target=write_lines)

        def cpu(process_ids) -> float:
            total = 0.0
            for pid in process_ids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = psutil.Process(pid).cpu_times()
                    total += times.user + times.system
            return total

        web = [server.pid] + [child.pid for child in psutil.Process(server.pid).children()]
        viewers = [client.pid for client in clients]
        cpu_before = (cpu(web), cpu(viewers), cpu([embedded.client.pid]))
        began = time.perf_counter()
        writer.start()
        busy_p95, busy = page_p95(base, cookies, max(10, args.seconds * 5 - 10))
        writer.join()
        elapsed = time.perf_counter() - began
        cpu_after = (cpu(web), cpu(viewers), cpu([embedded.client.pid]))
        results = []
        for _ in clients:
            results += out_queue.get(timeout=args.seconds + 120)
        for client in clients:
            client.join(30)
        exact = sum(1 for r in results if r == written)
        print(
            f"fan-out: {len(results)} viewers, {len(written)} lines at {len(written) / elapsed:.0f} lines/s over "
            f"{elapsed:.0f} s: {exact} of {len(results)} viewers got every line, in order, none twice"
        )
        if exact < len(results):
            worst = min(results, key=len)
            print(f"  the worst viewer got {len(worst)} lines; duplicates {len(worst) - len(set(worst))}")
        used = [(after - before) / elapsed for before, after in zip(cpu_before, cpu_after, strict=True)]
        print(f"CPU during the fan-out (cores): web {used[0]:.2f}, viewer clients {used[1]:.2f}, Redis {used[2]:.2f}")
        print(
            f"ordinary page (the applications list) p95: {alone_p95:.1f} ms alone, {busy_p95:.1f} ms beside the "
            f"viewers ({busy_p95 / alone_p95:.2f}x); medians {statistics.median(alone):.1f} / "
            f"{statistics.median(busy):.1f} ms"
        )
    finally:
        server.terminate()  # open streams hold gunicorn's graceful stop until their next heartbeat
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        embedded.stop()


if __name__ == "__main__":
    main()
