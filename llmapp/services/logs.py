"""An application's log as the platform reads it: the latest lines, a search over what is retained,
a streamed download, following it live (the SSE pane and `flask apps logs --follow`), and retention.

The log is one Redis Stream per application (runtime/logs.py writes it). Every reader here goes by the
stream's ids, so a reader that comes back with the last id it saw gets exactly what it missed.

Live viewers share one reader per application and web process (LogHub): one thread and one Redis
connection follow the stream with a blocking XREAD and hand each new line to every viewer's queue.
The pane and the REST API both stream through it (live_events), each with its own way of rendering
a line; both outlive a Redis outage (heartbeats meanwhile, then on from the last line sent) and end
at once when the web process is stopping (end_streams).
"""

import contextlib
import json
import queue
import re
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from flask import current_app

from .. import keyspace, queues
from ..extensions import db
from ..models import Application
from ..runtime.logs import neutralise
from . import ServiceError, applications

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PAGE = 100  # lines a search answers at a time
LINGER_S = 0.05  # a live reader's pause after a delivery, so that a busy log is sent in batches
SINCE = re.compile(r"^(\d+)\s*([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class LogLine:
    id: str  # the stream id: "<ms>-<seq>"
    ts: float
    level: str
    source: str
    message: str
    request_id: str = ""
    fields: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, entry_id, raw: dict) -> "LogLine":
        values = {
            k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v for k, v in raw.items()
        }
        try:
            fields = json.loads(values.get("fields") or "{}")
        except ValueError:
            fields = {}
        # Written neutralised (runtime/logs.record); again here for what reached the stream otherwise
        # (a server of an older version, a line written by hand): no reader ever shows a raw control.
        return cls(
            id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            ts=float(values.get("ts") or 0),
            level=neutralise(values.get("level", "INFO")),
            source=neutralise(values.get("source", "")),
            message=neutralise(values.get("message", "")),
            request_id=neutralise(values.get("request_id", "")),
            fields=fields if isinstance(fields, dict) else {},
        )

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "time": datetime.fromtimestamp(self.ts, UTC).isoformat(timespec="milliseconds"),
            "level": self.level,
            "source": self.source,
            "request_id": self.request_id or None,
            "message": self.message,
            "fields": self.fields,
        }

    def as_text(self) -> str:
        moment = datetime.fromtimestamp(self.ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        request = f" [{self.request_id}]" if self.request_id else ""
        return f"{moment} {self.level:<7} {self.source:<8}{request} {self.message}"


def sort_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def valid_id(entry_id: str | None) -> str | None:
    """A stream id given by a client ("<ms>-<seq>"), or None when it is not one."""
    if entry_id and re.fullmatch(r"\d{1,15}-\d{1,10}", entry_id.strip()):
        return entry_id.strip()
    return None


def parse_since(value: str | None) -> float | None:
    """ "10m", "2h", "7d" → seconds; None for nothing.

    :raise ServiceError: not of that form.
    """
    if not value:
        return None
    match = SINCE.match(value.strip().lower())
    if not match:
        raise ServiceError(f"“{value}” is not a duration: write e.g. 30s, 10m, 2h or 7d.")
    return int(match.group(1)) * UNITS[match.group(2)]


def level_at_least(level: str | None) -> set[str] | None:
    """The levels at or above ``level`` (None: all).

    :raise ServiceError: not a level.
    """
    if not level:
        return None
    level = level.upper()
    if level not in LEVELS:
        raise ServiceError(f"“{level}” is not a log level: choose one of {', '.join(LEVELS[:4])}.")
    return set(LEVELS[LEVELS.index(level) :])


def matches(line: LogLine, levels: set[str] | None, needle: str) -> bool:
    """A line at one of ``levels`` (None: any) containing ``needle`` (lower case; in the message, the
    request id or the source)."""
    if levels and line.level not in levels:
        return False
    return not needle or needle in f"{line.message}\n{line.request_id}\n{line.source}".lower()


def recent(application: Application, count: int = 200) -> list[LogLine]:
    """The last ``count`` lines, oldest first (none when Redis is unreachable: the page still renders)."""
    try:
        entries = queues.connection().xrevrange(keyspace.logs(application.id), count=count)
    except redis.RedisError:
        return []
    return [LogLine.parse(entry_id, raw) for entry_id, raw in reversed(entries)]


@dataclass
class SearchResult:
    lines: list[LogLine]  # newest last
    older: str | None  # the cursor for the next (older) page, if there is one
    scanned: int


def search(
    application: Application,
    level: str | None = None,
    text: str | None = None,
    since: float | None = None,
    until: float | None = None,
    before: str | None = None,
    limit: int = PAGE,
) -> SearchResult:
    """Lines matching a minimum level and a text (case-insensitive, in the message, the request id or
    the source), between ``since`` and ``until`` (unix seconds), newest first in pages of ``limit``;
    ``before`` is the cursor a previous page gave."""
    levels = level_at_least(level)
    needle = (text or "").strip().lower()
    connection = queues.connection()
    key = keyspace.logs(application.id)
    high = f"({before}" if before else (f"{int(until * 1000)}-18446744073709551615" if until else "+")
    low = f"{int(since * 1000)}-0" if since else "-"
    found, scanned = [], 0
    while len(found) <= limit:
        chunk = connection.xrevrange(key, max=high, min=low, count=500)
        if not chunk:
            break
        for entry_id, raw in chunk:
            scanned += 1
            line = LogLine.parse(entry_id, raw)
            if not matches(line, levels, needle):
                continue
            found.append(line)
            if len(found) > limit:
                break
        high = f"({LogLine.parse(*chunk[-1]).id}"
    older = found[limit - 1].id if len(found) > limit else None
    return SearchResult(list(reversed(found[:limit])), older, scanned)


def export(application: Application, fmt: str = "text") -> Iterator[str]:
    """The whole retained log, oldest first, a chunk at a time (never all of it in memory)."""
    connection = queues.connection()
    key = keyspace.logs(application.id)
    low = "-"
    while True:
        chunk = connection.xrange(key, min=low, count=500)
        if not chunk:
            return
        lines = [LogLine.parse(entry_id, raw) for entry_id, raw in chunk]
        if fmt == "ndjson":
            yield "".join(json.dumps(line.as_dict()) + "\n" for line in lines)
        else:
            yield "".join(line.as_text() + "\n" for line in lines)
        low = f"({lines[-1].id}"


def follow(application: Application, after: str = "$", block_ms: int = 5000) -> Iterator[LogLine | None]:
    """Lines written after ``after`` (an id, or "$" for from now on), as they come; None now and then
    while nothing does (so a caller can notice it should stop). A Redis outage is waited out: it goes
    on from the last line it gave once Redis is back."""
    connection = redis.Redis.from_url(current_app.config["REDIS_URL"], socket_timeout=block_ms / 1000 + 10)
    key = keyspace.logs(application.id)
    try:
        while True:
            try:
                if after == "$":
                    last = connection.xrevrange(key, count=1)
                    after = last[0][0].decode() if last else "0-0"
                answer = connection.xread({key: after}, block=block_ms, count=500)
            except redis.RedisError:
                time.sleep(1)  # the connection reconnects on the next try
                answer = None
            if not answer:
                yield None
                continue
            for entry_id, raw in answer[0][1]:
                line = LogLine.parse(entry_id, raw)
                after = line.id
                yield line
    finally:
        connection.close()


def trim_all() -> int:
    """Apply every application's log retention (at most its lines, none older than its days), for the
    lines its server did not trim itself (a stopped application's, the jobs' events). Returns how many
    applications it went through."""
    connection = queues.connection()
    connection.delete(keyspace.trim_logs_queued())  # the next one may be queued
    defaults = applications.default_config()
    now = time.time()
    rows = db.session.execute(db.select(Application.id, Application.config)).all()
    with connection.pipeline(transaction=False) as pipe:
        for application_id, config in rows:
            config = {**defaults, **(config or {})}
            key = keyspace.logs(application_id)
            pipe.xtrim(key, maxlen=int(config["log_lines"]), approximate=False)
            pipe.xtrim(key, minid=f"{int((now - float(config['log_days']) * 86400) * 1000)}-0", approximate=False)
        pipe.execute()
    return len(rows)


# --- live viewers: one reader per application and web process, many subscribers -----------------


def render_event(line: LogLine) -> str:
    """A line as the pane's SSE event: its stream id and its <li>, from the pane's own template."""
    from flask import render_template

    return sse_event(render_template("applications/_log_line.html", line=line), "line", line.id)


# Set when this web process is stopping: every live stream ends at once instead of holding the worker
# until its graceful timeout (the EventSource reconnects, to another worker or once the platform is back).
SHUTTING_DOWN = threading.Event()
_hubs: "weakref.WeakSet[LogHub]" = weakref.WeakSet()


def end_streams() -> None:
    """End every live log stream of this process now (gunicorn's worker calls it as it stops)."""
    SHUTTING_DOWN.set()
    for log_hub in list(_hubs):
        log_hub.wake_all()


class Subscription:
    """One viewer's place in the stream: the events the reader hands it wait in its queue, rendered by
    ``render`` (a line → its SSE event; one function per kind of viewer, so each line is rendered
    once per kind)."""

    def __init__(self, hub: "LogHub", application_id: str, render, capacity: int = 10_000):
        self.hub, self.application_id, self.render = hub, application_id, render
        self.queue: queue.Queue = queue.Queue(capacity)
        self.last: tuple[int, int] = (0, 0)  # the last id handed over: nothing at or before it again
        self.overflowed = False

    def offer(self, events: list[tuple[tuple[int, int], str]]) -> None:
        fresh = [text for key, text in events if key > self.last]
        if not fresh:
            return
        self.last = events[-1][0]
        try:
            self.queue.put_nowait(fresh)
        except queue.Full:  # a viewer that reads nothing for long: its stream ends; it reconnects and catches up
            self.overflowed = True

    def take(self, timeout: float) -> list[str] | None:
        """The events that arrived (a batch, for one write), or None after ``timeout`` without any
        (an empty batch: woken, see LogHub.wake_all)."""
        try:
            events = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        while True:
            try:
                events += self.queue.get_nowait()
            except queue.Empty:
                return events

    def close(self) -> None:
        self.hub.unsubscribe(self)


class _Reader(threading.Thread):
    """Follows one application's stream for the viewers of this process; renders each line once."""

    def __init__(self, hub: "LogHub", application_id: str, cursor: str):
        super().__init__(name=f"log-reader {application_id}", daemon=True)
        self.hub, self.application_id, self.cursor = hub, application_id, cursor
        self.connection = redis.Redis.from_url(hub.redis_url, socket_timeout=hub.block_s + 10)
        self.stopped = threading.Event()

    def run(self) -> None:
        key = keyspace.logs(self.application_id)
        try:
            with self.hub.app.app_context():
                while not self.stopped.is_set():
                    try:
                        answer = self.connection.xread(
                            {key: self.cursor}, block=int(self.hub.block_s * 1000), count=1000
                        )
                    except redis.RedisError:
                        self.stopped.wait(1)  # Redis away: try again; viewers get heartbeats meanwhile
                        continue
                    if answer:
                        lines = [LogLine.parse(entry_id, raw) for entry_id, raw in answer[0][1]]
                        self.cursor = lines[-1].id
                        self.hub.deliver(self.application_id, lines)
                        # A busy log arrives in batches: one wake-up and one write per viewer for each,
                        # not one per line (at most LINGER_S more latency; the target is 100 ms).
                        self.stopped.wait(LINGER_S)
        finally:
            self.connection.close()


class LogHub:
    """Per web process: one _Reader per application that has viewers, and their subscriptions."""

    def __init__(self, app, redis_url: str, block_s: float = 5.0):
        self.app, self.redis_url, self.block_s = app, redis_url, block_s
        self.lock = threading.Lock()
        self.readers: dict[str, _Reader] = {}
        self.subscribers: dict[str, set[Subscription]] = {}
        _hubs.add(self)

    def subscribe(self, application_id, after: str | None, render=None) -> tuple[Subscription, list[str]]:
        """A viewer from ``after`` on (an id; None: from now on), its lines rendered by ``render`` (the
        pane's by default). Returns its subscription and the events of the lines it missed since
        ``after``, which it sends first.

        :raise redis.RedisError: Redis is unreachable (live_events waits for it).
        """
        application_id = str(application_id)
        render = render or render_event
        connection = queues.connection()
        key = keyspace.logs(application_id)
        subscription = Subscription(self, application_id, render)
        with self.lock:  # the backlog and the registration together: no line falls between them
            if after:
                backlog = [LogLine.parse(i, raw) for i, raw in connection.xrange(key, min=f"({after}", count=10_000)]
                subscription.last = sort_key(backlog[-1].id) if backlog else sort_key(after)
            else:
                backlog = []
                newest = connection.xrevrange(key, count=1)
                subscription.last = sort_key(newest[0][0].decode()) if newest else (0, 0)
            self.subscribers.setdefault(application_id, set()).add(subscription)
            if application_id not in self.readers:
                cursor = "-".join(map(str, subscription.last))
                reader = self.readers[application_id] = _Reader(self, application_id, cursor)
                reader.start()
        return subscription, [render(line) for line in backlog]

    def deliver(self, application_id: str, lines: list[LogLine]) -> None:
        def events(render) -> list[tuple[tuple[int, int], str]]:
            return [(sort_key(line.id), render(line)) for line in lines]

        with self.lock:
            renderers = {s.render for s in self.subscribers.get(application_id, ())}
        rendered = {render: events(render) for render in renderers}  # outside the lock, once per kind of viewer
        with self.lock:
            for subscription in self.subscribers.get(application_id, ()):
                if subscription.render not in rendered:  # a new kind of viewer came meanwhile
                    rendered[subscription.render] = events(subscription.render)
                subscription.offer(rendered[subscription.render])

    def wake_all(self) -> None:
        """Wake every viewer's stream now (an empty batch), so that it notices SHUTTING_DOWN."""
        with self.lock:
            for viewers in self.subscribers.values():
                for subscription in viewers:
                    with contextlib.suppress(queue.Full):
                        subscription.queue.put_nowait([])

    def unsubscribe(self, subscription: Subscription) -> None:
        with self.lock:
            viewers = self.subscribers.get(subscription.application_id, set())
            viewers.discard(subscription)
            if not viewers:
                self.subscribers.pop(subscription.application_id, None)
                reader = self.readers.pop(subscription.application_id, None)
                if reader is not None:
                    reader.stopped.set()  # it ends at its next XREAD timeout

    def viewers(self) -> int:
        with self.lock:
            return sum(len(s) for s in self.subscribers.values())


def hub() -> LogHub:
    """This web process's hub (made on first use)."""
    app = current_app._get_current_object()
    if "log_hub" not in app.extensions:
        app.extensions["log_hub"] = LogHub(app, app.config["REDIS_URL"], app.config["LOG_STREAM_BLOCK_S"])
    return app.extensions["log_hub"]


def live_events(application_id, after: str | None, heartbeat_s: float, render=None) -> Iterator[str]:
    """One viewer's SSE stream (the pane's and the REST API's): the lines after ``after`` (None: from
    now on), then new ones as they come, each rendered by ``render`` (see LogHub.subscribe), with a
    heartbeat comment while it is quiet. A Redis outage, even at the start, is heartbeated through and
    the lines go on from the last one sent. It ends when its viewer falls too far behind (it reconnects
    and catches up) or when this web process is stopping."""
    yield "retry: 2000\n: connected\n\n"  # at once, so that proxies and the browser see the stream open
    log_hub, subscription = hub(), None
    while subscription is None:
        if SHUTTING_DOWN.is_set():
            return
        try:
            subscription, backlog = log_hub.subscribe(application_id, after, render)
        except redis.RedisError:
            # Nothing is written while Redis is away; "from now on" is from this moment (a line's id is
            # its time of writing, in ms), so that what servers held meanwhile is shown once it is back.
            after = after or f"{int(time.time() * 1000)}-0"
            yield ": heartbeat (Redis is unreachable)\n\n"
            SHUTTING_DOWN.wait(min(heartbeat_s, 1.0))
    try:
        if backlog:
            yield "".join(backlog)
        while not subscription.overflowed and not SHUTTING_DOWN.is_set():
            events = subscription.take(heartbeat_s)
            if events is None:
                yield ": heartbeat\n\n"
            elif events:
                yield "".join(events)
    finally:
        subscription.close()


# Where an SSE parser ends a line: CR, LF or CRLF (not U+2028, not NEL).
SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_event(data: str, event: str, event_id: str | None = None) -> str:
    """One server-sent event, whatever the text: every line of ``data`` (split where an SSE parser
    splits) gets its own data: field, and the event name and id are escaped, so that neither can end
    its field and start another (a fake id: a reconnect would resume from it and lose lines)."""
    payload = "".join(f"data: {part}\n" for part in SSE_LINE_BREAK.split(data))
    head = f"id: {neutralise(event_id)}\n" if event_id else ""
    return f"{head}event: {neutralise(event)}\n{payload}\n"
