"""An application's log as the platform reads it: the latest lines, a search over what is retained,
a streamed download, following it (`flask apps logs --follow`), and retention. The live panes (the
page's and the REST API's SSE streams) are services/live_logs.py's.

The log is one Redis Stream per application (runtime/logs.py writes it). Every reader here goes by the
stream's ids, so a reader that comes back with the last id it saw gets exactly what it missed.
"""

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from flask import current_app
from flask_babel import gettext as _

from .. import keyspace, queues
from ..extensions import db
from ..models import Application
from ..runtime.logs import neutralise
from . import ServiceError, applications

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PAGE = 100  # lines a search answers at a time
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
        raise ServiceError(_("“%(value)s” is not a duration: write e.g. 30s, 10m, 2h or 7d.", value=value))
    return int(match.group(1)) * UNITS[match.group(2)]


def level_at_least(level: str | None) -> set[str] | None:
    """The levels at or above ``level`` (None: all).

    :raise ServiceError: not a level.
    """
    if not level:
        return None
    level = level.upper()
    if level not in LEVELS:
        raise ServiceError(
            _("“%(level)s” is not a log level: choose one of %(levels)s.", level=level, levels=", ".join(LEVELS[:4]))
        )
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
