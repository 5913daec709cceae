"""Webhook audit: after each completion, a JSON summary POSTed to a URL, off the request path.

The body is signed: ``X-LLMApp-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` with the
plugin's secret, and ``X-LLMApp-Timestamp`` (unix seconds), so a receiver can check both the sender
and the freshness. Deliveries go through a bounded queue to one sender thread per server: a failing
or slow receiver costs requests nothing (a full queue drops the newest summary, and says so in the
log). Each delivery has a timeout and is retried with exponential back-off; then it is dropped and
logged. Secrets and API keys are never in a summary; the content only when ``include_content`` is set.
"""

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass

import httpx

log = logging.getLogger("llmapp.server")

SUMMARY_FIELDS = (
    "application",
    "request_id",
    "key_label",
    "status",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def summary(record: dict, include_content: bool = False) -> dict:
    """What a receiver is told of one request: its outcome and figures, the content only when asked."""
    body = {name: record.get(name) for name in SUMMARY_FIELDS}
    if include_content:
        body["input"] = record.get("input")
        body["output"] = record.get("output")
    return body


@dataclass
class Delivery:
    url: str
    secret: str
    body: bytes
    timeout_s: float
    retries: int


class WebhookSender:
    """One thread that POSTs deliveries with a timeout and retries; ``send`` never blocks."""

    def __init__(self, timeout_s: float = 5.0, retries: int = 3, backoff_s: float = 0.5, capacity: int = 1000):
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.queue: queue.Queue[Delivery | None] = queue.Queue(capacity)
        self.delivered = self.failed = self.dropped = 0
        self.thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        self.thread.start()

    def send(self, url: str, secret: str, payload: dict, timeout_s: float | None = None, retries: int | None = None):
        body = json.dumps(payload, ensure_ascii=False).encode()
        delivery = Delivery(
            url,
            secret,
            body,
            self.timeout_s if timeout_s is None else timeout_s,
            self.retries if retries is None else retries,
        )
        try:
            self.queue.put_nowait(delivery)
        except queue.Full:
            self.dropped += 1
            log.warning("webhook %s: %d deliveries waiting; this one is dropped", url, self.queue.qsize())

    def close(self, wait_s: float = 5.0) -> None:
        self.queue.put(None)
        self.thread.join(wait_s)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while (delivery := self.queue.get()) is not None:
                self._deliver(client, delivery)

    def _deliver(self, client: httpx.Client, delivery: Delivery) -> None:
        for attempt in range(delivery.retries + 1):
            timestamp = str(int(time.time()))
            try:
                response = client.post(
                    delivery.url,
                    content=delivery.body,
                    timeout=delivery.timeout_s,
                    headers={
                        "Content-Type": "application/json",
                        "X-LLMApp-Timestamp": timestamp,
                        "X-LLMApp-Signature": sign(delivery.secret, timestamp, delivery.body),
                    },
                )
                if response.status_code < 300:
                    self.delivered += 1
                    return
                reason = f"answered {response.status_code}"
            except httpx.HTTPError as e:
                reason = f"{type(e).__name__}: {e}"
            if attempt < delivery.retries:
                time.sleep(self.backoff_s * 2**attempt)
        self.failed += 1
        log.warning(
            "webhook %s failed after %d attempts (%s); the summary is dropped", delivery.url, attempt + 1, reason
        )
