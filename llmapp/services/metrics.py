"""Reading an application's request metrics back: windows, figures, chart series, the App Center's
overview, and the list of servers for Prometheus. The series are written by the app servers (see
runtime/metrics.py) and, for CPU and memory, by the reconcile."""

import base64
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from sqlalchemy import func, select

from .. import keyspace, queues
from ..extensions import db
from ..i18n import _l
from ..models import Application, Replica, User
from ..runtime import metrics
from ..runtime.pipeline import STAGES
from . import applications, lifecycle


@dataclass(frozen=True)
class Window:
    name: str
    label: str  # a lazy message (llmapp.i18n._l): what the page calls the window
    seconds: int
    resolution: str  # which stored series it reads
    point_s: int  # one chart point per this many seconds
    refresh_s: int  # how often the pane refreshes itself


WINDOWS = {
    w.name: w
    for w in (
        Window("15m", _l("15 min"), 15 * 60, "10s", 10, 10),
        Window("1h", _l("1 hour"), 3600, "10s", 30, 10),
        Window("24h", _l("24 hours"), 24 * 3600, "1m", 300, 60),
        Window("7d", _l("7 days"), 7 * 24 * 3600, "1h", 3600, 300),
    )
}
DEFAULT_WINDOW = "1h"
STAGE_ORDER = [stage.__name__ for stage in STAGES]  # the request path's order, to list stage times in
RESOLUTION_S = {r.name: r.seconds for r in metrics.RESOLUTIONS}


def window(name: str | None) -> Window:
    return WINDOWS.get(name or "", WINDOWS[DEFAULT_WINDOW])


def _buckets(application_id, win: Window, now: float) -> list[tuple[int, dict]]:
    """(start, fields) of every stored bucket of the window, oldest first (absent buckets: empty)."""
    step = RESOLUTION_S[win.resolution]
    last = int(now // step * step)
    starts = list(range(last - (win.seconds // step - 1) * step, last + 1, step))
    connection = queues.connection()
    with connection.pipeline(transaction=False) as pipe:
        for start in starts:
            pipe.hgetall(keyspace.metrics(application_id, win.resolution, start))
        raw = pipe.execute()
    return [(start, metrics.decode(fields)) for start, fields in zip(starts, raw, strict=True)]


def _quantiles(fields: dict, name: str, qs=(0.5, 0.95, 0.99)) -> dict:
    """Percentiles from the histogram's buckets, never above the slowest value seen (interpolating in a
    wide bucket would: six requests, the slowest 12.4 s, read p95 24 s), and how many samples they rest on."""
    counts, slowest = metrics.histogram(fields, name), fields.get(f"{name}|max")
    found = {f"p{round(q * 100)}": metrics.percentile(metrics.HISTOGRAMS[name], counts, q, slowest) for q in qs}
    found["samples"] = int(sum(counts))
    return found


def _figures(total: Counter, seconds: int) -> dict:
    """The window's figures from its merged counts (every one a sum, or computed from sums)."""
    outcomes = {o: total.get(f"n|{o}", 0) for o in metrics.OUTCOMES}
    requests = sum(outcomes.values())
    errors = sum(n for o, n in outcomes.items() if metrics.is_error(o))
    hits, misses = total.get("cache|hit", 0), total.get("cache|miss", 0)
    latency = _quantiles(total, "lat")
    latency["mean"] = total["lat|sum"] / requests if requests else None
    stages = {}
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    ran = [k.split("|")[1] for k in total if k.startswith("stage|") and k.endswith("|n")]
    for name in sorted(ran, key=lambda stage: (order.get(stage, len(order)), stage)):
        calls = total[f"stage|{name}|n"]
        stages[name] = {"calls": calls, "mean_ms": 1000 * total.get(f"stage|{name}", 0) / calls if calls else None}
    plugins, policy = {}, []
    for field, value in sorted(total.items()):
        kind, _, rest = field.partition("|")
        if kind == "plugin" and rest.endswith("|n"):
            name = rest[:-2]
            plugins[name] = {
                "calls": value,
                "mean_ms": 1000 * total.get(f"plugin|{name}", 0) / value if value else None,
            }
        elif kind == "policy":
            plugin, action, side = rest.rsplit("|", 2)
            policy.append({"plugin": plugin, "action": action, "side": side, "count": value})
    keys = {}
    for field, value in total.items():
        if field.startswith("key|"):
            label, kind = field[4:].rsplit("|", 1)
            keys.setdefault(label, {"label": label, "requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0})
            name = {"n": "requests", "err": "errors", "in": "input_tokens", "out": "output_tokens"}[kind]
            keys[label][name] += value
    usage_n = total.get("usage|n", 0)
    return {
        "requests": requests,
        "outcomes": outcomes,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "requests_per_s": requests / seconds,
        "latency_s": latency,
        "ttft_s": _quantiles(total, "ttft", (0.5, 0.95)),
        "tpot_s": _quantiles(total, "tpot", (0.5,)),
        "tokens": {"input": total.get("tok|in", 0), "output": total.get("tok|out", 0)},
        "output_tokens_per_s": total.get("tok|out", 0) / seconds,
        "cache": {"hits": hits, "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else None},
        "batches": {int(k[6:]): v for k, v in sorted(total.items(), key=lambda kv: kv[0]) if k.startswith("batch|")},
        "stages": stages,
        "plugins": plugins,
        "policy": policy,
        "keys": sorted(keys.values(), key=lambda k: -k["requests"]),
        "cpu_percent": total["cpu|sum"] / usage_n if usage_n else None,
        "rss_bytes": total["rss|sum"] / usage_n if usage_n else None,
    }


def by_release(total: Counter) -> list[dict]:
    """The gateway's answers per release (a canary beside the release deployed), as clients saw them."""
    counted: dict[int, Counter] = {}
    for field, value in total.items():
        if field.startswith("gw|"):
            _, release, rest = field.split("|", 2)
            if release.isdigit():
                metrics.combine(counted.setdefault(int(release), Counter()), {rest: value})
    rows = []
    for release, fields in sorted(counted.items()):
        outcomes = {o: fields.get(f"n|{o}", 0) for o in metrics.OUTCOMES}
        requests = sum(outcomes.values())
        errors = sum(n for o, n in outcomes.items() if metrics.is_error(o))
        rows.append(
            {
                "release": release,
                "requests": requests,
                "errors": errors,
                "error_rate": errors / requests if requests else None,
                "latency_s": _quantiles(fields, "lat", (0.5, 0.95)),
            }
        )
    return rows


def _points(buckets: list[tuple[int, dict]], win: Window) -> list[dict]:
    """Chart points: the buckets merged per point_s. A point with no data at all is None (a gap, not
    zero): the server was not running then. One that has resource samples but no requests is zero."""
    points = {}
    for start, fields in buckets:
        points.setdefault(start // win.point_s * win.point_s, []).append(fields)
    out = []
    for at, group in sorted(points.items()):
        total = metrics.merge(group)
        if not total:
            out.append({"at": at, "data": False})
            continue
        requests = sum(total.get(f"n|{o}", 0) for o in metrics.OUTCOMES)
        errors = sum(total.get(f"n|{o}", 0) for o in metrics.OUTCOMES if metrics.is_error(o))
        latency = _quantiles(total, "lat", (0.5, 0.95))
        usage_n = total.get("usage|n", 0)
        out.append(
            {
                "at": at,
                "data": True,
                "requests_per_s": requests / win.point_s,
                "errors_per_s": errors / win.point_s,
                "p50_s": latency["p50"],
                "p95_s": latency["p95"],
                "output_tokens_per_s": total.get("tok|out", 0) / win.point_s,
                "cpu_percent": total["cpu|sum"] / usage_n if usage_n else None,
                "rss_bytes": total["rss|sum"] / usage_n if usage_n else None,
            }
        )
    return out


def server_health(base_url: str, timeout: float) -> dict | None:
    """A server's whole /health (the platform's metrics token opens its details), or None."""
    try:
        return httpx.get(
            f"{base_url}/health", headers={"Authorization": f"Bearer {metrics_token()}"}, timeout=timeout
        ).json()
    except (httpx.HTTPError, ValueError):
        return None


def live(application: Application) -> tuple[int | None, dict | None]:
    """Now, asked of each serving replica: requests in flight (added up), and a managed engine's own
    gauges (running and waiting requests added up, KV-cache use the highest). None where none answers."""
    if application.status != lifecycle.RUNNING:
        return None, None
    answers = [server_health(f"http://{r.address}:{r.port}", timeout=1) or {} for r in application.serving_replicas]
    counts = [a.get("in_flight") for a in answers if isinstance(a.get("in_flight"), int)]
    gauges: dict[str, float] = {}
    for answer in answers:
        for name, value in ((answer.get("engine") or {}).get("gauges") or {}).items():
            if isinstance(value, int | float):
                added = max(gauges.get(name, 0), value) if name == "kv_cache_use" else gauges.get(name, 0) + value
                gauges[name] = added
    return (sum(counts) if counts else None), (gauges or None)


def report(application: Application, window_name: str | None = None, now: float | None = None) -> dict:
    """The application's metrics over a window: figures, chart points, per-key use.

    :raise ServiceError: never for want of data; Redis unreachable gives ``available: False``.
    """
    win = window(window_name)
    now = time.time() if now is None else now
    try:
        buckets = _buckets(application.id, win, now)
    except redis.RedisError:
        return {"application": application.name, "window": win.name, "available": False}
    total = metrics.merge([fields for _, fields in buckets])
    in_flight, engine_gauges = live(application)
    return {
        "application": application.name,
        "window": win.name,
        "available": True,
        "from": datetime.fromtimestamp(buckets[0][0], UTC).isoformat(timespec="seconds"),
        "to": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "has_data": bool(total),
        **_figures(total, win.seconds),
        "releases": by_release(total),
        "in_flight": in_flight,
        "engine": engine_gauges,
        "points": _points(buckets, win),
    }


def record_usage(application_id, cpu_percent: float, rss_bytes: int) -> None:
    """The reconcile's sample of a server process, kept as series beside its requests."""
    fields = Counter({"cpu|sum": float(cpu_percent), "rss|sum": float(rss_bytes), "usage|n": 1})
    bucket = int(time.time() // 10 * 10)
    metrics.write(queues.connection(), application_id, {bucket: fields})


def delete_series(application_id) -> None:
    """Every metrics bucket of a deleted application."""
    queues.delete_matching(queues.connection(), keyspace.metrics_pattern(application_id))


# --- the App Center's overview -----------------------------------------------------------------


def overview(user: User, now: float | None = None, top: int = 5) -> dict:
    """Applications by status, and the busiest and most failing ones of the last hour, of those
    ``user`` sees."""
    now = time.time() if now is None else now
    visible = applications.visible_to(user).subquery()
    by_status = dict(db.session.execute(select(visible.c.status, func.count()).group_by(visible.c.status)).all())
    last = int(now // 60 * 60)
    requests, errors = Counter(), Counter()
    try:
        connection = queues.connection()
        with connection.pipeline(transaction=False) as pipe:
            for minute in range(last - 59 * 60, last + 1, 60):
                pipe.hgetall(keyspace.metrics_overview(minute))
            for fields in pipe.execute():
                for field, value in fields.items():
                    application_id, kind = field.decode().rsplit("|", 1)
                    (requests if kind == "n" else errors)[application_id] += int(value)
    except redis.RedisError:
        pass
    found = {parsed: key for key in requests if (parsed := _uuid(key))}
    names = {}
    if found:
        rows = db.session.execute(select(visible.c.id, visible.c.name).where(visible.c.id.in_(list(found)))).all()
        names = {found[row.id]: (row.id, row.name) for row in rows}

    def ranked(counts: Counter) -> list[dict]:
        ordered = [(key, count) for key, count in counts.most_common() if key in names and count]
        return [{"id": names[key][0], "name": names[key][1], "count": count} for key, count in ordered[:top]]

    return {
        "by_status": {status: by_status.get(status, 0) for status in lifecycle.STATUSES},
        "total": sum(by_status.values()),
        "busiest": ranked(requests),
        "failing": ranked(errors),
    }


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


# --- Prometheus ---------------------------------------------------------------------------------


def metrics_token() -> str:
    """The token Prometheus sends to the app servers' /metrics and to the target list: LLMAPP_METRICS_TOKEN,
    else one derived from SECRET_KEY (`flask metrics token` prints it)."""
    return current_app.config.get("METRICS_TOKEN") or derived_metrics_token(current_app.config["SECRET_KEY"])


def derived_metrics_token(secret_key: str) -> str:
    derived = HKDF(algorithm=hashes.SHA256(), length=24, salt=None, info=b"llmapp metrics token").derive(
        secret_key.encode()
    )
    return base64.urlsafe_b64encode(derived).decode().rstrip("=")


def prometheus_targets() -> list[dict]:
    """Every serving replica of every running application in Prometheus's http_sd format, labelled with
    its application, release, replica and host."""
    rows = db.session.execute(
        select(Application.name, Application.id, Replica)
        .join(Replica, Replica.application_id == Application.id)
        .where(Application.status == lifecycle.RUNNING, Replica.status == "ready", Replica.port.is_not(None))
        .order_by(Application.name, Replica.started_at)
    ).all()
    return [
        {
            "targets": [f"{replica.address}:{replica.port}"],
            "labels": {
                "application": name,
                "application_id": str(application_id),
                "release": str(replica.release),
                "replica": replica.id,
                "host": replica.host,
            },
        }
        for name, application_id, replica in rows
    ]
