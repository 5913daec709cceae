"""Does a short request wait behind a long one? The transformers engine in process (no HTTP), on the
tiny GPT-2 of the tests, today's batcher beside a baseline commit's.

    .venv/bin/python bench/fairness.py [--baseline 0bd8a8d] [--trials 10] [--baseline-trials 3]

Cases, for each engine:
- short alone: a 2-token request (sampled, min_tokens=2), latency from submission to its answer;
- short behind long: the same request sent while an 8,000-token one (other sampling settings, min_tokens
  forcing every token) is 200 tokens in; its latency, and how many tokens the long one generated
  between the short one's submission and its answer (the wait, counted in the long one's steps);
- two long at once: two 1,000-token requests with different settings sent together, the wall time until
  both are done;
- closed loop: 8 clients each sending 8 requests of 32 tokens (same settings) one after the other,
  tokens/s.

The baseline's engine is read with `git show` (no checkout) and imported beside today's, as a package
of its own: a revision from before the engines package (runtime/engines.py and runtime/openai_api.py),
the only layout the baselines of this benchmark have.
"""

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmapp.runtime.engines import Prepared  # noqa: E402
from llmapp.runtime.engines.transformers import TransformersEngine  # noqa: E402
from llmapp.runtime.serving import ENDPOINTS  # noqa: E402
from llmapp.runtime.tiny_model import build_tiny_model  # noqa: E402

LONG = 8000


class Today:
    """Today's engine, as the benchmark drives it."""

    TransformersEngine = TransformersEngine

    @staticmethod
    def request(engine, body):
        return ENDPOINTS["completion"].parse(body, "tiny", engine.max_context, "transformers")

    @staticmethod
    def submit(engine, req):
        return engine.submit(Prepared(req, {}, engine.prompt_ids(req)))


class Baseline:
    """A revision's runtime/engines.py and runtime/openai_api.py, imported as a package of their own."""

    def __init__(self, rev: str, work: Path):
        package = work / "baseline_runtime"
        package.mkdir()
        (package / "__init__.py").write_text("")
        for name in ("engines.py", "openai_api.py"):
            source = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{rev}:llmapp/runtime/{name}"], check=True, capture_output=True
            ).stdout
            (package / name).write_bytes(source)
        sys.path.insert(0, str(work))
        self.engines = importlib.import_module("baseline_runtime.engines")
        self.openai_api = importlib.import_module("baseline_runtime.openai_api")
        self.TransformersEngine = self.engines.TransformersEngine

    def request(self, engine, body):
        return self.openai_api.parse("completion", body, "tiny", engine.max_context, "transformers")

    def submit(self, engine, req):
        return engine._submit(self.engines.Prepared(req, {}, engine._prompt_ids(req)))


def submit(module, engine, **body):
    return module.submit(engine, module.request(engine, {"model": "tiny", "prompt": "hello", **body}))


async def until(predicate, timeout=600):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.002)


async def settle(job):
    await asyncio.gather(job.done, return_exceptions=True)


SHORT = {"max_tokens": 2, "min_tokens": 2, "temperature": 0.7}


async def short_alone(module, engine, trials):
    latencies = []
    for _ in range(trials):
        start = time.perf_counter()
        await submit(module, engine, **SHORT).done
        latencies.append(time.perf_counter() - start)
    return latencies


async def short_behind_long(module, engine, trials):
    latencies, waited = [], []
    for _ in range(trials):
        long = submit(module, engine, max_tokens=LONG, min_tokens=LONG, temperature=1.0)
        await until(lambda long=long: len(long.tokens) >= 200)
        before, start = len(long.tokens), time.perf_counter()
        await submit(module, engine, **SHORT).done
        latencies.append(time.perf_counter() - start)
        waited.append(len(long.tokens) - before)
        long.cancelled.set()
        await settle(long)
    return latencies, waited


async def closed_loop(module, engine):
    async def client():
        for _ in range(8):
            await submit(module, engine, max_tokens=32, min_tokens=32).done

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(8)))
    return 8 * 8 * 32 / (time.perf_counter() - start)


async def two_long(module, engine):
    start = time.perf_counter()
    jobs = [submit(module, engine, max_tokens=1000, min_tokens=1000, temperature=t, top_p=0.9) for t in (0.8, 0.9)]
    await asyncio.gather(*(job.done for job in jobs))
    return time.perf_counter() - start


def run(name, module, model_dir, trials):
    engine = module.TransformersEngine(str(model_dir), batch_size=8, served_name="tiny")
    engine.load()
    engine.warm_up()

    async def scenario():
        await short_alone(module, engine, 3)  # warm
        alone = await short_alone(module, engine, trials)
        behind, waited = await short_behind_long(module, engine, trials)
        both = await two_long(module, engine)
        loop = await closed_loop(module, engine)
        return alone, behind, waited, both, loop

    alone, behind, waited, both, loop = asyncio.run(scenario())
    ms = 1000
    print(
        f"| {name} | {statistics.median(alone) * ms:.1f} / {max(alone) * ms:.1f} ms "
        f"| {statistics.median(behind) * ms:.1f} / {max(behind) * ms:.1f} ms "
        f"| {statistics.median(waited):.0f} / {max(waited)} | {both:.2f} s | {loop:.0f} tokens/s |",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="0bd8a8d", help="a commit before the batcher took turns; '' for none")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--baseline-trials", type=int, default=3, help="each waits for a whole 8,000-token run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model_dir = build_tiny_model(work / "tiny")
        print(
            "| engine | short alone, median / max | short behind long, median / max "
            "| long's tokens meanwhile, median / max | two 1,000-token requests at once | closed loop, batch 8 |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        if args.baseline:
            run(f"baseline {args.baseline}", Baseline(args.baseline, work), model_dir, args.baseline_trials)
        run("today (continuous batching)", Today, model_dir, args.trials)


if __name__ == "__main__":
    main()
