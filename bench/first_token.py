"""Time to the first streamed token with the demo's plugin chain attached, against none (issue 22).

    .venv/bin/python bench/first_token.py [--requests 100]

Two applications of the same tiny GPT-2 (built on the spot), deployed through the platform's services on a
temporary SQLite database and embedded Redis (bench/serving.py's ``main_with``): one with no plugins, one
with the chain the demo gives hello-tiny (house-style: a system prompt; redact-pii: e-mail addresses, phone
numbers and IDs masked both ways, on the stream as it arrives). Each request is a streamed chat completion
of 16 tokens (``min_tokens`` forces them all); the time to the first chunk that carries text is measured by
an httpx client on the same machine, the two applications' requests interleaved (one, then the other), so
that whatever else the machine does falls on both alike. Results go to stdout; copy them to bench/RESULTS.md.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from serving import BASE, deploy, main_with, percentile, tiny_platform  # noqa: E402

from llmapp.extensions import db  # noqa: E402
from llmapp.models import Application  # noqa: E402
from llmapp.services import api_keys, plugins  # noqa: E402
from llmapp.services.demo import PLUGINS  # noqa: E402

CHAIN = ["house-style", "redact-pii"]  # the demo's hello-tiny chain (llmapp/services/demo.py)


def first_token_ms(client: httpx.Client, url: str, key: str, body: dict) -> tuple[float, str]:
    """Milliseconds to the first chunk with text, and the whole text streamed."""
    start, first, text = time.perf_counter(), None, []
    with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            if delta and first is None:
                first = (time.perf_counter() - start) * 1000
            text.append(delta)
    assert first is not None, "no text streamed"
    return first, "".join(text)


def run(app, work, requests: int):
    user, model, _ = tiny_platform(work)
    demo = {name: (type_name, config) for name, type_name, _, config in PLUGINS}
    chain = [plugins.create(user, {"name": n, "type": demo[n][0], "config": demo[n][1]}) for n in CHAIN]

    served = {}
    for name, attached in (("plain", []), ("demo-chain", chain)):
        row = Application(name=name, model_id=model.id, created_by_id=user.id, config={**BASE, "batch_size": 1})
        db.session.add(row)
        db.session.commit()
        for plugin in attached:
            plugins.attach(row, user, plugin.id)
        row = deploy(row)
        served[name] = (f"{row.endpoint}/chat/completions", api_keys.create_key(row, "bench")[1])

    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Say hello to ann.lee@example.com, please."}],
        "max_tokens": 16,
        "min_tokens": 16,
        "stream": True,
    }
    times = {name: [] for name in served}
    with httpx.Client(timeout=60) as client:
        for name, (url, key) in served.items():  # warm each server and its connection
            for _ in range(10):
                first_token_ms(client, url, key, {**body, "model": name})
        for _ in range(requests):
            for name, (url, key) in served.items():
                times[name].append(first_token_ms(client, url, key, {**body, "model": name})[0])

    plain, chained = statistics.median(times["plain"]), statistics.median(times["demo-chain"])
    print(f"{requests} streamed chat completions each, 16 tokens, interleaved; time to the first text chunk:")
    for name, values in times.items():
        print(
            f"  {name:11} p50 {statistics.median(values):6.2f} ms   p90 {percentile(values, 90):6.2f} ms"
            f"   p99 {percentile(values, 99):6.2f} ms"
        )
    print(f"  demo chain / none, p50: {chained / plain:.3f}x (target <= 1.1x)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    main_with(lambda app, work: run(app, work, args.requests))


if __name__ == "__main__":
    main()
