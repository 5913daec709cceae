"""Usage: requests and tokens per key, application, owner and day, exact.

The app servers append each served request's usage to a Redis stream in the same script that settles
its quota (runtime/quotas.py), so the limits and the usage count the same tokens. ``collect`` moves the
stream into the database: the day rows and the stream position move in one transaction, so a record
counts once whatever fails (a crash between the commit and trimming the stream only re-reads what the
position already passed). Pages, the API and the CLI collect before they read, so they show every
request that has ended.
"""

import contextlib
import csv
import io
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from .. import keyspace, queues
from ..extensions import db
from ..models import MAX_ID, ApiKey, Application, UsageCursor, UsageDay, User, utcnow

BATCH = 5000  # stream entries read at a time
MAX_BATCHES = 20  # a collection's most (the upkeep job's next one goes on)
COLLECT_LOCK_S = 60
log = logging.getLogger(__name__)
COUNTS = ("requests", "input_tokens", "output_tokens", "cached_tokens")
FIELDS = {"r": "requests", "input": "input_tokens", "output": "output_tokens", "cached": "cached_tokens"}
CSV_COLUMNS = ("day", "application", "key", "owner", *COUNTS)
DEFAULT_DAYS = 30
MAX_DAYS = 366


def collect(wait: bool = False) -> int:
    """Move what the stream holds into the day rows; the number of records moved.

    A page does not wait for a collection under way elsewhere (``wait``: the upkeep job does); best effort
    when Redis or the database fails (the pages show what the database has, and the next one goes on).
    """
    import redis
    from sqlalchemy.exc import SQLAlchemyError

    try:
        connection = queues.connection()
        lock = connection.lock(keyspace.usage_lock(), timeout=COLLECT_LOCK_S)
        if not lock.acquire(blocking=wait, blocking_timeout=COLLECT_LOCK_S if wait else None):
            return 0
        try:
            return _collect(connection)
        finally:
            with contextlib.suppress(redis.RedisError):
                lock.release()
    except redis.RedisError:
        return 0
    except SQLAlchemyError:
        db.session.rollback()
        log.exception("the usage records could not be added; the next collection tries again")
        return 0


MAX_COUNT = 2**53  # a count past this is no request's (a forged or corrupt record)


def _record(fields: dict) -> tuple[tuple, dict] | None:
    """A stream record's row (day, application, key) and counts; None for one that is malformed."""
    try:
        record = {k.decode(): v.decode() for k, v in fields.items()}
        row_key = (date.fromisoformat(record["d"]), uuid.UUID(record["a"]), int(record.get("k") or 0))
        counts = {column: int(record.get(field) or 0) for field, column in FIELDS.items()}
        owner = record.get("u", "")
        user_id = int(owner) if owner.isdigit() and len(owner) < 12 else None
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    if not 0 <= row_key[2] <= MAX_ID or not all(0 <= n < MAX_COUNT for n in counts.values()):
        return None
    if user_id is not None and user_id > MAX_ID:
        user_id = None
    return row_key, {**counts, "user_id": user_id}


def _collect(connection) -> int:
    """Batches of the stream into the rows. The position moves only from where this collection found it
    (a conditional UPDATE), in the rows' transaction: a second collector (its lock expired) adds nothing twice."""
    moved = 0
    for _ in range(MAX_BATCHES):
        cursor = db.session.get(UsageCursor, 1)
        start = cursor.last_id if cursor else "0-0"
        entries = connection.xrange(keyspace.usage(), min=f"({start}", count=BATCH)
        if not entries:
            break
        sums: dict[tuple, dict] = {}
        for _, fields in entries:
            parsed = _record(fields)
            if parsed is None:
                continue  # a malformed record counts for nothing, and is passed over
            row_key, counts = parsed
            total = sums.setdefault(row_key, {**dict.fromkeys(COUNTS, 0), "user_id": None})
            for column in COUNTS:
                total[column] += counts[column]
            total["user_id"] = total["user_id"] or counts["user_id"]
        _add(sums)
        last = entries[-1][0].decode()
        if cursor is None:
            db.session.add(UsageCursor(id=1, last_id=last))
        elif not db.session.execute(
            db.update(UsageCursor).where(UsageCursor.id == 1, UsageCursor.last_id == start).values(last_id=last)
        ).rowcount:
            db.session.rollback()  # another collection moved it meanwhile: its counts stand, not these
            break
        db.session.commit()
        db.session.expire_all()
        moved += len(entries)
        connection.xtrim(keyspace.usage(), minid=last)  # what is counted; the last one stays
    return moved


def _add(sums: dict[tuple, dict]) -> None:
    """Add the sums to their day rows (made with the application's and key's names of now)."""
    names = dict(db.session.execute(db.select(Application.id, Application.name)).all()) if sums else {}
    key_ids = {key_id for _, _, key_id in sums}
    labels = dict(db.session.execute(db.select(ApiKey.id, ApiKey.label).where(ApiKey.id.in_(key_ids))).all())
    for (day, application_id, key_id), counts in sums.items():
        row = db.session.scalar(
            db.select(UsageDay).where(
                UsageDay.day == day, UsageDay.application_id == application_id, UsageDay.key_id == key_id
            )
        )
        if row is None:
            row = UsageDay(
                day=day,
                application_id=application_id,
                key_id=key_id,
                application_name=names.get(application_id, "(deleted)"),
                key_label=labels.get(key_id) or f"#{key_id}",
                user_id=counts["user_id"],
                **dict.fromkeys(COUNTS, 0),
            )
            db.session.add(row)
        elif row.user_id is None:
            row.user_id = counts["user_id"]
        for column in COUNTS:
            setattr(row, column, getattr(row, column) + counts[column])


@dataclass
class Report:
    """Usage over a span of days: its rows (one per day and key), and its totals."""

    rows: list[UsageDay]
    since: date
    until: date

    @property
    def totals(self) -> dict[str, int]:
        return {column: sum(getattr(row, column) for row in self.rows) for column in COUNTS}

    def by(self, attribute: str) -> list[tuple[str, dict]]:
        """Totals per ``attribute`` of the rows (application_name, key_label, day…), largest first."""
        groups: dict[str, dict] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
        for row in self.rows:
            for column in COUNTS:
                groups[getattr(row, attribute)][column] += getattr(row, column)
        return sorted(groups.items(), key=lambda item: -item[1]["requests"])


def span(days: int | str | None) -> tuple[date, date]:
    """The last ``days`` days to today (UTC), both included.

    :raise Invalid: not a number of days from 1 to 366.
    """
    from flask_babel import gettext as _

    from . import Invalid

    try:
        count = DEFAULT_DAYS if days in (None, "") else int(days)
    except (TypeError, ValueError):
        count = 0
    if not 1 <= count <= MAX_DAYS:
        raise Invalid(_("Days: a whole number from 1 to %(max)s.", max=MAX_DAYS), "days")
    today = utcnow().date()
    return today - timedelta(days=count - 1), today


def for_application(application: Application, days=None, wait: bool = False) -> Report:
    """The application's usage (its owner and admins see it: the caller checked that). ``wait``: for a
    collection under way elsewhere (a script wants every ended request; a page shows what there is)."""
    since, until = span(days)
    collect(wait)
    return Report(_rows(UsageDay.application_id == application.id, since, until), since, until)


def overview(acting, days=None, user_id: int | None = None, wait: bool = False) -> Report:
    """Usage across applications: an admin's of everyone (or of ``user_id``), a member's of their own."""
    since, until = span(days)
    collect(wait)
    if not acting.is_admin:
        user_id = acting.id
    condition = UsageDay.user_id == user_id if user_id is not None else db.true()
    return Report(_rows(condition, since, until), since, until)


def _rows(condition, since: date, until: date) -> list[UsageDay]:
    return list(
        db.session.scalars(
            db.select(UsageDay)
            .where(condition, UsageDay.day >= since, UsageDay.day <= until)
            .order_by(UsageDay.day.desc(), UsageDay.application_name, UsageDay.key_label)
        )
    )


def owners(report: Report) -> dict[int, str]:
    """The e-mail of each owner the report's rows name."""
    ids = {row.user_id for row in report.rows if row.user_id is not None}
    return dict(db.session.execute(db.select(User.id, User.email).where(User.id.in_(ids))).all()) if ids else {}


def as_csv(report: Report) -> str:
    """The report's rows as CSV (the columns of CSV_COLUMNS), for a spreadsheet."""
    emails = owners(report)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        writer.writerow(
            [
                row.day.isoformat(),
                _cell(row.application_name),
                _cell(row.key_label),
                _cell(emails.get(row.user_id, "")),
                *(getattr(row, c) for c in COUNTS),
            ]
        )
    return out.getvalue()


def _cell(text: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula (CSV injection: =, +, -, @ first)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def as_dict(report: Report) -> dict:
    """The report for the API and the CLI: its span, totals and rows."""
    emails = owners(report)
    return {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "totals": report.totals,
        "rows": [
            {
                "day": row.day.isoformat(),
                "application_id": str(row.application_id),
                "application": row.application_name,
                "key_id": row.key_id,
                "key": row.key_label,
                "owner": emails.get(row.user_id),
                **{c: getattr(row, c) for c in COUNTS},
            }
            for row in report.rows
        ],
    }
