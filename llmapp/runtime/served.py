"""One application as its server serves it: its spec and engine, and the state its requests share
(keys, the response cache, admission, the plugin chain), never module globals."""

import json
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .engines import Engine, RequestOutput
from .keys import KeyChecker
from .plugins.chain import Chain
from .plugins.webhook import WebhookSender
from .quotas import Quotas
from .spec import ServerSpec


class ResponseCache:
    """Exact-match LRU of deterministic (greedy), non-streamed answers; capacity 0 disables it."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[str, RequestOutput] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def key(path: str, body: dict) -> str:
        return path + json.dumps({k: v for k, v in body.items() if k not in ("user", "stream")}, sort_keys=True)

    def get(self, key: str) -> RequestOutput | None:
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key]
        self.misses += 1
        return None

    def put(self, key: str, value: RequestOutput) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
            self.evictions += 1


class Admission:
    """At most ``limit`` requests in flight; the next is refused (429), never queued."""

    def __init__(self, limit: int):
        self.limit, self.in_flight, self.rejected = limit, 0, 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            self.rejected += 1
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


@dataclass
class Served:
    """One application as its server serves it: its spec, engine and per-application state."""

    spec: ServerSpec
    engine: Engine
    keys: KeyChecker
    cache: ResponseCache = None
    admission: Admission = None
    outcomes: Counter = field(default_factory=Counter)  # status code → requests answered with it
    started: float = field(default_factory=time.time)
    recorder: object = None  # a recorder.Recorder, which counts each request for the metrics
    chain: Chain = field(default_factory=Chain)  # the plugins, swapped whole when the platform changes them
    webhooks: WebhookSender | None = None  # started with the first chain that has a webhook
    plugin_threads: ThreadPoolExecutor = None  # the input plugins' work: a thread for each slot
    quotas: Quotas = None  # the limits, checked and settled in Redis (given the policy by ``keys``)

    def __post_init__(self):
        self.cache = self.cache or ResponseCache(self.spec.config.cache_size)
        self.admission = self.admission or Admission(self.spec.config.max_concurrency)
        if self.quotas is None:
            self.quotas = Quotas(self.keys.connection, self.spec.app_id, self.spec.quota_fallback)
        self.keys.quotas = self.quotas
        # As many threads as slots: an admitted request never waits for another's plugins (nor for the
        # default executor's threads, which other work shares).
        self.plugin_threads = self.plugin_threads or ThreadPoolExecutor(
            self.admission.limit, thread_name_prefix="plugins"
        )
