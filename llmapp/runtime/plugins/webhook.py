"""Webhook audit: after each completion, a JSON summary POSTed to a URL, off the request path.

The body is signed: ``X-LLMApp-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` with the
plugin's secret, and ``X-LLMApp-Timestamp`` (unix seconds), so a receiver can check both the sender
and the freshness. Deliveries go through a bounded queue to one sender thread per server: a failing
or slow receiver costs requests nothing (a full queue drops the newest summary, and says so in the
log). Each delivery has a timeout and is retried with exponential back-off; then it is dropped and
logged. Secrets and API keys are never in a summary; the content only when ``include_content`` is set.

Where a delivery may go is llmapp/netguard.py's rule, checked here again on every connection (the URL
was checked when it was saved, but names resolve anew and a URL may predate the rule): the sender
resolves the name itself, checks each address, and connects to the address it checked. Redirects are
not followed and no proxy from the environment is used (either would connect somewhere unchecked). A
refused delivery is not retried; the log says it was refused and why, never what answers there. A URL
that can't be sent (a host that can't be IDNA-encoded, stored before the save-time check) is refused
the same way, and whatever else goes wrong with one delivery is logged and that summary dropped: the
sender thread goes on with the next one.
"""

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass

import httpcore
import httpx

from ... import netguard

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


class _CheckedBackend(httpcore.SyncBackend):
    """Opens each connection only to addresses the guard checked (the name is resolved here, once)."""

    def __init__(self, guard: netguard.Guard):
        self.guard = guard

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            addresses = self.guard.addresses(host, port)  # :raise netguard.Refused: (not mapped: no retry)
        except OSError as e:  # it does not resolve, maybe for now: retried as any failure to connect
            raise httpcore.ConnectError(str(e)) from e
        error = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as e:  # the next address of the name, as a resolver would
                error = e
        raise error


class _CheckedTransport(httpx.HTTPTransport):
    def __init__(self, guard: netguard.Guard):
        super().__init__(trust_env=False)
        # httpx takes no network backend, so its connection pool is replaced by one that uses ours; TLS
        # still verifies the certificate against the URL's host name.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), network_backend=_CheckedBackend(guard)
        )


class WebhookSender:
    """One thread that POSTs deliveries with a timeout and retries; ``send`` never blocks.

    ``allow``: the admin's allow-list (netguard); ``guard``: the rules themselves, instead of it.
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        capacity: int = 1000,
        allow=(),
        guard: netguard.Guard | None = None,
    ):
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.guard = guard or netguard.Guard.from_setting(allow)
        self.queue: queue.Queue[Delivery | None] = queue.Queue(capacity)
        self.delivered = self.failed = self.dropped = self.refused = 0
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
        transport = _CheckedTransport(self.guard)
        with httpx.Client(
            timeout=self.timeout_s, transport=transport, follow_redirects=False, trust_env=False
        ) as client:
            while (delivery := self.queue.get()) is not None:
                try:  # nothing one delivery does may end the thread: every later summary would be lost
                    self._deliver(client, delivery)
                except Exception as e:
                    log.error(
                        "webhook %s: the delivery failed (%s: %s); the summary is dropped",
                        delivery.url,
                        type(e).__name__,
                        e,
                        exc_info=True,
                    )
                    self.failed += 1

    def _deliver(self, client: httpx.Client, delivery: Delivery) -> None:
        shape = netguard.url_shape_error(delivery.url)  # a URL saved before the rule (user info, say)
        if shape:
            return self._refused(delivery, shape)
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
                reason = f"answered {response.status_code}"  # a redirect too: it is not followed
            except netguard.Refused as e:
                return self._refused(delivery, str(e))
            except (httpx.InvalidURL, UnicodeError) as e:  # a URL httpx can't send (an unencodable host)
                return self._refused(delivery, f"not a URL that can be sent ({type(e).__name__}: {e}).")
            except httpx.HTTPError as e:
                reason = f"{type(e).__name__}: {e}"
            if attempt < delivery.retries:
                time.sleep(self.backoff_s * 2**attempt)
        log.warning(
            "webhook %s failed after %d attempts (%s); the summary is dropped", delivery.url, attempt + 1, reason
        )
        self.failed += 1  # after the log line, so whoever waits for the count finds the line

    def _refused(self, delivery: Delivery, reason: str) -> None:
        """Not sent, nor retried: the reason is the rule's, decided before any connection was opened."""
        log.warning("webhook %s refused: %s The summary is dropped.", delivery.url, reason)
        self.refused += 1
        self.failed += 1
