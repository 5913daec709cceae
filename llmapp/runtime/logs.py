"""Application logs: a bounded Redis Stream per application, written by app servers and jobs alike.

App servers never write to Redis on the request path: their records go to a bounded in-memory queue
that one thread drains in batches (one pipeline per batch). While Redis is unreachable the thread
keeps what it holds (up to the queue's size), retries with back-off, and says how many lines it had
to drop once Redis is back.
"""

import json
import logging
import queue
import re
import threading
import time

import redis

from .. import keyspace

MAXLEN = 2000  # lines kept per application unless its configuration says otherwise (XADD MAXLEN ~)
TRIM_EVERY_S = 60  # how often a server drops its application's lines older than their age limit


# What must never reach a log line as itself, since a client can put it in a model or parameter name:
# it would forge lines (CR, LF, U+0085, U+2028/2029), drive a terminal (ESC and the other C0/C1
# controls), reorder what is shown (bidi marks, embeddings, overrides, isolates) or make the line
# unwritable (a lone surrogate can't be encoded for Redis, and the whole line would be lost).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    return NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def neutralise(text) -> str:
    """``text`` with every unsafe character written as its escape (``\\n``, ``\\x1b``, ``\\u2028``): one
    record stays one line, visibly. Idempotent (the escapes are plain text), so readers may apply it again."""
    text = text if isinstance(text, str) else str(text)
    return UNSAFE.sub(_escape, text) if UNSAFE.search(text) else text


def _neutralise_all(value):
    """The same for every string in a record's fields, keys included."""
    if isinstance(value, str):
        return neutralise(value)
    if isinstance(value, dict):
        return {neutralise(key): _neutralise_all(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_neutralise_all(item) for item in value]
    return value


def record(
    message: str, level: str = "INFO", source: str = "platform", request_id: str | None = None, fields=None
) -> dict:
    """One log record as the stream keeps it: time, level, source, request id, message, fields (JSON).
    Every record is made here, so this is where untrusted text is neutralised (see UNSAFE)."""
    entry = {"ts": f"{time.time():.3f}", "level": neutralise(level), "source": neutralise(source)}
    entry["message"] = neutralise(message)
    if request_id:
        entry["request_id"] = neutralise(request_id)
    if fields:
        entry["fields"] = json.dumps(_neutralise_all(fields))
    return entry


def append(connection: redis.Redis, application_id, message: str, level: str = "INFO", source="platform") -> None:
    """A line from the platform (a job's event). Not trimmed here: the application's retention is
    applied by its server as it writes and by the workers' periodic trim."""
    connection.xadd(keyspace.logs(application_id), record(message, level, source))


def tail(connection: redis.Redis, application_id, count: int = 50) -> list[dict]:
    """The last ``count`` lines, oldest first (none when Redis is unreachable: a page still renders)."""
    try:
        entries = connection.xrevrange(keyspace.logs(application_id), count=count)
    except redis.RedisError:
        return []
    return [
        {"id": entry_id.decode(), **{k.decode(): v.decode() for k, v in fields.items()}}
        for entry_id, fields in reversed(entries)
    ]


class RedactSecrets(logging.Filter):
    """Replace the values of secret environment variables, should any reach a log record."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "••••")
            record.msg, record.args = message, None
        return True


class StreamWriter:
    """Appends records to one application's stream from a thread of its own, in batches."""

    BATCH = 500
    LINGER_S = 0.02  # after a line arrives, wait this long for more: one round trip for a burst of lines
    RETRY_S = (0.5, 1, 2, 5)

    def __init__(
        self,
        connection: redis.Redis,
        application_id,
        capacity: int = 10_000,
        maxlen: int = MAXLEN,
        max_age_s: float | None = None,
    ):
        self.connection, self.key = connection, keyspace.logs(application_id)
        self.maxlen, self.max_age_s = maxlen, max_age_s
        self.trimmed_at = 0.0
        self.queue: queue.Queue = queue.Queue(capacity)
        self.dropped = 0  # lines lost to a full queue (Redis unreachable for long)
        self.written = 0
        self.thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self.thread.start()

    def write(self, fields: dict) -> None:
        """Never blocks: when the queue is full the line is dropped and counted."""
        try:
            self.queue.put_nowait(fields)
        except queue.Full:
            self.dropped += 1

    def _take(self) -> list[dict]:
        batch = [self.queue.get()]
        deadline = time.monotonic() + self.LINGER_S
        while len(batch) < self.BATCH:
            try:
                batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        failures = 0
        batch: list[dict] = []
        while True:
            if not batch:
                batch = self._take()
                taken = len(batch)  # queue items in this batch: each is marked done once written
                if self.dropped:
                    dropped, self.dropped = self.dropped, 0
                    notice = f"{dropped} log lines were dropped while Redis was unreachable."
                    batch.insert(0, record(notice, "WARNING"))
            try:
                with self.connection.pipeline(transaction=False) as pipe:
                    for fields in batch:
                        pipe.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
                    if self.max_age_s and time.monotonic() - self.trimmed_at > TRIM_EVERY_S:
                        oldest = int((time.time() - self.max_age_s) * 1000)
                        pipe.xtrim(self.key, minid=f"{oldest}-0", approximate=True)
                        self.trimmed_at = time.monotonic()
                    pipe.execute()
            except redis.RedisError:
                time.sleep(self.RETRY_S[min(failures, len(self.RETRY_S) - 1)])
                failures += 1
                continue  # keep the batch; new lines wait in the queue (or are dropped when it is full)
            self.written += len(batch)
            failures, batch = 0, []
            for _ in range(taken):
                self.queue.task_done()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was written so far reached Redis (at exit). False if it did not in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False


class RedisStreamHandler(logging.Handler):
    """A logging handler that hands records to a StreamWriter (never a Redis round trip of its own)."""

    def __init__(self, writer: StreamWriter, source: str = "server"):
        super().__init__()
        self.writer, self.source = writer, source

    def emit(self, log_record: logging.LogRecord) -> None:
        try:
            self.writer.write(
                record(
                    self.format(log_record),
                    log_record.levelname,
                    self.source,
                    getattr(log_record, "request_id", None),
                    getattr(log_record, "fields", None),
                )
            )
        except Exception:  # noqa: BLE001 - logging must never break the server
            self.handleError(log_record)
