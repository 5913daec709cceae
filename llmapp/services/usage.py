"""Usage: requests and tokens per key, application, owner and day, exact.

The app servers append each served request's usage to a Redis stream in the same script that settles
its quota (runtime/quotas.py), so the limits and the usage count the same tokens. ``collect`` moves the
stream into the database: the day rows and the stream position move in one transaction, so a record
counts once whatever fails (a crash between the commit and trimming the stream only re-reads what the
position already passed). Pages, the API and the CLI collect before they read, so they show every
request that has ended.
"""

import csv
import io
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from .. import keyspace, queues
from ..extensions import db
from ..models import ApiKey, Application, UsageCursor, UsageDay, User, utcnow

BATCH = 5000  # stream entries read at a time
COLLECT_LOCK_S = 60
COUNTS = ("requests", "input_tokens", "output_tokens", "cached_tokens")
FIELDS = {"r": "requests", "input": "input_tokens", "output": "output_tokens", "cached": "cached_tokens"}
CSV_COLUMNS = ("day", "application", "key", "owner", *COUNTS)
DEFAULT_DAYS = 30
MAX_DAYS = 366


def collect() -> int:
    """Move what the stream holds into the day rows; the number of records moved.

    Best effort when Redis is unreachable (the pages show what the database has).
    """
    import redis

    try:
        connection = queues.connection()
        with connection.lock(keyspace.usage_lock(), timeout=COLLECT_LOCK_S, blocking_timeout=COLLECT_LOCK_S):
            return _collect(connection)
    except redis.RedisError:
        return 0


def _collect(connection) -> int:
    cursor = db.session.get(UsageCursor, 1) or UsageCursor(id=1, last_id="0-0")
    moved = 0
    while True:
        entries = connection.xrange(keyspace.usage(), min=f"({cursor.last_id}", count=BATCH)
        if not entries:
            break
        sums: dict[tuple, dict] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
        for entry_id, fields in entries:
            record = {k.decode(): v.decode() for k, v in fields.items()}
            try:
                row_key = (date.fromisoformat(record["d"]), uuid.UUID(record["a"]), int(record.get("k") or 0))
                counts = sums[row_key]
                for field, column in FIELDS.items():
                    counts[column] += int(record.get(field) or 0)
                counts["user_id"] = int(record["u"]) if record.get("u", "").isdigit() else None
            except (KeyError, ValueError):
                pass  # a malformed record counts for nothing, and is passed over
            cursor.last_id = entry_id.decode()
        _add(sums)
        db.session.add(cursor)
        db.session.commit()
        moved += len(entries)
        connection.xtrim(keyspace.usage(), minid=cursor.last_id)  # what is counted; the last one stays
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
    from . import Invalid

    try:
        count = DEFAULT_DAYS if days in (None, "") else int(days)
    except (TypeError, ValueError):
        count = 0
    if not 1 <= count <= MAX_DAYS:
        raise Invalid(f"Days: a whole number from 1 to {MAX_DAYS}.", "days")
    today = utcnow().date()
    return today - timedelta(days=count - 1), today


def for_application(application: Application, days=None) -> Report:
    """The application's usage (its owner and admins see it: the caller checked that)."""
    since, until = span(days)
    collect()
    return Report(_rows(UsageDay.application_id == application.id, since, until), since, until)


def overview(acting, days=None, user_id: int | None = None) -> Report:
    """Usage across applications: an admin's of everyone (or of ``user_id``), a member's of their own."""
    since, until = span(days)
    collect()
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
