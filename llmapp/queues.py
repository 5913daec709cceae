"""Redis and RQ queues of the platform. One connection per app, made on first use."""

import contextlib
import socket
import threading
import time
import uuid

import redis
from flask import current_app
from rq import Queue, get_current_job
from rq.serializers import JSONSerializer

DEFAULT_QUEUE = "default"
# Jobs travel as JSON (never pickle, whose loading runs code) and name a function of the jobs package:
# a worker runs nothing else, whoever wrote to Redis (an app server holds its URL).
SERIALIZER = JSONSerializer
JOBS_PACKAGE = "jobs."
# A lock's holder renews it every third of its TTL, from a thread of its own, so it holds whatever
# the holder waits on; when the holder dies the lock lapses after its TTL.
TOOK_LOCK = "took_lock"  # set in a job's meta once it holds its lock: from then on, no lock means it died
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"


def connection() -> redis.Redis:
    """The platform's Redis (REDIS_URL, or the embedded one `python app.py` publishes)."""
    app = current_app._get_current_object()
    if "redis" not in app.extensions:
        url = app.config.get("REDIS_URL")
        if not url:
            raise RuntimeError("REDIS_URL is not set and no embedded Redis is running: start `python app.py`.")
        # A Redis that can't be reached answers an error in seconds instead of hanging a page or a job.
        # (No read timeout: RQ's workers block on their queues for minutes on this connection.)
        app.extensions["redis"] = redis.Redis.from_url(url, socket_connect_timeout=5, socket_keepalive=True)
    return app.extensions["redis"]


def this_host() -> str:
    """This machine's name among the workers: LLMAPP_HOSTNAME, else the host name."""
    return current_app.config.get("HOSTNAME") or socket.gethostname()


def host_queue_name(host: str) -> str:
    """Jobs for processes on ``host`` (stop, reconcile) go to the workers of that host."""
    return f"host:{host}"


def queue(name: str = DEFAULT_QUEUE) -> Queue:
    return Queue(name, connection=connection(), serializer=SERIALIZER)


class HeldLock:
    """A Redis lock taken with SET NX and kept alive by a renewing thread until released."""

    def __init__(self, conn: redis.Redis, key: str, ttl_s: int, token: str | None = None):
        self.connection, self.key, self.ttl_s = conn, key, max(1, int(ttl_s))
        self.token = token or uuid.uuid4().hex
        self.stopped = threading.Event()
        self.thread = None

    def acquire(self, wait_s: float = 0) -> bool:
        deadline = time.monotonic() + wait_s
        while not self.connection.set(self.key, self.token, nx=True, ex=self.ttl_s):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        self.thread = threading.Thread(target=self._renew, name=f"lock {self.key}", daemon=True)
        self.thread.start()
        return True

    def _renew(self) -> None:
        while not self.stopped.wait(self.ttl_s / 3):
            with contextlib.suppress(redis.RedisError):  # during an outage the lock may lapse: the work goes on
                self.connection.eval(_RENEW, 1, self.key, self.token, self.ttl_s)

    def release(self) -> None:
        self.stopped.set()
        with contextlib.suppress(redis.RedisError):
            self.connection.eval(_RELEASE, 1, self.key, self.token)


@contextlib.contextmanager
def held_lock(conn: redis.Redis, key: str, ttl_s: int, token: str | None = None, wait_s: float = 0):
    """Yield True while holding ``key`` (renewed until the block ends), or False when another holds it
    (still, after ``wait_s``). In an RQ job, the job's meta says it took its lock (TOOK_LOCK): the
    reconcile reads that."""
    lock = HeldLock(conn, key, ttl_s, token)
    if not lock.acquire(wait_s):
        yield False
        return
    job = get_current_job()
    if job is not None:
        job.meta[TOOK_LOCK] = True
        with contextlib.suppress(redis.RedisError):
            job.save_meta()
    try:
        yield True
    finally:
        lock.release()


def delete_matching(conn: redis.Redis, pattern: str) -> None:
    """Delete every key that matches ``pattern``, a thousand at a time (SCAN, never KEYS)."""
    batch = []
    for key in conn.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            conn.delete(*batch)
            batch = []
    if batch:
        conn.delete(*batch)
