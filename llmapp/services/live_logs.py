"""An application's log followed live by its viewers: the Logs pane's and the REST API's server-sent
events, and the wire format of every SSE stream of the platform (sse_event; the playground's too).

Live viewers share one reader per application and web process (LogHub): one thread and one Redis
connection follow the stream with a blocking XREAD and hand each new line to every viewer's queue.
The pane and the REST API both stream through it (live_events), each with its own way of rendering
a line; both outlive a Redis outage (heartbeats meanwhile, then on from the last line sent) and end
at once when the web process is stopping (end_streams). Reading the log otherwise (a search, a
download, `flask apps logs --follow`) is services/logs.py's.
"""

import contextlib
import queue
import re
import threading
import time
import weakref
from collections.abc import Iterator

import redis
from flask import current_app

from .. import keyspace, queues
from ..runtime.logs import neutralise
from .logs import LogLine, sort_key

LINGER_S = 0.05  # a live reader's pause after a delivery, so that a busy log is sent in batches


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
