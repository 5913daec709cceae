"""What plugins cost per request: a chain of all five types against none, and retrieval on a large index.

    .venv/bin/python bench/plugins.py [--requests 2000] [--passages 10000]

1. The chain's added latency per request, in-process, through the same code the app server runs
   (PluginRun: the input side on a chat request, the output side on a streamed reply of 200 chunks
   with its hold-back buffers, the webhook's summary handed to its sender thread). The chain, in
   order: system prompt (with a template) → content filter (10 keywords, 2 patterns, mask, both
   sides) → PII redaction (both sides) → knowledge retrieval (top 3 of 1,000 passages) → webhook
   audit (with the content, to a receiver that answers 204 on this machine). Added latency = the
   chain's time per request; the engine's own time is not in it.
2. Retrieval alone against an index of --passages passages (built from generated, varied text):
   index build time, then search time per question, p50/p99.
"""

import argparse
import http.server
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmapp.runtime.plugins import retrieval  # noqa: E402
from llmapp.runtime.plugins.chain import Chain, PluginRun  # noqa: E402
from llmapp.runtime.plugins.webhook import WebhookSender  # noqa: E402

WORDS = (
    "account invoice payment refund password reset export archive project member billing address support "
    "hours incident status page upgrade plan storage quota region backup restore schedule report dashboard "
    "alert webhook token permission role admin audit policy retention deploy model endpoint latency cache "
    "batch timeout queue worker server region language translate summary document passage question answer"
).split()


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 18))).capitalize() + "."


def documents(count: int, rng: random.Random) -> list[list[str]]:
    """``count`` passages' worth of Markdown: a heading and a paragraph of about 600 characters each."""
    text = "\n\n".join(f"# Topic {i}\n\n" + " ".join(sentence(rng) for _ in range(6)) for i in range(count))
    return [["corpus.md", text]]


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def chain_of_five(hook_url: str, rng: random.Random) -> Chain:
    return Chain.build(
        {
            "version": "bench",
            "plugins": [
                {
                    "name": "style",
                    "type": "system_prompt",
                    "config": {"system_prompt": "You are brief.", "template": "Question: {input}"},
                },
                {
                    "name": "filter",
                    "type": "content_filter",
                    "config": {
                        "keywords": ["password", "secret", "api key", "token", "confidential"] + WORDS[40:45],
                        "patterns": [r"sk-[A-Za-z0-9]{20,}", r"\b\d{16}\b"],
                        "action": "mask",
                        "apply_to": "both",
                    },
                },
                {"name": "pii", "type": "pii_redaction", "config": {"apply_to": "both"}},
                {
                    "name": "rag",
                    "type": "knowledge_retrieval",
                    "config": {"top_k": 3},
                    "documents": documents(1000, rng),
                },
                {
                    "name": "audit",
                    "type": "webhook_audit",
                    "config": {"url": hook_url, "secret": "s" * 16, "include_content": True},
                },
            ],
        }
    )


def one_request(chain: Chain, sender: WebhookSender | None, reply_chunks: list[str], question: str) -> float:
    started = time.perf_counter()
    run = PluginRun(chain)
    messages = [{"role": "user", "content": question}]
    run.apply_input("chat", messages, None)
    output = run.output()
    for chunk in reply_chunks:
        output.feed(chunk)
    output.close()
    if sender is not None:
        for step, summary in run.webhook_summaries({"request_id": "r", "status": 200}):
            sender.send(step.config["url"], step.config["secret"], summary)
    return time.perf_counter() - started


def bench_chain(requests: int, rng: random.Random) -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    built = time.perf_counter()
    chain = chain_of_five(hook_url, rng)
    print(f"chain of five built (its index: 1,000 passages) in {time.perf_counter() - built:.2f} s")
    sender = WebhookSender(capacity=100_000)
    # A reply of 200 chunks (about 5 characters each, as tokens arrive), with an address and a phone
    # number in it; a question with an address.
    reply = " ".join(sentence(rng) for _ in range(12)) + " Write to help@example.com or call 13812345678."
    chunks = [reply[i : i + 5] for i in range(0, len(reply), 5)][:200]
    questions = [f"{sentence(rng)} My e-mail is ann{i}@example.com." for i in range(requests)]
    for i in range(200):  # warm-up
        one_request(chain, sender, chunks, questions[i % len(questions)])
    empty = Chain()
    base = [one_request(empty, None, chunks, q) for q in questions]
    times = [one_request(chain, sender, chunks, q) for q in questions]
    sender.close(30)
    print(f"chunks per reply: {len(chunks)}, reply {len(reply)} characters; webhook deliveries: {sender.delivered}")
    for name, values in (("no plugins", base), ("chain of five", times)):
        print(
            f"{name:>14}: p50 {percentile(values, 50) * 1000:.3f} ms, p99 {percentile(values, 99) * 1000:.3f} ms, "
            f"mean {statistics.mean(values) * 1000:.3f} ms"
        )
    per_plugin = {}
    for q in questions[:500]:
        run = PluginRun(chain)
        run.apply_input("chat", [{"role": "user", "content": q}], None)
        output = run.output()
        for chunk in chunks:
            output.feed(chunk)
        output.close()
        for name, seconds in run.seconds.items():
            per_plugin.setdefault(name, []).append(seconds)
    print("per plugin, p50: " + ", ".join(f"{n} {percentile(v, 50) * 1000:.3f} ms" for n, v in per_plugin.items()))
    receiver.shutdown()


def bench_retrieval(passages: int, rng: random.Random) -> None:
    built = time.perf_counter()
    index = retrieval.Index.from_documents([tuple(d) for d in documents(passages, rng)], passage_chars=800)
    print(f"index of {len(index.passages):,} passages built in {time.perf_counter() - built:.2f} s")
    questions = [sentence(rng) for _ in range(500)]
    for q in questions[:20]:
        index.search(q, 3)
    times = []
    for q in questions:
        started = time.perf_counter()
        index.search(q, 3)
        times.append(time.perf_counter() - started)
    print(f"search, top 3: p50 {percentile(times, 50) * 1000:.3f} ms, p99 {percentile(times, 99) * 1000:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--passages", type=int, default=10_000)
    args = parser.parse_args()
    rng = random.Random(7)
    bench_chain(args.requests, rng)
    bench_retrieval(args.passages, rng)


if __name__ == "__main__":
    main()
