"""Managed engines (issue 19): each engine on the tiny GPT-2, called directly and through our app server,
c=1 and c=8, in one run, rounds interleaved; the front's added latency (p50) and its share of the
engine's own requests/s.

    LLMAPP_ENGINES_DIR=.test-engines [BENCH_THREADS=1] .venv/bin/python bench/engines.py [llama.cpp vllm …]

The engines must be installed there (`flask engines install NAME`; the test suite leaves them in
.test-engines/). "Directly" is a second copy of the same engine with the same settings, started by the
same code the app server uses (runtime/engines/managed.py), called over its Unix socket; the
two take turns, so one idles while the other is measured. Requests are the same chat completion
(greedy, max_tokens 16) on both paths; the app server's cache is off and no plugin is attached.
"""

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serving import BASE, deploy, load, main_with  # noqa: E402

from llmapp import engines  # noqa: E402
from llmapp.extensions import db  # noqa: E402
from llmapp.models import Application, RegistryModel, User  # noqa: E402
from llmapp.runtime.engines.managed import ManagedEngine  # noqa: E402
from llmapp.runtime.spec import ServerSpec, ServingConfig  # noqa: E402
from llmapp.runtime.tiny_gguf import build_tiny_gguf  # noqa: E402
from llmapp.runtime.tiny_model import build_tiny_model  # noqa: E402
from llmapp.services import api_keys, engine_installs  # noqa: E402

ROUNDS = 3
REQUESTS = {1: 60, 8: 240}
BODY = {"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 16, "temperature": 0}


def standalone(kind, model: RegistryModel, config: dict) -> ManagedEngine:
    """The same engine with the same settings, started as the app server starts it, outside any server."""
    spec = ServerSpec(
        app_id="bench",
        app_name="direct",
        engine=kind.name,
        config=ServingConfig.from_dict(config),
        port=0,
        engine_options=kind.spec_options(model),
    )
    engine = ManagedEngine(kind, spec, dict(os.environ))
    engine.load()
    return engine


def measure(url: str, key: str, model: str, concurrency: int, uds: str | None = None) -> tuple[float, float]:
    """p50 latency (ms) and requests/s of one round."""
    elapsed: list[float] = []
    body = {**BODY, "model": model}
    latencies = asyncio.run(load(url, key, body, REQUESTS[concurrency], concurrency, elapsed_out=elapsed, uds=uds))
    return statistics.median(latencies), REQUESTS[concurrency] / elapsed[0]


def run(app, work):
    names = sys.argv[1:] or list(engines.managed_names())
    user = User(email="bench@example.com", is_admin=True)
    user.set_password("password123")
    db.session.add(user)
    db.session.commit()
    tiny = build_tiny_model(work / "tiny-gpt2")
    gguf = build_tiny_gguf(work / "tiny-gpt2.gguf", tiny)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    for name in names:
        kind = engines.kind(name)
        marker = engine_installs.installed(name)
        if not marker:
            print(f"{name}: not installed in {engine_installs.engines_dir()} (flask engines install {name}); skipped")
            continue
        model = RegistryModel(
            name=f"tiny-{name}", parameters_billions=0.0004, precision="fp32", context_length=8192,
            engine=name, source=str(gguf if name == "llama.cpp" else tiny),
        )  # fmt: skip
        db.session.add(model)
        db.session.commit()
        # BENCH_THREADS: the engine's CPU threads (0: its default, every core; 1 leaves a core to the front)
        threads = int(os.environ.get("BENCH_THREADS", "0"))
        config = {**BASE, "batch_size": 8, "context_size": 1024, "cache_size": 0, "threads": threads}
        row = Application(
            name=f"bench-{name.replace('.', '')}", model_id=model.id, created_by_id=user.id, config=config
        )
        db.session.add(row)
        db.session.commit()
        started = time.perf_counter()
        fronted = deploy(row)
        print(
            f"\n{name} {marker['version']} (threads {threads or 'default'}): deployed behind the app server in "
            f"{time.perf_counter() - started:.1f} s"
        )
        key = api_keys.create_key(fronted, "bench")[1]
        direct = standalone(kind, model, config)
        for concurrency in (1, 8):
            results = {"direct": [], "front": []}
            for _ in range(ROUNDS):  # interleaved: direct, front, direct, front…
                results["direct"].append(
                    measure(
                        "http://localhost/v1/chat/completions",
                        direct.token,
                        direct.upstream_model,
                        concurrency,
                        uds=direct.socket_path,
                    )
                )
                results["front"].append(measure(f"{fronted.endpoint}/chat/completions", key, fronted.name, concurrency))
            p50 = {path: statistics.median(r[0] for r in rounds) for path, rounds in results.items()}
            rps = {path: statistics.median(r[1] for r in rounds) for path, rounds in results.items()}
            print(
                f"  c={concurrency}: p50 direct {p50['direct']:.2f} ms, through the app server {p50['front']:.2f} ms "
                f"(+{p50['front'] - p50['direct']:.2f} ms); req/s direct {rps['direct']:.1f}, through "
                f"{rps['front']:.1f} ({100 * rps['front'] / rps['direct']:.0f} %)"
            )
        direct.stop_engine()


if __name__ == "__main__":
    main_with(run)
