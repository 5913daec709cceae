"""Serving speed of our transformers engine (issue 22), in one run, rounds interleaved:

    LLMAPP_ENGINES_DIR=.test-engines .venv/bin/python bench/batching.py [--baseline 4bd06c8] [--rounds 3] [--threads N]

On the tiny GPT-2 (built on the spot), 16 tokens per request (greedy, ``min_tokens`` forcing all 16):

1. Bare ``generate()`` in this process: batches of 8 rows, and of 1 (requests/s).
2. Our app server, deployed through the platform (batch size 8, cache off, no plugin), over HTTP from an
   httpx client on the same machine: c=1 and c=8 (requests/s, p50).
3. ``transformers serve --continuous-batching`` (the managed engine, started by the same code an app server
   uses, called over its Unix socket; skipped when it is not installed in LLMAPP_ENGINES_DIR): c=8.
4. Mixed lengths (max_tokens drawn from 4–64, the same draws for both) at c=8, the engine in this process:
   today's continuous batcher against the static batcher of ``--baseline`` (its batching.py read with
   ``git show``, run by today's engine otherwise).
5. transformers' own continuous batching in this process (``generate_batch``, paged attention), the same
   16-token requests in batches of 8, against bare ``generate()``.

Each figure is the median of ``--rounds`` rounds, the paths taking turns within a round, so whatever else
the machine does falls on all of them alike. Results go to stdout; copy them to bench/RESULTS.md.
"""

import argparse
import asyncio
import importlib.util
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engines import standalone  # noqa: E402
from serving import BASE, deploy, load, main_with, tiny_platform  # noqa: E402

from llmapp import engines  # noqa: E402
from llmapp.extensions import db  # noqa: E402
from llmapp.models import Application, RegistryModel  # noqa: E402
from llmapp.runtime.engines import GenerationRequest, Prepared  # noqa: E402
from llmapp.runtime.engines.transformers import TransformersEngine  # noqa: E402
from llmapp.runtime.serving import ENDPOINTS  # noqa: E402
from llmapp.services import api_keys, engine_installs  # noqa: E402

TOKENS = 16
PROMPT = "hello world"
HTTP_BODY = {"prompt": PROMPT, "max_tokens": TOKENS, "min_tokens": TOKENS, "temperature": 0}
REQUESTS = {1: 60, 8: 240}


def bare_generate(engine: TransformersEngine, rows: int, seconds: float = 4.0) -> float:
    """Requests/s of generate() on batches of ``rows`` identical prompts, 16 new tokens each."""
    torch = engine.torch
    ids = torch.tensor([engine.tokenizer(PROMPT)["input_ids"]] * rows)
    mask = torch.ones_like(ids)
    done, start = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds:
            engine.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False,
                pad_token_id=engine.pad_id,
            )  # fmt: skip
            done += rows
    return done / (time.perf_counter() - start)


def generate_batch(engine: TransformersEngine, batches: int = 3) -> float:
    """Requests/s of transformers' own continuous batching (generate_batch, paged attention) on the same
    requests. Its cache is sized for them (64 pages of 32 tokens): left to itself it sizes the cache from
    the machine's memory, and one call took 17-88 s here."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = GenerationConfig(
        max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False, eos_token_id=-1, pad_token_id=engine.pad_id
    )
    paged = ContinuousBatchingConfig(num_blocks=64, page_size=32, max_batch_tokens=256, use_cuda_graph=False)
    prompt = engine.tokenizer(PROMPT)["input_ids"]
    start = time.perf_counter()
    for _ in range(batches):
        outputs = engine.model.generate_batch(
            inputs=[prompt] * 8, generation_config=config, continuous_batching_config=paged, warmup=False
        )
        assert all(len(o.generated_tokens) == TOKENS for o in outputs.values()), outputs
    return batches * 8 / (time.perf_counter() - start)


def http_round(url: str, key: str, body: dict, concurrency: int, uds: str | None = None) -> tuple[float, float]:
    """p50 latency (ms) and requests/s of one round over HTTP."""
    elapsed: list[float] = []
    latencies = asyncio.run(load(url, key, body, REQUESTS[concurrency], concurrency, elapsed_out=elapsed, uds=uds))
    return statistics.median(latencies), REQUESTS[concurrency] / elapsed[0]


def baseline_batcher(rev: str, work: Path):
    """The Batcher class of ``rev``'s runtime/engines/batching.py, importable beside today's."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:llmapp/runtime/engines/batching.py"], check=True, capture_output=True
    ).stdout.decode()
    path = work / "baseline_batching.py"
    path.write_text(source.replace("from ..errors import", "from llmapp.runtime.errors import").replace(
        "from . import", "from llmapp.runtime.engines import"
    ))  # fmt: skip
    if not hasattr(GenerationRequest, "sampling_key"):  # what the static batcher grouped requests by
        GenerationRequest.sampling_key = lambda r: (
            (0.0, 1.0, r.min_tokens, None) if r.greedy else (r.temperature, r.top_p, r.min_tokens, r.seed)
        )
    spec = importlib.util.spec_from_file_location("baseline_batching", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Batcher


def mixed_round(engine: TransformersEngine, lengths: list[int]) -> float:
    """Requests/s of 8 clients sending requests of the given lengths (in order), one after another."""
    queue = list(lengths)

    async def client():
        while queue:
            n = queue.pop()
            body = {"model": "tiny", "prompt": PROMPT, "max_tokens": n, "min_tokens": n, "temperature": 0}
            request = ENDPOINTS["completion"].parse(body, "tiny", engine.max_context, "transformers")
            answer = await engine.complete(Prepared(request, {}, engine.prompt_ids(request)))
            assert answer.completion_tokens == n

    async def run():
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(8)))
        return len(lengths) / (time.perf_counter() - start)

    return asyncio.run(run())


def in_process_engine(model_dir: Path, batcher_class) -> TransformersEngine:
    engine = TransformersEngine(str(model_dir), batch_size=8, served_name="tiny")
    engine.load()
    engine.warm_up()  # starts today's batcher; the baseline's replaces it
    if batcher_class is not None:
        engine.batcher = batcher_class(
            engine.model, engine.tokenizer, engine.torch, engine.device, 8, engine.eos_ids, engine.pad_id
        )
        engine.batcher.start()
    return engine


def run(app, work, args):
    user, model, tiny = tiny_platform(work)
    config = {**BASE, "batch_size": 8, "cache_size": 0, "context_size": 1024, "threads": args.threads}
    row = Application(name="ours", model_id=model.id, created_by_id=user.id, config=config)
    db.session.add(row)
    db.session.commit()
    ours = deploy(row)
    ours_url, ours_key = f"{ours.endpoint}/completions", api_keys.create_key(ours, "bench")[1]

    serve = None
    if engine_installs.installed("transformers-serve"):
        serve_model = RegistryModel(
            name="tiny-serve", parameters_billions=0.0004, precision="fp32", context_length=8192,
            engine="transformers-serve", source=str(tiny),
        )  # fmt: skip
        db.session.add(serve_model)
        db.session.commit()
        serve = standalone(engines.kind("transformers-serve"), serve_model, config)
    else:
        print("transformers-serve is not installed (flask engines install transformers-serve): its row is skipped")

    today = in_process_engine(tiny, None)
    baseline = in_process_engine(tiny, baseline_batcher(args.baseline, work))
    draws = random.Random(22)
    lengths = [draws.randint(4, 64) for _ in range(96)]

    results: dict[str, list] = {}

    def record(name, value):
        results.setdefault(name, []).append(value)

    for _ in range(args.rounds):
        record("generate b8", bare_generate(today, 8))
        record("generate b1", bare_generate(today, 1))
        record("ours c=1", http_round(ours_url, ours_key, {**HTTP_BODY, "model": ours.name}, 1))
        record("ours c=8", http_round(ours_url, ours_key, {**HTTP_BODY, "model": ours.name}, 8))
        if serve is not None:  # it refuses min_tokens; greedy, the tiny model runs to max_tokens all the same
            body = {**HTTP_BODY, "model": serve.upstream_model}
            del body["min_tokens"]
            url = "http://localhost/v1/completions"
            record("serve c=8", http_round(url, serve.token, body, 8, uds=serve.socket_path))
        record("mixed today", mixed_round(today, lengths))
        record("mixed baseline", mixed_round(baseline, lengths))
        record("generate_batch b8", generate_batch(today))

    def rps(name):
        values = results.get(name)
        if not values:
            return None
        return statistics.median(v[1] if isinstance(v, tuple) else v for v in values)

    def p50(name):
        return statistics.median(v[0] for v in results[name])

    print(f"tiny GPT-2, {TOKENS} forced tokens, median of {args.rounds} interleaved rounds (requests/s):")
    print(f"  bare generate(), batches of 8: {rps('generate b8'):.1f}; of 1: {rps('generate b1'):.1f}")
    print(f"  transformers generate_batch (continuous batching, paged), batches of 8: {rps('generate_batch b8'):.1f}")
    print(f"  our app server c=1: {rps('ours c=1'):.1f} (p50 {p50('ours c=1'):.2f} ms)")
    print(f"  our app server c=8: {rps('ours c=8'):.1f} (p50 {p50('ours c=8'):.2f} ms)")
    if serve is not None:
        print(f"  transformers serve --continuous-batching c=8: {rps('serve c=8'):.1f} (p50 {p50('serve c=8'):.2f} ms)")
    print(f"  mixed lengths (4-64 tokens), c=8, in process: today {rps('mixed today'):.1f}, "
          f"static batcher of {args.baseline} {rps('mixed baseline'):.1f}")  # fmt: skip
    print("targets:")
    print(f"  c=8 vs bare generate() b8: {rps('ours c=8') / rps('generate b8'):.0%} (>= 85 %)")
    print(f"  c=1 vs bare generate() b1: {rps('ours c=1') / rps('generate b1'):.0%} (>= 95 %)")
    if serve is not None:
        print(f"  c=8 vs transformers serve: {rps('ours c=8') / rps('serve c=8'):.2f}x (>= 2x)")
    print(f"  mixed lengths vs the static batcher: {rps('mixed today') / rps('mixed baseline'):.2f}x (>= 1.5x)")
    if serve is not None:
        serve.stop_engine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="4bd06c8", help="a commit with the static batcher")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="the app server's torch threads (0: torch's default)")
    args = parser.parse_args()
    main_with(lambda app, work: run(app, work, args))


if __name__ == "__main__":
    main()
